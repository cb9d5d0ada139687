"""The package version: a leaf, so a report can name it without importing the package (whose
`__init__` reaches the whole API)."""

__version__ = "0.1.0"

"""The one error contract: every problem with a user's file is a CheckpointError.

The CLI turns these into a per-file error (exit code 2) and never shows a traceback.
Anything else escaping a reader is a bug in ckptdoc.
"""

from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    """A file could not be read as a checkpoint. The message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NotFoundError(CheckpointError):
    """The path, or a file the checkpoint needs (a shard, the index), does not exist."""


class UnsupportedFormatError(CheckpointError):
    """The file is not a checkpoint format ckptdoc knows, or uses a feature it refuses."""


class SkippedFileError(UnsupportedFormatError):
    """A readable file the audit skips instead of failing the gate (another framework's
    model, a dataset): `skip` is what the report says about it."""

    @property
    def skip(self) -> str:
        return self.problem


class NotAModelError(SkippedFileError):
    """A readable file of a format ckptdoc opens (HDF5) that holds no model: a dataset, say."""

    @property
    def skip(self) -> str:
        return f"not a model: {self}"


class CorruptCheckpointError(CheckpointError):
    """The file is damaged: bad checksum, truncated, or structurally impossible."""


class UnsafeCheckpointError(CheckpointError):
    """The file contains something ckptdoc will not follow (links out, zip tricks, bombs)."""

"""PEP 562 lazy attributes: a package names what it exports and where each lives; the module
loads on first access. `import ckptdoc` and `import ckptdoc.guard` then cost nothing
(NumPy, Keras, TensorFlow load only when a name that needs them is used)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `table` maps a name to the module defining it;
    the value is kept in `namespace` (the package's globals), so it loads once."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__

"""ckptdoc: find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints.

Auditing never imports TensorFlow; only `recalibrate` does, on first call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckptdoc.errors import CheckpointError

if TYPE_CHECKING:
    from ckptdoc.audit import audit_file, audit_paths
    from ckptdoc.checkpoint import Checkpoint, LayerNode, TensorInfo
    from ckptdoc.formats import open_checkpoint
    from ckptdoc.groups import BNGroup, find_groups

__version__ = "0.1.0"

__all__ = [
    "BNGroup",
    "Checkpoint",
    "CheckpointError",
    "LayerNode",
    "TensorInfo",
    "__version__",
    "audit_file",
    "audit_paths",
    "find_groups",
    "open_checkpoint",
    "recalibrate",
]

# The API loads on first use (PEP 562): `ckptdoc --version`, `--help` or `rule`, and the CLI
# before it has parsed its arguments, need none of it (NumPy alone is ~0.1 s to import).
_LAZY = {
    "audit_file": "ckptdoc.audit",
    "audit_paths": "ckptdoc.audit",
    "Checkpoint": "ckptdoc.checkpoint",
    "LayerNode": "ckptdoc.checkpoint",
    "TensorInfo": "ckptdoc.checkpoint",
    "open_checkpoint": "ckptdoc.formats",
    "BNGroup": "ckptdoc.groups",
    "find_groups": "ckptdoc.groups",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def recalibrate(model: Any, data: Any, **options: Any) -> Any:
    """Recompute the BN statistics of an in-memory Keras model from `data`; returns a report.

    Imports TensorFlow on first call. See `ckptdoc.recalibrate.api.recalibrate` for options.
    """
    from ckptdoc.recalibrate.api import recalibrate as _recalibrate

    return _recalibrate(model, data, **options)

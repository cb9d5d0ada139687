"""ckptdoc: find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints.

Auditing never imports TensorFlow; only `recalibrate` does, on first call.
"""

from __future__ import annotations

from typing import Any

from ckptdoc.audit import audit_file, audit_paths
from ckptdoc.checkpoint import Checkpoint, LayerNode, TensorInfo
from ckptdoc.errors import CheckpointError
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


def recalibrate(model: Any, data: Any, **options: Any) -> Any:
    """Recompute the BN statistics of an in-memory Keras model from `data`; returns a report.

    Imports TensorFlow on first call. See `ckptdoc.recalibrate.api.recalibrate` for options.
    """
    from ckptdoc.recalibrate.api import recalibrate as _recalibrate

    return _recalibrate(model, data, **options)

"""ckptdoc: find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints.

    report = ckptdoc.audit("models/")      # as `ckptdoc audit models/`, configuration included
    report.to_dict()                       # the `--format json` document
    report.exit_code()                     # 0 / 1 / 2, as the CLI

Auditing never imports TensorFlow; only `recalibrate` does, on first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckptdoc._lazy import lazy_getattr
from ckptdoc.errors import CheckpointError

if TYPE_CHECKING:
    from ckptdoc.api import audit
    from ckptdoc.auditor import audit_file, audit_paths
    from ckptdoc.checkpoint import Checkpoint, LayerNode, TensorInfo
    from ckptdoc.formats import open_checkpoint
    from ckptdoc.groups import BNGroup, find_groups

from ckptdoc.version import __version__

__all__ = [
    "AuditReport",
    "BNGroup",
    "BaselineError",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "FileReport",
    "Finding",
    "GroupResult",
    "LayerNode",
    "RecalibrationError",
    "Severity",
    "TensorInfo",
    "__version__",
    "audit",
    "audit_file",
    "audit_paths",
    "find_groups",
    "open_checkpoint",
    "recalibrate",
    "recalibrate_file",
]

# The API loads on first use (PEP 562): `ckptdoc --version`, `--help` or `rule`, and the CLI
# before it has parsed its arguments, need none of it (NumPy alone is ~0.1 s to import).
_LAZY = {
    "audit": "ckptdoc.api",
    "AuditReport": "ckptdoc.report.model",
    "FileReport": "ckptdoc.report.model",
    "GroupResult": "ckptdoc.report.model",
    "Finding": "ckptdoc.rules",
    "Severity": "ckptdoc.rules",
    "audit_file": "ckptdoc.auditor",
    "audit_paths": "ckptdoc.auditor",
    "Checkpoint": "ckptdoc.checkpoint",
    "LayerNode": "ckptdoc.checkpoint",
    "TensorInfo": "ckptdoc.checkpoint",
    "open_checkpoint": "ckptdoc.formats",
    "BNGroup": "ckptdoc.groups",
    "find_groups": "ckptdoc.groups",
    # Raised by the API (documented in each function): importable from the package.
    "ConfigError": "ckptdoc.config",
    "BaselineError": "ckptdoc.baseline",
    "RecalibrationError": "ckptdoc.recalibrate",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def recalibrate(model: Any, data: Any, **options: Any) -> Any:
    """Recompute the BN statistics of an in-memory Keras model from `data`; returns a report.

    Imports Keras on first call. See `ckptdoc.recalibrate.api.recalibrate` for options.
    """
    from ckptdoc.recalibrate import api

    return api.recalibrate(model, data, **options)


def recalibrate_file(path: Any, data: Any, **options: Any) -> Any:
    """Recalibrate a model file or TF checkpoint and write a checked copy, as the CLI does;
    returns the outcome. See `ckptdoc.recalibrate.api.recalibrate_file`."""
    from ckptdoc.recalibrate import api

    return api.recalibrate_file(path, data, **options)

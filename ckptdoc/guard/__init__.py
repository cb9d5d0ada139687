"""Catch broken batch-norm statistics while training, not after.

- `BatchNormMonitor`: a Keras 3 callback (and a `check(model)` call for custom loops) that
  stops training when gamma / beta move and the moving statistics do not.
- `assert_update_ops(train_op)`: for TF1 graphs, raises when the train op does not run every
  BN layer's moving-average update ops; `UpdateOpsCheckHook` runs it from a
  `SessionRunHook.begin()` (Estimator, MonitoredSession).

Importing `ckptdoc.guard` imports neither Keras nor TensorFlow; each name loads its framework
when first used (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckptdoc._lazy import lazy_getattr
from ckptdoc.guard.errors import BatchNormNotUpdatingError, UpdateOpsNotRunError

if TYPE_CHECKING:
    from ckptdoc.guard.keras_monitor import BatchNormMonitor
    from ckptdoc.guard.tf1_graph import UpdateOpsCheckHook, assert_update_ops

__all__ = [
    "BatchNormMonitor",
    "BatchNormNotUpdatingError",
    "UpdateOpsCheckHook",
    "UpdateOpsNotRunError",
    "assert_update_ops",
]

_LAZY = {
    "BatchNormMonitor": "ckptdoc.guard.keras_monitor",
    "assert_update_ops": "ckptdoc.guard.tf1_graph",
    "UpdateOpsCheckHook": "ckptdoc.guard.tf1_graph",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())

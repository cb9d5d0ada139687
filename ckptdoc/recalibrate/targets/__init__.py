"""One target per kind of model file; `open_target` picks it after the audit reader's checks.

| input                                  | target                 |
|----------------------------------------|------------------------|
| `.keras`, `.h5`, `.weights.h5`         | `KerasFile`            |
| TF1 `Saver` checkpoint (+ `.meta`)     | `TF1GraphCheckpoint`   |
| TF2 `tf.train.Checkpoint`              | `TF2ObjectCheckpoint`  |
"""

from __future__ import annotations

from pathlib import Path

from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate.targets.base import Fix, Measured, Target, non_finite
from ckptdoc.recalibrate.targets.keras_file import KerasFile
from ckptdoc.recalibrate.targets.tf1_graph import TF1GraphCheckpoint
from ckptdoc.recalibrate.targets.tf2_object import TF2ObjectCheckpoint


def open_target(path: str | Path) -> Target:
    """The target for `path`. Before anything reaches Keras or TensorFlow the input passes
    the audit reader's own checks (regular files only, zip and HDF5 hardening, size caps), so
    recalibrate never loads what the audit would refuse; failures are `CheckpointError`s."""
    from ckptdoc.formats import open_checkpoint
    from ckptdoc.formats.resolve import resolve

    path = Path(path)
    try:
        resolved = resolve(path)
        with open_checkpoint(path) as ckpt:
            fmt = ckpt.format
    except CheckpointError as exc:
        raise type(exc)(exc.path, f"{exc.problem} (checked before loading)") from None
    if fmt == "tf2-object":
        return TF2ObjectCheckpoint(resolved.path)
    if resolved.kind == "bundle":
        return TF1GraphCheckpoint(resolved.path)
    if fmt == "savedmodel":
        raise CheckpointError(path, "a SavedModel: recalibrate takes Keras files and TF "
                              "checkpoints; recalibrate the checkpoint or .keras file the "
                              "SavedModel was exported from, then export again")
    return KerasFile(path)


__all__ = ["Fix", "KerasFile", "Measured", "TF1GraphCheckpoint", "TF2ObjectCheckpoint",
           "Target", "non_finite", "open_target"]

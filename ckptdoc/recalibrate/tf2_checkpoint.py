"""TF2 object checkpoints (`tf.train.Checkpoint` of a Keras model, optimizer or not).

`--model module:function` builds the Keras model; it is restored from the checkpoint under the
name the checkpoint's root object gave it (`model`, `net`, ...: read from the object graph),
recalibrated by the Keras engine (`keras_model.measure`), and the new statistics are
written back under the checkpoint's own keys. Which key holds which variable is asked of
TensorFlow itself: the statistic variables are set to unique sentinel values, a scratch
checkpoint is written with the same root name, and each sentinel is looked up in it. Each key
found must hold, in the original file, exactly the value the model restored from it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.checkpoint import Checkpoint
from ckptdoc.errors import CheckpointError
from ckptdoc.formats.resolve import tf_prefix
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.sentinels import BATCH, sentinel


def root_names(ck: Checkpoint) -> list[str]:
    """Local names of the root object's children (`model`, `optimizer`, `save_counter`, ...)."""
    nodes = getattr(ck, "object_graph", None)
    if not nodes:
        return []
    return [c.local_name for c in nodes[0].children]


def restore(model: Any, prefix: Path, ck: Checkpoint) -> str:
    """Restore `model` from the object checkpoint; returns the root name it was saved under."""
    import tensorflow as tf

    names = [n for n in root_names(ck) if n not in ("optimizer", "save_counter")]
    errors: list[str] = []
    for name in names:
        status = tf.train.Checkpoint(**{name: model}).read(tf_prefix(prefix))
        try:
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError) as exc:
            errors.append(f"{name}: {str(exc).splitlines()[0]}")
            continue
        status.expect_partial()
        return name
    raise CheckpointError(
        prefix,
        "the --model architecture does not match the checkpoint under any root name "
        f"({', '.join(names) or 'none'}): " + "; ".join(errors),
    )


def stat_keys(model: Any, root: str, variables: Sequence[Any]) -> list[str]:
    """The checkpoint key of each variable, found with sentinel values (see module doc)."""
    import tensorflow as tf

    from ckptdoc.formats import open_checkpoint

    saved = [np.array(v.numpy()) for v in variables]
    keys: list[str | None] = [None] * len(variables)
    with tempfile.TemporaryDirectory() as d:
        for start in range(0, len(variables), BATCH):  # sentinels stay exact in every dtype
            chunk = variables[start : start + BATCH]
            try:
                for j, v in enumerate(chunk):
                    v.assign(np.full(v.shape, sentinel(j), dtype=v.dtype))
                path = tf.train.Checkpoint(**{root: model}).write(str(Path(d) / f"probe{start}"))
            finally:
                for v, s in zip(variables, saved, strict=True):
                    v.assign(s)
            wanted = {sentinel(j): j for j in range(len(chunk))}
            with open_checkpoint(path) as probe:
                for key, info in probe.tensors.items():
                    if len(info.shape) != 1 or info.size == 0 or info.dtype.kind != "f":
                        continue
                    a = probe.read(key)
                    hit = wanted.get(float(a[0]))
                    if (hit is not None and np.all(a == a[0])
                            and a.shape == tuple(chunk[hit].shape)):
                        keys[start + hit] = key
    missing = [variables[j].path for j, k in enumerate(keys) if k is None]
    if missing:
        raise RecalibrationError(f"cannot locate {', '.join(missing)} in a checkpoint of the model")
    return [k for k in keys if k is not None]


def check_keys(ck: Checkpoint, keys: Sequence[str], values: Sequence[np.ndarray]) -> None:
    """Each key must exist with the variable's shape and hold the value the model restored."""
    for key, value in zip(keys, values, strict=True):
        info = ck.tensors.get(key)
        if info is None:
            raise CheckpointError(
                ck.path, f"{key}: not in the checkpoint (the model saves it there)"
            )
        if tuple(info.shape) != tuple(value.shape):
            raise CheckpointError(
                ck.path, f"{key}: shape {info.shape}, the model has {value.shape}"
            )
        stored = ck.read(key)
        if not np.array_equal(stored.astype(np.float64), value.astype(np.float64), equal_nan=True):
            raise CheckpointError(
                ck.path,
                f"{key} does not hold the value the model restored: refusing to guess "
                "where the statistics live",
            )

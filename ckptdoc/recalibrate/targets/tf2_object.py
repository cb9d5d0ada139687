"""TF2 object checkpoints (`tf.train.Checkpoint` of a Keras model): `--model` builds the
model, it is restored from the checkpoint, measured by `keras_model.measure`, and the new
statistics go back under the checkpoint's own keys (`tf2_checkpoint.py` finds them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.targets.base import Measured, Progress
from ckptdoc.recalibrate.targets.bundle import BundleOutput
from ckptdoc.rules.data import DataComparison


@dataclass(frozen=True)
class TF2ObjectCheckpoint(BundleOutput):
    kind: str = "tf2-object"
    accepts: frozenset[str] = frozenset({"devices", "mode"})

    def observe(self, options: Options, progress: Progress | None) -> DataComparison:
        from ckptdoc.formats import open_checkpoint
        from ckptdoc.recalibrate import keras_model
        from ckptdoc.recalibrate import tf2_checkpoint as t2
        from ckptdoc.recalibrate.model_io import build_model

        backend, spec = self._backend(options)
        with backend.distributed(options.devices):
            model = build_model(spec)
            with open_checkpoint(self.path) as ck:
                t2.restore(model, self.path, ck)
            return keras_model.observe(model, options, progress)

    def _backend(self, options: Options) -> tuple[Any, str]:
        """The Keras backend (TensorFlow) and the --model spec, or a clear refusal."""
        from ckptdoc.recalibrate import backends

        if options.model_spec is None:
            raise RecalibrationError(
                f"{self.path} is a TF2 object checkpoint: pass --model module:function (or "
                "file.py:function) that builds the Keras model"
            )
        backend = backends.current()
        if backend.name != "tensorflow":
            raise RecalibrationError(
                f"{self.path} is a TensorFlow object checkpoint: TensorFlow restores it into the "
                f"model, which the Keras {backend.name!r} backend cannot hold; run with "
                "KERAS_BACKEND=tensorflow"
            )
        return backend, options.model_spec

    def measure(self, options: Options, progress: Progress | None) -> Measured:
        from ckptdoc.formats import open_checkpoint
        from ckptdoc.recalibrate import keras_model
        from ckptdoc.recalibrate import tf2_checkpoint as t2
        from ckptdoc.recalibrate.bundle_writer import BundleFix
        from ckptdoc.recalibrate.engine import find_bn_layers
        from ckptdoc.recalibrate.model_io import build_model

        backend, spec = self._backend(options)
        with backend.distributed(options.devices):
            model = build_model(spec)
            with open_checkpoint(self.path) as ck:
                root = t2.restore(model, self.path, ck)
                layers = find_bn_layers(model)
                variables = [v for bn in layers for v in bn.stat_variables().values()]
                keys = t2.stat_keys(model, root, variables)
                t2.check_keys(ck, keys, [np.asarray(v.numpy()) for v in variables])
                stored = {key: ck.tensors[key].dtype for key in keys}
            report = keras_model.measure(model, options, progress)
        replacements = {key: np.asarray(v.numpy()).astype(stored[key])
                        for key, v in zip(keys, variables, strict=True)}
        report = dataclasses.replace(
            report, notes=(*report.notes, f"model restored from the checkpoint's {root!r} object")
        )
        new_values = {bn.path: tuple(np.asarray(v.numpy()) for v in bn.stat_variables().values())
                      for bn in layers}
        return Measured(report, BundleFix(self.path, replacements), new_values)

"""Keras files: `.keras`, full-model `.h5`, and weights files (`--model` builds the model).

Loads the model through Keras (after the audit reader's checks, see `targets.open_target`),
measures it with `keras_model.measure`, and plans the patches that put the new statistics into
a copy of the file (`writer.py`: every other byte unchanged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.targets.base import Measured, Progress
from ckptdoc.rules.data import DataComparison

_EXTENSIONS = (".weights.h5", ".keras", ".hdf5", ".h5")


@dataclass(frozen=True)
class KerasFile:
    path: Path
    kind: str = "keras-file"
    accepts: frozenset[str] = frozenset({"devices", "mode"})

    def default_output(self) -> Path:
        """`m.keras` -> `m.recalibrated.keras`; `w.weights.h5` -> `w.recalibrated.weights.h5`."""
        return default_output(self.path)

    def check_output(self, dest: Path, in_place: bool) -> None:
        if in_place:
            return
        if dest.resolve() == self.path.resolve():
            raise CheckpointError(dest, "--output is the input file; use --in-place to "
                                  "overwrite it")
        if dest.is_dir():
            raise CheckpointError(dest, "--output is a folder; name the file to write")
        parent = dest.parent if str(dest.parent) else Path(".")
        if not parent.is_dir():
            raise CheckpointError(dest, f"--output: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise CheckpointError(dest, f"--output: the folder {parent} is not writable")
        name, src = dest.name.lower(), self.path.name.lower()
        for ext in (".weights.h5", ".keras"):
            if src.endswith(ext) and not name.endswith(ext):
                raise CheckpointError(dest, f"--output: the input is a {ext} file; the output "
                                      f"must end in {ext} too")
        if (src.endswith((".h5", ".hdf5")) and not src.endswith(".weights.h5")
                and not name.endswith((".h5", ".hdf5"))):
            raise CheckpointError(dest, "--output: the input is HDF5; the output must end "
                                  "in .h5")

    def measure(self, options: Options, progress: Progress | None) -> Measured:
        from ckptdoc.recalibrate import backends, keras_model, model_io, writer
        from ckptdoc.recalibrate.engine import find_bn_layers, snapshot

        # Keras and a supported backend, or a clear refusal, before loading; the model loads
        # under the backend's data-parallel engine when several devices are asked for.
        backend = backends.current()
        with backend.distributed(options.devices):
            loaded = model_io.load(self.path, model_spec=options.model_spec,
                                   allow_unsafe=options.allow_unsafe_code)
            layers = find_bn_layers(loaded.model)
            old = [snapshot(bn) for bn in layers]
            report = keras_model.measure(loaded.model, options, progress)
            patches = writer.plan(self.path, loaded.kind, loaded.model, layers, old)
        return Measured(
            report,
            writer.KerasFileFix(self.path, loaded.kind, patches),
            {bn.path: tuple(snapshot(bn).values()) for bn in layers},
            writes=backend.writes(loaded.model),
        )


    def observe(self, options: Options, progress: Progress | None) -> DataComparison:
        from ckptdoc.recalibrate import backends, keras_model, model_io

        with backends.current().distributed(options.devices):
            loaded = model_io.load(self.path, model_spec=options.model_spec,
                                   allow_unsafe=options.allow_unsafe_code)
            return keras_model.observe(loaded.model, options, progress)


def default_output(path: Path) -> Path:
    """`m.keras` -> `m.recalibrated.keras`; `w.weights.h5` -> `w.recalibrated.weights.h5`."""
    name = path.name
    for ext in _EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return path.with_name(name[: -len(ext)] + ".recalibrated" + ext)
    return path.with_name(name + ".recalibrated")

"""Write the recalibrated statistics into a copy of the original file, touching nothing else.

The model is never re-saved through Keras: the output is a copy of the input in which only the
BN statistic datasets are overwritten in place with h5py (for `.keras`, the zip is rebuilt with
every other member copied unchanged and `model.weights.h5` patched). Every other tensor, every
attribute and the optimizer state stay byte-identical.

Finding the dataset of each variable:
- Keras 3 layouts (`.keras`, `.weights.h5`): the model's own saver decides the paths, so ask it.
  The statistic variables are set to unique sentinel constants, the weights are saved to a
  scratch `.weights.h5`, and each sentinel is looked up there. Works for any nesting and class
  naming Keras uses, with no private API.
- Legacy `.h5`: mirror Keras' order-based loader (`layer_names`, then each layer's
  `weight_names` in trainable + non-trainable order).
Each mapped dataset must hold exactly the value the model loaded from it, which catches a wrong
mapping before anything is written.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc import atomic
from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate.engine import BNLayer
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.model_io import KERAS_WEIGHTS_MEMBER
from ckptdoc.recalibrate.sentinels import BATCH, sentinel


@dataclass(frozen=True)
class Patch:
    """Overwrite one dataset (path inside the HDF5 file) with `value`; `old` must be there now."""

    dataset: str
    value: np.ndarray
    old: np.ndarray


def _decode(names: Iterable[Any]) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _h5_attr_list(group: Any, name: str) -> list[str]:
    """Keras splits long attributes into name0, name1, ...; join them back."""
    if name in group.attrs:
        return _decode(group.attrs[name])
    out: list[str] = []
    i = 0
    while f"{name}{i}" in group.attrs:
        out.extend(_decode(group.attrs[f"{name}{i}"]))
        i += 1
    return out


def map_keras3(model: Any, layers: list[BNLayer]) -> dict[int, str]:
    """id(variable) -> dataset path in a Keras 3 weights file, found via sentinel values."""

    variables = [v for bn in layers for v in bn.stat_variables().values()]
    saved = [np.array(v.numpy()) for v in variables]
    # Batches of `BATCH` variables keep each sentinel exact in every float dtype.
    out: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.weights.h5"
        for start in range(0, len(variables), BATCH):
            chunk = variables[start : start + BATCH]
            try:
                for j, v in enumerate(chunk):
                    v.assign(np.full(v.shape, sentinel(j), dtype=v.dtype))
                model.save_weights(str(probe))
            finally:
                for v, s in zip(variables, saved, strict=True):
                    v.assign(s)
            found = _find_sentinels(probe, chunk)
            for j, v in enumerate(chunk):
                if j not in found:
                    raise RecalibrationError(
                        f"cannot locate variable {v.path} ({v.dtype}) in the weights Keras "
                        "saves for this model: please report this model"
                    )
                out[id(v)] = found[j]
    return out


def _find_sentinels(probe: Path, chunk: list[Any]) -> dict[int, str]:
    """Index in `chunk` -> dataset path whose values are all that variable's sentinel."""
    import h5py

    wanted = {sentinel(j): j for j in range(len(chunk))}
    found: dict[int, str] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.ndim != 1 or obj.size == 0:
            return
        if obj.dtype.kind != "f":
            return
        a = obj[()]
        j = wanted.get(float(a[0]))
        if j is not None and np.all(a == a[0]) and tuple(a.shape) == tuple(chunk[j].shape):
            found.setdefault(j, name)

    with h5py.File(probe, "r") as f:
        f.visititems(visit)
    return found


def map_legacy(h5file: Any, model: Any, layers: list[BNLayer]) -> dict[int, str]:
    """id(variable) -> dataset path in a legacy `.h5`, mirroring Keras' order-based loader."""
    group = h5file["model_weights"] if "model_weights" in h5file else h5file
    prefix = group.name.rstrip("/") + "/"
    wanted = {id(v) for bn in layers for v in bn.stat_variables().values()}
    with_weights = [ly for ly in model.layers if ly.trainable_weights + ly.non_trainable_weights]
    names = [
        n for n in _h5_attr_list(group, "layer_names") if _h5_attr_list(group[n], "weight_names")
    ]
    if len(names) != len(with_weights):
        raise CheckpointError(
            h5file.filename, "layer count differs from the model: cannot map weights"
        )
    out: dict[int, str] = {}
    for layer, name in zip(with_weights, names, strict=True):
        weights = layer.trainable_weights + layer.non_trainable_weights
        weight_names = _h5_attr_list(group[name], "weight_names")
        if len(weights) != len(weight_names):
            raise CheckpointError(
                h5file.filename, f"layer {name}: weight count differs from the model"
            )
        for v, wn in zip(weights, weight_names, strict=True):
            if id(v) in wanted:
                out[id(v)] = (prefix + name + "/" + wn).lstrip("/")
    return out


def plan(
    original: Path,
    kind: str,
    model: Any,
    layers: list[BNLayer],
    old: list[dict[str, np.ndarray]],
) -> list[Patch]:
    """The patches that put the model's current BN statistics into a copy of `original`."""
    import h5py

    with _weights_h5(original, kind) as wpath, h5py.File(wpath, "r") as f:
        if kind in ("keras-zip", "keras3-weights"):
            where = map_keras3(model, layers)
        else:
            where = map_legacy(f, model, layers)
        patches: list[Patch] = []
        for bn, before in zip(layers, old, strict=True):
            for local, v in bn.stat_variables().items():
                path = where.get(id(v))
                if path is None:
                    raise CheckpointError(
                        original, f"{bn.path}/{local}: no dataset for it in the file"
                    )
                ds = f[path]
                if not isinstance(ds, h5py.Dataset) or tuple(ds.shape) != tuple(v.shape):
                    raise CheckpointError(
                        original, f"{path}: not a dataset of shape {tuple(v.shape)}"
                    )
                stored = ds[()]
                if not np.array_equal(
                    stored.astype(np.float64), before[local].astype(np.float64), equal_nan=True
                ):
                    raise CheckpointError(
                        original,
                        f"{path} does not hold the value the model loaded for "
                        f"{bn.path}/{local}: refusing to guess where the statistics live",
                    )
                patches.append(Patch(path, np.asarray(v.numpy()), stored))
    return patches


class _weights_h5:  # noqa: N801 - used as a context manager like open()
    """The HDF5 file holding the weights: the file itself, or `.keras`'s member extracted."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Path:
        if self.kind != "keras-zip":
            return self.path
        self._tmp = tempfile.TemporaryDirectory()
        out = Path(self._tmp.name) / KERAS_WEIGHTS_MEMBER
        with (
            zipfile.ZipFile(self.path) as zf,
            zf.open(KERAS_WEIGHTS_MEMBER) as src,
            open(out, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        return out

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _patch_h5(path: Path, patches: list[Patch]) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        for p in patches:
            ds = f[p.dataset]
            ds[...] = np.asarray(p.value).astype(ds.dtype).reshape(ds.shape)


def write_patched(original: Path, kind: str, patches: list[Patch], out: Path) -> None:
    """Write to `out` (a fresh temporary path) a copy of `original` with `patches` applied."""
    if kind != "keras-zip":
        shutil.copyfile(original, out)
        _patch_h5(out, patches)
        return
    with tempfile.TemporaryDirectory() as d:
        member = Path(d) / KERAS_WEIGHTS_MEMBER
        with zipfile.ZipFile(original) as zin:
            with zin.open(KERAS_WEIGHTS_MEMBER) as src, open(member, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            _patch_h5(member, patches)
            with zipfile.ZipFile(out, "w") as zout:
                for info in zin.infolist():
                    # Same name, date, compression and attributes; only the weights change.
                    if info.filename == KERAS_WEIGHTS_MEMBER:
                        info.file_size = member.stat().st_size
                        with (
                            open(member, "rb") as src,
                            zout.open(info, "w", force_zip64=True) as dst,
                        ):
                            shutil.copyfileobj(src, dst, 1 << 20)
                    else:
                        with (
                            zin.open(info) as src,
                            zout.open(info, "w", force_zip64=info.file_size > 2**31) as dst,
                        ):
                            shutil.copyfileobj(src, dst, 1 << 20)


@dataclass(frozen=True)
class KerasFileFix:
    """The new statistics of a Keras file, ready to be written into a copy of it: the one
    write path of every Keras target (and of the fault-injection tests)."""

    original: Path
    kind: str
    patches: list[Patch]

    def write(self, dest: Path, in_place: bool, check: Callable[[Path], None]) -> list[str]:
        """Write the patched copy to a temporary file beside `dest` (or beside the input, for
        `in_place`, keeping `<input>.bak`); `check(tmp)` runs on it before it is moved into
        place, and raising there leaves nothing behind."""
        ctx = atomic.in_place(self.original) if in_place else atomic.atomic_path(dest)
        with ctx as tmp:
            write_patched(self.original, self.kind, self.patches, tmp)
            check(tmp)
        return []

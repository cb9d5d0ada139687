"""Keras HDF5 files: Keras 1/2 and tf-keras `.h5`, Keras 3's legacy `.h5`, Keras 3 `.weights.h5`.

Reads JSON and arrays only: no model is ever deserialized, nothing is unpickled or evaluated.

Formats (`Checkpoint.format`):
- `keras2-h5`: full model (root attr `model_config`, weights under `model_weights/`);
- `keras2-weights-h5`: `save_weights` to `.h5` (same layout at the root, no config);
- `keras3-legacy-h5`: the same layout written by Keras 3 (names without `:0`);
- `keras3-weights-h5`: Keras 3 `layers/<class_snake>[_N]/vars/<i>` layout (`keras3-zip` when it
  comes from inside a `.keras` file, see keras_zip.py).

Keys in `.tensors` are HDF5 dataset paths without the leading slash
(`model_weights/bn/bn/gamma:0`, `layers/batch_normalization/vars/0`). Optimizer state
(`optimizer_weights/`, Keras 3 `optimizer/`) is not model state and is left out of `.tensors`
and `.layers` alike.

Layer names: for Keras 1/2 layouts the layer group's name, or `outer/inner` for the layers of a
nested model; for Keras 3 the chain of `vars` `name` attributes (Keras >= 3.6), else the path.
Member names are the variable names without `:0`. Keras 1 named BN statistics
`<layer>_running_mean` / `<layer>_running_std`; they become `moving_mean` / `moving_variance`
because from Keras 1.1 on `running_std` held the *variance* (it was fed to
`K.batch_normalization` as the variance and updated with the batch variance).

Keras 3 weights files carry no variable names. For BatchNormalization (known from the config,
or from the `batch_normalization` / `sync_batch_normalization` path hint) members get role
names from Keras 3's creation order: gamma (if scale), beta (if center), moving_mean,
moving_variance, then with renorm moving_stddev, renorm_mean, renorm_stddev. Without a config
an ambiguous slot (3 or 6 variables: gamma *or* beta) stays `vars/0`. Other layers keep
`vars/<i>`.

Security: every HDF5 object and attribute is reached through `h5_safe.py` (hard links only,
no external or virtual storage, declared sizes checked against the file before any read).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ckptdoc.checkpoint import Checkpoint, LayerNode, StepCount, TensorInfo
from ckptdoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotAModelError,
    UnsupportedFormatError,
)
from ckptdoc.formats.bfloat16 import bfloat16_to_float32
from ckptdoc.formats.h5_heaps import check_global_heaps, check_global_heaps_in_file
from ckptdoc.formats.h5_safe import (
    FetchingFile,
    H5Var,
    check_dataset,
    describe_dataset,
    gaps,
    h5_attrs,
    h5_text,
    hard_child,
    hard_items,
    hard_resolve,
    json_attr,
    raw_data_extents,
    split_attr,
    walk_datasets,
)
from ckptdoc.formats.window import Window

__all__ = ["open_hdf5", "KerasH5Checkpoint", "open_weights_h5_file"]

_CONTAINERS = frozenset({"Functional", "Sequential", "Model"})
_BN_HINTS = {
    "batch_normalization": "BatchNormalization",
    "sync_batch_normalization": "SyncBatchNormalization",
}
_BN_CLASSES = frozenset(_BN_HINTS.values())
_UNIQUIFIED = re.compile(
    r"^(gamma|beta|running_mean|running_std|moving_mean|moving_variance)_\d+$"
)
_KERAS1_INNER = re.compile(r"^(?P<layer>.+?)_(?P<leaf>gamma|beta|running_mean|running_std)$")
_KERAS1_RENAME = {"running_mean": "moving_mean", "running_std": "moving_variance"}
_OPTIMIZER_TOP = frozenset({"optimizer", "optimizer_weights"})

class KerasH5Checkpoint(Checkpoint):
    """An open Keras HDF5 file (or the weights file inside a `.keras` zip)."""

    def __init__(
        self,
        path: Path,
        h5: h5py.File,
        fmt: str,
        variables: dict[str, H5Var],
        layers: list[LayerNode],
        warnings: list[str],
        size_limit: int,
    ) -> None:
        super().__init__(path)
        self.format = fmt
        self._h5: h5py.File | None = h5
        self._vars = variables
        self._tensors = {k: v.info for k, v in variables.items()}
        self._layers = layers
        self._warnings = warnings
        self._size_limit = size_limit
        #: The Keras version that wrote the file, when the file says so.
        self.keras_version: str | None = None
        #: The model's parsed JSON config (`model_config` / `config.json`), None if absent.
        #: Plain data for the audit (e.g. to report `Lambda` layers); never deserialized.
        self.model_config: Mapping[str, Any] | None = None
        #: Why a config the file has could not be read (then nothing can say it holds no code).
        self.config_error: str | None = None

    def add_warnings(self, notes: list[str]) -> None:
        """Let a wrapping reader (the `.keras` zip) add what it noticed."""
        self._warnings.extend(notes)

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def layers(self) -> list[LayerNode] | None:
        return list(self._layers)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    def step_count(self) -> StepCount | None:
        """Keras 3: `optimizer/vars/0` is `iterations`; Keras 2: `.../iter:0` or
        `.../iterations:0` under `optimizer_weights`."""
        if self._h5 is None:
            return None
        try:
            for key in _step_keys(self._h5):
                dset = hard_resolve(self._h5, key, self.path)
                if (isinstance(dset, h5py.Dataset) and dset.shape == ()
                        and dset.dtype.kind in "iu"):
                    return StepCount(int(dset[()]), key)
        except (CheckpointError, OSError, ValueError, RuntimeError, KeyError):
            return None  # the counter is evidence, not a requirement
        return None

    def read(self, key: str) -> np.ndarray:
        var = self._vars.get(key)
        if var is None:
            raise CheckpointError(self.path, f"no variable {key!r} in this file")
        if self._h5 is None:
            raise CheckpointError(self.path, "file is closed")
        try:
            dset = hard_resolve(self._h5, key, self.path)
            if not isinstance(dset, h5py.Dataset):
                raise CorruptCheckpointError(self.path, f"{key!r} is not a dataset")
            check_dataset(dset, key, self.path, self._size_limit)
            raw = dset[()]
        except CheckpointError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CorruptCheckpointError(self.path, f"cannot read {key!r}: {exc}") from exc
        arr = np.asarray(raw)
        if var.bfloat16:
            arr = bfloat16_to_float32(arr)
        if tuple(arr.shape) != var.info.shape:
            raise CorruptCheckpointError(self.path, f"{key!r} changed shape while reading")
        return arr

    def close(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            finally:
                self._h5 = None


_STEP_LEAVES = frozenset({"iter", "iteration", "iterations"})


#: Files up to this size get the global-heap scan over every byte, before libhdf5 opens them.
#: Bigger files are opened first (superblock, groups, dataset layouts: no string attribute is
#: read), and the scan skips the raw data of big numeric datasets, which is most of a weights
#: file's bytes: the scan then costs the metadata, not the file (docs/reliability.md).
FULL_SCAN_BYTES = 64 << 20


def _step_keys(h5: h5py.File) -> list[str]:
    if "optimizer" in h5:
        return ["optimizer/vars/0"]
    if "optimizer_weights" not in h5:
        return []
    keys: list[str] = []
    group = hard_resolve(h5, "optimizer_weights", Path(h5.filename))
    if not isinstance(group, h5py.Group):
        return []

    def visit(name: str, obj: Any) -> None:
        leaf = name.rsplit("/", 1)[-1].split(":")[0]
        if isinstance(obj, h5py.Dataset) and leaf in _STEP_LEAVES and not keys:
            keys.append(f"optimizer_weights/{name}")

    group.visititems(visit)
    return keys


# --------------------------------------------------------------------------- opening


def open_hdf5(
    path: Path, fetch: Callable[[Path, int, int], None] | None = None
) -> KerasH5Checkpoint:
    """Open a Keras `.h5` / `.hdf5` / `.weights.h5` file, sniffing which layout it uses.

    `fetch(path, offset, size)`: `path` is a sparse mirror of a remote file (formats/remote.py)
    and those bytes must be fetched before they are read; libhdf5 then reads through it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size <= FULL_SCAN_BYTES:
            if fetch is not None:
                fetch(path, 0, size)  # the scan reads every byte
            check_global_heaps_in_file(path)  # before libhdf5 opens anything
        h5 = h5py.File(FetchingFile(path, fetch) if fetch else path, "r")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptCheckpointError(path, f"not a readable HDF5 file: {exc}") from exc
    try:
        if size > FULL_SCAN_BYTES:  # before libhdf5 reads any string attribute
            skip = raw_data_extents(h5, path, size)
            if fetch is not None:
                for start, end in gaps(skip, size):
                    fetch(path, start, end - start)
            check_global_heaps_in_file(path, skip)
        return _open(h5, path, size, config=None, fmt_override=None)
    except BaseException:
        h5.close()
        raise


def open_weights_h5_file(
    data: bytes | Window, path: Path, config: Mapping[str, Any] | None, fmt: str
) -> KerasH5Checkpoint:
    """Open a Keras 3 weights file inside a `.keras` zip: in memory (`bytes`, an inflated
    member) or read in place (`Window`, a stored member of the mmapped archive)."""
    if len(data) <= FULL_SCAN_BYTES:
        check_global_heaps(data, path)
    try:
        h5 = h5py.File(io.BytesIO(data) if isinstance(data, bytes) else data.open(), "r")
    except OSError as exc:
        raise CorruptCheckpointError(path, f"model.weights.h5 is not valid HDF5: {exc}") from exc
    try:
        if len(data) > FULL_SCAN_BYTES:
            check_global_heaps(data, path, raw_data_extents(h5, path, len(data)))
        try:
            v3 = _is_v3_layout(h5)
        except (OSError, RuntimeError, KeyError, ValueError) as exc:  # damaged root group
            raise CorruptCheckpointError(path, f"damaged model.weights.h5: {exc}") from exc
        if not v3:
            raise UnsupportedFormatError(path, "model.weights.h5 has no Keras 3 weights layout")
        return _open(h5, path, len(data), config=config, fmt_override=fmt)
    except BaseException:
        h5.close()
        raise


def _open(
    h5: h5py.File,
    path: Path,
    size: int,
    config: Mapping[str, Any] | None,
    fmt_override: str | None,
) -> KerasH5Checkpoint:
    warnings: list[str] = []
    try:
        attrs = h5_attrs(h5)
        if "layer_names" in attrs or "layer_names0" in attrs:
            weights_root = h5
            fmt = "keras2-weights-h5"
        elif "model_weights" in h5 and isinstance(hard_child(h5, "model_weights", path),
                                                  h5py.Group):
            weights_root = hard_child(h5, "model_weights", path)
            fmt = "keras2-h5"
        elif _is_v3_layout(h5):
            return _open_v3(h5, path, size, config, fmt_override or "keras3-weights-h5")
        else:
            raise NotAModelError(
                path, "HDF5 file is neither a Keras model nor a Keras weights file"
            )
        version = h5_text(attrs.get("keras_version", b"")) or h5_text(
            h5_attrs(weights_root).get("keras_version", b"")
        )
        if version.startswith("3."):
            fmt = "keras3-legacy-h5"
        model_config = json_attr(attrs, "model_config", path, warnings)
        ckpt = _open_legacy(h5, weights_root, path, size, fmt, version, model_config, warnings)
        ckpt.keras_version = version or None
        ckpt.model_config = _top_entry(model_config)
        if model_config is None and "model_config" in attrs:
            ckpt.config_error = "its `model_config` attribute is not readable JSON"
        return ckpt
    except CheckpointError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CorruptCheckpointError(path, f"damaged HDF5 structure: {exc}") from exc


def _is_v3_layout(h5: h5py.Group) -> bool:
    return any(
        name in h5 and isinstance(h5.get(name, getlink=True), h5py.HardLink)
        for name in ("layers", "vars")
    )


# --------------------------------------------------------------------------- Keras 1/2 layout


def _open_legacy(
    h5: h5py.File,
    root: h5py.Group,
    path: Path,
    size: int,
    fmt: str,
    version: str,
    model_config: Any,
    warnings: list[str],
) -> KerasH5Checkpoint:
    prefix = "" if root is h5 else root.name.strip("/") + "/"
    layer_names = split_attr(root, "layer_names", path)
    top = _top_entry(model_config)
    if "top_level_model_weights" in root and "top_level_model_weights" not in layer_names:
        layer_names.append("top_level_model_weights")
    keras1 = version.startswith("1.")

    variables: dict[str, H5Var] = {}
    layers: list[LayerNode] = []
    used: set[str] = set()
    keras1_seen = False
    for lname in layer_names:
        group = hard_child(root, lname, path)
        if group is None:
            warnings.append(f"layer {lname!r} is listed in layer_names but has no group")
            continue
        if not isinstance(group, h5py.Group):
            raise CorruptCheckpointError(path, f"layer {lname!r} is not an HDF5 group")
        if "weight_names" in h5_attrs(group) or "weight_names0" in h5_attrs(group):
            wnames = split_attr(group, "weight_names", path)
        else:  # very old files: no list, take the datasets as they are
            wnames = [rel for rel, _ in walk_datasets(group, path, "")]
        scopes: dict[str, dict[str, str]] = {}
        for wname in wnames:
            key = f"{prefix}{lname}/{wname}"
            dset = hard_resolve(h5, key, path)
            if not isinstance(dset, h5py.Dataset):
                raise CorruptCheckpointError(path, f"weight {key!r} is missing or not a dataset")
            var = describe_dataset(dset, key, path, size, warnings)
            if var is None:
                continue
            variables[key] = var
            scope, _, local = wname.rpartition("/")
            local = re.sub(r":\d+$", "", local)
            if scope.rsplit("/", 1)[-1] in ("", lname) and local.startswith(lname + "_"):
                local = local[len(lname) + 1 :]
                keras1 = True
            # TensorFlow's uniquifier on Keras 1 names: `Normalize_running_mean_2`.
            local = _UNIQUIFIED.sub(r"\1", local)
            # Keras 1 saved a nested model's weights flat under the outer layer, each prefixed
            # with its own layer (`batchnormalization_3_running_std`): one scope per inner
            # layer, or five BN layers read as one.
            inner = _KERAS1_INNER.match(local) if keras1 or "running_" in local else None
            if inner is not None:
                scope = f"{scope}/{inner['layer']}" if scope else inner["layer"]
                local = inner["leaf"]
            if keras1 and local in _KERAS1_RENAME:
                local = _KERAS1_RENAME[local]
                keras1_seen = True
            scopes.setdefault(scope, {})[local] = key
        entry = _find_child(top, lname) if top is not None else None
        for name, members, node_entry in _legacy_nodes(lname, scopes, entry):
            if name in used:
                name = f"{name}#{len(used)}"
            used.add(name)
            layers.append(_node(name, members, node_entry))
    if keras1_seen:
        warnings.append(
            "Keras 1 names: <layer>_running_mean / <layer>_running_std were read as "
            "moving_mean / moving_variance (Keras 1.1+ stored the variance in running_std)"
        )
    return KerasH5Checkpoint(path, h5, fmt, variables, layers, warnings, size)


def _legacy_nodes(
    lname: str, scopes: dict[str, dict[str, str]], entry: Mapping[str, Any] | None
) -> Iterator[tuple[str, dict[str, str], Mapping[str, Any] | None]]:
    """One node per weight scope; a single-scope plain layer keeps the layer group's name."""
    container = entry is not None and (
        entry.get("class_name") in _CONTAINERS or bool(_children(entry))
    )
    if len(scopes) == 1 and not container:
        scope, members = next(iter(scopes.items()))
        last = scope.rsplit("/", 1)[-1]
        # Old Keras suffixed the TF scope (`batch_normalization_1_1`); a config settles it.
        if entry is not None or not scope or re.fullmatch(re.escape(lname) + r"(_\d+)?", last):
            yield lname, members, entry
            return
    for scope, members in scopes.items():
        name = f"{lname}/{scope}" if scope else lname
        sub = None
        if entry is not None:
            last = scope.rsplit("/", 1)[-1]
            sub = _find_child(entry, last) or _find_child(entry, re.sub(r"_\d+$", "", last))
        yield name, members, sub


# --------------------------------------------------------------------------- Keras 3 layout


def _open_v3(
    h5: h5py.File,
    path: Path,
    size: int,
    config: Mapping[str, Any] | None,
    fmt: str,
) -> KerasH5Checkpoint:
    warnings: list[str] = []
    variables: dict[str, H5Var] = {}
    ordered: list[tuple[tuple[int, tuple[Any, ...]], LayerNode]] = []
    used: set[str] = set()
    root_entry = _top_entry(config)
    for owner, vars_group, chain in _walk_v3(h5, path, "", []):
        members_raw: list[tuple[str, str]] = []
        for local, obj in hard_items(vars_group, path):
            key = f"{owner}/vars/{local}" if owner else f"vars/{local}"
            if not isinstance(obj, h5py.Dataset):
                warnings.append(f"unexpected group {key!r} inside a vars group, skipped")
                continue
            var = describe_dataset(obj, key, path, size, warnings)
            if var is not None:
                variables[key] = var
                members_raw.append((local, key))
        if not members_raw:
            continue
        members_raw.sort(key=lambda lk: (0, int(lk[0]), "") if lk[0].isdigit() else (1, 0, lk[0]))
        # Names of the owners below the root model, outermost first (`inner_block/inner_bn`).
        names = [n for rel, n in chain if rel]
        entry, cfg_names, rest, order = (
            _v3_config_entry(root_entry, owner, names)
            if root_entry is not None else (None, [], [], None)
        )
        class_name = entry.get("class_name") if entry is not None and not rest else None
        found_by = "config"
        if not isinstance(class_name, str):
            hint = re.sub(r"_\d+$", "", owner.rsplit("/", 1)[-1])
            class_name = _BN_HINTS.get(hint)
            found_by = "names"
        if class_name not in _BN_CLASSES and _looks_like_bn_vars(members_raw, variables):
            # Four 1-D vectors of one shape is BatchNormalization's signature. Either nothing
            # names the class (a sublayer of a custom layer or subclassed model), or the
            # config names another one: the config is evidence, as forgeable as the rest,
            # and may not hide a layer the variables show.
            if class_name is not None:
                warnings.append(
                    f"the config calls {owner or '(model)'!r} a {class_name!r}, but its "
                    "variables are BatchNormalization's (3 or 4 one-dimensional vectors of "
                    "one shape): audited as batch norm")
            class_name, found_by = "BatchNormalization", "structure"
        layer_cfg = _layer_config(entry) if not rest else {}
        if not owner:
            name = chain[0][1] or "(model)" if chain else "(model)"
        elif cfg_names and rest:  # a custom layer's attribute: `stem/norm`
            name = "/".join([*cfg_names, *rest])
        elif names and all(n is not None for n in names):
            name = "/".join(n for n in names if n is not None)
        elif entry is not None and cfg_names:
            name = "/".join(cfg_names)
        else:  # Keras < 3.6 wrote no names: the path is the only unique handle
            name = owner
        if name in used:
            name = owner or name
        used.add(name)
        node = LayerNode(
            name=name,
            members=_v3_members(members_raw, class_name, layer_cfg),
            class_name=class_name,
            config=layer_cfg,
            found_by=found_by,
        )
        ordered.append(((order if order is not None else 1 << 30, _natural(owner)), node))
    # Model order (the config's), not HDF5's name order (`dense_1`, `dense_10`, `dense_2`).
    layers = [node for _, node in sorted(ordered, key=lambda pair: pair[0])]
    ckpt = KerasH5Checkpoint(path, h5, fmt, variables, layers, warnings, size)
    ckpt.model_config = root_entry
    return ckpt


def _walk_v3(
    group: h5py.Group, path: Path, rel: str, chain: list[tuple[str, str | None]]
) -> Iterator[tuple[str, h5py.Group, list[tuple[str, str | None]]]]:
    """Yield (owner path, its `vars` group, [(owner path, `name` attr)] from the root down)."""
    items = hard_items(group, path)
    vars_group = next((g for n, g in items if n == "vars" and isinstance(g, h5py.Group)), None)
    if vars_group is not None:
        raw = h5_attrs(vars_group).get("name")
        chain = [*chain, (rel, h5_text(raw) if raw is not None else None)]
        yield rel, vars_group, chain
    for name, child in items:
        if name == "vars" or not isinstance(child, h5py.Group):
            continue
        if not rel and name in _OPTIMIZER_TOP:
            continue  # optimizer slots are not model state
        yield from _walk_v3(child, path, f"{rel}/{name}" if rel else name, chain)


def _v3_members(
    raw: list[tuple[str, str]], class_name: str | None, cfg: Mapping[str, Any]
) -> dict[str, str]:
    if class_name not in _BN_CLASSES or not all(local.isdigit() for local, _ in raw):
        return {f"vars/{local}" if local.isdigit() else local: key for local, key in raw}
    roles = _bn_roles(len(raw), cfg)
    return {(role or f"vars/{local}"): key for (local, key), role in zip(raw, roles, strict=True)}


def _bn_roles(n: int, cfg: Mapping[str, Any]) -> list[str | None]:
    """Role of each saved BN variable, in Keras 3 creation order; None where unknowable."""
    stats = ["moving_mean", "moving_variance"]
    extras = ["moving_stddev", "renorm_mean", "renorm_stddev"]
    if cfg:
        expected: list[str | None] = []
        if cfg.get("scale", True):
            expected.append("gamma")
        if cfg.get("center", True):
            expected.append("beta")
        expected += stats + (extras if cfg.get("renorm", False) else [])
        if len(expected) == n:
            return expected
    by_count: dict[int, list[str | None]] = {
        2: [*stats],
        3: [None, *stats],
        4: ["gamma", "beta", *stats],
        5: [*stats, *extras],
        6: [None, *stats, *extras],
        7: ["gamma", "beta", *stats, *extras],
    }
    return by_count.get(n, [None] * n)


def _v3_config_entry(
    root: Mapping[str, Any], owner: str, names: list[str | None]
) -> tuple[Mapping[str, Any] | None, list[str], list[str], int | None]:
    """The config entry of the layer saved at `owner`, the layer names leading to it, the path
    parts the config does not describe (a custom layer's sublayer attributes), and the entry's
    position in the config (model order).

    Matched by the `vars` `name` attributes when the file has them (Keras >= 3.6), else by
    replaying how Keras 3 names the path.
    """
    if not owner:
        return root, [], [], 0
    if names and all(n is not None for n in names):
        entry: Mapping[str, Any] | None = root
        for n in names:
            entry = _direct_child(entry, n) if entry is not None and n is not None else None
        if entry is not None:
            return entry, [n for n in names if n is not None], [], _position(root, entry)
    entry, cfg_names, rest = _entry_by_path(root, owner.split("/"))
    return entry, cfg_names, rest, _position(root, entry) if entry is not None else None


def _entry_by_path(
    root: Mapping[str, Any], parts: list[str]
) -> tuple[Mapping[str, Any] | None, list[str], list[str]]:
    """Replay Keras 3's path naming: `layers/<snake class>[_N]`, or an attribute name. Returns
    the deepest entry matched, the layer names to it, and the attribute parts left over."""
    entry: Mapping[str, Any] = root
    names: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        kids = _children(entry)
        nxt: Mapping[str, Any] | None
        if part == "layers" and i + 1 < len(parts) and kids:
            skip_input = entry.get("class_name") == "Sequential"
            nxt = _snake_map(kids, skip_input).get(parts[i + 1])
            step = 2
        else:
            cfg = entry.get("config")
            sub = cfg.get(part) if isinstance(cfg, Mapping) else None
            nxt = sub if isinstance(sub, Mapping) and "class_name" in sub else None
            step = 1
        if nxt is None:
            break
        entry = nxt
        names.append(_entry_name(entry) or parts[i + step - 1])
        i += step
    if i == 0:
        return None, [], [p for p in parts if p != "layers"]
    return entry, names, [p for p in parts[i:] if p != "layers"]


def _position(root: Mapping[str, Any], target: Mapping[str, Any]) -> int | None:
    """Depth-first position of `target` among the config's layer entries."""
    count = 0
    stack = [root]
    while stack:
        entry = stack.pop()
        if entry is target:
            return count
        count += 1
        stack.extend(reversed(_children(entry)))
    return None


def _natural(path: str) -> tuple[Any, ...]:
    """`dense_2` before `dense_10`."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path))


def _looks_like_bn_vars(members: list[tuple[str, str]], variables: Mapping[str, H5Var]) -> bool:
    """BatchNormalization's signature: 4 one-dimensional float vectors of one shape (3 with
    `center` or `scale` off). No other Keras layer has 3 or 4; layer / group norm have 2, which
    is also BN with both off: that case stays unknown rather than guessed."""
    infos = [variables[key].info for _, key in members]
    return (
        len(infos) in (3, 4)
        and all(len(i.shape) == 1 and i.dtype.kind == "f" for i in infos)
        and len({i.shape for i in infos}) == 1
    )


def _snake_map(kids: list[Mapping[str, Any]], skip_input: bool) -> dict[str, Mapping[str, Any]]:
    used: dict[str, int] = {}
    out: dict[str, Mapping[str, Any]] = {}
    for kid in kids:
        cls = str(kid.get("class_name", ""))
        if skip_input and cls == "InputLayer":
            continue
        base = _to_snake_case(cls)
        if base in used:
            used[base] += 1
            name = f"{base}_{used[base]}"
        else:
            used[base] = 0
            name = base
        out[name] = kid
    return out


def _to_snake_case(name: str) -> str:
    # Same steps as keras.src.utils.naming.to_snake_case.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# --------------------------------------------------------------------------- config helpers


def _top_entry(config: Any) -> Mapping[str, Any] | None:
    return config if isinstance(config, Mapping) and "class_name" in config else None


def _entry_name(entry: Mapping[str, Any]) -> str | None:
    name = entry.get("name")
    cfg = entry.get("config")
    if name is None and isinstance(cfg, Mapping):
        name = cfg.get("name")
    return name if isinstance(name, str) else None


def _children(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Sub-layers listed in a config entry: model layers, or a wrapper's wrapped layer(s)."""
    cfg = entry.get("config")
    if isinstance(cfg, list):  # Keras 2.0-2.2 Sequential: config is the layer list
        return [c for c in cfg if isinstance(c, Mapping)]
    if not isinstance(cfg, Mapping):
        return []
    layers = cfg.get("layers")
    if isinstance(layers, list):
        return [c for c in layers if isinstance(c, Mapping)]
    return [
        cfg[k]
        for k in ("layer", "backward_layer")
        if isinstance(cfg.get(k), Mapping) and "class_name" in cfg[k]
    ]


def _direct_child(entry: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    return next((c for c in _children(entry) if _entry_name(c) == name), None)


def _find_child(
    entry: Mapping[str, Any] | None, name: str, depth: int = 0
) -> Mapping[str, Any] | None:
    """A layer entry named `name` under `entry`, nearest level first."""
    if entry is None or depth > 64:
        return None
    found = _direct_child(entry, name)
    if found is not None:
        return found
    for kid in _children(entry):
        found = _find_child(kid, name, depth + 1)
        if found is not None:
            return found
    return None


def _layer_config(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = entry.get("config") if entry is not None else None
    return dict(cfg) if isinstance(cfg, Mapping) else {}


def _node(name: str, members: dict[str, str], entry: Mapping[str, Any] | None) -> LayerNode:
    cls = entry.get("class_name") if entry is not None else None
    return LayerNode(
        name=name,
        members=members,
        class_name=cls if isinstance(cls, str) else None,
        config=_layer_config(entry),
        found_by="config" if isinstance(cls, str) else "names",
    )

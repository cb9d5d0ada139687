"""PyTorch checkpoints in `torch.save`'s zip format (since 1.6): `.pt`, `.pth`, Lightning
`.ckpt`. Read without torch and without unpickling: `<archive>/data.pkl` through
`safe_pickle.py` (nothing it names is imported or called), tensors from the
`<archive>/data/<key>` storages. Knows PyTorch's layout and names, nothing about the rules.

The state_dict is the top-level dict itself, or its `state_dict` (Lightning), or its
`model_state_dict` / `model` / `net` entry when that maps names to tensors. BN layers are the
modules with `running_mean` and `running_var` (`BatchNorm1d/2d/3d`, `SyncBatchNorm`), their
`weight` / `bias` as gamma / beta and `num_batches_tracked` beside them; they are reported as
the file's own structure, so the audit groups them without guessing from names.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.checkpoint import Checkpoint, LayerNode, StepCount, TensorInfo
from ckptdoc.errors import CorruptCheckpointError, UnsupportedFormatError
from ckptdoc.formats.bfloat16 import bfloat16_to_float32
from ckptdoc.formats.safe_pickle import Opaque, PickleError, TensorRef, read_pickle

__all__ = ["TorchCheckpoint", "bn_modules", "open_torch", "is_torch_zip"]

#: torch storage class -> NumPy dtype (little-endian, as torch.save writes them).
_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
_MAX_PICKLE_BYTES = 256 << 20
_BN_ROLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
             "running_var": "moving_variance"}
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") for n in zf.namelist()[:10_000])
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError, EOFError):
        return False


def open_torch(path: Path) -> TorchCheckpoint:
    return TorchCheckpoint(path)


class TorchCheckpoint(Checkpoint):
    format = "pytorch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._zip = zipfile.ZipFile(path)
        self._raw = open(path, "rb")  # noqa: SIM115 - closed with the checkpoint
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        names = self._zip.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise UnsupportedFormatError(self.path, "a zip without data.pkl is not a torch.save "
                                         "archive")
        self._archive = pkl[: -len("/data.pkl")]
        info = self._zip.getinfo(pkl)
        if info.file_size > _MAX_PICKLE_BYTES:
            raise CorruptCheckpointError(self.path, f"data.pkl is {info.file_size} bytes")
        try:
            unpickled = read_pickle(self._zip.read(pkl))
        except PickleError as exc:
            raise CorruptCheckpointError(self.path, f"{pkl}: {exc}") from exc
        #: Globals the pickle names that torch.load would import and call (CK001).
        self.unsafe_globals = unpickled.unsafe_globals
        top = unpickled.value
        self._state, where = _state_dict(top)
        self._warnings: list[str] = []
        if where:
            self._warnings.append(f"the model's tensors are the checkpoint's `{where}` entry")
        self._step = _global_step(top)
        self._refs = {k: v for k, v in self._state.items() if isinstance(v, TensorRef)}
        unread = sorted(str(k) for k, v in self._state.items() if isinstance(v, Opaque))
        if unread:
            # Entries torch would rebuild some other way (a quantized or sparse tensor, a
            # custom class): not read, so said, never silently dropped.
            listed = ", ".join(f"`{k}`" for k in unread[:5])
            more = f" and {len(unread) - 5} more" if len(unread) > 5 else ""
            self._warnings.append(f"{len(unread)} state_dict entries are built by code "
                                  f"ckptdoc does not run and were not read: {listed}{more}")
        self._tensors: dict[str, TensorInfo] = {}
        for key, ref in self._refs.items():
            dtype = _DTYPES.get(ref.storage.dtype)
            if dtype is None:
                self._warnings.append(f"{key}: storage type {ref.storage.dtype} skipped")
                continue
            shown = np.dtype("<f4") if ref.storage.dtype == "BFloat16Storage" else np.dtype(dtype)
            self._tensors[key] = TensorInfo(key, shown, ref.shape)
        if not self._tensors:
            raise UnsupportedFormatError(self.path, "a PyTorch file without a state_dict of "
                                         "tensors (a whole pickled model? save "
                                         "model.state_dict() instead)")
        self._layers = bn_modules(self._tensors)

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @property
    def layers(self) -> list[LayerNode] | None:
        return self._layers

    def step_count(self) -> StepCount | None:
        return self._step

    def read(self, key: str) -> np.ndarray:
        ref = self._refs.get(key)
        if ref is None or key not in self._tensors:
            raise KeyError(key)
        dtype = np.dtype(_DTYPES[ref.storage.dtype])
        member = f"{self._archive}/data/{ref.storage.key}"
        try:
            info = self._zip.getinfo(member)
        except KeyError:
            raise CorruptCheckpointError(self.path, f"{key}: storage {member} is missing") \
                from None
        if info.file_size != ref.storage.numel * dtype.itemsize:
            raise CorruptCheckpointError(self.path, f"{key}: storage {member} holds "
                                         f"{info.file_size} bytes, not {ref.storage.numel} "
                                         f"x {dtype.itemsize}")
        storage = np.frombuffer(self._member(info), dtype=dtype)
        numel = int(np.prod(ref.shape, dtype=np.int64)) if ref.shape else 1
        last = ref.offset + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True)) \
            if numel else ref.offset
        if numel and (ref.offset < 0 or last >= storage.size):
            raise CorruptCheckpointError(self.path, f"{key}: its view runs past its storage")
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset:], shape=ref.shape,
            strides=tuple(s * dtype.itemsize for s in ref.stride)) if numel else \
            np.zeros(ref.shape, dtype)
        out = np.array(view)  # a copy: the zip member's buffer is not kept
        if ref.storage.dtype == "BFloat16Storage":
            out = bfloat16_to_float32(out)
        return out

    def _member(self, info: zipfile.ZipInfo) -> bytes:
        """A member's bytes, CRC-checked. torch.save stores members uncompressed, so they
        are read straight from their offset (zipfile's own reader costs ~20 us a member, most
        of an audit's reads); anything else goes through zipfile."""
        if info.compress_type != zipfile.ZIP_STORED:
            return self._zip.read(info)
        fh = self._raw
        fh.seek(info.header_offset)
        header = fh.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CorruptCheckpointError(self.path, f"{info.filename}: bad local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        data = fh.read(info.file_size)
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise CorruptCheckpointError(self.path, f"{info.filename}: checksum mismatch")
        return data

    def close(self) -> None:
        self._raw.close()
        self._zip.close()


def _state_dict(top: Any) -> tuple[dict[str, Any], str | None]:
    if isinstance(top, dict):
        if _tensor_map(top):
            return top, None
        for key in _STATE_KEYS:
            inner = top.get(key)
            if isinstance(inner, dict) and _tensor_map(inner):
                return inner, key
    return {}, None


def _tensor_map(d: dict[Any, Any]) -> bool:
    return any(isinstance(v, TensorRef) for v in d.values()) and all(
        isinstance(k, str) for k in d)


def _global_step(top: Any) -> StepCount | None:
    if isinstance(top, dict):
        step = top.get("global_step")
        if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
            return StepCount(step, "global_step")
    return None


def bn_modules(tensors: Mapping[str, TensorInfo]) -> list[LayerNode]:
    """Modules holding running_mean and running_var: PyTorch's batch norm, whatever its path."""
    by_module: dict[str, dict[str, str]] = {}
    for key in tensors:
        module, _, leaf = key.rpartition(".")
        by_module.setdefault(module, {})[leaf] = key
    out = []
    for module, leaves in by_module.items():
        if "running_mean" not in leaves or "running_var" not in leaves:
            continue
        members = {role: leaves[leaf] for leaf, role in _BN_ROLES.items() if leaf in leaves}
        if "num_batches_tracked" in leaves:
            members["num_batches_tracked"] = leaves["num_batches_tracked"]
        # No class_name: PyTorch's momentum (0.1 by default, or None) is not in the file, and
        # a class would make the audit assume Keras's.
        out.append(LayerNode(module or "(root)", members, found_by="state_dict"))
    return out

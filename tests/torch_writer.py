"""Write `torch.save` zip archives without torch, opcode by opcode, for tests.

The layout and the pickle follow what torch.save writes (protocol 2): `archive/data.pkl`, an
`OrderedDict` whose tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, OrderedDict())` calls on persistent ids `('storage',
torch.FloatStorage, key, 'cpu', numel)`, and each storage's raw little-endian bytes in
`archive/data/<key>`. torch is not installed here, so these files were not checked against a
real torch.save; the reader's own tests pin the format.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE = {np.dtype("<f4"): "FloatStorage", np.dtype("<f8"): "DoubleStorage",
            np.dtype("<f2"): "HalfStorage", np.dtype("<i8"): "LongStorage",
            np.dtype("<i4"): "IntStorage", np.dtype("u1"): "ByteStorage"}


class Raw:
    """Pickle opcodes inserted as they are (hostile programs)."""

    def __init__(self, ops: bytes) -> None:
        self.ops = ops


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if -(2**31) <= i < 2**31:
        return b"J" + struct.pack("<i", i)
    raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"


class _Writer:
    def __init__(self) -> None:
        self.storages: dict[str, bytes] = {}

    def value(self, v: Any) -> bytes:
        if isinstance(v, Raw):
            return v.ops
        if isinstance(v, np.ndarray):
            return self.tensor(v)
        if isinstance(v, bool):
            return b"\x88" if v else b"\x89"
        if isinstance(v, int):
            return _int(v)
        if isinstance(v, float):
            return b"G" + struct.pack(">d", v)
        if isinstance(v, str):
            return _str(v)
        if v is None:
            return b"N"
        if isinstance(v, dict):
            body = b"".join(self.value(k) + self.value(x) for k, x in v.items())
            return _ordered_dict() + (b"(" + body + b"u" if v else b"")
        if isinstance(v, (list, tuple)):
            return _tuple([self.value(x) for x in v])
        raise TypeError(type(v))

    def tensor(self, a: np.ndarray) -> bytes:
        a = np.ascontiguousarray(a)
        arr = a.astype(a.dtype.newbyteorder("<"))
        key = str(len(self.storages))
        self.storages[key] = arr.tobytes()
        pid = _tuple([_str("storage"), _global("torch", _STORAGE[arr.dtype]), _str(key),
                      _str("cpu"), _int(arr.size)]) + b"Q"
        stride = [int(s // arr.itemsize) for s in arr.strides] if arr.size else [1] * arr.ndim
        args = _tuple([pid, _int(0), _tuple([_int(d) for d in arr.shape]),
                       _tuple([_int(s) for s in stride]), b"\x89", _ordered_dict()])
        return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def torch_save(path: Path, obj: Any, archive: str = "archive") -> Path:
    """`obj`: dicts (written as OrderedDicts), NumPy arrays (tensors), numbers, strings,
    lists / tuples, and `Raw` opcodes."""
    w = _Writer()
    pkl = b"\x80\x02" + w.value(obj) + b"."
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", pkl)
        zf.writestr(f"{archive}/byteorder", "little")
        for key, data in w.storages.items():
            zf.writestr(f"{archive}/data/{key}", data)
        zf.writestr(f"{archive}/version", "3\n")
    return path


def os_system(command: str) -> Raw:
    """`os.system(command)` as a pickle value: what a malicious checkpoint carries."""
    return Raw(_global("os", "system") + _tuple([_str(command)]) + b"R")


def bn_state(channels: int, *, trained: bool, broken: bool, seed: int = 0,
             tracked: int | None = 100, prefix: str = "layer1.0.bn1") -> dict[str, np.ndarray]:
    """A conv + BatchNorm2d state_dict: trained gamma / beta when `trained`, statistics still
    0 / 1 when `broken`, `num_batches_tracked` unless None."""
    rng = np.random.default_rng(seed)
    out = {
        f"{prefix.rsplit('.', 1)[0]}.conv1.weight":
            rng.normal(size=(channels, 3, 3, 3)).astype(np.float32),
        f"{prefix}.weight": (1 + 0.3 * rng.normal(size=channels) if trained
                             else np.ones(channels)).astype(np.float32),
        f"{prefix}.bias": (0.3 * rng.normal(size=channels) if trained
                           else np.zeros(channels)).astype(np.float32),
        f"{prefix}.running_mean": (np.zeros(channels) if broken
                                   else rng.normal(size=channels)).astype(np.float32),
        f"{prefix}.running_var": (np.ones(channels) if broken
                                  else rng.uniform(0.2, 3, channels)).astype(np.float32),
    }
    if tracked is not None:
        out[f"{prefix}.num_batches_tracked"] = np.array(tracked, np.int64)
    return out

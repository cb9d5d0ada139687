"""`.safetensors`: an 8-byte little-endian header length, a JSON header (`name -> {dtype,
shape, data_offsets}`, plus `__metadata__`), then the raw tensors. Nothing to execute by
design; read here without the `safetensors` package. BN layers are PyTorch's (`running_mean`
/ `running_var` modules), as in torch_zip.py. Knows the format, nothing about the rules.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.checkpoint import Checkpoint, LayerNode, TensorInfo
from ckptdoc.errors import CorruptCheckpointError
from ckptdoc.formats.bfloat16 import bfloat16_to_float32
from ckptdoc.formats.torch_zip import bn_modules

__all__ = ["SafetensorsCheckpoint", "open_safetensors"]

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
#: The format's own limit on the header.
MAX_HEADER_BYTES = 100 << 20


def open_safetensors(path: Path) -> SafetensorsCheckpoint:
    return SafetensorsCheckpoint(path)


class SafetensorsCheckpoint(Checkpoint):
    format = "safetensors"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CorruptCheckpointError(path, "shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CorruptCheckpointError(path, f"header of {n} bytes does not fit")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError) as exc:
                raise CorruptCheckpointError(path, f"header is not JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise CorruptCheckpointError(path, "header is not a JSON object")
        self._base, self._size = 8 + n, size
        self._entries: dict[str, tuple[np.dtype[Any], tuple[int, ...], int, int]] = {}
        self._tensors: dict[str, TensorInfo] = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            self._add(str(key), entry)
        self._layers = bn_modules(self._tensors)

    def _add(self, key: str, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise CorruptCheckpointError(self.path, f"{key}: not a tensor entry")
        code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if code not in _DTYPES:
            raise CorruptCheckpointError(self.path, f"{key}: unknown dtype {code!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CorruptCheckpointError(self.path, f"{key}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)):
            raise CorruptCheckpointError(self.path, f"{key}: bad data_offsets")
        dtype = np.dtype(_DTYPES[code])
        begin, end = offsets
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not 0 <= begin <= end or self._base + end > self._size \
                or end - begin != numel * dtype.itemsize:
            raise CorruptCheckpointError(self.path, f"{key}: data_offsets {offsets} do not "
                                         f"fit {numel} x {dtype.itemsize} bytes in the file")
        self._entries[key] = (dtype, tuple(shape), begin, end)
        shown = np.dtype("<f4") if code == "BF16" else dtype
        self._tensors[key] = TensorInfo(key, shown, tuple(shape))

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def layers(self) -> list[LayerNode] | None:
        return self._layers

    def read(self, key: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[key]
        with open(self.path, "rb") as f:  # only this tensor's bytes
            f.seek(self._base + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:
            raise CorruptCheckpointError(self.path, f"{key}: the file is truncated")
        out = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
        if self._tensors[key].dtype != dtype:  # bfloat16, widened exactly
            out = bfloat16_to_float32(out)
        return out

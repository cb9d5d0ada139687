"""HDF5 read safely, for the Keras readers: only hard links are followed (a soft or external
link on the way to a weight is refused), datasets with external storage or a virtual layout
are refused, a dataset whose declared size cannot fit in the file is refused before any
read; attributes are decoded as text / JSON with the file named in every error; and a remote
file's sparse mirror is fetched range by range as libhdf5 reads it (`FetchingFile`). Knows
HDF5, nothing about Keras layouts or batch norm.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ckptdoc.checkpoint import TensorInfo
from ckptdoc.errors import CorruptCheckpointError, UnsafeCheckpointError

#: A contiguous numeric dataset at least this big is skipped by the heap scan of a big file.
MIN_SKIPPED_EXTENT = 1 << 20
#: A compressed chunk can inflate ~1000x (zlib's limit); beyond that the size is a lie or a bomb.
MAX_COMPRESSION_RATIO = 1100
SLACK = 1 << 20


@dataclass(frozen=True)
class H5Var:
    """A dataset as a tensor: its TensorInfo, and whether it holds bfloat16 to widen."""

    info: TensorInfo
    bfloat16: bool = False


class FetchingFile(io.RawIOBase):
    """A local sparse mirror of a remote file, fetching each range before libhdf5 reads it."""

    def __init__(self, path: Path, fetch: Callable[[Path, int, int], None]) -> None:
        super().__init__()
        self._path, self._fetch = path, fetch
        self._f = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._size = path.stat().st_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer: Any) -> int:
        pos = self._f.tell()
        self._fetch(self._path, pos, min(len(buffer), max(0, self._size - pos)))
        return self._f.readinto(buffer)

    def close(self) -> None:
        self._f.close()
        super().close()


def gaps(skip: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The byte ranges of [0, size) outside the sorted, disjoint `skip` ranges."""
    out, pos = [], 0
    for start, end in skip:
        if start > pos:
            out.append((pos, start))
        pos = max(pos, end)
    if pos < size:
        out.append((pos, size))
    return out


def raw_data_extents(h5: h5py.File, path: Path, size: int) -> list[tuple[int, int]]:
    """Sorted byte ranges holding the raw data of contiguous, unfiltered numeric datasets of
    at least 1 MiB. Only layout information is read. Ranges that overlap each other or run
    past the file are not skipped (a file lying about its layout gets the full scan there)."""
    extents: list[tuple[int, int]] = []

    def walk(group: h5py.Group, depth: int) -> None:
        for _name, obj in hard_items(group, path):
            if isinstance(obj, h5py.Group) and depth < 64:
                walk(obj, depth + 1)
                continue
            if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biuf":
                continue
            dcpl = obj.id.get_create_plist()
            if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_nfilters():
                continue
            offset, nbytes = obj.id.get_offset(), obj.id.get_storage_size()
            if offset is not None and nbytes >= MIN_SKIPPED_EXTENT and offset + nbytes <= size:
                extents.append((offset, offset + nbytes))

    try:
        walk(h5, 0)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CorruptCheckpointError(path, f"damaged HDF5 structure: {exc}") from exc
    extents.sort()
    disjoint = [e for i, e in enumerate(extents)
                if (i == 0 or extents[i - 1][1] <= e[0])
                and (i + 1 == len(extents) or e[1] <= extents[i + 1][0])]
    return disjoint





def h5_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """Attributes as a plain dict; a damaged attribute raises CorruptCheckpointError upstream."""
    return {k: obj.attrs[k] for k in obj.attrs}


def h5_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return h5_text(value.item())
    return str(value)


def json_attr(attrs: dict[str, Any], name: str, path: Path, warnings: list[str]) -> Any:
    if name not in attrs:
        return None
    try:
        return json.loads(h5_text(attrs[name]))
    except (ValueError, RecursionError) as exc:
        warnings.append(f"root attribute {name!r} is not valid JSON ({exc}); config ignored")
        return None


def split_attr(group: h5py.Group, name: str, path: Path) -> list[str]:
    """A string-list attribute, joined back from `name0`, `name1`, ... when Keras split it."""
    attrs = group.attrs
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in attrs:
            chunks.append(attrs[f"{name}{len(chunks)}"])
    out: list[str] = []
    for chunk in chunks:
        arr = np.asarray(chunk)
        if arr.size == 0:
            continue
        if arr.dtype.kind not in "SUO":
            raise CorruptCheckpointError(path, f"attribute {name!r} of {group.name} is not text")
        out.extend(h5_text(v) for v in arr.reshape(-1))
    return out


def hard_child(group: h5py.Group, name: str, path: Path) -> h5py.HLObject | None:
    """`group[name]` through a hard link only; None if absent."""
    if name not in group:
        return None
    link = group.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        kind = "external" if isinstance(link, h5py.ExternalLink) else "soft"
        target = getattr(link, "filename", None) or getattr(link, "path", "?")
        raise UnsafeCheckpointError(
            path,
            f"{group.name.rstrip('/')}/{name} is a {kind} link (to {target!r}); "
            "ckptdoc does not follow links",
        )
    return group[name]


def hard_resolve(h5: h5py.Group, key: str, path: Path) -> h5py.HLObject | None:
    """Walk `key` one component at a time so no link, at any depth, is followed."""
    obj: h5py.HLObject = h5
    for part in key.split("/"):
        if not part:
            continue
        if not isinstance(obj, h5py.Group):
            return None
        nxt = hard_child(obj, part, path)
        if nxt is None:
            return None
        obj = nxt
    return obj


def hard_items(group: h5py.Group, path: Path) -> list[tuple[str, h5py.HLObject]]:
    out = []
    for name in group:
        obj = hard_child(group, name, path)
        if obj is not None:
            out.append((name, obj))
    return out


def walk_datasets(group: h5py.Group, path: Path, rel: str) -> Iterator[tuple[str, h5py.Dataset]]:
    for name, obj in hard_items(group, path):
        sub = f"{rel}/{name}" if rel else name
        if isinstance(obj, h5py.Dataset):
            yield sub, obj
        elif isinstance(obj, h5py.Group):
            yield from walk_datasets(obj, path, sub)


def check_dataset(dset: h5py.Dataset, key: str, path: Path, file_size: int) -> None:
    if dset.external:
        raise UnsafeCheckpointError(path, f"dataset {key!r} keeps its data in external files")
    if dset.is_virtual:
        raise UnsafeCheckpointError(path, f"dataset {key!r} is a virtual dataset")
    shape = dset.shape
    if shape is None:  # null dataspace: nothing to read
        return
    if any(d < 0 for d in shape):
        raise CorruptCheckpointError(path, f"dataset {key!r} has a negative dimension")
    nbytes = int(np.prod(shape, dtype=object)) * dset.dtype.itemsize
    if dset.chunks is None:  # contiguous or compact: the bytes must be in the file
        if nbytes > file_size:
            raise CorruptCheckpointError(
                path, f"dataset {key!r} declares {nbytes} bytes, more than the whole file"
            )
    elif dset.id.get_create_plist().get_nfilters() == 0:
        if nbytes > 2 * file_size + SLACK:
            raise CorruptCheckpointError(
                path, f"dataset {key!r} declares {nbytes} bytes in a {file_size}-byte file"
            )
    elif nbytes > MAX_COMPRESSION_RATIO * file_size + SLACK:
        raise UnsafeCheckpointError(
            path,
            f"dataset {key!r} would inflate to {nbytes} bytes from a {file_size}-byte "
            "file (compression bomb?)",
        )


def describe_dataset(
    dset: h5py.Dataset, key: str, path: Path, file_size: int, warnings: list[str]
) -> H5Var | None:
    check_dataset(dset, key, path, file_size)
    dtype = dset.dtype
    if dset.shape is None:
        warnings.append(f"dataset {key!r} has no dataspace (empty); skipped")
        return None
    shape = tuple(int(d) for d in dset.shape)
    raw_tag = dset.attrs.get("dtype") if "dtype" in dset.attrs else None
    if raw_tag is not None and h5_text(raw_tag) == "bfloat16" and dtype.itemsize == 2:
        # Keras 3 stores bfloat16 as opaque 2-byte values; widen (exactly) to float32.
        return H5Var(TensorInfo(key, np.dtype(np.float32), shape), bfloat16=True)
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        warnings.append(f"dataset {key!r} has non-numeric dtype {dtype}; skipped")
        return None
    return H5Var(TensorInfo(key, dtype, shape))

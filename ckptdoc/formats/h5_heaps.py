"""Check an HDF5 file's global heap collections before libhdf5 reads any string from them.

Keras keeps its attributes (`layer_names`, `weight_names`, `name`, `model_config`, ...) as
variable-length strings, which live in global heap collections ("GCOL" blocks). libhdf5 1.14
walks a collection's objects trusting each object's size: a damaged size makes
`H5HG__cache_heap_deserialize` loop for minutes, or for ever (found by fuzzing; see
docs/reliability.md). So before h5py touches an attribute, every collection in the file is
walked here, with bounds checks, and a damaged one is refused as corruption.

Format (HDF5 spec, "Global Heap"): "GCOL", version 1, 3 reserved bytes, collection size
(size-of-lengths bytes, including this header); then objects: index (2), reference count (2),
reserved (4), size (size-of-lengths), data padded to a multiple of 8. Object index 0 is the
free space (its size includes its header and is not padded).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from pathlib import Path

from ckptdoc.errors import CorruptCheckpointError
from ckptdoc.formats.window import Window, release

# Whole files (bytes, mmap) or a member inside a zip (Window): all index and find alike.
Buffer = bytes | mmap.mmap | Window

_SIGNATURE = b"GCOL\x01\x00\x00\x00"
_SUPERBLOCK = b"\x89HDF\r\n\x1a\n"
_MIN_COLLECTION = 4096  # libhdf5 never writes a smaller collection
_CHUNK = 16 << 20  # bytes searched between releases of scanned pages


def _size_of_lengths(buf: Buffer) -> int | None:
    """The superblock's "size of lengths", or None if no superblock is found where the spec
    allows one (offset 0, 512, 1024, ...)."""
    offset = 0
    while offset + 16 <= len(buf):
        if buf[offset : offset + 8] == _SUPERBLOCK:
            version = buf[offset + 8]
            return buf[offset + 14] if version in (0, 1) else buf[offset + 10]
        offset = 512 if offset == 0 else offset * 2
    return None


def check_global_heaps(
    buf: Buffer, path: Path, skip: Sequence[tuple[int, int]] = ()
) -> None:
    """Raise CorruptCheckpointError if any global heap collection in `buf` is malformed.

    `skip`: sorted, disjoint byte ranges not searched (the raw data of big numeric datasets,
    see `raw_data_extents`); a collection found elsewhere is walked whole wherever it ends."""
    lengths = _size_of_lengths(buf)
    if lengths != 8:  # h5py / Keras always write 8; anything else is left to libhdf5
        return
    end_of_file = len(buf)
    skips = list(skip)
    pos = _find(buf, 0, skips)
    while pos != -1:
        if pos + 16 > end_of_file:
            raise CorruptCheckpointError(path, f"truncated global heap at byte {pos}")
        (size,) = struct.unpack("<Q", buf[pos + 8 : pos + 16])
        if size < _MIN_COLLECTION or size > end_of_file - pos:
            raise CorruptCheckpointError(
                path, f"global heap at byte {pos} claims {size} bytes (file has {end_of_file})"
            )
        _walk(buf, pos, size, path)
        pos = _find(buf, pos + 8, skips)


def _find(buf: Buffer, start: int, skips: list[tuple[int, int]]) -> int:
    """The next collection signature at or after `start`, outside the `skips` ranges (consumed
    as passed), searched a chunk at a time; pages of a mapped file already scanned are
    released, so scanning a multi-gigabyte file costs a chunk of memory, not the file."""
    end = len(buf)
    while start < end:
        while skips and skips[0][1] <= start:
            skips.pop(0)
        if skips and skips[0][0] <= start:
            start = skips.pop(0)[1]
            continue
        stop = min(end, start + _CHUNK, skips[0][0] if skips else end)
        # A signature may start before `stop` and end after it.
        pos = buf.find(_SIGNATURE, start, stop + len(_SIGNATURE) - 1)
        if pos != -1 and pos < stop:
            return pos
        _release(buf, start, stop)
        start = stop
    return -1


def _release(buf: Buffer, start: int, end: int) -> None:
    if isinstance(buf, Window):
        buf.release(start, end)
    elif isinstance(buf, mmap.mmap):
        release(buf, start, end)


def _walk(buf: Buffer, start: int, size: int, path: Path) -> None:
    """Mirror libhdf5's walk (H5HG__cache_heap_deserialize), refusing what would send it
    outside the collection or keep it in place: an object's padded size, or the free-space
    object's (unpadded, header included) size, must be positive and fit what is left."""
    end = start + size
    pos = start + 16
    while pos + 16 <= end:
        index, _refs, _reserved, obj_size = struct.unpack("<HHIQ", buf[pos : pos + 16])
        need = obj_size if index == 0 else 16 + ((obj_size + 7) & ~7)
        if obj_size > end - pos or not 0 < need <= end - pos:
            raise CorruptCheckpointError(
                path,
                f"global heap at byte {start}: object {index} claims {obj_size} bytes, "
                "outside its collection (damaged string attributes)",
            )
        pos += need


def check_global_heaps_in_file(path: Path, skip: Sequence[tuple[int, int]] = ()) -> None:
    """`check_global_heaps` on a file, through mmap so only a scan's worth of pages is read."""
    with open(path, "rb") as f:
        try:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file: nothing to check, h5py will refuse it
            return
        with view:
            check_global_heaps(view, path, skip)

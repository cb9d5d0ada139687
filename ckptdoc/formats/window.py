"""A byte range of a larger buffer, seen as a buffer or a file of its own.

A `.keras` archive stores `model.weights.h5` uncompressed, so the weights file is a contiguous
range of the zip: reading it through a window over an mmap of the archive lets h5py touch only
the pages it needs, instead of holding the whole member (gigabytes, for big models) in memory.
"""

from __future__ import annotations

import io
import mmap
from typing import overload


class Window:
    """Bytes [start, start + size) of `buf`, indexed from 0; supports what the HDF5 pre-checks
    use: len, integer and slice indexing, find."""

    def __init__(self, buf: mmap.mmap, start: int, size: int) -> None:
        if start < 0 or size < 0 or start + size > len(buf):
            raise ValueError(f"window [{start}, {start + size}) outside a {len(buf)}-byte buffer")
        self._buf, self._start, self._size = buf, start, size

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, int):
            if not -self._size <= key < self._size:
                raise IndexError("window index out of range")
            return self._buf[self._start + key % self._size]
        lo, hi, step = key.indices(self._size)
        if step != 1:
            raise ValueError("window slices take no step")
        return self._buf[self._start + lo : self._start + max(lo, hi)]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = self._size if end is None else min(end, self._size)
        pos = self._buf.find(sub, self._start + start, self._start + end)
        return pos - self._start if pos != -1 else -1

    def open(self) -> WindowFile:
        return WindowFile(self)

    def release(self, start: int, end: int) -> None:
        """Drop the pages of [start, end) from this process's memory (they are re-read from
        the file if touched again): scans of big files stay within a chunk's worth of RSS."""
        release(self._buf, self._start + start, self._start + end)


def release(buf: mmap.mmap, start: int, end: int) -> None:
    """madvise(MADV_DONTNEED) on the whole pages inside [start, end) of a file mapping."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:  # not on this platform: the kernel reclaims clean pages anyway
        return
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = (end // mmap.PAGESIZE) * mmap.PAGESIZE
    if last > first:
        buf.madvise(advice, first, last - first)


class WindowFile(io.RawIOBase):
    """A read-only, seekable file over a Window (what h5py's file-object driver needs)."""

    def __init__(self, window: Window) -> None:
        super().__init__()
        self._window = window
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._window)}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the window")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._window[self._pos : self._pos + len(buffer)]
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

"""Read the LevelDB-style table that a tensor bundle's `.index` file is.

Layout (TensorFlow's `core/lib/io/table*`): data blocks, a metaindex block, an index block,
then a 48-byte footer (two block handles, padding, magic). Every block is followed by a
5-byte trailer: a compression type byte and a masked CRC32C over block + type. The CRC of
every block is checked before the block is parsed, and every handle must stay inside the file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import google_crc32c

from ckptdoc.errors import CorruptCheckpointError, UnsupportedFormatError
from ckptdoc.formats.proto import ProtoError, read_varint

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5
MAX_INDEX_BYTES = 1 << 31  # an index maps names to offsets; 2 GiB of it is not a checkpoint
MAX_BLOCK_BYTES = 1 << 28
_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes | memoryview) -> int:
    return int(google_crc32c.value(bytes(data)))


def mask_crc(crc: int) -> int:
    """LevelDB/TF masking: rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def snappy_decompress(data: bytes, max_size: int = MAX_BLOCK_BYTES) -> bytes:
    """Raw snappy (no framing), as very old LevelDB tables used. Bounds-checked throughout."""
    size, pos = read_varint(data, 0)
    if size > max_size:
        raise ValueError(f"snappy block claims {size} bytes")
    out = bytearray()
    n = len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > n:
                    raise ValueError("truncated snappy literal length")
                length = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > n:
                raise ValueError("truncated snappy literal")
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            if pos >= n:
                raise ValueError("truncated snappy copy")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            if pos + width > n:
                raise ValueError("truncated snappy copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise ValueError("snappy copy offset out of range")
        if len(out) + length > size:
            raise ValueError("snappy output longer than declared")
        for _ in range(length):  # byte by byte: copies may overlap themselves
            out.append(out[-offset])
        if len(out) > size:
            raise ValueError("snappy output longer than declared")
    if len(out) != size:
        raise ValueError(f"snappy output is {len(out)} bytes, header says {size}")
    return bytes(out)


class Table:
    """An SSTable held in memory (index files are small: names and offsets only)."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.data = data
        if len(data) < FOOTER_SIZE:
            raise CorruptCheckpointError(
                path, f"index file is {len(data)} bytes, shorter than a table footer"
            )
        footer = data[-FOOTER_SIZE:]
        (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
        if magic != TABLE_MAGIC:
            raise CorruptCheckpointError(
                path, "not a TensorFlow checkpoint index (bad table magic number)"
            )
        try:
            _meta, pos = self._handle(footer, 0)
            self.index_handle, _ = self._handle(footer, pos)
        except ProtoError as exc:
            raise CorruptCheckpointError(path, f"bad table footer: {exc}") from exc

    @classmethod
    def open(cls, path: Path) -> Table:
        size = path.stat().st_size
        if size > MAX_INDEX_BYTES:
            raise CorruptCheckpointError(path, f"index file is implausibly large ({size} bytes)")
        return cls(path, path.read_bytes())

    def _handle(self, buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
        offset, pos = read_varint(buf, pos)
        size, pos = read_varint(buf, pos)
        limit = len(self.data) - FOOTER_SIZE
        if size > MAX_BLOCK_BYTES or offset > limit or size + TRAILER_SIZE > limit - offset:
            raise CorruptCheckpointError(
                self.path, f"block handle (offset {offset}, size {size}) points outside the file"
            )
        return (offset, size), pos

    def read_block(self, handle: tuple[int, int]) -> bytes:
        offset, size = handle
        block = self.data[offset : offset + size]
        kind = self.data[offset + size]
        (stored,) = struct.unpack_from("<I", self.data, offset + size + 1)
        actual = mask_crc(crc32c(self.data[offset : offset + size + 1]))
        if stored != actual:
            raise CorruptCheckpointError(
                self.path, f"checksum mismatch in index block at offset {offset}"
            )
        if kind == 0:
            return block
        if kind == 1:
            try:
                return snappy_decompress(block)
            except (ValueError, IndexError) as exc:
                raise CorruptCheckpointError(
                    self.path, f"bad snappy block at offset {offset}: {exc}"
                ) from exc
        raise UnsupportedFormatError(
            self.path, f"index block at offset {offset} uses unknown compression type {kind}"
        )

    def _block_entries(self, block: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
        if len(block) < 4:
            raise CorruptCheckpointError(self.path, f"{where} is too short")
        (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
        if num_restarts > (len(block) - 4) // 4:
            raise CorruptCheckpointError(self.path, f"{where} has an impossible restart count")
        end = len(block) - 4 - 4 * num_restarts
        for i in range(num_restarts):
            (r,) = struct.unpack_from("<I", block, end + 4 * i)
            if r > end:
                raise CorruptCheckpointError(self.path, f"{where} has a restart point out of range")
        pos = 0
        key = b""
        try:
            while pos < end:
                shared, pos = read_varint(block, pos, end)
                non_shared, pos = read_varint(block, pos, end)
                value_len, pos = read_varint(block, pos, end)
                if (
                    shared > len(key)
                    or non_shared > end - pos
                    or value_len > end - pos - non_shared
                ):
                    raise CorruptCheckpointError(self.path, f"{where} has a malformed entry")
                key = key[:shared] + block[pos : pos + non_shared]
                pos += non_shared
                yield key, block[pos : pos + value_len]
                pos += value_len
        except ProtoError as exc:
            raise CorruptCheckpointError(self.path, f"{where}: {exc}") from exc

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in key order; raises CorruptCheckpointError on any damage."""
        index = self.read_block(self.index_handle)
        last: bytes | None = None
        for _sep, handle_bytes in self._block_entries(index, "index block"):
            try:
                handle, _ = self._handle(handle_bytes, 0)
            except ProtoError as exc:
                raise CorruptCheckpointError(self.path, f"bad block handle: {exc}") from exc
            block = self.read_block(handle)
            for key, value in self._block_entries(block, f"data block at offset {handle[0]}"):
                if last is not None and key <= last:
                    raise CorruptCheckpointError(self.path, "index keys are not in sorted order")
                last = key
                yield key, value

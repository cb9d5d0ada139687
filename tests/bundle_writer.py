"""A tiny pure-Python TensorFlow tensor-bundle writer, for tests that must not need TensorFlow.

It writes what TF writes (LevelDB table index + raw little-endian data shards, masked CRC32C
everywhere) for numeric tensors and string scalars, and exposes the pieces (protobuf fields,
table blocks) so tests can build deliberately broken files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ckptdoc.formats.table import TABLE_MAGIC, crc32c, mask_crc

DTYPE_ENUM = {
    np.dtype("<f4"): 1,
    np.dtype("<f8"): 2,
    np.dtype("<i4"): 3,
    np.dtype("u1"): 4,
    np.dtype("<i2"): 5,
    np.dtype("i1"): 6,
    np.dtype("<i8"): 9,
    np.dtype("?"): 10,
    np.dtype("<f2"): 19,
    np.dtype("<u4"): 22,
    np.dtype("<u8"): 23,
}


def varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # negative int64 -> 10-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def field_bytes(field: int, value: bytes) -> bytes:
    return varint((field << 3) | 2) + varint(len(value)) + value


def field_fixed32(field: int, value: int) -> bytes:
    return varint((field << 3) | 5) + struct.pack("<I", value)


def header_proto(num_shards: int, endianness: int = 0, min_consumer: int = 0) -> bytes:
    version = field_varint(1, 1) + (field_varint(2, min_consumer) if min_consumer else b"")
    out = field_varint(1, num_shards)
    if endianness:
        out += field_varint(2, endianness)
    return out + field_bytes(3, version)


def shape_proto(shape: tuple[int, ...]) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, d)) for d in shape)


def entry_proto(
    dtype: int,
    shape: tuple[int, ...],
    shard_id: int,
    offset: int,
    size: int,
    crc: int | None,
) -> bytes:
    out = field_varint(1, dtype) + field_bytes(2, shape_proto(shape))
    if shard_id:
        out += field_varint(3, shard_id)
    if offset:
        out += field_varint(4, offset)
    out += field_varint(5, size)
    if crc is not None:
        out += field_fixed32(6, crc)
    return out


def block(entries: list[tuple[bytes, bytes]], restart_interval: int = 2) -> bytes:
    """One table block with prefix-compressed keys and restart points."""
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value))
        out += key[shared:] + value
        prev = key
    if not restarts:
        restarts = [0]
    for r in restarts:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    """A valid raw-snappy stream made only of literals (what a lazy compressor emits)."""
    out = bytearray(varint(len(data)))
    pos = 0
    while pos < len(data):
        chunk = data[pos : pos + 60]
        out.append((len(chunk) - 1) << 2)
        out += chunk
        pos += len(chunk)
    return bytes(out)


def table(entries: list[tuple[bytes, bytes]], per_block: int = 3, compress: bool = False) -> bytes:
    """A complete LevelDB table: data blocks, empty metaindex, index block, footer."""
    out = bytearray()

    def emit(raw: bytes) -> bytes:
        kind = 1 if compress else 0
        body = snappy_literal(raw) if compress else raw
        handle = varint(len(out)) + varint(len(body))
        out.extend(body + bytes([kind]))
        out.extend(struct.pack("<I", mask_crc(crc32c(body + bytes([kind])))))
        return handle

    index_entries = []
    for i in range(0, len(entries), per_block):
        chunk = entries[i : i + per_block]
        index_entries.append((chunk[-1][0], emit(block(chunk))))
    meta = emit(block([]))
    index = emit(block(index_entries, restart_interval=1))
    footer = (meta + index).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out) + footer


def write_bundle(
    prefix: Path,
    tensors: dict[str, np.ndarray | bytes],
    num_shards: int = 1,
    compress: bool = False,
) -> dict[str, tuple[int, int]]:
    """Write `tensors` round-robin over `num_shards`; bytes values become string scalars.

    Returns {key: (offset, size)} inside its shard, for tests that damage one tensor.
    """
    shards = [bytearray() for _ in range(num_shards)]
    entries = [(b"", header_proto(num_shards))]
    where = {}
    for i, key in enumerate(sorted(tensors)):
        value = tensors[key]
        sid = i % num_shards
        offset = len(shards[sid])
        if isinstance(value, bytes):
            lengths = struct.pack("<I", len(value))
            length_crc = struct.pack("<I", mask_crc(crc32c(lengths)))
            data = varint(len(value)) + length_crc + value
            crc = mask_crc(crc32c(lengths + length_crc + value))
            dtype, shape = 7, ()
        else:
            arr = np.ascontiguousarray(value)
            data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            crc = mask_crc(crc32c(data))
            dtype, shape = DTYPE_ENUM[arr.dtype], arr.shape
        shards[sid] += data
        where[key] = (offset, len(data))
        entries.append((key.encode(), entry_proto(dtype, shape, sid, offset, len(data), crc)))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for sid, data in enumerate(shards):
        Path(f"{prefix}.data-{sid:05d}-of-{num_shards:05d}").write_bytes(bytes(data))
    Path(f"{prefix}.index").write_bytes(table(entries, compress=compress))
    return where

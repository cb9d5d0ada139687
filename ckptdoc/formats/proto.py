"""A minimal protobuf wire-format decoder for the few TensorFlow messages ckptdoc reads.

No generated code and no `protobuf` dependency: checkpoints are untrusted input, so every
length is checked against the buffer and varints are capped at 10 bytes. Decoding errors
raise `ProtoError` (a ValueError) which readers turn into `CorruptCheckpointError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

Value = int | bytes

WIRE_VARINT, WIRE_FIXED64, WIRE_LEN, WIRE_FIXED32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes | memoryview, pos: int, limit: int | None = None) -> tuple[int, int]:
    """Decode a varint at `pos`; return (value, new_pos). At most 10 bytes, as protobuf allows."""
    end = len(buf) if limit is None else limit
    result = 0
    shift = 0
    for i in range(10):
        if pos + i >= end:
            raise ProtoError("truncated varint")
        b = buf[pos + i]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos + i + 1
        shift += 7
    raise ProtoError("varint longer than 10 bytes")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, Value]]:
    """Yield (field_number, wire_type, value) for each field of one message."""
    pos = 0
    n = len(buf)
    while pos < n:
        tag, pos = read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wire == WIRE_VARINT:
            value, pos = read_varint(buf, pos)
            yield field, wire, value
        elif wire == WIRE_FIXED64:
            if pos + 8 > n:
                raise ProtoError("truncated fixed64")
            yield field, wire, struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == WIRE_FIXED32:
            if pos + 4 > n:
                raise ProtoError("truncated fixed32")
            yield field, wire, struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == WIRE_LEN:
            length, pos = read_varint(buf, pos)
            if length > n - pos:
                raise ProtoError("length-delimited field runs past the end of the message")
            yield field, wire, bytes(buf[pos : pos + length])
            pos += length
        else:
            # Groups (3/4) are long deprecated and never used by these messages.
            raise ProtoError(f"unsupported wire type {wire}")


def parse(buf: bytes | memoryview) -> dict[int, list[Value]]:
    """Decode one message into {field_number: [values in order]}."""
    out: dict[int, list[Value]] = {}
    for field, _wire, value in iter_fields(buf):
        out.setdefault(field, []).append(value)
    return out


def _int(msg: dict[int, list[Value]], field: int, default: int = 0, signed: bool = True) -> int:
    values = msg.get(field)
    if not values:
        return default
    v = values[-1]  # protobuf: last one wins
    if not isinstance(v, int):
        raise ProtoError(f"field {field} should be an integer")
    if signed and v >= 1 << 63:
        v -= 1 << 64
    return v


def _bytes(msg: dict[int, list[Value]], field: int) -> bytes:
    values = msg.get(field)
    if not values:
        return b""
    v = values[-1]
    if not isinstance(v, bytes):
        raise ProtoError(f"field {field} should be length-delimited")
    return v


def _str(msg: dict[int, list[Value]], field: int) -> str:
    return _bytes(msg, field).decode("utf-8", errors="replace")


def _messages(msg: dict[int, list[Value]], field: int) -> list[dict[int, list[Value]]]:
    out = []
    for v in msg.get(field, []):
        if not isinstance(v, bytes):
            raise ProtoError(f"field {field} should be a message")
        out.append(parse(v))
    return out


# --- tensor_bundle.proto ---------------------------------------------------------------------


@dataclass(frozen=True)
class BundleHeader:
    num_shards: int
    endianness: int  # 0 = little, 1 = big
    producer: int
    min_consumer: int
    bad_consumers: tuple[int, ...]


@dataclass(frozen=True)
class SliceExtent:
    start: int
    length: int  # -1 = the whole dimension


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    unknown_rank: bool
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked
    slices: tuple[tuple[SliceExtent, ...], ...]


def decode_bundle_header(buf: bytes) -> BundleHeader:
    msg = parse(buf)
    version = parse(_bytes(msg, 3))
    bad = []
    for v in version.get(3, []):
        if isinstance(v, bytes):  # packed repeated int32
            pos = 0
            while pos < len(v):
                x, pos = read_varint(v, pos)
                bad.append(x)
        else:
            bad.append(v)
    return BundleHeader(
        num_shards=_int(msg, 1),
        endianness=_int(msg, 2),
        producer=_int(version, 1),
        min_consumer=_int(version, 2),
        bad_consumers=tuple(bad),
    )


def decode_shape(buf: bytes) -> tuple[tuple[int, ...], bool]:
    """TensorShapeProto -> (dims, unknown_rank)."""
    msg = parse(buf)
    dims = tuple(_int(d, 1) for d in _messages(msg, 2))
    return dims, bool(_int(msg, 3))


def decode_bundle_entry(buf: bytes) -> BundleEntry:
    """A BundleEntryProto. The common entry (no slices, a plain shape) takes a direct path:
    it is decoded once per variable of every checkpoint audited, so it dominates folder
    audits; anything unusual goes through the general decoder, and both agree (tested)."""
    fast = _fast_bundle_entry(buf)
    return fast if fast is not None else _decode_bundle_entry(buf)


def _fast_bundle_entry(buf: bytes) -> BundleEntry | None:
    dtype = shard = offset = size = 0
    crc: int | None = None
    dims: list[int] = []
    pos, n = 0, len(buf)
    while pos < n:
        tag = buf[pos]
        pos += 1
        if tag in (0x08, 0x18, 0x20, 0x28):  # dtype, shard_id, offset, size: varints
            if pos < n and buf[pos] < 0x80:  # one byte, the usual case
                value = buf[pos]
                pos += 1
            else:
                value, pos = read_varint(buf, pos)
                if value >= 1 << 63:
                    return None  # negative: let the general path report it
            if tag == 0x08:
                dtype = value
            elif tag == 0x18:
                shard = value
            elif tag == 0x20:
                offset = value
            else:
                size = value
        elif tag == 0x35:  # crc32c, fixed32
            if pos + 4 > n:
                return None
            crc = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif tag == 0x12:  # shape: TensorShapeProto of `dim { size: N }` only
            if pos >= n or buf[pos] >= 0x80:
                return None
            end = pos + 1 + buf[pos]
            pos += 1
            if end > n:
                return None
            dims = []
            while pos < end:
                # dim: 0x12, length, [0x08, varint size]
                if buf[pos] != 0x12 or pos + 1 >= end or buf[pos + 1] >= 0x80:
                    return None
                dim_end = pos + 2 + buf[pos + 1]
                pos += 2
                if dim_end > end:
                    return None
                dim = 0
                if pos < dim_end:
                    if buf[pos] != 0x08:
                        return None
                    dim, pos = read_varint(buf, pos + 1, dim_end)
                    if dim >= 1 << 63 or pos != dim_end:
                        return None
                dims.append(dim)
        else:
            return None  # slices, unknown fields, multi-byte tags
    return BundleEntry(dtype, tuple(dims), False, shard, offset, size, crc, ())


def _decode_bundle_entry(buf: bytes) -> BundleEntry:
    msg = parse(buf)
    dims, unknown_rank = decode_shape(_bytes(msg, 2))
    crc_values = msg.get(6)
    slices = []
    for s in _messages(msg, 7):
        extents = []
        for e in _messages(s, 1):
            # `length` is a oneof: absent means the whole dimension.
            length = _int(e, 2) if 2 in e else -1
            extents.append(SliceExtent(_int(e, 1), length))
        slices.append(tuple(extents))
    return BundleEntry(
        dtype=_int(msg, 1),
        shape=dims,
        unknown_rank=unknown_rank,
        shard_id=_int(msg, 3),
        offset=_int(msg, 4),
        size=_int(msg, 5),
        crc32c=int(crc_values[-1]) if crc_values else None,
        slices=tuple(slices),
    )


# --- trackable_object_graph.proto ------------------------------------------------------------


@dataclass(frozen=True)
class ObjectReference:
    node_id: int
    local_name: str


@dataclass(frozen=True)
class SerializedTensor:
    name: str
    full_name: str
    checkpoint_key: str


@dataclass(frozen=True)
class SlotVariableReference:
    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass(frozen=True)
class TrackableObject:
    children: tuple[ObjectReference, ...]
    attributes: tuple[SerializedTensor, ...]
    slot_variables: tuple[SlotVariableReference, ...]


def decode_object_graph(buf: bytes) -> list[TrackableObject]:
    nodes = []
    for n in _messages(parse(buf), 1):
        nodes.append(
            TrackableObject(
                children=tuple(ObjectReference(_int(c, 1), _str(c, 2)) for c in _messages(n, 1)),
                attributes=tuple(
                    SerializedTensor(_str(a, 1), _str(a, 2), _str(a, 3)) for a in _messages(n, 2)
                ),
                slot_variables=tuple(
                    SlotVariableReference(_int(s, 1), _str(s, 2), _int(s, 3))
                    for s in _messages(n, 3)
                ),
            )
        )
    return nodes


# --- saved_model.proto (only the Keras metadata per object node) -----------------------------


def _savedmodel_nodes(buf: bytes) -> Iterator[tuple[int, dict[int, list[Value]]]]:
    """(node id, SavedObject) for every node of a SavedModel's first object graph."""
    sm = parse(buf)
    for meta_graph_buf in sm.get(2, []):
        if not isinstance(meta_graph_buf, bytes):
            raise ProtoError("meta_graphs should be a message")
        # Skip the (large) GraphDef without decoding it: only field 7 matters here.
        object_graph = b""
        for field, _wire, value in iter_fields(meta_graph_buf):
            if field == 7 and isinstance(value, bytes):
                object_graph = value
        if not object_graph:
            continue
        node_id = 0
        for field, _wire, value in iter_fields(object_graph):
            if field != 1:
                continue
            if not isinstance(value, bytes):
                raise ProtoError("nodes should be messages")
            yield node_id, parse(value)
            node_id += 1
        return


def decode_savedmodel_keras_metadata(buf: bytes) -> dict[int, tuple[str, str]]:
    """SavedModel -> {object node id: (user_object identifier, metadata JSON string)}.

    Only nodes that are user objects carrying metadata (TF <= 2.4 Keras layers) are returned.
    """
    out: dict[int, tuple[str, str]] = {}
    for node_id, node in _savedmodel_nodes(buf):
        if 4 in node:
            user = parse(_bytes(node, 4))
            metadata = _str(user, 3)
            if metadata:
                out[node_id] = (_str(user, 1), metadata)
    return out


def decode_savedmodel_variable_names(buf: bytes) -> dict[int, str]:
    """SavedModel -> {object node id: the variable's TF name} (`SavedVariable.name`), e.g.
    `sequential/bn_a/moving_mean`: the only layer names a Keras 3 `model.export()` keeps."""
    out: dict[int, str] = {}
    for node_id, node in _savedmodel_nodes(buf):
        if 7 in node:
            name = _str(parse(_bytes(node, 7)), 6)
            if name:
                out[node_id] = name
    return out


def decode_keras_metadata_pb(buf: bytes) -> dict[int, tuple[str, str]]:
    """keras_metadata.pb (TF >= 2.5 tf-keras) -> {node id: (identifier, metadata JSON)}."""
    out: dict[int, tuple[str, str]] = {}
    for node in _messages(parse(buf), 1):
        metadata = _str(node, 5)
        if metadata:
            out[_int(node, 2)] = (_str(node, 4), metadata)
    return out

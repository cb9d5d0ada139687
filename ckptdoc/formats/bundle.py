"""Read TensorFlow tensor bundles (`PREFIX.index` + `PREFIX.data-NNNNN-of-MMMMM`) without TF.

Used by TF1 `Saver`, TF2 `tf.train.Checkpoint`, tf-keras `save_weights` in TF format and
SavedModel `variables/`. The index is read whole (names and offsets only); a tensor's bytes are
read on demand with one seek + read of exactly its extent, and checked against its CRC32C.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ckptdoc.checkpoint import Checkpoint, LayerNode, StepCount, TensorInfo
from ckptdoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotFoundError,
    UnsupportedFormatError,
)
from ckptdoc.formats.bfloat16 import bfloat16_to_float32
from ckptdoc.formats.proto import (
    BundleEntry,
    ProtoError,
    TrackableObject,
    decode_bundle_entry,
    decode_bundle_header,
    decode_object_graph,
    read_varint,
)
from ckptdoc.formats.resolve import bundle_file
from ckptdoc.formats.table import Table, crc32c, mask_crc

if TYPE_CHECKING:  # the graph reader loads only for a checkpoint that has a graph
    from ckptdoc.formats.graph import Graph

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
MAX_SHARDS = 100_000
BUNDLE_VERSION = 1  # kTensorBundleVersion: the newest layout this reader understands

# TF DataType enum -> little-endian numpy dtype. bfloat16 (14) is handled apart.
_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    8: np.dtype("<c8"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    18: np.dtype("<c16"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
DT_STRING = 7
DT_BFLOAT16 = 14
# Where each framework keeps its optimizer step counter (TF1, tf-keras, Keras 3).
_STEP_KEYS = (
    "global_step",
    "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",
    "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
    "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE",
)
_DTYPE_NAMES = {7: "string", 14: "bfloat16", 20: "resource", 21: "variant"}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class _Piece:
    """One stored slice of a partitioned variable."""

    entry: BundleEntry
    index: tuple[slice, ...]


class BundleCheckpoint(Checkpoint):
    """An open tensor bundle. Every problem surfaces as a CheckpointError naming the file."""

    def __init__(
        self,
        prefix: Path,
        savedmodel: bool = False,
        notes: tuple[str, ...] = (),
        fetch: Callable[[Path, int, int], None] | None = None,
    ) -> None:
        super().__init__(prefix)
        #: Called with (shard, offset, size) before those bytes are read: a remote mirror
        #: fetches them (formats/remote.py); None for local files.
        self._fetch = fetch
        self.prefix = prefix
        self.index_path = bundle_file(prefix, ".index")
        self._warnings: list[str] = list(notes)
        if not self.index_path.is_file():
            raise NotFoundError(self.index_path, "checkpoint index file does not exist")
        self._entries: dict[str, BundleEntry] = {}
        self._shard_paths: dict[int, Path] = {}
        self._tensors: dict[str, TensorInfo] = {}
        self._pieces: dict[str, list[_Piece]] = {}
        self._load_index()
        self._check_shards()
        self._graph_nodes: list[TrackableObject] | None = None
        self._graph: Graph | None = None
        self._graph_read = False
        self._layers: list[LayerNode] | None = None
        #: A SavedModel's Keras layer metadata (class names and configs, as parsed JSON), for
        #: the audit's CK001 check: a `Lambda` carries code. None when there is none.
        self.model_config: list[dict[str, Any]] | None = None
        #: Why some of the model's config could not be read (CK001 then cannot say "no code").
        self.config_error: str | None = None
        if OBJECT_GRAPH_KEY in self._entries:
            self._load_object_graph(savedmodel)
        if savedmodel:
            self.format = "savedmodel"
        elif OBJECT_GRAPH_KEY in self._entries:
            self.format = "tf2-object"
        else:
            self.format = "tf1-bundle"

    # --- index --------------------------------------------------------------------------------

    def _load_index(self) -> None:
        table = Table.open(self.index_path)
        raw_pieces: dict[bytes, list[tuple[bytes, BundleEntry]]] = {}
        header_seen = False
        skipped: dict[str, int] = {}
        self.num_shards = 0
        for key_bytes, value in table.items():
            if not header_seen and key_bytes != b"":
                raise CorruptCheckpointError(self.index_path, "bundle header entry is missing")
            try:
                if key_bytes == b"":
                    self._check_header(value)
                    header_seen = True
                    continue
                entry = decode_bundle_entry(value)
            except ProtoError as exc:
                raise CorruptCheckpointError(
                    self.index_path, f"bad entry for {key_bytes!r}: {exc}"
                ) from exc
            if key_bytes[:1] == b"\x00":
                # Slice of a partitioned variable: "\0" + escaped name + "\0\1" + extents.
                end = _escaped_name_end(key_bytes)
                raw_pieces.setdefault(key_bytes[1:end], []).append((key_bytes, entry))
                self._validate_entry(repr(key_bytes), entry)
                continue
            key = key_bytes.decode("utf-8", errors="replace")
            self._validate_entry(key, entry)
            if entry.dtype not in _DTYPES and entry.dtype not in (DT_STRING, DT_BFLOAT16):
                name = _DTYPE_NAMES.get(entry.dtype, f"#{entry.dtype}")
                skipped[name] = skipped.get(name, 0) + 1
                continue
            self._entries[key] = entry
            if key != OBJECT_GRAPH_KEY:
                self._tensors[key] = TensorInfo(key, _np_dtype(entry.dtype), entry.shape)
        if not header_seen:
            raise CorruptCheckpointError(self.index_path, "bundle header entry is missing")
        for name, count in sorted(skipped.items()):
            self._warnings.append(f"{self.index_path}: skipped {count} tensor(s) of dtype {name}")
        self._match_pieces(raw_pieces)

    def _check_header(self, value: bytes) -> None:
        header = decode_bundle_header(value)
        if header.endianness != 0:
            raise UnsupportedFormatError(
                self.index_path, "big-endian tensor bundles are not supported"
            )
        if header.min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in header.bad_consumers:
            raise UnsupportedFormatError(
                self.index_path,
                f"bundle format version needs a newer reader (min_consumer {header.min_consumer})",
            )
        if not 0 <= header.num_shards <= MAX_SHARDS:
            raise CorruptCheckpointError(
                self.index_path, f"implausible shard count {header.num_shards}"
            )
        self.num_shards = header.num_shards

    def _validate_entry(self, key: str, entry: BundleEntry) -> None:
        where = f"tensor {key!r}"
        if entry.unknown_rank or any(d < 0 for d in entry.shape):
            raise CorruptCheckpointError(
                self.index_path, f"{where} has an invalid shape {entry.shape}"
            )
        if entry.slices:
            return  # full-name entry of a partitioned variable: no bytes of its own
        if not 0 <= entry.shard_id < self.num_shards:
            raise CorruptCheckpointError(
                self.index_path, f"{where} is in shard {entry.shard_id} of {self.num_shards}"
            )
        if entry.offset < 0 or entry.size < 0:
            raise CorruptCheckpointError(self.index_path, f"{where} has a negative offset or size")
        dtype = _DTYPES.get(entry.dtype)
        if entry.dtype == DT_BFLOAT16:
            dtype = np.dtype("<u2")
        if dtype is not None and _numel(entry.shape) * dtype.itemsize != entry.size:
            raise CorruptCheckpointError(
                self.index_path,
                f"{where}: shape {entry.shape} needs {_numel(entry.shape) * dtype.itemsize} "
                f"bytes but the entry says {entry.size}",
            )
        if entry.dtype == DT_STRING and entry.size < 4 + _numel(entry.shape):
            raise CorruptCheckpointError(self.index_path, f"{where}: string tensor too small")

    def _match_pieces(self, raw: dict[bytes, list[tuple[bytes, BundleEntry]]]) -> None:
        """Pair each partitioned variable's slices with its stored pieces.

        Piece keys encode the slice extents order-preservingly (TF's OrderedCode), so sorting
        the pieces by key and the extents numerically (-1 = whole dim) pairs them up.
        """
        for key, entry in self._entries.items():
            if not entry.slices:
                continue
            pieces = sorted(raw.pop(_escape_name(key.encode("utf-8")), []))
            extents = sorted(
                entry.slices, key=lambda s: [v for e in s for v in (e.start, e.length)]
            )
            if len(pieces) != len(extents):
                raise CorruptCheckpointError(
                    self.index_path,
                    f"partitioned variable {key!r} lists {len(extents)} slices but "
                    f"{len(pieces)} are stored",
                )
            matched = []
            for (_k, piece), ext in zip(pieces, extents, strict=True):
                if len(ext) != len(entry.shape):
                    raise CorruptCheckpointError(self.index_path, f"{key!r}: slice rank mismatch")
                index = []
                for e, dim in zip(ext, entry.shape, strict=True):
                    length = dim - e.start if e.length == -1 else e.length
                    if e.start < 0 or length < 0 or e.start + length > dim:
                        raise CorruptCheckpointError(
                            self.index_path, f"{key!r}: slice out of range"
                        )
                    index.append(slice(e.start, e.start + length))
                want = tuple(s.stop - s.start for s in index)
                if piece.shape != want or piece.dtype != entry.dtype:
                    raise CorruptCheckpointError(
                        self.index_path, f"{key!r}: stored slice does not match its extent"
                    )
                matched.append(_Piece(piece, tuple(index)))
            # Partitions tile the variable; anything else would make `read` allocate a
            # declared shape that no stored bytes back.
            if sum(_numel(p.entry.shape) for p in matched) != _numel(entry.shape):
                raise CorruptCheckpointError(
                    self.index_path, f"partitioned variable {key!r}: slices do not cover it"
                )
            self._pieces[key] = matched
        if raw:
            self._warnings.append(
                f"{self.index_path}: {len(raw)} partitioned slice group(s) without a full entry"
            )

    def _check_shards(self) -> None:
        sizes: dict[int, int] = {}
        entries = list(self._entries.values()) + [
            p.entry for ps in self._pieces.values() for p in ps
        ]
        for entry in entries:
            if entry.slices or entry.shard_id in sizes:
                continue
            shard = self.shard_path(entry.shard_id)
            try:
                sizes[entry.shard_id] = shard.stat().st_size
            except FileNotFoundError:
                raise NotFoundError(shard, "data shard of this checkpoint is missing") from None
        short = [e for e in entries if not e.slices and e.offset + e.size > sizes[e.shard_id]]
        if short:
            shards = sorted({self.shard_path(e.shard_id).name for e in short})
            self._warnings.append(
                f"{self.prefix}: {len(short)} tensor(s) lie past the end of "
                f"{', '.join(shards)} (truncated shard)"
            )

    def shard_path(self, shard_id: int) -> Path:
        path = self._shard_paths.get(shard_id)
        if path is None:  # resolved once per shard: it costs a stat
            path = bundle_file(self.prefix, f".data-{shard_id:05d}-of-{self.num_shards:05d}")
            self._shard_paths[shard_id] = path
        return path

    # --- object graph -------------------------------------------------------------------------

    def _load_object_graph(self, savedmodel: bool) -> None:
        from ckptdoc.formats.object_graph import build_layers, parse_metadata, savedmodel_metadata

        raw = self.read(OBJECT_GRAPH_KEY)
        buf = raw.item() if isinstance(raw, np.ndarray) else raw
        if not isinstance(buf, bytes):
            raise CorruptCheckpointError(self.index_path, "object graph is not a string tensor")
        try:
            nodes = decode_object_graph(buf)
        except ProtoError as exc:
            raise CorruptCheckpointError(self.index_path, f"bad object graph: {exc}") from exc
        metadata: dict[int, tuple[str, str]] = {}
        names: dict[int, str] = {}
        if savedmodel:
            metadata, names, notes = savedmodel_metadata(self.prefix.parent.parent)
            self._warnings.extend(notes)
        self._graph_nodes = nodes
        self._layers = build_layers(nodes, set(self._tensors), metadata, names)
        if metadata:
            parsed = parse_metadata(metadata)
            self.model_config = list(parsed.values())
            if len(parsed) < len(metadata):
                # Unreadable layer metadata is no proof that the model holds no code.
                self.config_error = (f"{len(metadata) - len(parsed)} of the "
                                     f"{len(metadata)} Keras metadata entries are not "
                                     "readable JSON")

    # --- Checkpoint API -----------------------------------------------------------------------

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._tensors

    @property
    def layers(self) -> list[LayerNode] | None:
        return self._layers

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    def graph(self) -> Graph | None:
        """The graph saved beside a name-based checkpoint: `PREFIX.meta`, or a TF1 SavedModel's
        `saved_model.pb`. Object-based checkpoints carry their structure in the object graph.
        A graph that cannot be decoded is a note, not an error: the names still work."""
        if self._graph_read:
            return self._graph
        self._graph_read = True
        if self.format == "tf2-object":
            return None
        path = (self.prefix.parent.parent / "saved_model.pb" if self.format == "savedmodel"
                else bundle_file(self.prefix, ".meta"))
        if not path.is_file():
            return None
        try:
            from ckptdoc.formats.graph import read_meta_graph, read_savedmodel_graph

            self._graph = (read_savedmodel_graph(path) if self.format == "savedmodel"
                           else read_meta_graph(path))
        except Exception as exc:  # noqa: BLE001 - evidence: its failure never costs the verdict
            self._warnings.append(f"{path}: could not read the graph "
                                  f"({type(exc).__name__}: {exc}); BN layers were found by "
                                  "their names only")
        return self._graph

    def step_count(self) -> StepCount | None:
        for key in _STEP_KEYS:
            info = self._tensors.get(key)
            if info is None or info.shape or info.dtype.kind not in "iu":
                continue
            try:
                return StepCount(int(self.read(key)), key)
            except CheckpointError:
                return None
        return None

    @property
    def object_graph(self) -> list[TrackableObject] | None:
        """Decoded TrackableObjectGraph nodes, or None for name-based checkpoints."""
        return self._graph_nodes

    def read(self, key: str) -> np.ndarray:
        entry = self._entries.get(key)
        if entry is None:
            raise CheckpointError(self.index_path, f"no tensor {key!r} in this checkpoint")
        try:
            if entry.slices:
                return self._read_partitioned(key, entry)
            return self._read_entry(key, entry)
        except CheckpointError:
            raise
        except (OSError, ValueError, MemoryError) as exc:
            raise CheckpointError(self.prefix, f"could not read tensor {key!r}: {exc}") from exc

    def _read_partitioned(self, key: str, entry: BundleEntry) -> np.ndarray:
        out = np.zeros(entry.shape, dtype=_np_dtype(entry.dtype))
        if entry.dtype == DT_STRING:
            out[...] = b""
        for piece in self._pieces.get(key, []):
            out[piece.index] = self._read_entry(key, piece.entry)
        return out

    def _read_entry(self, key: str, entry: BundleEntry) -> np.ndarray:
        shard = self.shard_path(entry.shard_id)
        if self._fetch is not None:
            self._fetch(shard, entry.offset, entry.size)
        try:
            with open(shard, "rb", buffering=0) as f:
                end = f.seek(0, 2)
                if entry.offset + entry.size > end:
                    raise CorruptCheckpointError(
                        shard,
                        f"truncated: tensor {key!r} needs bytes {entry.offset}.."
                        f"{entry.offset + entry.size} but the shard has {end}",
                    )
                f.seek(entry.offset)
                data = _read_exact(f, entry.size)
        except FileNotFoundError:
            raise NotFoundError(shard, "data shard of this checkpoint is missing") from None
        if len(data) != entry.size:
            raise CorruptCheckpointError(shard, f"truncated while reading tensor {key!r}")
        if entry.dtype == DT_STRING:
            return _decode_strings(shard, key, data, entry.shape, entry.crc32c)
        if entry.crc32c is not None and mask_crc(crc32c(data)) != entry.crc32c:
            raise CorruptCheckpointError(shard, f"checksum mismatch in tensor {key!r}")
        if entry.dtype == DT_BFLOAT16:
            return bfloat16_to_float32(np.frombuffer(data, dtype="<u2").reshape(entry.shape))
        return np.frombuffer(data, dtype=_DTYPES[entry.dtype]).reshape(entry.shape).copy()


def _read_exact(f: Any, size: int) -> bytes:
    chunks = []
    left = size
    while left > 0:
        chunk = f.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _np_dtype(dtype: int) -> np.dtype[Any]:
    if dtype == DT_STRING:
        return np.dtype(object)
    if dtype == DT_BFLOAT16:
        return np.dtype(np.float32)
    return _DTYPES[dtype]


def _decode_strings(
    shard: Path, key: str, data: bytes, shape: tuple[int, ...], entry_crc: int | None
) -> np.ndarray:
    """[varint64 len]*n, 4-byte masked CRC32C of the lengths as uint32, then the bytes.

    The entry CRC covers the lengths as uint32 (not as written), the length CRC, the bytes.
    """
    n = _numel(shape)
    lengths = []
    pos = 0
    try:
        for _ in range(n):
            length, pos = read_varint(data, pos)
            lengths.append(length)
    except ProtoError as exc:
        raise CorruptCheckpointError(shard, f"string tensor {key!r}: {exc}") from exc
    if pos + 4 > len(data) or any(x > 0xFFFFFFFF for x in lengths):
        raise CorruptCheckpointError(shard, f"string tensor {key!r} is malformed")
    (stored,) = struct.unpack_from("<I", data, pos)
    lengths_u32 = struct.pack(f"<{n}I", *lengths)
    if stored != mask_crc(crc32c(lengths_u32)):
        raise CorruptCheckpointError(shard, f"checksum mismatch in string lengths of {key!r}")
    pos += 4
    if pos + sum(lengths) != len(data):
        raise CorruptCheckpointError(shard, f"string tensor {key!r} has the wrong size")
    if entry_crc is not None:
        crc = mask_crc(crc32c(lengths_u32 + data[pos - 4 :]))
        if crc != entry_crc:
            raise CorruptCheckpointError(shard, f"checksum mismatch in tensor {key!r}")
    out = np.empty(n, dtype=object)
    for i, length in enumerate(lengths):
        out[i] = data[pos : pos + length]
        pos += length
    return out.reshape(shape)


def _escape_name(name: bytes) -> bytes:
    """OrderedCode string encoding as used in partitioned-slice keys (after the leading \\0)."""
    out = bytearray()
    for b in name:
        out += b"\x00\xff" if b == 0 else b"\xff\x00" if b == 0xFF else bytes((b,))
    return bytes(out)


def _escaped_name_end(key: bytes) -> int:
    """Index just past the escaped name in a slice key: the name ends at the "\\0\\1" marker."""
    pos = 1
    while pos < len(key) - 1:
        if key[pos] == 0 and key[pos + 1] == 1:
            return pos
        pos += 2 if key[pos] in (0, 0xFF) else 1
    return len(key)


def open_bundle(
    prefix: Path,
    savedmodel: bool = False,
    notes: tuple[str, ...] = (),
    fetch: Callable[[Path, int, int], None] | None = None,
) -> Checkpoint:
    """Open the bundle at `prefix` (`dir/model.ckpt`, or the directory for an empty prefix).
    `fetch(shard, offset, size)` is called before each tensor's bytes are read."""
    try:
        return BundleCheckpoint(Path(prefix), savedmodel=savedmodel, notes=notes, fetch=fetch)
    except CheckpointError:
        raise
    except (ProtoError, ValueError, IndexError, struct.error, OverflowError) as exc:
        raise CorruptCheckpointError(prefix, f"malformed checkpoint: {exc}") from exc

"""Write a copy of a TensorFlow tensor bundle in which only some tensors' values change.

Pure Python, no TensorFlow: the output is built from the input's own bytes. Data shards are
copied verbatim and the replaced tensors are overwritten at their exact offsets (same dtype,
shape and byte size, so nothing moves); the index keeps every entry in order, byte for byte,
except the replaced entries' CRC32C field. So every other tensor (optimizer slots,
`_CHECKPOINTABLE_OBJECT_GRAPH`, step counters) is byte-identical by construction, and TF's own
readers (`Saver.restore`, `tf.train.load_checkpoint`, `Checkpoint.read`) accept the result.

`staged_bundle` does the file-system part: everything is written into a hidden temporary
folder in the output's directory, fsynced, then renamed into place with the `.index` last, so
a reader never sees a half-written bundle. The `.meta` graph is copied and a `checkpoint`
state file (relative path) is written so that training / serving code restores the new prefix
unchanged. The input is never opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.atomic import fsync_dir, fsync_file, remove_stale_temps, temp_name
from ckptdoc.errors import CheckpointError
from ckptdoc.formats.proto import (
    WIRE_FIXED32,
    WIRE_FIXED64,
    WIRE_LEN,
    WIRE_VARINT,
    decode_bundle_entry,
    decode_bundle_header,
    iter_fields,
)
from ckptdoc.formats.resolve import bundle_file
from ckptdoc.formats.table import TABLE_MAGIC, Table, crc32c, mask_crc

# TF DataType -> little-endian NumPy dtype, for the dtypes BN statistics can have.
_WRITABLE: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 19: np.dtype("<f2")}
_BFLOAT16 = 14
BLOCK_SIZE = 4096  # LevelDB's default; TF's bundle writer uses the same table format
RESTART_INTERVAL = 16
STATE_FILE = "checkpoint"


# --- protobuf / table encoding -----------------------------------------------------------------


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _encode_field(field_no: int, wire: int, value: int | bytes) -> bytes:
    tag = _varint((field_no << 3) | wire)
    if wire == WIRE_VARINT:
        return tag + _varint(int(value))  # type: ignore[arg-type]
    if wire == WIRE_FIXED32:
        return tag + struct.pack("<I", value)
    if wire == WIRE_FIXED64:
        return tag + struct.pack("<Q", value)
    if wire == WIRE_LEN:
        assert isinstance(value, bytes)
        return tag + _varint(len(value)) + value
    raise ValueError(f"wire type {wire}")


def with_crc(entry: bytes, masked_crc: int) -> bytes:
    """The BundleEntryProto `entry` with field 6 (masked crc32c) set to `masked_crc`.

    Every other field is re-emitted as read; TF writes canonical protobuf, so they come out
    byte-identical.
    """
    out = bytearray()
    seen = False
    for field_no, wire, value in iter_fields(entry):
        if field_no == 6:
            if not seen:
                out += _encode_field(6, WIRE_FIXED32, masked_crc)
            seen = True
            continue
        out += _encode_field(field_no, wire, value)
    if not seen:
        out += _encode_field(6, WIRE_FIXED32, masked_crc)
    return bytes(out)


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """One table block: prefix-compressed keys, a restart point every RESTART_INTERVAL keys."""
    out = bytearray()
    restarts: list[int] = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % RESTART_INTERVAL == 0:
            restarts.append(len(out))
        else:
            limit = min(len(prev), len(key))
            while shared < limit and prev[shared] == key[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        prev = key
    for r in restarts or [0]:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def encode_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB table (no compression, empty metaindex) holding `entries` in the given order."""
    out = bytearray()

    def emit(raw: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(raw))
        out.extend(raw + b"\x00")
        out.extend(struct.pack("<I", mask_crc(crc32c(raw + b"\x00"))))
        return handle

    index: list[tuple[bytes, bytes]] = []
    chunk: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in entries:
        chunk.append((key, value))
        size += len(key) + len(value) + 8
        if size >= BLOCK_SIZE:
            index.append((key, emit(_block(chunk))))
            chunk, size = [], 0
    if chunk:
        index.append((chunk[-1][0], emit(_block(chunk))))
    meta = emit(_block([]))
    index_handle = emit(_block(index))
    footer = (meta + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out) + footer


# --- the bundle copy ---------------------------------------------------------------------------


def shard_paths(prefix: Path, num_shards: int) -> list[Path]:
    return [bundle_file(prefix, f".data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]


def encode_values(key: str, dtype: int, shape: tuple[int, ...], value: np.ndarray) -> bytes:
    """The bytes TF stores for `value` as a tensor of `dtype` / `shape` (float dtypes only)."""
    arr = np.asarray(value, dtype=np.float64)
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if arr.size != n:
        raise ValueError(f"{key}: {arr.size} values for a tensor of shape {shape}")
    if dtype == _BFLOAT16:
        # Round to nearest even on the top 16 bits of the float32, as TF does.
        u32 = arr.astype("<f4").reshape(-1).view("<u4").astype(np.uint64)
        rounded = (u32 + 0x7FFF + ((u32 >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()
    np_dtype: np.dtype[Any] | None = _WRITABLE.get(dtype)
    if np_dtype is None:
        raise ValueError(f"{key}: cannot write a tensor of TF dtype {dtype} (not floating point)")
    return np.ascontiguousarray(arr.reshape(shape).astype(np_dtype)).tobytes()


def write_patched_bundle(
    src_prefix: Path,
    dst_prefix: Path,
    replacements: Mapping[str, np.ndarray],
    additions: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write `dst_prefix.{index,data-*}`: a copy of `src_prefix` with `replacements` applied,
    and `additions` (float32 tensors under new keys: moving statistics a trainable-only Saver
    dropped) appended to the first data shard, their index entries in key order.

    Raises CheckpointError when a key is missing, partitioned, not floating point, or its new
    value does not have the stored element count; or when an added key already exists.
    """
    index_path = bundle_file(src_prefix, ".index")
    table = Table.open(index_path)
    entries = list(table.items())
    if not entries or entries[0][0] != b"":
        raise CheckpointError(index_path, "bundle header entry is missing")
    header = decode_bundle_header(entries[0][1])
    if header.endianness != 0:
        raise CheckpointError(index_path, "big-endian bundles are not supported for writing")
    wanted = {k.encode("utf-8"): k for k in replacements}
    patches: dict[int, list[tuple[int, bytes, int | None]]] = {}
    out_entries: list[tuple[bytes, bytes]] = []
    for key, value in entries:
        name = wanted.pop(key, None)
        if name is None:
            out_entries.append((key, value))
            continue
        entry = decode_bundle_entry(value)
        if entry.slices:
            raise CheckpointError(index_path, f"{name} is a partitioned variable: not supported")
        try:
            data = encode_values(name, entry.dtype, entry.shape, replacements[name])
        except ValueError as exc:
            raise CheckpointError(index_path, str(exc)) from exc
        if len(data) != entry.size:
            raise CheckpointError(
                index_path, f"{name}: stored size {entry.size} bytes, new value {len(data)} bytes"
            )
        patches.setdefault(entry.shard_id, []).append((entry.offset, data, entry.crc32c))
        out_entries.append((key, with_crc(value, mask_crc(crc32c(data)))))
    if wanted:
        raise CheckpointError(
            index_path, f"no tensor {', '.join(sorted(wanted.values()))} in this checkpoint"
        )
    existing = {k for k, _ in entries}
    clash = sorted(k for k in additions or {} if k.encode("utf-8") in existing)
    if clash:
        raise CheckpointError(index_path, f"cannot add {', '.join(clash)}: already present")
    if additions and header.num_shards < 1:
        raise CheckpointError(index_path, "a bundle without data shards cannot take new tensors")
    src_shards = shard_paths(src_prefix, header.num_shards)
    dst_shards = shard_paths(dst_prefix, header.num_shards)
    for sid, (src, dst) in enumerate(zip(src_shards, dst_shards, strict=True)):
        shutil.copyfile(src, dst)
        with open(dst, "r+b") as f:
            for offset, data, old_crc in patches.get(sid, []):
                f.seek(offset)
                old = f.read(len(data))
                if old_crc is not None and mask_crc(crc32c(old)) != old_crc:
                    raise CheckpointError(src, f"checksum mismatch at offset {offset}")
                f.seek(offset)
                f.write(data)
            if sid == 0:
                for name, added in sorted((additions or {}).items()):
                    arr = np.ascontiguousarray(np.asarray(added, dtype="<f4"))
                    raw = arr.tobytes()
                    end = f.seek(0, 2)
                    f.write(raw)
                    out_entries.append((name.encode("utf-8"), _new_entry(arr.shape, end, raw)))
    out_entries.sort(key=lambda kv: kv[0])  # the table is sorted bytewise; "" (header) first
    bundle_file(dst_prefix, ".index").write_bytes(encode_table(out_entries))


def _new_entry(shape: tuple[int, ...], offset: int, data: bytes) -> bytes:
    """A BundleEntryProto for a float32 tensor in shard 0 (TF's field order)."""
    dims = b"".join(_encode_field(2, WIRE_LEN, _encode_field(1, WIRE_VARINT, d)) for d in shape)
    out = _encode_field(1, WIRE_VARINT, 1) + _encode_field(2, WIRE_LEN, dims)
    if offset:
        out += _encode_field(4, WIRE_VARINT, offset)
    out += _encode_field(5, WIRE_VARINT, len(data))
    return out + _encode_field(6, WIRE_FIXED32, mask_crc(crc32c(data)))


# --- staging and committing the output files ---------------------------------------------------


def state_file_text(prefix_name: str) -> str:
    quoted = prefix_name.replace("\\", "\\\\").replace('"', '\\"')
    return f'model_checkpoint_path: "{quoted}"\nall_model_checkpoint_paths: "{quoted}"\n'


@dataclass
class Staged:
    """A temporary prefix to write the new bundle under; see `staged_bundle`."""

    prefix: Path
    dest: Path
    notes: list[str] = field(default_factory=list)


def _bundle_files(src_prefix: Path) -> list[str]:
    """Suffixes of the input's bundle files that must not be overwritten."""
    return [".index", ".meta"] + [
        p.name[len(src_prefix.name) :]
        for p in src_prefix.parent.glob(f"{src_prefix.name}.data-*-of-*")
    ]


def check_destination(src_prefix: Path, dest_prefix: Path) -> None:
    """Refuse a destination whose files would overwrite any file of the input bundle."""
    for suffix in _bundle_files(src_prefix):
        a = Path(str(src_prefix) + suffix)
        b = Path(str(dest_prefix) + suffix)
        if a.exists() and b.exists() and os.path.samefile(a, b):
            raise CheckpointError(dest_prefix, "the output prefix is the input checkpoint itself")
    if dest_prefix.name in ("", ".", "..") or dest_prefix.is_dir():
        raise CheckpointError(dest_prefix, "the output must be a checkpoint prefix, not a folder")


@contextlib.contextmanager
def staged_bundle(
    src_prefix: Path, dest_prefix: Path, *, copy_meta: bool = True, write_state: bool = True
) -> Iterator[Staged]:
    """Yield a `Staged` whose `.prefix` lives in a hidden temporary folder beside the output.

    The body writes the bundle under `staged.prefix` (and may check it). On normal exit the
    `.meta` of the input is copied beside it, a `checkpoint` state file naming the new prefix
    is added, every file is fsynced and renamed into the output's directory, data shards first,
    `.index` next, state file last. On an exception nothing is moved and the temporary folder
    is removed. A `checkpoint` file in the input's own directory is never replaced.
    """
    check_destination(src_prefix, dest_prefix)
    dest_dir = dest_prefix.parent
    created = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest_dir)
    tmp_dir = dest_dir / temp_name()
    tmp_dir.mkdir()
    staged = Staged(tmp_dir / dest_prefix.name, dest_prefix)
    try:
        yield staged
        meta = bundle_file(src_prefix, ".meta")
        if copy_meta and meta.is_file():
            shutil.copyfile(meta, str(staged.prefix) + ".meta")
        same_dir = dest_dir.resolve() == src_prefix.parent.resolve()
        if write_state:
            if same_dir and (dest_dir / STATE_FILE).exists():
                staged.notes.append(
                    f"{dest_dir / STATE_FILE} belongs to the input and was left as it was; "
                    f"point it at {dest_prefix.name} to make the new checkpoint the latest"
                )
            else:
                (tmp_dir / STATE_FILE).write_text(state_file_text(dest_prefix.name))
        names = sorted(p.name for p in tmp_dir.iterdir())
        order = sorted(
            names,
            key=lambda n: (n.endswith(".index"), n == STATE_FILE),  # data, meta; index; state
        )
        for name in order:
            fsync_file(tmp_dir / name)
        fsync_dir(tmp_dir)
        for name in order:
            os.replace(tmp_dir / name, dest_dir / name)
        fsync_dir(dest_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                dest_dir.rmdir()
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)


def default_output(prefix: Path) -> Path:
    """`run/model.ckpt` -> `run.recalibrated/model.ckpt`: a sibling folder, so the input's own
    `checkpoint` state file stays untouched while the output gets one of its own."""
    parent = prefix.parent.resolve()
    return parent.with_name(parent.name + ".recalibrated") / prefix.name


@dataclass(frozen=True)
class BundleFix:
    """New values for a checkpoint bundle's keys (and keys it lacked, BN001), ready to be
    written into a copy of it: the one write path of every TF checkpoint target."""

    prefix: Path
    replacements: Mapping[str, np.ndarray]
    additions: Mapping[str, np.ndarray] = field(default_factory=dict)

    def write(self, dest: Path, in_place: bool, check: Callable[[Path], None]) -> list[str]:
        """Stage the patched bundle beside `dest`, run `check(staged_prefix)`, then move it
        into place (see `staged_bundle`). Returns notes for the report."""
        if in_place:
            raise CheckpointError(self.prefix, IN_PLACE_REFUSAL)
        with staged_bundle(self.prefix, dest) as staged:
            write_patched_bundle(self.prefix, staged.prefix, self.replacements, self.additions)
            check(staged.prefix)
        return staged.notes


IN_PLACE_REFUSAL = (
    "--in-place is not supported for checkpoint bundles: the output is a new prefix (default: "
    "a sibling folder `<dir>.recalibrated/`); use --output to choose it"
)

"""The fuzzing harness shared by tests/test_fuzz.py (short run) and scripts/fuzz.py (long runs).

A *case* is a seed checkpoint (real or generated files from tests/data and sample_ckpts) plus a
list of mutations. `materialize` writes the mutated copy into a folder; `run_contract` then does
what a user's CI would do with it and checks the error contract:

- `open_checkpoint`, listing tensors, reading every tensor, `layers`, `find_groups` and
  `audit_file` either return or raise `CheckpointError`, nothing else;
- a tensor read returns exactly the shape the index declared;
- the whole case finishes within a time limit;
- the Python heap (tracemalloc peak: numpy arrays included) stays under a small multiple of the
  input size.

Mutations are plain tuples of ints so hypothesis can draw and shrink them and a crash can be
replayed from its description. Byte-level ones (bit flips, truncation, splices, insertions,
absurd integers and varints) hit the container formats; structural ones re-encode the inner
layers with valid checksums so the damage reaches the deeper validation: bundle index entries
with absurd dtypes / shapes / offsets / sizes / shard ids / shard counts / slices (block CRCs
recomputed), object-graph and tensor bytes with their CRC fixed, swapped and missing shards,
`.keras` members re-zipped with valid zip CRCs, and mutated JSON configs.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import shutil
import signal
import struct
import time
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ckptdoc.auditor import audit_file
from ckptdoc.errors import CheckpointError
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.proto import WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT, iter_fields
from ckptdoc.formats.table import Table, crc32c, mask_crc
from ckptdoc.groups import find_groups
from ckptdoc.report.model import FileReport
from tests import bundle_writer as bw

REPO = Path(__file__).resolve().parent.parent
FORMATS = ("bundle", "h5", "keras")
Op = tuple[int, ...]

#: Values that break naive arithmetic: signs, powers of two at every width, int64 extremes.
INTERESTING = (
    0, 1, 2, 3, 7, 0xFF, 0x7F, 0x80, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
    1 << 32, 1 << 40, 1 << 48, 0x7FFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF, 1 << 62,
    0xFFFF_FFFF_FFFF_FFFE, 100_000, 100_001, 1 << 20, 1 << 31, 4096, 65536,
)  # fmt: skip


# --------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    """A checkpoint to mutate: `root` is copied whole; `entry` (relative) is what is opened."""

    name: str
    fmt: str
    root: Path
    entry: str
    files: tuple[str, ...]  # files (relative to root) that mutations may touch

    @property
    def size(self) -> int:
        return sum((self.root / f).stat().st_size for f in self.files)


def _bundle_seed(name: str, root: Path, entry: str) -> Seed:
    files = tuple(
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    )
    return Seed(name, "bundle", root, entry, files)


def _file_seed(fmt: str, path: Path) -> Seed:
    return Seed(f"{fmt}:{path.name}", fmt, path.parent, path.name, (path.name,))


def load_seeds(include_large: bool = False) -> list[Seed]:
    """Every committed small checkpoint of every format; `include_large` adds the real models."""
    data = REPO / "tests" / "data"
    samples = REPO / "sample_ckpts"
    seeds: list[Seed] = []
    for name, entry in [
        ("tf1_bn", "model.ckpt"),  # partitioned variable, TF1 names
        ("tf1_sharded", "model.ckpt"),  # two shards
        ("tf2_keras3", "ckpt"),  # object graph, Keras 3
        ("tfkeras_object", "ckpt"),
        ("tfkeras_save_weights", "weights.ckpt"),
        ("empty_prefix", "."),
        ("tfkeras_model_save", "model"),  # SavedModel with keras_metadata.pb
    ]:
        seeds.append(_bundle_seed(f"bundle:{name}", data / "bundle" / name, entry))
    for name, entry in [("tf1_slim_decay", "model.ckpt"), ("tf2_healthy", "ckpt-1")]:
        seeds.append(_bundle_seed(f"bundle:{name}", samples / name, entry))
    seeds.append(_bundle_seed("bundle:savedmodel", data / "bundle" / "savedmodel", "model"))
    for p in sorted((data / "keras").glob("*")):
        fmt = "keras" if p.suffix == ".keras" else "h5"
        seeds.append(_file_seed(fmt, p))
    for p in sorted(samples.glob("*.h5")) + sorted(samples.glob("*.keras")):
        seeds.append(_file_seed("keras" if p.suffix == ".keras" else "h5", p))
    if include_large:
        seeds.append(_file_seed("h5", data / "real" / "fer" / "emotion_model.hdf5"))
        seeds.append(_bundle_seed("bundle:basic-pitch", data / "real" / "basic-pitch", "nmp"))
    return [s for s in seeds if s.root.exists()]


# --------------------------------------------------------------------------- byte mutations

BYTE_OPS = ("flip", "set", "truncate", "insert", "delete", "splice", "int", "varint")


def mutate_bytes(data: bytes, op: Op) -> bytes:
    """Apply one byte-level mutation; every parameter is reduced modulo what it indexes."""
    kind = BYTE_OPS[op[0] % len(BYTE_OPS)]
    a, b, c = (op[1:] + (0, 0, 0))[:3]
    buf = bytearray(data)
    n = len(buf)
    if kind == "insert":
        pos = a % (n + 1)
        filler = bytes([(c + i * 31) & 0xFF for i in range(1 + b % 64)])
        return bytes(buf[:pos] + filler + buf[pos:])
    if n == 0:
        return bytes(buf)
    pos = a % n
    if kind == "flip":
        for i in range(1 + c % 4):  # up to 4 bits, near each other
            p = (pos + i * (b % 7)) % n
            buf[p] ^= 1 << ((b + i) % 8)
    elif kind == "set":
        buf[pos] = (0x00, 0xFF, 0x7F, 0x80, b & 0xFF)[c % 5]
    elif kind == "truncate":
        return bytes(buf[:pos])
    elif kind == "delete":
        del buf[pos : pos + 1 + b % 256]
    elif kind == "splice":
        length = 1 + c % 512
        src = b % n
        chunk = bytes(buf[src : src + length])
        buf[pos : pos + len(chunk)] = chunk
    elif kind == "int":
        width = (1, 2, 4, 8)[b % 4]
        value = INTERESTING[c % len(INTERESTING)] & ((1 << (8 * width)) - 1)
        buf[pos : pos + width] = value.to_bytes(width, "little")
    elif kind == "varint":
        buf[pos:pos] = bw.varint(INTERESTING[c % len(INTERESTING)])
    return bytes(buf[: n + 4096])


# --------------------------------------------------------------------------- protobuf editing


def _encode_fields(fields: Sequence[tuple[int, int, int | bytes]]) -> bytes:
    out = bytearray()
    for field, wire, value in fields:
        out += bw.varint((field << 3) | wire)
        if wire == WIRE_VARINT:
            out += bw.varint(int(value))  # type: ignore[arg-type]
        elif wire == WIRE_FIXED64:
            out += struct.pack("<Q", int(value) & 0xFFFF_FFFF_FFFF_FFFF)  # type: ignore[arg-type]
        elif wire == WIRE_FIXED32:
            out += struct.pack("<I", int(value) & 0xFFFF_FFFF)  # type: ignore[arg-type]
        else:
            assert isinstance(value, bytes)
            out += bw.varint(len(value)) + value
    return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    try:
        return list(iter_fields(buf))
    except ValueError:
        return []


ENTRY_EDITS = (
    "dtype", "dim", "add_dim", "drop_dims", "unknown_rank", "shard", "offset", "size", "crc",
    "drop_crc", "slice", "num_shards", "endianness", "min_consumer", "raw",
)  # fmt: skip


def edit_entry(value: bytes, edit: int, x: int, y: int, header: bool) -> bytes:
    """Re-encode one BundleEntryProto (or the header) with one field set to a hostile value."""
    kind = ENTRY_EDITS[edit % len(ENTRY_EDITS)]
    v = INTERESTING[x % len(INTERESTING)]
    fields = _fields(value)
    if header or kind in ("num_shards", "endianness", "min_consumer"):
        if kind == "endianness":
            return _encode_fields([*fields, (2, WIRE_VARINT, v)])
        if kind == "min_consumer":
            version = bw.field_varint(1, 1) + bw.field_varint(2, v)
            return _encode_fields([f for f in fields if f[0] != 3] + [(3, WIRE_LEN, version)])
        return _encode_fields([f for f in fields if f[0] != 1] + [(1, WIRE_VARINT, v)])

    def replace(field: int, wire: int, val: int | bytes) -> bytes:
        return _encode_fields([f for f in fields if f[0] != field] + [(field, wire, val)])

    shape = next((f[2] for f in fields if f[0] == 2 and isinstance(f[2], bytes)), b"")
    dims = [f for f in _fields(shape) if f[0] == 2 and isinstance(f[2], bytes)]
    if kind == "dtype":
        return replace(1, WIRE_VARINT, (v, 7, 14, 20, 21, 8, 18, 10)[y % 8])
    if kind == "dim":
        if dims:
            i = y % len(dims)
            dims[i] = (2, WIRE_LEN, bw.field_varint(1, v))
        return replace(2, WIRE_LEN, _encode_fields(dims))
    if kind == "add_dim":
        dims.insert(y % (len(dims) + 1), (2, WIRE_LEN, bw.field_varint(1, v)))
        return replace(2, WIRE_LEN, _encode_fields(dims))
    if kind == "drop_dims":
        return replace(2, WIRE_LEN, b"")
    if kind == "unknown_rank":
        return replace(2, WIRE_LEN, shape + bw.field_varint(3, 1))
    if kind == "shard":
        return replace(3, WIRE_VARINT, v)
    if kind == "offset":
        return replace(4, WIRE_VARINT, v)
    if kind == "size":
        return replace(5, WIRE_VARINT, v)
    if kind == "crc":
        return replace(6, WIRE_FIXED32, v)
    if kind == "drop_crc":
        return _encode_fields([f for f in fields if f[0] != 6])
    if kind == "slice":
        extents = b"".join(
            bw.field_bytes(1, bw.field_varint(1, (v >> (8 * i)) % 7) + bw.field_varint(2, y % 5))
            for i in range(1 + y % 3)
        )
        return _encode_fields([*fields, (7, WIRE_LEN, extents)])
    return mutate_bytes(value, (x, y, x ^ y, y))  # "raw"


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    return list(Table.open(path).items())


def _string_tensor(payload: bytes) -> tuple[bytes, int]:
    lengths = struct.pack("<I", len(payload))
    length_crc = struct.pack("<I", mask_crc(crc32c(lengths)))
    return bw.varint(len(payload)) + length_crc + payload, mask_crc(
        crc32c(lengths + length_crc + payload)
    )


# --------------------------------------------------------------------------- structural ops

# Each structural op: (op id, a, b, c, d). Byte ops on a chosen file: (BYTE, file, byteop...).
STRUCT_BUNDLE = ("entry", "swap_shards", "drop_file", "retensor", "objgraph", "rename_shards")
STRUCT_H5 = ("json_attr", "weight_names")
STRUCT_KERAS = ("member", "config", "rezip_raw")


def _pick(files: Sequence[Path], i: int) -> Path | None:
    return files[i % len(files)] if files else None


def _shards(case: Path) -> list[Path]:
    return sorted(p for p in case.rglob("*") if ".data-" in p.name and p.is_file())


def _indexes(case: Path) -> list[Path]:
    return sorted(p for p in case.rglob("*.index") if p.is_file())


def _apply_bundle(case: Path, kind: str, a: int, b: int, c: int, d: int) -> None:
    indexes = _indexes(case)
    index = _pick(indexes, 0)
    if kind == "swap_shards":
        shards = _shards(case)
        if len(shards) >= 2:
            s1, s2 = shards[a % len(shards)], shards[b % len(shards)]
            t1, t2 = s1.read_bytes(), s2.read_bytes()
            s1.write_bytes(t2)
            s2.write_bytes(t1)
        return
    if kind == "drop_file":
        files = sorted(p for p in case.rglob("*") if p.is_file())
        victim = _pick(files, a)
        if victim is not None:
            victim.unlink()
        return
    if kind == "rename_shards":  # claim a different shard count in the file names
        for s in _shards(case):
            total = (0, 2, 3, 99999)[b % 4]
            s.rename(s.with_name(s.name[: -5] + f"{total:05d}"))
        return
    if index is None:
        return
    try:
        entries = read_table(index)
    except CheckpointError:
        return
    if not entries:
        return
    if kind == "entry":
        i = a % len(entries)
        key, value = entries[i]
        entries[i] = (key, edit_entry(value, b, c, d, header=key == b""))
    elif kind in ("retensor", "objgraph"):
        # Rewrite one tensor's bytes *with a matching CRC*: the damage passes the checksum.
        candidates = [
            i for i, (k, _) in enumerate(entries)
            if k and (k == b"_CHECKPOINTABLE_OBJECT_GRAPH") == (kind == "objgraph")
        ]  # fmt: skip
        if not candidates:
            return
        i = candidates[a % len(candidates)]
        key, value = entries[i]
        fields = _fields(value)
        get = {f[0]: f[2] for f in fields}
        shard_id, offset, size = (int(get.get(n, 0)) for n in (3, 4, 5))  # type: ignore[arg-type]
        shard = next((s for s in _shards(case) if f".data-{shard_id:05d}-of-" in s.name), None)
        if shard is None:
            return
        blob = shard.read_bytes()
        old = blob[offset : offset + size]
        if kind == "objgraph":
            # Skip varint length + 4-byte length CRC to get the serialized graph.
            pos = 0
            while pos < len(old) and old[pos] & 0x80:
                pos += 1
            payload = mutate_bytes(old[pos + 5 :], (b, c, d, a))
            new, crc = _string_tensor(payload)
        else:
            new = mutate_bytes(old, (b, c, d, a)) if b % 3 else bytes(
                (x ^ 0x7F) if j % 4 == 3 else x for j, x in enumerate(old)
            )  # the second form makes floats huge, NaN or inf, keeping the size
            crc = mask_crc(crc32c(new))
        shard.write_bytes(blob + new)
        repl = {4: len(blob), 5: len(new), 6: crc}
        out = [(f, w, repl.pop(f) if f in repl else v) for f, w, v in fields]
        out += [(f, WIRE_FIXED32 if f == 6 else WIRE_VARINT, v) for f, v in repl.items()]
        entries[i] = (key, _encode_fields(out))
    index.write_bytes(bw.table(entries, per_block=1 + c % 4))


def _mutate_json(value: Any, a: int, b: int, depth: int = 0) -> Any:
    """Replace one node of a JSON document (chosen by `a`) with a hostile value (by `b`)."""
    hostile: tuple[Any, ...] = (
        None, [], {}, -1, 1e308, "", "x" * 1000, True, {"class_name": "Lambda"},
        [[[[[[]]]]]], {"class_name": None, "config": []}, 2**70, "../../etc/passwd",
        {"class_name": "Functional", "config": {"layers": [None, 1, "a"]}},
    )  # fmt: skip
    if isinstance(value, dict) and value:
        keys = sorted(value, key=str)
        k = keys[a % len(keys)]
        if a % 3 == 0 or depth > 12:
            return {**value, k: hostile[b % len(hostile)]}
        return {**value, k: _mutate_json(value[k], a // 3, b, depth + 1)}
    if isinstance(value, list) and value:
        i = a % len(value)
        if a % 3 == 0 or depth > 12:
            return [*value[:i], hostile[b % len(hostile)], *value[i + 1 :]]
        return [*value[:i], _mutate_json(value[i], a // 3, b, depth + 1), *value[i + 1 :]]
    return hostile[b % len(hostile)]


def _apply_h5(path: Path, kind: str, a: int, b: int, c: int, d: int) -> None:
    try:
        with h5py.File(path, "r+") as f:
            if kind == "json_attr":
                if "model_config" in f.attrs:
                    raw = f.attrs["model_config"]
                    cfg = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
                    f.attrs["model_config"] = json.dumps(_mutate_json(cfg, a, b)).encode()
                return
            # weight_names / layer_names: point at missing, foreign or parent objects.
            groups: list[Any] = []
            f.visititems(
                lambda _n, o: groups.append(o)
                if isinstance(o, h5py.Group) and "weight_names" in o.attrs
                else None
            )
            target = f if "layer_names" in f.attrs or not groups else groups[a % len(groups)]
            attr = "layer_names" if target is f else "weight_names"
            if attr not in target.attrs:
                return
            names = [bytes(x) for x in np.asarray(target.attrs[attr]).reshape(-1)]
            choice = (b"", b"..", b"/", b"missing", b"a/../b", b"\xff\xfe", b"x" * 300)[b % 7]
            if names and c % 2:
                names[c % len(names)] = choice
            else:
                names.append(choice)
            target.attrs[attr] = np.array(names, dtype="S")
    except Exception:  # noqa: BLE001
        pass  # an earlier mutation damaged it beyond h5py's writer: keep it as it is


def _zip_members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes]] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return [(i, zf.read(i)) for i in zf.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None


def _rezip(path: Path, members: list[tuple[zipfile.ZipInfo, bytes]], deflate: bool) -> None:
    """Write the archive again (valid zip CRCs); Keras stores members, but a deflated
    archive is just as valid and puts zlib streams in reach of the byte mutations."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are one of the tricks
        for info, data in members:
            if deflate:
                info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    path.write_bytes(buf.getvalue())


def _apply_keras(path: Path, kind: str, a: int, b: int, c: int, d: int) -> None:
    members = _zip_members(path)
    if not members:
        return
    if kind == "rezip_raw":  # member names and attributes a .keras should never have
        info, data = members[a % len(members)]
        names = ("../x", "/abs", "a\\b", "model.weights.h5", "", "C:/x", "config.json")
        new = zipfile.ZipInfo(names[b % len(names)] or "x")
        new.external_attr = (0o120777 << 16) if c % 5 == 0 else info.external_attr
        new.create_system = 3
        members.append((new, data[: d % (len(data) + 1)]))
        _rezip(path, members, deflate=c % 3 == 1)
        return
    for i, (info, data) in enumerate(members):
        if kind == "config" and info.filename in ("config.json", "metadata.json"):
            if (a % 2 == 0) != (info.filename == "config.json"):
                continue
            try:
                doc = json.loads(data)
                members[i] = (info, json.dumps(_mutate_json(doc, b, c)).encode())
            except ValueError:
                members[i] = (info, mutate_bytes(data, (a, b, c, d)))
            break
        if kind == "member" and info.filename == "model.weights.h5":
            if a % 3 == 0:  # structural HDF5 edit inside the member
                inner = path.with_name(path.name + ".inner.h5")
                inner.write_bytes(data)
                _apply_h5(inner, STRUCT_H5[b % 2], b, c, d, a)
                members[i] = (info, inner.read_bytes())
                inner.unlink()
            else:
                members[i] = (info, mutate_bytes(data, (a, b, c, d)))
            break
    _rezip(path, members, deflate=d % 3 == 1)


BYTE, STRUCT = 0, 1


def materialize(seed: Seed, ops: Sequence[Op], case: Path) -> Path:
    """Copy `seed` into the empty folder `case`, apply `ops`, return the path to open."""
    if seed.entry == "." or (seed.root / seed.entry).is_dir() or seed.fmt == "bundle":
        shutil.copytree(seed.root, case, dirs_exist_ok=True)
    else:
        shutil.copy(seed.root / seed.entry, case / seed.entry)
    # Structural edits first: they parse the file (h5py, zipfile, the table reader), which
    # goes best on the intact seed; byte-level damage comes after.
    for op in sorted(ops, key=lambda o: o[0] % 2 != STRUCT):
        kind, rest = op[0] % 2, (op[1:] + (0, 0, 0, 0, 0))[:5]
        if kind == BYTE:
            files = sorted(p for p in case.rglob("*") if p.is_file())
            target = _pick(files, rest[0])
            if target is not None:
                target.write_bytes(mutate_bytes(target.read_bytes(), rest[1:]))
            continue
        a, b, c, d, e = rest
        with contextlib.suppress(Exception):  # a mutator failing on damaged input is no finding
            _apply_struct(seed, case, a, b, c, d, e)
    return case / seed.entry if seed.entry != "." else case


def _apply_struct(seed: Seed, case: Path, a: int, b: int, c: int, d: int, e: int) -> None:
    entry = case / seed.entry
    if seed.fmt == "bundle":
        _apply_bundle(case, STRUCT_BUNDLE[a % len(STRUCT_BUNDLE)], b, c, d, e)
    elif seed.fmt == "h5" and entry.is_file():
        _apply_h5(entry, STRUCT_H5[a % len(STRUCT_H5)], b, c, d, e)
    elif seed.fmt == "keras" and entry.is_file():
        _apply_keras(entry, STRUCT_KERAS[a % len(STRUCT_KERAS)], b, c, d, e)


# --------------------------------------------------------------------------- the contract


class CaseTimeout(BaseException):
    """Raised by the interval timer; a BaseException so no reader's `except` swallows it."""


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok", "error" (a CheckpointError: fine), or a violation: "crash", "timeout",
    #              "memory", "shape"
    detail: str = ""
    seconds: float = 0.0
    peak_bytes: int = 0

    @property
    def violation(self) -> bool:
        return self.status not in ("ok", "error")


def input_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    parent = path.parent
    # A bundle prefix names several files; count the whole folder (it is one case).
    return sum(p.stat().st_size for p in parent.rglob("*") if p.is_file())


RSS_SLACK = 256 << 20  # allocator arenas, h5py caches, first-time imports


def memory_limit(size: int) -> int:
    """Allowed Python-heap peak for one case: a fixed allowance plus 16x the input."""
    return (8 << 20) + 16 * size


def exercise(path: Path) -> str:
    """Everything a user's CI does with a file. Returns "ok" or "error"; anything else raised
    is a contract violation for the caller to record."""
    status = "ok"
    try:
        with open_checkpoint(path) as ckpt:
            infos = dict(ckpt.tensors)
            for key, info in infos.items():
                try:
                    arr = ckpt.read(key)
                except CheckpointError:
                    status = "error"
                    continue
                if not isinstance(arr, np.ndarray) or tuple(arr.shape) != tuple(info.shape):
                    raise ShapeViolation(
                        f"{key!r}: read {getattr(arr, 'shape', type(arr))}, declared {info.shape}"
                    )
            _ = ckpt.layers, ckpt.warnings
            find_groups(ckpt)
    except CheckpointError:
        status = "error"
    report = audit_file(path)
    if not isinstance(report, FileReport):
        raise TypeError(f"audit_file returned {type(report)}")
    return status


class ShapeViolation(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(_sig: int, _frame: Any) -> None:
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_contract(
    path: Path,
    time_limit: float = 2.0,
    check_memory: bool = True,
    action: Callable[[Path], str] = exercise,
) -> Outcome:
    size = input_size(path)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; sees C allocations
    started = time.perf_counter()
    if check_memory:
        tracemalloc.start()
        tracemalloc.reset_peak()
    try:
        with _alarm(time_limit):
            status = action(path)
        detail = ""
    except CaseTimeout:
        status, detail = "timeout", f"over {time_limit:.1f} s"
    except ShapeViolation as exc:
        status, detail = "shape", str(exc)
    except Exception as exc:  # noqa: BLE001 - that is what we are looking for
        status, detail = "crash", f"{type(exc).__name__}: {exc}"
    finally:
        peak = tracemalloc.get_traced_memory()[1] if check_memory else 0
        if check_memory:
            tracemalloc.stop()
    seconds = time.perf_counter() - started
    if status == "timeout" and check_memory:
        # tracemalloc slows h5py-heavy cases several-fold, and a loaded machine more: only a
        # case that is also too slow untraced is a hang.
        return run_contract(path, time_limit, check_memory=False, action=action)
    if status in ("ok", "error") and check_memory and peak > memory_limit(size):
        status, detail = "memory", f"heap peak {peak} bytes for a {size}-byte input"
    # The process high-water mark only moves on a new record, but a case that allocates
    # (in C, e.g. inside libhdf5) far beyond the limit always sets one.
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    if status in ("ok", "error") and rss_growth > RSS_SLACK + memory_limit(size):
        status, detail = "memory", f"process memory grew {rss_growth} bytes for a {size}-byte input"
    return Outcome(status, detail, seconds, peak)

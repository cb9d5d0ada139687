"""Keras 3 `.keras` archives: a zip of `metadata.json`, `config.json` and `model.weights.h5`.

The zip is untrusted: every member name is checked (no `..`, absolute paths, drive letters,
backslashes, symlinks, duplicates, encryption) and every declared size is checked against caps
and the archive's own size *before* anything is decompressed. The JSON members are read into
memory with a hard cap; the weights file, which Keras stores uncompressed, is read in place
through a window over the archive (a deflated one is inflated in chunks into an anonymous
temporary file and read through a window over that: memory stays at a chunk whatever the
member inflates to), then read by keras_h5's Keras 3 reader, with `config.json` giving each
layer its real name, class and config (nested Functional / Sequential models included). The
config is plain JSON: nothing is deserialized, so a `Lambda` layer is just an entry whose
`class_name` the audit can report.
"""

from __future__ import annotations

import json
import mmap
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptdoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from ckptdoc.formats.keras_h5 import KerasH5Checkpoint, open_weights_h5_file
from ckptdoc.formats.resolve import HDF5_MAGIC
from ckptdoc.formats.window import Window, release

__all__ = ["open_keras_zip", "MAX_MEMBER_BYTES", "MAX_JSON_BYTES", "MAX_RATIO"]

WEIGHTS_NAME = "model.weights.h5"
CONFIG_NAME = "config.json"
METADATA_NAME = "metadata.json"

#: Largest member ckptdoc will inflate into memory.
MAX_MEMBER_BYTES = 8 << 30
#: Largest JSON member (config.json of a huge model is a few MB).
MAX_JSON_BYTES = 64 << 20
#: Deflate tops out near 1032:1; more than this on a sizeable member is a bomb.
MAX_RATIO = 200
_RATIO_FLOOR = 1 << 20
_MAX_MEMBERS = 100_000
_INFLATE_CHUNK = 8 << 20


def open_keras_zip(path: Path) -> KerasH5Checkpoint:
    """Open a `.keras` file; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    archive_size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path, "r")
    except (
        zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
        NotImplementedError,  # a member needing a newer zip version than Python supports
    ) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptCheckpointError(path, f"not a valid .keras zip: {exc}") from exc
    with zf:
        infos = _check_members(zf, path, archive_size)
        if WEIGHTS_NAME not in infos:
            if "model.weights.npz" in infos:
                raise UnsupportedFormatError(
                    path, ".keras with npz weights (weights_format='npz') is not supported"
                )
            raise CorruptCheckpointError(path, f"no {WEIGHTS_NAME} in the archive")
        config = _read_json(zf, infos.get(CONFIG_NAME), path)
        metadata = _read_json(zf, infos.get(METADATA_NAME), path)
        weights = infos[WEIGHTS_NAME]
        if weights.compress_type == zipfile.ZIP_STORED:
            data: bytes | Window = _stored_member(zf, weights, path, archive_size)
        else:
            data = _inflated_member(zf, weights, path)
    ckpt = open_weights_h5_file(
        data, path, config if isinstance(config, Mapping) else None, "keras3-zip"
    )
    notes: list[str] = []
    if config is None:
        notes.append(f"no {CONFIG_NAME}: layer names and classes come from the weights file")
    elif not isinstance(config, Mapping):
        notes.append(f"{CONFIG_NAME} is not a JSON object; ignored")
    if isinstance(metadata, Mapping) and "keras_version" in metadata:
        ckpt.keras_version = str(metadata["keras_version"])
    ckpt.add_warnings(notes)
    return ckpt


def _check_members(
    zf: zipfile.ZipFile, path: Path, archive_size: int
) -> dict[str, zipfile.ZipInfo]:
    """Refuse any member that could escape, lie about its size, or inflate without bound."""
    infos = zf.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise UnsafeCheckpointError(path, f"archive lists {len(infos)} members")
    out: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        _check_name(name, path)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise UnsafeCheckpointError(path, f"archive member {name!r} is a symlink")
        if info.flag_bits & 0x1:
            raise UnsafeCheckpointError(path, f"archive member {name!r} is encrypted")
        if name in out:
            raise UnsafeCheckpointError(path, f"archive member {name!r} appears twice")
        if info.file_size > MAX_MEMBER_BYTES:
            raise UnsafeCheckpointError(
                path,
                f"archive member {name!r} declares {info.file_size} bytes (cap {MAX_MEMBER_BYTES})",
            )
        if info.compress_size > archive_size:
            raise CorruptCheckpointError(
                path, f"archive member {name!r} is larger than the archive itself"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise CorruptCheckpointError(path, f"stored member {name!r} has mismatched sizes")
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(
            info.compress_size, 1
        ):
            raise UnsafeCheckpointError(
                path,
                f"archive member {name!r} would inflate {info.compress_size} bytes to "
                f"{info.file_size} (compression bomb?)",
            )
        out[name] = info
    return out


def _check_name(name: str, path: Path) -> None:
    bad = (
        not name
        or "\\" in name
        or "\x00" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")  # drive letter
        or any(part == ".." for part in name.split("/"))
    )
    if bad:
        raise UnsafeCheckpointError(path, f"archive member name {name!r} is not a safe path")


def _stored_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, archive_size: int
) -> Window:
    """An uncompressed member, read in place through an mmap of the archive (Keras stores
    `model.weights.h5` this way) instead of copied into memory. Its zip CRC-32 is checked
    first, in chunks, so a flipped byte anywhere in the weights is reported as corruption."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CorruptCheckpointError(path, f"bad local header for {info.filename!r}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > archive_size:
            raise CorruptCheckpointError(path, f"{info.filename!r} runs past the end of the file")
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if _crc32(view, start, info.file_size) != info.CRC:
        view.close()
        raise CorruptCheckpointError(path, f"{info.filename!r} fails its zip CRC-32 check")
    # The mmap outlives the file descriptor; it is released when the checkpoint is closed
    # and the last reference to the window goes.
    return Window(view, start, info.file_size)


def _crc32(view: mmap.mmap, start: int, size: int, chunk: int = 1 << 24) -> int:
    crc = 0
    with memoryview(view) as whole:
        for pos in range(start, start + size, chunk):
            stop = min(pos + chunk, start + size)
            with whole[pos:stop] as part:
                crc = zlib.crc32(part, crc)
            release(view, pos, stop)  # a chunk of memory, not the member
    return crc


def _inflated_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> Window:
    """A compressed member, inflated in chunks into an anonymous temporary file and read
    through an mmap of it: memory stays at a chunk whatever the member inflates to. The
    HDF5 signature is checked on the first chunk, before anything else is inflated; the zip
    CRC-32 as the stream ends (zipfile checks it)."""
    try:
        tmp = tempfile.TemporaryFile(prefix="ckptdoc-")  # unlinked: gone when unmapped
    except OSError as exc:
        raise CheckpointError(path, f"cannot create a temporary file to inflate "
                                    f"{info.filename!r} into: {exc}") from exc
    with tmp:
        written = 0
        try:
            with zf.open(info) as fh:
                while chunk := fh.read(_INFLATE_CHUNK):
                    if written == 0 and not chunk.startswith(HDF5_MAGIC):
                        raise CorruptCheckpointError(
                            path, f"{info.filename!r} is not an HDF5 file (no HDF5 signature)")
                    written += len(chunk)
                    if written > min(info.file_size, MAX_MEMBER_BYTES):
                        raise UnsafeCheckpointError(
                            path, f"{info.filename!r} inflates past its declared size")
                    tmp.write(chunk)
            tmp.flush()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zlib.error, ValueError, EOFError,
                NotImplementedError) as exc:  # zlib.error: a damaged deflate stream
            raise CorruptCheckpointError(path, f"cannot read {info.filename!r}: {exc}") from exc
        except OSError as exc:  # ENOSPC on the temporary folder, above all
            raise CheckpointError(path, f"cannot inflate {info.filename!r} ({written} bytes "
                                        f"so far) into a temporary file: {exc}") from exc
        if written == 0:
            raise CorruptCheckpointError(path, f"{info.filename!r} is empty")
        view = mmap.mmap(tmp.fileno(), 0, access=mmap.ACCESS_READ)
    return Window(view, 0, written)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, cap: int) -> bytes:
    """Inflate one member, never past its declared size or `cap`."""
    limit = min(info.file_size, cap)
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except (
        zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError
    ) as exc:  # zlib.error: a damaged deflate stream
        raise CorruptCheckpointError(path, f"cannot read {info.filename!r}: {exc}") from exc
    if len(data) > limit:
        raise UnsafeCheckpointError(path, f"{info.filename!r} inflates past its declared size")
    return data


def _read_json(zf: zipfile.ZipFile, info: zipfile.ZipInfo | None, path: Path) -> Any:
    if info is None:
        return None
    if info.file_size > MAX_JSON_BYTES:
        raise UnsafeCheckpointError(path, f"{info.filename!r} is {info.file_size} bytes")
    raw = _read_member(zf, info, path, MAX_JSON_BYTES)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(path, f"{info.filename!r} is not valid JSON: {exc}") from exc

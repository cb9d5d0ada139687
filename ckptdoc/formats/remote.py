"""Checkpoints where they live: `s3://`, `gs://`, `https://` and any other fsspec protocol
whose package is installed (`pip install 'ckptdoc[remote]'`). Knows URLs and byte ranges,
nothing about batch norm.

A remote checkpoint is read through a local *mirror*: a private temporary folder with the
files the readers need. Small files come whole (a bundle's `.index` and `.meta`, a
SavedModel's `saved_model.pb`, Keras files); a bundle's data shards are sparse files of their
remote size, and only the byte ranges the reader asks for are fetched (ranged GETs), so auditing
a multi-gigabyte checkpoint transfers its index and its BN tensors. The local readers then run
unchanged: the same checks (CRC32C of every tensor read, HDF5 and zip hardening) and the same
`CheckpointError` contract, with the mirror's paths in messages replaced by the URL.

Credentials and endpoints are the store's usual ones (AWS environment / config files and
`AWS_ENDPOINT_URL` for S3-compatible stores such as MinIO; Google application credentials).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ckptdoc.checkpoint import Checkpoint, LayerNode, StepCount, TensorInfo
from ckptdoc.errors import CheckpointError, NotFoundError, UnsupportedFormatError
from ckptdoc.formats.url import is_url
from ckptdoc.install_hint import install_hint

if TYPE_CHECKING:
    from ckptdoc.formats.graph import Graph

__all__ = ["is_url", "open_remote", "find_remote_checkpoints", "Transfer", "TRANSFER"]

_SHARD = re.compile(r"^(?P<prefix>.*)\.data-\d{5}-of-\d{5}$")
_KERAS = (".h5", ".hdf5", ".keras")
#: PyTorch files come whole (a zip's members are found from its end; a safetensors header
#: from its start): the local readers then check them as they check local files.
_TORCH = (".pt", ".pth", ".ckpt", ".safetensors")
#: Ranges are fetched in blocks of this size at least: a BN tensor is a few KB, and one
#: request per block keeps neighbouring tensors (gamma, beta, mean, variance) to one GET.
BLOCK = 64 << 10


class Transfer:
    """Bytes and requests fetched from remote stores by this process (for reports and tests)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0

    def add(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.requests += 1


TRANSFER = Transfer()


#: The stores ckptdoc reads. Any other fsspec protocol reaches what the user did not mean
#: to (`webhdfs://` any host) or skips the local readers' hardening (`local://`, `zip://`
#: chains), so it is refused by name.
PROTOCOLS = ("s3", "gs", "gcs", "http", "https")
#: Timeouts for S3 (botocore); HTTP has its own in http_store.py.
_S3_CONFIG = {"connect_timeout": 10, "read_timeout": 20, "retries": {"max_attempts": 2}}
#: Objects a folder listing may return before it is refused as too large to scan.
MAX_LISTED = 100_000
#: The `checkpoint` state file is a few lines.
MAX_STATE_BYTES = 1 << 20


def _filesystem(url: str) -> tuple[Any, str]:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in PROTOCOLS or "::" in url:
        raise UnsupportedFormatError(
            url, f"ckptdoc reads {', '.join(p + '://' for p in PROTOCOLS)} URLs and local "
            "paths only; copy the checkpoint to one of those")
    if scheme in ("http", "https"):
        from ckptdoc.formats.http_store import HttpStore

        return HttpStore(url), url
    try:
        import fsspec
    except ImportError:
        raise UnsupportedFormatError(
            url, f"remote checkpoints need fsspec: {install_hint('remote')}"
        ) from None
    options: dict[str, Any] = {"config_kwargs": _S3_CONFIG} if scheme == "s3" else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:  # e.g. s3fs / gcsfs not installed
        raise UnsupportedFormatError(url, f"cannot open this URL: {exc}") from exc


def _download(fs: Any, rpath: str, cap: int) -> Iterator[bytes]:
    """The bytes of a whole remote file, refused past `cap` (the local reader's own limit)
    however large the server says it is or turns out to be."""
    from ckptdoc.formats.http_store import HttpStore

    if isinstance(fs, HttpStore):
        yield from fs.chunks(rpath, cap=cap)
        return
    size = fs.size(rpath)
    if size > cap:
        raise CheckpointError(rpath, f"{size:,} bytes is more than the {cap:,} ckptdoc reads "
                              "for this file")
    for offset in range(0, size, _DOWNLOAD_PIECE):
        yield fs.cat_file(rpath, start=offset, end=min(size, offset + _DOWNLOAD_PIECE))


_DOWNLOAD_PIECE = 64 << 20


def _errors(url: str, exc: BaseException) -> CheckpointError:
    """A store's exception as the audit's contract: the URL and what went wrong."""
    if isinstance(exc, CheckpointError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(url, "no such object")
    if isinstance(exc, PermissionError):
        return CheckpointError(url, f"access denied: {exc}")
    return CheckpointError(url, f"could not read from the store: {type(exc).__name__}: {exc}")


def _parent(rpath: str) -> str:
    return rpath.rsplit("/", 1)[0] if "/" in rpath else ""


def _name(rpath: str) -> str:
    return rpath.rsplit("/", 1)[-1]


class _Mirror:
    """A private temporary folder standing in for the remote folder `base`."""

    def __init__(self, fs: Any, base: str) -> None:
        self.fs = fs
        self.base = base.rstrip("/")
        self.dir = Path(tempfile.mkdtemp(prefix="ckptdoc-remote-"))
        self._remote: dict[Path, str] = {}
        self._have: dict[Path, set[int]] = {}

    def local(self, rpath: str) -> Path:
        rel = rpath[len(self.base) + 1 :] if rpath.startswith(self.base + "/") else _name(rpath)
        path = self.dir.joinpath(*[p for p in rel.split("/") if p not in ("", ".", "..")])
        self._remote[path] = rpath
        return path

    def whole(self, rpath: str, cap: int) -> Path:
        """Download `rpath` to the mirror, streamed to disk, refused past `cap` bytes."""
        path = self.local(rpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        total = 0
        with open(path, "wb") as f:
            for chunk in _download(self.fs, rpath, cap):
                f.write(chunk)
                total += len(chunk)
        TRANSFER.add(total)
        return path

    def sparse(self, rpath: str, size: int) -> Path:
        path = self.local(rpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)  # holes: no disk, no transfer
        self._have[path] = set()
        return path

    def fetch(self, path: Path, offset: int, size: int) -> None:
        """Make bytes [offset, offset + size) of a sparse file real, fetching missing blocks."""
        have = self._have.get(path)
        if have is None or size <= 0:
            return
        total = path.stat().st_size
        if offset >= total:
            return  # past the end: the reader reports the truncation
        first, last = offset // BLOCK, (min(offset + size, total) - 1) // BLOCK
        missing = [b for b in range(first, last + 1) if b not in have]
        while missing:  # contiguous runs of missing blocks: one ranged GET each
            run = [missing.pop(0)]
            while missing and missing[0] == run[-1] + 1:
                run.append(missing.pop(0))
            start, end = run[0] * BLOCK, min((run[-1] + 1) * BLOCK, total)
            data = self.fs.cat_file(self._remote[path], start=start, end=end)
            TRANSFER.add(len(data))
            if len(data) != end - start:
                raise CheckpointError(self._remote[path], "the object changed while being read")
            with open(path, "r+b") as f:
                f.seek(start)
                f.write(data)
            have.update(run)

    def is_sparse(self, path: Path) -> bool:
        return path in self._have

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class RemoteCheckpoint(Checkpoint):
    """A checkpoint read through a mirror; messages name the URL, never the mirror."""

    def __init__(self, url: str, inner: Checkpoint, mirror: _Mirror, base_url: str) -> None:
        super().__init__(Path(url))
        self.url = url
        self.format = inner.format
        self._inner = inner
        self._mirror = mirror
        self._base_url = base_url.rstrip("/")

    def relabel(self, text: str) -> str:
        return text.replace(str(self._mirror.dir), self._base_url)

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return self._inner.tensors

    @property
    def layers(self) -> list[LayerNode] | None:
        return self._inner.layers

    @property
    def warnings(self) -> list[str]:
        return [self.relabel(w) for w in self._inner.warnings]

    @property
    def model_config(self) -> Any:
        return getattr(self._inner, "model_config", None)

    def read(self, key: str) -> np.ndarray:
        try:
            return self._inner.read(key)
        except CheckpointError as exc:
            raise type(exc)(self.relabel(exc.path), self.relabel(exc.problem)) from exc
        except Exception as exc:  # noqa: BLE001 - a store error while fetching a range
            raise _errors(self.url, exc) from exc

    def graph(self) -> Graph | None:
        return self._inner.graph()

    def step_count(self) -> StepCount | None:
        return self._inner.step_count()

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._mirror.close()


def open_remote(url: str) -> Checkpoint:
    """Open the checkpoint at `url`: a bundle prefix (or its `.index`), a checkpoint or
    SavedModel folder, or a Keras file. Raises CheckpointError naming the URL."""
    fs, rpath = _filesystem(url)
    rpath = rpath.rstrip("/")
    head = url.rstrip("/")[: len(url.rstrip("/")) - len(rpath)]  # "s3://", or "" for https
    mirror: _Mirror | None = None
    try:
        kind, target = _classify(fs, rpath)
        base = target if kind == "savedmodel" else _parent(target)
        mirror = _Mirror(fs, base)
        inner = _open_local(kind, _materialize(mirror, fs, kind, target), mirror)
    except Exception as exc:  # noqa: BLE001 - stores raise their own types (403, timeouts, ...)
        err = _errors(url, exc)
        path, problem = err.path, err.problem
        if mirror is not None:
            mirror.close()
            local, remote = str(mirror.dir), head + mirror.base
            path, problem = path.replace(local, remote), problem.replace(local, remote)
        if head and not is_url(path):  # a store path without its scheme
            path = head + path
        raise type(err)(path, problem) from exc
    return RemoteCheckpoint(url, inner, mirror, head + mirror.base)


def _classify(fs: Any, rpath: str) -> tuple[str, str]:
    """("bundle", prefix) | ("savedmodel", folder) | ("keras", file)."""
    name = _name(rpath)
    if name.endswith(".index"):
        return "bundle", rpath[: -len(".index")]
    m = _SHARD.match(rpath)
    if m:
        return "bundle", m.group("prefix")
    if name.endswith(".meta"):
        return "bundle", rpath[: -len(".meta")]
    if name.lower().endswith(_KERAS):
        return "keras", rpath
    # `model.ckpt` is a TF bundle prefix (its `.index` exists), or a Lightning file.
    lightning = name.lower().endswith(".ckpt")
    if name.lower().endswith(_TORCH) and (
            not lightning or (fs.exists(rpath) and not fs.exists(rpath + ".index"))):
        return "torch", rpath
    if fs.exists(rpath + ".index"):
        return "bundle", rpath
    if fs.isdir(rpath):
        if fs.exists(rpath + "/saved_model.pb"):
            return "savedmodel", rpath
        names = [_name(n) for n in fs.ls(rpath, detail=False)]
        indexes = sorted(n for n in names if n.endswith(".index"))
        if "checkpoint" in names:  # the state file names the newest checkpoint
            state = b"".join(_download(fs, rpath + "/checkpoint", MAX_STATE_BYTES)).decode(
                "utf-8", "replace")
            TRANSFER.add(len(state))
            m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state, re.M)
            if m and _name(m.group(1)) + ".index" in indexes:
                return "bundle", rpath + "/" + _name(m.group(1))
        if len(indexes) == 1:
            return "bundle", rpath + "/" + indexes[0][: -len(".index")]
        if not indexes:
            raise NotFoundError(rpath, "no checkpoint in this folder")
        raise UnsupportedFormatError(
            rpath, f"{len(indexes)} checkpoints and no `checkpoint` file: name one")
    if fs.exists(rpath):
        head = fs.cat_file(rpath, start=0, end=8)
        TRANSFER.add(len(head))
        if head.startswith((b"\x89HDF\r\n\x1a\n", b"PK\x03\x04")):
            return "keras", rpath
        raise UnsupportedFormatError(rpath, "not a checkpoint ckptdoc can read")
    raise NotFoundError(rpath, "no such object or checkpoint prefix")


def _materialize(mirror: _Mirror, fs: Any, kind: str, target: str) -> Path:
    # Whole files are capped at the limits their local readers apply.
    from ckptdoc.formats.keras_zip import MAX_MEMBER_BYTES
    from ckptdoc.formats.object_graph import MAX_SAVED_MODEL_BYTES

    if kind == "keras":
        head = fs.cat_file(target, start=0, end=8)
        TRANSFER.add(len(head))
        if head.startswith(b"\x89HDF\r\n\x1a\n"):  # HDF5: ranged reads through the mirror
            return mirror.sparse(target, fs.size(target))
        # .keras: its weights member's CRC reads every byte.
        return mirror.whole(target, MAX_MEMBER_BYTES)
    if kind == "torch":
        return mirror.whole(target, MAX_MEMBER_BYTES)
    if kind == "savedmodel":
        mirror.whole(target + "/saved_model.pb", MAX_SAVED_MODEL_BYTES)
        if fs.exists(target + "/keras_metadata.pb"):
            mirror.whole(target + "/keras_metadata.pb", MAX_SAVED_MODEL_BYTES)
        _bundle(mirror, fs, target + "/variables/variables")
        return mirror.dir
    return _bundle(mirror, fs, target)


def _bundle(mirror: _Mirror, fs: Any, prefix: str) -> Path:
    """The index (and `.meta`) whole, every data shard sparse: no listing needed, so a plain
    HTTPS server serving the files works too."""
    from ckptdoc.formats.graph import MAX_GRAPH_BYTES
    from ckptdoc.formats.proto import decode_bundle_header
    from ckptdoc.formats.table import MAX_INDEX_BYTES, Table

    if not fs.exists(prefix + ".index"):
        raise NotFoundError(prefix, "no .index for this checkpoint prefix")
    index = mirror.whole(prefix + ".index", MAX_INDEX_BYTES)
    header = next(iter(Table.open(index).items()), (None, b""))
    shards = decode_bundle_header(header[1]).num_shards if header[0] == b"" else 0
    if shards > 100_000:
        raise CheckpointError(prefix, f"implausible shard count {shards}")
    for i in range(shards):
        shard = f"{prefix}.data-{i:05d}-of-{shards:05d}"
        if fs.exists(shard):
            mirror.sparse(shard, fs.size(shard))
    if fs.exists(prefix + ".meta"):
        mirror.whole(prefix + ".meta", MAX_GRAPH_BYTES)
    local = mirror.local(prefix + ".index")
    return local.with_name(local.name[: -len(".index")])


def _open_local(kind: str, local: Path, mirror: _Mirror) -> Checkpoint:
    from ckptdoc.formats.bundle import open_bundle
    from ckptdoc.formats.keras_h5 import open_hdf5
    from ckptdoc.formats.keras_zip import open_keras_zip

    if kind == "bundle":
        return open_bundle(local, fetch=mirror.fetch)
    if kind == "savedmodel":
        return open_bundle(local / "variables" / "variables", savedmodel=True,
                           fetch=mirror.fetch)
    if kind == "torch":
        from ckptdoc.formats.safetensors import open_safetensors
        from ckptdoc.formats.torch_zip import open_torch

        return open_safetensors(local) if local.name.lower().endswith(".safetensors") \
            else open_torch(local)
    if mirror.is_sparse(local):
        return open_hdf5(local, fetch=mirror.fetch)
    with open(local, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    return open_keras_zip(local) if zipped else open_hdf5(local)


def find_remote_checkpoints(url: str) -> list[str]:
    """Every checkpoint under the folder (prefix) `url`, each once, as URLs: bundle prefixes,
    SavedModel folders, Keras files (by extension)."""
    fs, rpath = _filesystem(url)
    rpath = rpath.rstrip("/")
    try:
        if not fs.isdir(rpath):
            return [url]
        names = sorted(fs.find(rpath))
    except Exception as exc:  # noqa: BLE001 - listed per path, reported as unreadable
        raise _errors(url, exc) from exc
    if len(names) > MAX_LISTED:
        raise CheckpointError(url, f"{len(names):,} objects under this prefix, more than the "
                              f"{MAX_LISTED:,} ckptdoc scans; name a narrower prefix")
    head = url.rstrip("/")[: len(url.rstrip("/")) - len(rpath)]
    found: dict[str, None] = {}
    saved = {_parent(n) for n in names if n.endswith("/saved_model.pb")}
    for n in names:
        folder = _parent(n)
        if folder in saved or any(folder.startswith(s + "/") for s in saved):
            if n.endswith("/saved_model.pb"):
                found[head + folder] = None
            continue
        if n.endswith(".index"):
            found[head + n[: -len(".index")]] = None
        elif n.lower().endswith(_KERAS + _TORCH):
            found[head + n] = None
    return list(found)

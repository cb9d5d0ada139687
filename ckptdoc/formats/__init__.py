"""Open any checkpoint path a user would pass. Knows bytes on disk, nothing about batch norm.

`open_checkpoint(path)` accepts a bundle prefix (`model.ckpt`), its `.index` / `.data-*` /
`.meta` file, a checkpoint directory, a SavedModel directory, a Keras `.h5` / `.hdf5` /
`.weights.h5` / `.keras` file. Everything it raises is a `CheckpointError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ckptdoc.checkpoint import Checkpoint
from ckptdoc.errors import CheckpointError, NotFoundError, UnsupportedFormatError
from ckptdoc.formats.resolve import Resolved, resolve

__all__ = ["OPENERS", "open_checkpoint", "resolve", "Resolved"]


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open `path` as a checkpoint; raise CheckpointError naming the file and the problem.
    A URL (`s3://...`, `gs://...`, `https://...`) is read remotely (formats/remote.py)."""
    from ckptdoc.formats.url import is_url

    if is_url(path):
        from ckptdoc.formats.remote import open_remote

        return open_remote(str(path))
    resolved = resolve(Path(path))
    opener = OPENERS.get(resolved.kind)
    if opener is None:
        raise UnsupportedFormatError(resolved.path, f"unknown kind {resolved.kind!r}")
    try:
        return opener(resolved)
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise NotFoundError(resolved.path, f"missing file: {exc.filename or exc}") from exc
    except (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError,
            MemoryError, UnicodeDecodeError) as exc:
        # Readers validate what they parse; this is the safety net that keeps the contract.
        raise CheckpointError(resolved.path, f"could not read: {exc}") from exc


# --------------------------------------------------------------------------- the format table
# Each reader loads on first use. Adding a format: its reader module, its sniff in
# resolve.py (which names its kind), and one line here.


def _bundle(r: Resolved) -> Checkpoint:
    from ckptdoc.formats.bundle import open_bundle

    return open_bundle(r.path, savedmodel=r.kind == "savedmodel", notes=r.notes)


def _hdf5(r: Resolved) -> Checkpoint:
    from ckptdoc.formats.keras_h5 import open_hdf5

    return open_hdf5(r.path)


def _keras_zip(r: Resolved) -> Checkpoint:
    from ckptdoc.formats.keras_zip import open_keras_zip

    return open_keras_zip(r.path)


def _torch(r: Resolved) -> Checkpoint:
    from ckptdoc.formats.torch_zip import open_torch

    return open_torch(r.path)


def _safetensors(r: Resolved) -> Checkpoint:
    from ckptdoc.formats.safetensors import open_safetensors

    return open_safetensors(r.path)


OPENERS: dict[str, Callable[[Resolved], Checkpoint]] = {
    "bundle": _bundle,
    "savedmodel": _bundle,
    "hdf5": _hdf5,
    "keras-zip": _keras_zip,
    "torch": _torch,
    "safetensors": _safetensors,
}

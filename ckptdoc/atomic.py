"""Atomic file replacement: write a temporary file beside the target, fsync, rename, fsync dir.

A reader of `dest` sees either the old file or the complete new one, never a torn write, even
across a crash. `in_place` additionally keeps `<file>.bak` and puts it back if anything after
the rename fails (e.g. a post-write check).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def temp_path_for(dest: Path) -> Path:
    """A hidden temporary name in dest's directory that keeps dest's suffixes (`.weights.h5`)."""
    return dest.with_name(f".ckptdoc-tmp-{secrets.token_hex(4)}-{dest.name}")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    # Directories cannot be fsynced on some platforms (Windows); the rename is still atomic.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: Path, dest: Path) -> None:
    """fsync `tmp`, rename it over `dest`, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on normal exit it atomically becomes `dest`.

    On an exception the temporary file is removed and `dest` is left as it was.
    """
    dest = Path(dest)
    tmp = temp_path_for(dest)
    try:
        yield tmp
        commit(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def copy_atomic(src: str | Path, dest: str | Path) -> None:
    """Copy `src` to `dest` atomically (used for backups)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


@contextlib.contextmanager
def in_place(path: str | Path) -> Iterator[Path]:
    """Replace `path` atomically, keeping `<path>.bak`.

    Yields a temporary path to write. The backup is written (and fsynced) before anything else.
    If the body raises, `path` is untouched; the backup is kept either way.
    """
    path = Path(path)
    bak = backup_path(path)
    copy_atomic(path, bak)
    with atomic_path(path) as tmp:
        yield tmp


def restore_backup(path: str | Path) -> None:
    """Put `<path>.bak` back over `path` (atomically); the backup stays."""
    path = Path(path)
    copy_atomic(backup_path(path), path)

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

TEMP_PREFIX = ".ckptdoc-tmp-"


def temp_name(suffix: str = "") -> str:
    """A hidden temporary name that records the writing process, so a later run can tell
    leftovers of a killed writer (SIGKILL, power loss) from a write still in progress."""
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def temp_path_for(dest: Path) -> Path:
    """A hidden temporary name in dest's directory that keeps dest's suffixes (`.weights.h5`)."""
    return dest.with_name(temp_name(f"-{dest.name}"))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete ckptdoc temporaries in `directory` whose writing process no longer exists.

    Only names this module makes are touched; a temporary of a live process (another ckptdoc
    writing right now) is left alone. Returns what was removed.
    """
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            pid = _writer_pid(entry.name)
            if pid is None or pid == os.getpid() or _alive(pid):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def _writer_pid(name: str) -> int | None:
    if not name.startswith(TEMP_PREFIX):
        return None
    pid, _, rest = name[len(TEMP_PREFIX) :].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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
    remove_stale_temps(dest.parent)
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

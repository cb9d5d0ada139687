"""Atomic writes: the target is either the old file or the complete new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptdoc import atomic


def test_atomic_path_writes_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "m.recalibrated.weights.h5"
    with atomic.atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent
        assert tmp.name.endswith(".weights.h5")  # keeps the suffix format detection needs
        tmp.write_bytes(b"new")
        assert not dest.exists()
    assert dest.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]


def test_atomic_path_failure_keeps_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "m.keras"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]


def test_in_place_keeps_backup(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"old")
    with atomic.in_place(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert atomic.backup_path(path).read_bytes() == b"old"


def test_in_place_failure_leaves_original(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"old")
    with pytest.raises(ValueError), atomic.in_place(path) as tmp:
        tmp.write_bytes(b"bad")
        raise ValueError("check failed")
    assert path.read_bytes() == b"old"
    assert atomic.backup_path(path).read_bytes() == b"old"
    atomic.restore_backup(path)
    assert path.read_bytes() == b"old"


def test_restore_backup_after_a_later_failure(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    path.write_bytes(b"old")
    with atomic.in_place(path) as tmp:
        tmp.write_bytes(b"new")
    atomic.restore_backup(path)
    assert path.read_bytes() == b"old"

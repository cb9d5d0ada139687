"""--jobs: batches of files per worker, the same reports in the same order as --jobs 1, small
work kept in-process, and a file that kills its worker costs only that file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptdoc import auditor
from ckptdoc.auditor import audit_files

SAMPLES = Path(__file__).resolve().parent.parent / "sample_ckpts"


@pytest.fixture()
def many(tmp_path: Path) -> list[Path]:
    files = []
    for i in range(40):
        src = SAMPLES / ("keras3_healthy.keras" if i % 2 else "keras3_broken.keras")
        dst = tmp_path / f"{i:02d}.keras"
        shutil.copy(src, dst)
        files.append(dst)
    return files


def test_parallel_reports_equal_sequential(many: list[Path]) -> None:
    assert audit_files(many, jobs=2) == audit_files(many, jobs=1)


def test_small_work_stays_in_process(many: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import concurrent.futures

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("no process pool for a few files")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", boom)
    reports = audit_files(many[:5], jobs=0)
    assert [r.path for r in reports] == [str(p) for p in many[:5]]


@pytest.mark.skipif(os.name != "posix", reason="relies on fork copying the patched function")
def test_a_file_that_kills_its_worker_costs_only_that_file(
    many: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = auditor.audit_file
    victim = str(many[7])

    def crash_on_victim(path, selection=None):  # type: ignore[no-untyped-def]
        if str(path) == victim:
            os._exit(3)  # as a segfault in a C library would end the process
        return real(path, selection)

    monkeypatch.setattr(auditor, "audit_file", crash_on_victim)
    reports = audit_files(many, jobs=2)
    assert [r.path for r in reports] == [str(p) for p in many]
    failed = [r.path for r in reports if r.error is not None]
    assert failed == [victim]
    assert "audit process failed" in (reports[7].error or "")
    assert all(len(r.groups) == 3 for r in reports if r.path != victim)


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_counts_every_file(many: list[Path], jobs: int) -> None:
    seen: list[int] = []
    reports = audit_files(many, jobs=jobs, done=seen.append)
    assert sum(seen) == len(reports) == len(many)

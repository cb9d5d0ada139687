"""Baselines: record findings, report only new ones, list entries that are gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptdoc.baseline import (
    BaselineError,
    apply_baseline,
    entries,
    entry_path,
    load_baseline,
    write_baseline,
)
from ckptdoc.report.model import AuditReport, BaselineEntry, FileReport, GroupResult
from ckptdoc.rules import Finding, Severity


def _finding(rule: str, group: str, message: str = "m", severity: Severity = Severity.ERROR):
    return Finding(rule, severity, group, message)


def _file(path: Path, *findings: Finding, error: str | None = None) -> FileReport:
    groups = tuple(
        GroupResult(g, next((f.rule for f in findings if f.group == g), "ok"))
        for g in ("bn1", "bn2")
    )
    if error is not None:
        return FileReport(str(path), None, error=error)
    return FileReport(str(path), "keras2-h5", groups, findings)


def test_entry_path_is_relative_to_the_baseline_folder(tmp_path: Path) -> None:
    base = tmp_path / "ci" / "baseline.json"
    assert entry_path(tmp_path / "models" / "a.h5", base) == "../models/a.h5"
    assert entry_path(tmp_path / "ci" / "x" / "b.h5", base) == "x/b.h5"


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    report = AuditReport(
        (
            _file(tmp_path / "b.h5", _finding("BN002", "bn2"), _finding("BN002", "bn1")),
            _file(tmp_path / "a.h5", _finding("BN005", "bn1", severity=Severity.WARNING)),
        )
    )
    assert write_baseline(report, base) == 3
    data = json.loads(base.read_text())
    assert data["version"] == 1
    # Sorted, no offsets or values: stable diffs when the baseline is regenerated.
    assert [(e["rule"], e["path"], e["group"]) for e in data["findings"]] == [
        ("BN002", "b.h5", "bn1"),
        ("BN002", "b.h5", "bn2"),
        ("BN005", "a.h5", "bn1"),
    ]
    assert load_baseline(base) == entries(report, base)


def test_only_new_findings_remain(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    old = AuditReport((_file(tmp_path / "a.h5", _finding("BN002", "bn1")),))
    write_baseline(old, base)
    new = AuditReport(
        (
            # Same problem, different message (values changed): still known.
            _file(tmp_path / "a.h5", _finding("BN002", "bn1", "other"), _finding("BN003", "bn2")),
            _file(tmp_path / "b.h5", _finding("BN002", "bn1")),
        )
    )
    out = apply_baseline(new, load_baseline(base), base)
    remaining = [(Path(r.path).name, f.rule, f.group) for r in out.files for f in r.findings]
    assert remaining == [("a.h5", "BN003", "bn2"), ("b.h5", "BN002", "bn1")]
    assert out.baseline is not None and out.baseline.suppressed == 1 and out.baseline.fixed == ()
    # Group statuses follow the remaining findings (bn1 of a.h5 is now ok).
    assert [(g.name, g.status) for g in out.files[0].groups] == [("bn1", "ok"), ("bn2", "BN003")]
    assert out.summary()["baselined"] == 1


def test_entries_that_no_longer_occur(tmp_path: Path) -> None:
    base = tmp_path / "baseline.json"
    (tmp_path / "a.h5").write_bytes(b"")
    (tmp_path / "other.h5").write_bytes(b"")
    known = [
        BaselineEntry("BN002", "a.h5", "bn1"),  # audited, fixed -> gone
        BaselineEntry("BN002", "a.h5", "bn2"),  # audited, still there
        BaselineEntry("BN002", "other.h5", "bn1"),  # not audited this run, exists -> unknown
        BaselineEntry("BN002", "deleted.h5", "bn1"),  # file gone -> gone
        BaselineEntry("BN002", "unreadable.h5", "bn1"),  # could not read -> unknown
    ]
    report = AuditReport(
        (
            _file(tmp_path / "a.h5", _finding("BN002", "bn2")),
            _file(tmp_path / "unreadable.h5", error="broken"),
        )
    )
    (tmp_path / "unreadable.h5").write_bytes(b"x")
    out = apply_baseline(report, known, base)
    assert out.baseline is not None
    assert [(e.path, e.group) for e in out.baseline.fixed] == [
        ("a.h5", "bn1"),
        ("deleted.h5", "bn1"),
    ]
    assert out.unreadable  # an unreadable file stays reported


def test_a_bundle_prefix_counts_as_existing(tmp_path: Path) -> None:
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    known = [BaselineEntry("BN001", "model.ckpt", "bn")]
    out = apply_baseline(AuditReport(()), known, tmp_path / "b.json")
    assert out.baseline is not None and out.baseline.fixed == ()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "invalid JSON"),
        ("[]", "no 'findings'"),
        ('{"version": 9, "findings": []}', "unsupported baseline version"),
        ('{"version": 1, "findings": [{"rule": "BN001"}]}', r"findings\[0\]"),
    ],
)
def test_bad_baseline_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "b.json"
    path.write_text(content)
    with pytest.raises(BaselineError, match=match):
        load_baseline(path)


def test_missing_baseline_file(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="--write-baseline"):
        load_baseline(tmp_path / "nope.json")

"""Baselines: adopt the gate on a repository that already has known-bad checkpoints.

`--write-baseline FILE` records the current findings; `--baseline FILE` then reports only new
ones. A finding is matched on rule + path + BN group, never on byte offsets or values, so
rewriting a checkpoint with the same problem keeps it known. Paths are stored relative to the
baseline file's folder (posix), so the file works from any working directory and on any OS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from ckptdoc.report.model import (
    AuditReport,
    BaselineEntry,
    BaselineOutcome,
    FileReport,
    GroupResult,
    worst_code,
)

VERSION = 1


class BaselineError(Exception):
    """A baseline file that cannot be used; the message names it."""


def entry_path(path: str | Path, baseline_file: str | Path) -> str:
    """`path` relative to the baseline file's folder, with `/` separators."""
    base = os.path.abspath(Path(baseline_file).parent)
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, base)
    except ValueError:  # another drive on Windows
        return Path(full).as_posix()
    return PurePosixPath(*Path(rel).parts).as_posix()


def entries(report: AuditReport, baseline_file: str | Path) -> list[BaselineEntry]:
    """Every finding of `report` as a baseline entry, sorted, without duplicates."""
    found = {
        (f.rule, entry_path(file.path, baseline_file), f.group): BaselineEntry(
            f.rule, entry_path(file.path, baseline_file), f.group, f.severity.value, f.message
        )
        for file in report.files
        for f in file.findings
    }
    return [found[k] for k in sorted(found)]


def dumps(items: Iterable[BaselineEntry]) -> str:
    data = {
        "version": VERSION,
        "tool": "ckptdoc",
        "comment": "Known findings: `ckptdoc audit --baseline` reports only others. "
        "Matched on rule + path + group; paths are relative to this file.",
        "findings": [
            {"rule": e.rule, "path": e.path, "group": e.group, "severity": e.severity,
             "message": e.message}
            for e in items
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_baseline(report: AuditReport, dest: str | Path) -> int:
    """Record the findings of `report` in `dest` (atomically); returns how many."""
    from ckptdoc.report.formats import write_atomic

    items = entries(report, dest)
    write_atomic(dest, dumps(items))
    return len(items)


def load_baseline(path: str | Path) -> list[BaselineEntry]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(
            f"{path}: baseline file not found (create it with --write-baseline)"
        ) from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read baseline: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: not a ckptdoc baseline (invalid JSON: {exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        raise BaselineError(f"{path}: not a ckptdoc baseline (no 'findings' list)")
    if data.get("version") != VERSION:
        raise BaselineError(f"{path}: unsupported baseline version {data.get('version')!r}")
    out = []
    for i, item in enumerate(data["findings"]):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("rule", "path", "group")
        ):
            raise BaselineError(f"{path}: findings[{i}] needs string 'rule', 'path' and 'group'")
        out.append(
            BaselineEntry(
                item["rule"],
                item["path"],
                item["group"],
                str(item.get("severity", "")),
                str(item.get("message", "")),
            )
        )
    return out


def _still_there(path: Path) -> bool:
    # A bundle prefix is not a file itself; its .index is.
    return path.exists() or path.with_name(path.name + ".index").exists()


def apply_baseline(
    report: AuditReport, known: Iterable[BaselineEntry], baseline_file: str | Path
) -> AuditReport:
    """`report` without the known findings, and the known entries that no longer occur.

    An entry is listed as gone when its file was audited in this run (and read) without that
    finding, or when its file no longer exists; entries for files not audited this time (a
    pre-commit run on a few changed files) are left alone.
    """
    known = list(known)
    keys = {e.key for e in known}
    matched: set[tuple[str, str, str]] = set()
    audited: set[str] = set()
    files: list[FileReport] = []
    suppressed = 0
    for file in report.files:
        rel = entry_path(file.path, baseline_file)
        if file.error is not None:
            files.append(file)
            continue
        audited.add(rel)
        kept = []
        for f in file.findings:
            key = (f.rule, rel, f.group)
            if key in keys:
                matched.add(key)
                suppressed += 1
            else:
                kept.append(f)
        if len(kept) != len(file.findings):
            file = replace(file, findings=tuple(kept), groups=_restatus(file.groups, kept))
        files.append(file)
    base_dir = Path(baseline_file).parent
    fixed = tuple(
        e
        for e in known
        if e.key not in matched
        and (e.path in audited or not _still_there(base_dir / Path(*PurePosixPath(e.path).parts)))
    )
    outcome = BaselineOutcome(str(baseline_file), suppressed, fixed)
    return replace(report, files=tuple(files), baseline=outcome)


def _restatus(groups: Iterable[GroupResult], findings: list[Any]) -> tuple[GroupResult, ...]:
    """Group statuses recomputed from the findings that remain."""
    by_group: dict[str, list[Any]] = {}
    for f in findings:
        by_group.setdefault(f.group, []).append(f)
    return tuple(replace(g, status=worst_code(by_group.get(g.name, []))) for g in groups)

"""The audit's results as plain values: what every output format renders."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ckptdoc.rules import RULES, Finding, Severity


@dataclass(frozen=True)
class GroupResult:
    """One BN group of a file: its name, which members exist, and its worst finding."""

    name: str
    status: str  # "ok" or the code of the worst finding
    channels: int | None = None
    members: dict[str, str | None] = field(default_factory=dict)
    #: How the layer was recognised: graph, config, object graph, structure or names.
    found_by: str = "names"


@dataclass(frozen=True)
class FileReport:
    """Everything the audit says about one path. `error` is set when it could not be read."""

    path: str
    format: str | None
    groups: tuple[GroupResult, ...] = ()
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()
    #: Where every tensor of the file went: `counts` per bucket (BN member, weights,
    #: optimizer, EMA state, counter, unexplained) and the `unexplained` statistic-like ones.
    ledger: Mapping[str, Any] | None = None
    #: Why the file was not audited although it was read (an HDF5 file that holds no model):
    #: not a failure of the gate.
    skipped: str | None = None
    #: `audit --data`: the stored statistics against the data's, per layer
    #: (`rules.data.DataComparison.as_dict()`).
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class BaselineEntry:
    """One known finding: matched on rule + path + group, never on offsets."""

    rule: str
    path: str  # relative to the baseline file's folder, posix
    group: str
    severity: str = ""
    message: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.rule, self.path, self.group)


@dataclass(frozen=True)
class BaselineOutcome:
    """What applying a baseline did: how many findings it hid, which entries are gone."""

    path: str
    suppressed: int
    fixed: tuple[BaselineEntry, ...] = ()


@dataclass(frozen=True)
class RenderOptions:
    """What emitters need besides the report: where relative paths start, what fails."""

    root: Path | None = None  # None: the working directory
    fail_on: Severity = Severity.ERROR


@dataclass(frozen=True)
class AuditReport:
    """The result of an audit: one `FileReport` per checkpoint, in the order audited."""

    files: tuple[FileReport, ...]
    baseline: BaselineOutcome | None = None
    #: The gate's threshold as the run was configured (`--fail-on`, else `fail-on` from
    #: the configuration, else error): what `exit_code()` uses unless told otherwise.
    fail_on: Severity = Severity.ERROR

    def to_dict(self) -> dict[str, Any]:
        """The `--format json` document (schema: `ckptdoc/report/schema.json`)."""
        return as_dict(self)

    def exit_code(self, fail_on: Severity | None = None, exit_zero: bool = False) -> int:
        """What `ckptdoc audit` exits with: 2 a file could not be read, 1 a finding at or above
        `fail_on` (default: the run's own threshold, `self.fail_on`), else 0 (always 0 with
        `exit_zero`)."""
        if exit_zero:
            return 0
        if self.unreadable:
            return 2
        return 1 if self.worst_at_least(fail_on or self.fail_on) else 0

    @property
    def findings(self) -> list[Finding]:
        return [f for file in self.files for f in file.findings]

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def unreadable(self) -> list[FileReport]:
        return [f for f in self.files if f.error is not None]

    def summary(self) -> dict[str, int]:
        out = {
            "files": len(self.files),
            "unreadable": len(self.unreadable),
            "groups": sum(len(f.groups) for f in self.files),
            "findings": len(self.findings),
            "error": self.count(Severity.ERROR),
            "warning": self.count(Severity.WARNING),
            "info": self.count(Severity.INFO),
        }
        skipped = sum(1 for f in self.files if f.skipped is not None)
        if skipped:
            out["skipped"] = skipped
        if self.baseline is not None:
            out["baselined"] = self.baseline.suppressed
            out["baseline_fixed"] = len(self.baseline.fixed)
        return out

    def worst_at_least(self, threshold: Severity) -> bool:
        return any(f.severity.rank >= threshold.rank for f in self.findings)


def worst_code(findings: list[Finding]) -> str:
    """`ok`, or the code of the most serious finding (ties: the lowest code)."""
    if not findings:
        return "ok"
    order = list(RULES)
    worst = max(
        findings, key=lambda f: (f.severity.rank, -order.index(f.rule) if f.rule in order else 0)
    )
    return worst.rule


def relative_posix(path: str | Path, root: str | Path | None = None) -> str:
    """`path` relative to `root` (default: the working directory) with `/` separators; paths
    outside `root` stay absolute. Symlinks are not resolved: the name the user sees is kept."""
    base = os.path.abspath(root if root is not None else os.getcwd())
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full, base)
    except ValueError:  # another drive on Windows
        return Path(full).as_posix()
    if rel == os.curdir:
        return "."
    if rel.split(os.sep, 1)[0] == os.pardir:
        return Path(full).as_posix()
    return PurePosixPath(*Path(rel).parts).as_posix()


def artifact_path(path: str | Path) -> str:
    """A file that stands for the checkpoint `path`, for viewers that attach results to files
    (code scanning, pull-request annotations): a bundle prefix is not a file, so its `.index`
    is used, and a SavedModel folder is represented by its `saved_model.pb`."""
    p = Path(path)
    if p.is_file():
        return str(path)
    if p.is_dir():
        for name in ("saved_model.pb", "saved_model.pbtxt", ".index"):
            if (p / name).is_file():
                return str(p / name)
        return str(path)
    index = p.with_name(p.name + ".index")
    return str(index) if index.is_file() else str(path)


def fingerprint(rule: str, path: str, group: str) -> str:
    """Stable identity of a finding: rule + relative posix path + BN group, never offsets or
    messages (SARIF's partialFingerprints, GitLab Code Quality's fingerprint)."""
    import hashlib  # only machine-readable reports fingerprint findings

    return hashlib.sha256(f"{rule}\0{path}\0{group}".encode()).hexdigest()


# --------------------------------------------------------------------------- plain data
# The `--format json` document as Python data (`AuditReport.to_dict()`, json_report.py).

VERSION = 1


def file_to_dict(file: FileReport) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": file.path,
        "format": file.format,
        "groups": [
            {"name": g.name, "status": g.status, "found_by": g.found_by} for g in file.groups
        ],
        "findings": [
            {
                "rule": f.rule,
                "severity": f.severity.value,
                "group": f.group,
                "message": f.message,
                "details": dict(f.details),
            }
            for f in file.findings
        ],
    }
    if file.error is not None:
        out["error"] = file.error
    if file.skipped is not None:
        out["skipped"] = file.skipped
    if file.notes:
        out["notes"] = list(file.notes)
    if file.data is not None:
        out["data"] = dict(file.data)
    if file.ledger is not None:
        out["ledger"] = {"counts": dict(file.ledger["counts"]),
                         "unexplained": [dict(u) for u in file.ledger["unexplained"]]}
    return out


def as_dict(report: AuditReport) -> dict[str, Any]:
    """The report as plain data (numbers in details may still be NumPy scalars)."""
    out: dict[str, Any] = {
        "version": VERSION,
        "files": [file_to_dict(f) for f in report.files],
        "summary": report.summary(),
    }
    if report.baseline is not None:
        out["baseline"] = {
            "path": report.baseline.path,
            "suppressed": report.baseline.suppressed,
            "fixed": [
                {"rule": e.rule, "path": e.path, "group": e.group} for e in report.baseline.fixed
            ],
        }
    return json.loads(json.dumps(out, default=jsonable))  # plain Python types throughout


def jsonable(value: Any) -> Any:
    # numpy scalars and arrays in finding details
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

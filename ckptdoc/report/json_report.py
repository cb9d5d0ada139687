"""`--format json`: one stable, versioned object."""

from __future__ import annotations

import json
from typing import Any

from ckptdoc.report.model import AuditReport, FileReport

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


def render(report: AuditReport) -> str:
    return json.dumps(as_dict(report), indent=2, default=_jsonable)


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
    return json.loads(json.dumps(out, default=_jsonable))  # plain Python types throughout


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays in finding details
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

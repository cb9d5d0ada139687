"""`--format gitlab`: GitLab Code Quality (a JSON array of issues), for merge-request widgets:
`artifacts: reports: codequality: ckptdoc-codequality.json`.

Each finding is an issue with `description`, `check_name` (the rule), `fingerprint` (rule +
path + layer, as SARIF's), `severity` and `location.path` (+ line 1: a checkpoint has no
lines). A file that could not be read is an issue too, so the widget shows it. Strings are
JSON-escaped by the encoder; names stay whole.
"""

from __future__ import annotations

import json
from typing import Any

from ckptdoc.report.model import (
    AuditReport,
    RenderOptions,
    artifact_path,
    fingerprint,
    relative_posix,
)
from ckptdoc.rules import Severity

#: GitLab's levels: info, minor, major, critical, blocker.
SEVERITY = {Severity.INFO: "info", Severity.WARNING: "minor", Severity.ERROR: "major"}


def _issue(check: str, description: str, path: str, group: str, severity: str) -> dict[str, Any]:
    return {
        "type": "issue",
        "description": description,
        "check_name": check,
        "fingerprint": fingerprint(check, path, group),
        "severity": severity,
        "categories": ["Bug Risk"],
        "location": {"path": path, "lines": {"begin": 1}},
    }


def to_list(report: AuditReport, options: RenderOptions | None = None) -> list[dict[str, Any]]:
    options = options or RenderOptions()
    out = []
    for file in report.files:
        path = relative_posix(artifact_path(file.path), options.root)
        if file.error is not None:
            out.append(_issue("read-error", f"could not be read: {file.error}", path, "",
                              "critical"))
        out.extend(_issue(f.rule, f"{f.rule} {f.group}: {f.message}", path, f.group,
                          SEVERITY[f.severity]) for f in file.findings)
    return out


def render(report: AuditReport, options: RenderOptions | None = None) -> str:
    return json.dumps(to_list(report, options), indent=2, default=str) + "\n"

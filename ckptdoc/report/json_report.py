"""`--format json`: one stable, versioned object (its plain data is `model.as_dict`, which
`AuditReport.to_dict()` returns too)."""

from __future__ import annotations

import json

from ckptdoc.report.model import VERSION, AuditReport, as_dict, file_to_dict, jsonable

__all__ = ["VERSION", "as_dict", "file_to_dict", "render"]


def render(report: AuditReport) -> str:
    return json.dumps(as_dict(report), indent=2, default=jsonable)

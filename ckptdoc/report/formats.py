"""Every report format by name, rendered to a string, and written to a file atomically."""

from __future__ import annotations

import importlib
import io
from enum import Enum
from pathlib import Path

from rich.console import Console

from ckptdoc.report import text
from ckptdoc.report.model import AuditReport, RenderOptions


class ReportFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    junit = "junit"
    github = "github"
    markdown = "markdown"
    gitlab = "gitlab"


def _text(report: AuditReport, options: RenderOptions) -> str:
    buf = io.StringIO()
    text.render(report, Console(file=buf, width=120, no_color=True, highlight=False))
    return buf.getvalue()


def _json(report: AuditReport, options: RenderOptions) -> str:
    from ckptdoc.report import json_report  # json loads only for this format

    return json_report.render(report) + "\n"


def render(
    fmt: ReportFormat | str, report: AuditReport, options: RenderOptions | None = None
) -> str:
    fmt, options = ReportFormat(fmt), options or RenderOptions()
    if fmt == ReportFormat.text:
        return _text(report, options)
    if fmt == ReportFormat.json:
        return _json(report, options)
    # The CI formats load on demand (xml, hashlib, ...): the common run stays quick to start.
    module = importlib.import_module(f"ckptdoc.report.{fmt.value}")
    return str(module.render(report, options))


def write_atomic(path: str | Path, content: str) -> None:
    """Write `content` to `path` via a temporary file and a rename: a CI step reading the
    report never sees half of it, and a failed run leaves the previous report intact."""
    from ckptdoc.atomic import atomic_path

    path = Path(path)
    if path.exists() and not path.is_file():  # /dev/stdout, a pipe: nothing to replace
        with path.open("w", encoding="utf-8") as f:
            f.write(content)
        return
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(content, encoding="utf-8")

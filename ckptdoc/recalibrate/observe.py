"""`ckptdoc audit MODEL --data DATA`: each file's stored BN statistics against the data's,
through the recalibration engine (the same targets, data sources and forward pass; inference
mode, nothing written). Adds BN012 findings and a `data` section to the audit's file reports.

Must not know: how reports are rendered, exit codes, the CLI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.options import Options
from ckptdoc.report.model import FileReport
from ckptdoc.rules import RULES, Finding, RuleSelection, Severity
from ckptdoc.rules.data import DataComparison, data_findings

Run = Callable[[list[Path | str], Any, int], list[FileReport]]


def compare_file(path: str | Path, options: Options,
                 progress: Callable[[int], None] | None = None) -> DataComparison:
    """The comparison for one model file (CheckpointError / RecalibrationError when the
    model cannot be loaded or run on the data)."""
    from ckptdoc.recalibrate.quiet import prepare_framework
    from ckptdoc.recalibrate.targets import open_target

    target = open_target(path)
    prepare_framework(target.kind)
    return target.observe(options, progress)


def data_options(data: Any, *, model: str | None = None, samples: int | None = None,
                 batch_size: int | None = None) -> Options:
    """The Options of a data check (`audit --data`, `ckptdoc.audit(data=...)`): unset values
    keep recalibrate's defaults. RecalibrationError for invalid ones."""
    extra: dict[str, Any] = {}
    if samples is not None:
        extra["samples"] = samples
    if batch_size is not None:
        extra["batch_size"] = batch_size
    return Options(data=data, model_spec=model, **extra)


def with_data(run: Run, options: Options) -> Run:
    """`run` (the audit of the files), then each readable file compared with the data."""

    def run_with_data(files: list[Path | str], selection: Any, jobs: int) -> list[FileReport]:
        reports = run(files, selection, jobs)
        return [_add(r, options, selection(r.path) if callable(selection) else selection)
                for r in reports]

    return run_with_data


def _add(report: FileReport, options: Options, selection: RuleSelection | None) -> FileReport:
    if report.error is not None or report.skipped is not None:
        return report
    selection = selection or RuleSelection()
    rule = RULES["BN012"]
    if rule not in selection.active():
        return report
    severity = selection.severity(rule)
    try:
        comparison = compare_file(report.path, options)
    except (CheckpointError, RecalibrationError, ImportError, ValueError) as exc:
        # Asked to compare and could not: a finding, never a silent pass.
        finding = Finding("BN012", Severity.ERROR, "(data)",
                          f"could not compare the statistics with the data: {exc}",
                          {"cannot_verify": True}, "not compared")
        return dataclasses.replace(report, findings=(*report.findings, finding))
    broken = frozenset(f.group for f in report.findings if f.severity is Severity.ERROR)
    findings: Sequence[Finding] = data_findings(comparison, severity, broken)
    flagged = {f.group for f in findings}
    groups = tuple(dataclasses.replace(g, status="BN012")
                   if g.name in flagged and g.status == "ok" else g for g in report.groups)
    return dataclasses.replace(report, groups=groups, findings=(*report.findings, *findings),
                               notes=(*report.notes, *comparison.notes),
                               data=comparison.as_dict())

"""`ckptdoc audit PATH...`: flag broken BN statistics; exit codes for CI."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ckptdoc.audit import audit_file, expand_paths
from ckptdoc.commands.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, stderr, stdout, usage_error
from ckptdoc.report import json_report, text
from ckptdoc.report.model import AuditReport
from ckptdoc.rules import RuleSelection, Severity, Tolerances, unknown_codes


class AuditFormat(str, Enum):
    text = "text"
    json = "json"


def _codes(values: list[str] | None) -> list[str]:
    """`--select BN001,BN002 --select BN005` -> ["BN001", "BN002", "BN005"]."""
    return [c.strip().upper() for v in values or [] for c in v.split(",") if c.strip()]


def audit(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Checkpoint prefixes, files, or directories (searched recursively)."),
    ],
    output_format: Annotated[
        AuditFormat, typer.Option("--format", "-f", help="Report format.")
    ] = AuditFormat.text,
    fail_on: Annotated[
        Severity,
        typer.Option(help="Exit 1 when a finding is at least this severe."),
    ] = Severity.ERROR,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even with findings or unreadable files.")
    ] = False,
    select: Annotated[
        list[str] | None, typer.Option(help="Only these rule codes (comma-separated, prefixes ok).")
    ] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="Skip these rule codes.")] = None,
    barely_moved: Annotated[
        float, typer.Option(help="BN005: max |mean| and |variance - 1| that count as barely moved.")
    ] = Tolerances.barely_moved,
    dead_variance: Annotated[
        float, typer.Option(help="BN006: a variance at or below this is a dead channel.")
    ] = Tolerances.dead_variance,
) -> None:
    """Audit checkpoints for broken batch-norm statistics.

    Exit codes: **0** no finding at or above `--fail-on`; **1** such findings; **2** usage
    error or a file that could not be read (reported per file, the others still audited).
    """
    selected, ignored = _codes(select), _codes(ignore)
    bad = unknown_codes(selected + ignored)
    if bad:
        raise usage_error(f"unknown rule code(s): {', '.join(bad)} (see `ckptdoc rule`)")
    selection = RuleSelection(
        frozenset(selected),
        frozenset(ignored),
        tolerances=Tolerances(barely_moved=barely_moved, dead_variance=dead_variance),
    )
    files = expand_paths(paths)
    if not files:
        raise usage_error(f"no checkpoints found under {', '.join(map(str, paths))}")
    report = AuditReport(tuple(audit_file(f, selection) for f in files))
    if output_format == AuditFormat.json:
        stdout.out(json_report.render(report), highlight=False)
    else:
        text.render(report, stdout)
    raise typer.Exit(exit_code(report, fail_on, exit_zero))


def exit_code(report: AuditReport, fail_on: Severity, exit_zero: bool) -> int:
    if exit_zero:
        return EXIT_OK
    if report.unreadable:
        return EXIT_USAGE
    return EXIT_FINDINGS if report.worst_at_least(fail_on) else EXIT_OK


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)


__all__ = ["audit", "exit_code", "register", "stderr"]

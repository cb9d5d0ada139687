"""Human output: a Rich table per file, findings with their fix, then a summary line."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ckptdoc.report.model import AuditReport, FileReport
from ckptdoc.rules import RULES, Severity

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def render(report: AuditReport, console: Console) -> None:
    for file in report.files:
        _render_file(file, console)
    console.print(summary_line(report))


def _render_file(file: FileReport, console: Console) -> None:
    if file.error is not None:
        console.print(Text(f"✗ {file.error}", style="bold red"))
        console.print()
        return
    title = f"{file.path} [dim]({file.format}, {len(file.groups)} BN layers)[/dim]"
    for note in file.notes:
        console.print(Text(f"note: {note}", style="dim"))
    if not file.groups:
        console.print(f"{title}: no batch-norm layers found")
        console.print()
        return
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("BN layer", overflow="fold")
    table.add_column("channels", justify="right")
    table.add_column("members")
    table.add_column("status")
    table.add_column("why", overflow="fold")
    by_group: dict[str, list] = {}
    for finding in file.findings:
        by_group.setdefault(finding.group, []).append(finding)
    for group in file.groups:
        found = by_group.get(group.name, [])
        present = ", ".join(_short(r) for r, k in group.members.items() if k) or "-"
        status = Text("ok", style="green")
        if found:
            worst = next(f for f in found if f.rule == group.status)
            status = Text(group.status, style=_STYLE[worst.severity])
        why = "\n".join(f"{f.rule}: {f.message}" for f in found)
        table.add_row(group.name, str(group.channels or "?"), present, status, why)
    console.print(table)
    for code in sorted({f.rule for f in file.findings}):
        rule = RULES[code]
        if rule.severity == Severity.INFO:
            continue
        console.print(f"  [bold]{code}[/bold] {rule.title}. {_fix_hint(code)}")
    console.print()


def _short(role: str) -> str:
    return {"moving_mean": "mean", "moving_variance": "var"}.get(role, role)


def _fix_hint(code: str) -> str:
    hints = {
        "BN001": "Save all variables (not only trainable ones), or run `ckptdoc recalibrate`.",
        "BN002": "Make the train op depend on UPDATE_OPS (TF1) or call the model with "
        "training=True (TF2), then retrain, or run `ckptdoc recalibrate`.",
        "BN003": "Restore a checkpoint from before training diverged.",
        "BN004": "A variance cannot be negative: check conversion or custom update code.",
        "BN005": "Lower the BN decay / momentum or run `ckptdoc recalibrate`.",
        "BN007": "Check the code that wrote or converted this checkpoint.",
    }
    return hints.get(code, "") + f" Details: `ckptdoc rule {code}`."


def summary_line(report: AuditReport) -> Text:
    s = report.summary()
    parts = [
        f"{s['files']} file{'s' * (s['files'] != 1)}",
        f"{s['groups']} BN layers",
        f"{s['error']} errors",
        f"{s['warning']} warnings",
        f"{s['info']} info",
    ]
    if s["unreadable"]:
        parts.append(f"{s['unreadable']} unreadable")
    style = "bold red" if s["error"] or s["unreadable"] else "yellow" if s["warning"] else "green"
    return Text("Summary: " + ", ".join(parts), style=style)

"""Human output: a Rich table per file (each BN layer, its status and the numbers that tripped
a rule), then what each finding means and how to fix it, then a summary line."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ckptdoc.report.model import AuditReport, FileReport
from ckptdoc.rules import RULES, Finding, Severity

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_SHORT_ROLE = {"moving_mean": "mean", "moving_variance": "var"}

# One line on the fix, per rule; `ckptdoc rule CODE` has the whole story.
FIX_HINTS = {
    "BN001": "Save all variables, not only trainable ones; or run `ckptdoc recalibrate`.",
    "BN002": "TF1: make the train op depend on UPDATE_OPS; TF2: call the model with "
    "training=True. Then retrain, or run `ckptdoc recalibrate`, which checks on held-out "
    "data that the model really was broken.",
    "BN003": "Restore a checkpoint from before training diverged.",
    "BN004": "A variance cannot be negative: check conversion or custom update code.",
    "BN005": "Lower the BN decay / momentum, train longer, or run `ckptdoc recalibrate`.",
    "BN006": "Usually harmless: dead units upstream.",
    "BN007": "Check the code that wrote or converted this checkpoint.",
    "CK001": "Load this file only from a source you trust.",
}


def render(report: AuditReport, console: Console) -> None:
    for file in report.files:
        _render_file(file, console)
    console.print(summary_line(report))


def _render_file(file: FileReport, console: Console) -> None:
    if file.error is not None:
        console.print(Text(f"✗ {file.error}", style="bold red"))
        console.print()
        return
    for note in file.notes:
        console.print(Text(f"note: {note}", style="dim"))
    heading = f"{escape(file.path)} [dim]({file.format}, {len(file.groups)} BN layers)[/dim]"
    if file.groups:
        console.print(_group_table(file, heading))
    else:
        console.print(f"{heading}: no batch-norm layers found")
    _render_findings(file.findings, console)
    console.print()


def _group_table(file: FileReport, heading: str) -> Table:
    by_group: dict[str, list[Finding]] = defaultdict(list)
    for finding in file.findings:
        by_group[finding.group].append(finding)
    table = Table(title=heading, title_justify="left")
    longest = max((len(g.name) for g in file.groups), default=8)
    table.add_column("BN layer", overflow="fold", min_width=min(longest, 36))
    table.add_column("ch", justify="right")
    table.add_column("members")
    table.add_column("status")
    table.add_column("evidence", overflow="fold")
    for group in file.groups:
        found = by_group.get(group.name, [])
        present = " ".join(_SHORT_ROLE.get(r, r) for r, k in group.members.items() if k) or "-"
        status = Text("ok", style="green")
        worst = next((f for f in found if f.rule == group.status), None)
        if worst is not None:
            status = Text(group.status, style=_STYLE[worst.severity])
        evidence = "\n".join(
            f"{f.rule}: {f.evidence or f.message}" if len(found) > 1 else f.evidence or f.message
            for f in found
        )
        table.add_row(Text(group.name), str(group.channels or "?"), present, status, Text(evidence))
    return table


def _render_findings(findings: tuple[Finding, ...], console: Console) -> None:
    """Each rule once, with its cause and fix; layers sharing a message are listed together."""
    by_rule: dict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        by_rule[finding.rule].append(finding)
    for code, found in sorted(by_rule.items(), key=lambda kv: (-kv[1][0].severity.rank, kv[0])):
        severity = found[0].severity
        rule = RULES.get(code)
        title = rule.title if rule else ""
        head = Text.assemble(
            ("  " + code, _STYLE[severity]), f" {severity.value}: {title} ({len(found)}x). "
        )
        head.append(f"{FIX_HINTS.get(code, '')} See `ckptdoc rule {code}`.", style="dim")
        console.print(head)
        messages: dict[str, list[str]] = defaultdict(list)
        for f in found:
            cause = f.message[len(f.evidence) :].lstrip(": ") if f.evidence else f.message
            messages[cause].append(f.group)
        for cause, groups in messages.items():
            if cause:
                console.print(Text(f"    {_names(groups)}: {cause}"), soft_wrap=False)


def _names(groups: list[str]) -> str:
    if len(groups) <= 3:
        return ", ".join(groups)
    return f"{', '.join(groups[:2])} and {len(groups) - 2} more"


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

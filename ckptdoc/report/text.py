"""Human output, in three levels of detail (`Detail`):
- `concise` (default): a file with findings gets a table of the layers with findings, then
  what each finding means and how to fix it; a clean file gets one line;
- `full` (`--verbose`): every BN layer of every file in the table, `ok` ones included;
- `quiet` (`--quiet`): unreadable files and the summary line only.
A summary line ends every report. Names, paths and messages come from strangers' files and are
shown through `printable` (no escape sequence reaches the terminal)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ckptdoc.report.model import AuditReport, FileReport
from ckptdoc.report.safe import printable
from ckptdoc.rules import RULES, Finding, Severity


class Detail(str, Enum):
    quiet = "quiet"
    concise = "concise"
    full = "full"


_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_SHORT_ROLE = {"moving_mean": "mean", "moving_variance": "var"}

def render(report: AuditReport, console: Console, detail: Detail = Detail.concise) -> None:
    for file in report.files:
        if detail is Detail.quiet:
            if file.error is not None:
                console.print(Text(f"{_mark(console, False)} {printable(file.error)}",
                                   style="bold red"), soft_wrap=True)
            continue
        _render_file(file, console, detail)
    console.print(summary_line(report), soft_wrap=True)


def _mark(console: Console, ok: bool) -> str:
    """✓ / ✗, or their ASCII stand-ins where the output cannot encode them."""
    if (console.encoding or "").lower().replace("-", "").startswith("utf"):
        return "✓" if ok else "✗"
    return "ok" if ok else "x"


def _render_file(file: FileReport, console: Console, detail: Detail) -> None:
    if file.skipped is not None:
        if detail is Detail.full:  # -v lists what was skipped and why
            console.print(Text(f"- {printable(file.path)}: skipped, {printable(file.skipped)}",
                               style="dim"), soft_wrap=True)
        return
    if file.error is not None:
        console.print(Text(f"{_mark(console, False)} {printable(file.error)}", style="bold red"),
                      soft_wrap=True)
        return
    for note in file.notes:
        console.print(Text(f"note: {printable(note)}", style="dim"), soft_wrap=True)
    layers = f"{len(file.groups)} BN layer{'s' * (len(file.groups) != 1)}"
    heading = Text.assemble(printable(file.path), (f" ({file.format}, {layers})", "dim"))
    if not file.findings and detail is Detail.concise:
        line = Text.assemble((_mark(console, True) + " ", "green"), heading)
        if not file.groups:
            line.append(": no batch-norm layers found", style="dim")
        console.print(line, soft_wrap=True)
        return
    if file.groups or file.findings:
        table = _group_table(file, detail)
        console.print(heading, soft_wrap=True)
        if table.row_count:
            console.print(table)
        hidden = len(file.groups) - sum(1 for g in file.groups if g.status != "ok")
        if detail is Detail.concise and hidden:
            console.print(Text(f"  {hidden} other BN layer{'s' * (hidden != 1)} ok", style="dim"))
    else:
        console.print(heading + Text(": no batch-norm layers found"), soft_wrap=True)
    if file.data is not None and detail is Detail.full:
        console.print(_data_table(file.data))
    _render_findings(file.findings, console, file.path)
    console.print()


def _data_table(data: Mapping[str, Any]) -> Table:
    """`audit --data -v`: each layer's stored statistics against the data's."""
    table = Table(title=Text(f"against {printable(str(data.get('data', '')))} "
                             f"({data.get('samples', 0)} samples)", style="dim"),
                  title_justify="left")
    for name, justify in (("BN layer", "left"), ("mean off (sd)", "right"),
                          ("± sampling", "right"), ("variance ×", "right"), ("verdict", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    style = {"agrees": "green", "drift": "yellow", "mismatch": "bold red"}
    for row in data.get("layers", []):
        verdict = str(row["verdict"])
        table.add_row(Text(printable(str(row["layer"]))), f"{row['abs_mean_shift_sd']:.2g}",
                      f"{row['mean_shift_error']:.1g}", f"{row['variance_ratio']:.3g}",
                      Text(verdict, style=style.get(verdict, "")))
    return table


def _group_table(file: FileReport, detail: Detail) -> Table:
    by_group: dict[str, list[Finding]] = defaultdict(list)
    for finding in file.findings:
        by_group[finding.group].append(finding)
    table = Table()
    rows = [g for g in file.groups if detail is Detail.full or by_group.get(g.name)]
    longest = max((len(g.name) for g in rows), default=8)
    table.add_column("BN layer", overflow="fold", min_width=min(longest, 36))
    table.add_column("ch", justify="right")
    table.add_column("members")
    table.add_column("status")
    table.add_column("evidence", overflow="fold")
    for group in rows:
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
        table.add_row(Text(printable(group.name)), str(group.channels or "?"), present, status,
                      Text(printable(evidence)))
    return table


def _render_findings(findings: tuple[Finding, ...], console: Console, path: str = "") -> None:
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
        fix = f"{rule.fix} " if rule and rule.fix else ""
        head.append(f"{fix}See `ckptdoc rule {code}`.", style="dim")
        console.print(head, soft_wrap=True)
        messages: dict[str, list[str]] = defaultdict(list)
        for f in found:
            # "evidence: cause" messages show their cause; any other shows whole.
            cause = (f.message[len(f.evidence) :].removeprefix(":").strip()
                     if f.evidence and f.message.startswith(f.evidence) else f.message)
            messages[cause].append(f.group)
        for cause, groups in messages.items():
            if cause:
                console.print(Text(printable(f"    {_names(groups)}: {cause}")), soft_wrap=True)
        if code == "BN002" and path and not all("proof" in f.details for f in found):
            # A model trained with BN in inference mode is right as it is: say how to accept
            # it (not where the graph proves the updates never ran: that is the bug).
            entry = f'per-file-ignores = {{ "{Path(path).as_posix()}" = ["BN002"] }}'
            console.print(Text(printable(
                f"    if it works as it is (trained with BN in inference mode): {entry} in "
                f"[tool.ckptdoc], or `ckptdoc audit {path} --write-baseline "
                "ckptdoc-baseline.json`"), style="dim"), soft_wrap=True)


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
    if s.get("skipped"):
        parts.append(f"{s['skipped']} skipped, not models (-v lists them)")
    style = "bold red" if s["error"] or s["unreadable"] else "yellow" if s["warning"] else "green"
    return Text("Summary: " + ", ".join(parts), style=style)

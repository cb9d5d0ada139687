"""`--format markdown`: a summary for `$GITHUB_STEP_SUMMARY`, a merge-request comment or a
wiki page. Plain GitHub-flavoured Markdown: a headline, a table per file, the findings."""

from __future__ import annotations

import re

from ckptdoc.report.model import AuditReport, FileReport, RenderOptions, relative_posix
from ckptdoc.report.safe import html_text, printable
from ckptdoc.rules import RULES, Severity

# GitHub caps a step summary at 1 MiB; a long table is cut well before that.
MAX_FINDING_ROWS = 500

_FAIL, _WARN, _OK = "❌", "⚠️", "✅"


# Backslash-escaped in table text: every character that can open a link, image, code span,
# emphasis or HTML, and the `:` / `.` of bare URLs, which GitHub links without brackets (an
# escape splits the text, so no URL is seen).
_MARKDOWN_ACTIVE = re.compile(r"([\\`*_\[\]()!~|:.#])")


def _cell(text: str) -> str:
    """Untrusted text in a table cell: printable, no HTML, no Markdown, no column breaks."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", html_text(text.replace("\n", " ")))


def _code(text: str) -> str:
    """A name as a code span, which renders no HTML, link or emphasis: fenced by more
    backticks than it holds, printable, on one line, `|` escaped for the table around it."""
    text = printable(text.replace("\n", " ")).replace("|", "\\|")
    longest = max(map(len, re.findall("`+", text)), default=0)
    pad = " " if longest else ""
    return f"{'`' * (longest + 1)}{pad}{text}{pad}{'`' * (longest + 1)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _file_icon(file: FileReport, fail_on: Severity) -> str:
    if file.error is not None or any(f.severity.rank >= fail_on.rank for f in file.findings):
        return _FAIL
    return _WARN if file.findings else _OK


def _counts(file: FileReport) -> str:
    by_rule: dict[str, int] = {}
    for f in file.findings:
        by_rule[f.rule] = by_rule.get(f.rule, 0) + 1
    return ", ".join(f"{n} × {code}" for code, n in sorted(by_rule.items())) or "–"


def render(report: AuditReport, options: RenderOptions | None = None) -> str:
    options = options or RenderOptions()
    s = report.summary()
    failed = bool(report.unreadable) or report.worst_at_least(options.fail_on)
    out = [f"## ckptdoc audit: {_FAIL + ' failed' if failed else _OK + ' passed'}", ""]
    parts = [
        _plural(s["files"], "file"),
        _plural(s["groups"], "BN layer"),
    ]
    counts = [
        f"**{_plural(s['error'], 'error')}**" if s["error"] else _plural(0, "error"),
        _plural(s["warning"], "warning"),
        f"{s['info']} info",
    ]
    if s["unreadable"]:
        counts.append(f"**{s['unreadable']} unreadable**")
    out += [f"{', '.join(parts)}: {', '.join(counts)} (fails on {options.fail_on.value}).", ""]

    if report.files:
        out += ["| | File | Format | BN layers | Findings |", "|---|---|---|---:|---|"]
        for file in report.files:
            path = _code(relative_posix(file.path, options.root))
            icon = _file_icon(file, options.fail_on)
            if file.error is not None:
                out.append(f"| {icon} | {path} | unreadable | | |")
            else:
                fmt = _cell(file.format or "?")
                out.append(f"| {icon} | {path} | {fmt} | {len(file.groups)} | {_counts(file)} |")
        out.append("")

    findings = [(file, f) for file in report.files for f in file.findings]
    if findings:
        out += ["### Findings", "", "| File | BN layer | Rule | Severity | Message |"]
        out.append("|---|---|---|---|---|")
        for file, f in findings[:MAX_FINDING_ROWS]:
            out.append(
                f"| {_code(relative_posix(file.path, options.root))} | {_code(f.group)} | "
                f"{f.rule} | {f.severity.value} | {_cell(f.message)} |"
            )
        if len(findings) > MAX_FINDING_ROWS:
            out.append("")
            out.append(
                f"… and {len(findings) - MAX_FINDING_ROWS} more: see the full report "
                "(`--format json` or `--format sarif`)."
            )
        out.append("")

    if report.unreadable:
        out += ["### Could not read", ""]
        for file in report.unreadable:
            path = _code(relative_posix(file.path, options.root))
            out.append(f"- {path}: {_cell(file.error or '')}")
        out.append("")

    if report.baseline is not None:
        b = report.baseline
        out += [
            "### Baseline",
            "",
            f"{_code(b.path)}: {_plural(b.suppressed, 'known finding')} not reported.",
        ]
        if b.fixed:
            n = len(b.fixed)
            gone = "entry no longer occurs" if n == 1 else "entries no longer occur"
            out.append(f"{n} baseline {gone}; refresh it with `--write-baseline`:")
            out.append("")
            out += [f"- {e.rule} {_code(e.path)} {_code(e.group)}" for e in b.fixed]
        out.append("")

    codes = sorted({f.rule for _, f in findings})
    if codes:
        out += ["### Rules", ""]
        for code in codes:
            title = RULES[code].title if code in RULES else ""
            out.append(f"- **{code}** {title}: `ckptdoc rule {code}` explains the cause and fix.")
        out.append("")
    return "\n".join(out)

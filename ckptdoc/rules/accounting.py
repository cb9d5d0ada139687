"""BN010: the file holds tensors that look like BN statistics and belong to no layer the audit
checked. Knows the ledger's verdict, not formats. A file-level rule: `ledger_findings`
produces its findings, the group-level check is a no-op."""

from __future__ import annotations

from typing import Any

from ckptdoc.ledger import Ledger
from ckptdoc.rules.base import Finding, Severity
from ckptdoc.rules.checks import rule

_SHOWN = 5


@rule(
    "BN010",
    Severity.WARNING,
    "cannot verify: unexplained statistic-like tensors",
    """
Every tensor of the file is accounted for: a member of a BN layer, or a known kind of
non-BN tensor (weights, optimizer slots, moving-average state, step counters). These tensors
are none of those and look like batch-norm statistics: 1-D float vectors named like a mean
or a variance, or sitting beside a BN layer's members with its channel count. They were not
audited, so the audit cannot say the file is clean: a BN layer may be stored under names no
convention uses, or a graph / config beside the file may describe another model.

Fix: check what these tensors are. If they are BN statistics, pass the graph that uses them
(`model.ckpt.meta`) or rename them to a convention; if they are not (a custom layer's own
state), ignore BN010 for this file (`per-file-ignores`) once you have looked. `--format json`
lists every tensor under `ledger.unexplained`.
""",
    fix="Check what the listed tensors are; `--format json` lists them all.",
    scope="file",
)
def _file_level(values: Any, tol: Any) -> None:
    """Group-level no-op: BN010 is found by `ledger_findings` over the whole file."""
    return None


def ledger_findings(ledger: Ledger, severity: Severity = Severity.WARNING) -> list[Finding]:
    """One BN010 finding for a file with unexplained statistic-like tensors."""
    if not ledger.suspects:
        return []
    shown = ", ".join(f"`{key}` ({why})" for key, why in ledger.suspects[:_SHOWN])
    more = len(ledger.suspects) - _SHOWN
    tail = f" and {more} more" if more > 0 else ""
    return [Finding(
        "BN010", severity, "(file)",
        f"{len(ledger.suspects)} tensor(s) look like BN statistics but belong to no audited "
        f"layer: {shown}{tail}; the file cannot be verified clean",
        {"unexplained": [key for key, _ in ledger.suspects]},
        f"{len(ledger.suspects)} unexplained statistic-like tensor(s)",
    )]

"""Rules that flag broken BN statistics (codes BN001...). Knows statistics, not formats."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ckptdoc.groups import BNGroup
from ckptdoc.rules.accounting import ledger_findings  # registers BN010 (file-level)
from ckptdoc.rules.base import Finding, GroupValues, Rule, Severity, Tolerances
from ckptdoc.rules.checks import RULES
from ckptdoc.rules.code import code_findings  # registers CK001 (file-level)
from ckptdoc.rules.data import data_findings  # registers BN012 (audit --data)
from ckptdoc.rules.model import untrained_findings  # registers BN008, BN009 (model-level)

# Code order whatever the order modules registered in: listings, SARIF rule tables, ties.
_registered = sorted(RULES.items())
RULES.clear()
RULES.update(_registered)

__all__ = [
    "RULES",
    "Finding",
    "Rule",
    "RuleSelection",
    "Severity",
    "Tolerances",
    "check_group",
    "code_findings",
    "data_findings",
    "ledger_findings",
    "model_findings",
    "unknown_codes",
]


@dataclass(frozen=True)
class RuleSelection:
    """Which rules run and how serious each is: `select` / `ignore` / per-rule severity."""

    select: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    severities: Mapping[str, Severity] = field(default_factory=dict)
    tolerances: Tolerances = field(default_factory=Tolerances)

    def active(self) -> list[Rule]:
        return [
            r
            for code, r in RULES.items()
            if (not self.select or _matches(code, self.select)) and not _matches(code, self.ignore)
        ]

    def severity(self, rule: Rule) -> Severity:
        return self.severities.get(rule.code, rule.severity)


def _matches(code: str, patterns: Iterable[str]) -> bool:
    """`BN` selects every rule, `BN00` the first nine, like ruff's prefixes."""
    return any(code.startswith(p.upper()) for p in patterns)


def unknown_codes(codes: Iterable[str]) -> list[str]:
    """Codes (or prefixes) that match no rule: a usage error."""
    return [c for c in codes if not any(code.startswith(c.upper()) for code in RULES)]


def check_group(
    group: BNGroup, read: Callable[[str], np.ndarray], selection: RuleSelection
) -> list[Finding]:
    """Run every active rule on one group; tensors are read once, lazily."""
    values = GroupValues(group, read)
    findings = []
    for rule in selection.active():
        if rule.scope != "layer":
            continue
        result = rule.check(values, selection.tolerances)
        if result is None:
            continue
        severity = selection.severity(rule)
        if result.at_most is not None and result.at_most.rank < severity.rank:
            severity = result.at_most
        findings.append(
            Finding(
                rule.code,
                severity,
                group.name,
                result.message,
                dict(result.details),
                result.evidence,
            )
        )
    return findings


def model_findings(
    groups: list[BNGroup], read: Callable[[str], np.ndarray], selection: RuleSelection
) -> list[Finding]:
    """Findings about the model as a whole (BN008 untrained, BN009 unused layers)."""
    active = {r.code: r for r in selection.active()}
    return [
        Finding(f.rule, selection.severity(active[f.rule]), f.group, f.message,
                dict(f.details), f.evidence)
        for f in untrained_findings(groups, read)
        if f.rule in active
    ]

"""Rules that flag broken BN statistics (codes BN001...). Knows statistics, not formats."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ckptdoc.groups import BNGroup
from ckptdoc.rules.base import Finding, GroupValues, Rule, Severity, Tolerances
from ckptdoc.rules.checks import RULES
from ckptdoc.rules.code import code_findings  # registers CK001 (file-level)

__all__ = [
    "RULES",
    "Finding",
    "Rule",
    "RuleSelection",
    "Severity",
    "Tolerances",
    "check_group",
    "code_findings",
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
        result = rule.check(values, selection.tolerances)
        if result is None:
            continue
        findings.append(
            Finding(
                rule.code,
                selection.severity(rule),
                group.name,
                result.message,
                dict(result.details),
                result.evidence,
            )
        )
    return findings

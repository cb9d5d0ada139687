"""The audit's results as plain values: what every output format renders."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptdoc.rules import RULES, Finding, Severity


@dataclass(frozen=True)
class GroupResult:
    """One BN group of a file: its name, which members exist, and its worst finding."""

    name: str
    status: str  # "ok" or the code of the worst finding
    channels: int | None = None
    members: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class FileReport:
    """Everything the audit says about one path. `error` is set when it could not be read."""

    path: str
    format: str | None
    groups: tuple[GroupResult, ...] = ()
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditReport:
    files: tuple[FileReport, ...]

    @property
    def findings(self) -> list[Finding]:
        return [f for file in self.files for f in file.findings]

    def count(self, severity: Severity) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def unreadable(self) -> list[FileReport]:
        return [f for f in self.files if f.error is not None]

    def summary(self) -> dict[str, int]:
        return {
            "files": len(self.files),
            "unreadable": len(self.unreadable),
            "groups": sum(len(f.groups) for f in self.files),
            "findings": len(self.findings),
            "error": self.count(Severity.ERROR),
            "warning": self.count(Severity.WARNING),
            "info": self.count(Severity.INFO),
        }

    def worst_at_least(self, threshold: Severity) -> bool:
        return any(f.severity.rank >= threshold.rank for f in self.findings)


def worst_code(findings: list[Finding]) -> str:
    """`ok`, or the code of the most serious finding (ties: the lowest code)."""
    if not findings:
        return "ok"
    order = list(RULES)
    worst = max(findings, key=lambda f: (f.severity.rank, -order.index(f.rule) if f.rule in order else 0))
    return worst.rule

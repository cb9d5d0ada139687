"""What a rule is, what it reports, and the options that tune it. Knows nothing about formats."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ckptdoc.groups import BNGroup


class Severity(str, Enum):
    """Ordered from least to most serious."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}


@dataclass(frozen=True)
class Finding:
    """One rule tripped on one group. `details` holds the numbers that tripped it."""

    rule: str
    severity: Severity
    group: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    #: The numbers alone, short enough for a table cell (the message adds the likely cause).
    evidence: str = ""


@dataclass(frozen=True)
class Tripped:
    """What a check returns when it fires: the numbers that tripped it, the likely cause, and
    the same numbers as data for machine-readable reports."""

    evidence: str
    cause: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    #: At most this severity, whatever the rule's: the file's evidence makes the finding a
    #: likely-but-unproven problem (BN002 on a model trained in inference mode).
    at_most: Severity | None = None

    @property
    def message(self) -> str:
        return f"{self.evidence}: {self.cause}" if self.cause else self.evidence


@dataclass(frozen=True)
class Tolerances:
    """Thresholds the rules use; all user-configurable."""

    #: BN005: stats count as "barely moved" when every |mean| and every |variance - 1| is
    #: at most this, yet they are not exactly 0 / 1.
    barely_moved: float = 0.05
    #: BN006: a channel's variance at or below this is "near zero" (a dead unit upstream).
    dead_variance: float = 1e-6
    #: BN002: gamma / beta further than this from 1 / 0 count as trained.
    trained_param: float = 0.0
    #: BN005: with a step count and a momentum in the file, fire when momentum**steps (the
    #: share of the initial value still in each moving average) is at least this.
    initial_weight: float = 0.1


class GroupValues:
    """Reads a group's tensors on demand, once each, as float64."""

    def __init__(self, group: BNGroup, read: Callable[[str], np.ndarray]) -> None:
        self.group = group
        self._read = read
        self._cache: dict[str, np.ndarray] = {}

    def get(self, role_or_extra: str) -> np.ndarray | None:
        key = self.group.members.get(role_or_extra) or self.group.extras.get(role_or_extra)
        if key is None:
            return None
        if key not in self._cache:
            self._cache[key] = np.asarray(self._read(key))
        return self._cache[key]

    def as_float(self, role_or_extra: str) -> np.ndarray | None:
        value = self.get(role_or_extra)
        if value is None or not np.issubdtype(value.dtype, np.number):
            return None
        return value.astype(np.float64, copy=False)

    def present(self) -> dict[str, np.ndarray]:
        """Every present member and extra, by local name."""
        names = [r for r, k in self.group.members.items() if k] + list(self.group.extras)
        return {n: v for n in names if (v := self.get(n)) is not None}


Check = Callable[[GroupValues, Tolerances], "Tripped | None"]


@dataclass(frozen=True)
class Rule:
    """A rule: fixed code, default severity, a one-line title, the long explanation, the
    one-line fix reports print beside it, and its scope: "layer" rules run per BN layer
    (`check`); "model" and "file" rules have their own finder over the whole file (their
    `check` is never run) and are declared here so selection, severities and docs treat
    every rule alike."""

    code: str
    severity: Severity
    title: str
    explanation: str
    check: Check
    fix: str = ""
    scope: str = "layer"

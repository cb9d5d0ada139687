"""What the pipeline asks of a target: one kind of model file that can be measured and fixed.

A target loads its input, finds the BN layers, measures them (`measure` -> `Measured`), and
hands back a `Fix`: the new statistics bound to the one routine that writes them into a copy
of the input. Policy (refuse, force, audit the copy, exit codes) is the pipeline's, not the
target's. Must not know: the CLI, reports' rendering, the held-out policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.report import RecalibrationReport
from ckptdoc.rules.data import DataComparison

Progress = Callable[[int], None]


class Fix(Protocol):
    """New statistics, ready to be written into a copy of the input."""

    def write(self, dest: Path, in_place: bool, check: Callable[[Path], None]) -> list[str]:
        """Write atomically to `dest` (or over the input, keeping a backup); `check(tmp)` runs
        on the complete temporary copy first and may raise to keep it from landing. Returns
        notes for the report."""
        ...


@dataclass(frozen=True)
class Measured:
    """A target's measurement: the report, the fix, and the values it would write, by layer
    (the pipeline refuses non-finite ones whatever the options say)."""

    report: RecalibrationReport
    fix: Fix
    new_values: Mapping[str, Sequence[np.ndarray]]
    #: False in the processes of a multi-worker run that are not the chief: they measured
    #: their share, the chief writes.
    writes: bool = True


class Target(Protocol):
    """One input file (or bundle prefix) of one kind."""

    @property
    def path(self) -> Path:
        """The input, as the reports name it (a bundle's prefix)."""
        ...

    @property
    def kind(self) -> str:
        """"keras-file", "tf1-graph" or "tf2-object"."""
        ...

    @property
    def accepts(self) -> frozenset[str]:
        """The `TARGET_OPTIONS` fields this target takes."""
        ...

    def default_output(self) -> Path:
        """Where the output goes when the user does not say."""
        ...

    def check_output(self, dest: Path, in_place: bool) -> None:
        """Refuse, before any work, an output that cannot be written (CheckpointError)."""
        ...

    def measure(self, options: Options, progress: Progress | None) -> Measured:
        """Load, find the BN layers, measure them over the data."""
        ...

    def observe(self, options: Options, progress: Progress | None) -> DataComparison:
        """Load, run inference over the data with the stored statistics, compare each BN
        layer's inputs with them (`audit --data`). Changes nothing."""
        ...


#: Options only some targets take (every other option applies to all): field -> the flag.
#: A target names the ones it takes in `accepts`; the pipeline refuses the others when set,
#: instead of a target ignoring them.
TARGET_OPTIONS = {"feeds": "--feed", "sets": "--set", "predictions": "--predictions",
                  "devices": "--devices", "mode": "--mode"}


def unaccepted(target: Target, options: Options) -> list[str]:
    """The target-specific options set away from their defaults that `target` does not take."""
    defaults = Options(data=None)
    return [flag for name, flag in TARGET_OPTIONS.items()
            if name not in target.accepts and getattr(options, name) != getattr(defaults, name)]


def non_finite(values: Mapping[str, Sequence[np.ndarray]]) -> list[str]:
    """The layers whose new values hold NaN or Inf."""
    return [name for name, arrays in values.items()
            if not all(np.all(np.isfinite(a)) for a in arrays)]

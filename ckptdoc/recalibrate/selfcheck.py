"""The self-check: are the statistics about to be written what the model's own inference sees?

After measuring, each target runs the model once more in inference mode with the new
statistics in place, over the same calibration samples, and records each BN layer's input
moments. Written statistics are right only if they are this fixed point: a layer measured
behind upstream layers that normalized with batch statistics, or behind active dropout, or in
a graph whose inference path differs from the measured one, shows a gap here. The check uses
the very samples that were measured, so sampling error is not part of the gap; what is left is
systematic, and is compared with `TOLERANCE`.

Pure NumPy. Must not know: frameworks, files, the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Largest gap accepted, per channel: the mean's shift in units of the stored standard
#: deviation, and the variance's relative difference. 2%: far above float32 rounding and the
#: order of summation (1e-6), below what changes a prediction (the 4-9% of a graph measured
#: off its inference path).
TOLERANCE = 0.02
#: Inference passes spent at most on reaching the inference fixed point after measuring.
MAX_SETTLE_PASSES = 4


@dataclass(frozen=True)
class LayerGap:
    layer: str
    #: max over channels of |inference mean - stored mean| / sqrt(stored variance + eps)
    mean_gap: float
    #: max over channels of |inference variance - stored variance| / (stored variance + eps)
    var_gap: float

    @property
    def worst(self) -> float:
        return max(self.mean_gap, self.var_gap)


@dataclass(frozen=True)
class SelfCheck:
    """The comparison, layer by layer; `passed` when every gap is within `tolerance`."""

    samples: int
    layers: tuple[LayerGap, ...]
    tolerance: float = TOLERANCE
    #: Layers the inference pass never reached (a branch inference skips): not checked.
    unreached: tuple[str, ...] = ()
    #: "all": inference over every measured sample against the stored statistics; "head":
    #: inference over the first `samples` measured samples against what the measurement saw
    #: on those very samples (no sampling error either way).
    basis: str = "all"

    @property
    def failed(self) -> list[LayerGap]:
        return [g for g in self.layers if not g.worst <= self.tolerance]

    @property
    def passed(self) -> bool:
        # A check that compared nothing checked nothing: never a pass.
        return bool(self.layers) and not self.failed

    @property
    def worst(self) -> LayerGap | None:
        return max(self.layers, key=lambda g: g.worst, default=None)

    def summary(self) -> str:
        worst = self.worst
        if worst is None:
            return "self-check: no layer was reached by the inference pass"
        verdict = "passed" if self.passed else f"FAILED on {len(self.failed)} layer(s)"
        against = ("the stored statistics" if self.basis == "all" else
                   "what the measurement saw on those samples")
        over = (f"the same {self.samples} samples" if self.basis == "all" else
                f"the first {self.samples} measured samples")
        return (f"self-check {verdict}: with the new statistics in place, inference over "
                f"{over} gives each BN layer inputs within {worst.worst:.2g} of {against} "
                f"(worst: {worst.layer}; tolerance {self.tolerance:g})")

    def refusal(self) -> str:
        if not self.layers:
            return ("the self-check could not run: the inference pass reached no BN layer "
                    "(data that can be read only once? give an array, a file, or a function "
                    "that returns a new iterator each time)")
        listed = ", ".join(f"{g.layer} (mean {g.mean_gap:.2g} sd, variance {g.var_gap:.1%})"
                           for g in self.failed[:6])
        more = len(self.failed) - 6
        return ("the self-check failed: with the new statistics in place, the model's own "
                f"inference gives these BN layers inputs that differ from what would be "
                f"written: {listed}{f' and {more} more' if more > 0 else ''}. The statistics "
                "were measured off the inference path (upstream layers normalizing with batch "
                "statistics, small batches, or a training switch that changes more than BN); "
                "try --mode sequential, which measures each layer behind fixed upstream "
                "layers, or a larger --batch-size")


def compare(
    stored: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    seen: Mapping[str, tuple[np.ndarray, np.ndarray]],
    samples: int,
    tolerance: float | None = None,
) -> SelfCheck:
    """`stored`: layer -> (mean, variance, epsilon) about to be written; `seen`: layer ->
    (mean, variance) of its inputs in the inference pass."""
    gaps = []
    unreached = []
    for name, (mean, var, eps) in stored.items():
        if name not in seen:
            unreached.append(name)
            continue
        m, v = (np.asarray(a, np.float64) for a in seen[name])
        mean64, var64 = np.asarray(mean, np.float64), np.asarray(var, np.float64)
        scale = np.maximum(var64 + eps, 1e-12)
        mean_gap = np.abs(m - mean64) / np.sqrt(scale)
        var_gap = np.abs(v - var64) / scale
        gaps.append(LayerGap(name, _max(mean_gap), _max(var_gap)))
    limit = TOLERANCE if tolerance is None else tolerance
    return SelfCheck(samples, tuple(gaps), limit, tuple(unreached))


def _max(a: np.ndarray) -> float:
    """The largest gap; NaN counts as infinitely far (never as within tolerance)."""
    if a.size == 0:
        return 0.0
    return float("inf") if np.isnan(a).any() else float(np.max(a))

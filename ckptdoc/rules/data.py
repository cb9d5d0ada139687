"""BN012: the stored statistics disagree with the data the model will see (`audit --data`).

The audit alone can prove statistics never moved, not that they are wrong for the data. With
data, the model runs in inference mode with its stored statistics, and each BN layer's input
moments are compared, channel by channel, with the moving mean and variance it normalizes
with. Knows statistics, not frameworks or files: the moments come from the recalibration
engine (`recalibrate/observe.py`), which runs the model.

Per layer, with N samples and, per channel c, stored mean / variance (mu, s2), data mean /
variance (m, v):
- shift d_c = (m - mu) / sqrt(s2 + eps), in stored standard deviations; its sampling error
  is sqrt(r_c / N) with r_c = (v + eps) / (s2 + eps);
- the variance ratio r_c, whose log has a sampling error of about sqrt(2 / N).
The layer's shift is the median of |d_c| over channels and its ratio the geometric median of
r_c (one noisy channel does not make a finding); each is judged after taking off 3 sampling
errors, so a small sample gives no false alarm, only less power. N counts samples, not
positions: neighbouring positions of one image are not independent, and counting them would
make the sampling error look smaller than it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptdoc.rules.base import Finding, Severity
from ckptdoc.rules.checks import rule

#: Warning past these (after 3 sampling errors): a shift of a quarter of a standard
#: deviation, or a variance off 2.5-fold. Variance is looser: a layer behind others keeps,
#: from training, the variance its inputs had while the layers upstream normalized with
#: noisy batch statistics (twice the inference variance in the shipped samples' head layer).
DRIFT_SHIFT = 0.25
DRIFT_RATIO = 2.5
#: Error past these: two standard deviations, or a variance off 10-fold (a standard
#: deviation off ~3-fold): the layer normalizes into a range it never saw in training.
MISMATCH_SHIFT = 2.0
MISMATCH_RATIO = 10.0
#: Sampling errors taken off before judging.
MARGIN = 3.0

_KNOWN_SCALES = {255.0: "0-255 pixels where the model was trained on 0-1 inputs",
                 1 / 255.0: "0-1 inputs where the model was trained on 0-255 pixels",
                 127.5: "0-255 pixels where the model was trained on -1..1 inputs",
                 1 / 127.5: "-1..1 inputs where the model was trained on 0-255 pixels"}


@rule(
    "BN012",
    Severity.WARNING,
    "statistics disagree with the data",
    f"""
Only with `ckptdoc audit MODEL --data DATA`. The model ran in inference mode over the data
with its stored statistics, and a BN layer's inputs have a mean or a variance other than the
moving mean / variance it normalizes them with. Per layer: the median over channels of the
mean's shift, in stored standard deviations, and of the variance ratio, each judged after
taking off {MARGIN:g} sampling errors (small samples give no false alarm).

- warning (drift): shift over {DRIFT_SHIFT:g} sd, or variance off by more than x{DRIFT_RATIO:g};
- error (mismatch): shift over {MISMATCH_SHIFT:g} sd, or variance off by more than
  x{MISMATCH_RATIO:g}.

Causes: the data is preprocessed differently from training (0-255 pixels for a model trained
on 0-1, another mean / std, BGR for RGB): the first layers then disagree by one consistent
scale or offset, and the finding names it. Or the statistics are stale: training stopped
early, the model was fine-tuned on another domain, BN was frozen after a warm-up.

Fix: first make the data match the model's preprocessing. If it does and the model serves
this data, `ckptdoc recalibrate MODEL --data DATA` measures statistics for it (it refuses to
overwrite healthy statistics with data that disagrees this much unless --force).
""",
    fix="Make the data match the model's preprocessing first; if it does, `ckptdoc "
        "recalibrate` with this data.",
    scope="file",
)
def _file_level(values: Any, tol: Any) -> None:
    """Group-level no-op: BN012 comes from the data comparison (`data_findings`)."""
    return None


@dataclass(frozen=True)
class LayerData:
    """One BN layer's stored statistics against its inputs' over the data."""

    layer: str
    samples: int
    #: median over channels of |data mean - stored mean| / stored sd
    shift: float
    #: median over channels of the signed shift (a consistent offset shows here)
    signed_shift: float
    #: geometric median over channels of data variance / stored variance
    ratio: float
    #: the shift's and the log ratio's sampling errors
    shift_error: float
    log_ratio_error: float
    #: The stored statistics are still their initial values (mean 0, variance 1): never
    #: updated, whatever the data.
    initial: bool = False

    @property
    def shift_excess(self) -> float:
        return max(0.0, self.shift - MARGIN * self.shift_error)

    @property
    def ratio_excess(self) -> float:
        """The variance ratio, as a factor >= 1, beyond its sampling error."""
        return math.exp(max(0.0, abs(math.log(self.ratio)) - MARGIN * self.log_ratio_error))

    @property
    def verdict(self) -> str:
        if self.shift_excess > MISMATCH_SHIFT or self.ratio_excess > MISMATCH_RATIO:
            return "mismatch"
        if self.shift_excess > DRIFT_SHIFT or self.ratio_excess > DRIFT_RATIO:
            return "drift"
        return "agrees"

    def describe(self) -> str:
        return (f"means off by {self.shift:.2g} sd (median over channels, sampling error "
                f"{self.shift_error:.1g}), variance x{self.ratio:.3g}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data; a value NaN / Inf data made infinite is null (JSON has no Infinity)."""
        return {"layer": self.layer, "samples": self.samples, "verdict": self.verdict,
                "mean_shift_sd": _json(self.signed_shift), "abs_mean_shift_sd": _json(self.shift),
                "mean_shift_error": _json(self.shift_error),
                "variance_ratio": _json(self.ratio),
                "log_variance_ratio_error": _json(self.log_ratio_error)}


def _json(x: float) -> float | None:
    return x if math.isfinite(x) else None


def compare_layer(layer: str, stored_mean: np.ndarray, stored_var: np.ndarray, eps: float,
                  data_mean: np.ndarray, data_var: np.ndarray, samples: int) -> LayerData:
    mu, s2 = np.asarray(stored_mean, np.float64), np.asarray(stored_var, np.float64)
    m, v = np.asarray(data_mean, np.float64), np.asarray(data_var, np.float64)
    scale = np.maximum(s2 + eps, 1e-12)
    d = (m - mu) / np.sqrt(scale)
    r = np.maximum(v + eps, 1e-12) / scale
    n = max(samples, 1)
    return LayerData(
        layer, samples,
        shift=_finite(np.median(np.abs(d))),
        signed_shift=_finite(np.median(d)),
        ratio=_finite(float(np.exp(np.median(np.log(r)))), default=1.0),
        shift_error=_finite(float(np.median(np.sqrt(r / n)))),
        log_ratio_error=math.sqrt(2.0 / max(n - 1, 1)),
        initial=bool(np.all(mu == 0) and np.all(s2 == 1)),
    )


def _finite(x: Any, default: float = math.inf) -> float:
    x = float(x)
    return x if math.isfinite(x) else default


@dataclass(frozen=True)
class DataComparison:
    """Every BN layer's comparison, in the model's order, over `data`."""

    data: str
    samples: int
    layers: tuple[LayerData, ...]
    notes: tuple[str, ...] = ()

    @property
    def disagreeing(self) -> list[LayerData]:
        return [layer for layer in self.layers if layer.verdict != "agrees"]

    @property
    def worst(self) -> str:
        verdicts = {layer.verdict for layer in self.layers}
        return next((v for v in ("mismatch", "drift") if v in verdicts), "agrees")

    def preprocessing(self) -> str | None:
        """When the first layer disagrees by a consistent scale or offset: what the input
        preprocessing probably is, with the factor."""
        first = self.layers[0] if self.layers else None
        if first is None or first.verdict == "agrees":
            return None
        factor = math.sqrt(first.ratio)
        if first.ratio_excess > DRIFT_RATIO:
            known = next((what for k, what in _KNOWN_SCALES.items()
                          if abs(math.log(factor / k)) < 0.15), None)
            guess = f" (looks like {known})" if known else ""
            return (f"the first BN layer's inputs are scaled by about x{factor:.3g} against "
                    f"training (variance x{first.ratio:.3g}): the input preprocessing probably "
                    f"differs from training{guess}")
        return (f"the first BN layer's input means are off by {first.shift:.2g} standard "
                "deviations against training: the input preprocessing (mean subtraction, "
                "normalization) probably differs from training, or the data comes from "
                "another domain")

    def as_dict(self) -> dict[str, Any]:
        return {"data": self.data, "samples": self.samples, "verdict": self.worst,
                "preprocessing": self.preprocessing(),
                "layers": [layer.as_dict() for layer in self.layers],
                "notes": list(self.notes)}


def data_findings(comparison: DataComparison, severity: Severity = Severity.WARNING,
                  broken: frozenset[str] = frozenset()) -> list[Finding]:
    """One BN012 per disagreeing layer: a warning for drift, an error for a mismatch (or the
    configured severity when it is higher). `broken`: layers the tensors already prove broken
    (BN001-BN004 errors): any data disagrees with them, which says nothing about the data."""
    first = comparison.layers[0].layer if comparison.layers else None
    hint = None if first in broken else comparison.preprocessing()
    out = []
    disagreeing = [layer for layer in comparison.disagreeing if layer.layer not in broken]
    for i, layer in enumerate(disagreeing):
        level = Severity.ERROR if layer.verdict == "mismatch" else Severity.WARNING
        if severity.rank > level.rank:
            level = severity
        message = (f"{layer.describe()} over {layer.samples} samples of {comparison.data}: "
                   f"{'inconsistent with' if layer.verdict == 'mismatch' else 'drifted from'} "
                   "the stored statistics")
        if i == 0 and hint:
            message += f"; {hint}"
        out.append(Finding("BN012", level, layer.layer, message, layer.as_dict(),
                           f"{layer.verdict}: {layer.describe()}"))
    return out


def comparison_of(layers: Sequence[tuple[str, np.ndarray, np.ndarray, float, np.ndarray,
                                         np.ndarray]],
                  samples: int, data: str, notes: Sequence[str] = ()) -> DataComparison:
    """From (layer, stored mean, stored variance, eps, data mean, data variance) rows."""
    return DataComparison(data, samples, tuple(
        compare_layer(name, mu, s2, eps, m, v, samples) for name, mu, s2, eps, m, v in layers),
        tuple(notes))

"""What a recalibration did: per-layer movement of the statistics, data used, evaluation.

Plain dataclasses and NumPy only; `render_table` imports Rich lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ckptdoc.recalibrate.selfcheck import SelfCheck
from ckptdoc.report.safe import shown


def _max_abs(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0


def _rel(new: np.ndarray, old: np.ndarray) -> float:
    """||new - old|| / max(||old||, ||new||): 0 = unchanged, 1 = nothing of the old value left."""
    denom = max(float(np.linalg.norm(old)), float(np.linalg.norm(new)), 1e-30)
    return float(np.linalg.norm(new - old)) / denom


@dataclass(frozen=True)
class LayerChange:
    """How one BN layer's statistics moved."""

    layer: str
    channels: int
    samples: int  # values per channel that went into the statistics
    old_mean_max_abs: float
    new_mean_max_abs: float
    mean_max_abs_change: float
    mean_rel_change: float
    old_var_mean: float
    new_var_mean: float
    var_max_abs_change: float
    var_rel_change: float

    @classmethod
    def build(
        cls,
        layer: str,
        samples: int,
        old_mean: np.ndarray,
        new_mean: np.ndarray,
        old_var: np.ndarray,
        new_var: np.ndarray,
    ) -> LayerChange:
        om, nm = np.asarray(old_mean, np.float64), np.asarray(new_mean, np.float64)
        ov, nv = np.asarray(old_var, np.float64), np.asarray(new_var, np.float64)
        return cls(
            layer=layer,
            channels=int(nm.size),
            samples=samples,
            old_mean_max_abs=_max_abs(om),
            new_mean_max_abs=_max_abs(nm),
            mean_max_abs_change=_max_abs(nm - om),
            mean_rel_change=_rel(nm, om),
            old_var_mean=float(ov.mean()) if ov.size else 0.0,
            new_var_mean=float(nv.mean()) if nv.size else 0.0,
            var_max_abs_change=_max_abs(nv - ov),
            var_rel_change=_rel(nv, ov),
        )


@dataclass(frozen=True)
class EvalResult:
    """Loss / accuracy of the model in inference mode on labelled data."""

    samples: int
    loss: float | None
    accuracy: float | None
    loss_name: str
    source: str


@dataclass(frozen=True)
class RecalibrationReport:
    mode: str
    samples: int
    batches: int
    passes: int
    budget_samples: int | None
    budget_batches: int | None
    data_exhausted: bool  # the data ran out before the budget: all of it was used
    data: str
    variance_convention: str
    seconds: float
    layers: tuple[LayerChange, ...]
    eval_before: EvalResult | None = None
    eval_after: EvalResult | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: The Keras backend that ran the model ("tensorflow", "jax", "torch"; TF1 graphs:
    #: "tensorflow") and over how many replicas (devices / workers) the data was split.
    backend: str = "tensorflow"
    replicas: int = 1
    #: The statistics against the model's own inference with them in place (None: not run).
    self_check: SelfCheck | None = None

    @property
    def got_worse(self) -> bool:
        """Held-out results are worse after recalibration (accuracy down, or loss up)."""
        return got_worse(self.eval_before, self.eval_after)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(x) for x in self.layers]
        d["got_worse"] = self.got_worse
        if self.self_check is not None:
            d["self_check"]["passed"] = self.self_check.passed
        return d


def pass_report(
    *, mode: str, passes: int, consumed: Any, budget: Any, data: str, variance_convention: str,
    seconds: float, layers: tuple[LayerChange, ...], eval_before: EvalResult | None,
    eval_after: EvalResult | None, notes: list[str], backend: str = "tensorflow",
    replicas: int = 1, self_check: SelfCheck | None = None,
) -> RecalibrationReport:
    """The report of a measurement; `consumed` / `budget` are the data module's `Consumed` and
    `Budget` (read for their fields only). Says so when the data ran out before the budget."""
    notes = list(notes)
    if consumed.exhausted and (budget.samples is not None or budget.batches is not None):
        notes.append(
            f"the data holds fewer samples than the budget: all {consumed.samples} were used"
        )
    return RecalibrationReport(
        mode=mode, samples=consumed.samples, batches=consumed.batches, passes=passes,
        budget_samples=budget.samples, budget_batches=budget.batches,
        data_exhausted=consumed.exhausted, data=data, variance_convention=variance_convention,
        seconds=seconds, layers=layers, eval_before=eval_before, eval_after=eval_after,
        notes=tuple(notes), backend=backend, replicas=replicas, self_check=self_check,
    )


# Accuracy may wobble by a sample or so from float rounding; anything beyond is a real change.
ACCURACY_TOLERANCE = 0.005
LOSS_TOLERANCE = 0.01


def got_worse(before: EvalResult | None, after: EvalResult | None) -> bool:
    if before is None or after is None:
        return False
    if before.accuracy is not None and after.accuracy is not None:
        if after.accuracy < before.accuracy - max(ACCURACY_TOLERANCE, 1.0 / max(after.samples, 1)):
            return True
        if after.accuracy > before.accuracy:
            return False
    if before.loss is not None and after.loss is not None and np.isfinite(before.loss):
        return bool(
            not np.isfinite(after.loss) or after.loss > before.loss * (1 + LOSS_TOLERANCE) + 1e-12
        )
    return False


def render(report: RecalibrationReport, console: Any) -> None:
    """Rich table plus a summary, for humans."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"BN statistics, {report.mode} mode", title_justify="left")
    for col, justify in [
        ("layer", "left"),
        ("ch", "right"),
        ("n/ch", "right"),
        ("max|Δmean|", "right"),
        ("avg var old→new", "right"),
        ("rel Δ mean/var", "right"),
    ]:
        # Layer paths fold instead of being cut: they are the one column users act on.
        table.add_column(
            col,
            justify=justify,  # type: ignore[arg-type]
            overflow="fold" if col == "layer" else "ellipsis",
        )
    for ch in report.layers:
        table.add_row(
            Text(shown(ch.layer)),
            str(ch.channels),
            str(ch.samples),
            f"{ch.mean_max_abs_change:.4g}",
            f"{ch.old_var_mean:.4g}→{ch.new_var_mean:.4g}",
            f"{ch.mean_rel_change:.0%}/{ch.var_rel_change:.0%}",
        )
    console.print(table)
    # In a log (not a terminal) each line stays whole: log viewers wrap, and a line broken
    # mid-sentence reads as two.
    logs = not console.is_terminal
    used = f"{report.samples} samples in {report.batches} batches"
    if report.data_exhausted:
        used += " (the whole dataset: it is shorter than the budget)"
    devices = f" on {report.replicas} replicas" if report.replicas > 1 else ""
    console.print(
        f"Data: {shown(report.data)}: {used}; {report.passes} pass(es), {report.seconds:.1f}s "
        f"({report.backend}{devices})",
        markup=False, soft_wrap=logs,
    )
    console.print(f"Variance written as {report.variance_convention}.", markup=False,
                  soft_wrap=logs)
    if report.self_check is not None:
        console.print(shown(report.self_check.summary() + ".", 4000), markup=False, soft_wrap=logs)
    for label, ev in (("before", report.eval_before), ("after", report.eval_after)):
        if ev is not None:
            acc = f", accuracy {ev.accuracy:.4f}" if ev.accuracy is not None else ""
            loss = f"{ev.loss_name} {ev.loss:.4f}" if ev.loss is not None else "no loss"
            console.print(
                f"Eval {label} ({ev.source}, {ev.samples} samples): {loss}{acc}",
                markup=False, soft_wrap=logs,
            )
    for note in report.notes:
        console.print(f"Note: {shown(note, 4000)}", markup=False, soft_wrap=logs)


#: Why held-out results can get worse after recalibration, all of them: the refusal must not
#: blame one cause when the data cannot tell them apart.
WORSE_CAUSES = (
    "the model was trained with BN in inference mode, so its weights expect the old "
    "statistics; or the calibration data is not what the model sees in use (other "
    "preprocessing or scale: see --pixel-scale, or the training switch was not set); or the "
    "held-out labels do not match the model's classes"
)

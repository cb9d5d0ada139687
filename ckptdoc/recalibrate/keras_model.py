"""Measure a live Keras 3 model: the exact statistics of every BN layer's inputs over the
data, put into the layers' moving statistics, with held-out loss / accuracy before and after.

Used by every target that ends in a Keras model (Keras files, TF2 object checkpoints) and by
the Python API on an in-memory model. Must not know: files, writing, the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from ckptdoc.recalibrate import backends
from ckptdoc.recalibrate.data import Batch, Budget, Consumed, DataSource
from ckptdoc.recalibrate.engine import (
    BNLayer,
    Capture,
    assign,
    dependency_levels,
    find_bn_layers,
    run_pass,
    snapshot,
)
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.evaluate import evaluate
from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.report import EvalResult, LayerChange, RecalibrationReport, pass_report
from ckptdoc.recalibrate.selfcheck import SelfCheck, compare
from ckptdoc.recalibrate.stats import Moments
from ckptdoc.rules.data import DataComparison, comparison_of

VARIANCE_CONVENTION = "population (biased) variance, as Keras 3 BatchNormalization reads it"


def measure(
    model: Any, options: Options, progress: Callable[[int], None] | None = None
) -> RecalibrationReport:
    """Replace every BN layer's moving statistics with exact statistics over `options.data`.

    The model's BN variables are updated in place; on any error they are put back as they
    were. With labels (in the data or `options.eval_data`) the report carries inference loss /
    accuracy before and after; check `report.got_worse`.
    """
    backend = backends.current()  # refuses an unsupported Keras backend before any work
    if options.devices not in (1, None) and backend.replicas(model) < 2:
        raise RecalibrationError(
            "devices: an in-memory model runs where it was built; for several devices build or "
            "load it under a tf.distribute strategy's scope() (TensorFlow) or with a "
            "keras.distribution.DataParallel set (JAX), or recalibrate the file (--devices)"
        )
    started = time.perf_counter()
    layers = find_bn_layers(model)
    if not layers:
        raise RecalibrationError("the model has no BatchNormalization layer: nothing to do")
    mode, batch_size, budget = options.mode, options.batch_size, options.budget
    source = options.source()
    check_inputs(model, source, batch_size)
    eval_source = options.eval_source()
    eval_label = "" if eval_source is None else f"eval data {eval_source.description}"
    notes: list[str] = list(source.notes)
    if (spent := source.budget_note(budget)) is not None:
        notes.append(spent)

    def ev() -> EvalResult | None:
        if eval_source is not None:
            return evaluate(model, eval_source.batches(batch_size), eval_label)
        return evaluate(
            model,
            source.budgeted(batch_size, budget, Consumed()),
            "calibration data (its labels)",
        )

    old = [snapshot(bn) for bn in layers]
    eval_before = ev() if eval_source is not None or _has_labels(source, batch_size) else None
    if eval_source is not None and eval_before is None:
        notes.append("--eval-data has no usable labels: no before/after comparison")
    consumed = Consumed()
    capture = Capture(layers, backend)
    try:
        with capture.installed():
            if mode == "precise":
                result = run_pass(
                    model,
                    capture,
                    source.budgeted(batch_size, budget, consumed),
                    progress,
                    head=CHECK_SAMPLES,
                )
                moments = result.moments
                passes = 1
                head = Head(result.head, result.head_batches)
                _apply(layers, moments, notes)
            else:
                moments, passes, head = _sequential(
                    model, capture, layers, source, batch_size, budget, consumed, progress, notes
                )
            if consumed.samples == 0:
                raise RecalibrationError(f"--data {source.description}: no samples")
            check = head_check(model, capture, layers,
                               islice(source.budgeted(batch_size, budget, Consumed()),
                                      head.batches), head)
            if not check.passed and mode == "precise":
                # Off inference's fixed point (upstream layers normalized with batch
                # statistics): measure again layer after layer, which is that fixed point.
                first = check.worst
                failing = {g.layer for g in check.failed}
                moments, more, head = _sequential(
                    model, capture, layers, source, batch_size, budget, Consumed(), None, notes,
                    redo={i for i, bn in enumerate(layers) if bn.path in failing},
                    prior=(moments, head),
                )
                passes += more
                mode = "sequential"
                check = head_check(model, capture, layers,
                                   islice(source.budgeted(batch_size, budget, Consumed()),
                                          head.batches), head)
                assert first is not None
                notes.append(
                    f"precise mode's statistics were {first.worst:.2g} off the model's own "
                    f"inference (worst: {first.layer}; tolerance {check.tolerance:g}): from the "
                    "first level holding a layer that failed on, measured again layer after "
                    f"layer (sequential mode, {more} passes), which is inference's fixed point")
        eval_after = ev() if eval_before is not None else None
    except BaseException:
        for bn, values in zip(layers, old, strict=True):
            assign(bn, values)
        raise
    changes = []
    for i, bn in enumerate(layers):
        new = snapshot(bn)
        m = moments.get(i)
        changes.append(
            LayerChange.build(
                bn.path,
                m.total if m is not None else 0,
                old[i]["moving_mean"],
                new["moving_mean"],
                old[i]["moving_variance"],
                new["moving_variance"],
            )
        )
    replicas = backend.replicas(model)
    return pass_report(
        mode=mode, passes=passes, consumed=consumed, budget=budget, data=source.description,
        variance_convention=VARIANCE_CONVENTION, seconds=time.perf_counter() - started,
        layers=tuple(changes), eval_before=eval_before, eval_after=eval_after, notes=notes,
        backend=backend.name, replicas=replicas, self_check=check,
    )


#: The self-check: inference over the first this-many measured samples (whole batches) with
#: the new statistics in place, against what the measurement saw on those very samples. Same
#: samples, so no sampling error: the gap is the systematic one, at a quarter of a pass over
#: the default 4096 samples.
CHECK_SAMPLES = 1024


@dataclass
class Head:
    """What the measurement saw on its first batches: per layer, and how many batches."""

    moments: dict[int, Moments]
    batches: int


def _inference_moments(model: Any, capture: Capture, layers: list[BNLayer],
                       batches: Any, progress: Callable[[int], None] | None = None,
                       ) -> tuple[dict[int, Moments], int]:
    """Each BN layer's input moments with the model in inference mode, the statistics in
    place (new ones for the self-check, the stored ones for `observe`)."""
    saved = dict(capture.state)
    for i in range(len(layers)):
        capture.state[i] = "check"
    try:
        result = run_pass(model, capture, batches, progress)
    finally:
        capture.state.clear()
        capture.state.update(saved)
    return result.moments, result.samples


def head_check(model: Any, capture: Capture, layers: list[BNLayer], batches: Any,
               head: Head) -> SelfCheck:
    """Inference over the measurement's first batches against what it saw there."""
    seen, samples = _inference_moments(model, capture, layers, batches)
    measured, inferred = {}, {}
    for i, bn in enumerate(layers):
        if i in head.moments and head.moments[i].total > 0:
            mine = bn.new_values(head.moments[i])
            measured[bn.path] = (mine["moving_mean"], mine["moving_variance"],
                                 float(bn.layer.epsilon))
        if i in seen and seen[i].total > 0:
            got = bn.new_values(seen[i])
            inferred[bn.path] = (got["moving_mean"], got["moving_variance"])
    return replace(compare(measured, inferred, samples), basis="head")


def check_inputs(model: Any, source: DataSource, batch_size: int) -> None:
    """The data's shape against the model's inputs, before any pass: a clear refusal instead
    of the first line of a Keras traceback. Only single-array inputs of a model with known
    input shapes are checked (dicts, lists and subclassed models go to the model as they are)."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return
    expected = tuple(inputs[0].shape)
    for batch in source.batches(batch_size):
        shape = getattr(batch.x, "shape", None)
        if shape is None or isinstance(batch.x, (dict, list, tuple)):
            return
        got = tuple(int(d) for d in shape)
        if len(got) != len(expected) or any(
                e is not None and e != g for e, g in zip(expected[1:], got[1:], strict=False)):
            want = "(" + ", ".join("None" if e is None else str(e) for e in expected) + ")"
            raise RecalibrationError(
                f"the model expects inputs of shape {want}, the data gives batches of shape "
                f"{got}: check --data (for .npz, --x-key names the inputs' array) and the "
                "preprocessing (channels, image size)")
        return


def _has_labels(source: DataSource, batch_size: int) -> bool:
    for b in source.batches(batch_size):
        return b.y is not None
    return False


def _apply(
    layers: list[BNLayer],
    moments: dict[int, Moments],
    notes: list[str],
    only: list[int] | None = None,
) -> None:
    for i in range(len(layers)) if only is None else only:
        bn = layers[i]
        m = moments.get(i)
        if m is None or m.total == 0:
            notes.append(f"{bn.path} was never called on the data: its statistics are unchanged")
            continue
        assign(bn, bn.new_values(m))


def _sequential(
    model: Any,
    capture: Capture,
    layers: list[BNLayer],
    source: DataSource,
    batch_size: int,
    budget: Budget,
    consumed: Consumed,
    progress: Callable[[int], None] | None,
    notes: list[str],
    redo: set[int] | None = None,
    prior: tuple[dict[int, Moments], Head] | None = None,
) -> tuple[dict[int, Moments], int, Head]:
    """BN layers measured in dependency order, each level behind the levels before it in
    inference mode. With `redo` (layers a self-check failed on) and `prior` (what an earlier
    pass measured), the levels before the first one holding a `redo` layer keep their values:
    their inputs do not depend on anything measured again."""
    first: Batch | None = next(iter(source.budgeted(batch_size, budget, Consumed())), None)
    if first is None:
        raise RecalibrationError(f"--data {source.description}: no samples")
    levels = dependency_levels(model, capture, first)
    moments: dict[int, Moments] = dict(prior[0]) if prior else {}
    head = Head(dict(prior[1].moments), prior[1].batches) if prior else Head({}, 0)
    start = next((k for k, level in enumerate(levels) if set(level) & redo), 0) if redo else 0
    passes = 0
    for k, level in enumerate(levels):
        if k < start:
            continue
        passes += 1
        done = {i for lv in levels[:k] for i in lv}
        for i in range(len(layers)):
            capture.state[i] = "fixed" if i in done else ("batch" if i in level else "batch-quiet")
        result = run_pass(
            model, capture, source.budgeted(batch_size, budget, consumed), progress,
            head=CHECK_SAMPLES,
        )
        for i in level:
            if i in result.moments:
                moments[i] = result.moments[i]
            if i in result.head:
                head.moments[i] = result.head[i]
        head.batches = result.head_batches
        _apply(layers, moments, notes, only=level)
    return moments, passes, head


def observe(model: Any, options: Options,
            progress: Callable[[int], None] | None = None) -> DataComparison:
    """`audit --data`: the model in inference mode over the data with its stored statistics,
    each BN layer's input moments against the statistics it normalizes with. One inference
    pass; nothing is changed."""
    backend = backends.current()
    layers = find_bn_layers(model)
    if not layers:
        raise RecalibrationError("the model has no BatchNormalization layer: nothing to compare")
    source = options.source()
    check_inputs(model, source, options.batch_size)
    consumed = Consumed()
    capture = Capture(layers, backend)
    with capture.installed():
        seen, _ = _inference_moments(
            model, capture, layers,
            source.budgeted(options.batch_size, options.budget, consumed), progress)
    if consumed.samples == 0:
        raise RecalibrationError(f"--data {source.description}: no samples")
    rows = []
    unreached = []
    for i, bn in enumerate(layers):
        if i not in seen or seen[i].total == 0:
            unreached.append(bn.path)
            continue
        stored, got = snapshot(bn), bn.new_values(seen[i])
        rows.append((bn.path, stored["moving_mean"], stored["moving_variance"],
                     float(bn.layer.epsilon), got["moving_mean"], got["moving_variance"]))
    notes = list(source.notes)
    if unreached:
        notes.append(f"not reached by inference over the data, not compared: "
                     f"{', '.join(unreached)}")
    return comparison_of(rows, consumed.samples, source.description, notes)

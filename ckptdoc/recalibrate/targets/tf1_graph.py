"""TF1 name-based checkpoints (`tf.train.Saver`): the graph comes from the `.meta` beside the
prefix, or from `--model module:function` that rebuilds it (see `tf1.py`, which knows graphs).

The new statistics become new values for the checkpoint's keys; statistics a trainable-only
Saver dropped (BN001) are added under the names the graph gives them. Inference graphs (BN
layers reading their moving statistics during the pass) are measured layer after layer until
the statistics settle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.recalibrate.data import Batch, Consumed
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.report import EvalResult, LayerChange, pass_report
from ckptdoc.recalibrate.selfcheck import MAX_SETTLE_PASSES, SelfCheck, compare
from ckptdoc.recalibrate.targets.base import Measured, Progress
from ckptdoc.recalibrate.targets.bundle import BundleOutput
from ckptdoc.rules.data import DataComparison, comparison_of


@dataclass(frozen=True)
class TF1GraphCheckpoint(BundleOutput):
    kind: str = "tf1-graph"
    # One session on one device, measured in precise mode (with settling passes).
    accepts: frozenset[str] = frozenset({"feeds", "sets", "predictions"})

    def measure(self, options: Options, progress: Progress | None) -> Measured:
        return self._with_groups(_measure, options, progress)

    def observe(self, options: Options, progress: Progress | None) -> DataComparison:
        return self._with_groups(_observe, options, progress)

    def _with_groups(self, run: Callable[..., Any], options: Options,
                     progress: Progress | None) -> Any:
        """`run(prefix, checkpoint, BN groups, options, progress)` on the open checkpoint."""
        from ckptdoc.auditor import evidence_groups
        from ckptdoc.formats import open_checkpoint

        with open_checkpoint(self.path) as ck:
            groups = evidence_groups(ck)
            if not groups:
                raise RecalibrationError(f"{self.path}: no batch-norm layer in the checkpoint")
            return run(self.path, ck, groups, options, progress)


@dataclass
class _Run:
    """One measurement of a TF1 graph: what every phase below works on."""

    gm: Any
    ck: Any
    plans: list[Any]
    expected: Mapping[str, Mapping[str, str]]
    source: Any
    options: Options
    notes: list[str]

    def batches(self, consumed: Consumed | None = None) -> Any:
        return self.source.budgeted(self.options.batch_size, self.options.budget,
                                    consumed if consumed is not None else Consumed())


def _measure(
    prefix: Path, ck: Any, groups: Sequence[Any], options: Options, progress: Progress | None
) -> Measured:
    """Measure (first pass, in inference mode where dropout follows the switch), settle the
    layers that normalize with their moving statistics, self-check, then the new values."""
    from ckptdoc.recalibrate import tf1
    from ckptdoc.recalibrate.bundle_writer import BundleFix

    started = time.perf_counter()
    gm = _open_graph(prefix, options)
    expected, inputs = _graph_names(ck)
    try:
        plans = _plans(gm, groups, expected, inputs)
        keys = set(gm.feeds.values())
        source = options.feed_source(keys)
        assert source is not None
        run = _Run(gm, ck, plans, expected, source, options, [*gm.notes, *source.notes])
        if (spent := source.budget_note(options.budget)) is not None:
            run.notes.append(spent)
        ev = _evaluator(run, options.feed_source(keys, held_out=True))
        before = ev()
        if gm.predictions is None:
            run.notes.append(
                "no predictions tensor found (give --predictions): no before/after evaluation"
            )
        consumed = Consumed()
        moments, passes, training, random, probe = _first_pass(run, consumed, progress)
        moved = [p.group.name for p in plans if tf1.stats_moved(gm, p, ck)]
        if len(plans) > 1 and not random and (
            not training
            or _normalizes_with_moving_stats(gm, plans, moments, probe, ck, expected)
        ):
            moments, more = _settle_inference_mode(run, moments, training, passes)
            passes += more
        _assign_all(tf1, gm, plans, moments, ck, expected)
        check, moments, settled = _settle(
            tf1, gm, plans, moments, ck, expected, consumed.samples, run.batches, run.notes)
        passes += settled
        if moved:  # harmless (stats come from the inputs), but the user should know
            run.notes.append(
                f"the moving statistics of {', '.join(moved)} changed in the session during the "
                "pass: update ops run as part of the fetched tensors (control dependencies)"
            )
        replacements, additions, changes, new_values = _new_values(run, moments)
        after = ev() if before is not None else None
        if blind := _blind_check(before, after, changes):
            run.notes.append(blind + tf1.boolean_placeholders_hint(gm))
    finally:
        gm.close()
    # The mode asked for, whatever number of passes it took (the notes say why).
    report = pass_report(
        mode=options.mode, passes=passes, consumed=consumed,
        budget=options.budget, data=source.description,
        variance_convention=tf1.VARIANCE_CONVENTION, seconds=time.perf_counter() - started,
        layers=tuple(changes), eval_before=before, eval_after=after, notes=run.notes,
        self_check=check,
    )
    return Measured(report, BundleFix(prefix, replacements, additions), new_values)


def _evaluator(run: _Run, eval_source: Any) -> Callable[[], EvalResult | None]:
    """Held-out loss / accuracy: on --eval-data, else on the calibration data's labels."""
    from ckptdoc.recalibrate import tf1

    def ev() -> EvalResult | None:
        if eval_source is not None:
            return tf1.evaluate(run.gm, eval_source.batches(run.options.batch_size),
                                f"eval data {eval_source.description}")
        return tf1.evaluate(run.gm, run.batches(), "calibration data (its labels)")

    return ev


def _first_pass(run: _Run, consumed: Consumed, progress: Progress | None,
                ) -> tuple[dict[str, Any], int, bool, bool, list[Batch]]:
    """The first measurement: (moments, passes, the training switch's value, whether the pass
    is random, a probe batch). Where dropout follows the switch, measured with it False."""
    from ckptdoc.recalibrate import tf1

    gm, plans = run.gm, run.plans
    moments = tf1.run_pass(gm, plans, run.batches(consumed), progress)
    if consumed.samples == 0:
        raise RecalibrationError(f"--data {run.source.description}: no samples")
    passes = 1
    probe = list(islice(run.source.batches(run.options.batch_size), 1))
    training = True
    if _random(tf1, gm, plans, probe, training=True) and gm.switches:
        # Dropout (or noise) follows the training switch: with it True, every BN after it
        # would be measured behind active dropout, which inference never sees. Measure in
        # inference mode instead (switch False), layer after layer below.
        training = False
        moments = tf1.run_pass(gm, plans, run.batches(), None, training=False)
        passes += 1
        run.notes.append(
            "the pass with the training switch True is random (dropout follows the "
            "switch): measured in inference mode instead (switch False, dropout off)"
        )
    random = _random(tf1, gm, plans, probe, training)
    if random:  # nothing to settle: two passes never agree
        run.notes.append(
            "the calibration pass is random even with the same data (dropout or noise "
            "that no training switch turns off): the statistics are those of such passes, "
            "not of inference; name the switch that turns it off with --set NAME=true"
        )
    return moments, passes, training, random, probe


def _settle_inference_mode(run: _Run, moments: dict[str, Any], training: bool,
                           passes_before: int) -> tuple[dict[str, Any], int]:
    """Inference mode (an inference graph, a training switch left False, or dropout that
    follows it): every BN layer normalizes with its moving statistics during the pass, so a
    layer's input depends on the statistics upstream, and one pass measures it behind layers
    still holding the old (broken) values. Measure again with the new values in place until
    nothing changes: each pass settles at least one more layer, as sequential mode does."""
    from ckptdoc.recalibrate import tf1

    gm, plans, ck, expected = run.gm, run.plans, run.ck, run.expected
    _assign_all(tf1, gm, plans, moments, ck, expected)
    passes = 0
    for _ in range(len(plans)):
        previous = moments
        moments = tf1.run_pass(gm, plans, run.batches(), None, training=training)
        if set(moments) != set(previous):
            raise RecalibrationError(
                f"--data {run.source.description} could be read only once, but BN layers "
                "in this graph normalize with their moving statistics, which takes "
                "several passes: give data that can be read again (a file, a folder, "
                "or a function that returns a new iterator)"
            )
        passes += 1
        _assign_all(tf1, gm, plans, moments, ck, expected)
        if _settled(previous, moments):
            break
    run.notes.append(
        "BN layers normalize with their moving statistics in this graph (an inference "
        "graph, or a training switch that stays False): statistics were measured layer "
        f"after layer, with the new values in place, {passes_before + passes} passes until "
        "they stopped "
        "changing"
    )
    return moments, passes


def _new_values(run: _Run, moments: Mapping[str, Any]) -> tuple[
        dict[str, np.ndarray], dict[str, np.ndarray], list[LayerChange],
        dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(replacements, additions, changes, new values per layer): the measured statistics in
    the checkpoint's keys, shapes and dtypes, assigned in the session for the evaluation."""
    from ckptdoc.recalibrate import tf1

    ck = run.ck
    replacements: dict[str, np.ndarray] = {}
    additions: dict[str, np.ndarray] = {}
    changes = []
    new_values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p in run.plans:
        g = p.group
        stats = _new_stats(ck, g, run.expected, moments[g.name])
        mean, var = stats["moving_mean"], stats["moving_variance"]
        for s in (mean, var):
            (replacements if s.key in ck.tensors else additions)[s.key] = s.new
        if mean.key not in ck.tensors or var.key not in ck.tensors:
            run.notes.append(f"{g.name}: moving statistics the checkpoint lacked were added "
                             f"as {mean.key} and {var.key} (named as the graph names them)")
        tf1.assign(run.gm, p, {role: s.new for role, s in stats.items()})
        new_values[g.name] = (mean.new, var.new)
        changes.append(LayerChange.build(g.name, moments[g.name].total, mean.old, mean.new,
                                         var.old, var.new))
        if g.extras:
            run.notes.append(f"{g.name}: {', '.join(sorted(g.extras))} left as they were")
    return replacements, additions, changes, new_values


def _open_graph(prefix: Path, options: Options) -> Any:
    from ckptdoc.formats.resolve import bundle_file
    from ckptdoc.recalibrate import tf1

    meta = bundle_file(prefix, ".meta")
    return tf1.open_graph(
        prefix,
        meta=meta if meta.is_file() and options.model_spec is None else None,
        model_spec=options.model_spec,
        feeds=options.feeds,
        sets=options.sets,
        predictions=options.predictions,
        allow_unsafe=options.allow_unsafe_code,
    )


def _plans(gm: Any, groups: Sequence[Any], expected: Mapping[str, Mapping[str, str]],
           inputs: Mapping[str, Sequence[str]]) -> list[Any]:
    from ckptdoc.recalibrate import tf1

    plans, problems = tf1.plan_layers(gm, groups, expected, inputs)
    problems += tf1.unfed_placeholders(gm, plans)
    if problems:
        raise RecalibrationError("cannot run the graph: " + "; ".join(problems))
    return plans


def _observe(prefix: Path, ck: Any, groups: Sequence[Any], options: Options,
             progress: Progress | None) -> DataComparison:
    """Inference mode (training switches False) over the data with the stored statistics:
    each layer's input moments against them."""
    from ckptdoc.recalibrate import tf1

    gm = _open_graph(prefix, options)
    expected, inputs = _graph_names(ck)
    try:
        plans = _plans(gm, groups, expected, inputs)
        source = options.feed_source(set(gm.feeds.values()))
        assert source is not None
        consumed = Consumed()
        moments = tf1.run_pass(gm, plans, source.budgeted(options.batch_size, options.budget,
                                                          consumed), progress, training=False)
    finally:
        gm.close()
    if consumed.samples == 0:
        raise RecalibrationError(f"--data {source.description}: no samples")
    rows = []
    for p in plans:
        m = moments.get(p.group.name)
        if m is None or m.total == 0:
            continue
        _, mean = _stored(ck, p.group, expected, "moving_mean", m.mean.size)
        _, var = _stored(ck, p.group, expected, "moving_variance", m.mean.size)
        rows.append((p.group.name, mean.reshape(-1), var.reshape(-1), _EPSILON, m.mean,
                     m.variance))
    notes = [*gm.notes, *source.notes]
    if not gm.switches:
        notes.append("no training switch found: the graph ran as it is")
    return comparison_of(rows, consumed.samples, source.description, notes)


# A TF1 layer's epsilon is not in the checkpoint; 1e-3 is TF1's default, and only keeps a
# dead channel's (variance 0) gap finite.
_EPSILON = 1e-3


def _settle(tf1: Any, gm: Any, plans: Sequence[Any], moments: dict[str, Any], ck: Any,
            expected: Mapping[str, Mapping[str, str]], samples: int,
            batches: Callable[[], Any], notes: list[str]) -> tuple[SelfCheck, dict[str, Any], int]:
    """The self-check: with `moments` in place (already assigned), one pass in inference mode
    (every training switch False) over the same samples; each layer's inputs must have the
    statistics about to be written. Off the fixed point (a graph whose inference path differs
    from the measured one), the inference moments are put in and checked again, at most once
    per layer. Returns the last check, the moments it was made for, and the passes spent."""
    def check_once(current: dict[str, Any]) -> tuple[SelfCheck, dict[str, Any]]:
        seen = tf1.run_pass(gm, plans, batches(), None, training=False)
        stored, inferred = {}, {}
        for p in plans:
            name = p.group.name
            mine = _new_stats(ck, p.group, expected, current[name])
            stored[name] = (mine["moving_mean"].new, mine["moving_variance"].new, _EPSILON)
            if name in seen:
                got = _new_stats(ck, p.group, expected, seen[name])
                inferred[name] = (got["moving_mean"].new, got["moving_variance"].new)
        return compare(stored, inferred, samples), seen

    check, seen = check_once(moments)
    first = check.worst
    changed = 0
    # Each pass settles at least one more layer in graph order, as an inference graph's
    # layer-after-layer measurement does.
    while not check.passed and changed < max(MAX_SETTLE_PASSES, len(plans)):
        moments = {**moments, **seen}
        _assign_all(tf1, gm, plans, moments, ck, expected)
        changed += 1
        check, seen = check_once(moments)
    if changed and first is not None:
        notes.append(
            f"the measured statistics were {first.worst:.2g} off the graph's inference path "
            f"(worst: {first.layer}); {changed} more inference pass(es) over the same samples "
            "put in the statistics inference itself gives")
    return check, moments, changed


def _graph_names(ck: Any) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, ...]]]:
    """From the graph beside the checkpoint (if any), per BN layer: role -> variable name,
    and the tensors it normalizes."""
    from ckptdoc.graph_bn import analyze

    graph = ck.graph()
    layers = analyze(graph).layers if graph else ()
    return ({layer.name: dict(layer.members) for layer in layers},
            {layer.name: layer.inputs for layer in layers})


def _stored(ck: Any, group: Any, expected: Mapping[str, Mapping[str, str]], role: str,
            channels: int) -> tuple[str, np.ndarray]:
    """(key, stored value) of a moving statistic; a missing one (BN001) is named as the graph
    names it and stands at its initial value (0 / 1), float32 as the graph creates it."""
    key = group.key(role)
    if key:
        return str(key), ck.read(str(key))
    name = expected[group.name][role]
    return name, np.full(channels, 0.0 if role == "moving_mean" else 1.0, np.float32)


@dataclass(frozen=True)
class _NewStat:
    key: str
    old: np.ndarray
    new: np.ndarray


def _new_stats(ck: Any, group: Any, expected: Mapping[str, Mapping[str, str]],
               m: Any) -> dict[str, _NewStat]:
    """Role -> (checkpoint key, stored value, measured value in the stored shape and dtype).
    Refuses a layer whose graph input has another channel count than the checkpoint holds."""
    out = {}
    for role, measured in (("moving_mean", m.mean), ("moving_variance", m.variance)):
        key, old = _stored(ck, group, expected, role, m.mean.size)
        if measured.size != old.size:
            raise RecalibrationError(
                f"{group.name}: the graph's input has {measured.size} channels, the checkpoint "
                f"stores {old.size}"
            )
        out[role] = _NewStat(key, old, measured.reshape(old.shape).astype(old.dtype))
    return out


def _assign_all(tf1: Any, gm: Any, plans: Sequence[Any], moments: Mapping[str, Any],
                ck: Any, expected: Mapping[str, Mapping[str, str]]) -> None:
    for p in plans:
        stats = _new_stats(ck, p.group, expected, moments[p.group.name])
        tf1.assign(gm, p, {role: s.new for role, s in stats.items()})


def _normalizes_with_moving_stats(gm: Any, plans: Sequence[Any], moments: Mapping[str, Any],
                                  probe: Sequence[Batch], ck: Any,
                                  expected: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether the BN layers of the (training-mode, deterministic) pass read their moving
    statistics: one batch measured before and after the new statistics are put in place. With
    batch statistics nothing downstream changes; in inference mode the layers after the first
    one do. The new statistics stay in place either way (the after-evaluation uses them)."""
    from ckptdoc.recalibrate import tf1

    before = tf1.run_pass(gm, plans, probe, None)
    _assign_all(tf1, gm, plans, moments, ck, expected)
    after = tf1.run_pass(gm, plans, probe, None)
    return not _settled(before, after)


def _random(tf1: Any, gm: Any, plans: Sequence[Any], probe: Sequence[Batch],
            training: bool) -> bool:
    """Whether two passes over the same batch, nothing changed in between, disagree."""
    return not _settled(tf1.run_pass(gm, plans, probe, None, training=training),
                        tf1.run_pass(gm, plans, probe, None, training=training))


def _settled(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float = 1e-6) -> bool:
    for name, m in a.items():
        n = b[name]
        scale = np.sqrt(np.maximum(m.variance, 1e-12))
        if np.any(np.abs(m.mean - n.mean) > rtol * scale + 1e-12) or np.any(
            np.abs(m.variance - n.variance) > rtol * np.maximum(m.variance, 1e-12)
        ):
            return False
    return True





# A statistic that moved this much changes an inference-mode prediction measurably.
_MOVED = 1e-3


def _blind_check(before: EvalResult | None, after: EvalResult | None,
                 changes: Sequence[LayerChange]) -> str | None:
    """Says so when the held-out check could not see the statistics: they moved, the
    predictions did not change at all, so the evaluation ran BN in training mode (batch
    statistics), through a switch ckptdoc did not recognise or a value that stays True."""
    if before is None or after is None:
        return None
    if not any(max(c.mean_rel_change, c.var_rel_change) > _MOVED for c in changes):
        return None
    if before.loss != after.loss or before.accuracy != after.accuracy:
        return None
    return ("the held-out check is blind: the statistics moved but the predictions did not "
            "change at all, so the graph evaluates BN with batch statistics (a training "
            "switch ckptdoc did not recognise, or one that stays True). The statistics are "
            "measured either way; name the switch with --set NAME=true (True for the pass, False "
            "for the check)")

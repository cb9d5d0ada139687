"""`recalibrate_bundle`: recalibrate a TensorFlow checkpoint bundle and write a patched copy.

Two kinds of input, told apart by the bundle itself:
- TF1 name-based checkpoints (`Saver`): the graph comes from the `.meta` beside the prefix, or
  from `--model module:function` that rebuilds it (see `tf1.py`);
- TF2 object checkpoints (`tf.train.Checkpoint` of a Keras model): `--model` builds the model,
  the Keras engine recalibrates it (see `tf2_checkpoint.py`).
Either way the result is a set of new values for checkpoint keys; `write_bundle` puts them in
a copy of the input (see `bundle_writer.py`), every other byte unchanged. The before / after
report, held-out evaluation and refusal-to-make-worse are the Keras path's own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate import RecalibrationError
from ckptdoc.recalibrate.data import Batch, Budget, Consumed, DataSource, from_object
from ckptdoc.recalibrate.report import (
    WORSE_CAUSES,
    EvalResult,
    LayerChange,
    RecalibrationReport,
)


@dataclass(frozen=True)
class BundleResult:
    """What recalibration computed: the report and the new value of each checkpoint key."""

    prefix: Path
    kind: str  # "tf1-graph" or "tf2-object"
    report: RecalibrationReport
    replacements: Mapping[str, np.ndarray]
    #: New keys: statistics the input lacked (BN001), written beside the others.
    additions: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


def is_bundle(path: str | Path) -> bool:
    """True for a TF bundle prefix, its .index / .data / .meta file or a checkpoint folder."""
    from ckptdoc.formats.resolve import resolve

    try:
        return resolve(Path(path)).kind == "bundle"
    except CheckpointError:
        return False


def parse_pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """`NAME=VALUE` strings -> dict; the split is at the last `=` (tensor names hold none)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value:
            raise RecalibrationError(f"{option} {item!r}: expected PLACEHOLDER=VALUE")
        out[name.strip()] = value.strip()
    return out


# --- data ------------------------------------------------------------------------------------


def _npz_files(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_file() and p.suffix == ".npz":
        return [p]
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".npz")
    return []


def feed_source(
    spec: Any, keys: set[str], *, batch_size: int, x_key: str, y_key: str
) -> DataSource:
    """The data for the feeds: dict batches `{key: array}` when several `.npz` keys are fed."""
    from ckptdoc.recalibrate.data import _npz_keys, _npz_member

    if len(keys) <= 1 or not isinstance(spec, str | Path) or not _npz_files(str(spec)):
        key = next(iter(keys)) if keys else x_key
        return from_object(spec, batch_size=batch_size, x_key=key, y_key=y_key)
    files = _npz_files(str(spec))
    for f in files:
        missing = keys - set(_npz_keys(f))
        if missing:
            raise RecalibrationError(f"{f}: no array {', '.join(sorted(missing))} for --feed")

    def factory(bs: int) -> Iterator[Batch]:
        for f in files:
            arrays = {k: _npz_member(f, k) for k in keys}
            y = _npz_member(f, y_key) if y_key in _npz_keys(f) else None
            n = len(next(iter(arrays.values())))
            for i in range(0, n, bs):
                x = {k: np.ascontiguousarray(a[i : i + bs]) for k, a in arrays.items()}
                yield Batch(x, None if y is None else np.asarray(y[i : i + bs]))

    return DataSource(f"{spec} ({', '.join(sorted(keys))})", factory)


# --- TF1 ---------------------------------------------------------------------------------------


def _tf1(
    prefix: Path,
    ck: Any,
    groups: Sequence[Any],
    data: Any,
    *,
    model_spec: str | None,
    feeds: Mapping[str, str],
    sets: Mapping[str, str],
    predictions: str | None,
    batch_size: int,
    budget: Budget,
    eval_data: Any,
    x_key: str,
    y_key: str,
    progress: Callable[[int], None] | None,
) -> BundleResult:
    from ckptdoc.formats.resolve import bundle_file
    from ckptdoc.recalibrate import tf1

    started = time.perf_counter()
    meta = bundle_file(prefix, ".meta")
    gm = tf1.open_graph(
        prefix,
        meta=meta if meta.is_file() and model_spec is None else None,
        model_spec=model_spec,
        feeds=feeds,
        sets=sets,
        predictions=predictions,
    )
    expected, inputs = _graph_names(ck)
    try:
        plans, problems = tf1.plan_layers(gm, groups, expected, inputs)
        if problems:
            raise RecalibrationError("cannot recalibrate: " + "; ".join(problems))
        keys = set(gm.feeds)
        source = feed_source(data, keys, batch_size=batch_size, x_key=x_key, y_key=y_key)
        eval_source = (
            feed_source(eval_data, keys, batch_size=batch_size, x_key=x_key, y_key=y_key)
            if eval_data is not None
            else None
        )
        notes = list(gm.notes) + list(source.notes)
        if (spent := source.budget_note(budget)) is not None:
            notes.append(spent)

        def ev() -> EvalResult | None:
            if eval_source is not None:
                return tf1.evaluate(
                    gm, eval_source.batches(batch_size), f"eval data {eval_source.description}"
                )
            return tf1.evaluate(
                gm,
                source.budgeted(batch_size, budget, Consumed()),
                "calibration data (its labels)",
            )

        before = ev()
        if gm.predictions is None:
            notes.append(
                "no predictions tensor found (give --predictions): no before/after evaluation"
            )
        consumed = Consumed()
        moments = tf1.run_pass(
            gm, plans, source.budgeted(batch_size, budget, consumed), progress
        )
        if consumed.samples == 0:
            raise RecalibrationError(f"--data {source.description}: no samples")
        moved = [p.group.name for p in plans if tf1.stats_moved(gm, p, ck)]
        passes = 1
        if len(plans) > 1 and _normalizes_with_moving_stats(gm, plans, moments, source,
                                                             batch_size, ck, expected):
            # Inference graph (or a training switch left False): every BN layer normalizes
            # with its moving statistics during the pass, so a layer's input depends on the
            # statistics upstream. One pass would measure it behind layers still holding the
            # old (broken) values. Measure again with the new values in place until nothing
            # changes: each pass settles at least one more layer, as sequential mode does.
            for _ in range(len(plans)):
                previous = moments
                moments = tf1.run_pass(
                    gm, plans, source.budgeted(batch_size, budget, Consumed()), None
                )
                if set(moments) != set(previous):
                    raise RecalibrationError(
                        f"--data {source.description} could be read only once, but BN layers "
                        "in this graph normalize with their moving statistics, which takes "
                        "several passes: give data that can be read again (a file, a folder, "
                        "or a function that returns a new iterator)"
                    )
                passes += 1
                _assign_all(tf1, gm, plans, moments, ck, expected)
                if _settled(previous, moments):
                    break
            notes.append(
                "BN layers normalize with their moving statistics in this graph (an inference "
                "graph, or a training switch that stays False): statistics were measured layer "
                f"after layer, with the new values in place, {passes} passes until they stopped "
                "changing"
            )
        if moved:  # harmless (stats come from the inputs), but the user should know
            notes.append(
                f"the moving statistics of {', '.join(moved)} changed in the session during the "
                "pass: update ops run as part of the fetched tensors (control dependencies)"
            )
        replacements: dict[str, np.ndarray] = {}
        additions: dict[str, np.ndarray] = {}
        changes = []
        for p in plans:
            g = p.group
            stats = _new_stats(ck, g, expected, moments[g.name])
            mean, var = stats["moving_mean"], stats["moving_variance"]
            for s in (mean, var):
                (replacements if s.key in ck.tensors else additions)[s.key] = s.new
            if mean.key not in ck.tensors or var.key not in ck.tensors:
                notes.append(f"{g.name}: moving statistics the checkpoint lacked were added "
                             f"as {mean.key} and {var.key} (named as the graph names them)")
            tf1.assign(gm, p, {role: s.new for role, s in stats.items()})
            changes.append(LayerChange.build(g.name, moments[g.name].total, mean.old, mean.new,
                                             var.old, var.new))
            if g.extras:
                notes.append(f"{g.name}: {', '.join(sorted(g.extras))} left as they were")
        after = ev() if before is not None else None
    finally:
        gm.close()
    if consumed.exhausted and (budget.samples is not None or budget.batches is not None):
        notes.append(
            f"the data holds fewer samples than the budget: all {consumed.samples} were used"
        )
    report = RecalibrationReport(
        mode="precise" if passes == 1 else "sequential",
        samples=consumed.samples,
        batches=consumed.batches,
        passes=passes,
        budget_samples=budget.samples,
        budget_batches=budget.batches,
        data_exhausted=consumed.exhausted,
        data=source.description,
        variance_convention=tf1.VARIANCE_CONVENTION,
        seconds=time.perf_counter() - started,
        layers=tuple(changes),
        eval_before=before,
        eval_after=after,
        notes=tuple(notes),
    )
    return BundleResult(prefix, "tf1-graph", report, replacements, additions)


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
                                  source: Any, batch_size: int, ck: Any,
                                  expected: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether the BN layers of the pass read their moving statistics: one batch measured
    before and after the new statistics are put in place. In training mode (batch statistics)
    nothing downstream changes; in inference mode the layers after the first one do. The new
    statistics stay in place either way (the after-evaluation uses them)."""
    from ckptdoc.recalibrate import tf1

    probe = list(islice(source.batches(batch_size), 1))
    before = tf1.run_pass(gm, plans, probe, None)
    _assign_all(tf1, gm, plans, moments, ck, expected)
    after = tf1.run_pass(gm, plans, probe, None)
    return not _settled(before, after)


def _settled(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float = 1e-6) -> bool:
    for name, m in a.items():
        n = b[name]
        scale = np.sqrt(np.maximum(m.variance, 1e-12))
        if np.any(np.abs(m.mean - n.mean) > rtol * scale + 1e-12) or np.any(
            np.abs(m.variance - n.variance) > rtol * np.maximum(m.variance, 1e-12)
        ):
            return False
    return True


# --- TF2 ---------------------------------------------------------------------------------------


def _tf2(
    prefix: Path,
    ck: Any,
    data: Any,
    *,
    model_spec: str | None,
    mode: str,
    batch_size: int,
    budget: Budget,
    eval_data: Any,
    x_key: str,
    y_key: str,
    progress: Callable[[int], None] | None,
) -> BundleResult:
    from ckptdoc.recalibrate import tf2_checkpoint as t2
    from ckptdoc.recalibrate.api import recalibrate
    from ckptdoc.recalibrate.engine import find_bn_layers
    from ckptdoc.recalibrate.model_io import build_model

    if model_spec is None:
        raise RecalibrationError(
            f"{prefix} is a TF2 object checkpoint: pass --model module:function (or "
            "file.py:function) that builds the Keras model"
        )
    model = build_model(model_spec)
    root = t2.restore(model, prefix, ck)
    layers = find_bn_layers(model)
    variables = [v for bn in layers for v in bn.stat_variables().values()]
    keys = t2.stat_keys(model, root, variables)
    t2.check_keys(ck, keys, [np.asarray(v.numpy()) for v in variables])
    report = recalibrate(
        model,
        data,
        mode=mode,
        batch_size=batch_size,
        samples=budget.samples,
        batches=budget.batches,
        eval_data=eval_data,
        progress=progress,
        x_key=x_key,
        y_key=y_key,
    )
    replacements = {}
    for key, v in zip(keys, variables, strict=True):
        stored = ck.tensors[key].dtype
        replacements[key] = np.asarray(v.numpy()).astype(stored)
    report = dataclasses.replace(
        report, notes=(*report.notes, f"model restored from the checkpoint's {root!r} object")
    )
    return BundleResult(prefix, "tf2-object", report, replacements)


# --- public entry points -----------------------------------------------------------------------


def recalibrate_bundle(
    path: str | Path,
    data: Any,
    *,
    model_spec: str | None = None,
    feeds: Mapping[str, str] | None = None,
    sets: Mapping[str, str] | None = None,
    predictions: str | None = None,
    mode: str = "precise",
    batch_size: int = 64,
    samples: int | None = 4096,
    batches: int | None = None,
    eval_data: Any = None,
    x_key: str = "x",
    y_key: str = "y",
    progress: Callable[[int], None] | None = None,
) -> BundleResult:
    """Compute exact BN statistics for a TF1 or TF2 checkpoint bundle; nothing is written.

    `feeds` maps placeholder names to data keys (`{"x:0": "x"}`), `sets` fixes placeholders
    (`{"is_training:0": "true"}`); both are TF1 only. Pass the result to `write_bundle`.
    """
    from ckptdoc.auditor import evidence_groups
    from ckptdoc.formats import open_checkpoint
    from ckptdoc.formats.resolve import resolve

    resolved = resolve(Path(path))
    if resolved.kind != "bundle":
        raise RecalibrationError(f"{path}: not a TensorFlow checkpoint bundle")
    prefix = resolved.path
    budget = Budget(samples=samples, batches=batches)
    with open_checkpoint(prefix) as ck:
        if ck.format == "tf2-object":
            if feeds or sets:
                raise RecalibrationError("--feed / --set apply to TF1 graph checkpoints only")
            return _tf2(
                prefix,
                ck,
                data,
                model_spec=model_spec,
                mode=mode,
                batch_size=batch_size,
                budget=budget,
                eval_data=eval_data,
                x_key=x_key,
                y_key=y_key,
                progress=progress,
            )
        if mode != "precise":
            raise RecalibrationError("TF1 graph checkpoints support --mode precise only")
        groups = evidence_groups(ck)
        if not groups:
            raise RecalibrationError(f"{prefix}: no batch-norm layer in the checkpoint")
        return _tf1(
            prefix,
            ck,
            groups,
            data,
            model_spec=model_spec,
            feeds=feeds or {},
            sets=sets or {},
            predictions=predictions,
            batch_size=batch_size,
            budget=budget,
            eval_data=eval_data,
            x_key=x_key,
            y_key=y_key,
            progress=progress,
        )


def write_bundle(
    result: BundleResult, dest: str | Path, check: Callable[[Path], None] | None = None
) -> list[str]:
    """Write the recalibrated copy at prefix `dest` (atomically; see `bundle_writer`).

    `check(tmp_prefix)` runs on the staged copy before anything is moved into place; raising
    there leaves nothing behind. Returns notes (e.g. a `checkpoint` state file left alone).
    """
    from ckptdoc.recalibrate.bundle_writer import staged_bundle, write_patched_bundle

    with staged_bundle(result.prefix, Path(dest)) as staged:
        write_patched_bundle(result.prefix, staged.prefix, result.replacements, result.additions)
        if check is not None:
            check(staged.prefix)
    return staged.notes


__all__ = ["BundleResult", "is_bundle", "parse_pairs", "recalibrate_bundle", "write_bundle"]


# --- the `ckptdoc recalibrate` command for bundles ----------------------------------------------


def run_cli(
    model_path: Path,
    output: Path | None,
    *,
    data: str,
    model_spec: str | None,
    feeds: Sequence[str],
    sets: Sequence[str],
    predictions: str | None,
    in_place: bool,
    mode: str,
    batch_size: int,
    samples: int | None,
    batches: int | None,
    eval_data: str | None,
    x_key: str,
    y_key: str,
    force: bool,
    as_json: bool,
    show_progress: bool,
) -> int:
    """`ckptdoc recalibrate` on a TF checkpoint bundle; same exit codes and report as Keras."""
    import os

    from ckptdoc.formats.resolve import resolve
    from ckptdoc.recalibrate import cli
    from ckptdoc.recalibrate.bundle_writer import default_output
    from ckptdoc.recalibrate.report import render

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if in_place:
        raise RecalibrationError(
            "--in-place is not supported for checkpoint bundles: the output is a new prefix "
            "(default: a sibling folder `<dir>.recalibrated/`); use --output to choose it"
        )
    prefix = resolve(Path(model_path)).path
    dest = output or default_output(prefix)
    result = cli._with_progress(
        show_progress,
        lambda cb: recalibrate_bundle(
            prefix,
            data,
            model_spec=model_spec,
            feeds=parse_pairs(feeds, "--feed"),
            sets=parse_pairs(sets, "--set"),
            predictions=predictions,
            mode=mode,
            batch_size=batch_size,
            samples=samples,
            batches=batches,
            eval_data=eval_data,
            x_key=x_key,
            y_key=y_key,
            progress=cb,
        ),
        total=samples,
        passes_hint=mode,
    )
    report = result.report
    out: dict[str, Any] = {
        "input": str(prefix),
        "output": None,
        "written": False,
        "refused": None,
        "audit": None,
        "report": report.to_dict(),
    }
    refusal: str | None = None
    if report.got_worse:
        refusal = (
            "held-out results are WORSE after recalibration "
            f"({cli._eval_line(report.eval_before)} before, "
            f"{cli._eval_line(report.eval_after)} after). Possible causes: {WORSE_CAUSES}. "
            "Nothing written" + ("" if not force else "; --force: writing anyway")
        )
    if refusal and not force:
        out["refused"] = refusal
        return cli._finish(out, report, as_json, render, refusal, cli.EXIT_FINDINGS)
    audit: dict[str, Any] = {}

    def check(tmp_prefix: Path) -> None:
        audit.update(cli._audit(tmp_prefix))
        errors = audit.get("errors", [])
        if errors and not force:
            raise cli._Refused(
                "the audit of the recalibrated checkpoint still finds errors: "
                + "; ".join(errors)
                + ". Nothing written"
            )

    try:
        notes = write_bundle(result, dest, check)
    except cli._Refused as exc:
        out.update(audit=audit, refused=str(exc))
        return cli._finish(out, report, as_json, render, str(exc), cli.EXIT_FINDINGS)
    if notes:
        report = dataclasses.replace(report, notes=(*report.notes, *notes))
        out["report"] = report.to_dict()
    out.update(output=str(dest), written=True, audit=audit)
    if refusal:
        out["warning"] = refusal
    return cli._finish(out, report, as_json, render, refusal if force else None, cli.EXIT_OK)

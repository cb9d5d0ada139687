"""What a file proves about how each BN layer was trained. Knows training conventions (train
ops, update ops, learning-phase switches, momentum defaults), nothing about bytes or rules.

`from_graph` turns what `graph_bn` found in a graph into a layer's `Evidence`; `with_training`
adds the step counter and momentum the file records; `check_steps` drops a step count that the
values themselves contradict. The rules then decide with these facts
instead of guessing from values alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ckptdoc.checkpoint import StepCount
from ckptdoc.groups import TRACKED, BNGroup

__all__ = ["with_training", "with_tracking", "check_steps", "DEFAULT_MOMENTUM"]

#: Keras (every version), tf-keras and `tf.compat.v1.layers` default to 0.99.
DEFAULT_MOMENTUM = 0.99


def with_training(groups: list[BNGroup], steps: StepCount | None) -> list[BNGroup]:
    """Add the step counter and each layer's momentum (config, else graph, else the default)
    to its evidence."""
    out = []
    for group in groups:
        momentum, source = _momentum(group)
        evidence = replace(
            group.evidence,
            steps=steps.steps if steps is not None else None,
            steps_source=steps.source if steps is not None else "",
            momentum=momentum,
            momentum_source=source,
        )
        out.append(replace(group, evidence=evidence))
    return out


def _momentum(group: BNGroup) -> tuple[float | None, str]:
    """The layer's config, else the graph's update ops (already in its evidence), else the
    Keras default for Keras layers."""
    value = group.config.get("momentum")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value), "the layer's config"
    if group.evidence.momentum is not None:
        return group.evidence.momentum, "the graph"
    if group.evidence.found_by in _KERAS_EVIDENCE or group.class_name is not None:
        # A Keras layer: its framework default applies. Hand-written TF1 BN has none.
        return DEFAULT_MOMENTUM, "the Keras default, the file does not say"
    return None, ""


_KERAS_EVIDENCE = frozenset({"config", "structure", "object graph"})


def with_tracking(groups: list[BNGroup], read: Callable[[str], np.ndarray]) -> list[BNGroup]:
    """PyTorch layers: `num_batches_tracked` into the evidence. 0 proves BN never ran in
    training mode, so the running statistics were never updated."""
    out = []
    for group in groups:
        key = group.extras.get(TRACKED)
        tracked = None
        if key is not None:
            try:
                value = np.asarray(read(key))
            except Exception:  # noqa: BLE001 - an unreadable tensor is the rules' to report
                value = np.asarray([])
            if value.size == 1 and value.dtype.kind in "iu":
                tracked = int(value.reshape(()))
        if tracked is None:
            out.append(group)
            continue
        evidence = replace(group.evidence, tracked=tracked)
        if tracked == 0:
            evidence = replace(evidence, updates_run=False, updates_detail=(
                "num_batches_tracked is 0: BN never ran in training mode (the model stayed "
                "in eval() through training, or BN was frozen), so its running statistics "
                "were never updated"))
        out.append(replace(group, evidence=evidence))
    return out


def check_steps(
    groups: list[BNGroup], read: Callable[[str], np.ndarray]
) -> tuple[list[BNGroup], list[str]]:
    """Drop a step count the values contradict, with a note saying why.

    After k updates at momentum m a moving variance is `m**k * 1 + (1 - m**k) * (batch
    variances)`, so no channel can be below `m**k` (the share of the initial 1 still in it).
    A variance below that proves the count wrong for these statistics: a Keras 2.12+ file
    whose new optimizer saved `iteration = 0`, statistics rewritten by recalibration, a
    counter reset by a fine-tuning run. The values then decide, as if the file had no count.
    """
    out: list[BNGroup] = []
    notes: list[str] = []
    contradicted: tuple[BNGroup, float, float] | None = None
    for group in groups:
        weight = group.evidence.initial_weight
        key = group.members.get("moving_variance")
        if weight is None or weight < 0.01 or key is None:
            continue
        try:
            var = np.asarray(read(key), dtype=np.float64)
        except Exception:  # noqa: BLE001 - an unreadable tensor is the rules' to report
            continue
        finite = var[np.isfinite(var)]
        if finite.size and float(finite.min()) < weight * (1 - 1e-3) - 1e-7:
            contradicted = (group, weight, float(finite.min()))
            break
    if contradicted is None:
        return groups, notes
    group, weight, low = contradicted
    ev = group.evidence
    notes.append(
        f"the step count ({ev.steps} steps, {ev.steps_source}) contradicts the values: at "
        f"momentum {ev.momentum:g} every moving variance would still hold {weight:.0%} of its "
        f"initial 1, yet `{group.name}` has one of {low:.3g}. The count does not describe "
        "these statistics (a Keras 2.12+ optimizer that saves only `iteration = 0`, "
        "recalibrated statistics, a reset counter) and is not used; the values decide"
    )
    for g in groups:
        out.append(replace(g, evidence=replace(g.evidence, steps=None, steps_source="")))
    return out, notes

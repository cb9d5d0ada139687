"""What a file proves about how each BN layer was trained. Knows training conventions (train
ops, update ops, learning-phase switches, momentum defaults), nothing about bytes or rules.

`from_graph` turns what `graph_bn` found in a graph into a layer's `Evidence`; `with_training`
adds the step counter and momentum the file records. The rules then decide with these facts
instead of guessing from values alone.
"""

from __future__ import annotations

from dataclasses import replace

from ckptdoc.checkpoint import StepCount
from ckptdoc.graph_bn import GraphFacts, GraphLayer
from ckptdoc.groups import BNGroup, Evidence

__all__ = ["from_graph", "with_training", "DEFAULT_MOMENTUM"]

#: Keras (every version), tf-keras and `tf.compat.v1.layers` default to 0.99.
DEFAULT_MOMENTUM = 0.99


def from_graph(layer: GraphLayer, facts: GraphFacts) -> Evidence:
    """The update-op and training-switch evidence of one layer of a TF graph."""
    train = ", ".join(f"`{t}`" for t in facts.train_ops[:3])
    switch = next((s for s in layer.switches if s.default is False), None)
    if facts.train_ops and layer.update_ops:
        skipped = [u for u in layer.update_ops if u in facts.unwired]
        if skipped:
            listed = len(facts.update_collection)
            not_run = len(facts.collection_not_run)
            where = f" ({not_run} of the {listed} ops in UPDATE_OPS are not run)" if listed else ""
            return Evidence(
                "graph",
                False,
                f"the train op {train} does not depend on this layer's "
                f"{len(skipped)} moving-average update ops{where}",
                momentum=layer.momentum,
            )
        return Evidence(
            "graph",
            True,
            f"the train op {train} runs this layer's update ops",
            momentum=layer.momentum,
        )
    if facts.train_ops and layer.has_training_mode and not layer.update_ops:
        return Evidence("graph", False, "no op in the graph updates this layer's moving statistics")
    if not facts.train_ops and switch is not None:
        collected = set(layer.update_ops) & set(facts.update_collection)
        if not collected:
            return Evidence(
                "graph",
                None,
                "",
                f"BN switches on {switch.describe()}, and nothing in the file would run its "
                "moving-average updates (no train op, no UPDATE_OPS collection): the model most "
                "likely trained, and is served, with BN in inference mode, so 0 / 1 is what its "
                "weights learned with",
                momentum=layer.momentum,
            )
    return Evidence("graph", momentum=layer.momentum)


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

"""`assert_update_ops`: a TF1 graph's train op must run every BN layer's update ops.

Imports TensorFlow. The graph is exported as a MetaGraphDef and read by the same code the
audit uses on `.meta` files (`formats/graph.py`, `graph_bn.py`), so the check and the audit
agree on what a BN layer and an update op are: `UPDATE_OPS` entries and hand-made update lists
alike (any assign of a moving average computed from batch statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

from ckptdoc.formats.graph import graph_from_meta_bytes
from ckptdoc.graph_bn import analyze
from ckptdoc.guard.errors import UpdateOpsNotRunError

__all__ = ["UpdateOpsCheckHook", "assert_update_ops"]


def assert_update_ops(train_op: Any = None, graph: Any = None) -> None:
    """Raise `UpdateOpsNotRunError` naming the BN layers whose moving-average updates the
    train op would never run. `train_op`: an op or tensor (or a list of them), default the
    graph's `train_op` collection, else the last ops after the optimizer's apply ops.
    `graph`: default the train op's graph, else the default graph."""
    ops = [] if train_op is None else list(train_op) if isinstance(train_op, list | tuple) else [
        train_op
    ]
    names = [getattr(op, "op", op).name for op in ops]
    if graph is None:
        graph = getattr(getattr(ops[0], "op", ops[0]), "graph", None) if ops else None
        graph = graph or tf.compat.v1.get_default_graph()
    with graph.as_default():  # export works in graph mode only
        meta = tf.compat.v1.train.export_meta_graph(graph=graph, clear_devices=True)
    facts = analyze(graph_from_meta_bytes(meta.SerializeToString(), Path("<graph>")),
                    train_ops=names or None)
    if not facts.train_ops:
        raise ValueError("no train op given or found in the graph (no optimizer apply ops)")
    stuck = [layer.name for layer in facts.layers
             if any(u in facts.unwired for u in layer.update_ops)]
    if stuck:
        raise UpdateOpsNotRunError(stuck, list(facts.train_ops), len(facts.unwired))


class UpdateOpsCheckHook(tf.compat.v1.train.SessionRunHook):
    """Runs `assert_update_ops` when the session's graph is final (`begin()`), before the
    first step: `estimator.train(input_fn, hooks=[UpdateOpsCheckHook()])`."""

    def __init__(self, train_op: Any = None) -> None:
        self._train_op = train_op

    def begin(self) -> None:
        assert_update_ops(self._train_op, tf.compat.v1.get_default_graph())

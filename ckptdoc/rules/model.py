"""Rules about the model as a whole: is anything trained at all? Knows statistics, not formats.

A single BN layer at its initial values says nothing; every BN layer at its initial values says
the file was saved before training (or from the wrong variables). One layer at its initial
values among trained ones is a layer the training never used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ckptdoc.groups import BNGroup
from ckptdoc.rules.base import Finding, GroupValues, Severity, Tolerances
from ckptdoc.rules.checks import rule

_INITIAL = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}


@rule(
    "BN008",
    Severity.WARNING,
    "model looks untrained",
    """
Every batch-norm variable of every layer is exactly at its initial value: gamma 1, beta 0,
moving mean 0, moving variance 1. No training step changed any of them, so the file was most
likely saved before training, restored from the wrong checkpoint, or written from a fresh model
instead of the trained one.

Fix: check which model object was saved (e.g. `model.save()` called on a newly built model, or
an early-save callback), and that the path points at the final checkpoint. If the model is
meant to be untrained (a template, an architecture file), ignore this rule for that file.
""",
    fix="Check that the trained model, not a fresh one, was saved.",
    scope="model",
)
def _model_level_untrained(values: GroupValues, tol: Tolerances) -> None:
    """Group-level no-op: found by `untrained_findings` over all groups."""
    return None


@rule(
    "BN009",
    Severity.INFO,
    "layer never trained",
    """
This batch-norm layer is exactly at its initial values (gamma 1, beta 0, moving mean 0, moving
variance 1) while other layers of the model were trained. Training never used it: a branch the
forward pass skips, a head left from another task, or a layer created but never called. Harmless
if inference does not use it either; if it does, it does not normalize at all.
""",
    fix="Harmless if inference does not use the layer.",
    scope="model",
)
def _layer_level_untrained(values: GroupValues, tol: Tolerances) -> None:
    """Group-level no-op: found by `untrained_findings` over all groups."""
    return None


def untrained_findings(groups: list[BNGroup], read: Callable[[str], np.ndarray]) -> list[Finding]:
    """BN008 once for a model whose every BN layer is untouched, else BN009 per untouched layer."""
    status = [(g, _at_initial(GroupValues(g, read))) for g in groups]
    fresh = [g for g, initial in status if initial]
    if not fresh:
        return []
    if len(fresh) == len(groups):
        return [
            Finding(
                "BN008",
                Severity.WARNING,
                "(model)",
                f"all {len(groups)} BN layers are exactly at their initial values: saved "
                "before training?",
                {"layers": len(groups)},
                f"all {len(groups)} BN layers at gamma 1, beta 0, mean 0, variance 1",
            )
        ]
    return [
        Finding(
            "BN009",
            Severity.INFO,
            g.name,
            "gamma 1, beta 0, mean 0, variance 1 while other layers trained: unused layer?",
            {},
            "every member at its initial value",
        )
        for g in fresh
    ]


def _at_initial(values: GroupValues) -> bool:
    """Every present member exactly at its initial value; moving stats must be present."""
    if values.get("moving_mean") is None or values.get("moving_variance") is None:
        return False
    for role, init in _INITIAL.items():
        arr = values.as_float(role)
        if arr is not None and (arr.size == 0 or not np.all(arr == init)):
            return False
    return True

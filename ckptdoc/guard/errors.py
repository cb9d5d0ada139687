"""The errors the guards raise: what is broken, in which layers, why, and the fix. Plain
Python, so `except` clauses need no framework import."""

from __future__ import annotations

from ckptdoc.rules.checks import FIX_TF1_UPDATE_OPS, FIX_TF2_TRAINING_FLAG


class BatchNormNotUpdatingError(RuntimeError):
    """gamma / beta trained while the moving statistics stayed where they started."""

    def __init__(self, layers: list[str], steps: int) -> None:
        self.layers = layers
        self.steps = steps
        listed = ", ".join(layers)
        super().__init__(
            f"batch norm is not updating its moving statistics: after {steps} training steps "
            f"gamma / beta of {len(layers)} layer(s) changed but moving_mean / moving_variance "
            f"did not: {listed}. Inference will normalize with the initial 0 / 1 (ckptdoc rule "
            f"BN002).\nFix: {FIX_TF2_TRAINING_FLAG}"
        )


class UpdateOpsNotRunError(RuntimeError):
    """The train op does not depend on some BN layers' moving-average update ops."""

    def __init__(self, layers: list[str], train_ops: list[str], missing: int) -> None:
        self.layers = layers
        self.train_ops = train_ops
        listed = ", ".join(layers)
        ops = ", ".join(f"`{t}`" for t in train_ops) or "(none found)"
        super().__init__(
            f"the train op {ops} does not run the moving-average update ops of "
            f"{len(layers)} batch-norm layer(s) ({missing} update ops never run): {listed}. "
            f"Their moving statistics would stay at 0 / 1 (ckptdoc rule BN002).\n"
            f"Fix: {FIX_TF1_UPDATE_OPS}"
        )

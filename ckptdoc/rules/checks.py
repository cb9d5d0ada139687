"""The BN rules: each a small check declared with its code, severity, title and explanation.

A check looks at one group's values and returns None (fine) or `(message, details)`, where
`details` carries the numbers that tripped it.
"""

from __future__ import annotations

import numpy as np

from ckptdoc.rules.base import GroupValues, Rule, Severity, Tolerances, Tripped

RULES: dict[str, Rule] = {}

Result = Tripped | None

FIX_TF1_UPDATE_OPS = (
    "TF1 (tf.compat.v1.layers / slim): the moving averages are updated by ops in the "
    "UPDATE_OPS collection; build the train op inside "
    "`with tf.control_dependencies(\n"
    "    tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):`."
)
FIX_TF2_TRAINING_FLAG = (
    "TF2 / Keras custom loop: call the model with `model(x, training=True)` in the training "
    "step; layers with `trainable=False` never update their statistics."
)
_FIX_RECALIBRATE = (
    "To repair an existing model without retraining: `ckptdoc recalibrate MODEL --data DATA` "
    "streams training data through it and writes exact population statistics."
)


def rule(code: str, severity: Severity, title: str, explanation: str, *, fix: str,  # type: ignore[no-untyped-def]
         scope: str = "layer"):
    """Register a check under its code, bandit-style: the id sits next to the code, with its
    one-line fix and scope (see `Rule`)."""

    def register(check):  # type: ignore[no-untyped-def]
        RULES[code] = Rule(code, severity, title, explanation.strip(), check, fix, scope)
        return check

    return register


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@rule(
    "BN001",
    Severity.ERROR,
    "moving statistics missing",
    f"""
A batch-norm layer has gamma and/or beta in the file but no moving_mean and/or moving_variance.
Inference needs the moving statistics; whatever loads this checkpoint keeps its initial values
(mean 0, variance 1) or fails to restore.

Usual cause: a TF1 `tf.compat.v1.train.Saver(var_list=tf.compat.v1.trainable_variables())`
(or any var_list without the non-trainable variables). The moving statistics are not
trainable, so they are not saved.

Fix: save with `Saver()` (all global variables) or add
`tf.compat.v1.global_variables()` / the `moving_*` variables to the var_list. If the training
run is gone, {_FIX_RECALIBRATE[0].lower()}{_FIX_RECALIBRATE[1:]}
""",
    fix="Save all variables, not only trainable ones; or run `ckptdoc recalibrate`.",
)
def missing_stats(values: GroupValues, tol: Tolerances) -> Result:
    members = values.group.members
    missing = [r for r in ("moving_mean", "moving_variance") if not members.get(r)]
    if not missing or not (members.get("gamma") or members.get("beta")):
        return None
    if values.group.evidence.batch_stats_only:
        return None  # the graph has no moving statistics to save at all: BN011
    saved = " and ".join(r for r in ("gamma", "beta") if members.get(r))
    return Tripped(
        f"{' and '.join(missing)} missing, {saved} saved",
        "written by a trainable-only Saver?",
        {"missing": missing},
    )


@rule(
    "BN002",
    Severity.ERROR,
    "moving statistics never updated",
    f"""
The moving statistics are exactly at their initial values (every mean 0.0, every variance 1.0)
while the layer's gamma / beta were trained, or a zero-debias `local_step` is 0. The update
ops never ran: in inference mode this layer does not normalize at all, and predictions are
garbage although training looked fine.

Usual causes:
- {FIX_TF1_UPDATE_OPS}
- {FIX_TF2_TRAINING_FLAG}

When the checkpoint comes with its TF graph (`model.ckpt.meta`, a TF1 `saved_model.pb`),
ckptdoc reads it and says which case it is: "the train op `Adam` does not depend on this
layer's 2 moving-average update ops" is proof of the first cause.

Not always a bug: a model trained with BN in inference mode the whole time (a TF2 loop without
`training=True`, `trainable=False` layers, or tf.keras layers in a TF1 graph / Estimator that
never fed `keras_learning_phase`, a placeholder that defaults to False) learned its weights
*with* mean 0 / variance 1, and its inference output is what training saw. When the graph
shows BN switching on such a placeholder and nothing in the file would run the updates (no
train op, no UPDATE_OPS collection), this finding is a warning, not an error.

To tell the two apart by hand, compare the model's accuracy on held-out data with
`training=False` against `training=True` (or against its training-time metrics): if inference
mode is far worse, the statistics are broken. `ckptdoc recalibrate` measures exactly this
before it writes and refuses to make held-out results worse.

{_FIX_RECALIBRATE}
""",
    fix="TF1: make the train op depend on UPDATE_OPS; TF2: call the model with "
        "training=True; PyTorch: call model.train() before training steps. Then retrain, or "
        "run `ckptdoc recalibrate`, which checks on held-out data that the model really was "
        "broken.",
)
def never_updated(values: GroupValues, tol: Tolerances) -> Result:
    mean, var = values.as_float("moving_mean"), values.as_float("moving_variance")
    if mean is None or var is None or mean.size == 0:
        return _debias_never_stepped(values)
    evidence = values.group.evidence
    # `tf.train.ExponentialMovingAverage` of a tensor starts its average at 0, variance too.
    ema_start = evidence.updates_run is False and np.all(var == 0.0)
    if not (np.all(mean == 0.0) and (np.all(var == 1.0) or ema_start)):
        return _debias_never_stepped(values)
    gamma, beta = values.as_float("gamma"), values.as_float("beta")
    trained = [
        name
        for name, arr, init in (("gamma", gamma, 1.0), ("beta", beta, 0.0))
        if arr is not None and arr.size and np.max(np.abs(arr - init)) > tol.trained_param
    ]
    if (gamma is not None or beta is not None) and not trained:
        return None  # nothing trained at all: a freshly initialised layer, not this bug
    why = f"{' and '.join(trained)} trained" if trained else "no gamma / beta to compare"
    details: dict[str, object] = {"trained": trained, "found_by": evidence.found_by}
    if evidence.updates_run is False:
        details["proof"] = evidence.updates_detail
        start = "variance all 0 (where a moving average starts)" if ema_start else "variance all 1"
        return Tripped(
            f"mean all 0, {start}, {why}",
            f"the update ops never ran: {evidence.updates_detail} (proven by the graph)"
            if evidence.tracked is None else f"{evidence.updates_detail} (proven by the file)",
            details,
        )
    if evidence.inference_mode:
        details["inference_mode"] = evidence.inference_mode
        return Tripped(
            f"mean all 0, variance all 1, {why}",
            f"{evidence.inference_mode}. This rests on the graph file beside the checkpoint, "
            "which is evidence, not proof (nothing that loads the checkpoint reads it): "
            "confirm with `ckptdoc recalibrate --eval-data`, which refuses when recalibration "
            "makes held-out results worse",
            details,
            at_most=Severity.WARNING,
        )
    cause = (
        "the updates never ran, or BN was trained in inference mode "
        "(`ckptdoc rule BN002` tells them apart)"
    )
    if evidence.updates_run is True:
        cause = (
            f"{evidence.updates_detail}, yet they never changed the statistics: BN most likely "
            "ran in inference mode during training (a training switch never fed True)"
        )
    return Tripped(f"mean all 0, variance all 1, {why}", cause, details)


def _debias_never_stepped(values: GroupValues) -> Result:
    """A zero-debias `local_step` of 0: that average was never updated, whatever it holds."""
    for name, step in values.present().items():
        if name.endswith("local_step") and step.size and np.all(step == 0):
            return Tripped(
                f"zero-debias {name} is 0", "the moving-average update never ran", {name: 0}
            )
    return None


@rule(
    "BN003",
    Severity.ERROR,
    "NaN or Inf in batch-norm variables",
    f"""
A batch-norm variable holds NaN or infinite values. Every output that passes through the layer
becomes NaN. Usual causes: a diverged training run (too high a learning rate, fp16 overflow),
a division by a zero variance in custom code, or a corrupted conversion.

Fix: restore an earlier checkpoint from before the divergence. If only the moving statistics
are affected, {_FIX_RECALIBRATE[0].lower()}{_FIX_RECALIBRATE[1:]}
""",
    fix="Restore a checkpoint from before training diverged.",
)
def not_finite(values: GroupValues, tol: Tolerances) -> Result:
    bad = {}
    for name, arr in values.present().items():
        if np.issubdtype(arr.dtype, np.floating):
            count = int(np.count_nonzero(~np.isfinite(arr)))
            if count:
                bad[name] = count
    if not bad:
        return None
    where = ", ".join(f"{n} ({c} of {values.get(n).size})" for n, c in bad.items())  # type: ignore[union-attr]
    return Tripped(f"non-finite values in {where}", "", {"non_finite": bad})


@rule(
    "BN004",
    Severity.ERROR,
    "negative moving variance",
    f"""
A moving variance is negative. A variance cannot be: `sqrt(moving_variance + epsilon)` is NaN
for it at inference. Usual causes: hand-written update code that subtracts, a bad conversion
from another framework (e.g. storing log-variance or standard deviation with a sign), or
corruption.

Fix: find the conversion or custom update at fault;
{_FIX_RECALIBRATE[0].lower()}{_FIX_RECALIBRATE[1:]}
""",
    fix="A variance cannot be negative: check conversion or custom update code.",
)
def negative_variance(values: GroupValues, tol: Tolerances) -> Result:
    var = values.as_float("moving_variance")
    if var is None:
        return None
    negative = var < 0
    count = int(np.count_nonzero(negative))
    if not count:
        return None
    return Tripped(
        f"{count} of {var.size} channels have a negative variance (min {_fmt(var.min())})",
        "",
        {"negative_channels": count, "min_variance": float(var.min())},
    )


@rule(
    "BN005",
    Severity.WARNING,
    "moving statistics barely moved",
    f"""
The moving statistics are close to, but not exactly at, their initial values 0 / 1. The update
ran, but too few times for its decay: after k updates with decay d the moving average has
gone only `1 - d**k` of the way (slim's default 0.999 over 500 steps: 39%). Inference then
normalizes with statistics that are mostly the initial 0 / 1.

When the file records its step count (Keras 3 `iterations`, TF1 `global_step`, tf-keras
`iter`) and a momentum (the layer's config or graph, else for Keras layers the Keras default
0.99, said as such; hand-written TF1 BN has no default),
the rule computes `momentum**steps`, the share of the initial value still in each average,
and fires when it is at least `initial_weight` (default 0.1: Keras 3 `fit` for 192 steps at
0.99 leaves 14.5%, enough to ruin a small model's inference), whatever the values look like.
A step count the values contradict (a variance below `momentum**steps`, impossible after
that many updates from 1) is not used, and a note says so. A step count that says the
averages converged turns a near-0 / 1 finding into information: the inputs are most likely
standardized already.
"Initial value" means the value when the counted steps began: 0 / 1 for a model trained from
scratch, the previous statistics for a run that fine-tuned a trained model (then the warning
says so, and the statistics may well be fine).

Fix: lower the decay (momentum 0.9-0.99 for short runs), train longer, or
{_FIX_RECALIBRATE[0].lower()}{_FIX_RECALIBRATE[1:]} The tolerance is `barely_moved`.
""",
    fix="Lower the BN decay / momentum, train longer, or run `ckptdoc recalibrate`.",
)
def barely_moved(values: GroupValues, tol: Tolerances) -> Result:
    mean, var = values.as_float("moving_mean"), values.as_float("moving_variance")
    if mean is None or var is None or mean.size == 0 or var.size == 0:
        return None
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        return None
    if np.all(mean == 0.0) and np.all(var == 1.0):
        return None  # exactly at init: BN002's case
    evidence = values.group.evidence
    weight = evidence.initial_weight
    if weight is not None and weight >= tol.initial_weight:
        # The file says how far the averages got, whatever the values look like.
        return Tripped(
            f"after {evidence.steps} steps ({evidence.steps_source}) at momentum "
            f"{evidence.momentum:g} ({evidence.momentum_source}), {weight:.0%} of each moving "
            "statistic is still its initial value",
            "decay too high for the run (if this run fine-tuned a trained model, its "
            "statistics are mostly that model's, which may be fine)",
            {"steps": evidence.steps, "momentum": evidence.momentum,
             "initial_weight": weight},
        )
    mean_dev, var_dev = float(np.max(np.abs(mean))), float(np.max(np.abs(var - 1.0)))
    if mean_dev > tol.barely_moved or var_dev > tol.barely_moved:
        return None
    if weight is not None and weight < 0.01 and "default" not in evidence.momentum_source:
        # The step count says the averages converged: stats near 0 / 1 then most likely
        # describe standardized inputs. Evidence explains, it does not remove: info, said so.
        return Tripped(
            f"max |mean| {_fmt(mean_dev)}, max |var - 1| {_fmt(var_dev)}: within "
            f"{tol.barely_moved:g} of the initial 0 / 1",
            f"yet after {evidence.steps} steps ({evidence.steps_source}) at momentum "
            f"{evidence.momentum:g} ({evidence.momentum_source}) the averages converged: the "
            "inputs are most likely standardized already (this rests on the file's step "
            "counter)",
            {"max_abs_mean": mean_dev, "max_abs_variance_minus_1": var_dev,
             "steps": evidence.steps, "initial_weight": weight},
            at_most=Severity.INFO,
        )
    return Tripped(
        f"max |mean| {_fmt(mean_dev)}, max |var - 1| {_fmt(var_dev)}: within "
        f"{tol.barely_moved:g} of the initial 0 / 1",
        "decay too high for the run?",
        {"max_abs_mean": mean_dev, "max_abs_variance_minus_1": var_dev},
    )


@rule(
    "BN006",
    Severity.INFO,
    "channels with near-zero variance",
    """
Some channels have a moving variance at or below `dead_variance` (default 1e-6). The unit feeding
them outputs a constant: a dead ReLU, a pruned filter, or zero padding upstream. Common in
healthy trained models (real models carry channels at 1e-36), so this is information, not an
error; many such channels may point at a learning-rate or initialisation problem.
""",
    fix="Usually harmless: dead units upstream.",
)
def dead_channels(values: GroupValues, tol: Tolerances) -> Result:
    var = values.as_float("moving_variance")
    if var is None or var.size == 0:
        return None
    dead = (var >= 0) & (var <= tol.dead_variance)
    count = int(np.count_nonzero(dead))
    if not count or (np.all(var == 1.0)):
        return None
    mean = values.as_float("moving_mean")
    if values.group.evidence.updates_run is False and mean is not None and np.all(mean == 0):
        return None  # an average that never started (BN002), not dead units
    return Tripped(
        f"{count} of {var.size} channels have variance <= {tol.dead_variance:g} "
        f"(min {_fmt(float(var.min()))})",
        "dead units upstream",
        {"dead_channels": count, "channels": int(var.size)},
    )


@rule(
    "BN007",
    Severity.ERROR,
    "members disagree in shape",
    """
The variables of one batch-norm layer do not all have the same shape. Every one of gamma, beta,
moving_mean and moving_variance holds one value per channel, so they must agree; otherwise the
checkpoint will not restore into the model, or was assembled from two different models.

Fix: check the code that wrote or converted the checkpoint; a checkpoint written by
`Saver` / `save_weights` from one model never has this.
""",
    fix="Check the code that wrote or converted this checkpoint.",
)
def shape_mismatch(values: GroupValues, tol: Tolerances) -> Result:
    shapes = {
        name: tuple(arr.shape)
        for name, arr in values.present().items()
        # Step counters are scalars beside per-channel vectors, by design.
        if not name.endswith(("local_step", "num_batches_tracked"))
        and not name.endswith("_weight")
    }
    if len(set(shapes.values())) <= 1:
        return None
    listing = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    return Tripped(
        f"shapes disagree: {listing}", "", {"shapes": {n: list(s) for n, s in shapes.items()}}
    )


@rule(
    "BN011",
    Severity.ERROR,
    "batch statistics only: no moving statistics",
    f"""
The graph normalizes this layer with the statistics of each batch (`tf.nn.moments` over the
batch axis into `tf.nn.batch_normalization`, or a training-mode fused batch norm) and keeps no
moving statistics anywhere; its scale / offset were trained. At inference the code either skips
the normalization or normalizes each test batch with its own statistics: predictions then
depend on the batch they come in, and a single example is normalized with itself. Training and
inference compute different functions.

Fix: keep moving averages and use them at inference, e.g. `tf.keras.layers.BatchNormalization`
(or `tf.compat.v1.layers.batch_normalization` with its UPDATE_OPS run), or
`tf.train.ExponentialMovingAverage` over the batch moments with its update op in the train
step, selected by a training switch. Then measure population statistics once:
{_FIX_RECALIBRATE[0].lower()}{_FIX_RECALIBRATE[1:]}
""",
    fix="Keep moving averages and use them at inference; then run `ckptdoc "
        "recalibrate`.",
)
def batch_stats_only(values: GroupValues, tol: Tolerances) -> Result:
    if not values.group.evidence.batch_stats_only:
        return None
    trained = [r for r in ("gamma", "beta") if values.group.members.get(r)]
    return Tripped(
        f"normalizes with batch statistics only, no moving mean / variance; "
        f"{' and '.join(trained) or 'no parameters'} saved",
        "training and inference compute different functions (proven by the graph)",
        {"found_by": values.group.evidence.found_by},
    )


#: BN013 fires when BN ran in training mode for less than this share of the training steps.
FROZEN_SHARE = 0.5


@rule(
    "BN013",
    Severity.WARNING,
    "statistics updated in only part of training",
    f"""
PyTorch counts, per BN layer, the batches it saw in training mode (`num_batches_tracked`), and
a Lightning checkpoint records the run's optimizer steps (`global_step`). A layer that saw
fewer batches than {FROZEN_SHARE:.0%} of the steps had its running statistics frozen for most
of training: the model was left in `eval()` after a validation loop, BN was frozen on purpose
(`requires_grad=False` does not freeze statistics; `.eval()` does), or the layer was added
late. Its statistics describe the network as it was when they stopped moving, not the
trained one.

(`num_batches_tracked` of 0 is BN002's: the statistics never moved at all.)

Fix: if the freeze was not intended, find where the model stays in eval() (a validation hook
that does not call `model.train()` afterwards); either way the statistics can be measured for
the trained weights without retraining: recalibrate the model on training data.
""",
    fix="Find where the model stays in eval() during training; or recalibrate the statistics.",
)
def partly_frozen(values: GroupValues, tol: Tolerances) -> Tripped | None:
    ev = values.group.evidence
    if ev.tracked is None or not ev.tracked or ev.steps is None or ev.steps <= 0:
        return None
    share = ev.tracked / ev.steps
    if share >= FROZEN_SHARE:
        return None
    return Tripped(
        f"num_batches_tracked {ev.tracked} of {ev.steps} training steps ({share:.0%})",
        f"the running statistics were updated in only {share:.0%} of training ({ev.steps} "
        f"steps, {ev.steps_source}): frozen for the rest, e.g. the model left in eval()",
        {"tracked": ev.tracked, "steps": ev.steps, "share": share},
    )

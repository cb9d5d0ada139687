"""`BatchNormMonitor`: a Keras 3 callback that stops training when BN statistics do not move.

Imports Keras (any backend). The check reads each BN layer's variables twice in a run: once
at the start, once after `check_after_steps` steps; nothing in between, so a healthy `fit` pays
one read of the BN variables per check.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from ckptdoc.guard.errors import BatchNormNotUpdatingError

__all__ = ["BatchNormMonitor"]

_PARAMS = ("gamma", "beta")
_STATS = ("moving_mean", "moving_variance")


class BatchNormMonitor(keras.callbacks.Callback):
    """Stop training when BN layers train gamma / beta but never update their statistics.

    With `fit`: `model.fit(..., callbacks=[BatchNormMonitor(check_after_steps=20)])`.
    In a custom loop: call `monitor.check(model)` once before the loop (that is the start)
    and after every training step.

    After `check_after_steps` steps it compares each BatchNormalization layer (however deeply
    nested) with its values at the start; a layer whose gamma or beta moved while moving_mean
    and moving_variance did not (a loop calling `model(x)` without `training=True`) raises
    `BatchNormNotUpdatingError` naming the layers, which ends `fit`. Layers with nothing
    trainable moved (frozen on purpose) are left alone. Checks once, unless `every` is set.

    With `data_check` (inputs the model will see, e.g. a validation batch), the stored
    statistics are compared with that data's at the end of `fit`, as `ckptdoc audit --data`
    does: a disagreement is a `RuntimeWarning` (BN012) and `data_comparison` holds the layers.

    A subclassed model is not built when `fit` begins: the start is then taken at the end of
    the first step, when its BN variables exist. A monitor that would watch no BN layer says
    so (a `RuntimeWarning`) instead of passing silently: the model has no BN layer, or its BN
    layers were never built.
    """

    def __init__(self, check_after_steps: int = 20, every: bool = False,
                 data_check: Any = None) -> None:
        super().__init__()
        if check_after_steps < 1:
            raise ValueError("check_after_steps must be at least 1")
        self.check_after_steps = check_after_steps
        self.every = every
        #: Inputs the model will see (a validation batch, an array): at the end of `fit`
        #: the stored statistics are compared with theirs, as `ckptdoc audit --data` does.
        self.data_check = data_check
        #: That comparison (`rules.data.DataComparison`), once `fit` has ended.
        self.data_comparison: Any = None
        self._start: dict[int, tuple[str, dict[str, np.ndarray]]] | None = None
        self._layers: dict[int, Any] = {}
        self._steps = 0
        self._warned = False

    # --- Keras hooks ---------------------------------------------------------------------

    def on_train_begin(self, logs: Any = None) -> None:
        self._start = None
        self._steps = 0
        self._warned = False
        if _all_built(self.model):
            self._snapshot(self.model)
        # else: a subclassed model builds in its first step; `check` takes the start then

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.check(self.model)

    def on_train_end(self, logs: Any = None) -> None:
        if self.data_check is None:
            return
        from ckptdoc.recalibrate.keras_model import observe
        from ckptdoc.recalibrate.options import Options

        comparison = observe(self.model, Options(data=self.data_check, samples=None))
        self.data_comparison = comparison
        if comparison.worst == "agrees":
            return
        listed = ", ".join(f"{layer.layer} ({layer.describe()})"
                           for layer in comparison.disagreeing[:4])
        hint = comparison.preprocessing()
        warnings.warn(
            f"the model's BN statistics disagree with data_check ({comparison.worst}, ckptdoc "
            f"rule BN012): {listed}{f'; {hint}' if hint else ''}. Check that this data is "
            "preprocessed as the training data was; if it is, the statistics have not "
            "converged (train longer) or are stale (recalibrate them)",
            RuntimeWarning, stacklevel=2)

    # --- custom loops --------------------------------------------------------------------

    def check(self, model: Any) -> None:
        """Count one training step of `model`; compare with the start when it is time."""
        if self._start is None:
            # First call in a custom loop, or the first step of a model built lazily: the start.
            if _all_built(model) or self._warned:
                self._snapshot(model)
            else:
                self._say_watching_nothing(model)
            return
        if not self._start:
            return
        self._steps += 1
        if self._steps % self.check_after_steps or (
            not self.every and self._steps > self.check_after_steps
        ):
            return
        stuck = []
        for key, (name, before) in self._start.items():
            layer = self._layers[key]
            now = _values(layer)
            params_moved = any(
                not np.array_equal(now[r], before[r]) for r in _PARAMS if r in before
            )
            stats_moved = any(not np.array_equal(now[r], before[r]) for r in _STATS)
            if params_moved and not stats_moved:
                stuck.append(name)
        if stuck:
            if getattr(model, "stop_training", None) is not None:
                model.stop_training = True
            raise BatchNormNotUpdatingError(stuck, self._steps)

    # --- internals -----------------------------------------------------------------------

    def _snapshot(self, model: Any) -> None:
        layers = [(name, layer) for name, layer in _bn_layers(model) if layer.built]
        self._layers = {id(layer): layer for _, layer in layers}
        self._start = {id(layer): (name, _values(layer)) for name, layer in layers}
        if not self._start:
            self._say_watching_nothing(model)

    def _say_watching_nothing(self, model: Any) -> None:
        if self._warned:
            return
        self._warned = True
        found = _bn_layers(model)
        if found:
            unbuilt = ", ".join(name for name, layer in found if not layer.built)
            why = (f"its BN layers are not built yet ({unbuilt}); the start is taken at the "
                   "next check")
        else:
            why = "the model has no BatchNormalization layer it can see"
        warnings.warn(f"BatchNormMonitor watches no BN layer: {why}", RuntimeWarning,
                      stacklevel=3)


def _bn_layers(model: Any) -> list[tuple[str, Any]]:
    """Every BatchNormalization layer under `model`, by its path of layer names."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, prefix: str) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append((prefix + layer.name, layer))
            return
        children = layer._flatten_layers(include_self=False, recursive=False)
        for child in children:
            walk(child, prefix + layer.name + "/" if layer is not model else prefix)

    walk(model, "")
    return out


def _all_built(model: Any) -> bool:
    """The model and every BN layer under it have their variables."""
    layers = _bn_layers(model)
    return bool(getattr(model, "built", True)) and bool(layers) and all(
        layer.built for _, layer in layers)


def _values(layer: Any) -> dict[str, np.ndarray]:
    out = {r: np.array(keras.ops.convert_to_numpy(getattr(layer, r))) for r in _STATS}
    for role in _PARAMS:
        var = getattr(layer, role, None)
        if var is not None and getattr(var, "trainable", True):
            out[role] = np.array(keras.ops.convert_to_numpy(var))
    return out

"""Find every BN layer of a Keras 3 model and measure the exact statistics of its inputs.

How the pass works: each BN layer's `call` is replaced, on the instance only, by a wrapper that
(a) computes the per-channel count / mean / M2 of the layer's input in float64 and hands them
out of the traced function, and (b) normalizes with those batch statistics (precise mode) or
with the layer's already-fixed moving statistics (sequential mode, layers already done). The
model itself is called with `training=False`, so dropout and every other layer run in inference
mode. Replacing `call` (not `__call__`) also catches layers that wrappers such as
`TimeDistributed` invoke through `layer.call`, and layers in nested models of any depth.

TensorFlow and Keras are imported inside functions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptdoc.recalibrate import RecalibrationError
from ckptdoc.recalibrate.data import Batch
from ckptdoc.recalibrate.stats import Moments, channel_axes

MODES = ("precise", "sequential")


@dataclass
class BNLayer:
    """One BN layer found in the model: a readable path and the live layer object."""

    path: str
    layer: Any

    @property
    def axis(self) -> int | list[int]:
        return self.layer.axis  # type: ignore[no-any-return]

    def stat_variables(self) -> dict[str, Any]:
        """The variables recalibration rewrites, by local name."""
        out = {"moving_mean": self.layer.moving_mean, "moving_variance": self.layer.moving_variance}
        if getattr(self.layer, "renorm", False):
            for name in ("moving_stddev", "renorm_mean", "renorm_stddev"):
                if getattr(self.layer, name, None) is not None:
                    out[name] = getattr(self.layer, name)
        return out

    def new_values(self, m: Moments) -> dict[str, np.ndarray]:
        """The variable values that encode moments `m` in this layer's conventions."""
        eps = float(self.layer.epsilon)
        mean, var = m.mean, m.variance  # Keras 3 BN reads the population variance
        out = {"moving_mean": mean, "moving_variance": var}
        if getattr(self.layer, "renorm", False):
            # Keras 3 renorm keeps stddev = sqrt(var + eps) and derives the variance from it.
            out.update(
                moving_stddev=np.sqrt(var + eps), renorm_mean=mean, renorm_stddev=np.sqrt(var + eps)
            )
        return out


def find_bn_layers(model: Any) -> list[BNLayer]:
    """Every BatchNormalization (incl. synchronized / renorm / frozen) however deeply nested."""
    import keras

    found: list[BNLayer] = []
    seen: set[int] = set()

    def walk(layer: Any, prefix: str) -> None:
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            if isinstance(child, keras.layers.BatchNormalization):
                if getattr(child, "moving_mean", None) is None:
                    raise RecalibrationError(
                        f"BN layer {path} is not built (the model was never called on data)"
                    )
                found.append(BNLayer(path, child))
            walk(child, path + "/")

    walk(model, "")
    return found


@dataclass
class _Call:
    idx: int
    inputs: Any
    outputs: Any


@dataclass
class Capture:
    """Installs the recording wrappers; the state of each layer decides what its call does.

    States: "batch" = normalize with batch statistics and record them; "batch-quiet" = normalize
    with batch statistics, record nothing; "fixed" = the layer's own inference path.
    """

    layers: list[BNLayer]
    state: dict[int, str] = field(default_factory=dict)
    recorded: dict[int, list[tuple[Any, Any, Any]]] = field(default_factory=dict)
    calls: list[_Call] = field(default_factory=list)
    _saved: dict[int, tuple[bool, Any]] = field(default_factory=dict)

    def install(self) -> None:
        for i, bn in enumerate(self.layers):
            layer = bn.layer
            had_own = "call" in layer.__dict__
            self._saved[i] = (had_own, layer.__dict__.get("call"))
            original = layer.call
            layer.__dict__["call"] = self._wrap(i, bn, original)
            self.state.setdefault(i, "batch")

    def uninstall(self) -> None:
        for i, bn in enumerate(self.layers):
            had_own, own = self._saved.pop(i, (False, None))
            if had_own:
                bn.layer.__dict__["call"] = own
            else:
                bn.layer.__dict__.pop("call", None)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Capture]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def begin_trace(self) -> None:
        self.recorded = {}
        self.calls = []

    def _wrap(self, idx: int, bn: BNLayer, original: Callable[..., Any]) -> Callable[..., Any]:
        layer = bn.layer

        def call(inputs: Any, training: Any = None, mask: Any = None, **kwargs: Any) -> Any:
            state = self.state.get(idx, "batch")
            if state == "fixed":
                out = original(inputs, training=False, mask=mask, **kwargs)
            else:
                out, stats = _normalize_with_batch_stats(layer, inputs, mask)
                if state == "batch":
                    self.recorded.setdefault(idx, []).append(stats)
            self.calls.append(_Call(idx, inputs, out))
            return out

        return call

    def outputs(self) -> dict[str, list[tuple[Any, Any, Any]]]:
        return {str(i): v for i, v in self.recorded.items()}


def _normalize_with_batch_stats(layer: Any, inputs: Any, mask: Any) -> tuple[Any, Any]:
    """Training-mode BN output plus (count, mean, M2) of the input, computed in float64.

    Equivalent to Keras' own training branch without the moving-average side effects, and it
    works for `trainable=False` layers too (Keras would silently use the moving stats there).
    """
    import tensorflow as tf
    from keras import backend, ops

    compute_dtype = backend.result_type(inputs.dtype, "float32")
    x = ops.cast(inputs, compute_dtype)
    ndim = len(x.shape)
    kept, reduced = channel_axes(ndim, layer.axis)
    x64 = tf.cast(x, tf.float64)
    shape = tf.shape(x64)
    if mask is None:
        mean = tf.reduce_mean(x64, axis=reduced, keepdims=True)
        # One fused op for (x - mean)^2: the pass is bandwidth-bound on big feature maps.
        m2 = tf.reduce_sum(tf.math.squared_difference(x64, mean), axis=reduced)
        n = tf.cast(tf.reduce_prod(tf.gather(shape, list(reduced))), tf.float64)
        count = tf.fill(tf.shape(m2), n)
    else:
        w = tf.cast(mask, tf.float64)
        while len(w.shape) < ndim:
            w = tf.expand_dims(w, -1)
        w = tf.broadcast_to(w, shape)
        count = tf.reduce_sum(w, axis=reduced)
        mean = tf.reduce_sum(w * x64, axis=reduced, keepdims=True) / tf.reshape(
            tf.maximum(count, 1.0), tf.shape(tf.reduce_sum(w, axis=reduced, keepdims=True))
        )
        m2 = tf.reduce_sum(w * tf.math.squared_difference(x64, mean), axis=reduced)
    mean_c = tf.reshape(mean, tf.shape(m2))
    var_c = m2 / tf.maximum(count, 1.0)
    gamma = ops.cast(layer.gamma, x.dtype) if layer.scale else None
    beta = ops.cast(layer.beta, x.dtype) if layer.center else None
    b_mean = tf.cast(mean_c, x.dtype)
    b_var = tf.cast(var_c, x.dtype)
    if len(kept) == 1:
        out = ops.batch_normalization(
            x=x,
            mean=b_mean,
            variance=b_var,
            axis=kept[0],
            offset=beta,
            scale=gamma,
            epsilon=layer.epsilon,
        )
    else:  # several channel axes (tf-keras style axis lists): broadcast by hand
        bshape = [x.shape[a] if a in kept else 1 for a in range(ndim)]
        inv = tf.math.rsqrt(tf.reshape(b_var, bshape) + layer.epsilon)
        if gamma is not None:
            inv = inv * tf.reshape(gamma, bshape)
        out = (x - tf.reshape(b_mean, bshape)) * inv
        if beta is not None:
            out = out + tf.reshape(beta, bshape)
    return ops.cast(out, layer.compute_dtype), (count, mean_c, m2)


@dataclass
class PassResult:
    moments: dict[int, Moments]
    samples: int
    batches: int


def _to_feed(x: Any) -> Any:
    return x


def run_pass(
    model: Any,
    capture: Capture,
    batches: Iterable[Batch],
    on_batch: Callable[[int], None] | None = None,
) -> PassResult:
    """One walk over the data with the capture's current states; returns merged moments."""
    import tensorflow as tf

    def step(x: Any) -> Any:
        capture.begin_trace()
        model(x, training=False)
        return capture.outputs()

    # Same XLA choice as model.predict (Keras enables it on accelerators, not on CPU).
    jit = bool(getattr(model, "jit_compile", False))
    try:
        fn = tf.function(step, reduce_retracing=not jit, jit_compile=jit)
    except TypeError:
        fn = tf.function(step, reduce_retracing=True)
    moments: dict[int, Moments] = {}
    samples = nb = 0
    for b in batches:
        out = fn(b.x)
        for key, calls in out.items():
            acc = moments.get(int(key))
            for count, mean, m2 in calls:
                part = Moments(count.numpy(), mean.numpy(), m2.numpy())
                if acc is None:
                    acc = Moments.empty(part.mean.shape)
                acc.merge(part)
            if acc is not None:
                moments[int(key)] = acc
        samples += b.size
        nb += 1
        if on_batch:
            on_batch(b.size)
    return PassResult(moments, samples, nb)


def dependency_levels(model: Any, capture: Capture, sample: Batch) -> list[list[int]]:
    """Group BN layers into passes for sequential mode.

    Traces the model once and walks the graph backwards from each BN input: a layer depends on
    every BN whose output it can reach. Level k holds the layers whose BN ancestors are all in
    levels < k, so one pass fixes a whole level. When the graph cannot be read (calls hidden in
    nested functions, a shared layer forming a cycle), falls back to one layer per pass in call
    order, which is always correct.
    """
    import tensorflow as tf

    def step(x: Any) -> Any:
        capture.begin_trace()
        model(x, training=False)
        return capture.outputs()

    saved = dict(capture.state)
    for i in range(len(capture.layers)):
        capture.state[i] = "batch-quiet"
    try:
        concrete = tf.function(step).get_concrete_function(sample.x)
    finally:
        capture.state.update(saved)
    calls = list(capture.calls)
    order: list[int] = []
    for c in calls:
        if c.idx not in order:
            order.append(c.idx)
    missing = [i for i in range(len(capture.layers)) if i not in order]
    fallback = [[i] for i in order] + [[i] for i in missing]
    graph = concrete.graph
    if missing or any(getattr(c.inputs, "graph", None) is not graph for c in calls):
        return fallback
    out_ops: dict[str, set[int]] = {}
    for c in calls:
        out_ops.setdefault(c.outputs.op.name, set()).add(c.idx)
    deps: dict[int, set[int]] = {i: set() for i in order}
    for c in calls:
        seen: set[str] = set()
        stack = [c.inputs.op]
        while stack:
            op = stack.pop()
            if op.name in seen:
                continue
            seen.add(op.name)
            if op.name in out_ops:
                deps[c.idx] |= out_ops[op.name]
            stack.extend(t.op for t in op.inputs)
    level: dict[int, int] = {}
    remaining = set(order)
    k = 0
    while remaining:
        ready = {i for i in remaining if all(d in level for d in deps[i] - {i})}
        if not ready or any(i in deps[i] for i in ready):
            return fallback
        for i in ready:
            level[i] = k
        remaining -= ready
        k += 1
    return [[i for i in order if level[i] == j] for j in range(k)]


def assign(bn: BNLayer, values: dict[str, np.ndarray]) -> None:
    variables = bn.stat_variables()
    for name, v in values.items():
        var = variables[name]
        var.assign(np.asarray(v, dtype=np.float64).astype(var.dtype).reshape(var.shape))


def snapshot(bn: BNLayer) -> dict[str, np.ndarray]:
    return {k: np.array(v.numpy()) for k, v in bn.stat_variables().items()}

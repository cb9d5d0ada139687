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
import weakref
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


# At most this many positions per channel are summed in float32 before float64 takes over.
# Summing <= 256 terms in float32 costs ~1e-7 relative; everything after that is float64.
F32_BLOCK = 256


def _blocked_axes(shape: Any, reduced: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Split the reduced axes into a float32 stage (static, product <= F32_BLOCK) and the rest.

    Innermost axes first: a reduction over the trailing spatial axis (NHWC: W, NCHW: W) is the
    cheapest one TensorFlow runs on CPU, and it shrinks the tensor the float64 stage reads.
    """
    inner: list[int] = []
    size = 1
    for a in sorted(reduced, reverse=True):
        d = shape[a]
        if d is not None and size * int(d) <= F32_BLOCK:
            inner.append(a)
            size *= int(d)
    return sorted(inner), [a for a in reduced if a not in inner]


def _blocked_sum(v: Any, inner: list[int], outer: list[int]) -> Any:
    """Sum over inner (float32, short runs) then outer (float64); keeps all dims."""
    import tensorflow as tf

    if inner:
        v = tf.reduce_sum(v, axis=inner, keepdims=True)
    v = tf.cast(v, tf.float64)
    return tf.reduce_sum(v, axis=outer, keepdims=True) if outer else v


def _blocked_moments(
    x: Any, kept: tuple[int, ...], reduced: tuple[int, ...]
) -> tuple[Any, Any, Any]:
    """Per-channel (count, mean keepdims, M2) of float32 `x`, accurate to float64 standards.

    Why not cast everything to float64: on CPU that triples the memory traffic of the pass and
    halves the SIMD width; it made recalibration 2-5x slower than inference. Here the full-size
    tensor is only ever read in float32 (two reads and one fused squared difference), and
    float64 sees tensors F32_BLOCK times smaller. Two passes: the mean first, then the squared
    deviations from it (rounded to float32 as the shift `c`), with the exact correction
    n * (mean - c)^2, so no cancellation however large the offset.
    """
    import tensorflow as tf

    inner, outer = _blocked_axes(x.shape, reduced)
    shape = tf.shape(x)
    n = tf.cast(tf.reduce_prod(tf.gather(shape, tf.constant(reduced, tf.int32))), tf.float64)
    mean = _blocked_sum(x, inner, outer) / tf.maximum(n, 1.0)
    c = tf.cast(mean, x.dtype)
    m2 = _blocked_sum(tf.math.squared_difference(x, c), inner, outer)
    m2 = tf.maximum(m2 - n * tf.math.squared_difference(mean, tf.cast(c, tf.float64)), 0.0)
    m2 = tf.reshape(m2, tf.gather(shape, tf.constant(kept, tf.int32)))
    return tf.fill(tf.shape(m2), n), mean, m2


def _normalize(
    x: Any, mean: Any, var: Any, gamma: Any, beta: Any, kept: tuple[int, ...], eps: float
) -> Any:
    """x normalized with per-channel float64 (mean, var), in x's dtype."""
    import tensorflow as tf

    ndim = len(x.shape)
    bshape = [-1 if a in kept else 1 for a in range(ndim)]
    if len(kept) > 1:
        bshape = [x.shape[a] if a in kept else 1 for a in range(ndim)]
    inv = tf.math.rsqrt(tf.reshape(tf.cast(var, x.dtype), bshape) + eps)
    if gamma is not None:
        inv = inv * tf.reshape(gamma, bshape)
    shift = -tf.reshape(tf.cast(mean, x.dtype), bshape) * inv
    if beta is not None:
        shift = shift + tf.reshape(beta, bshape)
    return x * inv + shift  # as tf.nn.batch_normalization computes it


def _core(
    x: Any, gamma: Any, beta: Any, *, kept: tuple[int, ...], reduced: tuple[int, ...], eps: float
) -> tuple[Any, Any, Any, Any]:
    """Batch statistics and the training-mode output of one BN layer (no mask)."""
    import tensorflow as tf

    count, mean, m2 = _blocked_moments(x, kept, reduced)
    mean_c = tf.reshape(mean, tf.shape(m2))
    out = _normalize(x, mean_c, m2 / tf.maximum(count, 1.0), gamma, beta, kept, eps)
    return out, count, mean_c, m2


_CORE: list[Any] = []


def _compiled_core() -> Any:
    """`_core` compiled with XLA when it works here, else as plain TensorFlow ops.

    Why XLA: unfused, the statistics and the normalization read and write the activation five
    times; XLA fuses them into three reads and one write, which halves the cost of a BN layer
    on CPU. Only this per-layer kernel is compiled; the model's own layers run exactly as in
    `model.predict`. CKPTDOC_RECALIBRATE_XLA=0 turns it off.
    """
    if _CORE:
        return _CORE[0]
    import os

    import tensorflow as tf

    fn: Any = _core
    if os.environ.get("CKPTDOC_RECALIBRATE_XLA", "1") != "0":
        jitted = tf.function(_core, jit_compile=True)
        try:  # probe once, eagerly (we may be inside a trace): some builds have no XLA JIT
            with tf.init_scope():
                probe = tf.constant([[1.0, 2.0], [3.0, 5.0]])
                jitted(probe, None, None, kept=(1,), reduced=(0,), eps=1e-3)[0].numpy()
            fn = jitted
        except Exception:  # noqa: BLE001 - any failure means: run unfused
            fn = _core
    _CORE.append(fn)
    return fn


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
    gamma = ops.cast(layer.gamma, x.dtype) if layer.scale else None
    beta = ops.cast(layer.beta, x.dtype) if layer.center else None
    eps = float(layer.epsilon)
    if mask is None:
        core = _compiled_core()
        out, count, mean_c, m2 = core(x, gamma, beta, kept=kept, reduced=reduced, eps=eps)
    else:  # masked (padded) positions are rare: plain float64 is fast enough
        shape = tf.shape(x)
        x64 = tf.cast(x, tf.float64)
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
        out = _normalize(x, mean_c, m2 / tf.maximum(count, 1.0), gamma, beta, kept, eps)
    return ops.cast(out, layer.compute_dtype), (count, mean_c, m2)


@dataclass
class PassResult:
    moments: dict[int, Moments]
    samples: int
    batches: int


def _to_feed(x: Any) -> Any:
    return x


@dataclass
class _Step:
    """A traced forward step kept with the model, like Keras keeps `model.predict_function`.

    The graph depends only on the model and the per-layer states, so it is reused by later
    passes (and later `recalibrate` calls) with the same states instead of being traced again.
    `capture` is looked up at call time: a retrace (new input shape) must record into the
    Capture that is installed now.
    """

    fn: Any
    capture: Capture | None = None


# model -> {(layer ids and states): step}; weak, so a dropped model takes its graphs with it.
_STEPS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _Step]] = weakref.WeakKeyDictionary()


def _step_function(model: Any, capture: Capture) -> _Step:
    import tensorflow as tf

    jit = bool(getattr(model, "jit_compile", False))
    key = (jit,) + tuple(
        (id(bn.layer), capture.state.get(i, "batch")) for i, bn in enumerate(capture.layers)
    )
    try:
        per_model = _STEPS.setdefault(model, {})
        model_ref: Callable[[], Any] = weakref.ref(model)  # must not keep its own key alive
    except TypeError:  # not weak-referenceable / hashable: no reuse
        per_model = {}
        model_ref = lambda: model  # noqa: E731
    holder = per_model.get(key)
    if holder is None:
        holder = _Step(None)

        def step(x: Any) -> Any:
            cap, m = holder.capture, model_ref()
            assert cap is not None and m is not None
            cap.begin_trace()
            m(x, training=False)
            return cap.outputs()

        # Same XLA choice as model.predict (Keras enables it on accelerators, not on CPU).
        try:
            holder.fn = tf.function(step, reduce_retracing=not jit, jit_compile=jit)
        except TypeError:
            holder.fn = tf.function(step, reduce_retracing=True)
        per_model[key] = holder
    holder.capture = capture
    return holder


def run_pass(
    model: Any,
    capture: Capture,
    batches: Iterable[Batch],
    on_batch: Callable[[int], None] | None = None,
) -> PassResult:
    """One walk over the data with the capture's current states; returns merged moments."""
    step = _step_function(model, capture)
    try:
        return _walk(step.fn, batches, on_batch)
    finally:
        step.capture = None  # hold no layers or data between passes


def _walk(fn: Any, batches: Iterable[Batch], on_batch: Callable[[int], None] | None) -> PassResult:
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

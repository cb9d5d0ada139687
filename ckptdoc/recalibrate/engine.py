"""Find every BN layer of a Keras 3 model and measure the exact statistics of its inputs, on
whichever Keras backend runs the model (`backends/`: TensorFlow, JAX, PyTorch).

How the pass works: each BN layer's `call` is replaced, on the instance only, by a wrapper that
(a) computes the per-channel count / mean / M2 of the layer's input in float64, which the step
folds into per-layer accumulators that stay on the device for the whole pass (one transfer to
the host at its end, not one per batch and layer), and (b) normalizes with those batch
statistics (precise mode) or with the layer's already-fixed moving statistics (sequential mode,
layers already done). The model itself is called with `training=False`, so dropout and every
other layer run in inference mode. Replacing `call` (not `__call__`) also catches layers that
wrappers such as `TimeDistributed` invoke through `layer.call`, and layers in nested models of
any depth.

Keras and the backends are imported inside functions only; the backend module computes the
statistics and compiles the step, this module knows neither.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptdoc.recalibrate import backends
from ckptdoc.recalibrate.backends import Backend, Step
from ckptdoc.recalibrate.data import Batch
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.stats import Moments


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

    States: "batch" = normalize with batch statistics, the moments kept; "batch-quiet" =
    normalize with batch statistics, the moments not kept; "fixed" = normalize with the
    layer's moving statistics (only that branch runs; count 0 recorded); "check" = the
    layer's own inference path, its inputs' moments kept (the self-check). Every call's
    moments are folded on the device; which layers' are kept is decided on the host
    (`run_pass`), so the compiled step depends only on the pass's `kind` (measure,
    sequential, check), never on which layers are fixed: that is the step's `flags` input.
    """

    layers: list[BNLayer]
    backend: Backend = field(default_factory=backends.current)
    state: dict[int, str] = field(default_factory=dict)
    _saved: dict[int, tuple[bool, Any]] = field(default_factory=dict)
    # What one trace records, per thread: tf.distribute runs each replica's trace in a thread
    # of its own, and each must hand out its own statistics.
    _trace: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def recorded(self) -> dict[int, list[tuple[Any, Any, Any]]]:
        if not hasattr(self._trace, "recorded"):
            self.begin_trace()
        return self._trace.recorded  # type: ignore[no-any-return]

    @property
    def calls(self) -> list[_Call]:
        if not hasattr(self._trace, "calls"):
            self.begin_trace()
        return self._trace.calls  # type: ignore[no-any-return]

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

    def begin_trace(self, flags: Any = None) -> None:
        self._trace.recorded = {}
        self._trace.calls = []
        self._trace.flags = flags

    def _wrap(self, idx: int, bn: BNLayer, original: Callable[..., Any]) -> Callable[..., Any]:
        layer = bn.layer

        def call(inputs: Any, training: Any = None, mask: Any = None, **kwargs: Any) -> Any:
            state = self.state.get(idx, "batch")
            if state == "check":  # the self-check: the layer's own inference, inputs recorded
                out = original(inputs, training=False, mask=mask, **kwargs)
                _, stats = self.backend.batch_stats(layer, inputs, mask)
            else:
                # Measuring: batch statistics where this pass's flags say so, else the moving
                # ones (a layer fixed by an earlier level); flags are an input of the step, so
                # one compiled step serves every level of sequential mode.
                flags = getattr(self._trace, "flags", None)
                out, stats = self.backend.batch_stats(
                    layer, inputs, mask, None if flags is None else flags[idx])
            self.recorded.setdefault(idx, []).append(stats)
            self.calls.append(_Call(idx, inputs, out))
            return out

        return call

    @functools.cached_property
    def layout(self) -> list[tuple[int, int, int]]:
        """Where each layer sits in the accumulator array: (index, first column, channels).
        Keras 3 BN has one channel axis: its length is the moving mean's."""
        out, at = [], 0
        for i, bn in enumerate(self.layers):
            size = int(np.prod(tuple(bn.layer.moving_mean.shape)))
            out.append((i, at, size))
            at += size
        return out

    def empty(self) -> np.ndarray:
        """A pass's accumulators before its first batch: count / mean / M2 rows, all zero."""
        return np.zeros((3, sum(size for _, _, size in self.layout)), np.float64)


@dataclass
class PassResult:
    moments: dict[int, Moments]
    samples: int
    batches: int
    #: The moments of the first `head_batches` batches alone (`run_pass(head=...)`): what
    #: the self-check compares an inference pass over those same batches with.
    head: dict[int, Moments] = field(default_factory=dict)
    head_batches: int = 0


@dataclass
class _Step:
    """A compiled forward step kept with the model, like Keras keeps `model.predict_function`.

    It depends only on the model, the backend and the pass's `kind` (measure, sequential,
    check): every level of sequential mode, and later `recalibrate` calls, reuse it instead
    of compiling again (on JAX a compile of a mid-size model takes seconds).
    `capture` is looked up at call time: a retrace (new input shape) must record into the
    Capture that is installed now.
    """

    fn: Any
    capture: Capture | None = None
    #: The order its BN layers ran in when it was traced (each call's index): what sequential
    #: mode's fallback needs, known without compiling anything else.
    order: list[int] | None = None


# model -> {(backend, jit, kind, layer ids): step}; weak, so a dropped model takes its steps.
_STEPS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], _Step]] = weakref.WeakKeyDictionary()


def _forward(capture_of: Callable[[], Capture | None],
             traced: Callable[[list[int]], None] | None = None) -> Callable[..., Any]:
    """The body of every step: run the model in inference mode with the wrappers recording,
    and fold what they recorded into the accumulators, inside the compiled step (`acc` None:
    record nothing, for a trace that only reads the graph). `flags[i]`: whether layer i
    normalizes with batch statistics (None: every layer does). `traced` gets the order the
    BN layers were called in."""

    def body(model: Any, acc: Any, x: Any, flags: Any = None) -> Any:
        cap = capture_of()
        assert cap is not None
        cap.begin_trace(flags)
        model(x, training=False)
        if traced is not None:
            traced([c.idx for c in cap.calls])
        return None if acc is None else cap.backend.fold(acc, cap.recorded, cap.layout)

    return body


def kind(capture: Capture) -> str:
    """"check" when every layer runs its own inference path (the self-check, `observe`);
    "measure" when every layer normalizes with its batch statistics (precise mode, the first
    level of sequential mode); "sequential" when some layers are fixed, which the step learns
    from its `flags` input. At most three compiled steps per model, whatever the levels; the
    first two carry no per-layer branch (a branch costs ~20 us a layer and batch on
    TensorFlow's CPU executor)."""
    states = {capture.state.get(i, "batch") for i in range(len(capture.layers))}
    if "check" in states and states != {"check"}:
        raise ValueError("a pass either checks every layer or measures")
    if states == {"check"}:
        return "check"
    return "sequential" if "fixed" in states else "measure"


def flags(capture: Capture) -> np.ndarray | None:
    """For a sequential step, per layer: normalize with batch statistics (True) or with the
    moving ones (False); None where every layer uses its batch statistics."""
    if kind(capture) != "sequential":
        return None
    return np.array([capture.state.get(i, "batch") in ("batch", "batch-quiet")
                     for i in range(len(capture.layers))], dtype=bool)


def _step_function(model: Any, capture: Capture) -> _Step:
    jit = bool(getattr(model, "jit_compile", False))
    key = (capture.backend.name, jit, kind(capture)) + tuple(
        id(bn.layer) for bn in capture.layers)
    try:
        per_model = _STEPS.setdefault(model, {})
        model_ref: Callable[[], Any] = weakref.ref(model)  # must not keep its own key alive
    except TypeError:  # not weak-referenceable / hashable: no reuse
        per_model = {}
        model_ref = lambda: model  # noqa: E731
    holder = per_model.get(key)
    if holder is None:
        holder = _Step(None)
        box = holder
        holder.fn = capture.backend.make_step(
            model_ref, _forward(lambda: box.capture, lambda order: setattr(box, "order", order)),
            jit)
        per_model[key] = holder
    holder.capture = capture
    return holder


def run_pass(
    model: Any,
    capture: Capture,
    batches: Iterable[Batch],
    on_batch: Callable[[int], None] | None = None,
    head: int = 0,
) -> PassResult:
    """One walk over the data with the capture's current states; returns merged moments, and
    apart those of the first batches holding at least `head` samples."""
    step = _step_function(model, capture)
    try:
        kept = [p for p in capture.layout if capture.state.get(p[0], "batch") in ("batch", "check")]
        result = _walk(step.fn, capture.empty(), kept, flags(capture), batches, on_batch, head)
    finally:
        step.capture = None  # hold no layers or data between passes
    # Across workers (multi-worker training setups), each worker measured its share.
    result.moments = capture.backend.combine(model, result.moments)
    if head:
        result.head = capture.backend.combine(model, result.head)
    return result


#: Batches in flight: put on the device ahead of their step, and steps dispatched but not
#: known finished. Two keep the device busy while the host prepares the next batch (as
#: `model.predict` prefetches) and bound the device memory held by queued batches.
AHEAD = 2


def _walk(step: Step, acc: Any, places: list[tuple[int, int, int]], use_batch: np.ndarray | None,
          batches: Iterable[Batch], on_batch: Callable[[int], None] | None,
          head: int = 0) -> PassResult:
    """Drive the step over the batches without waiting on it: the statistics stay on the
    device (folded into `acc` by the step) and come to the host once, at the end; `places`
    are the layers whose moments are kept."""
    samples = nb = head_batches = 0
    first = None
    waiting: deque[Any] = deque()
    for x, size in _ahead(batches, step.put):
        in_head = samples < head
        acc = step.run(acc, x, use_batch)
        if in_head:
            first = acc
        waiting.append(acc)
        if len(waiting) > AHEAD:
            step.wait(waiting.popleft())
        samples += size
        nb += 1
        head_batches += in_head
        if on_batch:
            on_batch(size)
    return PassResult(_moments(step, acc, places) if nb else {}, samples, nb,
                      _moments(step, first, places) if first is not None else {}, head_batches)


def _ahead(batches: Iterable[Batch], put: Callable[[Any], Any]) -> Iterator[tuple[Any, int]]:
    """(inputs already on their way to the device, batch size), AHEAD batches in advance."""
    queue: deque[tuple[Any, int]] = deque()
    for b in batches:
        queue.append((put(b.x), b.size))
        if len(queue) > AHEAD - 1:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _moments(step: Step, acc: Any, places: list[tuple[int, int, int]]) -> dict[int, Moments]:
    """The accumulators on the host (the pass's one transfer), merged exactly in float64
    across replicas; layers no call reached are left out."""
    total: Moments | None = None
    for part in step.parts(acc):
        a = _numpy(part)
        m = Moments(a[0].copy(), a[1].copy(), a[2].copy())
        total = m if total is None else total.merge(m)
    out: dict[int, Moments] = {}
    if total is None:
        return out
    for key, start, size in places:
        cut = slice(start, start + size)
        m = Moments(total.count[cut], total.mean[cut], total.m2[cut])
        if size and m.count.max() > 0:
            out[key] = m
    return out


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "numpy") and type(t).__module__.startswith("tensorflow"):
        return np.asarray(t.numpy(), dtype=np.float64)  # the direct copy of an eager tensor
    from keras import ops

    return np.asarray(ops.convert_to_numpy(t), dtype=np.float64)


def dependency_levels(model: Any, capture: Capture, sample: Batch) -> list[list[int]]:
    """Group BN layers into passes for sequential mode.

    Traces the model once and asks the backend which BN layers each BN input depends on. Level
    k holds the layers whose BN ancestors are all in levels < k, so one pass fixes a whole
    level. When the backend cannot say (JAX and PyTorch: no graph to read; TensorFlow: calls
    hidden in nested functions, a shared layer forming a cycle), falls back to one layer per
    pass in call order, which is always correct.
    """
    saved = dict(capture.state)
    for i in range(len(capture.layers)):
        capture.state[i] = "batch-quiet"
    capture.begin_trace()
    try:
        deps = capture.backend.dependency_graph(model, _forward(lambda: capture), sample.x,
                                                lambda: list(capture.calls))
        called = [c.idx for c in capture.calls]
        if deps is None and not called:
            # The backend has no graph and did not trace: the order the layers run in, as the
            # measuring step saw it when traced (the precise pass, or the first level, uses
            # that same step: on JAX nothing more is compiled).
            called = _call_order(model, capture, sample)
    finally:
        capture.state.update(saved)
    order: list[int] = []
    for idx in called:
        if idx not in order:
            order.append(idx)
    missing = [i for i in range(len(capture.layers)) if i not in order]
    fallback = [[i] for i in order] + [[i] for i in missing]
    if deps is None or missing:
        return fallback
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


def _call_order(model: Any, capture: Capture, sample: Batch) -> list[int]:
    """The BN layers' call order from the measuring step, running it once on `sample` only
    if it was never traced."""
    holder = _step_function(model, capture)
    try:
        if holder.order is None:
            holder.fn.run(capture.empty(), sample.x, flags(capture))
        return list(holder.order or [])
    finally:
        holder.capture = None


def assign(bn: BNLayer, values: dict[str, np.ndarray]) -> None:
    variables = bn.stat_variables()
    for name, v in values.items():
        var = variables[name]
        var.assign(np.asarray(v, dtype=np.float64).astype(var.dtype).reshape(var.shape))


def snapshot(bn: BNLayer) -> dict[str, np.ndarray]:
    return {k: np.array(v.numpy()) for k, v in bn.stat_variables().items()}

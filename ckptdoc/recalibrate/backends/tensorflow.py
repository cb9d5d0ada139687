"""The TensorFlow backend: BN statistics as TensorFlow ops, the pass as a `tf.function`.

The statistics kernel is fused with XLA where it works (see `compiled_core`); the model's own
layers run exactly as in `model.predict`. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ckptdoc.recalibrate.backends import Step
from ckptdoc.recalibrate.backends.portable import chosen, fold, to_device
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.stats import Moments, blocked_axes, channel_axes

name = "tensorflow"


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

    inner, outer = blocked_axes(x.shape, reduced)
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


def core(
    x: Any, gamma: Any, beta: Any, *, kept: tuple[int, ...], reduced: tuple[int, ...], eps: float
) -> tuple[Any, Any, Any, Any]:
    """Batch statistics and the training-mode output of one BN layer (no mask)."""
    import tensorflow as tf

    count, mean, m2 = _blocked_moments(x, kept, reduced)
    mean_c = tf.reshape(mean, tf.shape(m2))
    out = _normalize(x, mean_c, m2 / tf.maximum(count, 1.0), gamma, beta, kept, eps)
    return out, count, mean_c, m2


_CORE: list[Any] = []


def compiled_core() -> Any:
    """`core` compiled with XLA when it works here, else as plain TensorFlow ops.

    Why XLA: unfused, the statistics and the normalization read and write the activation five
    times; XLA fuses them into three reads and one write, which halves the cost of a BN layer
    on CPU. Only this per-layer kernel is compiled; the model's own layers run exactly as in
    `model.predict`. CKPTDOC_RECALIBRATE_XLA=0 turns it off.
    """
    if _CORE:
        return _CORE[0]
    import os

    import tensorflow as tf

    fn: Any = core
    if os.environ.get("CKPTDOC_RECALIBRATE_XLA", "1") != "0":
        jitted = tf.function(core, jit_compile=True)
        try:  # probe once, eagerly (we may be inside a trace): some builds have no XLA JIT
            with tf.init_scope():
                probe = tf.constant([[1.0, 2.0], [3.0, 5.0]])
                jitted(probe, None, None, kept=(1,), reduced=(0,), eps=1e-3)[0].numpy()
            fn = jitted
        except Exception:  # noqa: BLE001 - any failure means: run unfused
            fn = core
    _CORE.append(fn)
    return fn


def batch_stats(layer: Any, inputs: Any, mask: Any, use_batch: Any = None) -> tuple[Any, Any]:
    """Training-mode BN output plus (count, mean, M2) of the input, computed in float64; with
    `use_batch` false (a boolean tensor, an input of the step), normalized with the layer's
    moving statistics instead (a layer an earlier sequential level fixed).

    Equivalent to Keras' own training branch without the moving-average side effects, and it
    works for `trainable=False` layers too (Keras would silently use the moving stats there).
    Inside `strategy.run` with several replicas, the output is normalized with the statistics
    of the whole batch (all-reduced, as synchronized BN does), so every later layer sees what
    it would on one device; each replica still hands out the moments of its own part, which
    the host merges exactly.
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
    replica = _replica_context()
    if mask is None and replica is None:
        kernel = compiled_core()

        def measured() -> tuple[Any, Any, Any, Any]:
            return kernel(x, gamma, beta, kept=kept, reduced=reduced, eps=eps)  # type: ignore[no-any-return]

        if use_batch is None:
            out, count, mean_c, m2 = measured()
        else:
            # Only the taken branch runs: a layer an earlier sequential level fixed costs what
            # inference costs, and records count 0 (merges as nothing).
            def fixed() -> tuple[Any, Any, Any, Any]:
                zero = tf.zeros(tf.gather(tf.shape(x), list(kept)), tf.float64)
                out = _normalize(x, tf.convert_to_tensor(layer.moving_mean.value),
                                 tf.convert_to_tensor(layer.moving_variance.value), gamma, beta,
                                 kept, eps)
                return out, zero, zero, zero

            out, count, mean_c, m2 = tf.cond(tf.cast(use_batch, tf.bool), measured, fixed)
    elif mask is None:
        count, mean, m2 = _blocked_moments(x, kept, reduced)
        mean_c = tf.reshape(mean, tf.shape(m2))
        # All-reduces must not sit in a branch: both statistics, then the choice.
        used = chosen(use_batch, _whole_batch(replica, count, mean_c, m2), layer)
        out = _normalize(x, *used, gamma, beta, kept, eps)
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
        stats = ((mean_c, m2 / tf.maximum(count, 1.0)) if replica is None
                 else _whole_batch(replica, count, mean_c, m2))
        out = _normalize(x, *chosen(use_batch, stats, layer), gamma, beta, kept, eps)
    return ops.cast(out, layer.compute_dtype), (count, mean_c, m2)


def _replica_context() -> Any | None:
    """The replica context of a `strategy.run` with several replicas, else None."""
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def _whole_batch(replica: Any, count: Any, mean: Any, m2: Any) -> tuple[Any, Any]:
    """(mean, variance) of the whole batch from every replica's (count, mean, M2): two float64
    all-reduces (Chan's combination: sum of counts and of count * mean, then of M2 plus the
    spread of the means)."""
    import tensorflow as tf

    n = replica.all_reduce("sum", count)
    whole_mean = replica.all_reduce("sum", count * mean) / tf.maximum(n, 1.0)
    spread = m2 + count * tf.math.squared_difference(mean, whole_mean)
    return whole_mean, replica.all_reduce("sum", spread) / tf.maximum(n, 1.0)


def make_step(model_of: Callable[[], Any], body: Callable[..., Any], jit: bool) -> Step:
    """The traced forward step: `body(model, acc, x)` in a `tf.function`, with the same XLA
    choice as `model.predict` (Keras enables it on accelerators, not on CPU); the
    accumulators go in and come out as tensors on the device. Under a `tf.distribute`
    strategy with several replicas, see `_replicated_step`."""
    import tensorflow as tf

    def step(acc: Any, x: Any, flags: Any = None) -> Any:
        return body(model_of(), acc, x, flags)

    strategy = _strategy(model_of())
    if strategy is not None:
        return _replicated_step(strategy, step)
    try:
        fn = tf.function(step, reduce_retracing=not jit, jit_compile=jit)
    except TypeError:
        fn = tf.function(step, reduce_retracing=True)
    return Step(fn, put=to_device)


def _strategy(model: Any) -> Any | None:
    """The model's `tf.distribute` strategy when it has more than one replica."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync < 2:
        return None
    return strategy


def _replicated_step(strategy: Any, step: Callable[..., Any]) -> Step:
    """Each batch split along its first axis over the strategy's replicas (`strategy.run`, as
    Keras' `fit` does); each replica folds the count / mean / M2 of its shard into
    accumulators of its own, on its device, for the whole pass. At the end (`parts`) every
    replica's accumulators are merged exactly in float64 (Chan) on the host, so the result
    is one device's: the only cross-device reduction of the accumulators is that one, per
    pass. A replica whose shard is empty adds count 0, which merges as nothing."""
    import numpy as np
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    run = tf.function(lambda acc, x, flags: strategy.run(step, args=(acc, x, flags)),
                      reduce_retracing=True)

    def split(x: Any) -> list[Any]:
        if isinstance(x, dict):
            parts = {k: split(v) for k, v in x.items()}
            return [{k: p[i] for k, p in parts.items()} for i in range(n)]
        if isinstance(x, list | tuple):
            columns = [split(v) for v in x]
            return [type(x)(c[i] for c in columns) for i in range(n)]
        return np.array_split(np.asarray(x), n)

    def call(acc: Any, x: Any, flags: Any = None) -> Any:
        if isinstance(acc, np.ndarray):  # the pass's empty accumulators: one per replica
            host = acc
            acc = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(host))
        shards = split(x)
        return run(acc, strategy.experimental_distribute_values_from_function(
            lambda ctx: shards[ctx.replica_id_in_sync_group]), flags)

    return Step(call, parts=strategy.experimental_local_results)


def replicas(model: Any) -> int:
    strategy = _strategy(model)
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def _workers(strategy: Any) -> int:
    local = len(strategy.extended.worker_devices)
    return int(strategy.num_replicas_in_sync) // max(local, 1)


def combine(model: Any, moments: dict[int, Moments]) -> dict[int, Moments]:
    """Under `MultiWorkerMirroredStrategy`, every worker's moments, gathered to every worker
    (one collective all-gather of float64 count / mean / M2) and merged in the same order
    everywhere, so every worker holds the same, exact, result. One worker: unchanged."""
    import numpy as np
    import tensorflow as tf

    strategy = _strategy(model)
    if strategy is None or _workers(strategy) < 2:
        return moments
    keys = sorted(moments)
    shapes = [moments[k].mean.shape for k in keys]
    flat = np.concatenate([np.concatenate([moments[k].count.ravel(), moments[k].mean.ravel(),
                                           moments[k].m2.ravel()]) for k in keys])
    local = len(strategy.extended.worker_devices)
    # One row per replica; only each worker's first replica carries its moments (count 0
    # merges as nothing).
    rows = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(
            (flat if ctx.replica_id_in_sync_group % local == 0 else np.zeros_like(flat))[None]))
    gathered = np.asarray(strategy.gather(rows, axis=0).numpy(), dtype=np.float64)
    out = {k: Moments.empty(shape) for k, shape in zip(keys, shapes, strict=True)}
    for row in gathered:
        at = 0
        for k, shape in zip(keys, shapes, strict=True):
            size = int(np.prod(shape))
            parts = [row[at + j * size: at + (j + 1) * size].reshape(shape) for j in range(3)]
            out[k].merge(Moments(*parts))
            at += 3 * size
    return out


def writes(model: Any) -> bool:
    """Whether this process writes the output: always, except the non-chief workers of a
    multi-worker strategy (the chief, or worker 0 when there is no chief, writes)."""
    strategy = _strategy(model)
    resolver = getattr(strategy, "cluster_resolver", None)
    if strategy is None or _workers(strategy) < 2 or resolver is None:
        return True
    kind, index = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return bool(kind == "chief" or (kind == "worker" and index == 0 and not has_chief))


def _cluster_tasks() -> int:
    """Tasks in $TF_CONFIG's cluster (0 without one)."""
    import json
    import os

    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except ValueError as exc:
        raise RecalibrationError(f"TF_CONFIG is not JSON: {exc}") from None
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


@contextlib.contextmanager
def distributed(devices: int | None) -> Iterator[None]:
    """A `tf.distribute.MirroredStrategy` over `devices` local devices (None: all; GPUs when
    there are any, else the CPU's logical devices), entered while the model loads and runs,
    as Keras' `fit` would use it."""
    import tensorflow as tf

    if devices == 1:  # one device, even where a TF_CONFIG is set for training jobs
        yield
        return
    if _cluster_tasks() > 1:
        # Several processes / hosts ($TF_CONFIG, as for `fit`), asked for with --devices all:
        # each worker uses its local devices and takes its share of every batch; see
        # `combine` and `writes`.
        if devices is not None:
            raise RecalibrationError("--devices: with TF_CONFIG naming several workers, each "
                                     "worker uses all of its local devices; give --devices all")
        with tf.distribute.MultiWorkerMirroredStrategy().scope():
            yield
        return
    available = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    wanted = len(available) if devices is None else devices
    if wanted > len(available):
        raise RecalibrationError(
            f"--devices {devices}: only {len(available)} TensorFlow device(s) here "
            f"({', '.join(d.name for d in available)})")
    strategy = tf.distribute.MirroredStrategy([d.name for d in available[:wanted]])
    with strategy.scope():
        yield


def inference(model: Any) -> Callable[[Any], Any]:
    """`model(x, training=False)`, traced once per input signature."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False),  # type: ignore[no-any-return]
                       reduce_retracing=True)


def dependency_graph(model: Any, body: Callable[..., Any], sample: Any,
                     calls: Callable[[], list[Any]]) -> dict[int, set[int]] | None:
    """Which BN layers each BN layer's input depends on, read from the traced graph: walk
    backwards from each BN input to the BN outputs it reaches. None when the graph cannot be
    read (calls hidden in nested functions)."""
    import tensorflow as tf

    graph = tf.function(lambda x: body(model, None, x)).get_concrete_function(sample).graph
    recorded = calls()
    if any(getattr(c.inputs, "graph", None) is not graph for c in recorded):
        return None
    out_ops: dict[str, set[int]] = {}
    for c in recorded:
        out_ops.setdefault(c.outputs.op.name, set()).add(c.idx)
    deps: dict[int, set[int]] = {c.idx: set() for c in recorded}
    for c in recorded:
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
    return deps


__all__ = ["batch_stats", "combine", "compiled_core", "core", "dependency_graph", "distributed",
           "fold", "inference", "make_step", "name", "replicas", "writes"]

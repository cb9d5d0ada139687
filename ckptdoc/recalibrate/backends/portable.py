"""BN statistics written once in `keras.ops`, for the backends without a kernel of their own
(JAX, PyTorch). Same arithmetic as the TensorFlow kernel: float32 sums over blocks of at most
`F32_BLOCK` positions, float64 for the rest, the mean first and then the squared deviations
from it (shifted by the float32-rounded mean, with the exact correction), so no cancellation.

float64 must be real: under JAX the caller runs this with 64-bit types enabled
(`jax.enable_x64`), else a float64 cast would silently give float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ckptdoc.recalibrate.stats import blocked_axes, channel_axes


def _blocked_sum(v: Any, inner: list[int], outer: list[int]) -> Any:
    from keras import ops

    if inner:
        v = ops.sum(v, axis=inner, keepdims=True)
    v = ops.cast(v, "float64")
    return ops.sum(v, axis=outer, keepdims=True) if outer else v


def _count(shape: Any, reduced: tuple[int, ...]) -> int:
    n = 1
    for a in reduced:
        n *= int(shape[a])
    return n


def moments(x: Any, kept: tuple[int, ...], reduced: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Per-channel (count, mean, M2) of `x` in float64; mean keeps all dims, M2 / count are
    shaped like the kept axes."""
    from keras import ops

    inner, outer = blocked_axes(tuple(x.shape), reduced)
    n = _count(x.shape, reduced)
    mean = _blocked_sum(x, inner, outer) / max(n, 1)
    c = ops.cast(mean, x.dtype)
    m2 = _blocked_sum(ops.square(x - c), inner, outer)
    m2 = ops.maximum(m2 - n * ops.square(mean - ops.cast(c, "float64")), 0.0)
    m2 = ops.reshape(m2, [int(x.shape[a]) for a in kept])
    return ops.full(m2.shape, float(n), dtype="float64"), mean, m2


def _normalize(x: Any, mean: Any, var: Any, gamma: Any, beta: Any, kept: tuple[int, ...],
               eps: float) -> Any:
    from keras import ops

    bshape = [int(x.shape[a]) if a in kept else 1 for a in range(len(x.shape))]
    inv = ops.rsqrt(ops.reshape(ops.cast(var, x.dtype), bshape) + eps)
    if gamma is not None:
        inv = inv * ops.reshape(gamma, bshape)
    shift = -ops.reshape(ops.cast(mean, x.dtype), bshape) * inv
    if beta is not None:
        shift = shift + ops.reshape(beta, bshape)
    return x * inv + shift


def to_device(x: Any) -> Any:
    """A batch's numeric arrays as tensors on the backend's default device (dicts, lists and
    tuples kept), converted while the previous step runs; strings and objects go as they
    are. (JAX has its own: it also shards over the devices.)"""
    from keras import ops

    if isinstance(x, dict):
        return {k: to_device(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_device(v) for v in x)
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    return ops.convert_to_tensor(x) if kind in ("b", "i", "u", "f") else x


Call = tuple[Any, Any, Any]


def rounds(recorded: dict[int, list[Call]],
           layout: list[tuple[int, int, int]]) -> list[list[tuple[int, Call | None]]]:
    """The recorded calls as rounds: round r holds, per layer of `layout`, its channels and its
    r-th call of the step (a layer is usually called once; shared layers and wrappers call it
    more often), None where it has no r-th call. A layer recorded but not in `layout` is a
    bug: KeyError."""
    known = {key for key, _, _ in layout}
    for key in recorded:
        if key not in known:
            raise KeyError(key)
    deepest = max((len(recorded.get(key, ())) for key in known), default=0)
    out = []
    for r in range(deepest):
        row: list[tuple[int, Call | None]] = []
        for key, _, size in layout:
            calls = recorded.get(key, [])
            row.append((size, calls[r] if r < len(calls) else None))
        out.append(row)
    return out


def fold(acc: Any, recorded: dict[int, list[Call]],
         layout: list[tuple[int, int, int]]) -> Any:
    """`acc` with every recorded call merged in, by Chan's exact pairwise update (as
    `stats.Moments.merge` does on the host). Runs inside the compiled step on any backend, so
    the accumulators never leave the device mid-pass.

    `acc` is one float64 array of shape (3, channels of all recorded layers): rows count,
    mean, M2; `layout` gives each layer's (index, first column, columns). One array, merged in
    one vectorized update per round of calls, not three per layer: a step's fixed cost grows
    with its arguments (tf.function inspects each one, ~15 us; jax.jit flattens them) and,
    run eagerly, with its operations, and a deep model has hundreds of layers. A layer not
    called in a round adds count 0, which leaves its columns exactly as they were.
    """
    from keras import ops

    acc = ops.convert_to_tensor(acc)  # eager PyTorch: the pass's empty array, to the device
    for calls in rounds(recorded, layout):
        rows: list[list[Any]] = [[], [], []]
        for size, call in calls:
            for row, t in zip(rows, call or (None, None, None), strict=True):
                row.append(ops.zeros((size,), "float64") if t is None
                           else ops.reshape(ops.cast(t, "float64"), (size,)))
        acc = merge(acc, ops.stack([ops.concatenate(row) for row in rows]), ops)
    return acc


def merge(acc: Any, part: Any, ops: Any) -> Any:
    """Chan's update of (3, C) count / mean / M2 rows `acc` by `part`, with `ops` the array
    namespace (`keras.ops`, or `torch` itself where eager per-call overhead matters)."""
    na, ma, m2a = acc[0], acc[1], acc[2]
    nb, mb, m2b = part[0], part[1], part[2]
    n = na + nb
    safe = ops.maximum(n, ops.ones_like(n))
    delta = mb - ma
    mean = ma + delta * (nb / safe)
    return ops.stack([n, mean, m2a + m2b + ops.square(delta) * (na * nb / safe)])


def chosen(use_batch: Any, batch: tuple[Any, Any], layer: Any) -> tuple[Any, Any]:
    """The (mean, variance) a layer normalizes with: its batch statistics, or its moving ones
    where `use_batch` is false (a layer an earlier sequential level fixed). `use_batch`: None
    (batch), a Python / NumPy bool (eager code branches), or a boolean tensor (a compiled
    step, where it is an input: one step for every level)."""
    from keras import ops

    if use_batch is None or (isinstance(use_batch, bool | np.bool_) and use_batch):
        return batch
    moving = (ops.cast(layer.moving_mean, "float64"), ops.cast(layer.moving_variance, "float64"))
    if isinstance(use_batch, bool | np.bool_):
        return moving
    return (ops.where(use_batch, batch[0], moving[0]), ops.where(use_batch, batch[1], moving[1]))


def batch_stats(layer: Any, inputs: Any, mask: Any, use_batch: Any = None) -> tuple[Any, Any]:
    """BN output plus (count, mean, M2) of the input, as the TensorFlow kernel: normalized with
    the batch statistics (training mode), or where `use_batch` says so with the moving ones.

    A boolean tensor `use_batch` (a compiled step's input) picks a branch at run time
    (`ops.cond`: only the taken branch runs), so a layer fixed by an earlier sequential level
    costs what inference costs and records count 0, which merges as nothing.
    """
    from keras import backend, ops

    x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
    ndim = len(x.shape)
    kept, reduced = channel_axes(ndim, layer.axis)
    gamma = ops.cast(layer.gamma, x.dtype) if layer.scale else None
    beta = ops.cast(layer.beta, x.dtype) if layer.center else None
    eps = float(layer.epsilon)

    def measured() -> tuple[Any, Any, Any, Any]:
        count, mean, m2 = moments(x, kept, reduced)
        mean_c = ops.reshape(mean, m2.shape)
        out = _normalize(x, mean_c, m2 / ops.maximum(count, 1.0), gamma, beta, kept, eps)
        return out, count, mean_c, m2

    def fixed() -> tuple[Any, Any, Any, Any]:
        out = _normalize(x, layer.moving_mean, layer.moving_variance, gamma, beta, kept, eps)
        zero = ops.zeros(tuple(int(x.shape[a]) for a in kept), "float64")
        return out, zero, zero, zero

    if mask is None:
        if use_batch is None or (isinstance(use_batch, bool | np.bool_) and use_batch):
            out, count, mean_c, m2 = measured()
        elif isinstance(use_batch, bool | np.bool_):
            out, count, mean_c, m2 = fixed()
        else:
            out, count, mean_c, m2 = ops.cond(use_batch, measured, fixed)
        return ops.cast(out, layer.compute_dtype), (count, mean_c, m2)
    # masked (padded) positions are rare: plain float64, both statistics then the choice
    x64 = ops.cast(x, "float64")
    w = ops.cast(mask, "float64")
    while len(w.shape) < ndim:
        w = ops.expand_dims(w, -1)
    w = ops.broadcast_to(w, x.shape)
    count = ops.sum(w, axis=reduced)
    mean = ops.sum(w * x64, axis=reduced, keepdims=True) / ops.maximum(
        ops.sum(w, axis=reduced, keepdims=True), 1.0)
    m2 = ops.sum(w * ops.square(x64 - mean), axis=reduced)
    mean_c = ops.reshape(mean, m2.shape)
    used = chosen(use_batch, (mean_c, m2 / ops.maximum(count, 1.0)), layer)
    out = _normalize(x, *used, gamma, beta, kept, eps)
    return ops.cast(out, layer.compute_dtype), (count, mean_c, m2)

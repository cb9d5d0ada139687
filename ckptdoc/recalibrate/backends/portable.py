"""BN statistics written once in `keras.ops`, for the backends without a kernel of their own
(JAX, PyTorch). Same arithmetic as the TensorFlow kernel: float32 sums over blocks of at most
`F32_BLOCK` positions, float64 for the rest, the mean first and then the squared deviations
from it (shifted by the float32-rounded mean, with the exact correction), so no cancellation.

float64 must be real: under JAX the caller runs this with 64-bit types enabled
(`jax.enable_x64`), else a float64 cast would silently give float32.
"""

from __future__ import annotations

from typing import Any

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


def fold(acc: Any, recorded: dict[str, list[tuple[Any, Any, Any]]],
         layout: list[tuple[str, int, int]]) -> Any:
    """`acc` with every recorded call merged in, by Chan's exact pairwise update (as
    `stats.Moments.merge` does on the host). Runs inside the compiled step on any backend, so
    the accumulators never leave the device mid-pass.

    `acc` is one float64 array of shape (3, channels of all recorded layers): rows count,
    mean, M2; `layout` gives each layer's (key, first column, columns). One array, not three
    per layer: a step's fixed cost grows with its arguments (tf.function inspects each one,
    ~15 us; jax.jit flattens them), and a deep model has hundreds.
    """
    from keras import ops

    acc = ops.convert_to_tensor(acc)  # eager PyTorch: the pass's empty array, to the device
    columns = []
    for key, start, size in layout:
        part = acc[:, start:start + size]
        calls = recorded.get(key, [])
        if calls:
            na, ma, m2a = part[0], part[1], part[2]
            for nb, mb, m2b in calls:
                nb, mb, m2b = (ops.reshape(ops.cast(t, "float64"), (size,))
                               for t in (nb, mb, m2b))
                n = na + nb
                safe = ops.maximum(n, 1.0)
                delta = mb - ma
                ma = ma + delta * (nb / safe)
                m2a = m2a + m2b + ops.square(delta) * (na * nb / safe)
                na = n
            part = ops.stack([na, ma, m2a])
        columns.append(part)
    return ops.concatenate(columns, axis=1) if columns else acc


def batch_stats(layer: Any, inputs: Any, mask: Any) -> tuple[Any, Any]:
    """Training-mode BN output plus (count, mean, M2) of the input, as the TensorFlow kernel."""
    from keras import backend, ops

    x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
    ndim = len(x.shape)
    kept, reduced = channel_axes(ndim, layer.axis)
    gamma = ops.cast(layer.gamma, x.dtype) if layer.scale else None
    beta = ops.cast(layer.beta, x.dtype) if layer.center else None
    eps = float(layer.epsilon)
    if mask is None:
        count, mean, m2 = moments(x, kept, reduced)
    else:  # masked (padded) positions are rare: plain float64
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
    out = _normalize(x, mean_c, m2 / ops.maximum(count, 1.0), gamma, beta, kept, eps)
    return ops.cast(out, layer.compute_dtype), (count, mean_c, m2)

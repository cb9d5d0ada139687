"""The PyTorch backend: the pass runs eagerly under `torch.no_grad()` (Keras' own torch
predict is eager too).

Eager code writes every intermediate as a full-size tensor, so the kernel here is the shared
one's arithmetic (float32 blocks of <= F32_BLOCK positions, float64 beyond, the mean then the
shifted squares) with one full-size temporary instead of several, and the output is one fused
`torch.batch_norm` with the measured statistics. (PyTorch's `var`, which accumulates in
float64 on CPU, was tried: 1.6x slower than this.) Masks and several channel axes use the
shared `keras.ops` kernel. Not exercised by this project's CI (PyTorch is too
large to install there); tests/test_backends.py runs it where it is installed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ckptdoc.recalibrate.backends import Step, portable
from ckptdoc.recalibrate.backends.one_process import combine, writes
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.stats import blocked_axes, channel_axes

name = "torch"


def _moments(x: Any, kept: tuple[int, ...], reduced: tuple[int, ...],
             n: int) -> tuple[Any, Any, Any]:
    """`portable.moments` written in PyTorch, with the shifted square computed in place: one
    full-size temporary instead of two."""
    import torch

    inner, outer = blocked_axes(tuple(x.shape), reduced)

    def blocked_sum(v: Any) -> Any:
        if inner:
            v = v.sum(dim=inner, keepdim=True)
        v = v.double()
        return v.sum(dim=outer, keepdim=True) if outer else v

    mean = blocked_sum(x) / max(n, 1)
    c = mean.to(x.dtype)
    m2 = blocked_sum(torch.sub(x, c).square_())
    m2 = (m2 - n * (mean - c.double()).square()).clamp_min(0.0)
    shape = [int(x.shape[a]) for a in kept]
    m2, mean = m2.reshape(shape), mean.reshape(shape)
    return torch.full(shape, float(n), dtype=torch.float64, device=x.device), mean, m2


def batch_stats(layer: Any, inputs: Any, mask: Any, use_batch: Any = None) -> tuple[Any, Any]:
    """BN output plus float64 (count, mean, M2) of the input; see module doc. Eager: a layer
    fixed by an earlier sequential level (`use_batch` false) simply runs inference."""
    import torch
    from keras import backend, ops

    x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
    kept, reduced = channel_axes(x.ndim, layer.axis)
    if mask is not None or len(kept) != 1:
        return portable.batch_stats(layer, inputs, mask, use_batch)
    if use_batch is not None and not bool(use_batch):
        # A layer an earlier sequential level fixed: inference, and count 0 (merges as nothing).
        zero = torch.zeros(int(x.shape[kept[0]]), dtype=torch.float64, device=x.device)
        count, mean, m2 = zero, zero, zero
        used_mean, used_var = ops.convert_to_tensor(layer.moving_mean), ops.convert_to_tensor(
            layer.moving_variance)
    else:
        n = 1
        for a in reduced:
            n *= int(x.shape[a])
        count, mean, m2 = _moments(x, kept, reduced, n)
        used_mean, used_var = mean, m2 / max(n, 1)
    gamma = ops.cast(layer.gamma, x.dtype) if layer.scale else None
    beta = ops.cast(layer.beta, x.dtype) if layer.center else None
    channel = kept[0]
    out = torch.nn.functional.batch_norm(
        x.movedim(channel, 1), used_mean.to(x.dtype), used_var.to(x.dtype), weight=gamma,
        bias=beta, training=False, eps=float(layer.epsilon),
    ).movedim(1, channel)
    return ops.cast(out, layer.compute_dtype), (count, mean, m2)


def fold(acc: Any, recorded: dict[int, list[portable.Call]],
         layout: list[tuple[int, int, int]]) -> Any:
    """`portable.fold` in PyTorch itself: run eagerly, each `keras.ops` call costs tens of
    microseconds of conversion around a few of compute, and a deep model merges hundreds of
    layers per batch; here a round is three concatenations and one vectorized update."""
    import torch
    from keras import ops

    if not isinstance(acc, torch.Tensor):
        acc = ops.convert_to_tensor(acc)  # the pass's empty array, to Keras' device
    for calls in portable.rounds(recorded, layout):
        rows: list[list[Any]] = [[], [], []]
        for size, call in calls:
            for row, t in zip(rows, call or (None, None, None), strict=True):
                row.append(acc.new_zeros(size) if t is None
                           else torch.as_tensor(t).reshape(size).to(torch.float64))
        acc = portable.merge(acc, torch.stack([torch.cat(row) for row in rows]), torch)
    return acc


def make_step(model_of: Callable[[], Any], body: Callable[..., Any],
              jit: bool) -> Step:
    """Eager, under `inference_mode` (no autograd bookkeeping at all). CUDA kernels are queued
    asynchronously; the accumulators stay on the device until the pass ends."""
    import torch

    def run(acc: Any, x: Any, flags: Any = None) -> Any:
        with torch.inference_mode():
            return body(model_of(), acc, x, flags)

    return Step(run, put=portable.to_device)


def inference(model: Any) -> Callable[[Any], Any]:
    return model.predict_on_batch  # type: ignore[no-any-return]


def dependency_graph(model: Any, body: Callable[[Any, Any, Any], Any], sample: Any,
                     calls: Callable[[], list[Any]]) -> dict[int, set[int]] | None:
    return None


def replicas(model: Any) -> int:
    return 1


@contextlib.contextmanager
def distributed(devices: int | None) -> Iterator[None]:
    """Keras 3 has no data-parallel distribution for PyTorch: one device only."""
    if devices != 1:
        raise RecalibrationError("--devices: the torch backend recalibrates on one device "
                                 "(data-parallel runs need the tensorflow or jax backend)")
    yield


__all__ = ["batch_stats", "combine", "dependency_graph", "distributed", "fold", "inference",
           "make_step", "name", "replicas", "writes"]

"""Exact, mergeable per-channel moments in float64 (Chan et al. parallel Welford update).

A `Moments` holds count / mean / M2 per channel. Merging two partial results is exact up to
float64 rounding, so the final mean and variance do not depend on how the samples were split
into batches or in which order the batches arrived. Pure NumPy: no TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def channel_axes(ndim: int, axis: int | Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split `range(ndim)` into (kept channel axes, reduced axes); accepts negative axes."""
    axes = [axis] if isinstance(axis, int | np.integer) else list(axis)
    kept: list[int] = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an input of rank {ndim}")
        kept.append(a % ndim)
    if len(set(kept)) != len(kept):
        raise ValueError(f"repeated axis in {axes}")
    kept_t = tuple(sorted(kept))
    return kept_t, tuple(a for a in range(ndim) if a not in kept_t)


# At most this many positions per channel are summed in the activation's float32 before
# float64 takes over. Summing <= 256 terms in float32 costs ~1e-7 relative; the rest is float64.
F32_BLOCK = 256


def blocked_axes(shape: Sequence[int | None], reduced: tuple[int, ...]) -> tuple[list[int],
                                                                                   list[int]]:
    """Split the reduced axes into a float32 stage (static, product <= F32_BLOCK) and the rest.

    Innermost axes first: a reduction over the trailing spatial axis (NHWC: W, NCHW: W) is the
    cheapest one on CPU, and it shrinks the tensor the float64 stage reads.
    """
    inner: list[int] = []
    size = 1
    for a in sorted(reduced, reverse=True):
        d = shape[a]
        if d is not None and size * int(d) <= F32_BLOCK:
            inner.append(a)
            size *= int(d)
    return sorted(inner), [a for a in reduced if a not in inner]


@dataclass
class Moments:
    """Running count / mean / M2 (sum of squared deviations) per channel, all float64."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Moments:
        z = np.zeros(shape, dtype=np.float64)
        return cls(z.copy(), z.copy(), z.copy())

    @classmethod
    def from_batch(
        cls, x: np.ndarray, axis: int | Sequence[int] = -1, mask: np.ndarray | None = None
    ) -> Moments:
        """Moments of one batch; `axis` names the channel axis (or axes) that is kept.

        `mask` (broadcastable to x, True = counted) excludes padded positions.
        """
        x = np.asarray(x, dtype=np.float64)
        kept, reduced = channel_axes(x.ndim, axis)
        if mask is None:
            n = float(np.prod([x.shape[a] for a in reduced], dtype=np.float64))
            mean = x.mean(axis=reduced) if n else np.zeros([x.shape[a] for a in kept])
            m2 = ((x - np.expand_dims(mean, reduced)) ** 2).sum(axis=reduced) if n else mean * 0
            count = np.full(mean.shape, n)
            return cls(count, mean, m2)
        w = np.broadcast_to(np.asarray(mask, dtype=np.float64), x.shape)
        count = w.sum(axis=reduced)
        safe = np.where(count > 0, count, 1.0)
        mean = (w * x).sum(axis=reduced) / safe
        m2 = (w * (x - np.expand_dims(mean, reduced)) ** 2).sum(axis=reduced)
        return cls(count, mean, m2)

    def merge(self, other: Moments) -> Moments:
        """Combine with another partial result (Chan's pairwise update). Returns self."""
        na, nb = self.count, np.asarray(other.count, dtype=np.float64)
        n = na + nb
        safe = np.where(n > 0, n, 1.0)
        delta = np.asarray(other.mean, dtype=np.float64) - self.mean
        self.mean = self.mean + delta * (nb / safe)
        self.m2 = self.m2 + np.asarray(other.m2, dtype=np.float64) + delta**2 * (na * nb / safe)
        self.count = n
        return self

    def update(
        self, x: np.ndarray, axis: int | Sequence[int] = -1, mask: np.ndarray | None = None
    ) -> Moments:
        return self.merge(Moments.from_batch(x, axis, mask))

    @property
    def variance(self) -> np.ndarray:
        """Population (biased) variance, the convention Keras 3 BN reads and writes."""
        return self.m2 / np.where(self.count > 0, self.count, 1.0)

    @property
    def unbiased_variance(self) -> np.ndarray:
        return self.m2 / np.where(self.count > 1, self.count - 1, 1.0)

    @property
    def total(self) -> int:
        """Samples (positions) seen by the least-covered channel."""
        return int(self.count.min()) if self.count.size else 0

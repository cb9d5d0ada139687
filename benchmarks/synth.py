"""Synthetic image batches for the recalibration benchmarks, reproducible in any process.

Each image is a low-frequency random pattern (a coarse random grid upsampled) plus pixel noise
and a per-image brightness / contrast, in [-1, 1] as MobileNetV2 / ResNet preprocessing gives.
Batch `i` depends only on (seed, i), so the timing, memory and accuracy runs, each in its own
process, see exactly the same samples. Usable as `ckptdoc recalibrate --data
benchmarks/synth.py:batches` (size and count from CKPTDOC_BENCH_* environment variables).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

SEED = 1234


def batch(i: int, batch_size: int, size: int, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng((seed, i))
    coarse = rng.standard_normal((batch_size, 6, 6, 3)).astype(np.float32)
    reps = -(-size // 6)
    x = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]
    x = x * rng.uniform(0.2, 0.6, (batch_size, 1, 1, 1)).astype(np.float32)
    x += rng.uniform(-0.3, 0.3, (batch_size, 1, 1, 1)).astype(np.float32)
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    return np.clip(x, -1.0, 1.0)


def iterate(samples: int, batch_size: int, size: int, seed: int = SEED) -> Iterator[np.ndarray]:
    """`samples` images in batches of `batch_size` (the last one shorter if needed)."""
    done = i = 0
    while done < samples:
        n = min(batch_size, samples - done)
        yield batch(i, batch_size, size, seed)[:n]
        done += n
        i += 1


def batches() -> Iterator[np.ndarray]:
    """For `ckptdoc recalibrate --data benchmarks/synth.py:batches`."""
    env = os.environ
    return iterate(
        int(env.get("CKPTDOC_BENCH_SAMPLES", "1024")),
        int(env.get("CKPTDOC_BENCH_BATCH", "64")),
        int(env.get("CKPTDOC_BENCH_SIZE", "96")),
    )

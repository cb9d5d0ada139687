"""Sentinel values that locate a model's variables in the files the framework writes.

Recalibration sets each statistic variable to a distinct constant, lets Keras / TensorFlow
save the model, and finds every constant again in the saved file: the key it was written
under, however the model nests its layers. The constants must survive the variable's dtype
exactly, or the lookup misses: `-(1 + j / 128)` lies in [1, 2) on a 1/128 grid, which
bfloat16 (7 mantissa bits), float16, float32 and float64 all represent exactly. Hence batches of
`BATCH` variables at a time.
"""

from __future__ import annotations

__all__ = ["BATCH", "sentinel"]

BATCH = 128


def sentinel(j: int) -> float:
    """The constant for the `j`-th variable of a batch (0 <= j < BATCH)."""
    if not 0 <= j < BATCH:
        raise ValueError(f"sentinel index {j} outside [0, {BATCH})")
    return -(1.0 + j / BATCH)

"""bfloat16, read without an extra dependency: it is the top half of a float32, so widening is
exact. One routine for every reader that meets it (TF bundles, Keras 3 HDF5, PyTorch zips,
safetensors)."""

from __future__ import annotations

import numpy as np

__all__ = ["bfloat16_to_float32"]


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (any array of 2-byte little-endian items) as float32, same shape."""
    bits = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype="<u2").astype(np.uint32)
    return (bits << 16).view(np.float32).reshape(raw.shape)

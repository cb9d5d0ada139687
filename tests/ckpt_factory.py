"""Tiny Keras-2-style weights files written with h5py, so CLI tests need no TensorFlow.

Layout of `model.save_weights("x.h5")` in Keras 2 / tf-keras: root attr `layer_names`, one
group per layer with attr `weight_names` (`bn/gamma:0`, ...), datasets at those names.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

ROLES = ("gamma", "beta", "moving_mean", "moving_variance")


def healthy_stats(channels: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "gamma": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        "beta": rng.normal(0, 0.1, channels).astype(np.float32),
        "moving_mean": rng.normal(0, 1.0, channels).astype(np.float32),
        "moving_variance": rng.uniform(0.5, 2.0, channels).astype(np.float32),
    }


def never_updated_stats(channels: int, seed: int = 0) -> dict[str, np.ndarray]:
    """BN002: trained gamma / beta, statistics exactly at their initial 0 / 1."""
    stats = healthy_stats(channels, seed)
    stats["moving_mean"] = np.zeros(channels, np.float32)
    stats["moving_variance"] = np.ones(channels, np.float32)
    return stats


def write_keras2_weights(path: Path, layers: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write `{layer_name: {role: array}}` as a Keras 2 `save_weights` .h5 file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers], dtype="S")
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        for name, weights in layers.items():
            group = f.create_group(name)
            wnames = [f"{name}/{role}:0" for role in weights]
            group.attrs["weight_names"] = np.array([w.encode() for w in wnames], dtype="S")
            for wname, value in zip(wnames, weights.values(), strict=True):
                group.create_dataset(wname, data=value)
    return path


def healthy_model(path: Path, seed: int = 0, layers: int = 2) -> Path:
    return write_keras2_weights(
        path, {f"batch_normalization_{i}": healthy_stats(4, seed + i) for i in range(layers)}
    )


def broken_model(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """Every BN layer never updated (BN002, error)."""
    return write_keras2_weights(
        path, {f"batch_normalization_{i}": never_updated_stats(4, seed + i) for i in range(layers)}
    )


def barely_moved_model(path: Path, seed: int = 0) -> Path:
    """One layer with statistics a hair from 0 / 1 (BN005, warning), one healthy."""
    stats = healthy_stats(4, seed)
    stats["moving_mean"] = np.full(4, 0.01, np.float32)
    stats["moving_variance"] = np.full(4, 0.99, np.float32)
    return write_keras2_weights(
        path, {"bn_slow": stats, "bn_ok": healthy_stats(4, seed + 1)}
    )


def garbage_file(path: Path) -> Path:
    """A `.h5` that is not HDF5: unreadable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an hdf5 file\n" * 4)
    return path

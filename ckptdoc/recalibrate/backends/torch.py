"""The PyTorch backend: the pass runs eagerly under `torch.no_grad()` (Keras' own torch
predict is eager too); the statistics use the `keras.ops` kernel in float64, which PyTorch has
natively. Not exercised by this project's CI (PyTorch is too large to install there)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ckptdoc.recalibrate import RecalibrationError
from ckptdoc.recalibrate.backends.one_process import combine, writes
from ckptdoc.recalibrate.backends.portable import batch_stats

name = "torch"


def make_step(model_of: Callable[[], Any], body: Callable[[Any, Any], Any], jit: bool) -> Any:
    import torch

    def run(x: Any) -> Any:
        with torch.no_grad():
            return body(model_of(), x)

    return run


def inference(model: Any) -> Callable[[Any], Any]:
    return model.predict_on_batch  # type: ignore[no-any-return]


def dependency_graph(model: Any, body: Callable[[Any, Any], Any], sample: Any,
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


__all__ = ["batch_stats", "combine", "dependency_graph", "distributed", "inference",
           "make_step", "name", "replicas", "writes"]

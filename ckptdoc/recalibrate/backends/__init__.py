"""One module per Keras 3 backend, each with the same four functions:

- `batch_stats(layer, inputs, mask, use_batch)`: the BN layer's training-mode output (or,
  where `use_batch` is false, its output with the moving statistics) and the float64
  (count, mean, M2) of its input, as that backend computes best;
- `make_step(model_of, body, jit)`: the compiled forward pass (`tf.function`, a stateless
  `jax.jit`, or eager PyTorch under `inference_mode`) as a `Step`: `step.run(acc, x, flags)`
  (flags: per layer, batch or moving statistics) folds one batch's
  statistics into the accumulators `acc` on the device and returns them, so a pass makes one
  device-to-host transfer, at its end (`Step.parts`), not one per batch;
- `fold(acc, recorded, layout)`: the exact merge the step runs (`portable.fold`, or the
  backend's own where eager overhead matters);
- `inference(model)`: the model in inference mode, for the held-out check;
- `dependency_graph(...)`: which BN layers feed which, where the backend's graph shows it;
- `replicas(model)` / `distributed(devices)`: data parallelism through the backend's own
  engine (`tf.distribute.MirroredStrategy`, `keras.distribution.DataParallel`); across
  processes (TensorFlow's `MultiWorkerMirroredStrategy`), `combine` gathers every worker's
  moments and `writes` says whether this process writes the output.

`current()` picks the module for `keras.backend.backend()`. The engine knows only this
interface; nothing here knows files, targets or the CLI.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.stats import Moments

SUPPORTED = ("tensorflow", "jax", "torch")


def _whole(acc: Any) -> list[Any]:
    return [acc]


def _nothing(acc: Any) -> None:
    return None


def _same(x: Any) -> Any:
    return x


@dataclass
class Step:
    """A compiled forward step and what the engine needs to drive it without waiting on it.

    `run(acc, x, flags)` returns the accumulators (`portable.fold`: one float64 array, count / mean
    / M2 of every layer's channels) with the batch folded in, without synchronizing (JAX and
    PyTorch dispatch asynchronously on accelerators); `parts(acc)` is the partial
    accumulators (one, or one per replica), still on the device; `put(x)` starts
    copying a batch to the device ahead of its use; `wait(acc)` blocks until `acc` is
    computed, which bounds how far the host runs ahead.
    """

    run: Callable[..., Any]
    parts: Callable[[Any], list[Any]] = field(default=_whole)
    put: Callable[[Any], Any] = field(default=_same)
    wait: Callable[[Any], None] = field(default=_nothing)


class Backend(Protocol):
    name: str

    def batch_stats(self, layer: Any, inputs: Any, mask: Any,
                    use_batch: Any = None) -> tuple[Any, Any]: ...

    def make_step(self, model_of: Callable[[], Any], body: Callable[..., Any],
                  jit: bool) -> Step: ...

    def fold(self, acc: Any, recorded: dict[int, list[tuple[Any, Any, Any]]],
             layout: list[tuple[int, int, int]]) -> Any: ...

    def inference(self, model: Any) -> Callable[[Any], Any]: ...

    def dependency_graph(self, model: Any, body: Callable[..., Any], sample: Any,
                         calls: Callable[[], list[Any]]) -> dict[int, set[int]] | None: ...

    def replicas(self, model: Any) -> int: ...

    def combine(self, model: Any, moments: dict[int, Moments]) -> dict[int, Moments]: ...

    def writes(self, model: Any) -> bool: ...

    def distributed(self, devices: int | None) -> AbstractContextManager[None]: ...


def current() -> Backend:
    """The backend module for the Keras backend in use."""
    import os

    from ckptdoc.install_hint import install_hint

    try:
        import keras
    except ImportError as exc:
        wanted = os.environ.get("KERAS_BACKEND", "tensorflow")
        extra = "recalibrate" if wanted == "tensorflow" else wanted
        raise RecalibrationError(
            f"recalibration runs the model with Keras on the {wanted!r} backend, which is not "
            f"installed ({exc}); install it with {install_hint(extra)}"
        ) from None
    name = keras.backend.backend()
    if name not in SUPPORTED:
        raise RecalibrationError(
            f"the Keras backend {name!r} is not supported for recalibration "
            f"(supported: {', '.join(SUPPORTED)}; set KERAS_BACKEND)"
        )
    module: Backend = importlib.import_module(f"ckptdoc.recalibrate.backends.{name}")  # type: ignore[assignment]
    return module


__all__ = ["SUPPORTED", "Backend", "Step", "current"]

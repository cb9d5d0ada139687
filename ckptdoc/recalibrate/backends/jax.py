"""The JAX backend: the pass is one `jax.jit`-compiled, stateless function.

The model's variables go in as arguments (a `keras.StatelessScope`, as `stateless_call` does),
so the compiled step is reused across passes even as sequential mode changes the moving
statistics it reads, and nothing is baked in as a constant. The step runs with 64-bit types
enabled (`jax.enable_x64`) so the statistics are float64 for real; the model's own layers keep
their dtypes (Keras' variables and inputs are float32). JAX is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckptdoc.recalibrate.backends.portable import batch_stats

name = "jax"


def make_step(model_of: Callable[[], Any], body: Callable[[Any, Any], Any], jit: bool) -> Any:
    import jax
    import keras

    def step(values: list[Any], x: Any) -> Any:
        model = model_of()
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values, strict=True))):
            return body(model, x)

    compiled = jax.jit(step)

    def run(x: Any) -> Any:
        model = model_of()
        with jax.enable_x64(True):
            return compiled([v.value for v in model.variables], x)

    return run


def inference(model: Any) -> Callable[[Any], Any]:
    """Keras' own compiled, stateless predict step."""
    return model.predict_on_batch  # type: ignore[no-any-return]


def dependency_graph(model: Any, body: Callable[[Any, Any], Any], sample: Any,
                     calls: Callable[[], list[Any]]) -> dict[int, set[int]] | None:
    return None  # sequential mode falls back to one layer per pass, in call order


__all__ = ["batch_stats", "dependency_graph", "inference", "make_step", "name"]

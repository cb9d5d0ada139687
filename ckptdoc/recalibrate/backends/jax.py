"""The JAX backend: the pass is one `jax.jit`-compiled, stateless function.

Data-parallel through Keras' own `keras.distribution` API: under a `DataParallel`
distribution (set by the user, or by `distributed(n)` for `--devices`), each batch is sharded
along its first axis over the mesh and XLA partitions the step (GSPMD). The statistics are
sums over the batch axis, so each device sums its shard and the partial float64 sums are
all-reduced: the result is one device's, up to the order of float64 additions.

The model's variables go in as arguments (a `keras.StatelessScope`, as `stateless_call` does),
so the compiled step is reused across passes even as sequential mode changes the moving
statistics it reads, and nothing is baked in as a constant. The step runs with 64-bit types
enabled (`jax.enable_x64`) so the statistics are float64 for real; the model's own layers keep
their dtypes (Keras' variables and inputs are float32). JAX is imported inside functions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ckptdoc.recalibrate.backends import Step
from ckptdoc.recalibrate.backends.one_process import combine, writes
from ckptdoc.recalibrate.backends.portable import batch_stats, fold
from ckptdoc.recalibrate.errors import RecalibrationError

name = "jax"


def make_step(model_of: Callable[[], Any], body: Callable[..., Any], jit: bool) -> Step:
    import jax
    import keras

    def step(values: list[Any], acc: Any, x: Any, flags: Any) -> Any:
        model = model_of()
        with keras.StatelessScope(state_mapping=list(zip(model.variables, values, strict=True))):
            return body(model, acc, x, flags)

    compiled = jax.jit(step)

    def run(acc: Any, x: Any, flags: Any = None) -> Any:
        model = model_of()
        with jax.enable_x64(True):
            return compiled([v.value for v in model.variables], acc, x, flags)

    return Step(run, put=_sharded, wait=jax.block_until_ready)


def _sharded(x: Any) -> Any:
    """`x` on its way to the device (an asynchronous copy, so it overlaps the step before it);
    under a data-parallel distribution, split along its first axis over the devices. A batch
    that does not divide evenly (the last one) stays whole, which XLA then runs replicated.
    What is not a numeric array (strings, objects) goes to the model as it is."""
    import jax
    import keras
    import numpy as np

    dist = keras.distribution.distribution()
    n = replicas(None)

    def one(a: Any) -> Any:
        if isinstance(a, jax.Array):
            return a
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            return a
        if dist is None or n == 1 or a.ndim == 0 or a.shape[0] % n:
            return jax.device_put(a)
        return jax.device_put(a, dist.get_data_layout(a.shape).backend_layout)

    return jax.tree_util.tree_map(one, x)


def replicas(model: Any) -> int:
    """Devices the batch axis is split over (1 without a data-parallel distribution)."""
    import keras

    dist = keras.distribution.distribution()
    name = getattr(dist, "batch_dim_name", None)
    if dist is None or name is None:
        return 1
    mesh = dist.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(name)])


@contextlib.contextmanager
def distributed(devices: int | None) -> Iterator[None]:
    """A `keras.distribution.DataParallel` over `devices` local devices (None: all of them)
    while the model loads and runs, as Keras' `fit` would use it."""
    import keras

    if devices == 1:
        yield
        return
    available = keras.distribution.list_devices()
    wanted = len(available) if devices is None else devices
    if wanted > len(available):
        raise RecalibrationError(f"--devices {devices}: only {len(available)} JAX device(s) "
                                 f"here ({', '.join(available)})")
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=available[:wanted]))
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def inference(model: Any) -> Callable[[Any], Any]:
    """Keras' own compiled, stateless predict step."""
    return model.predict_on_batch  # type: ignore[no-any-return]


def dependency_graph(model: Any, body: Callable[..., Any], sample: Any,
                     calls: Callable[[], list[Any]]) -> dict[int, set[int]] | None:
    return None  # sequential mode falls back to one layer per pass, in call order


__all__ = ["batch_stats", "combine", "dependency_graph", "distributed", "fold", "inference",
           "make_step", "name", "replicas", "writes"]

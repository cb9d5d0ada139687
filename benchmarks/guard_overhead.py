"""Benchmark (not a test): what `ckptdoc.guard.BatchNormMonitor` costs a healthy `fit`.

    python benchmarks/guard_overhead.py [--steps 60] [--check-after 20] [--repeats 5]

Trains MobileNetV2 (52 BN layers, 64x64 inputs, batch 32, random data) for `--steps` steps
with and without the monitor (`every=True`, so it checks every `--check-after` steps: one
read of all BN variables per check), alternating the two so machine load hits both alike, and
prints medians and their ratio. The monitor adds one snapshot at the start and one read per
check, nothing per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--check-after", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import keras
    import numpy as np

    from ckptdoc.guard import BatchNormMonitor

    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), weights=None, classes=10)
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * 32, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)  # trace once

    def run(callbacks: list) -> float:  # type: ignore[type-arg]
        start = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    plain, guarded = [], []
    for _ in range(args.repeats):
        plain.append(run([]))
        guarded.append(run([BatchNormMonitor(check_after_steps=args.check_after, every=True)]))
    p, g = statistics.median(plain), statistics.median(guarded)
    checks = args.steps // args.check_after
    print(f"MobileNetV2, {args.steps} steps, {checks} checks of 52 BN layers")
    print(f"fit without monitor: {p:.3f} s (median of {args.repeats})")
    print(f"fit with monitor:    {g:.3f} s")
    print(f"ratio: {g / p:.3f}x")


if __name__ == "__main__":
    main()

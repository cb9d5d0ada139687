"""Benchmark (not a test): recalibration time vs a plain `model.predict` over the same samples.

    python benchmarks/recalibrate_vs_predict.py [--model mobilenetv2|resnet50|small]
        [--samples 1024] [--batch-size 64] [--image-size 96] [--mode precise]

Both sides run once to warm up (tracing), then are timed on the same in-memory samples. The goal
is a ratio of at most 1.2x: recalibration is one forward pass plus per-channel float64 moments.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(name: str, size: int):  # type: ignore[no-untyped-def]
    import keras

    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)
    if name == "resnet50":
        return keras.applications.ResNet50(input_shape=(size, size, 3), weights=None)
    inp = keras.Input((size, size, 3))
    h = inp
    for filters in (16, 32, 64):
        h = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2", choices=["mobilenetv2", "resnet50", "small"])
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--mode", default="precise", choices=["precise", "sequential"])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    args = ap.parse_args()

    import numpy as np

    from ckptdoc.recalibrate.api import recalibrate

    model = build(args.model, args.image_size)
    x = (
        np.random.default_rng(0)
        .normal(size=(args.samples, args.image_size, args.image_size, 3))
        .astype("float32")
    )
    warm = x[: args.batch_size * 2]
    model.predict(warm, batch_size=args.batch_size, verbose=0)
    recalibrate(model, warm, batch_size=args.batch_size, samples=None, mode=args.mode)

    def best(fn) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_predict = best(lambda: model.predict(x, batch_size=args.batch_size, verbose=0))
    t_recal = best(
        lambda: recalibrate(model, x, batch_size=args.batch_size, samples=None, mode=args.mode)
    )
    n_bn = len(__import__("ckptdoc.recalibrate.engine", fromlist=["x"]).find_bn_layers(model))
    print(
        f"model {args.model} ({n_bn} BN layers), {args.samples} samples of "
        f"{args.image_size}x{args.image_size}x3, batch {args.batch_size}, mode {args.mode}"
    )
    print(f"model.predict : {t_predict:8.3f} s")
    print(f"recalibrate   : {t_recal:8.3f} s")
    ratio = t_recal / t_predict
    print(f"ratio         : {ratio:8.2f}x  (goal <= 1.20x: {'met' if ratio <= 1.2 else 'NOT met'})")


if __name__ == "__main__":
    main()

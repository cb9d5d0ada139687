"""Benchmark (not a test): the cost of `audit --data`'s comparison (issue 26) against one
`recalibrate` measurement and a plain `model.predict` over the same samples.

    python benchmarks/data_audit_cost.py [--model mobilenetv2|small] [--samples 512]
        [--batch-size 64] [--image-size 96] [--repeat 3]

The comparison is one inference pass with the stored statistics (`keras_model.observe`);
recalibration measures (one pass) and then self-checks (inference over up to 1,024 of the
samples). The target of the issue: the comparison costs no more than one recalibrate pass.
Each side runs once to warm up, then `--repeat` times alternating; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2", choices=["mobilenetv2", "small"])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import numpy as np

    from benchmarks.recalibrate_vs_predict import build
    from ckptdoc.recalibrate.engine import assign, find_bn_layers, snapshot
    from ckptdoc.recalibrate.keras_model import measure, observe
    from ckptdoc.recalibrate.options import Options

    model = build(args.model, args.image_size)
    x = np.random.default_rng(0).normal(
        0, 1, (args.samples, args.image_size, args.image_size, 3)).astype("float32")
    options = Options(data=x, samples=args.samples, batch_size=args.batch_size)
    layers = find_bn_layers(model)
    stored = [snapshot(bn) for bn in layers]

    def predict() -> None:
        model.predict(x, batch_size=args.batch_size, verbose=0)

    def compare() -> None:
        observe(model, options)

    def recalibrate() -> None:
        measure(model, options)
        for bn, values in zip(layers, stored, strict=True):  # the same model every time
            assign(bn, values)

    runs = {"predict": predict, "audit --data": compare, "recalibrate": recalibrate}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up: tracing
        fn()
    for _ in range(args.repeat):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model} {args.image_size}px, {args.samples} samples, batch {args.batch_size}, "
          f"{len(layers)} BN layers; medians of {args.repeat}")
    for name, t in med.items():
        print(f"  {name:14s} {t:7.2f} s")
    print(f"  audit --data / recalibrate: {med['audit --data'] / med['recalibrate']:.2f}x; "
          f"audit --data / predict: {med['audit --data'] / med['predict']:.2f}x")


if __name__ == "__main__":
    main()

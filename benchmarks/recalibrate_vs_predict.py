"""Benchmark (not a test): recalibration time vs a plain `model.predict` over the same samples.

    python benchmarks/recalibrate_vs_predict.py [--model mobilenetv2|resnet50|small|dense48]
        [--samples 1024] [--batch-size 64] [--image-size 96] [--mode precise]
        [--weights W.weights.h5] [--stats S.npz]

Any Keras backend (`KERAS_BACKEND=jax python benchmarks/...`). To check that another machine
or backend computes the same statistics: `--weights` loads the weights from the file (or
writes them there first), `--stats` writes the recalibrated statistics there, or, when the
file exists, compares against it and prints the largest relative difference. The GPU anchor
of the issue: `--model resnet50 --image-size 224 --samples 4096 --weights ... --stats ...`
with the files made on the CPU.

Where torch and torchvision are installed, PyTorch's own `update_bn` on torchvision's version
of the model (same samples and batch size) is timed in the same run, as the anchor.

Both sides run once to warm up (tracing; the first-call times are printed too), then are timed
on the same in-memory samples with the same batch size, alternating predict / recalibrate so
that load from other processes hits both alike; medians are reported. Both run the model's
layers with the same XLA setting (`model.jit_compile`, off on CPU); recalibration compiles only
its per-BN statistics kernel with XLA (CKPTDOC_RECALIBRATE_XLA=0 turns that off). The goal is a
ratio of at most 1.2x: recalibration is one forward pass plus per-channel float64 moments.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(name: str, size: int):  # type: ignore[no-untyped-def]
    import keras

    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None)
    if name == "resnet50":
        return keras.applications.ResNet50(input_shape=(size, size, 3), weights=None)
    if name == "dense48":  # per-batch costs dominate: 48 cheap Dense+BN+ReLU blocks
        inp = keras.Input((16,))
        h = inp
        for _ in range(48):
            h = keras.layers.Dense(16)(h)
            h = keras.layers.BatchNormalization()(h)
            h = keras.layers.ReLU()(h)
        return keras.Model(inp, h)
    inp = keras.Input((size, size, 3))
    h = inp
    for filters in (16, 32, 64):
        h = keras.layers.Conv2D(filters, 3, strides=2, padding="same")(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def fmt(ts: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2",
                    choices=["mobilenetv2", "resnet50", "small", "dense48"])
    ap.add_argument("--pass-only", action="store_true",
                    help="time one measurement pass (the engine), not the whole recalibrate "
                    "(which adds the self-check's inference pass over the first 1024 samples, "
                    "and sequential passes where precise mode fails it)")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--mode", default="precise", choices=["precise", "sequential"])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of each; medians reported")
    ap.add_argument("--weights", help="load the model's weights from here (written if absent)")
    ap.add_argument("--stats", help="write the new statistics here, or compare with them")
    ap.add_argument("--anchor", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.anchor:
        anchor(args, samples(args))
        return

    import keras
    import numpy as np

    from ckptdoc.recalibrate.api import recalibrate

    keras.utils.set_random_seed(0)
    model = build(args.model, args.image_size)
    if args.weights:
        if os.path.exists(args.weights):
            model.load_weights(args.weights)
        else:
            model.save_weights(args.weights)
    x = samples(args)
    warm = x[: args.batch_size * 2]

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def predict() -> None:
        model.predict(x, batch_size=args.batch_size, verbose=0)

    def recal() -> None:
        if args.pass_only:
            one_pass(x)
        else:
            recalibrate(model, x, batch_size=args.batch_size, samples=None, mode=args.mode)

    def one_pass(data) -> None:  # type: ignore[no-untyped-def]
        from ckptdoc.recalibrate.data import Batch
        from ckptdoc.recalibrate.engine import Capture, find_bn_layers, run_pass

        capture = Capture(find_bn_layers(model))
        batches = [Batch(data[i:i + args.batch_size])
                   for i in range(0, len(data), args.batch_size)]
        with capture.installed():
            run_pass(model, capture, batches)

    first_predict = timed(lambda: model.predict(warm, batch_size=args.batch_size, verbose=0))
    first_recal = timed(
        lambda: one_pass(warm) if args.pass_only else recalibrate(
            model, warm, batch_size=args.batch_size, samples=None, mode=args.mode))
    tp, tr = [], []
    for _ in range(args.repeat):  # alternate, so that background load hits both alike
        tp.append(timed(predict))
        tr.append(timed(recal))
    t_predict, t_recal = float(np.median(tp)), float(np.median(tr))
    pair = float(np.median([r / p for p, r in zip(tp, tr, strict=True)]))
    n_bn = len(__import__("ckptdoc.recalibrate.engine", fromlist=["x"]).find_bn_layers(model))
    print(
        f"model {args.model} ({n_bn} BN layers), {args.samples} samples of "
        f"{args.image_size}x{args.image_size}x3, batch {args.batch_size}, mode {args.mode}"
    )
    print(f"model.jit_compile: {getattr(model, 'jit_compile', None)} (both sides)")
    print(
        f"first call (trace/compile, {len(warm)} samples): predict {first_predict:.2f} s, "
        f"recalibrate {first_recal:.2f} s"
    )
    print(f"model.predict : {t_predict:8.3f} s  (median of {args.repeat}: {fmt(tp)})")
    what = "one pass" if args.pass_only else "recalibrate"
    print(f"{what:14}: {t_recal:8.3f} s  (median of {args.repeat}: {fmt(tr)})")
    print(f"images / s    : {args.samples / t_recal:8.0f} (predict {args.samples / t_predict:.0f})")
    ratio = t_recal / t_predict
    print(f"backend       : {keras.backend.backend()}")
    print(
        f"ratio         : {ratio:8.2f}x  (median of paired ratios {pair:.2f}x; "
        f"goal <= 1.20x: {'met' if ratio <= 1.2 else 'NOT met'})"
    )
    if args.model in ANCHORS and all(importlib.util.find_spec(m) for m in ("torch",
                                                                           "torchvision")):
        # Its own process: torch and TensorFlow loaded together can crash.
        import subprocess
        import sys

        subprocess.run([sys.executable, __file__, "--anchor", *sys.argv[1:]], check=False)
    if args.stats:
        stats = {v.path: np.asarray(v.numpy(), np.float64) for v in model.weights
                 if v.path.endswith(("moving_mean", "moving_variance"))}
        if os.path.exists(args.stats):
            with np.load(args.stats) as ref:
                worst = max(float(np.max(np.abs(stats[k] - ref[k]) / np.maximum(
                    np.abs(ref[k]), 1e-12))) for k in ref.files)
            print(f"statistics vs {args.stats}: largest relative difference {worst:.2e}")
        else:
            np.savez(args.stats, **stats)
            print(f"statistics written to {args.stats}")


def samples(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    import numpy as np

    shape = ((args.samples, 16) if args.model == "dense48"
             else (args.samples, args.image_size, args.image_size, 3))
    return np.random.default_rng(0).normal(size=shape).astype("float32")


ANCHORS = {"resnet50": "resnet50", "mobilenetv2": "mobilenet_v2"}


def anchor(args: argparse.Namespace, x) -> None:  # type: ignore[no-untyped-def]
    """PyTorch's own `torch.optim.swa_utils.update_bn` on torchvision's version of the model,
    same samples and batch size, on the GPU when there is one: what recalibration costs in the
    framework itself. Printed only where torch and torchvision are installed."""
    import numpy as np
    import torch
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = getattr(torchvision.models, ANCHORS[args.model])(weights=None).to(device).eval()
    batches = [torch.from_numpy(np.ascontiguousarray(x[i:i + args.batch_size].transpose(
        0, 3, 1, 2))).to(device) for i in range(0, len(x), args.batch_size)]

    def infer() -> None:
        with torch.inference_mode():
            for b in batches:
                net(b)
        if device == "cuda":
            torch.cuda.synchronize()

    def update() -> None:
        torch.optim.swa_utils.update_bn(batches, net)
        if device == "cuda":
            torch.cuda.synchronize()
        net.eval()

    infer()
    update()  # warm
    ti, tu = [], []
    for _ in range(args.repeat):
        for fn, out in ((infer, ti), (update, tu)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    t_inf, t_upd = float(np.median(ti)), float(np.median(tu))
    print(f"anchor        : torchvision {ANCHORS[args.model]} on {device}, torch "
          f"{torch.__version__}: inference {t_inf:.3f} s, update_bn {t_upd:.3f} s "
          f"({t_upd / t_inf:.2f}x), {args.samples / t_upd:.0f} images / s")


if __name__ == "__main__":
    main()

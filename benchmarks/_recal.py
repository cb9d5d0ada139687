"""Recalibration workers (run by run.py, one process per measurement; prints one JSON line).

    python benchmarks/_recal.py time MODEL N SIZE BATCH
        First-call times of predict and recalibrate, and warm inference / training-mode
        forward passes, over the same N synthetic samples.
    python benchmarks/_recal.py accuracy MODEL N SIZE BATCH
        ckptdoc's statistics vs a float64 two-pass reference and vs the training EMA.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import synth  # noqa: E402
import tensorflow as tf  # noqa: E402

from ckptdoc.recalibrate.api import recalibrate  # noqa: E402


def _time(model_path: str, n: int, size: int, batch: int) -> dict[str, Any]:
    """First calls of predict and recalibrate in a fresh process (tracing included, as a
    user's one call pays it), second calls, then the warm floors: a bare inference pass and a
    forward pass with BN in training mode (batch statistics, which the precise pass computes)."""
    model = keras.saving.load_model(model_path, compile=False)
    x = np.concatenate(list(synth.iterate(n, batch, size)))

    def timed(fn: Any) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def passes(fn: Any) -> None:
        for i in range(0, n, batch):
            fn(x[i : i + batch]).numpy()

    out = {
        "predict_first": timed(lambda: model.predict(x, batch_size=batch, verbose=0)),
        "recalibrate_first": timed(lambda: recalibrate(model, x, batch_size=batch, samples=n)),
        "recalibrate_second": timed(lambda: recalibrate(model, x, batch_size=batch, samples=n)),
        "predict_second": timed(lambda: model.predict(x, batch_size=batch, verbose=0)),
    }
    infer = tf.function(lambda b: model(b, training=False))
    train = tf.function(lambda b: model(b, training=True))
    for name, fn in (("infer", infer), ("train_forward", train)):
        fn(x[:batch])  # trace
        out[name] = timed(lambda fn=fn: passes(fn))
    return out


def _bn_layers(model: Any) -> list[Any]:
    return [ly for ly in model._flatten_layers(include_self=False)
            if isinstance(ly, keras.layers.BatchNormalization)]


def _to_float64(cfg: Any) -> Any:
    """The saved config with every float32 dtype (policies, input layers) made float64."""
    if isinstance(cfg, dict):
        out = {k: _to_float64(v) for k, v in cfg.items()}
        if out.get("class_name") == "DTypePolicy":
            out["config"] = {**out["config"], "name": "float64"}
        if out.get("dtype") == "float32":
            out["dtype"] = "float64"
        return out
    if isinstance(cfg, list):
        return [_to_float64(v) for v in cfg]
    return cfg


def _float64_copy(model_path: str, weights: list[np.ndarray]) -> Any:
    with zipfile.ZipFile(model_path) as zf:
        cfg = json.loads(zf.read("config.json"))
    model64 = keras.saving.deserialize_keras_object(_to_float64(cfg))
    model64.set_weights(weights)
    return model64


def _accuracy(model_path: str, n: int, size: int, batch: int) -> dict[str, Any]:
    model = keras.saving.load_model(model_path, compile=False)
    weights = [np.asarray(w, np.float64) for w in model.get_weights()]
    batches = list(synth.iterate(n, batch, size))
    recalibrate(model, lambda: iter(batches), batch_size=batch, samples=n)
    bns = _bn_layers(model)
    got = [(np.asarray(b.moving_mean.numpy(), np.float64),
            np.asarray(b.moving_variance.numpy(), np.float64)) for b in bns]

    # Reference: the same architecture in float64, every BN normalizing with its batch
    # statistics (training=True; the models have no dropout), BN inputs collected exactly with
    # two passes: the mean first, then the sum of squared deviations from it.
    model64 = _float64_copy(model_path, weights)
    bns64 = _bn_layers(model64)
    assert [b.name for b in bns64] == [b.name for b in bns]
    assert all(v.dtype == "float64" for v in model64.weights)
    probe = keras.Model(model64.inputs, [b.input for b in bns64])
    fn = tf.function(lambda x: probe(x, training=True))
    sums = [np.zeros(b.moving_mean.shape) for b in bns64]
    count = [0.0] * len(bns64)
    batch_stats: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in bns64]
    for x in batches:
        for i, a in enumerate(fn(x.astype(np.float64))):
            a = a.numpy().reshape(-1, a.shape[-1])
            sums[i] += a.sum(axis=0)
            count[i] += a.shape[0]
            bm = a.mean(axis=0)
            batch_stats[i].append((bm, ((a - bm) ** 2).mean(axis=0)))
    means = [s / c for s, c in zip(sums, count, strict=True)]
    m2 = [np.zeros_like(m) for m in means]
    for x in batches:
        for i, a in enumerate(fn(x.astype(np.float64))):
            a = a.numpy().reshape(-1, a.shape[-1])
            m2[i] += ((a - means[i]) ** 2).sum(axis=0)
    ref = [(m, s / c) for m, s, c in zip(means, m2, count, strict=True)]

    def ema(momentum: float, cycles: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for stats in batch_stats:
            mm, mv = np.zeros_like(stats[0][0]), np.ones_like(stats[0][1])
            for _ in range(cycles):
                for bm, bv in stats:
                    mm = momentum * mm + (1 - momentum) * bm
                    mv = momentum * mv + (1 - momentum) * bv
            out.append((mm, mv))
        return out

    def mean_of_batches() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.mean([s[0] for s in st], axis=0), np.mean([s[1] for s in st], axis=0))
                for st in batch_stats]

    def errors(est: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        # Mean error in units of the channel's standard deviation; variance error relative.
        me, ve = [], []
        for (m, v), (rm, rv) in zip(est, ref, strict=True):
            ok = rv > 1e-12
            me.append(np.abs(m - rm)[ok] / np.sqrt(rv[ok]))
            ve.append(np.abs(v - rv)[ok] / rv[ok])
        mea, vea = np.concatenate(me), np.concatenate(ve)
        return {"mean_max": float(mea.max()), "mean_median": float(np.median(mea)),
                "var_max": float(vea.max()), "var_median": float(np.median(vea))}

    nb = len(batches)
    momentum = float(bns[0].momentum)
    rows = {
        "ckptdoc": errors(got),
        "ema_0.99": errors(ema(0.99)),
        f"ema_{momentum:g}": errors(ema(momentum)),
        "ema_0.99_converged": errors(ema(0.99, -(-3000 // nb))),
        "mean_of_batch_stats": errors(mean_of_batches()),
    }
    channels = int(sum(r[0].size for r in ref))
    skipped = int(sum((r[1] <= 1e-12).sum() for r in ref))
    return {"batches": nb, "samples": n, "layers": len(bns), "channels": channels,
            "skipped_channels": skipped, "model_momentum": momentum, "rows": rows}


def main(argv: list[str]) -> None:
    if argv[0] == "time":
        out = _time(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    elif argv[0] == "accuracy":
        out = _accuracy(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Benchmark (not a test): auditing a PyTorch `.pt` against a TF checkpoint of the same
tensors and size (issue 27: no slower).

    python -m benchmarks.pytorch_audit [--megabytes 100] [--layers 50] [--repeat 5]

Both files hold the same ResNet-like tensors (conv kernels + BN layers); the `.pt` is written
by tests/torch_writer.py (torch.save's layout), the bundle by tests/bundle_writer.py.
Medians of warm `audit_file` runs are printed, with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def tensors(megabytes: int, layers: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    per_conv = max(1, megabytes * (1 << 20) // 4 // layers)
    channels = 64
    out: dict[str, np.ndarray] = {}
    for i in range(layers):
        out[f"layer{i}.conv.weight"] = rng.normal(size=per_conv).astype(np.float32)
        out[f"layer{i}.bn.weight"] = (1 + 0.1 * rng.normal(size=channels)).astype(np.float32)
        out[f"layer{i}.bn.bias"] = (0.1 * rng.normal(size=channels)).astype(np.float32)
        out[f"layer{i}.bn.running_mean"] = rng.normal(size=channels).astype(np.float32)
        out[f"layer{i}.bn.running_var"] = rng.uniform(0.5, 2, channels).astype(np.float32)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=int, default=100)
    ap.add_argument("--layers", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from ckptdoc.auditor import audit_file
    from tests.bundle_writer import write_bundle
    from tests.torch_writer import torch_save

    state = tensors(args.megabytes, args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        pt = torch_save(Path(tmp) / "model.pt", state)
        tf_state = {k.replace(".", "/").replace("bn/weight", "bn/gamma")
                    .replace("bn/bias", "bn/beta").replace("running_mean", "moving_mean")
                    .replace("running_var", "moving_variance"): v for k, v in state.items()}
        prefix = Path(tmp) / "tf" / "model.ckpt"
        write_bundle(prefix, tf_state)
        times: dict[str, list[float]] = {"pytorch": [], "tf bundle": []}
        for path in (pt, prefix):
            report = audit_file(path)  # warm-up
            assert report.error is None and len(report.groups) == args.layers, report.error
        for _ in range(args.repeat):
            for name, path in (("pytorch", pt), ("tf bundle", prefix)):
                started = time.perf_counter()
                audit_file(path)
                times[name].append(time.perf_counter() - started)
        size = pt.stat().st_size / (1 << 20)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.layers} BN layers, {size:.0f} MB; medians of {args.repeat}")
    for name, t in med.items():
        print(f"  {name:10s} {t * 1000:7.1f} ms")
    print(f"  pytorch / tf bundle: {med['pytorch'] / med['tf bundle']:.2f}x")


if __name__ == "__main__":
    main()

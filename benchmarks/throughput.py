"""Benchmark (not a test): audit throughput at scale, the measurements of issue 17.

    python benchmarks/throughput.py [--copies 200] [--jobs-files 400] [--big-mb 1024] [--repeats 3]

1. Marginal cost of one more small TF checkpoint in a folder audit: `ckptdoc audit DIR` end to
   end on DIR holding `--copies` copies of sample_ckpts/tf1_healthy, minus the audit of one,
   divided by copies - 1; against TensorFlow once imported (`tf.train.load_checkpoint` and
   reading every BN tensor, per checkpoint, in one process). Target: <= TF's.
2. `--jobs` scaling on `--jobs-files` small files (copies of sample_ckpts/keras3_healthy.keras
   and tf1_healthy): --jobs 1, 2 and 0. Target: --jobs 2 >= 1.6x on 2 cores, never slower.
3. HDF5 cost in file size: the same Keras 3 weights file padded with one big non-BN dataset to
   ~10 MB and to `--big-mb`, audited end to end. Target: <= 1.3x.
4. Start-up: the audit of one TF checkpoint against `python -c "import numpy"`. Target: <= 1.5x.

Medians of `--repeats` runs, page cache warm (each input is read once before timing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
CKPTDOC = [sys.executable, "-m", "ckptdoc", "audit", "--exit-zero", "--quiet", "--isolated"]


def timed(cmd: list[str], repeats: int, **kw: object) -> float:
    subprocess.run(cmd, capture_output=True, check=False, **kw)  # warm the page cache
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False, **kw)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def copies(src: Path, dest: Path, n: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = dest / f"{i:04d}_{src.name}"
        if src.is_dir():
            shutil.copytree(src, target)
        else:
            shutil.copy(src, target)


def tf_per_checkpoint(folders: list[Path]) -> float:
    """ms per checkpoint for TensorFlow once imported: load_checkpoint + every BN tensor."""
    code = (
        "import sys, time, tensorflow as tf\n"
        "paths = sys.argv[1:]\n"
        "def one(p):\n"
        "    r = tf.train.load_checkpoint(p)\n"
        "    for k in r.get_variable_to_shape_map():\n"
        "        if k.rsplit('/', 1)[-1] in ('gamma', 'beta', 'moving_mean', 'moving_variance'):\n"
        "            r.get_tensor(k)\n"
        "one(paths[0])\n"
        "t = time.perf_counter()\n"
        "for p in paths: one(p)\n"
        "print((time.perf_counter() - t) / len(paths) * 1000)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code, *map(str, folders)], capture_output=True,
                         text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def padded_weights(dest: Path, megabytes: int) -> Path:
    import h5py
    import numpy as np

    shutil.copy(SAMPLES / "keras3_healthy.weights.h5", dest)
    with h5py.File(dest, "r+") as f:
        rows = max(1, megabytes * 256)
        data = f.create_dataset("layers/padding/vars/0", shape=(rows, 1024), dtype="float32")
        block = np.random.default_rng(0).normal(size=(4096, 1024)).astype("float32")
        for start in range(0, rows, 4096):
            data[start : start + 4096] = block[: rows - start]
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--jobs-files", type=int, default=400)
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ckptdoc-throughput-"))
    try:
        print("| measurement | ckptdoc | baseline | ratio | target |")
        print("|---|---|---|---|---|")
        # 1. marginal cost per small TF checkpoint
        many = work / "many"
        copies(SAMPLES / "tf1_healthy", many, args.copies)
        t_many = timed([*CKPTDOC, str(many)], args.repeats)
        t_one = timed([*CKPTDOC, str(many / "0000_tf1_healthy")], args.repeats)
        marginal = (t_many - t_one) / (args.copies - 1) * 1000
        tf_ms = tf_per_checkpoint(sorted(p / "model.ckpt" for p in many.iterdir()))
        print(f"| marginal cost per small TF checkpoint ({args.copies} in a folder) | "
              f"{marginal:.2f} ms | TF once imported: {tf_ms:.2f} ms | {marginal / tf_ms:.2f}x"
              f" | <= 1x |")
        print(f"| files per second, folder of {args.copies} | {args.copies / t_many:.0f} | | | |")
        # 2. --jobs scaling
        mixed = work / "mixed"
        half = args.jobs_files // 2
        copies(SAMPLES / "tf1_healthy", mixed, half)
        copies(SAMPLES / "keras3_healthy.keras", mixed, args.jobs_files - half)
        j1 = timed([*CKPTDOC, str(mixed), "--jobs", "1"], args.repeats)
        for jobs in ("2", "0"):
            tj = timed([*CKPTDOC, str(mixed), "--jobs", jobs], args.repeats)
            print(f"| --jobs {jobs} on {args.jobs_files} small files ({os.cpu_count()} CPUs) | "
                  f"{tj:.2f} s | --jobs 1: {j1:.2f} s | {j1 / tj:.2f}x faster | >= 1.6x, never "
                  "slower |")
        small_few = work / "few"
        copies(SAMPLES / "tf1_healthy", small_few, 3)
        f1 = timed([*CKPTDOC, str(small_few), "--jobs", "1"], args.repeats)
        f0 = timed([*CKPTDOC, str(small_few), "--jobs", "0"], args.repeats)
        print(f"| --jobs 0 on 3 small files | {f0:.2f} s | --jobs 1: {f1:.2f} s | "
              f"{f1 / f0:.2f}x | never slower |")
        # 3. HDF5 cost in file size
        small = padded_weights(work / "small.weights.h5", 10)
        big = padded_weights(work / "big.weights.h5", args.big_mb)
        ts = timed([*CKPTDOC, str(small)], args.repeats)
        tb = timed([*CKPTDOC, str(big)], args.repeats)
        print(f"| HDF5 audit, {big.stat().st_size >> 20} MB vs {small.stat().st_size >> 20} MB,"
              f" same BN layers | {tb:.2f} s | {ts:.2f} s | {tb / ts:.2f}x | <= 1.3x |")
        # 4. start-up
        t_numpy = timed([sys.executable, "-c", "import numpy"], max(args.repeats, 5))
        t_audit = timed([*CKPTDOC, str(SAMPLES / "tf1_healthy")], max(args.repeats, 5))
        print(f"| start-up: audit of one TF checkpoint | {t_audit:.3f} s | python -c 'import "
              f"numpy': {t_numpy:.3f} s | {t_audit / t_numpy:.2f}x | <= 1.5x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

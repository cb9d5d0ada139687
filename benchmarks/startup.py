"""Benchmark (not a test): start-up, the fixed cost of every `ckptdoc` command (issue 23).

    python benchmarks/startup.py [--repeats 15]

Wall time, process start to exit, of `ckptdoc --version` and of a clean audit of one file
(a TF2 checkpoint and a `.keras` file from sample_ckpts/), against `python -c "import numpy"`.
Target: each <= 1.5x. Medians of `--repeats` runs after one untimed run, with Python's
bytecode cache on (PYTHONDONTWRITEBYTECODE is removed for the children: an installed package
has its .pyc files; without them every run compiles ckptdoc's ~100 modules, ~40 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def ckptdoc() -> list[str]:
    script = Path(sys.executable).parent / "ckptdoc"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ckptdoc"]


def median_time(cmd: list[str], repeats: int) -> float:
    subprocess.run(cmd, capture_output=True, check=False, env=ENV, cwd=ROOT)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False, env=ENV, cwd=ROOT)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    base = median_time([sys.executable, "-c", "import numpy"], args.repeats)
    cases = {
        "ckptdoc --version": [*ckptdoc(), "--version"],
        "audit, one TF2 checkpoint": [*ckptdoc(), "audit", str(SAMPLES / "tf2_healthy" /
                                                             "ckpt-1.index")],
        "audit, one .keras file": [*ckptdoc(), "audit", str(SAMPLES / "keras3_healthy.keras")],
    }
    print(f"baseline: python -c 'import numpy': {base * 1000:.0f} ms (median of {args.repeats}); "
          f"load average {os.getloadavg()[0]:.2f} (NumPy's import slows under load far more "
          "than ckptdoc's, which asks OpenBLAS for one thread: measure on an idle machine)")
    print("| command | time | ratio to import numpy | target <= 1.5x |")
    print("|---|---|---|---|")
    for label, cmd in cases.items():
        t = median_time(cmd, args.repeats)
        print(f"| {label} | {t * 1000:.0f} ms | {t / base:.2f}x | "
              f"{'met' if t / base <= 1.5 else 'NOT met'} |")


if __name__ == "__main__":
    main()

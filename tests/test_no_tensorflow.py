"""Auditing must never import TensorFlow or Keras: it is a quick, light CI gate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
HEAVY = ("tensorflow", "keras", "tf_keras")


def _imported_modules(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """Run `python -X importtime -m ckptdoc ARGS` and collect every module it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ckptdoc", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return modules, proc


def test_import_ckptdoc_does_not_import_tensorflow():
    code = (
        "import sys, ckptdoc, ckptdoc.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["ls", "audit"])
def test_cli_on_samples_does_not_import_tensorflow(command):
    if not any(SAMPLES.rglob("*.index")):
        pytest.skip("sample_ckpts/ not generated")
    modules, proc = _imported_modules(command, str(SAMPLES) if command == "audit" else
                                      str(next(SAMPLES.rglob("*.index"))))
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "numpy" in modules  # the importtime trace was really collected
    assert not modules & set(HEAVY)

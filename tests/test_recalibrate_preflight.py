"""recalibrate checks what it can before the pass (input hardening, output path), imports the
user's custom classes on request, and never writes non-finite statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
EVIDENCE = ROOT / "tests" / "data" / "evidence"
CALIB = SAMPLES / "data" / "calib.npz"


def _run(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "ckptdoc", "recalibrate", *args,
                           "--no-progress"], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


@pytest.mark.parametrize(("output", "message"), [
    ("missing/folder/m.keras", "does not exist"),
    (".", "is a folder"),
    ("m.weights.h5", "must end in .keras"),
])
def test_output_problems_fail_before_the_pass(tmp_path: Path, output: str, message: str) -> None:
    out = _run(str(SAMPLES / "keras3_healthy.keras"), "--data", str(CALIB), "--output",
               str(tmp_path / output) if output != "." else str(tmp_path))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3


def test_hostile_input_is_refused_before_keras_sees_it(tmp_path: Path) -> None:
    bad = tmp_path / "m.keras"
    with zipfile.ZipFile(SAMPLES / "keras3_healthy.keras") as src, zipfile.ZipFile(bad, "w") as z:
        for name in src.namelist():
            z.writestr(name, src.read(name))
        z.writestr("../escape.txt", b"x")
    out = _run(str(bad), "--data", str(CALIB))
    assert out.returncode == 2
    assert "checked before loading" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "model.keras"
    os.mkfifo(fifo)
    out = _run(str(fifo), "--data", str(CALIB), timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_samples_needs_two() -> None:
    out = _run(str(SAMPLES / "keras3_healthy.keras"), "--data", str(CALIB), "--samples", "1")
    assert out.returncode == 2


def test_custom_classes_with_import(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=(rng.normal(size=(64, 8, 8, 1)) * 2 + 3).astype("float32"))
    model = tmp_path / "custom_layer.keras"
    model.write_bytes((EVIDENCE / "custom_layer_reset.keras").read_bytes())
    out = _run(str(model), "--data", str(data), "--format", "json", "--force", cwd=EVIDENCE)
    assert out.returncode == 2
    assert "--import MODULE" in out.stderr and "ConvBNAct" in out.stderr
    out = _run(str(model), "--data", str(data), "--format", "json", "--import", "models",
               "--allow-unsafe-code", cwd=EVIDENCE)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["written"] and len(doc["report"]["layers"]) == 2
    assert doc["audit"]["errors"] == []  # the audit finds both custom-layer BNs, now healthy


def test_non_finite_statistics_are_never_written(tmp_path: Path) -> None:
    with np.load(CALIB) as z:
        x, y = z["x"].copy(), z["y"]
    x[3, 0, 0, 0] = np.nan
    data = tmp_path / "nan.npz"
    np.savez(data, x=x, y=y)
    dest = tmp_path / "out.keras"
    out = _run(str(SAMPLES / "keras3_broken.keras"), "--data", str(data), "--output", str(dest),
               "--force")
    assert out.returncode == 1
    assert "not finite" in out.stdout + out.stderr and "NaN" in out.stdout + out.stderr
    assert not dest.exists()


def test_data_the_model_cannot_run_on_is_one_line_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "wrong.npz"
    np.savez(data, x=np.zeros((32, 5), np.float32))  # the model takes 8x8x1 images
    for model in (SAMPLES / "keras3_healthy.keras", SAMPLES / "tf1_update_ops_missing"):
        args = ["--feed", "x:0=x"] if model.is_dir() else []
        out = _run(str(model), "--data", str(data), *args, "--output",
                   str(tmp_path / ("o" + (model.suffix or "")) / "m") if model.is_dir()
                   else str(tmp_path / "o.keras"))
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        # Keras models are checked against their declared input shape before any pass.
        assert ("expects inputs of shape (None, 8, 8, 1)" if model.suffix else
                "could not run on the data") in out.stderr, out.stderr


def test_a_full_disk_or_memory_is_named_not_blamed_on_the_data() -> None:
    # Issue 22 §5: EFBIG / ENOSPC and out-of-memory were reported as "the model could not
    # run on the data ... check --data".
    import errno

    from ckptdoc.recalibrate.cli import _run_failure

    class ResourceExhaustedError(Exception):  # TensorFlow's name for an OOM
        pass

    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise RuntimeError("writing the recalibrated file failed") from exc
        except RuntimeError as outer:
            return outer

    for exc, expected in [
        (OSError(errno.ENOSPC, "No space left on device", "/out/m.h5"), "the disk is full"),
        (wrapped(OSError(errno.EFBIG, "File too large", "/out/m.h5")), "too large for the file"),
        (MemoryError(), "ran out of memory"),
        (ResourceExhaustedError("OOM when allocating tensor with shape[256,3,224,224]"),
         "Lower --batch-size"),
    ]:
        message = _run_failure(exc)
        assert expected in message and "could not run on the data" not in message, message
    shape = _run_failure(ValueError("Input 0 is incompatible: expected shape=(None, 8)"))
    assert shape.startswith("the model could not run on the data")


def test_options_a_target_does_not_take_are_refused_not_ignored(tmp_path: Path) -> None:
    # Issue 24: KerasFile silently ignored --feed, --set and --predictions.
    from ckptdoc.recalibrate import pipeline
    from ckptdoc.recalibrate.errors import RecalibrationError
    from ckptdoc.recalibrate.options import Options
    from ckptdoc.recalibrate.targets import KerasFile, TF1GraphCheckpoint

    keras_file = KerasFile(tmp_path / "m.keras")
    with pytest.raises(RecalibrationError, match=r"--feed and --predictions do not apply"):
        pipeline.run(keras_file, Options(data="x.npz", feeds={"x:0": "x"}, predictions="y:0"))
    graph = TF1GraphCheckpoint(tmp_path / "model.ckpt")
    with pytest.raises(RecalibrationError, match=r"--mode does not apply .*one session"):
        pipeline.run(graph, Options(data="x.npz", mode="sequential"))


def test_a_tf_graph_execution_error_keeps_its_reason() -> None:
    # Issue 25: "FailedPreconditionError: Graph execution error:." dropped TensorFlow's reason.
    from ckptdoc.recalibrate.cli import _run_failure

    class FailedPreconditionError(Exception):
        pass

    exc = FailedPreconditionError(
        "Graph execution error:\n\nDetected at node 'IteratorGetNext_1' defined at (most "
        "recent call last):\n  File \"train.py\", line 10, in <module>\nNode: "
        "'IteratorGetNext_1'\nGetNext() failed because the iterator has not been "
        "initialized.\n\t [[{{node IteratorGetNext_1}}]]")
    message = _run_failure(exc)
    assert "GetNext() failed because the iterator has not been initialized" in message
    assert "(at node IteratorGetNext_1)" in message

"""The CI gate in an ordinary repository (issue 25): a virtualenv, node_modules, gitignored
data, a dataset HDF5, other frameworks' model files and a Git LFS pointer beside the user's
models. A folder scan gets exactly the findings of the user's models; everything else is
skipped and listed with what it is, or never visited.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ckptdoc.cli import app
from tests.torch_writer import bn_state, torch_save

SAMPLES = Path(__file__).resolve().parent.parent / "sample_ckpts"


def _damaged_h5(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)




@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / ".gitignore").write_text("data/\n*.tmp.h5\n")
    venv = root / "venv"
    (venv / "lib" / "h5py" / "tests").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    _damaged_h5(venv / "lib" / "h5py" / "tests" / "data.h5")
    _damaged_h5(root / "node_modules" / "pkg" / "model.h5")
    _damaged_h5(root / "data" / "cache" / "big.h5")  # gitignored
    models = root / "models"
    models.mkdir()
    shutil.copy(SAMPLES / "keras3_healthy.keras", models / "good.keras")
    shutil.copy(SAMPLES / "keras3_broken.keras", models / "broken.keras")
    _damaged_h5(models / "scratch.tmp.h5")  # gitignored by pattern
    (root / "datasets").mkdir()
    with h5py.File(root / "datasets" / "train.h5", "w") as f:  # data, not a model
        f["x"] = np.zeros((4, 3), np.float32)
    torch_save(models / "resnet.pt", bn_state(8, trained=True, broken=False))
    torch_save(models / "epoch=3-step=100.ckpt", {"global_step": 100, "state_dict": bn_state(
        8, trained=True, broken=False, tracked=100)})
    (models / "legacy.pth").write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    # (a safetensors file: read now, a plain weight, no BN)
    (models / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    (models / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\0" * 32)
    (models / "m.onnx").write_bytes(b"\x08\x07\x12\x04onnx" + b"\0" * 16)
    return root


def _audit(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, ["audit", *args, "--format", "json", "--isolated"])
    return result.exit_code, json.loads(result.stdout)


def test_a_scan_audits_exactly_the_users_models(repo: Path) -> None:
    code, report = _audit(str(repo))
    by_path = {Path(f["path"]).relative_to(repo).as_posix(): f for f in report["files"]}
    assert code == 1  # the broken model's findings, nothing unreadable
    audited = {p for p, f in by_path.items() if "skipped" not in f}
    assert audited == {"models/good.keras", "models/broken.keras", "models/resnet.pt",
                       "models/epoch=3-step=100.ckpt", "models/w.safetensors"}
    assert not any(f.get("error") for f in report["files"])
    assert {f["rule"] for f in by_path["models/broken.keras"]["findings"]} == {"BN002"}
    assert by_path["models/good.keras"]["findings"] == []
    assert all(by_path[p]["findings"] == [] for p in (
        "models/resnet.pt", "models/epoch=3-step=100.ckpt", "models/w.safetensors"))
    skipped = {p: f["skipped"] for p, f in by_path.items() if "skipped" in f}
    assert set(skipped) == {"datasets/train.h5", "models/legacy.pth", "models/m.tflite",
                            "models/m.onnx"}
    assert "legacy pickle format" in skipped["models/legacy.pth"]
    assert "TensorFlow Lite" in skipped["models/m.tflite"]
    assert "ONNX" in skipped["models/m.onnx"]


def test_sarif_lists_the_skipped_files(repo: Path) -> None:
    result = CliRunner().invoke(app, ["audit", str(repo), "--format", "sarif", "--isolated"])
    (run,) = json.loads(result.stdout)["runs"]
    (invocation,) = run["invocations"]
    notes = [n for n in invocation["toolExecutionNotifications"] if n["level"] == "note"]
    assert len(notes) == 4 and invocation["executionSuccessful"] is True


def test_gitignore_can_be_turned_off_and_explicit_paths_are_always_audited(repo: Path) -> None:
    code, report = _audit(str(repo), "--no-respect-gitignore")
    errors = {Path(f["path"]).relative_to(repo).as_posix() for f in report["files"]
              if f.get("error")}
    assert code == 2 and errors == {"data/cache/big.h5", "models/scratch.tmp.h5"}
    code, report = _audit(str(repo / "data" / "cache" / "big.h5"))
    assert code == 2 and report["files"][0]["error"]


def test_an_explicit_foreign_file_is_skipped_and_ls_says_what_it_is(repo: Path) -> None:
    code, report = _audit(str(repo / "models" / "m.onnx"))
    assert code == 0 and "ONNX" in report["files"][0]["skipped"]
    result = CliRunner().invoke(app, ["ls", str(repo / "models" / "m.onnx")])
    assert result.exit_code == 2 and "ONNX" in result.output
    assert "Traceback" not in result.output


def test_a_git_lfs_pointer_says_how_to_fetch_the_model(tmp_path: Path) -> None:
    pointer = tmp_path / "model.h5"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\n"
                       "oid sha256:4d7a2146\nsize 12345\n")
    code, report = _audit(str(pointer))
    assert code == 2 and "git lfs pull" in report["files"][0]["error"]

"""Recalibration of TF2 object checkpoints (`tf.train.Checkpoint(model=..., optimizer=...)` of a
Keras 3 model) through `ckptdoc recalibrate CKPT --model module:function`.

Data: sample_ckpts/tf2_healthy (custom loop with training=True, Adam state) and
sample_ckpts/tf2_no_training_flag (BN ran in inference mode while training: recalibrating it
makes it worse, so it must be refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from typer.testing import CliRunner  # noqa: E402

from ckptdoc.formats import open_checkpoint  # noqa: E402
from ckptdoc.formats.bundle import OBJECT_GRAPH_KEY  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "tf1_recal"
MODEL = f"{DATA / 'models.py'}:keras_net"
sys.path.insert(0, str(DATA))
import models  # noqa: E402


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tf2data")
    x, y = models.make_data(512, seed=7)
    xe, ye = models.make_data(512, seed=11)
    np.savez(d / "calib.npz", x=x, y=y)
    np.savez(d / "heldout.npz", x=xe, y=ye)
    return {"calib": d / "calib.npz", "heldout": d / "heldout.npz"}


def _cli(ckpt: Path, out: Path, npz: dict[str, Path], *extra: str) -> Any:
    from ckptdoc.cli import app

    args = [
        "recalibrate",
        str(ckpt),
        "--data",
        str(npz["calib"]),
        "--eval-data",
        str(npz["heldout"]),
        "--output",
        str(out),
        "--no-progress",
        "--format",
        "json",
    ]
    return CliRunner().invoke(app, [*args, *extra])


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_object_checkpoint_with_optimizer_slots_preserved(npz: Any, tmp_path: Path) -> None:
    src = ROOT / "sample_ckpts" / "tf2_healthy"
    before = _digest(src)
    out = tmp_path / "fixed" / "ckpt-1"
    res = _cli(src, out, npz, "--model", MODEL)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["written"] and doc["audit"]["errors"] == []
    assert doc["report"]["self_check"]["passed"]  # checked against the model's own inference
    assert doc["report"]["eval_after"]["accuracy"] >= doc["report"]["eval_before"]["accuracy"]
    assert _digest(src) == before
    with open_checkpoint(src / "ckpt-1") as a, open_checkpoint(out) as b:
        assert a.format == b.format == "tf2-object"
        changed = [k for k in a.tensors if a.read(k).tobytes() != b.read(k).tobytes()]
        assert sorted(changed) == sorted(
            f"model/_functional/_operations/{i}/{r}/.ATTRIBUTES/VARIABLE_VALUE"
            for i in (2, 5, 9)
            for r in ("moving_mean", "moving_variance")
        ), changed
        optimizer = [k for k in a.tensors if k.startswith("optimizer/")]
        assert len(optimizer) > 20  # Adam moments of every trainable variable, iterations, ...
        assert a.read(OBJECT_GRAPH_KEY) == b.read(OBJECT_GRAPH_KEY)
        assert {k: (i.dtype, i.shape) for k, i in a.tensors.items()} == {
            k: (i.dtype, i.shape) for k, i in b.tensors.items()
        }
    # TensorFlow restores model and optimizer from it, with the new statistics in the layers.
    model = models.keras_net()
    opt = keras.optimizers.Adam(0.01)
    opt.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=opt).read(str(out)).assert_existing_objects_matched()
    reader = tf.train.load_checkpoint(str(out))
    key = "model/_functional/_operations/2/moving_mean/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(
        model.get_layer("bn_conv1").moving_mean.numpy(), reader.get_tensor(key)
    )
    # Exact statistics of the first BN input (a bias-free conv of the calibration data).
    with np.load(npz["calib"]) as z:
        h = tf.nn.conv2d(
            z["x"].astype(np.float64), model.layers[0].kernel.numpy().astype(np.float64), 1, "SAME"
        ).numpy()
    np.testing.assert_allclose(reader.get_tensor(key), h.mean(axis=(0, 1, 2)), rtol=1e-5)
    assert (out.parent / "checkpoint").read_text().startswith('model_checkpoint_path: "ckpt-1"')


def test_model_trained_in_inference_mode_is_refused(npz: Any, tmp_path: Path) -> None:
    src = ROOT / "sample_ckpts" / "tf2_no_training_flag"
    out = tmp_path / "fixed" / "ckpt-1"
    res = _cli(src, out, npz, "--model", MODEL)
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert not doc["written"] and "WORSE" in doc["refused"]
    assert not out.parent.exists()
    forced = _cli(src, out, npz, "--model", MODEL, "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["written"] and (out.parent / "ckpt-1.index").is_file()


def test_object_checkpoint_needs_model(npz: Any, tmp_path: Path) -> None:
    res = _cli(ROOT / "sample_ckpts" / "tf2_healthy", tmp_path / "o" / "c", npz)
    assert res.exit_code == 2
    assert "--model" in res.output

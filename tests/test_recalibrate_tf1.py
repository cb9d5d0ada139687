"""Recalibration of TF1 graph checkpoints: `.meta` graphs (tf.layers, slim-style, hand-made
tf.nn.moments) and `--model` rebuilt graphs. Checked against float64 NumPy and TensorFlow.

Data: tests/data/tf1_recal/ (scripts/make_tf1_recal_testdata.py) and the sample
sample_ckpts/tf1_update_ops_missing/ (trained with the UPDATE_OPS bug, real training .meta).
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

from typer.testing import CliRunner  # noqa: E402

from ckptdoc.auditor import audit_file  # noqa: E402
from ckptdoc.formats import open_checkpoint  # noqa: E402
from ckptdoc.groups import find_groups  # noqa: E402
from ckptdoc.recalibrate.errors import RecalibrationError  # noqa: E402
from ckptdoc.recalibrate.options import Options  # noqa: E402
from ckptdoc.recalibrate.targets import Measured, open_target  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "tf1_recal"
SAMPLE = ROOT / "sample_ckpts" / "tf1_update_ops_missing"
MODELS = str(DATA / "models.py")
sys.path.insert(0, str(DATA))
import models  # noqa: E402

v1 = tf.compat.v1



def recalibrate_bundle(path: Path, data: Any, **options: Any) -> Measured:
    """What the pipeline measures for a TF1 checkpoint, nothing written."""
    return open_target(path).measure(Options(data=data, **options), None)

def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tf1data")
    x, y = models.make_data(512, seed=7)
    xe, ye = models.make_data(512, seed=11)
    out = {"calib": d / "calib.npz", "heldout": d / "heldout.npz", "slim": d / "slim.npz"}
    np.savez(out["calib"], x=x, y=y)
    np.savez(out["heldout"], x=xe, y=ye)
    np.savez(out["slim"], x=(x - x.mean()) / x.std(), y=y)
    return out


def _cli(*args: str) -> Any:
    from ckptdoc.cli import app

    return CliRunner().invoke(app, ["recalibrate", *args, "--no-progress", "--format", "json"])


@pytest.fixture(scope="module")
def fixed_sample(npz: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    before = _hashes(SAMPLE)
    out = tmp_path_factory.mktemp("tf1out") / "fixed" / "model.ckpt"
    res = _cli(
        str(SAMPLE),
        "--data",
        str(npz["calib"]),
        "--eval-data",
        str(npz["heldout"]),
        "--feed",
        "x:0=x",
        "--set",
        "is_training:0=true",
        "--samples",
        "512",
        "--output",
        str(out),
    )
    return res, out, before


def _conv_stats(x: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = tf.nn.conv2d(x.astype(np.float64), kernel.astype(np.float64), 1, "SAME").numpy()
    return h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))


def _graph_accuracy(
    meta: Path,
    prefix: Path,
    x: np.ndarray,
    y: np.ndarray,
    training: bool,
    logits: str = "dense_1/BiasAdd:0",
) -> float:
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        v1.train.import_meta_graph(str(meta)).restore(sess, str(prefix))
        out = [
            sess.run(logits, {"x:0": x[i : i + 64], "is_training:0": training})
            for i in range(0, len(x), 64)
        ]
    return float((np.concatenate(out).argmax(1) == y).mean())


def test_update_ops_bug_fixed_to_training_mode_accuracy(fixed_sample: Any, npz: Any) -> None:
    res, out, _ = fixed_sample
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["written"] and doc["audit"]["errors"] == []
    report = doc["report"]
    assert any("is_training:0 (set true) is the training switch" in n for n in report["notes"])
    assert not any("update ops run" in n for n in report["notes"])  # UPDATE_OPS not fetched
    with np.load(npz["heldout"]) as z:
        xe, ye = z["x"], z["y"]
    train_mode = _graph_accuracy(SAMPLE / "model.ckpt.meta", SAMPLE / "model.ckpt", xe, ye, True)
    assert report["eval_before"]["accuracy"] < 0.5
    assert report["eval_after"]["accuracy"] >= train_mode - 0.01
    # Independently: the original graph, restored from the output, in inference mode.
    inference = _graph_accuracy(SAMPLE / "model.ckpt.meta", out, xe, ye, False)
    assert inference == pytest.approx(report["eval_after"]["accuracy"])


def test_first_layer_stats_equal_float64_reference(fixed_sample: Any, npz: Any) -> None:
    _, out, _ = fixed_sample
    with np.load(npz["calib"]) as z:
        x = z["x"]
    reader = tf.train.load_checkpoint(str(out))
    mean, var = _conv_stats(x, reader.get_tensor("conv2d/kernel"))
    np.testing.assert_allclose(
        reader.get_tensor("batch_normalization/moving_mean"), mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        reader.get_tensor("batch_normalization/moving_variance"), var, rtol=1e-5
    )


def test_output_is_a_faithful_bundle_and_input_untouched(fixed_sample: Any) -> None:
    _, out, before = fixed_sample
    assert _hashes(SAMPLE) == before
    assert (out.parent / "model.ckpt.meta").read_bytes() == (
        SAMPLE / "model.ckpt.meta"
    ).read_bytes()
    state = (out.parent / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model.ckpt"' in state
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["checkpoint", "model.ckpt.index", "model.ckpt.meta", "model.ckpt.data-00000-of-00001"]
    )
    with open_checkpoint(SAMPLE) as a, open_checkpoint(out) as b:
        assert {k: (i.dtype, i.shape) for k, i in a.tensors.items()} == {
            k: (i.dtype, i.shape) for k, i in b.tensors.items()
        }
        stats = {g.key(r) for g in find_groups(a) for r in ("moving_mean", "moving_variance")}
        for key in a.tensors:
            if key not in stats:
                assert a.read(key).tobytes() == b.read(key).tobytes(), key
    # The original training graph restores it with its own Saver; the directory form resolves.
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        v1.train.import_meta_graph(str(SAMPLE / "model.ckpt.meta")).restore(
            sess, v1.train.latest_checkpoint(str(out.parent))
        )
        var = next(
            v for v in v1.global_variables() if v.op.name == "batch_normalization/moving_mean"
        )
        mm = sess.run(var)
    assert not np.allclose(mm, 0)
    assert not audit_file(out).findings and audit_file(SAMPLE).findings


def test_hand_made_moments_graph_meta_and_model_agree(npz: Any) -> None:
    r_meta = recalibrate_bundle(
        DATA / "moments",
        npz["calib"],
        predictions="logits:0",
        eval_data=npz["heldout"],
        samples=None,
    )
    r_model = recalibrate_bundle(
        DATA / "moments" / "model.ckpt.index",
        npz["calib"],
        model_spec=f"{MODELS}:moments_graph",
        samples=None,
    )
    assert set(r_meta.fix.replacements) == {
        f"{s}/bn/{r}" for s in ("conv1", "fc") for r in ("moving_mean", "moving_variance")
    }
    for key, value in r_meta.fix.replacements.items():
        np.testing.assert_array_equal(value, r_model.fix.replacements[key])
    with np.load(npz["calib"]) as z:
        x = z["x"]
    kernel = tf.train.load_checkpoint(str(DATA / "moments" / "model.ckpt")).get_tensor(
        "conv1/weights"
    )
    mean, var = _conv_stats(x, kernel)
    np.testing.assert_allclose(r_meta.fix.replacements["conv1/bn/moving_mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(r_meta.fix.replacements["conv1/bn/moving_variance"], var, rtol=1e-5)
    rep = r_meta.report
    assert rep.eval_before.accuracy < 0.5 < 0.9 < rep.eval_after.accuracy
    assert not rep.got_worse


def test_slim_style_no_gamma_keeps_optimizer_slots(npz: Any, tmp_path: Path) -> None:
    src = DATA / "slim"
    r = recalibrate_bundle(src, npz["slim"], samples=None)
    new = r.fix.replacements
    assert set(new) == {"conv1/BatchNorm/moving_mean", "conv1/BatchNorm/moving_variance"}
    with np.load(npz["slim"]) as z:
        x = z["x"]
    reader = tf.train.load_checkpoint(str(src / "model.ckpt"))
    mean, var = _conv_stats(x, reader.get_tensor("conv1/weights"))
    np.testing.assert_allclose(new["conv1/BatchNorm/moving_mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(new["conv1/BatchNorm/moving_variance"], var, rtol=1e-5)
    out = tmp_path / "out" / "model.ckpt"
    r.fix.write(out, False, lambda staged: None)
    after = tf.train.load_checkpoint(str(out))
    slots = [k for k in reader.get_variable_to_shape_map() if k.endswith("/Momentum")]
    assert slots and "conv1/BatchNorm/beta/Momentum" in slots
    for key in [*slots, "global_step", "conv1/BatchNorm/beta"]:
        assert reader.get_tensor(key).tobytes() == after.get_tensor(key).tobytes()


def test_errors_name_the_problem(npz: Any, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in (DATA / "moments").iterdir():
        if p.suffix != ".meta":
            (bare / p.name).write_bytes(p.read_bytes())
    with pytest.raises(RecalibrationError, match="needs --model"):
        recalibrate_bundle(bare, npz["calib"])
    with pytest.raises(RecalibrationError, match=r"--feed nope:0: no such tensor.*x:0"):
        recalibrate_bundle(DATA / "moments", npz["calib"], feeds={"nope:0": "x"})
    with pytest.raises(RecalibrationError, match="not a boolean"):
        recalibrate_bundle(DATA / "moments", npz["calib"], sets={"is_training:0": "maybe"})
    res = _cli(str(DATA / "moments"), "--data", str(npz["calib"]), "--in-place")
    assert res.exit_code == 2 and "--in-place is not supported" in res.output


def test_inference_graph_is_measured_layer_after_layer(
    npz: dict[str, Path], tmp_path: Path
) -> None:
    # tests/data/evidence/tf1_caffe_style: an inference graph (fused BN, is_training=False),
    # bn1 -> relu -> conv2 -> bn2, stats at 0 / 1. One precise pass would measure bn2's input
    # behind bn1 still normalizing with 0 / 1: silently wrong. Reference: float64, layer by
    # layer, each BN normalizing with the statistics just computed.
    src = ROOT / "tests" / "data" / "evidence" / "tf1_caffe_style"
    out = tmp_path / "fixed" / "model.ckpt"
    res = _cli(str(src), "--data", str(npz["calib"]), "--feed", "data:0=x", "--samples", "512",
               "--output", str(out), "--force")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["report"]
    # The mode asked for (sequential is refused for graphs), with the passes it took.
    assert report["passes"] >= 2 and report["mode"] == "precise"
    assert any("layer after layer" in n for n in report["notes"])
    assert report["self_check"]["passed"] and report["self_check"]["samples"] == 512

    reader = tf.train.load_checkpoint(str(src / "model.ckpt"))
    with np.load(npz["calib"]) as z:
        h = z["x"][:512].astype(np.float64)
    expected = {}
    for i in (1, 2):
        h = tf.nn.conv2d(h, reader.get_tensor(f"conv{i}/weights").astype(np.float64), 1,
                         "SAME").numpy()
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        expected[f"bn{i}"] = (mean, var)
        scale = reader.get_tensor(f"bn{i}/scale").astype(np.float64)
        offset = reader.get_tensor(f"bn{i}/offset").astype(np.float64)
        h = np.maximum((h - mean) / np.sqrt(var + 1e-5) * scale + offset, 0.0)
    fixed = tf.train.load_checkpoint(str(out))
    for name, (mean, var) in expected.items():
        np.testing.assert_allclose(fixed.get_tensor(f"{name}/mean"), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fixed.get_tensor(f"{name}/variance"), var, rtol=1e-4)


def test_trainable_only_saver_gets_its_statistics_back(tmp_path: Path) -> None:
    # BN001: `Saver(var_list=trainable_variables())` dropped pop_mean / pop_var. The graph
    # beside the checkpoint names them; recalibration measures and *adds* them, so the
    # original graph's Saver restores the output.
    src = ROOT / "tests" / "data" / "evidence" / "tf1_handwritten_trainable_only"
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    x = (rng.normal(size=(256, 8, 8, 1)) * 2 + 3).astype(np.float32)
    np.savez(data, x=x)
    out = tmp_path / "fixed" / "model.ckpt"
    res = _cli(str(src), "--data", str(data), "--feed", "x:0=x", "--set", "is_training:0=true",
               "--output", str(out))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["written"] and doc["audit"]["errors"] == []
    assert any("were added as conv1/pop_mean" in n for n in doc["report"]["notes"])
    reader = tf.train.load_checkpoint(str(out))
    keys = reader.get_variable_to_shape_map()
    for scope in ("conv1", "fc"):
        assert f"{scope}/pop_mean" in keys and f"{scope}/pop_var" in keys
    # the first layer's statistics are those of conv1's output over the data
    kernel = reader.get_tensor("conv1/w")
    mean, var = _conv_stats(x, kernel)
    np.testing.assert_allclose(reader.get_tensor("conv1/pop_mean"), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reader.get_tensor("conv1/pop_var"), var, rtol=1e-4)
    # every original tensor is byte-identical, and the training graph restores the output
    original = tf.train.load_checkpoint(str(src / "model.ckpt"))
    for key in original.get_variable_to_shape_map():
        np.testing.assert_array_equal(reader.get_tensor(key), original.get_tensor(key))
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        v1.train.import_meta_graph(str(src / "model.ckpt.meta")).restore(sess, str(out))


def test_one_policy_refuses_non_finite_statistics_for_graphs_too(
    npz: dict[str, Path], tmp_path: Path
) -> None:
    # The policy (refuse NaN / Inf, even with --force) is the pipeline's, so TF checkpoints get
    # it as Keras files do; before the one pipeline the TF1 path wrote NaN statistics.
    with np.load(npz["calib"]) as z:
        x, y = z["x"].copy(), z["y"]
    x[5, 2, 2, 0] = np.inf
    bad = tmp_path / "inf.npz"
    np.savez(bad, x=x, y=y)
    out = tmp_path / "fixed" / "model.ckpt"
    res = _cli(str(SAMPLE), "--data", str(bad), "--feed", "x:0=x", "--set",
               "is_training:0=true", "--output", str(out), "--force")
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert not doc["written"] and "not finite" in doc["refused"]
    assert not out.parent.exists()


def test_python_api_runs_the_same_pipeline(npz: dict[str, Path], tmp_path: Path) -> None:
    import ckptdoc

    out = tmp_path / "api" / "model.ckpt"
    outcome = ckptdoc.recalibrate_file(
        SAMPLE, npz["calib"], output=out, feeds={"x:0": "x"}, sets={"is_training:0": "true"},
        eval_data=npz["heldout"], samples=512,
    )
    assert outcome.written and outcome.output == out and outcome.refused is None
    assert outcome.audit["errors"] == []
    assert outcome.to_dict()["written"] and not audit_file(out).findings
    cli = _cli(str(SAMPLE), "--data", str(npz["calib"]), "--eval-data", str(npz["heldout"]),
               "--feed", "x:0=x", "--set", "is_training:0=true", "--samples", "512",
               "--output", str(tmp_path / "cli" / "model.ckpt"))
    api_stats = tf.train.load_checkpoint(str(out))
    cli_stats = tf.train.load_checkpoint(str(tmp_path / "cli" / "model.ckpt"))
    for key in ("batch_normalization/moving_mean", "batch_normalization/moving_variance"):
        np.testing.assert_array_equal(api_stats.get_tensor(key), cli_stats.get_tensor(key))
    assert cli.exit_code == 0


def test_a_blind_held_out_check_says_so(npz: dict[str, Path], tmp_path: Path) -> None:
    # The switch is named `use_batch_stats` (no convention) and stays True: the pass measures
    # the right statistics, but the before / after check runs BN with batch statistics too, so
    # it cannot tell anything. Before, it reported "not worse" as if it had checked.
    out = tmp_path / "blind" / "model.ckpt"
    res = _cli(str(DATA / "moments" / "model.ckpt"), "--data", str(npz["calib"]), "--eval-data",
               str(npz["heldout"]), "--model", f"{MODELS}:unrecognised_switch_graph",
               "--predictions", "logits:0", "--samples", "512", "--output", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["report"]
    blind = [n for n in report["notes"] if "held-out check is blind" in n]
    assert blind and "use_batch_stats:0" in blind[0]
    assert report["eval_before"] == report["eval_after"]
    # With the switch set, the check sees the statistics and no such note appears.
    res = _cli(str(DATA / "moments" / "model.ckpt"), "--data", str(npz["calib"]), "--eval-data",
               str(npz["heldout"]), "--model", f"{MODELS}:unrecognised_switch_graph",
               "--predictions", "logits:0", "--set", "use_batch_stats:0=true", "--samples", "512",
               "--output", str(tmp_path / "seen" / "model.ckpt"))
    report = json.loads(res.stdout)["report"]
    assert res.exit_code == 0 and not [n for n in report["notes"] if "blind" in n]
    assert report["eval_after"]["accuracy"] > report["eval_before"]["accuracy"]


def test_dropout_on_the_training_switch_is_measured_in_inference_mode(npz: Any) -> None:
    # Found on a real TF 1.x graph (musicnn): dropout and BN follow the same switch. Measured
    # with the switch True, every BN after the dropout saw inputs inference never sees (the
    # variance inflated by the dropped units), and the random passes made the graph look like
    # an inference graph that never settles. Now: measured in inference mode, layer after
    # layer, equal to a float64 reference of the graph with dropout off.
    r = recalibrate_bundle(DATA / "moments" / "model.ckpt.index", npz["calib"],
                           model_spec=f"{MODELS}:dropout_graph", samples=None)
    notes = " ".join(r.report.notes)
    assert "random (dropout follows the switch)" in notes and "inference mode" in notes
    with np.load(npz["calib"]) as z:
        x = z["x"].astype(np.float64)
    reader = tf.train.load_checkpoint(str(DATA / "moments" / "model.ckpt"))
    h = tf.nn.conv2d(x, reader.get_tensor("conv1/weights").astype(np.float64), 1, "SAME").numpy()
    mean1, var1 = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    h = (h - mean1) / np.sqrt(var1 + 1e-3) * reader.get_tensor("conv1/bn/gamma") + (
        reader.get_tensor("conv1/bn/beta"))
    h = np.maximum(h, 0).mean(axis=(1, 2)) @ reader.get_tensor("fc/weights").astype(np.float64)
    new = r.fix.replacements
    np.testing.assert_allclose(new["conv1/bn/moving_mean"], mean1, rtol=1e-5)
    np.testing.assert_allclose(new["fc/bn/moving_mean"], h.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new["fc/bn/moving_variance"], h.var(axis=0), rtol=1e-5)


def test_repair_is_the_graphs_own_inference_fixed_point(npz: dict[str, Path],
                                                        tmp_path: Path) -> None:
    # With batches of 4 the training-mode pass normalizes the dense head's input with noisy
    # batch statistics: what it measures for the last BN is off what inference gives it. The
    # self-check runs the graph in inference mode with the new statistics in place and puts
    # in what inference gives. Checked here against TensorFlow itself: every stored statistic
    # is the moments of its layer's input in the graph's own inference pass.
    out = tmp_path / "fixed" / "model.ckpt"
    with np.load(npz["calib"]) as z:
        x = z["x"][:256]
    np.savez(tmp_path / "x.npz", x=x)
    res = _cli(str(SAMPLE), "--data", str(tmp_path / "x.npz"), "--feed", "x:0=x", "--set",
               "is_training:0=true", "--batch-size", "4", "--output", str(out))
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["report"]
    assert report["self_check"]["passed"] and report["mode"] == "precise"
    assert any("off the graph's inference path" in n for n in report["notes"])

    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default(), v1.Session(graph=g) as sess:
        saver = v1.train.import_meta_graph(str(SAMPLE / "model.ckpt.meta"), clear_devices=True)
        saver.restore(sess, str(out))
        from ckptdoc.formats.graph import read_meta_graph
        from ckptdoc.graph_bn import analyze

        layers = analyze(read_meta_graph(SAMPLE / "model.ckpt.meta")).layers
        assert len(layers) == 3
        refs = [layer.inputs[0] for layer in layers]
        refs = [r if ":" in r else r + ":0" for r in refs]
        values = sess.run(refs, {"x:0": x, "is_training:0": False})
        reader = tf.train.load_checkpoint(str(out))
        for layer, h in zip(layers, values, strict=True):
            stored_var = reader.get_tensor(layer.members["moving_variance"])
            seen = h.astype(np.float64).reshape(-1, h.shape[-1]).var(axis=0)
            # Before: the training-mode measurement was written, more than 2% off.
            np.testing.assert_allclose(stored_var, seen, rtol=0.02)


def test_a_failed_self_check_writes_nothing(npz: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # No tolerance can be met: the check fails after its settling passes and the run refuses,
    # naming the layers, exit 1, nothing written (with --force: written, with the warning).
    from ckptdoc.recalibrate import selfcheck

    monkeypatch.setattr(selfcheck, "TOLERANCE", -1.0)
    out = tmp_path / "fixed" / "model.ckpt"
    args = [str(SAMPLE), "--data", str(npz["calib"]), "--feed", "x:0=x", "--set",
            "is_training:0=true", "--samples", "128", "--output", str(out)]
    res = _cli(*args)
    assert res.exit_code == 1
    result = json.loads(res.stdout)
    assert not result["written"] and "self-check failed" in result["refused"]
    assert "batch_normalization_2" in result["refused"]
    assert not out.with_name("model.ckpt.index").exists()
    res = _cli(*args, "--force")
    assert res.exit_code == 0 and "self-check failed" in json.loads(res.stdout)["warning"]


@pytest.mark.parametrize(("name", "written"), [
    # zero-debias accumulators beside the statistics, trainable-only Saver: before, the new
    # statistics went to `bn/bn/moving_*/biased` and the copy was still BN001
    ("tf1_zero_debias_trainable_only", {"bn/moving_mean", "bn/moving_variance"}),
    # ExponentialMovingAverage over the moments, never run: before, four half-layers
    ("tf1_ema_unwired", {f"bn{i}/bn{i}/moments/Squeeze{s}/ExponentialMovingAverage"
                         for i in (1, 2) for s in ("", "_1")}),
])
def test_truth_cases_recalibrate_under_the_names_inference_reads(
    name: str, written: set[str], tmp_path: Path
) -> None:
    src = ROOT / "tests" / "data" / "truth" / name
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=(rng.normal(size=(256, 8, 8, 1)) * 2 + 3).astype("float32"))
    out = tmp_path / "fixed" / "model.ckpt"
    res = _cli(str(src), "--data", str(tmp_path / "x.npz"), "--feed", "x:0=x", "--set",
               "is_training:0=true", "--output", str(out))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["report"]["self_check"]["passed"]
    before = set(tf.train.load_checkpoint(str(src / "model.ckpt")).get_variable_to_shape_map())
    after = tf.train.load_checkpoint(str(out))
    changed = {k for k in after.get_variable_to_shape_map()
               if k not in before or not np.array_equal(
                   after.get_tensor(k),
                   tf.train.load_checkpoint(str(src / "model.ckpt")).get_tensor(k))}
    assert changed == written
    assert audit_file(out).findings == ()


def _hostile_copy(tmp_path: Path, target: Path, where: str) -> Path:
    """The sample's checkpoint beside a forged .meta holding a WriteFile of `target`: as the
    SaverDef's restore op (`where="restore"`), or as a control dependency of the first conv,
    which every calibration pass fetches (`where="forward"`)."""
    import shutil

    folder = tmp_path / f"hostile_{where}"
    shutil.copytree(SAMPLE, folder)
    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString((folder / "model.ckpt.meta").read_bytes())
    nodes = meta.graph_def.node
    for name, value in (("evil/path", str(target).encode()), ("evil/text", b"pwned")):
        node = nodes.add(name=name, op="Const")
        node.attr["dtype"].type = tf.string.as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    nodes.add(name="evil", op="WriteFile", input=["evil/path", "evil/text"])
    if where == "restore":
        meta.saver_def.restore_op_name = "evil"
    else:
        conv = next(n for n in nodes if n.op == "Conv2D")
        conv.input.append("^evil")
    (folder / "model.ckpt.meta").write_bytes(meta.SerializeToString())
    return folder


def test_recalibrate_never_runs_the_files_restore_op(npz: dict[str, Path],
                                                     tmp_path: Path) -> None:
    # Before: import_meta_graph + saver.restore ran the SaverDef's restore op, a WriteFile of
    # the file's choosing. Now the restore is a Saver ckptdoc builds from the bundle's keys.
    target = tmp_path / "written_by_the_graph"
    folder = _hostile_copy(tmp_path, target, "restore")
    res = _cli(str(folder), "--data", str(npz["calib"]), "--feed", "x:0=x", "--set",
               "is_training:0=true", "--samples", "64", "--output",
               str(tmp_path / "out" / "model.ckpt"))
    assert not target.exists()
    assert res.exit_code == 0, res.output  # the honest rest of the graph recalibrates


def test_a_graph_that_would_write_a_file_is_refused(npz: dict[str, Path],
                                                     tmp_path: Path) -> None:
    target = tmp_path / "written_by_the_graph"
    folder = _hostile_copy(tmp_path, target, "forward")
    args = [str(folder), "--data", str(npz["calib"]), "--feed", "x:0=x", "--set",
            "is_training:0=true", "--samples", "64", "--output",
            str(tmp_path / "out" / "model.ckpt")]
    res = _cli(*args)
    assert res.exit_code == 2
    assert "`evil` (WriteFile)" in res.output and "--allow-unsafe-code" in res.output
    assert not target.exists()
    # The opt-in is what it says: the graph runs as it is, WriteFile included.
    res = _cli(*args, "--allow-unsafe-code")
    assert target.read_bytes() == b"pwned"


def test_two_placeholders_may_take_the_same_data_key() -> None:
    # Issue 25: feeds were a dict keyed by the data key, so `--feed a:0=x --feed b:0=x` kept
    # one of the two and TensorFlow then failed on the other.
    from ckptdoc.recalibrate.data import Batch
    from ckptdoc.recalibrate.tf1 import GraphModel

    g = tf.Graph()
    with g.as_default():
        a = v1.placeholder(tf.float32, (None, 2), name="a")
        b = v1.placeholder(tf.float32, (None, 2), name="b")
    gm = GraphModel(g, None, {a: "x", b: "x"}, {}, [], None)
    x = np.ones((3, 2), np.float32)
    fd = gm.feed_dict(Batch({"x": x}), training=True)
    assert set(fd) == {a, b} and all(np.array_equal(v, x) for v in fd.values())


def test_a_graph_fed_by_tf_data_is_told_what_to_feed() -> None:
    # Issue 25: "give --feed PLACEHOLDER=KEY ... (float placeholders: none)" for a graph with
    # no placeholder at all: its inputs come from an iterator, whose outputs can be fed.
    from ckptdoc.recalibrate.tf1 import _iterator_hint

    g = tf.Graph()
    with g.as_default():
        ds = tf.data.Dataset.from_tensor_slices(
            (np.zeros((4, 2), np.float32), np.zeros(4, np.int64))).batch(2)
        x, y = v1.data.make_one_shot_iterator(ds).get_next()
    hint = _iterator_hint(g)
    assert x.name in hint and f"--feed {x.name}=x --feed {y.name}=y" in hint

"""The audit uses the strongest evidence each file holds: graph ops, Keras structure, step counts.

Files: tests/data/evidence/ (scripts/make_evidence_testdata.py) and the samples. Each case is
one where names alone gave a wrong answer before; the `tf` tests check what ckptdoc finds
against what TensorFlow / Keras themselves load from the same file.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckptdoc.auditor import audit_file, evidence_groups, expand_paths
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.graph import read_meta_graph
from ckptdoc.graph_bn import analyze
from ckptdoc.rules import Severity

ROOT = Path(__file__).resolve().parent.parent
EVIDENCE = ROOT / "tests" / "data" / "evidence"
SAMPLES = ROOT / "sample_ckpts"


def _findings(path: Path) -> list[tuple[str, str, str]]:
    report = audit_file(path)
    assert report.error is None, report.error
    # CK001 (custom classes from the test's `models` module) is not what these tests are about.
    return [(f.rule, f.severity.value, f.group) for f in report.findings if f.rule != "CK001"]


def _groups(path: Path) -> dict[str, tuple[str, dict[str, str | None]]]:
    with open_checkpoint(path) as ckpt:
        return {g.name: (g.evidence.found_by, dict(g.members)) for g in evidence_groups(ckpt)}


# --------------------------------------------------------------------------- TF1 graphs


def test_update_ops_not_run_is_proven_by_the_graph() -> None:
    report = audit_file(SAMPLES / "tf1_update_ops_missing")
    bn002 = [f for f in report.findings if f.rule == "BN002"]
    assert len(bn002) == 3
    for f in bn002:
        assert f.severity is Severity.ERROR
        assert "the train op `Adam` does not depend on" in f.message
        assert "6 of the 6 ops in UPDATE_OPS" in f.message
        assert f.details["found_by"] == "graph"


def test_handwritten_bn_is_found_by_its_ops_not_its_names() -> None:
    # scale / offset / pop_mean / pop_var: no name a BN convention uses.
    groups = _groups(EVIDENCE / "tf1_handwritten")
    assert groups == {
        scope: ("graph", {
            "gamma": f"{scope}/scale",
            "beta": f"{scope}/offset",
            "moving_mean": f"{scope}/pop_mean",
            "moving_variance": f"{scope}/pop_var",
        })
        for scope in ("conv1", "fc")
    }
    assert _findings(EVIDENCE / "tf1_handwritten") == []


def test_handwritten_updates_wired_and_momentum_read_from_the_graph() -> None:
    with open_checkpoint(EVIDENCE / "tf1_handwritten") as ckpt:
        groups = evidence_groups(ckpt)
    for g in groups:
        assert g.evidence.updates_run is True
        assert g.evidence.momentum == pytest.approx(0.9)
        assert g.evidence.momentum_source == "the graph"
        assert g.evidence.steps == 60


def test_trainable_only_saver_with_handwritten_names_is_bn001() -> None:
    findings = _findings(EVIDENCE / "tf1_handwritten_trainable_only")
    assert findings == [("BN001", "error", "conv1"), ("BN001", "error", "fc")]


def test_caffe_style_inference_graph_maps_mean_and_variance() -> None:
    groups = _groups(EVIDENCE / "tf1_caffe_style")
    assert groups["bn1"] == ("graph", {
        "gamma": "bn1/scale", "beta": "bn1/offset",
        "moving_mean": "bn1/mean", "moving_variance": "bn1/variance",
    })
    # An inference graph cannot say how the model was trained: stats at 0/1 stay an error.
    assert _findings(EVIDENCE / "tf1_caffe_style") == [
        ("BN002", "error", "bn1"), ("BN002", "error", "bn2"),
    ]


def test_keras_learning_phase_never_fed_is_a_warning_not_an_error() -> None:
    report = audit_file(EVIDENCE / "tf1_keras_learning_phase")
    assert [(f.rule, f.severity) for f in report.findings] == [
        ("BN002", Severity.WARNING), ("BN002", Severity.WARNING),
    ]
    for f in report.findings:
        assert "keras_learning_phase" in f.message
        assert "defaults to False" in f.message
        assert "ckptdoc recalibrate --eval-data" in f.message


def test_slim_decay_from_graph_and_global_step() -> None:
    # 150 steps at the graph's decay 0.999: 86% of each average is still the initial value,
    # although the values are more than `barely_moved` from 0 / 1 (names alone said clean).
    report = audit_file(ROOT / "tests" / "data" / "tf1_recal" / "slim")
    [finding] = report.findings
    assert finding.rule == "BN005"
    assert finding.details["steps"] == 150
    assert finding.details["momentum"] == pytest.approx(0.999)
    assert finding.details["initial_weight"] == pytest.approx(0.999**150, rel=1e-3)


def test_a_damaged_graph_is_a_note_and_names_still_work(tmp_path: Path) -> None:
    src = EVIDENCE / "tf1_handwritten"
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    meta = dst / "model.ckpt.meta"
    meta.write_bytes(meta.read_bytes()[:1000])
    report = audit_file(dst)
    assert report.error is None
    assert any("could not read the graph" in n for n in report.notes)


@pytest.mark.tf
def test_graph_reader_matches_tensorflow() -> None:
    tf = pytest.importorskip("tensorflow")
    for meta in (SAMPLES / "tf1_update_ops_missing" / "model.ckpt.meta",
                 EVIDENCE / "tf1_handwritten" / "model.ckpt.meta",
                 EVIDENCE / "tf1_keras_learning_phase" / "model.ckpt.meta"):
        ours = read_meta_graph(meta)
        theirs = tf.compat.v1.MetaGraphDef()
        theirs.ParseFromString(meta.read_bytes())
        for node in theirs.graph_def.node:
            mine = ours.nodes[node.name]
            assert mine.op == node.op
            assert list(mine.inputs) == [i for i in node.input if not i.startswith("^")]
            assert list(mine.control_inputs) == [i[1:] for i in node.input if i.startswith("^")]
        for name, collection in theirs.collection_def.items():
            if collection.HasField("node_list"):
                assert list(ours.collections[name]) == [
                    v.split(":")[0] for v in collection.node_list.value
                ]


@pytest.mark.tf
def test_graph_layers_are_the_checkpoints_bn_variables() -> None:
    tf = pytest.importorskip("tensorflow")
    for folder in ("tf1_handwritten", "tf1_caffe_style", "tf1_keras_learning_phase"):
        reader = tf.train.load_checkpoint(str(EVIDENCE / folder / "model.ckpt"))
        facts = analyze(read_meta_graph(EVIDENCE / folder / "model.ckpt.meta"))
        with open_checkpoint(EVIDENCE / folder) as ckpt:
            for layer in facts.layers:
                for key in layer.members.values():
                    np.testing.assert_array_equal(ckpt.read(key), reader.get_tensor(key))


# --------------------------------------------------------------------------- Keras structure


def test_bn_inside_custom_layers_is_found_by_structure() -> None:
    for name, expected in (("custom_layer.keras", ["stem/norm", "block2/norm"]),
                           ("custom_layer.weights.h5", None)):
        groups = _groups(EVIDENCE / name)
        assert len(groups) == 2
        if expected:
            assert list(groups) == expected
        for found_by, members in groups.values():
            assert found_by == "structure"
            assert all(members.values())
        assert _findings(EVIDENCE / name) == []


def test_reset_stats_inside_custom_layers_fail_the_gate() -> None:
    assert _findings(EVIDENCE / "custom_layer_reset.keras") == [
        ("BN002", "error", "stem/norm"), ("BN002", "error", "block2/norm"),
    ]
    [finding] = _findings(EVIDENCE / "subclassed_reset.weights.h5")
    assert finding[:2] == ("BN002", "error")


def test_nested_custom_blocks() -> None:
    groups = _groups(EVIDENCE / "nested_block.weights.h5")
    assert len(groups) == 2
    assert all(found_by == "structure" for found_by, _ in groups.values())


@pytest.mark.tf
def test_structure_groups_hold_what_keras_loads() -> None:
    keras = pytest.importorskip("keras")
    # A unique module name: tests/data/tf1_recal has a `models.py` too.
    spec = importlib.util.spec_from_file_location("evidence_models", EVIDENCE / "models.py")
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    sys.modules["evidence_models"] = models
    spec.loader.exec_module(models)  # registers the custom classes
    for name, build in (("custom_layer.keras", None),
                        ("custom_layer.weights.h5", models.custom_layer_model),
                        ("nested_block.weights.h5", models.nested_block_model)):
        if build is None:
            model = keras.saving.load_model(EVIDENCE / name)
        else:
            model = build()
            model.load_weights(EVIDENCE / name)
        expected = sorted(
            (v.path.rsplit("/", 1)[-1], np.asarray(v).round(6).tolist())
            for v in model.variables
            if v.path.endswith(("moving_mean", "moving_variance", "gamma", "beta"))
        )
        with open_checkpoint(EVIDENCE / name) as ckpt:
            ours = sorted(
                (role, np.asarray(ckpt.read(key)).round(6).tolist())
                for g in evidence_groups(ckpt) for role, key in g.members.items() if key
            )
        assert ours == expected


def test_keras_layers_listed_in_model_order() -> None:
    names = list(_groups(EVIDENCE / "many_bn.keras"))
    assert len(names) == 12
    numbers = [int(n.rsplit("_", 1)[1]) for n in names]
    assert numbers == sorted(numbers)  # `_10` after `_9`, not after `_1`


def test_keras1_names_with_tensorflow_uniquifier() -> None:
    groups = _groups(EVIDENCE / "keras1_uniquified.h5")
    assert list(groups) == ["Normalize"]
    assert all(groups["Normalize"][1].values())
    assert _findings(EVIDENCE / "keras1_uniquified.h5") == [("BN002", "error", "Normalize")]


# --------------------------------------------------------------------------- steps, untrained


def test_barely_moved_from_step_count_and_config_momentum() -> None:
    report = audit_file(EVIDENCE / "barely_moved.keras")
    [finding] = report.findings
    assert (finding.rule, finding.severity) == ("BN005", Severity.WARNING)
    assert finding.details["steps"] == 8
    assert finding.details["momentum"] == pytest.approx(0.999)
    assert "99% of each moving statistic is still its initial value" in finding.message
    assert "the layer's config" in finding.message


def test_untrained_model_is_one_warning() -> None:
    for name in ("untrained.keras", "many_bn.keras"):
        findings = _findings(EVIDENCE / name)
        assert [f[:2] for f in findings] == [("BN008", "warning")]


def test_one_untrained_layer_in_a_trained_model_is_info(tmp_path: Path) -> None:
    path = tmp_path / "m.weights.h5"
    shutil.copy(EVIDENCE / "custom_layer.weights.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["layers/conv_bn_act_1/norm/vars"]
        for index, value in enumerate((1.0, 0.0, 0.0, 1.0)):
            group[str(index)][...] = value
    findings = _findings(path)
    assert [f[:2] for f in findings] == [("BN009", "info")]


# --------------------------------------------------------------------------- directory scan


def test_directory_scan_recognises_files_by_their_first_bytes(tmp_path: Path) -> None:
    shutil.copy(EVIDENCE / "custom_layer.keras", tmp_path / "model_without_extension")
    shutil.copy(SAMPLES / "keras2_healthy.h5", tmp_path / "weights-final")
    np.savez(tmp_path / "data_npz_renamed", x=np.zeros(3))  # a zip, not a model
    (tmp_path / "data_npz_renamed.npz").rename(tmp_path / "data_npz_renamed")
    (tmp_path / "notes").write_text("hello")
    found = sorted(p.name for p in expand_paths([tmp_path]))
    assert found == ["model_without_extension", "weights-final"]


def test_damaged_graphs_never_crash_the_audit(tmp_path: Path) -> None:
    # The graph is untrusted input like the rest: flipped bytes and cuts anywhere give a note
    # or a different reading, never an internal error.
    src = (SAMPLES / "tf1_update_ops_missing" / "model.ckpt.meta").read_bytes()
    shutil.copytree(SAMPLES / "tf1_update_ops_missing", tmp_path / "c")
    meta = tmp_path / "c" / "model.ckpt.meta"
    rng = np.random.default_rng(11)
    for case in range(150):
        data = bytearray(src)
        if case % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        for _ in range(int(rng.integers(1, 8))):
            if data:
                data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        meta.write_bytes(bytes(data))
        report = audit_file(tmp_path / "c")
        assert report.error is None, (case, report.error)


def test_tf1_savedmodel_graph_is_read_from_saved_model_pb() -> None:
    report = audit_file(EVIDENCE / "tf1_savedmodel")
    assert report.format == "savedmodel"
    assert [(g.name, g.found_by) for g in report.groups] == [("norm", "graph")]
    [finding] = report.findings
    assert (finding.rule, finding.severity) == ("BN002", Severity.ERROR)
    assert "2 of the 2 ops in UPDATE_OPS are not run" in finding.message


def test_structure_rule_three_vectors_and_not_two(tmp_path: Path) -> None:
    # BN(scale=False) inside a custom layer: 3 vectors (beta, mean, variance); a 2-vector
    # group (layer norm, or BN with both off) is not guessed.
    path = tmp_path / "m.weights.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_group("layers/block/norm/vars")
        for i, value in enumerate((rng.normal(size=4), np.zeros(4), np.ones(4))):
            f[f"layers/block/norm/vars/{i}"] = value.astype("float32")
        for i, value in enumerate((np.ones(4), np.zeros(4))):
            f[f"layers/block/ln/vars/{i}"] = value.astype("float32")
    groups = _groups(path)
    assert list(groups) == ["layers/block/norm"]
    found_by, members = groups["layers/block/norm"]
    assert found_by == "structure"
    assert members["moving_mean"] == "layers/block/norm/vars/1"
    assert members["moving_variance"] == "layers/block/norm/vars/2"
    # vars/0 is beta or gamma: unknowable without a config, kept apart, never mistaken.
    assert members["gamma"] is None and members["beta"] is None

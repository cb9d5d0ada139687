"""Real models made by others (tests/data/real/*/PROVENANCE.md): no false finding, every BN
layer found, and from the strongest evidence the file has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ckptdoc.auditor import audit_file, evidence_groups
from ckptdoc.formats import open_checkpoint

REAL = Path(__file__).resolve().parent / "data" / "real"

# path, BN layers, how they are found, the findings a correct audit gives (all info-level)
CASES = [
    ("fer/emotion_model.hdf5", 14, "config", {"BN006": 1}),
    ("basic-pitch/nmp", 3, "config", {}),
    ("musicnn-mtt-vgg", 6, "graph", {"BN006": 4}),
    ("inaspeechsegmenter/keras_speech_music_noise_cnn.hdf5", 8, "config", {}),
    ("deepcut/cnn_without_ne_ab.h5", 2, "names", {}),
]


@pytest.mark.parametrize(("rel", "layers", "found_by", "findings"), CASES)
def test_real_model(rel: str, layers: int, found_by: str, findings: dict[str, int]) -> None:
    report = audit_file(REAL / rel)
    assert report.error is None
    assert len(report.groups) == layers
    assert {g.found_by for g in report.groups} == {found_by}
    counts: dict[str, int] = {}
    for f in report.findings:
        assert f.severity.value == "info", f
        counts[f.rule] = counts.get(f.rule, 0) + 1
    assert counts == findings


def test_real_tf1_graph_proves_the_updates_run() -> None:
    # TF 1.x graph: VariableV2, Switch / Merge control flow, UPDATE_OPS under the train op.
    with open_checkpoint(REAL / "musicnn-mtt-vgg") as ckpt:
        groups = evidence_groups(ckpt)
    assert len(groups) == 6
    for g in groups:
        assert g.evidence.updates_run is True
        assert "`Adam` runs this layer's update ops" in g.evidence.updates_detail
        assert g.evidence.momentum == pytest.approx(0.99)


@pytest.mark.tf
def test_real_bn_members_are_what_tensorflow_reads() -> None:
    # musicnn's TF 1.x checkpoint: every BN member the graph analysis found is a variable
    # TensorFlow's own reader has, with the same values; and no BN-named variable is left out.
    tf = pytest.importorskip("tensorflow")
    folder = REAL / "musicnn-mtt-vgg"
    reader = tf.compat.v1.train.NewCheckpointReader(str(folder) + "/")  # empty prefix
    with open_checkpoint(folder) as ckpt:
        groups = evidence_groups(ckpt)
        found = {key for g in groups for key in g.members.values() if key}
        for key in found:
            np.testing.assert_array_equal(ckpt.read(key), reader.get_tensor(key))
    named = {k for k in reader.get_variable_to_shape_map()
             if k.rsplit("/", 1)[-1] in ("gamma", "beta", "moving_mean", "moving_variance")}
    assert found == named and len(found) == 24


@pytest.mark.tf
def test_real_tf1_graph_recalibrates(tmp_path: Path) -> None:
    # musicnn's TF 1.x graph, as TF 2.x meets it: its .meta carries shape hints today's
    # importer rejects, its bundle has an empty prefix, its training switch has no telling
    # name (model/Placeholder_2), and dropout follows that switch. Recalibrated with the
    # switch named: written, the 6 BN layers TensorFlow's reader has, only their moving
    # statistics changed, every other tensor equal; measured in inference mode.
    tf = pytest.importorskip("tensorflow")
    import ckptdoc

    folder = REAL / "musicnn-mtt-vgg"
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).normal(0, 1, (16, 187, 96)).astype(np.float32))
    out = tmp_path / "fixed" / "model"
    # Noise is not what musicnn hears: its healthy statistics disagree with it past BN012's
    # error threshold, so only --force writes (the data check of issue 26), and says so.
    outcome = ckptdoc.recalibrate_file(folder, str(data), output=out, batch_size=16,
                                       feeds={"model/Placeholder:0": "x"},
                                       sets={"model/Placeholder_2:0": "true"}, force=True)
    assert outcome.written and outcome.audit["errors"] == []
    assert "Does the data match the model's preprocessing?" in (outcome.warning or "")
    assert len(outcome.report.layers) == 6
    assert any("random (dropout follows the switch)" in n for n in outcome.report.notes)
    before = tf.compat.v1.train.NewCheckpointReader(str(folder) + "/")
    after = tf.compat.v1.train.NewCheckpointReader(str(out))
    keys = before.get_variable_to_shape_map()
    assert set(after.get_variable_to_shape_map()) == set(keys)
    changed = {k for k in keys
               if before.get_tensor(k).tobytes() != after.get_tensor(k).tobytes()}
    moving = {k for k in keys if k.rsplit("/", 1)[-1] in ("moving_mean", "moving_variance")}
    assert changed == moving and len(moving) == 12


@pytest.mark.tf
def test_real_tf1_graph_without_its_switch_says_which_to_set(tmp_path: Path) -> None:
    # Without --set, the pass cannot run: the refusal names the placeholder and the option,
    # before the pass (it used to be "InvalidArgumentError: Graph execution error:").
    pytest.importorskip("tensorflow")
    import ckptdoc
    from ckptdoc.recalibrate.errors import RecalibrationError

    data = tmp_path / "x.npz"
    np.savez(data, x=np.zeros((4, 187, 96), np.float32))
    with pytest.raises(RecalibrationError, match=r"--set model/Placeholder_2:0=true"):
        ckptdoc.recalibrate_file(REAL / "musicnn-mtt-vgg", str(data),
                                 output=tmp_path / "o" / "model",
                                 feeds={"model/Placeholder:0": "x"})
    assert not (tmp_path / "o").exists()

"""The shipped samples and the real models get exactly the findings their READMEs promise."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptdoc.auditor import audit_file
from ckptdoc.cli import app
from ckptdoc.rules import Severity

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
REAL = ROOT / "tests" / "data" / "real"
EXPECTED: dict[str, dict] = json.loads((SAMPLES / "expected.json").read_text())


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_gets_the_findings_its_readme_promises(sample):
    expected = EXPECTED[sample]
    report = audit_file(SAMPLES / sample)
    assert report.error is None
    assert report.format == expected["format"]
    assert len(report.groups) == expected["bn_layers"]
    per_rule = Counter(f.rule for f in report.findings)
    assert dict(per_rule) == expected["findings"]
    # one finding per rule per layer, never two for the same layer
    assert len({(f.rule, f.group) for f in report.findings}) == len(report.findings)


def ls_json(path: Path) -> dict:
    result = CliRunner().invoke(app, ["ls", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ls_json_shape_and_members_of_trainable_only_saver():
    out = ls_json(SAMPLES / "tf1_trainable_only_saver")
    assert out["format"] == "tf1-bundle"
    assert [g["name"] for g in out["groups"]] == [
        "batch_normalization", "batch_normalization_1", "batch_normalization_2"]
    first = out["groups"][0]
    assert first["channels"] == 4
    assert first["members"] == {
        "gamma": "batch_normalization/gamma",
        "beta": "batch_normalization/beta",
        "moving_mean": None,
        "moving_variance": None,
    }


def test_ls_json_slim_has_no_gamma_and_no_slots():
    out = ls_json(SAMPLES / "tf1_slim_decay" / "model.ckpt.index")
    names = [g["name"] for g in out["groups"]]
    assert names == ["conv1/BatchNorm", "conv2/BatchNorm", "fc3/BatchNorm"]
    for g in out["groups"]:
        assert g["members"]["gamma"] is None
        assert all(g["members"][r] for r in ("beta", "moving_mean", "moving_variance"))
        assert not any("Momentum" in (k or "") for k in g["members"].values())


def test_ls_json_tf2_groups_through_object_graph():
    out = ls_json(SAMPLES / "tf2_healthy")
    assert len(out["groups"]) == 3
    for g in out["groups"]:
        # Keras 3 + optimizer: gamma/beta live under the optimizer, stats under the layer
        assert g["members"]["gamma"].startswith("optimizer/_trainable_variables/")
        assert "_operations" in g["members"]["moving_mean"]
        assert ".OPTIMIZER_SLOT" not in json.dumps(g)


def test_fer_real_model_14_layers_no_errors():
    report = audit_file(REAL / "fer" / "emotion_model.hdf5")
    assert report.error is None and len(report.groups) == 14
    assert not [f for f in report.findings if f.severity != Severity.INFO]
    # its two ~1e-36 variances are real dead units: reported as info only
    assert [f.rule for f in report.findings] == ["BN006"]


def test_basic_pitch_real_savedmodel_3_layers_no_errors():
    out = ls_json(REAL / "basic-pitch" / "nmp")
    assert out["format"] == "savedmodel"
    assert len(out["groups"]) == 3
    assert all(all(g["members"].values()) for g in out["groups"])
    report = audit_file(REAL / "basic-pitch" / "nmp")
    assert report.findings == ()


def test_audit_cli_on_samples_exit_1_and_json_summary():
    result = CliRunner().invoke(app, ["audit", str(SAMPLES), "--format", "json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["version"] == 1
    assert out["summary"]["files"] == len(EXPECTED)
    assert out["summary"]["error"] == sum(
        n for e in EXPECTED.values() for code, n in e["findings"].items() if code != "BN005")

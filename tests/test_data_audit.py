"""`ckptdoc audit MODEL --data DATA` (issue 26): the stored statistics against the data's.

The decision rule is tested on its own (no framework: sampling error, scale and shift), then
end to end on the shipped healthy models with the data they were trained on: consistent
data gives no finding, x255 data a mismatch that names the scale, shifted data a drift, and
`recalibrate` refuses to overwrite healthy statistics with mismatched data (before: it wrote
them, exit 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ckptdoc.rules.data import compare_layer, comparison_of, data_findings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
CALIB = SAMPLES / "data" / "calib.npz"


# --------------------------------------------------------------------------- the rule alone


def _draw(rng: np.random.Generator, n: int, channels: int = 16) -> tuple[np.ndarray, ...]:
    mu = rng.normal(0, 5, channels)
    s2 = rng.uniform(0.05, 20, channels)
    x = rng.normal(mu, np.sqrt(s2), (n, channels))
    return mu, s2, x


def test_no_false_alarm_on_consistent_data_over_many_seeds_and_small_samples() -> None:
    # Data drawn from the stored statistics themselves, 16 channels, 400 seeds per size:
    # measured false-alarm rate 0 / 2,400 (the margin of 3 sampling errors on medians).
    alarms = 0
    for n in (4, 8, 16, 32, 128, 1024):
        rng = np.random.default_rng(n)
        for _ in range(400):
            mu, s2, x = _draw(rng, n)
            layer = compare_layer("bn", mu, s2, 1e-3, x.mean(0), x.var(0), n)
            alarms += layer.verdict != "agrees"
    assert alarms == 0


def test_a_scale_is_a_mismatch_that_names_it() -> None:
    rng = np.random.default_rng(0)
    mu, s2, x = _draw(rng, 256)
    # A layer behind a linear map of the input sees the input's scale: x255 on everything.
    scaled = x * 255
    comparison = comparison_of([("bn1", mu, s2, 1e-3, scaled.mean(0), scaled.var(0))], 256,
                               "x255.npz")
    (finding,) = data_findings(comparison)
    assert finding.rule == "BN012" and finding.severity.value == "error"
    assert "x255" in finding.message and "0-255 pixels" in finding.message


def test_a_shift_of_a_fraction_of_the_spread_is_drift() -> None:
    rng = np.random.default_rng(1)
    mu, s2, x = _draw(rng, 512)
    shifted = x + 0.5 * np.sqrt(s2)
    layer = compare_layer("bn", mu, s2, 1e-3, shifted.mean(0), shifted.var(0), 512)
    assert layer.verdict == "drift"
    assert 0.4 < layer.shift < 0.6


def test_layers_the_tensors_prove_broken_get_no_data_finding() -> None:
    # Statistics at 0 / 1 disagree with any data; BN002 already says so, and a
    # "preprocessing differs" hint would send the user the wrong way.
    rng = np.random.default_rng(2)
    _, _, x = _draw(rng, 256)
    comparison = comparison_of([("bn1", np.zeros(16), np.ones(16), 1e-3, x.mean(0) + 50,
                                 x.var(0) * 100)], 256, "calib.npz")
    assert data_findings(comparison, broken=frozenset({"bn1"})) == []
    assert data_findings(comparison)  # the same layer not known broken: a finding


# --------------------------------------------------------------------------- end to end


def _audit(*args: str) -> tuple[int, dict[str, Any]]:
    from ckptdoc.cli import app

    result = CliRunner().invoke(app, ["audit", *args, "--format", "json", "--isolated"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data-audit")
    with np.load(CALIB) as z:
        x, y = z["x"], z["y"]
    out = {}
    # A shift of the input by its own spread: the layers see 0.4-0.7 of their sd (zero
    # padding and mixed-sign kernels spread it); half of it stays within 3 sampling errors
    # of 256 samples, which the rule keeps as its margin against false alarms.
    for name, xs in {"x255": x * 255, "shift": x + x.std(), "ok": x}.items():
        out[name] = folder / f"{name}.npz"
        np.savez(out[name], x=xs, y=y)
    return out


@pytest.mark.parametrize("model", ["keras3_healthy.keras", "keras2_healthy.h5"])
def test_consistent_data_gives_no_finding(model: str) -> None:
    code, report = _audit(str(SAMPLES / model), "--data", str(CALIB))
    (file,) = report["files"]
    assert code == 0 and not [f for f in file["findings"] if f["rule"] == "BN012"]
    assert file["data"]["verdict"] == "agrees" and len(file["data"]["layers"]) == 3


def test_x255_data_is_a_mismatch_naming_the_scale(variants: dict[str, Path]) -> None:
    code, report = _audit(str(SAMPLES / "keras3_healthy.keras"), "--data",
                          str(variants["x255"]))
    (file,) = report["files"]
    assert code == 1
    first = next(f for f in file["findings"] if f["rule"] == "BN012")
    assert first["severity"] == "error" and first["group"] == "bn_conv1"
    assert "0-255 pixels" in first["message"], first["message"]
    assert file["data"]["verdict"] == "mismatch"
    import jsonschema

    from tests.test_api import _schema
    jsonschema.validate(report, _schema())


def test_shifted_data_is_drift(variants: dict[str, Path]) -> None:
    code, report = _audit(str(SAMPLES / "keras3_healthy.keras"), "--data",
                          str(variants["shift"]), "--fail-on", "warning")
    (file,) = report["files"]
    assert code == 1
    assert {f["severity"] for f in file["findings"] if f["rule"] == "BN012"} == {"warning"}
    assert file["data"]["verdict"] == "drift"


def test_small_samples_on_a_real_model_give_no_false_alarm() -> None:
    # The shipped healthy model, in memory, over 8 random subsets each of 8, 32 and 128 of
    # the data it was trained on: no layer disagrees (24 comparisons, 72 layer verdicts).
    import keras

    from ckptdoc.recalibrate.keras_model import observe
    from ckptdoc.recalibrate.options import Options

    model = keras.saving.load_model(SAMPLES / "keras3_healthy.keras")
    with np.load(CALIB) as z:
        x = z["x"]
    rng = np.random.default_rng(0)
    verdicts = []
    for n in (8, 32, 128):
        for _ in range(8):
            subset = x[rng.choice(len(x), n, replace=False)]
            comparison = observe(model, Options(data=subset, samples=n, batch_size=32))
            verdicts += [layer.verdict for layer in comparison.layers]
    assert len(verdicts) == 72 and set(verdicts) == {"agrees"}


def test_tf1_graph_checkpoint_broken_layers_are_not_blamed_on_the_data() -> None:
    code, report = _audit(str(SAMPLES / "tf1_update_ops_missing"), "--data", str(CALIB))
    (file,) = report["files"]
    assert code == 1
    assert {f["rule"] for f in file["findings"]} == {"BN002"}
    assert len(file["data"]["layers"]) == 3  # the graph ran over the data: all compared


def test_a_model_that_cannot_run_is_a_finding_not_a_pass(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 3, 2), np.float32))  # the wrong shape for the model
    code, report = _audit(str(SAMPLES / "keras3_healthy.keras"), "--data", str(bad))
    (file,) = report["files"]
    assert code == 1
    (finding,) = [f for f in file["findings"] if f["rule"] == "BN012"]
    assert finding["group"] == "(data)" and "could not compare" in finding["message"]
    assert "expects inputs of shape (None, 8, 8, 1)" in finding["message"]


def test_recalibrate_refuses_to_overwrite_healthy_statistics_with_mismatched_data(
    variants: dict[str, Path], tmp_path: Path
) -> None:
    from ckptdoc.cli import app

    out = tmp_path / "out.keras"
    result = CliRunner().invoke(app, ["recalibrate", str(SAMPLES / "keras3_healthy.keras"),
                                      "--data", str(variants["x255"]), "-o", str(out),
                                      "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "Does the data match the model's preprocessing?" in result.output
    assert not out.exists()
    result = CliRunner().invoke(app, ["recalibrate", str(SAMPLES / "keras3_healthy.keras"),
                                      "--data", str(variants["ok"]), "-o", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "already agreed with the data" in result.output and out.exists()
    # One line in a log, not broken mid-sentence at the console's width (issue 25).
    assert any("already agreed" in line and "changed them little" in line
               for line in result.output.splitlines())


def test_python_api_takes_data_and_gives_the_per_layer_comparison() -> None:
    import ckptdoc

    with np.load(CALIB) as z:
        x = z["x"]
    report = ckptdoc.audit(SAMPLES / "keras3_healthy.keras", config=False, data=x * 255)
    (file,) = report.files
    assert file.data is not None and file.data["verdict"] == "mismatch"
    assert [row["layer"] for row in file.data["layers"]] == ["bn_conv1", "bn_conv2", "bn_head"]
    assert report.exit_code() == 1
    assert ckptdoc.audit(SAMPLES / "keras3_healthy.keras", config=False).files[0].data is None


def test_wrong_data_shape_names_both_shapes(tmp_path: Path) -> None:
    # Issue 25: this read `ValueError: File ".../traceback_utils.py", line 122, in
    # error_handler **`, the first line of Keras's traceback containing "rror".
    from ckptdoc.cli import app

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((64, 3), np.float32))
    result = CliRunner().invoke(app, ["recalibrate", str(SAMPLES / "keras3_healthy.keras"),
                                      "--data", str(bad), "-o", str(tmp_path / "o.keras")])
    assert result.exit_code == 2
    assert "expects inputs of shape (None, 8, 8, 1)" in result.output
    assert "gives batches of shape (64, 3)" in result.output

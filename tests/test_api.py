"""The Python API: `ckptdoc.audit` does what `ckptdoc audit` does, configuration included, and
its report is the JSON report; the JSON report follows the schema shipped with the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

import ckptdoc
from ckptdoc.rules import Severity

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"


def _schema() -> dict:  # type: ignore[type-arg]
    text = resources.files("ckptdoc.report").joinpath("schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _cli_json(*args: str, cwd: Path = ROOT) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, "-m", "ckptdoc", "audit", *args, "--format", "json"],
                         capture_output=True, text=True, cwd=cwd)
    return out.returncode, json.loads(out.stdout)


def test_audit_equals_the_cli() -> None:
    report = ckptdoc.audit(SAMPLES, config=False)
    code, doc = _cli_json(str(SAMPLES), "--isolated")
    assert report.to_dict() == doc
    assert report.exit_code() == code == 1
    jsonschema.validate(doc, _schema())


def test_audit_applies_configuration_like_the_cli(tmp_path: Path) -> None:
    (tmp_path / "ckptdoc.toml").write_text(
        'ignore = ["BN002"]\nexclude = ["**/tf1_nan/**"]\n'
        '[tolerances]\nbarely-moved = 0.001\n'
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        report = ckptdoc.audit(SAMPLES)
    finally:
        os.chdir(cwd)
    code, doc = _cli_json(str(SAMPLES), cwd=tmp_path)
    assert report.to_dict() == doc
    rules = {f.rule for f in report.findings}
    assert "BN002" not in rules and "BN005" not in rules and "BN001" in rules
    assert not any("tf1_nan" in f.path for f in report.files)
    assert report.exit_code(fail_on=Severity.ERROR) == code


def test_audit_arguments_win_and_errors_are_exceptions() -> None:
    report = ckptdoc.audit(SAMPLES / "tf1_nan", select=["BN004"], config=False)
    assert [f.rule for f in report.findings] == ["BN004"]
    with pytest.raises(ValueError, match="unknown rule"):
        ckptdoc.audit(SAMPLES, select=["XX999"], config=False)
    with pytest.raises(ValueError, match="no checkpoints"):
        ckptdoc.audit(ROOT / "docs", config=False)


def test_report_types_are_exported() -> None:
    for name in ("AuditReport", "FileReport", "GroupResult", "Finding", "Severity", "audit"):
        assert name in ckptdoc.__all__
        assert getattr(ckptdoc, name).__doc__


def test_every_json_report_follows_the_schema(tmp_path: Path) -> None:
    schema = _schema()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    targets = [SAMPLES, ROOT / "tests" / "data" / "evidence", ROOT / "tests" / "data" / "real", bad]
    for target in targets:
        jsonschema.validate(ckptdoc.audit(target, config=False).to_dict(), schema)
    golden = json.loads((ROOT / "tests" / "golden" / "report.baseline.json").read_text())
    jsonschema.validate(golden, schema)
    broken = dict(golden, version=2)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_api_and_cli_agree_on_the_configured_gate(tmp_path: Path) -> None:
    # `fail-on = "warning"` in the configuration: the CLI exited 1 and the API's
    # exit_code() said 0, because `ckptdoc.audit` ignored the configured threshold.
    (tmp_path / "ckptdoc.toml").write_text('fail-on = "warning"\nselect = ["BN005"]\n')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        report = ckptdoc.audit(SAMPLES / "tf1_slim_decay")
    finally:
        os.chdir(cwd)
    code, doc = _cli_json(str(SAMPLES / "tf1_slim_decay"), cwd=tmp_path)
    assert {f.rule for f in report.findings} == {"BN005"}  # warnings only
    assert report.to_dict() == doc
    assert report.exit_code() == code == 1
    assert report.exit_code(fail_on=Severity.ERROR) == 0  # an explicit threshold still wins


def test_recalibrate_budget_is_the_same_from_the_api_and_the_cli() -> None:
    # The default of 4096 samples lived in three places: `--batches 200` measured 200 batches
    # on the CLI while `recalibrate_file(..., batches=200)` was capped at 4096 samples.
    from ckptdoc.recalibrate.errors import RecalibrationError
    from ckptdoc.recalibrate.options import Options

    assert Options(data=None).budget.samples == 4096
    by_batches = Options(data=None, batches=200)
    assert (by_batches.budget.samples, by_batches.budget.batches) == (None, 200)
    assert Options(data=None, samples=None).budget.samples is None  # all of the data
    with pytest.raises(RecalibrationError, match="not both"):
        Options(data=None, samples=100, batches=2)

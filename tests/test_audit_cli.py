"""`ckptdoc audit` as a CI gate: exit codes, selection, formats, configuration, baselines, jobs.

Checkpoints are tiny Keras 2 weights files written with h5py (tests/ckpt_factory.py): no
TensorFlow needed.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ckptdoc.cli import app
from tests import ckpt_factory as make

BUNDLE = Path(__file__).parent / "data" / "bundle" / "tf1_sharded"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the working directory (no configuration above it counts:
    each test that wants one writes it)."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    return root


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["audit", *args])


def as_json(*args: str) -> dict:  # type: ignore[type-arg]
    result = run(*args, "--format", "json")
    return json.loads(result.stdout)


# --- exit codes ------------------------------------------------------------------------------


def test_exit_codes(repo: Path) -> None:
    make.healthy_model(repo / "ok" / "a.h5")
    make.broken_model(repo / "bad" / "b.h5")
    make.garbage_file(repo / "junk" / "c.h5")
    assert run("ok").exit_code == 0
    assert run("bad").exit_code == 1
    assert run("junk").exit_code == 2
    assert run("ok", "bad").exit_code == 1
    assert run("bad", "--exit-zero").exit_code == 0
    assert run("nothing-here.h5").exit_code == 2


def test_one_unreadable_file_does_not_stop_the_others(repo: Path) -> None:
    make.healthy_model(repo / "a.h5")
    make.garbage_file(repo / "b.h5")
    make.broken_model(repo / "c.h5")
    result = run(".", "--format", "json")
    assert result.exit_code == 2
    files = json.loads(result.stdout)["files"]
    assert [f["path"] for f in files] == ["a.h5", "b.h5", "c.h5"]
    assert "error" in files[1] and "b.h5" in files[1]["error"]
    assert [f["rule"] for f in files[2]["findings"]] == ["BN002", "BN002"]


def test_select_ignore_and_fail_on(repo: Path) -> None:
    make.broken_model(repo / "b.h5")
    make.barely_moved_model(repo / "c.h5")
    assert run("b.h5", "--select", "BN005").exit_code == 0
    assert run("b.h5", "--ignore", "BN002").exit_code == 0
    assert run("b.h5", "--select", "BN001,BN002").exit_code == 1
    assert run("b.h5", "--select", "bn00").exit_code == 1  # prefixes, any case
    assert run("c.h5").exit_code == 0  # BN005 is a warning
    assert run("c.h5", "--fail-on", "warning").exit_code == 1
    assert run("c.h5", "--barely-moved", "0.001").exit_code == 0  # no longer "barely"


@pytest.mark.parametrize("args", [["--select", "BN999"], ["--ignore", "XX"], ["--fail-on", "x"]])
def test_usage_errors_exit_2(repo: Path, args: list[str]) -> None:
    make.healthy_model(repo / "a.h5")
    result = run("a.h5", *args)
    assert result.exit_code == 2


def test_unknown_code_is_named(repo: Path) -> None:
    make.healthy_model(repo / "a.h5")
    result = run("a.h5", "--select", "BN999")
    assert "BN999" in result.stderr


# --- formats ---------------------------------------------------------------------------------


def test_json_shape(repo: Path) -> None:
    make.healthy_model(repo / "m" / "a.h5")
    make.broken_model(repo / "m" / "b.h5", layers=1)
    doc = as_json("m")
    assert doc["version"] == 1
    assert set(doc) >= {"version", "files", "summary"}
    for file in doc["files"]:
        assert {"path", "format", "groups", "findings"} <= set(file)
        for group in file["groups"]:
            assert {"name", "status"} <= set(group)
        for finding in file["findings"]:
            assert {"rule", "severity", "group", "message"} <= set(finding)
    assert [f["path"] for f in doc["files"]] == ["m/a.h5", "m/b.h5"]
    assert doc["files"][0]["format"] == "keras2-weights-h5"
    assert doc["files"][1]["findings"][0]["rule"] == "BN002"
    assert doc["files"][1]["findings"][0]["severity"] == "error"
    assert doc["files"][1]["groups"] == [
        {"name": "batch_normalization_0", "status": "BN002", "found_by": "names"}
    ]
    summary = doc["summary"]
    assert (summary["files"], summary["groups"], summary["error"]) == (2, 3, 1)


def test_several_reports_from_one_run(repo: Path) -> None:
    make.healthy_model(repo / "a.h5")
    make.broken_model(repo / "b.h5")
    result = run(
        ".",
        "--report", "sarif=out/ckptdoc.sarif",
        "--report", "junit=out/ckptdoc.xml",
        "--report", "markdown=out/summary.md",
        "--report", "github=out/annotations.txt",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "b.h5" in result.stdout and "Summary:" in result.stdout  # text stays on stdout
    sarif = json.loads((repo / "out" / "ckptdoc.sarif").read_text())
    uris = {
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        for r in sarif["runs"][0]["results"]
    }
    assert uris == {"b.h5"}
    junit = ET.parse(repo / "out" / "ckptdoc.xml").getroot()
    assert (junit.get("tests"), junit.get("failures")) == ("4", "2")
    assert "❌ failed" in (repo / "out" / "summary.md").read_text()
    assert (repo / "out" / "annotations.txt").read_text().startswith(
        "::error file=b.h5,title=ckptdoc BN002::"
    )


def test_output_file_and_summary_on_stderr(repo: Path) -> None:
    make.broken_model(repo / "b.h5")
    result = run("b.h5", "--format", "sarif", "--output", "r.sarif")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Summary: 1 file" in result.stderr
    assert json.loads((repo / "r.sarif").read_text())["version"] == "2.1.0"


@pytest.mark.parametrize("spec", ["sarif", "nope=x.txt", "sarif="])
def test_bad_report_spec(repo: Path, spec: str) -> None:
    make.healthy_model(repo / "a.h5")
    assert run("a.h5", "--report", spec).exit_code == 2


def test_index_file_is_reported_as_its_prefix(repo: Path) -> None:
    if not (BUNDLE / "model.ckpt.index").is_file():
        pytest.skip("bundle test data not present")
    shutil.copytree(BUNDLE, repo / "ckpt")
    by_index = as_json("ckpt/model.ckpt.index")
    by_dir = as_json("ckpt")
    assert [f["path"] for f in by_index["files"]] == ["ckpt/model.ckpt"]
    assert by_index["files"] == by_dir["files"]  # one checkpoint, however it is named
    assert len(as_json("ckpt/model.ckpt.index", "ckpt")["files"]) == 1


def test_annotations_point_at_files_that_exist(repo: Path) -> None:
    if not (BUNDLE / "model.ckpt.index").is_file():
        pytest.skip("bundle test data not present")
    shutil.copytree(BUNDLE, repo / "ckpt")
    # The sample bundle is healthy: give the emitters a finding on its real prefix.
    from ckptdoc.report import github, sarif
    from ckptdoc.report.model import AuditReport, FileReport
    from ckptdoc.rules import Finding, Severity

    finding = Finding("BN002", Severity.ERROR, "bn", "m")
    report = AuditReport((FileReport("ckpt/model.ckpt", "tf1-bundle", findings=(finding,)),))
    doc = sarif.to_dict(report)
    loc = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc["uri"] == "ckpt/model.ckpt.index"
    assert github.render(report).startswith("::error file=ckpt/model.ckpt.index,")


# --- configuration ---------------------------------------------------------------------------


def test_pyproject_configuration_applies_and_cli_overrides(repo: Path) -> None:
    make.barely_moved_model(repo / "c.h5")
    (repo / "pyproject.toml").write_text('[tool.ckptdoc]\nfail-on = "warning"\n')
    assert run("c.h5").exit_code == 1
    assert run("c.h5", "--fail-on", "error").exit_code == 0
    (repo / "pyproject.toml").write_text('[tool.ckptdoc]\nseverity = { BN005 = "error" }\n')
    assert run("c.h5").exit_code == 1
    assert run("c.h5", "--isolated").exit_code == 0


def test_config_is_found_from_a_subfolder(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make.barely_moved_model(repo / "models" / "c.h5")
    (repo / "ckptdoc.toml").write_text('fail-on = "warning"\n')
    monkeypatch.chdir(repo / "models")
    assert run("c.h5").exit_code == 1


def test_bad_configuration_exits_2_naming_the_key(repo: Path) -> None:
    make.healthy_model(repo / "a.h5")
    (repo / "pyproject.toml").write_text('[tool.ckptdoc]\nfail_on = "warning"\n')
    result = run("a.h5")
    assert result.exit_code == 2
    assert "fail_on" in result.stderr


def test_exclude_and_per_file_ignores(repo: Path) -> None:
    make.broken_model(repo / "legacy" / "old.h5")
    make.barely_moved_model(repo / "experiments" / "e.h5")
    make.healthy_model(repo / "models" / "a.h5")
    (repo / "pyproject.toml").write_text(
        "[tool.ckptdoc]\n"
        'fail-on = "warning"\n'
        'exclude = ["legacy"]\n'
        'per-file-ignores = { "experiments/**" = ["BN005"] }\n'
    )
    result = run(".", "--format", "json")
    assert result.exit_code == 0, result.stdout
    doc = json.loads(result.stdout)
    assert [f["path"] for f in doc["files"]] == ["experiments/e.h5", "models/a.h5"]
    assert "excluded" in result.stderr
    # Everything excluded is not an error: a pre-commit run on excluded files passes.
    assert run("legacy/old.h5").exit_code == 0


# --- baseline --------------------------------------------------------------------------------


def test_repository_gate_with_baseline(repo: Path) -> None:
    """Done-when: a repository with [tool.ckptdoc] and a baseline passes its gate, then fails
    when a new broken checkpoint is added, naming the new one."""
    make.healthy_model(repo / "models" / "good.h5")
    make.broken_model(repo / "models" / "known_bad.h5")
    make.barely_moved_model(repo / "models" / "slow.h5")
    (repo / "pyproject.toml").write_text(
        "[project]\nname = 'demo'\n\n"
        "[tool.ckptdoc]\n"
        'fail-on = "warning"\n'
        'baseline = "ckptdoc-baseline.json"\n'
    )
    # The configured baseline does not exist yet: a usage error that says how to make it.
    first = run("models")
    assert first.exit_code == 2 and "--write-baseline" in first.stderr
    assert run("models", "--isolated").exit_code == 1  # the known problems themselves
    written = run("models", "--write-baseline", "ckptdoc-baseline.json")
    assert written.exit_code == 0
    baseline = json.loads((repo / "ckptdoc-baseline.json").read_text())
    assert {e["path"] for e in baseline["findings"]} == {"models/known_bad.h5", "models/slow.h5"}

    gate = run("models")
    assert gate.exit_code == 0, gate.stdout + gate.stderr
    assert "3 known finding(s) not reported" in gate.stderr

    make.broken_model(repo / "models" / "new_bad.h5", seed=7)
    gate = run("models", "--format", "github")
    assert gate.exit_code == 1
    assert "new_bad.h5" in gate.stdout and "known_bad.h5" not in gate.stdout
    doc = as_json("models")
    bad = [f["path"] for f in doc["files"] if f["findings"]]
    assert bad == ["models/new_bad.h5"]

    # Fixing a known-bad file makes its entries stale: listed, not failing.
    make.healthy_model(repo / "models" / "known_bad.h5")
    (repo / "models" / "new_bad.h5").unlink()
    gate = run("models")
    assert gate.exit_code == 0
    assert "no longer" in gate.stderr and "known_bad.h5" in gate.stderr
    assert as_json("models")["baseline"]["fixed"] == [
        {"rule": "BN002", "path": "models/known_bad.h5", "group": g}
        for g in ("batch_normalization_0", "batch_normalization_1")
    ]


def test_missing_configured_baseline_is_a_usage_error(repo: Path) -> None:
    make.healthy_model(repo / "a.h5")
    (repo / "ckptdoc.toml").write_text('baseline = "nope.json"\n')
    result = run("a.h5")
    assert result.exit_code == 2
    assert "nope.json" in result.stderr


def test_baseline_from_the_command_line(repo: Path) -> None:
    make.broken_model(repo / "b.h5")
    assert run("b.h5", "--write-baseline", "ci/base.json").exit_code == 0
    assert run("b.h5", "--baseline", "ci/base.json").exit_code == 0
    # Paths in the baseline are relative to its folder.
    paths = {e["path"] for e in json.loads((repo / "ci" / "base.json").read_text())["findings"]}
    assert paths == {"../b.h5"}


# --- scale -----------------------------------------------------------------------------------


def test_jobs_gives_the_same_report(repo: Path) -> None:
    """Done-when: --jobs 2 on a folder of 50 checkpoints gives the same report as --jobs 1."""
    for i in range(50):
        sub = repo / "ckpts" / f"group{i % 4}"
        if i % 3 == 0:
            make.broken_model(sub / f"m{i:02d}.h5", seed=i, layers=1)
        elif i == 17:
            make.garbage_file(sub / f"m{i:02d}.h5")
        else:
            make.healthy_model(sub / f"m{i:02d}.h5", seed=i, layers=1)
    one = run("ckpts", "--format", "json", "--jobs", "1")
    two = run("ckpts", "--format", "json", "--jobs", "2")
    assert one.exit_code == two.exit_code == 2
    assert one.stdout == two.stdout
    doc = json.loads(two.stdout)
    assert doc["summary"]["files"] == 50 and doc["summary"]["unreadable"] == 1
    assert [f["path"] for f in doc["files"]] == sorted(f["path"] for f in doc["files"])


def test_an_hdf5_dataset_is_skipped_not_a_failure(tmp_path: Path) -> None:
    # A dataset .h5 beside the models used to be "unreadable", exit 2: the pre-commit hook
    # (every .h5) then blocked the commit. It is read, has no Keras markers: skipped, said.
    import json

    import h5py
    import numpy as np

    from ckptdoc.cli import app
    from tests.ckpt_factory import healthy_model

    healthy_model(tmp_path / "net.h5")
    with h5py.File(tmp_path / "images.h5", "w") as f:
        f["x"] = np.zeros((4, 8, 8), "float32")
    runner = CliRunner()
    res = runner.invoke(app, ["audit", str(tmp_path), "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    skipped = [f for f in doc["files"] if "skipped" in f]
    assert [Path(f["path"]).name for f in skipped] == ["images.h5"]
    assert skipped[0]["skipped"].startswith("not a model")
    assert doc["summary"]["skipped"] == 1 and doc["summary"]["unreadable"] == 0
    res = runner.invoke(app, ["audit", str(tmp_path / "images.h5"), "-v"])
    assert res.exit_code == 0 and "images.h5: skipped, not a model" in res.output
    # a damaged HDF5 file is still a failure
    (tmp_path / "broken.h5").write_bytes((tmp_path / "net.h5").read_bytes()[:900])
    assert runner.invoke(app, ["audit", str(tmp_path / "broken.h5")]).exit_code == 2


def test_color_option_always_and_never(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 25: colours were set only through environment variables.
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    broken = str(Path(__file__).resolve().parent.parent / "sample_ckpts" / "keras3_broken.keras")
    always = CliRunner().invoke(app, ["--color", "always", "audit", broken])
    assert "\x1b[" in always.stdout
    monkeypatch.setenv("FORCE_COLOR", "1")
    never = CliRunner().invoke(app, ["--color", "never", "audit", broken])
    assert "\x1b[" not in never.stdout and "BN002" in never.stdout
    monkeypatch.delenv("FORCE_COLOR")
    auto = CliRunner().invoke(app, ["audit", broken])  # a pipe: plain, the setting not kept
    assert "\x1b[" not in auto.stdout


def test_extend_select_adds_to_the_configured_select(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    broken = str(Path(__file__).resolve().parent.parent / "sample_ckpts" / "keras3_broken.keras")
    config = tmp_path / "ckptdoc.toml"
    config.write_text('select = ["BN001"]\n')
    only = CliRunner().invoke(app, ["audit", broken, "--config", str(config)])
    assert only.exit_code == 0 and "BN002" not in only.stdout
    more = CliRunner().invoke(app, ["audit", broken, "--config", str(config),
                                    "--extend-select", "BN002"])
    assert more.exit_code == 1 and "BN002" in more.stdout


def test_every_configuration_key_has_a_flag(tmp_path: Path) -> None:
    # Issue 25: `--initial-weight`, `--severity` and `--exclude` did not exist.
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    samples = Path(__file__).resolve().parent.parent / "sample_ckpts"
    slim = str(samples / "tf1_slim_decay")
    base = CliRunner().invoke(app, ["audit", slim, "--isolated"])
    assert base.exit_code == 0 and "BN005" in base.stdout  # warnings only
    raised = CliRunner().invoke(app, ["audit", slim, "--isolated", "--severity", "BN005=error"])
    assert raised.exit_code == 1
    loose = CliRunner().invoke(app, ["audit", slim, "--isolated", "--barely-moved", "0.0",
                                     "--initial-weight", "1.0", "--trained-param", "0.5"])
    assert loose.exit_code == 0
    scan = CliRunner().invoke(app, ["audit", str(samples), "--isolated", "--format", "json",
                                    "--exclude", "*/tf1_*", "--exclude", "*keras3*"])
    import json

    paths = [f["path"] for f in json.loads(scan.stdout)["files"]]
    assert paths and not any("tf1_" in p or "keras3" in p for p in paths)
    bad = CliRunner().invoke(app, ["audit", slim, "--severity", "BN005=fatal"])
    assert bad.exit_code == 2 and "error, warning or info" in bad.output

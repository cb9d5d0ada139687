"""Golden-file tests for every report format, from a hand-made AuditReport (no readers).

Regenerate the goldens after an intended change with `CKPTDOC_REGEN_GOLDEN=1 pytest
tests/test_report_formats.py` and review the diff.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ckptdoc.report import github, junit, markdown, sarif
from ckptdoc.report.formats import ReportFormat, render, write_atomic
from ckptdoc.report.model import (
    AuditReport,
    BaselineEntry,
    BaselineOutcome,
    FileReport,
    GroupResult,
    RenderOptions,
)
from ckptdoc.rules import RULES, Finding, Severity

GOLDEN = Path(__file__).parent / "golden"
SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
REGEN = os.environ.get("CKPTDOC_REGEN_GOLDEN") == "1"

MEMBERS = {"gamma": "g", "beta": "b", "moving_mean": "m", "moving_variance": "v"}


def sample_report(baseline: bool = False) -> AuditReport:
    """Four files: clean, broken (error + warning + info), no BN layers, unreadable."""
    bn002 = Finding(
        "BN002",
        Severity.ERROR,
        "block1/bn",
        "moving_mean is all 0 and moving_variance all 1 while gamma and beta were trained",
        {"trained": ["gamma", "beta"]},
    )
    bn005 = Finding(
        "BN005",
        Severity.WARNING,
        "block2/bn",
        "moving stats within 0.01 of their initial 0 / 1 (max |mean| 0.01)",
        {"max_abs_mean": 0.01},
    )
    bn006 = Finding(
        "BN006",
        Severity.INFO,
        "block2/bn",
        "1 of 4 channels have variance <= 1e-06 (min 0): dead units upstream",
        {"dead_channels": 1, "channels": 4},
    )
    files = (
        FileReport(
            "models/healthy.h5",
            "keras2-h5",
            (GroupResult("bn_1", "ok", 8, MEMBERS), GroupResult("bn_2", "ok", 8, MEMBERS)),
        ),
        FileReport(
            "models/run 7/model.ckpt",
            "tf1-bundle",
            (
                GroupResult("block1/bn", "BN002", 4, MEMBERS),
                GroupResult("block2/bn", "BN005", 4, MEMBERS),
            ),
            (bn002, bn005, bn006),
            None,
            ("checkpoint file names another machine's path",),
        ),
        FileReport("models/no_bn.keras", "keras3-zip"),
        FileReport(
            "models/corrupt.h5",
            None,
            error="models/corrupt.h5: truncated: 50% of <data> missing, a,b:c\nsecond line",
        ),
    )
    outcome = None
    if baseline:
        gone = BaselineEntry("BN001", "models/old.h5", "bn", "error", "moving statistics missing")
        outcome = BaselineOutcome("ckptdoc-baseline.json", 2, (gone,))
    return AuditReport(files, outcome)


def check_golden(name: str, content: str) -> None:
    path = GOLDEN / name
    if REGEN or not path.exists():
        if not REGEN and os.environ.get("CI"):
            pytest.fail(f"golden file {path} is missing")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    assert content == path.read_text(encoding="utf-8"), (
        f"{name} differs from its golden file; if intended, regenerate with "
        "CKPTDOC_REGEN_GOLDEN=1 and review the diff"
    )


OPTIONS = RenderOptions(root=Path.cwd())


@pytest.mark.parametrize(
    ("fmt", "golden", "baseline"),
    [
        (ReportFormat.sarif, "report.sarif", False),
        (ReportFormat.junit, "report.junit.xml", False),
        (ReportFormat.github, "report.github.txt", False),
        (ReportFormat.markdown, "report.md", False),
        (ReportFormat.markdown, "report.baseline.md", True),
        (ReportFormat.json, "report.json", False),
        (ReportFormat.json, "report.baseline.json", True),
        (ReportFormat.gitlab, "report.gitlab.json", False),
    ],
)
def test_golden(fmt: ReportFormat, golden: str, baseline: bool) -> None:
    check_golden(golden, render(fmt, sample_report(baseline), OPTIONS))


def test_text_renders_without_error() -> None:
    out = render(ReportFormat.text, sample_report(), OPTIONS)
    assert "block1/bn" in out and "BN002" in out
    assert "Summary: 4 files, 4 BN layers, 1 errors, 1 warnings, 1 info, 1 unreadable" in out


# --- SARIF -----------------------------------------------------------------------------------


def _validator():  # type: ignore[no-untyped-def]
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    if "properties" not in schema and "Root" in schema.get("definitions", {}):
        # This copy of the schema keeps the log's shape in definitions/Root and has no root
        # constraint of its own: as-is it would accept anything.
        schema = {**schema, "allOf": [{"$ref": "#/definitions/Root"}]}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_sarif_validates_against_2_1_0_schema() -> None:
    doc = sarif.to_dict(sample_report(), OPTIONS)
    errors = sorted(_validator().iter_errors(doc), key=str)
    assert not errors, "\n".join(str(e) for e in errors[:5])


def test_sarif_validator_rejects_a_broken_document() -> None:
    # Guard against a validator that accepts anything.
    doc = sarif.to_dict(sample_report(), OPTIONS)
    doc["runs"][0]["results"][0]["level"] = "fatal"
    assert list(_validator().iter_errors(doc))


def test_sarif_content() -> None:
    doc = sarif.to_dict(sample_report(), OPTIONS)
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    # No link that does not resolve (issue 25): the project has no published home page yet.
    assert driver["name"] == "ckptdoc" and "informationUri" not in driver
    assert all("helpUri" not in r for r in driver["rules"])
    ids = [r["id"] for r in driver["rules"]]
    assert ids == list(RULES)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert rule["help"]["text"] and rule["help"]["markdown"]
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
    results = run["results"]
    assert [(r["ruleId"], r["level"]) for r in results] == [
        ("BN002", "error"),
        ("BN005", "warning"),
        ("BN006", "note"),
    ]
    for r in results:
        assert ids[r["ruleIndex"]] == r["ruleId"]
        loc = r["locations"][0]
        assert loc["physicalLocation"]["artifactLocation"]["uri"] == "models/run%207/model.ckpt"
        # A binary file has no lines, but GitHub shows only results with a startLine.
        assert loc["physicalLocation"]["region"] == {"startLine": 1}
        assert loc["logicalLocations"][0]["name"] == r["message"]["text"].split(":")[0]
    fps = [r["partialFingerprints"]["ckptdocFinding/v1"] for r in results]
    assert len(set(fps)) == 3
    assert fps[0] == sarif.fingerprint("BN002", "models/run 7/model.ckpt", "block1/bn")
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error" and "truncated" in note["message"]["text"]


def test_sarif_paths_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    report = AuditReport((FileReport(str(tmp_path / "sub" / "m.h5"), "keras2-h5"),))
    doc = sarif.to_dict(report, RenderOptions(root=tmp_path))
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is True
    clean = AuditReport(
        (
            FileReport(
                str(tmp_path / "sub" / "m.h5"),
                "keras2-h5",
                findings=(Finding("BN004", Severity.ERROR, "bn", "negative"),),
            ),
        )
    )
    doc = sarif.to_dict(clean, RenderOptions(root=tmp_path))
    uri = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri == {"uri": "sub/m.h5", "uriBaseId": "%SRCROOT%"}


def test_sarif_fingerprint_ignores_message_and_values() -> None:
    a = sample_report()
    f = a.files[1].findings[0]
    changed = Finding(f.rule, f.severity, f.group, "a different message", {"x": 1})
    b = AuditReport((FileReport(a.files[1].path, "tf1-bundle", findings=(changed,)),))
    fa = sarif.to_dict(a, OPTIONS)["runs"][0]["results"][0]["partialFingerprints"]
    fb = sarif.to_dict(b, OPTIONS)["runs"][0]["results"][0]["partialFingerprints"]
    assert fa == fb


# --- JUnit -----------------------------------------------------------------------------------


def test_junit_counts() -> None:
    root = ET.fromstring(junit.render(sample_report(), OPTIONS))
    assert root.tag == "testsuites"
    # healthy: 2 layers; broken: 2 layers; no_bn: 1 passing case; corrupt: 1 error
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "1", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [
        "models/healthy.h5",
        "models/run 7/model.ckpt",
        "models/no_bn.keras",
        "models/corrupt.h5",
    ]
    counts = [(s.get("tests"), s.get("failures"), s.get("errors")) for s in suites]
    assert counts == [("2", "0", "0"), ("2", "1", "0"), ("1", "0", "0"), ("1", "0", "1")]
    broken = suites[1].findall("testcase")
    assert [c.get("name") for c in broken] == ["block1/bn", "block2/bn"]
    failure = broken[0].find("failure")
    assert failure is not None and failure.get("type") == "BN002"
    # Below --fail-on (error): the warning and the info are output, not failures.
    assert broken[1].find("failure") is None
    assert "BN005" in (broken[1].findtext("system-out") or "")
    assert suites[2].find("testcase").get("name") == junit.NO_GROUPS  # type: ignore[union-attr]
    assert suites[3].find("testcase/error") is not None


def test_junit_failures_follow_fail_on() -> None:
    options = RenderOptions(root=Path.cwd(), fail_on=Severity.WARNING)
    root = ET.fromstring(junit.render(sample_report(), options))
    assert root.get("failures") == "2"
    case = root.findall("testsuite")[1].findall("testcase")[1]
    failure = case.find("failure")
    assert failure is not None and failure.get("type") == "BN005"
    assert "BN006" in (case.findtext("system-out") or "")


# --- GitHub ----------------------------------------------------------------------------------


def test_github_annotations() -> None:
    lines = github.render(sample_report(), OPTIONS).splitlines()
    where = "file=models/run 7/model.ckpt,title=ckptdoc"
    assert lines[0].startswith(f"::error {where} BN002::block1/bn: ")
    assert lines[1].startswith("::warning file=models/run 7/model.ckpt,title=ckptdoc BN005::")
    assert lines[2].startswith("::notice file=models/run 7/model.ckpt,title=ckptdoc BN006::")
    # One line per annotation even when the message has a newline; % escaped first.
    assert lines[3] == (
        "::error file=models/corrupt.h5,title=ckptdoc read error::models/corrupt.h5: truncated: "
        "50%25 of <data> missing, a,b:c%0Asecond line"
    )
    assert len(lines) == 4


def test_github_escapes_properties() -> None:
    assert github.escape_property("a,b:c%\n") == "a%2Cb%3Ac%25%0A"
    assert github.escape_data("a,b:c%\r\n") == "a,b:c%25%0D%0A"


# --- Markdown --------------------------------------------------------------------------------


def test_markdown_summary() -> None:
    md = markdown.render(sample_report(), OPTIONS)
    assert md.startswith("## ckptdoc audit: ❌ failed")
    row = "| ❌ | `models/run 7/model.ckpt` | tf1-bundle | 2 | 1 × BN002, 1 × BN005, 1 × BN006 |"
    assert row in md
    assert "max \\|mean\\| 0\\.01" in md  # pipes in messages do not break the table
    clean = AuditReport((sample_report().files[0],))
    assert markdown.render(clean, OPTIONS).startswith("## ckptdoc audit: ✅ passed")


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "r.sarif"
    write_atomic(dest, "one")
    write_atomic(dest, "two")
    assert dest.read_text() == "two"
    assert [p.name for p in dest.parent.iterdir()] == ["r.sarif"]


@pytest.mark.parametrize(("detail", "golden"), [("concise", "samples.txt"),
                                                ("full", "samples.verbose.txt")])
def test_text_report_golden_from_real_rule_output(
    detail: str, golden: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wording users read, locked from real readers and rules on the shipped samples (not
    # a hand-made report): any change to a message, hint or layout shows up in review.
    import io

    from rich.console import Console

    import ckptdoc
    from ckptdoc.report import text

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    report = ckptdoc.audit("sample_ckpts", config=False)
    buf = io.StringIO()
    text.render(report, Console(file=buf, width=160, no_color=True, highlight=False),
                text.Detail(detail))
    check_golden(golden, buf.getvalue())


def test_gitlab_code_quality_fields() -> None:
    # GitLab's documented minimum: description, check_name, fingerprint, severity,
    # location.path, location.lines.begin; one issue per finding and per unreadable file.
    from ckptdoc.report import gitlab

    report = sample_report()
    issues = gitlab.to_list(report, OPTIONS)
    assert len(issues) == sum(len(f.findings) + (f.error is not None) for f in report.files)
    for issue in issues:
        assert {"description", "check_name", "fingerprint", "severity", "location"} <= set(issue)
        assert issue["severity"] in {"info", "minor", "major", "critical", "blocker"}
        assert issue["location"]["lines"]["begin"] == 1 and issue["location"]["path"]
    assert len({i["fingerprint"] for i in issues}) == len(issues)


def test_sarif_meets_github_code_scanning_requirements() -> None:
    # sarif-sdk's GitHub rules: every result has a location with a relative artifact URI and
    # a region.startLine >= 1 (GH1001, GH1003, GH1005), a message text (GH1007), a ruleId in
    # the driver's rules, and a partialFingerprints entry.
    doc = json.loads(sarif.render(sample_report(), OPTIONS))
    (run,) = doc["runs"]
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert run["results"]
    for result in run["results"]:
        assert result["ruleId"] in rule_ids and result["message"]["text"]
        assert result["partialFingerprints"]
        for loc in result["locations"]:
            phys = loc["physicalLocation"]
            assert phys["region"]["startLine"] >= 1
            uri = phys["artifactLocation"]["uri"]
            assert uri and "://" not in uri and not uri.startswith("/")

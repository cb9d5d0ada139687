"""The CI gate's output: concise by default, readable in logs, exit codes that never lie, and
names from strangers' files rendered safely in every format."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ckptdoc.cli import app
from ckptdoc.report import github, junit, markdown, sarif, text
from ckptdoc.report.json_report import render as render_json
from ckptdoc.report.model import AuditReport, FileReport, GroupResult
from ckptdoc.rules import Finding, Severity

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
CKPTDOC = [sys.executable, "-m", "ckptdoc"]

# Clear screen, a fake "ALL OK", a hyperlink, a bell, a bidi override, raw HTML.
HOSTILE = (
    "bn\x1b[2J\x1b[32mALL OK\x1b[0m\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\\x07"
    "\u202eevil<script>alert(1)</script>"
)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


# --------------------------------------------------------------------------- volume


def test_clean_files_are_one_line_each() -> None:
    code, out = _cli("audit", str(SAMPLES / "keras3_healthy.keras"),
                     str(SAMPLES / "tf2_healthy"))
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 3  # two files, the summary
    assert lines[0].startswith("✓ ") and "keras3_healthy.keras" in lines[0]
    assert lines[-1].startswith("Summary: 2 files")


def test_findings_show_only_the_layers_that_have_them() -> None:
    code, out = _cli("audit", str(SAMPLES / "tf1_nan"))
    assert code == 1
    assert "batch_normalization_1" in out and "BN004" in out
    assert "batch_normalization_2 " not in out  # the healthy layer is not a row
    assert "1 other BN layer ok" in out
    code, full = _cli("audit", str(SAMPLES / "tf1_nan"), "--verbose")
    assert code == 1 and "batch_normalization_2 " in full and "other BN layer" not in full


def test_quiet_prints_the_summary_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    code, out = _cli("audit", str(SAMPLES / "tf1_nan"), str(bad), "--quiet")
    assert code == 2
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "bad.h5" in lines[0] and lines[1].startswith("Summary: 2 files")
    assert _cli("audit", str(SAMPLES), "-q", "-v")[0] == 2


# --------------------------------------------------------------------------- logs


def test_piped_output_is_rendered_for_logs() -> None:
    long_dir = "a-rather-long-folder-name-as-ci-runners-make-them/" * 2
    env = {**os.environ, "COLUMNS": ""}
    env.pop("COLUMNS")
    out = subprocess.run([*CKPTDOC, "audit", str(SAMPLES / "tf1_nan"), "--verbose"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 1
    table = [line for line in out.stdout.splitlines() if line and line[0] in "┏┃┡│└"]
    assert table and all(line[-1] in "┓┃┩│┘" for line in table)  # right border kept
    assert len(long_dir) < 160


# --------------------------------------------------------------------------- exit codes


def _closed_pipe(*args: str) -> int:
    proc = subprocess.Popen([*CKPTDOC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line (`| head -0`)
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()[-2000:]
    return proc.returncode


def test_a_closed_pipe_keeps_the_exit_code() -> None:
    assert _closed_pipe("audit", str(SAMPLES / "keras3_healthy.keras"), "-v") == 0
    assert _closed_pipe("audit", str(SAMPLES / "tf1_nan"), "-v") == 1
    assert _closed_pipe("audit", str(SAMPLES / "tf1_nan"), "--format", "json") == 1


def test_an_ascii_only_output_still_follows_the_contract(tmp_path: Path) -> None:
    bad = tmp_path / "ünreadable.h5"
    bad.write_bytes(b"not hdf5 at all")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    out = subprocess.run([*CKPTDOC, "audit", str(bad), str(SAMPLES / "tf1_nan")],
                         capture_output=True, env=env, cwd=ROOT)
    assert out.returncode == 2
    assert b"Traceback" not in out.stderr
    out.stdout.decode("ascii")  # nothing that an ASCII console cannot show
    assert b"x " in out.stdout and b"\\xfcnreadable.h5" in out.stdout


# --------------------------------------------------------------------------- untrusted names


def _hostile_report() -> AuditReport:
    finding = Finding("BN002", Severity.ERROR, HOSTILE, f"{HOSTILE} is stuck", {}, HOSTILE)
    return AuditReport((
        FileReport(f"models/{HOSTILE}.h5", "keras2-h5",
                   (GroupResult(HOSTILE, "BN002", 4, {"gamma": "g"}),), (finding,),
                   notes=(f"note about {HOSTILE}",)),
        FileReport(f"models/{HOSTILE}2.h5", None, error=f"models/{HOSTILE}2.h5: broken"),
    ))


def test_text_never_sends_control_characters_to_the_terminal() -> None:
    buf = io.StringIO()
    for detail in text.Detail:
        text.render(_hostile_report(), Console(file=buf, width=200, force_terminal=False),
                    detail)
    out = buf.getvalue()
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out  # shown, not hidden


def test_junit_stays_valid_xml() -> None:
    xml = junit.render(_hostile_report())
    root = ET.fromstring(xml)  # raises on control characters
    assert "\x1b" not in xml
    assert any("\\x1b" in (case.get("name") or "") for case in root.iter("testcase"))


def test_markdown_has_no_raw_html_or_escapes() -> None:
    md = markdown.render(_hostile_report())
    assert "\x1b" not in md and "\u202e" not in md
    outside_code = re.sub(r"`[^`]*`", "", md)  # code spans render no HTML
    assert "<script>" not in outside_code
    assert "&lt;script&gt;" in outside_code


@pytest.mark.parametrize("name", [
    "a`|[x](http://e.vil)|b",  # a backtick and pipes made this a live link (issue 22 §3)
    "``[x](http://e.vil)``",
    "see http://e.vil and www.e.vil ![i](http://e.vil/i.png)",
    "*bold* _em_ <b>x</b> ~~s~~",
])
def test_markdown_renders_names_inert(name: str) -> None:
    # Rendered with a CommonMark + GFM-tables parser: no link, image, emphasis or HTML comes
    # from a name, in a name cell or in a message quoting it, and every row keeps its cells.
    from markdown_it import MarkdownIt

    finding = Finding("BN002", Severity.ERROR, name, f"{name} is stuck", {}, name)
    report = AuditReport((FileReport(f"models/{name}.h5", "keras2-h5",
                                     (GroupResult(name, "BN002", 4, {"gamma": "g"}),),
                                     (finding,)),))
    html = MarkdownIt("gfm-like", {"linkify": False}).enable("table").render(
        markdown.render(report))
    assert "<a " not in html and "<img" not in html and "<em>" not in html
    assert "<strong>bold" not in html
    assert "<b>" not in html and "<s>" not in html
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        assert row.count("<td") + row.count("<th") == 5, row
    # Bare URLs, which GitHub links without any markup, are split by an escape.
    text_md = re.sub(r"(`+).*?\1", "", markdown.render(report))
    assert "http://" not in text_md and "www." not in text_md


def test_a_huge_name_is_cut_in_every_report_for_people() -> None:
    # A 10 MB layer name took 25 s and 35 MB of log in the text report (issue 22 §3).
    name = "x" * 10_000_000
    finding = Finding("BN002", Severity.ERROR, name, f"{name} is stuck", {}, name)
    report = AuditReport((FileReport("m.h5", "keras2-h5",
                                     (GroupResult(name, "BN002", 4, {"gamma": "g"}),),
                                     (finding,), notes=(f"note {name}",)),))
    buf = io.StringIO()
    text.render(report, Console(file=buf, width=200, force_terminal=False), text.Detail.full)
    for out in (buf.getvalue(), markdown.render(report), github.render(report),
                junit.render(report)):
        assert len(out) < 40_000
        assert "more characters]" in out
    assert json.loads(render_json(report))["files"][0]["groups"][0]["name"] == name  # data


def test_github_annotations_are_one_clean_line_each() -> None:
    out = github.render(_hostile_report())
    assert "\x1b" not in out and "\x07" not in out
    assert all(line.startswith("::") for line in out.splitlines())


def test_json_and_sarif_escape_by_construction() -> None:
    content = render_json(_hostile_report())
    assert "\x1b" not in content
    assert json.loads(content)["files"][0]["groups"][0]["name"] == HOSTILE  # data intact
    content = sarif.render(_hostile_report())
    assert "\x1b" not in content
    assert HOSTILE in json.loads(content)["runs"][0]["results"][0]["message"]["text"]


def test_end_to_end_hostile_layer_name(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    shutil.copy(SAMPLES / "keras2_no_training_flag.h5", path)
    name = "bn\x1b[2Jevil"
    with h5py.File(path, "r+") as f:
        root = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else n for n in root.attrs["layer_names"]]
        old = "batch_normalization"
        root.move(old, name)
        root.attrs["layer_names"] = np.array([(name if n == old else n).encode()
                                              for n in names])
    out = subprocess.run([*CKPTDOC, "audit", str(path)], capture_output=True, cwd=ROOT)
    assert out.returncode == 1
    assert b"\x1b" not in out.stdout and b"bn\\x1b[2Jevil" in out.stdout

"""The GitHub Action's audit step (action.yml), run by bash as the runner would: paths are
globbed (`**` included) while args are not, and the step reports ckptdoc's exit code.
Issue 25: `set -f` kept `models/*.h5` from expanding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _audit_step() -> str:
    text = (ROOT / "action.yml").read_text()
    step = text.split("- name: Audit checkpoints", 1)[1].split("\n    - name:", 1)[0]
    script = step.split("run: |\n", 1)[1]
    return textwrap.dedent(script)


def test_the_audit_step_globs_paths_not_args(tmp_path: Path) -> None:
    runner = tmp_path / "runner"
    bin_dir = runner / "ckptdoc-venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "ckptdoc"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m ckptdoc \"$@\"\n")
    shim.chmod(0o755)
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    env = dict(os.environ, RUNNER_TEMP=str(runner), GITHUB_STEP_SUMMARY=str(summary),
               GITHUB_OUTPUT=str(output), CKPTDOC_PATHS="sample_ckpts/**/*.keras",
               CKPTDOC_ARGS=f"--isolated --report json={tmp_path}/out*.json", CKPTDOC_SARIF="")
    (tmp_path / "out1.json").write_text("")  # a glob of the arg would have matched this
    result = subprocess.run(["bash", "-e", "-c", _audit_step()], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    # The glob found both .keras samples; the arg's `*` reached ckptdoc as written.
    assert (tmp_path / "out*.json").is_file() and (tmp_path / "out1.json").read_text() == ""
    assert "keras3_broken.keras" in summary.read_text()
    assert "keras3_healthy.keras" in summary.read_text()
    assert output.read_text().strip() == "exit-code=1"

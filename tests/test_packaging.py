"""Packaging: metadata a package index and type checkers read, CLI aliases, and an sdist that
carries (and passes) its own tests."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


def test_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # SPDX expression, not the deprecated table
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert "Typing :: Typed" in project["classifiers"]
    assert not any(c.startswith("License ::") for c in project["classifiers"])
    assert (ROOT / "ckptdoc" / "py.typed").is_file()


def test_help_and_version_aliases() -> None:
    from ckptdoc import __version__
    from ckptdoc.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["-V"]).output.strip() == f"ckptdoc {__version__}"
    for args in (["-h"], ["audit", "-h"], ["ls", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, args
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0 and "_ckptdoc_completion" in result.output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs `build`")
def test_sdist_runs_its_own_tests(tmp_path: Path) -> None:
    # Built in an isolated environment (fetches setuptools), unpacked, and a few test files
    # run from the unpacked tree: the sdist must carry tests, samples and test data. (They run
    # against the installed ckptdoc, which an editable install maps to the working tree.)
    out = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path),
                          str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    [sdist] = tmp_path.glob("ckptdoc-*.tar.gz")
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    tree = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert (tree / "ckptdoc" / "py.typed").is_file()
    assert (tree / "LICENSE").is_file()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_samples.py", "tests/test_real_models.py", "tests/test_evidence.py",
         "-m", "not tf"],
        cwd=tree, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout[-3000:]

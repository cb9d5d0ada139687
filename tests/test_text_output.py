"""Human output prints names from files literally: a layer or path is data, never Rich markup."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ckptdoc.cli import app
from tests.ckpt_factory import never_updated_stats, write_keras2_weights

NAME = "bn[bold]x:warning:"  # "/" would nest HDF5 groups


def test_layer_names_and_paths_with_markup_are_printed_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "run [red]1"
    folder.mkdir()
    path = write_keras2_weights(folder / "model.h5", {NAME: never_updated_stats(4)})
    runner = CliRunner()
    audit = runner.invoke(app, ["audit", str(path)], env={"COLUMNS": "300"})
    assert audit.exit_code == 1, audit.output
    assert NAME in audit.stdout and "BN002" in audit.stdout
    assert "run [red]1" in audit.stdout
    listing = runner.invoke(app, ["ls", str(path)], env={"COLUMNS": "300"})
    assert listing.exit_code == 0, listing.output
    assert NAME in listing.stdout
    missing = runner.invoke(app, ["ls", str(folder / "[nope].h5")])
    assert missing.exit_code == 2 and "[nope].h5" in missing.output

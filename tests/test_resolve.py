"""Path resolution: every way a user names a checkpoint, and every way that goes wrong."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptdoc.errors import NotFoundError, UnsupportedFormatError
from ckptdoc.formats.resolve import find_checkpoints, resolve

DATA = Path(__file__).parent / "data" / "bundle"
REAL = Path(__file__).parent / "data" / "real" / "basic-pitch" / "nmp"
TF1 = DATA / "tf1_bn"


@pytest.mark.parametrize(
    "given",
    [
        "model.ckpt",
        "model.ckpt.index",
        "model.ckpt.data-00000-of-00001",
    ],
)
def test_bundle_forms(given: str) -> None:
    r = resolve(TF1 / given)
    assert (r.kind, r.path, r.notes) == ("bundle", TF1 / "model.ckpt", ())


def test_meta_file(tmp_path: Path) -> None:
    shutil.copytree(TF1, tmp_path / "c")
    (tmp_path / "c" / "model.ckpt.meta").write_bytes(b"\x0a\x00")
    assert resolve(tmp_path / "c" / "model.ckpt.meta").path == tmp_path / "c" / "model.ckpt"
    (tmp_path / "c" / "other.meta").write_bytes(b"")
    with pytest.raises(NotFoundError, match="index"):
        resolve(tmp_path / "c" / "other.meta")


def test_sharded_data_file() -> None:
    r = resolve(DATA / "tf1_sharded" / "model.ckpt.data-00001-of-00002")
    assert r.path == DATA / "tf1_sharded" / "model.ckpt"


def test_empty_prefix_forms() -> None:
    d = DATA / "empty_prefix"
    for given in (d, d / ".index", d / ".data-00000-of-00001"):
        r = resolve(given)
        assert (r.kind, r.path) == ("bundle", d)


def test_state_file_from_another_machine_falls_back_to_basename() -> None:
    r = resolve(TF1)
    assert r.path == TF1 / "model.ckpt"
    assert len(r.notes) == 1 and "/home/someone/run42/model.ckpt" in r.notes[0]


def test_state_file_relative_path(tmp_path: Path) -> None:
    shutil.copytree(DATA / "tfkeras_save_weights", tmp_path / "w")
    r = resolve(tmp_path / "w")
    assert (r.path, r.notes) == (tmp_path / "w" / "weights.ckpt", ())


def test_state_file_pointing_nowhere_uses_newest_index(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    for step, mtime in (("100", 1000), ("200", 3000), ("300", 2000)):
        for suffix in (".index", ".data-00000-of-00001"):
            p = d / f"model.ckpt-{step}{suffix}"
            p.write_bytes(b"x")
            os.utime(p, (mtime, mtime))
    (d / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt-999"\n')
    r = resolve(d)
    assert r.path == d / "model.ckpt-200"
    assert any("model.ckpt-999" in n for n in r.notes)
    assert any("newest" in n for n in r.notes)


def test_directory_without_state_file(tmp_path: Path) -> None:
    shutil.copytree(DATA / "tf2_keras3", tmp_path / "k")
    assert resolve(tmp_path / "k").path == tmp_path / "k" / "ckpt"


def test_savedmodel_dir() -> None:
    r = resolve(REAL)
    assert (r.kind, r.path) == ("savedmodel", REAL / "variables" / "variables")


def test_savedmodel_without_variables(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(NotFoundError, match="variables"):
        resolve(tmp_path)


def test_keras_files_by_extension_and_magic(tmp_path: Path) -> None:
    (tmp_path / "a.h5").write_bytes(b"")
    (tmp_path / "b.weights.h5").write_bytes(b"")
    (tmp_path / "c.hdf5").write_bytes(b"")
    (tmp_path / "d.keras").write_bytes(b"")
    (tmp_path / "e.bin").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 8)
    (tmp_path / "f.bin").write_bytes(b"PK\x03\x04rest")
    kinds = {
        p: resolve(tmp_path / p).kind
        for p in ("a.h5", "b.weights.h5", "c.hdf5", "d.keras", "e.bin", "f.bin")
    }
    assert kinds == {
        "a.h5": "hdf5",
        "b.weights.h5": "hdf5",
        "c.hdf5": "hdf5",
        "d.keras": "keras-zip",
        "e.bin": "hdf5",
        "f.bin": "keras-zip",
    }


def test_missing_and_unrecognised(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such"):
        resolve(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="expected a TensorFlow checkpoint"):
        resolve(tmp_path / "notes.txt")
    with pytest.raises(UnsupportedFormatError, match=r"\.keras"):
        resolve(tmp_path)  # a folder with no checkpoint in it


def test_data_shard_without_index(tmp_path: Path) -> None:
    (tmp_path / "m.ckpt.data-00000-of-00001").write_bytes(b"x")
    with pytest.raises(NotFoundError, match="index"):
        resolve(tmp_path / "m.ckpt.data-00000-of-00001")
    with pytest.raises(NotFoundError, match="index"):
        resolve(tmp_path / "m.ckpt")


def test_find_checkpoints_lists_each_once() -> None:
    found = find_checkpoints(DATA)
    assert found == sorted(
        [
            DATA / "empty_prefix" / ".index",
            DATA / "keras3_export" / "model",
            DATA / "savedmodel" / "model",
            DATA / "tf1_bn" / "model.ckpt",
            DATA / "tf1_sharded" / "model.ckpt",  # two shards, one checkpoint
            DATA / "tf2_keras3" / "ckpt",
            DATA / "tfkeras_model_save" / "model",
            DATA / "tfkeras_object" / "ckpt",
            DATA / "tfkeras_save_weights" / "weights.ckpt",
        ]
    )
    for p in found:
        resolve(p)  # every listed path resolves


def test_find_checkpoints_keras_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.keras").write_bytes(b"PK\x03\x04")
    (tmp_path / "w.weights.h5").write_bytes(b"")
    (tmp_path / "readme.md").write_text("x")
    assert find_checkpoints(tmp_path) == [tmp_path / "sub" / "m.keras", tmp_path / "w.weights.h5"]


def test_legacy_v1_single_file_checkpoint_is_named(tmp_path: Path) -> None:
    from tests import bundle_writer as bw

    (tmp_path / "model.ckpt-1000").write_bytes(bw.table([(b"global_step", b"\x08\x01")]))
    with pytest.raises(UnsupportedFormatError, match="V1 checkpoint"):
        resolve(tmp_path / "model.ckpt-1000")


def test_folder_scans_skip_what_is_not_the_users(tmp_path: Path) -> None:
    # h5py's test files inside a virtualenv failed the gate (exit 2) on `ckptdoc audit .`.
    from tests.ckpt_factory import healthy_model

    healthy_model(tmp_path / "models" / "net.h5")
    for folder in (".git/objects", "node_modules/pkg", "env/lib/python3.11/site-packages/h5py",
                   "__pycache__", ".tox/py311"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "data.h5").write_bytes(b"\x89HDF\r\n\x1a\nnot a model")
    (tmp_path / "myenv").mkdir()
    (tmp_path / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "myenv" / "x.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    assert find_checkpoints(tmp_path) == [tmp_path / "models" / "net.h5"]
    # a skipped folder given explicitly is still searched
    assert find_checkpoints(tmp_path / "node_modules") == [tmp_path / "node_modules/pkg/data.h5"]


def _run_with_state(tmp_path: Path, recorded: str, own: bool) -> Path:
    """`tmp_path/run` whose `checkpoint` file records `recorded`; `tmp_path/elsewhere` holds
    a checkpoint; `run` holds one of its own when `own`."""
    shutil.copytree(TF1, tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "checkpoint").unlink(missing_ok=True)
    run = tmp_path / "run"
    if own:
        shutil.copytree(TF1, run)
    else:
        run.mkdir()
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{recorded}"\n')
    return run


@pytest.mark.parametrize("recorded", ["../elsewhere/model.ckpt", "{tmp}/elsewhere/model.ckpt"])
def test_state_file_pointing_outside_its_folder_is_not_followed(
    tmp_path: Path, recorded: str
) -> None:
    # Issue 22 §5: `../elsewhere/model.ckpt` silently sent ls and recalibrate (and its
    # default output) there.
    recorded = recorded.format(tmp=tmp_path)
    r = resolve(_run_with_state(tmp_path, recorded, own=True))
    assert r.path == tmp_path / "run" / "model.ckpt"
    assert "points outside this folder and is not followed" in r.notes[0]
    other = tmp_path / "b"
    with pytest.raises(UnsupportedFormatError, match="points outside this folder"):
        resolve(_run_with_state(other, recorded.replace(str(tmp_path), str(other)), own=False))


def test_ls_says_the_state_file_was_not_followed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    run = _run_with_state(tmp_path, "../elsewhere/model.ckpt", own=False)
    result = CliRunner().invoke(app, ["ls", str(run)])
    assert result.exit_code == 2
    assert "points outside this folder" in result.output and "Traceback" not in result.output

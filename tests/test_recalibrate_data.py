"""Data sources and budgets for recalibration, without TensorFlow."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ckptdoc.recalibrate.cli import parse_image_size
from ckptdoc.recalibrate.data import Budget, Consumed, from_path, limited, to_batch
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.targets.keras_file import default_output


def _all(source, batch_size, budget=None):  # type: ignore[no-untyped-def]
    consumed = Consumed()
    out = list(limited(source.batches(batch_size), budget or Budget(None, None), consumed))
    return out, consumed


def test_npz_uncompressed_is_memory_mapped_and_batched(tmp_path: Path) -> None:
    x = np.arange(50 * 3, dtype=np.float64).reshape(50, 3)
    y = np.arange(50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    src = from_path(str(tmp_path / "d.npz"))
    batches, consumed = _all(src, 16)
    assert [b.size for b in batches] == [16, 16, 16, 2]
    assert batches[0].x.dtype == np.float32  # float64 inputs are given to Keras as float32
    np.testing.assert_array_equal(np.concatenate([b.y for b in batches]), y)
    assert consumed.exhausted and consumed.samples == 50
    from ckptdoc.recalibrate.data import _npz_member

    assert isinstance(_npz_member(tmp_path / "d.npz", "x"), np.memmap)


def test_npz_compressed_and_custom_keys(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "d.npz", images=np.ones((5, 2)), labels=np.zeros(5))
    with pytest.raises(RecalibrationError, match="--x-key"):
        from_path(str(tmp_path / "d.npz"))
    batches, _ = _all(from_path(str(tmp_path / "d.npz"), x_key="images", y_key="labels"), 4)
    assert [b.size for b in batches] == [4, 1] and batches[0].y is not None


def test_budget_cuts_the_last_batch_exactly(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((100, 2), np.float32))
    src = from_path(str(tmp_path / "x.npy"))
    batches, consumed = _all(src, 32, Budget(samples=70))
    assert [b.size for b in batches] == [32, 32, 6] and not consumed.exhausted
    batches, consumed = _all(src, 32, Budget(samples=None, batches=2))
    assert consumed.samples == 64 and not consumed.exhausted
    batches, consumed = _all(src, 32, Budget(samples=1000))
    assert consumed.samples == 100 and consumed.exhausted


def test_npy_folder_with_labels_and_chunk_folder(tmp_path: Path) -> None:
    (tmp_path / "xy").mkdir()
    np.save(tmp_path / "xy" / "x.npy", np.ones((9, 2), np.float32))
    np.save(tmp_path / "xy" / "y.npy", np.arange(9))
    batches, _ = _all(from_path(str(tmp_path / "xy")), 4)
    assert sum(b.size for b in batches) == 9 and batches[-1].y.tolist() == [8]
    (tmp_path / "chunks").mkdir()
    for i in range(3):
        np.save(tmp_path / "chunks" / f"part{i}.npy", np.full((5, 2), i, np.float32))
    batches, _ = _all(from_path(str(tmp_path / "chunks")), 4)
    assert sum(b.size for b in batches) == 15 and all(b.y is None for b in batches)


def test_module_function_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    for i in range(3):\n"
        "        yield np.full((4, 2), i, np.float32), np.zeros(4)\n"
        "def multi():\n"
        "    return [{'a': np.ones((2, 1)), 'b': np.zeros((2, 3))}]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    batches, _ = _all(from_path("mydata:batches"), 99)
    assert len(batches) == 3 and batches[0].y is not None
    batches, _ = _all(from_path(f"{tmp_path / 'mydata.py'}:multi"), 99)
    assert set(batches[0].x) == {"a", "b"} and batches[0].size == 2
    sys.modules.pop("mydata", None)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope_missing_mod:f", "importing"),
        ("os:not_there", "no function"),
        ("/no/such.npz", "no such"),
    ],
)
def test_bad_data_specs_are_user_errors(spec: str, message: str) -> None:
    with pytest.raises(RecalibrationError, match=message):
        from_path(spec)


def test_to_batch_shapes() -> None:
    assert to_batch(np.zeros((3, 2))).y is None
    assert to_batch((np.zeros((3, 2)), np.ones(3))).y is not None
    with pytest.raises(RecalibrationError):
        to_batch("text")


def test_default_output_and_image_size() -> None:
    assert default_output(Path("a/m.keras")) == Path("a/m.recalibrated.keras")
    assert default_output(Path("w.weights.h5")) == Path("w.recalibrated.weights.h5")
    assert default_output(Path("m.hdf5")) == Path("m.recalibrated.hdf5")
    assert parse_image_size("64") == (64, 64) and parse_image_size("32x48") == (32, 48)
    with pytest.raises(RecalibrationError):
        parse_image_size("big")


def test_recalibrate_modules_import_without_tensorflow() -> None:
    import subprocess

    code = (
        "import sys, ckptdoc, ckptdoc.recalibrate.cli, ckptdoc.recalibrate.data, "
        "ckptdoc.recalibrate.report, ckptdoc.recalibrate.stats, ckptdoc.atomic\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]\n"
        "assert not bad, bad\n"
        "assert callable(ckptdoc.recalibrate)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_sample_budget_is_spread_across_sorted_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Class-sorted data (as every image folder is): the first 40 of 400 samples are all one
    # class; the budget must come from across the data instead.
    from ckptdoc.recalibrate.data import Budget, Consumed, from_path

    x = np.arange(400, dtype=np.float32).reshape(400, 1)
    y = np.repeat(np.arange(4), 100)
    np.savez(tmp_path / "sorted.npz", x=x, y=y)
    source = from_path(str(tmp_path / "sorted.npz"))
    consumed = Consumed()
    batches = list(source.budgeted(16, Budget(samples=40), consumed))
    seen = np.concatenate([b.y for b in batches])
    assert consumed.samples == 40 and sorted(set(seen.tolist())) == [0, 1, 2, 3]
    picked = np.concatenate([b.x for b in batches]).ravel()
    assert picked[0] == 0 and picked[-1] == 399 and np.all(np.diff(picked) > 0)
    assert "evenly spread" in (source.budget_note(Budget(samples=40)) or "")
    # A budget of all the data (or more) reads it in order, untouched.
    whole = np.concatenate([b.x for b in source.budgeted(64, Budget(samples=400), Consumed())])
    assert np.array_equal(whole.ravel(), x.ravel())


def test_recalibrate_refuses_what_ck001_reports() -> None:
    # One walker for the audit's CK001 and recalibrate's refusal: a Keras 3 serialized Python
    # lambda used as an activation is code too (the old walker only knew `Lambda` layers).
    from ckptdoc.recalibrate.model_io import find_code_layers
    from ckptdoc.rules.code import code_findings

    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "head", "activation": {
            "class_name": "__lambda__", "config": {"value": ["4wEAAAAA", None, None]}}}},
        {"class_name": "Lambda", "config": {"name": "scale", "function": "x"}},
        {"class_name": "MyLayer", "module": "my_pkg.layers", "config": {"name": "mine"}},
    ]}}
    assert sorted(find_code_layers(config)) == ["head", "scale"]
    assert {f.group for f in code_findings(config)} == {"head", "scale", "mine"}

"""The pure-Python bundle patch writer (ckptdoc.recalibrate.bundle_writer), without TensorFlow.

Differential checks against TensorFlow's own readers live in test_recalibrate_tf1.py /
test_recalibrate_tf2ckpt.py; here: byte-preservation, refusals and the staged commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ckptdoc.errors import CheckpointError
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.bundle import OBJECT_GRAPH_KEY
from ckptdoc.recalibrate.bundle_writer import (
    default_output,
    encode_values,
    staged_bundle,
    write_patched_bundle,
)
from tests.bundle_writer import write_bundle

MEAN = "bn/moving_mean"


def _src(tmp_path: Path, shards: int = 2) -> Path:
    prefix = tmp_path / "in" / "model.ckpt"
    tensors: dict[str, np.ndarray | bytes] = {
        MEAN: np.zeros(4, np.float32),
        "bn/moving_variance": np.ones(4, np.float32),
        "bn/gamma/Adam": np.arange(4, dtype=np.float32),
        "step": np.asarray(7, np.int64),
        "half": np.ones(3, np.float16),
        OBJECT_GRAPH_KEY: b"\x0a\x00",  # one empty node
    }
    # Many keys force several index blocks in the writer's output.
    tensors.update({f"w/{i:04d}": np.full(3, i, np.float64) for i in range(300)})
    write_bundle(prefix, tensors, num_shards=shards)
    (prefix.parent / "model.ckpt.meta").write_bytes(b"meta graph bytes")
    (prefix.parent / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    return prefix


def test_only_replaced_tensors_change(tmp_path: Path) -> None:
    src = _src(tmp_path)
    out = tmp_path / "out" / "fixed"
    new = np.array([1.5, -2.0, 3.25, 0.0])
    with staged_bundle(src, out) as st:
        write_patched_bundle(src, st.prefix, {MEAN: new, "half": np.array([2.0, 3.0, 4.0])})
    with open_checkpoint(src) as a, open_checkpoint(out) as b:
        assert {k: (i.dtype, i.shape) for k, i in a.tensors.items()} == {
            k: (i.dtype, i.shape) for k, i in b.tensors.items()
        }
        for key in a.tensors:
            if key not in (MEAN, "half"):
                va, vb = a.read(key), b.read(key)
                assert (va == vb) if isinstance(va, bytes) else va.tobytes() == vb.tobytes()
        np.testing.assert_array_equal(b.read(MEAN), new.astype(np.float32))
        assert b.read("half").dtype == np.float16
    assert (out.parent / "fixed.meta").read_bytes() == b"meta graph bytes"
    assert (out.parent / "checkpoint").read_text().startswith('model_checkpoint_path: "fixed"')
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".ckptdoc-tmp")]


def test_refusals(tmp_path: Path) -> None:
    src = _src(tmp_path, shards=1)
    dest = tmp_path / "o" / "m"
    with pytest.raises(CheckpointError, match="no tensor nope"):
        with staged_bundle(src, dest) as st:
            write_patched_bundle(src, st.prefix, {"nope": np.zeros(1)})
    assert not dest.parent.exists()  # created for the output, removed again on failure
    with pytest.raises(CheckpointError, match=r"5 values for a tensor of shape \(4,\)"):
        write_patched_bundle(src, tmp_path / "x", {MEAN: np.zeros(5)})
    with pytest.raises(CheckpointError, match="not floating point"):
        write_patched_bundle(src, tmp_path / "x", {"step": np.zeros(())})
    with pytest.raises(CheckpointError, match="is the input checkpoint itself"):
        with staged_bundle(src, src):
            pass


def test_same_directory_keeps_input_state_file(tmp_path: Path) -> None:
    src = _src(tmp_path, shards=1)
    state = (src.parent / "checkpoint").read_text()
    with staged_bundle(src, src.parent / "model-fixed") as st:
        write_patched_bundle(src, st.prefix, {MEAN: np.ones(4)})
    assert (src.parent / "checkpoint").read_text() == state
    assert st.notes and "left as it was" in st.notes[0]
    with open_checkpoint(src.parent / "model-fixed") as b:
        np.testing.assert_array_equal(b.read(MEAN), np.ones(4, np.float32))


def test_bfloat16_rounds_to_nearest_even_and_default_output() -> None:
    # 1 + 2^-8 is a tie between bfloat16 neighbours 1.0 and 1 + 2^-7: even mantissa wins (1.0).
    data = encode_values("k", 14, (2,), np.array([1.0 + 2**-8, 3.0]))
    assert np.frombuffer(data, "<u2").tolist() == [0x3F80, 0x4040]
    assert default_output(Path("/a/run/model.ckpt")) == Path("/a/run.recalibrated/model.ckpt")

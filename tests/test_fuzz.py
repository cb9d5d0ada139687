"""Fuzzing (short run) and integrity: damaged files are a CheckpointError, never a crash, a hang,
a memory blow-up, or numbers read from corrupted bytes.

The harness is tests/fuzzlib.py; scripts/fuzz.py runs it for long (docs/reliability.md has the
figures). Every crash fuzzing found is kept under tests/fuzz_corpus/ and replayed here.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptdoc.errors import CheckpointError, CorruptCheckpointError
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.table import Table
from tests import bundle_writer as bw
from tests import fuzzlib

TIME_LIMIT = 3.0  # seconds per case; generous for a loaded 2-core CI box
CORPUS = Path(__file__).parent / "fuzz_corpus"
SEEDS = fuzzlib.load_seeds()
# Per-format budgets: a bundle case takes ~8 ms, an HDF5 / .keras one ~20-30 ms (h5py's
# overhead), so these 3,600 cases take about a minute on an idle 2-core machine.
EXAMPLES = {"bundle": 2500, "h5": 500, "keras": 600}
_counter = itertools.count()

_op = st.tuples(
    st.integers(0, 1), *(st.integers(0, 2**32 - 1) for _ in range(5))
)  # (byte or structural, five parameters each reduced modulo what it indexes)


def _check(seed: fuzzlib.Seed, ops: list[tuple[int, ...]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = fuzzlib.materialize(seed, ops, Path(d))
        # The heap is traced on every third case: tracemalloc doubles the cost of a case.
        outcome = fuzzlib.run_contract(path, TIME_LIMIT, check_memory=next(_counter) % 3 == 0)
    assert not outcome.violation, f"{seed.name} {ops}: {outcome.status}: {outcome.detail}"


def _fuzz_test(fmt: str):  # type: ignore[no-untyped-def]
    seeds = [s for s in SEEDS if s.fmt == fmt]

    @settings(
        max_examples=EXAMPLES[fmt],
        deadline=None,
        derandomize=True,  # the same cases on every run: CI stays reproducible
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.sampled_from(seeds), ops=st.lists(_op, min_size=1, max_size=3))
    def test(seed: fuzzlib.Seed, ops: list[tuple[int, ...]]) -> None:
        _check(seed, ops)

    test.__name__ = f"test_fuzz_{fmt}"
    return test


test_fuzz_bundle = _fuzz_test("bundle")
test_fuzz_h5 = _fuzz_test("h5")
test_fuzz_keras = _fuzz_test("keras")


def test_every_format_has_seeds() -> None:
    assert {s.fmt for s in SEEDS} == set(fuzzlib.FORMATS)
    for seed in SEEDS:
        with tempfile.TemporaryDirectory() as d:
            path = fuzzlib.materialize(seed, [], Path(d))
            outcome = fuzzlib.run_contract(path, 30.0, check_memory=False)
            assert outcome.status == "ok", (seed.name, outcome)


@pytest.mark.parametrize(
    "case", sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) if CORPUS.is_dir() else []
)
def test_fuzz_corpus_regressions(case: str, tmp_path: Path) -> None:
    """Every input fuzzing ever crashed ckptdoc with now gives a result or a CheckpointError."""
    info = json.loads((CORPUS / case / "case.json").read_text())
    if "known" in info:
        pytest.skip(f"known, outside ckptdoc: {info['known']}")
    shutil.copytree(CORPUS / case / "input", tmp_path / "case")
    path = tmp_path / "case" if info["entry"] == "." else tmp_path / "case" / info["entry"]
    outcome = fuzzlib.run_contract(path, 30.0)
    assert not outcome.violation, outcome


def test_structural_mutations_reach_deep_validation(tmp_path: Path) -> None:
    """The targeted index mutations keep block CRCs valid, so the entry checks see them."""
    seed = next(s for s in SEEDS if s.name == "bundle:tf1_sharded")
    path = fuzzlib.materialize(seed, [(1, 0, 1, 7, 13, 0)], tmp_path)  # entry 1: size -> 2**40
    Table.open(Path(f"{path}.index"))  # the table itself is intact
    with pytest.raises(CorruptCheckpointError, match="bytes but the entry says"):
        open_checkpoint(path)


# --------------------------------------------------------------------------- integrity

VALUES = {
    "a/gamma": np.arange(4, dtype=np.float32),
    "a/moving_mean": np.linspace(-1, 1, 5).astype(np.float64),
    "b/counts": np.array([[1, 2], [3, 4]], dtype=np.int32),
    "note": b"hello",
}


def FLIPS(i: int) -> tuple[int, int]:  # noqa: N802
    """Two flips per byte: one bit (a different one for each position) and all eight."""
    return (1 << (i % 8), 0xFF)


def _tiny_bundle(root: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    prefix = root / "model.ckpt"
    where = bw.write_bundle(prefix, dict(VALUES))
    return prefix, where


def _read_all(prefix: Path) -> dict[str, object]:
    with open_checkpoint(prefix) as ckpt:
        return {k: ckpt.read(k) for k in ckpt.tensors}


def _same(values: dict[str, object]) -> bool:
    if set(values) != set(VALUES):
        return False
    for key, want in VALUES.items():
        got = values[key]
        if isinstance(want, bytes):
            if np.asarray(got).item() != want:
                return False
        elif not (isinstance(got, np.ndarray) and got.dtype == want.dtype
                  and np.array_equal(got, want)):  # fmt: skip
            return False
    return True


def test_every_flipped_index_bit_is_corruption_or_harmless(tmp_path: Path) -> None:
    """Flip every bit of the index: a CheckpointError, or exactly the original values; and
    every flip inside a block that holds entries is caught (by the block CRC)."""
    prefix, _ = _tiny_bundle(tmp_path)
    index = Path(f"{prefix}.index")
    original = index.read_bytes()
    # The bytes holding entries: every data block and the index block, with their trailers.
    table = Table(index, original)
    blocks = [table.index_handle] + [
        Table._handle(table, value, 0)[0]
        for _key, value in table._block_entries(table.read_block(table.index_handle), "index")
    ]
    protected = {i for off, size in blocks for i in range(off, off + size + 5)}
    unnoticed = set()
    for i in range(len(original)):
        for flip in FLIPS(i):
            damaged = bytearray(original)
            damaged[i] ^= flip
            index.write_bytes(bytes(damaged))
            try:
                values = _read_all(prefix)
            except CheckpointError:
                continue
            assert _same(values), f"byte {i} ^ {flip:#x}: wrong values read without an error"
            unnoticed.add(i)
    index.write_bytes(original)
    # Unnoticed flips may only touch what the reader never uses (the metaindex block and its
    # handle, footer padding) or re-encode the same number (a redundant varint continuation).
    assert not unnoticed & protected, sorted(unnoticed & protected)
    assert len(protected) > len(original) // 2


def test_every_flipped_data_bit_fails_that_tensor_only(tmp_path: Path) -> None:
    prefix, where = _tiny_bundle(tmp_path)
    shard = Path(f"{prefix}.data-00000-of-00001")
    original = shard.read_bytes()
    owner = {}
    for key, (offset, size) in where.items():
        owner.update({i: key for i in range(offset, offset + size)})
    assert sorted(owner) == list(range(len(original)))  # every byte belongs to a tensor
    for i in range(len(original)):
        for flip in FLIPS(i):
            damaged = bytearray(original)
            damaged[i] ^= flip
            shard.write_bytes(bytes(damaged))
            with open_checkpoint(prefix) as ckpt:
                for key in ckpt.tensors:
                    if key == owner[i]:
                        with pytest.raises(CorruptCheckpointError, match="checksum|malformed|size"):
                            ckpt.read(key)
                    else:
                        ckpt.read(key)
    shard.write_bytes(original)


def test_flipped_bytes_in_a_deflated_keras_member_are_caught_by_the_zip_crc(
    tmp_path: Path,
) -> None:
    """HDF5 keeps no checksums. A deflated `.keras` member is inflated and its CRC-32 checked,
    so any flip in it is corruption. (Keras itself stores `model.weights.h5` uncompressed; the
    reader reads that one in place, unchecked, like a `.h5` file: docs/reliability.md.)"""
    src = next(s for s in SEEDS if s.name == "keras:k3_seq.keras")
    path = tmp_path / "deflated.keras"
    with zipfile.ZipFile(src.root / src.entry) as zin, zipfile.ZipFile(
        path, "w", compression=zipfile.ZIP_DEFLATED
    ) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    damaged_path = tmp_path / "m.keras"
    for i in range(start, start + info.compress_size, 37):
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        damaged_path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptCheckpointError):
            open_checkpoint(damaged_path)


def test_damaged_global_heap_is_refused_before_libhdf5_loops(tmp_path: Path) -> None:
    """A free-space object of size 0 in a global heap sends libhdf5 1.14 into an endless loop
    on the first string attribute read; the reader must refuse the file first (.h5 and the
    weights inside a .keras alike)."""
    h5 = (fuzzlib.REPO / "tests" / "data" / "keras" / "k3_seq.weights.h5").read_bytes()
    heap = h5.find(b"GCOL\x01\x00\x00\x00")
    assert heap > 0
    damaged = bytearray(h5)
    pos = heap + 16
    while struct.unpack_from("<H", damaged, pos)[0] != 0:  # walk to the free-space object
        pos += 16 + ((struct.unpack_from("<Q", damaged, pos + 8)[0] + 7) & ~7)
    struct.pack_into("<Q", damaged, pos + 8, 0)
    (tmp_path / "w.weights.h5").write_bytes(bytes(damaged))
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        with zipfile.ZipFile(fuzzlib.REPO / "tests" / "data" / "keras" / "k3_seq.keras") as src:
            for name in src.namelist():
                data = bytes(damaged) if name == "model.weights.h5" else src.read(name)
                zf.writestr(name, data)
    for name in ("w.weights.h5", "m.keras"):
        outcome = fuzzlib.run_contract(tmp_path / name, 10.0)
        assert outcome.status == "error" and outcome.seconds < 5, (name, outcome)
        with pytest.raises(CorruptCheckpointError, match="global heap"):
            open_checkpoint(tmp_path / name)


def test_cli_reports_damaged_files_per_file_without_traceback(tmp_path: Path) -> None:
    """`ckptdoc audit` over a folder of damaged files of every format: each unreadable one is
    its own error, the others are still audited, exit code 2, and never a traceback."""
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    rng = random.Random(7)
    paths = []
    for i in range(24):
        seed = SEEDS[i % len(SEEDS)]
        case = tmp_path / f"case{i}"
        case.mkdir()
        ops = [(rng.randrange(2), *(rng.getrandbits(32) for _ in range(5)))]
        paths.append(str(fuzzlib.materialize(seed, ops, case)))
    result = CliRunner().invoke(app, ["audit", *paths, "--format", "json"])
    assert "Traceback" not in result.output
    files = json.loads(result.stdout)["files"]
    assert len(files) == len(paths)
    unreadable = [f for f in files if f.get("error")]
    assert unreadable and result.exit_code == 2
    for f in unreadable:
        case_dir = Path(f["path"]).resolve().relative_to(tmp_path.resolve()).parts[0]
        assert "internal error" not in f["error"] and f"{case_dir}/" in f["error"], f

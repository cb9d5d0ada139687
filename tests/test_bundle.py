"""Tensor-bundle reader: committed TF-made files, hand-built and damaged files, and TF itself."""

from __future__ import annotations

import builtins
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptdoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotFoundError,
    UnsupportedFormatError,
)
from ckptdoc.formats import bundle as bundle_mod
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.bundle import BundleCheckpoint, open_bundle
from ckptdoc.formats.proto import ProtoError, parse, read_varint
from ckptdoc.formats.table import crc32c, mask_crc, snappy_decompress, unmask_crc
from tests import bundle_writer as bw

DATA = Path(__file__).parent / "data" / "bundle"
REAL = Path(__file__).parent / "data" / "real" / "basic-pitch" / "nmp"

# name -> (bundle prefix as TF names it, expected format)
CASES = {
    "tf1_bn": (DATA / "tf1_bn" / "model.ckpt", "tf1-bundle"),
    "tf1_sharded": (DATA / "tf1_sharded" / "model.ckpt", "tf1-bundle"),
    "tf2_keras3": (DATA / "tf2_keras3" / "ckpt", "tf2-object"),
    "tfkeras_save_weights": (DATA / "tfkeras_save_weights" / "weights.ckpt", "tf2-object"),
    "tfkeras_object": (DATA / "tfkeras_object" / "ckpt", "tf2-object"),
    "savedmodel": (DATA / "savedmodel" / "model" / "variables" / "variables", "savedmodel"),
    "tfkeras_model_save": (
        DATA / "tfkeras_model_save" / "model" / "variables" / "variables",
        "savedmodel",
    ),
    "empty_prefix": (DATA / "empty_prefix", "tf2-object"),
    "keras3_export": (
        DATA / "keras3_export" / "model" / "variables" / "variables",
        "savedmodel",
    ),
    "basic_pitch": (REAL / "variables" / "variables", "savedmodel"),
}


def _open(name: str) -> BundleCheckpoint:
    prefix, fmt = CASES[name]
    ckpt = open_bundle(prefix, savedmodel=fmt == "savedmodel")
    assert isinstance(ckpt, BundleCheckpoint)
    return ckpt


# --- committed TF-made files, no TF needed ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_tensor_reads_with_declared_shape_and_dtype(name: str) -> None:
    ckpt = _open(name)
    assert ckpt.format == CASES[name][1]
    assert ckpt.tensors
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in ckpt.tensors
    assert not any(k.startswith("\x00") for k in ckpt.tensors)
    for key, info in ckpt.tensors.items():
        value = ckpt.read(key)
        assert value.shape == info.shape, key
        assert value.dtype == info.dtype, key


def test_tf1_values_and_dtypes() -> None:
    ckpt = _open("tf1_bn")
    t = ckpt.tensors
    assert t["net/batch_normalization/moving_mean"].shape == (3,)
    assert t["net/dense/kernel"].shape == (4, 3)
    assert "net/batch_normalization/gamma/Adam_1" in t
    assert ckpt.read("extra/bf16").tolist() == [1.5, -2.25, 3.0]  # widened to float32
    assert t["extra/bf16"].dtype == np.float32
    assert ckpt.read("extra/f16").dtype == np.float16
    assert ckpt.read("extra/i64").tolist() == [1, 2, 1 << 40]
    assert ckpt.read("extra/u8").tolist() == [0, 7, 255]
    assert ckpt.read("extra/flag").item() is True
    assert ckpt.read("extra/f64_scalar").item() == 2.5
    assert ckpt.read("extra/strings").tolist() == [b"hello", b"", b"w\x00rld"]
    assert ckpt.layers is None


def test_unknown_key_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="no tensor 'nope'"):
        _open("tf1_bn").read("nope")


def test_partitioned_variable_is_listed_once_and_reassembled() -> None:
    ckpt = _open("tf1_bn")
    assert ckpt.tensors["net/partitioned"].shape == (6, 2)
    full = ckpt.read("net/partitioned")
    assert full.shape == (6, 2)
    # Both halves came from their own stored slices (random init: not all equal, no zeros).
    assert np.all(full != 0)
    assert not np.array_equal(full[:3], full[3:])


def test_sharded_bundle_uses_both_shards() -> None:
    ckpt = _open("tf1_sharded")
    assert ckpt.num_shards == 2
    shards = {ckpt._entries[k].shard_id for k in ckpt.tensors}
    assert shards == {0, 1}
    assert ckpt.read("tower1/x").tolist() == [1, 2, 3, 4, 5, 6]
    assert ckpt.read("tower0/x").tolist() == [0, 1, 2, 3, 4, 5]


def test_empty_prefix_bundle() -> None:
    ckpt = _open("empty_prefix")
    assert ckpt.index_path.name == ".index"
    assert ckpt.read("v/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [1.0, 2.0, 3.0]
    assert ckpt.read("step/.ATTRIBUTES/VARIABLE_VALUE").item() == 7


def test_open_checkpoint_dispatch_and_state_file_note() -> None:
    with open_checkpoint(DATA / "tf1_bn") as ckpt:
        assert ckpt.format == "tf1-bundle"
        assert any("does not exist here" in w for w in ckpt.warnings)
    with open_checkpoint(REAL) as ckpt:
        assert ckpt.format == "savedmodel"


# --- reading touches only the tensor's bytes -------------------------------------------------


def test_read_touches_only_that_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _open("tf1_bn")
    read_bytes: list[int] = []
    real_open = builtins.open

    class Counting:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f = f

        def read(self, n: int = -1) -> bytes:
            assert n >= 0, "whole-file read"
            data = self.f.read(n)
            read_bytes.append(len(data))
            return data

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self.f, name)

        def __enter__(self):  # type: ignore[no-untyped-def]
            self.f.__enter__()
            return self

        def __exit__(self, *a):  # type: ignore[no-untyped-def]
            return self.f.__exit__(*a)

    monkeypatch.setattr(
        bundle_mod, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False
    )
    ckpt.read("net/batch_normalization/moving_variance")
    assert sum(read_bytes) == 12  # 3 float32, out of a 491-byte shard


def test_large_shard_is_not_loaded(tmp_path: Path) -> None:
    big = np.arange(2_000_000, dtype=np.float32)  # 8 MB
    bw.write_bundle(tmp_path / "m", {"a/big": big, "b/small": np.ones(3, np.float32)})
    import tracemalloc

    ckpt = open_bundle(tmp_path / "m")
    tracemalloc.start()
    assert ckpt.read("b/small").tolist() == [1, 1, 1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000
    assert np.array_equal(ckpt.read("a/big"), big)


# --- damaged files ---------------------------------------------------------------------------


def _copy(name: str, tmp_path: Path) -> Path:
    prefix, _ = CASES[name]
    dst = tmp_path / name
    shutil.copytree(prefix.parent, dst)
    return dst / prefix.name


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_byte_in_shard_fails_only_that_tensor(tmp_path: Path) -> None:
    prefix = _copy("tf1_bn", tmp_path)
    entry = _open("tf1_bn")._entries["net/batch_normalization/moving_mean"]
    _flip(Path(f"{prefix}.data-00000-of-00001"), entry.offset + 5)
    ckpt = open_bundle(prefix)
    with pytest.raises(CorruptCheckpointError, match="checksum mismatch.*moving_mean") as e:
        ckpt.read("net/batch_normalization/moving_mean")
    assert "data-00000-of-00001" in str(e.value)
    ckpt.read("net/batch_normalization/moving_variance")


def test_flipped_byte_in_string_tensor(tmp_path: Path) -> None:
    prefix = _copy("tf1_bn", tmp_path)
    entry = _open("tf1_bn")._entries["extra/strings"]
    _flip(Path(f"{prefix}.data-00000-of-00001"), entry.offset + entry.size - 1)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        open_bundle(prefix).read("extra/strings")


def test_flipped_byte_in_object_graph_fails_open(tmp_path: Path) -> None:
    prefix = _copy("tf2_keras3", tmp_path)
    entry = _open("tf2_keras3")._entries["_CHECKPOINTABLE_OBJECT_GRAPH"]
    _flip(Path(f"{prefix}.data-00000-of-00001"), entry.offset + entry.size // 2)
    with pytest.raises(CorruptCheckpointError):
        open_bundle(prefix)


@pytest.mark.parametrize("offset", [3, 100, -60, -3])
def test_flipped_byte_in_index_fails_open(tmp_path: Path, offset: int) -> None:
    prefix = _copy("tf1_bn", tmp_path)
    index = Path(f"{prefix}.index")
    _flip(index, offset % index.stat().st_size)
    with pytest.raises(CorruptCheckpointError) as e:
        open_bundle(prefix)
    assert "model.ckpt.index" in str(e.value)


def test_truncated_shard(tmp_path: Path) -> None:
    prefix = _copy("tf1_bn", tmp_path)
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:200])
    ckpt = open_bundle(prefix)
    assert any("truncated" in w for w in ckpt.warnings)
    assert ckpt.read("beta1_power").shape == ()  # at offset 0: still fine
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        ckpt.read("net/dense/kernel/Adam_1")


def test_missing_shard_names_the_file(tmp_path: Path) -> None:
    prefix = _copy("tf1_sharded", tmp_path)
    Path(f"{prefix}.data-00001-of-00002").unlink()
    with pytest.raises(NotFoundError, match=r"model\.ckpt\.data-00001-of-00002"):
        open_bundle(prefix)


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="index"):
        open_bundle(tmp_path / "nothing")


@pytest.mark.parametrize(
    "content", [b"", b"garbage" * 3, b"\x00" * 48, b"x" * 4000, bytes(range(256)) * 4]
)
def test_garbage_index_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.index").write_bytes(content)
    with pytest.raises(CheckpointError):
        open_checkpoint(tmp_path / "x.index")


# --- hand-built bundles: features and hardening ---------------------------------------------


def test_writer_roundtrip_with_snappy_and_several_blocks(tmp_path: Path) -> None:
    tensors = {f"layer_{i:02d}/w": np.full((i + 1,), i, np.float32) for i in range(10)}
    tensors["graph_free/x"] = np.arange(4, dtype=np.int64)
    bw.write_bundle(tmp_path / "s", tensors, num_shards=3, compress=True)
    ckpt = open_bundle(tmp_path / "s")
    assert set(ckpt.tensors) == set(tensors)
    for k, v in tensors.items():
        assert np.array_equal(ckpt.read(k), v)


def test_snappy_copies() -> None:
    # "abcd" literal, then copy-1 (len 4, offset 4) and copy-2 (len 6, offset 2).
    stream = bw.varint(14) + bytes([3 << 2]) + b"abcd" + bytes([0b000_000_01, 4])
    stream += bytes([(5 << 2) | 2]) + struct.pack("<H", 2)
    assert snappy_decompress(stream) == b"abcdabcdcdcdcd"
    with pytest.raises(ValueError):
        snappy_decompress(bw.varint(4) + bytes([0b01, 9]))  # offset past output


def _bundle_with(tmp_path: Path, entries: list[tuple[bytes, bytes]], shard: bytes = b"") -> Path:
    prefix = tmp_path / "h"
    Path(f"{prefix}.data-00000-of-00001").write_bytes(shard)
    Path(f"{prefix}.index").write_bytes(bw.table(entries))
    return prefix


def test_negative_dimension_rejected(tmp_path: Path) -> None:
    entry = bw.entry_proto(1, (-1, 3), 0, 0, 12, None)
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1)), (b"a", entry)], b"\x00" * 12)
    with pytest.raises(CorruptCheckpointError, match="shape"):
        open_bundle(prefix)


def test_size_that_does_not_match_shape_rejected(tmp_path: Path) -> None:
    entry = bw.entry_proto(1, (1 << 40, 1 << 20), 0, 0, 12, None)
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1)), (b"a", entry)], b"\x00" * 12)
    with pytest.raises(CorruptCheckpointError, match="bytes"):
        open_bundle(prefix)


def test_absurd_shard_count_rejected(tmp_path: Path) -> None:
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1 << 40))])
    with pytest.raises(CorruptCheckpointError, match="shard count"):
        open_bundle(prefix)


def test_shard_id_out_of_range_rejected(tmp_path: Path) -> None:
    entry = bw.entry_proto(1, (1,), 5, 0, 4, None)
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1)), (b"a", entry)], b"\x00" * 4)
    with pytest.raises(CorruptCheckpointError, match="shard 5"):
        open_bundle(prefix)


def test_big_endian_and_future_versions_refused(tmp_path: Path) -> None:
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1, endianness=1))])
    with pytest.raises(UnsupportedFormatError, match="big-endian"):
        open_bundle(prefix)
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1, min_consumer=7))])
    with pytest.raises(UnsupportedFormatError, match="newer"):
        open_bundle(prefix)


def test_missing_header_and_unsorted_keys(tmp_path: Path) -> None:
    entry = bw.entry_proto(1, (1,), 0, 0, 4, None)
    prefix = _bundle_with(tmp_path, [(b"a", entry)], b"\x00" * 4)
    with pytest.raises(CorruptCheckpointError, match="header"):
        open_bundle(prefix)
    prefix = _bundle_with(
        tmp_path, [(b"", bw.header_proto(1)), (b"b", entry), (b"a", entry)], b"\x00" * 4
    )
    with pytest.raises(CorruptCheckpointError, match="sorted"):
        open_bundle(prefix)


def test_offset_past_end_of_shard(tmp_path: Path) -> None:
    entry = bw.entry_proto(1, (2,), 0, 1 << 50, 8, None)
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1)), (b"a", entry)], b"\x00" * 8)
    ckpt = open_bundle(prefix)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        ckpt.read("a")


def test_unknown_dtype_skipped_with_warning(tmp_path: Path) -> None:
    entry = bw.entry_proto(20, (), 0, 0, 4, None)  # DT_RESOURCE
    prefix = _bundle_with(tmp_path, [(b"", bw.header_proto(1)), (b"r", entry)], b"\x00" * 4)
    ckpt = open_bundle(prefix)
    assert not ckpt.tensors
    assert any("resource" in w for w in ckpt.warnings)


def _partitioned(tmp_path: Path, full_shape: tuple[int, ...]) -> Path:
    """Variable `a` stored as two slices [0:2] and [2:4], keys as TF's OrderedCode writes them."""
    lo = np.array([1, 2], np.float32).tobytes()
    hi = np.array([3, 4], np.float32).tobytes()
    slices = b"".join(
        bw.field_bytes(7, bw.field_bytes(1, bw.field_varint(1, start) + bw.field_varint(2, 2)))
        for start in (0, 2)
    )
    full = bw.field_varint(1, 1) + bw.field_bytes(2, bw.shape_proto(full_shape)) + slices
    entries = [
        (b"", bw.header_proto(1)),
        (b"\x00a\x00\x01\x01\x01\x80\x82", bw.entry_proto(1, (2,), 0, 0, 8, mask_crc(crc32c(lo)))),
        (b"\x00a\x00\x01\x01\x01\x82\x82", bw.entry_proto(1, (2,), 0, 8, 8, mask_crc(crc32c(hi)))),
        (b"a", full),
    ]
    return _bundle_with(tmp_path, entries, lo + hi)


def test_partitioned_reassembly_and_coverage(tmp_path: Path) -> None:
    ckpt = open_bundle(_partitioned(tmp_path, (4,)))
    assert list(ckpt.tensors) == ["a"]
    assert ckpt.read("a").tolist() == [1, 2, 3, 4]
    with pytest.raises(CorruptCheckpointError, match="out of range|cover"):
        open_bundle(_partitioned(tmp_path, (1 << 40,)))


def test_crc_masking_roundtrip() -> None:
    for c in (0, 1, 0xFFFFFFFF, 0x12345678):
        assert unmask_crc(mask_crc(c)) == c


def test_varints_are_capped() -> None:
    with pytest.raises(ProtoError):
        read_varint(b"\xff" * 11, 0)
    assert read_varint(b"\xff" * 9 + b"\x01", 0)[0] == (1 << 64) - 1
    with pytest.raises(ProtoError):
        parse(b"\x0a\x05ab")  # length runs past the end
    with pytest.raises(ProtoError):
        parse(b"\x0b")  # group wire type


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pos=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 3000))
def test_mutated_index_never_escapes_the_error_contract(
    tmp_path: Path, pos: int, value: int, cut: int
) -> None:
    src = CASES["tf2_keras3"][0]
    original = Path(f"{src}.index").read_bytes()
    data = bytearray(original)
    data[pos % len(data)] = value
    if cut % 3 == 0:
        data = data[: cut % len(data)]
    d = tmp_path / "fuzz"
    d.mkdir(exist_ok=True)
    shutil.copy(f"{src}.data-00000-of-00001", d / "ckpt.data-00000-of-00001")
    (d / "ckpt.index").write_bytes(bytes(data))
    try:
        ckpt = open_bundle(d / "ckpt")
        for key in ckpt.tensors:
            ckpt.read(key)
    except CheckpointError:
        pass


# --- differential: our reader vs TensorFlow's ------------------------------------------------


@pytest.fixture(scope="session")
def tf_reader():  # type: ignore[no-untyped-def]
    tf = pytest.importorskip("tensorflow")

    def load(prefix: Path):  # type: ignore[no-untyped-def]
        # An empty prefix must keep its trailing slash for TF.
        p = str(prefix) + "/" if prefix.is_dir() else str(prefix)
        return tf.compat.v1.train.NewCheckpointReader(p)

    return load


@pytest.mark.tf
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_tensorflow_bit_for_bit(tf_reader, name: str) -> None:  # type: ignore[no-untyped-def]
    prefix, _ = CASES[name]
    ref = tf_reader(prefix)
    shapes = ref.get_variable_to_shape_map()
    dtypes = ref.get_variable_to_dtype_map()
    ours = _open(name)
    expected = set(shapes) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert set(ours.tensors) == expected
    for key in expected:
        info = ours.tensors[key]
        assert info.shape == tuple(shapes[key]), key
        want = ref.get_tensor(key)
        got = ours.read(key)
        if dtypes[key].name == "bfloat16":
            assert info.dtype == np.float32
            want = np.asarray(want).astype(np.float32)
        elif dtypes[key].name == "string":
            assert info.dtype == object
            assert np.asarray(want, dtype=object).tolist() == got.tolist(), key
            continue
        else:
            assert info.dtype == np.dtype(dtypes[key].as_numpy_dtype), key
        want = np.asarray(want)
        assert got.shape == want.shape, key
        assert got.dtype == want.dtype, key
        assert (
            got.reshape(-1).view(np.uint8).tobytes() == want.reshape(-1).view(np.uint8).tobytes()
        ), key


def test_fast_entry_decoder_agrees_with_the_general_one() -> None:
    # The fast path for common BundleEntryProtos must decode exactly as the general decoder,
    # and hand anything unusual to it (returning None), never guess.
    from ckptdoc.formats.proto import ProtoError, _decode_bundle_entry, _fast_bundle_entry
    from ckptdoc.formats.table import Table

    real = []
    for idx in Path(__file__).resolve().parent.parent.rglob("*.index"):
        try:
            table = Table.open(idx)
        except Exception:  # noqa: BLE001 - corrupt fixtures are other tests' business
            continue
        real += [v for k, v in table.items() if k]
    assert len(real) > 200
    for value in real:
        fast = _fast_bundle_entry(value)
        assert fast is None or fast == _decode_bundle_entry(value)

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(real), st.integers(0, 64), st.integers(0, 255))
    def mutated(value: bytes, where: int, byte: int) -> None:
        data = bytearray(value)
        data[where % len(data)] = byte
        try:
            fast = _fast_bundle_entry(bytes(data))
        except ProtoError:
            fast = "error"
        try:
            general = _decode_bundle_entry(bytes(data))
        except ProtoError:
            general = "error"
        assert fast is None or fast == general or (fast == "error" and general == "error")

    mutated()

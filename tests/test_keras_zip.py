"""`.keras` reader: config-driven names and roles, path replay, and hostile archives."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckptdoc.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from ckptdoc.formats.keras_zip import open_keras_zip

K = Path(__file__).parent / "data" / "keras"
RENORM = [
    "gamma", "beta", "moving_mean", "moving_variance",
    "moving_stddev", "renorm_mean", "renorm_stddev",
]  # fmt: skip


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_functional_with_nested_model_gets_config_names_and_roles() -> None:
    with open_keras_zip(K / "k3_functional.keras") as ckpt:
        assert ckpt.format == "keras3-zip"
        assert ckpt.keras_version == "3.15.1"
        assert ckpt.model_config is not None and ckpt.model_config["class_name"] == "Functional"
        layers = {n.name: n for n in ckpt.layers}
        assert not any(k.startswith("optimizer") for k in ckpt.tensors)
        assert ckpt.read(layers["bn_a"].members["moving_variance"]).shape == (4,)
    inner = layers["inner_block/inner_bn"]
    assert inner.class_name == "BatchNormalization" and inner.config["center"] is False
    # center=False: the config settles what the weights file alone cannot.
    assert inner.members == {
        "gamma": "layers/functional/layers/batch_normalization/vars/0",
        "moving_mean": "layers/functional/layers/batch_normalization/vars/1",
        "moving_variance": "layers/functional/layers/batch_normalization/vars/2",
    }
    assert list(layers["bn_noscale"].members) == ["beta", "moving_mean", "moving_variance"]
    assert layers["bn_axis1"].config["axis"] == 1
    assert list(layers["bn_renorm"].members) == RENORM
    assert layers["batch_normalization"].members["gamma"] == "layers/batch_normalization_4/vars/0"
    norm = layers["input_norm"]
    assert norm.class_name == "Normalization"
    assert not {"moving_mean", "moving_variance", "gamma", "beta"} & set(norm.members)
    assert layers["conv_a"].class_name == "Conv2D"


def test_sequential() -> None:
    with open_keras_zip(K / "k3_seq.keras") as ckpt:
        layers = {n.name: n for n in ckpt.layers}
    assert set(layers) == {"d1", "bn_seq", "d2", "batch_normalization_1"}
    plain = layers["batch_normalization_1"]
    assert plain.config["center"] is False and plain.config["scale"] is False
    assert list(plain.members) == ["moving_mean", "moving_variance"]
    assert layers["d2"].class_name == "Dense"


def _strip_names(h5_bytes: bytes) -> bytes:
    buf = io.BytesIO(h5_bytes)
    with h5py.File(buf, "a") as f:
        f.visititems(lambda n, o: o.attrs.__delitem__("name") if "name" in o.attrs else None)
    return buf.getvalue()


@pytest.mark.parametrize("model", ["k3_functional", "k3_seq"])
def test_path_replay_when_weights_have_no_names(tmp_path: Path, model: str) -> None:
    """Keras < 3.6 files: map `layers/<snake class>_N` to config layers as Keras does."""
    members = _members(K / f"{model}.keras")
    members["model.weights.h5"] = _strip_names(members["model.weights.h5"])
    with open_keras_zip(_write_zip(tmp_path / f"{model}.keras", members)) as ckpt:
        replayed = {n.name: (n.class_name, dict(n.members), n.config) for n in ckpt.layers}
    with open_keras_zip(K / f"{model}.keras") as ckpt:
        named = {n.name: (n.class_name, dict(n.members), n.config) for n in ckpt.layers}
    assert replayed == named


def test_lambda_layer_is_only_data(tmp_path: Path) -> None:
    members = _members(K / "k3_seq.keras")
    cfg = json.loads(members["config.json"])
    cfg["config"]["layers"].append(
        {"class_name": "Lambda", "config": {"name": "evil", "function": "gAWVbWFyc2hhbA=="}}
    )
    members["config.json"] = json.dumps(cfg).encode()
    with open_keras_zip(_write_zip(tmp_path / "lambda.keras", members)) as ckpt:
        assert ckpt.model_config is not None
        classes = [entry["class_name"] for entry in ckpt.model_config["config"]["layers"]]
        assert "Lambda" in classes


def test_missing_config_still_reads_weights(tmp_path: Path) -> None:
    members = _members(K / "k3_seq.keras")
    del members["config.json"]
    with open_keras_zip(_write_zip(tmp_path / "noconfig.keras", members)) as ckpt:
        layers = {n.name: n for n in ckpt.layers}
        assert layers["bn_seq"].class_name == "BatchNormalization"  # from the path hint
        assert any("config.json" in w for w in ckpt.warnings)


# ----------------------------------------------------------------------------- hostile zips


@pytest.mark.parametrize(
    "name", ["../evil", "a/../../evil", "/etc/passwd", "C:/evil", "dir\\evil.h5"]
)
def test_unsafe_member_names(tmp_path: Path, name: str) -> None:
    members = _members(K / "k3_seq.keras")
    members[name] = b"x"
    p = _write_zip(tmp_path / "evil.keras", members)
    with pytest.raises(UnsafeCheckpointError, match="not a safe path") as err:
        open_keras_zip(p)
    assert str(p) in str(err.value)


def test_symlink_member(tmp_path: Path) -> None:
    p = tmp_path / "link.keras"
    with zipfile.ZipFile(p, "w") as zf:
        for name, data in _members(K / "k3_seq.keras").items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("assets/link")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeCheckpointError, match="symlink"):
        open_keras_zip(p)


def test_compression_bomb(tmp_path: Path) -> None:
    p = tmp_path / "bomb.keras"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _members(K / "k3_seq.keras").items():
            zf.writestr(name, data)
        zf.writestr("assets/zeros", b"\0" * (30 << 20))
    assert p.stat().st_size < 200_000
    with pytest.raises(UnsafeCheckpointError, match="compression bomb"):
        open_keras_zip(p)


def _patch_declared_size(data: bytes, member: str, size: int) -> bytes:
    """Rewrite a member's uncompressed size in the central directory (a lying archive)."""
    out = bytearray(data)
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_len] == member.encode():
            struct.pack_into("<I", out, pos + 24, size)
            return bytes(out)
        pos += 4
    raise AssertionError(f"{member} not found")


def test_declared_size_lie_is_refused_before_reading(tmp_path: Path) -> None:
    stored = (K / "k3_seq.keras").read_bytes()  # Keras writes members uncompressed
    p = tmp_path / "lie_stored.keras"
    p.write_bytes(_patch_declared_size(stored, "model.weights.h5", 0xFFFF0000))
    with pytest.raises(CorruptCheckpointError, match="mismatched sizes"):
        open_keras_zip(p)
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in _members(K / "k3_seq.keras").items():
            zf.writestr(name, data)
    p = tmp_path / "lie_deflated.keras"
    p.write_bytes(_patch_declared_size(deflated.read_bytes(), "model.weights.h5", 0xFFFF0000))
    with pytest.raises(UnsafeCheckpointError, match="compression bomb"):
        open_keras_zip(p)
    # A small lie is caught while inflating: never more than the declared size is read.
    p.write_bytes(_patch_declared_size(deflated.read_bytes(), "model.weights.h5", 1000))
    with pytest.raises(CheckpointError):
        open_keras_zip(p)


def test_duplicate_members(tmp_path: Path) -> None:
    p = tmp_path / "dup.keras"
    with pytest.warns(UserWarning):
        with zipfile.ZipFile(p, "w") as zf:
            for name, data in _members(K / "k3_seq.keras").items():
                zf.writestr(name, data)
            zf.writestr("config.json", b"{}")
    with pytest.raises(UnsafeCheckpointError, match="twice"):
        open_keras_zip(p)


def test_not_a_zip_and_missing_weights(tmp_path: Path) -> None:
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CorruptCheckpointError, match="junk.keras"):
        open_keras_zip(junk)
    members = _members(K / "k3_seq.keras")
    weights = members.pop("model.weights.h5")
    with pytest.raises(CorruptCheckpointError, match="no model.weights.h5"):
        open_keras_zip(_write_zip(tmp_path / "empty.keras", members))
    members["model.weights.npz"] = b"PK"
    with pytest.raises(UnsupportedFormatError, match="npz"):
        open_keras_zip(_write_zip(tmp_path / "npz.keras", members))
    members.pop("model.weights.npz")
    members["model.weights.h5"] = weights[: len(weights) // 3]
    with pytest.raises(CheckpointError):
        with open_keras_zip(_write_zip(tmp_path / "trunc.keras", members)) as ckpt:
            for key in ckpt.tensors:
                ckpt.read(key)
    members["model.weights.h5"] = weights
    members["config.json"] = b"{not json"
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        open_keras_zip(_write_zip(tmp_path / "badjson.keras", members))


def test_hostile_inner_h5_link(tmp_path: Path) -> None:
    members = _members(K / "k3_seq.keras")
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "a") as f:
        f["layers/dense/vars/9"] = h5py.ExternalLink("/etc/shadow.h5", "/x")
    members["model.weights.h5"] = buf.getvalue()
    with pytest.raises(UnsafeCheckpointError, match="external link"):
        open_keras_zip(_write_zip(tmp_path / "inner_link.keras", members))
    with h5py.File(io.BytesIO(members["model.weights.h5"]), "r") as f:
        assert np.asarray(f["layers/dense/vars/0"]).shape == (5, 3)  # the rest was intact


# ----------------------------------------------------------------------------- differential


@pytest.mark.tf
def test_values_equal_what_keras3_loads(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    from tests.keras_reference import assert_matches_reference, reference_values

    files = [K / "k3_functional.keras", K / "k3_seq.keras"]
    ref = reference_values("keras3", files, tmp_path_factory.mktemp("ref"))
    for f in files:
        with open_keras_zip(f) as ckpt:
            assert assert_matches_reference(ckpt, f.name, ref) > 0


def test_flipped_byte_in_stored_weights_fails_the_zip_crc(tmp_path: Path) -> None:
    # Keras stores model.weights.h5 uncompressed and ckptdoc reads it in place: the member's
    # zip CRC-32 is still checked, so damage inside any tensor is corruption, not numbers.
    src = Path(__file__).resolve().parent.parent / "sample_ckpts" / "keras3_healthy.keras"
    info = zipfile.ZipFile(src).getinfo("model.weights.h5")
    assert info.compress_type == zipfile.ZIP_STORED
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for offset in (info.file_size // 2, info.file_size - 100):
        damaged = bytearray(src.read_bytes())
        damaged[start + offset] ^= 0x10
        dst = tmp_path / f"damaged_{offset}.keras"
        dst.write_bytes(bytes(damaged))
        with pytest.raises(CorruptCheckpointError, match="CRC-32"):
            open_keras_zip(dst)


def _big_deflated_keras(tmp_path: Path, megabytes: int) -> Path:
    """A .keras whose deflated weights member inflates to `megabytes` MiB, under the ratio
    cap: a real Keras 3 weights file plus one big, barely compressible-enough dataset."""
    weights = tmp_path / "model.weights.h5"
    shutil.copy(K / "k3_seq.weights.h5", weights)
    rng = np.random.default_rng(0)
    page = np.zeros(4096, np.uint8)
    with h5py.File(weights, "r+") as f:
        big = f.create_dataset("padding", shape=(megabytes * 256, 4096), dtype=np.uint8)
        for row in range(0, megabytes * 256, 4096):
            block = np.tile(page, (4096, 1))
            block[:, :48] = rng.integers(0, 256, (4096, 48))  # ~1% noise: deflates ~60x
            big[row : row + 4096] = block[: megabytes * 256 - row]
    out = tmp_path / "big.keras"
    with zipfile.ZipFile(K / "k3_seq.keras") as src, zipfile.ZipFile(
        out, "w", compression=zipfile.ZIP_DEFLATED
    ) as dst:
        for name in ("metadata.json", "config.json"):
            dst.writestr(name, src.read(name))
        dst.write(weights, "model.weights.h5")
    weights.unlink()
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM (Linux)")
def test_a_deflated_member_is_never_inflated_into_memory(tmp_path: Path) -> None:
    path = _big_deflated_keras(tmp_path, 512)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
        assert info.file_size > 512 << 20 and info.compress_size < info.file_size / 20
    # VmHWM, not ru_maxrss: the latter survives exec and starts at the parent's RSS (this
    # test process, TensorFlow loaded: ~600 MB).
    code = (
        "from ckptdoc.auditor import audit_file\n"
        f"report = audit_file({str(path)!r})\n"
        "assert report.error is None, report.error\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "print(len(report.groups), hwm.split()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    groups, peak_kib = map(int, out.stdout.split())
    assert groups > 0
    assert peak_kib < 250 * 1024, f"peak RSS {peak_kib // 1024} MiB for a 512 MiB member"


def test_a_deflated_member_that_is_not_hdf5_is_refused_first(tmp_path: Path) -> None:
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"PK not hdf5" * 1000)
    with pytest.raises(CorruptCheckpointError, match="no HDF5 signature"):
        open_keras_zip(p)

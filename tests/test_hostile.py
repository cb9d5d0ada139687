"""Hostile files through the user's door (`ckptdoc audit`, `audit_file`): links out of the file,
external / virtual storage, lying sizes, zip tricks, bombs, and code in the model config.

Each is a per-file error (exit code 2, the message names the file, no traceback) or, for code in
the config, a CK001 finding; nothing is followed, inflated, imported or run. The readers' own
tests (test_keras_h5.py, test_keras_zip.py) check the same refusals at the reader level.
"""

from __future__ import annotations

import base64
import json
import marshal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from ckptdoc.auditor import audit_file
from ckptdoc.cli import app
from ckptdoc.errors import CorruptCheckpointError, UnsafeCheckpointError
from ckptdoc.formats import open_checkpoint
from ckptdoc.rules import RuleSelection, Severity

ROOT = Path(__file__).resolve().parent.parent
K = ROOT / "tests" / "data" / "keras"
KERAS2_FULL = ROOT / "sample_ckpts" / "keras2_healthy.h5"


def _bn_weights(path: Path) -> h5py.File:
    """A Keras 2 weights file with one BN layer, left open for the test to add a trick."""
    f = h5py.File(path, "w")
    f.attrs["layer_names"] = np.array([b"bn"])
    g = f.create_group("bn")
    g.attrs["weight_names"] = np.array(
        [b"bn/gamma:0", b"bn/beta:0", b"bn/moving_mean:0", b"bn/moving_variance:0"]
    )
    for name, value in [("gamma", 1.5), ("beta", 0.1), ("moving_mean", 0.3)]:
        g[f"bn/{name}:0"] = np.full(4, value, "f4")
    return f


def _audit_cli(path: Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["audit", str(path), "--format", "json"])


def _assert_refused(path: Path, error: type, match: str) -> None:
    """Refused by the reader with `error`, and by the CLI as a per-file error (exit 2)."""
    with pytest.raises(error, match=match) as err:
        open_checkpoint(path)
    assert str(path) in str(err.value)
    report = audit_file(path)
    assert report.error is not None and str(path) in report.error
    result = _audit_cli(path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    files = json.loads(result.stdout)["files"]
    assert files[0]["error"] and match.split("|")[0] in files[0]["error"]


# --------------------------------------------------------------------------- HDF5


def test_hdf5_external_link_is_not_followed(tmp_path: Path) -> None:
    # The target exists and holds a perfectly good dataset: following it would "work".
    target = tmp_path / "elsewhere.h5"
    with h5py.File(target, "w") as f:
        f["moving_variance:0"] = np.ones(4, "f4")
    p = tmp_path / "external_link.h5"
    with _bn_weights(p) as f:
        f["bn/bn"]["moving_variance:0"] = h5py.ExternalLink(str(target), "/moving_variance:0")
    _assert_refused(p, UnsafeCheckpointError, "external link")


def test_hdf5_soft_link_is_not_followed(tmp_path: Path) -> None:
    p = tmp_path / "soft_link.h5"
    with _bn_weights(p) as f:
        f["bn/bn"]["moving_variance:0"] = h5py.SoftLink("/bn/bn/moving_mean:0")
    _assert_refused(p, UnsafeCheckpointError, "soft link")


def test_hdf5_external_storage_dataset_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "outside.bin"
    raw.write_bytes(np.ones(4, "f4").tobytes())
    p = tmp_path / "external_storage.h5"
    with _bn_weights(p) as f:
        f["bn/bn"].create_dataset("moving_variance:0", (4,), "f4", external=[(str(raw), 0, 16)])
    _assert_refused(p, UnsafeCheckpointError, "external files")


def test_hdf5_virtual_dataset_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "source.h5"
    with h5py.File(src, "w") as f:
        f["d"] = np.ones(4, "f4")
    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(src), "d", shape=(4,))
    p = tmp_path / "virtual.h5"
    with _bn_weights(p) as f:
        f["bn/bn"].create_virtual_dataset("moving_variance:0", layout)
    _assert_refused(p, UnsafeCheckpointError, "virtual dataset")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        # Contiguous, never written: 4 GB declared in a file of a few KB.
        ({"shape": (10**9,)}, CorruptCheckpointError, "more than the whole file"),
        # Chunked without filters: unwritten chunks would read as fill values.
        ({"shape": (10**9,), "chunks": (1024,)}, CorruptCheckpointError, "declares"),
        # Compressed: 400 GB would inflate from nothing.
        ({"shape": (10**11,), "chunks": (10**6,), "compression": "gzip"},
         UnsafeCheckpointError, "compression bomb"),
    ],
)  # fmt: skip
def test_hdf5_declared_size_far_beyond_the_file(
    tmp_path: Path, kwargs: dict, error: type, match: str
) -> None:
    p = tmp_path / "huge.h5"
    with _bn_weights(p) as f:
        f["bn/bn"].create_dataset("moving_variance:0", dtype="f4", **kwargs)
    assert p.stat().st_size < 100_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        _assert_refused(p, error, match)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 << 20 and time.perf_counter() - started < 10


# --------------------------------------------------------------------------- .keras zips


def _keras_members() -> dict[str, bytes]:
    with zipfile.ZipFile(K / "k3_seq.keras") as zf:
        return {n: zf.read(n) for n in zf.namelist()}


@pytest.mark.parametrize("name", ["../evil.h5", "assets/../../evil", "/etc/cron.d/x", "C:/x"])
def test_keras_member_paths_that_escape(tmp_path: Path, name: str) -> None:
    p = tmp_path / "escape.keras"
    with zipfile.ZipFile(p, "w") as zf:
        for n, data in _keras_members().items():
            zf.writestr(n, data)
        zf.writestr(name, b"payload")
    _assert_refused(p, UnsafeCheckpointError, "not a safe path")
    assert not (tmp_path.parent / "evil.h5").exists()


def test_keras_symlink_member(tmp_path: Path) -> None:
    p = tmp_path / "symlink.keras"
    with zipfile.ZipFile(p, "w") as zf:
        for n, data in _keras_members().items():
            zf.writestr(n, data)
        info = zipfile.ZipInfo("assets/passwd")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    _assert_refused(p, UnsafeCheckpointError, "symlink")


def test_keras_compression_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    p = tmp_path / "bomb.keras"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, data in _keras_members().items():
            zf.writestr(n, data)
        zf.writestr("assets/zeros.bin", bytes(200 << 20))  # 200 MB of zeros -> ~200 KB
    assert p.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        _assert_refused(p, UnsafeCheckpointError, "compression bomb")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 32 << 20, peak  # nothing near 200 MB was ever inflated


# --------------------------------------------------------------------------- code in configs


def _marshalled_lambda(marker: Path) -> str:
    """What Keras 2 writes for `Lambda(lambda x: ...)`: base64 of marshalled bytecode. This one
    creates `marker` if anything ever runs it."""
    code = compile(f"open({str(marker)!r}, 'w').write('ran')", "<lambda>", "exec")
    return base64.b64encode(marshal.dumps(code)).decode()


def _keras_with(tmp_path: Path, extra_layers: list[dict]) -> Path:
    members = _keras_members()
    cfg = json.loads(members["config.json"])
    cfg["config"]["layers"].extend(extra_layers)
    members["config.json"] = json.dumps(cfg).encode()
    p = tmp_path / "code.keras"
    with zipfile.ZipFile(p, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return p


def _h5_with(tmp_path: Path, extra_layers: list[dict]) -> Path:
    p = tmp_path / "code.h5"
    p.write_bytes(KERAS2_FULL.read_bytes())
    with h5py.File(p, "r+") as f:
        raw = f.attrs["model_config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        cfg["config"]["layers"].extend(extra_layers)
        f.attrs["model_config"] = json.dumps(cfg).encode()
    return p


def _lambda_layers(marker: Path) -> list[dict]:
    keras2 = {
        "class_name": "Lambda",
        "config": {
            "name": "sneaky_lambda",
            "function": [_marshalled_lambda(marker), None, None],
            "function_type": "lambda",
            "output_shape": None,
        },
    }
    keras3 = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "config": {
            "name": "keras3_lambda",
            "function": {
                "class_name": "__lambda__",
                "config": {"code": _marshalled_lambda(marker), "defaults": None, "closure": None},
            },
        },
        "registered_name": None,
    }
    return [keras2, keras3]


def _foreign_module_layer() -> dict:
    return {
        "module": "evil_plugin.layers",
        "class_name": "Backdoor",
        "config": {"name": "backdoor", "trainable": True},
        "registered_name": "evil_plugin>Backdoor",
    }


@pytest.mark.parametrize("container", ["keras", "h5"])
def test_lambda_and_foreign_modules_are_findings_and_nothing_runs(
    tmp_path: Path, container: str
) -> None:
    marker = tmp_path / "code_ran"
    layers = [*_lambda_layers(marker), _foreign_module_layer()]
    path = (_keras_with if container == "keras" else _h5_with)(tmp_path, layers)
    # A module that would betray its import, reachable on sys.path of the audit process.
    plugin = tmp_path / "plugins" / "evil_plugin"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    (plugin / "layers.py").write_text("class Backdoor: pass\n")
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(plugin.parent)!r})
        from ckptdoc.auditor import audit_file
        rep = audit_file({str(path)!r})
        heavy = sorted(m for m in sys.modules
                       if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'evil_plugin'))
        print(json.dumps({{"error": rep.error, "heavy": heavy, "findings": [
            [f.rule, f.severity.value, f.group, f.message] for f in rep.findings]}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is None
    assert out["heavy"] == []  # neither Keras nor the file's module was imported
    assert not marker.exists()  # and the marshalled code never ran
    ck = {f[2]: f for f in out["findings"] if f[0] == "CK001"}
    assert set(ck) == {"sneaky_lambda", "keras3_lambda", "backdoor"}
    assert all(f[1] == "warning" for f in ck.values())
    assert "bytecode" in ck["sneaky_lambda"][3]
    assert "evil_plugin.layers" in ck["backdoor"][3]


def test_ck001_is_selectable_and_shows_in_every_report(tmp_path: Path) -> None:
    path = _keras_with(tmp_path, _lambda_layers(tmp_path / "m")[:1])

    def ck(selection: RuleSelection | None = None) -> list[tuple[str, str]]:
        return [(f.rule, f.group) for f in audit_file(path, selection).findings
                if f.rule.startswith("CK")]  # fmt: skip

    assert ck() == [("CK001", "sneaky_lambda")]
    assert ck(RuleSelection(ignore=frozenset({"CK"}))) == []
    assert ck(RuleSelection(select=frozenset({"BN"}))) == []
    assert ck(RuleSelection(severities={"CK001": Severity.ERROR})) == [("CK001", "sneaky_lambda")]
    result = CliRunner().invoke(app, ["audit", str(path), "--select", "CK", "-f", "json"])
    assert result.exit_code == 0, result.output  # a warning: the default gate fails on errors
    findings = json.loads(result.stdout)["files"][0]["findings"]
    assert [(f["rule"], f["group"]) for f in findings] == [("CK001", "sneaky_lambda")]
    sarif = CliRunner().invoke(app, ["audit", str(path), "--format", "sarif"])
    assert '"ruleId": "CK001"' in sarif.stdout
    explained = CliRunner().invoke(app, ["rule", "CK001"])
    assert explained.exit_code == 0 and "Lambda" in explained.stdout


def test_clean_models_have_no_ck001() -> None:
    for path in [*K.glob("*.keras"), *K.glob("*.h5"), KERAS2_FULL]:
        assert not [f for f in audit_file(path).findings if f.rule == "CK001"], path


@pytest.mark.tf
def test_recalibrate_refuses_lambda_unless_opted_in(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from ckptdoc.recalibrate import model_io

    marker = tmp_path / "code_ran"
    path = _keras_with(tmp_path, _lambda_layers(marker)[:1])
    with pytest.raises(UnsafeCheckpointError, match="sneaky_lambda.*--allow-unsafe-code"):
        model_io.load(path)
    assert not marker.exists()


def _pb_field(number: int, payload: bytes | int) -> bytes:
    """A protobuf field: varint (int) or length-delimited (bytes)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_lambda_in_a_savedmodel_is_a_finding(tmp_path: Path) -> None:
    # A tf-keras SavedModel lists every layer's class and config in keras_metadata.pb
    # (SavedMetadata: nodes = 1 {node_id = 2, identifier = 4, metadata = 5}); add a Lambda.
    import shutil

    src = ROOT / "tests" / "data" / "bundle" / "tfkeras_model_save" / "model"
    model = tmp_path / "model"
    shutil.copytree(src, model)
    lam = _lambda_layers(tmp_path / "code_ran")[0]
    node = (
        _pb_field(2, 99)
        + _pb_field(4, b"_tf_keras_layer")
        + _pb_field(5, json.dumps({**lam, "name": lam["config"]["name"]}).encode())
    )
    meta = model / "keras_metadata.pb"
    meta.write_bytes(meta.read_bytes() + _pb_field(1, node))
    report = audit_file(model)
    assert report.error is None and len(report.groups) == 1  # the BN layer is still found
    assert [(f.rule, f.group) for f in report.findings if f.rule == "CK001"] == [
        ("CK001", "sneaky_lambda")
    ]
    assert not (tmp_path / "code_ran").exists()

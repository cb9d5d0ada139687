"""Remote checkpoints against a real S3-compatible server on loopback (moto's server, started
and stopped here; the client is s3fs, configured the usual way, `AWS_ENDPOINT_URL` included):
the same report as the local files, ranged reads measured, store errors as unreadable files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import ckptdoc  # noqa: E402
from ckptdoc.formats import open_checkpoint  # noqa: E402
from ckptdoc.formats.remote import TRANSFER  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="models")
    for path in SAMPLES.rglob("*"):
        if path.is_file() and "data" not in path.relative_to(SAMPLES).parts[:1]:
            client.upload_file(str(path), "models", f"samples/{path.relative_to(SAMPLES)}")
    big = _big_bundle(tmp_path_factory.mktemp("big"))
    for path in big.parent.iterdir():
        client.upload_file(str(path), "models", f"big/{path.name}")
    client.upload_file(str(_big_h5(tmp_path_factory.mktemp("bigh5"))), "models", "big/model.h5")
    try:
        yield env
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _big_bundle(folder: Path) -> Path:
    """tf1_healthy's variables plus one 48 MiB non-BN variable, written by the test writer."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_writer import write_bundle  # the tests' independent writer

    tensors = {}
    with open_checkpoint(SAMPLES / "tf1_healthy") as ckpt:
        for key in ckpt.tensors:
            tensors[key] = np.asarray(ckpt.read(key))
    tensors["embedding/big"] = np.ones((12 * 1024, 1024), np.float32)
    prefix = folder / "model.ckpt"
    write_bundle(prefix, tensors)
    return prefix


def _big_h5(folder: Path) -> Path:
    """keras2_healthy.h5 plus one 80 MiB contiguous dataset: past the full-scan size."""
    import h5py

    path = folder / "model.h5"
    shutil.copy(SAMPLES / "keras2_healthy.h5", path)
    with h5py.File(path, "r+") as f:
        f.create_dataset("padding", shape=(80 * 256, 1024), dtype="float32")[...] = 0.25
    return path


def test_big_hdf5_is_read_by_ranges(s3: dict[str, str]) -> None:
    before = TRANSFER.bytes
    report = ckptdoc.audit("s3://models/big/model.h5", config=False)
    [file] = report.files
    assert file.error is None and len(file.groups) == 3 and not file.findings
    sent = TRANSFER.bytes - before
    assert sent < 4 << 20, f"{sent} bytes for an 80 MiB HDF5 file"
    local = ckptdoc.audit(SAMPLES / "keras2_healthy.h5", config=False).files[0]
    assert [(g.name, g.status) for g in file.groups] == [(g.name, g.status) for g in local.groups]


def test_same_report_as_the_local_files(s3: dict[str, str]) -> None:
    remote = ckptdoc.audit("s3://models/samples/", config=False)
    local = ckptdoc.audit(SAMPLES, config=False)
    assert len(remote.files) == len(local.files) == 15
    for r, loc in zip(remote.files, local.files, strict=True):
        assert r.path.startswith("s3://models/samples/")
        assert r.error is None, r.error
        assert (r.format, r.groups, r.findings) == (loc.format, loc.groups, loc.findings)
    assert remote.exit_code() == local.exit_code() == 1


def test_only_the_index_and_bn_ranges_are_transferred(s3: dict[str, str]) -> None:
    before_bytes, before_requests = TRANSFER.bytes, TRANSFER.requests
    report = ckptdoc.audit("s3://models/big/model.ckpt", config=False)
    [file] = report.files
    assert file.error is None and len(file.groups) == 3 and not file.findings
    sent = TRANSFER.bytes - before_bytes
    assert sent < 1 << 20, f"{sent} bytes for a 48 MiB checkpoint"
    assert TRANSFER.requests - before_requests <= 6


def test_store_errors_are_unreadable_files_not_tracebacks(s3: dict[str, str]) -> None:
    env = {**os.environ, **s3}
    out = subprocess.run(
        [sys.executable, "-m", "ckptdoc", "audit", "--isolated", "--format", "json",
         "s3://models/samples/keras3_healthy.keras", "s3://models/nope/model.ckpt",
         "s3://no-such-bucket/model.keras"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    files = json.loads(out.stdout)["files"]
    assert [("error" in f) for f in files] == [False, True, True]
    assert all(f["path"].startswith("s3://") for f in files)
    assert "s3://models/nope/model.ckpt" in files[1]["error"]


def test_an_unreachable_endpoint_is_an_unreadable_file() -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    out = subprocess.run(
        [sys.executable, "-m", "ckptdoc", "audit", "--isolated", "s3://models/m.keras"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    assert "s3://models/m.keras" in out.stdout


def test_jobs_and_ls_on_remote_files(s3: dict[str, str]) -> None:
    one = ckptdoc.audit("s3://models/samples/", config=False, jobs=1)
    two = ckptdoc.audit("s3://models/samples/", config=False, jobs=2)
    assert one.to_dict() == two.to_dict()
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    result = CliRunner().invoke(app, ["ls", "s3://models/samples/tf1_nan/model.ckpt.index",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [g["name"] for g in doc["groups"]] == [
        "batch_normalization", "batch_normalization_1", "batch_normalization_2"]


def test_the_mirror_is_removed(s3: dict[str, str], tmp_path: Path) -> None:
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("ckptdoc-remote-*"))
    with open_checkpoint("s3://models/samples/savedmodel_healthy") as ckpt:
        assert ckpt.format == "savedmodel"
    after = set(Path(tempfile.gettempdir()).glob("ckptdoc-remote-*"))
    assert after <= before
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_plain_http_server(tmp_path: Path) -> None:
    # https:// and http:// through fsspec's HTTP filesystem: no listing needed for a bundle
    # (shard names come from the index header); a server without range support still works.
    import functools
    import http.server
    import threading

    pytest.importorskip("aiohttp")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(SAMPLES)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for name in ("tf1_nan/model.ckpt", "keras2_healthy.h5",
                     "tf1_update_ops_missing/model.ckpt.index"):
            remote = ckptdoc.audit(f"{base}/{name}", config=False).files[0]
            local = ckptdoc.audit(SAMPLES / name, config=False).files[0]
            assert remote.error is None, remote.error
            assert (remote.groups, remote.findings) == (local.groups, local.findings)
        missing = ckptdoc.audit(f"{base}/nope/model.ckpt", config=False).files[0]
        assert missing.error == f"{base}/nope/model.ckpt: no such object or checkpoint prefix"
    finally:
        server.shutdown()

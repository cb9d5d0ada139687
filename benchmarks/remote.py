"""Benchmark (not a test): auditing a big TF checkpoint in an object store vs on local disk.

    python benchmarks/remote.py [--size-mb 1100] [--repeats 3]

Writes a ~1.1 GB TF1 checkpoint (sample_ckpts/tf1_healthy's 3 BN layers plus big non-BN
variables, by the tests' bundle writer), uploads it to an S3-compatible server started on
loopback (moto's, in this process), and prints for the local and the remote audit: wall time
(median) and bytes transferred (client side: every byte ckptdoc fetched from the store).
Target: the remote audit transfers under 20 MB. Needs the test extra (moto, s3fs, boto3).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    import ckptdoc
    from ckptdoc.formats import open_checkpoint
    from ckptdoc.formats.remote import TRANSFER

    sys.path.insert(0, str(ROOT / "tests"))
    from bundle_writer import write_bundle

    work = Path(tempfile.mkdtemp(prefix="ckptdoc-bench-remote-"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=f"http://{host}:{port}")
        s3fs.S3FileSystem.clear_instance_cache()
        tensors: dict[str, np.ndarray | bytes] = {}
        with open_checkpoint(ROOT / "sample_ckpts" / "tf1_healthy") as ckpt:
            for key in ckpt.tensors:
                tensors[key] = np.asarray(ckpt.read(key))
        chunk = 64  # MiB per extra variable
        for i in range(args.size_mb // chunk):
            tensors[f"tower_{i:02d}/weights"] = np.full((chunk * 256, 1024), i, np.float32)
        prefix = work / "model.ckpt"
        write_bundle(prefix, tensors)
        size = sum(p.stat().st_size for p in work.iterdir())
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket="bench")
        for path in work.iterdir():
            client.upload_file(str(path), "bench", f"run/{path.name}")

        def timed(target: str | Path) -> tuple[float, int, int]:
            runs, sent, requests = [], 0, 0
            for _ in range(args.repeats):
                b, r = TRANSFER.bytes, TRANSFER.requests
                start = time.perf_counter()
                report = ckptdoc.audit(target, config=False)
                runs.append(time.perf_counter() - start)
                sent, requests = TRANSFER.bytes - b, TRANSFER.requests - r
                assert report.files[0].error is None, report.files[0].error
            return statistics.median(runs), sent, requests

        t_local, _, _ = timed(prefix)
        t_remote, sent, requests = timed("s3://bench/run/model.ckpt")
        print(f"checkpoint: {size / 1e9:.2f} GB, 3 BN layers")
        print("| audit | wall time (median) | bytes transferred | ranged GETs |")
        print("|---|---|---|---|")
        print(f"| local disk | {t_local:.3f} s | - | - |")
        print(f"| s3:// (moto on loopback) | {t_remote:.3f} s | {sent / 1e6:.3f} MB "
              f"({sent / size:.5%} of the checkpoint) | {requests} |")
        print(f"target: < 20 MB transferred: {'met' if sent < 20e6 else 'missed'}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

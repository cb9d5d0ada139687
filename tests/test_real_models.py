"""Real models made by others (tests/data/real/*/PROVENANCE.md): no false finding, every BN
layer found, and from the strongest evidence the file has."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptdoc.auditor import audit_file, evidence_groups
from ckptdoc.formats import open_checkpoint

REAL = Path(__file__).resolve().parent / "data" / "real"

# path, BN layers, how they are found, the findings a correct audit gives (all info-level)
CASES = [
    ("fer/emotion_model.hdf5", 14, "config", {"BN006": 1}),
    ("basic-pitch/nmp", 3, "config", {}),
    ("musicnn-mtt-vgg", 6, "graph", {"BN006": 4}),
    ("inaspeechsegmenter/keras_speech_music_noise_cnn.hdf5", 8, "config", {}),
]


@pytest.mark.parametrize(("rel", "layers", "found_by", "findings"), CASES)
def test_real_model(rel: str, layers: int, found_by: str, findings: dict[str, int]) -> None:
    report = audit_file(REAL / rel)
    assert report.error is None
    assert len(report.groups) == layers
    assert {g.found_by for g in report.groups} == {found_by}
    counts: dict[str, int] = {}
    for f in report.findings:
        assert f.severity.value == "info", f
        counts[f.rule] = counts.get(f.rule, 0) + 1
    assert counts == findings


def test_real_tf1_graph_proves_the_updates_run() -> None:
    # TF 1.x graph: VariableV2, Switch / Merge control flow, UPDATE_OPS under the train op.
    with open_checkpoint(REAL / "musicnn-mtt-vgg") as ckpt:
        groups = evidence_groups(ckpt)
    assert len(groups) == 6
    for g in groups:
        assert g.evidence.updates_run is True
        assert "`Adam` runs this layer's update ops" in g.evidence.updates_detail
        assert g.evidence.momentum == pytest.approx(0.99)

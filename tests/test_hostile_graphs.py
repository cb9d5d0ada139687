"""Issue 22 §2: graphs and metadata built to exhaust CPU or memory, or to trip the decoder,
cost neither the verdict the tensors give nor more than seconds and 3 GiB.

Each case runs `ckptdoc audit` and `ckptdoc ls --all` in a child process capped at 3 GiB of
address space and 60 s (the review's limits): before the work budgets, six of them ran past
60 s or ran out of memory, and `ls` printed a traceback on the object-graph chain.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile_graphs import (
    GRAPHS,
    write_case,
    write_deep_metadata_case,
    write_object_chain_case,
)

_LIMIT_BYTES = 3 << 30
_LIMIT_SECONDS = 60


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_LIMIT_BYTES, _LIMIT_BYTES))


def _ckptdoc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckptdoc", *args], capture_output=True,
                          text=True, timeout=_LIMIT_SECONDS, preexec_fn=_capped, check=False)


CASES: dict[str, Callable[[Path], Path]] = {
    **{name: (lambda folder, name=name: write_case(folder, name)) for name in GRAPHS},
    "object_chain": write_object_chain_case,
    "deep_metadata": write_deep_metadata_case,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_evidence_keeps_the_tensors_verdict(tmp_path: Path, case: str) -> None:
    target = CASES[case](tmp_path)
    audit = _ckptdoc("audit", str(target), "--format", "json")
    assert audit.returncode == 1, audit.stderr[-2000:]
    (report,) = json.loads(audit.stdout)["files"]
    assert report.get("error") is None
    assert [(f["rule"], f["group"]) for f in report["findings"] if f["rule"] != "CK001"] \
        == [("BN002", "bn")]
    listing = _ckptdoc("ls", "--all", str(target))
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "Traceback" not in listing.stdout + listing.stderr


def test_a_graph_past_its_budget_is_a_note_naming_the_reason(tmp_path: Path) -> None:
    from ckptdoc.auditor import audit_file

    report = audit_file(write_case(tmp_path, "long_prefixes"))
    assert any("inlined names grow too long" in n for n in report.notes), report.notes
    report = audit_file(write_case(tmp_path, "switch_chain"))
    assert any("more analysis than its size justifies" in n for n in report.notes), report.notes


def test_real_graphs_stay_within_budget() -> None:
    # The budgets must never cost a real graph its evidence: every committed .meta and
    # saved_model.pb decodes and analyses.
    from ckptdoc.formats.graph import read_meta_graph, read_savedmodel_graph
    from ckptdoc.graph_bn import analyze

    root = Path(__file__).resolve().parent.parent
    metas = sorted(root.glob("sample_ckpts/**/*.meta")) + sorted(root.glob("tests/data/**/*.meta"))
    pbs = sorted(root.glob("tests/data/**/saved_model.pb"))
    assert metas and pbs
    for path in metas:
        analyze(read_meta_graph(path))
    for path in pbs:
        graph = read_savedmodel_graph(path)
        if graph is not None:
            analyze(graph)

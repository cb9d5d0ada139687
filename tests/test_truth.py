"""Truth under adversity (issue 21): no source of evidence may hide what the tensors show.

Files: tests/data/truth/ (scripts/make_truth_testdata.py) and ones written here. Each test is a
case where one source, trusted alone, gave a silently wrong verdict before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ckptdoc.auditor import audit_file, evidence_groups
from ckptdoc.formats import open_checkpoint
from tests.bundle_writer import write_bundle
from tests.ckpt_factory import healthy_stats, write_keras2_weights

TRUTH = Path(__file__).resolve().parent / "data" / "truth"


def _codes(path: Path, **kw: object) -> dict[str, list[tuple[str, str]]]:
    report = audit_file(path)
    assert report.error is None, report.error
    out: dict[str, list[tuple[str, str]]] = {}
    for f in report.findings:
        out.setdefault(f.rule, []).append((f.group, f.severity.value))
    return out


# --------------------------------------------------------------------------- 1. zero-debias


def test_zero_debias_members_are_what_inference_reads() -> None:
    # The graph's update ops also write `bn/bn/moving_*/biased`; only the fused BN op's inputs
    # are the statistics. Before: the variance was the (all-zero) accumulator: "BN006, info".
    with open_checkpoint(TRUTH / "tf1_zero_debias") as ckpt:
        (group,) = evidence_groups(ckpt)
    assert group.members["moving_mean"] == "bn/moving_mean"
    assert group.members["moving_variance"] == "bn/moving_variance"
    assert set(group.extras.values()) >= {"bn/bn/moving_mean/biased",
                                          "bn/bn/moving_variance/biased"}
    codes = _codes(TRUTH / "tf1_zero_debias")
    assert codes.get("BN002") == [("bn", "error")]
    assert "BN006" not in codes


def test_zero_debias_trainable_only_saver_is_bn001() -> None:
    assert _codes(TRUTH / "tf1_zero_debias_trainable_only").get("BN001") == [("bn", "error")]


# --------------------------------------------------------------------------- 2. batch stats only


def test_batch_statistics_without_moving_statistics_is_an_error() -> None:
    # tf.nn.moments over the batch into tf.nn.batch_normalization, nothing else: before, 0 BN
    # layers and exit 0.
    report = audit_file(TRUTH / "tf1_batch_stats_only")
    assert [g.name for g in report.groups] == ["norm1"]
    codes = _codes(TRUTH / "tf1_batch_stats_only")
    assert codes == {"BN011": [("norm1", "error")]}  # not BN001: no Saver lost anything


# --------------------------------------------------------------------------- 3. hand-made EMA


def test_unwired_ema_is_never_updated_not_dead_units() -> None:
    # ExponentialMovingAverage over the moments, its update op on no train op's path: the
    # averages are at their start, 0 and 0. Before: "BN006 dead units", exit 0.
    report = audit_file(TRUTH / "tf1_ema_unwired")
    assert [g.name for g in report.groups] == ["bn1", "bn2"]
    codes = _codes(TRUTH / "tf1_ema_unwired")
    assert codes == {"BN002": [("bn1", "error"), ("bn2", "error")]}
    bn002 = next(f for f in report.findings if f.rule == "BN002")
    assert "variance all 0" in bn002.message and "does not depend on" in bn002.message


# --------------------------------------------------------------------------- 4. Keras 1 nested


def test_keras1_nested_model_is_grouped_per_layer() -> None:
    # Five BN layers saved flat under one Sequential: before, one group and three broken
    # layers unreported.
    report = audit_file(TRUTH / "keras1_nested.h5")
    assert [g.name for g in report.groups] == [
        f"sequential_1/batchnormalization_{i}" for i in range(1, 6)]
    codes = _codes(TRUTH / "keras1_nested.h5")
    assert codes == {
        "BN002": [("sequential_1/batchnormalization_5", "error")],
        "BN003": [("sequential_1/batchnormalization_2", "error")],
        "BN004": [("sequential_1/batchnormalization_3", "error")],
    }


# --------------------------------------------------------------------------- 5. step counts


def _full_model(path: Path, stats: dict[str, np.ndarray], class_name: str,
                **config: object) -> Path:
    """A Keras 2 full-model `.h5` with one layer `bn` holding `stats`, whose config says it
    is a `class_name`."""
    write_keras2_weights(path, {"bn": stats})
    with h5py.File(path, "a") as f:
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = f.attrs["layer_names"]
        del f.attrs["layer_names"]
        f.move("bn", "model_weights/bn")
        f.attrs["keras_version"] = b"2.4.0"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {
            "name": "s", "layers": [{"class_name": class_name,
                                     "config": {"name": "bn", **config}}]}})
    return path


def _keras3_weights(path: Path, variance: np.ndarray, iterations: int,
                    mean: np.ndarray | None = None) -> Path:
    """A Keras 3 `.weights.h5` with one BN layer and an optimizer step counter."""
    with h5py.File(path, "w") as f:
        bn = f.create_group("layers/batch_normalization/vars")
        c = variance.size
        bn["0"] = np.linspace(0.8, 1.2, c).astype("float32")
        bn["1"] = np.linspace(-0.1, 0.1, c).astype("float32")
        bn["2"] = (np.linspace(-1, 1, c) if mean is None else mean).astype("float32")
        bn["3"] = variance.astype("float32")
        opt = f.create_group("optimizer/vars")
        opt["0"] = np.array(iterations, "int64")
        f.create_group("layers/dense/vars")["0"] = np.ones((c, 2), "float32")
    return path


def test_a_step_count_the_values_contradict_is_not_used(tmp_path: Path) -> None:
    # A Keras 2.12+ optimizer saved `iteration = 0`, yet the variances moved far from 1:
    # before, BN005 "100% of each moving statistic is still its initial value".
    path = _keras3_weights(tmp_path / "m.weights.h5", np.linspace(0.01, 3, 8), iterations=0)
    report = audit_file(path)
    assert [f.rule for f in report.findings] == []
    assert any("contradicts the values" in n for n in report.notes)


def test_a_short_run_is_bn005_by_default(tmp_path: Path) -> None:
    # 192 steps at the default 0.99: 14.5% of each statistic is still its initial value, and
    # every variance is consistent with that (>= 0.145). Before: clean unless configured.
    path = _keras3_weights(tmp_path / "m.weights.h5", np.linspace(0.2, 3, 8), iterations=192)
    report = audit_file(path)
    (finding,) = report.findings
    assert finding.rule == "BN005" and finding.severity.value == "warning"
    assert finding.details["initial_weight"] == pytest.approx(0.99**192)
    assert "fine-tuned" in finding.message


def test_a_step_count_explains_near_initial_statistics_but_does_not_hide_them(
    tmp_path: Path,
) -> None:
    # Statistics within 0.05 of 0 / 1 after 2000 steps at 0.99: the averages converged, the
    # inputs are standardized. Before, the step count removed the finding; now it explains it.
    stats = healthy_stats(8)
    stats["moving_mean"] = np.linspace(-0.02, 0.02, 8).astype("float32")
    stats["moving_variance"] = np.linspace(0.97, 1.03, 8).astype("float32")
    path = _full_model(tmp_path / "m.h5", stats, "BatchNormalization", momentum=0.99)
    with h5py.File(path, "a") as f:  # and an optimizer step counter
        f["optimizer_weights/Adam/iter:0"] = np.array(2000, "int64")
    (finding,) = audit_file(path).findings
    assert (finding.rule, finding.severity.value) == ("BN005", "info")
    assert "rests on the file's step counter" in finding.message


# --------------------------------------------------------------------------- 7. forged evidence


def test_forged_meta_cannot_hide_never_updated_statistics() -> None:
    # The .meta's FusedBatchNorm reads bn/gamma as its mean and bn/beta as its variance.
    report = audit_file(TRUTH / "tf1_forged_meta")
    assert [(f.rule, f.group, f.severity.value) for f in report.findings] == [
        ("BN002", "bn", "error")]
    assert any("reads `bn/gamma` as moving_mean" in n and "disagree" in n
               for n in report.notes)


def test_forged_meta_cannot_hide_a_nan_in_gamma() -> None:
    # The .meta takes the scale from `elsewhere/scale`, which the checkpoint lacks.
    codes = _codes(TRUTH / "tf1_forged_scale")
    assert list(codes) == ["BN003"]
    report = audit_file(TRUTH / "tf1_forged_scale")
    assert any("`bn/gamma` (gamma)" in n for n in report.notes)


def test_a_model_structure_that_calls_bn_something_else_hides_nothing(tmp_path: Path) -> None:
    # A Keras 2 full-model file whose config calls the BN layer `Dense`.
    stats = healthy_stats(4)
    stats["moving_variance"][1] = np.nan
    report = audit_file(_full_model(tmp_path / "m.h5", stats, "Dense"))
    assert [f.rule for f in report.findings] == ["BN003"]
    assert any("does not list it as one" in n for n in report.notes)


# --------------------------------------------------------------------------- the ledger


def test_unexplained_statistic_like_tensors_make_the_file_unverifiable(tmp_path: Path) -> None:
    # A flat checkpoint whose BN layer uses no convention's names: nothing groups it, and
    # before the audit said "0 BN layers, clean".
    prefix = tmp_path / "model.ckpt"
    rng = np.random.default_rng(0)
    write_bundle(prefix, {
        "block/w": rng.normal(size=(3, 3, 1, 4)).astype("float32"),
        "block/b": np.zeros(4, "float32"),
        "block/norm/s": np.ones(4, "float32"),
        "block/norm/avg_mean": np.zeros(4, "float32"),
        "block/norm/avg_var": np.ones(4, "float32"),
        "global_step": np.array(100, "int64"),
    })
    report = audit_file(prefix)
    (finding,) = report.findings
    assert finding.rule == "BN010" and finding.severity.value == "warning"
    assert finding.details["unexplained"] == ["block/norm/avg_mean", "block/norm/avg_var"]
    assert report.ledger is not None
    counts = report.ledger["counts"]
    assert counts["unexplained"] == 2 and counts["counter"] == 1 and counts["weights"] == 3
    assert sum(counts.values()) == 6  # every tensor in one bucket


def test_every_tensor_of_a_real_file_is_accounted_for() -> None:
    real = Path(__file__).resolve().parent / "data" / "real"
    for path in (real / "fer" / "emotion_model.hdf5", real / "musicnn-mtt-vgg",
                 real / "basic-pitch" / "nmp"):
        report = audit_file(path)
        assert report.ledger is not None
        with open_checkpoint(path) as ckpt:
            assert sum(report.ledger["counts"].values()) == len(ckpt.tensors)
        assert report.ledger["counts"]["unexplained"] == 0, report.ledger
        assert report.ledger["counts"]["bn"] > 0


# --------------------------------------------------------------------------- 8. code too deep


def test_code_nested_deeper_than_any_walk_is_found(tmp_path: Path) -> None:
    layer: dict[str, object] = {"class_name": "Lambda",
                                "config": {"name": "lam", "function_type": "lambda"}}
    for i in range(80):  # before: past the walker's depth limit, "no code"
        layer = {"class_name": "Sequential", "config": {"name": f"s{i}", "layers": [layer]}}
    path = write_keras2_weights(tmp_path / "m.h5", {"bn": healthy_stats(4)})
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = json.dumps(layer)
    codes = _codes(path)
    assert codes.get("CK001") == [("lam", "warning")]


def test_an_unreadable_config_is_no_proof_of_no_code(tmp_path: Path) -> None:
    path = write_keras2_weights(tmp_path / "m.h5", {"bn": healthy_stats(4)})
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = "[" * 100_000  # deeper than any JSON parser goes
    report = audit_file(path)
    (finding,) = [f for f in report.findings if f.rule == "CK001"]
    assert "cannot check the model for code" in finding.message


def test_ls_all_says_what_every_tensor_is() -> None:
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    res = CliRunner().invoke(app, ["ls", str(TRUTH / "tf1_zero_debias"), "--all",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {v["key"]: v for v in json.loads(res.stdout)["variables"]}
    assert rows["bn/moving_mean"]["bucket"] == "bn" and rows["bn/moving_mean"]["layer"] == "bn"
    # zero-debias state belongs to the layer (an extra), and says so
    assert rows["bn/bn/moving_mean/local_step"]["layer"] == "bn"
    assert rows["bn/gamma/Adam"]["bucket"] == "optimizer"
    assert rows["global_step"]["bucket"] == "counter"
    assert rows["conv1/w"]["bucket"] == "weights"
    assert {v["bucket"] for v in rows.values()} <= {"bn", "weights", "optimizer", "ema",
                                                     "counter"}


def test_names_from_files_reach_the_console_escaped_and_short(tmp_path: Path) -> None:
    # ls printed ESC, RLO and NUL raw, and a newline could start a CI workflow command.
    from typer.testing import CliRunner

    from ckptdoc.cli import app

    hostile = "bn\x1b[2J\u202e\n::error title=x::ok" + "z" * 5000
    path = write_keras2_weights(tmp_path / "m.h5", {hostile: healthy_stats(4)})
    for args in (["ls", str(path)], ["ls", str(path), "--all"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "\x1b" not in res.output and "\u202e" not in res.output
        assert not any(line.startswith("::") for line in res.output.splitlines())
        assert "\\x1b" in res.output and "more characters]" in res.output


def test_text_report_shows_whole_messages_that_do_not_start_with_their_evidence() -> None:
    # BN008's (and BN010's) message does not start with its evidence: the text report cut
    # its first characters ("(model): aved before training?").
    from rich.console import Console

    from ckptdoc.report import text
    from ckptdoc.report.model import AuditReport

    evidence = Path(__file__).resolve().parent / "data" / "evidence"
    console = Console(record=True, width=200)
    text.render(AuditReport((audit_file(evidence / "untrained.keras"),)), console)
    shown = console.export_text()
    assert "(model): all 1 BN layers are exactly at their initial values: saved before " \
        "training?" in shown


def test_a_graph_that_breaks_the_reader_costs_no_verdict(tmp_path: Path) -> None:
    # A float Const whose value is a varint too large for a float's 32 bits: the graph reader
    # failed with a struct error, the file became "internal error" (exit 2) and the BN002 the
    # tensors show was lost; `ls` printed a traceback.
    from typer.testing import CliRunner

    from ckptdoc.cli import app
    from tests.bundle_writer import field_bytes, field_varint
    from tests.ckpt_factory import never_updated_stats

    prefix = tmp_path / "model.ckpt"
    write_bundle(prefix, {f"bn/{k}": v for k, v in never_updated_stats(4).items()})
    tensor = field_varint(1, 1) + field_varint(5, 1 << 40)  # DT_FLOAT, float_val as varint
    attr = field_bytes(1, b"value") + field_bytes(2, field_bytes(8, tensor))
    node = field_bytes(1, b"c") + field_bytes(2, b"Const") + field_bytes(5, attr)
    (tmp_path / "model.ckpt.meta").write_bytes(field_bytes(2, field_bytes(1, node)))
    report = audit_file(prefix)
    assert report.error is None, report.error
    assert [(f.rule, f.group) for f in report.findings] == [("BN002", "bn")]
    # The malformed constant is read as unknown; the rest of the graph stays evidence.
    assert not any("could not read the graph" in n for n in report.notes)
    res = CliRunner().invoke(app, ["ls", str(prefix)])
    assert res.exit_code == 0 and "Traceback" not in res.output


def _forged_keras_metadata(tmp_path: Path, forge: Any) -> Path:
    """tf-keras's SavedModel (healthy, with keras_metadata.pb) with each metadata entry's
    JSON replaced by `forge(json_text)`."""
    import shutil

    from ckptdoc.formats.proto import decode_keras_metadata_pb
    from tests.bundle_writer import field_bytes, field_varint

    src = Path(__file__).resolve().parent / "data" / "bundle" / "tfkeras_model_save" / "model"
    folder = tmp_path / "model"
    shutil.copytree(src, folder)
    entries = decode_keras_metadata_pb((folder / "keras_metadata.pb").read_bytes())
    out = b"".join(
        field_bytes(1, field_varint(2, node) + field_bytes(4, ident.encode())
                    + field_bytes(5, forge(text).encode()))
        for node, (ident, text) in entries.items())
    (folder / "keras_metadata.pb").write_bytes(out)
    return folder


def test_keras_metadata_that_renames_bn_hides_nothing(tmp_path: Path) -> None:
    honest = audit_file(Path(__file__).resolve().parent / "data" / "bundle"
                        / "tfkeras_model_save" / "model")
    folder = _forged_keras_metadata(
        tmp_path, lambda text: text.replace('"BatchNormalization"', '"Dense"'))
    forged = audit_file(folder)
    assert forged.error is None, forged.error
    assert len(forged.groups) == len(honest.groups) > 0  # every BN layer still audited


def test_hostile_keras_metadata_costs_no_verdict(tmp_path: Path) -> None:
    # 100k-deep JSON in every entry: RecursionError before; now the layers are found from the
    # object graph and names, and CK001 says the config could not be checked for code.
    folder = _forged_keras_metadata(tmp_path, lambda text: "[" * 100_000)
    report = audit_file(folder)
    assert report.error is None, report.error
    assert report.groups
    assert any(f.rule == "CK001" and f.details.get("cannot_verify") for f in report.findings)


def test_a_keras3_config_that_renames_bn_hides_nothing(tmp_path: Path) -> None:
    # config.json of a .keras calling every BatchNormalization `Dense`: the variables carry no
    # names in Keras 3, so before, the file read "no batch-norm layers found", exit 0.
    import zipfile

    src = Path(__file__).resolve().parent.parent / "sample_ckpts" / "keras3_broken.keras"
    forged = tmp_path / "forged.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(forged, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"BatchNormalization"', b'"Dense"')
            zout.writestr(item, data)
    honest, report = audit_file(src), audit_file(forged)
    assert len(report.groups) == len(honest.groups) == 3
    assert [f.rule for f in report.findings] == [f.rule for f in honest.findings]
    assert sum("calls" in n and "'Dense'" in n for n in report.notes) == 3

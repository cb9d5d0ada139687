"""The one recalibration policy, the same for every target:

    measure -> refuse non-finite statistics -> self-check against the model's own inference
    -> compare on held-out data -> refuse, or write atomically with the audit of the complete
    copy as the last check -> Outcome

The CLI and the Python API both call `run`; the fault-injection tests drive `commit`, the
write step it uses. Must not know: Keras, TensorFlow, file formats (the targets do), how an
outcome is printed or which exit code it maps to (both the CLI's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.report import WORSE_CAUSES, EvalResult, RecalibrationReport
from ckptdoc.recalibrate.targets.base import Fix, Progress, Target, non_finite, unaccepted


@dataclass(frozen=True)
class Outcome:
    """What happened: written (maybe with a --force warning) or refused, and why."""

    input: Path
    report: RecalibrationReport
    output: Path | None = None
    #: Why nothing was written; None when the copy landed.
    refused: str | None = None
    #: A refusal that --force overrode.
    warning: str | None = None
    #: The audit of the new file: {"available", "errors", "findings"}.
    audit: dict[str, Any] | None = None
    #: Why this process wrote nothing although nothing was refused (a multi-worker run's
    #: other workers: the chief writes).
    skipped: str | None = None

    @property
    def written(self) -> bool:
        return self.output is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "input": str(self.input),
            "output": None if self.output is None else str(self.output),
            "written": self.written,
            "refused": self.refused,
            "audit": self.audit,
            "report": self.report.to_dict(),
        }
        if self.warning:
            d["warning"] = self.warning
        if self.skipped:
            d["skipped"] = self.skipped
        return d


class Refused(Exception):
    """The staged copy failed a check: nothing lands."""


@dataclass
class AuditCheck:
    """The last check on the staged copy: ckptdoc's own audit (no TensorFlow). Audit errors
    refuse the write unless `force`."""

    force: bool
    summary: dict[str, Any] = field(default_factory=dict)

    def __call__(self, tmp: Path) -> None:
        self.summary.update(audit_copy(tmp))
        errors = self.summary.get("errors", [])
        if errors and not self.force:
            raise Refused("the audit of the recalibrated file still finds errors: "
                          + "; ".join(errors) + ". Nothing written")


def run(
    target: Target,
    options: Options,
    dest: Path | None = None,
    *,
    in_place: bool = False,
    progress: Progress | None = None,
) -> Outcome:
    """Recalibrate `target` and, unless a check refuses, write the fixed copy to `dest`
    (default: `target.default_output()`) or over the input (`in_place`, keeping a backup)."""
    refuse_unaccepted(target, options)
    dest = target.path if in_place else (dest or target.default_output())
    target.check_output(dest, in_place)
    measured = target.measure(options, progress)
    report = measured.report
    mismatch, agreed = data_check(target, options)
    if agreed:
        report = dataclasses.replace(report, notes=(*report.notes, agreed))
    if mismatch and not options.force:
        return Outcome(target.path, report, refused=mismatch + ". Nothing written")
    refused, worse = judge(report, measured.new_values, options.force)
    if mismatch:
        worse = mismatch if worse is None else f"{mismatch}; {worse}"
    if refused:
        refused += ". Nothing written"
        if report.got_worse:
            refused += accept_hint(target.path)
        return Outcome(target.path, report, refused=refused)
    if not measured.writes:
        return Outcome(target.path, report, skipped="a worker of a multi-worker run: the chief "
                       "writes the output")
    audit = AuditCheck(options.force)
    try:
        notes = commit(measured.fix, dest, in_place, audit)
    except Refused as exc:
        return Outcome(target.path, report, refused=str(exc), audit=audit.summary)
    if notes:
        report = dataclasses.replace(report, notes=(*report.notes, *notes))
    return Outcome(target.path, report, output=dest, audit=audit.summary,
                   warning=None if worse is None else worse + "; --force: written anyway")


def refuse_unaccepted(target: Target, options: Options) -> None:
    """An option this kind of model does not take is refused, never silently ignored."""
    flags = unaccepted(target, options)
    if flags:
        raise RecalibrationError(
            f"{' and '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply to "
            f"{target.path} (a {target.kind} model): "
            + {"keras-file": "--feed / --set / --predictions are for TF1 graph checkpoints",
               "tf2-object": "--feed / --set / --predictions are for TF1 graph checkpoints",
               "tf1-graph": "a TF1 graph runs in one session on one device, in precise mode"
               }.get(target.kind, "see ckptdoc recalibrate --help"))


#: The data check before writing compares over at most this many samples (one inference
#: pass over them): the stored statistics against the data's.
DATA_CHECK_SAMPLES = 1024


def data_check(target: Target, options: Options) -> tuple[str | None, str | None]:
    """(why healthy statistics must not be overwritten with this data, or None; a note that
    the stored statistics already agreed with it, or None). Statistics the audit finds broken
    are recalibrated whatever the data looks like: against them any data disagrees."""
    from ckptdoc.auditor import audit_file
    from ckptdoc.rules.data import MISMATCH_RATIO, MISMATCH_SHIFT

    audit = audit_file(target.path)
    if audit.error or any(f.severity.value == "error" for f in audit.findings):
        return None, None
    # Healthy: no finding at all on the layer (a barely-moved or untrained layer is no
    # statistic worth keeping), and no longer the initial 0 / 1.
    flagged = {f.group for f in audit.findings}
    if "(model)" in flagged:  # an untrained model (BN008): nothing healthy to keep
        return None, None
    samples = options.budget.samples
    head = dataclasses.replace(options, batches=None, samples=min(
        samples if samples is not None else DATA_CHECK_SAMPLES, DATA_CHECK_SAMPLES))
    try:
        comparison = target.observe(head, None)
    except RecalibrationError as exc:  # e.g. data that can be read only once
        return None, f"the data check before writing could not run: {exc}"
    bad = [f"{layer.layer} ({layer.describe()})" for layer in comparison.disagreeing
           if layer.verdict == "mismatch" and layer.layer not in flagged and not layer.initial]
    if bad:
        hint = comparison.preprocessing()
        return ("the audit finds the stored statistics healthy, and the data disagrees with "
                f"them past BN012's error threshold (means off by over {MISMATCH_SHIFT:g} sd, "
                f"or variance off x{MISMATCH_RATIO:g}): {', '.join(bad[:4])}"
                f"{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}"
                f"{f'; {hint}' if hint else ''}. Does the data match the model's "
                "preprocessing? `ckptdoc audit MODEL --data DATA -v` shows the comparison; "
                "--force writes anyway"), None
    if comparison.worst == "agrees" and comparison.layers:
        worst = max(comparison.layers, key=lambda layer: layer.shift)
        return None, (f"the stored statistics already agreed with the data (largest gap: "
                      f"{worst.layer}, {worst.describe()}): recalibration changed them little")
    return None, None


def accept_hint(path: Path) -> str:
    """How to accept, in the gate, a model that works with the statistics it has (trained
    with BN in inference mode): its BN002 ignored for this file, or a baseline."""
    return (f". If the model works as it is, accept it in the audit gate: add "
            f"`per-file-ignores = {{ \"{path.as_posix()}\" = [\"BN002\"] }}` to [tool.ckptdoc] "
            f"(paths relative to that file), or record it with `ckptdoc audit {path} "
            "--write-baseline ckptdoc-baseline.json`")


def judge(
    report: RecalibrationReport, new_values: Mapping[str, Sequence[Any]], force: bool
) -> tuple[str | None, str | None]:
    """The checks on a measurement, in order, for files and in-memory models alike:
    (why it is refused, or None; what `force` overrode, or None). Non-finite statistics are
    refused even with `force`; a failed self-check and worse held-out results only without.
    The caller says what refusing means for it (nothing written, the model unchanged)."""
    broken = non_finite(new_values)
    if broken:  # never written, --force or not: NaN statistics make every output NaN
        return (f"the new statistics of {', '.join(broken)} are not finite (NaN or Inf): the "
                "data or the model's activations hold NaN / Inf values. Check the data (and any "
                "preprocessing)"), None
    problems = []
    check = report.self_check
    if check is not None and not check.passed:
        problems.append(check.refusal())
    if report.got_worse:
        problems.append(_worse_message(report))
    if not problems:
        return None, None
    if not force:
        return "; ".join(problems), None
    return None, "; ".join(problems)


def commit(fix: Fix, dest: Path, in_place: bool, check: AuditCheck) -> list[str]:
    """The write step of every target: atomic, `check` on the complete copy before it lands."""
    return fix.write(dest, in_place, check)


def _worse_message(report: RecalibrationReport) -> str:
    return ("held-out results are WORSE after recalibration "
            f"({eval_line(report.eval_before)} before, {eval_line(report.eval_after)} after). "
            f"Possible causes: {WORSE_CAUSES}")


def eval_line(ev: EvalResult | None) -> str:
    if ev is None:
        return "n/a"
    if ev.accuracy is not None:
        return f"accuracy {ev.accuracy:.4f}"
    return f"{ev.loss_name} {ev.loss:.4g}"


def audit_copy(path: Path) -> dict[str, Any]:
    """Audit the new file with ckptdoc's own audit (never imports TensorFlow)."""
    from ckptdoc.auditor import audit_file

    rep = audit_file(path)
    if rep.error:
        return {"available": True, "errors": [f"unreadable: {rep.error}"], "findings": []}
    findings = [
        {"rule": f.rule, "severity": getattr(f.severity, "value", str(f.severity)),
         "group": f.group, "message": f.message}
        for f in rep.findings
    ]
    errors = [f"{f['rule']} {f['group']}: {f['message']}" for f in findings
              if f["severity"] == "error"]
    return {"available": True, "errors": errors, "findings": findings}

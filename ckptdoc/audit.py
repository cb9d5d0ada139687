"""Audit: paths -> checkpoints -> BN groups -> findings. Never imports TensorFlow."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ckptdoc.errors import CheckpointError
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.resolve import find_checkpoints
from ckptdoc.groups import find_groups
from ckptdoc.report.model import AuditReport, FileReport, GroupResult, worst_code
from ckptdoc.rules import RuleSelection, check_group


def audit_file(path: str | Path, selection: RuleSelection | None = None) -> FileReport:
    """Audit one checkpoint. A file that cannot be read gives a report with `error` set."""
    selection = selection or RuleSelection()
    try:
        with open_checkpoint(path) as ckpt:
            groups = find_groups(ckpt)
            results, findings = [], []
            for group in groups:
                group_findings = check_group(group, ckpt.read, selection)
                findings.extend(group_findings)
                results.append(
                    GroupResult(
                        group.name,
                        worst_code(group_findings),
                        group.channels(ckpt.tensors),
                        dict(group.members),
                    )
                )
            return FileReport(
                str(path), ckpt.format, tuple(results), tuple(findings), None, tuple(ckpt.warnings)
            )
    except CheckpointError as exc:
        return FileReport(str(path), None, error=str(exc))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files and prefixes as given; directories searched for checkpoints.

    A SavedModel or checkpoint directory is one checkpoint; any other directory is searched.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not _is_checkpoint_dir(path):
            out.extend(find_checkpoints(path))
        else:
            out.append(path)
    return out


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / "saved_model.pb").exists() or (path / "variables" / "variables.index").exists()


def audit_paths(
    paths: Iterable[str | Path], selection: RuleSelection | None = None
) -> AuditReport:
    return AuditReport(tuple(audit_file(p, selection) for p in expand_paths(paths)))

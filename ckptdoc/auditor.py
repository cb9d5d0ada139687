"""Audit: paths -> checkpoints -> BN groups -> findings. Never imports TensorFlow."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ckptdoc.checkpoint import Checkpoint
from ckptdoc.config import Config
from ckptdoc.errors import CheckpointError, SkippedFileError
from ckptdoc.evidence import check_steps, with_tracking, with_training
from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.resolve import DATA_SHARD_RE, find_checkpoints, is_savedmodel_dir
from ckptdoc.formats.url import is_url
from ckptdoc.groups import BNGroup, Discovery, discover
from ckptdoc.ledger import account
from ckptdoc.report.model import AuditReport, FileReport, GroupResult, worst_code
from ckptdoc.rules import (
    RULES,
    Finding,
    RuleSelection,
    Severity,
    Tolerances,
    check_group,
    code_findings,
    ledger_findings,
    model_findings,
    unknown_codes,
)


def audit_file(path: str | Path, selection: RuleSelection | None = None) -> FileReport:
    """Audit one checkpoint. A file that cannot be read gives a report with `error` set."""
    selection = selection or RuleSelection()
    try:
        with open_checkpoint(path) as ckpt:
            read = _read_once(ckpt)
            found = discover_evidence(ckpt, read)
            groups = found.groups
            results, findings = [], []
            for group in groups:
                group_findings = check_group(group, read, selection)
                findings.extend(group_findings)
                results.append(
                    GroupResult(
                        group.name,
                        worst_code(group_findings),
                        group.channels(ckpt.tensors),
                        dict(group.members),
                        group.evidence.found_by,
                    )
                )
            findings.extend(model_findings(groups, read, selection))
            findings.extend(_file_findings(ckpt, selection))
            ledger = account(ckpt.tensors, groups)
            if RULES["BN010"] in selection.active():
                findings.extend(ledger_findings(ledger, selection.severity(RULES["BN010"])))
            return FileReport(
                str(path), ckpt.format, tuple(results), tuple(findings), None,
                (*ckpt.warnings, *found.notes), ledger.as_dict(),
            )
    except SkippedFileError as exc:
        return FileReport(str(path), None, skipped=exc.skip)
    except CheckpointError as exc:
        return FileReport(str(path), None, error=str(exc))


def _read_once(ckpt: Checkpoint) -> Callable[[str], np.ndarray]:
    """`ckpt.read`, each tensor read (and checksummed) once however many rules look at it."""
    cache: dict[str, np.ndarray] = {}

    def read(key: str) -> np.ndarray:
        value = cache.get(key)
        if value is None:
            value = cache[key] = ckpt.read(key)
        return value

    return read


def evidence_groups(ckpt: Checkpoint) -> list[BNGroup]:
    """The file's BN groups from its strongest evidence (graph, config, structure, names),
    each with what the file proves about its training (update ops, steps, momentum)."""
    return discover_evidence(ckpt, _read_once(ckpt)).groups


def discover_evidence(ckpt: Checkpoint, read: Callable[[str], np.ndarray]) -> Discovery:
    """`evidence_groups` with the notes of every reconciliation: the graph or model structure
    against the tensors' names, and the step count against the values."""
    graph = ckpt.graph()
    notes: list[str] = []
    try:
        facts = None
        if graph is not None:  # graph analysis loads only for files that carry a graph
            from ckptdoc.graph_bn import analyze

            facts = analyze(graph)
    except Exception as exc:  # noqa: BLE001 - a graph is evidence: its failure costs no verdict
        facts = None
        notes.append(f"could not read the graph beside the checkpoint ({type(exc).__name__}: "
                     f"{exc}); BN layers were found by their names only")
    found = discover(ckpt, facts)
    groups, step_notes = check_steps(
        with_tracking(with_training(found.groups, ckpt.step_count()), read), read)
    return Discovery(groups, (*notes, *found.notes, *step_notes))


def _file_findings(ckpt: Checkpoint, selection: RuleSelection) -> list[Finding]:
    """Findings about the file as a whole: CK001 (code in the model config), read as JSON only."""
    rule = RULES["CK001"]
    if rule not in selection.active():
        return []
    config = getattr(ckpt, "model_config", None)
    unreadable = getattr(ckpt, "config_error", None)
    out = [] if config is None else code_findings(config, selection.severity(rule))
    pickled = getattr(ckpt, "unsafe_globals", None)
    if pickled:
        # Read here as data; torch.load would import and call each of these.
        shown_globals = ", ".join(f"`{g}`" for g in pickled[:8])
        more = f" and {len(pickled) - 8} more" if len(pickled) > 8 else ""
        out.append(Finding("CK001", selection.severity(rule), "(pickle)",
                           f"the pickle names {shown_globals}{more}: torch.load would import "
                           "and call them (ckptdoc did not); load it with "
                           "torch.load(weights_only=True) or only from a source you trust",
                           {"globals": list(pickled)}, "code in the pickle"))
    if unreadable:
        # A config nobody could read is no proof of "no code".
        out.append(Finding("CK001", selection.severity(rule), "(model)",
                           f"cannot check the model for code: {unreadable}; treat the file as "
                           "untrusted", {"cannot_verify": True}))
    return out


def _audit_guarded(path: str | Path, selection: RuleSelection | None) -> FileReport:
    """audit_file that never raises: a reader bug on one file must not stop the others."""
    try:
        return audit_file(path, selection)
    except Exception as exc:  # noqa: BLE001 - reported per file, exit 2
        return FileReport(str(path), None, error=f"{path}: internal error: {exc!r}")


def canonical_path(path: Path) -> Path:
    """The name a checkpoint is reported under, whichever of its files was given.

    `model.ckpt.index` and `model.ckpt.data-00000-of-00002` become the prefix `model.ckpt`, so
    a pre-commit run (given .index files) and a directory scan report the same path, and
    baselines match between them.
    """
    name = path.name
    if name.endswith(".index") and name != ".index" and path.is_file():
        return path.with_name(name[: -len(".index")])
    m = DATA_SHARD_RE.match(name)
    if m and m.group("prefix") and path.with_name(m.group("prefix") + ".index").is_file():
        return path.with_name(m.group("prefix"))
    return path


def expand_paths(paths: Iterable[str | Path], respect_gitignore: bool = True) -> list[Path | str]:
    """Files and prefixes as given; directories searched for checkpoints. Each checkpoint once,
    in the order given.

    A SavedModel or checkpoint directory is one checkpoint; any other directory is searched
    recursively for every supported format, skipping what `.gitignore` / `.ignore` exclude
    unless `respect_gitignore` is False.
    """
    out: dict[Path | str, None] = {}
    for raw in paths:
        if is_url(raw):  # a store's folder is listed; a single object or prefix kept
            try:
                from ckptdoc.formats.remote import find_remote_checkpoints

                out.update(dict.fromkeys(find_remote_checkpoints(str(raw))))
            except CheckpointError:  # unreachable, denied: reported with the file, exit 2
                out[str(raw)] = None
            continue
        path = Path(raw)
        if path.is_dir() and not is_savedmodel_dir(path):
            out.update(dict.fromkeys(find_checkpoints(path, respect_gitignore)))
        else:
            out[canonical_path(path)] = None
    return list(out)


def audit_files(
    files: Sequence[str | Path],
    selection: RuleSelection | Callable[[Path | str], RuleSelection] | None = None,
    jobs: int = 1,
    done: Callable[[int], None] | None = None,
) -> list[FileReport]:
    """Audit `files` in order; with `jobs > 1` in that many processes (0: one per CPU).

    `selection` may be a function of the path (per-file ignores). The result is in the order
    of `files` whatever `jobs` is, and each file is audited on its own: one that cannot be read
    or crashes its worker is reported with `error`, and the others go on. `done(n)` is called
    as files finish (a progress bar).
    """
    paths = [f if isinstance(f, str) and is_url(f) else Path(f) for f in files]
    selections = [selection(p) if callable(selection) else selection for p in paths]
    items = list(zip(paths, selections, strict=True))
    jobs = (os.cpu_count() or 1) if jobs <= 0 else jobs
    if jobs <= 1 or len(items) < _MIN_FILES_PER_WORKER * 2:
        # Starting processes costs more than a few audits: small work stays in-process, so
        # --jobs is never slower than --jobs 1.
        out = []
        for p, s in items:
            out.append(_audit_guarded(p, s))
            if done is not None:
                done(1)
        return out
    from concurrent.futures import ProcessPoolExecutor  # only for --jobs > 1: slow to import

    jobs = min(jobs, len(items) // _MIN_FILES_PER_WORKER)
    # A few batches per worker: one task per file pays a round trip per file; one batch per
    # worker leaves a worker idle when its files are slower.
    size = -(-len(items) // (jobs * 4))
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    reports: list[FileReport] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_audit_batch, batch) for batch in batches]
        for batch, future in zip(batches, futures, strict=True):
            try:
                reports.extend(future.result())
            except Exception:  # noqa: BLE001 - a worker died (e.g. a crash in a C library)
                reports.extend(_audit_isolated(batch))
            if done is not None:
                done(len(batch))
    return reports


_MIN_FILES_PER_WORKER = 8


def _audit_batch(items: list[tuple[Path | str, RuleSelection | None]]) -> list[FileReport]:
    return [_audit_guarded(p, s) for p, s in items]


def _audit_isolated(items: list[tuple[Path | str, RuleSelection | None]]) -> list[FileReport]:
    """A batch whose worker died, again one file per fresh process: only the file that kills
    its process is reported as failed, and the others are audited."""
    from concurrent.futures import ProcessPoolExecutor

    out = []
    for path, sel in items:
        try:
            with ProcessPoolExecutor(max_workers=1) as pool:
                out.append(pool.submit(_audit_guarded, path, sel).result())
        except Exception as exc:  # noqa: BLE001 - this file kills its process
            out.append(FileReport(str(path), None, error=f"{path}: audit process failed: {exc!r}"))
    return out


def audit_paths(
    paths: Iterable[str | Path], selection: RuleSelection | None = None, jobs: int = 1
) -> AuditReport:
    return AuditReport(tuple(audit_files(expand_paths(paths), selection, jobs)))


# --------------------------------------------------------------------------- the gate's policy


def selection_from(
    config: Config,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    tolerances: Mapping[str, float] | None = None,
    extend_select: Sequence[str] = (),
) -> RuleSelection:
    """Rules and tolerances as `ckptdoc audit` combines them: `select` replaces the
    configuration's select and ignore, `extend_select` adds to the select in force (as
    ruff's), `ignore` adds to its ignore, `tolerances` (field names of `Tolerances`) win over
    the file's. Unknown codes raise ValueError."""
    selected = [c.strip().upper() for c in select or () if c.strip()]
    extended = [c.strip().upper() for c in extend_select if c.strip()]
    ignored = [c.strip().upper() for c in ignore if c.strip()]
    bad = unknown_codes(selected + extended + ignored)
    if bad:
        raise ValueError(f"unknown rule code(s): {', '.join(bad)} (see `ckptdoc rule`)")
    if select is not None:
        final_select, final_ignore = frozenset(selected), frozenset(ignored)
    else:
        final_select = frozenset(config.select or ())
        final_ignore = frozenset(config.ignore) | frozenset(ignored)
    if final_select and extended:  # an empty select is every rule already
        final_select |= frozenset(extended)
    # A code asked for explicitly is not ignored by a broader ignore of the configuration.
    final_ignore = frozenset(i for i in final_ignore if i not in extended)
    merged = {**dict(config.tolerances), **dict(tolerances or {})}
    return RuleSelection(final_select, final_ignore, dict(config.severity),
                         tolerances=Tolerances(**merged))


def per_file_selection(
    config: Config, selection: RuleSelection
) -> Callable[[Path | str], RuleSelection]:
    """The selection for each file, with the configuration's `per-file-ignores` applied."""

    def for_path(path: Path | str) -> RuleSelection:
        extra = config.ignored_for(path)
        if not extra:
            return selection
        return RuleSelection(selection.select, selection.ignore | frozenset(extra),
                             selection.severities, selection.tolerances)

    return for_path


def audit(
    paths: str | Path | Iterable[str | Path],
    *,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    tolerances: Mapping[str, float] | None = None,
    config: bool | str | Path = True,
    baseline: bool | str | Path = True,
    jobs: int = 1,
    fail_on: Severity | str | None = None,
    run: Callable[..., list[FileReport]] | None = None,
    respect_gitignore: bool = True,
) -> AuditReport:
    """Audit checkpoints as `ckptdoc audit` does and return the report.

    `paths`: files, prefixes or folders (searched recursively). `config`: True finds
    `[tool.ckptdoc]` / `ckptdoc.toml` from the working directory up, a path reads that file,
    False ignores configuration. `select` / `ignore` / `tolerances` then apply as the command
    line's options do. `baseline`: True uses the configuration's, a path that file, False none.

    `report.to_dict()` is the `--format json` document; `report.exit_code()` the CLI's exit
    code, with `fail_on` (else the configuration's `fail-on`, else error) as its threshold.
    Raises ValueError (unknown codes, nothing to audit), `ConfigError`, `BaselineError`; an
    unreadable checkpoint is a file report with `error` set, never an exception. `run`: the
    audit of the files (default `audit_files`), e.g. followed by a data check (`api.audit`).
    """
    from ckptdoc.config import discover, load_config

    if isinstance(paths, str | Path):
        paths = [paths]
    cfg = (discover() if config is True else Config() if config is False
           else load_config(config))
    selection = selection_from(cfg, select, ignore, tolerances)
    found = expand_paths(paths, respect_gitignore)
    if not found:
        raise ValueError("no checkpoints found under " + ", ".join(map(str, paths)))
    baseline_file = cfg.baseline if baseline is True else None if baseline is False else baseline
    threshold = Severity(fail_on) if fail_on is not None else None
    return gate(found, cfg, selection, jobs=jobs, baseline=baseline_file, fail_on=threshold,
                run=run)


def gate(
    found: Sequence[Path | str],
    config: Config,
    selection: RuleSelection,
    *,
    jobs: int = 1,
    baseline: str | Path | None = None,
    fail_on: Severity | None = None,
    run: Callable[..., list[FileReport]] | None = None,
) -> AuditReport:
    """The gate's policy, the one `ckptdoc audit` and `ckptdoc.audit()` both run: the
    configuration's excludes and per-file ignores, the audit (`run`: `audit_files` or a
    wrapper of it with a progress bar), the baseline, and the threshold (`fail_on`, else the
    configuration's, else error), kept in the report for `exit_code()`. Raises
    `BaselineError` for a baseline that cannot be read."""
    files = [f for f in found if not config.is_excluded(f)]
    reports = (run or audit_files)(files, per_file_selection(config, selection), jobs)
    report = AuditReport(tuple(reports),
                         fail_on=fail_on or config.fail_on or Severity.ERROR)
    if baseline is not None:
        from ckptdoc import baseline as baselines

        report = baselines.apply_baseline(report, baselines.load_baseline(baseline), baseline)
    return report

"""`ckptdoc audit PATH...`: flag broken BN statistics; reports and exit codes for CI."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ckptdoc.auditor import audit_files, expand_paths, gate, selection_from
from ckptdoc.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    import_user_modules,
    silence_stdout,
    stderr,
    stdout,
    usage_error,
)
from ckptdoc.config import Config, ConfigError, discover, load_config
from ckptdoc.report import text
from ckptdoc.report.formats import ReportFormat, render, write_atomic
from ckptdoc.report.model import AuditReport, RenderOptions
from ckptdoc.report.safe import shown
from ckptdoc.rules import RULES, RuleSelection, Severity, Tolerances

FORMATS = ", ".join(f.value for f in ReportFormat)


@dataclass(frozen=True)
class ReportSpec:
    """One report to produce: a format and a file (None: stdout)."""

    format: ReportFormat
    path: Path | None


def _codes(values: list[str] | None) -> list[str]:
    """`--select BN001,BN002 --select BN005` -> ["BN001", "BN002", "BN005"]."""
    return [c.strip().upper() for v in values or [] for c in v.split(",") if c.strip()]


def _report_spec(value: str) -> ReportSpec:
    fmt, sep, path = value.partition("=")
    if not sep or not path.strip():
        raise usage_error(f"--report {value!r}: expected FORMAT=FILE, e.g. sarif=ckptdoc.sarif")
    try:
        return ReportSpec(ReportFormat(fmt.strip().lower()), Path(path.strip()))
    except ValueError:
        raise usage_error(
            f"--report {value!r}: unknown format {fmt!r} (one of {FORMATS})"
        ) from None


def _load_config(config_file: Path | None, isolated: bool) -> Config:
    if isolated:
        return Config()
    try:
        return load_config(config_file) if config_file is not None else discover()
    except ConfigError as exc:
        raise usage_error(f"configuration: {exc}") from None


def audit(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoint prefixes or their .index files, Keras files, SavedModel or "
            "checkpoint folders, or any folder (searched recursively for every format); "
            "local paths or URLs (s3://, gs://, https://, with `ckptdoc[remote]`).",
            show_default=False,
            metavar="PATHS...",
        ),
    ],
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Text report: list every BN layer, `ok` ones too."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Text report: only unreadable files and the summary line."
        ),
    ] = False,
    output_format: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            "--output-format",
            "-f",
            help="Report format: text (tables, the default), json, sarif (GitHub code "
            "scanning), junit (GitLab / Jenkins test reports), github (workflow annotations), "
            "markdown (a step summary), gitlab (GitLab Code Quality).",
        ),
    ] = ReportFormat.text,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the --format report to this file (atomically) instead of stdout; the "
            "summary line still goes to stderr.",
        ),
    ] = None,
    reports: Annotated[
        list[str] | None,
        typer.Option(
            "--report",
            metavar="FORMAT=FILE",
            help="Also write a report in another format, e.g. `--report sarif=ckptdoc.sarif "
            "--report junit=ckptdoc.xml`. Repeatable; the audit runs once.",
        ),
    ] = None,
    fail_on: Annotated[
        Severity | None,
        typer.Option(
            help="Exit 1 when a finding is at least this severe. [default: error, or "
            "`fail-on` from the configuration]",
            show_default=False,
        ),
    ] = None,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even with findings or unreadable files.")
    ] = False,
    select: Annotated[
        list[str] | None,
        typer.Option(
            help="Only these rule codes (comma-separated, prefixes ok). Replaces the "
            "configuration's select and ignore."
        ),
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(help="Skip these rule codes, in addition to the configuration's ignore."),
    ] = None,
    extend_select: Annotated[
        list[str] | None,
        typer.Option(help="Add these rule codes to the configuration's select (and take them "
                     "out of its ignore)."),
    ] = None,
    barely_moved: Annotated[
        float | None,
        typer.Option(
            help="BN005: max |mean| and |variance - 1| that count as barely moved. "
            f"[default: {Tolerances.barely_moved}]",
            show_default=False,
            min=0.0,
        ),
    ] = None,
    dead_variance: Annotated[
        float | None,
        typer.Option(
            help="BN006: a variance at or below this is a dead channel. "
            f"[default: {Tolerances.dead_variance}]",
            show_default=False,
            min=0.0,
        ),
    ] = None,
    trained_param: Annotated[
        float | None,
        typer.Option(
            help="BN002: gamma / beta further than this from 1 / 0 count as trained. "
            f"[default: {Tolerances.trained_param}]",
            show_default=False,
            min=0.0,
        ),
    ] = None,
    initial_weight: Annotated[
        float | None,
        typer.Option(
            help="BN005: with a step count and momentum in the file, fire when this share of "
            f"the initial value is still in the averages. [default: {Tolerances.initial_weight}]",
            show_default=False,
            min=0.0,
            max=1.0,
        ),
    ] = None,
    severity: Annotated[
        list[str] | None,
        typer.Option(
            "--severity", metavar="CODE=LEVEL",
            help="Change a rule's severity (error, warning, info), e.g. `--severity BN005=error`. "
            "Repeatable; over the configuration's `severity` table.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude", metavar="GLOB",
            help="Never audit paths matching this glob (relative to the configuration file, "
            "else the working directory), "
            "in addition to the configuration's `exclude`. Repeatable.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            min=0,
            help="Audit this many files in parallel processes (0: one per CPU).",
        ),
    ] = 1,
    baseline: Annotated[
        Path | None,
        typer.Option(
            help="Report only findings not in this baseline file, and list its entries that no "
            "longer occur. [default: `baseline` from the configuration]",
            show_default=False,
        ),
    ] = None,
    write_baseline: Annotated[
        Path | None,
        typer.Option(
            help="Record the current findings in this baseline file and exit 0 (2 if a file "
            "could not be read)."
        ),
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Read this ckptdoc.toml or pyproject.toml instead of searching for one.",
        ),
    ] = None,
    isolated: Annotated[
        bool, typer.Option("--isolated", help="Ignore every configuration file.")
    ] = False,
    respect_gitignore: Annotated[
        bool,
        typer.Option("--respect-gitignore/--no-respect-gitignore",
                     help="Folder scans skip what .gitignore / .ignore files exclude (as git "
                     "does). Paths given explicitly are always audited."),
    ] = True,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d",
            help="Also compare each model's stored statistics with this data's (BN012): the "
            "model runs in inference mode over it, nothing is written. Same data as "
            "recalibrate: `.npz` / `.npy`, an image folder, or `module:function` (your code: "
            "it runs as given). Needs TensorFlow or Keras, like recalibrate.",
            rich_help_panel="Data (audit --data)",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(help="--data: at most this many samples. [default: 4096]",
                     show_default=False, min=1, rich_help_panel="Data (audit --data)"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="--data: samples per forward pass. [default: recalibrate's]",
                     show_default=False, min=1, rich_help_panel="Data (audit --data)"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="--data: `module:function` building the model, for weights-only "
                     "files and TF2 checkpoints (your code: it runs as given).",
                     rich_help_panel="Data (audit --data)"),
    ] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="--data: import this module first (custom layers; "
                     "your code). Repeatable.", rich_help_panel="Data (audit --data)"),
    ] = None,
) -> None:
    """Audit checkpoints for broken batch-norm statistics.

    Settings come from `[tool.ckptdoc]` in the nearest `pyproject.toml` (or a `ckptdoc.toml`),
    then the command line.

    Several reports from one run: `--format` picks the main report (stdout, or `--output
    FILE`), and each `--report FORMAT=FILE` writes one more, e.g. `ckptdoc audit models/
    --report sarif=ckptdoc.sarif --report markdown=summary.md`.

    Exit codes: **0** no finding at or above `--fail-on`; **1** such findings; **2** usage
    error, bad configuration or baseline, or a file that could not be read (reported per
    file, the others still audited).
    """
    config = _with_flags(_load_config(config_file, isolated), severity or [], exclude or [])
    specs = [ReportSpec(output_format, output)] + [_report_spec(r) for r in reports or []]
    tolerances = {k: v for k, v in (("barely_moved", barely_moved),
                                    ("dead_variance", dead_variance),
                                    ("trained_param", trained_param),
                                    ("initial_weight", initial_weight)) if v is not None}
    selection = _selection(config, select, ignore, tolerances, extend_select)
    threshold = fail_on or config.fail_on or Severity.ERROR

    found = expand_paths(paths, respect_gitignore)
    if not found:
        raise usage_error(f"no checkpoints found under {', '.join(map(str, paths))}")
    files = [f for f in found if not config.is_excluded(f)]
    if len(files) < len(found):
        stderr.print(
            f"{len(found) - len(files)} of {len(found)} checkpoints excluded by {config.path}",
            soft_wrap=True,
        )

    from ckptdoc import baseline as baselines

    try:
        report = gate(found, config, selection, jobs=jobs, fail_on=threshold,
                      baseline=None if write_baseline is not None
                      else baseline or config.baseline,
                      run=_with_data(data, samples, batch_size, model, imports or []))
    except baselines.BaselineError as exc:
        raise usage_error(str(exc)) from None
    if write_baseline is not None:
        count = baselines.write_baseline(report, write_baseline)
        stderr.print(f"wrote {count} finding(s) to baseline {write_baseline}", soft_wrap=True)
        code = EXIT_USAGE if report.unreadable and not exit_zero else EXIT_OK
    else:
        code = report.exit_code(exit_zero=exit_zero)
    if verbose and quiet:
        raise usage_error("--verbose and --quiet exclude each other")
    detail = text.Detail.full if verbose else text.Detail.quiet if quiet else text.Detail.concise
    try:
        _emit(report, specs, RenderOptions(fail_on=threshold), detail)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`ckptdoc audit ... | head -1`): the exit code still says what
        # the audit found, not that a pipe closed.
        silence_stdout()
    raise typer.Exit(code)


def _with_data(data: str | None, samples: int | None, batch_size: int | None,
               model: str | None, imports: list[str]) -> Any:
    """The audit run: with `--data`, each file then compared with the data."""
    if data is None:
        if samples or batch_size or model or imports:
            raise usage_error("--samples, --batch-size, --model and --import go with --data")
        return _with_progress
    from ckptdoc.recalibrate.errors import RecalibrationError
    from ckptdoc.recalibrate.observe import data_options, with_data

    import_user_modules(imports)
    try:
        options = data_options(data, model=model, samples=samples, batch_size=batch_size)
    except RecalibrationError as exc:
        raise usage_error(str(exc)) from None
    return with_data(_with_progress, options)


def _with_progress(files: list[Path | str], selection: Any, jobs: int) -> list[Any]:
    """audit_files, with a progress bar on stderr when a person watches a long run (a terminal,
    more than 20 files); logs and pipes get none."""
    if len(files) <= 20 or not stderr.is_terminal:
        return audit_files(files, selection, jobs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("auditing", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("audit", total=len(files))
        return audit_files(files, selection, jobs, done=lambda n: bar.advance(task, n))


def _with_flags(config: Config, severities: list[str], exclude: list[str]) -> Config:
    """The configuration with `--severity CODE=LEVEL` and `--exclude GLOB` on top: every
    configuration key has its flag."""
    levels = dict(config.severity)
    for item in severities:
        code, sep, level = item.partition("=")
        code = code.strip().upper()
        if not sep or code not in RULES:
            raise usage_error(f"--severity {item!r}: expected CODE=LEVEL with a rule code "
                              "(see `ckptdoc rule`)")
        try:
            levels[code] = Severity(level.strip().lower())
        except ValueError:
            raise usage_error(f"--severity {item!r}: the level is error, warning or info") \
                from None
    return dataclasses.replace(config, severity=levels,
                               exclude=(*config.exclude, *exclude))


def _selection(
    config: Config,
    select: list[str] | None,
    ignore: list[str] | None,
    tolerances: dict[str, float],
    extend_select: list[str] | None = None,
) -> RuleSelection:
    try:
        return selection_from(config, _codes(select) if select is not None else None,
                              _codes(ignore), tolerances, _codes(extend_select))
    except ValueError as exc:
        raise usage_error(str(exc)) from None


def _emit(
    report: AuditReport, specs: list[ReportSpec], options: RenderOptions, detail: text.Detail
) -> None:
    to_stdout_text = False
    for spec in specs:
        if spec.path is None and spec.format == ReportFormat.text:
            text.render(report, stdout, detail)
            to_stdout_text = True
            continue
        content = render(spec.format, report, options)
        if spec.path is None:
            sys.stdout.write(content)
            sys.stdout.flush()
            continue
        try:
            write_atomic(spec.path, content)
        except OSError as exc:
            raise usage_error(f"cannot write {spec.path}: {exc.strerror or exc}") from None
    _print_baseline(report)
    if not to_stdout_text:
        stderr.print(text.summary_line(report), soft_wrap=True)


def _print_baseline(report: AuditReport) -> None:
    b = report.baseline
    if b is None:
        return
    stderr.print(f"baseline {b.path}: {b.suppressed} known finding(s) not reported", soft_wrap=True)
    if b.fixed:
        stderr.print(
            f"{len(b.fixed)} baseline entr{'y' if len(b.fixed) == 1 else 'ies'} no longer "
            "occur; refresh with --write-baseline:",
            soft_wrap=True,
        )
        for e in b.fixed:
            stderr.print(shown(f"  {e.rule} {e.path} {e.group}"), soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)


__all__ = ["ReportFormat", "audit", "register", "stderr"]

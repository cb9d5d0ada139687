"""`ckptdoc recalibrate MODEL --data DATA`: repair BN statistics and write a checked copy.

The command parses its flags into one `Options`, picks the target for the input, checks the
input and the output before any work, runs `pipeline.run`, prints the outcome and maps it to an
exit code; nothing else. Importing this module does not import TensorFlow or Keras.
Exit codes: 0 written (or nothing to write); 1 refused (results got worse, or the audit of the
new file still finds errors) unless --force; 2 a user mistake (bad file, --data, --model).
"""

from __future__ import annotations

import errno
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ckptdoc.commands.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    import_user_modules,
    stderr,
    stdout,
    usage_error,
)
from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate import pipeline
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.options import DEFAULT, DEFAULT_SAMPLES, Options
from ckptdoc.recalibrate.pipeline import Outcome
from ckptdoc.report.safe import shown


class Mode(str, Enum):
    precise = "precise"
    sequential = "sequential"


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def parse_image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p.strip()]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise RecalibrationError(f"--image-size {text!r}: expected HEIGHT,WIDTH such as 224,224")
    return sizes[0], sizes[1]


def command(
    model_path: Annotated[Path, typer.Argument(help="`.keras`, full-model `.h5`, weights file, "
                                               "or TF checkpoint (prefix, .index, folder).",
                                               metavar="MODEL")],
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d",
            help="`.npz` / `.npy` file or folder, image folder, or `module:function` "
            "returning an iterable of batches (your code: it runs as given). `.npy` / `.npz` "
            "are read without pickles.",
        ),
    ],
    model_spec: Annotated[
        str | None,
        typer.Option("--model", help="`module:function` or `file.py:function` building the "
                     "architecture (needed for weights-only files). Your code: it runs as "
                     "given, unchecked."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write (default: "
                                  "beside the input, `.recalibrated` before the extension).")
    ] = None,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Overwrite the input, keeping `<file>.bak`.")
    ] = False,
    mode: Annotated[Mode, typer.Option(help="`precise`: one pass, BN layers use batch "
                                       "statistics; `sequential`: BN layers fixed in "
                                       "topological order (more passes).")] = Mode.precise,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1)] = 64,
    samples: Annotated[
        int | None,
        typer.Option(min=2, help=f"Use at most this many samples (default {DEFAULT_SAMPLES} "
                     "unless --batches is given; a variance needs "
                     "at least 2)."),
    ] = None,
    batches: Annotated[
        int | None, typer.Option(min=1, help="Use at most this many batches.")
    ] = None,
    eval_data: Annotated[
        str | None, typer.Option("--eval-data", help="Labelled held-out data for before/after.")
    ] = None,
    x_key: Annotated[str, typer.Option("--x-key", help="Array name of the inputs in .npz.")] = "x",
    y_key: Annotated[str, typer.Option("--y-key", help="Array name of the labels in .npz.")] = "y",
    image_size: Annotated[
        str, typer.Option("--image-size", help="HEIGHT,WIDTH for image folders.")
    ] = "256,256",
    pixel_scale: Annotated[
        float | None,
        typer.Option("--pixel-scale", help="Image folders: multiply pixels (0-255 as read) by "
                     "this, e.g. 0.00392156862745098 for [0, 1]."),
    ] = None,
    folder_labels: Annotated[
        bool,
        typer.Option("--folder-labels", help="Image folders: sub-folder names are the class "
                     "labels, in alphabetical order (off: their order need not match the "
                     "model's classes)."),
    ] = False,
    allow_unsafe_code: Annotated[
        bool, typer.Option("--allow-unsafe-code", help="Trust the file's code: load Keras "
                           "models with Lambda layers (Keras safe mode off), and run a TF1 "
                           "graph's ops unchecked (file, process, Python-function, I/O ops; "
                           "by default only pure computation runs).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write even if the self-check fails, results get "
                           "worse or the audit of the new file still finds errors (never "
                           "NaN / Inf statistics).")
    ] = False,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Report format.")
    ] = OutputFormat.text,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    feed: Annotated[
        list[str] | None, typer.Option("--feed", help="TF1 graphs: PLACEHOLDER=KEY feeds the "
                                       "data's KEY (an .npz key) to a placeholder, e.g. x:0=x.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="TF1 graphs: PLACEHOLDER=VALUE fixes a "
                                       "placeholder. A boolean set true is the training "
                                       "switch (True for the pass, False for the held-out "
                                       "check), e.g. is_training:0=true.")
    ] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="Import this module first (repeatable): the custom "
                     "layer classes it registers with Keras can then be loaded. Your code: "
                     "it runs as given."),
    ] = None,
    devices: Annotated[
        str,
        typer.Option("--devices", help="Split each batch over this many local devices, or "
                     "`all` (data-parallel: tf.distribute on TensorFlow, keras.distribution "
                     "on JAX); the statistics equal one device's."),
    ] = "1",
    predictions: Annotated[
        str | None, typer.Option("--predictions", help="TF1 graphs: the logits / predictions "
                                 "tensor for the held-out check (default: the loss's input).")
    ] = None,
) -> None:
    """Recompute batch-norm moving statistics from data and write a fixed, audited copy.

    Only the BN statistics change: every other tensor of the output is byte-identical to the
    input. Exit codes: **0** written; **1** refused (held-out results got worse, or the new
    file still fails the audit; `--force` writes anyway); **2** usage error. Keras files run on
    the Keras backend `KERAS_BACKEND` names (tensorflow, jax or torch); TF checkpoints on
    TensorFlow.
    """
    from ckptdoc.recalibrate.data import ImageOptions
    from ckptdoc.recalibrate.targets import open_target

    if in_place and output is not None:
        raise usage_error("--in-place and --output are exclusive")
    try:
        options = Options(
            data=data, eval_data=eval_data, mode=mode.value, batch_size=batch_size,
            samples=DEFAULT if samples is None else samples, batches=batches,
            x_key=x_key, y_key=y_key,
            images=ImageOptions(parse_image_size(image_size), pixel_scale, folder_labels),
            model_spec=model_spec, allow_unsafe_code=allow_unsafe_code,
            feeds=parse_pairs(feed or [], "--feed"), sets=parse_pairs(set_ or [], "--set"),
            predictions=predictions, force=force, devices=parse_devices(devices),
        )
        target = open_target(model_path)
        dest = target.path if in_place else (output or target.default_output())
        target.check_output(dest, in_place)
    except (CheckpointError, RecalibrationError) as exc:
        raise usage_error(str(exc)) from None
    import_user_modules(imports or [])
    _import_framework(target.kind)
    try:
        outcome = _with_progress(
            progress, lambda cb: pipeline.run(target, options, dest, in_place=in_place,
                                              progress=cb),
            total=options.budget.samples,
        )
    except (CheckpointError, RecalibrationError) as exc:
        raise usage_error(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the model / graph failed on the user's data
        raise usage_error(_run_failure(exc)) from None
    _print(outcome, as_json=output_format is OutputFormat.json)
    raise typer.Exit(EXIT_FINDINGS if outcome.refused else EXIT_OK)


def parse_devices(text: str) -> int | None:
    """`--devices 2` -> 2; `--devices all` -> None (every local device)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise RecalibrationError(f"--devices {text!r}: a number of devices, or all") from None


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    """`NAME=VALUE` strings -> dict; the split is at the last `=` (tensor names hold none)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value:
            raise RecalibrationError(f"{option} {item!r}: expected PLACEHOLDER=VALUE")
        out[name.strip()] = value.strip()
    return out


def _import_framework(kind: str) -> None:
    from ckptdoc.recalibrate.quiet import prepare_framework

    try:
        prepare_framework(kind)
    except ImportError as exc:
        raise usage_error(str(exc)) from None


# Failures that are the machine's, not the data's: named as what they are.
_DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is too large for the "
              "file system", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only"}
_OUT_OF_MEMORY = ("ResourceExhaustedError", "OutOfMemoryError", "XlaRuntimeError")


def _machine_failure(exc: BaseException) -> str | None:
    """Out of memory or out of disk anywhere in the exception's chain, as one line with
    the next step; None when the failure is something else."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            where = f" ({cause.filename})" if cause.filename else ""
            return (f"could not write{where}: {_DISK_FULL[cause.errno]}. Free space, or "
                    "write elsewhere with --output; the input is unchanged")
        text = str(cause)
        if isinstance(cause, MemoryError) or (
                type(cause).__name__ in _OUT_OF_MEMORY
                and ("OOM" in text or "out of memory" in text.lower()
                     or type(cause).__name__ != "XlaRuntimeError")):
            return ("ran out of memory while running the model "
                    f"({type(cause).__name__}). Lower --batch-size (or --samples); the "
                    "input is unchanged")
        cause = cause.__cause__ or cause.__context__
    return None


def _run_failure(exc: BaseException) -> str:
    """One line for a model that could not run on the data (wrong shape, rank, dtype, an
    unbatched dataset): what TensorFlow / Keras said, without the traceback. A full disk or
    memory is named as such."""
    machine = _machine_failure(exc)
    if machine is not None:
        return machine
    text = getattr(exc, "message", None) or str(exc)
    reason = _graph_execution_reason(str(text))
    if reason is not None:  # TensorFlow puts the reason after a traceback of the graph
        return (f"the graph could not run on the data: {type(exc).__name__}: {reason}. "
                "Check --data, --feed and --set against the graph's inputs")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = next((line for line in lines if "rror" in line or "expected" in line.lower()),
                 lines[0] if lines else "")
    return (f"the model could not run on the data: {type(exc).__name__}: {first[:300]}. "
            "Check --data (shape, dtype, batching) against the model's inputs")


def _graph_execution_reason(text: str) -> str | None:
    """TensorFlow's "Graph execution error:" names the node (`Node: 'x'`) and gives its reason
    on the lines after it, below a traceback of where the node was defined; the reason and the
    node, or None for any other message."""
    if "Graph execution error" not in text:
        return None
    lines = [line.strip() for line in text.splitlines()]
    node = next((line[len("Node: "):].strip("'\"") for line in lines
                 if line.startswith("Node: ")), None)
    start = next((i for i, line in enumerate(lines) if line.startswith("Node: ")), None)
    candidates = lines[start + 1:] if start is not None else lines
    reason = next((line for line in candidates
                   if line and not line.startswith(("[[", "File ", "Detected at node",
                                                    "Graph execution error"))), None)
    if reason is None:
        return None
    return f"{reason[:300]}{f' (at node {node})' if node else ''}"


def _print(outcome: Outcome, *, as_json: bool) -> None:
    """The report on stdout (text or JSON); a refusal or a --force warning on stderr."""
    from ckptdoc.recalibrate.report import render

    if as_json:
        stdout.print_json(json.dumps(outcome.to_dict(), default=str))
    else:
        render(outcome.report, stdout)
        audit = outcome.audit
        if audit and audit.get("available"):
            findings = audit.get("findings", [])
            stdout.print(f"Audit of the new file: {len(findings)} finding(s), "
                         f"{len(audit['errors'])} error(s).", markup=False)
            for f in findings:
                stdout.print(shown(f"  {f['rule']} [{f['severity']}] {f['group']}: "
                                   f"{f['message']}"), markup=False)
        if outcome.output is not None:
            stdout.print(f"[green]Wrote[/green] {escape(shown(str(outcome.output)))}")
        elif outcome.skipped:
            stdout.print(f"Nothing written here: {escape(shown(outcome.skipped))}")
    message, label = (outcome.refused, "refused") if outcome.refused else (outcome.warning,
                                                                            "warning")
    if message:
        stderr.print(f"[bold red]{label}:[/bold red] {escape(shown(message, 4000))}",
                     soft_wrap=True)


def _with_progress(enabled: bool, run: Any, *, total: int | None) -> Any:
    if not enabled:
        return run(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("recalibrating"), BarColumn(), MofNCompleteColumn(), TextColumn("samples"),
        TimeElapsedColumn(), console=stderr, transient=True,
    ) as bar:
        # Sequential mode walks the data once per level: the bar shows the current pass.
        task = bar.add_task("pass", total=total)
        seen = [0]

        def cb(n: int) -> None:
            seen[0] += n
            if total is not None and seen[0] > total:
                seen[0] = n
                bar.reset(task, total=total)
            bar.advance(task, n)

        return run(cb)


def register(app: typer.Typer) -> None:
    """Add the `recalibrate` command to the main app."""
    app.command(name="recalibrate")(command)


__all__ = ["command", "parse_image_size", "parse_pairs", "register"]

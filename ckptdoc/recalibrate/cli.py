"""`ckptdoc recalibrate MODEL --data DATA`: repair BN statistics and write a checked copy.

Importing this module does not import TensorFlow; the command body does, lazily.
Exit codes: 0 written (or nothing to write); 1 refused (results got worse, or the audit of the
new file still finds errors) unless --force; 2 a user mistake (bad file, --data, --model).
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape

from ckptdoc.commands.common import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, stderr, stdout, usage_error
from ckptdoc.errors import CheckpointError
from ckptdoc.recalibrate import RecalibrationError
from ckptdoc.recalibrate.report import WORSE_CAUSES


class Mode(str, Enum):
    precise = "precise"
    sequential = "sequential"


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


def default_output(path: Path) -> Path:
    """`m.keras` -> `m.recalibrated.keras`; `w.weights.h5` -> `w.recalibrated.weights.h5`."""
    name = path.name
    for ext in (".weights.h5", ".keras", ".hdf5", ".h5"):
        if name.endswith(ext) and len(name) > len(ext):
            return path.with_name(name[: -len(ext)] + ".recalibrated" + ext)
    return path.with_name(name + ".recalibrated")


def data_mod_options(size: str, scale: float | None, folder_labels: bool) -> Any:
    """The image-folder options of the command line, as the data module takes them."""
    from ckptdoc.recalibrate.data import ImageOptions

    return ImageOptions(parse_image_size(size), scale, folder_labels)


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


class _Refused(Exception):
    """The result failed a check; nothing is written."""


def recalibrate(
    model_path: Annotated[Path, typer.Argument(help="`.keras`, full-model `.h5`, weights file, "
                                               "or TF checkpoint (prefix, .index, folder).")],
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d",
            help="`.npz` / `.npy` file or folder, image folder, or `module:function` "
            "returning an iterable of batches.",
        ),
    ],
    model_spec: Annotated[
        str | None,
        typer.Option("--model", help="`module:function` or `file.py:function` building the "
                     "architecture (needed for weights-only files)."),
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
        typer.Option(min=2, help="Use at most this many samples (default 4096; a variance needs "
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
        bool, typer.Option("--allow-unsafe-code", help="Load models with Lambda layers "
                           "(runs code stored in the file).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Write even if results get worse or the audit of the "
                           "new file still finds errors.")
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
                                       "placeholder, e.g. is_training:0=true.")
    ] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="Import this module first (repeatable): the custom "
                     "layer classes it registers with Keras can then be loaded."),
    ] = None,
    predictions: Annotated[
        str | None, typer.Option("--predictions", help="TF1 graphs: the logits / predictions "
                                 "tensor for the held-out check (default: the loss's input).")
    ] = None,
) -> None:
    """Recompute batch-norm moving statistics from data and write a fixed, audited copy.

    Only the BN statistics change: every other tensor of the output is byte-identical to the
    input. Exit codes: **0** written; **1** refused (held-out results got worse, or the new
    file still fails the audit; `--force` writes anyway); **2** usage error.
    """
    if in_place and output is not None:
        raise usage_error("--in-place and --output are exclusive")
    _preflight(model_path, output, in_place)
    for module in imports or []:
        _import_user_module(module)
    if samples is not None and batches is not None:
        raise usage_error("give --samples or --batches, not both")
    if samples is None and batches is None:
        samples = 4096
    from ckptdoc.recalibrate.quiet import import_tensorflow_quietly
    from ckptdoc.recalibrate.tf_bundle import is_bundle, run_cli

    try:
        import_tensorflow_quietly()
    except ImportError as exc:
        raise usage_error(
            f"recalibration runs the model, so it needs TensorFlow ({exc}); "
            "install it with `pip install 'ckptdoc[recalibrate]'`"
        ) from None
    if is_bundle(model_path):  # TF1 graph / TF2 object checkpoints: see tf_bundle.py
        try:
            code = run_cli(
                model_path, output, data=data, model_spec=model_spec, feeds=feed or [],
                sets=set_ or [], predictions=predictions, in_place=in_place, mode=mode.value,
                batch_size=batch_size, samples=samples, batches=batches, eval_data=eval_data,
                x_key=x_key, y_key=y_key, force=force,
                as_json=output_format is OutputFormat.json, show_progress=progress,
            )
        except (CheckpointError, RecalibrationError) as exc:
            raise usage_error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the model / graph failed on the user's data
            raise usage_error(_run_failure(exc)) from None
        raise typer.Exit(code)
    dest = model_path if in_place else (output or default_output(model_path))
    if not in_place and dest.resolve() == model_path.resolve():
        raise usage_error("--output is the input file; use --in-place to overwrite it")
    try:
        code = _run(
            model_path, dest, data=data, model_spec=model_spec, in_place=in_place,
            mode=mode.value, batch_size=batch_size, samples=samples, batches=batches,
            eval_data=eval_data, x_key=x_key, y_key=y_key,
            images=data_mod_options(image_size, pixel_scale, folder_labels),
            allow_unsafe=allow_unsafe_code, force=force, as_json=output_format is OutputFormat.json,
            show_progress=progress,
        )
    except (CheckpointError, RecalibrationError) as exc:
        raise usage_error(str(exc)) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the model failed on the user's data
        raise usage_error(_run_failure(exc)) from None
    raise typer.Exit(code)


def _run_failure(exc: BaseException) -> str:
    """One line for a model that could not run on the data (wrong shape, rank, dtype, an
    unbatched dataset): what TensorFlow / Keras said, without the traceback."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = next((line for line in lines if "rror" in line or "expected" in line.lower()),
                 lines[0] if lines else "")
    return (f"the model could not run on the data: {type(exc).__name__}: {first[:300]}. "
            "Check --data (shape, dtype, batching) against the model's inputs")


def _preflight(model_path: Path, output: Path | None, in_place: bool) -> None:
    """What can be checked before anything is loaded or measured, so a mistake costs a
    second, not a full pass: the input passes the audit reader's own checks (regular files
    only, zip and HDF5 hardening, size caps: nothing reaches Keras that the audit would
    refuse), and the output can be written."""
    from ckptdoc.formats import open_checkpoint

    try:
        with open_checkpoint(model_path) as ckpt:
            bundle = ckpt.format in ("tf1-bundle", "tf2-object", "savedmodel")
    except CheckpointError as exc:
        raise usage_error(f"{exc} (checked before loading)") from None
    if output is None or in_place or bundle:  # a bundle's output folder is created by the writer
        return
    if output.is_dir():
        raise usage_error(f"--output {output} is a folder; name the file to write")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise usage_error(f"--output {output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise usage_error(f"--output {output}: the folder {parent} is not writable")
    name, src = output.name.lower(), model_path.name.lower()
    for ext in (".weights.h5", ".keras"):
        if src.endswith(ext) and not name.endswith(ext):
            raise usage_error(f"--output {output}: the input is a {ext} file; the output must "
                              f"end in {ext} too")
    if src.endswith((".h5", ".hdf5")) and not src.endswith(".weights.h5") and not name.endswith(
        (".h5", ".hdf5")
    ):
        raise usage_error(f"--output {output}: the input is HDF5; the output must end in .h5")


def _import_user_module(module: str) -> None:
    """`--import my_pkg.layers`: run before loading, so classes it registers with
    `keras.saving.register_keras_serializable` resolve."""
    import importlib
    import sys

    sys.path.insert(0, os.getcwd())  # as `python -m` would find the user's package
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: report, do not crash
        raise usage_error(f"--import {module}: {type(exc).__name__}: {exc}") from None


def _run(
    model_path: Path, dest: Path, *, data: str, model_spec: str | None, in_place: bool, mode: str,
    batch_size: int, samples: int | None, batches: int | None, eval_data: str | None,
    x_key: str, y_key: str, images: Any, allow_unsafe: bool, force: bool,
    as_json: bool, show_progress: bool,
) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ckptdoc import atomic
    from ckptdoc.recalibrate import data as data_mod
    from ckptdoc.recalibrate import model_io, writer
    from ckptdoc.recalibrate.api import recalibrate as run_recalibration
    from ckptdoc.recalibrate.engine import find_bn_layers, snapshot
    from ckptdoc.recalibrate.report import render

    source = data_mod.from_path(data, x_key=x_key, y_key=y_key, images=images)
    eval_source = (
        data_mod.from_path(eval_data, x_key=x_key, y_key=y_key, images=images)
        if eval_data else None
    )
    with stderr.status("loading model"):
        loaded = model_io.load(model_path, model_spec=model_spec, allow_unsafe=allow_unsafe)
    layers = find_bn_layers(loaded.model)
    old = [snapshot(bn) for bn in layers]
    report = _with_progress(
        show_progress,
        lambda cb: run_recalibration(
            loaded.model, source, mode=mode, batch_size=batch_size, samples=samples,
            batches=batches, eval_data=eval_source, progress=cb,
        ),
        total=samples, passes_hint=mode,
    )
    result: dict[str, Any] = {"input": str(model_path), "output": None, "written": False,
                              "refused": None, "audit": None, "report": report.to_dict()}
    broken = _non_finite(layers)
    if broken:  # never written, --force or not: NaN statistics make every output NaN
        message = (
            f"the new statistics of {', '.join(broken)} are not finite (NaN or Inf): the data "
            "or the model's activations hold NaN / Inf values. Check the data (and any "
            "preprocessing); nothing written"
        )
        result["refused"] = message
        return _finish(result, report, as_json, render, message, EXIT_FINDINGS)
    refusal: str | None = None
    if report.got_worse:
        refusal = (
            "held-out results are WORSE after recalibration "
            f"({_eval_line(report.eval_before)} before, {_eval_line(report.eval_after)} after). "
            f"Possible causes: {WORSE_CAUSES}. Nothing written"
            + ("" if not force else "; --force: writing anyway")
        )
    if refusal and not force:
        result["refused"] = refusal
        return _finish(result, report, as_json, render, refusal, EXIT_FINDINGS)
    patches = writer.plan(model_path, loaded.kind, loaded.model, layers, old)
    audit_summary: dict[str, Any] | None = None
    try:
        ctx = atomic.in_place(model_path) if in_place else atomic.atomic_path(dest)
        with ctx as tmp:
            writer.write_patched(model_path, loaded.kind, patches, tmp)
            audit_summary = _audit(tmp)
            errors = audit_summary.get("errors", [])
            if errors and not force:
                raise _Refused(
                    "the audit of the recalibrated file still finds errors: "
                    + "; ".join(errors) + ". Nothing written"
                )
    except _Refused as exc:
        result["audit"] = audit_summary
        result["refused"] = str(exc)
        return _finish(result, report, as_json, render, str(exc), EXIT_FINDINGS)
    result.update(output=str(dest), written=True, audit=audit_summary)
    if refusal:
        result["refused"] = None
        result["warning"] = refusal
    return _finish(result, report, as_json, render, refusal if force else None, EXIT_OK)


def _non_finite(layers: list[Any]) -> list[str]:
    from ckptdoc.recalibrate.engine import snapshot

    return [
        str(bn.path)
        for bn in layers
        if not all(np.all(np.isfinite(v)) for v in snapshot(bn).values())
    ]


def _eval_line(ev: Any) -> str:
    if ev is None:
        return "n/a"
    if ev.accuracy is not None:
        return f"accuracy {ev.accuracy:.4f}"
    return f"{ev.loss_name} {ev.loss:.4g}"


def _audit(path: Path) -> dict[str, Any]:
    """Audit the new file with ckptdoc's own audit (never imports TensorFlow)."""
    try:
        from ckptdoc.auditor import audit_file
    except ImportError:  # the audit is optional for recalibration to work
        return {"available": False, "errors": []}
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


def _finish(
    result: dict[str, Any], report: Any, as_json: bool, render: Any, message: str | None, code: int,
) -> int:
    if as_json:
        stdout.print_json(json.dumps(result, default=str))
    else:
        render(report, stdout)
        audit = result.get("audit")
        if audit and audit.get("available"):
            n = len(audit.get("findings", []))
            stdout.print(
                f"Audit of the new file: {n} finding(s), {len(audit['errors'])} error(s).",
                markup=False,
            )
            for f in audit.get("findings", []):
                stdout.print(
                    f"  {f['rule']} [{f['severity']}] {f['group']}: {f['message']}", markup=False
                )
        if result["written"]:
            stdout.print(f"[green]Wrote[/green] {escape(str(result['output']))}")
    if message:
        stderr.print(f"[bold red]{'refused' if code else 'warning'}:[/bold red] {escape(message)}",
                     soft_wrap=True)
    return code


def _with_progress(enabled: bool, run: Any, *, total: int | None, passes_hint: str) -> Any:
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
    app.command(name="recalibrate")(recalibrate)


__all__ = ["register", "recalibrate", "default_output", "EXIT_USAGE"]

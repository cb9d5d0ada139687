"""The `ckptdoc` command: a thin Typer layer over the library.

Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage error or unreadable file.
No traceback ever reaches the user for a problem with their input.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ckptdoc import __version__
from ckptdoc.commands import audit_cmd, ls_cmd, rule_cmd
from ckptdoc.commands.common import EXIT_USAGE, stderr
from ckptdoc.errors import CheckpointError

app = typer.Typer(
    name="ckptdoc",
    help=(
        "Find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints.\n\n"
        "Reads TF1 / TF2 checkpoints, SavedModels and Keras .h5 / .weights.h5 / .keras files "
        "without importing TensorFlow. Start with `ckptdoc audit PATH`."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

def _version(value: bool) -> None:
    if value:
        print(f"ckptdoc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints."""


# Registered in this order so that `ckptdoc --help` lists them sensibly.
ls_cmd.register(app)
audit_cmd.register(app)
rule_cmd.register(app)
try:
    from ckptdoc.recalibrate import cli as _recalibrate_cli

    _recalibrate_cli.register(app)
except ImportError:  # recalibration not present in this build
    pass


def main() -> None:
    """Console entry point: a last guard so a bug shows a message and an issue link, not a
    wall of traceback."""
    try:
        app()
    except CheckpointError as exc:
        stderr.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)


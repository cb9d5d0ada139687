"""The `ckptdoc` command's Typer app: a thin layer over the library (`ckptdoc.cli.main`
starts it).

Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage error or unreadable file.
No traceback ever reaches the user for a problem with their input.
"""

from __future__ import annotations

import importlib
import sys
from enum import Enum
from typing import Annotated, Any

import typer
from rich.markup import escape

from ckptdoc.commands.common import EXIT_USAGE, stderr
from ckptdoc.errors import CheckpointError
from ckptdoc.report.safe import shown

# Command name -> the module that registers it, in the order `ckptdoc --help` lists them.
# Modules load on demand: `ckptdoc audit` imports and builds only the audit command (Typer
# turns every registered command's signature into a click command on each run).
COMMANDS = {
    "ls": "ckptdoc.commands.ls_cmd",
    "audit": "ckptdoc.commands.audit_cmd",
    "rule": "ckptdoc.commands.rule_cmd",
    "recalibrate": "ckptdoc.recalibrate.cli",  # optional: absent in an audit-only build
}
OPTIONAL = {"recalibrate"}


def _version(value: bool) -> None:
    if value:
        from ckptdoc.version import __version__

        print(f"ckptdoc {__version__}")
        raise typer.Exit()


class Color(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    color: Annotated[
        Color,
        typer.Option("--color", help="Colour the output: auto (a terminal, unless NO_COLOR), "
                     "always (e.g. a CI log that shows colours), never."),
    ] = Color.auto,
) -> None:
    """Find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints."""
    from ckptdoc.commands.common import set_color

    set_color(color.value)


def build_app(only: str | None = None) -> typer.Typer:
    """The `ckptdoc` app with every command, or with the command `only` (for running it)."""
    app = typer.Typer(
        name="ckptdoc",
        help=(
            "Find and fix broken batch-norm statistics in TensorFlow and Keras checkpoints.\n\n"
            "Reads TF1 / TF2 checkpoints, SavedModels and Keras .h5 / .weights.h5 / .keras files "
            "without importing TensorFlow. Start with `ckptdoc audit PATH`."
        ),
        no_args_is_help=True,
        # `--install-completion` / `--show-completion` for bash, zsh, fish and PowerShell.
        add_completion=True,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode="markdown",
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            importlib.import_module(module).register(app)
        except ImportError:
            if name not in OPTIONAL:
                raise
    return app


def __getattr__(name: str) -> Any:
    # `from ckptdoc.commands.app import app` (`ckptdoc.cli.app`) gets the whole app, built once.
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app_for(argv: list[str]) -> typer.Typer:
    """Only the named command when the first argument names one (the usual `ckptdoc audit
    ...`): the group's options, help and errors for anything else need the whole app."""
    if argv and argv[0] in COMMANDS:
        try:
            app = build_app(only=argv[0])
        except ImportError:
            app = None
        if app is not None and app.registered_commands:
            return app
    return __getattr__("app")


def run(argv: list[str]) -> None:
    """Run the command line `argv`, with a last guard so a bug shows a message and an issue
    link, not a wall of traceback."""
    # An output that cannot encode a character (PYTHONIOENCODING=ascii, a legacy Windows
    # console) shows it escaped instead of failing: exit codes must follow 0/1/2 regardless.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        _app_for(argv)()
    except CheckpointError as exc:
        stderr.print(f"[bold red]error:[/bold red] {escape(shown(str(exc), 4000))}")
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        # `ckptdoc ls ... | head`: the reader went away; what was asked for was done.
        from ckptdoc.commands.common import silence_stdout

        silence_stdout()
        sys.exit(0)

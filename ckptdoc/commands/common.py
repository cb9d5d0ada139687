"""What every command shares: consoles, exit codes, usage errors."""

from __future__ import annotations

import os
import sys

import typer
from rich.color import ColorSystem
from rich.console import Console
from rich.markup import escape

from ckptdoc.report.safe import shown

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

# Piped output (every CI log) is not a terminal: Rich would assume 80 columns, wrap headings and
# cut tables' right borders. Logs get LOG_WIDTH columns (or $COLUMNS); tables still take only
# the width they need.
LOG_WIDTH = 160


def _width(stream: object) -> int | None:
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return None  # a terminal: its own width
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else LOG_WIDTH


class _Console(Console):
    """Rich exits 1 when the reader of a pipe goes away (`ckptdoc audit | head -1`), which
    reads as "findings". Let the command decide: it knows the exit code the audit earned."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def silence_stdout() -> None:
    """Point stdout at /dev/null after a broken pipe, so the final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# Reports go to stdout, everything for people (progress, summaries, errors) to stderr, so
# `ckptdoc audit --format json > report.json` stays clean.
stdout = _Console(highlight=False, width=_width(sys.stdout))
stderr = _Console(stderr=True, highlight=False, width=_width(sys.stderr))


def set_color(mode: str) -> None:
    """`--color auto|always|never` on both consoles: auto follows the terminal and NO_COLOR /
    FORCE_COLOR; always colours a CI log; never writes plain text to a terminal. Rich has no
    public setter for a console created already, hence its private fields here."""
    for console in (stdout, stderr):
        # Each run starts from the console's own detection (one process may run several
        # commands: tests, embedding).
        saved = _DEFAULTS.setdefault(id(console), (
            console.no_color, console._force_terminal, console._color_system))  # noqa: SLF001
        console.no_color = saved[0]
        console._force_terminal = saved[1]  # noqa: SLF001
        console._color_system = saved[2]  # noqa: SLF001
        if mode == "never":
            console.no_color = True
        elif mode == "always":
            console.no_color = False
            console._force_terminal = True  # noqa: SLF001
            if console._color_system is None:  # noqa: SLF001
                console._color_system = ColorSystem.STANDARD  # noqa: SLF001


_DEFAULTS: dict[int, tuple[bool, bool | None, ColorSystem | None]] = {}


def import_user_modules(modules: list[str]) -> None:
    """`--import MODULE` (audit --data, recalibrate): the user's code, run as given before
    loading, so the custom classes it registers resolve; a failure is a usage error."""
    from ckptdoc.recalibrate.quiet import import_user_module

    for module in modules:
        try:
            import_user_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code: report, do not crash
            raise usage_error(f"--import {module}: {type(exc).__name__}: {exc}") from None


def usage_error(message: str) -> typer.Exit:
    stderr.print(f"[bold red]error:[/bold red] {escape(shown(message, 4000))}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)

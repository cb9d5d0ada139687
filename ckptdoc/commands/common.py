"""What every command shares: consoles, exit codes, usage errors."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

# Reports go to stdout, everything for people (progress, summaries, errors) to stderr, so
# `ckptdoc audit --format json > report.json` stays clean.
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def usage_error(message: str) -> typer.Exit:
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
    return typer.Exit(EXIT_USAGE)

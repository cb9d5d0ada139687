"""`ckptdoc rule [CODE]`: explain a rule, or list them all."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ckptdoc.commands.common import stdout, usage_error
from ckptdoc.rules import RULES


def rule(
    code: Annotated[str | None, typer.Argument(help="A rule code such as BN002.",
                                               metavar="[CODE]")] = None,
) -> None:
    """Explain a rule: what it flags, why it happens, and how to fix it. Without a code, list
    every rule.

    Exit codes: **0** explained or listed; **2** no such rule.
    """
    if code is None:
        table = Table(title="ckptdoc rules")
        table.add_column("code")
        table.add_column("default severity")
        table.add_column("flags")
        for r in RULES.values():
            table.add_row(r.code, r.severity.value, r.title)
        stdout.print(table)
        stdout.print("Explain one with `ckptdoc rule CODE`.")
        return
    found = RULES.get(code.upper())
    if found is None:
        raise usage_error(f"unknown rule {code!r}; known rules: {', '.join(RULES)}")
    stdout.print(f"[bold]{found.code}[/bold] ({found.severity.value}): {found.title}\n")
    stdout.print(found.explanation, markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("rule")(rule)

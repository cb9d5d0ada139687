"""`ckptdoc ls PATH`: the BN groups of one checkpoint (or every variable with --all)."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ckptdoc.auditor import evidence_groups
from ckptdoc.checkpoint import Checkpoint
from ckptdoc.commands.common import EXIT_USAGE, stderr, stdout
from ckptdoc.errors import CheckpointError
from ckptdoc.formats import open_checkpoint
from ckptdoc.groups import ROLES, BNGroup
from ckptdoc.ledger import account
from ckptdoc.report.safe import shown


class LsFormat(str, Enum):
    text = "text"
    json = "json"


def ls(
    path: Annotated[
        str,
        typer.Argument(
            help="A checkpoint prefix, .index, directory, SavedModel or Keras file; or a URL "
            "(s3://, gs://, https://, with `ckptdoc[remote]`).",
            metavar="PATH",
        ),
    ],
    all_variables: Annotated[
        bool, typer.Option("--all", help="List every variable, not only BN groups.")
    ] = False,
    output_format: Annotated[
        LsFormat, typer.Option("--format", help="text (a table) or json.")
    ] = LsFormat.text,
) -> None:
    """List the batch-norm layers in a checkpoint: members, channels, dtype and statistics.

    Exit codes: **0** listed; **2** the file could not be read, or a usage error.
    """
    try:
        with open_checkpoint(path) as ckpt:
            groups = evidence_groups(ckpt)
            if output_format == LsFormat.json:
                stdout.out(json.dumps(_as_json(path, ckpt, groups, all_variables), indent=2))
            elif all_variables:
                _print_all(ckpt, groups)
            else:
                _print_groups(path, ckpt, groups)
    except CheckpointError as exc:
        stderr.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None


def _as_json(
    path: str, ckpt: Checkpoint, groups: list[BNGroup], all_variables: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": str(path),
        "format": ckpt.format,
        "groups": [
            {
                "name": g.name,
                "channels": g.channels(ckpt.tensors),
                "members": {role: g.members.get(role) for role in ROLES},
                "found_by": g.evidence.found_by,
                **({"extras": dict(g.extras)} if g.extras else {}),
            }
            for g in groups
        ],
    }
    if all_variables:
        ledger = account(ckpt.tensors, groups)
        owner = {k: g.name for g in groups for k in g.all_keys}
        out["variables"] = [
            {"key": t.key, "dtype": str(t.dtype), "shape": list(t.shape),
             "bucket": ledger.buckets[t.key],
             **({"layer": owner[t.key]} if t.key in owner else {})}
            for t in ckpt.tensors.values()
        ]
    return out


def _stat(ckpt: Checkpoint, key: str | None) -> str:
    if key is None:
        return "[dim]absent[/dim]"
    value = np.asarray(ckpt.read(key))
    if value.size == 0 or not np.issubdtype(value.dtype, np.number):
        return "-"
    v = value.astype(np.float64)
    return f"{v.min():.3g} / {v.mean():.3g} / {v.max():.3g}"


def _print_groups(path: str, ckpt: Checkpoint, groups: list[BNGroup]) -> None:
    for note in ckpt.warnings:
        stderr.print(f"note: {shown(note, 4000)}", soft_wrap=True, markup=False)
    table = Table(
        title=f"{escape(shown(str(path)))} ({ckpt.format}): {len(groups)} BN layers",
        title_justify="left",
    )
    table.add_column("BN layer", overflow="fold")
    table.add_column("channels", justify="right")
    table.add_column("dtype")
    for role in ROLES:
        table.add_column(f"{role}\nmin / mean / max", justify="right")
    for g in groups:
        first = next((k for k in g.members.values() if k), None)
        dtype = str(ckpt.tensors[first].dtype) if first else "?"
        table.add_row(
            Text(shown(g.name)) + Text(f"\nfound by {g.evidence.found_by}", style="dim"),
            str(g.channels(ckpt.tensors) or "?"),
            dtype,
            *(_stat(ckpt, g.members.get(r)) for r in ROLES),
        )
    stdout.print(table)


def _print_all(ckpt: Checkpoint, groups: list[BNGroup]) -> None:
    owner = {k: g.name for g in groups for k in g.all_keys}
    ledger = account(ckpt.tensors, groups)
    table = Table(
        title=f"{escape(shown(str(ckpt.path)))} ({ckpt.format}): {len(ckpt.tensors)} variables",
        title_justify="left",
    )
    table.add_column("key", overflow="fold")
    table.add_column("dtype")
    table.add_column("shape")
    table.add_column("BN layer", overflow="fold")
    table.add_column("is")
    for info in ckpt.tensors.values():
        bucket = ledger.buckets[info.key]
        table.add_row(
            Text(shown(info.key)), str(info.dtype), str(list(info.shape)),
            Text(shown(owner.get(info.key, ""))),
            Text(bucket, style="bold red" if bucket == "unexplained" else ""),
        )
    stdout.print(table)
    counts = ", ".join(f"{n} {bucket}" for bucket, n in ledger.counts().items() if n)
    stdout.print(f"Accounted for: {counts}.", markup=False)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)

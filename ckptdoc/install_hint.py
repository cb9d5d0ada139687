"""How to install what an optional feature needs, read from ckptdoc's own metadata, so the
hint names packages that exist (`ckptdoc[recalibrate]` is not on PyPI; its requirements are).
Knows package metadata, nothing else."""

from __future__ import annotations

import platform
import re

__all__ = ["install_hint"]

_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_MACHINE = re.compile(r"""platform_machine\s*(==|!=)\s*["']([^"']+)["']""")


def install_hint(extra: str) -> str:
    """`pip install 'pkg>=x' ...` for the optional feature `extra`, or, when the metadata is
    not there, the clone's own extra."""
    try:
        from importlib.metadata import PackageNotFoundError, requires

        lines = requires("ckptdoc") or []
    except PackageNotFoundError:
        lines = []
    wanted = []
    for line in lines:
        spec, _, marker = line.partition(";")
        found = _EXTRA.search(marker)
        if found is None or found.group(1) != extra:
            continue
        machine = _MACHINE.search(marker)
        if machine is not None:
            op, value = machine.groups()
            if (platform.machine() == value) != (op == "=="):
                continue
        wanted.append(f"'{spec.strip()}'")
    if not wanted:
        return f"`pip install '.[{extra}]'` in a ckptdoc clone"
    return f"`pip install {' '.join(wanted)}` (from a ckptdoc clone: `pip install '.[{extra}]'`)"

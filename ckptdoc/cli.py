"""The `ckptdoc` console entry point. It answers `ckptdoc --version` before importing anything
else, and sets what must be set before NumPy loads; the commands live in `commands/app.py`
(Typer), imported only when a command runs.

Exit codes: 0 clean, 1 findings at or above --fail-on, 2 usage error or unreadable file.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def main() -> None:
    argv = sys.argv[1:]
    if argv in (["--version"], ["-V"]):
        # The one answer that needs no command-line parser: Typer, Click and Rich take
        # longer to import than the rest of the start-up together.
        from ckptdoc.version import __version__

        print(f"ckptdoc {__version__}")
        return
    if argv[:1] != ["recalibrate"]:
        # NumPy's bundled OpenBLAS starts a busy-waiting thread per core when NumPy is imported
        # (~0.1 s of CPU, which a loaded CI machine pays in wall time); no other command does
        # linear algebra. Set before anything imports NumPy; a user's own setting wins.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from ckptdoc.commands.app import run

    run(argv)


def __getattr__(name: str) -> Any:
    # `from ckptdoc.cli import app` (tests, embedding): the whole Typer app, built once.
    if name in ("app", "build_app", "COMMANDS"):
        from ckptdoc.commands import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

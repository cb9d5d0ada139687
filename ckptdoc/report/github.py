"""`--format github`: GitHub Actions workflow commands, one annotation per finding.

`::error file=models/a.h5,title=ckptdoc BN002::bn1: moving_mean is all 0 ...`. Checkpoints are
binary, so annotations carry no line and appear on the file in the pull request.
"""

from __future__ import annotations

from ckptdoc.report.model import AuditReport, RenderOptions, artifact_path, relative_posix
from ckptdoc.report.safe import printable
from ckptdoc.rules import Severity

COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    """The message part of a workflow command: `%`, CR and LF must be escaped; other control
    characters (escape sequences from a layer name) are shown, never sent to the log."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return printable(text)


def escape_property(text: str) -> str:
    """A property value (`file=`, `title=`): additionally `:` and `,`."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _command(level: str, path: str, title: str, message: str) -> str:
    return (
        f"::{level} file={escape_property(path)},title={escape_property(title)}"
        f"::{escape_data(message)}"
    )


def render(report: AuditReport, options: RenderOptions | None = None) -> str:
    options = options or RenderOptions()
    lines = []
    for file in report.files:
        path = relative_posix(artifact_path(file.path), options.root)
        if file.error is not None:
            lines.append(_command("error", path, "ckptdoc read error", file.error))
        for f in file.findings:
            lines.append(
                _command(COMMAND[f.severity], path, f"ckptdoc {f.rule}", f"{f.group}: {f.message}")
            )
    return "".join(line + "\n" for line in lines)

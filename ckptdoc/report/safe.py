"""Text from strangers' files, made safe to show. Layer names, paths and messages come from
model files anyone can write: an escape sequence in a layer name must not clear a CI log,
fake an "ALL OK", plant a hyperlink, reorder text (bidi overrides) or break an XML report.

`printable` is the one rule every report applies to untrusted text: control characters (C0,
DEL, C1), zero-width and bidirectional formatting characters become visible escapes
(`\\x1b`, `\\u202e`). Each format then adds its own escaping (XML, Markdown/HTML, workflow
commands) on top.
"""

from __future__ import annotations

import re

__all__ = ["printable", "html_text", "shown", "MAX_SHOWN", "MAX_RUN"]

#: Longest untrusted string shown in full on a console; longer ones are cut with a marker
#: (a 10 MB layer name must not take a minute to lay out).
MAX_SHOWN = 400

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0 controls (escape sequences start with \x1b), DEL, C1 controls
    "\u200b-\u200f\u2028\u2029"  # zero-width characters, marks, line / paragraph separators
    "\u202a-\u202e\u2066-\u2069\ufeff]"  # bidirectional embeddings, overrides, isolates; BOM
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


#: Longest run without a space shown whole (a 10 MB layer name took 25 s to lay out and
#: 35 MB of log; an error message quoting a 64 KiB node name keeps its own words).
MAX_RUN = 1000
_LONG_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")


def _cut(text: str, limit: int) -> str:
    return f"{text[:limit]}…[{len(text) - limit} more characters]" if len(text) > limit else text


def printable(text: str) -> str:
    """`text` with every control / invisible formatting character shown as an escape, and
    every run of more than MAX_RUN characters without a space cut with a marker. Machine
    formats (JSON, SARIF) keep names whole; every report for people goes through here."""
    return _UNSAFE.sub(_escape, _LONG_RUN.sub(lambda m: _cut(m.group(), MAX_RUN), text))


def html_text(text: str) -> str:
    """Printable, and inert in Markdown renderers that pass HTML through."""
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """The console's choke point for text from files: printable, and at most `limit`
    characters, each cut with a marker saying how much was cut."""
    return printable(_cut(text, limit))

"""Whether a path names a remote object. Kept apart from `remote` (fsspec, HTTP limits) so that
every path can be asked without loading the remote readers. Must not know: how to read one."""

from __future__ import annotations

import os
import re

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | os.PathLike[str]) -> bool:
    """A URL for fsspec (`s3://b/k`, `https://...`); `file://` and plain paths are local."""
    text = os.fspath(path)
    return bool(_URL.match(text)) and not text.startswith("file://")

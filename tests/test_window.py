"""A window over an mmap behaves like the bytes it covers, as a buffer and as a file."""

from __future__ import annotations

import io
import mmap
from pathlib import Path

import pytest

from ckptdoc.formats.window import Window


@pytest.fixture()
def window(tmp_path: Path):
    data = bytes(range(256)) * 40
    path = tmp_path / "blob"
    path.write_bytes(b"HEADER" + data + b"TRAILER")
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    yield Window(view, 6, len(data)), data
    view.close()


def test_indexing_slicing_and_find_match_the_bytes(window):
    w, data = window
    assert len(w) == len(data)
    assert w[0] == data[0] and w[-1] == data[-1]
    assert w[10:300] == data[10:300]
    assert w[len(data) - 3 : len(data) + 50] == data[-3:]  # clipped like bytes
    assert w.find(b"\x05\x06\x07") == data.find(b"\x05\x06\x07")
    assert w.find(b"\x05\x06\x07", 6) == data.find(b"\x05\x06\x07", 6)
    assert w.find(b"TRAILER") == -1 and w.find(b"HEADER") == -1  # never outside the window
    with pytest.raises(IndexError):
        w[len(data)]


def test_file_view_reads_and_seeks_like_bytesio(window):
    w, data = window
    f, ref = w.open(), io.BytesIO(data)
    for offset, whence, n in [(0, 0, 10), (100, 0, 1000), (-5, 2, 50), (3, 1, 7)]:
        assert f.seek(offset, whence) == ref.seek(offset, whence)
        assert f.read(n) == ref.read(n)
    assert f.read() == ref.read() == b""


def test_window_outside_the_buffer_is_refused(window):
    w, data = window
    with pytest.raises(ValueError):
        Window(w._buf, 10, len(data) + 100)

"""Remote reads against hostile servers (issue 22 §4): a loopback HTTP server that sends
endless bodies, lies about sizes, stalls, trickles and redirects to a second host; and the
protocols ckptdoc refuses. Each case ends in seconds as a per-URL error, exit 2.

Before: an endless or 1 TiB body was read until memory ran out, a stalled server hung past
400 s, a redirect to another host was followed, and any fsspec protocol was accepted.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ckptdoc
from ckptdoc.cli import app
from ckptdoc.formats import http_store

SAMPLES = Path(__file__).resolve().parent.parent / "sample_ckpts"


class _Hostile(http.server.SimpleHTTPRequestHandler):
    """Serves sample_ckpts/ under /sample/, and misbehaves under the other paths."""

    other: str = ""  # the second host's origin, for the cross-host redirect
    hits: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        self.hits.append(self.path)
        kind = self.path.split("/")[1]
        if kind == "sample":
            self.path = self.path[len("/sample") :]
            super().do_HEAD() if head else super().do_GET()
        elif kind == "endless":  # no length, never ends
            self._start(200, {})
            self._forever(head, b"x" * 65536, 0)
        elif kind == "huge":  # says 1 TiB, ignores Range
            self._start(200, {"Content-Length": str(1 << 40)})
            self._forever(head, b"x" * 65536, 0)
        elif kind == "stall":  # promises 1000 bytes, sends 10, then nothing
            self._start(200, {"Content-Length": "1000"})
            if not head:
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(30)
        elif kind == "slow":  # one byte every 0.2 s
            self._start(200, {})
            self._forever(head, b"x", 0.2)
        elif kind == "slowheaders":  # the headers themselves trickle
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(300):
                    self.wfile.write(b"X: y\r\n")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif kind == "elsewhere":
            self._start(302, {"Location": f"{self.other}/sample/keras2_healthy.h5",
                              "Content-Length": "0"})
        elif kind == "here":
            self._start(302, {"Location": "/sample/keras2_healthy.h5", "Content-Length": "0"})
        else:
            self.send_error(404)

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _forever(self, head: bool, chunk: bytes, pause: float) -> None:
        if head:
            return
        try:
            for _ in range(1_000_000):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass


def _serve(host: str, hits: list[str], other: str = "") -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Hostile,), {"hits": hits, "other": other})
    server = http.server.ThreadingHTTPServer(
        (host, 0), functools.partial(handler, directory=str(SAMPLES)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str], list[str]]]:
    # Limits scaled down so each case takes about a second; the logic is the shipped one.
    monkeypatch.setattr(http_store, "READ_TIMEOUT", 1.0)
    monkeypatch.setattr(http_store, "HEADER_DEADLINE", 2.0)
    monkeypatch.setattr(http_store, "GRACE", 1.0)
    monkeypatch.setattr("ckptdoc.formats.table.MAX_INDEX_BYTES", 4 << 20)
    hits_b: list[str] = []
    second = _serve("127.0.0.2", hits_b)  # stands in for an internal host
    other = f"http://127.0.0.2:{second.server_address[1]}"
    hits_a: list[str] = []
    first = _serve("127.0.0.1", hits_a, other)
    try:
        yield f"http://127.0.0.1:{first.server_address[1]}", hits_a, hits_b
    finally:
        first.shutdown()
        second.shutdown()


def _error(url: str) -> tuple[str, float]:
    started = time.monotonic()
    report = ckptdoc.audit(url, config=False).files[0]
    assert report.error is not None, url
    return report.error, time.monotonic() - started


@pytest.mark.parametrize(("path", "problem"), [
    ("endless/model.ckpt", "larger than"),
    ("huge/model.ckpt", "larger than"),
    ("stall/model.ckpt", "sent nothing for 1 s"),
    ("slow/model.ckpt", "sends too slowly"),
    ("slowheaders/model.ckpt", "no response within 2 s"),
    ("elsewhere/x.h5", "redirected to another host"),
])
def test_hostile_servers_are_per_url_errors_in_seconds(
    servers: tuple[str, list[str], list[str]], path: str, problem: str
) -> None:
    base, _hits, hits_elsewhere = servers
    error, seconds = _error(f"{base}/{path}")
    assert problem in error, error
    assert seconds < 15
    assert hits_elsewhere == []  # the second host was never asked


def test_redirects_within_the_origin_are_followed(
    servers: tuple[str, list[str], list[str]]
) -> None:
    base, hits, _ = servers
    remote = ckptdoc.audit(f"{base}/here/x.h5", config=False).files[0]
    local = ckptdoc.audit(SAMPLES / "keras2_healthy.h5", config=False).files[0]
    assert remote.error is None, remote.error
    assert (remote.groups, remote.findings) == (local.groups, local.findings)


def test_a_server_is_never_listed(servers: tuple[str, list[str], list[str]]) -> None:
    # fsspec's HTTP listing followed links without end (989 requests for an endless tree).
    base, hits, _ = servers
    result = CliRunner().invoke(app, ["audit", f"{base}/sample/"])
    assert result.exit_code == 2
    assert len(hits) < 10


@pytest.mark.parametrize("url", [
    "webhdfs://internal.example:9870/model.ckpt",
    "local:///dev/zero",
    "zip://model.h5::file:///tmp/bomb.zip",
    "ftp://127.0.0.1:9/model.ckpt",
    "memory://model.ckpt",
    "s3://bucket/model.ckpt::http://evil.example/x",
])
def test_only_the_allowed_protocols(url: str) -> None:
    result = CliRunner().invoke(app, ["audit", url])
    assert result.exit_code == 2, result.output
    assert "ckptdoc reads s3://, gs://, gcs://, http://, https:// URLs" in result.output
    assert "Traceback" not in result.output

"""Files on an HTTP(S) server, read with the limits an untrusted server needs. Knows HTTP,
nothing about checkpoints: `remote.py` uses it as it uses an fsspec filesystem (`exists`,
`size`, `cat_file`, `open`), for `http://` and `https://` URLs.

fsspec's HTTP filesystem follows redirects to any host, has no timeouts by default, reads a
body whatever its length and lists folders by following links without end. Here:
- connect and read timeouts of seconds, a deadline for the response headers, and a minimum
  average rate for bodies (a server trickling a byte at a time is cut off);
- a body is read only up to what was asked (a range) or the cap given (a whole file);
- redirects only within the user's own origin (scheme, host, port), at most 5: a redirect
  to another host (an internal address, a cloud metadata service) is refused;
- no listing: name the checkpoint (its prefix, `.index` or file).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

__all__ = ["HttpStore", "HttpLimitError"]

CONNECT_TIMEOUT = 10.0
#: No byte for this long: the server stalled.
READ_TIMEOUT = 20.0
#: The status line and headers must arrive within this long (a trickle never times out).
HEADER_DEADLINE = 30.0
#: After GRACE seconds a body must have averaged MIN_RATE bytes a second.
GRACE = 20.0
MIN_RATE = 16 << 10
MAX_REDIRECTS = 5
#: A server that ignores Range is read from the start; past this offset that is refused.
MAX_SKIP = 64 << 20
_CHUNK = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HttpLimitError(OSError):
    """The server broke a limit (size, time, redirect): the message says which."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


class HttpStore:
    """The files under one user-given URL's origin."""

    def __init__(self, url: str) -> None:
        self.origin = _origin(url)

    # --- fsspec's subset ----------------------------------------------------------------------

    def exists(self, url: str) -> bool:
        with self._response("HEAD", url) as resp:
            if resp.status in (404, 410):
                return False
            if resp.status in (405, 501):  # no HEAD: ask for one byte
                with self._response("GET", url, {"Range": "bytes=0-0"}) as get:
                    return get.status in (200, 206)
            return self._ok(url, resp) is None

    def size(self, url: str) -> int:
        with self._response("HEAD", url) as resp:
            self._ok(url, resp)
            length = resp.getheader("Content-Length")
        if length is not None and length.isdigit():
            return int(length)
        with self._response("GET", url, {"Range": "bytes=0-0"}) as get:
            self._ok(url, get)
            total = (get.getheader("Content-Range") or "").rpartition("/")[2]
        if total.isdigit():
            return int(total)
        raise HttpLimitError(f"{url}: the server does not say how large the file is")

    def isdir(self, url: str) -> bool:
        return False  # an HTTP server has no folders to list

    def find(self, url: str) -> list[str]:
        raise HttpLimitError(f"{url}: an HTTP server cannot be listed; name the checkpoint "
                             "(its prefix, its .index or the file)")

    ls = find

    def cat_file(self, url: str, start: int | None = None, end: int | None = None,
                 cap: int | None = None) -> bytes:
        """Bytes [start, end) of `url`, or the whole file (at most `cap` bytes)."""
        return b"".join(self.chunks(url, start, end, cap))

    def chunks(self, url: str, start: int | None = None, end: int | None = None,
               cap: int | None = None) -> Iterator[bytes]:
        headers = {"Range": f"bytes={start or 0}-{end - 1}"} if end is not None else {}
        with self._response("GET", url, headers) as resp:
            self._ok(url, resp)
            skip = 0
            if end is not None:
                want = end - (start or 0)
                if resp.status == 200 and start:  # Range ignored: the body starts at 0
                    if start > MAX_SKIP:
                        raise HttpLimitError(f"{url}: the server ignores range requests")
                    skip = start
            else:
                want = cap if cap is not None else MAX_SKIP
            yield from self._body(url, resp, skip, want, whole=end is None)

    # --- the limits ---------------------------------------------------------------------------

    @staticmethod
    def _ok(url: str, resp: http.client.HTTPResponse) -> None:
        if resp.status == 404 or resp.status == 410:
            raise FileNotFoundError(url)
        if resp.status in (401, 403):
            raise PermissionError(f"HTTP {resp.status}")
        if resp.status not in (200, 206):
            raise HttpLimitError(f"{url}: HTTP {resp.status} {resp.reason}")

    @staticmethod
    def _body(url: str, resp: http.client.HTTPResponse, skip: int, want: int,
              whole: bool) -> Iterator[bytes]:
        started, got = time.monotonic(), 0
        while skip or want:
            try:
                chunk = resp.read1(_CHUNK)
            except TimeoutError as exc:
                raise HttpLimitError(f"{url}: the server sent nothing for "
                                     f"{READ_TIMEOUT:.0f} s") from exc
            if not chunk:
                return
            got += len(chunk)
            elapsed = time.monotonic() - started
            if elapsed > GRACE and got < MIN_RATE * elapsed:
                raise HttpLimitError(f"{url}: the server sends too slowly "
                                     f"({got / elapsed:.0f} bytes/s)")
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            if len(chunk) > want:
                if whole:
                    raise HttpLimitError(f"{url}: larger than the {want:,} bytes allowed "
                                         "for this file")
                chunk = chunk[:want]
            want -= len(chunk)
            yield chunk
        if whole and resp.read1(1):
            raise HttpLimitError(f"{url}: larger than the bytes allowed for this file")

    @contextmanager
    def _response(self, method: str, url: str,
                  headers: dict[str, str] | None = None) -> Iterator[http.client.HTTPResponse]:
        for _ in range(MAX_REDIRECTS + 1):
            conn = self._connect(url)
            try:
                resp = self._send(conn, method, url, headers or {})
                if resp.status not in _REDIRECTS:
                    yield resp
                    return
                target = urljoin(url, resp.getheader("Location") or "")
                if _origin(target) != self.origin:
                    raise HttpLimitError(
                        f"{url}: redirected to another host or scheme ({_origin(target)[1]}); "
                        "ckptdoc follows redirects only within the URL's own origin")
                url = target
            finally:
                conn.close()
        raise HttpLimitError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _connect(self, url: str) -> http.client.HTTPConnection:
        scheme, host, port = _origin(url)
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)

    @staticmethod
    def _send(conn: http.client.HTTPConnection, method: str, url: str,
              headers: dict[str, str]) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(READ_TIMEOUT)
        sock = conn.sock
        # A server trickling its headers never trips the read timeout: cut it at a deadline.
        cut = threading.Event()
        timer = threading.Timer(HEADER_DEADLINE, _shutdown, (sock, cut))
        timer.daemon = True
        timer.start()
        try:
            conn.request(method, target, headers={"User-Agent": "ckptdoc", **headers})
            resp = conn.getresponse()
        except OSError:
            if not cut.is_set():
                raise
            resp = None
        finally:
            timer.cancel()
        if cut.is_set() or resp is None:
            raise HttpLimitError(f"{url}: no response within {HEADER_DEADLINE:.0f} s")
        return resp


def _shutdown(sock: socket.socket, cut: threading.Event) -> None:
    cut.set()
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

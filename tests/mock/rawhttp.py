"""A minimal HTTP/1.1 client on raw sockets, for the emulator's tests.

It frames requests by hand, reads ``Content-Length``, chunked and
read-until-close bodies, and de-chunks the endless streaming config
(``/pools/default/bs/<bucket>``) incrementally, splitting configs at
``"\\n\\n\\n\\n"`` wherever the chunk boundaries fall (spec/cluster-config.md
§7). No ``http.client``/``urllib``: the emulator's HTTP server must work
with what is on the wire, not with what a library forgives.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode

__all__ = ["Response", "request", "basic", "ConfigStream", "HTTPError", "post_json", "post_form"]


class HTTPError(Exception):
    """The connection broke or the response was not HTTP."""


class Response:
    """A complete response."""

    def __init__(self, status: int, reason: str, headers: Dict[str, str], body: bytes, chunked: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.chunked = chunked

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return "<Response %d %r>" % (self.status, self.body[:300])


def basic(user: str, password: str) -> str:
    """An ``Authorization`` header value."""
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode("ascii")


class _Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self.fill():
                raise HTTPError("connection closed in a line: %r" % self.buf[:200])
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise HTTPError("connection closed after %d of %d bytes" % (len(self.buf), n))
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def rest(self) -> bytes:
        while self.fill():
            pass
        data, self.buf = self.buf, b""
        return data


def _connect(host: str, port: int, timeout: float, tls: Optional[ssl.SSLContext]) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=host)
    return sock


def _send_request(sock: socket.socket, host: str, port: int, method: str, path: str, body: bytes,
                  headers: Optional[Dict[str, str]], auth: Optional[Tuple[str, str]], close: bool) -> None:
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (host, port), "User-Agent: rawhttp/1"]
    if auth is not None:
        lines.append("Authorization: " + basic(*auth))
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    if body or method in ("POST", "PUT"):
        lines.append("Content-Length: %d" % len(body))
    if close:
        lines.append("Connection: close")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _read_head(reader: _Reader) -> Tuple[int, str, Dict[str, str]]:
    status_line = reader.line().decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HTTPError("not an HTTP status line: %r" % status_line)
    headers: Dict[str, str] = {}
    while True:
        line = reader.line()
        if not line:
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def _read_chunk(reader: _Reader) -> Optional[bytes]:
    """One chunk's data; None for the last (zero-size) chunk."""
    size_line = reader.line().split(b";", 1)[0].strip()
    size = int(size_line, 16)
    if size == 0:
        while reader.line():  # trailers
            pass
        return None
    data = reader.exactly(size)
    if reader.exactly(2) != b"\r\n":
        raise HTTPError("chunk not followed by CRLF")
    return data


def request(host: str, port: int, method: str, path: str, body: bytes = b"",
            headers: Optional[Dict[str, str]] = None, auth: Optional[Tuple[str, str]] = None,
            timeout: float = 30.0, tls: Optional[ssl.SSLContext] = None) -> Response:
    """One request on a fresh connection (``Connection: close``)."""
    sock = _connect(host, port, timeout, tls)
    try:
        _send_request(sock, host, port, method, path, body, headers, auth, close=True)
        reader = _Reader(sock)
        status, reason, head = _read_head(reader)
        chunked = head.get("transfer-encoding", "").lower() == "chunked"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            data = b""
        elif chunked:
            parts: List[bytes] = []
            while True:
                chunk = _read_chunk(reader)
                if chunk is None:
                    break
                parts.append(chunk)
            data = b"".join(parts)
        elif "content-length" in head:
            data = reader.exactly(int(head["content-length"]))
        else:
            data = reader.rest()
        return Response(status, reason, head, data, chunked)
    finally:
        sock.close()


def post_json(host: str, port: int, path: str, obj: Any, auth: Optional[Tuple[str, str]] = None,
              **kw: Any) -> Response:
    return request(host, port, "POST", path, json.dumps(obj).encode(), {"Content-Type": "application/json"},
                   auth, **kw)


def post_form(host: str, port: int, path: str, fields: Dict[str, Any], auth: Optional[Tuple[str, str]] = None,
              method: str = "POST", **kw: Any) -> Response:
    return request(host, port, method, path, urlencode(fields).encode(),
                   {"Content-Type": "application/x-www-form-urlencoded"}, auth, **kw)


class ConfigStream:
    """``GET /pools/default/bs/<bucket>``: configs as they arrive.

    The body is chunked and never ends; chunks are appended to a buffer and
    every ``"\\n\\n\\n\\n"`` in it ends one config.
    """

    DELIMITER = b"\n\n\n\n"

    def __init__(self, host: str, port: int, bucket: str, auth: Optional[Tuple[str, str]],
                 path: Optional[str] = None, timeout: float = 10.0) -> None:
        self.sock = _connect(host, port, timeout, None)
        _send_request(self.sock, host, port, "GET", path or "/pools/default/bs/%s" % bucket, b"", None, auth,
                      close=False)
        self.reader = _Reader(self.sock)
        self.status, _reason, self.headers = _read_head(self.reader)
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.pending = b""
        self.chunks_seen = 0

    def next_raw(self, timeout: float = 10.0) -> bytes:
        """The next config's text (``$HOST`` not yet replaced)."""
        deadline = time.monotonic() + timeout
        while self.DELIMITER not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no config within %.1f s" % timeout)
            self.sock.settimeout(left)
            chunk = _read_chunk(self.reader)
            if chunk is None:
                raise HTTPError("the config stream ended")
            self.chunks_seen += 1
            self.pending += chunk
        text, self.pending = self.pending.split(self.DELIMITER, 1)
        return text

    def next_config(self, host: str = "127.0.0.1", timeout: float = 10.0) -> Dict[str, Any]:
        """The next config, ``$HOST`` replaced by ``host``."""
        return json.loads(self.next_raw(timeout).replace(b"$HOST", host.encode()))

    def close(self) -> None:
        self.sock.close()

"""An evented HTTP/1.1 client on the IOPS, with h11 for the protocol.

:class:`HTTPConnection` is one connection to one ``host:port`` (plain or
TLS). It sends one request at a time and streams the response to callbacks
as it arrives: ``on_head(status, headers)``, ``on_data(bytes)`` for each
piece of body (chunked or content-length, de-chunked by h11), then exactly
one of ``on_end()`` or ``on_error(rc, message)``. A per-request timeout runs
on an engine timer. After a complete response the connection can carry the
next request (keep-alive).

:class:`ConfigStream` uses it for HTTP bootstrap: ``/pools/default/bs/<b>``
(falling back to ``/pools/default/bucketsStreaming/<b>``), splitting the
never-ending body into configs at each ``\\n\\n\\n\\n``.
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import h11

from couchbase_core._engine.dial import resolve
from couchbase_core._engine.transport import Transport
from couchbase_core.exceptions import RC
from couchbase_core.iops.base import (
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
)

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.instance import Engine

__all__ = ["HTTPConnection", "HTTPRequest", "HTTPPool", "ConfigStream", "basic_auth"]

log = logging.getLogger("couchbase_core.engine")

READ_SIZE = 65536

#: The config stream: one config (the bytes between two separators) may not
#: exceed this; a stream sending more without a separator is cut off with
#: LimitExceededError and the bootstrap moves to another node. Real
#: configs are a few hundred KiB at most.
MAX_CONFIG_SIZE = 16 * 1024 * 1024
#: How much of a refused config request's body is kept for the message.
MAX_ERROR_TEXT = 4096
_SEPARATOR = b"\n\n\n\n"


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header value."""
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode("utf-8")).decode("ascii")


class HTTPRequest:
    """One request and the callbacks that receive its response."""

    def __init__(self, method: str, path: str, headers: Optional[Dict[str, str]] = None, body: bytes = b"",
                 timeout: Optional[float] = None,
                 on_head: Optional[Callable[[int, Dict[str, str]], None]] = None,
                 on_data: Optional[Callable[[bytes], None]] = None,
                 on_end: Optional[Callable[[], None]] = None,
                 on_error: Optional[Callable[[int, str], None]] = None) -> None:
        self.method = method
        self.path = path
        self.headers = dict(headers or {})
        self.body = body
        self.timeout = timeout
        self.on_head = on_head or (lambda status, headers: None)
        self.on_data = on_data or (lambda data: None)
        self.on_end = on_end or (lambda: None)
        self.on_error = on_error or (lambda rc, message: None)
        self.finished = False

    def _finish(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        return True


class HTTPConnection:
    """One HTTP/1.1 connection driven by the engine's IOPS."""

    def __init__(self, engine: "Engine", host: str, port: int, tls: bool = False) -> None:
        self.engine = engine
        self.iops = engine.iops
        self.host = host
        self.port = port
        self.tls = tls
        self.state = "idle"  # idle, connecting, tls, open, closed
        #: The stream of the current socket (see transport.py).
        self._stream: Optional[Transport] = None
        self._h11: Optional[h11.Connection] = None
        self._out = b""  # request bytes the stream has not taken yet
        self._request: Optional[HTTPRequest] = None
        self._timer: Any = None
        self._paused = False
        #: the engine's pool this connection returns to when idle
        self.pool: Any = None
        #: taken from the pool's idle connections: the server may have
        #: closed it meanwhile, so a failure before any response byte means
        #: "send again on a fresh connection", not "the request failed"
        self.reused = False
        self._answered = False  # response bytes arrived for the current request
        tracked = getattr(engine, "http_connections", None)  # for Engine.after_fork_in_child
        if tracked is not None:
            tracked.add(self)

    @property
    def authority(self) -> str:
        """``host:port``."""
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)

    @property
    def busy(self) -> bool:
        """A request is in progress."""
        return self._request is not None

    # -------------------------------------------------------------- requests

    def request(self, req: HTTPRequest) -> None:
        """Send ``req`` (one at a time). Never calls back inside this call."""
        if self._request is not None:
            raise RuntimeError("HTTPConnection carries one request at a time")
        if self.state == "closed":
            self.engine.defer(lambda: req.on_error(RC.OBJECT_DESTROYED, "the connection is closed"))
            return
        self._request = req
        if req.timeout:
            self._arm_timer(req.timeout)
        if self.state == "open":
            self._send_request()
        elif self.state == "idle":
            self._connect()

    def still_open(self) -> bool:
        """Whether an idle connection can carry another request: the server
        has not closed it and sent nothing unasked (a non-blocking peek)."""
        stream = self._stream
        return stream is not None and stream.still_open()

    @property
    def _sock(self) -> Any:
        """The current socket, or None (diagnostics and tests only: all I/O
        goes through the stream)."""
        stream = self._stream
        return stream.sock if stream is not None else None

    def _arm_timer(self, seconds: float) -> None:
        if self._timer is None:
            self._timer = self.iops.timer_event_factory()
            self._timer._handler = self._on_timeout
        self.iops.update_timer(self._timer, PYCBC_EVACTION_WATCH, int(math.ceil(seconds * 1e6)))

    def _disarm_timer(self) -> None:
        if self._timer is not None:
            self.iops.update_timer(self._timer, PYCBC_EVACTION_UNWATCH, 0)

    def _on_timeout(self, _flags: int) -> None:
        req = self._request
        if req is not None:
            self._fail(RC.TIMEOUT, "HTTP %s %s on %s timed out after %.3gs"
                       % (req.method, req.path, self.authority, req.timeout or 0))

    def _send_request(self) -> None:
        req = self._request
        assert req is not None and self._h11 is not None
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        self._answered = False
        headers = [("Host", self.authority), ("User-Agent", self.engine.settings.client_string[:200]),
                   ("Accept", "application/json")]
        headers += list(req.headers.items())
        if req.body or req.method in ("POST", "PUT"):
            headers.append(("Content-Length", str(len(req.body))))
        try:
            data = self._h11.send(h11.Request(method=req.method, target=req.path, headers=headers))
            if req.body:
                data += self._h11.send(h11.Data(data=req.body))
            data += self._h11.send(h11.EndOfMessage())
        except (h11.LocalProtocolError, TypeError, ValueError) as exc:
            # A request that cannot be encoded fails now: left pending, its
            # caller would wait for the whole timeout.
            self._fail(RC.ARGUMENT, "cannot send the HTTP request: %s" % exc)
            return
        self._write(data)

    # ----------------------------------------------------------- connecting

    def _connect(self) -> None:
        self.state = "connecting"
        engine = self.engine
        stream = self._stream = Transport(
            self.iops, self.host, self.port, resolve=functools.partial(resolve, engine),
            on_connected=self._on_connected, on_readable=self._read, on_writable=self._flush, on_eof=self._on_eof,
            on_error=self._fail, on_tls_started=self._on_tls_started,
            tls_context=engine.tls_context if self.tls else None,
            socket_factory=engine.socket_factory, read_size=READ_SIZE)
        if self._paused:
            stream.pause_reading()
        stream.connect()

    def _on_tls_started(self) -> None:
        self.state = "tls"
        self._h11 = h11.Connection(h11.CLIENT)

    def _on_connected(self) -> None:
        if self._h11 is None:
            self._h11 = h11.Connection(h11.CLIENT)
        self.state = "open"
        if self._request is not None:
            self._send_request()

    def pause_reading(self) -> None:
        """Stop reading the socket (flow control: the consumer is behind)."""
        if not self._paused:
            self._paused = True
            if self._stream is not None:
                self._stream.pause_reading()

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        if self._paused:
            self._paused = False
            if self._stream is not None:
                self._stream.resume_reading()

    # -------------------------------------------------------------------- I/O

    def _write(self, data: bytes) -> None:
        self._out += data
        self._flush()

    def _flush(self) -> None:
        stream = self._stream
        if stream is None:
            return
        if self._out:
            sent = stream.send(self._out)
            if sent < 0:
                return  # failed (reported by the stream)
            self._out = self._out[sent:]
        stream.want_write(bool(self._out))

    def _read(self) -> None:
        stream = self._stream
        data = stream.recv() if stream is not None else None
        if data is not None:
            self._receive(data)

    def _on_eof(self) -> None:
        stream = self._stream
        self._receive(b"")
        if self._stream is stream and self.state != "closed":
            # h11 saw nothing wrong (no request in progress...), but this
            # stream is gone: the connection cannot be used again
            self._fail(RC.NETWORK, "connection to %s closed" % self.authority)

    def _receive(self, data: bytes) -> None:
        conn = self._h11
        if conn is None:
            return
        if data:
            self._answered = True
        conn.receive_data(data)
        while True:
            req = self._request
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(RC.PROTOCOL, "invalid HTTP from %s: %s" % (self.authority, exc))
                return
            if event is h11.NEED_DATA:
                if not data and self.state != "closed":
                    self._fail(RC.NETWORK, "connection to %s closed before the response ended" % self.authority)
                return
            if isinstance(event, h11.Response):
                if req is not None:
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                    if not self._deliver(req, req.on_head, event.status_code, headers):
                        return
            elif isinstance(event, h11.Data):
                if req is not None and not req.finished:
                    if not self._deliver(req, req.on_data, bytes(event.data)):
                        return
            elif isinstance(event, h11.EndOfMessage):
                self._disarm_timer()
                self._request = None
                self.resume_reading()  # a pause for this response is over
                reusable = conn.our_state is h11.DONE and conn.their_state is h11.DONE
                if req is not None and req._finish():
                    try:
                        req.on_end()
                    except Exception:  # the request is over: all we can do is say so
                        log.exception("HTTP %s %s: on_end raised", req.method, req.path)
                if not reusable:
                    self.close()
                return
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if req is not None:
                    self._fail(RC.NETWORK, "connection to %s closed" % self.authority)
                else:
                    self.close()
                return
            else:  # InformationalResponse and the like
                continue

    def _deliver(self, req: HTTPRequest, callback: Callable[..., None], *args: Any) -> bool:
        """Run a response callback. One that raises fails the request (with
        RC.INTERNAL) instead of escaping into the loop and leaving it
        unfinished. False when the request is over."""
        try:
            callback(*args)
        except Exception as exc:
            log.exception("HTTP %s %s: a response callback raised", req.method, req.path)
            if self._request is req:
                self._fail(RC.INTERNAL, "handling the response of %s %s failed: %r" % (req.method, req.path, exc))
            elif req._finish():
                req.on_error(RC.INTERNAL, "handling the response of %s %s failed: %r" % (req.method, req.path, exc))
            return False
        return self._request is req and self.state != "closed"

    # ---------------------------------------------------------------- closing

    def _drop_socket(self) -> None:
        stream = self._stream
        self._stream = None
        if stream is not None:
            stream.close()

    def _fail(self, rc: int, message: str) -> None:
        req = self._request
        if (req is not None and self.reused and not self._answered
                and rc in (RC.NETWORK, RC.PROTOCOL) and not req.finished):
            # The server closed the kept-alive connection while it sat idle
            # (its keep-alive timeout, a restart): nothing of this request
            # was processed, so it goes again, once, on a new connection.
            self._reconnect()
            return
        self._request = None
        self.close()
        if req is not None and req._finish():
            req.on_error(rc, message)

    def _reconnect(self) -> None:
        self.reused = False
        self._drop_socket()
        self._h11 = None
        self._out = b""
        self._paused = False
        self._connect()  # the request and its timer stay

    def abort(self, rc: int, message: str) -> None:
        """Close the connection; a request in progress gets ``on_error(rc,
        message)`` from the loop (never inside this call)."""
        req, self._request = self._request, None
        self.close()
        if req is not None and req._finish():
            self.engine.defer(lambda: req.on_error(rc, message))

    def close(self) -> None:
        """Close the connection (a request in progress gets no callback)."""
        self.state = "closed"
        self._disarm_timer()
        if self._timer is not None:
            self.iops.update_timer(self._timer, PYCBC_EVACTION_CLEANUP, 0)
            self._timer = None
        self._drop_socket()

    def abandon_after_fork(self) -> Optional[HTTPRequest]:
        """In the child of a fork: let go of the inherited socket without
        reading, writing or shutting it down (no TLS close_notify either; only
        the child's descriptor is closed: see
        :meth:`Transport.abandon_after_fork`) and without IOPS calls; the
        connection is closed for good. Returns the request that was in
        progress (the parent's), for the caller to fail."""
        req = self._request
        self._request = None
        if self._timer is not None:
            self._timer._handler = lambda flags: None
        stream = self._stream
        self._stream = self._timer = None
        if stream is not None:
            stream.abandon_after_fork()
        self.state = "closed"
        self._h11 = None
        self._out = b""
        if req is not None and req.finished:
            return None
        return req


class HTTPPool:
    """Idle keep-alive connections per (host, port), for reuse."""

    def __init__(self, engine: "Engine", per_node: int = 4) -> None:
        self.engine = engine
        self.per_node = per_node
        self._idle: Dict[Tuple[str, int], List[HTTPConnection]] = {}
        # every connection handed out and not yet collected, so closing the
        # bucket also stops the requests in progress (streams included)
        self._lent: "weakref.WeakSet[HTTPConnection]" = weakref.WeakSet()

    def acquire(self, host: str, port: int) -> HTTPConnection:
        """An idle connection to ``host:port``, or a new one."""
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()
            if conn.state == "open" and not conn.busy and conn.still_open():
                conn._paused = False
                conn.reused = True
                self._lent.add(conn)
                return conn
            conn.close()
        conn = HTTPConnection(self.engine, host, port, tls=self.engine.tls_context is not None)
        conn.pool = self
        self._lent.add(conn)
        return conn

    def release(self, conn: HTTPConnection) -> None:
        """Give back a connection whose response ended; kept if reusable."""
        self._lent.discard(conn)
        if conn.state != "open" or conn.busy or conn._paused:
            conn.close()
            return
        idle = self._idle.setdefault((conn.host, conn.port), [])
        if len(idle) >= self.per_node:
            conn.close()
            return
        idle.append(conn)

    def close(self, rc: int = RC.OBJECT_DESTROYED, message: str = "the bucket was closed") -> None:
        """Close every connection: idle ones, and those carrying a request,
        whose request fails with ``rc`` (from the loop)."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        lent = list(self._lent)
        self._lent = weakref.WeakSet()
        for conn in lent:
            if conn.state != "closed":
                conn.abort(rc, message)


class ConfigStream:
    """The HTTP config stream of one node (bootstrap and updates)."""

    def __init__(self, engine: "Engine", host: str, port: int,
                 on_config: Callable[["ConfigStream", bytes], None],
                 on_failure: Callable[["ConfigStream", int, str], None]) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.on_config = on_config
        self.on_failure = on_failure
        self._conn: Optional[HTTPConnection] = None
        self._buffer = bytearray()
        self._status = 0
        self._paths = ["/pools/default/bs/%s", "/pools/default/bucketsStreaming/%s"]
        self._closed = False

    @property
    def authority(self) -> str:
        """``host:port``."""
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)

    def start(self) -> None:
        """Open the stream (first URI form)."""
        self._open()

    def _open(self) -> None:
        settings = self.engine.settings
        path = self._paths[0] % settings.bucket
        user, password = settings.sasl_credentials()
        headers = {}
        if user is not None:
            headers["Authorization"] = basic_auth(user, password or "")
        self._buffer = bytearray()
        self._status = 0
        self._conn = HTTPConnection(self.engine, self.host, self.port, tls=self.engine.tls_context is not None)
        req = HTTPRequest("GET", path, headers, timeout=None, on_head=self._on_head, on_data=self._on_data,
                          on_end=self._on_end, on_error=self._on_error)
        self._connect_deadline()
        self._conn.request(req)

    def _connect_deadline(self) -> None:
        # the first config must come within the per-node timeout
        old: Any = getattr(self, "_first_timer", None)
        if old is not None:
            self.engine.iops.update_timer(old, PYCBC_EVACTION_CLEANUP, 0)
        timer = self.engine.iops.timer_event_factory()
        self._first_timer: Any = timer
        timer._handler = self._on_first_timeout
        self.engine.iops.update_timer(timer, PYCBC_EVACTION_WATCH,
                                      int(self.engine.settings.config_node_timeout * 1e6))
        self._got_first = False

    def _on_first_timeout(self, _flags: int) -> None:
        if not self._got_first and not self._closed:
            self._fail(RC.TIMEOUT, "no config from %s within %.1fs" % (self.authority,
                                                                      self.engine.settings.config_node_timeout))

    def _on_head(self, status: int, headers: Dict[str, str]) -> None:
        self._status = status

    def _on_data(self, data: bytes) -> None:
        buffer = self._buffer
        if self._status != 200:
            buffer += data[:MAX_ERROR_TEXT - len(buffer)]  # only for the error message
            return
        # Search only the new bytes (and the 3 before them, for a separator
        # split across chunks), and cut every complete config out at once:
        # linear in the bytes received, however they are chunked.
        scan = max(0, len(buffer) - len(_SEPARATOR) + 1)
        buffer += data
        start = 0
        while not self._closed:
            end = buffer.find(_SEPARATOR, max(start, scan))
            if end < 0:
                break
            text = bytes(buffer[start:end])
            start = end + len(_SEPARATOR)
            if text.strip():
                self._got_first = True
                self.on_config(self, text)
        if self._closed:
            return
        if start:
            del buffer[:start]
        if len(buffer) > MAX_CONFIG_SIZE:
            del buffer[:]
            self._fail(RC.LIMIT_EXCEEDED, "the config stream from %s sent %d bytes without a config separator, "
                       "more than the limit of %d (http.MAX_CONFIG_SIZE)" % (self.authority, len(buffer),
                                                                           MAX_CONFIG_SIZE))

    def _on_end(self) -> None:
        status = self._status
        if status == 200:
            self._fail(RC.NETWORK, "the config stream from %s ended" % self.authority)
        elif status == 404 and len(self._paths) > 1:
            self._paths.pop(0)
            self._open()
        elif status == 404:
            self._fail(RC.BUCKET_NOT_FOUND, "bucket %r does not exist (HTTP 404 from %s)"
                       % (self.engine.settings.bucket, self.authority))
        elif status == 401:
            self._fail(RC.AUTH_ERROR, "authentication failed on %s (HTTP 401)" % self.authority)
        else:
            self._fail(RC.HTTP, "HTTP %d from %s: %s" % (status, self.authority,
                                                        bytes(self._buffer[:200]).decode("utf-8", "replace")))

    def _on_error(self, rc: int, message: str) -> None:
        self._fail(rc, message)

    def _fail(self, rc: int, message: str) -> None:
        if self._closed:
            return
        self.close()
        self.on_failure(self, rc, message)

    def abandon_after_fork(self) -> None:
        """In the child of a fork: stop, without IOPS calls (the stream's
        connection is abandoned by the engine with every other one)."""
        self._closed = True
        timer = getattr(self, "_first_timer", None)
        if timer is not None:
            timer._handler = lambda flags: None
            self._first_timer = None
        self._conn = None

    def close(self) -> None:
        """Stop streaming."""
        self._closed = True
        timer = getattr(self, "_first_timer", None)
        if timer is not None:
            self.engine.iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self._first_timer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

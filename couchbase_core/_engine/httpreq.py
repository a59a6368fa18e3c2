"""HTTP requests to the cluster's services: the engine's HTTP entry point.

:meth:`Engine.http_request <couchbase_core._engine.instance.Engine.http_request>`
creates a :class:`ServiceRequest` and starts it. The request:

* picks the nodes offering the service (management ``mgmt``, views
  ``capi``, query ``n1ql``, analytics ``cbas``, search ``fts``) from the current cluster config
  (:func:`service_endpoints`), in the order the caller's ``order`` hook
  gives them (random by default, to spread the load);
* borrows a keep-alive :class:`~couchbase_core._engine.http.HTTPConnection`
  from the engine's :class:`~couchbase_core._engine.http.HTTPPool` and sends
  the request with the bucket's credentials (HTTP Basic) unless the caller
  set ``Authorization`` itself;
* streams the response to the caller's callbacks: ``on_head(status,
  headers)``, ``on_chunk(bytes)`` for each piece of body, then exactly one
  of ``on_end()`` or ``on_error(rc, message)``; never from inside the call
  that started it (errors found at once are reported from the loop);
* keeps one deadline for the whole request: ``timeout`` seconds from the
  start, whichever nodes it tries;
* tries the next node when the request cannot have reached the server (the
  connection was refused, the host did not resolve), and, for idempotent
  requests, when the connection failed before the response's head;
* hands its connection back to the pool once the response has ended, and
  closes it instead when the request is cancelled or fails half-way (the
  rest of the response was never read, so the connection is out of step).

What the engine does with requests in flight on ``close()`` and after a
fork is done on their connections: the pool aborts every lent connection
on close (the request fails with ``RC.OBJECT_DESTROYED``), and the child of
a fork abandons every connection (the request fails with ``RC.FORKED``).
A request started in the child while the engine bootstraps afresh waits for
that bootstrap.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from couchbase_core._engine.http import HTTPConnection, HTTPRequest, basic_auth
from couchbase_core.exceptions import RC, ArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.instance import Engine

__all__ = ["ServiceRequest", "service_endpoints", "NodeOrder", "HeadCallback", "ChunkCallback",
           "EndCallback", "ErrorCallback"]

log = logging.getLogger("couchbase_core.engine")

#: Orders the candidate nodes in place; the request tries them in that order.
NodeOrder = Callable[[List[Tuple[str, int]]], None]
#: ``on_head(status, headers)``: the status line and headers (names in lower case).
HeadCallback = Callable[[int, Dict[str, str]], None]
#: ``on_chunk(data)``: the next piece of the (de-chunked) body.
ChunkCallback = Callable[[bytes], None]
#: ``on_end()``: the response is complete.
EndCallback = Callable[[], None]
#: ``on_error(rc, message)``: the request failed (``rc`` an ``RC`` code).
ErrorCallback = Callable[[int, str], None]


def service_endpoints(engine: "Engine", service: str) -> List[Tuple[str, int]]:
    """(host, port) of every node offering ``service`` (``mgmt``, ``capi``,
    ``n1ql``, ``fts``), from the config, else (management only) the connection
    string's HTTP hosts."""
    tls = engine.tls_context is not None
    cfg = engine.config
    found: List[Tuple[str, int]] = []
    if cfg is not None:
        found = cfg.service_endpoints(service, tls)
    if not found and service == "mgmt":
        found = list(engine.settings.http_hosts)
    return found


def _ignore(*_args: Any) -> None:
    """A callback the caller did not give."""


class ServiceRequest:
    """One HTTP request to a service of the cluster, and the handle its
    caller keeps: :meth:`cancel`, :meth:`pause` / :meth:`resume` (flow
    control), :attr:`done`, :attr:`status`. Create it through
    ``Engine.http_request``."""

    __slots__ = ("engine", "service", "method", "path", "body", "headers", "timeout", "idempotent",
                 "on_head", "on_chunk", "on_end", "on_error", "status", "done", "_order", "_targets",
                 "_deadline", "_conn", "_paused")

    def __init__(self, engine: "Engine", service: str, method: str, path: str, body: bytes,
                 headers: Optional[Dict[str, str]], timeout: float, on_head: Optional[HeadCallback],
                 on_chunk: Optional[ChunkCallback], on_end: Optional[EndCallback],
                 on_error: Optional[ErrorCallback], idempotent: Optional[bool],
                 order: Optional[NodeOrder]) -> None:
        if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
            # refused here, in the caller's stack: the loop could not send it
            raise ArgumentError("an HTTP request needs a str method and a str path starting with '/', "
                                "not %r %r" % (method, path))
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ArgumentError("an HTTP body must be bytes, not %s" % type(body).__name__)
        self.engine = engine
        self.service = service
        self.method = method
        self.path = path
        self.body = body
        self.headers: Dict[str, str] = dict(headers or {})
        self.timeout = timeout
        #: whether sending it twice is harmless (default: GET and HEAD)
        self.idempotent = method in ("GET", "HEAD") if idempotent is None else idempotent
        self.on_head: HeadCallback = on_head or _ignore
        self.on_chunk: ChunkCallback = on_chunk or _ignore
        self.on_end: EndCallback = on_end or _ignore
        self.on_error: ErrorCallback = on_error or _ignore
        #: the response's status code (0 until its head arrived)
        self.status = 0
        #: True once the caller heard the outcome, or cancelled
        self.done = False
        self._order: NodeOrder = order or random.shuffle
        self._targets: List[Tuple[str, int]] = []
        self._deadline = 0.0
        self._conn: Optional[HTTPConnection] = None
        self._paused = False

    # --------------------------------------------------------------- caller

    @property
    def connection(self) -> Optional[HTTPConnection]:
        """The connection carrying the request now (None before it has one
        and after it ended)."""
        return self._conn

    def cancel(self) -> None:
        """Abandon the request: no callback follows. A connection still
        carrying it is closed, never pooled (its response is half-read)."""
        if self.done:
            return
        self.done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def pause(self) -> None:
        """Stop reading the response until :meth:`resume` (the caller is behind)."""
        self._paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def resume(self) -> None:
        """Read the response again."""
        self._paused = False
        if self._conn is not None:
            self._conn.resume_reading()

    def describe(self) -> str:
        """``HTTP <method> <path>``, for messages."""
        return "HTTP %s %s" % (self.method, self.path)

    # ---------------------------------------------------------------- engine

    def start(self) -> None:
        """Send the request (the engine calls this once). Errors found now
        are reported from the loop."""
        engine = self.engine
        self._deadline = engine.clock() + self.timeout
        targets = service_endpoints(engine, self.service)
        if not targets:
            engine.defer(lambda: self._fail(RC.CLIENT_NOT_SUPPORTED,
                                            "no node of the cluster offers the %s service" % self.service))
            return
        self._order(targets)
        self._targets = targets
        self._send()

    def start_after_bootstrap(self, err: Any) -> None:
        """A bootstrap callback: start once the engine knows the cluster
        (used in a child of a fork, which bootstraps afresh), or fail with
        the bootstrap's error."""
        if self.done:
            return
        if err is not None:
            self._fail(err.rc, err.message)
            return
        self.start()

    def _send(self) -> None:
        engine = self.engine
        remaining = self._deadline - engine.clock()
        if remaining <= 0:
            self._fail(RC.TIMEOUT, "%s timed out after %.3gs" % (self.describe(), self.timeout))
            return
        host, port = self._targets.pop(0)
        headers = self.headers
        if "Authorization" not in headers:
            user, password = engine.settings.sasl_credentials()
            if user is not None:
                headers = dict(headers, Authorization=basic_auth(user, password or ""))
        self.status = 0
        conn = self._conn = engine.http_pool.acquire(host, port)
        if self._paused:
            conn.pause_reading()
        conn.request(HTTPRequest(self.method, self.path, headers, self.body, remaining,
                                 on_head=self._on_head, on_data=self._on_data, on_end=self._on_end,
                                 on_error=self._on_failure))

    def _fail(self, rc: int, message: str) -> None:
        if self.done:
            return
        self.done = True
        self.on_error(rc, message)

    # ------------------------------------------------- the connection's events

    def _on_head(self, status: int, headers: Dict[str, str]) -> None:
        if not self.done:
            self.status = status
            self.on_head(status, headers)

    def _on_data(self, data: bytes) -> None:
        if not self.done:
            self.on_chunk(data)

    def _on_end(self) -> None:
        if self.done:
            return
        self.done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            self.engine.http_pool.release(conn)
        self.on_end()

    def _on_failure(self, rc: int, message: str) -> None:
        if self.done:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        # Another node offers the service too. A request that never left
        # (no connection) is safe to send there whatever its method; one
        # that may have reached the server only if repeating it is harmless,
        # and only while nothing of the response has been seen.
        # (A connection closed before the response's first byte is a
        # NETWORK or, as h11 sees it, a PROTOCOL error.)
        never_sent = rc in (RC.CONNECT, RC.UNKNOWN_HOST)
        unanswered = rc in (RC.NETWORK, RC.PROTOCOL) and self.idempotent and self.status == 0
        if self._targets and not self.engine.closed and (never_sent or unanswered):
            log.debug("HTTP %s %s: %s; trying the next node", self.method,
                      self.engine.settings.ud(self.path), message)  # the path may hold view keys
            self._send()
            return
        self._fail(rc, message)

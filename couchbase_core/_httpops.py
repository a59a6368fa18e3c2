"""HTTP requests as operations the bucket strategies can wait for.

:class:`HttpOp` is a local engine operation: it picks a node offering the
service from the current cluster config (management, views or query),
sends one request on an :class:`~couchbase_core._engine.http.HTTPConnection`
with the bucket's credentials, and hands an
:class:`~couchbase_core.result.HttpResult` to its sink. Idempotent requests
(GET) that fail to connect are tried on the next node.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from couchbase_core._engine.http import HTTPConnection, HTTPRequest, basic_auth
from couchbase_core._engine.rows import RowParseError, RowParser
from couchbase_core._kvops import LocalOp
from couchbase_core.exceptions import RC
from couchbase_core.result import HttpResult

log = logging.getLogger("couchbase_core.engine")

__all__ = ["HttpOp", "RowStreamOp", "service_endpoints", "MAX_RESPONSE_BODY", "decode_json"]

#: The largest body of a non-streamed reply (management, design documents,
#: N1QL PREPARE): a server sending more fails the request with
#: LimitExceededError instead of filling memory.
MAX_RESPONSE_BODY = 64 * 1024 * 1024


class ResponseLimitError(ValueError):
    """A reply crosses one of the documented limits."""


def decode_json(body: bytes) -> Any:
    """``json.loads`` for server data: ValueError if it is not JSON,
    :class:`ResponseLimitError` if it is nested deeper than the decoder
    allows (the interpreter's recursion limit) -- never a RecursionError."""
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise ResponseLimitError("the response is JSON nested deeper than the decoder allows "
                                 "(the recursion limit, %d)" % sys.getrecursionlimit()) from exc


def service_endpoints(engine: Any, service: str) -> List[Tuple[str, int]]:
    """(host, port) of every node offering ``service`` (``mgmt``, ``capi``,
    ``n1ql``), from the config, else the connection string's HTTP hosts."""
    tls = engine.tls_context is not None
    cfg = engine.config
    found: List[Tuple[str, int]] = []
    if cfg is not None:
        found = cfg.service_endpoints(service, tls)
    if not found and service == "mgmt":
        found = list(engine.settings.http_hosts)
    return found


class HttpOp(LocalOp):
    """One HTTP request to a service of the cluster."""

    __slots__ = ("service", "method", "path", "body", "headers", "_targets", "_status",
                 "_resp_headers", "_chunks", "_size", "_conn", "_engine", "accept", "failure_rc")
    error_result = HttpResult

    def __init__(self, service: str, method: str, path: str, body: bytes = b"",
                 headers: Optional[Dict[str, str]] = None, timeout: float = 75.0,
                 accept: Optional[Callable[[int], bool]] = None,
                 failure_rc: Optional[Callable[[int, Any], int]] = None) -> None:
        LocalOp.__init__(self, path, 0, b"", timeout)
        self.service = service
        self.method = method
        self.path = path
        self.body = body
        self.headers = dict(headers or {})
        self._targets: List[Tuple[str, int]] = []
        self._status = 0
        self._resp_headers: Dict[str, str] = {}
        self._chunks: List[bytes] = []
        self._size = 0
        self._conn: Optional[HTTPConnection] = None
        self._engine: Any = None
        self.accept = accept
        # Maps a refused request (status, decoded body) to a result code
        # more specific than RC.HTTP, e.g. "flush disabled" to NOT_SUPPORTED.
        self.failure_rc = failure_rc

    @property
    def idempotent(self) -> bool:  # type: ignore[override]
        return self.method in ("GET", "HEAD")

    def run(self, engine: Any) -> None:
        self._engine = engine
        targets = service_endpoints(engine, self.service)
        if not targets:
            engine.defer(lambda: self.on_error(RC.CLIENT_NOT_SUPPORTED,
                                               "no node of the cluster offers the %s service" % self.service))
            return
        random.shuffle(targets)
        self._targets = targets
        self._send()

    def _send(self) -> None:
        engine = self._engine
        host, port = self._targets.pop(0)
        user, password = engine.settings.sasl_credentials()
        headers = dict(self.headers)
        if user is not None and "Authorization" not in headers:
            headers["Authorization"] = basic_auth(user, password or "")
        self._conn = engine.http_pool.acquire(host, port)
        self._status = 0
        self._chunks = []
        self._size = 0
        req = HTTPRequest(self.method, self.path, headers, self.body, self.timeout, on_head=self._on_head,
                          on_data=self._on_chunk, on_end=self._on_end, on_error=self._on_failure)
        self._conn.request(req)

    def _on_chunk(self, data: bytes) -> None:
        if self.done:
            return
        self._size += len(data)
        if self._size > MAX_RESPONSE_BODY:
            self._chunks = []
            self._abandon(RC.LIMIT_EXCEEDED, "the reply to %s %s exceeds %d bytes (_httpops.MAX_RESPONSE_BODY)"
                          % (self.method, self.path, MAX_RESPONSE_BODY))
            return
        self._chunks.append(data)

    def _abandon(self, rc: int, message: str) -> None:
        """Fail now, closing the connection (the rest of the reply is unread)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.on_error(rc, message)

    def _on_head(self, status: int, headers: Dict[str, str]) -> None:
        self._status = status
        self._resp_headers = headers

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._engine.http_pool.release(conn)

    def _on_end(self) -> None:
        if self.done:
            return
        self._release()
        try:
            self._complete()
        except Exception as exc:  # noqa: BLE001 - the operation must end, whatever happened
            log.exception("handling the reply to %s %s failed", self.method, self.path)
            self.on_error(RC.INTERNAL, "handling the reply to %s %s failed: %r" % (self.method, self.path, exc))

    def on_error(self, rc: int, message: str) -> None:
        if not self.done:
            LocalOp.on_error(self, rc, message)

    def _complete(self) -> None:
        body = b"".join(self._chunks)
        self._chunks = []
        try:
            value: Any = decode_json(body) if body else None
        except ResponseLimitError as exc:
            self.on_error(RC.LIMIT_EXCEEDED, "%s %s: %s" % (self.method, self.path, exc))
            return
        except ValueError:
            value = body.decode("utf-8", "replace")
        status = self._status
        ok = self.accept(status) if self.accept is not None else 200 <= status < 300
        rc = 0
        if not ok:
            rc = self.failure_rc(status, value) if self.failure_rc is not None else RC.HTTP
        res = HttpResult(self.path, rc, status, value)
        res.headers = self._resp_headers
        if not ok:
            res._message = "HTTP %d from %s %s: %s" % (status, self.method, self.path,
                                                       body[:300].decode("utf-8", "replace"))
        self.done = True
        self.sink(res)

    def _on_failure(self, rc: int, message: str) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        # Another node offers the service too. A request that never left
        # (no connection) is safe to send there whatever its method; one
        # that may have reached the server only if repeating it is harmless,
        # and only while nothing of the response has been seen.
        never_sent = rc in (RC.CONNECT, RC.UNKNOWN_HOST)
        unanswered = rc == RC.NETWORK and self.idempotent and self._status == 0
        if self._targets and (never_sent or unanswered):
            self._send()
            return
        self.on_error(rc, message)

    def describe(self) -> str:
        return "HTTP %s %s" % (self.method, self.path)


#: How much of a refused streaming request's body is kept for the error.
MAX_ERROR_BODY = 1024 * 1024


def error_meta(body: bytes) -> Dict[str, Any]:
    """The metadata of a refused request: its JSON object, or the text as
    ``{"body": text}`` when it is not a JSON object."""
    try:
        value = decode_json(body) if body else {}
    except ResponseLimitError:
        raise
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    return {"body": body.decode("utf-8", "replace")}


class RowStreamOp(HttpOp):
    """A streamed HTTP request whose JSON body carries rows (views: ``rows``;
    N1QL: ``results``).

    ``consumer`` receives ``rows_ready(list)`` as rows complete and, once,
    ``finished(meta, http_status, error_or_None)``. :meth:`pause` and
    :meth:`resume` apply back-pressure: while paused the socket is not read.
    """

    __slots__ = ("consumer", "rows_key", "_parser", "_error_body")

    def __init__(self, service: str, method: str, path: str, body: bytes, headers: Dict[str, str],
                 timeout: float, consumer: Any, rows_key: str) -> None:
        HttpOp.__init__(self, service, method, path, body, headers, timeout)
        self.consumer = consumer
        self.rows_key = rows_key
        self._parser = RowParser(rows_key)
        self._error_body: List[bytes] = []

    @property
    def idempotent(self) -> bool:  # type: ignore[override]
        return self.method == "GET" or self.service == "capi"

    def _send(self) -> None:
        self._parser = RowParser(self.rows_key)
        self._error_body = []
        HttpOp._send(self)

    def _on_chunk(self, data: bytes) -> None:
        if self.done:
            return
        if not 200 <= self._status < 300:
            # A refusal carries a small error document, or plain text from
            # a proxy or an older server: keep it whole, don't stream it.
            if sum(map(len, self._error_body)) < MAX_ERROR_BODY:
                self._error_body.append(data)
            return
        try:
            rows = self._parser.feed(data)
        except RowParseError as exc:
            self._abort(exc.rc, str(exc))
            return
        if rows:
            self.consumer.rows_ready(rows)

    def _on_end(self) -> None:
        if self.done:
            return
        self._release()
        if not 200 <= self._status < 300:
            self.done = True
            try:
                meta = error_meta(b"".join(self._error_body)[:MAX_ERROR_BODY])
            except ResponseLimitError as exc:
                self.consumer.finished({}, self._status, (RC.LIMIT_EXCEEDED, str(exc)))
                return
            self.consumer.finished(meta, self._status, None)
            return
        try:
            meta = self._parser.close()
        except RowParseError as exc:
            self.done = True
            self.consumer.finished({}, self._status, (exc.rc, str(exc)))
            return
        self.done = True
        self.consumer.finished(meta, self._status, None)

    def _abort(self, rc: int, message: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.done = True
        self.consumer.finished(self._parser.meta, self._status, (rc, message))

    def on_error(self, rc: int, message: str) -> None:
        if self.done:
            return
        self.done = True
        self.consumer.finished(self._parser.meta, self._status, (rc, message))

    def pause(self) -> None:
        """Stop reading until :meth:`resume`."""
        if self._conn is not None:
            self._conn.pause_reading()

    def resume(self) -> None:
        """Read again."""
        if self._conn is not None:
            self._conn.resume_reading()

    def cancel(self) -> None:
        """Abandon the request (its connection is closed, not reused)."""
        if self.done:
            return
        conn, self._conn = self._conn, None
        self.done = True
        if conn is not None:
            conn.close()

"""The buckets' HTTP requests, on the engine's HTTP entry point.

Both classes here consume the response events of
:meth:`Engine.http_request <couchbase_core._engine.instance.Engine.http_request>`
(which picks the node, pools the connection, keeps the deadline and retries
on another node what may be retried):

* :class:`RowStreamOp` streams the rows of a view or N1QL response to a
  consumer as they are parsed (``rows_ready(list)``, then once
  ``finished(meta, http_status, error)``), with flow control. Views and
  N1QL, iterator and callback flavours alike, send through it.
* :class:`HttpOp` reads a whole (management) reply into an
  :class:`~couchbase_core.result.HttpResult`. It is a thin adapter: the
  buckets' one-result waiting strategies (``_one``: the blocking loop, the
  gevent waiter, the AsyncResult, and their cancellation through
  ``Engine.cancel``) take an operation with a ``sink``; :class:`HttpOp` is
  that operation, and all it does when the engine runs it is start the HTTP
  request (and cancel it when its caller goes away).

Nodes are tried in a random order (:func:`node_order`), to spread the load.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from typing import Any, Callable, Dict, List, Optional

from couchbase_core._engine.httpreq import ServiceRequest, service_endpoints
from couchbase_core._engine.rows import RowParseError, RowParser
from couchbase_core._formats import FMT_BYTES, FMT_JSON, FMT_UTF8
from couchbase_core._kvops import LocalOp
from couchbase_core.exceptions import RC, ArgumentError, exc_from_rc
from couchbase_core.result import HttpResult

log = logging.getLogger("couchbase_core.engine")

__all__ = ["HttpOp", "RowStreamOp", "service_endpoints", "MAX_RESPONSE_BODY", "MAX_ERROR_BODY", "decode_json",
           "error_meta", "node_order", "check_request", "HTTP_METHODS"]

#: The methods an HTTP request may use (what the 2.x SDK accepted).
HTTP_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})

#: The largest body of a non-streamed reply (management, design documents):
#: a server sending more fails the request with LimitExceededError instead
#: of filling memory.
MAX_RESPONSE_BODY = 64 * 1024 * 1024
#: How much of a refused streaming request's body is kept for the error.
MAX_ERROR_BODY = 1024 * 1024


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


def check_request(method: Any, path: Any, body: Any, headers: Any) -> None:
    """Refuse, in the caller's stack, a request that could not be put on
    the wire: a method outside :data:`HTTP_METHODS`, a path that is not a
    str starting with ``/`` (or holds blanks or control characters), a body
    that is not bytes, a header name or value that is not a str.

    Raises:
        ArgumentError: naming the bad part. (Found later, in the loop, such
            a request would never be sent and its caller would wait for
            the whole timeout.)
    """
    if not isinstance(method, str) or method not in HTTP_METHODS:
        raise ArgumentError("unknown HTTP method %r (expected one of %s)" % (method, ", ".join(sorted(HTTP_METHODS))))
    if not isinstance(path, str):
        raise ArgumentError("an HTTP path must be a str, not %s" % type(path).__name__)
    if not path.startswith("/"):
        raise ArgumentError("an HTTP path must start with '/', not %r" % (path[:100],))
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise ArgumentError("an HTTP path must not hold blanks or control characters: %r" % (path[:100],))
    try:
        path.encode("ascii")
    except UnicodeEncodeError:
        raise ArgumentError("an HTTP path must be ASCII (percent-encode other characters): %r"
                            % (path[:100],)) from None
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ArgumentError("an HTTP body must be bytes, not %s" % type(body).__name__)
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ArgumentError("HTTP header names and values must be str, not %r: %r" % (name, value))


def node_order(targets: List[Any]) -> None:
    """The order in which the nodes offering a service are tried: random."""
    random.shuffle(targets)


#: ``response_format`` values of :class:`HttpOp` (None: JSON, else text).
_RESPONSE_FORMATS = (None, FMT_JSON, FMT_UTF8, FMT_BYTES)


def _decode_body(body: bytes, response_format: Optional[int]) -> Any:
    """A reply body as ``response_format`` asks: FMT_JSON decodes JSON and
    keeps the bytes when it is not JSON (2.x's rule), FMT_UTF8 gives text
    (bytes if it is not UTF-8), FMT_BYTES the bytes; None (the buckets'
    own requests) gives JSON, else text."""
    if response_format == FMT_BYTES:
        return bytes(body)
    if response_format == FMT_UTF8:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(body)
    if not body:
        return None
    try:
        return decode_json(body)
    except ResponseLimitError:
        raise
    except ValueError:
        return bytes(body) if response_format == FMT_JSON else body.decode("utf-8", "replace")


class HttpOp(LocalOp):
    """One HTTP request whose whole reply becomes an HttpResult, handed to
    ``sink`` (see the module docs: the adapter for ``bucket._one``).

    ``accept(status)`` says which statuses succeed (default 2xx);
    ``failure_rc(status, value)`` maps a refusal to a result code more
    specific than ``RC.HTTP`` (e.g. "flush disabled" to NOT_SUPPORTED)."""

    __slots__ = ("service", "method", "path", "body", "headers", "accept", "failure_rc", "response_format",
                 "_request", "_status", "_resp_headers", "_chunks", "_size")
    error_result = HttpResult

    def __init__(self, service: str, method: str, path: str, body: bytes = b"",
                 headers: Optional[Dict[str, str]] = None, timeout: float = 75.0,
                 accept: Optional[Callable[[int], bool]] = None,
                 failure_rc: Optional[Callable[[int, Any], int]] = None,
                 response_format: Optional[int] = None) -> None:
        check_request(method, path, body, headers)
        if response_format not in _RESPONSE_FORMATS:
            raise ArgumentError("response_format must be FMT_JSON, FMT_UTF8 or FMT_BYTES, not %r"
                                % (response_format,))
        LocalOp.__init__(self, path, 0, b"", timeout)
        self.service = service
        self.method = method
        self.path = path
        self.body = body
        self.headers = dict(headers or {})
        self.accept = accept
        self.failure_rc = failure_rc
        self.response_format = response_format
        self._request: Optional[ServiceRequest] = None
        self._status = 0
        self._resp_headers: Dict[str, str] = {}
        self._chunks: List[bytes] = []
        self._size = 0

    def run(self, engine: Any) -> None:
        """Start the request (the engine calls this when the op is submitted)."""
        self._request = engine.http_request(self.service, self.method, self.path, self.body, self.headers,
                                            self.timeout, on_head=self._on_head, on_chunk=self._on_chunk,
                                            on_end=self._on_end, on_error=self._on_failure, order=node_order)

    def stop(self, engine: Any) -> None:
        """The caller went away (killed, interrupted): abandon the request."""
        if self._request is not None:
            self._request.cancel()

    def _on_head(self, status: int, headers: Dict[str, str]) -> None:
        self._status = status
        self._resp_headers = headers

    def _on_chunk(self, data: bytes) -> None:
        if self.done:
            return
        self._size += len(data)
        if self._size > MAX_RESPONSE_BODY:
            self._chunks = []
            if self._request is not None:
                self._request.cancel()  # the rest is never read: the connection is closed
            self._on_failure(RC.LIMIT_EXCEEDED, "the reply to %s %s exceeds %d bytes (_httpops.MAX_RESPONSE_BODY)"
                             % (self.method, self.path, MAX_RESPONSE_BODY))
            return
        self._chunks.append(data)

    def _on_failure(self, rc: int, message: str) -> None:
        # Not an override of on_error: the engine fails a local operation
        # itself after a fork (with its sink restored), whatever this heard.
        if not self.done:
            LocalOp.on_error(self, rc, message)

    def _on_end(self) -> None:
        if self.done:
            return
        try:
            result = self._result()
        except ResponseLimitError as exc:
            self._on_failure(RC.LIMIT_EXCEEDED, "%s %s: %s" % (self.method, self.path, exc))
            return
        except Exception as exc:  # noqa: BLE001 - the operation must end, whatever happened
            log.exception("handling the reply to %s %s failed", self.method, self.path)
            self._on_failure(RC.INTERNAL, "handling the reply to %s %s failed: %r" % (self.method, self.path, exc))
            return
        self.done = True
        self.sink(result)

    def _result(self) -> HttpResult:
        body = b"".join(self._chunks)
        self._chunks = []
        value = _decode_body(body, self.response_format)
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
            # as in 2.x, the error carries the whole reply as its objextra
            res._exc = exc_from_rc(rc, res._message, res)
        return res

    def describe(self) -> str:
        return "HTTP %s %s" % (self.method, self.path)


class RowStreamOp:
    """A streamed HTTP request whose JSON body carries rows (views: ``rows``;
    N1QL: ``results``).

    ``consumer`` receives ``rows_ready(list)`` as rows complete and, once,
    ``finished(meta, http_status, error_or_None)`` (``error`` an ``(rc,
    message)`` pair). A refused request (not 2xx) is read whole and its body
    becomes ``meta`` (:func:`error_meta`). :meth:`pause` and :meth:`resume`
    apply back-pressure: while paused the socket is not read.
    """

    __slots__ = ("service", "method", "path", "body", "headers", "timeout", "consumer", "rows_key", "done",
                 "_request", "_parser", "_error_body", "_error_size")

    def __init__(self, service: str, method: str, path: str, body: bytes, headers: Dict[str, str],
                 timeout: float, consumer: Any, rows_key: str) -> None:
        self.service = service
        self.method = method
        self.path = path
        self.body = body
        self.headers = headers
        self.timeout = timeout
        self.consumer = consumer
        self.rows_key = rows_key
        #: True once ``finished`` was called, or the request cancelled
        self.done = False
        self._request: Optional[ServiceRequest] = None
        self._parser = RowParser(rows_key)
        self._error_body: List[bytes] = []
        self._error_size = 0

    @property
    def idempotent(self) -> bool:
        """Whether the request may go to another node after a failure: view
        queries (even POSTed ones) and GETs only change nothing."""
        return self.method == "GET" or self.service == "capi"

    @property
    def _conn(self) -> Any:
        """The connection carrying the request now (None when it has none)."""
        request = self._request
        return request.connection if request is not None else None

    def start(self, engine: Any) -> None:
        """Send the request through ``engine`` (ObjectDestroyedError if it is closed)."""
        self._request = engine.http_request(self.service, self.method, self.path, self.body, self.headers,
                                            self.timeout, on_head=None, on_chunk=self._on_chunk,
                                            on_end=self._on_end, on_error=self._on_error,
                                            idempotent=self.idempotent, order=node_order)

    @property
    def _status(self) -> int:
        return self._request.status if self._request is not None else 0

    def _on_chunk(self, data: bytes) -> None:
        if self.done:
            return
        if not 200 <= self._status < 300:
            # A refusal carries a small error document, or plain text from
            # a proxy or an older server: keep it whole, don't stream it.
            if self._error_size < MAX_ERROR_BODY:
                self._error_body.append(data)
                self._error_size += len(data)
            return
        try:
            rows = self._parser.feed(data)
        except RowParseError as exc:
            self._finish_early(exc.rc, str(exc))
            return
        if rows:
            self.consumer.rows_ready(rows)

    def _on_end(self) -> None:
        if self.done:
            return
        self.done = True
        status = self._status
        if not 200 <= status < 300:
            try:
                meta = error_meta(b"".join(self._error_body)[:MAX_ERROR_BODY])
            except ResponseLimitError as exc:
                self.consumer.finished({}, status, (RC.LIMIT_EXCEEDED, str(exc)))
                return
            self.consumer.finished(meta, status, None)
            return
        try:
            meta = self._parser.close()
        except RowParseError as exc:
            self.consumer.finished({}, status, (exc.rc, str(exc)))
            return
        self.consumer.finished(meta, status, None)

    def _finish_early(self, rc: int, message: str) -> None:
        """The response cannot be used: stop reading it and report."""
        if self._request is not None:
            self._request.cancel()
        self._on_error(rc, message)

    def _on_error(self, rc: int, message: str) -> None:
        if self.done:
            return
        self.done = True
        self.consumer.finished(self._parser.meta, self._status, (rc, message))

    def pause(self) -> None:
        """Stop reading until :meth:`resume`."""
        if self._request is not None:
            self._request.pause()

    def resume(self) -> None:
        """Read again."""
        if self._request is not None:
            self._request.resume()

    def cancel(self) -> None:
        """Abandon the request (its connection is closed, not reused); the
        consumer hears nothing more."""
        if self.done:
            return
        self.done = True
        if self._request is not None:
            self._request.cancel()

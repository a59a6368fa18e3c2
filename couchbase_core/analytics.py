"""Analytics queries (the ``cbas`` service, spec/http-services.md §1).

::

    q = AnalyticsQuery("SELECT VALUE b FROM breweries b WHERE b.name = ?", "Kona Brewing")
    for row in bucket.analytics_query(q):
        print(row)

:class:`AnalyticsQuery` holds the statement and its parameters: positional
ones (``?`` or ``$1``, ``$2``...) as extra arguments, named ones
(``$name``) as keyword arguments without the ``$``. Iterating the
:class:`AnalyticsRequest` that ``bucket.analytics_query`` returns POSTs it
to ``/analytics/service`` on a node running the analytics service (the
``cbas`` entry of the cluster config's ``nodesExt``) and yields rows while
the response streams in; ``meta``, ``metrics`` and ``errors`` are set once
it has ended, as on :class:`~couchbase_core.n1ql.N1QLRequest`.

The ``host`` argument
=====================

The 2.5 SDK took the analytics node as a second argument
(``bucket.analytics_query(q, "10.0.0.5")``); with the libcouchbase it was
built on (2.8 and later) the request went to a node from the cluster config
anyway. Here ``host`` is optional and is a *preference*: the nodes of the
config that offer the analytics service and whose host (and port, when
``host`` names one: ``"h:8095"`` or ``"http://h:8095"``) match it are tried
first, the others after them. A ``host`` that matches no such node warns
(:class:`~couchbase_core.exceptions.OptionIgnoredWarning`) and the request
goes to a node from the config.

Differences from N1QL
=====================

Analytics has no prepared statements (``adhoc = False`` is an
ArgumentError), no ``at_plus`` consistency, no profiling and no way to turn
metrics off (these raise NotSupportedError), and no cross-bucket
credentials. The default timeout is the bucket's ``n1ql_timeout``, which
the 2.5 SDK's analytics requests used too.

Errors the service reports raise :class:`AnalyticsError`, a subclass of
:class:`~couchbase_core.n1ql.N1QLError` (what 2.5 raised, so existing
``except N1QLError`` blocks still catch them): ``code`` is the first error's
analytics code (24045 dataset not found, 24000 syntax error, 21002
timeout...), ``errors`` all of them.

Deferred queries
================

:class:`DeferredAnalyticsQuery` sends ``"mode": "async"``: the service
answers at once with a ``handle`` to poll. :class:`DeferredAnalyticsRequest`
polls it every ``interval`` seconds until the result is ready (or
``timeout`` seconds have passed: TimeoutError) and then yields the rows.
It works on the blocking and gevent buckets (polling sleeps the caller
only); the AsyncBucket has no deferred flavour.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from couchbase_core._httpops import HttpOp, RowStreamOp
from couchbase_core._latch import Latch
from couchbase_core._querymachine import HTTP_GRACE, Failed, Finished, SendRequest
from couchbase_core.exceptions import (
    ArgumentError,
    CouchbaseError,
    HTTPError,
    NotSupportedError,
    OptionIgnoredWarning,
    exc_from_rc,
)
from couchbase_core.exceptions import TimeoutError as CBTimeoutError
from couchbase_core.iops.base import PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH
from couchbase_core.n1ql import N1QLError, N1QLQuery, N1QLRequest, dump_body

__all__ = ["AnalyticsQuery", "AnalyticsRequest", "AnalyticsError", "DeferredAnalyticsQuery",
           "DeferredAnalyticsRequest", "AnalyticsMachine", "ANALYTICS_PATH", "ANALYTICS_SERVICE", "gen_request"]

#: Where analytics requests go.
ANALYTICS_PATH = "/analytics/service"
#: The service's name in the cluster config (``nodesExt[].services.cbas``).
ANALYTICS_SERVICE = "cbas"

#: 2.5 defaults of the deferred request: poll every 10 s.
DEFAULT_INTERVAL = 10.0


class AnalyticsError(N1QLError):
    """The analytics service reported errors. ``code`` and ``msg`` are the
    first error's, ``errors`` has them all, ``http_status`` the HTTP status.
    A subclass of :class:`~couchbase_core.n1ql.N1QLError`, which is what
    the 2.5 SDK raised for analytics errors."""


class AnalyticsQuery(N1QLQuery):
    """An analytics statement and its parameters.

    Args:
        querystr: the statement (a ``;`` is added when it has none, as 2.5 did).
        *args: positional parameters (``?`` or ``$1``, ``$2``...).
        **kwargs: named parameters (``$name``; give them without the ``$``).

    Parameters are native Python values (they are encoded as JSON), not
    JSON text.
    """

    def __init__(self, querystr: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(querystr, str):
            raise ArgumentError("an analytics statement must be a str")
        querystr = querystr.rstrip()
        if not querystr.endswith(";"):
            querystr += ";"
        super().__init__(querystr, *args, **kwargs)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add parameters: positional ones only if the query has none yet,
        named ones only if not set yet (ArgumentError otherwise)."""
        if args:
            if "args" in self._body:
                raise ArgumentError("the query has positional parameters already; use set_args to replace them")
            self._body["args"] = list(args)
        if kwargs:
            names = ["$" + name.lstrip("$") for name in kwargs]
            clash = [name for name in names if name in self._body]
            if clash:
                raise ArgumentError("named parameters %s are set already" % ", ".join(sorted(clash)))
            for name, value in zip(names, kwargs.values()):
                self._body[name] = value

    # -- what analytics does not have -------------------------------------------------

    @property
    def adhoc(self) -> bool:
        """Always True: analytics has no prepared statements."""
        return True

    @adhoc.setter
    def adhoc(self, value: bool) -> None:
        if not value:
            raise ArgumentError("analytics queries cannot be prepared (adhoc must stay True)")

    def consistent_with(self, state: Any) -> None:
        """Not available: analytics has no ``at_plus`` consistency."""
        raise NotSupportedError("analytics queries have no at_plus consistency (consistent_with); "
                                "use consistency = CONSISTENCY_REQUEST")

    @property
    def profile(self) -> str:
        """Always ``off``: analytics has no profiling."""
        return "off"

    @profile.setter
    def profile(self, value: str) -> None:
        if value != "off":
            raise NotSupportedError("analytics queries have no profiling")

    @property
    def metrics(self) -> bool:
        """Always True: the analytics service always sends metrics."""
        return True

    @metrics.setter
    def metrics(self, value: bool) -> None:
        if not value:
            raise NotSupportedError("the analytics service always sends metrics")

    @property
    def cross_bucket(self) -> bool:
        """Always False: analytics takes no per-bucket credentials."""
        return False

    @cross_bucket.setter
    def cross_bucket(self, value: bool) -> None:
        if value:
            raise NotSupportedError("analytics queries take no cross-bucket credentials")

    @property
    def deferred(self) -> bool:
        """Whether the service runs it in the background (``mode: async``)."""
        return self._body.get("mode") == "async"

    def __repr__(self) -> str:
        return "%s(%r)" % (type(self).__name__, self._body)


class DeferredAnalyticsQuery(AnalyticsQuery):
    """An analytics query the service runs in the background: it answers at
    once with a handle, which :class:`DeferredAnalyticsRequest` polls.
    Arguments as :class:`AnalyticsQuery`; ``timeout`` also bounds the
    polling. (A volatile API in 2.5 as here.)"""

    def __init__(self, querystr: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(querystr, *args, **kwargs)
        self.set_option("mode", "async")


# ---------------------------------------------------------------- the request machine


def analytics_error(meta: Dict[str, Any], http_status: int,
                    error: Optional[Tuple[int, str]]) -> Optional[CouchbaseError]:
    """The exception for a failed analytics response, or None: a transport
    failure (``error``, an ``(rc, message)`` pair) by its code; errors the
    service reported as :class:`AnalyticsError`; any other refusal (a status
    other than 200, or a ``status`` other than success, or ``running`` for a
    deferred query) as HTTPError."""
    if error is not None and error[0]:
        return exc_from_rc(error[0], "analytics request failed: %s" % error[1])
    errors = meta.get("errors")
    if errors:
        if not isinstance(errors, list):
            errors = [errors]
        first = errors[0] if isinstance(errors[0], dict) else {}
        exc = AnalyticsError({"message": "analytics error %s: %s" % (first.get("code"), first.get("msg")),
                              "objextra": errors})
        exc.http_status = http_status  # type: ignore[attr-defined]
        return exc
    status = meta.get("status")
    if http_status not in (0, 200, 202) or (status is not None and status not in ("success", "running")):
        detail = meta.get("body")
        exc2 = HTTPError({"message": "analytics request failed (HTTP %d, status %r)%s" % (
            http_status, status, ": %s" % detail[:300] if detail else ""), "objextra": meta})
        exc2.http_status = http_status  # type: ignore[attr-defined]
        return exc2
    return None


class AnalyticsMachine:
    """One analytics request's decisions, with the interface of
    :class:`~couchbase_core._querymachine.QueryMachine` (so the N1QL
    iterator and the async request drive it unchanged): one POST to
    ``/analytics/service``, its rows to the caller, its end mapped to
    :class:`~couchbase_core._querymachine.Finished` or ``Failed``."""

    def __init__(self, query: AnalyticsQuery, default_timeout: float) -> None:
        self.query = query
        self.default_timeout = default_timeout
        self.state = "IDLE"
        self.rows_delivered = 0
        self.meta: Dict[str, Any] = {}

    def start(self) -> SendRequest:
        """The request to send."""
        if self.state != "IDLE":
            raise RuntimeError("an AnalyticsMachine starts once")
        self.state = "EXECUTING"
        body = dump_body(self.query.encoded_body(self.default_timeout)).encode("utf-8")
        timeout = (self.query.timeout or self.default_timeout) + HTTP_GRACE
        return SendRequest(body, timeout, prepare=False, service=ANALYTICS_SERVICE, path=ANALYTICS_PATH)

    def feed_rows(self, rows: List[Any]) -> List[Any]:
        """Rows of the response: all of them are the caller's."""
        self.rows_delivered += len(rows)
        return rows

    def end(self, meta: Dict[str, Any], http_status: int, error: Optional[Tuple[int, str]]) -> Any:
        """The response ended (``error`` None) or failed: Finished or Failed."""
        if self.state != "EXECUTING":
            raise RuntimeError("no request of this AnalyticsMachine is in progress (state %s)" % self.state)
        self.meta = meta
        exc = analytics_error(meta, http_status, error)
        if exc is None and meta.get("status") == "running" and not self.query.deferred:
            exc = HTTPError({"message": "the analytics service is still running a query that was not deferred",
                             "objextra": meta})
        if exc is not None:
            self.state = "FAILED"
            return Failed(exc, meta)
        self.state = "DONE"
        return Finished(meta)


# ---------------------------------------------------------------- node preference


def parse_host(host: str) -> Tuple[str, Optional[int]]:
    """``(hostname, port or None)`` of a 2.5-style host argument: ``h``,
    ``h:port``, ``[v6]:port`` or a URL ``http://h:port/...``."""
    text = host.strip()
    if "//" not in text:
        text = "//" + text
    try:
        parts = urlsplit(text)
        name, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ArgumentError("analytics host %r is not a host, host:port or URL: %s" % (host, exc)) from exc
    if not name:
        raise ArgumentError("analytics host %r names no host" % (host,))
    return name, port


def preferred_order(host: Optional[str]) -> Callable[[List[Tuple[str, int]]], None]:
    """A node order for ``Engine.http_request``: random, then the nodes
    matching ``host`` moved to the front."""
    wanted = parse_host(host) if host else None

    def order(targets: List[Tuple[str, int]]) -> None:
        random.shuffle(targets)
        if wanted is not None:
            targets.sort(key=lambda hp: not _matches(hp, wanted))

    return order


def _matches(endpoint: Tuple[str, int], wanted: Tuple[str, Optional[int]]) -> bool:
    name, port = wanted
    return endpoint[0].lower() == name.lower() and (port is None or endpoint[1] == port)


# ---------------------------------------------------------------- the request


class AnalyticsRequest(N1QLRequest):
    """An iterable analytics request (see the module docs). Iterate it once;
    ``execute()`` runs it to completion; ``get_single_result()`` returns
    the first row; ``meta``, ``metrics``, ``errors`` and ``warnings`` are
    set when the response has ended.

    Args:
        params: an :class:`AnalyticsQuery` (or a statement string).
        host: the preferred analytics node (see the module docs), or None.
        parent: the bucket.
        row_factory: applied to each row before it is yielded.
    """

    def __init__(self, params: Any, host: Optional[str], parent: Any,
                 row_factory: Callable[[Any], Any] = lambda row: row) -> None:
        if isinstance(params, str):
            params = AnalyticsQuery(params)
        if not isinstance(params, AnalyticsQuery):
            raise ArgumentError("analytics_query needs an AnalyticsQuery or a statement string, not %s"
                                % type(params).__name__)
        if host is not None and not isinstance(host, str):
            raise ArgumentError("the analytics host must be a str or None, not %s" % type(host).__name__)
        if host:
            parse_host(host)  # a malformed host fails here, before anything is sent
        self._host = host or None
        super().__init__(params, parent, row_factory)

    @property
    def host(self) -> Optional[str]:
        """The preferred analytics node given to ``analytics_query`` (or None)."""
        return self._host

    def _new_machine(self) -> AnalyticsMachine:
        bucket = self.bucket
        bucket._require_couchbase("analytics", "plain memcached has no analytics service")
        self._check_host()
        assert isinstance(self.params, AnalyticsQuery)
        return AnalyticsMachine(self.params, bucket.n1ql_timeout)

    def _check_host(self) -> None:
        """Warn when the preferred host offers no analytics service."""
        host = self._host
        if not host:
            return
        from couchbase_core._engine.httpreq import service_endpoints
        from couchbase_core._engine.settings import _warn

        endpoints = service_endpoints(self.bucket._engine, ANALYTICS_SERVICE)
        wanted = parse_host(host)
        if endpoints and not any(_matches(ep, wanted) for ep in endpoints):
            _warn("analytics host %r offers no analytics service in the cluster config; the request goes "
                  "to a node from the config (%s)" % (host, ", ".join("%s:%d" % ep for ep in endpoints)),
                  OptionIgnoredWarning)

    def _request_op(self, send: Any, consumer: Any) -> Any:  # type: ignore[override]
        """The streamed HTTP request, sent to the preferred node first."""
        op = _PreferredRowStreamOp(send.service, send.method, send.path, send.body, send.headers, send.timeout,
                                   consumer, "results")
        op.order = preferred_order(self._host)
        return op

    def __repr__(self) -> str:
        return "<%s %r>" % (type(self).__name__, self.params.statement)


class _PreferredRowStreamOp(RowStreamOp):
    """A RowStreamOp whose nodes are tried in a given order."""

    __slots__ = ("order",)
    #: orders the candidate nodes in place (see ``Engine.http_request``)
    order: Callable[[List[Tuple[str, int]]], None]

    def start(self, engine: Any) -> None:
        """Send the request through ``engine``, trying nodes in ``order``."""
        self._request = engine.http_request(self.service, self.method, self.path, self.body, self.headers,
                                            self.timeout, on_head=None, on_chunk=self._on_chunk,
                                            on_end=self._on_end, on_error=self._on_error,
                                            idempotent=self.idempotent, order=self.order)


class _PreferredHttpOp(HttpOp):
    """An HttpOp whose nodes are tried in a given order."""

    __slots__ = ("order",)
    #: orders the candidate nodes in place (see ``Engine.http_request``)
    order: Callable[[List[Tuple[str, int]]], None]

    def run(self, engine: Any) -> None:
        """Start the request (the engine calls this when the op is submitted)."""
        self._request = engine.http_request(self.service, self.method, self.path, self.body, self.headers,
                                            self.timeout, on_head=self._on_head, on_chunk=self._on_chunk,
                                            on_end=self._on_end, on_error=self._on_failure, order=self.order)


def _pause(bucket: Any, seconds: float) -> None:
    """Let ``seconds`` pass with the bucket's waiting strategy (the select
    loop runs, or the greenlet sleeps): a timer of the bucket's IOPS counts
    a latch down. The AsyncBucket never waits (PipelineError)."""
    iops = bucket._engine.iops
    timer = iops.timer_event_factory()
    latch = Latch(1)

    def fire(_flags: int) -> None:
        iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
        latch.done()

    timer._handler = fire
    iops.update_timer(timer, PYCBC_EVACTION_WATCH, max(1, int(seconds * 1e6)))
    try:
        bucket._wait_latch(latch)
    finally:
        if latch.count:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)


# ---------------------------------------------------------------- deferred


def _poll_seconds(name: str, value: Any) -> float:
    """A polling duration: a number of seconds in (0, 86400], else ArgumentError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise ArgumentError("%s must be a number of seconds in (0, 86400], not %r" % (name, value))
    return float(value)


class DeferredAnalyticsRequest(AnalyticsRequest):
    """An analytics request run in the background by the service: the first
    response carries a ``handle``; the request polls it every ``interval``
    seconds (default 10, as 2.5) until the status is ``success`` (then the
    rows are fetched and yielded) or ``failed`` (AnalyticsError), for at
    most ``timeout`` seconds (default: the query's timeout, else the
    bucket's ``n1ql_timeout``; then TimeoutError). Blocking and gevent
    buckets only. ``meta`` is the first response's, plus ``handle``."""

    def __init__(self, params: Any, host: Optional[str], parent: Any, timeout: Optional[float] = None,
                 interval: Optional[float] = None, row_factory: Callable[[Any], Any] = lambda row: row) -> None:
        if isinstance(params, str):
            params = DeferredAnalyticsQuery(params)
        if not isinstance(params, DeferredAnalyticsQuery):
            raise ArgumentError("DeferredAnalyticsRequest needs a DeferredAnalyticsQuery")
        super().__init__(params, host, parent, row_factory)
        self._timeout: Optional[float] = None
        self._interval = DEFAULT_INTERVAL
        self.timeout = timeout
        if interval is not None:
            self.interval = interval

    @property
    def timeout(self) -> Optional[float]:
        """How long to poll at most, in seconds (None: the query's timeout,
        else the bucket's ``n1ql_timeout``)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._timeout = None if value is None else _poll_seconds("timeout", value)

    @property
    def interval(self) -> float:
        """Seconds between two status polls (default 10, as 2.5)."""
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = _poll_seconds("interval", value)

    def __iter__(self) -> Iterator[Any]:
        bucket = self.bucket
        # 1. the query itself: the service answers with a handle (and no rows)
        for _ in super().__iter__():
            pass
        if self._closed:
            return
        self._done = False
        handle = self.meta.get("handle")
        if not isinstance(handle, str) or not handle:
            raise AnalyticsError({"message": "the analytics service gave no handle for a deferred query",
                                  "objextra": []})
        limit = self._timeout or self.params.timeout or bucket.n1ql_timeout
        deadline = time.monotonic() + limit
        # 2. poll the status until it names the result
        while True:
            status = self._get_json(handle)
            state = status.get("status") if isinstance(status, dict) else None
            if state == "success":
                result = status.get("handle")
                if not isinstance(result, str) or not result:
                    raise AnalyticsError({"message": "a finished deferred query gave no result handle",
                                          "objextra": []})
                break
            if state in ("failed", "fatal", "errors"):
                errors = status.get("errors") if isinstance(status, dict) else None
                raise AnalyticsError({"message": "the deferred analytics query failed: %r" % (status,),
                                      "objextra": errors if isinstance(errors, list) else []})
            if time.monotonic() + self._interval > deadline:
                raise CBTimeoutError("the deferred analytics query did not finish within %.3gs" % limit)
            _pause(bucket, self._interval)
            if self._closed:
                return
        # 3. the rows
        rows = self._get_json(result)
        if not isinstance(rows, list):
            rows = [rows]
        self._done = True
        for row in rows:
            if self._closed:
                return
            self.rows_returned += 1
            yield self.row_factory(row)

    def _get_json(self, url: str) -> Any:
        """GET a handle URL on the analytics node it names (the whole JSON reply)."""
        parts = urlsplit(url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        if not path.startswith(ANALYTICS_PATH):
            raise AnalyticsError({"message": "unexpected analytics handle %r" % (url,), "objextra": []})
        op = _PreferredHttpOp(ANALYTICS_SERVICE, "GET", path, timeout=self.bucket.n1ql_timeout + HTTP_GRACE)
        op.order = preferred_order("%s:%d" % (parts.hostname, parts.port) if parts.hostname and parts.port
                                   else parts.hostname)
        res = self.bucket._one(op)
        value = res.value
        if isinstance(value, (bytes, str)):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise AnalyticsError({"message": "the analytics handle %s answered no JSON" % url,
                                      "objextra": []}) from exc
        return value


def gen_request(query: AnalyticsQuery, host: Optional[str], parent: Any, **kwargs: Any) -> AnalyticsRequest:
    """The request object for ``query`` (as 2.5's ``gen_request``): a
    :class:`DeferredAnalyticsRequest` for a :class:`DeferredAnalyticsQuery`,
    else an :class:`AnalyticsRequest`."""
    if isinstance(query, DeferredAnalyticsQuery):
        return DeferredAnalyticsRequest(query, host, parent, **kwargs)
    if isinstance(query, AnalyticsQuery):
        return AnalyticsRequest(query, host, parent, **kwargs)
    raise ArgumentError("gen_request needs an AnalyticsQuery, not %s" % type(query).__name__)

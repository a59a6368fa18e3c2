"""The N1QL request as a state machine, with no I/O (spec/http-services.md §3).

One :class:`QueryMachine` runs one ``bucket.n1ql_query(...)``. It decides
which HTTP requests to send and what their outcome means; whoever drives it
sends them and reports back. Both flavours drive the same machine: the
iterator (:class:`~couchbase_core.n1ql.N1QLRequest`, blocking and gevent
buckets) and the callbacks (:class:`~couchbase_core.asynchronous.n1ql.AsyncN1QLRequest`).

The driver's loop::

    action = machine.start()
    while isinstance(action, SendRequest):
        ...send action.body to action.path with the service action.service...
        for each batch of rows parsed:   to_caller = machine.feed_rows(rows)
        when the response ended/failed:  action = machine.end(meta, http_status, error)
    action is Finished (meta) or Failed (error, meta)

States, and what moves between them (the table :data:`TRANSITIONS`)::

    IDLE --start--> EXECUTING                       adhoc, or the plan is cached
    IDLE --start--> PREPARING                       not adhoc, no plan cached
    PREPARING    --ok--> EXECUTING                  the plan is cached
    EXECUTING    --ok--> DONE
    EXECUTING    --stale--> REPREPARING             the cached plan is dropped
    REPREPARING  --ok--> REEXECUTING
    REEXECUTING  --ok--> DONE
    any request  --error--> FAILED                  (REEXECUTING --stale--> FAILED too)

"stale" is an error of a prepared execution that says the plan no longer
works (codes 4040-4090, or 5000 about an index) while no row was handed to
the caller yet; anything else is "error". A stale plan is therefore
re-prepared at most once per request: REEXECUTING has no way back.

The rows of a PREPARE are the machine's (the first one is the plan); the
rows of an execution go to the caller (:meth:`QueryMachine.feed_rows`
returns them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from couchbase_core._engine.prepared import PreparedCache
from couchbase_core.exceptions import CouchbaseError, HTTPError, exc_from_rc
from couchbase_core.n1ql import N1QLError, N1QLQuery, dump_body

__all__ = ["QueryMachine", "QueryOptions", "SendRequest", "Finished", "Failed", "Action", "query_error",
           "is_stale_plan", "TRANSITIONS", "QUERY_PATH", "HTTP_GRACE"]

#: Where N1QL requests go (on a node offering the ``n1ql`` service).
QUERY_PATH = "/query/service"
#: The client's deadline for a request is the query's own timeout (which the
#: service enforces, answering with an error document) plus this grace: the
#: service's answer comes first; the client's deadline is the backstop.
HTTP_GRACE = 1.0

_STALE_CODES = range(4040, 4091)

# states
IDLE = "IDLE"
PREPARING = "PREPARING"
EXECUTING = "EXECUTING"
REPREPARING = "REPREPARING"
REEXECUTING = "REEXECUTING"
DONE = "DONE"
FAILED = "FAILED"

# outcomes of one HTTP request
OK = "ok"
STALE = "stale"
ERROR = "error"

#: (state, outcome of its request) -> next state. Anything not listed is FAILED.
TRANSITIONS: Dict[Tuple[str, str], str] = {
    (PREPARING, OK): EXECUTING,
    (EXECUTING, OK): DONE,
    (EXECUTING, STALE): REPREPARING,
    (REPREPARING, OK): REEXECUTING,
    (REEXECUTING, OK): DONE,
}
_PREPARE_STATES = (PREPARING, REPREPARING)
_EXECUTE_STATES = (EXECUTING, REEXECUTING)


@dataclass(frozen=True)
class SendRequest:
    """Send this HTTP request and report its rows and end to the machine."""

    body: bytes
    #: the client-side deadline of the request, in seconds
    timeout: float
    #: True for a PREPARE (its rows are the machine's), False for an execution
    prepare: bool
    service: str = "n1ql"
    method: str = "POST"
    path: str = QUERY_PATH
    headers: Dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass(frozen=True)
class Finished:
    """The query succeeded; every row was handed over."""

    meta: Dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The query failed with ``error`` (raise it, or pass it to on_error)."""

    error: BaseException
    meta: Dict[str, Any]


Action = Union[SendRequest, Finished, Failed]


@dataclass(frozen=True)
class QueryOptions:
    """What the machine needs to know of the bucket and the cluster."""

    #: the bucket's ``n1ql_timeout``: for queries without their own timeout, and for PREPARE
    default_timeout: float
    #: the bucket's name and credentials (``cross_bucket`` queries send them in the body)
    bucket: str = ""
    username: Optional[str] = None
    password: Optional[str] = None
    #: the cluster lacks ``enhancedPreparedStatements``: executions carry the encoded plan
    send_plan: bool = False
    #: ``(bucket, password)`` pairs added by ``Bucket.add_bucket_creds``: sent with the bucket's own
    extra_creds: Tuple[Tuple[str, str], ...] = ()


def is_stale_plan(exc: BaseException) -> bool:
    """Whether a N1QL error says a prepared plan no longer works."""
    if not isinstance(exc, N1QLError):
        return False
    if exc.code in _STALE_CODES:
        return True
    return exc.code == 5000 and "index" in exc.msg.lower()


def query_error(meta: Dict[str, Any], http_status: int, error: Optional[Tuple[int, str]]) -> Optional[CouchbaseError]:
    """The exception for a failed response, or None: a transport failure
    (``error``, an ``(rc, message)`` pair) by its code; errors reported by the
    service as :class:`~couchbase_core.n1ql.N1QLError`; any other refusal (a
    status other than 200, or a status field other than success) as
    :class:`~couchbase_core.exceptions.HTTPError`."""
    if error is not None and error[0]:
        return exc_from_rc(error[0], "N1QL request failed: %s" % error[1])
    errors = meta.get("errors")
    if errors:
        first = errors[0] if isinstance(errors, list) and errors else {}
        exc = N1QLError({"message": "N1QL error %s: %s" % (first.get("code"), first.get("msg")),
                         "objextra": errors})
        exc.http_status = http_status  # type: ignore[attr-defined]
        return exc
    status = meta.get("status")
    if http_status not in (0, 200) or (status is not None and status not in ("success", "completed")):
        detail = meta.get("body")
        exc2 = HTTPError({"message": "N1QL request failed (HTTP %d, status %r)%s" % (
            http_status, status, ": %s" % detail[:300] if detail else ""), "objextra": meta})
        exc2.http_status = http_status  # type: ignore[attr-defined]
        return exc2
    return None


class QueryMachine:
    """One N1QL request's decisions (see the module docs).

    Args:
        query: the statement and its options.
        cache: the bucket's prepared-statement cache.
        options: what the machine needs of the bucket and the cluster.
    """

    def __init__(self, query: N1QLQuery, cache: PreparedCache, options: QueryOptions) -> None:
        self.query = query
        self.cache = cache
        self.options = options
        self.state = IDLE
        #: the plan being executed (None for adhoc queries)
        self.prepared: Optional[Dict[str, Any]] = None
        #: rows handed to the caller so far
        self.rows_delivered = 0
        #: the metadata of the last response
        self.meta: Dict[str, Any] = {}
        self._plan_rows: List[Any] = []

    # ------------------------------------------------------------- events

    def start(self) -> Action:
        """The first action."""
        if self.state != IDLE:
            raise RuntimeError("a QueryMachine starts once")
        if self.query.adhoc:
            return self._execute(None, EXECUTING)
        cached = self.cache.get(self.query.statement)
        if cached is not None:
            return self._execute(cached, EXECUTING)
        return self._prepare(PREPARING)

    def feed_rows(self, rows: List[Any]) -> List[Any]:
        """Rows of the current response: returns those for the caller."""
        if self.state in _EXECUTE_STATES:
            self.rows_delivered += len(rows)
            return rows
        if self.state in _PREPARE_STATES and not self._plan_rows and rows:
            self._plan_rows = rows[:1]  # a PREPARE answers one row: the plan
        return []

    def end(self, meta: Dict[str, Any], http_status: int, error: Optional[Tuple[int, str]]) -> Action:
        """The current response ended (``error`` None) or failed (``error``
        an ``(rc, message)`` pair): the next action."""
        if self.state not in _PREPARE_STATES and self.state not in _EXECUTE_STATES:
            raise RuntimeError("no request of this QueryMachine is in progress (state %s)" % self.state)
        self.meta = meta
        exc = query_error(meta, http_status, error)
        plan: Optional[Dict[str, Any]] = None
        if exc is None and self.state in _PREPARE_STATES:
            plan = self._plan_rows[0] if self._plan_rows else None
            if not isinstance(plan, dict) or "name" not in plan:
                exc = N1QLError({"message": "PREPARE returned no plan", "objextra": []})
        if exc is None:
            outcome = OK
        elif (self.state in _EXECUTE_STATES and self.prepared is not None and self.rows_delivered == 0
              and is_stale_plan(exc)):
            outcome = STALE
        else:
            outcome = ERROR
        following = TRANSITIONS.get((self.state, outcome), FAILED)
        if following == FAILED:
            self.state = FAILED
            assert exc is not None
            return Failed(exc, meta)
        if following == DONE:
            self.state = DONE
            return Finished(meta)
        if following == REPREPARING:
            self.cache.drop(self.query.statement)
            return self._prepare(REPREPARING)
        # a plan arrived: cache it and execute it
        assert plan is not None
        self.cache.put(self.query.statement, plan)
        return self._execute(plan, following)

    # ----------------------------------------------------------- requests

    def _prepare(self, state: str) -> SendRequest:
        self.state = state
        self._plan_rows = []
        return SendRequest(prepare_body(self.query, self.options), self.options.default_timeout + HTTP_GRACE,
                           prepare=True)

    def _execute(self, prepared: Optional[Dict[str, Any]], state: str) -> SendRequest:
        self.state = state
        self.prepared = prepared
        timeout = (self.query.timeout or self.options.default_timeout) + HTTP_GRACE
        return SendRequest(execute_body(self.query, self.options, prepared), timeout, prepare=False)


def prepare_body(query: N1QLQuery, options: QueryOptions) -> bytes:
    """The body of ``PREPARE <statement>``."""
    body = N1QLQuery("PREPARE " + query.statement).encoded_body(options.default_timeout)
    return dump_body(body).encode("utf-8")


def execute_body(query: N1QLQuery, options: QueryOptions, prepared: Optional[Dict[str, Any]]) -> bytes:
    """The body that runs ``query``: its statement, or the name of its
    prepared plan (and the plan itself when the cluster needs it)."""
    body = query.encoded_body(options.default_timeout)
    if query.cross_bucket:
        body["creds"] = [{"user": "local:%s" % (options.username or options.bucket), "pass": options.password or ""}]
        body["creds"] += [{"user": "local:%s" % name, "pass": secret} for name, secret in options.extra_creds]
    if prepared is not None:
        body.pop("statement", None)
        body["prepared"] = prepared["name"]
        if options.send_plan and prepared.get("encoded_plan"):
            body["encoded_plan"] = prepared["encoded_plan"]
    return dump_body(body).encode("utf-8")

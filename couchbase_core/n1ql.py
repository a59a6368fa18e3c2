"""N1QL queries (spec/http-services.md §3).

::

    q = N1QLQuery("SELECT name FROM `default` WHERE age > $1", 30)
    for row in bucket.n1ql_query(q):
        print(row)

:class:`N1QLQuery` holds the statement and its options; iterating the
:class:`N1QLRequest` that ``bucket.n1ql_query`` returns sends it to a node
running the query service and yields rows while the response streams in.
``meta`` (status, metrics, errors, warnings...) is available afterwards.

Prepared statements: with ``query.adhoc = False`` the statement is prepared
once (``PREPARE``) and its plan cached per bucket (:func:`prepared_cache`,
at most 5000 statements, least recently used dropped first); later
executions send only the prepared name (and the plan, when the cluster lacks
the ``enhancedPreparedStatements`` capability). A failure that says the plan
is stale (codes 4040-4090, or 5000 about an index) re-prepares and retries
once, if no row was delivered yet.

Every flavour runs a query through the same request machine
(:mod:`couchbase_core._querymachine`): it builds the ``/query/service``
bodies, decides when to prepare, and maps the outcome to an error. The
iterator here drives it with the bucket's waiting strategy (blocking, or
the greenlet sleeping on gevent); ``AsyncN1QLRequest`` drives it from
callbacks.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from couchbase_core._engine.prepared import PreparedCache
from couchbase_core._rowstream import ClosableRows
from couchbase_core.exceptions import RC, ArgumentError, CouchbaseError
from couchbase_core.result import MutationToken

__all__ = ["N1QLQuery", "N1QLRequest", "N1QLError", "MutationState", "CONSISTENCY_NONE",
           "CONSISTENCY_REQUEST", "CONSISTENCY_UNBOUNDED", "STATEMENT_PLUS", "PROFILE_OFF", "PROFILE_PHASES",
           "PROFILE_TIMINGS", "UNBOUNDED", "REQUEST_PLUS"]

#: Indexes may lag behind the latest mutations (the default).
CONSISTENCY_NONE = "none"
CONSISTENCY_UNBOUNDED = "not_bounded"
UNBOUNDED = CONSISTENCY_UNBOUNDED
#: Wait until indexes have every mutation made before the request.
CONSISTENCY_REQUEST = "request_plus"
REQUEST_PLUS = CONSISTENCY_REQUEST
#: Like request_plus, per statement.
STATEMENT_PLUS = "statement_plus"
#: Profiling output.
PROFILE_OFF = "off"
PROFILE_PHASES = "phases"
PROFILE_TIMINGS = "timings"

class N1QLError(CouchbaseError):
    """The query service reported errors. ``code`` and ``msg`` are the first
    error's; ``errors`` has them all; ``http_status`` the HTTP status."""

    CODE = RC.HTTP

    @property
    def code(self) -> int:
        """The first error's N1QL code (e.g. 3000 for a syntax error)."""
        errors = self.objextra or []
        return int(errors[0].get("code", 0)) if errors else 0

    @property
    def msg(self) -> str:
        """The first error's message."""
        errors = self.objextra or []
        return str(errors[0].get("msg", "")) if errors else self.message

    @property
    def errors(self) -> List[Dict[str, Any]]:
        """Every error object the service returned."""
        return list(self.objextra or [])


class MutationState:
    """Mutation tokens to wait for with ``consistent_with`` (at_plus)."""

    def __init__(self, *results: Any) -> None:
        self._tokens: Dict[tuple, Any] = {}
        self.add_results(*results)

    def add_results(self, *results: Any) -> bool:
        """Add the tokens of mutation results (or MultiResults); True if any."""
        added = False
        for res in results:
            values = res.values() if isinstance(res, dict) else [res]
            for r in values:
                token = getattr(r, "mutation_token", None)
                if token is None:
                    continue
                key = (token.bucket, token.vbucket)
                current = self._tokens.get(key)
                if current is None or token.seqno > current.seqno:
                    self._tokens[key] = token
                added = True
        return added

    def add_all(self, *tokens: Any) -> None:
        """Add tokens directly."""
        for token in tokens:
            self._tokens[(token.bucket, token.vbucket)] = token

    def __bool__(self) -> bool:
        return bool(self._tokens)

    @property
    def _sv(self) -> Dict[str, Dict[int, Tuple[int, str]]]:
        """The state in 2.x's shape: ``{bucket: {vbid: (seqno, "vbuuid")}}``."""
        out: Dict[str, Dict[int, Tuple[int, str]]] = {}
        for (bucket, vbucket), token in self._tokens.items():
            out.setdefault(bucket, {})[vbucket] = (token.seqno, str(token.vbucket_uuid))
        return out

    def _scan_vectors(self) -> Dict[str, Dict[str, list]]:
        """``scan_vectors`` for a request: ``{bucket: {"vbid": [seqno, "vbuuid"]}}``."""
        return {bucket: {str(vb): [seqno, uuid] for vb, (seqno, uuid) in vbs.items()}
                for bucket, vbs in self._sv.items()}

    def encode(self) -> str:
        """The state as the JSON text 2.x sends and stores:
        ``{"bucket": {"vbid": [seqno, "vbuuid"]}}``; :meth:`decode` reads it."""
        return json.dumps(self._scan_vectors(), separators=(",", ":"))

    @classmethod
    def decode(cls, text: Any) -> "MutationState":
        """A MutationState from the text :meth:`encode` returned.
        ArgumentError if it is not that shape."""
        try:
            data = json.loads(text)
            state = cls()
            for bucket, vbs in data.items():
                for vb, (seqno, uuid) in vbs.items():
                    token = MutationToken(int(vb), int(uuid), int(seqno), str(bucket))
                    state._tokens[(token.bucket, token.vbucket)] = token
        except (TypeError, ValueError, AttributeError) as exc:
            raise ArgumentError({"message": "not an encoded MutationState: %s" % exc, "inner_cause": exc}) from exc
        return state


def dump_body(body: Dict[str, Any]) -> str:
    """A N1QL request body as JSON text; a parameter that is not JSON (NaN,
    Infinity, an unknown type) is an ArgumentError, not a server error. The
    text is ASCII (``\\uXXXX`` escapes), so it always encodes."""
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ArgumentError({"message": "N1QL request is not JSON-serialisable: %s" % exc,
                             "inner_cause": exc}) from exc


class N1QLQuery:
    """A statement and its options.

    Args:
        query: the N1QL statement.
        *args: positional parameters (``$1``, ``$2``...).
        **kwargs: named parameters (``$name``; give them without the ``$``).
    """

    def __init__(self, query: str, *args: Any, **kwargs: Any) -> None:
        if not isinstance(query, str):
            raise ArgumentError("a N1QL statement must be a str")
        self._body: Dict[str, Any] = {"statement": query}
        self._adhoc = True
        self._cross_bucket = False
        self._timeout: Optional[float] = None
        if args:
            self._body["args"] = list(args)
        for name, value in kwargs.items():
            self.set_option("$" + name.lstrip("$"), value)

    @property
    def statement(self) -> str:
        """The statement text."""
        return self._body["statement"]

    def set_option(self, name: str, value: Any) -> None:
        """Set any request field (e.g. ``scan_cap``, ``pipeline_batch``)."""
        self._body[name] = value

    def set_args(self, *args: Any, **kwargs: Any) -> None:
        """Replace the parameters."""
        self._body.pop("args", None)
        for key in [k for k in self._body if k.startswith("$")]:
            del self._body[key]
        if args:
            self._body["args"] = list(args)
        for name, value in kwargs.items():
            self._body["$" + name.lstrip("$")] = value

    @property
    def timeout(self) -> Optional[float]:
        """This query's timeout in seconds (None: the bucket's
        ``n1ql_timeout``); > 0 and at most
        :data:`~couchbase_core.connstr.MAX_TIMEOUT`, else ArgumentError."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        if value is None:
            self._timeout = None
            return
        from couchbase_core.connstr import MAX_TIMEOUT

        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
            raise ArgumentError("N1QLQuery.timeout must be None or a number of seconds greater than 0 and at "
                                "most %d (MAX_TIMEOUT), not %r" % (MAX_TIMEOUT, value))
        self._timeout = float(value)

    @property
    def consistency(self) -> str:
        """``not_bounded`` (default), ``request_plus`` or ``at_plus``."""
        return self._body.get("scan_consistency", CONSISTENCY_UNBOUNDED)

    @consistency.setter
    def consistency(self, value: str) -> None:
        if value == CONSISTENCY_NONE:
            self._body.pop("scan_consistency", None)
            self._body.pop("scan_vectors", None)
            return
        if value not in (CONSISTENCY_UNBOUNDED, CONSISTENCY_REQUEST, STATEMENT_PLUS):
            raise ArgumentError("consistency must be one of CONSISTENCY_NONE, CONSISTENCY_UNBOUNDED, "
                                "CONSISTENCY_REQUEST, STATEMENT_PLUS")
        self._body["scan_consistency"] = value
        self._body.pop("scan_vectors", None)

    def consistent_with(self, state: MutationState) -> None:
        """Wait for the mutations in ``state`` (``at_plus``)."""
        if not isinstance(state, MutationState) or not state:
            raise ArgumentError("consistent_with needs a non-empty MutationState")
        self._body["scan_consistency"] = "at_plus"
        self._body["scan_vectors"] = state._scan_vectors()

    @property
    def adhoc(self) -> bool:
        """False to prepare the statement once and reuse the plan."""
        return self._adhoc

    @adhoc.setter
    def adhoc(self, value: bool) -> None:
        self._adhoc = bool(value)

    @property
    def readonly(self) -> bool:
        """Refuse statements that change data."""
        return bool(self._body.get("readonly", False))

    @readonly.setter
    def readonly(self, value: bool) -> None:
        self._body["readonly"] = bool(value)

    @property
    def profile(self) -> str:
        """``PROFILE_OFF``, ``PROFILE_PHASES`` or ``PROFILE_TIMINGS``."""
        return self._body.get("profile", PROFILE_OFF)

    @profile.setter
    def profile(self, value: str) -> None:
        if value not in (PROFILE_OFF, PROFILE_PHASES, PROFILE_TIMINGS):
            raise ArgumentError("profile must be PROFILE_OFF, PROFILE_PHASES or PROFILE_TIMINGS")
        self._body["profile"] = value

    @property
    def metrics(self) -> bool:
        """Ask for metrics (default True)."""
        return bool(self._body.get("metrics", True))

    @metrics.setter
    def metrics(self, value: bool) -> None:
        self._body["metrics"] = bool(value)

    @property
    def cross_bucket(self) -> bool:
        """Send the credentials of every bucket (pre-5.0 clusters)."""
        return self._cross_bucket

    @cross_bucket.setter
    def cross_bucket(self, value: bool) -> None:
        self._cross_bucket = bool(value)

    def encoded_body(self, default_timeout: Optional[float] = None) -> Dict[str, Any]:
        """The request body as a dict."""
        body = dict(self._body)
        timeout = self.timeout if self.timeout is not None else default_timeout
        if timeout:
            body["timeout"] = "%dms" % max(1, int(timeout * 1000))
        return body

    @property
    def encoded(self) -> str:
        """The request body as JSON text (ArgumentError if a parameter is
        not JSON: NaN, Infinity, an object the encoder does not know)."""
        return dump_body(self.encoded_body())

    def __repr__(self) -> str:
        return "N1QLQuery(%r)" % (self._body,)


def prepared_cache(bucket: Any) -> PreparedCache:
    """The bucket's prepared-statement cache (its engine's; at most
    :data:`~couchbase_core._engine.prepared.MAX_PREPARED` statements)."""
    return bucket._engine.prepared_cache


class N1QLRequest(ClosableRows):
    """An iterable N1QL request (see the module docs). Iterate it once;
    ``execute()`` runs it to completion; ``get_single_result()`` returns the
    first row. ``meta`` (and ``metrics``, ``warnings``, ``profile``, read
    from it) exist once the response has ended: reading them before
    raises RuntimeError, as in 2.x. ``errors`` is ``[]`` until then."""

    def __init__(self, params: N1QLQuery, parent: Any, row_factory: Callable[[Any], Any] = lambda row: row) -> None:
        if isinstance(params, str):
            params = N1QLQuery(params)
        if not isinstance(params, N1QLQuery):
            raise ArgumentError("n1ql_query needs a N1QLQuery or a statement string")
        self.params = params
        self.bucket = parent
        self.row_factory = row_factory
        self._meta: Optional[Dict[str, Any]] = None
        self.rows_returned = 0
        self._iterated = False
        self._done = False

    # -- the request machine -------------------------------------------------------

    def _new_machine(self) -> Any:
        """A :class:`~couchbase_core._querymachine.QueryMachine` for this
        request (after the checks every flavour makes before sending)."""
        from couchbase_core._querymachine import QueryMachine, QueryOptions

        bucket = self.bucket
        bucket._require_couchbase("N1QL", "plain memcached has no query service")
        engine = bucket._engine
        user, password = bucket._settings.sasl_credentials()
        caps = (engine.config.cluster_capabilities if engine.config is not None else {}) or {}
        options = QueryOptions(default_timeout=bucket.n1ql_timeout, bucket=bucket.bucket or "", username=user,
                               password=password,
                               send_plan="enhancedPreparedStatements" not in caps.get("n1ql", []),
                               extra_creds=tuple(getattr(bucket, "_bucket_creds", {}).items()))
        return QueryMachine(self.params, engine.prepared_cache, options)

    @staticmethod
    def _request_op(send: Any, consumer: Any) -> Any:
        """The streamed HTTP request for one ``SendRequest`` of the machine."""
        from couchbase_core._httpops import RowStreamOp

        return RowStreamOp(send.service, send.method, send.path, send.body, send.headers, send.timeout, consumer,
                           "results")

    def _stream(self, send: Any) -> Any:
        """The row stream of one request the machine asked for (rows are
        buffered for the iterator; see :mod:`couchbase_core._rowstream`)."""
        from couchbase_core._rowstream import RowStream

        return RowStream(self.bucket, lambda consumer: self._request_op(send, consumer))

    # -- iteration ------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:
            from couchbase_core.views.iterator import AlreadyQueriedError

            raise AlreadyQueriedError("this N1QL request has already been iterated; create a new one")
        self._iterated = True
        from couchbase_core._querymachine import Failed, Finished

        machine = self._new_machine()
        action = machine.start()
        while not isinstance(action, (Finished, Failed)):
            if self._closed:
                return
            stream = self._current = self._stream(action)
            for batch in stream.batches():
                for row in machine.feed_rows(batch):
                    stream.check_open()
                    if stream.closed:
                        return
                    self.rows_returned += 1
                    yield self.row_factory(row)
            if stream.closed:
                return
            action = machine.end(stream.meta, stream.http_status, stream.error)
        self.meta = machine.meta
        self._done = True
        if isinstance(action, Failed):
            raise action.error

    def execute(self) -> "N1QLRequest":
        """Run the request to completion (rows are discarded); returns self."""
        for _ in self:
            pass
        return self

    def get_single_result(self) -> Any:
        """The first row (the rest is read and discarded), or None."""
        first = None
        for index, row in enumerate(self):
            if index == 0:
                first = row
        return first

    @property
    def meta(self) -> Dict[str, Any]:
        """The response's metadata (everything but the rows: ``status``,
        ``metrics``, ``errors``...), always a dict.

        Raises:
            RuntimeError: the response has not ended yet (iterate the
                request, or call :meth:`execute`, first), as in 2.x.
        """
        if self._meta is None:
            raise RuntimeError("This property only valid once all rows are received!")
        return self._meta

    @meta.setter
    def meta(self, value: Dict[str, Any]) -> None:
        self._meta = value if isinstance(value, dict) else {}

    @property
    def metrics(self) -> Dict[str, Any]:
        """The response's metrics (RuntimeError before the end, as ``meta``)."""
        return self.meta.get("metrics", {})

    @property
    def errors(self) -> List[Any]:
        """Errors reported by the service (``[]`` until the response ended)."""
        if self._meta is None:
            return []
        return self._meta.get("errors", [])

    @property
    def warnings(self) -> List[Any]:
        """Warnings reported by the service."""
        return self.meta.get("warnings", [])

    @property
    def profile(self) -> Any:
        """Profiling output (when asked for)."""
        return self.meta.get("profile")

    def __repr__(self) -> str:
        return "<%s %r>" % (type(self).__name__, self.params.statement)

"""Buckets for Twisted: operations return Deferreds (the 2.x ``txcouchbase``).

Two classes, as in 2.x:

* :class:`RawBucket` is an :class:`~couchbase_core.asynchronous.bucket.AsyncBucket`
  on the Twisted reactor: key-value methods return
  :class:`~couchbase_core.result.AsyncResult` objects (cheaper than Deferreds);
  :meth:`RawBucket.defer` turns one into a Deferred. It adds the connection
  events (:meth:`RawBucket.registerDeferred`, :meth:`RawBucket.connect`,
  :meth:`RawBucket.on_connect`) and the query helpers
  (``queryAll``/``queryEx``, ``n1qlQueryAll``/``n1qlQueryEx``,
  ``searchQueryAll``/``searchQueryEx``, ``analyticsQueryAll``/``analyticsQueryEx``).
* :class:`Bucket` is a RawBucket whose operations return Deferreds: the
  callback gets what an AsyncResult's callback would get (the key's result,
  or the dict of results of a ``_multi`` call), the errback a Failure of
  the exception the blocking API would raise (``quiet`` is honoured). The
  2.x camel-case ``*Multi`` aliases (``getMulti``, ``upsertMulti``...) exist.

Operations are the AsyncBucket's, written once in
:mod:`couchbase_core._bucketbase`; this module only converts their
outcomes. Bad arguments raise at the call (as in 2.x), before any Deferred
exists. Operations issued before the bucket is connected wait in the
engine and go out once it is.

Cancelling: ``Deferred.cancel()`` on an operation's Deferred detaches it. A
request not yet written is withdrawn; the reply to one already written is
read and dropped; the connection stays usable by every other operation.
The Deferred fails with :class:`twisted.internet.defer.CancelledError`.
Cancelling a ``queryAll``-family Deferred stops the query's HTTP request.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from couchbase_core._kvops import discard
from couchbase_core.asynchronous.analytics import AsyncAnalyticsRequest
from couchbase_core.asynchronous.bucket import _PENDING, AsyncBucket, _AsyncPipeline
from couchbase_core.asynchronous.fulltext import AsyncSearchRequest
from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest
from couchbase_core.asynchronous.view import AsyncViewBase
from couchbase_core.exceptions import CouchbaseError
from couchbase_core.result import AsyncResult, MultiResult
from txcouchbase.iops import IOPS

__all__ = [
    "RawBucket",
    "Bucket",
    "BatchedRowMixin",
    "BatchedView",
    "BatchedN1QLRequest",
    "BatchedSearchRequest",
    "BatchedAnalyticsRequest",
]


# ---------------------------------------------------------------- row results


class BatchedRowMixin:
    """Collects every row of a query, then fires a Deferred with the request
    object itself, which iterates over the rows (metadata stays on it:
    ``meta``, ``indexed_rows``, ``total_hits``...). Used by the
    ``*QueryAll`` methods; ``_getDeferred()`` returns the Deferred. Cancelling
    the Deferred stops the request."""

    # set by the request classes this is mixed into
    _op: Any
    _reported: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batched_rows: List[Any] = []
        self._d: Deferred[Any] = Deferred(self._cancel_request)

    def _getDeferred(self) -> Deferred:
        """The Deferred fired with this object once every row is in."""
        return self._d

    def _cancel_request(self, _d: Deferred) -> None:
        # No further handler runs, and the current HTTP request is dropped.
        self._reported = True
        op = self._op
        if op is not None:
            op.cancel()

    def on_rows(self, rows: List[Any]) -> None:
        """Keep a batch of rows."""
        self._batched_rows.extend(rows)

    def on_error(self, ex: BaseException) -> None:
        """Fail the Deferred with the query's error."""
        if not self._d.called:
            self._d.errback(Failure(ex))

    def on_done(self) -> None:
        """Fire the Deferred with this object."""
        if not self._d.called:
            self._d.callback(self)

    def __iter__(self) -> Any:
        """The rows (all of them once the Deferred has fired)."""
        return iter(self._batched_rows)

    def __len__(self) -> int:
        return len(self._batched_rows)


class BatchedView(BatchedRowMixin, AsyncViewBase):
    """A view query's rows, all at once (see :meth:`RawBucket.queryAll`)."""


class BatchedN1QLRequest(BatchedRowMixin, AsyncN1QLRequest):
    """A N1QL query's rows, all at once (see :meth:`RawBucket.n1qlQueryAll`)."""


class BatchedSearchRequest(BatchedRowMixin, AsyncSearchRequest):
    """A full-text search's hits, all at once (see :meth:`RawBucket.searchQueryAll`)."""


class BatchedAnalyticsRequest(BatchedRowMixin, AsyncAnalyticsRequest):
    """An analytics query's rows, all at once (see :meth:`RawBucket.analyticsQueryAll`)."""


# ------------------------------------------------------------------ RawBucket


class _TxPipeline(_AsyncPipeline):
    """``with bucket.pipeline():`` on a Twisted bucket: an operation whose
    Deferred was cancelled inside the block is not sent when it ends."""

    def __exit__(self, *exc: Any) -> None:
        self._queue = [op for op in self._queue if not op.done]
        _AsyncPipeline.__exit__(self, *exc)



def _connect_failure(err: Optional[BaseException]) -> Optional[Failure]:
    return None if err is None else Failure(err)


class RawBucket(AsyncBucket):
    """An AsyncBucket on the Twisted reactor (see the module docs).

    Args:
        connstr: the connection string (``connection_string=`` works too).
        reactor: the reactor to run on (default: the global one).
        Every other argument: as :class:`couchbase_core.bucket.Bucket`.
    """

    def __init__(self, connstr: Optional[str] = None, reactor: Optional[Any] = None, **kwargs: Any) -> None:
        if connstr is not None:
            kwargs["connection_string"] = connstr
        self._txiops = IOPS(reactor)
        self._events: Dict[str, List[Deferred]] = {"connect": [], "_dtor": []}
        self._dtor_fired = False
        super().__init__(self._txiops, **kwargs)

    @property
    def reactor(self) -> Any:
        """The reactor this bucket runs on."""
        return self._txiops.reactor

    # -------------------------------------------------------------- events

    def _on_bootstrap(self, err: Optional[CouchbaseError]) -> None:
        AsyncBucket._on_bootstrap(self, err)
        waiting, self._events["connect"] = self._events["connect"], []
        for d in waiting:
            self._fire(d, None, _connect_failure(err))

    @staticmethod
    def _fire(d: Deferred, value: Any, failure: Optional[Failure]) -> None:
        if d.called:  # cancelled meanwhile
            return
        if failure is None:
            d.callback(value)
        else:
            d.errback(failure)

    def registerDeferred(self, event: str, d: Deferred) -> None:
        """Fire ``d`` when ``event`` happens: ``"connect"`` (the bootstrap
        ended: callback(None), or errback with its error) or ``"_dtor"``
        (the bucket was closed, by ``close()`` or by being collected:
        callback(None)). ``d`` fires on a reactor turn, never inside the
        call that made the event happen (or this one).

        Raises:
            ValueError: for any other event name.
        """
        if event not in self._events:
            raise ValueError("No such event type", event)
        if event == "connect" and self._connect_result is not _PENDING:
            self.reactor.callLater(0, self._fire, d, None, _connect_failure(self._connect_result))
        elif event == "_dtor" and self._dtor_fired:
            self.reactor.callLater(0, self._fire, d, None, None)
        else:
            self._events[event].append(d)

    def connect(self) -> Deferred:
        """A Deferred fired (with None) once the bucket is connected, or
        failed with the bootstrap's error (2.x)."""
        d: Deferred[None] = Deferred()
        self.registerDeferred("connect", d)
        return d

    def on_connect(self, callback: Optional[Callable[[Optional[CouchbaseError]], None]] = None) -> Any:
        """Without an argument: a Deferred fired with this bucket once it is
        connected, or failed with the bootstrap's error. With ``callback``:
        as :meth:`AsyncBucket.on_connect` (``callback(err)``)."""
        if callback is not None:
            return AsyncBucket.on_connect(self, callback)
        return self.connect().addCallback(lambda _: self)

    def close(self) -> None:
        """Close every connection (pending operations fail with
        ObjectDestroyedError); the ``_dtor`` Deferreds fire on the next
        reactor turn. A bucket collected unclosed is closed the same way
        (so its ``_dtor`` Deferreds fire too, never inside the collector)."""
        try:
            AsyncBucket.close(self)
        finally:
            if not self._dtor_fired:
                self._dtor_fired = True
                waiting, self._events["_dtor"] = self._events["_dtor"], []
                for d in waiting:
                    self.reactor.callLater(0, self._fire, d, None, None)

    def pipeline(self) -> Any:
        """Batch the operations the caller issues inside the block (see
        :meth:`AsyncBucket.pipeline`); those cancelled inside it are dropped."""
        return _TxPipeline(self)

    # ------------------------------------------------ AsyncResult -> Deferred

    def _run_one(self, op: Any, quiet: bool) -> AsyncResult:
        ar = AsyncBucket._run_one(self, op, quiet)
        ar._txops = (op,)  # type: ignore[attr-defined]  # what defer()'s canceller detaches
        return ar

    def _collect(self, ops: List[Any], mres: MultiResult, finish: Callable[[MultiResult], Any]) -> AsyncResult:
        ar = AsyncBucket._collect(self, ops, mres, finish)
        ar._txops = tuple(ops)  # type: ignore[attr-defined]
        return ar

    def defer(self, opres: AsyncResult) -> Deferred:
        """A Deferred for an AsyncResult: fired with what its callback would
        get, or failed with a Failure of the exception its errback would
        get. Cancelling it detaches the operations (see the module docs)."""

        def cancel(_d: Deferred) -> None:
            opres._callback = opres._errback = None
            engine = self._engine
            for op in getattr(opres, "_txops", ()):
                op.sink = discard
                engine.cancel(op)

        d: Deferred[Any] = Deferred(cancel)

        def on_ok(result: Any) -> None:
            if not d.called:
                d.callback(result)

        def on_err(result: Any, etype: Any, evalue: BaseException, tb: Any) -> None:
            if not d.called:
                d.errback(Failure(evalue, etype, tb))

        opres.callback = on_ok
        opres.errback = on_err
        return d

    # --------------------------------------------------------------- queries

    def _start_query(self, obj: Any) -> Any:
        """Start ``obj`` now, or once the bucket is connected (a query needs
        the cluster map to find a node of its service); a failed bootstrap
        goes to its ``on_error``. A query cancelled meanwhile never starts."""
        if self._connect_result is not _PENDING:
            obj.start()
            return obj

        def connected(err: Optional[CouchbaseError]) -> None:
            if getattr(obj, "_reported", False):
                return
            if err is None:
                obj.start()
            else:
                obj._reported = True
                obj.on_error(err)

        AsyncBucket.on_connect(self, connected)
        return obj

    def queryEx(self, viewcls: type, *args: Any, **kwargs: Any) -> Any:
        """Start a view query whose rows go to an instance of ``viewcls``
        (an :class:`AsyncViewBase` subclass: ``on_rows``, ``on_error``,
        ``on_done``); returns that instance. Other arguments as
        :meth:`couchbase_core.bucket.Bucket.query`."""
        kwargs["itercls"] = viewcls
        return self._start_query(AsyncBucket.query(self, *args, **kwargs))

    def queryAll(self, *args: Any, **kwargs: Any) -> Deferred:
        """A view query: a Deferred fired with a :class:`BatchedView` that
        iterates over every row. Arguments as
        :meth:`couchbase_core.bucket.Bucket.query`."""
        kwargs["itercls"] = BatchedView
        return self._start_query(AsyncBucket.query(self, *args, **kwargs))._getDeferred()

    def n1qlQueryEx(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        """Start a N1QL query whose rows go to an instance of ``cls`` (an
        :class:`AsyncN1QLRequest` subclass); returns that instance."""
        kwargs["itercls"] = cls
        return self._start_query(AsyncBucket.n1ql_query(self, *args, **kwargs))

    def n1qlQueryAll(self, *args: Any, **kwargs: Any) -> Deferred:
        """A N1QL query: a Deferred fired with a :class:`BatchedN1QLRequest`
        that iterates over every row (``meta`` holds the metadata).
        Arguments as :meth:`couchbase_core.bucket.Bucket.n1ql_query`."""
        kwargs["itercls"] = BatchedN1QLRequest
        return self._start_query(AsyncBucket.n1ql_query(self, *args, **kwargs))._getDeferred()

    def searchQueryEx(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        """Start a full-text search whose hits go to an instance of ``cls``
        (an :class:`AsyncSearchRequest` subclass); returns that instance."""
        kwargs["itercls"] = cls
        return self._start_query(AsyncBucket.search(self, *args, **kwargs))

    def searchQueryAll(self, *args: Any, **kwargs: Any) -> Deferred:
        """A full-text search: a Deferred fired with a
        :class:`BatchedSearchRequest` that iterates over every hit.
        Arguments as :meth:`couchbase_core.bucket.Bucket.search`."""
        kwargs["itercls"] = BatchedSearchRequest
        return self._start_query(AsyncBucket.search(self, *args, **kwargs))._getDeferred()

    def analyticsQueryEx(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        """Start an analytics query whose rows go to an instance of ``cls``
        (an :class:`AsyncAnalyticsRequest` subclass); returns that instance."""
        kwargs["itercls"] = cls
        return self._start_query(AsyncBucket.analytics_query(self, *args, **kwargs))

    def analyticsQueryAll(self, *args: Any, **kwargs: Any) -> Deferred:
        """An analytics query: a Deferred fired with a
        :class:`BatchedAnalyticsRequest` that iterates over every row.
        Arguments as :meth:`couchbase_core.bucket.Bucket.analytics_query`."""
        kwargs["itercls"] = BatchedAnalyticsRequest
        return self._start_query(AsyncBucket.analytics_query(self, *args, **kwargs))._getDeferred()


# --------------------------------------------------------------------- Bucket

#: AsyncBucket methods that are not operations: Bucket keeps them as they are.
_NOT_OPERATIONS = frozenset({
    "close", "on_connect", "pipeline", "durability", "query", "n1ql_query", "analytics_query",
    "search", "bucket_manager", "lcb_version", "add_bucket_creds", "register_crypto_provider",
    "unregister_crypto_provider", "encrypt_fields", "decrypt_fields", "diagnostics",
})


def _deferring(name: str, raw: Callable[..., Any]) -> Callable[..., Any]:
    """A method calling RawBucket's ``raw`` and returning a Deferred for the
    AsyncResult it gives (anything else is returned as it is: ``None``
    inside a pipeline block, for instance)."""

    def method(self: "Bucket", *args: Any, **kwargs: Any) -> Any:
        out = raw(self, *args, **kwargs)
        if isinstance(out, AsyncResult):
            return self.defer(out)
        return out

    method.__name__ = method.__qualname__ = name
    method.__doc__ = "%s\n\nOn a txcouchbase Bucket: returns a Deferred (see txcouchbase.bucket)." % (
        inspect.getdoc(raw) or name)
    return method


class Bucket(RawBucket):
    """A RawBucket whose operations return Deferreds (see the module docs)::

        cb = Bucket("couchbase://host/default", username="app", password="s3cret")
        d = cb.upsert("greeting", {"text": "hello"})
        d.addCallback(lambda res: cb.get("greeting"))
        d.addCallback(lambda res: print(res.value))
    """


for _name, _raw in inspect.getmembers(AsyncBucket, inspect.isfunction):
    if _name.startswith("_") or _name in _NOT_OPERATIONS:
        continue
    setattr(Bucket, _name, _deferring(_name, _raw))
    if _name.endswith("_multi"):
        # 2.x camel-case aliases: getMulti, upsertMulti, ...
        setattr(Bucket, _name[:-6] + "Multi", getattr(Bucket, _name))
del _name, _raw

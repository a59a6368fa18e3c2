"""The asyncio Bucket: every operation is awaitable.

``acouchbase.bucket.Bucket`` is an
:class:`~couchbase_core.asynchronous.bucket.AsyncBucket` on an asyncio loop
(:class:`acouchbase.asyncio_iops.IOPS`) whose operations return
:class:`asyncio.Future` objects instead of bare AsyncResults. Nothing of the
key-value API is written here: each call goes through the shared bucket
code, gets its AsyncResult, and the AsyncResult's ``callback``/``errback``
settle the future. So::

    cb = Bucket("couchbase://10.0.0.5/default", username="app", password="s3cret")
    await cb.connect()
    await cb.upsert("greeting", {"text": "hello"})
    res = await cb.get("greeting")            # a ValueResult, as the blocking API returns
    many = await cb.get_multi(["a", "b"])     # a MultiResult

A single-key call resolves to that key's Result and a ``_multi`` call to
the MultiResult (an AsyncResult); a failure raises the exception the blocking
API would raise (``_multi`` failures carry ``all_results``). ``stats()``,
``ping()`` and ``flush()`` resolve to their report. Data-structure calls
(``map_get``, ``set_contains``...) resolve to the Result, whose ``value``
holds what the blocking API returns, as on the AsyncBucket.

Cancelling the task that awaits an operation (``task.cancel()``,
``asyncio.wait_for`` timing out) behaves like killing a greenlet in the
gevent bucket: requests not yet written are withdrawn, replies to those
already written are read and dropped, and the connection carries on for
everyone else. ``asyncio.shield`` keeps an operation alive as usual.

Views, N1QL, analytics and full-text search return request objects that
are iterated with ``async for`` (:mod:`acouchbase.iterator`); the socket is
not read while the consumer falls behind.

The bucket belongs to the loop it was created on (the running loop, or
``loop=``); using it from another running loop raises ObjectThreadError.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Sequence

from acouchbase.asyncio_iops import IOPS, current_loop
from acouchbase.iterator import AAnalyticsRequest, AN1QLRequest, ASearchRequest, AView
from couchbase_core._kvops import discard
from couchbase_core.asynchronous.bucket import AsyncBucket, _AsyncPipeline
from couchbase_core.exceptions import CouchbaseError, ObjectThreadError
from couchbase_core.result import AsyncResult, MultiResult

__all__ = ["Bucket"]

_running_loop = asyncio._get_running_loop  # the C accessor: no exception when none runs


class _OpFuture(asyncio.Future):  # type: ignore[type-arg]
    """The future of one bucket call. Cancelling it withdraws the call's
    operations from the engine (see the module docs)."""

    _ops: Sequence[Any] = ()
    _engine: Any = None

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        ops, self._ops = self._ops, ()
        engine, self._engine = self._engine, None
        for op in ops:
            op.sink = discard  # never complete the AsyncResult later
            engine.cancel(op)
        return True


def _settle(fut: _OpFuture, ar: AsyncResult, collected: bool) -> None:
    """Let ``ar``'s callback or errback settle ``fut``."""

    def ok(result: Any) -> None:
        if not fut.done():
            fut._ops = ()
            # stats()/ping()/flush() put their report in the AsyncResult's value
            fut.set_result(vars(result).get("value", result) if collected else result)

    def failed(_result: Any, _etype: Any, exc: BaseException, _tb: Any) -> None:
        if not fut.done():
            fut._ops = ()
            fut.set_exception(exc)

    ar.callback = ok
    ar.errback = failed


class _AioPipeline(_AsyncPipeline):
    """``with cb.pipeline():`` on the asyncio bucket: the futures of the
    operations issued inside the block settle once the block has ended and
    their replies are in (never await one inside the block). An operation
    whose future was cancelled meanwhile is not sent."""

    def __exit__(self, *exc: Any) -> None:
        self._queue = [op for op in self._queue if not op.done]
        super().__exit__(*exc)


class Bucket(AsyncBucket):
    """A bucket for asyncio programs.

    Args:
        connection_string, and every other argument: as the blocking
            :class:`couchbase_core.bucket.Bucket`.
        loop: the event loop to run on (default: the running loop, else the
            thread's current event loop).

    The constructor starts connecting without waiting; ``await
    cb.connect()`` waits for the bootstrap (operations issued earlier wait
    inside the engine).
    """

    _view_class = AView
    _n1ql_class = AN1QLRequest
    _analytics_class = AAnalyticsRequest
    _search_class = ASearchRequest

    def __init__(self, *args: Any, loop: Optional[asyncio.AbstractEventLoop] = None, **kwargs: Any) -> None:
        self._loop = loop if loop is not None else current_loop()
        super().__init__(IOPS(self._loop), *args, **kwargs)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this bucket runs on."""
        return self._loop

    def connect(self) -> "asyncio.Future[bool]":
        """A future that resolves to True once the bootstrap succeeded, or
        raises its error (AuthError, BucketNotFoundError, ConnectError...).
        Awaiting it again (or after the bootstrap) answers at once. After a
        failed bootstrap the bucket is closed."""
        fut: "asyncio.Future[bool]" = self._loop.create_future()

        def ended(err: Optional[CouchbaseError]) -> None:
            if fut.done():
                return
            if err is None:
                fut.set_result(True)
            else:
                # not from inside the engine's bootstrap callback: from the
                # loop, before the awaiting task resumes
                self._loop.call_soon(self._close_quietly)
                fut.set_exception(err)

        self.on_connect(ended)
        return fut

    def _close_quietly(self) -> None:
        if not self.closed:
            self.close()

    # -- strategy: an AsyncResult, settling a future ---------------------------

    def _check_loop(self) -> None:
        running = _running_loop()
        if running is not None and running is not self._loop:
            raise ObjectThreadError("this Bucket belongs to another event loop (%r)" % (self._loop,))

    def _run_one(self, op: Any, quiet: bool) -> "asyncio.Future[Any]":  # type: ignore[override]
        self._check_loop()
        fut = _OpFuture(loop=self._loop)
        fut._ops = (op,)
        fut._engine = self._engine
        _settle(fut, AsyncBucket._run_one(self, op, quiet), False)
        return fut

    def _collect(self, ops: List[Any], mres: MultiResult,  # type: ignore[override]
                 finish: Any) -> "asyncio.Future[Any]":
        self._check_loop()
        fut = _OpFuture(loop=self._loop)
        fut._ops = tuple(ops)
        fut._engine = self._engine
        _settle(fut, AsyncBucket._collect(self, ops, mres, finish), True)
        return fut

    def pipeline(self) -> Any:
        """Batch the operations the calling task issues inside the block:
        they are sent together when it ends; await their futures after it."""
        return _AioPipeline(self)

    # -- queries: async iterators by default ------------------------------------

    def query(self, design: str, view: str, use_devmode: bool = False, **kwargs: Any) -> Any:
        """A view query: an :class:`~acouchbase.iterator.AView` to iterate
        with ``async for`` (or pass ``itercls=`` a subclass)."""
        kwargs["itercls"] = kwargs.get("itercls") or self._view_class
        return AsyncBucket.query(self, design, view, use_devmode, **kwargs)

    def n1ql_query(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """A N1QL query: an :class:`~acouchbase.iterator.AN1QLRequest` to
        iterate with ``async for`` (or ``await req.execute()``)."""
        kwargs["itercls"] = kwargs.get("itercls") or self._n1ql_class
        return AsyncBucket.n1ql_query(self, query, *args, **kwargs)

    def analytics_query(self, query: Any, host: Any = None, *args: Any, **kwargs: Any) -> Any:
        """An analytics query: an :class:`~acouchbase.iterator.AAnalyticsRequest`
        to iterate with ``async for``."""
        kwargs["itercls"] = kwargs.get("itercls") or self._analytics_class
        return AsyncBucket.analytics_query(self, query, host, *args, **kwargs)

    def search(self, index: str, query: Any, *args: Any, **kwargs: Any) -> Any:
        """A full-text search: an :class:`~acouchbase.iterator.ASearchRequest`
        whose hits are iterated with ``async for``."""
        kwargs["itercls"] = kwargs.get("itercls") or self._search_class
        return AsyncBucket.search(self, index, query, *args, **kwargs)

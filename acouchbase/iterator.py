"""Rows of views, N1QL, analytics and search, for ``async for``.

Each class here is one of the callback request classes of
:mod:`couchbase_core.asynchronous` (which run the request from the loop and
push batches of rows to ``on_rows``) with a pull side on top: rows wait in
a buffer until the consumer's ``async for`` takes them. When the consumer
falls behind and :data:`HIGH_WATER` rows wait, the request stops reading its
socket; it reads again once fewer than :data:`LOW_WATER` wait. So memory is
bounded by the buffer, not by the size of the result.

::

    async for row in cb.query("beer", "by_name", limit=10):
        print(row.key, row.docid)

    req = cb.n1ql_query("SELECT name FROM `travel` WHERE country = $1", "France")
    async for row in req:
        ...
    print(req.meta["metrics"])

The request is sent when iteration starts (or when :attr:`AioRows.future`
or :meth:`AioRows.execute` is first awaited). Leaving the ``async for``
early (``break``, an exception, the task being cancelled) cancels the
request: its HTTP connection is closed and no other request is affected.
An object can be iterated once.

The 2.x shape is kept as well: ``await req.future`` waits for the whole
result (buffering every row, so without back-pressure), after which a plain
``for row in req`` yields them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, AsyncIterator, Deque, Dict, Iterator, List, Optional

from couchbase_core.asynchronous.analytics import AsyncAnalyticsRequest
from couchbase_core.asynchronous.fulltext import AsyncSearchRequest
from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest
from couchbase_core.asynchronous.view import AsyncViewBase
from couchbase_core.exceptions import ObjectDestroyedError
from couchbase_core.views.iterator import AlreadyQueriedError

__all__ = ["AioRows", "AView", "AN1QLRequest", "AAnalyticsRequest", "ASearchRequest", "HIGH_WATER", "LOW_WATER"]

#: Stop reading the response when this many rows wait for the consumer...
HIGH_WATER = 2000
#: ...and read again when fewer than this many do.
LOW_WATER = 500

_DONE = object()


class AioRows:
    """The pull side of a callback request class (see the module docs).
    Mixed in before one of the :mod:`couchbase_core.asynchronous` classes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop = self.bucket._loop  # type: ignore[attr-defined]
        self._rows: Deque[Any] = deque()
        self._outcome: Any = None  # _DONE, or the exception, once the request ended
        self._wakeup: Optional["asyncio.Future[None]"] = None
        self._all: Optional["asyncio.Future[None]"] = None
        self._held = False  # reading paused for back-pressure
        self._consumed = False  # iteration was handed out
        self._buffer_all = False  # someone awaits .future: keep every row

    # -- push side: called from the loop by the request class -----------------

    def on_rows(self, rows: List[Any]) -> None:
        self._rows.extend(rows)
        if not self._held and not self._buffer_all and len(self._rows) >= HIGH_WATER:
            op = self._op  # type: ignore[attr-defined]
            if op is not None:
                self._held = True
                op.pause()
        self._wake()

    def on_done(self) -> None:
        self._conclude(_DONE)

    def on_error(self, ex: BaseException) -> None:
        self._conclude(ex)

    def _conclude(self, outcome: Any) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        self._held = False
        all_rows = self._all
        if all_rows is not None and not all_rows.done():
            if outcome is _DONE:
                all_rows.set_result(None)
            else:
                all_rows.set_exception(outcome)
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- pull side --------------------------------------------------------------

    def _begin(self) -> None:
        if not self.started:  # type: ignore[attr-defined]
            self.start()  # type: ignore[attr-defined]

    def _take_held(self) -> None:
        """Read again once the consumer has caught up."""
        if self._held and len(self._rows) < LOW_WATER:
            self._held = False
            op = self._op  # type: ignore[attr-defined]
            if op is not None:
                op.resume()

    def cancel(self) -> None:
        """Abandon the request: its HTTP connection is closed, buffered rows
        are dropped, an ``async for`` over it sees no more rows, and
        :attr:`future` (if it was asked for) is cancelled."""
        if self._outcome is None:
            op = self._op  # type: ignore[attr-defined]
            if op is not None:
                op.cancel()
            self._reported = True  # the request class reports nothing more
            if self._all is not None:
                self._all.cancel()  # whoever awaits the whole result hears of it
            self._conclude(_DONE)
        self._rows.clear()

    def close(self) -> None:
        """The same as :meth:`cancel` (the name the blocking and gevent
        iterators use)."""
        self.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._consumed:
            raise AlreadyQueriedError("this request has already been iterated; create a new one")
        self._consumed = True
        self._begin()
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        rows = self._rows
        try:
            while True:
                if self.bucket.closed:  # type: ignore[attr-defined]
                    raise ObjectDestroyedError("the bucket was closed while its rows were being read")
                if rows:
                    row = rows.popleft()
                    if self._held:
                        self._take_held()
                    yield row
                    continue
                outcome = self._outcome
                if outcome is _DONE:
                    return
                if outcome is not None:
                    raise outcome
                self._wakeup = self._loop.create_future()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None
        finally:
            if self._outcome is None:  # left early: break, an error, cancellation
                self.cancel()

    @property
    def future(self) -> "asyncio.Future[None]":
        """A future that resolves once the whole result is in (every row
        buffered: no back-pressure) or raises the request's error; then
        iterate with a plain ``for``. As 2.x's ``result.future``."""
        if self._all is None:
            self._all = self._loop.create_future()
            self._buffer_all = True
            if self._outcome is not None:
                self._end_all()
            else:
                self._begin()
                if self._held:
                    self._held = False
                    self._op.resume()  # type: ignore[attr-defined]
        return self._all

    def _end_all(self) -> None:
        assert self._all is not None
        if self._outcome is _DONE:
            self._all.set_result(None)
        else:
            self._all.set_exception(self._outcome)

    def __iter__(self) -> Iterator[Any]:
        """The rows, once :attr:`future` has resolved (TypeError before)."""
        if self._outcome is None or self._all is None:
            raise TypeError("await the request's .future before iterating it with a plain for; "
                            "or use async for")
        if self._consumed:
            raise AlreadyQueriedError("this request has already been iterated; create a new one")
        self._consumed = True
        rows, self._rows = self._rows, deque()
        return iter(rows)

    async def execute(self) -> "AioRows":
        """Run the request to completion (rows are discarded); returns self."""
        async for _ in self:
            pass
        return self

    async def get_single_result(self) -> Any:
        """The first row (the rest is read and dropped), or None."""
        first = None
        async for row in self:
            if first is None:
                first = row
        return first


class AView(AioRows, AsyncViewBase):
    """View rows (:class:`~couchbase_core.views.iterator.ViewRow`) for
    ``async for``; ``indexed_rows``, ``errors`` and ``raw`` are set once
    the response has ended. With ``include_docs`` each batch's documents
    are fetched with one ``get_multi`` before its rows are handed out."""

    def _fetch_docs(self) -> None:
        rows = self._pending[0]
        ids = list(dict.fromkeys(r.get("id") for r in rows if r.get("id") is not None))
        if not ids:
            self._docs_arrived({})
            return
        fetch = self.bucket.get_multi(ids, quiet=True)

        def fetched(fut: "asyncio.Future[Any]") -> None:
            if fut.cancelled() or self._reported:
                return
            exc = fut.exception()
            found: Dict[Any, Any] = dict(getattr(exc, "all_results", None) or {}) if exc else dict(fut.result())
            self._docs_arrived(found)

        fetch.add_done_callback(fetched)


class AN1QLRequest(AioRows, AsyncN1QLRequest):  # type: ignore[misc]  # execute() is a coroutine here
    """N1QL rows for ``async for``; ``meta`` (``metrics``, ``errors``...)
    is there once the response has ended. Prepared statements
    (``adhoc = False``) are prepared, and re-prepared once when the plan
    went stale, as in the other flavours."""


class AAnalyticsRequest(AioRows, AsyncAnalyticsRequest):  # type: ignore[misc]  # execute() is a coroutine here
    """Analytics rows for ``async for`` (as :class:`AN1QLRequest`).
    Deferred queries are not available on the asyncio bucket."""


class ASearchRequest(AioRows, AsyncSearchRequest):  # type: ignore[misc]  # execute() is a coroutine here
    """Full-text search hits for ``async for``; ``meta``, ``total_hits``
    and ``facets`` are there once the response has ended."""

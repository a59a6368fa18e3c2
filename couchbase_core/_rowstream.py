"""Rows of a streamed request, buffered for an iterator.

:class:`RowStream` sits between a :class:`~couchbase_core._httpops.RowStreamOp`
(which parses rows as bytes arrive, on the engine's HTTP entry point) and
whoever iterates: the blocking and
gevent buckets wait for rows through their waiting strategy
(``bucket._wait_latch``), so the same iterator code serves both. When the
consumer falls behind, the stream pauses reading the socket, so memory stays
bounded by the buffer, not by the result size. An iterator dropped or killed
mid-way cancels the request.

The stream refers to its bucket weakly and forgets the op factory once the
request is sent: the op (the producer) is reached from the loop, and under
gevent the hub's stack keeps the frames of the callback that woke the
iterating greenlet until the hub next runs, so a strong reference from here
would keep a dropped bucket (and its sockets) alive until then.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from couchbase_core._latch import Latch
from couchbase_core.exceptions import RC, ObjectDestroyedError

__all__ = ["RowStream", "ClosableRows"]

#: Pause reading when this many rows wait; resume below LOW_WATER.
HIGH_WATER = 2000
LOW_WATER = 500


class RowStream:
    """One streamed request's rows and metadata."""

    def __init__(self, bucket: Any, make_op: Callable[["RowStream"], Any], batch_size: int = 500) -> None:
        self._bucket_ref = weakref.ref(bucket)
        self._make_op: Optional[Callable[["RowStream"], Any]] = make_op
        self.batch_size = batch_size
        self._buffer: Deque[Any] = deque()
        self._latch: Optional[Latch] = None
        self._paused = False
        self.op: Any = None
        self.started = False
        self.done = False
        self.meta: Dict[str, Any] = {}
        self.http_status = 0
        self.error: Optional[Tuple[int, str]] = None
        self.rows_received = 0
        self.closed = False  # close() was called: the consumer wants no more rows

    @property
    def bucket(self) -> Any:
        """The bucket the request belongs to (ObjectDestroyedError once it
        is gone: whoever iterates holds it, so only a stream left behind by
        its iterator can outlive it)."""
        bucket = self._bucket_ref()
        if bucket is None:
            raise ObjectDestroyedError("the bucket of this row stream was garbage-collected")
        return bucket

    # -- producer side (loop callbacks) ---------------------------------------

    def rows_ready(self, rows: List[Any]) -> None:
        """Called by the op with newly parsed rows."""
        self._buffer.extend(rows)
        self.rows_received += len(rows)
        if not self._paused and len(self._buffer) >= HIGH_WATER and self.op is not None:
            self._paused = True
            self.op.pause()
        self._wake()

    def finished(self, meta: Dict[str, Any], http_status: int, error: Optional[Tuple[int, str]]) -> None:
        """Called by the op once, when the response ended or failed."""
        self.meta = meta
        self.http_status = http_status
        self.error = error
        self.done = True
        self._wake()

    def _wake(self) -> None:
        latch = self._latch
        if latch is not None and latch.count:
            latch.done()

    # -- consumer side ------------------------------------------------------------

    def close(self) -> None:
        """Stop for good: cancel the request if it is still running (its
        connection is closed, never pooled), drop the buffered rows, and let
        an iterator waiting for rows (in another greenlet) end. Idempotent.

        Iterators do this themselves when they are closed, killed or
        collected; calling it makes the moment deterministic on any
        interpreter (PyPy collects an abandoned iterator later than
        CPython)."""
        self.closed = True
        self._buffer.clear()
        if not self.done:
            if self.op is not None:
                self.op.cancel()
            self.done = True
            self.error = self.error or (0, "abandoned")
        if self._latch is not None:
            # An iterator waits for rows in another greenlet: wake it from
            # the loop (a waiter may only be resumed from there). A closed
            # engine has already failed the request, which woke it.
            engine = self.bucket._engine
            if not engine.closed:
                engine.defer(self._wake)

    def start(self) -> None:
        """Send the request."""
        if self.started:
            return
        self.started = True
        make_op, self._make_op = self._make_op, None
        assert make_op is not None
        self.op = make_op(self)
        self.op.start(self.bucket._engine)

    def check_open(self) -> None:
        """Raise ObjectDestroyedError once the bucket is closed (the rows
        still buffered are dropped and the request is cancelled)."""
        if self.bucket._engine.closed:
            self._buffer.clear()
            if not self.done and self.op is not None:
                self.op.cancel()
            self.done = True
            self.error = (RC.OBJECT_DESTROYED, "the bucket was closed")
            raise ObjectDestroyedError("the bucket was closed while its rows were being read")

    def batches(self) -> Iterator[List[Any]]:
        """Yield lists of raw rows as they arrive (waiting cooperatively),
        until the response ends. Cancels the request if abandoned; raises
        ObjectDestroyedError if the bucket is closed meanwhile (iterators
        also call :meth:`check_open` between the rows of a batch)."""
        self.start()
        buffer = self._buffer
        try:
            while True:
                self.check_open()
                if buffer:
                    count = min(len(buffer), self.batch_size)
                    batch = [buffer.popleft() for _ in range(count)]
                    if self._paused and len(buffer) < LOW_WATER:
                        self._paused = False
                        self.op.resume()
                    yield batch
                    continue
                if self.done:
                    return
                latch = self._latch = Latch(1)
                try:
                    self.bucket._wait_latch(latch)
                finally:
                    self._latch = None
        finally:
            if not self.done and self.op is not None:
                self.op.cancel()
                self.done = True
                self.error = self.error or (0, "abandoned")


class ClosableRows:
    """``close()`` and ``with`` blocks for the blocking and gevent row
    iterators (views, N1QL, analytics, search). The class iterating sets
    ``_current`` to the :class:`RowStream` it reads, and stops (quietly)
    once ``_closed`` or ``_current.closed`` is true."""

    _closed = False
    _current: Optional[RowStream] = None

    def close(self) -> None:
        """Stop reading rows: the request in flight is cancelled (its
        connection is closed, not pooled), buffered rows are dropped, no
        further request is sent (a prepared statement's execute, say), and
        an iteration in progress ends after the row it is at; called from
        another greenlet, it also ends an iteration waiting for rows.
        Idempotent; a request closed before it is iterated yields nothing.

        Breaking out of a ``for`` loop, or a killed greenlet, cancels the
        request too, but only once the iterator is collected: at once on
        CPython, at the next garbage collection on PyPy. ``close()``, or a
        ``with`` block around the loop, frees the connection at a known
        moment on both."""
        self._closed = True
        if self._current is not None:
            self._current.close()

    def __enter__(self) -> "ClosableRows":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def refuse_close(self: Any) -> None:
    """``close()`` of the callback request classes (AsyncBucket's, and
    txcouchbase's on top of them), which inherit the iterators' API but push
    their rows: there is nothing for it to stop quietly, so it says so
    rather than do nothing."""
    raise TypeError("close() stops the iterators of the blocking and gevent buckets; a callback request "
                    "ends with its on_done/on_error (acouchbase's requests have cancel())")

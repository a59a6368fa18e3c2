"""The gevent Bucket: the blocking API, cooperative.

Every call parks the calling greenlet in the hub (a single operation
switches to the hub directly; ``_multi`` calls wait on a
:class:`gevent.hub.Waiter`); the hub runs other greenlets meanwhile, and the
operation's completion (a callback from the hub's loop) switches straight
back to it with the result or the error. A ``_multi`` call of more than
1,024 keys is sent as several batches, and the hub gets a turn between
them, so no call holds it for long. Any number of greenlets may share one Bucket: their requests
go out pipelined on one socket per node, coalesced into as few writes as the
loop allows, and replies are matched back by opaque.

A greenlet killed, or interrupted by ``gevent.Timeout``, while it waits
detaches from its operations first: their replies are still read (the
connection stays in step for everyone else) and then dropped, never handed
to another greenlet. A server that stops answering parks no greenlet past
the operation timeout, which is an engine timer, not a gevent timeout.

``pipeline()`` and ``durability()`` blocks belong to the greenlet that
entered them (each greenlet has its own ``contextvars`` context): other
greenlets, including ones spawned inside the block, are neither batched nor
held back by a greenlet's pipeline, nor made durable by its durability
block. A greenlet killed inside a pipeline block sends nothing it queued.

Lifecycle: a bucket dropped without ``close()`` is collected like any
object (nothing the hub keeps refers back to it) and closes its sockets
when it goes. :meth:`Bucket._get_close_future` (as in 2.x) returns a
:class:`gevent.event.Event` set once the bucket is closed, by ``close()`` or
by being collected; the 2.x ``_dtorcb`` hook, when set, is called then too.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from greenlet import getcurrent

from couchbase_core._bucketbase import BaseBucket, Latch, PingStatus, Pipeline
from couchbase_core._kvops import discard
from couchbase_core.analytics import AnalyticsRequest
from couchbase_core.fulltext import SearchRequest
from couchbase_core.n1ql import N1QLRequest
from couchbase_core.result import raises
from couchbase_core.views.iterator import View
from gcouchbase.iops import IOPS

__all__ = ["Bucket", "Pipeline", "PingStatus", "GView", "GN1QLRequest", "GAnalyticsRequest", "GSearchRequest"]

#: How long a big _multi call pauses between its batches: any positive
#: delay makes the hub run a full loop iteration first.
_BREATH = 1e-6


class GView(View):
    """A view whose rows stream in while the greenlet iterates: the greenlet
    sleeps while it waits for the next batch and the hub reads the response;
    other greenlets run meanwhile. Killing the greenlet (or dropping the
    iterator) cancels the request."""


class GN1QLRequest(N1QLRequest):
    """A N1QL request whose rows stream in while the greenlet iterates (the
    greenlet sleeps between batches; killing it cancels the request)."""


class GAnalyticsRequest(AnalyticsRequest):
    """An analytics request whose rows stream in while the greenlet
    iterates (the greenlet sleeps between batches; killing it cancels the
    request)."""


class GSearchRequest(SearchRequest):
    """A full-text search whose hits stream in while the greenlet iterates
    (the greenlet sleeps between batches; killing it cancels the request)."""


class Bucket(BaseBucket):
    """A bucket for gevent programs; see :class:`couchbase_core.bucket.Bucket`
    for the arguments and ``couchbase_core._bucketbase.BaseBucket`` for the
    operations. The constructor waits (cooperatively) for the bootstrap."""

    _view_class = GView
    _n1ql_class = GN1QLRequest
    _analytics_class = GAnalyticsRequest
    _search_class = GSearchRequest
    #: pipeline() / durability() blocks belong to the calling greenlet.
    _caller = staticmethod(getcurrent)

    #: Events handed out by _get_close_future(), set when the bucket closes.
    #: They refer to nothing, so holding one keeps no bucket alive.
    _close_events: Optional[List[Event]] = None
    #: The 2.x destruction hook: called (with no argument) once the bucket
    #: is closed or collected.
    _dtorcb: Optional[Callable[..., Any]] = None

    def _get_close_future(self) -> Event:
        """A :class:`gevent.event.Event` that is set once this bucket is
        closed, by :meth:`close` or because it was garbage-collected (wait
        on it after dropping the last reference to know the sockets are
        closed). Each call returns a new event; it never refers to the
        bucket."""
        event = Event()
        if self.closed:
            event.set()
        else:
            if self._close_events is None:
                self._close_events = []
            self._close_events.append(event)
        return event

    def close(self) -> None:
        """Close every connection (see
        :meth:`couchbase_core.bucket.Bucket.close`), then set the close
        futures and call ``_dtorcb``."""
        try:
            BaseBucket.close(self)
        finally:
            events, self._close_events = self._close_events, None
            hook, self._dtorcb = self._dtorcb, None
            for event in events or ():
                event.set()
            if hook is not None:
                hook()

    def _make_iops(self, kwargs: Dict[str, Any]) -> IOPS:
        self._hub = get_hub()
        return IOPS(self._hub)

    def _start(self) -> None:
        waiter = Waiter(self._hub)
        self._engine.start(waiter.switch)
        try:
            err = waiter.get()
        except BaseException:
            self._engine.close()
            raise
        if err is not None:
            self._engine.close()
            raise err

    def _run_one(self, op: Any, quiet: bool) -> Any:
        # No Waiter: the engine never completes an operation inside the
        # caller's own call, only from the hub, so the greenlet is always
        # parked in hub.switch() when its completion switches to it.
        op.sink = getcurrent().switch
        self._engine.submit(op)
        try:
            res = self._hub.switch()
        except BaseException:
            # Killed or interrupted: never wake anyone later, and withdraw
            # what was not written yet (a composite starts no further step).
            op.sink = discard
            self._engine.cancel(op)
            raise
        if res.rc and raises(res.rc, quiet):
            raise res._make_exception()
        return res

    def _breathe(self) -> None:
        # A timer, not sleep(0): the hub runs a whole loop iteration (timers,
        # I/O, other greenlets) before this greenlet goes on.
        gevent.sleep(_BREATH)

    def _wait_latch(self, latch: Latch) -> None:
        waiter = Waiter(self._hub)
        latch.on_zero = partial(waiter.switch, None)
        try:
            waiter.get()
        except BaseException:
            latch.on_zero = None
            raise

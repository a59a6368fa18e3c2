"""AsyncBucket driven by hand through a fake IOPS that only implements the
documented contract: it records what the engine asks for, and the test
decides when sockets are reported ready and when timers fire."""

from __future__ import annotations

import select
import time
from typing import Dict, List, Tuple

import pytest

from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.exceptions import NotFoundError, ObjectDestroyedError, TimeoutError
from couchbase_core.iops.base import (
    IOPS,
    LCB_READ_EVENT,
    LCB_WRITE_EVENT,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
    PYCBC_EVSTATE_FREED,
    IOEvent,
    TimerEvent,
)


class RecordingIOEvent(IOEvent):
    """An IOPS's own subclass, as the contract allows."""

    def __init__(self):
        super().__init__()
        self.history: List[Tuple[int, int]] = []


class HandDrivenIOPS(IOPS):
    def __init__(self):
        self.watched: Dict[RecordingIOEvent, int] = {}
        self.timers: Dict[TimerEvent, float] = {}
        self.events: List[RecordingIOEvent] = []
        self.all_timers: List[TimerEvent] = []
        self.calls: List[tuple] = []

    def io_event_factory(self):
        ev = RecordingIOEvent()
        self.events.append(ev)
        return ev

    def timer_event_factory(self):
        t = TimerEvent()
        self.all_timers.append(t)
        return t

    def update_event(self, event, action, flags):
        self.calls.append(("event", action, flags))
        event.history.append((action, flags))
        if action == PYCBC_EVACTION_WATCH:
            self.watched[event] = flags
        elif action == PYCBC_EVACTION_UNWATCH:
            self.watched.pop(event, None)
        elif action == PYCBC_EVACTION_CLEANUP:
            self.watched.pop(event, None)
            event.state = PYCBC_EVSTATE_FREED

    def update_timer(self, timer, action, usecs):
        self.calls.append(("timer", action, usecs))
        if action == PYCBC_EVACTION_WATCH:
            self.timers[timer] = time.monotonic() + usecs / 1e6
        elif action == PYCBC_EVACTION_UNWATCH:
            self.timers.pop(timer, None)
        elif action == PYCBC_EVACTION_CLEANUP:
            self.timers.pop(timer, None)
            timer.state = PYCBC_EVSTATE_FREED

    # -- driving, by hand --------------------------------------------------

    def pump(self, wait: float = 0.05) -> int:
        """Report ready sockets once (via the fast forms), then due timers.
        Returns the number of callbacks made."""
        made = 0
        rd = [e for e, f in self.watched.items() if f & LCB_READ_EVENT]
        wr = [e for e, f in self.watched.items() if f & LCB_WRITE_EVENT]
        if rd or wr:
            r, w, _ = select.select(rd, wr, [], wait)
            for ev in set(r) | set(w):
                if ev not in self.watched:
                    continue
                if ev in r and ev in w:
                    ev.ready_rw()
                elif ev in r:
                    ev.ready_r()
                else:
                    ev.ready_w()
                made += 1
        now = time.monotonic()
        for timer, due in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if due <= now and self.timers.get(timer) == due:
                del self.timers[timer]
                timer.ready(0)
                made += 1
        return made

    def pump_until(self, cond, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "condition never met"
            self.pump()


def _connected_bucket(connstr, **kwargs):
    iops = HandDrivenIOPS()
    b = AsyncBucket(iops, connstr, **kwargs)
    done = []
    b.on_connect(done.append)
    assert done == [], "bootstrap must not complete inside the constructor"
    iops.pump_until(lambda: done)
    assert done == [None]
    return iops, b


def test_bootstrap_goes_through_the_iops(memcached_server):
    iops, b = _connected_bucket(memcached_server.connstr)
    try:
        assert len(iops.events) >= 1
        ev = iops.events[-1]
        assert ev.fileno() >= 0
        # connect: wait for writability; then read for replies.
        assert ev.history[0] == (PYCBC_EVACTION_WATCH, LCB_WRITE_EVENT)
        assert iops.watched[ev] == LCB_READ_EVENT
        assert any(kind == "timer" for kind, _a, _u in iops.calls)
    finally:
        b.close()


def test_operations_complete_only_from_loop_callbacks(memcached_server):
    iops, b = _connected_bucket(memcached_server.connstr)
    try:
        fired = []
        ar = b.upsert("fake:1", {"v": 1})
        ar.callback = lambda res: fired.append(res)
        ar.errback = lambda *a: fired.append(a)
        assert fired == [] and not ar.done
        ev = iops.events[-1]
        # On an idle connection the request is sent at once: no write watch.
        assert iops.watched[ev] == LCB_READ_EVENT
        iops.pump_until(lambda: fired)
        assert fired[0].success and fired[0].cas

        # With a request already in flight, the next ones wait for writability
        # and write interest is dropped once they are flushed.
        first, second = b.upsert("fake:2", 2), b.upsert("fake:3", 3)
        assert iops.watched[ev] & LCB_WRITE_EVENT, "queued requests should wait for writability"
        iops.pump_until(lambda: first.done and second.done)
        assert iops.watched[ev] == LCB_READ_EVENT, "write interest must be dropped once flushed"

        got = []
        ar = b.get("fake:1")
        ar.callback = got.append
        iops.pump_until(lambda: got)
        assert got[0].value == {"v": 1}
    finally:
        b.close()


def test_writes_are_coalesced_into_one_flush(memcached_server):
    iops, b = _connected_bucket(memcached_server.connstr)
    try:
        ev = iops.events[-1]
        before = len(ev.history)
        results = [b.upsert("fake:c%d" % i, i) for i in range(100)]
        watch_calls = [h for h in ev.history[before:] if h[0] == PYCBC_EVACTION_WATCH]
        assert len(watch_calls) == 1, "100 requests must ask for writability once"
        iops.pump_until(lambda: all(r.done for r in results))
        assert all(r[("fake:c%d" % i)].success for i, r in enumerate(results))
    finally:
        b.close()


def test_errback_and_quiet_through_the_fake_loop(memcached_server):
    iops, b = _connected_bucket(memcached_server.connstr)
    try:
        errs = []
        ar = b.get("fake:missing")
        ar.errback = lambda res, et, ev, tb: errs.append((res, et, ev))
        ar.callback = lambda res: errs.append("callback!")
        iops.pump_until(lambda: errs)
        res, et, ev = errs[0]
        assert et is NotFoundError and isinstance(ev, NotFoundError) and res.rc == 0x01
        oks = []
        ar = b.get("fake:missing", quiet=True)
        ar.callback = oks.append
        iops.pump_until(lambda: oks)
        assert oks[0].success is False
    finally:
        b.close()


def test_operation_timeout_fires_through_an_iops_timer(fresh_memcached):
    iops, b = _connected_bucket(fresh_memcached.connstr, operation_timeout=0.2)
    try:
        ev = iops.events[-1]
        errs = []
        # The server never answers, and the socket is never reported: only
        # the IOPS timer can end the operation.
        fresh_memcached.pause()
        ar = b.get("fake:t")
        ar.errback = lambda res, et, exc, tb: errs.append(exc)
        saved = iops.watched.pop(ev)
        start = time.monotonic()
        deadline = start + 30
        while not errs and time.monotonic() < deadline:
            iops.pump(0.01)
        # Only the IOPS timer can end it (the socket is never reported).
        assert errs and isinstance(errs[0], TimeoutError)
        assert time.monotonic() - start >= 0.19  # never early
        iops.watched[ev] = saved
    finally:
        fresh_memcached.resume()
        b.close()


def test_close_frees_every_event_and_timer(memcached_server):
    iops, b = _connected_bucket(memcached_server.connstr)
    errs = []
    ar = b.get("fake:pending")
    ar.errback = lambda res, et, exc, tb: errs.append(exc)
    b.close()
    assert errs == [], "close must not call back inside the caller's stack"
    iops.pump_until(lambda: errs)
    assert isinstance(errs[0], ObjectDestroyedError)
    assert iops.watched == {}
    assert all(ev.state == PYCBC_EVSTATE_FREED for ev in iops.events)
    assert not iops.timers
    with pytest.raises(ObjectDestroyedError):
        b.get("fake:after")


def test_conncb_hook_reports_bootstrap(memcached_server):
    iops = HandDrivenIOPS()
    seen = []
    b = AsyncBucket(iops, memcached_server.connstr)
    b._conncb = seen.append
    iops.pump_until(lambda: seen)
    assert seen == [None] and b.connected
    b.close()


def test_bootstrap_failure_reaches_on_connect():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no one else can take it
        port = s.getsockname()[1]
        iops = HandDrivenIOPS()
        b = AsyncBucket(iops, "memcached://127.0.0.1:%d" % port)
        seen = []
        b.on_connect(seen.append)
        iops.pump_until(lambda: seen)
    from couchbase_core.exceptions import ConnectError

    assert isinstance(seen[0], ConnectError)
    late = []
    b.on_connect(late.append)
    assert late == seen
    b.close()


def test_closing_during_bootstrap_reports_from_the_loop(memcached_server):
    iops = HandDrivenIOPS()
    b = AsyncBucket(iops, memcached_server.connstr)
    seen = []
    b.on_connect(seen.append)
    b.close()
    assert seen == [], "close must not call back inside the caller's stack"
    iops.pump_until(lambda: seen)
    assert isinstance(seen[0], ObjectDestroyedError)
    assert iops.watched == {}

"""Every shipped IOPS (select, gevent, asyncio, asyncio on uvloop) passes the
shared IOPS contract suite."""

from __future__ import annotations

import threading
import time

import gevent
import pytest

from couchbase_core.iops.base import IOPS as BaseIOPS
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.iops.testkit import IOPSContract
from gcouchbase.iops import IOPS as GeventIOPS

# The contract's waits end as soon as their condition holds; their bound is
# only a guard against a hang, so it is stretched for a loaded machine.
GUARD = 30.0


class TestSelectIOPS(IOPSContract):
    def make_iops(self):
        return SelectIOPS()

    def run_loop(self, iops, until, timeout):
        deadline = time.monotonic() + max(timeout, GUARD)
        while not until() and time.monotonic() < deadline:
            iops.run_once(0.01)

    def close_iops(self, iops):
        iops.close()


class TestGeventIOPS(IOPSContract):
    def make_iops(self):
        return GeventIOPS()

    def run_loop(self, iops, until, timeout):
        deadline = time.monotonic() + max(timeout, GUARD)
        while not until() and time.monotonic() < deadline:
            gevent.sleep(0.001)


class _AsyncioContract(IOPSContract):
    """The asyncio IOPS on a loop of its own, run in slices by the kit."""

    def new_loop(self):
        import asyncio

        return asyncio.new_event_loop()

    def make_iops(self):
        from acouchbase.asyncio_iops import IOPS as AsyncioIOPS

        return AsyncioIOPS(self.new_loop())

    def run_loop(self, iops, until, timeout):
        import asyncio

        deadline = time.monotonic() + max(timeout, GUARD)
        while not until() and time.monotonic() < deadline:
            iops.loop.run_until_complete(asyncio.sleep(0.001))

    def close_iops(self, iops):
        iops.loop.close()


class TestAsyncioIOPS(_AsyncioContract):
    pass


class TestAsyncioIOPSOnUvloop(_AsyncioContract):
    def new_loop(self):
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
        return uvloop.new_event_loop()


def test_base_iops_methods_must_be_implemented():
    iops = BaseIOPS()
    with pytest.raises(NotImplementedError):
        iops.update_event(iops.io_event_factory(), 1, 2)
    with pytest.raises(NotImplementedError):
        iops.update_timer(iops.timer_event_factory(), 1, 0)


def test_select_start_watching_runs_until_stop_watching():
    iops = SelectIOPS()
    timer = iops.timer_event_factory()
    stamps = []

    def fire(_flags):
        stamps.append(time.monotonic())
        if len(stamps) < 3:
            iops.update_timer(timer, 1, 10_000)
        else:
            iops.stop_watching()

    timer._handler = fire
    iops.update_timer(timer, 1, 10_000)
    iops.start_watching()
    assert len(stamps) == 3
    iops.close()


def test_select_start_watching_returns_when_nothing_is_watched():
    iops = SelectIOPS()
    loop = threading.Thread(target=iops.start_watching, daemon=True)
    loop.start()
    loop.join(30)  # a guard against a hang only: it returns at once
    assert not loop.is_alive(), "start_watching() kept running with nothing to watch"
    iops.close()


def test_select_survives_a_raising_callback(caplog):
    iops = SelectIOPS()
    bad = iops.timer_event_factory()
    good = iops.timer_event_factory()
    seen = []

    def boom(_flags):
        raise RuntimeError("boom")

    bad._handler = boom
    good._handler = seen.append
    iops.update_timer(bad, 1, 0)
    iops.update_timer(good, 1, 1000)
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        iops.run_once(0.01)
    assert seen == [0]
    assert "boom" in caplog.text
    iops.close()


class TestTwistedIOPS(IOPSContract):
    """The Twisted reactor IOPS, turned with ``reactor.iterate()`` (the
    global reactor cannot be restarted, so no test runs it)."""

    def make_iops(self):
        from txcouchbase.iops import IOPS as TwistedIOPS

        return TwistedIOPS()

    def run_loop(self, iops, until, timeout):
        deadline = time.monotonic() + max(timeout, GUARD)
        while not until() and time.monotonic() < deadline:
            iops.reactor.iterate(0.001)

"""A reusable test suite for IOPS implementations.

Anyone writing an IOPS for another event loop can check it against the
contract of :mod:`couchbase_core.iops.base` with pytest::

    from couchbase_core.iops.testkit import IOPSContract

    class TestMyLoopIOPS(IOPSContract):
        def make_iops(self):
            return MyLoopIOPS()

        def run_loop(self, iops, until, timeout):
            # run the loop until until() is true or timeout seconds passed
            ...

The suite drives the IOPS the way the engine does: it creates events with
the factories, sets ``event.fd``, installs a callback in ``event._handler``
(the engine's hook, called by :meth:`Event.ready` and the ``ready_*``
forms), and watches socket pairs and timers.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, List, Tuple

from couchbase_core.iops.base import (
    LCB_READ_EVENT,
    LCB_RW_EVENT,
    LCB_WRITE_EVENT,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
    PYCBC_EVSTATE_FREED,
    PYCBC_EVSTATE_INITIALIZED,
    IOEvent,
    TimerEvent,
)

__all__ = ["IOPSContract"]


class IOPSContract:
    """Mixin with the contract tests; see the module docs."""

    #: Seconds the level-triggered and "nothing happens" checks observe.
    quiet_period = 0.15

    # -- to implement ------------------------------------------------------

    def make_iops(self) -> Any:
        """Return a fresh IOPS."""
        raise NotImplementedError

    def run_loop(self, iops: Any, until: Callable[[], bool], timeout: float) -> None:
        """Run the loop until ``until()`` is true or ``timeout`` passed."""
        raise NotImplementedError

    def close_iops(self, iops: Any) -> None:
        """Release the IOPS after a test (optional)."""

    # -- helpers -------------------------------------------------------------

    def _socket_event(self, iops: Any) -> Tuple[IOEvent, socket.socket, socket.socket, List[int]]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        event = iops.io_event_factory()
        event.fd = ours.fileno()
        seen: List[int] = []
        event._handler = seen.append
        return event, ours, theirs, seen

    def _observe(self, iops: Any, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.run_loop(iops, lambda: time.monotonic() >= deadline, seconds + 1.0)

    # -- events --------------------------------------------------------------

    def test_factories_return_initialised_events(self) -> None:
        iops = self.make_iops()
        try:
            io = iops.io_event_factory()
            timer = iops.timer_event_factory()
            assert isinstance(io, IOEvent) and isinstance(timer, TimerEvent)
            assert io.state == PYCBC_EVSTATE_INITIALIZED and timer.state == PYCBC_EVSTATE_INITIALIZED
            assert io.fd == -1 and io.fileno() == -1
            io.fd = 7
            assert io.fileno() == 7
        finally:
            self.close_iops(iops)

    def test_read_watch_fires_when_data_arrives(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            self._observe(iops, 0.05)
            assert seen == [], "no data yet, yet the read watch fired"
            theirs.send(b"x")
            self.run_loop(iops, lambda: bool(seen), 5)
            assert seen and all(flags & LCB_READ_EVENT for flags in seen)
            assert not any(flags & LCB_WRITE_EVENT for flags in seen)
        finally:
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_read_watch_is_level_triggered(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            theirs.send(b"unread")
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            self.run_loop(iops, lambda: len(seen) >= 3, 5)
            assert len(seen) >= 3, "a readable socket left unread must keep firing (level-triggered)"
            ours.recv(100)
            self._observe(iops, 0.02)
            count = len(seen)
            self._observe(iops, self.quiet_period)
            assert len(seen) == count, "the watch fired after the data was consumed"
        finally:
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_write_watch_fires_on_writable_socket(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_WRITE_EVENT)
            self.run_loop(iops, lambda: bool(seen), 5)
            assert seen and all(flags & LCB_WRITE_EVENT for flags in seen)
        finally:
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_rw_watch_reports_both(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            theirs.send(b"x")
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_RW_EVENT)
            combined = 0
            self.run_loop(iops, lambda: len(seen) >= 2, 5)
            for flags in seen:
                combined |= flags
            assert combined == LCB_RW_EVENT
        finally:
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_new_mask_replaces_the_old_one(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            theirs.send(b"x")
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_RW_EVENT)
            self.run_loop(iops, lambda: bool(seen), 5)
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_WRITE_EVENT)
            del seen[:]
            self._observe(iops, self.quiet_period)
            assert seen, "the write watch stopped"
            assert not any(flags & LCB_READ_EVENT for flags in seen), "READ was delivered after it was dropped"
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            del seen[:]
            self._observe(iops, self.quiet_period)
            assert seen and not any(flags & LCB_WRITE_EVENT for flags in seen)
        finally:
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_unwatch_stops_delivery_and_watch_resumes_it(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            theirs.send(b"x")
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            self.run_loop(iops, lambda: bool(seen), 5)
            iops.update_event(event, PYCBC_EVACTION_UNWATCH, 0)
            del seen[:]
            self._observe(iops, self.quiet_period)
            assert seen == []
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            self.run_loop(iops, lambda: bool(seen), 5)
            assert seen
        finally:
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_cleanup_frees_the_event(self) -> None:
        iops = self.make_iops()
        event, ours, theirs, seen = self._socket_event(iops)
        try:
            theirs.send(b"x")
            iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            self.run_loop(iops, lambda: bool(seen), 5)
            iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            assert event.state == PYCBC_EVSTATE_FREED
            del seen[:]
            self._observe(iops, self.quiet_period)
            assert seen == []
        finally:
            ours.close()
            theirs.close()
            self.close_iops(iops)

    def test_callback_may_unwatch_another_event(self) -> None:
        iops = self.make_iops()
        first, a1, b1, seen1 = self._socket_event(iops)
        second, a2, b2, seen2 = self._socket_event(iops)
        try:
            b1.send(b"x")
            b2.send(b"x")

            def on_first(flags: int) -> None:
                seen1.append(flags)
                iops.update_event(second, PYCBC_EVACTION_UNWATCH, 0)

            first._handler = on_first
            iops.update_event(second, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            iops.update_event(first, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            self.run_loop(iops, lambda: bool(seen1), 5)
            del seen2[:]
            self._observe(iops, self.quiet_period)
            assert seen1 and seen2 == []
        finally:
            for ev in (first, second):
                iops.update_event(ev, PYCBC_EVACTION_CLEANUP, 0)
            for s in (a1, b1, a2, b2):
                s.close()
            self.close_iops(iops)

    # -- timers --------------------------------------------------------------

    def _timer(self, iops: Any) -> Tuple[TimerEvent, List[float]]:
        timer = iops.timer_event_factory()
        fired: List[float] = []
        timer._handler = lambda flags: fired.append(time.monotonic())
        return timer, fired

    def test_timer_fires_once_after_its_delay(self) -> None:
        iops = self.make_iops()
        timer, fired = self._timer(iops)
        try:
            start = time.monotonic()
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 50_000)
            self.run_loop(iops, lambda: bool(fired), 5)
            assert len(fired) == 1
            assert fired[0] - start >= 0.045, "fired early"
            self._observe(iops, self.quiet_period)
            assert len(fired) == 1, "a timer is one-shot"
        finally:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

    def test_timer_delay_counts_from_the_arming_call(self) -> None:
        # The loop has not run for a while (the process was busy or blocked):
        # a delay must still count from update_timer, not from the loop's
        # last idea of the current time.
        iops = self.make_iops()
        timer, fired = self._timer(iops)
        try:
            self._observe(iops, 0.01)
            time.sleep(0.3)
            start = time.monotonic()
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 200_000)
            self.run_loop(iops, lambda: bool(fired), 5)
            assert len(fired) == 1
            assert fired[0] - start >= 0.19, "the timer fired early: its delay was not measured from now"
        finally:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

    def test_timer_zero_delay_fires_promptly(self) -> None:
        iops = self.make_iops()
        timer, fired = self._timer(iops)
        try:
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 0)
            self.run_loop(iops, lambda: bool(fired), 5)
            assert len(fired) == 1
        finally:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

    def test_rearming_moves_the_timer(self) -> None:
        iops = self.make_iops()
        timer, fired = self._timer(iops)
        try:
            start = time.monotonic()
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 30_000)
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 200_000)
            self.run_loop(iops, lambda: bool(fired), 5)
            assert len(fired) == 1
            assert fired[0] - start >= 0.19, "the first arming was not replaced"
        finally:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

    def test_unwatch_disarms_the_timer(self) -> None:
        iops = self.make_iops()
        timer, fired = self._timer(iops)
        try:
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 20_000)
            iops.update_timer(timer, PYCBC_EVACTION_UNWATCH, 0)
            self._observe(iops, 0.1)
            assert fired == []
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 10_000)
            self.run_loop(iops, lambda: bool(fired), 5)
            assert len(fired) == 1, "a disarmed timer can be armed again"
        finally:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

    def test_timer_callback_may_rearm_itself(self) -> None:
        iops = self.make_iops()
        timer = iops.timer_event_factory()
        fired: List[int] = []

        def again(_flags: int) -> None:
            fired.append(1)
            if len(fired) < 3:
                iops.update_timer(timer, PYCBC_EVACTION_WATCH, 5_000)

        timer._handler = again
        try:
            iops.update_timer(timer, PYCBC_EVACTION_WATCH, 5_000)
            self.run_loop(iops, lambda: len(fired) >= 3, 5)
            self._observe(iops, 0.05)
            assert len(fired) == 3
        finally:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

    def test_timers_fire_in_deadline_order(self) -> None:
        iops = self.make_iops()
        order: List[str] = []
        timers = []
        try:
            for name, usecs in (("late", 60_000), ("early", 10_000), ("middle", 30_000)):
                t = iops.timer_event_factory()
                t._handler = (lambda n: lambda flags: order.append(n))(name)
                iops.update_timer(t, PYCBC_EVACTION_WATCH, usecs)
                timers.append(t)
            self.run_loop(iops, lambda: len(order) == 3, 5)
            assert order == ["early", "middle", "late"]
        finally:
            for t in timers:
                iops.update_timer(t, PYCBC_EVACTION_CLEANUP, 0)
            self.close_iops(iops)

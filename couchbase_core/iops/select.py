"""A selectors-based IOPS that runs its own loop.

The blocking :class:`couchbase_core.bucket.Bucket` owns one of these: to wait
for its operations it calls :meth:`SelectIOPS.start_watching`, which runs the
loop until the engine calls :meth:`SelectIOPS.stop_watching`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import time
from typing import Dict, List, Optional, Tuple

from couchbase_core.iops.base import (
    IOPS,
    LCB_READ_EVENT,
    LCB_WRITE_EVENT,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_RESUME,
    PYCBC_EVACTION_SUSPEND,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
    PYCBC_EVSTATE_ACTIVE,
    PYCBC_EVSTATE_FREED,
    PYCBC_EVSTATE_SUSPENDED,
    IOEvent,
    TimerEvent,
)

__all__ = ["SelectIOPS"]

log = logging.getLogger(__name__)

#: The longest single wait (seconds): epoll/poll take at most 2**31 - 1 ms;
#: a timer further away is reached in several waits.
_MAX_WAIT = 86400.0


def _to_selector_mask(flags: int) -> int:
    mask = 0
    if flags & LCB_READ_EVENT:
        mask |= selectors.EVENT_READ
    if flags & LCB_WRITE_EVENT:
        mask |= selectors.EVENT_WRITE
    return mask


class SelectIOPS(IOPS):
    """An IOPS on :mod:`selectors` (epoll/kqueue/poll/select, whatever is best).

    Level-triggered socket watches and one-shot timers, as the contract in
    :mod:`couchbase_core.iops.base` says. ``start_watching()`` runs the loop
    until ``stop_watching()`` is called or nothing is left to wait for.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._masks: Dict[int, int] = {}  # fd -> selector mask currently registered
        self._events: Dict[int, IOEvent] = {}  # fd -> event
        self._timers: List[Tuple[float, int, TimerEvent]] = []  # heap
        self._timer_seq = itertools.count()
        self._armed: Dict[int, int] = {}  # id(timer) -> seq of its live heap entry
        self._running = False
        self._pid = os.getpid()

    # -- sockets ------------------------------------------------------------

    def update_event(self, event: IOEvent, action: int, flags: int) -> None:
        if action == PYCBC_EVACTION_SUSPEND:
            action = PYCBC_EVACTION_UNWATCH
        elif action == PYCBC_EVACTION_RESUME:
            action = PYCBC_EVACTION_WATCH
        fd = event.fileno()
        if action == PYCBC_EVACTION_WATCH:
            mask = _to_selector_mask(flags)
            if not mask:
                self._unregister(fd)
                event.state = PYCBC_EVSTATE_SUSPENDED
                return
            current = self._masks.get(fd)
            if current is None:
                self._selector.register(fd, mask, event)
            elif current != mask or self._events.get(fd) is not event:
                self._selector.modify(fd, mask, event)
            self._masks[fd] = mask
            self._events[fd] = event
            event.state = PYCBC_EVSTATE_ACTIVE
        elif action == PYCBC_EVACTION_UNWATCH:
            if self._events.get(fd) is event:
                self._unregister(fd)
            event.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            if self._events.get(fd) is event:
                self._unregister(fd)
            event.state = PYCBC_EVSTATE_FREED
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    def _unregister(self, fd: int) -> None:
        if self._masks.pop(fd, None) is not None:
            self._events.pop(fd, None)
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    # -- timers ---------------------------------------------------------------

    def update_timer(self, timer: TimerEvent, action: int, usecs: int) -> None:
        if action == PYCBC_EVACTION_WATCH:
            seq = next(self._timer_seq)
            deadline = time.monotonic() + max(0, usecs) / 1e6
            self._armed[id(timer)] = seq
            heapq.heappush(self._timers, (deadline, seq, timer))
            timer.state = PYCBC_EVSTATE_ACTIVE
        elif action in (PYCBC_EVACTION_UNWATCH, PYCBC_EVACTION_SUSPEND):
            self._armed.pop(id(timer), None)
            timer.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            self._armed.pop(id(timer), None)
            timer.state = PYCBC_EVSTATE_FREED
        elif action == PYCBC_EVACTION_RESUME:
            pass
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    def _next_timeout(self) -> Optional[float]:
        timers = self._timers
        armed = self._armed
        while timers:
            deadline, seq, timer = timers[0]
            if armed.get(id(timer)) != seq:
                heapq.heappop(timers)  # disarmed or re-armed since
                continue
            return max(0.0, deadline - time.monotonic())
        return None

    def _fire_timers(self) -> None:
        timers = self._timers
        armed = self._armed
        now = time.monotonic()
        due = []
        while timers and timers[0][0] <= now:
            _deadline, seq, timer = heapq.heappop(timers)
            if armed.get(id(timer)) == seq:
                del armed[id(timer)]
                timer.state = PYCBC_EVSTATE_SUSPENDED
                due.append(timer)
        for timer in due:
            self._call(timer.ready, 0)

    # -- the loop ---------------------------------------------------------------

    @staticmethod
    def _call(fn, arg: int) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(arg)
        except Exception:  # the loop must survive a misbehaving callback
            log.exception("IOPS callback %r raised", fn)

    def run_once(self, timeout: Optional[float] = None) -> bool:
        """Wait for and dispatch one round of events. Returns False when there
        was nothing to wait for (no watched socket and no armed timer)."""
        wait = self._next_timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        if wait is not None and wait > _MAX_WAIT:
            wait = _MAX_WAIT  # a far timer: wake up early and look again (select/epoll refuse longer waits)
        if wait is None and not self._masks:
            return False
        if self._masks:
            ready = self._selector.select(wait)
        else:
            ready = []
            if wait:
                time.sleep(wait)
        for key, mask in ready:
            event: IOEvent = key.data
            # An earlier callback of this round may have unwatched the socket
            # or narrowed its mask: deliver only what is still wanted.
            if self._events.get(key.fd) is not event:
                continue
            mask &= self._masks.get(key.fd, 0)
            flags = 0
            if mask & selectors.EVENT_READ:
                flags |= LCB_READ_EVENT
            if mask & selectors.EVENT_WRITE:
                flags |= LCB_WRITE_EVENT
            if flags:
                self._call(event.ready, flags)
        self._fire_timers()
        return True

    def start_watching(self) -> None:
        """Run the loop until :meth:`stop_watching` is called, or until there is
        nothing left to watch (which would otherwise block forever)."""
        self._running = True
        try:
            while self._running:
                if not self.run_once():
                    break
        finally:
            self._running = False

    def stop_watching(self) -> None:
        self._running = False

    # -- forks ------------------------------------------------------------------

    def after_fork(self) -> None:
        """In the child of a fork: forget every event and timer from before
        it. The inherited selector (an epoll or kqueue fd shared with the
        parent) is never unregistered from, only closed (the child's copy);
        a new one takes its place. Idempotent within a process."""
        pid = os.getpid()
        if pid == self._pid:
            return
        self._pid = pid
        old = self._selector
        self._selector = selectors.DefaultSelector()
        try:
            old.close()  # closes our descriptor only; no unregister calls
        except OSError:
            pass
        self._masks.clear()
        self._events.clear()
        self._timers.clear()
        self._armed.clear()
        self._running = False

    def close(self) -> None:
        """Release the selector."""
        self._selector.close()
        self._masks.clear()
        self._events.clear()
        self._timers.clear()
        self._armed.clear()

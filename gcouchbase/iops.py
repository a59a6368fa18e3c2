"""An IOPS on the gevent hub's loop (``loop.io`` and ``loop.timer`` watchers).

Each socket gets two watchers, one for reading and one for writing, started
and stopped independently as the engine changes its mask: libev/libuv io
watchers cannot change their events while active, and the engine flips
write interest on and off at every flush while reading stays armed. The
read watcher does not keep the loop alive on its own (``ref=False``): an
idle bucket does not stop ``gevent.wait()`` from returning, while a pending
operation does, through its armed timeout timer.

Callbacks run in the hub greenlet, which is what lets completed operations
switch straight to the greenlets waiting for them.

Forks: libev (gevent's default loop) notices the fork at its next iteration
(``EVFLAG_FORKCHECK``; ``gevent.reinit()``, which the monkey-patched
``os.fork`` calls, does the same at once), replaces its epoll fd and re-arms
every watcher still active, so inherited socket watchers would go on firing
in the child, for sockets the parent is using. :meth:`IOPS.after_fork` stops
them first (on libev stopping a watcher is bookkeeping only; nothing reaches
the shared epoll fd). Timers are forgotten the same way; the engine makes
new ones.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, List, Optional

import gevent
from gevent.hub import get_hub

from couchbase_core.iops import base
from couchbase_core.iops.base import (
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
)

__all__ = ["IOPS"]

_EV_READ = 1  # libev / libuv readiness bits as gevent's loop.io takes them
_EV_WRITE = 2


class _Watchers:
    """The read and write watchers of one socket."""

    __slots__ = ("reader", "writer", "flags")

    def __init__(self, loop: Any, fd: int) -> None:
        self.reader = loop.io(fd, _EV_READ, ref=False)
        self.writer = loop.io(fd, _EV_WRITE)
        self.flags = 0


class IOPS(base.IOPS):
    """Drives the engine from the gevent hub of the current thread (or of
    the ``hub`` given)."""

    def __init__(self, hub: Any = None) -> None:
        self.hub = hub if hub is not None else get_hub()
        self.loop = self.hub.loop
        self._pid = os.getpid()
        # Events holding watchers, for after_fork().
        self._io: "weakref.WeakSet[base.IOEvent]" = weakref.WeakSet()
        self._timed: "weakref.WeakSet[base.TimerEvent]" = weakref.WeakSet()
        self._forgotten: List[Any] = []

    def update_event(self, event: base.IOEvent, action: int, flags: int) -> None:
        if action == PYCBC_EVACTION_SUSPEND:
            action = PYCBC_EVACTION_UNWATCH
        elif action == PYCBC_EVACTION_RESUME:
            action = PYCBC_EVACTION_WATCH
        watchers = event.pydata
        if action == PYCBC_EVACTION_WATCH:
            if watchers is None:
                watchers = event.pydata = _Watchers(self.loop, event.fileno())
                self._io.add(event)
            old = watchers.flags
            if (flags ^ old) & LCB_READ_EVENT:
                if flags & LCB_READ_EVENT:
                    watchers.reader.start(event.ready_r)
                else:
                    watchers.reader.stop()
            if (flags ^ old) & LCB_WRITE_EVENT:
                if flags & LCB_WRITE_EVENT:
                    watchers.writer.start(event.ready_w)
                else:
                    watchers.writer.stop()
            watchers.flags = flags & (LCB_READ_EVENT | LCB_WRITE_EVENT)
            event.state = PYCBC_EVSTATE_ACTIVE if watchers.flags else PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_UNWATCH:
            if watchers is not None:
                watchers.reader.stop()
                watchers.writer.stop()
                watchers.flags = 0
            event.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            if watchers is not None:
                for w in (watchers.reader, watchers.writer):
                    w.stop()
                    w.close()
                event.pydata = None
            event.state = PYCBC_EVSTATE_FREED
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    def update_timer(self, timer: base.TimerEvent, action: int, usecs: int) -> None:
        watcher = timer.pydata
        if watcher is not None:
            watcher.stop()
            watcher.close()
            timer.pydata = None
        if action in (PYCBC_EVACTION_WATCH, PYCBC_EVACTION_RESUME):
            # The loop caches "now" at each iteration; if the hub has not run
            # for a while (the process blocked), a timer started from the stale
            # value would fire early. Delays count from this call.
            self.loop.update_now()
            watcher = timer.pydata = self.loop.timer(max(0, usecs) / 1e6)
            watcher.start(self._fire, timer, watcher)
            self._timed.add(timer)
            timer.state = PYCBC_EVSTATE_ACTIVE
        elif action in (PYCBC_EVACTION_UNWATCH, PYCBC_EVACTION_SUSPEND):
            timer.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            timer.state = PYCBC_EVSTATE_FREED
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    def after_fork(self) -> None:
        """In the child of a fork: stop and forget every watcher made before
        it (see the module documentation). Idempotent within a process."""
        pid = os.getpid()
        if pid == self._pid:
            return
        self._pid = pid
        watchers: List[Any] = []
        for event in list(self._io):
            pair = event.pydata
            if pair is not None:
                watchers += (pair.reader, pair.writer)
                event.pydata = None
            event.state = PYCBC_EVSTATE_FREED
        for timer in list(self._timed):
            if timer.pydata is not None:
                watchers.append(timer.pydata)
                timer.pydata = None
            timer.state = PYCBC_EVSTATE_FREED
        self._io = weakref.WeakSet()
        self._timed = weakref.WeakSet()
        if "libev" in type(self.loop).__module__:
            for watcher in watchers:
                watcher.stop()
        else:
            # libuv stops and frees poll handles with epoll_ctl on the loop's
            # fd, which is the parent's until gevent.reinit() has run (the
            # monkey-patched os.fork runs it right after this hook): stop them
            # from the loop, and keep them alive until then.
            self._forgotten = watchers

            def stop_forgotten() -> None:
                for watcher in self._forgotten:
                    watcher.stop()

            self.loop.run_callback(stop_forgotten)

    @staticmethod
    def _fire(timer: base.TimerEvent, watcher: Any) -> None:
        if timer.pydata is watcher:
            timer.pydata = None
            watcher.close()
            timer.state = PYCBC_EVSTATE_SUSPENDED
        timer.ready(0)

    def resolve(self, host: str, port: int, callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Resolve ``host`` with gevent's cooperative resolver; call
        ``callback(addrinfo, error)`` from the hub."""
        loop = self.loop

        def lookup() -> None:
            import socket as std_socket

            from gevent import socket as gsocket

            try:
                infos = gsocket.getaddrinfo(host, port, 0, std_socket.SOCK_STREAM)
                error: Optional[BaseException] = None
            except Exception as exc:  # noqa: BLE001 - reported to the engine
                infos, error = None, exc
            loop.run_callback(callback, infos, error)

        gevent.spawn(lookup)

"""An IOPS on an asyncio event loop (the stock loops and uvloop alike).

asyncio's ``add_reader``/``add_writer`` are level-triggered, which is what
the IOPS contract asks for (:mod:`couchbase_core.iops.base`), so a socket
watch maps onto them directly: the engine's mask is kept in
``event.pydata`` and only the direction that changed is added or removed.
Timers are ``loop.call_later`` handles; re-arming cancels the previous one.

Two things a loop does not do for us:

* uvloop computes ``call_later`` deadlines from libuv's cached "now", which
  is stale when the loop has not turned for a while (the process was busy):
  such a timer would fire early. The contract counts a delay from the
  arming call, so the deadline is computed here, from ``loop.time()``
  (which refreshes the clock), and armed with ``call_at``.
* A loop that has been closed refuses new watches and timers with
  RuntimeError. A bucket closed (or collected) after its loop is gone must
  still be able to let go of its sockets, so on a closed loop watches and
  timers are simply dropped: nothing would ever run them anyway.

Forks: an asyncio loop does not survive ``os.fork()`` (the child's selector
is the parent's epoll object), so this IOPS has no ``after_fork``: a bucket
created before a fork raises ForkError in the child. Create the bucket (and
the loop) in the child instead.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Optional

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

_RW = LCB_READ_EVENT | LCB_WRITE_EVENT


class IOPS(base.IOPS):
    """Drives the engine from an asyncio event loop.

    Args:
        evloop: the loop to use (default: the running loop, else the
            current thread's event loop).
    """

    def __init__(self, evloop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        if evloop is None:
            evloop = current_loop()
        self.loop = evloop

    # -- sockets ------------------------------------------------------------

    def update_event(self, event: base.IOEvent, action: int, flags: int) -> None:
        if action in (PYCBC_EVACTION_WATCH, PYCBC_EVACTION_RESUME):
            wanted = flags & _RW
        elif action in (PYCBC_EVACTION_UNWATCH, PYCBC_EVACTION_SUSPEND, PYCBC_EVACTION_CLEANUP):
            wanted = 0
        else:
            raise ValueError("unknown IOPS action %r" % (action,))
        watching = event.pydata or 0
        changed = watching ^ wanted
        loop = self.loop
        if changed and not loop.is_closed():
            fd = event.fileno()
            if changed & LCB_READ_EVENT:
                if wanted & LCB_READ_EVENT:
                    loop.add_reader(fd, event.ready_r)
                else:
                    loop.remove_reader(fd)
            if changed & LCB_WRITE_EVENT:
                if wanted & LCB_WRITE_EVENT:
                    loop.add_writer(fd, event.ready_w)
                else:
                    loop.remove_writer(fd)
        event.pydata = wanted
        if action == PYCBC_EVACTION_CLEANUP:
            event.state = PYCBC_EVSTATE_FREED
        else:
            event.state = PYCBC_EVSTATE_ACTIVE if wanted else PYCBC_EVSTATE_SUSPENDED

    # -- timers -------------------------------------------------------------

    def update_timer(self, timer: base.TimerEvent, action: int, usecs: int) -> None:
        handle = timer.pydata
        if handle is not None:
            handle.cancel()
            timer.pydata = None
        if action in (PYCBC_EVACTION_WATCH, PYCBC_EVACTION_RESUME):
            loop = self.loop
            timer.state = PYCBC_EVSTATE_ACTIVE
            if loop.is_closed():
                return  # nothing will ever run it (see the module docs)
            # loop.time() refreshes the loop's clock: the delay counts from now.
            timer.pydata = loop.call_at(loop.time() + max(0, usecs) / 1e6, _fire, timer)
        elif action in (PYCBC_EVACTION_UNWATCH, PYCBC_EVACTION_SUSPEND):
            timer.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            timer.state = PYCBC_EVSTATE_FREED
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    # -- name resolution -------------------------------------------------------

    def resolve(self, host: str, port: int, callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Resolve ``host`` with ``loop.getaddrinfo`` (the loop's resolver,
        which does not block the loop); ``callback(addrinfo, error)`` runs
        from the loop."""
        lookup = asyncio.ensure_future(self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), loop=self.loop)

        def done(fut: "asyncio.Future[Any]") -> None:
            if fut.cancelled():
                callback(None, OSError("the name lookup of %r was cancelled" % (host,)))
                return
            exc = fut.exception()
            if exc is not None:
                callback(None, exc)
            else:
                callback(fut.result(), None)

        lookup.add_done_callback(done)


def _fire(timer: base.TimerEvent) -> None:
    timer.pydata = None
    timer.state = PYCBC_EVSTATE_SUSPENDED
    timer.ready(0)


def current_loop() -> asyncio.AbstractEventLoop:
    """The running loop, else the current thread's event loop (creating
    one, as ``asyncio.get_event_loop()`` did, when there is none)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    policy = asyncio.get_event_loop_policy()
    try:
        return policy.get_event_loop()
    except RuntimeError:  # a thread without a loop
        loop = policy.new_event_loop()
        policy.set_event_loop(loop)
        return loop

"""The I/O plug-in interface (IOPS): how the engine borrows an event loop.

The engine (``couchbase_core._engine``) never blocks and never owns a loop.
Everything it needs from the outside world is in this module: it asks an
:class:`IOPS` object for *events* (one per socket, plus timers) and tells it
what to watch; the IOPS's loop calls the events back when something happened.
Any event loop can drive the engine by implementing the six methods of
:class:`IOPS`. The project ships two: :class:`couchbase_core.iops.select.SelectIOPS`
(selectors; used by the blocking Bucket) and :class:`gcouchbase.iops.IOPS`
(the gevent hub). :mod:`couchbase_core.iops.testkit` is a reusable test suite
for new implementations.

The contract
------------

Events
    :meth:`IOPS.io_event_factory` and :meth:`IOPS.timer_event_factory` return
    new :class:`IOEvent` / :class:`TimerEvent` objects. An IOPS may return
    subclasses to keep its own state, but must let the base ``__init__`` run;
    ``event.pydata`` is a free slot for the IOPS's own use. The engine sets
    ``IOEvent.fd`` before the first :meth:`IOPS.update_event` call.

Watching sockets — :meth:`IOPS.update_event`\\ ``(event, action, flags)``
    * ``PYCBC_EVACTION_WATCH``: watch ``event.fileno()`` for ``flags``, a mask
      of ``LCB_READ_EVENT`` (0x02) and ``LCB_WRITE_EVENT`` (0x04). It
      *replaces* the previous mask; a later WATCH with different flags
      changes what is watched. Watches are **level-triggered**: while the
      socket stays readable (or writable) and the watch is armed, the loop
      keeps calling the event back, on every iteration, until the engine
      changes the mask or unwatches.
    * ``PYCBC_EVACTION_UNWATCH``: stop watching (the event may be watched
      again later).
    * ``PYCBC_EVACTION_CLEANUP``: forget the event for good; release every
      resource the IOPS holds for it and set its ``state`` to
      ``PYCBC_EVSTATE_FREED``. The engine closes the socket afterwards.
    * ``SUSPEND``/``RESUME`` exist for completeness; the engine does not use
      them and an IOPS may treat them as UNWATCH/WATCH.

Delivering readiness
    When the loop sees readiness it calls ``event.ready(flags)`` with the mask
    of what is ready, or one of the fast forms ``ready_r()``, ``ready_w()``,
    ``ready_rw()``. Callbacks run on the loop's own thread or greenlet; they
    may change watches (including on other events) and arm timers.

Timers — :meth:`IOPS.update_timer`\\ ``(timer, action, usecs)``
    ``PYCBC_EVACTION_WATCH`` arms a **one-shot** timer ``usecs``
    microseconds from now (re-arming an armed timer moves it);
    ``PYCBC_EVACTION_UNWATCH`` disarms it; ``PYCBC_EVACTION_CLEANUP`` frees it.
    On expiry the IOPS calls ``timer.ready(0)`` once.

Blocking waits
    :meth:`IOPS.start_watching` / :meth:`IOPS.stop_watching` bracket a
    blocking wait for IOPS that run their own loop (the select IOPS runs its
    loop inside ``start_watching`` until the engine calls
    ``stop_watching``). For a loop that is always running (gevent, or a
    framework's reactor) both are no-ops.

Errors
    The engine's callbacks never raise into the loop. An IOPS should still
    protect its loop from a raising callback (log and continue).

Forks (optional) — :attr:`IOPS.after_fork`
    An IOPS that knows how to carry on in the child of ``os.fork()`` has an
    ``after_fork()`` method. The engines it drives call it in the child,
    right after the fork (from ``os.register_at_fork``), possibly more than
    once (do the work once per process). Afterwards every event and timer
    from before the fork is forgotten: none fires again, and the IOPS must
    not have touched kernel state shared with the parent (an inherited
    epoll/kqueue fd is the parent's too: close the child's copy, never
    unregister from it). Events created afterwards work normally. The engine
    never passes an event from before the fork again; it closes the child's
    copies of its sockets itself. Without the method, a bucket created before
    a fork refuses to work in the child
    (:class:`~couchbase_core.exceptions.ForkError`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = [
    "Event", "IOEvent", "TimerEvent", "IOPS",
    "PYCBC_EVACTION_WATCH", "PYCBC_EVACTION_UNWATCH", "PYCBC_EVACTION_SUSPEND",
    "PYCBC_EVACTION_RESUME", "PYCBC_EVACTION_CLEANUP",
    "PYCBC_EVSTATE_INITIALIZED", "PYCBC_EVSTATE_ACTIVE",
    "PYCBC_EVSTATE_SUSPENDED", "PYCBC_EVSTATE_FREED",
    "LCB_READ_EVENT", "LCB_WRITE_EVENT", "LCB_RW_EVENT",
]

#: Start watching (sockets: for the given flags; timers: arm).
PYCBC_EVACTION_WATCH = 1
#: Stop watching (sockets) or disarm (timers).
PYCBC_EVACTION_UNWATCH = 2
#: Temporarily stop delivering events (unused by the engine).
PYCBC_EVACTION_SUSPEND = 4
#: Undo SUSPEND (unused by the engine).
PYCBC_EVACTION_RESUME = 8
#: Forget the event for good.
PYCBC_EVACTION_CLEANUP = 16

#: A new event that was never watched.
PYCBC_EVSTATE_INITIALIZED = 0
#: The event is being watched (or the timer is armed).
PYCBC_EVSTATE_ACTIVE = 1
#: The event is not being watched right now.
PYCBC_EVSTATE_SUSPENDED = 2
#: The event was cleaned up and must not be used again.
PYCBC_EVSTATE_FREED = 3

#: The socket is readable.
LCB_READ_EVENT = 0x02
#: The socket is writable.
LCB_WRITE_EVENT = 0x04
#: Both.
LCB_RW_EVENT = 0x06


def _ignore(*_args: Any) -> None:
    return None


class Event:
    """Base of :class:`IOEvent` and :class:`TimerEvent`.

    Attributes:
        state: one of the ``PYCBC_EVSTATE_*`` constants, kept by the IOPS.
        pydata: free for the IOPS's own use (e.g. its watcher objects).
    """

    __slots__ = ("state", "pydata", "_handler", "__weakref__")

    def __init__(self) -> None:
        self.state = PYCBC_EVSTATE_INITIALIZED
        self.pydata: Any = None
        # Set by the engine: called with the ready flags.
        self._handler: Callable[[int], None] = _ignore

    def ready(self, flags: int) -> None:
        """Called by the IOPS when the event fired, with the ready flags."""
        self._handler(flags)


class IOEvent(Event):
    """A socket the engine wants watched.

    Attributes:
        fd: the socket's file descriptor (set by the engine).
    """

    __slots__ = ("fd",)

    def __init__(self) -> None:
        Event.__init__(self)
        self.fd = -1

    def fileno(self) -> int:
        """Return the file descriptor to watch."""
        return self.fd

    def ready_r(self) -> None:
        """The socket is readable."""
        self._handler(LCB_READ_EVENT)

    def ready_w(self) -> None:
        """The socket is writable."""
        self._handler(LCB_WRITE_EVENT)

    def ready_rw(self) -> None:
        """The socket is readable and writable."""
        self._handler(LCB_RW_EVENT)

    def __repr__(self) -> str:
        return "<%s fd=%d state=%d>" % (type(self).__name__, self.fd, self.state)


class TimerEvent(Event):
    """A one-shot timer. The IOPS calls :meth:`ready` (with 0) on expiry."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<%s state=%d>" % (type(self).__name__, self.state)


class IOPS:
    """The interface an event loop implements to drive the engine.

    Subclass it and implement :meth:`update_event`, :meth:`update_timer`
    and, for loops that must be run explicitly, :meth:`start_watching` and
    :meth:`stop_watching`. Override the factories to return subclasses of
    the events if you want per-event state.
    """

    def io_event_factory(self) -> IOEvent:
        """Return a new :class:`IOEvent` (or subclass) for one socket."""
        return IOEvent()

    def timer_event_factory(self) -> TimerEvent:
        """Return a new :class:`TimerEvent` (or subclass)."""
        return TimerEvent()

    def update_event(self, event: IOEvent, action: int, flags: int) -> None:
        """Watch ``event.fileno()`` for ``flags`` (``PYCBC_EVACTION_WATCH``),
        stop watching it (``UNWATCH``) or free it (``CLEANUP``). See the
        module documentation for the exact semantics."""
        raise NotImplementedError

    def update_timer(self, timer: TimerEvent, action: int, usecs: int) -> None:
        """Arm ``timer`` to fire once in ``usecs`` microseconds
        (``PYCBC_EVACTION_WATCH``), disarm it (``UNWATCH``) or free it
        (``CLEANUP``)."""
        raise NotImplementedError

    def start_watching(self) -> None:
        """Run the loop until :meth:`stop_watching` is called (IOPS with their
        own loop), or do nothing (loops that are always running)."""

    def stop_watching(self) -> None:
        """Make a running :meth:`start_watching` return."""

    # Optional: survive a fork. ``after_fork()`` is called in the child; it
    # forgets every event and timer from before the fork without touching
    # kernel objects shared with the parent (see the module documentation).
    # Without it, buckets made before a fork raise ForkError in the child.
    after_fork: Optional[Callable[[], None]] = None

    # Optional: a non-blocking resolver. The engine calls
    # ``resolve(host, port, callback)`` when present and expects
    # ``callback(addrinfo_list, error)`` later; without it, host names that
    # are not numeric addresses are resolved with a blocking getaddrinfo.
    resolve: Optional[Callable[[str, int, Callable[[Any, Optional[BaseException]], None]], None]] = None

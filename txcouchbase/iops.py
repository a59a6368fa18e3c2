"""An IOPS on a Twisted reactor (``addReader``/``addWriter``, ``callLater``).

Each engine socket gets one :class:`_Descriptor`, an object providing
Twisted's ``IReadDescriptor`` and ``IWriteDescriptor``: the reactor calls
its ``doRead``/``doWrite`` when the socket is ready, and they call the
engine's ``ready_r``/``ready_w``. The reactors Twisted ships (epoll, poll,
select, kqueue) report readiness level-triggered, which is the contract of
:mod:`couchbase_core.iops.base`. Timers are ``reactor.callLater`` calls,
cancelled and made anew when the engine re-arms them.

Two reactor habits the descriptor guards against:

* after ``doRead`` the reactor calls ``doWrite`` in the same turn if the
  poll said writable, even if ``doRead`` made the engine stop writing (or
  close the socket): the descriptor only forwards what is still watched;
* a socket reported hung up without being readable (a refused connect, for
  example) is removed from the reactor, which then calls
  ``connectionLost``: the descriptor forgets its registration and hands the
  engine the readiness it was waiting for, so the engine reads the error
  (``SO_ERROR``, ``recv``) and closes the socket itself.

Host names are resolved with the reactor's ``nameResolver`` (Twisted's
default runs ``getaddrinfo`` in the reactor's thread pool), so a lookup
never holds the reactor; see :meth:`IOPS.resolve`.

``doRead``/``doWrite`` never return a value or raise: either would make the
reactor drop the descriptor behind the engine's back (an exception from the
engine, which should never happen, is logged and swallowed).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, List, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReadDescriptor, IResolutionReceiver, IWriteDescriptor
from twisted.python import log
from zope.interface import implementer

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

__all__ = ["IOPS", "v0Iops"]


@implementer(IReadDescriptor, IWriteDescriptor)
class _Descriptor:
    """The reactor's view of one engine socket."""

    __slots__ = ("event", "fd", "flags", "__weakref__")

    def __init__(self, event: base.IOEvent) -> None:
        self.event = event
        #: The descriptor number as registered: the reactor looks it up by
        #: fileno(), which must not change while registered.
        self.fd = event.fileno()
        #: What the reactor is watching for, a mask of LCB_*_EVENT.
        self.flags = 0

    def fileno(self) -> int:
        """The socket's descriptor (as it was when first watched)."""
        return self.fd

    def logPrefix(self) -> str:
        """The reactor's log context for this descriptor."""
        return "couchbase"

    def doRead(self) -> None:
        """The socket is readable: tell the engine, if it still asks."""
        if self.flags & LCB_READ_EVENT:
            _call(self.event.ready_r)

    def doWrite(self) -> None:
        """The socket is writable: tell the engine, if it still asks."""
        if self.flags & LCB_WRITE_EVENT:
            _call(self.event.ready_w)

    def connectionLost(self, reason: Any) -> None:
        """The reactor saw a hang-up or error without readable data and has
        already removed this descriptor: let the engine find out why."""
        flags, self.flags = self.flags, 0
        if flags:
            _call(self.event.ready, flags)


def _call(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - never let the reactor drop the socket
        log.err(None, "couchbase IOPS callback failed")


class IOPS(base.IOPS):
    """Drives the engine from a Twisted reactor (the global one unless
    ``reactor`` is given). The reactor need not be running yet: watches
    and timers take effect once it runs (or turns, with ``iterate()``)."""

    def __init__(self, reactor: Optional[Any] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        #: The reactor (an IReactorFDSet and IReactorTime provider).
        self.reactor: Any = reactor

    # ------------------------------------------------------------- sockets

    def update_event(self, event: base.IOEvent, action: int, flags: int) -> None:
        if action == PYCBC_EVACTION_SUSPEND:
            action = PYCBC_EVACTION_UNWATCH
        elif action == PYCBC_EVACTION_RESUME:
            action = PYCBC_EVACTION_WATCH
        desc: Optional[_Descriptor] = event.pydata
        if action == PYCBC_EVACTION_WATCH:
            if desc is None:
                desc = event.pydata = _Descriptor(event)
            self._set_flags(desc, flags & (LCB_READ_EVENT | LCB_WRITE_EVENT))
            event.state = PYCBC_EVSTATE_ACTIVE if desc.flags else PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_UNWATCH:
            if desc is not None:
                self._set_flags(desc, 0)
            event.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            if desc is not None:
                self._set_flags(desc, 0)
                event.pydata = None
            event.state = PYCBC_EVSTATE_FREED
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    def _set_flags(self, desc: _Descriptor, flags: int) -> None:
        """Add or remove the reader / writer registrations that changed."""
        old = desc.flags
        changed = old ^ flags
        reactor = self.reactor
        if changed & LCB_READ_EVENT:
            if flags & LCB_READ_EVENT:
                reactor.addReader(desc)
            else:
                reactor.removeReader(desc)
        if changed & LCB_WRITE_EVENT:
            if flags & LCB_WRITE_EVENT:
                reactor.addWriter(desc)
            else:
                reactor.removeWriter(desc)
        desc.flags = flags

    # -------------------------------------------------------------- timers

    def update_timer(self, timer: base.TimerEvent, action: int, usecs: int) -> None:
        call = timer.pydata
        if call is not None:
            timer.pydata = None
            if call.active():
                call.cancel()
        if action in (PYCBC_EVACTION_WATCH, PYCBC_EVACTION_RESUME):
            # callLater counts from reactor.seconds(), read now: the delay
            # starts at this call, as the contract asks.
            timer.pydata = self.reactor.callLater(max(0, usecs) / 1e6, self._fire, timer)
            timer.state = PYCBC_EVSTATE_ACTIVE
        elif action in (PYCBC_EVACTION_UNWATCH, PYCBC_EVACTION_SUSPEND):
            timer.state = PYCBC_EVSTATE_SUSPENDED
        elif action == PYCBC_EVACTION_CLEANUP:
            timer.state = PYCBC_EVSTATE_FREED
        else:
            raise ValueError("unknown IOPS action %r" % (action,))

    @staticmethod
    def _fire(timer: base.TimerEvent) -> None:
        timer.pydata = None
        timer.state = PYCBC_EVSTATE_SUSPENDED
        _call(timer.ready, 0)

    # -------------------------------------------------------- name resolution

    def resolve(self, host: str, port: int, callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Resolve ``host``; ``callback(addrinfo_list, error)`` runs later,
        from the reactor.

        While the reactor runs, the lookup goes to its ``nameResolver``
        (Twisted's default asks ``getaddrinfo`` in the reactor's thread
        pool), so the reactor goes on meanwhile. Before it runs (a bucket
        made before ``reactor.run()``), that pool has not started and
        would hold the lookup until it does; with no loop to hold up yet,
        ``getaddrinfo`` is then called directly, and its outcome still
        reported from the reactor."""
        reactor = self.reactor
        resolver = getattr(reactor, "nameResolver", None)
        if resolver is None or not getattr(reactor, "running", False):
            try:
                infos: Any = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
                error: Optional[BaseException] = None
            except OSError as exc:
                infos, error = None, exc
            reactor.callLater(0, _call, callback, infos, error)
            return
        resolver.resolveHostName(_Receiver(reactor, host, callback), host, port)


@implementer(IResolutionReceiver)
class _Receiver:
    """Collects the addresses of one ``nameResolver`` lookup as
    ``getaddrinfo`` entries and reports them once, from the reactor (a
    resolver that answers inside ``resolveHostName`` is deferred a turn:
    the engine never hears back inside its own call)."""

    def __init__(self, reactor: Any, host: str, callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        self._reactor = reactor
        self._host = host
        self._callback: Optional[Callable[[Any, Optional[BaseException]], None]] = callback
        self._infos: List[Any] = []

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, IPv6Address):
            self._infos.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                                (address.host, address.port, address.flowInfo, address.scopeID)))
        elif isinstance(address, IPv4Address):
            self._infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                                (address.host, address.port)))

    def resolutionComplete(self) -> None:
        callback, self._callback = self._callback, None
        if callback is None:
            return
        infos = self._infos
        error = None if infos else OSError("no address found for %r" % (self._host,))
        self._reactor.callLater(0, _call, callback, infos or None, error)


#: The 2.x name of the Twisted IOPS class (``txcouchbase.iops.v0Iops``).
v0Iops = IOPS

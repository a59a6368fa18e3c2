"""Test doubles for the engine's transport seam: scripted sockets and an
IOPS the test drives by hand.

The engine's :class:`~couchbase_core._engine.transport.Transport` takes its
sockets from a factory. Give it :meth:`ScriptedNetwork.factory` and every
socket it opens is a :class:`ScriptedSocket`, whose behaviour the test
writes down in advance::

    net = ScriptedNetwork()
    sock = net.add()                       # the next socket to be opened
    sock.script_send(1, 1, BlockingIOError, ConnectionResetError)
    sock.feed(b"reply bytes", b"")         # then EOF

* ``send`` follows its script, one entry per call: an ``int`` takes at most
  that many bytes (0 behaves like a full socket: ``BlockingIOError``), an
  exception (class or instance) is raised. With the script used up, every
  byte offered is taken.
* ``recv`` returns the fed chunks in order (a chunk longer than asked for
  is split), ``b""`` is end of stream, an exception entry is raised; with
  nothing fed it raises ``BlockingIOError`` like an empty non-blocking
  socket.
* ``peer`` (optional) is called with every chunk the socket took: a
  scripted server answers there by feeding replies.

:class:`ManualIOPS` reports readiness only when the test says so
(:meth:`ManualIOPS.pump`), so each step of a test is deterministic: no
clock, no real socket, no thread.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

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

__all__ = ["ScriptedSocket", "ScriptedNetwork", "ManualIOPS", "scripted_resolver"]

_fds = itertools.count(100000)


def _raise(entry: Any) -> None:
    if isinstance(entry, type):
        entry = entry()
    raise entry


def _is_exception(entry: Any) -> bool:
    return isinstance(entry, BaseException) or (isinstance(entry, type) and issubclass(entry, BaseException))


class ScriptedSocket:
    """A non-blocking stream socket whose every answer is scripted (see the
    module docs).

    Args:
        connect_result: what ``connect_ex`` returns (default EINPROGRESS;
            ECONNREFUSED: refused at once).
        connect_error: what ``getsockopt(SO_ERROR)`` reports once the
            connect completes (0: connected; ECONNREFUSED: refused).
        peer: called as ``peer(sock, data)`` with each chunk sent.
    """

    def __init__(self, connect_result: int = errno.EINPROGRESS, connect_error: int = 0,
                 peer: Optional[Callable[["ScriptedSocket", bytes], None]] = None) -> None:
        self.connect_result = connect_result
        self.connect_error = connect_error
        self.peer = peer
        #: Every byte ``send`` took, in order.
        self.sent = bytearray()
        #: The byte counts ``send`` returned, in order (0 for EAGAIN).
        self.send_counts: List[int] = []
        #: Every call made on the socket: ("connect_ex", addr), ("send", n),
        #: ("recv", n), ("close",), ("shutdown", how)...
        self.calls: List[Tuple[Any, ...]] = []
        self.closed = False
        self.address: Any = None
        self._fd = next(_fds)
        self._send_script: Deque[Any] = deque()
        self._recv_script: Deque[Any] = deque()

    # -- scripting -------------------------------------------------------

    def script_send(self, *entries: Any) -> "ScriptedSocket":
        """Append entries to the ``send`` script (ints or exceptions)."""
        self._send_script.extend(entries)
        return self

    def feed(self, *chunks: Any) -> "ScriptedSocket":
        """Queue what ``recv`` returns: bytes, ``b""`` (EOF) or exceptions."""
        self._recv_script.extend(chunks)
        return self

    @property
    def readable(self) -> bool:
        """``recv`` has something to return (data, EOF or an error)."""
        return bool(self._recv_script)

    @property
    def io_calls(self) -> List[Tuple[Any, ...]]:
        """The calls that touch the stream: send, recv, shutdown."""
        return [c for c in self.calls if c[0] in ("send", "recv", "shutdown")]

    # -- the socket API the engine uses ----------------------------------

    def fileno(self) -> int:
        """A unique number (no real descriptor exists)."""
        return self._fd

    def setblocking(self, flag: bool) -> None:
        """Ignored: the socket never blocks."""

    def setsockopt(self, *args: Any) -> None:
        """Ignored."""

    def connect_ex(self, address: Any) -> int:
        """Start connecting: returns the scripted ``connect_result``."""
        self.calls.append(("connect_ex", address))
        self.address = address
        return self.connect_result

    def getsockopt(self, level: int, option: int, *args: Any) -> int:
        """``SO_ERROR``: the scripted ``connect_error``."""
        return self.connect_error

    def getsockname(self) -> Tuple[str, int]:
        """A made-up local address."""
        return ("127.0.0.1", 40000 + self._fd % 20000)

    def send(self, data: Any) -> int:
        """Take bytes as the script says."""
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        limit = len(data)
        if self._send_script:
            entry = self._send_script.popleft()
            if _is_exception(entry):
                self.calls.append(("send", entry))
                _raise(entry)
            limit = min(limit, entry)
            if limit == 0 and len(data):
                self.calls.append(("send", 0))
                self.send_counts.append(0)
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        taken = bytes(memoryview(data)[:limit])
        self.sent += taken
        self.send_counts.append(limit)
        self.calls.append(("send", limit))
        if self.peer is not None and taken:
            self.peer(self, taken)
        return limit

    def recv(self, size: int, flags: int = 0) -> bytes:
        """Return the next scripted chunk (at most ``size`` bytes of it)."""
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        self.calls.append(("recv", size))
        if not self._recv_script:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        entry = self._recv_script[0]
        peek = bool(flags & socket.MSG_PEEK)
        if _is_exception(entry):
            if not peek:
                self._recv_script.popleft()
            _raise(entry)
        if peek:
            return entry[:size]
        self._recv_script.popleft()
        if len(entry) > size:
            self._recv_script.appendleft(entry[size:])
            entry = entry[:size]
        return entry

    def shutdown(self, how: int) -> None:
        """Recorded (the engine must not call it on an abandoned socket)."""
        self.calls.append(("shutdown", how))

    def close(self) -> None:
        """Close (recorded)."""
        self.calls.append(("close",))
        self.closed = True


class ScriptedNetwork:
    """A socket factory handing out scripted sockets in order."""

    def __init__(self, default: Optional[Callable[[], ScriptedSocket]] = None) -> None:
        self._queue: Deque[ScriptedSocket] = deque()
        self._default = default or ScriptedSocket
        #: Every socket handed out, in order.
        self.opened: List[ScriptedSocket] = []

    def add(self, sock: Optional[ScriptedSocket] = None, **kwargs: Any) -> ScriptedSocket:
        """Queue ``sock`` (or a new ScriptedSocket(**kwargs)) as the next
        socket to be opened."""
        if sock is None:
            sock = ScriptedSocket(**kwargs)
        self._queue.append(sock)
        return sock

    def factory(self, family: int, nodelay: bool = True, keepalive: bool = True) -> ScriptedSocket:
        """The factory to give the transport (``dial.SocketFactory``)."""
        sock = self._queue.popleft() if self._queue else self._default()
        self.opened.append(sock)
        return sock


def scripted_resolver(*sockaddrs: Any, error: Optional[BaseException] = None) -> Callable[..., None]:
    """A transport ``resolve`` that answers at once with IPv4 ``sockaddrs``
    (or with ``error``)."""

    def resolve(host: str, port: int, callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        if error is not None:
            callback(None, error)
            return
        callback([(socket.AF_INET, socket.SOCK_STREAM, 6, "", addr) for addr in sockaddrs], None)

    return resolve


class ManualIOPS(IOPS):
    """An IOPS that reports readiness and fires timers only when told, on a
    virtual clock (give :meth:`clock` to the engine as its clock).

    :meth:`pump` fires the timers that are due (zero-delay ones: the
    engine's deferred calls), then reports every watched event as ready for
    what it is watched for: scripted sockets are always "ready", and their
    scripts decide what a read or write finds. Time moves only through
    :meth:`advance`.
    """

    def __init__(self) -> None:
        #: virtual time, in seconds
        self.now = 0.0
        #: event -> flags currently watched
        self.watched: Dict[IOEvent, int] = {}
        #: armed timer -> virtual time it is due
        self.timers: Dict[TimerEvent, float] = {}
        #: (action, flags) of every update_event call, in order
        self.updates: List[Tuple[int, int]] = []

    def clock(self) -> float:
        """The virtual time (seconds)."""
        return self.now

    def io_event_factory(self) -> IOEvent:
        return IOEvent()

    def timer_event_factory(self) -> TimerEvent:
        return TimerEvent()

    def update_event(self, event: IOEvent, action: int, flags: int) -> None:
        self.updates.append((action, flags))
        if action == PYCBC_EVACTION_WATCH:
            self.watched[event] = flags
        elif action == PYCBC_EVACTION_UNWATCH:
            self.watched.pop(event, None)
        elif action == PYCBC_EVACTION_CLEANUP:
            self.watched.pop(event, None)
            event.state = PYCBC_EVSTATE_FREED

    def update_timer(self, timer: TimerEvent, action: int, usecs: int) -> None:
        if action == PYCBC_EVACTION_WATCH:
            self.timers[timer] = self.now + usecs / 1e6
        elif action == PYCBC_EVACTION_UNWATCH:
            self.timers.pop(timer, None)
        elif action == PYCBC_EVACTION_CLEANUP:
            self.timers.pop(timer, None)
            timer.state = PYCBC_EVSTATE_FREED

    def fire(self, timer: TimerEvent) -> None:
        """Fire one armed timer now, whatever its due time."""
        del self.timers[timer]
        timer.ready(0)

    def run_due(self) -> int:
        """Fire the timers due by now (also those they arm); the count."""
        fired = 0
        while True:
            due = sorted((when, i, t) for i, (t, when) in enumerate(self.timers.items()) if when <= self.now)
            if not due:
                return fired
            for when, _i, timer in due:
                if self.timers.get(timer) == when:
                    self.fire(timer)
                    fired += 1

    def advance(self, seconds: float) -> int:
        """Move the clock on and fire what became due; the count."""
        self.now += seconds
        return self.run_due()

    def pump(self, flags: int = LCB_READ_EVENT | LCB_WRITE_EVENT) -> int:
        """Fire due timers, then report each watched event ready (for what
        it watches, masked by ``flags``) once. The number of events
        reported."""
        self.run_due()
        made = 0
        for event, watched in list(self.watched.items()):
            if self.watched.get(event) != watched:
                continue  # changed by an earlier callback of this round
            ready = watched & flags
            if ready:
                event.ready(ready)
                made += 1
        self.run_due()
        return made

    def pump_until(self, condition: Callable[[], Any], rounds: int = 1000) -> None:
        """Pump until ``condition()`` is true (AssertionError after
        ``rounds`` rounds: a test waiting for something that never comes)."""
        for _ in range(rounds):
            if condition():
                return
            self.pump()
        if not condition():
            raise AssertionError("condition not met after %d rounds" % rounds)

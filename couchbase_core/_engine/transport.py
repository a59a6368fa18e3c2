"""One byte stream over one non-blocking socket: the engine's transport seam.

Theory of operation
-------------------

A :class:`Transport` owns one socket for its whole (short) life: it
resolves the host, connects to each address in turn until one accepts,
optionally runs a TLS handshake over memory BIOs
(:class:`~couchbase_core._engine.tls.TLSSession`), and then carries bytes
until it is closed. Its phases::

    IDLE --connect()--> RESOLVING --> CONNECTING --> [TLS_HANDSHAKE] --> OPEN
      any --close(), error, EOF, abandon_after_fork()--> CLOSED (terminal)

A connection that reconnects makes a new transport; a closed one never
calls its owner again, so late events of an old socket cannot reach the
owner of a new one.

The owner hears from the transport through plain callables given to the
constructor:

* ``on_connected()``: the stream is open for application bytes (TCP
  connected and, with TLS, the handshake done);
* ``on_readable()``: bytes may be waiting; the owner pulls them with
  :meth:`Transport.recv`;
* ``on_writable()``: the owner asked for write interest and the socket can
  take bytes; the owner pushes them with :meth:`Transport.send`;
* ``on_eof()``: the peer closed the stream;
* ``on_error(rc, message)``: resolving, connecting, TLS, reading or writing
  failed; ``rc`` is an :class:`~couchbase_core.exceptions.RC` code and the
  message names the peer;
* ``on_tls_started()`` (optional): TCP is up and the TLS handshake begins.

``on_eof`` and ``on_error`` are final: the transport has closed itself
before it calls them, and calls nothing afterwards. ``on_readable`` and
``on_writable`` are attributes the owner may re-point when its own phase
changes (the KV connection points them at its handshake code while it
negotiates and at its dispatch loop once ready), which keeps a state test
off the hottest path.

Why the owner pulls reads and pushes writes
-------------------------------------------

Writes are a non-blocking ``send(data) -> int`` (bytes taken; with TLS,
plaintext accepted) plus write-interest control, not a fire-and-forget
buffer, because the KV write queue must know byte by byte what left it: a
request none of whose bytes were taken can still be withdrawn when its
deadline passes, and a request partly taken may have been executed. The
queue already gathers bytes, hands them over and consumes what was taken;
``send`` slots into that unchanged, and works both from a writable event
and from the connection's "send at once on an idle connection" shortcut,
which a pull design (the stream asking its owner for bytes) would not
serve. With TLS, ``send`` accepts plaintext only while less than
``tls_backlog`` bytes of ciphertext wait for the socket, so requests stay
in the owner's queue (withdrawable) until the socket drains; the transport
keeps write interest while ciphertext waits, whatever the owner wants.

Reads are pulled (``on_readable`` then :meth:`recv`) rather than pushed as
``data(bytes)`` because the engine also reads without any readiness event
(``KVConnection.drain`` empties sockets before deadlines are expired), and
because the owner's read loop then keeps its shape: one call to get bytes,
then decode and dispatch. :meth:`unread` gives bytes back to the stream
(the KV handshake hands what followed its last reply to the connection's
decoder this way).

Cost
----

On the hot path the transport replaces the owner's own event handler and
socket helpers, call for call: the IOPS calls :meth:`_on_io`, which calls
the owner's reader or writer, which calls :meth:`recv` or :meth:`send`,
which calls the socket. Interest changes are applied to the IOPS only when
the flags actually change.
"""

from __future__ import annotations

import _socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from couchbase_core._engine.dial import SocketFactory, describe_errno, open_socket, start_connect
from couchbase_core._engine.tls import TLSSession, describe_handshake_error
from couchbase_core.exceptions import RC
from couchbase_core.iops.base import (
    LCB_READ_EVENT,
    LCB_WRITE_EVENT,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
)

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.dial import ResolveCallback

__all__ = ["Transport", "Resolver", "IDLE", "RESOLVING", "CONNECTING", "TLS_HANDSHAKE", "OPEN", "CLOSED",
           "READ_SIZE", "TLS_BACKLOG"]

IDLE = "idle"
RESOLVING = "resolving"
CONNECTING = "connecting"
TLS_HANDSHAKE = "tls-handshake"
OPEN = "open"
CLOSED = "closed"

#: Bytes asked of ``recv`` at a time (default).
READ_SIZE = 256 * 1024
#: With TLS, plaintext is accepted only while less ciphertext than this
#: waits for the socket (default).
TLS_BACKLOG = 1024 * 1024

#: ``resolve(host, port, callback)``; ``callback(addrinfos, error)``, as
#: :func:`couchbase_core._engine.dial.resolve` bound to an engine.
Resolver = Callable[[str, int, "ResolveCallback"], None]

_SOL_SOCKET = _socket.SOL_SOCKET
_SO_ERROR = _socket.SO_ERROR
_MSG_PEEK = _socket.MSG_PEEK


def _nothing(*_args: Any) -> None:
    """Default and post-mortem callback: does nothing."""


class Transport:
    """One non-blocking stream (TCP, optionally TLS) on an IOPS; see the
    module docs for the callbacks and the send/recv contract."""

    def __init__(self, iops: Any, host: str, port: int, *, resolve: Resolver,
                 on_connected: Callable[[], None],
                 on_readable: Callable[[], Any],
                 on_writable: Callable[[], Any],
                 on_eof: Callable[[], None],
                 on_error: Callable[[int, str], None],
                 on_tls_started: Optional[Callable[[], None]] = None,
                 tls_context: Optional[ssl.SSLContext] = None,
                 socket_factory: Optional[SocketFactory] = None,
                 nodelay: bool = True, keepalive: bool = True,
                 read_size: int = READ_SIZE, tls_backlog: int = TLS_BACKLOG) -> None:
        self.iops = iops
        self.host = host
        self.port = port
        self.phase = IDLE
        self.on_connected = on_connected
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.on_eof = on_eof
        self.on_error = on_error
        self.on_tls_started = on_tls_started or _nothing
        self.read_size = read_size
        self.tls_backlog = tls_backlog
        #: The TLS session once the handshake started (None without TLS).
        self.tls: Optional[TLSSession] = None
        #: ``getsockname()`` of the connected socket.
        self.local_address: Optional[Tuple[Any, ...]] = None
        self._resolve = resolve
        self._tls_context = tls_context
        self._factory = socket_factory or open_socket
        self._nodelay = nodelay
        self._keepalive = keepalive
        self._addresses: List[Tuple[int, Any]] = []
        self._sock: Any = None
        self._event: Any = None
        #: Flags the IOPS currently watches for ``_event`` (0: none).
        self._flags = 0
        self._writing = False
        self._reading = True
        self._cipher = b""  # TLS records waiting for the socket
        self._unread = b""  # bytes given back with unread()

    # ------------------------------------------------------------------ info

    @property
    def authority(self) -> str:
        """``host:port`` of the peer."""
        return ("[%s]:%d" if ":" in self.host else "%s:%d") % (self.host, self.port)

    @property
    def sock(self) -> Any:
        """The socket (None before connecting and once closed); for
        diagnostics and tests, never for I/O behind the transport's back."""
        return self._sock

    @property
    def closed(self) -> bool:
        """The transport is done and calls its owner no more."""
        return self.phase is CLOSED

    def __repr__(self) -> str:
        return "<Transport %s %s>" % (self.authority, self.phase)

    # ------------------------------------------------------------ connecting

    def connect(self) -> None:
        """Resolve the host and connect to each address in turn. Outcomes
        arrive as ``on_connected`` or ``on_error`` (RC.UNKNOWN_HOST,
        RC.CONNECT). A numeric host that cannot be connected to at all
        (every ``connect_ex`` refused at once) reports inside this call."""
        if self.phase is not IDLE:
            raise RuntimeError("a Transport connects once (phase %s)" % self.phase)
        self.phase = RESOLVING
        self._resolve(self.host, self.port, self._on_resolved)

    def _on_resolved(self, infos: Any, error: Optional[BaseException]) -> None:
        if self.phase is not RESOLVING:
            return  # closed meanwhile
        if error is not None or not infos:
            self._fail(RC.UNKNOWN_HOST, "cannot resolve host %r: %s" % (self.host, error or "no address"))
            return
        self._addresses = [(family, sockaddr) for family, _t, _p, _c, sockaddr in infos]
        self._next_address(None)

    def _next_address(self, previous_error: Optional[str]) -> None:
        sock, error = start_connect(self._addresses, previous_error, self._nodelay, self._keepalive,
                                    self._factory)
        if sock is None:
            self._fail(RC.CONNECT, "cannot connect to %s: %s" % (self.authority, error))
            return
        self.phase = CONNECTING
        self._sock = sock
        event = self._event = self.iops.io_event_factory()
        event.fd = sock.fileno()
        event._handler = self._on_io
        self._flags = 0
        # Even an immediate success is taken up from the loop (writable), so
        # nothing downstream runs inside a caller's own call.
        self._apply_interest()

    def _finish_connect(self) -> None:
        err = self._sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
        if err:
            self._release()
            self.phase = RESOLVING  # between sockets
            self._next_address(describe_errno(err))
            return
        try:
            self.local_address = self._sock.getsockname()
        except OSError:
            self.local_address = None
        if self._tls_context is not None:
            self.phase = TLS_HANDSHAKE
            self.tls = TLSSession(self._tls_context, self.host)
            self.on_tls_started()
            if self.phase is TLS_HANDSHAKE:
                self._advance_tls()
            return
        self.phase = OPEN
        self._apply_interest()
        self.on_connected()

    def _advance_tls(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            done = tls.handshake()
        except ssl.SSLError as exc:
            self._fail(RC.CONNECT, "TLS handshake with %s failed: %s" % (self.authority, describe_handshake_error(exc)))
            return
        self._cipher += tls.outgoing()
        if self._cipher:
            self._flush_cipher()
            if self.phase is not TLS_HANDSHAKE:
                return
        if done:
            self.phase = OPEN
            self._apply_interest()
            self.on_connected()
            return
        self._apply_interest()

    # ------------------------------------------------------------------- I/O

    def _on_io(self, flags: int) -> None:
        """The IOPS reports readiness."""
        phase = self.phase
        if phase is OPEN:
            if flags & LCB_WRITE_EVENT:
                if self._cipher:
                    self._flush_cipher()
                    if self.phase is not OPEN:
                        return
                    if self._writing and len(self._cipher) < self.tls_backlog:
                        self.on_writable()
                elif self._writing:
                    self.on_writable()
            if flags & LCB_READ_EVENT and self.phase is OPEN:
                self.on_readable()
        elif phase is CONNECTING:
            if flags & (LCB_WRITE_EVENT | LCB_READ_EVENT):
                self._finish_connect()
        elif phase is TLS_HANDSHAKE:
            if flags & LCB_WRITE_EVENT and self._cipher:
                self._flush_cipher()
            if flags & LCB_READ_EVENT and self.phase is TLS_HANDSHAKE:
                self.recv()  # handshake records only: no plaintext before it ends
            if self.phase is TLS_HANDSHAKE:
                self._advance_tls()

    def recv(self) -> Optional[bytes]:
        """What the stream has now (plaintext with TLS), without waiting.
        None when nothing is there, or when the stream just ended or failed
        (``on_eof`` / ``on_error`` has then been called)."""
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        sock = self._sock
        if sock is None:
            return None
        try:
            data = sock.recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._fail(RC.NETWORK, "error reading from %s: %s" % (self.authority, exc))
            return None
        if not data:
            self._end()
            return None
        tls = self.tls
        if tls is not None:
            try:
                data = tls.receive(data)
            except ssl.SSLError as exc:
                self._fail(RC.NETWORK, "TLS error from %s: %s" % (self.authority, exc))
                return None
            pending = tls.outgoing()
            if pending:  # e.g. a key update: send it along
                self._cipher += pending
                self._flush_cipher()
                if self._sock is None:
                    return None
            if not data:
                return None
        return data

    def unread(self, data: bytes) -> None:
        """Give ``data`` back: the next :meth:`recv` returns it first."""
        self._unread = data + self._unread

    def send(self, data: Any) -> int:
        """Hand ``data`` to the stream without blocking. Returns the number
        of bytes taken (0 when the socket, or with TLS the ciphertext
        backlog, is full), or -1 when the stream failed (``on_error`` has
        been called). With TLS the count is of plaintext accepted: all of
        ``data`` or nothing."""
        tls = self.tls
        if tls is None:
            sock = self._sock
            if sock is None:
                return -1
            try:
                return sock.send(data)
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                self._fail(RC.NETWORK, "error writing to %s: %s" % (self.authority, exc))
                return -1
        if self.phase is not OPEN:
            return -1 if self.phase is CLOSED else 0  # handshaking: nothing taken yet
        if len(self._cipher) >= self.tls_backlog:
            return 0
        try:
            tls.send(data)
        except ssl.SSLError as exc:
            self._fail(RC.NETWORK, "TLS error from %s: %s" % (self.authority, exc))
            return -1
        self._cipher += tls.outgoing()
        self._flush_cipher()
        return len(data) if self.phase is OPEN else -1

    def try_send(self, data: Any) -> int:
        """Like :meth:`send` on an open plain (non-TLS) stream, but an error
        is not reported: 0 is returned and the loop finds the failure later.
        For writing inside a caller's own call, where no callback may run."""
        try:
            return self._sock.send(data)
        except OSError:
            return 0

    def _flush_cipher(self) -> None:
        """Send waiting TLS records; adjust write interest."""
        data = self._cipher
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(RC.NETWORK, "error writing to %s: %s" % (self.authority, exc))
            return
        self._cipher = data[sent:]
        self._apply_interest()

    # -------------------------------------------------------------- interest

    def want_write(self, flag: bool = True) -> None:
        """Ask for ``on_writable`` calls (or stop asking). With TLS, write
        interest also stays while ciphertext waits."""
        self._writing = flag
        if self.phase is OPEN:
            flags = (LCB_READ_EVENT if self._reading else 0) | (LCB_WRITE_EVENT if flag or self._cipher else 0)
            if flags != self._flags:
                self._flags = flags
                if flags:
                    self.iops.update_event(self._event, PYCBC_EVACTION_WATCH, flags)
                else:
                    self.iops.update_event(self._event, PYCBC_EVACTION_UNWATCH, 0)

    def pause_reading(self) -> None:
        """Stop watching for readability (flow control)."""
        self._reading = False
        self._apply_interest()

    def resume_reading(self) -> None:
        """Watch for readability again after :meth:`pause_reading`."""
        self._reading = True
        self._apply_interest()

    def _apply_interest(self) -> None:
        phase = self.phase
        if phase is OPEN:
            flags = (LCB_READ_EVENT if self._reading else 0) | \
                (LCB_WRITE_EVENT if self._writing or self._cipher else 0)
        elif phase is TLS_HANDSHAKE:
            flags = (LCB_READ_EVENT if self._reading else 0) | (LCB_WRITE_EVENT if self._cipher else 0)
        elif phase is CONNECTING:
            flags = LCB_WRITE_EVENT
        else:
            return
        if flags != self._flags:
            self._flags = flags
            if flags:
                self.iops.update_event(self._event, PYCBC_EVACTION_WATCH, flags)
            else:
                self.iops.update_event(self._event, PYCBC_EVACTION_UNWATCH, 0)

    def still_open(self) -> bool:
        """Whether an idle stream can carry more: the peer has not closed it
        and sent nothing unasked (a non-blocking peek)."""
        sock = self._sock
        if sock is None or self.phase is not OPEN or self._unread:
            return False
        try:
            sock.recv(1, _MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True  # nothing to read: still open
        except OSError:
            return False
        return False  # end of stream, or bytes nobody asked for

    # --------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the socket and free its event; no callback follows.
        Idempotent."""
        self.phase = CLOSED
        self._release()
        self.tls = None
        self._cipher = b""
        self._unread = b""

    def abandon_after_fork(self) -> None:
        """In the child of a fork: let go of the inherited socket without
        reading, writing or shutting it down (its stream, TLS state
        included, belongs to the parent): only the child's copy of the
        descriptor is closed. No IOPS call is made (the IOPS has forgotten
        the events from before the fork, or cannot be trusted with them)."""
        self.phase = CLOSED
        event, sock = self._event, self._sock
        self._event = self._sock = None
        self._flags = 0
        if event is not None:
            event._handler = _nothing
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self.tls = None
        self._cipher = b""
        self._unread = b""

    def _release(self) -> None:
        """Unwatch and free the event, close the socket."""
        event, sock = self._event, self._sock
        self._event = self._sock = None
        self._flags = 0
        if event is not None:
            self.iops.update_event(event, PYCBC_EVACTION_UNWATCH, 0)
            self.iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
            event._handler = _nothing
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _fail(self, rc: int, message: str) -> None:
        """Close, then tell the owner once."""
        if self.phase is CLOSED:
            return
        self.close()
        self.on_error(rc, message)

    def _end(self) -> None:
        """The peer closed the stream: close, then tell the owner once."""
        if self.phase is CLOSED:
            return
        self.close()
        self.on_eof()

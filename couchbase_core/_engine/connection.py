"""One KV connection: the engine's link to one node.

Theory of operation
-------------------

A :class:`KVConnection` stands for "the connection to node *host:port*" for
the engine's whole life; the socket behind it comes and goes. Its states::

    IDLE --connect()--> CONNECTING --connected--> NEGOTIATING --handshake done--> READY
      ^                      |                         |                          |
      +------ failure -------+------------ failure ----+-------- failure ---------+
    any --close()--> CLOSED (terminal)

Operations routed here are given an opaque and stored in :attr:`pending`
(opaque -> op) at once, whatever the state. Their encoded requests wait in
one write queue (``_queue``), written in order once the connection is READY.
Replies are matched to operations by opaque only, so any number of requests
may be in flight (pipelining); a reply whose opaque is unknown belongs to an
operation that timed out or was abandoned and is dropped.

Writes are coalesced: enqueuing only appends to the queue and asks the IOPS
for write readiness; when the socket is writable, up to ``WRITE_CHUNK``
bytes from the head of the queue go out in one ``send``. The queue knows,
for every request, whether any byte of it reached the socket:

* a request none of which was written when its deadline passes (or its
  caller went away) is *withdrawn*: skipped, its bytes released, never sent;
* a request of which some byte was written may have been executed by the
  server: when the connection then fails, the engine re-sends it only if it
  is harmless to repeat (a read), and otherwise reports an unknown outcome.

Reads take whatever the socket has and hand it to the sans-I/O
:class:`~couchbase_core._engine.protocol.FrameDecoder`. Before deadlines are
expired, the engine drains every socket (:meth:`KVConnection.drain`), so a
reply that sat in a socket while the loop was held up is not lost to a timer.

A connection on which an operation timed out while nothing at all was read
during that operation's life is *suspect*: a NOOP probe is sent, and if still
nothing is read by the probe's deadline the connection is declared dead and
replaced (:meth:`KVConnection.suspect`).

The handshake tolerates servers that are not Couchbase. Plain memcached
(1.6, measured by the test suite) handles an unknown command that carries a
key by reading the key and then discarding *body length* more bytes, i.e.
``key length`` bytes too many: a lone HELLO with an agent name gets no
answer at all until that many further bytes arrive, and anything pipelined
behind it is cut short, which desynchronises the stream (how the original C
client came to hang). Hence:

* HELLO goes out alone and nothing follows it until its reply is in;
* on ``memcached://`` the HELLO carries no agent name (an empty key), which
  plain memcached answers at once with UNKNOWN_COMMAND and stays in step;
  Couchbase servers get the agent name;
* whatever the server does with HELLO (refuse it, say nothing, close the
  socket), the connection reconnects if the stream may be out of step,
  skips HELLO from then on, and carries on without features. Nothing is
  set by the user and no queued operation is lost in the process.

These rules live in :class:`~couchbase_core._engine.session.Session`, the
handshake as a sans-I/O state machine that the connection feeds and obeys.
The socket itself (resolving, connecting, TLS, readiness, ``send``/``recv``)
is a :class:`~couchbase_core._engine.transport.Transport`, one per socket.

Failures never reach a caller inside its own call into the engine: an error
found while the caller is still on the stack (e.g. a refused ``connect``) is
reported from a zero-delay timer.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections import deque
from itertools import chain, islice, repeat
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

from couchbase_core._engine import snappy as _snappy
from couchbase_core._engine import tracing as _tracing
from couchbase_core._engine.dial import resolve
from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.protocol import (
    F_CAS,
    F_DATATYPE,
    F_EXTRAS,
    F_MAGIC,
    F_OPAQUE,
    F_OPCODE,
    F_STATUS,
    F_VALUE,
    RUN,
    Datatype,
    Feature,
    FrameDecoder,
    FrameError,
    Magic,
    Opcode,
    encode_request,
    expand_run,
    frame_end_after,
    frame_opaques,
    pack_alt_header,
    pack_header,
    run_from,
)
from couchbase_core._engine.session import (
    Done,
    Failed,
    HelloAnswered,
    RestartWithoutHello,
    Send,
    Session,
)
from couchbase_core._engine.transport import Transport
from couchbase_core.exceptions import RC
from couchbase_core.iops.base import (
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
    TimerEvent,
)

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.batch import Batch
    from couchbase_core._engine.owner import ConnectionOwner

__all__ = ["KVConnection", "IDLE", "CONNECTING", "TLS_HANDSHAKE", "NEGOTIATING", "READY", "CLOSED"]

log = logging.getLogger("couchbase_core.engine")

IDLE = "idle"
CONNECTING = "connecting"
TLS_HANDSHAKE = "tls-handshake"
NEGOTIATING = "negotiating"
READY = "ready"
CLOSED = "closed"

#: Bytes taken from the socket per read. It also bounds the work done in
#: one loop callback: 64 KiB of small replies is about 2,700 frames.
READ_SIZE = 64 * 1024
#: Bytes gathered from the write queue for one ``send`` (and moved into TLS
#: at a time): requests beyond it stay withdrawable until the socket drains.
WRITE_CHUNK = 1024 * 1024
#: How many queued requests _gather looks at on its fast path.
_GATHER_FAST = 512
#: Bounds of the dead-connection probe's timeout (the operation timeout,
#: clamped): a probe must not give up on a merely slow server too soon.
PROBE_MIN_TIMEOUT = 1.0
PROBE_MAX_TIMEOUT = 5.0

_pack_header = pack_header
#: A run window that covers every opaque.
_ALL_OPAQUES = 1 << 32
#: Header magics and the snappy datatype bit, as module constants for the hot path.
_REQUEST = Magic.REQUEST
_ALT_REQUEST = Magic.ALT_REQUEST
_SNAPPY = Datatype.SNAPPY
_pack_alt_header = pack_alt_header


class KVConnection:
    """The engine's connection to the KV service of one node."""

    def __init__(self, engine: "ConnectionOwner", host: str, port: int, index: int) -> None:
        #: The engine, seen through the narrow interface of owner.py.
        self.engine: "ConnectionOwner" = engine
        self.iops = engine.iops
        self.host = host
        self.port = port
        self.index = index
        self.state = IDLE
        #: opaque -> operation, for every operation routed here and not done.
        self.pending: Dict[int, KVOp] = {}
        #: HELLO features the server granted on the current socket.
        self.features: frozenset = frozenset()
        #: Why the last connection attempt or socket failed (rc, message).
        self.last_error: Optional[Tuple[int, str]] = None
        #: Set once the node has shown it does not speak HELLO.
        self.hello_disabled = False
        self.local_address: Optional[Tuple[Any, ...]] = None
        #: engine clock at the last read (diagnostics).
        self.last_activity = 0.0
        #: Requests waiting to be written, in order: operations and batch
        #: chunks (:class:`WriteChunk`), each holding its bytes in ``wire``.
        #: An entry whose ``wire`` is None was withdrawn (its deadline passed
        #: before any byte of it was written) and is skipped.
        self._queue: Deque[Any] = deque()
        #: Bytes of ``_queue[0]`` already handed to the socket.
        self._head_sent = 0
        #: Withdrawn entries still in the queue (compacted when they pile up).
        self._dead = 0
        #: (bytes, requests) taken by the fast path of the last _gather.
        self._gathered: Optional[Tuple[int, int]] = None
        #: Handshake requests (HELLO, SASL...) waiting to be written.
        self._hs_out = b""
        self._want_write = False
        #: Bumped for every new socket, so late events of an old one are ignored.
        self.generation = 0
        #: engine clock when bytes were last received (dead-connection rule).
        self.last_read = 0.0
        #: The NOOP sent to check a silent connection, while it is pending.
        self._probe: Any = None
        #: The stream of the current socket (see transport.py), and the
        #: handshake running on it (see session.py).
        self._transport: Optional[Transport] = None
        self._session: Optional[Session] = None
        self._decoder: Optional[FrameDecoder] = None
        self._connect_started = 0.0
        self._listeners: List[Callable[["KVConnection", Optional[Tuple[int, str]]], None]] = []
        self._connect_timer: Optional[TimerEvent] = None
        #: The TLS session of the current socket (None: cleartext).
        self._tls: Any = None
        #: Snappy negotiated: compress request values / expect compressed replies.
        self._deflate = False
        self._inflate = False
        self._min_compress = _MIN_COMPRESS
        self._min_ratio: Optional[float] = _MIN_RATIO
        #: Error map from GET_ERROR_MAP (status code -> entry), when fetched.
        self.error_map: Dict[int, Dict[str, Any]] = {}
        tracer = getattr(engine, "tracer", None)  # owners made by tests may have none
        if tracer is not None:
            self.trace_writes(tracer)

    def trace_writes(self, tracer: Any) -> None:
        """With a tracer (``enable_tracing``), shadow :meth:`_write` with a
        version that tells the tracer which requests each write took; with
        None, use the plain one again. The plain path pays nothing."""
        if tracer is None:
            self.__dict__.pop("_write", None)
        else:
            plain = functools.partial(KVConnection._write, self)
            clock = self.engine.clock

            def traced_write() -> None:
                waiting = [e for e in islice(self._queue, _tracing.MAX_STAMPED) if not e.written]
                plain()
                written = [e for e in waiting if e.written]
                if written:
                    tracer.kv_written(written, clock())

            self._write = traced_write  # type: ignore[method-assign]
        transport = self._transport
        if self.state is READY and transport is not None:
            transport.on_writable = self._write

    def apply_compression(self) -> None:
        """(Re)read the Snappy settings (``compression``,
        ``compression_min_size``, ``compression_min_ratio``): at the end of
        the handshake, and when the bucket's ``compression`` property changes."""
        settings = self.engine.settings
        snappy = Feature.SNAPPY in (self.features or ())
        mode = settings.compression
        self._inflate = snappy
        self._deflate = snappy and mode in ("on", "deflate_only", "force")
        self._min_compress = 1 if mode == "force" else max(1, settings.compression_min_size)
        self._min_ratio = None if mode == "force" else settings.compression_min_ratio

    # ------------------------------------------------------------------ info

    @property
    def authority(self) -> str:
        """``host:port`` of the node."""
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    def __repr__(self) -> str:
        return "<KVConnection %s state=%s pending=%d>" % (self.authority, self.state, len(self.pending))

    # ------------------------------------------------------------ scheduling

    def enqueue(self, op: KVOp) -> None:
        """Take ``op`` (its opaque already stamped) and send it when possible."""
        op.conn = self
        op.written = False
        opaque = op.opaque
        pending = self.pending
        pending[opaque] = op
        kb = op.kb
        extras = op.extras
        value = op.value
        if op.framing or self._deflate:
            data = self._encode_unusual(op)
        else:
            data = _pack_header(_REQUEST, op.opcode, len(kb), len(extras), op.datatype, op.vbucket,
                                len(kb) + len(extras) + len(value), opaque, op.cas) + extras + kb + value
        queue = self._queue
        if self.state is READY:
            if queue or self._tls is not None or len(pending) != 1 or self.engine.batch_depth:
                op.wire = data
                queue.append(op)
                if not self._want_write:
                    self._request_write()
                return
            # An idle connection: nothing to coalesce with, so send now
            # rather than after a trip through the loop (halves the
            # latency of a lone caller). Errors are left to the loop.
            sent = self._transport.try_send(data)  # type: ignore[union-attr]
            if sent:
                op.written = True
                if sent == len(data):
                    op.wire = None
                    return
                self._head_sent = sent
            op.wire = data
            queue.append(op)
            self._request_write()
            return
        op.wire = data
        queue.append(op)
        if self.state is IDLE:
            self.connect()

    def _encode_unusual(self, op: KVOp) -> bytes:
        """The request bytes of ``op`` when it has framing extras or the
        connection compresses values."""
        value = op.value
        datatype = op.datatype
        if self._deflate and len(value) >= self._min_compress and op.opcode in _COMPRESSIBLE:
            value, datatype = _compress(value, datatype, self._min_ratio)
        return encode_request(op.opcode, op.kb, op.extras, value, op.vbucket, op.opaque, op.cas, datatype,
                              op.framing)

    def enqueue_batch(self, batch: "Batch", indexes: Optional[List[int]] = None) -> None:
        """Take the entries ``indexes`` (default: all) of a batch whose
        opaques run from ``batch.base``; ``batch.vbuckets`` (when set) gives
        each entry's vBucket. They are written as one :class:`WriteChunk`."""
        batch.conns.add(self)
        base = batch.base
        kbs = batch.kbs
        vbuckets = batch.vbuckets
        parts: List[Any] = []
        append = parts.append
        pack = _pack_header
        pending = self.pending
        framing = batch.framing
        requests = batch.requests
        if requests is None and not framing and not batch.value:
            # Every entry is the batch's own keyed command (a plain
            # get_multi): a header and the key each, packed, joined and
            # registered by C-level loops (no Python bytecode per key).
            opcode = batch.opcode
            extras = batch.extras
            elen = len(extras)
            if indexes is None:
                count = len(kbs)
                opaques: Any = range(base, base + count)
                keys: Any = kbs
                vbs: Any = vbuckets if vbuckets is not None else repeat(0, count)
            else:
                count = len(indexes)
                opaques = list(map(base.__add__, indexes))
                keys = list(map(kbs.__getitem__, indexes))
                vbs = map(vbuckets.__getitem__, indexes) if vbuckets is not None else repeat(0, count)
            klens = list(map(len, keys))
            bodylens = map(elen.__add__, klens) if elen else klens
            headers = map(pack, repeat(_REQUEST), repeat(opcode), klens, repeat(elen), repeat(0), vbs,
                          bodylens, opaques, repeat(0))
            pieces = zip(headers, repeat(extras), keys) if elen else zip(headers, keys)
            pending.update(zip(opaques, repeat(batch)))
            self._queue_chunk(batch, chain.from_iterable(pieces))
            return
        if indexes is None:
            indexes = range(len(kbs))  # type: ignore[assignment]
        deflate = self._deflate
        min_compress, min_ratio = self._min_compress, self._min_ratio
        request = batch.request
        for i in indexes:  # type: ignore[union-attr]
            opcode, kb, extras, value, cas = request(i)
            datatype = 0
            if deflate and len(value) >= min_compress and opcode in _COMPRESSIBLE:
                value, datatype = _compress(value, 0, min_ratio)
            if framing:
                append(_pack_alt_header(_ALT_REQUEST, opcode, len(framing), len(kb), len(extras), datatype,
                                        vbuckets[i] if vbuckets else 0,
                                        len(framing) + len(kb) + len(extras) + len(value), base + i, cas))
                append(framing)
            else:
                append(pack(_REQUEST, opcode, len(kb), len(extras), datatype, vbuckets[i] if vbuckets else 0,
                            len(kb) + len(extras) + len(value), base + i, cas))
            if extras:
                append(extras)
            append(kb)
            if value:
                append(value)
            pending[base + i] = batch
        self._queue_chunk(batch, parts)

    def _queue_chunk(self, batch: "Batch", parts: Any) -> None:
        """Queue a batch's requests (``parts``) as one write chunk."""
        chunk = WriteChunk(self, b"".join(parts))
        batch.chunks.append(chunk)
        self._queue.append(chunk)
        if self.state is READY:
            if not self._want_write:
                self._request_write()
        elif self.state is IDLE:
            self.connect()

    def _request_write(self) -> None:
        engine = self.engine
        if engine.batch_depth:
            engine.dirty.add(self)
            return
        self._want_write = True
        self._transport.want_write(True)  # type: ignore[union-attr]

    def flush_soon(self) -> None:
        """Ask for write readiness if there is something to write (end of a batch)."""
        if self.state is READY and self._queue and not self._want_write:
            self._want_write = True
            self._transport.want_write(True)  # type: ignore[union-attr]

    def forget(self, op: KVOp) -> None:
        """Drop ``op`` from the pending table (it timed out or was cancelled);
        its reply, if one comes, will be ignored. If none of its request has
        been written yet, it is withdrawn from the write queue: the server
        never sees it."""
        pending = self.pending
        for opaque in op.opaques():
            pending.pop(opaque, None)
        if op.multi_key:
            for chunk in op.chunks:  # type: ignore[attr-defined]
                if chunk.conn is self:
                    self._withdraw(chunk)
        else:
            self._withdraw(op)

    def _withdraw(self, entry: Any) -> None:
        wire = entry.wire
        if wire is None:
            return  # written, or not queued
        if entry.written:
            # Partly written: only a batch chunk has more than the frame in
            # progress; everything after that frame is withdrawn.
            if isinstance(entry, WriteChunk) and self._queue and self._queue[0] is entry:
                cut = frame_end_after(wire, self._head_sent)
                if cut < len(wire):
                    entry.wire = memoryview(wire)[:cut]
            return
        entry.wire = None
        self._dead += 1
        queue = self._queue
        if self._dead > 64 and self._dead * 2 > len(queue):
            self._queue = deque(e for e in queue if e.wire is not None)
            self._dead = 0

    def was_written(self, op: KVOp) -> bool:
        """Whether any byte of ``op``'s request reached the socket (for a
        batch: of any of its entries on this connection)."""
        if op.multi_key:
            return any(c.written for c in op.chunks if c.conn is self)  # type: ignore[attr-defined]
        return op.written

    def _unsent_opaques(self) -> set:
        """Opaques of the requests of which no byte was written yet."""
        unsent = set()
        head_sent = self._head_sent
        first = True
        for entry in self._queue:
            wire = entry.wire
            if wire is None:
                continue
            skip = head_sent if first else 0
            first = False
            if isinstance(entry, WriteChunk):
                unsent.update(frame_opaques(wire, skip))
            elif not skip and not entry.written:
                unsent.add(entry.opaque)
        return unsent

    # ------------------------------------------------------------- connecting

    def add_listener(self, fn: Callable[["KVConnection", Optional[Tuple[int, str]]], None]) -> None:
        """Call ``fn(conn, error)`` once, when the current connection attempt
        ends (``error`` is None on success). Starts connecting if idle."""
        if self.state is READY:
            fn(self, None)
            return
        self._listeners.append(fn)
        if self.state is IDLE:
            self.connect()

    def connect(self) -> None:
        """Start connecting (idle connections only)."""
        if self.state is not IDLE:
            return
        self.state = CONNECTING
        self._connect_started = self.engine.clock()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: connecting%s", self.authority, " (again: %s)" % self.last_error[1] if self.last_error else "")
        self._arm_connect_timer(self.engine.settings.connect_timeout)
        self._open_transport()

    def _arm_connect_timer(self, seconds: float) -> None:
        if self._connect_timer is None:
            self._connect_timer = self.iops.timer_event_factory()
            self._connect_timer._handler = self._on_connect_timeout
        self.iops.update_timer(self._connect_timer, PYCBC_EVACTION_WATCH, int(math.ceil(seconds * 1e6)))

    def _disarm_connect_timer(self) -> None:
        if self._connect_timer is not None:
            self.iops.update_timer(self._connect_timer, PYCBC_EVACTION_UNWATCH, 0)

    def _open_transport(self) -> None:
        """A new stream for this attempt: resolve, connect, [TLS]; then the
        handshake (``_on_connected``). The socket comes from the engine's
        ``socket_factory`` when it has one (tests), else from dial.py."""
        engine = self.engine
        settings = engine.settings
        self.generation += 1
        self._decoder = FrameDecoder()
        # Every reply may come in a run (see _deliver_run).
        self._decoder.run_window(0, _ALL_OPAQUES)
        transport = self._transport = Transport(
            self.iops, self.host, self.port, resolve=functools.partial(resolve, engine),
            on_connected=self._on_connected, on_readable=self._read_handshake, on_writable=self._write_handshake,
            on_eof=self._on_eof, on_error=self._on_transport_error, on_tls_started=self._on_tls_started,
            tls_context=engine.tls_context, socket_factory=engine.socket_factory,
            nodelay=settings.tcp_nodelay, keepalive=settings.tcp_keepalive, read_size=READ_SIZE,
            tls_backlog=WRITE_CHUNK)
        transport.connect()

    @property
    def _sock(self) -> Any:
        """The current socket, or None (diagnostics and tests only: all I/O
        goes through the transport)."""
        transport = self._transport
        return transport.sock if transport is not None else None

    def _on_transport_error(self, rc: int, message: str) -> None:
        if self.state is CONNECTING:
            # Resolving or connecting failed; this may be inside a caller's
            # call (a numeric address refused at once).
            self._fail_soon(rc, message)
        else:
            self._fail(rc, message)

    def _detach(self) -> None:
        """Close the socket and free its event; keep pending operations."""
        transport = self._transport
        self._transport = None
        self._session = None
        self._want_write = False
        self._hs_out = b""
        self._tls = None
        self._probe = None
        if transport is not None:
            transport.close()

    def _on_connect_timeout(self, _flags: int) -> None:
        timeout = self.engine.settings.connect_timeout
        if self.state is CONNECTING:
            self._fail(RC.CONNECT, "timed out connecting to %s after %.1fs" % (self.authority, timeout))
        elif self.state is TLS_HANDSHAKE:
            self._fail(RC.CONNECT, "timed out in the TLS handshake with %s after %.1fs" % (self.authority, timeout))
        elif self.state is NEGOTIATING and self._session is not None:
            self._apply(self._session.timeout(timeout))

    def _on_tls_started(self) -> None:
        self.state = TLS_HANDSHAKE

    def _on_connected(self) -> None:
        transport = self._transport
        assert transport is not None
        self.local_address = transport.local_address
        self._tls = transport.tls
        self.state = NEGOTIATING
        self._start_handshake()

    # -------------------------------------------------------------- handshake
    #
    # HELLO -> [GET_ERROR_MAP if XERROR] -> [SASL if credentials]
    #       -> [SELECT_BUCKET if granted and a bucket is named] -> READY
    # Each step is one request, answered before the next goes out.

    def _start_handshake(self) -> None:
        self._want_write = False
        self._hs_out = b""
        settings = self.engine.settings
        hello = not self.hello_disabled
        if not hello:
            self.features = frozenset()
        if hello and settings.hello_agent:
            agent = json.dumps({"a": settings.client_string[:150], "i": self.engine.client_id},
                               separators=(",", ":")).encode("utf-8")
        else:
            agent = b""
        user, password = settings.sasl_credentials()
        session = self._session = Session(
            self.authority, self.engine.next_opaque, hello=hello, features=settings.hello_features, agent=agent,
            user=user, password=password, mech_force=settings.sasl_mech_force, bucket=settings.bucket,
            select_bucket=settings.select_bucket, tls=self._tls is not None)
        if hello:
            # Silence is only tolerated for part of the connect timeout.
            elapsed = self.engine.clock() - self._connect_started
            budget = max(0.05, settings.connect_timeout - elapsed)
            self._arm_connect_timer(budget / 2)
        self._apply(session.start())

    def _apply(self, events: List[Any]) -> None:
        """Carry out what the session asked for, in order."""
        for event in events:
            if self.state is not NEGOTIATING:
                return
            kind = type(event)
            if kind is Send:
                self._hs_out += event.data
                self._want_write = True
                self._transport.want_write(True)  # type: ignore[union-attr]
            elif kind is HelloAnswered:
                if event.granted is None:  # not a Couchbase server: no HELLO from now on
                    self.hello_disabled = True
                    self.features = frozenset()
                else:
                    self.features = event.granted
                # the rest of the handshake gets what is left of the connect timeout
                elapsed = self.engine.clock() - self._connect_started
                self._arm_connect_timer(max(0.05, self.engine.settings.connect_timeout - elapsed))
            elif kind is Done:
                self._handshake_done(event)
            elif kind is Failed:
                self._fail(event.rc, event.message)
            elif kind is RestartWithoutHello:
                log.info("%s; reconnecting without it", event.reason)
                self._restart_without_hello()

    def _restart_without_hello(self) -> None:
        self.hello_disabled = True
        self._detach()
        self.state = IDLE
        self.connect()

    def _handshake_done(self, done: Done) -> None:
        transport = self._transport
        assert transport is not None
        self._session = None
        self.features = done.features
        if done.error_map is not None:
            self.error_map = done.error_map
        self._disarm_connect_timer()
        self.apply_compression()
        self.state = READY
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: ready after %.1f ms (features %s)", self.authority,
                      (self.engine.clock() - self._connect_started) * 1e3,
                      ",".join("0x%02x" % f for f in sorted(self.features)) or "none")
        self.last_error = None
        self.last_read = self.engine.clock()
        # from now on readiness goes straight to the dispatch loop
        transport.on_readable = self._read
        transport.on_writable = self._write
        self._want_write = False
        transport.want_write(False)
        if self._queue:
            self._request_write()
        listeners, self._listeners = self._listeners, []
        for fn in listeners:
            fn(self, None)
        self.engine.on_connection_ready(self)
        if done.rest and self.state is READY and self._transport is transport:
            # what the server sent after its last handshake reply, in the
            # same read: the normal decoder takes it from here
            transport.unread(done.rest)
            self._read()

    # ------------------------------------------------------------------- I/O

    def _write(self) -> None:
        """Write what the queue holds (READY only)."""
        transport = self._transport
        data = self._gather()
        if not data:
            self._consume(0)
            self._want_write = False
            transport.want_write(False)  # type: ignore[union-attr]
            return
        sent = transport.send(data)  # type: ignore[union-attr]
        if sent < 0:
            return
        self._consume(sent)
        if not self._queue:
            self._want_write = False
            transport.want_write(False)  # type: ignore[union-attr]

    def _gather(self) -> Any:
        """The next bytes to write: from the head of the queue (less what was
        sent of it), skipping withdrawn entries, up to about WRITE_CHUNK."""
        queue = self._queue
        if not self._head_sent and not self._dead:
            # The common case, with C-level loops: whole requests, none
            # withdrawn, a few hundred at most per write.
            parts = [entry.wire for entry in islice(queue, _GATHER_FAST)]
            total = sum(map(len, parts))
            if total <= WRITE_CHUNK:
                self._gathered = (total, len(parts))
                return parts[0] if len(parts) == 1 else b"".join(parts)
        parts = []
        size = 0
        skip = self._head_sent
        for entry in queue:
            wire = entry.wire
            if wire is None:
                continue
            if skip:
                wire = memoryview(wire)[skip:]
                skip = 0
            parts.append(wire)
            size += len(wire)
            if size >= WRITE_CHUNK:
                break
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _consume(self, n: int) -> None:
        """``n`` bytes of what :meth:`_gather` returned were written: mark the
        requests they belong to as written, drop the finished ones."""
        queue = self._queue
        popleft = queue.popleft
        gathered = self._gathered
        if gathered is not None:
            self._gathered = None
            if n == gathered[0]:
                # All that the fast path of _gather took was written.
                for _ in range(gathered[1]):
                    entry = popleft()
                    entry.written = True
                    entry.wire = None
                return
        head_sent = self._head_sent
        while queue:
            entry = queue[0]
            wire = entry.wire
            if wire is None:
                popleft()
                self._dead -= 1
                continue
            if not n:
                break
            entry.written = True
            left = len(wire) - head_sent
            if n >= left:
                n -= left
                head_sent = 0
                entry.wire = None
                popleft()
            else:
                head_sent += n
                break
        self._head_sent = head_sent

    def _write_handshake(self) -> None:
        """Write the pending handshake request (NEGOTIATING)."""
        transport = self._transport
        assert transport is not None
        data = self._hs_out
        if data:
            sent = transport.send(data)
            if sent < 0:
                return
            data = self._hs_out = data[sent:]
        if not data:
            self._want_write = False
            transport.want_write(False)

    def _on_eof(self) -> None:
        if self.state is NEGOTIATING and self._session is not None:
            self._apply(self._session.eof())  # a server that closes on HELLO is not lost
            return
        self._fail(RC.NETWORK, "connection to %s closed by the server" % self.authority)

    def _frames(self, during: str) -> Optional[List[Any]]:
        """Read and decode what the stream has; None when there is nothing or
        the connection failed (already handled)."""
        data = self._transport.recv()  # type: ignore[union-attr]
        if data is None:
            return None
        self.last_read = self.engine.clock()
        try:
            return self._decoder.feed(data)  # type: ignore[union-attr]
        except FrameError as exc:
            self._fail(RC.PROTOCOL, "invalid data from %s%s: %s" % (self.authority, during, exc))
            return None

    def drain(self, limit: int = 16) -> None:
        """Read and deliver what the socket holds now (at most ``limit``
        reads), without waiting for the loop to report it readable."""
        for _ in range(limit):
            if self.state is not READY or not self._read():
                return

    def _read(self) -> bool:
        """Read once and deliver every complete reply; False when there was
        nothing to read (or the connection failed)."""
        frames = self._frames("")
        if not frames:
            return frames is not None
        self.last_activity = self.last_read
        decoder = self._decoder
        if decoder.server_requests:  # type: ignore[union-attr]
            # A server request's opaque is the server's own: every frame of
            # this read is matched by its magic first.
            decoder.server_requests = False  # type: ignore[union-attr]
            rest = iter(frames)
            self._deliver_from(next(rest), rest, runs=False)
            self.engine.deadlines.trim()
            return True
        pop = self.pending.pop
        inflate = self._inflate
        rest = iter(frames)
        for frame in rest:
            op = pop(frame[F_OPAQUE], None)
            # The common reply (a success, not compressed) takes the short
            # way; everything else goes through _unusual.
            if op is None or frame[F_STATUS] or (inflate and frame[F_DATATYPE] & _SNAPPY):
                self._unusual(frame, op)
                continue
            try:
                if op.multi_reply:
                    if op.takes_runs:
                        # A batch takes its run of replies in one call; the
                        # rest of this read goes the careful way.
                        self._deliver_from(op.take_run(frame, rest, self.pending), rest)
                        break
                    if not op.on_part(frame):
                        self.pending[frame[F_OPAQUE]] = op
                    continue
                op.done = True
                op.on_response(frame)
            except Exception:  # never let a result handler break the stream
                log.exception("completing %s failed", self.engine.settings.describe_op(op))
        self.engine.deadlines.trim()
        return True

    def _deliver_from(self, frame: Any, rest: Any, runs: bool = True) -> None:
        """Deliver ``frame`` and every frame left in ``rest``, the careful
        way: the loop of :meth:`_read` after a batch took a run (runs of
        other batches may follow: a loop, not recursion, however they
        alternate), or, with ``runs=False``, a whole read that holds server
        requests (magic 0x82: their opaque is the server's own, so each
        frame's magic is looked at first, and no batch takes a run)."""
        pending = self.pending
        pop = pending.pop
        inflate = self._inflate
        while frame is not None:
            if frame[F_MAGIC] == Magic.SERVER_REQUEST:
                self._unusual(frame, None)
                frame = next(rest, None)
                continue
            op = pop(frame[F_OPAQUE], None)
            if op is None or frame[F_STATUS] or (inflate and frame[F_DATATYPE] & _SNAPPY):
                self._unusual(frame, op)
            else:
                try:
                    if runs and op.takes_runs:
                        frame = op.take_run(frame, rest, pending)
                        continue
                    if op.multi_reply:
                        if not op.on_part(frame):
                            pending[frame[F_OPAQUE]] = op
                    else:
                        op.done = True
                        op.on_response(frame)
                except Exception:  # never let a result handler break the stream
                    log.exception("completing %s failed", self.engine.settings.describe_op(op))
            frame = next(rest, None)

    def _unusual(self, frame: Any, op: Optional[KVOp]) -> None:
        """Deliver a reply that is not a plain success: compressed, an error
        status (maybe retried), part of a multi-reply operation, a server
        request, one nobody waits for any more, or a run of plain replies
        (FrameDecoder.run_window)."""
        if frame[F_MAGIC] == RUN:
            self._deliver_run(frame, op)
            return
        failure = None
        if self._inflate and frame[F_DATATYPE] & _SNAPPY:
            try:
                frame = _inflate(frame)
            except _snappy.InflateError as exc:
                rc = RC.LIMIT_EXCEEDED if isinstance(exc, _snappy.InflateLimitError) else RC.PROTOCOL
                failure = (rc, "%s: %s" % (self.authority, exc))
        if op is None:
            if frame[F_MAGIC] == Magic.SERVER_REQUEST and failure is None:
                try:
                    self.engine.on_server_request(self, frame)
                except Exception:  # the other frames of this read still go out
                    log.exception("handling server request 0x%02x from %s failed", frame[F_OPCODE], self.authority)
            elif failure is not None:
                log.warning("dropping a frame nobody waits for: %s", failure[1])
            else:
                tracer = getattr(self.engine, "tracer", None)
                if tracer is not None:
                    tracer.orphan_reply(self, frame)  # a reply after its operation timed out?
            return  # the operation timed out or was abandoned
        try:
            if failure is not None:
                _undeliverable(op, frame, failure[0], failure[1])
                return
            if frame[F_STATUS] in self.engine.retry_statuses and self.engine.retry_after_status(self, op, frame):
                return
            if op.multi_reply:
                if not op.on_part(frame):
                    self.pending[frame[F_OPAQUE]] = op
                return
            op.done = True
            op.on_response(frame)
        except Exception:  # never let a result handler break the stream
            log.exception("completing %s failed", self.engine.settings.describe_op(op))

    def _deliver_run(self, run: Any, op: Optional[KVOp]) -> None:
        """A run of plain replies (FrameDecoder.run_window) whose first
        opaque belonged to ``op``. Single reads (:attr:`KVOp.takes_plain`)
        take their reply as ``(cas, flags, value)``, with no frame made;
        a batch that takes runs settles its part of the run at once; from
        any other reply on (one nobody waits for, an operation that wants
        frames, a batch that declined) the rest of the run is made frames
        and delivered the careful way."""
        pending = self.pending
        pop = pending.pop
        while True:  # once per batch the run goes through
            first = run[F_OPAQUE]
            opaque = first
            for cas, flags, value in zip(run[F_CAS], run[F_EXTRAS], run[F_VALUE]):
                if opaque != first:
                    op = pop(opaque, None)
                if op is None or not op.takes_plain:
                    break
                op.done = True
                try:
                    op.on_plain(cas, flags, value)
                except Exception:  # never let a result handler break the stream
                    log.exception("completing %s failed", self.engine.settings.describe_op(op))
                opaque += 1
            else:
                return
            if opaque != first:
                run = run_from(run, opaque - first)
            taken = 0
            if op is not None and op.takes_runs:
                try:
                    taken = op.take_plain_run(run, pending)  # type: ignore[attr-defined]
                except Exception:  # never let a result handler break the stream
                    log.exception("completing %s failed", self.engine.settings.describe_op(op))
                    # The replies past the batch's opaques are others': go on with them.
                    batch: Any = op
                    taken = max(1, min(len(run[F_VALUE]), batch.base + len(batch) - opaque))
            elif op is not None:
                pending[opaque] = op
            if not taken:
                frames = iter(expand_run(run))
                self._deliver_from(next(frames), frames)
                return
            if taken == len(run[F_VALUE]):
                return
            run = run_from(run, taken)
            op = pop(run[F_OPAQUE], None)

    def _read_handshake(self) -> None:
        """Feed what the stream has to the handshake (NEGOTIATING)."""
        data = self._transport.recv()  # type: ignore[union-attr]
        if data is None or self._session is None:
            return
        self.last_read = self.engine.clock()
        self._apply(self._session.receive(data))

    # ------------------------------------------------------ dead connections

    def suspect(self) -> None:
        """An operation timed out here although nothing at all was read from
        the socket during its lifetime. Send a NOOP: if nothing is read from
        the connection before that probe's own deadline, the connection is
        dead (a black hole: half-open, or a peer that stopped) and is
        replaced."""
        if self._probe is not None or self.state is not READY:
            return
        timeout = min(max(self.engine.settings.operation_timeout, PROBE_MIN_TIMEOUT), PROBE_MAX_TIMEOUT)
        probe = self._probe = _Probe(self, timeout)
        probe.target = self
        try:
            self.engine.submit(probe)
        except Exception:  # the engine is closing
            self._probe = None

    def _probe_ended(self, probe: "_Probe", answered: bool) -> None:
        if self._probe is probe:
            self._probe = None
        if answered or self.state is not READY or probe.generation != self.generation:
            return
        if self.last_read > probe.sent_after:
            return  # something arrived meanwhile: slow, not dead
        silent = self.engine.clock() - self.last_read
        log.warning("%s: nothing received for %.1fs, not even the reply to a NOOP probe: the connection looks "
                    "dead; reconnecting", self.authority, silent)
        self._fail(RC.NETWORK, "no reply from %s for %.1fs (not even to a NOOP probe): the connection was "
                   "declared dead and is being replaced" % (self.authority, silent))

    # ---------------------------------------------------------------- failure

    def _defer(self, fn: Callable[[], None]) -> None:
        self.engine.defer(fn)

    def _fail_soon(self, rc: int, message: str) -> None:
        """Fail from a zero-delay timer (we may be inside a caller's call)."""
        self._defer(lambda: self._fail(rc, message) if self.state in (CONNECTING, TLS_HANDSHAKE, NEGOTIATING)
                    else None)

    def _fail(self, rc: int, message: str) -> None:
        """The socket (or the attempt to get one) failed: hand every operation
        routed here to the engine (which retries or fails each, knowing
        whether its request was written) and go back to IDLE; the next
        operation reconnects."""
        if self.state is CLOSED:
            return
        was_ready = self.state is READY
        log.debug("%s: %s", self.authority, message)
        tracer = getattr(self.engine, "tracer", None)
        if tracer is not None:
            tracer.forget_connection(self)
        self.last_error = (rc, message)
        self._disarm_connect_timer()
        pending = self._take_pending()
        self._detach()
        self.state = IDLE
        listeners, self._listeners = self._listeners, []
        for fn in listeners:
            fn(self, (rc, message))
        if not was_ready and rc == RC.NETWORK:
            rc = RC.CONNECT
        self.engine.connection_lost(self, pending, rc, message)
        self.engine.on_connection_failed(self, rc, message)

    def _take_pending(self) -> List[Tuple[int, KVOp, bool]]:
        """Empty the pending table and the write queue; return every
        (opaque, op, written) still waiting for a reply."""
        unsent = self._unsent_opaques()
        pending = [(opaque, op, opaque not in unsent) for opaque, op in self.pending.items()]
        self.pending.clear()
        self._queue = deque()
        self._head_sent = 0
        self._dead = 0
        self._gathered = None
        return pending

    def close(self, rc: int = RC.OBJECT_DESTROYED, message: str = "the bucket was closed") -> List[KVOp]:
        """Close for good; return the operations that were still pending."""
        return [op for _opaque, op, _written in self.close_pending(rc, message)]

    def close_pending(self, rc: int = RC.OBJECT_DESTROYED,
                      message: str = "the bucket was closed") -> List[Tuple[int, KVOp, bool]]:
        """Close for good; return the (opaque, op, written) still pending."""
        if self.state is CLOSED:
            return []
        self._disarm_connect_timer()
        if self._connect_timer is not None:
            self.iops.update_timer(self._connect_timer, PYCBC_EVACTION_CLEANUP, 0)
            self._connect_timer = None
        pending = self._take_pending()
        self._detach()
        self.state = CLOSED
        listeners, self._listeners = self._listeners, []
        for fn in listeners:
            fn(self, (rc, message))
        return pending

    def abandon_after_fork(self) -> List[Tuple[int, KVOp]]:
        """In the child of a fork: let go of the inherited socket and go back
        to IDLE (the next operation reconnects); return the (opaque, op)
        pairs that were pending (the parent's). The socket is neither read,
        written nor shut down (its stream belongs to the parent): only the
        child's copy of the descriptor is closed (see
        :meth:`Transport.abandon_after_fork`). No IOPS call is made (the
        IOPS has forgotten the events from before the fork, or cannot be
        trusted with them); listeners are dropped without being called."""
        if self._connect_timer is not None:
            self._connect_timer._handler = _dead_handler
        transport = self._transport
        self._transport = self._connect_timer = None
        if transport is not None:
            transport.abandon_after_fork()
        if self.state is not CLOSED:
            self.state = IDLE
        self._want_write = False
        self._hs_out = b""
        self._tls = None
        self._decoder = None
        self._session = None
        self._probe = None
        self._listeners = []
        self.last_error = None
        pending = list(self.pending.items())
        self.pending.clear()
        self._queue = deque()
        self._head_sent = 0
        self._dead = 0
        self._gathered = None
        return pending


class _Probe(KVOp):
    """The NOOP of the dead-connection rule (see KVConnection.suspect)."""

    __slots__ = ("probe_conn", "generation", "sent_after")
    idempotent = True
    traced = False

    def __init__(self, conn: KVConnection, timeout: float) -> None:
        KVOp.__init__(self, Opcode.NOOP, timeout=timeout)
        self.probe_conn = conn
        self.generation = conn.generation
        self.sent_after = conn.last_read

    def on_response(self, frame: Any) -> None:
        self.probe_conn._probe_ended(self, True)

    def on_error(self, rc: int, message: str) -> None:
        self.probe_conn._probe_ended(self, rc != RC.TIMEOUT)

    def describe(self) -> str:
        return "NOOP probe of %s" % self.probe_conn.authority


class WriteChunk:
    """The requests of one batch bound for one connection, written as one
    piece (``wire``); withdrawn as a whole while none of it is written."""

    __slots__ = ("conn", "wire", "written")

    def __init__(self, conn: KVConnection, wire: bytes) -> None:
        self.conn = conn
        #: bytes, or a memoryview of them once cut short (see _withdraw)
        self.wire: Any = wire
        self.written = False


def _dead_handler(_flags: int) -> None:
    """Installed on freed events so a late callback from the loop is harmless."""


#: Values shorter than this are not worth compressing.
_MIN_COMPRESS = 32
#: ...nor ones that shrink by less than 17 % (libcouchbase's rule of thumb).
_MIN_RATIO = 0.83
#: Opcodes whose value is a document (SET family, APPEND, PREPEND).
_COMPRESSIBLE = frozenset({Opcode.SET, Opcode.ADD, Opcode.REPLACE, Opcode.APPEND, Opcode.PREPEND, Opcode.SETQ,
                           Opcode.ADDQ, Opcode.REPLACEQ, Opcode.APPENDQ, Opcode.PREPENDQ})


def _compress(value: bytes, datatype: int, min_ratio: Optional[float]) -> Tuple[bytes, int]:
    """Snappy-compress ``value`` if that saves enough (see snappy.py)."""
    return _snappy.compress(value, datatype, min_ratio)


def _inflate(frame: Any) -> Any:
    """The frame with its value inflated (raises snappy.InflateError)."""
    return _snappy.inflate_frame(frame)


def _undeliverable(op: Any, frame: Any, rc: int, message: str) -> None:
    """Fail the one operation (or batch entry) whose reply ``frame`` cannot
    be delivered, though it was read whole (the stream is still in step)."""
    if op.multi_reply and hasattr(op, "fail_entry"):
        op.fail_entry(frame[F_OPAQUE] - op.base, rc, message)
        return
    op.done = True
    op.on_error(rc, message)

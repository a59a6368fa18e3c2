"""Threshold and orphan reports: the ``enable_tracing`` family of options.

What libcouchbase 2.9+ calls *response time observability*, in our words.
With ``enable_tracing`` on, the engine times each operation and keeps, per
service (``kv``, ``n1ql``, ``view``, ``fts``, ``analytics``):

* the slowest operations over that service's threshold
  (``tracing_threshold_kv``...), at most ``tracing_threshold_queue_size``
  of them, reported every ``tracing_threshold_queue_flush_interval``;
* the *orphans*: replies that arrived after their operation had timed out
  (so nobody read them), at most ``tracing_orphaned_queue_size``, reported
  every ``tracing_orphaned_queue_flush_interval``.

Each report is one log record per service on :data:`LOGGER` (INFO for the
slow operations, WARNING for orphans) whose message ends with one JSON
object, the shape libcouchbase's threshold logging tracer used::

    {"service": "kv", "count": 3, "top": [{"operation_name": "get", ...}, ...]}

``count`` is how many operations crossed the threshold (or were orphaned)
during the interval; ``top`` the slowest of them, slowest first. An entry
has ``operation_name``, ``last_operation_id`` (the opaque, ``0x..``),
``last_local_address``/``last_remote_address``, ``last_local_id`` (this
client's id and the connection's number), ``total_us``, and the phases we
measured: ``encode_us`` (packing the request into the write queue),
``queue_us`` (queued until the socket took it), ``dispatch_us`` (written
until the reply was read), ``decode_us`` (building the result), and
``server_us`` when the server reported its own duration (HELLO "tracing").
Orphans have ``timeout_ms`` too; a ``*_multi`` batch is one entry with
``batch_size``. Keys and values never appear.

Cost. Nothing here runs while tracing is off: the engine installs the
timing versions of ``Engine.submit``/``submit_batch`` and of each
connection's write handler (``Engine._retrace``) only when tracing or an
OpenTelemetry tracer is turned on, as instance attributes that shadow the
plain methods, and removes them when both are off. The flush timers are
IOPS timers, armed when a queue gets its first entry (an idle bucket
wakes nobody).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from couchbase_core._engine.protocol import (
    F_FRAMING,
    F_OPAQUE,
    FrameError,
    ResponseFrameInfoId,
    decode_frame_infos,
    opcode_name,
)
from couchbase_core.exceptions import RC, exc_from_rc
from couchbase_core.iops.base import (
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
)

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.connection import KVConnection
    from couchbase_core._engine.ops import KVOp

__all__ = ["LOGGER", "SERVICES", "HTTP_SERVICES", "Tracer", "Entry", "server_duration_us", "end_otel",
           "is_otel_tracer"]

#: The logger the reports go to (a child of ``couchbase_core.engine``;
#: ``couchbase.tracer`` under :func:`couchbase_core.enable_logging`).
LOGGER = "couchbase_core.engine.tracing"
log = logging.getLogger(LOGGER)

#: Reported services, in report order, and their threshold options.
SERVICES = ("kv", "n1ql", "view", "fts", "analytics")
THRESHOLD_OPTION = {service: "tracing_threshold_%s" % service for service in SERVICES}
#: Engine HTTP service name -> reported service (``mgmt`` is not reported).
HTTP_SERVICES = {"n1ql": "n1ql", "capi": "view", "fts": "fts", "cbas": "analytics"}

#: At most this many timed-out requests per connection are remembered
#: while their reply may still come (to report it as an orphan).
MAX_AWAITED = 4096
#: The write hook looks at most this many queued requests per write.
MAX_STAMPED = 4096


class Entry:
    """One timed operation, as reported."""

    __slots__ = ("operation_name", "operation_id", "local", "remote", "local_id", "total_us", "server_us",
                 "encode_us", "queue_us", "dispatch_us", "decode_us", "timeout_ms", "batch_size")

    def __init__(self, operation_name: str, operation_id: str = "", local: str = "", remote: str = "",
                 local_id: str = "") -> None:
        self.operation_name = operation_name
        self.operation_id = operation_id
        self.local = local
        self.remote = remote
        self.local_id = local_id
        self.total_us = 0
        self.server_us: Optional[int] = None
        self.encode_us: Optional[int] = None
        self.queue_us: Optional[int] = None
        self.dispatch_us: Optional[int] = None
        self.decode_us: Optional[int] = None
        self.timeout_ms: Optional[int] = None
        #: Keys of a ``*_multi`` batch (timed as one entry).
        self.batch_size: Optional[int] = None

    def as_dict(self) -> Dict[str, Any]:
        """The report entry: only the fields that were measured."""
        out: Dict[str, Any] = {"operation_name": self.operation_name}
        if self.operation_id:
            out["last_operation_id"] = self.operation_id
        if self.local:
            out["last_local_address"] = self.local
        if self.remote:
            out["last_remote_address"] = self.remote
        if self.local_id:
            out["last_local_id"] = self.local_id
        for name in ("batch_size", "server_us", "encode_us", "queue_us", "dispatch_us", "decode_us", "timeout_ms"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["total_us"] = self.total_us
        return out


class _Top:
    """The N slowest entries of one interval (a min-heap) and how many came."""

    __slots__ = ("heap", "count", "seq")

    def __init__(self) -> None:
        self.heap: List[Tuple[int, int, Entry]] = []
        self.count = 0
        self.seq = itertools.count()

    def add(self, entry: Entry, size: int) -> None:
        self.count += 1
        item = (entry.total_us, next(self.seq), entry)
        if len(self.heap) < size:
            heapq.heappush(self.heap, item)
        elif item[0] > self.heap[0][0]:
            heapq.heapreplace(self.heap, item)

    def report(self, service: str) -> Dict[str, Any]:
        top = [e.as_dict() for _t, _s, e in sorted(self.heap, key=lambda i: (-i[0], i[1]))]
        return {"service": service, "count": self.count, "top": top}


class _Queue:
    """Per-service tops reported together on one flush timer."""

    def __init__(self, tracer: "Tracer", size_option: str, interval_option: str, level: int, title: str) -> None:
        self.tracer = tracer
        self.size_option = size_option
        self.interval_option = interval_option
        self.level = level
        self.title = title
        self.tops: Dict[str, _Top] = {}
        self.timer: Any = None

    def add(self, service: str, entry: Entry) -> None:
        top = self.tops.get(service)
        if top is None:
            top = self.tops[service] = _Top()
        top.add(entry, int(self.tracer.options[self.size_option]))
        if self.timer is None:
            self._arm()

    def _arm(self) -> None:
        iops = self.tracer.iops
        timer = self.timer = iops.timer_event_factory()
        timer._handler = self._fire
        seconds = float(self.tracer.options[self.interval_option])
        iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(math.ceil(seconds * 1e6)))

    def _fire(self, _flags: int) -> None:
        self._drop_timer()
        self.flush()

    def _drop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            iops = self.tracer.iops
            iops.update_timer(timer, PYCBC_EVACTION_UNWATCH, 0)
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)

    def flush(self) -> List[Dict[str, Any]]:
        """Log (and return) one report per service with entries; start a new interval."""
        tops, self.tops = self.tops, {}
        reports = [tops[s].report(s) for s in SERVICES if s in tops]
        if reports and log.isEnabledFor(self.level):
            for report in reports:
                log.log(self.level, "%s: %s", self.title, json.dumps(report, separators=(",", ":")))
        return reports

    def close(self) -> None:
        self._drop_timer()
        self.tops = {}

    def abandon_after_fork(self) -> None:
        """In a forked child: forget the parent's entries and timer without
        an IOPS call (the IOPS forgot its events, or cannot be trusted)."""
        if self.timer is not None:
            self.timer._handler = _ignore
        self.timer = None
        self.tops = {}


class Tracer:
    """The threshold and orphan queues of one engine, and the hooks that
    time its operations (see the module docs).

    Args:
        iops: where the flush timers live.
        options: the ``tracing_*`` settings (read at each use, so property
            changes apply at once).
        clock: the engine's monotonic clock.
        client_id: reported in ``last_local_id``.
    """

    def __init__(self, iops: Any, options: Dict[str, float], clock: Callable[[], float], client_id: str,
                 bucket: Optional[str] = None) -> None:
        self.iops = iops
        self.options = options
        self.clock = clock
        self.client_id = client_id
        self.bucket = bucket
        #: True while the threshold and orphan reports are on (``enable_tracing``).
        self.reports = False
        #: The OpenTelemetry tracer spans go to (``tracer=``), or None.
        self.otel: Any = None
        self.threshold = _Queue(self, "tracing_threshold_queue_size", "tracing_threshold_queue_flush_interval",
                                logging.INFO, "Operations over threshold")
        self.orphans = _Queue(self, "tracing_orphaned_queue_size", "tracing_orphaned_queue_flush_interval",
                              logging.WARNING, "Orphan responses observed")
        #: connection -> OrderedDict((generation, opaque) -> (entry, started)):
        #: written requests that timed out, whose reply may still come.
        self._awaited: Dict[Any, "OrderedDict[Tuple[int, int], Tuple[Entry, float]]"] = {}

    # ------------------------------------------------------------ recording

    def finished(self, service: str, entry: Entry) -> None:
        """An operation of ``service`` ended: queue it if over the threshold."""
        if self.reports and entry.total_us >= self.options[THRESHOLD_OPTION[service]] * 1e6:
            self.threshold.add(service, entry)

    def flush(self) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """Report both queues now (tests; ``close``): (threshold, orphan) reports."""
        return self.threshold.flush(), self.orphans.flush()

    def abandon_after_fork(self) -> None:
        """In a forked child: drop what the parent measured and its timers
        (no IOPS call; the child starts with empty queues)."""
        self.threshold.abandon_after_fork()
        self.orphans.abandon_after_fork()
        self._awaited.clear()

    def close(self) -> None:
        """Report what is queued and stop the timers."""
        self.flush()
        self.threshold.close()
        self.orphans.close()
        self._awaited.clear()

    # ----------------------------------------------------------------- KV

    def kv_submitted(self, op: "KVOp", started: float, queued: float) -> None:
        """Engine.submit just queued ``op`` (``started``: when the engine got
        it; ``queued``: when its request was in the write queue or written)."""
        span = op.__dict__.get("_span")
        if span is None:
            span = _KVSpan(self, op, started)
        span.queued = queued
        span.written_at = queued if op.written else 0.0
        if span.encode is None:
            span.encode = queued - started

    def batch_submitted(self, batch: Any, started: float, queued: float) -> None:
        """Engine.submit_batch just queued the keys of ``batch`` (a
        ``*_multi`` call): it is timed as one entry, until its last key
        is settled."""
        _BatchSpan(self, batch, started, queued)

    def kv_written(self, entries: List[Any], now: float) -> None:
        """The connection's write hook: ``entries`` just reached the socket."""
        for entry in entries:
            span = getattr(entry, "_span", None)
            if span is not None and not span.written_at:
                span.written_at = now

    def await_orphan(self, op: "KVOp", entry: Entry, started: float) -> None:
        """``op`` timed out after being written: remember it until its reply
        comes (reported as an orphan) or its connection goes."""
        conn = op.conn
        if conn is None or not self.reports:
            return
        awaited = self._awaited.get(conn)
        if awaited is None:
            awaited = self._awaited[conn] = OrderedDict()
        awaited[(conn.generation, op.opaque)] = (entry, started)
        if len(awaited) > MAX_AWAITED:
            awaited.popitem(last=False)

    def orphan_reply(self, conn: "KVConnection", frame: Any) -> None:
        """A reply nobody waits for arrived on ``conn``: if it answers a
        request that timed out, report it as an orphan."""
        awaited = self._awaited.get(conn)
        if not awaited:
            return
        found = awaited.pop((conn.generation, frame[F_OPAQUE]), None)
        if found is None:
            return
        entry, started = found
        entry.total_us = int((self.clock() - started) * 1e6)
        server = server_duration_us(frame)
        if server is not None:
            entry.server_us = server
        self.orphans.add("kv", entry)

    def forget_connection(self, conn: "KVConnection") -> None:
        """``conn`` lost its socket: no reply of the old one can come."""
        self._awaited.pop(conn, None)

    # ---------------------------------------------------------------- HTTP

    def http_started(self, service: str, method: str, path: str) -> "_HTTPSpan":
        """An HTTP request to ``service`` (the engine's name) starts."""
        return _HTTPSpan(self, HTTP_SERVICES[service], "%s %s" % (method, path.split("?", 1)[0][:80]))

    # --------------------------------------------------------- OpenTelemetry

    def start_otel(self, name: str, service: str) -> Any:
        """An OpenTelemetry span for one operation, started now (its parent
        is the caller's current span), or None without a tracer."""
        otel = self.otel
        if otel is None:
            return None
        from opentelemetry.trace import SpanKind

        attributes: Dict[str, Any] = {"db.system.name": "couchbase", "db.system": "couchbase",
                                      "db.operation.name": name, "db.operation": name,
                                      "db.couchbase.service": service}
        if self.bucket:
            attributes["db.namespace"] = attributes["db.name"] = self.bucket
        return otel.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)


def end_otel(span: Any, entry: Entry, error: Optional[Tuple[int, str]]) -> None:
    """Finish an OpenTelemetry span with what was measured (never a key or
    a value: only names, ids, addresses and durations)."""
    if entry.remote:
        host, _sep, port = entry.remote.rpartition(":")
        span.set_attribute("server.address", host.strip("[]"))
        if port.isdigit():
            span.set_attribute("server.port", int(port))
    if entry.local:
        span.set_attribute("db.couchbase.local_address", entry.local)
    if entry.operation_id:
        span.set_attribute("db.couchbase.operation_id", entry.operation_id)
    if entry.local_id:
        span.set_attribute("db.couchbase.local_id", entry.local_id)
    if entry.server_us is not None:
        span.set_attribute("db.couchbase.server_duration", entry.server_us)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        # the error's message may name the key: the span gets its class and code only
        name = type(exc_from_rc(error[0], "")).__name__
        span.set_attribute("error.type", name)
        span.set_status(Status(StatusCode.ERROR, "%s (rc=0x%02x)" % (name, error[0])))
    span.end()


class _KVSpan:
    """The timing of one KV operation while tracing is on. It shadows the
    operation's ``on_response``/``on_error`` (and wraps its ``sink``, when
    it has one, to see when the result is built)."""

    __slots__ = ("tracer", "op", "started", "queued", "written_at", "replied", "encode", "entry", "frame",
                 "error", "otel", "_on_response", "_on_error", "_sink")

    def __init__(self, tracer: Tracer, op: "KVOp", started: float) -> None:
        self.tracer = tracer
        self.op = op
        self.started = started
        self.queued = started
        self.written_at = 0.0
        self.replied = 0.0
        self.encode: Optional[float] = None
        self.entry: Optional[Entry] = None
        self.frame: Any = None
        self.error: Optional[Tuple[int, str]] = None
        self.otel = tracer.start_otel(opcode_name(op.opcode).lower(), "kv")
        d = op.__dict__
        d["_span"] = self
        self._on_response = op.on_response
        self._on_error = op.on_error
        d["on_response"] = self.on_response
        d["on_error"] = self.on_error
        self._sink = getattr(op, "sink", None)
        if self._sink is not None:
            op.sink = self.sink  # type: ignore[attr-defined]

    def on_response(self, frame: Any) -> None:
        self.replied = self.tracer.clock()
        self.frame = frame
        try:
            self._on_response(frame)
        finally:
            self.end()

    def on_error(self, rc: int, message: str) -> None:
        self.replied = self.tracer.clock()
        self.error = (rc, message)
        op = self.op
        try:
            self._on_error(rc, message)
        finally:
            entry = self.end()
            if rc == RC.TIMEOUT and op.written and not op.multi_reply:
                self.tracer.await_orphan(op, _copy(entry), self.started)

    def sink(self, result: Any) -> None:
        sink = self._sink
        self.end()
        sink(result)  # type: ignore[misc]

    def end(self) -> Entry:
        """Record the operation (once); return its entry."""
        if self.entry is not None:
            return self.entry
        tracer = self.tracer
        now = tracer.clock()
        op = self.op
        conn = op.conn
        entry = Entry(opcode_name(op.opcode).lower(), "0x%x" % op.opaque)
        if conn is not None:
            entry.remote = conn.authority
            local = conn.local_address
            if local:
                entry.local = "%s:%s" % (local[0], local[1]) if len(local) >= 2 else str(local)
            entry.local_id = "%s/%x" % (tracer.client_id, conn.index)
        entry.total_us = int((now - self.started) * 1e6)
        if self.encode is not None:
            entry.encode_us = int(self.encode * 1e6)
        replied = self.replied or now
        if self.written_at:
            entry.queue_us = int(max(0.0, self.written_at - self.queued) * 1e6)
            entry.dispatch_us = int(max(0.0, replied - self.written_at) * 1e6)
        if self.replied:
            entry.decode_us = int(max(0.0, now - self.replied) * 1e6)
        if self.frame is not None:
            entry.server_us = server_duration_us(self.frame)
        if self.error is not None and self.error[0] == RC.TIMEOUT:
            entry.timeout_ms = int(op.timeout * 1000)
        self.entry = entry
        tracer.finished("kv", entry)
        if self.otel is not None:
            end_otel(self.otel, entry, self.error)
        self._release()
        return entry

    def _release(self) -> None:
        """Give the operation back its own callbacks and sink: it no longer
        refers to this span (no reference cycle per operation)."""
        op = self.op
        d = op.__dict__
        d.pop("_span", None)
        d.pop("on_response", None)
        d.pop("on_error", None)
        if self._sink is not None and getattr(op, "sink", None) == self.sink:
            op.sink = self._sink  # type: ignore[attr-defined]


class _BatchSpan:
    """The timing of one batch of keys: from submission to the last key
    settled (the batch calls its ``sink`` once, then)."""

    __slots__ = ("tracer", "batch", "started", "encode", "name", "otel", "_sink")

    def __init__(self, tracer: Tracer, batch: Any, started: float, queued: float) -> None:
        self.tracer = tracer
        self.batch = batch
        self.started = started
        self.encode = queued - started
        # the command of the first key names the batch (a batch may mix
        # commands: upsert_multi with per-item options)
        self.name = opcode_name(batch.request(0)[0] if len(batch.kbs) else batch.opcode).lower()
        self.otel = tracer.start_otel(self.name, "kv")
        self._sink = batch.sink
        batch.sink = self.sink

    def sink(self, result: Any) -> None:
        self.batch.sink = self._sink
        self.end()
        self._sink(result)

    def end(self) -> None:
        tracer = self.tracer
        batch = self.batch
        entry = Entry(self.name, "0x%x" % batch.base)
        entry.batch_size = len(batch.kbs)
        conns = list(batch.conns)
        if len(conns) == 1:  # else the keys went to several nodes: no one address
            entry.remote = conns[0].authority
            entry.local_id = "%s/%x" % (tracer.client_id, conns[0].index)
        entry.total_us = int((tracer.clock() - self.started) * 1e6)
        entry.encode_us = int(self.encode * 1e6)
        tracer.finished("kv", entry)
        if self.otel is not None:
            self.otel.set_attribute("db.couchbase.batch_size", entry.batch_size)
            end_otel(self.otel, entry, None)


class _HTTPSpan:
    """The timing of one HTTP request to a reported service."""

    __slots__ = ("tracer", "service", "name", "started", "head", "remote", "request", "otel")

    def __init__(self, tracer: Tracer, service: str, name: str) -> None:
        self.tracer = tracer
        self.service = service
        self.name = name
        self.started = tracer.clock()
        self.head = 0.0
        self.remote = ""
        self.otel = tracer.start_otel(name, service)
        #: The engine's ServiceRequest, once made (to name the node).
        self.request: Any = None

    def wrap(self, on_head: Any, on_end: Any, on_error: Any) -> Tuple[Any, Any, Any]:
        """The request's callbacks, timed."""
        def head(status: int, headers: Dict[str, str]) -> None:
            self.head = self.tracer.clock()
            conn = getattr(self.request, "connection", None)
            if conn is not None:
                self.remote = conn.authority
            if on_head is not None:
                on_head(status, headers)

        def end() -> None:
            self.end(None)
            if on_end is not None:
                on_end()

        def error(rc: int, message: str) -> None:
            self.end((rc, message))
            if on_error is not None:
                on_error(rc, message)

        return head, end, error

    def end(self, error: Optional[Tuple[int, str]]) -> None:
        now = self.tracer.clock()
        entry = Entry(self.name, remote=self.remote)
        entry.total_us = int((now - self.started) * 1e6)
        if self.head:
            entry.dispatch_us = int((self.head - self.started) * 1e6)
            entry.decode_us = int((now - self.head) * 1e6)
        self.tracer.finished(self.service, entry)
        if self.otel is not None:
            end_otel(self.otel, entry, error)


def _ignore(*_args: Any) -> None:
    """Installed on abandoned timers: a late callback does nothing."""


def _copy(entry: Entry) -> Entry:
    copy = Entry(entry.operation_name, entry.operation_id, entry.local, entry.remote, entry.local_id)
    copy.encode_us = entry.encode_us
    copy.queue_us = entry.queue_us
    copy.dispatch_us = entry.dispatch_us
    copy.timeout_ms = entry.timeout_ms
    return copy


def server_duration_us(frame: Any) -> Optional[int]:
    """The server's own duration of the request (microseconds) from the
    reply's framing extras, or None when the server sent none. The frame
    holds a 16-bit encoding of it: ``us = encoded ** 1.74 / 2``."""
    framing = frame[F_FRAMING]
    if not framing:
        return None
    try:
        infos = decode_frame_infos(framing)
    except FrameError:
        return None
    for fid, data in infos:
        if fid == ResponseFrameInfoId.SERVER_DURATION and len(data) == 2:
            return int(round(((data[0] << 8) | data[1]) ** 1.74 / 2))
    return None


def is_otel_tracer(obj: Any) -> bool:
    """True if ``obj`` is an OpenTelemetry ``Tracer`` (opentelemetry-api installed)."""
    try:
        from opentelemetry.trace import Tracer as OTelTracer
    except ImportError:
        return False
    return isinstance(obj, OTelTracer)

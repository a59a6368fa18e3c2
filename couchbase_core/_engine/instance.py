"""The engine: routes operations to connections, times them out, bootstraps,
follows the cluster's topology and retries what can be retried.

One :class:`Engine` serves one bucket object. It is driven entirely by the
IOPS it was given; every public method returns without waiting. Outcomes
reach operations through :meth:`KVOp.on_response` / :meth:`KVOp.on_error`,
always from a loop callback, never from inside the call that submitted them.

Routing. ``memcached://`` builds a static ketama map from the host list.
Couchbase buckets get their map from the cluster (:mod:`.bootstrap`): keys
go to the active node of their vBucket. Operations submitted before the
first config is known wait in the engine.

Topology changes. A newer config (from NOT_MY_VBUCKET bodies, CCCP polling,
server pushes, or the HTTP stream) replaces the current one: connections to
new nodes are created, removed nodes' connections are closed and their
pending operations re-routed.

Retries (Couchbase buckets only). Only what the server cannot have executed
is re-sent automatically: NOT_MY_VBUCKET goes to the current owner;
temporary failures (ETMPFAIL, EBUSY...) are re-sent with backoff; requests
that lost their connection, or whose node left the cluster, are re-sent if
none of their bytes was written, and reads are re-sent in any case. A
mutation that was written when its connection died (or its node was failed
over) ends with :class:`OutcomeUnknownError`: it may or may not have been
applied, and sending it again could apply it twice. Every retry stays within
the operation's own timeout, after which the operation fails with
:class:`TimeoutError` naming the last problem.

Deadlines. An operation whose deadline passes is withdrawn from its write
queue if none of it was written (the server never sees it); replies already
waiting in the sockets are read before anything expires.
"""

from __future__ import annotations

import binascii
import heapq
import itertools
import logging
import os
import random
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from couchbase_core._engine import forks as _forks
from couchbase_core._engine.batch import Batch, EntryRetry
from couchbase_core._engine.config import BucketConfig, ConfigError, Ketama, authority
from couchbase_core._engine.connection import CLOSED, READY, KVConnection
from couchbase_core._engine.dial import SocketFactory
from couchbase_core._engine.httpreq import (
    ChunkCallback,
    EndCallback,
    ErrorCallback,
    HeadCallback,
    NodeOrder,
    ServiceRequest,
)
from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.prepared import PreparedCache
from couchbase_core._engine.protocol import (
    F_OPAQUE,
    F_OPCODE,
    F_STATUS,
    F_VALUE,
    Frame,
    Opcode,
    ServerOpcode,
    Status,
    decode_config_push,
)
from couchbase_core._engine.settings import Settings
from couchbase_core._engine.timeouts import Deadlines
from couchbase_core._engine.tracing import HTTP_SERVICES, Tracer
from couchbase_core.exceptions import RC, CouchbaseError, ObjectDestroyedError, exc_from_rc
from couchbase_core.iops.base import (
    IOPS,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
)

__all__ = ["Engine"]

log = logging.getLogger("couchbase_core.engine")

BootstrapCallback = Callable[[Optional[CouchbaseError]], None]

#: Statuses worth re-sending (Couchbase buckets).
_RETRY_STATUSES = frozenset({Status.NOT_MY_VBUCKET, Status.ETMPFAIL, Status.EBUSY, Status.NOT_INITIALIZED,
                             Status.NO_BUCKET, Status.CONFIG_ONLY})
#: Errors after which a bootstrap should not try other nodes.
_FATAL_BOOTSTRAP = frozenset({RC.AUTH_ERROR, RC.AUTH_FAILED, RC.BUCKET_NOT_FOUND, RC.EACCESS})


class Engine:
    """The evented client core for one bucket.

    Args:
        iops: the I/O plug-in that supplies socket watchers and timers.
        settings: parsed connection settings.
        clock: monotonic time source (seconds).
    """

    def __init__(self, iops: IOPS, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.iops = iops
        self.settings = settings
        self.clock = clock
        self.client_id = binascii.hexlify(os.urandom(8)).decode("ascii")
        self.closed = False
        self.bootstrapped = False
        self.bootstrap_error: Optional[CouchbaseError] = None
        #: HELLO features of the most recent completed handshake (None before
        #: the first): what the servers agreed to.
        self.server_features: Optional[frozenset] = None
        #: Connections in server-list order (vBucket map indexes refer to it).
        self.connections: List[KVConnection] = []
        self.deadlines = Deadlines(iops, clock, self._expire, self._read_before_expiry)
        #: Nesting depth of sched_enter(); while > 0 writes are held back.
        self.batch_depth = 0
        #: Connections with writes held back by a batch.
        self.dirty: Set[KVConnection] = set()
        #: The current cluster config (Couchbase buckets).
        self.config: Optional[BucketConfig] = None
        #: Addresses used (``network`` option): ``auto`` until the first
        #: config settles it, then ``default`` or an alternate network's name.
        self.network: str = settings.network
        self.couchbase = settings.scheme != "memcached"
        self.retry_statuses = _RETRY_STATUSES if self.couchbase else frozenset()
        self.tls_context: Any = settings.tls_context()
        #: Where sockets come from: None means real ones (dial.open_socket);
        #: tests set a scripted factory (couchbase_core.testing.scripted).
        self.socket_factory: Optional[SocketFactory] = None
        self._opaque = 0
        self._ketama: Optional[Ketama] = None
        self._single: Optional[KVConnection] = None
        self._vbmap: Optional[List[List[int]]] = None
        self._by_addr: Dict[Tuple[str, int], KVConnection] = {}
        self._unrouted: List[KVOp] = []
        self._bootstrap_callbacks: List[BootstrapCallback] = []
        self._bootstrap_timer: Any = None
        self._bootstrap_failures: Dict[str, Tuple[int, str]] = {}
        self._bootstrapper: Any = None
        self._retries: List[Tuple[float, int, KVOp]] = []
        self._retry_seq = itertools.count()
        self._retry_timer = iops.timer_event_factory()
        self._retry_timer._handler = self._fire_retries
        self._retry_armed: Optional[float] = None
        self._poll_timer: Any = None
        self._last_refresh = 0.0
        self._config_listeners: List[Callable[[BucketConfig], None]] = []
        from couchbase_core._engine.http import HTTPPool

        #: keep-alive HTTP connections (views, N1QL, management)
        self.http_pool = HTTPPool(self, max(1, settings.http_poolsize))
        #: N1QL prepared statements of this bucket, by statement text (LRU,
        #: at most PreparedCache.size entries; see couchbase_core.n1ql)
        self.prepared_cache = PreparedCache()
        #: The threshold/orphan tracer while ``enable_tracing`` is on, else
        #: None (see tracing.py and :meth:`set_tracing`).
        self.tracer: Optional[Tracer] = None
        self._init_fork_state()
        if settings.enable_tracing or settings.otel_tracer is not None:
            self._retrace(settings.enable_tracing, settings.otel_tracer)

    # ------------------------------------------------------------- bootstrap

    def start(self, callback: Optional[BootstrapCallback] = None) -> None:
        """Start connecting. ``callback(err)`` runs once, when the bucket is
        usable (``err`` None) or when bootstrap failed (``err`` the reason)."""
        if callback is not None:
            self._bootstrap_callbacks.append(callback)
        settings = self.settings
        timer = self._bootstrap_timer = self.iops.timer_event_factory()
        timer._handler = self._on_bootstrap_timeout
        self.iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(settings.config_total_timeout * 1e6))
        if not self.couchbase:
            self._start_static()
            return
        from couchbase_core._engine.bootstrap import Bootstrapper

        self._bootstrapper = Bootstrapper(self)
        self._bootstrapper.start()

    def _start_static(self) -> None:
        settings = self.settings
        names = [authority(h, p) for h, p in settings.hosts]
        by_name = dict(zip(names, settings.hosts))
        self._ketama = Ketama(names)
        for index, name in enumerate(self._ketama.servers):
            host, port = by_name[name]
            conn = KVConnection(self, host, port, index)
            self.connections.append(conn)
            self._by_addr[(host, port)] = conn
        if len(self.connections) == 1:
            self._single = self.connections[0]
        for conn in self.connections:
            conn.add_listener(self._on_static_attempt)

    def on_bootstrap(self, callback: BootstrapCallback) -> None:
        """Call ``callback(err)`` when bootstrap ends (at once if it has)."""
        if self.bootstrapped or self.bootstrap_error is not None:
            callback(self.bootstrap_error)
        else:
            self._bootstrap_callbacks.append(callback)

    def _on_static_attempt(self, conn: KVConnection, error: Optional[Tuple[int, str]]) -> None:
        if self.bootstrapped or self.bootstrap_error is not None:
            return
        if error is None:
            self.finish_bootstrap(None)
            return
        self._bootstrap_failures[conn.authority] = error
        if len(self._bootstrap_failures) == len(self.connections):
            self.finish_bootstrap(self.failure_summary(self._bootstrap_failures))

    @staticmethod
    def failure_summary(failures: Dict[str, Tuple[int, str]]) -> CouchbaseError:
        """One error for a set of per-node failures (the shared code when all
        agree, else a ConnectError listing them)."""
        codes = {rc for rc, _m in failures.values()}
        rc = codes.pop() if len(codes) == 1 else RC.CONNECT
        for fatal in (RC.AUTH_ERROR, RC.AUTH_FAILED, RC.BUCKET_NOT_FOUND, RC.EACCESS):
            if any(r == fatal for r, _m in failures.values()):
                rc = fatal
                break
        detail = "; ".join("%s: %s" % (k, v[1]) for k, v in failures.items())
        if rc in _FATAL_BOOTSTRAP:
            return exc_from_rc(rc, detail)
        return exc_from_rc(rc, "no node could be reached (%s)" % detail)

    def _on_bootstrap_timeout(self, _flags: int) -> None:
        if self.bootstrapped or self.bootstrap_error is not None:
            return
        detail = ""
        if self._bootstrapper is not None:
            detail = self._bootstrapper.describe_failures()
        self.finish_bootstrap(exc_from_rc(
            RC.TIMEOUT, "bootstrap did not complete within config_total_timeout=%.1fs%s"
            % (self.settings.config_total_timeout, (" (%s)" % detail) if detail else "")))

    def finish_bootstrap(self, error: Optional[CouchbaseError]) -> None:
        """Bootstrap ended (``error`` None on success)."""
        if self.bootstrapped or self.bootstrap_error is not None:
            return
        if error is None:
            self.bootstrapped = True
        else:
            self.bootstrap_error = error
            self._fail_unrouted(error.rc, error.message)
        if self._bootstrap_timer is not None:
            self.iops.update_timer(self._bootstrap_timer, PYCBC_EVACTION_CLEANUP, 0)
            self._bootstrap_timer = None
        if error is None and self.couchbase:
            self._start_polling()
        callbacks, self._bootstrap_callbacks = self._bootstrap_callbacks, []
        for fn in callbacks:
            self._call_bootstrap_callback(fn, error)

    @staticmethod
    def _call_bootstrap_callback(fn: BootstrapCallback, error: Optional[CouchbaseError]) -> None:
        try:
            fn(error)
        except Exception:
            log.exception("bootstrap callback raised")

    # -------------------------------------------------------- configuration

    def add_config_listener(self, fn: Callable[[BucketConfig], None]) -> None:
        """Call ``fn(config)`` after each config applied (views, N1QL...)."""
        self._config_listeners.append(fn)

    def connection_to(self, host: str, port: int) -> KVConnection:
        """The connection to ``host:port`` (made if needed; not routed to
        until a config lists it)."""
        conn = self._by_addr.get((host, port))
        if conn is None or conn.state is CLOSED:
            conn = KVConnection(self, host, port, -1)
            self._by_addr[(host, port)] = conn
        return conn

    def parse_config(self, data: Any, source_host: str) -> BucketConfig:
        """Parse a config received from ``source_host`` for this engine (TLS
        ports, the network's addresses). With ``network=auto`` the first
        config decides the network for good (as libcouchbase does)."""
        cfg = BucketConfig.parse(data, source_host, tls=self.tls_context is not None, network=self.network)
        if self.network == "auto":
            self.network = cfg.network
            if cfg.network != "default":
                log.info("network=auto: using the %r alternate addresses (bootstrap host %s)", cfg.network,
                         source_host)
        return cfg

    def on_config_text(self, text: bytes, source_host: str) -> bool:
        """A config arrived (NMV body, CCCP, push, HTTP): apply it if newer."""
        try:
            cfg = self.parse_config(text, source_host)
        except ConfigError as exc:
            log.warning("ignoring an unusable config from %s: %s", source_host, exc)
            return False
        return self.apply_config(cfg)

    def apply_config(self, cfg: BucketConfig) -> bool:
        """Make ``cfg`` the current config if it is newer. Returns True if applied."""
        if self.closed or not cfg.is_newer_than(self.config):
            return False
        if cfg.name and self.settings.bucket and cfg.name != self.settings.bucket:
            log.warning("ignoring a config for bucket %r (this is %r)", cfg.name, self.settings.bucket)
            return False
        current = self.config
        if current is not None and current.locator == cfg.locator == "vbucket" \
                and cfg.num_vbuckets != current.num_vbuckets:
            # A bucket's vBucket count never changes: keys would be routed to
            # the wrong vBuckets. Such a config is broken or not this bucket's.
            log.warning("ignoring a config with %d vBuckets (the bucket has %d)", cfg.num_vbuckets,
                        current.num_vbuckets)
            return False
        old = self.connections
        new: List[KVConnection] = []
        for index, (host, port) in enumerate(cfg.servers):
            conn = self.connection_to(host, port)
            conn.index = index
            new.append(conn)
        keep = {id(c) for c in new}
        self.connections = new
        self.config = cfg
        if cfg.locator == "ketama":
            self._vbmap = None
            self._ketama = Ketama([authority(h, p) for h, p in cfg.servers]) if cfg.servers else None
            if self._ketama is not None:
                order = {authority(h, p): c for (h, p), c in zip(cfg.servers, new)}
                self.connections = [order[name] for name in self._ketama.servers]
                for i, c in enumerate(self.connections):
                    c.index = i
        else:
            self._ketama = None
            self._vbmap = cfg.vbmap
        self._single = self.connections[0] if (len(self.connections) == 1 and self._vbmap is None) else None
        log.debug("applied config rev %s epoch %s (%d nodes)", cfg.rev, cfg.rev_epoch, len(new))
        # Connections to nodes that left: close them, re-route their work.
        for conn in old:
            if id(conn) not in keep and conn.state is not CLOSED:
                self._by_addr.pop((conn.host, conn.port), None)
                pending = conn.close_pending(RC.NETWORK, "node %s left the cluster" % conn.authority)
                self._reroute(pending, "node %s left the cluster" % conn.authority)
        for (host, port), conn in list(self._by_addr.items()):
            if id(conn) not in keep and conn.state is not CLOSED and not conn.pending:
                # a seed connection the config does not list
                self._by_addr.pop((host, port), None)
                conn.close()
        if self._unrouted:
            waiting, self._unrouted = self._unrouted, []
            for op in waiting:
                if op.done:
                    continue
                if isinstance(op, Batch):
                    self._route_batch(op)
                else:
                    self._dispatch(op)
        for fn in list(self._config_listeners):
            try:
                fn(cfg)
            except Exception:
                log.exception("config listener raised")
        return True

    def request_config(self, reason: str = "") -> None:
        """Fetch the config soon (throttled): via CCCP on a ready connection."""
        now = self.clock()
        if self.closed or not self.couchbase or now - self._last_refresh < 0.05:
            return
        self._last_refresh = now
        conns = [c for c in self.connections if c.state is READY]
        if not conns or not self.settings.cccp_allowed:
            return
        conn = random.choice(conns)
        op = _ConfigOp(self, conn.host)
        op.target = conn
        op.timeout = max(0.5, min(2.5, self.settings.operation_timeout))
        try:
            self.submit(op)
        except CouchbaseError:
            pass

    def _start_polling(self) -> None:
        interval = self.settings.config_poll_interval
        if interval <= 0 or self._poll_timer is not None:
            return
        self._poll_timer = self.iops.timer_event_factory()
        self._poll_timer._handler = self._poll
        self.iops.update_timer(self._poll_timer, PYCBC_EVACTION_WATCH, int(interval * 1e6))

    def _poll(self, _flags: int) -> None:
        if self.closed:
            return
        self._last_refresh = 0.0
        self.request_config("poll")
        self.iops.update_timer(self._poll_timer, PYCBC_EVACTION_WATCH,
                               int(self.settings.config_poll_interval * 1e6))

    # ------------------------------------------------------------ operations

    def next_opaque(self) -> int:
        """A fresh opaque (unique among the requests in flight)."""
        value = self._opaque = (self._opaque + 1) & 0xFFFFFFFF
        return value

    def submit(self, op: KVOp) -> None:
        """Route ``op`` (by ``op.target`` when set, else by its key) and send
        it. Raises ObjectDestroyedError if the engine is closed; never
        completes ``op`` synchronously."""
        if self.closed or self._pid != _forks.pid or op.local:
            self._submit_unusual(op)
            return
        timeout = op.timeout
        op.deadline = deadline = self.clock() + timeout
        # Deadlines.add, inlined for the common case (a queue for this timeout
        # exists and the timer is armed no later than this deadline).
        deadlines = self.deadlines
        armed = deadlines._armed_for
        queue = deadlines._queues.get(timeout) if armed is not None and armed <= deadline else None
        if queue is not None:
            queue.append(op)
        else:
            deadlines.add(op)
        conn = op.target or self._single
        if conn is None:
            self._dispatch(op)
            return
        op.opaque = self._opaque = (self._opaque + 1) & 0xFFFFFFFF
        conn.enqueue(op)

    # ------------------------------------------------------------- tracing

    def set_tracing(self, on: bool) -> None:
        """Turn the threshold and orphan reports on or off (``enable_tracing``)."""
        self._retrace(on, self.tracer.otel if self.tracer is not None else None)

    def set_otel_tracer(self, otel: Any) -> None:
        """Report a span per operation to the OpenTelemetry tracer ``otel``
        (None: stop)."""
        self._retrace(self.tracer is not None and self.tracer.reports, otel)

    def _retrace(self, reports: bool, otel: Any) -> None:
        """While reports or spans are wanted, :meth:`submit` is shadowed by a
        timing version and every connection's writer stamps the requests
        it writes; otherwise none of that code runs (the plain methods)."""
        tracer = self.tracer
        if (reports or otel is not None) and not self.closed:
            if tracer is None:
                tracer = self.tracer = Tracer(self.iops, self.settings.tracing, self.clock, self.client_id,
                                              self.settings.bucket)
                self.submit = self._traced_submit  # type: ignore[method-assign]
                self.submit_batch = self._traced_submit_batch  # type: ignore[method-assign]
                for conn in set(self.connections) | set(self._by_addr.values()):
                    conn.trace_writes(tracer)
            if tracer.reports and not reports:
                tracer.flush()
            tracer.reports = reports
            tracer.otel = otel
        elif tracer is not None:
            self.tracer = None
            self.__dict__.pop("submit", None)
            self.__dict__.pop("submit_batch", None)
            for conn in set(self.connections) | set(self._by_addr.values()):
                conn.trace_writes(None)
            tracer.close()

    def _traced_submit(self, op: KVOp) -> None:
        """:meth:`submit` while tracing is on: the same, timed."""
        tracer = self.tracer
        if tracer is None or op.local or op.multi_key or not op.traced:
            Engine.submit(self, op)
            return
        started = self.clock()
        Engine.submit(self, op)
        tracer.kv_submitted(op, started, self.clock())

    def _traced_submit_batch(self, batch: Batch) -> None:
        """:meth:`submit_batch` while tracing is on: the same, timed as one entry."""
        tracer = self.tracer
        started = self.clock()
        Engine.submit_batch(self, batch)
        if tracer is not None:
            tracer.batch_submitted(batch, started, self.clock())

    def _submit_unusual(self, op: KVOp) -> None:
        """submit() for a closed engine, the first use after a fork, or a
        local operation."""
        if self.closed:
            raise ObjectDestroyedError("the bucket is closed")
        if self._pid != _forks.pid:
            self._resume_after_fork()
        if op.local:
            self._run_local(op)
            return
        self.submit(op)

    def _dispatch(self, op: KVOp) -> None:
        """Route a keyed operation (not yet stamped with an opaque) and send it."""
        target = op.target
        if target is not None:
            conn: Optional[KVConnection] = target
        else:
            vbmap = self._vbmap
            if vbmap is not None:
                vb = op.vbucket = self.config.vbucket_of(op.kb)  # type: ignore[union-attr]
                row = vbmap[vb]
                copy = op.replica
                index = row[copy] if copy < len(row) else -1
                conn = self.connections[index] if index >= 0 else None
                if conn is None:
                    op.last_error = ("vBucket %d has no active node" % vb if not copy
                                     else "vBucket %d has no replica %d" % (vb, copy))
                    self.request_config("no active node")
                    if not self.schedule_retry(op):
                        self._finish_with_error(op, RC.NOT_MY_VBUCKET, op.last_error)
                    return
            elif self._ketama is not None:
                conn = self.connections[self._ketama.server_for(op.kb)]
            else:
                self._unrouted.append(op)  # no config yet
                return
        self._opaque = opaque = (self._opaque + 1) & 0xFFFFFFFF
        op.opaque = opaque
        conn.enqueue(op)  # type: ignore[union-attr]

    def submit_batch(self, batch: Batch) -> None:
        """Send a batch of keys, each to its node, with one opaque per key
        from a consecutive run."""
        if self.closed:
            raise ObjectDestroyedError("the bucket is closed")
        if self._pid != _forks.pid:
            self._resume_after_fork()
        n = len(batch)
        base = self._opaque + 1
        if base + n > 0xFFFFFFFF:
            base = 1
        self._opaque = base + n - 1
        batch.start(self, base, self.clock() + batch.timeout)
        self.deadlines.add(batch)
        self._route_batch(batch)

    def _route_batch(self, batch: Batch) -> None:
        target = batch.target or self._single
        if target is not None:
            target.enqueue_batch(batch)
            return
        vbmap = self._vbmap
        groups: Dict[KVConnection, List[int]] = {}
        if vbmap is not None:
            cfg = self.config
            assert cfg is not None
            vbucket_of = cfg.vbucket_of
            vbuckets = batch.vbuckets = [vbucket_of(kb) for kb in batch.kbs]
            connections = self.connections
            homeless = []
            for i, vb in enumerate(vbuckets):
                index = vbmap[vb][0]
                if index < 0:
                    homeless.append(i)
                    continue
                groups.setdefault(connections[index], []).append(i)
            for i in homeless:
                self._retry_entry(batch, i, "vBucket %d has no active node" % vbuckets[i])
        elif self._ketama is not None:
            server_for = self._ketama.server_for
            connections = self.connections
            for i, kb in enumerate(batch.kbs):
                groups.setdefault(connections[server_for(kb)], []).append(i)
        else:
            self._unrouted.append(batch)  # no config yet: routed when it comes
            return
        for conn, indexes in groups.items():
            conn.enqueue_batch(batch, indexes)

    def copies_of(self, kb: bytes) -> Optional[Tuple[int, List[Tuple[int, KVConnection]]]]:
        """Where the copies of key bytes ``kb`` live now: ``(vbucket,
        [(copy, connection), ...])`` with copy 0 the active one and only the
        copies that have a node; None without a vBucket map (memcached
        buckets, or before the first config)."""
        cfg = self.config
        vbmap = self._vbmap
        if cfg is None or vbmap is None:
            return None
        vb = cfg.vbucket_of(kb)
        connections = self.connections
        return vb, [(copy, connections[index]) for copy, index in enumerate(vbmap[vb]) if index >= 0]

    def resend(self, op: KVOp) -> None:
        """Route ``op`` again and send it (an operation that moves on to its
        next target by itself, e.g. the next replica); it keeps its
        deadline."""
        op.written = False
        self._dispatch(op)

    def node_for(self, kb: bytes) -> KVConnection:
        """The connection that owns key bytes ``kb`` now."""
        if self._single is not None:
            return self._single
        if self._vbmap is not None:
            return self.connections[self._vbmap[self.config.vbucket_of(kb)][0]]  # type: ignore[union-attr]
        return self.connections[self._ketama.server_for(kb)]  # type: ignore[union-attr]

    def submit_all(self, ops: List[KVOp]) -> None:
        """Submit ``ops`` (single operations and batches) in order, their
        writes held back until the last is queued, so they go out together."""
        self.sched_enter()
        try:
            for op in ops:
                if isinstance(op, Batch):
                    self.submit_batch(op)
                else:
                    self.submit(op)
        finally:
            self.sched_leave()

    def sched_enter(self) -> None:
        """Hold back writes until the matching :meth:`sched_leave` (batches)."""
        self.batch_depth += 1

    def sched_leave(self) -> None:
        """End a batch: everything queued inside it goes out together."""
        if self.batch_depth <= 0:
            return
        self.batch_depth -= 1
        if self.batch_depth == 0 and self.dirty:
            dirty, self.dirty = self.dirty, set()
            for conn in dirty:
                conn.flush_soon()

    # --------------------------------------------------------------- retries

    def schedule_retry(self, op: KVOp, delay: Optional[float] = None) -> bool:
        """Re-send ``op`` after a backoff; False if its deadline is too near."""
        if self.closed or op.done:
            return False
        if delay is None:
            delay = min(0.5, 0.005 * (2 ** min(op.retries, 8)))
        op.retries += 1
        when = self.clock() + delay
        if when >= op.deadline:
            return False
        heapq.heappush(self._retries, (when, next(self._retry_seq), op))
        if self._retry_armed is None or when < self._retry_armed:
            self._retry_armed = when
            self.iops.update_timer(self._retry_timer, PYCBC_EVACTION_WATCH, int(max(0.0, delay) * 1e6))
        return True

    def _retry_entry(self, batch: Batch, index: int, why: str, delay: Optional[float] = None) -> None:
        retry = batch.retry(index)
        retry.last_error = why
        retry.retries = 1
        if not self.schedule_retry(retry, delay):
            retry.done = True
            batch.fail_entry(index, RC.TIMEOUT if not why else _rc_for_reason(why), why)

    def _fire_retries(self, _flags: int) -> None:
        self._retry_armed = None
        now = self.clock()
        heap = self._retries
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        if heap:
            self._retry_armed = heap[0][0]
            self.iops.update_timer(self._retry_timer, PYCBC_EVACTION_WATCH,
                                   int(max(0.0, heap[0][0] - now) * 1e6))
        for op in due:
            if op.done or self.closed:
                continue
            if isinstance(op, EntryRetry):
                if op.batch.done or op.batch.index_of(op.batch.base + op.index) < 0:
                    continue
                op.target = None
            self._dispatch(op)

    def retry_after_status(self, conn: KVConnection, op: KVOp, frame: Frame) -> bool:
        """A reply with a retryable status arrived for ``op``: re-send it (and
        return True) if there is time left; False delivers the reply as is."""
        status = frame[F_STATUS]
        if op.multi_key:
            # Only this entry is re-sent; the rest of the batch goes on.
            index = op.index_of(frame[F_OPAQUE])  # type: ignore[attr-defined]
            if index < 0:
                return True
            op = op.retry(index)  # type: ignore[attr-defined]
        elif op.target is not None and status != Status.NOT_MY_VBUCKET:
            return False  # node-targeted commands (STAT...) are not retried
        delay: Optional[float] = None
        if status == Status.NOT_MY_VBUCKET:
            changed = bool(frame[F_VALUE]) and self.on_config_text(frame[F_VALUE], conn.host)
            if not frame[F_VALUE]:
                self.request_config("not my vbucket")
            op.last_error = "node %s does not own vBucket %d" % (conn.authority, op.vbucket)
            delay = 0.0 if changed else self.settings.retry_nmv_delay
        else:
            op.last_error = "%s answered status 0x%02x (temporary)" % (conn.authority, status)
        if log.isEnabledFor(logging.DEBUG):  # the key is user data: redacted with log_redaction=on
            log.debug("retrying the request for key %s: %s", self.settings.ud(op.kb), op.last_error)
        if isinstance(op, EntryRetry):
            if not self.schedule_retry(op, delay):
                return False
            return True
        if op.target is not None:
            return False
        return self.schedule_retry(op, delay)

    def connection_lost(self, conn: KVConnection, pending: List[Tuple[int, KVOp, bool]], rc: int,
                        message: str) -> None:
        """``conn`` failed with ``pending`` (opaque, op, written) triples.

        What was never written is re-sent (Couchbase buckets) or fails with
        ``rc`` (memcached://: nothing is retried). Of what was written, reads
        are re-sent (Couchbase) or fail with ``rc``; mutations end with
        :class:`OutcomeUnknownError`: the server may have applied them, so
        sending them again could apply them twice."""
        may_retry = self.couchbase and not self.closed and rc not in _FATAL_BOOTSTRAP
        self._settle_orphans(pending, rc, message, may_retry, None)
        if may_retry:
            self.request_config("connection lost")

    def _reroute(self, pending: List[Tuple[int, KVOp, bool]], why: str) -> None:
        """Operations of a node that left the cluster: re-send to the
        vBuckets' new owners what the old node cannot have executed (never
        written) and what is harmless to repeat (reads); written mutations
        end with OutcomeUnknownError."""
        self._settle_orphans(pending, RC.NETWORK, why, not self.closed, 0.0)

    def _settle_orphans(self, pending: List[Tuple[int, KVOp, bool]], rc: int, message: str, may_retry: bool,
                        delay: Optional[float]) -> None:
        """Retry or fail operations that lost their connection (see
        :meth:`connection_lost`)."""
        failed: List[KVOp] = []
        unknown: List[KVOp] = []
        for opaque, op, written in pending:
            if op.done:
                continue
            if isinstance(op, Batch):
                # only this connection's entries of the batch are affected
                index = op.index_of(opaque)
                if index >= 0:
                    if may_retry and (not written or op.idempotent):
                        self._retry_entry(op, index, message, delay)
                    elif written and not op.idempotent:
                        op.fail_entry(index, RC.OUTCOME_UNKNOWN, _outcome_unknown(op.key_of(index), message))
                    else:
                        op.fail_entry(index, rc, message)
                continue
            op.last_error = message
            if may_retry and op.target is None and (not written or op.idempotent) \
                    and self.schedule_retry(op, delay):
                continue
            if written and not op.idempotent:
                unknown.append(op)
            else:
                failed.append(op)
        self.fail_ops(failed, rc, message)
        for op in unknown:
            if not op.done:
                op.done = True
                self._finish_with_error(op, RC.OUTCOME_UNKNOWN, _outcome_unknown(op.describe(), message))
        self.deadlines.trim()

    def cancel(self, op: KVOp) -> None:
        """The caller stopped waiting for ``op`` (killed, interrupted): it
        completes never. Requests not yet written are withdrawn, so the
        server never sees them; a reply to one already written is read and
        dropped; a composite operation starts no further step."""
        if op.done:
            return
        op.done = True
        self._detach_op(op)

    def _detach_op(self, op: KVOp) -> None:
        """Take a finished or abandoned ``op`` out of every connection."""
        if isinstance(op, Batch):
            for conn in op.conns:
                conn.forget(op)
            for retry in op.entry_retries:
                if not retry.done:
                    retry.done = True
                    if retry.conn is not None:
                        retry.conn.forget(retry)
        elif op.conn is not None:
            op.conn.forget(op)
        if op.local:
            op.stop(self)  # type: ignore[attr-defined]

    # -------------------------------------------------------------- failures

    def _read_before_expiry(self) -> None:
        """Deadlines are due: first take in every reply already waiting in a
        socket (the loop may have been held up past the deadlines while the
        replies sat there), so only operations really unanswered expire."""
        for conn in self.connections:
            conn.drain()

    def _expire(self, op: KVOp) -> None:
        op.done = True
        self._detach_op(op)
        conn = op.conn
        if log.isEnabledFor(logging.DEBUG):  # the key is user data: redacted with log_redaction=on
            log.debug("%s timed out after %.3gs on %s (%s, %s; last problem: %s)", self.settings.describe_op(op),
                      op.timeout, conn.authority if conn is not None else "no node yet",
                      conn.state if conn is not None else "unrouted",
                      "written" if op.written else "never written", op.last_error or "none")
        where = ""
        if conn is not None:
            where = " on %s (%s)" % (conn.authority, conn.state if conn.state is not READY else "connected")
        last = (" (last problem: %s)" % op.last_error) if op.last_error else ""
        self._finish_with_error(op, RC.TIMEOUT, "%s timed out after %.3gs%s%s"
                                % (op.describe(), op.timeout, where, last))
        # The dead-connection rule: a written request that timed out on a
        # connection from which nothing at all arrived during its lifetime
        # makes the connection suspect (see KVConnection.suspect).
        conns = op.conns if op.multi_key else ((conn,) if conn is not None else ())  # type: ignore[attr-defined]
        now = self.clock()
        for c in conns:
            if c.state is READY and c.was_written(op) and now - c.last_read >= op.timeout:
                c.suspect()

    def fail_ops(self, ops: List[KVOp], rc: int, message: str) -> None:
        """Complete ``ops`` with an error (they are no longer in any table)."""
        for op in ops:
            if op.done:
                continue
            op.done = True
            self._finish_with_error(op, rc, message)
        self.deadlines.trim()

    def _fail_unrouted(self, rc: int, message: str) -> None:
        waiting, self._unrouted = self._unrouted, []
        self.fail_ops(waiting, rc, message)

    def _finish_with_error(self, op: KVOp, rc: int, message: str) -> None:
        try:
            op.on_error(rc, message)
        except Exception:
            log.exception("failing %s raised", self.settings.describe_op(op))

    # ------------------------------------------------------ connection events

    def on_connection_ready(self, conn: KVConnection) -> None:
        """A connection finished its handshake: what it agreed with its node
        is what the bucket's operations may rely on."""
        self.server_features = conn.features

    def on_connection_failed(self, conn: KVConnection, rc: int, message: str) -> None:
        """A connection failed; its operations have been dealt with."""
        log.info("connection to %s failed: %s", conn.authority, message)

    def on_server_request(self, conn: KVConnection, frame: Frame) -> None:
        """A server-initiated request (magic 0x82): config change pushes."""
        if frame[F_OPCODE] == ServerOpcode.CLUSTERMAP_CHANGE_NOTIFICATION:
            push = decode_config_push(frame)
            if push.config:
                self.on_config_text(push.config, conn.host)
            else:
                self.request_config("brief push")
            return
        log.debug("ignoring server request opcode 0x%02x from %s", frame[F_OPCODE], conn.authority)

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Close every connection; pending operations fail with
        ObjectDestroyedError (from the loop, not inside this call)."""
        if self.closed:
            return
        self.closed = True
        if self._fork_error is not None:
            return  # a child of a fork whose IOPS cannot be trusted: no IOPS call
        if self._bootstrap_timer is not None:
            self.iops.update_timer(self._bootstrap_timer, PYCBC_EVACTION_CLEANUP, 0)
            self._bootstrap_timer = None
        if self._poll_timer is not None:
            self.iops.update_timer(self._poll_timer, PYCBC_EVACTION_CLEANUP, 0)
            self._poll_timer = None
        self.iops.update_timer(self._retry_timer, PYCBC_EVACTION_UNWATCH, 0)
        self.iops.update_timer(self._retry_timer, PYCBC_EVACTION_CLEANUP, 0)
        if self._bootstrapper is not None:
            self._bootstrapper.close()
        if self.tracer is not None:
            self._retrace(False, None)  # reports what is queued
        self.http_pool.close()
        if not self.bootstrapped and self.bootstrap_error is None:
            # Settle the bootstrap first (closing connections below must not
            # finish it inside this call); waiters hear about it from the loop.
            error = exc_from_rc(RC.OBJECT_DESTROYED, "the bucket was closed during bootstrap")
            self.bootstrap_error = error
            callbacks, self._bootstrap_callbacks = self._bootstrap_callbacks, []
            if callbacks:
                def tell() -> None:
                    for fn in callbacks:
                        self._call_bootstrap_callback(fn, error)

                self.defer(tell)
        ops: List[KVOp] = []
        for conn in set(self.connections) | set(self._by_addr.values()):
            ops.extend(conn.close())
        ops.extend(self.deadlines.close())
        ops.extend(op for _w, _s, op in self._retries)
        ops.extend(self._unrouted)
        self._retries = []
        self._unrouted = []
        unique = list({id(op): op for op in ops}.values())
        for op in unique:
            op.done = True  # out of every table now; fail them from the loop
        if unique:
            self.defer(lambda: self._fail_closed(unique))

    def _fail_closed(self, ops: List[KVOp]) -> None:
        for op in ops:
            self._finish_with_error(op, RC.OBJECT_DESTROYED, "the bucket was closed")

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` from a zero-delay timer, i.e. from the loop and never
        inside the current caller's stack."""
        timer = self.iops.timer_event_factory()
        iops = self.iops

        def fire(_flags: int) -> None:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            try:
                fn()
            except Exception:
                log.exception("deferred engine call raised")

        timer._handler = fire
        iops.update_timer(timer, PYCBC_EVACTION_WATCH, 0)

    # ----------------------------------------------------------------- forks
    #
    # See forks.py. after_fork_in_child() runs in the child right after the
    # fork; the first use afterwards (the cheap pid check in submit) goes
    # through _resume_after_fork().

    def _init_fork_state(self) -> None:
        #: the pid this engine's state belongs to, as forks.pid sees it; 0
        #: after a fork until the first use (which restarts what must be).
        self._pid = _forks.pid
        self._owner_pid = _forks.pid
        #: every HTTPConnection made for this engine (they add themselves)
        self.http_connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._local_ops: "weakref.WeakSet[KVOp]" = weakref.WeakSet()
        #: set in a child of a fork when the IOPS cannot carry on there
        self._fork_error: Optional[CouchbaseError] = None
        self._fork_restarting = False
        _forks.register(self)

    def _run_local(self, op: KVOp) -> None:
        """Start a local operation (tracked, so that a fork can fail it in
        the child); after a fork it waits for the new bootstrap."""
        self._local_ops.add(op)
        if self._fork_restarting:
            def run(err: Optional[CouchbaseError]) -> None:
                if err is None:
                    op.run(self)
                elif not op.done:
                    op.on_error(err.rc, err.message)

            self._bootstrap_callbacks.append(run)
            return
        op.run(self)

    def after_fork_in_child(self) -> None:
        """The process forked and this is the child: drop every inherited
        connection without touching its socket beyond closing the child's
        descriptor, forget the IOPS's events (``iops.after_fork()``), fail
        the parent's in-flight operations with ForkError from the loop, and
        make new timers. The first use reconnects (``memcached://``) or
        bootstraps afresh (``couchbase://``). With an IOPS that has no
        ``after_fork`` the IOPS is not called at all and every use raises
        ForkError."""
        if self._owner_pid == _forks.pid:
            return
        self._owner_pid = _forks.pid
        if self.closed:
            self._pid = _forks.pid
            return
        iops = self.iops
        recover = _forks.iops_recovers(iops)
        if recover:
            try:
                iops.after_fork()  # type: ignore[misc]
            except Exception:
                log.exception("the IOPS failed to recover after fork")
                recover = False
        # Everything in flight is the parent's. Every KV operation and batch
        # is in the deadline queues from submission until done.
        inflight: Dict[int, KVOp] = {}
        for queue in getattr(self.deadlines, "_queues", {}).values():
            for op in queue:
                inflight[id(op)] = op
        for _when, _seq, op in self._retries:
            op = op.batch if isinstance(op, EntryRetry) else op
            inflight[id(op)] = op
        for op in self._unrouted:
            inflight[id(op)] = op
        for conn in set(self.connections) | set(self._by_addr.values()):
            for _opaque, op in conn.abandon_after_fork():
                inflight[id(op)] = op
        requests = []
        for hconn in list(self.http_connections):
            req = hconn.abandon_after_fork()
            if req is not None:
                requests.append(req)
        if self._bootstrapper is not None:
            self._bootstrapper.abandon_after_fork()
            self._bootstrapper = None
        # Local operations' outcomes are delivered once, below: until then
        # whatever they hear from their parts goes nowhere.
        local_ops = []
        for op in list(self._local_ops):
            if not op.done:
                sink = getattr(op, "sink", None)
                if sink is not None:
                    op.sink = _ignore  # type: ignore[attr-defined]
                local_ops.append((op, sink))
        callbacks, self._bootstrap_callbacks = self._bootstrap_callbacks, []
        for timer in (self._bootstrap_timer, self._poll_timer, self._retry_timer,
                      getattr(self.deadlines, "_timer", None)):
            if timer is not None:
                timer._handler = _ignore
        self.deadlines._closed = True
        if self.tracer is not None:
            self.tracer.abandon_after_fork()  # the parent's entries and timers
        self._bootstrap_timer = self._poll_timer = None
        self._retries = []
        self._retry_armed = None
        self._unrouted = []
        self.dirty = set()
        self.http_connections = weakref.WeakSet()
        self._local_ops = weakref.WeakSet()
        from couchbase_core._engine.http import HTTPPool

        self.http_pool = HTTPPool(self, max(1, self.settings.http_poolsize))
        self.client_id = binascii.hexlify(os.urandom(8)).decode("ascii")
        if self.tracer is not None:
            self.tracer.client_id = self.client_id
        pending = [op for op in inflight.values() if not op.done]
        if not recover:
            # Nothing can be delivered (no loop to deliver from): the
            # operations stay unanswered in the child; every use raises.
            self._fork_error = exc_from_rc(RC.FORKED, _forks.message_unsupported(iops))
            self._fork_orphans = (pending, local_ops, requests, callbacks)
            return
        self.deadlines = Deadlines(iops, self.clock, self._expire, self._read_before_expiry)
        self._retry_timer = iops.timer_event_factory()
        self._retry_timer._handler = self._fire_retries
        if self.couchbase:
            # a fresh bootstrap on first use
            self.bootstrapped = False
            self.bootstrap_error = None
            self.config = None
            self._vbmap = None
            self._ketama = None
            self._single = None
            self.connections = []
            self._by_addr = {}
        elif not self.bootstrapped:
            self.bootstrap_error = None
        self._pid = 0
        message = _forks.message_inflight()
        self.defer(lambda: self._fail_forked(pending, local_ops, requests, callbacks, message))

    def _fail_forked(self, ops: List[KVOp], local_ops: List[Tuple[KVOp, Any]], requests: List[Any],
                     callbacks: List[BootstrapCallback], message: str) -> None:
        """In the child, from the loop: the parent's operations fail."""
        error = exc_from_rc(RC.FORKED, message)
        for fn in callbacks:
            self._call_bootstrap_callback(fn, error)
        self.fail_ops(ops, RC.FORKED, message)
        for req in requests:
            if req._finish():
                try:
                    req.on_error(RC.FORKED, message)
                except Exception:
                    log.exception("failing an HTTP request after fork raised")
        for op, sink in local_ops:
            try:
                if sink is not None:
                    op.sink = sink  # type: ignore[attr-defined]
                    op.on_error(RC.FORKED, message)
                elif not op.done:
                    op.on_error(RC.FORKED, message)
            except Exception:
                log.exception("failing %s after fork raised", self.settings.describe_op(op))
            finally:
                if sink is not None:
                    op.sink = _ignore  # type: ignore[attr-defined]
                op.done = True

    def _resume_after_fork(self) -> None:
        """First use in a child of a fork (``_pid`` differs from forks.pid)."""
        if self._owner_pid != _forks.pid:
            self.after_fork_in_child()  # the at-fork hook did not reach us
        if self._fork_error is not None:
            raise exc_from_rc(RC.FORKED, self._fork_error.message)
        self._pid = _forks.pid
        if not self.closed and not self.bootstrapped:
            self._restart_after_fork()

    def _restart_after_fork(self) -> None:
        self.bootstrap_error = None
        self._bootstrap_failures = {}
        self._fork_restarting = True
        self._bootstrap_callbacks.insert(0, self._after_fork_bootstrap)
        timer = self._bootstrap_timer = self.iops.timer_event_factory()
        timer._handler = self._on_bootstrap_timeout
        self.iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(self.settings.config_total_timeout * 1e6))
        if not self.couchbase:
            for conn in self.connections:
                conn.add_listener(self._on_static_attempt)
            return
        from couchbase_core._engine.bootstrap import Bootstrapper

        self._bootstrapper = Bootstrapper(self)
        self._bootstrapper.start()

    def _after_fork_bootstrap(self, err: Optional[CouchbaseError]) -> None:
        self._fork_restarting = False
        if err is not None:
            self._pid = 0  # try again at the next use

    @property
    def servers(self) -> List[Tuple[str, int]]:
        """(host, port) of every KV node."""
        return [(c.host, c.port) for c in self.connections]

    @property
    def connected(self) -> bool:
        """True when at least one connection is ready."""
        return not self.closed and any(c.state is READY for c in self.connections)

    # ------------------------------------------------------------------ HTTP

    def http_request(self, service: str, method: str, path: str, body: bytes = b"",
                     headers: Optional[Dict[str, str]] = None, timeout: float = 75.0, *,
                     on_head: Optional[HeadCallback] = None, on_chunk: Optional[ChunkCallback] = None,
                     on_end: Optional[EndCallback] = None, on_error: Optional[ErrorCallback] = None,
                     idempotent: Optional[bool] = None, order: Optional[NodeOrder] = None) -> ServiceRequest:
        """Send one HTTP request to a node offering ``service`` (``mgmt``,
        ``capi``, ``n1ql``) and stream its response to the callbacks:
        ``on_head(status, headers)``, ``on_chunk(bytes)``..., then exactly one
        of ``on_end()`` or ``on_error(rc, message)``, never inside this call.
        ``timeout`` (seconds, > 0) bounds the whole request, every node tried
        included. ``idempotent`` (default: GET and HEAD) allows sending it
        to another node when its connection broke before the response's head;
        ``order`` orders the candidate nodes in place (default: random).
        Returns the request's handle (``cancel()``, ``pause()``,
        ``resume()``). Raises ObjectDestroyedError once the engine is closed.
        See :mod:`couchbase_core._engine.httpreq`."""
        if self.closed:
            raise ObjectDestroyedError("the bucket is closed")
        if not timeout > 0:
            raise ValueError("an HTTP request needs a timeout greater than 0, not %r" % (timeout,))
        if self._pid != _forks.pid:
            self._resume_after_fork()
        tracer = self.tracer
        span = None
        if tracer is not None and service in HTTP_SERVICES:
            span = tracer.http_started(service, method, path)
            on_head, on_end, on_error = span.wrap(on_head, on_end, on_error)
        request = ServiceRequest(self, service, method, path, body, headers, timeout, on_head, on_chunk, on_end,
                                 on_error, idempotent, order)
        if span is not None:
            span.request = request
        if self._fork_restarting:
            self._bootstrap_callbacks.append(request.start_after_bootstrap)
        else:
            request.start()
        return request


def _ignore(*_args: Any) -> None:
    """Stands in for handlers and sinks that must hear nothing more."""


def _rc_for_reason(_why: str) -> int:
    return RC.NOT_MY_VBUCKET


def _outcome_unknown(what: Any, why: str) -> str:
    return ("%s: the request was written but its connection failed before the reply (%s); it may or may "
            "not have been applied" % (what, why))


class _ConfigOp(KVOp):
    """GET_CLUSTER_CONFIG for polling and refreshes."""

    __slots__ = ("engine", "source")
    idempotent = True
    traced = False

    def __init__(self, engine: Engine, source: str) -> None:
        KVOp.__init__(self, Opcode.GET_CLUSTER_CONFIG)
        self.engine = engine
        self.source = source

    def on_response(self, frame: Frame) -> None:
        if frame[F_STATUS] == Status.SUCCESS and frame[F_VALUE]:
            self.engine.on_config_text(frame[F_VALUE], self.source)

    def on_error(self, rc: int, message: str) -> None:
        log.debug("config refresh failed: %s", message)

    def describe(self) -> str:
        return "GET_CLUSTER_CONFIG"

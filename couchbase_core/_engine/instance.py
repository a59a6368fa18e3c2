"""The engine: routes operations to connections, times them out, bootstraps.

One :class:`Engine` serves one bucket object. It is driven entirely by the
IOPS it was given; every public method returns without waiting. Outcomes
reach operations through :meth:`KVOp.on_response` / :meth:`KVOp.on_error`,
always from a loop callback, never from inside the call that submitted them.
"""

from __future__ import annotations

import binascii
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from couchbase_core._engine.config import Ketama, authority
from couchbase_core._engine.connection import CLOSED, READY, KVConnection
from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.protocol import Frame
from couchbase_core._engine.settings import Settings
from couchbase_core._engine.timeouts import Deadlines
from couchbase_core.exceptions import RC, CouchbaseError, ObjectDestroyedError, exc_from_rc
from couchbase_core.iops.base import IOPS, PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH

__all__ = ["Engine"]

log = logging.getLogger("couchbase_core.engine")

BootstrapCallback = Callable[[Optional[CouchbaseError]], None]


class Engine:
    """The evented client core for one bucket.

    Args:
        iops: the I/O plug-in that supplies sockets watchers and timers.
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
        #: Connections, in continuum order (index = server index).
        self.connections: List[KVConnection] = []
        self.deadlines = Deadlines(iops, clock, self._expire)
        #: Nesting depth of sched_enter(); while > 0 writes are held back.
        self.batch_depth = 0
        #: Connections with writes held back by a batch.
        self.dirty: Set[KVConnection] = set()
        self._opaque = 0
        self._ketama: Optional[Ketama] = None
        self._single: Optional[KVConnection] = None
        self._bootstrap_callbacks: List[BootstrapCallback] = []
        self._bootstrap_timer: Any = None
        self._bootstrap_failures: Dict[str, Tuple[int, str]] = {}

    # ------------------------------------------------------------- bootstrap

    def start(self, callback: Optional[BootstrapCallback] = None) -> None:
        """Build the cluster map and start connecting. ``callback(err)`` runs
        once, when the first node is ready (``err`` None) or when every node
        failed or ``config_total_timeout`` passed (``err`` the reason)."""
        if callback is not None:
            self._bootstrap_callbacks.append(callback)
        settings = self.settings
        if settings.scheme != "memcached":
            raise exc_from_rc(RC.CLIENT_NOT_SUPPORTED,
                              "%s:// clusters are not supported by this engine yet; use memcached://"
                              % settings.scheme)
        names = [authority(h, p) for h, p in settings.hosts]
        by_name = dict(zip(names, settings.hosts))
        self._ketama = Ketama(names)
        for index, name in enumerate(self._ketama.servers):
            host, port = by_name[name]
            self.connections.append(KVConnection(self, host, port, index))
        if len(self.connections) == 1:
            self._single = self.connections[0]
        timer = self._bootstrap_timer = self.iops.timer_event_factory()
        timer._handler = self._on_bootstrap_timeout
        self.iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(settings.config_total_timeout * 1e6))
        for conn in self.connections:
            conn.add_listener(self._on_bootstrap_attempt)

    def on_bootstrap(self, callback: BootstrapCallback) -> None:
        """Call ``callback(err)`` when bootstrap ends (from a loop callback if
        it already ended: at once)."""
        if self.bootstrapped or self.bootstrap_error is not None:
            callback(self.bootstrap_error)
        else:
            self._bootstrap_callbacks.append(callback)

    def _on_bootstrap_attempt(self, conn: KVConnection, error: Optional[Tuple[int, str]]) -> None:
        if self.bootstrapped or self.bootstrap_error is not None:
            return
        if error is None:
            self._finish_bootstrap(None)
            return
        self._bootstrap_failures[conn.authority] = error
        if len(self._bootstrap_failures) == len(self.connections):
            rc = error[0] if len({e[0] for e in self._bootstrap_failures.values()}) == 1 else RC.CONNECT
            detail = "; ".join("%s: %s" % (k, v[1]) for k, v in self._bootstrap_failures.items())
            self._finish_bootstrap(exc_from_rc(rc, "no node could be reached (%s)" % detail))

    def _on_bootstrap_timeout(self, _flags: int) -> None:
        if self.bootstrapped or self.bootstrap_error is not None:
            return
        self._finish_bootstrap(exc_from_rc(
            RC.TIMEOUT, "bootstrap did not complete within config_total_timeout=%.1fs"
            % self.settings.config_total_timeout))

    def _finish_bootstrap(self, error: Optional[CouchbaseError]) -> None:
        if error is None:
            self.bootstrapped = True
        else:
            self.bootstrap_error = error
        if self._bootstrap_timer is not None:
            self.iops.update_timer(self._bootstrap_timer, PYCBC_EVACTION_CLEANUP, 0)
            self._bootstrap_timer = None
        callbacks, self._bootstrap_callbacks = self._bootstrap_callbacks, []
        for fn in callbacks:
            self._call_bootstrap_callback(fn, error)

    @staticmethod
    def _call_bootstrap_callback(fn: BootstrapCallback, error: Optional[CouchbaseError]) -> None:
        try:
            fn(error)
        except Exception:
            log.exception("bootstrap callback raised")

    # ------------------------------------------------------------ operations

    def next_opaque(self) -> int:
        """A fresh opaque (unique among the requests in flight)."""
        value = self._opaque = (self._opaque + 1) & 0xFFFFFFFF
        return value

    def submit(self, op: KVOp) -> None:
        """Route ``op`` (by ``op.target`` when set, else by its key) and send
        it. Raises ObjectDestroyedError if the engine is closed; never
        completes ``op`` synchronously."""
        if self.closed:
            raise ObjectDestroyedError("the bucket is closed")
        conn = op.target
        if conn is None:
            conn = self._single
            if conn is None:
                conn = self.connections[self._ketama.server_for(op.kb)]  # type: ignore[union-attr]
        self._opaque = opaque = (self._opaque + 1) & 0xFFFFFFFF
        op.opaque = opaque
        op.deadline = deadline = self.clock() + op.timeout
        # Deadlines.add, inlined for the common case (a queue for this timeout
        # exists and the timer is armed no later than this deadline).
        deadlines = self.deadlines
        queue = deadlines._queues.get(op.timeout)
        armed = deadlines._armed_for
        if queue is not None and armed is not None and armed <= deadline:
            queue.append(op)
        else:
            deadlines.add(op)
        conn.enqueue(op)

    def submit_batch(self, batch: Any) -> None:
        """Send a batch of keys (``batch.entries``) to ``batch.target`` (or
        the only node), with one opaque per key from a consecutive run."""
        if self.closed:
            raise ObjectDestroyedError("the bucket is closed")
        conn = batch.target or self._single
        if conn is None:
            raise ValueError("a batch for several nodes must be split first")
        n = len(batch.entries)
        base = self._opaque + 1
        if base + n > 0xFFFFFFFF:
            base = 1
        self._opaque = base + n - 1
        batch.base = batch.opaque = base
        batch.remaining = n
        batch.waiting = bytearray(b"\x01") * n
        batch.deadline = self.clock() + batch.timeout
        self.deadlines.add(batch)
        conn.enqueue_batch(batch)

    def node_for(self, kb: bytes) -> KVConnection:
        """The connection that owns key bytes ``kb``."""
        if self._single is not None:
            return self._single
        return self.connections[self._ketama.server_for(kb)]  # type: ignore[union-attr]

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

    def _expire(self, op: KVOp) -> None:
        op.done = True
        conn = op.conn
        where = ""
        if conn is not None:
            conn.forget(op)
            where = " on %s (%s)" % (conn.authority, conn.state if conn.state is not READY else "connected")
        self._finish_with_error(op, RC.TIMEOUT, "%s timed out after %.3gs%s" % (op.describe(), op.timeout, where))

    def fail_ops(self, ops: List[KVOp], rc: int, message: str) -> None:
        """Complete ``ops`` with an error (they are no longer in any table)."""
        for op in ops:
            if op.done:
                continue
            op.done = True
            self._finish_with_error(op, rc, message)
        self.deadlines.trim()

    @staticmethod
    def _finish_with_error(op: KVOp, rc: int, message: str) -> None:
        try:
            op.on_error(rc, message)
        except Exception:
            log.exception("failing %s raised", op.describe())

    # ------------------------------------------------------ connection events

    def on_connection_ready(self, conn: KVConnection) -> None:
        """A connection finished its handshake."""

    def on_connection_failed(self, conn: KVConnection, rc: int, message: str) -> None:
        """A connection failed; its operations have been failed already."""
        log.info("connection to %s failed: %s", conn.authority, message)

    def on_server_request(self, conn: KVConnection, frame: Frame) -> None:
        """A server-initiated request (magic 0x82); none is negotiated yet."""
        log.debug("ignoring server request opcode 0x%02x from %s", frame[1], conn.authority)

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Close every connection; pending operations fail with
        ObjectDestroyedError (from this call: the caller is closing)."""
        if self.closed:
            return
        self.closed = True
        if self._bootstrap_timer is not None:
            self.iops.update_timer(self._bootstrap_timer, PYCBC_EVACTION_CLEANUP, 0)
            self._bootstrap_timer = None
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
        for conn in self.connections:
            ops.extend(conn.close())
        ops.extend(self.deadlines.close())
        seen: Set[int] = set()
        unique = []
        for op in ops:
            if id(op) not in seen:
                seen.add(id(op))
                unique.append(op)
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

    @property
    def servers(self) -> List[Tuple[str, int]]:
        """(host, port) of every KV node."""
        return [(c.host, c.port) for c in self.connections]

    @property
    def connected(self) -> bool:
        """True when at least one connection is ready."""
        return not self.closed and any(c.state is READY for c in self.connections)

    def is_closed(self) -> bool:
        """True after :meth:`close`."""
        return self.closed or all(c.state is CLOSED for c in self.connections) and bool(self.connections)

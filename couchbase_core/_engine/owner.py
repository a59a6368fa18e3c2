"""The seam between a KV connection and the engine that owns it.

:class:`ConnectionOwner` lists everything a
:class:`~couchbase_core._engine.connection.KVConnection` may use of its
engine, and nothing else: the loop and the clock, the settings it connects
with, the deadline queues it trims, the write-batching switch, a handful of
notifications (ready, failed, lost, a server-initiated request), and the two
requests it makes (a fresh opaque, submitting its own probe). The engine
(:class:`~couchbase_core._engine.instance.Engine`) satisfies it; mypy checks
that wherever an engine is handed to a connection, and a connection that
reached for anything else would fail the type check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, FrozenSet, List, Optional, Protocol, Set, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.connection import KVConnection
    from couchbase_core._engine.dial import SocketFactory
    from couchbase_core._engine.ops import KVOp
    from couchbase_core._engine.protocol import Frame
    from couchbase_core._engine.settings import Settings
    from couchbase_core._engine.timeouts import Deadlines
    from couchbase_core._engine.tracing import Tracer
    from couchbase_core.iops.base import IOPS

__all__ = ["ConnectionOwner"]


class ConnectionOwner(Protocol):
    """What a KV connection needs from its engine."""

    #: The loop the connection's sockets and timers live on.
    iops: "IOPS"
    #: Connection settings: timeouts, credentials, bucket, compression...
    settings: "Settings"
    #: The monotonic clock (injectable for tests).
    clock: Callable[[], float]
    #: This client's id, sent in HELLO's agent string.
    client_id: str
    #: The TLS context when the connection string asks for TLS, else None.
    tls_context: Any
    #: Where sockets come from; None means real sockets (tests script them).
    socket_factory: Optional["SocketFactory"]
    #: The operations' deadlines; the connection trims finished ones after
    #: each read.
    deadlines: "Deadlines"
    #: Reply statuses that may be retried (Couchbase buckets).
    retry_statuses: FrozenSet[int]
    #: Non-zero while the engine holds writes back to send several
    #: operations together; connections that want to write meanwhile add
    #: themselves to :attr:`dirty` and are flushed when the batch ends.
    batch_depth: int
    dirty: Set["KVConnection"]
    #: The threshold/orphan tracer while ``enable_tracing`` is on, else None.
    tracer: Optional["Tracer"]

    def next_opaque(self) -> int:
        """A fresh opaque."""

    def submit(self, op: "KVOp") -> None:
        """Send an operation (the connection's own NOOP probe)."""

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` from the loop, soon (never inside a caller's call)."""

    def retry_after_status(self, conn: "KVConnection", op: "KVOp", frame: "Frame") -> bool:
        """A reply with a retryable status: True if the engine re-sends it."""

    def on_server_request(self, conn: "KVConnection", frame: "Frame") -> None:
        """A server-initiated request (a config push)."""

    def on_connection_ready(self, conn: "KVConnection") -> None:
        """The connection finished its handshake (``conn.features`` is set)."""

    def on_connection_failed(self, conn: "KVConnection", rc: int, message: str) -> None:
        """The connection failed; its operations have been handed back."""

    def connection_lost(self, conn: "KVConnection", pending: List[Tuple[int, "KVOp", bool]], rc: int,
                        message: str) -> None:
        """The operations ``pending`` (opaque, op, written) lost their
        connection: retry them or settle their outcome."""

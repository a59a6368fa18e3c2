"""What the engine needs to know about an operation.

The engine moves :class:`KVOp` objects: it routes them by ``kb`` (the key
bytes), stamps ``opaque``, ``vbucket``, ``deadline`` and ``conn``, writes
their request, and calls exactly one of :meth:`KVOp.on_response` or
:meth:`KVOp.on_error` when the reply arrives, the deadline passes or the
connection fails. Subclasses (outside the engine) turn the reply into
result objects and wake whoever waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional

from couchbase_core._engine.protocol import Frame

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.connection import KVConnection

__all__ = ["KVOp"]


class KVOp:
    """One request on a KV connection, and the promise of one outcome."""

    # The fields every operation sets are slots. The rarely used ones below
    # are class-level defaults: an operation that changes one gets an
    # instance dict then, the others never pay for them (fewer stores per
    # operation, and a smaller object while it waits).
    __slots__ = ("opcode", "kb", "extras", "value", "cas", "vbucket",
                 "opaque", "deadline", "timeout", "done", "conn", "wire", "written", "__dict__", "__weakref__")

    #: Datatype bits of the request value (JSON, snappy...).
    datatype = 0
    #: Set for keyless commands aimed at one node (STAT, NOOP, FLUSH).
    target: Optional["KVConnection"] = None
    #: How often the engine re-sent it, and why the last try failed.
    retries = 0
    last_error: Optional[str] = None
    #: Which copy of the key's vBucket to address: 0 = active, n = replica n.
    replica = 0
    #: Framing extras (durability...): sent with the alternative magic.
    framing = b""

    #: True for operations that take their replies frame by frame (STAT,
    #: batches): the engine hands each reply to :meth:`on_part` and never
    #: calls :meth:`on_response`; the operation completes itself (sets
    #: ``done``) when it has all it waits for.
    multi_reply = False
    #: True for batches of keys, submitted with ``Engine.submit_batch``.
    multi_key = False
    #: True (multi-reply operations only) when the operation takes a run of
    #: its plain replies at once through :meth:`take_run`: a 1,000-key read
    #: then costs one call, not one per reply.
    takes_runs = False
    #: True for single operations that take a plain reply (a success with
    #: 4 bytes of extras, no key, not compressed) from a run of replies
    #: as :meth:`on_plain` ``(cas, flags, value)``, with no frame made.
    #: Such an operation's :meth:`on_plain` must do exactly what its
    #: :meth:`on_response` does with that reply as a frame (a subclass that
    #: treats successes differently in ``on_response`` sets this False).
    takes_plain = False
    #: True when sending it twice is harmless (reads): such operations are
    #: re-sent after a connection loss; mutations then fail instead.
    idempotent = False
    #: False for the engine's own requests (config fetches, probes): they
    #: are left out of the threshold reports and spans.
    traced = True
    #: True for operations the engine runs itself instead of sending a
    #: request (``endure``, ``observe``): Engine.submit calls ``run(engine)``.
    local = False

    def run(self, engine: Any) -> None:
        """Local operations: start (see :attr:`local`)."""
        raise NotImplementedError

    def __init__(self, opcode: int, kb: bytes = b"", extras: bytes = b"", value: bytes = b"",
                 cas: int = 0, datatype: int = 0, timeout: float = 2.5) -> None:
        self.opcode = opcode
        self.kb = kb
        self.extras = extras
        self.value = value
        self.cas = cas
        if datatype:
            self.datatype = datatype
        self.timeout = timeout
        self.vbucket = 0
        self.opaque = 0
        self.deadline = 0.0
        self.done = False
        self.conn: Optional["KVConnection"] = None
        #: The encoded request while it waits in a connection's write queue
        #: (None once written, or withdrawn).
        self.wire: Optional[bytes] = None
        #: True once any byte of the request reached the socket: from then
        #: on the server may execute it, so it can no longer be withdrawn,
        #: and a mutation whose connection dies has an unknown outcome.
        self.written = False

    def on_part(self, frame: Frame) -> bool:
        """Multi-reply operations: take one frame. Return False to keep its
        opaque pending (more frames will carry it), True when it is used up."""
        return True

    def take_run(self, frame: Frame, rest: Iterator[Frame], pending: Dict[int, Any]) -> Optional[Frame]:
        """Operations with :attr:`takes_runs`: take ``frame`` (a success,
        its opaque already popped from the connection's ``pending`` table),
        then the frames that follow in ``rest`` while they are plain
        successes of this operation, popping each one's opaque from
        ``pending``. Return the first frame not taken (its opaque still in
        ``pending``), or None when ``rest`` is exhausted."""
        raise NotImplementedError

    def on_plain(self, cas: int, flags: int, value: bytes) -> None:
        """Operations with :attr:`takes_plain`: the server answered with
        success, ``flags`` being its 4 bytes of extras as a number (the
        same reply :meth:`on_response` would get as a frame)."""
        raise NotImplementedError

    def opaques(self) -> list:
        """The opaques this operation still waits on."""
        return [self.opaque]

    def on_response(self, frame: Frame) -> None:
        """The server answered (any status)."""
        raise NotImplementedError

    def on_error(self, rc: int, message: str) -> None:
        """The operation failed without a reply (timeout, network, closing)."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short text for error messages: opcode and key."""
        from couchbase_core._engine.protocol import opcode_name

        key: Any = self.kb
        return "%s %r" % (opcode_name(self.opcode), key[:40] if key else "")

"""What the engine needs to know about an operation.

The engine moves :class:`KVOp` objects: it routes them by ``kb`` (the key
bytes), stamps ``opaque``, ``vbucket``, ``deadline`` and ``conn``, writes
their request, and calls exactly one of :meth:`KVOp.on_response` or
:meth:`KVOp.on_error` when the reply arrives, the deadline passes or the
connection fails. Subclasses (outside the engine) turn the reply into
result objects and wake whoever waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from couchbase_core._engine.protocol import Frame

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.connection import KVConnection

__all__ = ["KVOp"]


class KVOp:
    """One request on a KV connection, and the promise of one outcome."""

    __slots__ = ("opcode", "kb", "extras", "value", "cas", "datatype", "vbucket",
                 "opaque", "deadline", "timeout", "done", "conn", "target", "__weakref__")

    #: True for operations that take their replies frame by frame (STAT,
    #: batches): the engine hands each reply to :meth:`on_part` and never
    #: calls :meth:`on_response`; the operation completes itself (sets
    #: ``done``) when it has all it waits for.
    multi_reply = False
    #: True for batches of keys, submitted with ``Engine.submit_batch``.
    multi_key = False

    def __init__(self, opcode: int, kb: bytes = b"", extras: bytes = b"", value: bytes = b"",
                 cas: int = 0, datatype: int = 0, timeout: float = 2.5) -> None:
        self.opcode = opcode
        self.kb = kb
        self.extras = extras
        self.value = value
        self.cas = cas
        self.datatype = datatype
        self.timeout = timeout
        self.vbucket = 0
        self.opaque = 0
        self.deadline = 0.0
        self.done = False
        self.conn: Optional["KVConnection"] = None
        #: Set for keyless commands aimed at one node (STAT, NOOP, FLUSH).
        self.target: Optional["KVConnection"] = None

    def on_part(self, frame: Frame) -> bool:
        """Multi-reply operations: take one frame. Return False to keep its
        opaque pending (more frames will carry it), True when it is used up."""
        return True

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

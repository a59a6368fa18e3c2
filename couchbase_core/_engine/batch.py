"""Batches: the keys of one ``_multi`` call, as the engine sends and tracks them.

A :class:`Batch` is one operation for the engine (one deadline, one sink, one
entry in each connection's write queue per node) that stands for many
single-key requests. The engine gives it a run of consecutive opaques,
``base`` .. ``base + len - 1``, one per entry, so a reply finds its entry by
arithmetic: ``entry = opaque - base``. Per key this saves an operation object,
a deadline entry and the calls around them, which is most of a ``_multi``
call's cost.

What the engine owns here: the entries' requests (:meth:`Batch.request`), the
opaque bookkeeping (:meth:`Batch.start`, :meth:`Batch.index_of`,
:meth:`Batch.opaques`), the per-node write chunks, per-entry failure
(:meth:`Batch.fail_entry`) and per-entry retry (:class:`EntryRetry`), and
completion (``sink(None)`` once every entry is settled).

What it leaves to a subclass (``couchbase_core._kvops.KeyBatch``): turning a
reply or a failure into the caller's result (:meth:`Batch.on_reply`,
:meth:`Batch.on_failure`). A subclass may also override :meth:`Batch.on_part`
with a faster path for its common reply, as long as it keeps the bookkeeping
of the generic one.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import repeat
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.protocol import F_OPAQUE, F_VALUE, Frame

__all__ = ["Batch", "EntryRetry", "Request"]

log = logging.getLogger("couchbase_core.engine")

#: One entry's request: (opcode, extras, value, cas).
Request = Tuple[int, bytes, bytes, int]


def _discard(_result: Any) -> None:
    pass


class Batch(KVOp):
    """Many single-key requests of one ``_multi`` call.

    Attributes:
        keys: the caller's keys, one per entry.
        kbs: the encoded keys.
        requests: ``None`` when every entry is the same command without a
            value (``opcode`` and ``extras`` of the batch, e.g. a plain
            ``get_multi``), else one :data:`Request` per entry.
        items: ``None``, or the caller's :class:`~couchbase_core.items.Item`
            (or None) per entry.
        vbuckets: the vBucket of each entry (Couchbase buckets), or None.
    """

    __slots__ = ("keys", "kbs", "requests", "items", "base", "remaining", "waiting", "vbuckets", "conns",
                 "chunks", "entry_retries", "idempotent", "engine", "sink")

    multi_reply = True
    multi_key = True

    def __init__(self, timeout: float, opcode: int = 0, extras: bytes = b"") -> None:
        KVOp.__init__(self, opcode, b"", extras, b"", 0, 0, timeout)
        self.keys: List[Any] = []
        self.kbs: List[bytes] = []
        self.requests: Optional[List[Request]] = None
        self.items: Optional[List[Any]] = None
        self.base = 0
        self.remaining = 0
        self.waiting = bytearray()
        self.vbuckets: Optional[List[int]] = None
        #: Connections holding some of the entries.
        self.conns: set = set()
        #: The write chunks of this batch (one per connection it went to).
        self.chunks: list = []
        #: Entries re-sent on their own (:class:`EntryRetry` operations).
        self.entry_retries: List["EntryRetry"] = []
        self.idempotent = False
        self.engine: Any = None
        self.sink: Callable[[Any], None] = _discard

    def __len__(self) -> int:
        return len(self.kbs)

    # ------------------------------------------------------------- entries

    def add(self, key: Any, kb: bytes, request: Request, item: Any = None) -> None:
        """Append an entry (batches whose entries differ)."""
        if self.requests is None:
            self.requests = []
            self.items = []
        self.keys.append(key)
        self.kbs.append(kb)
        self.requests.append(request)
        self.items.append(item)  # type: ignore[union-attr]

    def request(self, i: int) -> Tuple[int, bytes, bytes, bytes, int]:
        """Entry ``i``'s request: (opcode, key bytes, extras, value, cas)."""
        requests = self.requests
        if requests is None:
            return self.opcode, self.kbs[i], self.extras, b"", 0
        opcode, extras, value, cas = requests[i]
        return opcode, self.kbs[i], extras, value, cas

    def item(self, i: int) -> Any:
        """The caller's item for entry ``i``, or None."""
        items = self.items
        return items[i] if items is not None else None

    # --------------------------------------------------------------- opaques

    def start(self, engine: Any, base: int, deadline: float) -> None:
        """The engine took the batch: entries get opaques ``base`` ..
        ``base + len - 1`` and all wait for a reply."""
        n = len(self.kbs)
        self.base = self.opaque = base
        self.remaining = n
        self.waiting = bytearray(b"\x01") * n
        self.deadline = deadline
        self.engine = engine

    def index_of(self, opaque: int) -> int:
        """The entry ``opaque`` belongs to, or -1 if it is not one of ours or
        that entry is settled already."""
        i = opaque - self.base
        if 0 <= i < len(self.waiting) and self.waiting[i]:
            return i
        return -1

    def opaques(self) -> list:
        """Opaques still waiting for a reply."""
        base = self.base
        return [base + i for i, w in enumerate(self.waiting) if w]

    # ------------------------------------------------------------ completion

    def on_part(self, frame: Frame) -> bool:
        """A reply for one entry (never kept pending: one reply per opaque)."""
        i = self.index_of(frame[F_OPAQUE])
        if i >= 0:
            self.waiting[i] = 0
            self.on_reply(i, frame)
        return True

    def take_plain_run(self, run: Frame, pending: Dict[int, Any]) -> int:
        """A :data:`~couchbase_core._engine.protocol.RUN` of plain replies
        whose first opaque is ours (the connection popped it from
        ``pending``). If every entry it covers is still waiting and
        :meth:`run_results` takes them all, they are settled here with no
        Python loop per entry, and the number of replies taken is returned
        (the replies past our last entry are the connection's to deliver);
        otherwise nothing changes, the first opaque is pending again, and
        0 is returned: the run is to be delivered frame by frame."""
        first = run[F_OPAQUE]
        count = len(run[F_VALUE])
        start = first - self.base
        waiting = self.waiting
        taken = min(count, len(waiting) - start)
        if start < 0 or taken <= 0 or waiting.find(0, start, start + taken) >= 0 \
                or not self.run_results(start, taken, run):
            pending[first] = self
            return 0
        if taken > 1:
            deque(map(pending.pop, range(first + 1, first + taken), repeat(None)), 0)
        waiting[start:start + taken] = bytes(taken)
        self.remaining -= taken
        if self.remaining == 0:
            self.done = True
            try:
                self.sink(None)
            except Exception:  # the replies left in the run are not ours to lose
                log.exception("completing %s failed", self.describe())
        return taken

    def run_results(self, start: int, count: int, run: Frame) -> bool:
        """Subclasses that take runs: make the results of entries ``start``
        .. ``start + count - 1`` from the first ``count`` replies of ``run``
        (all successes) and return True, or return False, having changed
        nothing, when some reply needs the careful way (:meth:`on_reply`)."""
        return False

    def on_response(self, frame: Frame) -> None:  # pragma: no cover - batches take on_part
        self.on_part(frame)

    def on_reply(self, i: int, frame: Frame) -> None:
        """Subclasses: turn entry ``i``'s reply into its result, then call
        :meth:`settled` (at once, or after waiting for durability)."""
        raise NotImplementedError

    def on_failure(self, i: int, rc: int, message: str) -> None:
        """Subclasses: record that entry ``i`` failed without a reply."""
        raise NotImplementedError

    def settled(self) -> None:
        """One more entry has its final result; the last one completes the
        batch."""
        self.remaining -= 1
        if self.remaining == 0:
            self.done = True
            self.sink(None)

    def fail_entry(self, i: int, rc: int, message: str) -> None:
        """Entry ``i`` failed without a reply (its retry timed out, its
        connection died after it was written...)."""
        if self.done or not self.waiting[i]:
            return
        self.waiting[i] = 0
        self.on_failure(i, rc, message)
        self.settled()

    def on_error(self, rc: int, message: str) -> None:
        """The whole batch failed (timeout, closing): every entry still
        waiting fails with ``rc``."""
        waiting = self.waiting
        for i, w in enumerate(waiting):
            if w:
                waiting[i] = 0
                self.on_failure(i, rc, message)
        self.remaining = 0
        self.done = True
        self.sink(None)

    # --------------------------------------------------------------- retries

    def retry(self, i: int) -> "EntryRetry":
        """An operation that re-sends entry ``i`` on its own."""
        return EntryRetry(self, i)

    def cancel_retries(self) -> List["EntryRetry"]:
        """The entry retries still out (the batch is being cancelled)."""
        return [r for r in self.entry_retries if not r.done]

    def describe(self) -> str:
        return "a batch of %d keys" % len(self.kbs)

    def key_of(self, i: int) -> Any:
        """The caller's key of entry ``i``."""
        return self.keys[i]


class EntryRetry(KVOp):
    """One entry of a batch, re-sent on its own (after NOT_MY_VBUCKET, a
    temporary failure or a lost connection); its outcome goes back into the
    batch as if the batch had received it."""

    __slots__ = ("batch", "index", "idempotent")

    def __init__(self, batch: Batch, index: int) -> None:
        opcode, kb, extras, value, cas = batch.request(index)
        KVOp.__init__(self, opcode, kb, extras, value, cas, 0, batch.timeout)
        self.batch = batch
        self.index = index
        self.deadline = batch.deadline
        self.idempotent = batch.idempotent
        if batch.framing:
            self.framing = batch.framing
        batch.entry_retries.append(self)

    def on_response(self, frame: Frame) -> None:
        batch = self.batch
        batch.on_part(frame[:F_OPAQUE] + (batch.base + self.index,) + frame[F_OPAQUE + 1:])  # type: ignore[arg-type]

    def on_error(self, rc: int, message: str) -> None:
        self.batch.fail_entry(self.index, rc, message)

    def describe(self) -> str:
        return "entry %d of %s" % (self.index, self.batch.describe())


def entries_for(batch: Batch, indexes: Optional[Sequence[int]]) -> Sequence[int]:
    """``indexes``, or every entry of ``batch`` when None."""
    return range(len(batch.kbs)) if indexes is None else indexes

"""Observe-based durability (``persist_to`` / ``replicate_to``, ``endure``).

spec/kv-protocol.md §5.4: after a mutation, send OBSERVE for the key to its
active node and replicas every ``interval`` until enough copies report it
persisted / replicated with the mutation's CAS, or until ``timeout``. The
polling runs on engine timers, so it works on every IOPS and never blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.protocol import (
    F_STATUS,
    F_VALUE,
    Frame,
    ObserveState,
    Opcode,
    decode_observe,
    observe_body,
)
from couchbase_core.exceptions import RC
from couchbase_core.iops.base import PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.connection import KVConnection
    from couchbase_core._engine.instance import Engine

__all__ = ["ObserveOp", "Observer", "FOUND_NOT_PERSISTED", "FOUND_PERSISTED", "NOT_FOUND", "LOGICALLY_DELETED"]

FOUND_NOT_PERSISTED = ObserveState.FOUND_NOT_PERSISTED
FOUND_PERSISTED = ObserveState.FOUND_PERSISTED
NOT_FOUND = ObserveState.NOT_FOUND
LOGICALLY_DELETED = ObserveState.LOGICALLY_DELETED


class ObserveOp(KVOp):
    """OBSERVE for one key on one node; ``callback(state, cas, error)``."""

    __slots__ = ("callback", "copy")
    idempotent = True

    def __init__(self, vbucket: int, key: bytes, copy: int, timeout: float,
                 callback: Callable[[int, Optional[int], Optional[int], Optional[str]], None]) -> None:
        KVOp.__init__(self, Opcode.OBSERVE, b"", b"", observe_body(vbucket, key), 0, 0, timeout)
        self.callback = callback
        self.copy = copy

    def on_response(self, frame: Frame) -> None:
        if frame[F_STATUS]:
            self.callback(self.copy, None, None, "OBSERVE failed with status 0x%02x" % frame[F_STATUS])
            return
        entries = decode_observe(frame[F_VALUE])
        if not entries:
            self.callback(self.copy, None, None, "empty OBSERVE reply")
            return
        _vb, _key, state, cas = entries[0]
        self.callback(self.copy, state, cas, None)

    def on_error(self, rc: int, message: str) -> None:
        self.callback(self.copy, None, None, message)

    def describe(self) -> str:
        return "OBSERVE"


class Observer:
    """Polls OBSERVE until a mutation is durable enough (or time runs out).

    ``on_done(rc, message)`` is called once: rc 0 when the requirements were
    met, :data:`RC.TIMEOUT` when time ran out, :data:`RC.KEY_EEXISTS` when the
    document was changed by someone else meanwhile, :data:`RC.KEY_ENOENT`
    when it disappeared.
    """

    def __init__(self, engine: "Engine", kb: bytes, cas: int, persist_to: int, replicate_to: int,
                 check_removed: bool, timeout: float, interval: float,
                 on_done: Callable[[int, str], None]) -> None:
        self.engine = engine
        self.kb = kb
        self.cas = cas
        self.persist_to = persist_to
        self.replicate_to = replicate_to
        self.check_removed = check_removed
        self.timeout = timeout
        self.interval = max(0.001, interval)
        self.on_done = on_done
        self.deadline = engine.clock() + timeout
        self._answers: List[Tuple[int, Optional[int], Optional[int], Optional[str]]] = []
        self._expected = 0
        self._finished = False
        self._timer: Any = None
        self._last_problem = ""

    def start(self) -> None:
        """Begin the first round."""
        self._round()

    def _targets(self) -> Tuple[int, List[Tuple[int, "KVConnection"]]]:
        copies = self.engine.copies_of(self.kb)
        return copies if copies is not None else (0, [])

    def _round(self) -> None:
        if self._finished:
            return
        if self.engine.closed:
            self._finish(RC.OBJECT_DESTROYED, "the bucket was closed")
            return
        vb, targets = self._targets()
        if not targets:
            self._finish(RC.CLIENT_NOT_SUPPORTED, "durability needs a Couchbase bucket with a vBucket map")
            return
        self._answers = []
        self._expected = len(targets)
        remaining = max(0.05, self.deadline - self.engine.clock())
        for copy, conn in targets:
            op = ObserveOp(vb, self.kb, copy, min(remaining, self.engine.settings.operation_timeout), self._answer)
            op.target = conn
            try:
                self.engine.submit(op)
            except Exception as exc:  # closed meanwhile
                self._finish(RC.OBJECT_DESTROYED, str(exc))
                return

    def _answer(self, copy: int, state: Optional[int], cas: Optional[int], error: Optional[str]) -> None:
        if self._finished:
            return
        self._answers.append((copy, state, cas, error))
        if len(self._answers) < self._expected:
            return
        verdict = self._evaluate()
        if verdict is not None:
            self._finish(*verdict)
            return
        # One last poll lands exactly on the deadline, so a copy that arrives
        # in the final interval still counts and the timeout is never early.
        if self.engine.clock() >= self.deadline:
            self._finish(RC.TIMEOUT, "durability requirements (persist_to=%d, replicate_to=%d) not met within "
                         "%.3gs%s" % (self.persist_to, self.replicate_to, self.timeout,
                                      (": " + self._last_problem) if self._last_problem else ""))
            return
        self._schedule()

    def _evaluate(self) -> Optional[Tuple[int, str]]:
        persisted = replicated = 0
        for copy, state, cas, error in self._answers:
            if error is not None or state is None:
                self._last_problem = error or "no answer"
                continue
            master = copy == 0
            if self.check_removed:
                if state == NOT_FOUND:
                    persisted += 1
                    if not master:
                        replicated += 1
                elif state == LOGICALLY_DELETED:
                    if not master:
                        replicated += 1
                continue
            if master:
                if state in (NOT_FOUND, LOGICALLY_DELETED):
                    return RC.KEY_ENOENT, "the document was removed before it became durable"
                if self.cas and cas != self.cas:
                    return RC.KEY_EEXISTS, "the document was modified before it became durable"
                if state == FOUND_PERSISTED:
                    persisted += 1
                continue
            if state in (FOUND_NOT_PERSISTED, FOUND_PERSISTED) and (not self.cas or cas == self.cas):
                replicated += 1
                if state == FOUND_PERSISTED:
                    persisted += 1
        if persisted >= self.persist_to and replicated >= self.replicate_to:
            return 0, ""
        self._last_problem = "%d persisted, %d replicated so far" % (persisted, replicated)
        return None

    def _schedule(self) -> None:
        iops = self.engine.iops
        timer = self._timer = iops.timer_event_factory()

        def fire(_flags: int) -> None:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            self._timer = None
            self._round()

        timer._handler = fire
        delay = min(self.interval, max(0.0, self.deadline - self.engine.clock()))
        iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(delay * 1e6))

    def _finish(self, rc: int, message: str) -> None:
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self.engine.iops.update_timer(self._timer, PYCBC_EVACTION_CLEANUP, 0)
            self._timer = None
        self.on_done(rc, message)

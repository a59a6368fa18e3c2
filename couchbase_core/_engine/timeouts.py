"""Per-operation deadlines on a single engine timer.

Arming one IOPS timer per operation would cost a watcher start and stop per
request. Instead operations are appended to a FIFO per timeout value (nearly
always just one): within a FIFO deadlines only grow, so the earliest pending
deadline is at one of the heads. One timer is armed for that head; when it
fires, every overdue operation is expired and the timer re-armed for the next
head. Completed operations are dropped from the heads as they are passed
(:meth:`Deadlines.trim` after each read keeps the queues as short as the
number of operations in flight).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Deque, Dict, List, Optional

from couchbase_core._engine.ops import KVOp
from couchbase_core.iops.base import (
    IOPS,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
)

__all__ = ["Deadlines"]


class Deadlines:
    """Expires operations whose ``deadline`` has passed."""

    def __init__(self, iops: IOPS, clock: Callable[[], float], on_expired: Callable[[KVOp], None],
                 before_expiry: Optional[Callable[[], None]] = None) -> None:
        self._iops = iops
        self._clock = clock
        self._on_expired = on_expired
        #: Called when the timer fires, before anything is expired (the
        #: engine reads replies already waiting in its sockets).
        self._before_expiry = before_expiry
        self._queues: Dict[float, Deque[KVOp]] = {}
        self._timer = iops.timer_event_factory()
        self._timer._handler = self._fire
        self._armed_for: Optional[float] = None
        self._closed = False

    def add(self, op: KVOp) -> None:
        """Track ``op`` (whose ``deadline`` and ``timeout`` are set)."""
        queue = self._queues.get(op.timeout)
        if queue is None:
            queue = self._queues[op.timeout] = deque()
        queue.append(op)
        armed = self._armed_for
        if armed is None or op.deadline < armed:
            self._arm(op.deadline)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def trim(self) -> None:
        """Drop completed operations from the heads of the queues."""
        for queue in self._queues.values():
            while queue and queue[0].done:
                queue.popleft()

    def _arm(self, deadline: float) -> None:
        if self._closed:
            return
        self._armed_for = deadline
        delay = max(0.0, deadline - self._clock())
        self._iops.update_timer(self._timer, PYCBC_EVACTION_WATCH, int(math.ceil(delay * 1e6)))

    def _fire(self, _flags: int) -> None:
        self._armed_for = None
        if self._closed:
            return
        if self._before_expiry is not None:
            self._before_expiry()
            if self._closed:
                return
        now = self._clock()
        expired: List[KVOp] = []
        earliest = math.inf
        for timeout in list(self._queues):
            queue = self._queues[timeout]
            while queue:
                op = queue[0]
                if op.done:
                    queue.popleft()
                elif op.deadline <= now:
                    queue.popleft()
                    expired.append(op)
                else:
                    earliest = min(earliest, op.deadline)
                    break
            if not queue:
                del self._queues[timeout]
        if earliest != math.inf:
            self._arm(earliest)
        for op in expired:
            if not op.done:
                self._on_expired(op)

    def close(self) -> List[KVOp]:
        """Stop the timer for good; return the operations still pending."""
        self._closed = True
        left = [op for q in self._queues.values() for op in q if not op.done]
        self._queues.clear()
        self._iops.update_timer(self._timer, PYCBC_EVACTION_UNWATCH, 0)
        self._iops.update_timer(self._timer, PYCBC_EVACTION_CLEANUP, 0)
        return left

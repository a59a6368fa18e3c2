"""Per-node fault injection state, read by the KV sessions.

The controls that change the cluster's shape (failover, rebalance, stopping
nodes, moving the clock, switching CCCP off) live in :mod:`.runtime`; this
holds what a single node does to its connections.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional, Tuple

__all__ = ["NodeFaults"]


class NodeFaults:
    """What a node does wrong on purpose.

    Attributes:
        delay: seconds to hold every KV response.
        stall_after: after this many bytes written on a connection, further
            response bytes are held back (the connection looks hung); None
            for no stall.
        malformed: the next N responses are replaced by garbage bytes.
    """

    def __init__(self) -> None:
        self.delay = 0.0
        self.stall_after: Optional[int] = None
        self.malformed = 0
        self._forced: Deque[List[int]] = deque()

    def force_status(self, status: int, count: int = 1) -> None:
        """Answer the next ``count`` data operations with ``status`` (0 = a
        bare success without doing anything)."""
        self._forced.append([count, status])

    def take_forced_status(self) -> Optional[int]:
        """The status to force on the current data operation, if any."""
        forced = self._forced
        if not forced:
            return None
        entry = forced[0]
        entry[0] -= 1
        if entry[0] <= 0:
            forced.popleft()
        return entry[1]

    def clear(self) -> None:
        """Back to normal."""
        self.delay = 0.0
        self.stall_after = None
        self.malformed = 0
        self._forced.clear()

    def describe(self) -> dict:
        """JSON-able state."""
        forced: List[Tuple[int, int]] = [(c, s) for c, s in self._forced]
        return {"delay": self.delay, "stall_after": self.stall_after, "malformed": self.malformed,
                "forced": forced}

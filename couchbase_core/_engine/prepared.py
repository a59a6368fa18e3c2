"""The N1QL prepared-statement cache of one bucket (its engine holds it).

A statement run with ``adhoc = False`` is prepared once (``PREPARE``); the
service answers with the plan's name (and, for clusters without the
``enhancedPreparedStatements`` capability, the encoded plan), which later
executions send instead of the statement text. The cache maps statement
text to that answer. It is bounded: at most :data:`MAX_PREPARED` statements,
the least recently used one forgotten first, so an application that builds
statements dynamically cannot grow it without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Optional

__all__ = ["PreparedCache", "MAX_PREPARED"]

#: Prepared statements kept per bucket (least recently used dropped first).
MAX_PREPARED = 5000


class PreparedCache:
    """statement text -> the PREPARE answer (``name``, maybe ``encoded_plan``),
    least recently used first out beyond ``size`` entries."""

    def __init__(self, size: int = MAX_PREPARED) -> None:
        self.size = size
        self._entries: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()

    def get(self, statement: str) -> Optional[Dict[str, Any]]:
        """The entry for ``statement`` (now the most recently used), or None."""
        entry = self._entries.get(statement)
        if entry is not None:
            self._entries.move_to_end(statement)
        return entry

    def put(self, statement: str, entry: Dict[str, Any]) -> None:
        """Remember ``entry`` for ``statement``, dropping the least recently
        used entries beyond ``size``."""
        self._entries[statement] = entry
        self._entries.move_to_end(statement)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, statement: str) -> None:
        """Forget ``statement`` (its plan went stale)."""
        self._entries.pop(statement, None)

    def __len__(self) -> int:
        return len(self._entries)

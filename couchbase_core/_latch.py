"""Completion counting: the sinks a waiter watches.

A :class:`Latch` counts a group of outstanding operations and calls its
``on_zero`` when the last ends; every waiting strategy (``_wait_latch``)
waits on one, and so do the row streams. :class:`_Collector` is the sink of
the operations of one ``_multi`` call: it files each result in the
MultiResult and counts the latch down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # annotations only: this module sits below the result types
    from couchbase_core.result import MultiResult, Result


__all__ = ["Latch"]


class Latch:
    """Counts outstanding operations; calls ``on_zero`` when the last ends."""

    __slots__ = ("count", "on_zero")

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.on_zero: Optional[Callable[[], None]] = None

    def add(self, n: int = 1) -> None:
        """Expect ``n`` more completions."""
        self.count += n

    def done(self, _result: Any = None) -> None:
        """One operation ended."""
        self.count -= 1
        if self.count == 0 and self.on_zero is not None:
            self.on_zero()


class _Collector:
    """Sink for the operations of one ``_multi`` call."""

    __slots__ = ("mres", "latch")

    def __init__(self, mres: MultiResult, latch: Latch) -> None:
        self.mres = mres
        self.latch = latch

    def __call__(self, result: Optional[Result]) -> None:
        if result is not None:  # batches put their results in mres themselves
            self.mres[result.key] = result
        latch = self.latch
        latch.count -= 1
        if latch.count == 0 and latch.on_zero is not None:
            latch.on_zero()

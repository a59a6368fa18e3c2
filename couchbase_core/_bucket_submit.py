"""Where operations leave the bucket: the waiting-strategy seam.

Every operation ends in :meth:`SubmitMixin._one` (one operation) or
:meth:`SubmitMixin._many` (the operations of a ``_multi`` call): they add it
to the caller's open pipeline, if any, or run it through the flavour's
waiting strategy. The strategy methods (``_run_one``, ``_wait_latch``,
``_make_iops``, ``_start``) are declared here and implemented by each
flavour; :meth:`SubmitMixin._collect` submits a group of operations and
waits on a :class:`~couchbase_core._latch.Latch` for all of them.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from couchbase_core._bucket_scope import _PIPELINES
from couchbase_core._kvops import discard
from couchbase_core._latch import Latch, _Collector
from couchbase_core.exceptions import ObjectDestroyedError
from couchbase_core.result import MultiResult

__all__ = ["SubmitMixin"]


class SubmitMixin:
    """Hands operations to the engine and waits through the flavour's strategy."""

    # ------------------------------------------------------------ strategy

    def _make_iops(self, kwargs: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def _start(self) -> None:
        """Begin bootstrapping (and, for blocking flavours, wait for it)."""
        raise NotImplementedError

    def _run_one(self, op: Any, quiet: bool) -> Any:
        """Submit one operation; return its result or raise its error."""
        raise NotImplementedError

    def _wait_latch(self, latch: Latch) -> None:
        """Return once ``latch.count`` is zero (must set ``latch.on_zero``)."""
        raise NotImplementedError

    def _breathe(self) -> None:
        """Let the loop run between the chunks of a big ``_multi`` call (the
        gevent bucket hands the hub a turn; the others have nobody to wait
        for them)."""

    def _collect(self, ops: List[Any], mres: MultiResult, finish: Callable[[MultiResult], Any]) -> Any:
        """Submit ``ops``, wait until each has put its result in ``mres``,
        and return ``finish(mres)`` (which may raise). A big call comes as
        several batches: the loop gets a turn between them."""
        latch = Latch()
        sink = _Collector(mres, latch)
        engine = self._engine
        submitted = 0
        try:
            for op in ops:
                if submitted and op.multi_key:
                    self._breathe()
                op.sink = sink
                latch.count += 1
                try:
                    if op.multi_key:
                        engine.submit_batch(op)
                    else:
                        engine.submit(op)
                except BaseException:
                    latch.count -= 1
                    raise
                submitted += 1
            if latch.count:
                self._wait_latch(latch)
        except BaseException:  # killed or interrupted: see _run_one
            for op in ops[:submitted]:
                op.sink = discard
                engine.cancel(op)
            raise
        return finish(mres)

    def _run_many(self, ops: List[Any], mres: MultiResult) -> Any:
        """Run the operations of a ``_multi`` call (raise on failure)."""
        return self._collect(ops, mres, _raise_or_return)

    def _new_multi(self) -> MultiResult:
        return MultiResult()

    def _one(self, op: Any, quiet: bool = False) -> Any:
        if _PIPELINES.get():
            pipeline = self._pipeline
            if pipeline is not None:
                return pipeline.add_one(op, quiet)
        return self._run_one(op, quiet)

    def _many(self, ops: List[Any], mres: MultiResult) -> Any:
        if _PIPELINES.get():
            pipeline = self._pipeline
            if pipeline is not None:
                return pipeline.add_many(ops, mres)
        return self._run_many(ops, mres)

    def _check_open(self) -> None:
        if self._engine.closed:
            raise ObjectDestroyedError("the bucket is closed")


def _raise_or_return(mres: MultiResult) -> MultiResult:
    exc = mres._make_exception()
    if exc is not None:
        raise exc
    return mres

"""The blocking Bucket.

:class:`Bucket` runs a private :class:`~couchbase_core.iops.select.SelectIOPS`
loop inside each call until the call's operations are done. Every operation
and its arguments are documented on :class:`couchbase_core._bucketbase.BaseBucket`,
which this class, :class:`couchbase_core.asynchronous.bucket.AsyncBucket` and
:class:`gcouchbase.bucket.Bucket` share.

Threads: a blocking Bucket is meant for one thread at a time. ``lockmode``
says what happens when two threads call it at once: ``LOCKMODE_EXC`` (the
default) raises :class:`~couchbase_core.exceptions.ObjectThreadError` in the
second thread, ``LOCKMODE_WAIT`` makes it wait for the first, and
``LOCKMODE_NONE`` checks nothing (the caller promises to serialise).
``pipeline()`` and ``durability()`` blocks belong to the thread that entered
them: other threads' calls are neither batched into a thread's pipeline nor
made durable by its durability block.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

from couchbase_core import LOCKMODE_EXC, LOCKMODE_WAIT
from couchbase_core._bucketbase import BaseBucket, DurabilityContext, Latch, PingStatus, Pipeline
from couchbase_core._engine import forks as _forks
from couchbase_core._kvops import discard
from couchbase_core.exceptions import InternalError, ObjectThreadError
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.result import MultiResult, raises

__all__ = ["Bucket", "Pipeline", "PingStatus", "DurabilityContext"]


class _Box:
    """Sink that keeps one result and stops the loop."""

    __slots__ = ("result", "_stop")

    def __init__(self, stop: Callable[[], None]) -> None:
        self.result: Any = None
        self._stop = stop

    def __call__(self, result: Any) -> None:
        self.result = result
        self._stop()


class _ThreadGuard:
    """Enforces the bucket's lockmode around each call."""

    __slots__ = ("_lock", "_mode", "__weakref__")

    def __init__(self, mode: int) -> None:
        self._mode = mode
        self._lock = threading.Lock() if mode in (LOCKMODE_EXC, LOCKMODE_WAIT) else None
        _forks.register(self)

    def after_fork_in_child(self) -> None:
        """A thread that was inside a call at the fork does not exist in the
        child: its hold on the lock must not outlive it."""
        if self._lock is not None:
            self._lock = threading.Lock()

    def __enter__(self) -> None:
        lock = self._lock
        if lock is None:
            return
        if self._mode == LOCKMODE_WAIT:
            lock.acquire()
        elif not lock.acquire(False):
            raise ObjectThreadError("this Bucket is being used by another thread (lockmode=LOCKMODE_EXC); "
                                    "use one Bucket per thread or lockmode=LOCKMODE_WAIT")

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.release()


class Bucket(BaseBucket):
    """A connection to a bucket whose calls block until they are done.

    Args:
        connection_string: ``memcached://host1:port1,host2:port2`` (plain
            memcached cluster, keys spread with ketama); options may follow
            ``?`` (``operation_timeout=1.5`` ...).
        username, password: credentials (Couchbase clusters).
        quiet: default for ``quiet`` on reads.
        transcoder: a custom :class:`~couchbase_core.transcoder.Transcoder`.
        lockmode: ``LOCKMODE_EXC``, ``LOCKMODE_WAIT`` or ``LOCKMODE_NONE``.
        **kwargs: any connection-string option, e.g.
            ``operation_timeout=1.0``; they win over the string's.

    The constructor connects and raises if no node can be reached.
    """

    def _make_iops(self, kwargs: Dict[str, Any]) -> SelectIOPS:
        self._guard = _ThreadGuard(self._lockmode)
        return SelectIOPS()

    def _start(self) -> None:
        box = _Box(self._iops.stop_watching)
        self._engine.start(box)
        self._loop_until(lambda: box.result is not None or self._engine.bootstrapped, "bootstrap")
        if box.result is not None:
            self._engine.close()
            self._iops.close()
            raise box.result

    def _loop_until(self, done: Callable[[], bool], what: str) -> None:
        iops = self._iops
        while not done():
            if not iops.run_once():
                raise InternalError("the event loop has nothing to wait for, yet the %s is not done" % what)

    def _run_one(self, op: Any, quiet: bool) -> Any:
        with self._guard:
            iops = self._iops
            box = _Box(iops.stop_watching)
            op.sink = box
            self._engine.submit(op)
            try:
                while box.result is None:
                    if not iops.run_once():
                        raise InternalError("the event loop has nothing to wait for, yet %s is pending"
                                            % op.describe())
            except BaseException:  # e.g. KeyboardInterrupt: the caller gives up on it
                op.sink = discard
                self._engine.cancel(op)
                raise
        res = box.result
        if res.rc and raises(res.rc, quiet):
            raise res._make_exception()
        return res

    def _collect(self, ops: List[Any], mres: MultiResult, finish: Callable[[MultiResult], Any]) -> Any:
        with self._guard:
            return BaseBucket._collect(self, ops, mres, finish)

    def _send_pipeline(self, ops: List[Any], latch: Latch) -> None:
        with self._guard:
            BaseBucket._send_pipeline(self, ops, latch)

    def _wait_latch(self, latch: Latch) -> None:
        iops = self._iops
        while latch.count:
            if not iops.run_once():
                raise InternalError("the event loop has nothing to wait for, yet %d operations are pending"
                                    % latch.count)

    def close(self) -> None:
        """Close every connection and the private loop."""
        if self._engine.closed:
            return
        self._engine.close()
        # Deliver the failures of anything still pending (pipelines left open).
        self._iops.run_once(0)
        self._iops.close()

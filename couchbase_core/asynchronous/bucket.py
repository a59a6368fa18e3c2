"""AsyncBucket: every operation returns an AsyncResult at once.

The bucket runs on an IOPS the caller supplies (any event loop that
implements :mod:`couchbase_core.iops.base`) and never waits. Each key-value
method takes the same arguments as the blocking API and returns an
:class:`~couchbase_core.result.AsyncResult`; set its ``callback`` and
``errback`` after the call returns::

    def on_ok(result): ...
    def on_err(result, exc_type, exc_value, traceback): ...

    ar = bucket.get("key")
    ar.callback, ar.errback = on_ok, on_err

Single-key calls give the callback that key's result; ``_multi`` calls give
it the AsyncResult itself (a dict of key -> result). ``quiet`` works as in
the blocking API. ``stats``, ``ping`` and ``flush`` return an AsyncResult
whose ``value`` holds the report once it is done.

Connecting starts in the constructor without blocking; operations issued
before the bootstrap ends wait inside the engine. To learn when it ends,
use :meth:`AsyncBucket.on_connect`, or set ``_conncb`` (the hook 2.x
integrations used): ``callback(err)`` with ``err`` None on success.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from couchbase_core._bucketbase import (
    _PIPELINES,
    BaseBucket,
    Latch,
    _Collector,
    _Frame,
    _pop_frame,
    _push_frame,
)
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    NotSupportedError,
    PipelineError,
)
from couchbase_core.iops.base import IOPS
from couchbase_core.result import AsyncResult, MultiResult

__all__ = ["AsyncBucket"]


class _SingleSink:
    __slots__ = ("ar",)

    def __init__(self, ar: AsyncResult) -> None:
        self.ar = ar

    def __call__(self, result: Any) -> None:
        ar = self.ar
        ar[result.key] = result
        ar._complete()


class _AsyncPipeline:
    """``with bucket.pipeline():`` on an AsyncBucket: the operations issued
    inside the block (by the caller's context: an asyncio task, or the
    context the callbacks run in) return their AsyncResults as usual, but
    are handed to the engine together when the block ends (one write per
    node). Operations from other contexts are neither batched nor held back.
    """

    def __init__(self, bucket: "AsyncBucket") -> None:
        self._bucket = bucket
        self._queue: List[Any] = []
        self._frame: Optional[_Frame] = None

    def __enter__(self) -> "_AsyncPipeline":
        bucket = self._bucket
        if self._frame is not None:
            raise PipelineError("this pipeline is already in use; call bucket.pipeline() for each block")
        if bucket._pipeline is not None:
            raise PipelineError("a pipeline is already active on this bucket in this context")
        bucket._check_open()
        self._queue = []
        self._frame = _Frame(bucket._caller(), self)
        _push_frame(_PIPELINES, bucket._scope, self._frame)
        return self

    def add(self, op: Any) -> None:
        self._bucket._check_open()
        self._queue.append(op)

    def __exit__(self, *exc: Any) -> None:
        bucket = self._bucket
        frame, self._frame = self._frame, None
        if frame is not None:
            _pop_frame(_PIPELINES, bucket._scope, frame)
        queue, self._queue = self._queue, []
        if not queue:
            return
        engine = bucket._engine
        if engine.closed:  # closed inside the block: the errbacks hear it from the loop
            engine.defer(lambda: engine.fail_ops(queue, RC.OBJECT_DESTROYED, "the bucket was closed"))
            return
        engine.submit_all(queue)


def _context_caller() -> Any:
    """The owner of an AsyncBucket's pipeline / durability frames: the thread,
    and the running asyncio task if there is one (tasks copy the context of
    their creator, so a task created inside a block must not be in it)."""
    ident = threading.get_ident()
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop in this thread
            task = None
        if task is not None:
            return (ident, task)
    return ident


class AsyncBucket(BaseBucket):
    """A bucket whose operations return :class:`AsyncResult` objects.

    Args:
        iops: the IOPS driving this bucket (required).
        connection_string, and every other argument: as the blocking
            :class:`couchbase_core.bucket.Bucket`.
    """

    _is_async = True
    _caller = staticmethod(_context_caller)

    if TYPE_CHECKING:  # pragma: no cover - annotations only, no runtime definitions
        # The inherited key-value methods return an AsyncResult here, not the
        # ValueResult / OperationResult / MultiResult of the blocking buckets.

        def upsert(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def insert(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def replace(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def append(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def prepend(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def get(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def touch(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def remove(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def counter(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def incr(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def decr(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def rget(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def lock(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def unlock(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def lookup_in(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def retrieve_in(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def mutate_in(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def set(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def add(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def delete(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def observe(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def map_add(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def map_remove(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def list_append(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def list_prepend(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def list_set(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def list_remove(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def queue_push(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def map_get(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def list_get(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]
        def queue_pop(self, *args: Any, **kwargs: Any) -> AsyncResult: ...  # type: ignore[override]

        def upsert_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def insert_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def replace_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def append_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def prepend_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def get_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def touch_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def remove_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def counter_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def incr_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def decr_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def rget_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def lock_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def unlock_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def set_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def add_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def delete_multi(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def append_items(self, *args: Any, **kwargs: Any) -> AsyncResult: ...
        def prepend_items(self, *args: Any, **kwargs: Any) -> AsyncResult: ...

    def __init__(self, iops: Optional[IOPS] = None, *args: Any, **kwargs: Any) -> None:
        if iops is None:
            raise ArgumentError("AsyncBucket needs an IOPS (e.g. couchbase_core.iops.select.SelectIOPS())")
        self._given_iops = iops
        self._connect_listeners: List[Callable[[Optional[CouchbaseError]], None]] = []
        self._connect_result: Any = _PENDING
        #: 2.x hook: called with the bootstrap error (None on success).
        self._conncb: Optional[Callable[[Optional[CouchbaseError]], None]] = None
        super().__init__(*args, **kwargs)

    def _make_iops(self, kwargs: Dict[str, Any]) -> IOPS:
        return self._given_iops

    def _start(self) -> None:
        self._engine.start(self._on_bootstrap)

    def _on_bootstrap(self, err: Optional[CouchbaseError]) -> None:
        self._connect_result = err
        hook = self._conncb
        if hook is not None:
            hook(err)
        listeners, self._connect_listeners = self._connect_listeners, []
        for fn in listeners:
            fn(err)

    def on_connect(self, callback: Callable[[Optional[CouchbaseError]], None]) -> None:
        """Call ``callback(err)`` once the bootstrap has ended (``err`` is None
        on success, the exception otherwise). If it has already ended,
        ``callback`` runs at once."""
        if self._connect_result is _PENDING:
            self._connect_listeners.append(callback)
        else:
            callback(self._connect_result)

    @property
    def connect_error(self) -> Optional[CouchbaseError]:
        """The bootstrap's error once it failed, else None."""
        return None if self._connect_result is _PENDING else self._connect_result

    # -- strategy ------------------------------------------------------------

    def _new_multi(self) -> MultiResult:
        return AsyncResult()

    def _one(self, op: Any, quiet: bool = False) -> Any:
        return self._run_one(op, quiet)

    def _many(self, ops: List[Any], mres: MultiResult) -> Any:
        return self._run_many(ops, mres)

    def _run_one(self, op: Any, quiet: bool) -> AsyncResult:
        ar = AsyncResult(single=True)
        ar._quiet = quiet
        op.sink = _SingleSink(ar)
        self._send(op)
        return ar

    def _send(self, op: Any) -> None:
        """Submit ``op``, or queue it in the caller's open pipeline."""
        if _PIPELINES.get():
            pipeline = self._pipeline
            if pipeline is not None:
                pipeline.add(op)
                return
        if op.multi_key:
            self._engine.submit_batch(op)
        else:
            self._engine.submit(op)

    def _collect(self, ops: List[Any], mres: MultiResult, finish: Callable[[MultiResult], Any]) -> AsyncResult:
        ar: AsyncResult = mres  # type: ignore[assignment]
        latch = Latch()

        def all_done() -> None:
            try:
                ar.value = finish(ar)
            except CouchbaseError:
                pass  # the errback reports it from the results
            ar._complete()

        latch.on_zero = all_done
        sink = _Collector(ar, latch)
        for op in ops:
            op.sink = sink
            latch.count += 1
            self._send(op)
        if not latch.count:
            all_done()
        return ar

    def _run_many(self, ops: List[Any], mres: MultiResult) -> AsyncResult:
        return self._collect(ops, mres, lambda r: r)

    def _wait_latch(self, latch: Latch) -> None:  # pragma: no cover - never waits
        raise PipelineError("an AsyncBucket never waits")

    def query(self, design: str, view: str, use_devmode: bool = False, **kwargs: Any) -> Any:
        """A view query: ``itercls`` must be an AsyncViewBase subclass; call
        ``start()`` on the returned object."""
        itercls = kwargs.get("itercls")
        from couchbase_core.asynchronous.view import AsyncViewBase

        if itercls is None or not (isinstance(itercls, type) and issubclass(itercls, AsyncViewBase)):
            raise ArgumentError("AsyncBucket.query needs itercls=<an AsyncViewBase subclass>")
        return BaseBucket.query(self, design, view, use_devmode, **kwargs)

    def n1ql_query(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """A N1QL query: ``itercls`` must be an AsyncN1QLRequest subclass (or
        the class itself); call ``start()`` on the returned object."""
        from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest

        itercls = kwargs.get("itercls") or AsyncN1QLRequest
        if not (isinstance(itercls, type) and issubclass(itercls, AsyncN1QLRequest)):
            raise ArgumentError("AsyncBucket.n1ql_query needs itercls=<an AsyncN1QLRequest subclass>")
        kwargs["itercls"] = itercls
        return BaseBucket.n1ql_query(self, query, *args, **kwargs)

    def analytics_query(self, query: Any, host: Any = None, *args: Any, **kwargs: Any) -> Any:
        """An analytics query: ``itercls`` must be an AsyncAnalyticsRequest
        subclass (or the class itself); call ``start()`` on the returned
        object. Deferred queries are not available here (NotSupportedError)."""
        from couchbase_core.analytics import DeferredAnalyticsQuery
        from couchbase_core.asynchronous.analytics import AsyncAnalyticsRequest

        if isinstance(query, DeferredAnalyticsQuery):
            raise NotSupportedError("deferred analytics queries poll by waiting: use a blocking or gevent bucket")
        itercls = kwargs.get("itercls") or AsyncAnalyticsRequest
        if not (isinstance(itercls, type) and issubclass(itercls, AsyncAnalyticsRequest)):
            raise ArgumentError("AsyncBucket.analytics_query needs itercls=<an AsyncAnalyticsRequest subclass>")
        kwargs["itercls"] = itercls
        return BaseBucket.analytics_query(self, query, host, *args, **kwargs)

    def search(self, index: str, query: Any, *args: Any, **kwargs: Any) -> Any:
        """A full-text search: ``itercls`` must be an AsyncSearchRequest
        subclass (or the class itself, the default); call ``start()`` on the
        returned object."""
        from couchbase_core.asynchronous.fulltext import AsyncSearchRequest

        itercls = kwargs.get("itercls") or AsyncSearchRequest
        if not (isinstance(itercls, type) and issubclass(itercls, AsyncSearchRequest)):
            raise ArgumentError("AsyncBucket.search needs itercls=<an AsyncSearchRequest subclass>")
        kwargs["itercls"] = itercls
        return BaseBucket.search(self, index, query, *args, **kwargs)

    def pipeline(self) -> Any:  # type: ignore[override]
        """Batch the operations the calling context issues inside the block:
        they are handed to the engine together when it ends."""
        return _AsyncPipeline(self)

    def close(self) -> None:
        """Close every connection; pending operations' errbacks receive
        ObjectDestroyedError from the loop."""
        self._engine.close()


_PENDING = object()

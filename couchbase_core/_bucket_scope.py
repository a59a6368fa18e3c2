"""Pipelines and durability blocks: state scoped to the calling greenlet.

``with bucket.pipeline():`` and ``with bucket.durability(...):`` change how
the *caller's* operations run, never the shared bucket's: this module keeps
that per-caller state in ContextVars (:data:`_PIPELINES`,
:data:`_DURABILITY`), defines the two context managers (:class:`Pipeline`,
:class:`DurabilityContext`) and the bucket methods that open, look up and
send them (:class:`CallerScopeMixin`).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from couchbase_core._bucket_args import _seconds
from couchbase_core._kvops import discard
from couchbase_core._latch import Latch, _Collector
from couchbase_core.exceptions import CouchbaseError, ObjectDestroyedError, PipelineError
from couchbase_core.result import MultiResult, raises

if TYPE_CHECKING:
    from couchbase_core._bucketbase import BaseBucket


__all__ = ["CallerScopeMixin", "DurabilityContext", "Pipeline"]




# ------------------------------------------------------------ caller scope
#
# A pipeline or durability block belongs to the caller that entered it, never
# to the shared bucket: the greenlet (gevent bucket), the thread (blocking
# bucket) or the context (AsyncBucket: an asyncio task, or whatever context
# the caller runs in). Each open block is a frame in a ContextVar, because
# every thread, every greenlet (greenlet >= 1.0, which gevent requires) and
# every asyncio task has a contextvars context of its own. A frame also
# records its owner (``bucket._caller()``): where a context is *copied* into
# another caller (an asyncio task created inside the block; threads on
# Pythons whose threads inherit the context), the copy does not carry the
# block along. The ContextVar holds a mapping (never mutated once set) from a
# bucket's scope key to the innermost frame of this context; frames chain to
# the ones they were entered over, and a frame that has ended is skipped, so
# blocks left in any order restore exactly what is still open.

_NO_FRAMES: Mapping[Any, "_Frame"] = MappingProxyType({})
#: bucket scope key -> innermost pipeline frame (Pipeline / _AsyncPipeline)
_PIPELINES: ContextVar[Mapping[Any, "_Frame"]] = ContextVar("couchbase_pipelines", default=_NO_FRAMES)
#: bucket scope key -> innermost durability frame ((persist_to, replicate_to, timeout))
_DURABILITY: ContextVar[Mapping[Any, "_Frame"]] = ContextVar("couchbase_durability", default=_NO_FRAMES)


class _Frame:
    """One open block of one caller."""

    __slots__ = ("owner", "value", "prev", "active")

    def __init__(self, owner: Any, value: Any) -> None:
        self.owner = owner
        self.value = value
        self.prev: Optional[_Frame] = None
        self.active = True


def _push_frame(var: ContextVar[Mapping[Any, _Frame]], key: Any, frame: _Frame) -> None:
    frames = var.get()
    frame.prev = frames.get(key)
    new = dict(frames)
    new[key] = frame
    var.set(new)


def _pop_frame(var: ContextVar[Mapping[Any, _Frame]], key: Any, frame: _Frame) -> None:
    frame.active = False
    frames = var.get()
    top = frames.get(key)
    if top is None or top.active:
        return  # left out of order (or in another context): lookups skip it
    while top is not None and not top.active:
        top = top.prev
    new = dict(frames)
    if top is None:
        del new[key]
    else:
        new[key] = top
    var.set(new if new else _NO_FRAMES)


def _innermost(frames: Mapping[Any, _Frame], key: Any, caller: Any) -> Optional[_Frame]:
    """The caller's innermost open frame for ``key`` in ``frames``."""
    frame = frames.get(key)
    while frame is not None:
        if frame.active and frame.owner == caller:
            return frame
        frame = frame.prev
    return None


class DurabilityContext:
    """``with bucket.durability(persist_to, replicate_to, timeout):`` — see
    :meth:`BaseBucket.durability`. The block applies to the greenlet /
    thread / context that entered it only; one DurabilityContext may be
    entered by several greenlets at once, each for itself."""

    def __init__(self, bucket: "BaseBucket", persist_to: int, replicate_to: int, timeout: float) -> None:
        self._bucket = bucket
        self.persist_to = persist_to
        self.replicate_to = replicate_to
        self.timeout = timeout
        #: caller -> its open frames of this object (innermost last)
        self._frames: Dict[Any, List[_Frame]] = {}

    def __enter__(self) -> "DurabilityContext":
        bucket = self._bucket
        bucket._require_couchbase("durability()", "plain memcached neither persists nor replicates")
        frame = _Frame(bucket._caller(), (self.persist_to, self.replicate_to, self.timeout or None))
        _push_frame(_DURABILITY, bucket._scope, frame)
        self._frames.setdefault(frame.owner, []).append(frame)
        return self

    def __exit__(self, *exc: Any) -> None:
        bucket = self._bucket
        caller = bucket._caller()
        stack = self._frames.get(caller)
        if not stack:
            return
        frame = stack.pop()
        if not stack:
            del self._frames[caller]
        _pop_frame(_DURABILITY, bucket._scope, frame)


class Pipeline:
    """Batches operations: inside ``with bucket.pipeline():`` every operation
    of the calling greenlet (thread, on the blocking bucket) is queued, and
    all of them are sent together when the block ends.

    Operations inside the block return ``None`` (on blocking and gevent
    buckets); their results are in :attr:`results`, in call order, once the
    block has ended. If any operation failed, leaving the block raises the
    first failure's exception, whose ``all_results`` maps every key to its
    result. Pipelines do not nest within one greenlet; stats, ping and flush
    are refused inside one.

    The block belongs to its greenlet: other greenlets sharing the bucket
    (including greenlets spawned inside the block) run their operations as
    usual meanwhile, may open pipelines of their own, and are never held
    back. Nothing is written before the block ends, and then every queued
    operation is handed to the engine at once (one write per node); timeouts
    count from then. A block left by an exception that is not an
    ``Exception`` (the greenlet was killed, ``gevent.Timeout``,
    ``KeyboardInterrupt``) sends nothing; one left by an ordinary exception
    still sends its operations and waits for them, then lets the exception
    through.
    """

    def __init__(self, bucket: "BaseBucket") -> None:
        self._bucket = bucket
        self._results: List[Any] = []
        self._latch = Latch()
        self._quiet: List[bool] = []
        self._queue: List[Any] = []
        self._frame: Optional[_Frame] = None
        self._active = False

    @property
    def results(self) -> List[Any]:
        """Results of the operations of the last block, in call order: a
        :class:`Result` per single-key call, a
        :class:`~couchbase_core.result.MultiResult` per ``_multi`` call."""
        if self._active:
            raise PipelineError("pipeline results are available once the block ends")
        return list(self._results)

    def __enter__(self) -> "Pipeline":
        bucket = self._bucket
        if self._active:
            raise PipelineError("this Pipeline is already in use; call bucket.pipeline() for each block")
        if bucket._pipeline is not None:
            raise PipelineError("a pipeline is already active on this bucket in this greenlet/thread")
        bucket._check_open()
        self._results = []
        self._quiet = []
        self._queue = []
        self._latch = Latch()
        self._active = True
        self._frame = _Frame(bucket._caller(), self)
        _push_frame(_PIPELINES, bucket._scope, self._frame)
        return self

    def _slot(self, quiet: bool) -> Callable[[Any], None]:
        index = len(self._results)
        self._results.append(None)
        self._quiet.append(quiet)
        results = self._results
        latch = self._latch
        latch.count += 1

        def fill(result: Any) -> None:
            results[index] = result
            latch.done()

        return fill

    def add_one(self, op: Any, quiet: bool) -> None:
        self._bucket._check_open()
        op.sink = self._slot(quiet)
        self._queue.append(op)

    def add_many(self, ops: List[Any], mres: MultiResult) -> MultiResult:
        self._bucket._check_open()
        fill = self._slot(mres._quiet)
        if not ops:
            fill(mres)
            return mres
        inner = Latch(len(ops))
        inner.on_zero = lambda: fill(mres)
        sink = _Collector(mres, inner)
        for op in ops:
            op.sink = sink
        self._queue.extend(ops)
        return mres

    def __exit__(self, etype: Any, evalue: Any, tb: Any) -> None:
        bucket = self._bucket
        frame, self._frame = self._frame, None
        if frame is not None:
            _pop_frame(_PIPELINES, bucket._scope, frame)
        queue, self._queue = self._queue, []
        try:
            if etype is not None and not issubclass(etype, Exception):
                return None  # killed or interrupted: the block is abandoned, nothing is sent
            if queue:
                bucket._send_pipeline(queue, self._latch)
        finally:
            self._active = False
        if etype is not None:
            return None
        self._raise_first_failure()
        return None

    def _raise_first_failure(self) -> None:
        everything = MultiResult()
        first: Optional[CouchbaseError] = None
        for res, quiet in zip(self._results, self._quiet):
            if isinstance(res, MultiResult):
                everything.update(res)
                if first is None:
                    first = res._make_exception()
            elif res is not None:
                everything[res.key] = res
                if first is None and res.rc and raises(res.rc, quiet):
                    first = res._make_exception()
        if first is not None:
            first.all_results = everything
            raise first


class CallerScopeMixin:
    """Pipeline and durability blocks of :class:`~couchbase_core._bucketbase.BaseBucket`."""

    #: Who is calling: the owner recorded in the pipeline / durability
    #: frames (the thread here; the greenlet on the gevent bucket).
    _caller: Callable[[], Any] = staticmethod(threading.get_ident)

    @property
    def _pipeline(self) -> Any:
        """The calling greenlet's (thread's, context's) open pipeline on this
        bucket, or None."""
        frames = _PIPELINES.get()
        if frames:
            frame = _innermost(frames, self._scope, self._caller())
            if frame is not None:
                return frame.value
        return None

    @property
    def _durability_default(self) -> Optional[tuple]:
        """(persist_to, replicate_to, timeout) of the calling greenlet's
        (thread's, context's) innermost durability() block, or None."""
        frames = _DURABILITY.get()
        if frames:
            frame = _innermost(frames, self._scope, self._caller())
            if frame is not None:
                return frame.value
        return None

    def _send_pipeline(self, ops: List[Any], latch: Latch) -> None:
        """Hand a pipeline's queued operations to the engine at once, then
        wait until ``latch`` (counting their results) reaches zero. The
        engine's batch (sched_enter/leave) only spans this loop, which never
        yields, so no other caller's writes are ever held back."""
        engine = self._engine
        if engine.closed:
            raise ObjectDestroyedError("the bucket was closed inside the pipeline block")
        engine.submit_all(ops)
        if latch.count:
            try:
                self._wait_latch(latch)
            except BaseException:  # killed or interrupted: withdraw what is unwritten
                for op in ops:
                    op.sink = discard
                    engine.cancel(op)
                raise

    def _refuse_in_pipeline(self, what: str) -> None:
        if not self._is_async and _PIPELINES.get() and self._pipeline is not None:
            raise PipelineError("%s cannot run inside a pipeline" % what)

    def durability(self, persist_to: int = -1, replicate_to: int = -1, timeout: float = 0.0) -> "DurabilityContext":
        """A context manager: inside ``with bucket.durability(...)``,
        mutations without their own ``persist_to``/``replicate_to`` wait for
        these (``-1`` = every copy the bucket keeps; ``timeout`` 0 = the
        ``durability_timeout`` setting).

        The block applies to the calling greenlet (thread, on the blocking
        bucket; context, on an AsyncBucket) only: other greenlets sharing the
        bucket, including ones spawned inside the block, are unaffected.
        Blocks nest; leaving one restores exactly what the caller had."""
        if timeout:
            timeout = _seconds(timeout, "timeout")
        return DurabilityContext(self, persist_to, replicate_to, timeout)

    def pipeline(self) -> Pipeline:
        """Return a :class:`Pipeline`: ``with bucket.pipeline() as pipe: ...``.
        The block batches the calling greenlet's (thread's) operations only;
        see :class:`Pipeline`."""
        return Pipeline(self)

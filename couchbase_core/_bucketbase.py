"""The bucket API, written once.

:class:`BaseBucket` holds every public operation: it checks the arguments,
encodes keys and values, builds the engine operations and hands them to a
*waiting strategy*, which is all the three bucket flavours differ in:

* :class:`couchbase_core.bucket.Bucket` runs a private select loop until the
  operations are done;
* :class:`couchbase_core.asynchronous.bucket.AsyncBucket` returns an
  :class:`~couchbase_core.result.AsyncResult` at once;
* :class:`gcouchbase.bucket.Bucket` parks the calling greenlet on a waiter
  that the operation's completion switches back to.

A strategy implements :meth:`BaseBucket._run_one` (one operation; return its
result or raise), :meth:`BaseBucket._run_many` (a ``_multi`` call) and
:meth:`BaseBucket._wait_latch` (wait until a :class:`Latch` reaches zero).
"""

from __future__ import annotations

import struct
import threading
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from couchbase_core import _formats
from couchbase_core import subdocument as SD
from couchbase_core import transcoder as _tc
from couchbase_core._engine.instance import Engine
from couchbase_core._engine.protocol import Feature, Opcode
from couchbase_core._engine.settings import Settings
from couchbase_core._kvops import (
    KIND_COUNTER,
    KIND_GET,
    KIND_MUTATION,
    ChainOp,
    CounterOp,
    EndureOp,
    FlushOp,
    GetOp,
    KeyBatch,
    LockOp,
    NoopOp,
    ObserveKeyOp,
    RemoveOp,
    ReplicaGetOp,
    StatOp,
    StoreOp,
    SubdocLookupOp,
    SubdocMutateOp,
    TouchOp,
    discard,
)
from couchbase_core.connstr import MAX_TIMEOUT
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    DurabilityImpossibleError,
    NotSupportedError,
    ObjectDestroyedError,
    PipelineError,
    SubdocEmptyPathError,
    TooBigError,
    ValueFormatError,
    rc_description,
)
from couchbase_core.items import Item, ItemCollection
from couchbase_core.result import MultiResult, OperationResult, Result, ValueResult

__all__ = ["BaseBucket", "Latch", "Pipeline", "PingStatus", "DurabilityContext"]

_FMT_AUTO = _formats.FMT_AUTO
_FMT_BYTES = _formats.FMT_BYTES
_FMT_UTF8 = _formats.FMT_UTF8
_FMT_JSON = _formats.FMT_JSON
_STORE_EXTRAS = struct.Struct(">II")
_TTL = struct.Struct(">I")
_COUNTER_EXTRAS = struct.Struct(">QQI")
_MAX_KEY = 250
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_KEY_ENOENT = RC.KEY_ENOENT

_NO_OPTIONS: Dict[str, Any] = {}

#: Options every bucket constructor accepts besides connection-string options.
_CTOR_OPTIONS = ("quiet", "transcoder", "lockmode", "unlock_gil", "default_format", "data_passthrough")


class PingStatus:
    """Status values in a :meth:`BaseBucket.ping` report."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"


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


def _check_int(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError("%s must be an integer, not %s" % (name, type(value).__name__))
        value = int(value)
    if value < low or value > high:
        raise ArgumentError("%s must be between %d and %d (got %d)" % (name, low, high, value))
    return value


def _ttl(ttl: Any) -> int:
    if type(ttl) is int and 0 <= ttl <= _U32:
        return ttl
    return _check_int(ttl, "ttl", 0, _U32)


def _cas(cas: Any) -> int:
    if type(cas) is int and 0 <= cas <= _U64:
        return cas
    return _check_int(cas, "cas", 0, _U64)


def _per_key_failure(key: Any, exc: CouchbaseError, item: Optional[Item], value_result: bool) -> Result:
    res: Result
    if item is not None:
        res = item
    elif value_result:
        res = ValueResult(key)
    else:
        res = OperationResult(key)
    res.rc = exc.rc
    res._message = exc.message
    res._exc = exc
    if exc.key is None:
        exc.key = key
    return res


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
                if first is None and res.rc and not (quiet and res.rc == _KEY_ENOENT):
                    first = res._make_exception()
        if first is not None:
            first.all_results = everything
            raise first


class BaseBucket:
    """Every bucket operation (see the module docs). Not used directly."""

    #: ``True`` for the async bucket, whose calls never wait.
    _is_async = False

    def __init__(self, connection_string: Any = None, username: Optional[str] = None,
                 password: Optional[str] = None, quiet: bool = False, transcoder: Any = None,
                 lockmode: int = _formats.LOCKMODE_EXC, **kwargs: Any) -> None:
        if connection_string is None:
            connection_string = kwargs.pop("connstr", None)
        if connection_string is None:
            raise ArgumentError("a connection string is required, e.g. 'memcached://localhost:11211'")
        unlock_gil = kwargs.pop("unlock_gil", None)
        del unlock_gil  # accepted for 2.x compatibility; there is no GIL to release here
        default_format = kwargs.pop("default_format", _FMT_JSON)
        data_passthrough = kwargs.pop("data_passthrough", False)
        self._settings = Settings.from_connstr(connection_string, username, password, **kwargs)
        if self._settings.scheme == "memcached" and (self._settings.username or self._settings.password):
            raise NotSupportedError(
                "memcached:// connections are unauthenticated: SASL is not offered for plain memcached "
                "(drop the username/password, or use couchbase:// for a Couchbase cluster)")
        self._quiet = bool(quiet)
        self._transcoder = None
        self.transcoder = transcoder
        self._lockmode = lockmode
        if lockmode not in (_formats.LOCKMODE_EXC, _formats.LOCKMODE_WAIT, _formats.LOCKMODE_NONE):
            raise ArgumentError("lockmode must be LOCKMODE_EXC, LOCKMODE_WAIT or LOCKMODE_NONE")
        self.default_format = default_format
        self.data_passthrough = data_passthrough
        self._timeout = self._settings.operation_timeout
        #: This bucket's key in the callers' pipeline / durability scopes.
        self._scope = object()
        self._iops = self._make_iops(kwargs)
        self._engine = Engine(self._iops, self._settings)
        self._start()

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

    def _collect(self, ops: List[Any], mres: MultiResult, finish: Callable[[MultiResult], Any]) -> Any:
        """Submit ``ops``, wait until each has put its result in ``mres``,
        and return ``finish(mres)`` (which may raise)."""
        latch = Latch()
        sink = _Collector(mres, latch)
        engine = self._engine
        for op in ops:
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
        if latch.count:
            try:
                self._wait_latch(latch)
            except BaseException:  # killed or interrupted: see _run_one
                for op in ops:
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

    # ------------------------------------------------------------ properties

    @property
    def timeout(self) -> float:
        """Key-value operation timeout in seconds (``operation_timeout``)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = self._settings.operation_timeout = _seconds(value, "timeout")

    @property
    def views_timeout(self) -> float:
        """View query timeout in seconds."""
        return self._settings.views_timeout

    @views_timeout.setter
    def views_timeout(self, value: float) -> None:
        self._settings.views_timeout = _seconds(value, "views_timeout")

    @property
    def n1ql_timeout(self) -> float:
        """N1QL query timeout in seconds."""
        return self._settings.n1ql_timeout

    @n1ql_timeout.setter
    def n1ql_timeout(self, value: float) -> None:
        self._settings.n1ql_timeout = _seconds(value, "n1ql_timeout")

    @property
    def quiet(self) -> bool:
        """Default for ``quiet`` on reads: a miss returns a failed result
        instead of raising NotFoundError."""
        return self._quiet

    @quiet.setter
    def quiet(self, value: bool) -> None:
        self._quiet = bool(value)

    @property
    def default_format(self) -> int:
        """Format used by stores when ``format`` is not given (``FMT_JSON``)."""
        return self._default_format

    @default_format.setter
    def default_format(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError("default_format must be one of the FMT_* constants")
        self._default_format = value

    @property
    def data_passthrough(self) -> bool:
        """When True, reads return raw bytes and stores take bytes as they are."""
        return self._data_passthrough

    @data_passthrough.setter
    def data_passthrough(self, value: bool) -> None:
        self._data_passthrough = bool(value)

    @property
    def transcoder(self) -> Any:
        """The custom :class:`~couchbase_core.transcoder.Transcoder`, or None
        for the built-in conversions."""
        return self._transcoder

    @transcoder.setter
    def transcoder(self, value: Any) -> None:
        if value is not None:
            for name in ("encode_key", "decode_key", "encode_value", "decode_value"):
                if not callable(getattr(value, name, None)):
                    raise ArgumentError("a transcoder needs an %s method" % name)
        self._transcoder = value

    @property
    def lockmode(self) -> int:
        """How a blocking bucket reacts to use by several threads."""
        return self._lockmode

    @property
    def bucket(self) -> str:
        """The bucket name (``'default'`` when the connection string has none)."""
        return self._settings.bucket or "default"

    @property
    def server_nodes(self) -> List[str]:
        """``host:port`` of every key-value node."""
        return [c.authority for c in self._engine.connections]

    @property
    def connected(self) -> bool:
        """True while at least one node connection is up."""
        return self._engine.connected

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._engine.closed

    @property
    def is_ssl(self) -> bool:
        """True for TLS connections (``couchbases://``)."""
        return self._settings.scheme == "couchbases"

    @property
    def is_memcached(self) -> bool:
        """True for ``memcached://`` buckets (plain memcached, no Couchbase features)."""
        return self._settings.scheme == "memcached"

    def close(self) -> None:
        """Close every connection. Pending operations fail with
        ObjectDestroyedError; later calls raise it."""
        self._engine.close()

    def __del__(self) -> None:
        # A bucket dropped without close() must not leave sockets and loop
        # watchers behind (the engine never refers back to the bucket).
        engine = self.__dict__.get("_engine")
        if engine is not None and not engine.closed:
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self) -> "BaseBucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.connected else "connecting")
        return "<%s.%s %s://%s bucket=%r %s>" % (
            type(self).__module__, type(self).__name__, self._settings.scheme,
            ",".join(self.server_nodes), self.bucket, state)

    # ----------------------------------------------------- argument helpers

    def _kb(self, key: Any) -> bytes:
        tc = self._transcoder
        if tc is None:
            tp = type(key)
            if tp is str:
                try:
                    kb = key.encode()
                except UnicodeEncodeError as exc:
                    raise _tc.unencodable_key(key, exc) from None
            elif tp is bytes:
                kb = key
            else:
                kb = _tc.encode_key(key)
        else:
            try:
                kb = tc.encode_key(key)
            except CouchbaseError:
                raise
            except Exception as exc:
                raise ArgumentError({"message": "transcoder could not encode key: %r" % (exc,),
                                     "key": key, "inner_cause": exc}) from exc
            if not isinstance(kb, bytes):
                raise ArgumentError({"message": "transcoder.encode_key must return bytes", "key": key})
        size = len(kb)
        if size == 0 or size > _MAX_KEY:
            if size == 0:
                raise ArgumentError({"message": "empty key", "key": key})
            raise ArgumentError({"message": "key is %d bytes long; the limit is %d" % (size, _MAX_KEY),
                                 "key": key})
        return kb

    def _encode(self, key: Any, value: Any, fmt: Any) -> Tuple[bytes, int]:
        if fmt is None:
            fmt = self._default_format
        elif isinstance(fmt, bool) or not isinstance(fmt, int):
            raise ArgumentError({"message": "format must be one of the FMT_* constants", "key": key})
        if self._data_passthrough:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueFormatError({"message": "data_passthrough stores need bytes, not %s"
                                        % type(value).__name__, "key": key})
            data, flags = bytes(value), (fmt if fmt != _FMT_AUTO else _FMT_BYTES)
        else:
            tc = self._transcoder
            try:
                if tc is None:
                    data, flags = _tc.encode_value(value, fmt)
                else:
                    data, flags = tc.encode_value(value, fmt)
                    if not isinstance(data, (bytes, bytearray, memoryview)):
                        raise ValueFormatError("transcoder.encode_value must return (bytes, flags)")
                    data = bytes(data)
            except CouchbaseError as exc:
                if exc.key is None:
                    exc.key = key
                raise
            except Exception as exc:
                raise ValueFormatError({"message": "transcoder could not encode the value: %r" % (exc,),
                                        "key": key, "inner_cause": exc}) from exc
        if len(data) > self._settings.max_value_size:
            raise TooBigError({"rc": RC.CLIENT_TOO_BIG, "key": key,
                               "message": "value is %d bytes; the limit for this bucket is %d"
                               % (len(data), self._settings.max_value_size)})
        return data, flags & _U32

    def _fragment(self, key: Any, value: Any, fmt: Any) -> bytes:
        """Bytes for append/prepend: the server concatenates raw bytes."""
        if fmt is None or fmt == _FMT_AUTO:
            if isinstance(value, str):
                data = _utf8_fragment(key, value)
            elif isinstance(value, (bytes, bytearray, memoryview)):
                data = bytes(value)
            else:
                raise ValueFormatError({"message": "append/prepend need str or bytes, not %s"
                                        % type(value).__name__, "key": key})
        elif fmt == _FMT_UTF8:
            if not isinstance(value, str):
                raise ValueFormatError({"message": "FMT_UTF8 needs str, not %s" % type(value).__name__, "key": key})
            data = _utf8_fragment(key, value)
        elif fmt == _FMT_BYTES:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueFormatError({"message": "FMT_BYTES needs bytes, not %s" % type(value).__name__,
                                        "key": key})
            data = bytes(value)
        else:
            raise ArgumentError({"message": "append/prepend accept FMT_UTF8 or FMT_BYTES only: the server "
                                 "concatenates raw bytes", "key": key})
        if len(data) > self._settings.max_value_size:
            raise TooBigError({"rc": RC.CLIENT_TOO_BIG, "key": key,
                               "message": "value is %d bytes; the limit for this bucket is %d"
                               % (len(data), self._settings.max_value_size)})
        return data

    def _mutation_extras(self, persist_to: Any, replicate_to: Any,
                         durability_level: Any) -> Tuple[Optional[tuple], bytes]:
        """Validate durability arguments; return (observe requirements or
        None, framing extras)."""
        default = self._durability_default
        dtimeout = None
        if not persist_to and not replicate_to and not durability_level and default is not None:
            persist_to, replicate_to, dtimeout = default
        observe: Optional[tuple] = None
        if persist_to or replicate_to:
            self._require_couchbase("persist_to/replicate_to",
                                    "plain memcached neither persists nor replicates")
            persist = _check_int(persist_to, "persist_to", -1, 4)
            replicate = _check_int(replicate_to, "replicate_to", -1, 3)
            cfg = self._engine.config
            replicas = cfg.num_replicas if cfg is not None else 0
            persist = replicas + 1 if persist < 0 else persist
            replicate = replicas if replicate < 0 else replicate
            if persist > replicas + 1 or replicate > replicas:
                raise DurabilityImpossibleError(
                    "persist_to=%d/replicate_to=%d needs more copies than the bucket keeps (1 active + %d "
                    "replica(s))" % (persist, replicate, replicas))
            settings = self._settings
            observe = (persist, replicate, dtimeout or settings.durability_timeout, settings.durability_interval)
        framing = b""
        if durability_level:
            self._require_couchbase("durability_level", "plain memcached has no synchronous replication")
            level = _check_int(durability_level, "durability_level", 0, 3)
            if observe is not None:
                raise ArgumentError("durability_level cannot be combined with persist_to/replicate_to")
            agreed = self._engine.server_features
            if agreed is not None and Feature.SYNC_REPLICATION not in agreed:
                raise NotSupportedError("durability_level needs synchronous replication, which the server did "
                                        "not agree to (Couchbase Server 6.5 or later); use persist_to/"
                                        "replicate_to instead")
            timeout_ms = max(1, min(65534, int(self._timeout * 900)))
            framing = bytes((0x13, level)) + struct.pack(">H", timeout_ms)
        return observe, framing

    @staticmethod
    def _with_durability(op: Any, extras: Tuple[Optional[tuple], bytes]) -> Any:
        op.durability, op.framing = extras
        return op

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

    def _needs_couchbase(self, what: str, why: str) -> NotSupportedError:
        self._check_open()
        return NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED,
                                  "message": "%s needs a Couchbase bucket: %s" % (what, why)})

    # ------------------------------------------------------- single-key ops

    def _store_parts(self, opcode: int, key: Any, value: Any, cas: Any, ttl: Any, fmt: Any) -> tuple:
        kb = self._kb(key)
        data, flags = self._encode(key, value, fmt)
        return opcode, kb, _STORE_EXTRAS.pack(flags, _ttl(ttl)), data, _cas(cas)

    def _store_op(self, opcode: int, key: Any, value: Any, cas: Any, ttl: Any, fmt: Any) -> StoreOp:
        opcode, kb, extras, data, cas = self._store_parts(opcode, key, value, cas, ttl, fmt)
        return StoreOp(key, opcode, kb, extras, data, cas, self._timeout)

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Store ``value`` under ``key``, creating or replacing it.

        Args:
            key: ``str`` or ``bytes``, 1 to 250 bytes once encoded.
            value: the value, encoded according to ``format``.
            cas: if non-zero, store only if the document's CAS still equals it.
            ttl: expiry: 0 = never; up to 30 days = seconds from now; more
                = an absolute Unix time.
            format: one of the ``FMT_*`` constants (default: the bucket's
                ``default_format``, ``FMT_JSON``).
            persist_to, replicate_to: wait until the mutation is persisted
                on / replicated to that many nodes (observe-based; -1 = all;
                Couchbase buckets only).
            durability_level: synchronous replication instead (one of the
                ``DURABILITY_*`` constants; Couchbase Server 6.5+).

        Returns:
            :class:`~couchbase_core.result.OperationResult` with the new CAS.

        Raises:
            KeyExistsError: ``cas`` did not match.
            ValueFormatError: the value cannot be encoded in ``format``.
            TooBigError: the encoded value is over the size limit.
            ArgumentError: a bad key, ttl, cas or format.
        """
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._store_op(Opcode.SET, key, value, cas, ttl, format), extras))

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Store ``value`` only if ``key`` does not exist yet
        (:class:`KeyExistsError` otherwise). Arguments as :meth:`upsert`."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._store_op(Opcode.ADD, key, value, 0, ttl, format), extras))

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Store ``value`` only if ``key`` exists (:class:`NotFoundError`
        otherwise). Arguments as :meth:`upsert`."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._store_op(Opcode.REPLACE, key, value, cas, ttl, format),
                                               extras))

    def _concat_parts(self, opcode: int, key: Any, value: Any, cas: Any, fmt: Any) -> tuple:
        kb = self._kb(key)
        return opcode, kb, b"", self._fragment(key, value, fmt), _cas(cas)

    def _concat_op(self, opcode: int, key: Any, value: Any, cas: Any, fmt: Any) -> StoreOp:
        opcode, kb, extras, data, cas = self._concat_parts(opcode, key, value, cas, fmt)
        return StoreOp(key, opcode, kb, extras, data, cas, self._timeout)

    def append(self, key: Any, value: Any, cas: int = 0, format: Optional[int] = None,  # noqa: A002
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Append ``value`` (``str`` or ``bytes``) to the stored bytes of an
        existing key (:class:`NotStoredError` if it does not exist)."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._concat_op(Opcode.APPEND, key, value, cas, format), extras))

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Optional[int] = None,  # noqa: A002
                persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Prepend ``value`` to the stored bytes of an existing key."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._concat_op(Opcode.PREPEND, key, value, cas, format), extras))

    def get(self, key: Any, ttl: int = 0, quiet: Optional[bool] = None, replica: bool = False,
            no_format: bool = False) -> Any:
        """Read ``key``.

        Args:
            ttl: if non-zero, also set the expiry (get-and-touch).
            quiet: if true, a missing key returns a result with
                ``success == False`` instead of raising NotFoundError
                (default: the bucket's ``quiet``).
            replica: read from a replica (Couchbase buckets only).
            no_format: return the stored bytes undecoded.

        Returns:
            :class:`~couchbase_core.result.ValueResult`.
        """
        if replica:
            if ttl:
                raise ArgumentError("a replica read cannot change the expiry (ttl); replicas are read-only")
            op = self._replica_op(key, None, no_format)
            return self._one(op, self._quiet if quiet is None else quiet)
        kb = self._kb(key)
        if ttl:
            ttl = _ttl(ttl)
        op = GetOp(key, kb, ttl, self._timeout, self._transcoder, no_format or self._data_passthrough)
        if _PIPELINES.get() and self._pipeline is not None:
            return self._one(op, self._quiet if quiet is None else quiet)
        return self._run_one(op, self._quiet if quiet is None else quiet)

    def touch(self, key: Any, ttl: int = 0) -> Any:
        """Set the expiry of ``key`` without reading it."""
        kb = self._kb(key)
        op = TouchOp(key, Opcode.TOUCH, kb, _TTL.pack(_ttl(ttl)), b"", 0, self._timeout)
        return self._one(op)

    def remove(self, key: Any, cas: int = 0, quiet: Optional[bool] = None,
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Delete ``key`` (only if its CAS equals ``cas`` when given). With
        ``quiet`` a missing key is not an error."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        kb = self._kb(key)
        op = RemoveOp(key, Opcode.DELETE, kb, b"", b"", _cas(cas), self._timeout)
        return self._one(self._with_durability(op, extras), self._quiet if quiet is None else quiet)

    def _counter_parts(self, key: Any, delta: Any, initial: Any, ttl: Any) -> tuple:
        kb = self._kb(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ArgumentError({"message": "delta must be an integer, not %s" % type(delta).__name__, "key": key})
        if not -_U64 <= delta <= _U64:
            raise ArgumentError({"message": "delta is out of the 64-bit range", "key": key})
        if initial is None:
            expiry = _U32  # the key must exist
            start = 0
        else:
            start = _check_int(initial, "initial", 0, _U64)
            expiry = _ttl(ttl)
            if expiry == _U32:
                raise ArgumentError({"message": "ttl 0xFFFFFFFF is reserved by the protocol", "key": key})
        opcode = Opcode.INCREMENT if delta >= 0 else Opcode.DECREMENT
        return opcode, kb, _COUNTER_EXTRAS.pack(abs(delta), start, expiry), b"", 0

    def _counter_op(self, key: Any, delta: Any, initial: Any, ttl: Any) -> CounterOp:
        opcode, kb, extras, _value, _cas0 = self._counter_parts(key, delta, initial, ttl)
        return CounterOp(key, opcode, kb, extras, b"", 0, self._timeout)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                durability_level: int = 0) -> Any:
        """Add ``delta`` (negative: subtract; the server floors at 0) to the
        decimal number stored at ``key``.

        Args:
            initial: if given, create the key with this value when it does
                not exist (and ``ttl`` then applies); if None, a missing key
                raises NotFoundError.

        Returns:
            :class:`~couchbase_core.result.ValueResult` whose ``value`` is
            the new count (an ``int``).
        """
        extras = self._mutation_extras(0, 0, durability_level)
        return self._one(self._with_durability(self._counter_op(key, delta, initial, ttl), extras))

    def incr(self, key: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> Any:
        """``counter(key, amount, ...)`` (2.x alias)."""
        return self.counter(key, amount, initial, ttl)

    def decr(self, key: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> Any:
        """``counter(key, -amount, ...)`` (2.x alias)."""
        return self.counter(key, -amount, initial, ttl)

    # --- Couchbase-only operations ---------------------------------------------

    def _plain_memcached(self) -> bool:
        """True when the bucket is plain memcached (or a memcached bucket)."""
        if self._settings.scheme == "memcached":
            return True
        cfg = self._engine.config
        return cfg is not None and cfg.locator == "ketama"

    def _require_couchbase(self, what: str, why: str) -> None:
        if self._plain_memcached():
            raise self._needs_couchbase(what, why)

    def _replica_list(self, replica_index: Optional[int]) -> List[int]:
        cfg = self._engine.config
        count = cfg.num_replicas if cfg is not None else 1
        if replica_index is None:
            if count < 1:
                raise NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED,
                                         "message": "the bucket has no replicas configured"})
            return list(range(1, count + 1))
        index = _check_int(replica_index, "replica_index", 0, 3)
        if cfg is not None and index >= count:
            raise ArgumentError("replica_index %d: the bucket keeps %d replica(s)" % (index, count))
        return [index + 1]

    def _replica_op(self, key: Any, replica_index: Optional[int], no_format: bool = False) -> Any:
        self._require_couchbase("a replica read", "plain memcached keeps no replicas")
        kb = self._kb(key)
        return ReplicaGetOp(key, kb, self._replica_list(replica_index), self._engine, self._timeout,
                            self._transcoder, bool(no_format) or self._data_passthrough)

    def rget(self, key: Any, replica_index: Optional[int] = None, quiet: Optional[bool] = None,
             no_format: bool = False) -> Any:
        """Read ``key`` from a replica: ``replica_index`` 0 for the first
        replica, 1 for the second...; None tries each replica in turn until
        one has it. Returns a :class:`ValueResult` (Couchbase buckets only)."""
        op = self._replica_op(key, replica_index, no_format)
        return self._one(op, self._quiet if quiet is None else quiet)

    def lock(self, key: Any, ttl: int = 0) -> Any:
        """Read ``key`` and lock it for ``ttl`` seconds (0: the server's default,
        15 s; the server caps locks at 30 s and gives a longer request the
        default instead). Until it is unlocked (``unlock`` with the returned
        CAS, or a mutation with that CAS) or the lock expires, other mutations
        fail (:class:`LockedError` / :class:`TemporaryFailError`) and reads
        see CAS ``0xFFFFFFFFFFFFFFFF``. Couchbase buckets only."""
        self._require_couchbase("lock", "plain memcached has no document locking (GET_LOCKED)")
        kb = self._kb(key)
        op = LockOp(key, kb, _ttl(ttl), self._timeout, self._transcoder, self._data_passthrough)
        return self._one(op)

    def unlock(self, key: Any, cas: int) -> Any:
        """Release a lock taken with :meth:`lock` (``cas`` from its result)."""
        self._require_couchbase("unlock", "plain memcached has no document locking (UNLOCK_KEY)")
        kb = self._kb(key)
        if not cas:
            raise ArgumentError({"message": "unlock needs the CAS returned by lock", "key": key})
        op = StoreOp(key, Opcode.UNLOCK_KEY, kb, b"", b"", _cas(cas), self._timeout)
        return self._one(op)

    # --- sub-document ------------------------------------------------------------

    def _subdoc_specs(self, specs: Tuple[Any, ...], lookups: bool) -> List[tuple]:
        if not specs:
            raise ArgumentError("at least one sub-document spec is needed")
        if len(specs) > 16:
            raise ArgumentError("at most 16 sub-document specs per call (got %d)" % len(specs))
        out = []
        for spec in specs:
            if not isinstance(spec, SD.Spec):
                raise ArgumentError("sub-document specs come from couchbase_core.subdocument, not %s"
                                    % type(spec).__name__)
            if spec.is_lookup != lookups:
                raise ArgumentError("%s specs cannot be used in %s" % (
                    "lookup" if spec.is_lookup else "mutation", "lookup_in" if lookups else "mutate_in"))
            try:
                path = spec.path.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ArgumentError({"message": "sub-document path %r has no UTF-8 form: %s" % (spec.path, exc.reason),
                                     "inner_cause": exc}) from None
            if not path and spec.opcode not in (0xCB, 0xCC, 0xCE):
                raise SubdocEmptyPathError("an empty path is only allowed for array_append, array_prepend "
                                           "and array_addunique on a root array")
            out.append((spec.opcode, path, spec.value, spec.flags))
        return out

    def lookup_in(self, key: Any, *specs: Any, **kwargs: Any) -> Any:
        """Read paths inside a JSON document (Couchbase buckets only).

        ``specs`` are :func:`couchbase_core.subdocument.get`, ``exists`` and
        ``get_count``. Returns a :class:`~couchbase_core.result.SubdocResult`;
        a missing document raises NotFoundError (unless ``quiet=True``), a
        missing path does not: check ``result.exists(path)`` or index it.
        Keyword ``access_deleted=True`` reads a deleted document's xattrs.
        """
        self._require_couchbase("lookup_in", "plain memcached has no sub-document API")
        quiet = kwargs.pop("quiet", None)
        doc_flags = 0x04 if kwargs.pop("access_deleted", False) else 0
        if kwargs:
            raise ArgumentError("unknown lookup_in argument(s): %s" % ", ".join(sorted(kwargs)))
        kb = self._kb(key)
        op = SubdocLookupOp(key, kb, self._subdoc_specs(specs, True), doc_flags, self._timeout)
        return self._one(op, self._quiet if quiet is None else bool(quiet))

    def retrieve_in(self, key: Any, *paths: Any) -> Any:
        """``lookup_in(key, get(path1), get(path2), ...)``."""
        return self.lookup_in(key, *(SD.get(p) for p in paths))

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0, create_doc: bool = False,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, access_deleted: bool = False, durability_level: int = 0) -> Any:
        """Change paths inside a JSON document, atomically (Couchbase buckets
        only). ``specs`` are the mutation builders of
        :mod:`couchbase_core.subdocument`.

        Args:
            cas: only if the document's CAS still equals it.
            ttl: new expiry of the document.
            create_doc / upsert_doc: create the document if it is missing.
            insert_doc: create the document; fail if it exists.

        Returns a :class:`~couchbase_core.result.SubdocResult` (counter
        specs' new values are in it). If a spec fails, nothing is changed and
        that spec's error is raised (e.g. SubdocPathExistsError).
        """
        self._require_couchbase("mutate_in", "plain memcached has no sub-document API")
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        if insert_doc and (create_doc or upsert_doc):
            raise ArgumentError("insert_doc cannot be combined with create_doc/upsert_doc")
        doc_flags = (0x01 if (create_doc or upsert_doc) else 0) | (0x02 if insert_doc else 0)
        if access_deleted:
            doc_flags |= 0x04
        kb = self._kb(key)
        op = SubdocMutateOp(key, kb, self._subdoc_specs(specs, False), doc_flags, _ttl(ttl), _cas(cas),
                            self._timeout)
        return self._one(self._with_durability(op, extras))

    def observe(self, key: Any, master_only: bool = False) -> Any:
        """Ask the nodes holding ``key`` about its state: a
        :class:`ValueResult` whose ``value`` is a list of
        :class:`~couchbase_core.result.ObserveInfo` (the active node first;
        only it with ``master_only``). Couchbase buckets only."""
        self._require_couchbase("observe", "plain memcached neither persists nor replicates (no OBSERVE)")
        kb = self._kb(key)
        return self._one(ObserveKeyOp(key, kb, bool(master_only), self._timeout))

    def _endure_args(self, persist_to: Any, replicate_to: Any) -> Tuple[int, int]:
        observe, _framing = self._mutation_extras(persist_to if persist_to else 0,
                                                  replicate_to if replicate_to else 0, 0)
        if observe is None:
            raise ArgumentError("endure needs persist_to and/or replicate_to")
        return observe[0], observe[1]

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0, interval: float = 0.010) -> Any:
        """Wait until the mutation of ``key`` whose CAS is ``cas`` (0: any) is
        persisted on ``persist_to`` nodes and replicated to ``replicate_to``
        replicas (-1: all), or, with ``check_removed``, until its removal is.
        Raises TimeoutError after ``timeout`` seconds, KeyExistsError if the
        document changed meanwhile. Couchbase buckets only."""
        self._require_couchbase("endure", "plain memcached neither persists nor replicates (no OBSERVE)")
        persist, replicate = self._endure_args(persist_to, replicate_to)
        kb = self._kb(key)
        op = EndureOp(key, kb, _cas(cas), persist, replicate, bool(check_removed),
                      _positive_seconds(timeout, "timeout"), _positive_seconds(interval, "interval"))
        return self._one(op)

    # --- data structures on sub-document ---------------------------------------

    def _ds_lookup(self, key: Any, spec: Any) -> SubdocLookupOp:
        return SubdocLookupOp(key, self._kb(key), self._subdoc_specs((spec,), True), 0, self._timeout)

    def _ds_mutate(self, key: Any, spec: Any, cas: int = 0, create: bool = False, ttl: int = 0,
                   extras: Tuple[Optional[tuple], bytes] = (None, b"")) -> SubdocMutateOp:
        op = SubdocMutateOp(key, self._kb(key), self._subdoc_specs((spec,), False), 0x01 if create else 0,
                            _ttl(ttl), _cas(cas), self._timeout)
        return self._with_durability(op, extras)

    @staticmethod
    def _ds_cas_mismatch(key: Any, cas: int, current: int) -> Optional[OperationResult]:
        """The failure for a read-modify-write whose caller's CAS is stale."""
        if not cas or cas == current:
            return None
        res = OperationResult(key, RC.KEY_EEXISTS)
        res._message = "the document's CAS is no longer %d" % cas
        return res

    def _ds_chain(self, key: Any, steps: Callable[[], Any], quiet: bool = False) -> Any:
        self._require_couchbase("data structures", "plain memcached has no sub-document API")
        self._kb(key)
        return self._one(ChainOp(key, steps, self._timeout * 4), quiet)

    def _ds_value_at(self, key: Any, spec: Any) -> Any:
        """Chain: the value at one path as a ValueResult."""
        def steps() -> Any:
            res = yield self._ds_lookup(key, spec)
            if res.rc:
                return res
            rc, value = res._results[0]
            out = ValueResult(key, rc, res.cas, value if not rc else None)
            if rc:
                out._message = "%s (path %r)" % (rc_description(rc), spec.path)
            return out
        return self._ds_chain(key, steps)

    def _ds_document(self, key: Any, summarise: Callable[[Any], Any], want: type) -> Any:
        """Chain: read the whole document and return ``summarise(doc)``."""
        def steps() -> Any:
            res = yield GetOp(key, self._kb(key), 0, self._timeout, self._transcoder, False)
            if res.rc:
                return res
            if not isinstance(res.value, want):
                bad = ValueResult(key, RC.SUBDOC_PATH_MISMATCH)
                bad._message = "the document is not a JSON %s" % ("array" if want is list else "object")
                return bad
            return ValueResult(key, 0, res.cas, summarise(res.value), res.flags)
        return self._ds_chain(key, steps)

    def map_add(self, key: Any, mapkey: str, value: Any, create: bool = False, **kwargs: Any) -> Any:
        """Set ``mapkey`` of the JSON object stored at ``key`` (create the
        document if ``create``)."""
        self._require_couchbase("map_add", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.upsert(mapkey, value), create_doc=create, **kwargs)

    def map_get(self, key: Any, mapkey: str) -> Any:
        """Value of ``mapkey`` in the object at ``key`` (a ValueResult)."""
        return self._ds_value_at(key, SD.get(mapkey))

    def map_remove(self, key: Any, mapkey: str, **kwargs: Any) -> Any:
        """Remove ``mapkey`` from the object at ``key``."""
        self._require_couchbase("map_remove", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.remove(mapkey), **kwargs)

    def map_size(self, key: Any) -> Any:
        """Number of entries of the object at ``key`` (ValueResult.value)."""
        return self._ds_document(key, len, dict)

    def list_append(self, key: Any, value: Any, create: bool = False, **kwargs: Any) -> Any:
        """Add ``value`` at the end of the JSON array at ``key``."""
        self._require_couchbase("list_append", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.array_append("", value), create_doc=create, **kwargs)

    def list_prepend(self, key: Any, value: Any, create: bool = False, **kwargs: Any) -> Any:
        """Add ``value`` at the start of the JSON array at ``key``."""
        self._require_couchbase("list_prepend", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.array_prepend("", value), create_doc=create, **kwargs)

    def list_set(self, key: Any, index: int, value: Any, **kwargs: Any) -> Any:
        """Replace the element at ``index`` of the array at ``key``."""
        self._require_couchbase("list_set", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.replace("[%d]" % _check_int(index, "index", -2 ** 31, 2 ** 31), value),
                              **kwargs)

    def list_get(self, key: Any, index: int) -> Any:
        """Element ``index`` of the array at ``key`` (a ValueResult)."""
        return self._ds_value_at(key, SD.get("[%d]" % _check_int(index, "index", -2 ** 31, 2 ** 31)))

    def list_remove(self, key: Any, index: int, **kwargs: Any) -> Any:
        """Remove element ``index`` of the array at ``key``."""
        self._require_couchbase("list_remove", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.remove("[%d]" % _check_int(index, "index", -2 ** 31, 2 ** 31)), **kwargs)

    def list_size(self, key: Any) -> Any:
        """Number of elements of the array at ``key`` (ValueResult.value)."""
        return self._ds_document(key, len, list)

    def set_add(self, key: Any, value: Any, create: bool = False, cas: int = 0, ttl: int = 0,
                persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Add a primitive ``value`` to the array at ``key`` unless present.
        Returns the OperationResult, or None if the value was already there
        (an AsyncBucket's result then has ``cas == 0``)."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        spec = SD.array_addunique("", value)

        def steps() -> Any:
            res = yield self._ds_mutate(key, spec, cas=cas, create=create, ttl=ttl, extras=extras)
            if res.rc == RC.SUBDOC_PATH_EEXISTS:
                present = OperationResult(key, 0, 0)
                return present
            return res
        res = self._ds_chain(key, steps)
        if isinstance(res, OperationResult) and not self._is_async and res.cas == 0:
            return None
        return res

    def set_remove(self, key: Any, value: Any, cas: int = 0, persist_to: int = 0, replicate_to: int = 0,
                   durability_level: int = 0) -> Any:
        """Remove ``value`` from the array at ``key``. Returns the
        OperationResult, or None if it was not there (async: ``cas == 0``).
        With ``cas``, fails with KeyExistsError if the document changed;
        without, a concurrent change makes it read and try again."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)

        def steps() -> Any:
            while True:
                res = yield GetOp(key, self._kb(key), 0, self._timeout, self._transcoder, False)
                if res.rc:
                    return res
                stale = self._ds_cas_mismatch(key, cas, res.cas)
                if stale is not None:
                    return stale
                items = res.value if isinstance(res.value, list) else []
                if value not in items:
                    return OperationResult(key, 0, 0)
                index = items.index(value)
                out = yield self._ds_mutate(key, SD.remove("[%d]" % index), cas=res.cas, extras=extras)
                if out.rc != RC.KEY_EEXISTS or cas:
                    return out
        res = self._ds_chain(key, steps)
        if isinstance(res, OperationResult) and not self._is_async and res.cas == 0:
            return None
        return res

    def set_size(self, key: Any) -> Any:
        """Number of elements of the set (array) at ``key``."""
        return self._ds_document(key, len, list)

    def set_contains(self, key: Any, value: Any) -> Any:
        """Whether ``value`` is in the set at ``key`` (ValueResult.value)."""
        return self._ds_document(key, lambda items: value in items, list)

    def queue_push(self, key: Any, value: Any, create: bool = False, **kwargs: Any) -> Any:
        """Push ``value`` onto the queue (array) at ``key``."""
        self._require_couchbase("queue_push", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.array_prepend("", value), create_doc=create, **kwargs)

    def queue_pop(self, key: Any, cas: int = 0, persist_to: int = 0, replicate_to: int = 0,
                  durability_level: int = 0) -> Any:
        """Remove and return the oldest element of the queue at ``key`` (a
        ValueResult). Raises QueueEmpty when it is empty. With ``cas``,
        fails with KeyExistsError if the document changed; without, a
        concurrent change makes it read and try again."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)

        def steps() -> Any:
            while True:
                res = yield self._ds_lookup(key, SD.get("[-1]"))
                if res.rc:
                    return res
                stale = self._ds_cas_mismatch(key, cas, res.cas)
                if stale is not None:
                    return stale
                rc, value = res._results[0]
                if rc:
                    empty = ValueResult(key, RC.QUEUE_EMPTY)
                    empty._message = "the queue %r is empty" % (key,)
                    return empty
                out = yield self._ds_mutate(key, SD.remove("[-1]"), cas=res.cas, extras=extras)
                if out.rc == RC.KEY_EEXISTS and not cas:
                    continue  # changed meanwhile: try again
                if out.rc:
                    return out
                return ValueResult(key, 0, out.cas, value)
        return self._ds_chain(key, steps)

    def queue_size(self, key: Any) -> Any:
        """Number of elements in the queue at ``key``."""
        return self._ds_document(key, len, list)

    # ------------------------------------------------------------- _multi ops

    def _run_entries(self, entries: Iterable[Tuple[Any, Any, Optional[Item], Dict[str, Any]]],
                     build: Callable[[Any, Any, Optional[Item], Dict[str, Any]], tuple],
                     quiet: bool, kind: int, no_format: bool = False,
                     durability: Tuple[Optional[tuple], bytes] = (None, b""),
                     idempotent: Optional[bool] = None) -> Any:
        """Build one request per entry (``build`` returns ``(opcode, kb,
        extras, value, cas)`` or raises for that key alone), batch them per
        node and run them."""
        self._check_open()
        mres = self._new_multi()
        mres._quiet = quiet
        batch = KeyBatch(kind, self._timeout, mres, self._transcoder, no_format or self._data_passthrough)
        observe, framing = durability
        if observe is not None:
            batch.durability = observe
            batch.timeout += observe[2]  # the batch waits for the observations too
        batch.framing = framing
        if idempotent is not None:
            batch.idempotent = idempotent
        add = batch.entries.append
        value_results = kind != KIND_MUTATION
        for key, arg, item, options in entries:
            try:
                opcode, kb, extras, value, cas = build(key, arg, item, options)
            except CouchbaseError as exc:
                mres[key] = _per_key_failure(key, exc, item, value_results)
                continue
            add((key, kb, opcode, extras, value, cas, item))
        return self._many(self._split(batch), mres)

    @staticmethod
    def _split(batch: KeyBatch) -> List[KeyBatch]:
        """The batch as the list of operations to run (the engine sends each
        entry to its node)."""
        return [batch] if len(batch) else []

    @staticmethod
    def _entries_with_values(kvs: Any, what: str) -> List[Tuple[Any, Any, Optional[Item], Dict[str, Any]]]:
        if isinstance(kvs, ItemCollection):
            return [(item.key, item.value, item, dict(opts)) for item, opts in kvs]
        if isinstance(kvs, dict):
            return [(k, v, None, _NO_OPTIONS) for k, v in kvs.items()]
        raise ArgumentError("%s needs a dict of key -> value or an item collection, not %s"
                            % (what, type(kvs).__name__))

    @staticmethod
    def _entries_keys(keys: Any, what: str, scalar: Optional[str] = None) -> List[Tuple[Any, Any, Optional[Item], Dict[str, Any]]]:
        if isinstance(keys, ItemCollection):
            return [(item.key, None, item, dict(opts)) for item, opts in keys]
        if isinstance(keys, (str, bytes)):
            raise ArgumentError("%s needs a collection of keys, not a single %s" % (what, type(keys).__name__))
        if isinstance(keys, dict):
            out = []
            for k, v in keys.items():
                if isinstance(v, dict):
                    out.append((k, None, None, dict(v)))
                elif scalar is not None and v is not None:
                    out.append((k, None, None, {scalar: v}))
                else:
                    out.append((k, None, None, _NO_OPTIONS))
            return out
        try:
            return [(k, None, None, _NO_OPTIONS) for k in keys]
        except TypeError:
            raise ArgumentError("%s needs an iterable of keys, not %s" % (what, type(keys).__name__)) from None

    def _store_multi(self, opcode: int, kvs: Any, ttl: Any, fmt: Any, persist_to: Any, replicate_to: Any,
                     what: str, use_item_cas: bool, durability_level: Any = 0) -> Any:
        durability = self._mutation_extras(persist_to, replicate_to, durability_level)
        ttl = _ttl(ttl)
        entries = self._entries_with_values(kvs, what)
        store_parts = self._store_parts

        def build(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            if not options:
                return store_parts(opcode, key, value, 0, ttl, fmt)
            if options.get("persist_to") or options.get("replicate_to"):
                raise ArgumentError({"message": "give persist_to/replicate_to to the %s call, not per item"
                                     % what, "key": key})
            cas = options.get("cas", item.cas if (item is not None and use_item_cas) else 0)
            return store_parts(opcode, key, value, cas, options.get("ttl", ttl), options.get("format", fmt))

        def build_items(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            if item is not None and use_item_cas and "cas" not in options:
                options = dict(options, cas=item.cas)
            return build(key, value, item, options)

        return self._run_entries(entries, build_items if use_item_cas else build, False, KIND_MUTATION,
                                 durability=durability)

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                     persist_to: int = 0, replicate_to: int = 0,
                     durability_level: int = 0) -> Any:
        """:meth:`upsert` for many keys: ``keys`` is a dict of key -> value or
        an item collection (per-item options allowed). Returns a
        :class:`~couchbase_core.result.MultiResult`; if any key failed, raises
        that key's exception with ``all_results`` holding every key's result."""
        return self._store_multi(Opcode.SET, keys, ttl, format, persist_to, replicate_to, "upsert_multi", False,
                                 durability_level)

    def insert_multi(self, keys: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                     persist_to: int = 0, replicate_to: int = 0,
                     durability_level: int = 0) -> Any:
        """:meth:`insert` for many keys (see :meth:`upsert_multi`)."""
        return self._store_multi(Opcode.ADD, keys, ttl, format, persist_to, replicate_to, "insert_multi", False,
                                 durability_level)

    def replace_multi(self, keys: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                      persist_to: int = 0, replicate_to: int = 0,
                      durability_level: int = 0) -> Any:
        """:meth:`replace` for many keys; items use their own CAS."""
        return self._store_multi(Opcode.REPLACE, keys, ttl, format, persist_to, replicate_to, "replace_multi", True,
                                 durability_level)

    def _concat_multi(self, opcode: int, kvs: Any, fmt: Any, persist_to: Any, replicate_to: Any, what: str,
                      durability_level: Any) -> Any:
        durability = self._mutation_extras(persist_to, replicate_to, durability_level)
        entries = self._entries_with_values(kvs, what)

        def build(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            cas = options.get("cas", item.cas if item is not None else 0)
            return self._concat_parts(opcode, key, value, cas, options.get("format", fmt))

        return self._run_entries(entries, build, False, KIND_MUTATION, durability=durability)

    def append_multi(self, keys: Any, format: Optional[int] = None,  # noqa: A002
                     persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """:meth:`append` for many keys (dict of key -> fragment)."""
        return self._concat_multi(Opcode.APPEND, keys, format, persist_to, replicate_to, "append_multi",
                                  durability_level)

    def prepend_multi(self, keys: Any, format: Optional[int] = None,  # noqa: A002
                      persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """:meth:`prepend` for many keys (dict of key -> fragment)."""
        return self._concat_multi(Opcode.PREPEND, keys, format, persist_to, replicate_to, "prepend_multi",
                                  durability_level)

    def get_multi(self, keys: Any, ttl: int = 0, quiet: Optional[bool] = None, replica: bool = False,
                  no_format: bool = False) -> Any:
        """:meth:`get` for many keys: an iterable of keys, a dict whose values
        are per-key ttls (or option dicts with ``ttl``), or an item collection
        (whose items receive the values). Returns a MultiResult."""
        if replica:
            if ttl:
                raise ArgumentError("a replica read cannot change the expiry (ttl); replicas are read-only")
            return self.rget_multi(keys, None, quiet, no_format)
        ttl = _ttl(ttl)
        quiet = self._quiet if quiet is None else bool(quiet)
        if not ttl and self._transcoder is None and type(keys) in (list, tuple):
            batch_entries = _plain_get_entries(keys)
            if batch_entries is not None:  # every key is a valid str/bytes key
                self._check_open()
                mres = self._new_multi()
                mres._quiet = quiet
                batch = KeyBatch(KIND_GET, self._timeout, mres, None, bool(no_format) or self._data_passthrough)
                batch.entries = batch_entries
                return self._many(self._split(batch), mres)
        entries = self._entries_keys(keys, "get_multi", "ttl")
        kb_of = self._kb
        plain = (Opcode.GAT, _TTL.pack(ttl)) if ttl else (Opcode.GET, b"")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            kb = kb_of(key)
            if options:
                key_ttl = _ttl(options.get("ttl", ttl))
                if key_ttl:
                    return Opcode.GAT, kb, _TTL.pack(key_ttl), b"", 0
                return Opcode.GET, kb, b"", b"", 0
            return plain[0], kb, plain[1], b"", 0

        return self._run_entries(entries, build, quiet, KIND_GET, bool(no_format))

    def touch_multi(self, keys: Any, ttl: int = 0) -> Any:
        """:meth:`touch` for many keys (a dict gives per-key ttls)."""
        ttl = _ttl(ttl)
        entries = self._entries_keys(keys, "touch_multi", "ttl")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            return Opcode.TOUCH, self._kb(key), _TTL.pack(_ttl(options.get("ttl", ttl))), b"", 0

        return self._run_entries(entries, build, False, KIND_MUTATION)

    def remove_multi(self, keys: Any, quiet: Optional[bool] = None, persist_to: int = 0,
                     replicate_to: int = 0, durability_level: int = 0) -> Any:
        """:meth:`remove` for many keys (a dict gives per-key CAS values;
        items use their own CAS)."""
        durability = self._mutation_extras(persist_to, replicate_to, durability_level)
        entries = self._entries_keys(keys, "remove_multi", "cas")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            cas = options.get("cas", item.cas if item is not None else 0)
            return Opcode.DELETE, self._kb(key), b"", b"", _cas(cas)

        return self._run_entries(entries, build, self._quiet if quiet is None else bool(quiet), KIND_MUTATION,
                                 durability=durability)

    def counter_multi(self, kvs: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                      durability_level: int = 0) -> Any:
        """:meth:`counter` for many keys (a dict gives per-key deltas or
        option dicts with ``delta``/``initial``/``ttl``)."""
        durability = self._mutation_extras(0, 0, durability_level)
        entries = self._entries_keys(kvs, "counter_multi", "delta")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            return self._counter_parts(key, options.get("delta", delta), options.get("initial", initial),
                                       options.get("ttl", ttl))

        return self._run_entries(entries, build, False, KIND_COUNTER, durability=durability)

    def incr_multi(self, keys: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> Any:
        """``counter_multi`` with a positive ``amount`` (2.x alias)."""
        return self.counter_multi(keys, amount, initial, ttl)

    def decr_multi(self, keys: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> Any:
        """``counter_multi`` with ``-amount`` (2.x alias)."""
        return self.counter_multi(keys, -amount, initial, ttl)

    def rget_multi(self, keys: Any, replica_index: Optional[int] = None, quiet: Optional[bool] = None,
                   no_format: bool = False) -> Any:
        """:meth:`rget` for many keys (Couchbase buckets only)."""
        self._require_couchbase("rget_multi", "plain memcached keeps no replicas")
        entries = self._entries_keys(keys, "rget_multi")
        self._replica_list(replica_index)  # validates
        ops = [self._replica_op(key, replica_index, no_format) for key, _a, _i, _o in entries]
        mres = self._new_multi()
        mres._quiet = self._quiet if quiet is None else bool(quiet)
        return self._many(ops, mres)

    def lock_multi(self, keys: Any, ttl: int = 0) -> Any:
        """:meth:`lock` for many keys (Couchbase buckets only)."""
        self._require_couchbase("lock_multi", "plain memcached has no document locking (GET_LOCKED)")
        ttl = _ttl(ttl)
        entries = self._entries_keys(keys, "lock_multi", "ttl")
        extras = _TTL.pack(ttl) if ttl else b""

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            lock_time = _ttl(options["ttl"]) if "ttl" in options else ttl
            return Opcode.GET_LOCKED, self._kb(key), _TTL.pack(lock_time) if lock_time else extras, b"", 0

        return self._run_entries(entries, build, False, KIND_GET, idempotent=False)

    def unlock_multi(self, keys: Any) -> Any:
        """:meth:`unlock` for many keys: a dict of key -> CAS, the result of
        ``lock_multi``, or an item collection (Couchbase buckets only)."""
        self._require_couchbase("unlock_multi", "plain memcached has no document locking (UNLOCK_KEY)")
        if isinstance(keys, dict):
            keys = {k: (v.cas if isinstance(v, Result) else v) for k, v in keys.items()}
        entries = self._entries_keys(keys, "unlock_multi", "cas")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            cas = options.get("cas", item.cas if item is not None else 0)
            if not cas:
                raise ArgumentError({"message": "unlock needs the CAS returned by lock", "key": key})
            return Opcode.UNLOCK_KEY, self._kb(key), b"", b"", _cas(cas)

        return self._run_entries(entries, build, False, KIND_MUTATION)

    def observe_multi(self, keys: Any, master_only: bool = False) -> Any:
        """:meth:`observe` for many keys (Couchbase buckets only)."""
        self._require_couchbase("observe_multi", "plain memcached neither persists nor replicates")
        entries = self._entries_keys(keys, "observe_multi")
        ops = [ObserveKeyOp(key, self._kb(key), bool(master_only), self._timeout) for key, _a, _i, _o in entries]
        return self._many(ops, self._new_multi())

    def endure_multi(self, keys: Any, persist_to: int = -1, replicate_to: int = -1, timeout: float = 5.0,
                     interval: float = 0.010, check_removed: bool = False) -> Any:
        """:meth:`endure` for many keys: a list of keys (any CAS), a dict of
        key -> CAS, or the MultiResult of a ``_multi`` mutation (each key's
        new CAS). Couchbase buckets only."""
        self._require_couchbase("endure_multi", "plain memcached neither persists nor replicates")
        persist, replicate = self._endure_args(persist_to, replicate_to)
        if isinstance(keys, dict):
            keys = {k: (v.cas if isinstance(v, Result) else v) for k, v in keys.items()}
        timeout, interval = _positive_seconds(timeout, "timeout"), _positive_seconds(interval, "interval")
        entries = self._entries_keys(keys, "endure_multi", "cas")
        ops = []
        for key, _arg, item, options in entries:
            cas = options.get("cas", item.cas if item is not None else 0)
            ops.append(EndureOp(key, self._kb(key), _cas(cas or 0), persist, replicate, bool(check_removed),
                                timeout, interval))
        return self._many(ops, self._new_multi())

    # ------------------------------------------------------- whole-cluster ops

    def _broadcast(self, make_op: Callable[[str], Any]) -> List[Any]:
        self._check_open()
        self._refuse_in_pipeline("stats, ping and flush")
        ops = []
        for conn in self._engine.connections:
            op = make_op(conn.authority)
            op.target = conn
            ops.append(op)
        return ops

    def stats(self, keys: Any = None) -> Any:
        """Server statistics: ``{stat_name: {"host:port": value}}``.

        Args:
            keys: a stat group name (``"settings"``, ``"slabs"``...) or a list
                of them; None for the general group.
        """
        if keys is None:
            groups = [b""]
        elif isinstance(keys, (str, bytes)):
            groups = [keys.encode("utf-8") if isinstance(keys, str) else keys]
        else:
            try:
                groups = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys]
            except TypeError:
                raise ArgumentError("stats keys must be a group name or a list of them") from None
        timeout = self._timeout
        ops: List[Any] = []
        for group in groups:
            ops.extend(self._broadcast(lambda node, g=group: StatOp(node, g, timeout)))
        if len(groups) > 1:
            for i, op in enumerate(ops):
                op.key = (op.key, i)  # one result per (node, group)
        return self._collect(ops, self._new_multi(), self._finish_stats)

    @staticmethod
    def _finish_stats(mres: Any) -> Any:
        _raise_or_return(mres)
        out: Dict[str, Dict[str, str]] = {}
        for key, res in mres.items():
            node = key[0] if isinstance(key, tuple) else key
            for name, value in res.value.items():
                out.setdefault(name, {})[node] = value
        return out

    def ping(self) -> Any:
        """Send a NOOP to every key-value node and report each round trip::

            {"id": ..., "sdk": ..., "version": 1,
             "services": {"kv": [{"id": ..., "remote": "host:port",
                                  "local": "host:port", "latency_us": 210,
                                  "status": "ok"}, ...]}}

        ``status`` is :class:`PingStatus` ``OK``, ``TIMEOUT`` or ``ERROR``
        (then ``details`` says why). A node being down is reported, not raised.
        """
        timeout = self._timeout
        ops = self._broadcast(lambda node: NoopOp(node, timeout))
        mres = self._new_multi()
        mres._report = True
        return self._collect(ops, mres, self._finish_ping)

    def _finish_ping(self, mres: Any) -> Dict[str, Any]:
        engine = self._engine
        entries = []
        by_name = {c.authority: c for c in engine.connections}
        for node, res in mres.items():
            conn = by_name.get(node)
            entry: Dict[str, Any] = {"id": "%s/%d" % (engine.client_id, conn.index if conn else -1),
                                     "remote": node, "latency_us": res.latency_us}
            if conn is not None and conn.local_address and conn.state == "ready":
                host, port = conn.local_address[0], conn.local_address[1]
                entry["local"] = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
            if res.rc == 0:
                entry["status"] = PingStatus.OK
            else:
                entry["status"] = PingStatus.TIMEOUT if res.rc == RC.TIMEOUT else PingStatus.ERROR
                entry["details"] = res.errstr
            entries.append(entry)
        entries.sort(key=lambda e: e["remote"])
        return {"version": 1, "id": engine.client_id, "sdk": self._settings.client_string,
                "services": {"kv": entries}}

    def flush(self) -> Any:
        """Remove every item of the bucket. Plain memcached: FLUSH on every
        node. Couchbase clusters: the management REST call (the bucket must
        have flush enabled, else NotSupportedError)."""
        if self._settings.scheme == "memcached":
            timeout = self._timeout
            ops = self._broadcast(lambda node: FlushOp(node, timeout))
            return self._collect(ops, self._new_multi(), _raise_or_return)
        self._check_open()
        self._refuse_in_pipeline("flush")
        from couchbase_core._httpops import HttpOp

        path = "/pools/default/buckets/%s/controller/doFlush" % _quote(self.bucket)
        op = HttpOp("mgmt", "POST", path, b"", {"Content-Type": "application/x-www-form-urlencoded"},
                    self._settings.http_timeout, failure_rc=_flush_failure_rc)
        return self._one(op)

    def diagnostics(self) -> Dict[str, Any]:
        """A snapshot of every key-value connection (no network I/O)::

            {"id": ..., "sdk": ..., "version": 1,
             "services": {"kv": [{"id": ..., "remote": "host:port",
                                  "local": "host:port", "state": "connected",
                                  "last_activity_us": 1234}, ...]}}

        ``state`` is ``connected``, ``connecting``, ``disconnected`` (no
        socket now) or ``closed``."""
        engine = self._engine
        now = engine.clock()
        entries = []
        names = {"ready": "connected", "connecting": "connecting", "tls-handshake": "connecting",
                 "negotiating": "connecting", "idle": "disconnected", "closed": "closed"}
        for conn in engine.connections:
            entry: Dict[str, Any] = {"id": "%s/%d" % (engine.client_id, conn.index), "remote": conn.authority,
                                     "state": names.get(conn.state, conn.state)}
            if conn.local_address and conn.state == "ready":
                host, port = conn.local_address[0], conn.local_address[1]
                entry["local"] = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
            if conn.last_activity:
                entry["last_activity_us"] = int((now - conn.last_activity) * 1e6)
            if conn.last_error is not None and conn.state != "ready":
                entry["details"] = conn.last_error[1]
            entries.append(entry)
        entries.sort(key=lambda e: e["remote"])
        return {"version": 1, "id": engine.client_id, "sdk": self._settings.client_string,
                "services": {"kv": entries}}

    def bucket_manager(self) -> Any:
        """A :class:`~couchbase_core.bucketmanager.BucketManager` for this bucket."""
        from couchbase_core.bucketmanager import BucketManager

        return BucketManager(self)

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` the way this bucket waits (the loop keeps running)."""
        from couchbase_core.iops.base import PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH

        latch = Latch(1)
        timer = self._iops.timer_event_factory()
        timer._handler = lambda _flags: latch.done()
        self._iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(max(0.0, seconds) * 1e6))
        try:
            self._wait_latch(latch)
        finally:
            self._iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)

    # ------------------------------------------------------------------ views

    #: The iterator class ``query`` returns (GView on the gevent bucket).
    _view_class: Any = None

    def query(self, design: str, view: str, use_devmode: bool = False, **kwargs: Any) -> Any:
        """A view query: returns an iterable :class:`~couchbase_core.views.iterator.View`
        (on the gevent bucket a ``GView``; on an AsyncBucket pass
        ``itercls=`` an :class:`~couchbase_core.asynchronous.view.AsyncViewBase`
        subclass). Keyword arguments are view parameters
        (:mod:`couchbase_core.views.params`) plus ``include_docs``,
        ``query``, ``row_processor``, ``spatial``, ``streaming``."""
        self._require_couchbase("views", "plain memcached has no view engine")
        itercls = kwargs.pop("itercls", None) or self._view_class
        if itercls is None:
            from couchbase_core.views.iterator import View

            itercls = View
        return itercls(self, design, view, use_devmode=use_devmode, **kwargs)

    #: The request class ``n1ql_query`` returns (GN1QLRequest on gevent).
    _n1ql_class: Any = None

    def n1ql_query(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """A N1QL query: returns an iterable
        :class:`~couchbase_core.n1ql.N1QLRequest` (a ``GN1QLRequest`` on the
        gevent bucket; pass ``itercls=`` an
        :class:`~couchbase_core.asynchronous.n1ql.AsyncN1QLRequest` subclass
        on an AsyncBucket). ``query`` is a :class:`N1QLQuery` or a statement
        string; ``*args``/``**kwargs`` are its parameters then."""
        from couchbase_core.n1ql import N1QLQuery, N1QLRequest

        itercls = kwargs.pop("itercls", None) or self._n1ql_class or N1QLRequest
        row_factory = kwargs.pop("row_factory", None)
        if isinstance(query, str):
            query = N1QLQuery(query, *args, **kwargs)
        elif args or kwargs:
            raise ArgumentError("parameters go into the N1QLQuery when one is given")
        if row_factory is not None:
            return itercls(query, self, row_factory)
        return itercls(query, self)

    def pipeline(self) -> Pipeline:
        """Return a :class:`Pipeline`: ``with bucket.pipeline() as pipe: ...``.
        The block batches the calling greenlet's (thread's) operations only;
        see :class:`Pipeline`."""
        return Pipeline(self)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _positive_seconds(value: Any, name: str = "a timeout or interval") -> float:
    """A per-call timeout or interval: finite, > 0 and at most MAX_TIMEOUT."""
    return _seconds(value, name)


def _utf8_fragment(key: Any, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueFormatError({"message": "append/prepend value has no UTF-8 form: %s" % exc, "key": key,
                                "inner_cause": exc}) from None


def _plain_get_entries(keys: Any) -> Optional[List[tuple]]:
    """Batch entries for a list of plain keys, or None if any key needs the
    general path (not str/bytes, not UTF-8, empty, too long)."""
    out = []
    append = out.append
    get = Opcode.GET
    for key in keys:
        tp = type(key)
        if tp is str:
            try:
                kb = key.encode()
            except UnicodeEncodeError:
                return None  # the general path reports it for that key alone
        elif tp is bytes:
            kb = key
        else:
            return None
        if not 0 < len(kb) <= _MAX_KEY:
            return None
        append((key, kb, get, b"", b"", 0, None))
    return out


def _seconds(value: Any, name: str) -> float:
    """A timeout given in seconds: an int or float, > 0 and at most
    :data:`~couchbase_core.connstr.MAX_TIMEOUT` (so never inf or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise ArgumentError("%s must be a number of seconds greater than 0 and at most %d (MAX_TIMEOUT), not %r"
                            % (name, MAX_TIMEOUT, value))
    return float(value)


def _flush_failure_rc(status: int, body: Any) -> int:
    """The cluster answers 400 "Flush is disabled for the bucket" when the
    bucket's flush setting is off: that is NotSupportedError, not a generic
    HTTPError."""
    if status == 400 and "flush is disabled" in str(body).lower():
        return RC.NOT_SUPPORTED
    return RC.HTTP


def _raise_or_return(mres: MultiResult) -> MultiResult:
    exc = mres._make_exception()
    if exc is not None:
        raise exc
    return mres

"""Key-value operations: turn engine replies into result objects.

Each class is an engine :class:`~couchbase_core._engine.ops.KVOp` that knows
how to build its result from the reply frame (or from an error code) and
hands it to ``sink``, a one-argument callable set by whoever waits: a
greenlet's waiter, a blocking loop, an :class:`AsyncResult`, a collector for
``_multi`` calls. ``sink`` is called exactly once per operation, always from
a loop callback.
"""

from __future__ import annotations

import logging
import time
from itertools import repeat
from typing import Any, Callable, Dict, Optional

from couchbase_core import transcoder as _tc
from couchbase_core._engine.batch import Batch
from couchbase_core._engine.durability import ObserveOp, Observer
from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.protocol import (
    COUNTER_VALUE,
    EXPIRY_EXTRAS,
    F_CAS,
    F_DATATYPE,
    F_EXTRAS,
    F_KEY,
    F_OPAQUE,
    F_STATUS,
    F_VALUE,
    FLAGS_EXTRAS,
    MUTATION_TOKEN,
    Datatype,
    Opcode,
    Status,
    decode_subdoc_failure,
    decode_subdoc_lookup,
    decode_subdoc_mutation,
    subdoc_lookup_body,
    subdoc_lookup_extras,
    subdoc_mutation_body,
    subdoc_mutation_extras,
)
from couchbase_core.exceptions import RC, RC_TABLE, CouchbaseError, rc_description
from couchbase_core.result import (
    MutationToken,
    ObserveInfo,
    OperationResult,
    Result,
    SubdocResult,
    ValueResult,
)

log = logging.getLogger("couchbase_core.engine")

__all__ = ["GetOp", "StoreOp", "RemoveOp", "CounterOp", "TouchOp", "StatOp", "NoopOp", "FlushOp", "KeyBatch", "discard"]

_FLAGS = FLAGS_EXTRAS
_TOKEN = MUTATION_TOKEN
_FMT_BYTES = 0x03000002
#: The extras of a value stored with FMT_BYTES (the flags, big-endian).
_EXTRAS_FMT_BYTES = _FLAGS.pack(_FMT_BYTES)
_SNAPPY = Datatype.SNAPPY
_U64 = COUNTER_VALUE


def discard(_result: Any) -> None:
    """A sink for operations nobody waits for any more."""


def _server_message(rc: int, value: bytes) -> Optional[str]:
    """The message to attach to a failed reply: ours for known codes, the
    server's text for codes we do not know."""
    if rc in RC_TABLE or not value:
        return None
    try:
        return "server status 0x%02X: %s" % (rc, value[:200].decode("utf-8", "replace"))
    except Exception:  # pragma: no cover - decode with 'replace' does not raise
        return None


def _token(op: Any, extras: bytes) -> Optional[MutationToken]:
    """The mutation token in a mutation's extras (MUTATION_SEQNO negotiated)."""
    if len(extras) != 16:
        return None
    uuid, seqno = _TOKEN.unpack(extras)
    conn = op.conn
    bucket = conn.engine.settings.bucket if conn is not None else ""
    return MutationToken(op.vbucket, uuid, seqno, bucket or "")


class _KeyOp(KVOp):
    """An operation on one key (``_multi`` calls use :class:`KeyBatch`)."""

    __slots__ = ("key", "sink")

    #: The result class: OperationResult for mutations, ValueResult for reads.
    result_class: Any = OperationResult
    #: (persist_to, replicate_to, timeout, interval) to wait for after
    #: success (set on the operation only when asked for).
    durability: Optional[tuple] = None

    def __init__(self, key: Any, opcode: int, kb: bytes, extras: bytes = b"", value: bytes = b"",
                 cas: int = 0, timeout: float = 2.5) -> None:
        # KVOp's slots, assigned here directly: this runs once per operation.
        self.opcode = opcode
        self.kb = kb
        self.extras = extras
        self.value = value
        self.cas = cas
        self.timeout = timeout
        self.vbucket = 0
        self.opaque = 0
        self.deadline = 0.0
        self.done = False
        self.conn = None
        self.wire = None
        self.written = False
        self.key = key
        self.sink: Callable[[Any], None] = discard

    def on_response(self, frame: Any) -> None:
        status = frame[F_STATUS]
        if not status:
            res = self.result_class(self.key, 0, frame[F_CAS])
            if frame[F_EXTRAS]:
                res.mutation_token = _token(self, frame[F_EXTRAS])
            self._deliver(res)
            return
        res = self.result_class(self.key, status)
        res._message = _server_message(status, frame[F_VALUE])
        self.sink(res)

    def _deliver(self, res: Any) -> None:
        """Hand over a successful mutation's result, after waiting for the
        requested persistence/replication when there is one."""
        durability = self.durability
        if durability is None or res.rc or self.conn is None:
            self.sink(res)
            return
        persist_to, replicate_to, timeout, interval = durability

        def done(rc: int, message: str) -> None:
            if rc:
                res.rc = rc
                res._message = message
            self.sink(res)

        Observer(self.conn.engine, self.kb, res.cas, persist_to, replicate_to, self.opcode == Opcode.DELETE,
                 timeout, interval, done).start()

    def on_error(self, rc: int, message: str) -> None:
        res = self.result_class(self.key, rc)
        res._message = message
        self.sink(res)

    def describe(self) -> str:
        from couchbase_core._engine.protocol import opcode_name

        return "%s %r" % (opcode_name(self.opcode), self.key)


class GetOp(_KeyOp):
    """GET, or GAT when a ttl is given (the hottest path: kept flat)."""

    __slots__ = ("decoder", "no_format")
    result_class = ValueResult
    idempotent = True
    takes_plain = True

    def __init__(self, key: Any, kb: bytes, ttl: int, timeout: float, decoder: Optional[Any],
                 no_format: bool) -> None:
        # Flat (no call to _KeyOp.__init__): the hottest constructor.
        if ttl:
            self.opcode = Opcode.GAT
            self.extras = _FLAGS.pack(ttl)
        else:
            self.opcode = Opcode.GET
            self.extras = b""
        self.kb = kb
        self.value = b""
        self.cas = 0
        self.timeout = timeout
        self.vbucket = 0
        self.opaque = 0
        self.deadline = 0.0
        self.done = False
        self.conn = None
        self.wire = None
        self.written = False
        self.key = key
        self.sink = discard
        self.decoder = decoder
        self.no_format = no_format

    def on_response(self, frame: Any) -> None:
        status = frame[F_STATUS]
        if status:
            res = ValueResult(self.key, status)
            res._message = _server_message(status, frame[F_VALUE])
            self.sink(res)
            return
        extras = frame[F_EXTRAS]
        self.on_plain(frame[F_CAS], _FLAGS.unpack_from(extras)[0] if len(extras) >= 4 else 0, frame[F_VALUE])

    def on_plain(self, cas: int, flags: int, data: bytes) -> None:
        if self.no_format:
            self.sink(ValueResult(self.key, 0, cas, data, flags))
            return
        decoder = self.decoder
        try:
            if decoder is None:
                value = _tc.decode_value(data, flags)
            else:
                value = decoder.decode_value(data, flags)
        except CouchbaseError as exc:
            res = ValueResult(self.key, RC.VALUE_FORMAT, cas, data, flags)
            res._message = exc.message
            res._exc = exc
            self.sink(res)
            return
        except Exception as exc:  # a custom transcoder failed
            res = ValueResult(self.key, RC.VALUE_FORMAT, cas, data, flags)
            res._message = "transcoder failed to decode the value: %r" % (exc,)
            self.sink(res)
            return
        self.sink(ValueResult(self.key, 0, cas, value, flags))


class StoreOp(_KeyOp):
    """SET, ADD, REPLACE (with flags and expiry) and APPEND, PREPEND."""

    __slots__ = ()


class RemoveOp(_KeyOp):
    """DELETE."""

    __slots__ = ()


class TouchOp(_KeyOp):
    """TOUCH."""

    __slots__ = ()
    idempotent = True


class CounterOp(_KeyOp):
    """INCREMENT / DECREMENT; the result's value is the new count."""

    __slots__ = ()
    result_class = ValueResult

    def on_response(self, frame: Any) -> None:
        status = frame[F_STATUS]
        res = ValueResult(self.key, status)
        if status:
            res._message = _server_message(status, frame[F_VALUE])
            self.sink(res)
            return
        res.cas = frame[F_CAS]
        value = frame[F_VALUE]
        res.value = _U64.unpack(value)[0] if len(value) == 8 else int(value or b"0")
        if frame[F_EXTRAS]:
            res.mutation_token = _token(self, frame[F_EXTRAS])
        self._deliver(res)


class _NodeOp(KVOp):
    """A keyless command sent to one node; results are keyed by the node."""

    __slots__ = ("key", "sink", "started")
    idempotent = True

    def __init__(self, node: str, opcode: int, kb: bytes = b"", extras: bytes = b"", timeout: float = 2.5) -> None:
        KVOp.__init__(self, opcode, kb, extras, b"", 0, 0, timeout)
        self.key = node
        self.sink: Callable[[Any], None] = discard
        self.started = time.perf_counter()

    def on_response(self, frame: Any) -> None:
        res = Result(self.key, frame[F_STATUS])
        if frame[F_STATUS]:
            res._message = _server_message(frame[F_STATUS], frame[F_VALUE])
        self.sink(res)

    def on_error(self, rc: int, message: str) -> None:
        res = self._error_result()
        res.rc = rc
        res._message = message
        self.sink(res)

    def _error_result(self) -> Result:
        return Result(self.key)

    def describe(self) -> str:
        from couchbase_core._engine.protocol import opcode_name

        return "%s on %s" % (opcode_name(self.opcode), self.key)


def _stat_value(text: str) -> Any:
    """A statistic's value: an ``int`` when the text is a decimal integer
    (as 2.x converted them), else the text."""
    digits = text[1:] if text[:1] == "-" else text
    if digits.isascii() and digits.isdigit():
        return int(text)
    return text


class StatsResult(Result):
    """STAT outcome for one node: ``value`` maps stat name -> value (an
    ``int`` for integer statistics, else the text)."""

    __slots__ = ("value",)

    def __init__(self, key: Any = None, rc: int = 0) -> None:
        Result.__init__(self, key, rc)
        self.value: Dict[str, Any] = {}


class StatOp(_NodeOp):
    """STAT [group]: one frame per statistic, then an empty terminator."""

    __slots__ = ("stats", "status")
    multi_reply = True

    def __init__(self, node: str, group: bytes, timeout: float) -> None:
        _NodeOp.__init__(self, node, Opcode.STAT, group, b"", timeout)
        self.stats: Dict[str, Any] = {}
        self.status = 0

    def on_part(self, frame: Any) -> bool:
        status = frame[F_STATUS]
        if not status:
            key = frame[F_KEY]
            if key or frame[F_VALUE]:
                self.stats[key.decode("utf-8", "replace")] = _stat_value(frame[F_VALUE].decode("utf-8", "replace"))
                return False  # more frames come with this opaque
        # the empty terminator, or an error
        self.done = True
        res = StatsResult(self.key, status)
        if status:
            res._message = _server_message(status, frame[F_VALUE])
        res.value = self.stats
        self.sink(res)
        return True

    def _error_result(self) -> Result:
        res = StatsResult(self.key)
        res.value = self.stats
        return res


class PingResult(Result):
    """NOOP outcome for one node: ``latency_us`` is the round trip."""

    __slots__ = ("latency_us",)

    def __init__(self, key: Any = None, rc: int = 0, latency_us: int = 0) -> None:
        Result.__init__(self, key, rc)
        self.latency_us = latency_us


class NoopOp(_NodeOp):
    """NOOP, timed (for ``ping``)."""

    __slots__ = ()

    def __init__(self, node: str, timeout: float) -> None:
        _NodeOp.__init__(self, node, Opcode.NOOP, b"", b"", timeout)

    def on_response(self, frame: Any) -> None:
        elapsed = int((time.perf_counter() - self.started) * 1e6)
        res = PingResult(self.key, frame[F_STATUS], elapsed)
        self.sink(res)

    def _error_result(self) -> Result:
        return PingResult(self.key, 0, int((time.perf_counter() - self.started) * 1e6))


class FlushOp(_NodeOp):
    """FLUSH (plain memcached: removes every item on the node)."""

    __slots__ = ()

    def __init__(self, node: str, timeout: float) -> None:
        _NodeOp.__init__(self, node, Opcode.FLUSH, b"", b"", timeout)


# --------------------------------------------------------------------------
# Batches: the keys of one ``_multi`` call on one node
# --------------------------------------------------------------------------

#: Batch kinds: reads (ValueResult with the decoded value), mutations
#: (OperationResult with the new CAS), counters (ValueResult with the count).
KIND_GET = 0
KIND_MUTATION = 1
KIND_COUNTER = 2


class KeyBatch(Batch):
    """The results side of a ``_multi`` call's batch (the engine side, with
    the entries, opaques, retries and completion, is
    :class:`couchbase_core._engine.batch.Batch`).

    Each reply becomes the entry's result, put straight into ``mres``:
    a :class:`ValueResult` with the decoded value for reads, an
    :class:`OperationResult` with the new CAS for mutations, a
    :class:`ValueResult` with the count for counters. An entry that has an
    item (``ItemCollection`` calls) fills that item instead.
    """

    __slots__ = ("kind", "mres", "decoder", "no_format", "key", "durability", "plain", "plain_mutation")

    def __init__(self, kind: int, timeout: float, mres: Any, decoder: Any = None, no_format: bool = False,
                 opcode: int = 0, extras: bytes = b"") -> None:
        Batch.__init__(self, timeout, opcode, extras)
        self.kind = kind
        self.mres = mres
        self.decoder = decoder
        self.no_format = no_format
        self.key = None
        self.idempotent = kind == KIND_GET
        #: (persist_to, replicate_to, timeout, interval) for each mutation.
        self.durability: Optional[tuple] = None
        self.plain = False
        self.plain_mutation = False

    def sibling(self) -> "KeyBatch":
        """An empty batch with the same settings (for the next chunk of a
        big call)."""
        other = KeyBatch(self.kind, self.timeout, self.mres, self.decoder, self.no_format, self.opcode, self.extras)
        other.durability = self.durability
        other.idempotent = self.idempotent
        if self.framing:
            other.framing = self.framing
        return other

    def start(self, engine: Any, base: int, deadline: float) -> None:
        Batch.start(self, engine, base, deadline)
        #: Plain reads (no items, and no custom transcoder that must see
        #: every value, even raw bytes): replies may take the short way of
        #: on_part and take_run.
        self.plain = self.kind == KIND_GET and self.items is None and (self.decoder is None or self.no_format)
        #: Plain mutations (no items, no durability to wait for).
        self.plain_mutation = self.kind == KIND_MUTATION and self.items is None and self.durability is None
        if self.plain:
            self.takes_runs = True

    def take_run(self, frame: Any, rest: Any, pending: Any) -> Any:
        # Plain reads: the replies of a big get_multi arrive back to back,
        # so the connection hands over the whole run (see KVOp.take_run).
        # One loop here instead of a call per reply; anything unusual (an
        # error status, a compressed value, a frame of another operation)
        # goes back to the connection, a value to decode takes on_part.
        base = self.base
        waiting = self.waiting
        keys = self.keys
        mres = self.mres
        no_format = self.no_format
        pop = pending.pop
        taken = 0
        try:
            while True:
                extras = frame[F_EXTRAS]
                i = frame[F_OPAQUE] - base
                if extras == _EXTRAS_FMT_BYTES and waiting[i]:
                    waiting[i] = 0
                    key = keys[i]
                    mres[key] = ValueResult(key, 0, frame[F_CAS], frame[F_VALUE], _FMT_BYTES)
                    taken += 1
                elif no_format and len(extras) == 4 and waiting[i]:
                    waiting[i] = 0
                    key = keys[i]
                    mres[key] = ValueResult(key, 0, frame[F_CAS], frame[F_VALUE], _FLAGS.unpack(extras)[0])
                    taken += 1
                else:  # a value to decode, or an entry settled already
                    self._settle_taken(taken)
                    taken = 0
                    Batch.on_part(self, frame)
                frame = next(rest, None)
                if frame is None:
                    return None
                # The next frame is taken only if it is a plain success of ours.
                if frame[F_STATUS] or frame[F_DATATYPE] & _SNAPPY:
                    return frame
                op = pop(frame[F_OPAQUE], None)
                if op is not self:
                    if op is not None:
                        pending[frame[F_OPAQUE]] = op
                    return frame
        finally:
            # The frame this returns belongs to another operation: a sink
            # that raises must not lose it (the connection's rule, that a
            # failing result handler never breaks the stream, kept here).
            try:
                self._settle_taken(taken)
            except Exception:
                log.exception("completing %s failed", self.describe())

    def run_results(self, start: int, count: int, run: Any) -> bool:
        # Plain reads only. Each result is made by C-level loops: map() calls
        # ValueResult (and the transcoder, for values to decode) per entry.
        if not self.plain:
            return False
        flags = run[F_EXTRAS]  # a run holds each reply's flags as an int
        values = run[F_VALUE]
        if count < len(values):
            flags = flags[:count]
            values = values[:count]
        if not self.no_format and flags.count(_FMT_BYTES) != count:
            try:
                values = list(map(_tc.decode_value, values, flags))
            except Exception:
                return False  # a bad value: on_reply makes its error result
        keys = self.keys[start:start + count]
        self.mres.update(zip(keys, map(ValueResult, keys, repeat(0), run[F_CAS], values, flags)))
        return True

    def _settle_taken(self, taken: int) -> None:
        """``taken`` more entries got their result in :meth:`take_run`."""
        if taken:
            self.remaining -= taken
            if self.remaining == 0:
                self.done = True
                self.sink(None)

    def on_part(self, frame: Any) -> bool:
        # The common reply of a read batch, inline: a success for an entry
        # without an item whose value needs no decoding. Anything else takes
        # the generic way (Batch.on_part -> on_reply).
        i = frame[F_OPAQUE] - self.base
        waiting = self.waiting
        if self.plain and not frame[F_STATUS] and 0 <= i < len(waiting) and waiting[i]:
            extras = frame[F_EXTRAS]
            if extras == _EXTRAS_FMT_BYTES:
                flags = _FMT_BYTES
            elif self.no_format and len(extras) == 4:
                flags = _FLAGS.unpack(extras)[0]
            else:
                return Batch.on_part(self, frame)
            waiting[i] = 0
            key = self.keys[i]
            self.mres[key] = ValueResult(key, 0, frame[F_CAS], frame[F_VALUE], flags)
            self.remaining -= 1
            if self.remaining == 0:
                self.done = True
                self.sink(None)
            return True
        if self.plain_mutation and not frame[F_STATUS] and 0 <= i < len(waiting) and waiting[i] \
                and not frame[F_EXTRAS]:
            waiting[i] = 0
            key = self.keys[i]
            self.mres[key] = OperationResult(key, 0, frame[F_CAS])
            self.remaining -= 1
            if self.remaining == 0:
                self.done = True
                self.sink(None)
            return True
        return Batch.on_part(self, frame)

    def on_reply(self, i: int, frame: Any) -> None:
        status = frame[F_STATUS]
        key = self.keys[i]
        item = self.items[i] if self.items is not None else None
        kind = self.kind
        if kind == KIND_GET:
            if status:
                res = item if item is not None else ValueResult(key)
                res.rc = status
                res._message = _server_message(status, frame[F_VALUE])
            else:
                extras = frame[F_EXTRAS]
                flags = _FLAGS.unpack_from(extras)[0] if len(extras) >= 4 else 0
                data = frame[F_VALUE]
                if item is None and (self.no_format or (flags == _FMT_BYTES and self.decoder is None)):
                    res = ValueResult(key, 0, frame[F_CAS], data, flags)
                else:
                    res = item if item is not None else ValueResult(key)
                    res.rc = 0
                    res.cas = frame[F_CAS]
                    res.flags = flags
                    if self.no_format:
                        res.value = data
                    else:
                        try:
                            decoder = self.decoder
                            res.value = (_tc.decode_value(data, flags) if decoder is None
                                         else decoder.decode_value(data, flags))
                        except CouchbaseError as exc:
                            res.rc = RC.VALUE_FORMAT
                            res.value = data
                            res._message = exc.message
                            res._exc = exc
                        except Exception as exc:  # a custom transcoder failed
                            res.rc = RC.VALUE_FORMAT
                            res.value = data
                            res._message = "transcoder failed to decode the value: %r" % (exc,)
        elif kind == KIND_MUTATION:
            if item is None and not status:
                res = OperationResult(key, 0, frame[F_CAS])
            else:
                res = item if item is not None else OperationResult(key)
                res.rc = status
                if status:
                    res._message = _server_message(status, frame[F_VALUE])
                else:
                    res.cas = frame[F_CAS]
            if not status and frame[F_EXTRAS]:
                res.mutation_token = self._token(i, frame[F_EXTRAS])
        else:
            res = item if item is not None else ValueResult(key)
            res.rc = status
            if status:
                res._message = _server_message(status, frame[F_VALUE])
            else:
                res.cas = frame[F_CAS]
                value = frame[F_VALUE]
                res.value = _U64.unpack(value)[0] if len(value) == 8 else int(value or b"0")
                if frame[F_EXTRAS]:
                    res.mutation_token = self._token(i, frame[F_EXTRAS])
        self.mres[key] = res
        if self.durability is not None and kind != KIND_GET and not res.rc:
            self._observe(i, res)
            return
        self.settled()

    def _token(self, i: int, extras: bytes) -> Optional[MutationToken]:
        if len(extras) != 16:
            return None
        uuid, seqno = _TOKEN.unpack(extras)
        vb = self.vbuckets[i] if self.vbuckets else 0
        bucket = self.engine.settings.bucket if self.engine is not None else ""
        return MutationToken(vb, uuid, seqno, bucket or "")

    def _observe(self, i: int, res: Any) -> None:
        """Wait for entry ``i``'s durability before counting it done."""
        persist_to, replicate_to, timeout, interval = self.durability  # type: ignore[misc]
        opcode, kb, _extras, _value, _cas = self.request(i)

        def done(rc: int, message: str) -> None:
            if rc:
                res.rc = rc
                res._message = message
            self.settled()

        Observer(self.engine, kb, res.cas, persist_to, replicate_to, opcode == Opcode.DELETE,
                 timeout, interval, done).start()

    def on_failure(self, i: int, rc: int, message: str) -> None:
        key = self.keys[i]
        item = self.items[i] if self.items is not None else None
        res = item if item is not None else (ValueResult(key) if self.kind != KIND_MUTATION else OperationResult(key))
        res.rc = rc
        res._message = message
        self.mres[key] = res


# --------------------------------------------------------------------------
# Sub-document operations (always the multi-path opcodes)
# --------------------------------------------------------------------------

#: The document was accessed (some paths may have failed).
_SUBDOC_OK = (Status.SUCCESS, Status.SUBDOC_MULTI_PATH_FAILURE, Status.SUBDOC_SUCCESS_DELETED,
              Status.SUBDOC_MULTI_PATH_FAILURE_DELETED)
#: Every spec of a MULTI_MUTATION was applied.
_MUTATED = (Status.SUCCESS, Status.SUBDOC_SUCCESS_DELETED)
#: A spec of a MULTI_MUTATION failed (the body says which).
_SPEC_FAILED = (Status.SUBDOC_MULTI_PATH_FAILURE, Status.SUBDOC_MULTI_PATH_FAILURE_DELETED)
#: Specs whose results are ASCII numbers.
_COUNT_OPCODES = (Opcode.SUBDOC_GET_COUNT, Opcode.SUBDOC_COUNTER)


def _decode_fragment(opcode: int, value: bytes) -> Any:
    if opcode == Opcode.SUBDOC_EXISTS:
        return True
    if not value:
        return None
    if opcode in _COUNT_OPCODES:
        try:
            return int(value)
        except ValueError:
            pass
    try:
        return _tc._json_decode(value.decode("utf-8"))
    except Exception:  # not JSON (binary xattr...): hand back the bytes
        return value


class SubdocLookupOp(_KeyOp):
    """MULTI_LOOKUP with one or more specs."""

    __slots__ = ("specs",)
    result_class = SubdocResult
    idempotent = True

    def __init__(self, key: Any, kb: bytes, specs: list, doc_flags: int, timeout: float) -> None:
        _KeyOp.__init__(self, key, Opcode.SUBDOC_MULTI_LOOKUP, kb, subdoc_lookup_extras(doc_flags),
                        subdoc_lookup_body(specs), 0, timeout)
        self.specs = specs

    def on_response(self, frame: Any) -> None:
        status = frame[F_STATUS]
        res = SubdocResult(self.key, 0, frame[F_CAS])
        res._paths = [p.decode("utf-8", "replace") for _op, p, _v, _f in self.specs]
        if status not in _SUBDOC_OK:
            res.rc = status
            res._message = _server_message(status, frame[F_VALUE])
            self.sink(res)
            return
        entries = decode_subdoc_lookup(frame[F_VALUE])
        results = []
        for i, (opcode, _path, _v, _flags) in enumerate(self.specs):
            if i >= len(entries):  # the body was cut short
                results.append((RC.PROTOCOL, None))
                continue
            spec_status, fragment = entries[i]
            results.append((spec_status, _decode_fragment(opcode, fragment) if not spec_status else None))
        res._results = results
        if status in _SPEC_FAILED:
            # As 2.x: missing paths leave the multi-path rc (not raised);
            # any other failed path makes the call fail with its own error.
            res.rc = RC.SUBDOC_MULTI_PATH_FAILURE
            for index, (spec_status, _value) in enumerate(results):
                if spec_status and spec_status != RC.SUBDOC_PATH_ENOENT:
                    res.rc = spec_status
                    res._message = "%s (path %r, spec %d)" % (rc_description(spec_status), res._paths[index],
                                                              index)
                    break
        self.sink(res)


class SubdocMutateOp(_KeyOp):
    """MULTI_MUTATION with one or more specs (atomic)."""

    __slots__ = ("specs",)
    result_class = SubdocResult

    def __init__(self, key: Any, kb: bytes, specs: list, doc_flags: int, expiry: int, cas: int,
                 timeout: float) -> None:
        _KeyOp.__init__(self, key, Opcode.SUBDOC_MULTI_MUTATION, kb, subdoc_mutation_extras(expiry, doc_flags),
                        subdoc_mutation_body(specs), cas, timeout)
        self.specs = specs

    def on_response(self, frame: Any) -> None:
        status = frame[F_STATUS]
        res = SubdocResult(self.key, 0, frame[F_CAS])
        res._paths = [p.decode("utf-8", "replace") for _op, p, _v, _f in self.specs]
        results = [(0, None)] * len(self.specs)
        value = frame[F_VALUE]
        if status in _MUTATED:
            for index, spec_status, fragment in decode_subdoc_mutation(value):
                if index < len(results):
                    opcode = self.specs[index][0]
                    results[index] = (spec_status, _decode_fragment(opcode, fragment))
            res._results = results
            if frame[F_EXTRAS]:
                res.mutation_token = _token(self, frame[F_EXTRAS])
            self._deliver(res)
            return
        failure = decode_subdoc_failure(value) if status in _SPEC_FAILED else None
        if failure is not None:
            index, spec_status = failure
            if index < len(results):
                results[index] = (spec_status, None)
                res._results = results
                res.rc = spec_status
                res._message = "%s (path %r, spec %d)" % (rc_description(spec_status), res._paths[index], index)
                self.sink(res)
                return
        # A multi-path failure whose body names no spec is a malformed
        # reply (its rc alone would read as "some paths missing").
        res.rc = RC.PROTOCOL if status in _SPEC_FAILED else status
        res._message = _server_message(status, frame[F_VALUE])
        res._results = []
        self.sink(res)


class LockOp(GetOp):
    """GET_LOCKED: read and lock; the result's CAS unlocks."""

    __slots__ = ()
    idempotent = False

    def __init__(self, key: Any, kb: bytes, lock_time: int, timeout: float, decoder: Optional[Any],
                 no_format: bool) -> None:
        GetOp.__init__(self, key, kb, 0, timeout, decoder, no_format)
        self.opcode = Opcode.GET_LOCKED
        self.extras = EXPIRY_EXTRAS.pack(lock_time) if lock_time else b""


class ReplicaGetOp(GetOp):
    """GET_REPLICA from one replica, or from each in turn until one has it."""

    __slots__ = ("candidates", "engine")

    def __init__(self, key: Any, kb: bytes, replicas: list, engine: Any, timeout: float, decoder: Optional[Any],
                 no_format: bool) -> None:
        GetOp.__init__(self, key, kb, 0, timeout, decoder, no_format)
        self.opcode = Opcode.GET_REPLICA
        self.replica = replicas[0]
        self.candidates = list(replicas[1:])
        self.engine = engine

    def _next_replica(self, why: str) -> bool:
        if not self.candidates or self.engine.closed:
            return False
        self.replica = self.candidates.pop(0)
        self.done = False
        self.last_error = why
        self.engine.resend(self)
        return True

    def on_response(self, frame: Any) -> None:
        if frame[F_STATUS] and self._next_replica("replica %d answered 0x%02x" % (self.replica, frame[F_STATUS])):
            return
        GetOp.on_response(self, frame)

    def on_error(self, rc: int, message: str) -> None:
        if rc != RC.TIMEOUT and self._next_replica(message):
            return
        GetOp.on_error(self, rc, message)


# --------------------------------------------------------------------------
# Local operations: observe and endure (the engine runs them with OBSERVE)
# --------------------------------------------------------------------------


class LocalOp(KVOp):
    """An operation the engine starts by calling :meth:`run` instead of
    sending a frame: it issues engine operations of its own and hands one
    result to ``sink``. A failure before it finishes becomes a result of
    ``error_result`` with the rc and message."""

    __slots__ = ("key", "sink")
    local = True
    error_result: Any = ValueResult

    def __init__(self, key: Any, opcode: int, kb: bytes, timeout: float) -> None:
        KVOp.__init__(self, opcode, kb, b"", b"", 0, 0, timeout)
        self.key = key
        self.sink: Callable[[Any], None] = discard

    def run(self, engine: Any) -> None:  # pragma: no cover - every local operation has its own
        raise NotImplementedError

    def on_response(self, frame: Any) -> None:  # pragma: no cover - local operations get no frames
        pass

    def on_error(self, rc: int, message: str) -> None:
        self.done = True
        res = self.error_result(self.key, rc)
        res._message = message
        self.sink(res)

    def stop(self, engine: Any) -> None:
        """The operation ended early (timed out, or its caller went away):
        start nothing more. Operations that issue further requests override it."""


class ObserveKeyOp(LocalOp):
    """``observe``: ask the active node (and the replicas unless
    ``master_only``) for the key's state. Result: a ValueResult whose value is
    a list of :class:`~couchbase_core.result.ObserveInfo`."""

    __slots__ = ("master_only", "_infos", "_expected", "_master_error", "_engine")

    def __init__(self, key: Any, kb: bytes, master_only: bool, timeout: float) -> None:
        LocalOp.__init__(self, key, Opcode.OBSERVE, kb, timeout)
        self.master_only = master_only
        self._infos: list = []
        self._expected = 0
        self._master_error: Optional[str] = None
        self._engine: Any = None

    def run(self, engine: Any) -> None:
        self._engine = engine
        copies = engine.copies_of(self.kb)
        if copies is None:
            engine.defer(lambda: self.on_error(RC.CLIENT_NOT_SUPPORTED, "observe needs a Couchbase bucket"))
            return
        vb, targets = copies
        if self.master_only:
            targets = [(copy, conn) for copy, conn in targets if copy == 0]
        self._expected = len(targets)
        if not targets:
            engine.defer(lambda: self.on_error(RC.NOT_MY_VBUCKET, "vBucket %d has no node" % vb))
            return
        for copy, conn in targets:
            op = ObserveOp(vb, self.kb, copy, self.timeout, self._answer)
            op.target = conn
            engine.submit(op)

    def _answer(self, copy: int, state: Optional[int], cas: Optional[int], error: Optional[str]) -> None:
        if error is not None or state is None:
            if copy == 0:
                self._master_error = error or "no answer"
        else:
            self._infos.append(ObserveInfo(state, cas or 0, copy == 0))
        self._expected -= 1
        if self._expected:
            return
        self.done = True
        infos = sorted(self._infos, key=lambda info: not info.from_master)
        engine = self._engine
        if engine is not None and engine.closed:
            # close() failed the OBSERVE requests: that is the bucket being
            # closed, not a network failure (and partial answers are moot)
            res = ValueResult(self.key, RC.OBJECT_DESTROYED)
            res._message = "observe failed: the bucket was closed"
        elif self._master_error is not None and not infos:
            res = ValueResult(self.key, RC.NETWORK)
            res._message = "observe failed: %s" % self._master_error
        else:
            master = next((i for i in infos if i.from_master), None)
            res = ValueResult(self.key, 0, master.cas if master else 0, infos, 0)
        self.sink(res)

    def describe(self) -> str:
        return "observe %r" % (self.key,)


class EndureOp(LocalOp):
    """``endure``: wait until a key's mutation is persisted / replicated."""

    __slots__ = ("cas_wanted", "persist_to", "replicate_to", "check_removed", "interval")
    error_result = OperationResult

    def __init__(self, key: Any, kb: bytes, cas: int, persist_to: int, replicate_to: int, check_removed: bool,
                 timeout: float, interval: float) -> None:
        LocalOp.__init__(self, key, Opcode.OBSERVE, kb, timeout)
        self.cas_wanted = cas
        self.persist_to = persist_to
        self.replicate_to = replicate_to
        self.check_removed = check_removed
        self.interval = interval

    def run(self, engine: Any) -> None:
        def done(rc: int, message: str) -> None:
            self.done = True
            res = OperationResult(self.key, rc, self.cas_wanted)
            if rc:
                res._message = message
            self.sink(res)

        Observer(engine, self.kb, self.cas_wanted, self.persist_to, self.replicate_to, self.check_removed,
                 self.timeout, self.interval, done).start()

    def describe(self) -> str:
        return "endure %r" % (self.key,)


class ChainOp(LocalOp):
    """An operation made of several requests in sequence (``queue_pop``,
    ``set_remove``...), written as a generator: it yields engine operations,
    receives each one's result, and returns the final result. It runs from
    loop callbacks like any other operation, so every bucket flavour can
    use it."""

    __slots__ = ("_factory", "_gen", "_engine", "_step")

    def __init__(self, key: Any, factory: Callable[[], Any], timeout: float) -> None:
        LocalOp.__init__(self, key, 0, b"", timeout)
        self._factory = factory
        self._gen: Any = None
        self._engine: Any = None
        self._step: Any = None

    def run(self, engine: Any) -> None:
        self._engine = engine
        self._gen = self._factory()
        # The whole chain has one deadline: when it passes, the caller gets
        # TimeoutError and no further step starts.
        self.deadline = engine.clock() + self.timeout
        engine.deadlines.add(self)
        engine.defer(lambda: self._advance(None))

    def _advance(self, result: Any) -> None:
        if self.done:
            return  # timed out or abandoned: start no further step
        try:
            step = self._gen.send(result)
        except StopIteration as stop:
            self.done = True
            self._step = None
            self.sink(stop.value)
            return
        except CouchbaseError as exc:  # a step refused its input (e.g. a bad path): that error, as it is
            self.on_error(exc.rc, exc.message)
            return
        except Exception as exc:  # a bug in a chain: fail rather than hang
            self.on_error(RC.INTERNAL, "%s failed: %r" % (self.describe(), exc))
            return
        step.sink = self._advance
        self._step = step
        try:
            self._engine.submit(step)
        except CouchbaseError as exc:
            self.on_error(exc.rc, exc.message)

    def stop(self, engine: Any) -> None:
        """Withdraw the step in progress if it is not written yet (a written
        one completes on the server; its result is dropped)."""
        step, self._step = self._step, None
        gen, self._gen = self._gen, None
        if step is not None:
            step.sink = discard
            engine.cancel(step)
        if gen is not None:
            gen.close()

    def describe(self) -> str:
        return "a composite operation on %r" % (self.key,)

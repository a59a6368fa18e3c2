"""Argument checks and key/value encoding for the bucket API.

Module functions validate scalars (ttl, cas, integers in a range, timeouts in
seconds); :class:`ArgumentsMixin` holds the checks that need the bucket's
state: key encoding and length (:meth:`_kb`), value transcoding
(:meth:`_encode`, :meth:`_fragment`), durability arguments
(:meth:`_mutation_extras`), sub-document specs, and refusing
Couchbase-only operations on plain memcached.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from couchbase_core import _formats
from couchbase_core import subdocument as SD
from couchbase_core import transcoder as _tc
from couchbase_core._engine.protocol import (
    EXPIRY_EXTRAS,
    STORE_EXTRAS,
    SUBDOC_EMPTY_PATH_OPCODES,
    Feature,
    Opcode,
    durability_framing,
)
from couchbase_core.connstr import MAX_TIMEOUT
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    DurabilityImpossibleError,
    NotSupportedError,
    SubdocEmptyPathError,
    TooBigError,
    ValueFormatError,
)
from couchbase_core.result import Result

__all__ = ["ArgumentsMixin"]


_FMT_AUTO = _formats.FMT_AUTO
_FMT_BYTES = _formats.FMT_BYTES
_FMT_UTF8 = _formats.FMT_UTF8
_FMT_JSON = _formats.FMT_JSON
# The layouts are protocol.py's; the hot paths use these aliases.
_STORE_EXTRAS = STORE_EXTRAS
_TTL = EXPIRY_EXTRAS
_MAX_KEY = 250
#: Sub-document opcodes that take an empty path: the protocol's list, plus
#: GET_COUNT (the root's count; 2.x sends it, the server accepts it).
_EMPTY_PATH_OPCODES = SUBDOC_EMPTY_PATH_OPCODES | {Opcode.SUBDOC_GET_COUNT}
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


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
    if isinstance(cas, Result):  # as 2.x: a result stands for its CAS
        cas = getattr(cas, "cas", 0)
    return _check_int(cas, "cas", 0, _U64)


class ArgumentsMixin:
    """Argument checks and key/value encoding of :class:`~couchbase_core._bucketbase.BaseBucket`."""

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
            kb = _transcoded_key(tc, key)
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
        elif (isinstance(fmt, bool) or not isinstance(fmt, int)) and self._transcoder is None:
            # With a transcoder any format object is handed to it (2.x).
            raise ArgumentError({"message": "format must be one of the FMT_* constants", "key": key})
        if self._data_passthrough:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueFormatError({"message": "data_passthrough stores need bytes, not %s"
                                        % type(value).__name__, "key": key})
            data, flags = bytes(value), (fmt if fmt != _FMT_AUTO else _FMT_BYTES)
        else:
            tc = self._transcoder
            if tc is None:
                try:
                    data, flags = _tc.encode_value(value, fmt)
                except CouchbaseError as exc:
                    if exc.key is None:
                        exc.key = key
                    raise
            else:
                data, flags = _transcoded_value(tc, key, value, fmt)
        if len(data) > self._settings.max_value_size:
            raise TooBigError({"rc": RC.CLIENT_TOO_BIG, "key": key,
                               "message": "value is %d bytes; the limit for this bucket is %d"
                               % (len(data), self._settings.max_value_size)})
        return data, flags & _U32

    def _fragment(self, key: Any, value: Any, fmt: Any) -> bytes:
        """Bytes for append/prepend: the server concatenates raw bytes. A
        custom transcoder encodes the fragment (format default FMT_UTF8),
        as in 2.x."""
        tc = self._transcoder
        if tc is not None:
            data = _transcoded_value(tc, key, value, _FMT_UTF8 if fmt is None else fmt)[0]
        elif fmt is None or fmt == _FMT_AUTO:
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
            framing = durability_framing(level, timeout_ms)
        return observe, framing

    @staticmethod
    def _with_durability(op: Any, extras: Tuple[Optional[tuple], bytes]) -> Any:
        observe, framing = extras
        # Set only when asked for: both are class-level defaults on the
        # operation, and setting one costs the operation an instance dict.
        if observe is not None:
            op.durability = observe
        if framing:
            op.framing = framing
        return op

    def _needs_couchbase(self, what: str, why: str) -> NotSupportedError:
        self._check_open()
        return NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED,
                                  "message": "%s needs a Couchbase bucket: %s" % (what, why)})

    def _plain_memcached(self) -> bool:
        """True when the bucket is plain memcached (or a memcached bucket)."""
        if self._settings.scheme == "memcached":
            return True
        cfg = self._engine.config
        return cfg is not None and cfg.locator == "ketama"

    def _require_couchbase(self, what: str, why: str) -> None:
        if self._plain_memcached():
            raise self._needs_couchbase(what, why)

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
            if not path and spec.opcode not in _EMPTY_PATH_OPCODES:
                raise SubdocEmptyPathError("an empty path is only allowed for get_count (the root) and for "
                                           "array_append, array_prepend and array_addunique on a root array")
            out.append((spec.opcode, path, spec.value, spec.flags))
        return out


def _transcoder_method(tc: Any, name: str, key: Any) -> Any:
    method = getattr(tc, name, None)
    if not callable(method):
        raise ValueFormatError({"message": "the transcoder %r has no %s method" % (tc, name), "key": key})
    return method


def _transcoded_key(tc: Any, key: Any) -> bytes:
    """``tc.encode_key(key)``, checked: any failure, or a result that is
    not non-empty bytes, is a ValueFormatError (as 2.x)."""
    try:
        kb = _transcoder_method(tc, "encode_key", key)(key)
    except CouchbaseError:
        raise
    except Exception as exc:
        raise ValueFormatError({"message": "the transcoder's encode_key failed: %r" % (exc,),
                                "key": key, "inner_cause": exc}) from exc
    if type(kb) is not bytes:
        if not isinstance(kb, (bytes, bytearray)):
            raise ValueFormatError({"message": "transcoder.encode_key must return bytes, not %s"
                                    % type(kb).__name__, "key": key})
        kb = bytes(kb)
    if not kb:
        raise ValueFormatError({"message": "transcoder.encode_key returned an empty key", "key": key})
    return kb


def _transcoded_value(tc: Any, key: Any, value: Any, fmt: Any) -> Tuple[bytes, int]:
    """``tc.encode_value(value, fmt)``, checked: any failure, or a result
    that is not ``(bytes, flags)`` with flags a 32-bit unsigned integer, is a
    ValueFormatError (as 2.x)."""
    try:
        out = _transcoder_method(tc, "encode_value", key)(value, fmt)
    except CouchbaseError as exc:
        if exc.key is None:
            exc.key = key
        raise
    except Exception as exc:
        raise ValueFormatError({"message": "the transcoder's encode_value failed: %r" % (exc,),
                                "key": key, "inner_cause": exc}) from exc
    if not isinstance(out, tuple) or len(out) != 2:
        raise ValueFormatError({"message": "transcoder.encode_value must return (bytes, flags), not %s"
                                % _short_repr(out), "key": key})
    data, flags = out
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueFormatError({"message": "transcoder.encode_value returned %s for the value, not bytes"
                                % type(data).__name__, "key": key})
    if not isinstance(flags, int) or not 0 <= flags <= _U32:
        raise ValueFormatError({"message": "transcoder.encode_value returned bad flags %s (an integer from 0 to "
                                "0xFFFFFFFF is needed)" % _short_repr(flags), "key": key})
    return bytes(data), int(flags)


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _positive_seconds(value: Any, name: str = "a timeout or interval") -> float:
    """A per-call timeout or interval: finite, > 0 and at most MAX_TIMEOUT."""
    return _seconds(value, name)


def _utf8_fragment(key: Any, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueFormatError({"message": "append/prepend value has no UTF-8 form: %s" % exc, "key": key,
                                "inner_cause": exc}) from None


def _seconds(value: Any, name: str) -> float:
    """A timeout given in seconds: an int or float, > 0 and at most
    :data:`~couchbase_core.connstr.MAX_TIMEOUT` (so never inf or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT:
        raise ArgumentError("%s must be a number of seconds greater than 0 and at most %d (MAX_TIMEOUT), not %r"
                            % (name, MAX_TIMEOUT, value))
    return float(value)

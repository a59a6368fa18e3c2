"""Turning Python values into stored bytes and flags, and back.

The default rules (used when a bucket has no ``transcoder``):

=============  ==========================  ==================================
format         stored bytes                accepted values
=============  ==========================  ==================================
``FMT_JSON``   JSON text, UTF-8            anything the JSON encoder takes
``FMT_UTF8``   the text, UTF-8             ``str``
``FMT_BYTES``  the bytes themselves        ``bytes``, ``bytearray``, ``memoryview``
``FMT_PICKLE`` ``pickle.dumps(value)``     anything picklable (the default
                                           pickle protocol, as 2.x)
``FMT_AUTO``   chosen from the type, as    ``str`` -> UTF-8, bytes-like -> bytes,
              2.x did                      ``dict``/``list``/``tuple``/``bool``/
                                           ``None`` -> JSON, anything else
                                           (``int`` and ``float`` too) -> pickle
=============  ==========================  ==================================

Reading looks at the flags' common byte first and falls back to the legacy
low bits (so ``0x02000006`` written by another SDK reads as JSON). Flags that
name no known format return the raw bytes unchanged.

A value that cannot be encoded in the requested format, or a stored value
that does not decode in the format its flags name, raises
:class:`~couchbase_core.exceptions.ValueFormatError`.

Custom behaviour: subclass :class:`Transcoder` and pass an instance as the
bucket's ``transcoder``; it is asked for every key and value.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Callable, Optional, Tuple

from couchbase_core._formats import (
    FMT_AUTO,
    FMT_BYTES,
    FMT_COMMON_MASK,
    FMT_JSON,
    FMT_LEGACY_MASK,
    FMT_PICKLE,
    FMT_UTF8,
)
from couchbase_core.exceptions import ArgumentError, ValueFormatError

__all__ = [
    "Transcoder", "TranscoderPP", "LegacyTranscoder", "LegacyTranscoderPP",
    "encode_key", "encode_value", "decode_value",
    "set_json_converters", "set_pickle_converters",
]


def _default_json_encode(value: Any) -> str:
    # allow_nan=False: NaN and Infinity are not JSON (other SDKs, N1QL and
    # views cannot read them back).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _default_pickle_encode(value: Any) -> bytes:
    # The interpreter's default protocol, as 2.x (it called pickle.dumps(value)):
    # readable by every Python 3.4+ (HIGHEST_PROTOCOL, 5, needs 3.8+).
    return pickle.dumps(value, protocol=pickle.DEFAULT_PROTOCOL)


# The converters live in module globals (not attributes) so the hot path pays
# one global lookup; set_*_converters rebind them.
_json_encode: Callable[[Any], Any] = _default_json_encode
_json_decode: Callable[[Any], Any] = json.loads
_pickle_encode: Callable[[Any], bytes] = _default_pickle_encode
_pickle_decode: Callable[[bytes], Any] = pickle.loads


def set_json_converters(encode: Callable[[Any], Any], decode: Callable[[str], Any]) -> Tuple[Callable, Callable]:
    """Use ``encode``/``decode`` for every ``FMT_JSON`` value; return the old pair."""
    global _json_encode, _json_decode
    if not callable(encode) or not callable(decode):
        raise ArgumentError("set_json_converters needs two callables")
    old = (_json_encode, _json_decode)
    _json_encode, _json_decode = encode, decode
    return old


def set_pickle_converters(encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> Tuple[Callable, Callable]:
    """Use ``encode``/``decode`` for every ``FMT_PICKLE`` value; return the old pair."""
    global _pickle_encode, _pickle_decode
    if not callable(encode) or not callable(decode):
        raise ArgumentError("set_pickle_converters needs two callables")
    old = (_pickle_encode, _pickle_decode)
    _pickle_encode, _pickle_decode = encode, decode
    return old


#: What FMT_AUTO stores as JSON (as 2.x: numbers other than bool are pickled).
_JSON_TYPES = (dict, list, tuple, bool, type(None))
_BYTES_TYPES = (bytes, bytearray, memoryview)

# common-flags byte -> canonical format; legacy bits -> canonical format
_BY_COMMON = {0x01: FMT_PICKLE, 0x02: FMT_JSON, 0x03: FMT_BYTES, 0x04: FMT_UTF8}
_BY_LEGACY = {0x00: FMT_JSON, 0x01: FMT_PICKLE, 0x02: FMT_BYTES, 0x04: FMT_UTF8}


def format_of(flags: int) -> int:
    """Return the canonical ``FMT_*`` constant the flags describe, or 0 if none."""
    common = (flags & FMT_COMMON_MASK) >> 24
    if common:
        return _BY_COMMON.get(common, 0)
    return _BY_LEGACY.get(flags & FMT_LEGACY_MASK, 0)


def unencodable_key(key: Any, exc: UnicodeEncodeError) -> ArgumentError:
    """The ArgumentError for a ``str`` key with no UTF-8 form (a lone
    surrogate such as ``"a\\udcff"``, e.g. from ``os.fsdecode``)."""
    return ArgumentError({"message": "key %r has no UTF-8 form (%s at position %d)"
                          % (key, exc.reason, exc.start), "key": key, "inner_cause": exc})


def encode_key(key: Any) -> bytes:
    """``str`` keys become UTF-8; ``bytes`` stay; anything else, and a
    ``str`` that has no UTF-8 form, is an ArgumentError."""
    if isinstance(key, str):
        try:
            return str.encode(key, "utf-8")
        except UnicodeEncodeError as exc:
            raise unencodable_key(key, exc) from None
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    raise ArgumentError({"message": "keys must be str or bytes, not %s" % type(key).__name__, "key": key})


def _fail(fmt_name: str, value: Any, why: str, cause: Optional[BaseException] = None) -> ValueFormatError:
    return ValueFormatError({
        "message": "cannot encode %s value as %s: %s" % (type(value).__name__, fmt_name, why),
        "inner_cause": cause,
        "objextra": value,
    })


def encode_value(value: Any, fmt: int) -> Tuple[bytes, int]:
    """Encode ``value`` in format ``fmt``; return ``(bytes, flags)``."""
    if fmt == FMT_AUTO:
        tp = type(value)
        if isinstance(value, str):
            try:
                return str.encode(value, "utf-8"), FMT_UTF8
            except UnicodeEncodeError as exc:
                raise _fail("FMT_UTF8", value, str(exc), exc) from None
        if tp is bytes:
            return value, FMT_BYTES
        if isinstance(value, _BYTES_TYPES):
            return bytes(value), FMT_BYTES
        if isinstance(value, _JSON_TYPES):
            fmt = FMT_JSON
        else:
            fmt = FMT_PICKLE
    flags = fmt
    kind = fmt if fmt in (FMT_JSON, FMT_UTF8, FMT_BYTES, FMT_PICKLE) else format_of(fmt) if type(fmt) is int else 0
    if kind == FMT_JSON:
        try:
            data = _json_encode(value)
        except Exception as exc:
            raise _fail("JSON", value, str(exc), exc) from exc
        if type(data) is str:
            try:
                return data.encode("utf-8"), flags
            except UnicodeEncodeError as exc:  # a lone surrogate in a string
                raise _fail("JSON", value, str(exc), exc) from None
        if isinstance(data, _BYTES_TYPES):
            return bytes(data), flags
        raise _fail("JSON", value, "the JSON encoder returned %s" % type(data).__name__)
    if kind == FMT_BYTES:
        if type(value) is bytes:
            return value, flags
        if isinstance(value, _BYTES_TYPES):
            return bytes(value), flags
        raise _fail("FMT_BYTES", value, "FMT_BYTES needs bytes, bytearray or memoryview")
    if kind == FMT_UTF8:
        if isinstance(value, str):
            try:
                return value.encode("utf-8"), flags
            except UnicodeEncodeError as exc:
                raise _fail("FMT_UTF8", value, str(exc), exc) from exc
        raise _fail("FMT_UTF8", value, "FMT_UTF8 needs str")
    if kind == FMT_PICKLE:
        try:
            return _pickle_encode(value), flags
        except Exception as exc:
            raise _fail("FMT_PICKLE", value, str(exc), exc) from exc
    raise ArgumentError("unknown format 0x%X (use one of the FMT_* constants)" % fmt if type(fmt) is int
                        else "format must be an int FMT_* constant, not %s" % type(fmt).__name__)


def decode_value(data: bytes, flags: int) -> Any:
    """Decode stored ``data`` according to ``flags`` (see the module docs)."""
    common = flags >> 24
    if common == 0x02 or (common == 0 and (flags & FMT_LEGACY_MASK) == 0):
        try:
            return _json_decode(data.decode("utf-8"))
        except Exception as exc:
            raise ValueFormatError({
                "message": "stored value is not valid JSON (flags 0x%X): %s" % (flags, exc),
                "inner_cause": exc, "objextra": data}) from exc
    kind = _BY_COMMON.get(common, 0) if common else _BY_LEGACY.get(flags & FMT_LEGACY_MASK, 0)
    if kind == FMT_BYTES:
        return data
    if kind == FMT_UTF8:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueFormatError({
                "message": "stored value is not valid UTF-8 (flags 0x%X)" % flags,
                "inner_cause": exc, "objextra": data}) from exc
    if kind == FMT_PICKLE:
        try:
            return _pickle_decode(data)
        except Exception as exc:
            raise ValueFormatError({
                "message": "stored value does not unpickle (flags 0x%X): %s" % (flags, exc),
                "inner_cause": exc, "objextra": data}) from exc
    return data


class Transcoder:
    """The default conversion, as an overridable class.

    Subclass it and override any of the four methods; pass an instance as a
    bucket's ``transcoder``. Each method is called once per key or value.
    """

    def encode_key(self, key: Any) -> bytes:
        """Return the key's bytes (``str`` -> UTF-8)."""
        return encode_key(key)

    def decode_key(self, key: bytes) -> Any:
        """Turn key bytes from the server into the key returned to the caller."""
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key

    def encode_value(self, value: Any, format: int) -> Tuple[bytes, int]:  # noqa: A002
        """Return ``(bytes, flags)`` for ``value`` in ``format``."""
        return encode_value(value, format)

    def decode_value(self, value: bytes, flags: int) -> Any:
        """Return the Python value for stored ``value`` with ``flags``."""
        return decode_value(value, flags)


class TranscoderPP(Transcoder):
    """The pure-Python reference transcoder (identical to :class:`Transcoder`;
    kept for code written against the 2.x SDK, where it was the Python twin
    of the C one)."""


_TO_LEGACY = {FMT_JSON: 0x00, FMT_PICKLE: 0x01, FMT_BYTES: 0x02, FMT_UTF8: 0x04}


class LegacyTranscoder(Transcoder):
    """Writes only the legacy Python flag bits (0 JSON, 1 pickle, 2 bytes,
    4 UTF-8), for sharing data with clients that predate common flags."""

    def encode_value(self, value: Any, format: int) -> Tuple[bytes, int]:  # noqa: A002
        data, flags = encode_value(value, format)
        return data, _TO_LEGACY.get(format_of(flags), flags & FMT_LEGACY_MASK)


class LegacyTranscoderPP(LegacyTranscoder):
    """The 2.x pure-Python twin of :class:`LegacyTranscoder` (legacy flag
    bits only, no common flags); here the two are the same code, this name
    is kept so 2.x code that imports it keeps working."""

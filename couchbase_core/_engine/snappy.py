"""Snappy for KV values (datatype bit 0x02), with a limit on inflation.

The server compresses values in Snappy's *raw* format, which begins with
the uncompressed length as a little-endian base-128 varint. A compressed
frame can announce (and really inflate to) far more than it carries: 20 MB
of Snappy can become 400 MB. :func:`inflate` reads that length first and
refuses, before any decompression, a value that would exceed
:data:`MAX_INFLATED_SIZE`.

The frame was read whole either way, so a value that cannot be inflated
fails its operation only (``LimitExceededError`` above the limit,
``ProtocolError`` for bytes that are not Snappy); the connection stays in
step and carries on.

The codec is the ``cramjam`` package, imported on first use.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from couchbase_core._engine.protocol import (
    F_DATATYPE,
    F_FRAMING,
    F_OPAQUE,
    F_VALUE,
    MAX_BODY,
    Datatype,
)

__all__ = ["MAX_INFLATED_SIZE", "InflateError", "InflateLimitError", "inflated_length", "inflate", "compress",
           "inflate_frame", "available"]

#: The largest value accepted after inflation: the frame limit, so a value
#: is never larger decompressed than it could have been sent plain.
MAX_INFLATED_SIZE = MAX_BODY

# a uint64 takes at most 10 varint bytes; Snappy itself uses at most 5
_MAX_VARINT_BYTES = 10


class InflateError(ValueError):
    """The value is not valid Snappy."""


class InflateLimitError(InflateError):
    """The value would inflate beyond :data:`MAX_INFLATED_SIZE`."""


def available() -> bool:
    """True when the codec (``cramjam``) is installed."""
    try:
        import cramjam  # noqa: F401
    except ImportError:
        return False
    return True


def inflated_length(data: Any) -> int:
    """The uncompressed length announced by a raw Snappy block."""
    length = shift = 0
    for i in range(min(len(data), _MAX_VARINT_BYTES)):
        byte = data[i]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length
        shift += 7
    raise InflateError("the Snappy length header is truncated or too long")


def inflate(data: Any) -> bytes:
    """Decompress a raw Snappy block, refusing one that would inflate
    beyond :data:`MAX_INFLATED_SIZE` before decompressing anything."""
    length = inflated_length(data)
    if length > MAX_INFLATED_SIZE:
        raise InflateLimitError("a Snappy value would inflate to %d bytes, more than the limit of %d "
                                "(snappy.MAX_INFLATED_SIZE)" % (length, MAX_INFLATED_SIZE))
    import cramjam

    try:
        value = bytes(cramjam.snappy.decompress_raw(data))
    except Exception as exc:  # noqa: BLE001 - cramjam raises its own error types
        raise InflateError("a Snappy value does not decompress: %s" % exc) from exc
    if len(value) != length:
        raise InflateError("a Snappy value inflated to %d bytes, not the %d it announced" % (len(value), length))
    return value


def inflate_frame(frame: Any) -> Any:
    """The frame with its value inflated and the Snappy bit cleared
    (raises :class:`InflateError` / :class:`InflateLimitError`)."""
    value = inflate(frame[F_VALUE])
    return (frame[:F_DATATYPE] + (frame[F_DATATYPE] & ~Datatype.SNAPPY,) + frame[F_OPAQUE:F_VALUE] + (value,)
            + frame[F_FRAMING:])


def compress(value: bytes, datatype: int, min_ratio: Optional[float]) -> Tuple[bytes, int]:
    """Snappy-compress ``value`` if that saves enough (``min_ratio`` None:
    always, the ``compression=force`` mode)."""
    import cramjam

    packed = bytes(cramjam.snappy.compress_raw(value))
    if min_ratio is None or len(packed) < len(value) * min_ratio:
        return packed, datatype | Datatype.SNAPPY
    return value, datatype

"""Sans-I/O codec for the memcached binary protocol (Couchbase dialect).

Bytes in, frames out; frames in, bytes out. Nothing here touches a socket,
a clock or a loop, so every function can be tested by feeding it bytes.

A frame is a 24-byte header and a body ``[framing extras][extras][key][value]``
(see ``spec/kv-protocol.md`` §2). Responses come back from
:meth:`FrameDecoder.feed` as plain tuples, because the engine creates one per
reply on its hottest path; the ``F_*`` constants name the tuple's fields.

Errors: malformed input raises :class:`FrameError`, the codec's only error
type. The connection translates it once, at its boundary, into
:class:`couchbase_core.exceptions.ProtocolError` for every pending operation.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

__all__ = [
    "HEADER", "HEADER_LEN", "Magic", "Opcode", "Status", "Feature", "Datatype",
    "FrameError", "FrameDecoder", "Frame", "encode_request", "encode_response",
    "encode_frame_infos", "decode_frame_infos", "opcode_name", "status_name",
    "F_MAGIC", "F_OPCODE", "F_STATUS", "F_DATATYPE", "F_OPAQUE", "F_CAS",
    "F_EXTRAS", "F_KEY", "F_VALUE", "F_FRAMING",
]

#: Classic header: magic, opcode, key length, extras length, datatype,
#: vbucket (request) / status (response), total body length, opaque, CAS.
HEADER = struct.Struct(">BBHBBHIIQ")
#: Alternative ("flex") header: framing-extras length and key length are
#: one byte each where the classic header has a two-byte key length.
ALT_HEADER = struct.Struct(">BBBBBBHIIQ")
HEADER_LEN = 24

#: The largest body the decoder accepts. Couchbase values are at most 20 MiB
#: (plus xattrs and headers); anything far beyond is garbage on the wire.
MAX_BODY = 64 * 1024 * 1024


class Magic:
    """First header byte."""

    REQUEST = 0x80
    RESPONSE = 0x81
    ALT_REQUEST = 0x08
    ALT_RESPONSE = 0x18
    SERVER_REQUEST = 0x82
    SERVER_RESPONSE = 0x83


class Opcode:
    """Command opcodes (spec/kv-protocol.md §5)."""

    GET = 0x00
    SET = 0x01
    ADD = 0x02
    REPLACE = 0x03
    DELETE = 0x04
    INCREMENT = 0x05
    DECREMENT = 0x06
    QUIT = 0x07
    FLUSH = 0x08
    GETQ = 0x09
    NOOP = 0x0A
    VERSION = 0x0B
    GETK = 0x0C
    GETKQ = 0x0D
    APPEND = 0x0E
    PREPEND = 0x0F
    STAT = 0x10
    SETQ = 0x11
    ADDQ = 0x12
    REPLACEQ = 0x13
    DELETEQ = 0x14
    INCREMENTQ = 0x15
    DECREMENTQ = 0x16
    QUITQ = 0x17
    FLUSHQ = 0x18
    APPENDQ = 0x19
    PREPENDQ = 0x1A
    VERBOSITY = 0x1B
    TOUCH = 0x1C
    GAT = 0x1D
    GATQ = 0x1E
    HELLO = 0x1F
    SASL_LIST_MECHS = 0x20
    SASL_AUTH = 0x21
    SASL_STEP = 0x22
    GET_REPLICA = 0x83
    SELECT_BUCKET = 0x89
    OBSERVE_SEQNO = 0x91
    OBSERVE = 0x92
    GET_LOCKED = 0x94
    UNLOCK_KEY = 0x95
    GET_META = 0xA0
    GET_CLUSTER_CONFIG = 0xB5
    SUBDOC_GET = 0xC5
    SUBDOC_EXISTS = 0xC6
    SUBDOC_DICT_ADD = 0xC7
    SUBDOC_DICT_UPSERT = 0xC8
    SUBDOC_DELETE = 0xC9
    SUBDOC_REPLACE = 0xCA
    SUBDOC_ARRAY_PUSH_LAST = 0xCB
    SUBDOC_ARRAY_PUSH_FIRST = 0xCC
    SUBDOC_ARRAY_INSERT = 0xCD
    SUBDOC_ARRAY_ADD_UNIQUE = 0xCE
    SUBDOC_COUNTER = 0xCF
    SUBDOC_MULTI_LOOKUP = 0xD0
    SUBDOC_MULTI_MUTATION = 0xD1
    SUBDOC_GET_COUNT = 0xD2
    GET_ERROR_MAP = 0xFE


class Status:
    """Response status codes (spec/kv-protocol.md §8). The client's result
    codes for server failures are these same numbers."""

    SUCCESS = 0x00
    KEY_ENOENT = 0x01
    KEY_EEXISTS = 0x02
    E2BIG = 0x03
    EINVAL = 0x04
    NOT_STORED = 0x05
    DELTA_BADVAL = 0x06
    NOT_MY_VBUCKET = 0x07
    NO_BUCKET = 0x08
    LOCKED = 0x09
    NOT_LOCKED = 0x0E
    AUTH_STALE = 0x1F
    AUTH_ERROR = 0x20
    AUTH_CONTINUE = 0x21
    ERANGE = 0x22
    EACCESS = 0x24
    NOT_INITIALIZED = 0x25
    UNKNOWN_COMMAND = 0x81
    ENOMEM = 0x82
    NOT_SUPPORTED = 0x83
    EINTERNAL = 0x84
    EBUSY = 0x85
    ETMPFAIL = 0x86


class Feature:
    """HELLO feature codes (spec/kv-protocol.md §5.2)."""

    TCPNODELAY = 0x03
    MUTATION_SEQNO = 0x04
    XATTR = 0x06
    XERROR = 0x07
    SELECT_BUCKET = 0x08
    SNAPPY = 0x0A
    JSON = 0x0B
    DUPLEX = 0x0C
    CLUSTERMAP_CHANGE_NOTIFICATION = 0x0D
    UNORDERED_EXECUTION = 0x0E
    TRACING = 0x0F
    ALT_REQUEST = 0x10
    SYNC_REPLICATION = 0x11
    COLLECTIONS = 0x12


class Datatype:
    """Datatype bits."""

    RAW = 0x00
    JSON = 0x01
    SNAPPY = 0x02
    XATTR = 0x04


def _names(cls: type) -> dict:
    return {v: k for k, v in vars(cls).items() if k.isupper() and isinstance(v, int)}


_OPCODE_NAMES = _names(Opcode)
_STATUS_NAMES = _names(Status)


def opcode_name(opcode: int) -> str:
    """``'GET'`` for 0x00, ``'0x42'`` for opcodes without a name."""
    return _OPCODE_NAMES.get(opcode, "0x%02x" % opcode)


def status_name(status: int) -> str:
    """``'KEY_ENOENT'`` for 0x01, ``'0x42'`` for statuses without a name."""
    return _STATUS_NAMES.get(status, "0x%02x" % status)


class FrameError(Exception):
    """The byte stream is not a valid sequence of frames."""


# -- frames ---------------------------------------------------------------------

#: A decoded frame: (magic, opcode, status, datatype, opaque, cas, extras,
#: key, value, framing). For server requests (magic 0x82) the "status" slot
#: holds the vbucket field.
Frame = Tuple[int, int, int, int, int, int, bytes, bytes, bytes, bytes]

F_MAGIC = 0
F_OPCODE = 1
F_STATUS = 2
F_DATATYPE = 3
F_OPAQUE = 4
F_CAS = 5
F_EXTRAS = 6
F_KEY = 7
F_VALUE = 8
F_FRAMING = 9

_ACCEPTED_MAGIC = (Magic.RESPONSE, Magic.ALT_RESPONSE, Magic.SERVER_REQUEST)


class FrameDecoder:
    """Incremental decoder for the server's side of a connection.

    Call :meth:`feed` with each chunk read from the socket; it returns the
    list of frames the chunk completed (possibly empty). Partial frames are
    kept until the rest arrives, whatever the split points. The decoder
    accepts response magics 0x81 and 0x18 and server-request magic 0x82;
    anything else raises :class:`FrameError`, after which the decoder must
    not be used again.
    """

    __slots__ = ("_partial", "_need", "max_body", "_failed")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._partial: Optional[bytearray] = None
        self._need = 0
        self.max_body = max_body
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._partial) if self._partial is not None else 0

    def feed(self, data: bytes) -> List[Frame]:
        """Add ``data`` and return every frame it completes."""
        if self._failed:
            raise FrameError("decoder used after a framing error")
        partial = self._partial
        if partial is not None:
            partial += data
            if len(partial) < self._need:
                return []
            buf = bytes(partial)
            self._partial = None
        else:
            buf = data
        try:
            frames, pos = self._parse(buf)
        except FrameError:
            self._failed = True
            raise
        size = len(buf)
        if pos < size:
            # Check what we can of the incomplete frame now, so garbage fails
            # at once instead of making us wait for a body that never comes.
            if buf[pos] not in _ACCEPTED_MAGIC:
                self._failed = True
                raise FrameError("bad magic 0x%02x at the start of a frame" % buf[pos])
            if size - pos < HEADER_LEN:
                self._need = HEADER_LEN
            else:
                bodylen = HEADER.unpack_from(buf, pos)[6]
                if bodylen > self.max_body:
                    self._failed = True
                    raise FrameError("frame body of %d bytes exceeds the %d-byte limit" % (bodylen, self.max_body))
                self._need = HEADER_LEN + bodylen
            self._partial = bytearray(memoryview(buf)[pos:])
        return frames

    def feed_eof(self) -> None:
        """The stream ended: raise :class:`FrameError` if a frame is cut short."""
        if self._partial:
            raise FrameError("connection closed in the middle of a frame (%d bytes buffered)" % len(self._partial))

    def _parse(self, buf: bytes) -> Tuple[List[Frame], int]:
        frames: List[Frame] = []
        append = frames.append
        unpack = HEADER.unpack_from
        max_body = self.max_body
        pos = 0
        size = len(buf)
        while size - pos >= 24:
            magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas = unpack(buf, pos)
            if magic != 0x81 or extlen + keylen > bodylen or bodylen > max_body:
                # Not a plain response, or a bad one: the careful way.
                end, frame = self._unusual(buf, pos, size)
                if frame is None:
                    break
                append(frame)
                pos = end
                continue
            end = pos + 24 + bodylen
            if end > size:
                break
            p = pos + 24
            e = p + extlen
            k = e + keylen
            # Empty slices are the shared b"": no allocation for absent parts.
            append((0x81, opcode, status, datatype, opaque, cas, buf[p:e], buf[e:k], buf[k:end], b""))
            pos = end
        return frames, pos

    def _unusual(self, buf: bytes, pos: int, size: int) -> Tuple[int, Optional[Frame]]:
        """Decode the frame at ``pos`` whatever its magic; ``(end, None)``
        when it is incomplete. Raises FrameError for a malformed one."""
        magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas = HEADER.unpack_from(buf, pos)
        if magic == Magic.ALT_RESPONSE:
            framelen = keylen >> 8
            keylen &= 0xFF
        elif magic in _ACCEPTED_MAGIC:
            framelen = 0
        else:
            raise FrameError("bad magic 0x%02x at stream offset %d" % (magic, pos))
        if bodylen > self.max_body:
            raise FrameError("frame body of %d bytes exceeds the %d-byte limit" % (bodylen, self.max_body))
        if framelen + extlen + keylen > bodylen:
            raise FrameError("frame header lengths (framing %d, extras %d, key %d) exceed body length %d"
                             % (framelen, extlen, keylen, bodylen))
        end = pos + HEADER_LEN + bodylen
        if end > size:
            return end, None
        p = pos + HEADER_LEN
        framing = buf[p:p + framelen]
        p += framelen
        extras = buf[p:p + extlen]
        p += extlen
        key = buf[p:p + keylen]
        p += keylen
        return end, (magic, opcode, status, datatype, opaque, cas, extras, key, buf[p:end], framing)


# -- encoding -------------------------------------------------------------------------


def encode_request(opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
                   vbucket: int = 0, opaque: int = 0, cas: int = 0, datatype: int = 0,
                   framing: bytes = b"") -> bytes:
    """Encode one request. With ``framing`` extras the alternative magic
    (0x08) is used; the caller must have negotiated it."""
    body = len(framing) + len(extras) + len(key) + len(value)
    if framing:
        if len(key) > 0xFF or len(framing) > 0xFF:
            raise ValueError("alt-request frames allow at most 255 bytes of key and framing extras")
        header = ALT_HEADER.pack(Magic.ALT_REQUEST, opcode, len(framing), len(key), len(extras),
                                 datatype, vbucket, body, opaque, cas)
        return header + framing + extras + key + value
    if len(key) > 0xFFFF or len(extras) > 0xFF:
        raise ValueError("key or extras too long for a frame")
    return HEADER.pack(Magic.REQUEST, opcode, len(key), len(extras), datatype, vbucket,
                       body, opaque, cas) + extras + key + value


def encode_response(opcode: int, status: int = 0, key: bytes = b"", extras: bytes = b"",
                    value: bytes = b"", opaque: int = 0, cas: int = 0, datatype: int = 0,
                    framing: bytes = b"") -> bytes:
    """Encode one response (used by tests and the cluster emulator)."""
    body = len(framing) + len(extras) + len(key) + len(value)
    if framing:
        header = ALT_HEADER.pack(Magic.ALT_RESPONSE, opcode, len(framing), len(key), len(extras),
                                 datatype, status, body, opaque, cas)
        return header + framing + extras + key + value
    return HEADER.pack(Magic.RESPONSE, opcode, len(key), len(extras), datatype, status,
                       body, opaque, cas) + extras + key + value


def encode_frame_infos(infos: List[Tuple[int, bytes]]) -> bytes:
    """Encode ``(id, data)`` framing-extras objects (spec §2.4), escaping ids
    and lengths of 15 and more."""
    out = bytearray()
    for fid, data in infos:
        length = len(data)
        nib_id = fid if fid < 15 else 15
        nib_len = length if length < 15 else 15
        out.append((nib_id << 4) | nib_len)
        if fid >= 15:
            out.append(fid - 15)
        if length >= 15:
            out.append(length - 15)
        out += data
    return bytes(out)


def decode_frame_infos(data: bytes) -> List[Tuple[int, bytes]]:
    """Decode framing extras into ``(id, data)`` pairs; raise FrameError on
    truncation."""
    out = []
    pos = 0
    size = len(data)
    while pos < size:
        byte = data[pos]
        pos += 1
        fid, length = byte >> 4, byte & 0x0F
        if fid == 15:
            if pos >= size:
                raise FrameError("truncated frame-info id escape")
            fid = 15 + data[pos]
            pos += 1
        if length == 15:
            if pos >= size:
                raise FrameError("truncated frame-info length escape")
            length = 15 + data[pos]
            pos += 1
        if pos + length > size:
            raise FrameError("truncated frame-info object")
        out.append((fid, bytes(data[pos:pos + length])))
        pos += length
    return out

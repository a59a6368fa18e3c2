"""Sans-I/O codec for the memcached binary protocol (Couchbase dialect).

Bytes in, frames out; frames in, bytes out. Nothing here touches a socket,
a clock or a loop, so every function can be tested by feeding it bytes.

A frame is a 24-byte header and a body ``[framing extras][extras][key][value]``
(see ``spec/kv-protocol.md`` §2). Responses come back from
:meth:`FrameDecoder.feed` as plain tuples, because the engine creates one per
reply on its hottest path; the ``F_*`` constants name the tuple's fields.

This is the only module that knows the wire layout: the header packers,
the extras, framing extras and bodies of each command family (builders such
as :func:`counter_request`, :func:`durability_framing`,
:func:`subdoc_mutation_body`) and the decoders of structured reply bodies
(:func:`decode_subdoc_lookup`, :func:`decode_observe`, :func:`decode_hello`...).
Everything else names fields (``frame[F_STATUS]``) and calls these.

Errors: malformed input raises :class:`FrameError`, the codec's only error
type. The connection translates it once, at its boundary, into
:class:`couchbase_core.exceptions.ProtocolError` for every pending operation.
"""

from __future__ import annotations

import json
import struct
from itertools import repeat
from typing import Any, Dict, Final, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple

__all__ = [
    "HEADER", "HEADER_LEN", "Magic", "Opcode", "Status", "Feature", "Datatype",
    "FrameError", "FrameDecoder", "Frame", "encode_request", "encode_response",
    "encode_frame_infos", "decode_frame_infos", "opcode_name", "status_name",
    "F_MAGIC", "F_OPCODE", "F_STATUS", "F_DATATYPE", "F_OPAQUE", "F_CAS",
    "F_EXTRAS", "F_KEY", "F_VALUE", "F_FRAMING", "RUN", "RUN_STATUS", "expand_run", "run_from",
    "ServerOpcode", "FrameInfoId", "ResponseFrameInfoId", "DurabilityLevel", "SubdocPathFlag",
    "SubdocDocFlag", "ObserveState", "SUBDOC_EMPTY_PATH_OPCODES", "COUNTER_NO_CREATE", "ERROR_MAP_VERSION",
    "SubdocSpec",
    "pack_header", "pack_alt_header", "frame_end", "frame_end_after", "frame_opaques",
    "STORE_EXTRAS", "EXPIRY_EXTRAS", "FLAGS_EXTRAS", "COUNTER_EXTRAS", "COUNTER_VALUE",
    "MUTATION_TOKEN", "counter_request", "durability_framing", "hello_body", "decode_hello",
    "error_map_body", "decode_error_map", "subdoc_lookup_extras", "subdoc_lookup_body",
    "subdoc_mutation_extras", "subdoc_mutation_body", "decode_subdoc_lookup",
    "decode_subdoc_mutation", "decode_subdoc_failure", "observe_body", "decode_observe",
    "observe_seqno_body", "ObserveSeqno", "decode_observe_seqno", "get_meta_extras", "GetMeta",
    "decode_get_meta", "ConfigPush", "decode_config_push",
]

#: Classic header: magic, opcode, key length, extras length, datatype,
#: vbucket (request) / status (response), total body length, opaque, CAS.
HEADER = struct.Struct(">BBHBBHIIQ")
#: Alternative ("flex") header: framing-extras length and key length are
#: one byte each where the classic header has a two-byte key length.
ALT_HEADER = struct.Struct(">BBBBBBHIIQ")
HEADER_LEN = 24

#: The one packer of each header layout: every header this client puts on
#: the wire goes through one of them (hot paths keep a module-level alias).
#: Arguments in header order, e.g. ``pack_header(magic, opcode, keylen,
#: extlen, datatype, vbucket_or_status, bodylen, opaque, cas)``.
pack_header = HEADER.pack
#: ``pack_alt_header(magic, opcode, framelen, keylen, extlen, datatype,
#: vbucket_or_status, bodylen, opaque, cas)``.
pack_alt_header = ALT_HEADER.pack
#: Total body length, at offset 8 of either header layout.
_BODY_LEN = struct.Struct(">I")
_BODY_LEN_AND_OPAQUE = struct.Struct(">II")
_BODY_LEN_OFFSET = 8

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
    SUBDOC_REPLACE_BODY_WITH_XATTR = 0xD3
    GET_ERROR_MAP = 0xFE


class ServerOpcode:
    """Opcodes of server-initiated requests (magic 0x82, after HELLO Duplex;
    spec/kv-protocol.md §5.3)."""

    CLUSTERMAP_CHANGE_NOTIFICATION = 0x01


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
    CONFIG_ONLY = 0x0D
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
    SUBDOC_PATH_ENOENT = 0xC0
    SUBDOC_PATH_MISMATCH = 0xC1
    SUBDOC_PATH_EINVAL = 0xC2
    SUBDOC_PATH_E2BIG = 0xC3
    SUBDOC_DOC_E2DEEP = 0xC4
    SUBDOC_VALUE_CANTINSERT = 0xC5
    SUBDOC_DOC_NOTJSON = 0xC6
    SUBDOC_NUM_ERANGE = 0xC7
    SUBDOC_DELTA_EINVAL = 0xC8
    SUBDOC_PATH_EEXISTS = 0xC9
    SUBDOC_VALUE_ETOODEEP = 0xCA
    SUBDOC_INVALID_COMBO = 0xCB
    #: Some specs of a multi-path command failed: the body says which.
    SUBDOC_MULTI_PATH_FAILURE = 0xCC
    #: Success, on a deleted document (ACCESS_DELETED).
    SUBDOC_SUCCESS_DELETED = 0xCD
    #: SUBDOC_MULTI_PATH_FAILURE on a deleted document.
    SUBDOC_MULTI_PATH_FAILURE_DELETED = 0xD3


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
    """Datatype bits (spec/kv-protocol.md §2.5)."""

    RAW = 0x00
    JSON = 0x01
    SNAPPY = 0x02
    XATTR = 0x04


class FrameInfoId:
    """Ids of request framing extras (spec/kv-protocol.md §2.4)."""

    BARRIER = 0
    DURABILITY = 1
    DCP_STREAM_ID = 2
    IMPERSONATE_USER = 4
    PRESERVE_TTL = 5
    IMPERSONATE_EXTRA_PRIVILEGE = 6


class ResponseFrameInfoId:
    """Ids of response framing extras (magic 0x18; spec/kv-protocol.md §2.4)."""

    SERVER_DURATION = 0
    READ_UNITS = 1
    WRITE_UNITS = 2
    THROTTLE_DURATION = 3


class DurabilityLevel:
    """Levels of the durability-requirement frame (0, none, is never sent)."""

    MAJORITY = 0x01
    MAJORITY_AND_PERSIST_TO_ACTIVE = 0x02
    PERSIST_TO_MAJORITY = 0x03


class SubdocPathFlag:
    """Per-path flags of sub-document specs (spec/kv-protocol.md §7)."""

    MKDIR_P = 0x01
    XATTR = 0x04
    EXPAND_MACROS = 0x10
    BINARY_VALUE = 0x20


class SubdocDocFlag:
    """Per-request document flags of sub-document commands (spec/kv-protocol.md §7)."""

    MKDOC = 0x01
    ADD = 0x02
    ACCESS_DELETED = 0x04
    CREATE_AS_DELETED = 0x08
    REVIVE_DOCUMENT = 0x10
    REPLICA_READ = 0x20


class ObserveState:
    """Key states in an OBSERVE reply (spec/kv-protocol.md §5.4)."""

    FOUND_NOT_PERSISTED = 0x00
    FOUND_PERSISTED = 0x01
    NOT_FOUND = 0x80
    LOGICALLY_DELETED = 0x81


#: Sub-document opcodes that accept an empty path (the document root is an array).
SUBDOC_EMPTY_PATH_OPCODES: FrozenSet[int] = frozenset({
    Opcode.SUBDOC_ARRAY_PUSH_LAST, Opcode.SUBDOC_ARRAY_PUSH_FIRST, Opcode.SUBDOC_ARRAY_ADD_UNIQUE})


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
    """The byte stream is not a valid sequence of frames, or a reply body
    lacks the structure its command defines."""


# -- frames ---------------------------------------------------------------------

#: A decoded frame: (magic, opcode, status, datatype, opaque, cas, extras,
#: key, value, framing). For server requests (magic 0x82) the "status" slot
#: holds the vbucket field.
Frame = Tuple[int, int, int, int, int, int, bytes, bytes, bytes, bytes]

F_MAGIC: Final = 0
F_OPCODE: Final = 1
F_STATUS: Final = 2
F_DATATYPE: Final = 3
F_OPAQUE: Final = 4
F_CAS: Final = 5
F_EXTRAS: Final = 6
F_KEY: Final = 7
F_VALUE: Final = 8
F_FRAMING: Final = 9

_ACCEPTED_MAGIC = (Magic.RESPONSE, Magic.ALT_RESPONSE, Magic.SERVER_REQUEST)

#: The magic of a *run*: several plain replies with consecutive opaques
#: inside the decoder's run window (see :meth:`FrameDecoder.run_window`),
#: delivered as one item of a feed's list, shaped like a frame:
#: ``(RUN, opcode, RUN_STATUS, datatype, first opaque, [cas...],
#: [flags...], b"", [value...], b"")``: the reply for ``first + i`` has
#: the i-th CAS, the i-th flags as its 4 bytes of extras (an int here) and
#: the i-th value, no key and no framing. Not a byte on the wire: 0x100
#: does not fit in the magic byte.
RUN: Final = 0x100
#: The status slot of a run: non-zero, so code that takes the short way only
#: for a zero status never mistakes a run for one reply.
RUN_STATUS: Final = -1

_U32 = struct.Struct(">I")
#: The first 8 bytes of a header, as one number (what a run's frames share).
_HEAD8 = struct.Struct(">Q")
#: A header followed by 4 bytes of extras, for the frames that extend a run:
#: first 8 bytes, body length, opaque, CAS, flags.
_RUN_HEADER = struct.Struct(">QIIQI")


def run_from(run: Any, start: int) -> Any:
    """The run of the replies of ``run`` from its ``start``-th on
    (``0 < start <= len(run[F_VALUE])``; at the end, a run of none)."""
    magic, opcode, status, datatype, first, cas, flags, key, values, framing = run
    return (magic, opcode, status, datatype, first + start, cas[start:], flags[start:], key, values[start:], framing)


def expand_run(run: Any) -> List[Frame]:
    """The frames a run stands for (from a given reply on: expand
    :func:`run_from` of it)."""
    _magic, opcode, _status, datatype, first, cas, flags, _key, values, _framing = run
    count = len(values)
    return list(zip(repeat(0x81, count), repeat(opcode), repeat(0), repeat(datatype),
                    range(first, first + count), cas, map(_U32.pack, flags), repeat(b""), values, repeat(b"")))


class FrameDecoder:
    """Incremental decoder for the server's side of a connection.

    Call :meth:`feed` with each chunk read from the socket; it returns the
    list of frames the chunk completed (possibly empty). Partial frames are
    kept until the rest arrives, whatever the split points. The decoder
    accepts response magics 0x81 and 0x18 and server-request magic 0x82;
    anything else raises :class:`FrameError`, after which the decoder must
    not be used again.
    """

    __slots__ = ("_partial", "_need", "max_body", "_failed", "server_requests", "_run_lo", "_run_hi")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._partial: Optional[bytearray] = None
        self._need = 0
        self.max_body = max_body
        self._failed = False
        #: Set when a feed decoded a server request (magic 0x82): its opaque
        #: is the server's, not one of ours, so the reader must look at the
        #: magic of every frame of that feed (the caller resets it).
        self.server_requests = False
        # The run window (empty: no runs).
        self._run_lo = 0
        self._run_hi = 0

    def run_window(self, lo: int, hi: int) -> None:
        """From now on, plain replies (magic 0x81, status 0, no key, 4 bytes
        of extras, not compressed) whose opaques are in ``lo`` .. ``hi - 1``
        and follow each other in the stream with consecutive opaques (and the
        same opcode and datatype) are returned as one :data:`RUN` item
        instead of one frame each; a run starts only where a second such
        reply follows (a lone reply stays a frame). The KV connection
        opens the window to every opaque: a 1,000-key reply stream then
        costs no tuple and no table lookup per key, and the replies of many
        callers' reads, answered back to back, no tuple each.
        ``run_window(0, 0)`` turns it off. Frames outside the window are
        decoded as always."""
        self._run_lo = lo
        self._run_hi = hi

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
        run_lo = self._run_lo
        run_hi = self._run_hi
        unpack_run = _RUN_HEADER.unpack_from
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
            # A run starts at a success with no key and 4 bytes of extras
            # (flags), not compressed (0x02: snappy), inside the window,
            # followed by a frame with the same first 8 header bytes: a lone
            # reply (one caller waiting) is cheaper as a frame.
            if size - end >= 28 and not status and not keylen and extlen == 4 and not datatype & 0x02 \
                    and run_lo <= opaque < run_hi \
                    and (head := _HEAD8.unpack_from(buf, pos)[0]) == _HEAD8.unpack_from(buf, end)[0]:
                cas_list = [cas]
                flags_list = [_U32.unpack_from(buf, p)[0]]
                values = [buf[e:end]]
                append((RUN, opcode, RUN_STATUS, datatype, opaque, cas_list, flags_list, b"", values,  # type: ignore[arg-type]
                        b""))
                add_cas = cas_list.append
                add_flags = flags_list.append
                add_value = values.append
                # The run goes on while the next frame has the same first 8
                # header bytes (magic, opcode, no key, 4 bytes of extras,
                # datatype, status 0) and the next opaque, still inside the
                # window, and is whole and within the size limit.
                pos = end
                last = size - 28  # the last offset a header and flags fit after
                for wanted in range(opaque + 1, run_hi):
                    if pos > last:
                        break
                    head_next, bodylen, opaque, cas, flags = unpack_run(buf, pos)
                    end = pos + 24 + bodylen
                    if head_next != head or opaque != wanted or end > size or not 4 <= bodylen <= max_body:
                        break
                    add_cas(cas)
                    add_flags(flags)
                    add_value(buf[pos + 28:end])
                    pos = end
                continue
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
            if magic == Magic.SERVER_REQUEST:
                self.server_requests = True
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
        header = pack_alt_header(Magic.ALT_REQUEST, opcode, len(framing), len(key), len(extras),
                                 datatype, vbucket, body, opaque, cas)
        return header + framing + extras + key + value
    if len(key) > 0xFFFF or len(extras) > 0xFF:
        raise ValueError("key or extras too long for a frame")
    return pack_header(Magic.REQUEST, opcode, len(key), len(extras), datatype, vbucket,
                       body, opaque, cas) + extras + key + value


def encode_response(opcode: int, status: int = 0, key: bytes = b"", extras: bytes = b"",
                    value: bytes = b"", opaque: int = 0, cas: int = 0, datatype: int = 0,
                    framing: bytes = b"") -> bytes:
    """Encode one response (used by tests and the cluster emulator)."""
    body = len(framing) + len(extras) + len(key) + len(value)
    if framing:
        header = pack_alt_header(Magic.ALT_RESPONSE, opcode, len(framing), len(key), len(extras),
                                 datatype, status, body, opaque, cas)
        return header + framing + extras + key + value
    return pack_header(Magic.RESPONSE, opcode, len(key), len(extras), datatype, status,
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


# -- frame boundaries in a run of whole frames --------------------------------------


def frame_end(buf: Any, pos: int = 0) -> int:
    """Offset just past the frame whose header (whole) starts at ``pos``."""
    return pos + HEADER_LEN + _BODY_LEN.unpack_from(buf, pos + _BODY_LEN_OFFSET)[0]


def frame_end_after(wire: Any, pos: int) -> int:
    """End offset of the frame of ``wire`` (frames back to back) that
    contains offset ``pos``; at most ``len(wire)``."""
    end = 0
    size = len(wire)
    while end <= pos and end + HEADER_LEN <= size:
        end += HEADER_LEN + _BODY_LEN.unpack_from(wire, end + _BODY_LEN_OFFSET)[0]
    return min(end, size)


def frame_opaques(wire: Any, skip: int = 0) -> List[int]:
    """Opaques of the frames of ``wire`` (frames back to back) that start at
    or after offset ``skip``."""
    out = []
    pos = 0
    size = len(wire)
    while pos + HEADER_LEN <= size:
        bodylen, opaque = _BODY_LEN_AND_OPAQUE.unpack_from(wire, pos + _BODY_LEN_OFFSET)
        if pos >= skip:
            out.append(opaque)
        pos += HEADER_LEN + bodylen
    return out


# -- extras, framing extras and bodies, by command family (spec §5, §7) -----------------

#: SET / ADD / REPLACE extras: item flags(4), expiry(4). The store hot path
#: keeps ``STORE_EXTRAS.pack`` in a module-level alias.
STORE_EXTRAS = struct.Struct(">II")
#: TOUCH / GAT / GATQ extras: expiry(4). GET_LOCKED's lock time (seconds)
#: has the same layout.
EXPIRY_EXTRAS = struct.Struct(">I")
#: Extras of a GET / GAT / GET_LOCKED / GET_REPLICA reply: item flags(4).
FLAGS_EXTRAS = struct.Struct(">I")
#: INCREMENT / DECREMENT extras: delta(8), initial(8), expiry(4).
COUNTER_EXTRAS = struct.Struct(">QQI")
#: The value of an INCREMENT / DECREMENT reply: the new count.
COUNTER_VALUE = struct.Struct(">Q")
#: Extras of a mutation reply when MUTATION_SEQNO was agreed: vBucket UUID(8), seqno(8).
MUTATION_TOKEN = struct.Struct(">QQ")
#: Counter expiry meaning "do not create a missing key" (KEY_ENOENT instead).
COUNTER_NO_CREATE = 0xFFFFFFFF
#: The error-map format version this client asks for.
ERROR_MAP_VERSION = 2

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_DURABILITY = struct.Struct(">BH")
_SUBDOC_LOOKUP_SPEC = struct.Struct(">BBH")
_SUBDOC_MUTATION_SPEC = struct.Struct(">BBHI")
_SUBDOC_LOOKUP_RESULT = struct.Struct(">HI")
_SUBDOC_MUTATION_RESULT = struct.Struct(">BHI")
_SUBDOC_FAILURE = struct.Struct(">BH")
_OBSERVE_KEY = struct.Struct(">HH")
_OBSERVE_STATE = struct.Struct(">BQ")
_OBSERVE_SEQNO = struct.Struct(">BHQQQ")
_OBSERVE_SEQNO_FAILOVER = struct.Struct(">QQ")
_GET_META = struct.Struct(">IIIQ")
_PUSH_REV = struct.Struct(">I")
_PUSH_EPOCH_REV = struct.Struct(">qq")

#: A sub-document spec as the builders take it: ``(opcode, path, value,
#: path flags)``, path and value already encoded (lookups have no value).
SubdocSpec = Tuple[int, bytes, bytes, int]


def counter_request(delta: int, initial: Optional[int], expiry: int) -> Tuple[int, bytes]:
    """``(opcode, extras)`` changing a counter by ``delta``: INCREMENT, or
    DECREMENT by ``-delta`` when it is negative. With ``initial`` None a
    missing key is not created (the expiry becomes :data:`COUNTER_NO_CREATE`)."""
    if initial is None:
        initial, expiry = 0, COUNTER_NO_CREATE
    if delta < 0:
        return Opcode.DECREMENT, COUNTER_EXTRAS.pack(-delta, initial, expiry)
    return Opcode.INCREMENT, COUNTER_EXTRAS.pack(delta, initial, expiry)


def durability_framing(level: int, timeout_ms: Optional[int] = None) -> bytes:
    """Framing extras asking for synchronous replication at ``level`` (a
    :class:`DurabilityLevel`) within ``timeout_ms`` (1..65534; None: the
    bucket's default). The request then needs the alternative magic."""
    if not DurabilityLevel.MAJORITY <= level <= DurabilityLevel.PERSIST_TO_MAJORITY:
        raise ValueError("durability level %r is not 1, 2 or 3" % (level,))
    if timeout_ms is None:
        data = bytes((level,))
    elif 1 <= timeout_ms <= 65534:
        data = _DURABILITY.pack(level, timeout_ms)
    else:
        raise ValueError("durability timeout %r ms is outside 1..65534" % (timeout_ms,))
    return encode_frame_infos([(FrameInfoId.DURABILITY, data)])


def hello_body(features: Iterable[int]) -> bytes:
    """The value of a HELLO request: the wanted feature codes, two bytes each."""
    return b"".join(_U16.pack(feature) for feature in features)


def decode_hello(value: bytes) -> FrozenSet[int]:
    """The features a HELLO reply grants (an odd trailing byte is ignored)."""
    return frozenset(_U16.unpack_from(value, i)[0] for i in range(0, len(value) - 1, 2))


def error_map_body(version: int = ERROR_MAP_VERSION) -> bytes:
    """The value of a GET_ERROR_MAP request: the highest format version understood."""
    return _U16.pack(version)


def decode_error_map(value: bytes) -> Dict[int, Dict[str, Any]]:
    """Status code -> entry, from a GET_ERROR_MAP reply (JSON whose
    ``errors`` object is keyed by hex codes). Raises FrameError when the
    value is not such a document."""
    try:
        doc = json.loads(value)
        return {int(code, 16): entry for code, entry in doc.get("errors", {}).items()}
    except (ValueError, AttributeError, TypeError, RecursionError) as exc:
        raise FrameError("malformed error map: %s" % (exc,)) from None


def subdoc_lookup_extras(doc_flags: int) -> bytes:
    """MULTI_LOOKUP extras: none, or the :class:`SubdocDocFlag` byte."""
    return bytes((doc_flags,)) if doc_flags else b""


def subdoc_lookup_body(specs: Iterable[SubdocSpec]) -> bytes:
    """MULTI_LOOKUP value: per spec ``opcode(1) pathflags(1) pathlen(2) path``."""
    pack = _SUBDOC_LOOKUP_SPEC.pack
    return b"".join(pack(opcode, flags, len(path)) + path for opcode, path, _value, flags in specs)


def subdoc_mutation_extras(expiry: int, doc_flags: int) -> bytes:
    """MULTI_MUTATION extras: ``[expiry(4)][doc flags(1)]``, each only when non-zero."""
    return (EXPIRY_EXTRAS.pack(expiry) if expiry else b"") + (bytes((doc_flags,)) if doc_flags else b"")


def subdoc_mutation_body(specs: Iterable[SubdocSpec]) -> bytes:
    """MULTI_MUTATION value: per spec ``opcode(1) pathflags(1) pathlen(2)
    valuelen(4) path value``."""
    pack = _SUBDOC_MUTATION_SPEC.pack
    return b"".join(pack(opcode, flags, len(path), len(value)) + path + value
                    for opcode, path, value, flags in specs)


def decode_subdoc_lookup(value: bytes) -> List[Tuple[int, bytes]]:
    """``[(status, value)]`` from a MULTI_LOOKUP reply body (status 0x00,
    0xcc, 0xcd or 0xd3), in spec order. Decoding stops at an entry whose
    header is cut short; a value cut short is returned as far as it goes."""
    out = []
    pos = 0
    size = len(value)
    unpack = _SUBDOC_LOOKUP_RESULT.unpack_from
    while pos + 6 <= size:
        status, length = unpack(value, pos)
        pos += 6
        out.append((status, value[pos:pos + length]))
        pos += length
    return out


def decode_subdoc_mutation(value: bytes) -> List[Tuple[int, int, bytes]]:
    """``[(spec index, status, value)]`` from a successful MULTI_MUTATION
    reply body (only specs that produce a value, such as COUNTER, appear)."""
    out = []
    pos = 0
    size = len(value)
    unpack = _SUBDOC_MUTATION_RESULT.unpack_from
    while pos + 7 <= size:
        index, status, length = unpack(value, pos)
        pos += 7
        out.append((index, status, value[pos:pos + length]))
        pos += length
    return out


def decode_subdoc_failure(value: bytes) -> Optional[Tuple[int, int]]:
    """``(spec index, status)`` of the first failing spec, from a
    MULTI_MUTATION reply with status 0xcc / 0xd3; None if the body is too short."""
    if len(value) < _SUBDOC_FAILURE.size:
        return None
    index, status = _SUBDOC_FAILURE.unpack_from(value)
    return index, status


def observe_body(vbucket: int, key: bytes) -> bytes:
    """One key's entry of an OBSERVE request value, ``vbucket(2) keylen(2)
    key`` (concatenate entries to observe several keys)."""
    return _OBSERVE_KEY.pack(vbucket, len(key)) + key


def decode_observe(value: bytes) -> List[Tuple[int, bytes, int, int]]:
    """``[(vbucket, key, state, cas)]`` from an OBSERVE reply value (states:
    :class:`ObserveState`). Decoding stops at an entry cut short."""
    out = []
    pos = 0
    size = len(value)
    while pos + 4 <= size:
        vbucket, keylen = _OBSERVE_KEY.unpack_from(value, pos)
        pos += 4
        key = value[pos:pos + keylen]
        pos += keylen
        if pos + 9 > size:
            break
        state, cas = _OBSERVE_STATE.unpack_from(value, pos)
        pos += 9
        out.append((vbucket, key, state, cas))
    return out


class ObserveSeqno(NamedTuple):
    """An OBSERVE_SEQNO reply. After a hard failover (``failover`` True) the
    old UUID and the last seqno received under it are given too."""

    failover: bool
    vbucket: int
    uuid: int
    last_persisted_seqno: int
    current_seqno: int
    old_uuid: Optional[int] = None
    last_received_seqno: Optional[int] = None


def observe_seqno_body(vbucket_uuid: int) -> bytes:
    """The value of an OBSERVE_SEQNO request (the vBucket goes in the header)."""
    return _U64.pack(vbucket_uuid)


def decode_observe_seqno(value: bytes) -> ObserveSeqno:
    """Decode an OBSERVE_SEQNO reply value; FrameError if it is cut short."""
    if len(value) < _OBSERVE_SEQNO.size:
        raise FrameError("OBSERVE_SEQNO reply of %d bytes is too short" % len(value))
    fmt, vbucket, uuid, persisted, current = _OBSERVE_SEQNO.unpack_from(value)
    if fmt != 1:
        return ObserveSeqno(False, vbucket, uuid, persisted, current)
    if len(value) < _OBSERVE_SEQNO.size + _OBSERVE_SEQNO_FAILOVER.size:
        raise FrameError("OBSERVE_SEQNO failover reply of %d bytes is too short" % len(value))
    old_uuid, received = _OBSERVE_SEQNO_FAILOVER.unpack_from(value, _OBSERVE_SEQNO.size)
    return ObserveSeqno(True, vbucket, uuid, persisted, current, old_uuid, received)


class GetMeta(NamedTuple):
    """A GET_META reply's extras; ``datatype`` only with version 2."""

    deleted: bool
    flags: int
    expiry: int
    seqno: int
    datatype: Optional[int] = None


def get_meta_extras(version: int = 0) -> bytes:
    """GET_META extras: none, or the reply format version (2 adds the datatype)."""
    return bytes((version,)) if version else b""


def decode_get_meta(extras: bytes) -> GetMeta:
    """Decode a GET_META reply's extras; FrameError if they are cut short."""
    if len(extras) < _GET_META.size:
        raise FrameError("GET_META extras of %d bytes are too short" % len(extras))
    deleted, flags, expiry, seqno = _GET_META.unpack_from(extras)
    datatype = extras[_GET_META.size] if len(extras) > _GET_META.size else None
    return GetMeta(bool(deleted), flags, expiry, seqno, datatype)


class ConfigPush(NamedTuple):
    """A ClustermapChangeNotification (server request 0x01). ``epoch`` is -1
    in the old form, ``revision`` -1 when the extras carry none; ``config``
    is empty in the brief form (fetch the config if the version is newer)."""

    bucket: bytes
    epoch: int
    revision: int
    config: bytes


def decode_config_push(frame: Frame) -> ConfigPush:
    """The parts of a config-change push: bucket name (key; empty for the
    cluster), version (extras: rev(4), or epoch(8) rev(8)) and config text."""
    extras = frame[F_EXTRAS]
    if len(extras) >= _PUSH_EPOCH_REV.size:
        epoch, revision = _PUSH_EPOCH_REV.unpack_from(extras)
    elif len(extras) >= _PUSH_REV.size:
        epoch, revision = -1, _PUSH_REV.unpack_from(extras)[0]
    else:
        epoch, revision = -1, -1
    return ConfigPush(frame[F_KEY], epoch, revision, frame[F_VALUE])

"""Wire-level constants and framing for the emulator (server side).

Written separately from the client's codec on purpose: the emulator must
catch the client's mistakes, not share them.
"""

from __future__ import annotations

import json
import struct
from typing import Dict, Optional, Tuple

__all__ = ["Request", "parse_request", "encode", "error_map_json", "snappy_available"]

MAGIC_REQ = 0x80
MAGIC_RES = 0x81
MAGIC_ALT_REQ = 0x08
MAGIC_ALT_RES = 0x18
MAGIC_SERVER_REQ = 0x82
MAGIC_SERVER_RES = 0x83

MAX_BODY = 32 * 1024 * 1024

# opcodes
GET, SET, ADD, REPLACE, DELETE, INCREMENT, DECREMENT, QUIT, FLUSH = range(0x00, 0x09)
GETQ, NOOP, VERSION, GETK, GETKQ, APPEND, PREPEND, STAT = range(0x09, 0x11)
SETQ, ADDQ, REPLACEQ, DELETEQ, INCREMENTQ, DECREMENTQ, QUITQ, FLUSHQ, APPENDQ, PREPENDQ = range(0x11, 0x1B)
VERBOSITY, TOUCH, GAT, GATQ, HELLO = 0x1B, 0x1C, 0x1D, 0x1E, 0x1F
SASL_LIST_MECHS, SASL_AUTH, SASL_STEP = 0x20, 0x21, 0x22
GET_REPLICA = 0x83
SELECT_BUCKET = 0x89
OBSERVE_SEQNO = 0x91
OBSERVE = 0x92
GET_LOCKED = 0x94
UNLOCK_KEY = 0x95
GET_META = 0xA0
GET_CLUSTER_CONFIG = 0xB5
SUBDOC_GET, SUBDOC_EXISTS, SUBDOC_DICT_ADD, SUBDOC_DICT_UPSERT, SUBDOC_DELETE, SUBDOC_REPLACE = range(0xC5, 0xCB)
SUBDOC_ARRAY_PUSH_LAST, SUBDOC_ARRAY_PUSH_FIRST, SUBDOC_ARRAY_INSERT, SUBDOC_ARRAY_ADD_UNIQUE = range(0xCB, 0xCF)
SUBDOC_COUNTER, SUBDOC_MULTI_LOOKUP, SUBDOC_MULTI_MUTATION, SUBDOC_GET_COUNT = 0xCF, 0xD0, 0xD1, 0xD2
GET_ERROR_MAP = 0xFE

# statuses
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
AUTH_ERROR = 0x20
AUTH_CONTINUE = 0x21
ERANGE = 0x22
EACCESS = 0x24
UNKNOWN_FRAME_INFO = 0x80
UNKNOWN_COMMAND = 0x81
ENOMEM = 0x82
NOT_SUPPORTED = 0x83
EINTERNAL = 0x84
EBUSY = 0x85
ETMPFAIL = 0x86
DURABILITY_INVALID_LEVEL = 0xA0
DURABILITY_IMPOSSIBLE = 0xA1
SYNC_WRITE_IN_PROGRESS = 0xA2
SYNC_WRITE_AMBIGUOUS = 0xA3

# HELLO features
F_TCPNODELAY = 0x03
F_MUTATION_SEQNO = 0x04
F_XATTR = 0x06
F_XERROR = 0x07
F_SELECT_BUCKET = 0x08
F_SNAPPY = 0x0A
F_JSON = 0x0B
F_DUPLEX = 0x0C
F_CLUSTERMAP_CHANGE_NOTIFICATION = 0x0D
F_UNORDERED = 0x0E
F_TRACING = 0x0F
F_ALT_REQUEST = 0x10
F_SYNC_REPLICATION = 0x11
F_COLLECTIONS = 0x12
F_PRESERVE_TTL = 0x14
F_VATTR = 0x15
F_SUBDOC_CREATE_AS_DELETED = 0x17
F_SUBDOC_REPLICA_READ = 0x1C

# datatype bits
DT_JSON = 0x01
DT_SNAPPY = 0x02
DT_XATTR = 0x04

#: Without XERROR, newer statuses become the ones older clients know.
LEGACY_STATUS: Dict[int, int] = {
    LOCKED: ETMPFAIL, NOT_LOCKED: ETMPFAIL, SYNC_WRITE_IN_PROGRESS: ETMPFAIL, EACCESS: EACCESS,
}

STATUS_TEXT: Dict[int, str] = {
    KEY_ENOENT: "Not found", KEY_EEXISTS: "Data exists for key", E2BIG: "Too large", EINVAL: "Invalid arguments",
    NOT_STORED: "Not stored", DELTA_BADVAL: "Non-numeric server-side value for incr or decr",
    NO_BUCKET: "No bucket selected", LOCKED: "Resource locked", NOT_LOCKED: "Requested resource not locked",
    AUTH_ERROR: "Auth failure", EACCESS: "No access", UNKNOWN_COMMAND: "Unknown command",
    NOT_SUPPORTED: "Not supported", EINTERNAL: "Internal error", ETMPFAIL: "Temporary failure",
    DURABILITY_INVALID_LEVEL: "Invalid durability level", DURABILITY_IMPOSSIBLE: "Durability impossible",
    SYNC_WRITE_AMBIGUOUS: "Sync write ambiguous",
}

_HEADER = struct.Struct(">BBHBBHIIQ")


class Request:
    """One decoded request frame."""

    __slots__ = ("magic", "opcode", "datatype", "vbucket", "opaque", "cas", "framing", "extras", "key",
                 "value", "durability", "preserve_ttl")

    def __init__(self) -> None:
        self.durability: Optional[Tuple[int, Optional[int]]] = None
        self.preserve_ttl = False

    @property
    def quiet(self) -> bool:
        """True for the quiet variants (silent on success / on a miss)."""
        return self.opcode in QUIET_OPS


QUIET_OPS = {GETQ, GETKQ, SETQ, ADDQ, REPLACEQ, DELETEQ, INCREMENTQ, DECREMENTQ, QUITQ, FLUSHQ, APPENDQ,
             PREPENDQ, GATQ}


def parse_request(frame: bytes) -> Optional[Request]:
    """Decode a whole frame; None if its lengths are inconsistent."""
    magic, opcode, keylen, extlen, datatype, vbucket, bodylen, opaque, cas = _HEADER.unpack_from(frame)
    framelen = 0
    if magic == MAGIC_ALT_REQ:
        framelen, keylen = keylen >> 8, keylen & 0xFF
    if framelen + extlen + keylen > bodylen:
        return None
    req = Request()
    req.magic = magic
    req.opcode = opcode
    req.datatype = datatype
    req.vbucket = vbucket
    req.opaque = opaque
    req.cas = cas
    p = 24
    req.framing = frame[p:p + framelen]
    p += framelen
    req.extras = frame[p:p + extlen]
    p += extlen
    req.key = frame[p:p + keylen]
    p += keylen
    req.value = frame[p:24 + bodylen]
    if framelen:
        if not _apply_frame_infos(req):
            return None
    return req


def _apply_frame_infos(req: Request) -> bool:
    data = req.framing
    pos = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        fid, length = byte >> 4, byte & 0x0F
        if fid == 15:
            if pos >= len(data):
                return False
            fid = 15 + data[pos]
            pos += 1
        if length == 15:
            if pos >= len(data):
                return False
            length = 15 + data[pos]
            pos += 1
        if pos + length > len(data):
            return False
        payload = data[pos:pos + length]
        pos += length
        if fid == 1:  # durability requirement
            if length not in (1, 3):
                return False
            level = payload[0]
            timeout = struct.unpack(">H", payload[1:3])[0] if length == 3 else None
            req.durability = (level, timeout)
        elif fid == 5:
            req.preserve_ttl = True
    return True


def encode(magic: int, opcode: int, status: int = 0, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
           opaque: int = 0, cas: int = 0, datatype: int = 0) -> bytes:
    """Encode a response (or a server push, magic 0x82: ``status`` is the vbucket field)."""
    return _HEADER.pack(magic, opcode, len(key), len(extras), datatype, status,
                        len(key) + len(extras) + len(value), opaque, cas) + extras + key + value


_ERROR_ATTRS = {
    0x00: ("SUCCESS", "Success", ["success"]),
    0x01: ("KEY_ENOENT", "Not Found", ["item-only"]),
    0x02: ("KEY_EEXISTS", "key already exists, or CAS mismatch", ["item-only"]),
    0x03: ("E2BIG", "Value is too big", ["item-only", "invalid-input"]),
    0x04: ("EINVAL", "Invalid packet", ["internal", "invalid-input"]),
    0x05: ("NOT_STORED", "Not stored", ["item-only"]),
    0x06: ("DELTA_BADVAL", "Existing document not a number", ["item-only", "invalid-input"]),
    0x07: ("NOT_MY_VBUCKET", "Server does not own the vbucket", ["fetch-config", "invalid-input"]),
    0x08: ("NO_BUCKET", "No bucket selected", ["conn-state-invalidated"]),
    0x09: ("LOCKED", "Resource locked", ["item-locked", "item-only", "retry-now"]),
    0x0E: ("NOT_LOCKED", "Resource is not locked", ["item-only", "invalid-input"]),
    0x20: ("AUTH_ERROR", "Authentication failed", ["conn-state-invalidated", "auth"]),
    0x21: ("AUTH_CONTINUE", "Continue authentication", ["special-handling", "auth"]),
    0x24: ("EACCESS", "No access", ["support", "auth"]),
    0x81: ("UNKNOWN_COMMAND", "Unknown command", ["support"]),
    0x82: ("ENOMEM", "Out of memory", ["temp", "retry-later"]),
    0x83: ("NOT_SUPPORTED", "Not supported", ["support"]),
    0x84: ("EINTERNAL", "Internal error", ["internal"]),
    0x85: ("EBUSY", "Server busy", ["temp", "retry-later"]),
    0x86: ("ETMPFAIL", "Temporary failure", ["temp", "retry-later"]),
    0xA0: ("DURABILITY_INVALID_LEVEL", "Invalid durability level", ["invalid-input"]),
    0xA1: ("DURABILITY_IMPOSSIBLE", "Durability requirements are impossible", ["invalid-input"]),
    0xA2: ("SYNC_WRITE_IN_PROGRESS", "Another durable write is in progress", ["temp", "retry-later"]),
    0xA3: ("SYNC_WRITE_AMBIGUOUS", "Durable write outcome unknown", ["special-handling"]),
    0xC0: ("SUBDOC_PATH_ENOENT", "Subdoc: path not found", ["item-only"]),
    0xC9: ("SUBDOC_PATH_EEXISTS", "Subdoc: path already exists", ["item-only"]),
    0xCC: ("SUBDOC_MULTI_PATH_FAILURE", "Subdoc: one or more paths failed", ["item-only"]),
}


def error_map_json(version: int = 1) -> bytes:
    """The GET_ERROR_MAP body."""
    errors = {"%x" % code: {"name": name, "desc": desc, "attrs": attrs}
              for code, (name, desc, attrs) in _ERROR_ATTRS.items()}
    return json.dumps({"version": version, "revision": 1, "errors": errors}, separators=(",", ":")).encode()


def snappy_available() -> bool:
    """True when a snappy codec is installed (cramjam)."""
    try:
        import cramjam  # noqa: F401
    except ImportError:
        return False
    return True

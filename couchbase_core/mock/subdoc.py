"""Sub-document engine of the emulated server: lookups and mutations on JSON.

The KV layer parses MULTI_LOOKUP / MULTI_MUTATION and single-path frames and
hands the decoded specs to :func:`lookup` or :func:`mutate`, together with a
:class:`DocState` describing the stored item.  Nothing here touches sockets,
CAS checks, expiry or storage: the functions are pure, they read the state and
return what the response should say and what the document becomes.

Theory of operation
-------------------

A request is handled in three phases, mirroring the server:

1. **Validation** of the request as a whole (spec count, opcodes, flag
   combinations, empty paths, xattr ordering and key rules).  A failure here
   is a *document-level* status: the response carries no per-spec results.
2. **Document phase**: does the item exist, is it a tombstone, may it be
   created (MKDOC / ADD)?  Failures here are document-level too.
3. **Execution** of each spec in order, on private copies parsed from the
   stored bytes.  Lookups record one status per spec.  Mutations stop at the
   first failing spec and then discard every change, so a multi-mutation is
   atomic; only when every spec succeeded are the new body and xattrs built.

JSON is parsed with the standard library, but numbers keep their source text
(``1.50`` stays ``1.50``, a 30-digit integer stays exact), because the server
hands back fragments of the stored text rather than re-formatted numbers.
Everything the engine *writes* (a GET fragment, a mutated body or xattr) is
compact JSON text; an unmodified body is returned byte for byte.

Choices where the spec is silent (following Couchbase Server as known)
----------------------------------------------------------------------

* Path syntax: a key is any run of characters other than ``.``, ``[``, ``]``
  and the backtick; a backtick-quoted run may contain anything, and a doubled
  backtick inside quotes stands for one backtick.  Quoted and plain runs may
  be concatenated (```a.`b`` is the key ``a.b``).  Empty keys, ``]`` outside
  quotes, unterminated quotes, non-digit indexes and negative indexes other
  than ``-1`` are ``SUBDOC_PATH_EINVAL``.  Leading zeros in an index are
  accepted.  Path problems are per-spec statuses, not document-level ones.
* An empty path where the spec does not allow one, a missing value on an op
  that needs one, a value on an op that takes none, a path on a whole-doc op,
  path flags an opcode does not accept (MKDIR_P on REPLACE, DELETE,
  ARRAY_INSERT or any lookup; EXPAND_MACROS on a lookup) and lookup doc flags
  other than ACCESS_DELETED / REPLICA_READ are document-level ``EINVAL``.
  REVIVE_DOCUMENT is ``NOT_SUPPORTED``.
* CREATE_AS_DELETED (the 6.6 feature transactions stage inserts with) needs
  MKDOC or ADD (else ``EINVAL``).  When the request creates the document, it
  is created as a tombstone that keeps the xattrs written, user ones too; a
  body spec is then document-level ``SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE``
  and success is ``SUBDOC_SUCCESS_DELETED``.  On a live document the flag
  changes nothing (ADD still fails ``KEY_EEXISTS``).
* MKDOC and ADD imply MKDIR_P for every spec whose opcode accepts it.  A
  document created by them starts as ``[]`` when the first body spec's path
  starts with an array index or is the empty root path of an array op, else
  as ``{}`` (also when only xattrs are written).
* The 32-level depth limit counts containers: ``{}`` has depth 1, a scalar 0.
  A stored body (or xattr value) deeper than 32 gives ``SUBDOC_DOC_E2DEEP``;
  a value whose insertion would place containers deeper than 32 gives
  ``SUBDOC_VALUE_ETOODEEP``.  Xattr values are measured on their own, the
  xattr key is not a level.
* ``${Mutation.CAS}`` expands to ``"0x"`` plus the 8 CAS bytes in
  *little-endian* order, as real servers write it (clients such as the
  transactions libraries decode it that way); ``${Mutation.seqno}`` expands to
  ``"0x%016x"`` of the new seqno and ``${Mutation.value_crc32c}`` to
  ``"0x%08x"`` of the CRC32C of the body being written (computed after every
  body spec of the request ran).  ``${$document}`` and ``${$document.<path>}``
  expand to the pre-mutation ``$document`` value.  A macro is a JSON string
  that is exactly ``${...}``, anywhere inside the value; an unknown one is a
  per-spec ``SUBDOC_XATTR_UNKNOWN_MACRO`` (``SUBDOC_XATTR_UNKNOWN_VATTR_MACRO``
  for unknown ``$``-names).
* Virtual xattrs: ``$document`` (``CAS``, ``vbucket_uuid`` and ``seqno`` as
  ``0x%016x`` in natural order, ``revid`` -- the revision GET_META reports,
  here the item's seqno -- as a decimal string, ``exptime``, ``flags``,
  ``value_bytes``, ``value_crc32c``, ``deleted``, ``datatype``,
  ``last_modified``), ``$XTOC`` (list of xattr
  keys) and ``$vbucket`` (``{"HLC": {"now": "<unix seconds>", "mode":
  "real"}}``, read from the local clock).  ``datatype`` lists ``json`` when
  the body parses as JSON or the JSON bit is set, ``snappy`` for that bit,
  ``xattr`` when the item has xattrs; ``["raw"]`` if none applies.  Any other
  ``$`` key in a lookup is a per-spec ``SUBDOC_XATTR_UNKNOWN_VATTR``; any
  ``$`` key in a mutation is document-level
  ``SUBDOC_XATTR_CANT_MODIFY_VATTR``.  Virtual xattrs are exempt from the
  one-xattr-key rule.
* An xattr key must be 1..16 bytes of UTF-8 without control characters, and
  the path's first component must be a key; otherwise document-level
  ``XATTR_EINVAL`` (0x87).
* ARRAY_ADD_UNIQUE compares numbers by their JSON text (``1`` and ``1.0``
  differ), strings by value, and never treats ``true`` as ``1``.  An array
  holding an object or array is ``SUBDOC_PATH_MISMATCH``.
* COUNTER deltas follow JSON integer syntax (``-?(0|[1-9][0-9]*)``); anything
  else, zero, or a value outside int64 is ``SUBDOC_DELTA_EINVAL``.
* Whole-doc SET (0x01) stores its value as given (it need not be JSON); later
  body specs in the same request act on the new body.  Whole-doc DELETE
  (0x04) must be the only body spec and cannot be combined with MKDOC / ADD
  (``SUBDOC_INVALID_COMBO``); it removes the body and prunes user xattrs,
  keeping system xattrs (keys starting with ``_``), as the server does on
  deletion.
* Tombstones (``DocState.deleted``): without ACCESS_DELETED they are
  ``KEY_ENOENT`` (MKDOC / ADD then create a fresh document without the old
  xattrs).  With ACCESS_DELETED lookups report 0xcd / 0xd3, body paths of a
  body-less tombstone are ``SUBDOC_PATH_ENOENT`` and a whole-doc GET returns
  an empty value; mutations may only touch xattrs (a body spec is
  document-level ``SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE`` 0xd7, a
  whole-doc DELETE ``KEY_ENOENT``) and report ``SUBDOC_SUCCESS_DELETED`` or
  ``SUBDOC_MULTI_PATH_FAILURE_DELETED`` instead of 0x00 / 0xcc.
* Size limits: a result whose xattr section exceeds 1 MiB, or whose body plus
  xattrs exceed 20 MiB, is document-level ``E2BIG``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = [
    "DocState", "MutationOutcome", "SubdocError", "parse_path", "lookup", "mutate",
]

# --- status codes -----------------------------------------------------------
SUCCESS = 0x00  #: success
KEY_ENOENT = 0x01  #: no such document
KEY_EEXISTS = 0x02  #: document exists (ADD)
E2BIG = 0x03  #: result too large
EINVAL = 0x04  #: malformed request
NOT_SUPPORTED = 0x83  #: doc flag not implemented here
XATTR_EINVAL = 0x87  #: invalid xattr key
SUBDOC_PATH_ENOENT = 0xC0  #: path not found
SUBDOC_PATH_MISMATCH = 0xC1  #: path type conflict / not a number
SUBDOC_PATH_EINVAL = 0xC2  #: bad path syntax or unusable path for the op
SUBDOC_PATH_E2BIG = 0xC3  #: path too long / too many components
SUBDOC_DOC_E2DEEP = 0xC4  #: stored document too deep
SUBDOC_VALUE_CANTINSERT = 0xC5  #: value is not valid JSON for the op
SUBDOC_DOC_NOTJSON = 0xC6  #: stored document is not JSON
SUBDOC_NUM_ERANGE = 0xC7  #: number outside int64
SUBDOC_DELTA_EINVAL = 0xC8  #: bad counter delta
SUBDOC_PATH_EEXISTS = 0xC9  #: path already exists
SUBDOC_VALUE_ETOODEEP = 0xCA  #: value would make the document too deep
SUBDOC_INVALID_COMBO = 0xCB  #: bad spec combination / count
SUBDOC_MULTI_PATH_FAILURE = 0xCC  #: some spec failed
SUBDOC_SUCCESS_DELETED = 0xCD  #: success on a tombstone
SUBDOC_XATTR_INVALID_FLAG_COMBO = 0xCE  #: EXPAND_MACROS without XATTR
SUBDOC_XATTR_INVALID_KEY_COMBO = 0xCF  #: more than one xattr key
SUBDOC_XATTR_UNKNOWN_MACRO = 0xD0  #: unknown ${...} macro
SUBDOC_XATTR_UNKNOWN_VATTR = 0xD1  #: unknown $-xattr
SUBDOC_XATTR_CANT_MODIFY_VATTR = 0xD2  #: mutation of a virtual xattr
SUBDOC_MULTI_PATH_FAILURE_DELETED = 0xD3  #: some spec failed on a tombstone
SUBDOC_INVALID_XATTR_ORDER = 0xD4  #: xattr spec after a body spec
SUBDOC_XATTR_UNKNOWN_VATTR_MACRO = 0xD5  #: unknown ${$...} macro
SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE = 0xD7  #: body change on a tombstone

# --- opcodes ----------------------------------------------------------------
WHOLE_DOC_GET = 0x00  #: whole-document GET (lookups)
WHOLE_DOC_SET = 0x01  #: whole-document SET (mutations)
WHOLE_DOC_DELETE = 0x04  #: whole-document DELETE (mutations)
GET = 0xC5  #: sub-document opcode GET
EXISTS = 0xC6  #: sub-document opcode EXISTS
DICT_ADD = 0xC7  #: sub-document opcode DICT_ADD
DICT_UPSERT = 0xC8  #: sub-document opcode DICT_UPSERT
DELETE = 0xC9  #: sub-document opcode DELETE
REPLACE = 0xCA  #: sub-document opcode REPLACE
ARRAY_PUSH_LAST = 0xCB  #: sub-document opcode ARRAY_PUSH_LAST
ARRAY_PUSH_FIRST = 0xCC  #: sub-document opcode ARRAY_PUSH_FIRST
ARRAY_INSERT = 0xCD  #: sub-document opcode ARRAY_INSERT
ARRAY_ADD_UNIQUE = 0xCE  #: sub-document opcode ARRAY_ADD_UNIQUE
COUNTER = 0xCF  #: sub-document opcode COUNTER
GET_COUNT = 0xD2  #: sub-document opcode GET_COUNT

# --- flags ------------------------------------------------------------------
MKDIR_P = 0x01  #: path flag: create missing parents
XATTR = 0x04  #: path flag: the path addresses xattrs
EXPAND_MACROS = 0x10  #: path flag: expand ${...} macros (needs XATTR)
BINARY_VALUE = 0x20  #: path flag: not supported here

MKDOC = 0x01  #: doc flag: create the document if missing
ADD = 0x02  #: doc flag: create, fail if it exists
ACCESS_DELETED = 0x04  #: doc flag: operate on a tombstone
CREATE_AS_DELETED = 0x08  #: doc flag: create the document as a tombstone
REVIVE_DOCUMENT = 0x10  #: doc flag: not supported here
REPLICA_READ = 0x20  #: doc flag: lookups only, ignored

# --- limits -----------------------------------------------------------------
#: Longest path, in UTF-8 bytes.
MAX_PATH_LENGTH = 1024
#: Most components in one path.
MAX_PATH_COMPONENTS = 32
#: Deepest container nesting of a document or xattr value.
MAX_DEPTH = 32
#: Most specs in one multi-lookup or multi-mutation.
MAX_SPECS = 16
#: Largest item (body plus encoded xattrs), in bytes.
MAX_DOC_SIZE = 20 * 1024 * 1024
#: Largest encoded xattr section, in bytes.
MAX_XATTR_SIZE = 1024 * 1024

_INT64_MIN = -(2 ** 63)
_INT64_MAX = 2 ** 63 - 1

_LOOKUP_OPS = frozenset({WHOLE_DOC_GET, GET, EXISTS, GET_COUNT})
_MUTATION_OPS = frozenset({
    WHOLE_DOC_SET, WHOLE_DOC_DELETE, DICT_ADD, DICT_UPSERT, DELETE, REPLACE,
    ARRAY_PUSH_LAST, ARRAY_PUSH_FIRST, ARRAY_INSERT, ARRAY_ADD_UNIQUE, COUNTER,
})
_WHOLE_DOC_OPS = frozenset({WHOLE_DOC_GET, WHOLE_DOC_SET, WHOLE_DOC_DELETE})
#: Ops that take an empty path (the document root): the root-array pushes,
#: and GET_COUNT (the root's count; lookups only).
_EMPTY_PATH_OPS = frozenset({ARRAY_PUSH_LAST, ARRAY_PUSH_FIRST, ARRAY_ADD_UNIQUE, GET_COUNT})
_MKDIR_OPS = frozenset({
    DICT_ADD, DICT_UPSERT, ARRAY_PUSH_LAST, ARRAY_PUSH_FIRST, ARRAY_ADD_UNIQUE, COUNTER,
})
_VALUELESS_OPS = frozenset({DELETE, WHOLE_DOC_DELETE})
_ARRAY_TARGET_OPS = frozenset({ARRAY_PUSH_LAST, ARRAY_PUSH_FIRST, ARRAY_ADD_UNIQUE})

_MUTATION_MACROS = frozenset({"Mutation.CAS", "Mutation.seqno", "Mutation.value_crc32c"})
_KNOWN_VATTRS = frozenset({"$document", "$XTOC", "$vbucket"})
_JSON_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_INDEX = re.compile(r"[0-9]+\Z")


class SubdocError(Exception):
    """A sub-document failure carrying the protocol status code."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message or f"sub-document status 0x{status:02x}")
        self.status = status


@dataclass
class DocState:
    """What the engine needs to know about the stored document.

    ``body`` is ``None`` when there is no document (or a tombstone without a
    body); ``xattrs`` maps each top-level xattr key to its JSON text.  ``cas``,
    ``flags``, ``expiry``, ``seqno``, ``datatype`` and ``vbucket_uuid`` (of
    the vBucket holding the document) feed the ``$document`` virtual xattr
    and the ``${$document...}`` macros.
    """

    body: Optional[bytes] = None
    xattrs: Dict[str, bytes] = field(default_factory=dict)
    deleted: bool = False
    cas: int = 0
    flags: int = 0
    expiry: int = 0
    seqno: int = 0
    datatype: int = 0
    vbucket_uuid: int = 0


@dataclass
class MutationOutcome:
    """Result of :func:`mutate`.

    ``status`` is 0x00 (0xcd on a tombstone) on success, 0xcc (0xd3) when spec
    ``failed_index`` failed with ``failed_status``, or a document-level status
    (then ``failed_index`` is -1 and ``failed_status`` 0).  On any failure
    ``body`` and ``xattrs`` are the unchanged input.  ``results`` holds
    ``(index, status, value)`` for specs that produce a value (COUNTER).
    ``created``: the request created the document (MKDOC / ADD); ``deleted``:
    a whole-doc DELETE removed it (``body`` is then ``None`` and ``xattrs``
    keeps only system xattrs).
    """

    status: int = SUCCESS
    failed_index: int = -1
    failed_status: int = SUCCESS
    body: Optional[bytes] = None
    xattrs: Dict[str, bytes] = field(default_factory=dict)
    results: List[Tuple[int, int, bytes]] = field(default_factory=list)
    created: bool = False
    deleted: bool = False


# --- JSON model ---------------------------------------------------------------


class _Num:
    """A JSON number kept as its source text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Num) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"_Num({self.text})"


class _Macro:
    """Placeholder for a ``${Mutation.*}`` macro, resolved once the body is final."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Missing:
    """Marker for 'not there' (distinct from JSON null)."""


_MISSING = _Missing()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=_Num, parse_int=_Num, parse_constant=_reject_constant)


def _loads(data: bytes) -> Any:
    """Parse strict JSON from UTF-8 bytes (ValueError / RecursionError on failure)."""
    return _DECODER.decode(data.decode("utf-8"))


def _depth(value: Any) -> int:
    """Container nesting depth: 0 for a scalar, 1 for ``{}`` or ``[]``."""
    if not isinstance(value, (dict, list)):
        return 0
    best = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        best = max(best, level)
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                stack.append((child, level + 1))
    return best


def _dump_str(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: fall back to \u escapes
        out = json.dumps(text)
    return out


def _dump_into(value: Any, out: List[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, (key, child) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(_dump_str(key))
            out.append(":")
            _dump_into(child, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, child in enumerate(value):
            if i:
                out.append(",")
            _dump_into(child, out)
        out.append("]")
    elif isinstance(value, _Num):
        out.append(value.text)
    elif isinstance(value, str):
        out.append(_dump_str(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, _Macro):  # never left in output; kept readable if it were
        out.append(_dump_str("${%s}" % value.name))
    else:  # pragma: no cover - the engine only builds the types above
        raise TypeError(f"cannot encode {type(value).__name__}")


def _dumps(value: Any) -> bytes:
    """Compact JSON text of a parsed value."""
    out: List[str] = []
    _dump_into(value, out)
    return "".join(out).encode("utf-8")


def _crc32c_table() -> List[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the server uses for ``value_crc32c``."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- paths --------------------------------------------------------------------


def _read_key(path: str, i: int) -> Tuple[str, int]:
    """Read one key starting at ``i``; return it and the index where it ended."""
    buf: List[str] = []
    n = len(path)
    while i < n:
        ch = path[i]
        if ch == "`":
            i += 1
            while True:
                if i >= n:
                    raise SubdocError(SUBDOC_PATH_EINVAL, "unterminated backtick")
                if path[i] == "`":
                    if i + 1 < n and path[i + 1] == "`":
                        buf.append("`")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(path[i])
                i += 1
            continue
        if ch in ".[":
            break
        if ch == "]":
            raise SubdocError(SUBDOC_PATH_EINVAL, "unexpected ']'")
        buf.append(ch)
        i += 1
    return "".join(buf), i


def parse_path(path: str) -> List[Union[str, int]]:
    """Split a sub-document path into keys (``str``) and array indexes (``int``).

    ``-1`` stands for the last element.  The empty path gives ``[]``.

    Raises:
        SubdocError: ``SUBDOC_PATH_E2BIG`` for more than 1024 bytes or 32
            components, ``SUBDOC_PATH_EINVAL`` for a syntax error.
    """
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_LENGTH:
        raise SubdocError(SUBDOC_PATH_E2BIG, "path longer than 1024 bytes")
    comps: List[Union[str, int]] = []
    n = len(path)
    i = 0
    need_key = False  # just after a '.'
    while i < n:
        if path[i] == "[" and not need_key:
            end = path.find("]", i + 1)
            if end < 0:
                raise SubdocError(SUBDOC_PATH_EINVAL, "unterminated '['")
            text = path[i + 1:end]
            if text == "-1":
                comps.append(-1)
            elif _INDEX.match(text):
                digits = text.lstrip("0") or "0"
                # beyond any real array: keep huge indexes cheap to convert
                comps.append(int(digits) if len(digits) <= 18 else 10 ** 18)
            else:
                raise SubdocError(SUBDOC_PATH_EINVAL, f"bad array index {text!r}")
            i = end + 1
            if i < n:
                if path[i] == ".":
                    need_key = True
                    i += 1
                elif path[i] != "[":
                    raise SubdocError(SUBDOC_PATH_EINVAL, "junk after ']'")
            continue
        key, i = _read_key(path, i)
        if not key:
            raise SubdocError(SUBDOC_PATH_EINVAL, "empty path component")
        comps.append(key)
        need_key = False
        if i < n and path[i] == ".":
            need_key = True
            i += 1
    if need_key:
        raise SubdocError(SUBDOC_PATH_EINVAL, "path ends with '.'")
    if len(comps) > MAX_PATH_COMPONENTS:
        raise SubdocError(SUBDOC_PATH_E2BIG, "more than 32 path components")
    return comps


# --- navigation ---------------------------------------------------------------

_Path = List[Union[str, int]]


def _step(node: Any, comp: Union[str, int]) -> Tuple[int, Any]:
    if isinstance(comp, str):
        if not isinstance(node, dict):
            return SUBDOC_PATH_MISMATCH, None
        if comp in node:
            return SUCCESS, node[comp]
        return SUBDOC_PATH_ENOENT, None
    if not isinstance(node, list):
        return SUBDOC_PATH_MISMATCH, None
    idx = len(node) - 1 if comp == -1 else comp
    if 0 <= idx < len(node):
        return SUCCESS, node[idx]
    return SUBDOC_PATH_ENOENT, None


def _get(root: Any, comps: _Path) -> Tuple[int, Any]:
    node = root
    for comp in comps:
        status, node = _step(node, comp)
        if status:
            return status, None
    return SUCCESS, node


def _parent(root: Any, comps: _Path, mkdir: bool) -> Tuple[int, Any]:
    """Walk to the container of the last component, creating dicts if ``mkdir``."""
    node = root
    for comp in comps[:-1]:
        status, child = _step(node, comp)
        if status == SUBDOC_PATH_ENOENT and mkdir and isinstance(comp, str):
            child = {}
            node[comp] = child
        elif status:
            return status, None
        node = child
    return SUCCESS, node


def _locate(parent: Any, last: Union[str, int]) -> Tuple[int, Union[str, int]]:
    """Check that ``last`` exists in ``parent``; return the dict key or list index."""
    if isinstance(last, str):
        if not isinstance(parent, dict):
            return SUBDOC_PATH_MISMATCH, last
        return (SUCCESS if last in parent else SUBDOC_PATH_ENOENT), last
    if not isinstance(parent, list):
        return SUBDOC_PATH_MISMATCH, last
    idx = len(parent) - 1 if last == -1 else last
    return (SUCCESS if 0 <= idx < len(parent) else SUBDOC_PATH_ENOENT), idx


# --- virtual xattrs -------------------------------------------------------------


def _body_is_json(body: Optional[bytes]) -> bool:
    if not body:
        return False
    try:
        _loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def _document_vattr(state: DocState) -> Dict[str, Any]:
    body = state.body or b""
    datatype: List[str] = []
    if state.datatype & 0x01 or _body_is_json(state.body):
        datatype.append("json")
    if state.datatype & 0x02:
        datatype.append("snappy")
    if state.datatype & 0x04 or state.xattrs:
        datatype.append("xattr")
    return {
        "CAS": "0x%016x" % state.cas,
        "vbucket_uuid": "0x%016x" % state.vbucket_uuid,
        "seqno": "0x%016x" % state.seqno,
        "revid": str(state.seqno),
        "exptime": _Num(str(state.expiry)),
        "flags": _Num(str(state.flags)),
        "value_bytes": _Num(str(len(body))),
        "value_crc32c": "0x%08x" % _crc32c(body),
        "deleted": bool(state.deleted),
        "datatype": datatype or ["raw"],
        "last_modified": str(state.cas // 1_000_000_000),
    }


def _vattr(state: DocState, name: str) -> Any:
    if name == "$document":
        return _document_vattr(state)
    if name == "$XTOC":
        return list(state.xattrs)
    if name == "$vbucket":
        return {"HLC": {"now": str(int(time.time())), "mode": "real"}}
    return _MISSING


# --- request validation ---------------------------------------------------------


class _Spec:
    """A validated spec with its parsed path."""

    __slots__ = ("index", "opcode", "flags", "path", "value", "comps", "path_error", "xattr")

    def __init__(self, index: int, opcode: int, flags: int, path: str, value: bytes) -> None:
        self.index = index
        self.opcode = opcode
        self.flags = flags
        self.path = path
        self.value = value
        self.xattr = bool(flags & XATTR)
        self.comps: _Path = []
        self.path_error = SUCCESS
        if opcode not in _WHOLE_DOC_OPS:
            try:
                self.comps = parse_path(path)
            except SubdocError as err:
                self.path_error = err.status


def _valid_xattr_key(key: str) -> bool:
    raw = key.encode("utf-8", "surrogatepass")
    if not 1 <= len(raw) <= 16:
        return False
    return not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key)


def _as_text(path: Union[str, bytes]) -> Optional[str]:
    if isinstance(path, bytes):
        try:
            return path.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return path


def _check_xattr_rules(prepared: List[_Spec], mutation: bool) -> int:
    """Ordering, vattr and single-key rules shared by lookups and mutations."""
    seen_body = False
    xattr_key: Optional[str] = None
    for spec in prepared:
        if not spec.xattr:
            seen_body = True
            continue
        if seen_body:
            return SUBDOC_INVALID_XATTR_ORDER
        if spec.path_error:
            continue  # reported for this spec when it runs
        key = spec.comps[0] if spec.comps else None
        if not isinstance(key, str):
            return XATTR_EINVAL
        if key.startswith("$"):
            if mutation:
                return SUBDOC_XATTR_CANT_MODIFY_VATTR
            continue
        if not _valid_xattr_key(key):
            return XATTR_EINVAL
        if xattr_key is None:
            xattr_key = key
        elif key != xattr_key:
            return SUBDOC_XATTR_INVALID_KEY_COMBO
    return SUCCESS


def _prepare_lookup(specs: List[Tuple[int, int, str]]) -> Tuple[int, List[_Spec]]:
    prepared: List[_Spec] = []
    for index, (opcode, flags, path) in enumerate(specs):
        if opcode not in _LOOKUP_OPS:
            return SUBDOC_INVALID_COMBO, []
        if flags & EXPAND_MACROS and not flags & XATTR:
            return SUBDOC_XATTR_INVALID_FLAG_COMBO, []
        if flags & ~XATTR:
            return EINVAL, []
        text = _as_text(path)
        if text is None:
            prepared.append(_Spec(index, opcode, flags, "", b""))
            prepared[-1].path_error = SUBDOC_PATH_EINVAL
            continue
        if opcode == WHOLE_DOC_GET:
            if text or flags:
                return EINVAL, []
        elif not text and (opcode not in _EMPTY_PATH_OPS or flags & XATTR):
            return EINVAL, []
        prepared.append(_Spec(index, opcode, flags, text, b""))
    return _check_xattr_rules(prepared, mutation=False), prepared


def _prepare_mutation(
    specs: List[Tuple[int, int, str, bytes]], doc_flags: int
) -> Tuple[int, List[_Spec]]:
    prepared: List[_Spec] = []
    for index, (opcode, flags, path, value) in enumerate(specs):
        if opcode not in _MUTATION_OPS:
            return SUBDOC_INVALID_COMBO, []
        if flags & EXPAND_MACROS and not flags & XATTR:
            return SUBDOC_XATTR_INVALID_FLAG_COMBO, []
        allowed = 0 if opcode in _WHOLE_DOC_OPS else XATTR | EXPAND_MACROS
        if opcode in _MKDIR_OPS:
            allowed |= MKDIR_P
        if flags & ~allowed:
            return EINVAL, []
        if isinstance(value, str):
            value = value.encode("utf-8")
        value = bytes(value or b"")
        if opcode in _VALUELESS_OPS:
            if value:
                return EINVAL, []
        elif not value and opcode != WHOLE_DOC_SET:
            return EINVAL, []
        text = _as_text(path)
        if text is None:
            spec = _Spec(index, opcode, flags, "", value)
            spec.path_error = SUBDOC_PATH_EINVAL
            prepared.append(spec)
            continue
        if opcode in _WHOLE_DOC_OPS:
            if text:
                return EINVAL, []
        elif not text and (opcode not in _EMPTY_PATH_OPS or flags & XATTR):
            return EINVAL, []
        if doc_flags & (MKDOC | ADD) and opcode in _MKDIR_OPS:
            flags |= MKDIR_P
        prepared.append(_Spec(index, opcode, flags, text, value))
    body_specs = [s for s in prepared if not s.xattr]
    if any(s.opcode == WHOLE_DOC_DELETE for s in body_specs):
        if len(body_specs) > 1 or doc_flags & (MKDOC | ADD):
            return SUBDOC_INVALID_COMBO, []
    return _check_xattr_rules(prepared, mutation=True), prepared


# --- execution ------------------------------------------------------------------


class _Work:
    """Private, mutable copies of one document for the span of one request."""

    def __init__(self, state: DocState, body: Optional[bytes], xattrs: Dict[str, bytes]) -> None:
        self.state = state
        self.body = body
        self.tree: Any = _MISSING
        self.tree_status = SUCCESS
        self.body_dirty = False
        self.body_changed = False
        self.xattrs = xattrs
        self.xroot: Dict[str, Any] = {}
        self.xparsed: Dict[str, int] = {}  # key -> parse status
        self.xdirty: Optional[str] = None
        self.deleted = False
        self.vattrs: Dict[str, Any] = {}

    # roots -------------------------------------------------------------------

    def body_root(self) -> Tuple[int, Any]:
        if self.tree is _MISSING and not self.tree_status:
            if self.body is None:
                self.tree_status = SUBDOC_PATH_ENOENT
            else:
                self.tree_status, self.tree = _parse_stored(self.body)
        return self.tree_status, self.tree

    def xattr_root(self, key: str) -> Tuple[int, Dict[str, Any]]:
        if key not in self.xparsed:
            status = SUCCESS
            if key in self.xattrs:
                status, value = _parse_stored(self.xattrs[key])
                if not status:
                    self.xroot[key] = value
            self.xparsed[key] = status
        return self.xparsed[key], self.xroot

    def vattr_root(self, key: str) -> Tuple[int, Dict[str, Any]]:
        if key not in self.vattrs:
            self.vattrs[key] = _vattr(self.state, key)
        value = self.vattrs[key]
        if value is _MISSING:
            return SUBDOC_XATTR_UNKNOWN_VATTR, {}
        return SUCCESS, {key: value}

    def root_for(self, spec: _Spec) -> Tuple[int, Any]:
        if not spec.xattr:
            return self.body_root()
        key = spec.comps[0]
        assert isinstance(key, str)
        if key.startswith("$"):
            return self.vattr_root(key)
        return self.xattr_root(key)

    # lookups -------------------------------------------------------------------

    def lookup_one(self, spec: _Spec) -> Tuple[int, bytes]:
        if spec.path_error:
            return spec.path_error, b""
        if spec.opcode == WHOLE_DOC_GET:
            return SUCCESS, self.body or b""
        status, root = self.root_for(spec)
        if status:
            return status, b""
        status, value = _get(root, spec.comps)
        if status:
            return status, b""
        if spec.opcode == EXISTS:
            return SUCCESS, b""
        if spec.opcode == GET_COUNT:
            if not isinstance(value, (dict, list)):
                return SUBDOC_PATH_MISMATCH, b""
            return SUCCESS, str(len(value)).encode("ascii")
        return SUCCESS, _dumps(value)

    # mutations -------------------------------------------------------------------

    def mutate_one(self, spec: _Spec) -> Tuple[int, Optional[bytes]]:
        if spec.path_error:
            return spec.path_error, None
        op = spec.opcode
        if op == WHOLE_DOC_SET:
            self.body = spec.value
            self.tree, self.tree_status = _MISSING, SUCCESS
            self.body_dirty = False
            self.body_changed = True
            return SUCCESS, None
        if op == WHOLE_DOC_DELETE:
            self.deleted = True
            return SUCCESS, None

        status, root = self.root_for(spec)
        if status:
            return status, None

        values: List[Any] = []
        delta = 0
        if op == COUNTER:
            status, delta = _parse_delta(spec.value)
        elif op in (ARRAY_PUSH_LAST, ARRAY_PUSH_FIRST, ARRAY_INSERT):
            status, values = _parse_values(spec.value)
        elif op != DELETE:
            status, value = _parse_value(spec.value)
            values = [value]
            if not status and op == ARRAY_ADD_UNIQUE and isinstance(value, (dict, list)):
                status = SUBDOC_VALUE_CANTINSERT
        if status:
            return status, None

        if values:
            levels = len(spec.comps) - (1 if spec.xattr else 0)
            if op in _ARRAY_TARGET_OPS:
                levels += 1
            if levels + max(_depth(v) for v in values) > MAX_DEPTH:
                return SUBDOC_VALUE_ETOODEEP, None
            if spec.flags & EXPAND_MACROS:
                status, values = self._expand_all(values)
                if status:
                    return status, None

        status, result = _apply(root, spec, values, delta)
        if status:
            return status, None
        if spec.xattr:
            self.xdirty = spec.comps[0]  # type: ignore[assignment]
        else:
            self.body_dirty = True
            self.body_changed = True
        return SUCCESS, result

    def _expand_all(self, values: List[Any]) -> Tuple[int, List[Any]]:
        out = []
        for value in values:
            status, expanded = self._expand(value)
            if status:
                return status, []
            out.append(expanded)
        return SUCCESS, out

    def _expand(self, value: Any) -> Tuple[int, Any]:
        if isinstance(value, str):
            if not (value.startswith("${") and value.endswith("}")):
                return SUCCESS, value
            name = value[2:-1]
            if name in _MUTATION_MACROS:
                return SUCCESS, _Macro(name)
            if not name.startswith("$"):
                return SUBDOC_XATTR_UNKNOWN_MACRO, None
            try:
                comps = parse_path(name)
            except SubdocError:
                return SUBDOC_XATTR_UNKNOWN_VATTR_MACRO, None
            if comps[0] != "$document":
                return SUBDOC_XATTR_UNKNOWN_VATTR_MACRO, None
            status, found = _get({"$document": _document_vattr(self.state)}, comps)
            if status:
                return SUBDOC_XATTR_UNKNOWN_VATTR_MACRO, None
            return SUCCESS, found
        if isinstance(value, dict):
            for key in list(value):
                status, value[key] = self._expand(value[key])
                if status:
                    return status, None
        elif isinstance(value, list):
            for i, item in enumerate(value):
                status, value[i] = self._expand(item)
                if status:
                    return status, None
        return SUCCESS, value

    def final_body(self) -> Optional[bytes]:
        if self.deleted:
            return None
        if self.body_dirty:
            return _dumps(self.tree)
        return self.body

    def final_xattrs(self, body: Optional[bytes], new_cas: int, new_seqno: int) -> Dict[str, bytes]:
        xattrs = dict(self.xattrs)
        key = self.xdirty
        if key is not None:
            if key in self.xroot:
                macros = {
                    "Mutation.CAS": "0x" + (new_cas & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little").hex(),
                    "Mutation.seqno": "0x%016x" % new_seqno,
                    "Mutation.value_crc32c": "0x%08x" % _crc32c(body or b""),
                }
                xattrs[key] = _dumps(_resolve_macros(self.xroot[key], macros))
            else:
                xattrs.pop(key, None)
        if self.deleted:
            xattrs = {k: v for k, v in xattrs.items() if k.startswith("_")}
        return xattrs


def _parse_stored(data: bytes) -> Tuple[int, Any]:
    try:
        value = _loads(data)
    except RecursionError:
        return SUBDOC_DOC_E2DEEP, None
    except ValueError:
        return SUBDOC_DOC_NOTJSON, None
    if _depth(value) > MAX_DEPTH:
        return SUBDOC_DOC_E2DEEP, None
    return SUCCESS, value


def _parse_value(raw: bytes) -> Tuple[int, Any]:
    try:
        return SUCCESS, _loads(raw)
    except RecursionError:
        return SUBDOC_VALUE_ETOODEEP, None
    except ValueError:
        return SUBDOC_VALUE_CANTINSERT, None


def _parse_values(raw: bytes) -> Tuple[int, List[Any]]:
    """Comma-separated JSON values without the surrounding brackets."""
    status, values = _parse_value(b"[" + raw + b"]")
    if status:
        return status, []
    if not values:
        return SUBDOC_VALUE_CANTINSERT, []
    return SUCCESS, values


def _parse_delta(raw: bytes) -> Tuple[int, int]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return SUBDOC_DELTA_EINVAL, 0
    if not _JSON_INT.match(text) or len(text) > 20:
        return SUBDOC_DELTA_EINVAL, 0
    delta = int(text)
    if delta == 0 or not _INT64_MIN <= delta <= _INT64_MAX:
        return SUBDOC_DELTA_EINVAL, 0
    return SUCCESS, delta


def _same_primitive(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if a is None or b is None:
        return a is b
    if isinstance(a, _Num) and isinstance(b, _Num):
        return a.text == b.text
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def _resolve_macros(value: Any, macros: Dict[str, str]) -> Any:
    if isinstance(value, _Macro):
        return macros[value.name]
    if isinstance(value, dict):
        for key in value:
            value[key] = _resolve_macros(value[key], macros)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _resolve_macros(item, macros)
    return value


def _array_target(root: Any, spec: _Spec) -> Tuple[int, Any]:
    """The array an ARRAY_PUSH_* / ADD_UNIQUE spec works on, created with MKDIR_P."""
    comps = spec.comps
    if not comps:
        target = root
    else:
        status, target = _get(root, comps)
        if status == SUBDOC_PATH_ENOENT and spec.flags & MKDIR_P and isinstance(comps[-1], str):
            status, parent = _parent(root, comps, mkdir=True)
            if status:
                return status, None
            if not isinstance(parent, dict):
                return SUBDOC_PATH_MISMATCH, None
            target = parent.setdefault(comps[-1], [])
        elif status:
            return status, None
    if not isinstance(target, list):
        return SUBDOC_PATH_MISMATCH, None
    return SUCCESS, target


def _apply(root: Any, spec: _Spec, values: List[Any], delta: int) -> Tuple[int, Optional[bytes]]:
    """Run one path mutation on ``root`` in place."""
    op = spec.opcode
    comps = spec.comps
    mkdir = bool(spec.flags & MKDIR_P)

    if op in _ARRAY_TARGET_OPS:
        status, target = _array_target(root, spec)
        if status:
            return status, None
        if op == ARRAY_PUSH_LAST:
            target.extend(values)
        elif op == ARRAY_PUSH_FIRST:
            target[0:0] = values
        else:
            if any(isinstance(item, (dict, list)) for item in target):
                return SUBDOC_PATH_MISMATCH, None
            if any(_same_primitive(item, values[0]) for item in target):
                return SUBDOC_PATH_EEXISTS, None
            target.append(values[0])
        return SUCCESS, None

    last = comps[-1]
    if op in (DICT_ADD, DICT_UPSERT):
        if not isinstance(last, str):
            return SUBDOC_PATH_EINVAL, None
        status, parent = _parent(root, comps, mkdir)
        if status:
            return status, None
        if not isinstance(parent, dict):
            return SUBDOC_PATH_MISMATCH, None
        if op == DICT_ADD and last in parent:
            return SUBDOC_PATH_EEXISTS, None
        parent[last] = values[0]
        return SUCCESS, None

    if op == ARRAY_INSERT:
        if not isinstance(last, int) or last < 0:
            return SUBDOC_PATH_EINVAL, None
        status, parent = _parent(root, comps, mkdir=False)
        if status:
            return status, None
        if not isinstance(parent, list):
            return SUBDOC_PATH_MISMATCH, None
        if last > len(parent):
            return SUBDOC_PATH_ENOENT, None
        parent[last:last] = values
        return SUCCESS, None

    status, parent = _parent(root, comps, mkdir)
    if status:
        return status, None
    status, where = _locate(parent, last)

    if op == COUNTER:
        if status == SUBDOC_PATH_ENOENT and isinstance(last, str):
            parent[last] = _Num(str(delta))
            return SUCCESS, str(delta).encode("ascii")
        if status:
            return status, None
        current = parent[where]
        if not isinstance(current, _Num) or not _JSON_INT.match(current.text):
            return SUBDOC_PATH_MISMATCH, None
        if len(current.text) > 20:
            return SUBDOC_NUM_ERANGE, None
        number = int(current.text)
        if not _INT64_MIN <= number <= _INT64_MAX:
            return SUBDOC_NUM_ERANGE, None
        number += delta
        if not _INT64_MIN <= number <= _INT64_MAX:
            return SUBDOC_NUM_ERANGE, None
        parent[where] = _Num(str(number))
        return SUCCESS, str(number).encode("ascii")

    if status:
        return status, None
    if op == REPLACE:
        parent[where] = values[0]
    else:  # DELETE
        del parent[where]
    return SUCCESS, None


# --- public entry points --------------------------------------------------------


def lookup(
    state: DocState, specs: List[Tuple[int, int, str]], doc_flags: int = 0
) -> Tuple[int, List[Tuple[int, bytes]]]:
    """Run a (multi-)lookup.

    ``specs`` are ``(opcode, path_flags, path)``.  Returns the header status
    and one ``(status, value)`` per spec: 0x00 when every spec succeeded,
    0xcc when some failed (0xcd / 0xd3 instead on a tombstone read with
    ACCESS_DELETED).  Any other status is document-level and comes with an
    empty list.
    """
    if not specs or len(specs) > MAX_SPECS:
        return SUBDOC_INVALID_COMBO, []
    if doc_flags & ~(ACCESS_DELETED | REPLICA_READ):
        return EINVAL, []
    status, prepared = _prepare_lookup(specs)
    if status:
        return status, []
    if state.deleted:
        if not doc_flags & ACCESS_DELETED:
            return KEY_ENOENT, []
    elif state.body is None:
        return KEY_ENOENT, []
    body = state.body if state.body or not state.deleted else None
    work = _Work(state, body, state.xattrs)
    results = [work.lookup_one(spec) for spec in prepared]
    failed = any(st != SUCCESS for st, _ in results)
    if state.deleted:
        top = SUBDOC_MULTI_PATH_FAILURE_DELETED if failed else SUBDOC_SUCCESS_DELETED
    else:
        top = SUBDOC_MULTI_PATH_FAILURE if failed else SUCCESS
    return top, results


def _initial_body(prepared: List[_Spec]) -> bytes:
    for spec in prepared:
        if spec.xattr:
            continue
        if spec.opcode in _ARRAY_TARGET_OPS and not spec.comps and not spec.path_error:
            return b"[]"
        if spec.comps and isinstance(spec.comps[0], int):
            return b"[]"
        return b"{}"
    return b"{}"


def _xattr_blob_size(xattrs: Dict[str, bytes]) -> int:
    if not xattrs:
        return 0
    return 4 + sum(4 + len(k.encode("utf-8")) + 1 + len(v) + 1 for k, v in xattrs.items())


def mutate(
    state: DocState,
    specs: List[Tuple[int, int, str, bytes]],
    doc_flags: int = 0,
    new_cas: int = 0,
    new_seqno: int = 0,
) -> MutationOutcome:
    """Run a (multi-)mutation atomically.

    ``specs`` are ``(opcode, path_flags, path, value)``.  ``new_cas`` and
    ``new_seqno`` are what the KV layer will assign to the stored result; they
    only feed the ``${Mutation.*}`` macros.  See :class:`MutationOutcome`.
    """

    def refuse(status: int) -> MutationOutcome:
        return MutationOutcome(status=status, body=state.body, xattrs=dict(state.xattrs))

    if not specs or len(specs) > MAX_SPECS:
        return refuse(SUBDOC_INVALID_COMBO)
    if doc_flags & MKDOC and doc_flags & ADD:
        return refuse(SUBDOC_INVALID_COMBO)
    if doc_flags & REVIVE_DOCUMENT:
        return refuse(NOT_SUPPORTED)
    if doc_flags & ~(MKDOC | ADD | ACCESS_DELETED | CREATE_AS_DELETED):
        return refuse(EINVAL)
    if doc_flags & CREATE_AS_DELETED and not doc_flags & (MKDOC | ADD):
        return refuse(EINVAL)
    status, prepared = _prepare_mutation(specs, doc_flags)
    if status:
        return refuse(status)

    on_tombstone = False
    created = False
    if state.body is not None and not state.deleted:
        if doc_flags & ADD:
            return refuse(KEY_EEXISTS)
        body: Optional[bytes] = state.body
        xattrs = dict(state.xattrs)
    elif state.deleted and doc_flags & ACCESS_DELETED:
        on_tombstone = True
        body_specs = [s for s in prepared if not s.xattr]
        if any(s.opcode == WHOLE_DOC_DELETE for s in body_specs):
            return refuse(KEY_ENOENT)
        if body_specs:
            return refuse(SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE)
        body = state.body or None
        xattrs = dict(state.xattrs)
    elif doc_flags & CREATE_AS_DELETED:
        created = on_tombstone = True
        if any(not s.xattr for s in prepared):
            return refuse(SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE)
        body = None
        xattrs = {}
    elif doc_flags & (MKDOC | ADD):
        created = True
        body = _initial_body(prepared)
        xattrs = {}
    else:
        return refuse(KEY_ENOENT)

    work = _Work(state, body, xattrs)
    results: List[Tuple[int, int, bytes]] = []
    for spec in prepared:
        status, value = work.mutate_one(spec)
        if status:
            outcome = refuse(
                SUBDOC_MULTI_PATH_FAILURE_DELETED if on_tombstone else SUBDOC_MULTI_PATH_FAILURE
            )
            outcome.failed_index = spec.index
            outcome.failed_status = status
            return outcome
        if value is not None:
            results.append((spec.index, SUCCESS, value))

    new_body = work.final_body()
    new_xattrs = work.final_xattrs(new_body, new_cas, new_seqno)
    blob = _xattr_blob_size(new_xattrs)
    if blob > MAX_XATTR_SIZE or len(new_body or b"") + blob > MAX_DOC_SIZE:
        return refuse(E2BIG)
    return MutationOutcome(
        status=SUBDOC_SUCCESS_DELETED if on_tombstone else SUCCESS,
        body=new_body,
        xattrs=new_xattrs,
        results=results,
        created=created,
        deleted=work.deleted,
    )

"""Sub-document specs: the paths a ``lookup_in`` or ``mutate_in`` works on.

Build specs with the functions of this module and pass them to
:meth:`Bucket.lookup_in` / :meth:`Bucket.mutate_in`::

    import couchbase_core.subdocument as SD

    rv = bucket.lookup_in("user:1", SD.get("name"), SD.exists("tags"))
    bucket.mutate_in("user:1", SD.upsert("address.city", "Oslo", create_parents=True),
                     SD.array_append("tags", "new"), SD.counter("visits", 1))

Every spec takes ``xattr=True`` to address an extended attribute (the first
path component names the attribute) instead of the document body. Array
operations accept several values with :class:`MultiValue`. Values are
encoded as JSON.
"""

from __future__ import annotations

import json
from typing import Any, Tuple

from couchbase_core._engine.protocol import Opcode, SubdocPathFlag
from couchbase_core.exceptions import ArgumentError, SubdocBadDeltaError

__all__ = ["get", "exists", "get_count", "upsert", "replace", "insert", "array_append", "array_prepend",
           "array_insert", "array_addunique", "counter", "remove", "Spec", "MultiValue",
           "LOOKUP_OPCODES", "MUTATION_OPCODES"]

# opcodes (spec/kv-protocol.md §7)
_GET = Opcode.SUBDOC_GET
_EXISTS = Opcode.SUBDOC_EXISTS
_DICT_ADD = Opcode.SUBDOC_DICT_ADD
_DICT_UPSERT = Opcode.SUBDOC_DICT_UPSERT
_DELETE = Opcode.SUBDOC_DELETE
_REPLACE = Opcode.SUBDOC_REPLACE
_ARRAY_PUSH_LAST = Opcode.SUBDOC_ARRAY_PUSH_LAST
_ARRAY_PUSH_FIRST = Opcode.SUBDOC_ARRAY_PUSH_FIRST
_ARRAY_INSERT = Opcode.SUBDOC_ARRAY_INSERT
_ARRAY_ADD_UNIQUE = Opcode.SUBDOC_ARRAY_ADD_UNIQUE
_COUNTER = Opcode.SUBDOC_COUNTER
_GET_COUNT = Opcode.SUBDOC_GET_COUNT

LOOKUP_OPCODES = frozenset({_GET, _EXISTS, _GET_COUNT})
MUTATION_OPCODES = frozenset({_DICT_ADD, _DICT_UPSERT, _DELETE, _REPLACE, _ARRAY_PUSH_LAST, _ARRAY_PUSH_FIRST,
                              _ARRAY_INSERT, _ARRAY_ADD_UNIQUE, _COUNTER})

# path flags
F_MKDIR_P = SubdocPathFlag.MKDIR_P
F_XATTR = SubdocPathFlag.XATTR
F_EXPAND_MACROS = SubdocPathFlag.EXPAND_MACROS


class MultiValue(tuple):
    """Several values for one array operation (pushed in order)."""

    def __new__(cls, *values: Any) -> "MultiValue":
        return tuple.__new__(cls, values)


class Spec(tuple):
    """One sub-document operation: ``(opcode, path, value, path_flags)``.

    ``value`` is the JSON text to send (bytes, empty for lookups). The
    attributes name the parts.
    """

    def __new__(cls, opcode: int, path: str, value: bytes = b"", flags: int = 0) -> "Spec":
        return tuple.__new__(cls, (opcode, path, value, flags))

    @property
    def opcode(self) -> int:
        """Protocol opcode."""
        return self[0]

    @property
    def path(self) -> str:
        """The path inside the document (or xattr)."""
        return self[1]

    @property
    def value(self) -> bytes:
        """Encoded value (empty for lookups and removals)."""
        return self[2]

    @property
    def flags(self) -> int:
        """Path flags (create parents, xattr, expand macros)."""
        return self[3]

    @property
    def is_lookup(self) -> bool:
        """True for ``get``, ``exists``, ``get_count``."""
        return self[0] in LOOKUP_OPCODES

    def __repr__(self) -> str:
        return "Spec(0x%02x, %r, %r, flags=0x%x)" % self


def _path(path: Any) -> str:
    if not isinstance(path, str):
        raise ArgumentError("a sub-document path must be a str, not %s" % type(path).__name__)
    return path


def _json(value: Any, many: bool = False) -> bytes:
    try:
        if many and isinstance(value, MultiValue):
            if not value:
                raise ArgumentError("MultiValue needs at least one value")
            return ",".join(json.dumps(v, separators=(",", ":"), allow_nan=False) for v in value).encode("utf-8")
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        from couchbase_core.exceptions import ValueFormatError

        raise ValueFormatError({"message": "sub-document value is not JSON-serialisable: %s" % exc,
                                "inner_cause": exc}) from exc


def _flags(create_parents: bool = False, xattr: bool = False, _expand_macros: bool = False) -> int:
    flags = 0
    if create_parents:
        flags |= F_MKDIR_P
    if xattr:
        flags |= F_XATTR
    if _expand_macros:
        if not xattr:
            raise ArgumentError("macros can only be expanded in xattrs")
        flags |= F_EXPAND_MACROS
    return flags


def get(path: str, xattr: bool = False) -> Spec:
    """Read the value at ``path``."""
    return Spec(_GET, _path(path), b"", _flags(xattr=xattr))


def exists(path: str, xattr: bool = False) -> Spec:
    """Check whether ``path`` exists (no value returned)."""
    return Spec(_EXISTS, _path(path), b"", _flags(xattr=xattr))


def get_count(path: str, xattr: bool = False) -> Spec:
    """Number of elements of the array or object at ``path``."""
    return Spec(_GET_COUNT, _path(path), b"", _flags(xattr=xattr))


def upsert(path: str, value: Any, create_parents: bool = False, xattr: bool = False,
           _expand_macros: bool = False) -> Spec:
    """Create or replace the dictionary entry at ``path``."""
    return Spec(_DICT_UPSERT, _path(path), _json(value), _flags(create_parents, xattr, _expand_macros))


def insert(path: str, value: Any, create_parents: bool = False, xattr: bool = False,
           _expand_macros: bool = False) -> Spec:
    """Create the dictionary entry at ``path`` (fails if it exists)."""
    return Spec(_DICT_ADD, _path(path), _json(value), _flags(create_parents, xattr, _expand_macros))


def replace(path: str, value: Any, xattr: bool = False, _expand_macros: bool = False) -> Spec:
    """Replace the existing value at ``path``."""
    return Spec(_REPLACE, _path(path), _json(value), _flags(False, xattr, _expand_macros))


def array_append(path: str, *values: Any, create_parents: bool = False, xattr: bool = False) -> Spec:
    """Add values to the end of the array at ``path``."""
    return Spec(_ARRAY_PUSH_LAST, _path(path), _values(values), _flags(create_parents, xattr))


def array_prepend(path: str, *values: Any, create_parents: bool = False, xattr: bool = False) -> Spec:
    """Add values to the start of the array at ``path``."""
    return Spec(_ARRAY_PUSH_FIRST, _path(path), _values(values), _flags(create_parents, xattr))


def array_insert(path: str, *values: Any, xattr: bool = False) -> Spec:
    """Insert values at the position ``path`` names (``list[2]``)."""
    return Spec(_ARRAY_INSERT, _path(path), _values(values), _flags(False, xattr))


def array_addunique(path: str, value: Any, create_parents: bool = False, xattr: bool = False) -> Spec:
    """Append a primitive to the array unless it is already there."""
    return Spec(_ARRAY_ADD_UNIQUE, _path(path), _json(value), _flags(create_parents, xattr))


#: The range of a sub-document counter delta (a signed 64-bit integer).
_DELTA_MIN, _DELTA_MAX = -(2 ** 63), 2 ** 63 - 1


def counter(path: str, delta: int, create_parents: bool = False, xattr: bool = False) -> Spec:
    """Add ``delta`` (a non-zero signed 64-bit integer) to the number at
    ``path``. Any other delta is a :class:`SubdocBadDeltaError` (the error
    the server gives for one), raised here, before anything is sent."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise SubdocBadDeltaError("counter delta must be an integer, not %s" % type(delta).__name__)
    if delta == 0:
        raise SubdocBadDeltaError("counter delta must not be zero")
    if not _DELTA_MIN <= delta <= _DELTA_MAX:
        raise SubdocBadDeltaError("counter delta %d is out of the signed 64-bit range" % delta)
    return Spec(_COUNTER, _path(path), str(delta).encode("ascii"), _flags(create_parents, xattr))


def remove(path: str, xattr: bool = False) -> Spec:
    """Remove the value at ``path``."""
    return Spec(_DELETE, _path(path), b"", _flags(xattr=xattr))


def _values(values: Tuple[Any, ...]) -> bytes:
    if not values:
        raise ArgumentError("an array operation needs at least one value")
    if len(values) == 1:
        return _json(values[0], many=True)
    return _json(MultiValue(*values), many=True)

"""A transport-free N1QL engine for the Couchbase Server emulator.

The emulator's HTTP layer (``/query/service`` on port 8093) decodes a request
into a dict of fields and hands it to :meth:`QueryService.execute`, which
answers ``(http_status, chunks)``: the complete response body as a lazy
iterator of byte chunks, in the shape a real query service streams (see the
spec, HTTP services section 3).  Only a documented subset of N1QL is
understood; everything below is what a client can rely on.

Statements
==========

Keywords are case-insensitive; identifiers (field, keyspace, index and alias
names) are case-sensitive.  The classic N1QL reserved words (``VALUE``,
``KEY``, ``USER``, ``STRING``, ``PATH``, ...) must be backquoted when used as
names, as on a real server.  ``--`` and ``/* */`` comments and a trailing
``;`` are allowed.  ::

    statement  ::= select | prepare | execute | explain | create_index
                 | drop_index | build_index
    select     ::= SELECT [DISTINCT | ALL] projection
                   [FROM keyspace [[AS] alias] [USE [PRIMARY] KEYS expr]]
                   [WHERE cond]
                   [ORDER BY expr [ASC | DESC] {, expr [ASC | DESC]}]
                   [LIMIT expr] [OFFSET expr]          -- either order
    projection ::= (RAW | ELEMENT | VALUE) expr
                 | term {, term}
    term       ::= *  |  expr.*  |  expr [[AS] name]
    keyspace   ::= [namespace :] name                  -- namespace: default
                 | system:indexes
    prepare    ::= PREPARE [name (FROM | AS)] (select | create_index | ...)
    execute    ::= EXECUTE name [USING (array | object)]
    explain    ::= EXPLAIN select
    create_index ::= CREATE PRIMARY INDEX [name] ON keyspace [USING GSI|VIEW]
                     [WITH object]
                 | CREATE INDEX name ON keyspace (expr [ASC|DESC] {, ...})
                     [WHERE cond] [USING GSI|VIEW] [WITH object]
    drop_index ::= DROP PRIMARY INDEX ON keyspace [USING GSI|VIEW]
                 | DROP INDEX keyspace.name [USING GSI|VIEW]
                 | DROP INDEX name ON keyspace [USING GSI|VIEW]
    build_index ::= BUILD INDEX ON keyspace (name {, name}) [USING GSI|VIEW]

Names are plain identifiers or backquoted (`` `travel-sample` ``, with
```` `` ```` for a backquote); prepared statement and BUILD names may also be
string literals.  ``WITH`` takes an object; only ``defer_build`` (a boolean)
has an effect, other keys are accepted and ignored.

Expressions
===========

Lowest to highest precedence (as in the server's grammar)::

    OR
    AND
    NOT
    =  ==  !=  <>  <  <=  >  >=  [NOT] LIKE  [NOT] IN  [NOT] BETWEEN x AND y
    IS [NOT] NULL | IS [NOT] MISSING | IS [NOT] VALUED (IS KNOWN = IS VALUED)
    ||                                   string concatenation
    +  -
    *  /  %
    - (unary)
    a.b   a[expr]   f(...)               field, element, call

Operands: numbers (``1``, ``1.5``, ``2e3``), strings in single or double
quotes (JSON backslash escapes, and a doubled quote inside), ``TRUE``,
``FALSE``, ``NULL``, ``MISSING``, array ``[e, ...]`` and object
``{"k": e, ...}`` constructors, identifiers, positional parameters ``$1``,
``$2`` ... or ``?`` (numbered in order of appearance), named parameters
``$name``, parentheses.  With a FROM clause, a bare identifier is a field of
the document (``name`` is ``b.name``) unless it is the alias itself.

Functions: ``LOWER``, ``UPPER``, ``LENGTH`` (UTF-8 bytes, like the server),
``ARRAY_LENGTH``, ``ABS``, ``ROUND(x [, digits])`` (half away from zero),
``TOSTRING``/``TO_STRING``, ``TONUMBER``/``TO_NUMBER``, ``IFMISSING(a, b,
...)`` (first non-MISSING, else NULL), ``IFNULL(a, b, ...)`` (first non-NULL,
which may be MISSING), ``META([alias])`` (object with ``id``, ``cas``,
``flags``, ``expiration``, ``type``).  Aggregates without GROUP BY:
``COUNT(*)``, ``COUNT([DISTINCT] e)``, ``SUM``, ``AVG``, ``MIN``, ``MAX``; a
query with an aggregate yields exactly one row (``COUNT(*)`` of an empty
bucket is ``0``), and any other reference to the document in its projection
or ORDER BY is error 4210.

Semantics
=========

* MISSING/NULL propagation: a comparison, arithmetic, LIKE, IN or function
  with a MISSING operand is MISSING, else with a NULL (or wrongly typed)
  operand NULL.  ``AND`` is FALSE if any operand is false, else MISSING if any
  is MISSING, else NULL if any is NULL; ``OR`` is TRUE if any operand is true,
  else NULL before MISSING.  ``=`` of different types is FALSE; ``<`` and
  friends between different types follow collation, as on the server.
* Collation (ORDER BY, ``<``, MIN/MAX): MISSING < NULL < FALSE < TRUE <
  numbers < strings (code point order) < arrays (element-wise, then length) <
  objects (fewer fields first, then sorted field names, then values).
* WHERE keeps a row when the condition is TRUE, or a truthy non-boolean
  (non-zero number, non-empty string/array/object) as the server does; FALSE,
  NULL and MISSING drop it.
* Projection: a MISSING value leaves its field out; ``SELECT RAW`` drops rows
  whose value is MISSING.  Unnamed terms are named after the last field of a
  path (``a.b`` -> ``b``, ``META().id`` -> ``id``) or ``$1``, ``$2``, ...
  (counting unnamed terms only).  ``SELECT *`` wraps each document as
  ``{"<alias>": doc}``; ``alias.*`` (any ``expr.*``) merges an object's fields.
  MISSING elements of an array constructor become NULL.
* Arithmetic: ``/`` is true division, division or modulo by zero is NULL,
  results that do not fit a float (inf/nan) are NULL; integral results are
  integers.
* ORDER BY may name projection aliases; rows without ORDER BY come in the
  order of :meth:`Keyspace.scan` (a real primary scan is in key order).
* A non-JSON document (value ``None`` and meta ``type`` not ``json``) is a
  binary value: field access on it is MISSING, and projected whole it shows
  as ``"<binary (N b)>"`` (N from a ``size`` meta entry when the keyspace
  gives one, else ``"<binary>"``).
* USE KEYS takes a string or an array of strings, in that order, duplicates
  kept, absent keys skipped; it needs no index.
* Memory: rows stream in batches (256 rows or 64 KiB per chunk) straight
  from :meth:`Keyspace.scan`, and LIMIT stops the scan.  ORDER BY holds the
  sorted rows (only OFFSET + LIMIT of them when there is a LIMIT), DISTINCT
  the distinct rows seen, aggregates one accumulator each.

Indexes
=======

``CREATE [PRIMARY] INDEX`` records an index; ``SELECT ... FROM
system:indexes`` lists them, one row ``{"indexes": {...}}`` per index (or the
bare object with RAW / ``alias.*``) with ``condition`` (when there is one),
``id``, ``index_key`` (expression texts, e.g. ``["`type`"]``),
``is_primary`` (only when true), ``keyspace_id``, ``name``,
``namespace_id`` (``"default"``), ``state`` and ``using`` (``"gsi"``).  An
index is ``online`` on creation, ``deferred`` with ``{"defer_build": true}``;
BUILD INDEX makes it ``building`` and it turns ``online`` ``build_delay``
seconds later (0.2 s by default).  Indexes of a bucket that is no longer
among the keyspaces are forgotten at the next request.

A SELECT from a bucket without USE KEYS needs an online index: a primary
index, or a secondary one whose leading key is constrained by the WHERE
clause (the key's text is an operand of a comparison, LIKE, IN, BETWEEN,
IS [NOT] NULL, IS NOT MISSING or IS VALUED in a top-level AND term, or in
every branch of an OR) and, for a partial index, whose every AND term of the
index condition appears among the top-level AND terms of the WHERE clause.
The index only gates the query: rows are always read from the live data, so
results equal those of a full scan.

Requests
========

Fields: ``statement``, ``prepared`` (a name, or a PREPARE result object),
``encoded_plan``, ``args`` (array), ``$<name>``, ``scan_consistency``
(``not_bounded``, ``request_plus``, ``statement_plus``, ``at_plus``; case
insensitive; ``at_plus`` needs ``scan_vectors``), ``scan_vectors``,
``scan_wait``, ``timeout`` (Go durations), ``readonly``, ``client_context_id``
(echoed as ``clientContextID``, as a string), ``pretty``, ``metrics``
(default true), ``signature`` (default true), ``profile`` (``off``,
``phases``, ``timings``), ``max_parallelism``, ``scan_cap``,
``pipeline_batch``, ``pipeline_cap`` (integers or numeric strings), ``creds``
(array of objects), and further server fields that are accepted and ignored
(``query_context``, ``namespace``, ``encoding``, ``format``, ``compression``,
``auto_execute``, ``auto_prepare``, ``use_fts``, ``use_cbo``, ``memory_quota``,
``use_replica``, ``preserve_expiry``, ``kvtimeout`` and the transaction
fields).  Any other field is error 1065, as on the server.  ``pretty``
defaults to false; either way the body is one JSON object whose top-level
fields sit on their own lines (clients must not rely on line breaks).  When
both ``statement`` and ``prepared`` are sent, ``prepared`` wins.  The engine
reads live data, so every scan consistency sees all mutations made before the
request (``mutation_count`` is not needed); a ``timeout`` that expires while rows are produced ends the
response with error 1080 and status ``timeout``; zero or negative means no
timeout.

Prepared statements: ``PREPARE`` answers one row ``{"name",
"encoded_plan", "operator", "signature", "text"}`` and stores the plan
(LRU, 16384 entries).  Without a name, the name is a random UUID, or with the
``enhancedPreparedStatements`` cluster capability a UUID derived from the
statement text (so re-preparing gives the same name).  ``encoded_plan`` is an
opaque base64 string; sent with ``prepared`` it must equal the stored one
(else 4080), and for a name the engine does not know a valid encoded plan
re-creates the statement (the pre-6.5 behaviour), an undecodable one is 4070.
A statement is re-planned at every execution, so a dropped index turns into
error 4000 rather than a stale plan.

Errors
======

Every error object is ``{"code": int, "msg": str}``.  Errors found before any
row is produced answer with the HTTP status below and no ``results``; errors
met while rows stream (timeouts, failing scans) come with HTTP 200 in the
``errors`` field after the rows.  ``status`` is ``fatal`` for request,
parse and plan errors, ``errors`` for statements that failed while executing
(index DDL), ``timeout`` for 1080.

=====  ====  ======================================================================
code   HTTP  message
=====  ====  ======================================================================
1000   403   The server or request is read-only and cannot accept this write statement.
1050   400   Invalid value for <field>: <value>  (bad scan_consistency, timeout, args, ...)
1060   400   No statement or prepared value
1065   400   Unrecognized parameter in request: <field>
1080   200   Timeout <timeout> exceeded  (while streaming)
3000   400   syntax error - at <token> | at end of input; Invalid function <NAME>.;
             Number of arguments to function <NAME> must be ...; Ambiguous reference
             to field <name>. (field without FROM); Aggregates not allowed in WHERE.
4000   404   No index available on keyspace <b> that matches your query. Use CREATE
             PRIMARY INDEX ON <b> to create a primary index, or check that your
             expected index is online.
4040   404   No such prepared statement: <name>
4060   400   Unable to add name: duplicate name: <name>
4070   400   Unable to decode prepared statement
4080   400   Encoded plan parameter does not match encoded plan of <name>
4210   400   Expression <text> must depend only on group keys or aggregates.
4300   409   The index <name> already exists.  (status "errors")
5000   500   Internal error: <detail>
5010   400   No value for positional parameter $<n>. | No value for named parameter $<name>.
5030   400   Invalid LIMIT value <v>. | Invalid OFFSET value <v>.
12002  404   Namespace not found in CB datastore: <ns>
12003  404   Keyspace not found in CB datastore: default:<name>
12016  404   Index Not Found - cause: GSI index <name> not found.  (status "errors")
=====  ====  ======================================================================

Statements outside the subset (INSERT, UPDATE, GROUP BY, JOIN, subqueries,
...) are syntax errors (3000) at the first token the subset does not accept.
Unknown fields are not errors in N1QL: they are MISSING.

Metrics (unless ``metrics`` is false): ``elapsedTime`` and ``executionTime``
(Go durations), ``resultCount``, ``resultSize`` (bytes of the encoded rows),
``mutationCount`` (always 0: the subset never mutates documents),
``sortCount`` (rows sorted; only with ORDER BY), ``errorCount`` and
``warningCount`` (always present; a real server leaves zero counters out).
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import math
import re
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

__all__ = [
    "MISSING",
    "Keyspace",
    "QueryService",
    "format_go_duration",
    "parse_go_duration",
]


# ---------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------


class _MissingType:
    """The N1QL MISSING value (distinct from NULL, which is ``None``)."""

    __slots__ = ()
    _instance: Optional["_MissingType"] = None

    def __new__(cls) -> "_MissingType":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _MissingType()
"""The N1QL MISSING value; NULL is ``None``."""


class _BinaryDoc:
    """A non-JSON document value."""

    __slots__ = ("size",)

    def __init__(self, size: Optional[int]) -> None:
        self.size = size

    def __str__(self) -> str:
        if isinstance(self.size, int):
            return "<binary (%d b)>" % self.size
        return "<binary>"


# Kind ranks, in collation order.
_K_MISSING, _K_NULL, _K_BOOL, _K_NUM, _K_STR, _K_ARR, _K_OBJ, _K_BIN = range(8)
_KINDS = {type(None): _K_NULL, bool: _K_BOOL, int: _K_NUM, float: _K_NUM, str: _K_STR,
          list: _K_ARR, tuple: _K_ARR, dict: _K_OBJ}


def _kind(v: Any) -> int:
    k = _KINDS.get(type(v))
    if k is not None:
        return k
    if v is MISSING:
        return _K_MISSING
    if isinstance(v, bool):
        return _K_BOOL
    if isinstance(v, (int, float)):
        return _K_NUM
    if isinstance(v, str):
        return _K_STR
    if isinstance(v, (list, tuple)):
        return _K_ARR
    if isinstance(v, dict):
        return _K_OBJ
    return _K_BIN


def _ckey(v: Any) -> tuple:
    """A hashable key whose Python ordering is N1QL collation and whose
    equality is N1QL equality (1 == 1.0)."""
    k = _kind(v)
    if k == _K_NUM or k == _K_STR or k == _K_BOOL:
        return (k, v)
    if k == _K_ARR:
        return (k, tuple(_ckey(x) for x in v))
    if k == _K_OBJ:
        names = sorted(v)
        return (k, len(names), tuple(names), tuple(_ckey(v[n]) for n in names))
    return (k,)


class _Desc:
    """Reverses the ordering of a collation key (for ORDER BY ... DESC)."""

    __slots__ = ("k",)

    def __init__(self, k: tuple) -> None:
        self.k = k

    def __lt__(self, other: "_Desc") -> bool:
        return other.k < self.k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and other.k == self.k

    def __hash__(self) -> int:
        return hash(self.k)


def _is_num(v: Any) -> bool:
    t = type(v)
    return t is int or t is float or (t is not bool and isinstance(v, (int, float))
                                       and not isinstance(v, bool))


def _num_result(v: Any) -> Any:
    """Normalise an arithmetic result: inf/nan -> NULL, integral float -> int."""
    if type(v) is float:
        if not math.isfinite(v):
            return None
        if v.is_integer() and abs(v) < 2 ** 53:
            return int(v)
    return v


def _truth(v: Any) -> bool:
    """N1QL truthiness (used by WHERE, AND, OR, NOT)."""
    if v is True:
        return True
    if v is False or v is None or v is MISSING:
        return False
    k = _kind(v)
    if k == _K_NUM:
        return v != 0
    if k in (_K_STR, _K_ARR, _K_OBJ):
        return len(v) > 0
    return True


def _equal(a: Any, b: Any) -> bool:
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int):
        return a == b
    return _ckey(a) == _ckey(b)


def _less(a: Any, b: Any) -> bool:
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int or ta is float):
        return a < b
    return _ckey(a) < _ckey(b)


def _json_default(o: Any) -> Any:
    if isinstance(o, _BinaryDoc):
        return str(o)
    if o is MISSING:
        return None
    if isinstance(o, tuple):
        return list(o)
    raise TypeError("not JSON serialisable: %r" % (o,))


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default,
                            allow_nan=False)
_PRETTY = json.JSONEncoder(ensure_ascii=False, indent=4, default=_json_default, allow_nan=False)


# ---------------------------------------------------------------------------
# Go durations
# ---------------------------------------------------------------------------

_DUR_UNITS = {"ns": 1, "us": 1000, "\u00b5s": 1000, "\u03bcs": 1000, "ms": 1000000,
              "s": 1000000000, "m": 60000000000, "h": 3600000000000}
_DUR_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> int:
    """Parse a Go duration (``"75s"``, ``"1500ms"``, ``"1h2m3.5s"``, ``"0"``)
    into nanoseconds; raise ``ValueError`` for anything else."""
    if not isinstance(text, str):
        raise ValueError("duration must be a string")
    s = text
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError("invalid duration %r" % text)
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        m = _DUR_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError("invalid duration %r" % text)
        total += Decimal(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return sign * int(total)


def _frac(value: int, unit: int, digits: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    return "%d.%s" % (whole, str(rest).zfill(digits).rstrip("0"))


def format_go_duration(ns: int) -> str:
    """Format nanoseconds the way Go's ``time.Duration.String`` does
    (``"0s"``, ``"850ns"``, ``"12.5\u00b5s"``, ``"3.2ms"``, ``"1m2.5s"``)."""
    ns = int(ns)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1000:
        return "%s%dns" % (sign, u)
    if u < 1000000:
        return sign + _frac(u, 1000, 3) + "\u00b5s"
    if u < 1000000000:
        return sign + _frac(u, 1000000, 6) + "ms"
    hours, rest = divmod(u, 3600000000000)
    minutes, rest = divmod(rest, 60000000000)
    secs = _frac(rest, 1000000000, 9) + "s"
    if hours:
        return "%s%dh%dm%s" % (sign, hours, minutes, secs)
    if minutes:
        return "%s%dm%s" % (sign, minutes, secs)
    return sign + secs


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

_HTTP_FOR_CODE = {1000: 403, 1050: 400, 1060: 400, 1065: 400, 3000: 400, 4000: 404, 4040: 404,
                  4060: 400, 4070: 400, 4080: 400, 4210: 400, 4300: 409, 5000: 500, 5010: 400,
                  5030: 400, 12002: 404, 12003: 404, 12016: 404}


class _QueryError(Exception):
    """A N1QL error with its code, HTTP status and response status."""

    def __init__(self, code: int, msg: str, status: str = "fatal",
                 http: Optional[int] = None, reason: Optional[dict] = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.http = http if http is not None else _HTTP_FOR_CODE.get(code, 500)
        self.reason = reason

    def as_json(self) -> dict:
        out: Dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.reason:
            out["reason"] = self.reason
        return out


class _Timeout(Exception):
    pass


# ---------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------

_RESERVED = frozenset("""
ALL ALTER ANALYZE AND ANY ARRAY AS ASC BEGIN BETWEEN BINARY BOOLEAN BREAK BUCKET BUILD BY CALL
CASE CAST CLUSTER COLLATE COLLECTION COMMIT CONNECT CONTINUE CORRELATE COVER CREATE DATABASE
DATASET DATASTORE DECLARE DECREMENT DELETE DERIVED DESC DESCRIBE DISTINCT DO DROP EACH ELEMENT
ELSE END EVERY EXCEPT EXCLUDE EXECUTE EXISTS EXPLAIN FALSE FETCH FIRST FLATTEN FOR FORCE FROM
FUNCTION GRANT GROUP GSI HAVING IF IGNORE ILIKE IN INCLUDE INCREMENT INDEX INFER INLINE INNER
INSERT INTERSECT INTO IS JOIN KEY KEYS KEYSPACE KNOWN LAST LEFT LET LETTING LIKE LIMIT LSM MAP
MAPPING MATCHED MATERIALIZED MERGE MINUS MISSING NAMESPACE NEST NOT NULL NUMBER OBJECT OFFSET ON
OPTION OR ORDER OUTER OVER PARSE PARTITION PASSWORD PATH POOL PREPARE PRIMARY PRIVATE PRIVILEGE
PROCEDURE PUBLIC RAW REALM REDUCE RENAME RETURN RETURNING REVOKE RIGHT ROLE ROLLBACK SATISFIES
SCHEMA SELECT SELF SEMI SET SHOW SOME START STATISTICS STRING SYSTEM THEN TO TRANSACTION TRIGGER
TRUE TRUNCATE UNDER UNION UNIQUE UNKNOWN UNNEST UNSET UPDATE UPSERT USE USER USING VALIDATE VALUE
VALUED VALUES VIA VIEW WHEN WHERE WHILE WITH WITHIN WORK XOR
""".split())

_TOKEN_RE = re.compile(r"""
 (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
|(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
|(?P<str>"(?:[^"\\]|\\.|"")*"|'(?:[^'\\]|\\.|'')*')
|(?P<qid>`(?:[^`]|``)*`)
|(?P<param>\$(?:[0-9]+|[A-Za-z_][A-Za-z0-9_]*))
|(?P<id>[A-Za-z_][A-Za-z0-9_$]*)
|(?P<op>==|!=|<>|<=|>=|\|\||[-+*/%=<>()\[\]{},.:;?])
""", re.X | re.S)

_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "\\": "\\", "/": "/",
            '"': '"', "'": "'", "`": "`"}


class _Tok(NamedTuple):
    kind: str      # num str qid param id kw op eof
    value: Any
    text: str
    pos: int


def _unescape(body: str, quote: str, where: str) -> str:
    out: List[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:
            e = body[i + 1]
            if e == "u" and i + 6 <= n:
                try:
                    out.append(chr(int(body[i + 2:i + 6], 16)))
                except ValueError:
                    raise _QueryError(3000, "syntax error - at %s" % where) from None
                i += 6
                continue
            out.append(_ESCAPES.get(e, e))
            i += 2
            continue
        if c == quote and i + 1 < n and body[i + 1] == quote:
            out.append(quote)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _tokenize(text: str) -> List[_Tok]:
    toks: List[_Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise _QueryError(3000, "syntax error - at %s" % text[pos:pos + 20])
        kind = m.lastgroup
        raw = m.group()
        if kind == "ws":
            pass
        elif kind == "num":
            value: Any = float(raw) if ("." in raw or "e" in raw or "E" in raw) else int(raw)
            toks.append(_Tok("num", _num_result(value) if type(value) is float else value, raw, pos))
        elif kind == "str":
            toks.append(_Tok("str", _unescape(raw[1:-1], raw[0], raw), raw, pos))
        elif kind == "qid":
            toks.append(_Tok("qid", raw[1:-1].replace("``", "`"), raw, pos))
        elif kind == "param":
            name = raw[1:]
            toks.append(_Tok("param", int(name) if name.isdigit() else name, raw, pos))
        elif kind == "id":
            if raw.upper() in _RESERVED:
                toks.append(_Tok("kw", raw.upper(), raw, pos))
            else:
                toks.append(_Tok("id", raw, raw, pos))
        else:
            toks.append(_Tok("op", raw, raw, pos))
        pos = m.end()
    toks.append(_Tok("eof", None, "", n))
    return toks


# ---------------------------------------------------------------------------
# AST
# ---------------------------------------------------------------------------


class _Node:
    __slots__ = ()


class _Lit(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Param(_Node):
    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key          # int (positional) or str (named)


class _Ident(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Field(_Node):
    __slots__ = ("base", "name")

    def __init__(self, base: _Node, name: str) -> None:
        self.base = base
        self.name = name


class _Elem(_Node):
    __slots__ = ("base", "index")

    def __init__(self, base: _Node, index: _Node) -> None:
        self.base = base
        self.index = index


class _Call(_Node):
    __slots__ = ("name", "args", "star", "distinct")

    def __init__(self, name: str, args: List[_Node], star: bool = False,
                 distinct: bool = False) -> None:
        self.name = name
        self.args = args
        self.star = star
        self.distinct = distinct


class _Unary(_Node):
    __slots__ = ("op", "operand")

    def __init__(self, op: str, operand: _Node) -> None:
        self.op = op            # "-" or "NOT"
        self.operand = operand


class _Binary(_Node):
    __slots__ = ("op", "left", "right")

    def __init__(self, op: str, left: _Node, right: _Node) -> None:
        self.op = op
        self.left = left
        self.right = right


class _Between(_Node):
    __slots__ = ("expr", "low", "high", "negated")

    def __init__(self, expr: _Node, low: _Node, high: _Node, negated: bool) -> None:
        self.expr = expr
        self.low = low
        self.high = high
        self.negated = negated


class _Is(_Node):
    __slots__ = ("expr", "what", "negated")

    def __init__(self, expr: _Node, what: str, negated: bool) -> None:
        self.expr = expr
        self.what = what        # NULL MISSING VALUED
        self.negated = negated


class _ArrayLit(_Node):
    __slots__ = ("items",)

    def __init__(self, items: List[_Node]) -> None:
        self.items = items


class _ObjectLit(_Node):
    __slots__ = ("pairs",)

    def __init__(self, pairs: List[Tuple[_Node, _Node]]) -> None:
        self.pairs = pairs


def _children(node: _Node) -> List[_Node]:
    if isinstance(node, (_Field,)):
        return [node.base]
    if isinstance(node, _Elem):
        return [node.base, node.index]
    if isinstance(node, _Call):
        return list(node.args)
    if isinstance(node, _Unary):
        return [node.operand]
    if isinstance(node, _Binary):
        return [node.left, node.right]
    if isinstance(node, _Between):
        return [node.expr, node.low, node.high]
    if isinstance(node, _Is):
        return [node.expr]
    if isinstance(node, _ArrayLit):
        return list(node.items)
    if isinstance(node, _ObjectLit):
        return [x for pair in node.pairs for x in pair]
    return []


_AGGREGATES = frozenset(["COUNT", "SUM", "AVG", "MIN", "MAX"])


def _has_aggregate(node: Optional[_Node]) -> bool:
    if node is None:
        return False
    if isinstance(node, _Call) and node.name in _AGGREGATES:
        return True
    return any(_has_aggregate(c) for c in _children(node))


class _Term:
    __slots__ = ("kind", "expr", "alias")

    def __init__(self, kind: str, expr: Optional[_Node], alias: Optional[str]) -> None:
        self.kind = kind        # "star" | "pathstar" | "expr"
        self.expr = expr
        self.alias = alias


class _From:
    __slots__ = ("namespace", "name", "alias", "keys")

    def __init__(self, namespace: Optional[str], name: str, alias: Optional[str],
                 keys: Optional[_Node]) -> None:
        self.namespace = namespace
        self.name = name
        self.alias = alias
        self.keys = keys


class _Select:
    __slots__ = ("distinct", "raw", "terms", "from_", "where", "order", "limit", "offset")

    def __init__(self) -> None:
        self.distinct = False
        self.raw: Optional[_Node] = None
        self.terms: List[_Term] = []
        self.from_: Optional[_From] = None
        self.where: Optional[_Node] = None
        self.order: List[Tuple[_Node, bool]] = []
        self.limit: Optional[_Node] = None
        self.offset: Optional[_Node] = None


class _CreateIndex:
    __slots__ = ("primary", "name", "keyspace", "keys", "where", "using", "with_")

    def __init__(self, primary: bool, name: Optional[str], keyspace: Tuple[Optional[str], str],
                 keys: List[Tuple[_Node, bool]], where: Optional[_Node], using: str,
                 with_: Optional[_Node]) -> None:
        self.primary = primary
        self.name = name
        self.keyspace = keyspace
        self.keys = keys
        self.where = where
        self.using = using
        self.with_ = with_


class _DropIndex:
    __slots__ = ("primary", "name", "keyspace")

    def __init__(self, primary: bool, name: str, keyspace: Tuple[Optional[str], str]) -> None:
        self.primary = primary
        self.name = name
        self.keyspace = keyspace


class _BuildIndex:
    __slots__ = ("keyspace", "names")

    def __init__(self, keyspace: Tuple[Optional[str], str], names: List[str]) -> None:
        self.keyspace = keyspace
        self.names = names


class _Prepare:
    __slots__ = ("name", "inner", "inner_text")

    def __init__(self, name: Optional[str], inner: Any, inner_text: str) -> None:
        self.name = name
        self.inner = inner
        self.inner_text = inner_text


class _Execute:
    __slots__ = ("name", "using")

    def __init__(self, name: str, using: Optional[_Node]) -> None:
        self.name = name
        self.using = using


class _Explain:
    __slots__ = ("inner", "inner_text")

    def __init__(self, inner: Any, inner_text: str) -> None:
        self.inner = inner
        self.inner_text = inner_text


_DDL = (_CreateIndex, _DropIndex, _BuildIndex)


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

# name -> (min args, max args or None)
_FUNCTIONS: Dict[str, Tuple[int, Optional[int]]] = {
    "LOWER": (1, 1), "UPPER": (1, 1), "LENGTH": (1, 1), "ARRAY_LENGTH": (1, 1), "ABS": (1, 1),
    "ROUND": (1, 2), "TOSTRING": (1, 1), "TO_STRING": (1, 1), "TONUMBER": (1, 1),
    "TO_NUMBER": (1, 1), "IFMISSING": (2, None), "IFNULL": (2, None), "META": (0, 1),
    "COUNT": (1, 1), "SUM": (1, 1), "AVG": (1, 1), "MIN": (1, 1), "MAX": (1, 1),
}

_CMP_OPS = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">",
            ">=": ">="}


class _Parser:
    """Recursive-descent parser of the subset (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.qmarks = 0

    # -- token helpers -----------------------------------------------------

    def peek(self, k: int = 0) -> _Tok:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else self.toks[-1]

    def advance(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def error(self, tok: Optional[_Tok] = None) -> _QueryError:
        tok = tok or self.peek()
        at = "end of input" if tok.kind == "eof" else tok.text
        return _QueryError(3000, "syntax error - at %s" % at)

    def is_kw(self, *names: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "kw" and tok.value in names

    def accept_kw(self, *names: str) -> Optional[str]:
        if self.is_kw(*names):
            return self.advance().value
        return None

    def expect_kw(self, *names: str) -> str:
        if not self.is_kw(*names):
            raise self.error()
        return self.advance().value

    def is_op(self, *ops: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "op" and tok.value in ops

    def accept_op(self, *ops: str) -> Optional[str]:
        if self.is_op(*ops):
            return self.advance().value
        return None

    def expect_op(self, op: str) -> None:
        if not self.is_op(op):
            raise self.error()
        self.advance()

    def name(self, strings: bool = False) -> str:
        tok = self.peek()
        if tok.kind in ("id", "qid") or (strings and tok.kind == "str"):
            self.advance()
            return tok.value
        raise self.error()

    def at_name(self) -> bool:
        return self.peek().kind in ("id", "qid")

    # -- statements ----------------------------------------------------------

    def parse(self) -> Any:
        stmt = self.statement()
        self.accept_op(";")
        if self.peek().kind != "eof":
            raise self.error()
        return stmt

    def _rest_text(self, tok: _Tok) -> str:
        text = self.text[tok.pos:].strip()
        while text.endswith(";"):
            text = text[:-1].rstrip()
        return text

    def statement(self, nested: bool = False) -> Any:
        tok = self.peek()
        if self.is_kw("SELECT"):
            return self.select()
        if self.is_kw("CREATE"):
            return self.create_index()
        if self.is_kw("DROP"):
            return self.drop_index()
        if self.is_kw("BUILD"):
            return self.build_index()
        if not nested and self.accept_kw("PREPARE"):
            name = None
            if (self.peek().kind in ("id", "qid", "str")
                    and (self.is_kw("FROM", k=1) or self.is_kw("AS", k=1))):
                name = self.name(strings=True)
                self.advance()
            start = self.peek()
            inner = self.statement(nested=True)
            return _Prepare(name, inner, self._rest_text(start))
        if not nested and self.accept_kw("EXECUTE"):
            name = self.name(strings=True)
            using = None
            if self.accept_kw("USING"):
                using = self.expr()
            return _Execute(name, using)
        if not nested and self.accept_kw("EXPLAIN"):
            start = self.peek()
            if not self.is_kw("SELECT"):
                raise self.error()
            return _Explain(self.select(), self._rest_text(start))
        raise self.error(tok)

    def select(self) -> _Select:
        self.expect_kw("SELECT")
        s = _Select()
        if self.accept_kw("DISTINCT"):
            s.distinct = True
        else:
            self.accept_kw("ALL")
        if self.accept_kw("RAW", "ELEMENT", "VALUE"):
            s.raw = self.expr()
        else:
            s.terms.append(self.term())
            while self.accept_op(","):
                s.terms.append(self.term())
        if self.accept_kw("FROM"):
            s.from_ = self.from_clause()
        if self.accept_kw("WHERE"):
            s.where = self.expr()
        if self.accept_kw("ORDER"):
            self.expect_kw("BY")
            while True:
                e = self.expr()
                desc = self.accept_kw("ASC", "DESC") == "DESC"
                s.order.append((e, desc))
                if not self.accept_op(","):
                    break
        while self.is_kw("LIMIT", "OFFSET"):
            which = self.advance().value
            if (which == "LIMIT" and s.limit is not None) or (which == "OFFSET" and s.offset is not None):
                raise self.error(self.toks[self.i - 1])
            e = self.expr()
            if which == "LIMIT":
                s.limit = e
            else:
                s.offset = e
        return s

    def term(self) -> _Term:
        if self.accept_op("*"):
            return _Term("star", None, None)
        e = self.expr()
        if self.is_op(".") and self.is_op("*", k=1):
            self.advance()
            self.advance()
            return _Term("pathstar", e, None)
        alias = None
        if self.accept_kw("AS"):
            alias = self.name()
        elif self.at_name():
            alias = self.name()
        return _Term("expr", e, alias)

    def keyspace_ref(self) -> Tuple[Optional[str], str]:
        if self.is_kw("SYSTEM") and self.is_op(":", k=1):
            self.advance()
            self.advance()
            return "system", self.name()
        first = self.name()
        if self.accept_op(":"):
            return first, self.name()
        return None, first

    def from_clause(self) -> _From:
        ns, name = self.keyspace_ref()
        alias = None
        if self.accept_kw("AS"):
            alias = self.name()
        elif self.at_name():
            alias = self.name()
        keys = None
        if self.accept_kw("USE"):
            self.accept_kw("PRIMARY")
            self.expect_kw("KEYS")
            keys = self.expr()
        return _From(ns, name, alias, keys)

    def using_with(self) -> Tuple[str, Optional[_Node]]:
        using = "gsi"
        with_ = None
        if self.accept_kw("USING"):
            using = self.expect_kw("GSI", "VIEW").lower()
        if self.accept_kw("WITH"):
            with_ = self.expr()
        return using, with_

    def create_index(self) -> _CreateIndex:
        self.expect_kw("CREATE")
        if self.accept_kw("PRIMARY"):
            self.expect_kw("INDEX")
            name = None if self.is_kw("ON") else self.name()
            self.expect_kw("ON")
            ks = self.keyspace_ref()
            using, with_ = self.using_with()
            return _CreateIndex(True, name, ks, [], None, using, with_)
        self.expect_kw("INDEX")
        name = self.name()
        self.expect_kw("ON")
        ks = self.keyspace_ref()
        self.expect_op("(")
        keys = []
        while True:
            e = self.expr()
            desc = self.accept_kw("ASC", "DESC") == "DESC"
            keys.append((e, desc))
            if not self.accept_op(","):
                break
        self.expect_op(")")
        where = self.expr() if self.accept_kw("WHERE") else None
        using, with_ = self.using_with()
        return _CreateIndex(False, name, ks, keys, where, using, with_)

    def drop_index(self) -> _DropIndex:
        self.expect_kw("DROP")
        if self.accept_kw("PRIMARY"):
            self.expect_kw("INDEX")
            self.expect_kw("ON")
            ks = self.keyspace_ref()
            self.using_with()
            return _DropIndex(True, "#primary", ks)
        self.expect_kw("INDEX")
        if self.at_name() and self.is_kw("ON", k=1):
            name = self.name()
            self.advance()
            ks = self.keyspace_ref()
        else:
            ks = self.keyspace_ref()
            self.expect_op(".")
            name = self.name()
        if self.accept_kw("USING"):
            self.expect_kw("GSI", "VIEW")
        return _DropIndex(False, name, ks)

    def build_index(self) -> _BuildIndex:
        self.expect_kw("BUILD")
        self.expect_kw("INDEX")
        self.expect_kw("ON")
        ks = self.keyspace_ref()
        self.expect_op("(")
        names = [self.name(strings=True)]
        while self.accept_op(","):
            names.append(self.name(strings=True))
        self.expect_op(")")
        if self.accept_kw("USING"):
            self.expect_kw("GSI", "VIEW")
        return _BuildIndex(ks, names)

    # -- expressions -------------------------------------------------------

    def expr(self) -> _Node:
        left = self.and_expr()
        while self.accept_kw("OR"):
            left = _Binary("OR", left, self.and_expr())
        return left

    def and_expr(self) -> _Node:
        left = self.not_expr()
        while self.accept_kw("AND"):
            left = _Binary("AND", left, self.not_expr())
        return left

    def not_expr(self) -> _Node:
        if self.accept_kw("NOT"):
            return _Unary("NOT", self.not_expr())
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.is_expr()
        tok = self.peek()
        if tok.kind == "op" and tok.value in _CMP_OPS:
            self.advance()
            return _Binary(_CMP_OPS[tok.value], left, self.is_expr())
        negated = False
        if self.is_kw("NOT") and self.is_kw("LIKE", "IN", "BETWEEN", k=1):
            self.advance()
            negated = True
        if self.accept_kw("LIKE"):
            return _Binary("NOT LIKE" if negated else "LIKE", left, self.is_expr())
        if self.accept_kw("IN"):
            return _Binary("NOT IN" if negated else "IN", left, self.is_expr())
        if self.accept_kw("BETWEEN"):
            low = self.is_expr()
            self.expect_kw("AND")
            return _Between(left, low, self.is_expr(), negated)
        return left

    def is_expr(self) -> _Node:
        left = self.concat()
        while self.accept_kw("IS"):
            negated = bool(self.accept_kw("NOT"))
            what = self.expect_kw("NULL", "MISSING", "VALUED", "KNOWN")
            left = _Is(left, "VALUED" if what == "KNOWN" else what, negated)
        return left

    def concat(self) -> _Node:
        left = self.additive()
        while self.accept_op("||"):
            left = _Binary("||", left, self.additive())
        return left

    def additive(self) -> _Node:
        left = self.multiplicative()
        while True:
            op = self.accept_op("+", "-")
            if op is None:
                return left
            left = _Binary(op, left, self.multiplicative())

    def multiplicative(self) -> _Node:
        left = self.unary()
        while True:
            op = self.accept_op("*", "/", "%")
            if op is None:
                return left
            left = _Binary(op, left, self.unary())

    def unary(self) -> _Node:
        if self.accept_op("-"):
            operand = self.unary()
            if isinstance(operand, _Lit) and _is_num(operand.value):
                return _Lit(-operand.value)
            return _Unary("-", operand)
        if self.accept_op("+"):
            return self.unary()
        return self.postfix()

    def postfix(self) -> _Node:
        node = self.primary()
        while True:
            if self.is_op(".") and not self.is_op("*", k=1):
                self.advance()
                node = _Field(node, self.name())
            elif self.accept_op("["):
                index = self.expr()
                self.expect_op("]")
                node = _Elem(node, index)
            else:
                return node

    def primary(self) -> _Node:
        tok = self.peek()
        kind = tok.kind
        if kind in ("num", "str"):
            self.advance()
            return _Lit(tok.value)
        if kind == "kw":
            if tok.value in ("TRUE", "FALSE", "NULL", "MISSING"):
                self.advance()
                return _Lit({"TRUE": True, "FALSE": False, "NULL": None,
                             "MISSING": MISSING}[tok.value])
            raise self.error()
        if kind == "param":
            self.advance()
            return _Param(tok.value)
        if kind == "op":
            if tok.value == "?":
                self.advance()
                self.qmarks += 1
                return _Param(self.qmarks)
            if tok.value == "(":
                self.advance()
                if self.is_kw("SELECT"):
                    raise self.error()
                e = self.expr()
                self.expect_op(")")
                return e
            if tok.value == "[":
                self.advance()
                items: List[_Node] = []
                if not self.accept_op("]"):
                    items.append(self.expr())
                    while self.accept_op(","):
                        items.append(self.expr())
                    self.expect_op("]")
                return _ArrayLit(items)
            if tok.value == "{":
                self.advance()
                pairs: List[Tuple[_Node, _Node]] = []
                if not self.accept_op("}"):
                    while True:
                        k = self.expr()
                        self.expect_op(":")
                        pairs.append((k, self.expr()))
                        if not self.accept_op(","):
                            break
                    self.expect_op("}")
                return _ObjectLit(pairs)
            raise self.error()
        if kind == "id" and self.is_op("(", k=1):
            return self.call()
        if kind in ("id", "qid"):
            self.advance()
            return _Ident(tok.value)
        raise self.error()

    def call(self) -> _Node:
        tok = self.advance()
        fname = tok.value.upper()
        self.expect_op("(")
        if fname not in _FUNCTIONS:
            raise _QueryError(3000, "Invalid function %s." % tok.value)
        args: List[_Node] = []
        star = distinct = False
        if fname == "COUNT" and self.is_op("*"):
            self.advance()
            star = True
        elif not self.is_op(")"):
            if fname in _AGGREGATES and self.accept_kw("DISTINCT"):
                distinct = True
            elif fname in _AGGREGATES:
                self.accept_kw("ALL")
            args.append(self.expr())
            while self.accept_op(","):
                args.append(self.expr())
        self.expect_op(")")
        lo, hi = _FUNCTIONS[fname]
        count = 1 if star else len(args)
        if count < lo or (hi is not None and count > hi):
            if hi is None:
                need = "at least %d" % lo
            elif lo == hi:
                need = "%d" % lo
            else:
                need = "between %d and %d" % (lo, hi)
            raise _QueryError(3000, "Number of arguments to function %s must be %s."
                              % (fname, need))
        return _Call(fname, args, star, distinct)


def _parse(text: str) -> Any:
    return _Parser(text).parse()


# ---------------------------------------------------------------------------
# Expression text (index keys, conditions, plans, sargability)
# ---------------------------------------------------------------------------


def _bq(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _fmt(node: Optional[_Node], alias: Optional[str]) -> str:
    """Canonical N1QL text of an expression, with paths relative to the
    keyspace alias (so ``b.type`` and ``type`` print alike)."""
    if node is None:
        return ""
    if isinstance(node, _Lit):
        v = node.value
        if v is MISSING:
            return "missing"
        return json.dumps(v, ensure_ascii=False, default=_json_default)
    if isinstance(node, _Param):
        return "$%s" % node.key
    if isinstance(node, _Ident):
        return _bq(node.name)
    if isinstance(node, _Field):
        base = node.base
        if isinstance(base, _Ident) and base.name == alias:
            return _bq(node.name)
        return "%s.%s" % (_fmt(base, alias), _bq(node.name))
    if isinstance(node, _Elem):
        return "%s[%s]" % (_fmt(node.base, alias), _fmt(node.index, alias))
    if isinstance(node, _Call):
        if node.name == "META":
            return "meta()"
        if node.star:
            inner = "*"
        else:
            inner = ", ".join(_fmt(a, alias) for a in node.args)
        if node.distinct:
            inner = "distinct " + inner
        return "%s(%s)" % (node.name.lower(), inner)
    if isinstance(node, _Unary):
        if node.op == "NOT":
            return "(not %s)" % _fmt(node.operand, alias)
        return "(-%s)" % _fmt(node.operand, alias)
    if isinstance(node, _Binary):
        return "(%s %s %s)" % (_fmt(node.left, alias), node.op.lower(), _fmt(node.right, alias))
    if isinstance(node, _Between):
        return "(%s %sbetween %s and %s)" % (_fmt(node.expr, alias), "not " if node.negated else "",
                                            _fmt(node.low, alias), _fmt(node.high, alias))
    if isinstance(node, _Is):
        return "(%s is %s%s)" % (_fmt(node.expr, alias), "not " if node.negated else "",
                                 node.what.lower())
    if isinstance(node, _ArrayLit):
        return "[%s]" % ", ".join(_fmt(i, alias) for i in node.items)
    if isinstance(node, _ObjectLit):
        return "{%s}" % ", ".join("%s: %s" % (_fmt(k, alias), _fmt(v, alias))
                                  for k, v in node.pairs)
    raise TypeError(node)  # pragma: no cover


def _conjuncts(node: Optional[_Node]) -> List[_Node]:
    if node is None:
        return []
    if isinstance(node, _Binary) and node.op == "AND":
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


_SARGABLE_BINARY = frozenset(["=", "!=", "<", "<=", ">", ">=", "LIKE", "NOT LIKE", "IN", "NOT IN"])


def _constrains(node: _Node, key: str, alias: Optional[str]) -> bool:
    """Whether a WHERE clause constrains the index key (text) like a real
    planner would use it as the leading key of an index span."""
    if isinstance(node, _Binary):
        if node.op == "AND":
            return _constrains(node.left, key, alias) or _constrains(node.right, key, alias)
        if node.op == "OR":
            return _constrains(node.left, key, alias) and _constrains(node.right, key, alias)
        if node.op in _SARGABLE_BINARY:
            return _fmt(node.left, alias) == key or _fmt(node.right, alias) == key
        return False
    if isinstance(node, _Between):
        return _fmt(node.expr, alias) == key
    if isinstance(node, _Is):
        ok = ((node.what == "NULL") or (node.what == "MISSING" and node.negated)
              or (node.what == "VALUED" and not node.negated))
        return ok and _fmt(node.expr, alias) == key
    return False


# ---------------------------------------------------------------------------
# Compilation of expressions into closures
# ---------------------------------------------------------------------------


class _Env:
    """What an expression sees: the document, its meta, the projected row
    (for ORDER BY) and the aggregate results."""

    __slots__ = ("doc", "meta", "proj", "aggs")

    def __init__(self) -> None:
        self.doc: Any = MISSING
        self.meta: Optional[dict] = None
        self.proj: Dict[str, Any] = {}
        self.aggs: List[Any] = []


_Fn = Callable[[_Env], Any]
_META_KEYS = ("cas", "expiration", "flags", "id", "type")


class _Params:
    def __init__(self, positional: Sequence[Any], named: Dict[str, Any]) -> None:
        self.positional = list(positional)
        self.named = dict(named)


class _AggSpec:
    __slots__ = ("name", "fn", "star", "distinct")

    def __init__(self, name: str, fn: Optional[_Fn], star: bool, distinct: bool) -> None:
        self.name = name
        self.fn = fn
        self.star = star
        self.distinct = distinct


class _Scope:
    """Name resolution for compiling one clause."""

    def __init__(self, alias: Optional[str], params: Optional[_Params],
                 proj_aliases: FrozenSet[str] = frozenset(), agg_outer: bool = False,
                 aggs: Optional[List[_AggSpec]] = None, agg_ban: Optional[str] = None) -> None:
        self.alias = alias
        self.params = params
        self.proj_aliases = proj_aliases
        self.agg_outer = agg_outer       # aggregate query: document refs not allowed here
        self.aggs = aggs                 # where aggregate calls register (None: not allowed)
        self.agg_ban = agg_ban           # message when an aggregate is not allowed

    def inner(self) -> "_Scope":
        """The scope inside an aggregate's argument."""
        return _Scope(self.alias, self.params, frozenset(), False, None,
                      "Aggregate functions cannot be nested.")


def _const(v: Any) -> _Fn:
    return lambda env: v


def _compile(node: _Node, sc: _Scope) -> _Fn:  # noqa: C901 - one dispatch
    if isinstance(node, _Lit):
        return _const(node.value)
    if isinstance(node, _Param):
        return _const(_param_value(node.key, sc.params))
    if isinstance(node, _Ident):
        return _compile_ident(node, sc)
    if isinstance(node, _Field):
        return _compile_field(node, sc)
    if isinstance(node, _Elem):
        return _elem(_compile(node.base, sc), _compile(node.index, sc))
    if isinstance(node, _Call):
        return _compile_call(node, sc)
    if isinstance(node, _Unary):
        f = _compile(node.operand, sc)
        return _not(f) if node.op == "NOT" else _neg(f)
    if isinstance(node, _Binary):
        lf = _compile(node.left, sc)
        rf = _compile(node.right, sc)
        op = node.op
        if op == "AND":
            return _and(lf, rf)
        if op == "OR":
            return _or(lf, rf)
        if op in ("=", "!=", "<", "<=", ">", ">="):
            return _compare(op, lf, rf)
        if op in ("LIKE", "NOT LIKE"):
            f = _like(lf, rf)
            return _not(f) if op == "NOT LIKE" else f
        if op in ("IN", "NOT IN"):
            f = _in(lf, rf)
            return _not(f) if op == "NOT IN" else f
        if op == "||":
            return _concat(lf, rf)
        return _arith(op, lf, rf)
    if isinstance(node, _Between):
        ef = _compile(node.expr, sc)
        f = _and(_compare(">=", ef, _compile(node.low, sc)),
                 _compare("<=", ef, _compile(node.high, sc)))
        return _not(f) if node.negated else f
    if isinstance(node, _Is):
        return _is(_compile(node.expr, sc), node.what, node.negated)
    if isinstance(node, _ArrayLit):
        fns = [_compile(i, sc) for i in node.items]

        def array(env: _Env) -> Any:
            out = []
            for f in fns:
                v = f(env)
                out.append(None if v is MISSING else v)
            return out
        return array
    if isinstance(node, _ObjectLit):
        pairs = [(_compile(k, sc), _compile(v, sc)) for k, v in node.pairs]

        def obj(env: _Env) -> Any:
            out = {}
            for kf, vf in pairs:
                k = kf(env)
                v = vf(env)
                if isinstance(k, str) and v is not MISSING:
                    out[k] = v
            return out
        return obj
    raise TypeError(node)  # pragma: no cover


def _param_value(key: Any, params: Optional[_Params]) -> Any:
    if params is None:      # validation only (PREPARE): never evaluated
        return MISSING
    if isinstance(key, int):
        if 1 <= key <= len(params.positional):
            return params.positional[key - 1]
        raise _QueryError(5010, "No value for positional parameter $%d." % key)
    if key in params.named:
        return params.named[key]
    raise _QueryError(5010, "No value for named parameter $%s." % key)


def _doc_ref(sc: _Scope, node: _Node, name: str) -> None:
    if sc.agg_outer:
        raise _QueryError(4210, "Expression %s must depend only on group keys or aggregates."
                          % _fmt(node, sc.alias))
    if sc.alias is None:
        raise _QueryError(3000, "Ambiguous reference to field %s." % name)


def _compile_ident(node: _Ident, sc: _Scope) -> _Fn:
    name = node.name
    if name in sc.proj_aliases:
        return lambda env: env.proj.get(name, MISSING)
    _doc_ref(sc, node, name)
    if name == sc.alias:
        return lambda env: env.doc
    return _doc_field(name)


def _doc_field(name: str) -> _Fn:
    def field(env: _Env) -> Any:
        d = env.doc
        if type(d) is dict or isinstance(d, dict):
            return d.get(name, MISSING)
        return MISSING
    return field


def _compile_field(node: _Field, sc: _Scope) -> _Fn:
    name = node.name
    base = node.base
    if (isinstance(base, _Call) and base.name == "META" and name in _META_KEYS
            and _meta_applies(base, sc)):
        def meta_field(env: _Env) -> Any:
            m = env.meta
            return MISSING if m is None else m.get(name, MISSING)
        return meta_field
    if isinstance(base, _Ident) and base.name == sc.alias and base.name not in sc.proj_aliases:
        _doc_ref(sc, node, base.name)
        return _doc_field(name)
    bf = _compile(base, sc)

    def field(env: _Env) -> Any:
        v = bf(env)
        if isinstance(v, dict):
            return v.get(name, MISSING)
        return MISSING
    return field


def _elem(bf: _Fn, xf: _Fn) -> _Fn:
    def elem(env: _Env) -> Any:
        b = bf(env)
        i = xf(env)
        if b is MISSING or i is MISSING:
            return MISSING
        if i is None:
            return None
        if isinstance(b, list) and _is_num(i):
            if i != int(i):
                return MISSING
            i = int(i)
            if -len(b) <= i < len(b):
                return b[i]
            return MISSING
        if isinstance(b, dict) and isinstance(i, str):
            return b.get(i, MISSING)
        return MISSING
    return elem


def _meta_applies(node: _Call, sc: _Scope) -> bool:
    if sc.agg_outer:
        raise _QueryError(4210, "Expression %s must depend only on group keys or aggregates."
                          % _fmt(node, sc.alias))
    if sc.alias is None:
        return False
    if not node.args:
        return True
    arg = node.args[0]
    return isinstance(arg, _Ident) and arg.name == sc.alias


def _compile_call(node: _Call, sc: _Scope) -> _Fn:
    name = node.name
    if name in _AGGREGATES:
        if sc.aggs is None:
            raise _QueryError(3000, sc.agg_ban or "Aggregates not allowed here.")
        fn = None if node.star else _compile(node.args[0], sc.inner())
        sc.aggs.append(_AggSpec(name, fn, node.star, node.distinct))
        slot = len(sc.aggs) - 1
        return lambda env: env.aggs[slot]
    if name == "META":
        if not _meta_applies(node, sc):
            return _const(MISSING)

        def meta(env: _Env) -> Any:
            m = env.meta
            if m is None:
                return MISSING
            return {k: m[k] for k in _META_KEYS if k in m}
        return meta
    fns = [_compile(a, sc) for a in node.args]
    if name in ("IFMISSING", "IFNULL"):
        skip_null = name == "IFNULL"

        def first(env: _Env) -> Any:
            for f in fns:
                v = f(env)
                if skip_null:
                    if v is not None:
                        return v
                elif v is not MISSING:
                    return v
            return None
        return first
    impl = _SCALARS[name]
    if len(fns) == 1:
        f0 = fns[0]
        return lambda env: impl(f0(env))
    return lambda env: impl(*[f(env) for f in fns])


def _f_lower(v: Any) -> Any:
    return v if v is MISSING else (v.lower() if isinstance(v, str) else None)


def _f_upper(v: Any) -> Any:
    return v if v is MISSING else (v.upper() if isinstance(v, str) else None)


def _f_length(v: Any) -> Any:
    return v if v is MISSING else (len(v.encode("utf-8")) if isinstance(v, str) else None)


def _f_array_length(v: Any) -> Any:
    return v if v is MISSING else (len(v) if isinstance(v, list) else None)


def _f_abs(v: Any) -> Any:
    return v if v is MISSING else (abs(v) if _is_num(v) else None)


def _f_round(v: Any, digits: Any = 0) -> Any:
    if v is MISSING or digits is MISSING:
        return MISSING
    if not _is_num(v) or not _is_num(digits) or digits != int(digits):
        return None
    try:
        q = Decimal(str(v)).quantize(Decimal(1).scaleb(-int(digits)), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        return v
    return _num_result(float(q)) if int(digits) > 0 else _num_result(int(q))


def _number_text(v: Any) -> str:
    if type(v) is float and v.is_integer() and abs(v) < 1e21:
        return str(int(v))
    return repr(v) if type(v) is float else str(v)


def _f_tostring(v: Any) -> Any:
    if v is MISSING or v is None:
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_num(v):
        return _number_text(v)
    if isinstance(v, str):
        return v
    return _COMPACT.encode(v)


def _f_tonumber(v: Any) -> Any:
    if v is MISSING or v is None:
        return v
    if isinstance(v, bool):
        return 1 if v else 0
    if _is_num(v):
        return v
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            f = float(s)
        except ValueError:
            return None
        return _num_result(f) if math.isfinite(f) and s.lower() not in ("inf", "nan") else None
    return None


_SCALARS: Dict[str, Callable[..., Any]] = {
    "LOWER": _f_lower, "UPPER": _f_upper, "LENGTH": _f_length, "ARRAY_LENGTH": _f_array_length,
    "ABS": _f_abs, "ROUND": _f_round, "TOSTRING": _f_tostring, "TO_STRING": _f_tostring,
    "TONUMBER": _f_tonumber, "TO_NUMBER": _f_tonumber,
}


def _not(f: _Fn) -> _Fn:
    def not_(env: _Env) -> Any:
        v = f(env)
        if v is MISSING or v is None:
            return v
        return not _truth(v)
    return not_


def _neg(f: _Fn) -> _Fn:
    def neg(env: _Env) -> Any:
        v = f(env)
        if v is MISSING:
            return v
        return -v if _is_num(v) else None
    return neg


def _and(lf: _Fn, rf: _Fn) -> _Fn:
    def and_(env: _Env) -> Any:
        missing = null = False
        for f in (lf, rf):
            v = f(env)
            if v is MISSING:
                missing = True
            elif v is None:
                null = True
            elif not _truth(v):
                return False
        if missing:
            return MISSING
        return None if null else True
    return and_


def _or(lf: _Fn, rf: _Fn) -> _Fn:
    def or_(env: _Env) -> Any:
        missing = null = False
        for f in (lf, rf):
            v = f(env)
            if v is MISSING:
                missing = True
            elif v is None:
                null = True
            elif _truth(v):
                return True
        if null:
            return None
        return MISSING if missing else False
    return or_


def _compare(op: str, lf: _Fn, rf: _Fn) -> _Fn:
    if op == "=":
        def test(a: Any, b: Any) -> bool:
            return _equal(a, b)
    elif op == "!=":
        def test(a: Any, b: Any) -> bool:
            return not _equal(a, b)
    elif op == "<":
        test = _less
    elif op == ">":
        def test(a: Any, b: Any) -> bool:
            return _less(b, a)
    elif op == "<=":
        def test(a: Any, b: Any) -> bool:
            return not _less(b, a)
    else:
        def test(a: Any, b: Any) -> bool:
            return not _less(a, b)

    def compare(env: _Env) -> Any:
        a = lf(env)
        b = rf(env)
        if a is MISSING or b is MISSING:
            return MISSING
        if a is None or b is None:
            return None
        return test(a, b)
    return compare


def _like_regex(pattern: str) -> "re.Pattern[str]":
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.S)


def _like(lf: _Fn, rf: _Fn) -> _Fn:
    cache: Dict[str, "re.Pattern[str]"] = {}

    def like(env: _Env) -> Any:
        s = lf(env)
        p = rf(env)
        if s is MISSING or p is MISSING:
            return MISSING
        if not isinstance(s, str) or not isinstance(p, str):
            return None
        rx = cache.get(p)
        if rx is None:
            if len(cache) > 64:
                cache.clear()
            rx = cache[p] = _like_regex(p)
        return rx.fullmatch(s) is not None
    return like


def _in(lf: _Fn, rf: _Fn) -> _Fn:
    def in_(env: _Env) -> Any:
        x = lf(env)
        arr = rf(env)
        if x is MISSING or arr is MISSING:
            return MISSING
        if not isinstance(arr, list) or x is None:
            return None
        for item in arr:
            if item is not None and _equal(x, item):
                return True
        return False
    return in_


def _is(f: _Fn, what: str, negated: bool) -> _Fn:
    if what == "NULL":
        def check(v: Any) -> Any:
            if v is MISSING:
                return MISSING
            return (v is not None) if negated else (v is None)
    elif what == "MISSING":
        def check(v: Any) -> Any:
            return (v is not MISSING) if negated else (v is MISSING)
    else:
        def check(v: Any) -> Any:
            valued = v is not MISSING and v is not None
            return (not valued) if negated else valued
    return lambda env: check(f(env))


def _concat(lf: _Fn, rf: _Fn) -> _Fn:
    def concat(env: _Env) -> Any:
        a = lf(env)
        b = rf(env)
        if a is MISSING or b is MISSING:
            return MISSING
        if isinstance(a, str) and isinstance(b, str):
            return a + b
        return None
    return concat


def _mod(a: Any, b: Any) -> Any:
    if type(a) is int and type(b) is int:
        r = abs(a) % abs(b)
        return -r if a < 0 else r
    return math.fmod(a, b)


def _arith(op: str, lf: _Fn, rf: _Fn) -> _Fn:
    def arith(env: _Env) -> Any:
        a = lf(env)
        b = rf(env)
        if a is MISSING or b is MISSING:
            return MISSING
        if not _is_num(a) or not _is_num(b):
            return None
        try:
            if op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "*":
                r = a * b
            elif op == "/":
                if b == 0:
                    return None
                r = a / b
            else:
                if b == 0:
                    return None
                r = _mod(a, b)
        except OverflowError:
            return None
        return _num_result(r)
    return arith


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------


class _Acc:
    """Accumulator of one aggregate over the rows that pass WHERE."""

    __slots__ = ("spec", "count", "total", "best", "seen")

    def __init__(self, spec: _AggSpec) -> None:
        self.spec = spec
        self.count = 0
        self.total: Any = 0
        self.best: Any = MISSING
        self.seen: Optional[set] = set() if spec.distinct else None

    def add(self, env: _Env) -> None:
        spec = self.spec
        if spec.star:
            self.count += 1
            return
        assert spec.fn is not None
        v = spec.fn(env)
        if v is MISSING or v is None:
            return
        if self.seen is not None:
            k = _ckey(v)
            if k in self.seen:
                return
            self.seen.add(k)
        name = spec.name
        if name == "COUNT":
            self.count += 1
        elif name in ("SUM", "AVG"):
            if _is_num(v):
                self.count += 1
                self.total += v
        elif self.best is MISSING:
            self.best = v
        elif (name == "MIN" and _less(v, self.best)) or (name == "MAX" and _less(self.best, v)):
            self.best = v

    def result(self) -> Any:
        name = self.spec.name
        if name == "COUNT":
            return self.count
        if name == "SUM":
            return _num_result(self.total) if self.count else None
        if name == "AVG":
            return _num_result(self.total / self.count) if self.count else None
        return None if self.best is MISSING else self.best


# ---------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------


class _Index:
    __slots__ = ("id", "name", "keyspace", "primary", "key_texts", "lead", "condition",
                 "cond_terms", "state", "using", "ready_at")

    def __init__(self, name: str, keyspace: str, primary: bool, key_texts: List[str],
                 lead: Optional[str], condition: Optional[str], cond_terms: List[str],
                 state: str, using: str) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.name = name
        self.keyspace = keyspace
        self.primary = primary
        self.key_texts = key_texts
        self.lead = lead
        self.condition = condition
        self.cond_terms = cond_terms
        self.state = state
        self.using = using
        self.ready_at = 0.0

    def row(self) -> dict:
        out: Dict[str, Any] = {}
        if self.condition:
            out["condition"] = self.condition
        out["id"] = self.id
        out["index_key"] = list(self.key_texts)
        if self.primary:
            out["is_primary"] = True
        out["keyspace_id"] = self.keyspace
        out["name"] = self.name
        out["namespace_id"] = "default"
        out["state"] = self.state
        out["using"] = self.using
        return out


class _Prepared:
    __slots__ = ("name", "text", "inner_text", "stmt", "encoded_plan", "operator", "signature")

    def __init__(self, name: str, text: str, inner_text: str, stmt: Any, encoded_plan: str,
                 operator: dict, signature: Any) -> None:
        self.name = name
        self.text = text
        self.inner_text = inner_text
        self.stmt = stmt
        self.encoded_plan = encoded_plan
        self.operator = operator
        self.signature = signature

    def result(self) -> dict:
        return {"encoded_plan": self.encoded_plan, "name": self.name, "operator": self.operator,
                "signature": self.signature, "text": self.text}


def _encode_plan(name: str, inner_text: str, text: str) -> str:
    blob = json.dumps({"v": 1, "name": name, "statement": inner_text, "text": text},
                      sort_keys=True).encode("utf-8")
    return base64.b64encode(zlib.compress(blob)).decode("ascii")


def _decode_plan(encoded: Any) -> dict:
    try:
        blob = zlib.decompress(base64.b64decode(encoded, validate=True))
        plan = json.loads(blob)
    except (TypeError, ValueError, binascii.Error, zlib.error):
        raise _QueryError(4070, "Unable to decode prepared statement") from None
    if (not isinstance(plan, dict) or plan.get("v") != 1
            or not isinstance(plan.get("name"), str) or not isinstance(plan.get("statement"), str)
            or not isinstance(plan.get("text"), str)):
        raise _QueryError(4070, "Unable to decode prepared statement")
    return plan


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------

_CONSISTENCIES = ("not_bounded", "request_plus", "statement_plus", "at_plus")
_BOOL_FIELDS = ("readonly", "pretty", "metrics", "signature", "auto_execute", "use_fts",
                "use_cbo", "controls", "tximplicit", "preserve_expiry", "use_replica",
                "auto_prepare", "sort_projection")
_INT_FIELDS = ("max_parallelism", "scan_cap", "pipeline_batch", "pipeline_cap", "memory_quota",
               "txstmtnum", "numatrs", "n1ql_feat_ctrl")
_DURATION_FIELDS = ("timeout", "scan_wait", "kvtimeout", "txtimeout", "durability_timeout")
_IGNORED_FIELDS = ("query_context", "namespace", "encoding", "format", "compression", "txid",
                   "txdata", "durability_level", "atrcollection", "batch_args",
                   "batch_named_args", "client_context_id", "creds", "statement", "prepared",
                   "encoded_plan", "args", "scan_consistency", "scan_vectors", "profile")
_KNOWN_FIELDS = frozenset(_BOOL_FIELDS + _INT_FIELDS + _DURATION_FIELDS + _IGNORED_FIELDS)
_READONLY_MSG = "The server or request is read-only and cannot accept this write statement."


def _bad(field: str, value: Any) -> _QueryError:
    try:
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
    except (TypeError, ValueError):
        shown = repr(value)
    return _QueryError(1050, "Invalid value for %s: %s" % (field, shown))


def _as_bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(field, value)


class _Options:
    def __init__(self) -> None:
        self.client_context_id: Optional[str] = None
        self.pretty = False
        self.metrics = True
        self.signature = True
        self.profile = "off"
        self.readonly = False
        self.timeout_ns = 0
        self.timeout_text = ""
        self.statement: Optional[str] = None
        self.prepared: Optional[str] = None
        self.encoded_plan: Optional[str] = None
        self.args: Optional[List[Any]] = None
        self.named: Dict[str, Any] = {}


class _Response:
    """State of one response while it is produced."""

    def __init__(self, started: int) -> None:
        self.request_id = str(uuid.uuid4())
        self.started = started
        self.exec_started = started
        self.opts = _Options()


class _Run:
    """A planned statement: its signature and a factory of its rows."""

    def __init__(self, signature: Any, rows: Callable[["_Stats"], Iterator[Any]],
                 operator: Optional[dict] = None, sorts: bool = False,
                 scan_phase: Optional[str] = None, fetches: bool = False) -> None:
        self.signature = signature
        self.rows = rows
        self.operator = operator
        self.sorts = sorts
        self.scan_phase = scan_phase
        self.fetches = fetches


class _Stats:
    def __init__(self, deadline: Optional[float]) -> None:
        self.deadline = deadline
        self.scanned = 0
        self.sorted = 0


_index_clock: Callable[[], float] = time.monotonic
"""Clock of index builds (a module attribute so tests can move it)."""

_NO_SIGNATURE = object()
_BATCH_ROWS = 256
_BATCH_BYTES = 64 * 1024


def _sig_type(node: Optional[_Node]) -> str:
    if isinstance(node, _Lit):
        v = node.value
        if isinstance(v, bool):
            return "boolean"
        if _is_num(v):
            return "number"
        if isinstance(v, str):
            return "string"
        return "json"
    if isinstance(node, (_Between, _Is)):
        return "boolean"
    if isinstance(node, _Unary):
        return "boolean" if node.op == "NOT" else "number"
    if isinstance(node, _Binary):
        if node.op in ("+", "-", "*", "/", "%"):
            return "number"
        if node.op == "||":
            return "string"
        return "boolean"
    if isinstance(node, _Call):
        if node.name in ("LOWER", "UPPER", "TOSTRING", "TO_STRING"):
            return "string"
        if node.name in ("LENGTH", "ARRAY_LENGTH", "ABS", "ROUND", "TONUMBER", "TO_NUMBER",
                         "COUNT", "SUM", "AVG"):
            return "number"
        if node.name == "META":
            return "object"
        return "json"
    if isinstance(node, _ArrayLit):
        return "array"
    if isinstance(node, _ObjectLit):
        return "object"
    return "json"


def _term_names(terms: List[_Term]) -> List[Optional[str]]:
    names: List[Optional[str]] = []
    unnamed = 0
    for t in terms:
        if t.kind != "expr":
            names.append(None)
            continue
        name = t.alias
        if name is None:
            e = t.expr
            if isinstance(e, _Field):
                name = e.name
            elif isinstance(e, _Ident):
                name = e.name
        if name is None:
            unnamed += 1
            name = "$%d" % unnamed
        names.append(name)
    return names


def _signature(stmt: _Select) -> Any:
    if stmt.raw is not None:
        return _sig_type(stmt.raw)
    sig: Dict[str, Any] = {}
    for term, name in zip(stmt.terms, _term_names(stmt.terms)):
        if name is None:
            sig["*"] = "*"
        else:
            sig[name] = _sig_type(term.expr)
    return sig


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


class Keyspace(Protocol):
    """What the engine needs from one bucket (the emulator provides it)."""

    name: str

    def scan(self) -> Iterable[Tuple[str, Any, dict]]:
        """Every live document as ``(id, decoded JSON value or None for
        non-JSON, meta)``; meta has ``id``, ``cas``, ``flags``,
        ``expiration``, ``type`` (``json`` or ``base64``)."""
        ...

    def get(self, doc_id: str) -> Optional[Tuple[Any, dict]]:
        """``(value, meta)`` of one document, or ``None`` (for USE KEYS)."""
        ...

    def mutation_count(self) -> int:
        """A number that grows with every mutation (not needed by this engine)."""
        ...


class QueryService:
    """The N1QL subset engine of one emulated cluster.

    ``keyspaces`` is called at each request and returns the current buckets
    by name.  ``cluster_capabilities`` is the cluster's capability object
    (``{"n1ql": ["enhancedPreparedStatements"]}`` turns on generated,
    text-derived prepared names).  ``build_delay`` is how long an index stays
    ``building`` after BUILD INDEX (0 or less: online at once).  Thread-safe.
    """

    PREPARED_CACHE_SIZE = 16384

    def __init__(self, keyspaces: Callable[[], Dict[str, Keyspace]],
                 cluster_capabilities: Optional[dict] = None, *, build_delay: float = 0.2) -> None:
        self._keyspaces = keyspaces
        caps = cluster_capabilities or {}
        n1ql_caps = caps.get("n1ql") if isinstance(caps, dict) else None
        self._enhanced = (isinstance(n1ql_caps, (list, tuple))
                          and "enhancedPreparedStatements" in n1ql_caps)
        self._build_delay = float(build_delay)
        self._lock = threading.RLock()
        self._indexes: Dict[str, "OrderedDict[str, _Index]"] = {}
        self._prepared: "OrderedDict[str, _Prepared]" = OrderedDict()

    # -- public ------------------------------------------------------------

    def execute(self, request: Dict[str, Any]) -> Tuple[int, Iterator[bytes]]:
        """Run one request (its decoded fields) and answer ``(http_status,
        chunks)``; the chunks are produced lazily and together form the
        response JSON object."""
        resp = _Response(time.monotonic_ns())
        try:
            self._read_options(request, resp)
            keyspaces = self._maintain()
            resp.exec_started = time.monotonic_ns()
            run = self._plan_request(resp.opts, keyspaces)
        except _QueryError as err:
            return err.http, self._error_body(resp, err)
        except Exception as exc:  # a failing keyspace provider, or a bug
            internal = _QueryError(5000, "Internal error: %s" % (exc,))
            return 500, self._error_body(resp, internal)
        return 200, self._body(resp, run)

    def indexes(self) -> List[dict]:
        """The index rows ``system:indexes`` shows (for debugging/tests)."""
        self._maintain()
        return self._index_rows()

    def forget_keyspace(self, name: str) -> None:
        """Drop every index of a keyspace (e.g. when a bucket is deleted)."""
        with self._lock:
            self._indexes.pop(name, None)

    # -- requests ----------------------------------------------------------

    def _read_options(self, request: Any, resp: _Response) -> None:
        o = resp.opts
        if not isinstance(request, dict):
            raise _QueryError(1050, "Invalid value for request: not an object")
        if "client_context_id" in request:
            ccid = request["client_context_id"]
            o.client_context_id = ccid if isinstance(ccid, str) else json.dumps(ccid)
        for field in ("pretty", "metrics", "signature"):
            if field in request:
                setattr(o, field, _as_bool(field, request[field]))
        for field, value in request.items():
            if not isinstance(field, str):
                raise _QueryError(1065, "Unrecognized parameter in request: %s" % (field,))
            if field.startswith("$") and len(field) > 1:
                o.named[field[1:]] = value
                continue
            if field not in _KNOWN_FIELDS:
                raise _QueryError(1065, "Unrecognized parameter in request: %s" % field)
            if field in _BOOL_FIELDS:
                flag = _as_bool(field, value)
                if field == "readonly":
                    o.readonly = flag
            elif field in _INT_FIELDS:
                if isinstance(value, bool) or not (
                        isinstance(value, int)
                        or (isinstance(value, float) and value.is_integer())
                        or (isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value))):
                    raise _bad(field, value)
            elif field in _DURATION_FIELDS:
                try:
                    ns = parse_go_duration(value)
                except ValueError:
                    raise _bad(field, value) from None
                if field == "timeout":
                    o.timeout_ns = ns
                    o.timeout_text = value
        stmt = request.get("statement")
        if stmt is not None and not isinstance(stmt, str):
            raise _bad("statement", stmt)
        o.statement = stmt
        prepared = request.get("prepared")
        if isinstance(prepared, dict) and isinstance(prepared.get("name"), str):
            if "encoded_plan" not in request and isinstance(prepared.get("encoded_plan"), str):
                o.encoded_plan = prepared["encoded_plan"]
            prepared = prepared["name"]
        if prepared is not None and not isinstance(prepared, str):
            raise _bad("prepared", prepared)
        o.prepared = prepared
        if "encoded_plan" in request:
            if not isinstance(request["encoded_plan"], str):
                raise _bad("encoded_plan", request["encoded_plan"])
            o.encoded_plan = request["encoded_plan"]
        if "args" in request:
            if not isinstance(request["args"], list):
                raise _bad("args", request["args"])
            o.args = request["args"]
        consistency = request.get("scan_consistency")
        if consistency is not None:
            if not isinstance(consistency, str) or consistency.lower() not in _CONSISTENCIES:
                raise _bad("scan_consistency", consistency)
            vectors = request.get("scan_vectors")
            if consistency.lower() == "at_plus" and not isinstance(vectors, (dict, list)):
                raise _bad("scan_vectors", vectors if vectors is not None else "missing (needed with at_plus)")
        if "scan_vectors" in request and not isinstance(request["scan_vectors"], (dict, list)):
            raise _bad("scan_vectors", request["scan_vectors"])
        if "profile" in request:
            prof = request["profile"]
            if not isinstance(prof, str) or prof.lower() not in ("off", "phases", "timings"):
                raise _bad("profile", prof)
            o.profile = prof.lower()
        if "creds" in request:
            creds = request["creds"]
            if not isinstance(creds, list) or not all(isinstance(c, dict) for c in creds):
                raise _bad("creds", creds)
        if o.statement is None and o.prepared is None:
            raise _QueryError(1060, "No statement or prepared value")

    def _maintain(self) -> Dict[str, Keyspace]:
        keyspaces = self._keyspaces()
        now = _index_clock()
        with self._lock:
            for name in [n for n in self._indexes if n not in keyspaces]:
                del self._indexes[name]
            for catalog in self._indexes.values():
                for idx in catalog.values():
                    if idx.state == "building" and now >= idx.ready_at:
                        idx.state = "online"
        return keyspaces

    def _index_rows(self) -> List[dict]:
        with self._lock:
            rows = [idx.row() for cat in self._indexes.values() for idx in cat.values()]
        rows.sort(key=lambda r: (r["keyspace_id"], r["name"]))
        return rows

    # -- planning ----------------------------------------------------------

    def _plan_request(self, o: _Options, keyspaces: Dict[str, Keyspace]) -> _Run:
        if o.prepared is not None:
            entry = self._lookup_prepared(o.prepared, o.encoded_plan)
            return self._plan_prepared(entry, o, keyspaces, o.args, o.named)
        assert o.statement is not None
        stmt = _parse(o.statement)
        if isinstance(stmt, _Execute):
            entry = self._lookup_prepared(stmt.name, None)
            args, named = o.args, o.named
            if stmt.using is not None:
                using = _compile(stmt.using, _Scope(None, _Params(o.args or [], o.named)))(_Env())
                if isinstance(using, list):
                    args = using
                elif isinstance(using, dict):
                    named = dict(named)
                    named.update((k.lstrip("$"), v) for k, v in using.items())
                else:
                    raise _QueryError(3000, "syntax error - at USING")
            return self._plan_prepared(entry, o, keyspaces, args, named)
        if isinstance(stmt, _Prepare):
            return self._do_prepare(stmt, o.statement.strip().rstrip(";").rstrip(), keyspaces)
        params = _Params(o.args or [], o.named)
        if isinstance(stmt, _Explain):
            run = self._plan_select(stmt.inner, None, keyspaces, o)
            row = {"plan": run.operator, "text": stmt.inner_text}
            return _Run({"plan": "json", "text": "json"}, lambda stats: iter([row]))
        return self._plan_statement(stmt, params, keyspaces, o)

    def _plan_statement(self, stmt: Any, params: Optional[_Params],
                        keyspaces: Dict[str, Keyspace], o: _Options) -> _Run:
        if isinstance(stmt, _DDL):
            if o.readonly:
                raise _QueryError(1000, _READONLY_MSG)
            return self._run_ddl(stmt, keyspaces)
        return self._plan_select(stmt, params, keyspaces, o)

    def _plan_prepared(self, entry: _Prepared, o: _Options, keyspaces: Dict[str, Keyspace],
                       args: Optional[List[Any]], named: Dict[str, Any]) -> _Run:
        run = self._plan_statement(entry.stmt, _Params(args or [], named), keyspaces, o)
        run.signature = entry.signature if not isinstance(entry.stmt, _DDL) else run.signature
        return run

    def _lookup_prepared(self, name: str, encoded_plan: Optional[str]) -> _Prepared:
        with self._lock:
            entry = self._prepared.get(name)
            if entry is not None:
                self._prepared.move_to_end(name)
                if encoded_plan is not None and encoded_plan != entry.encoded_plan:
                    raise _QueryError(4080, "Encoded plan parameter does not match encoded plan of %s"
                                      % name)
                return entry
        if encoded_plan is None:
            raise _QueryError(4040, "No such prepared statement: %s" % name)
        plan = _decode_plan(encoded_plan)
        if plan["name"] != name:
            raise _QueryError(4080, "Encoded plan parameter does not match encoded plan of %s" % name)
        try:
            inner = _Parser(plan["statement"]).parse()
        except _QueryError:
            raise _QueryError(4070, "Unable to decode prepared statement") from None
        if isinstance(inner, (_Prepare, _Execute, _Explain)):
            raise _QueryError(4070, "Unable to decode prepared statement")
        entry = self._make_prepared(name, plan["text"], plan["statement"], inner, None)
        entry.encoded_plan = encoded_plan
        self._store_prepared(entry)
        return entry

    def _make_prepared(self, name: str, text: str, inner_text: str, inner: Any,
                       operator: Optional[dict]) -> _Prepared:
        if isinstance(inner, _Select):
            signature: Any = _signature(inner)
        else:
            signature = None
        if operator is None:
            operator = {"#operator": "Sequence", "~children": []}
        return _Prepared(name, text, inner_text, inner, _encode_plan(name, inner_text, text),
                         operator, signature)

    def _store_prepared(self, entry: _Prepared) -> None:
        with self._lock:
            self._prepared[entry.name] = entry
            self._prepared.move_to_end(entry.name)
            while len(self._prepared) > self.PREPARED_CACHE_SIZE:
                self._prepared.popitem(last=False)

    def _do_prepare(self, stmt: _Prepare, text: str, keyspaces: Dict[str, Keyspace]) -> _Run:
        inner = stmt.inner
        if isinstance(inner, _Select):
            operator = self._plan_select(inner, None, keyspaces, _Options()).operator
        else:
            operator = self._ddl_operator(inner)
        name = stmt.name
        if name is None:
            if self._enhanced:
                name = str(uuid.uuid5(uuid.NAMESPACE_URL, "n1ql:" + stmt.inner_text))
            else:
                name = str(uuid.uuid4())
        with self._lock:
            old = self._prepared.get(name)
            if old is not None and old.inner_text != stmt.inner_text:
                raise _QueryError(4060, "Unable to add name: duplicate name: %s" % name)
            entry = self._make_prepared(name, text, stmt.inner_text, inner, operator)
            if old is not None:
                entry.encoded_plan = old.encoded_plan
            self._store_prepared(entry)
        row = entry.result()
        return _Run({"json": "json"}, lambda stats: iter([row]))

    # -- SELECT --------------------------------------------------------------

    def _source(self, stmt: _Select, keyspaces: Dict[str, Keyspace], params: Optional[_Params],
                ) -> Tuple[Optional[str], Callable[[], Iterable[Tuple[Any, Any, Any]]], dict,
                           Optional[str]]:
        """(alias, source factory, scan operator, profile phase name)."""
        fr = stmt.from_
        if fr is None:
            return None, lambda: iter([(None, MISSING, None)]), {"#operator": "DummyScan"}, None
        ns = fr.namespace
        if ns == "system":
            if fr.name != "indexes":
                raise _QueryError(12003, "Keyspace not found in CB datastore: system:%s" % fr.name)
            alias = fr.alias or fr.name

            def system_rows() -> Iterable[Tuple[Any, Any, Any]]:
                for row in self._index_rows():
                    yield row["id"], row, None
            return alias, system_rows, {"#operator": "PrimaryScan", "index": "#primary",
                                        "keyspace": "indexes", "namespace": "#system",
                                        "using": "system"}, "primaryScan"
        if ns is not None and ns != "default":
            raise _QueryError(12002, "Namespace not found in CB datastore: %s" % ns)
        ks = keyspaces.get(fr.name)
        if ks is None:
            raise _QueryError(12003, "Keyspace not found in CB datastore: default:%s" % fr.name)
        alias = fr.alias or fr.name
        if fr.keys is not None:
            keys_text = _fmt(fr.keys, None)
            if params is None:
                _compile(fr.keys, _Scope(None, None))
                keys: List[str] = []
            else:
                kv = _compile(fr.keys, _Scope(None, params))(_Env())
                if isinstance(kv, str):
                    keys = [kv]
                elif isinstance(kv, list):
                    keys = [k for k in kv if isinstance(k, str)]
                else:
                    keys = []

            def by_keys() -> Iterable[Tuple[Any, Any, Any]]:
                for k in keys:
                    found = ks.get(k)
                    if found is not None:
                        yield k, found[0], found[1]
            return alias, by_keys, {"#operator": "KeyScan", "keys": keys_text}, "keyScan"
        idx = self._choose_index(fr.name, stmt.where, alias)
        if idx is None:
            raise _QueryError(4000, "No index available on keyspace %s that matches your query. "
                              "Use CREATE PRIMARY INDEX ON %s to create a primary index, or check "
                              "that your expected index is online." % (fr.name, fr.name))
        if idx.primary:
            op = {"#operator": "PrimaryScan3", "index": idx.name, "keyspace": fr.name,
                  "namespace": "default", "using": idx.using}
            phase = "primaryScan"
        else:
            op = {"#operator": "IndexScan3", "index": idx.name, "index_id": idx.id,
                  "keyspace": fr.name, "namespace": "default", "using": idx.using}
            phase = "indexScan"
        return alias, ks.scan, op, phase

    def _choose_index(self, keyspace: str, where: Optional[_Node], alias: str) -> Optional[_Index]:
        now = _index_clock()
        with self._lock:
            catalog = list(self._indexes.get(keyspace, {}).values())
            for idx in catalog:
                if idx.state == "building" and now >= idx.ready_at:
                    idx.state = "online"
        primary = None
        terms = {_fmt(c, alias) for c in _conjuncts(where)}
        for idx in catalog:
            if idx.state != "online":
                continue
            if idx.primary:
                primary = primary or idx
                continue
            if (where is not None and idx.lead is not None
                    and _constrains(where, idx.lead, alias)
                    and all(t in terms for t in idx.cond_terms)):
                return idx
        return primary

    def _plan_select(self, stmt: _Select, params: Optional[_Params],  # noqa: C901
                     keyspaces: Dict[str, Keyspace], o: _Options) -> _Run:
        alias, source, scan_op, phase = self._source(stmt, keyspaces, params)
        scope = _Scope(alias, params, agg_ban="Aggregates not allowed in WHERE.")
        where = _compile(stmt.where, scope) if stmt.where is not None else None

        aggregate = (_has_aggregate(stmt.raw) or any(_has_aggregate(t.expr) for t in stmt.terms)
                     or any(_has_aggregate(e) for e, _ in stmt.order))
        specs: List[_AggSpec] = []
        pscope = _Scope(alias, params, agg_outer=aggregate, aggs=specs if aggregate else None,
                        agg_ban="Aggregates not allowed here.")
        names = _term_names(stmt.terms)
        project: Callable[[_Env], Any]
        if stmt.raw is not None:
            project = _compile(stmt.raw, pscope)
        else:
            parts: List[Tuple[str, Optional[_Fn], Optional[str]]] = []
            for term, name in zip(stmt.terms, names):
                if term.kind == "star":
                    if aggregate:
                        raise _QueryError(4210, "Expression * must depend only on group keys or "
                                          "aggregates.")
                    parts.append(("star", None, alias))
                else:
                    assert term.expr is not None
                    parts.append((term.kind, _compile(term.expr, pscope), name))
            project = _projector(parts)
        proj_aliases = frozenset(n for n in names if n is not None)
        oscope = _Scope(alias, params, proj_aliases, agg_outer=aggregate,
                        aggs=specs if aggregate else None, agg_ban="Aggregates not allowed here.")
        order = [(_compile(e, oscope), desc) for e, desc in stmt.order]
        limit = self._bound(stmt.limit, "LIMIT", params)
        offset = self._bound(stmt.offset, "OFFSET", params) or 0
        distinct = stmt.distinct
        raw = stmt.raw is not None
        signature = _signature(stmt)
        operator = _select_operator(stmt, alias, scan_op)
        if params is None:
            return _Run(signature, lambda stats: iter(()), operator)

        def filtered(stats: _Stats) -> Iterator[_Env]:
            env = _Env()
            deadline = stats.deadline
            if deadline is not None and time.monotonic() > deadline:
                raise _Timeout()
            for _doc_id, value, meta in source():
                stats.scanned += 1
                if deadline is not None and not stats.scanned & 127 and time.monotonic() > deadline:
                    raise _Timeout()
                if value is None and meta is not None and meta.get("type") != "json":
                    value = _BinaryDoc(meta.get("size"))
                env.doc = value
                env.meta = meta
                if where is None or _truth(where(env)):
                    yield env

        def rows(stats: _Stats) -> Iterator[Any]:
            if aggregate:
                accs = [_Acc(s) for s in specs]
                for env in filtered(stats):
                    for acc in accs:
                        acc.add(env)
                out = _Env()
                out.aggs = [acc.result() for acc in accs]
                envs: Iterable[_Env] = [out]
            else:
                envs = filtered(stats)
            projected = _project_rows(envs, project, raw, order)
            if distinct:
                projected = _distinct(projected)
            if order:
                if limit is not None:
                    items = heapq.nsmallest(offset + limit, _counting(projected, stats),
                                            key=_first)
                else:
                    items = sorted(_counting(projected, stats), key=_first)
                stream: Iterator[Any] = (row for _k, row in items[offset:])
            else:
                stream = (row for _k, row in projected)
                if offset:
                    stream = _skip(stream, offset)
            if limit is not None:
                stream = _take(stream, limit)
            return stream
        fetches = stmt.from_ is not None and stmt.from_.namespace != "system"
        return _Run(signature, rows, operator, sorts=bool(order), scan_phase=phase,
                    fetches=fetches)

    def _bound(self, node: Optional[_Node], what: str, params: Optional[_Params]) -> Optional[int]:
        if node is None:
            return None
        fn = _compile(node, _Scope(None, params))
        if params is None:
            return None
        v = fn(_Env())
        if not _is_num(v) or v < 0:
            raise _QueryError(5030, "Invalid %s value %s." % (what, _f_tostring(v) if v is not MISSING
                                                               else "missing"))
        return int(v)

    # -- index DDL ---------------------------------------------------------

    def _ddl_operator(self, stmt: Any) -> dict:
        ks = stmt.keyspace[1]
        if isinstance(stmt, _CreateIndex):
            return {"#operator": "CreatePrimaryIndex" if stmt.primary else "CreateIndex",
                    "index": stmt.name or "#primary", "keyspace": ks, "namespace": "default"}
        if isinstance(stmt, _DropIndex):
            return {"#operator": "DropIndex", "index": stmt.name, "keyspace": ks,
                    "namespace": "default"}
        return {"#operator": "BuildIndexes", "indexes": list(stmt.names), "keyspace": ks,
                "namespace": "default"}

    def _ddl_keyspace(self, ref: Tuple[Optional[str], str], keyspaces: Dict[str, Keyspace]) -> str:
        ns, name = ref
        if ns == "system":
            raise _QueryError(12003, "Keyspace not found in CB datastore: system:%s" % name)
        if ns is not None and ns != "default":
            raise _QueryError(12002, "Namespace not found in CB datastore: %s" % ns)
        if name not in keyspaces:
            raise _QueryError(12003, "Keyspace not found in CB datastore: default:%s" % name)
        return name

    def _run_ddl(self, stmt: Any, keyspaces: Dict[str, Keyspace]) -> _Run:
        ks = self._ddl_keyspace(stmt.keyspace, keyspaces)
        if isinstance(stmt, _CreateIndex):
            self._create_index(stmt, ks)
        elif isinstance(stmt, _DropIndex):
            with self._lock:
                catalog = self._indexes.get(ks, OrderedDict())
                if stmt.name not in catalog:
                    raise _QueryError(12016, "Index Not Found - cause: GSI index %s not found."
                                      % stmt.name, status="errors")
                del catalog[stmt.name]
        else:
            with self._lock:
                catalog = self._indexes.get(ks, OrderedDict())
                for name in stmt.names:
                    if name not in catalog:
                        raise _QueryError(12016, "Index Not Found - cause: GSI index %s not found."
                                          % name, status="errors")
                now = _index_clock()
                for name in stmt.names:
                    idx = catalog[name]
                    if idx.state == "deferred":
                        if self._build_delay > 0:
                            idx.state = "building"
                            idx.ready_at = now + self._build_delay
                        else:
                            idx.state = "online"
        return _Run(None, lambda stats: iter(()), self._ddl_operator(stmt))

    def _create_index(self, stmt: _CreateIndex, ks: str) -> None:
        name = stmt.name or "#primary"
        with_v: Any = {}
        if stmt.with_ is not None:
            with_v = _compile(stmt.with_, _Scope(None, _Params([], {})))(_Env())
            if not isinstance(with_v, dict):
                raise _QueryError(5000, "GSI CreateIndex() - cause: WITH clause must be an object.",
                                  status="errors")
        defer = with_v.get("defer_build", False)
        if not isinstance(defer, bool):
            raise _QueryError(5000, "GSI CreateIndex() - cause: defer_build must be a boolean.",
                              status="errors")
        scope = _Scope(ks, _Params([], {}), agg_ban="Aggregates not allowed in index keys.")
        key_texts = []
        for expr, desc in stmt.keys:
            _compile(expr, scope)
            key_texts.append(_fmt(expr, ks) + (" DESC" if desc else ""))
        lead = _fmt(stmt.keys[0][0], ks) if stmt.keys else None
        condition = None
        cond_terms: List[str] = []
        if stmt.where is not None:
            _compile(stmt.where, scope)
            condition = _fmt(stmt.where, ks)
            cond_terms = [_fmt(c, ks) for c in _conjuncts(stmt.where)]
        with self._lock:
            catalog = self._indexes.setdefault(ks, OrderedDict())
            if name in catalog:
                raise _QueryError(4300, "The index %s already exists." % name, status="errors")
            catalog[name] = _Index(name, ks, stmt.primary, key_texts, lead, condition, cond_terms,
                                   "deferred" if defer else "online", stmt.using)

    # -- response ----------------------------------------------------------

    def _metrics(self, resp: _Response, count: int, size: int, errors: int,
                 sort_count: Optional[int]) -> dict:
        now = time.monotonic_ns()
        m: Dict[str, Any] = {
            "elapsedTime": format_go_duration(now - resp.started),
            "executionTime": format_go_duration(now - resp.exec_started),
            "resultCount": count,
            "resultSize": size,
            "mutationCount": 0,
        }
        if sort_count is not None:
            m["sortCount"] = sort_count
        m["errorCount"] = errors
        m["warningCount"] = 0
        return m

    def _profile(self, resp: _Response, run: Optional[_Run], stats: Optional[_Stats],
                 count: int) -> Optional[dict]:
        mode = resp.opts.profile
        if mode == "off":
            return None
        total = time.monotonic_ns() - resp.exec_started
        times = {"parse": format_go_duration(max(resp.exec_started - resp.started, 0)),
                 "run": format_go_duration(total)}
        counts: Dict[str, int] = {}
        operators: Dict[str, int] = {}
        if run is not None and run.scan_phase and stats is not None:
            times[run.scan_phase] = format_go_duration(total)
            counts[run.scan_phase] = stats.scanned
            operators[run.scan_phase] = 1
            if run.fetches:
                counts["fetch"] = stats.scanned
                operators["fetch"] = 1
        prof: Dict[str, Any] = {"phaseTimes": times, "phaseCounts": counts,
                                "phaseOperators": operators}
        if mode == "timings":
            timings = dict(run.operator) if run is not None and run.operator else {
                "#operator": "Sequence", "~children": []}
            timings["#stats"] = {"#itemsOut": count, "execTime": format_go_duration(total)}
            prof["executionTimings"] = timings
        return prof

    def _encoder(self, resp: _Response) -> Callable[[Any], str]:
        """Encoder of top-level values (nested lines indented one level)."""
        if not resp.opts.pretty:
            return _COMPACT.encode
        return lambda v: _PRETTY.encode(v).replace("\n", "\n    ")

    def _head(self, resp: _Response, enc: Callable[[Any], str], signature: Any) -> List[str]:
        ind = "    " if resp.opts.pretty else ""
        parts = ["{\n%s\"requestID\": %s" % (ind, enc(resp.request_id))]
        if resp.opts.client_context_id is not None:
            parts.append(",\n%s\"clientContextID\": %s" % (ind, enc(resp.opts.client_context_id)))
        if signature is not _NO_SIGNATURE and resp.opts.signature:
            parts.append(",\n%s\"signature\": %s" % (ind, enc(signature)))
        return parts

    def _tail(self, resp: _Response, enc: Callable[[Any], str], errors: List[dict], status: str,
              count: int, size: int, sort_count: Optional[int], profile: Optional[dict]) -> str:
        ind = "    " if resp.opts.pretty else ""
        parts = []
        if errors:
            parts.append(",\n%s\"errors\": %s" % (ind, enc(errors)))
        parts.append(",\n%s\"status\": %s" % (ind, enc(status)))
        if resp.opts.metrics:
            parts.append(",\n%s\"metrics\": %s" % (ind, enc(self._metrics(
                resp, count, size, len(errors), sort_count))))
        if profile is not None:
            parts.append(",\n%s\"profile\": %s" % (ind, enc(profile)))
        parts.append("\n}\n")
        return "".join(parts)

    def _error_body(self, resp: _Response, err: _QueryError) -> Iterator[bytes]:
        enc = self._encoder(resp)
        head = self._head(resp, enc, _NO_SIGNATURE)
        if err.status != "fatal":
            ind = "    " if resp.opts.pretty else ""
            head.append(",\n%s\"results\": [\n%s]" % (ind, ind))
        tail = self._tail(resp, enc, [err.as_json()], err.status, 0, 0, None,
                          self._profile(resp, None, None, 0))
        yield ("".join(head) + tail).encode("utf-8")

    def _body(self, resp: _Response, run: _Run) -> Iterator[bytes]:
        enc = self._encoder(resp)
        pretty = resp.opts.pretty
        row_enc = _PRETTY.encode if pretty else _COMPACT.encode
        ind = "    " if pretty else ""
        row_sep = ",\n" + ind * 2
        head = self._head(resp, enc, run.signature)
        head.append(",\n%s\"results\": [" % ind)
        yield "".join(head).encode("utf-8")
        deadline = None
        if resp.opts.timeout_ns > 0:
            deadline = resp.started / 1e9 + resp.opts.timeout_ns / 1e9
        stats = _Stats(deadline)
        errors: List[dict] = []
        status = "success"
        count = size = 0
        batch: List[str] = []
        batch_bytes = 0
        try:
            for row in run.rows(stats):
                text = row_enc(row)
                if pretty:
                    text = text.replace("\n", "\n" + ind * 2)
                n = len(text.encode("utf-8")) if not text.isascii() else len(text)
                size += n
                count += 1
                batch.append(text)
                batch_bytes += n
                if len(batch) >= _BATCH_ROWS or batch_bytes >= _BATCH_BYTES:
                    lead = ("\n" + ind * 2) if count == len(batch) else row_sep
                    yield (lead + row_sep.join(batch)).encode("utf-8")
                    batch = []
                    batch_bytes = 0
        except _Timeout:
            errors.append({"code": 1080, "msg": "Timeout %s exceeded" % resp.opts.timeout_text})
            status = "timeout"
        except _QueryError as err:
            errors.append(err.as_json())
            status = "errors"
        except Exception as exc:
            errors.append({"code": 5000, "msg": "Internal error: %s" % (exc,)})
            status = "errors"
        out = []
        if batch:
            lead = ("\n" + ind * 2) if count == len(batch) else row_sep
            out.append(lead + row_sep.join(batch))
        out.append("\n%s]" % ind)
        out.append(self._tail(resp, enc, errors, status, count, size,
                              stats.sorted if run.sorts else None,
                              self._profile(resp, run, stats, count)))
        yield "".join(out).encode("utf-8")


# ---------------------------------------------------------------------------
# Row pipeline helpers
# ---------------------------------------------------------------------------


def _projector(parts: List[Tuple[str, Optional[_Fn], Optional[str]]]) -> Callable[[_Env], Any]:
    if len(parts) == 1 and parts[0][0] == "star":
        name = parts[0][2]
        if name is None:
            return lambda env: {}

        def star(env: _Env) -> Any:
            return {name: env.doc} if env.doc is not MISSING else {}
        return star

    def project(env: _Env) -> Any:
        row: Dict[str, Any] = {}
        for kind, fn, name in parts:
            if kind == "expr":
                assert fn is not None
                v = fn(env)
                if v is not MISSING:
                    row[name] = v  # type: ignore[index]
            elif kind == "star":
                if name is not None and env.doc is not MISSING:
                    row[name] = env.doc
            else:
                assert fn is not None
                v = fn(env)
                if isinstance(v, dict):
                    row.update(v)
        return row
    return project


def _project_rows(envs: Iterable[_Env], project: Callable[[_Env], Any], raw: bool,
                  order: List[Tuple[_Fn, bool]]) -> Iterator[Tuple[Any, Any]]:
    """(sort key or None, row) for each input; RAW MISSING rows dropped."""
    for env in envs:
        row = project(env)
        if raw and row is MISSING:
            continue
        if order:
            env.proj = row if isinstance(row, dict) else {}
            key = tuple(_Desc(_ckey(f(env))) if desc else _ckey(f(env)) for f, desc in order)
            yield key, row
        else:
            yield None, row


def _distinct(items: Iterator[Tuple[Any, Any]]) -> Iterator[Tuple[Any, Any]]:
    seen = set()
    for key, row in items:
        k = _ckey(row)
        if k not in seen:
            seen.add(k)
            yield key, row


def _counting(items: Iterator[Tuple[Any, Any]], stats: _Stats) -> Iterator[Tuple[Any, Any]]:
    for item in items:
        stats.sorted += 1
        yield item


def _first(item: Tuple[Any, Any]) -> Any:
    return item[0]


def _skip(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        if next(it, _SENTINEL) is _SENTINEL:
            return
    yield from it


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    if n <= 0:
        return
    for i, row in enumerate(it, 1):
        yield row
        if i >= n:
            return


_SENTINEL = object()


def _select_operator(stmt: _Select, alias: Optional[str], scan_op: dict) -> dict:
    children: List[dict] = [scan_op]
    if stmt.from_ is not None and stmt.from_.namespace != "system":
        children.append({"#operator": "Fetch", "as": alias, "keyspace": stmt.from_.name,
                         "namespace": "default"})
    if stmt.where is not None:
        children.append({"#operator": "Filter", "condition": _fmt(stmt.where, alias)})
    terms: List[Dict[str, Any]] = []
    if stmt.raw is not None:
        terms.append({"expr": _fmt(stmt.raw, alias)})
    else:
        for term, name in zip(stmt.terms, _term_names(stmt.terms)):
            if term.kind == "star":
                terms.append({"expr": "self", "star": True})
            elif term.kind == "pathstar":
                terms.append({"expr": _fmt(term.expr, alias), "star": True})
            else:
                terms.append({"as": name, "expr": _fmt(term.expr, alias)})
    project: Dict[str, Any] = {"#operator": "InitialProject", "result_terms": terms}
    if stmt.raw is not None:
        project["raw"] = True
    if stmt.distinct:
        project["distinct"] = True
    children.append(project)
    if stmt.order:
        children.append({"#operator": "Order", "sort_terms": [
            dict({"expr": _fmt(e, alias)}, **({"desc": True} if d else {})) for e, d in stmt.order]})
    if stmt.offset is not None:
        children.append({"#operator": "Offset", "expr": _fmt(stmt.offset, alias)})
    if stmt.limit is not None:
        children.append({"#operator": "Limit", "expr": _fmt(stmt.limit, alias)})
    children.append({"#operator": "FinalProject"})
    return {"#operator": "Sequence", "~children": children}

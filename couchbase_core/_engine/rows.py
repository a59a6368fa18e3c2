"""Incremental extraction of rows from a streamed JSON response.

View and N1QL responses are one JSON object whose ``rows`` (views) or
``results`` (N1QL) array may hold millions of entries. :class:`RowParser`
takes the body chunk by chunk, returns each row as soon as its JSON is
complete, and keeps every other top-level member as metadata. Memory is
bounded by the rows not yet handed over (and the one being received), never
by the whole response.

The parser walks the response's outer structure (the top-level object and
the rows array) itself, and hands each complete row or metadata value to the
standard library's C JSON decoder. That keeps numbers exact at any size
(a document may hold 2**64-1) and decodes rows at C speed.

A row that is not complete yet (it spans network chunks) is tracked by a
small scanner that follows its brackets and strings through each new chunk
only, and decoded once its closing bracket arrives: a row larger than many
chunks costs linear work, and every row comes out as soon as it is whole.

Limits (the server decides none of them): one row at most
:data:`MAX_VALUE_CHARS` characters, all the metadata together (member names
and values outside the rows) at most :data:`MAX_META_CHARS`, and no value
nested deeper than the JSON decoder allows (the interpreter's recursion
limit). Beyond one, :class:`RowParseError` with ``rc`` ``RC.LIMIT_EXCEEDED``.
"""

from __future__ import annotations

import codecs
import json
import platform
import re
import sys
from typing import Any, Dict, List, Optional

from couchbase_core.exceptions import RC

__all__ = ["RowParser", "RowParseError", "MAX_VALUE_CHARS", "MAX_META_CHARS"]

#: A single row larger than this is refused (the largest document
#: Couchbase stores is 20 MiB; JSON escaping can grow it).
MAX_VALUE_CHARS = 64 * 1024 * 1024
#: All the metadata of one response together (every member outside the
#: rows: status, errors, warnings, metrics, profile, total_rows...).
MAX_META_CHARS = 16 * 1024 * 1024

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_START = frozenset("-0123456789")
_NUMBER_CHARS = frozenset("0123456789.eE+-")
_DECODER = json.JSONDecoder()
#: PyPy's ``raw_decode`` runs json's pure-Python scanner (about 8x slower
#: than ``json.loads``, which PyPy implements natively); there an object or
#: array that is whole in the buffer is found with the structural scanner
#: below and decoded by ``json.loads`` of its slice. CPython's C scanner
#: makes ``raw_decode`` the faster way.
SLICE_DECODE = platform.python_implementation() == "PyPy"

# Parser states: where we are in  { "key" : value , ... "rows" : [ row , ... ] ... }
_START = 0          # before the opening brace
_KEY = 1            # expecting a member name (or "}" if the object may end)
_COLON = 2          # after a member name
_VALUE = 3          # expecting a metadata member's value
_AFTER_MEMBER = 4   # expecting "," or "}"
_ROWS_OPEN = 5      # the rows member: expecting "["
_ROW = 6            # expecting a row (or "]" if the array may end)
_AFTER_ROW = 7      # expecting "," or "]"
_END = 8            # after the closing brace


class RowParseError(ValueError):
    """The body is not the JSON object it should be (``rc`` ``RC.PROTOCOL``),
    or it crosses one of the limits above (``RC.LIMIT_EXCEEDED``)."""

    def __init__(self, message: str, rc: int = RC.PROTOCOL) -> None:
        ValueError.__init__(self, message)
        self.rc = rc


def _too_big(what: str, limit: int, name: str) -> RowParseError:
    return RowParseError("%s of the response exceeds %d characters (rows.%s)" % (what, limit, name),
                         RC.LIMIT_EXCEEDED)


_STRUCTURE = re.compile(r'["\[\]{}]')
_STRING_BODY = re.compile(r'[^"\\]*')


class _PartialValue:
    """Follows an object, array or string that the text received so far
    does not complete: depth, inside-a-string and escape state carry over
    from chunk to chunk, and the pieces wait unjoined until it is whole."""

    __slots__ = ("pieces", "size", "depth", "in_string", "escaped", "end")

    def __init__(self) -> None:
        self.pieces: List[str] = []
        self.size = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.end = -1  # once scan() returned True: the index just past the value

    def scan(self, text: str, start: int = 0) -> bool:
        """Follow ``text``; True once the value has ended in it."""
        i, n = start, len(text)
        while i < n:
            if self.escaped:
                self.escaped = False
                i += 1
                continue
            if self.in_string:
                i = _STRING_BODY.match(text, i).end()  # type: ignore[union-attr]
                if i >= n:
                    break
                if text[i] == "\\":
                    self.escaped = True
                else:  # the closing quote
                    self.in_string = False
                    if self.depth == 0:
                        self.end = i + 1
                        return True
                i += 1
                continue
            m = _STRUCTURE.search(text, i)
            if m is None:
                break
            char = m.group()
            i = m.end()
            if char == '"':
                self.in_string = True
            elif char == "{" or char == "[":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    self.end = i
                    return True
        return False


class RowParser:
    """Feed bytes, get rows; :meth:`close` returns the metadata."""

    def __init__(self, rows_key: str = "rows") -> None:
        self.rows_key = rows_key
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self._partial: Optional[_PartialValue] = None  # a value at _pos awaiting its end
        self._state = _START
        self._may_close = True  # "}" / "]" allowed here (nothing after a ",")
        self._key: Optional[str] = None
        self._meta: Dict[str, Any] = {}
        self._meta_chars = 0  # metadata text taken so far (names and values)
        self.rows_seen = 0

    # ----------------------------------------------------------------- input

    def feed(self, data: bytes) -> List[Any]:
        """Parse ``data``; return the rows it completed."""
        if not data:
            return []
        try:
            text = self._text.decode(data)
        except UnicodeDecodeError as exc:
            raise RowParseError("the response is not UTF-8: %s" % exc) from exc
        return self._take(text, final=False)

    def close(self) -> Dict[str, Any]:
        """The response ended: return the metadata (raises if it was cut short)."""
        try:
            tail = self._text.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise RowParseError("the response is not UTF-8: %s" % exc) from exc
        if self._partial is not None and not self._partial.scan(tail):
            raise RowParseError("the response ended in the middle of its JSON (%s)" % self._where())
        self._take(tail, final=True)
        if self._state != _END:
            raise RowParseError("the response ended in the middle of its JSON (%s)" % self._where())
        return self._meta

    def _check_pending(self, size: int) -> None:
        """The value being received (``size`` characters so far) must stay
        within its limit: a row's, or what is left of the metadata's."""
        if self._state == _ROW or self._state == _AFTER_ROW:
            if size > MAX_VALUE_CHARS:
                raise _too_big("a row", MAX_VALUE_CHARS, "MAX_VALUE_CHARS")
        elif self._meta_chars + size > MAX_META_CHARS:
            raise _too_big("the metadata", MAX_META_CHARS, "MAX_META_CHARS")

    def _take(self, text: str, final: bool) -> List[Any]:
        partial = self._partial
        if partial is not None:
            if text:
                partial.pieces.append(text)
                partial.size += len(text)
                self._check_pending(partial.size)
            if not final and not partial.scan(text):
                return []
            self._partial = None
            text = "".join(partial.pieces)
        self._buf = self._buf[self._pos:] + text
        self._pos = 0
        rows = self._run(final)
        if self._partial is None:  # e.g. a number that may go on
            self._check_pending(len(self._buf) - self._pos)
        return rows

    @property
    def meta(self) -> Dict[str, Any]:
        """Metadata members seen so far."""
        return self._meta

    # --------------------------------------------------------------- parsing

    def _run(self, final: bool) -> List[Any]:
        rows: List[Any] = []
        buf = self._buf
        end = len(buf)
        pos = self._pos
        state = self._state
        try:
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= end:
                    break
                char = buf[pos]
                if state == _ROW or state == _VALUE:
                    if state == _ROW and char == "]" and self._may_close:
                        state = _AFTER_MEMBER
                        self._may_close = False
                        pos += 1
                        continue
                    start = pos
                    value, stop = self._value(buf, pos, final)
                    if stop < 0:
                        break  # incomplete: wait for more text
                    pos = stop
                    if state == _ROW:
                        rows.append(value)
                        state = _AFTER_ROW
                    else:
                        self._count_meta(stop - start)
                        self._meta[self._key] = value  # type: ignore[index]
                        state = _AFTER_MEMBER
                    continue
                if state == _AFTER_ROW:
                    if char == ",":
                        state, self._may_close = _ROW, False
                    elif char == "]":
                        state, self._may_close = _AFTER_MEMBER, False
                    else:
                        self._bad(buf, pos, "',' or ']' after a row")
                    pos += 1
                elif state == _AFTER_MEMBER:
                    if char == ",":
                        state, self._may_close = _KEY, False
                    elif char == "}":
                        state = _END
                    else:
                        self._bad(buf, pos, "',' or '}' after a member")
                    pos += 1
                elif state == _KEY:
                    if char == "}" and self._may_close:
                        state = _END
                        pos += 1
                        continue
                    if char != '"':
                        self._bad(buf, pos, "a member name")
                    key, stop = self._value(buf, pos, final)
                    if stop < 0:
                        break
                    self._count_meta(stop - pos)
                    self._key, pos, state = key, stop, _COLON
                elif state == _COLON:
                    if char != ":":
                        self._bad(buf, pos, "':' after a member name")
                    pos += 1
                    state = _ROWS_OPEN if self._key == self.rows_key else _VALUE
                elif state == _ROWS_OPEN:
                    if char == "[":
                        state, self._may_close = _ROW, True
                        pos += 1
                    else:  # the rows member is not an array: keep it as metadata
                        state = _VALUE
                elif state == _START:
                    if char != "{":
                        self._bad(buf, pos, "a JSON object")
                    state, self._may_close = _KEY, True
                    pos += 1
                else:  # _END
                    self._bad(buf, pos, "nothing after the closing '}'")
        finally:
            self._pos = pos
            self._state = state
        self.rows_seen += len(rows)
        return rows

    def _count_meta(self, size: int) -> None:
        self._meta_chars += size
        if self._meta_chars > MAX_META_CHARS:
            raise _too_big("the metadata", MAX_META_CHARS, "MAX_META_CHARS")

    def _value(self, buf: str, pos: int, final: bool) -> Any:
        """Decode the JSON value starting at ``pos``: (value, end) or
        (None, -1) when the buffer does not hold all of it yet."""
        if SLICE_DECODE and buf[pos] in "{[":
            whole = _PartialValue()
            if whole.scan(buf, pos):
                try:
                    return json.loads(buf[pos:whole.end]), whole.end
                except (ValueError, RecursionError):
                    pass  # raw_decode below reports it, with the position in the whole text
        try:
            value, stop = _DECODER.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if final:
                raise RowParseError("invalid JSON in the response: %s" % exc) from exc
            # An error well before the end of the text cannot be cured by
            # more text (an unterminated string can: its error points at
            # the opening quote).
            if exc.pos < len(buf) - 6 and not exc.msg.startswith("Unterminated string"):
                raise RowParseError("invalid JSON in the response: %s" % exc) from exc
            if buf[pos] in "{[\"":
                partial = _PartialValue()
                if partial.scan(buf, pos):  # it did end: the error was real
                    raise RowParseError("invalid JSON in the response: %s" % exc) from exc
                partial.size = len(buf) - pos
                self._partial = partial
            return None, -1
        except ValueError as exc:  # not JSON's: an integer beyond sys.get_int_max_str_digits()
            raise RowParseError("a value of the response cannot be decoded: %s" % exc, RC.LIMIT_EXCEEDED) from exc
        except RecursionError as exc:
            raise RowParseError("a value of the response is nested deeper than the JSON decoder allows "
                                "(the recursion limit, %d)" % sys.getrecursionlimit(), RC.LIMIT_EXCEEDED) from exc
        if not final and buf[pos] in _NUMBER_START:
            # A number at the end of the text may go on in the next chunk
            # ("12" then "34,", "1." then "5,"): decide once something that
            # cannot belong to it follows.
            after = stop
            while after < len(buf) and buf[after] in _NUMBER_CHARS:
                after += 1
            if after >= len(buf):
                return None, -1
        return value, stop

    def _bad(self, buf: str, pos: int, expected: str) -> None:
        raise RowParseError("invalid JSON in the response: expected %s at offset %d, found %r"
                            % (expected, pos, buf[pos:pos + 20]))

    def _where(self) -> str:
        names = {_START: "before the object", _KEY: "expecting a member name", _COLON: "after a member name",
                 _VALUE: "in the value of %r" % self._key, _AFTER_MEMBER: "between members",
                 _ROWS_OPEN: "before the rows", _ROW: "in row %d" % (self.rows_seen + 1),
                 _AFTER_ROW: "after row %d" % self.rows_seen}
        return names.get(self._state, "at the end")

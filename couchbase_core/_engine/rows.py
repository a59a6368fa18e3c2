"""Incremental extraction of rows from a streamed JSON response (ijson).

View and N1QL responses are one JSON object whose ``rows`` (views) or
``results`` (N1QL) array may hold millions of entries. :class:`RowParser`
takes the body chunk by chunk, returns each row as soon as its JSON is
complete, and keeps every other top-level member as metadata. Memory is
bounded by the rows not yet handed over, never by the whole response.
"""

from __future__ import annotations

from typing import Any, Dict, List

import ijson
from ijson.common import ObjectBuilder

__all__ = ["RowParser", "RowParseError"]


class RowParseError(ValueError):
    """The body is not the JSON object it should be."""


class RowParser:
    """Feed bytes, get rows; :meth:`close` returns the metadata."""

    def __init__(self, rows_key: str = "rows") -> None:
        self.rows_key = rows_key
        self._item = rows_key + ".item"
        self._events = ijson.sendable_list()
        self._coro = ijson.parse_coro(self._events, use_float=True)
        self._row: Any = None
        self._meta: Dict[str, Any] = {}
        self._meta_key: str = ""
        self._meta_builder: Any = None
        self.rows_seen = 0

    def feed(self, data: bytes) -> List[Any]:
        """Parse ``data``; return the rows it completed."""
        try:
            self._coro.send(data)
        except ijson.JSONError as exc:
            raise RowParseError("invalid JSON in the response: %s" % exc) from exc
        return self._consume()

    def _consume(self) -> List[Any]:
        rows: List[Any] = []
        item = self._item
        rows_key = self.rows_key
        builder = self._row
        for prefix, event, value in self._events:
            if builder is not None:
                builder.event(event, value)
                if prefix == item and (event == "end_map" or event == "end_array"):
                    rows.append(builder.value)
                    builder = None
                continue
            if prefix == item:
                if event == "start_map" or event == "start_array":
                    builder = ObjectBuilder()
                    builder.event(event, value)
                else:  # a scalar row
                    rows.append(value)
                continue
            if prefix == rows_key or not prefix:
                continue  # the array itself, or the top-level object
            self._meta_event(prefix, event, value)
        self._row = builder
        del self._events[:]
        self.rows_seen += len(rows)
        return rows

    def _meta_event(self, prefix: str, event: str, value: Any) -> None:
        top = prefix.split(".", 1)[0]
        if self._meta_builder is None:
            if event in ("start_map", "start_array"):
                self._meta_key = top
                self._meta_builder = ObjectBuilder()
                self._meta_builder.event(event, value)
            elif event not in ("map_key", "end_map", "end_array"):
                self._meta[top] = value
            return
        self._meta_builder.event(event, value)
        if prefix == self._meta_key and event in ("end_map", "end_array"):
            self._meta[self._meta_key] = self._meta_builder.value
            self._meta_builder = None

    def close(self) -> Dict[str, Any]:
        """The response ended: return the metadata (raises if it was cut short)."""
        try:
            self._coro.close()
        except ijson.IncompleteJSONError as exc:
            raise RowParseError("the response ended in the middle of its JSON: %s" % exc) from exc
        except ijson.JSONError as exc:
            raise RowParseError("invalid JSON in the response: %s" % exc) from exc
        self._consume()
        return self._meta

    @property
    def meta(self) -> Dict[str, Any]:
        """Metadata members seen so far."""
        return self._meta

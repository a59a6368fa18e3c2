"""AsyncSearchRequest: full-text search hits delivered to callbacks.

Subclass it (or set the handlers on an instance), create it with
``bucket.search(index, query, itercls=MySearch, ...)`` on an AsyncBucket and
call :meth:`AsyncSearchRequest.start`: ``on_rows(hits)`` receives batches of
hits as the response streams in, then exactly one of ``on_done()`` or
``on_error(exc)`` is called. ``meta`` (and ``total_hits``, ``facets``...)
holds the response's metadata by then.

The request, its body and the mapping of its outcome to an error are the
iterator's (:class:`~couchbase_core.fulltext.SearchRequest`); only the way
hits reach the caller differs.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from couchbase_core._rowstream import refuse_close
from couchbase_core.fulltext import SearchRequest

__all__ = ["AsyncSearchRequest"]


class AsyncSearchRequest(SearchRequest):
    """A search whose hits are pushed to callbacks (see the module docs)."""

    close = refuse_close

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._op: Any = None
        self._reported = False
        self.started = False

    def on_rows(self, rows: List[Any]) -> None:
        """A batch of hits."""

    def on_error(self, ex: BaseException) -> None:
        """The search failed; no more callbacks follow."""

    def on_done(self) -> None:
        """Every hit was delivered; no more callbacks follow."""

    def __iter__(self) -> Any:
        raise TypeError("an AsyncSearchRequest delivers hits to on_rows(); call start() instead of iterating")

    def start(self) -> "AsyncSearchRequest":
        """Send the request (once)."""
        if self.started:
            return self
        self.started = True
        self._iterated = True
        self._op = self._request_op(self)
        self._op.start(self.bucket._engine)
        return self

    # consumer protocol of RowStreamOp (called from the loop)
    def rows_ready(self, rows: List[Any]) -> None:
        """Hits of the response."""
        if self._reported:
            return
        rows = [self.row_factory(r) for r in rows]
        self.rows_returned += len(rows)
        try:
            self.on_rows(rows)
        except Exception as exc:  # the handler failed: stop the request, report once
            self._op.cancel()
            self._fail(exc)

    def finished(self, meta: Dict[str, Any], http_status: int, error: Optional[tuple]) -> None:
        """The response ended or failed."""
        if self._reported:
            return
        exc = self._finish(meta, http_status, error)
        if exc is not None:
            self._fail(exc)
            return
        self._reported = True
        self.on_done()

    def _fail(self, exc: BaseException) -> None:
        if self._reported:
            return
        self._reported = True
        self.on_error(exc)

"""AsyncViewBase: view results delivered to callbacks.

Subclass it, override :meth:`AsyncViewBase.on_rows`,
:meth:`AsyncViewBase.on_error` and :meth:`AsyncViewBase.on_done`, create it
with ``bucket.query(design, view, itercls=MyView, ...)`` on an
:class:`~couchbase_core.asynchronous.bucket.AsyncBucket` and call
:meth:`AsyncViewBase.start`. Rows arrive in batches as the response streams
in; then exactly one of ``on_done()`` or ``on_error(exc)`` is called. With
``include_docs`` each batch is delivered once its documents are fetched,
batches keeping their order.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from couchbase_core._rowstream import refuse_close
from couchbase_core.views.iterator import View, view_error

__all__ = ["AsyncViewBase"]


class AsyncViewBase(View):
    """A view query whose rows are pushed to callbacks (see the module docs)."""

    close = refuse_close

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._op: Any = None
        self._pending: Deque[List[Any]] = deque()  # batches waiting for their documents
        self._ended: Optional[Tuple[Dict[str, Any], int, Optional[tuple]]] = None
        self._reported = False
        self.started = False

    # -- to override --------------------------------------------------------

    def on_rows(self, rows: List[Any]) -> None:
        """A batch of rows (:class:`~couchbase_core.views.iterator.ViewRow`)."""

    def on_error(self, ex: BaseException) -> None:
        """The query failed; no more callbacks follow."""

    def on_done(self) -> None:
        """Every row was delivered; no more callbacks follow."""

    # -- running --------------------------------------------------------------

    def start(self) -> "AsyncViewBase":
        """Send the request (once)."""
        if self.started:
            return self
        if self._iterated:
            from couchbase_core.views.iterator import AlreadyQueriedError

            raise AlreadyQueriedError("this view has already been started")
        self.started = True
        self._iterated = True
        self._op = self._request_op(self)
        self._op.start(self.bucket._engine)
        return self

    def __iter__(self) -> Any:
        raise TypeError("an AsyncViewBase delivers rows to on_rows(); call start() instead of iterating")

    # consumer protocol of RowStreamOp
    def rows_ready(self, rows: List[Any]) -> None:
        if self._reported:
            return
        if not self.include_docs:
            processed = self.row_processor.handle_rows(rows, None, False)
            self.rows_returned += len(processed)
            self._deliver(processed)
            return
        self._pending.append(rows)
        if len(self._pending) == 1:
            self._fetch_docs()

    def _fetch_docs(self) -> None:
        rows = self._pending[0]
        ids = list(dict.fromkeys(r.get("id") for r in rows if r.get("id") is not None))
        if not ids:
            self._docs_arrived({})
            return
        # AsyncBucket's own get_multi: a subclass may wrap the public one
        # (txcouchbase.bucket.Bucket returns Deferreds), this needs the AsyncResult.
        from couchbase_core.asynchronous.bucket import AsyncBucket

        ar = AsyncBucket.get_multi(self.bucket, ids, quiet=True)
        ar.callback = lambda res: self._docs_arrived(dict(res))
        ar.errback = lambda res, et, ev, tb: self._docs_arrived(dict(res))

    def _docs_arrived(self, docs: Dict[str, Any]) -> None:
        rows = self._pending.popleft()
        processed = [self.row_processor.make_row(r, docs.get(r.get("id"))) for r in rows]
        self.rows_returned += len(processed)
        self._deliver(processed)
        if self._pending:
            self._fetch_docs()
        elif self._ended is not None:
            self._end(*self._ended)

    def _deliver(self, rows: List[Any]) -> None:
        if rows and not self._reported:
            try:
                self.on_rows(rows)
            except Exception as exc:  # the subclass failed: report it once and stop
                self._op.cancel()
                self._report_error(exc)

    def finished(self, meta: Dict[str, Any], http_status: int, error: Optional[tuple]) -> None:
        if self._pending:
            self._ended = (meta, http_status, error)  # after the documents of the last batches
            return
        self._end(meta, http_status, error)

    def _end(self, meta: Dict[str, Any], http_status: int, error: Optional[tuple]) -> None:
        if self._reported:
            return
        self.raw = meta
        self.indexed_rows = meta.get("total_rows", 0)
        self.errors = meta.get("errors", []) or []
        exc = view_error(http_status, meta, error, "view %s/%s" % (self.design, self.view))
        if exc is not None:
            self._report_error(exc)
            return
        self._reported = True
        self.on_done()

    def _report_error(self, exc: BaseException) -> None:
        if self._reported:
            return
        self._reported = True
        self.on_error(exc)

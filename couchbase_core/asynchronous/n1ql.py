"""AsyncN1QLRequest: N1QL results delivered to callbacks.

Subclass it (or set the handlers on an instance), create it with
``bucket.n1ql_query(query, itercls=MyRequest)`` on an AsyncBucket and call
:meth:`AsyncN1QLRequest.start`: ``on_rows(rows)`` receives batches as the
response streams in, then exactly one of ``on_done()`` or ``on_error(exc)``
is called. ``meta`` holds the response's metadata by then.

It runs the same request machine as the iterator flavour
(:mod:`couchbase_core._querymachine`: prepare, execute, re-prepare once on a
stale plan), driven from the loop's callbacks instead of a waiting caller.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from couchbase_core._rowstream import refuse_close
from couchbase_core.exceptions import CouchbaseError
from couchbase_core.n1ql import N1QLRequest

__all__ = ["AsyncN1QLRequest"]


class AsyncN1QLRequest(N1QLRequest):
    """A N1QL request whose rows are pushed to callbacks."""

    close = refuse_close

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._op: Any = None
        self._machine: Any = None
        self._reported = False
        self.started = False

    def on_rows(self, rows: List[Any]) -> None:
        """A batch of rows."""

    def on_error(self, ex: BaseException) -> None:
        """The request failed; no more callbacks follow."""

    def on_done(self) -> None:
        """Every row was delivered; no more callbacks follow."""

    def __iter__(self) -> Any:
        raise TypeError("an AsyncN1QLRequest delivers rows to on_rows(); call start() instead of iterating")

    def start(self) -> "AsyncN1QLRequest":
        """Send the request (preparing it first when ``adhoc`` is off)."""
        if self.started:
            return self
        self.started = True
        machine = self._machine = self._new_machine()
        self._perform(machine.start())
        return self

    def _perform(self, action: Any) -> None:
        """Carry out the machine's next action."""
        from couchbase_core._querymachine import Failed, Finished

        if isinstance(action, Finished):
            self.meta = action.meta
            if not self._reported:
                self._reported = True
                self.on_done()
            return
        if isinstance(action, Failed):
            self.meta = action.meta
            self._fail(action.error)
            return
        self._op = self._request_op(action, self)
        self._op.start(self.bucket._engine)

    # consumer protocol of RowStreamOp
    def rows_ready(self, rows: List[Any]) -> None:
        """Rows of the current response (from the loop)."""
        if self._reported:
            return
        rows = self._machine.feed_rows(rows)
        if not rows:
            return
        rows = [self.row_factory(r) for r in rows]
        self.rows_returned += len(rows)
        try:
            self.on_rows(rows)
        except Exception as exc:
            self._op.cancel()
            self._fail(exc)

    def finished(self, meta: Dict[str, Any], http_status: int, error: Optional[tuple]) -> None:
        """The current response ended or failed (from the loop)."""
        if self._reported:
            return
        try:
            self._perform(self._machine.end(meta, http_status, error))
        except CouchbaseError as exc:  # the next request could not start (the bucket was closed)
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._reported:
            return
        self._reported = True
        self.on_error(exc)

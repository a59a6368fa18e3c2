"""AsyncN1QLRequest: N1QL results delivered to callbacks.

Subclass it (or set the handlers on an instance), create it with
``bucket.n1ql_query(query, itercls=MyRequest)`` on an AsyncBucket and call
:meth:`AsyncN1QLRequest.start`: ``on_rows(rows)`` receives batches as the
response streams in, then exactly one of ``on_done()`` or ``on_error(exc)``
is called. ``meta`` holds the response's metadata by then.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from couchbase_core.n1ql import (
    N1QLError,
    N1QLQuery,
    N1QLRequest,
    _stale_plan,
    prepared_cache,
    query_error,
)

__all__ = ["AsyncN1QLRequest"]


class AsyncN1QLRequest(N1QLRequest):
    """A N1QL request whose rows are pushed to callbacks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._op: Any = None
        self._prepared: Optional[Dict[str, Any]] = None
        self._attempt = 0
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
        self.bucket._require_couchbase("N1QL", "plain memcached has no query service")
        if self.params.adhoc:
            self._send(None)
        else:
            entry = prepared_cache(self.bucket).get(self.params.statement)
            if entry is not None:
                self._send(entry)
            else:
                self._prepare_then_send()
        return self

    def _prepare_then_send(self) -> None:
        from couchbase_core._httpops import HttpOp

        body = json.dumps(N1QLQuery("PREPARE " + self.params.statement).encoded_body(self.bucket.n1ql_timeout),
                          separators=(",", ":")).encode("utf-8")
        op = HttpOp("n1ql", "POST", "/query/service", body, {"Content-Type": "application/json"},
                    self.bucket.n1ql_timeout + 1.0, accept=lambda status: True)
        op.sink = self._prepared_reply
        self.bucket._engine.submit(op)

    def _prepared_reply(self, res: Any) -> None:
        meta = res.value if isinstance(res.value, dict) else {}
        exc = query_error(meta, res.http_status, (res.rc, res.errstr) if res.rc else None)
        results = meta.get("results") or []
        if exc is None and (not results or "name" not in results[0]):
            exc = N1QLError({"message": "PREPARE returned no plan", "objextra": []})
        if exc is not None:
            self._fail(exc)
            return
        prepared_cache(self.bucket).put(self.params.statement, results[0])
        self._send(results[0])

    def _send(self, prepared: Optional[Dict[str, Any]]) -> None:
        from couchbase_core._httpops import RowStreamOp

        self._prepared = prepared
        body = self._body_for(prepared)
        timeout = (self.params.timeout or self.bucket.n1ql_timeout) + 1.0
        self._op = RowStreamOp("n1ql", "POST", "/query/service", body, {"Content-Type": "application/json"},
                               timeout, self, "results")
        self.bucket._engine.submit(self._op)

    # consumer protocol of RowStreamOp
    def rows_ready(self, rows: List[Any]) -> None:
        if self._reported:
            return
        rows = [self.row_factory(r) for r in rows]
        self.rows_returned += len(rows)
        try:
            self.on_rows(rows)
        except Exception as exc:
            self._op.cancel()
            self._fail(exc)

    def finished(self, meta: Dict[str, Any], http_status: int, error: Optional[tuple]) -> None:
        if self._reported:
            return
        self.meta = meta
        exc = query_error(meta, http_status, error)
        if exc is None:
            self._reported = True
            self.on_done()
            return
        if (self._prepared is not None and self._attempt == 0 and self.rows_returned == 0
                and isinstance(exc, N1QLError) and _stale_plan(exc)):
            self._attempt += 1
            prepared_cache(self.bucket).drop(self.params.statement)
            self._prepare_then_send()
            return
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._reported:
            return
        self._reported = True
        self.on_error(exc)

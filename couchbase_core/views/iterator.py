"""Iterating view results: :class:`View`, its rows and row processors.

``bucket.query("design", "view", limit=10)`` returns a :class:`View`;
iterating it sends the request and yields :class:`ViewRow` objects (``key``,
``value``, ``docid``, ``doc``) while the response streams in. The same class
serves the blocking bucket (the select loop runs while the iterator waits)
and the gevent bucket (the greenlet sleeps while the hub reads; see
``gcouchbase.bucket.GView``). After iteration, ``indexed_rows`` (the
server's ``total_rows``), ``errors`` and ``raw`` (the metadata) are set.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import quote

from couchbase_core._rowstream import ClosableRows
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    HTTPError,
    ViewEngineError,
    exc_from_rc,
)
from couchbase_core.views.params import Query, SpatialQuery

__all__ = ["View", "ViewRow", "SpatialRow", "RowProcessor", "SpatialRowProcessor", "AlreadyQueriedError",
           "view_path", "view_error"]


class AlreadyQueriedError(CouchbaseError):
    """A View object can be iterated only once."""

    CODE = RC.ARGUMENT


ViewRow = namedtuple("ViewRow", ["key", "value", "docid", "doc"])
ViewRow.__doc__ = "One view row: ``key``, ``value``, ``docid`` (None for reduce rows), ``doc`` (with include_docs)."

SpatialRow = namedtuple("SpatialRow", ["key", "value", "docid", "doc", "geometry"])
SpatialRow.__doc__ = "One spatial view row (adds ``geometry``)."


class RowProcessor:
    """Turns raw row dicts into :class:`ViewRow` objects; with
    ``include_docs`` it fetches each row's document (one ``get_multi`` per
    batch of rows)."""

    row_class: Any = ViewRow

    def handle_rows(self, rows: List[Dict[str, Any]], connection: Any, include_docs: bool) -> List[Any]:
        """Convert a batch of rows."""
        for row in rows:
            if not isinstance(row, dict):
                raise exc_from_rc(RC.PROTOCOL, "a view row is not a JSON object: %.100r" % (row,))
        docs: Dict[str, Any] = {}
        if include_docs:
            ids = [r.get("id") for r in rows if r.get("id") is not None]
            if ids:
                docs = dict(connection.get_multi(list(dict.fromkeys(ids)), quiet=True))
        out = []
        for row in rows:
            docid = row.get("id")
            out.append(self.make_row(row, docs.get(docid) if include_docs and docid is not None else None))
        return out

    def make_row(self, row: Dict[str, Any], doc: Any) -> Any:
        """Build one row object."""
        return ViewRow(row.get("key"), row.get("value"), row.get("id"), doc)


class SpatialRowProcessor(RowProcessor):
    """Rows of spatial views (:class:`SpatialRow`)."""

    row_class = SpatialRow

    def make_row(self, row: Dict[str, Any], doc: Any) -> Any:
        return SpatialRow(row.get("key"), row.get("value"), row.get("id"), doc, row.get("geometry"))


def view_path(bucket: str, design: str, view: str, spatial: bool, use_devmode: bool) -> str:
    """The request path of a view (``dev_`` prefix with ``use_devmode``)."""
    if use_devmode and not design.startswith("dev_"):
        design = "dev_" + design
    kind = "_spatial" if spatial else "_view"
    return "/%s/_design/%s/%s/%s" % (quote_name(bucket, "bucket"), quote_name(design, "design document"), kind,
                                     quote_name(view, "view"))


def quote_name(name: Any, what: str) -> str:
    """``name`` percent-encoded for a URL path segment; a name that is not a
    str or has no UTF-8 form (a lone surrogate) is an ArgumentError."""
    if not isinstance(name, str):
        raise ArgumentError("the %s name must be a str, not %s" % (what, type(name).__name__))
    try:
        return quote(name, safe="", errors="strict")
    except UnicodeEncodeError as exc:
        raise ArgumentError("the %s name %r has no UTF-8 form: %s" % (what, name, exc.reason)) from None


def view_error(http_status: int, meta: Dict[str, Any], error: Optional[tuple], what: str) -> Optional[CouchbaseError]:
    """The exception for a failed view response, or None if it succeeded."""
    if error is not None:
        rc, message = error
        if rc:
            return exc_from_rc(rc, "%s: %s" % (what, message))
        return None
    if http_status == 200:
        return None
    reason = meta.get("reason") or meta.get("error") or "HTTP %d" % http_status
    if "error" in meta:
        exc: CouchbaseError = ViewEngineError({"message": "%s failed: %s: %s" % (what, meta.get("error"), reason),
                                               "objextra": meta})
    else:
        detail = meta.get("body")
        exc = HTTPError({"message": "%s failed with HTTP %d%s" % (what, http_status,
                                                                 ": %s" % detail[:300] if detail else ""),
                         "objextra": meta})
    exc.http_status = http_status  # type: ignore[attr-defined]
    return exc


class View(ClosableRows):
    """An iterable view query (see the module docs).

    Args:
        parent: the bucket.
        design, view: design document and view names.
        row_processor: a :class:`RowProcessor` (default one, or the spatial one).
        include_docs: fetch each row's document (not with reduce).
        query: a :class:`~couchbase_core.views.params.Query`; other keyword
            arguments are added to it.
        streaming: accepted for compatibility; rows always stream.
        use_devmode: query the ``dev_`` design document.
        spatial: a spatial view.
    """

    def __init__(self, parent: Any, design: str, view: str, row_processor: Optional[RowProcessor] = None,
                 include_docs: bool = False, query: Optional[Query] = None, streaming: bool = True,
                 use_devmode: bool = False, spatial: bool = False, **params: Any) -> None:
        self.bucket = parent
        self.design = design
        self.view = view
        self.include_docs = bool(include_docs)
        self.spatial = spatial
        if query is None:
            query = (SpatialQuery if spatial else Query)()
        elif params:
            query = query.update(copy=True)
        self.query = query.update(**params) if params else query
        if self.include_docs and self.query.params.get("reduce") in (True, "true", 1):
            raise ArgumentError("include_docs cannot be used with reduce=True (reduce rows have no documents)")
        self.row_processor = row_processor or (SpatialRowProcessor() if spatial else RowProcessor())
        self.use_devmode = use_devmode
        self.streaming = streaming
        self.indexed_rows = 0
        self.rows_returned = 0
        self.errors: List[Any] = []
        self.raw: Dict[str, Any] = {}
        self._iterated = False

    @property
    def path(self) -> str:
        """The request path (without the query string)."""
        return view_path(self.bucket.bucket, self.design, self.view, self.spatial, self.use_devmode)

    def _request(self) -> tuple:
        """(method, path with query, body, headers)."""
        query, body = self.query.encoded_for_request()
        path = self.path + ("?" + query if query else "")
        if body is not None:
            return "POST", path, body, {"Content-Type": "application/json"}
        return "GET", path, b"", {}

    def _request_op(self, consumer: Any) -> Any:
        """The streamed HTTP request of this view, its rows and end going to
        ``consumer`` (a row stream for the iterator, the view itself for
        AsyncViewBase). ObjectDestroyedError if the bucket is closed;
        PipelineError inside a pipeline block (as 2.x: nothing is sent)."""
        from couchbase_core._httpops import RowStreamOp

        self.bucket._check_open()
        self.bucket._refuse_in_pipeline("a view query")
        method, path, body, headers = self._request()
        return RowStreamOp("capi", method, path, body, headers, self.bucket.views_timeout, consumer, "rows")

    def _make_stream(self) -> Any:
        from couchbase_core._rowstream import RowStream

        self.bucket._check_open()
        return RowStream(self.bucket, self._request_op)

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:
            raise AlreadyQueriedError("this View has already been iterated; create a new one")
        self._iterated = True
        if self._closed:
            return  # closed before it was iterated
        stream = self._current = self._make_stream()
        for batch in stream.batches():
            if stream.http_status not in (0, 200) and not batch:
                continue
            rows = self.row_processor.handle_rows(batch, self.bucket, self.include_docs)
            for row in rows:
                stream.check_open()
                if stream.closed:
                    return
                self.rows_returned += 1
                yield row
        if not stream.closed:
            self._finish(stream)

    def _finish(self, stream: Any) -> None:
        meta = stream.meta
        self.raw = meta
        self.indexed_rows = meta.get("total_rows", 0)
        self.errors = meta.get("errors", []) or []
        exc = view_error(stream.http_status, meta, stream.error, "view %s/%s" % (self.design, self.view))
        if exc is not None:
            raise exc

    def __repr__(self) -> str:
        return "<%s %s %s>" % (type(self).__name__, self.path, self.query.encoded)

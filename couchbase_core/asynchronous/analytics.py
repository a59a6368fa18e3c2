"""AsyncAnalyticsRequest: analytics results delivered to callbacks.

Create it with ``bucket.analytics_query(query)`` on an AsyncBucket (or pass
``itercls=`` a subclass) and call :meth:`AsyncAnalyticsRequest.start`:
``on_rows(rows)`` receives batches as the response streams in, then exactly
one of ``on_done()`` or ``on_error(exc)`` is called; ``meta`` holds the
response's metadata by then. It is :class:`AsyncN1QLRequest` driving the
analytics request machine (:class:`couchbase_core.analytics.AnalyticsMachine`)
instead of the N1QL one. Deferred queries have no async flavour.
"""

from __future__ import annotations

from couchbase_core.analytics import AnalyticsRequest
from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest

__all__ = ["AsyncAnalyticsRequest"]


class AsyncAnalyticsRequest(AsyncN1QLRequest, AnalyticsRequest):
    """An analytics request whose rows are pushed to callbacks
    (``on_rows``, ``on_error``, ``on_done``; see AsyncN1QLRequest)."""

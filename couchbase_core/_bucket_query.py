"""View, N1QL, analytics and full-text queries: the bucket methods that start them.

The requests themselves (HTTP, row streaming, iteration) live in
:mod:`couchbase_core.views.iterator`, :mod:`couchbase_core.n1ql`,
:mod:`couchbase_core.analytics` and :mod:`couchbase_core.fulltext`; each
flavour picks the iterator class through ``_view_class``/``_n1ql_class``/
``_analytics_class``/``_search_class``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from couchbase_core.exceptions import ArgumentError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from couchbase_core.n1ql import N1QLRequest
    from couchbase_core.views.iterator import View

__all__ = ["QueryMixin"]


class QueryMixin:
    """View and N1QL queries of :class:`~couchbase_core._bucketbase.BaseBucket`."""

    # ------------------------------------------------------------------ views

    #: The iterator class ``query`` returns (GView on the gevent bucket).
    _view_class: Any = None

    def query(self, design: str, view: str, use_devmode: bool = False, **kwargs: Any) -> View:
        """A view query: returns an iterable :class:`~couchbase_core.views.iterator.View`
        (on the gevent bucket a ``GView``; on an AsyncBucket pass
        ``itercls=`` an :class:`~couchbase_core.asynchronous.view.AsyncViewBase`
        subclass). Keyword arguments are view parameters
        (:mod:`couchbase_core.views.params`) plus ``include_docs``,
        ``query``, ``row_processor``, ``spatial``, ``streaming``."""
        self._require_couchbase("views", "plain memcached has no view engine")
        itercls = kwargs.pop("itercls", None) or self._view_class
        if itercls is None:
            from couchbase_core.views.iterator import View

            itercls = View
        return itercls(self, design, view, use_devmode=use_devmode, **kwargs)

    #: The request class ``n1ql_query`` returns (GN1QLRequest on gevent).
    _n1ql_class: Any = None

    def n1ql_query(self, query: Any, *args: Any, **kwargs: Any) -> N1QLRequest:
        """A N1QL query: returns an iterable
        :class:`~couchbase_core.n1ql.N1QLRequest` (a ``GN1QLRequest`` on the
        gevent bucket; pass ``itercls=`` an
        :class:`~couchbase_core.asynchronous.n1ql.AsyncN1QLRequest` subclass
        on an AsyncBucket). ``query`` is a :class:`N1QLQuery` or a statement
        string; ``*args``/``**kwargs`` are its parameters then."""
        from couchbase_core.n1ql import N1QLQuery, N1QLRequest

        itercls = kwargs.pop("itercls", None) or self._n1ql_class or N1QLRequest
        row_factory = kwargs.pop("row_factory", None)
        if isinstance(query, str):
            query = N1QLQuery(query, *args, **kwargs)
        elif args or kwargs:
            raise ArgumentError("parameters go into the N1QLQuery when one is given")
        if row_factory is not None:
            return itercls(query, self, row_factory)
        return itercls(query, self)

    # -------------------------------------------------------------- analytics

    #: The request class ``analytics_query`` returns (GAnalyticsRequest on gevent).
    _analytics_class: Any = None

    def analytics_query(self, query: Any, host: Optional[str] = None, *args: Any, **kwargs: Any) -> Any:
        """An analytics query: returns an iterable
        :class:`~couchbase_core.analytics.AnalyticsRequest` (a
        ``GAnalyticsRequest`` on the gevent bucket; on an AsyncBucket an
        :class:`~couchbase_core.asynchronous.analytics.AsyncAnalyticsRequest`,
        or the subclass given as ``itercls=``, to ``start()``).

        ``query`` is an :class:`~couchbase_core.analytics.AnalyticsQuery`
        (a :class:`~couchbase_core.analytics.DeferredAnalyticsQuery` gives a
        :class:`~couchbase_core.analytics.DeferredAnalyticsRequest`) or a
        statement string. ``host`` is the analytics node to prefer, as the
        2.5 SDK's second argument (None: any node of the cluster config
        offering the service; see :mod:`couchbase_core.analytics`).
        ``*args``/``**kwargs`` are the query's positional and named
        parameters, added to an AnalyticsQuery given (as 2.5 did)."""
        from couchbase_core.analytics import (
            AnalyticsQuery,
            AnalyticsRequest,
            DeferredAnalyticsQuery,
            DeferredAnalyticsRequest,
        )

        itercls = kwargs.pop("itercls", None)
        if isinstance(query, str):
            query = AnalyticsQuery(query, *args, **kwargs)
        elif isinstance(query, AnalyticsQuery):
            query.update(*args, **kwargs)
        else:
            raise ArgumentError("analytics_query needs an AnalyticsQuery or a statement string, not %s"
                                % type(query).__name__)
        if itercls is None:
            if isinstance(query, DeferredAnalyticsQuery):
                itercls = DeferredAnalyticsRequest
            else:
                itercls = self._analytics_class or AnalyticsRequest
        return itercls(query, host, self)

    # ------------------------------------------------------------- search

    #: The request class ``search`` returns (GSearchRequest on gevent).
    _search_class: Any = None

    def search(self, index: str, query: Any, *args: Any, **kwargs: Any) -> Any:
        """A full-text search of ``index``: returns an iterable
        :class:`~couchbase_core.fulltext.SearchRequest` over the hits (a
        ``GSearchRequest`` on the gevent bucket; on an AsyncBucket an
        :class:`~couchbase_core.asynchronous.fulltext.AsyncSearchRequest`
        to ``start()``). ``query`` is a :class:`~couchbase_core.fulltext.Query`
        or a query string; the parameters are one
        :class:`~couchbase_core.fulltext.Params` (positionally or as
        ``params=``) or its attributes as keywords (``limit``, ``skip``,
        ``fields``, ``facets``, ``sort``...), plus ``itercls`` and
        ``row_factory``."""
        from couchbase_core.fulltext import build_request

        self._require_couchbase("full-text search", "plain memcached has no search service")
        return build_request(self, index, query, args, kwargs, self._search_class)

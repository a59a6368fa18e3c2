"""Full-text search (the FTS service, spec/http-services.md §1, port 8094).

::

    import couchbase_core.fulltext as FT

    q = FT.ConjunctionQuery(FT.MatchQuery("nosql", field="title"),
                            FT.NumericRangeQuery(min=2010, field="year"))
    req = bucket.search("articles", q, limit=20, sort=["-year", "_score"],
                        facets={"years": FT.NumericFacet("year").add_range("new", min=2015)})
    for hit in req:                 # hits stream in: {"id": ..., "score": ..., ...}
        print(hit["id"], hit["score"])
    print(req.total_hits, req.facets["years"])

The classes mirror the 2.5 SDK's ``couchbase.fulltext``: every query,
facet and sort object keeps the JSON it stands for (``encodable`` /
``as_encodable()``), built attribute by attribute, so what is sent is
exactly what the attributes say. :func:`make_search_body` assembles the
request body (``query``, the :class:`Params` fields, ``indexName``);
``bucket.search(index, query, **params)`` POSTs it to
``/api/index/<index>/query`` on a node offering the ``fts`` service and
returns a :class:`SearchRequest` whose iteration yields the ``hits`` as
they are parsed (the gevent bucket's greenlet sleeps between batches; the
AsyncBucket pushes them to callbacks, see
:mod:`couchbase_core.asynchronous.fulltext`).

Bad arguments raise :class:`SearchArgumentError` before anything is sent.
It is an :class:`~couchbase_core.exceptions.ArgumentError` (the project's
tree) and also a ``ValueError``, ``TypeError`` and ``AttributeError``, the
builtin exceptions 2.5 raised for the same mistakes, so 2.5 code that
caught those keeps working. Failures the service reports raise
:class:`SearchError`. See ``docs/search.md``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from couchbase_core._rowstream import ClosableRows
from couchbase_core.exceptions import RC, ArgumentError, CouchbaseError, HTTPError, exc_from_rc

__all__ = [
    "SearchError", "SearchArgumentError", "NoChildrenError",
    "Facet", "TermFacet", "DateFacet", "NumericFacet",
    "Sort", "SortString", "SortScore", "SortID", "SortField", "SortGeoDistance", "SortRaw",
    "Params", "Query", "SearchQuery", "RawQuery", "QueryStringQuery", "WildcardQuery", "DocIdQuery",
    "MatchQuery", "TermQuery", "MatchPhraseQuery", "PhraseQuery", "PrefixQuery", "RegexQuery", "RegexpQuery",
    "GeoDistanceQuery", "GeoBoundingBoxQuery", "NumericRangeQuery", "DateRangeQuery", "TermRangeQuery",
    "ConjunctionQuery", "DisjunctionQuery", "BooleanQuery", "MatchAllQuery", "MatchNoneQuery",
    "BooleanFieldQuery", "make_search_body", "SearchRequest", "search_path", "search_error", "HTTP_GRACE",
]

#: The client's deadline for a search is its ``timeout`` (which the service
#: enforces) plus this grace; the service's answer comes first.
HTTP_GRACE = 1.0


# ---------------------------------------------------------------- errors


class SearchError(HTTPError):
    """The search service refused or failed the request (an
    :class:`~couchbase_core.exceptions.HTTPError`). ``http_status`` is the
    HTTP status (0 when none arrived); ``objextra`` the service's reply (the
    error document, or the metadata whose ``status.errors`` it is)."""

    CODE = RC.HTTP

    http_status = 0

    @property
    def errors(self) -> Any:
        """What the service said: ``status.errors`` of a partial failure, or
        the ``error`` text of a refused request."""
        extra = self.objextra if isinstance(self.objextra, dict) else {}
        status = extra.get("status")
        if isinstance(status, dict) and status.get("errors"):
            return status["errors"]
        return extra.get("error", self.message)


class SearchArgumentError(ArgumentError, ValueError, TypeError, AttributeError):
    """A search query, facet, sort or parameter was given a bad value (raised
    before anything is sent). Also a ValueError, TypeError and
    AttributeError: the builtin classes 2.5 raised for these mistakes."""


class NoChildrenError(SearchArgumentError):
    """A compound query (or a phrase or doc-id query) has nothing in it."""

    def __init__(self, msg: str = "No child queries") -> None:
        super().__init__({"message": msg})


def _bad(message: str) -> SearchArgumentError:
    return SearchArgumentError({"message": message})


# ------------------------------------------------- JSON-backed attributes


class _JSONField:
    """An attribute stored in the owner's ``_json_`` dict at ``path``
    (``("ctl", "timeout")`` is ``_json_["ctl"]["timeout"]``), its value
    passed through ``convert`` when set. Reading an unset field gives None;
    ``del`` removes it."""

    def __init__(self, convert: Callable[[Any], Any], *path: str, doc: str = "") -> None:
        self.convert = convert
        self.path = path
        self.__doc__ = doc or "The ``%s`` field." % ".".join(path)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        node = obj._json_
        for part in self.path:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def __set__(self, obj: Any, value: Any) -> None:
        try:
            value = self.convert(value)
        except SearchArgumentError:
            raise
        except (TypeError, ValueError) as exc:
            raise SearchArgumentError({"message": "%s.%s: %s" % (type(obj).__name__, self.name, exc),
                                       "inner_cause": exc}) from exc
        node = obj._json_
        for part in self.path[:-1]:
            node = node.setdefault(part, {})
        node[self.path[-1]] = value

    def __delete__(self, obj: Any) -> None:
        node = obj._json_
        for part in self.path[:-1]:
            node = node.get(part)
            if not isinstance(node, dict):
                return
        node.pop(self.path[-1], None)


def _text(value: Any) -> str:
    """Strings as given; anything else as its ``str`` (what 2.5 sent)."""
    return value if isinstance(value, str) else str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a number is needed, not %r" % (value,))
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an int is needed, not %r" % (value,))
    return value


def _non_negative(value: Any) -> int:
    value = _integer(value)
    if value < 0:
        raise ValueError("must be 0 or more, not %d" % value)
    return value


def _positive(value: Any) -> int:
    value = _integer(value)
    if value <= 0:
        raise ValueError("must be greater than 0, not %d" % value)
    return value


def _flag(value: Any) -> bool:
    return bool(value)


def _str_list(value: Any) -> List[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("a list of strings is needed, not %r" % (value,))
    for item in value:
        if not isinstance(item, str):
            raise TypeError("a list of strings is needed; %r is not a string" % (item,))
    return list(value)


def _location(value: Any) -> List[float]:
    """A point as 2.5 sent it: ``[lon, lat]`` floats (from a 2-sequence)."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError("a location is a (lon, lat) pair of numbers, not %r" % (value,))
    return [_number(value[0]), _number(value[1])]


def _highlight_style(value: Any) -> str:
    if value not in ("html", "ansi"):
        raise ValueError('highlight style must be "html" or "ansi", not %r' % (value,))
    return value


def _assign(obj: Any, kwargs: Dict[str, Any]) -> None:
    """Set each keyword as an attribute; an unknown name is an error (the
    2.5 rule: keywords must name a property of the object)."""
    for name, value in kwargs.items():
        if name.startswith("_") or not hasattr(type(obj), name):
            raise _bad("%r is not an option of %s" % (name, type(obj).__name__))
        setattr(obj, name, value)


# ------------------------------------------------------------------ facets


class Facet:
    """Base of the facets: counts of the matching documents' values of
    ``field``. Add facets to :attr:`Params.facets` under a name; the result
    is :attr:`SearchRequest.facets` under the same name."""

    def __init__(self, field: str) -> None:
        self._json_: Dict[str, Any] = {}
        self.field = field

    field = _JSONField(_text, "field", doc="The field whose values are counted.")

    @property
    def encodable(self) -> Dict[str, Any]:
        """The facet's JSON object."""
        return self._json_

    def __repr__(self) -> str:
        return "%s<%r>" % (type(self).__name__, self._json_)


class TermFacet(Facet):
    """The most frequent terms of a field (``size`` of them: ``limit``)."""

    def __init__(self, field: str, limit: int = 0) -> None:
        super().__init__(field)
        if limit:
            self.limit = limit

    limit = _JSONField(_positive, "size", doc="How many term/count pairs to return (``size``).")


def _range(name: str, low_key: str, high_key: str, low: Any, high: Any) -> Dict[str, Any]:
    if not isinstance(name, str):
        raise _bad("a facet range needs a name (str), not %r" % (name,))
    out: Dict[str, Any] = {}
    if low is not None:
        out[low_key] = low
    if high is not None:
        out[high_key] = high
    if not out:
        raise _bad("a facet range needs at least one bound (%s or %s)" % (low_key, high_key))
    out["name"] = name
    return out


class DateFacet(Facet):
    """Counts per named date range; add at least one with :meth:`add_range`."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self._json_["date_ranges"] = []

    def add_range(self, name: str, start: Optional[str] = None, end: Optional[str] = None) -> "DateFacet":
        """Add the range ``name`` from ``start`` to ``end`` (RFC 3339 dates;
        one may be omitted). Returns self, for chaining."""
        self._json_["date_ranges"].append(_range(name, "start", "end", start, end))
        return self

    @property
    def _ranges(self) -> List[Dict[str, Any]]:
        return self._json_["date_ranges"]


class NumericFacet(Facet):
    """Counts per named numeric range; add at least one with :meth:`add_range`."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self._json_["numeric_ranges"] = []

    def add_range(self, name: str, min: Optional[float] = None,  # noqa: A002 - the 2.5 names
                  max: Optional[float] = None) -> "NumericFacet":  # noqa: A002
        """Add the range ``name`` from ``min`` to ``max`` (one may be
        omitted). Returns self, for chaining."""
        for bound in (min, max):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                raise _bad("a numeric range bound is a number, not %r" % (bound,))
        self._json_["numeric_ranges"].append(_range(name, "min", "max", min, max))
        return self

    @property
    def _ranges(self) -> List[Dict[str, Any]]:
        return self._json_["numeric_ranges"]


class _FacetDict(dict):
    """``Params.facets``: only facets, and range facets only with ranges."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.update(*args, **kwargs)

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(value, Facet):
            raise _bad("only Facet objects can be added to facets, not %r" % (value,))
        if hasattr(value, "_ranges") and not value._ranges:
            raise _bad("%s needs at least one range: use add_range" % type(value).__name__)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add facets (each checked)."""
        if len(args) > 1:
            raise _bad("update takes one mapping")
        for source in (dict(args[0]) if args else {}, kwargs):
            for key, value in source.items():
                self[key] = value

    def setdefault(self, key: str, value: Any = None) -> Any:
        """Add ``value`` under ``key`` unless a facet is there already."""
        if key not in self:
            self[key] = value
        return self[key]


# ------------------------------------------------------------------- sorts


class Sort:
    """Base of the sort objects: ``{"by": ..., "desc": ...}``. ``Params.sort``
    takes one, or a list of field names (``"-name"`` descending, ``"_score"``,
    ``"_id"``) and sort objects."""

    def __init__(self, by: str, **kwargs: Any) -> None:
        self._json_: Any = {"by": by}
        if "descending" in kwargs:
            kwargs["desc"] = kwargs.pop("descending")
        _assign(self, kwargs)

    desc = _JSONField(_flag, "desc", doc="Sort in descending order.")

    @property
    def descending(self) -> Any:
        """Alias of :attr:`desc`."""
        return self.desc

    @descending.setter
    def descending(self, value: Any) -> None:
        self.desc = value

    def as_encodable(self) -> Any:
        """The sort's JSON."""
        return self._json_

    def __repr__(self) -> str:
        return "%s<%r>" % (type(self).__name__, self._json_)


class SortString(Sort):
    """A list of field names, as :attr:`Params.sort` takes them."""

    def __init__(self, *fields: str) -> None:
        self._json_ = _str_list(list(fields))


class SortScore(Sort):
    """By score (ascending unless ``desc``; the service's default order,
    without any sort, is by descending score)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("score", **kwargs)


class SortID(Sort):
    """By document id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("id", **kwargs)


class SortField(Sort):
    """By the values of a field; ``type`` (``auto``, ``string``, ``number``,
    ``date``), ``mode`` (``default``, ``min``, ``max``) and ``missing``
    (``first``, ``last``) as the service defines them."""

    def __init__(self, field: str, **kwargs: Any) -> None:
        kwargs["field"] = field
        super().__init__("field", **kwargs)

    field = _JSONField(_text, "field", doc="The field to sort by.")
    type = _JSONField(_text, "type", doc="How to read the values: auto, string, number or date.")
    mode = _JSONField(_text, "mode", doc="Which value of a multi-valued field counts: default, min or max.")
    missing = _JSONField(_text, "missing", doc="Where documents without the field go: first or last.")


class SortGeoDistance(Sort):
    """By distance from ``location`` (``(lon, lat)``) of the points in ``field``."""

    def __init__(self, location: Sequence[float], field: str, **kwargs: Any) -> None:
        kwargs.update(location=location, field=field)
        super().__init__("geo_distance", **kwargs)

    location = _JSONField(_location, "location", doc="``(lon, lat)`` of the origin.")
    field = _JSONField(_text, "field", doc="The field holding the points.")
    unit = _JSONField(_text, "unit", doc="Unit of the distances reported (e.g. ``km``, ``mi``).")


class SortRaw(Sort):
    """Any sort JSON, sent as given."""

    def __init__(self, raw: Any) -> None:
        self._json_ = raw


def _sort(value: Any) -> Any:
    if isinstance(value, Sort):
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("sort is a Sort or a list of field names and Sort objects, not %r" % (value,))
    out = []
    for item in value:
        if isinstance(item, Sort):
            out.append(item.as_encodable())
        elif isinstance(item, str):
            out.append(item)
        else:
            raise TypeError("a sort entry is a field name or a Sort, not %r" % (item,))
    return out


def _consistency(value: Any) -> Any:
    if value is None or value in ("", "not_bounded"):
        return value
    raise ValueError("consistency may only be '' or 'not_bounded' (use consistent_with() for at_plus), not %r"
                     % (value,))


# ------------------------------------------------------------------ params


def _timeout_ms(value: Any) -> int:
    seconds = _number(value)
    if seconds <= 0:
        raise ValueError("the timeout must be greater than 0 seconds")
    from couchbase_core.connstr import MAX_TIMEOUT

    if seconds > MAX_TIMEOUT:
        raise ValueError("the timeout may be at most %d seconds (MAX_TIMEOUT)" % MAX_TIMEOUT)
    return max(1, int(seconds * 1000))


class Params:
    """Everything about a search but the query: paging, fields, highlighting,
    facets, sort, consistency and the server-side timeout. Keyword arguments
    set the attributes of the same name (unknown ones are refused)."""

    def __init__(self, **kwargs: Any) -> None:
        self._json_: Dict[str, Any] = {}
        self._ms: Any = None
        self._consistency: Any = None
        facets = kwargs.pop("facets", None) or {}
        if not isinstance(facets, dict):
            raise _bad("facets is a dict of name -> Facet, not %r" % (facets,))
        self.facets = _FacetDict(facets)
        _assign(self, kwargs)

    limit = _JSONField(_non_negative, "size", doc="The most hits to return (``size``).")
    skip = _JSONField(_non_negative, "from", doc="Hits to skip first (``from``).")
    explain = _JSONField(_flag, "explain", doc="Ask for each hit's score explanation.")
    fields = _JSONField(_str_list, "fields", doc="Document fields to return with each hit.")
    timeout = _JSONField(_timeout_ms, "ctl", "timeout",
                         doc="Server-side timeout, set in seconds, sent in milliseconds (``ctl.timeout``).")
    highlight_style = _JSONField(_highlight_style, "highlight", "style",
                                 doc='Highlight matches in the fragments: "html" or "ansi".')
    highlight_fields = _JSONField(_str_list, "highlight", "fields", doc="The fields to highlight.")
    sort = _JSONField(_sort, "sort", doc="A Sort, or a list of field names and Sort objects.")

    @property
    def consistency(self) -> Any:
        """'' or 'not_bounded' (the default); use :meth:`consistent_with`
        to wait for given mutations."""
        return self._consistency

    @consistency.setter
    def consistency(self, value: Any) -> None:
        try:
            self._consistency = _consistency(value)
        except ValueError as exc:
            raise _bad(str(exc)) from exc

    def consistent_with(self, ms: Any) -> None:
        """Search only once the index has every mutation in ``ms`` (a
        :class:`~couchbase_core.n1ql.MutationState`: ``at_plus``)."""
        if self._consistency:
            raise _bad('clear "consistency" before specifying "consistent_with"')
        from couchbase_core.n1ql import MutationState

        if not isinstance(ms, MutationState):
            raise _bad("consistent_with takes a MutationState, not %r" % (ms,))
        _fts_vectors(ms)  # one bucket only: checked now, not when sending
        self._ms = ms

    def as_encodable(self, index_name: str) -> Dict[str, Any]:
        """The request fields these parameters stand for."""
        body = _deep_copy(self._json_)
        if self.facets:
            body["facets"] = {name: facet.encodable for name, facet in self.facets.items()}
        if self._ms:
            body.setdefault("ctl", {})["consistency"] = {"level": "at_plus",
                                                        "vectors": {index_name: _fts_vectors(self._ms)}}
        elif self._consistency:
            body.setdefault("ctl", {})["consistency"] = {"level": self._consistency}
        sort = body.get("sort")
        if isinstance(sort, Sort):
            body["sort"] = sort.as_encodable()
        return body


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _fts_vectors(ms: Any) -> Dict[str, int]:
    """A MutationState as FTS consistency vectors: ``{"<vb>/<vbuuid>": seqno}``
    (one bucket only, as 2.5 required)."""
    tokens = list(ms._tokens.values())
    buckets = {token.bucket for token in tokens}
    if len(buckets) > 1:
        raise _bad("a search can be consistent with the mutations of one bucket only, not %d" % len(buckets))
    return {"%d/%d" % (token.vbucket, token.vbucket_uuid): token.seqno for token in tokens}


# ----------------------------------------------------------------- queries


class Query:
    """Base of every query (2.5's name; :data:`SearchQuery` is an alias).
    ``encodable`` checks the query and returns its JSON."""

    def __init__(self, **kwargs: Any) -> None:
        self._json_: Dict[str, Any] = {}
        _assign(self, kwargs)

    boost = _JSONField(_number, "boost", doc="Weight of this query among its siblings.")

    @property
    def encodable(self) -> Dict[str, Any]:
        """The query's JSON (after :meth:`validate`)."""
        self.validate()
        return self._json_

    def validate(self) -> None:
        """Raise :class:`SearchArgumentError` if the query cannot be sent."""

    def __repr__(self) -> str:
        return "%s<%r>" % (type(self).__name__, self._json_)


SearchQuery = Query


class RawQuery(Query):
    """Any query JSON, sent as given."""

    def __init__(self, obj: Dict[str, Any]) -> None:
        super().__init__()
        self._json_ = obj


class _SingleQuery(Query):
    """A query whose main value is its first argument (stored under the
    attribute named by ``_TERMPROP``); other keywords set attributes."""

    _TERMPROP = ""

    def __init__(self, term: Any, **kwargs: Any) -> None:
        super().__init__()
        kwargs.setdefault(self._TERMPROP, term)
        _assign(self, kwargs)


_FIELD_DOC = "Search this field only (default: every field)."
_ANALYZER_DOC = "Analyse the input with this (server-side) analyser."
_FUZZ_DOC = "Allow matches this many single-character edits away."
_PREFIX_DOC = "With fuzziness: how many leading characters must match exactly."


class QueryStringQuery(_SingleQuery):
    """A query in the service's query-string syntax
    (``+title:water -hot year:>2010``)."""

    _TERMPROP = "query"
    query = _JSONField(_text, "query", doc="The query string.")


class WildcardQuery(_SingleQuery):
    """Terms matching a pattern: ``?`` one character, ``*`` any run."""

    _TERMPROP = "wildcard"
    wildcard = _JSONField(_text, "wildcard", doc="The pattern.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class DocIdQuery(_SingleQuery):
    """Documents with the given ids (most useful inside compound queries)."""

    _TERMPROP = "ids"
    ids = _JSONField(_str_list, "ids", doc="The document ids.")

    def validate(self) -> None:
        """At least one id."""
        if not self.ids:
            raise NoChildrenError("`ids` must contain at least one ID")


class MatchQuery(_SingleQuery):
    """Analysed text: documents with any of its terms."""

    _TERMPROP = "match"
    match = _JSONField(_text, "match", doc="The text to search for.")
    prefix_length = _JSONField(_non_negative, "prefix_length", doc=_PREFIX_DOC)
    fuzziness = _JSONField(_non_negative, "fuzziness", doc=_FUZZ_DOC)
    field = _JSONField(_text, "field", doc=_FIELD_DOC)
    analyzer = _JSONField(_text, "analyzer", doc=_ANALYZER_DOC)


class TermQuery(_SingleQuery):
    """One exact term (not analysed)."""

    _TERMPROP = "term"
    term = _JSONField(_text, "term", doc="The exact term.")
    prefix_length = _JSONField(_non_negative, "prefix_length", doc=_PREFIX_DOC)
    fuzziness = _JSONField(_non_negative, "fuzziness", doc=_FUZZ_DOC)
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class MatchPhraseQuery(_SingleQuery):
    """Analysed text whose terms must appear in order, next to each other."""

    _TERMPROP = "match_phrase"
    match_phrase = _JSONField(_text, "match_phrase", doc="The phrase.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)
    analyzer = _JSONField(_text, "analyzer", doc=_ANALYZER_DOC)


class PhraseQuery(_SingleQuery):
    """Exact terms (not analysed) in order, next to each other."""

    _TERMPROP = "terms"
    terms = _JSONField(_str_list, "terms", doc="The terms.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)

    def __init__(self, *phrases: str, **kwargs: Any) -> None:
        super().__init__(list(phrases), **kwargs)

    def validate(self) -> None:
        """At least one term."""
        if not self.terms:
            raise NoChildrenError("Missing terms")


class PrefixQuery(_SingleQuery):
    """Terms starting with a prefix (type-ahead)."""

    _TERMPROP = "prefix"
    prefix = _JSONField(_text, "prefix", doc="The prefix.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class RegexQuery(_SingleQuery):
    """Terms matching a regular expression (the whole term)."""

    _TERMPROP = "regex"
    regex = _JSONField(_text, "regexp", doc="The regular expression (sent as ``regexp``).")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


RegexpQuery = RegexQuery


class BooleanFieldQuery(_SingleQuery):
    """Documents whose boolean field has this value."""

    _TERMPROP = "bool"
    bool = _JSONField(_flag, "bool", doc="The value.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class GeoDistanceQuery(Query):
    """Points within ``distance`` (``"10km"``, ``"5mi"``...) of ``location``
    (``(lon, lat)``)."""

    def __init__(self, distance: str, location: Sequence[float], **kwargs: Any) -> None:
        super().__init__()
        kwargs["distance"] = distance
        kwargs["location"] = location
        _assign(self, kwargs)

    location = _JSONField(_location, "location", doc="``(lon, lat)`` of the centre.")
    distance = _JSONField(_text, "distance", doc="The radius, with its unit.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class GeoBoundingBoxQuery(Query):
    """Points inside the box from ``top_left`` to ``bottom_right`` (each ``(lon, lat)``)."""

    def __init__(self, top_left: Sequence[float], bottom_right: Sequence[float], **kwargs: Any) -> None:
        super().__init__()
        kwargs["top_left"] = top_left
        kwargs["bottom_right"] = bottom_right
        _assign(self, kwargs)

    top_left = _JSONField(_location, "top_left", doc="``(lon, lat)`` of the top left corner.")
    bottom_right = _JSONField(_location, "bottom_right", doc="``(lon, lat)`` of the bottom right corner.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class _RangeQuery(Query):
    """A range with at least one bound (``_MINMAX`` names the bound attributes)."""

    _MINMAX: Tuple[str, str] = ("", "")

    def __init__(self, low: Any, high: Any, **kwargs: Any) -> None:
        super().__init__()
        _assign(self, kwargs)
        if low is None and high is None:
            raise _bad("At least one of %s or %s should be specified" % self._MINMAX)
        if low is not None:
            setattr(self, self._MINMAX[0], low)
        if high is not None:
            setattr(self, self._MINMAX[1], high)


class NumericRangeQuery(_RangeQuery):
    """Numbers between ``min`` and ``max`` (by default the service includes
    ``min`` and excludes ``max``)."""

    _MINMAX = ("min", "max")

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None,  # noqa: A002
                 **kwargs: Any) -> None:
        super().__init__(min, max, **kwargs)

    min = _JSONField(_number, "min", doc="Lower bound.")
    min_inclusive = _JSONField(_flag, "inclusive_min", doc="Whether the lower bound matches.")
    max = _JSONField(_number, "max", doc="Upper bound.")
    max_inclusive = _JSONField(_flag, "inclusive_max", doc="Whether the upper bound matches.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class DateRangeQuery(_RangeQuery):
    """Dates between ``start`` and ``end`` (RFC 3339 unless
    ``datetime_parser`` names another parser of the index)."""

    _MINMAX = ("start", "end")

    def __init__(self, start: Optional[str] = None, end: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(start, end, **kwargs)

    start = _JSONField(_text, "start", doc="Lower bound.")
    end = _JSONField(_text, "end", doc="Upper bound.")
    start_inclusive = _JSONField(_flag, "inclusive_start", doc="Whether the lower bound matches.")
    end_inclusive = _JSONField(_flag, "inclusive_end", doc="Whether the upper bound matches.")
    datetime_parser = _JSONField(_text, "datetime_parser", doc="The index's date parser to read the bounds with.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


class TermRangeQuery(_RangeQuery):
    """Terms between ``start`` and ``end`` in lexical order.

    Sent as the service reads a term range: ``min``/``max``/
    ``inclusive_min``/``inclusive_max`` (2.5 sent ``start``/``end``, which
    the service reads as a *date* range, and its constructor could not be
    called; see ``docs/search.md``). ``min``/``max`` are aliases of
    ``start``/``end``."""

    _MINMAX = ("start", "end")

    def __init__(self, start: Optional[str] = None, end: Optional[str] = None, **kwargs: Any) -> None:
        if "min" in kwargs:
            start = kwargs.pop("min") if start is None else start
        if "max" in kwargs:
            end = kwargs.pop("max") if end is None else end
        super().__init__(start, end, **kwargs)

    start = _JSONField(_text, "min", doc="Lower bound (sent as ``min``).")
    end = _JSONField(_text, "max", doc="Upper bound (sent as ``max``).")
    start_inclusive = _JSONField(_flag, "inclusive_min", doc="Whether the lower bound matches.")
    end_inclusive = _JSONField(_flag, "inclusive_max", doc="Whether the upper bound matches.")
    field = _JSONField(_text, "field", doc=_FIELD_DOC)


def _queries(value: Any) -> List[Query]:
    if isinstance(value, Query):
        return [value]
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise _bad("a query or a list of queries is needed, not %r" % (value,))
    out = list(value)
    for item in out:
        if not isinstance(item, Query):
            raise _bad("%r is not a query" % (item,))
    return out


class _CompoundQuery(Query):
    """A query over sub-queries (``_CHILDREN``: the attribute and JSON name)."""

    _CHILDREN = ""

    @property
    def encodable(self) -> Dict[str, Any]:
        """The JSON, sub-queries encoded (each checked)."""
        self.validate()
        out = dict(self._json_)
        children = getattr(self, self._CHILDREN)
        if children:
            out[self._CHILDREN] = [q.encodable for q in children]
        return out


class ConjunctionQuery(_CompoundQuery):
    """Documents matching every sub-query."""

    _CHILDREN = "conjuncts"

    def __init__(self, *queries: Query, **kwargs: Any) -> None:
        super().__init__()
        self.conjuncts: List[Query] = _queries(queries) if queries else []
        _assign(self, kwargs)

    def validate(self) -> None:
        """At least one sub-query."""
        if not self.conjuncts:
            raise NoChildrenError("No sub-queries")


class DisjunctionQuery(_CompoundQuery):
    """Documents matching at least ``min`` (default 1) of the sub-queries."""

    _CHILDREN = "disjuncts"

    def __init__(self, *queries: Query, **kwargs: Any) -> None:
        super().__init__()
        self.disjuncts: List[Query] = _queries(queries) if queries else []
        _assign(self, kwargs)
        if "min" not in self._json_:
            self.min = 1

    min = _JSONField(_positive, "min", doc="How many sub-queries must match.")

    def validate(self) -> None:
        """At least ``min`` sub-queries."""
        if not self.disjuncts or len(self.disjuncts) < self.min:
            raise NoChildrenError("No children specified, or min is too big")


class _Clause:
    """A BooleanQuery clause: stored as ``kind`` (a compound query class);
    set from one query, a list of queries, or an instance of ``kind``."""

    def __init__(self, name: str, kind: type, doc: str) -> None:
        self.name = name
        self.kind = kind
        self.__doc__ = doc

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        return obj._clauses.get(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        if value is None:
            obj._clauses.pop(self.name, None)
        elif isinstance(value, self.kind):
            obj._clauses[self.name] = value
        else:
            obj._clauses[self.name] = self.kind(*_queries(value))

    def __delete__(self, obj: Any) -> None:
        obj._clauses.pop(self.name, None)


class BooleanQuery(Query):
    """``must`` (all of them), ``should`` (``should.min`` of them) and
    ``must_not`` (none of them)."""

    def __init__(self, must: Any = None, should: Any = None, must_not: Any = None) -> None:
        super().__init__()
        self._clauses: Dict[str, Query] = {}
        self.must = must
        self.should = should
        self.must_not = must_not

    must = _Clause("must", ConjunctionQuery, "Queries that must all match (a ConjunctionQuery).")
    should = _Clause("should", DisjunctionQuery, "Queries of which ``should.min`` must match (a DisjunctionQuery).")
    must_not = _Clause("must_not", DisjunctionQuery, "Queries none of which may match (a DisjunctionQuery).")

    @property
    def encodable(self) -> Dict[str, Any]:
        """The JSON, clauses encoded."""
        self.validate()
        out = dict(self._json_)
        for name in ("must", "must_not", "should"):
            clause = self._clauses.get(name)
            if clause:
                out[name] = clause.encodable
        return out

    def validate(self) -> None:
        """At least one clause."""
        if not self._clauses:
            raise NoChildrenError("No sub-queries specified")


class MatchAllQuery(Query):
    """Every document."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._json_["match_all"] = None


class MatchNoneQuery(Query):
    """No document."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._json_["match_none"] = None


# ------------------------------------------------------------ the request


def make_search_body(index: str, query: Any, params: Optional[Params] = None) -> Dict[str, Any]:
    """The request body: ``query`` (a string becomes a
    :class:`QueryStringQuery`), the fields of ``params`` and ``indexName``."""
    if not isinstance(index, str) or not index:
        raise _bad("the index name must be a non-empty str, not %r" % (index,))
    if isinstance(query, str):
        query = QueryStringQuery(query)
    if not isinstance(query, Query):
        raise _bad("the query must be a Query or a query string, not %r" % (query,))
    body: Dict[str, Any] = {"query": query.encodable}
    if params is not None:
        body.update(params.as_encodable(index))
    body["indexName"] = index
    return body


def search_path(index: str) -> str:
    """The path a search of ``index`` is POSTed to."""
    from urllib.parse import quote

    return "/api/index/%s/query" % quote(index, safe="")


def dump_body(body: Dict[str, Any]) -> bytes:
    """The body as JSON bytes; a value that is not JSON is an ArgumentError."""
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SearchArgumentError({"message": "the search request is not JSON-serialisable: %s" % exc,
                                   "inner_cause": exc}) from exc


def search_error(meta: Dict[str, Any], http_status: int, error: Optional[Tuple[int, str]]) -> Optional[CouchbaseError]:
    """The exception for a finished response, or None: a transport failure
    (``error``: an ``(rc, message)`` pair) by its code (TimeoutError for the
    client's deadline, NetworkError...); a refused request (not 2xx) or a
    response whose ``status`` reports errors as :class:`SearchError`."""
    if error is not None and error[0]:
        return exc_from_rc(error[0], "search request failed: %s" % error[1])
    status = meta.get("status")
    if not 200 <= http_status < 300 and http_status != 0:
        detail = meta.get("error") or meta.get("body") or ""
        exc = SearchError({"message": "search refused (HTTP %d): %s" % (http_status, str(detail)[:500]),
                           "objextra": meta})
        exc.http_status = http_status
        return exc
    if isinstance(status, dict) and (status.get("errors") or status.get("failed")):
        exc = SearchError({"message": "search failed on %s of %s index partitions: %s" % (
            status.get("failed"), status.get("total"), json.dumps(status.get("errors"))[:500]), "objextra": meta})
        exc.http_status = http_status
        return exc
    if isinstance(status, str) and status not in ("ok", "success"):
        exc = SearchError({"message": "search failed: %s" % (meta.get("error") or status), "objextra": meta})
        exc.http_status = http_status
        return exc
    return None


class SearchRequest(ClosableRows):
    """A search being run: iterate it (once) for the hits (dicts with ``id``,
    ``score``, ``index``, ``sort``, ``locations`` and, when asked for,
    ``fields``, ``fragments``, ``explanation``), passed through
    ``row_factory``. The metadata is there once every hit was read:
    :attr:`meta`, :attr:`total_hits`, :attr:`max_score`, :attr:`took`,
    :attr:`facets`, :attr:`status`. Create it with ``bucket.search``."""

    def __init__(self, body: Dict[str, Any], parent: Any, row_factory: Callable[[Any], Any] = lambda row: row,
                 timeout: Optional[float] = None) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("indexName"), str):
            raise _bad("a SearchRequest needs a body from make_search_body")
        self._body = body
        self._encoded = dump_body(body)
        self.bucket = parent
        self.row_factory = row_factory
        self._timeout = timeout
        self.rows_returned = 0
        self._meta: Dict[str, Any] = {}
        self._meta_received = False
        self._iterated = False

    @classmethod
    def mk_kwargs(cls, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Take this class's own keywords (``row_factory``) out of ``kwargs``."""
        return {name: kwargs.pop(name) for name in ("row_factory",) if name in kwargs}

    @property
    def index(self) -> str:
        """The index searched."""
        return self._body["indexName"]

    @property
    def body(self) -> Dict[str, Any]:
        """The request body (a copy)."""
        return _deep_copy(self._body)

    # -- sending --------------------------------------------------------------

    def _deadline(self) -> float:
        """The client's deadline: the request's ``ctl.timeout`` (or the
        bucket's ``n1ql_timeout``, which 2.x used for searches too) plus
        :data:`HTTP_GRACE`."""
        if self._timeout is not None:
            return self._timeout
        ctl = self._body.get("ctl")
        if isinstance(ctl, dict) and isinstance(ctl.get("timeout"), int):
            return ctl["timeout"] / 1000.0 + HTTP_GRACE
        return float(self.bucket.n1ql_timeout) + HTTP_GRACE

    def _request_op(self, consumer: Any) -> Any:
        """The streamed HTTP request; ``consumer`` hears rows and the end."""
        from couchbase_core._httpops import RowStreamOp

        self.bucket._require_couchbase("full-text search", "plain memcached has no search service")
        return RowStreamOp("fts", "POST", search_path(self.index), self._encoded,
                           {"Content-Type": "application/json"}, self._deadline(), consumer, "hits")

    def _finish(self, meta: Dict[str, Any], http_status: int, error: Optional[Tuple[int, str]]) -> Optional[
            CouchbaseError]:
        self._meta = meta if isinstance(meta, dict) else {}
        self._meta_received = True
        return search_error(self._meta, http_status, error)

    # -- iteration ------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self._iterated:
            from couchbase_core.views.iterator import AlreadyQueriedError

            raise AlreadyQueriedError("this search has already been iterated; create a new one")
        self._iterated = True
        from couchbase_core._rowstream import RowStream

        self.bucket._require_couchbase("full-text search", "plain memcached has no search service")
        if self._closed:
            return  # closed before it was iterated
        stream = self._current = RowStream(self.bucket, self._request_op)
        for batch in stream.batches():
            for row in batch:
                stream.check_open()
                if stream.closed:
                    return
                self.rows_returned += 1
                yield self.row_factory(row)
        if stream.closed:
            return
        exc = self._finish(stream.meta, stream.http_status, stream.error)
        if exc is not None:
            raise exc

    def execute(self) -> "SearchRequest":
        """Run the search to its end (hits are discarded); returns self."""
        for _ in self:
            pass
        return self

    # -- metadata ---------------------------------------------------------------

    @property
    def meta(self) -> Dict[str, Any]:
        """Everything of the response but the hits (RuntimeError before the
        response has ended, as in 2.5)."""
        if not self._meta_received:
            raise RuntimeError("This property only valid once all rows are received!")
        return self._meta

    @property
    def total_hits(self) -> int:
        """How many documents matched (more than returned when limited)."""
        return self.meta["total_hits"]

    @property
    def max_score(self) -> float:
        """The best score."""
        return self.meta["max_score"]

    @property
    def took(self) -> int:
        """How long the search took on the server, in nanoseconds."""
        return self.meta["took"]

    @property
    def facets(self) -> Dict[str, Any]:
        """The facets' results, by name (empty when none was asked for)."""
        return self.meta.get("facets") or {}

    @property
    def status(self) -> Dict[str, Any]:
        """``status``: partitions ``total``, ``successful``, ``failed``, and ``errors``."""
        status = self.meta.get("status")
        return status if isinstance(status, dict) else {}

    def __repr__(self) -> str:
        return "<%s index=%r body=%r>" % (type(self).__name__, self.index, self._body)


def build_request(bucket: Any, index: str, query: Any, args: Sequence[Any], kwargs: Dict[str, Any],
                  default_class: Any) -> Any:
    """What ``bucket.search(index, query, *args, **kwargs)`` returns (the
    logic every flavour shares): ``args`` may hold one :class:`Params`;
    ``params=`` is one too; other keywords are :class:`Params` attributes,
    ``itercls`` and ``row_factory`` excepted."""
    itercls = kwargs.pop("itercls", None) or default_class or SearchRequest
    iterargs = itercls.mk_kwargs(kwargs)
    params = kwargs.pop("params", None)
    if args:
        if len(args) > 1 or params is not None:
            raise _bad("search takes one Params (positionally or as params=), not %d" % (len(args) +
                                                                                        (params is not None)))
        params = args[0]
    if params is None:
        params = Params(**kwargs)
    elif kwargs:
        raise _bad("give the parameters either in Params or as keywords, not both (%s)" % ", ".join(sorted(kwargs)))
    if not isinstance(params, Params):
        raise _bad("params must be a fulltext.Params, not %r" % (params,))
    body = make_search_body(index, query, params)
    return itercls(body, bucket, **iterargs)


"""The full-text search service of the emulator (8094-like): index
definitions and queries over the FTS REST API.

The module has two halves: an engine with no I/O (:class:`FTSService`:
index definitions, :class:`FTSIndex`: documents analysed into an inverted
index, query compilation and evaluation, scores, facets, sorting,
highlighting) and, at the end, the HTTP routes of one node (:func:`router`).
Every node answers for the whole cluster (one service per emulator).

What the emulator does, where Couchbase Server's (bleve's) behaviour is
richer or unspecified -- see ``docs/search.md`` for the user's view:

* **Analysis.** ``standard`` (the default) lower-cases the text and splits
  it on every run of non-word characters (``\\W+``, Unicode-aware; ``_`` is
  a word character); no stop words are removed and there is no stemming.
  ``simple`` is the same; ``keyword`` keeps the whole string as one term.
  Any other analyser name is a 400.
* **Dynamic mapping.** Every field of a JSON object document is indexed
  under its dotted path (``address.city``); array elements under the path of
  the array. Strings that parse as dates (RFC 3339, ``YYYY-MM-DD``,
  ``YYYY-MM-DD hh:mm:ss``, ``YYYY-MM-DDThh:mm:ss``; no zone = UTC) are date
  values only; other strings are text. Numbers are numeric values, booleans
  boolean values. An object with exactly numeric ``lon`` and ``lat`` (or
  ``lng``) members, or an array of two numbers ``[lon, lat]``, is also a geo
  point of its path. Text of every field is also indexed in the composite
  field ``_all``, which queries without ``field`` search; range, boolean
  and geo queries without ``field`` look at every field. Documents that are
  not JSON objects are not indexed. ``params.mapping.default_analyzer`` is
  honoured and ``default_mapping.enabled: false`` indexes nothing; other
  mapping settings are stored and returned but not applied.
* **Scores** are tf-idf: a term of field ``f`` in a document scores
  ``sqrt(tf) * idf * norm * boost`` with ``idf = 1 + ln(N / (1 + df))``
  (``N`` documents in the index, ``df`` of them with the term in ``f``) and
  ``norm = 1 / sqrt(number of terms of f in the document)``. A fuzzy match
  at edit distance ``d`` is multiplied by ``1 / (1 + d)``. Match, prefix,
  wildcard, regexp and fuzzy queries add up the scores of the terms they
  match; a match query (operator ``or``) and a disjunction multiply the sum
  by the fraction of their parts that matched (coordination); conjunctions
  and ``must`` add up. Numeric, date and term ranges, doc ids, booleans, geo
  queries, ``match_all`` and a boolean query made only of ``must_not``
  score a constant ``1 * boost``.
* **Order.** Without ``sort``: by score, descending, ties by id. Each hit's
  ``sort`` lists readable values (the score as a number string, the id,
  the field value, the distance), not the server's encoded forms.
* **Facets**: term facets count the distinct terms of each matching
  document (a missing ``size`` lists no terms, as the server reads it as
  0); numeric and date ranges include ``min``/``start`` and exclude
  ``max``/``end``.
* **Consistency** (``ctl.consistency`` ``at_plus``): the index has caught
  up with a vBucket up to the highest sequence number whose mutation is at
  least :attr:`FTSService.index_lag` seconds old (0 by default: always
  current when a query runs). The query waits (up to ``ctl.timeout``, 10 s
  by default) until every vector is reached; vBucket UUIDs are not
  compared. On timeout: HTTP 412 with ``status`` ``"fail"``. The index
  catches up when it is used (a query, a count): a version of a document
  replaced before the index was used again is never seen by it.
* **Highlighting** wraps matches of the highlighted fields in ``<mark>``
  (``html``, default) or ``ESC[43m``/``ESC[0m`` (``ansi``); a fragment is
  the whole value, or 200 characters around the first match of a longer one.
* ``fields`` returns the requested fields of the source document (``*``:
  every field), as if every field were stored. ``explain`` adds a score
  explanation tree to each hit.
* Limits: ``from + size`` at most 10000; ``fuzziness`` at most 2.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from couchbase_core.mock.auth import http_access
from couchbase_core.mock.httpd import HTTPRequest, HTTPResponse, Router, json_response

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.cluster import Bucket, Cluster
    from couchbase_core.mock.runtime import MockApp, NodeRuntime

__all__ = ["FTSService", "FTSIndex", "SearchFailure", "analyze", "parse_date", "router", "fts_service",
           "MAX_RESULT_WINDOW", "DEFAULT_TIMEOUT_MS"]

#: ``from + size`` may not exceed this (the server's result window).
MAX_RESULT_WINDOW = 10000
#: ``ctl.timeout`` when the request gives none, in milliseconds.
DEFAULT_TIMEOUT_MS = 10000
MAX_FUZZINESS = 2
ALL_FIELD = "_all"
#: Position gap between fields in ``_all``, so phrases never span two fields.
_FIELD_GAP = 100
_EARTH_RADIUS_M = 6371008.8

_WORDS = re.compile(r"\w+", re.UNICODE)


class SearchFailure(Exception):
    """A request the service refuses: HTTP ``status`` and the ``error`` text."""

    def __init__(self, status: int, message: str, extra: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}


# ------------------------------------------------------------------ analysis

#: One token: (term, position, start offset, end offset).
Token = Tuple[str, int, int, int]


def analyze(text: str, analyzer: str = "standard") -> List[Token]:
    """The tokens of ``text`` (see the module docs for the analysers)."""
    if analyzer == "keyword":
        return [(text, 1, 0, len(text))] if text else []
    if analyzer not in ("standard", "simple", "en", "default"):
        raise SearchFailure(400, "unknown analyzer: %s" % analyzer)
    return [(m.group().lower(), i + 1, m.start(), m.end()) for i, m in enumerate(_WORDS.finditer(text))]


_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


def parse_date(text: str) -> Optional[float]:
    """Seconds since the epoch of a date string the dynamic mapping
    recognises, or None."""
    if not isinstance(text, str) or len(text) < 10 or not text[:4].isdigit():
        return None
    try:
        if _RFC3339.match(text):
            value = text.replace("z", "Z").replace("Z", "+00:00").replace("t", "T")
            if " " in value[:11]:
                value = value.replace(" ", "T", 1)
            return datetime.datetime.fromisoformat(value).timestamp()
        for fmt in _DATE_FORMATS:
            try:
                parsed = datetime.datetime.strptime(text, fmt)
            except ValueError:
                continue
            return parsed.replace(tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None
    return None


def _format_date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _as_point(value: Any) -> Optional[Tuple[float, float]]:
    """(lon, lat) of a document value that is a geo point, else None."""
    if isinstance(value, dict):
        lon: Any = value.get("lon", value.get("lng"))
        lat: Any = value.get("lat")
        if _is_number(lon) and _is_number(lat) and len(value) == 2:
            return float(lon), float(lat)
        return None
    if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _query_point(value: Any, what: str) -> Tuple[float, float]:
    """A point in a query: ``[lon, lat]``, ``{"lon":..,"lat":..}`` or ``"lat,lon"``."""
    if isinstance(value, str):
        parts = value.split(",")
        try:
            if len(parts) == 2:
                return float(parts[1]), float(parts[0])
        except ValueError:
            pass
    else:
        point = _as_point(value)
        if point is not None:
            return point
    raise SearchFailure(400, "%s: not a geo point: %s" % (what, json.dumps(value)))


_UNITS = {"mm": 0.001, "millimeters": 0.001, "cm": 0.01, "centimeters": 0.01, "m": 1.0, "meters": 1.0,
          "km": 1000.0, "kilometers": 1000.0, "in": 0.0254, "inch": 0.0254, "ft": 0.3048, "feet": 0.3048,
          "yd": 0.9144, "yards": 0.9144, "mi": 1609.344, "miles": 1609.344, "nm": 1852.0,
          "nauticalmiles": 1852.0}
_DISTANCE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")


def _distance_m(text: Any) -> float:
    match = _DISTANCE.match(text) if isinstance(text, str) else None
    if match is None or match.group(2).lower() not in _UNITS and match.group(2):
        raise SearchFailure(400, "invalid distance: %r" % (text,))
    return float(match.group(1)) * _UNITS.get(match.group(2).lower() or "m", 1.0)


def _haversine_m(a: Tuple[float, float], b: Tuple[float, float]) -> float:
    lon1, lat1, lon2, lat2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# ----------------------------------------------------------------- documents


class IndexedDoc:
    """One document as the index sees it."""

    __slots__ = ("id", "cas", "source", "text", "raw", "numbers", "dates", "bools", "points", "all_map",
                 "next_pos", "lengths")

    def __init__(self, doc_id: str, cas: int, source: Dict[str, Any]) -> None:
        self.id = doc_id
        self.cas = cas
        self.source = source
        #: field -> (value index, tokens) of each string value
        self.text: Dict[str, List[Tuple[int, List[Token]]]] = {}
        #: field -> every value (for sorting, ``fields`` and highlighting)
        self.raw: Dict[str, List[Any]] = {}
        self.numbers: Dict[str, List[float]] = {}
        self.dates: Dict[str, List[float]] = {}
        self.bools: Dict[str, List[bool]] = {}
        self.points: Dict[str, List[Tuple[float, float]]] = {}
        #: ``_all`` position -> (field, value index, start, end, position in the field)
        self.all_map: Dict[int, Tuple[str, int, int, int, int]] = {}
        #: per field, the position the next value's tokens start after
        self.next_pos: Dict[str, int] = {}
        #: per field (``_all`` included), how many tokens it has
        self.lengths: Dict[str, int] = {}

    def field_terms(self, field: str) -> List[Token]:
        """Every token of a text field (``_all``: of every field, renumbered)."""
        if field == ALL_FIELD:
            return self._all_tokens()
        return [tok for _i, toks in self.text.get(field, ()) for tok in toks]

    def _all_tokens(self) -> List[Token]:
        out: List[Token] = []
        self.all_map.clear()
        base = 0
        for field, values in self.text.items():
            for index, toks in values:
                for term, pos, start, end in toks:
                    out.append((term, base + pos, start, end))
                    self.all_map[base + pos] = (field, index, start, end, pos)
                base += (toks[-1][1] if toks else 0) + _FIELD_GAP
        return out


def _flatten(doc: IndexedDoc, value: Any, path: str, analyzer: str) -> None:
    if isinstance(value, dict):
        point = _as_point(value)
        if point is not None and path:
            doc.points.setdefault(path, []).append(point)
        for key, sub in value.items():
            _flatten(doc, sub, "%s.%s" % (path, key) if path else key, analyzer)
        return
    if isinstance(value, list):
        point = _as_point(value)
        if point is not None and path:
            doc.points.setdefault(path, []).append(point)
        for sub in value:
            _flatten(doc, sub, path, analyzer)
        return
    if not path:
        return
    if isinstance(value, bool):
        doc.bools.setdefault(path, []).append(value)
    elif _is_number(value):
        doc.numbers.setdefault(path, []).append(float(value))
    elif isinstance(value, str):
        when = parse_date(value)
        if when is not None:
            doc.dates.setdefault(path, []).append(when)
        else:
            # The values of one field (array elements) follow each other
            # with a gap of positions, so a phrase never spans two values.
            raws = doc.raw.setdefault(path, [])
            base = doc.next_pos.get(path, 0)
            tokens = [(t, base + p, s, e) for t, p, s, e in analyze(value, analyzer)]
            doc.next_pos[path] = (tokens[-1][1] if tokens else base) + _FIELD_GAP
            doc.text.setdefault(path, []).append((len(raws), tokens))
            raws.append(value)
            return
    else:
        return
    doc.raw.setdefault(path, []).append(value)


def index_document(doc_id: str, cas: int, source: Any, analyzer: str) -> Optional[IndexedDoc]:
    """The analysed form of a document (None when it is not a JSON object)."""
    if not isinstance(source, dict):
        return None
    doc = IndexedDoc(doc_id, cas, source)
    _flatten(doc, source, "", analyzer)
    return doc


# --------------------------------------------------------------------- index


class FTSIndex:
    """One index: its definition and the analysed documents of its bucket.

    ``postings[field][term]`` maps document ids to that term's tokens in
    the field (``_all`` included)."""

    def __init__(self, definition: Dict[str, Any]) -> None:
        self.definition = definition
        self.name: str = definition["name"]
        self.bucket_name: str = definition["sourceName"]
        mapping = (definition.get("params") or {}).get("mapping") or {}
        self.analyzer: str = mapping.get("default_analyzer") or "standard"
        analyze("probe", self.analyzer)  # an unknown analyser fails the definition
        self.enabled = (mapping.get("default_mapping") or {}).get("enabled", True) is not False
        self.docs: Dict[str, IndexedDoc] = {}
        self.postings: Dict[str, Dict[str, Dict[str, List[Token]]]] = {}
        self.bucket_uuid = ""

    # -- following the bucket -------------------------------------------------

    def caught_up(self, bucket: "Bucket", now: float, lag: float) -> List[int]:
        """Per vBucket, the highest sequence number the index has seen."""
        return [vb.persisted_seqno(now, lag) for vb in bucket.vbuckets]

    def refresh(self, bucket: "Bucket", now: float, lag: float) -> None:
        """Bring the index up to the bucket's mutations that are at least
        ``lag`` seconds old (deletions included)."""
        if bucket.uuid != self.bucket_uuid:
            self.docs.clear()
            self.postings.clear()
            self.bucket_uuid = bucket.uuid
        if not self.enabled:
            return
        present: Set[str] = set()
        for store in bucket.vbuckets:
            limit = store.persisted_seqno(now, lag)
            for key, item in list(store.items.items()):
                doc_id = key.decode("utf-8", "replace")
                live = not item.deleted and not (item.expiry and item.expiry <= now)
                if item.seqno > limit:  # not indexed yet: the index keeps what it had
                    if doc_id in self.docs:
                        present.add(doc_id)
                    continue
                if not live:
                    continue
                present.add(doc_id)
                current = self.docs.get(doc_id)
                if current is not None and current.cas == item.cas:
                    continue
                try:
                    source = json.loads(item.value)
                except (ValueError, UnicodeDecodeError):
                    source = None
                self._remove(doc_id)
                doc = index_document(doc_id, item.cas, source, self.analyzer)
                if doc is not None:
                    self._add(doc)
        for doc_id in [d for d in self.docs if d not in present]:
            self._remove(doc_id)

    def _add(self, doc: IndexedDoc) -> None:
        self.docs[doc.id] = doc
        for field in list(doc.text) + [ALL_FIELD]:
            by_term = self.postings.setdefault(field, {})
            tokens = doc.field_terms(field)
            doc.lengths[field] = len(tokens)
            for tok in tokens:
                by_term.setdefault(tok[0], {}).setdefault(doc.id, []).append(tok)

    def _remove(self, doc_id: str) -> None:
        doc = self.docs.pop(doc_id, None)
        if doc is None:
            return
        for field in list(doc.text) + [ALL_FIELD]:
            by_term = self.postings.get(field, {})
            for term in {tok[0] for tok in doc.field_terms(field)}:
                holders = by_term.get(term)
                if holders is not None:
                    holders.pop(doc_id, None)
                    if not holders:
                        del by_term[term]

    # -- scoring ------------------------------------------------------------------

    def term_score(self, field: str, term: str, doc_id: str, boost: float) -> Tuple[float, Dict[str, Any]]:
        """tf-idf of one term in one document's field, and its explanation."""
        holders = self.postings.get(field, {}).get(term, {})
        tokens = holders.get(doc_id, [])
        tf = len(tokens)
        idf = 1.0 + math.log(len(self.docs) / (1.0 + len(holders))) if self.docs else 1.0
        length = self.docs[doc_id].lengths.get(field) or 1
        norm = 1.0 / math.sqrt(length)
        score = math.sqrt(tf) * idf * norm * boost
        return score, {"value": score, "message": "weight(%s:%s) = sqrt(tf=%d) * idf(%g) * norm(%g) * boost(%g)"
                       % (field, term, tf, idf, norm, boost), "children": []}


# ------------------------------------------------------------------ matching


class Match:
    """How one document matched a query: score, explanation and the term
    locations (for highlighting): field -> term -> tokens."""

    __slots__ = ("score", "expl", "locations")

    def __init__(self, score: float, expl: Dict[str, Any],
                 locations: Optional[Dict[str, Dict[str, List[Token]]]] = None) -> None:
        self.score = score
        self.expl = expl
        self.locations = locations or {}


Matches = Dict[str, Match]


def _merge_locations(into: Dict[str, Dict[str, List[Token]]], more: Dict[str, Dict[str, List[Token]]]) -> None:
    for field, terms in more.items():
        target = into.setdefault(field, {})
        for term, toks in terms.items():
            target.setdefault(term, []).extend(toks)


def _combine(parts: List[Match], message: str, factor: float = 1.0) -> Match:
    score = sum(p.score for p in parts) * factor
    locations: Dict[str, Dict[str, List[Token]]] = {}
    for p in parts:
        _merge_locations(locations, p.locations)
    return Match(score, {"value": score, "message": message, "children": [p.expl for p in parts]}, locations)


def _constant(boost: float, message: str) -> Match:
    return Match(boost, {"value": boost, "message": message, "children": []})


def _levenshtein(a: str, b: str, limit: int) -> int:
    """Edit distance of ``a`` and ``b``, or ``limit + 1`` once it exceeds ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


class _Ctx:
    """What evaluating a query needs: the index and every document id."""

    def __init__(self, index: FTSIndex) -> None:
        self.index = index
        self.all_ids = list(index.docs)


def _fields_of(ctx: _Ctx, field: Optional[str], kind: str) -> List[str]:
    """The fields a non-text query looks at: the one named, or every field
    holding values of ``kind``."""
    if field:
        return [field]
    names: Set[str] = set()
    for doc in ctx.index.docs.values():
        names.update(getattr(doc, kind))
    return sorted(names)


class _Node:
    """A compiled query: ``run(ctx)`` gives the matches."""

    boost = 1.0

    def run(self, ctx: _Ctx) -> Matches:  # pragma: no cover - abstract
        raise NotImplementedError


class _TermsNode(_Node):
    """Documents with terms of ``field`` accepted by ``accept(term)``, which
    returns a score factor (or None to refuse the term)."""

    def __init__(self, field: Optional[str], accept: Callable[[str], Optional[float]], describe: str,
                 boost: float, candidates: Optional[List[str]] = None) -> None:
        self.field = field or ALL_FIELD
        self.accept = accept
        self.describe = describe
        self.boost = boost
        self.candidates = candidates

    def run(self, ctx: _Ctx) -> Matches:
        index = ctx.index
        by_term = index.postings.get(self.field, {})
        terms = self.candidates if self.candidates is not None else list(by_term)
        per_doc: Dict[str, List[Match]] = {}
        for term in terms:
            holders = by_term.get(term)
            if not holders:
                continue
            factor = self.accept(term)
            if factor is None:
                continue
            for doc_id, toks in holders.items():
                score, expl = index.term_score(self.field, term, doc_id, self.boost * factor)
                per_doc.setdefault(doc_id, []).append(Match(score, expl, {self.field: {term: list(toks)}}))
        return {doc_id: parts[0] if len(parts) == 1 else _combine(parts, "sum of (%s):" % self.describe)
                for doc_id, parts in per_doc.items()}


def _term_node(field: Optional[str], term: str, fuzziness: int, prefix_length: int, boost: float) -> _Node:
    if fuzziness > MAX_FUZZINESS:
        raise SearchFailure(400, "fuzziness exceeds max (%d)" % MAX_FUZZINESS)
    if fuzziness <= 0:
        return _TermsNode(field, lambda t: 1.0, "term %s" % term, boost, [term])
    prefix = term[:prefix_length]

    def accept(candidate: str) -> Optional[float]:
        if not candidate.startswith(prefix):
            return None
        distance = _levenshtein(candidate, term, fuzziness)
        return None if distance > fuzziness else 1.0 / (1 + distance)

    return _TermsNode(field, accept, "fuzzy %s~%d" % (term, fuzziness), boost)


class _AnyNode(_Node):
    """A disjunction: at least ``minimum`` children; score sum * coordination."""

    def __init__(self, children: List[_Node], minimum: int, boost: float, coord: bool = True) -> None:
        self.children = children
        self.minimum = minimum
        self.boost = boost
        self.coord = coord

    def run(self, ctx: _Ctx) -> Matches:
        per_doc: Dict[str, List[Match]] = {}
        for child in self.children:
            for doc_id, match in child.run(ctx).items():
                per_doc.setdefault(doc_id, []).append(match)
        total = len(self.children) or 1
        out: Matches = {}
        for doc_id, parts in per_doc.items():
            if len(parts) < self.minimum:
                continue
            factor = self.boost * (len(parts) / total if self.coord else 1.0)
            out[doc_id] = _combine(parts, "sum of %d of %d, times coord and boost %g:" % (len(parts), total, factor),
                                   factor)
        return out


class _AllNode(_Node):
    """A conjunction: every child; score the sum."""

    def __init__(self, children: List[_Node], boost: float) -> None:
        self.children = children
        self.boost = boost

    def run(self, ctx: _Ctx) -> Matches:
        result: Optional[Dict[str, List[Match]]] = None
        for child in self.children:
            found = child.run(ctx)
            if result is None:
                result = {doc_id: [m] for doc_id, m in found.items()}
            else:
                result = {doc_id: parts + [found[doc_id]] for doc_id, parts in result.items() if doc_id in found}
            if not result:
                return {}
        return {doc_id: _combine(parts, "sum of (conjunction), times boost %g:" % self.boost, self.boost)
                for doc_id, parts in (result or {}).items()}


class _BooleanNode(_Node):
    def __init__(self, must: Optional[_Node], should: Optional[_Node], must_not: Optional[_Node],
                 boost: float) -> None:
        self.must = must
        self.should = should
        self.must_not = must_not
        self.boost = boost

    def run(self, ctx: _Ctx) -> Matches:
        excluded = set(self.must_not.run(ctx)) if self.must_not is not None else set()
        must = self.must.run(ctx) if self.must is not None else None
        should = self.should.run(ctx) if self.should is not None else None
        required_should = should is not None and isinstance(self.should, _AnyNode) and self.should.minimum > 0
        if must is None and should is None:
            candidates = {d: _constant(self.boost, "match all (boolean of must_not only)") for d in ctx.all_ids}
        elif must is None:
            candidates = dict(should or {})
        else:
            candidates = dict(must)
            if should:
                for doc_id in list(candidates):
                    if doc_id in should:
                        candidates[doc_id] = _combine([candidates[doc_id], should[doc_id]], "must + should:")
                    elif required_should:
                        del candidates[doc_id]
            elif required_should:
                candidates = {}
        out: Matches = {}
        for doc_id, match in candidates.items():
            if doc_id in excluded:
                continue
            if self.boost != 1.0 and (must is not None or should is not None):
                match = _combine([match], "boolean, times boost %g:" % self.boost, self.boost)
            out[doc_id] = match
        return out


class _PhraseNode(_Node):
    """Terms at consecutive positions of one field value."""

    def __init__(self, field: Optional[str], terms: List[str], boost: float) -> None:
        self.field = field or ALL_FIELD
        self.terms = terms
        self.boost = boost

    def run(self, ctx: _Ctx) -> Matches:
        index = ctx.index
        by_term = index.postings.get(self.field, {})
        holders = [by_term.get(t, {}) for t in self.terms]
        if not self.terms or any(not h for h in holders):
            return {}
        out: Matches = {}
        for doc_id in set(holders[0]).intersection(*holders[1:]):
            positions = [{tok[1]: tok for tok in h[doc_id]} for h in holders]
            hits = [p for p in positions[0] if all(p + i in positions[i] for i in range(1, len(self.terms)))]
            if not hits:
                continue
            locations: Dict[str, Dict[str, List[Token]]] = {self.field: {}}
            for start in hits:
                for i, term in enumerate(self.terms):
                    locations[self.field].setdefault(term, []).append(positions[i][start + i])
            parts = [Match(*index.term_score(self.field, t, doc_id, self.boost)) for t in self.terms]
            match = _combine(parts, "phrase %r:" % " ".join(self.terms))
            match.locations = locations
            out[doc_id] = match
        return out


class _FilterNode(_Node):
    """Documents whose values satisfy ``test`` (a constant score)."""

    def __init__(self, test: Callable[[IndexedDoc], bool], describe: str, boost: float) -> None:
        self.test = test
        self.describe = describe
        self.boost = boost

    def run(self, ctx: _Ctx) -> Matches:
        docs = ctx.index.docs
        return {d: _constant(self.boost, self.describe) for d in ctx.all_ids if self.test(docs[d])}


def _in_range(value: Any, low: Any, high: Any, incl_low: bool, incl_high: bool) -> bool:
    if low is not None and (value < low or (value == low and not incl_low)):
        return False
    if high is not None and (value > high or (value == high and not incl_high)):
        return False
    return True


# ---------------------------------------------------------------- compiling


def _get(q: Dict[str, Any], name: str, kind: Any, default: Any = None) -> Any:
    value = q.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind in (int, float, (int, float)) and isinstance(value, bool))
    if not ok:
        raise SearchFailure(400, "%s: expected %s, got %s" % (name, getattr(kind, "__name__", kind),
                                                              json.dumps(value)))
    return value


def compile_query(q: Any, analyzer: str) -> _Node:
    """A query's JSON as a tree of nodes (SearchFailure 400 when it is not
    a query the service knows). The kind is told by its members, as the
    server does."""
    if not isinstance(q, dict):
        raise SearchFailure(400, "a query must be a JSON object, not %s" % json.dumps(q)[:100])
    boost = float(_get(q, "boost", (int, float), 1.0))
    field = _get(q, "field", str)
    if "match_all" in q:
        return _FilterNode(lambda d: True, "match_all", boost)
    if "match_none" in q:
        return _FilterNode(lambda d: False, "match_none", boost)
    if "conjuncts" in q:
        children = [compile_query(c, analyzer) for c in _get(q, "conjuncts", list, [])]
        return _AllNode(children, boost)
    if "disjuncts" in q:
        children = [compile_query(c, analyzer) for c in _get(q, "disjuncts", list, [])]
        minimum = int(_get(q, "min", (int, float), 0))
        if minimum > len(children):
            raise SearchFailure(400, "disjunction query has fewer than the minimum number of clauses to satisfy")
        return _AnyNode(children, minimum, boost)
    if any(k in q for k in ("must", "should", "must_not")):
        must = compile_query(q["must"], analyzer) if q.get("must") else None
        should = compile_query(q["should"], analyzer) if q.get("should") else None
        must_not = compile_query(q["must_not"], analyzer) if q.get("must_not") else None
        return _BooleanNode(must, should, must_not, boost)
    q_analyzer = _get(q, "analyzer", str) or analyzer
    fuzziness = int(_get(q, "fuzziness", (int, float), 0))
    prefix_length = int(_get(q, "prefix_length", (int, float), 0))
    if "match" in q:
        terms = [t[0] for t in analyze(_get(q, "match", str, ""), q_analyzer)]
        operator = _get(q, "operator", str, "or")
        if operator not in ("or", "and"):
            raise SearchFailure(400, "operator must be 'or' or 'and', not %r" % operator)
        nodes = [_term_node(field, t, fuzziness, prefix_length, 1.0) for t in dict.fromkeys(terms)]
        if not nodes:
            return _FilterNode(lambda d: False, "match of no term", boost)
        if operator == "and":
            return _AllNode(nodes, boost)
        return _AnyNode(nodes, 1, boost)
    if "match_phrase" in q:
        terms = [t[0] for t in analyze(_get(q, "match_phrase", str, ""), q_analyzer)]
        return _PhraseNode(field, terms, boost)
    if "terms" in q:
        terms = _get(q, "terms", list, [])
        if not terms or not all(isinstance(t, str) for t in terms):
            raise SearchFailure(400, "phrase query must contain at least one term")
        return _PhraseNode(field, terms, boost)
    if "term" in q:
        return _term_node(field, _get(q, "term", str, ""), fuzziness, prefix_length, boost)
    if "prefix" in q:
        prefix = _get(q, "prefix", str, "")
        return _TermsNode(field, lambda t: 1.0 if t.startswith(prefix) else None, "prefix %s" % prefix, boost)
    if "regexp" in q or "wildcard" in q:
        if "regexp" in q:
            source = _get(q, "regexp", str, "")
        else:
            source = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                             for c in _get(q, "wildcard", str, ""))
        try:
            pattern = re.compile(source)
        except re.error as exc:
            raise SearchFailure(400, "error parsing regexp: %s" % exc) from exc
        return _TermsNode(field, lambda t: 1.0 if pattern.fullmatch(t) else None, "regexp %s" % source, boost)
    if "query" in q:
        return compile_query_string(_get(q, "query", str, ""), analyzer, boost)
    if "bool" in q:
        wanted = _get(q, "bool", bool)
        return _FilterNode(lambda d: any(wanted in d.bools.get(f, ()) for f in (field and [field] or d.bools)),
                           "bool %s" % wanted, boost)
    if "ids" in q:
        ids = set(_get(q, "ids", list, []))
        return _FilterNode(lambda d: d.id in ids, "doc id", boost)
    if "min" in q or "max" in q:
        low, high = q.get("min"), q.get("max")
        if isinstance(low, str) or isinstance(high, str):  # a term range
            incl_low = bool(q.get("inclusive_min", True))
            incl_high = bool(q.get("inclusive_max", False))
            target = field or ALL_FIELD

            def term_range(d: IndexedDoc) -> bool:
                return any(_in_range(tok[0], low, high, incl_low, incl_high) for tok in d.field_terms(target))

            return _FilterNode(term_range, "term range", boost)
        for bound in (low, high):
            if bound is not None and not _is_number(bound):
                raise SearchFailure(400, "numeric range bounds must be numbers")
        incl_low = bool(q.get("inclusive_min", True))
        incl_high = bool(q.get("inclusive_max", False))
        return _FilterNode(lambda d: any(_in_range(v, low, high, incl_low, incl_high)
                                         for f in (field and [field] or d.numbers) for v in d.numbers.get(f, ())),
                           "numeric range", boost)
    if "start" in q or "end" in q:
        parsed: List[Optional[float]] = []
        for name in ("start", "end"):
            value = q.get(name)
            if value is None:
                parsed.append(None)
                continue
            when = parse_date(value) if isinstance(value, str) else None
            if when is None:
                raise SearchFailure(400, "date range: cannot parse %s %s" % (name, json.dumps(value)))
            parsed.append(when)
        start, end = parsed
        incl_start = bool(q.get("inclusive_start", True))
        incl_end = bool(q.get("inclusive_end", False))
        return _FilterNode(lambda d: any(_in_range(v, start, end, incl_start, incl_end)
                                         for f in (field and [field] or d.dates) for v in d.dates.get(f, ())),
                           "date range", boost)
    if "location" in q and "distance" in q:
        centre = _query_point(q["location"], "location")
        radius = _distance_m(q["distance"])
        return _FilterNode(lambda d: any(_haversine_m(centre, p) <= radius
                                         for f in (field and [field] or d.points) for p in d.points.get(f, ())),
                           "geo distance", boost)
    if "top_left" in q and "bottom_right" in q:
        left, top = _query_point(q["top_left"], "top_left")
        right, bottom = _query_point(q["bottom_right"], "bottom_right")

        def inside(p: Tuple[float, float]) -> bool:
            lon_ok = left <= p[0] <= right if left <= right else (p[0] >= left or p[0] <= right)
            return lon_ok and bottom <= p[1] <= top

        return _FilterNode(lambda d: any(inside(p) for f in (field and [field] or d.points)
                                         for p in d.points.get(f, ())), "geo bounding box", boost)
    raise SearchFailure(400, "unknown query type: %s" % json.dumps(q)[:200])


_QS_CLAUSE = re.compile(r'\s*(?P<op>[+-]?)(?:(?P<field>[\w.]+):)?(?P<val>"(?:[^"\\]|\\.)*"|/(?:[^/\\]|\\.)*/'
                        r'|[<>]=?"[^"]*"|[^\s]+)')
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")
_QS_SUFFIX = re.compile(r"(?P<word>.*?)(?:~(?P<fuzz>\d*))?(?:\^(?P<boost>[0-9.]+))?\Z")


def compile_query_string(text: str, analyzer: str, boost: float = 1.0) -> _Node:
    """The query-string syntax: clauses ``[+|-][field:]value`` where value
    is a word (analysed; ``~N`` fuzzy, ``^B`` boost, ``*``/``?`` wildcard),
    a ``"phrase"``, a ``/regexp/`` or a numeric/date comparison
    (``>N``, ``>=N``, ``<N``, ``<=N``, ``>"date"``). ``+`` clauses must
    match, ``-`` must not; the others should (at least one of them when no
    clause is ``+``)."""
    must: List[_Node] = []
    should: List[_Node] = []
    must_not: List[_Node] = []
    pos = 0
    text = text.strip()
    if not text:
        raise SearchFailure(400, "syntax error: empty query string")
    while pos < len(text):
        match = _QS_CLAUSE.match(text, pos)
        if match is None or match.end() == pos:
            raise SearchFailure(400, "syntax error near %r" % text[pos:pos + 20])
        pos = match.end()
        field = match.group("field")
        value = match.group("val")
        q: Dict[str, Any] = {"field": field} if field else {}
        if value.startswith('"'):
            q["match_phrase"] = json.loads(value)
        elif value.startswith("/") and len(value) > 1:
            q["regexp"] = value[1:-1]
        elif value[0] in "<>":
            op = value[:2] if value[1:2] == "=" else value[:1]
            bound_text = value[len(op):]
            if bound_text.startswith('"'):
                bound: Any = json.loads(bound_text)
                key_low, key_high = "start", "end"
            else:
                try:
                    bound = float(bound_text)
                except ValueError:
                    raise SearchFailure(400, "syntax error: %r is not a number" % bound_text) from None
                key_low, key_high = "min", "max"
            if op[0] == ">":
                q[key_low] = bound
                q["inclusive_min" if key_low == "min" else "inclusive_start"] = op == ">="
            else:
                q[key_high] = bound
                q["inclusive_max" if key_high == "max" else "inclusive_end"] = op == "<="
        else:
            parts = _QS_SUFFIX.match(value)
            assert parts is not None
            word = parts.group("word")
            if parts.group("boost"):
                q["boost"] = float(parts.group("boost"))
            if parts.group("fuzz") is not None:
                q["match"] = word
                q["fuzziness"] = int(parts.group("fuzz") or 1)
            elif "*" in word or "?" in word:
                q["wildcard"] = word
            else:
                q["match"] = word
        node = compile_query(q, analyzer)
        if "match" in q and "fuzziness" not in q and _NUMBER.match(q["match"]):
            # a number also matches numeric fields holding it
            number = float(q["match"])
            numeric = {k: v for k, v in q.items() if k != "match"}
            numeric.update(min=number, max=number, inclusive_max=True)
            exact = compile_query(numeric, analyzer)
            node = _AnyNode([node, exact], 1, 1.0, coord=False)
        {"+": must, "-": must_not}.get(match.group("op"), should).append(node)
    return _BooleanNode(_AllNode(must, 1.0) if must else None,
                        _AnyNode(should, 0 if must else 1, 1.0) if should else None,
                        _AnyNode(must_not, 1, 1.0) if must_not else None, boost)


# ------------------------------------------------------------------ results


_SORT_BY = {"score", "id", "field", "geo_distance"}


def _sort_specs(raw: Any) -> List[Dict[str, Any]]:
    if raw is None:
        return [{"by": "score", "desc": True}]
    if not isinstance(raw, list):
        raise SearchFailure(400, "sort must be an array")
    specs = []
    for entry in raw:
        if isinstance(entry, str):
            desc = entry.startswith("-")
            name = entry[1:] if desc else entry
            by = {"_score": "score", "_id": "id"}.get(name, "field")
            specs.append({"by": by, "desc": desc, "field": name})
        elif isinstance(entry, dict) and entry.get("by") in _SORT_BY:
            spec = dict(entry)
            if spec["by"] == "field" and not isinstance(spec.get("field"), str):
                raise SearchFailure(400, "sort by field needs a field")
            if spec["by"] == "geo_distance":
                spec["_origin"] = _query_point(spec.get("location"), "sort location")
                spec["_unit"] = _UNITS.get(str(spec.get("unit") or "m").lower())
                if spec["_unit"] is None or not isinstance(spec.get("field"), str):
                    raise SearchFailure(400, "geo_distance sort needs a field, a location and a known unit")
            specs.append(spec)
        else:
            raise SearchFailure(400, "unknown sort: %s" % json.dumps(entry))
    return specs


def _field_sort_value(doc: IndexedDoc, spec: Dict[str, Any]) -> Tuple[Optional[Any], str]:
    """(comparable value or None when missing, text for the hit's ``sort``)."""
    field = spec["field"]
    kind = spec.get("type") or "auto"
    pick = max if spec.get("mode") == "max" else min
    if kind in ("auto", "number") and doc.numbers.get(field):
        value = pick(doc.numbers[field])
        return (0, value), repr(value)
    if kind in ("auto", "date") and doc.dates.get(field):
        value = pick(doc.dates[field])
        return (1, value), _format_date(value)
    if kind in ("auto", "string") and doc.text.get(field):
        terms = [tok[0] for tok in doc.field_terms(field)] or [""]
        value_s = pick(terms)
        return (2, value_s), value_s
    return None, ""


def _order(hits: List[Tuple[IndexedDoc, Match]], specs: List[Dict[str, Any]]) -> List[Tuple[IndexedDoc, Match,
                                                                                              List[str]]]:
    keyed = []
    for doc, match in hits:
        keys: List[Any] = []
        shown: List[str] = []
        for spec in specs:
            by = spec["by"]
            desc = bool(spec.get("desc"))
            if by == "score":
                value: Any = match.score
                shown.append(repr(match.score))
            elif by == "id":
                value = doc.id
                shown.append(doc.id)
            elif by == "field":
                value, text = _field_sort_value(doc, spec)
                shown.append(text)
            else:
                points = doc.points.get(spec["field"], [])
                value = min(_haversine_m(spec["_origin"], p) for p in points) / spec["_unit"] if points else None
                shown.append(repr(value) if value is not None else "")
            missing_first = spec.get("missing") == "first"
            keys.append((value is None, value, desc, missing_first))
        keyed.append((keys, doc, match, shown))

    def compare_key(entry: Any) -> Any:
        out = []
        for is_missing, value, desc, missing_first in entry[0]:
            rank = 0 if is_missing == missing_first else 1  # missing ones first or last, whatever the direction
            out.append((rank, _Reverse(value) if desc and value is not None else value if value is not None else 0))
        out.append(entry[1].id)
        return out

    keyed.sort(key=compare_key)
    return [(doc, match, shown) for _k, doc, match, shown in keyed]


class _Reverse:
    """Reverses the order of a value inside a sort key."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: "_Reverse") -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and other.value == self.value


def _facets(requests: Any, docs: List[IndexedDoc]) -> Optional[Dict[str, Any]]:
    if requests is None:
        return None
    if not isinstance(requests, dict):
        raise SearchFailure(400, "facets must be an object")
    out: Dict[str, Any] = {}
    for name, req in requests.items():
        if not isinstance(req, dict) or not isinstance(req.get("field"), str):
            raise SearchFailure(400, "facet %s needs a field" % name)
        field = req["field"]
        size = req.get("size") or 0
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise SearchFailure(400, "facet %s: size must be a non-negative integer" % name)
        result: Dict[str, Any] = {"field": field, "total": 0, "missing": 0, "other": 0}
        if "numeric_ranges" in req or "date_ranges" in req:
            dates = "date_ranges" in req
            ranges = req.get("date_ranges" if dates else "numeric_ranges")
            if not isinstance(ranges, list) or not ranges:
                raise SearchFailure(400, "facet %s: ranges must be a non-empty array" % name)
            bounds = []
            for r in ranges:
                if not isinstance(r, dict) or not isinstance(r.get("name"), str):
                    raise SearchFailure(400, "facet %s: every range needs a name" % name)
                keys = ("start", "end") if dates else ("min", "max")
                low, high = r.get(keys[0]), r.get(keys[1])
                if dates:
                    low = parse_date(low) if low is not None else None
                    high = parse_date(high) if high is not None else None
                    if (r.get("start") is not None and low is None) or (r.get("end") is not None and high is None):
                        raise SearchFailure(400, "facet %s: range %s has a date that cannot be parsed"
                                            % (name, r["name"]))
                elif not all(b is None or _is_number(b) for b in (low, high)):
                    raise SearchFailure(400, "facet %s: range bounds must be numbers" % name)
                bounds.append((r, low, high))
            counts = [0] * len(bounds)
            for doc in docs:
                values = (doc.dates if dates else doc.numbers).get(field)
                if not values:
                    result["missing"] += 1
                    continue
                for value in values:
                    result["total"] += 1
                    hit = False
                    for i, (_r, low, high) in enumerate(bounds):
                        if _in_range(value, low, high, True, False):
                            counts[i] += 1
                            hit = True
                    if not hit:
                        result["other"] += 1
            key = "date_ranges" if dates else "numeric_ranges"
            result[key] = [dict({k: v for k, v in r.items() if k in ("name", "start", "end", "min", "max")},
                                count=counts[i]) for i, (r, _l, _h) in enumerate(bounds)]
            out[name] = result
            continue
        term_counts: Dict[str, int] = {}
        for doc in docs:
            terms = {tok[0] for tok in doc.field_terms(field)}
            terms.update("T" if b else "F" for b in doc.bools.get(field, ()))
            if not terms:
                result["missing"] += 1
                continue
            for term in terms:
                term_counts[term] = term_counts.get(term, 0) + 1
                result["total"] += 1
        ranked = sorted(term_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
        result["terms"] = [{"term": t, "count": c} for t, c in ranked]
        result["other"] = result["total"] - sum(c for _t, c in ranked)
        out[name] = result
    return out


_MARKS = {"html": ("<mark>", "</mark>"), "ansi": ("\x1b[43m", "\x1b[0m")}
_FRAGMENT = 200


def _fragments(doc: IndexedDoc, match: Match, style: str, fields: Optional[List[str]]) -> Dict[str, List[str]]:
    """Each highlighted field's values with their matched terms marked."""
    opening, closing = _MARKS[style]
    spans: Dict[Tuple[str, int], List[Tuple[int, int]]] = {}
    for field, terms in match.locations.items():
        for toks in terms.values():
            for _term, pos, start, end in toks:
                if field == ALL_FIELD:
                    origin = doc.all_map.get(pos)
                    if origin is None:
                        continue
                    spans.setdefault((origin[0], origin[1]), []).append((origin[2], origin[3]))
                else:
                    value_index = _value_index(doc, field, pos)
                    spans.setdefault((field, value_index), []).append((start, end))
    out: Dict[str, List[str]] = {}
    for (field, value_index), ranges in sorted(spans.items()):
        if fields and field not in fields:
            continue
        values = doc.raw.get(field, [])
        if value_index >= len(values) or not isinstance(values[value_index], str):
            continue
        text = values[value_index]
        ranges = sorted(set(ranges))
        lo, hi = 0, len(text)
        if len(text) > _FRAGMENT:
            lo = max(0, ranges[0][0] - _FRAGMENT // 2)
            hi = min(len(text), lo + _FRAGMENT)
        pieces, cursor = [], lo
        for start, end in ranges:
            if start < cursor or end > hi:
                continue
            pieces.append(text[cursor:start] + opening + text[start:end] + closing)
            cursor = end
        pieces.append(text[cursor:hi])
        out.setdefault(field, []).append("".join(pieces))
    return out


def _value_index(doc: IndexedDoc, field: str, pos: int) -> int:
    for index, toks in doc.text.get(field, ()):
        if any(tok[1] == pos for tok in toks):
            return index
    return 0


def _locations(doc: IndexedDoc, match: Match) -> Dict[str, Dict[str, List[Dict[str, Any]]]]:
    """Where the terms matched, per original field (as the server reports)."""
    out: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for field, terms in match.locations.items():
        for term, toks in terms.items():
            for _t, pos, start, end in toks:
                name = field
                if field == ALL_FIELD:
                    origin = doc.all_map.get(pos)
                    if origin is None:
                        continue
                    name, pos = origin[0], origin[4]
                out.setdefault(name, {}).setdefault(term, []).append(
                    {"pos": pos, "start": start, "end": end, "array_positions": None})
    return out


def _stored_fields(doc: IndexedDoc, wanted: List[str]) -> Dict[str, Any]:
    names = list(doc.raw) if "*" in wanted else [f for f in wanted if f in doc.raw]
    out = {}
    for name in names:
        values = doc.raw[name]
        out[name] = values[0] if len(values) == 1 else list(values)
    return out


# ------------------------------------------------------------------- service


_INDEX_NAME = re.compile(r"[A-Za-z][0-9A-Za-z_\-]*\Z")


class FTSService:
    """The cluster's search service: index definitions and queries.

    ``index_lag`` (seconds, default 0) delays indexing: a mutation is seen by
    the indexes only once it is that old (see ``ctl.consistency``)."""

    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster
        self.indexes: Dict[str, FTSIndex] = {}
        self.index_lag = 0.0
        self.uuid = os.urandom(8).hex()

    # -- definitions --------------------------------------------------------------

    def put_index(self, name: str, body: bytes) -> Dict[str, Any]:
        """Create (or, with the current ``prevIndexUUID``, replace) an index."""
        if not _INDEX_NAME.match(name):
            raise SearchFailure(400, "rest_create_index: index name is invalid: %s" % name)
        try:
            definition = json.loads(body or b"{}")
        except ValueError as exc:
            raise SearchFailure(400, "rest_create_index: could not unmarshal json, err: %s" % exc) from exc
        if not isinstance(definition, dict):
            raise SearchFailure(400, "rest_create_index: the index definition must be a JSON object")
        if definition.get("type", "fulltext-index") != "fulltext-index":
            raise SearchFailure(400, "rest_create_index: unknown index type: %s" % definition.get("type"))
        source = definition.get("sourceName")
        bucket = self.cluster.buckets.get(source) if isinstance(source, str) else None
        if bucket is None or bucket.is_memcached:
            raise SearchFailure(400, "rest_create_index: sourceName %r is not a couchbase bucket" % (source,))
        if definition.get("sourceType", "couchbase") not in ("couchbase", "gocbcore", "couchbase-dcp"):
            raise SearchFailure(400, "rest_create_index: unknown sourceType: %s" % definition.get("sourceType"))
        params = definition.get("params") or {}
        if not isinstance(params, dict) or not isinstance(params.get("mapping", {}), dict):
            raise SearchFailure(400, "rest_create_index: params must be an object with an object mapping")
        existing = self.indexes.get(name)
        if existing is not None and definition.get("prevIndexUUID") != existing.definition["uuid"]:
            raise SearchFailure(400, "rest_create_index: error creating index: %s, err: manager_api: cannot create "
                                     "index because an index with the same name already exists: %s" % (name, name))
        stored = {"type": "fulltext-index", "name": name, "uuid": os.urandom(8).hex(), "sourceType": "couchbase",
                  "sourceName": source, "sourceUUID": bucket.uuid,
                  "params": params, "sourceParams": definition.get("sourceParams") or {},
                  "planParams": definition.get("planParams") or {"maxPartitionsPerPIndex": 1024}}
        params.setdefault("mapping", {"default_mapping": {"enabled": True, "dynamic": True},
                                                "default_analyzer": "standard", "default_type": "_default"})
        index = FTSIndex(stored)
        self.indexes[name] = index
        return {"status": "ok", "uuid": stored["uuid"]}

    def get_index(self, name: str) -> Dict[str, Any]:
        """One definition."""
        index = self._index(name, "rest_get_index")
        return {"status": "ok", "indexDef": index.definition}

    def list_indexes(self) -> Dict[str, Any]:
        """Every definition."""
        return {"status": "ok", "indexDefs": {"uuid": self.uuid, "implVersion": "5.5.0",
                                              "indexDefs": {n: i.definition for n, i in self.indexes.items()}}}

    def delete_index(self, name: str) -> Dict[str, Any]:
        """Drop an index."""
        index = self._index(name, "rest_delete_index")
        del self.indexes[name]
        return {"status": "ok", "uuid": index.definition["uuid"]}

    def count(self, name: str) -> Dict[str, Any]:
        """How many documents the index holds (after catching up)."""
        index = self._index(name, "rest_count_index")
        self._refresh(index)
        return {"status": "ok", "count": len(index.docs)}

    def _index(self, name: str, where: str) -> FTSIndex:
        index = self.indexes.get(name)
        if index is None:
            raise SearchFailure(400, "%s, indexName: %s, err: index not found" % (where, name))
        return index

    def _bucket(self, index: FTSIndex) -> "Bucket":
        bucket = self.cluster.buckets.get(index.bucket_name)
        if bucket is None:
            raise SearchFailure(400, "rest_index: Query, indexName: %s, err: source bucket %s not found"
                                % (index.name, index.bucket_name))
        return bucket

    def _refresh(self, index: FTSIndex) -> None:
        index.refresh(self._bucket(index), self.cluster.clock.now(), self.index_lag)

    # -- queries ------------------------------------------------------------------

    def lagging(self, name: str, vectors: Dict[int, int]) -> Dict[str, List[int]]:
        """The vBuckets whose wanted sequence number the index has not reached:
        ``{"vb": [indexed, wanted]}`` (empty once caught up)."""
        index = self._index(name, "rest_index: Query")
        bucket = self._bucket(index)
        seen = index.caught_up(bucket, self.cluster.clock.now(), self.index_lag)
        return {str(vb): [seen[vb] if vb < len(seen) else 0, wanted]
                for vb, wanted in vectors.items() if vb >= len(seen) or seen[vb] < wanted}

    def prepare(self, name: str, body: bytes) -> Tuple[Dict[str, Any], Dict[int, int], float]:
        """Check a query request: (request, consistency vectors, timeout in
        seconds). SearchFailure (400) when it cannot run."""
        self._index(name, "rest_index: Query")
        try:
            request = json.loads(body or b"")
        except ValueError as exc:
            raise SearchFailure(400, "rest_index: Query, indexName: %s, err: could not unmarshal json, err: %s"
                                % (name, exc)) from exc
        if not isinstance(request, dict):
            raise SearchFailure(400, "rest_index: Query, indexName: %s, err: the request must be a JSON object"
                                % name)
        ctl = request.get("ctl") or {}
        if not isinstance(ctl, dict):
            raise SearchFailure(400, "ctl must be an object")
        timeout_ms = ctl.get("timeout", DEFAULT_TIMEOUT_MS)
        if not _is_number(timeout_ms) or timeout_ms <= 0:
            raise SearchFailure(400, "ctl.timeout must be a positive number of milliseconds")
        vectors: Dict[int, int] = {}
        consistency = ctl.get("consistency")
        if consistency is not None:
            if not isinstance(consistency, dict):
                raise SearchFailure(400, "ctl.consistency must be an object")
            level = consistency.get("level", "")
            if level not in ("", "not_bounded", "at_plus"):
                raise SearchFailure(400, "unsupported consistency level: %s" % level)
            if level == "at_plus":
                raw = (consistency.get("vectors") or {}).get(name) or {}
                if not isinstance(raw, dict):
                    raise SearchFailure(400, "ctl.consistency.vectors must map index names to objects")
                for key, seqno in raw.items():
                    try:
                        vb = int(str(key).split("/", 1)[0])
                    except ValueError:
                        raise SearchFailure(400, "bad consistency vector key: %s" % key) from None
                    if not isinstance(seqno, int) or isinstance(seqno, bool):
                        raise SearchFailure(400, "bad consistency vector value for %s" % key)
                    vectors[vb] = max(vectors.get(vb, 0), seqno)
        return request, vectors, timeout_ms / 1000.0

    def run(self, name: str, request: Dict[str, Any]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        """Run a checked request: (metadata, hits)."""
        started = time.perf_counter()
        index = self._index(name, "rest_index: Query")
        self._refresh(index)
        if "query" not in request:
            raise SearchFailure(400, "rest_index: Query, indexName: %s, err: missing query" % name)
        size = request.get("size", 10)
        skip = request.get("from", 0)
        for label, value in (("size", size), ("from", skip)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SearchFailure(400, "%s must be a non-negative integer" % label)
        if size + skip > MAX_RESULT_WINDOW:
            raise SearchFailure(400, "bleve: result window is too large, from + size must be less than or equal "
                                     "to: %d but was %d" % (MAX_RESULT_WINDOW, size + skip))
        try:
            node = compile_query(request["query"], index.analyzer)
        except SearchFailure as exc:
            raise SearchFailure(exc.status, "rest_index: Query, indexName: %s, err: bleve: QueryBleve parsing "
                                            "searchRequest, err: %s" % (name, exc.message)) from None
        specs = _sort_specs(request.get("sort"))
        highlight = request.get("highlight")
        style = None
        hl_fields = None
        if highlight is not None:
            if not isinstance(highlight, dict):
                raise SearchFailure(400, "highlight must be an object")
            style = highlight.get("style") or "html"
            if style not in _MARKS:
                raise SearchFailure(400, "no highlighter named `%s` registered" % style)
            hl_fields = highlight.get("fields")
        fields = request.get("fields") or []
        if not isinstance(fields, list):
            raise SearchFailure(400, "fields must be an array")
        matches = node.run(_Ctx(index))
        found = [(index.docs[d], m) for d, m in matches.items()]
        facets = _facets(request.get("facets"), [doc for doc, _m in found])
        ordered = _order(found, specs)
        hits = []
        for doc, match, shown in ordered[skip:skip + size]:
            hit: Dict[str, Any] = {"index": "%s_%s_0" % (name, index.definition["uuid"]), "id": doc.id,
                                   "score": match.score, "sort": shown, "locations": _locations(doc, match)}
            if style is not None:
                hit["fragments"] = _fragments(doc, match, style, hl_fields)
            if fields:
                hit["fields"] = _stored_fields(doc, fields)
            if request.get("explain"):
                hit["explanation"] = match.expl
            hits.append(hit)
        meta = {"status": {"total": 1, "failed": 0, "successful": 1}, "request": request,
                "total_hits": len(found), "max_score": max((m.score for _d, m in found), default=0.0),
                "took": int((time.perf_counter() - started) * 1e9), "facets": facets}
        return meta, hits


def response_chunks(meta: Dict[str, Any], hits: List[Dict[str, Any]]) -> Iterator[bytes]:
    """The response body, one hit per chunk (members in the server's order)."""
    def dump(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

    yield ('{"status":%s,"request":%s,"hits":[' % (dump(meta["status"]), dump(meta["request"]))).encode()
    for i, hit in enumerate(hits):
        yield ("," if i else "").encode() + dump(hit).encode("utf-8")
    tail = {k: meta[k] for k in ("total_hits", "max_score", "took", "facets")}
    yield ("]," + dump(tail)[1:]).encode("utf-8")


# ---------------------------------------------------------------------- HTTP


def fts_service(app: "MockApp") -> FTSService:
    """The cluster's one :class:`FTSService`."""
    service = app.services.get("fts")
    if service is None:
        service = app.services["fts"] = FTSService(app.cluster)
    return service


def _failure(exc: SearchFailure, request: Any = None) -> HTTPResponse:
    body: Dict[str, Any] = {"error": exc.message, "request": request, "status": "fail"}
    body.update(exc.extra)
    return json_response(body, exc.status)


def router(app: "MockApp", runtime: "NodeRuntime") -> Router:
    """Routes of one node's search service."""
    cluster = app.cluster
    r = Router()

    def allowed(request: HTTPRequest, bucket: Any, write: bool) -> Optional[HTTPResponse]:
        access = http_access(cluster, request, bucket)
        if access is None:
            return json_response({"error": "rest_auth: preparePerms, err: unauthorized", "status": "fail"}, 401)
        if write and access != "rw":
            return json_response({"error": "rest_auth: preparePerms, err: forbidden", "status": "fail"}, 403)
        return None

    def source_bucket(name: str) -> Any:
        index = fts_service(app).indexes.get(name)
        return cluster.buckets.get(index.bucket_name) if index is not None else None

    async def list_indexes(request: HTTPRequest) -> HTTPResponse:
        if request.basic_auth() is not None and http_access(cluster, request) is None:
            return json_response({"error": "rest_auth: preparePerms, err: unauthorized", "status": "fail"}, 401)
        return json_response(fts_service(app).list_indexes())

    async def index_def(request: HTTPRequest) -> HTTPResponse:
        name = request.params["name"]
        service = fts_service(app)
        try:
            if request.method == "PUT":
                try:
                    source = json.loads(request.body or b"{}").get("sourceName")
                except (ValueError, AttributeError):
                    source = None
                refusal = allowed(request, cluster.buckets.get(source) if isinstance(source, str) else None, True)
                if refusal is not None:
                    return refusal
                return json_response(service.put_index(name, request.body))
            refusal = allowed(request, source_bucket(name), request.method == "DELETE")
            if refusal is not None:
                return refusal
            if request.method == "DELETE":
                return json_response(service.delete_index(name))
            return json_response(service.get_index(name))
        except SearchFailure as exc:
            return _failure(exc)

    async def count(request: HTTPRequest) -> HTTPResponse:
        name = request.params["name"]
        refusal = allowed(request, source_bucket(name), False)
        if refusal is not None:
            return refusal
        try:
            return json_response(fts_service(app).count(name))
        except SearchFailure as exc:
            return _failure(exc)

    async def query(request: HTTPRequest) -> HTTPResponse:
        name = request.params["name"]
        service = fts_service(app)
        refusal = allowed(request, source_bucket(name), False)
        if refusal is not None:
            return refusal
        parsed: Any = None
        try:
            parsed, vectors, timeout = service.prepare(name, request.body)
            if vectors:
                deadline = time.monotonic() + timeout
                while True:
                    behind = service.lagging(name, vectors)
                    if not behind:
                        break
                    if time.monotonic() >= deadline:
                        raise SearchFailure(412, "rest_index: Query, indexName: %s, err: ErrorConsistencyWait, "
                                                 "err: context deadline exceeded, status: timeout" % name,
                                            {"startEndSeqs": behind})
                    await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            meta, hits = service.run(name, parsed)
        except SearchFailure as exc:
            return _failure(exc, parsed)
        return HTTPResponse(200, response_chunks(meta, hits))

    r.add(["GET"], r"/api/index", list_indexes)
    r.add(["GET", "PUT", "DELETE"], r"/api/index/(?P<name>[^/]+)", index_def)
    r.add(["GET"], r"/api/index/(?P<name>[^/]+)/count", count)
    r.add(["POST"], r"/api/index/(?P<name>[^/]+)/query", query)
    return r

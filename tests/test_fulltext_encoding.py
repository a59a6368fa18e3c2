"""Every class of couchbase_core.fulltext encodes as the 2.5 SDK's did (the
JSON of the FTS query REST API), and refuses what 2.5 refused. The two
places where 2.5 sent something the service cannot read are pinned too
(TermRangeQuery, Params.consistency; see docs/search.md)."""

from __future__ import annotations

import json

import pytest

import couchbase_core.fulltext as FT
from couchbase_core.exceptions import ArgumentError, CouchbaseError
from couchbase_core.n1ql import MutationState
from couchbase_core.result import MutationToken

# --------------------------------------------------------------- queries

QUERIES = [
    (FT.MatchQuery("nosql"), {"match": "nosql"}),
    (FT.MatchQuery("nosql", field="title", analyzer="standard", fuzziness=2, prefix_length=1, boost=1.5),
     {"match": "nosql", "field": "title", "analyzer": "standard", "fuzziness": 2, "prefix_length": 1,
      "boost": 1.5}),
    (FT.MatchPhraseQuery("hello world", field="f", analyzer="en"),
     {"match_phrase": "hello world", "field": "f", "analyzer": "en"}),
    (FT.PhraseQuery("couchbase", "nosql", field="body"), {"terms": ["couchbase", "nosql"], "field": "body"}),
    (FT.PrefixQuery("hop", field="name"), {"prefix": "hop", "field": "name"}),
    (FT.RegexQuery("h.*p", field="name"), {"regexp": "h.*p", "field": "name"}),
    (FT.RegexpQuery("x+"), {"regexp": "x+"}),
    (FT.WildcardQuery("ho?p*", field="name"), {"wildcard": "ho?p*", "field": "name"}),
    (FT.TermQuery("lcb_cntl_string", fuzziness=1, prefix_length=2, field="f"),
     {"term": "lcb_cntl_string", "fuzziness": 1, "prefix_length": 2, "field": "f"}),
    (FT.QueryStringQuery("description:water and stuff"), {"query": "description:water and stuff"}),
    (FT.BooleanFieldQuery(True, field="active"), {"bool": True, "field": "active"}),
    (FT.NumericRangeQuery(1, 5, min_inclusive=True, max_inclusive=False, field="n"),
     {"min": 1.0, "max": 5.0, "inclusive_min": True, "inclusive_max": False, "field": "n"}),
    (FT.NumericRangeQuery(max=10), {"max": 10.0}),
    (FT.DateRangeQuery(start="2014-12-25", end="2016-01-01", start_inclusive=True, end_inclusive=True,
                       datetime_parser="dateTimeOptional", field="when"),
     {"start": "2014-12-25", "end": "2016-01-01", "inclusive_start": True, "inclusive_end": True,
      "datetime_parser": "dateTimeOptional", "field": "when"}),
    (FT.DateRangeQuery(end="2016-01-01"), {"end": "2016-01-01"}),
    (FT.TermRangeQuery("apple", "pear", start_inclusive=False, field="fruit"),
     {"min": "apple", "max": "pear", "inclusive_min": False, "field": "fruit"}),
    (FT.DocIdQuery(["a", "b"]), {"ids": ["a", "b"]}),
    (FT.GeoDistanceQuery("10km", (-2.235143, 53.482358), field="geo"),
     {"distance": "10km", "location": [-2.235143, 53.482358], "field": "geo"}),
    (FT.GeoBoundingBoxQuery((0, 10), [10, 0], field="geo"),
     {"top_left": [0.0, 10.0], "bottom_right": [10.0, 0.0], "field": "geo"}),
    (FT.MatchAllQuery(), {"match_all": None}),
    (FT.MatchNoneQuery(), {"match_none": None}),
    (FT.MatchAllQuery(boost=2), {"match_all": None, "boost": 2.0}),
    (FT.ConjunctionQuery(FT.TermQuery("couchbase"), FT.MatchQuery("nosql")),
     {"conjuncts": [{"term": "couchbase"}, {"match": "nosql"}]}),
    (FT.DisjunctionQuery(FT.TermQuery("a"), FT.TermQuery("b"), boost=3),
     {"disjuncts": [{"term": "a"}, {"term": "b"}], "min": 1, "boost": 3.0}),
    (FT.DisjunctionQuery(FT.TermQuery("a"), FT.TermQuery("b"), min=2),
     {"disjuncts": [{"term": "a"}, {"term": "b"}], "min": 2}),
    (FT.BooleanQuery(must=FT.TermQuery("a"), should=[FT.TermQuery("b"), FT.TermQuery("c")],
                     must_not=FT.TermQuery("d")),
     {"must": {"conjuncts": [{"term": "a"}]}, "should": {"disjuncts": [{"term": "b"}, {"term": "c"}], "min": 1},
      "must_not": {"disjuncts": [{"term": "d"}], "min": 1}}),
    (FT.RawQuery({"anything": [1, 2]}), {"anything": [1, 2]}),
]


@pytest.mark.parametrize("query,expected", QUERIES, ids=[type(q).__name__ + str(i) for i, (q, _e) in
                                                         enumerate(QUERIES)])
def test_every_query_class_encodes_as_2_5(query, expected):
    assert query.encodable == expected
    # and it is JSON as it stands
    assert json.loads(json.dumps(query.encodable)) == expected


def test_the_2_5_class_names_are_there():
    names = ["MatchQuery", "MatchPhraseQuery", "PhraseQuery", "PrefixQuery", "RegexQuery", "WildcardQuery",
             "TermQuery", "QueryStringQuery", "BooleanFieldQuery", "NumericRangeQuery", "DateRangeQuery",
             "TermRangeQuery", "DocIdQuery", "GeoDistanceQuery", "GeoBoundingBoxQuery", "MatchAllQuery",
             "MatchNoneQuery", "ConjunctionQuery", "DisjunctionQuery", "BooleanQuery", "Params", "TermFacet",
             "DateFacet", "NumericFacet", "SortScore", "SortID", "SortField", "SortGeoDistance", "SortString",
             "SortRaw", "SearchRequest", "SearchError", "NoChildrenError", "make_search_body"]
    for name in names:
        assert name in FT.__all__, name
        assert getattr(FT, name) is not None
    assert FT.SearchQuery is FT.Query and FT.RegexpQuery is FT.RegexQuery
    for _q, _e in QUERIES:
        assert isinstance(_q, FT.Query)


def test_attributes_read_back_what_was_set_and_del_removes_it():
    q = FT.MatchQuery("x")
    q.field = "title"
    q.fuzziness = 1
    assert (q.match, q.field, q.fuzziness, q.analyzer) == ("x", "title", 1, None)
    del q.fuzziness
    assert q.encodable == {"match": "x", "field": "title"}
    r = FT.NumericRangeQuery(min=1)
    assert r.min == 1.0 and r.max is None
    b = FT.BooleanQuery(should=FT.TermQuery("a"))
    b.should.min = 1
    b.must = [FT.TermQuery("m")]
    assert isinstance(b.must, FT.ConjunctionQuery) and isinstance(b.should, FT.DisjunctionQuery)
    del b.must
    assert b.encodable == {"should": {"disjuncts": [{"term": "a"}], "min": 1}}


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("make,builtin", [
    (lambda: FT.NumericRangeQuery(), TypeError),
    (lambda: FT.DateRangeQuery(), TypeError),
    (lambda: FT.TermRangeQuery(), TypeError),
    (lambda: FT.MatchQuery("x", no_such_option=1), AttributeError),
    (lambda: FT.Params(bogus=1), AttributeError),
    (lambda: FT.Params(highlight_style="bold"), ValueError),
    (lambda: FT.GeoDistanceQuery("1km", (1, 2, 3)), ValueError),
    (lambda: FT.NumericRangeQuery(min="low"), TypeError),
    (lambda: FT.DisjunctionQuery(FT.TermQuery("a"), min=0), ValueError),
    (lambda: FT.ConjunctionQuery("not a query"), TypeError),
    (lambda: FT.Params(limit=-1), ValueError),
    (lambda: FT.Params(timeout=0), ValueError),
    (lambda: FT.Params(fields="name"), TypeError),
    (lambda: FT.NumericFacet("n").add_range("none"), TypeError),
    (lambda: FT.Params(facets={"n": FT.NumericFacet("n")}), ValueError),
    (lambda: FT.Params(facets={"n": "not a facet"}), ValueError),
    (lambda: FT.Params(consistency="request_plus"), ValueError),
    (lambda: FT.Params(sort=[1]), TypeError),
    (lambda: FT.make_search_body("", FT.MatchAllQuery()), ValueError),
    (lambda: FT.make_search_body("i", 42), ValueError),
])
def test_bad_input_raises_the_2_5_builtin_and_an_argument_error(make, builtin):
    with pytest.raises(FT.SearchArgumentError) as info:
        make()
    assert isinstance(info.value, builtin)
    assert isinstance(info.value, ArgumentError) and isinstance(info.value, CouchbaseError)


@pytest.mark.parametrize("query", [
    FT.ConjunctionQuery(), FT.DisjunctionQuery(), FT.DisjunctionQuery(FT.TermQuery("a"), min=2),
    FT.PhraseQuery(), FT.DocIdQuery([]), FT.BooleanQuery(),
    FT.ConjunctionQuery(FT.ConjunctionQuery()),  # a bad child is found when the parent encodes
])
def test_empty_compound_queries_fail_when_encoded_with_no_children_error(query):
    with pytest.raises(FT.NoChildrenError) as info:
        _ = query.encodable
    assert isinstance(info.value, CouchbaseError)


# ------------------------------------------------------ facets and sorts


def test_facets_encode_as_2_5():
    assert FT.TermFacet("type", 5).encodable == {"field": "type", "size": 5}
    assert FT.TermFacet("type").encodable == {"field": "type"}
    date = FT.DateFacet("updated").add_range("old", end="2015-01-01").add_range("new", start="2015-01-01")
    assert date.encodable == {"field": "updated", "date_ranges": [{"end": "2015-01-01", "name": "old"},
                                                                   {"start": "2015-01-01", "name": "new"}]}
    num = FT.NumericFacet("abv").add_range("low", max=5).add_range("mid", 5, 8)
    assert num.encodable == {"field": "abv", "numeric_ranges": [{"max": 5, "name": "low"},
                                                                 {"min": 5, "max": 8, "name": "mid"}]}


def test_sorts_encode_as_2_5():
    assert FT.SortScore().as_encodable() == {"by": "score"}
    assert FT.SortScore(descending=True).as_encodable() == {"by": "score", "desc": True}
    assert FT.SortID(desc=False).as_encodable() == {"by": "id", "desc": False}
    assert FT.SortField("abv", type="number", mode="min", missing="last", desc=True).as_encodable() == {
        "by": "field", "field": "abv", "type": "number", "mode": "min", "missing": "last", "desc": True}
    assert FT.SortGeoDistance((-2.2, 53.4), "geo", unit="km").as_encodable() == {
        "by": "geo_distance", "location": [-2.2, 53.4], "field": "geo", "unit": "km"}
    assert FT.SortString("name", "-_score").as_encodable() == ["name", "-_score"]
    assert FT.SortRaw({"by": "whatever"}).as_encodable() == {"by": "whatever"}


# ------------------------------------------------------------- params


def test_params_encode_as_2_5():
    p = FT.Params(limit=10, skip=20, explain=True, fields=["name", "abv"], timeout=2.5, highlight_style="html",
                  highlight_fields=["name"], sort=["-abv", FT.SortID()],
                  facets={"types": FT.TermFacet("type", 3)})
    assert p.as_encodable("beers") == {
        "size": 10, "from": 20, "explain": True, "fields": ["name", "abv"], "ctl": {"timeout": 2500},
        "highlight": {"style": "html", "fields": ["name"]}, "sort": ["-abv", {"by": "id"}],
        "facets": {"types": {"field": "type", "size": 3}}}
    assert FT.Params(sort=FT.SortScore(desc=True)).as_encodable("i") == {"sort": {"by": "score", "desc": True}}
    assert FT.Params().as_encodable("i") == {}


def test_consistent_with_sends_at_plus_vectors_keyed_vbucket_slash_uuid():
    ms = MutationState()
    ms.add_all(MutationToken(12, 345678, 7, "default"), MutationToken(3, 99, 1, "default"))
    p = FT.Params(limit=1)
    p.consistent_with(ms)
    assert p.as_encodable("beers")["ctl"] == {"consistency": {
        "level": "at_plus", "vectors": {"beers": {"12/345678": 7, "3/99": 1}}}}
    # 2.5: consistent_with after consistency is an error
    q = FT.Params(consistency="not_bounded")
    with pytest.raises(ValueError):
        q.consistent_with(ms)
    other = MutationState()
    other.add_all(MutationToken(1, 1, 1, "default"), MutationToken(1, 1, 1, "other"))
    with pytest.raises(FT.SearchArgumentError):
        FT.Params().consistent_with(other)


def test_consistency_not_bounded_is_sent_as_a_level_object():
    # 2.5 put the bare string under ctl.consistency, which the service
    # cannot read; the object form is what it reads.
    assert FT.Params(consistency="not_bounded").as_encodable("i") == {"ctl": {"consistency": {"level":
                                                                                               "not_bounded"}}}


def test_make_search_body_assembles_query_params_and_index_name():
    body = FT.make_search_body("beers", "name:ale", FT.Params(limit=3))
    assert body == {"query": {"query": "name:ale"}, "size": 3, "indexName": "beers"}
    body = FT.make_search_body("beers", FT.MatchAllQuery())
    assert body == {"query": {"match_all": None}, "indexName": "beers"}
    assert FT.search_path("my index") == "/api/index/my%20index/query"


def test_encoding_twice_gives_the_same_body_and_does_not_change_the_params():
    p = FT.Params(limit=1, facets={"t": FT.TermFacet("t")})
    first = FT.make_search_body("i", FT.BooleanQuery(must=FT.TermQuery("a")), p)
    second = FT.make_search_body("i", FT.BooleanQuery(must=FT.TermQuery("a")), p)
    assert first == second
    assert p.as_encodable("i") == {"size": 1, "facets": {"t": {"field": "t"}}}


def test_search_error_exposes_the_service_errors():
    exc = FT.search_error({"status": {"total": 2, "failed": 1, "successful": 1, "errors": {"p1": "boom"}}},
                          200, None)
    assert isinstance(exc, FT.SearchError) and exc.errors == {"p1": "boom"} and exc.http_status == 200
    exc = FT.search_error({"error": "index not found", "status": "fail"}, 400, None)
    assert isinstance(exc, FT.SearchError) and exc.http_status == 400 and "index not found" in exc.errors
    assert FT.search_error({"status": {"total": 1, "failed": 0, "successful": 1}}, 200, None) is None

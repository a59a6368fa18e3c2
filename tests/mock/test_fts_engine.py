"""The emulator's search service (couchbase_core.mock.fts).

The engine runs in memory against a real emulated cluster object (documents
stored into its vBuckets as the KV service stores them); the REST API is
tested over HTTP with the raw test client, against an emulator running in
this process.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

from couchbase_core.mock import MockCluster
from couchbase_core.mock.cluster import Bucket, Cluster, vbucket_of
from couchbase_core.mock.fts import (
    FTSService,
    SearchFailure,
    analyze,
    fts_service,
    index_document,
    parse_date,
)
from couchbase_core.mock.store import Item
from tests.mock import rawhttp
from tests.mock.rawclient import ClusterClients

ADMIN = ("Administrator", "password")


# ---------------------------------------------------------------- helpers


class Corpus:
    """A cluster with one bucket and a search service; documents are
    written into the vBuckets the way the KV service writes them."""

    def __init__(self, docs: Optional[Dict[str, Any]] = None) -> None:
        self.cluster = Cluster(1)
        self.bucket = self.cluster.add_bucket(Bucket("default", num_vbuckets=16, replicas=0))
        self.service = FTSService(self.cluster)
        self.service.put_index("idx", json.dumps({"type": "fulltext-index", "sourceName": "default"}).encode())
        for key, value in (docs or {}).items():
            self.put(key, value)

    def put(self, key: str, value: Any) -> Tuple[int, int]:
        """Store ``value`` (JSON); returns (vbucket, seqno)."""
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return self._write(key, raw, deleted=False)

    def delete(self, key: str) -> Tuple[int, int]:
        return self._write(key, b"", deleted=True)

    def _write(self, key: str, raw: bytes, deleted: bool) -> Tuple[int, int]:
        vb = vbucket_of(key.encode(), self.bucket.num_vbuckets)
        store = self.bucket.vbuckets[vb]
        now = self.cluster.clock.now()
        item = Item(raw, 0x02000000, 0, self.cluster.cas.next(self.cluster.clock), 1, store.next_seqno(now), now)
        item.deleted = deleted
        store.items[key.encode()] = item
        return vb, item.seqno

    def search(self, query: Dict[str, Any], **request: Any) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
        request["query"] = query
        return self.service.run("idx", request)

    def ids(self, query: Dict[str, Any], **request: Any) -> List[str]:
        request.setdefault("sort", ["_id"])
        request.setdefault("size", 100)
        return [hit["id"] for hit in self.search(query, **request)[1]]


BEERS = {
    "pale": {"name": "Pale Ale", "abv": 5.2, "brewed": "2015-03-01", "active": True,
             "geo": {"lon": -122.42, "lat": 37.77}, "desc": "A crisp pale ale with citrus hops",
             "tags": ["light", "hoppy"]},
    "stout": {"name": "Imperial Stout", "abv": 9.5, "brewed": "2012-11-20T10:00:00Z", "active": False,
              "geo": [-0.12, 51.5], "desc": "Dark roasty stout, never pale", "tags": ["dark"]},
    "ipa": {"name": "West Coast IPA", "abv": 6.8, "brewed": "2018-07-01", "active": True,
            "geo": {"lon": -118.24, "lat": 34.05}, "desc": "Hoppy india pale ale, pale and bitter",
            "tags": ["hoppy", "bitter"]},
    "lager": {"name": "Helles Lager", "abv": 4.9, "brewed": "2019-05-05", "active": True,
              "desc": "Clean malty lager"},
    "note": {"title": "not a beer", "desc": "a note about the brewery"},
}


@pytest.fixture
def beers() -> Corpus:
    return Corpus(BEERS)


# ------------------------------------------------------------- analysis


def test_standard_analysis_lowercases_and_splits_on_non_word_characters():
    assert [t[0] for t in analyze("Hello, World_x! 42-b ÜBER/straße")] == ["hello", "world_x", "42", "b", "über",
                                                                           "straße"]
    tokens = analyze("Pale  Ale")
    assert tokens == [("pale", 1, 0, 4), ("ale", 2, 6, 9)]  # (term, position, start, end)
    assert analyze("Keep As Is", "keyword") == [("Keep As Is", 1, 0, 10)]
    with pytest.raises(SearchFailure) as info:
        analyze("x", "klingon")
    assert info.value.status == 400


def test_dates_the_dynamic_mapping_recognises():
    assert parse_date("2015-03-01") == 1425168000.0
    assert parse_date("2015-03-01T00:00:00Z") == 1425168000.0
    assert parse_date("2015-03-01T01:00:00+01:00") == 1425168000.0
    assert parse_date("2015-03-01 00:00:00") == 1425168000.0
    for not_a_date in ("2015-13-01", "hello world", "2015", "", "01/03/2015"):
        assert parse_date(not_a_date) is None


def test_documents_are_flattened_by_dotted_path_and_typed_by_value():
    doc = index_document("d", 1, {"a": {"b": "Two Words", "n": [1, 2.5]}, "when": "2020-01-01", "ok": False,
                                  "where": {"lon": 1.5, "lat": 2.5}, "pair": [3, 4], "nothing": None}, "standard")
    assert doc is not None
    assert [t[0] for t in doc.field_terms("a.b")] == ["two", "words"]
    assert doc.numbers["a.n"] == [1.0, 2.5]
    assert "when" in doc.dates and "when" not in doc.text
    assert doc.bools == {"ok": [False]}
    # any array of two numbers is also a point (lon, lat), as documented
    assert doc.points == {"where": [(1.5, 2.5)], "pair": [(3.0, 4.0)], "a.n": [(1.0, 2.5)]}
    assert [t[0] for t in doc.field_terms("_all")] == ["two", "words"]
    assert index_document("d", 1, [1, 2], "standard") is None  # not an object: not indexed


# ---------------------------------------------------------- every query


@pytest.mark.parametrize("query,expected", [
    ({"match": "pale ale"}, ["ipa", "pale", "stout"]),
    ({"match": "pale ale", "operator": "and"}, ["ipa", "pale"]),
    ({"match": "PALE", "field": "name"}, ["pale"]),
    ({"match": "stot", "fuzziness": 1}, ["stout"]),
    ({"match": "stot", "fuzziness": 1, "prefix_length": 3}, ["stout"]),
    ({"match": "stot", "fuzziness": 1, "prefix_length": 4}, []),
    ({"match_phrase": "pale ale"}, ["ipa", "pale"]),
    ({"match_phrase": "ale pale"}, ["ipa"]),
    ({"match_phrase": "ale india"}, []),
    ({"terms": ["india", "pale"]}, ["ipa"]),
    ({"term": "hoppy", "field": "tags"}, ["ipa", "pale"]),
    ({"term": "Hoppy", "field": "tags"}, []),  # a term is not analysed
    ({"prefix": "hop"}, ["ipa", "pale"]),
    ({"regexp": "b[a-z]+r", "field": "desc"}, ["ipa"]),
    ({"wildcard": "br*y"}, ["note"]),
    ({"query": "+pale -name:stout"}, ["ipa", "pale"]),
    ({"query": "name:lager desc:roasty"}, ["lager", "stout"]),
    ({"query": "abv:>6"}, ["ipa", "stout"]),
    ({"query": "abv:>=5.2 abv:<6"}, ["ipa", "lager", "pale", "stout"]),
    ({"query": "+abv:>=5.2 +abv:<6"}, ["pale"]),
    ({"query": '"clean malty"'}, ["lager"]),
    ({"query": "abv:4.9"}, ["lager"]),
    ({"bool": True, "field": "active"}, ["ipa", "lager", "pale"]),
    ({"bool": False}, ["stout"]),
    ({"min": 5, "max": 9.5, "field": "abv"}, ["ipa", "pale"]),
    ({"min": 5, "max": 9.5, "inclusive_max": True, "field": "abv"}, ["ipa", "pale", "stout"]),
    ({"min": 5.2, "inclusive_min": False, "field": "abv"}, ["ipa", "stout"]),
    ({"start": "2015-01-01", "field": "brewed"}, ["ipa", "lager", "pale"]),
    ({"start": "2015-01-01", "end": "2019-05-05", "field": "brewed"}, ["ipa", "pale"]),
    ({"end": "2015-03-01", "inclusive_end": True}, ["pale", "stout"]),
    ({"min": "h", "max": "j", "field": "name"}, ["ipa", "lager", "stout"]),  # ipa, helles, imperial
    ({"min": "h", "max": "imperial", "field": "name"}, ["lager"]),
    ({"ids": ["pale", "lager", "missing"]}, ["lager", "pale"]),
    ({"location": [-122.4, 37.8], "distance": "10km", "field": "geo"}, ["pale"]),
    ({"location": {"lon": -122.4, "lat": 37.8}, "distance": "700mi"}, ["ipa", "pale"]),
    ({"location": "51.5,-0.1", "distance": "5km"}, ["stout"]),
    ({"top_left": [-125, 40], "bottom_right": [-115, 30], "field": "geo"}, ["ipa", "pale"]),
    ({"match_all": None}, ["ipa", "lager", "note", "pale", "stout"]),
    ({"match_none": None}, []),
    ({"conjuncts": [{"match": "pale"}, {"min": 6, "field": "abv"}]}, ["ipa", "stout"]),
    ({"disjuncts": [{"match": "lager"}, {"match": "stout"}, {"match": "malty"}], "min": 2}, ["lager"]),
    ({"must": {"conjuncts": [{"match": "pale"}]}, "must_not": {"disjuncts": [{"match": "stout"}], "min": 1}},
     ["ipa", "pale"]),
    ({"must": {"conjuncts": [{"match": "pale"}]}, "should": {"disjuncts": [{"match": "citrus"}], "min": 1}},
     ["pale"]),
    ({"must_not": {"disjuncts": [{"match": "pale"}], "min": 1}}, ["lager", "note"]),
])
def test_every_query_kind_finds_the_documents_it_should(beers, query, expected):
    assert beers.ids(query) == expected


def test_every_hit_has_the_server_members_and_the_meta_counts_everything(beers):
    meta, hits = beers.search({"match": "pale"}, size=2)
    assert meta["total_hits"] == 3 and len(hits) == 2
    assert meta["status"] == {"total": 1, "failed": 0, "successful": 1}
    assert meta["max_score"] == hits[0]["score"] and isinstance(meta["took"], int)
    assert meta["facets"] is None
    for hit in hits:
        assert set(hit) == {"index", "id", "score", "sort", "locations"}
        assert hit["index"].startswith("idx_")
    # locations are per original field, with positions and offsets
    pale = [h for h in beers.search({"match": "pale"})[1] if h["id"] == "pale"][0]
    assert pale["locations"]["name"]["pale"] == [{"pos": 1, "start": 0, "end": 4, "array_positions": None}]


# ---------------------------------------------------------------- scores


def test_scores_are_tf_idf_by_the_documented_formula():
    corpus = Corpus({"a": {"t": "apple"}, "b": {"t": "apple apple banana cherry"}, "c": {"t": "cherry"}})
    _meta, hits = corpus.search({"term": "apple", "field": "t"})
    import math

    idf = 1 + math.log(3 / (1 + 2))
    by_id = {h["id"]: h["score"] for h in hits}
    assert by_id["a"] == pytest.approx(math.sqrt(1) * idf * 1 / math.sqrt(1))
    assert by_id["b"] == pytest.approx(math.sqrt(2) * idf * 1 / math.sqrt(4))


def test_score_order_rarer_terms_shorter_fields_boosts_and_fuzz(beers):
    # the shorter field with the term ranks first
    corpus = Corpus({"short": {"t": "ale"}, "long": {"t": "ale with many other words in it"}})
    assert [h["id"] for h in corpus.search({"match": "ale"})[1]] == ["short", "long"]
    # a rare term weighs more than a common one
    corpus = Corpus({"rare": {"t": "zebra x"}, "common1": {"t": "horse x"}, "common2": {"t": "horse y"},
                     "common3": {"t": "horse z"}})
    hits = corpus.search({"match": "zebra horse"})[1]
    assert hits[0]["id"] == "rare"
    # a boost reorders
    hits = beers.search({"disjuncts": [{"match": "lager", "boost": 10}, {"match": "stout"}], "min": 1})[1]
    assert hits[0]["id"] == "lager"
    hits = beers.search({"disjuncts": [{"match": "lager"}, {"match": "stout", "boost": 10}], "min": 1})[1]
    assert hits[0]["id"] == "stout"
    # an exact match outscores a fuzzy one
    corpus = Corpus({"exact": {"t": "stout"}, "fuzzy": {"t": "stoat"}})
    hits = corpus.search({"match": "stout", "fuzziness": 1})[1]
    assert [h["id"] for h in hits] == ["exact", "fuzzy"] and hits[0]["score"] > hits[1]["score"]


def test_explain_adds_an_explanation_tree(beers):
    _meta, hits = beers.search({"match": "pale ale"}, explain=True)
    expl = hits[0]["explanation"]
    assert expl["value"] == pytest.approx(hits[0]["score"])
    assert expl["children"] and "weight(" in json.dumps(expl)


# ---------------------------------------------------------------- facets


def test_term_numeric_and_date_facets(beers):
    meta, _hits = beers.search({"match_all": None}, facets={
        "tags": {"field": "tags", "size": 2},
        "strength": {"field": "abv", "numeric_ranges": [{"name": "light", "max": 5.5},
                                                        {"name": "strong", "min": 5.5}]},
        "era": {"field": "brewed", "date_ranges": [{"name": "old", "end": "2015-01-01"},
                                                   {"name": "new", "start": "2015-01-01"}]},
        "nosize": {"field": "tags"}})
    facets = meta["facets"]
    assert facets["tags"] == {"field": "tags", "total": 5, "missing": 2, "other": 2,
                              "terms": [{"term": "hoppy", "count": 2}, {"term": "bitter", "count": 1}]}
    assert facets["strength"]["numeric_ranges"] == [{"name": "light", "max": 5.5, "count": 2},
                                                    {"name": "strong", "min": 5.5, "count": 2}]
    assert facets["strength"]["missing"] == 1 and facets["strength"]["total"] == 4
    assert [(r["name"], r["count"]) for r in facets["era"]["date_ranges"]] == [("old", 1), ("new", 3)]
    assert facets["nosize"]["terms"] == []  # a missing size is 0, as the server reads it
    # facets count every match, not only the page returned
    meta, hits = beers.search({"match_all": None}, size=1, facets={"t": {"field": "tags", "size": 10}})
    assert len(hits) == 1 and meta["facets"]["t"]["total"] == 5


# ------------------------------------------------------- sort and paging


def test_sorting_by_field_id_score_and_distance(beers):
    q = {"min": 0, "field": "abv"}
    assert beers.ids(q, sort=["abv"]) == ["lager", "pale", "ipa", "stout"]
    assert beers.ids(q, sort=["-abv"]) == ["stout", "ipa", "pale", "lager"]
    assert beers.ids(q, sort=["-_id"]) == ["stout", "pale", "lager", "ipa"]
    assert beers.ids({"match_all": None}, sort=[{"by": "field", "field": "abv", "missing": "first"}])[:1] == ["note"]
    assert beers.ids({"match_all": None}, sort=[{"by": "field", "field": "abv"}])[-1] == "note"
    near_sf = beers.ids({"match_all": None}, sort=[{"by": "geo_distance", "field": "geo", "location": [-122.4, 37.8],
                                                    "unit": "km"}])
    assert near_sf[:3] == ["pale", "ipa", "stout"]
    hits = beers.search(q, sort=["-abv", "_id"], size=1)[1]
    assert hits[0]["sort"] == ["9.5", "stout"]
    # default: by descending score
    scores = [h["score"] for h in beers.search({"match": "pale ale hoppy"})[1]]
    assert scores == sorted(scores, reverse=True)


def test_paging_and_the_result_window(beers):
    all_ids = beers.ids({"match_all": None})
    assert beers.ids({"match_all": None}, size=2, **{"from": 1}) == all_ids[1:3]
    with pytest.raises(SearchFailure) as info:
        beers.search({"match_all": None}, size=10000, **{"from": 1})
    assert info.value.status == 400 and "result window" in info.value.message


def test_highlighting_and_fields(beers):
    _meta, hits = beers.search({"match": "pale"}, highlight={"style": "html", "fields": ["desc"]},
                               fields=["name", "abv"], sort=["_id"])
    ipa = hits[0]
    assert ipa["id"] == "ipa"
    assert ipa["fragments"] == {"desc": ["Hoppy india <mark>pale</mark> ale, <mark>pale</mark> and bitter"]}
    assert ipa["fields"] == {"name": "West Coast IPA", "abv": 6.8}
    _meta, hits = beers.search({"term": "hoppy", "field": "tags"}, highlight={"style": "ansi"}, fields=["*"],
                               sort=["_id"])
    assert hits[0]["fragments"] == {"tags": ["\x1b[43mhoppy\x1b[0m"]}
    assert hits[0]["fields"]["tags"] == ["hoppy", "bitter"]


# -------------------------------------------- following the bucket


def test_the_index_follows_updates_deletions_and_flush(beers):
    assert beers.ids({"match": "lager"}) == ["lager"]
    beers.put("lager", {"name": "Helles", "desc": "now a pilsner"})
    assert beers.ids({"match": "lager"}) == []
    assert beers.ids({"match": "pilsner"}) == ["lager"]
    beers.delete("pale")
    assert "pale" not in beers.ids({"match_all": None})
    assert beers.service.count("idx")["count"] == 4
    beers.put("binary", b"\x00\x01 not json")
    assert "binary" not in beers.ids({"match_all": None})
    beers.bucket.flush()
    assert beers.ids({"match_all": None}) == []


def test_an_index_lag_hides_recent_mutations_until_they_are_old_enough():
    corpus = Corpus({"old": {"t": "x"}})
    corpus.service.index_lag = 60.0
    corpus.cluster.clock.advance(120)  # "old" is two minutes old
    assert corpus.ids({"match": "x"}) == ["old"]
    vb, seqno = corpus.put("new", {"t": "x"})
    corpus.put("old", {"t": "changed"})
    assert corpus.ids({"match": "x"}) == ["old"]  # the index still has the old version
    assert corpus.service.lagging("idx", {vb: seqno}) == {str(vb): [seqno - 1, seqno]}
    corpus.cluster.clock.advance(61)
    assert corpus.service.lagging("idx", {vb: seqno}) == {}
    assert corpus.ids({"match": "x"}) == ["new"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("query,fragment", [
    ({"bogus": 1}, "unknown query type"),
    ({"regexp": "("}, "error parsing regexp"),
    ({"term": "x", "fuzziness": 3}, "fuzziness exceeds max"),
    ({"disjuncts": [{"match": "a"}], "min": 2}, "minimum number of clauses"),
    ({"location": [1, 2], "distance": "far"}, "invalid distance"),
    ({"start": "yesterday"}, "cannot parse"),
    ({"min": 1, "max": "z", "field": "abv"}, None),  # a term range with a number bound: refused below
    ({"match": "x", "analyzer": "klingon"}, "unknown analyzer"),
    ("not an object", "must be a JSON object"),
    ({"query": ""}, "empty query string"),
])
def test_bad_queries_are_400_with_the_reason(beers, query, fragment):
    if fragment is None:
        beers.ids(query)  # the emulator reads mixed bounds as a term range: no error
        return
    with pytest.raises(SearchFailure) as info:
        beers.search(query)
    assert info.value.status == 400 and fragment in info.value.message
    assert info.value.message.startswith("rest_index: Query, indexName: idx")


def test_bad_requests_and_definitions(beers):
    service = beers.service
    for request, fragment in [({"query": {"match_all": None}, "sort": [{"by": "nope"}]}, "unknown sort"),
                              ({"query": {"match_all": None}, "size": -1}, "size"),
                              ({"query": {"match_all": None}, "facets": {"f": {}}}, "needs a field"),
                              ({"query": {"match_all": None}, "highlight": {"style": "bold"}}, "highlighter"),
                              ({}, "missing query")]:
        with pytest.raises(SearchFailure) as info:
            service.run("idx", request)
        assert info.value.status == 400 and fragment in info.value.message
    with pytest.raises(SearchFailure) as info:
        service.run("nope", {"query": {"match_all": None}})
    assert "index not found" in info.value.message
    with pytest.raises(SearchFailure) as info:
        service.put_index("idx", json.dumps({"sourceName": "default"}).encode())
    assert "already exists" in info.value.message
    uuid = service.get_index("idx")["indexDef"]["uuid"]
    assert service.put_index("idx", json.dumps({"sourceName": "default", "prevIndexUUID": uuid}).encode())["uuid"] \
        != uuid
    beers.cluster.add_bucket(Bucket("cache", "memcached"))
    for name, body in [("m", {"sourceName": "cache"}), ("n", {"sourceName": "nope"}), ("9bad", {"sourceName":
                                                                                               "default"}),
                       ("a", {"sourceName": "default", "params": {"mapping": {"default_analyzer": "klingon"}}})]:
        with pytest.raises(SearchFailure) as info:
            service.put_index(name, json.dumps(body).encode())
        assert info.value.status == 400
    with pytest.raises(SearchFailure):
        service.prepare("idx", json.dumps({"query": {"match_all": None},
                                           "ctl": {"consistency": {"level": "request_plus"}}}).encode())


def test_a_disabled_default_mapping_indexes_nothing():
    corpus = Corpus({"a": {"t": "x"}})
    corpus.service.put_index("off", json.dumps({"sourceName": "default", "params": {"mapping": {
        "default_mapping": {"enabled": False}}}}).encode())
    assert corpus.service.run("off", {"query": {"match_all": None}})[0]["total_hits"] == 0


# ------------------------------------------------------------ over HTTP


@pytest.fixture(scope="module")
def http_cluster():
    with MockCluster(nodes=2, replicas=0, in_process=True, users=["reader:secret:data_reader[default]"]) as mock:
        yield mock


def _fts(mock: MockCluster, node: int = 0) -> int:
    return mock.info["nodes"][node]["ports"]["fts"]


def test_nodes_announce_the_search_service_in_the_config(http_cluster):
    config = rawhttp.request("127.0.0.1", http_cluster.info["http_port"], "GET", "/pools/default/b/default",
                             auth=ADMIN).json()
    ports = sorted(ext["services"]["fts"] for ext in config["nodesExt"])
    assert ports == sorted(_fts(http_cluster, i) for i in range(2))
    assert all("ftsSSL" not in ext["services"] for ext in config["nodesExt"])  # no TLS: no TLS port


def test_index_definitions_over_rest(http_cluster):
    port = _fts(http_cluster)
    body = {"type": "fulltext-index", "sourceType": "couchbase", "sourceName": "default",
            "params": {"mapping": {"default_analyzer": "standard"}}}
    created = rawhttp.request("127.0.0.1", port, "PUT", "/api/index/rest1", json.dumps(body).encode(),
                              {"Content-Type": "application/json"}, ADMIN)
    assert created.status == 200 and created.json()["status"] == "ok"
    # every node answers for the cluster
    got = rawhttp.request("127.0.0.1", _fts(http_cluster, 1), "GET", "/api/index/rest1", auth=ADMIN).json()
    assert got["status"] == "ok" and got["indexDef"]["sourceName"] == "default"
    assert got["indexDef"]["uuid"] == created.json()["uuid"]
    listed = rawhttp.request("127.0.0.1", port, "GET", "/api/index", auth=ADMIN).json()
    assert "rest1" in listed["indexDefs"]["indexDefs"]
    assert rawhttp.request("127.0.0.1", port, "GET", "/api/index/rest1/count", auth=ADMIN).json()["status"] == "ok"
    gone = rawhttp.request("127.0.0.1", port, "DELETE", "/api/index/rest1", auth=ADMIN)
    assert gone.status == 200
    missing = rawhttp.request("127.0.0.1", port, "GET", "/api/index/rest1", auth=ADMIN)
    assert missing.status == 400 and missing.json()["status"] == "fail"
    assert "index not found" in missing.json()["error"]


def test_rest_authentication_and_roles(http_cluster):
    port = _fts(http_cluster)
    body = json.dumps({"sourceName": "default"}).encode()
    assert rawhttp.request("127.0.0.1", port, "PUT", "/api/index/auth1", body, auth=("Administrator", "wrong")
                           ).status == 401
    assert rawhttp.request("127.0.0.1", port, "PUT", "/api/index/auth1", body, auth=("reader", "secret")
                           ).status == 403
    assert rawhttp.request("127.0.0.1", port, "PUT", "/api/index/auth1", body, auth=ADMIN).status == 200
    query = json.dumps({"query": {"match_all": None}}).encode()
    assert rawhttp.request("127.0.0.1", port, "POST", "/api/index/auth1/query", query, auth=("reader", "secret")
                           ).status == 200
    assert rawhttp.request("127.0.0.1", port, "POST", "/api/index/auth1/query", query, auth=("reader", "nope")
                           ).status == 401


def test_a_query_over_http_streams_the_hits_and_errors_have_the_server_shape(http_cluster):
    port = _fts(http_cluster)
    assert rawhttp.request("127.0.0.1", port, "PUT", "/api/index/stream1",
                           json.dumps({"sourceName": "default"}).encode(), auth=ADMIN).status == 200
    reply = rawhttp.post_json("127.0.0.1", port, "/api/index/stream1/query",
                              {"query": {"match_all": None}, "size": 3}, ADMIN)
    assert reply.status == 200 and reply.chunked
    doc = reply.json()
    assert list(doc) == ["status", "request", "hits", "total_hits", "max_score", "took", "facets"]
    bad = rawhttp.post_json("127.0.0.1", port, "/api/index/stream1/query", {"query": {"bogus": True}}, ADMIN)
    assert bad.status == 400
    assert bad.json()["status"] == "fail" and "unknown query type" in bad.json()["error"]
    assert bad.json()["request"] == {"query": {"bogus": True}}
    junk = rawhttp.request("127.0.0.1", port, "POST", "/api/index/stream1/query", b"{not json", auth=ADMIN)
    assert junk.status == 400 and "unmarshal" in junk.json()["error"]


def test_consistency_waits_for_the_vectors_then_times_out_with_412(http_cluster):
    port = _fts(http_cluster)
    assert rawhttp.request("127.0.0.1", port, "PUT", "/api/index/cons1",
                           json.dumps({"sourceName": "default"}).encode(), auth=ADMIN).status == 200
    far = {"query": {"match_all": None}, "ctl": {"timeout": 200, "consistency": {
        "level": "at_plus", "vectors": {"cons1": {"3/1234": 10 ** 9}}}}}
    reply = rawhttp.post_json("127.0.0.1", port, "/api/index/cons1/query", far, ADMIN)
    assert reply.status == 412
    body = reply.json()
    assert body["status"] == "fail" and "ErrorConsistencyWait" in body["error"]
    assert body["startEndSeqs"]["3"][1] == 10 ** 9
    # vectors of another index are not this one's business; seqno 0 is always reached
    fine = dict(far, ctl={"consistency": {"level": "at_plus", "vectors": {"other": {"3/1": 10 ** 9},
                                                                          "cons1": {"3/1": 0}}}})
    assert rawhttp.post_json("127.0.0.1", port, "/api/index/cons1/query", fine, ADMIN).status == 200


def test_the_service_object_is_one_per_cluster(http_cluster):
    services = http_cluster._thread_mock.call(lambda app: (fts_service(app), fts_service(app)))
    assert services[0] is services[1]


def test_the_index_lag_control_delays_indexing_until_cleared(http_cluster):
    port = _fts(http_cluster)
    assert rawhttp.request("127.0.0.1", port, "PUT", "/api/index/lag1",
                           json.dumps({"sourceName": "default"}).encode(), auth=ADMIN).status == 200
    http_cluster.fts_index_lag(3600)
    kv = ClusterClients(http_cluster.kv_ports("default"), "default")
    kv.load_map()
    try:
        client, vb = kv.active(b"lagged")
        reply = client.request(0x01, b"lagged", extras=b"\x02\x00\x00\x00\x00\x00\x00\x00",
                               value=b'{"w": "lagword"}', vbucket=vb)  # SET
        assert reply.status == 0
    finally:
        kv.close()
    query = {"query": {"match": "lagword"}}
    assert rawhttp.post_json("127.0.0.1", port, "/api/index/lag1/query", query, ADMIN).json()["total_hits"] == 0
    http_cluster.clear_faults()  # the lag goes with the other faults
    assert rawhttp.post_json("127.0.0.1", port, "/api/index/lag1/query", query, ADMIN).json()["total_hits"] == 1

"""bucket.search end to end, in every flavour (blocking and gevent iterate a
SearchRequest; the AsyncBucket pushes hits to an AsyncSearchRequest),
against the emulator's search service running in this process, with data
loaded through the client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, List, Optional, Tuple

import gevent
import pytest

import couchbase_core.fulltext as FT
from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.asynchronous.fulltext import AsyncSearchRequest
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import CouchbaseError, HTTPError, TimeoutError
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.mock import MockCluster
from couchbase_core.mock import httpd as mock_httpd
from couchbase_core.n1ql import MutationState
from couchbase_core.views.iterator import AlreadyQueriedError
from gcouchbase.bucket import Bucket as GBucket
from gcouchbase.bucket import GSearchRequest
from tests.mock import rawhttp

ADMIN = {"username": "Administrator", "password": "password"}
FLAVOURS = ["blocking", "gevent", "async"]
#: enough hits that a response takes many reads and batches
MANY = 2500

BEERS = {
    "pale": {"type": "beer", "name": "Pale Ale", "abv": 5.2, "style": "pale ale",
             "desc": "a crisp pale ale with citrus hops"},
    "stout": {"type": "beer", "name": "Imperial Stout", "abv": 9.5, "style": "stout",
              "desc": "dark roasty stout, never pale"},
    "ipa": {"type": "beer", "name": "West Coast IPA", "abv": 6.8, "style": "pale ale",
            "desc": "hoppy india pale ale, pale and bitter, pale"},
    "lager": {"type": "beer", "name": "Helles Lager", "abv": 4.9, "style": "lager", "desc": "clean malty lager"},
}


def put_index(mock: MockCluster, name: str) -> None:
    port = mock.info["nodes"][0]["ports"]["fts"]
    reply = rawhttp.request("127.0.0.1", port, "PUT", "/api/index/" + name,
                            json.dumps({"type": "fulltext-index", "sourceName": "default"}).encode(),
                            {"Content-Type": "application/json"}, (ADMIN["username"], ADMIN["password"]))
    assert reply.status == 200, reply.body


def set_lag(mock: MockCluster, seconds: float) -> None:
    mock.fts_index_lag(seconds)


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=2, replicas=0, in_process=True) as mock:
        put_index(mock, "beers")
        put_index(mock, "many")
        b = Bucket(mock.connstr_for("default"), operation_timeout=30, **ADMIN)
        try:
            b.upsert_multi(BEERS)
            b.upsert_multi({"many:%04d" % i: {"type": "many", "n": i} for i in range(MANY)})
        finally:
            b.close()
        yield mock


class Recording(AsyncSearchRequest):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows: List[Any] = []
        self.outcome: Optional[Tuple[str, Any]] = None
        self.endings = 0

    def on_rows(self, rows: List[Any]) -> None:
        self.rows.extend(rows)

    def on_error(self, ex: BaseException) -> None:
        self.outcome = ("error", ex)
        self.endings += 1

    def on_done(self) -> None:
        self.outcome = ("done", None)
        self.endings += 1


class Flavour:
    """A bucket of one flavour; ``run(index, query, **params)`` returns
    (hits, the request, the exception or None)."""

    def __init__(self, kind: str, connstr: str) -> None:
        self.kind = kind
        connstr += "?fetch_mutation_tokens=true"
        if kind == "blocking":
            self.bucket: Any = Bucket(connstr, operation_timeout=30, **ADMIN)
        elif kind == "gevent":
            self.bucket = GBucket(connstr, operation_timeout=30, **ADMIN)
        else:
            self.iops = SelectIOPS()
            self.bucket = AsyncBucket(self.iops, connstr, **ADMIN)
            connected: List[Any] = []
            self.bucket.on_connect(connected.append)
            self.loop_until(lambda: connected)
            assert connected == [None]

    def loop_until(self, done: Callable[[], Any], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the loop never got there"
            self.iops.run_once(0.02)

    def upsert(self, key: str, value: Any) -> Any:
        if self.kind != "async":
            return self.bucket.upsert(key, value)
        res = self.bucket.upsert(key, value)
        done: List[Any] = []
        res.callback = done.append
        res.errback = lambda r, *exc: done.append(exc)
        self.loop_until(lambda: done)
        return done[0]

    def run(self, index: str, query: Any, *args: Any, **params: Any) -> Tuple[List[Any], Any,
                                                                             Optional[BaseException]]:
        if self.kind != "async":
            req = self.bucket.search(index, query, *args, **params)
            hits: List[Any] = []
            try:
                with gevent.Timeout(60):
                    for hit in req:
                        hits.append(hit)
            except CouchbaseError as exc:
                return hits, req, exc
            return hits, req, None
        req = self.bucket.search(index, query, *args, itercls=Recording, **params).start()
        self.loop_until(lambda: req.outcome is not None)
        self.iops.run_once(0.05)  # nothing may follow the end
        assert req.endings == 1
        return req.rows, req, req.outcome[1]

    def close(self) -> None:
        self.bucket.close()
        if self.kind == "async":
            self.iops.run_once(0)


@pytest.fixture(params=FLAVOURS)
def flavour(request, cluster):
    made = Flavour(request.param, cluster.connstr_for("default"))
    yield made
    made.close()


# ---------------------------------------------------------------- results


def test_hits_come_best_first_with_their_metadata(flavour):
    hits, req, error = flavour.run("beers", FT.MatchQuery("pale", field="desc"), fields=["name"])
    assert error is None
    # three "pale"s first; then one "pale" in 5 terms before one in 7 (shorter fields weigh more)
    assert [h["id"] for h in hits] == ["ipa", "stout", "pale"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    assert hits[0]["fields"] == {"name": "West Coast IPA"}
    assert req.total_hits == 3 and req.max_score == scores[0]
    assert req.status["successful"] == 1 and isinstance(req.took, int)
    assert req.meta["request"]["query"] == {"match": "pale", "field": "desc"}


def test_paging_limits_the_hits_not_the_total(flavour):
    hits, req, error = flavour.run("many", FT.MatchQuery("many", field="type"), limit=5, skip=10, sort=["n"])
    assert error is None
    assert [h["id"] for h in hits] == ["many:%04d" % i for i in range(10, 15)]
    assert req.total_hits == MANY


def test_facets_and_sort(flavour):
    params = FT.Params(sort=[FT.SortField("abv", desc=True)], facets={
        "styles": FT.TermFacet("style", 2),
        "strength": FT.NumericFacet("abv").add_range("session", max=5).add_range("strong", min=5)})
    hits, req, error = flavour.run("beers", FT.TermQuery("beer", field="type"), params)
    assert error is None
    assert [h["id"] for h in hits] == ["stout", "ipa", "pale", "lager"]
    assert hits[0]["sort"] == ["9.5"]
    assert req.facets["styles"]["terms"] == [{"term": "ale", "count": 2}, {"term": "pale", "count": 2}]
    assert [(r["name"], r["count"]) for r in req.facets["strength"]["numeric_ranges"]] == [("session", 1),
                                                                                           ("strong", 3)]


def test_every_query_kind_reaches_the_service(flavour):
    cases = [
        (FT.QueryStringQuery("+pale -stout"), ["ipa", "pale"]),
        (FT.MatchPhraseQuery("pale ale", field="desc"), ["ipa", "pale"]),
        (FT.PhraseQuery("india", "pale"), ["ipa"]),
        (FT.PrefixQuery("hop"), ["ipa", "pale"]),
        (FT.RegexQuery("ma.*", field="desc"), ["lager"]),
        (FT.WildcardQuery("st?ut"), ["stout"]),
        (FT.NumericRangeQuery(6, 10, field="abv"), ["ipa", "stout"]),
        (FT.TermRangeQuery("h", "j", field="name"), ["ipa", "lager", "stout"]),
        (FT.DocIdQuery(["lager", "nope"]), ["lager"]),
        (FT.DisjunctionQuery(FT.MatchQuery("malty"), FT.MatchQuery("roasty")), ["lager", "stout"]),
        (FT.BooleanQuery(must=FT.MatchQuery("pale"), must_not=FT.MatchQuery("citrus"),
                         should=FT.TermQuery("beer", field="type")), ["ipa", "stout"]),
        ("lager", ["lager"]),  # a string is a query string
    ]
    for query, expected in cases:
        hits, _req, error = flavour.run("beers", query, sort=["_id"])
        assert error is None, (query, error)
        assert [h["id"] for h in hits] == expected, query


# ---------------------------------------------------------------- consistency


def test_consistent_with_a_mutation_token_waits_for_the_index(cluster, flavour):
    set_lag(cluster, 3600)  # the index sees nothing newer than an hour
    try:
        word = "zwickel_" + flavour.kind  # each flavour's own document
        result = flavour.upsert("fresh-" + flavour.kind, {"type": "beer", "name": "Fresh Hop", "desc": word})
        state = MutationState(result)
        assert state
        # without consistency the index answers as it is: not there yet
        hits, _req, error = flavour.run("beers", FT.MatchQuery(word))
        assert (hits, error) == ([], None)
        # with it, the service waits, and gives up after the request's timeout
        params = FT.Params(timeout=0.3)
        params.consistent_with(state)
        hits, _req, error = flavour.run("beers", FT.MatchQuery(word), params)
        assert isinstance(error, FT.SearchError) and error.http_status == 412
        assert "ErrorConsistencyWait" in str(error)
        # once the index can catch up, the same search finds it
        set_lag(cluster, 0.3)
        params = FT.Params(timeout=30)
        params.consistent_with(state)
        hits, req, error = flavour.run("beers", FT.MatchQuery(word), params)
        assert error is None and [h["id"] for h in hits] == ["fresh-" + flavour.kind]
        assert req.meta["request"]["ctl"]["consistency"]["level"] == "at_plus"
    finally:
        set_lag(cluster, 0)


# --------------------------------------------------------------------- errors


def test_service_errors_are_search_errors(flavour):
    hits, _req, error = flavour.run("no_such_index", FT.MatchAllQuery())
    assert hits == [] and isinstance(error, FT.SearchError) and isinstance(error, HTTPError)
    assert error.http_status == 400 and "index not found" in str(error.errors)
    hits, _req, error = flavour.run("beers", FT.RawQuery({"bogus": True}))
    assert hits == [] and isinstance(error, FT.SearchError) and error.http_status == 400
    assert "unknown query type" in str(error)


def test_bad_arguments_raise_before_anything_is_sent(flavour):
    with pytest.raises(FT.SearchArgumentError):
        flavour.bucket.search("beers", FT.ConjunctionQuery())
    with pytest.raises(FT.SearchArgumentError):
        flavour.bucket.search("beers", FT.MatchAllQuery(), no_such_param=1)
    with pytest.raises(FT.SearchArgumentError):
        flavour.bucket.search("beers", FT.MatchAllQuery(), FT.Params(), limit=1)


@pytest.fixture
def service_reply(monkeypatch):
    """Replace the search service's answer: set ``reply[0]`` to an
    ``async (request) -> response`` function."""
    reply: List[Any] = [None]
    original = mock_httpd.Router.dispatch

    async def dispatch(self: Any, request: Any) -> Any:
        if request.path.endswith("/query") and request.path.startswith("/api/index/") and reply[0] is not None:
            return await reply[0](request)
        return await original(self, request)

    monkeypatch.setattr(mock_httpd.Router, "dispatch", dispatch)
    return reply


def test_partial_failures_in_status_raise_after_the_hits(flavour, service_reply):
    async def partial(request: Any) -> Any:
        return mock_httpd.json_response({
            "status": {"total": 2, "failed": 1, "successful": 1, "errors": {"pindex_2": "disk on fire"}},
            "hits": [{"id": "a", "score": 1.0}], "total_hits": 1, "max_score": 1.0, "took": 5, "facets": None})

    service_reply[0] = partial
    hits, req, error = flavour.run("beers", FT.MatchAllQuery())
    assert [h["id"] for h in hits] == ["a"]
    assert isinstance(error, FT.SearchError) and error.errors == {"pindex_2": "disk on fire"}
    assert req.status["failed"] == 1


def test_a_service_that_does_not_answer_times_out(flavour, service_reply):
    async def silent(request: Any) -> Any:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    service_reply[0] = silent
    # the client's deadline (the request's timeout plus a grace) ends it,
    # long before the silent service would
    hits, _req, error = flavour.run("beers", FT.MatchAllQuery(), timeout=0.2)
    assert hits == [] and isinstance(error, TimeoutError)


# ------------------------------------------------------------------ iteration


def test_a_request_is_iterated_once_and_meta_waits_for_the_end(cluster):
    b = Bucket(cluster.connstr_for("default"), **ADMIN)
    try:
        req = b.search("beers", FT.MatchAllQuery())
        with pytest.raises(RuntimeError):
            _ = req.meta
        hits = list(req)
        assert len(hits) == 10 and req.total_hits >= MANY + len(BEERS)  # the service's default size: 10
        with pytest.raises(AlreadyQueriedError):
            list(req)
        two = FT.DocIdQuery(["stout", "lager"])
        assert b.search("beers", two, row_factory=lambda h: h["id"]).execute().rows_returned == 2
        assert list(b.search("beers", two, row_factory=lambda h: h["id"], sort=["_id"])) == ["lager", "stout"]
    finally:
        b.close()


def test_search_finds_the_service_on_every_node_of_the_config(cluster):
    b = Bucket(cluster.connstr_for("default"), **ADMIN)
    try:
        endpoints = sorted(b._engine.config.service_endpoints("fts"))
        assert endpoints == sorted(("127.0.0.1", n["ports"]["fts"]) for n in cluster.info["nodes"])
    finally:
        b.close()


def test_a_greenlet_killed_mid_stream_leaves_the_bucket_usable(cluster):
    b = GBucket(cluster.connstr_for("default"), operation_timeout=30, **ADMIN)
    try:
        got: List[Any] = []

        def consume() -> None:
            for hit in b.search("many", FT.MatchQuery("many", field="type"), limit=MANY, sort=["n"]):
                got.append(hit)
                gevent.sleep(0.001)  # a slow reader: the response is still arriving

        reader = gevent.spawn(consume)
        with gevent.Timeout(60):
            while not got:
                gevent.sleep(0.005)
        reader.kill()
        assert reader.dead and 0 < len(got) < MANY
        # the bucket goes on: KV and another full search
        b.upsert("after-kill", {"ok": True})
        assert b.get("after-kill").value == {"ok": True}
        with gevent.Timeout(60):
            req = b.search("many", FT.MatchQuery("many", field="type"), limit=MANY, sort=["n"])
            ids = [h["id"] for h in req]
        assert ids == ["many:%04d" % i for i in range(MANY)] and req.total_hits == MANY
        assert isinstance(req, GSearchRequest)
        # many greenlets share it
        jobs = [gevent.spawn(lambda: len(list(b.search("beers", FT.MatchAllQuery())))) for _ in range(5)]
        gevent.joinall(jobs, timeout=60)
        assert all(job.value and job.value >= 4 for job in jobs)
    finally:
        b.close()


def test_the_async_flavour_needs_an_async_request_class(cluster):
    iops = SelectIOPS()
    b = AsyncBucket(iops, cluster.connstr_for("default"), **ADMIN)
    try:
        with pytest.raises(CouchbaseError):
            b.search("beers", FT.MatchAllQuery(), itercls=FT.SearchRequest)
        req = b.search("beers", FT.MatchAllQuery())
        assert isinstance(req, AsyncSearchRequest)
        with pytest.raises(TypeError):
            iter(req)
    finally:
        b.close()
        iops.run_once(0)


def test_a_failing_on_rows_handler_ends_the_request_with_its_error(cluster):
    flavour = Flavour("async", cluster.connstr_for("default"))
    try:
        class Exploding(Recording):
            def on_rows(self, rows: List[Any]) -> None:
                raise ValueError("handler bug")

        req = flavour.bucket.search("many", FT.MatchAllQuery(), itercls=Exploding, limit=100).start()
        flavour.loop_until(lambda: req.outcome is not None)
        flavour.iops.run_once(0.05)
        assert req.endings == 1 and isinstance(req.outcome[1], ValueError)
    finally:
        flavour.close()


def test_params_accepts_a_dict_of_facets_and_returns_empty_facets_when_none(flavour):
    _hits, req, error = flavour.run("beers", FT.MatchAllQuery(), limit=1)
    assert error is None and req.facets == {}
    _hits, req, error = flavour.run("beers", FT.MatchAllQuery(), limit=0,
                                    facets={"t": FT.TermFacet("type", 1)})
    assert error is None and req.facets["t"]["terms"][0]["term"] in ("beer", "many")
    assert req.facets["t"]["total"] >= MANY



def test_search_over_tls_goes_to_the_tls_port_of_the_service():
    with MockCluster(nodes=1, replicas=0, tls=True, in_process=True) as tls_cluster:
        ports = tls_cluster.info["nodes"][0]["ports"]
        assert "ftsSSL" in ports and ports["ftsSSL"] != ports["fts"]
        put_index(tls_cluster, "secure")
        connstr = "%s/default?certpath=%s" % (tls_cluster.info["connstr_tls"], tls_cluster.ca_cert)
        b = Bucket(connstr, operation_timeout=30, **ADMIN)
        try:
            assert b._engine.config.service_endpoints("fts", True) == [("127.0.0.1", ports["ftsSSL"])]
            b.upsert("tls-doc", {"w": "encrypted words"})
            hits = list(b.search("secure", FT.MatchQuery("encrypted")))
            assert [h["id"] for h in hits] == ["tls-doc"]
        finally:
            b.close()

"""The emulator's analytics service (couchbase_core.mock.analytics).

First the service in memory over fake buckets (statements, link semantics,
parameters, the reply's shape, errors, deferred handles), then over HTTP on
a running emulator (:mod:`.rawhttp`): the ``cbas`` port in the config,
JSON and form bodies, credentials, deferred handles, bucket data written
through KV.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from couchbase_core.mock import MockCluster
from couchbase_core.mock.analytics import MAX_DEFERRED, AnalyticsService, split_statements
from tests.mock import rawhttp
from tests.mock.test_http_services import KV

HOST = "127.0.0.1"
ADMIN = ("Administrator", "password")
BASE = "http://127.0.0.1:8095"


class FakeBucket:
    """A bucket as a dict of id -> JSON value (bytes: a binary document)."""

    def __init__(self, name: str, docs: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.docs: Dict[str, Any] = dict(docs or {})

    def scan(self) -> Iterator[Tuple[str, Any, dict]]:
        for key, value in list(self.docs.items()):
            binary = isinstance(value, bytes)
            yield key, None if binary else value, {"id": key, "cas": 1, "flags": 0, "expiration": 0,
                                                    "type": "base64" if binary else "json"}

    def get(self, doc_id: str) -> Optional[Tuple[Any, dict]]:
        for key, value, meta in self.scan():
            if key == doc_id:
                return value, meta
        return None

    def mutation_count(self) -> int:
        return 0


def beers() -> FakeBucket:
    docs: Dict[str, Any] = {"beer:%02d" % i: {"type": "beer", "name": "b%02d" % i, "abv": i} for i in range(10)}
    docs.update({"brewery:%d" % i: {"type": "brewery", "name": "w%d" % i} for i in range(3)})
    docs["blob"] = b"\x00\x01"
    return FakeBucket("beer-sample", docs)


@pytest.fixture
def bucket() -> FakeBucket:
    return beers()


@pytest.fixture
def service(bucket: FakeBucket) -> AnalyticsService:
    return AnalyticsService(lambda: {bucket.name: bucket})


def run(service: AnalyticsService, statement: str, **fields: Any) -> Tuple[int, Dict[str, Any]]:
    fields["statement"] = statement
    status, chunks = service.execute(fields, BASE)
    parts = list(chunks)
    assert all(isinstance(p, bytes) for p in parts)
    return status, json.loads(b"".join(parts))


def ok(service: AnalyticsService, statement: str, **fields: Any) -> Dict[str, Any]:
    status, body = run(service, statement, **fields)
    assert status == 200 and body["status"] == "success", body
    return body


def rows(service: AnalyticsService, statement: str, **fields: Any) -> List[Any]:
    return ok(service, statement, **fields)["results"]


def error(service: AnalyticsService, statement: str, **fields: Any) -> Tuple[int, int, str]:
    status, body = run(service, statement, **fields)
    assert body["status"] == "fatal" and "results" not in body, body
    assert body["metrics"]["errorCount"] == 1
    return status, body["errors"][0]["code"], body["errors"][0]["msg"]


def setup_beers(service: AnalyticsService) -> None:
    ok(service, 'CREATE DATASET beers ON `beer-sample` WHERE `type` = "beer";')
    ok(service, "CREATE DATASET everything ON `beer-sample`")
    ok(service, "CONNECT LINK Local")


# ---------------------------------------------------------------------------
# datasets and the link


def test_a_dataset_is_empty_until_the_link_connects(service: AnalyticsService) -> None:
    ok(service, "CREATE DATASET beers ON `beer-sample` WHERE `type` = 'beer'")
    assert rows(service, "SELECT VALUE b.name FROM beers b") == []
    ok(service, "CONNECT LINK Local")
    assert rows(service, "SELECT VALUE b.name FROM beers b ORDER BY b.name") == ["b%02d" % i for i in range(10)]


def test_a_dataset_without_where_holds_every_json_document(service: AnalyticsService) -> None:
    setup_beers(service)
    # the binary document is not ingested
    assert rows(service, "SELECT COUNT(*) AS n FROM everything") == [{"n": 13}]


def test_disconnecting_keeps_what_the_datasets_hold(service: AnalyticsService, bucket: FakeBucket) -> None:
    setup_beers(service)
    ok(service, "DISCONNECT LINK Local")
    bucket.docs["beer:99"] = {"type": "beer", "name": "late", "abv": 99}
    del bucket.docs["beer:00"]
    names = rows(service, "SELECT VALUE b.name FROM beers b ORDER BY b.name")
    assert names == ["b%02d" % i for i in range(10)]
    ok(service, "CONNECT LINK Default.Local")
    names = rows(service, "SELECT VALUE b.name FROM beers b ORDER BY b.name")
    assert names == ["b%02d" % i for i in range(1, 10)] + ["late"]


def test_a_connected_dataset_follows_the_bucket(service: AnalyticsService, bucket: FakeBucket) -> None:
    setup_beers(service)
    bucket.docs["beer:50"] = {"type": "beer", "name": "new", "abv": 50}
    assert rows(service, "SELECT VALUE b.name FROM beers b WHERE b.abv > 9") == ["new"]


def test_if_not_exists_and_if_exists(service: AnalyticsService) -> None:
    ok(service, "CREATE DATASET d ON `beer-sample`")
    ok(service, "CREATE DATASET IF NOT EXISTS d ON `beer-sample`")
    assert error(service, "CREATE DATASET d ON `beer-sample`") == (
        400, 24040, "A dataset with name d already exists in dataverse Default")
    ok(service, "DROP DATASET d")
    assert error(service, "DROP DATASET d") == (400, 24025, "Cannot find dataset with name d in dataverse Default")
    ok(service, "DROP DATASET d IF EXISTS")
    ok(service, "DROP DATASET IF EXISTS Default.d")
    assert service.datasets == {}


def test_dropped_dataset_is_not_found(service: AnalyticsService) -> None:
    setup_beers(service)
    ok(service, "DROP DATASET beers")
    status, code, msg = error(service, "SELECT * FROM beers")
    assert (status, code) == (400, 24045)
    assert msg == "Cannot find dataset beers in dataverse Default nor an alias with name beers!"


def test_create_dataset_on_a_missing_bucket(service: AnalyticsService) -> None:
    status, code, msg = error(service, "CREATE DATASET d ON nobucket")
    assert (status, code, msg) == (400, 24055, "Bucket (nobucket) does not exist")
    assert "d" not in service.datasets


def test_create_dataset_with_a_bad_condition(service: AnalyticsService) -> None:
    assert error(service, "CREATE DATASET d ON `beer-sample` WHERE type = = 1")[:2] == (400, 24000)
    assert "d" not in service.datasets


def test_indexes_are_recorded(service: AnalyticsService) -> None:
    setup_beers(service)
    ok(service, "CREATE INDEX by_abv ON beers(abv: bigint)")
    ok(service, "CREATE INDEX by_abv IF NOT EXISTS ON beers(abv: bigint)")
    assert error(service, "CREATE INDEX by_abv ON beers(abv: bigint)")[1] == 24048
    assert error(service, "CREATE INDEX i ON nothere(x: string)")[1] == 24045
    ok(service, "DROP INDEX beers.by_abv")
    assert error(service, "DROP INDEX beers.by_abv")[1] == 24047
    ok(service, "DROP INDEX beers.by_abv IF EXISTS")


def test_ddl_answers_without_results(service: AnalyticsService) -> None:
    body = ok(service, "CREATE DATASET d ON `beer-sample`")
    assert "results" not in body
    assert body["metrics"]["resultCount"] == 0


# ---------------------------------------------------------------------------
# SELECT: parameters, shape


def test_positional_parameters(service: AnalyticsService) -> None:
    setup_beers(service)
    q = "SELECT VALUE b.name FROM beers b WHERE b.abv >= ? AND b.abv < ? ORDER BY b.abv"
    assert rows(service, q, args=[3, 5]) == ["b03", "b04"]
    q = "SELECT VALUE b.name FROM beers b WHERE b.abv = $2 OR b.abv = $1 ORDER BY b.abv"
    assert rows(service, q, args=[7, 1]) == ["b01", "b07"]


def test_named_parameters(service: AnalyticsService) -> None:
    setup_beers(service)
    q = "SELECT b.name FROM beers b WHERE b.name IN $names ORDER BY b.name"
    assert rows(service, q, **{"$names": ["b02", "b09", "zz"]}) == [{"name": "b02"}, {"name": "b09"}]


def test_a_missing_parameter_is_an_error(service: AnalyticsService) -> None:
    setup_beers(service)
    status, code, msg = error(service, "SELECT VALUE b FROM beers b WHERE b.abv = $nope")
    assert (status, code) == (400, 24000) and "nope" in msg


def test_reply_shape(service: AnalyticsService) -> None:
    setup_beers(service)
    body = ok(service, "SELECT b.name, b.abv FROM beers b WHERE b.abv < 2 ORDER BY b.abv",
              client_context_id="ctx-1")
    assert body["clientContextID"] == "ctx-1"
    assert body["signature"] == {"*": "*"}
    assert body["results"] == [{"name": "b00", "abv": 0}, {"name": "b01", "abv": 1}]
    assert isinstance(body["requestID"], str) and body["requestID"]
    metrics = body["metrics"]
    assert metrics["resultCount"] == 2
    assert metrics["resultSize"] == sum(len(json.dumps(r, separators=(",", ":"))) for r in body["results"])
    assert metrics["processedObjects"] == 10
    assert metrics["elapsedTime"].endswith("s")
    assert list(body)[-2:] == ["status", "metrics"]


def test_pretty_reply_is_the_same_json(service: AnalyticsService) -> None:
    setup_beers(service)
    compact = ok(service, "SELECT VALUE b.abv FROM beers b ORDER BY b.abv")
    pretty = ok(service, "SELECT VALUE b.abv FROM beers b ORDER BY b.abv", pretty=True)
    assert pretty["results"] == compact["results"] == list(range(10))


def test_many_rows_come_in_several_chunks(service: AnalyticsService, bucket: FakeBucket) -> None:
    for i in range(1000):
        bucket.docs["x:%04d" % i] = {"type": "x", "i": i}
    ok(service, "CREATE DATASET xs ON `beer-sample` WHERE `type` = 'x'; CONNECT LINK Local;")
    status, chunks = service.execute({"statement": "SELECT VALUE x.i FROM xs x ORDER BY x.i"}, BASE)
    parts = list(chunks)
    assert status == 200 and len(parts) >= 4
    assert json.loads(b"".join(parts))["results"] == list(range(1000))


def test_several_statements_answer_the_last(service: AnalyticsService) -> None:
    body = ok(service, "CREATE DATASET d ON `beer-sample` WHERE `type` = 'brewery'; CONNECT LINK Local;"
                       "SELECT VALUE w.name FROM d w ORDER BY w.name;")
    assert body["results"] == ["w0", "w1", "w2"]


def test_statement_splitting_respects_quotes_and_comments() -> None:
    assert split_statements("SELECT 'a;b'; -- c;d\nSELECT `x;y` /* ; */ FROM z;;") == [
        "SELECT 'a;b'", "SELECT `x;y`   FROM z"]


# ---------------------------------------------------------------------------
# errors


def test_syntax_error(service: AnalyticsService) -> None:
    status, code, msg = error(service, "SELEC 1")
    assert (status, code) == (400, 24000) and msg.startswith("Syntax error")
    status, code, msg = error(service, "SELECT FROM WHERE")
    assert (status, code) == (400, 24000) and msg.startswith("Syntax error")


def test_n1ql_only_statements_are_syntax_errors(service: AnalyticsService) -> None:
    for statement in ("CREATE PRIMARY INDEX ON `beer-sample`", "UPSERT INTO x VALUES (1, 2)", "PREPARE SELECT 1"):
        assert error(service, statement)[:2] == (400, 24000)


def test_missing_statement_and_bad_fields(service: AnalyticsService) -> None:
    status, chunks = service.execute({}, BASE)
    body = json.loads(b"".join(chunks))
    assert (status, body["errors"][0]["code"]) == (400, 21003)
    assert error(service, "SELECT 1", args="not a list")[1] == 24000
    assert error(service, "SELECT 1", timeout="ten seconds")[1] == 24000
    assert error(service, "SELECT 1", mode="later")[1] == 24000
    assert error(service, "SELECT 1", scan_consistency="at_plus")[1] == 24000


def test_readonly_refuses_ddl(service: AnalyticsService) -> None:
    assert error(service, "CREATE DATASET d ON `beer-sample`", readonly=True)[:2] == (400, 20001)
    assert rows(service, "SELECT VALUE 1", readonly=True) == [1]


def test_unknown_fields_are_ignored(service: AnalyticsService) -> None:
    assert rows(service, "SELECT VALUE 2", **{"plan-format": "JSON", "max-warnings": 3}) == [2]


# ---------------------------------------------------------------------------
# deferred queries


def test_deferred_query_handle_status_and_result(service: AnalyticsService) -> None:
    setup_beers(service)
    status, body = run(service, "SELECT VALUE b.abv FROM beers b ORDER BY b.abv", mode="async")
    assert status == 200 and body["status"] == "running" and "results" not in body
    handle = body["handle"]
    assert handle.startswith(BASE + "/analytics/service/status/")
    job = handle.rsplit("/", 1)[1]
    assert service.deferred_status(job, BASE) == {"status": "running"}
    done = service.deferred_status(job, BASE)
    assert done == {"status": "success", "handle": BASE + "/analytics/service/result/" + job}
    assert service.deferred_result(job) == list(range(10))
    assert service.deferred_status("0" * 32, BASE) is None
    assert service.deferred_result("0" * 32) is None


def test_deferred_results_are_bounded(service: AnalyticsService) -> None:
    handles = []
    for _ in range(MAX_DEFERRED + 5):
        handles.append(run(service, "SELECT VALUE 1", mode="async")[1]["handle"].rsplit("/", 1)[1])
    assert service.deferred_result(handles[0]) is None
    assert service.deferred_result(handles[-1]) == [1]


def test_deferred_errors_answer_at_once(service: AnalyticsService) -> None:
    assert error(service, "SELECT * FROM nothing_here", mode="async")[:2] == (400, 24045)


# ---------------------------------------------------------------------------
# over HTTP on a running emulator


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=2, buckets=["default", "other"], users=["reader:rpw:data_reader[default]"]) as running:
        kv = KV(running)
        try:
            for i in range(20):
                kv.set(b"doc:%02d" % i, json.dumps({"kind": "even" if i % 2 == 0 else "odd", "i": i}).encode())
        finally:
            kv.close()
        yield running


def analytics_ports(cluster: MockCluster) -> List[int]:
    return [n["ports"]["cbas"] for n in cluster.refresh()["nodes"]]


def post(cluster: MockCluster, fields: Dict[str, Any], node: int = 0,
         auth: Optional[Tuple[str, str]] = ADMIN) -> rawhttp.Response:
    return rawhttp.post_json(HOST, analytics_ports(cluster)[node], "/analytics/service", fields, auth)


def test_every_node_offers_cbas_in_the_config(cluster: MockCluster) -> None:
    mgmt = cluster.info["http_port"]
    config = rawhttp.request(HOST, mgmt, "GET", "/pools/default/b/default", auth=ADMIN).json()
    ports = [ext["services"].get("cbas") for ext in config["nodesExt"]]
    assert ports == analytics_ports(cluster) and all(ports)
    full = rawhttp.request(HOST, mgmt, "GET", "/pools/default/buckets/default", auth=ADMIN).json()
    assert all("cbas" in node["services"] for node in full["nodes"])
    assert cluster.info["analytics_port"] == ports[0]


def test_over_http_with_data_written_through_kv(cluster: MockCluster) -> None:
    assert post(cluster, {"statement": "CREATE DATASET IF NOT EXISTS evens ON `default` WHERE kind = 'even'"}
                ).status == 200
    assert post(cluster, {"statement": "CONNECT LINK Local"}).status == 200
    # the catalogue is the cluster's: the other node sees the dataset
    res = post(cluster, {"statement": "SELECT VALUE d.i FROM evens d WHERE d.i > ? ORDER BY d.i",
                         "args": [10]}, node=1)
    assert res.status == 200 and res.chunked
    assert res.json()["results"] == [12, 14, 16, 18]


def test_form_body_and_query_path(cluster: MockCluster) -> None:
    port = analytics_ports(cluster)[0]
    res = rawhttp.post_form(HOST, port, "/query/service", {"statement": "SELECT VALUE $x", "$x": "[1,2]"}, ADMIN)
    assert res.status == 200 and res.json()["results"] == [[1, 2]]


def test_errors_over_http(cluster: MockCluster) -> None:
    res = post(cluster, {"statement": "SELECT * FROM no_such_dataset"})
    assert res.status == 400
    assert res.json()["errors"][0]["code"] == 24045
    res = post(cluster, {"statement": "SELEC 1"})
    assert (res.status, res.json()["errors"][0]["code"]) == (400, 24000)


def test_credentials(cluster: MockCluster) -> None:
    assert post(cluster, {"statement": "SELECT VALUE 1"}, auth=("Administrator", "wrong")).status == 401
    assert post(cluster, {"statement": "SELECT VALUE 1"}, auth=("reader", "rpw")).json()["results"] == [1]


def test_deferred_over_http(cluster: MockCluster) -> None:
    body = post(cluster, {"statement": "SELECT VALUE 7", "mode": "async"}).json()
    path = body["handle"].split(":%d" % analytics_ports(cluster)[0], 1)[1]
    port = analytics_ports(cluster)[0]
    assert rawhttp.request(HOST, port, "GET", path, auth=ADMIN).json() == {"status": "running"}
    done = rawhttp.request(HOST, port, "GET", path, auth=ADMIN).json()
    assert done["status"] == "success"
    result_path = done["handle"].split(":%d" % port, 1)[1]
    assert rawhttp.request(HOST, port, "GET", result_path, auth=ADMIN).json() == [7]
    assert rawhttp.request(HOST, port, "GET", "/analytics/service/result/" + "0" * 32, auth=ADMIN).status == 404

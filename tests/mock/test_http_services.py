"""The emulator's HTTP services over raw HTTP/1.1 (:mod:`.rawhttp`):
management REST (8091-like), views and design documents (8092-like) and
N1QL (8093-like), as spec/http-services.md and spec/cluster-config.md
describe them. Documents are written with the raw KV client."""

from __future__ import annotations

import json
import struct
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote, urlencode

import pytest

from couchbase_core.mock import MockCluster
from tests.mock import rawhttp
from tests.mock.rawclient import RawClient
from tests.mock.scram import handshake

HOST = "127.0.0.1"
ADMIN = ("Administrator", "password")
READER = ("reader", "rpw")  # data_reader[default]
OWNER = ("owner", "opw")  # bucket_full_access[default]
SECURED = ("secured", "pw")  # legacy login: bucket name and bucket password
NUM_DOCS = 20


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=2, buckets=["default", "secured:couchbase:pw", "mc:memcached"],
                     users=["reader:rpw:data_reader[default]", "owner:opw:bucket_full_access[default]"]) as running:
        yield running


class KV:
    """Raw KV access to one bucket, routed by its CCCP config."""

    def __init__(self, cluster: MockCluster, bucket: str = "default") -> None:
        node_ports = cluster.refresh()["kv_ports"][bucket]
        self.clients = [handshake(HOST, p, ADMIN[0], ADMIN[1], bucket) for p in node_ports]
        config = json.loads(self.clients[0].request(0xB5).value.replace(b"$HOST", HOST.encode()))
        ports = [int(s.rsplit(":", 1)[1]) for s in config["vBucketServerMap"]["serverList"]]
        self.by_server = [self.clients[node_ports.index(p)] for p in ports]
        self.vbmap = config["vBucketServerMap"]["vBucketMap"]

    def route(self, key: bytes) -> Tuple[RawClient, int]:
        vb = ((zlib.crc32(key) >> 16) & 0x7FFF) % len(self.vbmap)
        return self.by_server[self.vbmap[vb][0]], vb

    def set(self, key: bytes, value: bytes) -> None:
        client, vb = self.route(key)
        assert client.request(0x01, key, struct.pack(">II", 0, 0), value, vbucket=vb).status == 0

    def get(self, key: bytes) -> int:
        client, vb = self.route(key)
        return client.request(0x00, key, vbucket=vb).status

    def close(self) -> None:
        for client in self.clients:
            client.close()


def doc_id(i: int) -> str:
    return "view::%02d" % i


@pytest.fixture(scope="module")
def docs(cluster: MockCluster) -> Dict[str, Any]:
    kv = KV(cluster)
    try:
        out = {}
        for i in range(NUM_DOCS):
            doc = {"type": "view", "n": i, "g": i % 3, "name": "n%02d" % i}
            kv.set(doc_id(i).encode(), json.dumps(doc).encode())
            out[doc_id(i)] = doc
        kv.set(b"not-json", b"\x00binary")
        return out
    finally:
        kv.close()


def mgmt(cluster: MockCluster, method: str, path: str, auth: Optional[Tuple[str, str]] = ADMIN,
         form: Optional[Dict[str, Any]] = None) -> rawhttp.Response:
    if form is not None:
        return rawhttp.post_form(HOST, cluster.http_port, path, form, auth, method=method)
    return rawhttp.request(HOST, cluster.http_port, method, path, auth=auth)


# ====================================================== management (8091)


def test_pools(cluster: MockCluster) -> None:
    anonymous = mgmt(cluster, "GET", "/pools", auth=None)
    assert anonymous.status == 200
    body = anonymous.json()
    assert body["implementationVersion"] and body["isAdminCreds"] is False
    assert body["pools"][0]["name"] == "default" and body["pools"][0]["uri"].startswith("/pools/default")
    assert mgmt(cluster, "GET", "/pools").json()["isAdminCreds"] is True


def test_pools_default(cluster: MockCluster) -> None:
    reply = mgmt(cluster, "GET", "/pools/default")
    assert reply.status == 200
    body = reply.json()
    assert len(body["nodes"]) == 2 and all(n["status"] == "healthy" for n in body["nodes"])
    assert sorted(n["ports"]["direct"] for n in body["nodes"]) == sorted(cluster.kv_ports())
    assert body["buckets"]["uri"].startswith("/pools/default/buckets")
    assert len(body["nodesExt"]) == 2
    assert mgmt(cluster, "GET", "/pools/default", auth=("Administrator", "nope")).status == 401
    assert mgmt(cluster, "GET", "/pools/default", auth=READER).status == 200


def test_bucket_list_depends_on_who_asks(cluster: MockCluster) -> None:
    everything = mgmt(cluster, "GET", "/pools/default/buckets").json()
    by_name = {b["name"]: b for b in everything}
    assert {"default", "secured", "mc"} <= set(by_name)
    assert by_name["default"]["bucketType"] == "membase" and by_name["mc"]["bucketType"] == "memcached"
    assert by_name["mc"]["nodeLocator"] == "ketama" and "vBucketServerMap" not in by_name["mc"]
    assert all("couchApiBase" in n for n in by_name["default"]["nodes"])
    assert [b["name"] for b in mgmt(cluster, "GET", "/pools/default/buckets", auth=READER).json()] == ["default"]
    legacy = mgmt(cluster, "GET", "/pools/default/buckets", auth=SECURED).json()
    assert "secured" in [b["name"] for b in legacy] and "mc" not in [b["name"] for b in legacy]
    assert mgmt(cluster, "GET", "/pools/default/buckets", auth=("reader", "wrong")).status == 401


def test_bucket_info(cluster: MockCluster, docs: Dict[str, Any]) -> None:
    reply = mgmt(cluster, "GET", "/pools/default/buckets/default")
    assert reply.status == 200
    body = reply.json()
    assert body["name"] == "default" and body["replicaNumber"] == 1 and body["quota"]["ram"] > 0
    assert body["basicStats"]["itemCount"] == NUM_DOCS + 1
    assert body["controllers"]["flush"].endswith("/controller/doFlush")
    assert body["streamingUri"].startswith("/pools/default/bucketsStreaming/default")
    assert "$HOST" not in reply.body.decode()  # the full form names every host
    assert mgmt(cluster, "GET", "/pools/default/buckets/nope").status == 404
    assert mgmt(cluster, "GET", "/pools/default/buckets/secured", auth=None).status == 401
    stats = mgmt(cluster, "GET", "/pools/default/buckets/default/stats").json()
    assert stats["op"]["samples"]["curr_items"][-1] == NUM_DOCS + 1


def test_terse_config_matches_cccp(cluster: MockCluster) -> None:
    terse = mgmt(cluster, "GET", "/pools/default/b/default")
    assert terse.status == 200 and b"$HOST" in terse.body
    config = terse.json()
    client = handshake(HOST, cluster.kv_ports()[0], ADMIN[0], ADMIN[1], "default")
    try:
        cccp = json.loads(client.request(0xB5).value)
    finally:
        client.close()
    # Node 0 serves both: same text (both name node 0 $HOST).
    assert config == cccp
    assert mgmt(cluster, "GET", "/pools/default/b/nope").status == 404


def test_streaming_config_sends_a_new_config_after_a_change(cluster: MockCluster) -> None:
    stream = rawhttp.ConfigStream(HOST, cluster.http_port, "default", ADMIN)
    try:
        assert stream.status == 200 and stream.chunked
        first = stream.next_config()
        changed = mgmt(cluster, "POST", "/pools/default/buckets/default", form={"ramQuotaMB": "200"})
        assert changed.status == 200
        second = stream.next_config()
        assert second["rev"] > first["rev"] and second["name"] == "default"
        assert second["vBucketServerMap"] == first["vBucketServerMap"]
    finally:
        stream.close()
    full = rawhttp.ConfigStream(HOST, cluster.http_port, "default", ADMIN,
                                path="/pools/default/bucketsStreaming/default")
    try:
        assert full.next_config()["bucketType"] == "membase"
    finally:
        full.close()
    missing = rawhttp.ConfigStream(HOST, cluster.http_port, "nope", ADMIN)
    try:
        assert missing.status == 404
    finally:
        missing.close()


@pytest.mark.parametrize("auth,status", [
    (None, 401), (("secured", "wrong"), 401), (("Administrator", "wrong"), 401), (SECURED, 200), (ADMIN, 200),
    (READER, 401), (("default", ""), 401)])
def test_bucket_auth(cluster: MockCluster, auth: Optional[Tuple[str, str]], status: int) -> None:
    reply = mgmt(cluster, "GET", "/pools/default/b/secured", auth=auth)
    assert reply.status == status
    if status == 401:
        assert reply.headers["www-authenticate"].startswith("Basic realm=")
    stream = rawhttp.ConfigStream(HOST, cluster.http_port, "secured", auth)
    try:
        assert stream.status == status
    finally:
        stream.close()


def test_flush(cluster: MockCluster) -> None:
    for name, flush in (("flushme", "1"), ("noflush", "0")):
        created = mgmt(cluster, "POST", "/pools/default/buckets",
                       form={"name": name, "bucketType": "couchbase", "ramQuotaMB": 100, "flushEnabled": flush})
        assert created.status == 202, created
    kv = KV(cluster, "flushme")
    try:
        kv.set(b"doomed", b"1")
        assert mgmt(cluster, "POST", "/pools/default/buckets/flushme/controller/doFlush", auth=READER).status == 401
        assert mgmt(cluster, "POST", "/pools/default/buckets/flushme/controller/doFlush").status == 200
        assert kv.get(b"doomed") == 0x01
    finally:
        kv.close()
    refused = mgmt(cluster, "POST", "/pools/default/buckets/noflush/controller/doFlush")
    assert refused.status == 400 and b"disabled" in refused.body.lower()
    assert "flush" not in mgmt(cluster, "GET", "/pools/default/buckets/noflush").json()["controllers"]
    # Enabling it through a bucket update makes the flush work.
    assert mgmt(cluster, "POST", "/pools/default/buckets/noflush", form={"flushEnabled": "1"}).status == 200
    assert mgmt(cluster, "POST", "/pools/default/buckets/noflush/controller/doFlush").status == 200
    assert mgmt(cluster, "POST", "/pools/default/buckets/nope/controller/doFlush").status == 404


@pytest.mark.parametrize("form,fields", [
    ({"bucketType": "couchbase"}, {"name"}),
    ({"name": "bad name!"}, {"name"}),
    ({"name": "default"}, {"name"}),
    ({"name": "ok1", "bucketType": "cassandra"}, {"bucketType"}),
    ({"name": "ok2", "ramQuotaMB": "50"}, {"ramQuotaMB"}),
    ({"name": "ok3", "ramQuotaMB": "lots"}, {"ramQuotaMB"}),
    ({"name": "ok4", "replicaNumber": "4"}, {"replicaNumber"}),
    ({"name": "ok5", "flushEnabled": "2"}, {"flushEnabled"}),
    ({"name": "", "bucketType": "x", "ramQuotaMB": "1", "replicaNumber": "9", "flushEnabled": "y"},
     {"name", "bucketType", "ramQuotaMB", "replicaNumber", "flushEnabled"}),
])
def test_bucket_create_validation(cluster: MockCluster, form: Dict[str, str], fields: set) -> None:
    reply = mgmt(cluster, "POST", "/pools/default/buckets", form=form)
    assert reply.status == 400, reply
    errors = reply.json()["errors"]
    assert set(errors) == fields and all(isinstance(text, str) and text for text in errors.values())


def test_bucket_create_and_delete(cluster: MockCluster) -> None:
    form = {"name": "fresh", "bucketType": "ephemeral", "ramQuotaMB": "128", "replicaNumber": "0"}
    assert mgmt(cluster, "POST", "/pools/default/buckets", auth=OWNER, form=form).status == 401
    assert mgmt(cluster, "POST", "/pools/default/buckets", form=form).status == 202
    info = mgmt(cluster, "GET", "/pools/default/buckets/fresh").json()
    assert (info["bucketType"], info["replicaNumber"]) == ("ephemeral", 0)
    client = handshake(HOST, cluster.kv_ports()[0], ADMIN[0], ADMIN[1], "fresh")
    try:
        assert assert_config_name(client) == "fresh"
        assert mgmt(cluster, "DELETE", "/pools/default/buckets/fresh", auth=OWNER).status == 401
        assert mgmt(cluster, "DELETE", "/pools/default/buckets/fresh").status == 200
        assert mgmt(cluster, "DELETE", "/pools/default/buckets/fresh").status == 404
        assert mgmt(cluster, "GET", "/pools/default/buckets/fresh").status == 404
        assert client.request(0x89, key=b"fresh").status == 0x01  # KEY_ENOENT: no such bucket
    finally:
        client.close()


def assert_config_name(client: RawClient) -> str:
    response = client.request(0xB5)
    assert response.status == 0, response
    return json.loads(response.value)["name"]


def test_users_crud(cluster: MockCluster) -> None:
    path = "/settings/rbac/users/local/alice"
    form = {"password": "apw", "roles": "data_reader[default],query_select[default]", "name": "Alice"}
    assert mgmt(cluster, "PUT", path, auth=READER, form=form).status == 401
    assert mgmt(cluster, "PUT", path, form=form).status == 200
    listed = {u["id"]: u for u in mgmt(cluster, "GET", "/settings/rbac/users/local").json()}
    assert listed["alice"]["domain"] == "local" and listed["alice"]["name"] == "Alice"
    one = mgmt(cluster, "GET", path).json()
    assert one["roles"] == [{"role": "data_reader", "bucket_name": "default"},
                            {"role": "query_select", "bucket_name": "default"}]
    client = handshake(HOST, cluster.kv_ports()[0], "alice", "apw", "default")  # she can log in
    client.close()
    # Update without a password keeps it; roles change.
    assert mgmt(cluster, "PUT", path, form={"roles": "admin"}).status == 200
    assert mgmt(cluster, "GET", path).json()["roles"] == [{"role": "admin"}]
    handshake(HOST, cluster.kv_ports()[0], "alice", "apw", "secured").close()
    assert mgmt(cluster, "DELETE", path).status == 200
    assert mgmt(cluster, "GET", path).status == 404
    assert mgmt(cluster, "DELETE", path).status == 404
    assert mgmt(cluster, "PUT", "/settings/rbac/users/local/bob", form={"roles": "admin"}).status == 400
    bad_role = mgmt(cluster, "PUT", "/settings/rbac/users/local/bob", form={"password": "x", "roles": "Admin!"})
    assert bad_role.status == 400 and "roles" in bad_role.json()["errors"]


# ======================================================= views (8092)


DESIGN = {"views": {
    "by_n": {"map": "function (doc, meta) { if (doc.type == 'view') { emit(doc.n, doc.name); } }"},
    "by_group": {"map": "function (doc, meta) { if (doc.type == 'view') { emit([doc.g, doc.n], doc.n); } }",
                 "reduce": "_sum"},
    "count": {"map": "function (doc, meta) { if (doc.type == 'view') { emit(doc.g, null); } }",
              "reduce": "_count"},
    "stats": {"map": "function (doc, meta) { if (doc.type == 'view') { emit(null, doc.n); } }",
              "reduce": "_stats"},
}}


def views(cluster: MockCluster, method: str, path: str, body: bytes = b"",
          auth: Optional[Tuple[str, str]] = ADMIN) -> rawhttp.Response:
    headers = {"Content-Type": "application/json"} if body else None
    return rawhttp.request(HOST, cluster.views_port, method, "/default" + path, body, headers, auth)


@pytest.fixture(scope="module")
def design(cluster: MockCluster, docs: Dict[str, Any]) -> str:
    reply = views(cluster, "PUT", "/_design/http", json.dumps(DESIGN).encode())
    assert reply.status == 201 and reply.json() == {"ok": True, "id": "_design/http"}, reply
    return "/_design/http/_view/"


def rows(cluster: MockCluster, view: str, **params: Any) -> List[Dict[str, Any]]:
    query = urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})
    reply = views(cluster, "GET", "/_design/http/_view/%s?%s" % (view, query))
    assert reply.status == 200, reply
    return reply.json()["rows"]


def test_design_document_crud(cluster: MockCluster) -> None:
    doc = {"views": {"v": {"map": "function (doc) { emit(null, null); }"}}}
    put = views(cluster, "PUT", "/_design/crud", json.dumps(doc).encode())
    assert put.status == 201
    got = views(cluster, "GET", "/_design/crud")
    assert got.status == 200 and got.json() == doc
    meta = json.loads(got.headers["x-couchbase-meta"])
    assert meta["id"] == "_design/crud" and meta["rev"]
    put_again = views(cluster, "PUT", "/_design/crud", json.dumps(doc).encode())
    assert put_again.status == 201
    assert json.loads(views(cluster, "GET", "/_design/crud").headers["x-couchbase-meta"])["rev"] != meta["rev"]
    listing = mgmt(cluster, "GET", "/pools/default/buckets/default/ddocs").json()
    assert "_design/crud" in [row["doc"]["meta"]["id"] for row in listing["rows"]]
    assert views(cluster, "PUT", "/_design/crud", json.dumps(doc).encode(), auth=READER).status == 403
    assert views(cluster, "DELETE", "/_design/crud").json()["ok"] is True
    missing = views(cluster, "GET", "/_design/crud")
    assert missing.status == 404 and missing.json()["error"] == "not_found"
    assert views(cluster, "DELETE", "/_design/crud").status == 404
    assert views(cluster, "PUT", "/_design/broken", b"{not json").status == 400
    bad_js = {"views": {"v": {"map": "function (doc) { emit(doc.n, "}}}
    invalid = views(cluster, "PUT", "/_design/broken", json.dumps(bad_js).encode())
    assert invalid.status == 400 and invalid.json()["error"]
    nobucket = rawhttp.request(HOST, cluster.views_port, "GET", "/mc/_design/x", auth=ADMIN)
    assert nobucket.status == 404  # memcached buckets have no views
    assert views(cluster, "GET", "/_design/x", auth=("reader", "bad")).status == 401


def test_map_query_parameters(cluster: MockCluster, design: str) -> None:
    everything = views(cluster, "GET", design + "by_n?stale=false").json()
    assert everything["total_rows"] == NUM_DOCS
    assert [r["key"] for r in everything["rows"]] == list(range(NUM_DOCS))
    assert everything["rows"][3] == {"id": doc_id(3), "key": 3, "value": "n03"}
    assert [r["key"] for r in rows(cluster, "by_n", key=5)] == [5]
    assert [r["key"] for r in rows(cluster, "by_n", keys=[7, 1, 30, 3])] == [7, 1, 3]
    assert [r["key"] for r in rows(cluster, "by_n", startkey=4, endkey=7)] == [4, 5, 6, 7]
    assert [r["key"] for r in rows(cluster, "by_n", startkey=4, endkey=7, inclusive_end="false")] == [4, 5, 6]
    assert [r["key"] for r in rows(cluster, "by_n", startkey=7, endkey=4, descending="true")] == [7, 6, 5, 4]
    assert [r["key"] for r in rows(cluster, "by_n", skip=2, limit=3)] == [2, 3, 4]
    assert [r["key"] for r in rows(cluster, "by_n", startkey=2, startkey_docid=doc_id(2), limit=1)] == [2]
    assert rows(cluster, "by_n", startkey=2, startkey_docid=doc_id(2) + "~", endkey=2) == []
    assert len(rows(cluster, "by_n", stale="ok")) == NUM_DOCS


def test_reduce_query_parameters(cluster: MockCluster, design: str) -> None:
    assert rows(cluster, "count") == [{"key": None, "value": NUM_DOCS}]
    per_group = rows(cluster, "count", group="true")
    assert per_group == [{"key": g, "value": sum(1 for i in range(NUM_DOCS) if i % 3 == g)} for g in range(3)]
    level1 = rows(cluster, "by_group", group_level=1)
    assert level1 == [{"key": [g], "value": sum(i for i in range(NUM_DOCS) if i % 3 == g)} for g in range(3)]
    unreduced = rows(cluster, "by_group", reduce="false", limit=2)
    assert [r["key"] for r in unreduced] == [[0, 0], [0, 3]] and unreduced[0]["id"] == doc_id(0)
    stats = rows(cluster, "stats")[0]["value"]
    assert stats == {"sum": sum(range(NUM_DOCS)), "count": NUM_DOCS, "min": 0, "max": NUM_DOCS - 1,
                     "sumsqr": sum(i * i for i in range(NUM_DOCS))}
    assert rows(cluster, "count", keys=[0, 2], group="true") == [
        {"key": 0, "value": 7}, {"key": 2, "value": 6}]


def test_view_query_errors(cluster: MockCluster, design: str) -> None:
    for query in ("limit=abc", "descending=maybe", "key=%7Bnot", "bogus=1", "startkey=5&endkey=2"):
        reply = views(cluster, "GET", design + "by_n?" + query)
        assert reply.status == 400 and reply.json()["error"] == "query_parse_error", (query, reply)
    missing = views(cluster, "GET", design + "nope")
    assert missing.status == 404 and missing.json()["error"] == "not_found"
    assert views(cluster, "GET", "/_design/nope/_view/v").status == 404
    assert views(cluster, "GET", design + "by_n", auth=None).status == 200  # a password-less bucket


def test_view_post_with_keys(cluster: MockCluster, design: str) -> None:
    keys = [12, 0, 99, 5]
    reply = views(cluster, "POST", design + "by_n?stale=false", json.dumps({"keys": keys}).encode())
    assert reply.status == 200, reply
    assert [r["key"] for r in reply.json()["rows"]] == [12, 0, 5]
    assert reply.json()["rows"] == rows(cluster, "by_n", keys=keys)
    grouped = views(cluster, "POST", design + "count?group=true", json.dumps({"keys": [1]}).encode())
    assert grouped.json()["rows"] == [{"key": 1, "value": 7}]


def test_development_views_see_a_subset(cluster: MockCluster, docs: Dict[str, Any]) -> None:
    """``dev_`` design documents index the documents whose vBucket (CRC32
    over 1024) is below 128, unless ``full_set=true``."""
    assert views(cluster, "PUT", "/_design/dev_sub", json.dumps(DESIGN).encode()).status == 201
    subset = views(cluster, "GET", "/_design/dev_sub/_view/by_n?stale=false").json()["rows"]
    expected = [doc_id(i) for i in range(NUM_DOCS)
                if ((zlib.crc32(doc_id(i).encode()) >> 16) & 0x7FFF) % 1024 < 128]
    assert [r["id"] for r in subset] == expected
    full = views(cluster, "GET", "/_design/dev_sub/_view/by_n?stale=false&full_set=true").json()["rows"]
    assert len(full) == NUM_DOCS


# ======================================================== N1QL (8093)


def n1ql(cluster: MockCluster, body: Any, auth: Optional[Tuple[str, str]] = ADMIN,
         form: bool = False) -> Tuple[int, Dict[str, Any]]:
    if form:
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
        reply = rawhttp.post_form(HOST, cluster.query_port, "/query/service", fields, auth)
    else:
        reply = rawhttp.post_json(HOST, cluster.query_port, "/query/service", body, auth)
    return reply.status, reply.json()


@pytest.fixture(scope="module")
def primary(cluster: MockCluster, docs: Dict[str, Any]) -> None:
    status, body = n1ql(cluster, {"statement": "CREATE PRIMARY INDEX ON `default`"})
    assert (status, body["status"]) == (200, "success"), body


def test_n1ql_json_and_form_bodies(cluster: MockCluster, primary: None) -> None:
    statement = "SELECT d.n FROM `default` d WHERE d.type = 'view' AND d.g = $g AND d.n < $1 ORDER BY d.n"
    status, body = n1ql(cluster, {"statement": statement, "$g": 1, "args": [10], "client_context_id": "ctx-1"})
    assert status == 200 and body["results"] == [{"n": 1}, {"n": 4}, {"n": 7}]
    assert body["clientContextID"] == "ctx-1" and body["status"] == "success"
    assert body["metrics"]["resultCount"] == 3 and body["requestID"]
    status, form = n1ql(cluster, {"statement": statement, "$g": 1, "args": [10]}, form=True)
    assert status == 200 and form["results"] == body["results"]
    get = rawhttp.request(HOST, cluster.query_port, "GET", "/query/service?" + urlencode(
        {"statement": "SELECT RAW COUNT(*) FROM `default` d WHERE d.type = 'view'"}), auth=ADMIN)
    assert get.status == 200 and get.json()["results"] == [NUM_DOCS]
    status, binary = n1ql(cluster, {"statement": "SELECT META(d).type AS t FROM `default` d USE KEYS 'not-json'"})
    assert binary["results"] == [{"t": "base64"}]


@pytest.mark.parametrize("body,status,code", [
    ({"statement": "SELEC 1"}, 400, 3000),
    ({"statement": "SELECT * FROM `nosuch`"}, 404, 12003),
    ({"statement": "SELECT * FROM `secured`"}, 404, 4000),
    ({"statement": "SELECT 1", "bogus_field": 1}, 400, 1065),
    ({}, 400, 1060),
    ({"statement": "SELECT $1"}, 400, 5010),
    ({"statement": "SELECT 1", "scan_consistency": "sometimes"}, 400, 1050),
    ({"prepared": "never-prepared"}, 404, 4040),
    ({"statement": "CREATE PRIMARY INDEX ON `default`"}, 409, 4300),
    ({"statement": "DROP INDEX `default`.`nope`"}, 404, 12016),
    ({"statement": "CREATE INDEX ix ON `default`(n)", "readonly": True}, 403, 1000),
])
def test_n1ql_errors(cluster: MockCluster, primary: None, body: Dict[str, Any], status: int, code: int) -> None:
    got_status, reply = n1ql(cluster, body)
    assert got_status == status, reply
    assert reply["errors"][0]["code"] == code and reply["errors"][0]["msg"]
    # Request, parse and plan errors: "fatal", no results; statements that
    # failed while executing (index DDL): "errors", an empty results array.
    assert (reply["status"], reply.get("results")) in (("fatal", None), ("errors", []))


def test_n1ql_auth(cluster: MockCluster) -> None:
    status, body = n1ql(cluster, {"statement": "SELECT 1"}, auth=("Administrator", "wrong"))
    assert status == 401 and body["errors"][0]["code"] == 10000


def test_n1ql_get_is_read_only(cluster: MockCluster, primary: None) -> None:
    reply = rawhttp.request(HOST, cluster.query_port, "GET", "/query/service?statement=" +
                            quote("CREATE INDEX ro ON `default`(n)"), auth=ADMIN)
    assert reply.status == 403 and reply.json()["errors"][0]["code"] == 1000


def test_n1ql_prepare_and_execute(cluster: MockCluster, primary: None) -> None:
    text = "SELECT RAW d.name FROM `default` d WHERE d.type = 'view' AND d.n = $1"
    status, prepared = n1ql(cluster, {"statement": "PREPARE fetch_one FROM " + text})
    assert status == 200, prepared
    plan = prepared["results"][0]
    assert plan["name"] == "fetch_one" and plan["encoded_plan"] and plan["text"]
    status, executed = n1ql(cluster, {"prepared": "fetch_one", "args": [6]})
    assert (status, executed["results"]) == (200, ["n06"])
    status, with_plan = n1ql(cluster, {"prepared": "fetch_one", "encoded_plan": plan["encoded_plan"], "args": [7]})
    assert with_plan["results"] == ["n07"]
    status, using = n1ql(cluster, {"statement": "EXECUTE fetch_one USING [8]"})
    assert using["results"] == ["n08"]
    status, mismatch = n1ql(cluster, {"prepared": "fetch_one", "encoded_plan": "AAAA", "args": [1]})
    assert status == 400 and mismatch["errors"][0]["code"] in (4070, 4080)
    status, duplicate = n1ql(cluster, {"statement": "PREPARE fetch_one FROM SELECT 2"})
    assert status == 400 and duplicate["errors"][0]["code"] == 4060


def test_n1ql_system_indexes(cluster: MockCluster, primary: None) -> None:
    status, body = n1ql(cluster, {"statement": 'CREATE INDEX by_g ON `default`(g) WITH {"defer_build": true}'})
    assert status == 200, body

    def index(name: str) -> Dict[str, Any]:
        _, listed = n1ql(cluster, {"statement": "SELECT idx.* FROM system:indexes idx WHERE idx.name = $1",
                                   "args": [name]})
        assert len(listed["results"]) == 1, listed
        return listed["results"][0]

    assert index("#primary")["is_primary"] is True
    deferred = index("by_g")
    assert (deferred["state"], deferred["keyspace_id"], deferred["using"]) == ("deferred", "default", "gsi")
    assert deferred["index_key"] == ["`g`"] and "is_primary" not in deferred
    assert n1ql(cluster, {"statement": "BUILD INDEX ON `default`(by_g)"})[0] == 200
    deadline = time.monotonic() + 30
    while index("by_g")["state"] != "online":
        assert time.monotonic() < deadline, index("by_g")
        time.sleep(0.05)
    assert n1ql(cluster, {"statement": "DROP INDEX `default`.by_g"})[0] == 200
    _, after = n1ql(cluster, {"statement": "SELECT RAW idx.name FROM system:indexes idx"})
    assert "by_g" not in after["results"] and "#primary" in after["results"]

"""Views, N1QL and management over the evented HTTP client, against the
emulator (``couchbase_core.mock.MockCluster``, run in a child process).

Layout:

* HTTP plumbing seen from a bucket: keep-alive pooling, which node gets
  which request, TLS, node failures, timeouts, credentials.
* Views: parameters as the view engine understands them, include_docs,
  reduce and grouping, spatial, development views, the three iterator
  flavours, errors.
* N1QL: parameters, consistency, prepared statements, options, the
  request object, errors, GN1QLRequest and AsyncN1QLRequest.
* Management: design documents, N1QL indexes, Admin, flush.
* The done-when criteria of the issue: 100,000 rows streamed through GView
  and GN1QLRequest with bounded memory; greenlets sharing and abandoning
  streams; AsyncViewBase/AsyncN1QLRequest callbacks on both loops.
"""

from __future__ import annotations

import gc
import json
import resource
import select
import socket
import time
import types
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Tuple

import gevent
import gevent.event
import pytest

import couchbase_core._httpops as httpops
from couchbase_core._httpops import RowStreamOp
from couchbase_core._rowstream import HIGH_WATER
from couchbase_core.admin import Admin
from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest
from couchbase_core.asynchronous.view import AsyncViewBase
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import (
    ArgumentError,
    AuthError,
    ConnectError,
    CouchbaseError,
    HTTPError,
    NotSupportedError,
    TimeoutError,
    ViewEngineError,
)
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.mock import MockCluster
from couchbase_core.n1ql import (
    CONSISTENCY_NONE,
    CONSISTENCY_REQUEST,
    PROFILE_OFF,
    PROFILE_TIMINGS,
    MutationState,
    N1QLError,
    N1QLQuery,
    N1QLRequest,
    prepared_cache,
)
from couchbase_core.views.iterator import AlreadyQueriedError, SpatialRow, View, ViewRow
from couchbase_core.views.params import STALE_OK, Query, SpatialQuery
from gcouchbase.bucket import Bucket as GBucket
from gcouchbase.bucket import GN1QLRequest, GView
from gcouchbase.iops import IOPS as GeventIOPS
from tests.collected import wait_collected

ADMIN = {"username": "Administrator", "password": "password"}
# KV timeout of buckets whose operations must succeed: the emulator serves
# views and N1QL on the same loop, and a loaded machine must not turn a
# slow answer into a failure (tests of timeouts set their own).
LONG = 30

#: 30 small documents for the view and N1QL semantics tests.
V_DOCS = {"v:%02d" % i: {"type": "v", "name": "n%02d" % i, "n": i, "grp": i % 3, "tag": "same",
                         "geo": {"type": "Point", "coordinates": [i, -i]}} for i in range(30)}
#: 3000 documents with a 400-character pad: responses of ~1.3 MB that stream
#: in many reads and outgrow the row buffer's high-water mark.
S_COUNT = 3000
S_DOCS = {"s:%04d" % i: {"type": "s", "n": i, "pad": ("%04d" % i) * 100} for i in range(S_COUNT)}

MAIN_DDOC = {
    "views": {
        "by_name": {"map": "function (doc, meta) { if (doc.type == 'v') emit(doc.name, doc.n); }"},
        "by_tag": {"map": "function (doc, meta) { if (doc.type == 'v') emit(doc.tag, null); }"},
        "by_grp": {"map": "function (doc, meta) { if (doc.type == 'v') emit([doc.grp, doc.n], doc.n); }",
                   "reduce": "_sum"},
        "count": {"map": "function (doc, meta) { if (doc.type == 'v') emit(doc.grp, null); }",
                  "reduce": "_count"},
        "stats": {"map": "function (doc, meta) { if (doc.type == 'v') emit(doc.grp, doc.n); }",
                  "reduce": "_stats"},
        "failing_reduce": {"map": "function (doc, meta) { if (doc.type == 'v') emit(doc.grp, doc.n); }",
                           "reduce": "function (keys, values, rereduce) { throw 'reduce went wrong'; }"},
    },
    "spatial": {"geo": "function (doc, meta) { if (doc.type == 'v') emit(doc.geo, doc.n); }"},
}
STREAM_DDOC = {"views": {
    "by_n": {"map": "function (doc, meta) { if (doc.type == 's') emit(doc.n, doc.pad); }"},
    "small": {"map": "function (doc, meta) { if (doc.type == 's') emit(doc.n, null); }"},
}}


# ---------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=3, replicas=1, buckets=["default", "noidx", "idx", "prep"]) as c:
        b = Bucket(c.connstr_for("default"), operation_timeout=LONG, **ADMIN)
        try:
            b.upsert_multi(V_DOCS)
            for start in range(0, S_COUNT, 1000):
                b.upsert_multi({k: S_DOCS[k] for k in list(S_DOCS)[start:start + 1000]})
            mgr = b.bucket_manager()
            mgr.design_create("dd", MAIN_DDOC, use_devmode=False, syncwait=60)
            mgr.design_create("stream", STREAM_DDOC, use_devmode=False, syncwait=60)
            # build the indexes once, so later queries may use stale=ok
            for ddoc, view in (("dd", "by_name"), ("stream", "small")):
                assert list(b.query(ddoc, view, stale=False, limit=1))
            mgr.n1ql_index_create_primary()
        finally:
            b.close()
        yield c


@pytest.fixture
def bucket(cluster):
    b = Bucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    yield b
    b.close()


@pytest.fixture
def gbucket(cluster):
    b = GBucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    yield b
    b.close()


def node_ports(cluster: MockCluster, service: str) -> List[int]:
    return [n["ports"][service] for n in cluster.refresh()["nodes"]]


def idle_connections(b: Any) -> Dict[Tuple[str, int], List[Any]]:
    return {k: list(v) for k, v in b._engine.http_pool._idle.items() if v}


@pytest.fixture
def fixed_node_order(monkeypatch):
    """Make HttpOp try nodes in a chosen order instead of a random one:
    ``fixed_node_order(first_ports)`` puts those ports first."""

    def install(first_ports=()) -> List[List[Tuple[str, int]]]:
        tried: List[List[Tuple[str, int]]] = []

        def shuffle(targets: List[Tuple[str, int]]) -> None:
            targets.sort(key=lambda hp: (hp[1] not in first_ports, hp[1]))
            tried.append(list(targets))

        monkeypatch.setattr(httpops, "random", types.SimpleNamespace(shuffle=shuffle))
        return tried

    return install


@pytest.fixture
def sent_requests(monkeypatch):
    """Every streamed request (views and N1QL) as (service, method, path, body)."""
    sent: List[Tuple[str, str, str, bytes]] = []
    original = RowStreamOp.__init__

    def spy(self, service, method, path, body, headers, timeout, consumer, rows_key):
        sent.append((service, method, path, body))
        original(self, service, method, path, body, headers, timeout, consumer, rows_key)

    monkeypatch.setattr(RowStreamOp, "__init__", spy)
    return sent


def n1ql_bodies(sent: List[Tuple[str, str, str, bytes]]) -> List[Dict[str, Any]]:
    return [json.loads(body) for service, _m, _p, body in sent if service == "n1ql"]


def keys_of(rows: List[Any]) -> List[Any]:
    return [r.key for r in rows]


@contextmanager
def async_bucket(kind: str, connstr: str) -> Iterator[Tuple[AsyncBucket, Callable[..., None]]]:
    """An AsyncBucket on the select IOPS or the gevent IOPS, connected, and a
    ``run_until(predicate, timeout)`` that drives its loop."""
    if kind == "select":
        iops: Any = SelectIOPS()

        def step() -> None:
            iops.run_once(0.02)
    else:
        iops = GeventIOPS()

        def step() -> None:
            gevent.sleep(0.005)

    def run_until(done: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the %s loop never got there" % kind
            step()

    def spin(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        run_until(lambda: time.monotonic() >= deadline, seconds + 5)

    b = AsyncBucket(iops, connstr, **ADMIN)
    connected: List[Any] = []
    b.on_connect(connected.append)
    run_until(lambda: connected)
    assert connected == [None]
    run_until.spin = spin  # type: ignore[attr-defined]
    try:
        yield b, run_until
    finally:
        b.close()
        if kind == "select":
            iops.run_once(0)


class RecordingView(AsyncViewBase):
    """Records every callback in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: List[Tuple[str, Any]] = []

    def on_rows(self, rows: List[Any]) -> None:
        self.events.append(("rows", list(rows)))

    def on_error(self, ex: BaseException) -> None:
        self.events.append(("error", ex))

    def on_done(self) -> None:
        self.events.append(("done", None))

    @property
    def ended(self) -> bool:
        return any(kind in ("done", "error") for kind, _ in self.events)


class RecordingN1QL(AsyncN1QLRequest):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: List[Tuple[str, Any]] = []

    def on_rows(self, rows: List[Any]) -> None:
        self.events.append(("rows", list(rows)))

    def on_error(self, ex: BaseException) -> None:
        self.events.append(("error", ex))

    def on_done(self) -> None:
        self.events.append(("done", None))

    @property
    def ended(self) -> bool:
        return any(kind in ("done", "error") for kind, _ in self.events)


def endings(events: List[Tuple[str, Any]]) -> List[str]:
    return [kind for kind, _ in events if kind != "rows"]


def delivered(events: List[Tuple[str, Any]]) -> List[Any]:
    return [row for kind, rows in events if kind == "rows" for row in rows]


# ===========================================================================
# HTTP client, seen from a bucket


def test_sequential_view_queries_reuse_one_pooled_connection(cluster, bucket, fixed_node_order):
    tried = fixed_node_order()
    assert idle_connections(bucket) == {}
    first = list(bucket.query("dd", "by_name", limit=2))
    pooled = idle_connections(bucket)
    assert len(pooled) == 1
    (endpoint, conns), = pooled.items()
    assert len(conns) == 1 and conns[0].state == "open"
    second = list(bucket.query("dd", "by_name", limit=2, skip=2))
    assert idle_connections(bucket) == {endpoint: conns}  # the very same connection object
    assert keys_of(first) == ["n00", "n01"] and keys_of(second) == ["n02", "n03"]
    assert len(tried) == 2 and tried[0][0] == tried[1][0] == endpoint


def test_each_service_is_asked_on_its_own_port(cluster, bucket):
    capi, n1ql, mgmt = (set(node_ports(cluster, s)) for s in ("capi", "n1ql", "mgmt"))
    list(bucket.query("dd", "by_name", limit=1))
    assert {port for _h, port in idle_connections(bucket)} <= capi
    bucket.n1ql_query("SELECT 1 AS one").execute()
    bucket.bucket_manager().design_list()
    ports = {port for _h, port in idle_connections(bucket)}
    assert ports & capi and ports & n1ql and ports & mgmt
    assert ports <= capi | n1ql | mgmt


def test_a_service_no_node_offers_is_not_supported(bucket, monkeypatch):
    config = bucket._engine.config
    real = config.service_endpoints
    monkeypatch.setattr(config, "service_endpoints",
                        lambda service, tls=False: [] if service == "n1ql" else real(service, tls))
    with pytest.raises(NotSupportedError) as info:
        bucket.n1ql_query("SELECT 1").execute()
    assert "n1ql" in str(info.value)
    assert list(bucket.query("dd", "by_name", limit=1))  # other services still work


def test_tls_view_and_n1ql():
    with MockCluster(nodes=1, tls=True) as c:
        b = Bucket("%s/default?certpath=%s" % (c.info["connstr_tls"], c.ca_cert), **ADMIN)
        try:
            assert b.is_ssl
            b.upsert_multi({"t:%d" % i: {"kind": "tls", "i": i} for i in range(5)})
            mgr = b.bucket_manager()
            mgr.design_create("t", {"views": {"v": {"map": "function (doc) { if (doc.kind) emit(doc.i, null); }"}}},
                              use_devmode=False, syncwait=60)
            assert keys_of(b.query("t", "v", stale=False)) == [0, 1, 2, 3, 4]
            mgr.n1ql_index_create_primary()
            rows = list(b.n1ql_query("SELECT RAW i FROM `default` WHERE kind = 'tls' ORDER BY i"))
            assert rows == [0, 1, 2, 3, 4]
            ports = c.info["nodes"][0]["ports"]
            pooled = idle_connections(b)
            assert {port for _h, port in pooled} == {ports["capiSSL"], ports["n1qlSSL"]}
            assert all(conn.tls for conns in pooled.values() for conn in conns)
        finally:
            b.close()


@pytest.fixture(scope="module")
def small_cluster():
    """Two nodes, for tests that stop nodes or drop connections."""
    with MockCluster(nodes=2, replicas=1) as c:
        b = Bucket(c.connstr_for("default"), operation_timeout=LONG, **ADMIN)
        try:
            b.upsert_multi({"k:%d" % i: {"i": i} for i in range(10)})
            mgr = b.bucket_manager()
            mgr.design_create("d", {"views": {"v": {"map": "function (doc) { emit(doc.i, null); }"}}},
                              use_devmode=False, syncwait=60)
            mgr.n1ql_index_create_primary()
        finally:
            b.close()
        yield c


def test_view_get_is_retried_on_another_node_when_one_is_down(small_cluster, fixed_node_order):
    b = Bucket(small_cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    dead = small_cluster.info["nodes"][1]["ports"]
    small_cluster.stop_node(1)
    try:
        tried = fixed_node_order(first_ports=(dead["capi"], dead["n1ql"]))
        for _ in range(3):
            assert keys_of(b.query("d", "v", stale=False)) == list(range(10))
        assert all(t[0][1] == dead["capi"] for t in tried)  # the dead node was tried first each time
        assert all(port != dead["capi"] for _h, port in idle_connections(b))
    finally:
        small_cluster.restart_node(1)
        b.close()


def test_n1ql_is_tried_on_another_node_when_the_connection_is_refused(small_cluster, fixed_node_order):
    b = Bucket(small_cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    dead = small_cluster.info["nodes"][1]["ports"]
    small_cluster.stop_node(1)
    try:
        fixed_node_order(first_ports=(dead["n1ql"],))
        try:
            rows = list(b.n1ql_query("SELECT RAW i FROM `default` ORDER BY i"))
        except ConnectError:
            rows = None
        assert rows == list(range(10))
    finally:
        small_cluster.restart_node(1)
        b.close()


def _hung_up(sock: socket.socket) -> bool:
    """The peer closed ``sock`` (its EOF is waiting to be read)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def test_requests_after_the_server_dropped_idle_http_connections(small_cluster, fixed_node_order):
    fixed_node_order()  # always the same node, so the pooled connection is the one asked for
    b = Bucket(small_cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    try:
        assert b.n1ql_query("SELECT 1 AS x").get_single_result() == {"x": 1}
        assert len(list(b.query("d", "v"))) == 10
        small_cluster.drop_connections()  # e.g. the services' idle timeout
        # The FIN is in on every pooled connection (waited for, not slept for)
        idle = [c for conns in b._engine.http_pool._idle.values() for c in conns]
        assert idle
        deadline = time.monotonic() + 30
        while not all(_hung_up(c._sock) for c in idle):
            assert time.monotonic() < deadline, "the emulator never closed the pooled connections"
            time.sleep(0.01)
        failures = []
        for name, run in (("n1ql", lambda: b.n1ql_query("SELECT 1 AS x").get_single_result()),
                          ("view", lambda: len(list(b.query("d", "v"))))):
            try:
                run()
            except CouchbaseError as exc:
                failures.append((name, exc))
        assert failures == []
    finally:
        b.close()


def test_view_timeout_then_the_bucket_keeps_working(cluster, bucket):
    # the map function spins for a second on one document: indexing (done
    # by the query) outlasts views_timeout
    bucket.bucket_manager().design_create(
        "slow", {"views": {"v": {"map": "function (doc, meta) { if (doc.slow) { var t = Date.now(); "
                                        "while (Date.now() - t < 2500) {} } if (doc.slow) emit(meta.id, null); }"}}},
        use_devmode=False)
    bucket.upsert("slow:1", {"slow": True})
    bucket.views_timeout = 0.2
    started = time.monotonic()
    # Without the timeout the query would answer (after 2.5 s): the error is
    # the proof; the upper bound only guards against a hang.
    with pytest.raises(TimeoutError) as info:
        list(bucket.query("slow", "v"))
    assert 0.19 <= time.monotonic() - started < 20
    assert "timed out" in str(info.value)
    bucket.views_timeout = 60
    assert bucket.get("slow:1").value == {"slow": True}
    assert keys_of(bucket.query("slow", "v", stale=False)) == ["slow:1"]
    bucket.remove("slow:1")


def test_bad_credentials_give_clear_401_errors(cluster):
    admin = Admin("Administrator", "password", port=cluster.http_port)
    admin.user_upsert("local", "temp_viewer", password="first-pw", roles=[("bucket_full_access", "default")])
    b = Bucket(cluster.connstr_for("default"), username="temp_viewer", password="first-pw")
    try:
        assert len(list(b.query("dd", "by_name", limit=3))) == 3
        # the password changes while the bucket is open: KV stays authenticated,
        # HTTP requests authenticate again each time
        admin.user_upsert("local", "temp_viewer", password="second-pw", roles=[("bucket_full_access", "default")])
        with pytest.raises(CouchbaseError) as view_err:
            list(b.query("dd", "by_name", limit=3))
        assert view_err.value.http_status == 401
        assert "unauthorized" in str(view_err.value)
        with pytest.raises(N1QLError) as n1ql_err:
            b.n1ql_query("SELECT 1").execute()
        assert n1ql_err.value.code == 10000 and n1ql_err.value.http_status == 401
        with pytest.raises(HTTPError) as mgmt_err:
            b.bucket_manager().design_list()
        assert mgmt_err.value.result.http_status == 401 and "401" in str(mgmt_err.value)
    finally:
        b.close()
        admin.user_remove("local", "temp_viewer")
        admin.close()
    with pytest.raises(AuthError) as info:  # checked in the constructor, as 2.x
        Admin("Administrator", "not-the-password", port=cluster.http_port)
    assert info.value.objextra.http_status == 401


# ===========================================================================
# Views


def test_view_rows_and_metadata(bucket):
    view = bucket.query("dd", "by_name", limit=3)
    assert type(view) is View
    rows = list(view)
    assert rows == [ViewRow("n00", 0, "v:00", None), ViewRow("n01", 1, "v:01", None),
                    ViewRow("n02", 2, "v:02", None)]
    assert view.indexed_rows == 30  # total_rows is the index size
    assert view.rows_returned == 3 and view.errors == []
    assert view.raw == {"total_rows": 30}
    with pytest.raises(AlreadyQueriedError):
        list(view)


@pytest.mark.parametrize("params, expected", [
    ({"key": "n07"}, ["n07"]),
    ({"mapkey_single": "n07"}, ["n07"]),
    ({"keys": ["n09", "n01", "n09", "zz"]}, ["n09", "n01", "n09"]),  # the given order, repeats kept
    ({"startkey": "n10", "endkey": "n13"}, ["n10", "n11", "n12", "n13"]),
    ({"mapkey_range": ["n10", "n13"], "inclusive_end": False}, ["n10", "n11", "n12"]),
    ({"mapkey_range": ["n27"]}, ["n27", "n28", "n29"]),
    ({"startkey": "n13", "endkey": "n10", "descending": True}, ["n13", "n12", "n11", "n10"]),
    ({"skip": 28, "limit": 5}, ["n28", "n29"]),
    ({"limit": 2, "descending": "true"}, ["n29", "n28"]),
    ({"stale": STALE_OK, "limit": 1}, ["n00"]),
    ({"stale": False, "on_error": "stop", "connection_timeout": 60000, "limit": 1}, ["n00"]),
])
def test_view_parameters_as_the_view_engine_reads_them(bucket, params, expected):
    assert keys_of(bucket.query("dd", "by_name", **params)) == expected


def test_query_object_and_debug(bucket):
    view = bucket.query("dd", "by_name", query=Query(startkey="n05", limit=2, debug=True))
    assert keys_of(view) == ["n05", "n06"]
    assert "debug_info" in view.raw


def test_document_id_range_is_raw_text(bucket):
    # every row has the key "same": the docid range picks among them
    rows = list(bucket.query("dd", "by_tag", startkey="same", endkey="same", startkey_docid="v:10",
                             endkey_docid="v:12"))
    assert [r.docid for r in rows] == ["v:10", "v:11", "v:12"]
    rows = list(bucket.query("dd", "by_tag", startkey="same", dockey_range=["v:27"]))
    assert [r.docid for r in rows] == ["v:27", "v:28", "v:29"]


def test_unicode_and_reserved_characters_in_keys(bucket):
    bucket.upsert("v:u", {"type": "v", "name": "caf\u00e9 & co=1?", "n": 99, "grp": 0, "tag": "other"})
    try:
        rows = list(bucket.query("dd", "by_name", key="caf\u00e9 & co=1?", stale=False))
        assert [(r.key, r.docid) for r in rows] == [("caf\u00e9 & co=1?", "v:u")]
    finally:
        bucket.remove("v:u")
        list(bucket.query("dd", "by_name", stale=False, limit=1))


def test_long_key_lists_are_posted_with_the_keys_in_the_body(bucket, sent_requests):
    wanted = ["n%02d" % i for i in reversed(range(30))] * 12 + ["missing-%03d" % i for i in range(40)]
    view = bucket.query("dd", "by_name", keys=wanted, stale=STALE_OK)
    rows = list(view)
    assert keys_of(rows) == [k for k in wanted if not k.startswith("missing")]
    assert [r.value for r in rows[:3]] == [29, 28, 27]
    (service, method, path, body), = sent_requests
    assert (service, method) == ("capi", "POST")
    assert path.endswith("/_view/by_name?stale=ok") and "keys" not in path
    assert json.loads(body) == {"keys": wanted}


def test_unknown_parameters_are_refused_before_sending(bucket, sent_requests):
    with pytest.raises(ArgumentError):
        bucket.query("dd", "by_name", limt=3)
    with pytest.raises(ArgumentError):
        bucket.query("dd", "by_name", stale="sometimes")
    assert sent_requests == []


def test_unrecognized_parameter_reaches_the_server_and_its_reason_comes_back(bucket):
    with pytest.raises(ViewEngineError) as info:
        list(bucket.query("dd", "by_name", query=Query(unrecognized_ok=True, frobnicate=1)))
    assert info.value.http_status == 400
    assert "frobnicate" in str(info.value) and "query_parse_error" in str(info.value)
    assert info.value.objextra["error"] == "query_parse_error"


def test_include_docs_fetches_the_documents_through_kv(bucket):
    bucket.upsert("v:05", dict(V_DOCS["v:05"], extra="changed after indexing"))
    try:
        rows = list(bucket.query("dd", "by_name", key="n05", include_docs=True, stale=STALE_OK))
        assert len(rows) == 1
        row = rows[0]
        assert row.value == 5  # from the index
        assert row.doc.value["extra"] == "changed after indexing"  # from KV, newer than the index
        assert row.doc.cas == bucket.get("v:05").cas
    finally:
        bucket.upsert("v:05", V_DOCS["v:05"])
    with pytest.raises(ArgumentError):
        bucket.query("dd", "by_grp", include_docs=True, reduce=True)


def test_include_docs_on_gevent(gbucket):
    rows = list(gbucket.query("dd", "by_name", startkey="n20", limit=4, include_docs=True))
    assert [r.doc.value for r in rows] == [V_DOCS["v:%02d" % i] for i in range(20, 24)]


def test_reduce_views_and_grouping(bucket):
    sums = {g: sum(i for i in range(30) if i % 3 == g) for g in range(3)}
    assert list(bucket.query("dd", "by_grp")) == [ViewRow(None, sum(range(30)), None, None)]
    grouped = list(bucket.query("dd", "by_grp", group_level=1))
    assert [(r.key, r.value) for r in grouped] == [([g], sums[g]) for g in range(3)]
    exact = list(bucket.query("dd", "by_grp", group=True, limit=4))
    assert [(r.key, r.value) for r in exact] == [([0, 0], 0), ([0, 3], 3), ([0, 6], 6), ([0, 9], 9)]
    plain = list(bucket.query("dd", "by_grp", reduce=False, limit=2))
    assert [(r.key, r.docid) for r in plain] == [([0, 0], "v:00"), ([0, 3], "v:03")]
    assert [(r.key, r.value) for r in bucket.query("dd", "count", group=True)] == [(0, 10), (1, 10), (2, 10)]
    stats = list(bucket.query("dd", "stats", key=1))[0].value
    ones = [i for i in range(30) if i % 3 == 1]
    assert stats == {"sum": sum(ones), "count": 10, "min": 1, "max": 28, "sumsqr": sum(i * i for i in ones)}


def test_partial_errors_are_metadata_not_an_exception(bucket):
    view = bucket.query("dd", "failing_reduce")
    rows = list(view)
    assert rows == []
    assert view.errors and "reduce went wrong" in json.dumps(view.errors)


def test_spatial_view(bucket):
    rows = list(bucket.query("dd", "geo", spatial=True, bbox=[2, -5, 4, 0]))
    assert all(isinstance(r, SpatialRow) for r in rows)
    assert sorted(r.docid for r in rows) == ["v:02", "v:03", "v:04"]
    assert {r.docid: r.geometry for r in rows}["v:03"] == {"type": "Point", "coordinates": [3, -3]}
    assert sorted(r.value for r in rows) == [2, 3, 4]
    q = SpatialQuery(start_range=[10, -11], end_range=[11, -10])
    assert sorted(r.docid for r in bucket.query("dd", "geo", spatial=True, query=q)) == ["v:10", "v:11"]


def test_development_and_production_views(bucket):
    mgr = bucket.bucket_manager()
    mgr.design_create("devonly", {"views": {"v": {"map": "function (doc) { if (doc.type == 'v') emit(doc.n, null); }"}}},
                      use_devmode=True, syncwait=60)
    try:
        full = list(bucket.query("devonly", "v", use_devmode=True, full_set=True, stale=False))
        assert keys_of(full) == list(range(30))
        subset = list(bucket.query("devonly", "v", use_devmode=True, stale=False))
        assert len(subset) < 30 and set(keys_of(subset)) <= set(range(30))
        # the dev_ prefix is not doubled
        assert keys_of(bucket.query("dev_devonly", "v", use_devmode=True, full_set=True)) == list(range(30))
        with pytest.raises(ViewEngineError) as info:
            list(bucket.query("devonly", "v"))  # no production design document
        assert info.value.http_status == 404 and "not_found" in str(info.value)
    finally:
        mgr.design_delete("devonly", use_devmode=True)


def test_view_errors(bucket):
    with pytest.raises(ViewEngineError) as info:
        list(bucket.query("dd", "no_such_view"))
    assert info.value.http_status == 404
    assert info.value.objextra["error"] == "not_found" and "not_found" in str(info.value)
    with pytest.raises(ViewEngineError) as info:
        list(bucket.query("no_such_design", "v"))
    assert info.value.http_status == 404
    with pytest.raises(ViewEngineError) as info:
        list(bucket.query("dd", "by_name", group=True))  # grouping a map-only view
    assert info.value.http_status == 400
    assert info.value.objextra["reason"] in str(info.value) and "group" in info.value.objextra["reason"]
    with pytest.raises(ViewEngineError) as info:
        list(bucket.query("dd", "by_name", startkey="n20", endkey="n10"))
    assert info.value.objextra["error"] == "query_parse_error"


def test_non_json_http_failure_of_a_view_is_an_http_error(bucket):
    with pytest.raises(HTTPError) as info:
        list(bucket.query("a/b", "v"))
    assert info.value.http_status == 404


def test_gview_streams_rows_before_the_response_ends(gbucket):
    view = gbucket.query("stream", "by_n", stale=STALE_OK)
    assert isinstance(view, GView)
    seen_at_first_row = None
    count = 0
    for row in view:
        if count == 0:
            seen_at_first_row = (view._current.done, view._current.rows_received)
        assert row.key == count and row.docid == "s:%04d" % count
        count += 1
    assert count == S_COUNT and view.indexed_rows == S_COUNT
    done, received = seen_at_first_row
    assert not done and received < S_COUNT


# ===========================================================================
# N1QL


def test_positional_and_named_parameters(bucket, sent_requests):
    q = N1QLQuery("SELECT name FROM `default` WHERE type = 'v' AND n BETWEEN $1 AND $2 ORDER BY n", 3, 5)
    assert [r["name"] for r in bucket.n1ql_query(q)] == ["n03", "n04", "n05"]
    q = N1QLQuery("SELECT RAW n FROM `default` WHERE type = $kind AND grp = $g ORDER BY n LIMIT 3", kind="v", g=2)
    assert list(bucket.n1ql_query(q)) == [2, 5, 8]
    assert bucket.n1ql_query("SELECT $1 AS a, $b AS b", [1, "x"], b={"k": None}).get_single_result() == \
        {"a": [1, "x"], "b": {"k": None}}
    bodies = n1ql_bodies(sent_requests)
    assert bodies[0]["args"] == [3, 5]
    assert bodies[1]["$kind"] == "v" and bodies[1]["$g"] == 2 and "args" not in bodies[1]
    assert bodies[2]["args"] == [[1, "x"]] and bodies[2]["$b"] == {"k": None}
    with pytest.raises(ArgumentError):
        bucket.n1ql_query(N1QLQuery("SELECT 1"), 5)


def test_request_plus_consistency(bucket, sent_requests):
    q = N1QLQuery("SELECT RAW n FROM `default` WHERE type = 'fresh'")
    q.consistency = CONSISTENCY_REQUEST
    bucket.upsert("fresh:1", {"type": "fresh", "n": 101})
    try:
        assert list(bucket.n1ql_query(q)) == [101]
    finally:
        bucket.remove("fresh:1")
    assert n1ql_bodies(sent_requests)[0]["scan_consistency"] == "request_plus"
    q.consistency = CONSISTENCY_NONE
    assert "scan_consistency" not in q.encoded_body()
    with pytest.raises(ArgumentError):
        q.consistency = "whenever"


def test_consistent_with_mutation_state(bucket, sent_requests):
    single = bucket.upsert("fresh:2", {"type": "fresh2", "n": 1})
    multi = bucket.upsert_multi({"fresh:3": {"type": "fresh2", "n": 2}, "fresh:4": {"type": "fresh2", "n": 3}})
    try:
        state = MutationState(single, multi)
        q = N1QLQuery("SELECT RAW n FROM `default` WHERE type = 'fresh2' ORDER BY n")
        q.consistent_with(state)
        assert list(bucket.n1ql_query(q)) == [1, 2, 3]
        body = n1ql_bodies(sent_requests)[0]
        assert body["scan_consistency"] == "at_plus"
        vectors = body["scan_vectors"]["default"]
        for res in [single] + list(multi.values()):
            token = res.mutation_token
            seqno, uuid = vectors[str(token.vbucket)]
            assert seqno >= token.seqno and uuid == str(token.vbucket_uuid)
    finally:
        bucket.remove_multi(["fresh:2", "fresh:3", "fresh:4"])
    with pytest.raises(ArgumentError):
        N1QLQuery("SELECT 1").consistent_with(MutationState())


def test_prepared_statements_send_only_the_name_the_second_time(cluster, sent_requests):
    b = Bucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    try:
        statement = "SELECT RAW name FROM `default` WHERE type = 'v' AND n = $1"
        q = N1QLQuery(statement, 4)
        q.adhoc = False
        assert list(b.n1ql_query(q)) == ["n04"]
        entry = prepared_cache(b).get(statement)
        assert entry is not None and entry["name"]
        bodies = n1ql_bodies(sent_requests)
        assert bodies[0]["statement"] == "PREPARE " + statement
        assert bodies[1]["prepared"] == entry["name"] and "statement" not in bodies[1]
        sent_requests.clear()
        q2 = N1QLQuery(statement, 6)
        q2.adhoc = False
        assert list(b.n1ql_query(q2)) == ["n06"]
        (body,) = n1ql_bodies(sent_requests)  # no PREPARE this time
        assert body["prepared"] == entry["name"] and body["args"] == [6] and "statement" not in body
        assert "encoded_plan" not in body  # the emulator has enhancedPreparedStatements
    finally:
        b.close()


def test_a_prepared_statement_the_server_forgot_is_prepared_again(cluster, sent_requests):
    b = Bucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    try:
        statement = "SELECT RAW n FROM `default` WHERE type = 'v' AND grp = $1 ORDER BY n LIMIT 2"
        q = N1QLQuery(statement, 1)
        q.adhoc = False
        assert list(b.n1ql_query(q)) == [1, 4]
        entry = prepared_cache(b).get(statement)
        prepared_cache(b).put(statement, dict(entry, name="lost-when-the-query-node-restarted"))
        sent_requests.clear()
        again = N1QLQuery(statement, 2)
        again.adhoc = False
        assert list(b.n1ql_query(again)) == [2, 5]
        sent = [body.get("prepared") or body.get("statement") for body in n1ql_bodies(sent_requests)]
        assert sent == ["lost-when-the-query-node-restarted", "PREPARE " + statement,
                        prepared_cache(b).get(statement)["name"]]
        assert prepared_cache(b).get(statement)["name"] != "lost-when-the-query-node-restarted"
    finally:
        b.close()


def test_prepared_without_enhanced_statements_sends_the_plan(cluster, sent_requests, monkeypatch):
    b = Bucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    try:
        monkeypatch.setattr(b._engine.config, "cluster_capabilities", {})
        statement = "SELECT RAW n FROM `default` WHERE type = 'v' AND n < $1 ORDER BY n"
        q = N1QLQuery(statement, 2)
        q.adhoc = False
        assert list(b.n1ql_query(q)) == [0, 1]
        body = n1ql_bodies(sent_requests)[-1]
        assert body["encoded_plan"] == prepared_cache(b).get(statement)["encoded_plan"]
    finally:
        b.close()


def test_prepared_statement_across_a_dropped_and_recreated_index(cluster, sent_requests):
    b = Bucket(cluster.connstr_for("prep"), operation_timeout=LONG, **ADMIN)
    try:
        b.upsert_multi({"p:%d" % i: {"n": i} for i in range(5)})
        mgr = b.bucket_manager()
        mgr.n1ql_index_create("ix_n", fields=["n"])
        statement = "SELECT RAW n FROM `prep` WHERE n >= $1 ORDER BY n"
        q = N1QLQuery(statement, 3)
        q.adhoc = False
        assert list(b.n1ql_query(q)) == [3, 4]
        name = prepared_cache(b).get(statement)["name"]
        mgr.n1ql_index_drop("ix_n")
        q = N1QLQuery(statement, 3)
        q.adhoc = False
        with pytest.raises(N1QLError) as info:
            list(b.n1ql_query(q))
        assert info.value.code == 4000  # no index: an error, not a stale plan
        mgr.n1ql_index_create("ix_n", fields=["n"])
        sent_requests.clear()
        q = N1QLQuery(statement, 1)
        q.adhoc = False
        assert list(b.n1ql_query(q)) == [1, 2, 3, 4]
        assert [body.get("prepared") for body in n1ql_bodies(sent_requests)] == [name]
    finally:
        b.close()


def test_timeout_readonly_profile_metrics_and_context(bucket, sent_requests):
    q = N1QLQuery("SELECT RAW n FROM `default` WHERE type = 's'")
    q.timeout = 0.001
    with pytest.raises(N1QLError) as info:
        bucket.n1ql_query(q).execute()
    assert info.value.code == 1080
    assert n1ql_bodies(sent_requests)[0]["timeout"] == "1ms"
    assert N1QLQuery("SELECT 1").encoded_body(75.0)["timeout"] == "75000ms"
    q = N1QLQuery("SELECT 1")
    q.timeout = 2.5
    assert q.encoded_body(75.0)["timeout"] == "2500ms"

    q = N1QLQuery("CREATE INDEX never ON `default`(n)")
    q.readonly = True
    with pytest.raises(N1QLError) as info:
        bucket.n1ql_query(q).execute()
    assert info.value.code == 1000
    assert "never" not in {ix.name for ix in bucket.bucket_manager().n1ql_index_list()}

    q = N1QLQuery("SELECT RAW n FROM `default` WHERE type = 'v' AND n < 2")
    q.profile = PROFILE_TIMINGS
    q.metrics = False
    q.set_option("client_context_id", "my-context")
    req = bucket.n1ql_query(q)
    assert sorted(req) == [0, 1]
    assert req.profile is not None and "metrics" not in req.meta
    assert req.meta["clientContextID"] == "my-context"
    q.profile = PROFILE_OFF
    with pytest.raises(ArgumentError):
        q.profile = "everything"


def test_request_object(bucket):
    req = bucket.n1ql_query("SELECT RAW n FROM `default` WHERE type = 'v' AND n < 4 ORDER BY n")
    assert type(req) is N1QLRequest
    assert req.execute() is req
    assert req.rows_returned == 4 and req.meta["status"] == "success"
    assert req.metrics["resultCount"] == 4 and req.errors == [] and req.warnings == []
    assert req.meta["requestID"]
    with pytest.raises(AlreadyQueriedError):
        list(req)
    first = bucket.n1ql_query("SELECT RAW n FROM `default` WHERE type = 'v' ORDER BY n DESC")
    assert first.get_single_result() == 29 and first.rows_returned == 30
    assert bucket.n1ql_query("SELECT RAW 1 FROM `default` WHERE type = 'none'").get_single_result() is None
    factory = bucket.n1ql_query("SELECT RAW n FROM `default` WHERE type = 'v' AND n < 2 ORDER BY n",
                                row_factory=lambda row: row * 10)
    assert list(factory) == [0, 10]


@pytest.mark.parametrize("statement, code, status", [
    ("SELEC 1", 3000, 400),
    ("SELECT * FROM `no_such_bucket`", 12003, 404),
    ("SELECT * FROM `noidx` WHERE x = 1", 4000, 404),
])
def test_n1ql_errors(bucket, statement, code, status):
    req = bucket.n1ql_query(statement)
    with pytest.raises(N1QLError) as info:
        req.execute()
    exc = info.value
    assert exc.code == code and exc.http_status == status
    assert exc.msg and exc.msg in str(exc) and exc.errors[0]["code"] == code
    assert req.meta["errors"] == exc.errors and req.meta["status"] == "fatal"


def test_n1ql_result_with_an_integer_beyond_int64(bucket):
    bucket.upsert("bigint:1", {"type": "bigint", "v": 2 ** 64 - 1})
    try:
        assert bucket.get("bigint:1").value["v"] == 2 ** 64 - 1
        assert list(bucket.n1ql_query("SELECT RAW v FROM `default` WHERE type = 'bigint'")) == [2 ** 64 - 1]
    finally:
        bucket.remove("bigint:1")


def test_gn1ql_request_on_gevent(gbucket):
    req = gbucket.n1ql_query("SELECT RAW n FROM `default` WHERE type = 'v' ORDER BY n")
    assert isinstance(req, GN1QLRequest)
    results = {}

    def run(tag: str, statement: str) -> None:
        results[tag] = list(gbucket.n1ql_query(statement))

    glets = [gevent.spawn(run, "even", "SELECT RAW n FROM `default` WHERE type = 'v' AND n % 2 = 0 ORDER BY n"),
             gevent.spawn(run, "odd", "SELECT RAW n FROM `default` WHERE type = 'v' AND n % 2 = 1 ORDER BY n")]
    assert list(req) == list(range(30))
    gevent.joinall(glets, raise_error=True)
    assert results == {"even": list(range(0, 30, 2)), "odd": list(range(1, 30, 2))}


# ===========================================================================
# Management


def test_design_document_lifecycle(bucket):
    mgr = bucket.bucket_manager()
    design = {"views": {"names": {"map": "function (doc) { if (doc.type == 'v' && doc.n < 3) emit(doc.name, null); }"}}}
    mgr.design_create("life", design, use_devmode=True, syncwait=60)
    try:
        got = mgr.design_get("life", use_devmode=True)
        assert got.value == design
        assert json.loads(got.headers["x-couchbase-meta"])["id"] == "_design/dev_life"
        assert mgr.design_list()["_design/dev_life"] == design
        assert keys_of(bucket.query("life", "names", use_devmode=True, full_set=True, stale=False)) == \
            ["n00", "n01", "n02"]

        mgr.design_publish("life", syncwait=60)
        assert keys_of(bucket.query("life", "names", stale=False)) == ["n00", "n01", "n02"]
        listing = mgr.design_list()
        assert "_design/life" in listing and "_design/dev_life" not in listing
        with pytest.raises(HTTPError) as info:
            mgr.design_get("life", use_devmode=True)
        assert info.value.result.http_status == 404
    finally:
        mgr.design_delete("life", use_devmode=False, syncwait=60)
    with pytest.raises(ViewEngineError):
        list(bucket.query("life", "names"))
    assert "_design/life" not in mgr.design_list()
    with pytest.raises(HTTPError):
        mgr.design_delete("life", use_devmode=False)


def test_n1ql_index_management(cluster):
    b = Bucket(cluster.connstr_for("idx"), operation_timeout=LONG, **ADMIN)
    try:
        b.upsert_multi({"i:%d" % i: {"a": i, "b": "x%d" % (i % 2)} for i in range(6)})
        mgr = b.bucket_manager()
        assert mgr.n1ql_index_list() == []
        mgr.n1ql_index_create("ix_a", fields=["a"])
        mgr.n1ql_index_create("ix_b", fields=["b"], defer=True)
        mgr.n1ql_index_create_primary(defer=True)
        states = {ix.name: (ix.state, ix.primary) for ix in mgr.n1ql_index_list()}
        assert states == {"ix_a": ("online", False), "ix_b": ("deferred", False), "#primary": ("deferred", True)}
        with pytest.raises(N1QLError) as info:
            mgr.n1ql_index_create("ix_a", fields=["a"])
        assert info.value.code == 4300
        mgr.n1ql_index_create("ix_a", fields=["a"], ignore_exists=True)

        assert sorted(mgr.n1ql_index_build_deferred()) == ["#primary", "ix_b"]
        mgr.n1ql_index_watch(["ix_a", "ix_b"], watch_primary=True, timeout=60)
        listing = {ix.name: ix for ix in mgr.n1ql_index_list()}
        assert all(ix.state == "online" for ix in listing.values())
        assert listing["ix_b"].fields == ["`b`"] and listing["ix_b"].keyspace == "idx"
        assert sorted(b.n1ql_query("SELECT RAW a FROM `idx` WHERE b = 'x1'")) == [1, 3, 5]
        with pytest.raises(TimeoutError):
            mgr.n1ql_index_watch(["never_made"], timeout=0.3, interval=0.05)

        mgr.n1ql_index_drop("ix_b")
        mgr.n1ql_index_drop_primary()
        with pytest.raises(N1QLError) as info:
            mgr.n1ql_index_drop("ix_b")
        assert info.value.code in (12004, 12016)
        mgr.n1ql_index_drop("ix_b", ignore_missing=True)
        assert [ix.name for ix in mgr.n1ql_index_list()] == ["ix_a"]
        with pytest.raises(ArgumentError):
            mgr.n1ql_index_create("ix_c")  # a secondary index needs fields
    finally:
        b.close()


def test_bucket_manager_needs_a_waiting_bucket(cluster):
    with async_bucket("select", cluster.connstr_for("default")) as (ab, _run):
        with pytest.raises(NotSupportedError):
            ab.bucket_manager()


def test_admin_buckets_and_users(cluster):
    with Admin("Administrator", "password", port=cluster.http_port) as admin:
        assert admin.bucket_create("made", ram_quota=100, flush_enabled=True).http_status == 202
        try:
            assert admin.wait_ready("made", timeout=60) is None
            assert "made" in {b.name() for b in admin.buckets_list()}
            assert admin.bucket_info("made").value["name"] == "made"
            with pytest.raises(HTTPError) as info:
                admin.bucket_create("tiny", ram_quota=10)
            assert info.value.result.http_status == 400 and "ramQuotaMB" in str(info.value)
            with pytest.raises(ArgumentError):
                admin.bucket_create("odd", bucket_type="nosql")

            b = Bucket(cluster.connstr_for("made"), operation_timeout=LONG, **ADMIN)
            try:
                b.upsert_multi({"m:%d" % i: i for i in range(20)})
                assert b.flush().http_status == 200
                assert not any(r.success for r in b.get_multi(["m:%d" % i for i in range(20)], quiet=True).values())
            finally:
                b.close()
        finally:
            admin.bucket_remove("made")
        with pytest.raises(HTTPError) as info:
            admin.bucket_info("made")
        assert info.value.result.http_status == 404
        with pytest.raises(HTTPError):  # 2.x: the probe's last error when time is up
            admin.wait_ready("made", timeout=0.3, sleep_interval=0.05)

        admin.user_upsert("local", "alice", password="alice-pw", roles=["ro_admin", ("data_reader", "default")],
                          name="Alice")
        try:
            user = admin.user_get("local", "alice").value
            assert user["name"] == "Alice"
            assert {(r["role"], r.get("bucket_name")) for r in user["roles"]} == \
                {("ro_admin", None), ("data_reader", "default")}
            assert "alice" in {u["id"] for u in admin.users_get().value}
        finally:
            admin.user_remove("local", "alice")
        assert "alice" not in {u["id"] for u in admin.users_get().value}
        with pytest.raises(HTTPError):
            admin.user_get("local", "alice")


def test_flush_refused_when_the_bucket_does_not_allow_it(cluster):
    with Admin("Administrator", "password", port=cluster.http_port) as admin:
        admin.bucket_create("noflush", ram_quota=100, flush_enabled=False)
        admin.wait_ready("noflush", timeout=60)
        b = Bucket(cluster.connstr_for("noflush"), operation_timeout=LONG, **ADMIN)
        try:
            b.upsert("kept", 1)
            with pytest.raises(NotSupportedError) as info:  # as flush()'s docstring says
                b.flush()
            assert "disabled" in str(info.value).lower()
            assert b.get("kept").value == 1
        finally:
            b.close()
            admin.bucket_remove("noflush")


# ===========================================================================
# Done-when (b): greenlets sharing and abandoning streams


def test_two_greenlets_iterate_two_views_at_once(gbucket):
    log: List[str] = []
    first_row = {"up": gevent.event.Event(), "down": gevent.event.Event()}
    other = {"up": "down", "down": "up"}

    def consume(tag: str, descending: bool) -> List[Tuple[int, str]]:
        out = []
        for row in gbucket.query("stream", "small", descending=descending, stale=STALE_OK):
            out.append((row.key, row.docid))
            log.append(tag)
            if len(out) == 1:
                # both streams are open and half-way before either goes on
                first_row[tag].set()
                assert first_row[other[tag]].wait(20)
            elif len(out) % 100 == 0:
                gevent.sleep(0)
        return out

    up = gevent.spawn(consume, "up", False)
    down = gevent.spawn(consume, "down", True)
    gevent.joinall([up, down], raise_error=True)
    expected = [(i, "s:%04d" % i) for i in range(S_COUNT)]
    assert up.value == expected
    assert down.value == expected[::-1]
    # each started before the other ended
    assert log.index("down") < len(log) - 1 - log[::-1].index("up")
    assert log.index("up") < len(log) - 1 - log[::-1].index("down")


def test_a_killed_greenlet_leaves_the_bucket_usable(gbucket):
    state: Dict[str, Any] = {"rows": 0}

    def slow_consumer() -> None:
        view = state["view"] = gbucket.query("stream", "by_n", stale=STALE_OK)
        for _row in view:
            if state["rows"] == 0:
                state["conn"] = view._current.op._conn
            state["rows"] += 1
            gevent.sleep(0.01)

    glet = gevent.spawn(slow_consumer)
    deadline = time.monotonic() + 30
    while "view" not in state or state["view"]._current is None or not state["view"]._current._paused:
        assert time.monotonic() < deadline, "the stream never paused"
        gevent.sleep(0.01)
    stream = state["view"]._current
    conn = state["conn"]
    # back-pressure: reading stopped near the high-water mark, mid-response
    assert not stream.done and HIGH_WATER <= len(stream._buffer) < HIGH_WATER + 1000
    assert conn.busy and conn.state == "open"
    gevent.sleep(0.1)
    assert len(stream._buffer) < HIGH_WATER + 1000  # still not reading

    glet.kill(block=True)
    assert glet.dead and state["rows"] < S_COUNT
    # The iterator was suspended in the killed greenlet's loop body: the
    # request is cancelled when the generator is collected (at once on
    # CPython, at a garbage collection on PyPy; View.close() needs neither).
    # (The dead greenlet's GreenletExit holds a traceback; on PyPy its frames
    # still reach the generator, so the greenlet goes first.)
    del glet
    wait_collected(lambda: stream.done, "the killed greenlet's request was never cancelled")
    assert stream.error == (0, "abandoned")
    assert conn.state == "closed"  # half-read: closed, never pooled
    assert all(conn not in conns for conns in gbucket._engine.http_pool._idle.values())

    assert gbucket.get("v:01").value == V_DOCS["v:01"]
    assert keys_of(gbucket.query("dd", "by_name", limit=2)) == ["n00", "n01"]
    rows = list(gbucket.query("stream", "by_n", stale=STALE_OK))
    assert len(rows) == S_COUNT and rows[-1].value == S_DOCS["s:%04d" % (S_COUNT - 1)]["pad"]


def test_gevent_timeout_while_waiting_for_rows(gbucket):
    gbucket.bucket_manager().design_create(
        "slow2", {"views": {"v": {"map": "function (doc, meta) { if (doc.slow2) { var t = Date.now(); "
                                         "while (Date.now() - t < 2000) {} emit(meta.id, null); } }"}}},
        use_devmode=False)
    gbucket.upsert("slow2:1", {"slow2": True})
    try:
        view = gbucket.query("slow2", "v")
        # the rows take 2 s: far longer than the 0.15 s, on any machine
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.15):
                list(view)
        assert view._current.done and view._current.error == (0, "abandoned")
        assert keys_of(gbucket.query("slow2", "v")) == ["slow2:1"]
        assert gbucket.get("slow2:1").value == {"slow2": True}
    finally:
        gbucket.remove("slow2:1")


# ===========================================================================
# Done-when (c): AsyncViewBase / AsyncN1QLRequest on both loops


@pytest.mark.parametrize("kind", ["select", "gevent"])
def test_async_view_rows_in_batches_then_one_done(cluster, kind):
    with async_bucket(kind, cluster.connstr_for("default")) as (ab, run_until):
        view = ab.query("stream", "by_n", itercls=RecordingView, stale=STALE_OK)
        assert isinstance(view, RecordingView)
        assert view.start() is view
        view.start()  # a second start is a no-op
        run_until(lambda: view.ended)
        run_until.spin(0.2)  # nothing may follow the end
        assert endings(view.events) == ["done"] and view.events[-1][0] == "done"
        batches = [rows for kind_, rows in view.events if kind_ == "rows"]
        assert len(batches) > 1  # delivered while the response streamed
        rows = delivered(view.events)
        assert [r.key for r in rows] == list(range(S_COUNT))
        assert rows[7] == ViewRow(7, S_DOCS["s:0007"]["pad"], "s:0007", None)
        assert view.indexed_rows == S_COUNT and view.rows_returned == S_COUNT
        with pytest.raises(TypeError):
            iter(view)


@pytest.mark.parametrize("kind", ["select", "gevent"])
def test_async_view_failure_is_one_error(cluster, kind):
    with async_bucket(kind, cluster.connstr_for("default")) as (ab, run_until):
        missing = ab.query("dd", "no_such_view", itercls=RecordingView).start()
        run_until(lambda: missing.ended)
        run_until.spin(0.2)
        assert endings(missing.events) == ["error"] and delivered(missing.events) == []
        assert isinstance(missing.events[0][1], ViewEngineError)

        class Exploding(RecordingView):
            def on_rows(self, rows: List[Any]) -> None:
                super().on_rows(rows)
                raise RuntimeError("consumer failed")

        boom = ab.query("stream", "by_n", itercls=Exploding, stale=STALE_OK).start()
        run_until(lambda: boom.ended)
        run_until.spin(0.3)
        assert endings(boom.events) == ["error"]
        assert [kind_ for kind_, _ in boom.events] == ["rows", "error"]  # nothing after the failure
        assert isinstance(boom.events[1][1], RuntimeError)


@pytest.mark.parametrize("kind", ["select", "gevent"])
def test_async_view_include_docs(cluster, kind):
    with async_bucket(kind, cluster.connstr_for("default")) as (ab, run_until):
        view = ab.query("stream", "small", itercls=RecordingView, include_docs=True, limit=1200,
                        stale=STALE_OK).start()
        run_until(lambda: view.ended)
        run_until.spin(0.1)
        assert endings(view.events) == ["done"]
        rows = delivered(view.events)
        assert [r.key for r in rows] == list(range(1200))
        assert all(r.doc.value == S_DOCS[r.docid] for r in rows)


@pytest.mark.parametrize("kind", ["select", "gevent"])
def test_async_n1ql(cluster, kind):
    with async_bucket(kind, cluster.connstr_for("default")) as (ab, run_until):
        req = ab.n1ql_query("SELECT RAW n FROM `default` WHERE type = 's' ORDER BY n", itercls=RecordingN1QL)
        assert req.start() is req
        run_until(lambda: req.ended)
        run_until.spin(0.2)
        assert endings(req.events) == ["done"]
        assert delivered(req.events) == list(range(S_COUNT))
        assert len([1 for kind_, _ in req.events if kind_ == "rows"]) > 1
        assert req.meta["status"] == "success" and req.meta["metrics"]["resultCount"] == S_COUNT

        bad = ab.n1ql_query("SELEC nothing", itercls=RecordingN1QL).start()
        run_until(lambda: bad.ended)
        run_until.spin(0.2)
        assert endings(bad.events) == ["error"] and bad.events[0][1].code == 3000

        q = N1QLQuery("SELECT RAW name FROM `default` WHERE type = 'v' AND n = $1", 8)
        q.adhoc = False
        prep = ab.n1ql_query(q, itercls=RecordingN1QL).start()
        run_until(lambda: prep.ended)
        assert endings(prep.events) == ["done"] and delivered(prep.events) == ["n08"]
        assert prepared_cache(ab).get(q.statement)["name"]


# ===========================================================================
# Done-when (a): 100,000 rows with bounded memory

BIG_COUNT = 100_000
BIG_PAD = 600


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/self/status" % field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


class MemoryProbe:
    """RSS growth of this process over a block: VmHWM after minus VmRSS
    before (peak reset at the start when the kernel allows it), else the
    largest VmRSS sample; plus ru_maxrss before and after for the record."""

    def __init__(self) -> None:
        gc.collect()
        self.peak_reset = _reset_peak()
        self.rss_before = _proc_status_kb("VmRSS")
        self.maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.sampled = self.rss_before

    def sample(self) -> None:
        self.sampled = max(self.sampled, _proc_status_kb("VmRSS"))

    def finish(self) -> Dict[str, float]:
        self.sample()
        peak = _proc_status_kb("VmHWM") if self.peak_reset else self.sampled
        return {"rss_before_mb": self.rss_before / 1024, "peak_mb": peak / 1024,
                "growth_mb": (peak - self.rss_before) / 1024,
                "ru_maxrss_before_mb": self.maxrss_before / 1024,
                "ru_maxrss_after_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


@pytest.fixture(scope="module")
def big():
    """100,000 documents (with a 600-character pad) in an emulator running
    in a child process, a view over them and a primary index."""
    with MockCluster(nodes=1, replicas=0) as c:
        b = GBucket(c.connstr_for("default"), operation_timeout=30, **ADMIN)
        try:
            pad = "p" * BIG_PAD
            for start in range(0, BIG_COUNT, 5000):
                b.upsert_multi({"big:%06d" % i: {"n": i, "pad": pad} for i in range(start, start + 5000)})
            mgr = b.bucket_manager()
            mgr.design_create("big", {"views": {"all": {"map": "function (doc) { emit(doc.n, doc.pad); }"}}},
                              use_devmode=False, syncwait=60)
            assert len(list(b.query("big", "all", stale=False, limit=1))) == 1  # index built
            mgr.n1ql_index_create_primary()
            yield b
        finally:
            b.close()


class ProbeN1QL(GN1QLRequest):
    """Keeps the row stream so the test can look at it."""

    def _stream(self, prepared: Any) -> Any:
        self.stream = super()._stream(prepared)
        return self.stream


def _stream_and_measure(rows: Iterator[Any], stream_of: Callable[[], Any], check: Callable[[int, Any], None]
                        ) -> Dict[str, Any]:
    probe = MemoryProbe()
    started = time.monotonic()
    count = 0
    payload = 0
    first: Dict[str, Any] = {}
    for row in rows:
        if count == 0:
            stream = stream_of()
            first = {"done": stream.done, "rows_received": stream.rows_received,
                     "seconds": time.monotonic() - started}
            # a slow consumer: the stream reads ahead up to the high-water mark, then pauses
            deadline = time.monotonic() + 60  # a guard: it pauses as soon as the buffer is full
            while not stream._paused and not stream.done and time.monotonic() < deadline:
                gevent.sleep(0.01)
            first["paused"] = stream._paused
            first["buffered"] = len(stream._buffer)
        check(count, row)
        payload += BIG_PAD
        count += 1
        if count % 10_000 == 0:
            probe.sample()
    result = probe.finish()
    result.update(first=first, rows=count, payload_mb=payload / 1e6, seconds=time.monotonic() - started)
    return result


def _assert_streamed(result: Dict[str, Any]) -> None:
    print("\n%r" % (result,))
    first = result["first"]
    assert result["rows"] == BIG_COUNT
    # the first row was handed over long before the response's last byte
    assert first["done"] is False and first["rows_received"] < BIG_COUNT // 10
    # back-pressure bounded what was read ahead
    assert first["paused"] is True and first["buffered"] < HIGH_WATER + 1000
    # 60 MB of row payload went through (keeping the rows would cost ~75 MB);
    # memory grew by far less
    assert result["payload_mb"] >= 60
    assert result["growth_mb"] < 50


# The per-test limit (setup.cfg: 120 s) counts the 100,000-document fixture,
# which takes ~25 s on an idle machine: a loaded one gets more room.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_100k_row_view_streams_through_gview_with_bounded_memory(big):
    view = big.query("big", "all", stale=STALE_OK)
    assert isinstance(view, GView)

    def check(i: int, row: Any) -> None:
        assert row.key == i and len(row.value) == BIG_PAD

    result = _stream_and_measure(iter(view), lambda: view._current, check)
    assert view.indexed_rows == BIG_COUNT
    _assert_streamed(result)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_100k_row_n1ql_streams_through_gn1qlrequest_with_bounded_memory(big):
    req = big.n1ql_query("SELECT META().id AS id, n, pad FROM `default`", itercls=ProbeN1QL)
    seen = bytearray(BIG_COUNT)

    def check(i: int, row: Any) -> None:
        assert len(row["pad"]) == BIG_PAD and row["id"] == "big:%06d" % row["n"]
        seen[row["n"]] = 1

    result = _stream_and_measure(iter(req), lambda: req.stream, check)
    assert all(seen)
    assert req.meta["status"] == "success" and req.metrics["resultCount"] == BIG_COUNT
    _assert_streamed(result)

"""Analytics queries end to end, on the three bucket flavours, against the
emulator's analytics service (``couchbase_core.mock``, in a child process).

The module's cluster has two nodes, the ``default`` bucket loaded with 30
small documents (dataset ``small``) and 3,000 padded ones (dataset ``big``,
responses of ~1.3 MB that stream in many reads), and the ``Local`` link
connected.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Tuple

import gevent
import pytest

from couchbase_core.analytics import (
    AnalyticsError,
    AnalyticsQuery,
    AnalyticsRequest,
    DeferredAnalyticsQuery,
    DeferredAnalyticsRequest,
)
from couchbase_core.asynchronous.analytics import AsyncAnalyticsRequest
from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import (
    ArgumentError,
    NotSupportedError,
    OptionIgnoredWarning,
    TimeoutError,
)
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.mock import MockCluster
from couchbase_core.n1ql import CONSISTENCY_REQUEST, MutationState, N1QLError
from couchbase_core.views.iterator import AlreadyQueriedError
from gcouchbase.bucket import Bucket as GBucket
from gcouchbase.bucket import GAnalyticsRequest
from gcouchbase.iops import IOPS as GeventIOPS
from tests.collected import wait_collected

ADMIN = {"username": "Administrator", "password": "password"}
LONG = 30

SMALL = {"v:%02d" % i: {"type": "v", "n": i, "name": "n%02d" % i, "grp": i % 3} for i in range(30)}
BIG_COUNT = 3000
BIG = {"s:%04d" % i: {"type": "s", "n": i, "pad": ("%04d" % i) * 100} for i in range(BIG_COUNT)}


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=2, replicas=1) as c:
        b = Bucket(c.connstr_for("default"), operation_timeout=LONG, **ADMIN)
        try:
            b.upsert_multi(SMALL)
            keys = list(BIG)
            for start in range(0, BIG_COUNT, 1000):
                b.upsert_multi({k: BIG[k] for k in keys[start:start + 1000]})
            b.analytics_query("CREATE DATASET small ON `default` WHERE `type` = 'v';"
                              "CREATE DATASET big ON `default` WHERE `type` = 's';"
                              "CONNECT LINK Local;").execute()
        finally:
            b.close()
        yield c


@pytest.fixture
def bucket(cluster: MockCluster) -> Iterator[Bucket]:
    b = Bucket(cluster.connstr_for("default"), operation_timeout=LONG, n1ql_timeout=LONG, **ADMIN)
    yield b
    b.close()


@pytest.fixture
def gbucket(cluster: MockCluster) -> Iterator[GBucket]:
    b = GBucket(cluster.connstr_for("default"), operation_timeout=LONG, n1ql_timeout=LONG, **ADMIN)
    yield b
    b.close()


def cbas_ports(cluster: MockCluster) -> List[int]:
    return [n["ports"]["cbas"] for n in cluster.refresh()["nodes"]]


def first_targets(b: Any, monkeypatch: pytest.MonkeyPatch) -> List[Tuple[str, int]]:
    """Record, for each HTTP request of ``b``, the node it tries first."""
    firsts: List[Tuple[str, int]] = []
    engine = b._engine
    original = engine.http_request

    def spy(service: str, *args: Any, **kwargs: Any) -> Any:
        order = kwargs.get("order")
        if service == "cbas" and order is not None:
            def recording(targets: List[Tuple[str, int]]) -> None:
                order(targets)
                firsts.append(targets[0])
            kwargs["order"] = recording
        return original(service, *args, **kwargs)

    monkeypatch.setattr(engine, "http_request", spy)
    return firsts


# ---------------------------------------------------------------------------
# the query object


def test_query_object_as_2_5() -> None:
    q = AnalyticsQuery("SELECT VALUE 1  ")
    assert q.statement == "SELECT VALUE 1;"
    assert AnalyticsQuery("SELECT VALUE 1;").statement == "SELECT VALUE 1;"
    q = AnalyticsQuery("SELECT ?, $x", 1, x="two")
    assert q.encoded_body() == {"statement": "SELECT ?, $x;", "args": [1], "$x": "two"}
    with pytest.raises(ArgumentError):
        q.update(5)  # positional parameters are set already
    with pytest.raises(ArgumentError):
        q.update(x=3)  # so is $x
    q.update(y=[1, 2])
    assert q.encoded_body()["$y"] == [1, 2]
    assert isinstance(AnalyticsError({"message": "m"}), N1QLError)


def test_what_analytics_does_not_have() -> None:
    q = AnalyticsQuery("SELECT VALUE 1")
    with pytest.raises(ArgumentError):
        q.adhoc = False
    with pytest.raises(NotSupportedError):
        q.consistent_with(MutationState())
    with pytest.raises(NotSupportedError):
        q.profile = "timings"
    with pytest.raises(NotSupportedError):
        q.metrics = False
    with pytest.raises(NotSupportedError):
        q.cross_bucket = True
    q.consistency = CONSISTENCY_REQUEST
    q.timeout = 12.5
    assert q.encoded_body() == {"statement": "SELECT VALUE 1;", "scan_consistency": "request_plus",
                                "timeout": "12500ms"}
    assert DeferredAnalyticsQuery("SELECT 1").encoded_body()["mode"] == "async"


def test_bad_arguments(bucket: Bucket) -> None:
    with pytest.raises(ArgumentError):
        bucket.analytics_query(42)
    with pytest.raises(ArgumentError):
        bucket.analytics_query("SELECT VALUE 1", 8095)
    with pytest.raises(ArgumentError):
        bucket.analytics_query("SELECT VALUE 1", "http://[bad")
    with pytest.raises(ArgumentError):
        DeferredAnalyticsRequest(DeferredAnalyticsQuery("SELECT 1"), None, bucket, interval=0)
    req = DeferredAnalyticsRequest(DeferredAnalyticsQuery("SELECT 1"), None, bucket)
    assert (req.interval, req.timeout) == (10.0, None)
    for bad in (-1, True, "5", 86401):
        with pytest.raises(ArgumentError):
            req.timeout = bad


# ---------------------------------------------------------------------------
# blocking bucket


def test_rows_and_meta(bucket: Bucket) -> None:
    req = bucket.analytics_query("SELECT VALUE d.n FROM small d ORDER BY d.n")
    assert type(req) is AnalyticsRequest
    assert list(req) == list(range(30))
    assert req.meta["status"] == "success"
    assert req.metrics["resultCount"] == 30 and req.metrics["processedObjects"] == 30
    assert req.errors == [] and req.rows_returned == 30
    with pytest.raises(AlreadyQueriedError):
        list(req)


def test_positional_parameters(bucket: Bucket) -> None:
    # 2.5's order: the statement, the host, then the parameters
    got = list(bucket.analytics_query("SELECT VALUE d.n FROM small d WHERE d.n < ? ORDER BY d.n", None, 3))
    assert got == [0, 1, 2]
    q = AnalyticsQuery("SELECT VALUE d.name FROM small d WHERE d.n = $1 OR d.n = $2 ORDER BY d.n", 7, 4)
    assert list(bucket.analytics_query(q)) == ["n04", "n07"]
    # parameters given with an AnalyticsQuery are added to it
    q = AnalyticsQuery("SELECT VALUE d.n FROM small d WHERE d.n BETWEEN ? AND ? ORDER BY d.n")
    assert list(bucket.analytics_query(q, None, 10, 12)) == [10, 11, 12]


def test_named_parameters(bucket: Bucket) -> None:
    got = bucket.analytics_query("SELECT d.name FROM small d WHERE d.grp = $grp AND d.n < $below ORDER BY d.n",
                                 grp=1, below=10)
    assert list(got) == [{"name": "n01"}, {"name": "n04"}, {"name": "n07"}]


def test_execute_and_single_result(bucket: Bucket) -> None:
    assert bucket.analytics_query("SELECT COUNT(*) AS c FROM big").get_single_result() == {"c": BIG_COUNT}
    req = bucket.analytics_query("SELECT VALUE d.n FROM small d").execute()
    assert req.rows_returned == 30 and req.metrics["resultCount"] == 30


def test_many_rows_stream(bucket: Bucket) -> None:
    count = 0
    for row in bucket.analytics_query("SELECT VALUE d FROM big d"):
        assert len(row["pad"]) == 400
        count += 1
    assert count == BIG_COUNT


def test_errors(bucket: Bucket) -> None:
    with pytest.raises(AnalyticsError) as info:
        list(bucket.analytics_query("SELECT * FROM no_such_dataset"))
    assert info.value.code == 24045 and "no_such_dataset" in info.value.msg
    assert info.value.http_status == 400
    with pytest.raises(N1QLError) as info2:  # what 2.5 code catches
        bucket.analytics_query("SELEC 1").execute()
    assert info2.value.code == 24000
    req = bucket.analytics_query("CREATE DATASET small ON `default`")
    with pytest.raises(AnalyticsError) as info3:
        req.execute()
    assert info3.value.code == 24040
    assert req.meta["status"] == "fatal" and req.errors[0]["code"] == 24040
    # the bucket carries on
    assert bucket.get("v:03").value == SMALL["v:03"]


def test_host_is_a_preference(bucket: Bucket, cluster: MockCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = cbas_ports(cluster)
    firsts = first_targets(bucket, monkeypatch)
    for port in (ports[1], ports[0], ports[1]):
        req = bucket.analytics_query("SELECT VALUE 1", "127.0.0.1:%d" % port)
        assert list(req) == [1] and req.host == "127.0.0.1:%d" % port
    req = bucket.analytics_query("SELECT VALUE 2", "http://127.0.0.1:%d" % ports[1])
    assert list(req) == [2]
    assert firsts == [("127.0.0.1", ports[1]), ("127.0.0.1", ports[0]), ("127.0.0.1", ports[1]),
                      ("127.0.0.1", ports[1])]
    # a bare host name every node shares is fine too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(bucket.analytics_query("SELECT VALUE 3", "127.0.0.1")) == [3]


def test_unknown_host_warns_and_uses_the_config(bucket: Bucket) -> None:
    with pytest.warns(OptionIgnoredWarning, match="no analytics service"):
        got = list(bucket.analytics_query("SELECT VALUE 4", "analytics.example.invalid"))
    assert got == [4]


def test_deferred_query(bucket: Bucket) -> None:
    q = DeferredAnalyticsQuery("SELECT VALUE d.n FROM small d WHERE d.n < ? ORDER BY d.n", 4)
    req = bucket.analytics_query(q)
    assert type(req) is DeferredAnalyticsRequest
    req.interval = 0.05
    assert list(req) == [0, 1, 2, 3]
    assert req.meta["status"] == "running" and "/analytics/service/status/" in req.meta["handle"]


def test_deferred_query_times_out(bucket: Bucket) -> None:
    # the emulator says "running" at the first poll; the next poll would be past the timeout
    req = DeferredAnalyticsRequest(DeferredAnalyticsQuery("SELECT VALUE 1"), None, bucket, timeout=0.5,
                                   interval=5)
    with pytest.raises(TimeoutError):
        list(req)


def test_deferred_query_error(bucket: Bucket) -> None:
    with pytest.raises(AnalyticsError) as info:
        list(bucket.analytics_query(DeferredAnalyticsQuery("SELECT * FROM nowhere_at_all")))
    assert info.value.code == 24045


# ---------------------------------------------------------------------------
# gevent bucket


def test_gevent_rows_params_and_meta(gbucket: GBucket) -> None:
    def run() -> Tuple[List[Any], Dict[str, Any]]:
        req = gbucket.analytics_query("SELECT VALUE d.n FROM small d WHERE d.grp = $g ORDER BY d.n", g=2)
        assert type(req) is GAnalyticsRequest
        return list(req), req.metrics

    glets = [gevent.spawn(run) for _ in range(3)]
    gevent.joinall(glets, raise_error=True)
    for glet in glets:
        rows, metrics = glet.value
        assert rows == list(range(2, 30, 3)) and metrics["resultCount"] == 10


def test_gevent_positional_and_errors(gbucket: GBucket) -> None:
    assert list(gbucket.analytics_query("SELECT VALUE d.n FROM small d WHERE d.n > ? ORDER BY d.n", None, 27)) == [
        28, 29]
    with pytest.raises(AnalyticsError) as info:
        gevent.spawn(lambda: list(gbucket.analytics_query("SELECT * FROM gone"))).get()
    assert info.value.code == 24045


def test_gevent_other_greenlets_run_while_rows_stream(gbucket: GBucket) -> None:
    ticks: List[int] = []

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    t = gevent.spawn(ticker)
    try:
        seen_ticks = []
        for i, _row in enumerate(gbucket.analytics_query("SELECT VALUE d FROM big d")):
            if i % 1000 == 0:
                seen_ticks.append(len(ticks))
        assert i == BIG_COUNT - 1
    finally:
        t.kill()
    # the ticker ran while the greenlet waited for the later rows
    assert seen_ticks[-1] > seen_ticks[0]


def test_gevent_deferred(gbucket: GBucket) -> None:
    req = gbucket.analytics_query(DeferredAnalyticsQuery("SELECT VALUE 5"))
    req.interval = 0.05
    assert gevent.spawn(list, req).get(timeout=LONG) == [5]


def test_killed_greenlet_mid_stream_leaves_the_bucket_usable(gbucket: GBucket, cluster: MockCluster) -> None:
    ports = set(cbas_ports(cluster))
    state: Dict[str, Any] = {"rows": 0}

    def slow_consumer() -> None:
        for _row in gbucket.analytics_query("SELECT VALUE d FROM big d"):
            state["rows"] += 1
            gevent.sleep(0.01)

    def busy_cbas() -> List[Any]:
        return [c for c in gbucket._engine.http_connections if c.busy and c.port in ports]

    glet = gevent.spawn(slow_consumer)
    deadline = time.monotonic() + LONG
    while not (state["rows"] and busy_cbas()):
        assert time.monotonic() < deadline, "the rows never started"
        gevent.sleep(0.01)
    (conn,) = busy_cbas()  # mid-response: the rows are still coming
    glet.kill(block=True)
    assert glet.dead and 0 < state["rows"] < BIG_COUNT
    # cancelled when the suspended iterator is collected (later on PyPy)
    # (The dead greenlet's GreenletExit holds a traceback; on PyPy its frames
    # still reach the generator, so the greenlet goes first.)
    del glet
    wait_collected(lambda: conn.state == "closed", "the killed greenlet's request was never cancelled")
    assert all(conn not in conns for conns in gbucket._engine.http_pool._idle.values())
    # everything still works
    assert gbucket.get("v:05").value == SMALL["v:05"]
    assert len(list(gbucket.analytics_query("SELECT VALUE d.n FROM big d"))) == BIG_COUNT
    assert list(gbucket.analytics_query("SELECT VALUE d.n FROM small d WHERE d.n = 9")) == [9]


def test_gevent_timeout_cancels_the_request(gbucket: GBucket) -> None:
    rows = iter(gbucket.analytics_query("SELECT VALUE d FROM big d"))
    got: List[Any] = [next(rows)]  # the rows are coming
    # the rest would take 30 s at this pace: far longer than the timeout, on any machine
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.2):
            for row in rows:
                got.append(row)
                gevent.sleep(0.01)
    assert 0 < len(got) < BIG_COUNT
    assert gbucket.analytics_query("SELECT COUNT(*) AS c FROM small").get_single_result() == {"c": 30}


# ---------------------------------------------------------------------------
# async bucket, on the select loop and the gevent hub


class Recording(AsyncAnalyticsRequest):
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

    @property
    def rows(self) -> List[Any]:
        return [r for kind, batch in self.events if kind == "rows" for r in batch]


@contextmanager
def async_bucket(kind: str, connstr: str) -> Iterator[Tuple[AsyncBucket, Callable[..., None]]]:
    """A connected AsyncBucket on the select IOPS or the gevent IOPS, and a
    ``run_until(predicate)`` that drives its loop."""
    if kind == "select":
        iops: Any = SelectIOPS()

        def step() -> None:
            iops.run_once(0.02)
    else:
        iops = GeventIOPS()

        def step() -> None:
            gevent.sleep(0.005)

    def run_until(done: Callable[[], bool], timeout: float = LONG) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the %s loop never got there" % kind
            step()

    b = AsyncBucket(iops, connstr, n1ql_timeout=LONG, **ADMIN)
    connected: List[Any] = []
    b.on_connect(connected.append)
    run_until(lambda: connected)
    assert connected == [None]
    try:
        yield b, run_until
    finally:
        b.close()
        if kind == "select":
            iops.run_once(0)


@pytest.mark.parametrize("kind", ["select", "gevent"])
def test_async_rows_params_meta(cluster: MockCluster, kind: str) -> None:
    with async_bucket(kind, cluster.connstr_for("default")) as (b, run_until):
        req = b.analytics_query("SELECT VALUE d.n FROM small d WHERE d.n >= ? AND d.grp = $g ORDER BY d.n",
                                None, 20, g=0, itercls=Recording)
        assert isinstance(req, Recording)
        req.start()
        run_until(lambda: req.ended)
        assert req.events[-1] == ("done", None)
        assert req.rows == [21, 24, 27]
        assert req.meta["status"] == "success" and req.metrics["resultCount"] == 3

        big = b.analytics_query("SELECT VALUE d.n FROM big d", itercls=Recording).start()
        run_until(lambda: big.ended)
        assert big.events[-1] == ("done", None)
        assert sorted(big.rows) == list(range(BIG_COUNT))


@pytest.mark.parametrize("kind", ["select", "gevent"])
def test_async_errors(cluster: MockCluster, kind: str) -> None:
    with async_bucket(kind, cluster.connstr_for("default")) as (b, run_until):
        req = b.analytics_query(AnalyticsQuery("SELECT * FROM missing_ds"), itercls=Recording).start()
        run_until(lambda: req.ended)
        assert [kind for kind, _ in req.events] == ["error"]
        exc = req.events[0][1]
        assert isinstance(exc, AnalyticsError) and exc.code == 24045
        plain = b.analytics_query("SELECT VALUE 1")
        assert type(plain) is AsyncAnalyticsRequest
        with pytest.raises(TypeError):
            iter(plain)
        with pytest.raises(NotSupportedError):
            b.analytics_query(DeferredAnalyticsQuery("SELECT VALUE 1"))
        with pytest.raises(ArgumentError):
            b.analytics_query("SELECT VALUE 1", itercls=AnalyticsRequest)


# ---------------------------------------------------------------------------
# nodes: the config, a preferred node that is down, TLS


def test_config_lists_the_analytics_endpoints() -> None:
    from couchbase_core._engine.config import BucketConfig

    raw = {"rev": 1, "name": "b", "nodeLocator": "vbucket",
           "vBucketServerMap": {"serverList": ["h1:11210", "h2:11210"], "numReplicas": 0,
                                "vBucketMap": [[0], [1]]},
           "nodesExt": [{"hostname": "h1", "services": {"kv": 11210, "kvSSL": 11207, "cbas": 8095,
                                                        "cbasSSL": 18095}},
                        {"hostname": "h2", "services": {"kv": 11210, "kvSSL": 11207, "n1ql": 8093}}]}
    assert BucketConfig.parse(raw, "h1").service_endpoints("cbas") == [("h1", 8095)]
    assert BucketConfig.parse(raw, "h1", tls=True).service_endpoints("cbas", tls=True) == [("h1", 18095)]


def test_a_preferred_node_that_is_down_is_passed_over(bucket: Bucket, cluster: MockCluster,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ports = cbas_ports(cluster)
    firsts = first_targets(bucket, monkeypatch)
    cluster.stop_node(1)
    try:
        got = list(bucket.analytics_query("SELECT VALUE d.n FROM small d WHERE d.n < 2 ORDER BY d.n",
                                          "127.0.0.1:%d" % ports[1]))
    finally:
        cluster.restart_node(1)
    assert got == [0, 1]
    assert firsts == [("127.0.0.1", ports[1])]  # tried first, refused, then the other node answered


def test_over_tls() -> None:
    with MockCluster(nodes=1, tls=True) as c:
        b = Bucket("%s/default?certpath=%s" % (c.info["connstr_tls"], c.ca_cert), operation_timeout=LONG,
                   n1ql_timeout=LONG, **ADMIN)
        try:
            b.upsert_multi({"t:%d" % i: {"t": i} for i in range(5)})
            b.analytics_query("CREATE DATASET ts ON `default`; CONNECT LINK Local").execute()
            tls_port = c.refresh()["nodes"][0]["ports"]["cbasSSL"]
            assert b._engine.config.service_endpoints("cbas", tls=True) == [("127.0.0.1", tls_port)]
            got = list(b.analytics_query("SELECT VALUE d.t FROM ts d WHERE d.t >= ? ORDER BY d.t", None, 3))
            assert got == [3, 4]
            assert {conn.port for conn in b._engine.http_connections} == {tls_port}
        finally:
            b.close()

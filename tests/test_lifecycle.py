"""Bucket lifecycle: a bucket dropped after any operation is collected and
its sockets are closed; the gevent bucket's close future fires on close()
and on collection.

Each case runs one kind of operation on a fresh bucket of one flavour
against an emulated cluster of its own (so the server-side connection
counts belong to this module alone), drops the bucket, and then checks:

* the bucket object is gone (a weak reference to it is dead after
  ``gc.collect()``; the gevent flavour may need the hub to unwind the
  callback that woke the caller, so it gets a bounded number of turns,
  each a wait on the close future);
* the emulator sees every connection of that bucket closed (a bounded
  poll of its ``connections`` count).
"""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List

import gevent
import gevent.event
import pytest

from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import TimeoutError
from couchbase_core.mock import MockCluster
from gcouchbase.bucket import Bucket as GBucket
from tests.flavours import AsyncDriver

ADMIN = {"username": "Administrator", "password": "password"}
LONG = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    """Two nodes, a view and a primary index, for every case of this module."""
    with MockCluster(nodes=2, replicas=1) as c:
        b = Bucket(c.connstr_for("default"), operation_timeout=LONG, **ADMIN)
        try:
            b.upsert_multi({"life:%d" % i: {"i": i} for i in range(10)})
            mgr = b.bucket_manager()
            mgr.design_create("life", {"views": {"v": {"map": "function (doc) { emit(doc.i, null); }"}}},
                              use_devmode=False, syncwait=60)
            mgr.n1ql_index_create_primary()
            assert list(b.query("life", "v", stale=False, limit=1))
        finally:
            b.close()
        yield c


def open_connections(cluster: MockCluster) -> int:
    """Client connections the emulator's nodes hold open."""
    return sum(node.get("connections", 0) for node in cluster.refresh()["nodes"])


def wait_for_connections(cluster: MockCluster, expected: int, limit: float = 20.0) -> int:
    """Poll (bounded) until the emulator reports ``expected`` open connections."""
    deadline = time.monotonic() + limit
    count = open_connections(cluster)
    while count != expected and time.monotonic() < deadline:
        gevent.sleep(0.05)
        count = open_connections(cluster)
    return count


# ------------------------------------------------------------------ operations


def op_kv(b: Any, cluster: MockCluster) -> None:
    b.upsert("life:kv", {"v": 1})
    assert b.get("life:kv").value == {"v": 1}


def op_multi(b: Any, cluster: MockCluster) -> None:
    b.upsert_multi({"life:m1": 1, "life:m2": 2})
    assert {k: r.value for k, r in b.get_multi(["life:m1", "life:m2"]).items()} == {"life:m1": 1, "life:m2": 2}


def _async_rows(driver: AsyncDriver, request: Any) -> List[Any]:
    """Run an AsyncViewBase / AsyncN1QLRequest to its end on the driver's loop."""
    rows: List[Any] = []
    ended: List[Any] = []
    request.on_rows = rows.extend
    request.on_done = lambda: ended.append(None)
    request.on_error = ended.append
    request.start()
    driver._run_until(lambda: ended, 60)
    assert ended == [None]
    return rows


def op_view(b: Any, cluster: MockCluster) -> None:
    if isinstance(b, AsyncDriver):
        from couchbase_core.asynchronous.view import AsyncViewBase

        rows = _async_rows(b, b.raw.query("life", "v", stale="ok", itercls=AsyncViewBase))
    else:
        rows = list(b.query("life", "v", stale="ok"))
    assert sorted(r.key for r in rows)[:3] == [0, 1, 2]


def op_n1ql_iterate(b: Any, cluster: MockCluster) -> None:
    if isinstance(b, AsyncDriver):
        from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest

        assert _async_rows(b, b.raw.n1ql_query("SELECT 1 AS x", itercls=AsyncN1QLRequest)) == [{"x": 1}]
        return
    assert list(b.n1ql_query("SELECT 1 AS x")) == [{"x": 1}]


def op_n1ql_single(b: Any, cluster: MockCluster) -> None:
    assert b.n1ql_query("SELECT 2 AS y").get_single_result() == {"y": 2}


def op_n1ql_prepared(b: Any, cluster: MockCluster) -> None:
    from couchbase_core.n1ql import N1QLQuery

    q = N1QLQuery("SELECT 3 AS z")
    q.adhoc = False
    assert b.n1ql_query(q).get_single_result() == {"z": 3}


def op_pipeline(b: Any, cluster: MockCluster) -> None:
    with b.pipeline():
        b.upsert("life:p", 5)
        b.get("life:p")


def op_durability(b: Any, cluster: MockCluster) -> None:
    assert b.upsert("life:d", 7, persist_to=1, replicate_to=1).success


def op_timeout(b: Any, cluster: MockCluster) -> None:
    b.timeout = 0.2
    cluster.delay(2.0)
    try:
        with pytest.raises(TimeoutError):
            b.get("life:kv")
    finally:
        cluster.clear_faults()


def op_killed_greenlet(b: Any, cluster: MockCluster) -> None:
    started = gevent.event.Event()

    def park() -> None:
        started.set()
        b.get("life:kv")

    cluster.delay(1.0)
    try:
        g = gevent.spawn(park)
        started.wait(10)
        gevent.sleep(0)  # the greenlet is parked on its get
        g.kill()
        assert g.dead
    finally:
        cluster.clear_faults()
    b.upsert("life:after-kill", 1)


OPS: Dict[str, Callable[[Any, MockCluster], None]] = {
    "kv": op_kv, "multi": op_multi, "view": op_view, "n1ql_iterate": op_n1ql_iterate,
    "n1ql_single": op_n1ql_single, "n1ql_prepared": op_n1ql_prepared, "pipeline": op_pipeline,
    "durability": op_durability, "timeout": op_timeout, "killed_greenlet": op_killed_greenlet,
}

#: Operations of the async flavour, driven through its callbacks (views and
#: N1QL through AsyncViewBase / AsyncN1QLRequest).
ASYNC_OPS = ("kv", "multi", "view", "n1ql_iterate", "durability", "timeout")


def _cases() -> List[Any]:
    out = []
    for name in OPS:
        out.append(pytest.param("gevent", name, id="gevent-%s" % name))
        if name != "killed_greenlet":
            out.append(pytest.param("blocking", name, id="blocking-%s" % name))
        if name in ASYNC_OPS:
            out.append(pytest.param("async", name, id="async-%s" % name))
    return out


def _collect(ref: "weakref.ref[Any]", turn: Callable[[], None], tries: int = 50) -> None:
    """``gc.collect()`` until ``ref`` is dead, calling ``turn`` between tries."""
    for _ in range(tries):
        gc.collect()
        if ref() is None:
            return
        turn()
    raise AssertionError("the bucket is still alive: referrers %r" % ([type(r) for r in gc.get_referrers(ref())],))


@pytest.mark.parametrize("flavour,op", _cases())
def test_bucket_collected_and_disconnected(cluster: MockCluster, flavour: str, op: str) -> None:
    # Nothing else uses this cluster: once earlier cases are done it holds
    # no connection (a leak of an earlier case shows up here as well).
    baseline = wait_for_connections(cluster, 0)
    connstr = cluster.connstr_for("default")
    future = None
    if flavour == "gevent":
        b: Any = GBucket(connstr, operation_timeout=LONG, **ADMIN)
        future = b._get_close_future()
        ref = weakref.ref(b)
    elif flavour == "blocking":
        b = Bucket(connstr, operation_timeout=LONG, **ADMIN)
        ref = weakref.ref(b)
    else:
        b = AsyncDriver(connstr, operation_timeout=LONG, **ADMIN)
        ref = weakref.ref(b.raw)
    OPS[op](b, cluster)
    assert open_connections(cluster) > baseline
    del b

    if future is not None:
        _collect(ref, lambda: future.wait(0.2))
        assert future.wait(10), "the close future did not fire when the bucket was collected"
    else:
        _collect(ref, lambda: None, tries=3)
    assert wait_for_connections(cluster, baseline) == baseline


def test_close_future_fires_on_close(cluster: MockCluster) -> None:
    b = GBucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    future = b._get_close_future()
    assert isinstance(future, gevent.event.Event)
    assert not future.is_set()
    b.upsert("life:close", 1)
    b.close()
    assert future.wait(10)
    # A future asked for after the close has fired already.
    assert b._get_close_future().is_set()


def test_close_future_wakes_a_waiting_greenlet(cluster: MockCluster) -> None:
    b = GBucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    future = b._get_close_future()
    woke: List[bool] = []
    waiter = gevent.spawn(lambda: woke.append(future.wait(10)))
    gevent.sleep(0)
    assert not woke
    b.n1ql_query("SELECT 1 AS x").get_single_result()
    b.close()
    waiter.join(10)
    assert woke == [True]


def test_dtorcb_hook_runs_on_collection(cluster: MockCluster) -> None:
    """The 2.x hook: ``_dtorcb`` set on the bucket runs when it goes away."""
    calls: List[int] = []
    b = GBucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    b._dtorcb = lambda *args: calls.append(1)
    ref = weakref.ref(b)
    b.get("life:kv", quiet=True)
    del b
    _collect(ref, lambda: gevent.sleep(0.01))
    assert calls == [1]


@pytest.mark.parametrize("op", ["view", "n1ql_iterate", "n1ql_single"])
def test_row_stream_keeps_no_bucket_alive_from_the_hub(cluster: MockCluster, op: str) -> None:
    """The regression: the hub's stack still holds the callback frames that
    woke the greenlet when the query ends; they must not keep the bucket.
    So the bucket dies at the first ``gc.collect()``, before any hub turn."""
    b = GBucket(cluster.connstr_for("default"), operation_timeout=LONG, **ADMIN)
    future = b._get_close_future()
    OPS[op](b, cluster)
    ref = weakref.ref(b)
    del b
    gc.collect()
    assert ref() is None
    assert future.is_set()


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_http_bootstrapped_bucket_closes_its_config_stream(cluster: MockCluster, flavour: str) -> None:
    """A bucket bootstrapped over HTTP keeps a config stream open (the
    server only writes to it when the config changes); dropping the bucket
    closes it too, and the server sees it go."""
    wait_for_connections(cluster, 0)
    mgmt = cluster.info["nodes"][0]["ports"]["mgmt"]
    connstr = "couchbase://127.0.0.1:%d=http/default?bootstrap_on=http" % mgmt
    b: Any = (GBucket if flavour == "gevent" else Bucket)(connstr, operation_timeout=LONG, **ADMIN)
    b.upsert("life:http", 1)
    assert open_connections(cluster) >= 2  # the stream and a KV connection
    ref = weakref.ref(b)
    del b
    _collect(ref, lambda: gevent.sleep(0.05), tries=20)
    assert wait_for_connections(cluster, 0) == 0

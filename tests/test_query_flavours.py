"""One N1QL request machine, three flavours: the blocking bucket and the
gevent bucket (iterating ``N1QLRequest``) and the AsyncBucket
(``AsyncN1QLRequest`` callbacks) must send the same requests and end the
same way, against the emulator running in this process (so the test can see
and rewrite what the query service receives).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import gevent
import pytest

from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest
from couchbase_core.bucket import Bucket
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.mock import MockCluster
from couchbase_core.mock import httpd as mock_httpd
from couchbase_core.n1ql import N1QLError, N1QLQuery, prepared_cache
from gcouchbase.bucket import Bucket as GBucket

ADMIN = {"username": "Administrator", "password": "password"}
FLAVOURS = ["blocking", "gevent", "async"]
STATEMENT = "SELECT RAW n FROM `default` WHERE kind = 'q' AND n >= $1 ORDER BY n"


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=1, replicas=0, in_process=True) as mock:
        b = Bucket(mock.connstr_for("default"), operation_timeout=30, **ADMIN)
        try:
            b.upsert_multi({"q:%d" % i: {"kind": "q", "n": i} for i in range(6)})
            b.bucket_manager().n1ql_index_create_primary()
        finally:
            b.close()
        yield mock


@pytest.fixture
def query_log(monkeypatch):
    """What the query service receives: the JSON body of every
    ``/query/service`` request, in order."""
    bodies: List[Dict[str, Any]] = []
    original = mock_httpd.Router.dispatch

    async def dispatch(self: Any, request: Any) -> Any:
        if request.path == "/query/service":
            bodies.append(json.loads(request.body))
        return await original(self, request)

    monkeypatch.setattr(mock_httpd.Router, "dispatch", dispatch)
    return bodies


def what_was_sent(bodies: List[Dict[str, Any]]) -> List[str]:
    """Each request as "PREPARE", "prepared:<name>" or "adhoc"."""
    out = []
    for body in bodies:
        if body.get("statement", "").startswith("PREPARE "):
            out.append("PREPARE")
        elif "prepared" in body:
            out.append("prepared:%s" % body["prepared"])
        else:
            out.append("adhoc")
    return out


class Recording(AsyncN1QLRequest):
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
    """A bucket of one flavour and a way to run a query to its end:
    ``run(query)`` returns (rows, exception or None)."""

    def __init__(self, kind: str, connstr: str) -> None:
        self.kind = kind
        if kind == "blocking":
            self.bucket: Any = Bucket(connstr, operation_timeout=30, **ADMIN)
        elif kind == "gevent":
            self.bucket = GBucket(connstr, operation_timeout=30, **ADMIN)
        else:
            self.iops = SelectIOPS()
            self.bucket = AsyncBucket(self.iops, connstr, **ADMIN)
            connected: List[Any] = []
            self.bucket.on_connect(connected.append)
            self._loop_until(lambda: connected)
            assert connected == [None]

    def _loop_until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the loop never got there"
            self.iops.run_once(0.02)

    def run(self, query: N1QLQuery) -> Tuple[List[Any], Optional[BaseException]]:
        if self.kind != "async":
            rows: List[Any] = []
            try:
                with gevent.Timeout(60):
                    for row in self.bucket.n1ql_query(query):
                        rows.append(row)
            except N1QLError as exc:
                return rows, exc
            return rows, None
        req = self.bucket.n1ql_query(query, itercls=Recording).start()
        self._loop_until(lambda: req.outcome is not None)
        self.iops.run_once(0.05)  # nothing may follow the end
        assert req.endings == 1
        return req.rows, req.outcome[1]

    def close(self) -> None:
        self.bucket.close()
        if self.kind == "async":
            self.iops.run_once(0)


@pytest.fixture(params=FLAVOURS)
def flavour(request, cluster):
    made = Flavour(request.param, cluster.connstr_for("default"))
    yield made
    made.close()


def prepared(*args: Any) -> N1QLQuery:
    q = N1QLQuery(STATEMENT, *args)
    q.adhoc = False
    return q


def test_adhoc_rows_and_errors_are_the_same_in_every_flavour(flavour, query_log):
    rows, error = flavour.run(N1QLQuery(STATEMENT, 3))
    assert rows == [3, 4, 5] and error is None
    rows, error = flavour.run(N1QLQuery("SELEC nothing"))
    assert rows == [] and isinstance(error, N1QLError) and error.code == 3000
    assert what_was_sent(query_log) == ["adhoc", "adhoc"]


def test_prepared_once_then_by_name_in_every_flavour(flavour, query_log):
    rows, error = flavour.run(prepared(4))
    assert (rows, error) == ([4, 5], None)
    name = prepared_cache(flavour.bucket).get(STATEMENT)["name"]
    rows, error = flavour.run(prepared(5))
    assert (rows, error) == ([5], None)
    assert what_was_sent(query_log) == ["PREPARE", "prepared:" + name, "prepared:" + name]


def test_a_stale_plan_is_prepared_again_once_in_every_flavour(flavour, query_log):
    # the query node forgot the plan the bucket cached (a restart)
    prepared_cache(flavour.bucket).put(STATEMENT, {"name": "forgotten-by-the-server"})
    rows, error = flavour.run(prepared(2))
    assert (rows, error) == ([2, 3, 4, 5], None)
    fresh = prepared_cache(flavour.bucket).get(STATEMENT)["name"]
    assert fresh != "forgotten-by-the-server"
    assert what_was_sent(query_log) == ["prepared:forgotten-by-the-server", "PREPARE", "prepared:" + fresh]


def test_a_plan_stale_twice_is_one_error_after_one_reprepare_in_every_flavour(flavour, query_log, monkeypatch):
    # every execution of a prepared plan is refused as stale; PREPARE works
    original = mock_httpd.Router.dispatch

    async def dispatch(self: Any, request: Any) -> Any:
        if request.path == "/query/service" and "prepared" in json.loads(request.body):
            query_log.append(json.loads(request.body))
            return mock_httpd.json_response({"requestID": "r", "status": "fatal", "errors": [
                {"code": 4050, "msg": "Unable to decode prepared statement"}]}, 400)
        return await original(self, request)

    monkeypatch.setattr(mock_httpd.Router, "dispatch", dispatch)
    rows, error = flavour.run(prepared(0))
    assert rows == [] and isinstance(error, N1QLError) and error.code == 4050
    sent = what_was_sent(query_log)
    assert [s.split(":")[0] for s in sent] == ["PREPARE", "prepared", "PREPARE", "prepared"]


def test_a_management_call_abandoned_by_its_greenlet_closes_its_connection(cluster, monkeypatch):
    import asyncio

    original = mock_httpd.Router.dispatch

    async def dispatch(self: Any, request: Any) -> Any:
        if "/_design/slow" in request.path:
            await asyncio.sleep(30)  # longer than anyone waits here
        return await original(self, request)

    monkeypatch.setattr(mock_httpd.Router, "dispatch", dispatch)
    b = GBucket(cluster.connstr_for("default"), operation_timeout=30, **ADMIN)
    try:
        engine = b._engine
        started: List[Tuple[Any, Any]] = []
        real = engine.http_request

        def spy(*args: Any, **kwargs: Any) -> Any:
            handle = real(*args, **kwargs)
            started.append((handle, handle.connection))
            return handle

        monkeypatch.setattr(engine, "http_request", spy)
        mgr = b.bucket_manager()
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.3):
                mgr.design_get("slow", use_devmode=False)
        (handle, conn), = started
        assert handle.done and handle.connection is None
        assert conn.state == "closed"  # half-way: closed, never pooled
        assert all(c is not conn for conns in engine.http_pool._idle.values() for c in conns)
        # the bucket goes on: KV, and HTTP on a fresh connection
        b.upsert("after", {"ok": True})
        assert b.get("after").value == {"ok": True}
        assert list(b.n1ql_query(N1QLQuery(STATEMENT, 5))) == [5]
    finally:
        b.close()

"""txcouchbase: the Twisted buckets against real memcached and the emulator.

The global reactor is never run (it could not be restarted for the next
test): :func:`wait` turns it with ``reactor.iterate()`` until a Deferred
has fired, and fails the test after a bound instead of hanging. The shared
key-value suites run over this flavour too (``txcouchbase`` in
tests/flavours.py); this file covers what only Twisted users have: Deferreds,
their cancellation, the connection events and the query helpers.
"""

from __future__ import annotations

import os
import socket
from typing import Any, List, Tuple

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from couchbase_core.analytics import AnalyticsQuery
from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest
from couchbase_core.asynchronous.view import AsyncViewBase
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.exceptions import ArgumentError, CouchbaseError, ForkError, NotFoundError
from couchbase_core.fulltext import MatchQuery
from couchbase_core.iops.base import (
    LCB_READ_EVENT,
    LCB_WRITE_EVENT,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_WATCH,
)
from couchbase_core.mock import MockCluster
from couchbase_core.n1ql import N1QLError
from couchbase_core.result import AsyncResult, MultiResult, ValueResult
from tests.flavours import TxDriver
from txcouchbase.bucket import (
    BatchedAnalyticsRequest,
    BatchedN1QLRequest,
    BatchedView,
    Bucket,
    RawBucket,
)
from txcouchbase.iops import IOPS, _Descriptor

ADMIN = {"username": "Administrator", "password": "password"}
DDOC = {"views": {"by_n": {"map": "function (doc) { if (doc.kind == 'tx') emit(doc.n, doc.n * 10); }"}}}


def settle(d: Deferred, timeout: float = 30) -> Tuple[str, Any]:
    """Turn the reactor until ``d`` fires: ("ok", result) or ("err", Failure)."""
    out: List[Tuple[str, Any]] = []
    d.addCallbacks(lambda res: out.append(("ok", res)), lambda f: out.append(("err", f)))
    TxDriver.run_until(lambda: out, timeout)
    return out[0]


def wait(d: Deferred, timeout: float = 30) -> Any:
    """The result of ``d``, or raise its error."""
    kind, value = settle(d, timeout)
    if kind == "err":
        value.raiseException()
    return value


def turn(seconds: float) -> None:
    """Let the reactor run for about ``seconds``."""
    import time

    end = time.monotonic() + seconds
    TxDriver.run_until(lambda: time.monotonic() >= end, seconds + 30)


@pytest.fixture
def txb(memcached_server):
    b = Bucket(memcached_server.connstr)
    wait(b.on_connect())
    yield b
    b.close()


# ------------------------------------------------------------------ IOPS


def test_iops_hands_a_refused_connect_to_the_engine_and_can_watch_again():
    """A refused connect is reported hung up and not readable: the reactor
    drops the descriptor and calls connectionLost, and the IOPS must pass
    the readiness on (the engine reads SO_ERROR) and forget its watch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    iops = IOPS()
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    event = iops.io_event_factory()
    event.fd = sock.fileno()
    seen: List[int] = []
    event._handler = seen.append
    try:
        iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_WRITE_EVENT)
        TxDriver.run_until(lambda: seen, 30)
        assert seen[0] & LCB_WRITE_EVENT
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        seen.clear()
        iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_WRITE_EVENT)  # registered anew, no error
        TxDriver.run_until(lambda: seen, 30)
        assert seen and seen[0] & LCB_WRITE_EVENT
    finally:
        iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
        sock.close()


def test_iops_survives_a_raising_handler():
    iops = IOPS()
    ours, theirs = socket.socketpair()
    event = iops.io_event_factory()
    event.fd = ours.fileno()
    calls: List[int] = []

    def boom(flags: int) -> None:
        calls.append(flags)
        raise RuntimeError("boom")

    event._handler = boom
    try:
        theirs.send(b"x")
        iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
        desc = event.pydata
        # the reactor keeps the descriptor: the still-readable socket keeps firing
        TxDriver.run_until(lambda: len(calls) >= 3, 30)
        assert desc in iops.reactor.getReaders()
    finally:
        iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
        ours.close()
        theirs.close()
    assert desc not in iops.reactor.getReaders() and event.pydata is None


class _RunningReactor:
    """The global reactor as seen by an IOPS that believes it runs (the
    tests only turn it), with its own name resolver."""

    running = True

    def __init__(self, resolver: Any) -> None:
        self.nameResolver = resolver

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _ScriptedResolver:
    """A nameResolver that answers at once, inside resolveHostName, with
    the given addresses (none: the name does not resolve)."""

    def __init__(self, addresses: List[Any]) -> None:
        self.addresses = addresses

    def resolveHostName(self, receiver: Any, host: str, port: int = 0, *args: Any, **kwargs: Any) -> Any:
        receiver.resolutionBegan(None)
        for address in self.addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()
        return None


def test_iops_resolves_names_on_the_thread_pool_while_the_reactor_turns():
    """A lookup that takes its time holds neither the reactor nor the
    caller: timers fire meanwhile, and the answer arrives as getaddrinfo
    entries, from the reactor."""
    import threading

    from twisted.internet._resolver import GAIResolver
    from twisted.python.threadpool import ThreadPool

    release = threading.Event()
    asked: List[Tuple[str, int]] = []

    def slow_getaddrinfo(host: str, port: int, *args: Any) -> Any:
        asked.append((host, port))
        assert release.wait(30)
        return socket.getaddrinfo("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)

    pool = ThreadPool(1, 1, "resolver-test")
    pool.start()
    try:
        iops = IOPS(_RunningReactor(GAIResolver(reactor, lambda: pool, slow_getaddrinfo)))
        got: List[Any] = []
        iops.resolve("db.example", 11210, lambda infos, error: got.append((infos, error)))
        assert got == []
        ticks: List[int] = []
        for n in range(3):
            reactor.callLater(0, ticks.append, n)
        TxDriver.run_until(lambda: len(ticks) == 3 and asked, 30)
        assert got == []  # the reactor turned while the lookup waited
        release.set()
        TxDriver.run_until(lambda: got, 30)
    finally:
        release.set()
        pool.stop()
    infos, error = got[0]
    assert asked == [("db.example", 11210)]
    assert error is None
    assert infos == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 11210))]


def test_iops_resolve_reports_v6_addresses_and_never_inside_the_call():
    from twisted.internet.address import IPv4Address, IPv6Address

    iops = IOPS(_RunningReactor(_ScriptedResolver([IPv6Address("TCP", "::1", 11210, 0, 0),
                                                   IPv4Address("TCP", "127.0.0.1", 11210)])))
    got: List[Any] = []
    iops.resolve("db.example", 11210, lambda infos, error: got.append((infos, error)))
    assert got == []  # the resolver answered inside the call; the engine hears it later
    TxDriver.run_until(lambda: got, 30)
    infos, error = got[0]
    assert error is None
    assert [(info[0], info[4]) for info in infos] == [(socket.AF_INET6, ("::1", 11210, 0, 0)),
                                                      (socket.AF_INET, ("127.0.0.1", 11210))]


def test_iops_resolve_reports_a_name_without_addresses_as_an_error():
    iops = IOPS(_RunningReactor(_ScriptedResolver([])))
    got: List[Any] = []
    iops.resolve("nothing.example", 11210, lambda infos, error: got.append((infos, error)))
    TxDriver.run_until(lambda: got, 30)
    infos, error = got[0]
    assert infos is None
    assert isinstance(error, OSError) and "nothing.example" in str(error)


def _connect_write_and_read(b: Bucket, key: str) -> None:
    """``b`` connects, writes ``key`` and reads it back; then it is closed."""
    try:
        wait(b.on_connect())
        wait(b.upsert(key, "value of " + key))
        assert wait(b.get(key)).value == "value of " + key
    finally:
        b.close()


def test_a_bucket_with_a_host_name_connects_through_the_resolver(memcached_server, unique_key):
    """The whole way: a name (not a numeric address) in the connection
    string, resolved by the reactor's resolver, then a write and a read."""
    from twisted.internet.address import IPv4Address

    port = memcached_server.port
    resolver = _ScriptedResolver([IPv4Address("TCP", "127.0.0.1", port)])
    _connect_write_and_read(Bucket("memcached://db.example:%d" % port, reactor=_RunningReactor(resolver)),
                            unique_key)


def test_before_the_reactor_runs_a_host_name_is_looked_up_directly(memcached_server, unique_key):
    """The reactor's thread pool starts with the reactor: before that (the
    global reactor here is only turned, never run), the IOPS asks
    getaddrinfo itself rather than queue the lookup behind a pool that
    is not there."""
    assert not reactor.running
    _connect_write_and_read(Bucket("memcached://localhost:%d" % memcached_server.port), unique_key)


def test_a_bucket_with_a_name_that_does_not_resolve_fails_to_connect():
    b = Bucket("memcached://nothing.example:11211", reactor=_RunningReactor(_ScriptedResolver([])))
    try:
        kind, failure = settle(b.on_connect())
        assert kind == "err"
        assert isinstance(failure.value, CouchbaseError)
        assert "nothing.example" in str(failure.value)
    finally:
        b.close()


# ------------------------------------------------------------- key-value


def test_operations_return_deferreds_fired_with_the_results(txb, unique_key):
    d = txb.upsert(unique_key + "a", {"n": 1})
    assert isinstance(d, Deferred)
    assert wait(d).success
    res = wait(txb.get(unique_key + "a"))
    assert isinstance(res, ValueResult) and res.value == {"n": 1}
    many = wait(txb.upsert_multi({unique_key + "b": 2, unique_key + "c": 3}))
    assert isinstance(many, MultiResult) and many.all_ok
    got = wait(txb.getMulti([unique_key + "b", unique_key + "c"]))  # the 2.x camel-case alias
    assert {k: r.value for k, r in got.items()} == {unique_key + "b": 2, unique_key + "c": 3}


def test_failures_reach_the_errback_as_the_blocking_exception(txb, unique_key):
    kind, failure = settle(txb.get(unique_key + "missing"))
    assert kind == "err" and isinstance(failure, Failure)
    assert failure.check(NotFoundError) and failure.value.key == unique_key + "missing"
    # quiet: a result with success False, on the callback
    assert wait(txb.get(unique_key + "missing", quiet=True)).success is False
    kind, failure = settle(txb.get_multi([unique_key + "missing", unique_key + "other"]))
    assert kind == "err" and failure.check(NotFoundError)
    assert set(failure.value.all_results) == {unique_key + "missing", unique_key + "other"}


def test_bad_arguments_raise_at_the_call(txb):
    with pytest.raises(ArgumentError):
        txb.get("")
    with pytest.raises(ArgumentError):
        txb.upsert("k" * 251, 1)


def test_rawbucket_returns_asyncresults_and_defer_converts_them(memcached_server, unique_key):
    b = RawBucket(memcached_server.connstr)
    try:
        ar = b.upsert(unique_key, "raw")
        assert isinstance(ar, AsyncResult)
        assert wait(b.defer(ar)).success
        assert wait(b.defer(b.get(unique_key))).value == "raw"
        kind, failure = settle(b.defer(b.insert(unique_key, "again")))
        assert kind == "err" and failure.check(CouchbaseError)
    finally:
        b.close()


def test_a_pipeline_block_sends_its_operations_together(txb, unique_key):
    with txb.pipeline():
        stored = txb.upsert(unique_key, "piped")
        got = txb.get(unique_key)
        turn(0.05)
        assert not stored.called and not got.called  # held until the block ends
    assert wait(stored).success and wait(got).value == "piped"


def test_stats_result_holds_the_report(txb):
    res = wait(txb.stats())
    assert isinstance(res, AsyncResult) and res.value and all(isinstance(v, dict) for v in res.value.values())


# ---------------------------------------------------------- connect events


def test_on_connect_fires_with_the_bucket_and_connect_with_none(memcached_server):
    b = Bucket(memcached_server.connstr)
    try:
        d1, d2 = b.on_connect(), b.connect()
        assert not d1.called  # the bootstrap ends from the reactor, never inside the call
        assert wait(d1) is b and wait(d2) is None
        assert b.connected
        # after the fact: fired on a later reactor turn
        late = Deferred()
        b.registerDeferred("connect", late)
        assert not late.called
        assert wait(late) is None
        with pytest.raises(ValueError):
            b.registerDeferred("no-such-event", Deferred())
    finally:
        b.close()


def test_a_failed_bootstrap_fails_the_connect_deferreds_and_pending_operations():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = Bucket("memcached://127.0.0.1:%d" % port, config_total_timeout=5)
    try:
        pending = b.get("k")
        kind, failure = settle(b.on_connect())
        assert kind == "err" and failure.check(CouchbaseError)
        kind, failure = settle(pending)
        assert kind == "err" and failure.check(CouchbaseError)
    finally:
        b.close()


def test_the_dtor_event_fires_on_close(memcached_server):
    b = Bucket(memcached_server.connstr)
    wait(b.on_connect())
    d = Deferred()
    b.registerDeferred("_dtor", d)
    assert not d.called
    b.close()
    assert not d.called  # fired from the reactor, not inside close()
    assert wait(d) is None
    late = Deferred()
    b.registerDeferred("_dtor", late)
    assert wait(late) is None


def test_the_dtor_event_fires_when_an_unclosed_bucket_is_collected(memcached_server):
    import gc

    b = Bucket(memcached_server.connstr)
    wait(b.on_connect())
    d = Deferred()
    b.registerDeferred("_dtor", d)
    del b
    gc.collect()
    assert wait(d) is None


def test_operations_issued_before_the_bootstrap_go_out_once_connected(memcached_server, unique_key):
    b = Bucket(memcached_server.connstr)
    try:
        d = b.upsert(unique_key, "early")
        assert wait(d).success
        assert wait(b.get(unique_key)).value == "early"
    finally:
        b.close()


def _our_descriptors() -> int:
    return sum(isinstance(x, _Descriptor) for x in set(reactor.getReaders()) | set(reactor.getWriters()))


def test_a_bucket_dropped_without_close_is_collected_and_leaves_the_reactor(memcached_server):
    import gc
    import weakref

    before = _our_descriptors()
    b = Bucket(memcached_server.connstr)
    wait(b.on_connect())
    assert _our_descriptors() > before
    ref = weakref.ref(b)
    del b
    gc.collect()
    assert ref() is None
    assert _our_descriptors() == before


# ---------------------------------------------------------- cancellation


def _cancelled(d: Deferred) -> None:
    kind, failure = settle(d)
    assert kind == "err" and failure.check(CancelledError), failure


def test_cancel_withdraws_an_unwritten_request(memcached_server, unique_key):
    # Issued before the bootstrap ended, the request waits in the engine:
    # cancelled there, the server never sees it.
    b = Bucket(memcached_server.connstr)
    try:
        d = b.upsert(unique_key + "never", "x")
        d.cancel()
        _cancelled(d)
        wait(b.on_connect())
        assert wait(b.upsert(unique_key + "after", "y")).success
        assert wait(b.get(unique_key + "never", quiet=True)).success is False
        assert wait(b.get(unique_key + "after")).value == "y"
    finally:
        b.close()


def test_cancel_inside_a_pipeline_block_withdraws_the_operation(txb, unique_key):
    with txb.pipeline():
        dropped = txb.upsert(unique_key + "dropped", "x")
        kept = txb.upsert(unique_key + "kept", "y")
        dropped.cancel()
    _cancelled(dropped)
    assert wait(kept).success
    assert wait(txb.get(unique_key + "dropped", quiet=True)).success is False


def _written_get(b: Bucket, key: str) -> Tuple[Deferred, Any]:
    """A get whose request has left for the server: (its Deferred, its op)."""
    ar = RawBucket.get(b, key)
    d = b.defer(ar)
    (op,) = ar._txops
    TxDriver.run_until(lambda: op.written and op.wire is None, 30)
    return d, op


def test_cancel_drops_the_reply_of_a_written_request_memcached(fresh_memcached, unique_key):
    b = Bucket(fresh_memcached.connstr, operation_timeout=30)
    try:
        wait(b.on_connect())
        wait(b.upsert_multi({unique_key + "a": "A", unique_key + "b": "B"}))
        fresh_memcached.pause()  # holds every reply
        try:
            first, op = _written_get(b, unique_key + "a")
            conn = op.conn
            assert not first.called and op in conn.pending.values()
            first.cancel()
            _cancelled(first)
            assert op not in conn.pending.values()
            second, op2 = _written_get(b, unique_key + "b")
            many = b.get_multi([unique_key + "a", unique_key + "b"])
            many.cancel()
            _cancelled(many)
        finally:
            fresh_memcached.resume()
        # the cancelled replies are read and dropped: the next one is in step,
        # on the same connection (nothing was torn down)
        assert wait(second).value == "B"
        assert op2.conn is conn
        assert wait(b.get(unique_key + "a")).value == "A"
    finally:
        b.close()


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=1, replicas=0, in_process=True) as mock:
        b = BlockingBucket(mock.connstr_for("default"), operation_timeout=30, **ADMIN)
        try:
            b.upsert_multi({"tx:%d" % i: {"kind": "tx", "n": i} for i in range(5)})
            mgr = b.bucket_manager()
            mgr.design_create("tx", DDOC, use_devmode=False, syncwait=60)
            mgr.n1ql_index_create_primary(ignore_exists=True)
        finally:
            b.close()
        yield mock


@pytest.fixture
def ctxb(cluster):
    b = Bucket(cluster.connstr_for("default"), operation_timeout=30, **ADMIN)
    wait(b.on_connect())
    yield b
    b.close()


def test_cancel_drops_the_reply_of_a_written_request_emulator(cluster, ctxb):
    cluster.delay(2.0)  # every reply held that long
    try:
        first, op = _written_get(ctxb, "tx:1")
        assert not first.called
        first.cancel()
        _cancelled(first)
        second, op2 = _written_get(ctxb, "tx:2")
        assert wait(second).value == {"kind": "tx", "n": 2}
        assert op2.conn is op.conn and op not in op.conn.pending.values()
    finally:
        cluster.clear_faults()
    assert wait(ctxb.get("tx:1")).value == {"kind": "tx", "n": 1}


# -------------------------------------------------------------- queries


def test_query_all_fires_with_every_row(ctxb):
    view = wait(ctxb.queryAll("tx", "by_n", stale=False))
    assert isinstance(view, BatchedView)
    assert [(r.key, r.value, r.docid) for r in view] == [(i, i * 10, "tx:%d" % i) for i in range(5)]
    docs = wait(ctxb.queryAll("tx", "by_n", stale=False, include_docs=True, limit=2))
    assert [r.doc.value for r in docs] == [{"kind": "tx", "n": 0}, {"kind": "tx", "n": 1}]


def test_query_ex_streams_rows_to_the_handler_class(ctxb):
    class Rows(AsyncViewBase):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.rows: List[Any] = []
            self.ended: Deferred = Deferred()

        def on_rows(self, rows: List[Any]) -> None:
            self.rows.extend(rows)

        def on_error(self, ex: BaseException) -> None:
            self.ended.errback(Failure(ex))

        def on_done(self) -> None:
            self.ended.callback(None)

    view = ctxb.queryEx(Rows, "tx", "by_n", stale=False, limit=3)
    assert isinstance(view, Rows) and view.started
    wait(view.ended)
    assert [r.key for r in view.rows] == [0, 1, 2]


def test_n1ql_query_all_and_ex(ctxb):
    req = wait(ctxb.n1qlQueryAll("SELECT RAW n FROM `default` WHERE kind = 'tx' AND n >= $1 ORDER BY n", 2))
    assert isinstance(req, BatchedN1QLRequest) and list(req) == [2, 3, 4]
    assert req.meta.get("status") == "success"
    kind, failure = settle(ctxb.n1qlQueryAll("SELEC nothing"))
    assert kind == "err" and failure.check(N1QLError)

    class Collect(AsyncN1QLRequest):
        got: List[Any] = []
        done: Deferred = Deferred()

        def on_rows(self, rows: List[Any]) -> None:
            self.got = self.got + rows

        def on_done(self) -> None:
            Collect.done.callback(self.got)

        def on_error(self, ex: BaseException) -> None:
            Collect.done.errback(Failure(ex))

    ctxb.n1qlQueryEx(Collect, "SELECT RAW n FROM `default` WHERE kind = 'tx' ORDER BY n LIMIT 2")
    assert wait(Collect.done) == [0, 1]


def test_a_query_issued_before_the_bootstrap_starts_once_connected(cluster):
    b = Bucket(cluster.connstr_for("default"), operation_timeout=30, **ADMIN)
    try:
        d = b.n1qlQueryAll("SELECT RAW n FROM `default` WHERE kind = 'tx' ORDER BY n LIMIT 3")
        view = b.queryEx(BatchedView, "tx", "by_n", stale=False, limit=1)
        assert not view.started  # waits for the cluster map
        assert list(wait(d)) == [0, 1, 2]
        assert [r.key for r in wait(view._getDeferred())] == [0]
    finally:
        b.close()


def test_cancelling_a_query_all_stops_it_and_the_bucket_goes_on(ctxb):
    d = ctxb.n1qlQueryAll("SELECT RAW n FROM `default` WHERE kind = 'tx' ORDER BY n")
    d.cancel()
    _cancelled(d)
    turn(0.2)  # nothing fires twice
    assert wait(ctxb.get("tx:0")).value == {"kind": "tx", "n": 0}
    assert list(wait(ctxb.n1qlQueryAll("SELECT RAW n FROM `default` WHERE kind = 'tx' ORDER BY n"))) == list(range(5))


def test_search_query_all(tmp_path):
    from tests.test_search import BEERS, put_index

    with MockCluster(nodes=1, replicas=0, in_process=True) as mock:
        put_index(mock, "beers")
        b = Bucket(mock.connstr_for("default"), operation_timeout=30, **ADMIN)
        try:
            wait(b.upsert_multi(BEERS))
            req = wait(b.searchQueryAll("beers", MatchQuery("stout", field="desc")))
            assert [hit["id"] for hit in req] == ["stout"]
        finally:
            b.close()


def test_analytics_query_all(cluster, ctxb):
    setup = BlockingBucket(cluster.connstr_for("default"), operation_timeout=30, **ADMIN)
    try:
        setup.analytics_query("CREATE DATASET txd ON `default` WHERE `kind` = 'tx'; CONNECT LINK Local;").execute()
    finally:
        setup.close()
    query = AnalyticsQuery("SELECT VALUE d.n FROM txd d WHERE d.n > ? ORDER BY d.n", 2)
    req = wait(ctxb.analyticsQueryAll(query, None), 60)
    assert isinstance(req, BatchedAnalyticsRequest) and list(req) == [3, 4]


# ------------------------------------------------------------------ fork


def test_a_bucket_raises_fork_error_in_a_child(txb, unique_key):
    """A Twisted reactor does not survive fork(): the IOPS has no
    after_fork, so the engine refuses every use in the child (and touches
    nothing the parent uses)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            os.close(read_end)
            try:
                txb.get(unique_key)
                word = b"no error"
            except ForkError:
                word = b"ForkError"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                word = type(exc).__name__.encode()
            os.write(write_end, word)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read()
    finally:
        os.waitpid(pid, 0)
    assert said == b"ForkError"
    assert wait(txb.upsert(unique_key, "parent")).success  # the parent goes on


# ------------------------------------------------------------------ docs


def test_documented_example_runs(memcached_server):
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "async.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    namespace: dict = {}
    exec(next(b for b in blocks if "def greet" in b), namespace)
    assert wait(namespace["greet"](memcached_server.connstr)) == ({"text": "hello"}, ["greeting"])

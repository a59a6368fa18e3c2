"""The asyncio bucket (acouchbase) against real memcached and the emulator.

The shared key-value suites run over acouchbase through tests/flavours.py;
this file checks what only an asyncio program sees: awaiting, cancellation
(which must behave like killing a greenlet: the reply read and dropped, an
unwritten request withdrawn, the connection healthy), ``async for`` over
rows with back-pressure, the loop a bucket belongs to, pipelines and forks.
Every test runs on the stock asyncio loop and on uvloop (skipped, with a
message, when uvloop is not installed).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict

import pytest

import acouchbase.iterator as aiter_mod
import couchbase_core.fulltext as FT
from acouchbase.bucket import Bucket
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.exceptions import (
    CouchbaseError,
    ForkError,
    KeyExistsError,
    NotFoundError,
    ObjectDestroyedError,
    ObjectThreadError,
)
from couchbase_core.mock import MockCluster
from couchbase_core.n1ql import N1QLError, N1QLQuery
from couchbase_core.views.iterator import AlreadyQueriedError
from tests import collected
from tests.test_search import put_index

ADMIN = {"username": "Administrator", "password": "password"}
ROWS = 1200  # documents of the row tests
PAD = "0123456789" * 40


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Callable[[Any], Any]:
    """``run(coro)``: run a coroutine to completion on a new loop of the
    parametrised kind, then close the loop."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
        new_loop = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop

    def runner(coro: Any) -> Any:
        loop = new_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, 90))  # a guard against a hang only
        finally:
            loop.close()

    return runner


async def until(cond: Callable[[], bool], what: str, guard: float = 30.0, collect: bool = False) -> None:
    """Let the loop run until ``cond()`` holds (``guard`` only bounds a hang).
    ``collect``: collect garbage meanwhile, for what happens when an object
    is collected (at once on CPython, at a collection on PyPy)."""
    deadline = time.monotonic() + guard
    while not cond():
        assert time.monotonic() < deadline, what
        if collect:
            collected.collect()
        await asyncio.sleep(0.005)


def pending(cb: Bucket) -> int:
    return sum(len(conn.pending) for conn in cb._engine.connections)


def unwritten(cb: Bucket) -> int:
    return sum(len(conn._queue) for conn in cb._engine.connections)


# ------------------------------------------------------------------ key-value


def test_every_call_is_awaitable_and_fails_as_the_blocking_api(run, memcached_server):
    async def main() -> None:
        cb = Bucket(memcached_server.connstr)
        assert await cb.connect() is True
        assert (await cb.upsert("acb:k", {"a": 1})).cas
        assert (await cb.get("acb:k")).value == {"a": 1}
        with pytest.raises(KeyExistsError):
            await cb.insert("acb:k", 2)
        with pytest.raises(NotFoundError):
            await cb.get("acb:missing")
        assert (await cb.get("acb:missing", quiet=True)).success is False
        many = await cb.upsert_multi({"acb:m1": 1, "acb:m2": 2})
        assert many.all_ok and sorted(many) == ["acb:m1", "acb:m2"]
        with pytest.raises(NotFoundError) as info:
            await cb.get_multi(["acb:m1", "acb:nothing"])
        assert info.value.all_results["acb:m1"].value == 1
        assert not info.value.all_results["acb:nothing"].success
        await cb.remove("acb:n", quiet=True)
        assert (await cb.counter("acb:n", initial=5)).value == 5
        stats = await cb.stats()
        assert isinstance(stats, dict) and stats
        got = await asyncio.gather(*(cb.get(k) for k in ("acb:m1", "acb:m2", "acb:k")))
        assert [r.value for r in got] == [1, 2, {"a": 1}]
        cb.close()
        with pytest.raises(ObjectDestroyedError):
            await cb.get("acb:k")

    run(main())


def test_operations_issued_before_connect_wait_for_the_bootstrap(run, memcached_server):
    async def main() -> None:
        cb = Bucket(memcached_server.connstr)
        stored = cb.upsert("acb:early", "first")
        assert (await stored).success
        await cb.connect()
        assert (await cb.get("acb:early")).value == "first"
        cb.close()

    run(main())


def test_a_failed_bootstrap_raises_from_connect_and_closes_the_bucket(run):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main() -> None:
        cb = Bucket("memcached://127.0.0.1:%d" % port, config_total_timeout=2)
        with pytest.raises(CouchbaseError):
            await cb.connect()
        await until(lambda: cb.closed, "the bucket was not closed after its bootstrap failed")

    run(main())


def test_a_bucket_refuses_another_running_loop(memcached_server):
    loop = asyncio.new_event_loop()
    try:
        cb = Bucket(memcached_server.connstr, loop=loop)
        loop.run_until_complete(cb.connect())

        async def elsewhere() -> None:
            with pytest.raises(ObjectThreadError):
                cb.get("acb:k")

        asyncio.run(elsewhere())
        assert loop.run_until_complete(cb.upsert("acb:home", 1)).success
        cb.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_host_names_are_resolved_through_the_loop(run, memcached_server, monkeypatch):
    from acouchbase.asyncio_iops import IOPS

    asked = []
    resolve = IOPS.resolve

    def recording(self: Any, host: str, port: int, callback: Any) -> None:
        asked.append(host)
        resolve(self, host, port, callback)

    monkeypatch.setattr(IOPS, "resolve", recording)
    port = memcached_server.connstr.rsplit(":", 1)[1]

    async def main() -> None:
        cb = Bucket("memcached://localhost:%s" % port)
        await cb.connect()
        assert (await cb.upsert("acb:resolved", 1)).success
        cb.close()

    run(main())
    assert asked == ["localhost"]


def test_a_bucket_outliving_its_loop_still_closes(memcached_server):
    loop = asyncio.new_event_loop()
    cb = Bucket(memcached_server.connstr, loop=loop)
    loop.run_until_complete(cb.connect())
    pending_op = cb.get("acb:k")
    loop.close()
    cb.close()  # no watch or timer can be set on a closed loop: nothing raises
    assert cb.closed and not pending_op.done()


def test_pipeline_futures_settle_after_the_block(run, memcached_server):
    async def main() -> None:
        cb = Bucket(memcached_server.connstr)
        await cb.connect()
        with cb.pipeline():
            stored = cb.upsert("acb:pipe", "v")
            read = cb.get("acb:pipe")
            dropped = cb.upsert("acb:pipe-dropped", "never sent")
            dropped_many = cb.upsert_multi({"acb:pipe-dropped1": 1, "acb:pipe-dropped2": 2})
            assert dropped.cancel() and dropped_many.cancel()
            assert not stored.done() and not read.done()
        assert (await stored).success and (await read).value == "v"
        assert dropped.cancelled()
        gone = await cb.get_multi(["acb:pipe-dropped", "acb:pipe-dropped1", "acb:pipe-dropped2"], quiet=True)
        assert not any(r.success for r in gone.values())
        cb.close()

    run(main())


# -------------------------------------------------------------- cancellation


def test_a_cancelled_get_has_its_reply_read_and_dropped(run, fresh_memcached):
    async def main() -> None:
        cb = Bucket(fresh_memcached.connstr)
        await cb.connect()
        await cb.upsert_multi({"acb:one": "one", "acb:two": "two"})
        fresh_memcached.pause()
        try:
            task = asyncio.ensure_future(cb.get("acb:one"))
            await until(lambda: pending(cb) == 1 and unwritten(cb) == 0, "the request was never written")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pending(cb) == 0, "the cancelled operation is still waited for"
        finally:
            fresh_memcached.resume()
        # the reply to "one" comes first and is dropped, not handed to "two"
        assert (await cb.get("acb:two")).value == "two"
        assert (await cb.get("acb:one")).value == "one"
        assert pending(cb) == 0
        cb.close()

    run(main())


def test_a_cancelled_multi_has_its_replies_dropped(run, fresh_memcached):
    async def main() -> None:
        cb = Bucket(fresh_memcached.connstr)
        await cb.connect()
        docs = {"acb:mm%d" % i: i for i in range(20)}
        await cb.upsert_multi(docs)
        fresh_memcached.pause()
        try:
            task = asyncio.ensure_future(cb.get_multi(list(docs)))
            await until(lambda: pending(cb) == 20 and unwritten(cb) == 0, "the batch was never written")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pending(cb) == 0
        finally:
            fresh_memcached.resume()
        again = await cb.get_multi(list(docs))
        assert {k: r.value for k, r in again.items()} == docs
        assert (await cb.upsert("acb:after", 1)).success
        cb.close()

    run(main())


def test_wait_for_timing_out_withdraws_the_operation(run, fresh_memcached):
    async def main() -> None:
        cb = Bucket(fresh_memcached.connstr)
        await cb.connect()
        await cb.upsert("acb:wf", "kept")
        fresh_memcached.pause()
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(cb.replace("acb:wf", "late"), 0.1)
            assert pending(cb) == 0
        finally:
            fresh_memcached.resume()
        assert (await cb.upsert("acb:wf2", 2)).success

    run(main())


def test_a_request_cancelled_before_it_is_written_never_reaches_the_server(run, memcached_server):
    async def main() -> None:
        cb = Bucket(memcached_server.connstr)
        # issued before the bootstrap: they wait in the engine, unwritten
        single = cb.upsert("acb:withdrawn", "x")
        multi = cb.upsert_multi({"acb:withdrawn1": 1, "acb:withdrawn2": 2})
        kept = cb.upsert("acb:kept", "y")
        assert single.cancel() and multi.cancel()
        await cb.connect()
        assert (await kept).success
        found = await cb.get_multi(["acb:withdrawn", "acb:withdrawn1", "acb:withdrawn2", "acb:kept"], quiet=True)
        assert {k: r.success for k, r in found.items()} == {
            "acb:withdrawn": False, "acb:withdrawn1": False, "acb:withdrawn2": False, "acb:kept": True}
        cb.close()

    run(main())


def test_cancellation_on_the_emulator_keeps_the_connection_healthy(run, couchbase_mock):
    async def main() -> None:
        cb = Bucket(couchbase_mock.connstr_for("default"), operation_timeout=30, **ADMIN)
        await cb.connect()
        docs = {"acb:e%d" % i: i for i in range(10)}
        await cb.upsert_multi(docs)
        couchbase_mock.delay(0.5)
        try:
            one = asyncio.ensure_future(cb.get("acb:e0"))
            many = asyncio.ensure_future(cb.get_multi(list(docs)))
            await until(lambda: pending(cb) == 11 and unwritten(cb) == 0, "the requests were never written")
            one.cancel()
            many.cancel()
            await asyncio.gather(one, many, return_exceptions=True)
            assert one.cancelled() and many.cancelled() and pending(cb) == 0
        finally:
            couchbase_mock.clear_faults()
        got = await cb.get_multi(list(docs))
        assert {k: r.value for k, r in got.items()} == docs
        cb.close()

    run(main())


def test_close_fails_pending_operations(run, fresh_memcached):
    async def main() -> None:
        cb = Bucket(fresh_memcached.connstr)
        await cb.connect()
        fresh_memcached.pause()
        try:
            waiting = cb.get("acb:pending")
            await asyncio.sleep(0.01)
            cb.close()
            with pytest.raises(ObjectDestroyedError):
                await waiting
        finally:
            fresh_memcached.resume()

    run(main())


def test_a_bucket_from_before_a_fork_raises_fork_error_in_the_child(memcached_server):
    from tests.test_fork import collect, fork_children

    loop = asyncio.new_event_loop()
    cb = Bucket(memcached_server.connstr, loop=loop)
    try:
        loop.run_until_complete(cb.connect())

        def child(_index: int) -> Dict[str, Any]:
            try:
                cb.get("acb:fork")
            except ForkError as exc:
                return {"raised": type(exc).__name__}
            return {"raised": None}

        assert collect(fork_children(1, child)) == [{"raised": "ForkError"}]
        assert loop.run_until_complete(cb.upsert("acb:fork", 1)).success  # the parent carries on
    finally:
        cb.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


# ----------------------------------------------------------------------- rows


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=1, replicas=0) as mock:
        b = BlockingBucket(mock.connstr_for("default"), operation_timeout=60, **ADMIN)
        try:
            b.upsert_multi({"r:%04d" % i: {"kind": "r", "n": i, "pad": PAD} for i in range(ROWS)})
            mgr = b.bucket_manager()
            mgr.design_create("aio", {"views": {"by_n": {
                "map": "function (doc) { if (doc.kind == 'r') emit(doc.n, doc.pad); }"}}},
                use_devmode=False, syncwait=60)
            assert list(b.query("aio", "by_n", stale=False, limit=1))
            mgr.n1ql_index_create_primary()
            b.upsert_multi(BEERS)
            put_index(mock, "aio-beers")
            b.analytics_query("CREATE DATASET rows ON `default` WHERE `kind` = 'r'; CONNECT LINK Local;").execute()
        finally:
            b.close()
        yield mock


BEERS = {"acb:ipa": {"desc": "hoppy pale ale"}, "acb:lager": {"desc": "clean malty lager"}}


def test_async_for_over_search_hits(run, cluster):
    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        req = cb.search("aio-beers", FT.MatchQuery("hoppy", field="desc"))
        hits = [hit async for hit in req]
        assert [h["id"] for h in hits] == ["acb:ipa"] and req.total_hits == 1
        cb.close()

    run(main())


def test_async_for_over_analytics_rows(run, cluster):
    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        req = cb.analytics_query("SELECT VALUE d.n FROM rows d WHERE d.n < ? ORDER BY d.n", None, 4)
        assert [n async for n in req] == [0, 1, 2, 3]
        assert req.meta["status"] == "success"
        cb.close()

    run(main())


STATEMENT = "SELECT RAW n FROM `default` WHERE kind = 'r' ORDER BY n"


def test_async_for_over_view_rows(run, cluster):
    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        view = cb.query("aio", "by_n", limit=25, include_docs=True)
        rows = [row async for row in view]
        assert [r.key for r in rows] == list(range(25))
        assert rows[3].docid == "r:0003" and rows[3].doc.value["n"] == 3
        assert view.indexed_rows == ROWS
        with pytest.raises(AlreadyQueriedError):
            async for _ in view:  # once only
                pass
        # the 2.x shape: await the whole result, then a plain for
        again = cb.query("aio", "by_n", limit=5)
        await again.future
        assert [r.key for r in again] == [0, 1, 2, 3, 4]
        cb.close()

    run(main())


def test_async_for_over_n1ql_rows(run, cluster):
    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        req = cb.n1ql_query(STATEMENT)
        assert [n async for n in req] == list(range(ROWS))
        assert req.meta["status"] == "success"
        prepared = N1QLQuery(STATEMENT)
        prepared.adhoc = False
        assert (await cb.n1ql_query(prepared).get_single_result()) == 0
        with pytest.raises(N1QLError):
            await cb.n1ql_query("SELEC nothing").execute()
        cb.close()

    run(main())


def test_a_slow_consumer_pauses_the_response(run, cluster, monkeypatch):
    monkeypatch.setattr(aiter_mod, "HIGH_WATER", 40)
    monkeypatch.setattr(aiter_mod, "LOW_WATER", 10)

    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        view = cb.query("aio", "by_n", stale="ok")
        rows = view.__aiter__()
        first = await rows.__anext__()
        assert first.key == 0
        await until(lambda: view._held, "the response was never paused")
        await asyncio.sleep(0.2)  # the consumer stalls: nothing more is read meanwhile
        held = view.rows_returned
        assert view._outcome is None and held < ROWS
        await asyncio.sleep(0.2)
        assert view.rows_returned == held, "rows kept arriving while the response was paused"
        rest = [row.key async for row in rows]
        assert rest == list(range(1, ROWS)) and view.indexed_rows == ROWS
        cb.close()

    run(main())


def test_a_cancelled_row_iteration_cancels_the_request_only(run, cluster, monkeypatch):
    monkeypatch.setattr(aiter_mod, "HIGH_WATER", 40)
    monkeypatch.setattr(aiter_mod, "LOW_WATER", 10)

    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        seen = []
        req = cb.n1ql_query(STATEMENT)

        async def consume() -> None:
            async for n in req:
                seen.append(n)
                if n == 5:
                    await asyncio.sleep(3600)  # stalls until cancelled

        task = asyncio.ensure_future(consume())
        await until(lambda: len(seen) == 6, "no rows arrived")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the async generator suspended in the cancelled task is finalized
        # when collected; its finalizer cancels the request
        await until(lambda: req._outcome is not None, "the request was not cancelled", collect=True)
        assert req._op.done and seen == list(range(6))
        # the bucket goes on: key-value and a new query
        assert (await cb.get("r:0007")).value["n"] == 7
        assert [n async for n in cb.n1ql_query("SELECT RAW n FROM `default` WHERE kind = 'r' AND n < 3 ORDER BY n")] \
            == [0, 1, 2]
        cb.close()

    run(main())


def test_breaking_out_of_async_for_cancels_the_request(run, cluster):
    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        view = cb.query("aio", "by_n", stale="ok")
        rows = view.__aiter__()
        async for row in rows:
            if row.key == 2:
                break
        await rows.aclose()  # what the loop's finaliser does for a dropped iterator
        assert view._outcome is not None and view._op.done
        assert (await cb.get("r:0001")).value["n"] == 1
        cb.close()

    run(main())


def test_the_readme_example_runs(run, memcached_server):
    async def main(connstr: str) -> Any:
        cb = Bucket(connstr)
        await cb.connect()
        await cb.upsert("greeting", {"text": "hello"})
        result = await cb.get("greeting")
        many = await cb.upsert_multi({"a": 1, "b": 2})
        cb.close()
        return result.value, sorted(many)

    assert run(main(memcached_server.connstr)) == ({"text": "hello"}, ["a", "b"])


def test_close_is_cancel_on_an_asyncio_request(run, cluster, monkeypatch):
    monkeypatch.setattr(aiter_mod, "HIGH_WATER", 40)
    monkeypatch.setattr(aiter_mod, "LOW_WATER", 10)

    async def main() -> None:
        cb = Bucket(cluster.connstr_for("default"), operation_timeout=60, **ADMIN)
        await cb.connect()
        seen = []
        req = cb.n1ql_query(STATEMENT)
        async for n in req:
            seen.append(n)
            if n == 2:
                req.close()  # the loop sees no more rows, at once
        assert seen == [0, 1, 2] and req._op.done and req._outcome is not None
        cb.close()

    run(main())

"""Pipelines and durability blocks belong to their caller, not to the bucket.

Many greenlets (or threads, or contexts) share one bucket. A ``with
bucket.pipeline()`` or ``with bucket.durability(...)`` block applies to the
greenlet / thread / context that entered it and to nobody else: another
greenlet's plain operations neither end up in the pipeline nor wait for its
end, and another greenlet's mutations do not wait for durability.

Pipelines run against a real memcached on all three flavours; durability
against the emulator, whose replication is frozen (``replicate_delay``) so a
mutation that waits for a replica can only time out: that is how the tests
see who waited, without measuring time. Every wait below is a guard against
a deadlock, never an expected duration.
"""

from __future__ import annotations

import contextvars
import threading
import time

import gevent
import gevent.event
import pytest

from couchbase_core import LOCKMODE_NONE, LOCKMODE_WAIT
from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.exceptions import PipelineError, TimeoutError
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.mock import MockCluster
from gcouchbase.bucket import Bucket as GBucket

#: Seconds: reached only if something deadlocks.
GUARD = 60
ADMIN = {"username": "Administrator", "password": "password"}


def _values(results):
    return [r.value for r in results]


# ------------------------------------------------------------ gevent pipeline


@pytest.fixture
def gbucket(memcached_server):
    b = GBucket(memcached_server.connstr, operation_timeout=30)
    yield b
    b.close()


def test_a_pipeline_belongs_to_its_greenlet(gbucket, unique_key):
    b, k = gbucket, unique_key
    b.upsert(k + "b", "b-value")
    a_inside, b_done = gevent.event.Event(), gevent.event.Event()
    seen = {}

    def greenlet_a():
        with b.pipeline() as pipe:
            assert b.upsert(k + "a", "a-value") is None
            a_inside.set()
            assert b_done.wait(GUARD), "B was held back by A's pipeline"
            assert b.get(k + "a") is None
        return pipe.results

    def greenlet_b():
        try:
            assert a_inside.wait(GUARD)
            seen["get"] = b.get(k + "b")
            seen["upsert"] = b.upsert(k + "b2", "b2-value")
            with b.pipeline() as pipe:  # B may have a pipeline of its own meanwhile
                assert b.get(k + "b") is None
                b.get(k + "b2")
            seen["pipe"] = pipe.results
        finally:
            b_done.set()

    ga, gb = gevent.spawn(greenlet_a), gevent.spawn(greenlet_b)
    gevent.joinall([ga, gb], timeout=GUARD, raise_error=True)
    assert seen["get"] is not None and seen["get"].value == "b-value"
    assert seen["upsert"] is not None and seen["upsert"].success
    assert _values(seen["pipe"]) == ["b-value", "b2-value"]
    a_results = ga.value
    assert [r.key for r in a_results] == [k + "a", k + "a"]
    assert a_results[0].success and a_results[1].value == "a-value"


def test_a_greenlet_spawned_inside_a_pipeline_is_not_in_it(gbucket, unique_key):
    b, k = gbucket, unique_key
    b.upsert(k + "pre", "pre-value")
    with b.pipeline() as pipe:
        b.upsert(k + "in", 1)
        child = gevent.spawn(lambda: b.get(k + "pre").value)
        # the child's get completes while the parent is still inside the block
        assert child.get(timeout=GUARD) == "pre-value"
        with pytest.raises(PipelineError):
            with b.pipeline():
                pass  # still no nesting within one greenlet
    assert [r.key for r in pipe.results] == [k + "in"]


def test_a_greenlet_running_in_a_copy_of_the_context_is_not_in_the_pipeline(gbucket, unique_key):
    # Apps propagate request-scoped context variables to helper greenlets
    # this way; the copy carries the pipeline's frame, which is not theirs.
    b, k = gbucket, unique_key
    b.upsert(k + "pre", "pre-value")
    with b.pipeline() as pipe:
        b.upsert(k + "in", 1)
        child = gevent.spawn(contextvars.copy_context().run, lambda: b.get(k + "pre"))
        got = child.get(timeout=GUARD)
        assert got is not None and got.value == "pre-value"
    assert [r.key for r in pipe.results] == [k + "in"]


def test_a_greenlet_killed_inside_a_pipeline_leaves_nothing_behind(gbucket, unique_key):
    b, k = gbucket, unique_key
    inside = gevent.event.Event()

    def doomed():
        with b.pipeline():
            b.upsert(k + "never", "sent")
            inside.set()
            gevent.sleep(GUARD)

    g = gevent.spawn(doomed)
    assert inside.wait(GUARD)
    g.kill(block=True, timeout=GUARD)
    assert g.dead
    assert b.get(k + "never", quiet=True).success is False, "a killed block's queued operations are not sent"
    with b.pipeline() as pipe:
        b.upsert(k + "after", 2)
        b.get(k + "after")
    assert pipe.results[1].value == 2


def test_a_greenlet_killed_while_its_pipeline_waits(fresh_memcached, unique_key):
    b, k = GBucket(fresh_memcached.connstr, operation_timeout=30), unique_key
    try:
        b.upsert(k + "x", "x-value")
        leaving = gevent.event.Event()

        def doomed():
            with b.pipeline():
                b.get(k + "x")
                b.upsert(k + "y", "y-value")
                leaving.set()  # no switch: the greenlet goes on into __exit__ and waits there

        fresh_memcached.pause()
        conn = b._engine.connections[0]
        g = gevent.spawn(doomed)
        assert leaving.wait(GUARD)
        # Both requests written (a kill before that would withdraw them):
        # the server executes them, their replies are dropped.
        deadline = time.monotonic() + GUARD
        while conn._queue or len(conn.pending) < 2:
            assert time.monotonic() < deadline
            gevent.sleep(0.001)
        g.kill(block=True, timeout=GUARD)
        assert g.dead
        fresh_memcached.resume()
        assert b.get(k + "x").value == "x-value"
        with b.pipeline() as pipe:
            b.get(k + "x")
            b.get(k + "y")
        assert _values(pipe.results) == ["x-value", "y-value"]
    finally:
        if fresh_memcached.paused:
            fresh_memcached.resume()
        b.close()


# ---------------------------------------------------------- threads (blocking)


@pytest.mark.parametrize("lockmode", [LOCKMODE_WAIT, LOCKMODE_NONE], ids=["wait", "none"])
def test_a_pipeline_belongs_to_its_thread(memcached_server, unique_key, lockmode):
    b, k = BlockingBucket(memcached_server.connstr, lockmode=lockmode, operation_timeout=30), unique_key
    try:
        b.upsert(k + "b", "b-value")
        a_inside, b_done = threading.Event(), threading.Event()
        out, errors = {}, []

        def thread_a():
            try:
                with b.pipeline() as pipe:
                    b.upsert(k + "a", "a-value")
                    a_inside.set()
                    assert b_done.wait(GUARD)
                    b.get(k + "a")
                out["a"] = pipe.results
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                a_inside.set()

        def thread_b():
            try:
                assert a_inside.wait(GUARD)
                out["get"] = b.get(k + "b")
                with b.pipeline() as pipe:
                    b.get(k + "b")
                out["pipe"] = pipe.results
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                b_done.set()

        threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD)
        assert not errors, errors
        assert out["get"] is not None and out["get"].value == "b-value"
        assert _values(out["pipe"]) == ["b-value"]
        assert [r.key for r in out["a"]] == [k + "a", k + "a"] and out["a"][1].value == "a-value"
    finally:
        b.close()


# ---------------------------------------------------------------- AsyncBucket


def _run(iops, done):
    deadline = time.monotonic() + GUARD
    while not done():
        assert time.monotonic() < deadline, "the loop never got there"
        iops.run_once(0.2)


def test_an_async_pipeline_belongs_to_its_context(memcached_server, unique_key):
    iops = SelectIOPS()
    b, k = AsyncBucket(iops, memcached_server.connstr, operation_timeout=30), unique_key
    connected = []
    b.on_connect(connected.append)
    _run(iops, lambda: connected)
    try:
        stored = b.upsert(k + "b", "b-value")
        _run(iops, lambda: stored.done)
        got, got2 = [], []
        with b.pipeline():
            mine = b.upsert(k + "a", "a-value")
            # another context (an asyncio task, say) is neither in the block nor held back by it
            other = contextvars.Context().run(b.get, k + "b")
            other.callback = got.append
            _run(iops, lambda: got)
            assert got[0].value == "b-value"
            # ... and may run a pipeline of its own meanwhile
            ctx = contextvars.Context()
            pipe = ctx.run(b.pipeline)
            ctx.run(pipe.__enter__)
            queued = ctx.run(b.get, k + "b")
            ctx.run(pipe.__exit__, None, None, None)
            queued.callback = got2.append
            _run(iops, lambda: got2)
            assert got2[0].value == "b-value"
            assert not mine.done, "the block's own operations wait for its end"
        _run(iops, lambda: mine.done)
        assert mine[k + "a"].success
    finally:
        b.close()
        iops.run_once(0)
        iops.close()


def test_an_asyncio_task_created_inside_an_async_pipeline_is_not_in_it(memcached_server, unique_key):
    # asyncio tasks start in a copy of their creator's context
    import asyncio

    iops = SelectIOPS()
    b, k = AsyncBucket(iops, memcached_server.connstr, operation_timeout=30), unique_key
    connected = []
    b.on_connect(connected.append)
    _run(iops, lambda: connected)
    try:
        stored = b.upsert(k + "pre", "pre-value")
        _run(iops, lambda: stored.done)

        async def child():
            got = []
            b.get(k + "pre").callback = got.append
            _run(iops, lambda: got)
            return got[0].value

        async def parent():
            with b.pipeline():
                mine = b.upsert(k + "in", 1)
                value = await asyncio.create_task(child())
                assert not mine.done
            return value, mine

        value, mine = asyncio.run(parent())
        assert value == "pre-value"
        _run(iops, lambda: mine.done)
        assert mine[k + "in"].success
    finally:
        b.close()
        iops.run_once(0)
        iops.close()


# ---------------------------------------------------------------- durability


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=2, replicas=1) as c:
        yield c


@pytest.fixture
def frozen(cluster):
    """Replication frozen: a mutation that waits for a replica times out."""
    cluster.replicate_delay(3600)
    yield cluster
    cluster.clear_faults()


def _connstr(cluster):
    return cluster.connstr_for("default", durability_interval=0.02)


def test_a_durability_block_belongs_to_its_greenlet(frozen, unique_key):
    cb, k = GBucket(_connstr(frozen), operation_timeout=30, **ADMIN), unique_key
    try:
        a_inside, b_done = gevent.event.Event(), gevent.event.Event()
        seen = {}

        def greenlet_a():
            with cb.durability(persist_to=0, replicate_to=1, timeout=2):
                a_inside.set()
                assert b_done.wait(GUARD)
                with pytest.raises(TimeoutError):
                    cb.upsert(k + "a", 1)  # the block applies to A

        def greenlet_b():
            try:
                assert a_inside.wait(GUARD)
                seen["b"] = cb.upsert(k + "b", 1)  # ... and not to B
            finally:
                b_done.set()

        gevent.joinall([gevent.spawn(greenlet_a), gevent.spawn(greenlet_b)], timeout=GUARD, raise_error=True)
        assert seen["b"].success
    finally:
        cb.close()


@pytest.mark.parametrize("shared", [False, True], ids=["own-blocks", "one-shared-block-object"])
def test_overlapping_durability_blocks_leave_no_default_behind(frozen, unique_key, shared):
    cb, k = GBucket(_connstr(frozen), operation_timeout=30, **ADMIN), unique_key
    try:
        a_in, b_in, a_out = gevent.event.Event(), gevent.event.Event(), gevent.event.Event()
        one = cb.durability(persist_to=0, replicate_to=1, timeout=2)

        def block():
            return one if shared else cb.durability(persist_to=0, replicate_to=1, timeout=2)

        def greenlet_a():
            with block():
                a_in.set()
                assert b_in.wait(GUARD)
            a_out.set()
            assert cb.upsert(k + "a", 1).success  # A's block is over for A

        def greenlet_b():
            assert a_in.wait(GUARD)
            with block():
                b_in.set()
                assert a_out.wait(GUARD)
                with pytest.raises(TimeoutError):
                    cb.upsert(k + "b", 1)  # B's block still applies to B

        gevent.joinall([gevent.spawn(greenlet_a), gevent.spawn(greenlet_b)], timeout=GUARD, raise_error=True)
        # both blocks are over: nobody waits for durability any more
        assert cb.upsert(k + "after", 1).success
        assert gevent.spawn(cb.upsert, k + "after2", 1).get(timeout=GUARD).success
    finally:
        cb.close()


def test_a_durability_block_belongs_to_its_thread(frozen, unique_key):
    cb, k = BlockingBucket(_connstr(frozen), lockmode=LOCKMODE_WAIT, operation_timeout=30, **ADMIN), unique_key
    try:
        a_inside, b_done = threading.Event(), threading.Event()
        out, errors = {}, []

        def thread_a():
            try:
                with cb.durability(persist_to=0, replicate_to=1, timeout=2):
                    a_inside.set()
                    assert b_done.wait(GUARD)
                    try:
                        cb.upsert(k + "a", 1)
                    except TimeoutError:
                        out["a"] = "timed out"
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                a_inside.set()

        def thread_b():
            try:
                assert a_inside.wait(GUARD)
                out["b"] = cb.upsert(k + "b", 1)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                b_done.set()

        threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD)
        assert not errors, errors
        assert out["b"].success and out["a"] == "timed out"
    finally:
        cb.close()


def test_nested_durability_blocks_restore_exactly(frozen, unique_key):
    cb, k = GBucket(_connstr(frozen), operation_timeout=30, **ADMIN), unique_key
    try:
        with cb.durability(persist_to=0, replicate_to=1, timeout=2):
            with cb.durability(persist_to=0, replicate_to=0):
                assert cb.upsert(k + "inner", 1).success  # the inner block asks for nothing
            with pytest.raises(TimeoutError):
                cb.upsert(k + "outer", 1)  # the outer block is back
        assert cb.upsert(k + "after", 1).success
    finally:
        cb.close()


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_flush_is_refused_inside_a_pipeline_on_couchbase_buckets(cluster, flavour):
    cb = (BlockingBucket if flavour == "blocking" else GBucket)(_connstr(cluster), **ADMIN)
    try:
        with pytest.raises(PipelineError):
            with cb.pipeline():
                cb.flush()
    finally:
        cb.close()


def test_an_async_durability_block_belongs_to_its_context(frozen, unique_key):
    iops = SelectIOPS()
    cb, k = AsyncBucket(iops, _connstr(frozen), operation_timeout=30, **ADMIN), unique_key
    connected = []
    cb.on_connect(connected.append)
    _run(iops, lambda: connected)
    try:
        with cb.durability(persist_to=0, replicate_to=1, timeout=2):
            other = contextvars.Context().run(cb.upsert, k + "other", 1)
            mine = cb.upsert(k + "mine", 1)
            outcomes = {}
            other.callback = lambda res: outcomes.setdefault("other", res.success)
            other.errback = lambda res, et, ev, tb: outcomes.setdefault("other", et)
            mine.callback = lambda res: outcomes.setdefault("mine", res.success)
            mine.errback = lambda res, et, ev, tb: outcomes.setdefault("mine", et)
            _run(iops, lambda: len(outcomes) == 2)
        assert outcomes == {"other": True, "mine": TimeoutError}
    finally:
        cb.close()
        iops.run_once(0)
        iops.close()

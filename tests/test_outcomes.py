"""Interrupted, timed-out and retried operations: never a doubled write, never
a write the caller was told failed, never a reply lost to a timer.

* A caller that is killed or interrupted starts no further step of a
  composite operation (``queue_pop``...), and its unwritten requests are
  withdrawn.
* Only what the server did not execute is re-sent: a mutation that was
  written when its connection died or its node left ends with
  OutcomeUnknownError, never a second application.
* A request whose deadline passes before any byte of it is written is
  withdrawn from the write queue: a frozen server does not make the queue
  grow without bound, and does not apply the writes later.
* Replies already waiting in the socket when the deadline timer fires are
  read first.
* A black-holed connection is detected and replaced.

Real servers only: memcached, the emulator, and a forwarding proxy.
"""

from __future__ import annotations

import select
import time

import gevent
import pytest

from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.exceptions import (
    CouchbaseError,
    CouchbaseNetworkError,
    NetworkError,
    OutcomeUnknownError,
    TimeoutError,
)
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.mock import MockCluster
from gcouchbase.bucket import Bucket as GBucket
from tests.flavours import open_bucket
from tests.proxy import FaultProxy

ADMIN = {"username": "Administrator", "password": "password"}


def _wait_for(condition, what, timeout=10.0):
    """Wait (cooperatively) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        gevent.sleep(0.005)


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=3, replicas=1) as c:
        yield c


def _node_of(bucket, key):
    cfg = bucket._engine.config
    return cfg.vbmap[cfg.vbucket_of(key.encode())][0]


def _written_and_waiting(conn):
    """True once the connection has written everything queued and still
    waits for replies."""
    return conn.pending and not conn._queue


# ------------------------------------------------ interrupted composite ops

@pytest.mark.parametrize("interrupt", ["kill", "gevent_timeout"])
def test_an_interrupted_queue_pop_removes_nothing(cluster, interrupt):
    b = GBucket(cluster.connstr_for("default"), **ADMIN)
    key = "qpop:%s" % interrupt
    try:
        b.upsert(key, ["a", "b", "c"])
        node = _node_of(b, key)
        conn = b._engine.connections[node]
        cluster.delay(0.5, node=node)  # the first step's reply is late
        try:
            def pop():
                if interrupt == "kill":
                    return b.queue_pop(key)
                with gevent.Timeout(0.1):
                    return b.queue_pop(key)

            job = gevent.spawn(pop)
            _wait_for(lambda: conn.pending, "the lookup to be sent")
            if interrupt == "kill":
                job.kill()
            else:
                job.join(5)
                assert isinstance(job.exception, gevent.Timeout)
            # The delayed lookup reply comes first on this connection; a
            # chain that went on would send its removal right after it, so
            # the second read sees what the server holds after that.
            b.get(key)
            cluster.delay(0, node=node)
            b.get(key)
            assert b.get(key).value == ["a", "b", "c"]
            assert b.queue_pop(key).value == "c"  # the bucket is fine (the oldest is last)
        finally:
            cluster.delay(0, node=node)
    finally:
        b.close()


# --------------------------------------------------------- failover replays

def test_a_written_counter_is_not_replayed_after_failover():
    with MockCluster(nodes=3, replicas=1) as c:
        b = GBucket(c.connstr_for("default", operation_timeout=5, config_poll_interval=0), **ADMIN)
        try:
            key = next("ctr:%d" % i for i in range(200) if _node_of(b, "ctr:%d" % i) == 1)
            b.counter(key, delta=0, initial=100)
            conn = b._engine.connections[1]
            c.delay(1.0, node=1)
            job = gevent.spawn(b.counter, key, 1)
            _wait_for(lambda: _written_and_waiting(conn), "the counter to be written")
            gevent.get_hub().threadpool.apply(c.failover, (1,))
            job.join(10)
            assert isinstance(job.exception, OutcomeUnknownError), job.exception or job.value
            assert isinstance(job.exception, NetworkError)
            assert job.exception.key == key
            c.delay(0, node=1)
            _wait_for(lambda: len(b.server_nodes) == 2, "the new config")
            # applied once (on the old node, replicated) or not at all; never twice
            assert b.get(key).value in (100, 101)
            assert b.counter(key, 1).value in (101, 102)
        finally:
            b.close()


def test_unwritten_requests_of_a_departed_node_are_resent():
    # Requests still queued for a node that leaves were never seen by it:
    # they go to the new owner and succeed.
    with MockCluster(nodes=3, replicas=1) as c:
        b = GBucket(c.connstr_for("default", operation_timeout=10, config_poll_interval=0), **ADMIN)
        try:
            keys = [k for k in ("re:%d" % i for i in range(300)) if _node_of(b, k) == 2][:20]
            conn = b._engine.connections[2]
            conn.engine.sched_enter()  # hold the writes back so they stay queued
            jobs = [gevent.spawn(b.upsert, k, k) for k in keys]
            gevent.sleep(0)
            assert all(op.wire is not None and not op.written for op in conn._queue)
            gevent.get_hub().threadpool.apply(c.failover, (2,))
            _wait_for(lambda: len(b.server_nodes) == 2, "the new config")
            conn.engine.sched_leave()
            gevent.joinall(jobs, timeout=15)
            assert all(j.successful() for j in jobs), [j.exception for j in jobs]
            assert {k: r.value for k, r in b.get_multi(keys).items()} == {k: k for k in keys}
        finally:
            b.close()


def test_a_written_mutation_on_a_dropped_connection_has_an_unknown_outcome(flavour, memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        b = open_bucket(flavour, proxy.connstr, operation_timeout=10)
        try:
            b.upsert("unknown:1", "before")
            proxy.forward_replies.clear()  # the request reaches the server, the reply is held
            import threading

            threading.Timer(0.3, proxy.drop_connections).start()
            with pytest.raises(OutcomeUnknownError) as info:
                b.upsert("unknown:1", "after")
            assert info.value.key == "unknown:1"
            assert "may or may not have been applied" in str(info.value)
            proxy.forward_replies.set()
            assert b.get("unknown:1").value in ("before", "after")  # reconnects
        finally:
            proxy.forward_replies.set()
            b.close()


# --------------------------------------------- timed-out unwritten requests

def test_a_batch_timing_out_unwritten_is_withdrawn(fresh_memcached):
    """A frozen server: the socket fills, the batch times out. What was
    never written is dropped at the deadline and never reaches the server
    when it comes back (before, all 100 MB were written then)."""
    b = GBucket(fresh_memcached.connstr, operation_timeout=0.3)
    value = "v" * (100 * 1024)
    keys = ["fzb:%d" % i for i in range(1000)]
    try:
        b.upsert("warm", 1)
        conn = b._engine.connections[0]
        fresh_memcached.pause()
        try:
            with pytest.raises(CouchbaseNetworkError) as info:
                b.upsert_multi({k: value for k in keys})
            assert len(info.value.all_results) == len(keys)
            # at most the frame in progress is left to send
            live = [e for e in conn._queue if e.wire is not None]
            assert len(live) <= 1 and all(e.written for e in live)
            assert sum(len(e.wire) for e in live) - conn._head_sent < 2 * len(value)
        finally:
            fresh_memcached.resume()
        b.timeout = 10
        found = [k for k, r in b.get_multi(keys, quiet=True).items() if r.success]
        # only what the kernel had taken before the deadline (a few MB)
        assert len(found) < len(keys) // 2, len(found)
    finally:
        b.close()


def test_single_requests_timing_out_unwritten_are_withdrawn(fresh_memcached):
    """Many greenlets keep writing to a frozen server: every request fails
    with a network error, and the write queue keeps no unwritten request (it
    does not grow with the load)."""
    b = GBucket(fresh_memcached.connstr, operation_timeout=0.3)
    value = "v" * (100 * 1024)
    try:
        b.upsert("warm", 1)
        fresh_memcached.pause()
        failures = []

        def writer(g):
            for r in range(10):
                try:
                    b.upsert("fzs:%d:%d" % (g, r), value)
                except CouchbaseError as exc:
                    failures.append(exc)

        try:
            jobs = [gevent.spawn(writer, g) for g in range(50)]
            gevent.joinall(jobs, timeout=120)
            assert all(j.successful() for j in jobs)
            assert len(failures) == 500
            assert all(isinstance(e, CouchbaseNetworkError) for e in failures)
            for conn in b._engine.connections:
                live = [e for e in conn._queue if e.wire is not None]
                assert len(live) <= 1 and all(e.written for e in live)
        finally:
            fresh_memcached.resume()
        b.timeout = 10
        b.upsert("after", 1)
        assert b.get("after").value == 1
    finally:
        b.close()


# ------------------------------------------------ replies waiting in socket

def test_a_reply_waiting_in_the_socket_beats_a_late_timer(memcached_server):
    b = GBucket(memcached_server.connstr, operation_timeout=0.2)
    try:
        b.upsert("stall", "here")
        for _ in range(5):
            job = gevent.spawn(b.get, "stall")
            gevent.sleep(0)  # the request is written; the greenlet waits
            # The hub is held up (CPU starvation): the process blocks until the
            # reply sits in the socket and the deadline has passed.
            started = time.monotonic()
            sock = b._engine.connections[0]._sock
            assert select.select([sock], [], [], 30)[0], "no reply within 30 s"
            time.sleep(max(0.0, 0.3 - (time.monotonic() - started)))
            job.join(5)
            assert job.successful(), job.exception
            assert job.value.value == "here"
    finally:
        b.close()


# ------------------------------------------- async batches before bootstrap

def test_async_multi_before_bootstrap_on_couchbase(cluster):
    iops = SelectIOPS()
    b = AsyncBucket(iops, cluster.connstr_for("default"), **ADMIN)
    try:
        done = []
        ar = b.upsert_multi({"early:%d" % i: i for i in range(20)})
        ar.callback = lambda res: done.append(("ok", res))
        ar.errback = lambda res, *exc: done.append(("err", exc[1]))
        deadline = time.monotonic() + 20
        while not done and time.monotonic() < deadline:
            iops.run_once(0.2)
        assert done and done[0][0] == "ok", done
        got = []
        ar = b.get_multi(["early:%d" % i for i in range(20)])
        ar.callback = lambda res: got.append(res)
        ar.errback = lambda res, *exc: got.append(exc[1])
        while not got and time.monotonic() < deadline:
            iops.run_once(0.2)
        assert {k: r.value for k, r in got[0].items()} == {"early:%d" % i: i for i in range(20)}
    finally:
        b.close()


# ----------------------------------------------------- dead connections

@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_a_black_holed_connection_is_replaced(flavour, memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        b = open_bucket(flavour, proxy.connstr, operation_timeout=0.5)
        try:
            b.upsert("hole", "value")
            assert proxy.black_hole() == 1
            outcomes = []
            for _ in range(30):
                try:
                    outcomes.append(b.get("hole").value)
                    break
                except CouchbaseNetworkError as exc:  # timeouts, then the dead connection
                    outcomes.append(type(exc).__name__)
            assert outcomes[-1] == "value", outcomes
            assert proxy.accepted == 2  # one new connection replaced the dead one
            assert b.get("hole").value == "value"
        finally:
            b.close()


def test_a_slow_but_alive_connection_is_kept(memcached_server):
    # Replies that arrive late (after the operation's timeout) prove the
    # connection alive: no reconnect.
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        b = GBucket(proxy.connstr, operation_timeout=0.3)
        try:
            b.upsert("slow", 1)
            proxy.forward_replies.clear()
            with pytest.raises(TimeoutError):
                b.get("slow")
            proxy.forward_replies.set()  # the late reply (and the probe's) arrive
            for _ in range(10):
                assert b.get("slow").value == 1
            assert proxy.accepted == 1
        finally:
            proxy.forward_replies.set()
            b.close()


def test_a_config_changing_the_vbucket_count_is_ignored(cluster):
    import json

    b = open_bucket("blocking", cluster.connstr_for("default"), **ADMIN)
    try:
        b.upsert("vbcount", 1)
        engine = b._engine
        raw = dict(engine.config.raw)
        smap = dict(raw["vBucketServerMap"])
        smap["vBucketMap"] = smap["vBucketMap"][: len(smap["vBucketMap"]) // 2]
        raw["vBucketServerMap"] = smap
        raw["rev"] = engine.config.rev + 1000
        before = engine.config
        assert engine.on_config_text(json.dumps(raw).encode(), "127.0.0.1") is False
        assert engine.config is before
        assert b.get("vbcount").value == 1
    finally:
        b.close()

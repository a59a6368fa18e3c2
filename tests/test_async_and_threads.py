"""AsyncBucket specifics and the blocking Bucket's lockmodes."""

from __future__ import annotations

import threading
import time

import pytest

from couchbase_core import LOCKMODE_EXC, LOCKMODE_NONE, LOCKMODE_WAIT
from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import ArgumentError, KeyExistsError, ObjectThreadError
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.result import AsyncResult


def _run(iops, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        iops.run_once(0.05)


def test_async_bucket_needs_an_iops():
    with pytest.raises(ArgumentError):
        AsyncBucket(None, "memcached://127.0.0.1:1")


def test_operations_issued_before_bootstrap_wait_in_the_engine(memcached_server):
    iops = SelectIOPS()
    b = AsyncBucket(iops, memcached_server.connstr)
    assert not b.connected
    ar = b.upsert("early", "bird")
    got = []
    ar.callback = got.append
    _run(iops, lambda: got)
    assert got[0].success and b.connected
    b.close()
    iops.close()


def test_async_multi_callback_gets_the_async_result(memcached_server):
    iops = SelectIOPS()
    b = AsyncBucket(iops, memcached_server.connstr)
    ar = b.upsert_multi({"am1": 1, "am2": 2})
    got = []
    ar.callback = got.append
    _run(iops, lambda: got)
    assert got[0] is ar and isinstance(ar, AsyncResult) and ar.all_ok and set(ar) == {"am1", "am2"}
    ar = b.insert_multi({"am1": 1, "am3": 3})
    errs = []
    ar.errback = lambda res, et, ev, tb: errs.append((res, et, ev))
    _run(iops, lambda: errs)
    res, et, ev = errs[0]
    assert res is ar and et is KeyExistsError and set(ev.all_results) == {"am1", "am3"}
    b.close()
    iops.close()


def test_async_pipeline_batches_writes(memcached_server):
    iops = SelectIOPS()
    b = AsyncBucket(iops, memcached_server.connstr)
    done = []
    b.on_connect(done.append)
    _run(iops, lambda: done)
    conn = b._engine.connections[0]
    with b.pipeline():
        results = [b.upsert("ap%d" % i, i) for i in range(10)]
        assert conn._want_write is False, "nothing is flushed inside the block"
        assert not conn._queue and not conn.pending, "the block's operations wait in the pipeline"
    # handed to the engine together: one write for the ten of them
    assert len(conn.pending) == 10 and len(conn._queue) == 10
    assert conn._want_write is True
    _run(iops, lambda: all(r.done for r in results))
    got = []
    b.get("ap9").callback = got.append
    _run(iops, lambda: got)
    assert got[0].value == 9
    b.close()
    iops.close()


def test_lockmode_exc_refuses_concurrent_threads(fresh_memcached):
    # The thread's get must outlast the test's steps while the server is
    # frozen, however slowly they run: a long timeout.
    b = Bucket(fresh_memcached.connstr, lockmode=LOCKMODE_EXC, operation_timeout=60)
    b.upsert("lm", 1)
    fresh_memcached.pause()
    errors = []
    t = threading.Thread(target=lambda: _catch(errors, b.get, "lm"))
    try:
        t.start()
        deadline = time.monotonic() + 30
        while not b._guard._lock.locked():  # the thread is now waiting inside the bucket
            assert time.monotonic() < deadline and t.is_alive(), errors
            time.sleep(0.002)
        with pytest.raises(ObjectThreadError):
            b.get("lm")
    finally:
        fresh_memcached.resume()
        t.join()
        b.close()
    assert errors == []


def test_lockmode_wait_serialises_threads(memcached_server):
    b = Bucket(memcached_server.connstr, lockmode=LOCKMODE_WAIT)
    errors = []

    def work(n):
        for i in range(200):
            b.upsert("lw:%d:%d" % (n, i), i)
            assert b.get("lw:%d:%d" % (n, i)).value == i

    threads = [threading.Thread(target=_catch, args=(errors, work, n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert b.lockmode == LOCKMODE_WAIT
    b.close()


def test_lockmode_none_and_invalid(memcached_server):
    b = Bucket(memcached_server.connstr, lockmode=LOCKMODE_NONE)
    assert b.upsert("ln", 1).success
    b.close()
    with pytest.raises(ArgumentError):
        Bucket(memcached_server.connstr, lockmode=99)


def _catch(errors, fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # recorded for the assertion
        errors.append(exc)

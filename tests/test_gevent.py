"""gevent semantics: many greenlets on one bucket, kills, gevent.Timeout,
frozen servers, closing under load, monkeypatched programs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from couchbase_core.exceptions import ObjectDestroyedError, TimeoutError
from gcouchbase.bucket import Bucket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _total_connections(bucket) -> int:
    return int(next(iter(bucket.stats()["total_connections"].values())))


def _wait_until(cond, what: str, timeout: float = 30.0) -> None:
    """Let the hub run until ``cond()`` holds (bounded; the bound is only a
    guard against a hang, never the thing tested)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "never happened: " + what
        gevent.sleep(0.005)


def _in_step(bucket) -> bool:
    return bucket._engine.connections[0].pending == {}


@pytest.fixture
def gbucket(memcached_server):
    b = Bucket(memcached_server.connstr, operation_timeout=10)
    yield b
    b.close()


def test_a_thousand_greenlets_share_one_bucket_and_one_socket(memcached_server):
    probe = Bucket(memcached_server.connstr)
    before = _total_connections(probe)
    b = Bucket(memcached_server.connstr, operation_timeout=10)
    try:
        def worker(i):
            key = "storm:%d" % i
            for round_ in range(5):
                b.upsert(key, [i, round_])
                got = b.get(key).value
                assert got == [i, round_], (key, got)
            return i

        jobs = [gevent.spawn(worker, i) for i in range(1000)]
        gevent.joinall(jobs, timeout=60, raise_error=True)
        assert sorted(j.value for j in jobs) == list(range(1000))
        assert _total_connections(probe) - before == 1  # one socket for 1,000 greenlets
    finally:
        b.close()
        probe.close()


def test_killed_greenlets_never_receive_replies_and_others_stay_correct(gbucket):
    values = {"kill:%d" % i: "v%d" % i for i in range(200)}
    gbucket.upsert_multi(values)
    checks = []

    def reader(key):
        while True:
            got = gbucket.get(key).value
            checks.append(got == values[key])

    rng = random.Random(7)
    live = {k: gevent.spawn(reader, k) for k in values}
    # A fixed number of kill rounds (not a wall-clock budget, whose number
    # of rounds would depend on the machine's speed).
    for _round in range(60):
        gevent.sleep(rng.uniform(0, 0.005))
        victims = rng.sample(sorted(live), 20)
        gevent.killall([live[v] for v in victims], block=False)
        for v in victims:
            live[v] = gevent.spawn(reader, v)
    # Readers that were never killed keep reading: let some replies land.
    seen = len(checks)
    _wait_until(lambda: len(checks) >= seen + 200, "200 more replies after the kills")
    gevent.killall(list(live.values()))
    assert all(checks), "a greenlet received another key's value"
    # Replies of killed greenlets are drained; the connection gets in step.
    _wait_until(lambda: _in_step(gbucket), "the killed greenlets' replies drained")
    assert gbucket.get_multi(list(values)).all_ok
    assert {k: r.value for k, r in gbucket.get_multi(list(values)).items()} == values


def test_repeated_gevent_timeouts_leave_the_bucket_consistent(gbucket):
    keys = ["gt:%d" % i for i in range(50)]
    gbucket.upsert_multi({k: k for k in keys})
    rng = random.Random(3)
    outcomes = {"completed": 0, "interrupted": 0}
    with gevent.Timeout(300, AssertionError("an operation hung")):
        # Tiny gevent timeouts race the reply: which one wins depends on the
        # machine's speed, so either outcome is right -- but only those two,
        # and a call with no gevent timeout always gets its own value.
        for n in range(3000):
            k = keys[n % len(keys)]
            seconds = rng.choice([0.00001, 0.0001, 0.001, None])
            try:
                with gevent.Timeout(seconds):
                    got = gbucket.get(k).value
            except gevent.Timeout:
                assert seconds is not None
                outcomes["interrupted"] += 1
                continue
            assert got == k
            outcomes["completed"] += 1
        assert sum(outcomes.values()) == 3000
        # Interruptions that certainly land while the reply is awaited: the
        # greenlet has sent its request and parked when the Timeout is thrown
        # into it (as the hub does when a gevent.Timeout expires).
        for n in range(300):
            g = gevent.spawn(gbucket.get, keys[n % len(keys)])
            gevent.sleep(0)
            assert not g.dead, "get() returned without waiting for the server"
            g.kill(gevent.Timeout, timeout=30)
            assert g.dead and isinstance(g.exception, gevent.Timeout), g.exception
            assert gbucket.get(keys[(n + 1) % len(keys)]).value == keys[(n + 1) % len(keys)]
    _wait_until(lambda: _in_step(gbucket), "the interrupted gets' replies drained")
    for k in keys:
        assert gbucket.get(k).value == k


def test_greenlets_killed_inside_multi_calls(gbucket):
    keys = ["km:%d" % i for i in range(300)]
    gbucket.upsert_multi({k: 1 for k in keys})
    for _ in range(30):
        g = gevent.spawn(gbucket.get_multi, keys)
        gevent.sleep(0)
        g.kill()
        assert g.dead
    assert gbucket.get_multi(keys).all_ok


def test_frozen_server_parks_no_greenlet_past_its_timeout(fresh_memcached):
    b = Bucket(fresh_memcached.connstr, operation_timeout=30)
    try:
        b.upsert("fz", 1)
        b.timeout = 0.6
        fresh_memcached.pause()  # returns once every server thread is stopped
        outcomes = []

        def waiter(i):
            start = time.monotonic()
            try:
                b.get("fz")
                outcomes.append(("ok", time.monotonic() - start))
            except TimeoutError:
                outcomes.append(("timeout", time.monotonic() - start))

        jobs = [gevent.spawn(waiter, i) for i in range(100)]
        # The bound only guards against a hang: it is far above the 0.6 s
        # operation timeout, and far below the forever a parked greenlet waits.
        finished = gevent.joinall(jobs, timeout=60)
        assert len(finished) == 100, "some greenlets were still parked"
        assert {o for o, _ in outcomes} == {"timeout"}, outcomes
        assert len(outcomes) == 100
        # each ended by its 0.6 s timeout (with room for a loaded machine to
        # run the timer late), not parked until something else happened
        assert max(t for _, t in outcomes) < 0.6 + 20
        fresh_memcached.resume()  # returns once every server thread runs again
        b.timeout = 30  # the check below is about recovery, not speed
        assert b.get("fz").value == 1
    finally:
        fresh_memcached.resume()
        b.close()


def test_closing_the_bucket_wakes_every_waiting_greenlet(fresh_memcached):
    b = Bucket(fresh_memcached.connstr, operation_timeout=30)
    b.upsert("cl", 1)
    fresh_memcached.pause()
    try:
        errors = []

        def waiter():
            try:
                b.get("cl")
            except ObjectDestroyedError as exc:
                errors.append(exc)

        jobs = [gevent.spawn(waiter) for _ in range(50)]
        # Every waiter has sent its get and parked (the server is frozen).
        _wait_until(lambda: len(b._engine.connections[0].pending) == 50, "50 gets pending")
        gevent.spawn(b.close).join()
        gevent.joinall(jobs, timeout=30)
        assert len(errors) == 50
        assert all(j.dead for j in jobs)
    finally:
        fresh_memcached.resume()


def test_hub_reports_no_errors_after_kills(gbucket, capfd):
    gbucket.upsert("quiet-hub", 1)
    for _ in range(100):
        g = gevent.spawn(gbucket.get, "quiet-hub")
        gevent.sleep(0)
        g.kill(block=False)
    _wait_until(lambda: _in_step(gbucket), "the killed gets' replies drained")
    assert gbucket.get("quiet-hub").value == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_monkeypatched_program(memcached_server):
    """A gevent-monkeypatched script (as under gunicorn -k gevent) uses the
    gevent bucket from many greenlets and the blocking bucket too."""
    script = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import sys, gevent
        from gcouchbase.bucket import Bucket
        from couchbase_core.bucket import Bucket as BlockingBucket
        b = Bucket(sys.argv[1])
        def work(i):
            b.upsert("mp:%d" % i, i)
            return b.get("mp:%d" % i).value
        jobs = [gevent.spawn(work, i) for i in range(200)]
        gevent.joinall(jobs, raise_error=True)
        assert [j.value for j in jobs] == list(range(200))
        bb = BlockingBucket(sys.argv[1])
        assert bb.get("mp:7").value == 7
        print("OK", len(jobs))
    """)
    proc = subprocess.run([sys.executable, "-c", script, memcached_server.connstr], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK 200"

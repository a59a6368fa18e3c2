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
    deadline = time.monotonic() + 3
    kills = 0
    while time.monotonic() < deadline:
        gevent.sleep(rng.uniform(0, 0.005))
        victims = rng.sample(sorted(live), 20)
        gevent.killall([live[v] for v in victims], block=False)
        kills += len(victims)
        for v in victims:
            live[v] = gevent.spawn(reader, v)
    gevent.killall(list(live.values()))
    assert kills > 100
    assert checks and all(checks), "a greenlet received another key's value"
    # Replies of killed greenlets were drained; the connection is in step.
    gevent.sleep(0.1)
    conn = gbucket._engine.connections[0]
    assert conn.pending == {}
    assert gbucket.get_multi(list(values)).all_ok
    assert {k: r.value for k, r in gbucket.get_multi(list(values)).items()} == values


def test_repeated_gevent_timeouts_leave_the_bucket_consistent(gbucket):
    keys = ["gt:%d" % i for i in range(50)]
    gbucket.upsert_multi({k: k for k in keys})
    interrupted = completed = 0
    rng = random.Random(3)
    for n in range(3000):
        k = keys[n % len(keys)]
        try:
            with gevent.Timeout(rng.choice([0.00001, 0.0001, 0.001, 1])):
                got = gbucket.get(k).value
            assert got == k
            completed += 1
        except gevent.Timeout:
            interrupted += 1
    assert interrupted > 100 and completed > 100
    gevent.sleep(0.1)
    assert gbucket._engine.connections[0].pending == {}
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
    b = Bucket(fresh_memcached.connstr, operation_timeout=0.6)
    try:
        b.upsert("fz", 1)
        fresh_memcached.pause()
        outcomes = []

        def waiter(i):
            start = time.monotonic()
            try:
                b.get("fz")
                outcomes.append(("ok", time.monotonic() - start))
            except TimeoutError:
                outcomes.append(("timeout", time.monotonic() - start))

        jobs = [gevent.spawn(waiter, i) for i in range(100)]
        finished = gevent.joinall(jobs, timeout=5)
        assert len(finished) == 100, "some greenlets were still parked"
        assert {o for o, _ in outcomes} == {"timeout"}
        assert max(t for _, t in outcomes) < 0.6 + 0.5
        fresh_memcached.resume()
        gevent.sleep(0.2)
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
        gevent.sleep(0.1)
        gevent.spawn(b.close).join()
        gevent.joinall(jobs, timeout=5)
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
    gevent.sleep(0.2)
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

"""Buckets across ``os.fork()``: parent and children share nothing but the
server.

A bucket made before a fork is used at once by the parent and by two
children, each with keys of its own: every value must be the process's own
(the old failure: one process reading the reply meant for another). The
child drops what it inherited and reconnects (``memcached://``) or
bootstraps afresh (``couchbase://``) on first use; operations in flight at
the fork fail in the child with ForkError and complete in the parent; a
bucket on a foreign IOPS refuses to work in the child; and a real
``gunicorn -k gevent -w 2 --preload`` serves every request the right
document.

Children report through a pipe and leave with ``os._exit``; every child is
reaped (killed first if it outlives its budget).
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Tuple

import gevent
import pytest

from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.exceptions import ForkError
from couchbase_core.iops import base
from couchbase_core.result import AsyncResult
from gcouchbase.bucket import Bucket as GBucket
from tests.flavours import FLAVOURS, open_bucket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: Gets per process in the hammer tests, and the wall-time budget of each.
OPS = 1200
BUDGET = 25.0
KEYS = 60


# ---------------------------------------------------------------------------
# children


def fork_children(count: int, body: Callable[[int], Any]) -> List[Tuple[int, int]]:
    """Fork ``count`` children running ``body(index)``; each writes
    ``{"ok": result}`` or ``{"error": traceback}`` as JSON to a pipe and
    leaves with ``os._exit``. Returns (pid, read end) pairs."""
    kids = []
    for index in range(count):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(r)
                try:
                    out = {"ok": body(index)}
                    code = 0
                except BaseException:
                    out = {"error": traceback.format_exc()}
                data = json.dumps(out).encode()
                while data:
                    data = data[os.write(w, data):]
            finally:
                os._exit(code)
        os.close(w)
        kids.append((pid, r))
    return kids


def _reap(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]
        time.sleep(0.02)


def collect(kids: List[Tuple[int, int]], timeout: float = 60.0) -> List[Any]:
    """Read every child's report (within ``timeout`` overall) and reap it.
    A child that failed or said nothing fails the test."""
    deadline = time.monotonic() + timeout
    reports = []
    problems = []
    for pid, r in kids:
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([r], [], [], left)[0]:
                    break
                data = os.read(r, 65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(r)
            _reap(pid, deadline + 5)
        report = json.loads(b"".join(chunks)) if chunks else {"error": "child %d reported nothing" % pid}
        if "error" in report:
            problems.append(report["error"])
        reports.append(report.get("ok"))
    assert not problems, "\n".join(problems)
    return reports


# ---------------------------------------------------------------------------
# the hammer


def _key(test: str, who: int, i: int) -> str:
    return "fork:%s:%d:%d" % (test, who, i)


def _value(who: int, i: int) -> str:
    return "value of process %d, key %d" % (who, i)


def _store(bucket: Any, test: str, processes: int) -> None:
    for who in range(processes):
        bucket.upsert_multi({_key(test, who, i): _value(who, i) for i in range(KEYS)})


def hammer(bucket: Any, test: str, who: int, greenlets: int = 1) -> Dict[str, Any]:
    """Read this process's keys OPS times (a get_multi every tenth time);
    count the values that are not the process's own and the failures."""
    wrong: List[str] = []
    failed: List[str] = []
    done = [0]
    end = time.monotonic() + BUDGET

    def run(offset: int, count: int) -> None:
        for n in range(offset, offset + count):
            if time.monotonic() > end:
                failed.append("out of time")
                return
            i = n % KEYS
            try:
                if n % 10 == 9:
                    keys = [_key(test, who, (i + j) % KEYS) for j in range(5)]
                    res = bucket.get_multi(keys)
                    for j, k in enumerate(keys):
                        if res[k].value != _value(who, (i + j) % KEYS):
                            wrong.append("%s -> %r" % (k, res[k].value))
                else:
                    value = bucket.get(_key(test, who, i)).value
                    if value != _value(who, i):
                        wrong.append("%s -> %r" % (_key(test, who, i), value))
            except Exception as exc:  # noqa: BLE001 - counted
                failed.append(repr(exc)[:200])
            done[0] += 1

    per = OPS // greenlets
    if greenlets == 1:
        run(0, per)
    else:
        gevent.joinall([gevent.spawn(run, g * per, per) for g in range(greenlets)], timeout=BUDGET + 5)
    return {"done": done[0], "expected": per * greenlets, "wrong": len(wrong), "failed": len(failed),
            "examples": (wrong + failed)[:5]}


def _check_hammer(reports: List[Dict[str, Any]]) -> None:
    for who, rep in enumerate(reports):
        assert rep["wrong"] == 0 and rep["failed"] == 0 and rep["done"] == rep["expected"], (who, rep)


def _run_hammer(bucket: Any, test: str, greenlets: int = 1, child_setup: Callable[[], Any] = lambda: None) -> None:
    _store(bucket, test, 3)

    def child(index: int) -> Dict[str, Any]:
        child_setup()
        return hammer(bucket, test, index + 1, greenlets)

    kids = fork_children(2, child)
    try:
        mine = hammer(bucket, test, 0, greenlets)
    finally:
        theirs = collect(kids)
    _check_hammer([mine] + theirs)
    # and the parent goes on as before
    assert bucket.get(_key(test, 0, 1)).value == _value(0, 1)


#: The flavours whose buckets keep working in a child. Not acouchbase (an
#: asyncio loop does not survive fork(); tests/test_acouchbase.py checks its
#: ForkError) and not txcouchbase: a
#: Twisted reactor does not survive fork() (its epoll descriptor is the
#: parent's), so its IOPS has no after_fork and a bucket raises ForkError in
#: the child (tests/test_txcouchbase.py checks that).
FORKABLE = [f for f in FLAVOURS if f not in ("txcouchbase", "acouchbase")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavour", FORKABLE)
def test_parent_and_two_children_hammer_one_bucket_memcached(flavour, memcached_server):
    bucket = open_bucket(flavour, memcached_server.connstr)
    try:
        _run_hammer(bucket, "mc-" + flavour, greenlets=4 if flavour == "gevent" else 1)
    finally:
        bucket.close()


@pytest.mark.timeout(120)
def test_parent_and_two_children_hammer_one_gevent_bucket_couchbase(couchbase_mock):
    bucket = GBucket(couchbase_mock.connstr_for("default"))
    try:
        _run_hammer(bucket, "cb-gevent", greenlets=4)
    finally:
        bucket.close()


@pytest.mark.timeout(120)
def test_parent_and_two_children_hammer_one_blocking_bucket_couchbase(couchbase_mock):
    bucket = BlockingBucket(couchbase_mock.connstr_for("default"))
    try:
        _run_hammer(bucket, "cb-blocking")
    finally:
        bucket.close()


# ---------------------------------------------------------------------------
# the first use in the child


def _local_ports(bucket: Any) -> List[Any]:
    return sorted(c.local_address for c in bucket._engine.connections if c.local_address)


@pytest.mark.timeout(60)
def test_child_first_use_bootstraps_afresh_couchbase(couchbase_mock):
    bucket = GBucket(couchbase_mock.connstr_for("default"))
    try:
        bucket.upsert("fork:boot", "before the fork")
        parent_ports = _local_ports(bucket)
        assert parent_ports

        def child(_index: int) -> Dict[str, Any]:
            engine = bucket._engine
            state = {"bootstrapped_before_use": engine.bootstrapped, "config_before_use": engine.config is not None}
            state["value"] = bucket.get("fork:boot").value
            state["bootstrapped_after_use"] = engine.bootstrapped
            state["ports"] = [list(p) for p in _local_ports(bucket)]
            return state

        report = collect(fork_children(1, child))[0]
        assert report["bootstrapped_before_use"] is False and report["config_before_use"] is False
        assert report["value"] == "before the fork"
        assert report["bootstrapped_after_use"] is True
        assert report["ports"] and not {tuple(p) for p in report["ports"]} & set(parent_ports)
        assert bucket.get("fork:boot").value == "before the fork"
        assert _local_ports(bucket) == parent_ports  # the parent kept its connections
    finally:
        bucket.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", FORKABLE)
def test_child_first_use_reconnects_memcached(flavour, memcached_server):
    bucket = open_bucket(flavour, memcached_server.connstr)
    raw = getattr(bucket, "raw", bucket)
    try:
        bucket.upsert("fork:reconnect:" + flavour, "here")
        parent_ports = _local_ports(raw)

        def child(_index: int) -> Dict[str, Any]:
            connected = raw._engine.connected
            value = bucket.get("fork:reconnect:" + flavour).value
            return {"connected_before_use": connected, "value": value,
                    "ports": [list(p) for p in _local_ports(raw)]}

        report = collect(fork_children(1, child))[0]
        assert report["connected_before_use"] is False
        assert report["value"] == "here"
        assert report["ports"] and not {tuple(p) for p in report["ports"]} & set(parent_ports)
        assert bucket.get("fork:reconnect:" + flavour).value == "here"
        assert _local_ports(raw) == parent_ports
    finally:
        bucket.close()


# ---------------------------------------------------------------------------
# operations in flight at the fork


def _describe(exc: Any) -> str:
    return "%s: %s" % (type(exc).__name__, getattr(exc, "message", exc))


@pytest.mark.timeout(90)
def test_gevent_inflight_ops_fail_in_child_and_complete_in_parent(fresh_memcached):
    bucket = GBucket(fresh_memcached.connstr, operation_timeout=30)
    keys = ["fork:inflight:g:%d" % i for i in range(6)]
    try:
        bucket.upsert_multi({k: "v-" + k for k in keys})
        fresh_memcached.pause()
        try:
            parked = [gevent.spawn(bucket.get, k) for k in keys]
            gevent.sleep(0.3)  # the requests are written; no reply comes
            assert not any(g.ready() for g in parked)

            def child(_index: int) -> Dict[str, Any]:
                gevent.joinall(parked, timeout=10)
                outcomes = [_describe(g.exception) if g.exception is not None else
                            ("value " + str(g.value.value) if g.ready() else "still parked") for g in parked]
                # the bucket itself works in the child (the server is thawed by then)
                return {"outcomes": outcomes, "after": bucket.get(keys[0]).value}

            kids = fork_children(1, child)
        finally:
            fresh_memcached.resume()
        gevent.joinall(parked, timeout=30)
        assert [g.value.value for g in parked] == ["v-" + k for k in keys]
        report = collect(kids)[0]
        assert report["after"] == "v-" + keys[0]
        for outcome in report["outcomes"]:
            assert outcome.startswith("ForkError: the process forked while this operation was in flight"), outcome
            assert "parent process (%d)" % os.getpid() in outcome
    finally:
        bucket.close()


@pytest.mark.timeout(90)
def test_async_inflight_ops_fail_in_child_and_complete_in_parent(fresh_memcached):
    driver = open_bucket("async", fresh_memcached.connstr, operation_timeout=30)
    raw, iops = driver.raw, driver.iops
    keys = ["fork:inflight:a:%d" % i for i in range(4)]
    try:
        driver.upsert_multi({k: "v-" + k for k in keys})
        fresh_memcached.pause()
        try:
            fired: List[Tuple[str, Any]] = []
            results = []
            for k in keys:
                ar = raw.get(k)
                ar.callback = lambda res: fired.append(("ok", res.value))
                ar.errback = lambda res, et, ev, tb: fired.append(("err", _describe(ev)))
                results.append(ar)
            for _ in range(3):
                iops.run_once(0.05)
            assert not fired

            def child(_index: int) -> Dict[str, Any]:
                end = time.monotonic() + 10
                while len(fired) < len(keys) and time.monotonic() < end:
                    iops.run_once(0.2)
                got = list(fired)
                return {"fired": got, "after": driver.get(keys[1]).value}

            kids = fork_children(1, child)
        finally:
            fresh_memcached.resume()
        end = time.monotonic() + 30
        while len(fired) < len(keys) and time.monotonic() < end:
            iops.run_once(0.2)
        assert sorted(fired) == sorted(("ok", "v-" + k) for k in keys)
        report = collect(kids)[0]
        assert len(report["fired"]) == len(keys)
        for kind, what in report["fired"]:
            assert kind == "err" and what.startswith("ForkError: the process forked"), what
        assert report["after"] == "v-" + keys[1]
    finally:
        driver.close()


@pytest.mark.timeout(90)
def test_blocking_bucket_in_use_by_a_thread_at_fork(fresh_memcached):
    """A thread inside a call at the fork does not exist in the child: the
    child can still use the bucket (the thread's hold on the lock does not
    survive), and the thread's call completes in the parent."""
    bucket = BlockingBucket(fresh_memcached.connstr, operation_timeout=30)
    try:
        bucket.upsert("fork:thread", "threaded")
        fresh_memcached.pause()
        got: List[Any] = []
        try:
            thread = threading.Thread(target=lambda: got.append(bucket.get("fork:thread").value))
            thread.start()
            time.sleep(0.3)
            assert thread.is_alive() and not got

            def child(_index: int) -> Any:
                return bucket.get("fork:thread").value

            kids = fork_children(1, child)
        finally:
            fresh_memcached.resume()
        thread.join(30)
        assert got == ["threaded"]
        assert collect(kids) == ["threaded"]
    finally:
        bucket.close()


# ---------------------------------------------------------------------------
# a foreign IOPS


class PollIOPS(base.IOPS):
    """The poll-based IOPS of docs/iops.md: it knows nothing of forks."""

    def __init__(self) -> None:
        self.poller = select.poll()
        self.fds: Dict[int, Any] = {}
        self.timers: List[Any] = []
        self.live: Dict[Any, int] = {}
        self.seq = itertools.count()

    def update_event(self, event, action, flags):  # type: ignore[no-untyped-def]
        fd = event.fileno()
        if action in (base.PYCBC_EVACTION_WATCH, base.PYCBC_EVACTION_RESUME) and flags:
            mask = (select.POLLIN if flags & base.LCB_READ_EVENT else 0) | \
                   (select.POLLOUT if flags & base.LCB_WRITE_EVENT else 0)
            if fd in self.fds:
                self.poller.modify(fd, mask)
            else:
                self.poller.register(fd, mask)
            self.fds[fd] = event
        else:
            if self.fds.pop(fd, None) is not None:
                self.poller.unregister(fd)

    def update_timer(self, timer, action, usecs):  # type: ignore[no-untyped-def]
        self.live.pop(timer, None)
        if action == base.PYCBC_EVACTION_WATCH:
            seq = next(self.seq)
            self.live[timer] = seq
            heapq.heappush(self.timers, (time.monotonic() + usecs / 1e6, seq, timer))

    def run_once(self, max_wait: float = 0.2) -> None:
        wait = max_wait
        if self.timers:
            wait = max(0.0, min(wait, self.timers[0][0] - time.monotonic()))
        for fd, revents in self.poller.poll(wait * 1000):
            event = self.fds.get(fd)
            if event is not None:
                event.ready((base.LCB_READ_EVENT if revents & (select.POLLIN | select.POLLHUP | select.POLLERR)
                             else 0) | (base.LCB_WRITE_EVENT if revents & select.POLLOUT else 0))
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, seq, timer = heapq.heappop(self.timers)
            if self.live.get(timer) == seq:
                del self.live[timer]
                timer.ready(0)


def _wait_async(iops: PollIOPS, ar: AsyncResult, timeout: float = 20.0) -> Any:
    out: List[Any] = []
    ar.callback = out.append
    ar.errback = lambda res, et, ev, tb: out.append(ev)
    end = time.monotonic() + timeout
    while not out and time.monotonic() < end:
        iops.run_once()
    assert out, "no outcome"
    return out[0]


@pytest.mark.timeout(60)
def test_async_bucket_on_foreign_iops_raises_in_child(memcached_server):
    iops = PollIOPS()
    bucket = AsyncBucket(iops, memcached_server.connstr)
    try:
        assert _wait_async(iops, bucket.upsert("fork:foreign", "parent's")).success

        def child(_index: int) -> Dict[str, Any]:
            out: Dict[str, Any] = {}
            for attempt in range(2):
                try:
                    bucket.get("fork:foreign")
                    out["raised%d" % attempt] = None
                except ForkError as exc:
                    out["raised%d" % attempt] = exc.message
            bucket.close()  # does not touch the IOPS, does not raise
            out["closed"] = bucket.closed
            return out

        report = collect(fork_children(1, child))[0]
        for attempt in range(2):
            message = report["raised%d" % attempt]
            assert message and "before os.fork()" in message and "after_fork" in message, message
            assert "PollIOPS" in message
        assert report["closed"] is True
        # the parent is unaffected
        assert _wait_async(iops, bucket.get("fork:foreign")).value == "parent's"
    finally:
        bucket.close()
        for _ in range(3):
            iops.run_once(0.01)


# ---------------------------------------------------------------------------
# gunicorn --preload


APP = '''
import json, os
from gcouchbase.bucket import Bucket

bucket = Bucket(os.environ["FORK_TEST_CONNSTR"])  # made in the master, before the fork


def app(environ, start_response):
    key = environ["QUERY_STRING"].partition("=")[2]
    try:
        body = json.dumps({"key": key, "doc": bucket.get(key).value, "pid": os.getpid()})
    except Exception as exc:
        body = json.dumps({"key": key, "error": repr(exc), "pid": os.getpid()})
    data = body.encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


@pytest.mark.timeout(150)
def test_gunicorn_gevent_preload_serves_each_request_its_own_document(memcached_server, tmp_path):
    pytest.importorskip("gunicorn")
    docs = {"user:%03d" % i: {"owner": "user:%03d" % i, "secret": "s%d" % (i * 7919)} for i in range(100)}
    seed = BlockingBucket(memcached_server.connstr)
    seed.upsert_multi(docs)
    seed.close()
    (tmp_path / "forkapp.py").write_text(textwrap.dedent(APP))
    port = _free_port()
    env = dict(os.environ, FORK_TEST_CONNSTR=memcached_server.connstr,
               PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    log = open(tmp_path / "gunicorn.log", "wb")
    argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "--preload",
            "-b", "127.0.0.1:%d" % port, "--timeout", "60", "--graceful-timeout", "5"]
    from gunicorn.config import KNOWN_SETTINGS  # a plain import: gunicorn patches nothing

    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn 25+: one per user by default, shared by all runs
    proc = subprocess.Popen(argv + ["forkapp:app"], cwd=str(tmp_path), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 40
        while True:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < end, "gunicorn did not start:\n" + (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)

        keys = sorted(docs) * 6  # 600 requests

        def fetch(key: str) -> Dict[str, Any]:
            url = "http://127.0.0.1:%d/?key=%s" % (port, key)
            with urllib.request.urlopen(url, timeout=20) as resp:
                assert resp.status == 200
                return json.loads(resp.read())

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(fetch, keys))
        wrong = [(k, a) for k, a in zip(keys, answers) if a.get("doc") != docs[k] or a.get("key") != k]
        assert not wrong, (len(wrong), wrong[:5])
        assert len({a["pid"] for a in answers}) >= 1
    finally:
        _stop_group(proc)
        log.close()


# ---------------------------------------------------------------------------
# monkey-patched: gevent's os.fork (reinit in the child after our hook)


PATCHED = '''
from gevent import monkey
monkey.patch_all()
import json, os, sys
import gevent
from gcouchbase.bucket import Bucket

bucket = Bucket(sys.argv[1])
bucket.upsert_multi({"fork:patched:%d:%d" % (p, i): "v%d:%d" % (p, i) for p in range(3) for i in range(40)})


def hammer(p):
    bad = []

    def run(g):
        for n in range(150):
            i = (n + g) % 40
            try:
                value = bucket.get("fork:patched:%d:%d" % (p, i)).value
            except Exception as exc:
                value = repr(exc)
            if value != "v%d:%d" % (p, i):
                bad.append(value)

    gevent.joinall([gevent.spawn(run, g) for g in range(4)], timeout=30)
    return bad


kids = []
for p in (1, 2):
    r, w = os.pipe()
    pid = os.fork()  # gevent's fork: reinit() runs in the child after the at-fork hooks
    if pid == 0:
        try:
            os.write(w, json.dumps(hammer(p)).encode())
        finally:
            os._exit(0)
    os.close(w)
    kids.append((pid, r))
out = {"parent": hammer(0)}
for p, (pid, r) in enumerate(kids, 1):
    data = b""
    while True:
        chunk = os.read(r, 65536)  # cooperative under monkey-patching
        if not chunk:
            break
        data += chunk
    out["child%d" % p] = json.loads(data) if data else "no report"
    os.waitpid(pid, 0)
print(json.dumps(out))
'''


@pytest.mark.timeout(120)
def test_monkey_patched_fork_parent_and_two_children(memcached_server, tmp_path):
    script = tmp_path / "patched.py"
    script.write_text(PATCHED)
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, str(script), memcached_server.connstr], env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"parent": [], "child1": [], "child2": []}, out

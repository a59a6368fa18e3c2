"""couchbase_core.testing: freezing a server is awaited, not just signalled."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from couchbase_core.testing.signals import (
    SignalNotObserved,
    continue_process,
    stop_process,
    thread_states,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_pause_returns_with_every_memcached_thread_stopped_and_resume_with_none(fresh_memcached):
    pid = fresh_memcached.proc.pid
    assert len(thread_states(pid)) > 1  # memcached is multi-threaded
    for _ in range(20):
        fresh_memcached.pause()
        states = thread_states(pid)
        assert states and set(states.values()) <= {"T", "t"}, states
        fresh_memcached.resume()
        states = thread_states(pid)
        assert states and not set(states.values()) & {"T", "t"}, states


def test_a_process_that_is_gone_is_reported_not_waited_for():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises((SignalNotObserved, ProcessLookupError)):
        stop_process(proc.pid, timeout=5)


def test_a_zombie_is_reported_at_once():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: a zombie, which a signal cannot stop.
        deadline = time.monotonic() + 30
        while (thread_states(proc.pid) or {}).get(proc.pid) not in ("Z", "X", None):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(SignalNotObserved, match="exited"):
            stop_process(proc.pid, timeout=5)
        with pytest.raises(SignalNotObserved, match="exited"):
            continue_process(proc.pid, timeout=5)
    finally:
        proc.wait()


def test_a_paused_server_answers_nothing_until_resumed(fresh_memcached):
    # Before pause() waited, SIGSTOP landed "soon": on a loaded machine more
    # than half of these requests were still answered while "paused".
    import socket

    for _ in range(20):
        with socket.create_connection((fresh_memcached.host, fresh_memcached.port), timeout=30) as c:
            c.sendall(b"version\r\n")
            assert c.recv(100).startswith(b"VERSION")
            fresh_memcached.pause()
            try:
                c.sendall(b"version\r\n")
                c.settimeout(0.2)
                with pytest.raises(socket.timeout):
                    c.recv(100)
            finally:
                fresh_memcached.resume()
            c.settimeout(30)
            assert c.recv(100).startswith(b"VERSION")  # answered once thawed

"""Servers that hang, die, drop connections or send garbage: every operation
gets a specific error within its timeout, and the bucket recovers."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from couchbase_core.bucket import Bucket, PingStatus
from couchbase_core.exceptions import (
    ConnectError,
    CouchbaseNetworkError,
    NetworkError,
    ProtocolError,
    TimeoutError,
    UnknownHostError,
)
from couchbase_core.testing.memcached import MemcachedServer
from tests.flavours import open_bucket
from tests.proxy import FaultProxy


def test_frozen_server_times_out_then_recovers(flavour, fresh_memcached):
    b = open_bucket(flavour, fresh_memcached.connstr, operation_timeout=30)
    try:
        b.upsert("frozen", "before")
        b.timeout = 0.5
        fresh_memcached.pause()  # returns once every server thread is stopped
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                b.get("frozen")
            elapsed = time.monotonic() - start
            # Never early; the upper bound only tells "the timeout fired"
            # from "parked until something else happened" (a slow machine
            # may take a lot longer than 0.5 s to get round to it).
            assert 0.45 <= elapsed < 0.5 + 20
            assert "timed out" in str(info.value)
            with pytest.raises(TimeoutError):
                b.upsert("frozen", "during")
            # By now the connection may have been declared dead (nothing
            # received, not even the reply to a NOOP probe): the keys then
            # fail with NetworkError rather than TimeoutError.
            with pytest.raises(CouchbaseNetworkError) as info:
                b.get_multi(["frozen", "other"])
            assert len(info.value.all_results) == 2
            assert all(r.rc in (TimeoutError.CODE, NetworkError.CODE) for r in info.value.all_results.values())
        finally:
            fresh_memcached.resume()
        # The late replies to the timed-out requests must be dropped, never
        # handed to later operations. (The timed-out upsert of "during" was
        # written: its outcome is unknown, and if its connection was replaced
        # meanwhile the server may apply it after anything sent on the new
        # one. So the checks use a key of their own.)
        deadline = time.monotonic() + 30
        while True:
            try:
                b.upsert("recovered", "after")
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no recovery after SIGCONT"
        b.timeout = 30  # what follows is about correctness, not speed
        for _ in range(20):
            assert b.get("recovered").value == "after"
        assert b.get("frozen").value in ("before", "during")
        assert b.counter("frozen-ctr", initial=7).value == 7
    finally:
        b.close()


def _when(condition, fn, timeout: float = 30.0) -> threading.Thread:
    """Call ``fn`` on a thread as soon as ``condition()`` holds (not after a
    fixed delay, which a slow machine could outrun)."""
    def run():
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_dropped_connection_fails_in_flight_ops_then_reconnects(flavour, memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        b = open_bucket(flavour, proxy.connstr, operation_timeout=60)
        try:
            b.upsert("drop", 1)
            proxy.forward_replies.clear()  # requests go through, replies are held
            sent = proxy.requests
            _when(lambda: proxy.requests > sent, proxy.drop_connections)  # once the get is out
            start = time.monotonic()
            with pytest.raises(NetworkError) as info:
                b.get("drop")
            assert time.monotonic() - start < 30  # failed by the drop, not the 60 s timeout
            assert "closed" in str(info.value) or "error" in str(info.value)
            proxy.forward_replies.set()
            assert b.get("drop").value == 1  # reconnected on demand
            assert proxy.accepted == 2
        finally:
            b.close()


def test_node_dying_mid_batch_accounts_for_every_key(flavour, fresh_memcached):
    b = open_bucket(flavour, fresh_memcached.connstr, operation_timeout=60)
    try:
        keys = ["batch%d" % i for i in range(1000)]
        b.upsert_multi({k: i for i, k in enumerate(keys)})
        fresh_memcached.pause()  # the batch goes out; no reply comes back
        conn = b._engine.connections[0]
        _when(lambda: len(conn.pending) >= len(keys), fresh_memcached.kill)  # once all are submitted
        start = time.monotonic()
        with pytest.raises(CouchbaseNetworkError) as info:
            b.get_multi(keys)
        assert time.monotonic() - start < 30  # failed by the death, not the 60 s timeout
        results = info.value.all_results
        assert set(results) == set(keys)
        assert all(r.rc == NetworkError.CODE for r in results.values())
        with pytest.raises(CouchbaseNetworkError):
            b.get(keys[0])  # the node is gone: a prompt connection error
    finally:
        b.close()


def test_garbage_from_the_server_is_a_protocol_error(flavour, memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        b = open_bucket(flavour, proxy.connstr, operation_timeout=30)
        try:
            b.upsert("garbage", 1)
            proxy.forward_replies.clear()
            sent = proxy.requests
            _when(lambda: proxy.requests > sent, lambda: proxy.inject(b"\xde\xad\xbe\xef" * 8))
            with pytest.raises(ProtocolError) as info:
                b.get("garbage")
            assert "magic" in str(info.value)
            proxy.forward_replies.set()
            assert b.get("garbage").value == 1
        finally:
            b.close()


def test_connection_refused_is_a_prompt_connect_error(flavour):
    # A port bound but not listening refuses connections, and stays ours
    # (a port closed again could be taken by another process meanwhile).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(ConnectError) as info:
            open_bucket(flavour, "memcached://127.0.0.1:%d" % port, connect_timeout=60)
        # Prompt: the refusal is reported, the 60 s connect timeout not awaited.
        assert time.monotonic() - start < 30
    assert "127.0.0.1:%d" % port in str(info.value)


def test_unresponsive_listener_gives_connect_timeout(flavour):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Fill the accept queue so further handshakes stall in SYN.
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        # The first filler's handshake completes (it sits in the full accept
        # queue); the others stall in SYN.
        _, writable, _ = select.select([], fillers[:1], [], 30)
        assert writable and fillers[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        start = time.monotonic()
        with pytest.raises(ConnectError) as info:
            open_bucket(flavour, "memcached://127.0.0.1:%d" % port, connect_timeout=0.5)
        elapsed = time.monotonic() - start
        assert elapsed < 0.5 + 20  # the timeout fired (however late a loaded machine runs it)
        assert "timed out" in str(info.value) or "negotiat" in str(info.value)
    finally:
        for f in fillers:
            f.close()
        listener.close()


def test_unknown_host(flavour):
    with pytest.raises(UnknownHostError) as info:
        open_bucket(flavour, "memcached://no-such-host.invalid:11211")
    assert "no-such-host.invalid" in str(info.value)


# ------------------------------------------------------------- several nodes


@pytest.fixture
def three_servers():
    servers = [MemcachedServer().start() for _ in range(3)]
    yield servers
    for s in servers:
        s.stop()


def test_keys_are_spread_by_ketama(flavour, three_servers):
    from couchbase_core._engine.config import Ketama

    connstr = "memcached://" + ",".join(s.address for s in three_servers)
    b = open_bucket(flavour, connstr)
    singles = {s.address: Bucket(s.connstr) for s in three_servers}
    try:
        keys = ["spread%d" % i for i in range(300)]
        b.upsert_multi({k: k for k in keys})
        ring = Ketama([s.address for s in three_servers])
        per_server = {a: 0 for a in singles}
        for k in keys:
            owner = ring.servers[ring.server_for(k.encode())]
            per_server[owner] += 1
            assert singles[owner].get(k).value == k
            for other, single in singles.items():
                if other != owner:
                    assert single.get(k, quiet=True).success is False
        assert all(n > 30 for n in per_server.values()), per_server
        stats = b.stats()
        assert set(stats["pid"]) == set(singles)
        assert {e["remote"] for e in b.ping()["services"]["kv"]} == set(singles)
    finally:
        b.close()
        for s in singles.values():
            s.close()


def test_one_node_down(flavour, three_servers):
    from couchbase_core._engine.config import Ketama

    connstr = "memcached://" + ",".join(s.address for s in three_servers)
    dead = three_servers[1]
    dead.stop()
    # Keep the dead node's port (bound, not listening: connections are
    # refused) so no other process takes it before the node comes back.
    reserved = socket.socket()
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserved.bind((dead.host, dead.port))
    b = open_bucket(flavour, connstr, operation_timeout=30)  # the dead node refuses: no waiting
    try:
        ring = Ketama([s.address for s in three_servers])
        keys = ["down%d" % i for i in range(60)]
        owners = {k: ring.servers[ring.server_for(k.encode())] for k in keys}
        with pytest.raises(CouchbaseNetworkError) as info:
            b.upsert_multi({k: 1 for k in keys})
        results = info.value.all_results
        assert set(results) == set(keys)
        for k in keys:
            assert results[k].success == (owners[k] != dead.address), k
        report = b.ping()["services"]["kv"]
        status = {e["remote"]: e["status"] for e in report}
        assert status[dead.address] == PingStatus.ERROR
        assert sum(1 for v in status.values() if v == PingStatus.OK) == 2
        reserved.close()
        dead.start()  # on its old port again
        deadline = time.monotonic() + 30
        while True:
            try:
                assert b.upsert_multi({k: 2 for k in keys}).all_ok
                break
            except CouchbaseNetworkError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        reserved.close()
        b.close()

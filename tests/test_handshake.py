"""The connection handshake against plain memcached and servers that
mishandle HELLO."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from couchbase_core._engine.instance import Engine
from couchbase_core._engine.protocol import FrameDecoder, Opcode, encode_request
from couchbase_core._engine.settings import Settings
from couchbase_core._kvops import GetOp, StoreOp
from couchbase_core.bucket import Bucket
from couchbase_core.iops.select import SelectIOPS
from tests.flavours import open_bucket
from tests.proxy import FaultProxy


def _frames_in(data: bytes) -> int:
    n = 0
    while len(data) >= 24:
        end = 24 + struct.unpack_from(">I", data, 8)[0]
        if len(data) < end:
            break
        n, data = n + 1, data[end:]
    return n


def _exchange(port: int, payload: bytes, frames: int = 0, idle: float = 0.5) -> bytes:
    """Send ``payload``; read until ``frames`` whole frames arrived (waiting
    as long as a loaded machine needs), then for ``idle`` seconds more to
    catch any frame that should not come."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
        data = b""
        s.settimeout(30)
        while _frames_in(data) < frames:
            chunk = s.recv(65536)
            assert chunk, "connection closed after %r" % data
            data += chunk
        s.settimeout(idle)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        return data


def test_memcached_is_silent_on_a_lone_keyed_hello(memcached_server):
    """Why HELLO must not carry a key on memcached://: memcached waits for
    key-length more bytes before it answers."""
    hello = encode_request(Opcode.HELLO, b"agent-name", value=b"\x00\x03", opaque=1)
    assert _exchange(memcached_server.port, hello) == b""


def test_memcached_swallows_bytes_after_a_keyed_unknown_command(memcached_server):
    key = b"agent"
    hello = encode_request(Opcode.HELLO, key, value=b"\x00\x03", opaque=1)
    noop = encode_request(Opcode.NOOP, opaque=2)
    frames = FrameDecoder().feed(_exchange(memcached_server.port, hello + noop, frames=1))
    assert [(f[1], f[2]) for f in frames] == [(Opcode.HELLO, 0x81)]  # the NOOP was eaten
    padded = FrameDecoder().feed(_exchange(memcached_server.port, hello + b"\x00" * len(key) + noop, frames=2))
    assert [f[4] for f in padded] == [1, 2]  # exactly key-length bytes too many


def test_memcached_answers_a_keyless_hello_and_stays_in_step(memcached_server):
    hello = encode_request(Opcode.HELLO, b"", value=b"\x00\x03\x00\x07", opaque=1)
    noop = encode_request(Opcode.NOOP, opaque=2)
    frames = FrameDecoder().feed(_exchange(memcached_server.port, hello + noop, frames=2))
    assert [(f[4], f[2]) for f in frames] == [(1, 0x81), (2, 0)]


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_bucket_handshake_with_memcached_is_one_connection_and_fast(flavour, memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        start = time.monotonic()
        b = open_bucket(flavour, proxy.connstr, connect_timeout=60)
        try:
            elapsed = time.monotonic() - start
            b.upsert("hs-fast", 1)
            assert b.get("hs-fast").value == 1
            conn = b._engine.connections[0]
            assert conn.hello_disabled and conn.features == frozenset()
            assert proxy.accepted == 1 and proxy.hellos == 1
            assert elapsed < 30  # no HELLO (or other) timeout of 60 s awaited
        finally:
            b.close()


@pytest.mark.parametrize("mode", ["silent", "close"])
@pytest.mark.parametrize("flavour", ["blocking", "async", "gevent"])
def test_hello_swallowed_or_closing_server(flavour, mode, memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port, hello_mode=mode) as proxy:
        # The swallowed HELLO costs one connect timeout; the reconnect must
        # finish within one too, so it is not cut too fine for a slow machine.
        b = open_bucket(flavour, proxy.connstr, connect_timeout=1.5)
        try:
            b.upsert("hs-" + mode, mode)
            assert b.get("hs-" + mode).value == mode
            assert proxy.accepted == 2, "expected one reconnect without HELLO"
            assert proxy.hellos == 1
            assert b._engine.connections[0].hello_disabled
        finally:
            b.close()


def _engine_with_agent(port: int, connect_timeout: float = 1.5) -> tuple:
    iops = SelectIOPS()
    settings = Settings(hosts=[("127.0.0.1", port)], hello_agent=True, connect_timeout=connect_timeout)
    engine = Engine(iops, settings)
    outcome = []
    engine.start(outcome.append)
    deadline = time.monotonic() + 60
    while not outcome and time.monotonic() < deadline:
        iops.run_once(0.05)
    return iops, engine, outcome


def _run(iops, op, timeout=60.0):
    got = []
    op.sink = got.append
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        iops.run_once(0.05)
    return got


def test_keyed_hello_to_memcached_recovers_by_reconnecting(memcached_server):
    """A Couchbase-style HELLO (with the agent name) to plain memcached gets
    silence; the connection gives up on HELLO, reconnects and works."""
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        iops, engine, outcome = _engine_with_agent(proxy.port)
        try:
            assert outcome == [None]
            conn = engine.connections[0]
            assert conn.hello_disabled
            store = StoreOp("ka", Opcode.SET, b"ka", struct.pack(">II", 0, 0), b"v", 0, 30.0)
            engine.submit(store)
            assert _run(iops, store)[0].rc == 0
            get = GetOp("ka", b"ka", 0, 30.0, None, True)
            engine.submit(get)
            assert _run(iops, get)[0].value == b"v"
            assert proxy.accepted == 2 and proxy.hellos == 1
        finally:
            engine.close()
            iops.close()


def test_operations_queued_during_the_handshake_are_not_lost(memcached_server):
    with FaultProxy("127.0.0.1", memcached_server.port, hello_mode="silent") as proxy:
        iops = SelectIOPS()
        settings = Settings(hosts=[("127.0.0.1", proxy.port)], connect_timeout=1.5)
        engine = Engine(iops, settings)
        engine.start()
        ops = []
        for i in range(20):
            op = StoreOp(i, Opcode.SET, b"q%d" % i, struct.pack(">II", 0, 0), b"x", 0, 30.0)
            got = []
            op.sink = got.append
            engine.submit(op)
            ops.append(got)
        deadline = time.monotonic() + 60
        while not all(ops) and time.monotonic() < deadline:
            iops.run_once(0.05)
        assert [g[0].rc for g in ops] == [0] * 20
        engine.close()
        iops.close()


def test_garbage_reply_to_hello_fails_the_bootstrap_quickly(memcached_server):
    """A server that answers with bytes that are not a frame."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    import threading

    def serve():
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            try:
                c.recv(1024)
                c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        start = time.monotonic()
        from couchbase_core.exceptions import ProtocolError

        with pytest.raises(ProtocolError) as info:
            Bucket("memcached://127.0.0.1:%d?connect_timeout=60&config_total_timeout=60" % port)
        assert time.monotonic() - start < 30  # the garbage ends it, not a 60 s timeout
        assert "magic" in str(info.value)
    finally:
        listener.close()

"""The transport seam (couchbase_core/_engine/transport.py) driven without
sockets: scripted sockets (couchbase_core/testing/scripted.py) decide what
each send and recv does, and a hand-driven IOPS decides when readiness is
reported. Then the KV and HTTP connections over the same doubles: what
the KV write queue learns from partial writes decides retry versus
"outcome unknown"; HTTP responses cut anywhere arrive whole."""

from __future__ import annotations

import errno
import json
import ssl
import struct
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest

from couchbase_core._engine.http import HTTPConnection, HTTPRequest
from couchbase_core._engine.instance import Engine
from couchbase_core._engine.protocol import HEADER, FrameDecoder, Opcode, Status, encode_response
from couchbase_core._engine.settings import Settings
from couchbase_core._engine.transport import CLOSED, OPEN, TLS_HANDSHAKE, Transport
from couchbase_core._kvops import GetOp, StoreOp
from couchbase_core.exceptions import RC
from couchbase_core.iops.base import LCB_READ_EVENT, LCB_WRITE_EVENT, PYCBC_EVACTION_WATCH
from couchbase_core.testing.scripted import (
    ManualIOPS,
    ScriptedNetwork,
    ScriptedSocket,
    scripted_resolver,
)

ADDR1 = ("10.0.0.1", 11210)
ADDR2 = ("10.0.0.2", 11210)


class Owner:
    """Records what the transport tells its owner; pulls what is readable,
    pushes ``out`` when writable and keeps the count of each send."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.log: List[Any] = []
        self.received = bytearray()
        self.chunks: List[bytes] = []
        self.out = b""
        self.counts: List[int] = []

    def callbacks(self) -> Dict[str, Any]:
        return dict(on_connected=lambda: self.log.append("connected"), on_readable=self.readable,
                    on_writable=self.writable, on_eof=lambda: self.log.append("eof"),
                    on_error=lambda rc, message: self.log.append(("error", rc, message)),
                    on_tls_started=lambda: self.log.append("tls"))

    def readable(self) -> None:
        data = self.transport.recv()
        if data is not None:
            self.received += data
            self.chunks.append(data)

    def writable(self) -> None:
        self.write()

    def write(self) -> None:
        sent = self.transport.send(self.out)
        self.counts.append(sent)
        if sent > 0:
            self.out = self.out[sent:]
        self.transport.want_write(bool(self.out) and sent >= 0)

    @property
    def errors(self) -> List[Any]:
        return [e for e in self.log if isinstance(e, tuple)]


def open_transport(net: ScriptedNetwork, addresses: Any = (ADDR1,), host: str = "node", **kwargs: Any):
    iops = ManualIOPS()
    owner = Owner()
    transport = owner.transport = Transport(iops, host, 11210, resolve=scripted_resolver(*addresses),
                                            socket_factory=net.factory, **owner.callbacks(), **kwargs)
    transport.connect()
    return iops, owner, transport


def connected(net: Optional[ScriptedNetwork] = None, **kwargs: Any):
    net = net or ScriptedNetwork()
    iops, owner, transport = open_transport(net, **kwargs)
    iops.pump()
    assert owner.log == ["connected"] and transport.phase is OPEN
    return iops, owner, transport, net.opened[-1]


def watched(iops: ManualIOPS) -> int:
    flags = 0
    for f in iops.watched.values():
        flags |= f
    return flags


# --------------------------------------------------------------- connecting

def test_connect_reports_connected_from_the_loop_and_watches_reads():
    net = ScriptedNetwork()
    iops, owner, transport = open_transport(net)
    assert owner.log == [], "nothing is reported inside connect()"
    assert watched(iops) == LCB_WRITE_EVENT  # the connect's completion
    iops.pump()
    assert owner.log == ["connected"]
    assert watched(iops) == LCB_READ_EVENT
    assert net.opened[0].address == ADDR1
    assert transport.local_address is not None


def test_connect_refused_on_the_first_address_then_the_second_is_tried():
    net = ScriptedNetwork()
    first = net.add(connect_error=errno.ECONNREFUSED)
    second = net.add()
    iops, owner, transport = open_transport(net, addresses=(ADDR1, ADDR2))
    iops.pump()  # the first reports its failure; the second is started
    iops.pump()
    assert owner.log == ["connected"]
    assert first.closed and first.address == ADDR1
    assert not second.closed and second.address == ADDR2 and transport.sock is second


def test_every_address_refused_is_one_connect_error():
    net = ScriptedNetwork()
    net.add(connect_error=errno.ECONNREFUSED)
    net.add(connect_result=errno.ECONNREFUSED)  # refused at once by connect_ex
    iops, owner, transport = open_transport(net, addresses=(ADDR1, ADDR2))
    iops.pump()
    assert owner.log == [("error", RC.CONNECT, "cannot connect to node:11210: Connection refused (ECONNREFUSED)")]
    assert transport.phase is CLOSED and all(s.closed for s in net.opened)
    assert not iops.watched


def test_a_name_that_does_not_resolve_is_an_unknown_host():
    iops = ManualIOPS()
    owner = Owner()
    t = Transport(iops, "nowhere", 1, resolve=scripted_resolver(error=OSError("no such name")),
                  socket_factory=ScriptedNetwork().factory, **owner.callbacks())
    t.connect()
    assert owner.log == [("error", RC.UNKNOWN_HOST, "cannot resolve host 'nowhere': no such name")]


def test_a_transport_connects_once():
    iops, owner, transport, _sock = connected()
    with pytest.raises(RuntimeError):
        transport.connect()


# ------------------------------------------------------------------ writing

def test_partial_writes_deliver_every_byte_in_order_with_exact_counts():
    iops, owner, transport, sock = connected()
    payload = bytes(range(256)) * 2
    sock.script_send(*([1] * 40))  # one byte per send, then the rest at once
    owner.out = payload
    owner.write()
    while owner.out:
        iops.pump()
    assert bytes(sock.sent) == payload
    assert owner.counts == [1] * 40 + [len(payload) - 40]
    assert owner.counts == sock.send_counts
    assert watched(iops) == LCB_READ_EVENT  # write interest dropped once done


def test_a_full_socket_takes_nothing_and_write_interest_stays():
    iops, owner, transport, sock = connected()
    sock.script_send(BlockingIOError, 0, 3)
    owner.out = b"abcdefgh"
    owner.write()
    assert owner.counts == [0] and watched(iops) == LCB_READ_EVENT | LCB_WRITE_EVENT
    iops.pump()
    assert owner.counts == [0, 0] and watched(iops) & LCB_WRITE_EVENT
    iops.pump()
    iops.pump()
    assert owner.counts == [0, 0, 3, 5] and bytes(sock.sent) == b"abcdefgh"
    assert owner.errors == []


def test_a_reset_mid_write_is_one_error_and_then_silence():
    iops, owner, transport, sock = connected()
    sock.script_send(3, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    sock.feed(b"a reply nobody will read")
    owner.out = b"0123456789"
    owner.write()
    iops.pump(LCB_WRITE_EVENT)
    assert owner.counts == [3, -1]
    assert owner.errors == [("error", RC.NETWORK, "error writing to node:11210: [Errno 104] Connection reset by peer")]
    assert transport.phase is CLOSED and sock.closed and not iops.watched
    for _ in range(3):
        iops.pump()
    assert len(owner.log) == 2 and owner.received == b""
    assert transport.send(b"more") == -1 and transport.recv() is None


# ------------------------------------------------------------------ reading

def test_short_reads_and_frames_split_anywhere_reach_the_owner_intact():
    frames = b"".join(encode_response(Opcode.GET, 0, value=b"v%d" % i * i, opaque=i) for i in range(1, 6))
    for cut in range(1, len(frames)):
        iops, owner, transport, sock = connected()
        sock.feed(frames[:cut], frames[cut:])
        iops.pump_until(lambda owner=owner: len(owner.received) == len(frames))
        assert bytes(owner.received) == frames
        assert [f[4] for f in FrameDecoder().feed(bytes(owner.received))] == [1, 2, 3, 4, 5]


def test_reads_are_cut_to_the_read_size():
    iops, owner, transport, sock = connected(read_size=4)
    sock.feed(b"0123456789")
    iops.pump_until(lambda: len(owner.received) == 10)
    assert owner.chunks == [b"0123", b"4567", b"89"]


def test_a_reset_mid_read_is_one_error_and_then_silence():
    iops, owner, transport, sock = connected()
    sock.feed(b"part of a fr", ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), b"never")
    iops.pump()
    iops.pump()
    assert owner.received == b"part of a fr"
    assert owner.log == ["connected", ("error", RC.NETWORK,
                                       "error reading from node:11210: [Errno 104] Connection reset by peer")]
    iops.pump()
    assert len(owner.log) == 2 and sock.closed and transport.phase is CLOSED


def test_end_of_stream_is_one_eof_and_then_silence():
    iops, owner, transport, sock = connected()
    sock.feed(b"last words", b"")
    iops.pump()
    iops.pump()
    iops.pump()
    assert owner.received == b"last words"
    assert owner.log == ["connected", "eof"]
    assert sock.closed and not iops.watched


def test_unread_bytes_come_back_first():
    iops, owner, transport, sock = connected()
    sock.feed(b"tail")
    transport.unread(b"head-")
    assert transport.recv() == b"head-"
    assert transport.recv() == b"tail"
    assert transport.recv() is None


def test_pausing_reads_drops_read_interest_and_resuming_restores_it():
    iops, owner, transport, sock = connected()
    transport.pause_reading()
    assert watched(iops) == 0
    sock.feed(b"waits")
    iops.pump()
    assert owner.received == b""
    transport.resume_reading()
    iops.pump()
    assert owner.received == b"waits"


def test_still_open_peeks_without_reading():
    iops, owner, transport, sock = connected()
    assert transport.still_open()
    sock.feed(b"unasked")
    assert not transport.still_open()
    assert transport.recv() == b"unasked"


# ---------------------------------------------------------------- closing

def test_close_is_final_and_idempotent():
    iops, owner, transport, sock = connected()
    event = next(iter(iops.watched))
    transport.close()
    transport.close()
    assert sock.closed and not iops.watched and transport.phase is CLOSED
    event.ready(LCB_READ_EVENT | LCB_WRITE_EVENT)  # a late report from the loop
    assert owner.log == ["connected"]


def test_abandon_after_fork_closes_without_send_recv_shutdown_or_iops():
    iops, owner, transport, sock = connected()
    owner.out = b"pending request"
    sock.script_send(BlockingIOError)
    owner.write()
    sock.feed(b"pending reply")
    io_before = list(sock.io_calls)
    updates_before = len(iops.updates)
    event = next(iter(iops.watched))
    transport.abandon_after_fork()
    assert sock.closed and sock.calls[-1] == ("close",)
    assert sock.io_calls == io_before, "no send, recv or shutdown on the parent's stream"
    assert len(iops.updates) == updates_before, "no IOPS call"
    event.ready(LCB_READ_EVENT | LCB_WRITE_EVENT)
    assert owner.log == ["connected"] and transport.phase is CLOSED


# -------------------------------------------------------------------- TLS

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def tls_contexts():
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return client, server


class TLSPeer:
    """The server end of TLS over memory BIOs, attached to a scripted
    socket: what the client sends goes in, what the server says is fed."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.established = False
        self.received = bytearray()
        self.sock: Optional[ScriptedSocket] = None

    def __call__(self, sock: ScriptedSocket, data: bytes) -> None:
        self.sock = sock
        self.incoming.write(data)
        if not self.established:
            try:
                self.obj.do_handshake()
                self.established = True
            except ssl.SSLWantReadError:
                pass
        if self.established:
            while True:
                try:
                    chunk = self.obj.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not chunk:
                    break
                self.received += chunk
        self._flush()

    def write(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def _flush(self) -> None:
        out = self.outgoing.read()
        if out and self.sock is not None:
            self.sock.feed(out)


def test_tls_carries_bytes_both_ways(tls_contexts):
    client, server = tls_contexts
    peer = TLSPeer(server)
    net = ScriptedNetwork()
    net.add(peer=peer)
    iops, owner, transport = open_transport(net, host="localhost", tls_context=client)
    iops.pump_until(lambda: "connected" in owner.log)
    assert owner.log == ["tls", "connected"] and transport.tls is not None
    owner.out = b"GET me something"
    owner.write()
    assert owner.counts == [len(b"GET me something")], "plaintext accepted whole"
    iops.pump_until(lambda: bytes(peer.received) == b"GET me something")
    peer.write(b"here it is")
    iops.pump_until(lambda: bytes(owner.received) == b"here it is")
    assert owner.errors == []


def test_tls_takes_no_plaintext_while_ciphertext_waits(tls_contexts):
    client, server = tls_contexts
    peer = TLSPeer(server)
    net = ScriptedNetwork()
    sock = net.add(peer=peer)
    iops, owner, transport = open_transport(net, host="localhost", tls_context=client, tls_backlog=1000)
    iops.pump_until(lambda: "connected" in owner.log)
    sock.script_send(*([BlockingIOError] * 3))  # the socket is full for a while
    assert transport.send(b"x" * 2000) == 2000  # accepted: little ciphertext waited
    assert transport.send(b"y") == 0, "plaintext stays with its owner while the backlog is large"
    assert watched(iops) & LCB_WRITE_EVENT, "write interest while ciphertext waits"
    iops.pump_until(lambda: len(peer.received) == 2000)
    assert transport.send(b"y") == 1
    iops.pump_until(lambda: bytes(peer.received) == b"x" * 2000 + b"y")


def test_a_tls_handshake_error_is_a_connect_error(tls_contexts):
    client, _server = tls_contexts
    net = ScriptedNetwork()
    sock = net.add()
    iops, owner, transport = open_transport(net, host="localhost", tls_context=client)
    iops.pump()  # connected: the ClientHello goes out
    assert transport.phase is TLS_HANDSHAKE and sock.sent[:1] == b"\x16"
    sock.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # not TLS
    iops.pump()
    (error,) = owner.errors
    assert error[1] == RC.CONNECT and error[2].startswith("TLS handshake with localhost:11210 failed: ")
    assert transport.phase is CLOSED and sock.closed
    iops.pump()
    assert owner.log == ["tls", error]


def test_a_tls_error_mid_stream_is_a_network_error(tls_contexts):
    client, server = tls_contexts
    peer = TLSPeer(server)
    net = ScriptedNetwork()
    sock = net.add(peer=peer)
    iops, owner, transport = open_transport(net, host="localhost", tls_context=client)
    iops.pump_until(lambda: "connected" in owner.log)
    peer.write(b"fine")
    iops.pump_until(lambda: bytes(owner.received) == b"fine")
    sock.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # an application record that does not decrypt
    iops.pump()
    (error,) = owner.errors
    assert error[1] == RC.NETWORK and error[2].startswith("TLS error from localhost:11210: ")
    iops.pump()
    assert owner.log[-1] == error and sock.closed


def test_tls_abandon_after_fork_sends_no_close_notify(tls_contexts):
    client, server = tls_contexts
    peer = TLSPeer(server)
    net = ScriptedNetwork()
    sock = net.add(peer=peer)
    iops, owner, transport = open_transport(net, host="localhost", tls_context=client)
    iops.pump_until(lambda: "connected" in owner.log)
    sent = bytes(sock.sent)
    transport.abandon_after_fork()
    assert bytes(sock.sent) == sent and sock.closed


# ------------------------------------------------------ the KV connection

class FakeNode:
    """A Couchbase node reduced to what the engine needs: HELLO, the
    cluster config, SET and GET. Shared by every socket to it, like a
    server's store; ``applied`` lists each SET it executed."""

    def __init__(self) -> None:
        self.store: Dict[bytes, bytes] = {}
        self.applied: List[bytes] = []
        self.buffers: Dict[int, bytearray] = {}
        #: bytes sent right behind the HELLO reply: (in the same chunk, in the next)
        self.after_hello: Optional[Any] = None

    def config(self, rev: int = 1) -> bytes:
        return json.dumps({
            "rev": rev, "name": "default", "nodeLocator": "vbucket", "uuid": "u",
            "nodesExt": [{"hostname": "127.0.0.1", "services": {"kv": 11210, "mgmt": 8091}}],
            "vBucketServerMap": {"hashAlgorithm": "CRC", "numReplicas": 0, "serverList": ["127.0.0.1:11210"],
                                 "vBucketMap": [[0]] * 4},
        }).encode()

    def __call__(self, sock: ScriptedSocket, data: bytes) -> None:
        buf = self.buffers.setdefault(id(sock), bytearray())
        buf += data
        while len(buf) >= 24:
            _magic, opcode, keylen, extlen, _dt, _vb, bodylen, opaque, _cas = HEADER.unpack_from(buf)
            if len(buf) < 24 + bodylen:
                break
            body = bytes(buf[24:24 + bodylen])
            del buf[:24 + bodylen]
            key = body[extlen:extlen + keylen]
            value = body[extlen + keylen:]
            reply = self.answer(opcode, key, value, opaque)
            if opcode == Opcode.HELLO and self.after_hello is not None:
                same, following = self.after_hello
                sock.feed(reply + same, following)
            else:
                sock.feed(reply)

    def answer(self, opcode: int, key: bytes, value: bytes, opaque: int) -> bytes:
        if opcode == Opcode.HELLO:
            return encode_response(opcode, 0, opaque=opaque)
        if opcode == Opcode.GET_CLUSTER_CONFIG:
            return encode_response(opcode, 0, value=self.config(), opaque=opaque)
        if opcode == Opcode.SET:
            self.store[key] = value
            self.applied.append(key)
            return encode_response(opcode, 0, opaque=opaque, cas=len(self.applied))
        if opcode == Opcode.GET:
            if key not in self.store:
                return encode_response(opcode, Status.KEY_ENOENT, opaque=opaque)
            return encode_response(opcode, 0, extras=b"\x00" * 4, value=self.store[key], opaque=opaque)
        return encode_response(opcode, Status.UNKNOWN_COMMAND, opaque=opaque)


def _store(key: str, value: bytes) -> StoreOp:
    return StoreOp(key, Opcode.SET, key.encode(), struct.pack(">II", 0, 0), value, 0, 30.0)


def _bootstrapped(node: FakeNode) -> Any:
    iops = ManualIOPS()
    net = ScriptedNetwork(default=lambda: ScriptedSocket(peer=node))
    settings = Settings.from_connstr("couchbase://127.0.0.1/default?bootstrap_on=cccp")
    engine = Engine(iops, settings, clock=iops.clock)
    engine.socket_factory = net.factory
    outcome: List[Any] = []
    engine.start(outcome.append)
    iops.pump_until(lambda: outcome)
    assert outcome == [None]
    return iops, net, engine


def _run(iops: ManualIOPS, *ops: Any) -> List[Any]:
    got: List[Any] = []
    for op in ops:
        op.sink = got.append
    iops.pump_until(lambda: len(got) == len(ops))
    return got


def test_kv_reset_mid_write_partly_written_is_unknown_unwritten_is_retried():
    """The connection's queue learns byte by byte what the socket took: a
    mutation of which 10 bytes left when the connection reset may have
    been executed (OutcomeUnknownError); one of which nothing left is sent
    again on the new connection, and applied once."""
    node = FakeNode()
    iops, net, engine = _bootstrapped(node)
    conn = engine.connections[0]
    sock = conn._sock
    sock.script_send(10, ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    partly, never = _store("partly", b"1"), _store("never", b"2")
    engine.submit(partly)
    engine.submit(never)
    results = {}
    for op in (partly, never):
        op.sink = lambda res, key=op.key: results.__setitem__(key, res)
    for _ in range(200):  # the loop turns; retry backoffs pass on the virtual clock
        if len(results) == 2:
            break
        iops.pump()
        iops.advance(0.01)
    assert results["partly"].rc == RC.OUTCOME_UNKNOWN
    assert results["never"].rc == 0
    assert node.applied == [b"never"], "the partial frame never completed, the unwritten one ran once"
    assert len(net.opened) == 2 and net.opened[0].closed
    engine.close()


def test_kv_partial_writes_one_byte_at_a_time_complete_every_request():
    node = FakeNode()
    iops, net, engine = _bootstrapped(node)
    sock = engine.connections[0]._sock
    ops = [_store("k%d" % i, b"v" * i) for i in range(5)]
    before = len(sock.send_counts)
    sock.script_send(*([1] * 1000))
    for op in ops:
        engine.submit(op)
    got = _run(iops, *ops)
    assert [r.rc for r in got] == [0] * 5
    assert sorted(node.applied) == sorted(op.key.encode() for op in ops)
    counts = sock.send_counts[before:]
    assert set(counts) == {1} and len(counts) == sum(24 + 8 + 2 + i for i in range(5))
    get = GetOp("k3", b"k3", 0, 30.0, None, True)
    engine.submit(get)
    assert _run(iops, get)[0].value == b"vvv"
    engine.close()


def test_kv_replies_split_at_every_byte_reach_their_operations():
    node = FakeNode()
    iops, net, engine = _bootstrapped(node)
    sock = engine.connections[0]._sock
    engine.submit(_store("split", b"value"))
    iops.pump_until(lambda: node.store.get(b"split"))
    reply = node.answer(Opcode.GET, b"split", b"", 0)  # the length of a GET reply
    for cut in range(1, len(reply)):
        sock.peer = None  # answer by hand, cut in two
        get = GetOp("split", b"split", 0, 30.0, None, True)
        got: List[Any] = []
        get.sink = got.append
        engine.submit(get)
        answer = node.answer(Opcode.GET, b"split", b"", get.opaque)
        sock.feed(answer[:cut])
        iops.pump()
        assert not got
        sock.feed(answer[cut:])
        iops.pump_until(lambda got=got: got)
        assert got[0].value == b"value", cut
    engine.close()


def test_kv_abandon_after_fork_leaves_the_parents_stream_alone():
    node = FakeNode()
    iops, net, engine = _bootstrapped(node)
    conn = engine.connections[0]
    sock = conn._sock
    io_before = list(sock.io_calls)
    pending = conn.abandon_after_fork()
    assert pending == []
    assert sock.closed and sock.io_calls == io_before
    assert conn.state == "idle" and conn._sock is None


def test_kv_bytes_behind_the_last_handshake_reply_reach_the_decoder():
    """A config push that the server sends right behind its HELLO reply
    (part of it in the same read) is decoded and applied, not dropped."""
    node = FakeNode()
    push = b"\x82" + encode_response(0x01, 0, value=node.config(rev=7))[1:]
    node.after_hello = (push[:30], push[30:])
    iops, net, engine = _bootstrapped(node)
    iops.pump_until(lambda: engine.config is not None and engine.config.rev == 7)
    store = _store("after-push", b"ok")
    engine.submit(store)
    assert _run(iops, store)[0].rc == 0
    engine.close()


# ---------------------------------------------------- the HTTP connection

class HTTPEngine:
    """What HTTPConnection needs from an engine, on the hand-driven IOPS."""

    def __init__(self, net: ScriptedNetwork) -> None:
        self.iops = ManualIOPS()
        self.settings = SimpleNamespace(client_string="transport-test/1.0")
        self.tls_context = None
        self.socket_factory = net.factory

    def defer(self, fn: Any) -> None:
        timer = self.iops.timer_event_factory()
        timer._handler = lambda _flags: fn()
        self.iops.update_timer(timer, PYCBC_EVACTION_WATCH, 0)


def _http_request(log: List[Any]) -> HTTPRequest:
    return HTTPRequest("GET", "/x", on_head=lambda status, headers: log.append(("head", status)),
                       on_data=lambda data: log.append(("data", data)), on_end=lambda: log.append("end"),
                       on_error=lambda rc, message: log.append(("error", rc, message)))


def test_http_response_split_at_every_byte_is_delivered_whole():
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
    for cut in range(1, len(response)):
        net = ScriptedNetwork()
        sock = net.add(peer=lambda s, data, cut=cut: s.feed(response[:cut], response[cut:])
                       if data.endswith(b"\r\n\r\n") else None)
        engine = HTTPEngine(net)
        conn = HTTPConnection(engine, "127.0.0.1", 8091)  # type: ignore[arg-type]
        log: List[Any] = []
        conn.request(_http_request(log))
        engine.iops.pump_until(lambda log=log: "end" in log)
        assert log[0] == ("head", 200) and log[-1] == "end"
        assert b"".join(e[1] for e in log if e[0] == "data") == b"hello world"
        assert bytes(sock.sent).startswith(b"GET /x HTTP/1.1\r\n")


def test_http_reset_mid_response_is_one_error():
    net = ScriptedNetwork()
    sock = net.add(peer=lambda s, data: s.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nhal",
                                               ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")))
    engine = HTTPEngine(net)
    conn = HTTPConnection(engine, "127.0.0.1", 8091)  # type: ignore[arg-type]
    log: List[Any] = []
    conn.request(_http_request(log))
    engine.iops.pump_until(lambda: any(isinstance(e, tuple) and e[0] == "error" for e in log))
    for _ in range(3):
        engine.iops.pump()
    errors = [e for e in log if e[0] == "error"]
    assert errors == [("error", RC.NETWORK, "error reading from 127.0.0.1:8091: [Errno 104] Connection reset by "
                                            "peer")]
    assert log[:2] == [("head", 200), ("data", b"hal")] and sock.closed and conn.state == "closed"


def test_http_abandon_after_fork_touches_nothing():
    net = ScriptedNetwork()
    sock = net.add()
    engine = HTTPEngine(net)
    conn = HTTPConnection(engine, "127.0.0.1", 8091)  # type: ignore[arg-type]
    log: List[Any] = []
    req = _http_request(log)
    conn.request(req)
    engine.iops.pump_until(lambda: sock.sent)
    io_before = list(sock.io_calls)
    assert conn.abandon_after_fork() is req
    assert sock.closed and sock.io_calls == io_before and log == []

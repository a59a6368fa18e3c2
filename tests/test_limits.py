"""Every size, depth and count a server controls has a limit (issue 10).

A hostile or broken server must not decide how much memory or CPU the
client spends, nor hang, crash or freeze it. Each test here makes a server
cross one limit and checks that the operation concerned ends at once with
the documented error (``LimitExceededError`` for "the server sent more than
our limit allows"), that the amount buffered stayed within the limit (the
limit constant is made small for the test, never RSS), and that the rest
of the client keeps working.

Servers: the emulator (``couchbase_core.mock``) where it can produce the
condition -- in process, with one of its routes or replies swapped for a
hostile one where it cannot -- and otherwise small scripted servers on
127.0.0.1 that stop by themselves.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
from types import SimpleNamespace
from typing import Any, Callable, List

import gevent
import pytest

import couchbase_core._engine.http as http_mod
import couchbase_core._engine.rows as rows_mod
import couchbase_core._engine.sasl as sasl_mod
import couchbase_core._httpops as httpops
from couchbase_core._engine.config import BucketConfig, ConfigError
from couchbase_core._engine.http import ConfigStream
from couchbase_core._engine.rows import RowParseError, RowParser
from couchbase_core._engine.sasl import SaslError, Scram
from couchbase_core._engine.settings import Settings
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    AuthError,
    LimitExceededError,
    ObjectDestroyedError,
    ProtocolError,
)
from couchbase_core.mock import MockCluster
from couchbase_core.mock import httpd as mock_httpd
from couchbase_core.mock import kvserver as mock_kvserver
from tests.flavours import open_bucket
from tests.test_http_client import FakeEngine, ScriptedServer, UncheckedAdmin, read_request

DEEP = 100000  # nesting far beyond any JSON decoder's recursion budget


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def serve():
    servers: List[ScriptedServer] = []

    def make(handler: Callable[[socket.socket, ScriptedServer], None]) -> ScriptedServer:
        server = ScriptedServer(handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def cluster():
    """An in-process emulator: its routes and replies can be swapped."""
    with MockCluster(nodes=1, replicas=0, in_process=True) as mock:
        yield mock


def hostile_route(monkeypatch: Any, match: Callable[[Any], bool], respond: Callable[[Any], Any]) -> None:
    """Requests for which ``match(request)`` is true get ``respond(request)``
    (an emulator HTTPResponse) instead of the emulator's own answer."""
    original = mock_httpd.Router.dispatch

    async def dispatch(self: Any, request: Any) -> Any:
        if match(request):
            return respond(request)
        return await original(self, request)

    monkeypatch.setattr(mock_httpd.Router, "dispatch", dispatch)


def flavours_sync():
    return pytest.mark.parametrize("flavour", ["blocking", "gevent"])


# ---------------------------------------------------------------------------
# 1. Snappy inflation


def test_snappy_header_over_the_limit_is_refused_before_decompressing(monkeypatch):
    import cramjam

    from couchbase_core._engine import snappy as snappy_mod

    calls: List[int] = []
    real = cramjam.snappy.decompress_raw
    monkeypatch.setattr(cramjam.snappy, "decompress_raw", lambda data: calls.append(1) or real(data))
    # a varint announcing 2**40 bytes, then junk: never handed to the codec
    header = bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x20])
    with pytest.raises(snappy_mod.InflateLimitError) as info:
        snappy_mod.inflate(header + b"\x00" * 16)
    assert calls == [] and "MAX_INFLATED_SIZE" in str(info.value)
    packed = bytes(cramjam.snappy.compress_raw(b"a" * 5000))
    assert snappy_mod.inflate(packed) == b"a" * 5000
    monkeypatch.setattr(snappy_mod, "MAX_INFLATED_SIZE", 4999)
    with pytest.raises(snappy_mod.InflateLimitError):
        snappy_mod.inflate(packed)
    assert calls == [1]
    with pytest.raises(snappy_mod.InflateError):
        snappy_mod.inflate(b"\xff\xff\xff")  # a varint that never ends
    with pytest.raises(snappy_mod.InflateError):
        snappy_mod.inflate(packed[:-3])  # shorter than announced


@flavours_sync()
def test_a_value_inflating_beyond_the_limit_fails_that_get_only(flavour, cluster, monkeypatch):
    from couchbase_core._engine import snappy as snappy_mod

    b = open_bucket(flavour, cluster.connstr_for("default"))
    try:
        b.upsert("big", "a" * 200000)
        b.upsert("small", "b" * 2000)
        monkeypatch.setattr(snappy_mod, "MAX_INFLATED_SIZE", 100000)
        conn = b._engine.connections[0]
        with pytest.raises(LimitExceededError) as info:
            b.get("big")
        assert "MAX_INFLATED_SIZE" in str(info.value)
        # the frame was read whole: the same connection carries on
        assert b.get("small").value == "b" * 2000
        assert b._engine.connections[0] is conn and conn.last_error is None
        # in a batch, only that key's entry fails
        with pytest.raises(LimitExceededError) as info:
            b.get_multi(["small", "big"])
        results = info.value.all_results
        assert results["small"].value == "b" * 2000 and results["big"].rc == RC.LIMIT_EXCEEDED
        assert conn.last_error is None
    finally:
        b.close()


# ---------------------------------------------------------------------------
# 2. HTTP bodies


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def send_chunks(sock: socket.socket, sent: List[int], piece: bytes, limit: int = 50 * 1024 * 1024) -> None:
    """Send chunks of ``piece`` until the client hangs up (or ``limit``
    bytes, so the test server always stops); record the bytes sent."""
    total = 0
    try:
        while total < limit:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            total += len(piece)
    except OSError:
        pass
    finally:
        sent.append(total)


def endless_chunks(sent: List[int], piece: bytes) -> Callable[[socket.socket, ScriptedServer], None]:
    """A handler answering with an endless chunked body."""

    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        read_request(sock)
        sock.sendall(CHUNKED_HEAD)
        send_chunks(sock, sent, piece)

    return handler


def test_a_management_body_beyond_the_limit_fails_the_request(serve, monkeypatch):
    monkeypatch.setattr(httpops, "MAX_RESPONSE_BODY", 256 * 1024)
    seen: List[int] = []
    original = httpops.HttpOp._on_chunk

    def spy(self: Any, data: bytes) -> None:
        original(self, data)
        seen.append(sum(map(len, self._chunks)))

    monkeypatch.setattr(httpops.HttpOp, "_on_chunk", spy)
    sent: List[int] = []
    server = serve(endless_chunks(sent, b'"' + b"x" * 8190 + b'"'))
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port)
    try:
        with pytest.raises(LimitExceededError) as info:
            admin.http_request("/pools/default/buckets")
        assert "MAX_RESPONSE_BODY" in str(info.value)
    finally:
        admin.close()
    assert max(seen) <= 256 * 1024
    for _ in range(200):
        if sent:
            break
        gevent.sleep(0.05)
    assert sent and sent[0] < 50 * 1024 * 1024  # the client hung up


@pytest.mark.usefixtures("both_row_decoders")
def test_row_parser_caps_metadata_outside_the_rows(monkeypatch):
    monkeypatch.setattr(rows_mod, "MAX_META_CHARS", 10000)
    parser = RowParser("results")
    assert parser.feed(b'{"results":[1,2],"status":"success",') == [1, 2]
    with pytest.raises(RowParseError) as info:
        for i in range(100):
            parser.feed(b'"m%d":"%s",' % (i, b"y" * 1000))
    assert info.value.rc == RC.LIMIT_EXCEEDED and "MAX_META_CHARS" in str(info.value)
    assert sum(len(json.dumps(v)) for v in parser.meta.values()) <= 10000


@pytest.mark.usefixtures("both_row_decoders")
def test_row_parser_caps_a_number_that_never_ends(monkeypatch):
    monkeypatch.setattr(rows_mod, "MAX_VALUE_CHARS", 10000)
    parser = RowParser("rows")
    parser.feed(b'{"rows":[1')
    with pytest.raises(RowParseError) as info:
        for _ in range(100):
            parser.feed(b"1" * 1000)
            assert len(parser._buf) - parser._pos <= 10000 + 1000
    assert info.value.rc == RC.LIMIT_EXCEEDED


@pytest.mark.usefixtures("both_row_decoders")
def test_row_parser_caps_a_row_that_never_ends(monkeypatch):
    monkeypatch.setattr(rows_mod, "MAX_VALUE_CHARS", 10000)
    parser = RowParser("rows")
    parser.feed(b'{"rows":[{"a":"')
    with pytest.raises(RowParseError) as info:
        for _ in range(100):
            parser.feed(b"z" * 1000)
    assert info.value.rc == RC.LIMIT_EXCEEDED


@pytest.mark.usefixtures("both_row_decoders")
def test_row_parser_deep_json_is_a_limit_error():
    parser = RowParser("rows")
    with pytest.raises(RowParseError) as info:
        parser.feed(('{"rows":[' + deep_json() + "]}").encode())
        parser.close()
    assert info.value.rc == RC.LIMIT_EXCEEDED
    parser = RowParser("rows")
    with pytest.raises(RowParseError) as info:
        parser.feed(('{"rows":[],"meta":' + deep_json() + "}").encode())
        parser.close()
    assert info.value.rc == RC.LIMIT_EXCEEDED


class StreamEngine(FakeEngine):
    def __init__(self) -> None:
        FakeEngine.__init__(self)
        self.settings = SimpleNamespace(client_string="t/1", bucket="default", config_node_timeout=5.0,
                                        sasl_credentials=lambda: (None, None))


def config_stream(port: int, engine: StreamEngine):
    configs: List[bytes] = []
    failures: List[tuple] = []
    stream = ConfigStream(engine, "127.0.0.1", port, lambda s, text: configs.append(text),
                          lambda s, rc, message: failures.append((rc, message)))
    return stream, configs, failures


def test_a_config_stream_without_separators_is_cut_off(serve, monkeypatch):
    monkeypatch.setattr(http_mod, "MAX_CONFIG_SIZE", 64 * 1024)
    seen: List[int] = []
    original = ConfigStream._on_data

    def spy(self: Any, data: bytes) -> None:
        original(self, data)
        seen.append(len(self._buffer))

    monkeypatch.setattr(ConfigStream, "_on_data", spy)
    sent: List[int] = []

    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        read_request(sock)
        first = b'{"rev":1}\n\n\n\n'
        sock.sendall(CHUNKED_HEAD + b"%x\r\n%s\r\n" % (len(first), first))
        send_chunks(sock, sent, b" " * 4096)

    server = serve(handler)
    engine = StreamEngine()
    stream, configs, failures = config_stream(server.port, engine)
    try:
        stream.start()
        engine.run_until(lambda: failures)
    finally:
        stream.close()
        engine.iops.close()
    assert configs == [b'{"rev":1}']
    assert failures[0][0] == RC.LIMIT_EXCEEDED and "MAX_CONFIG_SIZE" in failures[0][1]
    assert max(seen) <= 64 * 1024


def test_config_stream_splits_at_every_boundary_and_in_one_piece(serve):
    configs_sent = [b'{"rev":%d}' % i for i in range(300)]
    body = b"".join(c + b"\n\n\n\n" for c in configs_sent)

    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        read_request(sock)
        sock.sendall(CHUNKED_HEAD)
        for step in (1, 3, 7, len(body)):
            for i in range(0, len(body), step):
                piece = body[i:i + step]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        threading.Event().wait(5)

    server = serve(handler)
    engine = StreamEngine()
    stream, configs, failures = config_stream(server.port, engine)
    try:
        stream.start()
        engine.run_until(lambda: len(configs) >= 4 * len(configs_sent))
    finally:
        stream.close()
        engine.iops.close()
    assert configs == configs_sent * 4 and not failures


# ---------------------------------------------------------------------------
# 3. max_value_size beyond the frame limit


def test_max_value_size_beyond_the_frame_limit_is_refused():
    from couchbase_core._engine.protocol import MAX_BODY

    limit = MAX_BODY - 1024  # room for the key and extras in the frame
    assert Settings.from_connstr("couchbase://h/b?max_value_size=%d" % limit).max_value_size == limit
    for size in (limit + 1, 70 * 1000 * 1000):
        with pytest.raises(ArgumentError) as info:
            Settings.from_connstr("couchbase://h/b?max_value_size=%d" % size)
        assert "max_value_size" in str(info.value)
        with pytest.raises(ArgumentError):
            Bucket("couchbase://127.0.0.1:1/b", max_value_size=size)


# ---------------------------------------------------------------------------
# 4. deeply nested JSON in HTTP replies


def json_response(body: bytes, status: int = 200) -> Any:
    return mock_httpd.HTTPResponse(status, body, {"Content-Type": "application/json"})


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_a_deep_design_document_is_a_limit_error(flavour, cluster, monkeypatch):
    hostile_route(monkeypatch, lambda r: "/_design/" in r.path,
                  lambda r: json_response(('{"views":' + deep_json() + "}").encode()))
    b = open_bucket(flavour, cluster.connstr_for("default"))
    try:
        with gevent.Timeout(15):
            with pytest.raises(LimitExceededError):
                b.bucket_manager().design_get("ddoc")
            assert b.get("missing", quiet=True).value is None  # the bucket still works
    finally:
        b.close()


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
@pytest.mark.parametrize("where", ["row", "meta", "error"])
def test_a_deep_view_reply_is_a_limit_error(flavour, where, cluster, monkeypatch):
    bodies = {"row": ('{"total_rows":1,"rows":[{"id":"a","key":' + deep_json() + ',"value":1}]}', 200),
              "meta": ('{"total_rows":' + deep_json() + ',"rows":[]}', 200),
              "error": ('{"error":' + deep_json() + "}", 500)}
    text, status = bodies[where]
    hostile_route(monkeypatch, lambda r: "/_view/" in r.path, lambda r: json_response(text.encode(), status))
    b = open_bucket(flavour, cluster.connstr_for("default"))
    try:
        with gevent.Timeout(15):
            with pytest.raises(LimitExceededError):
                list(b.query("ddoc", "view"))
    finally:
        b.close()


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_deep_n1ql_metadata_is_a_limit_error(flavour, cluster, monkeypatch):
    hostile_route(monkeypatch, lambda r: r.path.startswith("/query"),
                  lambda r: json_response(('{"results":[],"metrics":' + deep_json() + "}").encode()))
    b = open_bucket(flavour, cluster.connstr_for("default"))
    try:
        with gevent.Timeout(15):
            with pytest.raises(LimitExceededError):
                list(b.n1ql_query("SELECT 1"))
    finally:
        b.close()


def test_view_rows_that_are_not_objects_are_a_protocol_error(cluster, monkeypatch):
    hostile_route(monkeypatch, lambda r: "/_view/" in r.path,
                  lambda r: json_response(b'{"total_rows":2,"rows":[{"id":"a","key":1,"value":2},[1,2]]}'))
    b = Bucket(cluster.connstr_for("default"))
    try:
        with pytest.raises(ProtocolError):
            list(b.query("ddoc", "view"))
    finally:
        b.close()


# ---------------------------------------------------------------------------
# 5. deeply nested JSON in a config push


def test_a_deep_config_push_is_ignored_and_the_reply_beside_it_delivered(cluster, monkeypatch):
    original = mock_kvserver.KVSession.reply

    def reply(self: Any, req: Any, *args: Any, **kwargs: Any) -> bytes:
        out = original(self, req, *args, **kwargs)
        if req.opcode == 0x00 and req.key == b"pushed":
            value = ('{"rev":999999,"x":' + deep_json() + "}").encode()
            push = struct.pack(">BBHBBHIIQ", 0x82, 0x01, 0, 16, 0, 0, 16 + len(value), 0, 0)
            out = push + struct.pack(">QQ", 0, 999999) + value + out
        return out

    monkeypatch.setattr(mock_kvserver.KVSession, "reply", reply)
    b = Bucket(cluster.connstr_for("default"))
    try:
        b.upsert("pushed", "value")
        rev = b._engine.config.rev
        assert b.get("pushed").value == "value"
        assert b._engine.config.rev == rev
        assert b.get("pushed").value == "value"
    finally:
        b.close()


# ---------------------------------------------------------------------------
# 6. configs that would crash routing


def vb_config(vbmap: Any, servers: Any = ("127.0.0.1:11210",)) -> dict:
    return {"rev": 1, "name": "b", "nodeLocator": "vbucket",
            "vBucketServerMap": {"serverList": list(servers), "numReplicas": 0, "vBucketMap": vbmap}}


@pytest.mark.parametrize("vbmap", [[], [[]], [[0], []], [[0], "0"], [[0], [None]], [[0], [-2]],
                                   [[0], [True]], [[0], [1.0]], None, {"0": [0]}, [[0], [0, 0]]])
def test_configs_that_would_crash_routing_are_refused(vbmap):
    with pytest.raises(ConfigError):
        BucketConfig.parse(json.dumps(vb_config(vbmap)), "127.0.0.1")


def test_a_usable_map_with_unowned_vbuckets_is_accepted():
    cfg = BucketConfig.parse(json.dumps(vb_config([[0], [-1]])), "127.0.0.1")
    assert cfg.num_vbuckets == 2


def test_a_config_with_no_servers_is_refused():
    with pytest.raises(ConfigError):
        BucketConfig.parse(json.dumps(vb_config([[-1]], servers=[])), "127.0.0.1")
    with pytest.raises(ConfigError):
        BucketConfig.parse(json.dumps({"rev": 1, "nodeLocator": "ketama", "nodes": []}), "127.0.0.1")


def test_a_deep_config_is_a_config_error():
    with pytest.raises(ConfigError):
        BucketConfig.parse(deep_json(), "127.0.0.1")
    with pytest.raises(ConfigError):
        BucketConfig.parse('{"rev":1,"x":' + deep_json(900) + "}", "127.0.0.1")


# ---------------------------------------------------------------------------
# 7. SCRAM


def server_first(scram: Scram, iterations: int, salt: bytes = b"salt") -> bytes:
    return ("r=%ssrv,s=%s,i=%d" % (scram.cnonce, base64.b64encode(salt).decode(), iterations)).encode()


def test_scram_iterations_above_the_cap_are_refused_without_running_pbkdf2(monkeypatch):
    import hashlib

    def refuse(*args: Any) -> bytes:
        raise AssertionError("PBKDF2 ran")

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", refuse)
    scram = Scram("SCRAM-SHA512", "u", "p")
    scram.start()
    with pytest.raises(SaslError) as info:
        scram.step(server_first(scram, sasl_mod.MAX_SCRAM_ITERATIONS + 1))
    assert "MAX_SCRAM_ITERATIONS" in str(info.value)


def test_scram_salted_password_is_cached_across_exchanges(monkeypatch):
    import hashlib

    calls: List[int] = []
    real = hashlib.pbkdf2_hmac
    monkeypatch.setattr(hashlib, "pbkdf2_hmac", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        scram = Scram("SCRAM-SHA256", "u", "cached-password")
        scram.start()
        scram.step(server_first(scram, 4096, b"cache-salt"))
    assert calls == [1]


@pytest.mark.parametrize("final", [b"", b"v=", b"e=other-error", b"v=" + base64.b64encode(b"x" * 64)])
def test_scram_success_without_a_valid_signature_is_refused(final):
    scram = Scram("SCRAM-SHA512", "u", "p")
    scram.start()
    with pytest.raises(SaslError):
        scram.finish(final)  # success before any SASL_STEP
    scram.step(server_first(scram, 4096))
    with pytest.raises(SaslError):
        scram.finish(final)


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_a_server_asking_too_many_scram_iterations_is_an_auth_error(flavour, cluster, monkeypatch):
    monkeypatch.setattr(sasl_mod, "MAX_SCRAM_ITERATIONS", 4096)
    monkeypatch.setattr(mock_kvserver.KVSession, "scram_test_vectors", {"Administrator": ("x", b"salt", 5000)})
    with pytest.raises(AuthError) as info:
        open_bucket(flavour, cluster.connstr_for("default", username="Administrator", password="password",
                                                 sasl_mech_force="SCRAM-SHA512"))
    assert "MAX_SCRAM_ITERATIONS" in str(info.value)


def test_a_server_accepting_without_proof_is_an_auth_error(cluster, monkeypatch):
    def accept_at_once(self: Any, req: Any, mech: str) -> bytes:
        return self.reply(req, value=b"v=")

    monkeypatch.setattr(mock_kvserver.KVSession, "_scram_first", accept_at_once)
    with pytest.raises(AuthError):
        Bucket(cluster.connstr_for("default", username="Administrator", password="password",
                                   sasl_mech_force="SCRAM-SHA512"))


# ---------------------------------------------------------------------------
# 8. close() stops streams


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
@pytest.mark.parametrize("kind", ["view", "n1ql"])
def test_close_stops_a_stream_being_iterated(flavour, kind, cluster, monkeypatch):
    state = {"closed": False, "rows": 0}

    async def rows():
        import asyncio

        key = "rows" if kind == "view" else "results"
        yield ('{"total_rows":100000,"%s":[' % key).encode()
        try:
            for i in range(100000):
                state["rows"] = i
                yield ('%s{"id":"k%d","key":%d,"value":null}' % ("," if i else "", i, i)).encode()
                if i % 50 == 0:
                    await asyncio.sleep(0)
            yield b"]}"
        finally:
            state["closed"] = True

    path = "/_view/" if kind == "view" else "/query"
    hostile_route(monkeypatch, lambda r: path in r.path,
                  lambda r: mock_httpd.HTTPResponse(200, rows(), {"Content-Type": "application/json"}))
    b = open_bucket(flavour, cluster.connstr_for("default"))
    it = iter(b.query("ddoc", "view") if kind == "view" else b.n1ql_query("SELECT 1"))
    for _ in range(100):
        next(it)
    b.close()
    with pytest.raises(ObjectDestroyedError):
        next(it)
    for _ in range(200):
        if state["closed"]:
            break
        cluster.refresh()  # the emulator thread runs meanwhile
        gevent.sleep(0.02)
    assert state["closed"], "the HTTP connection of the stream stayed open"
    assert state["rows"] < 100000 - 1


# The request kinds whose rows stream: how to start one, the path the
# emulator serves it on, and the JSON member its rows come in.
STREAM_KINDS = {
    "view": (lambda b: b.query("ddoc", "view"), "/_view/", "rows"),
    "n1ql": (lambda b: b.n1ql_query("SELECT 1"), "/query/service", "results"),
    "analytics": (lambda b: b.analytics_query("SELECT 1"), "/analytics/service", "results"),
    "search": (lambda b: b.search("idx", __import__("couchbase_core.fulltext", fromlist=["x"]).MatchAllQuery()),
               "/api/index/", "hits"),
}


def endless_rows(path: str, member: str, monkeypatch: Any, state: dict, pause_after: int = 0) -> None:
    """Serve ``path`` with rows that never end: every row, or (with
    ``pause_after``) that many, then silence. ``state["closed"]`` turns true
    when the server side of the response is torn down."""

    async def rows():
        import asyncio

        yield ('{"total_rows":100000,"%s":[' % member).encode()
        try:
            for i in range(100000):
                state["rows"] = i
                yield ('%s{"id":"k%d","key":%d,"value":null}' % ("," if i else "", i, i)).encode()
                if pause_after and i + 1 == pause_after:
                    await asyncio.sleep(3600)  # a slow index: nothing more for an hour
                if i % 50 == 0:
                    await asyncio.sleep(0)
            yield b"]}"
        finally:
            state["closed"] = True

    hostile_route(monkeypatch, lambda r: path in r.path,
                  lambda r: mock_httpd.HTTPResponse(200, rows(), {"Content-Type": "application/json"}))


def wait_server_side_closed(cluster: Any, state: dict) -> None:
    for _ in range(500):
        if state["closed"]:
            return
        cluster.refresh()  # the emulator thread runs meanwhile
        gevent.sleep(0.02)
    raise AssertionError("the server never saw the stream's connection close")


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
@pytest.mark.parametrize("kind", sorted(STREAM_KINDS))
def test_close_on_the_request_ends_its_stream_at_once(flavour, kind, cluster, monkeypatch):
    # No reliance on the iterator being collected (PyPy collects it late):
    # close() cancels the request there and then.
    start, path, member = STREAM_KINDS[kind]
    state = {"closed": False, "rows": 0}
    endless_rows(path, member, monkeypatch, state)
    b = open_bucket(flavour, cluster.connstr_for("default"))
    try:
        req = start(b)
        it = iter(req)
        for _ in range(100):
            next(it)
        lent = [c for c in b._engine.http_pool._lent if c.busy]
        assert len(lent) == 1
        req.close()
        assert lent[0].state == "closed"  # not pooled: half-read
        with pytest.raises(StopIteration):  # the loop ends quietly, no error
            next(it)
        req.close()  # idempotent
        wait_server_side_closed(cluster, state)
        assert state["rows"] < 100000 - 1
        # the bucket goes on
        b.upsert("after-close", 1)
        assert b.get("after-close").value == 1
    finally:
        b.close()


@pytest.mark.parametrize("kind", sorted(STREAM_KINDS))
def test_a_with_block_closes_the_request(kind, cluster, monkeypatch):
    start, path, member = STREAM_KINDS[kind]
    state = {"closed": False, "rows": 0}
    endless_rows(path, member, monkeypatch, state)
    b = open_bucket("gevent", cluster.connstr_for("default"))
    try:
        seen = 0
        with start(b) as rows:
            for _row in rows:
                seen += 1
                if seen == 10:
                    break
        assert not [c for c in b._engine.http_pool._lent if c.busy and c.state != "closed"]
        wait_server_side_closed(cluster, state)
        # closed before it was iterated: nothing is sent, nothing is yielded
        req = start(b)
        req.close()
        assert list(req) == []
    finally:
        b.close()


@pytest.mark.parametrize("kind", sorted(STREAM_KINDS))
def test_close_from_another_greenlet_ends_a_waiting_iteration(kind, cluster, monkeypatch):
    start, path, member = STREAM_KINDS[kind]
    state = {"closed": False, "rows": 0}
    endless_rows(path, member, monkeypatch, state, pause_after=20)
    b = open_bucket("gevent", cluster.connstr_for("default"))
    try:
        req = start(b)
        seen: List[Any] = []
        consumer = gevent.spawn(lambda: seen.extend(req))
        for _ in range(1500):  # the consumer has the 20 rows and waits for more
            if len(seen) == 20 and state["rows"] == 19:
                break
            gevent.sleep(0.02)
        assert len(seen) == 20 and not consumer.dead
        req.close()
        consumer.join(timeout=30)
        assert consumer.dead and consumer.successful(), consumer.exception
        assert len(seen) == 20
        wait_server_side_closed(cluster, state)
    finally:
        b.close()


def test_close_fails_an_async_view_in_progress(cluster, monkeypatch):
    from couchbase_core.asynchronous.bucket import AsyncBucket
    from couchbase_core.asynchronous.view import AsyncViewBase
    from couchbase_core.iops.select import SelectIOPS

    async def rows():
        import asyncio

        yield b'{"total_rows":100000,"rows":['
        for i in range(100000):
            yield ('%s{"id":"k%d","key":%d,"value":null}' % ("," if i else "", i, i)).encode()
            if i % 50 == 0:
                await asyncio.sleep(0)
        yield b"]}"

    hostile_route(monkeypatch, lambda r: "/_view/" in r.path,
                  lambda r: mock_httpd.HTTPResponse(200, rows(), {"Content-Type": "application/json"}))
    iops = SelectIOPS()
    bucket = AsyncBucket(iops, cluster.connstr_for("default"))
    connected: List[Any] = []
    bucket.on_connect(connected.append)
    for _ in range(2000):
        if connected:
            break
        iops.run_once(0.01)
    assert connected == [None]
    outcome: List[Any] = []

    class Closing(AsyncViewBase):
        received = 0

        def on_rows(self, batch: List[Any]) -> None:
            self.received += len(batch)
            if not bucket.closed:
                bucket.close()

        def on_error(self, ex: BaseException) -> None:
            outcome.append(ex)

        def on_done(self) -> None:
            outcome.append("done")

    view = bucket.query("ddoc", "view", itercls=Closing)
    view.start()
    try:
        for _ in range(2000):
            if outcome:
                break
            iops.run_once(0.01)
    finally:
        iops.close()
    assert len(outcome) == 1 and isinstance(outcome[0], ObjectDestroyedError)


def test_close_on_a_callback_request_says_it_does_not_apply(cluster):
    # AsyncBucket's request classes push rows to callbacks: close() (which
    # they inherit from the iterators) refuses rather than do nothing.
    from couchbase_core.asynchronous.bucket import AsyncBucket
    from couchbase_core.asynchronous.fulltext import AsyncSearchRequest
    from couchbase_core.asynchronous.n1ql import AsyncN1QLRequest
    from couchbase_core.asynchronous.view import AsyncViewBase
    from couchbase_core.iops.select import SelectIOPS

    cb = AsyncBucket(SelectIOPS(), cluster.connstr_for("default"), username="Administrator", password="password")
    try:
        reqs = (cb.query("ddoc", "view", itercls=AsyncViewBase),
                cb.n1ql_query("SELECT 1", itercls=AsyncN1QLRequest),
                cb.search("idx", __import__("couchbase_core.fulltext", fromlist=["x"]).MatchAllQuery(),
                          itercls=AsyncSearchRequest))
        assert [type(r) for r in reqs] == [AsyncViewBase, AsyncN1QLRequest, AsyncSearchRequest]
        for req in reqs:
            with pytest.raises(TypeError, match="callback request"):
                req.close()
            assert not req.started  # nothing was sent
    finally:
        cb.close()

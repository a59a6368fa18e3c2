"""The evented HTTP client, its keep-alive pool and the streaming row parser.

:class:`~couchbase_core._engine.http.HTTPConnection` and
:class:`~couchbase_core._engine.http.HTTPPool` run here on a select IOPS
against tiny raw-socket servers that answer exactly the bytes each test
wants: content-length and chunked bodies, bodies dribbled a few bytes at a
time, servers that never answer, that close half-way or that drop an idle
keep-alive connection. The same servers sit behind
:class:`~couchbase_core.admin.Admin` to check the request path of the
buckets (``HttpOp``: credentials, 401, timeouts, pooling).
:class:`~couchbase_core._engine.rows.RowParser` is fed bodies split at
every possible place.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from couchbase_core._engine.http import HTTPConnection, HTTPPool, HTTPRequest, basic_auth
from couchbase_core._engine.rows import RowParseError, RowParser
from couchbase_core.admin import Admin
from couchbase_core.exceptions import (
    RC,
    CouchbaseError,
    HTTPError,
    NetworkError,
    ProtocolError,
    TimeoutError,
)
from couchbase_core.iops.base import PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH
from couchbase_core.iops.select import SelectIOPS

# ---------------------------------------------------------------------------
# a scripted server


class UncheckedAdmin(Admin):
    """Admin without its constructor's credentials check (GET /pools): the
    scripted servers here answer only the requests under test."""

    def _check_credentials(self) -> None:
        pass


def read_request(sock: socket.socket) -> Optional[Tuple[str, Dict[str, str], bytes]]:
    """Read one request: (request line, lower-case headers, body) or None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return None
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return lines[0], headers, body


def response(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return ("HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, len(body), extra)).encode() + body


def chunked(pieces: List[bytes]) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for piece in pieces:
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return out + b"0\r\n\r\n"


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and runs ``handler(sock, server)``
    for each in its own thread. ``accepted`` counts connections and
    ``requests`` collects (request line, headers, body) when handlers use
    :meth:`next_request`."""

    def __init__(self, handler: Callable[[socket.socket, "ScriptedServer"], None]) -> None:
        self.handler = handler
        self.accepted = 0
        self.requests: List[Tuple[str, Dict[str, str], bytes]] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._socks: List[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        """Keep a handler (and its connection) waiting until the test ends:
        a server that never answers, for as long as any client could wait."""
        self._stop.wait(120)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._socks.append(sock)
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.handler(sock, self)
        except OSError:
            pass

    def next_request(self, sock: socket.socket) -> Optional[Tuple[str, Dict[str, str], bytes]]:
        req = read_request(sock)
        if req is not None:
            self.requests.append(req)
        return req

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass


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


def keepalive_handler(body_for: Callable[[str, bytes], bytes]) -> Callable[[socket.socket, ScriptedServer], None]:
    """Answer every request of a connection with ``body_for(request_line, body)``."""

    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        while True:
            req = server.next_request(sock)
            if req is None:
                return
            sock.sendall(body_for(req[0], req[2]))

    return handler


# ---------------------------------------------------------------------------
# an engine stand-in: what HTTPConnection needs from the engine


class FakeEngine:
    def __init__(self) -> None:
        self.iops = SelectIOPS()
        self.settings = SimpleNamespace(client_string="http-client-test/1.0")
        self.tls_context = None
        self.socket_factory = None  # real sockets

    def defer(self, fn: Callable[[], None]) -> None:
        timer = self.iops.timer_event_factory()

        def fire(_flags: int) -> None:
            self.iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            fn()

        timer._handler = fire
        self.iops.update_timer(timer, PYCBC_EVACTION_WATCH, 0)

    def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the loop never got there"
            self.iops.run_once(0.02)

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.iops.run_once(0.01)


class Recorder:
    """Callbacks of one HTTPRequest, recorded in order."""

    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []
        self.data: List[bytes] = []

    def request(self, method: str = "GET", path: str = "/", body: bytes = b"",
                headers: Optional[Dict[str, str]] = None, timeout: Optional[float] = 30.0) -> HTTPRequest:
        return HTTPRequest(method, path, headers or {}, body, timeout,
                           on_head=lambda status, hdrs: self.events.append(("head", status, hdrs)),
                           on_data=self._data,
                           on_end=lambda: self.events.append(("end",)),
                           on_error=lambda rc, msg: self.events.append(("error", rc, msg)))

    def _data(self, data: bytes) -> None:
        self.data.append(data)
        self.events.append(("data", len(data)))

    @property
    def finished(self) -> bool:
        return any(e[0] in ("end", "error") for e in self.events)

    @property
    def endings(self) -> List[Tuple[Any, ...]]:
        return [e for e in self.events if e[0] in ("end", "error")]

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


@pytest.fixture
def engine():
    eng = FakeEngine()
    yield eng
    eng.iops.close()


# ---------------------------------------------------------------------------
# bodies and framing


def test_content_length_body(engine, serve):
    payload = json.dumps({"rows": [{"id": "a"}], "total_rows": 1}).encode()
    server = serve(keepalive_handler(lambda line, body: response(payload, extra="X-Test: yes\r\n")))
    conn = HTTPConnection(engine, "127.0.0.1", server.port)
    rec = Recorder()
    conn.request(rec.request("GET", "/a/b?x=1", headers={"X-Mine": "1"}))
    assert rec.events == []  # never calls back inside request()
    engine.run_until(lambda: rec.finished)
    assert rec.events[0][:2] == ("head", 200) and rec.events[0][2]["x-test"] == "yes"
    assert rec.endings == [("end",)]
    assert rec.body == payload
    line, headers, _ = server.requests[0]
    assert line == "GET /a/b?x=1 HTTP/1.1"
    assert headers["host"] == "127.0.0.1:%d" % server.port
    assert headers["x-mine"] == "1" and headers["user-agent"] == "http-client-test/1.0"
    conn.close()


def test_chunked_body_dribbled_byte_by_byte_streams_in_pieces(engine, serve):
    payload = json.dumps({"total_rows": 3, "rows": [{"id": "r%d" % i} for i in range(3)]}).encode()
    rec = Recorder()

    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n, i in enumerate(range(0, len(payload), 7)):
            piece = payload[i:i + 7]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            # the next piece only once the client has seen this one (not
            # after a fixed pause, which a slow client could fall behind)
            deadline = time.monotonic() + 30
            while len(rec.data) <= n and time.monotonic() < deadline:
                time.sleep(0.001)
        sock.sendall(b"0\r\n\r\n")
        server.next_request(sock)  # keep the connection open until the client leaves

    server = serve(handler)
    conn = HTTPConnection(engine, "127.0.0.1", server.port)
    conn.request(rec.request())
    engine.run_until(lambda: rec.finished)
    assert rec.endings == [("end",)]
    assert rec.body == payload
    # the body reached the callback in several pieces, before the response ended
    assert sum(1 for e in rec.events if e[0] == "data") > 3
    assert rec.events.index(("end",)) == len(rec.events) - 1
    conn.close()


def test_post_body_and_content_length(engine, serve):
    server = serve(keepalive_handler(lambda line, body: response(b'{"ok":true}', "201 Created")))
    conn = HTTPConnection(engine, "127.0.0.1", server.port)
    rec = Recorder()
    conn.request(rec.request("POST", "/query/service", b'{"statement":"SELECT 1"}',
                             {"Content-Type": "application/json"}))
    engine.run_until(lambda: rec.finished)
    assert rec.events[0][1] == 201
    line, headers, body = server.requests[0]
    assert line.startswith("POST /query/service ")
    assert headers["content-length"] == str(len(body)) and body == b'{"statement":"SELECT 1"}'
    assert headers["content-type"] == "application/json"
    # an empty PUT still says how long its (empty) body is
    rec2 = Recorder()
    conn.request(rec2.request("PUT", "/x"))
    engine.run_until(lambda: rec2.finished)
    assert server.requests[1][1]["content-length"] == "0"
    conn.close()


def test_keep_alive_carries_sequential_requests_on_one_socket(engine, serve):
    server = serve(keepalive_handler(lambda line, body: response(json.dumps({"line": line}).encode())))
    conn = HTTPConnection(engine, "127.0.0.1", server.port)
    for i in range(3):
        rec = Recorder()
        conn.request(rec.request("GET", "/n/%d" % i))
        engine.run_until(lambda rec=rec: rec.finished)
        assert json.loads(rec.body) == {"line": "GET /n/%d HTTP/1.1" % i}
        assert conn.state == "open" and not conn.busy
    assert server.accepted == 1
    with pytest.raises(RuntimeError):
        conn.request(Recorder().request())
        conn.request(Recorder().request())  # one request at a time
    conn.close()


def test_connection_close_from_the_server_is_not_reused(engine, serve):
    server = serve(keepalive_handler(lambda line, body: response(b"{}", extra="Connection: close\r\n")))
    pool = HTTPPool(engine)
    conn = pool.acquire("127.0.0.1", server.port)
    rec = Recorder()
    conn.request(rec.request())
    engine.run_until(lambda: rec.finished)
    assert rec.endings == [("end",)]
    assert conn.state == "closed"
    pool.release(conn)
    assert pool._idle.get(("127.0.0.1", server.port), []) == []
    assert pool.acquire("127.0.0.1", server.port) is not conn


def test_server_closing_mid_body_is_one_network_error(engine, serve):
    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"rows\":[")
        time.sleep(0.05)
        sock.close()

    server = serve(handler)
    conn = HTTPConnection(engine, "127.0.0.1", server.port)
    rec = Recorder()
    conn.request(rec.request())
    engine.run_until(lambda: rec.finished)
    engine.spin(0.1)
    # exactly one failure (the response was cut short), never an end
    assert len(rec.endings) == 1 and rec.endings[0][0] == "error"
    assert rec.endings[0][1] in (RC.NETWORK, RC.PROTOCOL)
    assert rec.body == b'{"rows":['
    assert conn.state == "closed"


def test_connection_refused_is_a_connect_error(engine):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no one else can take it
    port = sock.getsockname()[1]
    conn = HTTPConnection(engine, "127.0.0.1", port)
    rec = Recorder()
    conn.request(rec.request())
    try:
        engine.run_until(lambda: rec.finished)
    finally:
        sock.close()
    assert [e[:2] for e in rec.endings] == [("error", RC.CONNECT)]
    assert "refused" in rec.endings[0][2].lower()


def test_a_server_that_never_answers_times_out_once(engine, serve):
    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        server.hold()  # read the request, never answer

    server = serve(handler)
    conn = HTTPConnection(engine, "127.0.0.1", server.port)
    rec = Recorder()
    started = time.monotonic()
    conn.request(rec.request(timeout=0.25))
    engine.run_until(lambda: rec.finished)
    elapsed = time.monotonic() - started
    engine.spin(0.2)  # nothing else arrives later
    assert [e[:2] for e in rec.endings] == [("error", RC.TIMEOUT)]
    assert 0.24 <= elapsed < 0.25 + 20  # never early; the upper bound only guards against a hang
    assert "timed out" in rec.endings[0][2]
    assert conn.state == "closed"


def test_basic_auth_header():
    assert basic_auth("Administrator", "password") == "Basic QWRtaW5pc3RyYXRvcjpwYXNzd29yZA=="
    assert basic_auth("us\u00e9r", "p:w") == "Basic dXPDqXI6cDp3"


# ---------------------------------------------------------------------------
# the pool


def test_pool_reuses_idle_connections_per_node(engine, serve):
    server = serve(keepalive_handler(lambda line, body: response(b"{}")))
    other = serve(keepalive_handler(lambda line, body: response(b"{}")))
    pool = HTTPPool(engine, per_node=2)
    first = pool.acquire("127.0.0.1", server.port)
    rec = Recorder()
    first.request(rec.request())
    engine.run_until(lambda: rec.finished)
    pool.release(first)
    assert pool._idle[("127.0.0.1", server.port)] == [first]
    assert pool.acquire("127.0.0.1", other.port) is not first  # per host:port
    again = pool.acquire("127.0.0.1", server.port)
    assert again is first and pool._idle[("127.0.0.1", server.port)] == []
    rec = Recorder()
    again.request(rec.request())
    engine.run_until(lambda: rec.finished)
    assert server.accepted == 1
    pool.release(again)
    pool.close()
    assert first.state == "closed" and pool._idle == {}


def test_pool_refuses_busy_paused_or_closed_connections_and_caps_idle(engine, serve):
    server = serve(keepalive_handler(lambda line, body: response(b"{}")))
    pool = HTTPPool(engine, per_node=1)
    conns = []
    for _ in range(2):
        conn = pool.acquire("127.0.0.1", server.port)
        rec = Recorder()
        conn.request(rec.request())
        engine.run_until(lambda rec=rec: rec.finished)
        conns.append(conn)
    pool.release(conns[0])
    pool.release(conns[1])  # over per_node: closed, not kept
    assert pool._idle[("127.0.0.1", server.port)] == [conns[0]]
    assert conns[1].state == "closed"

    paused = pool.acquire("127.0.0.1", server.port)
    assert paused is conns[0]
    paused.pause_reading()
    pool.release(paused)  # a paused connection may hold unread bytes
    assert paused.state == "closed" and pool._idle[("127.0.0.1", server.port)] == []

    busy = pool.acquire("127.0.0.1", server.port)
    rec = Recorder()
    busy.request(rec.request())
    pool.release(busy)  # still waiting for its response: never pooled
    assert busy.state == "closed" and pool._idle[("127.0.0.1", server.port)] == []
    engine.spin(0.05)
    assert rec.events == []  # a closed connection calls nobody back


# ---------------------------------------------------------------------------
# the bucket's request path (HttpOp) behind Admin


def test_admin_sends_basic_auth_and_decodes_json(serve):
    server = serve(keepalive_handler(lambda line, body: response(b'[{"name":"default"}]')))
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port)
    try:
        assert [info.raw_json for info in admin.buckets_list()] == [{"name": "default"}]  # 2.x's BucketInfo
        res = admin.http_request("/pools/default/buckets")
        assert res.http_status == 200 and res.value == [{"name": "default"}]
        assert res.headers["content-type"] == "application/json"
    finally:
        admin.close()
    line, headers, _ = server.requests[0]
    assert line == "GET /pools/default/buckets HTTP/1.1"
    assert headers["authorization"] == basic_auth("Administrator", "password")
    assert server.accepted == 1  # the second request reused the pooled connection


def test_admin_chunked_reply(serve):
    pieces = [b'{"rows":', b"[1,", b"2,3]", b',"x":"', b"\xc3", b'\xa9"}']
    server = serve(keepalive_handler(lambda line, body: chunked(pieces)))
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port)
    try:
        assert admin.http_request("/x").value == {"rows": [1, 2, 3], "x": "\u00e9"}
    finally:
        admin.close()


def test_401_is_a_clear_http_error(serve):
    server = serve(keepalive_handler(
        lambda line, body: response(b"", "401 Unauthorized", 'WWW-Authenticate: Basic realm="x"\r\n')))
    admin = UncheckedAdmin("Administrator", "wrong", host="127.0.0.1", port=server.port)
    try:
        with pytest.raises(HTTPError) as info:
            admin.bucket_info("default")
    finally:
        admin.close()
    assert info.value.result.http_status == 401
    assert "401" in str(info.value)


def test_http_timeout_on_a_silent_server(serve):
    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        server.hold()

    server = serve(handler)
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port, http_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            admin.buckets_list()
        # never early; its 0.3 s, not the 75 s default (wide margin for a slow machine)
        assert 0.29 <= time.monotonic() - started < 30
    finally:
        admin.close()


def test_a_server_closing_an_idle_keepalive_connection_does_not_fail_the_next_request(serve):
    closed = threading.Event()

    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        sock.sendall(response(b'{"n":1}'))  # keep-alive response...
        time.sleep(0.05)
        sock.close()  # ...then the server's idle timeout closes it
        closed.set()

    server = serve(handler)
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port)
    try:
        assert admin.http_request("/one").value == {"n": 1}
        assert closed.wait(30)  # the FIN is in; the blocking bucket's loop is not running
        assert admin.http_request("/two").value == {"n": 1}
    finally:
        admin.close()


def test_a_reused_connection_closed_as_the_request_leaves_is_retried_once_on_a_new_one(serve):
    # The race the idle check cannot see: the server closes the kept-alive
    # connection just as the next request goes out, without answering it.
    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        first_connection = server.accepted == 1
        server.next_request(sock)
        sock.sendall(response(b'{"n":%d}' % server.accepted))
        if first_connection:
            server.next_request(sock)  # read it, then hang up unanswered
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            return
        while server.next_request(sock) is not None:
            sock.sendall(response(b'{"n":%d}' % server.accepted))

    server = serve(handler)
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port)
    try:
        assert admin.http_request("/one").value == {"n": 1}
        assert admin.http_request("/two").value == {"n": 2}  # answered on the second connection
        assert server.accepted == 2
        assert [r[0].split()[1] for r in server.requests] == ["/one", "/two", "/two"]
    finally:
        admin.close()


def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_retry(serve):
    def handler(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        sock.close()

    server = serve(handler)
    admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", port=server.port)
    try:
        with pytest.raises(CouchbaseError) as info:
            admin.http_request("/once")
        assert isinstance(info.value, (NetworkError, ProtocolError))
        assert server.accepted == 1
    finally:
        admin.close()


# ---------------------------------------------------------------------------
# RowParser

VIEW_BODY = (b'{"total_rows":12345,"rows":[\r\n'
             b'{"id":"doc1","key":"abc","value":null},\r\n'
             b'{"id":"d\\u00e9\\"q","key":["x",1.5,{"a":[1,2]}],"value":{"n":2,"s":"\xe2\x82\xac"}},\r\n'
             b'{"id":"doc3","key":-17,"value":[true,false]}\r\n'
             b'],\r\n"errors":[{"from":"n2","reason":"down"}]}')
VIEW_ROWS = [
    {"id": "doc1", "key": "abc", "value": None},
    {"id": "d\u00e9\"q", "key": ["x", 1.5, {"a": [1, 2]}], "value": {"n": 2, "s": "\u20ac"}},
    {"id": "doc3", "key": -17, "value": [True, False]},
]
VIEW_META = {"total_rows": 12345, "errors": [{"from": "n2", "reason": "down"}]}

N1QL_BODY = json.dumps({
    "requestID": "5c0a", "clientContextID": "ctx", "signature": {"*": "*"},
    "results": [{"a": 1}, 2, "three", [4, [5]], None],
    "errors": [{"code": 5000, "msg": "partial"}],
    "warnings": [{"code": 1234, "msg": "careful"}],
    "status": "errors",
    "metrics": {"elapsedTime": "1.2ms", "resultCount": 5, "errorCount": 1, "warningCount": 1},
    "profile": {"phaseTimes": {"run": "1ms"}},
}, indent=1).encode()


def feed_in_pieces(parser: RowParser, body: bytes, size: int) -> Tuple[List[Any], List[int]]:
    rows: List[Any] = []
    per_feed = []
    for i in range(0, len(body), size):
        got = parser.feed(body[i:i + size])
        per_feed.append(len(got))
        rows.extend(got)
    return rows, per_feed


@pytest.mark.parametrize("body, key, rows, meta", [
    (VIEW_BODY, "rows", VIEW_ROWS, VIEW_META),
    (N1QL_BODY, "results", [{"a": 1}, 2, "three", [4, [5]], None],
     {k: v for k, v in json.loads(N1QL_BODY).items() if k != "results"}),
])
@pytest.mark.usefixtures("both_row_decoders")
def test_row_parser_gives_the_same_rows_at_every_chunk_size(body, key, rows, meta):
    for size in range(1, len(body) + 1):
        parser = RowParser(key)
        got, _ = feed_in_pieces(parser, body, size)
        assert got == rows, size
        assert parser.close() == meta, size


@pytest.mark.usefixtures("both_row_decoders")
def test_row_parser_at_every_two_way_split():
    for cut in range(1, len(VIEW_BODY)):
        parser = RowParser("rows")
        got = parser.feed(VIEW_BODY[:cut]) + parser.feed(VIEW_BODY[cut:])
        assert got == VIEW_ROWS, cut
        assert parser.close() == VIEW_META
        assert parser.rows_seen == 3


@pytest.mark.usefixtures("both_row_decoders")
def test_rows_come_out_as_soon_as_they_are_complete():
    parser = RowParser("rows")
    end_of_first = VIEW_BODY.index(b"},") + 1
    assert parser.feed(VIEW_BODY[:end_of_first - 1]) == []
    assert parser.feed(VIEW_BODY[end_of_first - 1:end_of_first + 1]) == [VIEW_ROWS[0]]
    assert parser.meta == {"total_rows": 12345}  # meta seen so far, before the end
    rest = parser.feed(VIEW_BODY[end_of_first + 1:])
    assert rest == VIEW_ROWS[1:]
    assert parser.close() == VIEW_META


@pytest.mark.usefixtures("both_row_decoders")
def test_n1ql_meta_before_and_after_results():
    body = (b'{"requestID":"r","signature":{"x":"json"},"results":[{"x":1}],'
            b'"status":"success","metrics":{"resultCount":1}}')
    parser = RowParser("results")
    assert parser.feed(body) == [{"x": 1}]
    meta = parser.close()
    assert meta == {"requestID": "r", "signature": {"x": "json"}, "status": "success",
                    "metrics": {"resultCount": 1}}


@pytest.mark.usefixtures("both_row_decoders")
def test_reduce_body_without_total_rows_and_empty_rows():
    parser = RowParser("rows")
    assert parser.feed(b'{"rows":[{"key":null,"value":4212}]}') == [{"key": None, "value": 4212}]
    assert parser.close() == {}
    parser = RowParser("rows")
    assert parser.feed(b'{"total_rows":0,"rows":[]}') == []
    assert parser.close() == {"total_rows": 0}


@pytest.mark.usefixtures("both_row_decoders")
def test_error_body_is_all_meta():
    parser = RowParser("rows")
    assert parser.feed(b'{"error":"not_found","reason":"missing"}') == []
    assert parser.close() == {"error": "not_found", "reason": "missing"}


@pytest.mark.usefixtures("both_row_decoders")
def test_invalid_and_truncated_bodies_raise():
    with pytest.raises(RowParseError):
        RowParser("rows").feed(b"Not found <html>")
    parser = RowParser("rows")
    cut = VIEW_BODY.index(b"},") + 5
    assert parser.feed(VIEW_BODY[:cut]) == [VIEW_ROWS[0]]
    with pytest.raises(RowParseError):
        parser.close()
    assert isinstance(RowParseError("x"), ValueError)


@pytest.mark.usefixtures("both_row_decoders")
def test_numbers_survive():
    parser = RowParser("rows")
    rows = parser.feed(b'{"rows":[{"key":9223372036854775807,"value":0.1},{"key":1e3,"value":-5}]}')
    assert rows[0] == {"key": 2 ** 63 - 1, "value": 0.1}
    assert rows[1] == {"key": 1000.0, "value": -5} and isinstance(rows[1]["key"], float)
    assert parser.close() == {}


@pytest.mark.parametrize("number", [2 ** 63, 2 ** 64 - 1, -2 ** 63])
@pytest.mark.usefixtures("both_row_decoders")
def test_integers_beyond_int64_survive(number):
    parser = RowParser("results")
    assert parser.feed(b'{"results":[%d],"status":"success"}' % number) == [number]
    assert parser.close() == {"status": "success"}

"""``Engine.http_request``: the engine's HTTP entry point
(couchbase_core._engine.httpreq), against tiny scripted servers on
127.0.0.1, on the select IOPS.

The engine is a real one, made the way ``Admin`` makes it (a blocking
bucket that never bootstraps, whose management nodes are the connection
string's hosts), so node choice, pooling, the deadline, cancellation,
close() and fork are the engine's own.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest

from couchbase_core._engine.http import basic_auth
from couchbase_core.admin import _admin_connection
from couchbase_core.exceptions import RC, ObjectDestroyedError
from tests.test_http_client import ScriptedServer, chunked, keepalive_handler, response


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


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class Calls:
    """The callbacks of one request, recorded in order."""

    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []
        self.body = b""

    def kwargs(self) -> Dict[str, Any]:
        return {"on_head": lambda status, headers: self.events.append(("head", status)),
                "on_chunk": self._chunk,
                "on_end": lambda: self.events.append(("end",)),
                "on_error": lambda rc, message: self.events.append(("error", rc, message))}

    def _chunk(self, data: bytes) -> None:
        self.body += data
        if not self.events or self.events[-1][0] != "data":
            self.events.append(("data",))

    @property
    def ended(self) -> bool:
        return any(e[0] in ("end", "error") for e in self.events)


class Node:
    """A never-bootstrapping bucket whose ``mgmt`` nodes are ``ports`` (in
    that order, when requests are given ``order=keep``), and its loop."""

    def __init__(self, *ports: int) -> None:
        hosts = ",".join("127.0.0.1:%d=http" % port for port in ports)
        self.bucket = _admin_connection("couchbase://%s" % hosts, "Administrator", "password")
        self.engine = self.bucket._engine
        self.iops = self.bucket._iops

    def run_until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the loop never got there"
            self.iops.run_once(0.02)

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.iops.run_once(0.01)

    def idle(self) -> List[Any]:
        return [c for conns in self.engine.http_pool._idle.values() for c in conns]

    def close(self) -> None:
        if not self.engine.closed:
            self.bucket.close()
        else:
            self.iops.close()


def keep(targets: List[Any]) -> None:
    """Try the nodes in the connection string's order."""


@pytest.fixture
def node_for():
    made: List[Node] = []

    def make(*ports: int) -> Node:
        made.append(Node(*ports))
        return made[-1]

    yield make
    for node in made:
        node.close()


def test_a_response_streams_to_the_callbacks_and_the_connection_goes_back_to_the_pool(serve, node_for):
    pieces = [b'{"a":', b"[1,2", b",3]}"]
    server = serve(keepalive_handler(lambda line, body: chunked(pieces)))
    node = node_for(server.port)
    calls = Calls()
    request = node.engine.http_request("mgmt", "GET", "/pools", timeout=30, **calls.kwargs())
    assert calls.events == []  # nothing is called back inside the call
    node.run_until(lambda: calls.ended)
    assert calls.events == [("head", 200), ("data",), ("end",)]
    assert calls.body == b"".join(pieces)
    assert request.done and request.status == 200 and request.connection is None
    (conn,) = node.idle()
    assert conn.state == "open"
    line, headers, _ = server.requests[0]
    assert line == "GET /pools HTTP/1.1"
    assert headers["authorization"] == basic_auth("Administrator", "password")
    # the next request reuses that connection
    again = Calls()
    node.engine.http_request("mgmt", "GET", "/pools", timeout=30, **again.kwargs())
    node.run_until(lambda: again.ended)
    assert again.events[-1] == ("end",) and server.accepted == 1


def test_the_entry_point_does_not_go_through_submit(serve, node_for, monkeypatch):
    server = serve(keepalive_handler(lambda line, body: response(b"{}")))
    node = node_for(server.port)

    def refuse(*args: Any) -> None:
        raise AssertionError("HTTP requests are not KV operations")

    monkeypatch.setattr(node.engine, "submit", refuse)
    monkeypatch.setattr(node.engine, "_run_local", refuse)
    calls = Calls()
    node.engine.http_request("mgmt", "POST", "/x", b'{"k":1}', {"Content-Type": "application/json"}, 30,
                             **calls.kwargs())
    node.run_until(lambda: calls.ended)
    assert calls.events[-1] == ("end",)
    assert server.requests[0][2] == b'{"k":1}'


def test_a_service_no_node_offers_fails_from_the_loop(node_for):
    node = node_for(refused_port())
    calls = Calls()
    node.engine.http_request("n1ql", "POST", "/query/service", b"{}", timeout=30, **calls.kwargs())
    assert calls.events == []
    node.run_until(lambda: calls.ended)
    assert calls.events == [("error", RC.CLIENT_NOT_SUPPORTED, "no node of the cluster offers the n1ql service")]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_refused_connection_moves_to_the_next_node(serve, node_for, method):
    server = serve(keepalive_handler(lambda line, body: response(b'{"ok":true}')))
    node = node_for(refused_port(), server.port)
    calls = Calls()
    node.engine.http_request("mgmt", method, "/x", b"", timeout=30, order=keep, **calls.kwargs())
    node.run_until(lambda: calls.ended)
    # never sent to the first node: safe to send elsewhere, whatever the method
    assert calls.events[-1] == ("end",) and server.accepted == 1


def _hang_up_after_reading(sock: socket.socket, server: ScriptedServer) -> None:
    server.next_request(sock)
    sock.close()


@pytest.mark.parametrize("method, resent", [("GET", True), ("POST", False)])
def test_only_idempotent_requests_go_to_another_node_after_a_broken_connection(serve, node_for, method, resent):
    breaking = serve(_hang_up_after_reading)
    answering = serve(keepalive_handler(lambda line, body: response(b'{"ok":true}')))
    node = node_for(breaking.port, answering.port)
    calls = Calls()
    node.engine.http_request("mgmt", method, "/x", timeout=30, order=keep, **calls.kwargs())
    node.run_until(lambda: calls.ended)
    assert breaking.accepted == 1
    if resent:
        assert calls.events[-1] == ("end",) and answering.accepted == 1
    else:
        assert calls.events[-1][0] == "error" and calls.events[-1][1] in (RC.NETWORK, RC.PROTOCOL)
        assert answering.accepted == 0


def test_one_deadline_for_every_node_tried(serve, node_for, monkeypatch):
    second = serve(keepalive_handler(lambda line, body: response(b"{}")))
    node = node_for(refused_port(), second.port)
    now = [1000.0]
    monkeypatch.setattr(node.engine, "clock", lambda: now[0])
    calls = Calls()
    node.engine.http_request("mgmt", "GET", "/x", timeout=5, order=keep, **calls.kwargs())
    now[0] += 5.0  # the first node's refusal comes when the request's time is up
    node.run_until(lambda: calls.ended)
    assert [e[:2] for e in calls.events] == [("error", RC.TIMEOUT)]
    assert "timed out after 5s" in calls.events[0][2]
    assert second.accepted == 0  # no attempt beyond the deadline


def test_a_silent_server_times_out(serve, node_for):
    def silent(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        server.hold()

    server = serve(silent)
    node = node_for(server.port)
    calls = Calls()
    started = time.monotonic()
    node.engine.http_request("mgmt", "GET", "/slow", timeout=0.2, **calls.kwargs())
    node.run_until(lambda: calls.ended)
    assert [e[:2] for e in calls.events] == [("error", RC.TIMEOUT)]
    assert time.monotonic() - started >= 0.19  # never early
    assert node.idle() == []  # a timed-out connection is not pooled


def _head_then_hold(sock: socket.socket, server: ScriptedServer) -> None:
    server.next_request(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"6\r\n{\"a\":[\r\n")
    server.hold()


def test_cancel_half_way_calls_nobody_and_closes_the_connection(serve, node_for):
    server = serve(_head_then_hold)
    node = node_for(server.port)
    calls = Calls()
    request = node.engine.http_request("mgmt", "GET", "/rows", timeout=30, **calls.kwargs())
    node.run_until(lambda: calls.body)
    conn = request.connection
    assert conn is not None and conn.busy
    request.cancel()
    request.cancel()  # twice is harmless
    node.spin(0.1)
    assert calls.events == [("head", 200), ("data",)]  # nothing after the cancel
    assert conn.state == "closed" and node.idle() == []
    # the engine goes on: a new request gets a new connection
    server.handler = keepalive_handler(lambda line, body: response(b"{}"))
    after = Calls()
    node.engine.http_request("mgmt", "GET", "/x", timeout=30, **after.kwargs())
    node.run_until(lambda: after.ended)
    assert after.events[-1] == ("end",) and server.accepted == 2


def test_pause_stops_reading_until_resume(serve, node_for):
    release = threading.Event()

    def two_parts(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        release.wait(30)
        sock.sendall(b"cd")

    server = serve(two_parts)
    node = node_for(server.port)
    calls = Calls()
    request = node.engine.http_request("mgmt", "GET", "/x", timeout=30, **calls.kwargs())
    node.run_until(lambda: calls.body == b"ab")
    request.pause()
    release.set()
    node.spin(0.2)
    assert calls.body == b"ab" and not calls.ended  # "cd" waits in the socket
    request.resume()
    node.run_until(lambda: calls.ended)
    assert calls.body == b"abcd" and calls.events[-1] == ("end",)


def test_close_fails_a_request_in_progress_from_the_loop(serve, node_for):
    server = serve(_head_then_hold)
    node = node_for(server.port)
    calls = Calls()
    request = node.engine.http_request("mgmt", "GET", "/rows", timeout=30, **calls.kwargs())
    node.run_until(lambda: calls.body)
    conn = request.connection
    node.engine.close()
    assert calls.events == [("head", 200), ("data",)]  # not inside close()
    node.run_until(lambda: calls.ended)
    assert calls.events[-1] == ("error", RC.OBJECT_DESTROYED, "the bucket was closed")
    assert conn.state == "closed"
    with pytest.raises(ObjectDestroyedError):
        node.engine.http_request("mgmt", "GET", "/x", timeout=30)


def test_a_timeout_must_be_positive(node_for):
    node = node_for(refused_port())
    with pytest.raises(ValueError):
        node.engine.http_request("mgmt", "GET", "/x", timeout=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_request_in_flight_at_a_fork_fails_in_the_child_and_completes_in_the_parent(serve, node_for):
    from tests.test_fork import collect, fork_children

    answer = threading.Event()

    def answer_later(sock: socket.socket, server: ScriptedServer) -> None:
        server.next_request(sock)
        answer.wait(60)
        sock.sendall(response(b'{"parent":true}'))

    server = serve(answer_later)
    node = node_for(server.port)
    calls = Calls()
    node.engine.http_request("mgmt", "GET", "/x", timeout=60, **calls.kwargs())
    node.run_until(lambda: server.requests)

    def child(_index: int) -> Any:
        node.run_until(lambda: calls.ended)
        return [list(e) for e in calls.events]

    kids = fork_children(1, child)
    (report,) = collect(kids)
    assert [e[:2] for e in report] == [["error", RC.FORKED]]
    answer.set()
    node.run_until(lambda: calls.ended)
    assert calls.events == [("head", 200), ("data",), ("end",)] and calls.body == b'{"parent":true}'

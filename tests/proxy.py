"""A fault-injecting TCP proxy in front of a real server, for tests.

It forwards bytes both ways between the client and a real memcached and can
misbehave on request: swallow or answer HELLO in ways other servers do, drop
every connection, inject garbage towards the client, or stop forwarding
replies. It runs in its own threads on 127.0.0.1 and a free port; it never
imitates the server's data handling, only the transport around it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import List, Optional

HELLO = 0x1F


class FaultProxy:
    """Proxy ``127.0.0.1:<port>`` -> ``target``.

    Attributes:
        hello_mode: what happens to HELLO requests: ``"pass"`` (forward),
            ``"silent"`` (drop the frame, forward the rest), ``"close"``
            (close the client's connection).
        accepted: number of client connections accepted so far.
        hellos: number of HELLO frames seen.
        requests: number of request frames forwarded to the server.
    """

    def __init__(self, target_host: str, target_port: int, hello_mode: str = "pass") -> None:
        self.target = (target_host, target_port)
        self.hello_mode = hello_mode
        self.accepted = 0
        self.hellos = 0
        self.requests = 0
        self.forward_replies = threading.Event()
        self.forward_replies.set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._pairs: List[tuple] = []
        #: Connections turned into black holes (see :meth:`black_hole`).
        self._holes: set = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def connstr(self) -> str:
        return "memcached://127.0.0.1:%d" % self.port

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.accepted += 1
                self._pairs.append((client, upstream))
            threading.Thread(target=self._client_to_server, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(client, upstream), daemon=True).start()

    def _client_to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buf += data
                out = b""
                while len(buf) >= 24:
                    bodylen = struct.unpack_from(">I", buf, 8)[0]
                    if len(buf) < 24 + bodylen:
                        break
                    frame, buf = buf[:24 + bodylen], buf[24 + bodylen:]
                    if frame[1] == HELLO:
                        self.hellos += 1
                        if self.hello_mode == "silent":
                            continue
                        if self.hello_mode == "close":
                            raise ConnectionError("closing on HELLO")
                    out += frame
                    with self._lock:
                        self.requests += 1
                if out and id(client) not in self._holes:
                    upstream.sendall(out)
        except OSError:
            pass
        self._close_pair(client, upstream)

    def _server_to_client(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                self.forward_replies.wait()
                if id(client) not in self._holes:
                    client.sendall(data)
        except OSError:
            pass
        self._close_pair(client, upstream)

    def _close_pair(self, client: socket.socket, upstream: socket.socket) -> None:
        for s in (client, upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        with self._lock:
            if (client, upstream) in self._pairs:
                self._pairs.remove((client, upstream))

    def wait_requests(self, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` request frames have been forwarded in all."""
        deadline = time.monotonic() + timeout
        while self.requests < count:
            if time.monotonic() > deadline:
                raise AssertionError("the proxy saw %d requests, not %d" % (self.requests, count))
            time.sleep(0.002)

    def drop_connections(self) -> int:
        """Close every proxied connection at once; return how many."""
        with self._lock:
            pairs = list(self._pairs)
        for client, upstream in pairs:
            self._close_pair(client, upstream)
        return len(pairs)

    def black_hole(self) -> int:
        """Turn every current connection into a black hole, as a dead peer or
        a lost route would: both sockets stay open, nothing more passes in
        either direction. New connections work normally. Returns how many."""
        with self._lock:
            pairs = list(self._pairs)
            self._holes.update(id(client) for client, _ in pairs)
        return len(pairs)

    def inject(self, data: bytes) -> int:
        """Send ``data`` to every client as if the server had sent it."""
        with self._lock:
            pairs = list(self._pairs)
        for client, _ in pairs:
            try:
                client.sendall(data)
            except OSError:
                pass
        return len(pairs)

    def close(self, reason: Optional[str] = None) -> None:
        self._closed = True
        self.forward_replies.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self.drop_connections()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

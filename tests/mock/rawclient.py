"""A deliberately small, blocking memcached-binary-protocol client for tests.

It shares no code with the project's client engine, so an engine bug cannot
hide an emulator bug (and the other way round). Requests are built byte by
byte here; responses are returned whole, with nothing interpreted.
"""

from __future__ import annotations

import json
import socket
import struct
import zlib
from typing import Dict, Iterable, List, NamedTuple, Optional, Tuple

__all__ = ["Response", "RawClient", "ClusterClients", "Closed", "vbucket_of", "durability_frame"]

HEADER = struct.Struct(">BBHBBHIIQ")

# Feature codes used by the tests.
F_MUTATION_SEQNO = 0x04
F_XATTR = 0x06
F_XERROR = 0x07
F_SELECT_BUCKET = 0x08
F_SNAPPY = 0x0A
F_JSON = 0x0B
F_ALT_REQUEST = 0x10
F_SYNC_REPLICATION = 0x11
ALL_FEATURES = (F_MUTATION_SEQNO, F_XATTR, F_XERROR, F_SELECT_BUCKET, F_JSON, F_ALT_REQUEST, F_SYNC_REPLICATION)


class Closed(Exception):
    """The server closed the connection."""


class Response(NamedTuple):
    """One response frame, fields as on the wire."""

    magic: int
    opcode: int
    status: int
    datatype: int
    opaque: int
    cas: int
    extras: bytes
    key: bytes
    value: bytes
    framing: bytes

    def json(self) -> object:
        """The value parsed as JSON."""
        return json.loads(self.value)


def vbucket_of(key: bytes, count: int) -> int:
    """CRC32 key hashing (spec/cluster-config.md §3)."""
    return ((zlib.crc32(key) >> 16) & 0x7FFF) % count


def durability_frame(level: int, timeout_ms: Optional[int] = None) -> bytes:
    """A durability-requirement frame info (id 1)."""
    data = bytes([level]) + (struct.pack(">H", timeout_ms) if timeout_ms is not None else b"")
    return bytes([0x10 | len(data)]) + data


class RawClient:
    """One connection to one KV port."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        # Replies are awaited up to ``timeout``: it only bounds a server that
        # never answers, so it is long enough for a loaded machine; tests that
        # expect silence set a short one on the socket themselves.
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.opaque = 0
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------- framing

    def encode(self, opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"", cas: int = 0,
               vbucket: int = 0, datatype: int = 0, framing: bytes = b"", opaque: Optional[int] = None) -> bytes:
        if opaque is None:
            self.opaque += 1
            opaque = self.opaque
        body = len(framing) + len(extras) + len(key) + len(value)
        if framing:
            header = HEADER.pack(0x08, opcode, (len(framing) << 8) | len(key), len(extras), datatype, vbucket,
                                 body, opaque, cas)
        else:
            header = HEADER.pack(0x80, opcode, len(key), len(extras), datatype, vbucket, body, opaque, cas)
        return header + framing + extras + key + value

    def send(self, opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"", **kw: object) -> int:
        """Send one request; returns its opaque."""
        self.sock.sendall(self.encode(opcode, key, extras, value, **kw))  # type: ignore[arg-type]
        return self.opaque

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as exc:
                raise Closed() from exc
            if not chunk:
                raise Closed()
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv(self) -> Response:
        """Read one response frame."""
        magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas = HEADER.unpack(self._read(24))
        framelen = 0
        if magic == 0x18:
            framelen, keylen = keylen >> 8, keylen & 0xFF
        body = self._read(bodylen)
        framing = body[:framelen]
        extras = body[framelen:framelen + extlen]
        key = body[framelen + extlen:framelen + extlen + keylen]
        value = body[framelen + extlen + keylen:]
        return Response(magic, opcode, status, datatype, opaque, cas, extras, key, value, framing)

    def request(self, opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
                **kw: object) -> Response:
        """Send one request and read one response (which must match it)."""
        opaque = self.send(opcode, key, extras, value, **kw)
        response = self.recv()
        assert response.opaque == opaque, (response, opaque)
        return response

    def until_noop(self) -> List[Response]:
        """Send a NOOP and collect every response up to and including its own."""
        opaque = self.send(0x0A)
        out = []
        while True:
            response = self.recv()
            out.append(response)
            if response.opaque == opaque and response.opcode == 0x0A:
                return out

    def is_closed(self, wait: float = 30.0) -> bool:
        """True when the server hangs up (nothing else arrives first).
        Returns as soon as it does: ``wait`` bounds a server that stays
        silent (pass a short one only where silence is what is expected)."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return data == b""

    def probe_closed(self, wait: float = 30.0) -> bool:
        """Whether the server has hung up, told by evidence either way rather
        than by silence: a NOOP is sent and the responses read up to its own
        (open: False) or to the hang-up (True). ``wait`` only bounds a server
        that does neither."""
        try:
            opaque = self.send(0x0A)
        except (BrokenPipeError, ConnectionResetError):
            return True
        self.sock.settimeout(wait)
        try:
            while True:
                if self.recv().opaque == opaque:
                    return False
        except Closed:
            return True
        except socket.timeout:
            raise AssertionError("the server neither answered a NOOP nor hung up within %.0f s" % wait) from None

    # ----------------------------------------------------------- handshake

    def hello(self, features: Iterable[int] = ALL_FEATURES, agent: bytes = b"rawclient/1") -> List[int]:
        response = self.request(0x1F, key=agent, value=b"".join(struct.pack(">H", f) for f in features))
        assert response.status == 0, response
        return [struct.unpack_from(">H", response.value, i)[0] for i in range(0, len(response.value), 2)]

    def auth(self, user: str = "Administrator", password: str = "password") -> None:
        response = self.request(0x21, key=b"PLAIN", value=b"\x00" + user.encode() + b"\x00" + password.encode())
        assert response.status == 0, response

    def select(self, bucket: str) -> None:
        response = self.request(0x89, key=bucket.encode())
        assert response.status == 0, response

    def config(self) -> dict:
        response = self.request(0xB5)
        assert response.status == 0, response
        return json.loads(response.value)


class ClusterClients:
    """A connection to every node of one bucket, routing keys by vBucket map."""

    def __init__(self, ports: List[int], bucket: str, features: Iterable[int] = ALL_FEATURES,
                 host: str = "127.0.0.1") -> None:
        self.ports = ports
        self.bucket = bucket
        self.features = tuple(features)
        self.host = host
        self.nodes: List[RawClient] = [self.connect(i) for i in range(len(ports))]
        self.vbmap: List[List[int]] = []
        self.port_index: Dict[int, int] = {p: i for i, p in enumerate(ports)}
        self.server_nodes: List[int] = []

    def connect(self, index: int, features: Optional[Iterable[int]] = None) -> RawClient:
        """A fresh, authenticated connection to node ``index`` with the bucket selected."""
        client = RawClient(self.host, self.ports[index])
        client.hello(self.features if features is None else features)
        client.auth()
        client.select(self.bucket)
        return client

    def load_map(self) -> None:
        """Read the vBucket map from the first node's config."""
        config = self.nodes[0].config()
        server_map = config["vBucketServerMap"]
        self.vbmap = server_map["vBucketMap"]
        self.server_nodes = [self.port_index[int(entry.rsplit(":", 1)[1])] for entry in server_map["serverList"]]

    def vbucket(self, key: bytes) -> int:
        return vbucket_of(key, len(self.vbmap))

    def node_of(self, key: bytes, copy: int = 0) -> int:
        """Node index (into ``ports``) holding copy ``copy`` (0 = active) of ``key``."""
        return self.server_nodes[self.vbmap[self.vbucket(key)][copy]]

    def other_node(self, key: bytes) -> int:
        """A node holding no copy of ``key``'s vBucket."""
        row = self.vbmap[self.vbucket(key)]
        holders = {self.server_nodes[i] for i in row if i >= 0}
        return next(i for i in range(len(self.ports)) if i not in holders)

    def active(self, key: bytes) -> Tuple[RawClient, int]:
        """(connection to the active node, vbucket) of ``key``."""
        return self.nodes[self.node_of(key)], self.vbucket(key)

    def close(self) -> None:
        for client in self.nodes:
            client.close()

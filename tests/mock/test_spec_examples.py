"""The worked examples of /work/shared/spec as tests against the emulator.

* kv-protocol.md §9: the hex frames (HELLO, GET, SET, the SET response, the
  durable SET, NOT_MY_VBUCKET, MULTI_LOOKUP and its response, MULTI_MUTATION
  and its response, INCREMENT) are sent to the emulator byte for byte and
  the answers compared with the example bytes. The examples' vBucket ids are
  those of 1024 vBuckets, so the emulator runs with 1024 and each frame goes
  to the node the emulator's own map names as the owner.
* cluster-config.md §3: the vBucket table (foo, hello, user:1), through the
  emulator's ``vbucket_of`` and through routing on the wire.
* cluster-config.md §2: the terse config example's fields, in the emulator's config.
* cluster-config.md §5: the ketama vectors (checked on the tests' own
  continuum, then used to route keys to the emulator's memcached bucket).
* sasl.md §4 and §6: the PLAIN frame, and the SCRAM-SHA1/256/512 vectors
  driven against the emulator's server side with the vectors' nonces, salts
  and iteration counts fixed through ``KVSession.scram_test_vectors``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
import struct
import zlib
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from couchbase_core.mock.cluster import User
from couchbase_core.mock.cluster import vbucket_of as emulator_vbucket_of
from couchbase_core.mock.inprocess import ThreadedMock
from couchbase_core.mock.kvserver import KVSession
from couchbase_core.mock.runtime import BucketOptions, ClusterOptions
from tests.mock import rawhttp
from tests.mock.rawclient import RawClient, Response
from tests.mock.scram import ScramClient

HOST = "127.0.0.1"


def frame(text: str) -> bytes:
    """Hex as the spec prints it (spaces and line breaks ignored)."""
    return bytes.fromhex("".join(text.split()))


# ------------------------------------------------- kv-protocol.md §9, verbatim

GET_FOO_VB5 = frame("""
80 00 00 03  00 00 00 05  00 00 00 03  00 00 00 01
00 00 00 00  00 00 00 00  66 6f 6f""")
SET_FOO = frame("""
80 01 00 03  08 00 00 73  00 00 00 12  00 00 00 02
00 00 00 00  00 00 00 00  02 00 00 06  00 00 00 00
66 6f 6f 7b  22 61 22 3a  31 7d""")
SET_FOO_RESPONSE = frame("""
81 01 00 00  10 00 00 00  00 00 00 10  00 00 00 02
16 fa 2b 3c  4d 5e 6f 70  00 00 a1 b2  c3 d4 e5 f6
00 00 00 00  00 00 00 2a""")
SET_FOO_DURABLE = frame("""
08 01 04 03  08 00 00 73  00 00 00 16  00 00 00 03
00 00 00 00  00 00 00 00  13 01 27 10  02 00 00 06
00 00 00 00  66 6f 6f 7b  22 61 22 3a  31 7d""")
NMV_HEADER_START = frame("81 00 00 00 00 00 00 07")
HELLO = frame("""
80 1f 00 08  00 00 00 00  00 00 00 18  00 00 00 0a
00 00 00 00  00 00 00 00  70 79 63 62  2f 30 2e 31
00 03 00 04  00 06 00 07  00 08 00 0b  00 10 00 11""")
MULTI_LOOKUP = frame("""
80 d0 00 04  00 00 01 85  00 00 00 14  00 00 00 05
00 00 00 00  00 00 00 00  64 6f 63 31  c5 00 00 04
6e 61 6d 65  c6 00 00 04  74 61 67 73""")
MULTI_LOOKUP_VALUE = frame('00 00  00 00 00 05') + b'"Bob"' + frame('00 c0  00 00 00 00')
MULTI_MUTATION = frame("""
80 d1 00 04  00 00 01 85  00 00 00 1e  00 00 00 06
00 00 00 00  00 00 00 00  64 6f 63 31  c8 01 00 04
00 00 00 04  6e 61 6d 65  22 41 6c 22  cf 00 00 01
00 00 00 01  6e 31""")
MULTI_MUTATION_VALUE = frame("01  00 00  00 00 00 01  36")

# ------------------------------------------------------------- sasl.md §4, §6

PLAIN_AUTH = frame("""
80 21 00 05  00 00 00 00  00 00 00 1c  00 00 00 0c
00 00 00 00  00 00 00 00  50 4c 41 49  4e 00 41 64
6d 69 6e 69  73 74 72 61  74 6f 72 00  70 61 73 73
77 6f 72 64""")

SCRAM_VECTORS = {
    "SCRAM-SHA1": (
        "fyko+d2lbbFgONRv9qkxdawL",
        "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    ),
    "SCRAM-SHA256": (
        "rOprNGfwEbeRWgbNEkqO",
        "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ),
    "SCRAM-SHA512": (
        "0123456789abcdef",
        "n,,n=user,r=0123456789abcdef",
        "r=0123456789abcdefSRVNONCE,s=c2FsdHNhbHRzYWx0,i=4096",
        "c=biws,r=0123456789abcdefSRVNONCE,p=zg7ptRq2ehQBbJIphZRMT5klsrSzqQRhv+Humf7tj6GXxt7rZr46yITe9YUvi02K1UQ"
        "RkCU38vMg69Aio5Xcxw==",
        "v=FFqxueuOI8z7O9Fwdw83Gfp9pmtqp5g5wCN7oe86YfQ/tZNT1+YA9sxWZCQxHbZBOnDJTkp5c4cY1I4gxUGZ8w==",
    ),
}

# -------------------------------------------------- cluster-config.md §3, §5

VBUCKET_TABLE = [(b"foo", 0x8C736521, 3187, 115), (b"hello", 0x3610A686, 13840, 528),
                 (b"user:1", 0x7BA5C282, 31653, 933)]
KETAMA_SERVERS = ["192.168.1.%d:11210" % n for n in (101, 102, 103, 104)]


def ketama_points(authority: str) -> List[int]:
    """The 160 continuum points of one server (spec/cluster-config.md §5)."""
    points = []
    for h in range(40):
        digest = hashlib.md5(("%s-%d" % (authority, h)).encode()).digest()
        points.extend(struct.unpack("<4I", digest))
    return points


def continuum(servers: List[str]) -> List[Tuple[int, str]]:
    ring = []
    for authority in sorted(servers):
        ring.extend((point, authority) for point in ketama_points(authority))
    ring.sort()
    return ring


def ketama_server(ring: List[Tuple[int, str]], key: bytes) -> str:
    h = struct.unpack("<I", hashlib.md5(key).digest()[:4])[0]
    i = bisect.bisect_left(ring, (h, ""))
    return ring[i % len(ring)][1]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def mock() -> Iterator[ThreadedMock]:
    options = ClusterOptions(nodes=3, vbuckets=1024, replicas=1,
                             buckets=[BucketOptions("default"), BucketOptions("mc", "memcached"),
                                      BucketOptions("secret", password="s3cret")],
                             users=[User("user", "pencil", [("admin", None)])])
    with ThreadedMock(options) as running:
        yield running


def kv_port(mock: ThreadedMock, index: int) -> int:
    return mock.info["nodes"][index]["ports"]["kv"]


def recv_raw(client: RawClient) -> bytes:
    """One whole response frame, as bytes."""
    header = client._read(24)
    bodylen = struct.unpack_from(">I", header, 8)[0]
    return header + client._read(bodylen)


def verbatim_session(port: int) -> RawClient:
    """A connection opened with the spec's HELLO and PLAIN frames, byte for byte."""
    client = RawClient(HOST, port)
    client.send_raw(HELLO)
    hello = client.recv()
    assert (hello.magic, hello.opcode, hello.status, hello.opaque) == (0x81, 0x1F, 0, 0x0A)
    granted = {struct.unpack_from(">H", hello.value, i)[0] for i in range(0, len(hello.value), 2)}
    assert granted == {0x03, 0x04, 0x06, 0x07, 0x08, 0x0B, 0x10, 0x11}  # everything asked for
    client.send_raw(PLAIN_AUTH)
    auth = client.recv()
    assert (auth.opcode, auth.status, auth.opaque) == (0x21, 0, 0x0C), auth
    selected = client.request(0x89, key=b"default")
    assert selected.status == 0, selected
    return client


class Nodes:
    """A verbatim session to every node, and the emulator's vBucket map."""

    def __init__(self, mock: ThreadedMock) -> None:
        self.clients = [verbatim_session(kv_port(mock, i)) for i in range(3)]
        config = json.loads(self.clients[0].request(0xB5).value.replace(b"$HOST", HOST.encode()))
        ports = [int(s.rsplit(":", 1)[1]) for s in config["vBucketServerMap"]["serverList"]]
        self.index_of = {kv_port(mock, i): i for i in range(3)}
        self.node_of_server = [self.index_of[p] for p in ports]
        self.vbmap = config["vBucketServerMap"]["vBucketMap"]
        self.config = config

    def owner(self, vb: int, copy: int = 0) -> RawClient:
        return self.clients[self.node_of_server[self.vbmap[vb][copy]]]

    def stranger(self, vb: int) -> RawClient:
        holders = {self.node_of_server[i] for i in self.vbmap[vb] if i >= 0}
        return next(c for i, c in enumerate(self.clients) if i not in holders)

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture(scope="module")
def nodes(mock: ThreadedMock) -> Iterator[Nodes]:
    running = Nodes(mock)
    yield running
    running.close()


# ------------------------------------------------------- kv-protocol.md §9


def test_the_examples_are_the_lengths_the_spec_says() -> None:
    assert len(GET_FOO_VB5) == 27 and len(SET_FOO) == 42 and len(PLAIN_AUTH) == 52
    assert struct.unpack_from(">I", SET_FOO, 8)[0] == 8 + 3 + 7
    assert len(SET_FOO_DURABLE) == 24 + 0x16 and len(MULTI_LOOKUP) == 24 + 0x14
    assert len(MULTI_MUTATION) == 24 + 0x1E and len(HELLO) == 24 + 0x18
    assert emulator_vbucket_of(b"foo", 1024) == 0x73 and emulator_vbucket_of(b"doc1", 1024) == 0x185


def test_set_example_and_its_response_layout(nodes: Nodes) -> None:
    client = nodes.owner(115)
    client.send_raw(SET_FOO)
    response = recv_raw(client)
    # Identical to the example except CAS, vBucket UUID and seqno.
    assert response[:16] == SET_FOO_RESPONSE[:16]
    assert len(response) == len(SET_FOO_RESPONSE)
    cas, uuid, seqno = struct.unpack_from(">QQQ", response, 16)
    assert cas != 0
    stat = stat_group(client, b"vbucket-seqno 115")
    assert uuid == int(stat["vb_115:uuid"]) and seqno == int(stat["vb_115:high_seqno"])


def test_durable_set_example(nodes: Nodes) -> None:
    client = nodes.owner(115)
    client.send_raw(SET_FOO_DURABLE)
    response = client.recv()
    assert (response.magic, response.opcode, response.status, response.opaque) == (0x81, 0x01, 0, 3), response
    assert len(response.extras) == 16
    got = client.request(0x00, b"foo", vbucket=115)
    assert (got.status, got.value, got.extras, got.datatype) == (0, b'{"a":1}', frame("02 00 00 06"), 0x01)


def test_get_example_and_the_vbucket_it_names(nodes: Nodes) -> None:
    owner = nodes.owner(115)
    owner.send_raw(SET_FOO)
    assert owner.recv().status == 0
    # The example's vBucket 5 is not where "foo" hashes: its owner does not have it.
    client = nodes.owner(5)
    client.send_raw(GET_FOO_VB5)
    miss = client.recv()
    assert (miss.opcode, miss.status, miss.opaque) == (0x00, 0x01, 1)
    # The same frame with the vBucket fixed to the key's own (115).
    fixed = bytearray(GET_FOO_VB5)
    fixed[6:8] = struct.pack(">H", 115)
    owner.send_raw(bytes(fixed))
    hit = owner.recv()
    assert (hit.status, hit.opaque, hit.extras, hit.value) == (0, 1, frame("02 00 00 06"), b'{"a":1}')


def test_not_my_vbucket_example(nodes: Nodes) -> None:
    client = nodes.stranger(5)
    client.send_raw(GET_FOO_VB5)
    response = recv_raw(client)
    # 81 00 00 00 00 .. 00 07, the request's opaque, CAS 0. The emulator, like
    # a server without DedupeNotMyVbucketClustermap, attaches its config, so
    # the datatype is JSON and the body is not empty.
    assert response[:5] == NMV_HEADER_START[:5] and response[6:8] == NMV_HEADER_START[6:8]
    assert response[5] == 0x01 and response[12:16] == frame("00 00 00 01") and response[16:24] == bytes(8)
    config = json.loads(response[24:])
    assert config["vBucketServerMap"]["vBucketMap"] == nodes.vbmap


def test_multi_lookup_example_and_response(nodes: Nodes) -> None:
    client = nodes.owner(0x185)
    stored = client.request(0x01, b"doc1", struct.pack(">II", 0, 0), b'{"name":"Bob","n":5}', vbucket=0x185)
    assert stored.status == 0
    client.send_raw(MULTI_LOOKUP)
    response = recv_raw(client)
    assert response[:8] == frame("81 d0 00 00 00 00 00 cc")
    assert response[12:16] == frame("00 00 00 05")
    assert response[24:] == MULTI_LOOKUP_VALUE


def test_multi_mutation_example_and_response(nodes: Nodes) -> None:
    client = nodes.owner(0x185)
    stored = client.request(0x01, b"doc1", struct.pack(">II", 0, 0), b'{"name":"Bob","n":5}', vbucket=0x185)
    assert stored.status == 0
    client.send_raw(MULTI_MUTATION)
    response = client.recv()
    assert (response.opcode, response.status, response.opaque) == (0xD1, 0, 6), response
    assert response.value == MULTI_MUTATION_VALUE
    assert len(response.extras) == 16  # mutation token: MutationSeqno was in the HELLO
    got = client.request(0x00, b"doc1", vbucket=0x185)
    assert json.loads(got.value) == {"name": "Al", "n": 6}


def test_increment_example(nodes: Nodes) -> None:
    assert emulator_vbucket_of(b"counter", 1024) == 290
    extras = struct.pack(">QQI", 1, 0, 0)
    request = struct.pack(">BBHBBHIIQ", 0x80, 0x05, 7, len(extras), 0, 290, len(extras) + 7, 9, 0)
    request += extras + b"counter"
    assert request[4] == 0x14 and struct.unpack_from(">I", request, 8)[0] == 0x1B
    client = nodes.owner(290)
    for expected in (0, 1, 2):  # created with the initial value, then incremented
        client.send_raw(request)
        response = client.recv()
        assert (response.status, response.opaque, response.value) == (0, 9, struct.pack(">Q", expected))


# ------------------------------------------------------- cluster-config.md


@pytest.mark.parametrize("key,crc,high,vb", VBUCKET_TABLE)
def test_vbucket_table(key: bytes, crc: int, high: int, vb: int) -> None:
    assert zlib.crc32(key) & 0xFFFFFFFF == crc
    assert (crc >> 16) & 0x7FFF == high and high % 1024 == vb
    assert emulator_vbucket_of(key, 1024) == vb


def test_vbucket_table_routes_without_not_my_vbucket(mock: ThreadedMock, nodes: Nodes) -> None:
    for key, _crc, _high, vb in VBUCKET_TABLE:
        stored = nodes.owner(vb).request(0x01, key, struct.pack(">II", 0, 0), b'{"k":"%s"}' % key, vbucket=vb)
        assert stored.status == 0, (key, stored)
        refused = nodes.stranger(vb).request(0x00, key, vbucket=vb)
        assert refused.status == 0x07, (key, refused)
    # The emulator's own key hashing (used by N1QL USE KEYS) finds the
    # documents in the vBuckets of the spec's table.
    query = rawhttp.post_json(HOST, mock.info["query_port"], "/query/service",
                              {"statement": 'SELECT RAW d.k FROM `default` AS d USE KEYS ["foo", "hello", "user:1"]'},
                              ("Administrator", "password"))
    assert query.json()["results"] == ["foo", "hello", "user:1"], query


def test_terse_config_has_the_example_fields(nodes: Nodes) -> None:
    raw = nodes.clients[1].request(0xB5)
    config = json.loads(raw.value)
    for field, kind in (("rev", int), ("revEpoch", int), ("name", str), ("uuid", str), ("nodeLocator", str),
                        ("bucketCapabilitiesVer", str), ("bucketCapabilities", list),
                        ("clusterCapabilitiesVer", list), ("clusterCapabilities", dict), ("ddocs", dict),
                        ("nodes", list), ("nodesExt", list), ("vBucketServerMap", dict)):
        assert isinstance(config[field], kind), field
    example_caps = {"durableWrite", "couchapi", "dcp", "cbhello", "touch", "cccp", "xdcrCheckpointing",
                    "nodesExt", "xattr"}
    assert example_caps <= set(config["bucketCapabilities"])
    assert config["clusterCapabilities"] == {"n1ql": ["enhancedPreparedStatements"]}
    assert config["ddocs"] == {"uri": "/pools/default/buckets/default/ddocs"}
    me = [n for n in config["nodes"] if n["hostname"].startswith("$HOST:")]
    assert len(me) == 1 and me[0]["couchApiBase"].startswith("http://$HOST:")
    assert re.fullmatch(r"http://\$HOST:\d+/default%2B" + config["uuid"], me[0]["couchApiBase"])
    this = [n for n in config["nodesExt"] if n.get("thisNode")]
    assert len(this) == 1 and "hostname" not in this[0]
    for ext in config["nodesExt"]:
        assert {"mgmt", "kv", "capi", "n1ql"} <= set(ext["services"])
    server_map = config["vBucketServerMap"]
    assert server_map["hashAlgorithm"] == "CRC" and len(server_map["vBucketMap"]) == 1024
    assert sum(1 for s in server_map["serverList"] if s.startswith("$HOST:")) == 1


def test_ketama_vectors() -> None:
    points = ketama_points("192.168.1.101:11210")
    assert hashlib.md5(b"192.168.1.101:11210-0").hexdigest() == "e124b7a6434eb3ad221a240e1b36366d"
    assert points[:4] == [2797020385, 2914209347, 237247010, 1832269339]
    ring = continuum(KETAMA_SERVERS)
    assert len(ring) == 640
    assert ring[:3] == [(19069626, "192.168.1.104:11210"), (28439255, "192.168.1.101:11210"),
                        (36078660, "192.168.1.104:11210")]
    assert ketama_server(ring, b"foo") == "192.168.1.103:11210"
    assert ketama_server(ring, b"hello") == "192.168.1.102:11210"
    assert ketama_server(ring, b"user:1") == "192.168.1.101:11210"


def test_ketama_routing_over_the_emulated_memcached_bucket(mock: ThreadedMock) -> None:
    """The memcached bucket's config (ketama locator, hostname + ports.direct)
    gives the authorities of a continuum; every node is a cache of its own,
    so a key is found only on the node the continuum picks."""
    config = rawhttp.request(HOST, mock.info["http_port"], "GET", "/pools/default/b/mc",
                             auth=("Administrator", "password")).json()
    assert config["nodeLocator"] == "ketama" and "vBucketServerMap" not in config
    authorities = ["%s:%d" % (n["hostname"].rsplit(":", 1)[0].replace("$HOST", HOST), n["ports"]["direct"])
                   for n in config["nodes"]]
    assert len(authorities) == 3
    ring = continuum(authorities)
    clients = {a: RawClient(HOST, int(a.rsplit(":", 1)[1])) for a in authorities}
    try:
        for client in clients.values():
            client.auth()
            client.select("mc")
        placed = {}
        for n in range(60):
            key = b"ketama-%d" % n
            placed[key] = ketama_server(ring, key)
            assert clients[placed[key]].request(0x01, key, struct.pack(">II", 0, 0), key).status == 0
        assert len(set(placed.values())) == 3
        for key, owner in placed.items():
            for authority, client in clients.items():
                got = client.request(0x00, key)
                assert got.status == (0 if authority == owner else 0x01), (key, authority, got)
    finally:
        for client in clients.values():
            client.close()


def test_cccp_is_not_offered_for_memcached_buckets(mock: ThreadedMock) -> None:
    client = RawClient(HOST, kv_port(mock, 0))
    try:
        client.auth()
        client.select("mc")
        assert client.request(0xB5).status == 0x01  # KEY_ENOENT, as the server answers: fall back to HTTP
    finally:
        client.close()


# ---------------------------------------------------------------- sasl.md


def test_mechanisms_are_those_the_spec_lists_for_couchbasemock(mock: ThreadedMock) -> None:
    client = RawClient(HOST, kv_port(mock, 0))
    try:
        offered = client.request(0x20).value.decode().split()
        assert offered == ["SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1", "PLAIN"]
        assert client.request(0x21, key=b"CRAM-MD5").status == 0x20
    finally:
        client.close()


@pytest.fixture
def fixed_scram() -> Iterator[Dict[str, Any]]:
    vectors: Dict[str, Any] = {}
    KVSession.scram_test_vectors = vectors
    try:
        yield vectors
    finally:
        KVSession.scram_test_vectors = None


def _server_parts(server_first: str, cnonce: str) -> Tuple[str, bytes, int]:
    import base64

    fields = dict(p.split("=", 1) for p in server_first.split(","))
    return fields["r"][len(cnonce):], base64.b64decode(fields["s"]), int(fields["i"])


@pytest.mark.parametrize("mechanism", sorted(SCRAM_VECTORS))
def test_scram_vector_against_the_emulator(mock: ThreadedMock, fixed_scram: Dict[str, Any],
                                           mechanism: str) -> None:
    cnonce, c1, s1, c2, s2 = SCRAM_VECTORS[mechanism]
    fixed_scram["user"] = _server_parts(s1, cnonce)
    # The tests' own SCRAM client reproduces the vector...
    ours = ScramClient(mechanism, "user", "pencil", cnonce)
    assert ours.first() == c1 and ours.final(s1) == c2 and ours.verify(s2)
    # ...and so does the emulator's server side, message for message.
    client = RawClient(HOST, kv_port(mock, 1))
    try:
        first = client.request(0x21, key=mechanism.encode(), value=c1.encode())
        assert (first.status, first.value.decode()) == (0x21, s1)
        final = client.request(0x22, key=mechanism.encode(), value=c2.encode())
        assert (final.status, final.value.decode()) == (0, s2)
        assert client.request(0x89, key=b"secret").status == 0  # logged in as "user", an admin
    finally:
        client.close()


@pytest.mark.parametrize("mechanism", sorted(SCRAM_VECTORS))
def test_scram_vector_with_a_wrong_proof_fails(mock: ThreadedMock, fixed_scram: Dict[str, Any],
                                               mechanism: str) -> None:
    cnonce, c1, s1, c2, _s2 = SCRAM_VECTORS[mechanism]
    fixed_scram["user"] = _server_parts(s1, cnonce)
    wrong = ScramClient(mechanism, "user", "pencil!", cnonce).final(s1)
    assert wrong != c2
    client = RawClient(HOST, kv_port(mock, 1))
    try:
        assert client.request(0x21, key=mechanism.encode(), value=c1.encode()).status == 0x21
        assert client.request(0x22, key=mechanism.encode(), value=wrong.encode()).status == 0x20
        assert client.request(0x89, key=b"secret").status == 0x24  # not logged in
    finally:
        client.close()


def test_plain_example_frame(mock: ThreadedMock) -> None:
    client = RawClient(HOST, kv_port(mock, 2))
    try:
        client.send_raw(PLAIN_AUTH)
        response = client.recv()
        assert (response.magic, response.opcode, response.status, response.opaque) == (0x81, 0x21, 0, 0x0C)
        wrong = bytearray(PLAIN_AUTH)
        wrong[-1] ^= 0x01  # "passworE"
        client.send_raw(bytes(wrong))
        assert client.recv().status == 0x20
    finally:
        client.close()


def stat_group(client: RawClient, group: bytes) -> Dict[str, str]:
    opaque = client.send(0x10, group)
    out: Dict[str, str] = {}
    while True:
        response: Response = client.recv()
        assert response.opaque == opaque and response.status == 0, response
        if not response.key:
            return out
        out[response.key.decode()] = response.value.decode()

"""The emulator's "done when" scenario, end to end, on raw sockets.

A 3-node cluster with one replica runs as a child process
(``MockCluster(nodes=3, replicas=1)``). Everything below talks to it the way
a 2.x-era SDK would, with code written here and in the small helpers next
to this file -- never through the project's client engine, so an engine bug
cannot hide an emulator bug:

* bootstrap by CCCP: HELLO, SASL_LIST_MECHS, SCRAM-SHA512 (the tests' own
  SCRAM, :mod:`tests.mock.scram`), SELECT_BUCKET, GET_CLUSTER_CONFIG;
* bootstrap by HTTP streaming: ``GET /pools/default/bs/default`` read by a
  hand-written HTTP/1.1 client that de-chunks and splits configs at
  ``"\\n\\n\\n\\n"`` (:mod:`tests.mock.rawhttp`);
* 10,000 keys written and read back, pipelined, each routed by CRC32 over
  the vBucket map to its active node, and every node holding some;
* GET_REPLICA answered by the replica node and refused (NOT_MY_VBUCKET) by
  the others;
* a node added and rebalanced in through the control endpoint: a request
  routed by the old map gets NOT_MY_VBUCKET carrying a newer config that
  lists the new node, and the HTTP stream delivers that newer config too;
* a view (design document PUT on the views port from ``couchApiBase``) and
  a N1QL query with a WHERE clause and a positional parameter (query port
  from ``nodesExt``).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit

import pytest

from couchbase_core.mock import MockCluster
from tests.mock import rawhttp
from tests.mock.rawclient import RawClient, Response
from tests.mock.scram import handshake

GET, SET, STAT, GET_REPLICA, GET_CLUSTER_CONFIG = 0x00, 0x01, 0x10, 0x83, 0xB5
SUCCESS, KEY_ENOENT, NOT_MY_VBUCKET = 0x00, 0x01, 0x07
F_XERROR, F_SELECT_BUCKET, F_JSON, F_MUTATION_SEQNO = 0x07, 0x08, 0x0B, 0x04

ADMIN = ("Administrator", "password")
HOST = "127.0.0.1"
NUM_KEYS = 10_000
FLAGS = 0x02000006  # JSON, as the 2.x Python SDK wrote it


def doc_key(i: int) -> bytes:
    return b"fidelity::%05d" % i


def doc_value(i: int) -> bytes:
    return json.dumps({"type": "fidelity", "n": i, "name": "user-%05d" % i}, separators=(",", ":")).encode()


def vbucket_of(key: bytes, count: int) -> int:
    """spec/cluster-config.md §3, written out again on purpose."""
    return ((zlib.crc32(key) & 0xFFFFFFFF) >> 16 & 0x7FFF) % count


def with_host(raw: bytes, host: str = HOST) -> Dict[str, Any]:
    return json.loads(raw.replace(b"$HOST", host.encode()))


class Routed:
    """A client's view of one bucket: the current config, a connection per
    KV node (opened on first use, with the full handshake), CRC32 routing."""

    def __init__(self, bucket: str = "default") -> None:
        self.bucket = bucket
        self.config: Dict[str, Any] = {}
        self.servers: List[Tuple[str, int]] = []
        self.vbmap: List[List[int]] = []
        self.connections: Dict[Tuple[str, int], RawClient] = {}

    def apply(self, config: Dict[str, Any]) -> bool:
        """Take ``config`` if it is newer (spec/cluster-config.md §6)."""
        new = (config.get("revEpoch", -1), config["rev"])
        if self.config and new <= (self.config.get("revEpoch", -1), self.config["rev"]):
            return False
        self.config = config
        server_map = config["vBucketServerMap"]
        self.servers = [(entry.rsplit(":", 1)[0], int(entry.rsplit(":", 1)[1])) for entry in server_map["serverList"]]
        self.vbmap = server_map["vBucketMap"]
        return True

    def conn(self, index: int) -> RawClient:
        address = self.servers[index]
        client = self.connections.get(address)
        if client is None:
            client = handshake(address[0], address[1], ADMIN[0], ADMIN[1], self.bucket,
                               features=(F_XERROR, F_SELECT_BUCKET, F_JSON, F_MUTATION_SEQNO))
            self.connections[address] = client
        return client

    def vbucket(self, key: bytes) -> int:
        return vbucket_of(key, len(self.vbmap))

    def holder(self, key: bytes, copy: int = 0) -> int:
        """Server index holding copy ``copy`` (0 = active) of ``key``."""
        return self.vbmap[self.vbucket(key)][copy]

    def close(self) -> None:
        for client in self.connections.values():
            client.close()
        self.connections.clear()

    def pipeline(self, requests: Sequence[Tuple[int, int, bytes, bytes, bytes]]) -> List[Response]:
        """Send ``(server index, opcode, key, extras, value)`` requests, all of
        a node's back to back, then collect one response each; returned in
        request order (matched by opaque)."""
        by_node: Dict[int, List[bytes]] = {}
        for opaque, (index, opcode, key, extras, value) in enumerate(requests):
            client = self.conn(index)
            frame = client.encode(opcode, key, extras, value, vbucket=self.vbucket(key), opaque=opaque)
            by_node.setdefault(index, []).append(frame)
        for index, frames in by_node.items():
            self.conn(index).send_raw(b"".join(frames))
        results: List[Optional[Response]] = [None] * len(requests)
        for index, frames in by_node.items():
            client = self.conn(index)
            for _ in frames:
                response = client.recv()
                assert results[response.opaque] is None, response
                results[response.opaque] = response
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=3, replicas=1) as running:
        yield running


@pytest.fixture(scope="module")
def seed(cluster: MockCluster) -> Tuple[str, int]:
    """The bootstrap host: the first address of the connection string."""
    first = urlsplit(cluster.connstr).netloc.split(",")[0]
    host, port = first.rsplit(":", 1)
    return host, int(port)


@pytest.fixture(scope="module")
def cccp(seed: Tuple[str, int]) -> Dict[str, Any]:
    """The config a CCCP bootstrap gets from the seed node."""
    client = handshake(seed[0], seed[1], ADMIN[0], ADMIN[1], "default", features=(F_XERROR, F_SELECT_BUCKET, F_JSON))
    try:
        response = client.request(GET_CLUSTER_CONFIG)
    finally:
        client.close()
    assert response.status == SUCCESS, response
    assert response.datatype == 0x01  # JSON, negotiated
    assert b"$HOST" in response.value  # the serving node names itself $HOST, like a real server
    return with_host(response.value, seed[0])


@pytest.fixture(scope="module")
def stream(cluster: MockCluster) -> Iterator[rawhttp.ConfigStream]:
    """The streaming config connection, kept open for the whole module."""
    conn = rawhttp.ConfigStream(HOST, cluster.http_port, "default", ADMIN)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def first_streamed(stream: rawhttp.ConfigStream) -> Dict[str, Any]:
    return stream.next_config(HOST)


@pytest.fixture(scope="module")
def routed(cccp: Dict[str, Any]) -> Iterator[Routed]:
    client = Routed()
    client.apply(cccp)
    yield client
    client.close()


@pytest.fixture(scope="module")
def written(routed: Routed) -> Dict[str, Any]:
    """Write the 10,000 keys, pipelined, each to its active node."""
    started = time.monotonic()
    requests = [(routed.holder(doc_key(i)), SET, doc_key(i), struct.pack(">II", FLAGS, 0), doc_value(i))
                for i in range(NUM_KEYS)]
    responses = routed.pipeline(requests)
    return {"requests": requests, "responses": responses, "seconds": time.monotonic() - started,
            "config": routed.config}


def current_config(routed: Routed) -> Dict[str, Any]:
    response = routed.conn(0).request(GET_CLUSTER_CONFIG)
    assert response.status == SUCCESS, response
    return with_host(response.value, routed.servers[0][0])


def stats(client: RawClient, group: bytes = b"") -> Dict[str, str]:
    opaque = client.send(STAT, group)
    out = {}
    while True:
        frame = client.recv()
        assert frame.opaque == opaque and frame.status == SUCCESS, frame
        if not frame.key:
            return out
        out[frame.key.decode()] = frame.value.decode()


# -------------------------------------------------------------------- tests


def test_cccp_bootstrap_gives_a_three_node_one_replica_map(cluster: MockCluster, cccp: Dict[str, Any],
                                                           seed: Tuple[str, int]) -> None:
    server_map = cccp["vBucketServerMap"]
    assert cccp["name"] == "default" and cccp["nodeLocator"] == "vbucket"
    assert "cccp" in cccp["bucketCapabilities"]
    assert server_map["hashAlgorithm"] == "CRC" and server_map["numReplicas"] == 1
    ports = sorted(int(s.rsplit(":", 1)[1]) for s in server_map["serverList"])
    assert ports == sorted(cluster.kv_ports("default")) and len(ports) == 3
    assert "%s:%d" % seed in server_map["serverList"]  # $HOST replaced by the seed's address
    vbmap = server_map["vBucketMap"]
    assert len(vbmap) & (len(vbmap) - 1) == 0 and len(vbmap) >= 64
    for row in vbmap:
        assert len(row) == 2 and row[0] != row[1] and set(row) <= {0, 1, 2}
    assert {row[0] for row in vbmap} == {0, 1, 2}  # every node is active for some vBuckets
    this_node = [n for n in cccp["nodesExt"] if n.get("thisNode")]
    assert len(this_node) == 1 and this_node[0]["services"]["kv"] == seed[1]
    assert len(cccp["nodesExt"]) == 3


def test_http_streaming_bootstrap_gives_the_same_config(stream: rawhttp.ConfigStream,
                                                        first_streamed: Dict[str, Any],
                                                        cccp: Dict[str, Any]) -> None:
    assert stream.status == 200 and stream.chunked
    # Same node serving both (mgmt and KV of node 0), same revision: the same config.
    assert first_streamed == cccp


def test_10000_keys_spread_over_every_node(written: Dict[str, Any], routed: Routed) -> None:
    per_node = Counter(index for index, *_ in written["requests"])
    assert sorted(per_node) == [0, 1, 2]
    for index in range(3):
        assert per_node[index] > NUM_KEYS // 5, per_node  # each node holds a fair share
    cas_values = set()
    for (_index, _op, key, _x, _v), response in zip(written["requests"], written["responses"]):
        assert (response.opcode, response.status) == (SET, SUCCESS), (key, response)
        assert len(response.extras) == 16  # mutation token (MutationSeqno negotiated)
        cas_values.add(response.cas)
    assert len(cas_values) == NUM_KEYS and 0 not in cas_values
    # The nodes agree: each counts exactly the documents of its active vBuckets.
    counted = {index: int(stats(routed.conn(index))["curr_items"]) for index in range(3)}
    assert counted == dict(per_node)
    assert sum(int(stats(routed.conn(i))["curr_items_tot"]) for i in range(3)) == 2 * NUM_KEYS


def test_10000_keys_read_back_pipelined(written: Dict[str, Any], routed: Routed) -> None:
    requests = [(routed.holder(doc_key(i)), GET, doc_key(i), b"", b"") for i in range(NUM_KEYS)]
    responses = routed.pipeline(requests)
    written_cas = {req[2]: resp.cas for req, resp in zip(written["requests"], written["responses"])}
    for i, response in enumerate(responses):
        assert response.status == SUCCESS, (i, response)
        assert response.value == doc_value(i) and response.extras == struct.pack(">I", FLAGS)
        assert response.datatype == 0x01 and response.cas == written_cas[doc_key(i)]


def test_a_wrong_node_refuses_with_not_my_vbucket(written: Dict[str, Any], routed: Routed) -> None:
    key = doc_key(7)
    wrong = next(i for i in range(len(routed.servers)) if i not in routed.vbmap[routed.vbucket(key)])
    response = routed.conn(wrong).request(GET, key, vbucket=routed.vbucket(key))
    assert response.status == NOT_MY_VBUCKET
    assert with_host(response.value)["vBucketServerMap"]["vBucketMap"] == routed.vbmap


def test_replica_read_from_the_replica_node_only(written: Dict[str, Any], routed: Routed) -> None:
    config = current_config(routed)
    reader = Routed()
    reader.apply(config)
    try:
        served = Counter()
        for i in range(0, NUM_KEYS, 37):
            key = doc_key(i)
            vb = reader.vbucket(key)
            active, replica = reader.vbmap[vb]
            got = reader.conn(replica).request(GET_REPLICA, key, vbucket=vb)
            assert (got.status, got.value, got.extras) == (SUCCESS, doc_value(i), struct.pack(">I", FLAGS)), got
            served[replica] += 1
            for other in range(len(reader.servers)):
                if other != replica:  # the active and the third node hold no replica of vb
                    refused = reader.conn(other).request(GET_REPLICA, key, vbucket=vb)
                    assert refused.status == NOT_MY_VBUCKET, (other, refused)
        assert len(served) == len(reader.servers)  # every node answered replica reads
    finally:
        reader.close()


def test_rebalance_shows_as_not_my_vbucket_with_a_newer_config(cluster: MockCluster, written: Dict[str, Any],
                                                                stream: rawhttp.ConfigStream,
                                                                first_streamed: Dict[str, Any]) -> None:
    old = Routed()
    old.apply(written["config"])
    try:
        old_rev = old.config["rev"]
        control = urlsplit(cluster.control_url)
        reply = rawhttp.post_json(control.hostname, control.port, control.path + "/add_node", {"rebalance": True})
        assert reply.status == 200, reply
        info = reply.json()
        new_port = info["nodes"][info["added"]]["ports"]["kv"]
        assert info["kv_ports"]["default"][-1] == new_port

        # A key whose vBucket moved, requested from its old active node.
        moved = None
        for i in range(NUM_KEYS):
            key = doc_key(i)
            response = old.conn(old.holder(key)).request(GET, key, vbucket=old.vbucket(key))
            if response.status == NOT_MY_VBUCKET:
                moved = (i, response)
                break
            assert response.status == SUCCESS and response.value == doc_value(i)
        assert moved is not None, "no vBucket changed hands"
        i, refusal = moved
        assert refusal.datatype & 0x01 and refusal.value
        newer = with_host(refusal.value, old.servers[old.holder(doc_key(i))][0])
        assert (newer["revEpoch"], newer["rev"]) > (old.config["revEpoch"], old_rev)
        servers = newer["vBucketServerMap"]["serverList"]
        assert len(servers) == 4 and "%s:%d" % (HOST, new_port) in servers

        # Apply it, resend: the document moved with its vBucket.
        assert old.apply(newer)
        retry = old.conn(old.holder(doc_key(i))).request(GET, doc_key(i), vbucket=old.vbucket(doc_key(i)))
        assert (retry.status, retry.value) == (SUCCESS, doc_value(i))

        # The HTTP stream delivers the newer config as well.
        streamed = first_streamed
        while len(streamed["vBucketServerMap"]["serverList"]) < 4:
            streamed = stream.next_config(HOST, timeout=10)
        assert streamed["rev"] >= newer["rev"] > old_rev
        assert streamed["vBucketServerMap"] == newer["vBucketServerMap"]

        # Every key is still there, and the new node serves its share.
        requests = [(old.holder(doc_key(n)), GET, doc_key(n), b"", b"") for n in range(NUM_KEYS)]
        responses = old.pipeline(requests)
        assert [r.status for r in responses] == [SUCCESS] * NUM_KEYS
        assert all(r.value == doc_value(n) for n, r in enumerate(responses))
        new_index = servers.index("%s:%d" % (HOST, new_port))
        assert sum(1 for req in requests if req[0] == new_index) > NUM_KEYS // 10
    finally:
        old.close()


def _capi(config: Dict[str, Any]) -> Tuple[str, int, str]:
    """(host, port, path prefix) of the first node's views service, from couchApiBase."""
    base = urlsplit(config["nodes"][0]["couchApiBase"])
    return base.hostname or HOST, base.port or 8092, base.path


def test_view_over_the_written_keys(written: Dict[str, Any], cccp: Dict[str, Any]) -> None:
    host, port, prefix = _capi(cccp)
    design = {"views": {
        "by_n": {"map": "function (doc, meta) { if (doc.type == 'fidelity') { emit(doc.n, doc.name); } }"},
        "count": {"map": "function (doc, meta) { if (doc.type == 'fidelity') { emit(meta.id, null); } }",
                  "reduce": "_count"}}}
    put = rawhttp.request(host, port, "PUT", prefix + "/_design/fidelity", json.dumps(design).encode(),
                          {"Content-Type": "application/json"}, ADMIN)
    assert put.status == 201 and put.json() == {"ok": True, "id": "_design/fidelity"}, put
    query = rawhttp.request(host, port, "GET", prefix + "/_design/fidelity/_view/by_n?startkey=100&endkey=109"
                            "&inclusive_end=true&stale=false", auth=ADMIN)
    assert query.status == 200, query
    body = query.json()
    assert body["total_rows"] == NUM_KEYS
    assert body["rows"] == [{"id": doc_key(n).decode(), "key": n, "value": "user-%05d" % n} for n in range(100, 110)]
    # Another node's views service answers for the whole bucket too.
    other = urlsplit(cccp["nodes"][2]["couchApiBase"])
    counted = rawhttp.request(other.hostname or HOST, other.port or 8092, "GET",
                              other.path + "/_design/fidelity/_view/count?stale=false", auth=ADMIN)
    assert counted.status == 200 and counted.json()["rows"] == [{"key": None, "value": NUM_KEYS}], counted


def _query_port(config: Dict[str, Any]) -> int:
    ports = [n["services"]["n1ql"] for n in config["nodesExt"] if "n1ql" in n["services"]]
    assert ports, "no node runs the query service"
    return ports[-1]


def test_n1ql_select_with_where_and_positional_parameter(written: Dict[str, Any], cccp: Dict[str, Any]) -> None:
    port = _query_port(cccp)
    created = rawhttp.post_json(HOST, port, "/query/service",
                                {"statement": "CREATE PRIMARY INDEX ON `default`"}, ADMIN)
    assert created.status == 200 and created.json()["status"] == "success", created
    select = ("SELECT META(d).id AS id, d.n, d.name FROM `default` AS d "
              "WHERE d.type = 'fidelity' AND d.n >= $1 AND d.n < $1 + 5 ORDER BY d.n")
    result = rawhttp.post_json(HOST, port, "/query/service", {"statement": select, "args": [4200]}, ADMIN)
    assert result.status == 200, result
    body = result.json()
    assert body["status"] == "success" and "errors" not in body
    assert body["results"] == [{"id": doc_key(n).decode(), "n": n, "name": "user-%05d" % n}
                               for n in range(4200, 4205)]
    assert body["metrics"]["resultCount"] == 5
    # The same statement as a form body, the parameter form-encoded as JSON text.
    form = rawhttp.post_form(HOST, port, "/query/service", {"statement": select, "args": "[9998]"}, ADMIN)
    assert [row["n"] for row in form.json()["results"]] == [9998, 9999]


def test_design_document_path_is_url_safe(cccp: Dict[str, Any]) -> None:
    """couchApiBase carries ``bucket%2Buuid``; the encoded and decoded forms
    address the same bucket."""
    host, port, prefix = _capi(cccp)
    assert prefix == "/default%2B" + cccp["uuid"]
    decoded = "/" + quote("default+" + cccp["uuid"], safe="+")
    got = rawhttp.request(host, port, "GET", decoded + "/_design/missing", auth=ADMIN)
    assert got.status == 404 and got.json()["error"] == "not_found"

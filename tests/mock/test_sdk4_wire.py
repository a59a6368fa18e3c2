"""What the official 4.x SDKs (C++ core) need from the emulator, checked on the wire.

Each test sends the bytes or the HTTP request such an SDK sends and checks
the emulator's answer directly, with this suite's own small clients
(:mod:`tests.mock.rawclient`, :mod:`tests.mock.rawhttp`), so the behaviour is
pinned down even where the SDK itself is not installed
(``tests/test_official_sdk.py`` drives the SDK where it is):

* the bucket config offers ``subdoc.ReplicaRead`` (the SDK checks it before
  it sends a replica sub-document lookup), and replicas answer such lookups;
* ``GET /pools/default/buckets`` carries ``evictionPolicy`` and
  ``conflictResolutionType`` for every bucket (the SDK's parser requires
  both);
* ``$document`` has ``revid`` and ``vbucket_uuid``, HELLO grants
  SubdocCreateAsDeleted, and the CreateAsDeleted document flag creates a
  tombstone with xattrs (how transactions stage an insert);
* GET_CLUSTER_CONFIG on a memcached bucket is KEY_ENOENT, as on the server;
* every place that reports a version says the same 6.6 version, and the
  nodes offer no collections, as 6.6 does not.
"""

from __future__ import annotations

import json
import struct
from typing import Dict, Iterator, List, Tuple

import pytest

from couchbase_core.mock import MockCluster
from tests.mock import rawhttp
from tests.mock.rawclient import ALL_FEATURES, ClusterClients, RawClient, Response

HOST = "127.0.0.1"
ADMIN = ("Administrator", "password")

# opcodes
ADD, GET, VERSION, STAT, GET_META, GET_CLUSTER_CONFIG = 0x02, 0x00, 0x0B, 0x10, 0xA0, 0xB5
SET = 0x01
MULTI_LOOKUP, MULTI_MUTATION = 0xD0, 0xD1
# sub-document
SD_GET, SD_DICT_UPSERT = 0xC5, 0xC8
PATH_XATTR, PATH_MKDIR_P = 0x04, 0x01
DOC_MKDOC, DOC_ADD, DOC_ACCESS_DELETED, DOC_CREATE_AS_DELETED, DOC_REPLICA_READ = 0x01, 0x02, 0x04, 0x08, 0x20
# statuses
SUCCESS, KEY_ENOENT, KEY_EEXISTS, EINVAL, NOT_MY_VBUCKET = 0x00, 0x01, 0x02, 0x04, 0x07
SUBDOC_SUCCESS_DELETED, SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE = 0xCD, 0xD7
# HELLO features
F_COLLECTIONS, F_VATTR, F_SUBDOC_CREATE_AS_DELETED, F_SUBDOC_REPLICA_READ = 0x12, 0x15, 0x17, 0x1C

EXPECTED_VERSION = "6.6.0-mock"


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=3, replicas=1, buckets=["default", "mc:memcached"]) as running:
        yield running


@pytest.fixture(scope="module")
def clients(cluster: MockCluster) -> Iterator[ClusterClients]:
    nodes = ClusterClients(cluster.kv_ports("default"), "default")
    nodes.load_map()
    yield nodes
    nodes.close()


def connect(port: int, bucket: str, features: Tuple[int, ...] = ALL_FEATURES) -> RawClient:
    client = RawClient(HOST, port)
    client.hello(features)
    client.auth(*ADMIN)
    client.select(bucket)
    return client


def lookup_spec(opcode: int, flags: int, path: bytes) -> bytes:
    return struct.pack(">BBH", opcode, flags, len(path)) + path


def mutation_spec(opcode: int, flags: int, path: bytes, value: bytes) -> bytes:
    return struct.pack(">BBHI", opcode, flags, len(path), len(value)) + path + value


def lookup_results(response: Response) -> List[Tuple[int, bytes]]:
    """The (status, value) of each spec of a MULTI_LOOKUP response."""
    out, pos, body = [], 0, response.value
    while pos < len(body):
        status, size = struct.unpack_from(">HI", body, pos)
        out.append((status, body[pos + 6:pos + 6 + size]))
        pos += 6 + size
    return out


def document_vattr(client: RawClient, key: bytes, vbucket: int, doc_flags: int = 0) -> Dict[str, object]:
    response = client.request(MULTI_LOOKUP, key=key, extras=bytes([doc_flags]) if doc_flags else b"",
                              value=lookup_spec(SD_GET, PATH_XATTR, b"$document"), vbucket=vbucket)
    assert response.status in (SUCCESS, SUBDOC_SUCCESS_DELETED), response
    (status, value), = lookup_results(response)
    assert status == SUCCESS
    return json.loads(value)


# ----------------------------------------------------- replica sub-document reads


def test_bucket_config_offers_replica_subdoc_reads(clients: ClusterClients, cluster: MockCluster) -> None:
    assert "subdoc.ReplicaRead" in clients.nodes[0].config()["bucketCapabilities"]
    terse = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default/b/mc", auth=ADMIN).json()
    assert "subdoc.ReplicaRead" not in terse["bucketCapabilities"]  # no sub-documents on memcached buckets


def test_replica_answers_a_lookup_flagged_replica_read(clients: ClusterClients) -> None:
    key = b"sdk4-replica-lookup"
    active, vb = clients.active(key)
    assert active.request(SET, key=key, extras=struct.pack(">II", 0, 0), value=b'{"city":"Oslo"}',
                          vbucket=vb, datatype=0x01).status == SUCCESS
    replica = clients.nodes[clients.node_of(key, copy=1)]
    spec = lookup_spec(SD_GET, 0, b"city")
    flagged = replica.request(MULTI_LOOKUP, key=key, extras=bytes([DOC_REPLICA_READ]), value=spec, vbucket=vb)
    assert flagged.status == SUCCESS and lookup_results(flagged) == [(SUCCESS, b'"Oslo"')]
    plain = replica.request(MULTI_LOOKUP, key=key, value=spec, vbucket=vb)
    assert plain.status == NOT_MY_VBUCKET  # without the flag a replica does not answer


def test_hello_grants_the_6_6_subdoc_features_but_not_collections(cluster: MockCluster) -> None:
    client = RawClient(HOST, cluster.kv_ports("default")[0])
    try:
        granted = client.hello((F_COLLECTIONS, F_VATTR, F_SUBDOC_CREATE_AS_DELETED, F_SUBDOC_REPLICA_READ))
    finally:
        client.close()
    assert granted == [F_VATTR, F_SUBDOC_CREATE_AS_DELETED, F_SUBDOC_REPLICA_READ]


# ----------------------------------------------------------- bucket settings


def test_every_listed_bucket_has_eviction_and_conflict_resolution(cluster: MockCluster) -> None:
    listed = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default/buckets", auth=ADMIN)
    assert listed.status == 200
    settings = {b["name"]: (b["evictionPolicy"], b["conflictResolutionType"]) for b in listed.json()}
    assert settings["default"] == ("valueOnly", "seqno")
    assert settings["mc"][1] == "seqno" and isinstance(settings["mc"][0], str)
    one = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default/buckets/default", auth=ADMIN).json()
    assert (one["evictionPolicy"], one["conflictResolutionType"]) == ("valueOnly", "seqno")


def test_created_bucket_keeps_its_eviction_policy_and_rejects_a_wrong_one(cluster: MockCluster) -> None:
    created = rawhttp.post_form(HOST, cluster.http_port, "/pools/default/buckets",
                                {"name": "eph", "bucketType": "ephemeral", "ramQuotaMB": 100,
                                 "evictionPolicy": "nruEviction", "conflictResolutionType": "lww"}, auth=ADMIN)
    assert created.status == 202, created
    got = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default/buckets/eph", auth=ADMIN).json()
    assert (got["bucketType"], got["evictionPolicy"], got["conflictResolutionType"]) == (
        "ephemeral", "nruEviction", "lww")
    refused = rawhttp.post_form(HOST, cluster.http_port, "/pools/default/buckets",
                                {"name": "bad", "ramQuotaMB": 100, "evictionPolicy": "noEviction"}, auth=ADMIN)
    assert refused.status == 400 and "evictionPolicy" in refused.json()["errors"]


# ------------------------------------------------- what transactions build on


def test_document_vattr_has_revid_and_vbucket_uuid(clients: ClusterClients) -> None:
    key = b"sdk4-revid"
    active, vb = clients.active(key)
    stored = active.request(SET, key=key, extras=struct.pack(">II", 0, 0), value=b'{"n":1}', vbucket=vb)
    vbucket_uuid, seqno = struct.unpack(">QQ", stored.extras)  # the mutation token
    doc = document_vattr(active, key, vb)
    assert doc["vbucket_uuid"] == "0x%016x" % vbucket_uuid
    assert doc["seqno"] == "0x%016x" % seqno
    meta = active.request(GET_META, key=key, vbucket=vb)
    rev_seqno = struct.unpack(">IIIQ", meta.extras)[3]
    assert doc["revid"] == str(rev_seqno)  # the revision GET_META reports, as a decimal string
    active.request(SET, key=key, extras=struct.pack(">II", 0, 0), value=b'{"n":2}', vbucket=vb)
    assert int(document_vattr(active, key, vb)["revid"]) > rev_seqno


def test_create_as_deleted_stages_a_tombstone_with_xattrs(clients: ClusterClients) -> None:
    key = b"sdk4-staged-insert"
    active, vb = clients.active(key)
    staged = mutation_spec(SD_DICT_UPSERT, PATH_XATTR | PATH_MKDIR_P, b"txn.id", b'"attempt-1"')
    flags = DOC_ADD | DOC_ACCESS_DELETED | DOC_CREATE_AS_DELETED
    created = active.request(MULTI_MUTATION, key=key, extras=bytes([flags]), value=staged, vbucket=vb)
    assert created.status == SUBDOC_SUCCESS_DELETED, created
    assert active.request(GET, key=key, vbucket=vb).status == KEY_ENOENT  # invisible to readers
    seen = active.request(MULTI_LOOKUP, key=key, extras=bytes([DOC_ACCESS_DELETED]), vbucket=vb,
                          value=lookup_spec(SD_GET, PATH_XATTR, b"txn.id")
                          + lookup_spec(SD_GET, PATH_XATTR, b"$document.deleted"))
    assert seen.status == SUBDOC_SUCCESS_DELETED
    assert lookup_results(seen) == [(SUCCESS, b'"attempt-1"'), (SUCCESS, b"true")]
    # committing the insert: a plain ADD over the tombstone makes it a live document
    assert active.request(ADD, key=key, extras=struct.pack(">II", 0, 0), value=b'{"v":1}',
                          vbucket=vb).status == SUCCESS
    assert active.request(GET, key=key, vbucket=vb).value == b'{"v":1}'


def test_create_as_deleted_rules(clients: ClusterClients) -> None:
    key = b"sdk4-create-as-deleted-rules"
    active, vb = clients.active(key)
    xattr = mutation_spec(SD_DICT_UPSERT, PATH_XATTR | PATH_MKDIR_P, b"txn.id", b'"x"')
    body = mutation_spec(SD_DICT_UPSERT, 0, b"field", b"1")

    def mutate(flags: int, specs: bytes) -> int:
        return active.request(MULTI_MUTATION, key=key, extras=bytes([flags]), value=specs, vbucket=vb).status

    assert mutate(DOC_ACCESS_DELETED | DOC_CREATE_AS_DELETED, xattr) == EINVAL  # needs MKDOC or ADD
    assert mutate(DOC_ADD | DOC_ACCESS_DELETED | DOC_CREATE_AS_DELETED, xattr + body) == \
        SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE  # a tombstone has no body
    assert active.request(SET, key=key, extras=struct.pack(">II", 0, 0), value=b"{}", vbucket=vb).status == 0
    assert mutate(DOC_ADD | DOC_ACCESS_DELETED | DOC_CREATE_AS_DELETED, xattr) == KEY_EEXISTS
    assert mutate(DOC_MKDOC | DOC_CREATE_AS_DELETED, body) == SUCCESS  # a live document stays live
    assert active.request(GET, key=key, vbucket=vb).value == b'{"field":1}'


# ------------------------------------------------------------ memcached buckets


def test_get_cluster_config_on_a_memcached_bucket_is_key_enoent(cluster: MockCluster) -> None:
    client = connect(cluster.kv_ports("mc")[0], "mc")
    try:
        assert client.request(GET_CLUSTER_CONFIG).status == KEY_ENOENT
    finally:
        client.close()


# ------------------------------------------------------------------- versions


def stat_version(client: RawClient) -> str:
    client.send(STAT)
    found = ""
    while True:
        response = client.recv()
        if not response.key:
            return found
        if response.key == b"version":
            found = response.value.decode()


def test_every_version_report_is_the_same_6_6_version(cluster: MockCluster) -> None:
    pools = rawhttp.request(HOST, cluster.http_port, "GET", "/pools", auth=ADMIN).json()
    default_pool = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default", auth=ADMIN).json()
    bucket = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default/buckets/default", auth=ADMIN).json()
    reported = {pools["implementationVersion"]}
    reported |= {node["version"] for node in default_pool["nodes"] + bucket["nodes"]}
    for port in cluster.kv_ports("default"):
        client = connect(port, "default")
        try:
            reported.add(client.request(VERSION).value.decode())
            reported.add(stat_version(client))
        finally:
            client.close()
    assert reported == {EXPECTED_VERSION}
    assert {node["clusterCompatibility"] for node in default_pool["nodes"]} == {6 * 0x10000 + 6}
    # ... and nothing says collections, which 6.6 does not have
    assert "collections" not in bucket["bucketCapabilities"]
    mc = connect(cluster.kv_ports("mc")[0], "mc")
    try:
        assert mc.request(VERSION).value == b"1.6.18"  # a memcached bucket answers as memcached
    finally:
        mc.close()

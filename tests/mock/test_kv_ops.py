"""The emulator's data commands, checked on the wire with a raw socket client.

A three-node cluster runs in-process with a Couchbase bucket (one replica),
a memcached bucket and an ephemeral bucket; a one-node cluster serves the
"durability impossible" cases. Memcached-bucket answers are also compared
byte for byte (CAS aside) with a real memcached 1.6.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import time
from typing import Iterator, List, Optional, Tuple

import pytest

from couchbase_core.mock import proto
from couchbase_core.mock.inprocess import ThreadedMock
from couchbase_core.mock.runtime import BucketOptions, ClusterOptions
from couchbase_core.testing.memcached import MemcachedServer
from tests.mock.rawclient import (
    F_ALT_REQUEST,
    F_JSON,
    F_SELECT_BUCKET,
    F_SNAPPY,
    F_SYNC_REPLICATION,
    F_XERROR,
    Closed,
    ClusterClients,
    RawClient,
    Response,
    durability_frame,
)

GET, SET, ADD, REPLACE, DELETE, INCR, DECR = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
FLUSH, GETQ, NOOP, GETK, GETKQ, APPEND, PREPEND, STAT = 0x08, 0x09, 0x0A, 0x0C, 0x0D, 0x0E, 0x0F, 0x10
SETQ, ADDQ, DELETEQ, INCRQ, FLUSHQ, APPENDQ = 0x11, 0x12, 0x14, 0x15, 0x18, 0x19
TOUCH, GAT, GATQ = 0x1C, 0x1D, 0x1E
GET_REPLICA, OBSERVE_SEQNO, OBSERVE, GET_LOCKED, UNLOCK, GET_META = 0x83, 0x91, 0x92, 0x94, 0x95, 0xA0
SD_GET, SD_EXISTS, SD_DICT_ADD, SD_UPSERT, SD_DELETE, SD_REPLACE = 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA
SD_PUSH_LAST, SD_COUNTER, SD_MULTI_LOOKUP, SD_MULTI_MUTATION, SD_GET_COUNT = 0xCB, 0xCF, 0xD0, 0xD1, 0xD2
LOCKED_CAS = 0xFFFFFFFFFFFFFFFF
LEGACY = (F_SELECT_BUCKET,)

_names = itertools.count()


def fresh(prefix: str = "k") -> bytes:
    """A key no other test uses."""
    return ("%s-%d" % (prefix, next(_names))).encode()


def store_extras(flags: int = 0, expiry: int = 0) -> bytes:
    return struct.pack(">II", flags, expiry)


def arith_extras(delta: int, initial: int = 0, expiry: int = 0) -> bytes:
    return struct.pack(">QQI", delta, initial, expiry)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def mock() -> Iterator[ThreadedMock]:
    options = ClusterOptions(nodes=3, buckets=[BucketOptions("default"), BucketOptions("mc", "memcached"),
                                               BucketOptions("eph", "ephemeral")])
    with ThreadedMock(options) as running:
        yield running


def kv_ports(mock: ThreadedMock) -> List[int]:
    return [node["ports"]["kv"] for node in mock.info["nodes"]]


@pytest.fixture(scope="module")
def cb(mock: ThreadedMock) -> Iterator[ClusterClients]:
    """Every node, all features (XERROR, mutation tokens, JSON, XATTR, durability)."""
    clients = ClusterClients(kv_ports(mock), "default")
    clients.load_map()
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def old(mock: ThreadedMock, cb: ClusterClients) -> Iterator[ClusterClients]:
    """Every node, as a 2.x-era client without XERROR / tokens / JSON sees it."""
    clients = ClusterClients(kv_ports(mock), "default", features=LEGACY)
    clients.vbmap, clients.server_nodes = cb.vbmap, cb.server_nodes
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def mc(mock: ThreadedMock) -> Iterator[ClusterClients]:
    """Every node of the memcached bucket, no HELLO features (like a memcached client)."""
    clients = ClusterClients(kv_ports(mock), "mc", features=())
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def solo() -> Iterator[ThreadedMock]:
    """One node, one replica configured: majority durability is impossible."""
    with ThreadedMock(ClusterOptions(nodes=1, buckets=[BucketOptions("default")])) as running:
        yield running


@pytest.fixture(scope="module")
def memcached() -> Iterator[MemcachedServer]:
    server = MemcachedServer().start()
    yield server
    server.kill()


@contextlib.contextmanager
def lags(mock: ThreadedMock, persist: float = 0.0, replicate: float = 0.0) -> Iterator[None]:
    """Set the cluster's persistence / replication lags for a block."""
    def set_lags(app, p: float, r: float) -> None:  # type: ignore[no-untyped-def]
        app.cluster.persist_delay, app.cluster.replicate_delay = p, r

    mock.call(lambda app: set_lags(app, persist, replicate))
    try:
        yield
    finally:
        mock.call(lambda app: set_lags(app, 0.0, 0.0))


def advance(mock: ThreadedMock, seconds: float) -> None:
    mock.call(lambda app: app.cluster.clock.advance(seconds))


def wait_sync_write_pending(mock: ThreadedMock, key: bytes, timeout: float = 30.0) -> None:
    """Wait until the emulator holds a durable write of ``key`` (it got the
    request), instead of sleeping and hoping it did."""
    from couchbase_core.mock import kvops

    deadline = time.monotonic() + timeout
    while not mock.call(lambda app: any(key in keys for keys in list(kvops._PENDING.values()))):
        assert time.monotonic() < deadline, "the durable write of %r never arrived" % key
        time.sleep(0.005)


def op(cc: ClusterClients, opcode: int, key: bytes, extras: bytes = b"", value: bytes = b"", copy: int = 0,
       node: Optional[int] = None, **kw: object) -> Response:
    """One request for ``key``, sent to the node holding copy ``copy`` (or ``node``)."""
    index = cc.node_of(key, copy) if node is None else node
    return cc.nodes[index].request(opcode, key, extras, value, vbucket=cc.vbucket(key), **kw)


def upsert(cc: ClusterClients, key: bytes, value: bytes = b"v", flags: int = 0, expiry: int = 0,
           **kw: object) -> Response:
    response = op(cc, SET, key, store_extras(flags, expiry), value, **kw)
    assert response.status == 0, response
    return response


def token(response: Response) -> Tuple[int, int]:
    assert len(response.extras) == 16, response
    return struct.unpack(">QQ", response.extras)  # type: ignore[return-value]


# ------------------------------------------------------------ GET and SET


def test_set_get_flags_cas_and_json_datatype(cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    stored = upsert(cb, key, b'{"a": [1, 2]}', flags=0x02000006)
    got = op(cb, GET, key)
    assert (got.status, got.extras, got.value, got.cas) == (0, b"\x02\x00\x00\x06", b'{"a": [1, 2]}', stored.cas)
    assert got.datatype == proto.DT_JSON and got.key == b""
    assert op(old, GET, key).datatype == 0  # JSON not negotiated: the bit is not sent
    upsert(cb, key, b"not json")
    assert op(cb, GET, key).datatype == 0
    for text in (b"123", b' "s" ', b"null", b"[]"):
        upsert(cb, key, text)
        assert op(cb, GET, key).datatype == proto.DT_JSON, text
    for text in (b"NaN", b"{'a':1}", b"\xff", b"[1,]"):
        upsert(cb, key, text)
        assert op(cb, GET, key).datatype == 0, text


def test_getk_and_misses(cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    miss = op(cb, GET, key)
    assert (miss.status, miss.value, miss.extras, miss.cas) == (proto.KEY_ENOENT, b"", b"", 0)
    assert op(old, GET, key).value == b""  # kv_engine: no message without context
    kmiss = op(cb, GETK, key)
    assert (kmiss.status, kmiss.key, kmiss.value) == (proto.KEY_ENOENT, key, b"")
    upsert(cb, key, b"x", flags=7)
    hit = op(cb, GETK, key)
    assert (hit.status, hit.key, hit.value, hit.extras) == (0, key, b"x", b"\x00\x00\x00\x07")


def test_mutation_tokens(cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    uuid1, seq1 = token(upsert(cb, key))
    uuid2, seq2 = token(upsert(cb, key))
    assert uuid1 == uuid2 and seq2 == seq1 + 1
    # OBSERVE_SEQNO has no key: it is routed by the vBucket in the header
    result = cb.nodes[cb.node_of(key)].request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid1),
                                               vbucket=cb.vbucket(key))
    fmt, vb, uuid, persisted, current = struct.unpack(">BHQQQ", result.value)
    assert (fmt, vb, uuid, current) == (0, cb.vbucket(key), uuid1, seq2)
    assert upsert(old, key).extras == b""  # no tokens without MUTATION_SEQNO
    other = fresh()
    upsert(cb, other)
    for opcode, extras, value in ((APPEND, b"", b"+"), (PREPEND, b"", b"-"), (INCR, arith_extras(1, 1), b""),
                                  (DELETE, b"", b"")):
        target = fresh() if opcode == INCR else other
        response = op(cb, opcode, target, extras, value)
        assert response.status == 0 and token(response)[0] == cb_uuid(cb, target), (opcode, response)


def cb_uuid(cc: ClusterClients, key: bytes) -> int:
    stats = stat(cc.nodes[cc.node_of(key)], b"vbucket-seqno %d" % cc.vbucket(key))
    return int(stats["vb_%d:uuid" % cc.vbucket(key)])


def test_add_replace_and_cas(cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    assert op(cb, REPLACE, key, store_extras(), b"x").status == proto.KEY_ENOENT
    assert op(cb, SET, key, store_extras(), b"x", cas=1234).status == proto.KEY_ENOENT
    added = op(cb, ADD, key, store_extras(), b"a")
    assert added.status == 0 and added.cas
    again = op(cb, ADD, key, store_extras(), b"b")
    assert (again.status, again.value, again.extras) == (proto.KEY_EEXISTS, b"", b"")
    assert op(cb, ADD, fresh(), store_extras(), b"b", cas=5).status == proto.EINVAL
    assert op(cb, SET, key, store_extras(), b"c", cas=added.cas + 1).status == proto.KEY_EEXISTS
    replaced = op(cb, REPLACE, key, store_extras(), b"d", cas=added.cas)
    assert replaced.status == 0 and replaced.cas != added.cas
    assert op(cb, GET, key).value == b"d"
    assert op(old, SET, key, store_extras(), b"e", cas=added.cas).status == proto.KEY_EEXISTS


def test_key_and_shape_validation(cb: ClusterClients) -> None:
    client = cb.nodes[0]
    assert client.request(GET, b"").status == proto.EINVAL
    long_key = b"k" * 251
    assert op(cb, GET, long_key).status == proto.EINVAL
    assert op(cb, SET, long_key, store_extras(), b"v").status == proto.EINVAL
    key = b"k" * 250
    assert op(cb, SET, key, store_extras(), b"v").status == 0
    assert op(cb, SET, fresh(), b"", b"v").status == proto.EINVAL  # no extras
    assert op(cb, GET, key, b"xx").status == proto.EINVAL
    assert op(cb, DELETE, fresh(), b"", b"value").status == proto.EINVAL
    assert op(cb, GET, key, datatype=proto.DT_JSON).status == proto.EINVAL
    assert op(cb, GET, key).status == 0  # a Couchbase node keeps the connection after EINVAL


def test_value_limits(cb: ClusterClients, mc: ClusterClients) -> None:
    key = fresh()
    limit = 20 * 1024 * 1024
    assert op(cb, SET, key, store_extras(), b"x" * (limit + 1)).status == proto.E2BIG
    assert op(cb, SET, key, store_extras(), b"x" * limit).status == 0
    assert op(cb, APPEND, key, b"", b"y").status == proto.E2BIG
    assert op(cb, SET, key, store_extras(), b"small").status == 0
    node = mc.nodes[0]
    # memcached: 48-byte header + 8 CAS + key + NUL + (4 flag bytes if non-zero) + value + CRLF <= 1 MiB
    fits = 1024 * 1024 - 59 - 3
    assert node.request(SET, b"big", store_extras(), b"x" * fits).status == 0
    too_big = node.request(SET, b"big", store_extras(), b"x" * (fits + 1))
    assert (too_big.status, too_big.value) == (proto.E2BIG, b"Too large.")
    assert node.request(GET, b"big").status == proto.KEY_ENOENT  # a too-large SET drops the old copy
    assert node.request(SET, b"big", store_extras(1), b"x" * (fits - 4)).status == 0
    assert node.request(SET, b"big", store_extras(1), b"x" * (fits - 3)).status == proto.E2BIG


# ----------------------------------------------------------- quiet commands


def keys_on(cc: ClusterClients, node: int, count: int, prefix: str = "k") -> List[bytes]:
    """``count`` fresh keys whose active copy is on ``node``."""
    out: List[bytes] = []
    while len(out) < count:
        key = fresh(prefix)
        if cc.node_of(key) == node:
            out.append(key)
    return out


def test_quiet_commands_and_noop_fence(cb: ClusterClients) -> None:
    key, missing, counter, absent = keys_on(cb, 0, 4)
    upsert(cb, key, b"v", flags=3)
    client = cb.nodes[0]

    def send(opcode: int, target: bytes, extras: bytes = b"", value: bytes = b"") -> int:
        return client.send(opcode, target, extras, value, vbucket=cb.vbucket(target))

    send(SETQ, key, store_extras(), b"v2")              # success: silent
    failing = send(ADDQ, key, store_extras(), b"v3")    # errors are always sent
    hit = send(GETKQ, key)                              # hits are sent
    send(GETQ, missing)                                 # misses: silent
    send(GETKQ, missing)
    send(APPENDQ, key, b"", b"!")
    not_found = send(DELETEQ, absent)
    send(INCRQ, counter, arith_extras(1, 10))
    send(GATQ, missing, struct.pack(">I", 0))
    replies = client.until_noop()
    assert [(r.opaque, r.opcode, r.status) for r in replies[:-1]] == [
        (failing, ADDQ, proto.KEY_EEXISTS), (hit, GETKQ, 0), (not_found, DELETEQ, proto.KEY_ENOENT)]
    assert (replies[1].key, replies[1].value, replies[1].extras) == (key, b"v2", b"\x00\x00\x00\x00")
    assert op(cb, GET, key).value == b"v2!"
    assert op(cb, GET, counter).value == b"10"


def test_quiet_multi_get_pattern(cb: ClusterClients) -> None:
    keys = keys_on(cb, 1, 6, "q")
    stored, absent = keys[:4], keys[4:]
    client = cb.nodes[1]
    for key in stored:
        client.send(SETQ, key, store_extras(), key, vbucket=cb.vbucket(key))
    for key in keys:
        client.send(GETKQ, key, vbucket=cb.vbucket(key))
    replies = client.until_noop()
    assert [(r.opcode, r.status, r.key, r.value) for r in replies] == (
        [(GETKQ, 0, k, k) for k in stored] + [(NOOP, 0, b"", b"")])
    assert absent


# ------------------------------------------------------------------ DELETE


def test_delete(cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    assert op(cb, DELETE, key).status == proto.KEY_ENOENT
    stored = upsert(cb, key)
    assert op(cb, DELETE, key, cas=stored.cas + 1).status == proto.KEY_EEXISTS
    deleted = op(cb, DELETE, key, cas=stored.cas)
    assert deleted.status == 0 and deleted.cas not in (0, stored.cas)
    assert op(cb, GET, key).status == proto.KEY_ENOENT
    assert op(cb, ADD, key, store_extras(), b"back").status == 0
    assert op(old, DELETE, key).extras == b""


# ---------------------------------------------------------------- counters


def test_counters(cb: ClusterClients) -> None:
    key = fresh()
    assert op(cb, INCR, key, arith_extras(1, 5, 0xFFFFFFFF)).status == proto.KEY_ENOENT
    created = op(cb, INCR, key, arith_extras(1, 5))
    assert (created.status, created.value) == (0, struct.pack(">Q", 5))
    assert op(cb, INCR, key, arith_extras(10, 99)).value == struct.pack(">Q", 15)
    got = op(cb, GET, key)
    assert (got.value, got.datatype, got.extras) == (b"15", proto.DT_JSON, b"\x00\x00\x00\x00")
    assert op(cb, DECR, key, arith_extras(100)).value == struct.pack(">Q", 0)  # floors at zero
    assert op(cb, GET, key).value == b"0"
    upsert(cb, key, b"18446744073709551615", flags=9)
    assert op(cb, INCR, key, arith_extras(2)).value == struct.pack(">Q", 1)  # wraps at 2**64
    assert op(cb, GET, key).extras == b"\x00\x00\x00\x09"  # flags kept
    for bad in (b"abc", b"-5", b"12x", b"", b"18446744073709551616"):
        upsert(cb, key, bad)
        response = op(cb, INCR, key, arith_extras(1))
        assert response.status == proto.DELTA_BADVAL, bad
    upsert(cb, key, b" 41 ")
    assert op(cb, INCR, key, arith_extras(1)).value == struct.pack(">Q", 42)
    stale = op(cb, GET, key).cas
    upsert(cb, key, b"1")
    assert op(cb, INCR, key, arith_extras(1), cas=stale).status == proto.KEY_EEXISTS
    assert op(cb, INCR, fresh(), arith_extras(1, 1), cas=77).status == proto.KEY_ENOENT


# --------------------------------------------------------- APPEND / PREPEND


def test_append_prepend(cb: ClusterClients) -> None:
    key = fresh()
    assert op(cb, APPEND, key, b"", b"x").status == proto.NOT_STORED
    assert op(cb, PREPEND, key, b"", b"x").status == proto.NOT_STORED
    stored = upsert(cb, key, b"mid", flags=4, expiry=1000)
    assert op(cb, APPEND, key, b"", b"-end", cas=stored.cas + 1).status == proto.KEY_EEXISTS
    assert op(cb, APPEND, key, b"", b"-end", cas=stored.cas).status == 0
    assert op(cb, PREPEND, key, b"", b"start-").status == 0
    got = op(cb, GET, key)
    assert (got.value, got.extras) == (b"start-mid-end", b"\x00\x00\x00\x04")
    meta = op(cb, GET_META, key)
    assert struct.unpack(">IIIQ", meta.extras)[2] != 0  # expiry kept


# ----------------------------------------------- expiry, TOUCH, GAT, clock


def test_expiry_follows_the_cluster_clock(mock: ThreadedMock, cb: ClusterClients) -> None:
    short, touched, gat, past = fresh(), fresh(), fresh(), fresh()
    upsert(cb, short, expiry=10)
    upsert(cb, touched)
    upsert(cb, gat, b"gat-value", flags=5)
    assert op(cb, SET, past, store_extras(0, 30 * 24 * 3600 + 1), b"v").status == 0  # absolute, long gone
    assert op(cb, GET, past).status == proto.KEY_ENOENT
    before = op(cb, GET, touched).cas
    t = op(cb, TOUCH, touched, struct.pack(">I", 10))
    assert (t.status, t.extras, t.value) == (0, b"", b"") and t.cas != before
    g = op(cb, GAT, gat, struct.pack(">I", 10))
    assert (g.status, g.extras, g.value) == (0, b"\x00\x00\x00\x05", b"gat-value")
    assert op(cb, TOUCH, fresh(), struct.pack(">I", 10)).status == proto.KEY_ENOENT
    assert op(cb, GAT, fresh(), struct.pack(">I", 10)).status == proto.KEY_ENOENT
    assert op(cb, GET, short).status == 0
    advance(mock, 11)
    for key in (short, touched, gat):
        assert op(cb, GET, key).status == proto.KEY_ENOENT, key


# ------------------------------------------------------------------- FLUSH


def test_flush(mock: ThreadedMock, cb: ClusterClients, mc: ClusterClients) -> None:
    assert cb.nodes[0].request(FLUSH).status == proto.NOT_SUPPORTED
    assert cb.nodes[0].request(FLUSHQ).status == proto.NOT_SUPPORTED
    a, b = mc.nodes[0], mc.nodes[1]
    a.request(SET, b"flush-me", store_extras(), b"a")
    b.request(SET, b"flush-me", store_extras(), b"b")
    assert a.request(FLUSH).status == 0
    assert a.request(GET, b"flush-me").status == proto.KEY_ENOENT
    assert b.request(GET, b"flush-me").value == b"b"  # memcached nodes are independent caches
    a.request(SET, b"later", store_extras(), b"x")
    a.send(FLUSHQ)
    assert [r.opcode for r in a.until_noop()] == [NOOP]
    a.request(SET, b"later", store_extras(), b"x")
    assert a.request(FLUSH, extras=struct.pack(">I", 5)).status == 0  # delayed flush
    assert a.request(GET, b"later").status == 0
    advance(mock, 6)
    assert a.request(GET, b"later").status == proto.KEY_ENOENT


# -------------------------------------------------------------------- STAT


def stat_frames(client: RawClient, group: bytes = b"", vbucket: int = 0) -> List[Response]:
    opaque = client.send(STAT, group, vbucket=vbucket)
    frames = []
    while True:
        frame = client.recv()
        assert frame.opaque == opaque
        frames.append(frame)
        if frame.status != 0 or not frame.key:
            return frames


def stat(client: RawClient, group: bytes = b"") -> dict:
    frames = stat_frames(client, group)
    assert frames[-1].status == 0 and frames[-1].key == b"" and frames[-1].value == b"", frames[-1]
    return {f.key.decode(): f.value.decode() for f in frames[:-1]}


def test_stat_groups(cb: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key)
    node = cb.node_of(key)
    client = cb.nodes[node]
    general = stat(client)
    for name in ("pid", "version", "uptime", "time", "curr_items", "curr_items_tot", "cmd_get"):
        assert name in general, name
    assert int(general["curr_items"]) >= 1 and abs(int(general["time"]) - time.time()) < 10 ** 6
    assert "maxconns" in stat(client, b"settings")
    assert "mem_used" in stat(client, b"memory")
    assert stat(client, b"uuid")["uuid"] == client.config()["uuid"]
    vbuckets = stat(client, b"vbucket")
    me = cb.server_nodes.index(node)
    for vb, row in enumerate(cb.vbmap):
        expected = "active" if row[0] == me else "replica" if me in row[1:] else None
        assert vbuckets.get("vb_%d" % vb) == expected, vb
    vb = cb.vbucket(key)
    seqnos = stat(client, b"vbucket-seqno %d" % vb)
    assert int(seqnos["vb_%d:high_seqno" % vb]) >= 1 and "vb_%d:uuid" % vb in seqnos
    assert int(stat(client, b"failovers %d" % vb)["vb_%d:num_entries" % vb]) >= 1
    assert stat_frames(cb.nodes[cb.other_node(key)], b"vbucket-seqno %d" % vb)[0].status == proto.NOT_MY_VBUCKET
    keystats = stat(client, b"key %s %d" % (key, vb))
    assert keystats["key_vb_state"] == "active" and keystats["key_flags"] == "0"
    assert stat(client, b"vkey %s %d" % (key, vb))["key_valid"] == "valid"
    assert stat_frames(client, b"key nothing-%s %d" % (key, vb))[0].status == proto.KEY_ENOENT
    wrong = stat_frames(cb.nodes[cb.other_node(key)], b"key %s %d" % (key, vb))
    assert len(wrong) == 1 and wrong[0].status == proto.NOT_MY_VBUCKET
    unknown = stat_frames(client, b"no-such-group")
    assert len(unknown) == 1 and unknown[0].status == proto.KEY_ENOENT


def test_memcached_stat_groups(mc: ClusterClients) -> None:
    client = mc.nodes[2]
    client.request(SET, b"stat-item", store_extras(), b"x")
    general = stat(client)
    assert general["version"] == "1.6.18" and int(general["curr_items"]) >= 1
    assert list(general)[:4] == ["pid", "uptime", "time", "version"]
    assert stat(client, b"settings")["item_size_max"] == "1048576"
    assert "items:1:number" in stat(client, b"items")
    for group in (b"key stat-item", b"vbucket", b"conns"):
        frames = stat_frames(client, group)
        assert [(f.status, f.value) for f in frames] == [(proto.KEY_ENOENT, b"Not found")]


# ------------------------------------------------- routing and GET_REPLICA


def test_not_my_vbucket_carries_the_config(cb: ClusterClients) -> None:
    key = fresh()
    wrong = op(cb, GET, key, node=cb.other_node(key))
    assert wrong.status == proto.NOT_MY_VBUCKET
    config = json.loads(wrong.value)
    assert config["vBucketServerMap"]["vBucketMap"] == cb.vbmap
    assert op(cb, SET, key, store_extras(), b"v", node=cb.other_node(key)).status == proto.NOT_MY_VBUCKET


def test_get_replica(mock: ThreadedMock, cb: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, b"copy", flags=8)
    replica = op(cb, GET_REPLICA, key, copy=1)
    assert (replica.status, replica.value, replica.extras) == (0, b"copy", b"\x00\x00\x00\x08")
    for node in (cb.node_of(key), cb.other_node(key)):
        refused = op(cb, GET_REPLICA, key, node=node)
        assert refused.status == proto.NOT_MY_VBUCKET and json.loads(refused.value)["rev"]
    with lags(mock, replicate=50):
        late = fresh()
        upsert(cb, late)
        assert op(cb, GET_REPLICA, late, copy=1).status == proto.KEY_ENOENT
        advance(mock, 51)
        assert op(cb, GET_REPLICA, late, copy=1).status == 0


# ------------------------------------------------------------------- locks


def test_get_locked_and_unlock(mock: ThreadedMock, cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, b"locked", flags=2)
    locked = op(cb, GET_LOCKED, key)
    assert (locked.status, locked.value, locked.extras) == (0, b"locked", b"\x00\x00\x00\x02")
    lock_cas = locked.cas
    assert op(cb, GET, key).cas == LOCKED_CAS
    assert op(cb, GET_REPLICA, key, copy=1).cas == lock_cas
    assert op(cb, SET, key, store_extras(), b"x").status == proto.LOCKED
    assert op(old, SET, key, store_extras(), b"x").status == proto.KEY_EEXISTS
    assert op(cb, DELETE, key).status == proto.LOCKED
    assert op(cb, TOUCH, key, struct.pack(">I", 0)).status == proto.LOCKED
    assert op(cb, GET_LOCKED, key).status == proto.LOCKED
    assert op(old, GET_LOCKED, key).status == proto.ETMPFAIL
    assert op(cb, UNLOCK, key, cas=lock_cas + 1).status == proto.LOCKED
    assert op(old, UNLOCK, key, cas=lock_cas + 1).status == proto.ETMPFAIL
    assert op(cb, UNLOCK, key, cas=lock_cas).status == 0
    assert op(cb, UNLOCK, key, cas=lock_cas).status == proto.NOT_LOCKED
    assert op(old, UNLOCK, key, cas=lock_cas).status == proto.ETMPFAIL
    assert op(cb, UNLOCK, fresh(), cas=1).status == proto.KEY_ENOENT
    assert op(cb, UNLOCK, key).status == proto.EINVAL  # the lock CAS is required
    assert op(cb, GET, key).cas == lock_cas  # the lock CAS stays the document's CAS
    # a mutation carrying the lock CAS succeeds and releases the lock
    relock = op(cb, GET_LOCKED, key, struct.pack(">I", 5))
    replaced = op(cb, SET, key, store_extras(), b"new", cas=relock.cas)
    assert replaced.status == 0 and op(cb, GET, key).cas == replaced.cas
    # expiry on the cluster clock: explicit time, then the default for 0 / above the maximum
    op(cb, GET_LOCKED, key, struct.pack(">I", 5))
    advance(mock, 5.5)
    assert op(cb, GET, key).cas != LOCKED_CAS
    op(cb, GET_LOCKED, key, struct.pack(">I", 999))
    advance(mock, 14)
    assert op(cb, GET, key).cas == LOCKED_CAS
    advance(mock, 1.5)
    assert op(cb, GET_LOCKED, key).status == 0  # default 15 s lock expired
    advance(mock, 15.5)
    assert op(cb, GET_LOCKED, fresh()).status == proto.KEY_ENOENT


# ---------------------------------------------------------------- GET_META


def test_get_meta(cb: ClusterClients) -> None:
    key = fresh()
    assert op(cb, GET_META, key).status == proto.KEY_ENOENT
    stored = upsert(cb, key, b'{"x":1}', flags=0x02000000, expiry=3600)
    seqno = token(stored)[1]
    v1 = op(cb, GET_META, key)
    deleted, flags, expiry, meta_seqno = struct.unpack(">IIIQ", v1.extras)
    assert (deleted, flags, meta_seqno, v1.cas) == (0, 0x02000000, seqno, stored.cas)
    assert abs(expiry - time.time()) < 3600 * 24 * 10
    v2 = op(cb, GET_META, key, b"\x02")
    assert len(v2.extras) == 21 and v2.extras[-1] == proto.DT_JSON
    removed = op(cb, DELETE, key)
    tomb = op(cb, GET_META, key)
    assert struct.unpack(">IIIQ", tomb.extras)[0] == 1 and tomb.cas == removed.cas
    assert op(cb, GET_META, key, b"\x07").status == proto.EINVAL


# ----------------------------------------------------------------- OBSERVE


def observe(cc: ClusterClients, node: int, keys: List[bytes]) -> Response:
    value = b"".join(struct.pack(">HH", cc.vbucket(k), len(k)) + k for k in keys)
    return cc.nodes[node].request(OBSERVE, value=value)


def observed(response: Response) -> List[Tuple[bytes, int, int]]:
    out, pos, data = [], 0, response.value
    while pos < len(data):
        _vb, keylen = struct.unpack_from(">HH", data, pos)
        key = data[pos + 4:pos + 4 + keylen]
        state, cas = struct.unpack_from(">BQ", data, pos + 4 + keylen)
        out.append((key, state, cas))
        pos += 4 + keylen + 9
    return out


def test_observe(mock: ThreadedMock, cb: ClusterClients) -> None:
    with lags(mock, persist=100, replicate=50):
        key = fresh()
        cas = upsert(cb, key).cas
        active, replica = cb.node_of(key), cb.node_of(key, 1)
        assert observed(observe(cb, active, [key])) == [(key, 0x00, cas)]
        assert observed(observe(cb, replica, [key])) == [(key, 0x80, 0)]
        advance(mock, 60)
        assert observed(observe(cb, replica, [key])) == [(key, 0x00, cas)]
        advance(mock, 50)
        assert observed(observe(cb, active, [key])) == [(key, 0x01, cas)]
        assert observed(observe(cb, replica, [key])) == [(key, 0x00, cas)]
        advance(mock, 50)
        assert observed(observe(cb, replica, [key])) == [(key, 0x01, cas)]
        gone = op(cb, DELETE, key).cas
        assert observed(observe(cb, active, [key])) == [(key, 0x81, gone)]
        assert observed(observe(cb, replica, [key])) == [(key, 0x01, 0)]  # still has the old version
        advance(mock, 101)
        assert observed(observe(cb, active, [key])) == [(key, 0x80, gone)]
        missing = fresh()
        response = observe(cb, active, [key, key])
        assert response.cas == (100000 << 32) | 50000  # persist / replicate hints, ms
        assert [s for _k, s, _c in observed(response)] == [0x80, 0x80]
        if cb.node_of(missing) == active:
            assert observed(observe(cb, active, [missing])) == [(missing, 0x80, 0)]
        refused = observe(cb, cb.other_node(key), [key])
        assert refused.status == proto.NOT_MY_VBUCKET and json.loads(refused.value)["rev"]
        assert cb.nodes[active].request(OBSERVE, value=b"\x00\x01\x00").status == proto.EINVAL


def test_observe_seqno(mock: ThreadedMock, cb: ClusterClients) -> None:
    key = fresh()
    vb = cb.vbucket(key)
    with lags(mock, persist=100):
        uuid, first = token(upsert(cb, key))
        active = cb.nodes[cb.node_of(key)]
        reply = active.request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid), vbucket=vb)
        fmt, rvb, ruuid, persisted, current = struct.unpack(">BHQQQ", reply.value)
        assert (fmt, rvb, ruuid, current) == (0, vb, uuid, first) and persisted < first
        advance(mock, 101)
        reply = active.request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid), vbucket=vb)
        assert struct.unpack(">BHQQQ", reply.value)[3] == first
        on_replica = cb.nodes[cb.node_of(key, 1)].request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid), vbucket=vb)
        assert on_replica.status == 0 and struct.unpack(">BHQQQ", on_replica.value)[4] == first
    elsewhere = cb.nodes[cb.other_node(key)].request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid), vbucket=vb)
    assert elsewhere.status == proto.NOT_MY_VBUCKET
    assert active.request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid ^ 1), vbucket=vb).status == proto.KEY_ENOENT

    def fail_over(app) -> int:  # type: ignore[no-untyped-def]
        store = app.cluster.buckets["default"].vbuckets[vb]
        store.uuid = uuid ^ 0xFFFF
        store.failover_log.append((store.uuid, store.seqno))
        return store.seqno

    branch = mock.call(fail_over)
    reply = active.request(OBSERVE_SEQNO, value=struct.pack(">Q", uuid), vbucket=vb)
    fmt, _vb, new_uuid, _p, _c, old_uuid, last_received = struct.unpack(">BHQQQQQ", reply.value)
    assert (fmt, new_uuid, old_uuid, last_received) == (1, uuid ^ 0xFFFF, uuid, branch)


# -------------------------------------------------------------- durability


def durable(cc: ClusterClients, key: bytes, level: int, timeout: Optional[int] = None, opcode: int = SET,
            extras: Optional[bytes] = None, value: bytes = b"durable", client: Optional[RawClient] = None) -> int:
    """Send a durable request; returns its opaque (read the reply yourself)."""
    client = client or cc.nodes[cc.node_of(key)]
    return client.send(opcode, key, store_extras() if extras is None else extras, value, vbucket=cc.vbucket(key),
                       framing=durability_frame(level, timeout))


def durable_reply(cc: ClusterClients, key: bytes, *args: object, **kw: object) -> Response:
    client = kw.pop("client", None) or cc.nodes[cc.node_of(key)]
    opaque = durable(cc, key, *args, client=client, **kw)  # type: ignore[arg-type]
    response = client.recv()  # type: ignore[union-attr]
    assert response.opaque == opaque
    return response


def test_durability_refusals(mock: ThreadedMock, solo: ThreadedMock, cb: ClusterClients,
                             mc: ClusterClients) -> None:
    key = fresh()
    for level in (0, 4):
        assert durable_reply(cb, key, level).status == proto.DURABILITY_INVALID_LEVEL
    assert durable_reply(cb, key, 1, 0).status == proto.EINVAL
    assert durable_reply(cb, key, 1, 0xFFFF).status == proto.EINVAL
    assert durable_reply(cb, key, 1, opcode=SETQ).status == proto.EINVAL
    assert durable_reply(cb, key, 1, opcode=GET, extras=b"", value=b"").status == proto.EINVAL
    assert op(cb, GET, key).status == proto.KEY_ENOENT
    memcached = ClusterClients(kv_ports(mock), "mc", features=(F_ALT_REQUEST, F_SYNC_REPLICATION, F_XERROR))
    try:
        reply = memcached.nodes[0].request(SET, b"m", store_extras(), b"v", framing=durability_frame(1))
        assert reply.status == proto.DURABILITY_INVALID_LEVEL
    finally:
        memcached.close()
    eph = ClusterClients(kv_ports(mock), "eph")
    try:
        eph.load_map()
        for level, status in ((3, proto.DURABILITY_INVALID_LEVEL), (2, proto.DURABILITY_INVALID_LEVEL), (1, 0)):
            assert durable_reply(eph, fresh(), level).status == status, level
    finally:
        eph.close()
    lonely = ClusterClients(kv_ports(solo), "default")
    try:
        lonely.load_map()
        assert durable_reply(lonely, key, 1).status == proto.DURABILITY_IMPOSSIBLE
        assert op(lonely, SET, key, store_extras(), b"plain").status == 0
    finally:
        lonely.close()


def test_durable_write_waits_and_blocks_the_key(mock: ThreadedMock, cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, b"before")
    writer = cb.connect(cb.node_of(key))
    try:
        # Replication takes 30 s of the cluster's clock: the write waits
        # however long the checks below take on a slow machine, and ends
        # when the clock is moved past it.
        with lags(mock, replicate=30):
            opaque = durable(cb, key, 1, 60000, client=writer)
            wait_sync_write_pending(mock, key)
            assert op(cb, SET, key, store_extras(), b"other").status == proto.SYNC_WRITE_IN_PROGRESS
            assert op(old, SET, key, store_extras(), b"other").status == proto.ETMPFAIL
            assert op(cb, GET_LOCKED, key).status == proto.SYNC_WRITE_IN_PROGRESS
            assert op(cb, GET, key).value == b"before"  # readers see the committed value
            writer.sock.settimeout(0.2)
            with pytest.raises(socket.timeout):
                writer.recv()  # still waiting for the replica
            writer.sock.settimeout(30)
            advance(mock, 31)
            reply = writer.recv()
            assert reply.opaque == opaque and reply.status == 0 and len(reply.extras) == 16
            assert op(cb, GET, key).value == b"durable"
            assert observed(observe(cb, cb.node_of(key, 1), [key]))[0][1] in (0x00, 0x01)  # replicated
    finally:
        writer.close()


def test_durable_write_timeout_is_ambiguous(mock: ThreadedMock, cb: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, b"before")
    with lags(mock, replicate=60, persist=60):
        started = time.monotonic()
        assert durable_reply(cb, key, 1, 150).status == proto.SYNC_WRITE_AMBIGUOUS
        assert time.monotonic() - started < 30  # its 150 ms, not the 60 s lag
        assert durable_reply(cb, key, 3, 150, opcode=DELETE, extras=b"", value=b"").status \
            == proto.SYNC_WRITE_AMBIGUOUS
    assert op(cb, GET, key).value == b"before"  # nothing was applied


def test_durable_write_completes_when_the_clock_moves(mock: ThreadedMock, cb: ClusterClients) -> None:
    key = fresh()
    with lags(mock, replicate=5, persist=3):  # 8 s for persistToMajority: within the default 10 s timeout
        writer = cb.connect(cb.node_of(key))
        try:
            started = time.monotonic()
            opaque = durable(cb, key, 3, None, opcode=INCR, extras=arith_extras(1, 7), value=b"", client=writer)
            wait_sync_write_pending(mock, key)  # moved only once the write waits (not after 0.2 s)
            advance(mock, 8.5)
            reply = writer.recv()
            assert (reply.opaque, reply.status, reply.value) == (opaque, 0, struct.pack(">Q", 7))
            # before the 8 s the lags take in real time: the clock move ended it
            assert time.monotonic() - started < 8
        finally:
            writer.close()
    # the next requests on the connection were held back, then answered in order
    key2 = fresh()
    client = cb.nodes[cb.node_of(key2)]
    first = durable(cb, key2, 1, client=client)
    second = client.send(GET, key2, vbucket=cb.vbucket(key2))
    assert [(r.opaque, r.status) for r in (client.recv(), client.recv())] == [(first, 0), (second, 0)]


# ------------------------------------------------------------ sub-document


def subdoc_op(cc: ClusterClients, opcode: int, key: bytes, path: bytes, value: bytes = b"", path_flags: int = 0,
              doc_flags: Optional[int] = None, expiry: Optional[int] = None, **kw: object) -> Response:
    extras = struct.pack(">HB", len(path), path_flags)
    if expiry is not None:
        extras += struct.pack(">I", expiry)
    if doc_flags is not None:
        extras += bytes([doc_flags])
    return op(cc, opcode, key, extras, path + value, **kw)


def lookup_specs(*specs: Tuple[int, int, bytes]) -> bytes:
    return b"".join(struct.pack(">BBH", o, f, len(p)) + p for o, f, p in specs)


def mutation_specs(*specs: Tuple[int, int, bytes, bytes]) -> bytes:
    return b"".join(struct.pack(">BBHI", o, f, len(p), len(v)) + p + v for o, f, p, v in specs)


def multi_results(value: bytes) -> List[Tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(value):
        status, length = struct.unpack_from(">HI", value, pos)
        out.append((status, value[pos + 6:pos + 6 + length]))
        pos += 6 + length
    return out


def test_subdoc_single_path(mock: ThreadedMock, cb: ClusterClients) -> None:
    key = fresh()
    assert subdoc_op(cb, SD_GET, key, b"a").status == proto.KEY_ENOENT
    stored = upsert(cb, key, b'{"name":"Bob","tags":["x","y"],"n":5}')
    got = subdoc_op(cb, SD_GET, key, b"name")
    assert (got.status, got.value, got.cas, got.datatype) == (0, b'"Bob"', stored.cas, proto.DT_JSON)
    assert subdoc_op(cb, SD_EXISTS, key, b"tags[1]").status == 0
    assert subdoc_op(cb, SD_EXISTS, key, b"tags[5]").status == 0xC0
    assert subdoc_op(cb, SD_GET_COUNT, key, b"tags").value == b"2"
    assert subdoc_op(cb, SD_GET, key, b"name", expiry=0).status == proto.EINVAL  # lookups take no expiry
    counted = subdoc_op(cb, SD_COUNTER, key, b"n", b"-2")
    assert (counted.status, counted.value) == (0, b"3") and len(counted.extras) == 16
    assert counted.cas != stored.cas
    upserted = subdoc_op(cb, SD_UPSERT, key, b"a.b.c", b"true", path_flags=0x01)
    assert upserted.status == 0 and token(upserted)[1] == token(counted)[1] + 1
    assert subdoc_op(cb, SD_DICT_ADD, key, b"name", b'"Al"').status == 0xC9
    assert subdoc_op(cb, SD_REPLACE, key, b"name", b'"Al"', cas=stored.cas).status == proto.KEY_EEXISTS
    assert subdoc_op(cb, SD_PUSH_LAST, key, b"tags", b'"z"').status == 0
    assert subdoc_op(cb, SD_DELETE, key, b"tags[0]").status == 0
    assert json.loads(op(cb, GET, key).value) == {"name": "Bob", "tags": ["y", "z"], "n": 3,
                                                   "a": {"b": {"c": True}}}
    created = fresh()
    made = subdoc_op(cb, SD_UPSERT, created, b"x", b"1", doc_flags=0x01, expiry=10)
    assert made.status == 0 and op(cb, GET, created).value == b'{"x":1}'
    advance(mock, 11)
    assert op(cb, GET, created).status == proto.KEY_ENOENT
    assert subdoc_op(cb, SD_GET, key, b"name", node=cb.other_node(key)).status == proto.NOT_MY_VBUCKET
    assert subdoc_op(cb, SD_GET, key, b"name", copy=1).status == proto.NOT_MY_VBUCKET
    replica_read = subdoc_op(cb, SD_GET, key, b"name", doc_flags=0x20, copy=1)
    assert (replica_read.status, replica_read.value) == (0, b'"Bob"')


def test_subdoc_multi_lookup(cb: ClusterClients) -> None:
    key = fresh()
    missing = op(cb, SD_MULTI_LOOKUP, key, value=lookup_specs((SD_GET, 0, b"name")))
    assert missing.status == proto.KEY_ENOENT and missing.value == b""
    stored = upsert(cb, key, b'{"name":"Bob"}')
    reply = op(cb, SD_MULTI_LOOKUP, key, value=lookup_specs((SD_GET, 0, b"name"), (SD_EXISTS, 0, b"tags")))
    # the worked example of the spec: spec 0 "Bob", spec 1 PATH_ENOENT
    assert reply.status == 0xCC and reply.cas == stored.cas
    assert reply.value == b"\x00\x00" + b"\x00\x00\x00\x05" + b'"Bob"' + b"\x00\xc0" + b"\x00\x00\x00\x00"
    # GET_COUNT of the root (an empty path) counts the document's top level
    whole = op(cb, SD_MULTI_LOOKUP, key, value=lookup_specs((0x00, 0, b""), (SD_GET_COUNT, 0, b"")))
    assert whole.status == 0 and multi_results(whole.value) == [(0, b'{"name":"Bob"}'), (0, b"1")]
    bad = op(cb, SD_MULTI_LOOKUP, key, value=lookup_specs((0x00, 0, b""), (SD_EXISTS, 0, b"")))
    assert bad.status == proto.EINVAL  # EXISTS needs a path
    fine = op(cb, SD_MULTI_LOOKUP, key, value=lookup_specs((0x00, 0, b""), (SD_EXISTS, 0, b"name")))
    assert fine.status == 0 and multi_results(fine.value) == [(0, b'{"name":"Bob"}'), (0, b"")]
    assert op(cb, SD_MULTI_LOOKUP, key, value=b"\xc5\x00\x00\x09name").status == proto.EINVAL


def test_subdoc_multi_mutation(cb: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, b'{"n":5}')
    specs = mutation_specs((SD_UPSERT, 0x01, b"name", b'"Al"'), (SD_COUNTER, 0, b"n", b"1"))
    reply = op(cb, SD_MULTI_MUTATION, key, value=specs)
    assert reply.status == 0 and len(reply.extras) == 16
    assert reply.value == b"\x01" + b"\x00\x00" + b"\x00\x00\x00\x01" + b"6"  # only COUNTER has a result
    before = op(cb, GET, key)
    failing = mutation_specs((SD_UPSERT, 0, b"ok", b"1"), (SD_REPLACE, 0, b"nope", b"2"))
    failed = op(cb, SD_MULTI_MUTATION, key, value=failing)
    assert (failed.status, failed.value, failed.extras) == (0xCC, b"\x01\x00\xc0", b"")
    after = op(cb, GET, key)
    assert (after.value, after.cas) == (before.value, before.cas)  # atomic: nothing changed
    created = fresh()
    extras = struct.pack(">I", 100) + b"\x02"  # expiry + ADD
    made = op(cb, SD_MULTI_MUTATION, created, extras, mutation_specs((SD_UPSERT, 0, b"a", b"1")))
    assert made.status == 0
    assert op(cb, SD_MULTI_MUTATION, created, b"\x02", mutation_specs((SD_UPSERT, 0, b"a", b"1"))).status \
        == proto.KEY_EEXISTS
    assert op(cb, SD_MULTI_MUTATION, created, b"\x00\x00\x00").status == proto.EINVAL  # bad extras
    whole = op(cb, SD_MULTI_MUTATION, created, value=mutation_specs((0x01, 0, b"", b"[1,2]")))
    assert whole.status == 0 and op(cb, GET, created).value == b"[1,2]"


def xattr_blob(pairs: List[Tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(k) + len(v) + 2) + k + b"\x00" + v + b"\x00" for k, v in pairs)
    return struct.pack(">I", len(body)) + body


def test_xattrs(mock: ThreadedMock, cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    value = xattr_blob([(b"_sys", b'{"rev":1}'), (b"user", b'"u"')]) + b'{"body":true}'
    stored = op(cb, SET, key, store_extras(), value, datatype=proto.DT_XATTR)
    assert stored.status == 0
    got = op(cb, GET, key)
    assert (got.value, got.datatype) == (b'{"body":true}', proto.DT_JSON)
    xa = subdoc_op(cb, SD_GET, key, b"_sys.rev", path_flags=0x04)
    assert (xa.status, xa.value) == (0, b"1")
    assert op(cb, GET_META, key, b"\x02").extras[-1] == proto.DT_JSON | proto.DT_XATTR
    upsert(cb, key, b'{"body":2}')  # a plain SET keeps the xattrs
    assert subdoc_op(cb, SD_GET, key, b"user", path_flags=0x04).value == b'"u"'
    assert subdoc_op(old, SD_GET, key, b"user", path_flags=0x04).status == proto.NOT_SUPPORTED
    assert op(old, SET, key, store_extras(), value, datatype=proto.DT_XATTR).status == proto.EINVAL
    op(cb, DELETE, key)
    tomb = subdoc_op(cb, SD_GET, key, b"_sys", path_flags=0x04, doc_flags=0x04)
    assert (tomb.status, tomb.value) == (0xCD, b'{"rev":1}')  # system xattrs survive deletion
    assert subdoc_op(cb, SD_GET, key, b"user", path_flags=0x04, doc_flags=0x04).status == 0xC0
    broken = xattr_blob([(b"k", b"not json")]) + b"{}"
    assert op(cb, SET, fresh(), store_extras(), broken, datatype=proto.DT_XATTR).status == 0x87
    assert op(cb, SET, fresh(), store_extras(), b"\x00\x00\x00\x09ab", datatype=proto.DT_XATTR).status == 0x87
    macro = fresh()
    upsert(cb, macro, b"{}")
    cas_macro = subdoc_op(cb, SD_UPSERT, macro, b"_txn.cas", b'"${Mutation.CAS}"', path_flags=0x04 | 0x10 | 0x01)
    assert cas_macro.status == 0
    expanded = subdoc_op(cb, SD_GET, macro, b"_txn.cas", path_flags=0x04).value
    assert expanded == b'"0x' + cas_macro.cas.to_bytes(8, "little").hex().encode() + b'"'


def test_datatype_negotiation(cb: ClusterClients, old: ClusterClients) -> None:
    key = fresh()
    assert op(old, SET, key, store_extras(), b"{}", datatype=proto.DT_JSON).status == proto.EINVAL
    assert op(cb, SET, key, store_extras(), b"{}", datatype=proto.DT_JSON).status == 0
    assert op(cb, SET, key, store_extras(), b"{oops", datatype=proto.DT_JSON).status == proto.EINVAL
    assert op(cb, SET, key, store_extras(), b"x", datatype=0x08).status == proto.EINVAL
    client = cb.connect(cb.node_of(key), features=(F_SELECT_BUCKET, F_SNAPPY, F_JSON))
    try:
        granted = client.hello((F_SELECT_BUCKET, F_SNAPPY, F_JSON))
        if proto.snappy_available():
            import cramjam

            packed = bytes(cramjam.snappy.compress_raw(b'{"z":"' + b"z" * 100 + b'"}'))
            reply = client.request(SET, key, store_extras(), packed, vbucket=cb.vbucket(key),
                                   datatype=proto.DT_SNAPPY | proto.DT_JSON)
            assert reply.status == 0
            got = client.request(GET, key, vbucket=cb.vbucket(key))
            # the client negotiated Snappy, so the document may come back compressed
            value = got.value
            if got.datatype & proto.DT_SNAPPY:
                value = bytes(cramjam.snappy.decompress_raw(value))
            assert value == b'{"z":"' + b"z" * 100 + b'"}'
            assert got.datatype & ~proto.DT_SNAPPY == proto.DT_JSON
        else:
            assert F_SNAPPY not in granted
        refused = op(cb, SET, key, store_extras(), b"\x02\x04ab", datatype=proto.DT_SNAPPY)
        assert refused.status == proto.EINVAL  # Snappy not negotiated on this connection
    finally:
        client.close()


def test_preserve_ttl_frame(cb: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, expiry=3600)
    expiry_of = lambda: struct.unpack(">IIIQ", op(cb, GET_META, key).extras)[2]  # noqa: E731
    kept = expiry_of()
    assert kept
    assert op(cb, SET, key, store_extras(), b"again", framing=b"\x50").status == 0  # frame id 5, no data
    assert expiry_of() == kept
    upsert(cb, key, b"{}", expiry=7200)
    kept = expiry_of()
    assert subdoc_op(cb, SD_UPSERT, key, b"a", b"1", framing=b"\x50").status == 0
    assert expiry_of() == kept
    assert subdoc_op(cb, SD_UPSERT, key, b"b", b"2").status == 0  # no expiry field: reset
    assert expiry_of() == 0


def test_durable_subdoc_and_ephemeral_observe(mock: ThreadedMock, cb: ClusterClients) -> None:
    key = fresh()
    upsert(cb, key, b'{"n":1}')
    client = cb.nodes[cb.node_of(key)]
    extras = struct.pack(">HB", 1, 0)
    reply = client.request(SD_COUNTER, key, extras, b"n" + b"5", vbucket=cb.vbucket(key),
                           framing=durability_frame(2, 2000))
    assert (reply.status, reply.value, len(reply.extras)) == (0, b"6", 16)
    specs = mutation_specs((SD_UPSERT, 0, b"m", b"2"))
    multi = client.request(SD_MULTI_MUTATION, key, b"", specs, vbucket=cb.vbucket(key),
                           framing=durability_frame(1))
    assert multi.status == 0 and json.loads(op(cb, GET, key).value) == {"n": 6, "m": 2}
    eph = ClusterClients(kv_ports(mock), "eph")
    try:
        eph.load_map()
        with lags(mock, persist=1):
            target = fresh()
            upsert(eph, target)
            advance(mock, 5)
            assert observed(observe(eph, eph.node_of(target), [target]))[0][1] == 0x00  # never persisted
    finally:
        eph.close()


def test_header_vbucket_decides_where_data_lives(cb: ClusterClients) -> None:
    key = fresh()
    node = cb.node_of(key)
    right = cb.vbucket(key)
    wrong = next(vb for vb, row in enumerate(cb.vbmap) if vb != right and cb.server_nodes[row[0]] == node)
    assert cb.nodes[node].request(SET, key, store_extras(), b"x", vbucket=wrong).status == 0
    assert op(cb, GET, key).status == proto.KEY_ENOENT
    assert cb.nodes[node].request(GET, key, vbucket=wrong).value == b"x"


# ------------------------------------------------------ memcached buckets


def test_memcached_bucket_quirks(mc: ClusterClients) -> None:
    node = mc.nodes[1]
    assert node.request(GET, b"q-missing").value == b"Not found"
    kmiss = node.request(GETK, b"q-missing")
    assert (kmiss.status, kmiss.key, kmiss.value) == (proto.KEY_ENOENT, b"q-missing", b"")
    stored = node.request(SET, b"q", store_extras(5), b"100")
    touched = node.request(TOUCH, b"q", struct.pack(">I", 100))
    assert (touched.extras, touched.value, touched.cas) == (b"\x00\x00\x00\x05", b"", stored.cas)
    assert node.request(ADD, b"q", store_extras(), b"x").value == b"Data exists for key."
    assert node.request(APPEND, b"q-missing", b"", b"x").value == b"Not stored."
    decr = node.request(DECR, b"q", arith_extras(95))
    assert decr.value == struct.pack(">Q", 5) and node.request(GET, b"q").value == b"5  "  # padded in place
    assert node.request(ADD, b"q", store_extras(), b"cas-add", cas=node.request(GET, b"q").cas).status == 0
    assert node.request(INCR, b"q", arith_extras(1)).value == b"Non-numeric server-side value for incr or decr"
    for opcode in (GET_LOCKED, GET_REPLICA, GET_META):
        assert node.request(opcode, b"q").status == proto.NOT_SUPPORTED, opcode
    assert node.request(OBSERVE, value=b"\x00\x00\x00\x01q").status == proto.NOT_SUPPORTED
    assert node.request(OBSERVE_SEQNO, value=b"\x00" * 8).status == proto.NOT_SUPPORTED
    assert node.request(0xC5, b"q", b"\x00\x01\x00", b"a").status == proto.NOT_SUPPORTED
    assert node.request(DELETE, b"q").cas == 0
    malformed = mc.connect(1, features=())
    bad = malformed.request(GET, b"q", b"extra")
    assert (bad.status, bad.value) == (proto.EINVAL, b"Invalid arguments")
    assert malformed.is_closed()
    malformed.close()


# Scripts run against a memcached bucket and a real memcached 1.6: every
# reply must match byte for byte, CAS aside (only whether it is zero).
_FE = store_extras(5)
_FZ = store_extras(0)
MEMCACHED_SCRIPT = [
    (GET, b"k"), (GETK, b"k"), (SET, b"k", _FE, b"v1"), (GET, b"k"), (GETK, b"k"), (SET, b"k", _FE, b"v2", 999),
    (ADD, b"k", _FE, b"x"), (REPLACE, b"nx", _FE, b"x"), (APPEND, b"nx", b"", b"x"), (PREPEND, b"k", b"", b"pre-"),
    (GET, b"k"), (DELETE, b"nx"), (DELETE, b"k", b"", b"", 5), (INCR, b"k", arith_extras(1)),
    (INCR, b"n", arith_extras(1, 7)), (GET, b"n"), (DECR, b"n", arith_extras(100)), (GET, b"n"),
    (INCR, b"n2", arith_extras(1, 7, 0xFFFFFFFF)), (SET, b"w", _FE, b"18446744073709551615"),
    (INCR, b"w", arith_extras(2)), (GET, b"w"), (SET, b"t", _FE, b" 12\t"), (INCR, b"t", arith_extras(2)),
    (GET, b"t"), (SET, b"t", _FE, b"-5"), (INCR, b"t", arith_extras(2)), (TOUCH, b"k", struct.pack(">I", 100)),
    (TOUCH, b"nx", struct.pack(">I", 100)), (GAT, b"k", struct.pack(">I", 100)), (GAT, b"nx", struct.pack(">I", 1)),
    (ADD, b"zz", _FE, b"x", 5), (APPEND, b"zz", b"", b"x", 5), (INCR, b"k", arith_extras(1), b"", 12345),
    (SET, b"big", _FZ, b"x" * (1048517 - 3)), (SET, b"big", _FZ, b"x" * (1048517 - 2)), (GET, b"big"),
    (SET, b"big", _FE, b"x" * (1048513 - 3)), (APPEND, b"big", b"", b"yy"), (SET, b"big", _FE, b"x" * 2000000),
    (GET, b"big"), (STAT, b"bogus"), (STAT, b"key k"), (STAT, b"detail dump"), (STAT, b"sizes"),
    (SETQ, b"q", _FE, b"v"), (ADDQ, b"q", _FE, b"v"), (GETQ, b"nq"), (GETKQ, b"nq"), (GETQ, b"q"), (GETKQ, b"q"),
    (DELETEQ, b"nq"), (INCRQ, b"q", arith_extras(1)), (INCRQ, b"c", arith_extras(1, 3)), (APPENDQ, b"nq", b"", b"x"),
    (GATQ, b"nq", struct.pack(">I", 9)), (GATQ, b"q", struct.pack(">I", 9)), (0x23, b"q", struct.pack(">I", 9)),
    (0x23, b"nq", struct.pack(">I", 9)), (0x24, b"nq", struct.pack(">I", 9)), (0x24, b"q", struct.pack(">I", 9)),
    (0x0B,), (FLUSHQ,), (GET, b"k"),
]
MEMCACHED_MALFORMED = [
    (GET, b"k", b"abcd"), (GET, b""), (GETK, b""), (GET, b"k", b"", b"v"), (SET, b"x", b"", b"v"),
    (SET, b"", _FE, b"v"), (DELETE, b"x", b"", b"v"), (INCR, b"x", b"\0" * 16), (SET, b"x" * 251, _FE, b"v"),
    (APPEND, b"", b"", b"v"), (APPEND, b"k", _FE, b"v"), (FLUSH, b"k"), (TOUCH, b"k"), (GAT, b"k"),
    (STAT, b"", b"abcd"), (STAT, b"x" * 251), (FLUSH, b"", b"", b"zz"),
]


def _replay(client: RawClient, script: List[tuple]) -> List[tuple]:
    defaults = (0, b"", b"", b"", 0)
    for step in script:
        opcode, key, extras, value, cas = tuple(step) + defaults[len(step):]
        client.send(opcode, key, extras, value, cas=cas)
    return [(r.opcode, r.status, r.datatype, r.extras, r.key, r.value, r.cas != 0) for r in client.until_noop()]


def test_memcached_bucket_matches_real_memcached(mock: ThreadedMock, memcached: MemcachedServer) -> None:
    emulated = ClusterClients(kv_ports(mock), "mc", features=())
    real = RawClient(memcached.host, memcached.port)
    try:
        emulated.nodes[0].request(FLUSH)
        real.request(FLUSH)
        assert _replay(emulated.nodes[0], MEMCACHED_SCRIPT) == _replay(real, MEMCACHED_SCRIPT)
    finally:
        emulated.close()
        real.close()
    emulated = ClusterClients(kv_ports(mock), "mc", features=())
    try:
        for step in MEMCACHED_MALFORMED:
            outcomes = []
            for client in (emulated.connect(0, features=()), RawClient(memcached.host, memcached.port)):
                opcode, key, extras, value = tuple(step) + (0, b"", b"", b"")[len(step):]
                try:
                    reply = client.request(opcode, key, extras, value)
                    outcomes.append(((reply.opcode, reply.status, reply.extras, reply.key, reply.value),
                                     client.probe_closed()))
                except Closed:
                    outcomes.append(("closed",))
                finally:
                    client.close()
            assert outcomes[0] == outcomes[1], step
    finally:
        emulated.close()

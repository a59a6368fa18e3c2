"""Every fault the emulator can inject, each seen on the wire.

Each test runs twice: once driving the fault through the Python API
(:class:`couchbase_core.mock.MockCluster` methods) and once through raw HTTP
POSTs to the control endpoint (what a program in another language would
do). The effects are observed with raw sockets only (:mod:`.rawclient`,
:mod:`.rawhttp`), never through the project's client engine.

Every test gets a fresh 3-node, 1-replica cluster in a child process.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from couchbase_core.mock import MockCluster, MockError
from couchbase_core.mock.control import ACTIONS
from tests.mock import rawhttp
from tests.mock.rawclient import Closed, RawClient
from tests.mock.scram import handshake

GET, SET, NOOP, OBSERVE, GET_REPLICA, GET_LOCKED, GET_CONFIG = 0x00, 0x01, 0x0A, 0x92, 0x83, 0x94, 0xB5
SELECT_BUCKET = 0x89
SUCCESS, KEY_ENOENT, NOT_MY_VBUCKET, LOCKED, EACCESS, NOT_SUPPORTED, ETMPFAIL, EBUSY = (
    0x00, 0x01, 0x07, 0x09, 0x24, 0x83, 0x86, 0x85)
ADMIN = ("Administrator", "password")
HOST = "127.0.0.1"


# ------------------------------------------------------------------ drivers


class HTTPFaults:
    """The MockCluster fault methods, done as raw HTTP POSTs to the control endpoint."""

    def __init__(self, cluster: MockCluster) -> None:
        url = urlsplit(cluster.control_url)
        self.host, self.port, self.base = url.hostname or HOST, url.port or 80, url.path

    def post(self, action: str, **body: Any) -> Dict[str, Any]:
        body = {k: v for k, v in body.items() if v is not None}
        reply = rawhttp.post_json(self.host, self.port, "%s/%s" % (self.base, action), body)
        assert reply.status == 200, reply
        assert reply.headers["content-type"].startswith("application/json")
        return reply.json()

    def failover(self, node: int) -> None:
        self.post("failover", node=node)

    def add_node(self, rebalance: bool = True) -> int:
        return self.post("add_node", rebalance=rebalance)["added"]

    def remove_node(self, node: int) -> None:
        self.post("remove_node", node=node)

    def rebalance(self) -> None:
        self.post("rebalance")

    def stop_node(self, node: int) -> None:
        self.post("stop_node", node=node)

    def restart_node(self, node: int) -> None:
        self.post("restart_node", node=node)

    def drop_connections(self, node: Optional[int] = None) -> int:
        return self.post("drop_connections", node=node)["dropped"]

    def delay(self, seconds: float, node: Optional[int] = None) -> None:
        self.post("delay", seconds=seconds, node=node)

    def stall(self, after_bytes: Optional[int], node: Optional[int] = None) -> None:
        self.post("stall", after_bytes=after_bytes, node=node)

    def force_status(self, status: int, count: int = 1, node: Optional[int] = None) -> None:
        self.post("force_status", status=status, count=count, node=node)

    def malformed(self, count: int = 1, node: Optional[int] = None) -> None:
        self.post("malformed", count=count, node=node)

    def cccp(self, enabled: bool) -> None:
        self.post("cccp", enabled=enabled)

    def advance_clock(self, seconds: float) -> float:
        return self.post("clock", advance=seconds)["now"]

    def persist_delay(self, seconds: float) -> None:
        self.post("persist_delay", seconds=seconds)

    def replicate_delay(self, seconds: float) -> None:
        self.post("replicate_delay", seconds=seconds)

    def clear_faults(self) -> None:
        self.post("clear_faults")

    def create_bucket(self, name: str, type: str = "couchbase", password: str = "") -> None:  # noqa: A002
        self.post("create_bucket", name=name, type=type, password=password)

    def add_user(self, name: str, password: str, roles: List[Dict[str, str]]) -> None:
        self.post("add_user", name=name, password=password, roles=roles)

    def delete_bucket(self, name: str) -> None:
        self.post("delete_bucket", name=name)

    def bump_epoch(self) -> None:
        self.post("bump_epoch")


class PythonFaults:
    """The MockCluster API itself (plus ``control()`` for the actions
    that have no method of their own)."""

    def __init__(self, cluster: MockCluster) -> None:
        self.cluster = cluster

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)

    def delete_bucket(self, name: str) -> None:
        self.cluster.control("delete_bucket", name=name)

    def bump_epoch(self) -> None:
        self.cluster.control("bump_epoch")


#: Sockets the current test opened, closed when its cluster stops.
_OPEN: List[Any] = []


def track(conn: Any) -> Any:
    _OPEN.append(conn)
    return conn


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=3, replicas=1) as running:
        try:
            yield running
        finally:
            while _OPEN:
                _OPEN.pop().close()


@pytest.fixture(params=["python", "http"])
def fault(request: pytest.FixtureRequest, cluster: MockCluster) -> Any:
    return PythonFaults(cluster) if request.param == "python" else HTTPFaults(cluster)


# ------------------------------------------------------------------ helpers


def kv_port(cluster: MockCluster, node: int) -> int:
    return cluster.refresh()["nodes"][node]["ports"]["kv"]


def connect(cluster: MockCluster, node: int, user: Tuple[str, str] = ADMIN) -> RawClient:
    return track(handshake(HOST, kv_port(cluster, node), user[0], user[1], "default", features=(0x07, 0x08, 0x0B)))


def config_of(client: RawClient) -> Dict[str, Any]:
    response = client.request(GET_CONFIG)
    assert response.status == SUCCESS, response
    return json.loads(response.value.replace(b"$HOST", HOST.encode()))


class Map:
    """A config's routing: vBucket -> node indexes (not server indexes)."""

    def __init__(self, cluster: MockCluster, config: Dict[str, Any]) -> None:
        by_port = {n["ports"]["kv"]: n["index"] for n in cluster.refresh()["nodes"]}
        self.config = config
        self.rev = (config["revEpoch"], config["rev"])
        servers = config["vBucketServerMap"]["serverList"]
        self.nodes = [by_port[int(s.rsplit(":", 1)[1])] for s in servers]
        self.rows = [[self.nodes[i] if i >= 0 else -1 for i in row]
                     for row in config["vBucketServerMap"]["vBucketMap"]]

    def vbucket(self, key: bytes) -> int:
        import zlib

        return ((zlib.crc32(key) >> 16) & 0x7FFF) % len(self.rows)

    def active(self, key: bytes) -> int:
        return self.rows[self.vbucket(key)][0]

    def replica(self, key: bytes) -> int:
        return self.rows[self.vbucket(key)][1]

    def key_on(self, node: int, prefix: str = "key") -> bytes:
        """A key whose active copy is on ``node``."""
        return next(k for k in (("%s-%d" % (prefix, i)).encode() for i in range(10000)) if self.active(k) == node)


def store(client: RawClient, key: bytes, value: bytes, vb: int, expiry: int = 0, cas: int = 0):  # type: ignore[no-untyped-def]
    return client.request(SET, key, struct.pack(">II", 0, expiry), value, vbucket=vb, cas=cas)


def roundtrip(client: RawClient) -> float:
    started = time.monotonic()
    assert client.request(NOOP).status == SUCCESS
    return time.monotonic() - started


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def observe_state(client: RawClient, key: bytes, vb: int) -> int:
    response = client.request(OBSERVE, value=struct.pack(">HH", vb, len(key)) + key)
    assert response.status == SUCCESS, response
    return response.value[4 + len(key)]


# --------------------------------------------------------------- topology


def test_failover(cluster: MockCluster, fault: Any) -> None:
    c0, c1 = connect(cluster, 0), connect(cluster, 1)
    before = Map(cluster, config_of(c0))
    key = before.key_on(1)
    assert store(c1, key, b"survives", before.vbucket(key)).status == SUCCESS
    fault.failover(1)
    after = Map(cluster, config_of(c0))
    assert after.rev > before.rev
    assert len(after.nodes) == 2 and 1 not in after.nodes
    # The failed node refuses its old vBuckets, with the new config.
    nmv = c1.request(GET, key, vbucket=before.vbucket(key))
    assert nmv.status == NOT_MY_VBUCKET
    assert Map(cluster, json.loads(nmv.value.replace(b"$HOST", b"127.0.0.1"))).rev == after.rev
    # The replica took over, with the data.
    assert after.active(key) == before.replica(key)
    promoted = connect(cluster, after.active(key))
    assert promoted.request(GET, key, vbucket=after.vbucket(key)).value == b"survives"
    assert cluster.refresh()["nodes"][1]["state"] == "failed"


def test_add_node_then_rebalance(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    before = Map(cluster, config_of(c0))
    added = fault.add_node(rebalance=False)
    assert added == 3
    pending = Map(cluster, config_of(c0))
    assert pending.rev > before.rev and pending.rows == before.rows and 3 not in pending.nodes
    newcomer = connect(cluster, 3)  # it listens, but owns nothing yet
    key = before.key_on(0)
    assert newcomer.request(GET, key, vbucket=before.vbucket(key)).status == NOT_MY_VBUCKET
    fault.rebalance()
    after = Map(cluster, config_of(c0))
    assert after.rev > pending.rev and 3 in after.nodes
    moved = [vb for vb in range(len(after.rows)) if after.rows[vb][0] != before.rows[vb][0]]
    assert moved and any(after.rows[vb][0] == 3 for vb in moved)
    vb = next(vb for vb in moved if before.rows[vb][0] == 0)
    nmv = c0.request(GET, b"whatever", vbucket=vb)
    assert nmv.status == NOT_MY_VBUCKET
    assert Map(cluster, json.loads(nmv.value.replace(b"$HOST", b"127.0.0.1"))).rev == after.rev


def test_add_node_rebalanced_at_once(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    before = Map(cluster, config_of(c0))
    key = before.key_on(0)
    assert store(c0, key, b"moves", before.vbucket(key)).status == SUCCESS
    assert fault.add_node() == 3
    after = Map(cluster, config_of(c0))
    assert sorted(after.nodes) == [0, 1, 2, 3] and after.rev > before.rev
    owner = connect(cluster, after.active(key))
    assert owner.request(GET, key, vbucket=after.vbucket(key)).value == b"moves"


def test_remove_node(cluster: MockCluster, fault: Any) -> None:
    c0, c2 = connect(cluster, 0), connect(cluster, 2)
    before = Map(cluster, config_of(c0))
    port2 = kv_port(cluster, 2)
    fault.remove_node(2)
    after = Map(cluster, config_of(c0))
    assert sorted(after.nodes) == [0, 1] and after.rev > before.rev
    assert c2.is_closed() and refused(port2)  # rebalanced out and stopped
    vb = next(vb for vb in range(len(after.rows)) if before.rows[vb][0] == 0 and after.rows[vb][0] == 1)
    assert c0.request(GET, b"x", vbucket=vb).status == NOT_MY_VBUCKET
    assert cluster.refresh()["nodes"][2]["member"] is False


def test_stop_and_restart_node(cluster: MockCluster, fault: Any) -> None:
    c0, c2 = connect(cluster, 0), connect(cluster, 2)
    config = Map(cluster, config_of(c0))
    key = config.key_on(2)
    assert store(c2, key, b"kept", config.vbucket(key)).status == SUCCESS
    port = kv_port(cluster, 2)
    mgmt = cluster.refresh()["nodes"][2]["ports"]["mgmt"]
    fault.stop_node(2)
    assert c2.is_closed()
    assert refused(port) and refused(mgmt)  # KV and HTTP both down
    # ...but their ports stay reserved for the restart: no one else can take them
    for held in (port, mgmt):
        with socket.socket() as other, pytest.raises(OSError):
            other.bind((HOST, held))
    assert 2 in Map(cluster, config_of(c0)).nodes  # still in the map until failed over
    fault.restart_node(2)
    assert kv_port(cluster, 2) == port
    again = connect(cluster, 2)
    assert again.request(GET, key, vbucket=config.vbucket(key)).value == b"kept"
    assert rawhttp.request(HOST, mgmt, "GET", "/pools").status == 200


def test_drop_connections(cluster: MockCluster, fault: Any) -> None:
    clients = [connect(cluster, i) for i in range(3)]
    stream = track(rawhttp.ConfigStream(HOST, cluster.refresh()["nodes"][1]["ports"]["mgmt"], "default", ADMIN))
    stream.next_config()
    assert fault.drop_connections(node=1) >= 2  # the KV connection and the HTTP stream
    assert clients[1].is_closed()
    with pytest.raises((rawhttp.HTTPError, OSError)) as info:
        stream.next_config(timeout=30)
    assert not isinstance(info.value, socket.timeout), "the stream was not dropped"
    roundtrip(clients[0])  # other nodes untouched: they still answer
    roundtrip(clients[2])
    assert fault.drop_connections() >= 2
    assert clients[0].is_closed() and clients[2].is_closed()
    roundtrip(connect(cluster, 1))  # new connections are welcome


# --------------------------------------------------------- per-connection


def test_delay(cluster: MockCluster, fault: Any) -> None:
    # "Not delayed" is told from "delayed" by a margin no slow machine
    # bridges: undelayed replies take well under a second even when loaded.
    c0, c1 = connect(cluster, 0), connect(cluster, 1)
    assert roundtrip(c0) < 1.0
    fault.delay(2.0)
    assert 2.0 <= roundtrip(c0) < 30
    fault.delay(0)
    assert roundtrip(c0) < 1.0
    fault.delay(2.0, node=1)
    assert 2.0 <= roundtrip(c1) < 30 and roundtrip(c0) < 1.0


def test_stall_after_bytes(cluster: MockCluster, fault: Any) -> None:
    probe = connect(cluster, 0)
    config = Map(cluster, config_of(probe))
    key = config.key_on(0)
    assert store(probe, key, b"v" * 100, config.vbucket(key)).status == SUCCESS
    fault.stall(40, node=0)
    # A fresh connection (no handshake: the password-less default bucket is
    # open) so the byte count starts at 0.
    raw = track(RawClient(HOST, kv_port(cluster, 0), timeout=30.0))
    raw.send(NOOP)
    raw.send(GET, key, vbucket=config.vbucket(key))
    received = raw._read(40)  # the NOOP reply (24) and 16 bytes of the GET reply...
    raw.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        raw._read(1)  # ...then nothing
    assert received[:2] == b"\x81\x0a" and received[24:26] == b"\x81\x00"
    fault.stall(None)
    roundtrip(connect(cluster, 0))  # answered again


def test_force_status(cluster: MockCluster, fault: Any) -> None:
    c0, c1 = connect(cluster, 0), connect(cluster, 1)
    config = Map(cluster, config_of(c0))
    key = config.key_on(0)
    vb = config.vbucket(key)
    fault.force_status(ETMPFAIL, count=2, node=0)
    assert [store(c0, key, b"x", vb).status for _ in range(3)] == [ETMPFAIL, ETMPFAIL, SUCCESS]
    roundtrip(c0)  # connection commands are not data operations (a NOOP succeeds)
    fault.force_status(SUCCESS, node=0)  # a bare success that does nothing
    assert store(c0, key, b"lost", vb).status == SUCCESS
    assert c0.request(GET, key, vbucket=vb).value == b"x"
    fault.force_status(EBUSY, node=1)
    other = config.key_on(1)
    assert c0.request(GET, key, vbucket=vb).status == SUCCESS  # node 0 unaffected
    assert c1.request(GET, other, vbucket=config.vbucket(other)).status == EBUSY


def test_malformed_responses(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    fault.malformed(count=1, node=0)
    c0.send(NOOP)
    garbage = c0._read(32)
    assert garbage[:4] == b"\xde\xad\xbe\xef" and garbage[0] not in (0x81, 0x18)
    c0.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        c0._read(1)  # nothing else came for that request
    c0.sock.settimeout(30)
    assert c0.request(NOOP).status == SUCCESS  # the next reply is well formed


def test_cccp_off(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    fault.cccp(False)
    assert c0.request(GET_CONFIG).status == NOT_SUPPORTED
    terse = rawhttp.request(HOST, cluster.http_port, "GET", "/pools/default/b/default", auth=ADMIN)
    assert terse.status == 200 and "vBucketServerMap" in terse.json()  # HTTP still serves configs
    fault.cccp(True)
    assert config_of(c0)["name"] == "default"


# --------------------------------------------------------- clock and lags


def test_clock_expires_documents_and_releases_locks(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    config = Map(cluster, config_of(c0))
    key, locked = config.key_on(0, "exp"), config.key_on(0, "lock")
    assert store(c0, key, b"short-lived", config.vbucket(key), expiry=10).status == SUCCESS
    assert c0.request(GET, key, vbucket=config.vbucket(key)).status == SUCCESS
    assert store(c0, locked, b"v", config.vbucket(locked)).status == SUCCESS
    lock = c0.request(GET_LOCKED, locked, struct.pack(">I", 5), vbucket=config.vbucket(locked))
    assert lock.status == SUCCESS
    assert store(c0, locked, b"w", config.vbucket(locked)).status == LOCKED
    now = fault.advance_clock(11)
    assert now > time.time() + 10
    assert c0.request(GET, key, vbucket=config.vbucket(key)).status == KEY_ENOENT
    assert store(c0, locked, b"w", config.vbucket(locked)).status == SUCCESS  # lock timed out


def test_persist_and_replicate_delays_seen_by_observe(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    config = Map(cluster, config_of(c0))
    key = config.key_on(0)
    vb = config.vbucket(key)
    replica = connect(cluster, config.replica(key))
    fault.persist_delay(5)
    fault.replicate_delay(3)
    assert store(c0, key, b"v", vb).status == SUCCESS
    assert observe_state(c0, key, vb) == 0x00  # found, not persisted
    assert observe_state(replica, key, vb) == 0x80  # not there yet
    assert replica.request(GET_REPLICA, key, vbucket=vb).status == KEY_ENOENT
    fault.advance_clock(4)
    assert observe_state(replica, key, vb) == 0x00  # replicated, not persisted
    assert replica.request(GET_REPLICA, key, vbucket=vb).value == b"v"
    assert observe_state(c0, key, vb) == 0x00
    fault.advance_clock(2)
    assert observe_state(c0, key, vb) == 0x01  # persisted on the active (after 5 s)
    assert observe_state(replica, key, vb) == 0x00  # the replica persists 5 s after it got it
    fault.advance_clock(3)
    assert observe_state(replica, key, vb) == 0x01


def test_clear_faults(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    config = Map(cluster, config_of(c0))
    key = config.key_on(0)
    vb = config.vbucket(key)
    fault.delay(5.0)
    fault.force_status(ETMPFAIL, count=5)
    fault.cccp(False)
    fault.persist_delay(60)
    fault.replicate_delay(60)
    fault.malformed(count=3)
    fault.stall(1_000_000_000)
    fault.clear_faults()
    assert roundtrip(c0) < 2.5  # no delay (of 5 s), no garbage
    assert store(c0, key, b"v", vb).status == SUCCESS  # no forced status
    assert observe_state(c0, key, vb) == 0x01  # persisted at once
    assert config_of(c0)["name"] == "default"  # CCCP back on
    info = rawhttp.request(HOST, urlsplit(cluster.control_url).port or 80, "GET",
                           urlsplit(cluster.control_url).path + "/info").json()
    assert info["connstr"] == cluster.connstr


# ---------------------------------------------------- buckets, users, epoch


def test_buckets_users_and_epoch(cluster: MockCluster, fault: Any) -> None:
    c0 = connect(cluster, 0)
    before = config_of(c0)
    fault.create_bucket("extra", type="ephemeral")
    assert "extra" in cluster.refresh()["kv_ports"]
    assert c0.request(SELECT_BUCKET, b"extra").status == SUCCESS
    fault.add_user("reader", "pw", [{"role": "data_reader", "bucket": "default"}])
    reader = connect(cluster, 0, ("reader", "pw"))
    config = Map(cluster, config_of(reader))
    key = config.key_on(0)
    assert store(reader, key, b"v", config.vbucket(key)).status == EACCESS  # read-only
    assert reader.request(GET, key, vbucket=config.vbucket(key)).status == KEY_ENOENT
    assert reader.request(SELECT_BUCKET, b"extra").status == EACCESS
    fault.delete_bucket("extra")
    assert "extra" not in cluster.refresh()["kv_ports"]
    fault.bump_epoch()
    c0.request(SELECT_BUCKET, b"default")
    after = config_of(c0)
    assert after["revEpoch"] == before["revEpoch"] + 1


# ----------------------------------------------------------- the endpoint


def test_unknown_action_and_bad_bodies(cluster: MockCluster) -> None:
    http = HTTPFaults(cluster)
    reply = rawhttp.post_json(http.host, http.port, http.base + "/no_such_action", {})
    assert reply.status == 400 and "unknown action" in reply.json()["error"]
    for body in (b"[1, 2]", b"not json"):
        bad = rawhttp.request(http.host, http.port, "POST", http.base + "/delay", body,
                              {"Content-Type": "application/json"})
        assert bad.status == 400 and bad.json()["error"]
    missing = rawhttp.post_json(http.host, http.port, http.base + "/failover", {})
    assert missing.status == 400  # no node given
    assert rawhttp.request(http.host, http.port, "GET", http.base + "/info").json()["connstr"] == cluster.connstr
    with pytest.raises(MockError):
        cluster.control("no_such_action")


def test_every_control_action_is_tested() -> None:
    """The actions this file drives (through HTTPFaults and directly); a new
    action without a test here fails this."""
    covered = {"info", "failover", "add_node", "remove_node", "rebalance", "stop_node", "restart_node",
               "drop_connections", "delay", "stall", "force_status", "malformed", "cccp", "clock",
               "persist_delay", "replicate_delay", "clear_faults", "create_bucket", "delete_bucket", "add_user",
               "bump_epoch",
               "fts_index_lag"}  # driven in tests/mock/test_fts_engine.py
    assert set(ACTIONS) == covered


def test_closed_connection_reports(cluster: MockCluster) -> None:
    """The raw client tells a hang-up from silence (the tests above rely on it)."""
    c0 = connect(cluster, 0)
    assert not c0.is_closed(0.2)
    cluster.drop_connections(0)
    with pytest.raises((Closed, OSError)):
        c0.request(NOOP)

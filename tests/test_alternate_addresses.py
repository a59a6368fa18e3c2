"""Alternate addresses: ``network=auto|default|external`` (libcouchbase's
``network``), from ``nodesExt[].alternateAddresses`` of the cluster config.

* Parsing (``couchbase_core._engine.config``): which network ``auto``
  picks, how a node's alternate hostname and ports replace its own for KV
  (server list, TLS ports, memcached buckets) and HTTP services, ports the
  alternate entry leaves out, malformed entries.
* End to end against the emulator started with ``alternate_host``: every
  node also listens on 127.0.0.2, on ports of its own, and publishes that
  address as its ``external`` one. The emulator reports which of its
  addresses each client connection reached, so the tests see on the wire
  which addresses the client used, for KV, views and N1QL.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator

import pytest

from couchbase_core._engine.config import BucketConfig, ConfigError, guess_network
from couchbase_core.bucket import Bucket
from couchbase_core.mock import MockCluster
from gcouchbase.bucket import Bucket as GBucket

ADMIN = {"username": "Administrator", "password": "password"}
LONG = 30
ALT = "127.0.0.2"


def config(network_entry: Any = None, this_host: bool = False, tls: bool = False,
           locator: str = "vbucket") -> Dict[str, Any]:
    """A two-node terse config; node 0 is served as ``$HOST``."""
    alt0 = {"external": {"hostname": "ext0.example.test",
                         "ports": {"kv": 31000, "mgmt": 31001, "capi": 31002, "n1ql": 31003, "kvSSL": 31007}}}
    alt1 = {"external": {"hostname": "ext1.example.test", "ports": {"kv": 32000}}}
    if network_entry is not None:
        alt1 = network_entry
    services0 = {"kv": 11210, "mgmt": 8091, "capi": 8092, "n1ql": 8093, "kvSSL": 11207}
    services1 = {"kv": 11210, "mgmt": 8091, "capi": 8092, "n1ql": 8093, "kvSSL": 11207}
    ext0: Dict[str, Any] = {"services": services0, "alternateAddresses": alt0}
    if this_host:
        ext0["thisNode"] = True
    else:
        ext0["hostname"] = "10.0.0.1"
    cfg: Dict[str, Any] = {
        "rev": 5, "name": "default", "nodeLocator": locator,
        "nodes": [{"hostname": "%s:8091" % ("$HOST" if this_host else "10.0.0.1"), "ports": {"direct": 11210}},
                  {"hostname": "10.0.0.2:8091", "ports": {"direct": 11210}}],
        "nodesExt": [ext0, {"services": services1, "hostname": "10.0.0.2", "alternateAddresses": alt1}],
    }
    if locator == "vbucket":
        cfg["vBucketServerMap"] = {"hashAlgorithm": "CRC", "numReplicas": 1,
                                   "serverList": ["%s:11210" % ("$HOST" if this_host else "10.0.0.1"),
                                                  "10.0.0.2:11210"],
                                   "vBucketMap": [[0, 1], [1, 0]]}
    return cfg


# ------------------------------------------------------------------- parsing


def test_guess_network_as_libcouchbase():
    cfg = config()
    assert guess_network(cfg, "10.0.0.2") == "default"          # a node's own hostname
    assert guess_network(cfg, "ext1.example.test") == "external"  # an alternate hostname
    assert guess_network(cfg, "somewhere.else") == "default"      # neither
    # the node serving the config has no hostname of its own ($HOST): only
    # the alternate hostnames can match
    served = config(this_host=True)
    assert guess_network(served, "ext0.example.test") == "external"
    assert guess_network({"nodesExt": "nonsense"}, "x") == "default"


def test_external_addresses_replace_kv_and_http_endpoints():
    cfg = BucketConfig.parse(json.dumps(config()), "10.0.0.1", network="external")
    assert cfg.network == "external"
    assert cfg.servers == [("ext0.example.test", 31000), ("ext1.example.test", 32000)]
    assert cfg.service_endpoints("n1ql") == [("ext0.example.test", 31003), ("ext1.example.test", 8093)]
    assert cfg.service_endpoints("capi") == [("ext0.example.test", 31002), ("ext1.example.test", 8092)]
    assert cfg.service_endpoints("mgmt") == [("ext0.example.test", 31001), ("ext1.example.test", 8091)]


def test_tls_uses_the_alternate_tls_port():
    cfg = BucketConfig.parse(config(), "10.0.0.1", tls=True, network="external")
    # node 1 lists no kvSSL alternate: its own TLS port at the alternate host
    assert cfg.servers == [("ext0.example.test", 31007), ("ext1.example.test", 11207)]


def test_default_and_auto():
    cfg = BucketConfig.parse(config(), "10.0.0.1", network="default")
    assert cfg.servers == [("10.0.0.1", 11210), ("10.0.0.2", 11210)]
    auto = BucketConfig.parse(config(this_host=True), "ext0.example.test", network="auto")
    assert auto.network == "external"
    assert auto.servers == [("ext0.example.test", 31000), ("ext1.example.test", 32000)]
    internal = BucketConfig.parse(config(this_host=True), "10.0.0.1", network="auto")
    assert internal.network == "default"
    assert internal.servers == [("10.0.0.1", 11210), ("10.0.0.2", 11210)]


@pytest.mark.parametrize("entry", [None, "junk", {"external": "junk"}, {"external": {"ports": {"kv": 1}}},
                                   {"external": {"hostname": ""}}, {"other": {"hostname": "x"}}])
def test_nodes_without_a_usable_alternate_keep_their_address(entry):
    raw = config()
    raw["nodesExt"][1]["alternateAddresses"] = entry
    cfg = BucketConfig.parse(raw, "10.0.0.1", network="external")
    assert cfg.servers[1] == ("10.0.0.2", 11210)


def test_bad_alternate_ports_are_ignored():
    raw = config({"external": {"hostname": "ext1.example.test", "ports": {"kv": "x", "n1ql": 70000}}})
    cfg = BucketConfig.parse(raw, "10.0.0.1", network="external")
    assert cfg.servers[1] == ("ext1.example.test", 11210)
    assert cfg.service_endpoints("n1ql")[1] == ("ext1.example.test", 8093)


def test_memcached_buckets_use_alternate_addresses_too():
    cfg = BucketConfig.parse(config(locator="ketama"), "10.0.0.1", network="external")
    assert cfg.servers == [("ext0.example.test", 31000), ("ext1.example.test", 32000)]


def test_a_named_network_that_nobody_publishes():
    cfg = BucketConfig.parse(config(), "10.0.0.1", network="moon")
    assert cfg.network == "moon"
    assert cfg.servers == [("10.0.0.1", 11210), ("10.0.0.2", 11210)]
    with pytest.raises(ConfigError):
        BucketConfig.parse("{", "10.0.0.1", network="external")


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=2, replicas=1, alternate_host=ALT) as c:
        b = Bucket(c.connstr_for("default"), operation_timeout=LONG, network="default", **ADMIN)
        try:
            b.upsert_multi({"alt:%d" % i: {"i": i} for i in range(8)})
            b.bucket_manager().design_create(
                "alt", {"views": {"v": {"map": "function (doc) { emit(doc.i, null); }"}}},
                use_devmode=False, syncwait=60)
            assert list(b.query("alt", "v", stale=False, limit=1))
        finally:
            b.close()
        yield c


def addresses_in_use(cluster: MockCluster) -> Dict[str, Dict[str, int]]:
    """{address: {"kv": n, "http": m}} over every node."""
    out: Dict[str, Dict[str, int]] = {}
    for node in cluster.refresh()["nodes"]:
        for address, counts in node.get("connections_by_address", {}).items():
            mine = out.setdefault(address, {})
            for kind, n in counts.items():
                mine[kind] = mine.get(kind, 0) + n
    return out


def alt_ports(cluster: MockCluster, service: str) -> list:
    return sorted(node["alt_ports"][service] for node in cluster.info["nodes"])


def wait_idle(cluster: MockCluster) -> None:
    """Earlier buckets of this module are closed: let the emulator see it."""
    import time

    deadline = time.monotonic() + 20
    while addresses_in_use(cluster) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not addresses_in_use(cluster)


def exercise(b: Any) -> None:
    """KV on every node, a view and a N1QL query."""
    for i in range(8):
        assert b.get("alt:%d" % i).value == {"i": i}
    assert sorted(r.key for r in b.query("alt", "v", stale="ok")) == list(range(8))
    assert b.n1ql_query("SELECT 1 AS x").get_single_result() == {"x": 1}


FLAVOURS = {"blocking": Bucket, "gevent": GBucket}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_network_external_uses_the_alternate_addresses_for_everything(cluster, flavour):
    wait_idle(cluster)
    b = FLAVOURS[flavour](cluster.connstr_for("default", network="external"), operation_timeout=LONG, **ADMIN)
    try:
        exercise(b)
        kv = sorted(int(n.rsplit(":", 1)[1]) for n in b.server_nodes)
        assert {n.rsplit(":", 1)[0] for n in b.server_nodes} == {ALT}
        assert kv == alt_ports(cluster, "kv")
        used = addresses_in_use(cluster)
        assert used[ALT].get("kv", 0) >= 2 and used[ALT].get("http", 0) >= 1
        # the internal address carries no HTTP request, and no KV connection
        # beyond the bootstrap one to the seed
        assert used.get("127.0.0.1", {}).get("http", 0) == 0
        assert used.get("127.0.0.1", {}).get("kv", 0) <= 1
    finally:
        b.close()


@pytest.mark.parametrize("network", ["default", "auto"])
def test_internal_addresses_with_default_and_auto_from_inside(cluster, network):
    wait_idle(cluster)
    b = Bucket(cluster.connstr_for("default", network=network), operation_timeout=LONG, **ADMIN)
    try:
        exercise(b)
        assert {n.rsplit(":", 1)[0] for n in b.server_nodes} == {"127.0.0.1"}
        assert ALT not in addresses_in_use(cluster)
    finally:
        b.close()


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_auto_picks_external_when_bootstrapping_from_outside(cluster, flavour):
    wait_idle(cluster)
    seed = cluster.info["nodes"][0]["alt_ports"]["kv"]
    b = FLAVOURS[flavour]("couchbase://%s:%d/default" % (ALT, seed), operation_timeout=LONG, **ADMIN)
    try:
        exercise(b)
        assert sorted(int(n.rsplit(":", 1)[1]) for n in b.server_nodes) == alt_ports(cluster, "kv")
        assert "127.0.0.1" not in addresses_in_use(cluster)
    finally:
        b.close()


def test_auto_over_http_bootstrap_from_outside(cluster):
    wait_idle(cluster)
    mgmt = cluster.info["nodes"][0]["alt_ports"]["mgmt"]
    b = Bucket("couchbase://%s:%d=http/default?bootstrap_on=http" % (ALT, mgmt), operation_timeout=LONG, **ADMIN)
    try:
        exercise(b)
        assert sorted(int(n.rsplit(":", 1)[1]) for n in b.server_nodes) == alt_ports(cluster, "kv")
        assert "127.0.0.1" not in addresses_in_use(cluster)
    finally:
        b.close()


def test_network_default_from_outside_keeps_the_nodes_own_ports(cluster):
    """Bootstrapping through the alternate address with network=default:
    the config's own ports are used (the node that served it at the address
    used, ``$HOST``), never the alternate ones."""
    wait_idle(cluster)
    seed = cluster.info["nodes"][0]["alt_ports"]["kv"]
    b = Bucket("couchbase://%s:%d/default?network=default" % (ALT, seed), operation_timeout=LONG, **ADMIN)
    try:
        assert sorted(int(n.rsplit(":", 1)[1]) for n in b.server_nodes) == \
            sorted(node["ports"]["kv"] for node in cluster.info["nodes"])
    finally:
        b.close()

"""The emulated cluster's state: nodes, buckets, users, vBucket maps, configs.

Everything here is plain data and pure decisions; the servers in
:mod:`.kvserver` and :mod:`.httpd` read it, and the fault-injection controls
change it. Every topology change bumps the cluster's config revision, so
clients can tell newer configs from older ones (spec/cluster-config.md §6).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zlib
from typing import Any, Dict, List, Optional, Tuple

from couchbase_core.mock.store import CasSource, Clock, VBucket

__all__ = ["Node", "Bucket", "User", "Cluster", "vbucket_of", "ACTIVE", "FAILED", "STOPPED", "SERVER_VERSION",
           "MEMCACHED_VERSION"]

#: The Couchbase Server version every node reports (REST ``version`` and
#: ``implementationVersion``, the VERSION command, STAT ``version``). It is
#: the release whose feature set the emulator matches: durable writes,
#: enhanced prepared statements, create-as-deleted sub-document writes (6.5
#: and 6.6), but no scopes and collections (7.0). A few later KV features that
#: need no collections are granted when a client asks for them in HELLO
#: (PreserveTtl, SubdocReplicaRead): see docs/mock.md.
SERVER_VERSION = "6.6.0-mock"
#: ns_server's cluster compatibility number for that version (major << 16 | minor).
CLUSTER_COMPATIBILITY = 6 * 0x10000 + 6
#: What a memcached bucket's node reports (VERSION, STAT): the memcached it stands for.
MEMCACHED_VERSION = "1.6.18"

ACTIVE = "active"      # serving
FAILED = "failed"      # failed over: no longer owns vBuckets
STOPPED = "stopped"    # its process is "down": listeners closed

#: Ports of one node, by service name as in ``nodesExt[].services``.
SERVICES = ("mgmt", "kv", "capi", "n1ql", "cbas", "fts")
TLS_SERVICES = {"mgmt": "mgmtSSL", "kv": "kvSSL", "capi": "capiSSL", "n1ql": "n1qlSSL", "cbas": "cbasSSL",
                "fts": "ftsSSL"}


def vbucket_of(key: bytes, num_vbuckets: int) -> int:
    """The vBucket of ``key`` (CRC32, spec/cluster-config.md §3)."""
    return ((zlib.crc32(key) >> 16) & 0x7FFF) % num_vbuckets


class Node:
    """One emulated server."""

    def __init__(self, index: int, host: str = "127.0.0.1") -> None:
        self.index = index
        self.host = host
        self.ports: Dict[str, int] = {}
        #: Alternate address (``alternateAddresses``, for clients outside a
        #: NAT): the host and the ports of extra listeners serving this node.
        self.alt_host: Optional[str] = None
        self.alt_ports: Dict[str, int] = {}
        self.state = ACTIVE
        #: Nodes added but not yet rebalanced in serve no bucket yet.
        self.member = True
        self.otp = "ns_1@node%d" % index

    def authority(self, service: str = "kv") -> str:
        """``host:port`` of a service."""
        return "%s:%d" % (self.host, self.ports[service])

    def __repr__(self) -> str:
        return "<Node %d %s kv=%s>" % (self.index, self.state, self.ports.get("kv"))


class User:
    """An RBAC user: ``roles`` is a list of ``(role, bucket or None)``."""

    def __init__(self, name: str, password: str, roles: List[Tuple[str, Optional[str]]],
                 full_name: str = "", domain: str = "local") -> None:
        self.name = name
        self.password = password
        self.roles = roles
        self.full_name = full_name
        #: "local" (authenticated here) or "external" (LDAP...: no password here)
        self.domain = domain

    def is_admin(self) -> bool:
        """Full administrator (may use any bucket)."""
        return any(role == "admin" for role, _b in self.roles)

    def bucket_access(self, bucket: str) -> Optional[str]:
        """``'rw'``, ``'ro'`` or None for ``bucket``."""
        best = None
        for role, target in self.roles:
            if role == "admin" or (target in (bucket, "*") and role in ("bucket_full_access", "bucket_admin",
                                                                          "data_writer")):
                return "rw"
            if target in (bucket, "*") and role in ("data_reader", "ro_admin", "query_select"):
                best = "ro"
            if role == "ro_admin" and target is None:
                best = "ro"
        return best

    def roles_text(self) -> str:
        """Roles in the REST form ``role[bucket],role``."""
        return ",".join("%s[%s]" % (r, b) if b else r for r, b in self.roles)

    def to_json(self) -> dict:
        """The /settings/rbac/users entry."""
        return {"id": self.name, "domain": self.domain, "name": self.full_name,
                "roles": [{"role": r, **({"bucket_name": b} if b else {})} for r, b in self.roles]}


class Bucket:
    """One bucket: its settings, its data and (for Couchbase buckets) its
    vBucket map over the nodes that serve it."""

    def __init__(self, name: str, btype: str = "couchbase", password: str = "", replicas: int = 1,
                 num_vbuckets: int = 64, flush_enabled: bool = True, ram_quota_mb: int = 100) -> None:
        if btype == "membase":
            btype = "couchbase"
        if btype not in ("couchbase", "memcached", "ephemeral"):
            raise ValueError("unknown bucket type %r" % btype)
        self.name = name
        self.type = btype
        self.password = password
        self.replicas = replicas if btype != "memcached" else 0
        self.num_vbuckets = num_vbuckets if btype != "memcached" else 0
        self.flush_enabled = flush_enabled
        self.ram_quota_mb = ram_quota_mb
        #: Settings the server reports and the emulator only stores.
        self.eviction_policy = "noEviction" if btype == "ephemeral" else "valueOnly"
        self.conflict_resolution = "seqno"
        self.uuid = uuid.uuid4().hex
        #: Nodes holding vBuckets (indexes into the vBucket map refer to it).
        self.servers: List[Node] = []
        self.vbmap: List[List[int]] = []
        #: Couchbase buckets: one store per vBucket. Memcached: one per node.
        self.vbuckets: List[VBucket] = [VBucket(i) for i in range(self.num_vbuckets)]
        self.node_stores: Dict[int, VBucket] = {}
        #: JSON text of design documents, managed by the views service.
        self.design_docs: Any = None

    @property
    def is_memcached(self) -> bool:
        """A memcached bucket (ketama, no vBuckets)."""
        return self.type == "memcached"

    def store_for(self, node: Node, key: bytes) -> Tuple[int, VBucket]:
        """(vbucket, store) where ``key`` lives."""
        if self.is_memcached:
            store = self.node_stores.get(node.index)
            if store is None:
                store = self.node_stores[node.index] = VBucket(0)
            return 0, store
        vb = vbucket_of(key, self.num_vbuckets)
        return vb, self.vbuckets[vb]

    def server_index(self, node: Node) -> int:
        """Index of ``node`` in the server list, or -1."""
        for i, n in enumerate(self.servers):
            if n is node:
                return i
        return -1

    def owner(self, vb: int, copy: int = 0) -> Optional[Node]:
        """The node holding copy ``copy`` (0 = active) of vBucket ``vb``."""
        if not 0 <= vb < len(self.vbmap):
            return None
        row = self.vbmap[vb]
        if copy >= len(row) or row[copy] < 0:
            return None
        return self.servers[row[copy]]

    def rebuild_map(self, servers: List[Node], previous: Optional[List[List[int]]] = None) -> None:
        """Spread the vBuckets evenly over ``servers`` (actives round-robin,
        replicas on the following nodes)."""
        self.servers = list(servers)
        n = len(self.servers)
        if self.is_memcached:
            self.vbmap = []
            return
        rows = []
        for vb in range(self.num_vbuckets):
            if n == 0:
                rows.append([-1] * (self.replicas + 1))
                continue
            active = vb % n
            row = [active]
            for r in range(self.replicas):
                row.append((active + r + 1) % n if r + 1 < n else -1)
            rows.append(row)
        self.vbmap = rows

    def all_items(self, now: float):  # type: ignore[no-untyped-def]
        """Every live (key, item) of the bucket."""
        stores = self.vbuckets if not self.is_memcached else list(self.node_stores.values())
        for store in stores:
            yield from store.live_items(now)

    def flush(self) -> None:
        """Remove every document."""
        for store in self.vbuckets:
            store.clear()
        for store in self.node_stores.values():
            store.clear()


class Cluster:
    """The whole emulated cluster."""

    def __init__(self, num_nodes: int = 1, host: str = "127.0.0.1") -> None:
        self.host = host
        self.nodes: List[Node] = [Node(i, host) for i in range(num_nodes)]
        self.buckets: Dict[str, Bucket] = {}
        self.users: Dict[str, User] = {}
        #: users of the external domain: listed and managed, never authenticated here
        self.external_users: Dict[str, User] = {}
        self.clock = Clock()
        self.cas = CasSource()
        self.rev = 1
        self.rev_epoch = 1
        self.uuid = uuid.uuid4().hex
        #: Answer GET_CLUSTER_CONFIG (fault: switch CCCP off).
        self.cccp_enabled = True
        #: Seconds before a mutation counts as persisted / replicated.
        self.persist_delay = 0.0
        self.replicate_delay = 0.0
        self.admin_user = "Administrator"
        self.admin_password = "password"
        self.tls = False
        #: Client certificate authentication (a ``certauth.CertAuthSettings``), or None.
        self.cert_auth: Any = None
        self.cluster_capabilities = {"n1ql": ["enhancedPreparedStatements"]}
        #: Name of the network under which nodes publish their alternate
        #: addresses (``nodesExt[].alternateAddresses.<name>``).
        self.alternate_network = "external"
        #: Called with no argument after every config change (servers push it).
        self.listeners: List[Any] = []
        self.scram_iterations = 4096
        self._salts: Dict[str, bytes] = {}

    # ------------------------------------------------------------- building

    def add_bucket(self, bucket: Bucket) -> Bucket:
        """Add a bucket served by every member node."""
        if bucket.name in self.buckets:
            raise ValueError("bucket %r exists" % bucket.name)
        self.buckets[bucket.name] = bucket
        bucket.rebuild_map(self.data_nodes())
        self.bump()
        return bucket

    def remove_bucket(self, name: str) -> None:
        """Delete a bucket and its data."""
        del self.buckets[name]
        self.bump()

    def add_user(self, user: User) -> None:
        """Add or replace an RBAC user."""
        self.users[user.name] = user
        self._salts.pop(user.name, None)

    def data_nodes(self) -> List[Node]:
        """Member nodes that hold data (not failed over)."""
        return [n for n in self.nodes if n.member and n.state != FAILED]

    def bump(self) -> None:
        """A config changed: new revision, tell the listeners."""
        self.rev += 1
        for fn in list(self.listeners):
            try:
                fn()
            except Exception:  # pragma: no cover - a listener must not break the change
                pass

    # ------------------------------------------------------------- topology

    def failover(self, index: int) -> None:
        """Fail over a node: its replicas elsewhere become active, it leaves
        every bucket's server list."""
        node = self.nodes[index]
        node.state = FAILED
        for bucket in self.buckets.values():
            if bucket.is_memcached:
                bucket.rebuild_map(self.data_nodes())
                continue
            old_servers = bucket.servers
            keep = [n for n in old_servers if n is not node]
            new_index = {id(n): i for i, n in enumerate(keep)}
            rows = []
            for row in bucket.vbmap:
                nodes = [old_servers[i] if i >= 0 else None for i in row]
                survivors = [n for n in nodes if n is not None and n is not node]
                new_row = [new_index[id(n)] for n in survivors]
                new_row += [-1] * (len(row) - len(new_row))
                rows.append(new_row)
            bucket.servers = keep
            bucket.vbmap = rows
        self.bump()

    def add_node(self, rebalance: bool = True) -> Node:
        """Add a node (its ports are assigned by the runtime); with
        ``rebalance`` it takes its share of vBuckets at once."""
        node = Node(len(self.nodes), self.host)
        node.member = rebalance
        self.nodes.append(node)
        if rebalance:
            self.rebalance()
        else:
            self.bump()
        return node

    def rebalance(self) -> None:
        """Bring every member node in, failed-over nodes out, and spread the
        vBuckets evenly again (data stays with its vBucket)."""
        for node in self.nodes:
            if node.state != FAILED:
                node.member = node.member or True
        for bucket in self.buckets.values():
            bucket.rebuild_map(self.data_nodes())
        self.bump()

    def remove_node(self, index: int) -> None:
        """Rebalance a node out of the cluster."""
        node = self.nodes[index]
        node.member = False
        for bucket in self.buckets.values():
            bucket.rebuild_map(self.data_nodes())
        self.bump()

    # -------------------------------------------------------------- configs

    def node_services(self, node: Node) -> Dict[str, int]:
        """``nodesExt[].services`` of a node."""
        services = {name: node.ports[name] for name in SERVICES if name in node.ports}
        for tls_name in TLS_SERVICES.values():
            if tls_name in node.ports:
                services[tls_name] = node.ports[tls_name]
        return services

    def alternate_addresses(self, node: Node) -> Optional[Dict[str, Any]]:
        """``nodesExt[].alternateAddresses`` of a node, or None when it has none."""
        if not node.alt_host:
            return None
        return {self.alternate_network: {"hostname": node.alt_host, "ports": dict(node.alt_ports)}}

    def bucket_config(self, bucket: Bucket, this_node: Optional[Node] = None, host_placeholder: bool = True) -> dict:
        """The terse bucket config (CCCP, NMV bodies, ``/b/`` and ``/bs/``).

        The node that serves the config is written as ``$HOST``, as real
        servers do; clients replace it with the address they used.
        """
        def host_of(node: Node) -> str:
            return "$HOST" if (host_placeholder and node is this_node) else node.host

        nodes = []
        for node in bucket.servers:
            entry: Dict[str, Any] = {
                "hostname": "%s:%d" % (host_of(node), node.ports["mgmt"]),
                "ports": {"direct": node.ports["kv"]},
            }
            if not bucket.is_memcached:
                entry["couchApiBase"] = "http://%s:%d/%s%%2B%s" % (host_of(node), node.ports["capi"],
                                                                   bucket.name, bucket.uuid)
            if "kvSSL" in node.ports:
                entry["ports"]["httpsMgmt"] = node.ports.get("mgmtSSL")
                entry["ports"]["httpsCAPI"] = node.ports.get("capiSSL")
            nodes.append(entry)
        nodes_ext = []
        for node in self.nodes:
            if not node.member or node.state == FAILED:
                continue
            ext: Dict[str, Any] = {"services": self.node_services(node)}
            if node is this_node and host_placeholder:
                ext["thisNode"] = True
            else:
                ext["hostname"] = node.host
            alternate = self.alternate_addresses(node)
            if alternate:
                ext["alternateAddresses"] = alternate
            nodes_ext.append(ext)
        config: Dict[str, Any] = {
            "rev": self.rev,
            "revEpoch": self.rev_epoch,
            "name": bucket.name,
            "uuid": bucket.uuid,
            "nodeLocator": "ketama" if bucket.is_memcached else "vbucket",
            "bucketCapabilitiesVer": "",
            "bucketCapabilities": (["cbhello", "nodesExt", "touch"] if bucket.is_memcached else
                                   ["durableWrite", "couchapi", "dcp", "cbhello", "touch", "cccp",
                                    "xdcrCheckpointing", "nodesExt", "xattr", "subdoc.ReplicaRead"]),
            "clusterCapabilitiesVer": [1, 0],
            "clusterCapabilities": self.cluster_capabilities,
            "nodes": nodes,
            "nodesExt": nodes_ext,
        }
        if not bucket.is_memcached:
            config["ddocs"] = {"uri": "/pools/default/buckets/%s/ddocs" % bucket.name}
            config["vBucketServerMap"] = {
                "hashAlgorithm": "CRC",
                "numReplicas": bucket.replicas,
                "serverList": ["%s:%d" % (host_of(n), n.ports["kv"]) for n in bucket.servers],
                "vBucketMap": [list(row) for row in bucket.vbmap],
            }
        return config

    def cluster_config(self, this_node: Optional[Node] = None) -> dict:
        """A cluster-level config (no bucket selected)."""
        nodes_ext = []
        for node in self.nodes:
            if not node.member or node.state == FAILED:
                continue
            ext: Dict[str, Any] = {"services": self.node_services(node)}
            if node is this_node:
                ext["thisNode"] = True
            else:
                ext["hostname"] = node.host
            alternate = self.alternate_addresses(node)
            if alternate:
                ext["alternateAddresses"] = alternate
            nodes_ext.append(ext)
        return {"rev": self.rev, "revEpoch": self.rev_epoch, "nodesExt": nodes_ext,
                "clusterCapabilitiesVer": [1, 0], "clusterCapabilities": self.cluster_capabilities}

    def config_bytes(self, bucket: Optional[Bucket], this_node: Optional[Node] = None) -> bytes:
        """The terse config as compact JSON bytes."""
        cfg = self.bucket_config(bucket, this_node) if bucket is not None else self.cluster_config(this_node)
        return json.dumps(cfg, separators=(",", ":")).encode("utf-8")

    def full_bucket_config(self, bucket: Bucket, this_node: Optional[Node] = None) -> dict:
        """``/pools/default/buckets/<b>``: the terse config plus the full fields."""
        cfg = self.bucket_config(bucket, this_node, host_placeholder=False)
        cfg.update({
            "bucketType": "membase" if bucket.type == "couchbase" else bucket.type,
            "authType": "sasl",
            "saslPassword": bucket.password,
            "replicaNumber": bucket.replicas,
            "evictionPolicy": bucket.eviction_policy,
            "conflictResolutionType": bucket.conflict_resolution,
            "compressionMode": "passive",
            "maxTTL": 0,
            "uri": "/pools/default/buckets/%s?bucket_uuid=%s" % (bucket.name, bucket.uuid),
            "streamingUri": "/pools/default/bucketsStreaming/%s?bucket_uuid=%s" % (bucket.name, bucket.uuid),
            "quota": {"ram": bucket.ram_quota_mb * 1024 * 1024, "rawRAM": bucket.ram_quota_mb * 1024 * 1024},
            "controllers": ({"flush": "/pools/default/buckets/%s/controller/doFlush" % bucket.name}
                            if bucket.flush_enabled else {}),
            "stats": {"uri": "/pools/default/buckets/%s/stats" % bucket.name},
            "basicStats": {"itemCount": sum(1 for _ in bucket.all_items(self.clock.now())),
                           "opsPerSec": 0, "diskUsed": 0, "memUsed": 0, "quotaPercentUsed": 0},
        })
        if not bucket.is_memcached:
            cfg["durabilityMinLevel"] = "none"
            cfg["replicaIndex"] = False
        cfg["nodes"] = [self.full_node(n, bucket) for n in bucket.servers]
        return cfg

    def full_node(self, node: Node, bucket: Optional[Bucket] = None) -> dict:
        """A node entry of the full configs."""
        entry = {
            "hostname": "%s:%d" % (node.host, node.ports["mgmt"]),
            "status": "healthy" if node.state == ACTIVE else "unhealthy",
            "clusterMembership": "active" if node.member and node.state != FAILED else "inactiveFailed",
            "otpNode": node.otp,
            "thisNode": False,
            "version": SERVER_VERSION,
            "clusterCompatibility": CLUSTER_COMPATIBILITY,
            "os": "x86_64-unknown-linux-gnu",
            "services": ["kv", "n1ql", "index", "cbas", "fts"],
            "ports": {"direct": node.ports["kv"], "httpsMgmt": node.ports.get("mgmtSSL", 0),
                      "httpsCAPI": node.ports.get("capiSSL", 0)},
        }
        if bucket is not None and not bucket.is_memcached:
            entry["couchApiBase"] = "http://%s:%d/%s%%2B%s" % (node.host, node.ports["capi"], bucket.name,
                                                               bucket.uuid)
        return entry

    # ----------------------------------------------------------------- auth

    def scram_salt(self, user: str) -> bytes:
        """A stable random salt per user (SCRAM)."""
        salt = self._salts.get(user)
        if salt is None:
            salt = self._salts[user] = os.urandom(16)
        return salt

    def check_password(self, user: str, password: str) -> Optional[Tuple[str, Optional[Bucket]]]:
        """Who ``user``/``password`` is: ``("rbac", None)`` for an RBAC user,
        ``("bucket", bucket)`` for a legacy bucket-name login, or None."""
        record = self.users.get(user)
        if record is not None and _same(record.password, password):
            return "rbac", None
        if user == self.admin_user and _same(self.admin_password, password):
            return "admin", None
        bucket = self.buckets.get(user)
        if bucket is not None and _same(bucket.password, password):
            return "bucket", bucket
        return None

    def password_of(self, user: str) -> Optional[str]:
        """The password a SCRAM exchange must prove, or None if unknown."""
        record = self.users.get(user)
        if record is not None:
            return record.password
        if user == self.admin_user:
            return self.admin_password
        bucket = self.buckets.get(user)
        if bucket is not None:
            return bucket.password
        return None


def _same(a: str, b: str) -> bool:
    return hashlib.sha256(a.encode()).digest() == hashlib.sha256(b.encode()).digest()

"""Running the emulated cluster on one asyncio loop.

:class:`MockApp` owns the :class:`~couchbase_core.mock.cluster.Cluster` and a
:class:`NodeRuntime` per node: the node's KV listener (and TLS listener),
its HTTP services (management, views, query, analytics, search) and its fault state. All nodes
share one process and listen on 127.0.0.1 only; ports are free ones unless
fixed ones are asked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from typing import Any, Dict, List, Optional, Set, Tuple

from couchbase_core.mock import kvops  # noqa: F401  (registers the data commands)
from couchbase_core.mock.certauth import CertAuthSettings
from couchbase_core.mock.cluster import ACTIVE, FAILED, STOPPED, Bucket, Cluster, Node, User
from couchbase_core.mock.faults import NodeFaults
from couchbase_core.mock.kvserver import KVSession

__all__ = ["MockApp", "NodeRuntime", "ClusterOptions", "BucketOptions"]

log = logging.getLogger("couchbase_core.mock")


class BucketOptions:
    """How to create a bucket."""

    def __init__(self, name: str, type: str = "couchbase", password: str = "", replicas: Optional[int] = None,  # noqa: A002
                 num_vbuckets: Optional[int] = None, flush_enabled: bool = True) -> None:
        self.name = name
        self.type = type
        self.password = password
        self.replicas = replicas
        self.num_vbuckets = num_vbuckets
        self.flush_enabled = flush_enabled

    @classmethod
    def parse(cls, text: str) -> "BucketOptions":
        """``name[:type[:password]]`` as the command line takes it."""
        parts = text.split(":", 2)
        name = parts[0]
        btype = parts[1] if len(parts) > 1 and parts[1] else "couchbase"
        password = parts[2] if len(parts) > 2 else ""
        return cls(name, btype, password)


class ClusterOptions:
    """Everything the emulator is started with."""

    def __init__(self, nodes: int = 1, buckets: Optional[List[BucketOptions]] = None, replicas: int = 1,
                 vbuckets: int = 64, users: Optional[List[User]] = None, base_port: Optional[int] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None, host: str = "127.0.0.1",
                 admin_user: str = "Administrator", admin_password: str = "password",
                 client_cert: Optional[CertAuthSettings] = None,
                 alternate_host: Optional[str] = None) -> None:
        self.nodes = nodes
        self.buckets = buckets if buckets is not None else [BucketOptions("default")]
        self.replicas = replicas
        self.vbuckets = vbuckets
        self.users = users or []
        self.base_port = base_port
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.host = host
        self.admin_user = admin_user
        self.admin_password = admin_password
        #: Client certificate authentication on the TLS ports (needs ``tls_cert``).
        self.client_cert = client_cert
        #: When set, every node also listens on this address (on ports of
        #: its own) and publishes it as its ``external`` alternate address.
        self.alternate_host = alternate_host


#: Services of a node: name -> port offset when fixed ports are used.
_PORT_OFFSETS = {"mgmt": 0, "capi": 1, "n1ql": 2, "kv": 3, "mgmtSSL": 4, "capiSSL": 5, "n1qlSSL": 6, "kvSSL": 7,
                 "cbas": 8, "cbasSSL": 9, "fts": 10, "ftsSSL": 11}
_PORTS_PER_NODE = 12


class NodeRuntime:
    """The listeners and faults of one node."""

    def __init__(self, app: "MockApp", node: Node) -> None:
        self.app = app
        self.node = node
        self.cluster = app.cluster
        self.faults = NodeFaults()
        self.sessions: Set[KVSession] = set()
        self.http_connections: Set[Any] = set()
        self._servers: Dict[str, Any] = {}
        #: While the node is stopped: a socket bound (never listening) to
        #: each of its ports, so connections are refused as by a dead node
        #: but no other process can take the port before the restart.
        self._held: Dict[str, socket.socket] = {}

    def _fixed_port(self, service: str) -> int:
        base = self.app.options.base_port
        if base is None:
            return self.node.ports.get(service, 0)
        return base + self.node.index * _PORTS_PER_NODE + _PORT_OFFSETS[service]

    async def start(self) -> None:
        """Open every listener (on the same ports again after a restart)."""
        host = self.node.host
        loop = asyncio.get_running_loop()
        tls = self.app.ssl_context
        kv_services = [("kv", None)] + ([("kvSSL", tls)] if tls is not None else [])
        for service, context in kv_services:
            self._release(service)
            server = await loop.create_server(lambda: KVSession(self), host, self._fixed_port(service),
                                              ssl=context, reuse_address=True)
            self._servers[service] = server
            self.node.ports[service] = server.sockets[0].getsockname()[1]
        from couchbase_core.mock import httpd

        http_services: List[Tuple[str, Optional[ssl.SSLContext]]] = [("mgmt", None), ("capi", None), ("n1ql", None)]
        http_services += [("cbas", None), ("fts", None)]
        if tls is not None:
            http_services += [("mgmtSSL", tls), ("capiSSL", tls), ("n1qlSSL", tls)]
            http_services += [("cbasSSL", tls), ("ftsSSL", tls)]
        for service, context in http_services:
            self._release(service)
            router = self.app.router_for(service.replace("SSL", ""), self)
            server = await httpd.serve(router, host, self._fixed_port(service), context, self.http_connections)
            self._servers[service] = server
            self.node.ports[service] = server.sockets[0].getsockname()[1]
        alt_host = self.app.options.alternate_host
        if alt_host:
            await self._start_alternate(alt_host, kv_services, http_services)
        if self.node.state == STOPPED:
            self.node.state = ACTIVE

    async def _start_alternate(self, alt_host: str, kv_services: List[Any], http_services: List[Any]) -> None:
        """Extra listeners on the alternate address: the same node, reached
        at another address and other ports (what a NAT in front of a real
        cluster does), published in ``alternateAddresses``."""
        from couchbase_core.mock import httpd

        loop = asyncio.get_running_loop()
        node = self.node
        node.alt_host = alt_host
        for service, context in kv_services:
            server = await loop.create_server(lambda: KVSession(self), alt_host, node.alt_ports.get(service, 0),
                                              ssl=context, reuse_address=True)
            self._servers["alt:" + service] = server
            node.alt_ports[service] = server.sockets[0].getsockname()[1]
        for service, context in http_services:
            router = self.app.router_for(service.replace("SSL", ""), self)
            server = await httpd.serve(router, alt_host, node.alt_ports.get(service, 0), context,
                                       self.http_connections)
            self._servers["alt:" + service] = server
            node.alt_ports[service] = server.sockets[0].getsockname()[1]

    def drop_connections(self) -> int:
        """Close every client connection of this node (KV and HTTP)."""
        count = 0
        for session in list(self.sessions):
            session.close()
            count += 1
        for conn in list(self.http_connections):
            conn.close()
            count += 1
        return count

    async def stop(self, hold_ports: bool = False) -> None:
        """The node goes down: listeners closed, connections dropped. With
        ``hold_ports`` (a node that may be restarted) its ports stay reserved
        (see :attr:`_held`); otherwise they are let go."""
        for server in self._servers.values():
            server.close()
        self.drop_connections()
        for server in self._servers.values():
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - closing is best effort
                pass
        services = list(self._servers)
        self._servers.clear()
        if hold_ports:
            for service in services:
                self._hold(service)
        else:
            for service in list(self._held):
                self._release(service)
        if self.node.state != FAILED:
            self.node.state = STOPPED

    def _hold(self, service: str) -> None:
        port = self.node.ports.get(service)
        if not port or service in self._held:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.node.host, port))
        except OSError:  # best effort: the restart binds the port again anyway
            sock.close()
            return
        self._held[service] = sock

    def _release(self, service: str) -> None:
        sock = self._held.pop(service, None)
        if sock is not None:
            sock.close()


class MockApp:
    """The running emulator: cluster state, node runtimes, control server."""

    def __init__(self, options: Optional[ClusterOptions] = None) -> None:
        self.options = options or ClusterOptions()
        opts = self.options
        cluster = self.cluster = Cluster(opts.nodes, opts.host)
        cluster.admin_user = opts.admin_user
        cluster.admin_password = opts.admin_password
        for user in opts.users:
            cluster.add_user(user)
        self.ssl_context: Optional[ssl.SSLContext] = None
        if opts.tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(opts.tls_cert, opts.tls_key)
            if opts.client_cert is not None:
                opts.client_cert.apply(context)
                cluster.cert_auth = opts.client_cert
            self.ssl_context = context
            cluster.tls = True
        self.runtimes: List[NodeRuntime] = [NodeRuntime(self, n) for n in cluster.nodes]
        self._pending_buckets = list(opts.buckets)
        self.control_server: Any = None
        self.control_port = 0
        self.services: Dict[str, Any] = {}
        self._config_waiters: List[asyncio.Event] = []
        cluster.listeners.append(self._config_changed)

    # -------------------------------------------------------------- lifecycle

    async def start(self, control_port: int = 0) -> None:
        """Start every node and the control endpoint."""
        for runtime in self.runtimes:
            await runtime.start()
        for spec in self._pending_buckets:
            self.create_bucket(spec)
        self._pending_buckets = []
        from couchbase_core.mock import control, httpd

        self.control_server = await httpd.serve(control.router(self), self.options.host, control_port, None, set())
        self.control_port = self.control_server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop everything."""
        for runtime in self.runtimes:
            await runtime.stop()
        if self.control_server is not None:
            self.control_server.close()

    def create_bucket(self, spec: BucketOptions) -> Bucket:
        """Create a bucket from options (defaults from the cluster options)."""
        replicas = self.options.replicas if spec.replicas is None else spec.replicas
        vbuckets = self.options.vbuckets if spec.num_vbuckets is None else spec.num_vbuckets
        bucket = Bucket(spec.name, spec.type, spec.password, replicas, vbuckets, spec.flush_enabled)
        return self.cluster.add_bucket(bucket)

    def router_for(self, service: str, runtime: NodeRuntime) -> Any:
        """The HTTP router of a node's service (``mgmt``, ``capi``, ``n1ql``, ``cbas``, ``fts``)."""
        if service == "mgmt":
            from couchbase_core.mock import mgmt

            return mgmt.router(self, runtime)
        if service == "capi":
            from couchbase_core.mock import capi

            return capi.router(self, runtime)
        if service == "cbas":
            from couchbase_core.mock import analytics

            return analytics.router(self, runtime)
        if service == "fts":
            from couchbase_core.mock import fts

            return fts.router(self, runtime)
        from couchbase_core.mock import query

        return query.router(self, runtime)

    # --------------------------------------------------------- config changes

    def _config_changed(self) -> None:
        for runtime in self.runtimes:
            for session in list(runtime.sessions):
                session.push_config()
        waiters, self._config_waiters = self._config_waiters, []
        for event in waiters:
            event.set()

    async def wait_config_change(self) -> None:
        """Wait until the next config change (for streaming configs)."""
        event = asyncio.Event()
        self._config_waiters.append(event)
        await event.wait()

    # ------------------------------------------------------------- topology

    def runtime(self, index: int) -> NodeRuntime:
        """The runtime of node ``index``."""
        return self.runtimes[index]

    async def add_node(self, rebalance: bool = True) -> Node:
        """Start a new node; with ``rebalance`` it takes vBuckets at once."""
        node = self.cluster.add_node(rebalance=False)
        runtime = NodeRuntime(self, node)
        self.runtimes.append(runtime)
        await runtime.start()
        if rebalance:
            self.cluster.rebalance()
        else:
            self.cluster.bump()
        return node

    async def remove_node(self, index: int) -> None:
        """Rebalance a node out, then stop it."""
        self.cluster.remove_node(index)
        await self.runtimes[index].stop()

    async def stop_node(self, index: int) -> None:
        """Take a node down (it stays in the cluster map until failed over);
        its ports stay reserved for :meth:`restart_node`."""
        await self.runtimes[index].stop(hold_ports=True)

    async def restart_node(self, index: int) -> None:
        """Bring a stopped node back on its ports."""
        await self.runtimes[index].start()

    def failover(self, index: int) -> None:
        """Fail a node over."""
        self.cluster.failover(index)

    # ----------------------------------------------------------------- info

    def info(self) -> Dict[str, Any]:
        """Where everything is (the ``--json`` line)."""
        cluster = self.cluster
        nodes = [n for n in cluster.nodes if n.member and n.state != FAILED]
        tls = cluster.tls
        hosts = ",".join("%s:%d" % (n.host, n.ports["kv"]) for n in nodes)
        first = nodes[0] if nodes else cluster.nodes[0]
        info: Dict[str, Any] = {
            "connstr": "couchbase://%s" % hosts,
            "http_port": first.ports["mgmt"],
            "http_ports": [n.ports["mgmt"] for n in nodes],
            "kv_ports": {name: [n.ports["kv"] for n in (b.servers or nodes)] for name, b in cluster.buckets.items()},
            "views_port": first.ports["capi"],
            "query_port": first.ports["n1ql"],
            "analytics_port": first.ports["cbas"],
            "search_port": first.ports["fts"],
            "control_url": "http://%s:%d/mock" % (self.options.host, self.control_port),
            "buckets": {name: {"type": b.type, "replicas": b.replicas, "vbuckets": b.num_vbuckets}
                        for name, b in cluster.buckets.items()},
            "nodes": [{"index": n.index, "state": n.state, "member": n.member, "ports": dict(n.ports),
                       "connections": self._open_connections(n.index),
                       "connections_by_address": self._connections_by_address(n.index),
                       "alt_host": n.alt_host, "alt_ports": dict(n.alt_ports)}
                      for n in cluster.nodes],
        }
        if tls:
            info["connstr_tls"] = "couchbases://%s" % ",".join("%s:%d" % (n.host, n.ports["kvSSL"]) for n in nodes)
        return info

    def _open_connections(self, index: int) -> int:
        """Client connections (KV and HTTP) a node holds open right now."""
        if index >= len(self.runtimes):
            return 0
        runtime = self.runtimes[index]
        return len(runtime.sessions) + len(runtime.http_connections)

    def _connections_by_address(self, index: int) -> Dict[str, Dict[str, int]]:
        """Open client connections of a node by the local address they
        reached (``{"127.0.0.2": {"kv": 2, "http": 1}}``): which of its
        addresses clients use."""
        out: Dict[str, Dict[str, int]] = {}
        if index >= len(self.runtimes):
            return out
        runtime = self.runtimes[index]
        ends = [("kv", getattr(s, "transport", None)) for s in runtime.sessions]
        ends += [("http", getattr(c, "writer", None)) for c in runtime.http_connections]
        for kind, end in ends:
            name = end.get_extra_info("sockname") if end is not None else None
            address = name[0] if name else "?"
            counts = out.setdefault(address, {})
            counts[kind] = counts.get(kind, 0) + 1
        return out

    def info_json(self) -> str:
        """:meth:`info` as one line of JSON."""
        return json.dumps(self.info(), separators=(",", ":"))


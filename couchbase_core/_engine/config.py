"""Key -> node mapping for memcached-style clusters: the ketama continuum.

spec/cluster-config.md §5: each server, named by its ``host:port`` authority,
owns 160 points on a 32-bit circle (40 MD5 digests, four little-endian
uint32 each); a key belongs to the server owning the first point at or after
the little-endian uint32 of the first four bytes of the key's MD5, wrapping
around at the end.
"""

from __future__ import annotations

import bisect
import hashlib
import json as _json
import struct
import zlib as _zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["Ketama", "authority", "BucketConfig", "ServiceNode", "ConfigError", "guess_network",
           "alternate_address"]

_FOUR_LE = struct.Struct("<IIII")
_ONE_LE = struct.Struct("<I")

#: Points per server = POINTS_PER_HASH * HASHES_PER_SERVER.
HASHES_PER_SERVER = 40


def authority(host: str, port: int) -> str:
    """The ``host:port`` name of a server (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


class Ketama:
    """A ketama continuum over a list of server authorities.

    ``servers`` is kept sorted byte-wise; :meth:`server_for` returns an index
    into that sorted list.
    """

    __slots__ = ("servers", "_points", "_owners")

    def __init__(self, authorities: Sequence[str]) -> None:
        if not authorities:
            raise ValueError("a continuum needs at least one server")
        self.servers: List[str] = sorted(authorities, key=lambda a: a.encode("utf-8"))
        points: List[Tuple[int, int]] = []
        for index, name in enumerate(self.servers):
            for h in range(HASHES_PER_SERVER):
                digest = hashlib.md5(("%s-%d" % (name, h)).encode("utf-8")).digest()
                for point in _FOUR_LE.unpack(digest):
                    points.append((point, index))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [i for _, i in points]

    @property
    def points(self) -> List[Tuple[int, str]]:
        """Every ``(point, authority)`` on the circle, ascending."""
        return [(p, self.servers[i]) for p, i in zip(self._points, self._owners)]

    @staticmethod
    def hash_key(key: bytes) -> int:
        """The key's position on the circle."""
        return _ONE_LE.unpack_from(hashlib.md5(key).digest())[0]

    def server_for(self, key: bytes) -> int:
        """Index (into :attr:`servers`) of the server that owns ``key``."""
        h = _ONE_LE.unpack_from(hashlib.md5(key).digest())[0]
        i = bisect.bisect_left(self._points, h)
        if i == len(self._points):
            i = 0
        return self._owners[i]


# --------------------------------------------------------------------------
# Cluster configs (spec/cluster-config.md §2, §6)
# --------------------------------------------------------------------------



class ConfigError(ValueError):
    """A config document that cannot be used."""


class ServiceNode:
    """One cluster node and the ports of its services (``nodesExt``)."""

    __slots__ = ("host", "services")

    def __init__(self, host: str, services: Dict[str, int]) -> None:
        self.host = host
        self.services = services

    def endpoint(self, service: str, tls: bool = False) -> Optional[Tuple[str, int]]:
        """(host, port) of ``service`` (``kv``, ``mgmt``, ``capi``, ``n1ql``,
        ``cbas``, ``fts``...; with TLS the port of ``<service>SSL``), or None."""
        port = self.services.get(service + "SSL" if tls else service)
        return (self.host, port) if port else None


def guess_network(raw: Dict[str, Any], source_host: str) -> str:
    """The network ``network=auto`` picks, as libcouchbase does: ``default``
    when a node's own ``hostname`` (as written in the config, before
    ``$HOST`` is replaced) is the host the config came from; else the name
    of the first network whose alternate hostname is that host; else
    ``default``."""
    source = source_host.strip("[]")
    nodes = raw.get("nodesExt")
    if not isinstance(nodes, list):
        return "default"
    for ext in nodes:
        if not isinstance(ext, dict):
            continue
        hostname = ext.get("hostname")
        if isinstance(hostname, str) and hostname.strip("[]") == source:
            return "default"
        alternates = ext.get("alternateAddresses")
        if isinstance(alternates, dict):
            for name, entry in alternates.items():
                if isinstance(entry, dict) and isinstance(entry.get("hostname"), str) \
                        and entry["hostname"].strip("[]") == source:
                    return str(name)
    return "default"


def alternate_address(ext: Dict[str, Any], network: str,
                      services: Dict[str, int]) -> Optional[Tuple[str, Dict[str, int]]]:
    """A ``nodesExt`` entry's address on ``network``: its alternate hostname
    and its service ports (the alternate ones, and the node's own ports for
    services the alternate entry does not list, as libcouchbase does), or
    None when the node publishes no (well-formed) address there."""
    alternates = ext.get("alternateAddresses")
    if not isinstance(alternates, dict):
        return None
    entry = alternates.get(network)
    if not isinstance(entry, dict) or not isinstance(entry.get("hostname"), str) or not entry["hostname"]:
        return None
    ports = dict(services)
    alt_ports = entry.get("ports")
    if isinstance(alt_ports, dict):
        for name, port in alt_ports.items():
            if type(port) is int and 0 < port < 65536:
                ports[str(name)] = port
    return entry["hostname"].strip("[]"), ports


def _replace_host(value: Any, host: str) -> Any:
    if isinstance(value, str):
        return value.replace("$HOST", host)
    if isinstance(value, list):
        return [_replace_host(v, host) for v in value]
    if isinstance(value, dict):
        return {k: _replace_host(v, host) for k, v in value.items()}
    return value


def _split_hostport(text: str) -> Tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":"))
    host, _, port = text.rpartition(":")
    return host, int(port)


def _moved(moved: Dict[Tuple[str, Any], Tuple[str, Dict[str, int]]], host: str, port: int) -> Tuple[str, int]:
    """A KV address of the server list, on the chosen network."""
    alternate = moved.get((host.strip("[]"), port))
    if alternate is None:
        return host, port
    alt_host, ports = alternate
    return alt_host, ports.get("kv", port)


def _vbucket_map(rows: Any, name: str, servers: int, replicas: int) -> List[List[int]]:
    """Check a vBucket map before routing trusts it: a non-empty list of
    rows of equal length (one active and ``replicas`` replica slots at
    least), each entry a server index or -1 (no node)."""
    if not isinstance(rows, list) or not rows:
        raise ConfigError("%s is empty or not a list: every key would be unroutable" % name)
    width = len(rows[0]) if isinstance(rows[0], list) else 0
    if width < max(1, replicas + 1):
        raise ConfigError("%s rows need %d entries (numReplicas %d), the first has %d"
                          % (name, replicas + 1, replicas, width))
    for vb, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            raise ConfigError("%s row %d is not a list of %d server indexes" % (name, vb, width))
        for index in row:
            if type(index) is not int or not -1 <= index < servers:
                raise ConfigError("%s row %d refers to server %r of %d" % (name, vb, index, servers))
    return [list(row) for row in rows]


class BucketConfig:
    """A parsed bucket config.

    Attributes:
        rev, rev_epoch: the version (-1 when absent).
        name, uuid, locator: bucket name, UUID, ``"vbucket"`` or ``"ketama"``.
        servers: KV endpoints ``(host, port)`` in server-list order (TLS
            ports when the config was parsed for TLS).
        vbmap: per vBucket ``[active, replica1, ...]`` indexes into ``servers``.
        num_replicas: replicas per vBucket.
        nodes: every cluster node with its service ports.
        capabilities: bucket capabilities.
        cluster_capabilities: ``clusterCapabilities`` object.
        network: the network whose addresses ``servers`` and ``nodes``
            hold: ``default`` (the nodes' own) or an alternate network's
            name (``external``...).
        raw: the config as a dict (``$HOST`` replaced).
    """

    def __init__(self) -> None:
        self.rev = -1
        self.rev_epoch = -1
        self.name = ""
        self.uuid = ""
        self.locator = "vbucket"
        self.servers: List[Tuple[str, int]] = []
        self.vbmap: List[List[int]] = []
        self.vbmap_forward: Optional[List[List[int]]] = None
        self.num_replicas = 0
        self.nodes: List[ServiceNode] = []
        self.capabilities: List[str] = []
        self.cluster_capabilities: Dict[str, Any] = {}
        self.network = "default"
        self.raw: Dict[str, Any] = {}

    @property
    def version(self) -> Tuple[int, int]:
        """(revEpoch, rev) for comparisons."""
        return (self.rev_epoch, self.rev)

    def is_newer_than(self, other: Optional["BucketConfig"]) -> bool:
        """True if this config should replace ``other`` (spec §6)."""
        if other is None:
            return True
        if self.rev < 0 <= other.rev:
            return False
        if self.name and not other.name:
            return True
        return self.version > other.version

    @property
    def num_vbuckets(self) -> int:
        """Number of vBuckets (0 for ketama buckets)."""
        return len(self.vbmap)

    def vbucket_of(self, key: bytes) -> int:
        """The key's vBucket (CRC32, spec §3)."""
        return ((_zlib.crc32(key) >> 16) & 0x7FFF) % len(self.vbmap)

    def service_endpoints(self, service: str, tls: bool = False) -> List[Tuple[str, int]]:
        """Every node's (host, port) for a service (``mgmt``, ``capi``, ``n1ql``, ``cbas``, ``fts``...)."""
        out = []
        for node in self.nodes:
            ep = node.endpoint(service, tls)
            if ep is not None:
                out.append(ep)
        return out

    @classmethod
    def parse(cls, data: Any, source_host: str, tls: bool = False, network: str = "default") -> "BucketConfig":
        """Parse config JSON (text, bytes or dict) received from ``source_host``.

        ``network`` chooses the addresses used: ``default`` (the nodes'
        own), ``auto`` (:func:`guess_network`; the choice is in
        :attr:`network`), or the name of an alternate network: nodes that
        publish an address there are reached at it (KV and HTTP services),
        the others at their own."""
        try:
            return cls._parse(data, source_host, tls, network)
        except RecursionError as exc:
            # the decoder's (and _replace_host's) depth limit: the recursion limit
            raise ConfigError("the config is nested too deeply") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("the config is not UTF-8: %s" % exc) from exc

    @classmethod
    def _parse(cls, data: Any, source_host: str, tls: bool, network: str) -> "BucketConfig":
        if isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8")
        if isinstance(data, str):
            try:
                data = _json.loads(data)
            except ValueError as exc:
                raise ConfigError("the config is not JSON: %s" % exc) from exc
        if not isinstance(data, dict):
            raise ConfigError("the config is not a JSON object")
        host = "[%s]" % source_host if ":" in source_host and not source_host.startswith("[") else source_host
        raw = _replace_host(data, host)
        cfg = cls()
        cfg.raw = raw
        if network == "auto":
            network = guess_network(data, source_host)
        cfg.network = network
        #: (host, kv port) as the config names a node -> its alternate address
        moved: Dict[Tuple[str, Any], Tuple[str, Dict[str, int]]] = {}
        try:
            cfg.rev = int(raw.get("rev", -1))
            cfg.rev_epoch = int(raw.get("revEpoch", -1))
            cfg.name = str(raw.get("name", ""))
            cfg.uuid = str(raw.get("uuid", ""))
            cfg.locator = str(raw.get("nodeLocator", "vbucket"))
            cfg.capabilities = list(raw.get("bucketCapabilities", []))
            cfg.cluster_capabilities = dict(raw.get("clusterCapabilities", {}) or {})
            for ext in raw.get("nodesExt", []) or []:
                node_host = (ext.get("hostname") or source_host).strip("[]")
                services = dict(ext.get("services", {}))
                if network != "default":
                    alternate = alternate_address(ext, network, services)
                    if alternate is not None:
                        moved[(node_host, services.get("kv"))] = alternate
                        node_host, services = alternate
                cfg.nodes.append(ServiceNode(node_host, services))
            if cfg.locator == "vbucket":
                smap = raw.get("vBucketServerMap")
                if not isinstance(smap, dict):
                    raise ConfigError("a vbucket config without a vBucketServerMap")
                plain = [_moved(moved, *_split_hostport(s)) for s in smap.get("serverList", [])]
                cfg.num_replicas = int(smap.get("numReplicas", 0))
                cfg.servers = [cfg._kv_endpoint(h.strip("[]"), p, tls) for h, p in plain]
                cfg.vbmap = _vbucket_map(smap.get("vBucketMap"), "vBucketMap", len(cfg.servers), cfg.num_replicas)
                if smap.get("vBucketMapForward"):
                    cfg.vbmap_forward = _vbucket_map(smap["vBucketMapForward"], "vBucketMapForward",
                                                     len(cfg.servers), cfg.num_replicas)
                    if len(cfg.vbmap_forward) != len(cfg.vbmap):
                        raise ConfigError("vBucketMapForward has %d vBuckets, vBucketMap %d"
                                          % (len(cfg.vbmap_forward), len(cfg.vbmap)))
            else:
                for entry in raw.get("nodes", []) or []:
                    h, _mgmt = _split_hostport(entry["hostname"])
                    h, port = _moved(moved, h, int(entry.get("ports", {}).get("direct", 11210)))
                    cfg.servers.append(cfg._kv_endpoint(h.strip("[]"), port, tls))
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("malformed config: %r" % (exc,)) from exc
        if not cfg.servers:
            raise ConfigError("the config lists no KV server")
        return cfg

    def _kv_endpoint(self, host: str, kv_port: int, tls: bool) -> Tuple[str, int]:
        """The KV endpoint of a server-list entry (its TLS port when needed,
        found in nodesExt by host and plain KV port)."""
        if not tls:
            return host, kv_port
        for node in self.nodes:
            if node.host == host and node.services.get("kv") == kv_port and node.services.get("kvSSL"):
                return host, node.services["kvSSL"]
        raise ConfigError("no TLS KV port is known for %s:%d" % (host, kv_port))

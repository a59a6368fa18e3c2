"""couchbase_core.mock: an emulated multi-node Couchbase cluster.

Start one in a line and point any client at it::

    from couchbase_core.mock import MockCluster

    with MockCluster(nodes=3, replicas=1) as cluster:
        print(cluster.connstr)          # couchbase://127.0.0.1:PORT,...
        cluster.failover(1)             # fault injection
        cluster.advance_clock(3600)     # expiry and lock timeouts

By default the emulator runs in a child process (``python -m
couchbase_core.mock --json``), so nothing in the calling process (gevent
monkeypatching in particular) can touch it; ``in_process=True`` runs it on a
background thread instead. Every control is an HTTP call to the emulator's
control endpoint, which other languages can use too. See ``docs/mock.md``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = ["MockCluster", "MockError"]


class MockError(RuntimeError):
    """The emulator failed to start, or refused a control request."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            pass


class MockCluster:
    """An emulated cluster, usable as a context manager.

    Args:
        nodes: number of nodes.
        buckets: bucket specs: names (couchbase buckets), ``"name:type[:password]"``
            strings, or dicts with ``name``, ``type``, ``password``, ``replicas``,
            ``vbuckets``. Default: one couchbase bucket ``default``.
        replicas: replicas per vBucket (default 1).
        vbuckets: vBuckets per bucket (64 or 1024).
        users: RBAC users as ``"name:password[:roles]"`` strings.
        base_port: fixed ports (node i uses ``base_port + 10*i + k``); default free ports.
        tls: also listen with TLS (a fresh CA is made; see :attr:`ca_cert`).
        in_process: run on a thread of this process instead of a child process.
        alternate_host: also serve every node on this address (e.g.
            ``127.0.0.2``), on ports of its own, and publish it in the
            configs as the node's ``external`` alternate address.
        admin: ``(user, password)`` of the administrator.
        client_ca: PEM file of the CA that signs client certificates: turns
            on client certificate authentication on the TLS ports (needs
            ``tls=True``); ``client_cert_auth`` is ``"enable"`` (optional
            certificate) or ``"mandatory"``, ``client_cert_path`` where the
            user name is (``subject.cn``, ``san.email``, ``san.dnsname``,
            ``san.uri``) and ``client_cert_prefix`` a prefix stripped from it.
    """

    def __init__(self, nodes: int = 1, buckets: Optional[Sequence[Union[str, Dict[str, Any]]]] = None,
                 replicas: int = 1, vbuckets: int = 64, users: Optional[Sequence[str]] = None,
                 base_port: Optional[int] = None, tls: bool = False, in_process: bool = False,
                 admin: tuple = ("Administrator", "password"), start_timeout: float = 30.0,
                 client_ca: Optional[str] = None, client_cert_auth: str = "enable",
                 client_cert_path: str = "subject.cn", client_cert_prefix: str = "",
                 alternate_host: Optional[str] = None) -> None:
        self.nodes = nodes
        self.buckets = list(buckets) if buckets is not None else ["default"]
        self.replicas = replicas
        self.vbuckets = vbuckets
        self.users = list(users or [])
        self.base_port = base_port
        self.tls = tls
        self.in_process = in_process
        self.admin = admin
        self.start_timeout = start_timeout
        self.client_ca = client_ca
        self.client_cert = (client_cert_auth, client_cert_path, client_cert_prefix)
        self.alternate_host = alternate_host
        self.info: Dict[str, Any] = {}
        self._proc: Optional[subprocess.Popen] = None
        self._thread_mock: Any = None
        self._stderr: Any = None

    # ----------------------------------------------------------- lifecycle

    def _argv(self) -> List[str]:
        argv = ["--json", "--nodes", str(self.nodes), "--replicas", str(self.replicas),
                "--vbuckets", str(self.vbuckets), "--admin", "%s:%s" % self.admin]
        for spec in self.buckets:
            if isinstance(spec, dict):
                spec = "%s:%s:%s" % (spec["name"], spec.get("type", "couchbase"), spec.get("password", ""))
            argv += ["--bucket", spec]
        for user in self.users:
            argv += ["--user", user]
        if self.base_port is not None:
            argv += ["--base-port", str(self.base_port)]
        if self.tls:
            argv.append("--tls")
        if self.client_ca:
            auth, path, prefix = self.client_cert
            argv += ["--client-ca", self.client_ca, "--client-cert-auth", auth, "--client-cert-path", path,
                     "--client-cert-prefix", prefix]
        if self.alternate_host:
            argv += ["--alternate-host", self.alternate_host]
        return argv

    def start(self) -> "MockCluster":
        """Start the emulator and wait until it listens."""
        if self.in_process:
            from couchbase_core.mock.__main__ import options_from_args, parse_args
            from couchbase_core.mock.inprocess import ThreadedMock

            args = parse_args(self._argv())
            self._tmpdir = tempfile.TemporaryDirectory(prefix="couchbase-mock-")
            options = options_from_args(args, self._tmpdir.name)
            self._thread_mock = ThreadedMock(options).start()
            self.info = self._thread_mock.info
            if getattr(args, "ca_cert", None):
                self.info["ca_cert"] = args.ca_cert
            self._apply_bucket_dicts()
            return self
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "couchbase_core.mock"] + self._argv(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            preexec_fn=_die_with_parent if os.name == "posix" else None,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = self._read_line(self.start_timeout)
        if not line:
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace")
            self.stop()
            raise MockError("the emulator did not start: %s" % (err.strip() or "no output"))
        self.info = json.loads(line)
        self._apply_bucket_dicts()
        return self

    def _apply_bucket_dicts(self) -> None:
        for spec in self.buckets:
            if isinstance(spec, dict) and ("replicas" in spec or "vbuckets" in spec):
                self.control("delete_bucket", name=spec["name"])
                self.control("create_bucket", name=spec["name"], type=spec.get("type", "couchbase"),
                             password=spec.get("password", ""), replicas=spec.get("replicas"),
                             vbuckets=spec.get("vbuckets"))

    def _read_line(self, timeout: float) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        result: List[bytes] = []
        reader = threading.Thread(target=lambda: result.append(self._proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        return result[0].strip() if result else b""

    def stop(self) -> None:
        """Stop the emulator (closing its stdin; killing it if it lingers)."""
        if self._thread_mock is not None:
            self._thread_mock.stop()
            self._thread_mock = None
        tmpdir = getattr(self, "_tmpdir", None)
        if tmpdir is not None:  # the in-process emulator's TLS files
            tmpdir.cleanup()
            self._tmpdir = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdout,):
                if stream is not None:
                    stream.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> "MockCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ addresses

    @property
    def connstr(self) -> str:
        """``couchbase://`` string with every node's KV port (no bucket)."""
        return self.info["connstr"]

    def connstr_for(self, bucket: str = "default", **options: Any) -> str:
        """Connection string for ``bucket``, with options appended."""
        text = "%s/%s" % (self.info["connstr"], bucket)
        if options:
            text += "?" + "&".join("%s=%s" % (k, v) for k, v in options.items())
        return text

    @property
    def http_port(self) -> int:
        """Management port of the first node."""
        return self.info["http_port"]

    @property
    def views_port(self) -> int:
        """Views port of the first node."""
        return self.info["views_port"]

    @property
    def query_port(self) -> int:
        """Query port of the first node."""
        return self.info["query_port"]

    @property
    def control_url(self) -> str:
        """Base URL of the control endpoint."""
        return self.info["control_url"]

    @property
    def ca_cert(self) -> Optional[str]:
        """PEM file of the CA that signed the TLS certificate (``tls=True``)."""
        return self.info.get("ca_cert")

    def kv_ports(self, bucket: str = "default") -> List[int]:
        """KV ports of the nodes serving ``bucket``."""
        return self.info["kv_ports"][bucket]

    # ------------------------------------------------------------- controls

    def control(self, action: str, **body: Any) -> Dict[str, Any]:
        """POST one control action; returns (and keeps) the refreshed info."""
        import urllib.error
        import urllib.request  # here, not at the top: the pytest plugin imports this module in every run

        data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        req = urllib.request.Request("%s/%s" % (self.control_url, action), data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                result = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise MockError("control %s failed: %s" % (action, exc.read().decode("utf-8", "replace"))) from None
        self.info.update({k: v for k, v in result.items() if k in self.info or k in ("nodes", "kv_ports")})
        return result

    def refresh(self) -> Dict[str, Any]:
        """Re-read where everything is."""
        import urllib.request

        with urllib.request.urlopen("%s/info" % self.control_url, timeout=30) as resp:
            self.info.update(json.loads(resp.read()))
        return self.info

    def failover(self, node: int) -> None:
        """Fail a node over (its replicas elsewhere become active)."""
        self.control("failover", node=node)

    def add_node(self, rebalance: bool = True) -> int:
        """Add a node (rebalanced in at once by default); returns its index."""
        return self.control("add_node", rebalance=rebalance)["added"]

    def remove_node(self, node: int) -> None:
        """Rebalance a node out and stop it."""
        self.control("remove_node", node=node)

    def rebalance(self) -> None:
        """Spread vBuckets over the member nodes again."""
        self.control("rebalance")

    def stop_node(self, node: int) -> None:
        """Take a node down (still in the map until failed over)."""
        self.control("stop_node", node=node)

    def restart_node(self, node: int) -> None:
        """Bring a stopped node back on the same ports."""
        self.control("restart_node", node=node)

    def drop_connections(self, node: Optional[int] = None) -> int:
        """Close every client connection (of one node, or all)."""
        return self.control("drop_connections", node=node)["dropped"]

    def delay(self, seconds: float, node: Optional[int] = None) -> None:
        """Hold every KV response for ``seconds`` (0 to stop)."""
        self.control("delay", seconds=seconds, node=node)

    def stall(self, after_bytes: Optional[int], node: Optional[int] = None) -> None:
        """After ``after_bytes`` written on a connection, send nothing more
        (None to stop stalling)."""
        self.control("stall", after_bytes=after_bytes, node=node)

    def force_status(self, status: int, count: int = 1, node: Optional[int] = None) -> None:
        """Answer the next ``count`` data operations with ``status``."""
        self.control("force_status", status=status, count=count, node=node)

    def malformed(self, count: int = 1, node: Optional[int] = None) -> None:
        """Replace the next ``count`` responses with garbage bytes."""
        self.control("malformed", count=count, node=node)

    def cccp(self, enabled: bool) -> None:
        """Switch GET_CLUSTER_CONFIG on or off."""
        self.control("cccp", enabled=enabled)

    def advance_clock(self, seconds: float) -> float:
        """Move the cluster's clock forward (expiry, locks, lags)."""
        return self.control("clock", advance=seconds)["now"]

    def persist_delay(self, seconds: float) -> None:
        """Mutations count as persisted ``seconds`` after they happen."""
        self.control("persist_delay", seconds=seconds)

    def replicate_delay(self, seconds: float) -> None:
        """Mutations reach replicas ``seconds`` after they happen."""
        self.control("replicate_delay", seconds=seconds)

    def fts_index_lag(self, seconds: float) -> None:
        """The search service indexes a mutation only ``seconds`` after it
        happens (``ctl.consistency`` waits for it; see docs/search.md)."""
        self.control("fts_index_lag", seconds=seconds)

    def clear_faults(self) -> None:
        """Undo delays, stalls, forced statuses, CCCP-off and lags."""
        self.control("clear_faults")

    def create_bucket(self, name: str, type: str = "couchbase", password: str = "",  # noqa: A002
                      replicas: Optional[int] = None, vbuckets: Optional[int] = None) -> None:
        """Create a bucket."""
        self.control("create_bucket", name=name, type=type, password=password, replicas=replicas,
                     vbuckets=vbuckets)

    def add_user(self, name: str, password: str, roles: Optional[List[Dict[str, str]]] = None) -> None:
        """Add an RBAC user (roles like ``[{"role": "bucket_full_access", "bucket": "default"}]``)."""
        self.control("add_user", name=name, password=password, roles=roles or [{"role": "admin"}])

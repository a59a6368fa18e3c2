"""Getting the first cluster config (spec/cluster-config.md §7).

Order with ``bootstrap_on=all`` (the default): CCCP on each seed's KV port in
turn (HELLO, SASL, SELECT_BUCKET, then GET_CLUSTER_CONFIG), then HTTP
streaming (``/pools/default/bs/<bucket>``) on each seed's management port.
``bootstrap_on=cccp`` or ``http`` uses one of them only.

With ``couchbase://name`` or ``couchbases://name`` (one host, no port) the
seeds come first from a DNS SRV lookup of ``_couchbase._tcp.name`` (or
``_couchbases._tcp.name``): the records' targets and ports, in priority and
weight order, replace the name; when the lookup gives nothing (no such
name, no records, no answer in time, a garbled reply) the name itself is
the seed, as libcouchbase 2.10 does (see :mod:`couchbase_core._engine.dns`).

The server's answers end the bootstrap early when they say why it cannot
work anywhere: bad credentials (AuthError), a missing bucket
(BucketNotFoundError). Nodes that cannot be reached are skipped; when
nothing works the error lists what each node said. The HTTP stream, once
open, stays open and delivers every later config too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from couchbase_core._engine.config import BucketConfig, ConfigError
from couchbase_core._engine.connection import KVConnection
from couchbase_core._engine.ops import KVOp
from couchbase_core._engine.protocol import F_STATUS, F_VALUE, Frame, Opcode, Status
from couchbase_core.exceptions import RC, exc_from_rc

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.instance import Engine

__all__ = ["Bootstrapper"]

log = logging.getLogger("couchbase_core.engine")

_FATAL = frozenset({RC.AUTH_ERROR, RC.AUTH_FAILED, RC.BUCKET_NOT_FOUND, RC.EACCESS})
#: GET_CLUSTER_CONFIG answers meaning "no config over CCCP here": old servers
#: (NOT_SUPPORTED, UNKNOWN_COMMAND) and memcached buckets (KEY_ENOENT).
_CCCP_UNSUPPORTED = frozenset({Status.NOT_SUPPORTED, Status.UNKNOWN_COMMAND, Status.KEY_ENOENT})


class _CCCPRequest(KVOp):
    """The bootstrap's GET_CLUSTER_CONFIG."""

    __slots__ = ("callback",)
    traced = False

    def __init__(self, callback: Any, timeout: float) -> None:
        KVOp.__init__(self, Opcode.GET_CLUSTER_CONFIG, timeout=timeout)
        self.callback = callback

    def on_response(self, frame: Frame) -> None:
        self.callback(frame[F_STATUS], frame[F_VALUE], None)

    def on_error(self, rc: int, message: str) -> None:
        self.callback(None, b"", (rc, message))

    def describe(self) -> str:
        return "GET_CLUSTER_CONFIG (bootstrap)"


class Bootstrapper:
    """Runs the bootstrap of one engine."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        settings = engine.settings
        self.mode = settings.bootstrap_on
        # Nodes of a valid config_cache file go first (see _config_cache.py):
        # the config is still fetched from them, never taken from the file.
        self.cached_kv = set(settings.cached_seeds)
        self.cached_http = set(settings.cached_http_seeds)
        self.kv_seeds: List[Tuple[str, int]] = list(dict.fromkeys(settings.cached_seeds + list(settings.hosts)))
        self.http_seeds: List[Tuple[str, int]] = list(dict.fromkeys(settings.cached_http_seeds
                                                                    + list(settings.http_hosts)))
        #: True when the bootstrap config came from a node the cache named.
        self.used_cache = False
        if engine.tls_context is not None:
            # couchbases:// seeds: connection strings give TLS ports already
            pass
        self.failures: Dict[str, Tuple[int, str]] = {}
        self._cccp_index = 0
        self._http_index = 0
        self._http: Any = None
        self._srv: Any = None
        self._done = False
        self._closed = False

    def describe_failures(self) -> str:
        """What each node said so far."""
        return "; ".join("%s: %s" % (k, v[1]) for k, v in self.failures.items())

    def start(self) -> None:
        """Begin with the DNS SRV lookup when there is one to make, then
        CCCP (or HTTP when ``bootstrap_on=http``)."""
        settings = self.engine.settings
        self._started = self.engine.clock()
        if settings.dnssrv_name:
            from couchbase_core._engine.dns import SrvLookup

            timeout = min(settings.dnssrv_timeout, settings.config_total_timeout / 2)
            self._srv = SrvLookup(self.engine.iops, settings.dnssrv_name, settings.dnssrv_nameservers or [],
                                  timeout, self._on_srv)
            self._srv.start()
            return
        self._begin()

    def _on_srv(self, targets: Optional[List[Tuple[str, int]]], why: str) -> None:
        self._srv = None
        if self._closed or self._done:
            return
        name = self.engine.settings.dnssrv_name
        if targets:
            log.debug("DNS SRV %s: bootstrapping from %s", name, ", ".join("%s:%d" % t for t in targets))
            self.kv_seeds = list(targets)
            http_port = self.http_seeds[0][1] if self.http_seeds else 8091
            self.http_seeds = []
            for host, _port in targets:
                if (host, http_port) not in self.http_seeds:
                    self.http_seeds.append((host, http_port))
        else:
            log.info("DNS SRV lookup of %s gave no seeds (%s); bootstrapping from the host name itself", name, why)
        self._begin()

    def _begin(self) -> None:
        if self.mode == "http":
            self._next_http()
        else:
            self._next_cccp()

    def close(self) -> None:
        """Stop (the engine is closing)."""
        self._closed = True
        if self._srv is not None:
            self._srv.close()
            self._srv = None
        if self._http is not None:
            self._http.close()
            self._http = None

    def abandon_after_fork(self) -> None:
        """In the child of a fork: stop for good without IOPS calls (the
        engine drops the connections and fails the requests itself)."""
        self._closed = True
        srv, self._srv = self._srv, None
        if srv is not None:
            srv.abandon_after_fork()
        http, self._http = self._http, None
        if http is not None:
            http.abandon_after_fork()

    # ------------------------------------------------------------------ CCCP

    def _next_cccp(self) -> None:
        if self._closed or self._done:
            return
        if self._cccp_index >= len(self.kv_seeds):
            if self.mode == "all" and self.http_seeds:
                self._next_http()
            else:
                self._give_up()
            return
        host, port = self.kv_seeds[self._cccp_index]
        self._cccp_index += 1
        conn = self.engine.connection_to(host, port)
        conn.add_listener(self._on_cccp_connection)

    def _on_cccp_connection(self, conn: KVConnection, error: Optional[Tuple[int, str]]) -> None:
        if self._closed or self._done:
            return
        if error is not None:
            self._record(conn.authority, error)
            if error[0] in _FATAL:
                self._fail(error)
                return
            self._next_cccp()
            return
        timeout = min(self.engine.settings.config_node_timeout, self.engine.settings.config_total_timeout)

        def got(status: Optional[int], value: bytes, failure: Optional[Tuple[int, str]]) -> None:
            self._on_cccp_reply(conn, status, value, failure)

        op = _CCCPRequest(got, timeout)
        op.target = conn
        self.engine.submit(op)

    def _on_cccp_reply(self, conn: KVConnection, status: Optional[int], value: bytes,
                       failure: Optional[Tuple[int, str]]) -> None:
        if self._closed or self._done:
            return
        if failure is not None:
            self._record(conn.authority, failure)
            self._next_cccp()
            return
        if status != Status.SUCCESS or not value:
            why = ("CCCP is not supported" if status in _CCCP_UNSUPPORTED
                   else "GET_CLUSTER_CONFIG failed with status 0x%02x" % (status or 0))
            self._record(conn.authority, (RC.NOT_SUPPORTED, why))
            if status in _CCCP_UNSUPPORTED and self.mode != "cccp":
                # the whole cluster answers alike: go to HTTP at once
                self._cccp_index = len(self.kv_seeds)
            self._next_cccp()
            return
        try:
            cfg = self.engine.parse_config(value, conn.host)
        except ConfigError as exc:
            self._record(conn.authority, (RC.PROTOCOL, "unusable config: %s" % exc))
            self._next_cccp()
            return
        self._succeed(cfg, "CCCP from %s" % conn.authority, (conn.host, conn.port) in self.cached_kv)

    # ------------------------------------------------------------------ HTTP

    def _next_http(self) -> None:
        if self._closed or self._done:
            return
        if self._http_index >= len(self.http_seeds):
            self._give_up()
            return
        host, port = self.http_seeds[self._http_index]
        self._http_index += 1
        from couchbase_core._engine.http import ConfigStream

        self._http = ConfigStream(self.engine, host, port, self._on_http_config, self._on_http_failure)
        self._http.start()

    def _on_http_config(self, stream: Any, text: bytes) -> None:
        if self._closed:
            return
        try:
            cfg = self.engine.parse_config(text, stream.host)
        except ConfigError as exc:
            log.warning("unusable config from the HTTP stream of %s: %s", stream.authority, exc)
            return
        if self._done:
            self.engine.apply_config(cfg)  # a later config from the stream
            return
        self._succeed(cfg, "HTTP from %s" % stream.authority, (stream.host, stream.port) in self.cached_http)

    def _on_http_failure(self, stream: Any, rc: int, message: str) -> None:
        if self._closed:
            return
        if self._http is stream:
            self._http = None
        if self._done:
            # The stream that kept us updated broke: open one again (on the
            # next node) a moment later.
            log.info("config stream from %s ended: %s", stream.authority, message)
            self.engine.request_config("config stream ended")
            self._reopen_later()
            return
        self._record(stream.authority, (rc, message))
        if rc in _FATAL:
            self._fail((rc, message))
            return
        self._next_http()

    def _reopen_later(self) -> None:
        from couchbase_core.iops.base import PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH

        iops = self.engine.iops
        timer = iops.timer_event_factory()

        def reopen(_flags: int) -> None:
            iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)
            if self._closed or self._http is not None or not self.http_seeds:
                return
            seeds = self._stream_seeds()
            host, port = seeds[self._http_index % len(seeds)]
            self._http_index += 1
            from couchbase_core._engine.http import ConfigStream

            self._http = ConfigStream(self.engine, host, port, self._on_http_config, self._on_http_failure)
            self._http.start()

        timer._handler = reopen
        iops.update_timer(timer, PYCBC_EVACTION_WATCH, 1_000_000)

    def _stream_seeds(self) -> List[Tuple[str, int]]:
        """Management endpoints to stream from: the current config's nodes,
        else the seeds."""
        cfg = self.engine.config
        if cfg is not None:
            found = cfg.service_endpoints("mgmt", tls=self.engine.tls_context is not None)
            if found:
                return found
        return self.http_seeds

    # ---------------------------------------------------------------- endings

    def _record(self, where: str, error: Tuple[int, str]) -> None:
        self.failures[where] = error

    def _succeed(self, cfg: BucketConfig, how: str, from_cache: bool = False) -> None:
        if cfg.name and cfg.name != self.engine.settings.bucket:
            self._record(how, (RC.PROTOCOL, "config is for bucket %r" % cfg.name))
            return
        self._done = True
        self.used_cache = from_cache
        if log.isEnabledFor(logging.DEBUG):
            log.debug("bootstrapped by %s (rev %s) in %.1f ms", how, cfg.rev,
                      (self.engine.clock() - getattr(self, "_started", self.engine.clock())) * 1e3)
        self.engine.apply_config(cfg)
        self.engine.finish_bootstrap(None)

    def _fail(self, error: Tuple[int, str]) -> None:
        self._done = True
        self.engine.finish_bootstrap(exc_from_rc(error[0], error[1]))

    def _give_up(self) -> None:
        self._done = True
        if not self.failures:
            self.engine.finish_bootstrap(exc_from_rc(RC.CONNECT, "no bootstrap host"))
            return
        self.engine.finish_bootstrap(self.engine.failure_summary(self.failures))

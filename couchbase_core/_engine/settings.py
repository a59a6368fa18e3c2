"""Engine settings, read once from the connection string and keyword options."""

from __future__ import annotations

import platform
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from couchbase_core._engine.protocol import MAX_BODY, Feature, opcode_name
from couchbase_core.connstr import (
    KNOWN_OPTIONS,
    ConnectionString,
    UnknownOptionWarning,
    _check_utf8,
    _unknown_message,
    parse_bool,
    parse_duration,
    parse_int,
    parse_ratio,
)
from couchbase_core.exceptions import ArgumentError, OptionIgnoredWarning

__all__ = ["Settings", "DEFAULT_MAX_VALUE_MEMCACHED", "DEFAULT_MAX_VALUE_COUCHBASE", "COUCHBASE_FEATURES",
           "TRACING_DEFAULTS", "parse_tracing_option"]

#: HELLO features requested from Couchbase servers: the ones the engine
#: handles (XERROR statuses, SELECT_BUCKET, config pushes).
COUCHBASE_FEATURES = (Feature.TCPNODELAY, Feature.MUTATION_SEQNO, Feature.XATTR, Feature.XERROR,
                      Feature.SELECT_BUCKET, Feature.DUPLEX, Feature.CLUSTERMAP_CHANGE_NOTIFICATION,
                      Feature.ALT_REQUEST, Feature.SYNC_REPLICATION)

#: Largest value sent to plain memcached (its default item size limit).
DEFAULT_MAX_VALUE_MEMCACHED = 1024 * 1024
#: Largest value sent to Couchbase Server.
DEFAULT_MAX_VALUE_COUCHBASE = 20 * 1024 * 1024
#: The most ``max_value_size`` may be: a reply frame's body (key, extras and
#: value) must fit the frame limit protocol.MAX_BODY (64 MiB), or a value
#: written could never be read back; 1 KiB is left for the key and extras.
MAX_VALUE_SIZE_LIMIT = MAX_BODY - 1024


#: The threshold and orphan tracing options of libcouchbase 2.9+ (and the
#: 2.x Python SDK's ``Bucket`` properties of the same names), with
#: libcouchbase's defaults. Durations are seconds, sizes are entry counts.
TRACING_DEFAULTS: Dict[str, float] = {
    "tracing_threshold_kv": 0.5,
    "tracing_threshold_n1ql": 1.0,
    "tracing_threshold_view": 1.0,
    "tracing_threshold_fts": 1.0,
    "tracing_threshold_analytics": 1.0,
    "tracing_threshold_queue_size": 128,
    "tracing_threshold_queue_flush_interval": 10.0,
    "tracing_orphaned_queue_size": 128,
    "tracing_orphaned_queue_flush_interval": 10.0,
}
#: Of those, the ones that are entry counts (the others are durations).
TRACING_SIZES = frozenset({"tracing_threshold_queue_size", "tracing_orphaned_queue_size"})
#: Largest tracing queue size accepted (a uint32 in libcouchbase; the
#: queues would be held in memory, so keep them sane).
MAX_TRACING_QUEUE = 1 << 20
#: Default ``compression_min_size`` (bytes) and ``compression_min_ratio``
#: (libcouchbase's defaults): smaller values, or values that do not shrink
#: to at most this fraction, are sent uncompressed.
DEFAULT_COMPRESSION_MIN_SIZE = 32
DEFAULT_COMPRESSION_MIN_RATIO = 0.83


def parse_tracing_option(name: str, value: Any) -> float:
    """Validate one ``tracing_*`` option: a duration in seconds (interval
    must be > 0, thresholds may be 0) or a queue size of 1..MAX_TRACING_QUEUE.

    Raises:
        ArgumentError: naming the option.
    """
    if name in TRACING_SIZES:
        return parse_int(value, name, minimum=1, maximum=MAX_TRACING_QUEUE)
    seconds = parse_duration(value, name)
    if name.endswith("flush_interval"):
        _positive(seconds, name)
    return seconds


def _client_string() -> str:
    from couchbase_core import __version__

    return "gcouchbase/%s (Python %s)" % (__version__, platform.python_version())


@dataclass
class Settings:
    """Everything the engine needs to know about how to connect and behave.

    Times are in seconds.
    """

    scheme: str = "memcached"
    hosts: List[Tuple[str, int]] = field(default_factory=lambda: [("localhost", 11211)])
    bucket: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    operation_timeout: float = 2.5
    config_total_timeout: float = 5.0
    config_node_timeout: float = 2.0
    connect_timeout: float = 2.0
    views_timeout: float = 75.0
    n1ql_timeout: float = 75.0
    http_timeout: float = 75.0
    max_value_size: int = DEFAULT_MAX_VALUE_MEMCACHED
    tcp_nodelay: bool = True
    tcp_keepalive: bool = True
    client_string: str = field(default_factory=_client_string)
    #: Send the agent name as HELLO's key (not on memcached://: see connection.py).
    hello_agent: bool = False
    #: HELLO features requested: only those the engine really handles.
    hello_features: Tuple[int, ...] = (Feature.TCPNODELAY, Feature.XERROR, Feature.SELECT_BUCKET)
    #: Every option as given (also unknown ones), for inspection.
    options: Dict[str, str] = field(default_factory=dict, repr=False)
    #: HTTP (management) endpoints for HTTP bootstrap.
    http_hosts: List[Tuple[str, int]] = field(default_factory=list)
    bootstrap_on: str = "all"
    #: Snappy: "on", "off", "inflate_only", "deflate_only", "force".
    compression: str = "on"
    durability_timeout: float = 5.0
    http_poolsize: int = 4
    durability_interval: float = 0.1
    config_poll_interval: float = 2.5
    retry_nmv_delay: float = 0.1
    select_bucket: bool = True
    sasl_mech_force: Optional[List[str]] = None
    #: TLS: None for plain connections, else "verify" or "no_verify".
    tls: Optional[str] = None
    certpath: Optional[str] = None
    #: Client certificate authentication: the private key of the client
    #: certificate ``certpath`` (TLS only). With it no SASL is done and no
    #: HTTP ``Authorization`` header sent: the certificate names the user.
    keypath: Optional[str] = None
    #: CA certificates that verify the server (else ``certpath``).
    truststorepath: Optional[str] = None
    #: Address families used: "allow" (IPv4 and IPv6), "disabled" (IPv4
    #: only) or "only" (IPv6 only).
    ipv6: str = "allow"
    #: ``log_redaction``: wrap user data (keys, user names) in log messages
    #: in ``<ud>...</ud>`` (see :meth:`ud`).
    log_redaction: bool = False
    #: ``enable_tracing`` and the ``tracing_*`` options (TRACING_DEFAULTS):
    #: the threshold and orphan reports of couchbase_core._engine.tracing
    #: (docs/observability.md).
    enable_tracing: bool = False
    tracing: Dict[str, float] = field(default_factory=lambda: dict(TRACING_DEFAULTS))
    #: The OpenTelemetry tracer given as ``tracer=`` (a span per operation), or None.
    otel_tracer: Any = field(default=None, repr=False)
    #: Snappy: values smaller than this are never compressed, and a
    #: compressed value is sent only if at most this fraction of the original.
    compression_min_size: int = DEFAULT_COMPRESSION_MIN_SIZE
    compression_min_ratio: float = DEFAULT_COMPRESSION_MIN_RATIO
    #: ``config_cache``: file the cluster config is written to, and seeded
    #: from at the next bootstrap (see couchbase_core._config_cache).
    config_cache: Optional[str] = None
    #: KV endpoints taken from a valid config cache: tried first at bootstrap.
    cached_seeds: List[Tuple[str, int]] = field(default_factory=list)
    #: Management endpoints from the config cache (HTTP bootstrap).
    cached_http_seeds: List[Tuple[str, int]] = field(default_factory=list)
    #: Addresses used (``network``): ``auto`` (the first config decides,
    #: as libcouchbase does), ``default`` (the nodes' own) or the name of
    #: an alternate network (``external``...).
    network: str = "auto"
    #: The DNS SRV name looked up for seeds before bootstrap, or None.
    dnssrv_name: Optional[str] = None
    #: Name servers for that lookup: ``dnssrv_nameserver`` or resolv.conf.
    dnssrv_nameservers: Optional[List[Tuple[str, int]]] = None
    #: Seconds the SRV lookup may take (ours: ``dnssrv_timeout``); at most
    #: half of config_total_timeout is used.
    dnssrv_timeout: float = 2.0
    _tls_context: Any = field(default=None, repr=False)

    def ud(self, value: Any) -> str:
        """``value`` as text for a log message, as *user data*: wrapped in
        ``<ud>...</ud>`` when ``log_redaction`` is on (what libcouchbase
        does), so log collectors can strip it. Keys, document ids and user
        names go through this; bytes are shown decoded (UTF-8, replacing)."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            text = bytes(value).decode("utf-8", "replace")
        else:
            text = str(value)
        if self.log_redaction:
            return "<ud>%s</ud>" % text
        return text

    def describe_op(self, op: Any) -> str:
        """``op.describe()`` for a log message: with ``log_redaction`` on,
        the key is shown as user data (:meth:`ud`). Exception messages keep
        using ``op.describe()``."""
        kb = getattr(op, "kb", b"")
        if not kb or not self.log_redaction:
            return op.describe()
        return "%s %s" % (opcode_name(op.opcode), self.ud(kb[:40]))

    @property
    def cccp_allowed(self) -> bool:
        """Configs may be fetched over KV (GET_CLUSTER_CONFIG)."""
        return self.bootstrap_on in ("all", "cccp")

    def sasl_credentials(self) -> Tuple[Optional[str], Optional[str]]:
        """(user, password) for SASL, or (None, None) without credentials.

        A password without a user name is a legacy bucket password: the
        bucket name is the user (what the 2.x SDK did). With a client
        certificate (``keypath``) there are none: the certificate
        authenticates the connection."""
        if self.keypath is not None:
            return None, None
        if self.username:
            return self.username, self.password or ""
        if self.password:
            return self.bucket or "default", self.password
        return None, None

    def tls_context(self) -> Any:
        """The ssl.SSLContext for couchbases://, or None."""
        if self.tls is None:
            return None
        if self._tls_context is None:
            from couchbase_core._engine.tls import make_context

            self._tls_context = make_context(self.certpath, verify=self.tls != "no_verify", keypath=self.keypath,
                                             truststorepath=self.truststorepath)
        return self._tls_context

    @classmethod
    def from_connstr(cls, connstr: Any, username: Optional[str] = None, password: Optional[str] = None,
                     **overrides: Any) -> "Settings":
        """Build settings from a connection string (``str`` or
        :class:`ConnectionString`) plus keyword options, which win over the
        string's options (e.g. ``operation_timeout=1.0``)."""
        if isinstance(connstr, ConnectionString):
            cs = connstr.copy()
        elif isinstance(connstr, str):
            cs = ConnectionString.parse(connstr)
        else:
            raise ArgumentError("connection_string must be a str, not %s" % type(connstr).__name__)
        for name, value in overrides.items():
            if value is not None:
                cs.set_option(name, value)
                if name not in KNOWN_OPTIONS:
                    _warn(_unknown_message(name), UnknownOptionWarning)
        opts = cs.option_values()  # the value in effect of each option (the last given)
        s = cls(scheme=cs.scheme, options=opts)
        s.hosts = cs.kv_endpoints()
        s.hello_agent = cs.scheme != "memcached"
        if not s.hosts:
            raise ArgumentError("the connection string names no host")
        s.bucket = cs.bucket or None
        s.username = username if username is not None else opts.get("username")
        s.password = password if password is not None else opts.get("password")
        if s.username is not None:
            _check_utf8(s.username, "username")
        if s.password is not None:
            _check_utf8(s.password, "password", secret=True)

        timeout = opts.get("operation_timeout", opts.get("timeout"))
        if timeout is not None:
            s.operation_timeout = _positive(parse_duration(timeout, "operation_timeout"), "operation_timeout")
        for name in ("config_total_timeout", "config_node_timeout", "views_timeout", "http_timeout"):
            if name in opts:
                setattr(s, name, _positive(parse_duration(opts[name], name), name))
        n1ql = opts.get("n1ql_timeout", opts.get("query_timeout"))
        if n1ql is not None:
            s.n1ql_timeout = _positive(parse_duration(n1ql, "n1ql_timeout"), "n1ql_timeout")
        s.connect_timeout = s.config_node_timeout
        if "connect_timeout" in opts:
            s.connect_timeout = _positive(parse_duration(opts["connect_timeout"], "connect_timeout"), "connect_timeout")
        if cs.scheme != "memcached":
            s.max_value_size = DEFAULT_MAX_VALUE_COUCHBASE
        if "max_value_size" in opts:
            s.max_value_size = parse_int(opts["max_value_size"], "max_value_size", minimum=1,
                                         maximum=MAX_VALUE_SIZE_LIMIT)
        if "tcp_nodelay" in opts:
            s.tcp_nodelay = parse_bool(opts["tcp_nodelay"], "tcp_nodelay")
        if "tcp_keepalive" in opts:
            s.tcp_keepalive = parse_bool(opts["tcp_keepalive"], "tcp_keepalive")
        if opts.get("client_string"):
            s.client_string = "%s %s" % (s.client_string, opts["client_string"])
        if cs.scheme != "memcached":
            s.bucket = cs.bucket or "default"
            s.http_hosts = cs.http_endpoints()
            s.hello_features = COUCHBASE_FEATURES
        s.bootstrap_on = opts.get("bootstrap_on", "all")
        for name in ("fetch_mutation_tokens", "enable_mutation_tokens"):
            if name in opts and not parse_bool(opts[name], name):
                s.hello_features = tuple(f for f in s.hello_features if f != Feature.MUTATION_SEQNO)
        s.compression = opts.get("compression", "on").lower()
        if cs.scheme != "memcached" and s.compression != "off" and snappy_available():
            s.hello_features = s.hello_features + (Feature.SNAPPY,)
        if "config_poll_interval" in opts:
            s.config_poll_interval = parse_duration(opts["config_poll_interval"], "config_poll_interval")
        if "retry_nmv_delay" in opts:
            s.retry_nmv_delay = parse_duration(opts["retry_nmv_delay"], "retry_nmv_delay")
        for name in ("durability_timeout", "durability_interval"):
            if name in opts:
                setattr(s, name, _positive(parse_duration(opts[name], name), name))
        if "http_poolsize" in opts:
            s.http_poolsize = parse_int(opts["http_poolsize"], "http_poolsize", minimum=0)
        if "select_bucket" in opts:
            s.select_bucket = parse_bool(opts["select_bucket"], "select_bucket")
        if opts.get("sasl_mech_force"):
            s.sasl_mech_force = opts["sasl_mech_force"].split()
        if cs.is_ssl:
            s.tls = "no_verify" if opts.get("ssl") == "no_verify" else "verify"
            s.certpath = opts.get("certpath")
            s.truststorepath = opts.get("truststorepath")
            s.keypath = opts.get("keypath")
            if s.keypath is not None:
                s._check_client_certificate()
        elif "keypath" in opts:
            # a client certificate means "authenticate me over TLS": never
            # fall back to a cleartext connection (SDK RFC 0036)
            raise ArgumentError("keypath=%r (client certificate authentication) needs TLS: use couchbases:// "
                                "or ssl=on" % opts["keypath"])
        else:
            for name in ("certpath", "truststorepath"):
                if name in opts:
                    _warn("%s=%r is ignored: the connection is not TLS (use couchbases:// or ssl=on)"
                          % (name, opts[name]), OptionIgnoredWarning)
        s.ipv6 = opts.get("ipv6", "allow").lower()
        s._parse_compat(opts)
        network = opts.get("network", "auto").strip()
        s.network = network.lower() if network.lower() in ("auto", "default") else network
        _configure_dnssrv(s, cs, opts)
        s._check_unsupported(opts)
        return s

    def _check_client_certificate(self) -> None:
        """Credentials next to a client certificate: a password contradicts
        it (refused, as SDK RFC 0036 asks); a user name is not used."""
        if self.password:
            raise ArgumentError("a password cannot be combined with client certificate authentication "
                                "(keypath=%r): the certificate names the user" % self.keypath)
        if self.username:
            _warn("username=%r is not used for authentication: with keypath the client certificate names the "
                  "user" % self.username, OptionIgnoredWarning)

    def _parse_compat(self, opts: Dict[str, str]) -> None:
        """The 2.x / libcouchbase options of docs/compat.md: log redaction,
        tracing thresholds, compression tunables, the config cache."""
        if "log_redaction" in opts:
            self.log_redaction = parse_bool(opts["log_redaction"], "log_redaction")
        if "enable_tracing" in opts:
            self.enable_tracing = parse_bool(opts["enable_tracing"], "enable_tracing")
            if self.enable_tracing and self.scheme != "memcached":
                # ask the server for its own duration of each request
                # (reported as server_us; servers that do not know it refuse it)
                self.hello_features = self.hello_features + (Feature.TRACING,)
        for name in TRACING_DEFAULTS:
            if name in opts:
                self.tracing[name] = parse_tracing_option(name, opts[name])
        if "compression_min_size" in opts:
            self.compression_min_size = parse_int(opts["compression_min_size"], "compression_min_size",
                                                  minimum=0, maximum=MAX_VALUE_SIZE_LIMIT)
        if "compression_min_ratio" in opts:
            self.compression_min_ratio = parse_ratio(opts["compression_min_ratio"], "compression_min_ratio")
        if opts.get("config_cache"):
            self.config_cache = opts["config_cache"]

    def _check_unsupported(self, opts: Dict[str, str]) -> None:
        """Options this client parses but does not act on: warn, or refuse
        what cannot be honoured (see docs/connection-strings.md)."""
        if self.scheme == "memcached" and self.network not in ("auto", "default"):
            _warn("network=%s has no effect on memcached:// (no cluster config publishes alternate addresses)"
                  % self.network, OptionIgnoredWarning)
        if "detailed_errcodes" in opts and not parse_bool(opts["detailed_errcodes"], "detailed_errcodes"):
            _warn("detailed_errcodes=false is ignored: extended error codes (HELLO XERROR) are always requested",
                  OptionIgnoredWarning)
        if self.scheme == "memcached":
            moot = [name for name in _COUCHBASE_ONLY if name in opts]
            if moot:
                _warn("option(s) %s have no effect on memcached:// (plain memcached has no cluster map, "
                      "SASL, Snappy, durability or HTTP services)" % ", ".join(moot), OptionIgnoredWarning)


#: Options that only mean something for Couchbase clusters.
_COUCHBASE_ONLY = ("bootstrap_on", "select_bucket", "sasl_mech_force", "http_poolsize", "http_timeout",
                   "fetch_mutation_tokens", "enable_mutation_tokens", "config_poll_interval", "retry_nmv_delay",
                   "durability_timeout", "durability_interval", "compression", "compression_min_size",
                   "compression_min_ratio", "config_cache", "dnssrv_nameserver",
                   "dnssrv_timeout")


#: Host names never looked up in DNS (RFC 6761: "localhost" is answered
#: locally; resolvers do not send queries for it).
_LOCAL_NAMES = ("localhost", "localhost.")


def _configure_dnssrv(s: Settings, cs: ConnectionString, opts: Dict[str, str]) -> None:
    """Decide whether bootstrap starts with a DNS SRV lookup (libcouchbase
    2.10: ``couchbase://`` or ``couchbases://`` with exactly one host and no
    port, unless ``dnssrv=off``; ours: not for ``localhost`` or an address
    unless ``dnssrv=on``) and read the options that shape it."""
    from couchbase_core._engine.dns import (
        DNSFormatError,
        encode_srv_query,
        parse_nameserver,
        read_nameservers,
        srv_name,
    )

    if "dnssrv_timeout" in opts:
        s.dnssrv_timeout = _positive(parse_duration(opts["dnssrv_timeout"], "dnssrv_timeout"), "dnssrv_timeout")
    override = opts.get("dnssrv_nameserver")
    if override is not None:
        servers = []
        for item in override.split(","):
            try:
                servers.append(parse_nameserver(item))
            except ValueError as exc:
                raise ArgumentError("dnssrv_nameserver=%r: %s" % (override, exc)) from None
        s.dnssrv_nameservers = servers
    wanted: Optional[bool] = parse_bool(opts["dnssrv"], "dnssrv") if "dnssrv" in opts else None
    if wanted is False:
        return
    why_not = ""
    hosts = cs.host_entries()
    if cs.scheme not in ("couchbase", "couchbases"):
        why_not = "DNS SRV is only used with couchbase:// and couchbases://"
    elif len(hosts) != 1 or hosts[0].port is not None or hosts[0].proto is not None:
        why_not = "DNS SRV needs exactly one host and no port"
    elif not wanted and (hosts[0].host.lower() in _LOCAL_NAMES or _is_address(hosts[0].host)):
        # Not asked for explicitly: an address or localhost has no SRV
        # records, and a lookup would only delay the bootstrap.
        return
    if why_not:
        if wanted:
            _warn("dnssrv=on is ignored: %s; the hosts are contacted as given" % why_not, OptionIgnoredWarning)
        return
    name = srv_name(hosts[0].host, cs.is_ssl)
    try:
        encode_srv_query(name, 0)
    except DNSFormatError as exc:
        if wanted:
            _warn("dnssrv=on is ignored: %s" % exc, OptionIgnoredWarning)
        return
    s.dnssrv_name = name
    if s.dnssrv_nameservers is None:
        # A small local file, read once here (bucket construction), never
        # from the loop.
        s.dnssrv_nameservers = read_nameservers()


def _is_address(host: str) -> bool:
    import _socket

    try:
        _socket.inet_pton(_socket.AF_INET6 if ":" in host else _socket.AF_INET, host)
    except (OSError, ValueError):
        return False
    return True


def _warn(message: str, category: type) -> None:
    """Warn, attributed to the first caller outside this package."""
    import sys

    level = 1
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module.startswith("couchbase_core.") or module.startswith("gcouchbase.")):
            break
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


def snappy_available() -> bool:
    """True when the snappy codec (the ``cramjam`` package) is installed."""
    try:
        import cramjam  # noqa: F401
    except ImportError:
        return False
    return True


def _positive(value: float, name: str) -> float:
    if value <= 0:
        raise ArgumentError("%s must be greater than 0 (got %r)" % (name, value))
    return value

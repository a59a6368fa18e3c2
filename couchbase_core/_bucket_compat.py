"""Small public pieces of the 2.x ``Bucket`` that 2.x code still uses.

:class:`CompatMixin` (a base of :class:`~couchbase_core._bucket_core.BucketCore`)
adds: ``lcb_version()``, ``unlock_gil``, ``tracer`` and the tracing
threshold/orphan properties, ``redaction``, ``compression`` (with the
``COMPRESS_*`` constants), ``compression_min_size``/``compression_min_ratio``,
the low-level ``_cntl``/``_cntlstr`` for the settings people set through
them, ``add_bucket_creds``, and (from :mod:`couchbase_core.crypto`) the
field-encryption methods. docs/compat.md lists every piece.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

from couchbase_core._engine.protocol import Feature
from couchbase_core._engine.settings import TRACING_DEFAULTS, TRACING_SIZES, parse_tracing_option
from couchbase_core._engine.tracing import is_otel_tracer
from couchbase_core.connstr import parse_bool, parse_duration, parse_int, parse_ratio
from couchbase_core.crypto._bucket import CryptoMixin
from couchbase_core.exceptions import RC, ArgumentError, NotSupportedError, OptionIgnoredWarning

__all__ = ["CompatMixin", "COMPRESS_NONE", "COMPRESS_IN", "COMPRESS_OUT", "COMPRESS_INOUT", "COMPRESS_FORCE",
           "CNTL_NAMES"]

#: libcouchbase ``lcb_COMPRESSOPTS`` (2.x ``Bucket.compression`` values).
COMPRESS_NONE = 0x00
COMPRESS_IN = 0x01
COMPRESS_OUT = 0x02
COMPRESS_INOUT = 0x03
COMPRESS_FORCE = 0x04

#: ``compression`` connection-string value -> COMPRESS_* bits.
_MODE_BITS = {"off": COMPRESS_NONE, "inflate_only": COMPRESS_IN, "deflate_only": COMPRESS_OUT,
              "on": COMPRESS_INOUT, "force": COMPRESS_INOUT | COMPRESS_FORCE}

# libcouchbase lcb_cntl() codes (include/libcouchbase/cntl.h) of the settings
# _cntl supports, and their lcb_cntl_string() names.
LCB_CNTL_OP_TIMEOUT = 0x00
LCB_CNTL_VIEW_TIMEOUT = 0x01
LCB_CNTL_DURABILITY_TIMEOUT = 0x0D
LCB_CNTL_DURABILITY_INTERVAL = 0x0E
LCB_CNTL_HTTP_TIMEOUT = 0x0F
LCB_CNTL_CONFIGURATION_TIMEOUT = 0x12
LCB_CNTL_CONFIG_CACHE_LOADED = 0x15
LCB_CNTL_CONFIG_NODE_TIMEOUT = 0x1B
LCB_CNTL_COMPRESSION_OPTS = 0x26
LCB_CNTL_DETAILED_ERRCODES = 0x2A
LCB_CNTL_BUCKETNAME = 0x30
LCB_CNTL_N1QL_TIMEOUT = 0x3D
LCB_CNTL_LOG_REDACTION = 0x4C
LCB_CNTL_ENABLE_TRACING = 0x4E
LCB_CNTL_COMPRESSION_MIN_SIZE = 0x58
LCB_CNTL_COMPRESSION_MIN_RATIO = 0x59

#: Tracing cntl codes, by option name.
_TRACING_CNTLS = {
    0x4F: "tracing_orphaned_queue_flush_interval",
    0x50: "tracing_orphaned_queue_size",
    0x51: "tracing_threshold_queue_flush_interval",
    0x52: "tracing_threshold_queue_size",
    0x53: "tracing_threshold_kv",
    0x54: "tracing_threshold_n1ql",
    0x55: "tracing_threshold_view",
    0x56: "tracing_threshold_fts",
    0x57: "tracing_threshold_analytics",
}

#: Settings reachable through _cntl, by code: (name, kind). Kinds:
#: "timeout" (seconds), "bool", "size", "ratio", "compression", "readonly".
CNTL_NAMES: Dict[int, Tuple[str, str]] = {
    LCB_CNTL_OP_TIMEOUT: ("operation_timeout", "timeout"),
    LCB_CNTL_VIEW_TIMEOUT: ("views_timeout", "timeout"),
    LCB_CNTL_N1QL_TIMEOUT: ("n1ql_timeout", "timeout"),
    LCB_CNTL_CONFIGURATION_TIMEOUT: ("config_total_timeout", "timeout"),
    LCB_CNTL_CONFIG_NODE_TIMEOUT: ("config_node_timeout", "timeout"),
    LCB_CNTL_HTTP_TIMEOUT: ("http_timeout", "timeout"),
    LCB_CNTL_DURABILITY_TIMEOUT: ("durability_timeout", "timeout"),
    LCB_CNTL_DURABILITY_INTERVAL: ("durability_interval", "timeout"),
    LCB_CNTL_DETAILED_ERRCODES: ("detailed_errcodes", "bool"),
    LCB_CNTL_LOG_REDACTION: ("log_redaction", "bool"),
    LCB_CNTL_ENABLE_TRACING: ("enable_tracing", "bool"),
    LCB_CNTL_COMPRESSION_OPTS: ("compression", "compression"),
    LCB_CNTL_COMPRESSION_MIN_SIZE: ("compression_min_size", "size"),
    LCB_CNTL_COMPRESSION_MIN_RATIO: ("compression_min_ratio", "ratio"),
    LCB_CNTL_CONFIG_CACHE_LOADED: ("config_cache_loaded", "readonly"),
    LCB_CNTL_BUCKETNAME: ("bucketname", "readonly"),
    **{code: (name, "size" if name in TRACING_SIZES else "timeout") for code, name in _TRACING_CNTLS.items()},
}
_CNTL_BY_NAME = {name: (code, kind) for code, (name, kind) in CNTL_NAMES.items()}
_CNTL_BY_NAME["timeout"] = _CNTL_BY_NAME["operation_timeout"]
_CNTL_BY_NAME["query_timeout"] = _CNTL_BY_NAME["n1ql_timeout"]

#: Timeout names -> Settings attribute.
_TIMEOUT_ATTR = {"operation_timeout": "operation_timeout", "views_timeout": "views_timeout",
                 "n1ql_timeout": "n1ql_timeout", "config_total_timeout": "config_total_timeout",
                 "config_node_timeout": "config_node_timeout", "http_timeout": "http_timeout",
                 "durability_timeout": "durability_timeout", "durability_interval": "durability_interval"}

_VALUE_TYPES = ("timeout", "int", "uint32_t", "unsigned", "float", "string", None)


def _tracing_property(name: str) -> property:
    def fget(self: Any) -> float:
        return self._settings.tracing[name]

    def fset(self: Any, value: Any) -> None:
        self._set_tracing(name, value)

    unit = "entries" if name in TRACING_SIZES else "seconds"
    return property(fget, fset, doc="``%s`` (%s; libcouchbase default %r): see docs/observability.md. "
                                    "A change applies at once." % (name, unit, TRACING_DEFAULTS[name]))


class CompatMixin(CryptoMixin):
    """2.x ``Bucket`` pieces (see the module docs)."""

    COMPRESS_NONE = COMPRESS_NONE
    COMPRESS_IN = COMPRESS_IN
    COMPRESS_OUT = COMPRESS_OUT
    COMPRESS_INOUT = COMPRESS_INOUT
    COMPRESS_FORCE = COMPRESS_FORCE

    # Set by BucketCore.__init__ (class defaults keep half-built objects sane).
    _unlock_gil = True
    _tracer: Any = None

    # ------------------------------------------------------------- versions

    @staticmethod
    def lcb_version() -> Tuple[str, int]:
        """``(version, 0xMMmmpp)`` of this client (2.x returned
        libcouchbase's; see :func:`couchbase_core.lcb_version`)."""
        from couchbase_core import lcb_version

        return lcb_version()

    # -------------------------------------------------- constructor options

    def _init_compat(self, unlock_gil: Any, tracer: Any) -> None:
        """Take the 2.x constructor options ``unlock_gil`` and ``tracer``."""
        self._unlock_gil = True if unlock_gil is None else bool(unlock_gil)
        self._tracer = tracer
        if tracer is not None:
            if is_otel_tracer(tracer):
                self._settings.otel_tracer = tracer  # type: ignore[attr-defined]
            else:
                from couchbase_core._engine.settings import _warn

                _warn("tracer=%r is not an OpenTelemetry Tracer (opentelemetry-api): no spans are reported to it "
                      "(2.x took OpenTracing tracers; see docs/observability.md)" % (tracer,), OptionIgnoredWarning)
        self._bucket_creds: Dict[str, str] = {}

    @property
    def unlock_gil(self) -> bool:
        """The 2.x ``unlock_gil`` option (default True). It has no effect
        here: the client is pure Python, with no C call to release the GIL
        around, and the blocking bucket's waits (``select``) release it anyway."""
        return self._unlock_gil

    @property
    def tracer(self) -> Any:
        """The ``tracer`` given to the constructor, or None. An OpenTelemetry
        ``Tracer`` gets a span per operation (docs/observability.md); 2.x
        took an OpenTracing tracer, which is kept but not used (a warning
        said so)."""
        return self._tracer

    def _set_tracing(self, name: str, value: Any) -> None:
        # The engine's tracer reads this dict at each use: the change applies at once.
        self._settings.tracing[name] = parse_tracing_option(name, value)  # type: ignore[attr-defined]

    @property
    def enable_tracing(self) -> bool:
        """``enable_tracing``: the threshold and orphan reports of
        docs/observability.md are produced while True (settable)."""
        return self._settings.enable_tracing  # type: ignore[attr-defined]

    @enable_tracing.setter
    def enable_tracing(self, value: Any) -> None:
        flag = parse_bool(value, "enable_tracing")
        self._settings.enable_tracing = flag  # type: ignore[attr-defined]
        self._engine.set_tracing(flag)  # type: ignore[attr-defined]

    tracing_threshold_kv = _tracing_property("tracing_threshold_kv")
    tracing_threshold_n1ql = _tracing_property("tracing_threshold_n1ql")
    tracing_threshold_view = _tracing_property("tracing_threshold_view")
    tracing_threshold_fts = _tracing_property("tracing_threshold_fts")
    tracing_threshold_analytics = _tracing_property("tracing_threshold_analytics")
    tracing_threshold_queue_size = _tracing_property("tracing_threshold_queue_size")
    tracing_threshold_queue_flush_interval = _tracing_property("tracing_threshold_queue_flush_interval")
    tracing_orphaned_queue_size = _tracing_property("tracing_orphaned_queue_size")
    tracing_orphaned_queue_flush_interval = _tracing_property("tracing_orphaned_queue_flush_interval")

    @property
    def redaction(self) -> bool:
        """``log_redaction``: user data in this client's log messages is
        wrapped in ``<ud>...</ud>`` while True."""
        return self._settings.log_redaction  # type: ignore[attr-defined]

    @redaction.setter
    def redaction(self, value: Any) -> None:
        self._settings.log_redaction = parse_bool(value, "redaction")  # type: ignore[attr-defined]

    # ---------------------------------------------------------- compression

    @property
    def compression(self) -> int:
        """The Snappy mode as 2.x's ``COMPRESS_*`` bits: ``COMPRESS_NONE``
        (``compression=off``), ``COMPRESS_IN`` (``inflate_only``),
        ``COMPRESS_OUT`` (``deflate_only``), ``COMPRESS_INOUT`` (``on``, the
        default) or ``COMPRESS_INOUT | COMPRESS_FORCE`` (``force``). Set it
        to one of those (or to a mode name); the change applies to open
        connections at once."""
        return _MODE_BITS[self._settings.compression]  # type: ignore[attr-defined]

    @compression.setter
    def compression(self, value: Any) -> None:
        mode = _compression_mode(value)
        settings = self._settings  # type: ignore[attr-defined]
        if settings.scheme == "memcached":
            warnings.warn("compression has no effect on memcached:// (plain memcached has no Snappy)",
                          OptionIgnoredWarning, stacklevel=2)
        elif mode != "off" and Feature.SNAPPY not in settings.hello_features:
            from couchbase_core._engine.settings import snappy_available

            if not snappy_available():
                raise NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED, "message":
                                         "compression needs the snappy codec: install the 'snappy' extra "
                                         "(pip install 'gcouchbase[snappy]')"})
            settings.hello_features = settings.hello_features + (Feature.SNAPPY,)
            warnings.warn("compression was off when the bucket connected: Snappy is negotiated on "
                          "connections opened from now on; the open ones stay uncompressed",
                          OptionIgnoredWarning, stacklevel=2)
        settings.compression = mode
        self._reapply_compression()

    @property
    def compression_min_size(self) -> int:
        """Values smaller than this many bytes are sent uncompressed
        (libcouchbase ``compression_min_size``, default 32)."""
        return self._settings.compression_min_size  # type: ignore[attr-defined]

    @compression_min_size.setter
    def compression_min_size(self, value: Any) -> None:
        from couchbase_core._engine.settings import MAX_VALUE_SIZE_LIMIT

        self._settings.compression_min_size = parse_int(  # type: ignore[attr-defined]
            value, "compression_min_size", minimum=0, maximum=MAX_VALUE_SIZE_LIMIT)
        self._reapply_compression()

    @property
    def compression_min_ratio(self) -> float:
        """A compressed value is sent only if at most this fraction of the
        original (libcouchbase ``compression_min_ratio``, default 0.83)."""
        return self._settings.compression_min_ratio  # type: ignore[attr-defined]

    @compression_min_ratio.setter
    def compression_min_ratio(self, value: Any) -> None:
        self._settings.compression_min_ratio = parse_ratio(value, "compression_min_ratio")  # type: ignore
        self._reapply_compression()

    def _reapply_compression(self) -> None:
        for conn in list(self._engine.connections):  # type: ignore[attr-defined]
            if conn.features:
                conn.apply_compression()

    # ---------------------------------------------------- _cntl / _cntlstr

    def _cntl(self, op: int, value: Any = None, value_type: Optional[str] = None) -> Any:
        """Read (``value`` None) or change a setting by its libcouchbase
        ``lcb_cntl`` code, as 2.x's ``Bucket._cntl``. Supported: the
        timeouts (``0x00`` operation, ``0x01`` views, ``0x3D`` N1QL,
        ``0x12`` config total, ``0x1B`` config node, ``0x0F`` HTTP, ``0x0D``/
        ``0x0E`` durability), ``0x2A`` detailed_errcodes, ``0x4C``
        log_redaction, ``0x26`` compression, ``0x58``/``0x59`` compression
        min size/ratio, ``0x4E``-``0x57`` tracing, and read-only ``0x15``
        (config cache loaded) and ``0x30`` (bucket name). Timeouts are
        seconds for ``value_type`` ``'timeout'``/``'float'`` (the default)
        and microseconds for the integer types, as in 2.x.

        Raises:
            NotSupportedError: another code (the message lists the supported ones).
            ArgumentError: a bad value or value_type.
        """
        if isinstance(op, bool) or not isinstance(op, int):
            raise ArgumentError("_cntl needs an int lcb_cntl code, not %r" % (op,))
        if value_type not in _VALUE_TYPES:
            raise ArgumentError("value_type must be one of %s" % ", ".join(repr(v) for v in _VALUE_TYPES))
        entry = CNTL_NAMES.get(op)
        if entry is None:
            raise NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED, "message":
                                     "_cntl(0x%02X) is not supported here; supported codes: %s" % (
                                         op, ", ".join("0x%02X (%s)" % (c, n) for c, (n, _k)
                                                       in sorted(CNTL_NAMES.items())))})
        return self._setting(entry[0], entry[1], value, value_type)

    def _cntlstr(self, key: str, value: Any) -> None:
        """Change a setting by its ``lcb_cntl_string`` name (a string value
        as in a connection string), as 2.x's ``Bucket._cntlstr``: the names
        of :meth:`_cntl`'s settings, plus ``timeout``/``query_timeout``.

        Raises:
            NotSupportedError: another name (the message lists the supported ones).
            ArgumentError: a bad value.
        """
        entry = _CNTL_BY_NAME.get(key) if isinstance(key, str) else None
        if entry is None or entry[1] == "readonly":
            names = sorted(n for n, (_c, k) in _CNTL_BY_NAME.items() if k != "readonly")
            raise NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED, "message":
                                     "_cntlstr(%r) is not supported here; supported: %s" % (key, ", ".join(names))})
        code, kind = entry
        self._setting(CNTL_NAMES[code][0], kind, value, "string")

    def _setting(self, name: str, kind: str, value: Any, value_type: Optional[str]) -> Any:
        settings = self._settings  # type: ignore[attr-defined]
        micro = value_type in ("int", "uint32_t", "unsigned")
        if kind == "readonly":
            if value is not None:
                raise ArgumentError("%s is read-only" % name)
            if name == "bucketname":
                return self.bucket  # type: ignore[attr-defined]
            boot = getattr(self._engine, "_bootstrapper", None)  # type: ignore[attr-defined]
            return int(bool(boot is not None and boot.used_cache))
        if kind == "timeout":
            current = settings.tracing[name] if name in TRACING_DEFAULTS else getattr(settings, _TIMEOUT_ATTR[name])
            if value is None:
                return int(round(current * 1e6)) if micro else current
            seconds = parse_duration(value / 1e6 if micro and not isinstance(value, str) else value, name)
            if name in TRACING_DEFAULTS:
                self._set_tracing(name, seconds)
            elif name == "operation_timeout":
                self.timeout = seconds
            else:
                if seconds <= 0:
                    raise ArgumentError("%s must be greater than 0 (got %r)" % (name, value))
                setattr(settings, _TIMEOUT_ATTR[name], seconds)
            return None
        if kind == "bool":
            if value is None:
                current = {"detailed_errcodes": True, "log_redaction": settings.log_redaction,
                           "enable_tracing": settings.enable_tracing}[name]
                return int(current)
            flag = parse_bool(value, name)
            if name == "detailed_errcodes":
                if not flag:
                    warnings.warn("detailed_errcodes=false is ignored: extended error codes are always used",
                                  OptionIgnoredWarning, stacklevel=3)
            elif name == "log_redaction":
                settings.log_redaction = flag
            else:
                self.enable_tracing = flag
            return None
        if kind == "compression":
            if value is None:
                return self.compression
            self.compression = value
            return None
        if kind == "size":
            if value is None:
                return settings.tracing[name] if name in TRACING_DEFAULTS else self.compression_min_size
            if name in TRACING_DEFAULTS:
                self._set_tracing(name, value)
            else:
                self.compression_min_size = value
            return None
        # ratio
        if value is None:
            return self.compression_min_ratio
        self.compression_min_ratio = value
        return None

    # ------------------------------------------------------------ the rest

    def add_bucket_creds(self, bucket: str, password: str) -> None:
        """Add the password of another bucket (2.x ``add_bucket_creds``):
        sent, with this bucket's credentials, in the ``creds`` of
        cross-bucket N1QL queries (``N1QLQuery.cross_bucket = True``).

        Raises:
            ValueError: an empty bucket name or password (as 2.x).
        """
        if not bucket or not password:
            raise ValueError("Bucket and password must be nonempty")
        if not isinstance(bucket, str) or not isinstance(password, str):
            raise ArgumentError("bucket and password must be str")
        self._bucket_creds[bucket] = password


def _compression_mode(value: Any) -> str:
    """COMPRESS_* bits or a mode name -> the connection-string mode."""
    if isinstance(value, str):
        mode = value.strip().lower()
        if mode in _MODE_BITS:
            return mode
        raise ArgumentError("compression must be one of %s or a COMPRESS_* value, not %r"
                            % (", ".join(sorted(_MODE_BITS)), value))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0x07:
        raise ArgumentError("compression must be a COMPRESS_* value (0..7) or a mode name, not %r" % (value,))
    if value & COMPRESS_FORCE:
        return "force"
    return {COMPRESS_NONE: "off", COMPRESS_IN: "inflate_only", COMPRESS_OUT: "deflate_only",
            COMPRESS_INOUT: "on"}[value]


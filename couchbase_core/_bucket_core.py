"""The bucket object itself: construction, settings properties, close.

:class:`BucketCore` parses the connection string into the engine's
:class:`~couchbase_core._engine.settings.Settings`, creates the
:class:`~couchbase_core._engine.instance.Engine` on the flavour's IOPS, and
exposes the settings a caller may read or change (``timeout``, ``quiet``,
``transcoder``...) and the bucket's lifecycle (``close``, ``with``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

from couchbase_core import _config_cache, _formats
from couchbase_core._bucket_args import _FMT_JSON, _seconds
from couchbase_core._bucket_compat import CompatMixin
from couchbase_core._config_cache import CacheWriter
from couchbase_core._engine.instance import Engine
from couchbase_core._engine.settings import Settings
from couchbase_core.connstr import ConnectionString
from couchbase_core.exceptions import ArgumentError, InvalidError, NotSupportedError

if TYPE_CHECKING:
    from couchbase_core._bucketbase import BaseBucket


__all__ = ["BucketCore"]


def _parsed(text: str) -> ConnectionString:
    """The parsed connection string; one that does not parse is an
    InvalidError (what 2.x raised for it), whose ``inner_cause`` is the
    parser's ArgumentError."""
    try:
        return ConnectionString.parse(text)
    except ArgumentError as exc:
        raise InvalidError({"message": "malformed connection string: %s" % exc.message,
                            "inner_cause": exc}) from exc


#: Options every bucket constructor accepts besides connection-string options.
_CTOR_OPTIONS = ("quiet", "transcoder", "lockmode", "unlock_gil", "tracer", "default_format", "data_passthrough")


class BucketCore(CompatMixin):
    """Construction, settings and lifecycle of :class:`~couchbase_core._bucketbase.BaseBucket`
    (and, through :class:`~couchbase_core._bucket_compat.CompatMixin`, the small 2.x pieces)."""

    #: ``True`` for the async bucket, whose calls never wait.
    _is_async = False

    def __init__(self, connection_string: Any = None, username: Optional[str] = None,
                 password: Optional[str] = None, quiet: bool = False, transcoder: Any = None,
                 lockmode: int = _formats.LOCKMODE_EXC, **kwargs: Any) -> None:
        if connection_string is None:
            connection_string = kwargs.pop("connstr", None)
        if connection_string is None:
            raise ArgumentError("a connection string is required, e.g. 'memcached://localhost:11211'")
        unlock_gil = kwargs.pop("unlock_gil", None)  # 2.x option: no effect here (see _bucket_compat)
        tracer = kwargs.pop("tracer", None)
        default_format = kwargs.pop("default_format", _FMT_JSON)
        data_passthrough = kwargs.pop("data_passthrough", False)
        if isinstance(connection_string, str):
            connection_string = _parsed(connection_string)
        self._settings = Settings.from_connstr(connection_string, username, password, **kwargs)
        if self._settings.scheme == "memcached" and (self._settings.username or self._settings.password):
            raise NotSupportedError(
                "memcached:// connections are unauthenticated: SASL is not offered for plain memcached "
                "(drop the username/password, or use couchbase:// for a Couchbase cluster)")
        self._quiet = bool(quiet)
        self._transcoder = None
        # As 2.x: a class given to the constructor is instantiated.
        self.transcoder = transcoder() if isinstance(transcoder, type) else transcoder
        self._lockmode = lockmode
        if lockmode not in (_formats.LOCKMODE_EXC, _formats.LOCKMODE_WAIT, _formats.LOCKMODE_NONE):
            raise ArgumentError("lockmode must be LOCKMODE_EXC, LOCKMODE_WAIT or LOCKMODE_NONE")
        self.default_format = default_format
        self.data_passthrough = data_passthrough
        self._timeout = self._settings.operation_timeout
        #: This bucket's key in the callers' pipeline / durability scopes.
        self._scope = object()
        self._iops = self._make_iops(kwargs)
        self._init_compat(unlock_gil, tracer)
        self._use_config_cache()
        self._engine = Engine(self._iops, self._settings)
        if self._settings.config_cache and self._settings.scheme != "memcached":
            self._engine.add_config_listener(CacheWriter(self._settings.config_cache))
        self._start()

    def _use_config_cache(self) -> None:
        """``config_cache``: seed the bootstrap from the file when it holds a
        valid config of this bucket (see couchbase_core._config_cache)."""
        settings = self._settings
        if not settings.config_cache or settings.scheme == "memcached":
            return
        kv, mgmt = _config_cache.load(settings.config_cache, settings.bucket or "default",
                                      tls=settings.tls is not None)
        settings.cached_seeds, settings.cached_http_seeds = kv, mgmt

    # ------------------------------------------------------------ properties

    @property
    def timeout(self) -> float:
        """Key-value operation timeout in seconds (``operation_timeout``)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = self._settings.operation_timeout = _seconds(value, "timeout")

    @property
    def views_timeout(self) -> float:
        """View query timeout in seconds."""
        return self._settings.views_timeout

    @views_timeout.setter
    def views_timeout(self, value: float) -> None:
        self._settings.views_timeout = _seconds(value, "views_timeout")

    @property
    def n1ql_timeout(self) -> float:
        """N1QL query timeout in seconds."""
        return self._settings.n1ql_timeout

    @n1ql_timeout.setter
    def n1ql_timeout(self, value: float) -> None:
        self._settings.n1ql_timeout = _seconds(value, "n1ql_timeout")

    @property
    def quiet(self) -> bool:
        """Default for ``quiet`` on reads: a miss returns a failed result
        instead of raising NotFoundError."""
        return self._quiet

    @quiet.setter
    def quiet(self, value: bool) -> None:
        self._quiet = bool(value)

    @property
    def default_format(self) -> int:
        """Format used by stores when ``format`` is not given (``FMT_JSON``)."""
        return self._default_format

    @default_format.setter
    def default_format(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgumentError("default_format must be one of the FMT_* constants")
        self._default_format = value

    @property
    def data_passthrough(self) -> bool:
        """When True, reads return raw bytes and stores take bytes as they are."""
        return self._data_passthrough

    @data_passthrough.setter
    def data_passthrough(self, value: bool) -> None:
        self._data_passthrough = bool(value)

    @property
    def transcoder(self) -> Any:
        """The custom :class:`~couchbase_core.transcoder.Transcoder`, or None
        for the built-in conversions."""
        return self._transcoder

    @transcoder.setter
    def transcoder(self, value: Any) -> None:
        # As 2.x: any object is accepted and a false one means "none"; its
        # methods are checked when used (a missing or failing one is a
        # ValueFormatError for that operation).
        self._transcoder = value if value else None

    @property
    def lockmode(self) -> int:
        """How a blocking bucket reacts to use by several threads."""
        return self._lockmode

    @property
    def bucket(self) -> str:
        """The bucket name (``'default'`` when the connection string has none)."""
        return self._settings.bucket or "default"

    @property
    def server_nodes(self) -> List[str]:
        """``host:port`` of every key-value node."""
        return [c.authority for c in self._engine.connections]

    @property
    def connected(self) -> bool:
        """True while at least one node connection is up."""
        return self._engine.connected

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._engine.closed

    @property
    def is_ssl(self) -> bool:
        """True for TLS connections (``couchbases://``)."""
        return self._settings.scheme == "couchbases"

    @property
    def is_memcached(self) -> bool:
        """True for ``memcached://`` buckets (plain memcached, no Couchbase features)."""
        return self._settings.scheme == "memcached"

    def close(self) -> None:
        """Close every connection. Pending operations fail with
        ObjectDestroyedError; later calls raise it."""
        self._engine.close()

    def __del__(self) -> None:
        # A bucket dropped without close() must not leave sockets and loop
        # watchers behind (the engine never refers back to the bucket).
        engine = self.__dict__.get("_engine")
        if engine is not None and not engine.closed:
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self) -> "BaseBucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("connected" if self.connected else "connecting")
        return "<%s.%s %s://%s bucket=%r %s>" % (
            type(self).__module__, type(self).__name__, self._settings.scheme,
            ",".join(self.server_nodes), self.bucket, state)

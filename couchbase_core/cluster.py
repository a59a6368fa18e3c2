"""The 2.5 ``Cluster`` entry point and its authenticators.

Code written for the 2.5 SDK as::

    from couchbase.cluster import Cluster, PasswordAuthenticator

    cluster = Cluster("couchbase://10.0.0.1")
    cluster.authenticate(PasswordAuthenticator("app", "secret"))
    bucket = cluster.open_bucket("travel")

runs here with ``couchbase_core.cluster`` as the module. A :class:`Cluster`
holds a connection string without a bucket and an authenticator; each
:meth:`Cluster.open_bucket` builds one bucket (of ``bucket_class``: the
blocking, the asynchronous or the gevent one) with the bucket's name in
the connection string and the authenticator's credentials. Cluster-level
N1QL and analytics queries run through any bucket the cluster opened that
is still alive, as in 2.5. See ``docs/cluster.md``.
"""

from __future__ import annotations

import warnings
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from couchbase_core.bucket import Bucket
from couchbase_core.connstr import ConnectionString
from couchbase_core.exceptions import (
    ArgumentError,
    CouchbaseInputError,
    NotSupportedError,
    OptionIgnoredWarning,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from couchbase_core.admin import Admin
    from couchbase_core.n1ql import N1QLRequest

__all__ = [
    "Cluster",
    "Authenticator",
    "PasswordAuthenticator",
    "ClassicAuthenticator",
    "CertAuthenticator",
    "MixedAuthError",
    "NoBucketError",
]


class MixedAuthError(ArgumentError):
    """Two kinds of authentication were mixed: a password passed to
    :meth:`Cluster.open_bucket` next to a :class:`PasswordAuthenticator` or
    :class:`CertAuthenticator`, or certificate options in the connection
    string that contradict the :class:`CertAuthenticator`."""


class NoBucketError(CouchbaseInputError):
    """A cluster-level query needs a bucket the cluster opened that is still
    open (2.5 ran cluster queries through one)."""


class _BadClusterArgument(ArgumentError, ValueError):
    """A bad argument to :class:`Cluster`: 2.5 raised ``ValueError`` here,
    so this is both that and this client's ``ArgumentError``."""


#: Connection string options an authenticator may set.
_CERT_OPTIONS = ("certpath", "keypath", "truststorepath")


class Authenticator:
    """What credentials a :class:`Cluster` uses, for a bucket or for
    cluster management. Subclasses: :class:`PasswordAuthenticator`,
    :class:`ClassicAuthenticator`, :class:`CertAuthenticator`."""

    #: The credentials travel in a client certificate (no password anywhere).
    uses_certificate = False

    def get_credentials(self, bucket: Optional[str] = None) -> Dict[str, Any]:
        """The 2.5 form: ``{'options': {...}}`` plus ``'scheme'`` when the
        authenticator imposes one; for ``bucket``, or for cluster management
        when ``bucket`` is None."""
        username, password = self.bucket_credentials(bucket) if bucket else self.management_credentials()
        options: Dict[str, Any] = {"username": username, "password": password}
        options.update(self.connection_options())
        result: Dict[str, Any] = {"options": options}
        scheme = self.scheme()
        if scheme is not None:
            result["scheme"] = scheme
        return result

    def bucket_credentials(self, bucket: str) -> Tuple[Optional[str], Optional[str]]:
        """(user name, password) for opening ``bucket``."""
        raise NotImplementedError

    def management_credentials(self) -> Tuple[Optional[str], Optional[str]]:
        """(user name, password) for cluster management (:class:`~couchbase_core.admin.Admin`)."""
        raise NotImplementedError

    def connection_options(self) -> Dict[str, str]:
        """Connection string options this authenticator sets (none by default)."""
        return {}

    def scheme(self) -> Optional[str]:
        """The scheme every connection must use, or None for any."""
        return None

    @classmethod
    def unwanted_keys(cls) -> set:
        """Options that contradict this kind of authentication."""
        return set()


def _check_text(value: Any, what: str, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ArgumentError("%s must be a str, not %s" % (what, type(value).__name__))


class PasswordAuthenticator(Authenticator):
    """One user name and password (RBAC, Couchbase Server 5.0 and later),
    used for every bucket and for cluster management.

    Args:
        username: the RBAC user.
        password: its password.
    """

    def __init__(self, username: str, password: str) -> None:
        _check_text(username, "username", optional=False)
        _check_text(password, "password", optional=False)
        self.username = username
        self.password = password

    def __repr__(self) -> str:
        return "PasswordAuthenticator(%r, <password>)" % self.username

    def bucket_credentials(self, bucket: str) -> Tuple[Optional[str], Optional[str]]:
        """The user and password, whatever the bucket."""
        return self.username, self.password

    def management_credentials(self) -> Tuple[Optional[str], Optional[str]]:
        """The user and password."""
        return self.username, self.password

    @classmethod
    def unwanted_keys(cls) -> set:
        """A separate password would contradict this authenticator's."""
        return {"password"}


class ClassicAuthenticator(Authenticator):
    """Pre-5.0 authentication: a password per bucket, and the
    administrator's credentials for cluster management.

    Args:
        cluster_username, cluster_password: the administrator (only needed
            for :meth:`Cluster.cluster_manager`).
        buckets: ``{bucket name: bucket password}``; buckets not listed are
            opened without a password.
    """

    def __init__(self, cluster_username: Optional[str] = None, cluster_password: Optional[str] = None,
                 buckets: Optional[Dict[str, str]] = None) -> None:
        _check_text(cluster_username, "cluster_username")
        _check_text(cluster_password, "cluster_password")
        if buckets is not None and not isinstance(buckets, dict):
            raise ArgumentError("buckets must be a dict of bucket name -> password, not %s" % type(buckets).__name__)
        for name, password in (buckets or {}).items():
            _check_text(name, "a bucket name in buckets", optional=False)
            _check_text(password, "the password of bucket %r" % name)
        self.username = cluster_username
        self.password = cluster_password
        self.buckets: Dict[str, str] = dict(buckets or {})

    def __repr__(self) -> str:
        return "ClassicAuthenticator(%r, <password>, buckets=%r)" % (self.username, sorted(self.buckets))

    def bucket_credentials(self, bucket: str) -> Tuple[Optional[str], Optional[str]]:
        """No user name (the bucket is the SASL user) and the bucket's password."""
        return None, self.buckets.get(bucket)

    def management_credentials(self) -> Tuple[Optional[str], Optional[str]]:
        """The administrator's user name and password."""
        return self.username, self.password


class CertAuthenticator(Authenticator):
    """Client certificate (X.509) authentication over TLS (Couchbase Server
    5.5+ Enterprise). Buckets are opened on ``couchbases://`` with the
    client certificate; no password is sent anywhere.

    Args:
        cert_path: the client certificate chain (PEM).
        key_path: its private key (PEM, unencrypted).
        trust_store_path: CA certificates that verify the servers (PEM);
            without it ``cert_path`` is also loaded as trusted certificates,
            and the system's store is used as well.
        cluster_username, cluster_password: an administrator for
            :meth:`Cluster.cluster_manager`; without them management also
            authenticates with the certificate.
    """

    uses_certificate = True

    def __init__(self, cert_path: Optional[str] = None, key_path: Optional[str] = None,
                 trust_store_path: Optional[str] = None, cluster_username: Optional[str] = None,
                 cluster_password: Optional[str] = None) -> None:
        for value, what in ((cert_path, "cert_path"), (key_path, "key_path"), (trust_store_path, "trust_store_path"),
                            (cluster_username, "cluster_username"), (cluster_password, "cluster_password")):
            _check_text(value, what)
        self.cert_path = cert_path
        self.key_path = key_path
        self.trust_store_path = trust_store_path
        self.username = cluster_username
        self.password = cluster_password

    def __repr__(self) -> str:
        return "CertAuthenticator(cert_path=%r, key_path=%r, trust_store_path=%r)" % (
            self.cert_path, self.key_path, self.trust_store_path)

    # 2.5 spelled the paths like the connection string options on some versions
    certpath = property(lambda self: self.cert_path, doc="Same as :attr:`cert_path`.")
    keypath = property(lambda self: self.key_path, doc="Same as :attr:`key_path`.")

    def bucket_credentials(self, bucket: str) -> Tuple[Optional[str], Optional[str]]:
        """None: the certificate names the user."""
        return None, None

    def management_credentials(self) -> Tuple[Optional[str], Optional[str]]:
        """The administrator given to the constructor, if any."""
        return self.username, self.password

    def connection_options(self) -> Dict[str, str]:
        """``certpath``, ``keypath`` and ``truststorepath`` (those given)."""
        options = {"certpath": self.cert_path, "keypath": self.key_path, "truststorepath": self.trust_store_path}
        return {name: value for name, value in options.items() if value}

    def scheme(self) -> Optional[str]:
        """``couchbases``: a certificate only means something over TLS."""
        return "couchbases"

    @classmethod
    def unwanted_keys(cls) -> set:
        """Any password contradicts certificate authentication."""
        return {"password"}


class Cluster:
    """A cluster: a connection string without a bucket, an authenticator,
    and the buckets opened through it.

    Args:
        connection_string: hosts and options, but no bucket and no
            credentials (those come from :meth:`authenticate`).
        bucket_class: what :meth:`open_bucket` builds:
            :class:`couchbase_core.bucket.Bucket` (default),
            :class:`couchbase_core.asynchronous.bucket.AsyncBucket` (pass
            ``iops=`` to :meth:`open_bucket`) or
            :class:`gcouchbase.bucket.Bucket`.

    Raises:
        ArgumentError (also a ``ValueError``, as in 2.5): a bucket, a
            ``username`` or a ``password`` in the connection string.
    """

    def __init__(self, connection_string: Any = "couchbase://localhost", bucket_class: Any = Bucket) -> None:
        if isinstance(connection_string, ConnectionString):
            connstr = connection_string.copy()
        elif isinstance(connection_string, str):
            connstr = ConnectionString.parse(connection_string)
        else:
            raise _BadClusterArgument("connection_string must be a str, not %s" % type(connection_string).__name__)
        if connstr.bucket:
            raise _BadClusterArgument("Cannot pass bucket to connection string: %s (open it with open_bucket())"
                                      % connstr.bucket)
        for name in ("username", "password"):
            if name in connstr.options:
                raise _BadClusterArgument("%s must be specified in the authenticator, not the connection string"
                                          % name)
        if not callable(bucket_class):
            raise _BadClusterArgument("bucket_class must be a bucket class, not %r" % (bucket_class,))
        self.connstr = connstr
        self.bucket_class = bucket_class
        self.authenticator: Optional[Authenticator] = None
        #: bucket name -> weak reference to the last bucket opened under it
        self._buckets: Dict[str, "weakref.ReferenceType[Any]"] = {}

    def __repr__(self) -> str:
        return "Cluster(%r, bucket_class=%s)" % (str(self.connstr), getattr(self.bucket_class, "__name__", "?"))

    # ------------------------------------------------------------ credentials

    def authenticate(self, authenticator: Optional[Authenticator] = None, username: Optional[str] = None,
                     password: Optional[str] = None) -> None:
        """Set the credentials for the buckets opened from now on and for
        cluster management: an :class:`Authenticator`, or ``username`` and
        ``password`` (a :class:`PasswordAuthenticator`).

        Raises:
            ArgumentError (also a ``ValueError``): neither an authenticator
                nor a non-empty user name and password.
        """
        if authenticator is None:
            if not username:
                raise _BadClusterArgument("username must not be empty.")
            if not password:
                raise _BadClusterArgument("password must not be empty.")
            authenticator = PasswordAuthenticator(username, password)
        elif not isinstance(authenticator, Authenticator):
            raise _BadClusterArgument("authenticator must be an Authenticator (PasswordAuthenticator, "
                                      "ClassicAuthenticator, CertAuthenticator), not %s"
                                      % type(authenticator).__name__)
        self.authenticator = authenticator

    # ----------------------------------------------------------------- buckets

    def open_bucket(self, bucket_name: str, **kwargs: Any) -> Any:
        """Open ``bucket_name`` with the cluster's authenticator.

        ``kwargs`` go to ``bucket_class`` (``quiet``, ``transcoder``,
        ``operation_timeout``, ``iops`` for an AsyncBucket...). With a
        :class:`ClassicAuthenticator` a ``password`` here replaces the
        bucket's password.

        Raises:
            MixedAuthError: a ``password`` next to a
                :class:`PasswordAuthenticator` or :class:`CertAuthenticator`,
                or certificate options in the connection string that differ
                from the :class:`CertAuthenticator`'s.
            ArgumentError: an empty or non-str bucket name.
        """
        if not isinstance(bucket_name, str) or not bucket_name:
            raise ArgumentError("bucket_name must be a non-empty str, not %r" % (bucket_name,))
        connstr = self.connstr.copy()
        connstr.bucket = bucket_name
        auth = self.authenticator
        if auth is not None:
            username, password = auth.bucket_credentials(bucket_name)
            if "password" in kwargs and "password" in auth.unwanted_keys():
                raise MixedAuthError("Cannot override %ss password: open_bucket() got a password, but the "
                                     "cluster authenticates with %r" % (type(auth).__name__, auth))
            self._apply_certificate_options(auth, connstr, kwargs)
            scheme = auth.scheme()
            if scheme is not None and connstr.scheme != scheme:
                if connstr.scheme not in ("couchbase", "couchbases"):
                    raise MixedAuthError("%s needs a couchbase:// or couchbases:// connection string, not %s://"
                                         % (type(auth).__name__, connstr.scheme))
                connstr.scheme = scheme
            if username is not None:
                kwargs.setdefault("username", username)
            if password is not None:
                kwargs.setdefault("password", password)
        bucket = self.bucket_class(connection_string=connstr.encode(include_secrets=True), **kwargs)
        if isinstance(auth, ClassicAuthenticator):
            # As 2.5: the other buckets' passwords go with cross-bucket N1QL.
            for name, password in auth.buckets.items():
                if name != bucket_name and password:
                    bucket.add_bucket_creds(name, password)
        self._buckets[bucket_name] = weakref.ref(bucket)
        return bucket

    @staticmethod
    def _apply_certificate_options(auth: Authenticator, connstr: ConnectionString, kwargs: Dict[str, Any]) -> None:
        """Put the authenticator's certificate options into ``connstr``,
        refusing contradicting ones from the string or ``kwargs``."""
        wanted = auth.connection_options()
        for name in _CERT_OPTIONS:
            given = [value for value in (connstr.get_option(name), kwargs.get(name)) if value is not None]
            if name in wanted:
                if any(str(value) != wanted[name] for value in given):
                    raise MixedAuthError("%s=%r contradicts the %s's %s %r" % (
                        name, given[0], type(auth).__name__, name, wanted[name]))
                kwargs.pop(name, None)
                connstr.set_option(name, wanted[name])
            elif auth.uses_certificate and name == "keypath" and given:
                raise MixedAuthError("keypath=%r given outside the CertAuthenticator, which has no key_path"
                                     % given[0])

    def _open_buckets(self) -> Any:
        """Every bucket opened through this cluster that is still alive and
        open, forgetting the dead ones."""
        for name, ref in list(self._buckets.items()):
            bucket = ref()
            if bucket is None or getattr(bucket, "closed", False):
                del self._buckets[name]
                continue
            yield bucket

    def _an_open_bucket(self, what: str) -> Any:
        for bucket in self._open_buckets():
            return bucket
        raise NoBucketError("Must have at least one active bucket for %s" % what)

    # -------------------------------------------------------------- management

    def cluster_manager(self) -> Admin:
        """An :class:`~couchbase_core.admin.Admin` for the cluster, with the
        authenticator's management credentials (a :class:`CertAuthenticator`
        without cluster credentials uses its certificate).

        The management endpoint is an ``=http``/``=https`` host of the
        connection string if it names one, else the first node of the
        cluster map of a bucket this cluster opened, else the first host on
        the default management port.

        Raises:
            ArgumentError: no authenticator was set.
        """
        from couchbase_core.admin import Admin

        auth = self.authenticator
        if auth is None:
            raise ArgumentError("cluster_manager() needs credentials: call authenticate() first")
        username, password = auth.management_credentials()
        tls = self.connstr.is_ssl or auth.scheme() == "couchbases"
        host, port = self._management_endpoint(tls)
        options = {name: value for name, value in self.connstr.option_values().items()
                   if name in ("certpath", "truststorepath")}
        if self.connstr.get_option("ssl") == "no_verify":
            warnings.warn("ssl=no_verify is not passed to cluster_manager(): the Admin connection verifies the "
                          "server's certificate (give certpath or truststorepath)", OptionIgnoredWarning,
                          stacklevel=2)
        if auth.uses_certificate:
            assert isinstance(auth, CertAuthenticator)
            if auth.trust_store_path:
                options["truststorepath"] = auth.trust_store_path
            if username is None and password is None:
                options.update(auth.connection_options())  # authenticate with the certificate
            elif auth.cert_path and not auth.trust_store_path:
                options.setdefault("certpath", auth.cert_path)  # trust what the certificate file holds
        certpath = options.pop("certpath", None)
        return Admin(username, password, host=host, port=port, ssl=tls, certpath=certpath, **options)

    def _management_endpoint(self, tls: bool) -> Tuple[str, int]:
        cs = self.connstr
        for entry in cs.host_entries():
            if entry.proto in ("http", "https") or (entry.proto is None and cs.scheme == "http" and entry.port):
                return entry.host, entry.port or (18091 if tls else 8091)
        for bucket in self._open_buckets():
            engine = getattr(bucket, "_engine", None)
            config = getattr(engine, "config", None)
            if config is not None:
                found = config.service_endpoints("mgmt", tls=tls)
                if found:
                    return found[0]
        endpoints = cs.http_endpoints() or [(cs.host_entries()[0].host, 8091)]
        host, port = endpoints[0]
        return host, (18091 if tls and port == 8091 else port)

    # ----------------------------------------------------------------- queries

    def n1ql_query(self, query: Any, *args: Any, **kwargs: Any) -> N1QLRequest:
        """A "cluster-level" N1QL query, run through a bucket this cluster
        opened (any one still open) as a cross-bucket query: the request
        carries the bucket's credentials, so it may read the other buckets
        those credentials reach.

        ``query`` is a :class:`~couchbase_core.n1ql.N1QLQuery` or a
        statement whose parameters are ``args``/``kwargs``; ``itercls`` and
        ``row_factory`` go to the bucket's ``n1ql_query``.

        Raises:
            NoBucketError: no bucket is open.
        """
        from couchbase_core.n1ql import N1QLQuery

        bucket = self._an_open_bucket("query")
        passed = {name: kwargs.pop(name) for name in ("itercls", "row_factory") if name in kwargs}
        if not isinstance(query, N1QLQuery):
            query = N1QLQuery(query, *args, **kwargs)
        elif args or kwargs:
            raise ArgumentError("parameters go into the N1QLQuery when one is given")
        settings = getattr(bucket, "_settings", None)
        if getattr(settings, "keypath", None) is None:
            # a certificate-authenticated bucket has no password to put in
            # the query's "creds"; the server knows the user from the TLS session
            query.cross_bucket = True
        return bucket.n1ql_query(query, **passed)

    def analytics_query(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        """An analytics query, run through a bucket this cluster opened (any
        one still open): ``bucket.analytics_query(query, *args, **kwargs)``.

        Raises:
            NoBucketError: no bucket is open.
            NotSupportedError: the bucket class has no ``analytics_query``.
        """
        bucket = self._an_open_bucket("analytics query")
        method = getattr(bucket, "analytics_query", None)
        if method is None:
            raise NotSupportedError("%s has no analytics_query()" % type(bucket).__name__)
        return method(query, *args, **kwargs)

"""Admin: cluster management over the REST API (buckets, users), as in 2.x.

``Admin(username, password, host='localhost', port=8091)`` talks to a
node's management port. Like 2.x, which connected in the constructor, it
checks the credentials at once: wrong ones raise
:class:`~couchbase_core.exceptions.AuthError` there, an unreachable node a
network error. Calls block until the server answered (from a gevent
program the wait is cooperative only when the process is monkey-patched).
A non-2xx answer raises :class:`~couchbase_core.exceptions.HTTPError`
whose ``objextra`` (and ``result``) is the :class:`~couchbase_core.result.HttpResult`.

See ``docs/admin.md``.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from couchbase_core._formats import FMT_JSON
from couchbase_core.auth_domain import AuthDomain, domain_path_name
from couchbase_core.connstr import ConnectionString
from couchbase_core.exceptions import ArgumentError, AuthError, CouchbaseError, HTTPError

__all__ = ["Admin", "AuthDomain", "NotReadyError", "METHMAP"]

#: The HTTP methods :meth:`Admin.http_request` accepts (2.x's table; the
#: values are only markers here).
METHMAP = {"GET": "GET", "PUT": "PUT", "POST": "POST", "DELETE": "DELETE"}

_BUCKET_TYPES = ("couchbase", "membase", "memcached", "ephemeral")


class NotReadyError(CouchbaseError):
    """:meth:`Admin.wait_ready` gave up: some node of the bucket is not
    healthy yet."""


def _admin_connection(connstr: str, username: str, password: str, **kwargs: Any) -> Any:
    from couchbase_core.bucket import Bucket

    class _AdminConnection(Bucket):
        """A blocking bucket that never bootstraps: only HTTP to the nodes."""

        def _start(self) -> None:
            pass

    return _AdminConnection(connstr, username=username, password=password, **kwargs)


def _form(params: Dict[str, Any]) -> str:
    """``k=v&...`` with both sides percent-encoded (2.x's ``_mk_formstr``)."""
    return "&".join("%s=%s" % (quote(str(k)), quote(str(v))) for k, v in params.items())


def _role_text(role: Any) -> str:
    if isinstance(role, str):
        return role
    if isinstance(role, (tuple, list)) and len(role) == 2 and all(isinstance(p, str) for p in role):
        return "%s[%s]" % (role[0], role[1])
    raise ArgumentError("a role is a str or a (role, bucket) pair of str, not %r" % (role,))


class Admin:
    """An administrative connection to a Couchbase cluster (buckets, users,
    any other REST call through :meth:`http_request`).

    Args:
        username, password: the credentials (an administrator's, or an RBAC
            user's with the roles the calls need).
        host, port: a node's management endpoint. ``port`` defaults to 8091,
            or 18091 with ``ssl=True``.
        connection_string: instead of host/port, a connection string
            (``couchbase://h1,h2``, ``http://h:8091``...); its hosts' HTTP
            ports are used and its options apply.
        ssl, certpath: use https (``certpath`` names the cluster's CA when
            the system does not trust it).
        **kwargs: other connection-string options (``http_timeout``...).

    Raises:
        AuthError: the node refused the credentials.
        ArgumentError: a bad argument (a ``memcached://`` string...).
        NetworkError/ConnectError/TimeoutError: the node could not be reached.
    """

    BucketInfo: type  # set below (2.x: ``Admin.BucketInfo``)

    def __init__(self, username: str, password: str, host: str = "localhost", port: Optional[int] = None,
                 **kwargs: Any) -> None:
        ssl = bool(kwargs.pop("ssl", False))
        certpath = kwargs.pop("certpath", None)
        connstr = kwargs.pop("connection_string", None) or kwargs.pop("connstr", None)
        if connstr is not None:
            if isinstance(connstr, ConnectionString):
                connstr = connstr.encode(include_secrets=True)
            if not isinstance(connstr, str):
                raise ArgumentError("connection_string must be a str, not %s" % type(connstr).__name__)
            parsed = ConnectionString.parse(connstr)
            if parsed.scheme == "memcached":
                raise ArgumentError("a memcached:// cluster has no management REST API")
            endpoints = parsed.http_endpoints()
            host, port = endpoints[0]
        else:
            if not isinstance(host, str) or not host:
                raise ArgumentError("host must be a non-empty str, not %r" % (host,))
            if port is None:
                port = 18091 if ssl else 8091
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ArgumentError("port must be an int in 1..65535, not %r" % (port,))
            scheme = "couchbases" if ssl else "couchbase"
            connstr = "%s://%s:%d=%s" % (scheme, host if ":" not in host else "[%s]" % host, port,
                                         "https" if ssl else "http")
        if certpath:
            kwargs["certpath"] = certpath
        self._conn = _admin_connection(connstr, username, password, **kwargs)
        self.host = host
        self.port = port
        try:
            self._check_credentials()
        except BaseException:
            self._conn.close()
            raise

    def _check_credentials(self) -> None:
        """Ask the node for ``/pools`` now (2.x connected in the constructor):
        a 401 becomes AuthError, an unreachable node its network error."""
        try:
            self.http_request("/pools")
        except HTTPError as exc:
            if exc.result is not None and getattr(exc.result, "http_status", 0) == 401:
                raise AuthError({"message": "the cluster refused the credentials (HTTP 401 from /pools)",
                                 "objextra": exc.result}) from None
            raise

    def close(self) -> None:
        """Release the connections."""
        self._conn.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the REST call -------------------------------------------------------

    def http_request(self, path: str, method: str = "GET", content: Any = None,
                     content_type: str = "application/json", response_format: int = FMT_JSON) -> Any:
        """Send one request to the management REST API and return its
        :class:`~couchbase_core.result.HttpResult`.

        Args:
            path: the path (with its query string), e.g.
                ``'/pools/default/buckets'``; a missing leading ``/`` is
                added (``'pools/default'`` works, as in 2.x).
            method: ``GET``, ``PUT``, ``POST`` or ``DELETE``.
            content: the body: bytes or str as is; a dict is sent as a form
                with ``content_type='application/x-www-form-urlencoded'``,
                as JSON otherwise (a list too).
            content_type: the ``Content-Type`` header of a body.
            response_format: how ``value`` is decoded: ``FMT_JSON``
                (default; the bytes when the body is not JSON),
                ``FMT_UTF8`` or ``FMT_BYTES``.

        Raises:
            ArgumentError: a path that is not a str (None included), holds
                blanks or control characters; an unknown method.
            HTTPError: a non-2xx answer (``objextra`` is the HttpResult).
        """
        from couchbase_core._httpops import HttpOp

        if not isinstance(path, str):
            raise ArgumentError("the path must be a str, not %s" % type(path).__name__)
        if not isinstance(method, str) or method not in METHMAP:
            raise ArgumentError("unknown HTTP method %r (expected GET, PUT, POST or DELETE)" % (method,))
        if not path.startswith("/"):
            path = "/" + path
        if not isinstance(content_type, str):
            raise ArgumentError("content_type must be a str, not %r" % (content_type,))
        body = self._body(content, content_type)
        op = HttpOp("mgmt", method, path, body, {"Content-Type": content_type} if body else {},
                    self._conn._settings.http_timeout, response_format=response_format)
        return self._conn._one(op)

    @staticmethod
    def _body(content: Any, content_type: str) -> bytes:
        import json

        if content is None:
            return b""
        if isinstance(content, dict) and content_type == "application/x-www-form-urlencoded":
            return _form(content).encode("utf-8")
        if isinstance(content, (dict, list)):
            return json.dumps(content).encode("utf-8")
        if isinstance(content, str):
            return content.encode("utf-8")
        if isinstance(content, (bytes, bytearray, memoryview)):
            return bytes(content)
        raise ArgumentError("content must be bytes, str, a dict or a list, not %s" % type(content).__name__)

    def _mk_formstr(self, d: Dict[str, Any]) -> str:
        """A form body from a dict (2.x's helper)."""
        return _form(d)

    # -- buckets ---------------------------------------------------------------

    @staticmethod
    def _bucket_path(name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ArgumentError("a bucket name must be a non-empty str, not %r" % (name,))
        return "/pools/default/buckets/" + quote(name, safe="")

    def bucket_create(self, name: str, bucket_type: str = "couchbase", bucket_password: str = "",
                      replicas: int = 0, ram_quota: int = 1024, flush_enabled: bool = False) -> Any:
        """Create a bucket: ``couchbase``, ``memcached`` or ``ephemeral``
        (``membase`` is ``couchbase``), ``ram_quota`` MiB per node.

        Returns the HttpResult (the server answers 202: the bucket may not
        be ready yet, see :meth:`wait_ready`).

        Raises:
            ArgumentError: an unknown bucket type.
            HTTPError: the server refused (name taken, quota too small...).
        """
        if bucket_type not in _BUCKET_TYPES:
            raise ArgumentError("bucket_type must be couchbase, memcached or ephemeral, not %r" % (bucket_type,))
        self._bucket_path(name)
        params: Dict[str, Any] = {"name": name, "bucketType": bucket_type, "authType": "sasl",
                                  "saslPassword": bucket_password or "", "flushEnabled": int(bool(flush_enabled)),
                                  "ramQuotaMB": ram_quota}
        if bucket_type in ("couchbase", "membase", "ephemeral"):
            params["replicaNumber"] = replicas
        return self.http_request("/pools/default/buckets", "POST", _form(params),
                                 "application/x-www-form-urlencoded")

    def bucket_remove(self, name: str) -> Any:
        """Delete a bucket and its data; returns the HttpResult."""
        return self.http_request(self._bucket_path(name), "DELETE")

    bucket_delete = bucket_remove

    def bucket_info(self, name: str) -> Any:
        """The bucket's configuration: an HttpResult whose ``value`` is the
        server's JSON (what :meth:`bucket_update` takes as ``current``)."""
        return self.http_request(self._bucket_path(name))

    def buckets_list(self) -> List["BucketInfo"]:
        """Every bucket of the cluster, as :class:`Admin.BucketInfo` objects."""
        return [BucketInfo(raw) for raw in (self.http_request("/pools/default/buckets").value or [])]

    def wait_ready(self, name: str, timeout: float = 5.0, sleep_interval: float = 0.2) -> None:
        """Wait until every node of bucket ``name`` reports it healthy.

        Raises:
            NotReadyError: some node is still not healthy after ``timeout``
                seconds.
            CouchbaseError: the last error of the probe (e.g. HTTPError 404
                while the bucket does not exist) when time is up.
        """
        for value, what in ((timeout, "timeout"), (sleep_interval, "sleep_interval")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
                raise ArgumentError("%s must be a number of seconds >= 0, not %r" % (what, value))
        end = time.monotonic() + timeout
        while True:
            try:
                info = self.bucket_info(name).value or {}
                nodes = info.get("nodes") or []
                if not nodes or any(node.get("status") != "healthy" for node in nodes):
                    raise NotReadyError("not all nodes of bucket %r are healthy" % name)
                return
            except CouchbaseError:
                if time.monotonic() + sleep_interval > end:
                    raise
                self._conn._sleep(sleep_interval)

    def bucket_update(self, name: str, current: Any = None, bucket_password: Optional[str] = None,
                      replicas: Optional[int] = None, ram_quota: Optional[int] = None,
                      flush_enabled: Optional[bool] = None) -> Any:
        """Change a bucket's settings; those left None keep their value.

        ``current`` is the bucket's :meth:`bucket_info` result (fetched when
        None): like 2.x, the settings not changed are sent again from it.
        """
        if current is None:
            current = self.bucket_info(name)
        state = getattr(current, "value", current)
        if not isinstance(state, dict):
            raise ArgumentError("current must be the result of bucket_info(), not %r" % (current,))
        params: Dict[str, Any] = {}
        if "authType" in state:
            params["authType"] = state["authType"]
        if "saslPassword" in state:
            params["saslPassword"] = state["saslPassword"]
        if bucket_password is not None:
            params["authType"] = "sasl"
            params["saslPassword"] = bucket_password
        if replicas is not None:
            params["replicaNumber"] = replicas
        elif "replicaNumber" in state:
            params["replicaNumber"] = state["replicaNumber"]
        if ram_quota:
            params["ramQuotaMB"] = ram_quota
        elif isinstance(state.get("quota"), dict) and "ram" in state["quota"]:
            params["ramQuotaMB"] = int(state["quota"]["ram"]) // 1024 // 1024
        if flush_enabled is not None:
            params["flushEnabled"] = int(bool(flush_enabled))
        if "proxyPort" in state:
            params["proxyPort"] = state["proxyPort"]
        return self.http_request(self._bucket_path(name), "POST", _form(params),
                                 "application/x-www-form-urlencoded")

    # -- users -------------------------------------------------------------------

    @staticmethod
    def _get_management_path(auth_domain: Any, userid: Optional[str] = None) -> str:
        """``/settings/rbac/users/<domain>[/<userid>]``.

        Raises:
            ArgumentError: an unknown domain, or a user id that is not a
                non-empty str.
        """
        path = "/settings/rbac/users/" + domain_path_name(auth_domain)
        if userid is not None:
            if not isinstance(userid, str) or not userid:
                raise ArgumentError("a user id must be a non-empty str, not %r" % (userid,))
            path += "/" + quote(userid, safe="")
        return path

    def users_get(self, domain: Any = AuthDomain.Local) -> Any:
        """The users of ``domain``: an HttpResult whose ``value`` is the list."""
        return self.http_request(self._get_management_path(domain))

    def user_get(self, domain: Any, userid: str) -> Any:
        """One user: an HttpResult whose ``value`` is the user's JSON.

        Raises:
            HTTPError: the user does not exist (404).
        """
        return self.http_request(self._get_management_path(domain, userid))

    def user_upsert(self, domain: Any, userid: str, password: Optional[str] = None,
                    roles: Optional[List[Any]] = None, name: Optional[str] = None) -> Any:
        """Create or replace a user.

        Args:
            domain: :attr:`AuthDomain.Local` or :attr:`AuthDomain.External`.
            userid: the user's id.
            password: a local user's password (external users have none).
            roles: a non-empty list; each role is ``'role'`` or a
                ``('role', 'bucket')`` pair (``'*'``: every bucket).
            name: a human-readable name.

        Raises:
            ArgumentError: no roles, a bad role, a password for an external
                user, an unknown domain.
            HTTPError: the server refused.
        """
        if not roles or not isinstance(roles, list):
            raise ArgumentError("roles must be a non-empty list")
        path = self._get_management_path(domain, userid)
        if password and domain_path_name(domain) == "external":
            raise ArgumentError("external users must not have passwords")
        params: Dict[str, Any] = {"roles": ",".join(_role_text(role) for role in roles)}
        if password:
            params["password"] = password
        if name:
            params["name"] = name
        return self.http_request(path, "PUT", _form(params), "application/x-www-form-urlencoded")

    def user_remove(self, domain: Any, userid: str) -> Any:
        """Delete a user; returns the HttpResult.

        Raises:
            HTTPError: the user does not exist (404).
        """
        return self.http_request(self._get_management_path(domain, userid), "DELETE")

    # 2.x's verb-object aliases
    get_user = user_get
    get_users = users_get
    upsert_user = user_upsert
    remove_user = user_remove


class BucketInfo:
    """One bucket of :meth:`Admin.buckets_list`: ``raw_json`` is the server's
    JSON for it; :meth:`name` its name."""

    def __init__(self, raw_json: Dict[str, Any]) -> None:
        self.raw_json = raw_json

    def name(self) -> Optional[str]:
        """The bucket's name."""
        return self.raw_json.get("name")

    def __str__(self) -> str:
        return "Bucket named {}".format(self.name())

    def __repr__(self) -> str:
        return "BucketInfo(%r)" % (self.name(),)


Admin.BucketInfo = BucketInfo


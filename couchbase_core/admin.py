"""Admin: cluster management over the REST API (buckets, users).

``Admin(username, password, host="localhost", port=None)`` talks to one
node's management port; calls block until the server answered (from a
gevent program, run them in a greenlet: the wait is cooperative only when
the process is monkeypatched). Failed requests raise HTTPError with the
server's message.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional
from urllib.parse import quote, urlencode

from couchbase_core.exceptions import ArgumentError, HTTPError, TimeoutError

__all__ = ["Admin"]


def _admin_connection(connstr: str, username: str, password: str, **kwargs: Any) -> Any:
    from couchbase_core.bucket import Bucket

    class _AdminConnection(Bucket):
        """A blocking bucket that never bootstraps: only HTTP to the node."""

        def _start(self) -> None:
            pass

    return _AdminConnection(connstr, username=username, password=password, **kwargs)


class Admin:
    """Management of a cluster through one node's REST API.

    Args:
        username, password: administrator credentials.
        host, port: the node's management endpoint (port default: 8091,
            or 18091 with ``ssl=True``, which also needs ``certpath``
            unless the CA is trusted by the system).
    """

    def __init__(self, username: str, password: str, host: str = "localhost", port: Optional[int] = None,
                 ssl: bool = False, certpath: Optional[str] = None, **kwargs: Any) -> None:
        if port is None:
            port = 18091 if ssl else 8091
        scheme = "couchbases" if ssl else "couchbase"
        connstr = "%s://%s:%d=%s" % (scheme, host if ":" not in host else "[%s]" % host, port,
                                     "https" if ssl else "http")
        if certpath:
            kwargs["certpath"] = certpath
        self._conn = _admin_connection(connstr, username, password, **kwargs)
        self.host = host
        self.port = port

    def close(self) -> None:
        """Release the connections."""
        self._conn.close()

    def __enter__(self) -> "Admin":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def http_request(self, path: str, method: str = "GET", content: Any = None,
                     content_type: str = "application/json", response_format: Any = None) -> Any:
        """Any REST call; returns an HttpResult (``value`` decoded from JSON
        when it is JSON). Raises HTTPError for non-2xx answers."""
        from couchbase_core._httpops import HttpOp

        if isinstance(content, dict) and content_type == "application/x-www-form-urlencoded":
            body = urlencode(content).encode("utf-8")
        elif isinstance(content, (dict, list)):
            body = json.dumps(content).encode("utf-8")
        elif isinstance(content, str):
            body = content.encode("utf-8")
        else:
            body = content or b""
        op = HttpOp("mgmt", method, path, body, {"Content-Type": content_type} if body else {},
                    self._conn._settings.http_timeout)
        return self._conn._one(op)

    # -- buckets ----------------------------------------------------------------

    def bucket_create(self, name: str, bucket_type: str = "couchbase", bucket_password: str = "",
                      replicas: int = 0, ram_quota: int = 100, flush_enabled: bool = False) -> Any:
        """Create a bucket (``couchbase``, ``memcached`` or ``ephemeral``)."""
        if bucket_type not in ("couchbase", "membase", "memcached", "ephemeral"):
            raise ArgumentError("bucket_type must be couchbase, memcached or ephemeral")
        form = {"name": name, "bucketType": bucket_type, "ramQuotaMB": ram_quota, "authType": "sasl",
                "saslPassword": bucket_password, "replicaNumber": replicas,
                "flushEnabled": 1 if flush_enabled else 0}
        return self.http_request("/pools/default/buckets", "POST", form, "application/x-www-form-urlencoded")

    def bucket_update(self, name: str, current: Any = None, bucket_password: Optional[str] = None,
                      replicas: Optional[int] = None, ram_quota: Optional[int] = None,
                      flush_enabled: Optional[bool] = None) -> Any:
        """Change a bucket's settings (only the ones given)."""
        form: Dict[str, Any] = {}
        if bucket_password is not None:
            form["saslPassword"] = bucket_password
        if replicas is not None:
            form["replicaNumber"] = replicas
        if ram_quota is not None:
            form["ramQuotaMB"] = ram_quota
        if flush_enabled is not None:
            form["flushEnabled"] = 1 if flush_enabled else 0
        return self.http_request("/pools/default/buckets/%s" % quote(name, safe=""), "POST", form,
                                 "application/x-www-form-urlencoded")

    def bucket_remove(self, name: str) -> Any:
        """Delete a bucket."""
        return self.http_request("/pools/default/buckets/%s" % quote(name, safe=""), "DELETE")

    bucket_delete = bucket_remove

    def bucket_info(self, name: str) -> Any:
        """The bucket's full config (HttpResult.value)."""
        return self.http_request("/pools/default/buckets/%s" % quote(name, safe=""))

    def buckets_list(self) -> List[Dict[str, Any]]:
        """Every bucket's full config."""
        return list(self.http_request("/pools/default/buckets").value or [])

    def wait_ready(self, name: str, timeout: float = 5.0, sleep_interval: float = 0.2) -> Any:
        """Wait until every node of the bucket is healthy."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.bucket_info(name)
                nodes = info.value.get("nodes", [])
                if nodes and all(n.get("status") == "healthy" for n in nodes):
                    return info
            except HTTPError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError("bucket %r not ready within %.3gs" % (name, timeout))
            self._conn._sleep(sleep_interval)

    # -- users -----------------------------------------------------------------

    def users_get(self, domain: str = "local") -> List[Dict[str, Any]]:
        """Every user of ``domain`` (``local`` or ``external``)."""
        return list(self.http_request("/settings/rbac/users/%s" % domain).value or [])

    def user_get(self, domain: str, userid: str) -> Any:
        """One user."""
        return self.http_request("/settings/rbac/users/%s/%s" % (domain, quote(userid, safe=""))).value

    def user_upsert(self, domain: str, userid: str, password: Optional[str] = None,
                    roles: Optional[List[Any]] = None, name: Optional[str] = None) -> Any:
        """Create or replace a user. ``roles`` are ``"role"`` or
        ``("role", "bucket")`` items."""
        texts = []
        for role in roles or []:
            if isinstance(role, (tuple, list)):
                texts.append("%s[%s]" % (role[0], role[1]) if len(role) > 1 and role[1] else role[0])
            else:
                texts.append(str(role))
        form: Dict[str, Any] = {"roles": ",".join(texts)}
        if password is not None:
            form["password"] = password
        if name is not None:
            form["name"] = name
        return self.http_request("/settings/rbac/users/%s/%s" % (domain, quote(userid, safe="")), "PUT", form,
                                 "application/x-www-form-urlencoded")

    def user_remove(self, domain: str, userid: str) -> Any:
        """Delete a user."""
        return self.http_request("/settings/rbac/users/%s/%s" % (domain, quote(userid, safe="")), "DELETE")

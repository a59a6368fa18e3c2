"""Who may use the emulator's HTTP services (HTTP basic auth, or a client
certificate on the TLS ports)."""

from __future__ import annotations

from typing import Optional, Tuple

from couchbase_core.mock.certauth import identify
from couchbase_core.mock.cluster import Bucket, Cluster
from couchbase_core.mock.httpd import HTTPRequest

__all__ = ["http_access"]


def _who(cluster: Cluster, request: HTTPRequest) -> Optional[Tuple[str, str, Optional[Bucket]]]:
    """``(user, kind, legacy bucket)`` of the request, or None when it
    carries no identity or a wrong one. A client certificate wins over an
    ``Authorization`` header (SDK RFC 0036)."""
    if cluster.cert_auth is not None and request.peercert:
        user = cluster.cert_auth.user_name(request.peercert)
        found = identify(cluster, user)
        if found is None or user is None:
            return None
        return user, found[0], None
    creds = request.basic_auth()
    if creds is None:
        return None
    user, password = creds
    who = cluster.check_password(user, password)
    if who is None:
        return None
    return user, who[0], who[1]


def http_access(cluster: Cluster, request: HTTPRequest, bucket: Optional[Bucket] = None,
                admin_only: bool = False) -> Optional[str]:
    """``'rw'``/``'ro'`` if the request's credentials allow it, else None.

    Administrators may do anything; RBAC users what their roles allow on
    ``bucket``; a legacy login (bucket name and bucket password) reaches its
    own bucket; a bucket without a password is open to requests without
    credentials (the pre-5.0 behaviour).
    """
    if request.basic_auth() is None and not (cluster.cert_auth is not None and request.peercert):
        if bucket is not None and not bucket.password and not admin_only:
            return "rw"
        return None
    who = _who(cluster, request)
    if who is None:
        return None
    user, kind, legacy_bucket = who
    if kind == "admin":
        return "rw"
    if admin_only:
        record = cluster.users.get(user)
        return "rw" if record is not None and record.is_admin() else None
    if bucket is None:
        return "ro"
    if kind == "bucket":
        return "rw" if legacy_bucket is bucket else None
    record = cluster.users.get(user)
    return record.bucket_access(bucket.name) if record is not None else None

"""The management REST service of a node (8091-like).

Cluster and bucket information, terse and streaming bucket configs, bucket
create/delete/flush, users, design-document listing. Basic auth as
:func:`couchbase_core.mock.auth.http_access` describes; 401 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, AsyncIterator, Dict, Optional

from couchbase_core.mock.auth import http_access
from couchbase_core.mock.cluster import SERVER_VERSION, Bucket, User
from couchbase_core.mock.httpd import (
    HTTPRequest,
    HTTPResponse,
    Router,
    error_response,
    json_response,
)

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.runtime import MockApp, NodeRuntime

__all__ = ["router"]

_NAME = re.compile(r"^[A-Za-z0-9._%-]{1,100}$")


def _unauthorized() -> HTTPResponse:
    return HTTPResponse(401, b"", {"WWW-Authenticate": 'Basic realm="Couchbase Server Admin / REST"'},
                        content_type="text/plain")


def router(app: "MockApp", runtime: "NodeRuntime") -> Router:
    """Routes of one node's management service."""
    cluster = app.cluster
    node = runtime.node
    r = Router()

    def bucket_or_404(name: str) -> Optional[Bucket]:
        return cluster.buckets.get(name)

    def bad_credentials(request: HTTPRequest) -> bool:
        """Credentials were sent, and they are wrong (always a 401)."""
        creds = request.basic_auth()
        return creds is not None and cluster.check_password(*creds) is None

    async def pools(request: HTTPRequest) -> HTTPResponse:
        if bad_credentials(request):
            return _unauthorized()
        return json_response({
            "isAdminCreds": http_access(cluster, request, admin_only=True) is not None,
            "isROAdminCreds": False, "isEnterprise": True,
            "implementationVersion": SERVER_VERSION,
            "pools": [{"name": "default", "uri": "/pools/default?uuid=%s" % cluster.uuid,
                       "streamingUri": "/poolsStreaming/default?uuid=%s" % cluster.uuid}],
            "uuid": cluster.uuid,
        })

    async def pool_default(request: HTTPRequest) -> HTTPResponse:
        if bad_credentials(request):
            return _unauthorized()
        if http_access(cluster, request) is None and http_access(cluster, request, admin_only=True) is None:
            if request.basic_auth() is None and not any(not b.password for b in cluster.buckets.values()):
                return _unauthorized()
        return json_response({
            "name": "default",
            "nodes": [cluster.full_node(n) for n in cluster.nodes if n.member],
            "buckets": {"uri": "/pools/default/buckets?v=%d&uuid=%s" % (cluster.rev, cluster.uuid)},
            "rebalanceStatus": "none",
            "clusterName": "mock",
            "nodesExt": cluster.cluster_config(node)["nodesExt"],
        })

    async def buckets(request: HTTPRequest) -> HTTPResponse:
        if request.method == "POST":
            return create_bucket(request)
        if bad_credentials(request):
            return _unauthorized()
        access_any = http_access(cluster, request, admin_only=True) is not None
        visible = [b for b in cluster.buckets.values()
                   if access_any or http_access(cluster, request, b) is not None]
        if not visible and request.basic_auth() is None and cluster.buckets:
            return _unauthorized()
        return json_response([cluster.full_bucket_config(b, node) for b in visible])

    def create_bucket(request: HTTPRequest) -> HTTPResponse:
        if http_access(cluster, request, admin_only=True) is None:
            return _unauthorized()
        form = request.form()
        errors: Dict[str, str] = {}
        name = form.get("name", "")
        if not name:
            errors["name"] = "Bucket name cannot be empty"
        elif not _NAME.match(name) or name.startswith("."):
            errors["name"] = "Bucket name can only contain characters in range A-Z, a-z, 0-9 as well as underscore, period, dash & percent. Consult the documentation."
        elif name in cluster.buckets:
            errors["name"] = "Bucket with given name already exists"
        btype = form.get("bucketType", "couchbase")
        if btype not in ("couchbase", "membase", "memcached", "ephemeral"):
            errors["bucketType"] = "invalid bucket type"
        try:
            quota = int(form.get("ramQuotaMB", "100"))
            if quota < 100:
                errors["ramQuotaMB"] = "RAM quota cannot be less than 100 MiB"
        except ValueError:
            errors["ramQuotaMB"] = "The RAM Quota must be specified and must be a positive integer."
            quota = 100
        try:
            replicas = int(form.get("replicaNumber", "1"))
            if not 0 <= replicas <= 3:
                errors["replicaNumber"] = "Replica number must be equal to or less than 3"
        except ValueError:
            errors["replicaNumber"] = "The replica number must be specified and must be a non-negative integer."
            replicas = 1
        flush = form.get("flushEnabled", "0")
        if flush not in ("0", "1"):
            errors["flushEnabled"] = "flushEnabled can only be 1 or 0"
        eviction = form.get("evictionPolicy")
        allowed = (("noEviction", "nruEviction") if btype == "ephemeral"
                   else ("valueOnly", "fullEviction") if btype in ("couchbase", "membase") else ())
        if eviction is not None and btype != "memcached" and eviction not in allowed:
            errors["evictionPolicy"] = "Eviction policy must be either %s" % " or ".join(
                "'%s'" % name for name in allowed)
        conflicts = form.get("conflictResolutionType")
        if conflicts is not None and conflicts not in ("seqno", "lww"):
            errors["conflictResolutionType"] = "Conflict resolution type must be 'seqno' or 'lww'"
        if errors:
            return json_response({"errors": errors, "summaries": {}}, 400)
        bucket = Bucket(name, btype, form.get("saslPassword", ""), replicas, app.options.vbuckets,
                        flush == "1", quota)
        if eviction is not None and btype != "memcached":
            bucket.eviction_policy = eviction
        if conflicts is not None:
            bucket.conflict_resolution = conflicts
        cluster.add_bucket(bucket)
        return HTTPResponse(202, b"", content_type="text/plain")

    async def bucket_info(request: HTTPRequest) -> HTTPResponse:
        name = request.params["bucket"]
        bucket = bucket_or_404(name)
        if request.method == "DELETE":
            if http_access(cluster, request, admin_only=True) is None:
                return _unauthorized()
            if bucket is None:
                return error_response(404, "Requested resource not found.\r\n")
            cluster.remove_bucket(name)
            return HTTPResponse(200, b"", content_type="text/plain")
        if request.method == "POST":
            if http_access(cluster, request, admin_only=True) is None:
                return _unauthorized()
            if bucket is None:
                return error_response(404, "Requested resource not found.\r\n")
            form = request.form()
            if "flushEnabled" in form:
                bucket.flush_enabled = form["flushEnabled"] == "1"
            if "saslPassword" in form:
                bucket.password = form["saslPassword"]
            if "ramQuotaMB" in form:
                bucket.ram_quota_mb = int(form["ramQuotaMB"])
            cluster.bump()
            return HTTPResponse(200, b"", content_type="text/plain")
        if bucket is None:
            if request.basic_auth() is None:
                return _unauthorized()
            return error_response(404, "Requested resource not found.\r\n")
        if http_access(cluster, request, bucket) is None:
            return _unauthorized()
        return json_response(cluster.full_bucket_config(bucket, node))

    async def terse(request: HTTPRequest) -> HTTPResponse:
        bucket = bucket_or_404(request.params["bucket"])
        if bucket is None:
            return error_response(404, "Requested resource not found.\r\n")
        if http_access(cluster, request, bucket) is None:
            return _unauthorized()
        return json_response(cluster.bucket_config(bucket, node))

    def streaming(full: bool):  # type: ignore[no-untyped-def]
        async def handler(request: HTTPRequest) -> HTTPResponse:
            name = request.params["bucket"]
            bucket = bucket_or_404(name)
            if bucket is None:
                return error_response(404, "Requested resource not found.\r\n")
            if http_access(cluster, request, bucket) is None:
                return _unauthorized()

            async def stream() -> AsyncIterator[bytes]:
                last = None
                while True:
                    current = cluster.buckets.get(name)
                    if current is None:
                        return
                    cfg = (cluster.full_bucket_config(current, node) if full
                           else cluster.bucket_config(current, node))
                    text = json.dumps(cfg, separators=(",", ":"))
                    if text != last:
                        last = text
                        yield text.encode("utf-8") + b"\n\n\n\n"
                    await app.wait_config_change()
                    await asyncio.sleep(0)

            return HTTPResponse(200, stream())
        return handler

    async def flush(request: HTTPRequest) -> HTTPResponse:
        bucket = bucket_or_404(request.params["bucket"])
        if bucket is None:
            return error_response(404, "Requested resource not found.\r\n")
        if http_access(cluster, request, bucket) != "rw":
            return _unauthorized()
        if not bucket.flush_enabled:
            return json_response({"_": "Flush is disabled for the bucket"}, 400)
        bucket.flush()
        return HTTPResponse(200, b"", content_type="text/plain")

    async def stats(request: HTTPRequest) -> HTTPResponse:
        bucket = bucket_or_404(request.params["bucket"])
        if bucket is None:
            return error_response(404, "Requested resource not found.\r\n")
        if http_access(cluster, request, bucket) is None:
            return _unauthorized()
        count = sum(1 for _ in bucket.all_items(cluster.clock.now()))
        return json_response({"op": {"samples": {"curr_items": [count], "ops": [0]}, "samplesCount": 1,
                                     "isPersistent": bucket.type == "couchbase", "lastTStamp": 0,
                                     "interval": 1000}})

    async def ddocs(request: HTTPRequest) -> HTTPResponse:
        bucket = bucket_or_404(request.params["bucket"])
        if bucket is None:
            return error_response(404, "Requested resource not found.\r\n")
        if http_access(cluster, request, bucket) is None:
            return _unauthorized()
        from couchbase_core.mock import capi

        return json_response(capi.design_documents(app, bucket).listing(bucket.name))

    def domain_users(domain: str) -> Dict[str, User]:
        return cluster.users if domain == "local" else cluster.external_users

    async def users(request: HTTPRequest) -> HTTPResponse:
        if http_access(cluster, request, admin_only=True) is None:
            return _unauthorized()
        domain = request.params.get("domain")
        listed = [u for d in ("local", "external") if domain in (None, d) for u in domain_users(d).values()]
        return json_response([u.to_json() for u in listed])

    async def user(request: HTTPRequest) -> HTTPResponse:
        if http_access(cluster, request, admin_only=True) is None:
            return _unauthorized()
        name = request.params["user"]
        domain = request.params["domain"]
        records = domain_users(domain)
        if request.method == "GET":
            record = records.get(name)
            if record is None:
                return json_response("Unknown user.", 404)
            return json_response(record.to_json())
        if request.method == "DELETE":
            if records.pop(name, None) is None:
                return json_response("User was not found.", 404)
            return json_response("")
        form = request.form()
        roles = []
        for text in filter(None, (p.strip() for p in form.get("roles", "").split(","))):
            match = re.match(r"^([a-z_]+)(?:\[([^\]]+)\])?$", text)
            if match is None:
                return json_response({"errors": {"roles": "Malformed role %s" % text}}, 400)
            roles.append((match.group(1), match.group(2)))
        if not roles:
            return json_response({"errors": {"roles": "The value must be supplied"}}, 400)
        if domain == "external":
            if form.get("password"):
                return json_response({"errors": {"password": "Password is not allowed for external users"}}, 400)
            records[name] = User(name, "", roles, form.get("name", ""), domain="external")
            return json_response("")
        existing = records.get(name)
        password = form.get("password") or (existing.password if existing else "")
        if not password:
            return json_response({"errors": {"password": "Password must be specified"}}, 400)
        cluster.add_user(User(name, password, roles, form.get("name", "")))
        return json_response("")

    bucket_name = r"(?P<bucket>[^/]+)"
    r.add(["GET"], r"/pools", pools)
    r.add(["GET"], r"/pools/default", pool_default)
    r.add(["GET", "POST"], r"/pools/default/buckets", buckets)
    r.add(["GET", "POST", "DELETE"], r"/pools/default/buckets/" + bucket_name, bucket_info)
    r.add(["GET"], r"/pools/default/b/" + bucket_name, terse)
    r.add(["GET"], r"/pools/default/bs/" + bucket_name, streaming(False))
    r.add(["GET"], r"/pools/default/bucketsStreaming/" + bucket_name, streaming(True))
    r.add(["POST"], r"/pools/default/buckets/" + bucket_name + r"/controller/doFlush", flush)
    r.add(["GET"], r"/pools/default/buckets/" + bucket_name + r"/stats", stats)
    r.add(["GET"], r"/pools/default/buckets/" + bucket_name + r"/ddocs", ddocs)
    r.add(["GET"], r"/settings/rbac/users(?:/(?P<domain>local|external))?", users)
    r.add(["GET", "PUT", "DELETE"], r"/settings/rbac/users/(?P<domain>local|external)/(?P<user>[^/]+)", user)
    return r


"""The views service of a node (8092-like): design documents and queries,
served over HTTP by the engine of :mod:`couchbase_core.mock.views`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator, Tuple

from couchbase_core.mock.auth import http_access
from couchbase_core.mock.cluster import Bucket
from couchbase_core.mock.httpd import HTTPRequest, HTTPResponse, Router, json_response

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.runtime import MockApp, NodeRuntime

__all__ = ["router", "design_documents", "view_engine"]


def design_documents(app: "MockApp", bucket: Bucket) -> Any:
    """The bucket's :class:`~couchbase_core.mock.views.DesignDocuments`."""
    from couchbase_core.mock import views

    if bucket.design_docs is None:
        bucket.design_docs = views.DesignDocuments()
    return bucket.design_docs


def view_engine(app: "MockApp", bucket: Bucket) -> Any:
    """The bucket's :class:`~couchbase_core.mock.views.ViewEngine` (one per bucket)."""
    from couchbase_core.mock import views

    key = ("views", bucket.name, bucket.uuid)
    engine = app.services.get(key)
    if engine is None:
        cluster = app.cluster

        def documents() -> Iterator[Tuple[str, bytes, int, int, int, bool]]:
            for key_bytes, item in bucket.all_items(cluster.clock.now()):
                yield (key_bytes.decode("utf-8", "replace"), item.value, item.flags, item.cas, item.expiry,
                       bool(item.datatype & 0x01) or _looks_like_json(item.value))

        engine = app.services[key] = views.ViewEngine(design_documents(app, bucket), documents)
    return engine


def _looks_like_json(value: bytes) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _bucket_name(path_part: str) -> str:
    # couchApiBase paths read "<bucket>%2B<uuid>" ("+" once decoded)
    return path_part.split("+", 1)[0]


def router(app: "MockApp", runtime: "NodeRuntime") -> Router:
    """Routes of one node's views service."""
    cluster = app.cluster
    r = Router()

    def lookup(request: HTTPRequest) -> Tuple[Any, Any]:
        bucket = cluster.buckets.get(_bucket_name(request.params["bucket"]))
        if bucket is None or bucket.is_memcached:
            return None, json_response({"error": "not_found", "reason": "no_couchbase_bucket_exists"}, 404)
        if http_access(cluster, request, bucket) is None:
            return None, json_response({"error": "unauthorized", "reason": "password required"}, 401)
        return bucket, None

    async def design(request: HTTPRequest) -> HTTPResponse:
        bucket, failure = lookup(request)
        if failure is not None:
            return failure
        from couchbase_core.mock import views

        ddocs = design_documents(app, bucket)
        name = request.params["ddoc"]
        try:
            if request.method == "PUT":
                if http_access(cluster, request, bucket) != "rw":
                    return json_response({"error": "forbidden", "reason": "write access needed"}, 403)
                return json_response(ddocs.put(name, request.body), 201)
            if request.method == "DELETE":
                return json_response(ddocs.delete(name))
            body, meta = ddocs.get(name)
            return HTTPResponse(200, body, {"X-Couchbase-Meta": json.dumps(meta, separators=(",", ":"))})
        except views.ViewError as exc:
            return HTTPResponse(exc.status, exc.body())

    async def query(request: HTTPRequest) -> HTTPResponse:
        bucket, failure = lookup(request)
        if failure is not None:
            return failure
        from couchbase_core.mock import views

        spatial = request.params.get("kind") == "_spatial"
        try:
            engine = view_engine(app, bucket)  # JSEngineMissing without a JavaScript engine
            chunks = engine.query(request.params["ddoc"], request.params["view"], dict(request.query),
                                  request.body if request.method == "POST" else None, spatial=spatial)
        except views.ViewError as exc:
            return HTTPResponse(exc.status, exc.body())
        return HTTPResponse(200, chunks)

    r.add(["GET", "PUT", "DELETE"], r"/(?P<bucket>[^/]+)/_design/(?P<ddoc>[^/]+)", design)
    r.add(["GET", "POST"], r"/(?P<bucket>[^/]+)/_design/(?P<ddoc>[^/]+)/(?P<kind>_view|_spatial)/(?P<view>[^/]+)",
          query)
    return r



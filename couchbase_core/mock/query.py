"""The query service of a node (8093-like): ``/query/service`` over HTTP,
answered by the N1QL subset engine of :mod:`couchbase_core.mock.n1ql`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional, Tuple

from couchbase_core.mock.auth import http_access
from couchbase_core.mock.cluster import Bucket
from couchbase_core.mock.httpd import HTTPRequest, HTTPResponse, Router, json_response

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.runtime import MockApp, NodeRuntime

__all__ = ["router", "query_service", "BucketKeyspace"]


class BucketKeyspace:
    """A bucket as the N1QL engine sees it."""

    def __init__(self, app: "MockApp", bucket: Bucket) -> None:
        self.name = bucket.name
        self._bucket = bucket
        self._cluster = app.cluster

    @staticmethod
    def _decode(value: bytes) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            return None

    def _meta(self, key: str, item: Any) -> dict:
        is_json = self._decode(item.value) is not None
        return {"id": key, "cas": item.cas, "flags": item.flags, "expiration": item.expiry,
                "type": "json" if is_json else "base64"}

    def scan(self) -> Iterable[Tuple[str, Any, dict]]:
        for key_bytes, item in self._bucket.all_items(self._cluster.clock.now()):
            key = key_bytes.decode("utf-8", "replace")
            yield key, self._decode(item.value), self._meta(key, item)

    def get(self, doc_id: str) -> Optional[Tuple[Any, dict]]:
        key = doc_id.encode("utf-8")
        vb_store = self._bucket.store_for(self._cluster.nodes[0], key)[1]
        item = vb_store.lookup(key, self._cluster.clock.now())
        if item is None:
            return None
        return self._decode(item.value), self._meta(doc_id, item)

    def mutation_count(self) -> int:
        return sum(vb.seqno for vb in self._bucket.vbuckets)


def query_service(app: "MockApp") -> Any:
    """The cluster's one :class:`~couchbase_core.mock.n1ql.QueryService`."""
    from couchbase_core.mock import n1ql

    service = app.services.get("n1ql")
    if service is None:
        def keyspaces() -> Dict[str, BucketKeyspace]:
            return {name: BucketKeyspace(app, b) for name, b in app.cluster.buckets.items()}

        service = app.services["n1ql"] = n1ql.QueryService(keyspaces, app.cluster.cluster_capabilities)
    return service


#: Request parameters a query service takes as plain text (not JSON).
_TEXT_FIELDS = frozenset({"statement", "prepared", "encoded_plan"})


def request_fields(request: HTTPRequest, text_fields: frozenset = _TEXT_FIELDS) -> Dict[str, Any]:
    """The parameters of a query-service request: a JSON body as it is, or
    form/query-string fields, each JSON-decoded unless it is one of
    ``text_fields`` (or does not decode)."""
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and ctype.startswith("application/json"):
        fields = json.loads(request.body or b"{}")
        if not isinstance(fields, dict):
            raise ValueError("the request body must be a JSON object")
        return fields
    raw = dict(request.query)
    if request.method == "POST":
        raw.update(request.form())
    fields: Dict[str, Any] = {}
    for name, value in raw.items():
        if name in text_fields:
            fields[name] = value
            continue
        try:
            fields[name] = json.loads(value)
        except ValueError:
            fields[name] = value
    return fields


def router(app: "MockApp", runtime: "NodeRuntime") -> Router:
    """Routes of one node's query service."""
    cluster = app.cluster
    r = Router()

    async def service(request: HTTPRequest) -> HTTPResponse:
        if request.basic_auth() is not None and http_access(cluster, request) is None:
            return json_response({"requestID": "", "errors": [{"code": 10000, "msg": "Authentication Failure"}],
                                  "status": "fatal"}, 401)
        try:
            fields = request_fields(request)
        except ValueError as exc:
            return json_response({"errors": [{"code": 1000, "msg": "Invalid request: %s" % exc}],
                                  "status": "fatal"}, 400)
        if request.method == "GET":
            fields["readonly"] = True  # GET requests may only read
        status, chunks = query_service(app).execute(fields)
        return HTTPResponse(status, chunks)

    r.add(["GET", "POST"], r"/query/service", service)
    r.add(["GET", "POST"], r"/query", service)
    return r

"""BucketManager: design documents and N1QL indexes of one bucket.

``bucket.bucket_manager()`` returns one. Its calls wait like the bucket's
own (blocking, or cooperatively on the gevent bucket); they are not offered
on an AsyncBucket, whose callers can send the same HTTP requests and N1QL
statements themselves.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterable, List, Optional
from urllib.parse import quote

from couchbase_core.exceptions import ArgumentError, HTTPError, NotSupportedError, TimeoutError
from couchbase_core.n1ql import N1QLError, N1QLQuery

__all__ = ["BucketManager", "IndexInfo"]


def _ident(name: str) -> str:
    return "`%s`" % name.replace("`", "``")


class IndexInfo:
    """One N1QL index as ``system:indexes`` describes it."""

    def __init__(self, raw: Dict[str, Any]) -> None:
        self.raw = raw
        self.name: str = raw.get("name", "")
        self.keyspace: str = raw.get("keyspace_id", "")
        self.primary: bool = bool(raw.get("is_primary", False))
        self.state: str = raw.get("state", "")
        self.condition: str = raw.get("condition", "") or ""
        self.fields: List[str] = list(raw.get("index_key", []) or [])
        self.using: str = raw.get("using", "gsi")

    def __repr__(self) -> str:
        return "IndexInfo(%r, primary=%s, state=%r, fields=%r)" % (self.name, self.primary, self.state, self.fields)


class BucketManager:
    """Management of one bucket's design documents and N1QL indexes."""

    def __init__(self, bucket: Any) -> None:
        if getattr(bucket, "_is_async", False):
            raise NotSupportedError("BucketManager needs a blocking or gevent bucket")
        bucket._require_couchbase("bucket management", "plain memcached has no views or N1QL")
        self._bucket = bucket

    # -- HTTP helpers -------------------------------------------------------

    def _http(self, service: str, method: str, path: str, body: Any = None,
              content_type: str = "application/json", ok: Iterable[int] = (200, 201, 202)) -> Any:
        from couchbase_core._httpops import HttpOp

        data = b""
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode("utf-8")
        accepted = set(ok)
        op = HttpOp(service, method, path, data, {"Content-Type": content_type} if data else {},
                    self._bucket._settings.http_timeout, accept=lambda status: status in accepted)
        return self._bucket._one(op)

    def _ddoc_path(self, name: str, use_devmode: bool) -> str:
        if name.startswith("_design/"):
            name = name[len("_design/"):]
        if use_devmode and not name.startswith("dev_"):
            name = "dev_" + name
        from couchbase_core.views.iterator import quote_name

        return "/%s/_design/%s" % (quote_name(self._bucket.bucket, "bucket"), quote_name(name, "design document"))

    def _wait(self, check: Any, syncwait: float, what: str) -> None:
        deadline = time.monotonic() + syncwait
        while True:
            if check():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError("%s did not happen within syncwait=%.3gs" % (what, syncwait))
            self._bucket._sleep(0.05)

    def _ddoc_present(self, path: str) -> bool:
        try:
            self._http("capi", "GET", path)
            return True
        except HTTPError as exc:
            if getattr(exc.result, "http_status", 0) == 404:
                return False
            raise

    # -- design documents -------------------------------------------------------

    def design_list(self) -> Dict[str, Any]:
        """Every design document: ``{"_design/name": design_json}``."""
        res = self._http("mgmt", "GET", "/pools/default/buckets/%s/ddocs" % quote(self._bucket.bucket, safe=""))
        out = {}
        for row in (res.value or {}).get("rows", []):
            doc = row.get("doc", {})
            out[doc.get("meta", {}).get("id", "")] = doc.get("json", {})
        return out

    def design_create(self, name: str, ddoc: Any, use_devmode: bool = True, syncwait: float = 0) -> Any:
        """Store a design document (``ddoc``: a dict or JSON text). With
        ``syncwait`` seconds, wait until the server serves it."""
        body = ddoc if isinstance(ddoc, (bytes, str)) else json.dumps(ddoc)
        if isinstance(body, str):
            body = body.encode("utf-8")
        path = self._ddoc_path(name, use_devmode)
        res = self._http("capi", "PUT", path, body)
        if syncwait:
            self._wait(lambda: self._ddoc_present(path), syncwait, "design document %s creation" % name)
        return res

    def design_get(self, name: str, use_devmode: bool = True) -> Any:
        """A design document (an HttpResult whose ``value`` is the JSON)."""
        return self._http("capi", "GET", self._ddoc_path(name, use_devmode))

    def design_publish(self, name: str, syncwait: float = 0) -> Any:
        """Copy the development version ``dev_<name>`` to production ``<name>``
        and delete the development one."""
        dev = self.design_get(name, use_devmode=True)
        res = self.design_create(name, dev.value, use_devmode=False, syncwait=syncwait)
        self.design_delete(name, use_devmode=True)
        return res

    def design_delete(self, name: str, use_devmode: bool = True, syncwait: float = 0) -> Any:
        """Delete a design document; with ``syncwait``, wait until it is gone."""
        path = self._ddoc_path(name, use_devmode)
        res = self._http("capi", "DELETE", path)
        if syncwait:
            self._wait(lambda: not self._ddoc_present(path), syncwait, "design document %s removal" % name)
        return res

    # -- N1QL indexes ------------------------------------------------------------

    def _n1ql(self, statement: str) -> List[Any]:
        return list(self._bucket.n1ql_query(N1QLQuery(statement)))

    def n1ql_index_create(self, ix: str, ignore_exists: bool = False, primary: bool = False, defer: bool = False,
                          fields: Optional[List[str]] = None, condition: Optional[str] = None) -> None:
        """Create an index (``primary=True`` for a primary one; ``fields`` are
        N1QL expressions; ``defer`` creates it deferred, see
        :meth:`n1ql_index_build_deferred`)."""
        keyspace = _ident(self._bucket.bucket)
        if primary:
            statement = "CREATE PRIMARY INDEX %s ON %s" % (_ident(ix) if ix else "", keyspace)
        else:
            if not ix:
                raise ArgumentError("a secondary index needs a name")
            if not fields:
                raise ArgumentError("a secondary index needs fields")
            statement = "CREATE INDEX %s ON %s(%s)" % (_ident(ix), keyspace, ", ".join(fields))
            if condition:
                statement += " WHERE " + condition
        statement += " USING GSI"
        if defer:
            statement += ' WITH {"defer_build": true}'
        try:
            self._n1ql(statement)
        except N1QLError as exc:
            if ignore_exists and (exc.code == 4300 or "already exists" in exc.msg.lower()):
                return
            raise

    def n1ql_index_create_primary(self, defer: bool = False, ignore_exists: bool = False) -> None:
        """Create the primary index."""
        self.n1ql_index_create("", ignore_exists=ignore_exists, primary=True, defer=defer)

    def n1ql_index_drop(self, ix: str, ignore_missing: bool = False, primary: bool = False) -> None:
        """Drop an index (``primary=True`` for the primary one)."""
        keyspace = _ident(self._bucket.bucket)
        if primary and not ix:
            statement = "DROP PRIMARY INDEX ON %s" % keyspace
        else:
            statement = "DROP INDEX %s.%s" % (keyspace, _ident(ix))
        try:
            self._n1ql(statement)
        except N1QLError as exc:
            if ignore_missing and (exc.code in (12004, 12016) or "not found" in exc.msg.lower()):
                return
            raise

    def n1ql_index_drop_primary(self, ignore_missing: bool = False) -> None:
        """Drop the primary index."""
        self.n1ql_index_drop("", ignore_missing=ignore_missing, primary=True)

    def n1ql_index_list(self, other_buckets: bool = False) -> List[IndexInfo]:
        """The bucket's indexes (every bucket's with ``other_buckets``)."""
        statement = "SELECT idx.* FROM system:indexes idx"
        if not other_buckets:
            statement += " WHERE keyspace_id = %s" % json.dumps(self._bucket.bucket)
        return [IndexInfo(row) for row in self._n1ql(statement)]

    def n1ql_index_build_deferred(self, other_buckets: bool = False) -> List[str]:
        """Build every deferred index; returns their names."""
        deferred = [ix for ix in self.n1ql_index_list(other_buckets) if ix.state in ("deferred", "pending")]
        by_keyspace: Dict[str, List[str]] = {}
        for ix in deferred:
            by_keyspace.setdefault(ix.keyspace, []).append(ix.name)
        for keyspace, names in by_keyspace.items():
            self._n1ql("BUILD INDEX ON %s(%s)" % (_ident(keyspace), ", ".join(_ident(n) for n in names)))
        return [ix.name for ix in deferred]

    def n1ql_index_watch(self, indexes: List[str], timeout: float = 30, interval: float = 0.2,
                         watch_primary: bool = False) -> None:
        """Wait until every named index (and the primary one with
        ``watch_primary``) is online; TimeoutError after ``timeout``."""
        wanted = set(indexes)
        deadline = time.monotonic() + timeout
        while True:
            current = self.n1ql_index_list()
            online = {ix.name for ix in current if ix.state == "online"}
            missing = wanted - online
            primary_ok = not watch_primary or any(ix.primary and ix.state == "online" for ix in current)
            if not missing and primary_ok:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError("indexes %s not online within %.3gs" % (sorted(missing) or ["#primary"], timeout))
            self._bucket._sleep(interval)


"""The analytics service of a node (8095-like): ``/analytics/service``.

Datasets are the analytics service's copies of bucket data. This emulator
keeps the dataset catalogue and the state of the ``Local`` link, and runs
the SELECT part of every query on the emulator's N1QL engine
(:mod:`couchbase_core.mock.n1ql`), whose keyspaces here are the datasets.

Statements (keywords case-insensitive; names plain or backquoted, optionally
qualified with the ``Default`` dataverse; several statements may be sent
separated by ``;``, the response is the last one's)::

    CREATE DATASET [IF NOT EXISTS] name ON bucket [WHERE condition]
    DROP DATASET name [IF EXISTS]            (also DROP DATASET IF EXISTS name)
    CONNECT LINK [Default.]Local             (WITH {...} accepted)
    DISCONNECT LINK [Default.]Local
    CREATE INDEX name [IF NOT EXISTS] ON dataset (field[: type], ...)   (recorded, no effect)
    DROP INDEX dataset.name [IF EXISTS]
    USE Default
    SELECT ...                               (the N1QL engine's SELECT subset)

Link semantics, as on the server: a dataset shows its bucket's documents
(those matching its ``WHERE`` condition) while the link is connected; when
the link is disconnected each dataset keeps what it held at that moment
(a dataset created while disconnected is empty until the link connects).
``CREATE DATASET`` on a bucket that does not exist fails.

Requests: ``POST /analytics/service`` (``/query/service`` too, as older
servers) with a JSON or form body. Fields: ``statement``, ``args``
(positional parameters ``?`` / ``$1``), ``$name`` (named parameters),
``client_context_id`` (echoed as ``clientContextID``), ``timeout`` (a Go
duration), ``pretty``, ``readonly`` (only SELECT allowed), ``mode``
(``immediate``, or ``async`` for deferred queries), ``scan_consistency``
(``not_bounded`` / ``request_plus``: the emulator reads live data either
way), ``scan_wait``; other fields (``plan-format``, ``max-warnings``...) are
accepted and ignored.

Replies::

    {"requestID": "...", "clientContextID": "...", "signature": {"*": "*"},
     "results": [...], "plans": {}, "status": "success",
     "metrics": {"elapsedTime": "1.2ms", "executionTime": "1.1ms", "resultCount": 2,
                 "resultSize": 48, "processedObjects": 30}}

DDL statements answer without ``results``. Errors answer ``"status":
"fatal"`` with ``errors`` ``[{"code": ..., "msg": ...}]``:

=====  ====  ==============================================================
code   HTTP  message
=====  ====  ==============================================================
21002  500   Request timed out and will be cancelled
21003  400   Missing statement (unverified code)
24000  400   Syntax error: ... (and other statement errors of the engine)
24025  400   Cannot find dataset with name X in dataverse Default (DROP)
24040  400   A dataset with name X already exists in dataverse Default
24045  400   Cannot find dataset X in dataverse Default nor an alias with name X!
24047  400   Cannot find index with name X (DROP INDEX)
24048  400   An index with this name X already exists
24055  400   Bucket (X) does not exist (unverified code)
20001  400   Invalid statement: Non-query statement provided (readonly)
=====  ====  ==============================================================

Deferred queries (``mode: async``) run at once; the reply has ``status``
``running`` and a ``handle`` URL ``/analytics/service/status/<id>`` on the
node. The first GET of that status answers ``{"status": "running"}``, later
ones ``{"status": "success", "handle": ".../analytics/service/result/<id>"}``;
the result is the JSON array of the rows. At most 128 results are kept
(oldest dropped).

Memory: one request's rows are held whole while its reply is written (the
reply itself streams in chunks).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from couchbase_core.mock import n1ql
from couchbase_core.mock.auth import http_access
from couchbase_core.mock.httpd import HTTPRequest, HTTPResponse, Router, json_response
from couchbase_core.mock.query import request_fields

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.runtime import MockApp, NodeRuntime

__all__ = ["AnalyticsService", "AnalyticsError", "router", "analytics_service"]

DATAVERSE = "Default"
#: Deferred results kept at most.
MAX_DEFERRED = 128
#: Rows per chunk of a reply.
_BATCH_ROWS = 256

_NAME = r"(?:`(?:[^`]|``)+`|[A-Za-z_][A-Za-z0-9_]*)"
_QNAME = r"(?:(?:`Default`|Default)\.)?(%s)" % _NAME
_FLAGS = re.IGNORECASE | re.DOTALL
_CREATE_DATASET = re.compile(r"CREATE\s+DATASET\s+(IF\s+NOT\s+EXISTS\s+)?%s\s+ON\s+(%s)(?:\s+WHERE\s+(.+))?"
                             % (_QNAME, _NAME), _FLAGS)
_DROP_DATASET = re.compile(r"DROP\s+DATASET\s+(IF\s+EXISTS\s+)?%s(\s+IF\s+EXISTS)?" % _QNAME, _FLAGS)
_LINK = re.compile(r"(CONNECT|DISCONNECT)\s+LINK\s+(?:(?:`Default`|Default)\.)?(?:`Local`|Local)"
                   r"(?:\s+WITH\s+\{.*\})?", _FLAGS)
_CREATE_INDEX = re.compile(r"CREATE\s+INDEX\s+(%s)\s+(IF\s+NOT\s+EXISTS\s+)?ON\s+%s\s*\(.*\)"
                           r"(?:\s+TYPE\s+BTREE)?" % (_NAME, _QNAME), _FLAGS)
_DROP_INDEX = re.compile(r"DROP\s+INDEX\s+%s\.(%s)(\s+IF\s+EXISTS)?" % (_QNAME, _NAME), _FLAGS)
_USE = re.compile(r"USE\s+(?:`Default`|Default)", _FLAGS)
_SELECT = re.compile(r"\(*\s*SELECT\b", _FLAGS)

_HTTP_FOR_CODE = {21002: 500, 23000: 503, 23007: 503, 25000: 500}


def _unquote(name: str) -> str:
    if name.startswith("`"):
        return name[1:-1].replace("``", "`")
    return name


def _quote(name: str) -> str:
    return "`%s`" % name.replace("`", "``")


class AnalyticsError(Exception):
    """An analytics error: its code, message and HTTP status."""

    def __init__(self, code: int, msg: str, http: Optional[int] = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.http = http if http is not None else _HTTP_FOR_CODE.get(code, 400)


def split_statements(text: str) -> List[str]:
    """The statements of a request (split on ``;`` outside quotes and
    comments), without empty ones."""
    out: List[str] = []
    current: List[str] = []
    i, n = 0, len(text)
    quote: Optional[str] = None
    while i < n:
        ch = text[i]
        if quote is not None:
            current.append(ch)
            if ch == "\\" and quote != "`" and i + 1 < n:
                current.append(text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
            current.append(ch)
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            current.append(" ")
            continue
        elif ch == ";":
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current))
    return [s.strip() for s in out if s.strip()]


class _Dataset:
    """One dataset: its bucket, its filter, and what it holds while the
    link is disconnected."""

    def __init__(self, name: str, bucket: str, where: Optional[str]) -> None:
        self.name = name
        self.bucket = bucket
        self.where = where
        #: documents held while disconnected (None: follow the bucket live)
        self.frozen: Optional[List[Tuple[str, Any, dict]]] = None


class _DatasetKeyspace:
    """A dataset as the N1QL engine sees it (a keyspace)."""

    def __init__(self, service: "AnalyticsService", dataset: _Dataset, counter: List[int]) -> None:
        self.name = dataset.name
        self._service = service
        self._dataset = dataset
        self._counter = counter

    def scan(self) -> Iterable[Tuple[str, Any, dict]]:
        for doc in self._service.contents(self._dataset):
            self._counter[0] += 1
            yield doc

    def get(self, doc_id: str) -> Optional[Tuple[Any, dict]]:
        for key, value, meta in self._service.contents(self._dataset):
            if key == doc_id:
                return value, meta
        return None

    def mutation_count(self) -> int:
        return 0


class AnalyticsService:
    """The analytics service of one emulated cluster.

    ``buckets`` is called when bucket data is needed and returns the current
    buckets as N1QL keyspaces (``scan()`` of ``(id, value, meta)``) by name.
    Thread-safe.
    """

    def __init__(self, buckets: Callable[[], Dict[str, Any]]) -> None:
        self._buckets = buckets
        self._lock = threading.RLock()
        self.datasets: "OrderedDict[str, _Dataset]" = OrderedDict()
        #: index name -> dataset name (recorded only)
        self.indexes: Dict[Tuple[str, str], List[str]] = {}
        self.connected = False
        self._deferred: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        self._request_keyspaces: Dict[str, Any] = {}
        # SELECTs run here, over the datasets of the current request
        self._select = n1ql.QueryService(lambda: self._request_keyspaces, build_delay=0)
        # dataset filters (CREATE DATASET ... WHERE) run here, over the buckets
        self._filter = n1ql.QueryService(self._buckets, build_delay=0)

    # ----------------------------------------------------------- contents

    def contents(self, dataset: _Dataset) -> List[Tuple[str, Any, dict]]:
        """What a dataset holds now (see the module docs)."""
        if dataset.frozen is not None:
            return dataset.frozen
        if not self.connected:
            return []
        bucket = self._buckets().get(dataset.bucket)
        if bucket is None:
            return []
        docs = [doc for doc in bucket.scan() if doc[1] is not None]  # analytics ingests JSON only
        if dataset.where is None:
            return docs
        keep = set(self._filter_ids(dataset.bucket, dataset.where))
        return [doc for doc in docs if doc[0] in keep]

    def _filter_ids(self, bucket: str, where: str) -> List[str]:
        """The ids of ``bucket``'s documents matching ``where`` (through the
        N1QL engine; AnalyticsError 24000 if it does not parse)."""
        self._ensure_primary(self._filter, bucket)
        statement = "SELECT RAW META(d).id FROM %s AS d WHERE %s" % (_quote(bucket), where)
        doc = self._run(self._filter, {"statement": statement, "readonly": True})
        return [i for i in doc.get("results", []) if isinstance(i, str)]

    @staticmethod
    def _ensure_primary(service: n1ql.QueryService, keyspace: str) -> None:
        if any(row.get("keyspace_id") == keyspace and row.get("is_primary") for row in service.indexes()):
            return
        _, chunks = service.execute({"statement": "CREATE PRIMARY INDEX ON %s" % _quote(keyspace)})
        for _ in chunks:
            pass

    @staticmethod
    def _run(service: n1ql.QueryService, fields: Dict[str, Any]) -> Dict[str, Any]:
        """Run a request on the N1QL engine; its errors as AnalyticsError."""
        _, chunks = service.execute(fields)
        doc = json.loads(b"".join(chunks))
        errors = doc.get("errors")
        if errors:
            raise _translate(errors[0])
        return doc

    # ----------------------------------------------------------- requests

    def execute(self, fields: Dict[str, Any], base_url: str) -> Tuple[int, Iterator[bytes]]:
        """Run one request (its decoded fields): ``(http_status, chunks)``.
        ``base_url`` (``http://host:port``) prefixes deferred handles."""
        started = time.monotonic_ns()
        request_id = str(uuid.uuid4())
        ccid = fields.get("client_context_id")
        head: Dict[str, Any] = {"requestID": request_id}
        if ccid is not None:
            head["clientContextID"] = ccid if isinstance(ccid, str) else json.dumps(ccid)
        pretty = fields.get("pretty") in (True, "true")
        counter = [0]
        try:
            options = _read_options(fields)
            with self._lock:
                rows, is_query = self._execute_statements(options, counter)
        except AnalyticsError as err:
            body = dict(head)
            body["errors"] = [{"code": err.code, "msg": err.msg}]
            body["status"] = "fatal"
            body["metrics"] = _metrics(started, 0, 0, counter[0], errors=1)
            return err.http, iter([_dump(body, pretty)])
        if options["mode"] == "async" and is_query:
            handle = self._store_deferred(rows)
            body = dict(head)
            body["signature"] = {"*": "*"}
            body["status"] = "running"
            body["handle"] = "%s/analytics/service/status/%s" % (base_url, handle)
            body["metrics"] = _metrics(started, 0, 0, counter[0])
            return 200, iter([_dump(body, pretty)])
        return 200, _reply(head, rows if is_query else None, started, counter[0], pretty)

    def _execute_statements(self, options: Dict[str, Any], counter: List[int]) -> Tuple[List[Any], bool]:
        statements = split_statements(options["statement"])
        if not statements:
            raise AnalyticsError(24000, "Syntax error: empty statement")
        rows: List[Any] = []
        is_query = False
        for text in statements:
            if _SELECT.match(text):
                rows, is_query = self._select_rows(text, options, counter), True
                continue
            if options["readonly"]:
                raise AnalyticsError(20001, "Invalid statement: Non-query statement provided")
            self._ddl(text)
            rows, is_query = [], False
        return rows, is_query

    def _select_rows(self, text: str, options: Dict[str, Any], counter: List[int]) -> List[Any]:
        keyspaces = {name: _DatasetKeyspace(self, ds, counter) for name, ds in self.datasets.items()}
        self._request_keyspaces = keyspaces
        try:
            for name in keyspaces:
                self._ensure_primary(self._select, name)
            fields: Dict[str, Any] = {"statement": text, "readonly": True}
            for key in ("args", "timeout"):
                if key in options:
                    fields[key] = options[key]
            fields.update(options["named"])
            return list(self._run(self._select, fields).get("results", []))
        finally:
            self._request_keyspaces = {}

    # ---------------------------------------------------------------- DDL

    def _ddl(self, text: str) -> None:  # noqa: C901 - one dispatch over the statement forms
        m = _CREATE_DATASET.fullmatch(text)
        if m:
            if_not_exists, name, bucket, where = m.group(1), _unquote(m.group(2)), _unquote(m.group(3)), m.group(4)
            if name in self.datasets:
                if if_not_exists:
                    return
                raise AnalyticsError(24040, "A dataset with name %s already exists in dataverse %s"
                                     % (name, DATAVERSE))
            if bucket not in self._buckets():
                raise AnalyticsError(24055, "Bucket (%s) does not exist" % bucket)
            if where is not None:
                self._filter_ids(bucket, where)  # the condition must parse
            dataset = _Dataset(name, bucket, where)
            if not self.connected:
                dataset.frozen = []
            self.datasets[name] = dataset
            return
        m = _DROP_DATASET.fullmatch(text)
        if m:
            name = _unquote(m.group(2))
            if name not in self.datasets:
                if m.group(1) or m.group(3):
                    return
                raise AnalyticsError(24025, "Cannot find dataset with name %s in dataverse %s" % (name, DATAVERSE))
            del self.datasets[name]
            for key in [k for k in self.indexes if k[0] == name]:
                del self.indexes[key]
            return
        m = _LINK.fullmatch(text)
        if m:
            if m.group(1).upper() == "CONNECT":
                self.connected = True
                for dataset in self.datasets.values():
                    dataset.frozen = None
            else:
                # each dataset keeps what it holds now
                for dataset in self.datasets.values():
                    if dataset.frozen is None:
                        dataset.frozen = self.contents(dataset)
                self.connected = False
            return
        m = _CREATE_INDEX.fullmatch(text)
        if m:
            index, dataset_name = _unquote(m.group(1)), _unquote(m.group(3))
            if dataset_name not in self.datasets:
                raise AnalyticsError(24045, _not_found(dataset_name))
            if (dataset_name, index) in self.indexes:
                if m.group(2):
                    return
                raise AnalyticsError(24048, "An index with this name %s already exists" % index)
            self.indexes[(dataset_name, index)] = []
            return
        m = _DROP_INDEX.fullmatch(text)
        if m:
            dataset_name, index = _unquote(m.group(1)), _unquote(m.group(2))
            if (dataset_name, index) not in self.indexes:
                if m.group(3):
                    return
                raise AnalyticsError(24047, "Cannot find index with name %s" % index)
            del self.indexes[(dataset_name, index)]
            return
        if _USE.fullmatch(text):
            return
        first = text.split(None, 1)[0] if text.split() else text
        raise AnalyticsError(24000, "Syntax error: In line 1 >>%s<< Encountered \"%s\"" % (text[:200], first[:40]))

    # ----------------------------------------------------------- deferred

    def _store_deferred(self, rows: List[Any]) -> str:
        handle = uuid.uuid4().hex
        with self._lock:
            self._deferred[handle] = {"rows": rows, "polled": 0}
            while len(self._deferred) > MAX_DEFERRED:
                self._deferred.popitem(last=False)
        return handle

    def deferred_status(self, handle: str, base_url: str) -> Optional[Dict[str, Any]]:
        """The status document of a deferred query (None if unknown)."""
        with self._lock:
            job = self._deferred.get(handle)
            if job is None:
                return None
            job["polled"] += 1
            if job["polled"] == 1:
                return {"status": "running"}
        return {"status": "success", "handle": "%s/analytics/service/result/%s" % (base_url, handle)}

    def deferred_result(self, handle: str) -> Optional[List[Any]]:
        """The rows of a finished deferred query (None if unknown)."""
        with self._lock:
            job = self._deferred.get(handle)
            return None if job is None else job["rows"]


def _not_found(name: str) -> str:
    return "Cannot find dataset %s in dataverse %s nor an alias with name %s!" % (name, DATAVERSE, name)


_KEYSPACE_MISSING = re.compile(r"Keyspace not found in CB datastore: (?:[^:]*:)?(.*)")


def _translate(error: Dict[str, Any]) -> AnalyticsError:
    """A N1QL engine error as the analytics service reports it."""
    code = error.get("code")
    msg = str(error.get("msg", ""))
    if code == 12003:
        m = _KEYSPACE_MISSING.match(msg)
        return AnalyticsError(24045, _not_found(m.group(1) if m else msg))
    if code == 1080:
        return AnalyticsError(21002, "Request timed out and will be cancelled")
    if code == 3000:
        return AnalyticsError(24000, "Syntax error: %s" % msg)
    if code == 5000:
        return AnalyticsError(25000, "Internal error: %s" % msg)
    return AnalyticsError(24000, msg)


def _read_options(fields: Dict[str, Any]) -> Dict[str, Any]:
    statement = fields.get("statement")
    if statement is None:
        raise AnalyticsError(21003, "Missing statement")
    if not isinstance(statement, str):
        raise AnalyticsError(24000, "Syntax error: the statement is not a string")
    options: Dict[str, Any] = {"statement": statement, "named": {}, "readonly": False}
    if "args" in fields:
        if not isinstance(fields["args"], list):
            raise AnalyticsError(24000, "Invalid value for args: %s" % json.dumps(fields["args"]))
        options["args"] = fields["args"]
    for key, value in fields.items():
        if isinstance(key, str) and key.startswith("$") and len(key) > 1:
            options["named"][key] = value
    if "timeout" in fields:
        try:
            n1ql.parse_go_duration(fields["timeout"])
        except (ValueError, TypeError):
            raise AnalyticsError(24000, "Invalid value for timeout: %s" % (fields["timeout"],)) from None
        options["timeout"] = fields["timeout"]
    mode = fields.get("mode", "immediate")
    if mode not in ("immediate", "async"):
        raise AnalyticsError(24000, "Invalid value for mode: %s" % (mode,))
    options["mode"] = mode
    readonly = fields.get("readonly", False)
    options["readonly"] = readonly is True or (isinstance(readonly, str) and readonly.lower() == "true")
    consistency = fields.get("scan_consistency")
    if consistency is not None and str(consistency).lower() not in ("not_bounded", "request_plus"):
        raise AnalyticsError(24000, "Invalid value for scan_consistency: %s" % (consistency,))
    return options


def _metrics(started: int, count: int, size: int, processed: int, errors: int = 0) -> Dict[str, Any]:
    elapsed = n1ql.format_go_duration(time.monotonic_ns() - started)
    metrics: Dict[str, Any] = {"elapsedTime": elapsed, "executionTime": elapsed, "resultCount": count,
                               "resultSize": size, "processedObjects": processed}
    if errors:
        metrics["errorCount"] = errors
    return metrics


def _dump(obj: Any, pretty: bool) -> bytes:
    if pretty:
        return (json.dumps(obj, indent=4) + "\n").encode("utf-8")
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")


def _reply(head: Dict[str, Any], rows: Optional[List[Any]], started: int, processed: int,
           pretty: bool) -> Iterator[bytes]:
    """A success reply, rows in chunks of :data:`_BATCH_ROWS`."""
    sep = ",\n" if pretty else ","
    opening = _dump(dict(head, signature={"*": "*"}), pretty).rstrip()[:-1]  # without the closing brace
    count = size = 0
    if rows is None:
        yield opening + b"," + b'"status":"success","metrics":' + _dump(
            _metrics(started, 0, 0, processed), False).rstrip() + b"}\n"
        return
    yield opening + b',"results":['
    for start in range(0, len(rows), _BATCH_ROWS):
        texts = [json.dumps(row, separators=(",", ":")) for row in rows[start:start + _BATCH_ROWS]]
        chunk = sep.join(texts).encode("utf-8")
        count += len(texts)
        size += len(chunk) - len(sep) * (len(texts) - 1)
        yield (b"," if start else b"") + chunk
    tail = {"plans": {}, "status": "success", "metrics": _metrics(started, count, size, processed)}
    yield b"]," + json.dumps(tail, separators=(",", ":")).encode("utf-8")[1:] + b"\n"


# ------------------------------------------------------------------ HTTP


def analytics_service(app: "MockApp") -> AnalyticsService:
    """The cluster's one :class:`AnalyticsService`."""
    service = app.services.get("cbas")
    if service is None:
        from couchbase_core.mock.query import BucketKeyspace

        def buckets() -> Dict[str, Any]:
            return {name: BucketKeyspace(app, b) for name, b in app.cluster.buckets.items()
                    if not b.is_memcached}

        service = app.services["cbas"] = AnalyticsService(buckets)
    return service


#: Analytics request parameters taken as plain text (not JSON).
_TEXT_FIELDS = frozenset({"statement", "mode", "timeout", "client_context_id", "scan_consistency"})


def _auth_failure() -> HTTPResponse:
    return json_response({"errors": [{"code": 20001, "msg": "Unauthorized user."}], "status": "fatal"}, 401)


def router(app: "MockApp", runtime: "NodeRuntime") -> Router:
    """Routes of one node's analytics service."""
    cluster = app.cluster
    r = Router()

    def base_url() -> str:
        return "http://%s:%d" % (runtime.node.host, runtime.node.ports.get("cbas", 0))

    def denied(request: HTTPRequest) -> bool:
        return request.basic_auth() is not None and http_access(cluster, request) is None

    async def service(request: HTTPRequest) -> HTTPResponse:
        if denied(request):
            return _auth_failure()
        try:
            fields = request_fields(request, _TEXT_FIELDS)
        except ValueError as exc:
            return json_response({"errors": [{"code": 24000, "msg": "Invalid request: %s" % exc}],
                                  "status": "fatal"}, 400)
        if request.method == "GET":
            fields["readonly"] = True
        status, chunks = analytics_service(app).execute(fields, base_url())
        return HTTPResponse(status, chunks)

    async def status(request: HTTPRequest) -> HTTPResponse:
        if denied(request):
            return _auth_failure()
        doc = analytics_service(app).deferred_status(request.params["handle"], base_url())
        if doc is None:
            return json_response({"errors": [{"code": 21004, "msg": "No such request"}], "status": "fatal"}, 404)
        return json_response(doc)

    async def result(request: HTTPRequest) -> HTTPResponse:
        if denied(request):
            return _auth_failure()
        rows = analytics_service(app).deferred_result(request.params["handle"])
        if rows is None:
            return json_response({"errors": [{"code": 21004, "msg": "No such request"}], "status": "fatal"}, 404)
        return json_response(rows)

    r.add(["GET", "POST"], r"/analytics/service", service)
    r.add(["GET", "POST"], r"/query/service", service)
    r.add(["GET"], r"/analytics/service/status/(?P<handle>[0-9a-f]+)", status)
    r.add(["GET"], r"/analytics/service/result/(?P<handle>[0-9a-f]+)", result)
    return r

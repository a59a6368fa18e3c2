"""The views service of the mock server: design documents, indexes and queries.

This module is transport-free: the HTTP layer (:mod:`couchbase_core.mock.capi`)
hands it design-document bodies and query parameters and sends back what it
returns. Nothing here touches a socket.

Overview
--------
* :class:`DesignDocuments` keeps the design documents of one bucket, checks
  them (JSON shape, every map/reduce/spatial function compiles) and hands out
  revisions ``"N-<8 hex digits>"``.
* :class:`ViewEngine` runs the map functions in an embedded JavaScript engine
  (``quickjs``; ``dukpy`` when quickjs cannot be imported), keeps one index per
  design document (all its views are indexed together, as Couchbase does) and
  answers queries as a lazy iterator of byte chunks.

Choices where the specification is silent (mimicking Couchbase Server 4.x-6.x):

* Collation of keys: ``null < false < true < numbers < strings < arrays <
  objects``; arrays element by element (a prefix sorts first); objects pair by
  pair in their member order. Strings use an approximation of the ICU/UCA
  order of the server: first compared with accents stripped and case folded,
  then with accents, then lowercase before uppercase (``"a" < "A" < "b"``).
  Punctuation is not ignored and there are no locale tailorings. Rows with
  equal keys are ordered by document id (code point order, i.e. the UTF-8 byte
  order of the server), then by emission order inside one document.
* Development design documents (``dev_*``) index the documents whose vBucket
  (CRC32 hash of the id, as in the key-value service, over 1024 vBuckets) is
  below 128, i.e. one eighth of the data, unless ``full_set=true``; see
  :func:`in_dev_subset`.
* ``stale=update_after`` answers from the index as it is and then updates it
  before :meth:`ViewEngine.query` returns, so the next query sees the changes
  (the response already being served keeps the index it started with).
* ``meta.rev`` is ``"1-"`` followed by the CAS (16 hex digits), the expiry and
  the flags (8 hex digits each), the form of the server.
* A map function that throws (or runs past ``map_timeout`` seconds) skips the
  document for that view only; the failure is logged at DEBUG level.
* A failing reduce (a JavaScript reduce throwing, ``_sum`` over non-numbers)
  ends the rows there and reports ``"errors":[{"from":"local","reason":...}]``
  (for ``on_error=continue`` and ``stop`` alike: the status line is already
  sent when reductions run).
* ``keys`` with a reduce and no grouping gives one row reducing every matched
  key; with ``group``/``group_level`` one row per given key, in their order.
  ``keys`` takes precedence over ``key``/``startkey``/``endkey``; ``key`` over
  ``startkey``/``endkey``.
* A start key past the end key (ascending; before it when descending) is a 400
  ``query_parse_error`` as in CouchDB-derived servers.
* ``debug=true`` adds a ``"debug_info":{"local":{...}}`` member before ``rows``.
* JavaScript reductions process at most :attr:`ViewEngine.reduce_chunk_size`
  rows per call and combine the partial results with ``rereduce=true``.
* Spatial rows are ordered by document id; the response has the same shape
  as a map query (``total_rows`` is the number of rows of the spatial index).
"""

from __future__ import annotations

import base64
import bisect
import functools
import itertools
import json
import logging
import re
import threading
import unicodedata
import zlib
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
)
from urllib.parse import quote

__all__ = [
    "Doc",
    "ViewError",
    "JSEngineMissing",
    "js_engine_available",
    "DesignDocuments",
    "ViewEngine",
    "collate_key",
    "in_dev_subset",
    "NUM_VBUCKETS",
    "DEV_SUBSET_VBUCKETS",
]

log = logging.getLogger(__name__)

#: A live document of the key-value store:
#: ``(doc_id, value, flags, cas, expiry, is_json)``.
Doc = Tuple[str, bytes, int, int, int, bool]

#: vBuckets the development subset is computed over.
NUM_VBUCKETS = 1024
#: Development views see documents whose vBucket is below this number.
DEV_SUBSET_VBUCKETS = NUM_VBUCKETS // 8

_BUILTIN_REDUCES = ("_count", "_sum", "_stats")
_ROWS_PER_CHUNK = 500
_BYTES_PER_CHUNK = 64 * 1024


# ---------------------------------------------------------------------------
# errors


class ViewError(Exception):
    """A whole-request failure of the views service.

    ``status`` is the HTTP status to answer with, ``error`` the short code
    (``not_found``, ``query_parse_error``, ``invalid_design_document``,
    ``bad_request``...) and ``reason`` the explanatory text.
    """

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__("%d %s: %s" % (status, error, reason))
        self.status = status
        self.error = error
        self.reason = reason

    def body(self) -> bytes:
        """The JSON body of the error response."""
        return _dumps({"error": self.error, "reason": self.reason}).encode("utf-8")


def _parse_error(reason: str) -> ViewError:
    return ViewError(400, "query_parse_error", reason)


# ---------------------------------------------------------------------------
# JSON helpers and collation

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_dumps = _ENCODER.encode


def _reject_constant(name: str) -> Any:
    raise ValueError("not JSON: %s" % name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _loads(text: str) -> Any:
    """Strict JSON (no NaN/Infinity, which JavaScript would not accept)."""
    return _DECODER.decode(text)


def _utf8(text: str) -> bytes:
    # Lone surrogates (possible in JavaScript strings) only occur inside JSON
    # strings, where the backslash form is exactly the JSON escape.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def _string_key(s: str) -> Tuple[Any, ...]:
    if s.isascii():
        low = s.lower()
        return (4, low, low, s.swapcase())
    folded = s.casefold()
    base = "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))
    return (4, base, folded, s.swapcase())


def collate_key(value: Any) -> Tuple[Any, ...]:
    """A Python sort key ordering JSON values like the view collation.

    ``collate_key(a) < collate_key(b)`` when the server sorts ``a`` before
    ``b``; equal keys group together. See the module documentation for the
    string approximation.
    """
    t = type(value)
    if t is str:
        return _string_key(value)
    if t is int or t is float:
        return (3, value)
    if t is list:
        return (5, tuple([collate_key(v) for v in value]))
    if value is None:
        return (0,)
    if value is False:
        return (1,)
    if value is True:
        return (2,)
    if isinstance(value, (int, float)):
        return (3, value)
    if isinstance(value, str):
        return _string_key(value)
    if isinstance(value, (list, tuple)):
        return (5, tuple(collate_key(v) for v in value))
    if isinstance(value, dict):
        return (6, tuple((_string_key(str(k)), collate_key(v)) for k, v in value.items()))
    raise TypeError("not a JSON value: %r" % (value,))


@functools.total_ordering
class _Top:
    """Sorts after every document id (upper bound probes for bisect)."""

    def __eq__(self, other: object) -> bool:
        return other is self

    def __lt__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


_TOP = _Top()


def in_dev_subset(doc_id: str) -> bool:
    """Whether a development view (without ``full_set``) sees ``doc_id``.

    The vBucket of the id is computed as by the key-value service (CRC32,
    ``(crc >> 16) & 0x7fff`` modulo :data:`NUM_VBUCKETS`); the subset is the
    vBuckets below :data:`DEV_SUBSET_VBUCKETS`.
    """
    crc = zlib.crc32(doc_id.encode("utf-8", "surrogatepass"))
    return ((crc >> 16) & 0x7FFF) % NUM_VBUCKETS < DEV_SUBSET_VBUCKETS


# ---------------------------------------------------------------------------
# JavaScript

_PRELUDE = r"""
var __emitted = null;
function emit(key, value) {
  if (__emitted === null) throw new Error("emit() called outside a map function");
  __emitted.push([key === undefined ? null : key, value === undefined ? null : value]);
}
function log(message) {}
function isArray(obj) { return Array.isArray(obj); }
function toJSON(obj) { return JSON.stringify(obj); }
function sum(values) {
  var s = 0;
  for (var i = 0; i < values.length; i++) s += values[i];
  return s;
}
function dateToArray(date) {
  var d = (date instanceof Date) ? date : new Date(date);
  return [d.getUTCFullYear(), d.getUTCMonth() + 1, d.getUTCDate(),
          d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()];
}
function decodeBase64(text) {
  var alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  var bytes = "", bits = 0, acc = 0;
  for (var i = 0; i < text.length; i++) {
    var v = alphabet.indexOf(text.charAt(i));
    if (v < 0) continue;
    acc = (acc << 6) | v; bits += 6;
    if (bits >= 8) { bits -= 8; bytes += String.fromCharCode((acc >> bits) & 0xff); }
  }
  try { return decodeURIComponent(escape(bytes)); } catch (e) { return bytes; }
}
var __fns = {};
var __next_fn = 1;
function __compile(src) {
  var text = String(src).replace(/^\s+/, "").replace(/[\s;]+$/, "");
  var fn = (0, eval)("(" + text + "\n)");
  if (typeof fn !== "function") throw new TypeError("the source is not a function");
  var id = __next_fn++;
  __fns[id] = fn;
  return id;
}
function __drop(id) { delete __fns[id]; }
function __map(ids_json, docs_json, metas_json) {
  var ids = JSON.parse(ids_json), docs = JSON.parse(docs_json), metas = JSON.parse(metas_json);
  var fns = [], out = new Array(docs.length), i, j;
  for (j = 0; j < ids.length; j++) fns.push(__fns[ids[j]]);
  for (i = 0; i < docs.length; i++) {
    var per = new Array(fns.length), m = metas[i];
    var meta = {id: m[0], rev: m[1], flags: m[2], expiration: m[3], type: m[4]};
    for (j = 0; j < fns.length; j++) {
      __emitted = [];
      try { fns[j](docs[i], meta); per[j] = __emitted; }
      catch (e) { per[j] = String(e); }
    }
    out[i] = per;
  }
  __emitted = null;
  try { return JSON.stringify(out); }
  catch (e) {
    for (i = 0; i < out.length; i++)
      for (j = 0; j < out[i].length; j++) {
        try { JSON.stringify(out[i][j]); } catch (e2) { out[i][j] = String(e2); }
      }
    return JSON.stringify(out);
  }
}
function __reduce(id, tasks_json) {
  var fn = __fns[id], tasks = JSON.parse(tasks_json), out = new Array(tasks.length);
  for (var i = 0; i < tasks.length; i++) {
    var t = tasks[i];
    try {
      var r = fn(t[0], t[1], t[2]);
      out[i] = [1, r === undefined ? null : r];
    } catch (e) { out[i] = [0, String(e)]; }
  }
  return JSON.stringify(out);
}
"""


class _JSError(Exception):
    """A JavaScript exception (compile or run time)."""


#: How to get a JavaScript engine, quoted by :class:`JSEngineMissing`.
INSTALL_HINT = "pip install 'gcouchbase[mock]'"


class JSEngineMissing(ViewError, ImportError):
    """No JavaScript engine is installed, so views cannot run.

    Raised (and answered as an HTTP 500 ``js_engine_missing`` by the views
    service) the first time a design document or a view query needs one.
    The engines come with the ``mock`` extra; the rest of the emulator
    works without them."""

    def __init__(self, wanted: Optional[str] = None) -> None:
        engines = wanted or "quickjs or dukpy"
        ViewError.__init__(self, 500, "js_engine_missing",
                           "the emulator's views need a JavaScript engine (%s), which is not installed: "
                           "install the 'mock' extra (%s)" % (engines, INSTALL_HINT))


def js_engine_available() -> Optional[str]:
    """Name of the JavaScript engine views would use, or ``None`` when
    neither ``quickjs`` nor ``dukpy`` is installed (nothing is imported:
    only looked up)."""
    import importlib.util

    for name in ("quickjs", "dukpy"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


class _JSRuntime:
    """One JavaScript context with the view prelude; not thread-safe."""

    def __init__(self, engine: Optional[str] = None) -> None:
        self.kind = ""
        if engine in (None, "quickjs"):
            try:
                import quickjs
            except ImportError:
                if engine == "quickjs":
                    raise JSEngineMissing("quickjs") from None
            else:
                self.kind = "quickjs"
                self._ctx = quickjs.Context()
                self._ctx.set_max_stack_size(1024 * 1024)
                self._ctx.eval(_PRELUDE)
                self._errors: Tuple[type, ...] = (quickjs.JSException,)
                self._funcs: Dict[str, Any] = {}
        if not self.kind:
            try:
                import dukpy
            except ImportError:
                raise JSEngineMissing(engine) from None

            self.kind = "dukpy"
            self._interp = dukpy.JSInterpreter()
            self._interp.evaljs(_PRELUDE + "\nnull;")
            self._errors = (dukpy.JSRuntimeError,)

    def call(self, name: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Call the global function ``name`` with JSON-compatible arguments."""
        try:
            if self.kind == "quickjs":
                fn = self._funcs.get(name)
                if fn is None:
                    fn = self._funcs[name] = self._ctx.get(name)
                self._ctx.set_time_limit(-1 if timeout is None else timeout)
                try:
                    return fn(*args)
                finally:
                    self._ctx.set_time_limit(-1)
            names = ["dukpy.a%d" % i for i in range(len(args))]
            kwargs = {"a%d" % i: a for i, a in enumerate(args)}
            return self._interp.evaljs("%s(%s)" % (name, ",".join(names)), **kwargs)
        except self._errors as exc:
            raise _JSError(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from None

    def compile(self, source: str) -> int:
        """Compile a function source; its id for later calls."""
        return int(self.call("__compile", source, timeout=5.0))

    def drop(self, fid: int) -> None:
        """Forget a compiled function."""
        self.call("__drop", fid)


_checker_lock = threading.Lock()
_checker: Optional[_JSRuntime] = None


def _check_compiles(source: str) -> Optional[str]:
    """``None`` when ``source`` is a JavaScript function, else the error."""
    global _checker
    with _checker_lock:
        if _checker is None:
            _checker = _JSRuntime()
        try:
            _checker.drop(_checker.compile(source))
        except _JSError as exc:
            return str(exc)
    return None


# ---------------------------------------------------------------------------
# design documents


def _strip_prefix(name: str) -> str:
    return name[len("_design/"):] if name.startswith("_design/") else name


def _validate_design(name: str, body: bytes) -> Dict[str, Any]:
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray, memoryview)) else body
        design = _loads(text)
    except (UnicodeDecodeError, ValueError):
        raise ViewError(400, "bad_request", "invalid UTF-8 JSON") from None

    def invalid(reason: str) -> ViewError:
        return ViewError(400, "invalid_design_document", reason)

    if not isinstance(design, dict):
        raise invalid("Design document `_design/%s` must be a JSON object" % name)
    design.pop("_id", None)
    design.pop("_rev", None)
    views = design.get("views", {})
    if not isinstance(views, dict):
        raise invalid("`views` field of design document `_design/%s` is not a JSON object" % name)
    for vname, view in views.items():
        if not isinstance(view, dict):
            raise invalid("View `%s` must be a JSON object" % vname)
        mapsrc = view.get("map")
        if not isinstance(mapsrc, str):
            raise invalid("View `%s` has no map function or its map is not a string" % vname)
        err = _check_compiles(mapsrc)
        if err is not None:
            raise invalid("Syntax error in the map function of the view `%s': %s" % (vname, err))
        if "reduce" in view:
            red = view["reduce"]
            if not isinstance(red, str):
                raise invalid("Reduce field of the view `%s' must be a string" % vname)
            if red.strip().startswith("_"):
                if red.strip() not in _BUILTIN_REDUCES:
                    raise invalid("Unknown builtin reduce function `%s' in the view `%s'"
                                  % (red.strip(), vname))
            else:
                err = _check_compiles(red)
                if err is not None:
                    raise invalid("Syntax error in the reduce function of the view `%s': %s"
                                  % (vname, err))
    spatial = design.get("spatial", {})
    if not isinstance(spatial, dict):
        raise invalid("`spatial` field of design document `_design/%s` is not a JSON object" % name)
    for vname, src in spatial.items():
        if not isinstance(src, str):
            raise invalid("Spatial view `%s' must be a function source string" % vname)
        err = _check_compiles(src)
        if err is not None:
            raise invalid("Syntax error in the spatial function `%s': %s" % (vname, err))
    return design


class DesignDocuments:
    """Design documents of one bucket (thread-safe).

    Names are given without the ``_design/`` prefix (``"dev_beer"``,
    ``"beer"``); a prefixed name is accepted too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._docs: Dict[str, Tuple[str, Dict[str, Any], bytes]] = {}
        self._generation: Dict[str, int] = {}

    def put(self, name: str, body: bytes) -> dict:
        """Create or replace a design document (answer of a 201)."""
        name = _strip_prefix(name)
        if not name:
            raise ViewError(400, "bad_request", "design document name is empty")
        design = _validate_design(name, body)
        stored = _utf8(_dumps(design))
        with self._lock:
            generation = self._generation.get(name, 0) + 1
            self._generation[name] = generation
            rev = "%d-%08x" % (generation, zlib.crc32(stored + b"#%d" % generation))
            self._docs[name] = (rev, design, stored)
        return {"ok": True, "id": "_design/" + name}

    def get(self, name: str) -> Tuple[bytes, dict]:
        """The design JSON and its meta ``{"id", "rev"}``; 404 when absent."""
        name = _strip_prefix(name)
        with self._lock:
            entry = self._docs.get(name)
            deleted = name in self._generation
        if entry is None:
            raise ViewError(404, "not_found", "deleted" if deleted else "missing")
        rev, _design, stored = entry
        return stored, {"id": "_design/" + name, "rev": rev}

    def delete(self, name: str) -> dict:
        """Remove a design document; 404 when absent."""
        name = _strip_prefix(name)
        with self._lock:
            if self._docs.pop(name, None) is None:
                raise ViewError(404, "not_found", "deleted" if name in self._generation else "missing")
        return {"ok": True, "id": "_design/" + name}

    def names(self) -> List[str]:
        """Names (without ``_design/``) of the existing design documents, sorted."""
        with self._lock:
            return sorted(self._docs)

    def lookup(self, name: str) -> Optional[Tuple[str, Dict[str, Any]]]:
        """``(rev, parsed design)`` or ``None``; the dict must not be modified."""
        with self._lock:
            entry = self._docs.get(_strip_prefix(name))
        return None if entry is None else (entry[0], entry[1])

    def listing(self, bucket: str) -> dict:
        """The ``/pools/default/buckets/<bucket>/ddocs`` answer."""
        with self._lock:
            items = sorted(self._docs.items())
        rows = []
        for name, (rev, _design, stored) in items:
            base = "/pools/default/buckets/%s/ddocs/%s/controller/" % (
                quote(bucket, safe=""), quote("_design/" + name, safe=""))
            rows.append({
                "doc": {"meta": {"id": "_design/" + name, "rev": rev}, "json": json.loads(stored)},
                "controllers": {"compact": base + "compactView",
                                "setUpdateMinChanges": base + "setUpdateMinChanges"},
            })
        return {"rows": rows}


# ---------------------------------------------------------------------------
# spatial keys


def _geometry_points(geometry: Any) -> List[Tuple[float, float]]:
    gtype = geometry.get("type")
    if gtype == "GeometryCollection":
        pts: List[Tuple[float, float]] = []
        for g in geometry.get("geometries") or []:
            if not isinstance(g, dict):
                raise ValueError("bad geometry")
            pts.extend(_geometry_points(g))
        return pts
    depth = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2,
             "Polygon": 2, "MultiPolygon": 3}.get(gtype)
    if depth is None:
        raise ValueError("unknown geometry type")
    level = [geometry.get("coordinates")]
    for _ in range(depth):
        level = [c for lst in level for c in (lst if isinstance(lst, list) else _raise())]
    pts = []
    for p in level:
        if (not isinstance(p, list) or len(p) < 2
                or not all(_is_number(v) for v in p[:2])):
            raise ValueError("bad position")
        pts.append((p[0], p[1]))
    if not pts:
        raise ValueError("empty geometry")
    return pts


def _raise() -> Any:
    raise ValueError("bad coordinates")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_geometry(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("type"), str)


def _spatial_key(key: Any) -> Tuple[List[List[Any]], Optional[dict]]:
    """Ranges ``[[min,max],...]`` and the GeoJSON geometry of an emitted key."""
    geometry = None
    dims: List[Any] = []
    parts = key if isinstance(key, list) else [key]
    if parts and _is_geometry(parts[0]):
        geometry = parts[0]
        pts = _geometry_points(geometry)
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        dims = [[min(xs), max(xs)], [min(ys), max(ys)]]
        parts = parts[1:]
    for part in parts:
        if _is_number(part):
            dims.append([part, part])
        elif (isinstance(part, list) and len(part) == 2 and _is_number(part[0])
              and _is_number(part[1]) and part[0] <= part[1]):
            dims.append([part[0], part[1]])
        else:
            raise ValueError("spatial key dimension must be a number or a [min,max] range")
    if not dims:
        raise ValueError("empty spatial key")
    return dims, geometry


# ---------------------------------------------------------------------------
# indexes


class _View:
    __slots__ = ("name", "fid", "reduce", "reduce_fid")

    def __init__(self, name: str, fid: int, reduce: Optional[str], reduce_fid: Optional[int]) -> None:
        self.name = name
        self.fid = fid
        self.reduce = reduce
        self.reduce_fid = reduce_fid


class _DDocIndex:
    """The index of one design document (every view and spatial view)."""

    def __init__(self, ddoc: str, rev: str, subset: bool) -> None:
        self.ddoc = ddoc
        self.rev = rev
        self.subset = subset
        self.built = False
        self.snapshot: Dict[str, int] = {}
        self.views: Dict[str, _View] = {}
        self.spatial_fids: Dict[str, int] = {}
        # entries: (collate_key(key), doc_id, n, key, value), sorted
        self.entries: Dict[str, List[Tuple[Any, ...]]] = {}
        # spatial: (doc_id, n, ranges, value, geometry), sorted by id
        self.spatial: Dict[str, List[Tuple[Any, ...]]] = {}
        self.map_errors = 0
        self.updates = 0

    def fids(self) -> List[int]:
        out = []
        for v in self.views.values():
            out.append(v.fid)
            if v.reduce_fid is not None:
                out.append(v.reduce_fid)
        out.extend(self.spatial_fids.values())
        return out


class _ReduceFailure(Exception):
    pass


def _reduce_count(values: Iterable[Any], rereduce: bool) -> Any:
    if rereduce:
        return sum(values)
    return sum(1 for _ in values)


def _add(acc: Any, v: Any) -> Any:
    if acc is None:
        return v
    if _is_number(acc) and _is_number(v):
        return acc + v
    if isinstance(acc, list) and isinstance(v, list):
        n = max(len(acc), len(v))
        return [(acc[i] if i < len(acc) else 0) + (v[i] if i < len(v) else 0) for i in range(n)]
    if isinstance(acc, list):
        return [acc[0] + v] + acc[1:] if acc else [v]
    return [v[0] + acc] + v[1:] if v else [acc]


def _reduce_sum(values: Iterable[Any], rereduce: bool) -> Any:
    acc: Any = None
    for v in values:
        if not (_is_number(v) or (isinstance(v, list) and all(_is_number(x) for x in v))):
            raise _ReduceFailure("Builtin _sum function requires map values to be numbers "
                                 "or arrays of numbers, got %s" % _dumps(v))
        acc = _add(acc, v)
    return 0 if acc is None else acc


def _reduce_stats(values: Iterable[Any], rereduce: bool) -> Any:
    total: Any = 0
    count = 0
    lo: Any = None
    hi: Any = None
    sumsqr: Any = 0
    for v in values:
        if _is_number(v):
            s, c, mn, mx, sq = v, 1, v, v, v * v
        elif isinstance(v, dict) and all(_is_number(v.get(f)) for f in ("sum", "count", "min", "max", "sumsqr")):
            s, c, mn, mx, sq = v["sum"], v["count"], v["min"], v["max"], v["sumsqr"]
        else:
            raise _ReduceFailure("Builtin _stats function requires map values to be numbers, got %s"
                                 % _dumps(v))
        total += s
        count += c
        sumsqr += sq
        lo = mn if lo is None or mn < lo else lo
        hi = mx if hi is None or mx > hi else hi
    return {"sum": total, "count": count, "min": lo, "max": hi, "sumsqr": sumsqr}


_BUILTINS: Dict[str, Callable[[Iterable[Any], bool], Any]] = {
    "_count": _reduce_count,
    "_sum": _reduce_sum,
    "_stats": _reduce_stats,
}

# A group to reduce: (output key, [(lo, hi), ...] index slices)
_Group = Tuple[Any, List[Tuple[int, int]]]


# ---------------------------------------------------------------------------
# query parameters

_MAP_PARAMS = {
    "key", "keys", "startkey", "start_key", "endkey", "end_key",
    "startkey_docid", "start_key_doc_id", "endkey_docid", "end_key_doc_id",
    "inclusive_end", "descending", "limit", "skip", "reduce", "group", "group_level",
    "stale", "on_error", "full_set", "connection_timeout", "debug",
}
_SPATIAL_PARAMS = {
    "bbox", "start_range", "end_range", "limit", "skip", "stale", "on_error",
    "full_set", "connection_timeout", "debug",
}
_ALIASES = {"start_key": "startkey", "end_key": "endkey",
            "start_key_doc_id": "startkey_docid", "end_key_doc_id": "endkey_docid"}


def _p_bool(name: str, raw: str) -> bool:
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise _parse_error("Invalid value for boolean parameter `%s': %s (expected true or false)"
                       % (name, _dumps(raw)))


_INT_RE = re.compile(r"-?[0-9]+")


def _p_int(name: str, raw: str, minimum: int = 0) -> int:
    text = raw.strip()
    if not _INT_RE.fullmatch(text):
        raise _parse_error("Invalid value for integer parameter `%s': %s" % (name, _dumps(raw)))
    value = int(text)
    if value < minimum:
        raise _parse_error("Invalid value for parameter `%s': %s (must be at least %d)"
                           % (name, _dumps(raw), minimum))
    return value


def _p_json(name: str, raw: str) -> Any:
    try:
        return _loads(raw)
    except ValueError:
        raise _parse_error("Invalid JSON value for parameter `%s': %s" % (name, _dumps(raw))) from None


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _Query:
    """Parsed query parameters."""

    def __init__(self) -> None:
        self.key: Any = None
        self.has_key = False
        self.keys: Optional[List[Any]] = None
        self.startkey: Any = None
        self.has_startkey = False
        self.endkey: Any = None
        self.has_endkey = False
        self.startkey_docid: Optional[str] = None
        self.endkey_docid: Optional[str] = None
        self.inclusive_end = True
        self.descending = False
        self.limit: Optional[int] = None
        self.skip = 0
        self.reduce: Optional[bool] = None
        self.group: Optional[bool] = None
        self.group_level: Optional[int] = None
        self.stale = "update_after"
        self.on_error = "continue"
        self.full_set = False
        self.connection_timeout = 60000
        self.debug = False
        self.start_range: Optional[List[Any]] = None
        self.end_range: Optional[List[Any]] = None


def _parse_params(params: Dict[str, Any], spatial: bool) -> _Query:
    q = _Query()
    allowed = _SPATIAL_PARAMS if spatial else _MAP_PARAMS
    for raw_name, raw_value in params.items():
        name = str(raw_name)
        if name not in allowed:
            raise _parse_error("Invalid URL parameter `%s' for %s view" % (name, "spatial" if spatial else "map/reduce"))
        value = _as_text(raw_value)
        name = _ALIASES.get(name, name)
        if name == "key":
            q.key, q.has_key = _p_json(name, value), True
        elif name == "keys":
            keys = _p_json(name, value)
            if not isinstance(keys, list):
                raise _parse_error("`keys` parameter must be a JSON array, got %s" % _dumps(value))
            q.keys = keys
        elif name == "startkey":
            q.startkey, q.has_startkey = _p_json(name, value), True
        elif name == "endkey":
            q.endkey, q.has_endkey = _p_json(name, value), True
        elif name == "startkey_docid":
            q.startkey_docid = value
        elif name == "endkey_docid":
            q.endkey_docid = value
        elif name in ("inclusive_end", "descending", "reduce", "group", "full_set", "debug"):
            setattr(q, name, _p_bool(name, value))
        elif name in ("limit", "skip", "group_level"):
            setattr(q, name, _p_int(name, value))
        elif name == "connection_timeout":
            q.connection_timeout = _p_int(name, value, minimum=1)
        elif name == "stale":
            if value not in ("ok", "false", "update_after"):
                raise _parse_error("Invalid value for parameter `stale': %s "
                                   "(expected ok, false or update_after)" % _dumps(value))
            q.stale = value
        elif name == "on_error":
            if value not in ("continue", "stop"):
                raise _parse_error("Invalid value for parameter `on_error': %s "
                                   "(expected continue or stop)" % _dumps(value))
            q.on_error = value
        elif name == "bbox":
            parts = value.split(",")
            try:
                nums = [float(p) for p in parts]
            except ValueError:
                nums = []
            if len(nums) != 4 or any(n != n for n in nums):
                raise _parse_error("Invalid value for parameter `bbox': %s "
                                   "(expected minx,miny,maxx,maxy)" % _dumps(value))
            if "start_range" in params or "end_range" in params:
                raise _parse_error("`bbox' cannot be combined with `start_range'/`end_range'")
            q.start_range = [_intish(nums[0]), _intish(nums[1])]
            q.end_range = [_intish(nums[2]), _intish(nums[3])]
        elif name in ("start_range", "end_range"):
            rng = _p_json(name, value)
            if not isinstance(rng, list) or not all(v is None or _is_number(v) for v in rng):
                raise _parse_error("Parameter `%s' must be a JSON array of numbers or nulls" % name)
            setattr(q, name, rng)
    if spatial and "bbox" not in params and (q.start_range is not None or q.end_range is not None):
        if q.start_range is not None and q.end_range is not None and len(q.start_range) != len(q.end_range):
            raise _parse_error("`start_range' and `end_range' must have the same number of dimensions")
    if q.keys is None and not q.has_key and q.has_startkey and q.has_endkey:
        a = (collate_key(q.startkey), q.startkey_docid or "")
        b = (collate_key(q.endkey), q.endkey_docid if q.endkey_docid is not None else a[1])
        if (a > b and not q.descending) or (a < b and q.descending):
            raise _parse_error("No rows can match your key range, reverse your start_key and end_key "
                               "or set descending=%s" % ("false" if q.descending else "true"))
    return q


def _intish(x: float) -> Any:
    return int(x) if x.is_integer() else x


# ---------------------------------------------------------------------------
# the engine


class ViewEngine:
    """Runs view queries of one bucket.

    Owns one JavaScript context (every call into it is serialised by a lock)
    and caches one index per design document and data set (development subset
    or full set). ``documents()`` must return a fresh iterable over the live
    documents, each a :data:`Doc` tuple.

    Tunables (instance attributes): ``map_batch_size`` documents per call into
    JavaScript, ``map_timeout`` seconds one such call may run,
    ``reduce_chunk_size`` rows per JavaScript reduce call (partial results are
    combined with ``rereduce``), ``reduce_timeout`` seconds per reduce call.
    ``js_engine`` forces ``"quickjs"`` or ``"dukpy"`` (the latter has no time
    limits); by default quickjs, dukpy only when quickjs is not installed.
    """

    def __init__(self, design_docs: DesignDocuments, documents: Callable[[], Iterable[Doc]],
                 js_engine: Optional[str] = None) -> None:
        self._design_docs = design_docs
        self._documents = documents
        self._lock = threading.RLock()
        self._js = _JSRuntime(js_engine)
        self._compiled: Dict[str, int] = {}
        self._refs: Dict[int, int] = {}
        self._indexes: Dict[Tuple[str, bool], _DDocIndex] = {}
        self.map_batch_size = 1000
        self.map_timeout = 10.0
        self.reduce_chunk_size = 256
        self.reduce_timeout = 10.0

    @property
    def js_engine(self) -> str:
        """Name of the JavaScript engine in use (``"quickjs"`` or ``"dukpy"``)."""
        return self._js.kind

    # -- functions ----------------------------------------------------------

    def _fn(self, source: str) -> int:
        fid = self._compiled.get(source)
        if fid is None:
            try:
                fid = self._js.compile(source)
            except _JSError as exc:  # validated at PUT time; defensive
                raise ViewError(500, "invalid_design_document", "cannot compile a function: %s" % exc) from None
            self._compiled[source] = fid
        self._refs[fid] = self._refs.get(fid, 0) + 1
        return fid

    def _release(self, index: _DDocIndex) -> None:
        for fid in index.fids():
            left = self._refs.get(fid, 0) - 1
            if left > 0:
                self._refs[fid] = left
                continue
            self._refs.pop(fid, None)
            for src, f in list(self._compiled.items()):
                if f == fid:
                    del self._compiled[src]
            try:
                self._js.drop(fid)
            except _JSError:  # pragma: no cover - defensive
                pass

    def _index(self, ddoc: str, rev: str, design: Dict[str, Any], subset: bool) -> _DDocIndex:
        # drop indexes of deleted or replaced design documents
        for k, idx in list(self._indexes.items()):
            found = self._design_docs.lookup(idx.ddoc)
            if found is None or found[0] != idx.rev:
                self._release(idx)
                del self._indexes[k]
        index = self._indexes.get((ddoc, subset))
        if index is not None:
            return index
        index = _DDocIndex(ddoc, rev, subset)
        try:
            for vname, view in (design.get("views") or {}).items():
                red = view.get("reduce")
                red = red.strip() if isinstance(red, str) else None
                reduce_fid = None
                if red is not None and red not in _BUILTINS:
                    reduce_fid = self._fn(red)
                index.views[vname] = _View(vname, self._fn(view["map"]), red, reduce_fid)
                index.entries[vname] = []
            for sname, src in (design.get("spatial") or {}).items():
                index.spatial_fids[sname] = self._fn(src)
                index.spatial[sname] = []
        except ViewError:
            self._release(index)
            raise
        self._indexes[(ddoc, subset)] = index
        return index

    # -- indexing -------------------------------------------------------------

    def _update(self, index: _DDocIndex) -> None:
        """Bring ``index`` up to date with ``documents()`` (lock held)."""
        old = index.snapshot
        snap: Dict[str, int] = {}
        dirty: Set[str] = set()
        pending: List[Doc] = []
        added: Dict[str, List[Tuple[Any, ...]]] = {v: [] for v in index.views}
        added_spatial: Dict[str, List[Tuple[Any, ...]]] = {s: [] for s in index.spatial_fids}
        mapped = 0
        subset = index.subset
        for doc in self._documents():
            did = doc[0]
            if subset and not in_dev_subset(did):
                continue
            cas = doc[3]
            snap[did] = cas
            prev = old.get(did)
            if prev is not None and prev == cas:
                continue
            if prev is not None:
                dirty.add(did)
            pending.append(doc)
            if len(pending) >= self.map_batch_size:
                self._map_batch(index, pending, added, added_spatial)
                mapped += len(pending)
                pending = []
        if pending:
            self._map_batch(index, pending, added, added_spatial)
            mapped += len(pending)
        dirty.update(did for did in old if did not in snap)
        index.snapshot = snap
        index.built = True
        if not dirty and not mapped:
            return
        index.updates += 1
        # New lists: a query already streaming keeps the lists it started with.
        for vname, new_rows in added.items():
            cur = index.entries[vname]
            rows = [e for e in cur if e[1] not in dirty] if dirty else list(cur)
            if new_rows:
                rows.extend(new_rows)
                rows.sort()
            index.entries[vname] = rows
        for sname, new_rows in added_spatial.items():
            cur = index.spatial[sname]
            rows = [e for e in cur if e[0] not in dirty] if dirty else list(cur)
            if new_rows:
                rows.extend(new_rows)
                rows.sort(key=lambda e: (e[0], e[1]))
            index.spatial[sname] = rows

    def _map_batch(self, index: _DDocIndex, docs: Sequence[Doc],
                   added: Dict[str, List[Tuple[Any, ...]]],
                   added_spatial: Dict[str, List[Tuple[Any, ...]]]) -> None:
        texts: List[Any] = self._json_texts(docs)
        metas: List[List[Any]] = []
        for i, (did, value, flags, cas, expiry, _is_json) in enumerate(docs):
            kind = "json"
            if texts[i] is None:
                kind = "base64"
                texts[i] = '"%s"' % base64.b64encode(bytes(value)).decode("ascii")
            metas.append([did, "1-%016x%08x%08x" % (cas & 0xFFFFFFFFFFFFFFFF, expiry & 0xFFFFFFFF,
                                                    flags & 0xFFFFFFFF), flags, expiry, kind])
        vnames = list(index.views)
        snames = list(index.spatial_fids)
        fids = [index.views[v].fid for v in vnames] + [index.spatial_fids[s] for s in snames]
        if not fids:
            return
        results = self._run_map(fids, texts, metas)
        nviews = len(vnames)
        for doc, per in zip(docs, results):
            did = doc[0]
            for j, emits in enumerate(per):
                if not isinstance(emits, list):
                    index.map_errors += 1
                    name = vnames[j] if j < nviews else snames[j - nviews]
                    log.debug("map function of %s/%s failed for %r: %s", index.ddoc, name, did, emits)
                    continue
                if j < nviews:
                    added[vnames[j]].extend(
                        [(collate_key(k), did, n, k, v) for n, (k, v) in enumerate(emits)])
                else:
                    srows = added_spatial[snames[j - nviews]]
                    for n, (k, v) in enumerate(emits):
                        try:
                            ranges, geometry = _spatial_key(k)
                        except (ValueError, TypeError, AttributeError) as exc:
                            index.map_errors += 1
                            log.debug("bad spatial key from %r: %s", did, exc)
                            continue
                        srows.append((did, n, ranges, v, geometry))

    @staticmethod
    def _json_texts(docs: Sequence[Doc]) -> List[Optional[str]]:
        """The JSON text of each document, ``None`` for the non-JSON ones."""
        scan = _DECODER.scan_once
        texts: List[Optional[str]] = []
        for doc in docs:
            text = None
            if doc[5]:
                try:
                    text = bytes(doc[1]).decode("utf-8")
                    try:
                        _obj, end = scan(text, 0)
                    except StopIteration:
                        end = -1
                    if end != len(text) and (end < 0 or text[end:].strip(" \t\n\r")):
                        _loads(text)  # leading white space, or not JSON (raises)
                except (UnicodeDecodeError, ValueError):
                    text = None
            texts.append(text)
        return texts

    def _run_map(self, fids: List[int], texts: List[str], metas: List[List[Any]]) -> List[Any]:
        ids_json = _dumps(fids)
        try:
            out = self._js.call("__map", ids_json, "[" + ",".join(texts) + "]", _dumps(metas),
                                timeout=self.map_timeout)
            return _loads(out)
        except _JSError as exc:
            if len(texts) == 1:
                return [[str(exc)] * len(fids)]
        # one document misbehaved (time limit, memory): map them one by one
        results: List[Any] = []
        for text, meta in zip(texts, metas):
            results.extend(self._run_map(fids, [text], [meta]))
        return results

    # -- queries ------------------------------------------------------------

    def query(self, ddoc: str, view: str, params: Dict[str, str], post_body: Optional[bytes] = None,
              spatial: bool = False) -> Iterator[bytes]:
        """Answer a view query as a lazy iterator of JSON byte chunks.

        Every validation happens before this returns (raising
        :class:`ViewError`); the iterator only streams.
        """
        ddoc = _strip_prefix(ddoc)
        found = self._design_docs.lookup(ddoc)
        if found is None:
            raise ViewError(404, "not_found", "missing")
        rev, design = found
        section = design.get("spatial" if spatial else "views") or {}
        if view not in section:
            raise ViewError(404, "not_found", "missing_named_view")
        q = _parse_params(params or {}, spatial)
        self._apply_body(q, post_body, spatial)
        vdef = None if spatial else section[view]
        reduce_src = vdef.get("reduce") if vdef is not None else None
        has_reduce = isinstance(reduce_src, str)
        if not spatial:
            if q.reduce and not has_reduce:
                raise _parse_error("Invalid URL parameter `reduce' for map view `%s'" % view)
            use_reduce = has_reduce if q.reduce is None else q.reduce
            if (q.group or q.group_level is not None) and not use_reduce:
                raise _parse_error("Invalid URL parameter `group' or `group_level' for non-reduce view `%s'"
                                   % view)
        else:
            use_reduce = False
        subset = ddoc.startswith("dev_") and not q.full_set
        with self._lock:
            index = self._index(ddoc, rev, design, subset)
            fresh = not index.built or q.stale == "false"
            if fresh:
                self._update(index)
            if spatial:
                entries = index.spatial[view]
            else:
                entries = index.entries[view]
            reduce_view = index.views[view] if use_reduce else None
            debug = None
            if q.debug:
                debug = {"local": {"design_document": "_design/" + ddoc, "design_rev": rev,
                                   "indexed_documents": len(index.snapshot), "index_updates": index.updates,
                                   "map_errors": index.map_errors, "stale": q.stale,
                                   "subset": "development" if subset else "full",
                                   "js_engine": self._js.kind}}
            if q.stale == "update_after" and not fresh:
                self._update(index)
        if spatial:
            return self._stream_spatial(entries, q, debug)
        if reduce_view is not None:
            return self._stream_reduce(entries, reduce_view, q, debug)
        return self._stream_map(entries, q, debug)

    @staticmethod
    def _apply_body(q: _Query, post_body: Optional[bytes], spatial: bool) -> None:
        if not post_body or not post_body.strip():
            return
        try:
            body = _loads(bytes(post_body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ViewError(400, "bad_request", "invalid UTF-8 JSON") from None
        if not isinstance(body, dict):
            raise ViewError(400, "bad_request", "Request body must be a JSON object")
        if "keys" in body:
            if spatial:
                raise _parse_error("Invalid parameter `keys' for spatial view")
            if not isinstance(body["keys"], list):
                raise _parse_error("`keys' member must be a JSON array")
            q.keys = body["keys"]

    # -- ranges ---------------------------------------------------------------

    @staticmethod
    def _range(entries: List[Tuple[Any, ...]], q: _Query) -> Tuple[int, int]:
        """Index slice ``[lo, hi)`` selected by key/startkey/endkey."""
        lo, hi = 0, len(entries)
        if q.has_key:
            ck = collate_key(q.key)
            return bisect.bisect_left(entries, (ck,)), bisect.bisect_right(entries, (ck, _TOP))
        if not q.descending:
            if q.has_startkey:
                ck = collate_key(q.startkey)
                probe = (ck,) if q.startkey_docid is None else (ck, q.startkey_docid)
                lo = bisect.bisect_left(entries, probe)
            if q.has_endkey:
                ck = collate_key(q.endkey)
                if q.inclusive_end:
                    probe = (ck, _TOP) if q.endkey_docid is None else (ck, q.endkey_docid, _TOP)
                    hi = bisect.bisect_right(entries, probe)
                else:
                    probe = (ck,) if q.endkey_docid is None else (ck, q.endkey_docid)
                    hi = bisect.bisect_left(entries, probe)
        else:
            if q.has_startkey:
                ck = collate_key(q.startkey)
                probe = (ck, _TOP) if q.startkey_docid is None else (ck, q.startkey_docid, _TOP)
                hi = bisect.bisect_right(entries, probe)
            if q.has_endkey:
                ck = collate_key(q.endkey)
                if q.inclusive_end:
                    probe = (ck,) if q.endkey_docid is None else (ck, q.endkey_docid)
                    lo = bisect.bisect_left(entries, probe)
                else:
                    probe = (ck, _TOP) if q.endkey_docid is None else (ck, q.endkey_docid, _TOP)
                    lo = bisect.bisect_right(entries, probe)
        return lo, max(lo, hi)

    @staticmethod
    def _key_slices(entries: List[Tuple[Any, ...]], keys: List[Any]) -> Iterator[Tuple[Any, int, int]]:
        for key in keys:
            try:
                ck = collate_key(key)
            except TypeError:  # pragma: no cover - keys come from JSON
                continue
            yield key, bisect.bisect_left(entries, (ck,)), bisect.bisect_right(entries, (ck, _TOP))

    # -- streaming --------------------------------------------------------------

    @staticmethod
    def _head(total_rows: Optional[int], debug: Optional[dict]) -> bytes:
        parts = []
        if total_rows is not None:
            parts.append('"total_rows":%d' % total_rows)
        if debug is not None:
            parts.append('"debug_info":' + _dumps(debug))
        parts.append('"rows":[\n')
        return _utf8("{" + ",".join(parts))

    @staticmethod
    def _tail(errors: List[Dict[str, str]]) -> bytes:
        if not errors:
            return b"\n]\n}"
        return _utf8('\n],\n"errors":[\n' + ",\n".join(_dumps(e) for e in errors) + "\n]\n}")

    @staticmethod
    def _batched(rows: Iterable[str]) -> Iterator[bytes]:
        """Group row texts into chunks of bounded size, comma-separated."""
        first = True
        batch: List[str] = []
        size = 0
        for row in rows:
            batch.append(row)
            size += len(row)
            if len(batch) >= _ROWS_PER_CHUNK or size >= _BYTES_PER_CHUNK:
                yield _utf8(("" if first else ",\n") + ",\n".join(batch))
                first = False
                batch = []
                size = 0
        if batch:
            yield _utf8(("" if first else ",\n") + ",\n".join(batch))

    def _map_positions(self, entries: List[Tuple[Any, ...]], q: _Query) -> Iterator[int]:
        if q.keys is not None:
            def gen() -> Iterator[int]:
                for _key, lo, hi in self._key_slices(entries, q.keys):
                    yield from (range(hi - 1, lo - 1, -1) if q.descending else range(lo, hi))
            return itertools.islice(gen(), q.skip, None if q.limit is None else q.skip + q.limit)
        lo, hi = self._range(entries, q)
        count = hi - lo
        skip = min(q.skip, count)
        take = count - skip if q.limit is None else min(q.limit, count - skip)
        if q.descending:
            start = hi - 1 - skip
            return iter(range(start, start - take, -1))
        return iter(range(lo + skip, lo + skip + take))

    def _stream_map(self, entries: List[Tuple[Any, ...]], q: _Query, debug: Optional[dict]) -> Iterator[bytes]:
        positions = self._map_positions(entries, q)

        def rows() -> Iterator[str]:
            for i in positions:
                _ck, did, _n, key, value = entries[i]
                yield '{"id":%s,"key":%s,"value":%s}' % (_dumps(did), _dumps(key), _dumps(value))

        def gen() -> Iterator[bytes]:
            yield self._head(len(entries), debug)
            yield from self._batched(rows())
            yield self._tail([])

        return gen()

    def _groups(self, entries: List[Tuple[Any, ...]], q: _Query) -> Iterator[_Group]:
        level: Any = None
        if q.group_level is not None:
            level = q.group_level if q.group_level > 0 else None
        elif q.group:
            level = "exact"
        if q.keys is not None:
            slices = [(k, lo, hi) for k, lo, hi in self._key_slices(entries, q.keys) if hi > lo]
            if level is None:
                if slices:
                    yield None, [(lo, hi) for _k, lo, hi in slices]
                return
            for _k, lo, hi in slices:
                key = entries[lo][3]
                if level != "exact" and isinstance(key, list):
                    key = key[:level]
                yield key, [(lo, hi)]
            return
        lo, hi = self._range(entries, q)
        if lo >= hi:
            return
        if level is None:
            yield None, [(lo, hi)]
            return
        positions = range(hi - 1, lo - 1, -1) if q.descending else range(lo, hi)
        cur: Any = _TOP
        start = -1
        prev = -1
        for i in positions:
            ck = entries[i][0]
            gk = ck if level == "exact" or ck[0] != 5 else (5, ck[1][:level])
            if gk != cur:
                if start >= 0:
                    yield self._group_out(entries, start, prev, level)
                cur = gk
                start = i
            prev = i
        if start >= 0:
            yield self._group_out(entries, start, prev, level)

    @staticmethod
    def _group_out(entries: List[Tuple[Any, ...]], first: int, last: int, level: Any) -> _Group:
        key = entries[first][3]
        if level != "exact" and isinstance(key, list):
            key = key[:level]
        return key, [(min(first, last), max(first, last) + 1)]

    def _stream_reduce(self, entries: List[Tuple[Any, ...]], view: _View, q: _Query,
                       debug: Optional[dict]) -> Iterator[bytes]:
        groups = itertools.islice(self._groups(entries, q), q.skip,
                                  None if q.limit is None else q.skip + q.limit)
        errors: List[Dict[str, str]] = []

        def rows() -> Iterator[str]:
            while True:
                batch = list(itertools.islice(groups, _ROWS_PER_CHUNK))
                if not batch:
                    return
                try:
                    values = self._reduce_groups(entries, view, batch, q.descending)
                except _ReduceFailure as exc:
                    errors.append({"from": "local", "reason": str(exc)})
                    return
                for (key, _segs), value in zip(batch, values):
                    try:
                        text = '{"key":%s,"value":%s}' % (_dumps(key), _dumps(value))
                    except ValueError:  # e.g. a _sum overflowing to infinity
                        errors.append({"from": "local", "reason": "reduction is not representable "
                                                                  "in JSON: %r" % (value,)})
                        return
                    yield text

        def gen() -> Iterator[bytes]:
            yield self._head(None, debug)
            yield from self._batched(rows())
            yield self._tail(errors)

        return gen()

    def _reduce_groups(self, entries: List[Tuple[Any, ...]], view: _View, groups: List[_Group],
                       descending: bool) -> List[Any]:
        builtin = _BUILTINS.get(view.reduce or "")
        if builtin is not None:
            out = []
            for _key, segs in groups:
                if view.reduce == "_count":
                    out.append(sum(hi - lo for lo, hi in segs))
                else:
                    out.append(builtin((entries[i][4] for lo, hi in segs for i in range(lo, hi)), False))
            return out
        return self._js_reduce(entries, view, groups, descending)

    def _js_reduce(self, entries: List[Tuple[Any, ...]], view: _View, groups: List[_Group],
                   descending: bool) -> List[Any]:
        chunk = max(1, int(self.reduce_chunk_size))
        budget = max(chunk, 4096)
        partials: List[List[Any]] = [[] for _ in groups]
        pending: List[Tuple[int, Any, List[Any], bool]] = []
        pending_rows = 0

        def flush() -> None:
            nonlocal pending, pending_rows
            if not pending:
                return
            tasks = _dumps([[keys, values, rr] for _gi, keys, values, rr in pending])
            with self._lock:
                try:
                    results = _loads(self._js.call("__reduce", view.reduce_fid, tasks,
                                                   timeout=self.reduce_timeout))
                except _JSError as exc:
                    raise _ReduceFailure("reduce function failed: %s" % exc) from None
            for (gi, _k, _v, _rr), (ok, value) in zip(pending, results):
                if not ok:
                    raise _ReduceFailure("reduce function failed: %s" % value)
                partials[gi].append(value)
            pending = []
            pending_rows = 0

        for gi, (_key, segs) in enumerate(groups):
            positions: Iterable[int] = (i for lo, hi in segs for i in range(lo, hi))
            if descending:
                positions = (i for lo, hi in segs for i in range(hi - 1, lo - 1, -1))
            it = iter(positions)
            while True:
                part = list(itertools.islice(it, chunk))
                if not part:
                    break
                keys = [[entries[i][3], entries[i][1]] for i in part]
                values = [entries[i][4] for i in part]
                pending.append((gi, keys, values, False))
                pending_rows += len(part)
                if pending_rows >= budget:
                    flush()
        flush()
        while any(len(p) > 1 for p in partials):
            for gi, p in enumerate(partials):
                if len(p) <= 1:
                    continue
                partials[gi] = []
                for s in range(0, len(p), chunk):
                    pending.append((gi, None, p[s:s + chunk], True))
                    pending_rows += min(chunk, len(p) - s)
            flush()
        return [p[0] if p else None for p in partials]

    def _stream_spatial(self, entries: List[Tuple[Any, ...]], q: _Query,
                        debug: Optional[dict]) -> Iterator[bytes]:
        start = q.start_range or []
        end = q.end_range or []
        ndims = max(len(start), len(end))
        bounds = [(start[d] if d < len(start) else None, end[d] if d < len(end) else None)
                  for d in range(ndims)]

        def matches(ranges: List[List[Any]]) -> bool:
            if len(ranges) < ndims:
                return False
            for (lo, hi), (rmin, rmax) in zip(bounds, ranges):
                if lo is not None and rmax < lo:
                    return False
                if hi is not None and rmin > hi:
                    return False
            return True

        def rows() -> Iterator[str]:
            selected = (e for e in entries if matches(e[2]))
            for did, _n, ranges, value, geometry in itertools.islice(
                    selected, q.skip, None if q.limit is None else q.skip + q.limit):
                text = '{"id":%s,"key":%s,"value":%s' % (_dumps(did), _dumps(ranges), _dumps(value))
                if geometry is not None:
                    text += ',"geometry":' + _dumps(geometry)
                yield text + "}"

        def gen() -> Iterator[bytes]:
            yield self._head(len(entries), debug)
            yield from self._batched(rows())
            yield self._tail([])

        return gen()

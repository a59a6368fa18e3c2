"""Unit tests of :mod:`couchbase_core.mock.views` (no network)."""

from __future__ import annotations

import base64
import inspect
import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from couchbase_core.mock.views import (
    DEV_SUBSET_VBUCKETS,
    NUM_VBUCKETS,
    DesignDocuments,
    ViewEngine,
    ViewError,
    collate_key,
    in_dev_subset,
)

# ---------------------------------------------------------------------------
# helpers


class Store:
    """A tiny stand-in for the key-value store."""

    def __init__(self) -> None:
        self.docs: Dict[str, Tuple[str, bytes, int, int, int, bool]] = {}
        self.cas = 1000
        self.calls = 0

    def set(self, doc_id: str, value: Any, flags: int = 0, expiry: int = 0,
            is_json: Optional[bool] = None) -> int:
        if isinstance(value, bytes):
            raw = value
            is_json = bool(is_json)
        else:
            raw = json.dumps(value).encode()
            is_json = True if is_json is None else is_json
        self.cas += 1
        self.docs[doc_id] = (doc_id, raw, flags, self.cas, expiry, is_json)
        return self.cas

    def delete(self, doc_id: str) -> None:
        del self.docs[doc_id]

    def __call__(self):
        self.calls += 1
        return list(self.docs.values())


def ddoc(views: Optional[Dict[str, Any]] = None, spatial: Optional[Dict[str, str]] = None) -> bytes:
    body: Dict[str, Any] = {}
    if views is not None:
        body["views"] = views
    if spatial is not None:
        body["spatial"] = spatial
    return json.dumps(body).encode()


def setup(views: Optional[Dict[str, Any]] = None, spatial: Optional[Dict[str, str]] = None,
          name: str = "d") -> Tuple[DesignDocuments, Store, ViewEngine]:
    dd = DesignDocuments()
    dd.put(name, ddoc(views, spatial))
    store = Store()
    return dd, store, ViewEngine(dd, store)


def params(**kw: Any) -> Dict[str, str]:
    """Query parameters as the HTTP layer hands them: every value a string.

    Values of key/keys/startkey/endkey/start_range/end_range are JSON-encoded
    here; booleans become ``true``/``false``.
    """
    out = {}
    for k, v in kw.items():
        if k in ("key", "keys", "startkey", "endkey", "start_key", "end_key", "start_range", "end_range"):
            out[k] = json.dumps(v)
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


def run(engine: ViewEngine, view: str, ddoc_name: str = "d", body: Optional[bytes] = None,
        spatial: bool = False, **kw: Any) -> Dict[str, Any]:
    chunks = list(engine.query(ddoc_name, view, params(**kw), body, spatial=spatial))
    check_framing(chunks)
    return json.loads(b"".join(chunks))


def check_framing(chunks: List[bytes]) -> None:
    assert chunks[0].startswith(b"{") and chunks[0].endswith(b'"rows":[\n')
    assert chunks[-1].startswith(b"\n]") and chunks[-1].endswith(b"}")
    middle = b"".join(chunks[1:-1])
    if middle:
        for line in middle.split(b",\n"):
            assert b"\n" not in line
            json.loads(line)


def ids(result: Dict[str, Any]) -> List[str]:
    return [r["id"] for r in result["rows"]]


def keys_of(result: Dict[str, Any]) -> List[Any]:
    return [r["key"] for r in result["rows"]]


def err(fn, *args: Any, **kw: Any) -> ViewError:
    with pytest.raises(ViewError) as info:
        fn(*args, **kw)
    return info.value


BY_KEY = {"map": "function (doc, meta) { emit(doc.k, doc.v === undefined ? null : doc.v); }"}


# ---------------------------------------------------------------------------
# design documents


def test_design_document_crud_and_revisions():
    dd = DesignDocuments()
    body = ddoc({"v": BY_KEY})
    assert dd.put("dev_beer", body) == {"ok": True, "id": "_design/dev_beer"}
    stored, meta = dd.get("dev_beer")
    assert json.loads(stored) == json.loads(body)
    assert meta["id"] == "_design/dev_beer"
    rev1 = meta["rev"]
    assert rev1.startswith("1-") and len(rev1) == 10 and int(rev1[2:], 16) >= 0
    dd.put("_design/dev_beer", ddoc({"v": BY_KEY, "w": BY_KEY}))
    rev2 = dd.get("dev_beer")[1]["rev"]
    assert rev2.startswith("2-") and rev2 != rev1
    dd.put("beer", body)
    assert dd.names() == ["beer", "dev_beer"]
    assert dd.delete("dev_beer") == {"ok": True, "id": "_design/dev_beer"}
    assert dd.names() == ["beer"]
    e = err(dd.get, "dev_beer")
    assert (e.status, e.error) == (404, "not_found")
    assert json.loads(e.body()) == {"error": "not_found", "reason": e.reason}
    e = err(dd.delete, "dev_beer")
    assert (e.status, e.error) == (404, "not_found")
    e = err(dd.get, "never")
    assert (e.status, e.error, e.reason) == (404, "not_found", "missing")
    dd.put("dev_beer", body)
    assert dd.get("dev_beer")[1]["rev"].startswith("3-")


def test_design_document_listing():
    dd = DesignDocuments()
    dd.put("beer", ddoc({"v": BY_KEY}))
    listing = dd.listing("default")
    (row,) = listing["rows"]
    assert row["doc"]["meta"] == {"id": "_design/beer", "rev": dd.get("beer")[1]["rev"]}
    assert row["doc"]["json"] == {"views": {"v": BY_KEY}}
    assert row["controllers"]["compact"] == \
        "/pools/default/buckets/default/ddocs/_design%2Fbeer/controller/compactView"
    assert "setUpdateMinChanges" in row["controllers"]


@pytest.mark.parametrize("body, error", [
    (b"not json", "bad_request"),
    (b"\xff\xfe", "bad_request"),
    (b"[1,2]", "invalid_design_document"),
    (b'{"views": []}', "invalid_design_document"),
    (b'{"views": {"v": "function(doc){}"}}', "invalid_design_document"),
    (b'{"views": {"v": {"reduce": "_count"}}}', "invalid_design_document"),
    (b'{"views": {"v": {"map": 42}}}', "invalid_design_document"),
    (b'{"views": {"v": {"map": "function (doc, meta) { emit(doc.k, "}}}', "invalid_design_document"),
    (b'{"views": {"v": {"map": "42"}}}', "invalid_design_document"),
    (b'{"views": {"v": {"map": "function(d){}", "reduce": "_median"}}}', "invalid_design_document"),
    (b'{"views": {"v": {"map": "function(d){}", "reduce": "function(k, v { }"}}}', "invalid_design_document"),
    (b'{"views": {"v": {"map": "function(d){}", "reduce": 7}}}', "invalid_design_document"),
    (b'{"spatial": {"s": "function(doc {"}}', "invalid_design_document"),
    (b'{"spatial": []}', "invalid_design_document"),
])
def test_design_document_validation(body, error):
    dd = DesignDocuments()
    e = err(dd.put, "bad", body)
    assert (e.status, e.error) == (400, error)
    assert dd.names() == []


def test_design_document_accepts_usual_sources():
    dd = DesignDocuments()
    dd.put("ok", ddoc({
        "a": {"map": "function (doc, meta) {\n  emit(meta.id, null);\n}\n"},
        "b": {"map": "function(doc) { emit(doc.x, 1); }  // trailing comment", "reduce": "_sum"},
        "b2": {"map": "  function(doc) { emit(doc.x, 1); };\n"},
        "c": {"map": "function(doc){ emit(1, 1) }", "reduce": " _stats "},
    }, {"geo": "function(doc){ emit({type: 'Point', coordinates: [1, 2]}, null); }"}))
    assert dd.names() == ["ok"]


# ---------------------------------------------------------------------------
# map, meta, collation


def test_map_rows_meta_and_total_rows():
    dd, store, eng = setup({"meta": {"map": "function (doc, meta) { emit(meta.id, meta); }"},
                            "n": {"map": "function (doc) { if (doc.n > 1) emit(doc.n, doc.name); }"}})
    cas = store.set("a", {"n": 1, "name": "one"}, flags=0x2000006, expiry=1234)
    store.set("b", {"n": 2, "name": "two"})
    store.set("c", {"n": 3, "name": "three"})
    res = run(eng, "meta", key="a")
    assert res["total_rows"] == 3
    (row,) = res["rows"]
    assert row["id"] == "a" and row["key"] == "a"
    meta = row["value"]
    assert meta == {"id": "a", "rev": "1-%016x%08x%08x" % (cas, 1234, 0x2000006),
                    "flags": 0x2000006, "expiration": 1234, "type": "json"}
    res = run(eng, "n")
    assert res == {"total_rows": 2, "rows": [{"id": "b", "key": 2, "value": "two"},
                                             {"id": "c", "key": 3, "value": "three"}]}


def test_emit_key_types_and_collation_order():
    keys = [
        {"b": 1}, {"a": 2}, {"a": 1, "b": 1}, {}, ["b"], ["a", 2], ["a", 1], ["a"], [], [None],
        "b", "B", "a", "A", "aa", "é", "e", "f", "", "10", "9",
        3.5, -1, 0, 2, 1e10, True, False, None,
    ]
    expected = [
        None, False, True, -1, 0, 2, 3.5, 1e10,
        "", "10", "9", "a", "A", "aa", "b", "B", "e", "é", "f",
        [], [None], ["a"], ["a", 1], ["a", 2], ["b"],
        {}, {"a": 1}, {"a": 1, "b": 1}, {"a": 2}, {"b": 1},
    ]
    assert sorted(keys + [{"a": 1}], key=collate_key) == expected
    dd, store, eng = setup({"v": BY_KEY})
    for i, k in enumerate(keys + [{"a": 1}]):
        store.set("doc%02d" % i, {"k": k})
    res = run(eng, "v")
    assert keys_of(res) == expected
    assert keys_of(run(eng, "v", descending=True)) == expected[::-1]
    assert collate_key(1) == collate_key(1.0)
    assert collate_key("a") != collate_key("A")


def test_equal_keys_sorted_by_doc_id_and_emission_order():
    dd, store, eng = setup({"v": {"map": "function(doc, meta){ emit(doc.k, 1); emit(doc.k, 2); }"}})
    for d in ("c", "a", "b"):
        store.set(d, {"k": "same"})
    res = run(eng, "v")
    assert [(r["id"], r["value"]) for r in res["rows"]] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2)]
    assert [(r["id"], r["value"]) for r in run(eng, "v", descending=True)["rows"]] == [
        ("c", 2), ("c", 1), ("b", 2), ("b", 1), ("a", 2), ("a", 1)]


def test_emit_without_value_and_unicode_output():
    dd, store, eng = setup({"v": {"map": "function(doc){ emit(doc.s); }"}})
    store.set("x", {"s": "h\u00e9llo \u2603 \U0001f600"})
    chunks = list(eng.query("d", "v", {}))
    body = b"".join(chunks)
    assert "h\u00e9llo \u2603 \U0001f600".encode() in body
    assert json.loads(body)["rows"] == [{"id": "x", "key": "h\u00e9llo \u2603 \U0001f600", "value": None}]


def test_builtin_helpers_in_map():
    dd, store, eng = setup({"v": {"map": "function(doc, meta){ emit(dateToArray(doc.when), "
                                          "isArray(doc.l) ? sum(doc.l) : null); }"}})
    store.set("a", {"when": "2013-03-04T05:06:07Z", "l": [1, 2, 3]})
    assert run(eng, "v")["rows"] == [{"id": "a", "key": [2013, 3, 4, 5, 6, 7], "value": 6}]


# ---------------------------------------------------------------------------
# non-JSON documents, failing map functions


def test_non_json_documents_are_base64():
    dd, store, eng = setup({"v": {"map": "function(doc, meta){ emit(meta.id, [meta.type, doc, "
                                          "meta.type == 'base64' ? decodeBase64(doc) : null]); }"}})
    store.set("bin", b"\x00\x01\xfe")
    store.set("text", b"caf\xc3\xa9 latte")
    store.set("broken", b'{"a":', is_json=True)
    store.set("nan", b'{"a": NaN}', is_json=True)
    store.set("json", {"a": 1})
    rows = {r["id"]: r["value"] for r in run(eng, "v")["rows"]}
    assert rows["bin"][:2] == ["base64", base64.b64encode(b"\x00\x01\xfe").decode()]
    assert rows["text"] == ["base64", base64.b64encode(b"caf\xc3\xa9 latte").decode(), "caf\u00e9 latte"]
    assert rows["broken"][:2] == ["base64", base64.b64encode(b'{"a":').decode()]
    assert rows["nan"][0] == "base64"
    assert rows["json"] == ["json", {"a": 1}, None]


def test_throwing_map_skips_only_that_document_and_view():
    dd, store, eng = setup({
        "fragile": {"map": "function(doc){ if (doc.bad) throw new Error('nope'); emit(doc.n, null); }"},
        "sturdy": {"map": "function(doc){ emit(doc.n, null); }"},
        "typeerr": {"map": "function(doc){ emit(doc.x.y.z, null); }"},
    })
    for i in range(5):
        store.set("d%d" % i, {"n": i, "bad": i == 2, "x": {"y": {"z": i}} if i != 3 else None})
    assert ids(run(eng, "fragile")) == ["d0", "d1", "d3", "d4"]
    assert ids(run(eng, "sturdy")) == ["d0", "d1", "d2", "d3", "d4"]
    assert ids(run(eng, "typeerr")) == ["d0", "d1", "d2", "d4"]


def test_runaway_map_function_is_interrupted():
    dd, store, eng = setup({"v": {"map": "function(doc){ while (doc.loop) {} emit(doc.n, null); }"}})
    eng.map_timeout = 0.2
    for i in range(4):
        store.set("d%d" % i, {"n": i, "loop": i == 1})
    t0 = time.monotonic()
    assert ids(run(eng, "v")) == ["d0", "d2", "d3"]
    assert time.monotonic() - t0 < 60  # a guard only: an uninterrupted loop never ends


# ---------------------------------------------------------------------------
# query parameters


@pytest.fixture
def letters():
    """Docs d0..d9 with keys k0..k4 (two docs per key) and value i."""
    dd, store, eng = setup({"v": BY_KEY})
    for i in range(10):
        store.set("d%d" % i, {"k": "k%d" % (i // 2), "v": i})
    return eng


def test_key_and_keys(letters):
    assert ids(run(letters, "v", key="k2")) == ["d4", "d5"]
    assert run(letters, "v", key="k2")["total_rows"] == 10
    assert ids(run(letters, "v", key="zz")) == []
    res = run(letters, "v", keys=["k3", "missing", "k0", "k3"])
    assert ids(res) == ["d6", "d7", "d0", "d1", "d6", "d7"]
    assert res["total_rows"] == 10
    assert ids(run(letters, "v", keys=["k3", "k0"], descending=True)) == ["d7", "d6", "d1", "d0"]
    assert ids(run(letters, "v", keys=["k3", "k0"], skip=1, limit=2)) == ["d7", "d0"]


def test_keys_in_post_body(letters):
    res = run(letters, "v", body=b'{"keys":["k4","k1"]}')
    assert ids(res) == ["d8", "d9", "d2", "d3"]
    assert ids(run(letters, "v", body=b"")) == ["d%d" % i for i in range(10)]


def test_start_and_end_keys(letters):
    assert ids(run(letters, "v", startkey="k3")) == ["d6", "d7", "d8", "d9"]
    assert ids(run(letters, "v", endkey="k1")) == ["d0", "d1", "d2", "d3"]
    assert ids(run(letters, "v", startkey="k1", endkey="k2")) == ["d2", "d3", "d4", "d5"]
    assert ids(run(letters, "v", startkey="k1", endkey="k2", inclusive_end=False)) == ["d2", "d3"]
    assert ids(run(letters, "v", start_key="k4")) == ["d8", "d9"]
    # keys between existing ones
    assert ids(run(letters, "v", startkey="k1a", endkey="k3a")) == ["d4", "d5", "d6", "d7"]


def test_doc_id_bounds(letters):
    assert ids(run(letters, "v", startkey="k1", startkey_docid="d3", endkey="k2")) == ["d3", "d4", "d5"]
    assert ids(run(letters, "v", startkey="k1", endkey="k2", endkey_docid="d4")) == ["d2", "d3", "d4"]
    assert ids(run(letters, "v", startkey="k1", endkey="k2", endkey_docid="d4",
                   inclusive_end=False)) == ["d2", "d3"]
    assert ids(run(letters, "v", startkey="k1", startkey_docid="d3", endkey="k1",
                   endkey_docid="d3")) == ["d3"]


def test_descending_swaps_start_and_end(letters):
    assert ids(run(letters, "v", descending=True)) == ["d%d" % i for i in range(9, -1, -1)]
    assert ids(run(letters, "v", descending=True, startkey="k2")) == ["d5", "d4", "d3", "d2", "d1", "d0"]
    assert ids(run(letters, "v", descending=True, endkey="k3")) == ["d9", "d8", "d7", "d6"]
    assert ids(run(letters, "v", descending=True, startkey="k3", endkey="k2")) == ["d7", "d6", "d5", "d4"]
    assert ids(run(letters, "v", descending=True, startkey="k3", endkey="k2",
                   inclusive_end=False)) == ["d7", "d6"]
    assert ids(run(letters, "v", descending=True, startkey="k3", startkey_docid="d6",
                   endkey="k2", endkey_docid="d5")) == ["d6", "d5"]
    assert ids(run(letters, "v", descending=True, startkey="k3", startkey_docid="d6",
                   endkey="k2", endkey_docid="d5", inclusive_end=False)) == ["d6"]
    assert ids(run(letters, "v", descending=True, key="k1")) == ["d3", "d2"]


def test_limit_and_skip(letters):
    assert ids(run(letters, "v", limit=3)) == ["d0", "d1", "d2"]
    assert ids(run(letters, "v", skip=8)) == ["d8", "d9"]
    assert ids(run(letters, "v", skip=2, limit=3)) == ["d2", "d3", "d4"]
    assert ids(run(letters, "v", skip=20)) == []
    assert ids(run(letters, "v", limit=0)) == []
    assert run(letters, "v", limit=0)["total_rows"] == 10
    assert ids(run(letters, "v", descending=True, skip=1, limit=2)) == ["d8", "d7"]
    assert ids(run(letters, "v", startkey="k1", skip=1, limit=2)) == ["d3", "d4"]


def test_accepted_miscellaneous_parameters(letters):
    res = run(letters, "v", on_error="stop", connection_timeout=60000, full_set=True, debug=False,
              stale="update_after", reduce=False)
    assert len(res["rows"]) == 10
    res = run(letters, "v", debug=True, limit=1)
    assert res["debug_info"]["local"]["indexed_documents"] == 10
    assert "errors" not in res


# ---------------------------------------------------------------------------
# reduce


@pytest.fixture
def sales():
    dd, store, eng = setup({
        "count": {"map": "function(doc){ emit([doc.region, doc.year, doc.month], doc.amount); }",
                  "reduce": "_count"},
        "sum": {"map": "function(doc){ emit([doc.region, doc.year, doc.month], doc.amount); }",
                "reduce": "_sum"},
        "stats": {"map": "function(doc){ emit([doc.region, doc.year, doc.month], doc.amount); }",
                  "reduce": "_stats"},
        "vec": {"map": "function(doc){ emit(doc.region, [doc.amount, 1]); }", "reduce": "_sum"},
        "flat": {"map": "function(doc){ emit(doc.region, doc.amount); }", "reduce": "_sum"},
    })
    data = [("eu", 2019, 1, 10), ("eu", 2019, 2, 20), ("eu", 2020, 1, 5),
            ("us", 2019, 1, 1), ("us", 2020, 3, 2), ("us", 2020, 3, 4), ("asia", 2021, 7, 1.5)]
    for i, (region, year, month, amount) in enumerate(data):
        store.set("s%d" % i, {"region": region, "year": year, "month": month, "amount": amount})
    return eng


def test_builtin_reduces(sales):
    assert run(sales, "count") == {"rows": [{"key": None, "value": 7}]}
    assert run(sales, "sum")["rows"] == [{"key": None, "value": 43.5}]
    assert run(sales, "stats")["rows"] == [{"key": None, "value": {
        "sum": 43.5, "count": 7, "min": 1, "max": 20, "sumsqr": 100 + 400 + 25 + 1 + 4 + 16 + 2.25}}]
    assert run(sales, "vec")["rows"] == [{"key": None, "value": [43.5, 7]}]
    res = run(sales, "count", reduce=False)
    assert res["total_rows"] == 7 and len(res["rows"]) == 7


def test_reduce_over_a_range(sales):
    assert run(sales, "sum", startkey=["eu"], endkey=["eu", {}])["rows"] == [{"key": None, "value": 35}]
    assert run(sales, "count", startkey=["x"])["rows"] == []


def test_group_and_group_level(sales):
    assert run(sales, "sum", group=True)["rows"] == [
        {"key": ["asia", 2021, 7], "value": 1.5},
        {"key": ["eu", 2019, 1], "value": 10},
        {"key": ["eu", 2019, 2], "value": 20},
        {"key": ["eu", 2020, 1], "value": 5},
        {"key": ["us", 2019, 1], "value": 1},
        {"key": ["us", 2020, 3], "value": 6},
    ]
    assert run(sales, "sum", group_level=1)["rows"] == [
        {"key": ["asia"], "value": 1.5}, {"key": ["eu"], "value": 35}, {"key": ["us"], "value": 7}]
    assert run(sales, "count", group_level=2)["rows"] == [
        {"key": ["asia", 2021], "value": 1}, {"key": ["eu", 2019], "value": 2},
        {"key": ["eu", 2020], "value": 1}, {"key": ["us", 2019], "value": 1},
        {"key": ["us", 2020], "value": 2}]
    assert run(sales, "count", group_level=0)["rows"] == [{"key": None, "value": 7}]
    assert run(sales, "sum", group_level=1, descending=True)["rows"] == [
        {"key": ["us"], "value": 7}, {"key": ["eu"], "value": 35}, {"key": ["asia"], "value": 1.5}]
    assert run(sales, "sum", group_level=1, skip=1, limit=1)["rows"] == [{"key": ["eu"], "value": 35}]
    # group_level on non-array keys groups by the whole key
    assert run(sales, "flat", group_level=2)["rows"] == [
        {"key": "asia", "value": 1.5}, {"key": "eu", "value": 35}, {"key": "us", "value": 7}]
    assert run(sales, "flat", group=True, key="eu")["rows"] == [{"key": "eu", "value": 35}]


def test_reduce_with_keys(sales):
    assert run(sales, "flat", keys=["us", "eu"])["rows"] == [{"key": None, "value": 42}]
    assert run(sales, "flat", keys=["us", "nope", "eu"], group=True)["rows"] == [
        {"key": "us", "value": 7}, {"key": "eu", "value": 35}]


def test_sum_of_non_numbers_reports_an_error():
    dd, store, eng = setup({"v": {"map": "function(doc){ emit(doc.k, doc.v); }", "reduce": "_sum"}})
    store.set("a", {"k": 1, "v": 1})
    store.set("b", {"k": 2, "v": "two"})
    res = run(eng, "v")
    assert res["rows"] == []
    assert res["errors"][0]["from"] == "local" and "_sum" in res["errors"][0]["reason"]
    assert run(eng, "v", key=1)["rows"] == [{"key": None, "value": 1}]


def test_sum_overflowing_to_infinity_reports_an_error():
    dd, store, eng = setup({"v": {"map": "function(doc){ emit(null, 1e308); }", "reduce": "_sum"}})
    store.set("a", {})
    store.set("b", {})
    res = run(eng, "v")
    assert res["rows"] == [] and len(res["errors"]) == 1


def test_javascript_reduce_with_rereduce():
    src = ("function(keys, values, rereduce) {"
           "  if (rereduce) {"
           "    var n = 0; for (var i = 0; i < values.length; i++) n += values[i].n;"
           "    return {n: n, rereduced: true, first: values[0].first};"
           "  }"
           "  return {n: values.length, rereduced: false, first: keys[0]};"
           "}")
    dd, store, eng = setup({"v": {"map": "function(doc, meta){ emit([doc.g, doc.i], doc.i); }", "reduce": src}})
    for i in range(10):
        store.set("doc%02d" % i, {"g": "a" if i < 8 else "b", "i": i})
    eng.reduce_chunk_size = 3
    (row,) = run(eng, "v")["rows"]
    assert row == {"key": None, "value": {"n": 10, "rereduced": True, "first": [["a", 0], "doc00"]}}
    assert run(eng, "v", group_level=1)["rows"] == [
        {"key": ["a"], "value": {"n": 8, "rereduced": True, "first": [["a", 0], "doc00"]}},
        {"key": ["b"], "value": {"n": 2, "rereduced": False, "first": [["b", 8], "doc08"]}},
    ]
    eng.reduce_chunk_size = 100
    (row,) = run(eng, "v")["rows"]
    assert row["value"]["rereduced"] is False and row["value"]["n"] == 10
    # sum() helper, as in the server's JavaScript environment
    dd.put("d", ddoc({"v": {"map": "function(doc){ emit(doc.i, doc.i); }",
                            "reduce": "function(k, v, rr) { return sum(v); }"}}))
    eng.reduce_chunk_size = 4
    assert run(eng, "v")["rows"] == [{"key": None, "value": 45}]


def test_throwing_javascript_reduce_reports_an_error():
    dd, store, eng = setup({"v": {"map": "function(doc){ emit(doc.i, doc.i); }",
                                  "reduce": "function(k, v, rr) { throw new Error('reduce says no'); }"}})
    store.set("a", {"i": 1})
    res = run(eng, "v", group=True)
    assert res["rows"] == []
    assert "reduce says no" in res["errors"][0]["reason"]
    assert run(eng, "v", reduce=False)["rows"] == [{"id": "a", "key": 1, "value": 1}]


# ---------------------------------------------------------------------------
# stale


def test_stale_semantics_across_queries():
    dd, store, eng = setup({"v": BY_KEY})
    store.set("a", {"k": 1})
    # stale=ok on a never-built index builds it
    assert ids(run(eng, "v", stale="ok")) == ["a"]
    store.set("b", {"k": 2})
    assert ids(run(eng, "v", stale="ok")) == ["a"]
    assert ids(run(eng, "v", stale="ok")) == ["a"]
    # update_after: this query still sees the old index, the next one the new
    assert ids(run(eng, "v")) == ["a"]
    assert ids(run(eng, "v", stale="ok")) == ["a", "b"]
    # stale=false updates first: changes, deletions, additions
    store.set("a", {"k": 3})
    store.delete("b")
    store.set("c", {"k": 0})
    assert ids(run(eng, "v", stale="ok")) == ["a", "b"]
    res = run(eng, "v", stale="false")
    assert [(r["id"], r["key"]) for r in res["rows"]] == [("c", 0), ("a", 3)]
    assert res["total_rows"] == 2
    store.set("d", {"k": 9})
    assert ids(run(eng, "v", stale="update_after")) == ["c", "a"]
    assert ids(run(eng, "v", stale="update_after")) == ["c", "a", "d"]


def test_unchanged_documents_are_not_mapped_again():
    dd, store, eng = setup({"v": {"map": "function(doc, meta){ emit(doc.k, null); }"}})
    for i in range(50):
        store.set("d%02d" % i, {"k": i})
    run(eng, "v", stale="false")
    mapped = []
    original = eng._map_batch

    def spy(index, docs, *rest):
        mapped.extend(d[0] for d in docs)
        return original(index, docs, *rest)

    eng._map_batch = spy
    store.set("d07", {"k": 700})
    res = run(eng, "v", stale="false")
    assert mapped == ["d07"]
    assert res["rows"][-1] == {"id": "d07", "key": 700, "value": None}


def test_replacing_a_design_document_rebuilds_its_index():
    dd, store, eng = setup({"v": BY_KEY})
    store.set("a", {"k": 1, "v": "x"})
    assert keys_of(run(eng, "v")) == [1]
    dd.put("d", ddoc({"v": {"map": "function(doc){ emit('new', doc.v); }"}}))
    assert run(eng, "v", stale="ok")["rows"] == [{"id": "a", "key": "new", "value": "x"}]
    dd.delete("d")
    e = err(eng.query, "d", "v", {})
    assert (e.status, e.error) == (404, "not_found")


# ---------------------------------------------------------------------------
# development views


def test_dev_subset_and_full_set():
    dd = DesignDocuments()
    dd.put("dev_x", ddoc({"v": {"map": "function(doc, meta){ emit(meta.id, null); }"}}))
    dd.put("x", ddoc({"v": {"map": "function(doc, meta){ emit(meta.id, null); }"}}))
    store = Store()
    eng = ViewEngine(dd, store)
    all_ids = ["doc%04d" % i for i in range(800)]
    for d in all_ids:
        store.set(d, {"n": 1})
    subset = [d for d in all_ids if in_dev_subset(d)]
    assert 40 < len(subset) < 160  # about one eighth
    res = run(eng, "v", ddoc_name="dev_x")
    assert ids(res) == subset and res["total_rows"] == len(subset)
    assert ids(run(eng, "v", ddoc_name="dev_x", full_set=True)) == all_ids
    assert ids(run(eng, "v", ddoc_name="x")) == all_ids
    assert ids(run(eng, "v", ddoc_name="x", full_set=True)) == all_ids
    assert DEV_SUBSET_VBUCKETS * 8 == NUM_VBUCKETS


# ---------------------------------------------------------------------------
# validation errors


@pytest.mark.parametrize("bad, word", [
    ({"key": "abc"}, "key"),
    ({"startkey": "{"}, "startkey"),
    ({"endkey": "[1,"}, "endkey"),
    ({"keys": "[1"}, "keys"),
    ({"keys": "{\"a\":1}"}, "keys"),
    ({"keys": "\"k1\""}, "keys"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "1.5"}, "limit"),
    ({"skip": "x"}, "skip"),
    ({"skip": "-3"}, "skip"),
    ({"group_level": "a"}, "group_level"),
    ({"stale": "maybe"}, "stale"),
    ({"stale": "true"}, "stale"),
    ({"on_error": "explode"}, "on_error"),
    ({"descending": "yes"}, "descending"),
    ({"inclusive_end": "1"}, "inclusive_end"),
    ({"reduce": "no"}, "reduce"),
    ({"group": "maybe"}, "group"),
    ({"full_set": "sure"}, "full_set"),
    ({"debug": "on"}, "debug"),
    ({"connection_timeout": "soon"}, "connection_timeout"),
    ({"include_docs": "true"}, "include_docs"),
    ({"bogus": "1"}, "bogus"),
    ({"bbox": "0,0,1,1"}, "bbox"),
    ({"group": "true"}, "group"),
    ({"group_level": "1"}, "group_level"),
    ({"reduce": "true"}, "reduce"),
    ({"startkey": "\"k3\"", "endkey": "\"k1\""}, "descending"),
    ({"startkey": "\"k1\"", "endkey": "\"k3\"", "descending": "true"}, "descending"),
])
def test_query_parse_errors(letters, bad, word):
    e = err(letters.query, "d", "v", bad)
    assert (e.status, e.error) == (400, "query_parse_error")
    assert word in e.reason
    assert json.loads(e.body())["error"] == "query_parse_error"


def test_grouping_a_reduce_view_queried_without_reduce(sales):
    for bad in ({"reduce": "false", "group": "true"}, {"reduce": "false", "group_level": "2"}):
        e = err(sales.query, "d", "sum", bad)
        assert (e.status, e.error) == (400, "query_parse_error")


def test_not_found_errors(letters):
    e = err(letters.query, "nope", "v", {})
    assert (e.status, e.error, e.reason) == (404, "not_found", "missing")
    e = err(letters.query, "d", "nope", {})
    assert (e.status, e.error, e.reason) == (404, "not_found", "missing_named_view")
    e = err(letters.query, "d", "v", {}, spatial=True)
    assert (e.status, e.error) == (404, "not_found")


def test_post_body_errors(letters):
    e = err(letters.query, "d", "v", {}, b"{nope")
    assert (e.status, e.error) == (400, "bad_request")
    e = err(letters.query, "d", "v", {}, b'{"keys": "k1"}')
    assert (e.status, e.error) == (400, "query_parse_error")


def test_errors_are_raised_before_any_chunk(letters):
    # query() itself raises: nothing is streamed for a failing request
    with pytest.raises(ViewError):
        letters.query("d", "v", {"limit": "x"})


# ---------------------------------------------------------------------------
# response framing and streaming


def test_chunk_framing(letters):
    chunks = list(letters.query("d", "v", {"limit": "2"}))
    assert chunks[0] == b'{"total_rows":10,"rows":[\n'
    assert chunks[-1] == b"\n]\n}"
    assert b"".join(chunks[1:-1]) == (b'{"id":"d0","key":"k0","value":0},\n'
                                       b'{"id":"d1","key":"k0","value":1}')
    empty = list(letters.query("d", "v", {"key": '"none"'}))
    assert empty == [b'{"total_rows":10,"rows":[\n', b"\n]\n}"]


def test_reduce_framing(sales):
    chunks = list(sales.query("d", "count", {}))
    assert chunks == [b'{"rows":[\n', b'{"key":null,"value":7}', b"\n]\n}"]


@pytest.mark.timeout(600)  # ~10 s idle; the 120 s default is tight for a loaded machine
def test_streaming_100k_documents():
    dd, store, eng = setup({"v": {"map": "function (doc, meta) { emit([doc.t, doc.n], doc.n); }",
                                  "reduce": "_count"}})
    n = 100_000
    for i in range(n):
        d = "doc%06d" % i
        store.docs[d] = (d, b'{"t":"t%d","n":%d,"pad":"xxxxxxxxxxxxxxxxxxxxxxxx"}' % (i % 7, i), 0, i + 1, 0, True)
    # (How fast the index builds is a benchmark's business, not a test's:
    # on a loaded machine any bound on it is a coin toss.)
    it = eng.query("d", "v", {"reduce": "false", "limit": "1"})
    first = list(it)
    assert first[0].startswith(b'{"total_rows":%d,' % n) and len(first) == 3, first[:2]

    it = eng.query("d", "v", {"reduce": "false", "stale": "ok"})
    assert inspect.isgenerator(it)
    assert next(it) == b'{"total_rows":%d,"rows":[\n' % n
    try:
        import tracemalloc  # CPython only: PyPy has no _tracemalloc
    except ImportError:
        tracemalloc = None
    if tracemalloc is not None:
        tracemalloc.start()
    try:
        total = 0
        biggest = 0
        count = 0
        first = last = None
        for chunk in it:
            total += len(chunk)
            biggest = max(biggest, len(chunk))
            if chunk.startswith(b"{") or chunk.startswith(b",\n{"):
                lines = chunk.lstrip(b",\n").split(b",\n")
                count += len(lines)
                first = first or json.loads(lines[0])
                last = json.loads(lines[-1])
        peak = tracemalloc.get_traced_memory()[1] if tracemalloc is not None else None
    finally:
        if tracemalloc is not None:
            tracemalloc.stop()
    assert count == n
    assert biggest <= 256 * 1024
    assert total > 4 * 1024 * 1024
    assert first == {"id": "doc000000", "key": ["t0", 0], "value": 0}
    assert last == {"id": "doc099994", "key": ["t6", 99994], "value": 99994}  # 99994 % 7 == 6
    if peak is None:
        pytest.skip("rows streamed in bounded chunks; the peak-memory bound is not "
                    "measured here: this interpreter has no tracemalloc (PyPy)")
    assert peak < 2 * 1024 * 1024, peak  # bounded by a batch, not by the response
    assert json.loads(b"".join(eng.query("d", "v", {"stale": "ok"}))) == {"rows": [{"key": None, "value": n}]}


def test_concurrent_queries():
    dd, store, eng = setup({"v": BY_KEY, "r": {"map": BY_KEY["map"], "reduce":
                                                "function(k, v, rr){ return rr ? sum(v) : v.length; }"}})
    for i in range(300):
        store.set("d%03d" % i, {"k": i % 17, "v": i})
    results: List[Any] = []
    failures: List[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                results.append(run(eng, "v", stale="false")["total_rows"])
                results.append(run(eng, "r", group=True)["rows"][0]["value"])
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert sorted(set(results)) == [18, 300]


def test_dukpy_backend():
    dd = DesignDocuments()
    dd.put("d", ddoc({"v": {"map": "function(doc, meta){ emit(doc.k, meta.type); }",
                            "reduce": "function(k, v, rr){ return rr ? sum(v) : v.length; }"}}))
    store = Store()
    for i in range(20):
        store.set("d%02d" % i, {"k": i % 3})
    store.set("bin", b"\x01")
    eng = ViewEngine(dd, store, js_engine="dukpy")
    assert eng.js_engine == "dukpy"
    eng.reduce_chunk_size = 4
    assert run(eng, "v")["rows"] == [{"key": None, "value": 21}]
    assert run(eng, "v", reduce=False, limit=2)["rows"] == [
        {"id": "bin", "key": None, "value": "base64"}, {"id": "d00", "key": 0, "value": "json"}]
    assert ViewEngine(dd, store).js_engine == "quickjs"


# ---------------------------------------------------------------------------
# spatial


@pytest.fixture
def geo():
    dd, store, eng = setup(spatial={
        "points": "function(doc, meta){ if (doc.loc) emit({type: 'Point', coordinates: doc.loc}, doc.name); }",
        "shapes": "function(doc, meta){ if (doc.poly) emit([{type: 'Polygon', coordinates: [doc.poly]}, doc.year],"
                  " null); }",
        "plain": "function(doc, meta){ if (doc.loc) emit([doc.loc[0], doc.loc[1], [doc.year, doc.year + 1]], 1); }",
        "bad": "function(doc, meta){ emit(doc.name, 1); }",
    })
    store.set("paris", {"name": "Paris", "loc": [2.35, 48.85], "year": 2000})
    store.set("berlin", {"name": "Berlin", "loc": [13.4, 52.52], "year": 2010})
    store.set("nyc", {"name": "NYC", "loc": [-74.0, 40.7], "year": 2020})
    store.set("square", {"name": "Square", "poly": [[0, 0], [4, 0], [4, 3], [0, 3], [0, 0]], "year": 1999})
    store.set("far", {"name": "Far", "poly": [[100, 10], [101, 10], [101, 11], [100, 10]], "year": 2001})
    return eng


def test_spatial_bbox(geo):
    res = run(geo, "points", spatial=True, bbox="-10,40,20,60")
    assert res["total_rows"] == 3
    assert res["rows"] == [
        {"id": "berlin", "key": [[13.4, 13.4], [52.52, 52.52]], "value": "Berlin",
         "geometry": {"type": "Point", "coordinates": [13.4, 52.52]}},
        {"id": "paris", "key": [[2.35, 2.35], [48.85, 48.85]], "value": "Paris",
         "geometry": {"type": "Point", "coordinates": [2.35, 48.85]}},
    ]
    assert ids(run(geo, "points", spatial=True)) == ["berlin", "nyc", "paris"]
    assert ids(run(geo, "points", spatial=True, bbox="-180,-90,180,90", limit=1, skip=1)) == ["nyc"]
    assert ids(run(geo, "points", spatial=True, bbox="50,50,60,60")) == []


def test_spatial_polygons_and_ranges(geo):
    res = run(geo, "shapes", spatial=True, bbox="3,2,10,10")
    assert res["rows"] == [{"id": "square", "key": [[0, 4], [0, 3], [1999, 1999]], "value": None,
                            "geometry": {"type": "Polygon",
                                         "coordinates": [[[0, 0], [4, 0], [4, 3], [0, 3], [0, 0]]]}}]
    assert ids(run(geo, "shapes", spatial=True, start_range=[None, None, 2000],
                   end_range=[None, None, 2005])) == ["far"]
    assert ids(run(geo, "plain", spatial=True, start_range=[0, 40, 2005], end_range=[20, 60, 2010])) == ["berlin"]
    res = run(geo, "plain", spatial=True, start_range=[-80, 0, 2021], end_range=[0, 90, 2021])
    assert res["rows"] == [{"id": "nyc", "key": [[-74.0, -74.0], [40.7, 40.7], [2020, 2021]], "value": 1}]
    assert run(geo, "bad", spatial=True) == {"total_rows": 0, "rows": []}


def test_spatial_parameter_errors(geo):
    for bad in ({"bbox": "1,2,3"}, {"bbox": "a,b,c,d"}, {"start_range": "[1,"},
                {"start_range": '["a"]'}, {"bbox": "0,0,1,1", "start_range": "[0,0]"},
                {"start_range": "[0,0]", "end_range": "[1,1,1]"},
                {"descending": "true"}, {"key": "1"}, {"limit": "x"}, {"stale": "never"}):
        e = err(geo.query, "d", "points", bad, spatial=True)
        assert (e.status, e.error) == (400, "query_parse_error"), bad
    e = err(geo.query, "d", "nope", {}, spatial=True)
    assert (e.status, e.error, e.reason) == (404, "not_found", "missing_named_view")


def test_spatial_stale(geo):
    assert ids(run(geo, "points", spatial=True, stale="ok")) == ["berlin", "nyc", "paris"]
    geo._documents.set("rome", {"name": "Rome", "loc": [12.5, 41.9]})
    assert ids(run(geo, "points", spatial=True, stale="ok")) == ["berlin", "nyc", "paris"]
    assert ids(run(geo, "points", spatial=True, stale="false")) == ["berlin", "nyc", "paris", "rome"]

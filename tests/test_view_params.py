"""View query parameters and how they travel (spec/http-services.md §2.1).

Pure client-side checks of :mod:`couchbase_core.views.params`: which
values each parameter takes, what text ends up in the URL, the 2.x
conveniences, and when ``keys`` move into a POST body. The end-to-end
effect of the same rules on a view server is in ``test_views_n1ql.py``.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import pytest

from couchbase_core.exceptions import ArgumentError
from couchbase_core.views.iterator import View, view_path
from couchbase_core.views.params import (
    MAX_URI_LENGTH,
    ONERROR_CONTINUE,
    ONERROR_STOP,
    STALE_OK,
    STALE_UPDATE_AFTER,
    STALE_UPDATE_BEFORE,
    UNSPEC,
    Query,
    SpatialQuery,
    ViewQuery,
    make_dvpath,
    make_options_string,
)


def decoded(query: Query) -> dict:
    """The query string as the server reads it (URL-decoded)."""
    return dict(parse_qsl(query.encoded, keep_blank_values=True))


# --------------------------------------------------------------- constants


def test_constants_have_the_wire_values():
    assert (STALE_OK, STALE_UPDATE_BEFORE, STALE_UPDATE_AFTER) == ("ok", "false", "update_after")
    assert (ONERROR_CONTINUE, ONERROR_STOP) == ("continue", "stop")
    assert issubclass(Query, ViewQuery)  # as in 2.x
    assert not UNSPEC and repr(UNSPEC) == "<Placeholder>" and str(UNSPEC) == ""


# ------------------------------------------------------------- JSON keys


@pytest.mark.parametrize("value, text", [
    ("abc", '"abc"'),
    (123, "123"),
    (["a", 1], '["a", 1]'),  # json.dumps' default separators, as 2.x
    ({"x": None}, '{"x": null}'),
    (None, "null"),  # None is the key null, not "unset"
    (True, "true"),
    ("caf\u00e9 & co=1", json.dumps("caf\u00e9 & co=1")),
])
@pytest.mark.parametrize("name", ["key", "startkey", "endkey"])
def test_keys_are_json_text(name, value, text):
    q = Query(**{name: value})
    assert decoded(q) == {name: text}
    # reserved URL characters never leak unescaped into the query string
    assert "&" not in q.encoded.split("=", 1)[1] and " " not in q.encoded


def test_keys_is_a_json_array_and_must_be_a_list():
    assert decoded(Query(keys=["a", 2, ["b"]])) == {"keys": '["a", 2, ["b"]]'}
    assert decoded(Query(keys=("x",))) == {"keys": '["x"]'}
    with pytest.raises(ArgumentError):
        Query(keys="not-a-list")
    with pytest.raises(ArgumentError):
        Query(key=object())


def test_document_ids_are_sent_raw_not_json_quoted():
    q = Query(startkey_docid="doc 1&x", endkey_docid="doc\u00e9")
    assert decoded(q) == {"startkey_docid": "doc 1&x", "endkey_docid": "doc\u00e9"}
    assert "%22" not in q.encoded  # no JSON quotes
    assert decoded(Query(startkey_docid=5)) == {"startkey_docid": "5"}  # a number's str(), as 2.x
    for bad in (True, None, ["d"]):
        with pytest.raises(ArgumentError):
            Query(startkey_docid=bad)


# ------------------------------------------------------- booleans and ints


@pytest.mark.parametrize("name", ["inclusive_end", "descending", "reduce", "group", "full_set", "debug"])
@pytest.mark.parametrize("value, text", [
    (True, "true"), (False, "false"), (1, "true"), (0, "false"), (1.5, "true"), ("true", "true"),
    ("false", "false"),
])
def test_booleans_accept_bool_number_and_string(name, value, text):
    assert decoded(Query(**{name: value})) == {name: text}


@pytest.mark.parametrize("bad", ["yes", "1", "FALSE", [True], None])
def test_booleans_refuse_other_values(bad):
    with pytest.raises(ArgumentError):
        Query(descending=bad)


@pytest.mark.parametrize("name", ["limit", "skip", "group_level", "connection_timeout"])
def test_integers_are_decimal_and_bools_are_refused(name):
    assert decoded(Query(**{name: 25})) == {name: "25"}
    assert decoded(Query(**{name: 0})) == {name: "0"}
    # str(int(value)), as 2.x: numeric strings and floats are accepted
    assert decoded(Query(**{name: "12"})) == {name: "12"}
    assert decoded(Query(**{name: 2.5})) == {name: "2"}
    assert decoded(Query(**{name: -1})) == {name: "-1"}
    for bad in (True, False, "ten", "2.5", [3], None, float("nan"), float("inf")):
        with pytest.raises(ArgumentError):
            Query(**{name: bad})


# ------------------------------------------------------- stale / on_error


@pytest.mark.parametrize("value, text", [
    (True, "ok"), (False, "false"), (STALE_OK, "ok"), (STALE_UPDATE_BEFORE, "false"),
    (STALE_UPDATE_AFTER, "update_after"), ("true", "ok"), (1, "ok"), (0, "false"),
])
def test_stale_mapping(value, text):
    assert decoded(Query(stale=value)) == {"stale": text}


@pytest.mark.parametrize("bad", ["never", "TRUE", None, [True]])
def test_stale_refuses_anything_else(bad):
    with pytest.raises(ArgumentError):
        Query(stale=bad)


def test_on_error_values():
    assert decoded(Query(on_error=ONERROR_STOP)) == {"on_error": "stop"}
    assert decoded(Query(on_error=ONERROR_CONTINUE)) == {"on_error": "continue"}
    with pytest.raises(ArgumentError):
        Query(on_error="ignore")


# ------------------------------------------------------- 2.x conveniences


def test_mapkey_and_dockey_conveniences():
    assert decoded(Query(mapkey_single="k")) == {"key": '"k"'}
    assert decoded(Query(mapkey_multi=["a", "b"])) == {"keys": '["a", "b"]'}
    assert decoded(Query(mapkey_range=["a", ["z", 9]])) == {"startkey": '"a"', "endkey": '["z", 9]'}
    assert decoded(Query(dockey_range=["d1", "d9"])) == {"startkey_docid": "d1", "endkey_docid": "d9"}


def test_a_one_element_range_sets_only_the_start():
    assert decoded(Query(mapkey_range=[5])) == {"startkey": "5"}
    assert decoded(Query(dockey_range=["only"])) == {"startkey_docid": "only"}
    assert decoded(Query(mapkey_range=[])) == {}  # an empty range clears both ends
    for bad in ([1, 2, 3], "ab"):
        with pytest.raises(ArgumentError):
            Query(mapkey_range=bad)


# ------------------------------------------------------- unknown parameters


def test_unknown_parameters_are_refused_by_default():
    with pytest.raises(ArgumentError) as info:
        Query(limt=5)
    assert "limt" in str(info.value)
    q = Query()
    with pytest.raises(ArgumentError):
        q.update(bogus=1)
    assert q.encoded == ""


def test_unrecognized_ok_sends_unknown_parameters_as_given():
    # as 2.x: str (or a number's str()) verbatim, after the known parameters
    q = Query(unrecognized_ok=True, new_flag="yes", new_num=4, limit=3)
    assert q.encoded == "limit=3&new_flag=yes&new_num=4"
    for bad in (True, ["x"], None):
        with pytest.raises(ArgumentError):
            Query(unrecognized_ok=True, new_key=bad)


def test_passthrough_alone_still_refuses_unknown_parameters():
    with pytest.raises(ArgumentError):
        Query(passthrough=True, future_option="raw")
    q = Query(passthrough=True, unrecognized_ok=True, future_option="raw", limit=2)
    assert q.encoded == "limit=2&future_option=raw"


def test_passthrough_does_not_convert_known_parameters():
    q = Query(passthrough=True, key='"already-json"', stale="new_mode")
    assert q.encoded == 'key="already-json"&stale=new_mode'  # not quoted either
    q = Query(passthrough=True, limit=3)
    assert q.encoded == "limit=3"
    for bad in (True, ["a", 1]):  # only strings and numbers pass through
        with pytest.raises(ArgumentError):
            Query(passthrough=True, key=bad)


# ------------------------------------------------------- setting and copying


def test_attributes_none_and_unspec():
    q = Query(limit=10, skip=2)
    q.descending = True
    assert q.limit == 10 and q.descending is True
    assert q.startkey is UNSPEC  # known but unset
    with pytest.raises(AttributeError):
        q.not_a_parameter  # noqa: B018
    with pytest.raises(ArgumentError):
        q.skip = None  # None is a value (2.x): not a number
    q.skip = UNSPEC
    q.limit = UNSPEC
    assert decoded(q) == {"descending": "true"}
    assert q.params == {"descending": True}


def test_update_copy_leaves_the_original_alone():
    q = Query(limit=1)
    other = q.update(copy=True, limit=5, stale=False)
    assert decoded(q) == {"limit": "1"}
    assert decoded(other) == {"limit": "5", "stale": "false"}
    assert q.update(skip=3) is q and decoded(q) == {"limit": "1", "skip": "3"}


def test_make_options_string_and_make_dvpath():
    text = make_options_string({"limit": 3, "key": "a"})
    assert dict(parse_qsl(text)) == {"limit": "3", "key": '"a"'}
    assert make_options_string(Query(skip=1)) == "skip=1"
    assert dict(parse_qsl(make_options_string({"odd": 1}, unrecognized_ok=True))) == {"odd": "1"}
    with pytest.raises(ArgumentError):
        make_options_string({"odd": 1})
    assert make_dvpath("beer", "by_name") == "_design/beer/_view/by_name?"


# ------------------------------------------------------- long key lists


def test_short_queries_stay_in_the_url():
    q = Query(keys=["a", "b"], limit=5)
    assert q.encoded_for_request() == (q.encoded, None)


def test_long_key_lists_move_into_a_post_body():
    keys = ["key-%04d" % i for i in range(300)]
    q = Query(keys=keys, limit=7, stale=False)
    assert len(q.encoded) > MAX_URI_LENGTH
    query, body = q.encoded_for_request()
    assert dict(parse_qsl(query)) == {"limit": "7", "stale": "false"}
    assert json.loads(body) == {"keys": keys}
    assert len(query) < MAX_URI_LENGTH


def test_a_long_query_without_keys_is_still_a_get():
    q = Query(startkey="x" * 3000)
    query, body = q.encoded_for_request()
    assert body is None and query == q.encoded


class _FakeBucket:
    bucket = "my bucket"


def test_view_request_method_path_and_headers():
    v = View(_FakeBucket(), "beer", "by_name", limit=2)
    method, path, body, headers = v._request()
    assert (method, body, headers) == ("GET", b"", {})
    assert path == "/my%20bucket/_design/beer/_view/by_name?limit=2"

    keys = ["k%05d" % i for i in range(400)]
    v = View(_FakeBucket(), "beer", "by_name", mapkey_multi=keys, descending=True)
    method, path, body, headers = v._request()
    assert method == "POST" and headers == {"Content-Type": "application/json"}
    assert path.endswith("?descending=true") and "keys" not in path
    assert json.loads(body) == {"keys": keys}


def test_view_query_argument_is_copied_before_extra_parameters():
    base = Query(limit=3)
    v = View(_FakeBucket(), "d", "v", query=base, skip=1)
    assert decoded(v.query) == {"limit": "3", "skip": "1"}
    assert decoded(base) == {"limit": "3"}


def test_include_docs_is_refused_with_reduce():
    with pytest.raises(ArgumentError):
        View(_FakeBucket(), "d", "v", include_docs=True, reduce=True)


def test_development_paths():
    assert view_path("b", "beer", "v", False, True) == "/b/_design/dev_beer/_view/v"
    assert view_path("b", "dev_beer", "v", False, True) == "/b/_design/dev_beer/_view/v"
    assert view_path("b", "beer", "v", False, False) == "/b/_design/beer/_view/v"
    assert view_path("b", "geo", "pts", True, False) == "/b/_design/geo/_spatial/pts"


# --------------------------------------------------------------- spatial


def test_spatial_parameters():
    q = SpatialQuery(bbox=[0, -1.5, 10, 20], limit=4, stale=True)
    assert decoded(q) == {"bbox": "0.0,-1.5,10.0,20.0", "limit": "4", "stale": "ok"}
    assert decoded(SpatialQuery(bbox="1,2,3,4")) == {"bbox": "1,2,3,4"}
    q = SpatialQuery(start_range=[0, 0], end_range=[5, None])
    assert decoded(q) == {"start_range": "[0, 0]", "end_range": "[5, null]"}
    with pytest.raises(ArgumentError):
        SpatialQuery(key="a")  # map-view parameters are not spatial ones
    with pytest.raises(ArgumentError):
        Query(bbox=[0, 0, 1, 1])

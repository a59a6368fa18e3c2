"""View query parameters encode byte for byte as the 2.x SDK's did.

The expected strings follow 2.x's rules (``couchbase.views.params``): each
known value is converted by its parameter's handler (``json.dumps`` with
the default separators for keys, ``str(int(v))`` for numbers...), then
name and value go through ``urllib.parse.quote`` (``/`` left as is), in the
order the parameters were first set; unknown parameters (with
``unrecognized_ok``) follow, verbatim; ``passthrough`` sends known values
verbatim too. Where this client deliberately differs (NaN keys are refused,
``bbox`` is known to :class:`SpatialQuery`) the test says so.
"""

from __future__ import annotations

import pytest

from couchbase_core.exceptions import ArgumentError
from couchbase_core.views.params import (
    ONERROR_STOP,
    STALE_OK,
    STALE_UPDATE_AFTER,
    STALE_UPDATE_BEFORE,
    UNSPEC,
    Params,
    Query,
    QueryBase,
    SpatialQuery,
    ViewQuery,
    make_options_string,
)

#: (constructor keywords, the query string 2.x produced)
TABLE = [
    ({"stale": False}, "stale=false"),
    ({"stale": True}, "stale=ok"),
    ({"stale": "true"}, "stale=ok"),
    ({"stale": "false"}, "stale=false"),
    ({"stale": 1}, "stale=ok"),
    ({"stale": 0}, "stale=false"),
    ({"stale": STALE_OK}, "stale=ok"),
    ({"stale": STALE_UPDATE_BEFORE}, "stale=false"),
    ({"stale": STALE_UPDATE_AFTER}, "stale=update_after"),
    ({"key": "abc"}, "key=%22abc%22"),
    ({"key": None}, "key=null"),
    ({"startkey": None, "endkey": None}, "startkey=null&endkey=null"),
    ({"key": ["a", 1]}, "key=%5B%22a%22%2C%201%5D"),
    ({"startkey": {"x": None}}, "startkey=%7B%22x%22%3A%20null%7D"),
    ({"key": "caf\u00e9"}, "key=%22caf%5Cu00e9%22"),
    ({"endkey": 'a"b'}, "endkey=%22a%5C%22b%22"),
    ({"key": 12.5}, "key=12.5"),
    ({"key": True}, "key=true"),
    ({"keys": ["a", "b"]}, "keys=%5B%22a%22%2C%20%22b%22%5D"),
    ({"keys": ("x",)}, "keys=%5B%22x%22%5D"),
    ({"startkey_docid": "a/b c"}, "startkey_docid=a/b%20c"),
    ({"endkey_docid": 42}, "endkey_docid=42"),
    ({"limit": 10, "skip": "5"}, "limit=10&skip=5"),
    ({"limit": 3.9}, "limit=3"),
    ({"group_level": -1}, "group_level=-1"),
    ({"connection_timeout": 60000}, "connection_timeout=60000"),
    ({"descending": 1, "reduce": False, "group": "true", "inclusive_end": 0.0},
     "descending=true&reduce=false&group=true&inclusive_end=false"),
    ({"full_set": True, "debug": "false"}, "full_set=true&debug=false"),
    ({"on_error": ONERROR_STOP}, "on_error=stop"),
    ({"mapkey_single": "k"}, "key=%22k%22"),
    ({"mapkey_multi": [1, 2]}, "keys=%5B1%2C%202%5D"),
    ({"mapkey_range": ["a", "z"]}, "startkey=%22a%22&endkey=%22z%22"),
    ({"mapkey_range": [5]}, "startkey=5"),
    ({"mapkey_range": [None, ["z", Query.STRING_RANGE_END]]},
     "startkey=null&endkey=%5B%22z%22%2C%20%22%5Cu0fff%22%5D"),
    ({"dockey_range": ["d1", "d9"]}, "startkey_docid=d1&endkey_docid=d9"),
    ({"dockey_range": ["d1"]}, "startkey_docid=d1"),
    ({"passthrough": True, "key": '"x y"', "limit": 4}, 'key="x y"&limit=4'),
    ({"passthrough": True, "stale": "new_mode", "skip": 2.5}, "stale=new_mode&skip=2.5"),
    ({"unrecognized_ok": True, "foo": "a b&c", "limit": 1}, "limit=1&foo=a b&c"),
    ({"unrecognized_ok": True, "bar": 7, "stale": False}, "stale=false&bar=7"),
    ({"unrecognized_ok": True, "passthrough": True, "x": "1", "key": "[1]"}, "key=[1]&x=1"),
]


@pytest.mark.parametrize("kwargs, expected", TABLE)
def test_query_encoded_is_2x_byte_for_byte(kwargs, expected):
    assert Query(**kwargs).encoded == expected


@pytest.mark.parametrize("kwargs, expected", TABLE)
def test_make_options_string_is_2x_byte_for_byte(kwargs, expected):
    options = dict(kwargs)
    flags = {name: options.pop(name) for name in ("passthrough", "unrecognized_ok") if name in options}
    assert make_options_string(options, **flags) == expected


def test_parameter_order_is_the_order_first_set():
    q = Query(limit=1, skip=2)
    q.update(limit=5)
    assert q.encoded == "limit=5&skip=2"  # a re-set parameter keeps its place
    q.limit = UNSPEC
    q.limit = 7
    assert q.encoded == "skip=2&limit=7"  # unset then set: at the end


def test_a_string_is_sent_verbatim_before_the_other_parameters():
    assert make_options_string("custom=1&x=y") == "custom=1&x=y&"  # 2.x's trailing '&'
    q = Query.from_any("raw=1")
    q.limit = 2
    assert q.encoded == "raw=1&limit=2" and q.has_blob


def test_from_any_picks_the_query_class():
    assert type(QueryBase.from_any({"limit": 1})) is ViewQuery
    assert type(QueryBase.from_any({"start_range": [1]})) is SpatialQuery
    original = Query(limit=3)
    copied = QueryBase.from_any(original)
    assert copied is not original and copied.encoded == "limit=3"
    with pytest.raises(ArgumentError):
        QueryBase.from_any(5)


def test_long_query_encoding_matches_2x():
    q = Query(keys=[1, "a"], limit=3)
    assert q._long_query_encoded == ("limit=3", '{"keys":[1, "a"]}')
    assert Query(limit=3)._long_query_encoded == ("limit=3", "{}")


@pytest.mark.parametrize("name", ["limit", "skip", "group_level", "connection_timeout"])
@pytest.mark.parametrize("bad", [True, False, None, "ten", "2.5", "", [1], {}, float("nan"), float("inf")])
def test_bad_numbers_raise_argument_error(name, bad):
    with pytest.raises(ArgumentError):
        Query(**{name: bad})


@pytest.mark.parametrize("name, bad", [
    ("descending", None), ("descending", "yes"), ("descending", "True"), ("reduce", [True]),
    ("stale", None), ("stale", "never"), ("stale", "OK"), ("on_error", None), ("on_error", "ignore"),
    ("startkey_docid", None), ("startkey_docid", True), ("endkey_docid", b"bytes"),
    ("keys", "not-a-list"), ("keys", None), ("keys", {"a": 1}), ("key", object()),
    ("mapkey_range", "ab"), ("mapkey_range", [1, 2, 3]), ("mapkey_range", None),
])
def test_bad_values_raise_argument_error(name, bad):
    with pytest.raises(ArgumentError):
        Query(**{name: bad})


def test_unknown_parameters_need_unrecognized_ok():
    for flags in ({}, {"passthrough": True}):
        with pytest.raises(ArgumentError) as info:
            Query(limt=5, **flags)
        assert "limt" in str(info.value)
    for bad in (True, None, ["x"]):  # sent as given: only str and numbers
        with pytest.raises(ArgumentError):
            Query(unrecognized_ok=True, odd=bad)


def test_passthrough_refuses_what_has_no_text_form():
    for bad in (True, None, ["a"], {"k": 1}):
        with pytest.raises(ArgumentError):
            Query(passthrough=True, key=bad)


def test_a_range_cannot_be_combined_with_its_ends():
    q = Query(startkey="a")
    with pytest.raises(ArgumentError):
        q.mapkey_range = ["a", "b"]
    q = Query(dockey_range=["a", "b"])
    q.startkey_docid = "c"  # the reverse is allowed, as in 2.x
    assert q.encoded == "startkey_docid=c&endkey_docid=b"
    q = Query(mapkey_range=["a", "b"])
    q.mapkey_range = UNSPEC
    assert q.encoded == "" and q.mapkey_range is UNSPEC


def test_getters_return_what_was_given():
    q = Query(limit="10", stale=True, mapkey_range=["a"], key=None)
    assert q.limit == "10" and q.stale is True and q.key is None
    assert q.mapkey_range == ["a", UNSPEC]
    assert q.skip is UNSPEC and q.mapkey_single is None


def test_deep_copy_with_update():
    q = Query(keys=["a"])
    other = q.update(copy=True, limit=1)
    assert q.encoded == "keys=%5B%22a%22%5D"
    assert other.encoded == "keys=%5B%22a%22%5D&limit=1"


def test_nan_keys_are_refused_not_sent():
    # a deliberate difference: 2.x sent NaN/Infinity, which are not JSON
    # and make the view engine refuse the whole query
    for bad in (float("nan"), float("inf"), [1, float("-inf")]):
        with pytest.raises(ArgumentError):
            Query(key=bad)


def test_params_names():
    assert Params.STALE == "stale" and Params.MAPKEY_RANGE == "mapkey_range"
    assert repr(Query(limit=1)) == "Query:'limit=1'"


def test_spatial_bbox_is_sent_as_2x_sent_an_unrecognized_one():
    # 2.x needed unrecognized_ok for bbox; it then went out verbatim, last
    assert SpatialQuery(unrecognized_ok=True, bbox="1,2,3,4", limit=2).encoded == "limit=2&bbox=1,2,3,4"
    assert SpatialQuery(bbox=[0, 1, 2.5, 3]).encoded == "bbox=0.0,1.0,2.5,3.0"
    assert SpatialQuery(start_range=[1, None]).encoded == "start_range=%5B1%2C%20null%5D"

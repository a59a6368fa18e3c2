"""Unit tests of the emulator's sub-document engine (no sockets)."""

import json
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from couchbase_core.mock import subdoc as sd
from couchbase_core.mock.subdoc import (
    DocState,
    MutationOutcome,
    SubdocError,
    lookup,
    mutate,
    parse_path,
)

# --- helpers -------------------------------------------------------------------


def make(body: Any = None, raw: Optional[bytes] = None, xattrs: Optional[dict] = None, **kw: Any) -> DocState:
    """A DocState from a Python value (or raw bytes) and xattrs given as Python values."""
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    x = {k: (v if isinstance(v, bytes) else json.dumps(v).encode()) for k, v in (xattrs or {}).items()}
    return DocState(body=raw, xattrs=x, **kw)


def get1(state: DocState, path: str, flags: int = 0, op: int = sd.GET, doc_flags: int = 0) -> Tuple[int, bytes]:
    """Run one lookup spec; return its per-spec status and value."""
    top, results = lookup(state, [(op, flags, path)], doc_flags)
    assert len(results) == 1, (top, results)
    return results[0]


def val(state: DocState, path: str, flags: int = 0) -> Any:
    """The parsed value at a path (asserting success)."""
    status, value = get1(state, path, flags)
    assert status == sd.SUCCESS, hex(status)
    return json.loads(value)


def mut1(state: DocState, op: int, path: str, value: bytes = b"", flags: int = 0, **kw: Any) -> MutationOutcome:
    """Run one mutation spec."""
    return mutate(state, [(op, flags, path, value)], **kw)


def body_of(outcome: MutationOutcome) -> Any:
    """The parsed body of a successful outcome."""
    assert outcome.status in (sd.SUCCESS, sd.SUBDOC_SUCCESS_DELETED), (hex(outcome.status), hex(outcome.failed_status))
    return json.loads(outcome.body)


def spec_failure(outcome: MutationOutcome) -> int:
    """The failed spec's status of a 0xcc outcome with one spec."""
    assert outcome.status == sd.SUBDOC_MULTI_PATH_FAILURE, hex(outcome.status)
    assert outcome.failed_index == 0
    return outcome.failed_status


SAMPLE = {"name": "Al", "tags": ["a", "b", "c"], "nested": {"n": 5, "f": 1.5, "s": "x"}, "empty": [], "obj": {}}

# --- constants -------------------------------------------------------------------


def test_status_and_opcode_constants_match_the_spec():
    assert (sd.SUCCESS, sd.KEY_ENOENT, sd.KEY_EEXISTS, sd.E2BIG, sd.EINVAL) == (0, 1, 2, 3, 4)
    statuses = [
        sd.SUBDOC_PATH_ENOENT, sd.SUBDOC_PATH_MISMATCH, sd.SUBDOC_PATH_EINVAL, sd.SUBDOC_PATH_E2BIG,
        sd.SUBDOC_DOC_E2DEEP, sd.SUBDOC_VALUE_CANTINSERT, sd.SUBDOC_DOC_NOTJSON, sd.SUBDOC_NUM_ERANGE,
        sd.SUBDOC_DELTA_EINVAL, sd.SUBDOC_PATH_EEXISTS, sd.SUBDOC_VALUE_ETOODEEP, sd.SUBDOC_INVALID_COMBO,
        sd.SUBDOC_MULTI_PATH_FAILURE, sd.SUBDOC_SUCCESS_DELETED, sd.SUBDOC_XATTR_INVALID_FLAG_COMBO,
        sd.SUBDOC_XATTR_INVALID_KEY_COMBO, sd.SUBDOC_XATTR_UNKNOWN_MACRO, sd.SUBDOC_XATTR_UNKNOWN_VATTR,
        sd.SUBDOC_XATTR_CANT_MODIFY_VATTR, sd.SUBDOC_MULTI_PATH_FAILURE_DELETED, sd.SUBDOC_INVALID_XATTR_ORDER,
    ]
    assert statuses == list(range(0xC0, 0xD5))
    ops = [sd.GET, sd.EXISTS, sd.DICT_ADD, sd.DICT_UPSERT, sd.DELETE, sd.REPLACE, sd.ARRAY_PUSH_LAST,
           sd.ARRAY_PUSH_FIRST, sd.ARRAY_INSERT, sd.ARRAY_ADD_UNIQUE, sd.COUNTER]
    assert ops == list(range(0xC5, 0xD0))
    assert sd.GET_COUNT == 0xD2
    assert (sd.WHOLE_DOC_GET, sd.WHOLE_DOC_SET, sd.WHOLE_DOC_DELETE) == (0x00, 0x01, 0x04)
    assert (sd.MKDIR_P, sd.XATTR, sd.EXPAND_MACROS) == (0x01, 0x04, 0x10)
    assert (sd.MKDOC, sd.ADD, sd.ACCESS_DELETED) == (0x01, 0x02, 0x04)


# --- path parsing ------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("a", ["a"]),
    ("a.b.c", ["a", "b", "c"]),
    ("a[0]", ["a", 0]),
    ("a[12].b", ["a", 12, "b"]),
    ("[3]", [3]),
    ("[0][1][-1]", [0, 1, -1]),
    ("a[-1]", ["a", -1]),
    ("a[007]", ["a", 7]),
    ("`a.b`", ["a.b"]),
    ("`a[0]`.c", ["a[0]", "c"]),
    ("`a``b`", ["a`b"]),
    ("````", ["`"]),
    ("x.`y.z`[2]", ["x", "y.z", 2]),
    ("pre`.mid.`post", ["pre.mid.post"]),
    ("`]`", ["]"]),
    ("with space", ["with space"]),
    ("ünï.cödé", ["ünï", "cödé"]),
    ("", []),
])
def test_parse_path_valid(path, expected):
    assert parse_path(path) == expected


@pytest.mark.parametrize("path", [
    "a..b", ".a", "a.", "a[", "a[]", "a[x]", "a[-2]", "a[-0]", "a[1]b", "a]b", "`a", "a.`b",
    "a.[0]", "``", "a[ 1]", "a[+1]", "a[1.5]", "[", "]", ".", "a[0].", "a[0]]",
])
def test_parse_path_syntax_errors(path):
    with pytest.raises(SubdocError) as err:
        parse_path(path)
    assert err.value.status == sd.SUBDOC_PATH_EINVAL


def test_parse_path_length_limit_is_1024_bytes():
    assert parse_path("a" * 1024) == ["a" * 1024]
    with pytest.raises(SubdocError) as err:
        parse_path("a" * 1025)
    assert err.value.status == sd.SUBDOC_PATH_E2BIG
    # counted in UTF-8 bytes: 512 two-byte characters fit, 513 do not
    assert len(parse_path("é" * 512)[0]) == 512
    with pytest.raises(SubdocError) as err:
        parse_path("é" * 513)
    assert err.value.status == sd.SUBDOC_PATH_E2BIG


def test_parse_path_component_limit_is_32():
    assert len(parse_path(".".join(["a"] * 32))) == 32
    assert len(parse_path("a" + "[0]" * 31)) == 32
    with pytest.raises(SubdocError) as err:
        parse_path(".".join(["a"] * 33))
    assert err.value.status == sd.SUBDOC_PATH_E2BIG
    with pytest.raises(SubdocError) as err:
        parse_path("[0]" * 33)
    assert err.value.status == sd.SUBDOC_PATH_E2BIG


def test_parse_path_huge_index_is_accepted_and_never_matches():
    comps = parse_path("a[" + "9" * 40 + "]")
    assert comps[0] == "a" and comps[1] > 10 ** 17
    assert get1(make({"a": [1]}), "a[" + "9" * 40 + "]")[0] == sd.SUBDOC_PATH_ENOENT


def test_subdoc_error_carries_status():
    err = SubdocError(sd.SUBDOC_PATH_EINVAL)
    assert err.status == 0xC2 and isinstance(err, Exception)
    assert "0xc2" in str(err)


# --- lookups: basic ops ---------------------------------------------------------------


def test_get_returns_compact_json_fragments():
    state = make(raw=b'{ "a" : { "b" : [ 1 , 2 ] , "c" : "x" } }')
    top, results = lookup(state, [(sd.GET, 0, "a"), (sd.GET, 0, "a.b"), (sd.GET, 0, "a.c")])
    assert top == sd.SUCCESS
    assert results == [(0, b'{"b":[1,2],"c":"x"}'), (0, b"[1,2]"), (0, b'"x"')]


def test_get_keeps_number_text_and_unicode():
    state = make(raw='{"f": 1.50, "e": 1E2, "big": 123456789012345678901234567890, "u": "ü\\u00e9"}'.encode())
    assert get1(state, "f") == (0, b"1.50")
    assert get1(state, "e") == (0, b"1E2")
    assert get1(state, "big") == (0, b"123456789012345678901234567890")
    assert get1(state, "u") == (0, '"üé"'.encode())


def test_get_scalars_and_indexes():
    state = make(SAMPLE)
    assert val(state, "name") == "Al"
    assert val(state, "tags[0]") == "a"
    assert val(state, "tags[-1]") == "c"
    assert val(state, "nested.n") == 5
    assert val(state, "empty") == []
    assert get1(make({"t": True, "f": False, "n": None}), "n") == (0, b"null")
    assert get1(make({"t": True, "f": False, "n": None}), "t") == (0, b"true")


def test_get_escaped_keys():
    state = make({"a.b": {"c[0]": 1, "x`y": 2}})
    assert val(state, "`a.b`.`c[0]`") == 1
    assert val(state, "`a.b`.`x``y`") == 2


def test_get_on_root_array_document():
    state = make([[1, 2], {"k": "v"}])
    assert val(state, "[0][1]") == 2
    assert val(state, "[-1].k") == "v"


def test_exists_returns_empty_value():
    state = make(SAMPLE)
    assert get1(state, "nested.s", op=sd.EXISTS) == (0, b"")
    assert get1(state, "nested.zz", op=sd.EXISTS) == (sd.SUBDOC_PATH_ENOENT, b"")


def test_get_count():
    state = make(SAMPLE)
    assert get1(state, "tags", op=sd.GET_COUNT) == (0, b"3")
    assert get1(state, "nested", op=sd.GET_COUNT) == (0, b"3")
    assert get1(state, "empty", op=sd.GET_COUNT) == (0, b"0")
    assert get1(state, "name", op=sd.GET_COUNT) == (sd.SUBDOC_PATH_MISMATCH, b"")
    assert get1(state, "nope", op=sd.GET_COUNT) == (sd.SUBDOC_PATH_ENOENT, b"")


@pytest.mark.parametrize("path, status", [
    ("name.x", sd.SUBDOC_PATH_MISMATCH),         # through a scalar
    ("nested[0]", sd.SUBDOC_PATH_MISMATCH),      # index on an object
    ("tags.x", sd.SUBDOC_PATH_MISMATCH),         # key on an array
    ("name[0]", sd.SUBDOC_PATH_MISMATCH),        # index on a string
    ("tags[3]", sd.SUBDOC_PATH_ENOENT),
    ("empty[-1]", sd.SUBDOC_PATH_ENOENT),
    ("missing", sd.SUBDOC_PATH_ENOENT),
    ("missing.deeper", sd.SUBDOC_PATH_ENOENT),
    ("a..b", sd.SUBDOC_PATH_EINVAL),
    ("a[-2]", sd.SUBDOC_PATH_EINVAL),
    ("a" * 1025, sd.SUBDOC_PATH_E2BIG),
    (".".join("a" * 33), sd.SUBDOC_PATH_E2BIG),
])
def test_lookup_path_failures_are_per_spec(path, status):
    top, results = lookup(make(SAMPLE), [(sd.GET, 0, path), (sd.GET, 0, "name")])
    assert top == sd.SUBDOC_MULTI_PATH_FAILURE
    assert results == [(status, b""), (0, b'"Al"')]


def test_lookup_on_scalar_root_document():
    assert get1(make(5), "a") == (sd.SUBDOC_PATH_MISMATCH, b"")
    assert get1(make(5), "[0]") == (sd.SUBDOC_PATH_MISMATCH, b"")


def test_multi_lookup_results_in_order():
    top, results = lookup(make(SAMPLE), [
        (sd.GET, 0, "name"), (sd.EXISTS, 0, "nope"), (sd.GET_COUNT, 0, "tags"), (sd.WHOLE_DOC_GET, 0, ""),
    ])
    assert top == sd.SUBDOC_MULTI_PATH_FAILURE
    assert [r[0] for r in results] == [0, sd.SUBDOC_PATH_ENOENT, 0, 0]
    assert results[2][1] == b"3"
    assert json.loads(results[3][1]) == SAMPLE


def test_whole_doc_get_returns_raw_body_even_when_not_json():
    raw = b'{ "spaced" :  1 }'
    assert lookup(make(raw=raw), [(sd.WHOLE_DOC_GET, 0, "")]) == (0, [(0, raw)])
    assert lookup(make(raw=b"\x00binary"), [(sd.WHOLE_DOC_GET, 0, "")]) == (0, [(0, b"\x00binary")])


@pytest.mark.parametrize("raw", [b"not json", b"{'a': 1}", b'{"a": NaN}', b"\xff\xfe", b"", b'{"a":1} x'])
def test_body_not_json_is_per_spec_doc_notjson(raw):
    state = make(raw=raw, xattrs={"m": 1})
    top, results = lookup(state, [(sd.GET, sd.XATTR, "m"), (sd.GET, 0, "a"), (sd.EXISTS, 0, "a")])
    assert top == sd.SUBDOC_MULTI_PATH_FAILURE
    assert results == [(0, b"1"), (sd.SUBDOC_DOC_NOTJSON, b""), (sd.SUBDOC_DOC_NOTJSON, b"")]


def nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` nested objects around ``leaf``."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def test_document_depth_limit():
    assert get1(make(nested(32)), "a") [0] == sd.SUCCESS
    assert get1(make(nested(33)), "a") == (sd.SUBDOC_DOC_E2DEEP, b"")
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    assert get1(make(raw=deep), "a") == (sd.SUBDOC_DOC_E2DEEP, b"")


# --- lookups: document level ------------------------------------------------------------


def test_lookup_missing_document_is_key_enoent():
    assert lookup(DocState(), [(sd.GET, 0, "a")]) == (sd.KEY_ENOENT, [])
    assert lookup(DocState(), [(sd.GET, 0, "a")], sd.ACCESS_DELETED) == (sd.KEY_ENOENT, [])


def test_lookup_spec_count_limits():
    state = make(SAMPLE)
    top, results = lookup(state, [(sd.GET, 0, "name")] * 16)
    assert top == 0 and len(results) == 16
    assert lookup(state, [(sd.GET, 0, "name")] * 17) == (sd.SUBDOC_INVALID_COMBO, [])
    assert lookup(state, []) == (sd.SUBDOC_INVALID_COMBO, [])


@pytest.mark.parametrize("opcode", [sd.DICT_UPSERT, sd.COUNTER, sd.WHOLE_DOC_SET, 0x99])
def test_lookup_rejects_non_lookup_opcodes(opcode):
    assert lookup(make(SAMPLE), [(sd.GET, 0, "name"), (opcode, 0, "x")]) == (sd.SUBDOC_INVALID_COMBO, [])


@pytest.mark.parametrize("spec, status", [
    ((sd.GET, 0, ""), sd.EINVAL),
    ((sd.EXISTS, 0, ""), sd.EINVAL),
    ((sd.WHOLE_DOC_GET, 0, "name"), sd.EINVAL),
    ((sd.WHOLE_DOC_GET, sd.XATTR, ""), sd.EINVAL),
    ((sd.GET, sd.MKDIR_P, "name"), sd.EINVAL),
    ((sd.GET, sd.EXPAND_MACROS | sd.XATTR, "m"), sd.EINVAL),
    ((sd.GET, sd.EXPAND_MACROS, "name"), sd.SUBDOC_XATTR_INVALID_FLAG_COMBO),
])
def test_lookup_document_level_validation(spec, status):
    assert lookup(make(SAMPLE), [spec]) == (status, [])


def test_get_count_of_the_root_counts_the_top_level():
    # An empty path is allowed for GET_COUNT (the document root), as 2.x's
    # get_count('') relies on.
    status, results = lookup(make(SAMPLE), [(sd.GET_COUNT, 0, "")])
    assert status == 0 and results[0][0] == 0 and int(results[0][1]) == len(SAMPLE)


@pytest.mark.parametrize("doc_flags", [sd.MKDOC, sd.ADD, 0x08, 0x40])
def test_lookup_rejects_mutation_doc_flags(doc_flags):
    assert lookup(make(SAMPLE), [(sd.GET, 0, "name")], doc_flags) == (sd.EINVAL, [])


def test_lookup_accepts_replica_read_and_access_deleted_on_live_doc():
    assert lookup(make(SAMPLE), [(sd.GET, 0, "name")], sd.REPLICA_READ) == (0, [(0, b'"Al"')])
    assert lookup(make(SAMPLE), [(sd.GET, 0, "name")], sd.ACCESS_DELETED) == (0, [(0, b'"Al"')])


# --- lookups: xattrs ----------------------------------------------------------------------


def test_xattr_lookups():
    state = make(SAMPLE, xattrs={"meta": {"rev": 3, "list": [1, 2]}})
    top, results = lookup(state, [
        (sd.GET, sd.XATTR, "meta"), (sd.GET, sd.XATTR, "meta.rev"), (sd.GET_COUNT, sd.XATTR, "meta.list"),
        (sd.EXISTS, sd.XATTR, "meta.nope"), (sd.GET, 0, "name"),
    ])
    assert top == sd.SUBDOC_MULTI_PATH_FAILURE
    assert results == [
        (0, b'{"rev":3,"list":[1,2]}'), (0, b"3"), (0, b"2"), (sd.SUBDOC_PATH_ENOENT, b""), (0, b'"Al"'),
    ]
    assert get1(state, "other", sd.XATTR) == (sd.SUBDOC_PATH_ENOENT, b"")


def test_xattr_specs_must_precede_body_specs():
    state = make(SAMPLE, xattrs={"meta": 1})
    assert lookup(state, [(sd.GET, 0, "name"), (sd.GET, sd.XATTR, "meta")]) == (sd.SUBDOC_INVALID_XATTR_ORDER, [])
    assert lookup(state, [(sd.GET, 0, "name"), (sd.GET, sd.XATTR, "$document")])[0] == sd.SUBDOC_INVALID_XATTR_ORDER


def test_one_xattr_key_per_request_but_vattrs_are_exempt():
    state = make(SAMPLE, xattrs={"a": 1, "b": 2})
    assert lookup(state, [(sd.GET, sd.XATTR, "a"), (sd.GET, sd.XATTR, "b")]) == (
        sd.SUBDOC_XATTR_INVALID_KEY_COMBO, [])
    top, results = lookup(state, [(sd.GET, sd.XATTR, "a"), (sd.GET, sd.XATTR, "$document.CAS"),
                                  (sd.GET, sd.XATTR, "a")])
    assert top == 0 and results[0] == (0, b"1") and results[2] == (0, b"1")


@pytest.mark.parametrize("path", ["[0]", "k" * 17, "bad\x01key"])
def test_invalid_xattr_key(path):
    assert lookup(make(SAMPLE), [(sd.GET, sd.XATTR, path)]) == (sd.XATTR_EINVAL, [])


def test_xattr_key_of_16_bytes_is_fine():
    state = make({}, xattrs={"k" * 16: 7})
    assert get1(state, "k" * 16, sd.XATTR) == (0, b"7")


def test_document_vattr():
    body = b'{"a":1}'
    state = make(raw=body, xattrs={"m": 1}, cas=0x0102030405060708, seqno=0x2A, flags=0x02000006,
                 expiry=1700000000, datatype=0x01)
    doc = val(state, "$document", sd.XATTR)
    assert doc["CAS"] == "0x0102030405060708"
    assert doc["seqno"] == "0x000000000000002a"
    assert doc["exptime"] == 1700000000
    assert doc["flags"] == 0x02000006
    assert doc["value_bytes"] == len(body)
    assert doc["deleted"] is False
    assert doc["datatype"] == ["json", "xattr"]
    assert doc["value_crc32c"] == "0x%08x" % crc32c_reference(body)
    assert doc["last_modified"] == str(0x0102030405060708 // 10 ** 9)
    assert get1(state, "$document.CAS", sd.XATTR) == (0, b'"0x0102030405060708"')
    assert get1(state, "$document.datatype[0]", sd.XATTR) == (0, b'"json"')
    assert get1(state, "$document", sd.XATTR, op=sd.GET_COUNT)[1] == str(len(doc)).encode()
    assert get1(state, "$document.nope", sd.XATTR, op=sd.EXISTS) == (sd.SUBDOC_PATH_ENOENT, b"")


def test_document_vattr_datatype_raw_and_detected_json():
    assert val(make(raw=b"\x01\x02"), "$document.datatype", sd.XATTR) == ["raw"]
    assert val(make({"a": 1}), "$document.datatype", sd.XATTR) == ["json"]
    assert val(make(raw=b"xx", datatype=0x02), "$document.datatype", sd.XATTR) == ["snappy"]


def test_xtoc_and_vbucket_vattrs():
    state = make(SAMPLE, xattrs={"one": 1, "_sys": 2})
    assert val(state, "$XTOC", sd.XATTR) == ["one", "_sys"]
    hlc = val(state, "$vbucket.HLC", sd.XATTR)
    assert hlc["mode"] == "real" and hlc["now"].isdigit()


def test_unknown_vattr_is_per_spec():
    top, results = lookup(make(SAMPLE), [(sd.GET, sd.XATTR, "$xyz"), (sd.GET, sd.XATTR, "$document.deleted")])
    assert top == sd.SUBDOC_MULTI_PATH_FAILURE
    assert results == [(sd.SUBDOC_XATTR_UNKNOWN_VATTR, b""), (0, b"false")]


def test_xattr_value_not_json_is_doc_notjson():
    state = make(SAMPLE, xattrs={"m": b"not json"})
    assert get1(state, "m", sd.XATTR) == (sd.SUBDOC_DOC_NOTJSON, b"")


# --- lookups: tombstones -------------------------------------------------------------------


def tombstone(**kw: Any) -> DocState:
    """A deleted document that keeps a system xattr."""
    return DocState(body=None, xattrs={"_sys": b'{"txn":"t1"}'}, deleted=True, cas=99, **kw)


def test_tombstone_needs_access_deleted():
    assert lookup(tombstone(), [(sd.GET, sd.XATTR, "_sys")]) == (sd.KEY_ENOENT, [])


def test_tombstone_lookup_with_access_deleted():
    state = tombstone()
    top, results = lookup(state, [(sd.GET, sd.XATTR, "_sys.txn"), (sd.GET, sd.XATTR, "$document.deleted")],
                          sd.ACCESS_DELETED)
    assert top == sd.SUBDOC_SUCCESS_DELETED
    assert results == [(0, b'"t1"'), (0, b"true")]
    top, results = lookup(state, [(sd.GET, sd.XATTR, "_sys.nope"), (sd.GET, 0, "body.path"),
                                  (sd.WHOLE_DOC_GET, 0, "")], sd.ACCESS_DELETED)
    assert top == sd.SUBDOC_MULTI_PATH_FAILURE_DELETED
    assert results == [(sd.SUBDOC_PATH_ENOENT, b""), (sd.SUBDOC_PATH_ENOENT, b""), (0, b"")]


def test_tombstone_with_body_is_readable():
    state = DocState(body=b'{"a":1}', deleted=True)
    assert lookup(state, [(sd.GET, 0, "a")], sd.ACCESS_DELETED) == (sd.SUBDOC_SUCCESS_DELETED, [(0, b"1")])


# --- mutations: dict ops ----------------------------------------------------------------------


def test_dict_add():
    state = make(SAMPLE)
    assert body_of(mut1(state, sd.DICT_ADD, "nested.new", b'{"x":[1]}'))["nested"]["new"] == {"x": [1]}
    assert spec_failure(mut1(state, sd.DICT_ADD, "name", b'"B"')) == sd.SUBDOC_PATH_EEXISTS
    assert spec_failure(mut1(state, sd.DICT_ADD, "no.such", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.DICT_ADD, "tags.x", b"1")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.DICT_ADD, "name.x", b"1")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.DICT_ADD, "tags[0]", b"1")) == sd.SUBDOC_PATH_EINVAL


def test_dict_upsert_creates_and_replaces():
    state = make(SAMPLE)
    assert body_of(mut1(state, sd.DICT_UPSERT, "name", b'"Bo"'))["name"] == "Bo"
    assert body_of(mut1(state, sd.DICT_UPSERT, "nested.k", b"null"))["nested"]["k"] is None
    assert spec_failure(mut1(state, sd.DICT_UPSERT, "a.b.c", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.DICT_UPSERT, "tags[-1]", b"1")) == sd.SUBDOC_PATH_EINVAL


def test_mkdir_p_creates_intermediate_dicts():
    out = mut1(make(SAMPLE), sd.DICT_UPSERT, "a.b.c", b"1", sd.MKDIR_P)
    assert body_of(out)["a"] == {"b": {"c": 1}}
    out = mut1(make(SAMPLE), sd.DICT_ADD, "nested.x.y", b"2", sd.MKDIR_P)
    assert body_of(out)["nested"]["x"] == {"y": 2}
    # missing array elements are never created
    assert spec_failure(mut1(make(SAMPLE), sd.DICT_UPSERT, "empty[0].x", b"1", sd.MKDIR_P)) == sd.SUBDOC_PATH_ENOENT
    # a scalar in the way stays a mismatch
    assert spec_failure(mut1(make(SAMPLE), sd.DICT_UPSERT, "name.x.y", b"1", sd.MKDIR_P)) == sd.SUBDOC_PATH_MISMATCH


def test_replace():
    state = make(SAMPLE)
    assert body_of(mut1(state, sd.REPLACE, "name", b"[1]"))["name"] == [1]
    assert body_of(mut1(state, sd.REPLACE, "tags[1]", b'"B"'))["tags"] == ["a", "B", "c"]
    assert body_of(mut1(state, sd.REPLACE, "tags[-1]", b'"Z"'))["tags"] == ["a", "b", "Z"]
    assert spec_failure(mut1(state, sd.REPLACE, "nope", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.REPLACE, "tags[3]", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.REPLACE, "nested[0]", b"1")) == sd.SUBDOC_PATH_MISMATCH


def test_delete():
    state = make(SAMPLE)
    assert "name" not in body_of(mut1(state, sd.DELETE, "name"))
    assert body_of(mut1(state, sd.DELETE, "tags[0]"))["tags"] == ["b", "c"]
    assert body_of(mut1(state, sd.DELETE, "tags[-1]"))["tags"] == ["a", "b"]
    assert spec_failure(mut1(state, sd.DELETE, "nope")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.DELETE, "empty[-1]")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.DELETE, "tags.x")) == sd.SUBDOC_PATH_MISMATCH


@pytest.mark.parametrize("value", [b"{bad", b"'single'", b"1,2", b"NaN", b"undefined", b"\xff", b"[1,]"])
def test_invalid_json_value_cannot_be_inserted(value):
    assert spec_failure(mut1(make(SAMPLE), sd.DICT_UPSERT, "x", value)) == sd.SUBDOC_VALUE_CANTINSERT


def test_body_path_on_non_json_document():
    out = mut1(make(raw=b"plain text"), sd.DICT_UPSERT, "x", b"1")
    assert spec_failure(out) == sd.SUBDOC_DOC_NOTJSON
    assert out.body == b"plain text"


def test_mutation_on_too_deep_document():
    assert spec_failure(mut1(make(nested(33)), sd.DICT_UPSERT, "x", b"1")) == sd.SUBDOC_DOC_E2DEEP


def test_value_too_deep():
    # a value at depth-1 path: the root plus the value's own levels
    assert body_of(mut1(make({}), sd.DICT_UPSERT, "x", json.dumps(nested(31)).encode()))
    assert spec_failure(mut1(make({}), sd.DICT_UPSERT, "x", json.dumps(nested(32)).encode())) == \
        sd.SUBDOC_VALUE_ETOODEEP
    path = ".".join(["a"] * 31)
    assert spec_failure(mut1(make({}), sd.DICT_UPSERT, path, b"[[1]]", sd.MKDIR_P)) == sd.SUBDOC_VALUE_ETOODEEP
    assert body_of(mut1(make({}), sd.DICT_UPSERT, path, b"[1]", sd.MKDIR_P))
    deep_value = b"[" * 3000 + b"]" * 3000
    assert spec_failure(mut1(make({}), sd.DICT_UPSERT, "x", deep_value)) == sd.SUBDOC_VALUE_ETOODEEP


def test_mutated_body_is_compact_and_keeps_number_text():
    out = mut1(make(raw=b'{ "a" : 1.50 ,  "b" : [ 1E2 ] }'), sd.DICT_UPSERT, "c", b' { "d" : 2.0 } ')
    assert out.body == b'{"a":1.50,"b":[1E2],"c":{"d":2.0}}'


# --- mutations: arrays ----------------------------------------------------------------------


def test_array_push_last_and_first():
    state = make(SAMPLE)
    assert body_of(mut1(state, sd.ARRAY_PUSH_LAST, "tags", b'"d"'))["tags"] == ["a", "b", "c", "d"]
    assert body_of(mut1(state, sd.ARRAY_PUSH_FIRST, "tags", b'"z"'))["tags"] == ["z", "a", "b", "c"]
    assert body_of(mut1(state, sd.ARRAY_PUSH_LAST, "tags", b'1, [2], {"x": 3}'))["tags"][3:] == [1, [2], {"x": 3}]
    assert body_of(mut1(state, sd.ARRAY_PUSH_FIRST, "empty", b"1,2"))["empty"] == [1, 2]
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "tags[-1]", b"1")) == sd.SUBDOC_PATH_MISMATCH


def test_array_push_into_nested_array_by_index():
    out = mut1(make({"m": [[1], [2]]}), sd.ARRAY_PUSH_LAST, "m[-1]", b"3")
    assert body_of(out) == {"m": [[1], [2, 3]]}


def test_array_push_on_root():
    assert body_of(mut1(make([1]), sd.ARRAY_PUSH_LAST, "", b"2,3")) == [1, 2, 3]
    assert body_of(mut1(make([1]), sd.ARRAY_PUSH_FIRST, "", b"0")) == [0, 1]
    assert spec_failure(mut1(make({}), sd.ARRAY_PUSH_LAST, "", b"1")) == sd.SUBDOC_PATH_MISMATCH


def test_array_push_errors():
    state = make(SAMPLE)
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "name", b"1")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "nested", b"1")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "nope", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "tags", b"1,")) == sd.SUBDOC_VALUE_CANTINSERT
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "tags", b"[1")) == sd.SUBDOC_VALUE_CANTINSERT
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "tags", b"1],[2")) == sd.SUBDOC_VALUE_CANTINSERT
    assert spec_failure(mut1(state, sd.ARRAY_PUSH_LAST, "tags", b"   ")) == sd.SUBDOC_VALUE_CANTINSERT


def test_array_push_with_mkdir_p_creates_the_array():
    out = mut1(make(SAMPLE), sd.ARRAY_PUSH_LAST, "new.list", b'"v"', sd.MKDIR_P)
    assert body_of(out)["new"] == {"list": ["v"]}
    out = mut1(make(SAMPLE), sd.ARRAY_PUSH_FIRST, "nested.list", b"1,2", sd.MKDIR_P)
    assert body_of(out)["nested"]["list"] == [1, 2]


def test_array_insert():
    state = make(SAMPLE)
    assert body_of(mut1(state, sd.ARRAY_INSERT, "tags[1]", b'"X"'))["tags"] == ["a", "X", "b", "c"]
    assert body_of(mut1(state, sd.ARRAY_INSERT, "tags[0]", b"1,2"))["tags"] == [1, 2, "a", "b", "c"]
    assert body_of(mut1(state, sd.ARRAY_INSERT, "tags[3]", b'"end"'))["tags"] == ["a", "b", "c", "end"]
    assert body_of(mut1(state, sd.ARRAY_INSERT, "empty[0]", b"0"))["empty"] == [0]
    assert body_of(mut1(make([1]), sd.ARRAY_INSERT, "[0]", b"0")) == [0, 1]
    assert spec_failure(mut1(state, sd.ARRAY_INSERT, "tags[4]", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.ARRAY_INSERT, "tags", b"1")) == sd.SUBDOC_PATH_EINVAL
    assert spec_failure(mut1(state, sd.ARRAY_INSERT, "tags[-1]", b"1")) == sd.SUBDOC_PATH_EINVAL
    assert spec_failure(mut1(state, sd.ARRAY_INSERT, "nested[0]", b"1")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.ARRAY_INSERT, "nope[0]", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert spec_failure(mut1(state, sd.ARRAY_INSERT, "tags[0]", b"{")) == sd.SUBDOC_VALUE_CANTINSERT


def test_array_add_unique():
    state = make({"l": [1, "a", True, None, 2.0]})
    assert body_of(mut1(state, sd.ARRAY_ADD_UNIQUE, "l", b"3"))["l"][-1] == 3
    for present in (b"1", b'"a"', b"true", b"null", b"2.0"):
        assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "l", present)) == sd.SUBDOC_PATH_EEXISTS, present
    # numbers compare by their text, booleans are not numbers
    assert body_of(mut1(state, sd.ARRAY_ADD_UNIQUE, "l", b"2"))["l"][-1] == 2
    assert body_of(mut1(make({"l": [1]}), sd.ARRAY_ADD_UNIQUE, "l", b"true"))["l"] == [1, True]
    assert body_of(mut1(make({"l": [False]}), sd.ARRAY_ADD_UNIQUE, "l", b"0"))["l"] == [False, 0]
    assert body_of(mut1(make({"l": ["1"]}), sd.ARRAY_ADD_UNIQUE, "l", b"1"))["l"] == ["1", 1]


def test_array_add_unique_errors():
    state = make({"l": [1], "mixed": [1, {"a": 1}], "o": {}})
    assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "l", b'{"a":1}')) == sd.SUBDOC_VALUE_CANTINSERT
    assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "l", b"[1]")) == sd.SUBDOC_VALUE_CANTINSERT
    assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "l", b"2,3")) == sd.SUBDOC_VALUE_CANTINSERT
    assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "mixed", b"5")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "o", b"5")) == sd.SUBDOC_PATH_MISMATCH
    assert spec_failure(mut1(state, sd.ARRAY_ADD_UNIQUE, "nope", b"5")) == sd.SUBDOC_PATH_ENOENT
    assert body_of(mut1(state, sd.ARRAY_ADD_UNIQUE, "nope", b"5", sd.MKDIR_P))["nope"] == [5]


def test_array_add_unique_on_root_array():
    assert body_of(mut1(make([1]), sd.ARRAY_ADD_UNIQUE, "", b"2")) == [1, 2]
    assert spec_failure(mut1(make([1]), sd.ARRAY_ADD_UNIQUE, "", b"1")) == sd.SUBDOC_PATH_EEXISTS


# --- mutations: counter ------------------------------------------------------------------------


def test_counter_increments_and_returns_ascii():
    out = mut1(make({"n": 5}), sd.COUNTER, "n", b"10")
    assert body_of(out) == {"n": 15}
    assert out.results == [(0, 0, b"15")]
    out = mut1(make({"n": 5}), sd.COUNTER, "n", b"-7")
    assert body_of(out) == {"n": -2} and out.results == [(0, 0, b"-2")]
    out = mut1(make({"l": [1, 2]}), sd.COUNTER, "l[-1]", b"1")
    assert body_of(out) == {"l": [1, 3]}


def test_counter_creates_missing_path():
    out = mut1(make({}), sd.COUNTER, "n", b"-3")
    assert body_of(out) == {"n": -3} and out.results == [(0, 0, b"-3")]
    assert spec_failure(mut1(make({}), sd.COUNTER, "a.b", b"1")) == sd.SUBDOC_PATH_ENOENT
    assert body_of(mut1(make({}), sd.COUNTER, "a.b", b"1", sd.MKDIR_P)) == {"a": {"b": 1}}
    assert spec_failure(mut1(make({"l": []}), sd.COUNTER, "l[0]", b"1")) == sd.SUBDOC_PATH_ENOENT


@pytest.mark.parametrize("delta", [b"0", b"-0", b"1.5", b"1e3", b"abc", b"+1", b" 1", b"01", b"9223372036854775808",
                                   b"-9223372036854775809", b"1" * 5000, "١".encode()])
def test_counter_bad_delta(delta):
    assert spec_failure(mut1(make({"n": 1}), sd.COUNTER, "n", delta)) == sd.SUBDOC_DELTA_EINVAL


def test_counter_delta_extremes_are_valid():
    assert body_of(mut1(make({"n": 0}), sd.COUNTER, "n", b"9223372036854775807"))["n"] == 2 ** 63 - 1
    assert body_of(mut1(make({"n": 0}), sd.COUNTER, "n", b"-9223372036854775808"))["n"] == -(2 ** 63)


@pytest.mark.parametrize("existing", [b"1.0", b"1e2", b'"5"', b"true", b"null", b"[1]", b"{}"])
def test_counter_on_non_integer_is_mismatch(existing):
    state = make(raw=b'{"n":' + existing + b"}")
    assert spec_failure(mut1(state, sd.COUNTER, "n", b"1")) == sd.SUBDOC_PATH_MISMATCH


def test_counter_range_errors():
    assert spec_failure(mut1(make({"n": 2 ** 63}), sd.COUNTER, "n", b"1")) == sd.SUBDOC_NUM_ERANGE
    assert spec_failure(mut1(make(raw=b'{"n":' + b"9" * 5000 + b"}"), sd.COUNTER, "n", b"1")) == sd.SUBDOC_NUM_ERANGE
    assert spec_failure(mut1(make({"n": 2 ** 63 - 1}), sd.COUNTER, "n", b"1")) == sd.SUBDOC_NUM_ERANGE
    assert spec_failure(mut1(make({"n": -(2 ** 63)}), sd.COUNTER, "n", b"-1")) == sd.SUBDOC_NUM_ERANGE
    assert body_of(mut1(make({"n": 2 ** 63 - 2}), sd.COUNTER, "n", b"1"))["n"] == 2 ** 63 - 1


# --- mutations: request validation ---------------------------------------------------------------


def test_mutation_spec_count_limits():
    sixteen = [(sd.COUNTER, 0, "n", b"1")] * 16
    out = mutate(make({}), sixteen)
    assert body_of(out) == {"n": 16} and [r[2] for r in out.results] == [str(i).encode() for i in range(1, 17)]
    assert mutate(make({}), sixteen + sixteen[:1]).status == sd.SUBDOC_INVALID_COMBO
    assert mutate(make({}), []).status == sd.SUBDOC_INVALID_COMBO


@pytest.mark.parametrize("opcode", [sd.GET, sd.EXISTS, sd.GET_COUNT, sd.WHOLE_DOC_GET, 0x99])
def test_mutation_rejects_lookup_opcodes(opcode):
    out = mutate(make({}), [(sd.DICT_UPSERT, 0, "a", b"1"), (opcode, 0, "a", b"")])
    assert (out.status, out.failed_index) == (sd.SUBDOC_INVALID_COMBO, -1)


@pytest.mark.parametrize("spec, status", [
    ((sd.DICT_UPSERT, 0, "", b"1"), sd.EINVAL),
    ((sd.COUNTER, 0, "", b"1"), sd.EINVAL),
    ((sd.ARRAY_PUSH_LAST, sd.XATTR, "", b"1"), sd.EINVAL),
    ((sd.DICT_UPSERT, 0, "a", b""), sd.EINVAL),
    ((sd.ARRAY_PUSH_LAST, 0, "a", b""), sd.EINVAL),
    ((sd.COUNTER, 0, "a", b""), sd.EINVAL),
    ((sd.DELETE, 0, "a", b"1"), sd.EINVAL),
    ((sd.WHOLE_DOC_SET, 0, "a", b"{}"), sd.EINVAL),
    ((sd.WHOLE_DOC_SET, sd.XATTR, "", b"{}"), sd.EINVAL),
    ((sd.WHOLE_DOC_DELETE, 0, "a", b""), sd.EINVAL),
    ((sd.WHOLE_DOC_DELETE, 0, "", b"x"), sd.EINVAL),
    ((sd.REPLACE, sd.MKDIR_P, "a", b"1"), sd.EINVAL),
    ((sd.DELETE, sd.MKDIR_P, "a", b""), sd.EINVAL),
    ((sd.ARRAY_INSERT, sd.MKDIR_P, "a[0]", b"1"), sd.EINVAL),
    ((sd.DICT_UPSERT, sd.BINARY_VALUE, "a", b"1"), sd.EINVAL),
    ((sd.DICT_UPSERT, sd.EXPAND_MACROS, "a", b"1"), sd.SUBDOC_XATTR_INVALID_FLAG_COMBO),
    ((sd.DICT_UPSERT, sd.XATTR, "$document.x", b"1"), sd.SUBDOC_XATTR_CANT_MODIFY_VATTR),
    ((sd.DELETE, sd.XATTR, "$xyz", b""), sd.SUBDOC_XATTR_CANT_MODIFY_VATTR),
    ((sd.DICT_UPSERT, sd.XATTR, "k" * 17, b"1"), sd.XATTR_EINVAL),
    ((sd.DICT_UPSERT, sd.XATTR, "[0]", b"1"), sd.XATTR_EINVAL),
])
def test_mutation_document_level_validation(spec, status):
    state = make({"a": [1]})
    out = mutate(state, [spec])
    assert (out.status, out.failed_index, out.failed_status) == (status, -1, 0)
    assert out.body == state.body and out.xattrs == state.xattrs and out.results == []


@pytest.mark.parametrize("doc_flags, status", [
    (sd.MKDOC | sd.ADD, sd.SUBDOC_INVALID_COMBO),
    (sd.REVIVE_DOCUMENT | sd.ACCESS_DELETED, sd.NOT_SUPPORTED),
    (sd.CREATE_AS_DELETED | sd.ACCESS_DELETED, sd.EINVAL),
    (sd.REPLICA_READ, sd.EINVAL),
    (0x80, sd.EINVAL),
])
def test_mutation_doc_flag_validation(doc_flags, status):
    assert mutate(make({}), [(sd.DICT_UPSERT, 0, "a", b"1")], doc_flags).status == status


def test_mutation_path_errors_are_per_spec():
    out = mutate(make({}), [(sd.DICT_UPSERT, 0, "a", b"1"), (sd.DICT_UPSERT, 0, "a..b", b"1")])
    assert (out.status, out.failed_index, out.failed_status) == (sd.SUBDOC_MULTI_PATH_FAILURE, 1,
                                                                 sd.SUBDOC_PATH_EINVAL)
    out = mutate(make({}), [(sd.DICT_UPSERT, 0, "a" * 1025, b"1")])
    assert (out.failed_index, out.failed_status) == (0, sd.SUBDOC_PATH_E2BIG)


# --- atomicity --------------------------------------------------------------------------------


def test_multi_mutation_is_atomic():
    raw = b'{"a": 1, "l": [1]}'
    state = make(raw=raw, xattrs={"m": {"v": 1}})
    out = mutate(state, [
        (sd.DICT_UPSERT, sd.XATTR, "m.v", b"2"),
        (sd.DICT_UPSERT, 0, "b", b"2"),
        (sd.COUNTER, 0, "a", b"1"),
        (sd.ARRAY_PUSH_LAST, 0, "l", b"2"),
        (sd.DICT_ADD, 0, "a", b"9"),          # fails: exists
        (sd.DICT_UPSERT, 0, "c", b"3"),
    ])
    assert (out.status, out.failed_index, out.failed_status) == (sd.SUBDOC_MULTI_PATH_FAILURE, 4,
                                                                 sd.SUBDOC_PATH_EEXISTS)
    assert out.body == raw
    assert out.xattrs == state.xattrs
    assert out.results == [] and not out.created and not out.deleted
    # the input state itself is never modified
    assert state.body == raw and json.loads(state.xattrs["m"]) == {"v": 1}


def test_specs_run_in_order_on_the_evolving_document():
    out = mutate(make({}), [
        (sd.DICT_UPSERT, 0, "l", b"[]"),
        (sd.ARRAY_PUSH_LAST, 0, "l", b"1"),
        (sd.ARRAY_INSERT, 0, "l[0]", b"0"),
        (sd.COUNTER, 0, "l[-1]", b"4"),
        (sd.DELETE, 0, "l[0]", b""),
        (sd.DICT_ADD, 0, "l2", b"true"),
        (sd.REPLACE, 0, "l2", b"false"),
    ])
    assert body_of(out) == {"l": [5], "l2": False}
    assert out.results == [(3, 0, b"5")]


def test_unmodified_body_bytes_are_preserved():
    raw = b'{ "keep" :  "formatting" }'
    out = mutate(make(raw=raw), [(sd.DICT_UPSERT, sd.XATTR, "m", b"1")])
    assert out.status == sd.SUCCESS and out.body == raw and out.xattrs == {"m": b"1"}


# --- MKDOC / ADD -------------------------------------------------------------------------------


def test_missing_document_without_flags_is_key_enoent():
    out = mutate(DocState(), [(sd.DICT_UPSERT, 0, "a", b"1")])
    assert (out.status, out.body, out.created) == (sd.KEY_ENOENT, None, False)


def test_mkdoc_creates_object_document():
    out = mutate(DocState(), [(sd.DICT_UPSERT, 0, "a.b", b"1")], sd.MKDOC)
    assert body_of(out) == {"a": {"b": 1}}  # MKDOC implies MKDIR_P
    assert out.created and out.status == sd.SUCCESS


def test_mkdoc_creates_array_document_for_root_array_ops():
    out = mutate(DocState(), [(sd.ARRAY_PUSH_LAST, 0, "", b"1,2")], sd.MKDOC)
    assert out.body == b"[1,2]" and out.created
    out = mutate(DocState(), [(sd.ARRAY_ADD_UNIQUE, 0, "", b'"x"')], sd.ADD)
    assert out.body == b'["x"]'
    out = mutate(DocState(), [(sd.ARRAY_INSERT, 0, "[0]", b"7")], sd.MKDOC)
    assert out.body == b"[7]"


def test_mkdoc_with_only_xattrs_creates_empty_object_body():
    out = mutate(DocState(), [(sd.DICT_UPSERT, sd.XATTR, "m.x", b"1")], sd.MKDOC)
    assert (out.body, out.xattrs, out.created) == (b"{}", {"m": b'{"x":1}'}, True)


def test_mkdoc_on_existing_document_just_mutates():
    out = mutate(make({"a": 1}), [(sd.DICT_UPSERT, 0, "b.c", b"2")], sd.MKDOC)
    assert body_of(out) == {"a": 1, "b": {"c": 2}} and not out.created


def test_mkdoc_failure_creates_nothing():
    out = mutate(DocState(), [(sd.DICT_UPSERT, 0, "a", b"1"), (sd.REPLACE, 0, "nope", b"1")], sd.MKDOC)
    assert (out.status, out.failed_index, out.body, out.created) == (sd.SUBDOC_MULTI_PATH_FAILURE, 1, None, False)


def test_add_creates_and_fails_on_existing():
    out = mutate(DocState(), [(sd.DICT_ADD, 0, "a", b"1")], sd.ADD)
    assert body_of(out) == {"a": 1} and out.created
    assert mutate(make({}), [(sd.DICT_ADD, 0, "a", b"1")], sd.ADD).status == sd.KEY_EEXISTS


def test_whole_doc_set_with_mkdoc_on_missing_document():
    out = mutate(DocState(), [(sd.WHOLE_DOC_SET, 0, "", b'{"x": 1}')], sd.MKDOC)
    assert (out.status, out.body, out.created) == (0, b'{"x": 1}', True)


# --- whole-document ops -------------------------------------------------------------------------


def test_whole_doc_set_replaces_body_verbatim():
    out = mutate(make({"a": 1}, xattrs={"m": 1}), [(sd.WHOLE_DOC_SET, 0, "", b'{ "b" : 2 }')])
    assert out.status == 0 and out.body == b'{ "b" : 2 }' and out.xattrs == {"m": b"1"}
    out = mutate(make({"a": 1}), [(sd.WHOLE_DOC_SET, 0, "", b"\x00raw")])
    assert out.status == 0 and out.body == b"\x00raw"


def test_body_specs_after_whole_doc_set_see_the_new_body():
    out = mutate(make({"a": 1}), [(sd.WHOLE_DOC_SET, 0, "", b'{"b":1}'), (sd.COUNTER, 0, "b", b"1")])
    assert body_of(out) == {"b": 2}
    out = mutate(make({"a": 1}), [(sd.WHOLE_DOC_SET, 0, "", b"raw"), (sd.COUNTER, 0, "b", b"1")])
    assert (out.failed_index, out.failed_status) == (1, sd.SUBDOC_DOC_NOTJSON)


def test_whole_doc_set_over_non_json_body():
    out = mutate(make(raw=b"not json"), [(sd.WHOLE_DOC_SET, 0, "", b"[1]")])
    assert out.status == 0 and out.body == b"[1]"


def test_whole_doc_delete_prunes_user_xattrs():
    state = make({"a": 1}, xattrs={"user": 1, "_sys": {"t": 1}})
    out = mutate(state, [(sd.DICT_UPSERT, sd.XATTR, "_sys.t", b"2"), (sd.WHOLE_DOC_DELETE, 0, "", b"")])
    assert out.status == sd.SUCCESS and out.deleted and not out.created
    assert out.body is None
    assert out.xattrs == {"_sys": b'{"t":2}'}


def test_whole_doc_delete_combinations():
    state = make({"a": 1})
    out = mutate(state, [(sd.WHOLE_DOC_DELETE, 0, "", b""), (sd.DICT_UPSERT, 0, "a", b"1")])
    assert out.status == sd.SUBDOC_INVALID_COMBO
    assert mutate(state, [(sd.WHOLE_DOC_DELETE, 0, "", b"")], sd.MKDOC).status == sd.SUBDOC_INVALID_COMBO
    out = mutate(DocState(), [(sd.WHOLE_DOC_DELETE, 0, "", b"")])
    assert out.status == sd.KEY_ENOENT


# --- mutations: xattrs ---------------------------------------------------------------------------


def test_xattr_upsert_and_nested_paths():
    state = make({"a": 1}, xattrs={"m": {"x": 1}, "other": 5})
    out = mutate(state, [(sd.DICT_UPSERT, sd.XATTR, "m.y", b'"s"'), (sd.COUNTER, sd.XATTR, "m.x", b"2")])
    assert out.status == 0
    assert out.xattrs == {"m": b'{"x":3,"y":"s"}', "other": b"5"}
    assert out.body == state.body and out.results == [(1, 0, b"3")]


def test_xattr_create_key_and_mkdir():
    out = mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR, "new", b"[1]")])
    assert out.xattrs == {"new": b"[1]"}
    assert mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR, "new.a.b", b"1")]).failed_status == sd.SUBDOC_PATH_ENOENT
    out = mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR | sd.MKDIR_P, "new.a.b", b"1")])
    assert out.xattrs == {"new": b'{"a":{"b":1}}'}
    out = mutate(make({}), [(sd.ARRAY_PUSH_LAST, sd.XATTR | sd.MKDIR_P, "arr", b"1")])
    assert out.xattrs == {"arr": b"[1]"}


def test_xattr_delete_removes_the_key():
    out = mutate(make({}, xattrs={"m": 1, "n": 2}), [(sd.DELETE, sd.XATTR, "m", b"")])
    assert out.status == 0 and out.xattrs == {"n": b"2"}
    out = mutate(make({}, xattrs={"m": 1}), [(sd.DELETE, sd.XATTR, "zz", b"")])
    assert out.failed_status == sd.SUBDOC_PATH_ENOENT


def test_xattr_value_depth_is_measured_on_its_own():
    ok = json.dumps(nested(32)).encode()
    assert mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR, "k", ok)]).status == sd.SUCCESS
    too_deep = json.dumps(nested(33)).encode()
    assert mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR, "k", too_deep)]).failed_status == sd.SUBDOC_VALUE_ETOODEEP


def test_mutation_xattr_order_and_key_combo():
    state = make({}, xattrs={"a": 1, "b": 2})
    out = mutate(state, [(sd.DICT_UPSERT, 0, "x", b"1"), (sd.DICT_UPSERT, sd.XATTR, "a", b"1")])
    assert out.status == sd.SUBDOC_INVALID_XATTR_ORDER
    out = mutate(state, [(sd.DICT_UPSERT, sd.XATTR, "a", b"1"), (sd.DICT_UPSERT, sd.XATTR, "b", b"1")])
    assert out.status == sd.SUBDOC_XATTR_INVALID_KEY_COMBO
    out = mutate(state, [(sd.WHOLE_DOC_SET, 0, "", b"{}"), (sd.DICT_UPSERT, sd.XATTR, "a", b"1")])
    assert out.status == sd.SUBDOC_INVALID_XATTR_ORDER


def test_xattr_too_large_is_e2big():
    big = b'"' + b"x" * (1024 * 1024) + b'"'
    out = mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR, "big", big)])
    assert out.status == sd.E2BIG and out.xattrs == {}


def test_document_too_large_is_e2big(monkeypatch):
    monkeypatch.setattr(sd, "MAX_DOC_SIZE", 64)
    assert mutate(make({}), [(sd.DICT_UPSERT, 0, "a", b'"' + b"x" * 40 + b'"')]).status == sd.SUCCESS
    out = mutate(make({}), [(sd.DICT_UPSERT, 0, "a", b'"' + b"x" * 80 + b'"')])
    assert out.status == sd.E2BIG and out.body == b"{}"


# --- macros -----------------------------------------------------------------------------------


def crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C, independent of the engine's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def test_crc32c_reference_check_value():
    assert crc32c_reference(b"123456789") == 0xE3069283


def test_mutation_macros_expand():
    cas = 0x0102030405060708
    out = mutate(make({"a": 1}), [
        (sd.DICT_UPSERT, sd.XATTR | sd.EXPAND_MACROS | sd.MKDIR_P, "txn.info",
         b'{"cas":"${Mutation.CAS}","seq":"${Mutation.seqno}","crc":"${Mutation.value_crc32c}",'
         b'"list":["${Mutation.CAS}", "plain ${Mutation.CAS}"]}'),
    ], new_cas=cas, new_seqno=0x1F)
    info = json.loads(out.xattrs["txn"])["info"]
    assert info["cas"] == "0x0807060504030201"  # little-endian bytes of the CAS
    assert info["seq"] == "0x000000000000001f"
    assert info["crc"] == "0x%08x" % crc32c_reference(b'{"a": 1}')
    assert info["list"] == ["0x0807060504030201", "plain ${Mutation.CAS}"]


def test_crc32c_macro_sees_the_final_body():
    out = mutate(make({"a": 1}), [
        (sd.DICT_UPSERT, sd.XATTR | sd.EXPAND_MACROS, "crc", b'"${Mutation.value_crc32c}"'),
        (sd.WHOLE_DOC_SET, 0, "", b"123456789"),
    ])
    assert out.xattrs["crc"] == b'"0xe3069283"'
    out = mutate(make({"a": 1}), [
        (sd.DICT_UPSERT, sd.XATTR | sd.EXPAND_MACROS, "crc", b'"${Mutation.value_crc32c}"'),
        (sd.DICT_UPSERT, 0, "b", b"2"),
    ])
    assert out.xattrs["crc"] == b'"0x%08x"' % crc32c_reference(out.body)


def test_macros_are_not_expanded_without_the_flag():
    out = mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR, "m", b'"${Mutation.CAS}"')], new_cas=5)
    assert out.xattrs == {"m": b'"${Mutation.CAS}"'}


def test_macro_in_array_ops():
    out = mutate(make({}, xattrs={"l": []}), [
        (sd.ARRAY_PUSH_LAST, sd.XATTR | sd.EXPAND_MACROS, "l", b'"${Mutation.seqno}", 1'),
    ], new_seqno=2)
    assert json.loads(out.xattrs["l"]) == ["0x0000000000000002", 1]


def test_document_macros_expand_to_the_old_state():
    state = make({"a": 1}, cas=0xABC, expiry=77, flags=3)
    out = mutate(state, [(sd.DICT_UPSERT, sd.XATTR | sd.EXPAND_MACROS, "restore",
                          b'{"CAS":"${$document.CAS}","exptime":"${$document.exptime}",'
                          b'"dt":"${$document.datatype}","all":"${$document}"}')], new_cas=0xDEF)
    restore = json.loads(out.xattrs["restore"])
    assert restore["CAS"] == "0x0000000000000abc"
    assert restore["exptime"] == 77
    assert restore["dt"] == ["json"]
    assert restore["all"]["flags"] == 3


@pytest.mark.parametrize("value, status", [
    (b'"${Mutation.Nope}"', sd.SUBDOC_XATTR_UNKNOWN_MACRO),
    (b'{"x":["${mutation.cas}"]}', sd.SUBDOC_XATTR_UNKNOWN_MACRO),
    (b'"${$document.nope}"', sd.SUBDOC_XATTR_UNKNOWN_VATTR_MACRO),
    (b'"${$other}"', sd.SUBDOC_XATTR_UNKNOWN_VATTR_MACRO),
    (b'"${$document..x}"', sd.SUBDOC_XATTR_UNKNOWN_VATTR_MACRO),
])
def test_unknown_macros(value, status):
    out = mutate(make({}), [(sd.DICT_UPSERT, sd.XATTR | sd.EXPAND_MACROS, "m", value)])
    assert (out.status, out.failed_index, out.failed_status) == (sd.SUBDOC_MULTI_PATH_FAILURE, 0, status)
    assert out.xattrs == {}


# --- mutations on tombstones ------------------------------------------------------------------------


def test_tombstone_mutation_needs_access_deleted():
    out = mutate(tombstone(), [(sd.DICT_UPSERT, sd.XATTR, "_sys.x", b"1")])
    assert out.status == sd.KEY_ENOENT


def test_tombstone_xattr_mutation_with_access_deleted():
    out = mutate(tombstone(), [(sd.DICT_UPSERT, sd.XATTR, "_sys.x", b"1")], sd.ACCESS_DELETED)
    assert out.status == sd.SUBDOC_SUCCESS_DELETED
    assert out.body is None and out.xattrs == {"_sys": b'{"txn":"t1","x":1}'}
    assert not out.created and not out.deleted
    out = mutate(tombstone(), [(sd.REPLACE, sd.XATTR, "_sys.nope", b"1")], sd.ACCESS_DELETED)
    assert (out.status, out.failed_index, out.failed_status) == (sd.SUBDOC_MULTI_PATH_FAILURE_DELETED, 0,
                                                                 sd.SUBDOC_PATH_ENOENT)


def test_tombstone_body_changes_are_refused():
    out = mutate(tombstone(), [(sd.DICT_UPSERT, 0, "a", b"1")], sd.ACCESS_DELETED)
    assert out.status == sd.SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE
    out = mutate(tombstone(), [(sd.WHOLE_DOC_SET, 0, "", b"{}")], sd.ACCESS_DELETED)
    assert out.status == sd.SUBDOC_DELETED_DOCUMENT_CANT_HAVE_VALUE
    assert mutate(tombstone(), [(sd.WHOLE_DOC_DELETE, 0, "", b"")], sd.ACCESS_DELETED).status == sd.KEY_ENOENT


def test_mkdoc_over_tombstone_creates_a_fresh_document():
    out = mutate(tombstone(), [(sd.DICT_UPSERT, 0, "a", b"1")], sd.MKDOC)
    assert out.status == sd.SUCCESS and out.created
    assert out.body == b'{"a":1}' and out.xattrs == {}


# --- properties ------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
)
json_docs = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=6), children, max_size=4),
    ),
    max_leaves=20,
)


def escape_key(key: str) -> str:
    """Write a key as a path component, quoting it when needed."""
    if any(ch in key for ch in ".[]`"):
        return "`" + key.replace("`", "``") + "`"
    return key


def random_path(data: Any, doc: Any) -> Tuple[str, Any, List[Any]]:
    """Draw a non-empty path into ``doc``; return it, the sub-value and the components."""
    parts: List[str] = []
    comps: List[Any] = []
    node = doc
    while isinstance(node, (dict, list)) and node:
        if parts and data.draw(st.booleans()):
            break
        if isinstance(node, dict):
            key = data.draw(st.sampled_from(sorted(node)))
            parts.append(("." if parts else "") + escape_key(key))
            comps.append(key)
            node = node[key]
        else:
            idx = data.draw(st.integers(min_value=-1, max_value=len(node) - 1))
            parts.append("[%d]" % idx)
            comps.append(idx)
            node = node[idx]
    return "".join(parts), node, comps


@settings(max_examples=300, deadline=None)
@given(doc=json_docs.filter(lambda d: isinstance(d, (dict, list)) and d), ascii_only=st.booleans(), data=st.data())
def test_property_get_returns_the_sub_value(doc, ascii_only, data):
    assume(sd._depth(doc) <= sd.MAX_DEPTH)
    path, expected, comps = random_path(data, doc)
    assume(len(comps) <= sd.MAX_PATH_COMPONENTS and len(path.encode()) <= sd.MAX_PATH_LENGTH)
    assert parse_path(path) == comps
    state = DocState(body=json.dumps(doc, ensure_ascii=ascii_only).encode())
    top, results = lookup(state, [(sd.GET, 0, path), (sd.EXISTS, 0, path)])
    assert top == sd.SUCCESS, (path, results)
    assert json.loads(results[0][1]) == expected
    assert results[1] == (sd.SUCCESS, b"")


@settings(max_examples=200, deadline=None)
@given(doc=json_docs.filter(lambda d: isinstance(d, (dict, list)) and d), new=json_docs, data=st.data())
def test_property_replace_and_delete_match_a_python_model(doc, new, data):
    path, _, comps = random_path(data, doc)
    assume(len(comps) <= sd.MAX_PATH_COMPONENTS and len(path.encode()) <= sd.MAX_PATH_LENGTH)
    assume(sd._depth(doc) <= sd.MAX_DEPTH and len(comps) + sd._depth(new) <= sd.MAX_DEPTH)
    state = DocState(body=json.dumps(doc).encode())

    replaced = json.loads(json.dumps(doc))
    parent = replaced
    for comp in comps[:-1]:
        parent = parent[comp]
    parent[comps[-1]] = new
    out = mutate(state, [(sd.REPLACE, 0, path, json.dumps(new).encode())])
    assert out.status == sd.SUCCESS and json.loads(out.body) == replaced

    removed = json.loads(json.dumps(doc))
    parent = removed
    for comp in comps[:-1]:
        parent = parent[comp]
    del parent[comps[-1]]
    out = mutate(state, [(sd.DELETE, 0, path, b"")])
    assert out.status == sd.SUCCESS and json.loads(out.body) == removed

"""Tests for value and key conversion: couchbase_core.transcoder and the
FMT_* flags (kv-protocol.md §6)."""

from __future__ import annotations

import json
import pickle
from fractions import Fraction

import pytest

import couchbase_core
from couchbase_core import (
    FMT_AUTO,
    FMT_BYTES,
    FMT_COMMON_MASK,
    FMT_JSON,
    FMT_LEGACY_MASK,
    FMT_PICKLE,
    FMT_UTF8,
)
from couchbase_core.exceptions import ArgumentError, CouchbaseInputError, ValueFormatError
from couchbase_core.transcoder import (
    LegacyTranscoder,
    Transcoder,
    TranscoderPP,
    decode_value,
    encode_key,
    encode_value,
    format_of,
)


def test_flag_constants():
    assert FMT_JSON == 0x02000000
    assert FMT_PICKLE == 0x01000001
    assert FMT_BYTES == 0x03000002
    assert FMT_UTF8 == 0x04000004
    assert FMT_COMMON_MASK == 0xFF000000
    assert FMT_LEGACY_MASK == 0x07
    # each format's common byte and legacy bits agree with the spec table
    assert [(f >> 24, f & FMT_LEGACY_MASK) for f in (FMT_JSON, FMT_PICKLE, FMT_BYTES, FMT_UTF8)] == [
        (2, 0), (1, 1), (3, 2), (4, 4)]


# -- encode/decode pairs --------------------------------------------------------------


@pytest.mark.parametrize("value, fmt, stored", [
    ({"a": 1, "b": [True, None]}, FMT_JSON, b'{"a":1,"b":[true,null]}'),
    ([1, 2.5, "x"], FMT_JSON, b'[1,2.5,"x"]'),
    ("text", FMT_JSON, b'"text"'),
    (42, FMT_JSON, b"42"),
    ({"k": "\u00e9\u4e2d"}, FMT_JSON, '{"k":"\u00e9\u4e2d"}'.encode("utf-8")),
    ("h\u00e9llo \U0001f600", FMT_UTF8, "h\u00e9llo \U0001f600".encode("utf-8")),
    ("", FMT_UTF8, b""),
    (b"\x00\xff\x10", FMT_BYTES, b"\x00\xff\x10"),
    (b"", FMT_BYTES, b""),
])
def test_encode_decode_pairs(value, fmt, stored):
    data, flags = encode_value(value, fmt)
    assert data == stored
    assert type(data) is bytes
    assert flags == fmt
    assert decode_value(data, flags) == value


@pytest.mark.parametrize("value", [{"a": (1, 2)}, Fraction(1, 3), {1, 2, 3}, ("t", 1), None, b"raw"])
def test_pickle_pair(value):
    data, flags = encode_value(value, FMT_PICKLE)
    assert flags == FMT_PICKLE
    assert pickle.loads(data) == value
    assert decode_value(data, flags) == value


def test_tuple_as_json_reads_back_as_list():
    data, flags = encode_value((1, 2), FMT_JSON)
    assert (data, flags) == (b"[1,2]", FMT_JSON)
    assert decode_value(data, flags) == [1, 2]


@pytest.mark.parametrize("value", [bytearray(b"ab"), memoryview(b"cd")])
def test_bytes_like_with_fmt_bytes(value):
    data, flags = encode_value(value, FMT_BYTES)
    assert type(data) is bytes
    assert data == bytes(value)
    assert flags == FMT_BYTES


# -- FMT_AUTO --------------------------------------------------------------------------


@pytest.mark.parametrize("value, flags", [
    ("s", FMT_UTF8),
    (b"b", FMT_BYTES),
    (bytearray(b"b"), FMT_BYTES),
    (memoryview(b"b"), FMT_BYTES),
    ({"d": 1}, FMT_JSON),
    ([1], FMT_JSON),
    ((1,), FMT_JSON),
    (7, FMT_PICKLE),  # as 2.x: only dict/list/tuple/bool/None are JSON
    (1.5, FMT_PICKLE),
    (True, FMT_JSON),
    (None, FMT_JSON),
    ({1, 2}, FMT_PICKLE),
    (Fraction(2, 3), FMT_PICKLE),
    (frozenset("ab"), FMT_PICKLE),
])
def test_fmt_auto_chooses_by_type(value, flags):
    data, got = encode_value(value, FMT_AUTO)
    assert got == flags
    assert type(data) is bytes
    back = decode_value(data, got)
    if isinstance(value, (bytearray, memoryview)):
        assert back == bytes(value)
    elif isinstance(value, tuple):
        assert back == list(value)
    else:
        assert back == value


def test_fmt_auto_never_stores_auto_flag():
    for value in ("s", b"b", {}, 1, {1}):
        assert encode_value(value, FMT_AUTO)[1] & FMT_AUTO == 0


# -- reading flags ------------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [
    (FMT_JSON, FMT_JSON),
    (0x02000006, FMT_JSON),   # common byte wins over the low bits
    (0x00000000, FMT_JSON),
    (0x00000001, FMT_PICKLE),
    (0x00000002, FMT_BYTES),
    (0x00000004, FMT_UTF8),
    (0x01000000, FMT_PICKLE),
    (0x03000000, FMT_BYTES),
    (0x04000000, FMT_UTF8),
    (0x00000003, 0),
    (0x00000005, 0),
    (0x00000007, 0),
    (0x05000000, 0),
    (0xFF000004, 0),
])
def test_format_of(flags, expected):
    assert format_of(flags) == expected


def test_legacy_and_shared_flags_read_as_json():
    assert decode_value(b'{"a":1}', 0x02000006) == {"a": 1}
    assert decode_value(b'{"a":1}', 0) == {"a": 1}


def test_legacy_low_bits_read():
    assert decode_value(pickle.dumps({"p": 1}), 0x01) == {"p": 1}
    assert decode_value(b"\x01\x02", 0x02) == b"\x01\x02"
    assert decode_value("caf\u00e9".encode("utf-8"), 0x04) == "caf\u00e9"


@pytest.mark.parametrize("flags", [0x03, 0x05, 0x06, 0x07, 0x05000000, 0x7F000000, 0xFF000000, 0x80000000])
def test_unknown_flags_return_raw_bytes(flags):
    data = b"\xff\xfenot anything"
    assert decode_value(data, flags) is data


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, fmt", [
    (b"bytes", FMT_UTF8),
    (123, FMT_UTF8),
    ("text", FMT_BYTES),
    (12, FMT_BYTES),
    ({1, 2}, FMT_JSON),
    (object(), FMT_JSON),
    ({"k": object()}, FMT_JSON),
    (lambda: 0, FMT_PICKLE),
    ("\ud800", FMT_UTF8),
])
def test_unencodable_values(value, fmt):
    with pytest.raises(ValueFormatError) as info:
        encode_value(value, fmt)
    err = info.value
    assert isinstance(err, CouchbaseInputError)
    assert err.rc == ValueFormatError.CODE
    assert err.objextra is value


def test_unencodable_json_keeps_inner_cause():
    with pytest.raises(ValueFormatError) as info:
        encode_value({1, 2}, FMT_JSON)
    assert isinstance(info.value.inner_cause, TypeError)


@pytest.mark.parametrize("data, flags", [
    (b"{not json", FMT_JSON),
    (b"", FMT_JSON),
    (b"\xff\xfe", FMT_JSON),
    (b"{bad", 0x00),
    (b"\xff\xfe", FMT_UTF8),
    (b"\xc3", 0x04),
    (b"not a pickle", FMT_PICKLE),
    (b"", 0x01),
])
def test_undecodable_stored_values(data, flags):
    with pytest.raises(ValueFormatError) as info:
        decode_value(data, flags)
    assert info.value.objextra == data


@pytest.mark.parametrize("fmt", [0x05000000, 0x12345678, 0x03])
def test_unknown_format_on_encode(fmt):
    with pytest.raises(ArgumentError):
        encode_value("x", fmt)


def test_non_int_format_on_encode():
    with pytest.raises(ArgumentError):
        encode_value("x", "json")


def test_shared_flags_as_format_keep_their_bits():
    # a flags word with a known common byte but extra low bits is kept as given
    data, flags = encode_value({"a": 1}, 0x02000006)
    assert (data, flags) == (b'{"a":1}', 0x02000006)


# -- converters -----------------------------------------------------------------------


def test_set_json_converters_changes_behaviour_and_returns_old():
    calls = []

    def enc(obj):
        calls.append(("enc", obj))
        return json.dumps({"wrapped": obj})

    def dec(text):
        calls.append(("dec", text))
        return ("decoded", json.loads(text))

    old = couchbase_core.set_json_converters(enc, dec)
    try:
        assert callable(old[0]) and callable(old[1])
        data, flags = encode_value([1], FMT_JSON)
        assert data == b'{"wrapped": [1]}'
        assert flags == FMT_JSON
        assert decode_value(b"[2]", FMT_JSON) == ("decoded", [2])
        assert calls == [("enc", [1]), ("dec", "[2]")]
        # the second swap returns exactly the pair installed by the first
        again = couchbase_core.set_json_converters(*old)
        assert again == (enc, dec)
        couchbase_core.set_json_converters(enc, dec)
    finally:
        couchbase_core.set_json_converters(*old)
    assert encode_value([1], FMT_JSON) == (b"[1]", FMT_JSON)
    assert decode_value(b"[2]", FMT_JSON) == [2]


def test_json_encoder_may_return_bytes():
    old = couchbase_core.set_json_converters(lambda o: b"BYTES", json.loads)
    try:
        assert encode_value({"x": 1}, FMT_JSON) == (b"BYTES", FMT_JSON)
    finally:
        couchbase_core.set_json_converters(*old)


def test_json_encoder_returning_non_text_is_value_format_error():
    old = couchbase_core.set_json_converters(lambda o: 5, json.loads)
    try:
        with pytest.raises(ValueFormatError):
            encode_value({"x": 1}, FMT_JSON)
    finally:
        couchbase_core.set_json_converters(*old)


def test_set_pickle_converters_changes_behaviour_and_returns_old():
    old = couchbase_core.set_pickle_converters(lambda o: b"P:" + repr(o).encode(), lambda b: ("unpickled", b))
    try:
        assert encode_value({1}, FMT_PICKLE) == (b"P:{1}", FMT_PICKLE)
        # FMT_AUTO picks pickle for a set and so uses the new encoder too
        assert encode_value({2}, FMT_AUTO) == (b"P:{2}", FMT_PICKLE)
        assert decode_value(b"zz", FMT_PICKLE) == ("unpickled", b"zz")
    finally:
        restored = couchbase_core.set_pickle_converters(*old)
    assert restored[1](b"x") == ("unpickled", b"x")
    assert decode_value(pickle.dumps({3}), FMT_PICKLE) == {3}


def test_failing_custom_decoder_is_value_format_error():
    def boom(_):
        raise RuntimeError("no")

    old = couchbase_core.set_pickle_converters(pickle.dumps, boom)
    try:
        with pytest.raises(ValueFormatError) as info:
            decode_value(b"x", FMT_PICKLE)
        assert isinstance(info.value.inner_cause, RuntimeError)
    finally:
        couchbase_core.set_pickle_converters(*old)


@pytest.mark.parametrize("setter", [couchbase_core.set_json_converters, couchbase_core.set_pickle_converters])
def test_converters_must_be_callable(setter):
    with pytest.raises(ArgumentError):
        setter("not callable", json.loads)
    # the failed call left the defaults in place
    assert encode_value([1], FMT_JSON) == (b"[1]", FMT_JSON)
    assert decode_value(pickle.dumps(5), FMT_PICKLE) == 5


# -- transcoder classes -------------------------------------------------------------


@pytest.mark.parametrize("value, fmt, legacy", [
    ({"a": 1}, FMT_JSON, 0x00),
    ({1}, FMT_PICKLE, 0x01),
    (b"raw", FMT_BYTES, 0x02),
    ("txt", FMT_UTF8, 0x04),
    ("auto", FMT_AUTO, 0x04),
    (b"auto", FMT_AUTO, 0x02),
    ([1], FMT_AUTO, 0x00),
])
def test_legacy_transcoder_flags(value, fmt, legacy):
    tc = LegacyTranscoder()
    data, flags = tc.encode_value(value, fmt)
    assert flags == legacy
    assert data == Transcoder().encode_value(value, fmt)[0]
    assert tc.decode_value(data, flags) == value


def test_default_transcoders_match_module_functions():
    for tc in (Transcoder(), TranscoderPP()):
        assert tc.encode_value({"a": 1}, FMT_JSON) == (b'{"a":1}', FMT_JSON)
        assert tc.decode_value(b"x", FMT_BYTES) == b"x"
        assert tc.encode_key("k\u00e9") == "k\u00e9".encode("utf-8")
        assert tc.decode_key(b"abc") == "abc"
        assert tc.decode_key(b"\xff") == b"\xff"


def test_transcoder_subclass_override():
    class Upper(Transcoder):
        def encode_key(self, key):
            return super().encode_key(key.upper())

        def encode_value(self, value, format):  # noqa: A002
            if format == FMT_UTF8:
                return value[::-1].encode(), 0x04000000
            return super().encode_value(value, format)

        def decode_value(self, value, flags):
            if flags == 0x04000000:
                return value.decode()[::-1]
            return super().decode_value(value, flags)

    tc = Upper()
    assert tc.encode_key("abc") == b"ABC"
    assert tc.encode_value("abc", FMT_UTF8) == (b"cba", 0x04000000)
    assert tc.decode_value(b"cba", 0x04000000) == "abc"
    # methods not overridden keep the default behaviour
    assert tc.encode_value([1], FMT_JSON) == (b"[1]", FMT_JSON)
    assert tc.decode_key(b"k") == "k"


# -- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("key, expected", [
    ("abc", b"abc"),
    ("\u00e9", b"\xc3\xa9"),
    (b"raw\xff", b"raw\xff"),
    (bytearray(b"ba"), b"ba"),
])
def test_encode_key_accepts_text_and_bytes(key, expected):
    out = encode_key(key)
    assert out == expected
    assert type(out) is bytes


def test_encode_key_str_subclass():
    class Name(str):
        pass

    assert encode_key(Name("sub")) == b"sub"


@pytest.mark.parametrize("key", [1, 1.5, None, ["k"], object()])
def test_encode_key_rejects_other_types(key):
    with pytest.raises(ArgumentError):
        encode_key(key)
    with pytest.raises(ArgumentError):
        Transcoder().encode_key(key)


def test_fmt_auto_str_subclass_is_text():
    class Name(str):
        pass

    data, flags = encode_value(Name("abc"), FMT_AUTO)
    assert flags == FMT_UTF8
    assert data == b"abc"


def test_fmt_auto_other_subclasses_follow_base_type():
    class Blob(bytes):
        pass

    class Doc(dict):
        pass

    assert encode_value(Blob(b"xy"), FMT_AUTO) == (b"xy", FMT_BYTES)
    assert encode_value(Doc(a=1), FMT_AUTO) == (b'{"a":1}', FMT_JSON)

"""Tests for the sans-I/O frame codec in couchbase_core._engine.protocol.

The byte strings in the first half are copied from the worked examples of
spec/kv-protocol.md §9; the second half checks the incremental decoder
against an independent description of the same frames.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from couchbase_core._engine.protocol import (
    HEADER,
    HEADER_LEN,
    RUN,
    RUN_STATUS,
    FrameDecoder,
    FrameError,
    Magic,
    Opcode,
    Status,
    decode_frame_infos,
    encode_frame_infos,
    encode_request,
    encode_response,
    expand_run,
    opcode_name,
    run_from,
    status_name,
)


def hexbytes(text: str) -> bytes:
    """Bytes from a spaced / multi-line hex dump."""
    return bytes.fromhex(" ".join(text.replace("|", " ").split()))


def decode_all(data: bytes) -> list:
    dec = FrameDecoder()
    frames = dec.feed(data)
    assert dec.buffered == 0
    return frames


def flags_expiry(flags: int, expiry: int = 0) -> bytes:
    return struct.pack(">II", flags, expiry)


def vbucket_of(key: bytes, num: int = 1024) -> int:
    return ((zlib.crc32(key) >> 16) & 0x7FFF) % num


# -- §9 worked examples: requests ------------------------------------------------

GET_FOO = hexbytes("""
    80 00 00 03  00 00 00 05  00 00 00 03  00 00 00 01
    00 00 00 00  00 00 00 00  66 6f 6f
""")

SET_FOO = hexbytes("""
    80 01 00 03  08 00 00 73  00 00 00 12  00 00 00 02
    00 00 00 00  00 00 00 00  02 00 00 06  00 00 00 00
    66 6f 6f 7b  22 61 22 3a  31 7d
""")

SET_FOO_RESPONSE = hexbytes("""
    81 01 00 00  10 00 00 00  00 00 00 10  00 00 00 02
    16 fa 2b 3c  4d 5e 6f 70  00 00 a1 b2  c3 d4 e5 f6
    00 00 00 00  00 00 00 2a
""")

SET_FOO_DURABLE = hexbytes("""
    08 01 04 03  08 00 00 73  00 00 00 16  00 00 00 03
    00 00 00 00  00 00 00 00  13 01 27 10  02 00 00 06
    00 00 00 00  66 6f 6f 7b  22 61 22 3a  31 7d
""")

HELLO = hexbytes("""
    80 1f 00 08  00 00 00 00  00 00 00 18  00 00 00 0a
    00 00 00 00  00 00 00 00  70 79 63 62  2f 30 2e 31
    00 03 00 04  00 06 00 07  00 08 00 0b  00 10 00 11
""")

MULTI_LOOKUP = hexbytes("""
    80 d0 00 04  00 00 01 85  00 00 00 14  00 00 00 05
    00 00 00 00  00 00 00 00  64 6f 63 31  c5 00 00 04
    6e 61 6d 65  c6 00 00 04  74 61 67 73
""")

MULTI_MUTATION = hexbytes("""
    80 d1 00 04  00 00 01 85  00 00 00 1e  00 00 00 06
    00 00 00 00  00 00 00 00  64 6f 63 31  c8 01 00 04
    00 00 00 04  6e 61 6d 65  22 41 6c 22  cf 00 00 01
    00 00 00 01  6e 31
""")


def test_get_example_bytes():
    req = encode_request(Opcode.GET, key=b"foo", vbucket=5, opaque=1)
    assert len(req) == 27
    assert req == GET_FOO


def test_get_example_header_fields():
    magic, opcode, keylen, extlen, datatype, vb, bodylen, opaque, cas = HEADER.unpack_from(GET_FOO)
    assert (magic, opcode, keylen, extlen, datatype) == (Magic.REQUEST, Opcode.GET, 3, 0, 0)
    assert (vb, bodylen, opaque, cas) == (5, 3, 1, 0)


def test_set_example_bytes():
    assert vbucket_of(b"foo") == 115
    req = encode_request(Opcode.SET, key=b"foo", extras=flags_expiry(0x02000006), value=b'{"a":1}',
                         vbucket=115, opaque=2)
    assert len(req) == 42
    assert req == SET_FOO
    # bodylen 0x12 = 8 extras + 3 key + 7 value
    assert HEADER.unpack_from(req)[6] == 0x12 == 8 + 3 + 7


def test_set_response_example_decodes():
    frames = decode_all(SET_FOO_RESPONSE)
    assert len(frames) == 1
    magic, opcode, status, datatype, opaque, cas, extras, key, value, framing = frames[0]
    assert (magic, opcode, status, datatype, opaque) == (Magic.RESPONSE, Opcode.SET, Status.SUCCESS, 0, 2)
    assert cas == 0x16FA2B3C4D5E6F70
    assert len(extras) == 16
    vb_uuid, seqno = struct.unpack(">QQ", extras)
    assert vb_uuid == 0x0000A1B2C3D4E5F6
    assert seqno == 42
    assert (key, value, framing) == (b"", b"", b"")


def test_set_response_example_encodes():
    extras = struct.pack(">QQ", 0x0000A1B2C3D4E5F6, 42)
    out = encode_response(Opcode.SET, Status.SUCCESS, extras=extras, opaque=2, cas=0x16FA2B3C4D5E6F70)
    assert out == SET_FOO_RESPONSE


def test_durable_set_example_bytes():
    framing = encode_frame_infos([(1, b"\x01\x27\x10")])
    assert framing == b"\x13\x01\x27\x10"
    req = encode_request(Opcode.SET, key=b"foo", extras=flags_expiry(0x02000006), value=b'{"a":1}',
                         vbucket=115, opaque=3, framing=framing)
    assert req[0] == Magic.ALT_REQUEST
    assert req == SET_FOO_DURABLE
    # the frame info round-trips to durability level 1 (majority), 10000 ms
    (fid, data), = decode_frame_infos(req[HEADER_LEN:HEADER_LEN + req[2]])
    assert fid == 1
    assert data[0] == 0x01
    assert struct.unpack(">H", data[1:])[0] == 10000


def test_not_my_vbucket_response_header():
    out = encode_response(Opcode.GET, Status.NOT_MY_VBUCKET, opaque=1)
    assert out[:8] == hexbytes("81 00 00 00 00 00 00 07")
    assert out == hexbytes("81 00 00 00 00 00 00 07  00 00 00 00  00 00 00 01  00 00 00 00 00 00 00 00")
    frame, = decode_all(out)
    assert frame[:6] == (Magic.RESPONSE, Opcode.GET, Status.NOT_MY_VBUCKET, 0, 1, 0)
    assert frame[6:] == (b"", b"", b"", b"")


def test_hello_example_bytes():
    features = [0x03, 0x04, 0x06, 0x07, 0x08, 0x0B, 0x10, 0x11]
    req = encode_request(Opcode.HELLO, key=b"pycb/0.1", value=struct.pack(">8H", *features), opaque=10)
    assert req == HELLO
    assert HEADER.unpack_from(req)[6] == 0x18 == 8 + 16


def _lookup_spec(opcode: int, path: bytes, pathflags: int = 0) -> bytes:
    return struct.pack(">BBH", opcode, pathflags, len(path)) + path


def _mutation_spec(opcode: int, path: bytes, value: bytes, pathflags: int = 0) -> bytes:
    return struct.pack(">BBHI", opcode, pathflags, len(path), len(value)) + path + value


def test_multi_lookup_example_bytes():
    assert vbucket_of(b"doc1") == 389 == 0x0185
    body = _lookup_spec(Opcode.SUBDOC_GET, b"name") + _lookup_spec(Opcode.SUBDOC_EXISTS, b"tags")
    req = encode_request(Opcode.SUBDOC_MULTI_LOOKUP, key=b"doc1", value=body, vbucket=389, opaque=5)
    assert req == MULTI_LOOKUP


def test_multi_lookup_example_response_value():
    value = hexbytes('00 00 | 00 00 00 05') + b'"Bob"' + hexbytes('00 c0 | 00 00 00 00')
    wire = encode_response(Opcode.SUBDOC_MULTI_LOOKUP, 0xCC, value=value, opaque=5)
    frame, = decode_all(wire)
    assert frame[2] == 0xCC
    got = frame[8]
    specs = []
    pos = 0
    while pos < len(got):
        status, vlen = struct.unpack_from(">HI", got, pos)
        pos += 6
        specs.append((status, got[pos:pos + vlen]))
        pos += vlen
    assert specs == [(0x00, b'"Bob"'), (0xC0, b"")]


def test_multi_mutation_example_bytes():
    body = (_mutation_spec(Opcode.SUBDOC_DICT_UPSERT, b"name", b'"Al"', pathflags=0x01)
            + _mutation_spec(Opcode.SUBDOC_COUNTER, b"n", b"1"))
    req = encode_request(Opcode.SUBDOC_MULTI_MUTATION, key=b"doc1", value=body, vbucket=389, opaque=6)
    assert req == MULTI_MUTATION
    assert HEADER.unpack_from(req)[6] == 0x1E


def test_multi_mutation_example_response_value():
    wire = encode_response(Opcode.SUBDOC_MULTI_MUTATION, value=hexbytes("01 | 00 00 | 00 00 00 01 | 36"), opaque=6)
    frame, = decode_all(wire)
    index, status, vlen = struct.unpack_from(">BHI", frame[8])
    assert (index, status, vlen) == (1, 0, 1)
    assert frame[8][7:] == b"6"


def test_increment_example_extras_and_bodylen():
    extras = struct.pack(">QQI", 1, 0, 0)
    assert extras == hexbytes("00 00 00 00 00 00 00 01  00 00 00 00 00 00 00 00  00 00 00 00")
    assert vbucket_of(b"counter") == 290
    req = encode_request(Opcode.INCREMENT, key=b"counter", extras=extras, vbucket=290, opaque=9)
    magic, opcode, keylen, extlen, _dt, vb, bodylen, opaque, _cas = HEADER.unpack_from(req)
    assert (magic, opcode, keylen, extlen, vb, opaque) == (0x80, 0x05, 7, 0x14, 290, 9)
    assert bodylen == 0x1B
    assert req[HEADER_LEN:HEADER_LEN + 0x14] == extras
    assert req[HEADER_LEN + 0x14:] == b"counter"
    assert len(req) == HEADER_LEN + 0x1B


def test_request_with_framing_limits():
    with pytest.raises(ValueError):
        encode_request(Opcode.GET, key=b"k" * 256, framing=b"\x00")
    with pytest.raises(ValueError):
        encode_request(Opcode.GET, key=b"k", framing=b"\x0f" + bytes(300))
    # a 256-byte key is fine without framing (classic header has 16 bits)
    req = encode_request(Opcode.GET, key=b"k" * 256)
    assert HEADER.unpack_from(req)[2] == 256


def test_names():
    assert opcode_name(Opcode.GET) == "GET"
    assert opcode_name(0xD1) == "SUBDOC_MULTI_MUTATION"
    assert opcode_name(0x42) == "0x42"
    assert status_name(Status.KEY_ENOENT) == "KEY_ENOENT"
    assert status_name(0x07) == "NOT_MY_VBUCKET"
    assert status_name(0xEE) == "0xee"


# -- decoder: special magics and multi-frame replies ------------------------------


def test_alt_response_with_framing_hand_built():
    # magic 0x18, GET, framing 3, key 3, extras 4, body 3+4+3+3 = 13
    wire = hexbytes("""
        18 00 03 03  04 01 00 00  00 00 00 0d  00 00 00 09
        00 00 00 00  00 00 00 2a  02 12 34  00 00 00 06  66 6f 6f  62 61 72
    """)
    frame, = decode_all(wire)
    assert frame == (0x18, 0x00, 0x0000, 0x01, 9, 42, b"\x00\x00\x00\x06", b"foo", b"bar", b"\x02\x12\x34")
    assert decode_frame_infos(frame[9]) == [(0, b"\x12\x34")]


def test_alt_response_round_trip_via_encoder():
    framing = encode_frame_infos([(0, b"\x00\x10"), (1, b"\x00\x03")])
    wire = encode_response(Opcode.GETK, Status.SUCCESS, key=b"k" * 255, extras=b"\x00\x00\x00\x02",
                           value=b"v" * 1000, opaque=77, cas=5, datatype=1, framing=framing)
    assert wire[0] == Magic.ALT_RESPONSE
    assert wire[2] == len(framing)
    assert wire[3] == 255
    frame, = decode_all(wire)
    assert frame == (0x18, Opcode.GETK, 0, 1, 77, 5, b"\x00\x00\x00\x02", b"k" * 255, b"v" * 1000, framing)


def server_request(opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
                   vbucket: int = 0, opaque: int = 0, cas: int = 0) -> bytes:
    body = len(extras) + len(key) + len(value)
    return struct.pack(">BBHBBHIIQ", 0x82, opcode, len(key), len(extras), 0, vbucket, body, opaque,
                       cas) + extras + key + value


def test_server_request_magic_0x82():
    config = b'{"rev":12,"name":"default"}'
    extras = struct.pack(">qq", 3, 12)
    wire = server_request(0x01, key=b"default", extras=extras, value=config, vbucket=0, opaque=0)
    frame, = decode_all(wire)
    magic, opcode, vb, datatype, opaque, cas, ext, key, value, framing = frame
    assert (magic, opcode, vb, datatype, opaque, cas) == (0x82, 0x01, 0, 0, 0, 0)
    assert struct.unpack(">qq", ext) == (3, 12)
    assert key == b"default"
    assert value == config
    assert framing == b""


def test_server_request_status_slot_holds_vbucket():
    frame, = decode_all(server_request(0x01, extras=b"\x00\x00\x00\x05", vbucket=0x1234))
    assert frame[2] == 0x1234
    assert frame[6] == b"\x00\x00\x00\x05"


def test_stat_replies_share_one_opaque():
    stats = [(b"pid", b"1234"), (b"uptime", b"99"), (b"version", b"1.6.21")]
    wire = b"".join(encode_response(Opcode.STAT, key=k, value=v, opaque=0xDEADBEEF) for k, v in stats)
    wire += encode_response(Opcode.STAT, opaque=0xDEADBEEF)  # empty terminator
    frames = decode_all(wire)
    assert len(frames) == 4
    assert {f[4] for f in frames} == {0xDEADBEEF}
    assert [(f[7], f[8]) for f in frames] == stats + [(b"", b"")]


def test_mixed_magics_in_one_chunk():
    parts = [
        encode_response(Opcode.NOOP, opaque=1),
        encode_response(Opcode.GET, value=b"x", extras=b"\0\0\0\0", opaque=2, framing=b"\x02\x00\x01"),
        server_request(0x01, key=b"b", value=b"{}"),
        encode_response(Opcode.GET, Status.KEY_ENOENT, value=b"Not found", opaque=3),
    ]
    frames = decode_all(b"".join(parts))
    assert [f[0] for f in frames] == [0x81, 0x18, 0x82, 0x81]
    assert [f[4] for f in frames] == [1, 2, 0, 3]
    assert frames[3][2] == Status.KEY_ENOENT
    assert frames[3][8] == b"Not found"


def test_empty_feed_returns_nothing():
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    assert dec.buffered == 0
    dec.feed_eof()  # nothing pending: must be accepted
    assert dec.feed(encode_response(Opcode.NOOP, opaque=4))[0][4] == 4


# -- decoder property tests ------------------------------------------------------


@st.composite
def response_frames(draw, small=False):
    """A (wire bytes, expected tuple) pair for one frame the decoder accepts."""
    kind = draw(st.sampled_from(["classic", "classic", "alt", "server"]))
    opcode = draw(st.integers(0, 0xFF))
    status = draw(st.integers(0, 0xFFFF))
    datatype = draw(st.integers(0, 0xFF))
    opaque = draw(st.integers(0, 0xFFFFFFFF))
    cas = draw(st.integers(0, 0xFFFFFFFFFFFFFFFF))
    extras = draw(st.binary(max_size=32))
    if small:
        key = draw(st.binary(max_size=12))
        value = draw(st.binary(max_size=40))
    else:
        key = draw(st.binary(max_size=255 if kind == "alt" else 300))
        value = draw(st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=4096)))
    if kind == "alt":
        framing = draw(st.binary(min_size=1, max_size=40))
        wire = encode_response(opcode, status, key=key, extras=extras, value=value, opaque=opaque, cas=cas,
                               datatype=datatype, framing=framing)
        return wire, (0x18, opcode, status, datatype, opaque, cas, extras, key, value, framing)
    if kind == "server":
        wire = server_request(opcode, key=key, extras=extras, value=value, vbucket=status, opaque=opaque, cas=cas)
        wire = wire[:5] + bytes([datatype]) + wire[6:]
        return wire, (0x82, opcode, status, datatype, opaque, cas, extras, key, value, b"")
    wire = encode_response(opcode, status, key=key, extras=extras, value=value, opaque=opaque, cas=cas,
                           datatype=datatype)
    return wire, (0x81, opcode, status, datatype, opaque, cas, extras, key, value, b"")


frame_lists = st.lists(response_frames(), min_size=1, max_size=6)

PROP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])


def _stream(frames):
    wire = b"".join(w for w, _ in frames)
    expected = [e for _, e in frames]
    return wire, expected


def _feed_chunks(chunks):
    dec = FrameDecoder()
    out = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return dec, out


@PROP
@given(frame_lists)
def test_decode_whole_stream(frames):
    wire, expected = _stream(frames)
    dec, out = _feed_chunks([wire])
    assert out == expected
    assert dec.buffered == 0
    dec.feed_eof()


@PROP
@given(frame_lists)
def test_decode_one_byte_at_a_time(frames):
    wire, expected = _stream(frames)
    dec, out = _feed_chunks([wire[i:i + 1] for i in range(len(wire))])
    assert out == expected
    assert dec.buffered == 0
    dec.feed_eof()


def test_decode_split_at_every_index():
    frames = [
        (encode_response(Opcode.GET, extras=b"\0\0\0\x01", value=b"hello", opaque=1, cas=7),
         (0x81, 0, 0, 0, 1, 7, b"\0\0\0\x01", b"", b"hello", b"")),
        (encode_response(Opcode.NOOP, opaque=2), (0x81, Opcode.NOOP, 0, 0, 2, 0, b"", b"", b"", b"")),
        (encode_response(Opcode.GETK, 1, key=b"kk", value=b"nf", opaque=3, framing=b"\x02\xab\xcd"),
         (0x18, Opcode.GETK, 1, 0, 3, 0, b"", b"kk", b"nf", b"\x02\xab\xcd")),
        (server_request(0x02, key=b"bkt", extras=b"\0" * 4, opaque=9),
         (0x82, 0x02, 0, 0, 9, 0, b"\0" * 4, b"bkt", b"", b"")),
    ]
    wire, expected = _stream(frames)
    for i in range(len(wire) + 1):
        dec, out = _feed_chunks([wire[:i], wire[i:]])
        assert out == expected, i
        assert dec.buffered == 0


@PROP
@given(st.lists(response_frames(small=True), min_size=1, max_size=3))
def test_decode_small_streams_split_everywhere(frames):
    wire, expected = _stream(frames)
    for i in range(len(wire) + 1):
        # two pieces cut at i, and three pieces with a one-byte middle
        for chunks in ([wire[:i], wire[i:]], [wire[:i], wire[i:i + 1], wire[i + 1:]]):
            dec, out = _feed_chunks(chunks)
            assert out == expected
            assert dec.buffered == 0


@PROP
@given(frame_lists, st.data())
def test_decode_random_chunking(frames, data):
    wire, expected = _stream(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    bounds = [0] + cuts + [len(wire)]
    chunks = [wire[a:b] for a, b in zip(bounds, bounds[1:])]
    assert b"".join(chunks) == wire
    dec, out = _feed_chunks(chunks)
    assert out == expected
    assert dec.buffered == 0


@PROP
@given(frame_lists, st.data())
def test_truncated_stream_is_reported(frames, data):
    wire, expected = _stream(frames)
    boundaries = [0]
    for w, _ in frames:
        boundaries.append(boundaries[-1] + len(w))
    cut = data.draw(st.integers(1, len(wire) - 1).filter(lambda c: c not in boundaries))
    last_boundary = max(b for b in boundaries if b < cut)
    complete = boundaries.index(last_boundary)
    split = data.draw(st.integers(0, cut))
    dec, out = _feed_chunks([wire[:split], wire[split:cut]])
    assert out == expected[:complete]
    assert dec.buffered == cut - last_boundary > 0
    with pytest.raises(FrameError):
        dec.feed_eof()


@PROP
@given(frame_lists, st.data())
def test_prefix_at_frame_boundary_is_clean(frames, data):
    wire, expected = _stream(frames)
    n = data.draw(st.integers(0, len(frames)))
    prefix = b"".join(w for w, _ in frames[:n])
    dec, out = _feed_chunks([prefix])
    assert out == expected[:n]
    assert dec.buffered == 0
    dec.feed_eof()


# -- decoder: garbage -------------------------------------------------------------


GOOD = encode_response(Opcode.NOOP, opaque=1)


@pytest.mark.parametrize("magic", [0x00, 0x80, 0x08, 0x83, 0x42, 0xFF])
def test_bad_magic_full_header(magic):
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(bytes([magic]) + GOOD[1:])


@pytest.mark.parametrize("length", [1, 2, 10, 23])
def test_bad_magic_in_partial_header(length):
    dec = FrameDecoder()
    bad = bytes([0x80]) + GOOD[1:]
    with pytest.raises(FrameError):
        dec.feed(bad[:length])


def test_bad_magic_after_good_frame_partial():
    dec = FrameDecoder()
    assert len(dec.feed(GOOD)) == 1
    with pytest.raises(FrameError):
        dec.feed(b"\x99\x00")


def test_bad_magic_after_good_frame_same_chunk():
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(GOOD + b"\x7f" + GOOD[1:])


def _header(magic=0x81, keylen=0, extlen=0, bodylen=0, framelen=None):
    if framelen is not None:
        return struct.pack(">BBBBBBHIIQ", magic, 0, framelen, keylen, extlen, 0, 0, bodylen, 0, 0)
    return struct.pack(">BBHBBHIIQ", magic, 0, keylen, extlen, 0, 0, bodylen, 0, 0)


def test_body_over_max_body_fails_before_body_arrives():
    dec = FrameDecoder(max_body=100)
    with pytest.raises(FrameError):
        dec.feed(_header(bodylen=101))


def test_body_over_max_body_fails_when_header_completes_in_pieces():
    dec = FrameDecoder(max_body=100)
    hdr = _header(bodylen=5000)
    assert dec.feed(hdr[:10]) == []
    assert dec.buffered == 10
    with pytest.raises(FrameError):
        dec.feed(hdr[10:])


def test_body_at_max_body_is_accepted():
    dec = FrameDecoder(max_body=100)
    wire = encode_response(Opcode.GET, value=b"z" * 100, opaque=3)
    frame, = dec.feed(wire)
    assert frame[8] == b"z" * 100


def test_default_max_body_rejects_huge_length():
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(_header(bodylen=0xFFFFFFFF))


@pytest.mark.parametrize("with_body", [False, True])
def test_extras_plus_key_longer_than_body(with_body):
    dec = FrameDecoder()
    wire = _header(keylen=3, extlen=4, bodylen=5)
    if with_body:
        wire += b"12345"
    with pytest.raises(FrameError):
        dec.feed(wire)


def test_alt_framing_plus_key_longer_than_body():
    dec = FrameDecoder()
    with pytest.raises(FrameError):
        dec.feed(_header(magic=0x18, framelen=3, keylen=2, extlen=0, bodylen=4) + b"\x00" * 4)


def test_lengths_equal_to_body_are_fine():
    wire = _header(keylen=3, extlen=2, bodylen=5) + b"EEkey"
    frame, = decode_all(wire)
    assert (frame[6], frame[7], frame[8]) == (b"EE", b"key", b"")


@pytest.mark.parametrize("garbage", [
    b"\x00" * 24,
    _header(bodylen=10 ** 9),
    _header(keylen=9, bodylen=1) + b"x",
])
def test_decoder_refuses_input_after_error(garbage):
    dec = FrameDecoder(max_body=1 << 20)
    with pytest.raises(FrameError):
        dec.feed(garbage)
    with pytest.raises(FrameError):
        dec.feed(GOOD)
    with pytest.raises(FrameError):
        dec.feed(b"")


def test_decoder_refuses_input_after_partial_header_error():
    dec = FrameDecoder()
    dec.feed(GOOD[:5])
    with pytest.raises(FrameError):
        dec.feed(GOOD[5:] + b"\x01")
    with pytest.raises(FrameError):
        dec.feed(GOOD)


# -- frame infos --------------------------------------------------------------------


@pytest.mark.parametrize("infos, encoded", [
    ([], b""),
    ([(0, b"")], b"\x00"),
    ([(1, b"\x01\x27\x10")], b"\x13\x01\x27\x10"),
    ([(5, b""), (1, b"\x02")], b"\x50\x11\x02"),
    ([(14, b"x" * 14)], b"\xee" + b"x" * 14),
    ([(15, b"")], b"\xf0\x00"),
    ([(16, b"ab")], b"\xf2\x01ab"),
    ([(2, b"y" * 15)], b"\x2f\x00" + b"y" * 15),
    ([(20, b"z" * 20)], b"\xff\x05\x05" + b"z" * 20),
    ([(270, b"q" * 270)], b"\xff\xff\xff" + b"q" * 270),
])
def test_frame_info_encoding(infos, encoded):
    assert encode_frame_infos(infos) == encoded
    assert decode_frame_infos(encoded) == infos


frame_infos = st.lists(st.tuples(st.integers(0, 270), st.binary(max_size=270)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(frame_infos)
def test_frame_info_round_trip(infos):
    encoded = encode_frame_infos(infos)
    assert decode_frame_infos(encoded) == infos


@settings(max_examples=150, deadline=None)
@given(frame_infos.filter(bool), st.data())
def test_frame_info_truncation(infos, data):
    encoded = encode_frame_infos(infos)
    ends = [0]
    for item in infos:
        ends.append(ends[-1] + len(encode_frame_infos([item])))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    if cut in ends:
        assert decode_frame_infos(encoded[:cut]) == infos[:ends.index(cut)]
    else:
        with pytest.raises(FrameError):
            decode_frame_infos(encoded[:cut])


@pytest.mark.parametrize("data", [
    b"\xf0",          # id escape byte missing
    b"\x0f",          # length escape byte missing
    b"\xff\x00",      # id escape present, length escape missing
    b"\x13\x01",      # two of three data bytes
    b"\x2f\x01" + b"x" * 15,   # 16 bytes promised, 15 present
    b"\x00\x11",      # second object has no data
])
def test_truncated_frame_infos_raise(data):
    with pytest.raises(FrameError):
        decode_frame_infos(data)


def test_response_frame_info_server_duration():
    # id 0 (server duration), two bytes of encoded time
    assert decode_frame_infos(b"\x02\x00\x10") == [(0, b"\x00\x10")]


def test_complete_frame_over_max_body_fails_even_in_one_chunk():
    dec = FrameDecoder(max_body=100)
    with pytest.raises(FrameError):
        dec.feed(encode_response(Opcode.GET, value=b"x" * 200))


# -- runs (FrameDecoder.run_window) ---------------------------------------------
#
# A run is only another shape for frames the decoder would return anyway:
# with any window, expanding every run gives back exactly the frames decoded
# without one, in the same order, whatever the chunking. These tests hold the
# decoder to that, and to the shape of a run.


@st.composite
def run_candidates(draw, opaque):
    """A reply that may join a run (a GET/GAT success, 4 bytes of flags, no
    key), or one that almost does (snappy value, a key, other extras, an
    error status)."""
    flags = draw(st.integers(0, 0xFFFFFFFF))
    value = draw(st.binary(max_size=20))
    cas = draw(st.integers(0, 0xFFFFFFFFFFFFFFFF))
    opcode = draw(st.sampled_from([Opcode.GET, Opcode.GET, Opcode.GAT]))
    datatype = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    odd = draw(st.sampled_from(["none"] * 6 + ["key", "extras", "status"]))
    key = b"k" if odd == "key" else b""
    extras = b"\0" * 8 if odd == "extras" else struct.pack(">I", flags)
    status = Status.KEY_ENOENT if odd == "status" else 0
    wire = encode_response(opcode, status, key=key, extras=extras, value=value, opaque=opaque, cas=cas,
                           datatype=datatype)
    return wire, (0x81, opcode, status, datatype, opaque, cas, extras, key, value, b"")


@st.composite
def run_streams(draw):
    """Replies with mostly consecutive opaques (some skipped, some repeated),
    strangers between them, and a window over part of them."""
    items = []
    opaque = draw(st.integers(0, 50))
    for _ in range(draw(st.integers(1, 14))):
        if draw(st.integers(0, 5)) == 0:
            items.append(draw(response_frames(small=True)))
            continue
        opaque += draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
        items.append(draw(run_candidates(opaque)))
    lo = draw(st.integers(0, 60))
    hi = draw(st.integers(lo, 80))
    return items, lo, hi


def _feed_window(chunks, lo, hi):
    dec = FrameDecoder()
    dec.run_window(lo, hi)
    out = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return dec, out


def _expanded(items):
    frames = []
    for item in items:
        frames.extend(expand_run(item) if item[0] == RUN else [item])
    return frames


def _check_runs(items, lo, hi):
    for item in items:
        if item[0] != RUN:
            continue
        _m, opcode, status, datatype, first, cas, flags, key, values, framing = item
        assert status == RUN_STATUS and key == b"" and framing == b""
        assert not datatype & 0x02, "a compressed value never joins a run"
        assert len(cas) == len(flags) == len(values) >= 1
        assert lo <= first and first + len(values) <= hi, "a run stays inside its window"


@PROP
@given(run_streams(), st.data())
def test_runs_expand_to_the_frames_decoded_without_a_window(stream, data):
    items, lo, hi = stream
    wire, expected = _stream(items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    bounds = [0] + cuts + [len(wire)]
    chunks = [wire[a:b] for a, b in zip(bounds, bounds[1:])]
    dec, out = _feed_window(chunks, lo, hi)
    assert _expanded(out) == expected
    assert dec.buffered == 0
    _check_runs(out, lo, hi)


def test_a_run_split_at_every_index():
    replies = [encode_response(Opcode.GET, extras=struct.pack(">I", 7 + o), value=b"v%d" % o, opaque=o, cas=o)
               for o in range(10, 16)]
    replies.insert(3, encode_response(Opcode.GET, Status.KEY_ENOENT, value=b"Not found", opaque=13))
    del replies[4]  # opaque 13 answered with an error instead
    wire = b"".join(replies)
    whole = FrameDecoder().feed(wire)
    dec = FrameDecoder()
    dec.run_window(10, 16)
    out = dec.feed(wire)
    assert [item[0] for item in out] == [RUN, 0x81, RUN]
    assert out[0][4] == 10 and out[0][8] == [b"v10", b"v11", b"v12"] and out[0][6] == [17, 18, 19]
    assert out[2][4] == 14 and out[2][8] == [b"v14", b"v15"]
    for i in range(len(wire) + 1):
        dec, out = _feed_window([wire[:i], wire[i:]], 10, 16)
        assert _expanded(out) == whole, i
        _check_runs(out, 10, 16)


def test_expand_run_from_an_offset():
    wire = b"".join(encode_response(Opcode.GET, extras=b"\0\0\0\x01", value=b"%d" % o, opaque=o, cas=o)
                    for o in range(5, 9))
    dec = FrameDecoder()
    dec.run_window(0, 100)
    run, = dec.feed(wire)
    assert expand_run(run_from(run, 2)) == FrameDecoder().feed(wire)[2:]
    assert expand_run(run_from(run, 4)) == []


def test_frames_outside_the_window_are_frames():
    wire = b"".join(encode_response(Opcode.GET, extras=b"\0" * 4, value=b"x", opaque=o) for o in range(1, 6))
    dec = FrameDecoder()
    dec.run_window(2, 4)
    out = dec.feed(wire)
    assert [(item[0], item[4]) for item in out] == [(0x81, 1), (RUN, 2), (0x81, 4), (0x81, 5)]
    assert len(out[1][8]) == 2
    dec.run_window(0, 0)
    assert all(item[0] == 0x81 for item in dec.feed(wire)), "an empty window turns runs off"


def test_a_run_starts_only_where_a_second_reply_of_the_same_shape_follows():
    def reply(opcode, opaque):
        return encode_response(opcode, extras=b"\0" * 4, value=b"x", opaque=opaque)

    dec = FrameDecoder()
    dec.run_window(0, 1 << 32)
    assert [item[0] for item in dec.feed(reply(Opcode.GET, 1))] == [0x81], "a lone reply is a frame"
    assert [item[0] for item in dec.feed(reply(Opcode.GET, 2) + reply(Opcode.GAT, 3))] == [0x81, 0x81]
    # the header and flags of the second reply are not in yet: no run
    wire = reply(Opcode.GET, 4) + reply(Opcode.GET, 5)
    assert [item[0] for item in dec.feed(wire[:-2])] == [0x81]
    assert [item[0] for item in dec.feed(wire[-2:])] == [0x81]
    out = dec.feed(reply(Opcode.GET, 6) + reply(Opcode.GET, 7))
    assert [(item[0], item[4]) for item in out] == [(RUN, 6)] and out[0][8] == [b"x", b"x"]


@pytest.mark.parametrize("position", ["first", "inside"])
def test_a_body_over_max_body_inside_a_window_still_fails(position):
    good = encode_response(Opcode.GET, extras=b"\0" * 4, value=b"ok", opaque=1)
    big = encode_response(Opcode.GET, extras=b"\0" * 4, value=b"x" * 200, opaque=1 if position == "first" else 2)
    dec = FrameDecoder(max_body=100)
    dec.run_window(0, 10)
    with pytest.raises(FrameError):
        dec.feed(big if position == "first" else good + big)


@pytest.mark.parametrize("bodylen", [0, 3])
def test_a_frame_shorter_than_its_extras_inside_a_run_fails(bodylen):
    good = encode_response(Opcode.GET, extras=b"\0" * 4, value=b"ok", opaque=1)
    bad = struct.pack(">BBHBBHIIQ", 0x81, 0, 0, 4, 0, 0, bodylen, 2, 0) + b"\0" * bodylen
    dec = FrameDecoder()
    dec.run_window(0, 10)
    with pytest.raises(FrameError):
        dec.feed(good + bad + b"\0" * 8)

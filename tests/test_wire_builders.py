"""The request builders, body decoders and wire constants of protocol.py.

Expected bytes are written out by hand from the layouts of
spec/kv-protocol.md (§2 headers and frame infos, §5 extras and bodies, §7
sub-document, §9 worked examples); builders with a decoder are also checked
by a round trip.
"""

from __future__ import annotations

import pytest

from couchbase_core import subdocument as SD
from couchbase_core._engine.protocol import (
    COUNTER_EXTRAS,
    COUNTER_NO_CREATE,
    COUNTER_VALUE,
    EXPIRY_EXTRAS,
    FLAGS_EXTRAS,
    MUTATION_TOKEN,
    STORE_EXTRAS,
    SUBDOC_EMPTY_PATH_OPCODES,
    ConfigPush,
    Datatype,
    DurabilityLevel,
    FrameDecoder,
    FrameError,
    FrameInfoId,
    GetMeta,
    Magic,
    ObserveSeqno,
    ObserveState,
    Opcode,
    ResponseFrameInfoId,
    ServerOpcode,
    Status,
    SubdocDocFlag,
    SubdocPathFlag,
    counter_request,
    decode_config_push,
    decode_error_map,
    decode_frame_infos,
    decode_get_meta,
    decode_hello,
    decode_observe,
    decode_observe_seqno,
    decode_subdoc_failure,
    decode_subdoc_lookup,
    decode_subdoc_mutation,
    durability_framing,
    encode_request,
    error_map_body,
    frame_end,
    frame_end_after,
    frame_opaques,
    get_meta_extras,
    hello_body,
    observe_body,
    observe_seqno_body,
    pack_alt_header,
    pack_header,
    status_name,
    subdoc_lookup_body,
    subdoc_lookup_extras,
    subdoc_mutation_body,
    subdoc_mutation_extras,
)


def hexbytes(text: str) -> bytes:
    """Bytes from a spaced hex dump ('|' separates fields for the reader)."""
    return bytes.fromhex(" ".join(text.replace("|", " ").split()))


# -- constants against the spec tables --------------------------------------------


def test_status_codes_of_the_spec():
    assert Status.CONFIG_ONLY == 0x0D
    assert Status.SUBDOC_PATH_ENOENT == 0xC0
    assert Status.SUBDOC_PATH_EEXISTS == 0xC9
    assert Status.SUBDOC_MULTI_PATH_FAILURE == 0xCC
    assert Status.SUBDOC_SUCCESS_DELETED == 0xCD
    assert Status.SUBDOC_MULTI_PATH_FAILURE_DELETED == 0xD3
    assert status_name(0xCC) == "SUBDOC_MULTI_PATH_FAILURE"
    assert status_name(0x0D) == "CONFIG_ONLY"


def test_subdoc_flags_and_opcodes_of_the_spec():
    assert (SubdocPathFlag.MKDIR_P, SubdocPathFlag.XATTR, SubdocPathFlag.EXPAND_MACROS,
            SubdocPathFlag.BINARY_VALUE) == (0x01, 0x04, 0x10, 0x20)
    assert (SubdocDocFlag.MKDOC, SubdocDocFlag.ADD, SubdocDocFlag.ACCESS_DELETED, SubdocDocFlag.CREATE_AS_DELETED,
            SubdocDocFlag.REVIVE_DOCUMENT, SubdocDocFlag.REPLICA_READ) == (0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
    assert Opcode.SUBDOC_REPLACE_BODY_WITH_XATTR == 0xD3
    assert SUBDOC_EMPTY_PATH_OPCODES == {0xCB, 0xCC, 0xCE}


def test_the_public_subdocument_constants_are_the_wire_ones():
    assert (SD.F_MKDIR_P, SD.F_XATTR, SD.F_EXPAND_MACROS) == (0x01, 0x04, 0x10)
    assert SD.LOOKUP_OPCODES == {0xC5, 0xC6, 0xD2}
    assert SD.MUTATION_OPCODES == {0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF}
    assert SD.get("a")[0] == 0xC5
    assert SD.upsert("a", 1, create_parents=True, xattr=True)[3] == 0x05


def test_frame_info_ids_levels_and_server_opcodes():
    assert (FrameInfoId.BARRIER, FrameInfoId.DURABILITY, FrameInfoId.DCP_STREAM_ID) == (0, 1, 2)
    assert (FrameInfoId.IMPERSONATE_USER, FrameInfoId.PRESERVE_TTL, FrameInfoId.IMPERSONATE_EXTRA_PRIVILEGE) == (4, 5, 6)
    assert (ResponseFrameInfoId.SERVER_DURATION, ResponseFrameInfoId.READ_UNITS, ResponseFrameInfoId.WRITE_UNITS,
            ResponseFrameInfoId.THROTTLE_DURATION) == (0, 1, 2, 3)
    assert (DurabilityLevel.MAJORITY, DurabilityLevel.MAJORITY_AND_PERSIST_TO_ACTIVE,
            DurabilityLevel.PERSIST_TO_MAJORITY) == (1, 2, 3)
    assert ServerOpcode.CLUSTERMAP_CHANGE_NOTIFICATION == 0x01
    assert (Datatype.RAW, Datatype.JSON, Datatype.SNAPPY, Datatype.XATTR) == (0x00, 0x01, 0x02, 0x04)
    assert (ObserveState.FOUND_NOT_PERSISTED, ObserveState.FOUND_PERSISTED, ObserveState.NOT_FOUND,
            ObserveState.LOGICALLY_DELETED) == (0x00, 0x01, 0x80, 0x81)


# -- headers ---------------------------------------------------------------------------


def test_pack_header_classic_request():
    # §9: GET "foo", vbucket 5, opaque 1
    header = pack_header(Magic.REQUEST, Opcode.GET, 3, 0, 0, 5, 3, 1, 0)
    assert header == hexbytes("80 00 00 03  00 00 00 05  00 00 00 03  00 00 00 01  00 00 00 00 00 00 00 00")


def test_pack_alt_header_flex_request():
    # §9: the durable SET: framing 4, key 3, extras 8, vbucket 115, body 0x16, opaque 3
    header = pack_alt_header(Magic.ALT_REQUEST, Opcode.SET, 4, 3, 8, 0, 115, 0x16, 3, 0)
    assert header == hexbytes("08 01 04 03  08 00 00 73  00 00 00 16  00 00 00 03  00 00 00 00 00 00 00 00")


def test_frame_boundaries_in_a_run_of_requests():
    get = encode_request(Opcode.GET, key=b"foo", vbucket=5, opaque=1)  # 27 bytes
    store = encode_request(Opcode.SET, key=b"foo", extras=STORE_EXTRAS.pack(0, 0), value=b"v", opaque=2)
    wire = get + store
    assert len(get) == 27 and len(store) == 36
    assert frame_end(wire) == 27
    assert frame_end(wire, 27) == 63
    assert [frame_end_after(wire, pos) for pos in (0, 26, 27, 62)] == [27, 27, 63, 63]
    assert frame_end_after(wire[:55], 30) == 55  # never beyond what there is
    assert frame_opaques(wire) == [1, 2]
    assert frame_opaques(wire, 1) == [2]
    assert frame_opaques(wire, 27) == [2]
    assert frame_opaques(wire, 28) == []


# -- store, touch, get, counter extras ----------------------------------------------------


def test_store_extras_flags_then_expiry():
    assert STORE_EXTRAS.pack(0x02000006, 0) == hexbytes("02 00 00 06 | 00 00 00 00")
    assert STORE_EXTRAS.pack(0x04000004, 3600) == hexbytes("04 00 00 04 | 00 00 0e 10")
    # §9: the SET example, built with them
    req = encode_request(Opcode.SET, key=b"foo", extras=STORE_EXTRAS.pack(0x02000006, 0), value=b'{"a":1}',
                         vbucket=115, opaque=2)
    assert req == hexbytes("""
        80 01 00 03  08 00 00 73  00 00 00 12  00 00 00 02
        00 00 00 00  00 00 00 00  02 00 00 06  00 00 00 00
        66 6f 6f 7b  22 61 22 3a  31 7d""")


def test_touch_extras_expiry():
    assert EXPIRY_EXTRAS.pack(10) == hexbytes("00 00 00 0a")
    req = encode_request(Opcode.TOUCH, key=b"foo", extras=EXPIRY_EXTRAS.pack(10), vbucket=115, opaque=7)
    assert req == hexbytes("""
        80 1c 00 03  04 00 00 73  00 00 00 07  00 00 00 07
        00 00 00 00  00 00 00 00  00 00 00 0a  66 6f 6f""")


def test_get_reply_flags_and_mutation_token():
    assert FLAGS_EXTRAS.unpack(hexbytes("02 00 00 06")) == (0x02000006,)
    # §9: the SET reply's MUTATION_SEQNO extras
    assert MUTATION_TOKEN.unpack(hexbytes("00 00 a1 b2 c3 d4 e5 f6 | 00 00 00 00 00 00 00 2a")) == (
        0x0000A1B2C3D4E5F6, 42)


def test_counter_request_increment_example():
    # §9: INCREMENT "counter" by 1, initial 0, expiry 0
    opcode, extras = counter_request(1, 0, 0)
    assert opcode == Opcode.INCREMENT == 0x05
    assert extras == hexbytes("00 00 00 00 00 00 00 01 | 00 00 00 00 00 00 00 00 | 00 00 00 00")
    req = encode_request(opcode, key=b"counter", extras=extras, vbucket=290, opaque=9)
    assert req[:12] == hexbytes("80 05 00 07  14 00 01 22  00 00 00 1b")


def test_counter_request_negative_delta_decrements():
    opcode, extras = counter_request(-5, 10, 60)
    assert opcode == Opcode.DECREMENT == 0x06
    assert extras == hexbytes("00 00 00 00 00 00 00 05 | 00 00 00 00 00 00 00 0a | 00 00 00 3c")
    assert COUNTER_EXTRAS.unpack(extras) == (5, 10, 60)


def test_counter_request_without_initial_does_not_create():
    opcode, extras = counter_request(1, None, 123)
    assert opcode == Opcode.INCREMENT
    assert extras == hexbytes("00 00 00 00 00 00 00 01 | 00 00 00 00 00 00 00 00 | ff ff ff ff")
    assert COUNTER_NO_CREATE == 0xFFFFFFFF


def test_counter_reply_value():
    assert COUNTER_VALUE.unpack(hexbytes("00 00 00 00 00 00 00 2a")) == (42,)


# -- durability framing extras ----------------------------------------------------------


def test_durability_framing_example():
    # §9: id 1, length 3 -> 0x13; level 0x01; timeout 0x2710 (10000 ms)
    framing = durability_framing(DurabilityLevel.MAJORITY, 10000)
    assert framing == hexbytes("13 | 01 | 27 10")
    req = encode_request(Opcode.SET, key=b"foo", extras=STORE_EXTRAS.pack(0x02000006, 0), value=b'{"a":1}',
                         vbucket=115, opaque=3, framing=framing)
    assert req == hexbytes("""
        08 01 04 03  08 00 00 73  00 00 00 16  00 00 00 03
        00 00 00 00  00 00 00 00  13 01 27 10  02 00 00 06
        00 00 00 00  66 6f 6f 7b  22 61 22 3a  31 7d""")


def test_durability_framing_without_timeout_and_round_trip():
    assert durability_framing(DurabilityLevel.PERSIST_TO_MAJORITY) == hexbytes("11 | 03")
    assert decode_frame_infos(durability_framing(2, 65534)) == [(FrameInfoId.DURABILITY, hexbytes("02 ff fe"))]
    assert decode_frame_infos(durability_framing(1, 1)) == [(1, hexbytes("01 00 01"))]


@pytest.mark.parametrize("level, timeout_ms", [(0, None), (4, None), (1, 0), (1, 65535)])
def test_durability_framing_refuses_what_the_server_rejects(level, timeout_ms):
    with pytest.raises(ValueError):
        durability_framing(level, timeout_ms)


# -- HELLO and the error map ---------------------------------------------------------------


def test_hello_body_example_and_round_trip():
    features = [0x03, 0x04, 0x06, 0x07, 0x08, 0x0B, 0x10, 0x11]
    body = hello_body(features)
    assert body == hexbytes("00 03 00 04  00 06 00 07  00 08 00 0b  00 10 00 11")
    # §9: the HELLO example
    assert encode_request(Opcode.HELLO, key=b"pycb/0.1", value=body, opaque=10) == hexbytes("""
        80 1f 00 08  00 00 00 00  00 00 00 18  00 00 00 0a
        00 00 00 00  00 00 00 00  70 79 63 62  2f 30 2e 31
        00 03 00 04  00 06 00 07  00 08 00 0b  00 10 00 11""")
    assert decode_hello(body) == frozenset(features)


def test_decode_hello_ignores_an_odd_trailing_byte():
    assert decode_hello(hexbytes("00 07 00")) == {0x07}
    assert decode_hello(b"") == frozenset()


def test_error_map_request_and_reply():
    assert error_map_body() == hexbytes("00 02")
    assert error_map_body(1) == hexbytes("00 01")
    value = (b'{"version":2,"revision":1,"errors":{"86":{"name":"ETMPFAIL","desc":"temporary failure",'
             b'"attrs":["temp","retry-now"]},"7":{"name":"NOT_MY_VBUCKET","desc":"","attrs":["fetch-config"]}}}')
    assert decode_error_map(value) == {
        0x86: {"name": "ETMPFAIL", "desc": "temporary failure", "attrs": ["temp", "retry-now"]},
        0x07: {"name": "NOT_MY_VBUCKET", "desc": "", "attrs": ["fetch-config"]},
    }
    assert decode_error_map(b'{"version":2}') == {}


@pytest.mark.parametrize("value", [b"", b"not json", b"[1, 2]", b'{"errors": {"zz": {}}}', b"\xff\xfe"])
def test_malformed_error_map_is_a_frame_error(value):
    with pytest.raises(FrameError):
        decode_error_map(value)


# -- sub-document ---------------------------------------------------------------------------


def test_subdoc_lookup_example():
    # §9: MULTI_LOOKUP on "doc1": GET "name", EXISTS "tags"
    specs = [(Opcode.SUBDOC_GET, b"name", b"", 0), (Opcode.SUBDOC_EXISTS, b"tags", b"", 0)]
    body = subdoc_lookup_body(specs)
    assert body == hexbytes("c5 | 00 | 00 04 | 6e 61 6d 65 | c6 | 00 | 00 04 | 74 61 67 73")
    req = encode_request(Opcode.SUBDOC_MULTI_LOOKUP, key=b"doc1", extras=subdoc_lookup_extras(0), value=body,
                         vbucket=389, opaque=5)
    assert req == hexbytes("""
        80 d0 00 04  00 00 01 85  00 00 00 14  00 00 00 05
        00 00 00 00  00 00 00 00  64 6f 63 31  c5 00 00 04
        6e 61 6d 65  c6 00 00 04  74 61 67 73""")


def test_subdoc_lookup_extras_and_path_flags():
    assert subdoc_lookup_extras(0) == b""
    assert subdoc_lookup_extras(SubdocDocFlag.ACCESS_DELETED) == hexbytes("04")
    body = subdoc_lookup_body([(Opcode.SUBDOC_GET, b"_sync", b"ignored", SubdocPathFlag.XATTR)])
    assert body == hexbytes("c5 | 04 | 00 05 | 5f 73 79 6e 63")


def test_subdoc_mutation_example():
    # §9: MULTI_MUTATION on "doc1": DICT_UPSERT (MKDIR_P) "name" = "Al", COUNTER "n" by 1
    specs = [(Opcode.SUBDOC_DICT_UPSERT, b"name", b'"Al"', SubdocPathFlag.MKDIR_P),
             (Opcode.SUBDOC_COUNTER, b"n", b"1", 0)]
    body = subdoc_mutation_body(specs)
    assert body == hexbytes("c8 | 01 | 00 04 | 00 00 00 04 | 6e 61 6d 65 | 22 41 6c 22"
                            "cf | 00 | 00 01 | 00 00 00 01 | 6e | 31")
    req = encode_request(Opcode.SUBDOC_MULTI_MUTATION, key=b"doc1", extras=subdoc_mutation_extras(0, 0),
                         value=body, vbucket=389, opaque=6)
    assert req == hexbytes("""
        80 d1 00 04  00 00 01 85  00 00 00 1e  00 00 00 06
        00 00 00 00  00 00 00 00  64 6f 63 31  c8 01 00 04
        00 00 00 04  6e 61 6d 65  22 41 6c 22  cf 00 00 01
        00 00 00 01  6e 31""")


def test_subdoc_mutation_extras_lengths_0_1_4_5():
    assert subdoc_mutation_extras(0, 0) == b""
    assert subdoc_mutation_extras(0, SubdocDocFlag.MKDOC) == hexbytes("01")
    assert subdoc_mutation_extras(60, 0) == hexbytes("00 00 00 3c")
    assert subdoc_mutation_extras(60, SubdocDocFlag.ADD | SubdocDocFlag.ACCESS_DELETED) == hexbytes("00 00 00 3c | 06")


def test_decode_subdoc_lookup_example():
    # §9: status 0xcc; spec 0 gave "Bob", spec 1 PATH_ENOENT
    value = hexbytes('00 00 | 00 00 00 05') + b'"Bob"' + hexbytes('00 c0 | 00 00 00 00')
    assert decode_subdoc_lookup(value) == [(0x00, b'"Bob"'), (Status.SUBDOC_PATH_ENOENT, b"")]


def test_decode_subdoc_lookup_cut_short():
    value = hexbytes('00 00 | 00 00 00 05') + b'"Bob"' + hexbytes('00 c0 | 00 00')
    assert decode_subdoc_lookup(value) == [(0x00, b'"Bob"')]  # the caller counts the missing entry
    assert decode_subdoc_lookup(hexbytes('00 00 | 00 00 00 05') + b'"Bo') == [(0x00, b'"Bo')]
    assert decode_subdoc_lookup(b"") == []


def test_decode_subdoc_mutation_example():
    # §9: spec index 1 (COUNTER) returned "6"
    assert decode_subdoc_mutation(hexbytes("01 | 00 00 | 00 00 00 01 | 36")) == [(1, 0, b"6")]
    two = hexbytes("00 | 00 00 | 00 00 00 02 | 31 30 | 02 | 00 00 | 00 00 00 00")
    assert decode_subdoc_mutation(two) == [(0, 0, b"10"), (2, 0, b"")]
    assert decode_subdoc_mutation(hexbytes("01 00 00 00 00")) == []


def test_decode_subdoc_failure():
    # §7.3: on 0xcc the value is index(1) status(2) of the first failing spec
    assert decode_subdoc_failure(hexbytes("01 | 00 c9")) == (1, Status.SUBDOC_PATH_EEXISTS)
    assert decode_subdoc_failure(hexbytes("01 00")) is None


# -- observe, observe_seqno, get_meta --------------------------------------------------------


def test_observe_body_and_reply():
    body = observe_body(389, b"doc1")
    assert body == hexbytes("01 85 | 00 04 | 64 6f 63 31")
    assert encode_request(Opcode.OBSERVE, value=body, opaque=4)[:12] == hexbytes("80 92 00 00  00 00 00 00  00 00 00 08")
    reply = (body + hexbytes("01 | 16 fa 2b 3c 4d 5e 6f 70")
             + observe_body(7, b"k") + hexbytes("80 | 00 00 00 00 00 00 00 00"))
    assert decode_observe(reply) == [(389, b"doc1", ObserveState.FOUND_PERSISTED, 0x16FA2B3C4D5E6F70),
                                     (7, b"k", ObserveState.NOT_FOUND, 0)]


def test_decode_observe_cut_short():
    reply = observe_body(1, b"a") + hexbytes("00 | 00 00 00 00 00 00 00 05") + observe_body(1, b"b") + hexbytes("01 00")
    assert decode_observe(reply) == [(1, b"a", ObserveState.FOUND_NOT_PERSISTED, 5)]


def test_observe_seqno_request_and_replies():
    assert observe_seqno_body(0x0000A1B2C3D4E5F6) == hexbytes("00 00 a1 b2 c3 d4 e5 f6")
    plain = hexbytes("00 | 01 85 | 00 00 a1 b2 c3 d4 e5 f6 | 00 00 00 00 00 00 00 28 | 00 00 00 00 00 00 00 2a")
    assert decode_observe_seqno(plain) == ObserveSeqno(False, 389, 0xA1B2C3D4E5F6, 40, 42)
    failover = (hexbytes("01 | 01 85 | 00 00 a1 b2 c3 d4 e5 f6 | 00 00 00 00 00 00 00 28 | 00 00 00 00 00 00 00 2a")
                + hexbytes("00 00 00 00 00 00 00 99 | 00 00 00 00 00 00 00 27"))
    assert decode_observe_seqno(failover) == ObserveSeqno(True, 389, 0xA1B2C3D4E5F6, 40, 42, 0x99, 39)
    with pytest.raises(FrameError):
        decode_observe_seqno(plain[:-1])
    with pytest.raises(FrameError):
        decode_observe_seqno(failover[:-1])


def test_get_meta_request_and_reply():
    assert get_meta_extras() == b""
    assert get_meta_extras(2) == hexbytes("02")
    extras = hexbytes("00 00 00 01 | 02 00 00 06 | 00 00 0e 10 | 00 00 00 00 00 00 00 2a")
    assert decode_get_meta(extras) == GetMeta(True, 0x02000006, 3600, 42, None)
    assert decode_get_meta(extras + hexbytes("01")) == GetMeta(True, 0x02000006, 3600, 42, Datatype.JSON)
    assert decode_get_meta(hexbytes("00 00 00 00") + extras[4:]).deleted is False
    with pytest.raises(FrameError):
        decode_get_meta(extras[:-1])


# -- server-initiated config pushes -------------------------------------------------------------


def _server_request(hexdump: str) -> tuple:
    frame, = FrameDecoder().feed(hexbytes(hexdump))
    return frame


def test_decode_config_push_epoch_and_revision():
    # magic 0x82, opcode 0x01, key "default" (7), extras epoch(8) rev(8), value {"rev":42}
    frame = _server_request("""
        82 01 00 07  10 00 00 00  00 00 00 21  00 00 00 00
        00 00 00 00  00 00 00 00
        00 00 00 00 00 00 00 01  00 00 00 00 00 00 00 2a
        64 65 66 61 75 6c 74
        7b 22 72 65 76 22 3a 34 32 7d""")
    assert decode_config_push(frame) == ConfigPush(b"default", 1, 42, b'{"rev":42}')


def test_decode_config_push_old_and_brief_forms():
    old = _server_request("82 01 00 00  04 00 00 00  00 00 00 06  00 00 00 00  00 00 00 00 00 00 00 00"
                          "00 00 00 07  7b 7d")
    assert decode_config_push(old) == ConfigPush(b"", -1, 7, b"{}")
    brief = _server_request("82 01 00 01  10 00 00 00  00 00 00 11  00 00 00 00  00 00 00 00 00 00 00 00"
                            "00 00 00 00 00 00 00 02  00 00 00 00 00 00 00 03  62")
    assert decode_config_push(brief) == ConfigPush(b"b", 2, 3, b"")
    bare = _server_request("82 01 00 00  00 00 00 00  00 00 00 00  00 00 00 00  00 00 00 00 00 00 00 00")
    assert decode_config_push(bare) == ConfigPush(b"", -1, -1, b"")

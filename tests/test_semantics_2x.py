"""Key-value semantics 2.x code relies on, against real servers.

Each test pins one behaviour of the 2.5 SDK that this client follows (see
docs/usage.md and docs/errors.md): custom transcoders checked when used,
the pickle protocol, ``SubdocResult``, the data-structure helpers' return
types, item collections, result objects standing for CAS values and keys,
locked documents, ``all_results`` on single-key failures, integer stats,
``PingStatus``, malformed connection strings, ``data_passthrough``, views
inside pipelines and mutation tokens.

Plain key-value tests run on a real memcached; Couchbase-only ones on the
cluster emulator (the session's shared cluster, one node, one replica).
Both run on the three bucket flavours where the flavour changes the path a
call takes.
"""

from __future__ import annotations

import json
import pickle
from enum import IntEnum
from typing import Any, List

import pytest

import couchbase_core.subdocument as SD
from couchbase_core import FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8
from couchbase_core._httpops import RowStreamOp
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.bucket import PingStatus
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    InvalidError,
    KeyExistsError,
    LockedError,
    NotFoundError,
    PipelineError,
    SubdocBadDeltaError,
    SubdocMultipleErrors,
    SubdocPathMismatchError,
    SubdocPathNotFoundError,
    TemporaryFailError,
    ValueFormatError,
)
from couchbase_core.items import Item, ItemOptionDict, ItemSequence
from couchbase_core.n1ql import MutationState, N1QLQuery
from couchbase_core.result import MultiResult, SubdocResult, ValueResult
from couchbase_core.transcoder import Transcoder
from tests.flavours import open_bucket

ADMIN = {"username": "Administrator", "password": "password"}


@pytest.fixture
def cb(flavour, couchbase_mock):
    """A bucket of the flavour on the emulator's ``default`` bucket."""
    b = open_bucket(flavour, couchbase_mock.connstr_for("default", operation_timeout=30), **ADMIN)
    yield b
    b.close()


@pytest.fixture
def key(request):
    """A key unique to the test (and its flavour)."""
    return "sem:%s:" % request.node.name


# ---------------------------------------------------------------- transcoders


class _Tagging(Transcoder):
    """Stores values as JSON and records the formats it was handed."""

    def __init__(self) -> None:
        self.formats: List[Any] = []

    def encode_value(self, value: Any, format: Any) -> Any:  # noqa: A002
        self.formats.append(format)
        if format == "compact-json":  # a format of the application's own
            return json.dumps(value).encode(), FMT_JSON
        return Transcoder.encode_value(self, value, format)


@pytest.mark.parametrize("falsy", [None, 0, False, ""])
def test_a_false_transcoder_means_none(flavour, memcached_server, key, falsy):
    b = open_bucket(flavour, memcached_server.connstr, transcoder=falsy)
    try:
        assert b.transcoder is None
        b.upsert(key, {"a": 1})
        assert b.get(key).value == {"a": 1}
        b.transcoder = _Tagging()
        b.transcoder = falsy  # the setter too
        assert b.transcoder is None
    finally:
        b.close()


def test_a_transcoder_class_is_instantiated(flavour, memcached_server, key):
    b = open_bucket(flavour, memcached_server.connstr, transcoder=_Tagging)
    try:
        assert isinstance(b.transcoder, _Tagging)
        b.upsert(key, [1, 2])
        assert b.transcoder.formats == [FMT_JSON]
        assert b.get(key).value == [1, 2]
    finally:
        b.close()


def test_any_object_is_accepted_and_checked_when_used(flavour, memcached_server, key):
    b = open_bucket(flavour, memcached_server.connstr, transcoder=object())
    try:
        with pytest.raises(ValueFormatError, match="encode_key"):
            b.upsert(key, 1)
        with pytest.raises(ValueFormatError, match="encode_key"):
            b.get(key)
        b.transcoder = None
        with pytest.raises(NotFoundError):  # nothing was stored
            b.get(key)
    finally:
        b.close()


def test_formats_that_are_not_ints_go_to_the_transcoder(flavour, memcached_server, key):
    tc = _Tagging()
    b = open_bucket(flavour, memcached_server.connstr, transcoder=tc)
    try:
        b.upsert(key, {"n": 1}, format="compact-json")
        b.upsert_multi({key + "2": [2]}, format="compact-json")
        assert tc.formats == ["compact-json", "compact-json"]
        assert b.get(key).value == {"n": 1} and b.get(key).flags == FMT_JSON
        assert b.get(key + "2").value == [2]
    finally:
        b.close()
    plain = open_bucket(flavour, memcached_server.connstr)
    try:
        with pytest.raises(ArgumentError):  # without a transcoder a format must be an int
            plain.upsert(key, 1, format="compact-json")
    finally:
        plain.close()


class _Returning(Transcoder):
    """encode_value/encode_key return whatever the test sets."""

    value_out: Any = None
    key_out: Any = None

    def encode_value(self, value: Any, format: Any) -> Any:  # noqa: A002
        if isinstance(self.value_out, Exception):
            raise self.value_out
        return self.value_out

    def encode_key(self, key: Any) -> Any:
        return Transcoder.encode_key(self, key) if self.key_out is None else self.key_out


@pytest.mark.parametrize("out", [
    b"bytes alone", ("only one",), (b"data", 1, 2), ("text", FMT_UTF8), (b"data", -1), (b"data", 2 ** 32),
    (b"data", "flags"), (b"data", 1.0), ValueError("transcoder bug"),
], ids=["bytes", "1-tuple", "3-tuple", "str-data", "neg-flags", "big-flags", "str-flags", "float-flags",
        "raises"])
def test_bad_encode_value_output_is_a_value_format_error(memcached_server, key, out):
    b = BlockingBucket(memcached_server.connstr, transcoder=_Returning())
    try:
        b.transcoder.value_out = out
        for call in (lambda: b.upsert(key, 1), lambda: b.append(key, "x")):
            with pytest.raises(ValueFormatError) as info:
                call()
            assert info.value.key == key
        if isinstance(out, Exception):
            assert info.value.inner_cause is out
        with pytest.raises(ValueFormatError) as multi:
            b.upsert_multi({key: 1, key + "ok": 2})
        assert multi.value.all_results[key].rc == RC.VALUE_FORMAT
        b.transcoder = None
        with pytest.raises(NotFoundError):
            b.get(key)
    finally:
        b.close()


@pytest.mark.parametrize("out", ["a str key", b"", 42], ids=["str", "empty", "int"])
def test_bad_encode_key_output_is_a_value_format_error(memcached_server, key, out):
    b = BlockingBucket(memcached_server.connstr, transcoder=_Returning())
    try:
        b.transcoder.key_out = out
        with pytest.raises(ValueFormatError):
            b.get(key)
        with pytest.raises(ValueFormatError):
            b.upsert(key, 1)
    finally:
        b.close()


def test_append_with_a_transcoder_encodes_the_fragment(memcached_server, key):
    tc = _Tagging()
    b = BlockingBucket(memcached_server.connstr, transcoder=tc)
    try:
        b.upsert(key, "ab", format=FMT_UTF8)
        b.append(key, "cd")
        assert tc.formats == [FMT_UTF8, FMT_UTF8]  # 2.x hands append FMT_UTF8 by default
        assert b.get(key).value == "abcd"
    finally:
        b.close()


def test_pickle_uses_the_default_protocol(bucket, key):
    bucket.upsert(key, {1, 2, 3}, format=FMT_PICKLE)
    raw = bucket.get(key, no_format=True).value
    assert raw[:2] == bytes([0x80, pickle.DEFAULT_PROTOCOL])
    assert pickle.loads(raw) == {1, 2, 3} and bucket.get(key).value == {1, 2, 3}


# -------------------------------------------------------------- SubdocResult


def test_a_missing_path_gives_the_multi_path_rc(cb, key):
    cb.upsert(key, {"a": [1, 2], "m": {"x": 1}})
    res = cb.lookup_in(key, SD.get("nope"), SD.get("a"), SD.exists("m.x"))
    assert isinstance(res, SubdocResult)
    assert res.rc == RC.SUBDOC_MULTI_PATH_FAILURE and CouchbaseError.rc_to_exctype(res.rc) is SubdocMultipleErrors
    assert res.success is False and res.access_ok is True
    assert res.result_count == 3 and res.command_count == 3
    assert res.get(0) == (RC.SUBDOC_PATH_ENOENT, None) and res.get(1) == (0, [1, 2])
    assert "nope" not in res and "m.x" in res
    with pytest.raises(SubdocPathNotFoundError):
        list(res)  # iteration raises at the failed path
    ok = cb.lookup_in(key, SD.get("a"), SD.get("m"))
    assert ok.rc == 0 and ok.success and list(ok) == [[1, 2], {"x": 1}]


def test_other_path_failures_raise(cb, key):
    cb.upsert(key, {"s": "text"})
    with pytest.raises(SubdocPathMismatchError) as info:
        cb.lookup_in(key, SD.get("s.x"), SD.get("nope"))
    assert info.value.result.get(1)[0] == RC.SUBDOC_PATH_ENOENT


def test_get_count_of_the_root(cb, key):
    cb.upsert(key, {"a": 1, "b": 2, "c": 3})
    cb.upsert(key + "arr", [1, 2])
    assert cb.lookup_in(key, SD.get_count(""))[0] == 3
    assert list(cb.lookup_in(key + "arr", SD.get_count(""), SD.get("[0]"))) == [2, 1]


@pytest.mark.parametrize("delta", [0, "1", 1.5, True, 2 ** 63, -(2 ** 63) - 1])
def test_a_bad_counter_delta_is_refused_before_sending(delta):
    with pytest.raises(SubdocBadDeltaError) as info:
        SD.counter("n", delta)
    assert isinstance(info.value, ValueError)  # 2.x raised ValueError for a zero delta
    assert SD.counter("n", 2 ** 63 - 1).value == str(2 ** 63 - 1).encode()


def test_a_counter_spec_works(cb, key):
    cb.upsert(key, {"n": 1})
    assert cb.mutate_in(key, SD.counter("n", -3))[0] == -2


# ------------------------------------------------------------ data structures


def test_data_structure_sizes_are_ints_and_contains_is_a_bool(cb, flavour, key):
    def plain(res: Any) -> Any:  # an AsyncBucket's result holds the value
        assert isinstance(res, ValueResult) == (flavour in ("async", "acouchbase"))
        return res.value if flavour in ("async", "acouchbase") else res

    cb.upsert(key + "map", {"a": 1, "b": 2})
    cb.upsert(key + "list", [1, "x", 3])
    sizes = [plain(cb.map_size(key + "map")), plain(cb.list_size(key + "list")),
             plain(cb.set_size(key + "list")), plain(cb.queue_size(key + "list"))]
    assert sizes == [2, 3, 3, 3] and all(type(n) is int for n in sizes)
    assert plain(cb.set_contains(key + "list", "x")) is True
    assert plain(cb.set_contains(key + "list", "y")) is False


def test_a_missing_map_key_or_list_index_is_an_index_error(cb, key):
    cb.upsert(key + "map", {"a": 1})
    cb.upsert(key + "list", [1])
    assert cb.map_get(key + "map", "a").value == 1
    with pytest.raises(IndexError) as info:
        cb.map_get(key + "map", "nope")
    assert isinstance(info.value, SubdocPathNotFoundError)
    with pytest.raises(IndexError):
        cb.list_get(key + "list", 5)
    with pytest.raises(NotFoundError):
        cb.map_get(key + "missing", "a")


# ---------------------------------------------------------------------- items


def test_an_item_sequence_of_one_item(bucket, key):
    itm = Item(key, {"v": 1})
    seq = ItemSequence(itm)
    assert len(seq) == 1 and seq.sequence == [itm]
    out = bucket.upsert_multi(seq)
    assert out[key] is itm and itm.success and itm.cas
    fetched = Item(key)
    bucket.get_multi(ItemSequence(fetched))
    assert fetched.value == {"v": 1} and fetched.cas == itm.cas


def test_collections_are_checked_when_used_and_nothing_is_sent(bucket, key):
    good = Item(key + "good", 1)
    for coll in (ItemSequence([good, "not an item"]), ItemSequence([good, Item(value=2)]),
                 ItemOptionDict({good: None, Item(value=3): {"ttl": 1}}), ItemOptionDict({good: "options"})):
        with pytest.raises(ArgumentError):
            bucket.upsert_multi(coll)
    with pytest.raises(NotFoundError):
        bucket.get(key + "good")


def test_the_items_cas_is_honoured_on_mutations(bucket, key):
    itm = Item(key, "v1")
    bucket.upsert_multi(ItemSequence([itm]))
    stale = Item(key, "v2")
    stale.cas = itm.cas
    bucket.upsert(key, "changed meanwhile")
    with pytest.raises(KeyExistsError):
        bucket.upsert_multi(ItemSequence([stale]))
    with pytest.raises(KeyExistsError):
        bucket.append_multi(ItemOptionDict({stale: {"fragment": "!"}}))
    with pytest.raises(KeyExistsError):
        bucket.remove_multi(ItemSequence([stale]))
    assert bucket.get(key).value == "changed meanwhile"
    bucket.upsert_multi(ItemOptionDict({stale: {"ignore_cas": True, "format": FMT_UTF8}}))
    assert bucket.get(key).value == "v2" and stale.cas
    bucket.append_multi(ItemOptionDict({stale: {"fragment": "+", "format": FMT_UTF8}}))
    assert bucket.get(key).value == "v2+"


def test_replica_reads_refuse_items(cb, key):
    cb.upsert(key, 1)
    with pytest.raises(ArgumentError):
        cb.get_multi(ItemSequence([Item(key)]), replica=True)
    with pytest.raises(ArgumentError):
        cb.rget_multi(ItemSequence([Item(key)]))


# ---------------------------------------------- results as CAS values and keys


def test_a_result_stands_for_its_cas(bucket, key):
    first = bucket.upsert(key, 1)
    second = bucket.replace(key, 2, cas=first)
    with pytest.raises(KeyExistsError):
        bucket.replace(key, 3, cas=first)
    with pytest.raises(KeyExistsError):
        bucket.remove(key, cas=first)
    assert bucket.remove(key, cas=bucket.get(key)).success and second.cas


def test_remove_multi_takes_results_as_keys(bucket, key):
    done = bucket.upsert_multi({key + "a": 1, key + "b": 2})
    bucket.upsert(key + "b", "changed")
    with pytest.raises(KeyExistsError) as info:
        bucket.remove_multi(list(done.values()))
    assert info.value.all_results[key + "a"].success
    assert not info.value.all_results[key + "b"].success
    assert bucket.remove_multi({key + "b": bucket.get(key + "b")}).all_ok


def test_unlock_multi_takes_lock_results(cb, key):
    cb.upsert_multi({key + "a": 1, key + "b": 2})
    locks = cb.lock_multi([key + "a", key + "b"], ttl=10)
    assert cb.unlock_multi(list(locks.values())).all_ok
    assert cb.upsert(key + "a", "unlocked").success


@pytest.mark.parametrize("call", ["get_multi", "touch_multi", "remove_multi", "upsert_multi", "counter_multi"])
def test_an_empty_key_collection_is_an_argument_error(bucket, call):
    empty: Any = {} if call == "upsert_multi" else []
    with pytest.raises(ArgumentError, match="empty"):
        getattr(bucket, call)(empty)


def test_counter_ttl_is_checked_without_initial(bucket, key):
    with pytest.raises(ArgumentError):
        bucket.counter(key, ttl=-1)
    with pytest.raises(NotFoundError):
        bucket.counter(key, ttl=5)  # a valid ttl without initial: the key must exist
    assert bucket.counter(key, initial=7, ttl=5).value == 7


# ------------------------------------------------- locked documents, failures


def test_a_mutation_on_a_locked_document_is_a_key_exists_error(cb, key):
    cb.upsert(key, 1)
    lock = cb.lock(key, ttl=10)
    for mutate in (lambda: cb.upsert(key, 2), lambda: cb.replace(key, 2), lambda: cb.remove(key),
                   lambda: cb.mutate_in(key, SD.upsert("n", 1))):
        with pytest.raises(KeyExistsError) as info:
            mutate()
        assert isinstance(info.value, LockedError)
    with pytest.raises(TemporaryFailError):  # locking it again
        cb.lock(key, ttl=10)
    assert cb.upsert(key, 3, cas=lock.cas).success  # the lock's CAS mutates (and unlocks)


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_a_server_without_extended_errors_answers_key_exists_and_tmpfail(flavour, monkeypatch):
    # Without XERROR a server answers KEY_EEXISTS to a mutation of a locked
    # document and TMPFAIL to a second lock: the 2.x classes, directly.
    import couchbase_core.mock.kvserver as kvserver
    from couchbase_core.mock import MockCluster, proto

    monkeypatch.setattr(kvserver, "FEATURES", tuple(f for f in kvserver.FEATURES if f != proto.F_XERROR))
    with MockCluster(nodes=1, replicas=0, in_process=True) as old:
        b = open_bucket(flavour, old.connstr_for("default"), **ADMIN)
        try:
            b.upsert("locked", 1)
            lock = b.lock("locked", ttl=10)
            with pytest.raises(KeyExistsError) as info:
                b.upsert("locked", 2)
            assert info.value.rc == RC.KEY_EEXISTS and not isinstance(info.value, LockedError)
            with pytest.raises(TemporaryFailError) as again:
                b.lock("locked", ttl=10)
            assert again.value.rc == RC.ETMPFAIL
            assert b.unlock("locked", lock.cas).success
        finally:
            b.close()


def test_single_key_failures_carry_all_results(bucket, key):
    with pytest.raises(NotFoundError) as info:
        bucket.get(key + "missing")
    assert isinstance(info.value.all_results, MultiResult)
    assert dict(info.value.all_results) == {key + "missing": info.value.result}
    ok, failed = info.value.split_results()
    assert ok == {} and list(failed) == [key + "missing"]
    bucket.upsert(key, 1)
    with pytest.raises(KeyExistsError) as exists:
        bucket.insert(key, 2)
    assert exists.value.all_results[key].rc == RC.KEY_EEXISTS


# ----------------------------------------------------- stats, ping, connstr


def test_numeric_stats_are_ints(bucket, memcached_server):
    stats = bucket.stats()
    node = memcached_server.address
    assert type(stats["pid"][node]) is int and type(stats["curr_connections"][node]) is int
    assert isinstance(stats["version"][node], str)


def test_ping_status_is_an_int_enum(bucket):
    assert issubclass(PingStatus, IntEnum)
    assert (PingStatus.OK, PingStatus.TIMEOUT, PingStatus.ERROR) == (0, 1, 2)
    entry = bucket.ping()["services"]["kv"][0]
    assert entry["status"] is PingStatus.OK
    assert json.loads(json.dumps(entry))["status"] == 0


@pytest.mark.parametrize("connstr", ["couchbase://[::1", "couchbase://h:99999", "couchbase://h?certpath=",
                                     "memcached://h:port"])
def test_a_malformed_connection_string_is_an_invalid_error(flavour, connstr):
    with pytest.raises(InvalidError) as info:
        open_bucket(flavour, connstr)
    assert isinstance(info.value.inner_cause, ArgumentError)


# --------------------------------------------------------- data_passthrough


def test_data_passthrough_applies_to_stores(bucket, key):
    bucket.data_passthrough = True
    try:
        with pytest.raises(ValueFormatError):
            bucket.upsert(key, "text")
        with pytest.raises(ValueFormatError):
            bucket.upsert_multi({key: {"a": 1}})
        bucket.upsert(key, b'{"a":1}', format=FMT_JSON)
        bucket.upsert_multi({key + "b": b"\x00\x01"}, format=FMT_BYTES)
        assert bucket.get(key).value == b'{"a":1}'
    finally:
        bucket.data_passthrough = False
    assert bucket.get(key).value == {"a": 1} and bucket.get(key + "b").value == b"\x00\x01"


# -------------------------------------------------------- views in pipelines


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_views_are_refused_inside_a_pipeline(cb, key, monkeypatch):
    sent: List[str] = []
    original = RowStreamOp.__init__

    def spy(self, service, method, path, *args):  # type: ignore[no-untyped-def]
        sent.append(path)
        original(self, service, method, path, *args)

    monkeypatch.setattr(RowStreamOp, "__init__", spy)
    with pytest.raises(PipelineError):
        with cb.pipeline() as pipe:
            cb.upsert(key, 1)
            list(cb.query("design", "view"))
    assert sent == [] and pipe.results[0].success  # the view sent nothing; the KV operation ran
    with pytest.raises(CouchbaseError):  # outside a pipeline the request goes out (no such view)
        list(cb.query("design", "view"))
    assert len(sent) == 1


# ------------------------------------------------------------ mutation tokens


def test_mutinfo_has_the_2x_tuple_shape(cb, key):
    res = cb.upsert(key, 1)
    token = res.mutation_token
    assert res._mutinfo == (token.vbucket, token.vbucket_uuid, token.seqno, "default")
    assert cb.get(key)._mutinfo is None  # reads carry no token


def test_no_token_from_plain_memcached(bucket, key):
    assert bucket.upsert(key, 1)._mutinfo is None


def test_mutation_state_encodes_as_2x_does(cb, key):
    first = cb.upsert(key, 1)
    second = cb.upsert(key, 2)  # same vBucket, later sequence number
    state = MutationState(first, second)
    token = second.mutation_token
    expected = {"default": {str(token.vbucket): [token.seqno, str(token.vbucket_uuid)]}}
    text = state.encode()
    assert isinstance(text, str) and json.loads(text) == expected
    assert state._sv == {"default": {token.vbucket: (token.seqno, str(token.vbucket_uuid))}}
    again = MutationState.decode(text)
    assert again.encode() == text
    q = N1QLQuery("SELECT 1")
    q.consistent_with(again)
    assert json.loads(q.encoded)["scan_vectors"] == expected
    with pytest.raises(ArgumentError):
        MutationState.decode("not json")

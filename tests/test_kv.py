"""Every key-value operation plain memcached serves, on all three buckets,
against a real memcached."""

from __future__ import annotations

import pickle
import time

import pytest

from couchbase_core import FMT_AUTO, FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8
from couchbase_core.bucket import PingStatus
from couchbase_core.exceptions import (
    ArgumentError,
    CouchbaseError,
    DeltaBadvalError,
    KeyExistsError,
    NotFoundError,
    NotStoredError,
    NotSupportedError,
    TooBigError,
    ValueFormatError,
)
from couchbase_core.items import Item, ItemOptionDict, ItemSequence
from couchbase_core.result import MultiResult, OperationResult, ValueResult
from couchbase_core.transcoder import Transcoder


def test_upsert_then_get_round_trips_json(bucket, unique_key):
    k = unique_key + "doc"
    stored = bucket.upsert(k, {"name": "Ann", "tags": [1, 2]})
    assert isinstance(stored, OperationResult) and stored.success and stored.cas
    got = bucket.get(k)
    assert isinstance(got, ValueResult)
    assert got.value == {"name": "Ann", "tags": [1, 2]}
    assert got.cas == stored.cas
    assert got.flags == FMT_JSON
    assert got.key == k


@pytest.mark.parametrize("fmt,value,flags", [
    (FMT_UTF8, "h\u00e9llo", FMT_UTF8),
    (FMT_BYTES, b"\x00\xffraw", FMT_BYTES),
    (FMT_PICKLE, {1, 2, 3}, FMT_PICKLE),
    (FMT_JSON, [1, "a", None], FMT_JSON),
    (FMT_AUTO, "text", FMT_UTF8),
    (FMT_AUTO, b"bytes", FMT_BYTES),
    (FMT_AUTO, {"j": 1}, FMT_JSON),
    (FMT_AUTO, frozenset([1]), FMT_PICKLE),
])
def test_formats_round_trip_with_their_flags(bucket, unique_key, fmt, value, flags):
    k = unique_key + str(fmt)
    bucket.upsert(k, value, format=fmt)
    got = bucket.get(k)
    assert got.value == value and got.flags == flags


def test_no_format_returns_the_stored_bytes(bucket, unique_key):
    k = unique_key + "nf"
    bucket.upsert(k, {"a": 1})
    assert bucket.get(k, no_format=True).value == b'{"a":1}'


def test_pickle_bytes_on_the_wire(bucket, unique_key):
    k = unique_key + "p"
    bucket.upsert(k, ("t", 1), format=FMT_PICKLE)
    raw = bucket.get(k, no_format=True).value
    assert pickle.loads(raw) == ("t", 1)


def test_get_missing_raises_not_found_unless_quiet(bucket, unique_key):
    k = unique_key + "missing"
    with pytest.raises(NotFoundError) as info:
        bucket.get(k)
    assert info.value.key == k and info.value.rc == 0x01
    res = bucket.get(k, quiet=True)
    assert not res.success and res.rc == 0x01 and res.value is None


def test_bucket_quiet_default_applies_to_reads(bucket, unique_key):
    bucket.quiet = True
    try:
        assert bucket.get(unique_key + "absent").success is False
        with pytest.raises(NotFoundError):
            bucket.get(unique_key + "absent", quiet=False)
    finally:
        bucket.quiet = False


def test_insert_fails_on_existing_key(bucket, unique_key):
    k = unique_key + "ins"
    assert bucket.insert(k, 1).success
    with pytest.raises(KeyExistsError):
        bucket.insert(k, 2)
    assert bucket.get(k).value == 1


def test_replace_needs_an_existing_key(bucket, unique_key):
    k = unique_key + "rep"
    with pytest.raises(NotFoundError):
        bucket.replace(k, 1)
    bucket.upsert(k, 1)
    bucket.replace(k, 2)
    assert bucket.get(k).value == 2


def test_cas_mismatch_raises_key_exists(bucket, unique_key):
    k = unique_key + "cas"
    first = bucket.upsert(k, "v1")
    second = bucket.upsert(k, "v2")
    assert second.cas != first.cas
    with pytest.raises(KeyExistsError):
        bucket.upsert(k, "v3", cas=first.cas)
    with pytest.raises(KeyExistsError):
        bucket.replace(k, "v3", cas=first.cas)
    ok = bucket.replace(k, "v3", cas=second.cas)
    assert ok.cas not in (first.cas, second.cas)
    assert bucket.get(k).value == "v3"


def test_append_and_prepend(bucket, unique_key):
    k = unique_key + "ap"
    bucket.upsert(k, "mid", format=FMT_UTF8)
    bucket.append(k, "-end")
    bucket.prepend(k, b"start-", format=FMT_BYTES)
    got = bucket.get(k)
    assert got.value == "start-mid-end" and got.flags == FMT_UTF8


def test_append_to_missing_key_is_not_stored(bucket, unique_key):
    with pytest.raises(NotStoredError):
        bucket.append(unique_key + "none", "x")


def test_append_rejects_structured_formats(bucket, unique_key):
    with pytest.raises(ArgumentError):
        bucket.append(unique_key + "x", "y", format=FMT_JSON)
    with pytest.raises(ValueFormatError):
        bucket.append(unique_key + "x", {"not": "bytes"})


def test_append_with_stale_cas(bucket, unique_key):
    k = unique_key + "apcas"
    old = bucket.upsert(k, "a", format=FMT_UTF8)
    bucket.upsert(k, "b", format=FMT_UTF8)
    with pytest.raises(KeyExistsError):
        bucket.append(k, "c", cas=old.cas)


def test_remove(bucket, unique_key):
    k = unique_key + "rm"
    stored = bucket.upsert(k, 1)
    removed = bucket.remove(k)
    assert removed.success
    with pytest.raises(NotFoundError):
        bucket.get(k)
    with pytest.raises(NotFoundError):
        bucket.remove(k)
    assert bucket.remove(k, quiet=True).rc == 0x01
    again = bucket.upsert(k, 2)
    with pytest.raises(KeyExistsError):
        bucket.remove(k, cas=stored.cas)
    assert bucket.remove(k, cas=again.cas).success


def test_counter_create_increment_decrement(bucket, unique_key):
    k = unique_key + "ctr"
    with pytest.raises(NotFoundError):
        bucket.counter(k)
    assert bucket.counter(k, initial=10).value == 10
    assert bucket.counter(k, delta=5).value == 15
    assert bucket.counter(k, delta=-20).value == 0  # floors at zero
    assert bucket.incr(k, 3).value == 3
    assert bucket.decr(k, 1).value == 2
    assert bucket.get(k).value == 2  # stored as ASCII digits: reads back as JSON 2


def test_counter_on_non_numeric_value(bucket, unique_key):
    k = unique_key + "notnum"
    bucket.upsert(k, "abc", format=FMT_UTF8)
    with pytest.raises(DeltaBadvalError):
        bucket.counter(k)


def _wait_gone(bucket, key, timeout: float = 30.0) -> None:
    """Wait until ``key`` has expired: memcached's clock ticks once a second
    (and a loaded machine may tick it late), so a fixed 2.1 s sleep is not
    a reliable "after the expiry". The bound fails a TTL that never applies."""
    deadline = time.monotonic() + timeout
    while bucket.get(key, quiet=True).success:
        assert time.monotonic() < deadline, "%r never expired" % key
        time.sleep(0.1)


def test_counter_ttl_applies_on_creation(bucket, unique_key):
    k = unique_key + "ctrttl"
    bucket.counter(k, initial=1, ttl=1)
    assert bucket.get(k).value == 1
    _wait_gone(bucket, k)
    assert bucket.get(k, quiet=True).rc == 0x01


def test_ttl_expires_items(bucket, unique_key):
    k = unique_key + "ttl"
    bucket.upsert(k, "short", ttl=1)
    assert bucket.get(k).value == "short"
    _wait_gone(bucket, k)
    with pytest.raises(NotFoundError):
        bucket.get(k)


def test_touch_extends_and_get_with_ttl_touches(bucket, unique_key):
    k1, k2, control = unique_key + "touch", unique_key + "gat", unique_key + "control"
    bucket.upsert(k1, 1, ttl=1)
    bucket.upsert(k2, 2, ttl=1)
    bucket.upsert(control, 0, ttl=1)  # left alone: its expiry says the 1 s is over
    assert bucket.touch(k1, ttl=60).success
    assert bucket.get(k2, ttl=60).value == 2
    _wait_gone(bucket, control)
    assert bucket.get(k1).value == 1
    assert bucket.get(k2).value == 2
    bucket.touch(k1, ttl=1)
    _wait_gone(bucket, k1)
    assert bucket.get(k1, quiet=True).success is False
    with pytest.raises(NotFoundError):
        bucket.touch(unique_key + "nothing", ttl=5)


def test_unicode_and_binary_keys(bucket, unique_key):
    k = unique_key + "\u00fc\u4e2d"
    bucket.upsert(k, 1)
    assert bucket.get(k).value == 1
    assert bucket.get(k.encode("utf-8")).value == 1
    bk = unique_key.encode() + b"\x00\xff"
    bucket.upsert(bk, 2)
    assert bucket.get(bk).value == 2


# --------------------------------------------------------------- _multi


def test_upsert_multi_and_get_multi(bucket, unique_key):
    kv = {unique_key + str(i): {"n": i} for i in range(50)}
    res = bucket.upsert_multi(kv)
    assert isinstance(res, MultiResult) and res.all_ok and set(res) == set(kv)
    got = bucket.get_multi(list(kv))
    assert got.all_ok
    assert {k: r.value for k, r in got.items()} == kv


def test_get_multi_miss_raises_with_every_result(bucket, unique_key):
    present = unique_key + "here"
    missing = unique_key + "gone"
    bucket.upsert(present, 1)
    with pytest.raises(NotFoundError) as info:
        bucket.get_multi([present, missing])
    exc = info.value
    assert exc.key == missing
    assert set(exc.all_results) == {present, missing}
    ok, failed = exc.split_results()
    assert list(ok) == [present] and list(failed) == [missing]
    assert ok[present].value == 1


def test_get_multi_quiet_reports_misses(bucket, unique_key):
    present = unique_key + "here"
    bucket.upsert(present, 1)
    res = bucket.get_multi([present, unique_key + "gone"], quiet=True)
    assert not res.all_ok  # quiet only keeps the call from raising (2.x)
    assert res[present].value == 1 and res[unique_key + "gone"].success is False


def test_get_multi_with_per_key_ttl(bucket, unique_key):
    a, b = unique_key + "a", unique_key + "b"
    bucket.upsert_multi({a: 1, b: 2}, ttl=1)
    bucket.get_multi({a: 60, b: None})
    _wait_gone(bucket, b)  # b kept its 1 s
    res = bucket.get_multi([a, b], quiet=True)
    assert res[a].value == 1 and res[b].success is False


def test_insert_replace_remove_multi(bucket, unique_key):
    keys = [unique_key + str(i) for i in range(5)]
    bucket.upsert(keys[0], "exists")
    with pytest.raises(KeyExistsError) as info:
        bucket.insert_multi({k: "new" for k in keys})
    results = info.value.all_results
    assert len(results) == 5 and not results[keys[0]].success
    assert all(results[k].success for k in keys[1:])
    assert bucket.replace_multi({k: "replaced" for k in keys}).all_ok
    assert {r.value for r in bucket.get_multi(keys).values()} == {"replaced"}
    assert bucket.remove_multi(keys).all_ok
    assert not any(r.success for r in bucket.get_multi(keys, quiet=True).values())
    assert not bucket.remove_multi(keys, quiet=True).all_ok  # quiet: no raise, yet not all ok


def test_counter_touch_append_multi(bucket, unique_key):
    keys = [unique_key + str(i) for i in range(3)]
    res = bucket.counter_multi(keys, initial=5)
    assert [res[k].value for k in keys] == [5, 5, 5]
    res = bucket.counter_multi({keys[0]: 2, keys[1]: -3, keys[2]: {"delta": 10}})
    assert [res[k].value for k in keys] == [7, 2, 15]
    assert bucket.incr_multi(keys).all_ok and bucket.decr_multi(keys, 2).all_ok
    assert [bucket.get(k).value for k in keys] == [6, 1, 14]
    assert bucket.touch_multi(keys, ttl=100).all_ok
    assert bucket.append_multi({k: "0" for k in keys}).all_ok
    assert bucket.prepend_multi({k: "1" for k in keys}).all_ok
    assert [bucket.get(k).value for k in keys] == [160, 110, 1140]


def test_unencodable_value_in_a_multi_reports_every_key(bucket, unique_key):
    good = {unique_key + str(i): i for i in range(4)}
    bad_key = unique_key + "bad"
    kv = dict(good)
    kv[bad_key] = object()
    with pytest.raises(ValueFormatError) as info:
        bucket.upsert_multi(kv)
    exc = info.value
    assert exc.key == bad_key
    assert set(exc.all_results) == set(kv)
    assert exc.all_results[bad_key].rc == exc.rc
    assert all(exc.all_results[k].success for k in good)
    assert bucket.get_multi(list(good)).all_ok  # the good ones were stored


def test_bad_keys_inside_a_multi_fail_alone(bucket, unique_key):
    good = unique_key + "fine"
    kv = {good: 1, "": 2, "x" * 251: 3}
    with pytest.raises(ArgumentError) as info:
        bucket.upsert_multi(kv)
    results = info.value.all_results
    assert results[good].success
    assert not results[""].success and not results["x" * 251].success


def test_multi_argument_types(bucket):
    with pytest.raises(ArgumentError):
        bucket.upsert_multi(["a", "b"])
    with pytest.raises(ArgumentError):
        bucket.get_multi("single-string")
    with pytest.raises(ArgumentError):
        bucket.get_multi(12)


def test_items_round_trip(bucket, unique_key):
    coll = ItemOptionDict()
    a = coll.create_and_add(unique_key + "a", {"x": 1})
    b = coll.create_and_add(unique_key + "b", b"raw", format=FMT_BYTES)
    res = bucket.upsert_multi(coll)
    assert res[a.key] is a and a.success and a.cas and b.cas
    fetched = [Item(a.key), Item(b.key)]
    out = bucket.get_multi(ItemSequence(fetched))
    assert out[a.key] is fetched[0]
    assert fetched[0].value == {"x": 1} and fetched[1].value == b"raw"
    old_cas = a.cas
    bucket.upsert(a.key, "changed elsewhere")
    a.value = "mine"
    with pytest.raises(KeyExistsError):
        bucket.replace_multi(ItemSequence([a]))
    assert a.cas == old_cas and not a.success


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("key,exc", [
    ("", ArgumentError),
    (b"", ArgumentError),
    ("k" * 251, ArgumentError),
    ("\u00e9" * 126, ArgumentError),  # 252 bytes once encoded
    (123, ArgumentError),
    (None, ArgumentError),
    (["list"], ArgumentError),
])
def test_bad_keys_are_refused_before_sending(bucket, key, exc):
    with pytest.raises(exc):
        bucket.get(key)
    with pytest.raises(exc):
        bucket.upsert(key, 1)


def test_longest_key_is_accepted(bucket):
    k = "k" * 250
    bucket.upsert(k, 1)
    assert bucket.get(k).value == 1


@pytest.mark.parametrize("kwargs", [
    {"ttl": -1}, {"ttl": "10"}, {"ttl": 1.5}, {"ttl": 2 ** 32}, {"cas": -1}, {"cas": "x"},
    {"format": "json"}, {"format": 0x12345678},
])
def test_bad_arguments(bucket, unique_key, kwargs):
    with pytest.raises(ArgumentError):
        bucket.upsert(unique_key, 1, **kwargs)


def test_counter_argument_checks(bucket, unique_key):
    with pytest.raises(ArgumentError):
        bucket.counter(unique_key, delta=1.5)
    with pytest.raises(ArgumentError):
        bucket.counter(unique_key, initial=-1)
    with pytest.raises(ArgumentError):
        bucket.counter(unique_key, delta=2 ** 64)


def test_oversized_value_is_too_big_before_sending(bucket, unique_key):
    with pytest.raises(TooBigError) as info:
        bucket.upsert(unique_key + "big", b"x" * (1024 * 1024 + 1), format=FMT_BYTES)
    assert "limit" in str(info.value)


def test_value_just_under_the_server_limit_is_refused_by_the_server(bucket, unique_key):
    # memcached's item limit includes its own overhead: the server says E2BIG.
    with pytest.raises(TooBigError) as info:
        bucket.upsert(unique_key + "big2", b"x" * (1024 * 1024), format=FMT_BYTES)
    assert info.value.rc == 0x03


def test_large_value_round_trips(bucket, unique_key):
    value = bytes(range(256)) * 3000  # 768 KB
    bucket.upsert(unique_key + "large", value, format=FMT_BYTES)
    assert bucket.get(unique_key + "large").value == value


def test_wrong_format_for_value(bucket, unique_key):
    with pytest.raises(ValueFormatError):
        bucket.upsert(unique_key, "text", format=FMT_BYTES)
    with pytest.raises(ValueFormatError):
        bucket.upsert(unique_key, b"bytes", format=FMT_UTF8)
    with pytest.raises(ValueFormatError):
        bucket.upsert(unique_key, {1, 2}, format=FMT_JSON)


def test_undecodable_stored_value_gives_value_format_error(bucket, unique_key):
    k = unique_key + "badjson"
    bucket.data_passthrough = True
    try:
        bucket.upsert(k, b"{not json", format=FMT_JSON)
    finally:
        bucket.data_passthrough = False
    with pytest.raises(ValueFormatError) as info:
        bucket.get(k)
    assert info.value.result.value == b"{not json"
    assert bucket.get(k, no_format=True).value == b"{not json"
    good = unique_key + "goodjson"
    bucket.upsert(good, [1])
    with pytest.raises(ValueFormatError) as info:
        bucket.get_multi([good, k])
    assert info.value.all_results[good].value == [1]


def test_operations_memcached_cannot_serve(bucket, unique_key):
    calls = [
        lambda: bucket.lock(unique_key, ttl=5),
        lambda: bucket.unlock(unique_key, 1),
        lambda: bucket.get(unique_key, replica=True),
        lambda: bucket.rget(unique_key),
        lambda: bucket.observe(unique_key),
        lambda: bucket.endure(unique_key, persist_to=1),
        lambda: bucket.lookup_in(unique_key),
        lambda: bucket.mutate_in(unique_key),
        lambda: bucket.retrieve_in(unique_key, "a"),
        lambda: bucket.upsert(unique_key, 1, persist_to=1),
        lambda: bucket.lock_multi([unique_key], ttl=5),
        lambda: bucket.get_multi([unique_key], replica=True),
    ]
    for call in calls:
        with pytest.raises(NotSupportedError) as info:
            call()
        assert "memcached" in str(info.value)


# ------------------------------------------------------------ whole cluster


def test_stats(bucket, memcached_server):
    stats = bucket.stats()
    node = memcached_server.address
    assert isinstance(stats["pid"][node], int) and stats["pid"][node] > 0  # integers are ints, as 2.x
    assert stats["version"][node].startswith("1.")
    settings = bucket.stats("settings")
    assert "item_size_max" in settings and node in settings["item_size_max"]
    both = bucket.stats(["settings", ""])
    assert "item_size_max" in both and "curr_connections" in both


def test_ping_reports_each_node(bucket, memcached_server):
    report = bucket.ping()
    kv = report["services"]["kv"]
    assert len(kv) == 1
    assert kv[0]["remote"] == memcached_server.address
    assert kv[0]["status"] == PingStatus.OK and kv[0]["latency_us"] >= 0  # an IntEnum, as 2.x
    assert kv[0]["local"].startswith("127.0.0.1:")


def test_flush_removes_everything(flavour, fresh_memcached):
    from tests.flavours import open_bucket

    b = open_bucket(flavour, fresh_memcached.connstr)
    try:
        b.upsert_multi({"f%d" % i: i for i in range(20)})
        b.flush()
        assert not any(r.success for r in b.get_multi(["f%d" % i for i in range(20)], quiet=True).values())
    finally:
        b.close()


# ---------------------------------------------------------------- pipeline


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])  # async: test_async_and_threads.py
def test_pipeline_batches_and_collects_results(flavour, memcached_server, unique_key):
    from tests.flavours import open_bucket

    b = open_bucket(flavour, memcached_server.connstr)
    try:
        with b.pipeline() as pipe:
            assert b.upsert(unique_key + "p", 1) is None
            b.get(unique_key + "p")
            b.upsert_multi({unique_key + "q": 2, unique_key + "r": 3})
            b.counter(unique_key + "c", initial=4)
        results = pipe.results
        assert len(results) == 4
        assert results[0].success and results[1].value == 1
        assert isinstance(results[2], MultiResult) and results[2].all_ok
        assert results[3].value == 4
        with pytest.raises(NotFoundError) as info:
            with b.pipeline():
                b.upsert(unique_key + "s", 1)
                b.get(unique_key + "does-not-exist")
        assert set(info.value.all_results) == {unique_key + "s", unique_key + "does-not-exist"}
        with b.pipeline() as pipe:
            b.get(unique_key + "does-not-exist", quiet=True)
        assert pipe.results[0].success is False
    finally:
        b.close()


# -------------------------------------------------------------- properties


def test_properties(bucket, memcached_server):
    assert bucket.server_nodes == [memcached_server.address]
    assert bucket.connected and not bucket.closed
    assert bucket.bucket == "default" and bucket.is_ssl is False
    assert bucket.timeout == 2.5
    bucket.timeout = 1.25
    assert bucket.timeout == 1.25
    with pytest.raises(ArgumentError):
        bucket.timeout = 0
    assert bucket.default_format == FMT_JSON
    assert bucket.transcoder is None and bucket.quiet is False


def test_options_from_the_connection_string(flavour, memcached_server):
    from tests.flavours import open_bucket

    b = open_bucket(flavour, memcached_server.connstr + "?operation_timeout=0.75&config_node_timeout=30")
    try:
        assert b.timeout == 0.75
    finally:
        b.close()
    b = open_bucket(flavour, memcached_server.connstr, operation_timeout=1.5)
    try:
        assert b.timeout == 1.5
    finally:
        b.close()


def test_data_passthrough(bucket, unique_key):
    k = unique_key + "dp"
    bucket.upsert(k, {"a": 1})
    bucket.data_passthrough = True
    try:
        assert bucket.get(k).value == b'{"a":1}'
        with pytest.raises(ValueFormatError):
            bucket.upsert(k, {"a": 2})
        bucket.upsert(k, b'{"a":3}', format=FMT_JSON)
    finally:
        bucket.data_passthrough = False
    assert bucket.get(k).value == {"a": 3}


class _Reversing(Transcoder):
    def encode_key(self, key):
        return ("rev:" + key[::-1]).encode()

    def encode_value(self, value, format):
        return str(value).encode()[::-1], 0x04000004

    def decode_value(self, value, flags):
        return value.decode()[::-1] + "!"


def test_custom_transcoder(flavour, memcached_server, unique_key):
    from tests.flavours import open_bucket

    b = open_bucket(flavour, memcached_server.connstr, transcoder=_Reversing())
    plain = open_bucket(flavour, memcached_server.connstr)
    try:
        b.upsert(unique_key, "abc")
        assert b.get(unique_key).value == "abc!"
        raw = plain.get("rev:" + unique_key[::-1])
        assert raw.value == "cba" and raw.flags == 0x04000004
    finally:
        b.close()
        plain.close()


def test_closed_bucket_refuses_operations(flavour, memcached_server):
    from couchbase_core.exceptions import ObjectDestroyedError
    from tests.flavours import open_bucket

    b = open_bucket(flavour, memcached_server.connstr)
    b.upsert("closing", 1)
    b.close()
    assert b.closed
    with pytest.raises(ObjectDestroyedError):
        b.get("closing")
    with pytest.raises(ObjectDestroyedError):
        b.get_multi(["closing"])


def test_errors_are_couchbase_errors_with_results(bucket, unique_key):
    with pytest.raises(CouchbaseError) as info:
        bucket.get(unique_key + "missing-again")
    assert info.value.result is not None and info.value.result.rc == 0x01


def test_multi_with_repeated_keys_completes(bucket, unique_key):
    k = unique_key + "dup"
    bucket.upsert(k, "once")
    res = bucket.get_multi([k, k, k])
    assert list(res) == [k] and res[k].value == "once"
    res = bucket.counter_multi([k + "c", k + "c"], initial=1)
    assert res[k + "c"].value == 2  # both increments ran


def test_dropped_bucket_closes_its_connection(flavour, fresh_memcached):
    # A server of its own: on the shared one, connections closed by earlier
    # tests may still be counted (memcached notices a close when it gets to
    # it), which would move the count under the test.
    import gc

    from couchbase_core.bucket import Bucket as Probe
    from tests.flavours import open_bucket

    memcached_server = fresh_memcached
    probe = Probe(memcached_server.connstr)

    def current():
        return int(next(iter(probe.stats()["curr_connections"].values())))

    try:
        before = current()
        b = open_bucket(flavour, memcached_server.connstr)
        b.upsert("gc-close", 1)
        assert current() == before + 1
        del b
        gc.collect()
        deadline = time.monotonic() + 30
        while current() != before:
            assert time.monotonic() < deadline, "the dropped bucket kept its socket open"
            time.sleep(0.05)
            gc.collect()
    finally:
        probe.close()

"""Bad input gets a specific error from the documented tree and loses
nothing (issue 10, item 6).

* keys, paths and names that cannot be UTF-8 (lone surrogates) are an
  ArgumentError for that key alone; a ``_multi`` call still writes the good
  keys and reports the bad one in ``all_results``;
* JSON values that are not JSON (NaN, Infinity) are a ValueFormatError;
* every timeout is finite, > 0 and at most ``MAX_TIMEOUT``;
* a bad ``certpath`` is an ArgumentError naming the path;
* connection strings that cannot be printed are refused when parsed;
* closing a bucket gives ObjectDestroyedError to every pending call;
* ``all_ok`` is False when any key failed, quiet or not;
* no option is accepted and silently ignored.

Key-value parts run on all three flavours against a real memcached; the
Couchbase-only parts against the emulator.
"""

from __future__ import annotations

import math
import os
import ssl
import warnings

import pytest

import couchbase_core.subdocument as SD
from couchbase_core import FMT_AUTO, FMT_JSON, FMT_UTF8
from couchbase_core.connstr import MAX_TIMEOUT, ConnectionString, UnknownOptionWarning
from couchbase_core.exceptions import (
    ArgumentError,
    CouchbaseError,
    ObjectDestroyedError,
    OptionIgnoredWarning,
    ValueFormatError,
)
from couchbase_core.items import Item, ItemOptionDict
from couchbase_core.transcoder import Transcoder, encode_key, encode_value
from tests.flavours import open_bucket

BAD = "a\udcff"  # a lone surrogate: a str that has no UTF-8 form


def failing(fn, *args, **kwargs):
    """The CouchbaseError ``fn`` raises (fails the test if it raises another)."""
    with pytest.raises(CouchbaseError) as info:
        fn(*args, **kwargs)
    return info.value


# ------------------------------------------------------------ lone surrogates


def test_surrogate_key_is_an_argument_error_on_every_single_key_op(bucket, unique_key):
    for call in (lambda: bucket.upsert(BAD, 1), lambda: bucket.insert(BAD, 1), lambda: bucket.replace(BAD, 1),
                 lambda: bucket.append(BAD, "x"), lambda: bucket.get(BAD), lambda: bucket.touch(BAD, 10),
                 lambda: bucket.remove(BAD), lambda: bucket.counter(BAD, 1, initial=0)):
        exc = failing(call)
        assert isinstance(exc, ArgumentError), exc
        assert exc.key == BAD and "UTF-8" in str(exc)


def test_upsert_multi_with_a_surrogate_key_writes_the_good_keys(bucket, unique_key):
    good = unique_key + "good"
    exc = failing(bucket.upsert_multi, {good: 1, BAD: 2, unique_key + "g2": 3})
    assert isinstance(exc, ArgumentError) and exc.key == BAD
    assert set(exc.all_results) == {good, BAD, unique_key + "g2"}
    assert exc.all_results[good].success and not exc.all_results[BAD].success
    assert isinstance(exc.all_results[BAD]._make_exception(), ArgumentError)
    assert bucket.get(good).value == 1 and bucket.get(unique_key + "g2").value == 3


@pytest.mark.parametrize("keys", ["list", "tuple", "dict"])
def test_get_multi_with_a_surrogate_key_reads_the_good_keys(bucket, unique_key, keys):
    good = unique_key + "good"
    bucket.upsert(good, "v")
    given = [good, BAD]
    arg = {"list": given, "tuple": tuple(given), "dict": dict.fromkeys(given)}[keys]
    exc = failing(bucket.get_multi, arg)
    assert isinstance(exc, ArgumentError) and exc.key == BAD
    assert exc.all_results[good].value == "v"
    assert exc.all_results[BAD].success is False


def test_every_multi_accounts_for_a_surrogate_key(bucket, unique_key):
    good = unique_key + "k"
    bucket.upsert(good, "1", format=FMT_UTF8)
    calls = [
        lambda: bucket.insert_multi({unique_key + "ins": 1, BAD: 1}),
        lambda: bucket.replace_multi({good: "2", BAD: 1}),
        lambda: bucket.append_multi({good: "3", BAD: "x"}),
        lambda: bucket.touch_multi([good, BAD], ttl=100),
        lambda: bucket.counter_multi([unique_key + "c", BAD], initial=5),
        lambda: bucket.remove_multi([unique_key + "ins", BAD]),
    ]
    for call in calls:
        exc = failing(call)
        assert isinstance(exc, ArgumentError) and exc.key == BAD, exc
        assert len(exc.all_results) == 2
        (other,) = [k for k in exc.all_results if k != BAD]
        assert exc.all_results[other].success, (call, exc.all_results)


def test_item_collection_with_a_surrogate_key(bucket, unique_key):
    good = Item(unique_key + "item", {"a": 1})
    bad = Item(BAD, {"b": 2})
    exc = failing(bucket.upsert_multi, ItemOptionDict({good: {}, bad: {}}))
    assert isinstance(exc, ArgumentError)
    assert exc.all_results[BAD] is bad and bad.success is False
    assert good.success and bucket.get(good.key).value == {"a": 1}


def test_surrogates_in_values_are_value_format_errors(bucket, unique_key):
    for fmt in (FMT_JSON, FMT_UTF8, FMT_AUTO, None):
        exc = failing(bucket.upsert, unique_key + "v", BAD, format=fmt)
        assert isinstance(exc, ValueFormatError) and exc.key == unique_key + "v", (fmt, exc)
    exc = failing(bucket.append, unique_key + "v", BAD)
    assert isinstance(exc, ValueFormatError)


def test_transcoder_functions_raise_documented_errors():
    with pytest.raises(ArgumentError):
        encode_key(BAD)
    with pytest.raises(ArgumentError):
        Transcoder().encode_key(BAD)
    for fmt in (FMT_JSON, FMT_UTF8, FMT_AUTO):
        with pytest.raises(ValueFormatError):
            encode_value(BAD, fmt)
        with pytest.raises(ValueFormatError):
            encode_value({"k": BAD}, fmt)


def test_custom_transcoder_surrogate_key(memcached_server, flavour, unique_key):
    b = open_bucket(flavour, memcached_server.connstr, transcoder=Transcoder())
    try:
        exc = failing(b.upsert_multi, {unique_key + "t": 1, BAD: 2})
        assert isinstance(exc, ArgumentError) and exc.key == BAD
        assert exc.all_results[unique_key + "t"].success
        exc = failing(b.get_multi, [unique_key + "t", BAD])
        assert exc.all_results[unique_key + "t"].value == 1
    finally:
        b.close()


def test_subdoc_path_with_a_surrogate_is_an_argument_error():
    from couchbase_core._bucketbase import BaseBucket

    bucket = BaseBucket.__new__(BaseBucket)
    with pytest.raises(ArgumentError):
        bucket._subdoc_specs((SD.get(BAD),), True)
    with pytest.raises(ArgumentError):
        bucket._subdoc_specs((SD.upsert("x." + BAD, 1),), False)


# ---------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, {"a": [1, float("nan")]}])
def test_json_rejects_nan_and_infinity(bucket, unique_key, value):
    exc = failing(bucket.upsert, unique_key + "nan", value)
    assert isinstance(exc, ValueFormatError) and exc.key == unique_key + "nan"
    if isinstance(value, float):
        # FMT_AUTO pickles numbers (as 2.x), and pickle keeps NaN and infinities
        bucket.upsert(unique_key + "nan", value, format=FMT_AUTO)
        assert repr(bucket.get(unique_key + "nan").value) == repr(value)
    else:
        exc = failing(bucket.upsert, unique_key + "nan", value, format=FMT_AUTO)
        assert isinstance(exc, ValueFormatError)
    with pytest.raises(ValueFormatError):
        encode_value(value, FMT_JSON)


def test_upsert_multi_with_a_nan_value_writes_the_others(bucket, unique_key):
    good, bad = unique_key + "ok", unique_key + "nan"
    exc = failing(bucket.upsert_multi, {good: 1.5, bad: float("nan")})
    assert isinstance(exc, ValueFormatError) and exc.key == bad
    assert exc.all_results[good].success and not exc.all_results[bad].success
    assert bucket.get(good).value == 1.5
    assert bucket.get(bad, quiet=True).success is False


def test_subdoc_values_reject_nan():
    with pytest.raises(ValueFormatError):
        SD.upsert("p", float("nan"))
    with pytest.raises(ValueFormatError):
        SD.array_append("p", 1, float("inf"))


def test_query_parameters_reject_nan_and_surrogates():
    from couchbase_core.n1ql import N1QLQuery
    from couchbase_core.views.params import Query

    with pytest.raises(ArgumentError):
        Query(key=float("nan"))
    with pytest.raises(ArgumentError):
        Query(startkey_docid=BAD)
    q = N1QLQuery("SELECT $1", float("inf"))
    with pytest.raises(ArgumentError):
        assert q.encoded is None


# ----------------------------------------------------------------- all_ok


def test_quiet_misses_make_all_ok_false_without_raising(bucket, unique_key):
    bucket.upsert(unique_key + "here", 1)
    res = bucket.get_multi([unique_key + "here", unique_key + "missing"], quiet=True)
    assert res.all_ok is False
    assert res[unique_key + "missing"].success is False and res[unique_key + "here"].value == 1
    assert bucket.get_multi([unique_key + "here"], quiet=True).all_ok is True
    removed = bucket.remove_multi([unique_key + "missing"], quiet=True)
    assert removed.all_ok is False


# ----------------------------------------------------------------- timeouts


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), MAX_TIMEOUT * 2, 1e12, "1", True, None])
def test_bucket_timeout_properties_refuse_bad_values(bucket, bad):
    for name in ("timeout", "views_timeout", "n1ql_timeout"):
        before = getattr(bucket, name)
        with pytest.raises(ArgumentError):
            setattr(bucket, name, bad)
        assert getattr(bucket, name) == before


@pytest.mark.parametrize("option", ["operation_timeout", "timeout", "views_timeout", "n1ql_timeout",
                                    "config_total_timeout", "config_node_timeout", "connect_timeout",
                                    "http_timeout", "durability_timeout", "durability_interval",
                                    "config_poll_interval", "retry_nmv_delay", "query_timeout"])
@pytest.mark.parametrize("value", [1e12, "1e12", "inf", "nan", str(MAX_TIMEOUT + 1), "9999999h"])
def test_timeout_options_are_bounded(option, value):
    from couchbase_core._engine.settings import Settings

    with pytest.raises(ArgumentError) as info:
        Settings.from_connstr("couchbase://h", **{option: value})
    assert option in str(info.value) or "operation_timeout" in str(info.value)
    if isinstance(value, str):
        with pytest.raises(ArgumentError):
            ConnectionString("couchbase://h?%s=%s" % (option, value))


def test_the_maximum_timeout_is_usable(memcached_server, flavour, unique_key):
    b = open_bucket(flavour, memcached_server.connstr, operation_timeout=MAX_TIMEOUT)
    try:
        assert b.timeout == MAX_TIMEOUT
        b.upsert(unique_key, 1)
        assert b.get(unique_key).value == 1
        b.timeout = MAX_TIMEOUT
        assert b.get_multi([unique_key]).all_ok
    finally:
        b.close()


def test_select_iops_survives_a_timer_beyond_what_select_accepts():
    import socket

    from couchbase_core.iops.base import (
        LCB_READ_EVENT,
        PYCBC_EVACTION_CLEANUP,
        PYCBC_EVACTION_WATCH,
    )
    from couchbase_core.iops.select import SelectIOPS

    iops = SelectIOPS()
    far = iops.timer_event_factory()
    far._handler = lambda _f: None
    iops.update_timer(far, PYCBC_EVACTION_WATCH, int(1e18))  # the engine may sum timeouts
    a, b = socket.socketpair()
    try:
        seen = []
        ev = iops.io_event_factory()
        ev.fd = a.fileno()
        ev._handler = seen.append
        iops.update_event(ev, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
        b.send(b"x")
        assert iops.run_once() and seen == [LCB_READ_EVENT]
        iops.update_event(ev, PYCBC_EVACTION_CLEANUP, 0)
        iops.update_timer(far, PYCBC_EVACTION_CLEANUP, 0)
    finally:
        a.close()
        b.close()


def test_n1ql_query_timeout_is_checked():
    from couchbase_core.n1ql import N1QLQuery

    q = N1QLQuery("SELECT 1")
    for bad in (0, -1, float("inf"), float("nan"), MAX_TIMEOUT * 2, "5"):
        with pytest.raises(ArgumentError):
            q.timeout = bad
    q.timeout = 2.5
    assert q.timeout == 2.5 and q.encoded_body()["timeout"] == "2500ms"
    q.timeout = None
    assert "timeout" not in q.encoded_body()


# ------------------------------------------------------------------ certpath


@pytest.mark.parametrize("kind", ["missing", "directory", "not-pem"])
def test_bad_certpath_is_an_argument_error_naming_the_path(tmp_path, kind):
    from couchbase_core.bucket import Bucket

    path = {"missing": str(tmp_path / "nope.pem"), "directory": str(tmp_path)}.get(kind)
    if path is None:
        path = str(tmp_path / "garbage.pem")
        with open(path, "w") as f:
            f.write("this is not a certificate\n")
    with pytest.raises(ArgumentError) as info:
        Bucket("couchbases://127.0.0.1/default?certpath=%s" % path, config_total_timeout=0.5)
    assert path in str(info.value)
    assert not isinstance(info.value, (OSError, ssl.SSLError))


# ------------------------------------------------- unprintable connstrings


@pytest.mark.parametrize("text", ["couchbase://h" + "\udcff", "couchbase://h/b\udcff",
                                  "couchbase://h?client_string=x\udcff", "couchbase://h?x\udcff=1"])
def test_connection_string_with_a_surrogate_is_refused(text):
    with pytest.raises(ArgumentError) as info:
        ConnectionString(text)
    str(info.value).encode("utf-8")
    repr(info.value).encode("utf-8")


def test_connection_string_parts_with_surrogates_are_refused():
    cs = ConnectionString("couchbase://h")
    with pytest.raises(ArgumentError):
        cs.set_option("client_string", BAD)
    with pytest.raises(ArgumentError):
        cs.set_option(BAD, "1")
    with pytest.raises(ArgumentError):
        ConnectionString.from_parts("couchbase", [BAD])
    with pytest.raises(ArgumentError):
        ConnectionString.from_parts("couchbase", ["h"], bucket=BAD)
    assert cs.encode() == "couchbase://h?"  # 2.x always writes the "?"


def test_bucket_keyword_option_with_a_surrogate_is_refused(memcached_server):
    from couchbase_core.bucket import Bucket

    with pytest.raises(ArgumentError):
        Bucket(memcached_server.connstr, client_string=BAD)


# ---------------------------------------------------------------- options


def test_unknown_keyword_option_warns(memcached_server):
    from couchbase_core.bucket import Bucket

    with pytest.warns(UnknownOptionWarning, match="no_such_option"):
        Bucket(memcached_server.connstr, no_such_option=1).close()
    with pytest.warns(UnknownOptionWarning, match="no_such_option"):
        Bucket(memcached_server.connstr + "?no_such_option=1").close()
    assert issubclass(UnknownOptionWarning, OptionIgnoredWarning)


@pytest.mark.parametrize("option,value", [("dnssrv", "true"), ("detailed_errcodes", "false")])
def test_options_without_effect_warn(memcached_server, option, value):
    from couchbase_core.bucket import Bucket

    with pytest.warns(OptionIgnoredWarning, match=option):
        Bucket(memcached_server.connstr, **{option: value}).close()


@pytest.mark.parametrize("option,value", [("enable_tracing", "false"), ("enable_tracing", "true"),
                                          ("dnssrv", "false"),
                                          ("detailed_errcodes", "true"), ("network", "default"),
                                          ("network", "auto"), ("ipv6", "allow"), ("ipv6", "disabled")])
def test_options_with_their_meaning_do_not_warn(memcached_server, option, value, unique_key):
    from couchbase_core.bucket import Bucket

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = Bucket(memcached_server.connstr, **{option: value})
    try:
        b.upsert(unique_key, 1)
    finally:
        b.close()


def test_network_external_has_no_effect_on_memcached(memcached_server):
    from couchbase_core.bucket import Bucket

    with pytest.warns(OptionIgnoredWarning, match="network"):
        Bucket(memcached_server.connstr, network="external").close()


def test_certpath_without_tls_warns(memcached_server):
    from couchbase_core.bucket import Bucket

    with pytest.warns(OptionIgnoredWarning, match="certpath"):
        Bucket(memcached_server.connstr, certpath=os.devnull).close()


def test_ipv6_only_refuses_ipv4_addresses(memcached_server):
    from couchbase_core.bucket import Bucket

    with pytest.raises(CouchbaseError) as info:
        Bucket(memcached_server.connstr, ipv6="only", config_total_timeout=2)
    assert "ipv6" in str(info.value).lower()


def test_ipv6_disabled_refuses_ipv6_addresses():
    import socket

    from couchbase_core._engine.dial import filter_families

    v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 1))
    v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 1, 0, 0))
    assert filter_families([v4, v6], "allow") == [v4, v6]
    assert filter_families([v4, v6], "disabled") == [v4]
    assert filter_families([v4, v6], "only") == [v6]
    assert filter_families([v6], "disabled") == []


def test_view_and_design_doc_names_with_surrogates():
    from couchbase_core.views.iterator import view_path

    with pytest.raises(ArgumentError):
        view_path("default", BAD, "v", False, False)
    with pytest.raises(ArgumentError):
        view_path("default", "d", BAD, False, False)


# ------------------------------------------- Couchbase-only, on the emulator

ADMIN = {"username": "Administrator", "password": "password"}


@pytest.fixture(scope="module")
def cluster():
    from couchbase_core.mock import MockCluster

    with MockCluster(nodes=2, replicas=1) as c:
        yield c


@pytest.fixture
def cb(flavour, cluster):
    b = open_bucket(flavour, cluster.connstr_for("default"), **ADMIN)
    yield b
    b.close()
    cluster.clear_faults()


def test_subdoc_surrogate_paths_and_keys(cb, request):
    key = "bi:%s" % request.node.name
    cb.upsert(key, {"a": 1})
    for call in (lambda: cb.lookup_in(key, SD.get(BAD)), lambda: cb.mutate_in(key, SD.upsert(BAD, 1)),
                 lambda: cb.retrieve_in(key, "a", BAD), lambda: cb.lookup_in(BAD, SD.get("a")),
                 lambda: cb.map_get(key, BAD), lambda: cb.map_add(key, BAD, 1)):
        with pytest.raises(ArgumentError):
            call()
    with pytest.raises(ValueFormatError):
        cb.mutate_in(key, SD.upsert("b", float("nan")))
    assert cb.get(key).value == {"a": 1}


def test_couchbase_only_timeouts_are_checked(cb, request):
    key = "bi:%s" % request.node.name
    cb.upsert(key, 1)
    for bad in (float("inf"), float("nan"), 0, -1, MAX_TIMEOUT * 2):
        with pytest.raises(ArgumentError):
            cb.endure(key, persist_to=1, replicate_to=0, timeout=bad)
        with pytest.raises(ArgumentError):
            cb.endure(key, persist_to=1, replicate_to=0, interval=bad)
        with pytest.raises(ArgumentError):
            cb.endure_multi([key], persist_to=1, timeout=bad)
    for bad in (float("inf"), float("nan"), -1, MAX_TIMEOUT * 2):
        with pytest.raises(ArgumentError):
            cb.durability(persist_to=1, timeout=bad)


def test_network_auto_and_default_work_on_a_cluster(cluster, request):
    from couchbase_core.bucket import Bucket

    # external: this cluster publishes no alternate addresses, so the nodes'
    # own are used (tests/test_alternate_addresses.py covers the others)
    for network in ("auto", "default", "external"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            b = Bucket(cluster.connstr_for("default", network=network), **ADMIN)
        try:
            b.upsert("bi:net:" + network, 1)
        finally:
            b.close()


def _pending_then_closed(flavour, cluster, start):
    """Start an operation that waits on a delayed cluster, close the bucket,
    and return what the operation ended with."""
    import gevent

    from couchbase_core.result import AsyncResult

    b = open_bucket(flavour, cluster.connstr_for("default", durability_interval=0.02), **ADMIN)
    b.upsert("bi:pend", 1)
    cluster.delay(1.0)
    try:
        if flavour == "async":
            ar = start(b.raw)
            assert isinstance(ar, AsyncResult)
            fired = []
            ar.callback = lambda res: fired.append(res)
            ar.errback = lambda res, et, ev, tb: fired.append(ev)
            b.iops.run_once(0.05)
            b.raw.close()
            b._run_until(lambda: fired, 10)
            return fired[0]
        glet = gevent.spawn(start, b)
        gevent.sleep(0.05)
        assert not glet.ready()
        b.close()
        glet.join(10)
        assert glet.ready()
        return glet.exception if glet.exception is not None else glet.value
    finally:
        cluster.clear_faults()
        b.close()


@pytest.mark.parametrize("flavour", ["async", "gevent"])
@pytest.mark.parametrize("what", ["observe", "observe_multi", "endure", "endure_multi", "get_multi", "set_add"])
def test_closing_gives_object_destroyed_to_pending_calls(cluster, flavour, what):
    start = {
        "observe": lambda b: b.observe("bi:pend"),
        "observe_multi": lambda b: b.observe_multi(["bi:pend", "bi:other"]),
        "endure": lambda b: b.endure("bi:pend", persist_to=2, replicate_to=1, timeout=30),
        "endure_multi": lambda b: b.endure_multi(["bi:pend"], persist_to=2, replicate_to=1, timeout=30),
        "get_multi": lambda b: b.get_multi(["bi:pend", "bi:other"]),
        "set_add": lambda b: b.set_add("bi:set", 1, create=True),
    }[what]
    outcome = _pending_then_closed(flavour, cluster, start)
    assert isinstance(outcome, ObjectDestroyedError), outcome
    if what.endswith("_multi"):
        assert all(r.rc == ObjectDestroyedError.CODE for r in outcome.all_results.values()), outcome.all_results

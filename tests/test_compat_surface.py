"""The small 2.x pieces (docs/compat.md): logging entry points and log
redaction, tracing options, user_constants, lcb_version, deprecated aliases,
append_items/prepend_items, unlock_gil, tracer, _cntl/_cntlstr, compression
properties, add_bucket_creds, ulp, LegacyTranscoderPP.

Key-value behaviour runs against a real memcached (all three flavours where
the call exists) and the emulator where a Couchbase feature is involved."""

from __future__ import annotations

import logging
import warnings

import pytest

import couchbase_core
from couchbase_core import FMT_BYTES, FMT_UTF8, _logsetup
from couchbase_core.bucket import Bucket
from couchbase_core.connstr import UnknownOptionWarning
from couchbase_core.exceptions import (
    ArgumentError,
    InvalidError,
    KeyExistsError,
    NotFoundError,
    NotStoredError,
    NotSupportedError,
    OptionIgnoredWarning,
)
from couchbase_core.items import Item, ItemOptionDict
from couchbase_core.views.params import Query, ulp
from tests.flavours import open_bucket

ADMIN = {"username": "Administrator", "password": "password"}


class _Capture(logging.Handler):
    """Collects the records that reach it."""

    def __init__(self) -> None:
        logging.Handler.__init__(self, logging.DEBUG)
        self.records: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture_couchbase():
    """A handler on the 2.x ``couchbase`` logger, at DEBUG, with
    enable_logging() on; everything restored afterwards."""
    cap = _Capture()
    root = logging.getLogger("couchbase")
    old_level = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    couchbase_core.enable_logging()
    try:
        yield cap
    finally:
        couchbase_core.disable_logging()
        root.removeHandler(cap)
        root.setLevel(old_level)


# ---------------------------------------------------------------- logging


def test_enable_logging_forwards_engine_records_to_couchbase_loggers(capture_couchbase):
    init = [r for r in capture_couchbase.records if r.name == "couchbase"]
    assert init and "Initializing Couchbase logging. lcb_version=" in init[0].getMessage()
    engine = logging.getLogger("couchbase_core.engine")
    assert engine.propagate is False
    engine.debug("a test line from %s", "connection")  # module is this test file: mapped to 'instance'
    forwarded = [r for r in capture_couchbase.records if r.getMessage() == "a test line from connection"]
    assert [r.name for r in forwarded] == ["couchbase.instance"]
    assert forwarded[0].levelno == logging.DEBUG


def test_enable_logging_maps_modules_to_libcouchbase_subsystems(capture_couchbase):
    """A refused connection logs from connection.py (couchbase.server) and
    instance.py (couchbase.instance)."""
    import socket

    from couchbase_core.exceptions import CouchbaseError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(CouchbaseError):
        Bucket("memcached://127.0.0.1:%d?config_total_timeout=5" % port).get("k")
    names = {r.name for r in capture_couchbase.records}
    assert {"couchbase.server", "couchbase.instance"} <= names, names
    assert not [r for r in capture_couchbase.records if r.name.startswith("couchbase_core")]


def test_couchbase_level_filters_and_disable_restores(memcached_server):
    cap = _Capture()
    root = logging.getLogger("couchbase")
    engine = logging.getLogger("couchbase_core.engine")
    before = (engine.level, engine.propagate)
    root.addHandler(cap)
    root.setLevel(logging.WARNING)
    try:
        couchbase_core.enable_logging()
        couchbase_core.enable_logging()  # twice: no second forwarder
        engine.info("filtered out by couchbase's level")
        engine.warning("shown once")
        assert [r.getMessage() for r in cap.records].count("shown once") == 1
        assert not [r for r in cap.records if r.getMessage() == "filtered out by couchbase's level"]
        couchbase_core.disable_logging()
        assert (engine.level, engine.propagate) == before
        assert not _logsetup.logging_enabled()
        engine.warning("after disable")
        assert not [r for r in cap.records if r.getMessage() == "after disable"]
    finally:
        couchbase_core.disable_logging()
        root.removeHandler(cap)
        root.setLevel(logging.NOTSET)


@pytest.mark.parametrize("redact", [False, True])
def test_log_redaction_wraps_keys_in_ud_tags(couchbase_mock, capture_couchbase, redact):
    """A TMPFAIL reply makes the engine retry and log the key (DEBUG)."""
    opt = "&log_redaction=on" if redact else ""
    b = Bucket(couchbase_mock.connstr_for("default") + ("?operation_timeout=10" + opt), **ADMIN)
    try:
        assert b.redaction is redact
        couchbase_mock.force_status(0x86, count=1)  # ETMPFAIL once: retried
        b.upsert("secret-doc-id", {"v": 1})
    finally:
        b.close()
    lines = [r.getMessage() for r in capture_couchbase.records if "retrying" in r.getMessage()]
    assert lines, [r.getMessage() for r in capture_couchbase.records]
    if redact:
        assert all("<ud>secret-doc-id</ud>" in line for line in lines)
    else:
        assert all("secret-doc-id" in line and "<ud>" not in line for line in lines)


def test_redaction_property_and_settings_ud(memcached_server):
    b = Bucket(memcached_server.connstr)
    try:
        assert b.redaction is False
        assert b._settings.ud(b"k1") == "k1"
        b.redaction = True
        assert b._settings.ud("k1") == "<ud>k1</ud>"
        assert b._cntl(0x4C) == 1
        b._cntlstr("log_redaction", "false")
        assert b.redaction is False
        with pytest.raises(ArgumentError):
            b.redaction = "maybe"
    finally:
        b.close()


def test_log_redaction_bad_value_raises():
    # a bad value inside the connection string makes it malformed (2.x: InvalidError)
    with pytest.raises(InvalidError, match="log_redaction"):
        Bucket("memcached://127.0.0.1:1?log_redaction=sometimes")


# ---------------------------------------------------------------- tracing


TRACING_OPTIONS = {
    "tracing_threshold_kv": ("0.25", 0.25), "tracing_threshold_n1ql": ("2", 2.0),
    "tracing_threshold_view": ("1500ms", 1.5), "tracing_threshold_fts": ("3", 3.0),
    "tracing_threshold_analytics": ("4", 4.0), "tracing_threshold_queue_size": ("64", 64),
    "tracing_threshold_queue_flush_interval": ("5", 5.0), "tracing_orphaned_queue_size": ("32", 32),
    "tracing_orphaned_queue_flush_interval": ("7", 7.0),
}


def test_tracing_options_are_parsed_and_exposed_without_warning(memcached_server):
    # the reports are real now (tests/test_observability.py): no warning
    query = "&".join("%s=%s" % (k, v[0]) for k, v in TRACING_OPTIONS.items())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = Bucket("%s?enable_tracing=true&%s" % (memcached_server.connstr, query))
    try:
        assert not [w for w in caught if issubclass(w.category, OptionIgnoredWarning)], \
            [str(w.message) for w in caught]
        assert not [w for w in caught if issubclass(w.category, UnknownOptionWarning)]
        assert b.enable_tracing and b._engine.tracer is not None
        for name, (_text, value) in TRACING_OPTIONS.items():
            assert getattr(b, name) == value
        # later changes are validated and do not warn again
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            b.tracing_threshold_kv = 0.75
            b._cntl(0x53, value=0.5)
        assert b.tracing_threshold_kv == 0.5
        assert b._cntl(0x53, value_type="uint32_t") == 500000
        assert not again
    finally:
        b.close()


def test_tracing_defaults_and_runtime_change(memcached_server):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = Bucket(memcached_server.connstr)
        assert b.tracing_threshold_kv == 0.5 and b.tracing_orphaned_queue_size == 128
        b.tracing_threshold_n1ql = 3
        b.tracing_threshold_view = 2
    try:
        assert not [w for w in caught if issubclass(w.category, OptionIgnoredWarning)]
        assert b.tracing_threshold_view == 2.0
        assert b._engine.tracer is None  # tracing stays off until enable_tracing
    finally:
        b.close()


# A value the connection-string parser refuses makes the string malformed
# (InvalidError, as 2.x); one that parses but is out of range is refused when
# the bucket applies it (ArgumentError).
@pytest.mark.parametrize("option,value,error", [
    ("tracing_threshold_kv", "-1", InvalidError), ("tracing_threshold_kv", "soon", InvalidError),
    ("tracing_threshold_queue_size", "0", InvalidError), ("tracing_orphaned_queue_size", "x", InvalidError),
    ("tracing_threshold_queue_flush_interval", "0", ArgumentError),
    ("tracing_orphaned_queue_size", str(1 << 40), ArgumentError), ("enable_tracing", "perhaps", InvalidError),
])
def test_bad_tracing_values_raise(option, value, error):
    with pytest.raises(error, match=option):
        Bucket("memcached://127.0.0.1:1?%s=%s" % (option, value))


def test_a_tracer_that_is_not_opentelemetry_is_kept_and_warned_about(memcached_server):
    tracer = object()
    with pytest.warns(OptionIgnoredWarning, match="OpenTelemetry"):
        b = Bucket(memcached_server.connstr, tracer=tracer)
    try:
        assert b.tracer is tracer
    finally:
        b.close()


def test_bad_tracing_property_value_raises(memcached_server):
    b = Bucket(memcached_server.connstr)
    try:
        with pytest.raises(ArgumentError):
            b.tracing_threshold_queue_size = 0
        with pytest.raises(ArgumentError):
            b.tracing_threshold_kv = -0.5
    finally:
        b.close()


# ---------------------------------------------------------- constants, version


def test_user_constants_have_the_2x_names():
    from couchbase_core import user_constants as uc

    assert uc.FMT_JSON == couchbase_core.FMT_JSON and uc.FMT_BYTES == FMT_BYTES
    assert uc.FMT_MASK == 0x07
    assert (uc.OBS_FOUND, uc.OBS_PERSISTED, uc.OBS_NOTFOUND, uc.OBS_LOGICALLY_DELETED) == (0, 1, 0x80, 0x81)
    assert uc.OBS_MASK & uc.OBS_LOGICALLY_DELETED == uc.OBS_LOGICALLY_DELETED
    assert uc.LOCKMODE_WAIT == couchbase_core.LOCKMODE_WAIT
    namespace: dict = {}
    exec("from couchbase_core.user_constants import *", namespace)
    assert {"FMT_PICKLE", "OBS_MASK", "LOCKMODE_NONE", "FMT_AUTO"} <= set(namespace)


def test_lcb_version_shape(memcached_server):
    text, number = couchbase_core.lcb_version()
    assert text == couchbase_core.__version__
    major, minor, patch = (int(p) for p in text.split(".")[:3])
    assert number == (major << 16) | (minor << 8) | patch
    assert Bucket.lcb_version() == (text, number)


# ---------------------------------------------------------- deprecated aliases


@pytest.mark.parametrize("flavour", ["blocking", "async", "gevent"])
def test_set_add_delete_are_deprecated_aliases(flavour, memcached_server, unique_key):
    b = open_bucket(flavour, memcached_server.connstr)
    k = unique_key + "alias"
    try:
        with pytest.warns(DeprecationWarning, match="set is deprecated. Use upsert instead"):
            b.set(k, "one")
        assert b.get(k).value == "one"
        with pytest.warns(DeprecationWarning, match="add is deprecated"):
            with pytest.raises(KeyExistsError):
                b.add(k, "two")
        with pytest.warns(DeprecationWarning, match="delete is deprecated. Use remove instead"):
            b.delete(k)
        with pytest.raises(NotFoundError):
            b.get(k)
        with pytest.warns(DeprecationWarning):
            b.add(k, "three", ttl=0)
        assert b.get(k).value == "three"
    finally:
        b.close()


@pytest.mark.parametrize("flavour", ["blocking", "async", "gevent"])
def test_multi_aliases(flavour, memcached_server, unique_key):
    b = open_bucket(flavour, memcached_server.connstr)
    keys = {unique_key + "m1": 1, unique_key + "m2": 2}
    try:
        with pytest.warns(DeprecationWarning, match="set_multi is deprecated. Use upsert_multi"):
            res = b.set_multi(keys)
        assert res.all_ok
        with pytest.warns(DeprecationWarning, match="add_multi"):
            with pytest.raises(KeyExistsError) as info:
                b.add_multi(keys)
        assert len(info.value.all_results) == 2
        with pytest.warns(DeprecationWarning, match="delete_multi is deprecated. Use remove_multi"):
            assert b.delete_multi(list(keys)).all_ok
        assert not any(r.success for r in b.get_multi(list(keys), quiet=True).values())
    finally:
        b.close()


# ------------------------------------------------------------- append_items


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_append_and_prepend_items_update_item_values(flavour, memcached_server, unique_key):
    b = open_bucket(flavour, memcached_server.connstr)
    try:
        a, c = Item(unique_key + "a", "base"), Item(unique_key + "c", "mid")
        b.upsert_multi({a.key: "base", c.key: "mid"}, format=FMT_UTF8)
        items = ItemOptionDict()
        items.add(a, fragment="+tail")
        items.add(c, fragment="!")
        res = b.append_items(items, format=FMT_UTF8)
        assert res.all_ok
        assert (a.value, c.value) == ("base+tail", "mid!")
        assert b.get(a.key).value == "base+tail"
        pre = ItemOptionDict()
        pre.add(a, fragment="head:")
        b.prepend_items(pre, format=FMT_UTF8)
        assert a.value == "head:base+tail" == b.get(a.key).value
    finally:
        b.close()


def test_append_items_failure_leaves_failed_item_value(memcached_server, unique_key):
    b = Bucket(memcached_server.connstr)
    try:
        good, missing = Item(unique_key + "g", b"x"), Item(unique_key + "missing", b"y")
        b.upsert(good.key, b"x", format=FMT_BYTES)
        items = ItemOptionDict()
        items.add(good, fragment=b"1", format=FMT_BYTES)
        items.add(missing, fragment=b"2", format=FMT_BYTES)
        with pytest.raises(NotStoredError) as info:
            b.append_items(items)
        assert info.value.all_results[good.key].success
        assert good.value == b"x1" and missing.value == b"y"
        assert b.get(good.key).value == b"x1"
    finally:
        b.close()


def test_append_items_needs_fragments(memcached_server):
    b = Bucket(memcached_server.connstr)
    try:
        items = ItemOptionDict()
        items.add(Item("k", "v"))
        with pytest.raises(ArgumentError, match="fragment"):
            b.append_items(items)
        with pytest.raises(ArgumentError, match="ItemOptionDict"):
            b.append_items({"k": "v"})
    finally:
        b.close()


# ----------------------------------------------------------- unlock_gil


def test_unlock_gil_is_accepted_and_reported(memcached_server):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = Bucket(memcached_server.connstr, unlock_gil=False)
        d = Bucket(memcached_server.connstr)
    try:
        assert b.unlock_gil is False and d.unlock_gil is True
        b.upsert("compat:gil", 1)
        assert b.get("compat:gil").value == 1
    finally:
        b.close()
        d.close()


# ---------------------------------------------------------------- _cntl


def test_cntl_timeouts_roundtrip(memcached_server):
    b = Bucket(memcached_server.connstr)
    try:
        b._cntl(0x00, value=3.5, value_type="timeout")
        assert b.timeout == 3.5 and b._cntl(0x00, value_type="timeout") == 3.5
        assert b._cntl(0x00, value_type="uint32_t") == 3500000
        b._cntl(0x01, 12.0)
        assert b.views_timeout == 12.0
        b._cntl(0x3D, 2500000, value_type="uint32_t")
        assert b.n1ql_timeout == 2.5
        b._cntl(0x12, 9.0)
        assert b._settings.config_total_timeout == 9.0
        b._cntlstr("operation_timeout", "1.25")
        assert b.timeout == 1.25
        b._cntlstr("config_node_timeout", "750ms")
        assert b._cntl(0x1B) == 0.75
        assert b._cntl(0x30) == b.bucket
        assert b._cntl(0x2A) == 1
    finally:
        b.close()


def test_cntl_refuses_what_it_does_not_support(memcached_server):
    b = Bucket(memcached_server.connstr)
    try:
        with pytest.raises(NotSupportedError, match="0x00 \\(operation_timeout\\)"):
            b._cntl(0x24)
        with pytest.raises(NotSupportedError, match="supported: .*operation_timeout"):
            b._cntlstr("retry_backoff", "1")
        with pytest.raises(ArgumentError):
            b._cntl(0x00, value=-1.0)
        with pytest.raises(ArgumentError):
            b._cntl(0x00, value=1.0, value_type="double")
        with pytest.raises(ArgumentError, match="read-only"):
            b._cntl(0x30, value="other")
        with pytest.warns(OptionIgnoredWarning, match="detailed_errcodes"):
            b._cntlstr("detailed_errcodes", "0")
        b._cntlstr("detailed_errcodes", "1")  # the default: accepted quietly
    finally:
        b.close()


# ------------------------------------------------------------ compression


def test_compression_property_values(couchbase_mock, unique_key):
    b = Bucket(couchbase_mock.connstr_for("default"), **ADMIN)
    try:
        assert b.compression == Bucket.COMPRESS_INOUT
        b.compression = Bucket.COMPRESS_IN
        assert b._settings.compression == "inflate_only" and b.compression == Bucket.COMPRESS_IN
        b.compression = Bucket.COMPRESS_INOUT | Bucket.COMPRESS_FORCE
        assert b._settings.compression == "force"
        b.compression = "off"
        assert b.compression == Bucket.COMPRESS_NONE
        assert b._cntl(0x26) == Bucket.COMPRESS_NONE
        b._cntl(0x26, Bucket.COMPRESS_INOUT)
        assert b.compression == Bucket.COMPRESS_INOUT
        with pytest.raises(ArgumentError):
            b.compression = 9
        with pytest.raises(ArgumentError):
            b.compression = "zip"
        b.compression_min_size = 100
        b.compression_min_ratio = 0.5
        assert (b.compression_min_size, b.compression_min_ratio) == (100, 0.5)
        with pytest.raises(ArgumentError):
            b.compression_min_ratio = 1.5
        with pytest.raises(ArgumentError):
            b.compression_min_size = -1
        # still works after all that
        b.upsert(unique_key + "z", "x" * 4096)
        assert b.get(unique_key + "z").value == "x" * 4096
    finally:
        b.close()


def test_compression_min_size_controls_what_is_compressed(couchbase_mock, unique_key):
    pytest.importorskip("cramjam")
    b = Bucket(couchbase_mock.connstr_for("default", compression_min_size=10000), **ADMIN)
    try:
        b.upsert(unique_key + "warm", 1)
        conns = [c for c in b._engine.connections if c.features]
        assert conns and all(c._min_compress == 10000 for c in conns)
        b.compression_min_size = 64
        assert all(c._min_compress == 64 for c in conns)
        b.compression_min_ratio = 0.5
        assert all(c._min_ratio == 0.5 for c in conns)
    finally:
        b.close()


@pytest.mark.parametrize("option,value", [("compression_min_size", "-3"), ("compression_min_ratio", "0"),
                                          ("compression_min_ratio", "2"), ("compression_min_ratio", "abc")])
def test_bad_compression_tunables_raise(option, value):
    with pytest.raises(InvalidError, match=option):
        Bucket("couchbase://127.0.0.1:1/default?%s=%s" % (option, value))


# ---------------------------------------------------------- add_bucket_creds


def test_add_bucket_creds_goes_into_cross_bucket_query_creds(memcached_server):
    from couchbase_core._querymachine import QueryOptions, execute_body
    from couchbase_core.n1ql import N1QLQuery

    b = Bucket(memcached_server.connstr)
    try:
        with pytest.raises(ValueError):
            b.add_bucket_creds("", "pw")
        with pytest.raises(ValueError):
            b.add_bucket_creds("other", "")
        b.add_bucket_creds("other", "pw2")
        assert b._bucket_creds == {"other": "pw2"}
    finally:
        b.close()
    q = N1QLQuery("SELECT 1")
    q.cross_bucket = True
    import json

    body = json.loads(execute_body(q, QueryOptions(default_timeout=1.0, bucket="default", username="u",
                                                   password="p", extra_creds=(("other", "pw2"),)), None))
    assert body["creds"] == [{"user": "local:u", "pass": "p"}, {"user": "local:other", "pass": "pw2"}]


# -------------------------------------------------------- ulp, transcoder


def test_ulp_is_sent_unquoted():
    q = Query(startkey=ulp('["a",1]'), endkey=["a", 2])
    encoded = q.encoded
    from urllib.parse import unquote

    assert 'startkey=["a",1]' in unquote(encoded)
    assert 'endkey=["a", 2]' in unquote(encoded)  # JSON keys as 2.x sent them (json.dumps spacing)
    assert ulp("x") == ulp("x") and repr(ulp("x")) == "ulp('x')"
    with pytest.raises(ArgumentError):
        ulp(5)


def test_legacy_transcoder_pp_writes_legacy_flags(memcached_server, unique_key):
    from couchbase_core.transcoder import LegacyTranscoder, LegacyTranscoderPP

    assert issubclass(LegacyTranscoderPP, LegacyTranscoder)
    b = Bucket(memcached_server.connstr, transcoder=LegacyTranscoderPP())
    try:
        b.upsert(unique_key + "lt", {"a": 1})
        assert b.get(unique_key + "lt").flags == 0x00  # legacy JSON: no common-flags byte
        b.upsert(unique_key + "lu", "text", format=FMT_UTF8)
        assert b.get(unique_key + "lu").flags == 0x04
        assert b.get(unique_key + "lu").value == "text"
    finally:
        b.close()


def test_describe_op_redacts_keys_for_logs_only(memcached_server):
    from couchbase_core._engine.ops import KVOp
    from couchbase_core._engine.protocol import Opcode

    b = Bucket(memcached_server.connstr + "?log_redaction=true")
    try:
        op = KVOp(Opcode.GET, b"user::42")
        assert b._settings.describe_op(op) == "GET <ud>user::42</ud>"
        assert "<ud>" not in op.describe()  # exception messages are unchanged
        b.redaction = False
        assert b._settings.describe_op(op) == op.describe()
    finally:
        b.close()

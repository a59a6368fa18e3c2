"""Tests for couchbase_core.connstr: parsing, endpoints, options, encoding."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from couchbase_core.connstr import (
    KNOWN_OPTIONS,
    SECRET_OPTIONS,
    ConnectionString,
    Host,
    UnknownOptionWarning,
    parse_bool,
    parse_duration,
    parse_int,
)
from couchbase_core.exceptions import ArgumentError, CouchbaseInputError


def parse(s: str) -> ConnectionString:
    return ConnectionString.parse(s)


# -- schemes and default ports ------------------------------------------------


@pytest.mark.parametrize(
    "text, scheme, kv, http",
    [
        ("couchbase://h", "couchbase", [("h", 11210)], [("h", 8091)]),
        ("couchbases://h", "couchbases", [("h", 11207)], [("h", 18091)]),
        ("http://h", "http", [("h", 11210)], [("h", 8091)]),
        ("memcached://h", "memcached", [("h", 11211)], []),
        ("h", "http", [("h", 11210)], [("h", 8091)]),
        ("COUCHBASE://h", "couchbase", [("h", 11210)], [("h", 8091)]),
        ("couchbase://h?ssl=on", "couchbase", [("h", 11207)], [("h", 18091)]),
    ],
)
def test_scheme_and_default_ports(text, scheme, kv, http):
    cs = parse(text)
    assert cs.scheme == scheme
    assert cs.hosts == ["h"]  # entries as text (2.x)
    assert cs.host_entries() == [Host("h", None, None)]
    assert cs.kv_endpoints() == kv
    assert cs.http_endpoints() == http


def test_constructor_equals_parse():
    assert ConnectionString("couchbase://a/b?timeout=1") == parse("couchbase://a/b?timeout=1")


def test_empty_host_list_is_localhost():
    for text in ("couchbase://", "couchbase:///bkt", "couchbase://,,;", ""):
        cs = parse(text)
        assert cs.hosts == [], text
        assert cs.host_entries() == [Host("localhost")], text
    assert parse("couchbase:///bkt").bucket == "bkt"


def test_ssl_flag():
    assert parse("couchbases://h").is_ssl is True
    assert parse("couchbase://h").is_ssl is False
    assert parse("couchbase://h?ssl=on").is_ssl is True
    assert parse("couchbase://h?ssl=no_verify").is_ssl is True
    assert parse("couchbase://h?ssl=off").is_ssl is False


# -- hosts ---------------------------------------------------------------------


def test_separators_comma_and_semicolon():
    cs = parse("couchbase://a,b;c:1234 , d")
    assert cs.hosts == ["a", "b", "c:1234", "d"]
    assert cs.host_entries()[2].port == 1234


def test_empty_entries_are_ignored():
    assert parse("couchbase://a,,b;;,").hosts == ["a", "b"]


def test_ipv6_with_and_without_port():
    cs = parse("couchbase://[::1],[fe80::1]:11000,[2001:db8::7]:9000=mcd")
    assert cs.hosts == ["[::1]", "[fe80::1]:11000", "[2001:db8::7]:9000=mcd"]
    assert cs.host_entries() == [
        Host("::1", None, None),
        Host("fe80::1", 11000, None),
        Host("2001:db8::7", 9000, "mcd"),
    ]
    assert cs.kv_endpoints() == [("::1", 11210), ("fe80::1", 11000), ("2001:db8::7", 9000)]
    assert cs.encode() == "couchbase://[::1],[fe80::1]:11000,[2001:db8::7]:9000=mcd?"


def test_ipv6_zone_id_is_percent_decoded():
    cs = parse("couchbase://[fe80::1%25eth0]:11210")
    assert cs.hosts == ["[fe80::1%25eth0]:11210"]
    assert cs.host_entries() == [Host("fe80::1%eth0", 11210)]
    assert parse(cs.encode()) == cs


def test_host_is_url_decoded():
    assert parse("couchbase://my%2Dhost").host_entries()[0].host == "my-host"
    assert parse("couchbase://my%2Dhost").hosts == ["my%2Dhost"]  # the text as written


def test_proto_forms():
    cs = parse("couchbase://a:1000=MCD,b:1001=mcds,c:9000=http,d:19000=HTTPS")
    assert [h.proto for h in cs.host_entries()] == ["mcd", "mcds", "http", "https"]
    assert cs.kv_endpoints() == [("a", 1000), ("b", 1001), ("c", 11210), ("d", 11210)]
    assert cs.http_endpoints() == [("a", 8091), ("b", 8091), ("c", 9000), ("d", 19000)]


def test_couchbase_8091_is_ignored_for_kv():
    cs = parse("couchbase://a:8091,b:12000")
    assert cs.hosts[0] == "a:8091"  # kept as written
    assert cs.kv_endpoints() == [("a", 11210), ("b", 12000)]
    assert cs.http_endpoints() == [("a", 8091), ("b", 8091)]


def test_couchbases_18091_is_ignored_for_kv():
    cs = parse("couchbases://a:18091,b:11300")
    assert cs.kv_endpoints() == [("a", 11207), ("b", 11300)]
    assert cs.http_endpoints() == [("a", 18091), ("b", 18091)]


def test_http_ports_are_http_ports():
    cs = parse("http://a:9000,b")
    assert cs.kv_endpoints() == [("a", 11210), ("b", 11210)]
    assert cs.http_endpoints() == [("a", 9000), ("b", 8091)]
    assert parse("a:9000").http_endpoints() == [("a", 9000)]


def test_memcached_ports():
    cs = parse("memcached://m1:12001,m2:8091,m3")
    assert cs.kv_endpoints() == [("m1", 12001), ("m2", 8091), ("m3", 11211)]
    assert cs.http_endpoints() == []


def test_endpoints_are_deduplicated_in_order():
    cs = parse("couchbase://b,a,b:11210,a:8091")
    assert cs.kv_endpoints() == [("b", 11210), ("a", 11210)]
    assert cs.http_endpoints() == [("b", 8091), ("a", 8091)]


# -- bucket --------------------------------------------------------------------


def test_bucket_url_decoding():
    cs = parse("couchbase://h/my%2Fbucket%20x")
    assert cs.bucket == "my/bucket x"
    assert cs.encode() == "couchbase://h/my%2Fbucket%20x?"


@pytest.mark.parametrize("text", ["couchbase://h", "couchbase://h/", "couchbase://h/?x=1"])
def test_no_bucket(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownOptionWarning)
        assert parse(text).bucket == ""  # 2.x: the empty path


def test_bucket_with_options():
    cs = parse("couchbase://h/default?operation_timeout=3")
    assert cs.bucket == "default"
    assert cs.get_option("operation_timeout") == "3"


# -- options -------------------------------------------------------------------


def test_options_parse_get_set_clear():
    cs = parse("couchbase://h?operation_timeout=2.5&bootstrap_on=cccp")
    assert cs.options == {"operation_timeout": ["2.5"], "bootstrap_on": ["cccp"]}  # lists, as 2.x
    assert cs.get_option("bootstrap_on") == "cccp"
    assert cs.get_option("certpath") is None
    assert cs.get_option("certpath", "dflt") == "dflt"
    assert cs.has_option("operation_timeout")

    cs.set_option("views_timeout", 10)
    cs.set_option("tcp_nodelay", False)
    cs.set_option("select_bucket", True)
    assert cs.get_option("views_timeout") == "10"
    assert cs.get_option("tcp_nodelay") == "false"
    assert cs.get_option("select_bucket") == "true"

    cs.clear_option("operation_timeout")
    cs.clear_option("never_set")  # no error
    assert not cs.has_option("operation_timeout")
    assert cs.encode() == ("couchbase://h?bootstrap_on=cccp&views_timeout=10"
                           "&tcp_nodelay=false&select_bucket=true")


def test_set_option_validates_known_values():
    cs = parse("couchbase://h")
    with pytest.raises(ArgumentError, match="operation_timeout"):
        cs.set_option("operation_timeout", "soon")
    with pytest.raises(ArgumentError, match="clear_option"):
        cs.set_option("operation_timeout", None)
    assert not cs.has_option("operation_timeout")


def test_repeated_option_keeps_every_value_and_the_last_is_in_effect():
    cs = parse("couchbase://h?operation_timeout=1&operation_timeout=7&bootstrap_on=http")
    assert cs.options["operation_timeout"] == ["1", "7"]
    assert cs.get_option("operation_timeout") == "1"  # 2.x: the first
    assert cs.option_values()["operation_timeout"] == "7"  # applied in order: the last wins
    assert list(cs.options) == ["operation_timeout", "bootstrap_on"]
    assert cs.encode() == "couchbase://h?operation_timeout=1&operation_timeout=7&bootstrap_on=http"


def test_option_values_are_decoded_and_reencoded():
    cs = parse("couchbase://h?client_string=a%26b%3Dc+d&certpath=/etc/ca.pem")
    assert cs.get_option("client_string") == "a&b=c+d"  # '+' is not a space
    assert cs.get_option("certpath") == "/etc/ca.pem"
    assert parse(cs.encode()) == cs


def test_empty_option_pieces_are_ignored():
    assert parse("couchbase://h?&timeout=1&&").options == {"timeout": ["1"]}


def test_value_may_contain_equals_and_be_empty():
    cs = parse("couchbase://h?client_string=a=b&username=")
    assert cs.get_option("client_string") == "a=b"
    assert cs.get_option("username") == ""


def test_unknown_option_warns_once_per_name_and_is_kept():
    with pytest.warns(UnknownOptionWarning) as record:
        cs = parse("couchbase://h?frobnicate=1&frobnicate=2&zzz=3&timeout=1")
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "frobnicate" in messages[0] and "zzz" in messages[1]
    assert record[0].filename == __file__  # stacklevel points at the caller
    assert cs.options["frobnicate"] == ["1", "2"]
    assert "frobnicate=1&frobnicate=2" in cs.encode()


def test_unknown_option_warning_from_constructor_points_at_caller():
    with pytest.warns(UnknownOptionWarning, match="mystery") as record:
        ConnectionString("couchbase://h?mystery=1")
    assert record[0].filename == __file__


def test_known_options_do_not_warn():
    query = "&".join("%s=1" % n for n in ("operation_timeout", "tcp_nodelay", "http_poolsize"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cs = parse("couchbase://h?" + query)
    assert len(cs.options) == 3


def test_unknown_option_warning_is_a_user_warning():
    assert issubclass(UnknownOptionWarning, UserWarning)


# -- secrets ---------------------------------------------------------------------


def test_password_never_shown_by_default():
    cs = parse("couchbase://h/b?username=u&password=s3cr%26t")
    assert cs.get_option("password") == "s3cr&t"
    for text in (cs.encode(), str(cs), repr(cs)):
        assert "s3cr" not in text
        assert "password" not in text
        assert "username=u" in text
    assert repr(cs).startswith("ConnectionString(")
    full = cs.encode(include_secrets=True)
    assert "password=s3cr%26t" in full
    assert parse(full) == cs


def test_password_value_not_in_error_message():
    with pytest.raises(ArgumentError) as info:
        parse("couchbase://h?password=hunter%2")
    assert "hunter" not in str(info.value)
    assert "percent-encoding" in str(info.value)


def test_secret_options_contains_password():
    assert "password" in SECRET_OPTIONS


# -- equality and copies -------------------------------------------------------


def test_equality_compares_every_field():
    base = parse("couchbase://h/b?timeout=1")
    assert base == parse("couchbase://h/b?timeout=1")
    assert base != parse("couchbases://h/b?timeout=1")
    assert base != parse("couchbase://h:11210/b?timeout=1")
    assert base != parse("couchbase://h/c?timeout=1")
    assert base != parse("couchbase://h/b?timeout=2")
    assert base != parse("couchbase://h/b?timeout=1&password=x")
    assert base != "couchbase://h/b?timeout=1"


def test_copy_is_independent():
    cs = parse("couchbase://h?timeout=1")
    other = cs.copy()
    other.set_option("timeout", 5)
    assert cs.get_option("timeout") == "1"
    assert other != cs


def test_from_parts():
    cs = ConnectionString.from_parts("couchbases", [("::1", 11207), "a", Host("b", 1, "MCD")],
                                     "bk", {"operation_timeout": 2.5, "tcp_nodelay": True})
    assert cs.hosts == ["[::1]:11207", "a", "b:1=mcd"]
    assert cs.host_entries() == [Host("::1", 11207), Host("a"), Host("b", 1, "mcd")]
    assert cs.encode() == ("couchbases://[::1]:11207,a,b:1=mcd/bk"
                           "?operation_timeout=2.5&tcp_nodelay=true")
    assert ConnectionString.from_parts().hosts == []
    assert ConnectionString.from_parts().host_entries() == [Host("localhost")]
    with pytest.raises(ArgumentError, match="scheme"):
        ConnectionString.from_parts("ftp")
    with pytest.raises(ArgumentError, match="out of range"):
        ConnectionString.from_parts(hosts=[("a", 70000)])


# -- malformed input -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("ftp://h", "unknown scheme"),
        ("://h", "missing scheme"),
        ("cb base://h", "invalid scheme"),
        ("couchbase://h:0", "out of range"),
        ("couchbase://h:65536", "out of range"),
        ("couchbase://h:abc", "invalid port"),
        ("couchbase://h:-1", "invalid port"),
        ("couchbase://h:", "empty port"),
        ("couchbase://[::1", "unbalanced"),
        ("couchbase://::1]", "unbalanced"),
        ("couchbase://a[b]", "unbalanced"),
        ("couchbase://[::1]]:1", "unbalanced"),
        ("couchbase://[::1]x", "after IPv6"),
        ("couchbase://[::1]:99999", "out of range"),
        ("couchbase://[]", "empty IPv6"),
        ("couchbase://[nothex]", "invalid IPv6"),
        ("couchbase://::1", "brackets"),
        ("couchbase://a,:11210", "missing host"),
        ("couchbase://:11210", "missing host"),
        ("couchbase://h:1=ftp", "unknown protocol"),
        ("couchbase://h:1=", "empty protocol"),
        ("couchbase://=mcd", "missing host"),
        ("couchbase://u:pw@h", "credentials"),
        ("couchbase://h?flag", "no '=value'"),
        ("couchbase://h?timeout=1&flag", "no '=value'"),
        ("couchbase://h?=1", "empty option name"),
        ("couchbase://h%zz", "percent-encoding"),
        ("couchbase://h/b%2", "percent-encoding"),
        ("couchbase://h?client_string=%G0", "percent-encoding"),
        ("couchbase://h?client_string=%FF", "UTF-8"),
        ("couchbase://h/a/b", "more than one segment"),
        ("couchbase://h//", "more than one segment"),
        ("couchbase://h/a/", "more than one segment"),
        ("couchbase://my%20host", "blank or control"),
        ("couchbase://a%3Ab", "bracketed IPv6"),
        ("couchbase://h?operation_timeout=fast", "operation_timeout"),
        ("couchbase://h?views_timeout=-1", "negative"),
        ("couchbase://h?tcp_nodelay=maybe", "tcp_nodelay"),
        ("couchbase://h?bootstrap_on=dns", "bootstrap_on"),
        ("couchbase://h?ssl=yes", "ssl"),
        ("couchbase://h?compression=gzip", "compression"),
        ("couchbase://h?ipv6=sometimes", "ipv6"),
        ("couchbase://h?http_poolsize=-2", "at least 0"),
        ("couchbase://h?max_value_size=big", "max_value_size"),
        ("couchbase://h?sasl_mech_force=", "sasl_mech_force"),
        ("couchbase://h?certpath=", "certpath"),
        ("couchbases://h?ssl=off", "contradicts"),
    ],
)
def test_malformed_input_raises(text, fragment):
    with pytest.raises(ArgumentError) as info:
        parse(text)
    assert fragment in info.value.message


@pytest.mark.parametrize("value", [None, b"couchbase://h", 42, ["couchbase://h"]])
def test_non_str_input_raises(value):
    with pytest.raises(ArgumentError, match="must be a str"):
        ConnectionString.parse(value)  # type: ignore[arg-type]


def test_argument_error_is_an_input_error():
    with pytest.raises(CouchbaseInputError):
        parse("nope://h")


def test_port_limits_accepted():
    cs = parse("couchbase://a:1,b:65535")
    assert [h.port for h in cs.host_entries()] == [1, 65535]


# -- value helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [
        (2, 2.0), (2.5, 2.5), (0, 0.0), ("2.5", 2.5), ("10", 10.0), (".5", 0.5),
        ("1e-3", 0.001), (" 3 ", 3.0), ("2500ms", 2.5), ("1.5s", 1.5), ("2m", 120.0),
        ("1h", 3600.0), ("250us", 0.00025), ("1m30s", 90.0), ("+1s", 1.0), ("-0", 0.0),
    ],
)
def test_parse_duration_accepts(value, seconds):
    assert math.isclose(parse_duration(value, "opt"), seconds)


@pytest.mark.parametrize(
    "value, fragment",
    [
        (-1, "negative"), ("-2.5", "negative"), ("-5ms", "negative"),
        (float("nan"), "finite"), (float("inf"), "finite"), ("1e999", "finite"),
        ("nan", "expected"), ("inf", "expected"), ("", "expected"), ("abc", "expected"),
        ("5 ms", "expected"), ("5MS", "expected"), ("5d", "expected"), ("ms", "expected"),
        ("1m30", "expected"), ("1_000", "expected"), (True, "bool"), (None, "expected"),
    ],
)
def test_parse_duration_rejects(value, fragment):
    with pytest.raises(ArgumentError) as info:
        parse_duration(value, "my_timeout")
    assert "my_timeout" in info.value.message
    assert fragment in info.value.message


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True), (False, False), (1, True), (0, False), (5, True),
        ("true", True), ("FALSE", False), ("on", True), ("Off", False),
        ("yes", True), ("NO", False), ("1", True), ("0", False),
    ],
)
def test_parse_bool_accepts(value, expected):
    assert parse_bool(value, "flag") is expected


@pytest.mark.parametrize("value", ["", "2", "maybe", "t", "enabled", 1.0, None])
def test_parse_bool_rejects(value):
    with pytest.raises(ArgumentError, match="flag"):
        parse_bool(value, "flag")


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (5, {}, 5), ("42", {}, 42), (" -3 ", {}, -3), ("+7", {}, 7),
        ("0", {"minimum": 0}, 0), (10, {"maximum": 10}, 10),
    ],
)
def test_parse_int_accepts(value, kwargs, expected):
    assert parse_int(value, "n", **kwargs) == expected


@pytest.mark.parametrize(
    "value, kwargs, fragment",
    [
        ("1.5", {}, "integer"), ("", {}, "integer"), ("ten", {}, "integer"),
        (True, {}, "bool"), (2.0, {}, "integer"), (None, {}, "integer"),
        (-1, {"minimum": 0}, "at least 0"), ("11", {"maximum": 10}, "at most 10"),
    ],
)
def test_parse_int_rejects(value, kwargs, fragment):
    with pytest.raises(ArgumentError) as info:
        parse_int(value, "pool", **kwargs)
    assert "pool" in info.value.message
    assert fragment in info.value.message


def test_known_options_contains_the_documented_names():
    for name in ("operation_timeout", "bootstrap_on", "certpath", "compression",
                 "enable_tracing", "connect_timeout", "max_value_size"):
        assert name in KNOWN_OPTIONS
    assert "frobnicate" not in KNOWN_OPTIONS


# -- round trip property -------------------------------------------------------

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_hostname = st.lists(_label, min_size=1, max_size=3).map(".".join)
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
_ipv6 = st.sampled_from(["::1", "fe80::1", "2001:db8::42", "::", "fe80::1%eth0"])
_host = st.builds(
    Host,
    st.one_of(_hostname, _ipv4, _ipv6),
    st.one_of(st.none(), st.integers(1, 65535)),
    st.one_of(st.none(), st.sampled_from(["mcd", "mcds", "http", "https"])),
)
_bucket = st.one_of(
    st.none(),
    st.text(alphabet="ab/%?&= #+;,:[]=\u00e9\u4e2d", min_size=1, max_size=10),
)
_any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_durations = st.one_of(
    st.floats(0, 1000, allow_nan=False).map(repr),
    st.integers(0, 10000).map(lambda n: "%dms" % n),
    st.sampled_from(["2m", "1.5s", "250us", "1h"]),
)
_bools = st.sampled_from(["true", "false", "on", "off", "yes", "no", "1", "0"])
_VALUE_STRATEGIES = {
    "bootstrap_on": st.sampled_from(["all", "cccp", "http"]),
    "ssl": st.sampled_from(["on", "no_verify"]),
    "compression": st.sampled_from(["on", "off", "inflate_only", "deflate_only", "force"]),
    "ipv6": st.sampled_from(["disabled", "allow", "only"]),
    "http_poolsize": st.integers(0, 100).map(str),
    "max_value_size": st.integers(1, 2**30).map(str),
    "sasl_mech_force": st.sampled_from(["PLAIN", "SCRAM-SHA1 PLAIN"]),
    "certpath": _any_text.filter(bool),
    "keypath": _any_text.filter(bool),
    "truststorepath": _any_text.filter(bool),
    "network": _any_text.filter(bool),
    "dnssrv_nameserver": _any_text.filter(bool),
    "username": _any_text,
    "password": _any_text,
    "client_string": _any_text,
    "config_cache": _any_text.filter(bool),
    "compression_min_size": st.integers(0, 2**20).map(str),
    "compression_min_ratio": st.sampled_from(["0.5", "0.83", "1", "1.0"]),
    "tracing_threshold_queue_size": st.integers(1, 1000).map(str),
    "tracing_orphaned_queue_size": st.integers(1, 1000).map(str),
}
_DURATION_NAMES = {
    "operation_timeout", "timeout", "config_total_timeout", "config_node_timeout",
    "views_timeout", "n1ql_timeout", "query_timeout", "http_timeout", "durability_timeout",
    "durability_interval", "config_poll_interval", "retry_nmv_delay", "connect_timeout",
    "tracing_threshold_kv", "tracing_threshold_n1ql", "tracing_threshold_view", "tracing_threshold_fts",
    "tracing_threshold_analytics", "tracing_threshold_queue_flush_interval",
    "tracing_orphaned_queue_flush_interval",
    "dnssrv_timeout",
}


def _value_for(name: str) -> st.SearchStrategy[str]:
    if name in _VALUE_STRATEGIES:
        return _VALUE_STRATEGIES[name]
    if name in _DURATION_NAMES:
        return _durations
    return _bools


_options = st.lists(
    st.sampled_from(sorted(KNOWN_OPTIONS)).flatmap(lambda n: st.tuples(st.just(n), _value_for(n))),
    max_size=6,
).map(dict)


@st.composite
def connection_strings(draw: st.DrawFn) -> ConnectionString:
    scheme = draw(st.sampled_from(["couchbase", "couchbases", "http", "memcached"]))
    options = draw(_options)
    hosts = draw(st.lists(_host, min_size=1, max_size=4))
    return ConnectionString.from_parts(scheme, hosts, draw(_bucket), options)


@settings(max_examples=300, deadline=None)
@given(connection_strings())
def test_encode_parse_round_trip(cs):
    text = cs.encode(include_secrets=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only known options: no warning expected
        again = ConnectionString.parse(text)
    assert again == cs
    assert again.encode(include_secrets=True) == text
    if "password" in cs.options:
        assert "password=" not in cs.encode()


def test_every_known_option_has_a_round_trip_strategy():
    assert set(_VALUE_STRATEGIES) | _DURATION_NAMES | {
        "fetch_mutation_tokens", "enable_mutation_tokens", "enable_tracing", "select_bucket",
        "tcp_nodelay", "tcp_keepalive", "detailed_errcodes", "dnssrv", "log_redaction"} == set(KNOWN_OPTIONS)

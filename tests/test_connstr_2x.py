"""``ConnectionString`` has the 2.x object shape.

2.x (``couchbase.connstr``): ``ConnectionString(bucket='default',
hosts=None, options=None, scheme='couchbase')``; ``parse()`` filled
``options`` from ``parse_qs`` (name -> list of values) and ``hosts`` with
the text entries of the host list; ``get_option`` returned the first value,
``set_option`` stored ``[value]``; ``encode()`` wrote
``scheme://h1,h2[/bucket]?`` + ``urlencode`` of the options with ``%2F``
turned back into ``/``.
"""

from __future__ import annotations

import warnings
from urllib.parse import urlencode

import pytest

from couchbase_core.bucket import Bucket
from couchbase_core.connstr import ConnectionString, Host, UnknownOptionWarning, convert_1x_args
from couchbase_core.exceptions import ArgumentError


def _encode_2x(scheme, hosts, bucket, options):
    """2.x's encode(), for options of one value without blanks."""
    text = "{0}://{1}".format(scheme, ",".join(hosts))
    if bucket:
        text += "/" + bucket
    return text + "?" + urlencode({k: v[0] for k, v in options.items()}).replace("%2F", "/")


# ----------------------------------------------------------------- constructor


def test_constructor_defaults():
    cs = ConnectionString()
    assert (cs.bucket, cs.hosts, cs.options, cs.scheme) == ("default", [], {}, "couchbase")
    assert cs.encode() == "couchbase:///default?"
    assert cs.kv_endpoints() == [("localhost", 11210)]


def test_constructor_keywords():
    hosts = ["h1:11210", "h2"]
    options = {"operation_timeout": ["2.5"], "certpath": ["/etc/ca.pem"]}
    cs = ConnectionString(bucket="beer", hosts=hosts, options=options, scheme="couchbases")
    assert cs.hosts == hosts and cs.hosts is not hosts  # copied, as 2.x
    assert cs.options == options and cs.options is not options
    assert cs.encode() == _encode_2x("couchbases", hosts, "beer", options)
    assert cs.encode() == "couchbases://h1:11210,h2/beer?operation_timeout=2.5&certpath=/etc/ca.pem"
    hosts.append("h3")
    assert cs.hosts == ["h1:11210", "h2"]


def test_constructor_accepts_single_values_and_host_tuples():
    cs = ConnectionString(hosts=[("::1", 11210), Host("a", 9000, "http")], options={"operation_timeout": 3})
    assert cs.hosts == ["[::1]:11210", "a:9000=http"]
    assert cs.options == {"operation_timeout": ["3"]}


@pytest.mark.parametrize("kwargs", [
    {"scheme": "ftp"}, {"scheme": None}, {"bucket": 5}, {"hosts": "h1,h2"}, {"hosts": ["a:99999"]},
    {"hosts": [""]}, {"hosts": ["u@h"]}, {"options": {"operation_timeout": ["soon"]}},
    {"options": {"operation_timeout": [None]}}, {"options": {"": ["1"]}},
])
def test_constructor_checks_its_arguments(kwargs):
    with pytest.raises(ArgumentError):
        ConnectionString(**kwargs)


def test_a_connection_string_as_first_argument_is_parsed():
    cs = ConnectionString("couchbase://h1,h2/b?operation_timeout=1")
    assert cs == ConnectionString.parse("couchbase://h1,h2/b?operation_timeout=1")
    assert cs.hosts == ["h1", "h2"] and cs.bucket == "b"


# ---------------------------------------------------------------------- parse


def test_parse_gives_lists_and_text_hosts():
    cs = ConnectionString.parse("couchbase://host1:111,host2:222,[::1]:333/default?operation_timeout=4.2")
    assert cs.scheme == "couchbase" and cs.bucket == "default"
    assert cs.hosts == ["host1:111", "host2:222", "[::1]:333"]
    assert cs.options == {"operation_timeout": ["4.2"]}
    assert cs.implicit_port == 11210


def test_parse_without_bucket_or_options():
    cs = ConnectionString.parse("couchbase://h")
    assert cs.bucket == "" and cs.options == {}
    assert cs.encode() == "couchbase://h?"


def test_get_set_clear_option():
    cs = ConnectionString.parse("couchbase://h?operation_timeout=1&operation_timeout=2")
    assert cs.options["operation_timeout"] == ["1", "2"]
    assert cs.get_option("operation_timeout") == "1"
    assert cs.get_option("missing") is None and cs.get_option("missing", "d") == "d"
    cs.set_option("operation_timeout", "5")
    assert cs.options["operation_timeout"] == ["5"]
    cs.options["views_timeout"] = ["9"]  # the dict may be changed directly, as in 2.x
    assert cs.get_option("views_timeout") == "9"
    cs.clear_option("operation_timeout")
    cs.clear_option("never-set")
    assert "operation_timeout" not in cs.options
    assert cs.encode() == "couchbase://h?views_timeout=9"


def test_hosts_may_be_edited():
    cs = ConnectionString.parse("couchbase://a/b")
    cs.hosts.append("c:12000")
    cs.bucket = "other"
    assert cs.encode() == "couchbase://a,c:12000/other?"
    assert cs.kv_endpoints() == [("a", 11210), ("c", 12000)]


@pytest.mark.parametrize("scheme, port", [("http", 8091), ("couchbase", 11210), ("couchbases", 11207),
                                          ("memcached", -1)])
def test_implicit_port(scheme, port):
    assert ConnectionString(scheme=scheme).implicit_port == port


# --------------------------------------------------------------------- encode


@pytest.mark.parametrize("scheme, hosts, bucket, options", [
    ("couchbase", ["h"], "default", {}),
    ("couchbase", ["h1", "h2:11210"], "", {"operation_timeout": ["2.5"]}),
    ("http", ["h:8091"], "beer-sample", {"bootstrap_on": ["http"], "views_timeout": ["10"]}),
    ("couchbases", ["h"], "b", {"certpath": ["/etc/couchbase/ca.pem"]}),
    ("couchbase", ["h"], "b", {"client_string": ["a&b=c/d?e"]}),
    ("couchbase", ["h"], "b", {"client_string": ["caf\u00e9~_.-"]}),
    ("memcached", ["m1:11211", "m2:11212"], "", {}),
])
def test_encode_is_2x_byte_for_byte(scheme, hosts, bucket, options):
    cs = ConnectionString(bucket=bucket, hosts=hosts, options=options, scheme=scheme)
    assert cs.encode() == _encode_2x(scheme, hosts, bucket, options)
    assert str(cs) == cs.encode()


def test_encode_differs_from_2x_only_where_2x_did_not_round_trip():
    cs = ConnectionString(hosts=["h"], options={"client_string": ["a b+c"]})
    # 2.x wrote "a+b%2Bc"; its parser read "+" as a space but libcouchbase,
    # which got the text, as "+": %20 reads back the same everywhere
    assert cs.encode() == "couchbase://h/default?client_string=a%20b%2Bc"
    assert ConnectionString.parse(cs.encode()).get_option("client_string") == "a b+c"


def test_round_trip_keeps_every_value():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownOptionWarning)
        cs = ConnectionString.parse("couchbase://a,b:1=mcd/x?opt=1&opt=2&timeout=3")
        again = ConnectionString.parse(cs.encode())
    assert again == cs and again.options == {"opt": ["1", "2"], "timeout": ["3"]}


def test_secrets_stay_out_of_encode_unless_asked():
    cs = ConnectionString(hosts=["h"], options={"password": ["s3cret"], "username": ["u"]})
    assert "s3cret" not in cs.encode() and "s3cret" not in repr(cs)
    assert "password=s3cret" in cs.encode(include_secrets=True)


# ------------------------------------------------------------------ with buckets


def test_a_bucket_takes_a_connection_string_object(memcached_server):
    cs = ConnectionString.parse(memcached_server.connstr)
    cs.set_option("operation_timeout", 30)
    cs.options["views_timeout"] = ["1", "40"]  # repeated: the last is in effect
    b = Bucket(cs)
    try:
        assert b.timeout == 30 and b.views_timeout == 40
        b.upsert("connstr2x:k", "v")
        assert b.get("connstr2x:k").value == "v"
    finally:
        b.close()
    bad = ConnectionString.parse(memcached_server.connstr)
    bad.options["operation_timeout"] = "30"  # a str, not a list
    with pytest.raises(ArgumentError, match="list"):
        Bucket(bad)


def test_convert_1x_args():
    assert convert_1x_args("beer", host="h", port=8091, quiet=True) == {
        "quiet": True, "connection_string": "http://h:8091/beer"}
    assert convert_1x_args("b", host=[("a", 1), "c"])["connection_string"] == "http://a:1,c/b"
    assert convert_1x_args("b", connection_string="couchbase://x") == {"connection_string": "couchbase://x"}

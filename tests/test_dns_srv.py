"""DNS SRV bootstrap (libcouchbase 2.10's ``dnssrv``).

* The codec (``couchbase_core._engine.dns``): queries as RFC 1035 lays
  them out; replies decoded whole, cut at every byte (each cut is a
  DNSFormatError, nothing else), and hostile ones (wrong id, pointer loops,
  forward pointers, huge counts, over-long names, truncation) refused.
* The connection-string rules: when a lookup is made and of which name.
* End to end: a scripted DNS server on 127.0.0.1 (UDP) whose SRV records
  point at emulator nodes; the fallbacks to the name itself on NXDOMAIN, on
  silence (time out), on garbage; a second name server after a SERVFAIL; a
  forged reply (wrong id) ignored; and the gevent hub kept free meanwhile.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import warnings
from typing import Any, Callable, Iterator, List, Optional, Tuple

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from couchbase_core._engine.dns import (
    MAX_RECORDS,
    TYPE_SRV,
    DNSFormatError,
    SrvRecord,
    decode_srv_response,
    encode_srv_query,
    order_records,
    parse_nameserver,
    read_nameservers,
    srv_name,
)
from couchbase_core._engine.settings import Settings
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import ArgumentError, CouchbaseError, OptionIgnoredWarning
from couchbase_core.mock import MockCluster, MockError
from gcouchbase.bucket import Bucket as GBucket

ADMIN = {"username": "Administrator", "password": "password"}
NAME = "_couchbase._tcp.cb.example.test"

# ------------------------------------------------------------------ builders


def wire_name(name: str) -> bytes:
    out = b""
    for label in name.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def reply(ident: int, question: str, records: List[Tuple[int, int, int, bytes]], rcode: int = 0,
          flags: int = 0x8180, qtype: int = TYPE_SRV, extra: bytes = b"") -> bytes:
    """A reply to ``question``; each record is (priority, weight, port,
    target in wire form). The owner of each answer is a pointer to the
    question name (offset 12), as servers write it."""
    header = struct.pack("!HHHHHH", ident, flags | rcode, 1, len(records), 0, 0)
    body = wire_name(question) + struct.pack("!HH", qtype, 1)
    for priority, weight, port, target in records:
        rdata = struct.pack("!HHH", priority, weight, port) + target
        body += b"\xc0\x0c" + struct.pack("!HHIH", TYPE_SRV, 1, 60, len(rdata)) + rdata
    return header + body + extra


GOOD = reply(0x1234, NAME, [(10, 5, 11210, wire_name("a.example.test")),
                            (0, 1, 11211, wire_name("b.example.test")),
                            (10, 9, 11212, b"\x01c\xc0\x1c")])  # c + pointer to "cb.example.test"...


# --------------------------------------------------------------------- codec


def test_query_layout():
    q = encode_srv_query(NAME, 0xBEEF)
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", q)
    assert (ident, flags, qd, an, ns, ar) == (0xBEEF, 0x0100, 1, 0, 0, 0)
    assert q[12:] == wire_name(NAME) + struct.pack("!HH", 33, 1)


def test_srv_names():
    assert srv_name("cb.example.test", False) == "_couchbase._tcp.cb.example.test"
    assert srv_name("cb.example.test.", True) == "_couchbases._tcp.cb.example.test"


def test_decode_a_reply_with_compression():
    answer = decode_srv_response(GOOD, 0x1234, NAME)
    assert answer.rcode == 0
    # offset 0x1c is inside the question name: "_tcp" starts at 12+11=23,
    # "cb" at 23+5=28 = 0x1c
    assert answer.records == [SrvRecord(10, 5, 11210, "a.example.test"), SrvRecord(0, 1, 11211, "b.example.test"),
                              SrvRecord(10, 9, 11212, "c.cb.example.test")]
    assert order_records(answer.records) == [("b.example.test", 11211), ("c.cb.example.test", 11212),
                                             ("a.example.test", 11210)]


def test_the_question_is_compared_without_case():
    answer = decode_srv_response(reply(0x1234, NAME.upper(), [(1, 1, 2, wire_name("x.test"))]), 0x1234, NAME)
    assert answer.records == [SrvRecord(1, 1, 2, "x.test")]


def test_every_cut_of_a_reply_is_a_format_error():
    for cut in range(len(GOOD)):
        with pytest.raises(DNSFormatError):
            decode_srv_response(GOOD[:cut], 0x1234, NAME)


@pytest.mark.parametrize("data,why", [
    (reply(0x1235, NAME, []), "another query"),
    (reply(0x1234, NAME, [], flags=0x0100), "not a reply"),
    (reply(0x1234, NAME, [], flags=0x8380), "truncated"),
    (reply(0x1234, NAME, [], flags=0x8980), "opcode"),
    (reply(0x1234, "_couchbase._tcp.other.test", []), "another question"),
    (reply(0x1234, NAME, [], qtype=1), "another question"),
    # a pointer to itself, a forward pointer, two pointers pointing at each other
    (reply(0x1234, NAME, [(0, 0, 1, b"\xc1\x00")]), "backwards"),
    (reply(0x1234, NAME, [(0, 0, 1, b"\x40abc\x00")]), "label type"),
    # counts far larger than the datagram
    (struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 65535, 0, 0) + wire_name(NAME) + b"\0\x21\0\x01", "claims more"),
    (struct.pack("!HHHHHH", 0x1234, 0x8180, 2, 0, 0, 0) + wire_name(NAME) + b"\0\x21\0\x01" * 3, "questions"),
    (b"\x12\x34", "shorter than a DNS header"),
])
def test_hostile_replies_are_refused(data, why):
    with pytest.raises(DNSFormatError, match=why):
        decode_srv_response(data, 0x1234, NAME)


def test_pointer_loop_is_refused():
    # the SRV target is a pointer to itself (offset of the target)
    base = reply(0x1234, NAME, [(0, 0, 1, b"\xc0\x00")])
    target_at = len(base) - 2
    data = base[:target_at] + struct.pack("!H", 0xC000 | target_at)
    with pytest.raises(DNSFormatError, match="backwards"):
        decode_srv_response(data, 0x1234, NAME)
    # two pointers pointing at each other: the second lands after the first
    data = base[:target_at] + struct.pack("!H", 0xC000 | (target_at + 2)) + struct.pack("!H", 0xC000 | target_at)
    with pytest.raises(DNSFormatError, match="backwards"):
        decode_srv_response(data, 0x1234, NAME)


def test_over_long_names_are_refused():
    long_name = b"".join(b"\x3f" + b"x" * 63 for _ in range(4)) + b"\0"  # 257 bytes
    with pytest.raises(DNSFormatError, match="255"):
        decode_srv_response(reply(0x1234, NAME, [(0, 0, 1, long_name)]), 0x1234, NAME)
    with pytest.raises(DNSFormatError):
        encode_srv_query("x" * 64 + ".test", 1)


def test_records_are_bounded_and_empty_targets_skipped():
    many = [(0, 0, 1000 + i, wire_name("n%d.test" % i)) for i in range(MAX_RECORDS + 20)]
    answer = decode_srv_response(reply(0x1234, NAME, many), 0x1234, NAME)
    assert len(answer.records) == MAX_RECORDS
    none = decode_srv_response(reply(0x1234, NAME, [(0, 0, 0, b"\0")]), 0x1234, NAME)
    assert none.records == []  # "." means "no service here"
    odd = decode_srv_response(reply(0x1234, NAME, [(0, 0, 1, b"\x03a\x00b\x00"), (0, 0, 2, wire_name("ok.test"))]),
                              0x1234, NAME)
    assert odd.records == [SrvRecord(0, 0, 2, "ok.test")]  # a target that is no host name is skipped


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_format_error(data):
    try:
        decode_srv_response(data, 0x1234, NAME)
    except DNSFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_replies_decode_or_raise_format_error(data):
    raw = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode_srv_response(bytes(raw), 0x1234, NAME)
    except DNSFormatError:
        pass


def test_nameserver_parsing(tmp_path):
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:53") == ("::1", 53)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.example.test", "127.0.0.1:x", "127.0.0.1:0", "[::1]x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.test\nnameserver 10.0.0.1\nnameserver not-an-address\n"
                    "nameserver ::1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    assert read_nameservers(str(conf)) == [("10.0.0.1", 53), ("::1", 53), ("10.0.0.2", 53)]
    assert read_nameservers(str(tmp_path / "missing")) == []


# ------------------------------------------------------ connection strings


def srv_of(connstr: str) -> Optional[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Settings.from_connstr(connstr).dnssrv_name


def test_when_a_lookup_is_made():
    assert srv_of("couchbase://cb.example.test") == "_couchbase._tcp.cb.example.test"
    assert srv_of("couchbases://cb.example.test/b") == "_couchbases._tcp.cb.example.test"
    assert srv_of("couchbase://cb.example.test?ssl=on") == "_couchbases._tcp.cb.example.test"
    assert srv_of("couchbase://cb.example.test:11210") is None
    assert srv_of("couchbase://a.example.test,b.example.test") is None
    assert srv_of("couchbase://cb.example.test?dnssrv=off") is None
    assert srv_of("couchbase://cb.example.test?dnssrv=false") is None
    assert srv_of("http://cb.example.test") is None
    assert srv_of("memcached://cb.example.test") is None
    # ours: localhost and addresses only when asked for
    assert srv_of("couchbase://localhost") is None
    assert srv_of("couchbase://127.0.0.1") is None
    assert srv_of("couchbase://localhost?dnssrv=on") == "_couchbase._tcp.localhost"
    assert srv_of("couchbase://%s.example.test" % ("x" * 64)) is None  # not a DNS name


def test_dnssrv_on_that_cannot_apply_warns():
    with pytest.warns(OptionIgnoredWarning, match="dnssrv"):
        Settings.from_connstr("couchbase://a.example.test,b.example.test?dnssrv=on")


def test_nameserver_override_and_timeout_options():
    s = Settings.from_connstr("couchbase://cb.example.test?dnssrv_nameserver=127.0.0.1:5353,[::1]"
                              "&dnssrv_timeout=250ms")
    assert s.dnssrv_nameservers == [("127.0.0.1", 5353), ("::1", 53)]
    assert s.dnssrv_timeout == 0.25
    for bad in ("dnssrv_nameserver=ns.example.test", "dnssrv_timeout=0", "dnssrv=maybe"):
        with pytest.raises(ArgumentError):
            Settings.from_connstr("couchbase://cb.example.test?" + bad)


# ------------------------------------------------------- a scripted server


class ScriptedDNS:
    """A UDP DNS server on 127.0.0.1 answering every query with ``answer``
    (``answer(query_bytes) -> list of datagrams``; empty = silence). It
    records the questions it saw and stops by itself after ``lifetime``."""

    def __init__(self, answer: Callable[[bytes], List[bytes]], lifetime: float = 120.0) -> None:
        self.answer = answer
        self.queries: List[bytes] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._deadline = time.monotonic() + lifetime
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % self.port

    def _run(self) -> None:
        while not self._stop and time.monotonic() < self._deadline:
            try:
                query, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries.append(query)
            for datagram in self.answer(query):
                self.sock.sendto(datagram, peer)
        self.sock.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)

    def question(self, index: int = 0) -> str:
        q = self.queries[index]
        pos, labels = 12, []
        while q[pos]:
            labels.append(q[pos + 1:pos + 1 + q[pos]].decode())
            pos += 1 + q[pos]
        return ".".join(labels)


def srv_answer(records: List[Tuple[int, int, int, str]], rcode: int = 0) -> Callable[[bytes], List[bytes]]:
    def answer(query: bytes) -> List[bytes]:
        ident = struct.unpack_from("!H", query)[0]
        pos = 12
        while query[pos]:
            pos += 1 + query[pos]
        question = query[12:pos + 1]
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(records), 0, 0)
        body = question + b"\0\x21\0\x01"
        for priority, weight, port, target in records:
            rdata = struct.pack("!HHH", priority, weight, port) + wire_name(target)
            body += b"\xc0\x0c" + struct.pack("!HHIH", TYPE_SRV, 1, 60, len(rdata)) + rdata
        return [header + body]
    return answer


@pytest.fixture
def dns_server() -> Iterator[Callable[..., ScriptedDNS]]:
    servers: List[ScriptedDNS] = []

    def start(answer: Callable[[bytes], List[bytes]]) -> ScriptedDNS:
        server = ScriptedDNS(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=2, replicas=1) as c:
        yield c


@pytest.fixture(scope="module")
def default_port_cluster() -> Iterator[MockCluster]:
    """A one-node cluster whose KV port is the default 11210, for the
    fallbacks (the name itself, with the default port). Skips when those
    ports are taken on this machine."""
    try:
        c = MockCluster(nodes=1, replicas=0, base_port=11207).start()
    except MockError as exc:
        pytest.skip("ports 11207-11216 are not free here: %s" % exc)
    if c.kv_ports()[0] != 11210:
        c.stop()
        pytest.skip("the emulator did not get port 11210")
    try:
        yield c
    finally:
        c.stop()


FLAVOURS = {"blocking": Bucket, "gevent": GBucket}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_srv_records_seed_the_bootstrap(cluster, dns_server, flavour):
    kv = cluster.kv_ports()
    server = dns_server(srv_answer([(20, 0, kv[1], "127.0.0.1"), (10, 0, kv[0], "127.0.0.1")]))
    b = FLAVOURS[flavour]("couchbase://cb.example.test/default?dnssrv_nameserver=%s" % server.address,
                          operation_timeout=30, **ADMIN)
    try:
        b.upsert("srv:1", {"v": 1})
        assert b.get("srv:1").value == {"v": 1}
        assert sorted(int(n.rsplit(":", 1)[1]) for n in b.server_nodes) == sorted(kv)
    finally:
        b.close()
    assert server.question() == "_couchbase._tcp.cb.example.test"
    assert struct.unpack_from("!H", server.queries[0], len(server.queries[0]) - 4)[0] == TYPE_SRV


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_srv_targets_may_be_names(cluster, dns_server, flavour):
    """Targets are resolved like any host (here ``localhost``, which every
    resolver answers locally), through the bucket's IOPS."""
    kv = cluster.kv_ports()
    server = dns_server(srv_answer([(0, 0, kv[0], "localhost")]))
    b = FLAVOURS[flavour]("couchbase://cb.example.test/default?dnssrv_nameserver=%s&bootstrap_on=cccp"
                          % server.address, operation_timeout=30, **ADMIN)
    try:
        b.upsert("srv:named", 1)
    finally:
        b.close()


def test_targets_are_tried_in_priority_then_weight_order(dns_server):
    """Three targets that refuse: the bootstrap error lists what each said,
    in the order they were tried."""
    dead = [socket.socket() for _ in range(3)]
    for sock in dead:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refuses
    ports = [sock.getsockname()[1] for sock in dead]
    try:
        server = dns_server(srv_answer([(50, 0, ports[0], "127.0.0.1"), (1, 1, ports[1], "127.0.0.1"),
                                        (1, 9, ports[2], "127.0.0.1")]))
        with pytest.raises(CouchbaseError) as info:
            Bucket("couchbase://cb.example.test/default?dnssrv_nameserver=%s&bootstrap_on=cccp" % server.address,
                   **ADMIN)
    finally:
        for sock in dead:
            sock.close()
    text = str(info.value)
    where = [text.index("127.0.0.1:%d" % port) for port in (ports[2], ports[1], ports[0])]
    assert where == sorted(where), text


def test_a_forged_reply_is_ignored(cluster, dns_server):
    kv = cluster.kv_ports()
    good = srv_answer([(0, 0, kv[0], "127.0.0.1")])

    def forged_then_good(query: bytes) -> List[bytes]:
        real = good(query)[0]
        wrong = struct.pack("!H", struct.unpack_from("!H", real)[0] ^ 0xFFFF) + real[2:]
        return [wrong, real]

    server = dns_server(forged_then_good)
    b = Bucket("couchbase://cb.example.test/default?dnssrv_nameserver=%s" % server.address, operation_timeout=30,
               **ADMIN)
    try:
        b.upsert("srv:forged", 1)
    finally:
        b.close()


def test_servfail_moves_to_the_next_nameserver(cluster, dns_server):
    kv = cluster.kv_ports()
    failing = dns_server(srv_answer([], rcode=2))
    good = dns_server(srv_answer([(0, 0, kv[0], "127.0.0.1")]))
    b = Bucket("couchbase://cb.example.test/default?dnssrv_nameserver=%s,%s" % (failing.address, good.address),
               operation_timeout=30, **ADMIN)
    try:
        b.upsert("srv:second", 1)
    finally:
        b.close()
    assert len(failing.queries) == 1 and len(good.queries) == 1


def _nxdomain(query: bytes) -> List[bytes]:
    return srv_answer([], rcode=3)(query)


def _silent(query: bytes) -> List[bytes]:
    return []


def _garbage(query: bytes) -> List[bytes]:
    return [query[:2] + b"\x81\x80\xff\xff" + b"\x07garbage" * 3]


def _no_records(query: bytes) -> List[bytes]:
    return srv_answer([])(query)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("answer", [_nxdomain, _silent, _garbage, _no_records],
                         ids=["nxdomain", "silent", "garbage", "no_records"])
def test_fallback_to_the_name_itself(default_port_cluster, dns_server, answer, flavour):
    server = dns_server(answer)
    b = FLAVOURS[flavour]("couchbase://localhost/default?dnssrv=on&dnssrv_nameserver=%s&dnssrv_timeout=0.3"
                          % server.address, operation_timeout=30, **ADMIN)
    try:
        b.upsert("srv:fallback", 1)
        assert [n.rsplit(":", 1)[1] for n in b.server_nodes] == ["11210"]
    finally:
        b.close()
    assert server.question() == "_couchbase._tcp.localhost"


def test_nothing_listening_falls_back(default_port_cluster):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens: ICMP port unreachable -> ECONNREFUSED
    b = Bucket("couchbase://localhost/default?dnssrv=on&dnssrv_nameserver=127.0.0.1:%d&dnssrv_timeout=5" % port,
               operation_timeout=30, **ADMIN)
    try:
        b.upsert("srv:refused", 1)
    finally:
        b.close()


def test_the_hub_runs_while_the_lookup_waits(cluster, dns_server):
    """A silent name server: the gevent bucket's constructor waits for the
    lookup's timeout cooperatively; other greenlets run meanwhile."""
    kv = cluster.kv_ports()
    ticks: List[int] = []

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    g = gevent.spawn(ticker)
    silent = dns_server(_silent)
    good = dns_server(srv_answer([(0, 0, kv[0], "127.0.0.1")]))
    gevent.sleep(0)
    before = len(ticks)
    try:
        b = GBucket("couchbase://cb.example.test/default?dnssrv_nameserver=%s,%s&dnssrv_timeout=1"
                    % (silent.address, good.address), operation_timeout=30, **ADMIN)
        during = len(ticks)
        b.upsert("srv:hub", 1)
        b.close()
    finally:
        g.kill()
    assert during > before
    assert len(silent.queries) == 1 and len(good.queries) == 1


def test_close_during_the_lookup_stops_it(dns_server):
    from couchbase_core.asynchronous.bucket import AsyncBucket
    from couchbase_core.iops.select import SelectIOPS

    server = dns_server(_silent)
    iops = SelectIOPS()
    outcome: List[Any] = []
    b = AsyncBucket(iops, "couchbase://cb.example.test/default?dnssrv_nameserver=%s&dnssrv_timeout=30"
                    % server.address, **ADMIN)
    b.on_connect(outcome.append)
    deadline = time.monotonic() + 10
    while not server.queries and time.monotonic() < deadline:
        iops.run_once(0.05)
    assert server.queries
    b.close()
    while not outcome and time.monotonic() < deadline:
        iops.run_once(0.05)
    assert outcome and outcome[0] is not None  # the bootstrap ended: closed

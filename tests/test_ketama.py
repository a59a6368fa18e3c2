"""Tests for key placement: the ketama continuum (cluster-config.md §5) and,
as documentation of the formula, the CRC32 vBucket mapping (§3)."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import Counter

import pytest

from couchbase_core._engine import config
from couchbase_core._engine.config import Ketama, authority

SERVERS = ["192.168.1.%d:11210" % n for n in (101, 102, 103, 104)]


@pytest.fixture(scope="module")
def ring() -> Ketama:
    return Ketama(SERVERS)


def owner_of(ring: Ketama, key: bytes) -> str:
    return ring.servers[ring.server_for(key)]


# -- the worked example ---------------------------------------------------------------


def test_digest_points_of_first_server(ring):
    digest = hashlib.md5(b"192.168.1.101:11210-0").digest()
    assert digest.hex() == "e124b7a6434eb3ad221a240e1b36366d"
    expected = [2797020385, 2914209347, 237247010, 1832269339]
    assert list(struct.unpack("<4I", digest)) == expected
    owned = {p for p, server in ring.points if server == "192.168.1.101:11210"}
    assert set(expected) <= owned


def test_continuum_has_640_points(ring):
    points = ring.points
    assert len(points) == 640
    assert [p for p, _ in points] == sorted(p for p, _ in points)
    assert Counter(server for _, server in points) == {s: 160 for s in SERVERS}


def test_lowest_three_points(ring):
    assert ring.points[:3] == [
        (19069626, "192.168.1.104:11210"),
        (28439255, "192.168.1.101:11210"),
        (36078660, "192.168.1.104:11210"),
    ]


@pytest.mark.parametrize("key, h, point, server", [
    (b"foo", 3675831724, 3679616294, "192.168.1.103:11210"),
    (b"hello", 708854109, 718195277, "192.168.1.102:11210"),
    (b"user:1", 282964413, 287721687, "192.168.1.101:11210"),
])
def test_worked_example_keys(ring, key, h, point, server):
    assert Ketama.hash_key(key) == h
    if key == b"foo":
        assert hashlib.md5(key).hexdigest().startswith("acbd18db")
        assert h == 0xDB18BDAC
    following = [p for p, _ in ring.points if p >= h]
    assert following[0] == point
    assert dict(ring.points)[point] == server
    assert owner_of(ring, key) == server


def test_servers_are_sorted_and_indexed(ring):
    assert ring.servers == SERVERS
    assert ring.server_for(b"user:1") == 0
    assert ring.server_for(b"hello") == 1
    assert ring.server_for(b"foo") == 2


# -- lookup semantics ------------------------------------------------------------------


def test_key_past_last_point_wraps_to_first(ring):
    last = ring.points[-1][0]
    key = next(k for k in (b"wrap:%d" % i for i in range(200000)) if Ketama.hash_key(k) > last)
    assert owner_of(ring, key) == ring.points[0][1]


def test_hash_equal_to_point_picks_that_point(ring, monkeypatch):
    points = ring.points
    i = next(i for i in range(len(points) - 1) if points[i][1] != points[i + 1][1])
    target, server = points[i]

    class FakeMd5:
        def __init__(self, data):
            self.data = data

        def digest(self):
            return struct.pack("<I", target) + bytes(12)

    class FakeHashlib:
        md5 = FakeMd5

    monkeypatch.setattr(config, "hashlib", FakeHashlib)
    assert Ketama.hash_key(b"anything") == target
    assert owner_of(ring, b"anything") == server


def test_hash_just_above_point_moves_on(ring, monkeypatch):
    points = ring.points
    i = next(i for i in range(len(points) - 1)
             if points[i][1] != points[i + 1][1] and points[i + 1][0] > points[i][0] + 1)
    target = points[i][0] + 1

    class FakeMd5:
        def __init__(self, data):
            pass

        def digest(self):
            return struct.pack("<I", target) + bytes(12)

    monkeypatch.setattr(config, "hashlib", type("H", (), {"md5": FakeMd5}))
    assert owner_of(ring, b"k") == points[i + 1][1]


def test_distribution_over_four_servers(ring):
    counts = Counter(ring.server_for(b"key:%d" % i) for i in range(10000))
    assert set(counts) == {0, 1, 2, 3}
    for index, n in counts.items():
        assert 1500 <= n <= 3500, (ring.servers[index], n)


def test_single_server_owns_everything():
    ring = Ketama(["10.0.0.1:11211"])
    assert len(ring.points) == 160
    assert {ring.server_for(b"k%d" % i) for i in range(200)} == {0}


def test_empty_server_list_rejected():
    with pytest.raises(ValueError):
        Ketama([])


def test_lookup_is_deterministic(ring):
    again = Ketama(list(SERVERS))
    for i in range(500):
        key = b"det:%d" % i
        assert again.server_for(key) == ring.server_for(key)


# -- sorting ------------------------------------------------------------------------------


def test_input_order_does_not_matter(ring):
    shuffled = [SERVERS[2], SERVERS[0], SERVERS[3], SERVERS[1]]
    other = Ketama(shuffled)
    assert other.servers == SERVERS
    assert other.points == ring.points
    for key in (b"foo", b"hello", b"user:1", b"zzz"):
        assert owner_of(other, key) == owner_of(ring, key)


def test_sort_is_bytewise_not_numeric():
    ring = Ketama(["9.0.0.1:11210", "10.0.0.2:11210", "h:9000", "h:11210", "b:1", "B:1", "a:1"])
    assert ring.servers == ["10.0.0.2:11210", "9.0.0.1:11210", "B:1", "a:1", "b:1", "h:11210", "h:9000"]


def test_sort_with_non_ascii_is_utf8_bytewise():
    names = ["\u00e9:1", "z:1", "\U0001f600:1", "\uffff:1"]
    ring = Ketama(names)
    assert ring.servers == sorted(names, key=lambda s: s.encode("utf-8"))
    assert ring.servers[0] == "z:1"


def test_server_index_follows_sorted_list():
    ring = Ketama(["b:1", "a:1"])
    assert ring.servers == ["a:1", "b:1"]
    owners = Counter(ring.servers[ring.server_for(b"x%d" % i)] for i in range(400))
    assert set(owners) == {"a:1", "b:1"}
    # points owned by "a:1" come from MD5("a:1-<h>")
    first = struct.unpack("<4I", hashlib.md5(b"a:1-0").digest())
    owned = {p for p, s in ring.points if s == "a:1"}
    assert set(first) <= owned


# -- authority strings ---------------------------------------------------------------


@pytest.mark.parametrize("host, port, text", [
    ("192.168.1.101", 11210, "192.168.1.101:11210"),
    ("example.com", 11211, "example.com:11211"),
    ("::1", 11210, "[::1]:11210"),
    ("fe80::1:2", 11211, "[fe80::1:2]:11211"),
    ("[::1]", 11210, "[::1]:11210"),
    ("2001:db8::7", 1, "[2001:db8::7]:1"),
])
def test_authority(host, port, text):
    assert authority(host, port) == text


def test_ipv6_points_use_bracketed_authority():
    name = authority("::1", 11210)
    ring = Ketama([name, authority("127.0.0.1", 11210)])
    assert ring.servers == ["127.0.0.1:11210", "[::1]:11210"]
    first = struct.unpack("<4I", hashlib.md5(b"[::1]:11210-0").digest())
    owned = {p for p, s in ring.points if s == "[::1]:11210"}
    assert set(first) <= owned


# -- vBucket mapping formula (cluster-config.md §3), checked with zlib -----------------


@pytest.mark.parametrize("key, crc, mid, vb", [
    (b"foo", 0x8C736521, 3187, 115),
    (b"hello", 0x3610A686, 13840, 528),
    (b"user:1", 0x7BA5C282, 31653, 933),
])
def test_vbucket_crc_examples(key, crc, mid, vb):
    assert zlib.crc32(key) & 0xFFFFFFFF == crc
    assert (crc >> 16) & 0x7FFF == mid
    assert mid % 1024 == vb

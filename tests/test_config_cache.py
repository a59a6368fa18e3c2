"""``config_cache`` (couchbase_core/_config_cache.py) against the emulator:
the file is written when a config arrives, seeds the next bootstrap, and a
corrupt, stale or foreign file is survived (and rewritten)."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import OptionIgnoredWarning
from couchbase_core.mock import MockCluster
from tests.flavours import open_bucket

ADMIN = {"username": "Administrator", "password": "password"}
CONFIG_CACHE_LOADED = 0x15


def _dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path) -> dict:
    with open(path, "rb") as fh:
        return json.loads(fh.read())


def _kv_ports(cfg: dict) -> set:
    return {int(entry.rsplit(":", 1)[1]) for entry in cfg["vBucketServerMap"]["serverList"]}


@pytest.fixture
def cache_path(tmp_path):
    return tmp_path / "cluster.json"


@pytest.mark.parametrize("flavour", ["blocking", "async", "gevent"])
def test_written_then_seeds_a_bootstrap_whose_seed_is_dead(flavour, couchbase_mock, cache_path, unique_key):
    live = couchbase_mock.connstr_for("default", config_cache=cache_path)
    first = open_bucket(flavour, live, **ADMIN)
    try:
        first.upsert(unique_key + "cc", 1)
        raw = getattr(first, "raw", first)
        assert raw._cntl(CONFIG_CACHE_LOADED) == 0  # no file at start
    finally:
        first.close()
    cfg = _read(cache_path)
    assert cfg["name"] == "default"
    assert _kv_ports(cfg) == set(couchbase_mock.kv_ports("default"))
    # The connection string now names only a dead node: the cache's nodes
    # make the bootstrap work.
    dead = "couchbase://127.0.0.1:%d/default?config_cache=%s" % (_dead_port(), cache_path)
    second = open_bucket(flavour, dead, **ADMIN)
    try:
        assert second.get(unique_key + "cc").value == 1
        raw = getattr(second, "raw", second)
        assert raw._cntl(CONFIG_CACHE_LOADED) == 1
    finally:
        second.close()


def test_without_cache_the_dead_seed_fails(couchbase_mock, tmp_path):
    from couchbase_core.exceptions import CouchbaseError

    with pytest.raises(CouchbaseError):
        Bucket("couchbase://127.0.0.1:%d/default?config_cache=%s&config_total_timeout=10"
               % (_dead_port(), tmp_path / "absent.json"), **ADMIN)


@pytest.mark.parametrize("content", [b"", b"{not json", b"\x00\xff" * 10, b'{"rev": 1}', b"[1,2,3]"])
def test_corrupt_file_is_ignored_logged_and_rewritten(couchbase_mock, cache_path, caplog, content):
    cache_path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="couchbase_core.engine"):
        b = Bucket(couchbase_mock.connstr_for("default", config_cache=cache_path), **ADMIN)
    try:
        b.upsert("cc:corrupt", 1)
        assert b._cntl(CONFIG_CACHE_LOADED) == 0
    finally:
        b.close()
    assert any("unusable" in r.getMessage() and str(cache_path) in r.getMessage() for r in caplog.records)
    assert _read(cache_path)["name"] == "default"


def test_stale_file_falls_back_to_the_connection_string(couchbase_mock, cache_path, unique_key):
    b = Bucket(couchbase_mock.connstr_for("default", config_cache=cache_path), **ADMIN)
    b.close()
    # The nodes in the file moved away: every KV port of the file is dead now.
    text = cache_path.read_text()
    for port in couchbase_mock.kv_ports("default"):
        text = text.replace(":%d" % port, ":%d" % _dead_port()).replace('"kv": %d' % port, '"kv": 1')
        text = text.replace('"kv":%d' % port, '"kv":%d' % _dead_port())
    cache_path.write_text(text)
    stale_ports = _kv_ports(json.loads(text))
    assert not stale_ports & set(couchbase_mock.kv_ports("default"))
    b = Bucket(couchbase_mock.connstr_for("default", config_cache=cache_path), **ADMIN)
    try:
        b.upsert(unique_key + "stale", 2)
        assert b.get(unique_key + "stale").value == 2
        assert b._cntl(CONFIG_CACHE_LOADED) == 0  # the config came from a connection-string seed
    finally:
        b.close()
    assert _kv_ports(_read(cache_path)) == set(couchbase_mock.kv_ports("default"))


def test_config_of_another_bucket_is_not_used(couchbase_mock, cache_path, caplog):
    Bucket(couchbase_mock.connstr_for("default", config_cache=cache_path), **ADMIN).close()
    cfg = _read(cache_path)
    cfg["name"] = "other"
    cache_path.write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="couchbase_core.engine"):
        b = Bucket(couchbase_mock.connstr_for("default", config_cache=cache_path), **ADMIN)
    try:
        assert b._cntl(CONFIG_CACHE_LOADED) == 0
    finally:
        b.close()
    assert any("bucket 'other'" in r.getMessage() for r in caplog.records)
    assert _read(cache_path)["name"] == "default"


def test_unwritable_path_is_logged_not_raised(couchbase_mock, tmp_path, caplog):
    path = tmp_path / "no-such-dir" / "cache.json"
    with caplog.at_level(logging.WARNING, logger="couchbase_core.engine"):
        b = Bucket(couchbase_mock.connstr_for("default", config_cache=path), **ADMIN)
        try:
            b.upsert("cc:unwritable", 1)
        finally:
            b.close()
    assert [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert not path.exists()


def test_file_follows_topology_changes(tmp_path):
    path = tmp_path / "cache.json"
    with MockCluster(nodes=2, replicas=1) as cluster:
        b = Bucket(cluster.connstr_for("default", config_cache=path, config_poll_interval=0.2), **ADMIN)
        try:
            before = _read(path)
            assert len(_kv_ports(before)) == 2
            cluster.failover(1)
            deadline = time.monotonic() + 60
            while _read(path)["rev"] == before["rev"]:
                assert time.monotonic() < deadline, "the cache file never received the new config"
                b.upsert("cc:topology", 1)  # runs the loop (and the config poll)
                time.sleep(0.05)
            assert len(_kv_ports(_read(path))) == 1
        finally:
            b.close()


def test_memcached_scheme_warns(memcached_server, tmp_path):
    with pytest.warns(OptionIgnoredWarning, match="config_cache"):
        b = Bucket("%s?config_cache=%s" % (memcached_server.connstr, tmp_path / "c.json"))
    b.close()
    assert not (tmp_path / "c.json").exists()

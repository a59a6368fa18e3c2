"""Shared fixtures: real memcached servers and the three bucket flavours.

Key-value tests run against a real memcached started here on a free loopback
port. If no memcached binary exists the fixture tries ``scripts/ensure-memcached``
(which installs the Debian package when it can) and otherwise fails with a
message saying how to install it: these tests are never skipped.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from couchbase_core.testing.memcached import MemcachedMissing, MemcachedServer, find_memcached
from tests.flavours import FLAVOURS, open_bucket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_memcached() -> None:
    try:
        find_memcached()
        return
    except MemcachedMissing:
        pass
    script = os.path.join(ROOT, "scripts", "ensure-memcached")
    proc = subprocess.run([script], capture_output=True, text=True)
    try:
        find_memcached()
    except MemcachedMissing as exc:
        pytest.fail("%s\n%s%s" % (exc, proc.stdout, proc.stderr), pytrace=False)


@pytest.fixture(scope="session")
def memcached_server():
    """One memcached for the whole session (tests use distinct keys)."""
    _ensure_memcached()
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def fresh_memcached():
    """A memcached of the test's own, for tests that freeze, kill or flush it."""
    _ensure_memcached()
    with MemcachedServer() as server:
        yield server


@pytest.fixture(params=FLAVOURS)
def flavour(request):
    """Name of the bucket flavour: 'blocking', 'async' or 'gevent'."""
    return request.param


@pytest.fixture
def bucket(flavour, memcached_server):
    """A bucket of each flavour on the session memcached (the async one
    wrapped so the same test code drives it through callbacks)."""
    b = open_bucket(flavour, memcached_server.connstr)
    yield b
    b.close()


@pytest.fixture
def unique_key(request):
    """A key prefix unique to the running test."""
    name = request.node.nodeid.split("::")[-1]
    return "t:%s:%d:" % (name[:80], os.getpid())


@pytest.fixture(params=["raw_decode", "slice_decode"])
def both_row_decoders(request, monkeypatch):
    """Run a row-parser test with each way of decoding a row: ``raw_decode``
    (CPython's default) and ``json.loads`` of the scanned slice (PyPy's),
    whichever interpreter runs the suite."""
    import couchbase_core._engine.rows as rows_mod

    monkeypatch.setattr(rows_mod, "SLICE_DECODE", request.param == "slice_decode")
    return request.param

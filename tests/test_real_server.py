"""The same basic flows against a real Couchbase Server, when one is configured.

Set ``GCOUCHBASE_REAL_CONNSTR`` (e.g. ``couchbase://10.0.0.5/default``) and,
for RBAC servers, ``GCOUCHBASE_REAL_USERNAME`` / ``GCOUCHBASE_REAL_PASSWORD``.
Without them these tests are skipped with a message saying so (the emulator
tests cover the same ground on every run).
"""

from __future__ import annotations

import os
import uuid

import pytest

from couchbase_core.exceptions import KeyExistsError, NotFoundError
from tests.flavours import FLAVOURS, open_bucket

CONNSTR = os.environ.get("GCOUCHBASE_REAL_CONNSTR")
USERNAME = os.environ.get("GCOUCHBASE_REAL_USERNAME")
PASSWORD = os.environ.get("GCOUCHBASE_REAL_PASSWORD")

pytestmark = pytest.mark.skipif(
    not CONNSTR, reason="no real Couchbase Server configured: set GCOUCHBASE_REAL_CONNSTR "
                        "(and GCOUCHBASE_REAL_USERNAME / GCOUCHBASE_REAL_PASSWORD) to run these")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_key_value_round_trip_on_a_real_server(flavour):
    b = open_bucket(flavour, CONNSTR, username=USERNAME, password=PASSWORD)
    prefix = "gcb-test:%s:" % uuid.uuid4().hex
    try:
        b.upsert(prefix + "a", {"n": 1}, ttl=60)
        assert b.get(prefix + "a").value == {"n": 1}
        with pytest.raises(KeyExistsError):
            b.insert(prefix + "a", 2)
        keys = [prefix + str(i) for i in range(100)]
        assert b.upsert_multi({k: k for k in keys}, ttl=60).all_ok
        assert {k: r.value for k, r in b.get_multi(keys).items()} == {k: k for k in keys}
        assert b.remove_multi(keys).all_ok
        with pytest.raises(NotFoundError):
            b.get(keys[0])
    finally:
        b.close()

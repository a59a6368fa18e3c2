"""The key-value API on Couchbase buckets, against the cluster emulator, on
all three bucket flavours (blocking, async driven through its callbacks,
gevent).

Covers locks, get-and-touch, touch, replica reads, observe/endure,
observe-based durability (persist_to/replicate_to) on every mutation and the
durability() context, synchronous durability levels, mutation tokens, the
sub-document API and the data structures built on it, item collections,
pipelines, lockmode, stats groups, ping/diagnostics, flush over REST, Snappy
compression, data_passthrough and no_format.

One emulated cluster (3 nodes, 1 replica) is shared by the module; every test
uses keys prefixed with its own node id (which includes the flavour).
Replication and persistence lags, response delays and the cluster clock are
emulator controls: lags are cleared after each test, the clock only ever
moves forward and only matters to the keys of the test that moves it.
"""

from __future__ import annotations

import base64
import threading
import time
import urllib.parse
import urllib.request

import pytest

import couchbase_core.subdocument as SD
from couchbase_core import (
    DURABILITY_MAJORITY,
    DURABILITY_MAJORITY_AND_PERSIST_TO_ACTIVE,
    DURABILITY_PERSIST_TO_MAJORITY,
    FMT_BYTES,
    FMT_JSON,
    FMT_PICKLE,
    FMT_UTF8,
    LOCKMODE_EXC,
    LOCKMODE_WAIT,
)
from couchbase_core._engine.config import authority
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.bucket import PingStatus
from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    DocumentNotJsonError,
    DurabilityImpossibleError,
    DurabilityInvalidLevelError,
    DurabilitySyncWriteAmbiguousError,
    KeyExistsError,
    LockedError,
    NotFoundError,
    NotLockedError,
    NotStoredError,
    NotSupportedError,
    ObjectThreadError,
    PipelineError,
    QueueEmpty,
    SubdocBadDeltaError,
    SubdocCantInsertValueError,
    SubdocEmptyPathError,
    SubdocPathExistsError,
    SubdocPathInvalidError,
    SubdocPathMismatchError,
    SubdocPathNotFoundError,
    SubdocXattrError,
    TemporaryFailError,
    TimeoutError,
    ValueFormatError,
)
from couchbase_core.items import Item, ItemOptionDict, ItemSequence
from couchbase_core.mock import MockCluster
from couchbase_core.result import AsyncResult, HttpResult, MultiResult, ObserveInfo, SubdocResult
from tests.flavours import open_bucket

ADMIN = {"username": "Administrator", "password": "password"}
#: The CAS a read reports while the document is locked.
LOCKED_CAS = 0xFFFFFFFFFFFFFFFF
#: OBSERVE key states.
FOUND_NOT_PERSISTED, FOUND_PERSISTED, NOT_FOUND, LOGICALLY_DELETED = 0x00, 0x01, 0x80, 0x81
#: HELLO feature code of Snappy.
SNAPPY = 0x0A


# ------------------------------------------------------------------ fixtures


def _create_bucket_over_rest(cluster, name, flush_enabled):
    """Create a Couchbase bucket through the management REST API."""
    form = urllib.parse.urlencode({"name": name, "bucketType": "couchbase", "ramQuotaMB": "100",
                                   "replicaNumber": "1", "flushEnabled": "1" if flush_enabled else "0"})
    token = base64.b64encode(b"%s:%s" % (ADMIN["username"].encode(), ADMIN["password"].encode())).decode()
    req = urllib.request.Request("http://127.0.0.1:%d/pools/default/buckets" % cluster.http_port,
                                 data=form.encode(), method="POST",
                                 headers={"Authorization": "Basic " + token,
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


@pytest.fixture(scope="module")
def cluster():
    """3 nodes, 1 replica: ``default``, ``flushable`` (flush enabled),
    ``eph`` (ephemeral) and ``noflush`` (flush disabled, made over REST)."""
    with MockCluster(nodes=3, replicas=1, buckets=["default", "flushable", "eph:ephemeral"]) as c:
        _create_bucket_over_rest(c, "noflush", flush_enabled=False)
        yield c


@pytest.fixture(scope="module")
def solo():
    """One node with one replica configured: no replica can exist."""
    with MockCluster(nodes=1, replicas=1) as c:
        yield c


@pytest.fixture
def cb(flavour, cluster):
    """A bucket of the flavour on ``default``; observe polls every 20 ms. Its
    operation timeout is long: these tests expect successes, which a loaded
    machine must not turn into timeouts (tests of timeouts set their own)."""
    b = open_bucket(flavour, cluster.connstr_for("default", durability_interval=0.02, operation_timeout=30),
                    **ADMIN)
    yield b
    b.close()
    cluster.clear_faults()


@pytest.fixture
def prefix(request):
    """Key prefix unique to the test and its flavour."""
    return "kv:%s:" % request.node.name


# ------------------------------------------------------------------- helpers


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start


def multi_failure(call):
    """Run a ``_multi`` call that must fail; return (exception, {key: rc})."""
    with pytest.raises(CouchbaseError) as info:
        call()
    exc = info.value
    assert exc.all_results is not None, "a _multi failure carries all_results"
    return exc, {k: r.rc for k, r in exc.all_results.items()}


def keys_on_every_node(b, prefix, per_node=2):
    """Keys whose active copy is on each node (``per_node`` per node)."""
    cfg = b._engine.config
    wanted = {i: [] for i in range(len(cfg.servers))}
    n = 0
    while any(len(v) < per_node for v in wanted.values()):
        key = "%sspread:%d" % (prefix, n)
        owner = cfg.vbmap[cfg.vbucket_of(key.encode())][0]
        if len(wanted[owner]) < per_node:
            wanted[owner].append(key)
        n += 1
    return [k for keys in wanted.values() for k in keys]


def observed(b, key):
    """{"master": (flags, cas), "replica": (flags, cas)} from observe()."""
    infos = b.observe(key).value
    assert all(isinstance(i, ObserveInfo) for i in infos)
    assert infos[0].from_master and not any(i.from_master for i in infos[1:])
    return {"master": (infos[0].flags, infos[0].cas), "replica": (infos[1].flags, infos[1].cas)}


# --------------------------------------------------------------------- locks


def test_lock_returns_the_document_and_blocks_other_writers(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"v": 1})
    locked = cb.lock(key, ttl=10)
    assert locked.success and locked.value == {"v": 1}
    assert locked.cas not in (0, LOCKED_CAS)
    seen = cb.get(key)
    assert seen.value == {"v": 1} and seen.cas == LOCKED_CAS
    attempts = [
        lambda: cb.upsert(key, 2), lambda: cb.replace(key, 2), lambda: cb.remove(key),
        lambda: cb.touch(key, 60), lambda: cb.get(key, ttl=60), lambda: cb.lock(key, ttl=5),
        lambda: cb.mutate_in(key, SD.upsert("x", 1)),
    ]
    for attempt in attempts:
        with pytest.raises(LockedError) as info:
            attempt()
        assert info.value.key == key and info.value.rc == RC.LOCKED
        assert info.value.is_transient and info.value.is_data
    assert cb.get(key).value == {"v": 1}
    # a mutation with the lock's CAS is allowed and releases the lock
    replaced = cb.replace(key, {"v": 2}, cas=locked.cas)
    assert replaced.success and replaced.cas not in (0, locked.cas)
    after = cb.get(key)
    assert after.value == {"v": 2} and after.cas == replaced.cas
    assert cb.upsert(key, {"v": 3}).success


def test_unlock_needs_the_lock_cas(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, "x")
    locked = cb.lock(key, ttl=10)
    with pytest.raises(LockedError):
        cb.unlock(key, locked.cas + 1)
    with pytest.raises(LockedError):  # a wrong CAS does not release it
        cb.upsert(key, "y")
    assert cb.unlock(key, locked.cas).success
    assert cb.get(key).cas not in (LOCKED_CAS, 0)
    assert cb.upsert(key, "y").success
    with pytest.raises(NotLockedError):
        cb.unlock(key, locked.cas)
    with pytest.raises(ArgumentError):
        cb.unlock(key, 0)
    with pytest.raises(NotFoundError):
        cb.lock(prefix + "missing", ttl=5)
    with pytest.raises(NotFoundError):
        cb.unlock(prefix + "missing", locked.cas)


def test_locks_expire_with_the_cluster_clock(cb, cluster, prefix):
    long_key, default_key = prefix + "thirty", prefix + "default"
    cb.upsert_multi({long_key: 1, default_key: 2})
    long_lock = cb.lock(long_key, ttl=30)
    cb.lock(default_key)  # ttl 0: the server's default, 15 s
    cluster.advance_clock(16)
    assert cb.upsert(default_key, 20).success
    with pytest.raises(LockedError):
        cb.upsert(long_key, 10)
    assert cb.get(long_key).cas == LOCKED_CAS
    cluster.advance_clock(15)  # 31 s after locking
    assert cb.get(long_key).cas != LOCKED_CAS
    assert cb.upsert(long_key, 10).success
    with pytest.raises(NotLockedError):
        cb.unlock(long_key, long_lock.cas)
    assert cb.get_multi([long_key, default_key])[long_key].value == 10


def test_lock_multi_and_unlock_multi(cb, prefix):
    a, b, c, missing = (prefix + s for s in ("a", "b", "c", "missing"))
    cb.upsert_multi({a: "A", b: "B", c: "C"})
    locks = cb.lock_multi([a, b], ttl=10)
    assert isinstance(locks, MultiResult) and locks.all_ok
    assert {k: r.value for k, r in locks.items()} == {a: "A", b: "B"}
    with pytest.raises(LockedError):
        cb.upsert(b, "b2")
    assert cb.unlock_multi(locks).all_ok
    assert cb.upsert_multi({a: "A2", b: "B2"}).all_ok

    # a mix of a locked key, a free key and a missing one
    lock_a = cb.lock(a, ttl=10)
    exc, rcs = multi_failure(lambda: cb.lock_multi([a, b, missing], ttl=10))
    assert rcs == {a: RC.LOCKED, b: 0, missing: RC.KEY_ENOENT}
    lock_b = exc.all_results[b]
    assert lock_b.value == "B2" and lock_b.cas not in (0, LOCKED_CAS)
    with pytest.raises(LockedError):  # the free key did get locked
        cb.upsert(b, "nope")

    # right CAS, right CAS, and a key that is not locked at all
    exc, rcs = multi_failure(lambda: cb.unlock_multi({a: lock_a.cas, b: lock_b.cas, c: lock_a.cas}))
    assert rcs == {a: 0, b: 0, c: RC.NOT_LOCKED}
    assert isinstance(exc, NotLockedError)
    assert cb.upsert_multi({a: 1, b: 2}).all_ok

    # item collections: the items receive value and CAS, unlock uses them
    items = ItemSequence([Item(a), Item(b)])
    assert cb.lock_multi(items, ttl=10).all_ok
    assert [(i.value, i.cas not in (0, LOCKED_CAS)) for i in items.sequence] == [(1, True), (2, True)]
    with pytest.raises(LockedError):
        cb.upsert(a, 0)
    assert cb.unlock_multi(items).all_ok
    assert cb.upsert(a, 0).success


# ------------------------------------------------------------ GAT and touch


def test_get_with_ttl_sets_the_expiry(cb, cluster, prefix):
    key = prefix + "gat"
    cb.upsert(key, "v")
    res = cb.get(key, ttl=10)
    assert res.value == "v"
    cluster.advance_clock(5)
    assert cb.get(key).value == "v"
    cluster.advance_clock(6)
    with pytest.raises(NotFoundError):
        cb.get(key)

    short, long_, plain = prefix + "short", prefix + "long", prefix + "plain"
    cb.upsert_multi({short: 1, long_: 2, plain: 3})
    got = cb.get_multi({short: 10, long_: 100})
    assert {k: r.value for k, r in got.items()} == {short: 1, long_: 2}
    assert cb.get_multi([plain], ttl=10)[plain].value == 3
    exc, rcs = multi_failure(lambda: cb.get_multi([short, prefix + "missing"], ttl=10))
    assert rcs == {short: 0, prefix + "missing": RC.KEY_ENOENT}
    assert exc.all_results[short].value == 1
    cluster.advance_clock(11)
    after = cb.get_multi([short, long_, plain], quiet=True)
    assert {k: r.success for k, r in after.items()} == {short: False, long_: True, plain: False}


def test_touch_changes_the_expiry(cb, cluster, prefix):
    key, keep, missing = prefix + "touched", prefix + "keep", prefix + "missing"
    cb.upsert(key, "v")
    res = cb.touch(key, 10)
    assert res.success and res.cas not in (0, LOCKED_CAS)
    cb.upsert(keep, "k", ttl=5)
    assert cb.touch(keep, 0).success  # 0: never expires
    with pytest.raises(NotFoundError):
        cb.touch(missing, 10)
    a = prefix + "a"
    cb.upsert(a, "a")
    exc, rcs = multi_failure(lambda: cb.touch_multi([a, missing], ttl=10))
    assert rcs == {a: 0, missing: RC.KEY_ENOENT} and isinstance(exc, NotFoundError)
    cluster.advance_clock(11)
    with pytest.raises(NotFoundError):
        cb.get(key)
    with pytest.raises(NotFoundError):  # the successful half of touch_multi took effect
        cb.get(a)
    assert cb.get(keep).value == "k"


# ------------------------------------------------------------- replica reads


def test_replica_reads(cb, prefix):
    key, other, missing = prefix + "doc", prefix + "other", prefix + "missing"
    stored = cb.upsert(key, {"v": 1})
    cb.upsert(other, [2])
    for res in (cb.get(key, replica=True), cb.rget(key), cb.rget(key, replica_index=0)):
        assert res.success and res.value == {"v": 1} and res.cas == stored.cas
    with pytest.raises(ArgumentError):
        cb.rget(key, replica_index=1)  # the bucket keeps one replica
    with pytest.raises(NotFoundError):
        cb.rget(missing)
    with pytest.raises(NotFoundError):
        cb.get(missing, replica=True)
    assert cb.rget(missing, quiet=True).success is False
    assert cb.get(missing, replica=True, quiet=True).success is False

    many = cb.get_multi([key, other], replica=True)
    assert {k: r.value for k, r in many.items()} == {key: {"v": 1}, other: [2]}
    assert cb.rget_multi([key, other], replica_index=0).all_ok
    exc, rcs = multi_failure(lambda: cb.rget_multi([key, missing]))
    assert rcs == {key: 0, missing: RC.KEY_ENOENT}
    assert exc.all_results[key].value == {"v": 1}
    quiet = cb.rget_multi([key, missing], quiet=True)
    assert not quiet.all_ok and quiet[missing].success is False and quiet[key].value == {"v": 1}


def test_replica_reads_lag_behind_the_active_copy(cb, cluster, prefix):
    key = prefix + "doc"
    cluster.replicate_delay(30)
    stored = cb.upsert(key, "fresh")
    assert cb.get(key).value == "fresh"
    with pytest.raises(NotFoundError):
        cb.rget(key, replica_index=0)
    cluster.advance_clock(31)
    res = cb.get(key, replica=True)
    assert res.value == "fresh" and res.cas == stored.cas


# ------------------------------------------------------------ observe/endure


def test_observe_reports_each_copy(cb, cluster, prefix):
    key, missing = prefix + "doc", prefix + "missing"
    cluster.persist_delay(40)
    cluster.replicate_delay(10)
    stored = cb.upsert(key, "v")
    assert observed(cb, key) == {"master": (FOUND_NOT_PERSISTED, stored.cas), "replica": (NOT_FOUND, 0)}
    only = cb.observe(key, master_only=True).value
    assert len(only) == 1 and only[0].from_master and only[0].cas == stored.cas
    cluster.advance_clock(11)
    assert observed(cb, key) == {"master": (FOUND_NOT_PERSISTED, stored.cas),
                                 "replica": (FOUND_NOT_PERSISTED, stored.cas)}
    cluster.advance_clock(41)
    assert observed(cb, key) == {"master": (FOUND_PERSISTED, stored.cas), "replica": (FOUND_PERSISTED, stored.cas)}
    assert observed(cb, missing)["master"] == (NOT_FOUND, 0)
    many = cb.observe_multi([key, missing])
    assert many.all_ok and set(many) == {key, missing}
    assert [i.flags for i in many[key].value] == [FOUND_PERSISTED, FOUND_PERSISTED]
    assert [i.flags for i in many[missing].value] == [NOT_FOUND, NOT_FOUND]
    removed = cb.remove(key)
    assert observed(cb, key)["master"] == (LOGICALLY_DELETED, removed.cas)
    cluster.advance_clock(51)  # replicated after 10 s, persisted there 40 s later
    assert observed(cb, key) == {"master": (NOT_FOUND, removed.cas), "replica": (NOT_FOUND, removed.cas)}


def test_endure_waits_for_persistence_and_replication(cb, cluster, prefix):
    key = prefix + "doc"
    cluster.persist_delay(0.2)
    cluster.replicate_delay(0.1)
    # persist_to=2 needs the replica's copy persisted: 0.1 + 0.2 s after the write
    start = time.monotonic()
    stored = cb.upsert(key, 1)
    res = cb.endure(key, persist_to=2, replicate_to=1, cas=stored.cas)
    assert time.monotonic() - start >= 0.3
    assert res.success
    assert observed(cb, key) == {"master": (FOUND_PERSISTED, stored.cas), "replica": (FOUND_PERSISTED, stored.cas)}

    # the defaults (-1) mean every copy the bucket keeps
    start = time.monotonic()
    stored = cb.upsert(key, 2)
    assert cb.endure(key, cas=stored.cas).success
    assert time.monotonic() - start >= 0.3

    # Copies that come far too late for the timeout (with 0.2/0.1 s a loaded
    # machine could see them before it gets round to the 0.05 s timer).
    cluster.persist_delay(30)
    cluster.replicate_delay(30)
    stored = cb.upsert(key, 3)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        cb.endure(key, persist_to=1, replicate_to=1, cas=stored.cas, timeout=0.05)
    # Its own 0.05 s, not endure()'s 5 s default (a wide margin for a slow machine)
    assert time.monotonic() - start < 4.0
    cluster.persist_delay(0.2)
    cluster.replicate_delay(0.1)
    cb.upsert(key, 4)
    with pytest.raises(KeyExistsError):  # changed before it became durable
        cb.endure(key, persist_to=1, replicate_to=0, cas=stored.cas)
    with pytest.raises(DurabilityImpossibleError):
        cb.endure(key, persist_to=3, replicate_to=0)
    with pytest.raises(DurabilityImpossibleError):
        cb.endure(key, persist_to=0, replicate_to=2)

    start = time.monotonic()
    removed = cb.remove(key)
    assert cb.endure(key, persist_to=2, replicate_to=1, check_removed=True).success
    assert time.monotonic() - start >= 0.3
    assert observed(cb, key) == {"master": (NOT_FOUND, removed.cas), "replica": (NOT_FOUND, removed.cas)}


def test_endure_multi_reports_every_key(cb, cluster, prefix):
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    cluster.persist_delay(0.1)
    cluster.replicate_delay(0.1)
    start = time.monotonic()
    stored = cb.upsert_multi({a: 1, b: 2, c: 3})
    endured = cb.endure_multi(stored, persist_to=2, replicate_to=1)
    assert time.monotonic() - start >= 0.2
    assert endured.all_ok and set(endured) == {a, b, c}
    for key in (a, b, c):
        assert observed(cb, key)["replica"] == (FOUND_PERSISTED, stored[key].cas)

    old = {k: r.cas for k, r in stored.items()}
    cb.upsert(b, 20)
    exc, rcs = multi_failure(lambda: cb.endure_multi(old, persist_to=1, replicate_to=1))
    assert rcs == {a: 0, b: RC.KEY_EEXISTS, c: 0} and isinstance(exc, KeyExistsError)
    assert cb.endure_multi([a, c], persist_to=1, replicate_to=1).all_ok  # any CAS


# ------------------------------------------------- observe-based durability


def test_persist_to_and_replicate_to_on_every_mutation(cb, cluster, prefix):
    text, doc, fresh = prefix + "text", prefix + "doc", prefix + "fresh"
    cluster.persist_delay(0.08)
    cluster.replicate_delay(0.04)
    lag = 0.12  # persist_to=2 waits for the replica's copy to be persisted
    durable = {"persist_to": 2, "replicate_to": 1}
    steps = [
        (text, FOUND_PERSISTED, lambda: cb.upsert(text, "b", format=FMT_UTF8, **durable)),
        (fresh, FOUND_PERSISTED, lambda: cb.insert(fresh, {"n": 0}, **durable)),
        (text, FOUND_PERSISTED, lambda: cb.replace(text, "c", format=FMT_UTF8, **durable)),
        (text, FOUND_PERSISTED, lambda: cb.append(text, "d", **durable)),
        (text, FOUND_PERSISTED, lambda: cb.prepend(text, "a", **durable)),
        (doc, FOUND_PERSISTED, lambda: cb.mutate_in(doc, SD.upsert("n", 1), create_doc=True, **durable)),
        (fresh, NOT_FOUND, lambda: cb.remove(fresh, **durable)),  # a persisted deletion
    ]
    for key, state, step in steps:
        res, took = timed(step)
        assert res.success and took >= lag, (key, took)
        assert observed(cb, key) == {"master": (state, res.cas), "replica": (state, res.cas)}, key
    assert cb.get(text).value == "acd"
    assert cb.get(doc).value == {"n": 1}


def test_persist_to_and_replicate_to_on_every_multi_mutation(cb, cluster, prefix):
    a, b = prefix + "a", prefix + "b"
    cluster.persist_delay(0.08)
    cluster.replicate_delay(0.04)
    lag = 0.12
    durable = {"persist_to": 2, "replicate_to": 1}
    steps = [
        lambda: cb.insert_multi({a: "b", b: "b"}, format=FMT_UTF8, **durable),
        lambda: cb.upsert_multi({a: "c", b: "c"}, format=FMT_UTF8, **durable),
        lambda: cb.replace_multi({a: "c", b: "C"}, format=FMT_UTF8, **durable),
        lambda: cb.append_multi({a: "d", b: "D"}, **durable),
        lambda: cb.prepend_multi({a: "a", b: "A"}, **durable),
    ]
    for step in steps:
        res, took = timed(step)
        assert res.all_ok and set(res) == {a, b} and took >= lag, took
        for key in (a, b):
            assert observed(cb, key)["replica"] == (FOUND_PERSISTED, res[key].cas)
    assert {k: r.value for k, r in cb.get_multi([a, b]).items()} == {a: "acd", b: "ACD"}
    res, took = timed(cb.remove_multi, [a, b], **durable)
    assert res.all_ok and took >= lag
    for key in (a, b):
        assert observed(cb, key) == {"master": (NOT_FOUND, res[key].cas), "replica": (NOT_FOUND, res[key].cas)}


def test_impossible_durability_is_refused_before_sending(cb, prefix):
    key = prefix + "doc"
    cb.upsert(prefix + "existing", "x")
    calls = [
        lambda: cb.upsert(key, 1, persist_to=3),
        lambda: cb.upsert(key, 1, replicate_to=2),
        lambda: cb.insert(key, 1, persist_to=3),
        lambda: cb.replace(prefix + "existing", 1, replicate_to=2),
        lambda: cb.append(prefix + "existing", "y", persist_to=3),
        lambda: cb.prepend(prefix + "existing", "y", replicate_to=2),
        lambda: cb.remove(prefix + "existing", persist_to=3),
        lambda: cb.mutate_in(key, SD.upsert("a", 1), create_doc=True, replicate_to=2),
        lambda: cb.upsert_multi({key: 1}, persist_to=3),
        lambda: cb.remove_multi([prefix + "existing"], replicate_to=2),
    ]
    for call in calls:
        with pytest.raises(DurabilityImpossibleError):
            call()
    assert cb.get(key, quiet=True).success is False
    assert cb.get(prefix + "existing").value == "x"


def test_durability_timeout_leaves_the_write_applied(cb, cluster, prefix):
    key, other = prefix + "doc", prefix + "other"
    cluster.replicate_delay(30)
    with cb.durability(persist_to=0, replicate_to=1, timeout=0.2):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            cb.upsert(key, "written")
        # Never early; its own 0.2 s, not the 5 s default (wide margin for a slow machine)
        assert 0.15 <= time.monotonic() - start < 4.0
        exc, rcs = multi_failure(lambda: cb.upsert_multi({key: "again", other: "too"}))
        assert rcs == {key: RC.TIMEOUT, other: RC.TIMEOUT} and isinstance(exc, TimeoutError)
    # observe-based durability only watches: the writes themselves happened
    assert {k: r.value for k, r in cb.get_multi([key, other]).items()} == {key: "again", other: "too"}


def test_durability_context_manager(cb, cluster, prefix):
    key, doc = prefix + "doc", prefix + "json"
    cluster.persist_delay(0.15)
    with cb.durability(persist_to=1, replicate_to=0) as ctx:
        assert (ctx.persist_to, ctx.replicate_to) == (1, 0)
        for call in (lambda: cb.upsert(key, 1), lambda: cb.upsert_multi({key: 2, doc: {"n": 0}}),
                     lambda: cb.mutate_in(doc, SD.counter("n", 1)), lambda: cb.counter(prefix + "ctr", initial=1),
                     lambda: cb.remove(key)):
            res, took = timed(call)
            assert took >= 0.15
    # Persistence now takes 30 s: a write still waiting for it would take
    # that long (or time out), a plain write returns at once, however slow
    # the machine.
    cluster.persist_delay(30)
    res, took = timed(cb.upsert, key, 3)
    assert res.success and took < 20, "the default is gone after the block"
    with pytest.raises(ZeroDivisionError):
        with cb.durability(persist_to=1, replicate_to=0):
            raise ZeroDivisionError
    res, took = timed(cb.upsert, key, 4)
    assert res.success and took < 20, "an exception in the block restores the default too"
    with cb.durability(persist_to=0, replicate_to=2):
        with pytest.raises(DurabilityImpossibleError):
            cb.upsert(key, 5)
    assert cb.get(key).value == 4
    assert cb.get(doc).value == {"n": 1}


# ------------------------------------------------- sync-replication levels


def test_durability_levels_wait_for_what_they_require(cb, cluster, prefix):
    key = prefix + "doc"
    cluster.replicate_delay(0.15)
    res, took = timed(cb.upsert, key, 1, durability_level=DURABILITY_MAJORITY)
    assert res.success and took >= 0.15
    cluster.replicate_delay(0)
    cluster.persist_delay(30)  # a write waiting for persistence would take 30 s (or time out)
    res, took = timed(cb.upsert, prefix + "majority", 2, durability_level=DURABILITY_MAJORITY)
    assert res.success and took < 20, "majority does not wait for persistence"
    cluster.persist_delay(0.15)
    for level in (DURABILITY_MAJORITY_AND_PERSIST_TO_ACTIVE, DURABILITY_PERSIST_TO_MAJORITY):
        res, took = timed(cb.upsert, key, level, durability_level=level)
        assert res.success and took >= 0.15, level
    assert cb.get(key).value == DURABILITY_PERSIST_TO_MAJORITY


def test_durability_level_on_every_mutation(cb, cluster, prefix):
    key, text, ctr, doc, m1, m2 = (prefix + s for s in ("doc", "text", "ctr", "json", "m1", "m2"))
    cb.upsert(text, "b", format=FMT_UTF8)
    cluster.replicate_delay(0.1)
    level = {"durability_level": DURABILITY_MAJORITY}
    steps = [
        lambda: cb.insert(key, 1, **level),
        lambda: cb.replace(key, 2, **level),
        lambda: cb.append(text, "c", **level),
        lambda: cb.prepend(text, "a", **level),
        lambda: cb.counter(ctr, initial=7, **level),
        lambda: cb.mutate_in(doc, SD.upsert("n", 1), create_doc=True, **level),
        lambda: cb.remove(key, **level),
    ]
    for step in steps:
        res, took = timed(step)
        assert res.success and took >= 0.1 and res.mutation_token is not None, took
    for step in (lambda: cb.upsert_multi({m1: 1, m2: 2}, **level), lambda: cb.insert_multi({key: 3}, **level),
                 lambda: cb.replace_multi({m1: 10, m2: 20}, **level)):
        res, took = timed(step)
        assert res.all_ok and took >= 0.1
        assert all(r.mutation_token is not None for r in res.values())
    got = cb.get_multi([key, text, ctr, doc, m1, m2])
    assert {k: r.value for k, r in got.items()} == {key: 3, text: "abc", ctr: 7, doc: {"n": 1}, m1: 10, m2: 20}


def test_durability_level_failures(cb, cluster, solo, flavour, prefix):
    key = prefix + "doc"
    with pytest.raises(ArgumentError):
        cb.upsert(key, 1, durability_level=4)
    with pytest.raises(ArgumentError):
        cb.upsert(key, 1, durability_level=DURABILITY_MAJORITY, persist_to=1)

    # the replica never gets it within the durability timeout: ambiguous,
    # and the write is not applied
    cb.upsert(key, "before")
    cluster.replicate_delay(60)
    # The cluster's clock jumps past the sync write's timeout while the
    # write waits. It keeps jumping until the write returns: a single jump
    # after a fixed 0.2 s could come before a slow machine even sent it.
    done = threading.Event()

    def jump_clock():
        while not done.wait(0.1):
            cluster.advance_clock(10)

    jumper = threading.Thread(target=jump_clock, daemon=True)
    jumper.start()
    try:
        with pytest.raises(DurabilitySyncWriteAmbiguousError):
            cb.upsert(key, "after", durability_level=DURABILITY_MAJORITY)
    finally:
        done.set()
        jumper.join()
    cluster.replicate_delay(0)
    assert cb.get(key).value == "before"

    # ephemeral buckets cannot persist
    eph = open_bucket(flavour, cluster.connstr_for("eph"), **ADMIN)
    try:
        with pytest.raises(DurabilityInvalidLevelError):
            eph.upsert(key, 1, durability_level=DURABILITY_PERSIST_TO_MAJORITY)
        assert eph.get(key, quiet=True).success is False
        assert eph.upsert(key, 2, durability_level=DURABILITY_MAJORITY).success
        assert eph.get(key).value == 2
    finally:
        eph.close()

    # a single node holds no replica: a majority of two copies is impossible
    lone = open_bucket(flavour, solo.connstr_for("default"), **ADMIN)
    try:
        with pytest.raises(DurabilityImpossibleError):
            lone.upsert(key, 1, durability_level=DURABILITY_MAJORITY)
        exc, rcs = multi_failure(lambda: lone.upsert_multi({key: 1, key + "2": 2},
                                                            durability_level=DURABILITY_MAJORITY))
        assert rcs == {key: RC.DURABILITY_IMPOSSIBLE, key + "2": RC.DURABILITY_IMPOSSIBLE}
        assert not any(r.success for r in lone.get_multi([key, key + "2"], quiet=True).values())
        assert lone.upsert(key, 1).success  # without durability it works
    finally:
        lone.close()


# ------------------------------------------------------------ mutation tokens


def test_mutation_tokens_on_every_mutation(cb, prefix):
    cfg = cb._engine.config
    key = prefix + "doc"
    vb = cfg.vbucket_of(key.encode())
    results = [
        cb.upsert(key, "b", format=FMT_UTF8),
        cb.replace(key, "c", format=FMT_UTF8),
        cb.append(key, "d"),
        cb.prepend(key, "a"),
        cb.remove(key),
        cb.insert(key, {"n": 1}),
        cb.mutate_in(key, SD.counter("n", 1)),
    ]
    tokens = [r.mutation_token for r in results]
    assert all(t is not None for t in tokens)
    assert {(t.vbucket, t.vbucket_uuid, t.bucket) for t in tokens} == {(vb, tokens[0].vbucket_uuid, "default")}
    assert tokens[0].vbucket_uuid != 0
    seqnos = [t.seqno for t in tokens]
    assert seqnos == sorted(seqnos) and len(set(seqnos)) == len(seqnos) and seqnos[0] > 0
    # the server agrees on the vBucket's UUID and latest sequence number
    stats = cb.stats("vbucket-seqno")
    assert set(stats["vb_%d:uuid" % vb].values()) == {tokens[0].vbucket_uuid}  # integer stats are ints (2.x)
    assert seqnos[-1] in stats["vb_%d:high_seqno" % vb].values()

    ctr = cb.counter(prefix + "ctr", initial=1)
    assert ctr.mutation_token.vbucket == cfg.vbucket_of((prefix + "ctr").encode())
    many = {prefix + "m%d" % i: i for i in range(20)}
    for call in (lambda: cb.upsert_multi(many), lambda: cb.replace_multi(many),
                 lambda: cb.remove_multi(list(many))):
        results = call()
        assert set(results) == set(many)
        for name, res in results.items():
            token = res.mutation_token
            assert token.vbucket == cfg.vbucket_of(name.encode())
            assert token.seqno > 0 and token.bucket == "default"


# ------------------------------------------------------------- sub-document


def test_lookup_in_and_the_subdoc_result(cb, prefix):
    key = prefix + "doc"
    stored = cb.upsert(key, {"name": "Ann", "tags": ["a", "b", "c"], "addr": {"city": "Oslo"}})
    res = cb.lookup_in(key, SD.get("name"), SD.exists("tags"), SD.get_count("tags"), SD.get("missing"),
                       SD.exists("addr.zip"), SD.get("addr.city"), SD.get("tags[-1]"))
    assert isinstance(res, SubdocResult) and len(res) == 7
    assert res.cas == stored.cas
    assert res[0] == "Ann" and res["name"] == "Ann"
    assert res.exists(1) and res.exists("tags") and res[2] == 3
    assert res["addr.city"] == "Oslo" and res[6] == "c"
    assert res.get(3) == (RC.SUBDOC_PATH_ENOENT, None) and res.get("name") == (0, "Ann")
    assert not res.exists("missing") and not res.exists(4)
    with pytest.raises(SubdocPathNotFoundError):
        res["missing"]
    with pytest.raises(SubdocPathNotFoundError):
        res[4]
    with pytest.raises(IndexError):
        res[7]
    with pytest.raises(KeyError):
        res["never-asked"]
    with pytest.raises(KeyError):  # 2.x: a path never asked for is a programming error
        res.get("never-asked", "dflt")
    assert res.get("missing", "dflt") == (RC.SUBDOC_PATH_ENOENT, "dflt")
    assert res.access_ok and res.success is False
    assert res.rc == RC.SUBDOC_MULTI_PATH_FAILURE and res.result_count == 7  # 2.x's multi-path rc
    with pytest.raises(SubdocPathNotFoundError):  # iteration yields values, raising at the missing one
        list(res)
    assert list(cb.lookup_in(key, SD.get("name"), SD.get_count("tags"))) == ["Ann", 3]
    ok = cb.lookup_in(key, SD.get("tags[0]"), SD.exists("addr"))
    assert ok.success and ok.access_ok and ok[0] == "a"

    assert cb.retrieve_in(key, "name", "addr.city").success
    got = cb.retrieve_in(key, "name", "nope")
    assert got["name"] == "Ann" and not got.exists("nope")

    with pytest.raises(NotFoundError):
        cb.lookup_in(prefix + "missing", SD.get("x"))
    quiet = cb.lookup_in(prefix + "missing", SD.get("x"), quiet=True)
    assert quiet.access_ok is False and quiet.success is False and quiet.rc == RC.KEY_ENOENT
    cb.upsert(prefix + "text", "not json", format=FMT_UTF8)
    with pytest.raises(DocumentNotJsonError) as notjson:  # 2.x raises path failures other than "not found"
        cb.lookup_in(prefix + "text", SD.get("x"))
    assert notjson.value.result.get(0)[0] == RC.SUBDOC_DOC_NOTJSON
    with pytest.raises(SubdocPathMismatchError) as raised:  # the first failed path's error
        cb.lookup_in(key, SD.get("name.first"), SD.get("addr..x"))
    mismatch = raised.value.result
    assert mismatch.get(0)[0] == RC.SUBDOC_PATH_MISMATCH and mismatch.get(1)[0] == RC.SUBDOC_PATH_EINVAL
    with pytest.raises(SubdocPathMismatchError):
        mismatch[0]
    with pytest.raises(SubdocPathInvalidError):
        mismatch[1]


def test_lookup_in_rejects_bad_spec_lists(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"a": 1})
    with pytest.raises(ArgumentError):
        cb.lookup_in(key)
    with pytest.raises(ArgumentError):
        cb.lookup_in(key, *[SD.get("a")] * 17)
    with pytest.raises(ArgumentError):
        cb.lookup_in(key, SD.upsert("a", 2))
    with pytest.raises(ArgumentError):
        cb.mutate_in(key, SD.get("a"))
    with pytest.raises(SubdocEmptyPathError):
        cb.mutate_in(key, SD.upsert("", 1))
    assert cb.get(key).value == {"a": 1}


def test_mutate_in_with_every_spec_builder(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"n": 10, "arr": [1], "obj": {"old": True}, "gone": 1, "set": ["x"]})
    res = cb.mutate_in(
        key,
        SD.upsert("obj.new", "v"),
        SD.upsert("deep.er.est", 1, create_parents=True),
        SD.insert("fresh", {"q": 1}),
        SD.replace("obj.old", False),
        SD.array_append("arr", 2, 3),
        SD.array_prepend("arr", SD.MultiValue(-1, 0)),
        SD.array_insert("arr[1]", "ins"),
        SD.array_addunique("set", "y"),
        SD.counter("n", 5),
        SD.counter("m", -3, create_parents=True),
        SD.remove("gone"),
        SD.array_append("made.list", "first", create_parents=True),
    )
    assert res.success and len(res) == 12
    assert res[8] == 15 and res["m"] == -3  # counters return the new value
    doc = cb.get(key)
    assert doc.cas == res.cas and res.mutation_token is not None
    assert doc.value == {
        "n": 15, "m": -3, "arr": [-1, "ins", 0, 1, 2, 3], "obj": {"old": False, "new": "v"},
        "set": ["x", "y"], "deep": {"er": {"est": 1}}, "fresh": {"q": 1}, "made": {"list": ["first"]},
    }
    # root-level array operations (empty path)
    root = prefix + "root"
    cb.upsert(root, [2])
    cb.mutate_in(root, SD.array_prepend("", 1), SD.array_append("", 3), SD.array_addunique("", 4))
    assert cb.get(root).value == [1, 2, 3, 4]


def test_mutate_in_failures_change_nothing(cb, prefix):
    key = prefix + "doc"
    original = {"n": 1, "s": "str", "arr": [1, 2], "obj": {}}
    before = cb.upsert(key, original)
    failures = [
        (SubdocPathExistsError, (SD.upsert("added", 1), SD.insert("n", 2))),
        (SubdocPathNotFoundError, (SD.upsert("added", 1), SD.remove("nope"))),
        (SubdocPathNotFoundError, (SD.replace("nope", 1),)),
        (SubdocPathNotFoundError, (SD.upsert("x.y", 1),)),  # no create_parents
        (SubdocPathNotFoundError, (SD.array_insert("arr[5]", 1),)),
        (SubdocPathExistsError, (SD.array_addunique("arr", 2),)),
        (SubdocCantInsertValueError, (SD.array_addunique("arr", {"o": 1}),)),
        (SubdocPathMismatchError, (SD.counter("s", 1),)),
        (SubdocPathMismatchError, (SD.array_append("obj", 1),)),
        (SubdocPathInvalidError, (SD.upsert("a..b", 1),)),
    ]
    for exc_type, specs in failures:
        with pytest.raises(exc_type) as info:
            cb.mutate_in(key, *specs)
        assert info.value.key == key
        now = cb.get(key)
        assert now.value == original and now.cas == before.cas, exc_type
    with pytest.raises(SubdocBadDeltaError):  # refused before anything is sent
        SD.counter("n", 2 ** 63)
    with pytest.raises(KeyExistsError):
        cb.mutate_in(key, SD.upsert("n", 2), cas=before.cas + 1)
    with pytest.raises(NotFoundError):
        cb.mutate_in(prefix + "missing", SD.upsert("n", 2))
    cb.upsert(prefix + "text", "plain", format=FMT_UTF8)
    with pytest.raises(DocumentNotJsonError):
        cb.mutate_in(prefix + "text", SD.upsert("n", 2))
    locked = cb.lock(key, ttl=10)
    with pytest.raises(LockedError):
        cb.mutate_in(key, SD.upsert("n", 2))
    assert cb.mutate_in(key, SD.upsert("n", 2), cas=locked.cas).success  # the lock's CAS unlocks
    res = cb.mutate_in(key, SD.upsert("n", 3), cas=cb.get(key).cas)
    assert res.success and cb.get(key).value["n"] == 3


def test_mutate_in_document_flags_and_ttl(cb, cluster, prefix):
    created, upserted, inserted, existing = (prefix + s for s in ("created", "upserted", "inserted", "existing"))
    assert cb.mutate_in(created, SD.upsert("a", 1), create_doc=True).success
    assert cb.mutate_in(upserted, SD.upsert("a.b", 1, create_parents=True), upsert_doc=True).success
    assert cb.mutate_in(inserted, SD.upsert("a", 1), insert_doc=True).success
    values = {k: r.value for k, r in cb.get_multi([created, upserted, inserted]).items()}
    assert values == {created: {"a": 1}, upserted: {"a": {"b": 1}}, inserted: {"a": 1}}
    assert cb.mutate_in(created, SD.upsert("b", 2), create_doc=True).success  # exists: just mutates
    assert cb.get(created).value == {"a": 1, "b": 2}
    cb.upsert(existing, {"a": 0})
    with pytest.raises(KeyExistsError):
        cb.mutate_in(existing, SD.upsert("a", 1), insert_doc=True)
    with pytest.raises(ArgumentError):
        cb.mutate_in(prefix + "both", SD.upsert("a", 1), insert_doc=True, create_doc=True)
    assert cb.get(existing).value == {"a": 0}

    short = prefix + "short"
    cb.mutate_in(short, SD.upsert("a", 1), create_doc=True, ttl=10)
    cluster.advance_clock(5)
    assert cb.get(short).value == {"a": 1}
    cluster.advance_clock(6)
    with pytest.raises(NotFoundError):
        cb.get(short)


def test_xattrs(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"body": 1})
    res = cb.mutate_in(key, SD.upsert("meta.by", "ann", xattr=True, create_parents=True),
                       SD.array_append("meta.seen", 1, xattr=True, create_parents=True),
                       SD.upsert("body", 2))
    assert res.success
    assert cb.get(key).value == {"body": 2}, "xattrs are not part of the body"
    # one xattr key per call (a server rule); macros are expanded by the server
    assert cb.mutate_in(key, SD.upsert("stamp.cas", "${Mutation.CAS}", xattr=True, create_parents=True,
                                       _expand_macros=True)).success
    doc = cb.get(key)
    got = cb.lookup_in(key, SD.get("meta.by", xattr=True), SD.exists("meta", xattr=True),
                       SD.get_count("meta.seen", xattr=True), SD.exists("meta.nope", xattr=True), SD.get("body"))
    assert got[0] == "ann" and got.exists(1) and got[2] == 1 and not got.exists(3) and got[4] == 2
    expanded = cb.lookup_in(key, SD.get("stamp.cas", xattr=True))[0]
    assert expanded != "${Mutation.CAS}"
    # the server writes the CAS as little-endian hex
    assert int.from_bytes(bytes.fromhex(expanded[2:]), "little") == doc.cas
    cb.mutate_in(key, SD.remove("meta.by", xattr=True), SD.counter("meta.count", 2, xattr=True))
    again = cb.lookup_in(key, SD.exists("meta.by", xattr=True), SD.get("meta.count", xattr=True))
    assert not again.exists(0) and again[1] == 2
    with pytest.raises(ArgumentError):
        SD.upsert("body", "${Mutation.CAS}", _expand_macros=True)  # macros only in xattrs


def test_xattr_rule_violations_are_subdoc_xattr_errors(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"body": 1})
    with pytest.raises(SubdocXattrError) as two_keys:
        cb.mutate_in(key, SD.upsert("a.x", 1, xattr=True, create_parents=True),
                     SD.upsert("b.x", 1, xattr=True, create_parents=True))
    assert two_keys.value.rc == 0xCF
    with pytest.raises(SubdocXattrError) as order:
        cb.mutate_in(key, SD.upsert("body", 2), SD.upsert("a.x", 1, xattr=True, create_parents=True))
    assert order.value.rc == 0xD4
    assert cb.get(key).value == {"body": 1}, "a refused mutate_in changes nothing"


# ----------------------------------------------------------- data structures


def _summary(flavour, res):
    """A data structure's size or membership: the value itself (2.x), or
    an AsyncBucket result holding it."""
    return res.value if flavour in ("async", "acouchbase") else res


def test_map_helpers(cb, flavour, prefix):
    key = prefix + "map"
    with pytest.raises(NotFoundError):
        cb.map_add(key, "a", 1)
    assert cb.map_add(key, "a", 1, create=True).success
    assert cb.map_add(key, "b", {"x": [1]}).success
    assert cb.map_get(key, "a").value == 1 and cb.map_get(key, "b").value == {"x": [1]}
    assert _summary(flavour, cb.map_size(key)) == 2
    assert cb.map_remove(key, "a").success
    assert _summary(flavour, cb.map_size(key)) == 1
    assert cb.get(key).value == {"b": {"x": [1]}}
    with pytest.raises(SubdocPathNotFoundError):
        cb.map_get(key, "a")
    with pytest.raises(SubdocPathNotFoundError):
        cb.map_remove(key, "a")
    with pytest.raises(NotFoundError):
        cb.map_get(prefix + "missing", "a")
    with pytest.raises(NotFoundError):
        cb.map_size(prefix + "missing")
    cb.upsert(prefix + "list", [1])
    with pytest.raises(SubdocPathMismatchError):
        cb.map_size(prefix + "list")


def test_list_helpers(cb, flavour, prefix):
    key = prefix + "list"
    with pytest.raises(NotFoundError):
        cb.list_append(key, 1)
    assert cb.list_append(key, "b", create=True).success
    assert cb.list_append(key, "c").success
    assert cb.list_prepend(key, "a").success
    assert _summary(flavour, cb.list_size(key)) == 3
    assert [cb.list_get(key, i).value for i in range(3)] == ["a", "b", "c"]
    assert cb.list_get(key, -1).value == "c"
    assert cb.list_set(key, 1, "B").success
    assert cb.list_remove(key, 0).success
    assert cb.get(key).value == ["B", "c"] and _summary(flavour, cb.list_size(key)) == 2
    for call in (lambda: cb.list_get(key, 5), lambda: cb.list_set(key, 5, 1), lambda: cb.list_remove(key, 5)):
        with pytest.raises(SubdocPathNotFoundError):
            call()
    assert cb.list_prepend(prefix + "made", 1, create=True).success
    assert cb.get(prefix + "made").value == [1]
    cb.upsert(prefix + "map", {"a": 1})
    with pytest.raises(SubdocPathMismatchError):
        cb.list_size(prefix + "map")
    with pytest.raises(NotFoundError):
        cb.list_size(prefix + "missing")


def test_set_helpers(cb, flavour, prefix):
    key = prefix + "set"

    def unchanged(res):
        # blocking/gevent return None; an AsyncBucket's result has cas == 0
        return res is None if flavour not in ("async", "acouchbase") else (res.success and res.cas == 0)

    added = cb.set_add(key, 1, create=True)
    assert added.success and added.cas != 0
    assert cb.set_add(key, "two").success
    assert unchanged(cb.set_add(key, 1))
    assert _summary(flavour, cb.set_size(key)) == 2
    assert _summary(flavour, cb.set_contains(key, "two")) is True
    assert _summary(flavour, cb.set_contains(key, 3)) is False
    removed = cb.set_remove(key, 1)
    assert removed.success and removed.cas != 0
    assert unchanged(cb.set_remove(key, 1))
    assert cb.get(key).value == ["two"] and _summary(flavour, cb.set_size(key)) == 1
    with pytest.raises(SubdocCantInsertValueError):
        cb.set_add(key, {"not": "primitive"})
    with pytest.raises(NotFoundError):
        cb.set_add(prefix + "missing", 1)
    with pytest.raises(NotFoundError):
        cb.set_contains(prefix + "missing", 1)


def test_queue_helpers(cb, flavour, prefix):
    key = prefix + "queue"
    with pytest.raises(NotFoundError):
        cb.queue_push(key, 1)
    assert cb.queue_push(key, 1, create=True).success
    assert cb.queue_push(key, 2).success
    assert cb.queue_push(key, {"three": 3}).success
    assert _summary(flavour, cb.queue_size(key)) == 3
    assert [cb.queue_pop(key).value for _ in range(3)] == [1, 2, {"three": 3}]  # first in, first out
    assert _summary(flavour, cb.queue_size(key)) == 0
    with pytest.raises(QueueEmpty) as info:
        cb.queue_pop(key)
    assert isinstance(info.value, IndexError) and info.value.rc == RC.QUEUE_EMPTY
    assert cb.get(key).value == []
    with pytest.raises(NotFoundError):
        cb.queue_pop(prefix + "missing")
    with pytest.raises(NotFoundError):
        cb.queue_size(prefix + "missing")


# -------------------------------------------------------------------- items


def test_item_collections(cb, cluster, prefix):
    doc_key, blob_key, missing = prefix + "doc", prefix + "blob", prefix + "missing"
    coll = ItemOptionDict()
    doc = coll.create_and_add(doc_key, {"n": 1}, ttl=10)
    blob = Item(blob_key, b"\x00\x01")
    coll.add(blob, format=FMT_BYTES)
    stored = cb.upsert_multi(coll)
    assert stored.all_ok and stored[doc_key] is doc and stored[blob_key] is blob
    assert doc.success and doc.cas != 0 and blob.cas != 0 and doc.mutation_token is not None
    got = cb.get(blob_key)
    assert got.value == b"\x00\x01" and got.flags == FMT_BYTES

    # replace_multi checks each item's own CAS
    cb.upsert(blob_key, b"changed", format=FMT_BYTES)
    doc.value = {"n": 2}
    exc, rcs = multi_failure(lambda: cb.replace_multi(coll))
    assert rcs == {doc_key: 0, blob_key: RC.KEY_EEXISTS} and isinstance(exc, KeyExistsError)
    assert exc.all_results[doc_key] is doc and doc.success and not blob.success
    assert cb.get(doc_key).value == {"n": 2} and cb.get(blob_key).value == b"changed"

    seq = ItemSequence([Item(doc_key), Item(blob_key), Item(missing)])
    exc, rcs = multi_failure(lambda: cb.get_multi(seq))
    assert rcs == {doc_key: 0, blob_key: 0, missing: RC.KEY_ENOENT}
    assert [(i.value, i.success) for i in seq.sequence] == [({"n": 2}, True), (b"changed", True), (None, False)]

    stale = Item(doc_key)
    stale.cas = doc.cas - 1
    exc, rcs = multi_failure(lambda: cb.remove_multi(ItemSequence([stale, seq.sequence[1]])))
    assert rcs == {doc_key: RC.KEY_EEXISTS, blob_key: 0}
    assert cb.get(blob_key, quiet=True).success is False

    # the item's ttl option (10 s) applied to each of its stores
    cluster.advance_clock(11)
    assert cb.get(doc_key, quiet=True).success is False


def test_multi_calls_report_every_keys_outcome(cb, prefix):
    a, b, fresh, missing, ctr, locked = (prefix + s for s in ("a", "b", "fresh", "missing", "ctr", "locked"))
    cb.upsert_multi({a: "A", b: "B", locked: "L"}, format=FMT_UTF8)
    cb.counter(ctr, initial=1)
    cb.lock(locked, ttl=10)

    def check(call, expected, value_of=None):
        exc, rcs = multi_failure(call)
        assert rcs == expected
        failed = {k for k, rc in expected.items() if rc}
        assert exc.key in failed and exc.rc == expected[exc.key]
        ok, bad = exc.split_results()
        assert set(bad) == failed and set(ok) == set(expected) - failed
        for key, value in (value_of or {}).items():
            assert exc.all_results[key].value == value

    check(lambda: cb.upsert_multi({a: "A1", locked: "L1"}, format=FMT_UTF8), {a: 0, locked: RC.LOCKED})
    check(lambda: cb.insert_multi({a: "x", fresh: "F"}, format=FMT_UTF8), {a: RC.KEY_EEXISTS, fresh: 0})
    check(lambda: cb.replace_multi({b: "B1", missing: "x"}, format=FMT_UTF8), {b: 0, missing: RC.KEY_ENOENT})
    check(lambda: cb.append_multi({a: "+", missing: "+"}), {a: 0, missing: RC.NOT_STORED})
    check(lambda: cb.prepend_multi({b: "-", missing: "-"}), {b: 0, missing: RC.NOT_STORED})
    check(lambda: cb.get_multi([a, b, missing]), {a: 0, b: 0, missing: RC.KEY_ENOENT}, {a: "A1+", b: "-B1"})
    check(lambda: cb.touch_multi([a, missing], ttl=100), {a: 0, missing: RC.KEY_ENOENT})
    check(lambda: cb.counter_multi([ctr, missing], delta=5), {ctr: 0, missing: RC.KEY_ENOENT}, {ctr: 6})
    check(lambda: cb.lock_multi([a, locked], ttl=5), {a: 0, locked: RC.LOCKED}, {a: "A1+"})
    check(lambda: cb.rget_multi([b, missing]), {b: 0, missing: RC.KEY_ENOENT}, {b: "-B1"})
    check(lambda: cb.remove_multi({fresh: 0, b: 1}), {fresh: 0, b: RC.KEY_EEXISTS})
    quiet = cb.remove_multi([b, missing], quiet=True)
    assert not quiet.all_ok and quiet[b].success and quiet[missing].rc == RC.KEY_ENOENT
    assert cb.get_multi([a, b, fresh, missing], quiet=True)[fresh].success is False
    with pytest.raises(NotStoredError):
        cb.append(missing, "x")


# ----------------------------------------------------------------- pipelines


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])  # async: see the next test
def test_pipeline_batches_couchbase_operations(cb, prefix):
    key, m1, m2 = prefix + "doc", prefix + "m1", prefix + "m2"
    cb.upsert(key, {"n": 1, "tags": []})
    with cb.pipeline() as pipe:
        assert cb.lookup_in(key, SD.get("n")) is None
        assert cb.mutate_in(key, SD.counter("n", 1), SD.array_append("tags", "a")) is None
        cb.get(key)
        cb.observe(key)
        cb.lock(key, ttl=10)
        cb.upsert_multi({m1: 1, m2: 2})
        cb.map_size(key)
    results = pipe.results
    assert len(results) == 7
    assert results[0]["n"] == 1 and results[1][0] == 2
    assert results[2].value == {"n": 2, "tags": ["a"]}
    assert results[3].value[0].from_master and results[3].value[0].cas == results[2].cas
    lock = results[4]
    assert lock.value == {"n": 2, "tags": ["a"]} and lock.cas not in (0, LOCKED_CAS)
    assert isinstance(results[5], MultiResult) and results[5].all_ok
    assert results[6].value == 2

    with pytest.raises(LockedError) as info:
        with cb.pipeline():
            cb.upsert(m1, 10)
            cb.upsert(key, "locked out")
            cb.get(prefix + "missing", quiet=True)
    assert {k: r.rc for k, r in info.value.all_results.items()} == {
        m1: 0, key: RC.LOCKED, prefix + "missing": RC.KEY_ENOENT}
    assert cb.get(m1).value == 10  # the other operations went through
    assert cb.unlock(key, lock.cas).success
    for call in (cb.stats, cb.ping):
        with pytest.raises(PipelineError):
            with cb.pipeline():
                call()


def test_async_pipeline_returns_async_results(cluster, prefix):
    drv = open_bucket("async", cluster.connstr_for("default"), **ADMIN)
    raw = drv.raw
    key = prefix + "doc"
    try:
        with raw.pipeline():
            pending = [raw.upsert(key, {"n": 1}), raw.mutate_in(key, SD.counter("n", 5)),
                       raw.lookup_in(key, SD.get("n")), raw.lock(key, ttl=10), raw.get_multi([key]),
                       raw.upsert(key, "locked out")]
            assert all(isinstance(ar, AsyncResult) for ar in pending)
            assert not any(ar.done for ar in pending), "nothing is sent before the block ends"
        upserted, mutated, looked, locked, many = (drv.wait(ar) for ar in pending[:5])
        assert upserted.success and mutated[0] == 6 and looked["n"] == 6
        assert locked.value == {"n": 6} and locked.cas not in (0, LOCKED_CAS)
        assert many[key].value == {"n": 6} and many[key].cas == LOCKED_CAS
        with pytest.raises(LockedError):
            drv.wait(pending[5])
        assert drv.unlock(key, locked.cas).success
    finally:
        drv.close()


# ------------------------------------------------------------------ lockmode


def test_lockmode_on_a_couchbase_bucket(cluster, prefix):
    key = prefix + "doc"
    exc_bucket = BlockingBucket(cluster.connstr_for("default"), lockmode=LOCKMODE_EXC, **ADMIN)
    wait_bucket = BlockingBucket(cluster.connstr_for("default"), lockmode=LOCKMODE_WAIT, **ADMIN)
    errors = []
    started = []
    finished = []

    def read(bucket):
        started.append(time.monotonic())
        try:
            assert bucket.get(key).value == 1
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finished.append(time.monotonic())

    def wait_until_busy(bucket):
        deadline = time.monotonic() + 30
        while not bucket._guard._lock.locked():  # the worker is inside a call
            assert time.monotonic() < deadline
            time.sleep(0.002)

    try:
        exc_bucket.upsert(key, 1)
        assert wait_bucket.get(key).value == 1  # connected before replies slow down
        cluster.delay(0.4)
        worker = threading.Thread(target=read, args=(exc_bucket,))
        worker.start()
        wait_until_busy(exc_bucket)
        with pytest.raises(ObjectThreadError):
            exc_bucket.get(key)
        worker.join()

        worker = threading.Thread(target=read, args=(wait_bucket,))
        worker.start()
        wait_until_busy(wait_bucket)
        res = wait_bucket.get(key)  # waits for the worker, then for its own delayed reply
        ended = time.monotonic()
        worker.join()
        # the worker's delayed reply (>= 0.4 s), then its own (>= 0.4 s more)
        assert res.value == 1 and ended >= started[-1] + 0.8
        assert errors == [] and len(finished) == 2
    finally:
        cluster.clear_faults()
        exc_bucket.close()
        wait_bucket.close()


# -------------------------------------------------------------------- stats


def test_stats_general_and_vbucket_groups(cb):
    cfg = cb._engine.config
    nodes = {authority(h, p) for h, p in cfg.servers}
    assert set(cb.server_nodes) == nodes
    general = cb.stats()
    for name in ("curr_items", "cmd_get", "vb_active_num", "ep_num_replicas", "uptime"):
        assert set(general[name]) == nodes, name
    assert set(general["ep_num_replicas"].values()) == {1}
    assert sum(int(v) for v in general["vb_active_num"].values()) == cfg.num_vbuckets

    vbuckets = cb.stats("vbucket")
    assert set(vbuckets) == {"vb_%d" % i for i in range(cfg.num_vbuckets)}
    for vb, row in enumerate(cfg.vbmap):
        states = vbuckets["vb_%d" % vb]
        assert states == {authority(*cfg.servers[row[0]]): "active", authority(*cfg.servers[row[1]]): "replica"}

    both = cb.stats(["vbucket", "settings"])
    assert "vb_0" in both and "max_item_size" in both and set(both["max_item_size"]) == nodes


# --------------------------------------------------------- ping, diagnostics


def test_ping_and_diagnostics_cover_every_node(cb, prefix):
    cb.upsert_multi({k: 1 for k in keys_on_every_node(cb, prefix)})
    nodes = sorted(cb.server_nodes)
    report = cb.ping()
    entries = report["services"]["kv"]
    assert [e["remote"] for e in entries] == nodes
    assert len({e["id"] for e in entries}) == 3 and report["id"] and report["version"] == 1
    for entry in entries:
        assert entry["status"] == PingStatus.OK
        # OK means answered within the operation timeout
        assert isinstance(entry["latency_us"], int) and 0 < entry["latency_us"] < cb.timeout * 1e6
        host, port = entry["local"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) not in [int(n.rsplit(":", 1)[1]) for n in nodes]
    assert len({e["local"] for e in entries}) == 3

    diag = cb.diagnostics()
    dentries = diag["services"]["kv"]
    assert [e["remote"] for e in dentries] == nodes
    assert {e["state"] for e in dentries} == {"connected"}
    assert [e["local"] for e in dentries] == [e["local"] for e in entries]
    assert all(isinstance(e["last_activity_us"], int) and e["last_activity_us"] >= 0 for e in dentries)


def test_ping_and_diagnostics_report_a_stopped_node(flavour, prefix):
    with MockCluster(nodes=3, replicas=1) as own:
        b = open_bucket(flavour, own.connstr_for("default", operation_timeout=20), **ADMIN)
        try:
            b.upsert_multi({k: 1 for k in keys_on_every_node(b, prefix)})
            cfg = b._engine.config
            stopped = authority(*cfg.servers[1])
            own.stop_node(1)
            report = b.ping()  # reports, does not raise
            by_node = {e["remote"]: e for e in report["services"]["kv"]}
            assert set(by_node) == set(b.server_nodes) and len(by_node) == 3
            assert by_node[stopped]["status"] in (PingStatus.ERROR, PingStatus.TIMEOUT)
            assert by_node[stopped]["details"]
            assert [e["status"] for n, e in by_node.items() if n != stopped] == [PingStatus.OK] * 2
            diag = {e["remote"]: e for e in b.diagnostics()["services"]["kv"]}
            assert diag[stopped]["state"] == "disconnected" and "local" not in diag[stopped]
            assert diag[stopped]["details"]
            assert [e["state"] for n, e in diag.items() if n != stopped] == ["connected"] * 2
        finally:
            b.close()


# -------------------------------------------------------------------- flush


def test_flush_empties_a_flush_enabled_bucket(flavour, cluster, prefix):
    b = open_bucket(flavour, cluster.connstr_for("flushable"), **ADMIN)
    try:
        keys = keys_on_every_node(b, prefix)
        b.upsert_multi({k: k for k in keys})
        res = b.flush()
        assert isinstance(res, HttpResult) and res.success and res.http_status == 200
        after = b.get_multi(keys, quiet=True)
        assert set(after) == set(keys) and not any(r.success for r in after.values())
        assert b.insert(keys[0], "again").success
    finally:
        b.close()


def test_flush_on_a_flush_disabled_bucket_fails_and_keeps_the_data(flavour, cluster, prefix):
    b = open_bucket(flavour, cluster.connstr_for("noflush"), **ADMIN)
    try:
        b.upsert(prefix + "keep", "me")
        with pytest.raises(CouchbaseError) as info:
            b.flush()
        assert "disabled" in str(info.value).lower()
        assert b.get(prefix + "keep").value == "me"
    finally:
        b.close()


# -------------------------------------------------------------- compression


@pytest.mark.parametrize("mode", ["on", "off", "inflate_only"])
def test_compression_modes_round_trip(flavour, mode, cluster, prefix):
    b = open_bucket(flavour, cluster.connstr_for("default", compression=mode), **ADMIN)
    try:
        keys = keys_on_every_node(b, prefix)
        values = {k: {"text": ("%s " % k) * 400, "n": i} for i, k in enumerate(keys)}
        values[keys[0]] = {"small": 1}
        assert b.upsert_multi(values).all_ok
        assert {k: r.value for k, r in b.get_multi(keys).items()} == values
        big = "compressible " * 2000
        b.upsert(prefix + "text", big, format=FMT_UTF8)
        b.append(prefix + "text", "!" * 5000)
        assert b.get(prefix + "text").value == big + "!" * 5000
        ready = [c for c in b._engine.connections if c.state == "ready"]
        assert len(ready) == 3
        negotiated = {SNAPPY in c.features for c in ready}
        assert negotiated == {mode != "off"}
    finally:
        b.close()
    # whatever was written reads back the same on a bucket without compression
    plain = open_bucket("blocking", cluster.connstr_for("default", compression="off"), **ADMIN)
    try:
        assert plain.get(prefix + "text").value == big + "!" * 5000
    finally:
        plain.close()


# ---------------------------------------------- data_passthrough, no_format


def test_data_passthrough(flavour, cluster, prefix):
    key = prefix + "doc"
    b = open_bucket(flavour, cluster.connstr_for("default"), data_passthrough=True, **ADMIN)
    try:
        assert b.data_passthrough is True
        with pytest.raises(ValueFormatError):
            b.upsert(key, {"a": 1})
        assert b.upsert(key, b'{"a": 1}').success
        assert b.get(key).value == b'{"a": 1}' and b.get(key).flags == FMT_JSON
        assert b.get_multi([key])[key].value == b'{"a": 1}'
        assert b.rget(key).value == b'{"a": 1}'
        locked = b.lock(key, ttl=10)
        assert locked.value == b'{"a": 1}'
        b.unlock(key, locked.cas)
        b.data_passthrough = False
        assert b.get(key).value == {"a": 1}
        assert b.upsert(prefix + "decoded", {"b": 2}).success
        b.data_passthrough = True
        assert b.get(prefix + "decoded").value == b'{"b":2}'
    finally:
        b.close()


def test_no_format_returns_the_stored_bytes(cb, prefix):
    key, pickled = prefix + "doc", prefix + "pickled"
    cb.upsert(key, {"a": 1})
    cb.upsert(pickled, {1, 2}, format=FMT_PICKLE)
    raw = cb.get(key, no_format=True)
    assert raw.value == b'{"a":1}' and raw.flags == FMT_JSON
    assert cb.get(key).value == {"a": 1}
    assert cb.get(key, replica=True, no_format=True).value == b'{"a":1}'
    many = cb.get_multi([key, pickled], no_format=True)
    assert many[key].value == b'{"a":1}'
    assert isinstance(many[pickled].value, bytes) and many[pickled].flags == FMT_PICKLE
    assert cb.get(pickled).value == {1, 2}


# ------------------------------------------- regressions found by this suite


def test_get_multi_from_replicas_honours_no_format(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"a": 1})
    assert cb.get(key, replica=True, no_format=True).value == b'{"a":1}'
    assert cb.get_multi([key], replica=True, no_format=True)[key].value == b'{"a":1}'


def test_durability_timeout_is_not_reported_early(cb, cluster, prefix):
    key = prefix + "doc"
    cluster.replicate_delay(30)
    stored = cb.upsert(key, 1)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        cb.endure(key, persist_to=0, replicate_to=1, cas=stored.cas, timeout=0.25, interval=0.1)
    assert time.monotonic() - start >= 0.25


def test_durability_level_on_the_remaining_multi_mutations(cb, prefix):
    a, b = prefix + "a", prefix + "b"
    cb.upsert_multi({a: "x", b: "y"}, format=FMT_UTF8)
    assert cb.append_multi({a: "1", b: "2"}, durability_level=DURABILITY_MAJORITY).all_ok
    assert cb.prepend_multi({a: "0", b: "0"}, durability_level=DURABILITY_MAJORITY).all_ok
    assert cb.remove_multi([a, b], durability_level=DURABILITY_MAJORITY).all_ok


def test_flush_disabled_is_not_supported_error_as_documented(flavour, cluster):
    b = open_bucket(flavour, cluster.connstr_for("noflush"), **ADMIN)
    try:
        with pytest.raises(NotSupportedError):
            b.flush()
    finally:
        b.close()


def test_locked_key_failures_are_temporary_failures_for_2x_code(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, 1)
    cb.lock(key, ttl=10)
    with pytest.raises(TemporaryFailError):
        cb.lock(key, ttl=10)


def test_lookup_in_raises_failures_other_than_a_missing_path(cb, prefix):
    key = prefix + "doc"
    cb.upsert(key, {"name": "Ann"})
    with pytest.raises(SubdocPathMismatchError) as info:  # as 2.x: the call raises
        cb.lookup_in(key, SD.exists("name.first"), SD.exists("nope"))
    res = info.value.result
    assert not res.exists(1)
    with pytest.raises(SubdocPathMismatchError):
        res.exists(0)


def test_durability_level_on_a_server_without_sync_replication_is_not_supported(monkeypatch):
    import couchbase_core.mock.kvserver as kvserver
    from couchbase_core.mock import proto

    monkeypatch.setattr(kvserver, "FEATURES", tuple(
        f for f in kvserver.FEATURES if f not in (proto.F_ALT_REQUEST, proto.F_SYNC_REPLICATION)))
    with MockCluster(nodes=1, replicas=0, in_process=True) as old:
        b = BlockingBucket(old.connstr_for("default"), **ADMIN)
        try:
            with pytest.raises(NotSupportedError) as info:
                b.upsert("dl", 1, durability_level=DURABILITY_MAJORITY)
            assert "6.5" in str(info.value)
            assert b.get("dl", quiet=True).rc == RC.KEY_ENOENT, "nothing was sent"
            assert b.upsert("dl", 2).success  # plain mutations are unaffected
        finally:
            b.close()


def test_durability_block_covers_every_durable_mutation(cb, cluster, prefix):
    key, counter = prefix + "set", prefix + "n"
    cb.upsert(key, [1, 2, 3])
    cb.counter(counter, initial=5)
    cluster.replicate_delay(30)
    try:
        with cb.durability(persist_to=0, replicate_to=1, timeout=0.2):
            for call in (lambda: cb.set_add(key, 4), lambda: cb.set_remove(key, 1),
                         lambda: cb.queue_pop(key), lambda: cb.counter_multi([counter])):
                with pytest.raises(TimeoutError):
                    call()
    finally:
        cluster.replicate_delay(0)
    with cb.durability(persist_to=0, replicate_to=1):
        # an explicit level replaces the block instead of clashing with it
        assert cb.upsert(prefix + "lvl", 1, durability_level=DURABILITY_MAJORITY).success


def test_data_structure_options_are_honoured_not_ignored(cb, prefix):
    key = prefix + "set"
    stored = cb.upsert(key, [1, 2])
    with pytest.raises(KeyExistsError):
        cb.set_add(key, 3, cas=stored.cas + 1)
    with pytest.raises(KeyExistsError):
        cb.set_remove(key, 1, cas=stored.cas + 1)
    with pytest.raises(KeyExistsError):
        cb.queue_pop(key, cas=stored.cas + 1)
    assert cb.get(key).value == [1, 2], "a stale CAS changes nothing"
    current = cb.get(key).cas
    assert cb.queue_pop(key, cas=current).value == 2
    with pytest.raises(TypeError):
        cb.set_add(key, 3, bogus=True)
    with pytest.raises(TypeError):
        cb.queue_pop(key, ttl=5)


def test_fetch_mutation_tokens_false_turns_tokens_off(flavour, cluster, prefix):
    b = open_bucket(flavour, cluster.connstr_for("default", fetch_mutation_tokens="false"), **ADMIN)
    try:
        assert b.upsert(prefix + "k", 1).mutation_token is None
    finally:
        b.close()
    b = open_bucket(flavour, cluster.connstr_for("default"), **ADMIN)
    try:
        assert b.upsert(prefix + "k", 1).mutation_token is not None
    finally:
        b.close()


def test_compression_force_compresses_small_values_too(flavour, cluster, prefix, monkeypatch):
    from couchbase_core._engine import connection

    sent = []
    real = connection._compress

    def spy(value, datatype, min_ratio):
        out = real(value, datatype, min_ratio)
        sent.append((len(value), out[1] & 0x02))
        return out

    monkeypatch.setattr(connection, "_compress", spy)
    for mode, expect_small_compressed in (("on", False), ("force", True)):
        sent.clear()
        b = open_bucket(flavour, cluster.connstr_for("default", compression=mode), **ADMIN)
        try:
            for _ in range(2):  # the first may leave before its node's connection is ready
                b.upsert(prefix + mode, "tiny", format=FMT_UTF8)
            assert b.get(prefix + mode).value == "tiny"
        finally:
            b.close()
        assert any(size == 4 and snappy for size, snappy in sent) == expect_small_compressed, (mode, sent)


def test_replica_reads_refuse_a_ttl(cb, prefix):
    with pytest.raises(ArgumentError):
        cb.get(prefix + "k", ttl=5, replica=True)
    with pytest.raises(ArgumentError):
        cb.get_multi([prefix + "k"], ttl=5, replica=True)


def test_admin_over_tls_defaults_to_the_tls_port():
    from couchbase_core.admin import Admin

    class UncheckedAdmin(Admin):
        """No server listens here: skip the constructor's credentials check."""

        def _check_credentials(self) -> None:
            pass

    for ssl, port in ((False, 8091), (True, 18091)):
        admin = UncheckedAdmin("Administrator", "password", host="127.0.0.1", ssl=ssl)
        try:
            assert admin.port == port
        finally:
            admin.close()

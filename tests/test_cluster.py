"""Couchbase clusters (the emulator): bootstrap, authentication, routing,
topology changes, TLS, secrets — on all three buckets where it applies."""

from __future__ import annotations

import logging
import random
import time
import warnings

import gevent
import pytest

from couchbase_core.exceptions import (
    AccessError,
    AuthError,
    BucketNotFoundError,
    ConnectError,
    CouchbaseError,
    KeyExistsError,
    NotFoundError,
    TemporaryFailError,
    TimeoutError,
)
from couchbase_core.mock import MockCluster
from tests.flavours import open_bucket

ADMIN = {"username": "Administrator", "password": "password"}
# Bootstrap timeouts far longer than any test waits: a test that must fail
# "quickly" uses them, so "quick" is told from "waited for a timeout" by a
# wide margin that no machine's slowness bridges.
SLOW_BOOTSTRAP = {"config_total_timeout": 60, "config_node_timeout": 60, "connect_timeout": 60}
_SLOW = "&".join("%s=%s" % kv for kv in SLOW_BOOTSTRAP.items())


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=3, replicas=1,
                     buckets=["default", "secured:couchbase:s3cret", "cache:memcached"],
                     users=["reader:readpw:data_reader[default]", "writer:writepw:bucket_full_access[default]"]) as c:
        yield c


def _http_hosts(cluster):
    return ",".join("127.0.0.1:%d=http" % n["ports"]["mgmt"] for n in cluster.refresh()["nodes"]
                    if n["state"] != "failed" and n["member"])


# ------------------------------------------------------------------ bootstrap


@pytest.mark.parametrize("flavour", ["blocking", "async", "gevent"])
def test_bootstrap_by_cccp_and_basic_operations(flavour, cluster):
    b = open_bucket(flavour, cluster.connstr_for("default"), **ADMIN)
    p = "cl:%s:" % flavour
    try:
        assert len(b.server_nodes) == 3
        assert b.bucket == "default"
        b.upsert(p + "basic", {"v": 1})
        assert b.get(p + "basic").value == {"v": 1}
        with pytest.raises(KeyExistsError):
            b.insert(p + "basic", 2)
        keys = [p + "spread:%d" % i for i in range(300)]
        assert b.upsert_multi({k: k for k in keys}).all_ok
        assert {k: r.value for k, r in b.get_multi(keys).items()} == {k: k for k in keys}
        assert b.counter(p + "ctr", initial=5).value == 5
        b.remove(p + "basic")
        with pytest.raises(NotFoundError):
            b.get(p + "basic")
    finally:
        b.close()


def test_keys_reach_every_node(cluster):
    b = open_bucket("blocking", cluster.connstr_for("default"), **ADMIN)
    try:
        cfg = b._engine.config
        owners = {cfg.vbmap[cfg.vbucket_of(("cl:n%d" % i).encode())][0] for i in range(200)}
        assert owners == {0, 1, 2}
        assert b.upsert_multi({"cl:n%d" % i: i for i in range(200)}).all_ok
    finally:
        b.close()


@pytest.mark.parametrize("mode", ["http", "all"])
def test_bootstrap_over_http_when_cccp_is_off(mode, cluster):
    cluster.cccp(False)
    try:
        connstr = "couchbase://%s/default?bootstrap_on=%s" % (_http_hosts(cluster), mode)
        b = open_bucket("blocking", connstr, **ADMIN)
        try:
            assert len(b.server_nodes) == 3
            b.upsert("cl:http", "ok")
            assert b.get("cl:http").value == "ok"
            assert b._engine._bootstrapper._http is not None  # the stream stays open
        finally:
            b.close()
    finally:
        cluster.cccp(True)


def test_bootstrap_with_the_management_port_down_uses_cccp(cluster):
    # The connection string names KV ports only, and HTTP is never tried.
    b = open_bucket("blocking", cluster.connstr_for("default", bootstrap_on="cccp"), **ADMIN)
    try:
        assert b._engine._bootstrapper._http is None
        b.upsert("cl:cccp", 1)
        assert b.get("cl:cccp").value == 1
    finally:
        b.close()


def test_seed_hosts_are_tried_in_turn(cluster):
    dead = "127.0.0.1:1"
    connstr = "couchbase://%s,%s/default?bootstrap_on=cccp" % (dead, cluster.connstr.split("//")[1].split(",")[0])
    b = open_bucket("blocking", connstr, **ADMIN)
    try:
        assert b.get_multi(["cl:cccp"], quiet=True) is not None
        assert len(b.server_nodes) == 3
    finally:
        b.close()


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_wrong_password_is_a_quick_auth_error(flavour, cluster):
    start = time.monotonic()
    with pytest.raises(AuthError) as info:
        open_bucket(flavour, cluster.connstr_for("default", **SLOW_BOOTSTRAP), username="Administrator",
                    password="nope")
    # Quick: the refusal ends the bootstrap, the 60 s timeouts are not awaited.
    assert time.monotonic() - start < 30
    assert "nope" not in str(info.value)


def test_wrong_password_over_http_bootstrap(cluster):
    start = time.monotonic()
    with pytest.raises(AuthError):
        open_bucket("blocking", "couchbase://%s/default?bootstrap_on=http&%s" % (_http_hosts(cluster), _SLOW),
                    username="Administrator", password="nope")
    assert time.monotonic() - start < 30  # not the 60 s timeouts


@pytest.mark.parametrize("bootstrap", ["cccp", "http"])
def test_missing_bucket(bootstrap, cluster):
    if bootstrap == "cccp":
        connstr = cluster.connstr_for("no-such-bucket", bootstrap_on="cccp")
    else:
        connstr = "couchbase://%s/no-such-bucket?bootstrap_on=http" % _http_hosts(cluster)
    with pytest.raises(BucketNotFoundError) as info:
        open_bucket("blocking", connstr, **ADMIN)
    assert "no-such-bucket" in str(info.value)


def test_unreachable_cluster_is_a_connect_error():
    start = time.monotonic()
    with pytest.raises(ConnectError):
        open_bucket("blocking", "couchbase://127.0.0.1:1/default?bootstrap_on=cccp&" + _SLOW, **ADMIN)
    assert time.monotonic() - start < 30  # refused at once, the 60 s timeouts not awaited


def test_config_total_timeout_bounds_the_bootstrap(cluster):
    cluster.delay(60.0)
    try:
        start = time.monotonic()
        with pytest.raises(CouchbaseError):
            open_bucket("blocking", cluster.connstr_for("default", config_total_timeout=1,
                                                        config_node_timeout=60, connect_timeout=60), **ADMIN)
        # Ended by the 1 s total, not by the 60 s node timeout or the delay.
        assert time.monotonic() - start < 30
    finally:
        cluster.delay(0)


# --------------------------------------------------------------- credentials


def test_legacy_bucket_password_login(cluster):
    b = open_bucket("blocking", cluster.connstr_for("secured"), password="s3cret")
    try:
        b.upsert("cl:legacy", 1)
        assert b.get("cl:legacy").value == 1
    finally:
        b.close()
    with pytest.raises(AuthError):
        open_bucket("blocking", cluster.connstr_for("secured"), password="wrong")


def test_rbac_users(cluster):
    writer = open_bucket("blocking", cluster.connstr_for("default"), username="writer", password="writepw")
    reader = open_bucket("blocking", cluster.connstr_for("default"), username="reader", password="readpw")
    try:
        writer.upsert("cl:rbac", "w")
        assert reader.get("cl:rbac").value == "w"
        with pytest.raises(AccessError):
            reader.upsert("cl:rbac", "r")
    finally:
        writer.close()
        reader.close()
    with pytest.raises(AccessError):
        open_bucket("blocking", cluster.connstr_for("secured"), username="reader", password="readpw")


def test_memcached_bucket_on_a_couchbase_cluster(cluster):
    # Memcached buckets have no CCCP: the client falls back to HTTP.
    kv = cluster.connstr.split("//")[1]
    b = open_bucket("blocking", "couchbase://%s,%s/cache" % (kv, _http_hosts(cluster)), **ADMIN)
    try:
        b.upsert("cl:mc", "cached")
        assert b.get("cl:mc").value == "cached"
        assert b._engine.config.locator == "ketama"
    finally:
        b.close()


def test_secrets_stay_out_of_logs_reprs_and_errors(cluster, caplog):
    secret = "Zq8-very-secret-pw"
    caplog.set_level(logging.DEBUG)
    cluster.add_user("spy", secret, [{"role": "admin"}])
    b = open_bucket("blocking", cluster.connstr_for("default") + "&password=" + secret
                    if "?" in cluster.connstr_for("default") else cluster.connstr_for("default") + "?password=" + secret,
                    username="spy")
    try:
        b.upsert("cl:secret", 1)
        texts = [repr(b), str(b), repr(b._settings)]
        from couchbase_core.connstr import ConnectionString

        cs = ConnectionString.parse(cluster.connstr_for("default") + "?password=" + secret)
        texts += [cs.encode(), str(cs), repr(cs)]
    finally:
        b.close()
    with pytest.raises(AuthError) as info:
        open_bucket("blocking", cluster.connstr_for("default"), username="spy", password=secret + "x")
    texts += [str(info.value), repr(info.value)]
    texts += [r.getMessage() for r in caplog.records]
    assert all(secret not in t for t in texts)


# ------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_cluster():
    with MockCluster(nodes=2, replicas=1, tls=True) as c:
        yield c


@pytest.mark.parametrize("flavour", ["blocking", "gevent"])
def test_tls_with_a_trusted_certificate(flavour, tls_cluster):
    connstr = "%s/default?certpath=%s" % (tls_cluster.info["connstr_tls"], tls_cluster.ca_cert)
    b = open_bucket(flavour, connstr, **ADMIN)
    try:
        assert b.is_ssl
        b.upsert("cl:tls", {"secure": True})
        assert b.get("cl:tls").value == {"secure": True}
        assert b.get_multi(["cl:tls"]).all_ok
    finally:
        b.close()


def test_tls_refuses_an_untrusted_certificate(tls_cluster):
    with pytest.raises(ConnectError) as info:
        open_bucket("blocking", tls_cluster.info["connstr_tls"] + "/default?bootstrap_on=cccp", **ADMIN)
    assert "certificate" in str(info.value) or "issuer" in str(info.value)


def test_tls_no_verify_works_and_warns(tls_cluster):
    from couchbase_core._engine.tls import InsecureTLSWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = open_bucket("blocking", tls_cluster.info["connstr_tls"] + "/default?ssl=no_verify", **ADMIN)
    try:
        assert any(issubclass(w.category, InsecureTLSWarning) for w in caught)
        b.upsert("cl:insecure", 1)
        assert b.get("cl:insecure").value == 1
    finally:
        b.close()


def test_plain_sasl_is_refused_on_cleartext_unless_forced(cluster):
    # The emulator offers SCRAM and PLAIN: over cleartext the client picks
    # SCRAM; forcing PLAIN is the user's explicit choice.
    b = open_bucket("blocking", cluster.connstr_for("default", sasl_mech_force="PLAIN"), **ADMIN)
    try:
        assert b.upsert("cl:plain", 1).success
    finally:
        b.close()
    from couchbase_core._engine.sasl import SaslError, choose_mechanism

    with pytest.raises(SaslError):
        choose_mechanism(["PLAIN"], "u", "p", tls=False)
    assert choose_mechanism(["SCRAM-SHA512", "PLAIN"], "u", "p", tls=False).name == "SCRAM-SHA512"
    assert choose_mechanism(["SCRAM-SHA512", "PLAIN"], "u", "p", tls=True).name == "PLAIN"


# ------------------------------------------------------------------- topology


def test_stopped_node_fails_within_timeout_then_works_after_failover():
    with MockCluster(nodes=3, replicas=1) as c:
        b = open_bucket("gevent", c.connstr_for("default", operation_timeout=30), **ADMIN)
        try:
            cfg = b._engine.config
            keys = ["st:%d" % i for i in range(120)]
            on_node1 = [k for k in keys if cfg.vbmap[cfg.vbucket_of(k.encode())][0] == 1]
            assert on_node1
            b.upsert_multi({k: k for k in keys})
            b.timeout = 1.0
            c.stop_node(1)
            start = time.monotonic()
            with pytest.raises(CouchbaseError) as info:
                b.get(on_node1[0])
            # Within its timeout (the bound only tells "the 1 s timeout or a
            # prompt network error ended it" from "parked")
            assert time.monotonic() - start < 1.0 + 20
            assert info.value.is_network
            c.failover(1)
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert b.get(on_node1[0]).value == on_node1[0]
                    break
                except CouchbaseError:
                    assert time.monotonic() < deadline, "no recovery after failover"
                    gevent.sleep(0.05)
            b.timeout = 30
            assert {k: r.value for k, r in b.get_multi(keys).items()} == {k: k for k in keys}
            assert len(b.server_nodes) == 2
        finally:
            b.close()


def test_config_push_reaches_an_idle_gevent_bucket():
    with MockCluster(nodes=3, replicas=1) as c:
        b = open_bucket("gevent", c.connstr_for("default", config_poll_interval=0), **ADMIN)
        try:
            b.upsert("push", 1)
            rev = b._engine.config.rev
            c.failover(2)
            deadline = time.monotonic() + 30
            while b._engine.config.rev == rev:
                assert time.monotonic() < deadline, "no pushed config"
                gevent.sleep(0.02)
            assert len(b.server_nodes) == 2
        finally:
            b.close()


def test_mixed_gevent_load_survives_failover_and_rebalance():
    """20,000 operations from 100 greenlets while a node is failed over and
    another is added and rebalanced in: every operation succeeds or fails
    with a documented error within its timeout, no greenlet hangs, and every
    acknowledged write reads back."""
    timeout = 10.0
    with MockCluster(nodes=3, replicas=1) as c:
        b = open_bucket("gevent", c.connstr_for("default", operation_timeout=timeout), **ADMIN)
        acknowledged = {}
        outcomes = {"ok": 0, "error": 0}
        errors = []
        slowest = [0.0]
        phase = [0]
        per_phase = [0, 0, 0]
        ok_per_phase = [0, 0, 0]
        keys = ["load:%d" % i for i in range(2000)]

        import gevent.event

        started = gevent.event.Event()
        failed_over = gevent.event.Event()
        chaos_done = gevent.event.Event()

        # The phases are paced by events, not by the clock: every worker's
        # operations 100-149 run after the failover and 150-199 after the
        # new node is in, however slowly the machine goes.
        def worker(wid):
            rng = random.Random(wid)
            for n in range(200):
                if n == 100:
                    failed_over.wait(120)
                elif n == 150:
                    chaos_done.wait(120)  # the last quarter runs on the new topology
                key = keys[rng.randrange(len(keys))]
                start = time.monotonic()
                try:
                    if rng.random() < 0.3:
                        value = "%d-%d" % (wid, n)
                        b.upsert(key, value)
                        acknowledged[key] = value
                    else:
                        b.get(key, quiet=True)
                    outcomes["ok"] += 1
                    ok_per_phase[phase[0]] += 1
                except CouchbaseError as exc:
                    outcomes["error"] += 1
                    errors.append(exc)
                    acknowledged.pop(key, None)  # its last value is uncertain now
                slowest[0] = max(slowest[0], time.monotonic() - start)
                per_phase[phase[0]] += 1
                if sum(per_phase) >= 1000:
                    started.set()

        def chaos():
            # control calls run on gevent's thread pool, so the load goes on
            pool = gevent.get_hub().threadpool
            started.wait(120)
            pool.apply(c.failover, (0,))
            phase[0] = 1
            failed_over.set()
            deadline = time.monotonic() + 120
            while per_phase[1] < 1000:  # load on the reduced cluster
                assert time.monotonic() < deadline, per_phase
                gevent.sleep(0.01)
            pool.apply(c.add_node, (True,))
            phase[0] = 2
            chaos_done.set()

        try:
            before = list(b.server_nodes)
            jobs = [gevent.spawn(worker, i) for i in range(100)]
            chaos_job = gevent.spawn(chaos)
            finished = gevent.joinall(jobs + [chaos_job], timeout=600)
            assert len(finished) == 101, "some greenlets hung"
            assert chaos_job.successful(), chaos_job.exception
            assert outcomes["ok"] + outcomes["error"] == 20000
            # Within its timeout: the bound tells "ended by its timeout at the
            # latest" from "parked", with room for a loaded machine.
            assert slowest[0] < timeout + 20
            # The failures are the documented ones of a topology change.
            assert all(e.is_network or isinstance(e, (TimeoutError, TemporaryFailError))
                       for e in errors), set(map(repr, errors[:10]))
            # Work goes on in every phase and, once the new node is in, the
            # load runs on a healthy cluster again.
            assert all(ok_per_phase), ok_per_phase
            assert ok_per_phase[2] > per_phase[2] // 2, (ok_per_phase, per_phase)
            for key, value in acknowledged.items():
                assert b.get(key).value == value, key
            after = b.server_nodes
            assert len(after) == 3 and before[0] not in after and len(set(after) - set(before)) == 1
            # the load ran before, between and after the two changes
            assert per_phase[0] >= 1000 and per_phase[1] >= 1000 and per_phase[2] >= 100 * 50, per_phase
        finally:
            b.close()

"""Drive the official Couchbase Python SDK 4.x against a cluster, check by check.

Run by ``tests/test_official_sdk.py`` in a child process, so that an abort
inside the SDK's C++ core cannot take pytest down with it::

    python tests/official_sdk_checks.py CONNSTR USER PASSWORD

Every check prints one JSON line as soon as it has run::

    {"check": "kv.get", "ok": true, "value": {...}}
    {"check": "kv.insert_existing", "ok": false, "error": "DocumentExistsException", "message": "..."}

``value`` is what the SDK returned (made JSON-friendly); the test holds the
expected values. A line ``{"check": NAME, "started": true}`` comes first, so a
process that dies inside a check still tells which one killed it. The last
line is ``{"done": true}``.

This file imports the ``couchbase`` package (SDK 4.x), never this project's
client code.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from typing import Any, Callable, List, Tuple

import couchbase
import couchbase.subdocument as SD
from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.management.views import DesignDocument, DesignDocumentNamespace, View
from couchbase.mutation_state import MutationState
from couchbase.n1ql import QueryScanConsistency
from couchbase.options import (
    ClusterOptions,
    ClusterTimeoutOptions,
    DecrementOptions,
    DeltaValue,
    GetOptions,
    IncrementOptions,
    QueryOptions,
    ReplaceOptions,
    SignedInt64,
    UpsertOptions,
    ViewOptions,
)
from couchbase.transcoder import RawBinaryTranscoder
from couchbase.views import ViewScanConsistency

BUCKET = "default"
MEMCACHED_BUCKET = "mc"
PREFIX = "sdk4-"


def _key(name: str) -> str:
    return PREFIX + name


def _error_name(exc: BaseException) -> str:
    return type(exc).__name__


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, default=repr) + "\n")
    sys.stdout.flush()


def _raises(fn: Callable[[], Any]) -> str:
    """The name of the exception ``fn`` raises ('none' if it returns)."""
    try:
        fn()
    except Exception as exc:  # the name is the value being checked
        return _error_name(exc)
    return "none"


def build_checks(cluster: Cluster) -> List[Tuple[str, Callable[[], Any]]]:
    """The checks, in the order they run (later ones use earlier documents)."""
    bucket = cluster.bucket(BUCKET)
    coll = bucket.default_collection()
    binary = coll.binary()
    checks: List[Tuple[str, Callable[[], Any]]] = []

    def check(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
        def register(fn: Callable[[], Any]) -> Callable[[], Any]:
            checks.append((name, fn))
            return fn
        return register

    # ------------------------------------------------------------------ KV
    @check("kv.upsert")
    def _() -> Any:
        return coll.upsert(_key("a"), {"name": "a", "n": 1}).cas != 0

    @check("kv.get")
    def _() -> Any:
        return coll.get(_key("a")).content_as[dict]

    @check("kv.insert")
    def _() -> Any:
        coll.insert(_key("new"), {"fresh": True})
        return coll.get(_key("new")).content_as[dict]

    @check("kv.insert_existing")
    def _() -> Any:
        return _raises(lambda: coll.insert(_key("a"), {"again": True}))

    @check("kv.replace")
    def _() -> Any:
        cas = coll.get(_key("a")).cas
        coll.replace(_key("a"), {"name": "a", "n": 2}, ReplaceOptions(cas=cas))
        return coll.get(_key("a")).content_as[dict]

    @check("kv.replace_stale_cas")
    def _() -> Any:
        return _raises(lambda: coll.replace(_key("a"), {"n": 3}, ReplaceOptions(cas=1234)))

    @check("kv.replace_missing")
    def _() -> Any:
        return _raises(lambda: coll.replace(_key("missing"), {"n": 3}))

    @check("kv.exists")
    def _() -> Any:
        return [coll.exists(_key("a")).exists, coll.exists(_key("missing")).exists]

    @check("kv.touch")
    def _() -> Any:
        coll.touch(_key("a"), timedelta(seconds=600))
        return coll.get(_key("a"), GetOptions(with_expiry=True)).expiry_time is not None

    @check("kv.get_and_touch")
    def _() -> Any:
        return coll.get_and_touch(_key("a"), timedelta(seconds=900)).content_as[dict]

    @check("kv.counters")
    def _() -> Any:
        first = binary.increment(_key("ctr"), IncrementOptions(initial=SignedInt64(10))).content
        second = binary.increment(_key("ctr"), IncrementOptions(delta=DeltaValue(5))).content
        third = binary.decrement(_key("ctr"), DecrementOptions(delta=DeltaValue(3))).content
        return [first, second, third]

    @check("kv.append_prepend")
    def _() -> Any:
        raw = RawBinaryTranscoder()
        coll.upsert(_key("bin"), b"mid", UpsertOptions(transcoder=raw))
        binary.append(_key("bin"), b"-end")
        binary.prepend(_key("bin"), b"start-")
        return coll.get(_key("bin"), GetOptions(transcoder=raw)).value.decode()

    @check("kv.get_and_lock")
    def _() -> Any:
        locked = coll.get_and_lock(_key("a"), timedelta(seconds=10))
        # The SDK retries a locked document until the operation's timeout: keep it short.
        blocked = _raises(lambda: coll.upsert(_key("a"), {"while": "locked"},
                                              UpsertOptions(timeout=timedelta(milliseconds=1500))))
        coll.unlock(_key("a"), locked.cas)
        coll.upsert(_key("a"), {"name": "a", "n": 4})
        return [locked.content_as[dict]["n"], blocked, coll.get(_key("a")).content_as[dict]["n"]]

    @check("kv.get_any_replica")
    def _() -> Any:
        return coll.get_any_replica(_key("a")).content_as[dict]

    @check("kv.get_all_replicas")
    def _() -> Any:
        results = list(coll.get_all_replicas(_key("a")))
        return sorted([r.is_replica, r.content_as[dict]["n"]] for r in results)

    @check("kv.remove")
    def _() -> Any:
        coll.remove(_key("new"))
        return _raises(lambda: coll.get(_key("new")))

    # -------------------------------------------------------------- subdoc
    @check("subdoc.mutate_in")
    def _() -> Any:
        coll.upsert(_key("sd"), {"name": "sd", "tags": ["x"], "count": 1})
        result = coll.mutate_in(_key("sd"), [SD.upsert("city", "Oslo"), SD.array_append("tags", "y"),
                                             SD.increment("count", 4)])
        return [result.cas != 0, coll.get(_key("sd")).content_as[dict]]

    @check("subdoc.lookup_in")
    def _() -> Any:
        result = coll.lookup_in(_key("sd"), [SD.get("city"), SD.exists("nope"), SD.count("tags"), SD.get("count")])
        return [result.content_as[str](0), result.exists(1), result.content_as[int](2), result.content_as[int](3)]

    @check("subdoc.lookup_in_missing_path")
    def _() -> Any:
        result = coll.lookup_in(_key("sd"), [SD.get("no.such.path")])
        return _raises(lambda: result.content_as[str](0))

    @check("subdoc.lookup_in_any_replica")
    def _() -> Any:
        result = coll.lookup_in_any_replica(_key("sd"), [SD.get("city"), SD.count("tags")])
        return [result.content_as[str](0), result.content_as[int](1)]

    @check("subdoc.lookup_in_all_replicas")
    def _() -> Any:
        results = list(coll.lookup_in_all_replicas(_key("sd"), [SD.get("city")]))
        return sorted([r.is_replica, r.content_as[str](0)] for r in results)

    @check("subdoc.document_vattr")
    def _() -> Any:
        result = coll.lookup_in(_key("sd"), [SD.get("$document.revid", xattr=True),
                                             SD.get("$document.vbucket_uuid", xattr=True),
                                             SD.get("$document.deleted", xattr=True)])
        revid, vbucket_uuid = result.content_as[str](0), result.content_as[str](1)
        return [revid.isdigit(), vbucket_uuid.startswith("0x") and len(vbucket_uuid) == 18,
                result.content_as[bool](2)]

    # ----------------------------------------------------------------- N1QL
    @check("n1ql.select_literal")
    def _() -> Any:
        return list(cluster.query("SELECT 1 + 1 AS two").rows())

    @check("n1ql.create_primary_index")
    def _() -> Any:
        cluster.query_indexes().create_primary_index(BUCKET, ignore_if_exists=True)
        return sorted(i.name for i in cluster.query_indexes().get_all_indexes(BUCKET))

    @check("n1ql.select_named")
    def _() -> Any:
        for i in range(3):
            coll.upsert(_key("q%d" % i), {"type": "sdk4", "i": i})
        result = cluster.query("SELECT d.i FROM `default` d WHERE d.type = $t ORDER BY d.i",
                               QueryOptions(named_parameters={"t": "sdk4"},
                                            scan_consistency=QueryScanConsistency.REQUEST_PLUS))
        return [row["i"] for row in result.rows()]

    @check("n1ql.select_positional")
    def _() -> Any:
        result = cluster.query("SELECT RAW d.i FROM `default` d WHERE d.type = $1 AND d.i >= $2 ORDER BY d.i",
                               QueryOptions(positional_parameters=["sdk4", 1],
                                            scan_consistency=QueryScanConsistency.REQUEST_PLUS))
        return list(result.rows())

    @check("n1ql.consistent_with")
    def _() -> Any:
        written = coll.upsert(_key("token"), {"type": "sdk4-token", "i": 9})
        result = cluster.query("SELECT RAW d.i FROM `default` d WHERE d.type = 'sdk4-token'",
                               QueryOptions(consistent_with=MutationState(written)))
        return list(result.rows())

    @check("n1ql.syntax_error")
    def _() -> Any:
        return _raises(lambda: list(cluster.query("SELEKT nonsense").rows()))

    # ---------------------------------------------------------------- views
    @check("views.upsert_design_document")
    def _() -> Any:
        ddoc = DesignDocument("sdk4", {"by_i": View(map='function (doc, meta) { if (doc.type == "sdk4") '
                                                        '{ emit(doc.i, null); } }', reduce="_count")})
        bucket.view_indexes().upsert_design_document(ddoc, DesignDocumentNamespace.PRODUCTION)
        got = bucket.view_indexes().get_design_document("sdk4", DesignDocumentNamespace.PRODUCTION)
        return sorted(got.views)

    @check("views.query")
    def _() -> Any:
        result = bucket.view_query("sdk4", "by_i", ViewOptions(reduce=False,
                                                             scan_consistency=ViewScanConsistency.REQUEST_PLUS))
        return [[row.id, row.key] for row in result.rows()]

    @check("views.reduce")
    def _() -> Any:
        result = bucket.view_query("sdk4", "by_i", ViewOptions(scan_consistency=ViewScanConsistency.REQUEST_PLUS))
        return [row.value for row in result.rows()]

    # --------------------------------------------------------- transactions
    @check("transactions.commit")
    def _() -> Any:
        coll.upsert(_key("acct1"), {"balance": 100})
        coll.upsert(_key("acct2"), {"balance": 0})

        def move(ctx: Any) -> None:
            one = ctx.get(coll, _key("acct1"))
            two = ctx.get(coll, _key("acct2"))
            ctx.replace(one, {"balance": one.content_as[dict]["balance"] - 30})
            ctx.replace(two, {"balance": two.content_as[dict]["balance"] + 30})
            ctx.insert(coll, _key("receipt"), {"moved": 30})

        cluster.transactions.run(move)
        return [coll.get(_key(k)).content_as[dict] for k in ("acct1", "acct2", "receipt")]

    @check("transactions.rollback")
    def _() -> Any:
        class Refused(Exception):
            pass

        def refuse(ctx: Any) -> None:
            one = ctx.get(coll, _key("acct1"))
            ctx.replace(one, {"balance": -1})
            ctx.insert(coll, _key("never"), {"x": 1})
            raise Refused("application says no")

        error = _raises(lambda: cluster.transactions.run(refuse))
        return [error, coll.get(_key("acct1")).content_as[dict],
                _raises(lambda: coll.get(_key("never")))]

    @check("transactions.remove")
    def _() -> Any:
        cluster.transactions.run(lambda ctx: ctx.remove(ctx.get(coll, _key("receipt"))))
        return _raises(lambda: coll.get(_key("receipt")))

    # ------------------------------------------------------------ management
    @check("mgmt.get_all_buckets")
    def _() -> Any:
        return sorted([b.name, str(b.bucket_type.value)] for b in cluster.buckets().get_all_buckets())

    @check("mgmt.get_bucket")
    def _() -> Any:
        settings = cluster.buckets().get_bucket(BUCKET)
        return [settings.name, settings.num_replicas, settings.flush_enabled]

    return checks


def memcached_check(connstr: str, user: str, password: str) -> Any:
    """Open the memcached bucket through a cluster object of its own with a
    short bootstrap timeout: the SDK's core finds bucket configs only through
    GET_CLUSTER_CONFIG, which a memcached bucket does not serve (KEY_ENOENT,
    as on the server), so opening it may time out rather than work."""
    timeouts = ClusterTimeoutOptions(bootstrap_timeout=timedelta(seconds=2), connect_timeout=timedelta(seconds=2),
                                     kv_timeout=timedelta(seconds=2))
    cluster = Cluster(connstr, ClusterOptions(PasswordAuthenticator(user, password), timeout_options=timeouts))
    try:
        mc = cluster.bucket(MEMCACHED_BUCKET).default_collection()
        mc.upsert(_key("m"), {"cache": True})
        return mc.get(_key("m")).content_as[dict]
    finally:
        cluster.close()


def _run(name: str, fn: Callable[[], Any]) -> None:
    _emit({"check": name, "started": True})
    started = time.monotonic()
    try:
        value = fn()
    except Exception as exc:
        _emit({"check": name, "ok": False, "error": _error_name(exc), "message": str(exc)[:2000],
               "seconds": round(time.monotonic() - started, 3)})
    else:
        _emit({"check": name, "ok": True, "value": value, "seconds": round(time.monotonic() - started, 3)})


def main(argv: List[str]) -> int:
    """Connect, run every check, report each as one JSON line."""
    connstr, user, password = argv[1:4]
    _emit({"sdk": couchbase.__version__})
    timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=5), connect_timeout=timedelta(seconds=10),
                                     query_timeout=timedelta(seconds=10), views_timeout=timedelta(seconds=10),
                                     management_timeout=timedelta(seconds=10))
    cluster = Cluster(connstr, ClusterOptions(PasswordAuthenticator(user, password), timeout_options=timeouts))
    cluster.wait_until_ready(timedelta(seconds=15))
    for name, fn in build_checks(cluster):
        _run(name, fn)
    cluster.close()
    _run("memcached.open", lambda: memcached_check(connstr, user, password))
    _emit({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The documentation stays true: its tables list what the code has, and its
examples run."""

from __future__ import annotations

import json
import os
import re
import time

from couchbase_core.exceptions import RC_TABLE
from couchbase_core.iops.testkit import IOPSContract

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_errors_doc_lists_every_result_code():
    doc = _read("docs/errors.md")
    for rc, (cls, _desc) in RC_TABLE.items():
        assert "| `0x%02X` | %d | " % (rc, rc) in doc, hex(rc)
        assert "`%s`" % cls.__name__ in doc


def test_readme_quick_start_is_two_commands():
    readme = _read("README.md")
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def _doc_poll_iops():
    code = _python_blocks(_read("docs/iops.md"))
    namespace = {}
    exec(code[1], namespace)  # the PollIOPS example
    return namespace["PollIOPS"]


class TestDocumentedPollIOPS(IOPSContract):
    """The example IOPS of docs/iops.md passes the contract suite."""

    def make_iops(self):
        return _doc_poll_iops()()

    def run_loop(self, iops, until, timeout):
        deadline = time.monotonic() + max(timeout, 30)  # a hang guard, stretched for a loaded machine
        while not until() and time.monotonic() < deadline:
            iops.run_once(0.01)


def test_documented_async_example_runs(memcached_server):
    code = _python_blocks(_read("docs/iops.md"))
    namespace = {}
    exec(code[1], namespace)
    usage = code[2].replace("memcached://127.0.0.1:11211", memcached_server.connstr)
    exec(usage, namespace)
    assert namespace["ar"].done and namespace["ar"].all_ok


def test_documented_acouchbase_program_runs(memcached_server, capsys):
    """The complete asyncio program of docs/async.md (the acouchbase
    section), on a real memcached."""
    import asyncio

    code = _python_blocks(_read("docs/async.md"))
    program = next(c for c in code if "async def main" in c)
    namespace = {}
    exec(program.replace("memcached://127.0.0.1:11211", memcached_server.connstr), namespace)
    assert capsys.readouterr().out.strip() == "({'text': 'hello'}, ['a', 'b'])"
    assert asyncio.run(namespace["main"](memcached_server.connstr)) == ({"text": "hello"}, ["a", "b"])


# ---------------------------------------------------------------------------
# Couchbase examples, run against the cluster emulator
#
# The examples use the placeholder connection string below and the RBAC user
# app/s3cret; each test starts an emulated cluster (2 nodes, 1 replica) that
# has that user, replaces the placeholder with the cluster's address, and
# runs the ```python blocks of its page in order, in one namespace, checking
# each block's outcome right after it ran.

PLACEHOLDER = "couchbase://localhost/default"
LOCKED_CAS = 0xFFFFFFFFFFFFFFFF


def _section(text, heading):
    """The text of a ``## heading`` section, up to the next ``## ``."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end < 0 else text[start:end]


def _doc_cluster():
    from couchbase_core.mock import MockCluster

    return MockCluster(nodes=2, replicas=1, users=["app:s3cret"])


def _run_blocks(blocks, replacements, checks):
    """Exec each block (after ``replacements``) and run its check.

    ``checks`` pairs a text the block must contain with a function of the
    namespace, so an example that is removed, added or reordered fails here
    instead of silently going unchecked."""
    assert len(blocks) == len(checks), [b.splitlines()[0] for b in blocks]
    namespace = {}
    for code, (marker, check) in zip(blocks, checks):
        assert marker in code, marker
        for old, new in replacements:
            code = code.replace(old, new)
        exec(code, namespace)
        check(namespace)
    return namespace


def _check_usage_open(ns):
    assert ns["cb"].connected and ns["cb"].bucket == "default"


def _check_usage_locks(ns):
    from couchbase_core.exceptions import LockedError, TemporaryFailError

    cb = ns["cb"]
    assert isinstance(ns["refused"], LockedError) and isinstance(ns["refused"], TemporaryFailError)
    doc = cb.get("invoice:7")
    assert doc.value == {"total": 120, "paid": True}
    assert doc.cas != LOCKED_CAS  # the replace released the lock
    assert set(ns["locked"]) == {"invoice:8", "invoice:9"}
    assert all(res.cas for res in ns["locked"].values())
    for key in ("invoice:7", "invoice:8", "invoice:9"):  # nothing is still locked
        assert cb.upsert(key, {"total": 1}).success


def _check_usage_replicas(ns):
    for name in ("rv", "first", "same"):
        assert ns[name].value == {"mode": "blue"}, name
    assert ns["many"]["config"].value == {"mode": "blue"}
    assert not ns["many"]["absent"].success and ns["many"]["absent"].rc == 0x01


def _check_usage_lookup(ns):
    rv = ns["rv"]
    assert (rv[0], rv["name"], rv[2]) == ("Ann", "Ann", 1)
    assert rv.exists("email") is False and rv.exists("name") is True
    assert rv.success is False and rv.access_ok is True


def _check_usage_mutate(ns):
    from couchbase_core.exceptions import SubdocPathExistsError

    assert ns["rv"]["logins"] == 1
    assert isinstance(ns["conflict"], SubdocPathExistsError)
    assert ns["cb"].get("user:1").value == {"name": "Ann", "tags": ["admin", "editor"], "logins": 1,
                                            "address": {"city": "Oslo"}}


def _check_usage_xattrs(ns):
    rv = ns["rv"]
    audit = rv[0]
    assert audit["by"] == "importer" and rv[1] == "Anna"
    # the macro became the CAS of that mutation, hex of its little-endian bytes
    assert int.from_bytes(bytes.fromhex(audit["cas"][2:]), "little") == rv.cas
    assert ns["cb"].get("user:1").value == {"name": "Anna", "tags": ["admin", "editor"], "logins": 1,
                                            "address": {"city": "Oslo"}}


def _check_usage_observe_endure(ns):
    from couchbase_core.result import ObserveInfo

    copies = ns["copies"]
    assert len(copies) == 2 and all(isinstance(c, ObserveInfo) for c in copies)
    assert [c.from_master for c in copies] == [True, False]
    assert all(c.flags == 0x01 for c in copies)  # found and persisted, on both
    assert ns["stored"].all_ok and set(ns["stored"]) == {"order:3", "order:4"}
    assert ns["cb"].get("order:2").cas == ns["rv"].cas


def _check_usage_durability_context(cluster, ns):
    from couchbase_core.exceptions import TimeoutError

    cb = ns["cb"]
    assert cb.get("order:5").value == {"state": "paid"}
    # with replication stalled, a write waiting for a replica times out; after
    # the block, plain writes no longer wait
    cluster.replicate_delay(60)
    try:
        with cb.durability(persist_to=0, replicate_to=1, timeout=0.2):
            try:
                cb.upsert("order:5", {"state": "late"})
            except TimeoutError:
                pass
            else:
                raise AssertionError("the durability() block did not apply")
        # a write still waiting for the stalled replica would time out (or
        # take 60 s); a plain one returns at once, however slow the machine
        started = time.monotonic()
        assert cb.upsert("order:5", {"state": "paid"}).success
        assert time.monotonic() - started < 20
    finally:
        cluster.clear_faults()


def _check_usage_durability_level(ns):
    assert ns["rv"].success and ns["rv"].mutation_token is not None
    assert ns["cb"].get("order:6").value == {"state": "new"}


def _check_usage_tokens(ns):
    from couchbase_core.result import MutationToken

    token = ns["token"]
    assert isinstance(token, MutationToken) and token.bucket == "default" and token.seqno >= 1
    vectors = json.loads(ns["state"].encode())["default"]  # 2.x: encode() is the JSON text
    assert vectors[str(token.vbucket)][0] >= token.seqno
    assert len(vectors) in (1, 2, 3)


def _check_usage_structures(ns):
    cb = ns["cb"]
    assert ns["theme"] == "dark" and ns["again"] is None and ns["has_red"] is True
    assert ns["job"] == "first" and ns["drained"] is True
    assert cb.get("jobs").value == [] and cb.get("tags:1").value == ["red"]


def _check_usage_ping_flush(ns):
    assert ns["statuses"] == [0, 0]  # PingStatus.OK: an IntEnum, as 2.x
    assert ns["states"] == ["connected", "connected"]
    assert not ns["cb"].get("order:1", quiet=True).success  # flushed


def _check_usage_compression(ns):
    assert ns["rows"] == 1000 and ns["small"].closed


def test_couchbase_only_examples_of_usage_doc_run():
    blocks = _python_blocks(_section(_read("docs/usage.md"), "## Couchbase-only operations"))
    with _doc_cluster() as cluster:
        ns = _run_blocks(blocks, [(PLACEHOLDER, cluster.connstr_for("default"))], [
            ("Bucket(", _check_usage_open),
            ("cb.lock(", _check_usage_locks),
            ("cb.rget(", _check_usage_replicas),
            ("cb.lookup_in(", _check_usage_lookup),
            ("SD.counter(", _check_usage_mutate),
            ("xattr=True", _check_usage_xattrs),
            ("cb.endure(", _check_usage_observe_endure),
            ("cb.durability(", lambda ns: _check_usage_durability_context(cluster, ns)),
            ("durability_level=", _check_usage_durability_level),
            ("mutation_token", _check_usage_tokens),
            ("cb.queue_pop(", _check_usage_structures),
            ("cb.flush()", _check_usage_ping_flush),
            ("compression=", _check_usage_compression),
        ])
        ns["cb"].close()


def _check_views_setup(ns):
    assert ns["cb"].get("user:0").value == {"type": "user", "name": "Ann", "age": 31}
    assert "_design/users" in ns["mgr"].design_list()
    assert any(ix.primary and ix.state == "online" for ix in ns["mgr"].n1ql_index_list())


def _check_views_first(ns):
    rows = list(ns["cb"].query("users", "by_age", stale=False))
    assert [(r.key, r.value, r.docid) for r in rows] == [
        (25, "Bob", "user:1"), (25, "Dee", "user:3"), (31, "Ann", "user:0"), (38, "Eve", "user:4"),
        (47, "Cid", "user:2")]


def _check_views_params(ns):
    assert ns["names"] == ["Ann", "Eve"]
    assert ns["view"].indexed_rows == 5 and ns["view"].rows_returned == 2
    assert ns["oldest"] == ["Cid", "Eve"]
    assert ns["per_age"] == {25: 2, 31: 1, 38: 1, 47: 1}


def _check_views_error(ns):
    assert ns["missing"] == (404, "missing_named_view")


def _check_n1ql_first(ns):
    assert ns["row"] == {"name": "Cid", "age": 47}  # the last row printed


def _check_n1ql_params(ns):
    assert ns["twins"] == ["Bob", "Dee"] and ns["count"] == {"n": 5}


def _check_n1ql_consistency(ns):
    assert ns["fay"] == ["Fay"]
    assert ns["q"].encoded_body()["scan_consistency"] == "at_plus"
    assert ns["names"] == ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]


def _check_n1ql_prepared(ns):
    from couchbase_core.n1ql import prepared_cache

    assert ns["first"] == ["Cid"] and ns["second"] == ["Ann", "Cid", "Eve"]
    assert prepared_cache(ns["cb"]).get(ns["q"].statement) is not None
    assert ns["q"].encoded_body()["timeout"] == "10000ms"


def _check_n1ql_request(ns):
    req = ns["req"]
    assert ns["names"] == ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
    assert req.meta["status"] == "success" and req.metrics["resultCount"] == 6
    assert req.rows_returned == 6


def _check_n1ql_error(ns):
    assert ns["syntax"][0] == 3000 and "SELEC" in ns["syntax"][1]


def _check_gevent(ns):
    assert ns["results"] == [["user:2", "user:4"], 6]
    assert ns["gcb"].closed


def _check_n1ql_closed(ns):
    rows = ns["rows"]
    assert ns["first_b"] == "Bob" and rows._closed and rows.rows_returned == 2
    assert rows._current.done and rows._current.closed


def _check_manager(ns):
    assert sorted(row.key for row in ns["sample"]) == ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"]
    assert ns["ddocs"] == ["_design/reports", "_design/users"]
    assert sorted(ns["built"]) == ["by_age", "by_name"]
    assert ns["states"] == {"#primary": "online", "by_age": "online", "by_name": "online"}
    remaining = {ix.name for ix in ns["mgr"].n1ql_index_list()}
    assert remaining == {"#primary", "by_age"}
    assert [row.value for row in ns["cb"].query("reports", "names", limit=1, stale=False)] == [None]


def _check_admin(cluster, ns):
    from couchbase_core.bucket import Bucket
    from couchbase_core.exceptions import AuthError

    assert ns["buckets"] == ["default", "sessions"]
    assert "sessions" not in cluster.refresh()["buckets"]  # removed again
    try:
        Bucket(cluster.connstr_for("default"), username="web", password="s3cret-too")
    except AuthError:
        pass  # the user is gone too
    else:
        raise AssertionError("the user 'web' still exists")


def test_examples_of_views_n1ql_doc_run():
    blocks = _python_blocks(_read("docs/views-n1ql.md"))
    with _doc_cluster() as cluster:
        replacements = [
            (PLACEHOLDER, cluster.connstr_for("default")),
            ('host="localhost", port=8091', 'host="127.0.0.1", port=%d' % cluster.http_port),
        ]
        ns = _run_blocks(blocks, replacements, [
            ("bucket_manager()", _check_views_setup),
            ('cb.query("users", "by_age", stale=False)', _check_views_first),
            ("mapkey_range", _check_views_params),
            ("ViewEngineError", _check_views_error),
            ("age > $1", _check_n1ql_first),
            ("$type", _check_n1ql_params),
            ("consistent_with", _check_n1ql_consistency),
            ("adhoc = False", _check_n1ql_prepared),
            ("req.metrics", _check_n1ql_request),
            ("N1QLError", _check_n1ql_error),
            ("gevent.spawn", _check_gevent),
            ("with cb.n1ql_query", _check_n1ql_closed),
            ("design_publish", _check_manager),
            ("Admin(", lambda ns: _check_admin(cluster, ns)),
        ])
        ns["cb"].close()

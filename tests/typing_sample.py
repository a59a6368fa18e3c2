"""A small user program that ``mypy --strict`` must accept (tests/test_packaging.py).

It is type-checked, never run: it exercises the calls users make most
(key-value, ``_multi``, results, exceptions, N1QL, views, the 2.5
``Cluster``, the gevent bucket) the way a typed application would, so a
wrong or missing annotation in the public API shows up as a mypy error.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import couchbase_core.subdocument as SD
import gcouchbase.bucket
from couchbase_core import FMT_JSON, FMT_UTF8
from couchbase_core.bucket import Bucket
from couchbase_core.cluster import Cluster, PasswordAuthenticator
from couchbase_core.exceptions import (
    CouchbaseError,
    KeyExistsError,
    NotFoundError,
    TimeoutError,
)
from couchbase_core.n1ql import CONSISTENCY_REQUEST, MutationState, N1QLQuery, N1QLRequest
from couchbase_core.result import (
    MultiResult,
    MutationToken,
    OperationResult,
    Result,
    SubdocResult,
    ValueResult,
)
from couchbase_core.views.params import Query


def store_and_read(bucket: Bucket) -> Optional[Dict[str, Any]]:
    """Write a document, read it back and return its value."""
    stored: OperationResult = bucket.upsert("user::1", {"name": "Ada"}, ttl=60, format=FMT_JSON)
    cas: int = stored.cas
    bucket.replace("user::1", {"name": "Ada L."}, cas=cas)
    try:
        bucket.insert("user::1", {"name": "again"})
    except KeyExistsError as exc:
        rc: int = exc.rc
        print("exists", rc, exc.key)
    got: ValueResult = bucket.get("user::1")
    flags: int = got.flags
    ok: bool = got.success
    print(flags, ok, got.cas)
    value: Any = got.value
    return value if isinstance(value, dict) else None


def quiet_reads(bucket: Bucket) -> bool:
    """A miss under ``quiet`` is a result, not an exception."""
    res: ValueResult = bucket.get("missing", quiet=True)
    if not res.success:
        return False
    try:
        bucket.get("missing")
    except NotFoundError as exc:
        result: Optional[Result] = exc.result
        return result is None
    return True


def many(bucket: Bucket) -> List[str]:
    """The ``_multi`` forms and their ``MultiResult``."""
    bucket.upsert_multi({"a": 1, "b": 2})
    results: MultiResult = bucket.get_multi(["a", "b"])
    keys: List[str] = []
    for key, res in results.items():
        keys.append(str(key))
        print(res.value)
    print(results.all_ok)
    bucket.remove_multi(["a", "b"], quiet=True)
    return keys


def counters_and_locks(bucket: Bucket) -> int:
    """Counters, touch, lock/unlock, append and remove."""
    bucket.upsert("n", 0)
    counted: ValueResult = bucket.counter("n", delta=5, initial=0)
    bucket.incr("n")
    bucket.decr("n", amount=2)
    bucket.touch("n", ttl=10)
    locked: ValueResult = bucket.lock("n", ttl=5)
    bucket.unlock("n", locked.cas)
    bucket.upsert("s", "text", format=FMT_UTF8)
    bucket.append("s", "-more")
    bucket.prepend("s", "pre-")
    removed: OperationResult = bucket.remove("s")
    print(removed.cas)
    number: int = counted.value
    return number


def queries(bucket: Bucket) -> int:
    """N1QL and views."""
    query = N1QLQuery("SELECT name FROM `default` WHERE name = $1", "Ada")
    query.adhoc = False
    query.timeout = 5.0
    count = 0
    for row in bucket.n1ql_query(query):
        print(row)
        count += 1
    for vrow in bucket.query("design", "view", limit=10, query=Query(stale=False)):
        print(vrow.key, vrow.value, vrow.docid)
    return count


def subdocument_and_pipeline(bucket: Bucket) -> Optional[MutationToken]:
    """Sub-document calls, a pipeline, mutation tokens, consistency."""
    looked: SubdocResult = bucket.lookup_in("user::1", SD.get("name"), SD.exists("age"))
    print(looked[0], looked.exists("age"))
    mutated: SubdocResult = bucket.mutate_in("user::1", SD.upsert("age", 36), SD.counter("visits", 1))
    with bucket.pipeline():
        bucket.upsert("p1", 1)
        bucket.get("p1")
    state = MutationState(mutated)
    query = N1QLQuery("SELECT 1")
    query.consistency = CONSISTENCY_REQUEST
    query.consistent_with(state)
    bucket.map_add("profile", "city", "Paris", create=True)
    city: ValueResult = bucket.map_get("profile", "city")
    bucket.queue_push("jobs", {"id": 1}, create=True)
    job: ValueResult = bucket.queue_pop("jobs")
    print(city.value, job.value, bucket.map_size("profile"))
    observed: ValueResult = bucket.observe("user::1")
    print(observed.value, bucket.bucket_manager())
    return mutated.mutation_token


def errors() -> CouchbaseError:
    """Exceptions are built as in 2.x: from a message, a dict or keywords."""
    by_message = NotFoundError("no such key")
    by_dict = CouchbaseError({"rc": 0x0D, "message": "not found", "key": "k"})
    by_keywords = KeyExistsError(message="exists", key="k", rc=0x0C)
    ok, failed = by_dict.split_results()
    print(by_message.rc, by_keywords.key, len(ok), len(failed), str(by_dict))
    return by_message


def cluster_entry_point() -> Bucket:
    """The 2.5 ``Cluster`` and its authenticators."""
    cluster = Cluster("couchbase://127.0.0.1")
    cluster.authenticate(PasswordAuthenticator("app", "secret"))
    bucket: Bucket = cluster.open_bucket("travel")
    request: N1QLRequest = cluster.n1ql_query("SELECT 1")
    print(request.get_single_result(), request.meta)
    return bucket


def gevent_bucket() -> None:
    """The gevent bucket has the same API."""
    bucket = gcouchbase.bucket.Bucket("couchbase://127.0.0.1/default", operation_timeout=2.5)
    try:
        res: ValueResult = bucket.get("k")
        print(res.value)
        bucket.upsert("k", b"raw")
        multi: MultiResult = bucket.get_multi(["k"])
        print(len(multi))
    except TimeoutError:
        pass
    except CouchbaseError as exc:
        print(exc.rc, exc.message, exc.all_results)
    finally:
        bucket.close()


def main() -> None:
    """Entry point (never run: the file is only type-checked)."""
    bucket = Bucket("couchbase://127.0.0.1/default", password="secret")
    store_and_read(bucket)
    quiet_reads(bucket)
    many(bucket)
    counters_and_locks(bucket)
    queries(bucket)
    subdocument_and_pipeline(bucket)
    errors()
    cluster_entry_point()
    gevent_bucket()

#!/usr/bin/env python
"""A travel report, written the way programs for the 2.5 Couchbase Python
SDK were: a ``Cluster`` with a ``PasswordAuthenticator``, key-value calls,
a view, N1QL, full-text search and analytics.

Moving it from 2.5 changed its imports only (``couchbase.X`` became
``couchbase_core.X``). It expects a bucket of airline documents::

    {"type": "airline", "name": "Air France", "country": "France", "iata": "AF"}

with the design document ``airlines`` (view ``by_country`` emitting
``doc.country -> doc.name``), the full-text index ``airlines-fts`` and the
analytics dataset ``airlines``. ``tests/test_example_from_25.py`` sets all
that up on the emulator and runs this program against it::

    python examples/from_25.py couchbase://127.0.0.1:PORT --bucket travel \\
        --username app --password secret [--no-search] [--no-analytics]
"""

from __future__ import print_function

import argparse
import sys

from couchbase_core.cluster import Cluster, PasswordAuthenticator
from couchbase_core.exceptions import CouchbaseError, KeyExistsError
from couchbase_core.n1ql import CONSISTENCY_REQUEST, N1QLQuery
from couchbase_core.views.params import STALE_UPDATE_BEFORE, Query


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Airline report over a Couchbase cluster (2.5-era program)")
    p.add_argument("address", help="cluster address: host[:port][,host...] or a couchbase:// connection string")
    p.add_argument("--bucket", default="travel")
    p.add_argument("--username", default="Administrator")
    p.add_argument("--password", default="password")
    p.add_argument("--country", default="France")
    p.add_argument("--no-search", action="store_true", help="skip the full-text search part")
    p.add_argument("--no-analytics", action="store_true", help="skip the analytics part")
    return p.parse_args(argv)


def connection_string(address):
    if "://" in address:
        return address
    return "couchbase://" + address


def key_value(bucket):
    demo = {"type": "demo", "name": "Demo Air", "iata": "ZZ"}
    bucket.upsert("airline_demo", demo)
    rv = bucket.get("airline_demo")
    print("KV get: %s" % rv.value["name"])

    try:
        bucket.insert("airline_demo", demo)
    except KeyExistsError:
        print("KV insert refused: key exists")

    demo["name"] = "Demo Airways"
    bucket.replace("airline_demo", demo, cas=rv.cas)
    print("KV replace with cas: %s" % bucket.get("airline_demo").value["name"])

    bucket.remove("demo_counter", quiet=True)
    first = bucket.counter("demo_counter", delta=5, initial=10).value
    second = bucket.counter("demo_counter", delta=5).value
    print("KV counter: %d -> %d" % (first, second))

    found = bucket.get_multi(["airline_demo", "demo_counter"])
    print("KV get_multi: %d of %d" % (sum(1 for r in found.values() if r.success), len(found)))

    bucket.remove("airline_demo")
    print("KV remove: %s" % ("gone" if not bucket.get("airline_demo", quiet=True).success else "still there"))


def view_report(bucket, country):
    q = Query(key=country, stale=STALE_UPDATE_BEFORE)
    names = [row.value for row in bucket.query("airlines", "by_country", query=q)]
    print("VIEW %s: %s" % (country, ", ".join(sorted(names))))


def n1ql_report(cluster, bucket, bucket_name, country):
    q = N1QLQuery("SELECT a.name FROM `%s` a WHERE a.type = 'airline' AND a.country = $country "
                  "ORDER BY a.name" % bucket_name, country=country)
    q.consistency = CONSISTENCY_REQUEST
    names = [row["name"] for row in bucket.n1ql_query(q)]
    print("N1QL %s: %s" % (country, ", ".join(names)))

    count = cluster.n1ql_query("SELECT COUNT(*) AS n FROM `%s` WHERE type = 'airline'" % bucket_name)
    print("N1QL cluster-level count: %d" % count.get_single_result()["n"])


def search_report(bucket, country):
    import couchbase_core.fulltext as FT

    results = bucket.search("airlines-fts", FT.MatchQuery(country.lower(), field="country"), limit=10)
    ids = sorted(hit["id"] for hit in results)
    print("FTS %s: %s" % (country.lower(), ", ".join(ids)))


def analytics_report(cluster, host, country):
    from couchbase_core.analytics import AnalyticsQuery

    q = AnalyticsQuery("SELECT VALUE a.name FROM airlines a WHERE a.country = ? ORDER BY a.name", country)
    names = list(cluster.analytics_query(q, host))
    print("ANALYTICS %s: %s" % (country, ", ".join(names)))


def main(argv=None):
    args = parse_args(argv)
    connstr = connection_string(args.address)
    cluster = Cluster(connstr)
    cluster.authenticate(PasswordAuthenticator(args.username, args.password))
    try:
        bucket = cluster.open_bucket(args.bucket)
    except CouchbaseError as e:
        print("cannot open bucket %s: %s" % (args.bucket, e), file=sys.stderr)
        return 1

    key_value(bucket)
    view_report(bucket, args.country)
    n1ql_report(cluster, bucket, args.bucket, args.country)
    if not args.no_search:
        search_report(bucket, args.country)
    if not args.no_analytics:
        host = connstr.split("://", 1)[1].split(",")[0].split("/")[0].rsplit(":", 1)[0]
        analytics_report(cluster, host, args.country)
    print("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())

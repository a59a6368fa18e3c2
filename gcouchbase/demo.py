"""``python -m gcouchbase.demo``: a gevent workload on one shared Bucket.

By default it starts the embedded Couchbase cluster emulator
(:mod:`couchbase_core.mock`: 3 nodes, 1 replica) and connects with
``couchbase://``; ``--memcached`` starts a real memcached instead, and
``--connstr`` uses a server of yours. It then runs phases of 1, 10, 100 and
1,000 greenlets that all share ONE :class:`gcouchbase.bucket.Bucket` (one
socket per node), each doing a 90/10 mix of ``get`` and ``upsert`` plus an
occasional ``get_multi``. A live line shows throughput and latency while it
runs; a table sums it up at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Dict, List, Optional

import gevent

from couchbase_core import FMT_BYTES
from couchbase_core.exceptions import CouchbaseError
from gcouchbase.bucket import Bucket


class Phase:
    """Counters of one phase."""

    def __init__(self, greenlets: int) -> None:
        self.greenlets = greenlets
        self.ops: Dict[str, int] = {"get": 0, "upsert": 0, "get_multi": 0}
        self.errors = 0
        self.samples: List[float] = []
        self.elapsed = 0.0

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def percentile(self, p: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _worker(bucket: Bucket, phase: Phase, keys: List[str], value: bytes, stop_at: float, seed: int) -> None:
    rnd = random.Random(seed)
    samples = phase.samples
    perf = time.perf_counter
    while perf() < stop_at:
        r = rnd.random()
        start = perf()
        try:
            if r < 0.01:
                bucket.get_multi(rnd.sample(keys, 20))
                phase.ops["get_multi"] += 1
            elif r < 0.90:
                bucket.get(keys[rnd.randrange(len(keys))])
                phase.ops["get"] += 1
            else:
                bucket.upsert(keys[rnd.randrange(len(keys))], value)
                phase.ops["upsert"] += 1
        except CouchbaseError:
            phase.errors += 1
        if len(samples) < 200_000:
            samples.append(perf() - start)


def _live(phase: Phase, started: float, stop_at: float, out) -> None:
    last_total, last_time = 0, started
    while time.perf_counter() < stop_at:
        gevent.sleep(0.5)
        now = time.perf_counter()
        total = phase.total
        rate = (total - last_total) / max(now - last_time, 1e-9)
        last_total, last_time = total, now
        bar = "#" * min(40, int(rate / 5000))
        out.write("\r  %5d greenlets | %8.0f ops/s %-40s | total %9d | p50 %6.0f us | errors %d   "
                  % (phase.greenlets, rate, bar, total, phase.percentile(0.5) * 1e6, phase.errors))
        out.flush()


def run(connstr: str, phases: List[int], seconds: float, out=sys.stdout, username: Optional[str] = None,
        password: Optional[str] = None) -> List[Phase]:
    """Run the demo workload against ``connstr``; return the phases."""
    bucket = Bucket(connstr, username=username, password=password, default_format=FMT_BYTES)
    keys = ["demo:%05d" % i for i in range(10_000)]
    value = b"v" * 100
    out.write("Loading %d keys with upsert_multi ... " % len(keys))
    out.flush()
    start = time.perf_counter()
    for i in range(0, len(keys), 1000):
        bucket.upsert_multi({k: value for k in keys[i:i + 1000]})
    out.write("done in %.2fs\n" % (time.perf_counter() - start))
    out.write("All greenlets share one Bucket: %s\n\n" % bucket)
    results = []
    for n in phases:
        phase = Phase(n)
        started = time.perf_counter()
        stop_at = started + seconds
        monitor = gevent.spawn(_live, phase, started, stop_at, out)
        workers = [gevent.spawn(_worker, bucket, phase, keys, value, stop_at, i) for i in range(n)]
        gevent.joinall(workers)
        monitor.join()
        phase.elapsed = time.perf_counter() - started
        out.write("\n")
        results.append(phase)
    bucket.close()
    _summary(results, out)
    return results


def _summary(phases: List[Phase], out) -> None:
    out.write("\nSummary (one shared gevent Bucket, one socket per node)\n")
    header = "%10s %12s %10s %10s %10s %10s %8s" % ("greenlets", "ops/s", "get", "upsert", "get_multi",
                                                  "p50 us", "p99 us")
    out.write(header + "\n" + "-" * len(header) + "\n")
    for p in phases:
        out.write("%10d %12.0f %10d %10d %10d %10.0f %8.0f%s\n" % (
            p.greenlets, p.total / p.elapsed, p.ops["get"], p.ops["upsert"], p.ops["get_multi"],
            p.percentile(0.5) * 1e6, p.percentile(0.99) * 1e6,
            "  (%d errors)" % p.errors if p.errors else ""))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gcouchbase.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connstr", help="use this server instead of starting one")
    parser.add_argument("--username", default=None, help="user name for --connstr")
    parser.add_argument("--password", default=None, help="password for --connstr")
    parser.add_argument("--memcached", action="store_true", help="start a real memcached instead of the emulator")
    parser.add_argument("--nodes", type=int, default=3, help="emulated nodes (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase (default 3)")
    parser.add_argument("--greenlets", default="1,10,100,1000",
                        help="comma-separated greenlet counts, one phase each")
    args = parser.parse_args(argv)
    phases = [int(x) for x in args.greenlets.split(",") if x.strip()]
    if args.connstr:
        run(args.connstr, phases, args.seconds, username=args.username, password=args.password)
        return 0
    if args.memcached:
        from couchbase_core.testing.memcached import MemcachedServer

        with MemcachedServer(threads=2) as server:
            print("Started memcached on %s (it stops when the demo ends)" % server.address)
            run(server.connstr, phases, args.seconds)
        return 0
    from couchbase_core.mock import MockCluster

    with MockCluster(nodes=args.nodes, replicas=1) as cluster:
        print("Started the Couchbase emulator: %d nodes, 1 replica, bucket 'default' (it stops when the demo ends)"
              % args.nodes)
        print("  %s" % cluster.connstr_for("default"))
        run(cluster.connstr_for("default"), phases, args.seconds, username="Administrator", password="password")
    return 0


if __name__ == "__main__":
    sys.exit(main())

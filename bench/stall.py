"""``python -m bench.stall``: how long big ``_multi`` calls keep the gevent
hub from running anything else.

A heartbeat greenlet sleeps 1 ms in a loop and records the time between
successive wake-ups (``time.perf_counter``). While it runs, one gevent
Bucket does an ``upsert_multi``, a ``get_multi`` and a ``remove_multi`` of
the same keys (100-byte values) against a local memcached. Every gap the
heartbeat sees during a call is time in which no other greenlet of the
process could have run. Reported per call: total time, the longest gap, the
99th percentile gap and the number of gaps over 20 ms; and one acceptance
line per call, ``max gap <= 20 ms``. An idle row (nothing but the heartbeat)
shows the machine's own noise.

    python -m bench.stall                    # 100,000 and 10,000 keys
    python -m bench.stall --keys 200 --json /tmp/stall.json

See ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from bench.util import machine_line, markdown_table, percentile, verdict, write_json

THRESHOLD_MS = 20.0
INTERVAL = 0.001
IDLE_SECONDS = 0.5


class Heartbeat:
    """A greenlet that sleeps ``interval`` seconds in a loop and records the
    time between its wake-ups; :meth:`take` hands over (and clears) the gaps
    recorded so far."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.gaps: List[float] = []
        self._greenlet: Any = None

    def start(self) -> "Heartbeat":
        """Start the heartbeat greenlet."""
        import gevent

        self._greenlet = gevent.spawn(self._run)
        return self

    def _run(self) -> None:
        import gevent

        clock = time.perf_counter
        sleep = gevent.sleep
        interval = self.interval
        last = clock()
        while True:
            sleep(interval)
            now = clock()
            self.gaps.append(now - last)
            last = now

    def take(self) -> List[float]:
        """The gaps (seconds) recorded since the last call."""
        gaps, self.gaps = self.gaps, []
        return gaps

    def settle(self, beats: int = 3, limit: float = 5.0) -> None:
        """Yield to the hub until the heartbeat has woken ``beats`` more
        times (bounded by ``limit`` seconds), so the gap that covers the end
        of a call is recorded."""
        import gevent

        want = len(self.gaps) + beats
        deadline = time.perf_counter() + limit
        while len(self.gaps) < want and time.perf_counter() < deadline:
            gevent.sleep(self.interval)

    def stop(self) -> None:
        """Kill the heartbeat greenlet."""
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None


def summarize(label: str, keys: int, seconds: float, gaps: List[float], problem: str = "") -> Dict[str, Any]:
    """One result row: the call's time and its heartbeat gaps in ms."""
    ms = [g * 1000.0 for g in gaps]
    return {"op": label, "keys": keys, "seconds": seconds, "heartbeats": len(ms),
            "max_gap_ms": max(ms) if ms else 0.0, "p99_gap_ms": percentile(ms, 99),
            "gaps_over_threshold": sum(1 for g in ms if g > THRESHOLD_MS), "problem": problem}


def timed(hb: Heartbeat, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the heartbeat watching; returns (seconds, gaps, result)."""
    import gevent

    gevent.sleep(0.02)  # the heartbeat is running and regular before the call
    hb.take()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    hb.settle()
    return seconds, hb.take(), result


def check_results(op: str, result: Any, keys: List[str], value: bytes) -> str:
    """An empty string if the call did what was asked for every key, else
    what went wrong (results are checked after the gaps are taken)."""
    if len(result) != len(keys):
        return "%d results for %d keys" % (len(result), len(keys))
    failed = [k for k in keys if not result[k].success]
    if failed:
        return "%d keys failed, e.g. %s: %s" % (len(failed), failed[0], result[failed[0]].rc)
    if op == "get_multi":
        wrong = sum(1 for k in keys if result[k].value != value)
        if wrong:
            return "%d wrong values" % wrong
    return ""


def run_size(bucket: Any, hb: Heartbeat, keys_count: int, value: bytes) -> List[Dict[str, Any]]:
    """The three calls over ``keys_count`` keys, in order."""
    keys = ["stall:%d:%07d" % (keys_count, i) for i in range(keys_count)]
    items = {k: value for k in keys}
    calls = [("upsert_multi", lambda: bucket.upsert_multi(items)),
             ("get_multi", lambda: bucket.get_multi(keys)),
             ("remove_multi", lambda: bucket.remove_multi(keys))]
    rows = []
    for op, fn in calls:
        seconds, gaps, result = timed(hb, fn)
        rows.append(summarize(op, keys_count, seconds, gaps, check_results(op, result, keys, value)))
    return rows


def measure(host: str, port: int, sizes: List[int], value_size: int, timeout: float,
            repeat: int = 1) -> List[Dict[str, Any]]:
    """Every row: idle first, then per size the three calls (``repeat``
    times over)."""
    import gevent

    from couchbase_core import FMT_BYTES
    from gcouchbase.bucket import Bucket

    value = bytes((i * 7 + 13) % 256 for i in range(value_size))
    bucket = Bucket("memcached://%s:%d?operation_timeout=%g" % (host, port, timeout), default_format=FMT_BYTES)
    hb = Heartbeat().start()
    try:
        bucket.upsert("stall:warm", value)  # connection open, code paths warm
        hb.settle()
        hb.take()
        gevent.sleep(IDLE_SECONDS)
        rows = [summarize("idle (heartbeat only)", 0, IDLE_SECONDS, hb.take())]
        for _ in range(repeat):
            for n in sizes:
                rows.extend(run_size(bucket, hb, n, value))
        return rows
    finally:
        hb.stop()
        bucket.close()


def report(rows: List[Dict[str, Any]]) -> str:
    """The markdown table and one acceptance line per call."""
    table = markdown_table(
        ["operation", "keys", "total s", "keys/s", "max gap ms", "p99 gap ms", "gaps > 20 ms", "heartbeats"],
        [[r["op"], "{:,}".format(r["keys"]) if r["keys"] else "-", "%.3f" % r["seconds"],
          "{:,.0f}".format(r["keys"] / r["seconds"]) if r["keys"] and r["seconds"] else "-",
          "%.1f" % r["max_gap_ms"], "%.1f" % r["p99_gap_ms"], r["gaps_over_threshold"], r["heartbeats"]]
         for r in rows])
    lines = [table, ""]
    for r in rows:
        if not r["keys"]:
            continue
        lines.append("%-12s %9s keys: max gap %.1f ms; max gap <= %.0f ms: %s%s"
                     % (r["op"], "{:,}".format(r["keys"]), r["max_gap_ms"], THRESHOLD_MS,
                        verdict(r["max_gap_ms"] <= THRESHOLD_MS and not r["problem"]),
                        "  !! %s" % r["problem"] if r["problem"] else ""))
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m bench.stall", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", default="100000,10000", help="comma-separated key counts (default 100000,10000)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--timeout", type=float, default=60.0, help="operation timeout in seconds (default 60)")
    p.add_argument("--repeat", type=int, default=1, help="run the calls of every size N times (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write the rows to PATH")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(k) for k in args.keys.split(",") if k.strip()]
    except ValueError:
        p.error("--keys takes comma-separated integers")
    if not args.sizes or min(args.sizes) < 1 or args.value_size < 1 or args.repeat < 1:
        p.error("--keys, --value-size and --repeat must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Start memcached, measure, print the table; 1 if a call returned wrong results."""
    args = parse_args(argv)
    from couchbase_core.testing.memcached import MemcachedServer

    with MemcachedServer(threads=4, memory_mb=256) as srv:
        print("hub stalls during big _multi calls (gcouchbase, memcached on %s)" % srv.address)
        print("  %s" % machine_line())
        print("  heartbeat: gevent.sleep(%g) in a loop; %d-byte values; operation timeout %g s"
              % (INTERVAL, args.value_size, args.timeout))
        print(flush=True)
        rows = measure(srv.host, srv.port, args.sizes, args.value_size, args.timeout, args.repeat)
    print(report(rows))
    if args.json:
        write_json(args.json, {"measurement": "stall", "machine": machine_line(), "threshold_ms": THRESHOLD_MS,
                               "value_size": args.value_size, "rows": rows})
        print("\nrows written to %s" % args.json)
    return 1 if any(r["problem"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

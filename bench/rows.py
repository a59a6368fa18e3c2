"""``python -m bench.rows``: rows per second through gcouchbase's view and
N1QL iterators, next to ``urllib.request`` + ``json.loads`` of the very
same response bodies.

The server (``python -m bench.rowserver``, a process of its own) is a
Couchbase bucket from the emulator whose view and N1QL ports lead to a
canned HTTP server holding pre-built responses of N rows (100,000 by
default; realistic small user documents, chunked transfer encoding). This
process is the client and measures only itself:

* **gcouchbase view**: ``for row in bucket.query("bench", "by_city",
  stale=STALE_OK)`` over a gevent Bucket;
* **gcouchbase N1QL**: ``for row in bucket.n1ql_query(N1QLQuery(...))``;
* **baseline**: ``urllib.request.urlopen(url).read()`` and ``json.loads``
  of the whole body, then the rows list (the simplest correct way to get the
  same rows in Python, holding them all at once).

rows/s = N / (time from the call to the last row). One untimed warm-up
round, then ``--repeat`` rounds (default 3) taking turns; the median is
shown with the min..max.

    python -m bench.rows
    python -m bench.rows --rows 1000 --repeat 1 --json /tmp/rows.json

See ``docs/performance.md`` for why the rows do not come from the
emulator's own view and query engines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from typing import Any, Callable, Dict, List, Optional

from bench.util import child_env, die_with_parent, machine_line, markdown_table, write_json

ADMIN = ("Administrator", "password")
METHODS = ("view/gcouchbase", "view/baseline", "n1ql/gcouchbase", "n1ql/baseline")


class RowServer:
    """``python -m bench.rowserver`` as a child process; ``info`` is the
    JSON line it printed. Closing its stdin (:meth:`stop`) ends it, and it
    dies with this process."""

    def __init__(self, rows: int, chunk_bytes: int, emulator: bool = False) -> None:
        self.rows = rows
        self.chunk_bytes = chunk_bytes
        self.emulator = emulator
        self.proc: Optional[subprocess.Popen] = None
        self.info: Dict[str, Any] = {}

    def start(self) -> "RowServer":
        """Start the server and wait for its JSON line."""
        cmd = [sys.executable, "-m", "bench.rowserver", str(self.rows), "--chunk-bytes", str(self.chunk_bytes)]
        if self.emulator:
            cmd.append("--emulator")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=child_env(), preexec_fn=die_with_parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("{"):
            self.stop()
            raise RuntimeError("the row server did not start (see its error output above)")
        self.info = json.loads(line)
        return self

    def stop(self) -> None:
        """Close its stdin and wait for it to exit (kill it after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> "RowServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def baseline_fetch(url: str, body: Optional[bytes], member: str) -> List[Any]:
    """urllib + json.loads: the whole body, decoded at once; its rows."""
    headers = {"Authorization": "Basic " + b64encode(("%s:%s" % ADMIN).encode()).decode()}
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = resp.read()
    return json.loads(data)[member]


def make_methods(bucket: Any, info: Dict[str, Any]) -> Dict[str, Callable[[], Any]]:
    """Each method: returns (row count, last row's document id)."""
    from couchbase_core.n1ql import N1QLQuery
    from couchbase_core.views.params import STALE_OK

    statement = info["statement"]
    design, view = info["view_url"].split("/_design/")[1].split("/_view/")

    def view_client() -> Any:
        count, last = 0, None
        for row in bucket.query(design, view, stale=STALE_OK):
            count += 1
            last = row
        return count, last.docid if last is not None else None

    def n1ql_client() -> Any:
        count, last = 0, None
        for row in bucket.n1ql_query(N1QLQuery(statement)):
            count += 1
            last = row
        return count, last["id"] if last is not None else None

    def view_base() -> Any:
        rows = baseline_fetch(info["view_url"] + "?stale=ok", None, "rows")
        return len(rows), rows[-1]["id"] if rows else None

    def n1ql_base() -> Any:
        rows = baseline_fetch(info["query_url"], json.dumps({"statement": statement}).encode(), "results")
        return len(rows), rows[-1]["id"] if rows else None

    return {"view/gcouchbase": view_client, "view/baseline": view_base,
            "n1ql/gcouchbase": n1ql_client, "n1ql/baseline": n1ql_base}


def measure(rows: int, repeat: int, chunk_bytes: int, emulator: bool = False) -> Dict[str, Any]:
    """Start the server, run the warm-up and the measured rounds."""
    from gcouchbase.bucket import Bucket

    with RowServer(rows, chunk_bytes, emulator) as server:
        info = server.info
        bucket = Bucket(info["connstr"] + "/default?operation_timeout=30&query_timeout=120&views_timeout=120",
                        username=ADMIN[0], password=ADMIN[1])
        try:
            methods = make_methods(bucket, info)
            expect_last = "user::%06d" % (rows - 1)
            runs: Dict[str, List[float]] = {m: [] for m in METHODS}
            problems: List[str] = []
            for round_no in range(repeat + 1):
                for name in METHODS:
                    t0 = time.perf_counter()
                    count, last = methods[name]()
                    seconds = time.perf_counter() - t0
                    if count != rows or not isinstance(last, str) or (
                            last != expect_last if info["ordered"] else not last.startswith("user::")):
                        problems.append("%s: %d rows, last %r (expected %d, %r)" % (name, count, last, rows,
                                                                                     expect_last))
                    if round_no:  # round 0 is the warm-up
                        runs[name].append(seconds)
        finally:
            bucket.close()
    return {"info": info, "runs": runs, "problems": problems}


def summarize(result: Dict[str, Any], rows: int) -> Dict[str, Dict[str, float]]:
    """rows/s per method: median, min, max."""
    out = {}
    for name, times in result["runs"].items():
        rates = sorted(rows / t for t in times)
        out[name] = {"median": statistics.median(rates), "min": rates[0], "max": rates[-1],
                     "median_seconds": statistics.median(times)}
    return out


def report(summary: Dict[str, Dict[str, float]], result: Dict[str, Any], rows: int) -> str:
    """The markdown table and the ratio lines."""
    info = result["info"]
    table = []
    for name in METHODS:
        kind, client = name.split("/")
        s = summary[name]
        base = summary["%s/baseline" % kind]["median"]
        size = info.get("view_bytes" if kind == "view" else "n1ql_bytes")
        table.append(["%s, %s" % ("view" if kind == "view" else "N1QL",
                                  "gcouchbase" if client == "gcouchbase" else "urllib + json.loads"),
                      "{:,.0f}".format(s["median"]), "%.3f" % s["median_seconds"],
                      "%.1f" % (size / s["median_seconds"] / 1e6) if size else "-", "%.2fx" % (s["median"] / base),
                      "{:,.0f}..{:,.0f}".format(s["min"], s["max"])])
    lines = [markdown_table(["rows from", "rows/s", "s per %s rows" % "{:,}".format(rows), "MB/s",
                             "vs baseline", "runs min..max"], table), ""]
    for kind, label in (("view", "view"), ("n1ql", "N1QL")):
        lines.append("%s: gcouchbase %s rows/s = %.2fx urllib + json.loads" % (
            label, "{:,.0f}".format(summary[kind + "/gcouchbase"]["median"]),
            summary[kind + "/gcouchbase"]["median"] / summary[kind + "/baseline"]["median"]))
    for problem in result["problems"]:
        lines.append("!! %s" % problem)
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m bench.rows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows per response (default 100000)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds after the warm-up (default 3)")
    p.add_argument("--chunk-bytes", type=int, default=16384,
                   help="size of the server's HTTP chunks (default 16384)")
    p.add_argument("--emulator", action="store_true",
                   help="let the emulator's own view and N1QL engines serve the rows instead of canned bodies "
                        "(loads the documents first; shows the server, not the client, as the bottleneck)")
    p.add_argument("--json", metavar="PATH", help="also write the timings to PATH")
    args = p.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.chunk_bytes < 1:
        p.error("--rows, --repeat and --chunk-bytes must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Start the server, measure, print the table; 1 if a stream returned wrong rows."""
    args = parse_args(argv)
    print("row streaming: gcouchbase view and N1QL iteration vs urllib + json.loads")
    print("  %s" % machine_line())
    result = measure(args.rows, args.repeat, args.chunk_bytes, args.emulator)
    info = result["info"]
    sizes = ""
    if info.get("view_bytes"):
        sizes = " (view body %.1f MB, N1QL body %.1f MB)" % (info["view_bytes"] / 1e6, info["n1ql_bytes"] / 1e6)
    print("  %s rows per response%s" % ("{:,}".format(args.rows), sizes))
    print("  server, in another process: %s" % info["source"])
    print("  %d measured rounds after one warm-up (median shown)" % args.repeat)
    print()
    summary = summarize(result, args.rows)
    print(report(summary, result, args.rows))
    if args.json:
        write_json(args.json, {"measurement": "rows", "machine": machine_line(), "rows": args.rows,
                               "summary": summary, "runs": result["runs"], "problems": result["problems"],
                               "server": {k: v for k, v in info.items() if k != "sample_doc"},
                               "sample_doc": info.get("sample_doc")})
        print("\ntimings written to %s" % args.json)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.parked``: the memory one greenlet costs while it waits
in ``bucket.get`` or ``bucket.upsert`` for a server that does not answer.

A local memcached is frozen with SIGSTOP (it keeps its sockets, answers
nothing; we wait until ``/proc/PID/stat`` shows state ``T``). Then N
greenlets (10,000 by default) each call ``bucket.get(key)`` -- or, in a
separate run, ``bucket.upsert(key, 100-byte value)`` -- on one gevent
Bucket with a 60 s operation timeout, so they all stay parked. The memory
they hold is measured twice, in separate worker processes:

* **RSS**: ``/proc/self/statm`` after minus before;
* **tracemalloc**: snapshot after minus snapshot before, also per
  allocation site (file:line).

The same is done for N greenlets parked on ``gevent.event.Event().wait()``
(gevent's own greenlet, the baseline), and the baseline is subtracted:
what is left is what the client adds per waiting greenlet. The acceptance
line asks for at most 4 KB (4096 bytes) beyond gevent's, by the larger of
the two measures.

Every run is a worker process of its own (``python -m bench.parked
--worker ...``), so tracemalloc never distorts the RSS figures and one run's
freed memory is not reused by the next. The frozen memcached is always
continued and stopped: the worker continues it in a ``finally`` after
killing its greenlets, the parent continues it after every worker, and a
watchdog thread in the parent continues it, kills the worker and stops the
server if the whole run outlasts its deadline. Every child dies with the
parent (``PR_SET_PDEATHSIG``).

    python -m bench.parked
    python -m bench.parked --greenlets 100 --json /tmp/parked.json

See ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from bench.util import child_env, die_with_parent, machine_line, markdown_table, verdict, write_json

LIMIT_BYTES = 4096
KINDS = ("baseline", "get", "upsert")
LABELS = {"baseline": "Event().wait() (gevent's own)", "get": "bucket.get(key)",
          "upsert": "bucket.upsert(key, value)"}
MODES = ("rss", "tracemalloc")
VALUE_SIZE = 100
TOP_SITES = 10
#: Sites kept per worker run (the parent matches them against the baseline).
SITES_KEPT = 60
#: Allocation sites that count as the client's own.
CLIENT_CODE = ("couchbase_core/", "gcouchbase/")


# -- the worker (one measurement, in a process of its own) -------------------------------

def process_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (``T`` when stopped), or ``?``."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return "?"
    rest = data[data.rfind(b")") + 1:].split()
    return rest[0].decode("ascii", "replace") if rest else "?"


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1] if marker == "site-packages/" else "stdlib:" + path.rsplit("/", 1)[1]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.relpath(path, repo) if path.startswith(repo) else path


def _sites(before: Any, after: Any) -> List[Dict[str, Any]]:
    stats = after.compare_to(before, "lineno")
    out = []
    for st in stats:
        if st.size_diff <= 0:
            continue
        frame = st.traceback[0]
        out.append({"site": "%s:%d" % (_short(frame.filename), frame.lineno), "bytes": st.size_diff,
                    "count": st.count_diff})
    out.sort(key=lambda s: -s["bytes"])
    return out


def run_worker(mode: str, kind: str, n: int, host: str, port: int, pid: int, timeout: float) -> Dict[str, Any]:
    """Park ``n`` greenlets the ``kind`` way with memcached (``pid``) frozen
    and measure them the ``mode`` way. Returns the result as a dict."""
    if mode == "tracemalloc":
        import tracemalloc

        tracemalloc.start(1)
    import gevent
    import gevent.event

    from couchbase_core import FMT_BYTES
    from couchbase_core.testing.signals import continue_process, stop_process
    from gcouchbase.bucket import Bucket

    value = bytes((i * 7 + 13) % 256 for i in range(VALUE_SIZE))
    keys = ["parked:%06d" % i for i in range(n)]
    bucket = Bucket("memcached://%s:%d?operation_timeout=%g" % (host, port, timeout), default_format=FMT_BYTES)
    out: Dict[str, Any] = {"mode": mode, "kind": kind, "n": n, "problem": ""}
    greenlets: List[Any] = []
    started = [0]
    try:
        # Warm every path while the server answers: the connection is open,
        # lazily built tables and caches exist before the first measurement.
        bucket.upsert_multi({k: value for k in keys[:200]})
        warm = [gevent.spawn(bucket.get, k) for k in keys[:200]] + \
               [gevent.spawn(bucket.upsert, k, value) for k in keys[:200]]
        gevent.joinall(warm, timeout=30, raise_error=True)
        del warm

        def park(key: str) -> None:
            started[0] += 1
            if kind == "get":
                bucket.get(key)
            elif kind == "upsert":
                bucket.upsert(key, value)
            else:
                gevent.event.Event().wait()

        stop_process(pid, 10, "memcached")
        out["server_state"] = process_state(pid)
        if out["server_state"] not in ("T", "t"):
            raise RuntimeError("memcached is not stopped: /proc/%d/stat says %r" % (pid, out["server_state"]))
        gc.collect()
        if mode == "tracemalloc":
            before = tracemalloc.take_snapshot()
        else:
            before_rss = rss_bytes()
        greenlets = [gevent.spawn(park, k) for k in keys]
        deadline = time.monotonic() + 60
        while started[0] < n and time.monotonic() < deadline:
            gevent.sleep(0)
        gevent.sleep(0.3)  # the loop writes out what the socket takes
        gc.collect()
        if mode == "tracemalloc":
            after = tracemalloc.take_snapshot()
            filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
            before, after = before.filter_traces(filters), after.filter_traces(filters)
            sites = _sites(before, after)
            out["bytes"] = sum(st.size for st in after.statistics("filename")) - \
                sum(st.size for st in before.statistics("filename"))
            out["sites"] = sites[:SITES_KEPT]
        else:
            out["bytes"] = rss_bytes() - before_rss
        out["started"] = started[0]
        out["parked"] = sum(1 for g in greenlets if g and not g.dead)
        if out["parked"] != n:
            out["problem"] = "%d of %d greenlets parked (the others ended: %s)" % (
                out["parked"], n, next((repr(g.exception) for g in greenlets if g.dead), "?"))
    finally:
        try:
            gevent.killall(greenlets, timeout=30)
        finally:
            continue_process(pid, 10, "memcached")
            bucket.close()
    return out


# -- the parent --------------------------------------------------------------------------

def available_modes() -> List[str]:
    """The measures this interpreter can take: PyPy has no tracemalloc
    (its ``tracemalloc`` module fails to import ``_tracemalloc``), so there
    only RSS is measured."""
    try:
        import tracemalloc  # noqa: F401
    except ImportError:
        return ["rss"]
    return list(MODES)


UNAVAILABLE_NOTE = ("tracemalloc: not available on this interpreter (%s has none); RSS only, and no "
                    "allocation sites")

class Watchdog:
    """After ``seconds``, continue the frozen memcached, kill the current
    worker and stop the server: a hung run never leaves memcached stopped."""

    def __init__(self, seconds: float, server: Any) -> None:
        self.server = server
        self.worker: Optional[subprocess.Popen] = None
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> "Watchdog":
        """Arm the timer."""
        self._timer.start()
        return self

    def _fire(self) -> None:
        self.fired = True
        proc = self.server.proc
        if proc is not None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except OSError:
                pass
        worker = self.worker
        if worker is not None and worker.poll() is None:
            worker.kill()
        self.server.stop()

    def cancel(self) -> None:
        """Disarm the timer."""
        self._timer.cancel()


def spawn_worker(watchdog: Watchdog, mode: str, kind: str, n: int, host: str, port: int, pid: int,
                 timeout: float) -> Dict[str, Any]:
    """Run one worker process and return its result (or an ``error``)."""
    cmd = [sys.executable, "-m", "bench.parked", "--worker", mode, kind, str(n), host, str(port), str(pid),
           str(timeout)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            preexec_fn=die_with_parent)
    watchdog.worker = proc
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return {"mode": mode, "kind": kind, "error": "worker timed out", "stderr": stderr[-3000:]}
    finally:
        watchdog.worker = None
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"mode": mode, "kind": kind, "error": "worker exited with status %s" % proc.returncode,
                "stderr": stderr[-3000:]}
    return json.loads(lines[-1])


def measure(n: int, kinds: List[str], timeout: float, deadline: float) -> Dict[str, Any]:
    """Every worker run against one memcached; ``{mode: {kind: result}}``."""
    from couchbase_core.testing.memcached import MemcachedServer

    srv = MemcachedServer(threads=2, memory_mb=64).start()
    watchdog = Watchdog(deadline, srv).start()
    results: Dict[str, Dict[str, Any]] = {m: {} for m in MODES}
    try:
        for mode in available_modes():
            for kind in ["baseline"] + kinds:
                if watchdog.fired or srv.proc is None:
                    results[mode][kind] = {"error": "the watchdog stopped the run after %.0f s" % deadline}
                    continue
                results[mode][kind] = spawn_worker(watchdog, mode, kind, n, srv.host, srv.port, srv.proc.pid,
                                                   timeout)
                if srv.proc is not None:  # whatever the worker did, the server runs again
                    os.kill(srv.proc.pid, signal.SIGCONT)
    finally:
        watchdog.cancel()
        if srv.proc is not None:
            try:
                os.kill(srv.proc.pid, signal.SIGCONT)
            except OSError:
                pass
        srv.stop()
    return results


def summarize(results: Dict[str, Dict[str, Any]], n: int, kinds: List[str]) -> Dict[str, Any]:
    """Per-greenlet figures, beyond the baseline, and the top sites."""
    summary: Dict[str, Any] = {}
    for kind in ["baseline"] + kinds:
        row: Dict[str, Any] = {}
        for mode in MODES:
            res = results[mode].get(kind, {})
            base = results[mode].get("baseline", {})
            if "bytes" not in res:
                row[mode] = None
                continue
            row[mode] = res["bytes"] / n
            if kind != "baseline" and "bytes" in base:
                row[mode + "_beyond"] = (res["bytes"] - base["bytes"]) / n
        if kind != "baseline":
            base_sites = {s["site"]: s["bytes"] for s in results["tracemalloc"].get("baseline", {}).get("sites", [])}
            sites = []
            for s in results["tracemalloc"].get(kind, {}).get("sites", []):
                b = base_sites.get(s["site"], 0)
                sites.append({"site": s["site"], "per_greenlet": s["bytes"] / n, "baseline_per_greenlet": b / n,
                              "beyond": (s["bytes"] - b) / n, "count_per_greenlet": s["count"] / n})
            sites.sort(key=lambda s: -s["beyond"])
            row["top_sites"] = sites[:TOP_SITES]
            row["client_code"] = sum(s["per_greenlet"] for s in sites if s["site"].startswith(CLIENT_CODE)) \
                if sites else None
        summary[kind] = row
    return summary


def _b(x: Optional[float]) -> str:
    return "-" if x is None else "{:,.0f}".format(x)


def report(summary: Dict[str, Any], results: Dict[str, Dict[str, Any]], kinds: List[str]) -> str:
    """The tables and the acceptance lines."""
    rows = []
    for kind in ["baseline"] + kinds:
        s = summary[kind]
        rows.append([LABELS[kind], _b(s["rss"]), _b(s.get("rss_beyond")), _b(s["tracemalloc"]),
                     _b(s.get("tracemalloc_beyond")), _b(s.get("client_code"))])
    lines = [markdown_table(["parked in", "RSS B/greenlet", "beyond gevent's", "tracemalloc B/greenlet",
                             "beyond gevent's", "at client lines"], rows)]
    lines.append("")
    lines.append("(at client lines: tracemalloc bytes allocated at lines of couchbase_core/ and gcouchbase/, "
                 "which includes the\ngreenlet's saved C stack when it switches out inside the client)")
    for kind in kinds:
        sites = summary[kind].get("top_sites") or []
        if not sites:
            continue
        lines += ["", "Top %d allocation sites (tracemalloc) of %s, bytes per parked greenlet:"
                  % (len(sites), LABELS[kind]), ""]
        lines.append(markdown_table(
            ["site (file:line)", LABELS[kind], "Event().wait()", "beyond", "blocks/greenlet"],
            [[s["site"], "%.0f" % s["per_greenlet"], "%.0f" % s["baseline_per_greenlet"], "%.0f" % s["beyond"],
              "%.2f" % s["count_per_greenlet"]] for s in sites]))
    lines.append("")
    modes = available_modes()
    if "tracemalloc" not in modes:
        import platform

        lines += [UNAVAILABLE_NOTE % platform.python_implementation(), ""]
    for kind in kinds:
        s = summary[kind]
        measured = [v for v in (s.get("rss_beyond"), s.get("tracemalloc_beyond")) if v is not None]
        problems = [r.get("error") or r.get("problem") for m in modes for r in (results[m].get(kind, {}),
                                                                              results[m].get("baseline", {}))]
        problems = sorted({p for p in problems if p})
        if len(measured) < len(modes) or problems:
            lines.append("%s: not measured (%s); <= 4 KB per parked greenlet beyond gevent's: FAIL"
                         % (LABELS[kind], "; ".join(problems) or "a run failed"))
            continue
        worst = max(measured)
        lines.append("%s: %s B per parked greenlet beyond gevent's (RSS %s, tracemalloc %s); "
                     "<= 4 KB per parked greenlet beyond gevent's: %s"
                     % (LABELS[kind], _b(worst), _b(s.get("rss_beyond")), _b(s.get("tracemalloc_beyond")),
                        verdict(worst <= LIMIT_BYTES)))
    for mode in MODES:
        for kind, res in results[mode].items():
            if res.get("error"):
                lines.append("!! %s/%s: %s" % (mode, kind, res["error"]))
                if res.get("stderr", "").strip():
                    lines.append(res["stderr"].rstrip())
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line (see ``--help``; ``--worker`` is for the parent only)."""
    p = argparse.ArgumentParser(prog="python -m bench.parked", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--greenlets", type=int, default=10_000, help="parked greenlets per run (default 10000)")
    p.add_argument("--ops", default="get,upsert", help="comma-separated subset of get,upsert (default both)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="operation timeout in seconds, long enough that nothing times out (default 60)")
    p.add_argument("--deadline", type=float, default=300.0,
                   help="the watchdog stops everything after this many seconds (default 300)")
    p.add_argument("--json", metavar="PATH", help="also write every figure and site to PATH")
    p.add_argument("--worker", nargs=7, metavar=("MODE", "KIND", "N", "HOST", "PORT", "PID", "TIMEOUT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.ops.split(",") if k.strip()]
    if not args.kinds or any(k not in ("get", "upsert") for k in args.kinds):
        p.error("--ops takes get and/or upsert")
    if args.greenlets < 1:
        p.error("--greenlets must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Run every worker and print the report (or, with ``--worker``, be one); 1 if a run failed."""
    args = parse_args(argv)
    if args.worker:
        mode, kind, n, host, port, pid, timeout = args.worker
        result = run_worker(mode, kind, int(n), host, int(port), int(pid), float(timeout))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    n = args.greenlets
    print("memory per parked greenlet (gcouchbase, memcached frozen with SIGSTOP)")
    print("  %s" % machine_line())
    print("  %d greenlets per run, operation timeout %g s, %d-byte values; one worker process per figure"
          % (n, args.timeout, VALUE_SIZE))
    print(flush=True)
    results = measure(n, args.kinds, args.timeout, args.deadline)
    summary = summarize(results, n, args.kinds)
    print(report(summary, results, args.kinds))
    if args.json:
        write_json(args.json, {"measurement": "parked", "machine": machine_line(), "greenlets": n,
                               "limit_bytes": LIMIT_BYTES, "summary": summary, "runs": results})
        print("\nfigures written to %s" % args.json)
    failed = any(r.get("error") or r.get("problem") for m in results.values() for r in m.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

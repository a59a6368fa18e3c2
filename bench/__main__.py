"""``python -m bench``: start a memcached, run every client in its own
process, one after another, and print the comparison.

See ``docs/performance.md`` for what is measured and why.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any, Dict, List, Optional

from bench.clients import CLIENT_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREENLETS = (1, 10, 100)
SIZES = (100, 4096)
WORKLOADS = {
    "set_get": "set-then-get: each greenlet sets its own key, then gets it back (each call is one op)",
    "mix": "90/10: random key out of 10,000 preloaded, 90% get / 10% set",
    "multi": "get_multi: 1,000 preloaded keys (100 B values) per call, one greenlet",
}
HEADLINE = {"workload": "mix", "greenlets": 100, "size": 100}
MULTI = {"workload": "multi", "greenlets": 1, "size": 100}
TARGET_RATIO = 4.0


def build_cells(quick: bool) -> List[Dict[str, Any]]:
    if quick:
        return [dict(HEADLINE), dict(MULTI)]
    cells = [{"workload": w, "greenlets": g, "size": s}
             for w in ("set_get", "mix") for s in SIZES for g in GREENLETS]
    return cells + [dict(MULTI)]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="measured time per cell (default 2)")
    p.add_argument("--warmup", type=float, default=None,
                   help="unmeasured warm-up per cell, seconds (default 0.3 on CPython, %g on PyPy, whose JIT "
                        "compiles the hot loops during the first seconds)" % PYPY_WARMUP)
    p.add_argument("--python", default=None, metavar="PATH[,PATH...]",
                   help="interpreter(s) to run the clients under (default: this one). With two or more "
                        "(e.g. .venv/bin/python,.venv-pypy/bin/python) every client runs under each, in one "
                        "run against the same memcached, and an interpreter table compares them")
    p.add_argument("--quick", action="store_true",
                   help="only the 100-greenlet 90/10 100-byte cell and get_multi")
    p.add_argument("--clients", default=",".join(CLIENT_NAMES),
                   help="comma-separated subset of: %s (default: all)" % ", ".join(CLIENT_NAMES))
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole sequence N times, clients interleaved, and report for each cell "
                        "the run with the median rate (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write the raw results to PATH")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in names if c not in CLIENT_NAMES]
    if unknown or not names:
        p.error("unknown client(s) %s; choose from %s" % (", ".join(unknown) or "(none)", ", ".join(CLIENT_NAMES)))
    args.clients = [c for c in CLIENT_NAMES if c in names]
    if args.seconds <= 0 or (args.warmup is not None and args.warmup < 0) or args.repeat < 1:
        p.error("--seconds must be > 0, --warmup >= 0 and --repeat >= 1")
    paths = [x.strip() for x in (args.python or sys.executable).split(",") if x.strip()]
    args.interpreters = []
    for path in paths:
        try:
            args.interpreters.append(describe_interpreter(path))
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            p.error("--python %s: cannot run it (%s)" % (path, exc))
    tags = [i["tag"] for i in args.interpreters]
    if len(set(tags)) != len(tags):
        p.error("--python: two interpreters of the same kind (%s); give one CPython and one PyPy" % ", ".join(tags))
    return args


PYPY_WARMUP = 3.0


def describe_interpreter(path: str) -> Dict[str, Any]:
    """What ``path`` is: implementation, version, a short tag for the
    tables (``cpython``/``pypy``) and the warm-up it needs by default."""
    code = "import platform; print(platform.python_implementation(), platform.python_version())"
    out = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    if len(out) != 2:
        raise ValueError("unexpected answer %r" % (out,))
    impl, version = out
    return {"path": path, "implementation": impl, "version": version, "tag": impl.lower(),
            "warmup": PYPY_WARMUP if impl == "PyPy" else 0.3}


# -- machine ---------------------------------------------------------------

def _dist(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info(memcached_binary: str, threads: int) -> Dict[str, Any]:
    try:
        mc = subprocess.run([memcached_binary, "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        mc = "? (%s)" % exc
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "memcached": "%s (%s, -t %d)" % (mc, memcached_binary, threads),
        "gevent": _dist("gevent"),
        "greenlet": _dist("greenlet"),
        "pymemcache": _dist("pymemcache"),
        "python-binary-memcached": _dist("python-binary-memcached"),
    }


# -- running -------------------------------------------------------------------

def run_client(client: str, host: str, port: int, cells: List[Dict[str, Any]],
               seconds: float, warmup: float, python: Optional[str] = None) -> Dict[str, Any]:
    spec = {"seconds": seconds, "warmup": warmup, "cells": cells}
    budget = len(cells) * (seconds + warmup + 15) + 120
    cmd = [python or sys.executable, "-m", "bench.worker", client, host, str(port), json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as exc:
        return {"client": client, "cells": [], "error": "worker timed out after %.0f s" % budget,
                "stderr": (exc.stderr or b"")[-4000:].decode(errors="replace")
                if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-4000:]}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"client": client, "cells": [], "returncode": proc.returncode,
                "error": "worker exited with status %d and no result" % proc.returncode,
                "stderr": proc.stderr[-4000:]}
    result = json.loads(lines[-1])
    result["returncode"] = proc.returncode
    if proc.returncode and not result.get("error"):
        result["error"] = "worker exited with status %d" % proc.returncode
    if proc.stderr.strip():
        result["stderr"] = proc.stderr[-4000:]
    return result


def merge_runs(runs: List[Dict[str, Any]], cells: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Fold the repeated runs of one client into one result: per cell, the
    run with the median rate (its latencies come along), plus every rate."""
    if len(runs) == 1:
        return runs[0]
    merged: Dict[str, Any] = {"client": runs[0]["client"], "cells": [], "runs": runs,
                              "error": next((r["error"] for r in runs if r.get("error")), None)}
    for key in ("traceback", "stderr"):
        for r in runs:
            if r.get(key):
                merged[key] = r[key]
                break
    for cell in cells:
        found = [c for c in (_find(r, cell) for r in runs) if c is not None]
        if not found:
            continue
        found.sort(key=_rate)
        pick = dict(found[(len(found) - 1) // 2])
        pick["rates"] = [_rate(c) for c in found]
        pick["errors"] = sum(c["errors"] for c in found)
        merged["cells"].append(pick)
    return merged


# -- report --------------------------------------------------------------------

def _find(result: Dict[str, Any], cell: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    for c in result.get("cells", []):
        if all(c[k] == cell[k] for k in ("workload", "greenlets", "size")):
            return c
    return None


def _rate(c: Optional[Dict[str, Any]]) -> Optional[float]:
    if c is None:
        return None
    return c["keys_per_s"] if c["workload"] == "multi" else c["ops_per_s"]


def _size(n: int) -> str:
    return "%d B" % n if n < 1024 else "%d KiB" % (n // 1024)


def print_tables(results: Dict[str, Dict[str, Any]], cells: List[Dict[str, Any]], base_name: str = "gcouchbase") -> None:
    base = results.get(base_name)
    repeated = any(len(c.get("rates", ())) > 1 for r in results.values() for c in r.get("cells", []))
    for workload, title in WORKLOADS.items():
        rows = [c for c in cells if c["workload"] == workload]
        if not rows:
            continue
        unit = "keys/s" if workload == "multi" else "ops/s"
        print()
        print("== %s" % title)
        print(("%9s  %-6s  %-18s %12s %9s %9s  %-26s%s" % ("greenlets", "value", "client", unit, "p50 µs",
                                                            "p99 µs", "vs " + base_name,
                                                            "  runs min..max" if repeated else "")).rstrip())
        for cell in rows:
            first = True
            ref = _rate(_find(base, cell)) if base else None
            for name, res in results.items():
                lead = ("%9d  %-6s" % (cell["greenlets"], _size(cell["size"]))) if first else " " * 17
                first = False
                c = _find(res, cell)
                if c is None:
                    print("%s  %-18s %12s" % (lead, name, "(failed)"))
                    continue
                rate = _rate(c)
                ratio = "%.2fx" % (rate / ref) if ref and rate is not None else "-"
                if name == base_name:
                    ratio = "1.00x" if ref else "-"
                note = ""
                if repeated and c.get("rates"):
                    note += "  %s..%s" % ("{:,.0f}".format(min(c["rates"])), "{:,.0f}".format(max(c["rates"])))
                if c["errors"]:
                    note += "   !! %d wrong/missing values" % c["errors"]
                label = ratio if name == base_name else "%s %s" % (name, ratio)
                print(("%s  %-18s %12s %9.0f %9.0f  %-26s%s" % (lead, name, "{:,.0f}".format(rate), c["p50_us"],
                                                               c["p99_us"], label, note)).rstrip())
        if workload == "multi":
            print("%28s(latency is per get_multi call of 1,000 keys)" % "")


def headline(results: Dict[str, Dict[str, Any]], base_name: str = "gcouchbase",
             peer_name: str = "pymemcache") -> Dict[str, Optional[float]]:
    """Print the gcouchbase / peer lines; return gcouchbase / pymemcache for the two checks."""
    base = results.get(base_name)
    ratios: Dict[str, Optional[float]] = {"mix": None, "multi": None}
    print()
    print("== headline")
    for cell, label in ((HEADLINE, "90/10, 100 greenlets, 100 B values, ops/s"),
                        (MULTI, "get_multi of 1,000 keys, keys/s")):
        key = cell["workload"]
        ref = _rate(_find(base, cell)) if base else None
        if ref is None:
            print("  %s: gcouchbase not measured" % label)
            continue
        print("  %s: %s %s" % (label, base_name, "{:,.0f}".format(ref)))
        for name, res in results.items():
            if name == base_name:
                continue
            rate = _rate(_find(res, cell))
            if rate:
                print("    %s / %-18s = %.2fx" % (base_name, name, ref / rate))
                if name == peer_name:
                    ratios[key] = ref / rate
    return ratios


def print_interpreters(results: Dict[str, Dict[str, Any]], cells: List[Dict[str, Any]],
                       clients: List[str], interpreters: List[Dict[str, Any]]) -> None:
    """One row per cell and client: the rate under each interpreter, and
    each later interpreter's rate over the first's."""
    first = interpreters[0]["tag"]
    heads = ["%s %s" % (i["implementation"], i["version"]) for i in interpreters]
    print()
    print("== interpreters (ops/s; keys/s for get_multi)")
    print(("%-10s %9s  %-6s  %-11s" % ("workload", "greenlets", "value", "client")
           + "".join(" %16s" % h for h in heads)
           + "".join(" %16s" % ("%s/%s" % (i["tag"], first)) for i in interpreters[1:])))
    for cell in cells:
        for client in clients:
            rates = [_rate(_find(results.get("%s@%s" % (client, i["tag"]), {}), cell)) for i in interpreters]
            ratios = ["%.2fx" % (r / rates[0]) if r and rates[0] else "-" for r in rates[1:]]
            print(("%-10s %9d  %-6s  %-11s" % (cell["workload"], cell["greenlets"], _size(cell["size"]), client)
                   + "".join(" %16s" % ("{:,.0f}".format(r) if r else "(failed)") for r in rates)
                   + "".join(" %16s" % x for x in ratios)))


def checks(ratios: Dict[str, Optional[float]]) -> None:
    print()
    print("== acceptance")
    lines = [
        ("mix", TARGET_RATIO, "gcouchbase >= %.0fx pymemcache ops/s at 100 greenlets (90/10, 100 B)" % TARGET_RATIO),
        ("multi", 1.0, "gcouchbase get_multi keys/s >= pymemcache get_many keys/s"),
    ]
    for key, need, text in lines:
        r = ratios[key]
        if r is None:
            print("  SKIP  %s (needs gcouchbase and pymemcache results)" % text)
        else:
            print("  %s  %s: measured %.2fx" % ("PASS" if r >= need else "FAIL", text, r))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    cells = build_cells(args.quick)
    from couchbase_core.testing.memcached import MemcachedServer

    threads = 4
    with MemcachedServer(threads=threads, memory_mb=256) as srv:
        meta = machine_info(srv.binary, threads)
        print("gcouchbase benchmark, %s" % meta["date"])
        print("  machine:   %d CPUs (%d usable), %s; %s" % (meta["cpus"], meta["cpus_usable"], meta["cpu_model"],
                                                           meta["platform"]))
        print("  python:    %s   gevent %s   greenlet %s" % (meta["python"], meta["gevent"], meta["greenlet"]))
        print("  memcached: %s on %s (shares the CPUs with the client)" % (meta["memcached"], srv.address))
        print("  peers:     pymemcache %s, python-binary-memcached %s" % (meta["pymemcache"],
                                                                        meta["python-binary-memcached"]))
        interps = args.interpreters
        multi = len(interps) > 1
        for interp in interps:
            interp["warmup_s"] = args.warmup if args.warmup is not None else interp["warmup"]
            print("  client interpreter: %s %s (%s), %.1f s warm-up per cell"
                  % (interp["implementation"], interp["version"], interp["path"], interp["warmup_s"]))
        print("  cells:     %d per client, %.1f s measured each%s"
              % (len(cells), args.seconds,
                 ", %d interleaved runs (median shown)" % args.repeat if args.repeat > 1 else ""))

        def label(client: str, interp: Dict[str, Any]) -> str:
            return "%s@%s" % (client, interp["tag"]) if multi else client

        runs: Dict[str, List[Dict[str, Any]]] = {label(c, i): [] for i in interps for c in args.clients}
        for round_no in range(args.repeat):
            for interp in interps:
                for client in args.clients:
                    name = label(client, interp)
                    tag = " (run %d/%d)" % (round_no + 1, args.repeat) if args.repeat > 1 else ""
                    print("  running %-18s%s ..." % (name, tag), end=" ", flush=True)
                    res = run_client(client, srv.host, srv.port, cells, args.seconds, interp["warmup_s"],
                                     python=interp["path"])
                    res["interpreter"] = {k: interp[k] for k in ("path", "implementation", "version")}
                    runs[name].append(res)
                    print("crashed" if res.get("error") else "done", flush=True)
        results = {c: merge_runs(r, cells) for c, r in runs.items()}
        meta["interpreters"] = interps
    base_name = label("gcouchbase", interps[0])
    print_tables(results, cells, base_name)
    if multi:
        print_interpreters(results, cells, args.clients, interps)
    ratios = headline(results, base_name, label("pymemcache", interps[0]))
    checks(ratios)
    crashed = {k: v for k, v in results.items() if v.get("error")}
    for name, res in crashed.items():
        print()
        print("!! %s crashed: %s" % (name, res["error"]))
        for part in ("traceback", "stderr"):
            if res.get(part):
                print(res[part].rstrip())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "seconds": args.seconds, "warmup": args.warmup, "results": results}, f,
                      indent=2)
        print()
        print("raw results written to %s" % args.json)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())

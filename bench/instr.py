"""CPU instructions per operation, counted by valgrind's callgrind.

Wall-clock rates move with whatever else the machine does; the number of
instructions a client executes for one operation does not (callgrind counts
them in user space, whatever the load). This measurement runs a client for
``N1`` and for ``N2`` rounds under callgrind and divides the difference of the
two totals by the operations in between, so start-up, imports and
connecting cancel out.

Clients are those of the shared harness (``../shared/bench-peers``: the
``gcouchbase`` adapter, and ``raw``, its one-socket pure-Python
multiplexer), so the work per operation includes what the harness's adapter
does with each result. Workloads: ``mix`` (C greenlets, 90 % get / 10 %
set of 100-byte values, the sets drawn at random as in the harness) and
``mget`` (``get_multi`` of 1,000 keys; the unit is one key).

    .venv/bin/python -m bench.instr                      # both clients, both workloads
    .venv/bin/python -m bench.instr --kinds gcouchbase --workloads mget

Kernel time (syscalls) is not counted, so the ratio of instructions is an
upper bound of how far apart two clients are in the harness, not a forecast
of its ratio. Needs valgrind (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

from couchbase_core.testing.memcached import MemcachedServer

__all__ = ["count", "main"]

DEFAULT_PEERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                             "bench-peers")

#: (N1, N2) rounds per workload: a round is one get/set per greenlet (mix)
#: or one 1,000-key get_multi (mget).
ROUNDS = {"mix": (20, 120), "mget": (2, 12)}


def _child(peers: str, kind: str, workload: str, rounds: int, concurrency: int, port: int) -> None:
    """Run one client (inside callgrind): preload, then ``rounds`` rounds."""
    sys.path.insert(0, peers)
    import gevent
    from gevent import monkey

    monkey.patch_all()
    module = __import__("kinds.gcouchbase_bucket" if kind == "gcouchbase" else "kinds.raw_mux",
                        fromlist=["connect"])
    client = module.connect("memcached://127.0.0.1:%d" % port, concurrency)
    keys: List = ["key:%d" % i for i in range(1000)]
    if kind == "raw":
        keys = [k.encode() for k in keys]
    value = b"x" * 100
    for key in keys:
        client.set(key, value)
    if workload == "mget":
        for _ in range(rounds):
            got = client.get_multi(keys)
        assert len(got) == len(keys)
    else:
        # As the harness: one set in ten, drawn at random (seeded), so the
        # sets of different greenlets fall anywhere among the gets.
        draw = random.Random(1).random
        plan = [draw() < 0.1 for _ in range(rounds * concurrency)]

        def worker(w: int) -> None:
            for i, is_set in enumerate(plan[w::concurrency]):
                key = keys[(w * 7 + i) % len(keys)]
                if is_set:
                    client.set(key, value)
                else:
                    client.get(key)

        gevent.joinall([gevent.spawn(worker, w) for w in range(concurrency)])
    client.close()


def _total(peers: str, kind: str, workload: str, rounds: int, concurrency: int, port: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, sys.executable, "-m", "bench.instr",
               "--child", kind, workload, str(rounds), str(concurrency), str(port), "--peers", peers]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode or not found:
            raise RuntimeError("callgrind run failed (%s):\n%s" % (" ".join(cmd), proc.stderr[-2000:]))
        return int(found.group(1))


def count(peers: str, kind: str, workload: str, concurrency: int, port: int) -> float:
    """Instructions per operation (per key for ``mget``)."""
    n1, n2 = ROUNDS[workload]
    a = _total(peers, kind, workload, n1, concurrency, port)
    b = _total(peers, kind, workload, n2, concurrency, port)
    units = (n2 - n1) * (1000 if workload == "mget" else concurrency)
    return (b - a) / units


def main(argv: List[str]) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.instr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="raw,gcouchbase")
    parser.add_argument("--workloads", default="mix,mget")
    parser.add_argument("--conc", type=int, default=100, help="greenlets for mix (default 100)")
    parser.add_argument("--peers", default=DEFAULT_PEERS, help="the shared harness folder")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, workload, rounds, conc, port = args.child
        _child(args.peers, kind, workload, int(rounds), int(conc), int(port))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    if not os.path.isdir(os.path.join(args.peers, "kinds")):
        print("the shared harness is not at %s (give --peers)" % args.peers, file=sys.stderr)
        return 2
    server = MemcachedServer(memory_mb=256, threads=1)
    server.start()
    try:
        results: Dict[str, Dict[str, float]] = {}
        for workload in args.workloads.split(","):
            for kind in args.kinds.split(","):
                results.setdefault(workload, {})[kind] = count(args.peers, kind, workload, args.conc, server.port)
                unit = "key" if workload == "mget" else "op"
                print("%-5s %-11s %8.0f instructions/%s" % (workload, kind, results[workload][kind], unit),
                      flush=True)
        for workload, row in results.items():
            if "raw" in row and "gcouchbase" in row:
                print("%-5s gcouchbase/raw instructions: %.2fx" % (workload, row["gcouchbase"] / row["raw"]))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

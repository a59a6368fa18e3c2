"""The timed loops, run inside a worker process under gevent.

Every cell spawns its greenlets, lets them run for a warm-up (connections
open, caches fill, nothing is counted), then counts for ``seconds``. Each
operation is timed with ``time.perf_counter``; the latencies kept for the
percentiles are a reservoir sample of at most ``SAMPLE_CAP`` per cell, so
memory stays bounded however fast a client is.
"""

from __future__ import annotations

import os
import random
from time import perf_counter
from typing import Any, Dict, List, Optional, Sequence

import gevent

from bench.clients import Adapter, Ops

SAMPLE_CAP = 200_000
KEYSPACE = 10_000      # keys preloaded for the 90/10 mix
MULTI_KEYS = 1_000     # keys per get_multi call
MULTI_SIZE = 100       # value size for get_multi
SET_RATIO = 0.10
PRELOAD_GREENLETS = 50


def value_of(size: int) -> bytes:
    """The value every cell of that size writes and expects to read back:
    random bytes (the same in every process), so nothing compresses."""
    rng = random.Random(size)
    return bytes(rng.getrandbits(8) for _ in range(size))


def mix_keys(size: int) -> List[str]:
    return ["mix:%d:%05d" % (size, i) for i in range(KEYSPACE)]


def multi_keys() -> List[str]:
    return ["multi:%04d" % i for i in range(MULTI_KEYS)]


class Cell:
    """Shared state of one measured cell."""

    __slots__ = ("recording", "stopped", "count", "samples", "bad", "error")

    def __init__(self) -> None:
        self.recording = False
        self.stopped = False
        self.count = 0
        self.samples: List[float] = []
        self.bad = 0
        self.error: Optional[BaseException] = None

    def guard(self, target: Any, *args: Any) -> None:
        """Run a loop; the first exception stops the cell and is kept for
        the driver to raise (rather than printed by the hub)."""
        try:
            target(self, *args)
        except Exception as exc:  # noqa: BLE001 - re-raised by _run
            if self.error is None:
                self.error = exc
            self.stopped = True

    def note(self, dt: float) -> None:
        n = self.count
        self.count = n + 1
        if n < SAMPLE_CAP:
            self.samples.append(dt)
        else:
            j = random.randrange(n + 1)
            if j < SAMPLE_CAP:
                self.samples[j] = dt


# -- the per-greenlet loops ---------------------------------------------

def _set_then_get(cell: Cell, ops: Ops, key: str, value: bytes) -> None:
    get, put = ops[0], ops[1]
    clock = perf_counter
    while not cell.stopped:
        t0 = clock()
        put(key, value)
        t1 = clock()
        got = get(key)
        t2 = clock()
        if cell.recording:
            cell.note(t1 - t0)
            cell.note(t2 - t1)
        if got != value:
            cell.bad += 1


def _mix(cell: Cell, ops: Ops, keys: Sequence[str], value: bytes) -> None:
    get, put = ops[0], ops[1]
    clock = perf_counter
    rnd = random.random
    nkeys = len(keys)
    while not cell.stopped:
        key = keys[int(rnd() * nkeys)]
        if rnd() < SET_RATIO:
            t0 = clock()
            put(key, value)
            dt = clock() - t0
            ok = True
        else:
            t0 = clock()
            got = get(key)
            dt = clock() - t0
            ok = got == value
        if cell.recording:
            cell.note(dt)
        if not ok:
            cell.bad += 1


def _multi(cell: Cell, ops: Ops, keys: List[str], _value: bytes) -> None:
    get_multi = ops[2]
    clock = perf_counter
    want = len(keys)
    while not cell.stopped:
        t0 = clock()
        got = get_multi(keys)
        dt = clock() - t0
        if cell.recording:
            cell.note(dt)
        if len(got) != want:
            cell.bad += 1


# -- driver ----------------------------------------------------------------

def _percentile(sorted_samples: List[float], q: float) -> float:
    if not sorted_samples:
        return float("nan")
    i = min(len(sorted_samples) - 1, int(round(q * (len(sorted_samples) - 1))))
    return sorted_samples[i]


def _run(target: Any, args: List[tuple], seconds: float, warmup: float) -> Dict[str, Any]:
    cell = Cell()
    greenlets = [gevent.spawn(cell.guard, target, *a) for a in args]

    def check() -> None:
        if cell.error is not None:
            cell.stopped = True
            gevent.joinall(greenlets, timeout=5)
            raise cell.error

    gevent.sleep(warmup)
    check()
    cell.recording = True
    start = perf_counter()
    gevent.sleep(seconds)
    elapsed = perf_counter() - start
    cell.recording = False
    cell.stopped = True
    gevent.joinall(greenlets, timeout=max(30.0, seconds * 5))
    check()
    stuck = sum(1 for g in greenlets if not g.dead)
    if stuck:
        gevent.killall(greenlets, timeout=5)
        raise RuntimeError("%d greenlet(s) still inside an operation 30 s after the cell ended" % stuck)
    samples = sorted(cell.samples)
    return {
        "ops": cell.count,
        "elapsed": elapsed,
        "ops_per_s": cell.count / elapsed,
        "p50_us": _percentile(samples, 0.50) * 1e6,
        "p99_us": _percentile(samples, 0.99) * 1e6,
        "samples": len(samples),
        "errors": cell.bad,
    }


def preload(adapter: Adapter, keys: Sequence[str], value: bytes) -> None:
    """Store ``value`` under every key with the client under test (so each
    client reads back values stored with its own flags), from a few
    greenlets at once. Not timed."""
    ops = adapter.ops(PRELOAD_GREENLETS)
    cell = Cell()

    def store(cell: Cell, i: int) -> None:
        put = ops[i][1]
        for key in keys[i::PRELOAD_GREENLETS]:
            if cell.stopped:
                return
            put(key, value)

    gevent.joinall([gevent.spawn(cell.guard, store, i) for i in range(PRELOAD_GREENLETS)])
    adapter.release()
    if cell.error is not None:
        raise cell.error


def run_cell(adapter: Adapter, spec: Dict[str, Any], seconds: float, warmup: float,
             preloaded: set) -> Dict[str, Any]:
    """Run one cell, ``spec`` being ``{"workload", "greenlets", "size"}``."""
    workload, n, size = spec["workload"], spec["greenlets"], spec["size"]
    value = value_of(size)
    if workload == "mix":
        keys = mix_keys(size)
        if ("mix", size) not in preloaded:
            preload(adapter, keys, value)
            preloaded.add(("mix", size))
        ops = adapter.ops(n)
        result = _run(_mix, [(ops[i], keys, value) for i in range(n)], seconds, warmup)
    elif workload == "set_get":
        tag = "%d.%d" % (os.getpid(), n)
        ops = adapter.ops(n)
        result = _run(_set_then_get, [(ops[i], "sg:%d:%s:%d" % (size, tag, i), value) for i in range(n)],
                      seconds, warmup)
    elif workload == "multi":
        keys = multi_keys()
        if ("multi", size) not in preloaded:
            preload(adapter, keys, value)
            preloaded.add(("multi", size))
        ops = adapter.ops(n)
        result = _run(_multi, [(ops[i], keys, value) for i in range(n)], seconds, warmup)
        # Outside the clock: do the values really come back intact?
        got = adapter.multi_values(ops[0], keys)
        result["errors"] += sum(1 for k in keys if got.get(k) != value)
        result["keys_per_s"] = result["ops_per_s"] * len(keys)
    else:
        raise ValueError("unknown workload %r" % (workload,))
    adapter.release()
    result.update(spec)
    return result

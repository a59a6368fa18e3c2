"""Small helpers shared by the extra measurements (``bench.stall``,
``bench.parked``, ``bench.rows``): markdown tables, percentiles, the JSON
dump, a one-line description of the machine, and a ``preexec_fn`` that makes
a child process die with its parent."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import signal
import sys
from typing import Any, Dict, Sequence

__all__ = ["markdown_table", "percentile", "write_json", "machine_line", "die_with_parent", "verdict",
           "child_env"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; every column after the first is right-aligned
    (they hold numbers)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(values):
            out.append(v.ljust(widths[i]) if i == 0 else v.rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "| " + " | ".join(("-" * w if i == 0 else "-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |"
    return "\n".join([line(list(headers)), sep] + [line(r) for r in cells])


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by nearest rank; 0.0 for
    an empty sequence."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    """``PASS`` or ``FAIL``."""
    return "PASS" if ok else "FAIL"


def write_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON."""
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def machine_line() -> str:
    """Date, CPUs, interpreter and gevent/greenlet versions, on one line."""
    from importlib.metadata import PackageNotFoundError, version

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "%s; %d CPUs (%d usable); %s %s; gevent %s, greenlet %s" % (
        now, os.cpu_count() or 0, usable, platform.python_implementation(), platform.python_version(),
        dist("gevent"), dist("greenlet"))


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for ``subprocess``: on Linux the child gets SIGKILL
    when the process that started it dies, so a killed benchmark leaves no
    server or worker behind."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def child_env() -> Dict[str, str]:
    """The environment for a ``python -m bench.*`` child: this checkout
    first on ``PYTHONPATH``."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


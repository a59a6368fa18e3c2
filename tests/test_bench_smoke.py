"""The three extra measurements of ``bench/`` (stall, parked, rows) run end
to end in a tiny configuration and produce their tables and JSON.

Each one runs as the user would run it, ``python -m bench.X ... --json
PATH``, in a child process with a generous time limit. Only behaviour is
checked (it completes, the table and acceptance lines are printed, the
figures are present and sane); never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Tuple

import pytest

from bench.parked import available_modes
from tests.conftest import _ensure_memcached

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(module: str, args: List[str], tmp_path: Any) -> Tuple[str, Dict[str, Any]]:
    """Run ``python -m bench.<module> ARGS --json FILE``; its stdout and the JSON."""
    out = tmp_path / ("%s.json" % module)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bench.%s" % module] + args + ["--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, "exit %d\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
    with open(out) as f:
        return proc.stdout, json.load(f)


@pytest.fixture(autouse=True)
def _memcached() -> None:
    _ensure_memcached()


@pytest.mark.timeout(200)
def test_stall_runs_and_reports_every_call(tmp_path):
    stdout, data = run_bench("stall", ["--keys", "200"], tmp_path)
    assert "| operation" in stdout and "max gap ms" in stdout
    rows = data["rows"]
    assert [r["op"] for r in rows] == ["idle (heartbeat only)", "upsert_multi", "get_multi", "remove_multi"]
    for r in rows:
        assert r["problem"] == ""
        assert r["seconds"] > 0 and r["heartbeats"] >= 1
        assert r["max_gap_ms"] >= r["p99_gap_ms"] > 0
        assert 0 <= r["gaps_over_threshold"] <= r["heartbeats"]
    for op in ("upsert_multi", "get_multi", "remove_multi"):
        assert any(line.startswith(op) and ("max gap <= 20 ms: PASS" in line or "max gap <= 20 ms: FAIL" in line)
                   for line in stdout.splitlines())


@pytest.mark.timeout(200)
def test_parked_measures_parked_greenlets_against_a_frozen_server(tmp_path):
    n = 100
    stdout, data = run_bench("parked", ["--greenlets", str(n), "--ops", "get"], tmp_path)
    assert "| parked in" in stdout
    assert "per parked greenlet beyond gevent's: " in stdout
    modes = available_modes()
    for mode in modes:
        for kind in ("baseline", "get"):
            run = data["runs"][mode][kind]
            assert not run.get("error") and run["problem"] == ""
            # every greenlet started and was still waiting, with memcached stopped
            assert run["started"] == n and run["parked"] == n and run["server_state"] in ("T", "t")
    if "tracemalloc" not in modes:  # PyPy: RSS only, and the report says so
        assert data["runs"]["tracemalloc"] == {} and "tracemalloc: not available on this interpreter" in stdout
        return
    assert "Top" in stdout and data["runs"]["tracemalloc"]["get"]["bytes"] > 0
    sites = data["summary"]["get"]["top_sites"]
    assert sites and all(":" in s["site"] for s in sites)


@pytest.mark.timeout(200)
def test_rows_streams_every_row_through_client_and_baseline(tmp_path):
    stdout, data = run_bench("rows", ["--rows", "1000", "--repeat", "1"], tmp_path)
    assert "| rows from" in stdout and "x urllib + json.loads" in stdout
    assert data["problems"] == []
    for name in ("view/gcouchbase", "view/baseline", "n1ql/gcouchbase", "n1ql/baseline"):
        assert len(data["runs"][name]) == 1
        assert data["summary"][name]["median"] > 0
    assert data["server"]["rows"] == 1000 and data["server"]["view_bytes"] > 1000


@pytest.mark.timeout(200)
def test_rows_can_take_the_rows_from_the_emulator_engines(tmp_path):
    stdout, data = run_bench("rows", ["--rows", "300", "--repeat", "1", "--emulator"], tmp_path)
    assert "emulator's own view and N1QL engines" in stdout
    assert data["problems"] == []
    assert all(data["summary"][name]["median"] > 0 for name in data["summary"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["gcouchbase", "raw"])
@pytest.mark.parametrize("workload", ["mix", "mget"])
def test_instr_child_runs_each_client_and_workload(kind, workload):
    # The callgrind runs themselves take minutes (python -m bench.instr);
    # here the measured program runs once without valgrind, so a broken
    # adapter or workload shows up in the suite.
    from bench.instr import DEFAULT_PEERS
    from couchbase_core.testing.memcached import MemcachedServer

    if not os.path.isdir(os.path.join(DEFAULT_PEERS, "kinds")):
        pytest.skip("the shared harness (../shared/bench-peers) is not next to this checkout")
    server = MemcachedServer(memory_mb=64, threads=1)
    server.start()
    try:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, "-m", "bench.instr", "--child", kind, workload, "2", "5",
                               str(server.port)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop()

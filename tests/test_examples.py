"""The examples in ``examples/`` run, end to end, against the emulator.

* ``examples/flask_api``: the catalogue API is served by
  ``gunicorn -k gevent -w 2`` in each of its forms: a Bucket per worker
  (``per_worker:app``), opened in ``post_fork`` or lazily by the first
  request, and one Bucket made in the master before the fork
  (``--preload preloaded:app``). Each is driven over
  HTTP (single and batch writes, reads, a N1QL query, a view, deletes) and
  every document read back is compared with what was written.
* ``examples/locust``: Locust runs the user class headless for a few
  seconds; its statistics must show requests of every kind and no failure.
  A second run, whose keys the client refuses, must report every request
  as a failure (the event hook reports failures, not just successes).

Everything runs as subprocesses with bounded lifetimes (gunicorn under
``timeout`` when available, each process group killed in a ``finally``), on
free loopback ports (gunicorn inherits a socket already listening), and
waits for readiness by polling with a deadline.
Nothing here imports ``locust`` (it monkey-patches the importing process).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import pytest

from couchbase_core.mock import MockCluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLASK_API = os.path.join(ROOT, "examples", "flask_api")
LOCUSTFILE = os.path.join(ROOT, "examples", "locust", "locustfile.py")
ADMIN = ("Administrator", "password")
#: How long any server started here may live, whatever happens to the test.
LIFETIME = 300


def _require(*modules: str) -> None:
    """Skip unless every module is installed (without importing any)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip("%s is not installed (pip install -e '.[examples]')" % name)


def _listener() -> socket.socket:
    """A listening socket on a free loopback port, inheritable: gunicorn
    gets it as ``fd://N``, so no other process can take the port between
    choosing it and binding it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    s.set_inheritable(True)
    return s


def _bounded(argv: List[str]) -> List[str]:
    """``argv`` under coreutils' ``timeout``, when there is one: the process
    ends by itself even if this test process dies without cleaning up."""
    timeout = shutil.which("timeout")
    return [timeout, "-k", "5", str(LIFETIME)] + argv if timeout else argv


def _stop_group(proc: "subprocess.Popen[bytes]") -> None:
    """End the process group led by ``proc`` (started with a new session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _env(**extra: str) -> Dict[str, str]:
    """The environment for an example: this tree's code first."""
    paths = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **extra)


@pytest.fixture(scope="module")
def cluster():
    """The emulator (one node, bucket ``default``), prepared for the catalogue
    by the example's own ``catalog.py prepare``."""
    _require("flask")
    with MockCluster() as c:
        proc = subprocess.run([sys.executable, "catalog.py", "prepare"], cwd=FLASK_API,
                              env=_env(**_catalog_settings(c)), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "prepared default" in proc.stdout
        yield c


def _catalog_settings(cluster: MockCluster) -> Dict[str, str]:
    return {"CATALOG_CONNSTR": cluster.connstr_for("default", operation_timeout=30, n1ql_timeout=60,
                                                   views_timeout=60),
            "CATALOG_USERNAME": ADMIN[0], "CATALOG_PASSWORD": ADMIN[1]}


# ---------------------------------------------------------------------------
# the Flask API under gunicorn


class Api:
    """A small JSON client for the catalogue API."""

    def __init__(self, port: int) -> None:
        self.base = "http://127.0.0.1:%d" % port

    def call(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """``(status, decoded JSON body)`` of one request."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())


def _wait_until_serving(proc: "subprocess.Popen[bytes]", api: Api, log_path: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail("gunicorn exited (%s):\n%s" % (proc.returncode, open(log_path).read()))
        try:
            if api.call("GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("gunicorn did not answer within 90 s:\n" + open(log_path).read())
        time.sleep(0.2)


def _gunicorn_argv(fd: int, pidfile: str, *app_args: str) -> List[str]:
    argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "2", "-b", "fd://%d" % fd,
            "--pid", pidfile, "--timeout", "120", "--graceful-timeout", "5"]
    from gunicorn.config import KNOWN_SETTINGS  # a plain import: gunicorn patches nothing

    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn 25+: one per user by default, shared by all runs
    return argv + list(app_args)


VARIANTS = {
    # a Bucket per worker, opened in post_fork
    "per_worker": ["-c", "per_worker_conf.py", "per_worker:app"],
    # a Bucket per worker, opened by the first request (no post_fork hook)
    "per_worker_lazy": ["per_worker:app"],
    # one Bucket made in the master, before the fork
    "preloaded": ["--preload", "preloaded:app"],
}


def _products(variant: str) -> Dict[str, Dict[str, Any]]:
    categories = ["%s-books" % variant, "%s-tools" % variant, "%s-toys" % variant]
    return {"%s:p%03d" % (variant, i): {"name": "product %d (%s)" % (i, variant), "category": categories[i % 3],
                                        "price": round(i * 1.25, 2)} for i in range(90)}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_flask_api_under_gunicorn_gevent(cluster, variant, tmp_path):
    """Writes, reads, a N1QL query, a view and deletes through the API, two
    gevent workers; every document read back is the one written."""
    _require("gunicorn", "flask")
    log_path = str(tmp_path / "gunicorn.log")
    pidfile = str(tmp_path / "gunicorn.pid")
    log = open(log_path, "wb")
    with _listener() as listener:
        api = Api(listener.getsockname()[1])
        proc = subprocess.Popen(_bounded(_gunicorn_argv(listener.fileno(), pidfile, *VARIANTS[variant])),
                                cwd=FLASK_API, env=_env(**_catalog_settings(cluster)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(listener.fileno(),))
    try:
        _wait_until_serving(proc, api, log_path)
        products = _products(variant)
        singles = dict(list(products.items())[:45])
        batch = dict(list(products.items())[45:])

        # writes: one by one from 8 concurrent clients, then one batch
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda kv: api.call("PUT", "/products/" + kv[0], kv[1]), singles.items()))
        assert all(status == 200 for status, _ in answers), answers
        assert sorted(body["id"] for _, body in answers) == sorted(singles)
        status, body = api.call("POST", "/batch/upsert", {"products": batch})
        assert status == 200 and body["stored"] == sorted(batch), body

        # every document read back, one by one (each answered by either worker) ...
        with ThreadPoolExecutor(8) as pool:
            reads = list(pool.map(lambda key: (key, api.call("GET", "/products/" + key)), sorted(products) * 2))
        wrong = [(key, answer) for key, answer in reads
                 if answer[0] != 200 or answer[1]["id"] != key or answer[1]["product"] != products[key]]
        assert not wrong, wrong[:5]
        # ... and in one batch, with a missing id
        status, body = api.call("POST", "/batch/get", {"ids": sorted(products) + ["%s:missing" % variant]})
        assert status == 200
        assert body["products"] == dict(products, **{"%s:missing" % variant: None})

        # N1QL (request_plus) through the API: each category's products, by id
        for category in sorted({p["category"] for p in products.values()}):
            status, body = api.call("GET", "/categories/%s/products" % category)
            assert status == 200, body
            expected = [dict(products[k], id=k) for k in sorted(products) if products[k]["category"] == category]
            assert body["products"] == expected

        # a view (reduce _count, grouped by category, stale=false)
        status, body = api.call("GET", "/categories")
        assert status == 200, body
        mine = {cat: n for cat, n in body["categories"].items() if cat.startswith(variant + "-")}
        assert mine == {"%s-books" % variant: 30, "%s-tools" % variant: 30, "%s-toys" % variant: 30}

        # deletes, and what the API says about bad input
        gone = sorted(products)[0]
        assert api.call("DELETE", "/products/" + gone) == (200, {"id": gone, "deleted": True})
        assert api.call("GET", "/products/" + gone)[0] == 404
        assert api.call("DELETE", "/products/" + gone)[0] == 404
        assert api.call("PUT", "/products/%s:bad" % variant, b"not json")[0] == 400
        assert api.call("PUT", "/products/%s:bad" % variant, {"name": "x", "category": "y", "price": -1})[0] == 400
        assert api.call("GET", "/products/%s:bad" % variant)[0] == 404

        # where each worker's bucket was made
        master = int(open(pidfile).read().strip())
        with ThreadPoolExecutor(4) as pool:
            health = list(pool.map(lambda _: api.call("GET", "/health")[1], range(20)))
        for answer in health:
            assert answer["pid"] != master
            if variant == "preloaded":
                assert answer["bucket_opened_by"] == master, answer  # before the fork, used after it
            elif variant == "per_worker":
                assert answer["bucket_opened_by"] == answer["pid"], answer  # by the worker itself
            else:  # by the worker itself, if it has served a request that needed it
                assert answer["bucket_opened_by"] in (None, answer["pid"]), answer
        assert proc.poll() is None, open(log_path).read()
    finally:
        _stop_group(proc)
        log.close()


# ---------------------------------------------------------------------------
# Locust


def _run_locust(cluster: MockCluster, tmp_path: Any, *extra: str) -> Tuple[int, Dict[str, Dict[str, str]], str]:
    """Run the locustfile headless for a few seconds; returns its exit code,
    its statistics (CSV rows by name) and its output."""
    prefix = str(tmp_path / "stats")
    argv = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless", "-u", "10", "-r", "10",
            "--run-time", "5s", "--stop-timeout", "5", "--host", cluster.connstr_for("default", operation_timeout=30),
            "--cb-username", ADMIN[0], "--cb-password", ADMIN[1], "--csv", prefix, "--only-summary"] + list(extra)
    out_path = tmp_path / "locust.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=str(tmp_path), env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(180)
        finally:
            _stop_group(proc)
    output = out_path.read_text()
    stats_path = prefix + "_stats.csv"
    assert os.path.exists(stats_path), output
    with open(stats_path, newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    return proc.returncode, rows, output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_locust_drives_the_cluster_with_no_failure(cluster, tmp_path):
    """10 users for 5 s: requests of every kind, none failed (every read
    matched what its user wrote)."""
    _require("locust")
    code, rows, output = _run_locust(cluster, tmp_path)
    assert code == 0, output
    for name in ("upsert", "get", "get_multi", "counter"):
        assert name in rows, (sorted(rows), output)
        assert rows[name]["Type"] == "couchbase"
        assert int(rows[name]["Request Count"]) > 0, rows[name]
        assert int(rows[name]["Failure Count"]) == 0, (rows[name], output)
    assert int(rows["Aggregated"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_locust_reports_failures(cluster, tmp_path):
    """Keys longer than 250 bytes are refused by the client: every request
    is reported to Locust as a failure, and Locust exits with an error."""
    _require("locust")
    code, rows, output = _run_locust(cluster, tmp_path, "--cb-prefix", "k" * 300)
    assert code != 0, output
    aggregated = rows["Aggregated"]
    assert int(aggregated["Request Count"]) > 0, output
    assert aggregated["Failure Count"] == aggregated["Request Count"], aggregated
    failures_path = str(tmp_path / "stats_failures.csv")
    with open(failures_path, newline="") as f:
        errors = [row["Error"] for row in csv.DictReader(f)]
    assert errors and all(e.startswith("ArgumentError(") for e in errors), errors


def test_examples_readme_shows_the_commands_tested_here():
    """The gunicorn command lines in examples/README.md are the ones the
    tests above run (less the test's own bind, pid file and timeouts)."""
    with open(os.path.join(ROOT, "examples", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for variant in ("per_worker", "preloaded"):
        assert "gunicorn -k gevent -w 2 %s\n" % " ".join(VARIANTS[variant]) in readme, variant
    assert "locust -f examples/locust/locustfile.py --headless" in readme
    assert "python catalog.py prepare" in readme

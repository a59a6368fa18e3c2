"""How the emulator is started and stopped: the command line (``python -m
couchbase_core.mock``), the :class:`MockCluster` API (child process and
in-process) and the pytest plugin. What it answers is checked with raw
sockets (:mod:`.rawclient`, :mod:`.rawhttp`)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest

from couchbase_core.mock import MockCluster, MockError
from tests.mock import rawhttp
from tests.mock.rawclient import RawClient
from tests.mock.scram import handshake

pytest_plugins = ["pytester"]

HOST = "127.0.0.1"
GET_CONFIG, NOOP = 0xB5, 0x0A
CLI = [sys.executable, "-m", "couchbase_core.mock"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Emulator:
    """``python -m couchbase_core.mock`` as a child process."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(CLI + list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        self.lines: List[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def line(self, number: int = 0, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.lines) <= number:
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self._reader.is_alive()):
                err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else b""
                raise AssertionError("no output line %d; stderr: %r" % (number, err))
            time.sleep(0.01)
        return self.lines[number]

    def info(self) -> Dict[str, Any]:
        return json.loads(self.line(0))

    def wait_exit(self, timeout: float = 60.0) -> float:
        """Seconds until the process ended (fails past ``timeout``)."""
        started = time.monotonic()
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    started: List[Emulator] = []

    def start(*args: str) -> Emulator:
        emulator = Emulator(*args)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.kill()


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def config_via(port: int, user: str = "Administrator", password: str = "password", bucket: str = "default",
               tls: Optional[ssl.SSLContext] = None) -> Dict[str, Any]:
    """HELLO, SCRAM, SELECT_BUCKET, GET_CLUSTER_CONFIG on one KV port."""
    if tls is None:
        client = handshake(HOST, port, user, password, bucket)
    else:
        client = RawClient.__new__(RawClient)
        client.sock = tls.wrap_socket(socket.create_connection((HOST, port), timeout=10), server_hostname=HOST)
        client.opaque, client.buf = 0, b""
        client.hello((0x07, 0x08))
        client.auth(user, password)  # PLAIN: the connection is encrypted
        client.select(bucket)
    try:
        response = client.request(GET_CONFIG)
        assert response.status == 0, response
        return json.loads(response.value.replace(b"$HOST", HOST.encode()))
    finally:
        client.close()


# --------------------------------------------------------------------- CLI


def test_json_line_then_stop_by_closing_stdin(spawn: Any) -> None:
    emulator = spawn("--json", "--nodes", "2", "--bucket", "default", "--bucket", "mc:memcached",
                     "--user", "u:p:admin")
    info = emulator.info()
    assert set(info) >= {"connstr", "http_port", "kv_ports", "views_port", "query_port", "control_url"}
    assert info["connstr"].startswith("couchbase://") and info["connstr"].count(",") == 1
    assert sorted(info["kv_ports"]) == ["default", "mc"]
    assert len(info["kv_ports"]["default"]) == 2 and info["kv_ports"]["mc"] == info["kv_ports"]["default"]
    assert info["control_url"].startswith("http://127.0.0.1:") and info["control_url"].endswith("/mock")
    for name in ("http_port", "views_port", "query_port"):
        assert isinstance(info[name], int) and info[name] > 0
    # Everything answers, with the user given on the command line.
    config = config_via(info["kv_ports"]["default"][1], "u", "p")
    assert len(config["vBucketServerMap"]["serverList"]) == 2
    client = handshake(HOST, info["kv_ports"]["mc"][0], "u", "p", "mc")
    assert client.request(GET_CONFIG).status == 0x01  # memcached bucket: no CCCP (KEY_ENOENT)
    client.close()
    pools = rawhttp.request(HOST, info["http_port"], "GET", "/pools", auth=("u", "p"))
    assert pools.status == 200 and pools.json()["isAdminCreds"] is True
    view = rawhttp.request(HOST, info["views_port"], "GET", "/default/_design/none/_view/v", auth=("u", "p"))
    assert view.status == 404 and view.json()["error"] == "not_found"
    query = rawhttp.post_json(HOST, info["query_port"], "/query/service", {"statement": "SELECT 1 AS one"},
                              ("u", "p"))
    assert query.json()["results"] == [{"one": 1}]
    control_port = int(info["control_url"].rsplit(":", 1)[1].split("/")[0])
    assert rawhttp.request(HOST, control_port, "GET", "/mock/info").json()["connstr"] == info["connstr"]
    # Closing stdin stops it, promptly and cleanly; it printed exactly one line.
    assert emulator.proc.stdin is not None
    emulator.proc.stdin.close()
    emulator.wait_exit(60)  # fails (TimeoutExpired) if it does not end
    assert emulator.proc.returncode == 0
    assert len(emulator.lines) == 1
    assert refused(info["kv_ports"]["default"][0]) and refused(info["http_port"])


def test_sigterm_stops_it(spawn: Any) -> None:
    emulator = spawn("--json")
    info = emulator.info()
    assert config_via(info["kv_ports"]["default"][0])["name"] == "default"
    emulator.proc.send_signal(signal.SIGTERM)
    emulator.wait_exit(60)  # fails (TimeoutExpired) if it does not end
    assert emulator.proc.returncode == 0
    assert refused(info["kv_ports"]["default"][0])


def test_ignore_stdin_keeps_it_running(spawn: Any) -> None:
    emulator = spawn("--json", "--ignore-stdin")
    info = emulator.info()
    assert emulator.proc.stdin is not None
    emulator.proc.stdin.close()
    time.sleep(0.5)
    assert emulator.proc.poll() is None
    assert config_via(info["kv_ports"]["default"][0])["name"] == "default"
    emulator.proc.send_signal(signal.SIGINT)
    emulator.wait_exit(60)  # fails (TimeoutExpired) if it does not end


def _free_range(size: int) -> int:
    for _ in range(50):
        base = random.randrange(20000, 50000, 10)
        sockets = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((HOST, port))
                sockets.append(s)
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise AssertionError("no free port range")


def test_fixed_ports_with_base_port(spawn: Any) -> None:
    # The range is free when checked, but another process could take a port
    # of it before the emulator binds: then (only then) try another range.
    for attempt in range(5):
        base = _free_range(24)
        emulator = spawn("--json", "--nodes", "2", "--base-port", str(base))
        try:
            info = emulator.info()
            break
        except AssertionError as exc:
            if "in use" not in str(exc) or attempt == 4:
                raise
    assert (info["http_port"], info["views_port"], info["query_port"]) == (base, base + 1, base + 2)
    assert info["kv_ports"]["default"] == [base + 3, base + 15]
    assert info["nodes"][1]["ports"]["mgmt"] == base + 12
    assert info["connstr"] == "couchbase://127.0.0.1:%d,127.0.0.1:%d" % (base + 3, base + 15)
    config = config_via(base + 15)
    assert sorted(config["vBucketServerMap"]["serverList"]) == ["127.0.0.1:%d" % (base + 3),
                                                                 "127.0.0.1:%d" % (base + 15)]
    assert rawhttp.request(HOST, base + 14, "POST", "/query/service", b"statement=SELECT%201",
                           {"Content-Type": "application/x-www-form-urlencoded"}).status == 200


def test_tls(spawn: Any) -> None:
    emulator = spawn("--json", "--tls", "--nodes", "2")
    info = emulator.info()
    assert os.path.isfile(info["ca_cert"]) and info["connstr_tls"].startswith("couchbases://")
    ports = info["nodes"][0]["ports"]
    assert {"kvSSL", "mgmtSSL", "capiSSL", "n1qlSSL"} <= set(ports)
    trusted = ssl.create_default_context(cafile=info["ca_cert"])
    config = config_via(ports["kvSSL"], tls=trusted)
    services = [n["services"] for n in config["nodesExt"]]
    assert all({"kvSSL", "mgmtSSL", "capiSSL", "n1qlSSL"} <= set(s) for s in services)
    assert ports["kvSSL"] in [s["kvSSL"] for s in services]
    assert info["connstr_tls"].split("://")[1].split(",")[0] == "127.0.0.1:%d" % ports["kvSSL"]
    https = rawhttp.request(HOST, ports["mgmtSSL"], "GET", "/pools", tls=trusted)
    assert https.status == 200 and https.json()["implementationVersion"]
    query = rawhttp.post_json(HOST, ports["n1qlSSL"], "/query/service", {"statement": "SELECT 2 AS two"},
                              ("Administrator", "password"), tls=trusted)
    assert query.json()["results"] == [{"two": 2}]
    # The certificate is only trusted through the emulator's CA.
    untrusted = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusted.wrap_socket(socket.create_connection((HOST, ports["kvSSL"]), timeout=5), server_hostname=HOST)
    # The plain ports still work next to the TLS ones.
    assert config_via(ports["kv"])["name"] == "default"


def test_human_readable_output_without_json(spawn: Any) -> None:
    emulator = spawn("--nodes", "2")
    lines = [emulator.line(i).decode() for i in range(7)]
    assert lines[0].startswith("Couchbase emulator: 2 node(s)")
    assert any(line.split()[0] == "connstr" and "couchbase://" in line for line in lines[1:6])
    assert "stdin" in lines[6]
    assert emulator.proc.stdin is not None
    emulator.proc.stdin.close()
    emulator.wait_exit(60)  # fails (TimeoutExpired) if it does not end


def test_bad_arguments_are_refused() -> None:
    proc = subprocess.run(CLI + ["--json", "--vbuckets", "100"], capture_output=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == b"" and b"power of two" in proc.stderr


# ------------------------------------------------------------ MockCluster


def test_mockcluster_child_process_reports_a_failed_start() -> None:
    with pytest.raises(MockError, match="power of two"):
        MockCluster(vbuckets=100).start()


@pytest.mark.parametrize("in_process", [False, True])
def test_mockcluster_api(in_process: bool) -> None:
    buckets: List[Any] = ["default", "mc:memcached", {"name": "tiny", "replicas": 0, "vbuckets": 16}]
    with MockCluster(nodes=2, buckets=buckets, users=["u:p:bucket_full_access[default]"],
                     in_process=in_process) as cluster:
        assert cluster.connstr.startswith("couchbase://127.0.0.1:")
        assert cluster.connstr_for("default", operation_timeout=5) == cluster.connstr + "/default?operation_timeout=5"
        assert len(cluster.kv_ports()) == 2 and len(cluster.kv_ports("mc")) == 2
        assert cluster.ca_cert is None
        assert config_via(cluster.kv_ports()[0], "u", "p")["name"] == "default"
        tiny = config_via(cluster.kv_ports("tiny")[0], bucket="tiny")
        assert tiny["vBucketServerMap"]["numReplicas"] == 0 and len(tiny["vBucketServerMap"]["vBucketMap"]) == 16
        assert rawhttp.request(HOST, cluster.http_port, "GET", "/pools").status == 200
        assert rawhttp.request(HOST, cluster.views_port, "GET", "/default/_design/x").status == 404
        assert rawhttp.post_json(HOST, cluster.query_port, "/query/service", {"statement": "SELECT 1"}).status == 200
        cluster.failover(1)
        assert len(cluster.refresh()["kv_ports"]["default"]) == 1
        assert cluster.info["nodes"][1]["state"] == "failed"
        port = cluster.kv_ports()[0]
    assert refused(port)


def test_mockcluster_tls_in_process() -> None:
    with MockCluster(tls=True, in_process=True) as cluster:
        assert cluster.ca_cert and os.path.isfile(cluster.ca_cert)
        trusted = ssl.create_default_context(cafile=cluster.ca_cert)
        assert config_via(cluster.info["nodes"][0]["ports"]["kvSSL"], tls=trusted)["name"] == "default"


# ---------------------------------------------------------- pytest plugin


def test_plugin_fixture(couchbase_mock: MockCluster) -> None:
    assert isinstance(couchbase_mock, MockCluster)
    assert len(couchbase_mock.kv_ports()) == 1
    assert config_via(couchbase_mock.kv_ports()[0])["vBucketServerMap"]["numReplicas"] == 1


@pytest.mark.couchbase_mock(nodes=2, replicas=1)
def test_plugin_marker(couchbase_mock: MockCluster, couchbase_mock_session: MockCluster) -> None:
    assert couchbase_mock is not couchbase_mock_session
    assert len(couchbase_mock.kv_ports()) == 2
    assert len(config_via(couchbase_mock.kv_ports()[1])["vBucketServerMap"]["serverList"]) == 2


INNER_TESTS = '''
import socket, struct, time
import pytest

def roundtrip(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    started = time.monotonic()
    sock.sendall(struct.pack(">BBHBBHIIQ", 0x80, 0x0a, 0, 0, 0, 0, 0, 7, 0))
    data = b""
    while len(data) < 24:
        data += sock.recv(24)
    sock.close()
    assert data[:2] == b"\\x81\\x0a"
    return time.monotonic() - started

def test_a_sets_a_fault(couchbase_mock):
    couchbase_mock.delay(3.0)
    assert roundtrip(couchbase_mock.kv_ports()[0]) >= 3.0

def test_b_sees_it_cleared(couchbase_mock):
    # far below the 3 s delay, with room for a loaded machine
    assert roundtrip(couchbase_mock.kv_ports()[0]) < 2.0

@pytest.mark.couchbase_mock(nodes=3)
def test_c_own_cluster(couchbase_mock, couchbase_mock_session):
    assert len(couchbase_mock.kv_ports()) == 3
    assert len(couchbase_mock_session.kv_ports()) == 1
'''


def test_plugin_in_a_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=3)
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["*couchbase_mock(**options)*"])

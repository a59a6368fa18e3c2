"""Observability: the threshold and orphan reports (``enable_tracing``),
the engine's log records, OpenTelemetry spans, and secrets kept out of all
of them. See docs/observability.md.

Slow operations are made slow by the emulator's ``delay`` fault (or by
freezing memcached), with thresholds far below the delay: nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, Dict, List

import gevent
import pytest

from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import AuthError, TimeoutError
from couchbase_core.mock import MockCluster
from gcouchbase.bucket import Bucket as GBucket

TRACING_LOGGER = "couchbase_core.engine.tracing"
SECRET = "s3cr3t-Pa55w0rd-xq7"
ADMIN = {"username": "Administrator", "password": SECRET}


class Capture(logging.Handler):
    """Keeps every record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def reports(self, title: str) -> List[Dict[str, Any]]:
        """The JSON reports of the records whose message starts with ``title``."""
        out = []
        for record in self.records:
            text = record.getMessage()
            if record.name == TRACING_LOGGER and text.startswith(title + ": "):
                out.append(json.loads(text[len(title) + 2:]))
        return out

    def top(self, title: str, service: str) -> List[Dict[str, Any]]:
        return [e for r in self.reports(title) if r["service"] == service for e in r["top"]]


@pytest.fixture
def capture():
    handler = Capture()
    logger = logging.getLogger("couchbase_core")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture(scope="module")
def cluster():
    with MockCluster(nodes=1, admin=(ADMIN["username"], SECRET)) as c:
        yield c


def _wait(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        gevent.sleep(0.02)


# ------------------------------------------------------------- log records

def test_debug_records_show_connections_bootstrap_and_config_with_elapsed_times(cluster, capture):
    import re

    b = Bucket(cluster.connstr_for("default", config_poll_interval=0), **ADMIN)
    try:
        b.upsert("log:1", 1)
        node = b._engine.connections[0].authority
    finally:
        b.close()
    text = [r.getMessage() for r in capture.records if r.name == "couchbase_core.engine"]
    assert "%s: connecting" % node in text, text
    assert any(re.match(r"%s: ready after [0-9.]+ ms \(features (0x[0-9a-f]{2},?)+\)$" % re.escape(node), t)
               for t in text), text
    assert any(re.match(r"bootstrapped by CCCP from .* \(rev \d+\) in [0-9.]+ ms$", t) for t in text), text
    assert any(re.match(r"applied config rev \d+ epoch \d+ \(1 nodes\)$", t) for t in text), text
    assert all(r.levelno == logging.DEBUG for r in capture.records if "ready after" in r.getMessage())


# ------------------------------------------------------------- threshold log

def test_a_delayed_operation_is_in_the_slow_operation_log_with_its_phases(cluster, capture):
    b = GBucket(cluster.connstr_for("default", enable_tracing="true", tracing_threshold_kv="0.1",
                                    tracing_threshold_queue_flush_interval="0.2", config_poll_interval=0,
                                    operation_timeout=10), **ADMIN)
    try:
        b.upsert("slow:1", {"v": 1})
        cluster.delay(1.0)
        try:
            assert b.get("slow:1").value == {"v": 1}
        finally:
            cluster.delay(0)
        # the report comes from the engine's flush timer, not from close()
        def gets() -> List[Dict[str, Any]]:
            return [e for e in capture.top("Operations over threshold", "kv") if e["operation_name"] == "get"]

        _wait(gets, "the threshold report")
        entry = gets()[0]
        assert entry["total_us"] >= 900000  # the emulator held the reply for 1 s
        for phase in ("encode_us", "queue_us", "dispatch_us", "decode_us"):
            assert isinstance(entry[phase], int) and entry[phase] >= 0, entry
        assert entry["dispatch_us"] >= 900000  # the time went to the server, not to us
        assert entry["last_remote_address"] == b._engine.connections[0].authority
        assert entry["last_local_address"].startswith("127.0.0.1:")
        assert entry["last_operation_id"].startswith("0x")
        assert entry["last_local_id"].startswith(b._engine.client_id)
        report = [r for r in capture.reports("Operations over threshold") if r["service"] == "kv"][0]
        assert report["count"] >= 1
        record = [r for r in capture.records if r.name == TRACING_LOGGER][0]
        assert record.levelno == logging.INFO
        assert "slow:1" not in record.getMessage()  # keys never appear
    finally:
        b.close()


def test_a_threshold_of_zero_reports_every_operation_on_memcached(memcached_server, capture):
    b = Bucket(memcached_server.connstr + "?enable_tracing=true&tracing_threshold_kv=0"
               "&tracing_threshold_queue_size=4")
    try:
        for i in range(10):
            b.upsert("every:%d" % i, i)
        b.get("every:3")
    finally:
        b.close()  # close reports what is queued
    report = [r for r in capture.reports("Operations over threshold") if r["service"] == "kv"]
    assert len(report) == 1
    assert report[0]["count"] == 11
    top = report[0]["top"]
    assert len(top) == 4  # tracing_threshold_queue_size
    assert [e["total_us"] for e in top] == sorted((e["total_us"] for e in top), reverse=True)
    assert {e["last_remote_address"] for e in top} == {memcached_server.address}
    assert {e["operation_name"] for e in top} <= {"set", "get"}


def test_n1ql_requests_are_timed_per_service(cluster, capture):
    b = Bucket(cluster.connstr_for("default", enable_tracing="true", tracing_threshold_n1ql="0",
                                   config_poll_interval=0), **ADMIN)
    try:
        assert b.n1ql_query("SELECT 1 AS x").get_single_result() == {"x": 1}
        tracer = b._engine.tracer
        threshold, _orphans = tracer.flush()
    finally:
        b.close()
    n1ql = [r for r in threshold if r["service"] == "n1ql"]
    assert n1ql and n1ql[0]["count"] >= 1
    entry = n1ql[0]["top"][0]
    assert entry["operation_name"] == "POST /query/service"
    assert entry["last_remote_address"]
    assert entry["dispatch_us"] <= entry["total_us"]


def test_tracing_can_be_turned_on_and_off_and_costs_nothing_while_off(memcached_server, capture):
    b = Bucket(memcached_server.connstr)
    try:
        b.upsert("onoff", 1)
        engine = b._engine
        conn = engine.connections[0]
        # off: the plain methods, no hook anywhere
        assert engine.tracer is None and "submit" not in vars(engine) and "_write" not in vars(conn)
        assert "submit_batch" not in vars(engine)
        b.tracing_threshold_kv = 0
        b.enable_tracing = True
        assert "submit" in vars(engine) and "_write" in vars(conn)
        b.get("onoff")
        b._cntl(0x4E, 0)  # LCB_CNTL_ENABLE_TRACING off: reports what was queued
        assert engine.tracer is None and "submit" not in vars(engine) and "_write" not in vars(conn)
        b.get("onoff")
        assert not b.enable_tracing
    finally:
        b.close()
    tops = capture.top("Operations over threshold", "kv")
    assert [e["operation_name"] for e in tops] == ["get"]  # only the get made while on


def test_a_multi_call_is_timed_as_one_entry_with_its_size(memcached_server):
    b = GBucket(memcached_server.connstr + "?enable_tracing=true&tracing_threshold_kv=0")
    try:
        b.upsert_multi({"batch:%d" % i: i for i in range(5)})
        assert len(b.get_multi(["batch:%d" % i for i in range(5)])) == 5
        threshold, _orphans = b._engine.tracer.flush()
    finally:
        b.close()
    entries = [e for r in threshold for e in r["top"]]
    assert sorted((e["operation_name"], e["batch_size"]) for e in entries) == [("get", 5), ("set", 5)]
    for entry in entries:
        assert entry["last_remote_address"] == memcached_server.address
        assert 0 <= entry["encode_us"] <= entry["total_us"]


# ------------------------------------------------------------------ orphans

def test_a_reply_after_the_timeout_is_reported_as_an_orphan(cluster, capture):
    b = GBucket(cluster.connstr_for("default", enable_tracing="true", operation_timeout="2",
                                    tracing_orphaned_queue_flush_interval="0.2", config_poll_interval=0), **ADMIN)
    try:
        b.upsert("orphan:1", 1)
        cluster.delay(2.5)
        try:
            with pytest.raises(TimeoutError):
                b.get("orphan:1")
            _wait(lambda: capture.top("Orphan responses observed", "kv"), "the orphan report")
        finally:
            cluster.delay(0)
        entry = capture.top("Orphan responses observed", "kv")[0]
        assert entry["operation_name"] == "get"
        assert entry["timeout_ms"] == 2000
        assert entry["total_us"] >= 2000000
        assert entry["last_remote_address"] == b._engine.connections[0].authority
        record = [r for r in capture.records if r.getMessage().startswith("Orphan responses observed")][0]
        assert record.levelno == logging.WARNING
        conn = b._engine.connections[0]
        _wait(lambda: not conn.pending, "the late replies")
        assert b.get("orphan:1").value == 1  # the connection is still in step
    finally:
        b.close()


def test_an_orphan_and_the_redacted_timeout_record_on_memcached(fresh_memcached, capture):
    b = Bucket(fresh_memcached.connstr + "?enable_tracing=true&operation_timeout=0.5&log_redaction=on")
    try:
        b.upsert("frozen:key", 1)
        fresh_memcached.pause()
        try:
            with pytest.raises(TimeoutError):
                b.get("frozen:key")
        finally:
            fresh_memcached.resume()
        assert b.get("frozen:key").value == 1  # the late reply is read (and dropped) before this one
        _thr, orphans = b._engine.tracer.flush()
    finally:
        b.close()
    assert [e["operation_name"] for r in orphans for e in r["top"]] == ["get"]
    timeouts = [r.getMessage() for r in capture.records if "timed out" in r.getMessage()
                and r.name == "couchbase_core.engine"]
    assert timeouts and "<ud>frozen:key</ud>" in timeouts[0], timeouts


# -------------------------------------------------------------- OpenTelemetry

def test_opentelemetry_spans_per_operation(memcached_server):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    b = Bucket(memcached_server.connstr, tracer=tracer)
    try:
        assert b._engine.tracer is not None and not b._engine.tracer.reports
        with tracer.start_as_current_span("request") as parent:
            b.upsert("otel:key", "otel-value")
            b.get("otel:key")
    finally:
        b.close()
    spans = [s for s in exporter.get_finished_spans() if s.name != "request"]
    assert [s.name for s in spans] == ["set", "get"]
    for span in spans:
        attrs = dict(span.attributes)
        assert attrs["db.system.name"] == "couchbase" and attrs["db.system"] == "couchbase"
        assert attrs["db.operation.name"] == span.name
        assert attrs["db.couchbase.service"] == "kv"
        host, port = memcached_server.address.rsplit(":", 1)
        assert attrs["server.address"] == host and attrs["server.port"] == int(port)
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        text = repr(attrs)
        assert "otel:key" not in text and "otel-value" not in text
        assert span.end_time >= span.start_time


# ---------------------------------------------------------------- secrets

def test_no_secret_in_any_record_with_tracing_and_debug_logging(cluster, capture):
    import couchbase_core

    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    couchbase_core.enable_logging()
    logging.getLogger("couchbase").setLevel(logging.DEBUG)
    try:
        for mech in ("PLAIN", "SCRAM-SHA512"):
            b = Bucket(cluster.connstr_for("default", enable_tracing="true", tracing_threshold_kv="0",
                                           tracing_threshold_n1ql="0", sasl_mech_force=mech,
                                           config_poll_interval=0), **ADMIN)
            try:
                b.upsert("secret:doc", {"a": 1})
                b.get("secret:doc")
                b.n1ql_query("SELECT 1 AS x").execute()
                b._engine.tracer.flush()
            finally:
                b.close()
        # a refused login logs too
        with pytest.raises(AuthError):
            Bucket(cluster.connstr_for("default", config_total_timeout="5"), username="Administrator",
                   password=SECRET + "-wrong")
    finally:
        couchbase_core.disable_logging()
        root.removeHandler(capture)
        root.setLevel(old)
    assert len(capture.records) > 10
    needles = [SECRET, base64.b64encode(SECRET.encode()).decode(),
               base64.b64encode(("Administrator:" + SECRET).encode()).decode(),
               base64.b64encode(("\0Administrator\0" + SECRET).encode()).decode(), "Authorization", "Basic "]
    for record in capture.records:
        text = record.getMessage() + repr(record.args) + repr(getattr(record, "exc_text", "") or "")
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        for needle in needles:
            assert needle not in text, (needle, record.name, text[:300])


# ------------------------------------------------------------ HTTP services

def test_views_fts_and_analytics_requests_are_timed_per_service(capture):
    import couchbase_core.fulltext as FT
    from tests.mock import rawhttp

    with MockCluster(nodes=1, admin=(ADMIN["username"], SECRET), in_process=True) as mock:
        port = mock.info["nodes"][0]["ports"]["fts"]
        reply = rawhttp.request("127.0.0.1", port, "PUT", "/api/index/docs",
                                json.dumps({"type": "fulltext-index", "sourceName": "default"}).encode(),
                                {"Content-Type": "application/json"}, (ADMIN["username"], SECRET))
        assert reply.status == 200, reply.body
        b = Bucket(mock.connstr_for("default", enable_tracing="true", tracing_threshold_view="0",
                                    tracing_threshold_fts="0", tracing_threshold_analytics="0",
                                    config_poll_interval=0), operation_timeout=30, **ADMIN)
        try:
            b.upsert("doc:1", {"type": "t", "name": "one"})
            b.bucket_manager().design_create(
                "dd", {"views": {"names": {"map": "function (doc, meta) { emit(doc.name, null); }"}}},
                use_devmode=False, syncwait=60)
            assert [r.key for r in b.query("dd", "names", stale=False)] == ["one"]
            list(b.search("docs", FT.MatchAllQuery()))
            assert list(b.analytics_query("SELECT VALUE 1;")) == [1]
            threshold, _orphans = b._engine.tracer.flush()
        finally:
            b.close()
    by_service = {r["service"]: r for r in threshold}
    assert {"view", "fts", "analytics"} <= set(by_service), threshold
    views = [e["operation_name"] for e in by_service["view"]["top"]]
    assert any(name.startswith("GET /default/_design/dd/_view/names") for name in views), views
    assert by_service["fts"]["top"][0]["operation_name"] == "POST /api/index/docs/query"
    assert by_service["analytics"]["top"][0]["operation_name"].startswith("POST /")
    for report in by_service.values():
        for entry in report["top"]:
            assert entry["total_us"] >= entry.get("dispatch_us", 0)


# ------------------------------------------------------- server durations

def test_the_server_duration_frame_is_decoded():
    from couchbase_core._engine.protocol import (
        FrameDecoder,
        Opcode,
        ResponseFrameInfoId,
        encode_frame_infos,
        encode_response,
    )
    from couchbase_core._engine.tracing import server_duration_us

    framing = encode_frame_infos([(ResponseFrameInfoId.SERVER_DURATION, (1000).to_bytes(2, "big"))])
    frames = FrameDecoder().feed(encode_response(Opcode.GET, value=b"v", extras=b"\0\0\0\0", opaque=7,
                                                 framing=framing))
    assert len(frames) == 1
    assert server_duration_us(frames[0]) == round(1000 ** 1.74 / 2)
    plain = FrameDecoder().feed(encode_response(Opcode.GET, value=b"v", extras=b"\0\0\0\0", opaque=7))
    assert server_duration_us(plain[0]) is None


# ------------------------------------------------------------------ fork

def test_a_forked_child_starts_with_empty_reports_and_keeps_tracing(memcached_server):
    from tests.test_fork import collect, fork_children

    b = Bucket(memcached_server.connstr + "?enable_tracing=true&tracing_threshold_kv=0")
    try:
        b.upsert("fork:parent", 1)  # queued in the parent's report

        def child(_index: int) -> Any:
            b.upsert("fork:child", 2)
            threshold, _orphans = b._engine.tracer.flush()
            return [e["operation_name"] for r in threshold for e in r["top"]]

        reports = collect(fork_children(1, child))
        assert reports == [["set"]]  # the child's own set only, not the parent's
        threshold, _orphans = b._engine.tracer.flush()
        assert [r["count"] for r in threshold] == [1]  # the parent's queue is intact
    finally:
        b.close()


def test_an_opentelemetry_span_of_a_timed_out_operation_has_an_error_status(fresh_memcached):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    b = Bucket(fresh_memcached.connstr + "?operation_timeout=0.3", tracer=provider.get_tracer("test"))
    try:
        fresh_memcached.pause()
        try:
            with pytest.raises(TimeoutError):
                b.get("otel:frozen")
        finally:
            fresh_memcached.resume()
    finally:
        b.close()
    spans = [s for s in exporter.get_finished_spans() if s.name == "get"]
    assert len(spans) == 1
    assert spans[0].status.status_code == StatusCode.ERROR
    assert spans[0].attributes["error.type"] == "TimeoutError"
    assert "otel:frozen" not in repr(dict(spans[0].attributes)) + (spans[0].status.description or "")

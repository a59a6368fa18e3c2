"""The server side of ``bench.rows``: a Couchbase bucket whose views and
N1QL answers come from memory, in a process of its own.

    python -m bench.rowserver ROWS [--chunk-bytes B] [--emulator] [--max-seconds S]

It builds two response bodies of ROWS realistic small documents -- a view
response (``{"total_rows":N,"rows":[{"id","key","value"},...]}``) and a
N1QL response (``{"requestID","signature","results":[...],"status",
"metrics"}``), laid out like the emulator's -- and serves them from a
threaded HTTP/1.1 server on 127.0.0.1 (keep-alive, chunked transfer
encoding, the whole pre-built chunked body handed to ``sendall`` at once,
so serving costs next to nothing). Any ``GET .../_view/...`` gets the view
body, any ``POST /query/service`` the N1QL body.

The client must reach these as a Couchbase bucket. The emulator
(``couchbase_core.mock``) provides the bucket: it runs on a thread of this
process (``ThreadedMock``), and before any client bootstraps, the node's
``capi`` (views) and ``n1ql`` ports in the cluster state are pointed at the
canned server, so the config every client receives (``nodesExt``) sends
view and N1QL requests there, while bootstrap and KV stay with the
emulator. The emulator's own query engines are not used: for 100,000 rows
they, not the client, would be the bottleneck (see docs/performance.md).
With ``--emulator`` they are used anyway: the documents are stored in the
emulator, with the view and a primary index, and nothing is canned.

Prints one JSON line once ready (``connstr``, ``rows``, ``source``,
``ordered``, ``view_url``, ``query_url``, ``statement``, the body sizes,
``sample_doc``) and runs until its stdin closes, it is signalled, or
``--max-seconds`` pass; started by ``bench.rows`` it also dies with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["make_docs", "view_body", "n1ql_body", "chunked", "main"]

CITIES = ("Lyon", "Porto", "Kraków", "Austin", "Osaka", "Nairobi", "Lima", "Oslo", "Pune", "Tartu")
TAGS = ("new", "vip", "mobile", "newsletter", "beta", "trial", "partner")
VIEW_PATH = "/default/_design/bench/_view/by_city"
STATEMENT = "SELECT META(u).id AS id, u.* FROM `default` u WHERE u.type = 'user'"
#: The view the canned body stands for (and that --emulator defines).
MAP_FUNCTION = "function (doc, meta) { if (doc.type == 'user') { emit([doc.city, doc.age], doc); } }"


def make_docs(n: int, seed: int = 42) -> List[Tuple[str, Dict[str, Any]]]:
    """``n`` (id, document) pairs: small user profiles of about 200 bytes
    of JSON, deterministic for a given seed."""
    rnd = random.Random(seed)
    docs = []
    for i in range(n):
        doc = {"type": "user", "uid": i, "name": "User %06d" % i, "email": "user%06d@example.com" % i,
               "age": rnd.randint(18, 90), "active": rnd.random() < 0.8, "city": rnd.choice(CITIES),
               "score": round(rnd.uniform(0, 100), 2),
               "tags": rnd.sample(TAGS, rnd.randint(0, 3)),
               "created": "2025-%02d-%02dT%02d:%02d:00Z" % (rnd.randint(1, 12), rnd.randint(1, 28),
                                                            rnd.randint(0, 23), rnd.randint(0, 59))}
        docs.append(("user::%06d" % i, doc))
    return docs


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def view_body(docs: List[Tuple[str, Dict[str, Any]]]) -> bytes:
    """A view response: key ``[city, age]``, value the document."""
    rows = ",\n".join(_dumps({"id": k, "key": [d["city"], d["age"]], "value": d}) for k, d in docs)
    return ('{"total_rows":%d,"rows":[\n%s\n]\n}' % (len(docs), rows)).encode("utf-8")


def n1ql_body(docs: List[Tuple[str, Dict[str, Any]]]) -> bytes:
    """A N1QL response: every result is ``{"id": ..., **document}``."""
    results = [_dumps(dict(id=k, **d)) for k, d in docs]
    size = sum(len(r.encode("utf-8")) for r in results)
    metrics = {"elapsedTime": "1.0s", "executionTime": "1.0s", "resultCount": len(docs), "resultSize": size,
               "serviceLoad": 2}
    return ('{\n"requestID": "6f2d0b4e-bench-0000-0000-000000000000",\n'
            '"signature": {"id":"json","*":"*"},\n"results": [\n%s\n],\n"status": "success",\n'
            '"metrics": %s\n}\n' % (",\n".join(results), _dumps(metrics))).encode("utf-8")


def chunked(body: bytes, chunk_bytes: int) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer encoding, ending with the
    zero-length chunk."""
    parts = []
    for start in range(0, len(body), chunk_bytes):
        piece = body[start:start + chunk_bytes]
        parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


class Handler(BaseHTTPRequestHandler):
    """Serves the pre-built bodies; keep-alive unless the client says close."""

    protocol_version = "HTTP/1.1"
    server_version = "bench-rowserver"
    bodies: Dict[str, bytes] = {}
    counts: Dict[str, int] = {"view": 0, "n1ql": 0, "other": 0}

    def _drain(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def _send(self, status: int, body: bytes, is_chunked: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if is_chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        """A view query gets the view body; anything else a 404."""
        self._drain()
        if "/_view/" in self.path:
            self.counts["view"] += 1
            self._send(200, self.bodies["view"], True)
        else:
            self.counts["other"] += 1
            self._send(404, b'{"error":"not_found","reason":"bench row server"}', False)

    def do_POST(self) -> None:  # noqa: N802
        """A N1QL query gets the N1QL body; anything else a 404."""
        self._drain()
        if self.path.startswith("/query/service"):
            self.counts["n1ql"] += 1
            self._send(200, self.bodies["n1ql"], True)
        else:
            self.counts["other"] += 1
            self._send(404, b'{"error":"not_found"}', False)

    def log_message(self, *args: Any) -> None:
        """Quiet: no line per request."""
        pass


def load_emulator(connstr: str, docs: List[Tuple[str, Dict[str, Any]]]) -> None:
    """Store ``docs`` in the emulator's ``default`` bucket, define the view
    (built by one ``stale=false`` query) and a primary index."""
    from couchbase_core.bucket import Bucket

    bucket = Bucket(connstr + "/default?operation_timeout=60&views_timeout=300&query_timeout=300",
                    username="Administrator", password="password")
    try:
        for start in range(0, len(docs), 5000):
            bucket.upsert_multi(dict(docs[start:start + 5000]))
        design, view = VIEW_PATH.split("/_design/")[1].split("/_view/")
        mgr = bucket.bucket_manager()
        mgr.design_create(design, {"views": {view: {"map": MAP_FUNCTION}}}, use_devmode=False, syncwait=60)
        list(bucket.query(design, view, stale=False, limit=1))
        mgr.n1ql_index_create_primary(ignore_exists=True)
    finally:
        bucket.close()


def _redirect_services(port: int) -> Any:
    """For ``ThreadedMock.call``: every node advertises ``port`` as its
    views and N1QL port from the next config on (the emulator's own
    listeners stay where they are, unused)."""

    def apply(app: Any) -> None:
        for node in app.cluster.nodes:
            node.ports["capi"] = port
            node.ports["n1ql"] = port
        app.cluster.bump()
    return apply


def main(argv: Optional[List[str]] = None) -> int:
    """Build the bodies, start the servers, print the JSON line, serve until stdin closes."""
    p = argparse.ArgumentParser(prog="python -m bench.rowserver", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", type=int)
    p.add_argument("--chunk-bytes", type=int, default=16384, help="bytes per HTTP chunk (default 16384)")
    p.add_argument("--emulator", action="store_true",
                   help="no canned bodies: store the documents in the emulator and let its own view and "
                        "N1QL engines answer (slow: they, not the client, are then the bottleneck)")
    p.add_argument("--max-seconds", type=float, default=900, help="exit after this long whatever happens")
    args = p.parse_args(argv)

    killer = threading.Timer(args.max_seconds, lambda: os._exit(3))
    killer.daemon = True
    killer.start()
    docs = make_docs(args.rows)

    from couchbase_core.mock.inprocess import ThreadedMock
    from couchbase_core.mock.runtime import ClusterOptions

    httpd = None
    mock = ThreadedMock(ClusterOptions(nodes=1, replicas=0)).start()
    try:
        if args.emulator:
            load_emulator(mock.info["connstr"], docs)
            info = mock.info
            views, query = info["views_port"], info["query_port"]
            source = "the emulator's own view and N1QL engines"
            sizes: Dict[str, Any] = {}
        else:
            vbody, nbody = view_body(docs), n1ql_body(docs)
            Handler.bodies = {"view": chunked(vbody, args.chunk_bytes), "n1ql": chunked(nbody, args.chunk_bytes)}
            sizes = {"view_bytes": len(vbody), "n1ql_bytes": len(nbody)}
            del vbody, nbody
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            httpd.daemon_threads = True
            threading.Thread(target=httpd.serve_forever, name="rows-http", daemon=True).start()
            views = query = httpd.server_address[1]
            mock.call(_redirect_services(views))
            source = "canned bodies (%d-byte HTTP chunks) behind an emulator bucket" % args.chunk_bytes
        info = mock.info
        line = dict(sizes, connstr=info["connstr"], rows=args.rows, source=source, ordered=not args.emulator,
                    view_url="http://127.0.0.1:%d%s" % (views, VIEW_PATH),
                    query_url="http://127.0.0.1:%d/query/service" % query, statement=STATEMENT,
                    sample_doc=docs[0][1] if docs else {})
        del docs
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the parent closes the pipe (or dies)
    finally:
        if httpd is not None:
            httpd.shutdown()
        mock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

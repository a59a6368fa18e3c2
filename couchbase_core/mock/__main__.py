"""``python -m couchbase_core.mock``: run an emulated Couchbase cluster.

With ``--json`` it prints exactly one JSON line on stdout once every node
listens (``connstr``, ``http_port``, ``kv_ports``, ``views_port``,
``query_port``, ``control_url``, ...) and then runs until its stdin closes
or it receives SIGTERM/SIGINT, so any program can start it, read where it
is, and stop it by closing the pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from typing import List, Optional

from couchbase_core.mock.certauth import PATHS, STATES, CertAuthSettings
from couchbase_core.mock.cluster import User
from couchbase_core.mock.runtime import BucketOptions, ClusterOptions, MockApp

__all__ = ["main", "parse_args", "options_from_args"]


def _parse_user(text: str) -> User:
    # name:password[:role1,role2[bucket],...]
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise argparse.ArgumentTypeError("--user takes name:password[:roles]")
    roles = []
    if len(parts) == 3 and parts[2]:
        import re

        for item in re.findall(r"[a-z_]+(?:\[[^\]]*\])?", parts[2]):
            name, _, rest = item.partition("[")
            roles.append((name, rest.rstrip("]") or None))
    else:
        roles = [("admin", None)]
    return User(parts[0], parts[1], roles)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m couchbase_core.mock",
                                description="Run an emulated multi-node Couchbase cluster on 127.0.0.1.")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--bucket", action="append", default=[], metavar="NAME[:TYPE[:PASSWORD]]",
                   help="a bucket; TYPE is couchbase (default), memcached or ephemeral; repeatable "
                        "(default: one couchbase bucket named 'default')")
    p.add_argument("--user", action="append", default=[], type=_parse_user, metavar="NAME:PASSWORD[:ROLES]",
                   help="an RBAC user; ROLES like 'admin' or 'bucket_full_access[default],data_reader[b2]'")
    p.add_argument("--replicas", type=int, default=1, help="replicas per vBucket (default 1)")
    p.add_argument("--vbuckets", type=int, default=64, help="vBuckets per bucket: 64 (default) or 1024")
    p.add_argument("--base-port", type=int, default=None,
                   help="fixed ports: node i uses BASE+10*i+{0 mgmt, 1 views, 2 query, 3 kv, 4-7 TLS}; "
                        "default: free ports")
    p.add_argument("--control-port", type=int, default=0, help="port of the control endpoint (default free)")
    p.add_argument("--tls", action="store_true", help="also listen with TLS (kvSSL, mgmtSSL, capiSSL, n1qlSSL)")
    p.add_argument("--cert", help="TLS certificate chain (PEM); default: a fresh CA and certificate (needs trustme)")
    p.add_argument("--key", help="TLS private key (PEM)")
    p.add_argument("--client-ca", metavar="PEM",
                   help="CA certificates that sign client certificates: enables client certificate "
                        "authentication on the TLS ports (needs --tls or --cert)")
    p.add_argument("--client-cert-auth", choices=STATES, default="enable",
                   help="enable (a certificate is optional; default) or mandatory (TLS clients must present one)")
    p.add_argument("--client-cert-path", choices=sorted(PATHS), default="subject.cn",
                   help="where a client certificate carries the user name (default subject.cn)")
    p.add_argument("--client-cert-prefix", default="", help="prefix stripped from that name (default none)")
    p.add_argument("--alternate-host", default=None, metavar="ADDRESS",
                   help="also serve every node on ADDRESS (other ports) and publish it as the node's "
                        "'external' alternate address, e.g. 127.0.0.2")
    p.add_argument("--admin", default="Administrator:password", help="administrator NAME:PASSWORD")
    p.add_argument("--json", action="store_true", help="print one JSON line with the cluster's addresses")
    p.add_argument("--ignore-stdin", action="store_true", help="do not stop when stdin closes")
    args = p.parse_args(argv)
    if args.vbuckets < 1 or args.vbuckets & (args.vbuckets - 1):
        p.error("--vbuckets must be a power of two (64 or 1024 like real servers)")
    if args.nodes < 1:
        p.error("--nodes must be at least 1")
    if args.client_ca and not (args.tls or args.cert):
        p.error("--client-ca needs TLS (--tls or --cert/--key)")
    return args


def _make_certificate(directory: str) -> tuple:
    try:
        import trustme
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit(("--tls without --cert/--key needs the trustme package: install the 'mock' extra "
                          "(pip install 'gcouchbase[mock]')")) from None
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server.key")
    ca_path = os.path.join(directory, "ca.pem")
    cert.private_key_pem.write_to_path(key_path)
    with open(cert_path, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    ca.cert_pem.write_to_path(ca_path)
    return cert_path, key_path, ca_path


def options_from_args(args: argparse.Namespace, tmpdir: Optional[str] = None) -> ClusterOptions:
    """Turn parsed arguments into :class:`ClusterOptions`."""
    buckets = [BucketOptions.parse(b) for b in args.bucket] or [BucketOptions("default")]
    admin_user, _, admin_password = args.admin.partition(":")
    cert, key = args.cert, args.key
    if args.tls and not cert:
        cert, key, ca = _make_certificate(tmpdir or tempfile.mkdtemp(prefix="couchbase-mock-"))
        args.ca_cert = ca
    elif cert:
        args.ca_cert = cert
    opts = ClusterOptions(nodes=args.nodes, buckets=buckets, replicas=args.replicas, vbuckets=args.vbuckets,
                          users=list(args.user), base_port=args.base_port,
                          tls_cert=cert if (args.tls or args.cert) else None, tls_key=key,
                          admin_user=admin_user, admin_password=admin_password or "password",
                          client_cert=CertAuthSettings(args.client_ca, args.client_cert_auth, args.client_cert_path,
                                                       args.client_cert_prefix) if args.client_ca else None,
                          alternate_host=args.alternate_host)
    return opts


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="couchbase-mock-") as tmpdir:
        app = MockApp(options_from_args(args, tmpdir))
        await app.start(control_port=args.control_port)
        _warn_without_js_engine()
        info = app.info()
        if getattr(args, "ca_cert", None):
            info["ca_cert"] = args.ca_cert
        import json

        if args.json:
            sys.stdout.write(json.dumps(info, separators=(",", ":")) + "\n")
        else:
            sys.stdout.write("Couchbase emulator: %d node(s), buckets %s\n" % (
                len(app.cluster.nodes), ", ".join(app.cluster.buckets)))
            for name in ("connstr", "http_port", "views_port", "query_port", "control_url"):
                sys.stdout.write("  %-12s %s\n" % (name, info[name]))
            sys.stdout.write("Close stdin (Ctrl-D) or send SIGTERM/SIGINT to stop.\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        if not args.ignore_stdin:
            _watch_stdin(loop, stop)
        await stop.wait()
        await app.close()


def _warn_without_js_engine() -> None:
    """Say on stderr, once at start, that views will fail (everything
    else works) when no JavaScript engine is installed."""
    from couchbase_core.mock.views import INSTALL_HINT, js_engine_available

    if js_engine_available() is None:
        sys.stderr.write("couchbase emulator: no JavaScript engine (quickjs or dukpy) is installed, so view "
                         "requests will fail with js_engine_missing; install the 'mock' extra (%s)\n"
                         % INSTALL_HINT)
        sys.stderr.flush()


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0:
        return

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError, NotImplementedError):  # pragma: no cover - e.g. a regular file
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start a real ``memcached`` on a free loopback port, for tests and demos.

    with MemcachedServer() as server:
        bucket = Bucket(server.connstr)

The server listens on 127.0.0.1 only, is stopped when the ``with`` block (or
:meth:`MemcachedServer.stop`) ends, and on Linux also dies with the process
that started it, so an interrupted test run leaves nothing behind. It can be
frozen and thawed (SIGSTOP / SIGCONT) to simulate a hung server; both return
only once every thread of the server is stopped / running again (see
:mod:`couchbase_core.testing.signals`), so no request slips through a freeze.
memcached picks its own free port, so no other process can take it between
choosing and binding.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from couchbase_core.testing.signals import continue_process, stop_process

__all__ = ["MemcachedServer", "find_memcached", "MemcachedMissing"]

_CANDIDATES = ("/usr/bin/memcached", "/usr/sbin/memcached", "/usr/local/bin/memcached",
               "/opt/homebrew/bin/memcached")


class MemcachedMissing(RuntimeError):
    """No memcached binary could be found."""


def find_memcached() -> str:
    """Path of the memcached binary: ``$MEMCACHED``, then ``PATH``, then the
    usual install locations. Raises :class:`MemcachedMissing` with a message
    saying how to install it."""
    env = os.environ.get("MEMCACHED")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise MemcachedMissing("MEMCACHED=%s is not an executable file" % env)
    found = shutil.which("memcached")
    if found:
        return found
    for path in _CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise MemcachedMissing(
        "memcached is not installed. The key-value tests need a real memcached: run `make test` "
        "(it installs the Debian package when run as root), or install it yourself "
        "(sudo apt-get install memcached / brew install memcached), or set MEMCACHED=/path/to/memcached.")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class MemcachedServer:
    """A memcached process on 127.0.0.1 and a free port.

    Args:
        memory_mb: cache size (``-m``).
        threads: worker threads (``-t``).
        extra_args: more command-line arguments.
    """

    def __init__(self, memory_mb: int = 64, threads: int = 2, extra_args: Optional[List[str]] = None,
                 port: Optional[int] = None) -> None:
        self.binary = find_memcached()
        self.memory_mb = memory_mb
        self.threads = threads
        self.extra_args = list(extra_args or [])
        self.host = "127.0.0.1"
        self.port = port or 0
        self.proc: Optional[subprocess.Popen] = None
        self.paused = False

    @property
    def address(self) -> str:
        """``host:port``."""
        return "%s:%d" % (self.host, self.port)

    @property
    def connstr(self) -> str:
        """``memcached://host:port``."""
        return "memcached://%s" % self.address

    def _command(self, port: int) -> List[str]:
        cmd = [self.binary, "-l", self.host, "-p", str(port), "-U", "0",
               "-m", str(self.memory_mb), "-t", str(self.threads), "-c", "4096"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["-u", "root"]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> "MemcachedServer":
        """Start the server and wait until it accepts connections.

        Without a port, memcached binds an ephemeral port itself (``-p -1``)
        and reports it through ``MEMCACHED_PORT_FILENAME``: no port is chosen
        here and bound later, so no other process can take it in between.
        With a port (given, or kept by :meth:`restart`) that port is used and
        a clear error raised if memcached cannot listen on it."""
        fixed = self.port
        err = ""
        for _attempt in range(5):
            with tempfile.TemporaryDirectory(prefix="memcached-port-") as tmp:
                port_file = os.path.join(tmp, "port")
                env = dict(os.environ, MEMCACHED_PORT_FILENAME=port_file)
                self.proc = subprocess.Popen(self._command(fixed or -1), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                             preexec_fn=_die_with_parent, env=env)
                port = fixed or self._read_port_file(port_file, timeout)
            if port:
                self.port = port
                if self._wait_ready(timeout):
                    return self
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = (self.proc.stderr.read() or b"").decode(errors="replace")
            self._kill()
        raise RuntimeError("memcached did not start%s: %s"
                           % (" on port %d" % fixed if fixed else "", err.strip() or "no error output"))

    def _read_port_file(self, path: str, timeout: float) -> int:
        """The TCP port memcached wrote to ``MEMCACHED_PORT_FILENAME``
        (it writes ``<path>.lck`` and renames it, so a file seen is whole)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return 0
            try:
                with open(path) as f:
                    text = f.read()
            except FileNotFoundError:
                time.sleep(0.005)
                continue
            for line in text.splitlines():
                if line.startswith("TCP INET:"):
                    return int(line.split(":")[1])
            return 0
        return 0

    def _wait_ready(self, timeout: float) -> bool:
        """Wait until the port answers and it is *this* memcached answering
        (its ``stats`` report our child's pid), not another process that
        happens to listen on the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=5) as sock:
                    if "binary" in self.extra_args:  # -B binary: no text "stats"; the port file is the proof
                        return True
                    sock.sendall(b"stats\r\n")
                    data = b""
                    while not data.endswith(b"END\r\n"):
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
            except OSError:
                time.sleep(0.02)
                continue
            return (b"STAT pid %d\r\n" % self.proc.pid) in data
        return False

    def pause(self, timeout: float = 10.0) -> None:
        """Freeze the server (SIGSTOP): it keeps its sockets but answers nothing.

        Returns once every thread of the server is stopped (read from
        ``/proc`` on Linux), so not one more request is served after this
        returns; raises :class:`~couchbase_core.testing.signals.SignalNotObserved`
        if that does not happen within ``timeout`` seconds."""
        assert self.proc is not None
        self.paused = True
        stop_process(self.proc.pid, timeout, "memcached on %s" % self.address)

    def resume(self, timeout: float = 10.0) -> None:
        """Thaw a paused server (SIGCONT); returns once no thread of it is
        stopped any more (bounded like :meth:`pause`)."""
        assert self.proc is not None
        continue_process(self.proc.pid, timeout, "memcached on %s" % self.address)
        self.paused = False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), even while it is paused: its
        connections are reset without another byte being answered."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(5)
        self.paused = False
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port (all data is lost)."""
        self.stop()
        self.start()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.paused:
            try:
                proc.send_signal(signal.SIGCONT)
            except OSError:
                pass
            self.paused = False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()

    def stop(self) -> None:
        """Stop the server."""
        self._kill()

    def __enter__(self) -> "MemcachedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

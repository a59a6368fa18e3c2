"""One adapter per client under test.

An adapter is opened once per worker process. ``ops(n)`` hands out ``n``
per-greenlet ``(get, set, get_multi)`` triples, configured the way that
client is meant to be used under gevent, and ``release()`` gives back
whatever ``ops`` opened. ``get`` returns the value as ``bytes`` (``None`` if
the key is missing), ``set`` stores ``bytes`` and waits for the server to
confirm, and ``get_multi`` returns something whose ``len`` is the number of
keys found; ``multi_values`` is the same call with the values unwrapped,
used only to check results outside the timed loop.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

Ops = Tuple[Callable[[str], Any], Callable[[str, bytes], Any], Callable[[List[str]], Any]]


class Adapter:
    name = ""
    #: True if the worker must call gevent's monkey.patch_all() first.
    monkeypatch = False

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def version(self) -> str:
        raise NotImplementedError

    def ops(self, n: int) -> List[Ops]:
        raise NotImplementedError

    def multi_values(self, ops: Ops, keys: List[str]) -> Dict[str, bytes]:
        return dict(ops[2](keys))

    def release(self) -> None:
        pass

    def close(self) -> None:
        self.release()


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


class GCouchbase(Adapter):
    """One gcouchbase Bucket for the whole process, shared by every greenlet."""

    name = "gcouchbase"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        from couchbase_core import FMT_BYTES
        from couchbase_core.exceptions import NotFoundError
        from gcouchbase.bucket import Bucket

        self.bucket = cb = Bucket("memcached://%s:%d" % (host, port), default_format=FMT_BYTES)
        cb_get = cb.get

        def get(key: str) -> Any:
            try:
                return cb_get(key).value
            except NotFoundError:
                return None

        self._ops: Ops = (get, cb.upsert, cb.get_multi)

    def version(self) -> str:
        import couchbase_core

        return couchbase_core.__version__

    def ops(self, n: int) -> List[Ops]:
        return [self._ops] * n

    def multi_values(self, ops: Ops, keys: List[str]) -> Dict[str, bytes]:
        return {k: r.value for k, r in ops[2](keys).items()}

    def close(self) -> None:
        self.bucket.close()


class PyMemcache(Adapter):
    """pymemcache's PooledClient sized to the greenlet count, so each greenlet
    gets a connection of its own (its recommended setup under gevent).
    ``default_noreply=False`` makes ``set`` wait for the server's STORED, as
    every other client here does; pymemcache's default would fire and forget."""

    name = "pymemcache"
    monkeypatch = True

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._clients: List[Any] = []

    def version(self) -> str:
        return _dist_version("pymemcache")

    def ops(self, n: int) -> List[Ops]:
        from pymemcache.client.base import PooledClient

        client = PooledClient((self.host, self.port), max_pool_size=n, no_delay=True,
                              default_noreply=False)
        self._clients.append(client)
        return [(client.get, client.set, client.get_many)] * n

    def release(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()


class BinaryMemcached(Adapter):
    """python-binary-memcached: one ``bmemcached.Client`` per greenlet (a
    client holds one socket and is not safe to share). Compression is turned
    off on ``set``: the values are random bytes, so zlib would only burn CPU
    trying, and no other client compresses."""

    name = "bmemcached"
    monkeypatch = True

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._clients: List[Any] = []

    def version(self) -> str:
        return _dist_version("python-binary-memcached")

    def ops(self, n: int) -> List[Ops]:
        import bmemcached

        out: List[Ops] = []
        for _ in range(n):
            client = bmemcached.Client(["%s:%d" % (self.host, self.port)])
            self._clients.append(client)

            def put(key: str, value: bytes, _set: Any = client.set) -> Any:
                return _set(key, value, compress_level=0)

            out.append((client.get, put, client.get_multi))
        return out

    def release(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            client.disconnect_all()


class Raw(Adapter):
    """The hand-written baseline of :mod:`bench.rawloop`: one socket, shared."""

    name = "raw"

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        from bench.rawloop import RawClient

        self.client = c = RawClient(host, port)
        self._ops: Ops = (c.get, c.set, c.get_multi)

    def version(self) -> str:
        return "bench.rawloop"

    def ops(self, n: int) -> List[Ops]:
        return [self._ops] * n

    def close(self) -> None:
        self.client.close()


ADAPTERS = {cls.name: cls for cls in (GCouchbase, PyMemcache, BinaryMemcached, Raw)}
CLIENT_NAMES = list(ADAPTERS)

"""``config_cache``: keep the cluster config in a file between runs.

libcouchbase's ``config_cache=<path>`` (2.x: the connection-string option,
or the deprecated ``config_cache=`` keyword) writes each cluster config the
client receives to ``<path>``, and at the next start bootstraps from it.
Here:

* :func:`load` (at bucket construction) reads the file; when it holds a
  valid config *of this bucket*, its nodes become the first bootstrap seeds
  (KV nodes for CCCP, management nodes for HTTP), ahead of the connection
  string's hosts. The config itself is not trusted: the bootstrap still
  fetches the current one from the first node that answers, so a stale file
  (nodes gone, moved ports) only costs the failed attempts on its nodes
  before the connection string's hosts are tried.
* A missing, unreadable, corrupt or foreign (other bucket) file is logged
  (WARNING, logger ``couchbase_core.engine``) and bootstrap goes on from the
  connection string; the file is then rewritten with the config received.
* :class:`CacheWriter` is registered as a config listener of the engine: it
  rewrites the file whenever a newer config is applied, atomically (a
  temporary file in the same directory, then ``os.replace``), so readers
  never see half a file. Write failures are logged once per bucket.

The file holds the config JSON as received (with ``$HOST`` resolved).
Memcached buckets (``memcached://``) have no cluster config: the option is
warned about there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, List, Tuple

from couchbase_core._engine.config import BucketConfig, ConfigError

__all__ = ["load", "CacheWriter", "MAX_CACHE_SIZE"]

log = logging.getLogger("couchbase_core.engine")

#: Largest cache file read (a config of a 1024-vBucket, 100-node cluster is
#: well under 1 MiB); a bigger file is treated as corrupt.
MAX_CACHE_SIZE = 16 * 1024 * 1024

Seeds = List[Tuple[str, int]]


def load(path: str, bucket: str, tls: bool) -> Tuple[Seeds, Seeds]:
    """(KV seeds, management seeds) from the cache file at ``path``, or two
    empty lists when there is no usable config of ``bucket`` in it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CACHE_SIZE + 1)
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        log.warning("config_cache %s cannot be read (%s); bootstrapping from the connection string", path, exc)
        return [], []
    why = _unusable(data, bucket)
    if why:
        log.warning("config_cache %s is unusable (%s); bootstrapping from the connection string", path, why)
        return [], []
    cfg = BucketConfig.parse(data, "localhost", tls=tls)
    kv = list(dict.fromkeys(cfg.servers))
    mgmt = list(dict.fromkeys(cfg.service_endpoints("mgmt", tls=tls)))
    return kv, mgmt


def _unusable(data: bytes, bucket: str) -> str:
    """Why ``data`` cannot seed a bootstrap of ``bucket`` ('' if it can)."""
    if len(data) > MAX_CACHE_SIZE:
        return "larger than %d bytes" % MAX_CACHE_SIZE
    try:
        cfg = BucketConfig.parse(data, "localhost")
    except (ConfigError, ValueError, UnicodeDecodeError) as exc:
        return "not a cluster config: %s" % exc
    if cfg.name != bucket:
        return "it is a config of bucket %r, not %r" % (cfg.name, bucket)
    if not cfg.servers:
        return "it lists no KV node"
    return ""


class CacheWriter:
    """Engine config listener writing each applied config to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.written = 0
        self._warned = False

    def __call__(self, cfg: Any) -> None:
        """Write ``cfg`` (a BucketConfig) atomically; log a failure once."""
        try:
            text = json.dumps(cfg.raw, separators=(",", ":")).encode("utf-8")
            directory = os.path.dirname(os.path.abspath(self.path))
            fd, tmp = tempfile.mkstemp(prefix=".config_cache.", dir=directory)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self.written += 1
        except (OSError, TypeError, ValueError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("config_cache %s cannot be written: %s", self.path, exc)

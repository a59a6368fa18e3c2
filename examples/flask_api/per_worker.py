"""The catalogue with one Bucket per gunicorn worker process.

Run it (from this directory, ``CATALOG_CONNSTR`` set)::

    gunicorn -k gevent -w 2 -c per_worker_conf.py per_worker:app

Each worker opens its own Bucket after the fork: ``per_worker_conf.py``
calls :func:`open_bucket` from gunicorn's ``post_fork`` hook, so the worker
connects before it takes its first request. Without that hook (another
server, ``flask run``) the first request opens it: :func:`bucket` is lazy,
and a lock makes the greenlets that arrive together wait for one bootstrap
rather than start one each.

The master process never connects to the cluster.
"""

from __future__ import annotations

import os
from typing import Optional

from catalog import create_app, settings_from_environment
from gevent.lock import Semaphore

from gcouchbase.bucket import Bucket

_bucket: Optional[Bucket] = None
_bucket_pid: Optional[int] = None
_opening = Semaphore()


def open_bucket() -> Bucket:
    """This process's Bucket, opened on the first call (in this process)."""
    global _bucket, _bucket_pid
    if _bucket is None or _bucket_pid != os.getpid():
        with _opening:
            if _bucket is None or _bucket_pid != os.getpid():
                _bucket = Bucket(**settings_from_environment())
                _bucket_pid = os.getpid()
    return _bucket


def bucket() -> Bucket:
    """The Bucket for the current request (see :func:`open_bucket`)."""
    if _bucket is not None and _bucket_pid == os.getpid():
        return _bucket
    return open_bucket()


def bucket_origin() -> Optional[int]:
    """The process that opened the Bucket, if it is open."""
    return _bucket_pid


app = create_app(bucket, bucket_origin)

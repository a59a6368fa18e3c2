"""The catalogue with one Bucket made before gunicorn forks its workers.

Run it (from this directory, ``CATALOG_CONNSTR`` set)::

    gunicorn -k gevent -w 2 --preload preloaded:app

With ``--preload`` the master imports this module, so :data:`bucket` is
created (and bootstraps) in the master; then the workers are forked and
each uses the same module-level object. The client notices the fork in
each child: the child drops the connections it inherited without touching
them (they belong to the master) and bootstraps its own on first use, so
no worker ever reads a reply meant for another process
(``docs/gevent.md``, "Forks"). The master's own connections stay idle.
"""

from __future__ import annotations

import os

from catalog import create_app, settings_from_environment

from gcouchbase.bucket import Bucket

#: Made at import: in the gunicorn master under --preload.
bucket = Bucket(**settings_from_environment())
#: The process that made it (the master, under --preload).
created_by = os.getpid()

app = create_app(lambda: bucket, lambda: created_by)

"""gunicorn settings for ``per_worker:app``: each worker opens its Bucket
right after the fork.

``post_fork`` runs in the new worker process, before the gevent worker
monkey-patches and re-initialises its hub and before it imports the
application (it does here: the hook imports it). A gevent Bucket made
there works: it talks to the hub directly (no patching needed), and the
hub's re-initialisation re-arms its watchers.
"""

worker_class = "gevent"


def post_fork(server, worker):
    """Open this worker's Bucket (one per process; see ``per_worker.py``)."""
    import per_worker

    per_worker.open_bucket()
    server.log.info("worker %s: bucket opened", worker.pid)

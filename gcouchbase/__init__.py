"""gcouchbase: a Couchbase client for gevent.

:class:`gcouchbase.bucket.Bucket` has the whole blocking API of
:class:`couchbase_core.bucket.Bucket`, but every call is cooperative: the
calling greenlet sleeps while the gevent hub runs the others, and any number
of greenlets can share one bucket and its sockets (requests are pipelined).
"""

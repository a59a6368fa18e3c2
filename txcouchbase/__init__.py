"""Couchbase for Twisted: the 2.x ``txcouchbase`` package.

:class:`txcouchbase.bucket.Bucket` returns a Deferred from every operation;
:class:`txcouchbase.bucket.RawBucket` returns the lower-level AsyncResult.
Both run on the Twisted reactor through :class:`txcouchbase.iops.IOPS`.
"""

"""Callback-based API: :class:`~couchbase_core.asynchronous.bucket.AsyncBucket`
driven by an IOPS the caller supplies (see ``docs/async.md``)."""

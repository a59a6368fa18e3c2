"""The bucket API, written once.

:class:`BaseBucket` holds every public operation: it checks the arguments,
encodes keys and values, builds the engine operations and hands them to a
*waiting strategy*, which is all the three bucket flavours differ in:

* :class:`couchbase_core.bucket.Bucket` runs a private select loop until the
  operations are done;
* :class:`couchbase_core.asynchronous.bucket.AsyncBucket` returns an
  :class:`~couchbase_core.result.AsyncResult` at once;
* :class:`gcouchbase.bucket.Bucket` parks the calling greenlet on a waiter
  that the operation's completion switches back to.

A strategy implements :meth:`BaseBucket._run_one` (one operation; return its
result or raise), :meth:`BaseBucket._run_many` (a ``_multi`` call) and
:meth:`BaseBucket._wait_latch` (wait until a :class:`Latch` reaches zero).

:class:`BaseBucket` is assembled from one mixin per job; each lives in a
module of its own:

* :mod:`couchbase_core._bucket_core` (``BucketCore``): construction,
  settings properties (``timeout``, ``quiet``, ``transcoder``...), ``close``;
* :mod:`couchbase_core._bucket_submit` (``SubmitMixin``): the strategy
  methods above and ``_one``/``_many``/``_collect``, where every operation
  leaves the bucket;
* :mod:`couchbase_core._bucket_scope` (``CallerScopeMixin``): pipelines and
  durability blocks, kept per calling greenlet/thread/context in
  ContextVars (``Pipeline``, ``DurabilityContext``, ``_send_pipeline``);
* :mod:`couchbase_core._bucket_args` (``ArgumentsMixin``): argument checks
  (ttl, cas, format, persist_to...) and key/value encoding;
* :mod:`couchbase_core._bucket_kv` (``KeyValueMixin``): single-key
  operations, counters, replica reads, locks, sub-document calls;
* :mod:`couchbase_core._bucket_multi` (``MultiMixin``): the ``*_multi``
  operations and the KeyBatch they build;
* :mod:`couchbase_core._bucket_structures` (``DataStructuresMixin``):
  ``map_*``, ``list_*``, ``set_*``, ``queue_*``;
* :mod:`couchbase_core._bucket_admin` (``AdminMixin``): observe, endure,
  stats, ping, flush, diagnostics, ``bucket_manager``;
* :mod:`couchbase_core._bucket_query` (``QueryMixin``): view and N1QL
  queries;
* :mod:`couchbase_core._latch`: :class:`Latch`, the completion counter
  (also used by the row streams, which is why it sits below all of these).

The mixins call each other's methods through ``self``; only this class
combines them, so the method lookup on the hot path is one cached MRO
lookup, as for a single class.
"""

from __future__ import annotations

from couchbase_core._bucket_admin import AdminMixin, PingStatus
from couchbase_core._bucket_args import ArgumentsMixin
from couchbase_core._bucket_core import BucketCore
from couchbase_core._bucket_kv import KeyValueMixin
from couchbase_core._bucket_multi import MultiMixin
from couchbase_core._bucket_query import QueryMixin
from couchbase_core._bucket_scope import (  # noqa: F401  (_PIPELINES.. re-exported for the flavours)
    _PIPELINES,
    CallerScopeMixin,
    DurabilityContext,
    Pipeline,
    _Frame,
    _pop_frame,
    _push_frame,
)
from couchbase_core._bucket_structures import DataStructuresMixin
from couchbase_core._bucket_submit import SubmitMixin
from couchbase_core._latch import Latch, _Collector  # noqa: F401  (_Collector re-exported for the flavours)

__all__ = ["BaseBucket", "Latch", "Pipeline", "PingStatus", "DurabilityContext"]


class BaseBucket(KeyValueMixin, MultiMixin, DataStructuresMixin, AdminMixin, QueryMixin,
                 CallerScopeMixin, SubmitMixin, ArgumentsMixin, BucketCore):
    """Every bucket operation (see the module docs). Not used directly."""

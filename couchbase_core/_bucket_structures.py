"""Data structures stored as JSON documents: maps, lists, sets, queues.

Simple changes are one ``mutate_in``; reads and read-modify-write steps are
generators run by a :class:`~couchbase_core._kvops.ChainOp`, so they work the
same under every waiting strategy (and retry on a concurrent change when no
CAS was given). Couchbase buckets only.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

from couchbase_core import subdocument as SD
from couchbase_core._bucket_args import _cas, _check_int, _ttl
from couchbase_core._engine.protocol import SubdocDocFlag
from couchbase_core._kvops import ChainOp, GetOp, SubdocLookupOp, SubdocMutateOp
from couchbase_core.exceptions import RC, rc_description
from couchbase_core.result import OperationResult, SubdocResult, ValueResult

__all__ = ["DataStructuresMixin"]


class DataStructuresMixin:
    """map_*, list_*, set_* and queue_* of :class:`~couchbase_core._bucketbase.BaseBucket`."""

    def _ds_lookup(self, key: Any, spec: Any) -> SubdocLookupOp:
        return SubdocLookupOp(key, self._kb(key), self._subdoc_specs((spec,), True), 0, self._timeout)

    def _ds_mutate(self, key: Any, spec: Any, cas: int = 0, create: bool = False, ttl: int = 0,
                   extras: Tuple[Optional[tuple], bytes] = (None, b"")) -> SubdocMutateOp:
        op = SubdocMutateOp(key, self._kb(key), self._subdoc_specs((spec,), False),
                            SubdocDocFlag.MKDOC if create else 0, _ttl(ttl), _cas(cas), self._timeout)
        return self._with_durability(op, extras)

    @staticmethod
    def _ds_cas_mismatch(key: Any, cas: int, current: int) -> Optional[OperationResult]:
        """The failure for a read-modify-write whose caller's CAS is stale."""
        if not cas or cas == current:
            return None
        res = OperationResult(key, RC.KEY_EEXISTS)
        res._message = "the document's CAS is no longer %d" % cas
        return res

    def _ds_chain(self, key: Any, steps: Callable[[], Any], quiet: bool = False) -> Any:
        self._require_couchbase("data structures", "plain memcached has no sub-document API")
        self._kb(key)
        return self._one(ChainOp(key, steps, self._timeout * 4), quiet)

    def _ds_value_at(self, key: Any, spec: Any) -> Any:
        """Chain: the value at one path as a ValueResult."""
        def steps() -> Any:
            res = yield self._ds_lookup(key, spec)
            if res.rc and res.rc != RC.SUBDOC_MULTI_PATH_FAILURE:
                return res
            rc, value = res._results[0]
            out = ValueResult(key, rc, res.cas, value if not rc else None)
            if rc:
                out._message = "%s (path %r)" % (rc_description(rc), spec.path)
            return out
        return self._ds_chain(key, steps)

    def _ds_summary(self, key: Any, summarise: Callable[[Any], Any], want: type) -> Any:
        """``summarise(doc)`` itself, as 2.x returned it (an ``int`` size, a
        ``bool`` membership); an AsyncBucket's result holds it in ``value``."""
        res = self._ds_document(key, summarise, want)
        # None inside a pipeline: the result is in Pipeline.results later.
        return res if res is None or self._is_async else res.value

    def _ds_document(self, key: Any, summarise: Callable[[Any], Any], want: type) -> Any:
        """Chain: read the whole document and return ``summarise(doc)``."""
        def steps() -> Any:
            res = yield GetOp(key, self._kb(key), 0, self._timeout, self._transcoder, False)
            if res.rc:
                return res
            if not isinstance(res.value, want):
                bad = ValueResult(key, RC.SUBDOC_PATH_MISMATCH)
                bad._message = "the document is not a JSON %s" % ("array" if want is list else "object")
                return bad
            return ValueResult(key, 0, res.cas, summarise(res.value), res.flags)
        return self._ds_chain(key, steps)

    def map_add(self, key: Any, mapkey: str, value: Any, create: bool = False, **kwargs: Any) -> SubdocResult:
        """Set ``mapkey`` of the JSON object stored at ``key`` (create the
        document if ``create``)."""
        self._require_couchbase("map_add", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.upsert(mapkey, value), create_doc=create, **kwargs)

    def map_get(self, key: Any, mapkey: str) -> ValueResult:
        """Value of ``mapkey`` in the object at ``key`` (a ValueResult). A
        missing ``mapkey`` raises SubdocPathNotFoundError, an IndexError (2.x)."""
        return self._ds_value_at(key, SD.get(mapkey))

    def map_remove(self, key: Any, mapkey: str, **kwargs: Any) -> SubdocResult:
        """Remove ``mapkey`` from the object at ``key``."""
        self._require_couchbase("map_remove", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.remove(mapkey), **kwargs)

    def map_size(self, key: Any) -> Any:
        """Number of entries of the object at ``key`` (an ``int``)."""
        return self._ds_summary(key, len, dict)

    def list_append(self, key: Any, value: Any, create: bool = False, **kwargs: Any) -> SubdocResult:
        """Add ``value`` at the end of the JSON array at ``key``."""
        self._require_couchbase("list_append", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.array_append("", value), create_doc=create, **kwargs)

    def list_prepend(self, key: Any, value: Any, create: bool = False, **kwargs: Any) -> SubdocResult:
        """Add ``value`` at the start of the JSON array at ``key``."""
        self._require_couchbase("list_prepend", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.array_prepend("", value), create_doc=create, **kwargs)

    def list_set(self, key: Any, index: int, value: Any, **kwargs: Any) -> SubdocResult:
        """Replace the element at ``index`` of the array at ``key``."""
        self._require_couchbase("list_set", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.replace("[%d]" % _check_int(index, "index", -2 ** 31, 2 ** 31), value),
                              **kwargs)

    def list_get(self, key: Any, index: int) -> ValueResult:
        """Element ``index`` of the array at ``key`` (a ValueResult). A
        missing index raises SubdocPathNotFoundError, an IndexError (2.x)."""
        return self._ds_value_at(key, SD.get("[%d]" % _check_int(index, "index", -2 ** 31, 2 ** 31)))

    def list_remove(self, key: Any, index: int, **kwargs: Any) -> SubdocResult:
        """Remove element ``index`` of the array at ``key``."""
        self._require_couchbase("list_remove", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.remove("[%d]" % _check_int(index, "index", -2 ** 31, 2 ** 31)), **kwargs)

    def list_size(self, key: Any) -> Any:
        """Number of elements of the array at ``key`` (an ``int``)."""
        return self._ds_summary(key, len, list)

    def set_add(self, key: Any, value: Any, create: bool = False, cas: int = 0, ttl: int = 0,
                persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> Any:
        """Add a primitive ``value`` to the array at ``key`` unless present.
        Returns the OperationResult, or None if the value was already there
        (an AsyncBucket's result then has ``cas == 0``)."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        spec = SD.array_addunique("", value)

        def steps() -> Any:
            res = yield self._ds_mutate(key, spec, cas=cas, create=create, ttl=ttl, extras=extras)
            if res.rc == RC.SUBDOC_PATH_EEXISTS:
                present = OperationResult(key, 0, 0)
                return present
            return res
        res = self._ds_chain(key, steps)
        if isinstance(res, OperationResult) and not self._is_async and res.cas == 0:
            return None
        return res

    def set_remove(self, key: Any, value: Any, cas: int = 0, persist_to: int = 0, replicate_to: int = 0,
                   durability_level: int = 0) -> Any:
        """Remove ``value`` from the array at ``key``. Returns the
        OperationResult, or None if it was not there (async: ``cas == 0``).
        With ``cas``, fails with KeyExistsError if the document changed;
        without, a concurrent change makes it read and try again."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)

        def steps() -> Any:
            while True:
                res = yield GetOp(key, self._kb(key), 0, self._timeout, self._transcoder, False)
                if res.rc:
                    return res
                stale = self._ds_cas_mismatch(key, cas, res.cas)
                if stale is not None:
                    return stale
                items = res.value if isinstance(res.value, list) else []
                if value not in items:
                    return OperationResult(key, 0, 0)
                index = items.index(value)
                out = yield self._ds_mutate(key, SD.remove("[%d]" % index), cas=res.cas, extras=extras)
                if out.rc != RC.KEY_EEXISTS or cas:
                    return out
        res = self._ds_chain(key, steps)
        if isinstance(res, OperationResult) and not self._is_async and res.cas == 0:
            return None
        return res

    def set_size(self, key: Any) -> Any:
        """Number of elements of the set (array) at ``key`` (an ``int``)."""
        return self._ds_summary(key, len, list)

    def set_contains(self, key: Any, value: Any) -> Any:
        """Whether ``value`` is in the set at ``key`` (a ``bool``)."""
        return self._ds_summary(key, lambda items: value in items, list)

    def queue_push(self, key: Any, value: Any, create: bool = False, **kwargs: Any) -> SubdocResult:
        """Push ``value`` onto the queue (array) at ``key``."""
        self._require_couchbase("queue_push", "plain memcached has no sub-document API")
        return self.mutate_in(key, SD.array_prepend("", value), create_doc=create, **kwargs)

    def queue_pop(self, key: Any, cas: int = 0, persist_to: int = 0, replicate_to: int = 0,
                  durability_level: int = 0) -> ValueResult:
        """Remove and return the oldest element of the queue at ``key`` (a
        ValueResult). Raises QueueEmpty when it is empty. With ``cas``,
        fails with KeyExistsError if the document changed; without, a
        concurrent change makes it read and try again."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)

        def steps() -> Any:
            while True:
                res = yield self._ds_lookup(key, SD.get("[-1]"))
                if res.rc and res.rc != RC.SUBDOC_MULTI_PATH_FAILURE:
                    return res
                stale = self._ds_cas_mismatch(key, cas, res.cas)
                if stale is not None:
                    return stale
                rc, value = res._results[0]
                if rc:
                    empty = ValueResult(key, RC.QUEUE_EMPTY)
                    empty._message = "the queue %r is empty" % (key,)
                    return empty
                out = yield self._ds_mutate(key, SD.remove("[-1]"), cas=res.cas, extras=extras)
                if out.rc == RC.KEY_EEXISTS and not cas:
                    continue  # changed meanwhile: try again
                if out.rc:
                    return out
                return ValueResult(key, 0, out.cas, value)
        return self._ds_chain(key, steps)

    def queue_size(self, key: Any) -> Any:
        """Number of elements in the queue at ``key`` (an ``int``)."""
        return self._ds_summary(key, len, list)

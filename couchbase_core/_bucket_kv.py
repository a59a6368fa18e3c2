"""Single-key operations: store, get, touch, remove, counters, replica
reads, locks and sub-document calls.

Each method checks its arguments, builds one engine operation
(:mod:`couchbase_core._kvops`) and hands it to ``_one``. ``get`` and
``upsert`` are the hot path: keep them free of extra calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

from couchbase_core import subdocument as SD
from couchbase_core._bucket_args import (
    _MAX_KEY,
    _STORE_EXTRAS,
    _TTL,
    _U64,
    _cas,
    _check_int,
    _ttl,
)
from couchbase_core._bucket_scope import _PIPELINES
from couchbase_core._engine.protocol import (
    COUNTER_NO_CREATE,
    Opcode,
    SubdocDocFlag,
    counter_request,
)
from couchbase_core._kvops import (
    CounterOp,
    GetOp,
    LockOp,
    RemoveOp,
    ReplicaGetOp,
    StoreOp,
    SubdocLookupOp,
    SubdocMutateOp,
    TouchOp,
)
from couchbase_core.exceptions import RC, ArgumentError, NotSupportedError

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from couchbase_core.result import OperationResult, SubdocResult, ValueResult

__all__ = ["KeyValueMixin"]


class KeyValueMixin:
    """Single-key operations of :class:`~couchbase_core._bucketbase.BaseBucket`."""

    # ------------------------------------------------------- single-key ops

    def _store_parts(self, opcode: int, key: Any, value: Any, cas: Any, ttl: Any, fmt: Any) -> tuple:
        kb = self._kb(key)
        data, flags = self._encode(key, value, fmt)
        return opcode, kb, _STORE_EXTRAS.pack(flags, _ttl(ttl)), data, _cas(cas)

    def _store_op(self, opcode: int, key: Any, value: Any, cas: Any, ttl: Any, fmt: Any) -> StoreOp:
        opcode, kb, extras, data, cas = self._store_parts(opcode, key, value, cas, ttl, fmt)
        return StoreOp(key, opcode, kb, extras, data, cas, self._timeout)

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> OperationResult:
        """Store ``value`` under ``key``, creating or replacing it.

        Args:
            key: ``str`` or ``bytes``, 1 to 250 bytes once encoded.
            value: the value, encoded according to ``format``.
            cas: if non-zero, store only if the document's CAS still equals it.
            ttl: expiry: 0 = never; up to 30 days = seconds from now; more
                = an absolute Unix time.
            format: one of the ``FMT_*`` constants (default: the bucket's
                ``default_format``, ``FMT_JSON``).
            persist_to, replicate_to: wait until the mutation is persisted
                on / replicated to that many nodes (observe-based; -1 = all;
                Couchbase buckets only).
            durability_level: synchronous replication instead (one of the
                ``DURABILITY_*`` constants; Couchbase Server 6.5+).

        Returns:
            :class:`~couchbase_core.result.OperationResult` with the new CAS.

        Raises:
            KeyExistsError: ``cas`` did not match.
            ValueFormatError: the value cannot be encoded in ``format``.
            TooBigError: the encoded value is over the size limit.
            ArgumentError: a bad key, ttl, cas or format.
        """
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._store_op(Opcode.SET, key, value, cas, ttl, format), extras))

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> OperationResult:
        """Store ``value`` only if ``key`` does not exist yet
        (:class:`KeyExistsError` otherwise). Arguments as :meth:`upsert`."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._store_op(Opcode.ADD, key, value, 0, ttl, format), extras))

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> OperationResult:
        """Store ``value`` only if ``key`` exists (:class:`NotFoundError`
        otherwise). Arguments as :meth:`upsert`."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._store_op(Opcode.REPLACE, key, value, cas, ttl, format),
                                               extras))

    def _concat_parts(self, opcode: int, key: Any, value: Any, cas: Any, fmt: Any) -> tuple:
        kb = self._kb(key)
        return opcode, kb, b"", self._fragment(key, value, fmt), _cas(cas)

    def _concat_op(self, opcode: int, key: Any, value: Any, cas: Any, fmt: Any) -> StoreOp:
        opcode, kb, extras, data, cas = self._concat_parts(opcode, key, value, cas, fmt)
        return StoreOp(key, opcode, kb, extras, data, cas, self._timeout)

    def append(self, key: Any, value: Any, cas: int = 0, format: Optional[int] = None,  # noqa: A002
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> OperationResult:
        """Append ``value`` (``str`` or ``bytes``) to the stored bytes of an
        existing key (:class:`NotStoredError` if it does not exist)."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._concat_op(Opcode.APPEND, key, value, cas, format), extras))

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Optional[int] = None,  # noqa: A002
                persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> OperationResult:
        """Prepend ``value`` to the stored bytes of an existing key."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        return self._one(self._with_durability(self._concat_op(Opcode.PREPEND, key, value, cas, format), extras))

    def get(self, key: Any, ttl: int = 0, quiet: Optional[bool] = None, replica: bool = False,
            no_format: bool = False) -> ValueResult:
        """Read ``key``.

        Args:
            ttl: if non-zero, also set the expiry (get-and-touch).
            quiet: if true, a missing key returns a result with
                ``success == False`` instead of raising NotFoundError
                (default: the bucket's ``quiet``).
            replica: read from a replica (Couchbase buckets only).
            no_format: return the stored bytes undecoded.

        Returns:
            :class:`~couchbase_core.result.ValueResult`.
        """
        if replica:
            if ttl:
                raise ArgumentError("a replica read cannot change the expiry (ttl); replicas are read-only")
            op = self._replica_op(key, None, no_format)
            return self._one(op, self._quiet if quiet is None else quiet)
        tc = self._transcoder
        if type(key) is str and tc is None and key.isascii() and 0 < len(key) <= _MAX_KEY:
            kb = key.encode()  # the common key, checked inline (see _kb)
        else:
            kb = self._kb(key)
        if ttl:
            ttl = _ttl(ttl)
        op = GetOp(key, kb, ttl, self._timeout, tc, no_format or self._data_passthrough)
        if quiet is None:
            quiet = self._quiet
        if _PIPELINES.get() and self._pipeline is not None:
            return self._one(op, quiet)
        return self._run_one(op, quiet)

    def touch(self, key: Any, ttl: int = 0) -> OperationResult:
        """Set the expiry of ``key`` without reading it."""
        kb = self._kb(key)
        op = TouchOp(key, Opcode.TOUCH, kb, _TTL.pack(_ttl(ttl)), b"", 0, self._timeout)
        return self._one(op)

    def remove(self, key: Any, cas: int = 0, quiet: Optional[bool] = None,
               persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> OperationResult:
        """Delete ``key`` (only if its CAS equals ``cas`` when given). With
        ``quiet`` a missing key is not an error."""
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        kb = self._kb(key)
        op = RemoveOp(key, Opcode.DELETE, kb, b"", b"", _cas(cas), self._timeout)
        return self._one(self._with_durability(op, extras), self._quiet if quiet is None else quiet)

    def _counter_parts(self, key: Any, delta: Any, initial: Any, ttl: Any) -> tuple:
        kb = self._kb(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ArgumentError({"message": "delta must be an integer, not %s" % type(delta).__name__, "key": key})
        if not -_U64 <= delta <= _U64:
            raise ArgumentError({"message": "delta is out of the 64-bit range", "key": key})
        # As 2.x the ttl is checked even without ``initial`` (it then has no
        # effect: the protocol sets an expiry only when it creates the key).
        expiry = _ttl(ttl)
        if initial is None:
            expiry = 0
        else:
            initial = _check_int(initial, "initial", 0, _U64)
            if expiry == COUNTER_NO_CREATE:
                raise ArgumentError({"message": "ttl 0xFFFFFFFF is reserved by the protocol", "key": key})
        opcode, extras = counter_request(delta, initial, expiry)
        return opcode, kb, extras, b"", 0

    def _counter_op(self, key: Any, delta: Any, initial: Any, ttl: Any) -> CounterOp:
        opcode, kb, extras, _value, _cas0 = self._counter_parts(key, delta, initial, ttl)
        return CounterOp(key, opcode, kb, extras, b"", 0, self._timeout)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                durability_level: int = 0) -> ValueResult:
        """Add ``delta`` (negative: subtract; the server floors at 0) to the
        decimal number stored at ``key``.

        Args:
            initial: if given, create the key with this value when it does
                not exist (and ``ttl`` then applies); if None, a missing key
                raises NotFoundError.

        Returns:
            :class:`~couchbase_core.result.ValueResult` whose ``value`` is
            the new count (an ``int``).
        """
        extras = self._mutation_extras(0, 0, durability_level)
        return self._one(self._with_durability(self._counter_op(key, delta, initial, ttl), extras))

    def incr(self, key: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> ValueResult:
        """``counter(key, amount, ...)`` (2.x alias)."""
        return self.counter(key, amount, initial, ttl)

    def decr(self, key: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> ValueResult:
        """``counter(key, -amount, ...)`` (2.x alias)."""
        return self.counter(key, -amount, initial, ttl)

    # --- Couchbase-only operations ---------------------------------------------

    def _replica_list(self, replica_index: Optional[int]) -> List[int]:
        cfg = self._engine.config
        count = cfg.num_replicas if cfg is not None else 1
        if replica_index is None:
            if count < 1:
                raise NotSupportedError({"rc": RC.CLIENT_NOT_SUPPORTED,
                                         "message": "the bucket has no replicas configured"})
            return list(range(1, count + 1))
        index = _check_int(replica_index, "replica_index", 0, 3)
        if cfg is not None and index >= count:
            raise ArgumentError("replica_index %d: the bucket keeps %d replica(s)" % (index, count))
        return [index + 1]

    def _replica_op(self, key: Any, replica_index: Optional[int], no_format: bool = False) -> Any:
        self._require_couchbase("a replica read", "plain memcached keeps no replicas")
        kb = self._kb(key)
        return ReplicaGetOp(key, kb, self._replica_list(replica_index), self._engine, self._timeout,
                            self._transcoder, bool(no_format) or self._data_passthrough)

    def rget(self, key: Any, replica_index: Optional[int] = None, quiet: Optional[bool] = None,
             no_format: bool = False) -> ValueResult:
        """Read ``key`` from a replica: ``replica_index`` 0 for the first
        replica, 1 for the second...; None tries each replica in turn until
        one has it. Returns a :class:`ValueResult` (Couchbase buckets only)."""
        op = self._replica_op(key, replica_index, no_format)
        return self._one(op, self._quiet if quiet is None else quiet)

    def lock(self, key: Any, ttl: int = 0) -> ValueResult:
        """Read ``key`` and lock it for ``ttl`` seconds (0: the server's default,
        15 s; the server caps locks at 30 s and gives a longer request the
        default instead). Until it is unlocked (``unlock`` with the returned
        CAS, or a mutation with that CAS) or the lock expires, other mutations
        fail (:class:`LockedError` / :class:`TemporaryFailError`) and reads
        see CAS ``0xFFFFFFFFFFFFFFFF``. Couchbase buckets only."""
        self._require_couchbase("lock", "plain memcached has no document locking (GET_LOCKED)")
        kb = self._kb(key)
        op = LockOp(key, kb, _ttl(ttl), self._timeout, self._transcoder, self._data_passthrough)
        return self._one(op)

    def unlock(self, key: Any, cas: int) -> OperationResult:
        """Release a lock taken with :meth:`lock` (``cas`` from its result)."""
        self._require_couchbase("unlock", "plain memcached has no document locking (UNLOCK_KEY)")
        kb = self._kb(key)
        if not cas:
            raise ArgumentError({"message": "unlock needs the CAS returned by lock", "key": key})
        op = StoreOp(key, Opcode.UNLOCK_KEY, kb, b"", b"", _cas(cas), self._timeout)
        return self._one(op)

    # --- sub-document ------------------------------------------------------------

    def lookup_in(self, key: Any, *specs: Any, **kwargs: Any) -> SubdocResult:
        """Read paths inside a JSON document (Couchbase buckets only).

        ``specs`` are :func:`couchbase_core.subdocument.get`, ``exists`` and
        ``get_count``. Returns a :class:`~couchbase_core.result.SubdocResult`;
        a missing document raises NotFoundError (unless ``quiet=True``), a
        missing path does not: check ``result.exists(path)`` or index it.
        Keyword ``access_deleted=True`` reads a deleted document's xattrs.
        """
        self._require_couchbase("lookup_in", "plain memcached has no sub-document API")
        quiet = kwargs.pop("quiet", None)
        doc_flags = SubdocDocFlag.ACCESS_DELETED if kwargs.pop("access_deleted", False) else 0
        if kwargs:
            raise ArgumentError("unknown lookup_in argument(s): %s" % ", ".join(sorted(kwargs)))
        kb = self._kb(key)
        op = SubdocLookupOp(key, kb, self._subdoc_specs(specs, True), doc_flags, self._timeout)
        return self._one(op, self._quiet if quiet is None else bool(quiet))

    def retrieve_in(self, key: Any, *paths: Any) -> SubdocResult:
        """``lookup_in(key, get(path1), get(path2), ...)``."""
        return self.lookup_in(key, *(SD.get(p) for p in paths))

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0, create_doc: bool = False,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, access_deleted: bool = False, durability_level: int = 0) -> SubdocResult:
        """Change paths inside a JSON document, atomically (Couchbase buckets
        only). ``specs`` are the mutation builders of
        :mod:`couchbase_core.subdocument`.

        Args:
            cas: only if the document's CAS still equals it.
            ttl: new expiry of the document.
            create_doc / upsert_doc: create the document if it is missing.
            insert_doc: create the document; fail if it exists.

        Returns a :class:`~couchbase_core.result.SubdocResult` (counter
        specs' new values are in it). If a spec fails, nothing is changed and
        that spec's error is raised (e.g. SubdocPathExistsError).
        """
        self._require_couchbase("mutate_in", "plain memcached has no sub-document API")
        extras = self._mutation_extras(persist_to, replicate_to, durability_level)
        if insert_doc and (create_doc or upsert_doc):
            raise ArgumentError("insert_doc cannot be combined with create_doc/upsert_doc")
        doc_flags = ((SubdocDocFlag.MKDOC if (create_doc or upsert_doc) else 0)
                     | (SubdocDocFlag.ADD if insert_doc else 0))
        if access_deleted:
            doc_flags |= SubdocDocFlag.ACCESS_DELETED
        kb = self._kb(key)
        op = SubdocMutateOp(key, kb, self._subdoc_specs(specs, False), doc_flags, _ttl(ttl), _cas(cas),
                            self._timeout)
        return self._one(self._with_durability(op, extras))

    # ------------------------------------------- 2.x deprecated aliases

    def set(self, *args: Any, **kwargs: Any) -> OperationResult:
        """Deprecated 1.x/2.x name of :meth:`upsert` (DeprecationWarning)."""
        _deprecated("set", "upsert")
        return self.upsert(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> OperationResult:
        """Deprecated 1.x/2.x name of :meth:`insert` (DeprecationWarning)."""
        _deprecated("add", "insert")
        return self.insert(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> OperationResult:
        """Deprecated 1.x/2.x name of :meth:`remove` (DeprecationWarning)."""
        _deprecated("delete", "remove")
        return self.remove(*args, **kwargs)


def _deprecated(old: str, new: str) -> None:
    """The 2.x deprecation warning, attributed to the caller of ``old``."""
    import warnings

    warnings.warn("%s is deprecated. Use %s instead" % (old, new), DeprecationWarning, stacklevel=3)

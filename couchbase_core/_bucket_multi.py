"""The ``_multi`` operations: many keys in one call.

Each ``*_multi`` method turns its input (a dict, an iterable of keys, an
:class:`~couchbase_core.items.ItemCollection`) into entries, builds one
request per entry into a :class:`~couchbase_core._kvops.KeyBatch` (a key
that fails its checks gets a failed result of its own instead) and collects
the results in a :class:`~couchbase_core.result.MultiResult`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from couchbase_core._bucket_args import _MAX_KEY, _TTL, _cas, _ttl
from couchbase_core._engine.protocol import Opcode
from couchbase_core._kvops import KIND_COUNTER, KIND_GET, KIND_MUTATION, KeyBatch
from couchbase_core.exceptions import ArgumentError, CouchbaseError, NotSupportedError
from couchbase_core.items import Item, ItemCollection, checked_item
from couchbase_core.result import MultiResult, OperationResult, Result, ValueResult

__all__ = ["MultiMixin"]


_NO_OPTIONS: Dict[str, Any] = {}

#: Keys per batch: a bigger ``_multi`` call is sent as several batches, and
#: the gevent hub gets a turn between them (no call holds it for long).
_CHUNK = 1024


def _key_entry(key: Any, value: Any, scalar: Optional[str]) -> Tuple[Any, Any, Optional[Item], Dict[str, Any]]:
    """The entry of ``key`` in a dict of key -> options (a dict of options,
    or one value for the ``scalar`` option, or None)."""
    if isinstance(value, dict):
        return key, None, None, dict(value)
    if scalar is not None and value is not None:
        return key, None, None, {scalar: value}
    return key, None, None, _NO_OPTIONS


def _item_entries(coll: ItemCollection, with_values: bool
                  ) -> Iterator[Tuple[Any, Any, Optional[Item], Dict[str, Any]]]:
    """The entries of an item collection, each item checked as it is used
    (2.x checks items at use, not when they are added)."""
    for entry in list(coll):
        if not isinstance(entry, tuple) or len(entry) not in (1, 2):
            raise ArgumentError({"message": "an item collection must yield (item, options) pairs, not %r"
                                 % (entry,), "objextra": entry})
        item = checked_item(entry[0])
        options = entry[1] if len(entry) == 2 else None
        if options is None:
            options = _NO_OPTIONS
        elif not isinstance(options, dict):
            raise ArgumentError({"message": "item options must be None or a dict, not %s"
                                 % type(options).__name__, "key": item.key})
        else:
            options = dict(options)
        yield item.key, (item.value if with_values else None), item, options


def _empty(what: str) -> ArgumentError:
    """2.x refuses an empty key collection for every ``_multi`` call."""
    return ArgumentError("%s needs at least one key (the collection is empty)" % what)


def _item_cas(item: Optional[Item], options: Dict[str, Any]) -> Any:
    """The CAS an item's mutation sends: ``options["cas"]`` if given, none
    with ``ignore_cas=True``, else the item's own CAS (2.x)."""
    if "cas" in options:
        return options["cas"]
    if item is None or options.get("ignore_cas"):
        return 0
    return item.cas


def _per_key_failure(key: Any, exc: CouchbaseError, item: Optional[Item], value_result: bool) -> Result:
    res: Result
    if item is not None:
        res = item
    elif value_result:
        res = ValueResult(key)
    else:
        res = OperationResult(key)
    res.rc = exc.rc
    res._message = exc.message
    res._exc = exc
    if exc.key is None:
        exc.key = key
    return res


class MultiMixin:
    """``_multi`` operations of :class:`~couchbase_core._bucketbase.BaseBucket`."""

    # ------------------------------------------------------------- _multi ops

    def _run_entries(self, entries: Iterable[Tuple[Any, Any, Optional[Item], Dict[str, Any]]],
                     build: Callable[[Any, Any, Optional[Item], Dict[str, Any]], tuple],
                     quiet: bool, kind: int, no_format: bool = False,
                     durability: Tuple[Optional[tuple], bytes] = (None, b""),
                     idempotent: Optional[bool] = None) -> Any:
        """Build one request per entry (``build`` returns ``(opcode, kb,
        extras, value, cas)`` or raises for that key alone), batch them per
        node and run them."""
        self._check_open()
        mres = self._new_multi()
        mres._quiet = quiet
        batch = KeyBatch(kind, self._timeout, mres, self._transcoder, no_format or self._data_passthrough)
        observe, framing = durability
        if observe is not None:
            batch.durability = observe
            batch.timeout += observe[2]  # the batch waits for the observations too
        if framing:
            batch.framing = framing
        if idempotent is not None:
            batch.idempotent = idempotent
        value_results = kind != KIND_MUTATION
        batches = [batch]
        keys, kbs, requests, items = batch.keys, batch.kbs, [], []
        has_items = False
        for key, arg, item, options in entries:
            try:
                opcode, kb, extras, value, cas = build(key, arg, item, options)
            except CouchbaseError as exc:
                mres[key] = _per_key_failure(key, exc, item, value_results)
                continue
            keys.append(key)
            kbs.append(kb)
            requests.append((opcode, extras, value, cas))
            items.append(item)
            if item is not None:
                has_items = True
            if len(kbs) == _CHUNK:
                # A big call: the rest goes into further batches, and the
                # loop gets a turn now (encoding is most of a call's work).
                batch.requests, batch.items = requests, (items if has_items else None)
                batch = batch.sibling()
                batches.append(batch)
                keys, kbs, requests, items = batch.keys, batch.kbs, [], []
                has_items = False
                self._breathe()
        batch.requests, batch.items = requests, (items if has_items else None)
        return self._many([b for b in batches if len(b)], mres)

    # The entries of a call are produced lazily, from a snapshot of the
    # caller's collection taken at once (C-level): building them is part of
    # the per-key work, which _run_entries interrupts to let the hub run.

    @staticmethod
    def _entries_with_values(kvs: Any, what: str) -> Iterator[Tuple[Any, Any, Optional[Item], Dict[str, Any]]]:
        if isinstance(kvs, ItemCollection):
            if not len(kvs):
                raise _empty(what)
            return _item_entries(kvs, True)
        if isinstance(kvs, dict):
            if not kvs:
                raise _empty(what)
            return ((k, v, None, _NO_OPTIONS) for k, v in list(kvs.items()))
        raise ArgumentError("%s needs a dict of key -> value or an item collection, not %s"
                            % (what, type(kvs).__name__))

    @staticmethod
    def _entries_keys(keys: Any, what: str, scalar: Optional[str] = None, results_as_keys: bool = False
                      ) -> Iterator[Tuple[Any, Any, Optional[Item], Dict[str, Any]]]:
        """The entries of a collection of keys. With ``results_as_keys``
        (remove_multi, unlock_multi) a result object in a list stands for
        its key and CAS, as in 2.x."""
        if isinstance(keys, ItemCollection):
            if not len(keys):
                raise _empty(what)
            return _item_entries(keys, False)
        if isinstance(keys, (str, bytes)):
            raise ArgumentError("%s needs a collection of keys, not a single %s" % (what, type(keys).__name__))
        if isinstance(keys, dict):
            if not keys:
                raise _empty(what)
            return (_key_entry(k, v, scalar) for k, v in list(keys.items()))
        try:
            snapshot = list(keys)
        except TypeError:
            raise ArgumentError("%s needs an iterable of keys, not %s" % (what, type(keys).__name__)) from None
        if not snapshot:
            raise _empty(what)
        if results_as_keys:
            return ((k.key, None, None, {"cas": k.cas}) if isinstance(k, OperationResult)
                    else (k, None, None, _NO_OPTIONS) for k in snapshot)
        return ((k, None, None, _NO_OPTIONS) for k in snapshot)

    def _store_multi(self, opcode: int, kvs: Any, ttl: Any, fmt: Any, persist_to: Any, replicate_to: Any,
                     what: str, use_item_cas: bool, durability_level: Any = 0) -> Any:
        durability = self._mutation_extras(persist_to, replicate_to, durability_level)
        ttl = _ttl(ttl)
        entries = self._entries_with_values(kvs, what)
        store_parts = self._store_parts

        def build(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            if not options:
                return store_parts(opcode, key, value, 0, ttl, fmt)
            if options.get("persist_to") or options.get("replicate_to"):
                raise ArgumentError({"message": "give persist_to/replicate_to to the %s call, not per item"
                                     % what, "key": key})
            cas = _item_cas(item, options) if use_item_cas else options.get("cas", 0)
            return store_parts(opcode, key, value, cas, options.get("ttl", ttl), options.get("format", fmt))

        def build_items(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            if item is not None and use_item_cas and "cas" not in options:
                options = dict(options, cas=_item_cas(item, options))
            return build(key, value, item, options)

        # Items only come from item collections: a dict's keys skip the wrapper.
        with_items = use_item_cas and isinstance(kvs, ItemCollection)
        return self._run_entries(entries, build_items if with_items else build, False, KIND_MUTATION,
                                 durability=durability)

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                     persist_to: int = 0, replicate_to: int = 0,
                     durability_level: int = 0) -> MultiResult:
        """:meth:`upsert` for many keys: ``keys`` is a dict of key -> value or
        an item collection (per-item options allowed; an item's CAS is sent
        unless ``ignore_cas=True``, as in 2.x). Returns a
        :class:`~couchbase_core.result.MultiResult`; if any key failed, raises
        that key's exception with ``all_results`` holding every key's result."""
        return self._store_multi(Opcode.SET, keys, ttl, format, persist_to, replicate_to, "upsert_multi", True,
                                 durability_level)

    def insert_multi(self, keys: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                     persist_to: int = 0, replicate_to: int = 0,
                     durability_level: int = 0) -> MultiResult:
        """:meth:`insert` for many keys (see :meth:`upsert_multi`)."""
        return self._store_multi(Opcode.ADD, keys, ttl, format, persist_to, replicate_to, "insert_multi", False,
                                 durability_level)

    def replace_multi(self, keys: Any, ttl: int = 0, format: Optional[int] = None,  # noqa: A002
                      persist_to: int = 0, replicate_to: int = 0,
                      durability_level: int = 0) -> MultiResult:
        """:meth:`replace` for many keys; items use their own CAS."""
        return self._store_multi(Opcode.REPLACE, keys, ttl, format, persist_to, replicate_to, "replace_multi", True,
                                 durability_level)

    def _concat_multi(self, opcode: int, kvs: Any, fmt: Any, persist_to: Any, replicate_to: Any, what: str,
                      durability_level: Any) -> Any:
        durability = self._mutation_extras(persist_to, replicate_to, durability_level)
        entries = self._entries_with_values(kvs, what)

        def build(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            if "fragment" in options:  # 2.x: an item's fragment is an option
                value = options["fragment"]
            return self._concat_parts(opcode, key, value, _item_cas(item, options), options.get("format", fmt))

        return self._run_entries(entries, build, False, KIND_MUTATION, durability=durability)

    def append_multi(self, keys: Any, format: Optional[int] = None,  # noqa: A002
                     persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> MultiResult:
        """:meth:`append` for many keys (dict of key -> fragment)."""
        return self._concat_multi(Opcode.APPEND, keys, format, persist_to, replicate_to, "append_multi",
                                  durability_level)

    def prepend_multi(self, keys: Any, format: Optional[int] = None,  # noqa: A002
                      persist_to: int = 0, replicate_to: int = 0, durability_level: int = 0) -> MultiResult:
        """:meth:`prepend` for many keys (dict of key -> fragment)."""
        return self._concat_multi(Opcode.PREPEND, keys, format, persist_to, replicate_to, "prepend_multi",
                                  durability_level)

    def get_multi(self, keys: Any, ttl: int = 0, quiet: Optional[bool] = None, replica: bool = False,
                  no_format: bool = False) -> MultiResult:
        """:meth:`get` for many keys: an iterable of keys, a dict whose values
        are per-key ttls (or option dicts with ``ttl``), or an item collection
        (whose items receive the values). Returns a MultiResult."""
        if replica:
            if ttl:
                raise ArgumentError("a replica read cannot change the expiry (ttl); replicas are read-only")
            return self.rget_multi(keys, None, quiet, no_format)
        ttl = _ttl(ttl)
        quiet = self._quiet if quiet is None else bool(quiet)
        if not ttl and self._transcoder is None and type(keys) in (list, tuple) and keys:
            kbs = _plain_key_bytes(keys)
            if kbs is not None:  # every key is a valid str/bytes key
                self._check_open()
                mres = self._new_multi()
                mres._quiet = quiet
                no_format = bool(no_format) or self._data_passthrough
                batches = []
                for start in range(0, len(kbs), _CHUNK):
                    batch = KeyBatch(KIND_GET, self._timeout, mres, None, no_format, Opcode.GET)
                    batch.keys = list(keys[start:start + _CHUNK])
                    batch.kbs = kbs[start:start + _CHUNK]
                    batches.append(batch)
                return self._many(batches, mres)
        entries = self._entries_keys(keys, "get_multi", "ttl")
        kb_of = self._kb
        plain = (Opcode.GAT, _TTL.pack(ttl)) if ttl else (Opcode.GET, b"")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            kb = kb_of(key)
            if options:
                key_ttl = _ttl(options.get("ttl", ttl))
                if key_ttl:
                    return Opcode.GAT, kb, _TTL.pack(key_ttl), b"", 0
                return Opcode.GET, kb, b"", b"", 0
            return plain[0], kb, plain[1], b"", 0

        return self._run_entries(entries, build, quiet, KIND_GET, bool(no_format))

    def touch_multi(self, keys: Any, ttl: int = 0) -> MultiResult:
        """:meth:`touch` for many keys (a dict gives per-key ttls)."""
        ttl = _ttl(ttl)
        entries = self._entries_keys(keys, "touch_multi", "ttl")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            return Opcode.TOUCH, self._kb(key), _TTL.pack(_ttl(options.get("ttl", ttl))), b"", 0

        return self._run_entries(entries, build, False, KIND_MUTATION)

    def remove_multi(self, keys: Any, quiet: Optional[bool] = None, persist_to: int = 0,
                     replicate_to: int = 0, durability_level: int = 0) -> MultiResult:
        """:meth:`remove` for many keys (a dict gives per-key CAS values or
        results; result objects in a list stand for their key and CAS;
        items use their own CAS)."""
        durability = self._mutation_extras(persist_to, replicate_to, durability_level)
        entries = self._entries_keys(keys, "remove_multi", "cas", results_as_keys=True)

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            return Opcode.DELETE, self._kb(key), b"", b"", _cas(_item_cas(item, options))

        return self._run_entries(entries, build, self._quiet if quiet is None else bool(quiet), KIND_MUTATION,
                                 durability=durability)

    def counter_multi(self, kvs: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                      durability_level: int = 0) -> MultiResult:
        """:meth:`counter` for many keys (a dict gives per-key deltas or
        option dicts with ``delta``/``initial``/``ttl``)."""
        durability = self._mutation_extras(0, 0, durability_level)
        entries = self._entries_keys(kvs, "counter_multi", "delta")

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            return self._counter_parts(key, options.get("delta", delta), options.get("initial", initial),
                                       options.get("ttl", ttl))

        return self._run_entries(entries, build, False, KIND_COUNTER, durability=durability)

    def incr_multi(self, keys: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> MultiResult:
        """``counter_multi`` with a positive ``amount`` (2.x alias)."""
        return self.counter_multi(keys, amount, initial, ttl)

    def decr_multi(self, keys: Any, amount: int = 1, initial: Optional[int] = None, ttl: int = 0) -> MultiResult:
        """``counter_multi`` with ``-amount`` (2.x alias)."""
        return self.counter_multi(keys, -amount, initial, ttl)

    def rget_multi(self, keys: Any, replica_index: Optional[int] = None, quiet: Optional[bool] = None,
                   no_format: bool = False) -> MultiResult:
        """:meth:`rget` for many keys (Couchbase buckets only)."""
        self._require_couchbase("rget_multi", "plain memcached keeps no replicas")
        if isinstance(keys, ItemCollection):
            raise ArgumentError("replica reads do not take items (2.x refuses them too): pass the keys")
        entries = self._entries_keys(keys, "rget_multi")
        self._replica_list(replica_index)  # validates
        ops = [self._replica_op(key, replica_index, no_format) for key, _a, _i, _o in entries]
        mres = self._new_multi()
        mres._quiet = self._quiet if quiet is None else bool(quiet)
        return self._many(ops, mres)

    def lock_multi(self, keys: Any, ttl: int = 0) -> MultiResult:
        """:meth:`lock` for many keys (Couchbase buckets only)."""
        self._require_couchbase("lock_multi", "plain memcached has no document locking (GET_LOCKED)")
        ttl = _ttl(ttl)
        entries = self._entries_keys(keys, "lock_multi", "ttl")
        extras = _TTL.pack(ttl) if ttl else b""

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            lock_time = _ttl(options["ttl"]) if "ttl" in options else ttl
            return Opcode.GET_LOCKED, self._kb(key), _TTL.pack(lock_time) if lock_time else extras, b"", 0

        return self._run_entries(entries, build, False, KIND_GET, idempotent=False)

    def unlock_multi(self, keys: Any) -> MultiResult:
        """:meth:`unlock` for many keys: a dict of key -> CAS, the result of
        ``lock_multi``, a list of lock results, or an item collection
        (Couchbase buckets only)."""
        self._require_couchbase("unlock_multi", "plain memcached has no document locking (UNLOCK_KEY)")
        if isinstance(keys, dict):
            keys = {k: (v.cas if isinstance(v, Result) else v) for k, v in keys.items()}
        entries = self._entries_keys(keys, "unlock_multi", "cas", results_as_keys=True)

        def build(key: Any, _arg: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            cas = options.get("cas", item.cas if item is not None else 0)
            if not cas:
                raise ArgumentError({"message": "unlock needs the CAS returned by lock", "key": key})
            return Opcode.UNLOCK_KEY, self._kb(key), b"", b"", _cas(cas)

        return self._run_entries(entries, build, False, KIND_MUTATION)

    # ------------------------------------------- 2.x deprecated aliases, append_items

    def set_multi(self, *args: Any, **kwargs: Any) -> MultiResult:
        """Deprecated 1.x/2.x name of :meth:`upsert_multi` (DeprecationWarning)."""
        _deprecated("set_multi", "upsert_multi")
        return self.upsert_multi(*args, **kwargs)

    def add_multi(self, *args: Any, **kwargs: Any) -> MultiResult:
        """Deprecated 1.x/2.x name of :meth:`insert_multi` (DeprecationWarning)."""
        _deprecated("add_multi", "insert_multi")
        return self.insert_multi(*args, **kwargs)

    def delete_multi(self, *args: Any, **kwargs: Any) -> MultiResult:
        """Deprecated 1.x/2.x name of :meth:`remove_multi` (DeprecationWarning)."""
        _deprecated("delete_multi", "remove_multi")
        return self.remove_multi(*args, **kwargs)

    def append_items(self, items: Any, **kwargs: Any) -> MultiResult:
        """Append to many items and update each item's ``value`` (2.x).

        ``items`` is an :class:`~couchbase_core.items.ItemOptionDict` whose
        options give each item a ``fragment`` (the ``str``/``bytes`` to
        append; ``format`` and ``cas`` may be given per item too). Each item
        that succeeds gets ``fragment`` appended to its ``value``; the others
        keep theirs. Keyword arguments are those of :meth:`append_multi`.
        Returns the :class:`~couchbase_core.result.MultiResult`.
        """
        return self._concat_items(Opcode.APPEND, items, "append_items", kwargs)

    def prepend_items(self, items: Any, **kwargs: Any) -> MultiResult:
        """As :meth:`append_items`, prepending: each successful item's
        ``value`` becomes ``fragment + value``."""
        return self._concat_items(Opcode.PREPEND, items, "prepend_items", kwargs)

    def _concat_items(self, opcode: int, items: Any, what: str, kwargs: Dict[str, Any]) -> Any:
        from couchbase_core.items import ItemOptionDict

        if self._is_async:  # type: ignore[attr-defined]
            raise NotSupportedError("%s is not available on the async bucket (it updates the items when "
                                    "the call returns): use append_multi/prepend_multi" % what)
        if not isinstance(items, ItemOptionDict):
            raise ArgumentError("%s needs an ItemOptionDict whose options give each item a 'fragment'" % what)
        fmt = kwargs.pop("format", None)
        durability = self._mutation_extras(kwargs.pop("persist_to", 0), kwargs.pop("replicate_to", 0),
                                           kwargs.pop("durability_level", 0))
        if kwargs:
            raise ArgumentError("%s got unexpected keyword argument(s) %s" % (what, ", ".join(sorted(kwargs))))
        pairs = [(checked_item(item), options or {}) for item, options in items.dict.items()]
        for item, options in pairs:
            if "fragment" not in options:
                raise ArgumentError({"message": "%s: every item needs a 'fragment' option" % what, "key": item.key})
        entries = ((item.key, options["fragment"], item, options) for item, options in pairs)

        def build(key: Any, value: Any, item: Optional[Item], options: Dict[str, Any]) -> tuple:
            cas = options.get("cas", item.cas if item is not None else 0)
            return self._concat_parts(opcode, key, value, cas, options.get("format", fmt))

        try:
            results = self._run_entries(entries, build, False, KIND_MUTATION, durability=durability)
        except CouchbaseError as exc:
            _update_items(pairs, exc.all_results, opcode == Opcode.APPEND)
            raise
        _update_items(pairs, results, opcode == Opcode.APPEND)
        return results


def _plain_key_bytes(keys: Any) -> Optional[List[bytes]]:
    """The encoded keys of a list of plain keys, or None if any key needs
    the general path (not str/bytes, not UTF-8, empty, too long). C-level
    loops only: this runs for every key of a plain ``get_multi``."""
    types = set(map(type, keys))
    if types == {str}:
        try:
            kbs = list(map(str.encode, keys))
        except UnicodeEncodeError:
            return None  # the general path reports it for that key alone
    elif types == {bytes}:
        kbs = list(keys)
    else:
        return None
    if kbs and (min(map(len, kbs)) == 0 or max(map(len, kbs)) > _MAX_KEY):
        return None
    return kbs


def _deprecated(old: str, new: str) -> None:
    """The 2.x deprecation warning, attributed to the caller of ``old``."""
    import warnings

    warnings.warn("%s is deprecated. Use %s instead" % (old, new), DeprecationWarning, stacklevel=3)


def _update_items(pairs: List[Tuple[Item, Dict[str, Any]]], results: Any, append: bool) -> None:
    """After append_items/prepend_items: the fragment joins the value of
    each item whose own result (in ``results``) succeeded."""
    if not isinstance(results, dict):
        return
    for item, options in pairs:
        if results.get(item.key) is item and item.success:
            item.value = _concat_value(item.value, options["fragment"], append)


def _concat_value(value: Any, fragment: Any, append: bool) -> Any:
    """``value`` with ``fragment`` appended (or prepended), str or bytes
    matched to the value's type (an item without a value takes the fragment)."""
    if value is None:
        return fragment
    if isinstance(value, bytes) and isinstance(fragment, str):
        fragment = fragment.encode("utf-8")
    elif isinstance(value, str) and isinstance(fragment, bytes):
        fragment = fragment.decode("utf-8", "replace")
    return value + fragment if append else fragment + value

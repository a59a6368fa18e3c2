"""Items: documents that carry their own key, value, CAS and options.

An :class:`Item` is a :class:`~couchbase_core.result.ValueResult` the
application creates itself. Passed to a ``_multi`` call inside an item
collection, it supplies the key and value (and CAS, for CAS-checked
operations), and the call fills the *same object* with the outcome: ``rc``,
``cas``, and for reads ``value`` and ``flags``. The call's
:class:`~couchbase_core.result.MultiResult` maps each key to its item.

Two collections exist:

* :class:`ItemOptionDict` — items with per-item options
  (``format``, ``ttl``, ``cas``, ``ignore_cas``, ``fragment`` as keyword
  arguments; durability
  requirements such as ``persist_to`` apply to the whole call and are
  given to it, not per item);
* :class:`ItemSequence` — a plain sequence of items, no options.

Example::

    itmdict = ItemOptionDict()
    itmdict.create_and_add("user:1", {"name": "Ann"}, ttl=60)
    itmdict.add(Item("blob", b"\\x00\\x01"), format=FMT_BYTES)
    bucket.upsert_multi(itmdict)
    bucket.replace_multi(itmdict)   # CAS-checked against the CAS just stored
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

from couchbase_core.exceptions import ArgumentError
from couchbase_core.result import ValueResult

__all__ = ["Item", "ItemCollection", "ItemOptionDict", "ItemSequence", "checked_item"]


class Item(ValueResult):
    """A document the application owns: ``key``, ``value``, ``cas``, ``flags``.

    After an operation, ``rc``/``success`` tell the outcome for this item.
    Arbitrary attributes may be set on it.
    """

    def __init__(self, key: Any = None, value: Any = None) -> None:
        ValueResult.__init__(self, key, 0, 0, value, 0)

    def as_itcoll(self, **options: Any) -> "ItemCollection":
        """Return a collection holding just this item (with ``options``)."""
        if options:
            coll = ItemOptionDict()
            coll.add(self, **options)
            return coll
        return ItemSequence([self])


class ItemCollection:
    """Base of the item collections: iterating yields ``(item, options)``.

    As in 2.x, a collection does not check what it holds: each entry is
    checked when a ``_multi`` call uses it (a non-Item, or an Item without
    a key, is an ArgumentError for that call)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tuple[Item, Optional[Dict[str, Any]]]]:
        raise NotImplementedError

    def dict_items(self) -> Iterator[Tuple[Item, Optional[Dict[str, Any]]]]:
        """``(item, options)`` for each entry (2.x name for iterating)."""
        return iter(self)


def checked_item(item: Any) -> Item:
    """``item`` if it is an :class:`Item` with a key; else ArgumentError
    (called by the ``_multi`` calls for each entry of a collection)."""
    if not isinstance(item, Item):
        raise ArgumentError({"message": "item collections hold Item objects, not %s" % type(item).__name__,
                             "objextra": item})
    if item.key is None:
        raise ArgumentError({"message": "an Item needs a key", "objextra": item})
    return item


class ItemOptionDict(ItemCollection):
    """Items with per-item options: ``{item: {option: value}}`` (or
    ``{item: None}``).

    Options: ``ttl``, ``format``, ``cas`` (instead of the item's own),
    ``ignore_cas`` (send no CAS), ``fragment`` (the value of an
    ``append_multi``/``prepend_multi``, instead of the item's value)."""

    def __init__(self, d: Optional[Dict[Item, Optional[Dict[str, Any]]]] = None) -> None:
        # The dict itself is kept (2.x): changes to it show in the collection.
        self._d: Dict[Item, Optional[Dict[str, Any]]] = {} if d is None else d

    @property
    def dict(self) -> Dict[Item, Optional[Dict[str, Any]]]:
        """The underlying ``{item: options}`` dict."""
        return self._d

    def add(self, itm: Item, **options: Any) -> "ItemOptionDict":
        """Add ``itm`` with ``options`` (e.g. ``format=FMT_BYTES, ttl=10``);
        an item already present has its options replaced."""
        self._d[itm] = options or None
        return self

    def create_and_add(self, key: Any, value: Any = None, cas: int = 0, **options: Any) -> Item:
        """Create an :class:`Item`, add it with ``options`` and return it."""
        itm = Item(key, value)
        itm.cas = cas
        self.add(itm, **options)
        return itm

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[Tuple[Item, Optional[Dict[str, Any]]]]:
        return iter(self._d.items())


class ItemSequence(ItemCollection):
    """A sequence of items without options; a single :class:`Item` is
    taken as a sequence of one (2.x)."""

    def __init__(self, obj: Any) -> None:
        if isinstance(obj, Item):
            obj = [obj]
        elif not hasattr(obj, "__len__"):
            obj = list(obj)  # a generator: kept, so the collection can be used again
        self._seq = obj

    @property
    def sequence(self) -> Any:
        """The sequence given (a list for a single item)."""
        return self._seq

    def __len__(self) -> int:
        return len(self._seq)

    def __iter__(self) -> Iterator[Tuple[Item, Optional[Dict[str, Any]]]]:
        return ((item, None) for item in self._seq)

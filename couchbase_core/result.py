"""Result objects returned by bucket operations.

* :class:`Result` — every outcome: ``rc``, ``success``, ``errstr``, ``key``.
* :class:`OperationResult` — mutations, ``touch``, ``unlock``: adds ``cas``
  and ``mutation_token``.
* :class:`ValueResult` — reads and counters: adds ``value`` and ``flags``.
* :class:`MultiResult` — a ``dict`` of key -> result for ``_multi`` calls,
  with ``all_ok``.
* :class:`AsyncResult` — a :class:`MultiResult` that fills later, for
  :class:`~couchbase_core.asynchronous.bucket.AsyncBucket`; set ``callback``
  and ``errback`` on it after the call returns.
"""

from __future__ import annotations

import sys
from operator import attrgetter
from typing import Any, Callable, NamedTuple, Optional

from couchbase_core.exceptions import RC, CouchbaseError, exc_from_rc, rc_description

__all__ = [
    "Result", "OperationResult", "ValueResult", "MultiResult", "AsyncResult",
    "MutationToken", "SubdocResult", "ObserveInfo", "HttpResult",
]


class MutationToken(NamedTuple):
    """Identifies one mutation: the vBucket, its UUID and the sequence number."""

    vbucket: int
    vbucket_uuid: int
    seqno: int
    bucket: str = ""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def raises(rc: int, quiet: bool) -> bool:
    """The one rule for "is this outcome an error to raise": any non-zero
    result code, except a missing key under ``quiet`` (which only makes
    the result unsuccessful). Every flavour and every ``_multi`` / pipeline
    path asks this."""
    return rc != 0 and rc != _LOOKUP_PATHS_FAILED and not (quiet and rc == RC.KEY_ENOENT)


#: The rc of a ``lookup_in`` that reached the document but found some paths
#: missing: an outcome to inspect (``exists``, ``get``), never raised (2.x).
_LOOKUP_PATHS_FAILED = RC.SUBDOC_MULTI_PATH_FAILURE


class Result:
    """The outcome of one operation on one key.

    Attributes:
        key: the key as the caller gave it.
        rc: result code; 0 on success (see :mod:`couchbase_core.exceptions`).
    """

    # ``_message`` and ``_exc`` are set on failures only: class-level
    # defaults, stored in the instance dict when set (one result is made per
    # operation, most of them successes, so this saves stores and memory).
    # ``success`` is stored next to the result code rather than computed:
    # applications read it once or twice per result (often per key of a big
    # _multi), and a stored attribute costs no Python call. ``rc`` keeps the
    # two in step; its getter is C-level (attrgetter), its setter runs only
    # when a result changes code after it was made.
    __slots__ = ("key", "_rc", "success", "__dict__")

    _message: Optional[str] = None
    _exc: Optional[CouchbaseError] = None

    def __init__(self, key: Any = None, rc: int = 0) -> None:
        self.key = key
        self._rc = rc
        self.success = not rc

    def _set_rc(self, rc: int) -> None:
        self._rc = rc
        self.success = not rc

    #: The result code: 0 on success (see :mod:`couchbase_core.exceptions`).
    rc = property(attrgetter("_rc"), _set_rc)
    #: True when the operation succeeded (``rc == 0``).
    success: bool

    @property
    def errstr(self) -> str:
        """A description of the outcome ("Success" when it succeeded)."""
        if self._message:
            return self._message
        return rc_description(self.rc)

    def _set_error(self, rc: int, message: Optional[str] = None, exc: Optional[CouchbaseError] = None) -> None:
        self.rc = rc
        self._message = message
        self._exc = exc

    def _make_exception(self) -> CouchbaseError:
        """The exception describing this failed result (not raised here)."""
        exc = self._exc
        if exc is None:
            exc = exc_from_rc(self.rc, self._message)
        if exc.key is None:
            exc.key = self.key
        if exc.result is None:
            exc.result = self
        if exc.all_results is None:
            # As 2.x: a single-key failure carries its one result too (a
            # _multi call replaces this with the whole MultiResult).
            exc.all_results = MultiResult({self.key: self})
        return exc

    def _repr_fields(self) -> str:
        fields = "rc=0x%X, key=%s" % (self.rc, _short(self.key))
        if self.rc:
            fields += ", errstr=%r" % self.errstr
        return fields

    def __repr__(self) -> str:
        return "%s<%s>" % (type(self).__name__, self._repr_fields())


class OperationResult(Result):
    """Result of an operation that returns no value: a mutation, ``touch``,
    ``unlock``.

    Attributes:
        cas: the document's new CAS (0 when the operation failed).
        mutation_token: a :class:`MutationToken` when the server sent one.
    """

    __slots__ = ("cas", "mutation_token")

    def __init__(self, key: Any = None, rc: int = 0, cas: int = 0) -> None:
        self.key = key
        self._rc = rc
        self.success = not rc
        self.cas = cas
        self.mutation_token: Optional[MutationToken] = None

    @property
    def _mutinfo(self) -> Optional[tuple]:
        """The mutation token as 2.x exposed it: ``(vbucket, vbucket_uuid,
        seqno, bucket)``, or None when the server sent none."""
        token = self.mutation_token
        if token is None:
            return None
        return (token.vbucket, token.vbucket_uuid, token.seqno, token.bucket)

    def _repr_fields(self) -> str:
        return Result._repr_fields(self) + ", cas=0x%X" % self.cas


class ValueResult(OperationResult):
    """Result of a read or a counter.

    Attributes:
        value: the decoded value (``None`` when the key was not found).
        flags: the stored item flags.
    """

    __slots__ = ("value", "flags")

    #: Reads have none; counters set one (in the instance dict).
    mutation_token: Optional[MutationToken] = None  # type: ignore[assignment]

    def __init__(self, key: Any = None, rc: int = 0, cas: int = 0, value: Any = None, flags: int = 0) -> None:
        # Flat on purpose: one of these is made per read.
        self.key = key
        self._rc = rc
        self.success = not rc
        self.cas = cas
        self.value = value
        self.flags = flags

    def _repr_fields(self) -> str:
        return OperationResult._repr_fields(self) + ", value=%s, flags=0x%X" % (_short(self.value), self.flags)


#: The rc of a result (C-level, for whole-call checks).
_RC_OF = attrgetter("rc")


class MultiResult(dict):
    """Results of a ``_multi`` call: a ``dict`` mapping each key to its result.

    ``all_ok`` is True when every key succeeded. As in the 2.x SDK, a
    not-found read under ``quiet=True`` makes it False too: ``quiet`` only
    keeps the call from raising.
    """

    #: Set for reports (``ping``): failed entries are data, not errors.
    _report = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._quiet = False

    @property
    def all_ok(self) -> bool:
        """True when every operation succeeded; a quiet miss (``quiet=True``,
        key not found) is not a success: it only did not raise."""
        return not any(map(_RC_OF, self.values()))

    def _first_failure(self) -> Optional[Result]:
        if not any(map(_RC_OF, self.values())):
            return None  # the common case, checked by a C-level loop (100k-key calls)
        quiet = self._quiet
        for res in self.values():
            rc = res.rc
            if rc and raises(rc, quiet):
                return res
        return None

    def _make_exception(self) -> Optional[CouchbaseError]:
        """The exception for the first failure, carrying ``all_results``."""
        if self._report:
            return None
        bad = self._first_failure()
        if bad is None:
            return None
        exc = bad._make_exception()
        exc.all_results = self
        return exc

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, dict.__repr__(self))


class AsyncResult(MultiResult):
    """A result that fills in later (returned by every AsyncBucket operation).

    Set ``callback`` and ``errback`` after the call returns; exactly one of
    them is called once every key's operation has completed:

    * ``callback(result)`` on success;
    * ``errback(result, exc_type, exc_value, traceback)`` on failure, where
      ``exc_value`` is the same exception the blocking API would have raised
      (with ``all_results`` for ``_multi`` calls).

    For single-key calls ``result`` is that key's :class:`Result`; for
    ``_multi`` calls it is this object. ``quiet`` is honoured as in the
    blocking API. If the operation finished before the handlers were set,
    setting them calls the right one at once.
    """

    def __init__(self, single: bool = False) -> None:
        super().__init__()
        self._single = single
        self._callback: Optional[Callable[..., Any]] = None
        self._errback: Optional[Callable[..., Any]] = None
        self._done = False
        self._fired = False

    @property
    def done(self) -> bool:
        """True once every operation of the call has completed."""
        return self._done

    @property
    def callback(self) -> Optional[Callable[..., Any]]:
        """Called with the result on success."""
        return self._callback

    @callback.setter
    def callback(self, fn: Optional[Callable[..., Any]]) -> None:
        self._callback = fn
        self._maybe_fire()

    @property
    def errback(self) -> Optional[Callable[..., Any]]:
        """Called with ``(result, exc_type, exc_value, traceback)`` on failure."""
        return self._errback

    @errback.setter
    def errback(self, fn: Optional[Callable[..., Any]]) -> None:
        self._errback = fn
        self._maybe_fire()

    def _the_result(self) -> Any:
        if self._single:
            for res in self.values():
                return res
        return self

    def _complete(self) -> None:
        self._done = True
        self._maybe_fire()

    def _maybe_fire(self) -> None:
        if not self._done or self._fired:
            return
        exc = self._make_exception()
        if exc is None:
            if self._callback is None:
                return
            self._fired = True
            self._callback(self._the_result())
            return
        if self._errback is None:
            return
        self._fired = True
        try:
            raise exc
        except CouchbaseError:
            etype, evalue, tb = sys.exc_info()
        self._errback(self._the_result(), etype, evalue, tb)


class SubdocResult(OperationResult):
    """Result of ``lookup_in`` / ``mutate_in``: one outcome per spec.

    As in 2.x: iterating yields each spec's value in order (raising that
    spec's error when it failed); ``rv[0]`` and ``rv["name"]`` index by
    position or path the same way; ``rv.get(i)`` returns ``(rc, value)``
    without raising (``(rc, default)`` for a failed spec; an index or path
    that was never requested is an IndexError/KeyError); ``rv.exists(path)``
    and ``path in rv`` tell whether the path was found.

    A ``lookup_in`` that reached the document but found some paths missing
    has ``rc`` :data:`~couchbase_core.exceptions.RC.SUBDOC_MULTI_PATH_FAILURE`
    (:class:`~couchbase_core.exceptions.SubdocMultipleErrors`), is not
    raised, and has ``success`` False and ``access_ok`` True.
    """

    __slots__ = ("_paths", "_results")

    def __init__(self, key: Any = None, rc: int = 0, cas: int = 0) -> None:
        OperationResult.__init__(self, key, rc, cas)
        self._paths: list = []
        self._results: list = []  # [(rc, value)] per spec

    @property  # type: ignore[override]
    def success(self) -> bool:
        """True when the document was accessed and every path succeeded."""
        return self.rc == 0 and all(rc == 0 for rc, _v in self._results)

    @success.setter
    def success(self, _value: bool) -> None:
        pass  # computed from the paths (Result stores it for plain results)

    @property
    def access_ok(self) -> bool:
        """True when the document itself was found and accessed (even if
        some paths were not found)."""
        return self.rc == 0 or self.rc == RC.SUBDOC_MULTI_PATH_FAILURE

    @property
    def command_count(self) -> int:
        """Number of specs sent."""
        return len(self._paths)

    @property
    def result_count(self) -> int:
        """Number of results received (for a failed ``mutate_in`` this may
        be fewer than :attr:`command_count`)."""
        return len(self._results)

    def _index(self, item: Any) -> int:
        if isinstance(item, int) and not isinstance(item, bool):
            if not -len(self._results) <= item < len(self._results):
                raise IndexError("spec index %d out of range (%d results)" % (item, len(self._results)))
            return item % len(self._results)
        try:
            index = self._paths.index(item)
        except ValueError:
            raise KeyError("no spec with path %r" % (item,)) from None
        if index >= len(self._results):
            raise KeyError("no result for path %r" % (item,))
        return index

    def get(self, path_or_index: Any, default: Any = None) -> Any:
        """``(rc, value)`` of a spec (by index or path), without raising for
        a failed spec (its value is then ``default``). An index or path that
        was not requested raises IndexError / KeyError (a programming
        error, as in 2.x)."""
        rc, value = self._results[self._index(path_or_index)]
        return rc, (default if rc else value)

    def exists(self, path_or_index: Any) -> bool:
        """True when the spec's path was found, False when it was not; any
        other failure of that spec (e.g. a path that does not match the
        document's shape) raises its exception."""
        rc = self._results[self._index(path_or_index)][0]
        if rc == 0:
            return True
        if rc == RC.SUBDOC_PATH_ENOENT:
            return False
        return bool(self[path_or_index])  # raises the spec's own error

    def __contains__(self, path_or_index: Any) -> bool:
        return self.exists(path_or_index)

    def _spec_error(self, index: int, rc: int) -> CouchbaseError:
        exc = exc_from_rc(rc, "path %r (spec %d) of %r failed" % (self._paths[index], index, self.key))
        exc.key = self.key
        exc.result = self
        return exc

    def __getitem__(self, item: Any) -> Any:
        index = self._index(item)
        rc, value = self._results[index]
        if rc:
            raise self._spec_error(index, rc)
        return value

    def __len__(self) -> int:
        return len(self._results)

    def __iter__(self):  # type: ignore[no-untyped-def]
        """Each spec's value in order; a failed spec raises its error."""
        for index, (rc, value) in enumerate(list(self._results)):
            if rc:
                raise self._spec_error(index, rc)
            yield value

    def _repr_fields(self) -> str:
        return OperationResult._repr_fields(self) + ", results=%s" % _short(
            [(p, rc, v) for p, (rc, v) in zip(self._paths, self._results)], 120)


class ObserveInfo:
    """One node's view of a key (``observe``): ``flags`` is the state
    (0x00 found, not persisted; 0x01 found and persisted; 0x80 not found;
    0x81 logically deleted), ``cas`` the CAS it holds, ``from_master`` True
    for the active node."""

    __slots__ = ("flags", "cas", "from_master", "ttp", "ttr")

    def __init__(self, flags: int, cas: int, from_master: bool, ttp: int = 0, ttr: int = 0) -> None:
        self.flags = flags
        self.cas = cas
        self.from_master = from_master
        self.ttp = ttp
        self.ttr = ttr

    def __repr__(self) -> str:
        return "ObserveInfo<flags=0x%02x, cas=0x%X, from_master=%s>" % (self.flags, self.cas, self.from_master)


class HttpResult(Result):
    """Result of an HTTP request (management, views, N1QL plumbing).

    Attributes:
        value: the decoded body (JSON when it parses, else text).
        http_status: the HTTP status code (0 when no response arrived).
        url: the request's path.
        headers: response headers (lower-case names).
    """

    __slots__ = ("value", "http_status", "url", "headers")

    def __init__(self, key: Any = None, rc: int = 0, http_status: int = 0, value: Any = None) -> None:
        Result.__init__(self, key, rc)
        self.value = value
        self.http_status = http_status
        self.url = key
        self.headers: dict = {}

    @property  # type: ignore[override]
    def success(self) -> bool:
        """True for a 2xx response."""
        return self.rc == 0 and 200 <= self.http_status < 300

    @success.setter
    def success(self, _value: bool) -> None:
        pass  # computed from the status (Result stores it for plain results)

    def _repr_fields(self) -> str:
        return Result._repr_fields(self) + ", http_status=%d, value=%s" % (self.http_status, _short(self.value))

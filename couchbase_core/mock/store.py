"""Document storage of the emulated cluster.

One logical copy of every document: a Couchbase bucket keeps a
:class:`VBucket` per vBucket number, whichever node currently owns it (the
vBucket map decides who may answer, see :mod:`.cluster`); a memcached bucket
keeps one :class:`VBucket`-like store per node, because memcached nodes are
independent caches.

Time is the cluster's :class:`Clock`, which tests can move forward: expiry,
lock timeouts and the persistence/replication lags all read it.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Dict, Iterator, List, Optional, Tuple

__all__ = ["Clock", "Item", "VBucket", "CasSource", "THIRTY_DAYS", "absolute_expiry"]

#: Expiry values up to this many seconds are relative; larger ones absolute.
THIRTY_DAYS = 30 * 24 * 3600


class Clock:
    """Wall-clock time plus an offset that tests can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Current cluster time, in Unix seconds."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the cluster's time forward (never backwards)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset += seconds


class CasSource:
    """Unique, increasing CAS values shaped like the server's (nanoseconds)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self, clock: Clock) -> int:
        """A fresh CAS."""
        value = max(self._last + 1, int(clock.now() * 1e9) & ~0xFFFF)
        self._last = value
        return value


def absolute_expiry(expiry: int, clock: Clock) -> int:
    """Turn a protocol expiry field into an absolute time (0 = never)."""
    if expiry == 0:
        return 0
    if expiry <= THIRTY_DAYS:
        return int(clock.now()) + expiry
    return expiry


class Item:
    """One stored document (or a tombstone that keeps xattrs)."""

    __slots__ = ("value", "flags", "expiry", "cas", "datatype", "xattrs", "deleted", "seqno",
                 "lock_until", "lock_cas", "mtime")

    def __init__(self, value: bytes, flags: int, expiry: int, cas: int, datatype: int, seqno: int,
                 mtime: float) -> None:
        self.value = value
        self.flags = flags
        self.expiry = expiry
        self.cas = cas
        self.datatype = datatype
        self.xattrs: Dict[str, bytes] = {}
        self.deleted = False
        self.seqno = seqno
        self.lock_until = 0.0
        self.lock_cas = 0
        self.mtime = mtime

    def locked(self, now: float) -> bool:
        """True while a GET_LOCKED lock holds."""
        return self.lock_until > now


class VBucket:
    """The documents of one vBucket (or of one memcached node)."""

    def __init__(self, vbid: int = 0) -> None:
        self.vbid = vbid
        self.uuid = struct.unpack(">Q", os.urandom(8))[0] & 0x7FFFFFFFFFFFFFFF
        self.seqno = 0
        self.items: Dict[bytes, Item] = {}
        #: (seqno, cluster time of the mutation), for OBSERVE_SEQNO lags
        self.history: List[Tuple[int, float]] = []
        self.failover_log: List[Tuple[int, int]] = [(self.uuid, 0)]

    def next_seqno(self, when: float) -> int:
        """Allocate the sequence number of a new mutation."""
        self.seqno += 1
        history = self.history
        history.append((self.seqno, when))
        if len(history) > 4096:
            del history[:2048]
        return self.seqno

    def lookup(self, key: bytes, now: float, with_deleted: bool = False) -> Optional[Item]:
        """The live item for ``key`` (expired ones are removed here)."""
        item = self.items.get(key)
        if item is None:
            return None
        if item.expiry and item.expiry <= now:
            del self.items[key]
            return None
        if item.deleted and not with_deleted:
            return None
        return item

    def live_items(self, now: float) -> Iterator[Tuple[bytes, Item]]:
        """Every live (unexpired, not deleted) item."""
        for key, item in list(self.items.items()):
            if item.deleted:
                continue
            if item.expiry and item.expiry <= now:
                continue
            yield key, item

    def persisted_seqno(self, now: float, lag: float) -> int:
        """Highest seqno whose mutation is older than ``lag`` seconds."""
        if lag <= 0:
            return self.seqno
        best = 0
        for seqno, when in self.history:
            if when + lag <= now:
                best = seqno
            else:
                break
        if not self.history:
            return self.seqno
        if self.history and self.history[0][0] > 1 and best == 0:
            return self.history[0][0] - 1
        return best

    def clear(self) -> None:
        """Remove every item (flush)."""
        self.items.clear()

"""Data commands of the emulated KV service, registered by opcode.

Every handler takes the session and the decoded request and returns the
response bytes (one or more frames), ``None`` (no response: quiet hits and
misses, or a dropped connection), or a coroutine resolving to either (a
durable write, answered once the cluster clock says it is replicated).

Two dialects live here side by side:

* **Couchbase buckets** answer like kv_engine: error bodies are empty (or a
  JSON error context when XERROR was negotiated and there is something to
  say), newer statuses are remapped for clients without XERROR, mutations
  return mutation tokens, values carry datatype bits, documents can be
  locked, observed, and mutated durably or by sub-document paths.
* **Memcached buckets** answer byte for byte like memcached 1.6 (CAS values
  aside): its error texts ("Not found", "Data exists for key.", ...), its
  validation (a malformed request gets EINVAL "Invalid arguments" and the
  connection is closed), its item size limit (1 MiB including memcached's
  item header), its TOUCH reply (flags extras, CAS unchanged), its GETK miss
  (the key, empty body), its counter quirk (a shorter result is written in
  place, padded with spaces to the old length), its delayed FLUSH, its
  GATK/GATKQ (0x23/0x24), an ADD or REPLACE carrying a CAS acting as a CAS
  store, a too-large SET dropping the old copy, and the names of its STAT
  groups. The shapes were taken from memcached 1.6.18 by experiment; VERSION
  (answered in :mod:`.kvserver`) says ``1.6.18`` on a memcached bucket.

Choices where the spec leaves room:

* Data lives in the vBucket named in the request **header**, as on a real
  server: a client that hashes a key wrongly but sends it to the node owning
  the wrong vBucket stores it there, and a correct client will not find it.
* FLUSH on a Couchbase bucket answers NOT_SUPPORTED, as kv_engine does since
  flushing moved to REST; on a memcached bucket it clears that node's cache
  (with an expiry: at that time on the cluster clock, like memcached).
* Couchbase-only commands on a memcached bucket (GET_REPLICA, GET_LOCKED,
  UNLOCK_KEY, GET_META, OBSERVE, OBSERVE_SEQNO, sub-document) answer
  NOT_SUPPORTED; memcached buckets return no mutation tokens (they have no
  vBuckets or sequence numbers) and refuse durability with
  DURABILITY_INVALID_LEVEL.
* Couchbase buckets refuse ADD with a CAS (EINVAL, as kv_engine's
  validator does); a counter with a CAS on a missing document is KEY_ENOENT.
* Sub-document lookups are answered by the active, and by a replica when
  the REPLICA_READ document flag is set; xattr paths need HELLO XATTR
  (NOT_SUPPORTED otherwise); a CAS with the ADD document flag is EINVAL.
* A full-document SET without the XATTR datatype keeps the document's
  xattrs; DELETE keeps only system xattrs (``_``-prefixed) on the tombstone.
  Expiry is reset by every mutation that carries an expiry field (SET
  family, sub-document mutations; 0 when the field is absent) unless the
  preserve-TTL frame is present; APPEND/PREPEND, counters on existing
  documents and GET_LOCKED keep it.
* Replication and persistence are modelled as lags on the cluster clock
  (``cluster.replicate_delay`` / ``cluster.persist_delay`` seconds after a
  mutation's ``mtime``): OBSERVE, OBSERVE_SEQNO, GET_REPLICA and durable
  writes all read the same lags. A replica that has not yet received a
  mutation does not know the document (GET_REPLICA: KEY_ENOENT; OBSERVE:
  0x80 for a new version, 0x01 with CAS 0 for a not yet replicated delete,
  since the replica still holds the older version). Ephemeral buckets never
  persist.
* OBSERVE is answered from the receiving node's point of view; if it holds
  neither the active nor a replica copy of any entry's vBucket, the whole
  request answers NOT_MY_VBUCKET (with the config body), as kv_engine does.
* Durable writes are checked (level, possibility, preconditions) when they
  arrive and applied when the cluster clock has moved past the replication
  (and, for the persist levels, persistence) lag, polled every 20 ms of real
  time; advancing the clock completes them at once. If the needed lag (or a
  stopped replica) exceeds the timeout the answer is SYNC_WRITE_AMBIGUOUS
  and nothing is written. Meanwhile other mutations of the key get
  SYNC_WRITE_IN_PROGRESS; reads see the previous value.
* Snappy-compressed values are accepted only when Snappy was negotiated
  (HELLO grants it only if ``cramjam`` is installed) and stored
  decompressed; replies are never compressed.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import weakref
from collections import Counter
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, NoReturn, Optional, Set, Tuple

from couchbase_core.mock import proto, subdoc
from couchbase_core.mock.cluster import ACTIVE, MEMCACHED_VERSION, SERVER_VERSION, Bucket
from couchbase_core.mock.kvserver import KVSession, Reply, register
from couchbase_core.mock.proto import Request
from couchbase_core.mock.store import Item, VBucket, absolute_expiry

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.cluster import Cluster

__all__ = ["MAX_KEY", "MAX_VALUE", "MEMCACHED_ITEM_MAX", "LOCKED_CAS", "MEMCACHED_TEXT"]

#: Longest key, in bytes.
MAX_KEY = 250
#: Largest document (body plus xattrs) of a Couchbase bucket.
MAX_VALUE = 20 * 1024 * 1024
#: memcached's ``item_size_max``: header, key and value must fit in it.
MEMCACHED_ITEM_MAX = 1024 * 1024
#: The CAS a GET reports for a locked document.
LOCKED_CAS = 0xFFFFFFFFFFFFFFFF
#: GET_LOCKED lock times, seconds.
LOCK_DEFAULT = 15
LOCK_MAX = 30
#: Durability timeout when the frame carries none, milliseconds.
DURABILITY_DEFAULT_TIMEOUT_MS = 10000
#: memcached's GAT-with-key opcodes (no Couchbase meaning).
GATK, GATKQ = 0x23, 0x24
#: The expiry that tells INCR/DECR not to create a missing counter.
NO_CREATE = 0xFFFFFFFF

#: Error bodies of memcached 1.6 (binary protocol).
MEMCACHED_TEXT: Dict[int, bytes] = {
    proto.KEY_ENOENT: b"Not found",
    proto.KEY_EEXISTS: b"Data exists for key.",
    proto.E2BIG: b"Too large.",
    proto.EINVAL: b"Invalid arguments",
    proto.NOT_STORED: b"Not stored.",
    proto.DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
    proto.UNKNOWN_COMMAND: b"Unknown command",
    proto.ENOMEM: b"Out of memory",
}

XATTR_EINVAL = 0x87
SUBDOC_MULTI_PATH_FAILURE = 0xCC
SUBDOC_SUCCESS_DELETED = 0xCD
SUBDOC_MULTI_PATH_FAILURE_DELETED = 0xD3

_STARTED = time.time()

# Quiet opcode -> the opcode it is the quiet form of.
_BASE = {
    proto.GETQ: proto.GET, proto.GETKQ: proto.GETK, proto.SETQ: proto.SET, proto.ADDQ: proto.ADD,
    proto.REPLACEQ: proto.REPLACE, proto.DELETEQ: proto.DELETE, proto.INCREMENTQ: proto.INCREMENT,
    proto.DECREMENTQ: proto.DECREMENT, proto.APPENDQ: proto.APPEND, proto.PREPENDQ: proto.PREPEND,
    proto.FLUSHQ: proto.FLUSH, proto.GATQ: proto.GAT,
}

_SUBDOC_LOOKUPS = (proto.SUBDOC_GET, proto.SUBDOC_EXISTS, proto.SUBDOC_GET_COUNT)
_SUBDOC_MUTATIONS = (proto.SUBDOC_DICT_ADD, proto.SUBDOC_DICT_UPSERT, proto.SUBDOC_DELETE, proto.SUBDOC_REPLACE,
                     proto.SUBDOC_ARRAY_PUSH_LAST, proto.SUBDOC_ARRAY_PUSH_FIRST, proto.SUBDOC_ARRAY_INSERT,
                     proto.SUBDOC_ARRAY_ADD_UNIQUE, proto.SUBDOC_COUNTER)

#: Opcodes that accept a durability requirement (spec §2.4).
_DURABLE_OPS = frozenset((proto.SET, proto.ADD, proto.REPLACE, proto.DELETE, proto.INCREMENT, proto.DECREMENT,
                          proto.APPEND, proto.PREPEND, proto.TOUCH, proto.GAT, proto.SUBDOC_MULTI_MUTATION)
                         + _SUBDOC_MUTATIONS)

#: Keys with a durable write in flight, per vBucket store.
_PENDING: "weakref.WeakKeyDictionary[VBucket, Set[bytes]]" = weakref.WeakKeyDictionary()
#: Delayed memcached FLUSH: store -> cluster time at which it takes effect.
_FLUSH_AT: "weakref.WeakKeyDictionary[VBucket, float]" = weakref.WeakKeyDictionary()
#: Operation counters for STAT, per bucket and node index.
_COUNTERS: "weakref.WeakKeyDictionary[Bucket, Dict[int, Counter]]" = weakref.WeakKeyDictionary()

Commit = Callable[[float], Optional[bytes]]


class _Refused(Exception):
    """Raised by the helpers to answer the request at once with ``reply``."""

    def __init__(self, reply: Optional[bytes]) -> None:
        super().__init__()
        self.reply = reply


# ------------------------------------------------------------------ answers


def _fail(session: KVSession, req: Request, status: int, context: str = "") -> bytes:
    """A failure response in the bucket's dialect."""
    bucket = session.bucket
    if bucket is not None and bucket.is_memcached and status in MEMCACHED_TEXT:
        return session.reply(req, status, value=MEMCACHED_TEXT[status])
    return session.error(req, status, context)


def _refuse(session: KVSession, req: Request, status: int, context: str = "") -> NoReturn:
    raise _Refused(_fail(session, req, status, context))


def _malformed(session: KVSession, req: Request, context: str) -> NoReturn:
    """EINVAL. memcached also hangs up after it."""
    bucket = session.bucket
    if bucket is not None and bucket.is_memcached:
        session.close_after(session.reply(req, proto.EINVAL, value=MEMCACHED_TEXT[proto.EINVAL]))
        raise _Refused(None)
    raise _Refused(session.error(req, proto.EINVAL, context))


def _locked(session: KVSession, req: Request) -> NoReturn:
    """A mutation of a locked document: LOCKED, or KEY_EEXISTS for old clients."""
    status = proto.LOCKED if proto.F_XERROR in session.features else proto.KEY_EEXISTS
    raise _Refused(session.error(req, status, ""))


def _base(opcode: int) -> int:
    """The opcode a quiet opcode is the quiet form of (itself otherwise)."""
    return _BASE.get(opcode, opcode)


def _quiet_ok(req: Request, reply: bytes) -> Optional[bytes]:
    """Quiet mutations say nothing on success."""
    return None if req.quiet else reply


def _token(session: KVSession, store: VBucket, item: Item) -> bytes:
    """Mutation token extras, when negotiated (never for memcached buckets)."""
    bucket = session.bucket
    if proto.F_MUTATION_SEQNO not in session.features or bucket is None or bucket.is_memcached:
        return b""
    return struct.pack(">QQ", store.uuid, item.seqno)


# ------------------------------------------------------------- validation


def _check_shape(session: KVSession, req: Request, extras: Iterable[int] = (0,), key: Optional[bool] = True,
                 value: bool = False) -> None:
    """Validate extras length, key presence (True: required, False: none,
    None: optional) and value presence like the server's packet validators."""
    if len(req.extras) not in tuple(extras):
        _malformed(session, req, "Invalid extras length")
    if key is True and not req.key:
        _malformed(session, req, "Request must include key")
    if key is False and req.key:
        _malformed(session, req, "Request must not include key")
    if len(req.key) > MAX_KEY:
        _malformed(session, req, "Key too long")
    if not value and req.value:
        _malformed(session, req, "Request must not include value")


def _check_plain_datatype(session: KVSession, req: Request) -> None:
    """Commands without a document value take datatype RAW (Couchbase buckets)."""
    bucket = session.bucket
    if req.datatype and bucket is not None and not bucket.is_memcached:
        _malformed(session, req, "Request datatype invalid")


def _durability(session: KVSession, req: Request) -> None:
    """Reject a durability requirement the command or bucket cannot honour."""
    if req.durability is None:
        return
    if req.opcode not in _DURABLE_OPS:  # includes every quiet variant
        _refuse(session, req, proto.EINVAL, "The command does not support durability requirements")
    level, timeout = req.durability
    if timeout is not None and timeout in (0, 0xFFFF):
        _refuse(session, req, proto.EINVAL, "Invalid durability timeout")
    bucket = session.bucket
    assert bucket is not None
    if not 1 <= level <= 3 or bucket.is_memcached:
        _refuse(session, req, proto.DURABILITY_INVALID_LEVEL)
    if bucket.type == "ephemeral" and level >= 2:
        _refuse(session, req, proto.DURABILITY_INVALID_LEVEL, "Ephemeral buckets cannot persist")
    majority, chain = _chain(bucket, req.vbucket)
    if len(chain) < majority:
        _refuse(session, req, proto.DURABILITY_IMPOSSIBLE)


def _chain(bucket: Bucket, vb: int) -> Tuple[int, List[int]]:
    """(majority, defined node indexes) of a vBucket's replication chain."""
    row = bucket.vbmap[vb] if vb < len(bucket.vbmap) else []
    size = bucket.replicas + 1
    chain = [i for i in row[:size] if i >= 0]
    return size // 2 + 1, chain


# ------------------------------------------------------------------ storage


def _bucket(session: KVSession) -> Bucket:
    bucket = session.bucket
    assert bucket is not None
    return bucket


def _store(session: KVSession, req: Request) -> VBucket:
    """The store a key request addresses: the header's vBucket (Couchbase),
    or this node's cache (memcached)."""
    bucket = _bucket(session)
    if bucket.is_memcached:
        store = bucket.store_for(session.node, req.key)[1]
        _apply_delayed_flush(session, store)
        return store
    return bucket.vbuckets[req.vbucket]


def _apply_delayed_flush(session: KVSession, store: VBucket) -> None:
    when = _FLUSH_AT.get(store)
    if when is None:
        return
    now = session.cluster.clock.now()
    if now < when:
        return
    del _FLUSH_AT[store]
    for key in [k for k, item in store.items.items() if item.mtime <= when]:
        del store.items[key]


def _new_item(cluster: "Cluster", store: VBucket, key: bytes, value: bytes, flags: int, expiry: int,
              datatype: int, xattrs: Dict[str, bytes], mtime: float, deleted: bool = False) -> Item:
    """Store a new version of ``key`` with a fresh CAS and seqno."""
    item = Item(value, flags, expiry, cluster.cas.next(cluster.clock), datatype, store.next_seqno(mtime), mtime)
    item.xattrs = xattrs
    item.deleted = deleted
    store.items[key] = item
    return item


def _count(session: KVSession, *names: str) -> None:
    bucket = _bucket(session)
    per_node = _COUNTERS.setdefault(bucket, {})
    counter = per_node.setdefault(session.node.index, Counter())
    for name in names:
        counter[name] += 1


def _counters(session: KVSession) -> Counter:
    return _COUNTERS.get(_bucket(session), {}).get(session.node.index, Counter())


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(name)


def _is_json(data: bytes) -> bool:
    """True if ``data`` is one strict JSON value (what kv_engine's checker
    accepts: UTF-8, no NaN/Infinity, surrounding JSON whitespace only)."""
    if not data or data[:1] not in b' \t\r\n{["-0123456789tfn':
        return False
    try:
        json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def _json_bit(data: bytes) -> int:
    return proto.DT_JSON if _is_json(data) else 0


def _parse_xattrs(blob: bytes) -> Optional[Tuple[Dict[str, bytes], bytes]]:
    """Split an XATTR-datatype value into (xattrs, body); None if malformed.

    Layout: uint32 total length of the pairs, then pairs of ``uint32 len``
    followed by ``key\\0value\\0`` (``len`` bytes); each value must be JSON."""
    if len(blob) < 4:
        return None
    total = struct.unpack_from(">I", blob)[0]
    end = 4 + total
    if end > len(blob):
        return None
    pos = 4
    xattrs: Dict[str, bytes] = {}
    while pos < end:
        if pos + 4 > end:
            return None
        size = struct.unpack_from(">I", blob, pos)[0]
        pos += 4
        if pos + size > end:
            return None
        parts = blob[pos:pos + size].split(b"\x00")
        pos += size
        if len(parts) != 3 or parts[2] or not parts[0] or not _is_json(parts[1]):
            return None
        try:
            name = parts[0].decode("utf-8")
        except UnicodeDecodeError:
            return None
        xattrs[name] = parts[1]
    return xattrs, blob[end:]


def _decompress(session: KVSession, req: Request, data: bytes) -> bytes:
    try:
        import cramjam
    except ImportError:  # pragma: no cover - HELLO only grants Snappy with cramjam
        _malformed(session, req, "Snappy is not available")
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except Exception:  # noqa: BLE001 - any codec failure is the client's fault
        _malformed(session, req, "Failed to inflate the Snappy-compressed value")


def _incoming(session: KVSession, req: Request, allow_xattr: bool) -> Tuple[bytes, Optional[Dict[str, bytes]], int]:
    """The request value as (body, xattrs or None, JSON bit), after checking
    the datatype against what was negotiated and undoing Snappy."""
    bucket = _bucket(session)
    value = req.value
    datatype = req.datatype
    features = session.features
    if bucket.is_memcached:
        # memcached ignores the datatype byte; only undo what was negotiated.
        if datatype & proto.DT_SNAPPY and proto.F_SNAPPY in features:
            value = _decompress(session, req, value)
        return value, None, _json_bit(value)
    if datatype & ~(proto.DT_JSON | proto.DT_SNAPPY | proto.DT_XATTR):
        _malformed(session, req, "Invalid datatype")
    if datatype & proto.DT_JSON and proto.F_JSON not in features:
        _malformed(session, req, "Datatype JSON was not negotiated")
    if datatype & proto.DT_SNAPPY:
        if proto.F_SNAPPY not in features:
            _malformed(session, req, "Datatype Snappy was not negotiated")
        value = _decompress(session, req, value)
    xattrs: Optional[Dict[str, bytes]] = None
    if datatype & proto.DT_XATTR:
        if proto.F_XATTR not in features or not allow_xattr:
            _malformed(session, req, "Datatype XATTR was not negotiated")
        parsed = _parse_xattrs(value)
        if parsed is None:
            _refuse(session, req, XATTR_EINVAL, "Invalid XATTR blob")
        xattrs, value = parsed
    bit = _json_bit(value)
    if datatype & proto.DT_JSON and not bit:
        _malformed(session, req, "Value is not valid JSON")
    return value, xattrs, bit


def _xattr_size(xattrs: Dict[str, bytes]) -> int:
    if not xattrs:
        return 0
    return 4 + sum(4 + len(k.encode("utf-8")) + len(v) + 2 for k, v in xattrs.items())


def _memcached_fits(key: bytes, flags: int, length: int) -> bool:
    """memcached's item_size_ok: item header (48) + CAS (8) + key + NUL +
    flags (4 if non-zero) + value + CRLF must fit in ``item_size_max``."""
    return 48 + 8 + len(key) + 1 + (4 if flags else 0) + length + 2 <= MEMCACHED_ITEM_MAX


def _check_access(session: KVSession, req: Request, item: Optional[Item], now: float) -> None:
    """Lock and CAS preconditions of a Couchbase mutation."""
    if item is not None and item.locked(now) and req.cas != item.lock_cas:
        _locked(session, req)
    if req.cas:
        if item is None:
            _refuse(session, req, proto.KEY_ENOENT)
        if req.cas != item.cas:
            _refuse(session, req, proto.KEY_EEXISTS)


def _pending(store: VBucket) -> Set[bytes]:
    pending = _PENDING.get(store)
    if pending is None:
        pending = _PENDING[store] = set()
    return pending


def _mutation(session: KVSession, req: Request, store: VBucket, prepare: Callable[[float], Commit]) -> Reply:
    """Run a Couchbase mutation: refuse it while a durable write of the key is
    pending, let ``prepare(now)`` check its preconditions (raising
    :class:`_Refused`) and return the commit, then commit now or durably."""
    _durability(session, req)
    key = req.key
    if key in _pending(store):
        _refuse(session, req, proto.SYNC_WRITE_IN_PROGRESS)
    now = session.cluster.clock.now()
    commit = prepare(now)
    if req.durability is None:
        return commit(now)
    _pending(store).add(key)  # at once: the coroutine only starts on a later loop turn
    return _durable_commit(session, req, store, commit, now)


async def _durable_commit(session: KVSession, req: Request, store: VBucket, commit: Commit,
                          start: float) -> Optional[bytes]:
    """Hold a durable write until the cluster clock says the required copies
    have it (then apply it), or until its timeout (then SYNC_WRITE_AMBIGUOUS).
    The key is already marked pending; this unmarks it."""
    assert req.durability is not None
    cluster = session.cluster
    bucket = _bucket(session)
    level, timeout_ms = req.durability
    timeout = (timeout_ms or DURABILITY_DEFAULT_TIMEOUT_MS) / 1000.0
    majority, chain = _chain(bucket, req.vbucket)
    alive = [i for i in chain if i < len(bucket.servers) and bucket.servers[i].state == ACTIVE]
    replicate = cluster.replicate_delay if majority > 1 else 0.0
    persist = cluster.persist_delay
    if level == 1:
        needed = replicate
    elif level == 2:
        needed = max(replicate, persist)
    else:
        needed = replicate + persist if majority > 1 else persist
    if len(alive) < majority:
        needed = float("inf")
    try:
        deadline = start + min(needed, timeout)
        while True:
            left = deadline - cluster.clock.now()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 0.02))
        if needed > timeout:
            return session.error(req, proto.SYNC_WRITE_AMBIGUOUS, "")
        return commit(start)
    finally:
        _pending(store).discard(req.key)


# --------------------------------------------------------------- GET family


def _get(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req)
    _check_plain_datatype(session, req)
    bucket = _bucket(session)
    store = _store(session, req)
    now = session.cluster.clock.now()
    item = store.lookup(req.key, now)
    _count(session, "cmd_get", "get_misses" if item is None else "get_hits")
    with_key = req.opcode in (proto.GETK, proto.GETKQ)
    if item is None:
        if req.quiet:
            return None
        if with_key:  # memcached and kv_engine both echo the key, without a message
            return session.reply(req, proto.KEY_ENOENT, key=req.key)
        return _fail(session, req, proto.KEY_ENOENT)
    cas = LOCKED_CAS if not bucket.is_memcached and item.locked(now) else item.cas
    return session.reply(req, extras=struct.pack(">I", item.flags), key=req.key if with_key else b"",
                         value=item.value, cas=cas, datatype=item.datatype & proto.DT_JSON)


def _get_replica(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req)
    _check_plain_datatype(session, req)
    if _bucket(session).is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED)
    store = _store(session, req)
    cluster = session.cluster
    now = cluster.clock.now()
    item = store.lookup(req.key, now)
    if item is None or now < item.mtime + cluster.replicate_delay:
        return _fail(session, req, proto.KEY_ENOENT)
    return session.reply(req, extras=struct.pack(">I", item.flags), value=item.value, cas=item.cas,
                         datatype=item.datatype & proto.DT_JSON)


# -------------------------------------------------------------- SET family


def _set(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, extras=(8,), value=True)
    bucket = _bucket(session)
    op = _base(req.opcode)
    flags, expiry = struct.unpack(">II", req.extras)
    if bucket.is_memcached:
        return _set_memcached(session, req, op, flags, expiry)
    body, xattrs, json_bit = _incoming(session, req, allow_xattr=True)
    if len(body) + _xattr_size(xattrs or {}) > MAX_VALUE:
        _refuse(session, req, proto.E2BIG)
    if op == proto.ADD and req.cas:
        _malformed(session, req, "ADD does not take a CAS")
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    _count(session, "cmd_set")

    def prepare(now: float) -> Commit:
        item = store.lookup(key, now)
        _check_access(session, req, item, now)
        if op == proto.ADD and item is not None:
            _refuse(session, req, proto.KEY_EEXISTS)
        if op == proto.REPLACE and item is None:
            _refuse(session, req, proto.KEY_ENOENT)
        new_expiry = item.expiry if (req.preserve_ttl and item is not None) else absolute_expiry(expiry,
                                                                                                 cluster.clock)
        new_xattrs = xattrs if xattrs is not None else (dict(item.xattrs) if item is not None else {})

        def commit(mtime: float) -> Optional[bytes]:
            stored = _new_item(cluster, store, key, body, flags, new_expiry, json_bit, new_xattrs, mtime)
            return _quiet_ok(req, session.reply(req, extras=_token(session, store, stored), cas=stored.cas))

        return commit

    return _mutation(session, req, store, prepare)


def _set_memcached(session: KVSession, req: Request, op: int, flags: int, expiry: int) -> Reply:
    _durability(session, req)
    body, _xattrs, json_bit = _incoming(session, req, allow_xattr=False)
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    now = cluster.clock.now()
    _count(session, "cmd_set")
    if not _memcached_fits(key, flags, len(body)):
        if op == proto.SET:  # memcached drops the stale copy when a SET is too large
            store.items.pop(key, None)
        return _fail(session, req, proto.E2BIG)
    item = store.lookup(key, now)
    if req.cas:  # memcached turns any store with a CAS into a CAS command
        if item is None:
            _count(session, "cas_misses")
            return _fail(session, req, proto.KEY_ENOENT)
        if item.cas != req.cas:
            _count(session, "cas_badval")
            return _fail(session, req, proto.KEY_EEXISTS)
        _count(session, "cas_hits")
    elif op == proto.ADD and item is not None:
        return _fail(session, req, proto.KEY_EEXISTS)
    elif op == proto.REPLACE and item is None:
        return _fail(session, req, proto.KEY_ENOENT)
    stored = _new_item(cluster, store, key, body, flags, absolute_expiry(expiry, cluster.clock), json_bit, {}, now)
    return _quiet_ok(req, session.reply(req, cas=stored.cas))


# ------------------------------------------------------------------- DELETE


def _delete(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req)
    _check_plain_datatype(session, req)
    bucket = _bucket(session)
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    if bucket.is_memcached:
        _durability(session, req)
        item = store.lookup(key, cluster.clock.now())
        if item is None:
            _count(session, "delete_misses")
            return _fail(session, req, proto.KEY_ENOENT)
        if req.cas and req.cas != item.cas:
            return _fail(session, req, proto.KEY_EEXISTS)
        del store.items[key]
        _count(session, "delete_hits")
        return _quiet_ok(req, session.reply(req))

    def prepare(now: float) -> Commit:
        item = store.lookup(key, now)
        if item is None:
            _count(session, "delete_misses")
            _refuse(session, req, proto.KEY_ENOENT)
        _check_access(session, req, item, now)
        system = {k: v for k, v in item.xattrs.items() if k.startswith("_")}
        flags = item.flags

        def commit(mtime: float) -> Optional[bytes]:
            _count(session, "delete_hits")
            tomb = _new_item(cluster, store, key, b"", flags, 0, 0, system, mtime, deleted=True)
            return _quiet_ok(req, session.reply(req, extras=_token(session, store, tomb), cas=tomb.cas))

        return commit

    return _mutation(session, req, store, prepare)


# ----------------------------------------------------------------- counters


def _parse_counter(value: bytes) -> Optional[int]:
    """The stored counter as C's strtoull reads it (memcached's and
    kv_engine's ``safe_strtoull``): leading whitespace, an optional sign,
    decimal digits, then whitespace or the end. Negative numbers and values
    beyond 64 bits are not numbers."""
    text = value
    n = len(text)
    i = 0
    while i < n and text[i] in b" \t\n\v\f\r":
        i += 1
    sign = 1
    if i < n and text[i] in b"+-":
        sign = -1 if text[i] == 0x2D else 1
        i += 1
    start = i
    while i < n and 0x30 <= text[i] <= 0x39:
        i += 1
    if i == start:
        return None
    if i < n and text[i] not in b" \t\n\v\f\r":
        return None
    number = int(text[start:i])
    if number > 0xFFFFFFFFFFFFFFFF:
        return None
    if sign < 0:
        number = (-number) & 0xFFFFFFFFFFFFFFFF
        if number >= 1 << 63:  # negative as a signed number: rejected
            return None
    return number


def _arith(delta: int, current: int, incr: bool) -> int:
    if incr:
        return (current + delta) & 0xFFFFFFFFFFFFFFFF
    return current - delta if delta < current else 0


def _counter(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, extras=(20,))
    _check_plain_datatype(session, req)
    bucket = _bucket(session)
    delta, initial, expiry = struct.unpack(">QQI", req.extras)
    incr = _base(req.opcode) == proto.INCREMENT
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    name = "incr" if incr else "decr"
    if bucket.is_memcached:
        _durability(session, req)
        return _counter_memcached(session, req, store, delta, initial, expiry, incr)

    def prepare(now: float) -> Commit:
        item = store.lookup(key, now)
        _check_access(session, req, item, now)
        if item is None:
            _count(session, name + "_misses")
            if expiry == NO_CREATE:
                _refuse(session, req, proto.KEY_ENOENT)
            result, flags, new_expiry, xattrs = initial, 0, absolute_expiry(expiry, cluster.clock), {}
        else:
            current = _parse_counter(item.value)
            if current is None:
                _refuse(session, req, proto.DELTA_BADVAL)
            result = _arith(delta, current, incr)
            flags, new_expiry, xattrs = item.flags, item.expiry, dict(item.xattrs)

        def commit(mtime: float) -> Optional[bytes]:
            _count(session, name + "_hits")
            stored = _new_item(cluster, store, key, b"%d" % result, flags, new_expiry, proto.DT_JSON, xattrs, mtime)
            return _quiet_ok(req, session.reply(req, extras=_token(session, store, stored),
                                                value=struct.pack(">Q", result), cas=stored.cas))

        return commit

    return _mutation(session, req, store, prepare)


def _counter_memcached(session: KVSession, req: Request, store: VBucket, delta: int, initial: int, expiry: int,
                       incr: bool) -> Reply:
    cluster = session.cluster
    key = req.key
    now = cluster.clock.now()
    name = "incr" if incr else "decr"
    item = store.lookup(key, now)
    if item is None:
        _count(session, name + "_misses")
        if expiry == NO_CREATE:
            return _fail(session, req, proto.KEY_ENOENT)
        stored = _new_item(cluster, store, key, b"%d" % initial, 0, absolute_expiry(expiry, cluster.clock),
                           proto.DT_JSON, {}, now)
        return _quiet_ok(req, session.reply(req, value=struct.pack(">Q", initial), cas=stored.cas))
    if req.cas and req.cas != item.cas:
        return _fail(session, req, proto.KEY_EEXISTS)
    current = _parse_counter(item.value)
    if current is None:
        return _fail(session, req, proto.DELTA_BADVAL)
    result = _arith(delta, current, incr)
    digits = b"%d" % result
    if len(digits) <= len(item.value):  # memcached rewrites the item in place, space-padded
        digits = digits.ljust(len(item.value), b" ")
    _count(session, name + "_hits")
    stored = _new_item(cluster, store, key, digits, item.flags, item.expiry, _json_bit(digits), {}, now)
    return _quiet_ok(req, session.reply(req, value=struct.pack(">Q", result), cas=stored.cas))


# ---------------------------------------------------------- APPEND/PREPEND


def _concat(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, value=True)
    bucket = _bucket(session)
    append = _base(req.opcode) == proto.APPEND
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    if bucket.is_memcached:
        _durability(session, req)
        piece = _incoming(session, req, allow_xattr=False)[0]
        if not _memcached_fits(key, 0, len(piece)):
            return _fail(session, req, proto.E2BIG)
        now = cluster.clock.now()
        item = store.lookup(key, now)
        if item is None:
            return _fail(session, req, proto.NOT_STORED)
        if req.cas and req.cas != item.cas:
            return _fail(session, req, proto.KEY_EEXISTS)
        value = item.value + piece if append else piece + item.value
        if not _memcached_fits(key, item.flags, len(value)):
            return _fail(session, req, proto.NOT_STORED)
        stored = _new_item(cluster, store, key, value, item.flags, item.expiry, _json_bit(value), {}, now)
        return _quiet_ok(req, session.reply(req, cas=stored.cas))
    piece = _incoming(session, req, allow_xattr=False)[0]

    def prepare(now: float) -> Commit:
        item = store.lookup(key, now)
        if item is None:
            _refuse(session, req, proto.NOT_STORED)
        _check_access(session, req, item, now)
        value = item.value + piece if append else piece + item.value
        if len(value) + _xattr_size(item.xattrs) > MAX_VALUE:
            _refuse(session, req, proto.E2BIG)
        flags, expiry, xattrs = item.flags, item.expiry, dict(item.xattrs)

        def commit(mtime: float) -> Optional[bytes]:
            stored = _new_item(cluster, store, key, value, flags, expiry, _json_bit(value), xattrs, mtime)
            return _quiet_ok(req, session.reply(req, extras=_token(session, store, stored), cas=stored.cas))

        return commit

    return _mutation(session, req, store, prepare)


# ---------------------------------------------------------------- TOUCH/GAT


def _touch(session: KVSession, req: Request) -> Reply:
    bucket = _bucket(session)
    with_key = req.opcode in (GATK, GATKQ)
    if with_key and not bucket.is_memcached:  # memcached's GATK/GATKQ mean nothing to kv_engine
        return _fail(session, req, proto.UNKNOWN_COMMAND, "Unknown command")
    _check_shape(session, req, extras=(4,))
    _check_plain_datatype(session, req)
    (expiry,) = struct.unpack(">I", req.extras)
    is_touch = req.opcode == proto.TOUCH
    quiet = req.opcode in (proto.GATQ, GATKQ)
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    if bucket.is_memcached:
        _durability(session, req)
        item = store.lookup(key, cluster.clock.now())
        _count(session, "cmd_touch", "touch_misses" if item is None else "touch_hits")
        if item is None:
            if quiet:
                return None
            if with_key:
                return session.reply(req, proto.KEY_ENOENT, key=key)
            return _fail(session, req, proto.KEY_ENOENT)
        item.expiry = absolute_expiry(expiry, cluster.clock)
        flags = struct.pack(">I", item.flags)
        if is_touch:  # memcached answers TOUCH with the flags, and leaves the CAS alone
            return session.reply(req, extras=flags, cas=item.cas)
        return session.reply(req, extras=flags, key=key if with_key else b"", value=item.value, cas=item.cas,
                             datatype=item.datatype & proto.DT_JSON)

    def prepare(now: float) -> Commit:
        item = store.lookup(key, now)
        _count(session, "cmd_touch", "touch_misses" if item is None else "touch_hits")
        if item is None:
            if req.quiet:
                raise _Refused(None)
            _refuse(session, req, proto.KEY_ENOENT)
        if item.locked(now):
            _locked(session, req)
        new_expiry = absolute_expiry(expiry, cluster.clock)
        old = item

        def commit(mtime: float) -> Optional[bytes]:
            stored = _new_item(cluster, store, key, old.value, old.flags, new_expiry, old.datatype,
                               dict(old.xattrs), mtime)
            if is_touch:
                return session.reply(req, cas=stored.cas)
            return session.reply(req, extras=struct.pack(">I", stored.flags), value=stored.value, cas=stored.cas,
                                 datatype=stored.datatype & proto.DT_JSON)

        return commit

    return _mutation(session, req, store, prepare)


# --------------------------------------------------------------------- FLUSH


def _flush(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, extras=(0, 4), key=False)
    bucket = _bucket(session)
    if not bucket.is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED, "Flush is not supported over KV; use the REST API")
    _durability(session, req)
    store = bucket.store_for(session.node, b"")[1]
    cluster = session.cluster
    _count(session, "cmd_flush")
    delay = struct.unpack(">I", req.extras)[0] if req.extras else 0
    if delay:
        _FLUSH_AT[store] = absolute_expiry(delay, cluster.clock) - 1
    else:
        _FLUSH_AT.pop(store, None)
        store.clear()
    return _quiet_ok(req, session.reply(req))


# --------------------------------------------------------------------- locks


def _get_locked(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, extras=(0, 4))
    _check_plain_datatype(session, req)
    if _bucket(session).is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED)
    store = _store(session, req)
    cluster = session.cluster
    if req.key in _pending(store):
        return _fail(session, req, proto.SYNC_WRITE_IN_PROGRESS)
    now = cluster.clock.now()
    item = store.lookup(req.key, now)
    if item is None:
        return _fail(session, req, proto.KEY_ENOENT)
    if item.locked(now):
        return _fail(session, req, proto.LOCKED)  # TMPFAIL without XERROR
    seconds = struct.unpack(">I", req.extras)[0] if req.extras else 0
    if seconds == 0 or seconds > LOCK_MAX:
        seconds = LOCK_DEFAULT
    item.lock_until = now + seconds
    item.cas = item.lock_cas = cluster.cas.next(cluster.clock)
    return session.reply(req, extras=struct.pack(">I", item.flags), value=item.value, cas=item.cas,
                         datatype=item.datatype & proto.DT_JSON)


def _unlock(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req)
    _check_plain_datatype(session, req)
    if _bucket(session).is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED)
    if not req.cas:
        _malformed(session, req, "UNLOCK_KEY needs the lock CAS")
    store = _store(session, req)
    if req.key in _pending(store):
        return _fail(session, req, proto.SYNC_WRITE_IN_PROGRESS)
    now = session.cluster.clock.now()
    item = store.lookup(req.key, now)
    if item is None:
        return _fail(session, req, proto.KEY_ENOENT)
    if not item.locked(now):
        return _fail(session, req, proto.NOT_LOCKED)  # TMPFAIL without XERROR
    if req.cas != item.lock_cas:
        return _fail(session, req, proto.LOCKED)  # TMPFAIL without XERROR
    item.lock_until = 0.0
    item.lock_cas = 0
    return session.reply(req)


# ------------------------------------------------------------------ GET_META


def _get_meta(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, extras=(0, 1))
    _check_plain_datatype(session, req)
    if _bucket(session).is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED)
    version = req.extras[0] if req.extras else 1
    if version not in (1, 2):
        _malformed(session, req, "Invalid GET_META version")
    store = _store(session, req)
    item = store.lookup(req.key, session.cluster.clock.now(), with_deleted=True)
    if item is None:
        return _fail(session, req, proto.KEY_ENOENT)
    extras = struct.pack(">IIIQ", 1 if item.deleted else 0, item.flags, item.expiry, item.seqno)
    if version == 2:
        extras += bytes([(item.datatype & proto.DT_JSON) | (proto.DT_XATTR if item.xattrs else 0)])
    return session.reply(req, extras=extras, cas=item.cas)


# ------------------------------------------------------------------- OBSERVE


def _role(session: KVSession, vb: int) -> Optional[str]:
    """'active', 'replica' or None: this node's copy of vBucket ``vb``."""
    bucket = _bucket(session)
    if not 0 <= vb < bucket.num_vbuckets or vb >= len(bucket.vbmap) or session.node.state != ACTIVE:
        return None
    me = bucket.server_index(session.node)
    if me < 0:
        return None
    row = bucket.vbmap[vb]
    if row and row[0] == me:
        return "active"
    if me in row[1:bucket.replicas + 1]:
        return "replica"
    return None


def _observe_state(session: KVSession, store: VBucket, key: bytes, role: str, now: float) -> Tuple[int, int]:
    """(state, cas) of ``key`` as the node holding the ``role`` copy sees it."""
    cluster = session.cluster
    item = store.lookup(key, now, with_deleted=True)
    if item is None:
        return 0x80, 0
    ephemeral = _bucket(session).type == "ephemeral"
    replicated_at = item.mtime + (cluster.replicate_delay if role == "replica" else 0.0)
    persisted_at = replicated_at + cluster.persist_delay
    persisted = not ephemeral and now >= persisted_at
    if now < replicated_at:  # this replica has not seen the mutation yet
        return (0x01, 0) if item.deleted else (0x80, 0)
    if item.deleted:
        return (0x80, item.cas) if persisted else (0x81, item.cas)
    return (0x01 if persisted else 0x00), item.cas


def _observe(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, key=False, value=True)
    _check_plain_datatype(session, req)
    bucket = _bucket(session)
    if bucket.is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED)
    data = req.value
    entries: List[Tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            _malformed(session, req, "Truncated OBSERVE entry")
        vb, keylen = struct.unpack_from(">HH", data, pos)
        pos += 4
        if pos + keylen > len(data) or not keylen or keylen > MAX_KEY:
            _malformed(session, req, "Invalid OBSERVE entry")
        entries.append((vb, data[pos:pos + keylen]))
        pos += keylen
    if not entries:
        _malformed(session, req, "OBSERVE needs at least one key")
    roles = []
    for vb, _key in entries:
        role = _role(session, vb)
        if role is None:
            return session.not_my_vbucket(req)
        roles.append(role)
    cluster = session.cluster
    now = cluster.clock.now()
    out = []
    for (vb, key), role in zip(entries, roles):
        state, cas = _observe_state(session, bucket.vbuckets[vb], key, role, now)
        out.append(struct.pack(">HH", vb, len(key)) + key + struct.pack(">BQ", state, cas))
    hints = (int(cluster.persist_delay * 1000) & 0xFFFFFFFF) << 32 | (int(cluster.replicate_delay * 1000)
                                                                      & 0xFFFFFFFF)
    return session.reply(req, value=b"".join(out), cas=hints)


def _seqnos(session: KVSession, store: VBucket, role: str, now: float) -> Tuple[int, int]:
    """(current, last persisted) seqno of ``store`` as this node's copy has them."""
    cluster = session.cluster
    lag = cluster.replicate_delay if role == "replica" else 0.0
    current = store.persisted_seqno(now, lag) if lag > 0 else store.seqno
    if _bucket(session).type == "ephemeral":
        return current, 0
    return current, store.persisted_seqno(now, lag + cluster.persist_delay)


def _observe_seqno(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, key=False, value=True)
    _check_plain_datatype(session, req)
    bucket = _bucket(session)
    if bucket.is_memcached:
        return _fail(session, req, proto.NOT_SUPPORTED)
    if len(req.value) != 8:
        _malformed(session, req, "OBSERVE_SEQNO takes an 8-byte vBucket UUID")
    vb = req.vbucket
    role = _role(session, vb)
    if role is None:
        return session.not_my_vbucket(req)
    store = bucket.vbuckets[vb]
    (uuid,) = struct.unpack(">Q", req.value)
    current, persisted = _seqnos(session, store, role, session.cluster.clock.now())
    if uuid == store.uuid:
        return session.reply(req, value=struct.pack(">BHQQQ", 0, vb, store.uuid, persisted, current))
    log = store.failover_log
    for i, (entry_uuid, _start) in enumerate(log):
        if entry_uuid == uuid and i + 1 < len(log):
            last_received = log[i + 1][1]
            return session.reply(req, value=struct.pack(">BHQQQQQ", 1, vb, store.uuid, persisted, current,
                                                        uuid, last_received))
    return _fail(session, req, proto.KEY_ENOENT, "Unknown vBucket UUID")


# ---------------------------------------------------------------------- STAT


def _stat(session: KVSession, req: Request) -> Reply:
    _check_shape(session, req, key=None, value=True)
    bucket = _bucket(session)
    group = req.key.decode("utf-8", "replace")
    if bucket.is_memcached:
        stats = _memcached_stats(session, group)
    else:
        _check_plain_datatype(session, req)
        stats = _couchbase_stats(session, req, group)
    if stats is None:
        return _fail(session, req, proto.KEY_ENOENT)
    frames = [session.reply(req, key=name.encode(), value=str(value).encode()) for name, value in stats]
    frames.append(session.reply(req))
    return b"".join(frames)


Stats = List[Tuple[str, object]]


def _node_items(session: KVSession, now: float) -> Tuple[int, int, int]:
    """(active items, replica items, bytes) this node holds."""
    bucket = _bucket(session)
    active = replica = size = 0
    if bucket.is_memcached:
        store = bucket.store_for(session.node, b"")[1]
        _apply_delayed_flush(session, store)
        for key, item in store.live_items(now):
            active += 1
            size += len(key) + len(item.value)
        return active, 0, size
    for vb in range(bucket.num_vbuckets):
        role = _role(session, vb)
        if role is None:
            continue
        count = 0
        for key, item in bucket.vbuckets[vb].live_items(now):
            count += 1
            size += len(key) + len(item.value)
        if role == "active":
            active += count
        else:
            replica += count
    return active, replica, size


def _common_stats(session: KVSession, now: float, version: str) -> Stats:
    return [("pid", os.getpid()), ("uptime", int(now - _STARTED)), ("time", int(now)), ("version", version)]


def _memcached_stats(session: KVSession, group: str) -> Optional[Stats]:
    """memcached 1.6's STAT groups (names and order as it sends them)."""
    bucket = _bucket(session)
    cluster = session.cluster
    now = cluster.clock.now()
    count = _counters(session)
    quota = bucket.ram_quota_mb * 1024 * 1024
    items, _replica, size = _node_items(session, now)
    if group == "":
        conns = len(session.runtime.sessions)
        stats = _common_stats(session, now, MEMCACHED_VERSION) + [
            ("libevent", "2.1.12-stable"), ("pointer_size", 64), ("rusage_user", "0.000000"),
            ("rusage_system", "0.000000"), ("max_connections", 1024), ("curr_connections", conns),
            ("total_connections", conns), ("rejected_connections", 0), ("connection_structures", conns),
            ("response_obj_oom", 0), ("response_obj_count", 1), ("response_obj_bytes", 16384),
            ("read_buf_count", 2), ("read_buf_bytes", 32768), ("read_buf_bytes_free", 0), ("read_buf_oom", 0),
            ("reserved_fds", 20)]
        for name in ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits", "get_misses",
                     "get_expired", "get_flushed", "delete_misses", "delete_hits", "incr_misses", "incr_hits",
                     "decr_misses", "decr_hits", "cas_misses", "cas_hits", "cas_badval", "touch_hits",
                     "touch_misses", "store_too_large", "store_no_memory", "auth_cmds", "auth_errors"):
            stats.append((name, count[name]))
        stats += [("bytes_read", 0), ("bytes_written", session.bytes_written), ("limit_maxbytes", quota),
                  ("accepting_conns", 1), ("listen_disabled_num", 0), ("time_in_listen_disabled_us", 0),
                  ("threads", 4), ("conn_yields", 0), ("hash_power_level", 16), ("hash_bytes", 524288),
                  ("hash_is_expanding", 0)]
        for name in ("slab_reassign_rescues", "slab_reassign_chunk_rescues", "slab_reassign_evictions_nomem",
                     "slab_reassign_inline_reclaim", "slab_reassign_busy_items", "slab_reassign_busy_deletes",
                     "slab_reassign_running", "slabs_moved", "lru_crawler_running"):
            stats.append((name, 0))
        stats += [("lru_crawler_starts", 1), ("lru_maintainer_juggles", 0)]
        for name in ("malloc_fails", "log_worker_dropped", "log_worker_written", "log_watcher_skipped",
                     "log_watcher_sent", "log_watchers", "unexpected_napi_ids", "round_robin_fallback"):
            stats.append((name, 0))
        stats += [("bytes", size), ("curr_items", items), ("total_items", count["cmd_set"])]
        for name in ("slab_global_page_pool", "expired_unfetched", "evicted_unfetched", "evicted_active",
                     "evictions", "reclaimed", "crawler_reclaimed", "crawler_items_checked", "lrutail_reflocked",
                     "moves_to_cold", "moves_to_warm", "moves_within_lru", "direct_reclaims", "lru_bumps_dropped"):
            stats.append((name, 0))
        return stats
    if group == "settings":
        return [
            ("maxbytes", quota), ("maxconns", 1024), ("tcpport", session.node.ports.get("kv", 0)),
            ("udpport", 0), ("inter", session.node.host), ("verbosity", 0), ("oldest", 0), ("evictions", "on"),
            ("domain_socket", "NULL"), ("umask", 700), ("shutdown_command", "no"), ("growth_factor", "1.25"),
            ("chunk_size", 48), ("num_threads", 4), ("num_threads_per_udp", 4), ("stat_key_prefix", ":"),
            ("detail_enabled", "no"), ("reqs_per_event", 20), ("cas_enabled", "yes"), ("tcp_backlog", 1024),
            ("binding_protocol", "auto-negotiate"), ("auth_enabled_sasl", "no"), ("auth_enabled_ascii", "no"),
            ("item_size_max", MEMCACHED_ITEM_MAX), ("maxconns_fast", "yes"), ("hashpower_init", 0),
            ("slab_reassign", "yes"), ("slab_automove", 1), ("slab_automove_ratio", "0.80"),
            ("slab_automove_window", 30), ("slab_chunk_max", 524288), ("lru_crawler", "yes"),
            ("lru_crawler_sleep", 100), ("lru_crawler_tocrawl", 0), ("tail_repair_time", 0),
            ("flush_enabled", "yes"), ("dump_enabled", "yes"), ("hash_algorithm", "murmur3"),
            ("lru_maintainer_thread", "yes"), ("lru_segmented", "yes"), ("hot_lru_pct", 20),
            ("warm_lru_pct", 40), ("hot_max_factor", "0.20"), ("warm_max_factor", "2.00"), ("temp_lru", "no"),
            ("temporary_ttl", 61), ("idle_timeout", 0), ("watcher_logbuf_size", 262144),
            ("worker_logbuf_size", 65536), ("read_buf_mem_limit", 0), ("track_sizes", "no"),
            ("inline_ascii_response", "no"), ("ext_item_size", 512), ("ext_item_age", 4294967295),
            ("ext_low_ttl", 0), ("ext_recache_rate", 2000), ("ext_wbuf_size", 4194304), ("ext_compact_under", 0),
            ("ext_drop_under", 0), ("ext_max_sleep", 1000000), ("ext_max_frag", "0.80"),
            ("slab_automove_freeratio", "0.010"), ("ext_drop_unread", "no"), ("ssl_enabled", "no"),
            ("ssl_chain_cert", "(null)"), ("ssl_key", "(null)"), ("ssl_verify_mode", 0), ("ssl_keyformat", 1),
            ("ssl_ciphers", "NULL"), ("ssl_ca_cert", "NULL"), ("ssl_wbuf_size", 16384),
            ("ssl_session_cache", "no"), ("ssl_kernel_tls", "no"), ("ssl_min_version", "tlsv1.2"),
            ("num_napi_ids", "(null)"), ("memory_file", "(null)")]
    if group == "items":
        if not items:
            return []
        prefix = "items:1:"
        stats = [(prefix + "number", items), (prefix + "number_hot", items), (prefix + "number_warm", 0),
                 (prefix + "number_cold", 0), (prefix + "age_hot", 0), (prefix + "age_warm", 0),
                 (prefix + "age", 0), (prefix + "mem_requested", size)]
        for name in ("evicted", "evicted_nonzero", "evicted_time", "outofmemory", "tailrepairs", "reclaimed",
                     "expired_unfetched", "evicted_unfetched", "evicted_active", "crawler_reclaimed",
                     "crawler_items_checked", "lrutail_reflocked", "moves_to_cold", "moves_to_warm",
                     "moves_within_lru", "direct_reclaims", "hits_to_hot", "hits_to_warm", "hits_to_cold",
                     "hits_to_temp"):
            stats.append((prefix + name, 0))
        return stats
    if group == "slabs":  # everything is pretended to live in slab class 1
        if not items:
            return [("active_slabs", 0), ("total_malloced", 0)]
        per_page = 10922
        stats = [("1:chunk_size", 96), ("1:chunks_per_page", per_page), ("1:total_pages", 1),
                 ("1:total_chunks", per_page), ("1:used_chunks", items), ("1:free_chunks", max(per_page - items, 0)),
                 ("1:free_chunks_end", 0)]
        for name in ("get_hits", "cmd_set", "delete_hits", "incr_hits", "decr_hits", "cas_hits", "cas_badval",
                     "touch_hits"):
            stats.append(("1:" + name, count[name]))
        return stats + [("active_slabs", 1), ("total_malloced", 1048576)]
    if group == "sizes":
        return [("sizes_status", "disabled")]
    if group == "detail dump":
        return [("detailed", "END\r\n")]
    if group in ("reset", "detail on", "detail off"):
        return []
    return None


def _couchbase_stats(session: KVSession, req: Request, group: str) -> Optional[Stats]:
    """kv_engine-style STAT groups of a Couchbase bucket, from this node's view."""
    bucket = _bucket(session)
    cluster = session.cluster
    now = cluster.clock.now()
    quota = bucket.ram_quota_mb * 1024 * 1024
    words = group.split(" ")
    if words[0] in ("key", "vkey") and len(words) >= 2:
        return _key_stats(session, req, words[0], group[len(words[0]) + 1:], now)
    if group == "":
        count = _counters(session)
        active, replica, size = _node_items(session, now)
        roles = [_role(session, vb) for vb in range(bucket.num_vbuckets)]
        stats = _common_stats(session, now, SERVER_VERSION) + [
            ("pointer_size", 64), ("curr_connections", len(session.runtime.sessions)),
            ("total_connections", len(session.runtime.sessions)), ("daemon_connections", 0)]
        for name in ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "delete_hits",
                     "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses", "touch_hits",
                     "touch_misses"):
            stats.append((name, count[name]))
        stats += [
            ("bytes_written", session.bytes_written), ("curr_items", active), ("curr_items_tot", active + replica),
            ("vb_active_curr_items", active), ("vb_replica_curr_items", replica),
            ("vb_active_num", roles.count("active")), ("vb_replica_num", roles.count("replica")),
            ("ep_bucket_type", "ephemeral" if bucket.type == "ephemeral" else "persistent"),
            ("ep_max_size", quota), ("ep_mem_high_wat", quota * 85 // 100), ("ep_mem_low_wat", quota * 75 // 100),
            ("mem_used", size), ("ep_kv_size", size), ("ep_num_value_ejects", 0), ("ep_degraded_mode", 0),
            ("ep_warmup_thread", "complete"), ("ep_persist_delay_ms", int(cluster.persist_delay * 1000)),
            ("ep_replicate_delay_ms", int(cluster.replicate_delay * 1000)),
            ("ep_max_vbuckets", bucket.num_vbuckets), ("ep_num_replicas", bucket.replicas)]
        return stats
    if group == "settings":
        return [("maxconns", 65000), ("num_threads", 4), ("verbosity", 0), ("datatype_json", "true"),
                ("datatype_snappy", "true" if proto.snappy_available() else "false"), ("xattr_enabled", "true"),
                ("max_packet_size", proto.MAX_BODY), ("max_item_size", MAX_VALUE),
                ("durability_timeout_default_ms", DURABILITY_DEFAULT_TIMEOUT_MS)]
    if group == "memory":
        _a, _r, size = _node_items(session, now)
        return [("bytes", size), ("mem_used", size), ("ep_kv_size", size), ("ep_value_size", size),
                ("ep_overhead", 0), ("ep_max_size", quota), ("ep_mem_high_wat", quota * 85 // 100),
                ("ep_mem_low_wat", quota * 75 // 100), ("ep_oom_errors", 0), ("ep_tmp_oom_errors", 0)]
    if group == "uuid":
        return [("uuid", bucket.uuid)]
    if words[0] in ("vbucket", "vbucket-seqno", "failovers") and len(words) <= 2:
        if len(words) == 2:
            if not words[1].isdigit():
                _malformed(session, req, "Invalid vBucket id")
            vbs = [int(words[1])]
            if _role(session, vbs[0]) is None:
                raise _Refused(session.not_my_vbucket(req))
        else:
            vbs = list(range(bucket.num_vbuckets))
        stats = []
        for vb in vbs:
            role = _role(session, vb)
            if role is None:
                continue
            store = bucket.vbuckets[vb]
            if words[0] == "vbucket":
                stats.append(("vb_%d" % vb, role))
            elif words[0] == "vbucket-seqno":
                current, persisted = _seqnos(session, store, role, now)
                stats += [("vb_%d:high_seqno" % vb, current), ("vb_%d:abs_high_seqno" % vb, current),
                          ("vb_%d:last_persisted_seqno" % vb, persisted), ("vb_%d:uuid" % vb, store.uuid),
                          ("vb_%d:purge_seqno" % vb, 0)]
            else:
                log = list(reversed(store.failover_log))
                stats.append(("vb_%d:num_entries" % vb, len(log)))
                for i, (uuid, seqno) in enumerate(log):
                    stats += [("vb_%d:%d:id" % (vb, i), uuid), ("vb_%d:%d:seq" % (vb, i), seqno)]
        return stats
    return None


def _key_stats(session: KVSession, req: Request, kind: str, rest: str, now: float) -> Stats:
    """``key <key> <vb>`` / ``vkey <key> <vb>``: one document's state."""
    bucket = _bucket(session)
    cluster = session.cluster
    name, _, vb_text = rest.rpartition(" ")
    if not name or not vb_text.isdigit():
        _malformed(session, req, "Expected '%s <key> <vbucket>'" % kind)
    vb = int(vb_text)
    if _role(session, vb) != "active":
        raise _Refused(session.not_my_vbucket(req))
    item = bucket.vbuckets[vb].lookup(name.encode("utf-8"), now)
    if item is None:
        _refuse(session, req, proto.KEY_ENOENT)
    dirty = bucket.type != "ephemeral" and now < item.mtime + cluster.persist_delay
    stats: Stats = [("key_is_dirty", "true" if dirty else "false"), ("key_exptime", item.expiry),
                    ("key_flags", item.flags), ("key_cas", item.cas), ("key_vb_state", "active"),
                    ("key_data_age", int(now - item.mtime) if dirty else 0),
                    ("key_last_modification_time", int(item.mtime))]
    if kind == "vkey":
        stats.append(("key_valid", "ram_but_not_disk" if dirty else "valid"))
    return stats


# ------------------------------------------------------------ sub-documents


def _doc_state(item: Optional[Item], store: VBucket) -> subdoc.DocState:
    if item is None:
        return subdoc.DocState(vbucket_uuid=store.uuid)
    return subdoc.DocState(body=(item.value or None) if item.deleted else item.value, xattrs=dict(item.xattrs),
                           deleted=item.deleted, cas=item.cas, flags=item.flags, expiry=item.expiry,
                           seqno=item.seqno,
                           datatype=(item.datatype & proto.DT_JSON) | (proto.DT_XATTR if item.xattrs else 0),
                           vbucket_uuid=store.uuid)


def _subdoc_checks(session: KVSession, req: Request, doc_flags: int, lookup: bool) -> None:
    """Checks every sub-document command needs before its body is parsed.

    Lookups are registered without an owner: the active answers them, and a
    replica too when the REPLICA_READ document flag asks it to."""
    bucket = _bucket(session)
    if bucket.is_memcached:
        _refuse(session, req, proto.NOT_SUPPORTED, "Sub-document commands need a Couchbase bucket")
    if lookup:
        role = _role(session, req.vbucket)
        if role != "active" and not (role == "replica" and doc_flags & subdoc.REPLICA_READ):
            raise _Refused(session.not_my_vbucket(req))
    if not req.key:
        _malformed(session, req, "Request must include key")
    if len(req.key) > MAX_KEY:
        _malformed(session, req, "Key too long")
    _check_plain_datatype(session, req)


def _check_xattr_flags(session: KVSession, req: Request, path_flags: Iterable[int]) -> None:
    if proto.F_XATTR not in session.features and any(f & subdoc.XATTR for f in path_flags):
        _refuse(session, req, proto.NOT_SUPPORTED, "XATTR was not negotiated")


def _subdoc_single(session: KVSession, req: Request) -> Reply:
    """A single-path lookup or mutation (spec §7.1)."""
    lookup = req.opcode in _SUBDOC_LOOKUPS
    extras = req.extras
    doc_flags = extras[-1] if len(extras) in (4, 8, 12) else 0
    _subdoc_checks(session, req, doc_flags, lookup)
    if len(extras) not in ((3, 4) if lookup else (3, 4, 7, 8, 11, 12)):
        _malformed(session, req, "Invalid extras length")
    pathlen, path_flags = struct.unpack_from(">HB", extras)
    expiry = struct.unpack_from(">I", extras, 3)[0] if len(extras) >= 7 else None
    user_flags = struct.unpack_from(">I", extras, 7)[0] if len(extras) >= 11 else None
    if pathlen > len(req.value):
        _malformed(session, req, "Path length exceeds the body")
    path = req.value[:pathlen]
    value = req.value[pathlen:]
    _check_xattr_flags(session, req, [path_flags])
    if lookup:
        if value:
            _malformed(session, req, "Lookups take no value")
        return _subdoc_lookup(session, req, [(req.opcode, path_flags, path)], doc_flags, multi=False)
    return _subdoc_mutate(session, req, [(req.opcode, path_flags, path, value)], doc_flags, expiry, user_flags,
                          multi=False)


def _subdoc_multi_lookup(session: KVSession, req: Request) -> Reply:
    """MULTI_LOOKUP (spec §7.2)."""
    doc_flags = req.extras[0] if len(req.extras) == 1 else 0
    _subdoc_checks(session, req, doc_flags, lookup=True)
    if len(req.extras) not in (0, 1):
        _malformed(session, req, "Invalid extras length")
    data = req.value
    specs: List[Tuple[int, int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            _malformed(session, req, "Truncated lookup spec")
        opcode, flags, pathlen = struct.unpack_from(">BBH", data, pos)
        pos += 4
        if pos + pathlen > len(data):
            _malformed(session, req, "Truncated lookup spec")
        specs.append((opcode, flags, data[pos:pos + pathlen]))
        pos += pathlen
    _check_xattr_flags(session, req, [f for _o, f, _p in specs])
    return _subdoc_lookup(session, req, specs, doc_flags, multi=True)


def _subdoc_multi_mutation(session: KVSession, req: Request) -> Reply:
    """MULTI_MUTATION (spec §7.3)."""
    extras = req.extras
    doc_flags = extras[-1] if len(extras) in (1, 5, 9) else 0
    _subdoc_checks(session, req, doc_flags, lookup=False)
    if len(extras) not in (0, 1, 4, 5, 8, 9):
        _malformed(session, req, "Invalid extras length")
    expiry = struct.unpack_from(">I", extras)[0] if len(extras) >= 4 else None
    user_flags = struct.unpack_from(">I", extras, 4)[0] if len(extras) >= 8 else None
    data = req.value
    specs: List[Tuple[int, int, bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 8 > len(data):
            _malformed(session, req, "Truncated mutation spec")
        opcode, flags, pathlen, valuelen = struct.unpack_from(">BBHI", data, pos)
        pos += 8
        if pos + pathlen + valuelen > len(data):
            _malformed(session, req, "Truncated mutation spec")
        specs.append((opcode, flags, data[pos:pos + pathlen], data[pos + pathlen:pos + pathlen + valuelen]))
        pos += pathlen + valuelen
    _check_xattr_flags(session, req, [f for _o, f, _p, _v in specs])
    return _subdoc_mutate(session, req, specs, doc_flags, expiry, user_flags, multi=True)


def _subdoc_lookup(session: KVSession, req: Request, specs: List[Tuple[int, int, bytes]], doc_flags: int,
                   multi: bool) -> Reply:
    store = _store(session, req)
    now = session.cluster.clock.now()
    item = store.lookup(req.key, now, with_deleted=True)
    top, results = subdoc.lookup(_doc_state(item, store), specs, doc_flags)  # type: ignore[arg-type]
    if top not in (proto.SUCCESS, SUBDOC_MULTI_PATH_FAILURE, SUBDOC_SUCCESS_DELETED,
                   SUBDOC_MULTI_PATH_FAILURE_DELETED):
        return _fail(session, req, top)
    assert item is not None
    cas = LOCKED_CAS if item.locked(now) else item.cas
    if multi:
        body = b"".join(struct.pack(">HI", status, len(value)) + value for status, value in results)
        return session.reply(req, top, value=body, cas=cas)
    status, value = results[0]
    if status != proto.SUCCESS:
        return _fail(session, req, status)
    deleted = top in (SUBDOC_SUCCESS_DELETED, SUBDOC_MULTI_PATH_FAILURE_DELETED)
    return session.reply(req, SUBDOC_SUCCESS_DELETED if deleted else proto.SUCCESS, value=value, cas=cas,
                         datatype=proto.DT_JSON if value else 0)


def _subdoc_mutate(session: KVSession, req: Request, specs: List[Tuple[int, int, bytes, bytes]], doc_flags: int,
                   expiry: Optional[int], user_flags: Optional[int], multi: bool) -> Reply:
    store = _store(session, req)
    cluster = session.cluster
    key = req.key
    if req.cas and doc_flags & subdoc.ADD:
        _malformed(session, req, "A CAS cannot be combined with the ADD document flag")

    def run(item: Optional[Item], cas: int, seqno: int) -> subdoc.MutationOutcome:
        return subdoc.mutate(_doc_state(item, store), specs, doc_flags, new_cas=cas, new_seqno=seqno)  # type: ignore[arg-type]

    def failure(outcome: subdoc.MutationOutcome) -> bytes:
        if outcome.status in (SUBDOC_MULTI_PATH_FAILURE, SUBDOC_MULTI_PATH_FAILURE_DELETED):
            if multi:
                return session.reply(req, outcome.status,
                                     value=struct.pack(">BH", outcome.failed_index, outcome.failed_status))
            return _fail(session, req, outcome.failed_status)
        return _fail(session, req, outcome.status)

    def prepare(now: float) -> Commit:
        item = store.lookup(key, now, with_deleted=True)
        live = item if item is not None and not item.deleted else None
        _check_access(session, req, live if not (doc_flags & subdoc.ACCESS_DELETED) else item, now)
        trial = run(item, 0, 0)
        if trial.status not in (proto.SUCCESS, SUBDOC_SUCCESS_DELETED):
            raise _Refused(failure(trial))

        def commit(mtime: float) -> Optional[bytes]:
            cas = cluster.cas.next(cluster.clock)
            seqno = store.seqno + 1
            outcome = run(item, cas, seqno)
            if outcome.status not in (proto.SUCCESS, SUBDOC_SUCCESS_DELETED):
                return failure(outcome)
            body = outcome.body or b""
            deleted = outcome.deleted or outcome.status == SUBDOC_SUCCESS_DELETED
            if req.preserve_ttl and item is not None and not item.deleted:
                new_expiry = item.expiry
            else:
                new_expiry = absolute_expiry(expiry, cluster.clock) if expiry is not None else 0
            if user_flags is not None:
                flags = user_flags
            else:
                flags = item.flags if item is not None and not outcome.created else 0
            stored = Item(body, flags, 0 if deleted else new_expiry, cas, 0 if deleted else _json_bit(body),
                          store.next_seqno(mtime), mtime)
            stored.xattrs = dict(outcome.xattrs)
            stored.deleted = deleted
            store.items[key] = stored
            extras = _token(session, store, stored)
            if multi:
                value = b"".join(struct.pack(">BHI", index, status, len(val)) + val
                                 for index, status, val in outcome.results)
                return session.reply(req, outcome.status, extras=extras, value=value, cas=stored.cas)
            value = outcome.results[0][2] if outcome.results else b""
            return session.reply(req, outcome.status, extras=extras, value=value, cas=stored.cas,
                                 datatype=proto.DT_JSON if value else 0)

        return commit

    return _mutation(session, req, store, prepare)


# -------------------------------------------------------------- registration


def _guarded(handler: Callable[[KVSession, Request], Reply]) -> Callable[[KVSession, Request], Reply]:
    """Turn a :class:`_Refused` raised anywhere in ``handler`` into its reply."""

    def run(session: KVSession, req: Request) -> Reply:
        try:
            if req.durability is not None and req.opcode not in _DURABLE_OPS:
                _refuse(session, req, proto.EINVAL, "The command does not support durability requirements")
            return handler(session, req)
        except _Refused as refused:
            return refused.reply

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _register_all() -> None:
    table: List[Tuple[Iterable[int], Callable[[KVSession, Request], Reply], Optional[str], bool]] = [
        ((proto.GET, proto.GETQ, proto.GETK, proto.GETKQ), _get, "active", False),
        ((proto.SET, proto.SETQ, proto.ADD, proto.ADDQ, proto.REPLACE, proto.REPLACEQ), _set, "active", True),
        ((proto.DELETE, proto.DELETEQ), _delete, "active", True),
        ((proto.INCREMENT, proto.INCREMENTQ, proto.DECREMENT, proto.DECREMENTQ), _counter, "active", True),
        ((proto.APPEND, proto.APPENDQ, proto.PREPEND, proto.PREPENDQ), _concat, "active", True),
        ((proto.TOUCH, proto.GAT, proto.GATQ), _touch, "active", True),
        ((GATK, GATKQ), _touch, None, True),
        ((proto.FLUSH, proto.FLUSHQ), _flush, None, True),
        ((proto.STAT,), _stat, None, False),
        ((proto.GET_REPLICA,), _get_replica, "replica", False),
        ((proto.GET_LOCKED,), _get_locked, "active", False),
        ((proto.UNLOCK_KEY,), _unlock, "active", False),
        ((proto.GET_META,), _get_meta, "active", False),
        ((proto.OBSERVE,), _observe, None, False),
        ((proto.OBSERVE_SEQNO,), _observe_seqno, None, False),
        (_SUBDOC_LOOKUPS, _subdoc_single, None, False),
        (_SUBDOC_MUTATIONS, _subdoc_single, "active", True),
        ((proto.SUBDOC_MULTI_LOOKUP,), _subdoc_multi_lookup, None, False),
        ((proto.SUBDOC_MULTI_MUTATION,), _subdoc_multi_mutation, "active", True),
    ]
    for opcodes, handler, owner, mutation in table:
        guarded = _guarded(handler)
        for opcode in opcodes:
            register(opcode, guarded, key_owner=owner, mutation=mutation)


_register_all()

"""Data commands of the emulated KV service (registered by opcode).

Minimal first version: GET and SET only, so the runtime can start; the full
set of data commands is being written.
"""

from __future__ import annotations

import struct

from couchbase_core.mock import proto
from couchbase_core.mock.kvserver import KVSession, register
from couchbase_core.mock.proto import Request
from couchbase_core.mock.store import Item, absolute_expiry


def _get(session: KVSession, req: Request) -> bytes:
    bucket = session.bucket
    assert bucket is not None
    now = session.cluster.clock.now()
    _vb, store = bucket.store_for(session.node, req.key)
    item = store.lookup(req.key, now)
    if item is None:
        return session.error(req, proto.KEY_ENOENT)
    return session.reply(req, extras=struct.pack(">I", item.flags), value=item.value, cas=item.cas,
                         datatype=item.datatype)


def _set(session: KVSession, req: Request) -> bytes:
    bucket = session.bucket
    assert bucket is not None
    cluster = session.cluster
    now = cluster.clock.now()
    flags, expiry = struct.unpack(">II", req.extras)
    _vb, store = bucket.store_for(session.node, req.key)
    item = Item(req.value, flags, absolute_expiry(expiry, cluster.clock), cluster.cas.next(cluster.clock), 0,
                store.next_seqno(now), now)
    store.items[req.key] = item
    return session.reply(req, cas=item.cas)


register(proto.GET, _get)
register(proto.SET, _set, mutation=True)

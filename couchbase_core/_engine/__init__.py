"""The evented core (private).

Nothing in this package blocks, sleeps, starts a thread or imports an event
library: it reacts to readiness callbacks on events it obtained from an IOPS
(:mod:`couchbase_core.iops.base`) and does bounded work in each.

* :mod:`.protocol` — the memcached binary protocol, sans I/O: named fields
  and constants, one header packer, request builders, the frame decoder.
* :mod:`.transport` — one stream (socket + TLS pump, read/write interest,
  an injectable socket factory) used by the KV and HTTP connections.
* :mod:`.session` — the KV handshake (HELLO, error map, SASL, SELECT_BUCKET)
  as a byte-driven state machine; :mod:`.sasl` its mechanisms.
* :mod:`.connection` — one KV connection: write queue, pending table,
  reply dispatch; it sees the engine through :mod:`.owner` (a typed seam).
* :mod:`.ops` — what the engine needs of an operation (:class:`~.ops.KVOp`);
  :mod:`.batch` — the typed batch of a ``_multi`` call.
* :mod:`.instance` — the engine: routing, retries, config updates, closing;
  :mod:`.timeouts` — per-operation deadlines on one engine timer.
* :mod:`.config`, :mod:`.bootstrap`, :mod:`.dial`, :mod:`.dns` — cluster
  configs and vBucket/ketama maps, bootstrap providers, address resolution,
  DNS SRV.
* :mod:`.http`, :mod:`.httpreq`, :mod:`.rows`, :mod:`.prepared` — the HTTP
  client, the engine's HTTP entry point, row streaming, the N1QL prepared
  statement cache.
* :mod:`.durability`, :mod:`.forks`, :mod:`.settings`, :mod:`.snappy`,
  :mod:`.tls` — observe-based durability, fork safety, options, Snappy,
  TLS contexts.
* :mod:`.tracing` — slow-operation and orphan reports, OpenTelemetry spans
  (``enable_tracing``, ``tracer=``).
"""

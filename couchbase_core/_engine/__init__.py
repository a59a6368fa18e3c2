"""The evented core (private).

Nothing in this package blocks, sleeps, starts a thread or imports an event
library: it reacts to readiness callbacks on events it obtained from an IOPS
(:mod:`couchbase_core.iops.base`) and does bounded work in each.

* :mod:`.protocol` — sans-I/O binary protocol codec.
* :mod:`.config` — key -> node mapping (ketama continuum).
* :mod:`.timeouts` — per-operation deadlines on one engine timer.
* :mod:`.connection` — one KV socket: connect, handshake, pipelined I/O.
* :mod:`.instance` — the engine: routing, bootstrap, closing.
* :mod:`.tracing` — slow-operation and orphan reports, OpenTelemetry spans (``enable_tracing``, ``tracer=``).
"""

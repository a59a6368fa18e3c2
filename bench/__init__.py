"""Side-by-side throughput and latency benchmark: gcouchbase against other
gevent-friendly memcached clients and a hand-written raw-socket baseline.

Run it with ``make bench`` (or ``.venv/bin python -m bench --help``); see
``docs/performance.md``. This package deliberately imports nothing at import
time, so ``python -m bench.worker`` can monkeypatch before any socket or
threading module is loaded.
"""

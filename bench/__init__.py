"""Side-by-side throughput and latency benchmark: gcouchbase against other
gevent-friendly memcached clients and a hand-written raw-socket baseline.

Run it with ``make bench`` (or ``.venv/bin python -m bench --help``); see
``docs/performance.md``. Three more measurements run on their own
(``make bench-extra``): ``python -m bench.stall`` (hub stalls during big
``_multi`` calls), ``python -m bench.parked`` (memory per greenlet parked on
a frozen server) and ``python -m bench.rows`` (view/N1QL rows per second);
``python -m bench.instr`` (``make bench-instr``) counts CPU instructions per
operation next to the shared harness's raw client, under valgrind.

This package deliberately imports nothing at import time, so ``python -m
bench.worker`` can monkeypatch before any socket or threading module is
loaded.
"""

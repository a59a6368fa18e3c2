# gcouchbase: the two commands a fresh clone needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
# PyPy: Debian's pypy3 (installed by scripts/ensure-venv-pypy when missing)
PYPY      ?= pypy3
VENV_PYPY ?= .venv-pypy

.PHONY: venv venv-pypy memcached demo test test-pypy bench bench-extra bench-instr lint clean

venv:
	@PYTHON=$(PYTHON) VENV=$(VENV) ./scripts/ensure-venv

memcached:
	@./scripts/ensure-memcached

demo: venv
	$(PY) -m gcouchbase.demo

test: venv memcached
	$(PY) -m pytest $(PYTEST_ARGS)

venv-pypy:
	@PYPY=$(PYPY) VENV=$(VENV_PYPY) ./scripts/ensure-venv-pypy

# the whole suite again, on PyPy (docs/interpreters.md)
test-pypy: venv-pypy memcached
	$(VENV_PYPY)/bin/python -m pytest $(PYTEST_ARGS)

bench: venv memcached
	$(PY) -m bench

# hub stalls, memory per parked greenlet, row streaming (docs/performance.md)
bench-extra: venv memcached
	$(PY) -m bench.stall
	$(PY) -m bench.parked
	$(PY) -m bench.rows

# CPU instructions per operation next to the shared harness's raw client
# (valgrind's callgrind; a few minutes; docs/performance.md)
bench-instr: venv memcached
	$(PY) -m bench.instr

lint: venv
	$(PY) -m ruff check couchbase_core gcouchbase acouchbase txcouchbase tests bench examples
	$(PY) -m mypy couchbase_core/_engine couchbase_core/iops

clean:
	rm -rf $(VENV) $(VENV_PYPY) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis

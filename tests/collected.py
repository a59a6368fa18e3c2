"""Waiting for what a dropped object's collection does, on any interpreter.

CPython frees an object (and runs its ``__del__``, a generator's
``finally``, a weak reference's callback) the moment its last reference
goes; PyPy only at a garbage collection, which may come much later. A test
of "a dropped X lets go of Y" therefore asks for collections while it waits,
with a bound, instead of asserting right after the ``del``.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import gevent


def collect() -> None:
    """Collect garbage, twice: on PyPy an object with a finalizer is only
    freed by the collection after the one that ran the finalizer."""
    gc.collect()
    gc.collect()


def wait_collected(cond: Callable[[], bool], what: str, guard: float = 30.0,
                   sleep: Callable[[float], object] = gevent.sleep) -> None:
    """Collect garbage and let the loop run (``sleep``) until ``cond()``
    holds; ``guard`` seconds only bound a hang (AssertionError ``what``)."""
    deadline = time.monotonic() + guard
    while True:
        collect()
        if cond():
            return
        assert time.monotonic() < deadline, what
        sleep(0.02)

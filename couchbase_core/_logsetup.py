"""``enable_logging()`` / ``disable_logging()``: the 2.x logging entry points.

In the 2.x SDK the C library (libcouchbase) did the networking and logged
nothing into Python until ``couchbase.enable_logging()`` was called; from
then on each C log line was passed to the standard :mod:`logging` module on
the logger ``couchbase.<subsystem>`` (``couchbase.instance``,
``couchbase.server``, ``couchbase.bootstrap``...), and the Python logger
levels and handlers decided what was shown.

Here the engine is Python and always logs through :mod:`logging`, on the
*client loggers* of :data:`CLIENT_LOGGERS` (``couchbase_core.engine``,
``couchbase_core.iops.select``). :func:`enable_logging` makes code written
for 2.x see what it expects:

* every record of a client logger is re-issued on ``couchbase.<subsystem>``
  (:data:`SUBSYSTEMS` maps engine modules to the libcouchbase subsystem
  names), where the application's handlers and levels for ``couchbase``
  apply, as in 2.x;
* the client loggers stop propagating to the root logger while it is on, so
  a message is not shown twice; handlers attached to them directly still run;
* client loggers left at ``NOTSET`` are set to ``DEBUG`` so nothing is lost
  before the ``couchbase`` loggers decide (2.x passed every C level too);
* one INFO line ``Initializing Couchbase logging. lcb_version=...`` is
  logged on ``couchbase``, as 2.x did.

:func:`disable_logging` undoes all of it. Unlike 2.x, both take effect at
once for every bucket, including buckets created before the call.
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, List, Optional

__all__ = ["enable_logging", "disable_logging", "logging_enabled", "CLIENT_LOGGERS", "SUBSYSTEMS",
           "ROOT_LOGGER"]

#: The root logger of the 2.x SDK: records are re-issued below it.
ROOT_LOGGER = "couchbase"

#: The loggers this client's own code logs on (the emulator's
#: ``couchbase_core.mock`` is server side and is not forwarded).
CLIENT_LOGGERS = ("couchbase_core.engine", "couchbase_core.iops.select")

#: Module (``LogRecord.module``) -> libcouchbase subsystem: the record is
#: re-issued on ``couchbase.<subsystem>``. Modules not listed use ``instance``.
SUBSYSTEMS: Dict[str, str] = {
    "instance": "instance",
    "forks": "instance",
    "connection": "server",
    "session": "negotiation",
    "sasl": "negotiation",
    "bootstrap": "bootstrap",
    "config": "confmon",
    "http": "http",
    "httpreq": "http",
    "_httpops": "http",
    "transport": "lcbio",
    "dial": "lcbio",
    "tls": "lcbio",
    "select": "lcbio",
    "_config_cache": "bc_file",
    "tracing": "tracer",
}

_lock = threading.Lock()
_state: Dict[str, object] = {}


class _Forwarder(logging.Handler):
    """Re-issues each record on ``couchbase.<subsystem>``."""

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger("%s.%s" % (ROOT_LOGGER, SUBSYSTEMS.get(record.module, "instance")))
        if not target.isEnabledFor(record.levelno):
            return
        copy = logging.makeLogRecord(record.__dict__)
        copy.name = target.name
        target.handle(copy)


def logging_enabled() -> bool:
    """True between :func:`enable_logging` and :func:`disable_logging`."""
    return "handler" in _state


def enable_logging() -> None:
    """Send this client's log records to the ``couchbase`` logger hierarchy,
    as the 2.x ``couchbase.enable_logging()`` did for the C library's log
    (see the module docs and docs/compat.md). Calling it again does nothing."""
    with _lock:
        if "handler" in _state:
            return
        handler = _Forwarder(logging.DEBUG)
        saved: List[tuple] = []
        for name in CLIENT_LOGGERS:
            logger = logging.getLogger(name)
            saved.append((name, logger.level, logger.propagate))
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.DEBUG)
            logger.propagate = False
            logger.addHandler(handler)
        _state["handler"] = handler
        _state["saved"] = saved
    from couchbase_core import lcb_version

    logging.getLogger(ROOT_LOGGER).info("Initializing Couchbase logging. lcb_version=%r", lcb_version())


def disable_logging() -> None:
    """Undo :func:`enable_logging`: the client loggers get back their level
    and propagation, and nothing more reaches ``couchbase.*``."""
    with _lock:
        handler: Optional[logging.Handler] = _state.pop("handler", None)  # type: ignore[assignment]
        saved: List[tuple] = _state.pop("saved", [])  # type: ignore[assignment]
        if handler is None:
            return
        for name, level, propagate in saved:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate

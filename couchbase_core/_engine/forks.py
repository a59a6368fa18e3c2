"""Process forks: what a bucket made before ``os.fork()`` does in the child.

A forked child inherits copies of everything: the sockets (shared with the
parent: a byte the child reads is a byte the parent never sees), the
selector or event-loop state (an epoll fd is one kernel object for both
processes: unregistering a socket from it in the child unregisters it for
the parent too), the pending-operation tables and the timers. Used as is,
parent and child would read each other's replies.

So, in the child, right after the fork (``os.register_at_fork``), every live
engine in :data:`_registry`:

* asks its IOPS to forget every event from before the fork, through the
  optional IOPS capability ``after_fork()`` (see ``docs/iops.md``); the IOPS
  does so without touching kernel objects shared with the parent;
* drops its connections (KV, pooled and in-progress HTTP, the HTTP config
  stream, bootstrap attempts) without reading, writing or shutting down
  their sockets: it only closes the child's copies of the descriptors;
* fails the operations that were in flight (they belong to the parent,
  which still gets their replies) with :class:`~couchbase_core.exceptions.ForkError`,
  from the loop, so no copy of a waiting greenlet stays parked;
* re-creates its timers, and reconnects (``memcached://``) or bootstraps
  afresh (``couchbase://``) on first use.

An engine whose IOPS lacks the capability cannot know whether that loop
survived the fork: it makes no call to the IOPS at all, and every later use
raises :class:`~couchbase_core.exceptions.ForkError`.

The check on use is one integer comparison: each engine caches :data:`pid`
and the at-fork hook changes it (the engine also resets its copy to 0 so that
its first use restarts what must be restarted). A fork that bypasses
Python's at-fork hooks (a C extension calling ``fork()`` without
``PyOS_AfterFork_Child``) is not seen.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

__all__ = ["pid", "register", "iops_recovers", "message_inflight", "message_unsupported"]

log = logging.getLogger("couchbase_core.engine")

#: The current process id as of the last fork seen by the at-fork hook.
pid = os.getpid()

#: Objects with an ``after_fork_in_child()`` method (engines, thread guards).
_registry: "weakref.WeakSet[Any]" = weakref.WeakSet()



def message_inflight() -> str:
    """Why an operation in flight at the fork fails in the child."""
    return ("the process forked while this operation was in flight; it belongs to the parent process (%d), "
            "which receives its outcome" % _parent_pid)


def message_unsupported(iops: Any) -> str:
    """Why a bucket on a foreign IOPS cannot be used after a fork."""
    return ("this bucket was created before os.fork() (in process %d) on an IOPS (%s.%s) that has no "
            "after_fork() method, so it cannot be known to work in the child process; create the bucket "
            "in the child instead, or give the IOPS the after_fork capability (docs/iops.md)"
            % (_parent_pid, type(iops).__module__, type(iops).__qualname__))


_parent_pid = pid


def register(obj: Any) -> None:
    """Call ``obj.after_fork_in_child()`` in the child of every later fork
    (for as long as ``obj`` lives)."""
    _registry.add(obj)


def iops_recovers(iops: Any) -> bool:
    """Whether ``iops`` says it survives a fork (the ``after_fork`` capability)."""
    return callable(getattr(iops, "after_fork", None))


def _after_fork_in_child() -> None:
    global pid, _parent_pid
    _parent_pid, pid = pid, os.getpid()
    for obj in list(_registry):
        try:
            obj.after_fork_in_child()
        except Exception:  # never let one object break the child
            log.exception("recovering %r after fork failed", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""Freeze and thaw a process (SIGSTOP / SIGCONT) and wait until it happened.

``kill(pid, SIGSTOP)`` returns before the target is stopped: the kernel
stops each thread the next time it is scheduled, so on a loaded machine a
"frozen" server can still answer a request or two. :func:`stop_process`
therefore waits until ``/proc/PID/task/*/stat`` shows *every* thread in the
stopped state (``T``, or ``t`` under a tracer), and :func:`continue_process`
until none is. Both are bounded and raise :class:`SignalNotObserved` saying
which threads were in which state when they give up.

Where there is no ``/proc`` (not Linux) the state cannot be observed: the
signal is sent and the functions return at once.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, Optional

__all__ = ["SignalNotObserved", "thread_states", "stop_process", "continue_process", "wait_thread_states"]

STOPPED_STATES = frozenset("Tt")


class SignalNotObserved(RuntimeError):
    """A process did not reach the state a signal should have put it in."""


def _proc_available(pid: int) -> bool:
    return os.path.isdir("/proc/%d/task" % pid)


def thread_states(pid: int) -> Optional[Dict[int, str]]:
    """``{tid: state letter}`` of every thread of ``pid`` (from
    ``/proc/PID/task/*/stat``), or None when ``/proc`` has no such process.
    Threads that end while being read are left out."""
    base = "/proc/%d/task" % pid
    try:
        tids = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    states: Dict[int, str] = {}
    for tid in tids:
        try:
            with open("%s/%s/stat" % (base, tid), "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # "tid (comm) S ...": comm may hold spaces and parentheses, the state
        # is the first field after the last ')'.
        rest = data[data.rfind(b")") + 1:].split()
        if rest:
            states[int(tid)] = rest[0].decode("ascii", "replace")
    return states


def wait_thread_states(pid: int, stopped: bool, timeout: float = 10.0, what: str = "") -> None:
    """Wait until every thread of ``pid`` is stopped (``stopped=True``) or
    none is (``stopped=False``). Raises :class:`SignalNotObserved` after
    ``timeout`` seconds, or at once if the process is gone or a zombie."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    label = what or "process %d" % pid
    while True:
        states = thread_states(pid)
        if not states:
            raise SignalNotObserved("%s has exited (no threads in /proc/%d/task)" % (label, pid))
        if any(s in "ZX" for s in states.values()):
            raise SignalNotObserved("%s has exited (thread states %s)" % (label, states))
        if stopped and all(s in STOPPED_STATES for s in states.values()):
            return
        if not stopped and not any(s in STOPPED_STATES for s in states.values()):
            return
        if time.monotonic() >= deadline:
            raise SignalNotObserved(
                "%s: after %.1fs not every thread is %s; thread states: %s"
                % (label, timeout, "stopped (T)" if stopped else "running again (not T)", states))
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def stop_process(pid: int, timeout: float = 10.0, what: str = "") -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads is stopped."""
    os.kill(pid, signal.SIGSTOP)
    if _proc_available(pid):
        wait_thread_states(pid, True, timeout, what)


def continue_process(pid: int, timeout: float = 10.0, what: str = "") -> None:
    """SIGCONT ``pid`` and wait until none of its threads is stopped."""
    os.kill(pid, signal.SIGCONT)
    if _proc_available(pid):
        wait_thread_states(pid, False, timeout, what)

"""Run the emulator on a thread of the current process.

The default :class:`couchbase_core.mock.MockCluster` runs the emulator in a
child process; this runs it on a background thread with its own asyncio
loop instead (faster to start, shares the process: do not use it in a
gevent-monkeypatched process). Controls run on the emulator's loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Optional, TypeVar

from couchbase_core.mock.runtime import ClusterOptions, MockApp

__all__ = ["ThreadedMock"]

T = TypeVar("T")


class ThreadedMock:
    """An emulated cluster on a background thread.

    ``with ThreadedMock(ClusterOptions(nodes=3)) as mock:`` starts it;
    ``mock.info`` says where it listens; ``mock.call(fn)`` runs ``fn(app)``
    on the emulator's loop (``fn`` may be a coroutine function) and returns
    its result.
    """

    def __init__(self, options: Optional[ClusterOptions] = None) -> None:
        self.options = options or ClusterOptions()
        self.app: Optional[MockApp] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._stop: Optional[asyncio.Event] = None

    def start(self) -> "ThreadedMock":
        """Start the emulator and wait until it listens."""
        self._thread = threading.Thread(target=self._run, name="couchbase-mock", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        if self.app is None:
            raise RuntimeError("the emulator did not start")
        return self

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            app = MockApp(self.options)
            await app.start()
            self.app = app
            self._ready.set()
            await self._stop.wait()
            await app.close()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    @property
    def info(self) -> dict:
        """Where the cluster listens (see :meth:`MockApp.info`)."""
        return self.call(lambda app: app.info())

    def call(self, fn: Callable[[MockApp], Any], timeout: float = 30) -> Any:
        """Run ``fn(app)`` on the emulator's loop and return its result."""
        assert self.loop is not None and self.app is not None
        app = self.app

        async def run() -> Any:
            result = fn(app)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):  # type: ignore[misc]
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the emulator and its thread."""
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "ThreadedMock":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

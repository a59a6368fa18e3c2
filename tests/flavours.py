"""The bucket flavours behind one synchronous test interface.

The blocking and gevent buckets are used as they are. The AsyncBucket is
wrapped by :class:`AsyncDriver`: each call returns an AsyncResult, the driver
sets its ``callback`` and ``errback``, runs the bucket's select loop until
exactly one of them fired, and then returns the callback's result or raises
the errback's exception. So the shared tests exercise the async API through
its documented callbacks, not around them. The txcouchbase Bucket is wrapped
the same way by :class:`TxDriver`, through its Deferreds, and the acouchbase
Bucket by :class:`AioDriver`, which runs an asyncio loop until each future settles.
"""

from __future__ import annotations

from typing import Any, List

from couchbase_core.asynchronous.bucket import AsyncBucket
from couchbase_core.bucket import Bucket as BlockingBucket
from couchbase_core.iops.select import SelectIOPS
from couchbase_core.result import AsyncResult

FLAVOURS = ["blocking", "async", "gevent"]
FLAVOURS.append("txcouchbase")  # TxDriver below
FLAVOURS.append("acouchbase")  # AioDriver below

#: The flavours whose calls hand over AsyncResult outcomes (through
#: callbacks or Deferreds): reports such as stats() come in ``value``, and
#: single-key data-structure calls give the whole result.
CALLBACK_FLAVOURS = frozenset({"async", "txcouchbase", "acouchbase"})


class AsyncDriver:
    """Drives an AsyncBucket synchronously through callback/errback."""

    def __init__(self, connstr: str, **kwargs: Any) -> None:
        self.iops = SelectIOPS()
        self.raw = AsyncBucket(self.iops, connstr, **kwargs)
        outcome: List[Any] = []
        self.raw.on_connect(outcome.append)
        self._run_until(lambda: outcome, 30)
        if outcome[0] is not None:
            self.raw.close()
            raise outcome[0]

    def _run_until(self, done, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError("async operation never completed")
            self.iops.run_once(0.5)

    def wait(self, ar: AsyncResult) -> Any:
        """Wait for an AsyncResult through its callback/errback."""
        fired: List[Any] = []
        ar.callback = lambda res: fired.append(("ok", res))
        ar.errback = lambda res, et, ev, tb: fired.append(("err", ev, res, et, tb))
        self._run_until(lambda: fired, 60)
        # exactly one of them, exactly once
        self.iops.run_once(0)
        assert len(fired) == 1, fired
        if fired[0][0] == "ok":
            res = fired[0][1]
            # stats()/ping()/flush() put their report in the AsyncResult's value
            if isinstance(res, AsyncResult) and "value" in vars(res):
                return res.value
            return res
        _, exc, res, etype, tb = fired[0]
        assert isinstance(exc, etype) and tb is not None
        raise exc

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr) or name in ("pipeline", "close", "on_connect"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            if isinstance(out, AsyncResult):
                return self.wait(out)
            return out

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("iops", "raw"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    def close(self) -> None:
        self.raw.close()
        self.iops.run_once(0)


class TxDriver:
    """Drives a :class:`txcouchbase.bucket.Bucket` synchronously: each call
    returns a Deferred, the driver adds a callback and an errback and turns
    the global reactor with ``reactor.iterate()`` until one of them ran
    (the global reactor cannot be restarted once stopped, so it is never
    run), then returns the result or raises the Failure's exception. A
    Deferred that never fires fails the test after a bound, never hangs it.
    """

    def __init__(self, connstr: str, **kwargs: Any) -> None:
        from txcouchbase.bucket import Bucket as TxBucket

        self.raw = TxBucket(connstr, **kwargs)
        try:
            self.wait(self.raw.on_connect(), 30)
        except BaseException:
            self.raw.close()
            raise

    @staticmethod
    def run_until(done: Any, timeout: float) -> None:
        """Turn the reactor until ``done()`` or ``timeout`` seconds passed."""
        import time

        from twisted.internet import reactor

        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError("the Deferred never fired")
            reactor.iterate(0.05)

    def wait(self, d: Any, timeout: float = 60) -> Any:
        """Wait for a Deferred through its callback/errback."""
        fired: List[Any] = []
        d.addCallbacks(lambda res: fired.append(("ok", res)), lambda f: fired.append(("err", f)))
        self.run_until(lambda: fired, timeout)
        kind, value = fired[0]
        if kind == "ok":
            if isinstance(value, AsyncResult) and "value" in vars(value):
                return value.value
            return value
        value.raiseException()

    def __getattr__(self, name: str) -> Any:
        from twisted.internet.defer import Deferred

        attr = getattr(self.raw, name)
        if not callable(attr) or name in ("pipeline", "close", "on_connect"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            if isinstance(out, Deferred):
                return self.wait(out)
            return out

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "raw":
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    def close(self) -> None:
        from twisted.internet import reactor

        self.raw.close()
        reactor.iterate(0)


class AioDriver:
    """Drives an acouchbase Bucket synchronously: the driver owns an asyncio
    loop (uvloop's when ``uvloop=True``); each call returns a future, and
    the driver runs the loop until it has settled, then returns its result
    or raises its exception. Row iterators come back wrapped in
    :class:`AioRowsDriver`."""

    def __init__(self, connstr: str, uvloop: bool = False, **kwargs: Any) -> None:
        import asyncio

        from acouchbase.bucket import Bucket as AioBucket

        if uvloop:
            import uvloop as uv

            self.loop = uv.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()

        async def connect() -> Any:
            bucket = AioBucket(connstr, **kwargs)
            await bucket.connect()
            return bucket

        try:
            self.raw = self.loop.run_until_complete(connect())
        except BaseException:
            self._settle()
            self.loop.close()
            raise

    def _settle(self) -> None:
        import asyncio

        self.loop.run_until_complete(asyncio.sleep(0.01))

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` and run the loop until what it returns (if awaitable)
        has settled. The call itself is made outside the loop, in the test's
        own context, so ``with cb.durability():`` blocks entered by the test
        cover it (inside the loop, each task would be a caller of its own)."""
        import inspect

        out = fn(*args, **kwargs)
        if inspect.isawaitable(out):
            out = self.loop.run_until_complete(out)
        from acouchbase.iterator import AioRows

        if isinstance(out, AioRows):
            return AioRowsDriver(self, out)
        return out

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr) or name in ("pipeline", "durability", "close", "on_connect", "connect"):
            return attr
        return lambda *args, **kwargs: self.run(attr, *args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("loop", "raw"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.raw, name, value)

    def close(self) -> None:
        self.raw.close()
        if not self.loop.is_closed():
            self._settle()

    def __del__(self) -> None:
        loop = self.__dict__.get("loop")
        if loop is not None and not loop.is_closed() and not loop.is_running():
            raw = self.__dict__.get("raw")
            if raw is not None and not raw.closed:
                raw.close()
            loop.close()


class AioRowsDriver:
    """A plain iterator over an acouchbase row iterator (one loop run per
    row); other attributes are the request's."""

    def __init__(self, driver: AioDriver, rows: Any) -> None:
        self._driver = driver
        self._rows = rows

    def __iter__(self) -> Any:
        agen = self._rows.__aiter__()
        loop = self._driver.loop
        while True:
            try:
                row = loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
            yield row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rows, name)


def open_bucket(flavour: str, connstr: str, **kwargs: Any) -> Any:
    """Open a bucket of ``flavour`` on ``connstr``."""
    if flavour == "blocking":
        return BlockingBucket(connstr, **kwargs)
    if flavour == "async":
        return AsyncDriver(connstr, **kwargs)
    if flavour == "gevent":
        from gcouchbase.bucket import Bucket as GBucket

        return GBucket(connstr, **kwargs)
    if flavour == "txcouchbase":
        return TxDriver(connstr, **kwargs)
    if flavour == "acouchbase":
        return AioDriver(connstr, **kwargs)
    raise ValueError(flavour)

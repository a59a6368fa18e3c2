"""acouchbase: the Couchbase bucket API for asyncio.

:class:`acouchbase.bucket.Bucket` is the 2.x bucket whose every operation
is awaitable, running on an asyncio loop (the stock loops or uvloop) through
:class:`acouchbase.asyncio_iops.IOPS`; :mod:`acouchbase.iterator` holds the
``async for`` request classes of views, N1QL, analytics and search.
See docs/async.md.
"""

from typing import Any

__all__ = ["Bucket"]


def __getattr__(name: str) -> Any:  # lazily: importing the package costs nothing
    if name == "Bucket":
        from acouchbase.bucket import Bucket

        return Bucket
    raise AttributeError(name)

"""couchbase_core: the loop-agnostic heart of gcouchbase.

This package holds the public API shared by every flavour of bucket (the
blocking :class:`couchbase_core.bucket.Bucket`, the callback-based
:class:`couchbase_core.asynchronous.bucket.AsyncBucket`, and, in the separate
``gcouchbase`` package, the gevent bucket), the value formats, the exception
tree, and the private evented engine (``couchbase_core._engine``) that speaks
the memcached binary protocol through a pluggable I/O layer (IOPS).

Code written for the 2.x Couchbase Python SDK moves here by changing imports:
``couchbase.X`` becomes ``couchbase_core.X``.
"""

from couchbase_core._formats import (
    DURABILITY_MAJORITY,
    DURABILITY_MAJORITY_AND_PERSIST_TO_ACTIVE,
    DURABILITY_NONE,
    DURABILITY_PERSIST_TO_MAJORITY,
    FMT_AUTO,
    FMT_BYTES,
    FMT_COMMON_MASK,
    FMT_JSON,
    FMT_LEGACY_MASK,
    FMT_PICKLE,
    FMT_UTF8,
    LOCKMODE_EXC,
    LOCKMODE_NONE,
    LOCKMODE_WAIT,
)

__version__ = "0.1.0"

__all__ = [
    "FMT_AUTO", "FMT_BYTES", "FMT_COMMON_MASK", "FMT_JSON", "FMT_LEGACY_MASK",
    "FMT_PICKLE", "FMT_UTF8", "LOCKMODE_EXC", "LOCKMODE_NONE", "LOCKMODE_WAIT",
    "set_json_converters", "set_pickle_converters", "__version__",
    "DURABILITY_NONE", "DURABILITY_MAJORITY", "DURABILITY_MAJORITY_AND_PERSIST_TO_ACTIVE",
    "DURABILITY_PERSIST_TO_MAJORITY",
]


def set_json_converters(encode, decode):
    """Replace the functions used to encode and decode ``FMT_JSON`` values.

    ``encode(obj)`` must return ``str`` or ``bytes``; ``decode(text)``
    receives the stored value as ``str`` and returns the object. They apply
    to every bucket in the process (like the 2.x SDK). Returns the previous
    ``(encode, decode)`` pair so a caller can restore it.
    """
    from couchbase_core import transcoder

    return transcoder.set_json_converters(encode, decode)


def set_pickle_converters(encode, decode):
    """Replace the functions used for ``FMT_PICKLE`` values (``pickle.dumps``/
    ``pickle.loads`` by default). Returns the previous pair."""
    from couchbase_core import transcoder

    return transcoder.set_pickle_converters(encode, decode)


# ---------------------------------------------------------------- 2.x entry points


def lcb_version():
    """This client's version in the shape 2.x's ``lcb_version()`` had:
    ``(version_string, version_number)`` with the number packed as
    ``0xMMmmpp`` (2.x reported libcouchbase's, e.g. ``('2.10.3', 0x020a03)``;
    here there is no C library, so it is gcouchbase's own version, e.g.
    ``('0.1.0', 0x000100)``)."""
    parts = [int(p) if p.isdigit() else 0 for p in __version__.split("+")[0].split(".")[:3]]
    parts += [0] * (3 - len(parts))
    return __version__, (parts[0] << 16) | (parts[1] << 8) | parts[2]


def enable_logging():
    """Send this client's log records to the ``couchbase`` logger hierarchy
    (``couchbase.instance``, ``couchbase.server``...) as the 2.x
    ``couchbase.enable_logging()`` did for libcouchbase's log. See
    :mod:`couchbase_core._logsetup` and docs/compat.md."""
    from couchbase_core import _logsetup

    _logsetup.enable_logging()


def disable_logging():
    """Undo :func:`enable_logging`."""
    from couchbase_core import _logsetup

    _logsetup.disable_logging()


__all__ += ["lcb_version", "enable_logging", "disable_logging"]

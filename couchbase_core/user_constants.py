"""Constants for applications, under the module name 2.x used
(``couchbase.user_constants``, imported by ``from couchbase.user_constants
import *``).

* ``FMT_*``: value formats (the same objects as :mod:`couchbase_core`'s);
  ``FMT_MASK`` is the mask of the legacy format bits (``0x07``), as in 2.x.
* ``OBS_*``: the per-node key states of :meth:`Bucket.observe
  <couchbase_core.bucket.Bucket.observe>` (``ObserveInfo.flags``): found
  (in memory, not yet persisted), persisted, not found, logically deleted;
  ``OBS_MASK`` covers all of them.
* ``LOCKMODE_*``: what a blocking bucket does when two threads use it.
"""

from couchbase_core._formats import (
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

#: Mask of the legacy (2.x) format bits of the flags word.
FMT_MASK = FMT_LEGACY_MASK

#: ``observe``: the node holds the key in memory, not yet persisted.
OBS_FOUND = 0x00
#: ``observe``: the node holds the key and has persisted it.
OBS_PERSISTED = 0x01
#: ``observe``: the node does not have the key.
OBS_NOTFOUND = 0x80
#: ``observe``: the key was deleted and the deletion is not yet persisted.
OBS_LOGICALLY_DELETED = 0x81
#: Every bit an ``OBS_*`` state uses.
OBS_MASK = OBS_FOUND | OBS_PERSISTED | OBS_NOTFOUND | OBS_LOGICALLY_DELETED

__all__ = [
    "FMT_JSON", "FMT_BYTES", "FMT_UTF8", "FMT_PICKLE", "FMT_AUTO", "FMT_MASK", "FMT_COMMON_MASK",
    "FMT_LEGACY_MASK", "OBS_PERSISTED", "OBS_FOUND", "OBS_NOTFOUND", "OBS_LOGICALLY_DELETED", "OBS_MASK",
    "LOCKMODE_WAIT", "LOCKMODE_EXC", "LOCKMODE_NONE",
]

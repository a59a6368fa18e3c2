"""Value format flags and lock modes (re-exported by :mod:`couchbase_core`).

A stored item's 32-bit flags word carries its format twice: the *common
flags* byte in the top 8 bits (shared by all Couchbase SDKs) and the legacy
Python bits in the low 3 bits.
"""

#: JSON document (common flags 0x02).
FMT_JSON = 0x02000000
#: Python pickle (common flags 0x01, legacy bit 1).
FMT_PICKLE = 0x01000001
#: Raw bytes (common flags 0x03, legacy bit 2).
FMT_BYTES = 0x03000002
#: UTF-8 text (common flags 0x04, legacy bit 4).
FMT_UTF8 = 0x04000004
#: Pick the format from the value's type: ``str`` -> UTF-8, ``bytes`` ->
#: bytes, JSON-able builtins -> JSON, anything else -> pickle.
FMT_AUTO = 0x80000000
#: Mask of the common-flags byte.
FMT_COMMON_MASK = 0xFF000000
#: Mask of the legacy format bits.
FMT_LEGACY_MASK = 0x07

#: A blocking Bucket used by two threads at once raises ObjectThreadError.
LOCKMODE_EXC = 1
#: A blocking Bucket serialises threads with a lock.
LOCKMODE_WAIT = 2
#: No check at all (the caller guarantees single-threaded use).
LOCKMODE_NONE = 0

#: Synchronous-replication durability levels (``durability_level=`` on
#: mutations; Couchbase Server 6.5+): none, a majority of replicas has the
#: mutation in memory, that plus persisted on the active, persisted on a
#: majority.
DURABILITY_NONE = 0
DURABILITY_MAJORITY = 1
DURABILITY_MAJORITY_AND_PERSIST_TO_ACTIVE = 2
DURABILITY_PERSIST_TO_MAJORITY = 3

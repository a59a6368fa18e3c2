"""I/O plug-ins: the public interface (:mod:`.base`) and the selectors-based
implementation (:mod:`.select`). See :mod:`couchbase_core.iops.base`."""

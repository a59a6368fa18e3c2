"""Durability checks and whole-cluster operations.

``observe``/``endure`` (and their ``_multi`` forms) ask the nodes about a
key's persistence and replication; ``stats``, ``ping`` and ``flush`` are
sent to every node (:meth:`AdminMixin._broadcast`); ``diagnostics`` reports
the connections without I/O; ``bucket_manager`` opens the management API.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Tuple

from couchbase_core._bucket_args import _cas, _positive_seconds
from couchbase_core._bucket_submit import _raise_or_return
from couchbase_core._kvops import EndureOp, FlushOp, NoopOp, ObserveKeyOp, StatOp
from couchbase_core._latch import Latch
from couchbase_core.exceptions import RC, ArgumentError
from couchbase_core.result import Result

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from couchbase_core.bucketmanager import BucketManager
    from couchbase_core.result import ValueResult

__all__ = ["AdminMixin", "PingStatus"]


class PingStatus(IntEnum):
    """Status values in a :meth:`BaseBucket.ping` report: an ``IntEnum``
    with libcouchbase's values, as 2.x."""

    OK = 0
    TIMEOUT = 1
    ERROR = 2


class AdminMixin:
    """Observe, endure and whole-cluster operations of :class:`~couchbase_core._bucketbase.BaseBucket`."""

    def observe(self, key: Any, master_only: bool = False) -> ValueResult:
        """Ask the nodes holding ``key`` about its state: a
        :class:`ValueResult` whose ``value`` is a list of
        :class:`~couchbase_core.result.ObserveInfo` (the active node first;
        only it with ``master_only``). Couchbase buckets only."""
        self._require_couchbase("observe", "plain memcached neither persists nor replicates (no OBSERVE)")
        kb = self._kb(key)
        return self._one(ObserveKeyOp(key, kb, bool(master_only), self._timeout))

    def _endure_args(self, persist_to: Any, replicate_to: Any) -> Tuple[int, int]:
        observe, _framing = self._mutation_extras(persist_to if persist_to else 0,
                                                  replicate_to if replicate_to else 0, 0)
        if observe is None:
            raise ArgumentError("endure needs persist_to and/or replicate_to")
        return observe[0], observe[1]

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0, interval: float = 0.010) -> Any:
        """Wait until the mutation of ``key`` whose CAS is ``cas`` (0: any) is
        persisted on ``persist_to`` nodes and replicated to ``replicate_to``
        replicas (-1: all), or, with ``check_removed``, until its removal is.
        Raises TimeoutError after ``timeout`` seconds, KeyExistsError if the
        document changed meanwhile. Couchbase buckets only."""
        self._require_couchbase("endure", "plain memcached neither persists nor replicates (no OBSERVE)")
        persist, replicate = self._endure_args(persist_to, replicate_to)
        kb = self._kb(key)
        op = EndureOp(key, kb, _cas(cas), persist, replicate, bool(check_removed),
                      _positive_seconds(timeout, "timeout"), _positive_seconds(interval, "interval"))
        return self._one(op)

    def observe_multi(self, keys: Any, master_only: bool = False) -> Any:
        """:meth:`observe` for many keys (Couchbase buckets only)."""
        self._require_couchbase("observe_multi", "plain memcached neither persists nor replicates")
        entries = self._entries_keys(keys, "observe_multi")
        ops = [ObserveKeyOp(key, self._kb(key), bool(master_only), self._timeout) for key, _a, _i, _o in entries]
        return self._many(ops, self._new_multi())

    def endure_multi(self, keys: Any, persist_to: int = -1, replicate_to: int = -1, timeout: float = 5.0,
                     interval: float = 0.010, check_removed: bool = False) -> Any:
        """:meth:`endure` for many keys: a list of keys (any CAS), a dict of
        key -> CAS, or the MultiResult of a ``_multi`` mutation (each key's
        new CAS). Couchbase buckets only."""
        self._require_couchbase("endure_multi", "plain memcached neither persists nor replicates")
        persist, replicate = self._endure_args(persist_to, replicate_to)
        if isinstance(keys, dict):
            keys = {k: (v.cas if isinstance(v, Result) else v) for k, v in keys.items()}
        timeout, interval = _positive_seconds(timeout, "timeout"), _positive_seconds(interval, "interval")
        entries = self._entries_keys(keys, "endure_multi", "cas")
        ops = []
        for key, _arg, item, options in entries:
            cas = options.get("cas", item.cas if item is not None else 0)
            ops.append(EndureOp(key, self._kb(key), _cas(cas or 0), persist, replicate, bool(check_removed),
                                timeout, interval))
        return self._many(ops, self._new_multi())

    # ------------------------------------------------------- whole-cluster ops

    def _broadcast(self, make_op: Callable[[str], Any]) -> List[Any]:
        self._check_open()
        self._refuse_in_pipeline("stats, ping and flush")
        ops = []
        for conn in self._engine.connections:
            op = make_op(conn.authority)
            op.target = conn
            ops.append(op)
        return ops

    def stats(self, keys: Any = None) -> Any:
        """Server statistics: ``{stat_name: {"host:port": value}}``.

        Args:
            keys: a stat group name (``"settings"``, ``"slabs"``...) or a list
                of them; None for the general group.
        """
        if keys is None:
            groups = [b""]
        elif isinstance(keys, (str, bytes)):
            groups = [keys.encode("utf-8") if isinstance(keys, str) else keys]
        else:
            try:
                groups = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys]
            except TypeError:
                raise ArgumentError("stats keys must be a group name or a list of them") from None
        timeout = self._timeout
        ops: List[Any] = []
        for group in groups:
            ops.extend(self._broadcast(lambda node, g=group: StatOp(node, g, timeout)))
        if len(groups) > 1:
            for i, op in enumerate(ops):
                op.key = (op.key, i)  # one result per (node, group)
        return self._collect(ops, self._new_multi(), self._finish_stats)

    @staticmethod
    def _finish_stats(mres: Any) -> Any:
        _raise_or_return(mres)
        out: Dict[str, Dict[str, str]] = {}
        for key, res in mres.items():
            node = key[0] if isinstance(key, tuple) else key
            for name, value in res.value.items():
                out.setdefault(name, {})[node] = value
        return out

    def ping(self) -> Any:
        """Send a NOOP to every key-value node and report each round trip::

            {"id": ..., "sdk": ..., "version": 1,
             "services": {"kv": [{"id": ..., "remote": "host:port",
                                  "local": "host:port", "latency_us": 210,
                                  "status": PingStatus.OK}, ...]}}

        ``status`` is :class:`PingStatus` ``OK``, ``TIMEOUT`` or ``ERROR``
        (then ``details`` says why). A node being down is reported, not raised.
        """
        timeout = self._timeout
        ops = self._broadcast(lambda node: NoopOp(node, timeout))
        mres = self._new_multi()
        mres._report = True
        return self._collect(ops, mres, self._finish_ping)

    def _finish_ping(self, mres: Any) -> Dict[str, Any]:
        engine = self._engine
        entries = []
        by_name = {c.authority: c for c in engine.connections}
        for node, res in mres.items():
            conn = by_name.get(node)
            entry: Dict[str, Any] = {"id": "%s/%d" % (engine.client_id, conn.index if conn else -1),
                                     "remote": node, "latency_us": res.latency_us}
            if conn is not None and conn.local_address and conn.state == "ready":
                host, port = conn.local_address[0], conn.local_address[1]
                entry["local"] = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
            if res.rc == 0:
                entry["status"] = PingStatus.OK
            else:
                entry["status"] = PingStatus.TIMEOUT if res.rc == RC.TIMEOUT else PingStatus.ERROR
                entry["details"] = res.errstr
            entries.append(entry)
        entries.sort(key=lambda e: e["remote"])
        return {"version": 1, "id": engine.client_id, "sdk": self._settings.client_string,
                "services": {"kv": entries}}

    def flush(self) -> Any:
        """Remove every item of the bucket. Plain memcached: FLUSH on every
        node. Couchbase clusters: the management REST call (the bucket must
        have flush enabled, else NotSupportedError)."""
        if self._settings.scheme == "memcached":
            timeout = self._timeout
            ops = self._broadcast(lambda node: FlushOp(node, timeout))
            return self._collect(ops, self._new_multi(), _raise_or_return)
        self._check_open()
        self._refuse_in_pipeline("flush")
        from couchbase_core._httpops import HttpOp

        path = "/pools/default/buckets/%s/controller/doFlush" % _quote(self.bucket)
        op = HttpOp("mgmt", "POST", path, b"", {"Content-Type": "application/x-www-form-urlencoded"},
                    self._settings.http_timeout, failure_rc=_flush_failure_rc)
        return self._one(op)

    def diagnostics(self) -> Dict[str, Any]:
        """A snapshot of every key-value connection (no network I/O)::

            {"id": ..., "sdk": ..., "version": 1,
             "services": {"kv": [{"id": ..., "remote": "host:port",
                                  "local": "host:port", "state": "connected",
                                  "last_activity_us": 1234}, ...]}}

        ``state`` is ``connected``, ``connecting``, ``disconnected`` (no
        socket now) or ``closed``."""
        engine = self._engine
        now = engine.clock()
        entries = []
        names = {"ready": "connected", "connecting": "connecting", "tls-handshake": "connecting",
                 "negotiating": "connecting", "idle": "disconnected", "closed": "closed"}
        for conn in engine.connections:
            entry: Dict[str, Any] = {"id": "%s/%d" % (engine.client_id, conn.index), "remote": conn.authority,
                                     "state": names.get(conn.state, conn.state)}
            if conn.local_address and conn.state == "ready":
                host, port = conn.local_address[0], conn.local_address[1]
                entry["local"] = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
            if conn.last_activity:
                entry["last_activity_us"] = int((now - conn.last_activity) * 1e6)
            if conn.last_error is not None and conn.state != "ready":
                entry["details"] = conn.last_error[1]
            entries.append(entry)
        entries.sort(key=lambda e: e["remote"])
        return {"version": 1, "id": engine.client_id, "sdk": self._settings.client_string,
                "services": {"kv": entries}}

    def bucket_manager(self) -> BucketManager:
        """A :class:`~couchbase_core.bucketmanager.BucketManager` for this bucket."""
        from couchbase_core.bucketmanager import BucketManager

        return BucketManager(self)

    def _sleep(self, seconds: float) -> None:
        """Wait ``seconds`` the way this bucket waits (the loop keeps running)."""
        from couchbase_core.iops.base import PYCBC_EVACTION_CLEANUP, PYCBC_EVACTION_WATCH

        latch = Latch(1)
        timer = self._iops.timer_event_factory()
        timer._handler = lambda _flags: latch.done()
        self._iops.update_timer(timer, PYCBC_EVACTION_WATCH, int(max(0.0, seconds) * 1e6))
        try:
            self._wait_latch(latch)
        finally:
            self._iops.update_timer(timer, PYCBC_EVACTION_CLEANUP, 0)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _flush_failure_rc(status: int, body: Any) -> int:
    """The cluster answers 400 "Flush is disabled for the bucket" when the
    bucket's flush setting is off: that is NotSupportedError, not a generic
    HTTPError."""
    if status == 400 and "flush is disabled" in str(body).lower():
        return RC.NOT_SUPPORTED
    return RC.HTTP

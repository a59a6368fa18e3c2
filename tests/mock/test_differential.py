"""Differential test: the emulator's memcached bucket against a real memcached.

Every script below is sent, request for request and byte for byte, to a real
``memcached`` (1.6, started by :class:`~couchbase_core.testing.memcached.MemcachedServer`)
and to a one-node emulated cluster's memcached bucket. The two transcripts
must be equal. Nothing of the project's client engine is involved: requests
are framed by :mod:`tests.mock.rawclient`.

How a script runs
-----------------
A script is a list of *steps*; a step is one request or a :class:`Batch` of
requests sent back to back. After each step a NOOP is sent and every
response up to the NOOP's own is recorded (so quiet commands that stay
silent show up as "no response", and a batch of quiet commands followed by
one NOOP is the multi-get fence of spec/kv-protocol.md §3). A request's
opaque is its position in the script, so each response is matched to the
request that caused it. If the server hangs up, the transcript ends with
``"closed"``.

What is compared
----------------
For every response: the request it answers, opcode, status, datatype,
extras, key and value bytes. CAS values differ between servers, so each CAS
is replaced by the order in which that value first appeared in the
transcript (0 stays 0): "this response has the same CAS as that one" and
"this mutation changed the CAS" are compared, the numbers themselves are not.
A request may carry the CAS a previous response returned (:class:`CasOf`);
each server gets its own value.

Two kinds of responses cannot be compared byte for byte, and are compared
as far as is fair:

* VERSION: each server says its own version string. The status, and that the
  value is a dotted version number, are compared.
* STAT: the values are counters, times, addresses and process ids that differ
  between any two processes. The status of every frame and the stat *names*
  (in order) are compared, the values are not.

Opcodes only one side has (HELLO, SASL, SELECT_BUCKET and the other
Couchbase commands on the emulator; memcached's meta and ASCII commands) are
not part of the comparison; ``test_kv_ops.py`` checks what the emulator's
memcached bucket answers to the Couchbase-only ones.

The scripts run on a connection that sent no HELLO, exactly like a plain
memcached client. The emulator's connection first logs in (SASL PLAIN) and
selects the memcached bucket; memcached needs neither.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Dict, Iterator, List, NamedTuple, Sequence, Tuple, Union

import pytest

from couchbase_core.mock.inprocess import ThreadedMock
from couchbase_core.mock.runtime import BucketOptions, ClusterOptions
from couchbase_core.testing.memcached import MemcachedServer
from tests.mock.rawclient import Closed, RawClient

GET, SET, ADD, REPLACE, DELETE, INCR, DECR, QUIT, FLUSH = range(0x00, 0x09)
GETQ, NOOP, VERSION, GETK, GETKQ, APPEND, PREPEND, STAT = range(0x09, 0x11)
SETQ, ADDQ, REPLACEQ, DELETEQ, INCRQ, DECRQ, QUITQ, FLUSHQ, APPENDQ, PREPENDQ = range(0x11, 0x1B)
VERBOSITY, TOUCH, GAT, GATQ = 0x1B, 0x1C, 0x1D, 0x1E
GATK, GATKQ = 0x23, 0x24  # memcached's get-and-touch returning the key

NO_CREATE = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF
#: memcached's item_size_max (1 MiB) minus its per-item overhead for a
#: 3-byte key: 48-byte header + 8 CAS + key + NUL + CRLF (+4 when flags != 0).
BIG_FITS = 1024 * 1024 - (48 + 8 + 3 + 1 + 2)


class CasOf(NamedTuple):
    """The CAS returned to request number ``index`` of the script, plus ``delta``."""

    index: int
    delta: int = 0


class Req(NamedTuple):
    """One request of a script."""

    opcode: int
    key: bytes = b""
    extras: bytes = b""
    value: bytes = b""
    cas: Union[int, CasOf] = 0


class Batch(tuple):
    """Requests sent back to back, fenced by one NOOP."""


Step = Union[Req, Batch]


def store(flags: int = 0, expiry: int = 0) -> bytes:
    return struct.pack(">II", flags, expiry)


def arith(delta: int, initial: int = 0, expiry: int = 0) -> bytes:
    return struct.pack(">QQI", delta, initial, expiry)


def exp(seconds: int) -> bytes:
    return struct.pack(">I", seconds)


def s(key: bytes, value: bytes, flags: int = 0, expiry: int = 0, cas: Union[int, CasOf] = 0,
      opcode: int = SET) -> Req:
    """A SET-family request."""
    return Req(opcode, key, store(flags, expiry), value, cas)


def g(key: bytes, opcode: int = GET) -> Req:
    """A GET-family request."""
    return Req(opcode, key)


#: Long ago as an absolute time (expires at once), and the relative/absolute boundary.
PAST = 1_000_000_000
THIRTY_DAYS = 30 * 24 * 3600
KEY250 = b"k" * 250
BINARY_KEYS = (b"\x00", b"\x00\x01\x02\xff", b"key with spaces", b"line\r\nbreak", b"\xc3\xa9t\xc3\xa9",
               b"\xff" * 250, b"tab\there", b"-")

# --------------------------------------------------------------------- scripts
#
# One entry per script: name -> steps. The indexes used by CasOf count
# requests (not steps) from 0.

SCRIPTS: Dict[str, List[Step]] = {
    # GET, GETQ, GETK, GETKQ: hits, misses, flags, the key echo of GETK.
    "get_family": [
        g(b"k"), g(b"k", GETK), g(b"k", GETQ), g(b"k", GETKQ),
        s(b"k", b"value", flags=0x02000006),
        g(b"k"), g(b"k", GETK), g(b"k", GETQ), g(b"k", GETKQ),
        g(KEY250), g(KEY250, GETK), s(KEY250, b"long key"), g(KEY250, GETKQ),
    ],
    # N x GETKQ / GETQ + one NOOP: only hits answer, in request order.
    "multi_get_fence": [
        s(b"a", b"1", 1), s(b"c", b"3", 3), s(b"e", b"5", 5),
        Batch(g(k, GETKQ) for k in (b"a", b"b", b"c", b"d", b"e", b"f")),
        Batch(g(k, GETQ) for k in (b"f", b"e", b"d", b"c", b"b", b"a")),
        Batch([g(b"a", GETKQ), g(b"b", GETK), g(b"c", GETQ), g(b"d", GET)]),
    ],
    # SET / ADD / REPLACE, loud: stored, exists, not found, flags round trip.
    "set_add_replace": [
        s(b"k", b"one", 1), s(b"k", b"two", 2), g(b"k"),
        s(b"k", b"x", opcode=ADD), s(b"new", b"added", 0xFFFFFFFF, opcode=ADD), g(b"new"),
        s(b"nx", b"x", opcode=REPLACE), g(b"nx"), s(b"k", b"three", 3, opcode=REPLACE), g(b"k"),
        s(b"k", b"with expiry", 4, expiry=100), g(b"k"),
    ],
    # The quiet forms: silent on success, loud on failure.
    "quiet_stores": [
        s(b"q", b"v", opcode=SETQ), g(b"q"),
        s(b"q", b"x", opcode=ADDQ), s(b"q2", b"x", opcode=ADDQ), g(b"q2"),
        s(b"nx", b"x", opcode=REPLACEQ), s(b"q", b"replaced", 9, opcode=REPLACEQ), g(b"q"),
        Batch([s(b"b1", b"1", opcode=SETQ), s(b"b2", b"2", opcode=SETQ), s(b"b1", b"x", opcode=ADDQ),
               g(b"b1", GETKQ), g(b"b2", GETKQ), g(b"b3", GETKQ)]),
    ],
    # CAS: matching, stale, on missing keys, on every mutation kind.
    "cas": [
        s(b"k", b"v1"),                                   # 0
        s(b"k", b"v2", cas=CasOf(0)),                     # 1: matches
        s(b"k", b"v3", cas=CasOf(0)),                     # 2: stale
        s(b"k", b"v3", cas=CasOf(1, 1)),                  # 3: wrong
        g(b"k"),                                          # 4
        s(b"k", b"v4", cas=CasOf(1), opcode=REPLACE),     # 5
        s(b"k", b"v5", cas=CasOf(5), opcode=ADD),         # 6: memcached treats ADD+CAS as a CAS store
        s(b"nx", b"x", cas=12345),                        # 7: missing
        s(b"nx", b"x", cas=12345, opcode=ADD),            # 8
        Req(APPEND, b"k", b"", b"+", CasOf(5)),           # 9: stale
        Req(APPEND, b"k", b"", b"+", CasOf(6)),           # 10
        Req(PREPEND, b"k", b"", b"-", CasOf(6)),          # 11: stale
        Req(INCR, b"k", arith(1), cas=CasOf(10)),         # 12: matches, but not a number
        s(b"n", b"10"),                                   # 13
        Req(INCR, b"n", arith(1), cas=CasOf(13, 7)),      # 14: wrong
        Req(INCR, b"n", arith(1), cas=CasOf(13)),         # 15
        Req(DELETE, b"n", cas=CasOf(13)),                 # 16: stale
        s(b"k", b"q", cas=CasOf(0), opcode=SETQ),         # 17: quiet, yet an error answers
        Req(DELETE, b"n", cas=CasOf(15)),                 # 18
        g(b"n"), g(b"k"),
    ],
    "delete": [
        Req(DELETE, b"nx"), Req(DELETEQ, b"nx"), s(b"d", b"v"), Req(DELETEQ, b"d"), g(b"d"),
        Req(DELETE, b"d"), s(b"d", b"again"), Req(DELETE, b"d"), s(b"d", b"added", opcode=ADD), g(b"d"),
    ],
    # INCREMENT / DECREMENT: creation with initial and expiry, NO_CREATE,
    # wrap-around, floor at zero, what counts as a number, in-place rewrites.
    "counters": [
        Req(INCR, b"c", arith(1, 7)), Req(INCR, b"c", arith(1)), g(b"c"),
        Req(DECR, b"c", arith(100)), g(b"c"), Req(DECR, b"c", arith(1)),
        Req(INCR, b"nc", arith(1, 5, NO_CREATE)), Req(DECR, b"nc", arith(1, 5, NO_CREATE)), g(b"nc"),
        Req(INCR, b"e", arith(3, 40, 100)), g(b"e"),
        Req(DECR, b"d0", arith(9, 0)), g(b"d0"),
        s(b"w", b"18446744073709551615"), Req(INCR, b"w", arith(2)), g(b"w"),
        s(b"w2", b"18446744073709551614"), Req(INCR, b"w2", arith(U64_MAX)), g(b"w2"),
        s(b"big", b"18446744073709551616"), Req(INCR, b"big", arith(1)),
        s(b"f", b"10", 0x55), Req(INCR, b"f", arith(5)), g(b"f"),
        s(b"g", b"99"), Req(INCR, b"g", arith(1)), g(b"g"), Req(DECR, b"g", arith(1)), g(b"g"),
        Req(DECR, b"g", arith(0)), Req(INCR, b"g", arith(0)), g(b"g"),
        s(b"ws", b" 12\t"), Req(INCR, b"ws", arith(2)), g(b"ws"),
        s(b"neg", b"-5"), Req(INCR, b"neg", arith(2)),
        s(b"plus", b"+5"), Req(INCR, b"plus", arith(2)), g(b"plus"),
        s(b"txt", b"abc"), Req(INCR, b"txt", arith(1)), Req(DECR, b"txt", arith(1)),
        s(b"trail", b"12abc"), Req(INCR, b"trail", arith(1)),
        s(b"empty", b""), Req(INCR, b"empty", arith(1)),
        Req(INCRQ, b"c", arith(1)), Req(DECRQ, b"c", arith(1)), Req(INCRQ, b"qn", arith(1, 3)), g(b"qn"),
        Req(INCRQ, b"qx", arith(1, 0, NO_CREATE)), Req(DECRQ, b"txt", arith(1)),
        Req(INCR, b"past", arith(1, 4, PAST)), g(b"past"),
    ],
    "append_prepend": [
        Req(APPEND, b"nx", b"", b"x"), Req(PREPEND, b"nx", b"", b"x"),
        s(b"a", b"mid", 7), Req(APPEND, b"a", b"", b"-end"), Req(PREPEND, b"a", b"", b"start-"), g(b"a"),
        Req(APPENDQ, b"a", b"", b"!"), Req(PREPENDQ, b"a", b"", b"!"), g(b"a"),
        Req(APPENDQ, b"nx", b"", b"x"), Req(PREPENDQ, b"nx", b"", b"x"),
        Req(APPEND, b"a", b"", b""), g(b"a"),
        s(b"n", b"5"), Req(APPEND, b"n", b"", b"0"), Req(INCR, b"n", arith(1)), g(b"n"),
    ],
    # TOUCH, GAT, GATQ and memcached's GATK/GATKQ: flags extras, CAS kept,
    # expiry moved (into the past: gone at once).
    "touch_and_gat": [
        Req(TOUCH, b"nx", exp(10)), Req(GAT, b"nx", exp(10)), Req(GATQ, b"nx", exp(10)),
        Req(GATK, b"nx", exp(10)), Req(GATKQ, b"nx", exp(10)),
        s(b"t", b"touch me", 0x11),                       # 5
        Req(TOUCH, b"t", exp(100)), Req(GAT, b"t", exp(100)), Req(GATQ, b"t", exp(100)),
        Req(GATK, b"t", exp(100)), Req(GATKQ, b"t", exp(0)), g(b"t"),
        Req(TOUCH, b"t", exp(PAST)), g(b"t"), Req(TOUCH, b"t", exp(10)),
        s(b"u", b"gat", 2), Req(GAT, b"u", exp(PAST)), g(b"u"),
    ],
    # Relative and absolute expiry: what is expired at once, and what is not.
    "expiry": [
        s(b"past", b"x", expiry=PAST), g(b"past"), s(b"past", b"y", opcode=ADD), g(b"past"),
        s(b"rel", b"x", expiry=THIRTY_DAYS), g(b"rel"),
        s(b"abs", b"x", expiry=THIRTY_DAYS + 1), g(b"abs"),
        s(b"far", b"x", expiry=4_000_000_000), g(b"far"),
        s(b"q", b"x", expiry=PAST, opcode=SETQ), g(b"q", GETQ), g(b"q", GETK),
    ],
    "flush": [
        s(b"a", b"1"), Req(FLUSH), g(b"a"),
        s(b"b", b"2"), Req(FLUSHQ), g(b"b"),
        s(b"c", b"3"), Req(FLUSH, extras=exp(100)), g(b"c"), Req(FLUSH), g(b"c"),
        s(b"d", b"4"), Req(FLUSHQ, extras=exp(0)), g(b"d"),
    ],
    # Values at memcached's item size limit (1 MiB including its item header).
    "large_values": [
        s(b"big", b"x" * BIG_FITS), g(b"big"),
        s(b"big", b"x" * (BIG_FITS + 1)), g(b"big"),     # too large: the old copy is dropped too
        s(b"big", b"y" * (BIG_FITS - 4), 1), g(b"big"),
        s(b"big", b"y" * (BIG_FITS - 3), 1),
        s(b"big", b"z" * (BIG_FITS - 4), 1), Req(APPEND, b"big", b"", b"!"), g(b"big"),
        s(b"big", b"z" * (BIG_FITS - 10)), Req(PREPEND, b"big", b"", b"0123456789"), g(b"big"),
        Req(APPEND, b"big", b"", b"w" * (BIG_FITS + 1)),
        s(b"big", b"x" * 2_000_000), s(b"big", b"x" * 2_000_000, opcode=ADD), g(b"big"),
        s(KEY250, b"v" * (BIG_FITS - 247)), s(KEY250, b"v" * (BIG_FITS - 246)),
    ],
    "empty_values": [
        s(b"e", b""), g(b"e"), g(b"e", GETK), s(b"e", b"", 3), g(b"e", GETKQ),
        Req(APPEND, b"e", b"", b"tail"), g(b"e"), s(b"e", b"", opcode=REPLACE), Req(PREPEND, b"e", b"", b""),
        g(b"e"), Req(GAT, b"e", exp(50)),
    ],
    "binary_keys": [step for key in BINARY_KEYS for step in (
        g(key), s(key, key + b"!", 9), g(key), g(key, GETK), Req(APPEND, key, b"", b"?"), g(key, GETKQ),
        Req(DELETE, key), g(key))],
    # Connection-level commands both servers have.
    "noop_and_version": [
        Req(NOOP), Req(VERSION), Req(NOOP), Batch([Req(NOOP), Req(NOOP), Req(VERSION)]),
    ],
    # STAT groups memcached has (names compared, values not), and unknown ones.
    # "items" and "slabs" depend on the cache's history: see
    # test_item_and_slab_stats_of_a_fresh_cache.
    "stat_groups": [
        Req(STAT), s(b"k", b"v", 3), Req(STAT, b"settings"), Req(STAT, b"sizes"), Req(STAT, b"detail dump"),
        Req(STAT, b"bogus"), Req(STAT, b"key k"), Req(STAT, b"vbucket"), Req(STAT, b"conns"),
        Req(STAT, b"detail on"), Req(STAT, b"detail off"), Req(STAT, b"reset"),
    ],
    # Opcodes neither server implements: "Unknown command", and the
    # connection goes on. Only without a body: memcached 1.6.18 skips the
    # body of an unknown command twice, eating the start of the next request.
    "unknown_opcodes": [
        Req(0x40), Req(0x7F), Req(0xF0), s(b"k", b"still here"), Req(0x41), g(b"k"),
    ],
    "quit": [s(b"k", b"v"), Req(QUIT), g(b"k")],
    "quitq": [s(b"k", b"v"), Req(QUITQ), g(b"k")],
    # A quiet batch whose last request fails: only the failure answers.
    "quiet_batch_errors": [
        Batch([s(b"x", b"1", opcode=SETQ), s(b"x", b"2", opcode=ADDQ), Req(DELETEQ, b"y"),
               Req(INCRQ, b"x", arith(1)), Req(APPENDQ, b"z", b"", b"z"), g(b"x", GETKQ)]),
    ],
}

#: Requests memcached considers malformed: it answers EINVAL "Invalid
#: arguments" (or nothing) and hangs up. Each runs on a fresh connection,
#: followed by a GET that must not be answered.
MALFORMED: Dict[str, Req] = {
    "get_with_extras": Req(GET, b"k", b"abcd"),
    "get_without_key": Req(GET),
    "getk_without_key": Req(GETK),
    "getq_without_key": Req(GETQ),
    "get_with_value": Req(GET, b"k", b"", b"v"),
    "set_without_extras": Req(SET, b"k", b"", b"v"),
    "set_short_extras": Req(SET, b"k", b"\0" * 4, b"v"),
    "set_without_key": Req(SET, b"", store(), b"v"),
    "add_long_extras": Req(ADD, b"k", b"\0" * 12, b"v"),
    "delete_with_value": Req(DELETE, b"k", b"", b"v"),
    "delete_with_extras": Req(DELETE, b"k", b"abcd"),
    "incr_short_extras": Req(INCR, b"k", b"\0" * 16),
    "decr_without_key": Req(DECR, b"", arith(1)),
    "incr_with_value": Req(INCR, b"k", arith(1), b"v"),
    "key_too_long": Req(SET, b"x" * 251, store(), b"v"),
    "get_key_too_long": Req(GET, b"x" * 251),
    "append_without_key": Req(APPEND, b"", b"", b"v"),
    "append_with_extras": Req(APPEND, b"k", store(), b"v"),
    "flush_with_key": Req(FLUSH, b"k"),
    "flush_with_value": Req(FLUSH, b"", b"", b"zz"),
    "flush_bad_extras": Req(FLUSH, b"", b"\0\0"),
    "touch_without_extras": Req(TOUCH, b"k"),
    "gat_without_extras": Req(GAT, b"k"),
    "gatq_without_key": Req(GATQ, b"", exp(1)),
    "stat_with_extras": Req(STAT, b"", b"abcd"),
    "stat_key_too_long": Req(STAT, b"x" * 251),
    "noop_with_key": Req(NOOP, b"k"),
    "version_with_extras": Req(VERSION, b"", b"abcd"),
    "quit_with_key": Req(QUIT, b"k"),
}


# ------------------------------------------------------------------- runner


class Transcript:
    """What one server answered to one script."""

    def __init__(self) -> None:
        self.entries: List[object] = []
        self.cas_by_index: Dict[int, int] = {}
        self._cas_ids: Dict[int, int] = {}

    def cas_id(self, cas: int) -> int:
        if cas == 0:
            return 0
        return self._cas_ids.setdefault(cas, len(self._cas_ids) + 1)


NOOP_OPAQUE = 0xFEED0000


def _normalise(index: int, request: Req, response, transcript: Transcript) -> tuple:  # type: ignore[no-untyped-def]
    value: object = response.value
    if response.opcode == VERSION and response.status == 0:
        value = ("version", bool(re.fullmatch(rb"\d+\.\d+\.\d+\S*", response.value)))
    elif response.opcode == STAT:
        value = ("stat value",)  # names are compared (key), values are not
    return (index, response.magic, response.opcode, response.status, response.datatype, response.extras,
            response.key, value, transcript.cas_id(response.cas))


def _send(client: RawClient, frames: Sequence[bytes]) -> bool:
    try:
        client.send_raw(b"".join(frames))
        return True
    except OSError:
        return False


def run(client: RawClient, script: Sequence[Step]) -> Transcript:
    """Run ``script`` on ``client`` and record the answers."""
    transcript = Transcript()
    requests: List[Req] = []
    for number, step in enumerate(script):
        batch = list(step) if isinstance(step, Batch) else [step]
        frames = []
        for request in batch:
            index = len(requests)
            requests.append(request)
            cas = request.cas
            if isinstance(cas, CasOf):
                cas = (transcript.cas_by_index.get(cas.index, 0) + cas.delta) & U64_MAX
            frames.append(client.encode(request.opcode, request.key, request.extras, request.value, cas=cas,
                                        opaque=index))
        fence = NOOP_OPAQUE + number
        frames.append(client.encode(NOOP, opaque=fence))
        _send(client, frames)
        while True:
            try:
                response = client.recv()
            except Closed:
                transcript.entries.append("closed")
                return transcript
            except socket.timeout:
                transcript.entries.append("timeout")
                return transcript
            if response.opaque == fence and response.opcode == NOOP:
                transcript.entries.append(("noop", response.status))
                break
            index = response.opaque
            assert 0 <= index < len(requests), response
            transcript.cas_by_index.setdefault(index, response.cas)
            transcript.entries.append(_normalise(index, requests[index], response, transcript))
    return transcript


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def memcached() -> Iterator[MemcachedServer]:
    with MemcachedServer() as server:
        yield server


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedMock]:
    options = ClusterOptions(nodes=1, buckets=[BucketOptions("mc", "memcached")])
    with ThreadedMock(options) as running:
        yield running


class Pair:
    """Fresh connections to both servers, caches flushed."""

    def __init__(self, memcached: MemcachedServer, emulator: ThreadedMock) -> None:
        self.memcached = memcached
        self.port = emulator.info["kv_ports"]["mc"][0]

    def real(self) -> RawClient:
        client = RawClient(self.memcached.host, self.memcached.port)
        return client

    def emulated(self) -> RawClient:
        client = RawClient("127.0.0.1", self.port)
        client.auth()  # SASL PLAIN as the administrator; no HELLO is ever sent
        client.select("mc")
        return client

    def flushed(self) -> Tuple[RawClient, RawClient]:
        real, emulated = self.real(), self.emulated()
        for client in (real, emulated):
            assert client.request(FLUSH).status == 0
        return real, emulated


@pytest.fixture
def pair(memcached: MemcachedServer, emulator: ThreadedMock) -> Pair:
    return Pair(memcached, emulator)


def _both(pair: Pair, script: Sequence[Step]) -> Tuple[Transcript, Transcript]:
    real, emulated = pair.flushed()
    try:
        return run(real, script), run(emulated, script)
    finally:
        real.close()
        emulated.close()


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_matches_real_memcached(pair: Pair, name: str) -> None:
    real, emulated = _both(pair, SCRIPTS[name])
    assert "timeout" not in real.entries, "memcached left the script unanswered; fix the script"
    assert emulated.entries == real.entries
    # The transcript said something: every script has answers worth comparing.
    assert any(isinstance(e, tuple) and e[0] != "noop" for e in real.entries)


#: Every opcode memcached's binary protocol and the emulator's memcached
#: bucket both implement. (VERBOSITY, 0x1b, is not among them: memcached
#: 1.6's binary protocol does not answer it properly.)
SHARED_OPCODES = set(range(0x00, 0x1B)) | {TOUCH, GAT, GATQ, GATK, GATKQ}


def test_every_shared_opcode_is_scripted() -> None:
    scripted = {r.opcode for steps in SCRIPTS.values() for step in steps
                for r in (step if isinstance(step, Batch) else [step])}
    scripted |= {r.opcode for r in MALFORMED.values()}
    assert SHARED_OPCODES - scripted == set()


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_matches_real_memcached(pair: Pair, name: str) -> None:
    script = [MALFORMED[name], g(b"after")]
    real, emulated = _both(pair, script)
    assert emulated.entries == real.entries
    assert real.entries[-1] == "closed"  # memcached hangs up on a malformed request


def test_item_and_slab_stats_of_a_fresh_cache(emulator: ThreadedMock) -> None:
    """``STAT items`` and ``STAT slabs`` list slab classes that ever held an
    item (memcached keeps flushed items in their slabs until they are
    reclaimed), so they are compared on a memcached of their own: empty,
    then holding one small item."""
    script = [Req(STAT, b"items"), Req(STAT, b"slabs"), s(b"k", b"small", 1), Req(STAT, b"items"),
              Req(STAT, b"slabs")]
    with MemcachedServer() as fresh:
        pair = Pair(fresh, emulator)
        real, emulated = _both(pair, script)
    assert emulated.entries == real.entries
    names = [e[6] for e in real.entries if isinstance(e, tuple) and e[0] == 3]
    assert b"items:1:number" in names


def test_bad_magic_closes_like_memcached(pair: Pair) -> None:
    """A frame with a magic other than 0x80 (here a response magic and the
    alternative request magic, which needs HELLO) makes both servers hang up."""
    for magic in (0x81, 0x08, 0x00):
        outcomes = []
        for client in pair.flushed():
            frame = bytearray(client.encode(GET, b"k"))
            frame[0] = magic
            client.send_raw(bytes(frame))
            outcomes.append(client.is_closed())
            client.close()
        assert outcomes == [True, True], hex(magic)


def test_the_comparison_can_fail(pair: Pair) -> None:
    """The runner sees differences: the same script with one value changed
    gives a different transcript."""
    real, _ = _both(pair, [s(b"k", b"v"), g(b"k")])
    other, _ = _both(pair, [s(b"k", b"w"), g(b"k")])
    assert real.entries != other.entries

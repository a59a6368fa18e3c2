"""Batches of keys (``_engine/batch.py``, ``_kvops.KeyBatch``) driven without
sockets.

Four layers, bottom up:

1. :class:`Batch` bookkeeping on its own: opaques, entries waiting, one
   completion, entry retries (a recording subclass stands in for results).
2. :class:`KeyBatch` results, fed decoded reply frames by hand: reads,
   misses, decoding failures, mutations, counters, items, ``sibling()``, and
   the ``take_run`` contract against a plain ``pending`` dict.
3. ``take_run`` through a real :class:`Engine` and :class:`KVConnection`
   over the scripted kit (``couchbase_core.testing.scripted``): a scripted
   node answers the bootstrap, the test answers everything else byte for
   byte (whole, cut anywhere, interleaved, with errors and strangers in the
   middle of a run). Every key must get the right result, every call must
   complete once, and the connection's pending table must end empty.
4. ``KVConnection.enqueue_batch``: the exact request bytes of plain
   ``get_multi`` batches, compared with ``protocol.encode_request`` and
   walked back with the protocol's own helpers.
"""

from __future__ import annotations

import json
import logging
import pickle
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

import pytest

from couchbase_core._engine import snappy
from couchbase_core._engine.batch import Batch, EntryRetry
from couchbase_core._engine.connection import CONNECTING, KVConnection
from couchbase_core._engine.instance import Engine
from couchbase_core._engine.protocol import (
    COUNTER_VALUE,
    FLAGS_EXTRAS,
    HEADER,
    MUTATION_TOKEN,
    RUN,
    Datatype,
    Feature,
    FrameDecoder,
    Magic,
    Opcode,
    Status,
    encode_request,
    encode_response,
    frame_end,
    frame_opaques,
    hello_body,
    pack_header,
)
from couchbase_core._engine.settings import Settings
from couchbase_core._formats import FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8
from couchbase_core._kvops import KIND_COUNTER, KIND_GET, KIND_MUTATION, GetOp, KeyBatch
from couchbase_core.exceptions import RC, ValueFormatError
from couchbase_core.items import Item
from couchbase_core.result import MultiResult, MutationToken, OperationResult, ValueResult, raises
from couchbase_core.testing.scripted import ManualIOPS, ScriptedNetwork, ScriptedSocket
from couchbase_core.transcoder import Transcoder

BYTES_EXTRAS = FLAGS_EXTRAS.pack(FMT_BYTES)
JSON_EXTRAS = FLAGS_EXTRAS.pack(FMT_JSON)
#: A stand-in engine for batches used without one: what ``_token`` reads.
STUB_ENGINE = SimpleNamespace(settings=SimpleNamespace(bucket="travel"))


# ----------------------------------------------------------------- frames

def frame(opaque: int, value: bytes = b"", status: int = 0, extras: bytes = BYTES_EXTRAS, cas: int = 0,
          datatype: int = 0, opcode: int = Opcode.GET) -> tuple:
    """One reply frame exactly as the connection hands it over: encoded with
    ``encode_response`` and decoded by a ``FrameDecoder``."""
    if status:
        extras = b""
    frames = FrameDecoder().feed(encode_response(opcode, status, extras=extras, value=value, opaque=opaque,
                                                 cas=cas, datatype=datatype))
    assert len(frames) == 1
    return frames[0]


class SentRequest(NamedTuple):
    """One request as it left the client."""

    magic: int
    opcode: int
    vbucket: int
    opaque: int
    cas: int
    datatype: int
    extras: bytes
    key: bytes
    value: bytes


def decode_requests(wire: Any) -> List[SentRequest]:
    """The requests packed back to back in ``wire``, field by field (the
    protocol's ``HEADER`` and ``frame_end``)."""
    wire = bytes(wire)
    out = []
    pos = 0
    while pos < len(wire):
        magic, opcode, keylen, extlen, datatype, vbucket, _bodylen, opaque, cas = HEADER.unpack_from(wire, pos)
        end = frame_end(wire, pos)
        assert end <= len(wire), "a request cut short"
        body = wire[pos + 24:end]
        out.append(SentRequest(magic, opcode, vbucket, opaque, cas, datatype, body[:extlen],
                               body[extlen:extlen + keylen], body[extlen + keylen:]))
        pos = end
    return out


# ------------------------------------------------------ layer 1: Batch only

class RecordingBatch(Batch):
    """A Batch whose results are a log: ``("reply", i, opaque, status)``
    per reply (settled at once), ``("failure", i, rc, message)`` per
    failure; ``sinks`` counts completions."""

    __slots__ = ("log", "sinks")

    def __init__(self, count: int, timeout: float = 2.5, opcode: int = Opcode.GET, extras: bytes = b"") -> None:
        Batch.__init__(self, timeout, opcode, extras)
        self.keys = ["key%d" % i for i in range(count)]
        self.kbs = [k.encode() for k in self.keys]
        self.log: List[tuple] = []
        self.sinks: List[Any] = []
        self.sink = self.sinks.append

    def on_reply(self, i: int, frame: Any) -> None:
        self.log.append(("reply", i, frame[4], frame[2]))
        self.settled()

    def on_failure(self, i: int, rc: int, message: str) -> None:
        self.log.append(("failure", i, rc, message))


def started(count: int, base: int = 100, deadline: float = 7.5) -> RecordingBatch:
    """A RecordingBatch of ``count`` entries, taken by a stand-in engine."""
    batch = RecordingBatch(count)
    batch.start(STUB_ENGINE, base, deadline)
    return batch


def test_start_gives_consecutive_opaques_and_every_entry_waits():
    batch = started(5, base=100, deadline=7.5)
    assert len(batch) == 5
    assert (batch.base, batch.opaque, batch.remaining, batch.deadline) == (100, 100, 5, 7.5)
    assert batch.engine is STUB_ENGINE and not batch.done
    assert batch.opaques() == [100, 101, 102, 103, 104]
    assert batch.describe() == "a batch of 5 keys" and batch.key_of(3) == "key3"


def test_index_of_maps_opaques_to_waiting_entries_only():
    batch = started(4, base=50)
    assert [batch.index_of(o) for o in (49, 50, 51, 53, 54, 0)] == [-1, 0, 1, 3, -1, -1]
    batch.on_part(frame(51))
    assert batch.index_of(51) == -1, "a settled entry is no longer found"
    assert batch.opaques() == [50, 52, 53]
    assert batch.remaining == 3


def test_on_part_ignores_unknown_and_settled_opaques():
    batch = started(3, base=10)
    for opaque in (9, 13, 10, 10, 2 ** 32 - 1):
        assert batch.on_part(frame(opaque)) is True, "a batch never keeps an opaque pending"
    assert batch.log == [("reply", 0, 10, 0)]
    assert batch.remaining == 2 and batch.sinks == []


def test_fail_entry_is_idempotent():
    batch = started(3)
    batch.fail_entry(1, RC.TIMEOUT, "retry timed out")
    batch.fail_entry(1, RC.NETWORK, "again")
    batch.on_part(frame(101))  # its late reply
    assert batch.log == [("failure", 1, RC.TIMEOUT, "retry timed out")]
    assert batch.remaining == 2 and batch.opaques() == [100, 102]


def test_fail_entry_on_a_cancelled_batch_does_nothing():
    batch = started(3)
    batch.done = True  # what Engine.cancel does: entries stay "waiting", the batch is over
    batch.fail_entry(0, RC.NETWORK, "lost after the cancel")
    assert batch.log == [] and batch.sinks == [] and batch.remaining == 3


def test_settled_calls_the_sink_exactly_once_on_the_last_entry():
    batch = started(3)
    batch.on_part(frame(102))
    batch.fail_entry(0, RC.NETWORK, "lost")
    assert batch.sinks == [] and not batch.done
    batch.on_part(frame(101))
    assert batch.sinks == [None] and batch.done and batch.remaining == 0
    batch.on_part(frame(101))
    batch.fail_entry(2, RC.TIMEOUT, "late")
    assert batch.sinks == [None]
    assert [e[:2] for e in batch.log] == [("reply", 2), ("failure", 0), ("reply", 1)]


def test_on_error_fails_exactly_the_waiting_entries_once_and_completes():
    batch = started(5)
    batch.on_part(frame(100))
    batch.fail_entry(3, RC.NETWORK, "lost")
    batch.on_error(RC.TIMEOUT, "timed out")
    assert batch.log == [("reply", 0, 100, 0), ("failure", 3, RC.NETWORK, "lost"),
                         ("failure", 1, RC.TIMEOUT, "timed out"), ("failure", 2, RC.TIMEOUT, "timed out"),
                         ("failure", 4, RC.TIMEOUT, "timed out")]
    assert batch.sinks == [None] and batch.done and batch.remaining == 0 and batch.opaques() == []
    batch.on_part(frame(101))
    batch.fail_entry(2, RC.NETWORK, "after the end")
    assert len(batch.log) == 5 and batch.sinks == [None]


def test_request_of_a_uniform_batch_and_of_one_with_entries():
    uniform = RecordingBatch(2, opcode=Opcode.GAT, extras=b"\x00\x00\x00\x09")
    assert uniform.request(1) == (Opcode.GAT, b"key1", b"\x00\x00\x00\x09", b"", 0)
    assert uniform.item(1) is None
    mixed = RecordingBatch(0)
    item = Item("b", "v")
    mixed.add("a", b"a", (Opcode.SET, b"\x00" * 8, b"va", 7))
    mixed.add("b", b"b", (Opcode.DELETE, b"", b"", 0), item)
    assert mixed.request(0) == (Opcode.SET, b"a", b"\x00" * 8, b"va", 7)
    assert mixed.request(1) == (Opcode.DELETE, b"b", b"", b"", 0)
    assert (mixed.item(0), mixed.item(1)) == (None, item) and mixed.keys == ["a", "b"]


def test_entry_retry_copies_the_entry_request_and_the_batch_settings():
    batch = RecordingBatch(3, timeout=4.0, opcode=Opcode.GAT, extras=b"\x00\x00\x00\x05")
    batch.framing = b"\x11\x01"
    batch.idempotent = True
    batch.start(STUB_ENGINE, 200, 9.0)
    retry = batch.retry(2)
    assert isinstance(retry, EntryRetry)
    assert (retry.opcode, retry.kb, retry.extras, retry.value, retry.cas) == (Opcode.GAT, b"key2",
                                                                              b"\x00\x00\x00\x05", b"", 0)
    assert (retry.timeout, retry.deadline, retry.idempotent, retry.framing) == (4.0, 9.0, True, b"\x11\x01")
    assert (retry.batch, retry.index) == (batch, 2) and batch.entry_retries == [retry]
    assert retry.describe() == "entry 2 of a batch of 3 keys"


def test_entry_retry_reply_goes_back_to_its_entry():
    batch = started(3, base=300)
    retry = batch.retry(1)
    retry.opaque = 7777  # the engine stamps a fresh opaque on the re-sent request
    retry.on_response(frame(7777, status=0))
    assert batch.log == [("reply", 1, 301, 0)], "the reply reached entry 1 under the batch's opaque"
    assert batch.opaques() == [300, 302]
    retry.on_response(frame(7777))  # a duplicate: the entry is settled
    assert len(batch.log) == 1 and batch.remaining == 2


def test_entry_retry_failure_fails_its_entry_only():
    batch = started(3)
    batch.retry(0).on_error(RC.TIMEOUT, "entry 0 timed out")
    assert batch.log == [("failure", 0, RC.TIMEOUT, "entry 0 timed out")]
    assert batch.remaining == 2 and batch.sinks == [] and not batch.done


def test_cancel_retries_returns_the_retries_still_out():
    batch = started(4)
    first, second, third = batch.retry(0), batch.retry(1), batch.retry(3)
    second.done = True
    assert batch.cancel_retries() == [first, third]
    first.done = third.done = True
    assert batch.cancel_retries() == []


# --------------------------------------------------- layer 2: KeyBatch only

def key_batch(keys: Sequence[Any], kind: int = KIND_GET, base: int = 1000, decoder: Any = None,
              no_format: bool = False, mres: Optional[dict] = None, items: Optional[list] = None,
              opcode: int = Opcode.GET, vbuckets: Optional[List[int]] = None) -> KeyBatch:
    """A started KeyBatch over ``keys`` (str), with ``sinks`` collecting its
    completions."""
    batch = KeyBatch(kind, 2.5, MultiResult() if mres is None else mres, decoder, no_format, opcode)
    batch.keys = list(keys)
    batch.kbs = [k.encode() for k in keys]
    batch.items = items
    batch.vbuckets = vbuckets
    sinks: List[Any] = []
    batch.sink = sinks.append
    batch.sinks = sinks  # an instance attribute (KVOp has a __dict__)
    batch.start(STUB_ENGINE, base, 2.5)
    return batch


class Bang(Exception):
    """What a broken custom transcoder raises."""


class Shouting(Transcoder):
    """A custom transcoder: values come back upper-cased; ``b"boom"`` breaks it."""

    def decode_value(self, value: bytes, flags: int) -> Any:
        if value == b"boom":
            raise Bang("cannot decode")
        return value.decode("latin-1").upper()


@pytest.mark.parametrize("flags, data, value", [
    (FMT_BYTES, b"\x00\xffraw", b"\x00\xffraw"),
    (FMT_JSON, b'{"a": [1, 2]}', {"a": [1, 2]}),
    (FMT_UTF8, "caf\u00e9".encode("utf-8"), "caf\u00e9"),
    (FMT_PICKLE, pickle.dumps({3, 4}), {3, 4}),
], ids=["bytes", "json", "utf8", "pickle"])
def test_a_read_reply_becomes_a_value_result_in_its_format(flags, data, value):
    batch = key_batch(["k"])
    batch.on_part(frame(1000, data, extras=FLAGS_EXTRAS.pack(flags), cas=42))
    res = batch.mres["k"]
    assert type(res) is ValueResult
    assert (res.rc, res.key, res.cas, res.flags, res.value) == (0, "k", 42, flags, value)
    assert batch.sinks == [None] and batch.done


def test_no_format_hands_back_the_raw_bytes_and_flags():
    batch = key_batch(["j", "n"], no_format=True)
    batch.on_part(frame(1000, b"[1]", extras=JSON_EXTRAS))
    batch.on_part(frame(1001, b"no flags", extras=b""))
    assert (batch.mres["j"].value, batch.mres["j"].flags) == (b"[1]", FMT_JSON)
    assert (batch.mres["n"].value, batch.mres["n"].flags) == (b"no flags", 0)


def test_a_value_that_does_not_decode_is_a_value_format_error_for_that_key_only():
    batch = key_batch(["bad", "good"])
    batch.on_part(frame(1000, b"{not json", extras=JSON_EXTRAS, cas=5))
    batch.on_part(frame(1001, b"[2]", extras=JSON_EXTRAS))
    bad = batch.mres["bad"]
    assert (bad.rc, bad.value, bad.cas, bad.flags) == (RC.VALUE_FORMAT, b"{not json", 5, FMT_JSON)
    assert isinstance(bad._exc, ValueFormatError) and "not valid JSON" in bad._message
    assert batch.mres["good"].rc == 0 and batch.mres["good"].value == [2]
    assert batch.sinks == [None]


def test_a_custom_transcoder_decodes_and_its_failure_is_a_value_format_error():
    batch = key_batch(["ok", "broken"], decoder=Shouting())
    batch.on_part(frame(1000, b"abc", extras=JSON_EXTRAS))
    batch.on_part(frame(1001, b"boom", extras=JSON_EXTRAS))
    assert batch.mres["ok"].value == "ABC"
    broken = batch.mres["broken"]
    assert (broken.rc, broken.value) == (RC.VALUE_FORMAT, b"boom")
    assert broken._message == "transcoder failed to decode the value: Bang('cannot decode')"


def test_a_custom_transcoder_sees_bytes_values_in_batches_as_in_single_gets():
    single = GetOp("k", b"k", 0, 2.5, Shouting(), False)
    got: List[Any] = []
    single.sink = got.append
    single.on_response(frame(1, b"abc", extras=BYTES_EXTRAS))
    assert got[0].value == "ABC"
    batch = key_batch(["k"], decoder=Shouting())
    batch.on_part(frame(1000, b"abc", extras=BYTES_EXTRAS))
    assert batch.mres["k"].value == "ABC"


def test_a_quiet_miss_is_a_not_found_result_that_does_not_raise():
    mres = MultiResult()
    mres._quiet = True
    batch = key_batch(["there", "missing"], mres=mres)
    batch.on_part(frame(1001, status=Status.KEY_ENOENT, value=b"Not found"))
    batch.on_part(frame(1000, b"v"))
    missing = mres["missing"]
    assert type(missing) is ValueResult
    assert (missing.rc, missing.value, missing.cas, missing._message) == (RC.KEY_ENOENT, None, 0, None)
    assert not raises(missing.rc, True) and raises(missing.rc, False)
    assert not mres.all_ok and mres._first_failure() is None
    assert batch.sinks == [None]


def test_an_unknown_status_keeps_the_server_text():
    batch = key_batch(["k"])
    batch.on_part(frame(1000, status=0xEE, value=b"strange things"))
    assert batch.mres["k"].rc == 0xEE
    assert batch.mres["k"]._message == "server status 0xEE: strange things"


def test_mutations_with_and_without_mutation_tokens():
    batch = key_batch(["plain", "token", "exists"], kind=KIND_MUTATION, opcode=Opcode.SET, vbuckets=[3, 17, 5])
    assert batch.plain_mutation and not batch.takes_runs
    batch.on_part(frame(1000, cas=11, extras=b"", opcode=Opcode.SET))
    batch.on_part(frame(1001, cas=12, extras=MUTATION_TOKEN.pack(0xABCDEF, 99), opcode=Opcode.SET))
    batch.on_part(frame(1002, status=Status.KEY_EEXISTS, opcode=Opcode.SET))
    plain, token, exists = (batch.mres[k] for k in ("plain", "token", "exists"))
    assert type(plain) is OperationResult and (plain.rc, plain.cas, plain.mutation_token) == (0, 11, None)
    assert (token.rc, token.cas) == (0, 12)
    assert token.mutation_token == MutationToken(17, 0xABCDEF, 99, "travel")
    assert type(exists) is OperationResult and (exists.rc, exists.cas) == (RC.KEY_EEXISTS, 0)
    assert batch.sinks == [None]


def test_counters_give_the_new_count():
    batch = key_batch(["binary", "ascii", "token", "missing"], kind=KIND_COUNTER, opcode=Opcode.INCREMENT)
    batch.on_part(frame(1000, COUNTER_VALUE.pack(2 ** 40 + 1), extras=b"", cas=3))
    batch.on_part(frame(1001, b"17", extras=b""))
    batch.on_part(frame(1002, COUNTER_VALUE.pack(5), extras=MUTATION_TOKEN.pack(1, 2)))
    batch.on_part(frame(1003, status=Status.KEY_ENOENT))
    m = batch.mres
    assert type(m["binary"]) is ValueResult and (m["binary"].value, m["binary"].cas) == (2 ** 40 + 1, 3)
    assert m["ascii"].value == 17
    assert m["token"].value == 5 and m["token"].mutation_token == MutationToken(0, 1, 2, "travel")
    assert (m["missing"].rc, m["missing"].value) == (RC.KEY_ENOENT, None)
    assert batch.sinks == [None]


def test_items_are_filled_instead_of_new_results():
    items = [Item("a"), Item("b"), Item("c")]
    batch = key_batch(["a", "b", "c"], items=items)
    assert not batch.plain and not batch.takes_runs, "entries with items take the generic way"
    batch.on_part(frame(1000, b'"x"', extras=JSON_EXTRAS, cas=8))
    batch.on_part(frame(1001, b"raw", extras=BYTES_EXTRAS, cas=9))
    batch.on_part(frame(1002, status=Status.KEY_ENOENT))
    assert [batch.mres[k] for k in "abc"] == items and all(batch.mres[k] is i for k, i in zip("abc", items))
    assert (items[0].rc, items[0].value, items[0].cas, items[0].flags) == (0, "x", 8, FMT_JSON)
    assert (items[1].value, items[1].cas) == (b"raw", 9)
    assert items[2].rc == RC.KEY_ENOENT


def test_failures_without_a_reply_fill_the_right_result_type():
    item = Item("i")
    reads = key_batch(["r", "i"], items=[None, item])
    writes = key_batch(["w"], kind=KIND_MUTATION, opcode=Opcode.SET)
    counts = key_batch(["c"], kind=KIND_COUNTER, opcode=Opcode.INCREMENT)
    for batch in (reads, writes, counts):
        batch.on_error(RC.TIMEOUT, "timed out")
    assert type(reads.mres["r"]) is ValueResult and reads.mres["i"] is item and item.rc == RC.TIMEOUT
    assert type(writes.mres["w"]) is OperationResult and writes.mres["w"]._message == "timed out"
    assert type(counts.mres["c"]) is ValueResult and counts.mres["c"].rc == RC.TIMEOUT
    assert [b.sinks for b in (reads, writes, counts)] == [[None]] * 3


def test_sibling_copies_the_settings_and_shares_the_results():
    decoder = Shouting()
    batch = KeyBatch(KIND_MUTATION, 3.5, MultiResult(), decoder, True, Opcode.GAT, b"\x00\x00\x00\x01")
    batch.durability = (1, 0, 5.0, 0.01)
    batch.idempotent = True
    batch.framing = b"\x11\x02"
    batch.keys.append("x")
    other = batch.sibling()
    assert other is not batch and other.mres is batch.mres and other.decoder is decoder
    assert (other.kind, other.timeout, other.no_format, other.opcode, other.extras) == (
        KIND_MUTATION, 3.5, True, Opcode.GAT, b"\x00\x00\x00\x01")
    assert (other.durability, other.idempotent, other.framing) == ((1, 0, 5.0, 0.01), True, b"\x11\x02")
    assert other.keys == [] and other.kbs == [] and other.requests is None and other.items is None


def test_only_plain_reads_take_runs():
    assert key_batch(["a"]).takes_runs is True
    assert key_batch(["a"], items=[Item("a")]).takes_runs is False
    mutation = key_batch(["a"], kind=KIND_MUTATION, opcode=Opcode.SET)
    assert mutation.takes_runs is False and mutation.plain_mutation
    durable = KeyBatch(KIND_MUTATION, 2.5, MultiResult(), opcode=Opcode.SET)
    durable.durability = (1, 0, 1.0, 0.01)
    durable.keys, durable.kbs = ["a"], [b"a"]
    durable.start(STUB_ENGINE, 1, 2.5)
    assert not durable.plain_mutation and not durable.takes_runs


# take_run's contract, against a plain pending table

class Other:
    """Another operation waiting on the same connection."""


def test_take_run_takes_consecutive_plain_replies_and_stops_at_another_operation():
    batch = key_batch(["a", "b", "c", "d"])
    other = Other()
    pending: Dict[int, Any] = {1001: batch, 1002: batch, 1003: batch, 5: other}
    rest = iter([frame(1001, b"B"), frame(5, b"other"), frame(1002, b"C")])
    first = frame(1000, b"A")  # its opaque already popped by the connection
    stop = batch.take_run(first, rest, pending)
    assert stop[4] == 5 and pending == {1002: batch, 1003: batch, 5: other}, "the stranger stays pending"
    assert next(rest)[4] == 1002, "nothing beyond the stranger was consumed"
    assert {k: r.value for k, r in batch.mres.items()} == {"a": b"A", "b": b"B"}
    assert batch.remaining == 2 and batch.sinks == []


@pytest.mark.parametrize("odd", [
    dict(status=Status.KEY_ENOENT), dict(status=Status.NOT_MY_VBUCKET), dict(datatype=Datatype.SNAPPY),
], ids=["not-found", "not-my-vbucket", "snappy"])
def test_take_run_leaves_an_unusual_reply_pending_for_the_connection(odd):
    batch = key_batch(["a", "b", "c"])
    pending: Dict[int, Any] = {1001: batch, 1002: batch}
    stop = batch.take_run(frame(1000, b"A"), iter([frame(1001, b"B", **odd), frame(1002, b"C")]), pending)
    assert stop[4] == 1001 and pending == {1001: batch, 1002: batch}
    assert list(batch.mres) == ["a"] and batch.remaining == 2


def test_take_run_decodes_a_value_in_the_middle_and_carries_on():
    batch = key_batch(["a", "json", "c"])
    pending: Dict[int, Any] = {1001: batch, 1002: batch}
    rest = iter([frame(1001, b'{"n": 1}', extras=JSON_EXTRAS), frame(1002, b"C")])
    assert batch.take_run(frame(1000, b"A"), rest, pending) is None
    assert pending == {}
    assert batch.mres["json"].value == {"n": 1} and batch.mres["c"].value == b"C"
    assert batch.remaining == 0 and batch.done and batch.sinks == [None]


def test_take_run_skips_an_entry_settled_meanwhile():
    batch = key_batch(["a", "b", "c"])
    batch.fail_entry(1, RC.TIMEOUT, "its retry timed out")
    pending: Dict[int, Any] = {1001: batch, 1002: batch}  # the entry's opaque was never popped
    assert batch.take_run(frame(1000, b"A"), iter([frame(1001, b"late"), frame(1002, b"C")]), pending) is None
    assert pending == {}
    assert batch.mres["b"].rc == RC.TIMEOUT and batch.mres["b"].value is None
    assert [batch.mres[k].value for k in "ac"] == [b"A", b"C"] and batch.sinks == [None]


def test_take_run_with_no_format_takes_any_flags():
    batch = key_batch(["a", "b"], no_format=True)
    pending: Dict[int, Any] = {1001: batch}
    assert batch.take_run(frame(1000, b"[1]", extras=JSON_EXTRAS), iter([frame(1001, b"x")]), pending) is None
    assert [(batch.mres[k].value, batch.mres[k].flags) for k in "ab"] == [(b"[1]", FMT_JSON), (b"x", FMT_BYTES)]
    assert batch.sinks == [None] and pending == {}


# take_plain_run's contract: a RUN item from the decoder (run_window)

def decoded_run(opaques: Sequence[int], values: Sequence[bytes], extras: bytes = BYTES_EXTRAS) -> tuple:
    """The RUN item a decoder with a wide window makes of these replies."""
    decoder = FrameDecoder()
    decoder.run_window(0, 1 << 32)
    items = decoder.feed(b"".join(encode_response(Opcode.GET, extras=extras, value=v, opaque=o, cas=o)
                                  for o, v in zip(opaques, values)))
    assert len(items) == 1 and items[0][0] == RUN
    return items[0]


def test_take_plain_run_settles_every_entry_and_leaves_the_replies_past_the_batch():
    batch = key_batch(["a", "b"])
    other = Other()
    pending: Dict[int, Any] = {1001: batch, 1002: other}  # 1000 already popped by the connection
    assert batch.take_plain_run(decoded_run([1000, 1001, 1002], [b"A", b"B", b"other"]), pending) == 2
    assert pending == {1002: other}, "the reply past the batch is not touched"
    assert [(batch.mres[k].value, batch.mres[k].cas, batch.mres[k].flags) for k in "ab"] == [
        (b"A", 1000, FMT_BYTES), (b"B", 1001, FMT_BYTES)]
    assert batch.done and batch.sinks == [None]


def test_take_plain_run_decodes_json_values_at_once():
    batch = key_batch(["a", "b"])
    pending: Dict[int, Any] = {1001: batch}
    assert batch.take_plain_run(decoded_run([1000, 1001], [b'{"n": 1}', b"[2]"], JSON_EXTRAS), pending) == 2
    assert [batch.mres[k].value for k in "ab"] == [{"n": 1}, [2]] and pending == {} and batch.sinks == [None]


@pytest.mark.parametrize("why", ["a bad JSON value", "an entry settled meanwhile", "a custom decoder"])
def test_take_plain_run_changes_nothing_when_a_reply_needs_the_careful_way(why):
    batch = key_batch(["a", "b", "c"], decoder=Transcoder() if why == "a custom decoder" else None)
    if why == "an entry settled meanwhile":
        batch.fail_entry(1, RC.TIMEOUT, "its retry timed out")
    values = [b"[1]", b"{broken" if why == "a bad JSON value" else b"[2]", b"[3]"]
    run = decoded_run([1000, 1001, 1002], values, JSON_EXTRAS)
    pending: Dict[int, Any] = {1001: batch, 1002: batch}
    before = (dict(batch.mres), batch.remaining, bytes(batch.waiting))
    assert batch.take_plain_run(run, pending) == 0
    assert pending == {1000: batch, 1001: batch, 1002: batch}, "the first opaque is pending again"
    assert (dict(batch.mres), batch.remaining, bytes(batch.waiting)) == before


# ------------------------------------- layer 3: a real engine, scripted node

class ScriptedNode:
    """The server side of the scripted socket: answers the bootstrap
    (HELLO, GET_CLUSTER_CONFIG) and the dead-connection probe (NOOP) by
    itself, and records every other request for the test to answer."""

    def __init__(self, features: Iterable[int] = (), vbuckets: int = 16) -> None:
        self.features = tuple(features)
        self.vbuckets = vbuckets
        #: opaque -> request, for the requests left to the test
        self.requests: Dict[int, SentRequest] = {}
        self._buffer = bytearray()

    def config(self, rev: int = 1) -> bytes:
        """The bucket config (JSON): this one node owns every vBucket."""
        return json.dumps({
            "rev": rev, "name": "default", "nodeLocator": "vbucket", "uuid": "u",
            "nodesExt": [{"hostname": "127.0.0.1", "services": {"kv": 11210, "mgmt": 8091}}],
            "vBucketServerMap": {"hashAlgorithm": "CRC", "numReplicas": 0, "serverList": ["127.0.0.1:11210"],
                                 "vBucketMap": [[0]] * self.vbuckets},
        }).encode()

    def __call__(self, sock: ScriptedSocket, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= 24 and len(buf) >= frame_end(buf):
            end = frame_end(buf)
            request = decode_requests(buf[:end])[0]
            del buf[:end]
            if request.opcode == Opcode.HELLO:
                sock.feed(encode_response(Opcode.HELLO, value=hello_body(self.features), opaque=request.opaque))
            elif request.opcode == Opcode.GET_CLUSTER_CONFIG:
                sock.feed(encode_response(request.opcode, value=self.config(), opaque=request.opaque))
            elif request.opcode == Opcode.NOOP:
                sock.feed(encode_response(request.opcode, opaque=request.opaque))
            else:
                self.requests[request.opaque] = request


class Call:
    """One get_multi call: its batch, its results and its completions."""

    def __init__(self, keys: Sequence[str], timeout: float, decoder: Any = None, no_format: bool = False) -> None:
        self.mres = MultiResult()
        self.batch = batch = KeyBatch(KIND_GET, timeout, self.mres, decoder, no_format, Opcode.GET)
        batch.keys = list(keys)
        batch.kbs = [k.encode() for k in keys]
        self.completions: List[Any] = []
        batch.sink = self.completions.append

    def opaque(self, key: str) -> int:
        """The batch opaque of ``key``'s entry."""
        return self.batch.base + self.batch.keys.index(key)

    def reply(self, key: str, value: Optional[bytes] = None, opaque: Optional[int] = None, **kwargs: Any) -> bytes:
        """The wire bytes of the node's reply for ``key`` (default: a
        FMT_BYTES value ``v:<key>`` with a CAS derived from the key, under
        the key's batch opaque)."""
        kwargs.setdefault("extras", BYTES_EXTRAS)
        kwargs.setdefault("cas", 1000 + self.batch.keys.index(key))
        if kwargs.get("status"):
            kwargs["extras"] = b""
        return encode_response(Opcode.GET, value=expected_value(key) if value is None else value,
                               opaque=self.opaque(key) if opaque is None else opaque, **kwargs)

    def replies(self, keys: Optional[Iterable[str]] = None) -> List[bytes]:
        """The default replies of ``keys`` (default: every key), in order."""
        return [self.reply(k) for k in (self.batch.keys if keys is None else keys)]

    def assert_all_read(self, except_keys: Iterable[str] = ()) -> None:
        """Every key but ``except_keys`` has its default value, and the call
        completed once."""
        skip = set(except_keys)
        assert self.completions == [None] and self.batch.done
        assert set(self.mres) == set(self.batch.keys), "every key is accounted for"
        for i, key in enumerate(self.batch.keys):
            if key in skip:
                continue
            res = self.mres[key]
            assert (res.rc, res.value, res.cas, res.flags) == (0, expected_value(key), 1000 + i, FMT_BYTES), key


def expected_value(key: str) -> bytes:
    """The value the scripted node holds for ``key``."""
    return b"v:" + key.encode()


class Cluster:
    """A real Engine bootstrapped over scripted sockets (``couchbase://``
    with a vBucket map, or ``memcached://``), on a hand-driven IOPS."""

    def __init__(self, connstr: str = "couchbase://127.0.0.1/default?bootstrap_on=cccp",
                 features: Iterable[int] = ()) -> None:
        self.node = ScriptedNode(features)
        self.iops = ManualIOPS()
        self.net = ScriptedNetwork(default=lambda: ScriptedSocket(peer=self.node))
        self.engine = Engine(self.iops, Settings.from_connstr(connstr), clock=self.iops.clock)
        self.engine.socket_factory = self.net.factory
        outcome: List[Any] = []
        self.engine.start(outcome.append)
        self.iops.pump_until(lambda: outcome)
        assert outcome == [None]
        self.conn = self.engine.connections[0]
        self.sock = self.conn._sock
        #: bytes the socket had taken once the bootstrap was over
        self.sent_at_start = len(self.sock.sent)

    def get_multi(self, keys: Sequence[str], timeout: float = 2.5, **kwargs: Any) -> Call:
        """Submit a plain get_multi and wait until the node has every request."""
        call = Call(keys, timeout, **kwargs)
        self.engine.submit_batch(call.batch)
        base = call.batch.base
        self.iops.pump_until(lambda: all(o in self.node.requests for o in range(base, base + len(keys))))
        return call

    def get(self, key: str) -> List[Any]:
        """Submit a single GetOp; the returned list receives its result."""
        op = GetOp(key, key.encode(), 0, 2.5, None, False)
        got: List[Any] = []
        op.sink = got.append
        self.engine.submit(op)
        self.iops.pump_until(lambda: op.opaque in self.node.requests)
        return got

    def answer(self, *chunks: bytes) -> None:
        """Feed ``chunks`` (one socket read each) and let the engine read them all."""
        self.sock.feed(*chunks)
        self.iops.pump_until(lambda: not self.sock.readable)

    def retried(self, call: Call, key: str) -> SentRequest:
        """Wait (pumping, the virtual clock moving) for the request that
        re-sends ``key`` of ``call`` on its own; return it."""
        base, kb = call.batch.base, key.encode()

        def resent() -> Optional[SentRequest]:
            return next((r for o, r in self.node.requests.items()
                         if r.key == kb and not base <= o < base + len(call.batch)), None)

        self.run_until(resent)
        request = resent()
        assert request is not None
        return request

    def run_until(self, condition: Callable[[], Any], step: float = 0.005) -> None:
        """Pump and move the virtual clock on (retry backoffs) until ``condition()``."""
        for _ in range(400):
            if condition():
                return
            self.iops.pump()
            self.iops.advance(step)
        assert condition()


@pytest.fixture
def cluster():
    """A bootstrapped couchbase:// engine (16 vBuckets, one node)."""
    c = Cluster()
    yield c
    c.engine.close()


@pytest.fixture
def runs(monkeypatch):
    """The opaque of the first reply of every run a batch took in one call:
    a ``KeyBatch.take_run`` call (frame by frame), or a
    ``Batch.take_plain_run`` call that took at least one entry (a RUN item
    from the decoder, for the batch in the connection's run window)."""
    calls: List[int] = []
    original = KeyBatch.take_run
    original_plain = Batch.take_plain_run

    def counting(self: KeyBatch, frame: Any, rest: Any, pending: Any) -> Any:
        calls.append(frame[4])
        return original(self, frame, rest, pending)

    def counting_plain(self: Batch, run: Any, pending: Any) -> Any:
        before = self.remaining
        taken = original_plain(self, run, pending)
        if self.remaining != before:
            calls.append(run[4])
        return taken

    monkeypatch.setattr(KeyBatch, "take_run", counting)
    monkeypatch.setattr(Batch, "take_plain_run", counting_plain)
    return calls


def keys_of(count: int, prefix: str = "key") -> List[str]:
    """``count`` distinct keys of equal length."""
    return ["%s-%04d" % (prefix, i) for i in range(count)]


def test_a_1000_key_get_multi_answered_in_one_read_is_one_take_run(cluster, runs):
    call = cluster.get_multi(keys_of(1000))
    wire = b"".join(call.replies())
    assert len(wire) < 64 * 1024, "one socket read"
    cluster.answer(wire)
    call.assert_all_read()
    assert runs == [call.batch.base], "the whole run in one call"
    assert cluster.conn.pending == {}


def test_replies_cut_in_two_at_every_byte_offset(cluster, runs):
    """Mid-header, mid-extras, mid-value, between frames: each cut leaves the
    results intact, and a read that completes frames is one take_run."""
    keys = keys_of(4, "cut")
    frame_size = 24 + len(BYTES_EXTRAS) + len(expected_value(keys[0]))
    for cut in range(1, 4 * frame_size):
        del runs[:]
        call = cluster.get_multi(keys)
        wire = b"".join(call.replies())
        assert len(wire) == 4 * frame_size
        cluster.answer(wire[:cut], wire[cut:])
        call.assert_all_read()
        assert len(runs) == (2 if cut >= frame_size else 1), cut
        assert cluster.conn.pending == {}, cut


def reads_completing_frames(wire: bytes, sizes: Sequence[int]) -> int:
    """How many of the reads ``sizes`` (cut from ``wire`` in order) complete
    at least one frame: the take_run calls a run of one batch costs."""
    ends = set()
    pos = 0
    while pos < len(wire):
        pos = frame_end(wire, pos)
        ends.add(pos)
    count, start = 0, 0
    for size in sizes:
        if any(start < e <= start + size for e in ends):
            count += 1
        start += size
    return count


def test_a_1000_key_reply_stream_cut_into_uneven_reads(cluster, runs):
    """Reads ending mid-header, mid-value, exactly between frames, one byte
    long or many frames long."""
    call = cluster.get_multi(keys_of(1000))
    wire = b"".join(call.replies())
    pattern = [1, 23, 14, 38, 76, 500, 3, 1000, 37, 2, 24, 4]
    sizes: List[int] = []
    while sum(sizes) < len(wire):
        sizes.append(min(pattern[len(sizes) % len(pattern)], len(wire) - sum(sizes)))
    chunks, start = [], 0
    for size in sizes:
        chunks.append(wire[start:start + size])
        start += size
    cluster.answer(*chunks)
    call.assert_all_read()
    assert len(runs) == reads_completing_frames(wire, sizes)
    assert cluster.conn.pending == {}


def test_two_batches_whose_replies_interleave_frame_by_frame(cluster, runs):
    first = cluster.get_multi(keys_of(5, "first"))
    second = cluster.get_multi(keys_of(5, "second"))
    wire = b"".join(a + b for a, b in zip(first.replies(), second.replies()))
    cluster.answer(wire)
    first.assert_all_read()
    second.assert_all_read()
    assert len(runs) == 10, "each run is one frame long"
    assert runs[:2] == [first.batch.base, second.batch.base]
    assert cluster.conn.pending == {}


def test_two_batches_whose_replies_interleave_in_runs_of_any_length(cluster, runs):
    first = cluster.get_multi(keys_of(5, "first"))
    second = cluster.get_multi(keys_of(5, "second"))
    a, b = first.replies(), second.replies()
    order = [a[0], a[1], a[2], b[0], a[3], b[1], b[2], b[3], b[4], a[4]]
    cluster.answer(b"".join(order))
    first.assert_all_read()
    second.assert_all_read()
    assert runs == [first.opaque("first-0000"), second.opaque("second-0000"), first.opaque("first-0003"),
                    second.opaque("second-0001"), first.opaque("first-0004")]
    assert cluster.conn.pending == {}


def test_a_single_get_reply_in_the_middle_of_a_run(cluster, runs):
    call = cluster.get_multi(keys_of(6))
    single = cluster.get("single")
    opaque = next(o for o, r in cluster.node.requests.items() if r.key == b"single")
    replies = call.replies()
    reply = encode_response(Opcode.GET, extras=BYTES_EXTRAS, value=b"alone", opaque=opaque, cas=77)
    cluster.answer(b"".join(replies[:3]) + reply + b"".join(replies[3:]))
    call.assert_all_read()
    assert len(single) == 1 and (single[0].rc, single[0].value, single[0].cas) == (0, b"alone", 77)
    assert runs == [call.opaque("key-0000"), call.opaque("key-0003")]
    assert cluster.conn.pending == {}


def test_not_found_in_the_middle_of_a_run(cluster, runs):
    call = cluster.get_multi(keys_of(6))
    replies = call.replies()
    replies[2] = call.reply("key-0002", value=b"Not found", status=Status.KEY_ENOENT)
    cluster.answer(b"".join(replies))
    call.assert_all_read(except_keys=["key-0002"])
    miss = call.mres["key-0002"]
    assert (miss.rc, miss.value, miss.cas) == (RC.KEY_ENOENT, None, 0)
    assert runs == [call.opaque("key-0000"), call.opaque("key-0003")]
    assert cluster.conn.pending == {}


@pytest.mark.parametrize("status", [Status.NOT_MY_VBUCKET, Status.ETMPFAIL], ids=["not-my-vbucket", "tmpfail"])
def test_a_retryable_status_in_the_middle_of_a_run_re_sends_that_entry_alone(cluster, runs, status):
    call = cluster.get_multi(keys_of(6))
    replies = call.replies()
    replies[4] = call.reply("key-0004", value=b"", status=status)
    cluster.answer(b"".join(replies))
    assert call.completions == [] and set(call.mres) == set(keys_of(6)) - {"key-0004"}
    assert runs == [call.opaque("key-0000"), call.opaque("key-0005")]
    retry = cluster.retried(call, "key-0004")
    assert (retry.opcode, retry.vbucket, retry.extras) == (Opcode.GET, call.batch.vbuckets[4], b"")
    assert [r.key for r in cluster.node.requests.values()].count(b"key-0004") == 2, "only that entry is re-sent"
    cluster.answer(call.reply("key-0004", opaque=retry.opaque))
    call.assert_all_read()
    assert cluster.conn.pending == {}


def test_an_entry_retry_reply_in_the_middle_of_another_batch_run(cluster, runs):
    first = cluster.get_multi(keys_of(3, "first"))
    replies = first.replies()
    cluster.answer(replies[0] + first.reply("first-0001", value=b"", status=Status.ETMPFAIL) + replies[2])
    retry = cluster.retried(first, "first-0001")
    second = cluster.get_multi(keys_of(4, "second"))
    others = second.replies()
    cluster.answer(b"".join(others[:2]) + first.reply("first-0001", opaque=retry.opaque) + b"".join(others[2:]))
    first.assert_all_read()
    second.assert_all_read()
    assert runs[-2:] == [second.opaque("second-0000"), second.opaque("second-0002")]
    assert cluster.conn.pending == {}


def test_a_json_value_in_the_middle_of_a_run_is_decoded_without_leaving_the_run(cluster, runs):
    call = cluster.get_multi(keys_of(6))
    replies = call.replies()
    replies[1] = call.reply("key-0001", value=b'{"decoded": true}', extras=JSON_EXTRAS)
    cluster.answer(b"".join(replies))
    call.assert_all_read(except_keys=["key-0001"])
    assert (call.mres["key-0001"].value, call.mres["key-0001"].flags) == ({"decoded": True}, FMT_JSON)
    assert runs == [call.batch.base]
    assert cluster.conn.pending == {}


def test_a_compressed_value_in_the_middle_of_a_run_is_inflated(runs):
    cluster = Cluster(features=[Feature.SNAPPY])
    try:
        assert Feature.SNAPPY in cluster.conn.features
        call = cluster.get_multi(keys_of(5))
        packed, datatype = snappy.compress(expected_value("key-0002") * 20, 0, None)
        assert datatype == Datatype.SNAPPY
        replies = call.replies()
        replies[2] = call.reply("key-0002", value=packed, datatype=datatype)
        cluster.answer(b"".join(replies))
        call.assert_all_read(except_keys=["key-0002"])
        assert call.mres["key-0002"].value == expected_value("key-0002") * 20
        assert runs == [call.opaque("key-0000"), call.opaque("key-0003")]
        assert cluster.conn.pending == {}
    finally:
        cluster.engine.close()


def test_late_replies_after_the_batch_timed_out_are_dropped(cluster):
    call = cluster.get_multi(keys_of(4), timeout=1.0)
    replies = call.replies()
    cluster.answer(replies[0] + replies[2])
    cluster.run_until(lambda: call.completions, step=0.05)
    assert call.completions == [None]
    assert [call.mres[k].rc for k in keys_of(4)] == [0, RC.TIMEOUT, 0, RC.TIMEOUT]
    assert "timed out" in call.mres["key-0001"]._message
    answered = dict(call.mres)
    cluster.answer(replies[1] + replies[3] + replies[0])  # late, and a duplicate
    assert call.completions == [None] and dict(call.mres) == answered
    assert call.mres["key-0003"].value is None
    cluster.iops.pump_until(lambda: cluster.conn.pending == {})  # the dead-connection probe, if any, answered
    assert cluster.conn.state == "ready"


def test_a_late_reply_to_an_entry_retry_after_the_batch_timed_out_is_dropped(cluster):
    call = cluster.get_multi(keys_of(3), timeout=1.0)
    replies = call.replies()
    cluster.answer(replies[0] + call.reply("key-0001", value=b"", status=Status.ETMPFAIL) + replies[2])
    retry = cluster.retried(call, "key-0001")
    cluster.run_until(lambda: call.completions, step=0.05)
    assert call.mres["key-0001"].rc == RC.TIMEOUT and call.completions == [None]
    cluster.answer(call.reply("key-0001", opaque=retry.opaque))
    assert call.mres["key-0001"].rc == RC.TIMEOUT and call.completions == [None]
    assert [call.mres[k].rc for k in ("key-0000", "key-0002")] == [0, 0]
    cluster.iops.pump_until(lambda: cluster.conn.pending == {})


def test_a_reply_for_an_entry_settled_meanwhile_is_skipped_within_the_run(cluster, runs):
    """An entry settled while its opaque is still pending (as when its
    retry times out): its reply is passed over, the run goes on."""
    call = cluster.get_multi(keys_of(5))
    call.batch.fail_entry(2, RC.TIMEOUT, "settled meanwhile")
    cluster.answer(b"".join(call.replies()))
    call.assert_all_read(except_keys=["key-0002"])
    assert (call.mres["key-0002"].rc, call.mres["key-0002"].value) == (RC.TIMEOUT, None)
    assert runs == [call.batch.base]
    assert cluster.conn.pending == {}


def test_a_reply_nobody_waits_for_in_the_middle_of_a_run_is_dropped(cluster, runs):
    call = cluster.get_multi(keys_of(5))
    stranger = call.batch.base + 5000
    assert stranger not in cluster.conn.pending
    replies = call.replies()
    replies.insert(2, encode_response(Opcode.GET, extras=BYTES_EXTRAS, value=b"whose?", opaque=stranger))
    cluster.answer(b"".join(replies))
    call.assert_all_read()
    assert runs == [call.opaque("key-0000"), call.opaque("key-0002")]
    assert cluster.conn.pending == {}


def test_a_run_of_json_values_is_taken_at_once(cluster, runs):
    call = cluster.get_multi(keys_of(5))
    cluster.answer(b"".join(call.reply(k, value=b'{"k": "%s"}' % k.encode(), extras=JSON_EXTRAS)
                            for k in keys_of(5)))
    assert call.completions == [None]
    assert {k: (r.rc, r.value, r.flags) for k, r in call.mres.items()} == {
        k: (0, {"k": k}, FMT_JSON) for k in keys_of(5)}
    assert runs == [call.batch.base]
    assert cluster.conn.pending == {}


def test_a_bad_value_in_a_run_gets_its_own_error_and_the_others_their_values(cluster, runs):
    call = cluster.get_multi(keys_of(4))
    replies = [call.reply(k, value=b"[%d]" % i, extras=JSON_EXTRAS) for i, k in enumerate(keys_of(4))]
    replies[2] = call.reply("key-0002", value=b"{not json", extras=JSON_EXTRAS)
    cluster.answer(b"".join(replies))
    assert call.completions == [None]
    assert [call.mres[k].value for k in ("key-0000", "key-0001", "key-0003")] == [[0], [1], [3]]
    bad = call.mres["key-0002"]
    assert bad.rc == RC.VALUE_FORMAT and bad.value == b"{not json"
    assert runs == [call.batch.base], "taken frame by frame, in one take_run"
    assert cluster.conn.pending == {}


@pytest.fixture
def plain_replies(monkeypatch):
    """The keys of the single reads that took their reply from a run
    (``GetOp.on_plain`` called by the connection, no frame made)."""
    taken: List[str] = []
    framed: List[str] = []
    original = GetOp.on_plain
    original_response = GetOp.on_response

    def counting(self: GetOp, cas: int, flags: int, value: bytes) -> None:
        if not framed or framed[-1] != self.key:
            taken.append(self.key)
        original(self, cas, flags, value)

    def counting_response(self: GetOp, frame: Any) -> None:
        framed.append(self.key)  # on_response hands a success to on_plain too
        original_response(self, frame)

    monkeypatch.setattr(GetOp, "on_plain", counting)
    monkeypatch.setattr(GetOp, "on_response", counting_response)
    return taken


def single_reply(request_opaque: int, value: bytes, extras: bytes = BYTES_EXTRAS, cas: int = 7) -> bytes:
    return encode_response(Opcode.GET, extras=extras, value=value, opaque=request_opaque, cas=cas)


def test_single_gets_answered_back_to_back_take_their_replies_from_one_run(cluster, plain_replies):
    gets = {k: cluster.get(k) for k in ("one", "two", "three")}
    opaques = {r.key.decode(): o for o, r in cluster.node.requests.items()}
    cluster.answer(b"".join([single_reply(opaques["one"], b"v-one"),
                             single_reply(opaques["two"], b'{"n": 2}', extras=JSON_EXTRAS, cas=8),
                             single_reply(opaques["three"], b"v-three", cas=9)]))
    assert {k: [(r.rc, r.value, r.cas, r.flags) for r in got] for k, got in gets.items()} == {
        "one": [(0, b"v-one", 7, FMT_BYTES)], "two": [(0, {"n": 2}, 8, FMT_JSON)],
        "three": [(0, b"v-three", 9, FMT_BYTES)]}
    assert plain_replies == ["one", "two", "three"]
    assert cluster.conn.pending == {}


def test_a_lone_reply_is_a_frame_not_a_run(cluster, plain_replies):
    got = cluster.get("alone")
    (opaque,) = cluster.node.requests
    cluster.answer(single_reply(opaque, b"v"))
    assert [(r.rc, r.value) for r in got] == [(0, b"v")]
    assert plain_replies == [], "one reply in the read: the frame way"


def test_a_run_through_single_gets_and_a_batch_settles_each(cluster, runs, plain_replies):
    """Opaques are handed out in order, so the replies of two single gets,
    a get_multi and another get can form one run: each single takes its
    own reply, the batch takes its entries at once."""
    before = [cluster.get(k) for k in ("a", "b")]
    call = cluster.get_multi(keys_of(4))
    after = cluster.get("c")
    opaques = {r.key.decode(): o for o, r in cluster.node.requests.items()}
    assert [opaques[k] for k in ("a", "b", *keys_of(4), "c")] == list(range(opaques["a"], opaques["a"] + 7))
    cluster.answer(b"".join([single_reply(opaques["a"], b"v-a"), single_reply(opaques["b"], b"v-b"),
                             *call.replies(), single_reply(opaques["c"], b"v-c")]))
    assert [[(r.rc, r.value) for r in got] for got in (*before, after)] == [
        [(0, b"v-a")], [(0, b"v-b")], [(0, b"v-c")]]
    call.assert_all_read()
    assert runs == [call.batch.base], "the batch took its four replies in one call"
    assert plain_replies == ["a", "b", "c"], "and the run went on past the batch"
    assert cluster.conn.pending == {}


def test_one_run_through_two_batches_and_a_get(cluster, runs, plain_replies):
    first = cluster.get_multi(keys_of(3, "x"))
    second = cluster.get_multi(keys_of(3, "y"))
    got = cluster.get("after")
    (opaque,) = [o for o, r in cluster.node.requests.items() if r.key == b"after"]
    assert opaque == second.batch.base + 3 == first.batch.base + 6
    cluster.answer(b"".join([*first.replies(), *second.replies(), single_reply(opaque, b"v")]))
    first.assert_all_read()
    second.assert_all_read()
    assert [r.value for r in got] == [b"v"]
    assert runs == [first.batch.base, second.batch.base] and plain_replies == ["after"]
    assert cluster.conn.pending == {}


def test_a_batch_that_declines_its_part_of_a_run_leaves_the_rest_to_the_frame_way(cluster, runs, plain_replies):
    call = cluster.get_multi(keys_of(3))
    got = cluster.get("after")
    (opaque,) = [o for o, r in cluster.node.requests.items() if r.key == b"after"]
    replies = [call.reply(k, value=b"[%d]" % i, extras=JSON_EXTRAS) for i, k in enumerate(keys_of(3))]
    replies[1] = call.reply("key-0001", value=b"{not json", extras=JSON_EXTRAS)
    cluster.answer(b"".join([*replies, single_reply(opaque, b"v")]))
    assert call.completions == [None]
    assert [call.mres[k].rc for k in keys_of(3)] == [0, RC.VALUE_FORMAT, 0]
    assert [call.mres[k].value for k in ("key-0000", "key-0002")] == [[0], [2]]
    assert [r.value for r in got] == [b"v"]
    assert plain_replies == [], "after the batch declined, every reply of the run went as a frame"
    assert cluster.conn.pending == {}


def test_a_batch_that_breaks_on_its_run_loses_no_one_else_s_reply(cluster, monkeypatch, caplog):
    """A bug in a batch's handling of its run is logged; the replies past
    the batch still reach their callers, and the batch's keys end by its
    timeout, each accounted for."""
    call = cluster.get_multi(keys_of(3), timeout=1.0)
    got = cluster.get("after")
    (opaque,) = [o for o, r in cluster.node.requests.items() if r.key == b"after"]

    def broken(self: KeyBatch, start: int, count: int, run: Any) -> bool:
        raise RuntimeError("a bug in run_results")

    monkeypatch.setattr(KeyBatch, "run_results", broken)
    with caplog.at_level(logging.ERROR, logger="couchbase_core.engine"):
        cluster.answer(b"".join([*call.replies(), single_reply(opaque, b"v")]))
    assert [r.value for r in got] == [b"v"]
    assert any(r.exc_info and "a bug in run_results" in str(r.exc_info[1]) for r in caplog.records)
    cluster.run_until(lambda: call.completions, step=0.05)
    assert call.completions == [None]
    assert set(call.mres) == set(keys_of(3))
    assert {call.mres[k].rc for k in keys_of(3)} == {RC.TIMEOUT}


def test_a_cancelled_get_in_the_middle_of_a_run_gets_nothing_and_the_others_their_replies(cluster, plain_replies):
    gets = {k: cluster.get(k) for k in ("a", "b", "c")}
    opaques = {r.key.decode(): o for o, r in cluster.node.requests.items()}
    op_b = next(op for op in cluster.conn.pending.values() if op.key == "b")
    cluster.engine.cancel(op_b)  # written already: its reply is read and dropped
    cluster.answer(b"".join(single_reply(opaques[k], b"v-" + k.encode()) for k in ("a", "b", "c")))
    assert {k: [r.value for r in got] for k, got in gets.items()} == {"a": [b"v-a"], "b": [], "c": [b"v-c"]}
    assert plain_replies == ["a"], "the run is delivered frame by frame from the reply nobody waits for"
    assert cluster.conn.pending == {}


def test_a_failing_result_handler_in_a_run_does_not_stop_the_others(cluster, plain_replies, caplog):
    gets = {k: cluster.get(k) for k in ("a", "b", "c")}
    opaques = {r.key.decode(): o for o, r in cluster.node.requests.items()}
    op_a = next(op for op in cluster.conn.pending.values() if op.key == "a")

    def broken(res: Any) -> None:
        raise RuntimeError("the caller's handler broke")

    op_a.sink = broken
    with caplog.at_level(logging.ERROR, logger="couchbase_core.engine"):
        cluster.answer(b"".join(single_reply(opaques[k], b"v-" + k.encode()) for k in ("a", "b", "c")))
    assert [[r.value for r in gets[k]] for k in ("b", "c")] == [[b"v-b"], [b"v-c"]]
    assert plain_replies == ["a", "b", "c"]
    assert any("completing" in r.getMessage() and "'a'" in r.getMessage() for r in caplog.records)
    assert cluster.conn.pending == {}


def test_a_run_reply_for_a_get_with_its_own_transcoder_goes_through_it(cluster, plain_replies):
    class Upper(Transcoder):
        def decode_value(self, value: bytes, flags: int) -> Any:
            return value.upper()

    ops = []
    results: List[Any] = []
    for key, decoder in (("mine", Upper()), ("plain", None)):
        op = GetOp(key, key.encode(), 0, 2.5, decoder, False)
        op.sink = results.append
        cluster.engine.submit(op)
        ops.append(op)
    cluster.iops.pump_until(lambda: all(op.opaque in cluster.node.requests for op in ops))
    cluster.answer(b"".join(single_reply(op.opaque, b"v-" + op.key.encode()) for op in ops))
    assert sorted((r.key, r.value) for r in results) == [("mine", b"V-MINE"), ("plain", b"v-plain")]
    assert plain_replies == ["mine", "plain"]


def test_a_value_the_transcoder_rejects_in_a_run_is_that_get_s_error_only(cluster, plain_replies):
    gets = {k: cluster.get(k) for k in ("a", "b")}
    opaques = {r.key.decode(): o for o, r in cluster.node.requests.items()}
    cluster.answer(single_reply(opaques["a"], b"{not json", extras=JSON_EXTRAS) + single_reply(opaques["b"], b"v-b"))
    (bad,) = gets["a"]
    assert bad.rc == RC.VALUE_FORMAT and bad.value == b"{not json"
    assert [r.value for r in gets["b"]] == [b"v-b"]
    assert plain_replies == ["a", "b"]


def config_push(node: ScriptedNode, rev: int, opaque: int) -> bytes:
    """A CLUSTERMAP_CHANGE_NOTIFICATION (magic 0x82) carrying config ``rev``."""
    text, name = node.config(rev), b"default"
    return pack_header(Magic.SERVER_REQUEST, 0x01, len(name), 4, 0, 0, 4 + len(name) + len(text), opaque,
                       0) + FLAGS_EXTRAS.pack(rev) + name + text


@pytest.mark.parametrize("push_opaque", ["zero", "one of the batch's"])
def test_a_config_push_in_the_middle_of_a_run_is_applied(cluster, runs, push_opaque):
    call = cluster.get_multi(keys_of(5))
    replies = call.replies()
    opaque = 0 if push_opaque == "zero" else call.opaque("key-0004")
    replies.insert(3, config_push(cluster.node, 2, opaque=opaque))
    cluster.answer(b"".join(replies))
    call.assert_all_read()
    assert cluster.engine.config.rev == 2
    # A read that holds a server request is delivered frame by frame (its
    # opaque is the server's, so every frame's magic is looked at first):
    # take_run is not used. The decoder's runs still are: a run holds
    # responses (magic 0x81) only, so the push, even under an opaque of the
    # batch, is a frame of its own between two runs.
    assert runs == [call.opaque("key-0000"), call.opaque("key-0003")]
    assert cluster.conn.pending == {}


def test_a_config_push_sharing_an_opaque_with_a_waiting_entry_is_not_its_reply(cluster):
    call = cluster.get_multi(keys_of(5))
    replies = call.replies()
    replies.insert(1, config_push(cluster.node, 2, opaque=call.opaque("key-0003")))
    cluster.answer(b"".join(replies))
    assert cluster.engine.config.rev == 2, "the push is applied"
    call.assert_all_read()


def test_reads_lost_with_their_connection_mid_run_are_re_sent_and_answered(cluster):
    """The socket resets after half the run: the answered keys keep their
    results, the others (reads: harmless to repeat) go out again on a new
    socket, each on its own, and are answered there."""
    keys = keys_of(6)
    call = cluster.get_multi(keys)
    replies = call.replies()
    first_socket = cluster.sock
    first_socket.feed(b"".join(replies[:3]), ConnectionResetError(104, "Connection reset by peer"))
    cluster.run_until(lambda: len(cluster.net.opened) == 2 and cluster.engine.connections[0].state == "ready")
    cluster.sock = cluster.conn._sock
    assert cluster.sock is not first_socket
    resent = [cluster.retried(call, k) for k in keys[3:]]
    cluster.answer(*(call.reply(k, opaque=r.opaque) for k, r in zip(keys[3:], resent)))
    call.assert_all_read()
    assert cluster.conn.pending == {}


# ------------------------------------------- layer 4: enqueue_batch, bytes

def queued_connection() -> KVConnection:
    """A connection still connecting: enqueue_batch only registers and
    queues (no socket, no engine beyond the IOPS)."""
    conn = KVConnection(SimpleNamespace(iops=ManualIOPS()), "node", 11210, 0)  # type: ignore[arg-type]
    conn.state = CONNECTING
    return conn


def expected_wire(batch: Batch, indexes: Iterable[int]) -> bytes:
    """What the protocol's encoder makes of entries ``indexes``."""
    vbs = batch.vbuckets
    return b"".join(encode_request(batch.opcode, batch.kbs[i], batch.extras, b"", vbs[i] if vbs else 0,
                                   batch.base + i) for i in indexes)


@pytest.mark.parametrize("indexes", [None, [0, 3, 4, 6]], ids=["all", "subset"])
@pytest.mark.parametrize("ttl", [0, 300], ids=["get", "gat"])
@pytest.mark.parametrize("with_vbuckets", [False, True], ids=["no-vbuckets", "vbuckets"])
def test_enqueue_batch_packs_plain_reads_exactly(with_vbuckets, ttl, indexes):
    keys = ["k%d" % i for i in range(7)] + ["a-much-longer-key-\u00e9"]
    batch = KeyBatch(KIND_GET, 2.5, MultiResult(), opcode=Opcode.GAT if ttl else Opcode.GET,
                     extras=FLAGS_EXTRAS.pack(ttl) if ttl else b"")
    batch.keys, batch.kbs = keys, [k.encode() for k in keys]
    batch.start(STUB_ENGINE, 0xFFFF_FF00, 2.5)
    if with_vbuckets:
        batch.vbuckets = [(i * 37) % 1024 for i in range(len(keys))]
    conn = queued_connection()
    conn.enqueue_batch(batch, indexes)
    wanted = list(range(len(keys))) if indexes is None else indexes
    (chunk,) = batch.chunks
    assert list(conn._queue) == [chunk] and chunk.conn is conn and not chunk.written
    wire = bytes(chunk.wire)
    assert wire == expected_wire(batch, wanted)
    assert frame_opaques(wire) == [batch.base + i for i in wanted]
    sent = decode_requests(wire)
    assert [(r.magic, r.opcode, r.datatype, r.cas, r.value) for r in sent] == [
        (Magic.REQUEST, batch.opcode, 0, 0, b"")] * len(wanted)
    assert [r.key for r in sent] == [batch.kbs[i] for i in wanted]
    assert [r.extras for r in sent] == [FLAGS_EXTRAS.pack(ttl) if ttl else b""] * len(wanted)
    assert [r.vbucket for r in sent] == [batch.vbuckets[i] if with_vbuckets else 0 for i in wanted]
    assert conn.pending == {batch.base + i: batch for i in wanted}
    assert batch.conns == {conn}


def test_a_batch_split_over_two_chunks_registers_each_entry_once():
    batch = key_batch(keys_of(5), base=40)
    conn = queued_connection()
    conn.enqueue_batch(batch, [0, 2, 4])
    conn.enqueue_batch(batch, [1, 3])
    assert [frame_opaques(bytes(c.wire)) for c in batch.chunks] == [[40, 42, 44], [41, 43]]
    assert sorted(conn.pending) == [40, 41, 42, 43, 44] and set(conn.pending.values()) == {batch}


def test_entry_by_entry_batches_pack_the_same_bytes_as_uniform_ones():
    """The generic path (a request per entry) and the packed one agree."""
    uniform = key_batch(keys_of(4), base=7, opcode=Opcode.GAT)
    uniform.extras = FLAGS_EXTRAS.pack(60)
    uniform.vbuckets = [5, 9, 5, 1]
    generic = KeyBatch(KIND_GET, 2.5, MultiResult())
    for key in keys_of(4):
        generic.add(key, key.encode(), (Opcode.GAT, FLAGS_EXTRAS.pack(60), b"", 0))
    generic.start(STUB_ENGINE, 7, 2.5)
    generic.vbuckets = [5, 9, 5, 1]
    wires = []
    for batch in (uniform, generic):
        conn = queued_connection()
        conn.enqueue_batch(batch, [0, 1, 3])
        wires.append(bytes(batch.chunks[0].wire))
    assert wires[0] == wires[1] == expected_wire(uniform, [0, 1, 3])


def test_a_get_multi_on_a_couchbase_bucket_sends_exact_requests(cluster):
    keys = keys_of(40)
    call = cluster.get_multi(keys)
    batch = call.batch
    vbucket_of = cluster.engine.config.vbucket_of
    assert batch.vbuckets == [vbucket_of(kb) for kb in batch.kbs] and len(set(batch.vbuckets)) > 1
    wire = bytes(cluster.sock.sent[cluster.sent_at_start:])
    assert wire == expected_wire(batch, range(len(keys)))
    assert [(r.opaque, r.vbucket, r.key) for r in decode_requests(wire)] == [
        (batch.base + i, batch.vbuckets[i], kb) for i, kb in enumerate(batch.kbs)]


def test_a_get_multi_on_a_memcached_bucket_sends_exact_requests():
    cluster = Cluster("memcached://127.0.0.1:11210")
    try:
        assert cluster.engine._single is cluster.conn, "one node, no vBuckets: every entry goes there"
        call = cluster.get_multi(keys_of(30))
        assert call.batch.vbuckets is None
        wire = bytes(cluster.sock.sent[cluster.sent_at_start:])
        assert wire == expected_wire(call.batch, range(30))
        assert {r.vbucket for r in decode_requests(wire)} == {0}
        cluster.answer(b"".join(call.replies()))
        call.assert_all_read()
        assert cluster.conn.pending == {}
    finally:
        cluster.engine.close()


def test_a_failing_completion_handler_loses_no_other_reply(cluster, runs):
    """'Never let a result handler break the stream': the batch's sink
    raises when its run completes it; the reply right behind the run
    (another operation's) must still be delivered."""
    call = cluster.get_multi(keys_of(4))

    def broken_sink(_result: Any) -> None:
        call.completions.append(None)
        raise RuntimeError("a result handler failed")

    call.batch.sink = broken_sink
    single = cluster.get("behind")
    opaque = next(o for o, r in cluster.node.requests.items() if r.key == b"behind")
    behind = encode_response(Opcode.GET, extras=BYTES_EXTRAS, value=b"still here", opaque=opaque)
    cluster.answer(b"".join(call.replies()) + behind)
    call.assert_all_read()
    assert [r.value for r in single] == [b"still here"]
    assert cluster.conn.pending == {}

"""Tests for result objects (couchbase_core.result) and items
(couchbase_core.items), without any server."""

from __future__ import annotations

import types

import pytest

from couchbase_core.exceptions import (
    RC,
    ArgumentError,
    CouchbaseError,
    KeyExistsError,
    NotFoundError,
    TimeoutError,
)
from couchbase_core.items import Item, ItemCollection, ItemOptionDict, ItemSequence, checked_item
from couchbase_core.result import (
    AsyncResult,
    MultiResult,
    MutationToken,
    OperationResult,
    Result,
    ValueResult,
)

# -- Result and subclasses -------------------------------------------------------------


def test_result_success_and_errstr():
    ok = Result("k")
    assert ok.success is True
    assert ok.rc == 0
    assert ok.errstr == "Success"
    bad = Result("k", RC.KEY_ENOENT)
    assert bad.success is False
    assert bad.errstr == "The key does not exist on the server"


def test_result_repr_success():
    text = repr(Result("alpha"))
    assert text.startswith("Result<")
    assert "rc=0x0" in text
    assert "'alpha'" in text
    assert "errstr" not in text


def test_result_repr_failure_has_errstr():
    text = repr(Result("beta", RC.KEY_EEXISTS))
    assert "rc=0x2" in text
    assert "'beta'" in text
    assert "errstr=" in text and "CAS" in text


def test_operation_result_repr_has_cas():
    res = OperationResult("op", 0, 0xABCDEF)
    assert res.cas == 0xABCDEF
    assert res.mutation_token is None
    text = repr(res)
    assert text.startswith("OperationResult<")
    assert "cas=0xABCDEF" in text
    assert "'op'" in text


def test_value_result_repr_has_value_and_flags():
    res = ValueResult("vk", 0, 7, {"name": "Ann"}, 0x02000000)
    text = repr(res)
    assert text.startswith("ValueResult<")
    assert "rc=0x0" in text and "'vk'" in text
    assert "{'name': 'Ann'}" in text
    assert "flags=0x2000000" in text
    assert "cas=0x7" in text


def test_value_result_repr_truncates_long_values():
    res = ValueResult("k", 0, 0, "x" * 500)
    text = repr(res)
    assert "x" * 500 not in text
    assert "..." in text
    assert len(text) < 200


def test_value_result_defaults():
    res = ValueResult()
    assert (res.key, res.rc, res.cas, res.value, res.flags) == (None, 0, 0, None, 0)
    assert isinstance(res, OperationResult) and isinstance(res, Result)


def test_set_error_custom_message():
    res = ValueResult("t")
    res._set_error(RC.TIMEOUT, "no reply in 2.5s")
    assert res.rc == RC.TIMEOUT
    assert not res.success
    assert res.errstr == "no reply in 2.5s"
    exc = res._make_exception()
    assert isinstance(exc, TimeoutError)
    assert exc.key == "t"
    assert exc.result is res
    assert exc.message == "no reply in 2.5s"


def test_set_error_with_prepared_exception():
    prepared = KeyExistsError("cas mismatch")
    res = OperationResult("p")
    res._set_error(RC.KEY_EEXISTS, None, prepared)
    exc = res._make_exception()
    assert exc is prepared
    assert exc.key == "p" and exc.result is res


def test_make_exception_keeps_existing_key():
    prepared = NotFoundError(key="other")
    res = Result("mine", RC.KEY_ENOENT)
    res._set_error(RC.KEY_ENOENT, exc=prepared)
    assert res._make_exception().key == "other"


def test_mutation_token():
    tok = MutationToken(5, 0xA1B2, 42)
    assert tok.bucket == ""
    assert tuple(tok) == (5, 0xA1B2, 42, "")
    assert tok.seqno == 42


# -- MultiResult -------------------------------------------------------------------------


def make_multi(cls=MultiResult, **rcs):
    mr = cls()
    for key, rc in rcs.items():
        mr[key] = ValueResult(key, rc, 0, None if rc else key.upper())
    return mr


def test_all_ok_true_when_everything_succeeded():
    assert make_multi(a=0, b=0).all_ok is True
    assert MultiResult().all_ok is True


def test_all_ok_false_on_any_failure():
    assert make_multi(a=0, b=RC.KEY_ENOENT).all_ok is False
    assert make_multi(a=RC.TIMEOUT).all_ok is False


def test_all_ok_with_quiet_misses():
    mr = make_multi(a=0, b=RC.KEY_ENOENT)
    mr._quiet = True
    assert mr.all_ok is False  # 2.x: quiet only suppresses the exception
    assert mr._make_exception() is None
    mr["c"] = ValueResult("c", RC.KEY_EEXISTS)
    assert mr.all_ok is False


def test_multi_make_exception_carries_all_results():
    mr = make_multi(a=0, b=RC.KEY_ENOENT, c=RC.KEY_EEXISTS)
    exc = mr._make_exception()
    assert isinstance(exc, NotFoundError)
    assert exc.key == "b"
    assert exc.all_results is mr
    ok, failed = exc.split_results()
    assert set(ok) == {"a"} and set(failed) == {"b", "c"}


def test_report_multi_never_makes_exception():
    mr = make_multi(a=RC.TIMEOUT)
    mr._report = True
    assert mr._make_exception() is None


def test_multi_result_is_a_dict_with_repr():
    mr = make_multi(a=0)
    assert isinstance(mr, dict)
    assert mr["a"].value == "A"
    text = repr(mr)
    assert text.startswith("MultiResult(")
    assert "'a'" in text


# -- AsyncResult --------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.calls = []

    def callback(self, result):
        self.calls.append(("cb", result))

    def errback(self, result, etype, evalue, tb):
        self.calls.append(("eb", result, etype, evalue, tb))


def async_single(rc=0):
    ar = AsyncResult(single=True)
    ar["k"] = ValueResult("k", rc, 99 if not rc else 0, "val" if not rc else None)
    return ar


def async_multi(**rcs):
    return make_multi(AsyncResult, **rcs)


def test_single_callback_gets_the_single_result():
    rec = Recorder()
    ar = async_single()
    ar.callback, ar.errback = rec.callback, rec.errback
    assert rec.calls == []
    assert ar.done is False
    ar._complete()
    assert ar.done is True
    assert rec.calls == [("cb", ar["k"])]
    assert rec.calls[0][1].value == "val"


def test_multi_callback_gets_the_async_result_itself():
    rec = Recorder()
    ar = async_multi(a=0, b=0)
    ar.callback, ar.errback = rec.callback, rec.errback
    ar._complete()
    assert len(rec.calls) == 1
    kind, result = rec.calls[0]
    assert kind == "cb" and result is ar


def test_single_errback_arguments():
    rec = Recorder()
    ar = async_single(RC.KEY_ENOENT)
    ar.callback, ar.errback = rec.callback, rec.errback
    ar._complete()
    assert len(rec.calls) == 1
    kind, result, etype, evalue, tb = rec.calls[0]
    assert kind == "eb"
    assert result is ar["k"]
    assert etype is NotFoundError
    assert isinstance(evalue, NotFoundError)
    assert evalue.key == "k"
    assert evalue.result is ar["k"]
    # as 2.x, a single-key failure carries its one result in all_results
    assert dict(evalue.all_results) == {"k": ar["k"]}
    assert isinstance(tb, types.TracebackType)


def test_multi_errback_exception_carries_all_results():
    rec = Recorder()
    ar = async_multi(a=0, b=RC.KEY_EEXISTS)
    ar.callback, ar.errback = rec.callback, rec.errback
    ar._complete()
    assert len(rec.calls) == 1
    kind, result, etype, evalue, tb = rec.calls[0]
    assert kind == "eb"
    assert result is ar
    assert etype is KeyExistsError and type(evalue) is KeyExistsError
    assert evalue.all_results is ar
    assert evalue.key == "b"
    assert isinstance(tb, types.TracebackType)
    ok, failed = evalue.split_results()
    assert set(ok) == {"a"} and set(failed) == {"b"}


def test_multi_quiet_miss_goes_to_callback():
    rec = Recorder()
    ar = async_multi(a=0, b=RC.KEY_ENOENT)
    ar._quiet = True
    ar.callback, ar.errback = rec.callback, rec.errback
    ar._complete()
    assert [c[0] for c in rec.calls] == ["cb"]
    assert rec.calls[0][1] is ar


def test_handlers_set_after_success_fire_at_once():
    rec = Recorder()
    ar = async_single()
    ar._complete()
    assert rec.calls == []
    ar.errback = rec.errback          # not the one to call: nothing happens
    assert rec.calls == []
    ar.callback = rec.callback
    assert rec.calls == [("cb", ar["k"])]


def test_handlers_set_after_failure_fire_at_once():
    rec = Recorder()
    ar = async_multi(a=RC.TIMEOUT)
    ar._complete()
    ar.callback = rec.callback        # success handler: must not fire
    assert rec.calls == []
    ar.errback = rec.errback
    assert len(rec.calls) == 1
    assert rec.calls[0][0] == "eb"
    assert rec.calls[0][2] is TimeoutError
    assert rec.calls[0][3].all_results is ar


def test_fires_exactly_once():
    rec = Recorder()
    ar = async_multi(a=0)
    ar.callback, ar.errback = rec.callback, rec.errback
    ar._complete()
    ar._complete()
    ar.callback = rec.callback
    ar.errback = rec.errback
    assert len(rec.calls) == 1


def test_failure_never_also_calls_callback():
    rec = Recorder()
    ar = async_single(RC.KEY_ENOENT)
    ar.errback = rec.errback
    ar._complete()
    ar.callback = rec.callback
    ar.errback = rec.errback
    assert [c[0] for c in rec.calls] == ["eb"]


def test_reentrant_handler_does_not_fire_twice():
    calls = []
    ar = async_single()

    def cb(result):
        calls.append(result)
        ar.callback = cb
        ar._complete()

    ar.callback = cb
    ar._complete()
    assert calls == [ar["k"]]


def test_nothing_fires_before_completion():
    rec = Recorder()
    ar = async_multi(a=RC.KEY_ENOENT)
    ar.callback, ar.errback = rec.callback, rec.errback
    ar.callback = rec.callback
    assert rec.calls == []
    assert ar.callback == rec.callback and ar.errback == rec.errback


def test_async_result_is_a_multi_result():
    ar = async_multi(a=0)
    assert isinstance(ar, MultiResult)
    assert ar.all_ok is True
    assert ar._make_exception() is None
    assert isinstance(async_multi(a=RC.KEY_ENOENT)._make_exception(), CouchbaseError)


# -- items -------------------------------------------------------------------------------


def test_item_basics():
    itm = Item("k", {"v": 1})
    assert isinstance(itm, ValueResult)
    assert (itm.key, itm.value, itm.cas, itm.rc, itm.flags) == ("k", {"v": 1}, 0, 0, 0)
    assert itm.success
    itm.note = "free-form attribute"
    assert itm.note == "free-form attribute"
    assert "'k'" in repr(itm)


def test_item_option_dict_create_and_add():
    coll = ItemOptionDict()
    itm = coll.create_and_add("user:1", {"name": "Ann"}, cas=77, ttl=60, format=0x02000000)
    assert isinstance(itm, Item)
    assert (itm.key, itm.value, itm.cas) == ("user:1", {"name": "Ann"}, 77)
    assert len(coll) == 1
    assert coll.dict == {itm: {"ttl": 60, "format": 0x02000000}}
    assert list(coll) == [(itm, {"ttl": 60, "format": 0x02000000})]


def test_item_option_dict_add_keeps_options_and_chains():
    a, b = Item("a", 1), Item("b", 2)
    coll = ItemOptionDict()
    assert coll.add(a, persist_to=1).add(b) is coll
    assert dict(iter(coll)) == {a: {"persist_to": 1}, b: None}  # no options: None, as 2.x
    coll.add(a, ttl=5)  # re-adding replaces the options
    assert len(coll) == 2
    assert coll.dict[a] == {"ttl": 5}


def test_item_option_dict_from_dict():
    a, b = Item("a"), Item("b")
    given = {a: {"ttl": 1}, b: None}
    coll = ItemOptionDict(given)
    assert coll.dict is given  # 2.x keeps the dict itself
    assert coll.dict == {a: {"ttl": 1}, b: None}


# 2.x checks a collection's entries when a _multi call uses them, not when
# they are added (the use is tested against servers in test_semantics_2x.py).
@pytest.mark.parametrize("bad", ["a string", ValueResult("k"), ("key", "k"), None])
def test_item_option_dict_checks_entries_at_use(bad):
    coll = ItemOptionDict()
    coll.add(bad)
    assert len(coll) == 1
    with pytest.raises(ArgumentError):
        checked_item(bad)


def test_item_without_key_rejected_at_use():
    keyless = Item(value="v")
    assert len(ItemOptionDict().add(keyless)) == 1
    assert len(ItemSequence([Item("ok"), keyless])) == 2
    with pytest.raises(ArgumentError):
        checked_item(keyless)
    assert checked_item(Item("ok")).key == "ok"


def test_item_sequence():
    items = [Item("x", 1), Item("y", 2)]
    seq = ItemSequence(items)
    assert len(seq) == 2
    assert seq.sequence == items
    assert list(seq) == [(items[0], None), (items[1], None)]
    # a generator is accepted; the items are kept, so the collection can be iterated again
    seq2 = ItemSequence(i for i in items)
    assert [it for it, _ in seq2] == items
    assert [it for it, _ in seq2] == items


def test_item_sequence_of_one_item():
    itm = Item("x", 1)
    seq = ItemSequence(itm)  # a single Item is a sequence of one (2.x)
    assert len(seq) == 1 and seq.sequence == [itm]
    assert list(seq) == [(itm, None)]


def test_as_itcoll_without_options():
    itm = Item("solo", "v")
    coll = itm.as_itcoll()
    assert isinstance(coll, ItemSequence)
    assert list(coll) == [(itm, None)]


def test_as_itcoll_with_options():
    itm = Item("solo", "v")
    coll = itm.as_itcoll(ttl=30, format=0x03000002)
    assert isinstance(coll, ItemOptionDict)
    assert list(coll) == [(itm, {"ttl": 30, "format": 0x03000002})]


def test_as_itcoll_without_key_checked_at_use():
    coll = Item().as_itcoll()
    with pytest.raises(ArgumentError):
        checked_item(next(iter(coll))[0])


def test_item_collection_base_is_abstract():
    base = ItemCollection()
    with pytest.raises(NotImplementedError):
        len(base)
    with pytest.raises(NotImplementedError):
        iter(base)
    assert isinstance(ItemSequence([]), ItemCollection)
    assert isinstance(ItemOptionDict(), ItemCollection)

"""Tests for the exception tree and the result-code table
(couchbase_core.exceptions)."""

from __future__ import annotations

import inspect
import pickle

import pytest

import couchbase_core.exceptions as E
from couchbase_core._engine.protocol import Status
from couchbase_core.exceptions import (
    RC,
    RC_TABLE,
    CouchbaseDataError,
    CouchbaseError,
    CouchbaseFatalError,
    CouchbaseInputError,
    CouchbaseInternalError,
    CouchbaseNetworkError,
    CouchbaseTransientError,
    exc_from_rc,
    rc_description,
)
from couchbase_core.result import MultiResult, OperationResult, ValueResult

CATEGORIES = (CouchbaseNetworkError, CouchbaseInputError, CouchbaseTransientError, CouchbaseFatalError,
              CouchbaseDataError, CouchbaseInternalError)


def exported_classes():
    return [getattr(E, name) for name in E.__all__ if inspect.isclass(getattr(E, name))]


def exported_exceptions():
    return [cls for cls in exported_classes() if cls is not RC and not issubclass(cls, Warning)]


def test_exports_resolve():
    for name in E.__all__:
        assert hasattr(E, name), name


def test_every_exported_exception_class_is_a_couchbase_error():
    classes = exported_exceptions()
    assert len(classes) > 50
    for cls in classes:
        assert issubclass(cls, CouchbaseError), cls
    # RC is the only exported class that is a plain namespace of codes
    assert [c for c in exported_classes() if not issubclass(c, BaseException)] == [RC]


def test_every_error_class_in_the_module_is_exported():
    defined = {name for name, obj in vars(E).items()
               if inspect.isclass(obj) and issubclass(obj, CouchbaseError)}
    assert defined <= set(E.__all__)


def test_rc_values_are_unique_and_split_by_origin():
    codes = {name: value for name, value in vars(RC).items() if name.isupper()}
    assert len(set(codes.values())) == len(codes)
    assert codes["SUCCESS"] == 0
    for name in ("ARGUMENT", "TIMEOUT", "NETWORK", "PROTOCOL", "OBJECT_DESTROYED"):
        assert codes[name] >= 0x100
    for name in ("KEY_ENOENT", "KEY_EEXISTS", "NOT_MY_VBUCKET", "ETMPFAIL", "SUBDOC_MULTI_PATH_FAILURE"):
        assert 0 < codes[name] < 0x100


def test_server_codes_equal_wire_statuses():
    shared = [name for name in vars(Status) if name.isupper() and hasattr(RC, name)]
    assert len(shared) >= 20
    for name in shared:
        assert getattr(RC, name) == getattr(Status, name), name
    # spot checks against kv-protocol.md §8
    assert (RC.KEY_ENOENT, RC.KEY_EEXISTS, RC.LOCKED, RC.ETMPFAIL) == (0x01, 0x02, 0x09, 0x86)
    assert (RC.SUBDOC_PATH_ENOENT, RC.SYNC_WRITE_AMBIGUOUS) == (0xC0, 0xA3)


@pytest.mark.parametrize("rc", sorted(RC_TABLE))
def test_rc_table_entry(rc):
    cls, desc = RC_TABLE[rc]
    assert issubclass(cls, CouchbaseError)
    assert isinstance(desc, str) and desc
    assert rc_description(rc) == desc
    # the class builds from its own CODE and that code maps back to it
    plain = cls()
    assert plain.rc == cls.CODE != 0
    assert RC_TABLE[cls.CODE][0] is cls
    # exc_from_rc builds that class with the exact code and the description
    exc = exc_from_rc(rc)
    assert type(exc) is cls
    assert exc.rc == rc
    assert exc.message == desc
    assert CouchbaseError.rc_to_exctype(rc) is cls


def test_codes_sharing_a_class():
    assert RC_TABLE[RC.AUTH_ERROR][0] is RC_TABLE[RC.AUTH_FAILED][0] is E.AuthError
    assert E.AuthError.CODE == RC.AUTH_ERROR
    exc = exc_from_rc(RC.AUTH_FAILED)
    assert type(exc) is E.AuthError and exc.rc == RC.AUTH_FAILED


def test_exc_from_rc_custom_message_and_object():
    marker = object()
    exc = exc_from_rc(RC.KEY_ENOENT, "gone away", marker)
    assert isinstance(exc, E.NotFoundError)
    assert exc.message == "gone away"
    assert exc.objextra is marker
    assert exc.key is None


@pytest.mark.parametrize("rc, text", [
    (0x99, "Server status 0x99"),
    (0x26, "Server status 0x26"),
    (0x999, "Unknown error code 0x999"),
])
def test_exc_from_rc_unknown_codes(rc, text):
    exc = exc_from_rc(rc)
    assert type(exc) is CouchbaseError
    assert exc.rc == rc
    assert exc.message == text
    assert rc_description(rc) == text


def test_rc_description_success():
    assert rc_description(0) == "Success"


def test_rc_to_exctype():
    assert CouchbaseError.rc_to_exctype(RC.KEY_ENOENT) is E.NotFoundError
    assert CouchbaseError.rc_to_exctype(RC.KEY_EEXISTS) is E.KeyExistsError
    assert CouchbaseError.rc_to_exctype(RC.TIMEOUT) is E.TimeoutError
    assert E.NotFoundError.rc_to_exctype(RC.TIMEOUT) is E.TimeoutError
    assert CouchbaseError.rc_to_exctype(0x77) is CouchbaseError
    assert CouchbaseError.rc_to_exctype(0) is CouchbaseError


# -- categories -------------------------------------------------------------------------


@pytest.mark.parametrize("cls, categories", [
    (E.TimeoutError, {CouchbaseNetworkError, CouchbaseTransientError}),
    (E.NotFoundError, {CouchbaseDataError}),
    (E.KeyExistsError, {CouchbaseDataError}),
    (E.ArgumentError, {CouchbaseInputError}),
    (E.ValueFormatError, {CouchbaseInputError}),
    (E.ObjectDestroyedError, {CouchbaseFatalError}),
    (E.TemporaryFailError, {CouchbaseTransientError}),
    (E.NetworkError, {CouchbaseNetworkError}),
    (E.NotMyVbucketError, {CouchbaseNetworkError, CouchbaseTransientError}),
    (E.LockedError, {CouchbaseDataError, CouchbaseTransientError}),
    (E.NotLockedError, {CouchbaseDataError, CouchbaseTransientError}),
    (E.AuthError, {CouchbaseInputError, CouchbaseFatalError}),
    (E.BucketNotFoundError, {CouchbaseInputError, CouchbaseFatalError}),
    (E.InternalError, {CouchbaseInternalError}),
    (E.ObjectThreadError, {CouchbaseInternalError}),
    (E.DurabilitySyncWriteInProgressError, {CouchbaseTransientError}),
])
def test_category_membership(cls, categories):
    assert {c for c in CATEGORIES if issubclass(cls, c)} == categories
    err = cls()
    assert err.is_transient == (CouchbaseTransientError in categories)
    assert err.is_network == (CouchbaseNetworkError in categories)
    assert err.is_data == (CouchbaseDataError in categories)


def test_catching_by_category():
    with pytest.raises(CouchbaseTransientError):
        raise E.TimeoutError("slow")
    with pytest.raises(CouchbaseDataError):
        raise exc_from_rc(RC.KEY_ENOENT)
    with pytest.raises(CouchbaseInputError):
        raise E.ArgumentError("bad")


def test_subclass_relations():
    assert issubclass(E.AccessError, E.AuthError)
    assert issubclass(E.ViewEngineError, E.HTTPError)
    for cls in (E.DurabilityInvalidLevelError, E.DurabilityImpossibleError, E.DurabilitySyncWriteAmbiguousError,
                E.DurabilitySyncWriteInProgressError, E.DurabilitySyncWriteReCommitInProgressError):
        assert issubclass(cls, E.DurabilityError)


# -- construction -----------------------------------------------------------------------


def test_from_string():
    err = E.NotFoundError("where is it")
    assert err.message == "where is it"
    assert err.rc == RC.KEY_ENOENT
    assert err.key is None and err.result is None and err.all_results is None
    assert err.args == ("where is it",)


def test_from_dict():
    cause = ValueError("inner")
    err = E.KeyExistsError({"rc": 0x02, "key": "k1", "message": "clash", "inner_cause": cause,
                            "objextra": [1], "result": "R"})
    assert (err.rc, err.key, err.message, err.objextra, err.result) == (2, "k1", "clash", [1], "R")
    assert err.inner_cause is cause


def test_from_kwargs():
    err = E.TimeoutError(key=b"bk", message="too slow", rc=RC.TIMEOUT)
    assert (err.key, err.message, err.rc) == (b"bk", "too slow", RC.TIMEOUT)


def test_kwargs_override_dict():
    err = CouchbaseError({"key": "a", "message": "m"}, key="b")
    assert err.key == "b"
    assert err.message == "m"


def test_from_nothing():
    err = E.ArgumentError()
    assert err.rc == RC.ARGUMENT
    assert err.message == ""
    assert "Invalid argument" in str(err)


def test_explicit_rc_overrides_class_code():
    err = E.NotFoundError(rc=0x42)
    assert err.rc == 0x42


def test_str_contains_rc_and_key():
    err = E.NotFoundError({"key": "user:1"})
    text = str(err)
    assert "RC=0x1" in text
    assert "'user:1'" in text
    assert "The key does not exist on the server" in text


def test_str_contains_message_and_cause():
    err = E.ValueFormatError({"key": "k", "message": "bad value", "inner_cause": TypeError("no json")})
    text = str(err)
    assert "RC=0x101" in text
    assert "bad value" in text
    assert "'k'" in text
    assert "TypeError" in text and "no json" in text


def test_str_without_rc_shows_message():
    err = CouchbaseError("plain words")
    assert err.rc == 0
    assert "plain words" in str(err)
    assert "RC=" not in str(err)


def test_str_counts_all_results():
    mr = MultiResult(a=OperationResult("a"), b=OperationResult("b", RC.KEY_ENOENT))
    err = E.NotFoundError(key="b", all_results=mr)
    assert "Results=2" in str(err)


def test_repr_names_the_class():
    err = E.LockedError(key="doc")
    assert repr(err).startswith("LockedError(")
    assert "'doc'" in repr(err)


def test_pickle_keeps_attributes():
    err = E.NotFoundError({"key": "k", "message": "m"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is E.NotFoundError
    assert (back.rc, back.key, back.message) == (RC.KEY_ENOENT, "k", "m")


# -- split_results ------------------------------------------------------------------------


def test_split_results_mixed():
    ok1 = ValueResult("a", 0, 11, {"v": 1})
    ok2 = OperationResult("b", 0, 12)
    bad1 = ValueResult("c", RC.KEY_ENOENT)
    bad2 = OperationResult("d", RC.KEY_EEXISTS)
    mr = MultiResult()
    for res in (ok1, ok2, bad1, bad2):
        mr[res.key] = res
    err = bad1._make_exception()
    err.all_results = mr
    ok, failed = err.split_results()
    assert ok == {"a": ok1, "b": ok2}
    assert failed == {"c": bad1, "d": bad2}
    assert ok["a"] is ok1 and failed["d"] is bad2


def test_split_results_all_ok_or_all_failed():
    mr = MultiResult(x=OperationResult("x"), y=OperationResult("y"))
    assert CouchbaseError(all_results=mr).split_results() == ({"x": mr["x"], "y": mr["y"]}, {})
    bad = MultiResult(x=OperationResult("x", 1))
    assert CouchbaseError(all_results=bad).split_results() == ({}, {"x": bad["x"]})


def test_split_results_single_key():
    res = ValueResult("solo", RC.KEY_ENOENT)
    err = res._make_exception()
    assert err.split_results() == ({}, {"solo": res})


def test_split_results_without_anything():
    assert CouchbaseError("x").split_results() == ({}, {})


def test_lock_failures_are_temporary_failures_as_in_2x():
    # 2.x code catches TemporaryFailError around lock/unlock.
    for cls in (E.LockedError, E.NotLockedError):
        assert issubclass(cls, E.TemporaryFailError)
        assert not issubclass(E.TemporaryFailError, cls)

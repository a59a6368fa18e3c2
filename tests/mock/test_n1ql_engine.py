"""Unit tests of the emulator's N1QL subset engine (couchbase_core.mock.n1ql).

Everything runs in memory against a fake keyspace; each response's chunks are
checked to be bytes that concatenate into one JSON object.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from couchbase_core.mock import n1ql
from couchbase_core.mock.n1ql import (
    MISSING,
    QueryService,
    format_go_duration,
    parse_go_duration,
)

# ---------------------------------------------------------------------------
# Fakes and helpers
# ---------------------------------------------------------------------------


class FakeKeyspace:
    """A bucket as a dict of id -> JSON value; binary documents are bytes."""

    def __init__(self, name: str, docs: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.docs: Dict[str, Any] = dict(docs or {})
        self.scanned = 0
        self.mutations = 0
        self.fail_after: Optional[int] = None

    def _meta(self, key: str) -> dict:
        value = self.docs[key]
        meta = {"id": key, "cas": 1000 + len(key), "flags": 0x2000000, "expiration": 0,
                "type": "base64" if isinstance(value, bytes) else "json",
                "internal": "not shown"}
        if isinstance(value, bytes):
            meta["size"] = len(value)
        return meta

    def scan(self) -> Iterator[Tuple[str, Any, dict]]:
        for key in list(self.docs):
            if self.fail_after is not None and self.scanned >= self.fail_after:
                raise RuntimeError("disk on fire")
            self.scanned += 1
            value = self.docs[key]
            yield key, None if isinstance(value, bytes) else value, self._meta(key)

    def get(self, doc_id: str) -> Optional[Tuple[Any, dict]]:
        if doc_id not in self.docs:
            return None
        value = self.docs[doc_id]
        return (None if isinstance(value, bytes) else value), self._meta(doc_id)

    def mutation_count(self) -> int:
        return self.mutations

    def upsert(self, key: str, value: Any) -> None:
        self.docs[key] = value
        self.mutations += 1


class Result:
    """A decoded response."""

    def __init__(self, status: int, chunks: List[bytes]) -> None:
        assert all(isinstance(c, bytes) for c in chunks)
        self.status = status
        self.chunks = chunks
        self.raw = b"".join(chunks)
        self.body = json.loads(self.raw)

    @property
    def rows(self) -> List[Any]:
        return self.body["results"]

    @property
    def errors(self) -> List[dict]:
        return self.body.get("errors", [])

    @property
    def code(self) -> Optional[int]:
        return self.errors[0]["code"] if self.errors else None

    @property
    def msg(self) -> str:
        return self.errors[0]["msg"] if self.errors else ""


def run(svc: QueryService, statement: Optional[str] = None, **fields: Any) -> Result:
    request = dict(fields)
    if statement is not None:
        request["statement"] = statement
    status, chunks = svc.execute(request)
    return Result(status, list(chunks))


def ok(svc: QueryService, statement: Optional[str] = None, **fields: Any) -> List[Any]:
    res = run(svc, statement, **fields)
    assert res.status == 200, res.raw
    assert res.body["status"] == "success", res.raw
    assert "errors" not in res.body
    return res.rows


def fails(svc: QueryService, statement: Optional[str], code: int, http: int,
          status: str = "fatal", **fields: Any) -> Result:
    res = run(svc, statement, **fields)
    assert res.status == http, res.raw
    assert res.code == code, res.raw
    assert res.body["status"] == status, res.raw
    assert "signature" not in res.body
    assert res.body["metrics"]["errorCount"] == len(res.errors)
    return res


class Cluster:
    """Keyspaces by name plus a service reading them."""

    def __init__(self, **kwargs: Any) -> None:
        self.buckets: Dict[str, FakeKeyspace] = {}
        self.svc = QueryService(lambda: dict(self.buckets), **kwargs)

    def bucket(self, name: str, docs: Optional[Dict[str, Any]] = None,
               primary: bool = True) -> FakeKeyspace:
        ks = self.buckets[name] = FakeKeyspace(name, docs)
        if primary:
            ok(self.svc, "CREATE PRIMARY INDEX ON `%s`" % name)
        return ks


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture
def svc() -> QueryService:
    return QueryService(lambda: {})


def value(svc: QueryService, expr: str, **fields: Any) -> List[Any]:
    """``SELECT RAW expr``: [] when the expression is MISSING."""
    return ok(svc, "SELECT RAW " + expr, **fields)


DOCS = {
    "airline_10": {"type": "airline", "name": "40-Mile Air", "iata": "Q5", "country": "United States",
                   "id": 10},
    "airline_137": {"type": "airline", "name": "Air France", "iata": "AF", "country": "France",
                    "id": 137},
    "airport_1254": {"type": "airport", "name": "Calais Dunkerque", "city": "Calais",
                     "geo": {"lat": 50.96, "lon": 1.95, "alt": 12}, "runways": [1200, 800]},
    "route_5": {"type": "route", "stops": 0, "schedule": [{"day": 0, "flight": "AF198"},
                                                          {"day": 1, "flight": "AF547"}]},
    "hotel_1": {"type": "hotel", "name": None, "first-name": "Ritz", "value": 5},
}


@pytest.fixture
def travel(cluster: Cluster) -> Cluster:
    cluster.bucket("travel-sample", DOCS)
    return cluster


# ---------------------------------------------------------------------------
# Literals, operators, functions (no FROM)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("expr, expected", [
    ("1", [1]), ("1.5", [1.5]), ("2e3", [2000]), ("-4", [-4]),
    ('"dq"', ["dq"]), ("'sq'", ["sq"]), ("'it''s'", ["it's"]), ('"a\\"b"', ['a"b']),
    ('"\\u00e9\\n"', ["\u00e9\n"]), ('"x""y"', ['x"y']),
    ("TRUE", [True]), ("false", [False]), ("NULL", [None]), ("MISSING", []),
    ('[1, "a", MISSING, NULL]', [[1, "a", None, None]]),
    ('{"a": 1, "b": MISSING, "c": [TRUE]}', [{"a": 1, "c": [True]}]),
    ('{"a": {"b": [10, 20]}}.a.b[1]', [20]),
])
def test_literals(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


@pytest.mark.parametrize("expr, expected", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("2 * 3 + 1", 7), ("10 - 2 - 3", 5),
    ("7 / 2", 3.5), ("4 / 2", 2), ("7 % 3", 1), ("-7 % 3", -1), ("7.5 % 2", 1.5),
    ("1 / 0", None), ("5 % 0", None), ('1 + "a"', None), ("1 + NULL", None), ("TRUE + 1", None),
    ("-(2 + 3)", -5), ("- - 2", 2), ("1.5 * 2", 3), ("1e308 * 10", None),
    ('"a" || "b" || "c"', "abc"), ('"a" || 1', None), ('"a" || NULL', None),
])
def test_arithmetic_and_concat(svc: QueryService, expr: str, expected: Any) -> None:
    got = value(svc, expr)
    assert got == [expected]
    if expected is not None:
        assert type(got[0]) is type(expected)


@pytest.mark.parametrize("expr", ["1 + MISSING", "MISSING * 2", '"a" || MISSING', "-MISSING"])
def test_arithmetic_with_missing_is_missing(svc: QueryService, expr: str) -> None:
    assert value(svc, expr) == []


@pytest.mark.parametrize("expr, expected", [
    ("1 = 1", [True]), ("1 == 1.0", [True]), ("1 = 2", [False]), ('"1" = 1', [False]),
    ("1 != 2", [True]), ("1 <> 1", [False]), ('"a" < "b"', [True]), ('"b" <= "a"', [False]),
    ("2 > 1", [True]), ("2 >= 2", [True]), ('1 < "a"', [True]), ('"a" > [1]', [False]),
    ("TRUE > FALSE", [True]), ("FALSE < 0", [True]), ("NULL < FALSE", [None]),
    ("[1, 2] = [1, 2.0]", [True]), ("[1] < [1, 2]", [True]), ("[2] > [1, 9]", [True]),
    ('{"a": 1} = {"a": 1.0}', [True]), ('{"a": 1} > [9]', [True]),
    ('{"a": 1, "b": 1} > {"z": 9}', [True]), ('{"b": 1} > {"a": 9}', [True]),
    ("NULL = NULL", [None]), ("NULL != 1", [None]), ("NULL = MISSING", []),
    ("MISSING = 1", []), ("1 < MISSING", []),
])
def test_comparisons(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


@pytest.mark.parametrize("expr, expected", [
    ("TRUE AND TRUE", [True]), ("TRUE AND FALSE", [False]), ("FALSE AND MISSING", [False]),
    ("MISSING AND FALSE", [False]), ("TRUE AND MISSING", []), ("NULL AND MISSING", []),
    ("NULL AND TRUE", [None]), ("NULL AND FALSE", [False]),
    ("TRUE OR MISSING", [True]), ("FALSE OR MISSING", []), ("NULL OR MISSING", [None]),
    ("FALSE OR NULL", [None]), ("FALSE OR FALSE", [False]), ("MISSING OR TRUE", [True]),
    ("NOT TRUE", [False]), ("NOT NULL", [None]), ("NOT MISSING", []), ("NOT 0", [True]),
    ('NOT "x"', [False]), ('1 AND "x"', [True]), ("[] OR 0", [False]),
    ("TRUE OR FALSE AND FALSE", [True]), ("NOT 1 = 2", [True]), ("NOT NOT TRUE", [True]),
])
def test_logic_truth_tables(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


@pytest.mark.parametrize("expr, expected", [
    ('"hello" LIKE "h%"', [True]), ('"hello" LIKE "h_llo"', [True]), ('"hello" LIKE "h_lo"', [False]),
    ('"hello" LIKE "%"', [True]), ('"" LIKE "%"', [True]), ('"hello" LIKE "HELLO"', [False]),
    ('"50%" LIKE "50\\\\%"', [True]), ('"500" LIKE "50\\\\%"', [False]),
    ('"a.c" LIKE "a.c"', [True]), ('"abc" LIKE "a.c"', [False]), ('"a(b" LIKE "a(%"', [True]),
    ('"a\\nb" LIKE "a%b"', [True]), ('"a\\nb" LIKE "a_b"', [True]),
    ('"abc" NOT LIKE "a%"', [False]), ('"xbc" NOT LIKE "a%"', [True]),
    ('1 LIKE "1"', [None]), ('"1" LIKE 1', [None]), ('NULL LIKE "a"', [None]),
    ('MISSING LIKE "a"', []), ('MISSING NOT LIKE "a"', []),
])
def test_like(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


@pytest.mark.parametrize("expr, expected", [
    ("2 IN [1, 2, 3]", [True]), ("4 IN [1, 2]", [False]), ("1 IN [1.0]", [True]),
    ("2 NOT IN [1, 2]", [False]), ("5 NOT IN [1, 2]", [True]), ("[1] IN [[1], [2]]", [True]),
    ('"a" IN "a"', [None]), ("NULL IN [NULL]", [None]), ("1 IN [NULL, 1]", [True]),
    ("MISSING IN [1]", []), ("1 IN MISSING", []), ("MISSING NOT IN [1]", []),
    ("2 IN []", [False]),
])
def test_in(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


@pytest.mark.parametrize("expr, expected", [
    ("5 BETWEEN 1 AND 10", [True]), ("1 BETWEEN 1 AND 1", [True]), ("0 BETWEEN 1 AND 10", [False]),
    ("5 NOT BETWEEN 1 AND 10", [False]), ("0 NOT BETWEEN 1 AND 10", [True]),
    ('"b" BETWEEN "a" AND "c"', [True]), ("NULL BETWEEN 1 AND 2", [None]),
    ("MISSING BETWEEN 1 AND 2", []), ("1 BETWEEN 1 AND 1 AND FALSE", [False]),
    ("3 BETWEEN 1 + 1 AND 2 * 2", [True]),
])
def test_between(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


@pytest.mark.parametrize("operand, null, not_null, missing, not_missing, valued, not_valued", [
    ("1", False, True, False, True, True, False),
    ("NULL", True, False, False, True, False, True),
    ("MISSING", MISSING, MISSING, True, False, False, True),
])
def test_is_predicates(svc: QueryService, operand: str, null: Any, not_null: Any, missing: Any,
                       not_missing: Any, valued: Any, not_valued: Any) -> None:
    for pred, expected in [("IS NULL", null), ("IS NOT NULL", not_null),
                           ("IS MISSING", missing), ("IS NOT MISSING", not_missing),
                           ("IS VALUED", valued), ("IS NOT VALUED", not_valued),
                           ("IS KNOWN", valued)]:
        got = value(svc, "%s %s" % (operand, pred))
        assert got == ([] if expected is MISSING else [expected]), pred


def test_precedence_is_binds_tighter_than_comparison(svc: QueryService) -> None:
    # as in the server's grammar: a = (b IS NULL)
    assert value(svc, "TRUE = NULL IS NULL") == [True]
    assert value(svc, '"a" || "b" = "ab"') == [True]


@pytest.mark.parametrize("expr, expected", [
    ('LOWER("AbC")', ["abc"]), ("LOWER(1)", [None]), ("LOWER(MISSING)", []),
    ('lower("X")', ["x"]), ('UPPER("abc")', ["ABC"]), ("UPPER(NULL)", [None]),
    ('LENGTH("abc")', [3]), ('LENGTH("h\u00e9")', [3]), ("LENGTH([1])", [None]),
    ("ARRAY_LENGTH([1, 2])", [2]), ('ARRAY_LENGTH("ab")', [None]), ("ARRAY_LENGTH(MISSING)", []),
    ("ABS(-3)", [3]), ("ABS(-2.5)", [2.5]), ('ABS("1")', [None]),
    ("ROUND(2.5)", [3]), ("ROUND(-2.5)", [-3]), ("ROUND(2.4)", [2]), ("ROUND(2.675, 2)", [2.68]),
    ("ROUND(1234, -2)", [1200]), ('ROUND("x")', [None]), ("ROUND(MISSING)", []),
    ("TOSTRING(1)", ["1"]), ("TOSTRING(1.5)", ["1.5"]), ("TOSTRING(TRUE)", ["true"]),
    ('TOSTRING([1, "a"])', ['[1,"a"]']), ("TOSTRING(NULL)", [None]), ("TO_STRING(2)", ["2"]),
    ('TONUMBER("12")', [12]), ('TONUMBER(" 1.5 ")', [1.5]), ('TONUMBER("abc")', [None]),
    ("TONUMBER(TRUE)", [1]), ('TONUMBER("inf")', [None]), ("TONUMBER([1])", [None]),
    ("TONUMBER(MISSING)", []),
    ("IFMISSING(MISSING, NULL, 2)", [None]), ("IFMISSING(MISSING, 2)", [2]),
    ("IFMISSING(MISSING, MISSING)", [None]), ("IFNULL(NULL, 3)", [3]),
    ("IFNULL(MISSING, 3)", []), ("IFNULL(NULL, NULL)", [None]), ("IFNULL(1, 2)", [1]),
    ("META()", []),
])
def test_functions(svc: QueryService, expr: str, expected: List[Any]) -> None:
    assert value(svc, expr) == expected


def test_select_without_from_names_terms(svc: QueryService) -> None:
    res = run(svc, "SELECT 1+1 AS two, $1 AS x, 'a' || 'b', 3, {\"k\": 1}.k", args=[5])
    assert res.rows == [{"two": 2, "x": 5, "$1": "ab", "$2": 3, "k": 1}]
    assert res.body["signature"] == {"two": "number", "x": "json", "$1": "string",
                                     "$2": "number", "k": "json"}
    assert ok(svc, "SELECT *") == [{}]
    assert ok(svc, "SELECT 1 AS a ORDER BY a") == [{"a": 1}]


def test_field_without_from_is_an_error(svc: QueryService) -> None:
    res = fails(svc, "SELECT name", 3000, 400)
    assert res.msg == "Ambiguous reference to field name."


@pytest.mark.parametrize("stmt, msg", [
    ("SELECT FOO(1)", "Invalid function FOO."),
    ("SELECT LOWER(1, 2)", "Number of arguments to function LOWER must be 1."),
    ("SELECT ROUND(1, 2, 3)", "Number of arguments to function ROUND must be between 1 and 2."),
    ("SELECT IFNULL(1)", "Number of arguments to function IFNULL must be at least 2."),
    ("SELECT", "syntax error - at end of input"),
    ("SELECT 1 +", "syntax error - at end of input"),
    ("SELEC 1", "syntax error - at SELEC"),
    ("SELECT * FORM b", "syntax error - at FORM"),
    ("SELECT 1 = 1 = 1", "syntax error - at ="),
    ("INSERT INTO b VALUES ('k', {})", "syntax error - at INSERT"),
    ("SELECT COUNT(*) FROM b GROUP BY x", "syntax error - at GROUP"),
    ("SELECT (SELECT 1)", "syntax error - at SELECT"),
    ("SELECT 'unterminated", "syntax error - at 'unterminated"),
    ("SELECT value FROM b", "syntax error - at FROM"),  # VALUE = RAW
    ("SELECT path FROM b", "syntax error - at path"),
    ("SELECT 1 LIMIT 1 LIMIT 2", "syntax error - at LIMIT"),
    ("PREPARE PREPARE SELECT 1", "syntax error - at PREPARE"),
])
def test_syntax_errors(svc: QueryService, stmt: str, msg: str) -> None:
    res = fails(svc, stmt, 3000, 400)
    assert res.msg == msg
    assert "results" not in res.body


def test_comments_case_and_semicolon(svc: QueryService) -> None:
    assert ok(svc, "select raw 1 -- trailing comment\n;") == [1]
    assert ok(svc, "/* block */ SeLeCt RaW /* inner */ 2 ;") == [2]


# ---------------------------------------------------------------------------
# Projection, FROM, paths, META
# ---------------------------------------------------------------------------


def test_select_star_wraps_in_keyspace_or_alias(travel: Cluster) -> None:
    svc = travel.svc
    rows = ok(svc, "SELECT * FROM `travel-sample` USE KEYS 'airline_10'")
    assert rows == [{"travel-sample": DOCS["airline_10"]}]
    assert ok(svc, "SELECT * FROM `travel-sample` AS t USE KEYS 'airline_10'") == [
        {"t": DOCS["airline_10"]}]
    assert ok(svc, "SELECT * FROM `travel-sample` t USE KEYS 'airline_10'") == [
        {"t": DOCS["airline_10"]}]
    assert ok(svc, "SELECT * FROM default:`travel-sample` USE KEYS 'airline_10'") == [
        {"travel-sample": DOCS["airline_10"]}]
    res = run(svc, "SELECT * FROM `travel-sample`")
    assert res.body["signature"] == {"*": "*"}
    assert len(res.rows) == len(DOCS)


def test_raw_value_element_and_alias_star(travel: Cluster) -> None:
    svc = travel.svc
    for kw in ("RAW", "VALUE", "ELEMENT"):
        assert ok(svc, "SELECT %s name FROM `travel-sample` USE KEYS 'airline_10'" % kw) == [
            "40-Mile Air"]
    assert ok(svc, "SELECT t.* FROM `travel-sample` t USE KEYS 'airline_10'") == [DOCS["airline_10"]]
    rows = ok(svc, "SELECT t.*, META(t).id AS docid FROM `travel-sample` t USE KEYS 'airline_10'")
    assert rows == [dict(DOCS["airline_10"], docid="airline_10")]
    assert ok(svc, "SELECT geo.* FROM `travel-sample` USE KEYS ['airport_1254', 'airline_10']") == [
        {"lat": 50.96, "lon": 1.95, "alt": 12}, {}]
    assert ok(svc, "SELECT RAW t FROM `travel-sample` t USE KEYS 'route_5'") == [DOCS["route_5"]]


def test_meta(travel: Cluster) -> None:
    svc = travel.svc
    rows = ok(svc, "SELECT META().id, META().cas, META(t).flags, META().expiration, META().type, "
                   "META().nothing FROM `travel-sample` t USE KEYS 'airline_10'")
    assert rows == [{"id": "airline_10", "cas": 1010, "flags": 0x2000000, "expiration": 0,
                     "type": "json"}]
    rows = ok(svc, "SELECT META() AS m, META(other) AS o FROM `travel-sample` USE KEYS 'route_5'")
    assert rows == [{"m": {"cas": 1007, "expiration": 0, "flags": 0x2000000, "id": "route_5",
                           "type": "json"}}]


def test_paths_indexes_and_names(travel: Cluster) -> None:
    svc = travel.svc
    rows = ok(svc, "SELECT name, geo.lat, runways[0], runways[-1], runways[5], geo['lon'] AS lon, "
                   "1+1, `travel-sample`.city, city AS c2 "
                   "FROM `travel-sample` USE KEYS 'airport_1254'")
    assert rows == [{"name": "Calais Dunkerque", "lat": 50.96, "$1": 1200, "$2": 800,
                     "lon": 1.95, "$4": 2, "city": "Calais", "c2": "Calais"}]
    assert ok(svc, "SELECT RAW schedule[1].flight FROM `travel-sample` USE KEYS 'route_5'") == [
        "AF547"]
    assert ok(svc, "SELECT `first-name`, `value` FROM `travel-sample` USE KEYS 'hotel_1'") == [
        {"first-name": "Ritz", "value": 5}]


def test_missing_fields_are_left_out_and_raw_missing_rows_dropped(travel: Cluster) -> None:
    svc = travel.svc
    rows = ok(svc, "SELECT name, iata FROM `travel-sample` "
                   "USE KEYS ['airline_10', 'route_5', 'hotel_1']")
    assert rows == [{"name": "40-Mile Air", "iata": "Q5"}, {}, {"name": None}]
    rows = ok(svc, "SELECT RAW iata FROM `travel-sample` USE KEYS ['airline_10', 'route_5', 'hotel_1']")
    assert rows == ["Q5"]


def test_alias_changes_name_resolution(travel: Cluster) -> None:
    svc = travel.svc
    # with alias t, `travel-sample`.name is a field called travel-sample of the doc
    assert ok(svc, "SELECT `travel-sample`.name FROM `travel-sample` t USE KEYS 'airline_10'") == [{}]
    assert ok(svc, "SELECT t.name FROM `travel-sample` t USE KEYS 'airline_10'") == [
        {"name": "40-Mile Air"}]


def test_use_keys(travel: Cluster) -> None:
    svc = travel.svc
    ok(svc, "DROP PRIMARY INDEX ON `travel-sample`")
    assert ok(svc, "SELECT RAW META().id FROM `travel-sample` USE KEYS 'route_5'") == ["route_5"]
    rows = ok(svc, "SELECT RAW META().id FROM `travel-sample` "
                   "USE PRIMARY KEYS ['route_5', 'nope', 'airline_10', 'route_5', 7]")
    assert rows == ["route_5", "airline_10", "route_5"]
    assert ok(svc, "SELECT RAW id FROM `travel-sample` USE KEYS $keys WHERE id > 100",
              **{"$keys": ["airline_10", "airline_137"]}) == [137]
    assert ok(svc, "SELECT RAW 1 FROM `travel-sample` USE KEYS 42") == []


def test_binary_documents(cluster: Cluster) -> None:
    cluster.bucket("b", {"bin": b"\x00\x01\x02", "j": None})
    svc = cluster.svc
    assert ok(svc, "SELECT * FROM b USE KEYS 'bin'") == [{"b": "<binary (3 b)>"}]
    assert ok(svc, "SELECT x, META().type FROM b USE KEYS 'bin'") == [{"type": "base64"}]
    # a JSON null document is a null, not a binary
    assert ok(svc, "SELECT RAW b FROM b USE KEYS 'j'") == [None]
    assert ok(svc, "SELECT RAW META().id FROM b WHERE b IS NULL") == ["j"]


def test_where_missing_and_null(cluster: Cluster) -> None:
    cluster.bucket("b", {"one": {"x": 1}, "null": {"x": None}, "none": {}, "str": {"x": "1"},
                         "zero": {"x": 0}})
    svc = cluster.svc

    def ids(where: str) -> List[str]:
        return sorted(ok(svc, "SELECT RAW META().id FROM b WHERE " + where))

    assert ids("x = 1") == ["one"]
    assert ids("x != 1") == ["str", "zero"]
    assert ids("NOT (x = 1)") == ["str", "zero"]
    assert ids("x IS NULL") == ["null"]
    assert ids("x IS MISSING") == ["none"]
    assert ids("x IS NOT MISSING") == ["null", "one", "str", "zero"]
    assert ids("x IS NOT VALUED") == ["none", "null"]
    assert ids("x IS VALUED") == ["one", "str", "zero"]
    assert ids("x") == ["one", "str"]  # truthy values, as the server's filter
    assert ids("x < 1") == ["zero"]
    assert ids("x > 0") == ["one", "str"]  # collation: strings after numbers
    assert ids("x = 1 OR x IS NULL") == ["null", "one"]
    assert ids("b.x IN [0, 1]") == ["one", "zero"]


def test_distinct(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"t": "x", "n": 1}, "b": {"t": "y", "n": 1.0}, "c": {"t": "x"},
                         "d": {"t": "x", "n": 2}})
    svc = cluster.svc
    assert ok(svc, "SELECT DISTINCT t FROM b ORDER BY t") == [{"t": "x"}, {"t": "y"}]
    assert ok(svc, "SELECT DISTINCT RAW n FROM b ORDER BY n") == [1, 2]
    assert ok(svc, "SELECT DISTINCT n FROM b ORDER BY n") == [{}, {"n": 1}, {"n": 2}]
    assert len(ok(svc, "SELECT ALL t FROM b")) == 4


# ---------------------------------------------------------------------------
# ORDER BY, LIMIT, OFFSET
# ---------------------------------------------------------------------------

COLLATION_ORDER = [
    ("k00", {}),
    ("k01", {"v": None}),
    ("k02", {"v": False}),
    ("k03", {"v": True}),
    ("k04", {"v": -1}),
    ("k05", {"v": 0}),
    ("k06", {"v": 2.5}),
    ("k07", {"v": 10}),
    ("k08", {"v": ""}),
    ("k09", {"v": "B"}),
    ("k10", {"v": "a"}),
    ("k11", {"v": "ab"}),
    ("k12", {"v": []}),
    ("k13", {"v": [1]}),
    ("k14", {"v": [1, 2]}),
    ("k15", {"v": [2]}),
    ("k16", {"v": {}}),
    ("k17", {"v": {"b": 0}}),
    ("k18", {"v": {"a": 1, "b": 0}}),
    ("k19", {"v": {"a": 2, "b": 0}}),
    ("k20", {"v": {"a": 1, "c": 0}}),
]


def test_order_by_follows_collation(cluster: Cluster) -> None:
    shuffled = COLLATION_ORDER[::2] + COLLATION_ORDER[1::2]
    cluster.bucket("b", dict(shuffled))
    svc = cluster.svc
    expected = [k for k, _ in COLLATION_ORDER]
    res = run(svc, "SELECT RAW META().id FROM b ORDER BY v")
    assert res.rows == expected
    assert res.body["metrics"]["sortCount"] == len(expected)
    assert ok(svc, "SELECT RAW META().id FROM b ORDER BY v DESC") == expected[::-1]
    assert ok(svc, "SELECT RAW META().id FROM b ORDER BY v ASC LIMIT 3 OFFSET 2") == expected[2:5]


def test_order_by_several_keys_alias_and_stability(cluster: Cluster) -> None:
    cluster.bucket("b", {"1": {"g": 1, "n": "c"}, "2": {"g": 2, "n": "a"}, "3": {"g": 1, "n": "a"},
                         "4": {"g": 2, "n": "b"}, "5": {"g": 1, "n": "c"}})
    svc = cluster.svc
    rows = ok(svc, "SELECT RAW META().id FROM b ORDER BY g DESC, n")
    assert rows == ["2", "4", "3", "1", "5"]
    rows = ok(svc, "SELECT n AS name, META().id AS id FROM b ORDER BY name DESC, id")
    assert [r["id"] for r in rows] == ["1", "5", "4", "2", "3"]
    assert ok(svc, "SELECT RAW META().id FROM b ORDER BY LOWER(n) LIMIT 1") == ["2"]


def test_limit_offset(cluster: Cluster) -> None:
    cluster.bucket("b", {"k%d" % i: {"i": i} for i in range(10)})
    svc = cluster.svc
    assert ok(svc, "SELECT RAW i FROM b LIMIT 3") == [0, 1, 2]
    assert ok(svc, "SELECT RAW i FROM b OFFSET 8") == [8, 9]
    assert ok(svc, "SELECT RAW i FROM b OFFSET 2 LIMIT 2") == [2, 3]
    assert ok(svc, "SELECT RAW i FROM b LIMIT 2 OFFSET 2") == [2, 3]
    assert ok(svc, "SELECT RAW i FROM b LIMIT 0") == []
    assert ok(svc, "SELECT RAW i FROM b OFFSET 20") == []
    assert ok(svc, "SELECT RAW i FROM b ORDER BY i DESC LIMIT $1 OFFSET $2", args=[2, 1]) == [8, 7]
    assert ok(svc, "SELECT RAW i FROM b ORDER BY i DESC OFFSET 9") == [0]
    res = fails(svc, "SELECT RAW i FROM b LIMIT -1", 5030, 400)
    assert res.msg == "Invalid LIMIT value -1."
    fails(svc, "SELECT RAW i FROM b OFFSET 'x'", 5030, 400)
    assert "sortCount" not in run(svc, "SELECT RAW i FROM b").body["metrics"]


def _ref_rank(v: Any) -> Tuple:
    """An independent statement of N1QL collation for the property test."""
    if v is MISSING:
        return (0,)
    if v is None:
        return (1,)
    if isinstance(v, bool):
        return (2, int(v))
    if isinstance(v, (int, float)):
        return (3, v)
    if isinstance(v, str):
        return (4, v)
    if isinstance(v, list):
        return (5, [_ref_rank(x) for x in v])
    keys = sorted(v)
    return (6, len(v), keys, [_ref_rank(v[k]) for k in keys])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False, width=16)
    | st.text("ab", max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("xyz", max_size=2), inner,
                                                                max_size=3),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.just(MISSING), json_values), max_size=12), st.booleans())
def test_order_by_matches_reference_collation(values: List[Any], desc: bool) -> None:
    docs = {"k%02d" % i: ({} if v is MISSING else {"v": v}) for i, v in enumerate(values)}
    c = Cluster()
    c.bucket("b", docs)
    res = run(c.svc, "SELECT META().id, v FROM b ORDER BY v %s" % ("DESC" if desc else "ASC"))
    got = [_ref_rank(r.get("v", MISSING)) for r in res.rows]
    assert got == sorted(got, reverse=desc)
    assert len(res.rows) == len(values)
    for r in res.rows:
        assert r.get("v", MISSING) == docs[r["id"]].get("v", MISSING)


# ---------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------


def test_aggregates_without_group_by(cluster: Cluster) -> None:
    cluster.bucket("b", {"1": {"n": 1, "s": "b"}, "2": {"n": 2.5, "s": "a"}, "3": {"n": None},
                         "4": {"s": 3}, "5": {"n": 1}})
    cluster.bucket("empty", {})
    svc = cluster.svc
    assert ok(svc, "SELECT COUNT(*) AS c FROM b") == [{"c": 5}]
    assert ok(svc, "SELECT COUNT(*) FROM empty") == [{"$1": 0}]
    assert ok(svc, "SELECT RAW COUNT(*) FROM b WHERE n > 1") == [1]
    rows = ok(svc, "SELECT COUNT(n) AS cn, COUNT(DISTINCT n) AS dn, SUM(n) AS sm, AVG(n) AS av, "
                   "MIN(s) AS mn, MAX(s) AS mx, COUNT(*) + 1 AS plus FROM b")
    assert rows == [{"cn": 3, "dn": 2, "sm": 4.5, "av": 1.5, "mn": 3, "mx": "b", "plus": 6}]
    assert ok(svc, "SELECT SUM(n) AS s, AVG(n) AS a, MIN(n) AS m FROM empty") == [
        {"s": None, "a": None, "m": None}]
    assert ok(svc, "SELECT COUNT(*) AS c") == [{"c": 1}]
    assert ok(svc, "SELECT COUNT(*) AS c FROM b LIMIT 0") == []
    res = fails(svc, "SELECT n, COUNT(*) FROM b", 4210, 400)
    assert res.msg == "Expression `n` must depend only on group keys or aggregates."
    fails(svc, "SELECT *, COUNT(*) FROM b", 4210, 400)
    fails(svc, "SELECT META().id, COUNT(*) FROM b", 4210, 400)
    res = fails(svc, "SELECT RAW n FROM b WHERE COUNT(*) > 1", 3000, 400)
    assert res.msg == "Aggregates not allowed in WHERE."
    fails(svc, "SELECT COUNT(SUM(n)) FROM b", 3000, 400)


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


def test_parameters(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"x": 1}, "b": {"x": 2}})
    svc = cluster.svc
    assert ok(svc, "SELECT $1 AS x, $2 AS y", args=[1, {"k": [1]}]) == [{"x": 1, "y": {"k": [1]}}]
    assert ok(svc, "SELECT RAW $2.k[0]", args=[None, {"k": [7]}]) == [7]
    assert ok(svc, "SELECT ? AS a, ? AS b", args=["p", "q"]) == [{"a": "p", "b": "q"}]
    assert ok(svc, "SELECT RAW META().id FROM b WHERE x = $val", **{"$val": 2}) == ["b"]
    assert ok(svc, "SELECT RAW META().id FROM b WHERE x = $1 OR x = $x",
              args=[1], **{"$x": 2}) == ["a", "b"]
    res = fails(svc, "SELECT $2 AS x", 5010, 400, args=[1])
    assert res.msg == "No value for positional parameter $2."
    res = fails(svc, "SELECT RAW x FROM b WHERE x = $nope", 5010, 400)
    assert res.msg == "No value for named parameter $nope."
    # checked even when no row is produced
    fails(svc, "SELECT $1 FROM b WHERE FALSE", 5010, 400)
    res = fails(svc, "SELECT 1", 1050, 400, args={"not": "a list"})
    assert res.msg.startswith("Invalid value for args")


# ---------------------------------------------------------------------------
# Prepared statements
# ---------------------------------------------------------------------------


def test_prepare_and_execute(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"x": 1}, "b": {"x": 2}})
    svc = cluster.svc
    res = run(svc, "PREPARE p1 FROM SELECT META().id FROM b WHERE x = $1;")
    assert res.status == 200 and res.body["signature"] == {"json": "json"}
    [plan] = res.rows
    assert set(plan) == {"name", "encoded_plan", "operator", "signature", "text"}
    assert plan["name"] == "p1"
    assert plan["text"] == "PREPARE p1 FROM SELECT META().id FROM b WHERE x = $1"
    assert plan["signature"] == {"id": "json"}
    assert plan["operator"]["#operator"] == "Sequence"
    assert plan["operator"]["~children"][0]["#operator"] == "PrimaryScan3"
    assert isinstance(plan["encoded_plan"], str)

    res = run(svc, "EXECUTE p1", args=[2])
    assert res.rows == [{"id": "b"}] and res.body["signature"] == {"id": "json"}
    assert ok(svc, prepared="p1", args=[1]) == [{"id": "a"}]
    assert ok(svc, prepared="p1", encoded_plan=plan["encoded_plan"], args=[1]) == [{"id": "a"}]
    assert ok(svc, prepared=plan, args=[2]) == [{"id": "b"}]  # the whole PREPARE result
    assert ok(svc, "EXECUTE `p1` USING [2]") == [{"id": "b"}]
    assert ok(svc, "EXECUTE 'p1'", args=[1]) == [{"id": "a"}]
    # `prepared` wins over `statement`
    assert ok(svc, "SELECT 1", prepared="p1", args=[1]) == [{"id": "a"}]

    ok(svc, "PREPARE p2 AS SELECT RAW x FROM b WHERE x = $v")
    assert ok(svc, "EXECUTE p2 USING {\"v\": 2}") == [2]
    assert ok(svc, prepared="p2", **{"$v": 1}) == [1]
    ok(svc, 'PREPARE "p 3" FROM SELECT RAW 3')
    assert ok(svc, prepared="p 3") == [3]
    # unbound parameters are an execution error, not a PREPARE error
    fails(svc, None, 5010, 400, prepared="p2")


def test_prepare_errors(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"x": 1}})
    cluster.bucket("noidx", {"a": {}}, primary=False)
    svc = cluster.svc
    plan = ok(svc, "PREPARE p1 FROM SELECT RAW x FROM b")[0]
    other = ok(svc, "PREPARE p2 FROM SELECT RAW 2")[0]
    res = fails(svc, "EXECUTE nope", 4040, 404)
    assert res.msg == "No such prepared statement: nope"
    fails(svc, None, 4040, 404, prepared="nope")
    res = fails(svc, None, 4080, 400, prepared="p1", encoded_plan=other["encoded_plan"])
    assert res.msg == "Encoded plan parameter does not match encoded plan of p1"
    res = fails(svc, None, 4070, 400, prepared="zzz", encoded_plan="not base64!")
    assert res.msg == "Unable to decode prepared statement"
    fails(svc, None, 4080, 400, prepared="zzz", encoded_plan=plan["encoded_plan"])
    res = fails(svc, "PREPARE p1 FROM SELECT RAW 99", 4060, 400)
    assert res.msg == "Unable to add name: duplicate name: p1"
    ok(svc, "PREPARE p1 FROM SELECT RAW x FROM b")  # same text: fine
    fails(svc, "PREPARE SELECT * FROM noidx", 4000, 404)
    fails(svc, "PREPARE SELECT * FROM nokeyspace", 12003, 404)
    fails(svc, "PREPARE FOO(1)", 3000, 400)
    # the plan is checked again at execution
    ok(svc, "DROP PRIMARY INDEX ON b")
    fails(svc, "EXECUTE p1", 4000, 404)


def test_encoded_plan_restores_unknown_name() -> None:
    c1 = Cluster()
    c1.bucket("b", {"a": {"x": 1}})
    plan = ok(c1.svc, "PREPARE p FROM SELECT RAW x FROM b WHERE x = $1")[0]
    c2 = Cluster()  # another query node that never saw the PREPARE
    c2.bucket("b", {"a": {"x": 1}})
    fails(c2.svc, None, 4040, 404, prepared="p")
    assert ok(c2.svc, prepared="p", encoded_plan=plan["encoded_plan"], args=[1]) == [1]
    assert ok(c2.svc, prepared="p", args=[1]) == [1]


def test_generated_prepared_names() -> None:
    legacy = Cluster()
    n1 = ok(legacy.svc, "PREPARE SELECT RAW 1")[0]["name"]
    n2 = ok(legacy.svc, "PREPARE SELECT RAW 1")[0]["name"]
    assert n1 != n2 and uuid.UUID(n1) and uuid.UUID(n2)
    assert ok(legacy.svc, prepared=n1) == [1]

    enhanced = Cluster(cluster_capabilities={"n1ql": ["enhancedPreparedStatements"]})
    e1 = ok(enhanced.svc, "PREPARE SELECT RAW 1")[0]["name"]
    e2 = ok(enhanced.svc, "prepare   SELECT RAW 1")[0]["name"]
    e3 = ok(enhanced.svc, "PREPARE SELECT RAW 2")[0]["name"]
    assert e1 == e2 != e3 and uuid.UUID(e1)
    assert ok(enhanced.svc, prepared=e3) == [2]
    assert ok(enhanced.svc, "PREPARE named FROM SELECT RAW 4")[0]["name"] == "named"


def test_prepared_ddl_respects_readonly(cluster: Cluster) -> None:
    cluster.bucket("b", {}, primary=False)
    svc = cluster.svc
    plan = ok(svc, "PREPARE mk FROM CREATE PRIMARY INDEX ON b")[0]
    assert plan["signature"] is None
    fails(svc, "EXECUTE mk", 1000, 403, readonly=True)
    res = run(svc, "EXECUTE mk")
    assert res.status == 200 and res.body["signature"] is None
    assert [r["name"] for r in svc.indexes()] == ["#primary"]


def test_explain(travel: Cluster) -> None:
    rows = ok(travel.svc, "EXPLAIN SELECT name FROM `travel-sample` WHERE id = $1 ORDER BY name")
    plan = rows[0]["plan"]
    ops = [c["#operator"] for c in plan["~children"]]
    assert ops == ["PrimaryScan3", "Fetch", "Filter", "InitialProject", "Order", "FinalProject"]
    assert plan["~children"][2]["condition"] == "(`id` = $1)"
    assert rows[0]["text"] == "SELECT name FROM `travel-sample` WHERE id = $1 ORDER BY name"


# ---------------------------------------------------------------------------
# Index DDL and system:indexes
# ---------------------------------------------------------------------------


def test_index_lifecycle_and_system_indexes(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"type": "x", "name": "n", "age": 20}}, primary=False)
    svc = cluster.svc
    assert ok(svc, "SELECT * FROM system:indexes") == []
    res = run(svc, "CREATE PRIMARY INDEX ON `b` USING GSI")
    assert res.status == 200 and res.rows == [] and res.body["signature"] is None
    [row] = ok(svc, "SELECT * FROM system:indexes")
    idx = row["indexes"]
    assert set(idx) == {"id", "name", "keyspace_id", "namespace_id", "is_primary", "index_key",
                        "state", "using"}
    assert idx["name"] == "#primary" and idx["is_primary"] is True and idx["index_key"] == []
    assert (idx["keyspace_id"], idx["namespace_id"], idx["state"], idx["using"]) == (
        "b", "default", "online", "gsi")
    assert isinstance(idx["id"], str) and idx["id"]

    ok(svc, "CREATE INDEX ix_type ON b(type, name DESC) WHERE age > 10 USING GSI")
    ok(svc, "CREATE INDEX `ix low` ON default:b(LOWER(name), meta().id) WITH {\"num_replica\": 0}")
    ok(svc, "CREATE PRIMARY INDEX second_primary ON b")
    rows = ok(svc, "SELECT RAW idx FROM system:indexes idx WHERE name = 'ix_type'")
    assert rows == [{"condition": "(`age` > 10)", "id": rows[0]["id"],
                     "index_key": ["`type`", "`name` DESC"], "keyspace_id": "b", "name": "ix_type",
                     "namespace_id": "default", "state": "online", "using": "gsi"}]
    rows = ok(svc, "SELECT i.* FROM system:indexes AS i WHERE keyspace_id = 'b' ORDER BY name")
    assert [r["name"] for r in rows] == ["#primary", "ix low", "ix_type", "second_primary"]
    assert rows[1]["index_key"] == ["lower(`name`)", "meta().`id`"]
    assert "is_primary" not in rows[1]
    assert ok(svc, "SELECT RAW COUNT(*) FROM system:indexes WHERE is_primary") == [2]
    assert [r["name"] for r in svc.indexes()] == ["#primary", "ix low", "ix_type", "second_primary"]

    res = fails(svc, "CREATE PRIMARY INDEX ON b", 4300, 409, status="errors")
    assert res.msg == "The index #primary already exists."
    assert res.rows == []
    fails(svc, "CREATE INDEX ix_type ON b(other)", 4300, 409, status="errors")

    ok(svc, "DROP INDEX b.ix_type")
    ok(svc, "DROP INDEX `b`.`ix low` USING GSI")
    ok(svc, "DROP INDEX second_primary ON b")
    ok(svc, "DROP PRIMARY INDEX ON b")
    assert svc.indexes() == []
    res = fails(svc, "DROP PRIMARY INDEX ON b", 12016, 404, status="errors")
    assert res.msg == "Index Not Found - cause: GSI index #primary not found."
    fails(svc, "DROP INDEX b.nope", 12016, 404, status="errors")
    res = fails(svc, "CREATE PRIMARY INDEX ON nobucket", 12003, 404)
    assert res.msg == "Keyspace not found in CB datastore: default:nobucket"
    fails(svc, "DROP INDEX nobucket.ix", 12003, 404)
    fails(svc, "BUILD INDEX ON nobucket(ix)", 12003, 404)
    fails(svc, "CREATE PRIMARY INDEX ON b WITH {\"defer_build\": \"yes\"}", 5000, 500,
          status="errors")
    fails(svc, "CREATE PRIMARY INDEX ON b WITH [1]", 5000, 500, status="errors")


def test_deferred_index_build(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster(build_delay=30)
    cluster.bucket("b", {"a": {"type": "x"}}, primary=False)
    svc = cluster.svc
    ok(svc, "CREATE PRIMARY INDEX ON b WITH {'defer_build': true}")
    ok(svc, "CREATE INDEX ix ON b(type) USING GSI WITH {\"defer_build\":true}")
    states = ok(svc, "SELECT name, state FROM system:indexes ORDER BY name")
    assert states == [{"name": "#primary", "state": "deferred"}, {"name": "ix", "state": "deferred"}]
    fails(svc, "SELECT * FROM b", 4000, 404)
    fails(svc, "SELECT * FROM b WHERE type = 'x'", 4000, 404)
    fails(svc, "BUILD INDEX ON b(`#primary`, nope)", 12016, 404, status="errors")
    ok(svc, "BUILD INDEX ON b(`#primary`, 'ix') USING GSI")
    assert {r["state"] for r in svc.indexes()} == {"building"}
    fails(svc, "SELECT * FROM b", 4000, 404)
    ok(svc, "BUILD INDEX ON b(ix)")  # building again is harmless
    later = time.monotonic() + 31
    monkeypatch.setattr(n1ql, "_index_clock", lambda: later)
    assert ok(svc, "SELECT RAW type FROM b") == ["x"]
    assert ok(svc, "SELECT RAW state FROM system:indexes") == ["online", "online"]


def test_build_finishes_after_the_default_delay(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {}}, primary=False)
    ok(cluster.svc, "CREATE PRIMARY INDEX ON b WITH {\"defer_build\": true}")
    ok(cluster.svc, "BUILD INDEX ON b(`#primary`)")
    time.sleep(0.25)
    assert [r["state"] for r in cluster.svc.indexes()] == ["online"]
    assert ok(cluster.svc, "SELECT RAW META().id FROM b") == ["a"]


def test_build_without_delay_is_immediate() -> None:
    c = Cluster(build_delay=0)
    c.bucket("b", {"a": {}}, primary=False)
    ok(c.svc, "CREATE PRIMARY INDEX ON b WITH {\"defer_build\": true}")
    ok(c.svc, "BUILD INDEX ON b(`#primary`)")
    assert [r["state"] for r in c.svc.indexes()] == ["online"]


def test_indexes_of_a_removed_bucket_are_forgotten(cluster: Cluster) -> None:
    cluster.bucket("b", {})
    assert len(cluster.svc.indexes()) == 1
    del cluster.buckets["b"]
    assert cluster.svc.indexes() == []
    cluster.bucket("b", {}, primary=False)
    fails(cluster.svc, "SELECT * FROM b", 4000, 404)
    cluster.bucket("c", {})
    cluster.svc.forget_keyspace("c")
    assert cluster.svc.indexes() == []


def test_no_index_error(cluster: Cluster) -> None:
    cluster.bucket("beer-sample", {"a": {"x": 1}}, primary=False)
    res = fails(cluster.svc, "SELECT * FROM `beer-sample`", 4000, 404)
    assert res.msg == (
        "No index available on keyspace beer-sample that matches your query. Use CREATE PRIMARY "
        "INDEX ON beer-sample to create a primary index, or check that your expected index is "
        "online.")
    assert "results" not in res.body
    # USE KEYS and system keyspaces need none
    assert ok(cluster.svc, "SELECT RAW x FROM `beer-sample` USE KEYS 'a'") == [1]


@pytest.mark.parametrize("where, usable", [
    ("type = 'airline'", True),
    ("b.type = 'airline'", True),
    ("'airline' = type", True),
    ("type != 'x'", True),
    ("type LIKE 'air%'", True),
    ("type IN ['airline', 'route']", True),
    ("type BETWEEN 'a' AND 'b'", True),
    ("type IS NOT NULL", True),
    ("type IS VALUED", True),
    ("type IS NOT MISSING", True),
    ("type = 'airline' AND name = 'x'", True),
    ("type = 'airline' OR type = 'route'", True),
    ("type = 'airline' OR name = 'x'", False),
    ("type IS MISSING", False),
    ("type IS NOT VALUED", False),
    ("name = 'x'", False),
    ("LOWER(type) = 'airline'", False),
    ("NOT (type = 'x')", False),
    (None, False),
])
def test_secondary_index_selection(cluster: Cluster, where: Optional[str], usable: bool) -> None:
    cluster.bucket("b", {"1": {"type": "airline", "name": "x"}, "2": {"type": "route"}, "3": {}},
                   primary=False)
    svc = cluster.svc
    ok(svc, "CREATE INDEX ix_type ON b(type, name)")
    stmt = "SELECT RAW META().id FROM b" + ("" if where is None else " WHERE " + where)
    res = run(svc, stmt)
    if usable:
        assert res.status == 200, res.raw
        # the index gates the query only: rows equal a full scan's
        ok(svc, "CREATE PRIMARY INDEX ON b")
        assert res.rows == ok(svc, stmt)
    else:
        assert (res.status, res.code) == (404, 4000)


def test_partial_and_functional_indexes(cluster: Cluster) -> None:
    cluster.bucket("b", {"1": {"type": "airline", "name": "X"}, "2": {"type": "hotel", "name": "x"}},
                   primary=False)
    svc = cluster.svc
    ok(svc, "CREATE INDEX ix_partial ON b(name) WHERE type = 'airline'")
    fails(svc, "SELECT RAW META().id FROM b WHERE name = 'X'", 4000, 404)
    assert ok(svc, "SELECT RAW META().id FROM b WHERE type = 'airline' AND name = 'X'") == ["1"]
    assert ok(svc, "SELECT RAW META().id FROM b WHERE name = 'X' AND b.type = \"airline\"") == ["1"]
    ok(svc, "CREATE INDEX ix_lower ON b(LOWER(name))")
    assert ok(svc, "SELECT RAW META().id FROM b WHERE LOWER(name) = 'x' ORDER BY META().id") == [
        "1", "2"]
    fails(svc, "SELECT RAW META().id FROM b WHERE name = 'x'", 4000, 404)
    ok(svc, "CREATE INDEX ix_deferred ON b(name) WITH {'defer_build': true}")
    fails(svc, "SELECT RAW META().id FROM b WHERE name = 'x'", 4000, 404)


def test_ddl_readonly(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {}})
    svc = cluster.svc
    res = fails(svc, "CREATE INDEX ix ON b(x)", 1000, 403, readonly=True)
    assert res.msg == "The server or request is read-only and cannot accept this write statement."
    fails(svc, "DROP PRIMARY INDEX ON b", 1000, 403, readonly="true")
    fails(svc, "BUILD INDEX ON b(`#primary`)", 1000, 403, readonly=True)
    assert ok(svc, "SELECT RAW 1 FROM b", readonly=True) == [1]
    assert ok(svc, "PREPARE SELECT RAW 1", readonly=True)
    assert len(svc.indexes()) == 1


# ---------------------------------------------------------------------------
# Request fields
# ---------------------------------------------------------------------------


def test_request_id_and_client_context_id(svc: QueryService) -> None:
    r1 = run(svc, "SELECT 1", client_context_id="ctx-42")
    r2 = run(svc, "SELECT 1")
    assert r1.body["clientContextID"] == "ctx-42"
    assert "clientContextID" not in r2.body
    assert uuid.UUID(r1.body["requestID"]).version == 4
    assert r1.body["requestID"] != r2.body["requestID"]
    assert run(svc, "SELECT 1", client_context_id=123).body["clientContextID"] == "123"
    assert fails(svc, "SELEC", 3000, 400, client_context_id="e").body["clientContextID"] == "e"
    keys = list(r1.body)
    assert keys == ["requestID", "clientContextID", "signature", "results", "status", "metrics"]


@pytest.mark.parametrize("fields, code, http", [
    ({"bogus": 1}, 1065, 400),
    ({"scan_consistency": "bogus"}, 1050, 400),
    ({"scan_consistency": 1}, 1050, 400),
    ({"scan_consistency": "at_plus"}, 1050, 400),
    ({"scan_vectors": "x"}, 1050, 400),
    ({"timeout": "75"}, 1050, 400),
    ({"timeout": "abc"}, 1050, 400),
    ({"timeout": 75}, 1050, 400),
    ({"scan_wait": "1x"}, 1050, 400),
    ({"readonly": "maybe"}, 1050, 400),
    ({"pretty": "yes"}, 1050, 400),
    ({"metrics": 3}, 1050, 400),
    ({"profile": "everything"}, 1050, 400),
    ({"max_parallelism": "four"}, 1050, 400),
    ({"pipeline_batch": True}, 1050, 400),
    ({"creds": "user:pass"}, 1050, 400),
    ({"encoded_plan": 5}, 1050, 400),
    ({"statement": 5}, 1050, 400),
    ({"prepared": 5}, 1050, 400),
])
def test_bad_request_fields(svc: QueryService, fields: Dict[str, Any], code: int, http: int) -> None:
    request = {"statement": "SELECT 1"}
    request.update(fields)
    status, chunks = svc.execute(request)
    res = Result(status, list(chunks))
    assert (res.status, res.code, res.body["status"]) == (http, code, "fatal")


def test_bad_request_messages(svc: QueryService) -> None:
    assert fails(svc, "SELECT 1", 1050, 400, scan_consistency="bogus").msg == (
        "Invalid value for scan_consistency: bogus")
    assert fails(svc, "SELECT 1", 1065, 400, foo=1).msg == "Unrecognized parameter in request: foo"
    assert fails(svc, None, 1060, 400).msg == "No statement or prepared value"
    status, chunks = svc.execute("not a dict")  # type: ignore[arg-type]
    assert (status, Result(status, list(chunks)).code) == (400, 1050)


def test_accepted_request_fields(cluster: Cluster) -> None:
    ks = cluster.bucket("b", {"a": {"x": 1}})
    svc = cluster.svc
    for consistency in ("not_bounded", "request_plus", "statement_plus", "REQUEST_PLUS"):
        assert ok(svc, "SELECT RAW x FROM b", scan_consistency=consistency) == [1]
    assert ok(svc, "SELECT RAW x FROM b", scan_consistency="at_plus",
              scan_vectors={"b": {"0": [1, "1234"]}}) == [1]
    # the engine reads live data: a write just before is always seen
    ks.upsert("new", {"x": 2})
    assert ok(svc, "SELECT RAW x FROM b ORDER BY x", scan_consistency="request_plus") == [1, 2]
    # Every unit is accepted; each value is long enough for any machine (a
    # real 100us timeout expires on a loaded one: that is test_timeout_*'s job).
    for timeout in ("75s", "15000ms", "1m30s", "0", "2.5h", "100000000us", "100000000\u00b5s",
                    "100000000000ns"):
        assert ok(svc, "SELECT RAW 1", timeout=timeout) == [1]
    assert ok(svc, "SELECT RAW 1", max_parallelism="4", scan_cap=512, pipeline_batch="16",
              pipeline_cap=512, scan_wait="2s", readonly=False, pretty=False,
              creds=[{"user": "local:b", "pass": "p"}], query_context="default:b",
              auto_execute=False, use_fts=False, namespace="default") == [1]


def test_timeout_while_streaming(cluster: Cluster) -> None:
    ks = cluster.bucket("b", {"k%d" % i: {"i": i} for i in range(2000)})
    res = run(cluster.svc, "SELECT * FROM b", timeout="1ns")
    assert res.status == 200
    assert res.body["status"] == "timeout"
    assert res.errors == [{"code": 1080, "msg": "Timeout 1ns exceeded"}]
    assert res.rows == [] and ks.scanned == 0
    assert res.body["metrics"]["errorCount"] == 1
    # a generous timeout does not fire
    assert len(ok(cluster.svc, "SELECT * FROM b", timeout="60s")) == 2000


def test_failure_while_streaming(cluster: Cluster) -> None:
    ks = cluster.bucket("b", {"k%d" % i: {"i": i} for i in range(1000)})
    ks.fail_after = 600
    res = run(cluster.svc, "SELECT RAW i FROM b")
    assert res.status == 200 and res.body["status"] == "errors"
    assert res.code == 5000 and "disk on fire" in res.msg
    assert res.rows == list(range(600))
    assert res.body["metrics"]["resultCount"] == 600


def test_failing_keyspace_provider_is_internal_error() -> None:
    def broken() -> Dict[str, Any]:
        raise RuntimeError("cluster map unavailable")

    res = fails(QueryService(broken), "SELECT 1", 5000, 500)
    assert "cluster map unavailable" in res.msg


@pytest.mark.parametrize("stmt, code, msg", [
    ("SELECT * FROM foo:b", 12002, "Namespace not found in CB datastore: foo"),
    ("SELECT * FROM system:keyspaces", 12003, "Keyspace not found in CB datastore: system:keyspaces"),
    ("SELECT * FROM nobucket", 12003, "Keyspace not found in CB datastore: default:nobucket"),
])
def test_keyspace_errors(svc: QueryService, stmt: str, code: int, msg: str) -> None:
    assert fails(svc, stmt, code, 404).msg == msg


# ---------------------------------------------------------------------------
# Response shape, metrics, profile
# ---------------------------------------------------------------------------


def test_metrics(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"x": "\u00e9"}, "b": {"x": 2}})
    res = run(cluster.svc, "SELECT x FROM b")
    m = res.body["metrics"]
    assert list(m) == ["elapsedTime", "executionTime", "resultCount", "resultSize",
                       "mutationCount", "errorCount", "warningCount"]
    assert m["resultCount"] == 2 and m["mutationCount"] == 0
    assert m["errorCount"] == 0 and m["warningCount"] == 0
    assert m["resultSize"] == sum(len(json.dumps(r, ensure_ascii=False, separators=(",", ":"))
                                      .encode("utf-8")) for r in res.rows)
    assert parse_go_duration(m["elapsedTime"]) >= parse_go_duration(m["executionTime"]) > 0
    assert "warnings" not in res.body and "errors" not in res.body and "profile" not in res.body
    assert "metrics" not in run(cluster.svc, "SELECT x FROM b", metrics=False).body
    assert "metrics" not in run(cluster.svc, "SELEC", metrics=False).body
    assert "signature" not in run(cluster.svc, "SELECT x FROM b", signature=False).body
    assert run(cluster.svc, "SELECT x FROM b ORDER BY x").body["metrics"]["sortCount"] == 2


def test_pretty_output(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {"x": {"y": [1, 2]}}})
    res = run(cluster.svc, "SELECT x FROM b", pretty=True)
    assert res.rows == [{"x": {"y": [1, 2]}}]
    assert b'\n    "status": "success"' in res.raw
    assert b'\n            "x": {' in res.raw
    compact = run(cluster.svc, "SELECT x FROM b")
    assert b'{"x":{"y":[1,2]}}' in compact.raw


def test_profile(cluster: Cluster) -> None:
    cluster.bucket("b", {"a": {}, "b": {}})
    prof = run(cluster.svc, "SELECT * FROM b", profile="phases").body["profile"]
    assert set(prof) == {"phaseTimes", "phaseCounts", "phaseOperators"}
    assert prof["phaseCounts"] == {"primaryScan": 2, "fetch": 2}
    assert prof["phaseOperators"] == {"primaryScan": 1, "fetch": 1}
    prof = run(cluster.svc, "SELECT * FROM b", profile="timings").body["profile"]
    assert prof["executionTimings"]["#operator"] == "Sequence"
    assert prof["executionTimings"]["#stats"]["#itemsOut"] == 2
    assert "profile" not in run(cluster.svc, "SELECT * FROM b", profile="off").body


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (850, "850ns"), (1000, "1\u00b5s"), (1500, "1.5\u00b5s"), (3200000, "3.2ms"),
    (12345678, "12.345678ms"), (1500000000, "1.5s"), (62500000000, "1m2.5s"),
    (3600000000000, "1h0m0s"), (3723000000001, "1h2m3.000000001s"), (-1500, "-1.5\u00b5s"),
])
def test_format_go_duration(ns: int, text: str) -> None:
    assert format_go_duration(ns) == text
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text, ns", [
    ("75s", 75 * 10 ** 9), ("1500ms", 1500 * 10 ** 6), ("1h2m3.5s", 3723500000000), ("0", 0),
    ("-1s", -10 ** 9), ("+2m", 120 * 10 ** 9), ("1us", 1000), ("1\u03bcs", 1000), (".5s", 500000000),
    ("1.5h", 5400 * 10 ** 9), ("10ns", 10),
])
def test_parse_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("text", ["", "75", "s", "1x", "1s2", "--1s", ".s", "1 s", None, 5])
def test_parse_go_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


# ---------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------


def test_large_select_streams_in_bounded_lazy_chunks(cluster: Cluster) -> None:
    n = 100_000
    ks = cluster.bucket("big", {"doc%06d" % i: {"i": i, "name": "user %d" % i, "tags": ["a", "b"]}
                                for i in range(n)})
    status, chunks = cluster.svc.execute({"statement": "SELECT * FROM big"})
    assert status == 200
    assert ks.scanned == 0  # nothing read before the body is consumed
    first = next(chunks)
    assert b'"results": [' in first and ks.scanned == 0
    second = next(chunks)
    assert 0 < ks.scanned <= 1000  # read only as far as the first batch
    received = [first, second]
    sizes = []
    for chunk in chunks:
        received.append(chunk)
        sizes.append(len(chunk))
        assert ks.scanned < n or len(received) > 300
    assert len(received) > 100
    assert max(sizes) <= 128 * 1024
    body = json.loads(b"".join(received))
    assert body["status"] == "success"
    assert body["metrics"]["resultCount"] == n == len(body["results"])
    assert body["results"][12345] == {"big": {"i": 12345, "name": "user 12345", "tags": ["a", "b"]}}


def test_limit_stops_the_scan_early(cluster: Cluster) -> None:
    ks = cluster.bucket("b", {"k%05d" % i: {"i": i} for i in range(20000)})
    assert ok(cluster.svc, "SELECT RAW i FROM b WHERE i % 2 = 1 LIMIT 3") == [1, 3, 5]
    assert ks.scanned <= 10
    ks.scanned = 0
    assert ok(cluster.svc, "SELECT RAW i FROM b ORDER BY i DESC LIMIT 2") == [19999, 19998]
    assert ks.scanned == 20000


def test_abandoned_stream_can_be_closed(cluster: Cluster) -> None:
    ks = cluster.bucket("b", {"k%05d" % i: {"i": i} for i in range(5000)})
    status, chunks = cluster.svc.execute({"statement": "SELECT * FROM b"})
    next(chunks)
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    assert ks.scanned < 5000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=30),
       st.sampled_from([
           "SELECT * FROM b", "SELECT RAW b FROM b ORDER BY b DESC",
           "SELECT META().id, b.* FROM b", "SELECT DISTINCT RAW TOSTRING(b) FROM b",
           "SELECT COUNT(*) AS n, MAX(b) AS m FROM b", "SELECT * FROM b WHERE b.x IS NOT MISSING",
       ]),
       st.booleans())
def test_chunks_always_concatenate_to_json(docs: Dict[str, Any], stmt: str, pretty: bool) -> None:
    c = Cluster()
    c.bucket("b", docs)
    status, chunks = c.svc.execute({"statement": stmt, "pretty": pretty})
    parts = list(chunks)
    assert status == 200 and all(isinstance(p, bytes) for p in parts)
    body = json.loads(b"".join(parts))
    assert body["status"] == "success"
    if stmt == "SELECT * FROM b":
        assert sorted(json.dumps(r["b"], sort_keys=True) for r in body["results"]) == sorted(
            json.dumps(v, sort_keys=True) for v in docs.values())

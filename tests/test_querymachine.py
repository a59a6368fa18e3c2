"""The N1QL request machine (couchbase_core._querymachine), driven by
scripted events: no socket, no loop, no bucket.

Each test plays the part of a driver: it takes the machine's actions
(``SendRequest``, ``Finished``, ``Failed``) and answers with the rows and the
end of the response the test wants the service to have sent.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

from couchbase_core._engine.prepared import MAX_PREPARED, PreparedCache
from couchbase_core._querymachine import (
    EXECUTING,
    FAILED,
    HTTP_GRACE,
    PREPARING,
    QUERY_PATH,
    REEXECUTING,
    REPREPARING,
    STALE,
    TRANSITIONS,
    Failed,
    Finished,
    QueryMachine,
    QueryOptions,
    SendRequest,
    is_stale_plan,
    query_error,
)
from couchbase_core.exceptions import RC, HTTPError, NetworkError, TimeoutError
from couchbase_core.n1ql import N1QLError, N1QLQuery

STATEMENT = "SELECT RAW n FROM `default` WHERE n > $1"
OPTIONS = QueryOptions(default_timeout=75.0, bucket="default", username="user", password="pw")
SUCCESS = {"status": "success", "metrics": {"resultCount": 1}}


def prepared_query(*args: Any) -> N1QLQuery:
    q = N1QLQuery(STATEMENT, *args)
    q.adhoc = False
    return q


def body_of(action: Any) -> Dict[str, Any]:
    assert isinstance(action, SendRequest), action
    return json.loads(action.body)


def errors_meta(code: int, msg: str = "something") -> Dict[str, Any]:
    return {"status": "errors", "errors": [{"code": code, "msg": msg}]}


def answer_prepare(machine: QueryMachine, name: str = "plan-1", plan: str = "ENC") -> Any:
    """The service answers a PREPARE with one plan row."""
    assert machine.feed_rows([{"name": name, "encoded_plan": plan, "operator": {}}]) == []
    return machine.end(SUCCESS, 200, None)


def play(machine: QueryMachine, responses: List[Tuple[List[Any], Dict[str, Any], int, Optional[tuple]]]
         ) -> Tuple[Any, List[Dict[str, Any]], List[Any]]:
    """Drive ``machine`` through scripted responses (rows, meta, status,
    error), one per request it sends: (final action, bodies sent, rows the
    caller got)."""
    action = machine.start()
    sent: List[Dict[str, Any]] = []
    delivered: List[Any] = []
    script = list(responses)
    while isinstance(action, SendRequest):
        sent.append(body_of(action))
        rows, meta, status, error = script.pop(0)
        delivered.extend(machine.feed_rows(rows))
        action = machine.end(meta, status, error)
    assert script == [], "the machine stopped before the script ended"
    return action, sent, delivered


def test_adhoc_sends_the_statement_once_and_hands_every_row_over():
    cache = PreparedCache()
    machine = QueryMachine(N1QLQuery(STATEMENT, 3), cache, OPTIONS)
    action, sent, rows = play(machine, [([4, 5], SUCCESS, 200, None)])
    assert isinstance(action, Finished) and action.meta == SUCCESS
    assert rows == [4, 5] and machine.rows_delivered == 2
    assert sent == [{"statement": STATEMENT, "args": [3], "timeout": "75000ms"}]
    assert len(cache) == 0  # adhoc queries prepare nothing


def test_the_request_the_machine_asks_for():
    action = QueryMachine(N1QLQuery(STATEMENT), PreparedCache(), OPTIONS).start()
    assert isinstance(action, SendRequest) and not action.prepare
    assert (action.service, action.method, action.path) == ("n1ql", "POST", QUERY_PATH)
    assert action.headers == {"Content-Type": "application/json"}


def test_a_cache_miss_prepares_then_executes_by_name():
    cache = PreparedCache()
    machine = QueryMachine(prepared_query(3), cache, OPTIONS)
    first = machine.start()
    assert machine.state == PREPARING and first.prepare
    assert body_of(first) == {"statement": "PREPARE " + STATEMENT, "timeout": "75000ms"}
    second = answer_prepare(machine)
    assert machine.state == EXECUTING and not second.prepare
    body = body_of(second)
    assert body["prepared"] == "plan-1" and body["args"] == [3] and "statement" not in body
    assert "encoded_plan" not in body  # the cluster has enhancedPreparedStatements
    assert cache.get(STATEMENT)["name"] == "plan-1"
    assert machine.feed_rows([7]) == [7]
    assert isinstance(machine.end(SUCCESS, 200, None), Finished)


def test_a_cache_hit_executes_at_once():
    cache = PreparedCache()
    cache.put(STATEMENT, {"name": "cached", "encoded_plan": "P"})
    action, sent, rows = play(QueryMachine(prepared_query(1), cache, OPTIONS), [([2], SUCCESS, 200, None)])
    assert isinstance(action, Finished) and rows == [2]
    assert [b.get("prepared") for b in sent] == ["cached"]
    assert all("PREPARE" not in b.get("statement", "") for b in sent)


def test_clusters_without_enhanced_prepared_statements_get_the_plan():
    cache = PreparedCache()
    cache.put(STATEMENT, {"name": "cached", "encoded_plan": "THE-PLAN"})
    options = QueryOptions(default_timeout=75.0, send_plan=True)
    body = body_of(QueryMachine(prepared_query(), cache, options).start())
    assert body["prepared"] == "cached" and body["encoded_plan"] == "THE-PLAN"


def test_a_stale_plan_is_prepared_again_exactly_once():
    cache = PreparedCache()
    cache.put(STATEMENT, {"name": "forgotten"})
    machine = QueryMachine(prepared_query(2), cache, OPTIONS)
    assert body_of(machine.start())["prepared"] == "forgotten"
    again = machine.end(errors_meta(4040, "No such prepared statement: forgotten"), 404, None)
    assert machine.state == REPREPARING and again.prepare
    assert cache.get(STATEMENT) is None  # the stale plan is forgotten at once
    execute = answer_prepare(machine, "fresh")
    assert machine.state == REEXECUTING and body_of(execute)["prepared"] == "fresh"
    assert cache.get(STATEMENT)["name"] == "fresh"
    # stale again: no third attempt, the error goes to the caller
    final = machine.end(errors_meta(4050, "stale again"), 400, None)
    assert isinstance(final, Failed) and machine.state == FAILED
    assert isinstance(final.error, N1QLError) and final.error.code == 4050


def test_a_stale_plan_once_then_rows():
    cache = PreparedCache()
    cache.put(STATEMENT, {"name": "forgotten"})
    action, sent, rows = play(QueryMachine(prepared_query(), cache, OPTIONS), [
        ([], errors_meta(4070, "Unable to decode prepared statement"), 400, None),
        ([{"name": "fresh"}], SUCCESS, 200, None),
        ([1, 2, 3], SUCCESS, 200, None),
    ])
    assert isinstance(action, Finished) and rows == [1, 2, 3]
    assert [b.get("prepared") or b.get("statement") for b in sent] == ["forgotten", "PREPARE " + STATEMENT,
                                                                        "fresh"]


def test_the_table_has_no_second_reprepare():
    assert (EXECUTING, STALE) in TRANSITIONS
    assert (REEXECUTING, STALE) not in TRANSITIONS


def test_no_retry_once_rows_were_handed_over():
    cache = PreparedCache()
    cache.put(STATEMENT, {"name": "p"})
    machine = QueryMachine(prepared_query(), cache, OPTIONS)
    machine.start()
    assert machine.feed_rows([1]) == [1]
    final = machine.end(errors_meta(4040), 404, None)
    assert isinstance(final, Failed) and final.error.code == 4040
    assert cache.get(STATEMENT) is not None  # not treated as stale: kept


def test_stale_codes_mean_nothing_to_adhoc_queries():
    action, sent, _ = play(QueryMachine(N1QLQuery(STATEMENT), PreparedCache(), OPTIONS),
                           [([], errors_meta(4040), 404, None)])
    assert isinstance(action, Failed) and action.error.code == 4040 and len(sent) == 1


@pytest.mark.parametrize("code, msg, stale", [
    (4040, "No such prepared statement", True), (4090, "x", True), (4039, "x", False), (4091, "x", False),
    (5000, "Index ix_n not found", True), (5000, "out of memory", False), (3000, "syntax error", False),
])
def test_which_errors_mean_a_stale_plan(code, msg, stale):
    exc = query_error(errors_meta(code, msg), 400, None)
    assert is_stale_plan(exc) is stale


def test_error_mapping():
    # errors reported by the service
    exc = query_error(errors_meta(3000, "syntax error"), 400, None)
    assert isinstance(exc, N1QLError) and exc.code == 3000 and exc.msg == "syntax error"
    assert exc.http_status == 400
    # a transport failure, by its code
    assert isinstance(query_error({}, 0, (RC.TIMEOUT, "timed out")), TimeoutError)
    assert isinstance(query_error({}, 0, (RC.NETWORK, "reset")), NetworkError)
    # a refusal without N1QL errors (a proxy, a crash page)
    refused = query_error({"body": "<html>bad gateway</html>"}, 502, None)
    assert isinstance(refused, HTTPError) and refused.http_status == 502 and "bad gateway" in str(refused)
    # a status field other than success
    assert isinstance(query_error({"status": "fatal"}, 200, None), HTTPError)
    assert query_error(SUCCESS, 200, None) is None
    assert query_error({"status": "completed"}, 200, None) is None
    assert query_error({}, 0, (0, "abandoned")) is None


def test_a_failed_prepare_fails_the_query_without_executing():
    cache = PreparedCache()
    action, sent, rows = play(QueryMachine(prepared_query(), cache, OPTIONS),
                              [([], errors_meta(3000, "syntax error"), 400, None)])
    assert isinstance(action, Failed) and action.error.code == 3000
    assert len(sent) == 1 and rows == [] and cache.get(STATEMENT) is None


def test_a_prepare_without_a_plan_is_an_error():
    for plan_rows in ([], [{"no": "name"}], ["not an object"]):
        machine = QueryMachine(prepared_query(), PreparedCache(), OPTIONS)
        machine.start()
        machine.feed_rows(plan_rows)
        final = machine.end(SUCCESS, 200, None)
        assert isinstance(final, Failed) and "no plan" in str(final.error)


def test_a_transport_failure_is_the_callers_error_not_a_retry():
    cache = PreparedCache()
    cache.put(STATEMENT, {"name": "p"})
    action, sent, _ = play(QueryMachine(prepared_query(), cache, OPTIONS),
                           [([], {}, 0, (RC.TIMEOUT, "HTTP POST /query/service timed out"))])
    assert isinstance(action, Failed) and isinstance(action.error, TimeoutError) and len(sent) == 1


def test_timeouts_reach_the_body_and_the_client_deadline():
    q = N1QLQuery(STATEMENT)
    q.timeout = 2.5
    action = QueryMachine(q, PreparedCache(), OPTIONS).start()
    assert body_of(action)["timeout"] == "2500ms"
    assert action.timeout == 2.5 + HTTP_GRACE  # the service answers first; the client's deadline is the backstop
    default = QueryMachine(N1QLQuery(STATEMENT), PreparedCache(), QueryOptions(default_timeout=7.0)).start()
    assert body_of(default)["timeout"] == "7000ms" and default.timeout == 7.0 + HTTP_GRACE
    # PREPARE runs within the bucket's n1ql_timeout, whatever the query's own
    q2 = prepared_query()
    q2.timeout = 0.5
    machine = QueryMachine(q2, PreparedCache(), QueryOptions(default_timeout=9.0))
    prepare = machine.start()
    assert body_of(prepare)["timeout"] == "9000ms" and prepare.timeout == 9.0 + HTTP_GRACE
    execute = answer_prepare(machine)
    assert body_of(execute)["timeout"] == "500ms" and execute.timeout == 0.5 + HTTP_GRACE


def test_cross_bucket_queries_carry_the_credentials():
    q = N1QLQuery(STATEMENT)
    q.cross_bucket = True
    body = body_of(QueryMachine(q, PreparedCache(), OPTIONS).start())
    assert body["creds"] == [{"user": "local:user", "pass": "pw"}]
    anonymous = QueryOptions(default_timeout=1.0, bucket="default")
    body = body_of(QueryMachine(q, PreparedCache(), anonymous).start())
    assert body["creds"] == [{"user": "local:default", "pass": ""}]


def test_the_machine_refuses_events_out_of_order():
    machine = QueryMachine(N1QLQuery(STATEMENT), PreparedCache(), OPTIONS)
    with pytest.raises(RuntimeError):
        machine.end(SUCCESS, 200, None)
    machine.start()
    with pytest.raises(RuntimeError):
        machine.start()
    machine.end(SUCCESS, 200, None)
    with pytest.raises(RuntimeError):
        machine.end(SUCCESS, 200, None)


def test_the_prepared_cache_is_bounded_and_least_recently_used_goes_first():
    assert PreparedCache().size == MAX_PREPARED == 5000
    cache = PreparedCache(size=3)
    for name in "abc":
        cache.put(name, {"name": name})
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", {"name": "d"})
    assert len(cache) == 3 and cache.get("b") is None
    assert [k for k in "acd" if cache.get(k)] == ["a", "c", "d"]
    cache.drop("c")
    assert cache.get("c") is None and len(cache) == 2

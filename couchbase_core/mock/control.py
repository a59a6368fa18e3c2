"""The emulator's control endpoint: fault injection over HTTP.

Every action is ``POST <control_url>/<action>`` with a JSON object body
(possibly empty) and answers the cluster's :meth:`MockApp.info` (or an
action-specific JSON object). ``GET <control_url>/info`` just reports.
The Python API (:class:`couchbase_core.mock.MockCluster`) calls these, so
programs in any language can drive the same faults. See ``docs/mock.md``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict

from couchbase_core.mock.httpd import HTTPRequest, HTTPResponse, Router, json_response

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.runtime import MockApp

__all__ = ["router", "ACTIONS"]

ACTIONS = ("info", "failover", "add_node", "remove_node", "rebalance", "stop_node", "restart_node",
           "drop_connections", "delay", "stall", "force_status", "malformed", "cccp", "clock",
           "persist_delay", "replicate_delay", "clear_faults", "create_bucket", "delete_bucket", "add_user",
           "bump_epoch", "fts_index_lag")


def _runtimes(app: "MockApp", body: Dict[str, Any]) -> list:
    node = body.get("node")
    if node is None:
        return list(app.runtimes)
    return [app.runtime(int(node))]


def router(app: "MockApp") -> Router:
    """Routes of the control endpoint."""
    r = Router()

    async def info(request: HTTPRequest) -> HTTPResponse:
        return json_response(app.info())

    async def action(request: HTTPRequest) -> HTTPResponse:
        name = request.params["action"]
        try:
            body = json.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            extra = await _perform(app, name, body)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return json_response({"error": str(exc) or type(exc).__name__}, 400)
        result = app.info()
        if extra:
            result.update(extra)
        return json_response(result)

    r.add(["GET"], r"/mock/info", info)
    r.add(["POST"], r"/mock/(?P<action>[a-z_]+)", action)
    return r


async def _perform(app: "MockApp", name: str, body: Dict[str, Any]) -> Dict[str, Any]:
    cluster = app.cluster
    if name == "info":
        return {}
    if name == "failover":
        app.failover(int(body["node"]))
    elif name == "add_node":
        node = await app.add_node(rebalance=bool(body.get("rebalance", True)))
        return {"added": node.index}
    elif name == "remove_node":
        await app.remove_node(int(body["node"]))
    elif name == "rebalance":
        cluster.rebalance()
    elif name == "stop_node":
        await app.stop_node(int(body["node"]))
    elif name == "restart_node":
        await app.restart_node(int(body["node"]))
    elif name == "drop_connections":
        dropped = sum(rt.drop_connections() for rt in _runtimes(app, body))
        return {"dropped": dropped}
    elif name == "delay":
        for rt in _runtimes(app, body):
            rt.faults.delay = float(body.get("seconds", 0))
    elif name == "stall":
        after = body.get("after_bytes")
        for rt in _runtimes(app, body):
            rt.faults.stall_after = None if after is None else int(after)
    elif name == "force_status":
        for rt in _runtimes(app, body):
            rt.faults.force_status(int(body["status"]), int(body.get("count", 1)))
    elif name == "malformed":
        for rt in _runtimes(app, body):
            rt.faults.malformed = int(body.get("count", 1))
    elif name == "cccp":
        cluster.cccp_enabled = bool(body.get("enabled", True))
    elif name == "clock":
        cluster.clock.advance(float(body.get("advance", 0)))
        return {"now": cluster.clock.now()}
    elif name == "persist_delay":
        cluster.persist_delay = float(body.get("seconds", 0))
    elif name == "replicate_delay":
        cluster.replicate_delay = float(body.get("seconds", 0))
    elif name == "clear_faults":
        for rt in app.runtimes:
            rt.faults.clear()
        cluster.cccp_enabled = True
        cluster.persist_delay = cluster.replicate_delay = 0.0
        if "fts" in app.services:
            app.services["fts"].index_lag = 0.0
    elif name == "create_bucket":
        from couchbase_core.mock.runtime import BucketOptions

        app.create_bucket(BucketOptions(body["name"], body.get("type", "couchbase"), body.get("password", ""),
                                        body.get("replicas"), body.get("vbuckets")))
    elif name == "delete_bucket":
        cluster.remove_bucket(body["name"])
    elif name == "add_user":
        from couchbase_core.mock.cluster import User

        roles = [(r["role"], r.get("bucket")) for r in body.get("roles", [{"role": "admin"}])]
        cluster.add_user(User(body["name"], body["password"], roles))
    elif name == "fts_index_lag":
        from couchbase_core.mock.fts import fts_service

        fts_service(app).index_lag = float(body.get("seconds", 0))
    elif name == "bump_epoch":
        cluster.rev_epoch += 1
        cluster.bump()
    else:
        raise ValueError("unknown action %r (known: %s)" % (name, ", ".join(ACTIONS)))
    return {}

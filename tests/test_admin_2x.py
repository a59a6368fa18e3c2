"""``Admin`` (and N1QL ``meta``) behave as in the 2.x SDK, against the emulator.

2.x's Admin connected in its constructor (bad credentials: AuthError
there), took ``pools/...`` paths without their leading slash, raised
ArgumentError for a path it could not send, put the HttpResult of a refused
request in ``HTTPError.objextra``, and managed RBAC users per
authentication domain (``AuthDomain.Local`` / ``AuthDomain.External``).
N1QLRequest.meta raised RuntimeError before the rows were all received.
"""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from couchbase_core._formats import FMT_BYTES, FMT_UTF8
from couchbase_core._httpops import HttpOp
from couchbase_core.admin import Admin, BucketInfo, NotReadyError
from couchbase_core.auth_domain import AuthDomain
from couchbase_core.bucket import Bucket
from couchbase_core.exceptions import ArgumentError, AuthError, CouchbaseError, HTTPError
from couchbase_core.mock import MockCluster
from couchbase_core.result import HttpResult

ADMIN = ("Administrator", "password")
#: long enough never to fire on a loaded machine: a request that waited for
#: it would end in TimeoutError, which every test below tells apart
LONG = 120


@pytest.fixture(scope="module")
def cluster() -> Iterator[MockCluster]:
    with MockCluster(nodes=1, replicas=0) as c:
        yield c


@pytest.fixture
def admin(cluster: MockCluster) -> Iterator[Admin]:
    with Admin(*ADMIN, host="127.0.0.1", port=cluster.http_port, http_timeout=LONG) as adm:
        yield adm


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- constructor


@pytest.mark.parametrize("user, password", [("Administrator", "wrong"), ("nobody", "password")])
def test_bad_credentials_raise_auth_error_in_the_constructor(cluster, user, password):
    with pytest.raises(AuthError) as info:
        Admin(user, password, host="127.0.0.1", port=cluster.http_port, http_timeout=LONG)
    assert isinstance(info.value.objextra, HttpResult) and info.value.objextra.http_status == 401


def test_an_unreachable_node_fails_the_constructor():
    with pytest.raises(CouchbaseError) as info:
        Admin(*ADMIN, host="127.0.0.1", port=_closed_port(), http_timeout=LONG)
    assert not isinstance(info.value, (AuthError, ArgumentError))
    assert "timed out" not in str(info.value)


def test_connection_string_keyword(cluster):
    for text in ("http://127.0.0.1:%d" % cluster.http_port, "couchbase://127.0.0.1:%d=http" % cluster.http_port):
        with Admin(*ADMIN, connection_string=text, http_timeout=LONG) as adm:
            assert adm.bucket_info("default").value["name"] == "default"
            assert adm.port == cluster.http_port
    with pytest.raises(ArgumentError):
        Admin(*ADMIN, connection_string="memcached://127.0.0.1:11211")


# ----------------------------------------------------------------- http_request


@pytest.mark.parametrize("path", [None, 5, b"/pools", "/x y", "/a\r\nX-Injected: 1", "/caf\u00e9"])
def test_a_path_that_cannot_be_sent_is_an_argument_error_at_once(admin, path):
    with pytest.raises(ArgumentError):
        admin.http_request(path)
    assert admin.http_request("/pools").http_status == 200  # the connection is still usable


def test_an_unencodable_request_fails_in_the_engine_instead_of_waiting(admin):
    # past every check of the bucket layer: the engine itself must fail it
    op = HttpOp("mgmt", "GET", "/pools", b"", {}, LONG)
    op.headers = {"X-Count": 5}  # h11 cannot encode an int header value
    with pytest.raises(ArgumentError) as info:
        admin._conn._one(op)
    assert "cannot send" in str(info.value)
    with pytest.raises(ArgumentError):
        admin._conn._engine.http_request("mgmt", "GET", None, b"", {}, LONG)


def test_paths_without_a_leading_slash_are_normalised(admin):
    res = admin.http_request("pools/default")
    assert res.http_status == 200 and res.url == "/pools/default"
    assert admin.http_request("pools/default/buckets/default").value["name"] == "default"


def test_unknown_method_is_an_argument_error(admin):
    for method in ("PATCH", "get", None):
        with pytest.raises(ArgumentError):
            admin.http_request("/pools", method=method)


def test_http_error_objextra_is_the_http_result(admin):
    with pytest.raises(HTTPError) as info:
        admin.http_request("/pools/default/buckets/no-such-bucket")
    extra = info.value.objextra
    assert isinstance(extra, HttpResult) and extra is info.value.result
    assert extra.http_status == 404 and not extra.success
    assert isinstance(extra.value, bytes)  # FMT_JSON of a non-JSON body: the bytes, as 2.x


def test_response_formats(admin):
    assert isinstance(admin.http_request("/pools").value, dict)
    text = admin.http_request("/pools", response_format=FMT_UTF8).value
    raw = admin.http_request("/pools", response_format=FMT_BYTES).value
    assert isinstance(text, str) and isinstance(raw, bytes) and text.encode("utf-8") == raw


# ----------------------------------------------------------------------- buckets


def test_bucket_lifecycle(admin, cluster):
    res = admin.bucket_create("made2x", ram_quota=100, flush_enabled=False)
    assert isinstance(res, HttpResult) and res.http_status == 202
    try:
        assert admin.wait_ready("made2x", timeout=60) is None
        infos = admin.buckets_list()
        assert all(isinstance(i, BucketInfo) for i in infos) and Admin.BucketInfo is BucketInfo
        assert {"default", "made2x"} <= {i.name() for i in infos}
        assert str(next(i for i in infos if i.name() == "made2x")) == "Bucket named made2x"
        current = admin.bucket_info("made2x")
        assert admin.bucket_update("made2x", current, flush_enabled=True).http_status == 200
        assert admin.bucket_info("made2x").value["controllers"].get("flush")
    finally:
        admin.bucket_remove("made2x")
    with pytest.raises(HTTPError) as info:
        admin.bucket_info("made2x")
    assert info.value.objextra.http_status == 404
    # 2.x: when time is up, the probe's last error is raised
    with pytest.raises(HTTPError):
        admin.wait_ready("made2x", timeout=0.2, sleep_interval=0.05)
    assert issubclass(NotReadyError, CouchbaseError)


def test_bucket_create_checks_its_arguments(admin):
    with pytest.raises(ArgumentError):
        admin.bucket_create("odd", bucket_type="nosql")
    with pytest.raises(HTTPError) as info:
        admin.bucket_create("tiny", ram_quota=10)
    assert info.value.objextra.http_status == 400 and "ramQuotaMB" in str(info.value)


# ------------------------------------------------------------------------- users


def test_auth_domain_values():
    assert (AuthDomain.Local, AuthDomain.External) == (0, 1)
    assert Admin._get_management_path(AuthDomain.Local) == "/settings/rbac/users/local"
    assert Admin._get_management_path(AuthDomain.External, "a b") == "/settings/rbac/users/external/a%20b"
    assert Admin._get_management_path("local", "x") == "/settings/rbac/users/local/x"


@pytest.mark.parametrize("domain", [2, -1, "LDAP", "Local", None, True, 1.0])
def test_an_unknown_domain_is_refused_with_a_clear_error(admin, domain):
    for call in (lambda: admin.get_users(domain), lambda: admin.get_user(domain, "u"),
                 lambda: admin.upsert_user(domain, "u", "pw123456", ["ro_admin"]),
                 lambda: admin.remove_user(domain, "u")):
        with pytest.raises(ArgumentError) as info:
            call()
        assert "authentication domain" in str(info.value) and repr(domain) in str(info.value)


def test_local_users(admin, cluster):
    res = admin.upsert_user(AuthDomain.Local, "alice2x", "alice-pw", ["ro_admin", ("data_reader", "default")],
                            name="Alice")
    assert isinstance(res, HttpResult) and res.success
    try:
        user = admin.get_user(AuthDomain.Local, "alice2x")
        assert isinstance(user, HttpResult)
        assert user.value["id"] == "alice2x" and user.value["domain"] == "local" and user.value["name"] == "Alice"
        assert {(r["role"], r.get("bucket_name")) for r in user.value["roles"]} == \
            {("ro_admin", None), ("data_reader", "default")}
        assert "alice2x" in {u["id"] for u in admin.get_users(AuthDomain.Local).value}
        assert "alice2x" not in {u["id"] for u in admin.get_users(AuthDomain.External).value}
        # the new user can open the bucket
        b = Bucket(cluster.connstr_for("default"), username="alice2x", password="alice-pw")
        b.close()
    finally:
        assert admin.remove_user(AuthDomain.Local, "alice2x").success
    with pytest.raises(HTTPError) as info:
        admin.get_user(AuthDomain.Local, "alice2x")
    assert info.value.objextra.http_status == 404
    with pytest.raises(HTTPError):
        admin.remove_user(AuthDomain.Local, "alice2x")


def test_external_users(admin):
    admin.upsert_user(AuthDomain.External, "ldap-bob", roles=[("data_reader", "*")])
    try:
        got = admin.get_user(AuthDomain.External, "ldap-bob").value
        assert got["domain"] == "external" and got["roles"] == [{"role": "data_reader", "bucket_name": "*"}]
        everyone = admin.http_request("/settings/rbac/users").value
        assert ("ldap-bob", "external") in {(u["id"], u["domain"]) for u in everyone}
        with pytest.raises(HTTPError):  # not a local user
            admin.get_user(AuthDomain.Local, "ldap-bob")
    finally:
        admin.remove_user(AuthDomain.External, "ldap-bob")
    with pytest.raises(ArgumentError):
        admin.upsert_user(AuthDomain.External, "ldap-eve", "a-password", ["ro_admin"])


@pytest.mark.parametrize("roles", [None, [], "ro_admin", ("ro_admin",), [("a", "b", "c")], [5]])
def test_roles_must_be_a_non_empty_list_of_roles(admin, roles):
    with pytest.raises(ArgumentError):
        admin.upsert_user(AuthDomain.Local, "carol", "carol-pw", roles)


def test_verb_object_aliases():
    assert Admin.get_user is Admin.user_get and Admin.get_users is Admin.users_get
    assert Admin.upsert_user is Admin.user_upsert and Admin.remove_user is Admin.user_remove
    assert Admin.bucket_delete is Admin.bucket_remove


# --------------------------------------------------------------------- N1QL meta


def test_n1ql_meta_before_execution_raises_runtime_error(cluster):
    b = Bucket(cluster.connstr_for("default"), username=ADMIN[0], password=ADMIN[1], n1ql_timeout=LONG)
    try:
        req = b.n1ql_query("SELECT 1 AS one")
        for name in ("meta", "metrics"):
            with pytest.raises(RuntimeError):
                getattr(req, name)
        assert req.errors == []
        assert req.get_single_result() == {"one": 1}
        assert req.meta["status"] == "success" and req.metrics["resultCount"] == 1
    finally:
        b.close()

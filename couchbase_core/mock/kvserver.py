"""The emulated KV service of one node (memcached binary protocol, asyncio).

A :class:`KVSession` is one client connection. Requests are framed here (the
emulator has its own framing code, independent of the client's, so a bug in
one cannot hide in the other), then handled strictly in order: a request
whose handler must wait (a durable write, an injected delay) holds back the
ones behind it, like a real server without unordered execution.

The session handles the connection-level commands itself: HELLO, SASL
(SCRAM-SHA512/256/1 and PLAIN), SELECT_BUCKET, GET_ERROR_MAP,
GET_CLUSTER_CONFIG, NOOP, VERSION, QUIT, and the checks every data command
needs (a selected bucket, access rights, vBucket ownership with
NOT_MY_VBUCKET carrying the current config). Data commands are in
:mod:`.kvops`, registered by opcode.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import struct
from typing import TYPE_CHECKING, Awaitable, Callable, Dict, List, Optional, Set, Tuple, Union

from couchbase_core.mock import proto
from couchbase_core.mock.cluster import (
    FAILED,
    MEMCACHED_VERSION,
    SERVER_VERSION,
    STOPPED,
    Bucket,
    Cluster,
    Node,
)
from couchbase_core.mock.proto import Request

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.mock.runtime import NodeRuntime

__all__ = ["KVSession", "HANDLERS", "FEATURES", "register"]

#: HELLO features this emulator grants (when asked): see docs/mock.md.
FEATURES = (proto.F_TCPNODELAY, proto.F_MUTATION_SEQNO, proto.F_XATTR, proto.F_XERROR, proto.F_SELECT_BUCKET,
            proto.F_JSON, proto.F_DUPLEX, proto.F_CLUSTERMAP_CHANGE_NOTIFICATION, proto.F_ALT_REQUEST,
            proto.F_SYNC_REPLICATION, proto.F_PRESERVE_TTL, proto.F_SNAPPY, proto.F_VATTR,
            proto.F_SUBDOC_CREATE_AS_DELETED, proto.F_SUBDOC_REPLICA_READ)

MECHANISMS = ("SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1", "PLAIN")

Reply = Union[None, bytes, Awaitable[Optional[bytes]]]
Handler = Callable[["KVSession", Request], Reply]

#: opcode -> handler for data commands (filled by :mod:`.kvops`).
HANDLERS: Dict[int, Handler] = {}
#: opcodes whose key must be owned by this node as active / as a replica.
ACTIVE_KEY_OPS: Set[int] = set()
REPLICA_KEY_OPS: Set[int] = set()
#: opcodes that change data (refused to read-only users).
MUTATIONS: Set[int] = set()


def register(opcode: int, handler: Handler, key_owner: Optional[str] = "active", mutation: bool = False) -> None:
    """Register a data command. ``key_owner``: ``"active"`` (NOT_MY_VBUCKET
    unless this node owns the key's vBucket), ``"replica"``, or None."""
    HANDLERS[opcode] = handler
    if key_owner == "active":
        ACTIVE_KEY_OPS.add(opcode)
    elif key_owner == "replica":
        REPLICA_KEY_OPS.add(opcode)
    if mutation:
        MUTATIONS.add(opcode)


#: Opcodes whose reply value is a document.
_DOCUMENT_READS = frozenset({proto.GET, proto.GETQ, proto.GETK, proto.GETKQ, proto.GAT, proto.GATQ,
                             proto.GET_REPLICA, proto.GET_LOCKED})

_CONNECTION_OPS = (proto.HELLO, proto.SASL_LIST_MECHS, proto.SASL_AUTH, proto.SASL_STEP, proto.SELECT_BUCKET,
                   proto.GET_ERROR_MAP, proto.GET_CLUSTER_CONFIG, proto.NOOP, proto.VERSION, proto.QUIT,
                   proto.QUITQ, proto.VERBOSITY)
#: Connection commands that take no extras, key or value (else EINVAL).
_BARE_OPS = (proto.NOOP, proto.VERSION, proto.QUIT, proto.QUITQ)


class KVSession(asyncio.Protocol):
    """One client connection to a node's KV port."""

    #: Test hook, for checking the SCRAM vectors of spec/sasl.md §6: when
    #: set, ``{user: (server nonce part, salt, iterations)}`` replaces the
    #: random server nonce, the user's salt and the iteration count in SCRAM
    #: exchanges of those users. None (the default) in normal use.
    scram_test_vectors: Optional[Dict[str, Tuple[str, bytes, int]]] = None

    def __init__(self, runtime: "NodeRuntime") -> None:
        self.runtime = runtime
        self.node: Node = runtime.node
        self.cluster: Cluster = runtime.cluster
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.features: Set[int] = set()
        self.agent = ""
        self.user: Optional[str] = None
        self.user_kind: Optional[str] = None  # "rbac", "admin", "bucket"
        self.bucket: Optional[Bucket] = None
        self.access: Optional[str] = None  # "rw" / "ro"
        self._sasl: Optional[dict] = None
        self._queue: List[Request] = []
        self._busy = False
        self._closed = False
        self.bytes_written = 0
        self._held = bytearray()
        self.peer = ""
        #: A client certificate authenticated this connection (SASL is then refused).
        self.cert_authenticated = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = "%s:%s" % (peer[0], peer[1]) if peer else "?"
        self.runtime.sessions.add(self)
        if self.cluster.cert_auth is not None and transport.get_extra_info("peercert"):
            self._login_by_certificate(transport.get_extra_info("peercert"))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def _login_by_certificate(self, peercert: dict) -> None:
        """A verified client certificate authenticates the connection (no
        SASL); one that names no known user is refused: hang up."""
        from couchbase_core.mock.certauth import identify

        user = self.cluster.cert_auth.user_name(peercert)
        who = identify(self.cluster, user)
        if who is None:
            self.close()
            return
        assert user is not None
        self._login(user, who[0], None)
        self.cert_authenticated = True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._closed = True
        self.runtime.sessions.discard(self)

    def close(self) -> None:
        """Drop the connection (fault injection, node stop)."""
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        size = len(buf)
        requests = []
        while size - pos >= 24:
            magic = buf[pos]
            if magic not in (proto.MAGIC_REQ, proto.MAGIC_ALT_REQ, proto.MAGIC_SERVER_RES):
                # Real servers drop a connection that sends garbage.
                self.close()
                return
            if (magic == proto.MAGIC_ALT_REQ and proto.F_ALT_REQUEST not in self.features
                    and self.bucket is not None and self.bucket.is_memcached):
                # memcached knows only magic 0x80 and hangs up on anything else.
                self.close()
                return
            bodylen = struct.unpack_from(">I", buf, pos + 8)[0]
            if bodylen > proto.MAX_BODY:
                self.close()
                return
            end = pos + 24 + bodylen
            if end > size:
                break
            req = proto.parse_request(bytes(buf[pos:end]))
            if req is None:
                self.close()
                return
            if magic != proto.MAGIC_SERVER_RES:  # replies to our pushes need nothing
                requests.append(req)
            pos = end
        if pos:
            del buf[:pos]
        if requests:
            self._queue.extend(requests)
            if not self._busy:
                self._pump()

    # ----------------------------------------------------------- processing

    def _pump(self) -> None:
        """Handle queued requests in order until one has to wait."""
        queue = self._queue
        while queue and not self._closed:
            req = queue.pop(0)
            try:
                reply = self._dispatch(req)
            except Exception as exc:  # a bug: answer EINTERNAL rather than hang
                reply = self.error(req, proto.EINTERNAL, "emulator error: %r" % (exc,))
            delay = self.runtime.faults.delay
            if delay or (reply is not None and not isinstance(reply, (bytes, bytearray))):
                self._busy = True
                asyncio.ensure_future(self._finish_later(reply, delay))
                return
            if reply:
                self.send(reply)
        self._busy = False

    async def _finish_later(self, reply: Reply, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            if reply is not None and not isinstance(reply, (bytes, bytearray)):
                reply = await reply
            if reply and not self._closed:
                self.send(reply)
        except Exception:  # pragma: no cover - keep the connection going
            pass
        self._busy = False
        self._pump()

    def send(self, data: bytes) -> None:
        """Write response bytes, honouring the stall and malformed faults."""
        if self._closed or self.transport is None:
            return
        faults = self.runtime.faults
        if faults.malformed:
            faults.malformed -= 1
            data = b"\xde\xad\xbe\xef" + os.urandom(28)
        limit = faults.stall_after
        if limit is not None:
            room = max(0, limit - self.bytes_written)
            if room < len(data):
                self._held += data[room:]
                data = data[:room]
        self.bytes_written += len(data)
        if data:
            self.transport.write(data)

    def close_after(self, data: bytes) -> None:
        """Send ``data``, then close the connection gracefully without handling
        the requests queued behind (memcached's answer to a malformed one)."""
        self.send(data)
        self._closed = True
        self._queue.clear()
        if self.transport is not None:
            self.transport.close()

    def push_config(self) -> None:
        """Clustermap change notification (Duplex + 0x0d negotiated)."""
        if proto.F_CLUSTERMAP_CHANGE_NOTIFICATION not in self.features or self.bucket is None:
            return
        if self.bucket.is_memcached:
            return
        extras = struct.pack(">QQ", self.cluster.rev_epoch, self.cluster.rev)
        value = self.cluster.config_bytes(self.bucket, self.node)
        self.send(proto.encode(proto.MAGIC_SERVER_REQ, 0x01, key=self.bucket.name.encode(), extras=extras,
                               value=value, datatype=proto.DT_JSON if proto.F_JSON in self.features else 0))

    # ---------------------------------------------------------------- replies

    def reply(self, req: Request, status: int = 0, extras: bytes = b"", key: bytes = b"", value: bytes = b"",
              cas: int = 0, datatype: int = 0) -> bytes:
        """A response frame for ``req``. Documents read by a Snappy-capable
        client go out compressed when that saves space (the server's
        "active" compression mode)."""
        if datatype and proto.F_JSON not in self.features:
            datatype &= ~proto.DT_JSON
        if (not status and len(value) >= 32 and req.opcode in _DOCUMENT_READS
                and proto.F_SNAPPY in self.features):
            import cramjam

            packed = bytes(cramjam.snappy.compress_raw(value))
            if len(packed) < len(value) * 0.83:
                value = packed
                datatype |= proto.DT_SNAPPY
        return proto.encode(proto.MAGIC_RES, req.opcode, status, key=key, extras=extras, value=value,
                            opaque=req.opaque, cas=cas, datatype=datatype)

    def error(self, req: Request, status: int, message: Optional[str] = None) -> bytes:
        """A failure response. Without XERROR, newer codes are mapped to the
        old ones a 2.x-era server would send."""
        if proto.F_XERROR not in self.features:
            status = proto.LEGACY_STATUS.get(status, status)
        if message is None:
            message = proto.STATUS_TEXT.get(status, "")
        if proto.F_XERROR in self.features and message:
            body = json.dumps({"error": {"context": message}}).encode()
            return self.reply(req, status, value=body, datatype=proto.DT_JSON)
        return self.reply(req, status, value=message.encode())

    def not_my_vbucket(self, req: Request) -> bytes:
        """NOT_MY_VBUCKET with this node's current config in the body."""
        body = self.cluster.config_bytes(self.bucket, self.node) if self.bucket is not None else b""
        return self.reply(req, proto.NOT_MY_VBUCKET, value=body,
                          datatype=proto.DT_JSON if body else 0)

    # --------------------------------------------------------------- dispatch

    def _dispatch(self, req: Request) -> Reply:
        opcode = req.opcode
        if self.runtime.node.state == STOPPED:
            self.close()
            return None
        if opcode in _CONNECTION_OPS:
            return self._connection_op(req)
        handler = HANDLERS.get(opcode)
        if handler is None:
            return self.error(req, proto.UNKNOWN_COMMAND, "Unknown command")
        bucket = self.bucket
        if bucket is None or bucket.name not in self.cluster.buckets:
            if self.user is None and self._auto_select():
                bucket = self.bucket
            else:
                return self.error(req, proto.NO_BUCKET if self.user is not None else proto.EACCESS,
                                  "No bucket selected" if self.user is not None else "Not authenticated")
        assert bucket is not None
        if opcode in MUTATIONS and self.access != "rw":
            return self.error(req, proto.EACCESS, "No write access to bucket %s" % bucket.name)
        forced = self.runtime.faults.take_forced_status()
        if forced is not None:
            return self.error(req, forced) if forced else self.reply(req)
        if req.durability is not None and (proto.F_SYNC_REPLICATION not in self.features
                                           and proto.F_ALT_REQUEST not in self.features):
            return self.error(req, proto.EINVAL, "Durability framing without AltRequest")
        if not bucket.is_memcached:
            if req.vbucket >= bucket.num_vbuckets and (opcode in ACTIVE_KEY_OPS or opcode in REPLICA_KEY_OPS):
                return self.not_my_vbucket(req)
            if opcode in ACTIVE_KEY_OPS:
                if bucket.owner(req.vbucket, 0) is not self.node or self.node.state == FAILED:
                    return self.not_my_vbucket(req)
            elif opcode in REPLICA_KEY_OPS:
                row = bucket.vbmap[req.vbucket] if req.vbucket < len(bucket.vbmap) else []
                me = bucket.server_index(self.node)
                if me < 0 or me not in row[1:]:
                    return self.not_my_vbucket(req)
        return handler(self, req)

    def _auto_select(self) -> bool:
        """Unauthenticated connections get a password-less ``default`` bucket
        (the pre-5.0 behaviour); protected buckets need a login."""
        bucket = self.cluster.buckets.get("default")
        if bucket is not None and not bucket.password:
            self.bucket = bucket
            self.access = "rw"
            return True
        return False

    def _connection_op(self, req: Request) -> Reply:
        op = req.opcode
        if op in _BARE_OPS and (req.extras or req.key or req.value):
            if self.bucket is not None and self.bucket.is_memcached:  # memcached: EINVAL, then hang up
                self.close_after(self.reply(req, proto.EINVAL, value=b"Invalid arguments"))
                return None
            return self.error(req, proto.EINVAL, "Request must not include extras, key or value")
        if op == proto.HELLO:
            return self._hello(req)
        if op == proto.NOOP:
            return self.reply(req)
        if op == proto.VERSION:  # a memcached bucket answers as the memcached it stands for
            memcached = self.bucket is not None and self.bucket.is_memcached
            return self.reply(req, value=(MEMCACHED_VERSION if memcached else SERVER_VERSION).encode())
        if op == proto.VERBOSITY:
            return self.reply(req)
        if op in (proto.QUIT, proto.QUITQ):
            if op == proto.QUIT:
                self.send(self.reply(req))
            if self.transport is not None:
                self.transport.close()
            return None
        if op in (proto.SASL_LIST_MECHS, proto.SASL_AUTH, proto.SASL_STEP) and self.cert_authenticated:
            # what kv_engine answers once a certificate authenticated the connection
            return self.error(req, proto.NOT_SUPPORTED, "Already authenticated by client certificate")
        if op == proto.SASL_LIST_MECHS:
            return self.reply(req, value=" ".join(MECHANISMS).encode())
        if op == proto.SASL_AUTH:
            return self._sasl_auth(req)
        if op == proto.SASL_STEP:
            return self._sasl_step(req)
        if op == proto.SELECT_BUCKET:
            return self._select_bucket(req)
        if op == proto.GET_ERROR_MAP:
            return self.reply(req, value=proto.error_map_json(), datatype=proto.DT_JSON)
        if op == proto.GET_CLUSTER_CONFIG:
            return self._get_cluster_config(req)
        return self.error(req, proto.UNKNOWN_COMMAND)  # pragma: no cover

    def _hello(self, req: Request) -> bytes:
        wanted = [struct.unpack_from(">H", req.value, i)[0] for i in range(0, len(req.value) - 1, 2)]
        granted = [f for f in wanted if f in FEATURES]
        if proto.F_SNAPPY in granted and not proto.snappy_available():
            granted.remove(proto.F_SNAPPY)
        if proto.F_CLUSTERMAP_CHANGE_NOTIFICATION in granted and proto.F_DUPLEX not in granted:
            granted.remove(proto.F_CLUSTERMAP_CHANGE_NOTIFICATION)
        self.features = set(granted)
        key = req.key.decode("utf-8", "replace")
        if key.startswith("{"):
            try:
                self.agent = str(json.loads(key).get("a", ""))
            except ValueError:
                self.agent = key
        else:
            self.agent = key
        return self.reply(req, value=b"".join(struct.pack(">H", f) for f in granted))

    # ------------------------------------------------------------------ SASL

    def _login(self, user: str, kind: str, bucket: Optional[Bucket]) -> None:
        self.user = user
        self.user_kind = kind
        if kind == "bucket" and bucket is not None:
            self.bucket = bucket
            self.access = "rw"
        else:
            self.bucket = None
            self.access = None

    def _sasl_auth(self, req: Request) -> bytes:
        mech = req.key.decode("ascii", "replace")
        if mech == "PLAIN":
            parts = req.value.split(b"\x00")
            if len(parts) != 3:
                return self.error(req, proto.AUTH_ERROR, "Invalid PLAIN message")
            user, password = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
            who = self.cluster.check_password(user, password)
            if who is None:
                return self.error(req, proto.AUTH_ERROR, "Authentication failed")
            self._login(user, who[0], who[1])
            return self.reply(req)
        if mech in ("SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1"):
            return self._scram_first(req, mech)
        return self.error(req, proto.AUTH_ERROR, "Unknown mechanism %s" % mech)

    def _scram_first(self, req: Request, mech: str) -> bytes:
        text = req.value.decode("utf-8", "replace")
        if not text.startswith("n,,"):
            return self.error(req, proto.AUTH_ERROR, "Channel binding is not supported")
        bare = text[3:]
        fields = dict(p.split("=", 1) for p in bare.split(",") if "=" in p)
        user = fields.get("n", "").replace("=2C", ",").replace("=3D", "=")
        cnonce = fields.get("r", "")
        password = self.cluster.password_of(user)
        if password is None or not cnonce:
            return self.error(req, proto.AUTH_ERROR, "Authentication failed")
        salt, iterations = self.cluster.scram_salt(user), self.cluster.scram_iterations
        snonce = base64.b64encode(os.urandom(18)).decode("ascii").replace("=", "")
        fixed = KVSession.scram_test_vectors.get(user) if KVSession.scram_test_vectors else None
        if fixed is not None:
            snonce, salt, iterations = fixed
        nonce = cnonce + snonce
        server_first = "r=%s,s=%s,i=%d" % (nonce, base64.b64encode(salt).decode("ascii"), iterations)
        self._sasl = {"mech": mech, "user": user, "password": password, "bare": bare,
                      "server_first": server_first, "nonce": nonce, "salt": salt, "iterations": iterations}
        return self.reply(req, proto.AUTH_CONTINUE, value=server_first.encode())

    def _sasl_step(self, req: Request) -> bytes:
        state, self._sasl = self._sasl, None
        mech = req.key.decode("ascii", "replace")
        if state is None or state["mech"] != mech:
            return self.error(req, proto.AUTH_ERROR, "No authentication in progress")
        text = req.value.decode("utf-8", "replace")
        try:
            without_proof, proof_b64 = text.rsplit(",p=", 1)
            fields = dict(p.split("=", 1) for p in without_proof.split(","))
            proof = base64.b64decode(proof_b64)
        except ValueError:
            return self.error(req, proto.AUTH_ERROR, "Malformed SCRAM message")
        if fields.get("r") != state["nonce"] or fields.get("c") != "biws":
            return self.error(req, proto.AUTH_ERROR, "Authentication failed")
        digest = {"SCRAM-SHA512": "sha512", "SCRAM-SHA256": "sha256", "SCRAM-SHA1": "sha1"}[mech]
        salted = hashlib.pbkdf2_hmac(digest, state["password"].encode("utf-8"), state["salt"],
                                     state["iterations"])
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        stored_key = hashlib.new(digest, client_key).digest()
        auth_message = "%s,%s,%s" % (state["bare"], state["server_first"], without_proof)
        signature = hmac.new(stored_key, auth_message.encode("utf-8"), digest).digest()
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if not hmac.compare_digest(expected, proof):
            return self.error(req, proto.AUTH_ERROR, "Authentication failed")
        server_key = hmac.new(salted, b"Server Key", digest).digest()
        server_sig = hmac.new(server_key, auth_message.encode("utf-8"), digest).digest()
        who = self.cluster.check_password(state["user"], state["password"])
        assert who is not None
        self._login(state["user"], who[0], who[1])
        return self.reply(req, value=b"v=" + base64.b64encode(server_sig))

    def _select_bucket(self, req: Request) -> bytes:
        name = req.key.decode("utf-8", "replace")
        bucket = self.cluster.buckets.get(name)
        if self.user is None:
            if bucket is not None and not bucket.password:
                self.bucket, self.access = bucket, "rw"
                return self.reply(req)
            return self.error(req, proto.EACCESS, "Not authenticated")
        access: Optional[str]
        if self.user_kind == "admin":
            access = "rw"
        elif self.user_kind == "bucket":
            access = "rw" if bucket is not None and bucket is self.bucket else None
        else:
            record = self.cluster.users.get(self.user)
            access = record.bucket_access(name) if record is not None else None
        if bucket is None:
            if self.user_kind == "admin":
                return self.error(req, proto.KEY_ENOENT, "No such bucket")
            return self.error(req, proto.EACCESS, "No access to bucket %s" % name)
        if access is None:
            return self.error(req, proto.EACCESS, "No access to bucket %s" % name)
        self.bucket = bucket
        self.access = access
        return self.reply(req)

    def _get_cluster_config(self, req: Request) -> bytes:
        if not self.cluster.cccp_enabled:
            return self.error(req, proto.NOT_SUPPORTED, "CCCP is switched off")
        bucket = self.bucket
        if bucket is None and self.user is None:
            self._auto_select()
            bucket = self.bucket
        if bucket is not None and bucket.is_memcached:
            # What the server answers: the command exists, a memcached bucket
            # just has no config to give (clients then use the REST stream).
            return self.error(req, proto.KEY_ENOENT, "Memcached buckets have no cluster config")
        if len(req.extras) == 16 and bucket is not None:
            epoch, rev = struct.unpack(">QQ", req.extras)
            if (epoch, rev) >= (self.cluster.rev_epoch, self.cluster.rev):
                return self.reply(req)
        return self.reply(req, value=self.cluster.config_bytes(bucket, self.node), datatype=proto.DT_JSON)


"""The KV handshake state machine (couchbase_core/_engine/session.py), driven
the h11 way: no socket, no loop, no clock. A scripted server answers each
request the session emits; its replies are fed whole, split at every byte
boundary and one byte at a time, and the session must emit the same events
whatever the split."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import struct
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from couchbase_core._engine import sasl
from couchbase_core._engine.protocol import HEADER, Feature, Opcode, Status, encode_response
from couchbase_core._engine.session import (
    AUTH,
    DONE,
    FAILED,
    HELLO,
    RESTART,
    Done,
    Failed,
    HelloAnswered,
    RestartWithoutHello,
    Send,
    Session,
)
from couchbase_core.exceptions import RC

AUTHORITY = "node1:11210"
FEATURES = (Feature.TCPNODELAY, Feature.XERROR, Feature.SELECT_BUCKET)
ERROR_MAP = {"version": 1, "revision": 1, "errors": {"86": {"name": "ETMPFAIL", "desc": "busy", "attrs": ["temp"]}}}
SCRAM_ITERATIONS = 64  # cheap: the machine is shared


@pytest.fixture(autouse=True)
def fixed_nonce(monkeypatch):
    """SCRAM client nonces are random; fix them so runs can be compared."""
    monkeypatch.setattr(sasl, "os", SimpleNamespace(urandom=lambda n: b"\x5a" * n))


# --------------------------------------------------------------- the server

Request = Tuple[int, int, bytes, bytes]  # opcode, opaque, key, value


def parse_request(data: bytes) -> Request:
    magic, opcode, keylen, extlen, _dt, _vb, bodylen, opaque, _cas = HEADER.unpack_from(data)
    assert magic == 0x80 and len(data) == 24 + bodylen, "one whole request per Send"
    key = data[24 + extlen:24 + extlen + keylen]
    value = data[24 + extlen + keylen:]
    return opcode, opaque, key, value


class ScramServer:
    """Server side of SCRAM (RFC 5802), written for these tests."""

    def __init__(self, mech: str, password: str, forge_signature: bool = False) -> None:
        self.digest = sasl._DIGESTS[mech]
        self.password = password
        self.forge = forge_signature
        self.salt = b"salt-for-tests"
        self.state: Dict[str, Any] = {}

    def first(self, client_first: bytes) -> bytes:
        bare = client_first.decode()[3:]
        cnonce = dict(p.split("=", 1) for p in bare.split(","))["r"]
        nonce = cnonce + "SERVERNONCE"
        server_first = "r=%s,s=%s,i=%d" % (nonce, base64.b64encode(self.salt).decode(), SCRAM_ITERATIONS)
        self.state = {"bare": bare, "server_first": server_first}
        return server_first.encode()

    def final(self, client_final: bytes) -> Optional[bytes]:
        """The server signature, or None when the proof is wrong."""
        without_proof, proof_b64 = client_final.decode().rsplit(",p=", 1)
        salted = hashlib.pbkdf2_hmac(self.digest, self.password.encode(), self.salt, SCRAM_ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", self.digest).digest()
        stored_key = hashlib.new(self.digest, client_key).digest()
        auth_message = ",".join((self.state["bare"], self.state["server_first"], without_proof)).encode()
        signature = hmac.new(stored_key, auth_message, self.digest).digest()
        expected = bytes(a ^ b for a, b in zip(client_key, signature))
        if base64.b64decode(proof_b64) != expected:
            return None
        server_key = hmac.new(salted, b"Server Key", self.digest).digest()
        if self.forge:
            server_key = b"not the server key"
        return b"v=" + base64.b64encode(hmac.new(server_key, auth_message, self.digest).digest())


class Server:
    """Answers handshake requests the way a configurable server would.

    ``hello``: "grant" (the features asked for, less ``withhold``),
    "refuse" (UNKNOWN_COMMAND) or a status number. ``error_map``: bytes of
    the GET_ERROR_MAP reply value, or a status number. ``mechs``: the
    SASL_LIST_MECHS value, or a status number. ``password``: the one the
    server knows. ``select``: SELECT_BUCKET status.
    """

    def __init__(self, hello: Any = "grant", withhold: Tuple[int, ...] = (), error_map: Any = None,
                 mechs: Any = b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN", password: str = "secret",
                 select: int = Status.SUCCESS, forge_signature: bool = False,
                 auth_override: Optional[Callable[[Request], Optional[Tuple[int, bytes]]]] = None,
                 opaque_offset: int = 0) -> None:
        self.hello = hello
        self.withhold = withhold
        self.error_map = json.dumps(ERROR_MAP).encode() if error_map is None else error_map
        self.mechs = mechs
        self.password = password
        self.select = select
        self.forge = forge_signature
        self.auth_override = auth_override
        self.opaque_offset = opaque_offset
        self.scram: Optional[ScramServer] = None
        self.seen: List[int] = []

    def answer(self, request: bytes) -> bytes:
        opcode, opaque, key, value = parse_request(request)
        self.seen.append(opcode)
        status, body = self._answer(opcode, key, value)
        return encode_response(opcode, status, value=body, opaque=opaque + self.opaque_offset)

    def _answer(self, opcode: int, key: bytes, value: bytes) -> Tuple[int, bytes]:
        if opcode == Opcode.HELLO:
            if self.hello == "grant":
                asked = struct.unpack(">%dH" % (len(value) // 2), value)
                return Status.SUCCESS, b"".join(struct.pack(">H", f) for f in asked if f not in self.withhold)
            if self.hello == "refuse":
                return Status.UNKNOWN_COMMAND, b""
            return self.hello, b""
        if opcode == Opcode.GET_ERROR_MAP:
            if isinstance(self.error_map, int):
                return self.error_map, b""
            return Status.SUCCESS, self.error_map
        if opcode == Opcode.SASL_LIST_MECHS:
            if isinstance(self.mechs, int):
                return self.mechs, b""
            return Status.SUCCESS, self.mechs
        if opcode in (Opcode.SASL_AUTH, Opcode.SASL_STEP) and self.auth_override is not None:
            override = self.auth_override((opcode, 0, key, value))
            if override is not None:
                return override
        if opcode == Opcode.SASL_AUTH:
            mech = key.decode()
            if mech == "PLAIN":
                ok = value.split(b"\x00")[2] == self.password.encode()
                return (Status.SUCCESS, b"") if ok else (Status.AUTH_ERROR, b"Auth failure")
            self.scram = ScramServer(mech, self.password, self.forge)
            return Status.AUTH_CONTINUE, self.scram.first(value)
        if opcode == Opcode.SASL_STEP:
            assert self.scram is not None
            final = self.scram.final(value)
            return (Status.SUCCESS, final) if final is not None else (Status.AUTH_ERROR, b"Auth failure")
        if opcode == Opcode.SELECT_BUCKET:
            return self.select, b""
        raise AssertionError("unexpected request 0x%02x" % opcode)


# ------------------------------------------------------------------ driving

def session(**kwargs: Any) -> Session:
    opaques = itertools.count(1)
    kwargs.setdefault("features", FEATURES)
    return Session(AUTHORITY, lambda: next(opaques), **kwargs)


Splitter = Callable[[bytes], List[bytes]]


def whole(data: bytes) -> List[bytes]:
    return [data]


def bytewise(data: bytes) -> List[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def split_at(n: int) -> Splitter:
    return lambda data: [data[:n], data[n:]]


def run(sess: Session, server: Server, split: Splitter = whole,
        trailing: bytes = b"") -> Tuple[List[Any], List[bytes], bytes]:
    """Run the handshake against ``server``; every reply goes through
    ``split``. ``trailing`` bytes follow the reply that ends the handshake
    (in the same chunk). Returns every event in order, the server's replies,
    and the chunks left unfed once the session ended (joined)."""
    events: List[Any] = list(sess.start())
    replies: List[bytes] = []
    leftover = b""
    sent = 0
    while not sess.ended:
        sends = [e for e in events[sent:] if isinstance(e, Send)]
        sent = len(events)
        assert len(sends) == 1, "exactly one request in flight: %r" % events
        reply = server.answer(sends[0].data)
        replies.append(reply)
        if _ends_the_handshake(server, sends[0].data):
            reply += trailing
        chunks = split(reply)
        for i, chunk in enumerate(chunks):
            if sess.ended:
                leftover = b"".join(chunks[i:])
                break
            events.extend(sess.receive(chunk))
    return events, replies, leftover


def converse(sess: Session, server: Server, split: Splitter = whole) -> List[Any]:
    """The events of :func:`run`."""
    return run(sess, server, split)[0]


def _ends_the_handshake(server: Server, request: bytes) -> bool:
    opcode = parse_request(request)[0]
    return opcode == Opcode.SELECT_BUCKET or (opcode == Opcode.SASL_STEP and server.auth_override is None)


def kinds(events: List[Any]) -> List[str]:
    return [type(e).__name__ for e in events]


def last(events: List[Any]) -> Any:
    return events[-1]


def sent_opcodes(events: List[Any]) -> List[int]:
    return [parse_request(e.data)[0] for e in events if isinstance(e, Send)]


def _without_rest(events: List[Any]) -> List[Any]:
    return [Done(e.features, e.error_map) if isinstance(e, Done) else e for e in events]


def every_split(make_session: Callable[[], Session], make_server: Callable[[], Server],
                trailing: bytes = b"") -> List[Any]:
    """The events of one handshake, checked to be the same however each
    reply is cut: whole, at every byte boundary, one byte at a time. What
    follows the last reply is never lost: it is in ``Done.rest`` when it
    came in the same chunk, else still unread."""
    reference, replies, leftover = run(make_session(), make_server(), whole, trailing)
    assert leftover == b""
    longest = max(len(r) for r in replies) + len(trailing)
    splitters: List[Splitter] = [bytewise] + [split_at(n) for n in range(1, longest)]
    for splitter in splitters:
        events, _replies, leftover = run(make_session(), make_server(), splitter, trailing)
        assert _without_rest(events) == _without_rest(reference)
        if isinstance(events[-1], Done):
            assert events[-1].rest + leftover == trailing
    return reference


# -------------------------------------------------------------------- HELLO

def test_full_handshake_with_error_map_and_select_bucket_at_every_split():
    events = every_split(lambda: session(bucket="default"), Server)
    assert sent_opcodes(events) == [Opcode.HELLO, Opcode.GET_ERROR_MAP, Opcode.SELECT_BUCKET]
    assert kinds(events) == ["Send", "HelloAnswered", "Send", "Send", "Done"]
    assert events[1] == HelloAnswered(frozenset(FEATURES))
    done = last(events)
    assert done.features == frozenset(FEATURES)
    assert done.error_map == {0x86: ERROR_MAP["errors"]["86"]}
    assert done.rest == b""


def test_hello_carries_the_agent_and_the_features_asked_for():
    sess = session(agent=b'{"a":"x"}', features=(Feature.XERROR, Feature.SNAPPY))
    (send,) = sess.start()
    opcode, opaque, key, value = parse_request(send.data)
    assert (opcode, key, value) == (Opcode.HELLO, b'{"a":"x"}', b"\x00\x07\x00\x0a")
    assert sess.awaiting_hello and sess.state is HELLO


def test_without_hello_the_handshake_starts_with_the_next_step():
    sess = session(hello=False, bucket="default", user="u", password="secret", tls=True)
    events = sess.start()
    assert sent_opcodes(events) == [Opcode.SASL_LIST_MECHS]
    assert not sess.awaiting_hello
    # no HELLO, so SELECT_BUCKET is not granted: not sent
    assert kinds(converse(session(hello=False, bucket="default"), Server())) == ["Done"]


def test_keyless_hello_refused_goes_on_without_features():
    events = every_split(lambda: session(bucket="default"), lambda: Server(hello="refuse"))
    assert kinds(events) == ["Send", "HelloAnswered", "Done"]
    assert events[1] == HelloAnswered(None)
    assert last(events) == Done(frozenset(), None, b"")


@pytest.mark.parametrize("status", [Status.UNKNOWN_COMMAND, Status.NOT_SUPPORTED, Status.EACCESS])
def test_keyed_hello_refused_restarts_without_hello(status):
    events = every_split(lambda: session(agent=b"agent"), lambda: Server(hello=status))
    assert kinds(events) == ["Send", "HelloAnswered", "RestartWithoutHello"]
    assert events[1] == HelloAnswered(None)
    assert "refused HELLO (status 0x%02x)" % status in events[2].reason


def test_hello_answered_with_an_error_fails():
    events = converse(session(), Server(hello=Status.EINTERNAL))
    assert last(events) == Failed(RC.PROTOCOL, "%s answered HELLO with status 0x84" % AUTHORITY)


@pytest.mark.parametrize("agent", [b"", b"agent"])
def test_silence_or_close_while_hello_waits_restarts_without_hello(agent):
    for end in ("timeout", "eof"):
        sess = session(agent=agent)
        sess.start()
        events = sess.timeout(2.0) if end == "timeout" else sess.eof()
        assert kinds(events) == ["RestartWithoutHello"], end
        assert sess.state is RESTART and sess.ended
        assert sess.receive(b"\x81") == [] and sess.eof() == []


def test_silence_or_close_after_hello_fails():
    hello_granted = encode_response(Opcode.HELLO, 0, value=b"\x00\x07", opaque=1)  # XERROR: error map next
    sess = session()
    sess.start()
    assert kinds(sess.receive(hello_granted)) == ["HelloAnswered", "Send"]
    assert not sess.awaiting_hello
    assert sess.timeout(2.5) == [Failed(RC.CONNECT, "timed out negotiating with %s after 2.5s" % AUTHORITY)]
    sess = session()
    sess.start()
    sess.receive(hello_granted)
    assert sess.eof() == [Failed(RC.NETWORK, "connection to %s closed by the server" % AUTHORITY)]
    assert sess.state is FAILED


# ---------------------------------------------------------------- error map

def test_a_garbage_error_map_is_ignored():
    for garbage in (b"not json", b"[1, 2]", b'{"errors": {"zz": {}}}', b'{"errors": 5}'):
        events = every_split(session, lambda garbage=garbage: Server(error_map=garbage))
        assert last(events) == Done(frozenset(FEATURES), {}, b""), garbage


def test_a_refused_error_map_leaves_none():
    events = converse(session(), Server(error_map=Status.KEY_ENOENT))
    assert last(events) == Done(frozenset(FEATURES), None, b"")


def test_no_error_map_without_xerror():
    events = converse(session(), Server(withhold=(Feature.XERROR,)))
    assert sent_opcodes(events) == [Opcode.HELLO]
    assert last(events).error_map is None


# --------------------------------------------------------------------- SASL

@pytest.mark.parametrize("mech", ["SCRAM-SHA1", "SCRAM-SHA256", "SCRAM-SHA512"])
def test_scram_success_at_every_split(mech):
    events = every_split(lambda: session(user="u", password="secret", bucket="default"),
                         lambda: Server(mechs=mech.encode()))
    assert sent_opcodes(events) == [Opcode.HELLO, Opcode.GET_ERROR_MAP, Opcode.SASL_LIST_MECHS,
                                    Opcode.SASL_AUTH, Opcode.SASL_STEP, Opcode.SELECT_BUCKET]
    auth = [parse_request(e.data) for e in events if isinstance(e, Send)][3]
    assert auth[2] == mech.encode() and auth[3].startswith(b"n,,n=u,r=")
    assert isinstance(last(events), Done)


def test_the_strongest_scram_is_chosen_on_cleartext():
    events = converse(session(user="u", password="secret"), Server())
    auth = [parse_request(e.data) for e in events if isinstance(e, Send)][3]
    assert auth[2] == b"SCRAM-SHA512"


def test_scram_with_a_wrong_password_fails_with_an_auth_error():
    events = converse(session(user="u", password="wrong"), Server(mechs=b"SCRAM-SHA256"))
    assert last(events) == Failed(RC.AUTH_ERROR, "authentication failed for user 'u' on %s (wrong user name or "
                                                 "password)" % AUTHORITY)


def test_scram_with_a_bad_server_signature_fails():
    events = every_split(lambda: session(user="u", password="secret"),
                         lambda: Server(mechs=b"SCRAM-SHA1", forge_signature=True))
    failed = last(events)
    assert isinstance(failed, Failed) and failed.rc == RC.AUTH_FAILED
    assert "signature is wrong" in failed.message


def test_success_before_the_scram_proof_is_refused():
    server = Server(mechs=b"SCRAM-SHA512",
                    auth_override=lambda req: (Status.SUCCESS, b"") if req[0] == Opcode.SASL_AUTH else None)
    failed = last(converse(session(user="u", password="secret"), server))
    assert failed.rc == RC.AUTH_FAILED and "before the SCRAM exchange ended" in failed.message


def test_a_scram_challenge_that_is_not_utf8_fails_cleanly():
    server = Server(mechs=b"SCRAM-SHA512",
                    auth_override=lambda req: (Status.AUTH_CONTINUE, b"\xff\xfe") if req[0] == Opcode.SASL_AUTH
                    else None)
    failed = last(converse(session(user="u", password="secret"), server))
    assert isinstance(failed, Failed) and failed.rc == RC.AUTH_FAILED


def test_auth_continue_steps_repeat_until_success():
    """CRAM-MD5 (forced) takes a challenge in AUTH_CONTINUE; the session
    answers each AUTH_CONTINUE with a SASL_STEP."""
    steps = []

    def cram(req: Request) -> Optional[Tuple[int, bytes]]:
        steps.append(req[0])
        if req[0] == Opcode.SASL_AUTH:
            return Status.AUTH_CONTINUE, b"<challenge-1>"
        if len(steps) < 3:
            return Status.AUTH_CONTINUE, b"<challenge-%d>" % len(steps)
        expected = hmac.new(b"secret", b"<challenge-2>", hashlib.md5).hexdigest().encode()
        return (Status.SUCCESS, b"") if req[3] == b"u " + expected else (Status.AUTH_ERROR, b"")

    sess = session(user="u", password="secret", mech_force=["CRAM-MD5"])
    events = converse(sess, Server(mechs=b"CRAM-MD5 SCRAM-SHA512", auth_override=cram))
    assert steps == [Opcode.SASL_AUTH, Opcode.SASL_STEP, Opcode.SASL_STEP]
    assert isinstance(last(events), Done)


def test_plain_over_tls_success_and_failure():
    events = every_split(lambda: session(user="u", password="secret", tls=True), Server)
    auth = [parse_request(e.data) for e in events if isinstance(e, Send)][3]
    assert auth[2:] == (b"PLAIN", b"\x00u\x00secret")
    assert isinstance(last(events), Done)
    failed = last(converse(session(user="u", password="nope", tls=True), Server()))
    assert failed.rc == RC.AUTH_ERROR and "wrong user name or password" in failed.message


def test_plain_only_on_cleartext_is_refused_unless_forced():
    failed = last(converse(session(user="u", password="secret"), Server(mechs=b"PLAIN")))
    assert failed.rc == RC.AUTH_FAILED and failed.message.startswith("cannot authenticate to %s" % AUTHORITY)
    events = converse(session(user="u", password="secret", mech_force=["PLAIN"]), Server(mechs=b"PLAIN"))
    assert isinstance(last(events), Done)


def test_no_sasl_offered_fails():
    failed = last(converse(session(user="u", password="secret"), Server(mechs=Status.UNKNOWN_COMMAND)))
    assert failed == Failed(RC.AUTH_FAILED, "%s does not offer SASL authentication (status 0x81)" % AUTHORITY)


def test_an_unexpected_auth_status_fails():
    server = Server(mechs=b"SCRAM-SHA512",
                    auth_override=lambda req: (Status.EINTERNAL, b"") if req[0] == Opcode.SASL_AUTH else None)
    failed = last(converse(session(user="u", password="secret"), server))
    assert failed == Failed(RC.AUTH_FAILED, "authentication with %s failed: status 0x84" % AUTHORITY)


# ------------------------------------------------------------ SELECT_BUCKET

@pytest.mark.parametrize("status,rc,text", [
    (Status.KEY_ENOENT, RC.BUCKET_NOT_FOUND, "bucket 'b1' does not exist"),
    (Status.EACCESS, RC.EACCESS, "no access to bucket 'b1'"),
    (Status.EINTERNAL, RC.PROTOCOL, "selecting bucket 'b1' on node1:11210 failed: status 0x84"),
])
def test_select_bucket_refused(status, rc, text):
    events = every_split(lambda: session(bucket="b1"), lambda: Server(select=status))
    failed = last(events)
    assert isinstance(failed, Failed) and failed.rc == rc and text in failed.message


def test_select_bucket_switched_off_or_not_granted_is_skipped():
    for sess, server in ((session(bucket="b1", select_bucket=False), Server()),
                         (session(bucket="b1"), Server(withhold=(Feature.SELECT_BUCKET,)))):
        events = converse(sess, server)
        assert Opcode.SELECT_BUCKET not in sent_opcodes(events)
        assert isinstance(last(events), Done)


# ---------------------------------------------------- what follows the end

def test_bytes_after_the_last_reply_are_handed_on():
    push = encode_response(0x01, 0, value=b"{}", opaque=0).replace(b"\x81", b"\x82", 1)
    trailing = push + push[:7]  # a server push and the start of another frame
    events = every_split(lambda: session(bucket="default"), Server, trailing=trailing)
    assert last(events).rest == trailing


def test_nothing_is_taken_after_done():
    sess = session(hello=False)
    assert kinds(sess.start()) == ["Done"] and sess.state is DONE
    assert sess.receive(b"\x81\x00") == []


# ------------------------------------------------------------- bad replies

def test_a_reply_with_an_unexpected_opaque_fails():
    for split in (whole, bytewise):
        events = converse(session(), Server(opaque_offset=5), split)
        assert last(events) == Failed(RC.PROTOCOL, "unexpected reply (opcode 0x1f) from %s during the handshake"
                                      % AUTHORITY)


@pytest.mark.parametrize("garbage", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x00" * 30, b"\x80" + b"\x00" * 23])
def test_garbage_fails_at_once_however_it_is_cut(garbage):
    for split in (whole, bytewise):
        sess = session()
        sess.start()
        events: List[Any] = []
        fed = 0
        for chunk in split(garbage):
            events.extend(sess.receive(chunk))
            fed += 1
            if events:
                break
        assert kinds(events) == ["Failed"] and events[0].rc == RC.PROTOCOL
        assert "magic" in events[0].message and "during the handshake" in events[0].message
        assert fed == 1, "the first bad byte is enough"


def test_a_frame_claiming_a_huge_body_fails_before_the_body():
    header = HEADER.pack(0x81, Opcode.HELLO, 0, 0, 0, 0, 1 << 30, 1, 0)
    sess = session()
    sess.start()
    failed = last(sess.receive(header))
    assert failed.rc == RC.PROTOCOL and "exceeds" in failed.message


def test_a_frame_with_inconsistent_lengths_fails():
    bad = HEADER.pack(0x81, Opcode.HELLO, 10, 0, 0, 0, 4, 1, 0) + b"abcd"
    sess = session()
    sess.start()
    assert last(sess.receive(bad)).rc == RC.PROTOCOL
    assert sess.state is FAILED and sess.receive(b"more") == []


def test_a_second_reply_to_an_earlier_request_fails():
    """A session waiting for the SASL_AUTH reply takes that opaque only."""
    sess = session(hello=False, user="u", password="secret", tls=True)
    sess.start()
    sess.receive(encode_response(Opcode.SASL_LIST_MECHS, 0, value=b"PLAIN", opaque=1))
    assert sess.state is AUTH
    assert kinds(sess.receive(encode_response(Opcode.SASL_AUTH, 0, opaque=1))) == ["Failed"]


def test_restart_event_is_data():
    assert RestartWithoutHello("x") == RestartWithoutHello("x")
    assert Send(b"a") != Send(b"b")

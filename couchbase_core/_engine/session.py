"""The KV handshake as a sans-I/O state machine: reply bytes in, events out.

Theory of operation
-------------------

A :class:`Session` negotiates one freshly connected KV socket. It has no
socket, clock or loop: the connection feeds it the bytes it reads
(:meth:`Session.receive`), tells it when the server closed the stream
(:meth:`Session.eof`) or the connect timer expired (:meth:`Session.timeout`),
and carries out the events it returns, in order:

* :class:`Send` -- write these request bytes;
* :class:`HelloAnswered` -- HELLO got its reply: from now on silence is a
  failure, not a sign of a server that swallowed HELLO, and the rest of the
  handshake gets what is left of the connect timeout;
* :class:`Done` -- negotiated; ``rest`` holds the bytes that followed the
  last reply in the same read, for the connection's own decoder;
* :class:`Failed` -- the handshake cannot succeed (``rc``, ``message``);
* :class:`RestartWithoutHello` -- the server does not speak HELLO and the
  stream may be out of step: reconnect and skip HELLO from then on.

One request is in flight at a time, each answered before the next goes out
(plain memcached cannot be pipelined to during the handshake: see
``connection.py``)::

    HELLO ──> [GET_ERROR_MAP if XERROR granted]
          ──> [SASL_LIST_MECHS ──> SASL_AUTH ──> SASL_STEP...  if credentials]
          ──> [SELECT_BUCKET if granted, wanted and a bucket is named] ──> DONE

The reply to each state's request is handled by the function the
``_REPLY_HANDLERS`` table names for that state. Rules for servers that are
not Couchbase:

* HELLO refused (UNKNOWN_COMMAND, NOT_SUPPORTED, EACCESS): after a keyless
  HELLO the stream is intact and the handshake goes on without features;
  after a keyed one (memcached discards key-length bytes too many) it
  restarts without HELLO;
* no answer to HELLO (the connect timer expires) or the socket closed while
  HELLO waits: restart without HELLO.

Frames are cut from the byte stream by their length and each is decoded by
:class:`~couchbase_core._engine.protocol.FrameDecoder`, so the session
never consumes a byte beyond its last reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Union

from couchbase_core._engine import sasl as _sasl
from couchbase_core._engine.protocol import (
    F_OPAQUE,
    F_OPCODE,
    F_STATUS,
    F_VALUE,
    HEADER_LEN,
    Feature,
    Frame,
    FrameDecoder,
    FrameError,
    Opcode,
    Status,
    decode_error_map,
    decode_hello,
    encode_request,
    error_map_body,
    frame_end,
    hello_body,
)
from couchbase_core.exceptions import RC

__all__ = ["Session", "Send", "HelloAnswered", "Done", "Failed", "RestartWithoutHello", "Event",
           "HELLO", "ERROR_MAP", "LIST_MECHS", "AUTH", "SELECT_BUCKET", "DONE", "FAILED", "RESTART",
           "IDLE"]

# States: the request whose reply is awaited, then one of three ends.
IDLE = "idle"
HELLO = "hello"
ERROR_MAP = "error-map"
LIST_MECHS = "list-mechs"
AUTH = "auth"
SELECT_BUCKET = "select-bucket"
DONE = "done"
FAILED = "failed"
RESTART = "restart"
_ENDED = (DONE, FAILED, RESTART)

#: HELLO statuses meaning "this server does not speak HELLO".
HELLO_REFUSED = frozenset({Status.UNKNOWN_COMMAND, Status.NOT_SUPPORTED, Status.EACCESS})


@dataclass(frozen=True)
class Send:
    """Write ``data`` (one request) to the server."""

    data: bytes


@dataclass(frozen=True)
class HelloAnswered:
    """HELLO was answered: ``granted`` features, or None when the server
    refused HELLO (it does not speak it; skip it on later sockets)."""

    granted: Optional[FrozenSet[int]]


@dataclass(frozen=True)
class Done:
    """The handshake succeeded. ``error_map`` is None when none was
    fetched; ``rest`` is what followed the last reply."""

    features: FrozenSet[int]
    error_map: Optional[Dict[int, Dict[str, Any]]]
    rest: bytes = b""


@dataclass(frozen=True)
class Failed:
    """The handshake failed for good on this socket."""

    rc: int
    message: str


@dataclass(frozen=True)
class RestartWithoutHello:
    """The server does not speak HELLO and the stream may be out of step:
    reconnect, and do not send HELLO to this node again."""

    reason: str


Event = Union[Send, HelloAnswered, Done, Failed, RestartWithoutHello]


class Session:
    """The handshake of one KV socket (see the module docs).

    Args:
        authority: ``host:port`` of the server, for messages.
        next_opaque: gives the opaque of each request.
        hello: send HELLO (False once the node showed it does not speak it).
        features: HELLO features to ask for.
        agent: HELLO key (the agent name); ``b""`` sends a keyless HELLO,
            which plain memcached answers at once.
        user, password: SASL credentials; no authentication when ``user``
            is None.
        mech_force: SASL mechanisms to use, overriding the usual choice.
        bucket: the bucket to select (SELECT_BUCKET), if any.
        select_bucket: whether to send SELECT_BUCKET when it is granted.
        tls: the stream is encrypted (PLAIN becomes acceptable).
    """

    def __init__(self, authority: str, next_opaque: Callable[[], int], *, hello: bool = True,
                 features: Sequence[int] = (), agent: bytes = b"", user: Optional[str] = None,
                 password: Optional[str] = None, mech_force: Optional[List[str]] = None,
                 bucket: Optional[str] = None, select_bucket: bool = True, tls: bool = False) -> None:
        self.authority = authority
        self.state = IDLE
        #: Features granted by HELLO (empty without HELLO).
        self.features: FrozenSet[int] = frozenset()
        self._next_opaque = next_opaque
        self._hello = hello
        self._wanted = tuple(features)
        self._agent = agent
        self._user = user
        self._password = password
        self._mech_force = mech_force
        self._bucket = bucket
        self._select_bucket = select_bucket
        self._tls = tls
        self._opaque = 0
        self._mech: Optional[_sasl.Mechanism] = None
        self._error_map: Optional[Dict[int, Dict[str, Any]]] = None
        self._buf = bytearray()

    def __repr__(self) -> str:
        return "<Session %s %s>" % (self.authority, self.state)

    @property
    def awaiting_hello(self) -> bool:
        """HELLO is out and unanswered: silence or a closed socket now mean
        a server that does not speak HELLO."""
        return self.state is HELLO

    @property
    def ended(self) -> bool:
        """Done, failed, or told to restart: feeds no more."""
        return self.state in _ENDED

    # ------------------------------------------------------------- inputs

    def start(self) -> List[Event]:
        """The first events: HELLO (or the step after it when HELLO is off)."""
        if self.state is not IDLE:
            raise RuntimeError("the session already started")
        if not self._hello:
            return self._after_hello()
        return self._request(HELLO, Opcode.HELLO, self._agent, b"", hello_body(self._wanted))

    def receive(self, data: bytes) -> List[Event]:
        """Feed bytes read from the server; return the events they cause."""
        if self.state in _ENDED or self.state is IDLE:
            return []
        buf = self._buf
        buf += data
        out: List[Event] = []
        while self.state not in _ENDED:
            try:
                frame = self._next_frame()
            except FrameError as exc:
                out.append(self._fail(RC.PROTOCOL, "invalid data from %s during the handshake: %s"
                                      % (self.authority, exc)))
                break
            if frame is None:
                break
            if frame[F_OPAQUE] != self._opaque:
                out.append(self._fail(RC.PROTOCOL, "unexpected reply (opcode 0x%02x) from %s during the handshake"
                                      % (frame[F_OPCODE], self.authority)))
                break
            out.extend(_REPLY_HANDLERS[self.state](self, frame))
        return out

    def eof(self) -> List[Event]:
        """The server closed the stream."""
        if self.state in _ENDED:
            return []
        if self.state is HELLO:
            return [self._restart("%s closed the connection on HELLO" % self.authority)]
        return [self._fail(RC.NETWORK, "connection to %s closed by the server" % self.authority)]

    def timeout(self, seconds: float) -> List[Event]:
        """The connect timer (``seconds`` long in all) expired."""
        if self.state in _ENDED:
            return []
        if self.state is HELLO:
            # The server swallowed HELLO without a word.
            return [self._restart("%s did not answer HELLO" % self.authority)]
        return [self._fail(RC.CONNECT, "timed out negotiating with %s after %.1fs" % (self.authority, seconds))]

    # ------------------------------------------------------------ framing

    def _next_frame(self) -> Optional[Frame]:
        """Cut the next whole frame off the buffer (None: not complete yet).
        An incomplete header is checked at once, so garbage fails early."""
        buf = self._buf
        if not buf:
            return None
        if len(buf) < HEADER_LEN:
            FrameDecoder().feed(bytes(buf))  # raises on a bad magic
            return None
        end = frame_end(buf)
        if len(buf) < end:
            FrameDecoder().feed(bytes(buf[:HEADER_LEN]))  # raises on a bad magic or size
            return None
        frames = FrameDecoder().feed(bytes(buf[:end]))
        del buf[:end]
        return frames[0]

    # ------------------------------------------------------------- steps

    def _request(self, state: str, opcode: int, key: bytes, extras: bytes, value: bytes) -> List[Event]:
        self.state = state
        self._opaque = self._next_opaque()
        return [Send(encode_request(opcode, key, extras, value, opaque=self._opaque))]

    def _fail(self, rc: int, message: str) -> Failed:
        self.state = FAILED
        self._mech = None
        return Failed(rc, message)

    def _restart(self, reason: str) -> RestartWithoutHello:
        self.state = RESTART
        return RestartWithoutHello(reason)

    def _on_hello(self, frame: Frame) -> List[Event]:
        status = frame[F_STATUS]
        if status == Status.SUCCESS:
            self.features = decode_hello(frame[F_VALUE])
            return [HelloAnswered(self.features)] + self._after_hello()
        if status in HELLO_REFUSED:
            # Not a Couchbase server. After a keyed HELLO plain memcached may
            # be out of step with us: start over on a fresh socket. After a
            # keyless one the stream is intact.
            if self._agent:
                return [HelloAnswered(None),
                        self._restart("%s refused HELLO (status 0x%02x)" % (self.authority, status))]
            self.features = frozenset()
            return [HelloAnswered(None)] + self._after_hello()
        return [self._fail(RC.PROTOCOL, "%s answered HELLO with status 0x%02x" % (self.authority, status))]

    def _after_hello(self) -> List[Event]:
        if Feature.XERROR in self.features:
            return self._request(ERROR_MAP, Opcode.GET_ERROR_MAP, b"", b"", error_map_body())
        return self._authenticate()

    def _on_error_map(self, frame: Frame) -> List[Event]:
        if frame[F_STATUS] == Status.SUCCESS:
            try:
                self._error_map = decode_error_map(frame[F_VALUE])
            except FrameError:  # a hostile map: go on without it
                self._error_map = {}
        return self._authenticate()

    def _authenticate(self) -> List[Event]:
        if self._user is None:
            return self._select()
        return self._request(LIST_MECHS, Opcode.SASL_LIST_MECHS, b"", b"", b"")

    def _on_mechs(self, frame: Frame) -> List[Event]:
        if frame[F_STATUS] != Status.SUCCESS:
            return [self._fail(RC.AUTH_FAILED, "%s does not offer SASL authentication (status 0x%02x)"
                               % (self.authority, frame[F_STATUS]))]
        offered = frame[F_VALUE].decode("ascii", "replace").split()
        try:
            mech = self._mech = _sasl.choose_mechanism(offered, self._user or "", self._password or "",
                                                       tls=self._tls, forced=self._mech_force)
        except _sasl.SaslError as exc:
            return [self._fail(RC.AUTH_FAILED, "cannot authenticate to %s: %s" % (self.authority, exc))]
        return self._request(AUTH, Opcode.SASL_AUTH, mech.name.encode("ascii"), b"", mech.start())

    def _on_auth(self, frame: Frame) -> List[Event]:
        status = frame[F_STATUS]
        mech = self._mech
        assert mech is not None
        try:
            if status == Status.AUTH_CONTINUE:
                return self._request(AUTH, Opcode.SASL_STEP, mech.name.encode("ascii"), b"", mech.step(frame[F_VALUE]))
            if status == Status.SUCCESS:
                if isinstance(mech, _sasl.Scram):
                    mech.finish(frame[F_VALUE])
                self._mech = None
                return self._select()
        except (_sasl.SaslError, UnicodeError) as exc:  # UnicodeError: a challenge that is not UTF-8
            return [self._fail(RC.AUTH_FAILED, "authentication with %s failed: %s" % (self.authority, exc))]
        if status in (Status.AUTH_ERROR, Status.EACCESS):
            return [self._fail(RC.AUTH_ERROR, "authentication failed for user %r on %s (wrong user name or "
                               "password)" % (self._user, self.authority))]
        return [self._fail(RC.AUTH_FAILED, "authentication with %s failed: status 0x%02x" % (self.authority, status))]

    def _select(self) -> List[Event]:
        bucket = self._bucket
        if bucket and Feature.SELECT_BUCKET in self.features and self._select_bucket:
            return self._request(SELECT_BUCKET, Opcode.SELECT_BUCKET, bucket.encode("utf-8"), b"", b"")
        return self._done()

    def _on_selected(self, frame: Frame) -> List[Event]:
        status = frame[F_STATUS]
        bucket = self._bucket
        if status == Status.SUCCESS:
            return self._done()
        if status == Status.KEY_ENOENT:
            return [self._fail(RC.BUCKET_NOT_FOUND, "bucket %r does not exist" % bucket)]
        if status == Status.EACCESS:
            return [self._fail(RC.EACCESS, "no access to bucket %r (it does not exist, or the user may not use it)"
                               % bucket)]
        return [self._fail(RC.PROTOCOL, "selecting bucket %r on %s failed: status 0x%02x"
                           % (bucket, self.authority, status))]

    def _done(self) -> List[Event]:
        self.state = DONE
        rest = bytes(self._buf)
        del self._buf[:]
        return [Done(self.features, self._error_map, rest)]


#: State -> handler of the reply to that state's request.
_REPLY_HANDLERS: Dict[str, Callable[[Session, Frame], List[Event]]] = {
    HELLO: Session._on_hello,
    ERROR_MAP: Session._on_error_map,
    LIST_MECHS: Session._on_mechs,
    AUTH: Session._on_auth,
    SELECT_BUCKET: Session._on_selected,
}

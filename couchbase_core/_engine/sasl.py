"""SASL client mechanisms, sans-I/O (spec/sasl.md).

A mechanism object produces the bytes of each step and checks the server's
answers; the connection carries them in SASL_AUTH / SASL_STEP frames.

Choosing a mechanism (libcouchbase 3.x rules, spec §3): a forced list
(``sasl_mech_force``) wins; over TLS, PLAIN; otherwise the strongest SCRAM
the server lists. PLAIN (or CRAM-MD5) on a cleartext connection is refused
unless the user forced it: it would send the password (or a weak hash of it)
over the wire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict
from typing import List, Optional, Sequence

__all__ = ["Mechanism", "Plain", "CramMD5", "Scram", "choose_mechanism", "SaslError", "STRENGTH"]

#: Strongest first.
STRENGTH = ("SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1", "CRAM-MD5", "PLAIN")

_DIGESTS = {"SCRAM-SHA512": "sha512", "SCRAM-SHA256": "sha256", "SCRAM-SHA1": "sha1"}

#: The most PBKDF2 iterations a server may ask for. The count comes from the
#: server and PBKDF2 runs on the event loop, where every other greenlet
#: waits for it: 3,000,000 SHA-512 iterations take seconds. Couchbase
#: Server uses 15,000 by default; a server asking for more than this is
#: refused (AuthError naming this constant).
MAX_SCRAM_ITERATIONS = 100000

#: Salted passwords of recent exchanges, so reconnecting (to each node of
#: the cluster, after every failure) does not run PBKDF2 again:
#: (digest, sha256(password), salt, iterations) -> salted password.
_SALTED: "OrderedDict[tuple, bytes]" = OrderedDict()
_SALTED_MAX = 16


def _salted_password(digest: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    key = (digest, hashlib.sha256(password).digest(), salt, iterations)
    salted = _SALTED.get(key)
    if salted is None:
        salted = hashlib.pbkdf2_hmac(digest, password, salt, iterations)
        _SALTED[key] = salted
        while len(_SALTED) > _SALTED_MAX:
            _SALTED.popitem(last=False)
    else:
        _SALTED.move_to_end(key)
    return salted


class SaslError(Exception):
    """The exchange cannot go on (bad server message, failed verification,
    no acceptable mechanism)."""


class Mechanism:
    """One client-side exchange."""

    name = ""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def start(self) -> bytes:
        """The SASL_AUTH value."""
        raise NotImplementedError

    def step(self, challenge: bytes) -> bytes:
        """The SASL_STEP value answering an AUTH_CONTINUE ``challenge``."""
        raise SaslError("%s does not take a second step" % self.name)

    def finish(self, final: bytes) -> None:
        """Check the SUCCESS reply's value (raises SaslError if it is wrong)."""


class Plain(Mechanism):
    """RFC 4616: ``\\0user\\0password`` (only over TLS unless forced)."""

    name = "PLAIN"

    def start(self) -> bytes:
        return b"\x00" + self.user.encode("utf-8") + b"\x00" + self.password.encode("utf-8")


class CramMD5(Mechanism):
    """RFC 2195 challenge-response (old servers)."""

    name = "CRAM-MD5"

    def start(self) -> bytes:
        return b""

    def step(self, challenge: bytes) -> bytes:
        digest = hmac.new(self.password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
        return self.user.encode("utf-8") + b" " + digest.encode("ascii")


def _saslname(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


class Scram(Mechanism):
    """RFC 5802 SCRAM with SHA-1, SHA-256 or SHA-512, no channel binding."""

    def __init__(self, name: str, user: str, password: str, cnonce: Optional[str] = None) -> None:
        Mechanism.__init__(self, user, password)
        if name not in _DIGESTS:
            raise SaslError("unknown SCRAM mechanism %s" % name)
        self.name = name
        self.digest = _DIGESTS[name]
        self.cnonce = cnonce or binascii.hexlify(os.urandom(8)).decode("ascii")
        self._bare = ""
        self._server_signature = b""

    def start(self) -> bytes:
        self._bare = "n=%s,r=%s" % (_saslname(self.user), self.cnonce)
        return ("n,," + self._bare).encode("utf-8")

    def step(self, challenge: bytes) -> bytes:
        server_first = challenge.decode("utf-8")
        try:
            fields = dict(item.split("=", 1) for item in server_first.split(","))
            nonce = fields["r"]
            salt = base64.b64decode(fields["s"])
            iterations = int(fields["i"])
        except (KeyError, ValueError, binascii.Error) as exc:
            raise SaslError("malformed SCRAM server-first message") from exc
        if not nonce.startswith(self.cnonce) or len(nonce) <= len(self.cnonce) or iterations < 1:
            raise SaslError("the server's SCRAM nonce or iteration count is invalid")
        if iterations > MAX_SCRAM_ITERATIONS:
            raise SaslError("the server asks for %d SCRAM iterations, more than the limit of %d "
                            "(sasl.MAX_SCRAM_ITERATIONS)" % (iterations, MAX_SCRAM_ITERATIONS))
        salted = _salted_password(self.digest, self.password.encode("utf-8"), salt, iterations)
        client_key = hmac.new(salted, b"Client Key", self.digest).digest()
        stored_key = hashlib.new(self.digest, client_key).digest()
        without_proof = "c=biws,r=" + nonce
        auth_message = ",".join((self._bare, server_first, without_proof)).encode("utf-8")
        signature = hmac.new(stored_key, auth_message, self.digest).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", self.digest).digest()
        self._server_signature = hmac.new(server_key, auth_message, self.digest).digest()
        return (without_proof + ",p=" + base64.b64encode(proof).decode("ascii")).encode("utf-8")

    def finish(self, final: bytes) -> None:
        if not self._server_signature:
            # SUCCESS before our proof went out: the server never checked
            # the password, nor proved it knows it.
            raise SaslError("the server accepted the login before the SCRAM exchange ended")
        text = final.decode("utf-8", "replace")
        if not text.startswith("v="):
            raise SaslError("the server did not prove it knows the password (no SCRAM signature)")
        try:
            theirs = base64.b64decode(text[2:].split(",")[0], validate=True)
        except binascii.Error as exc:
            raise SaslError("malformed SCRAM server signature") from exc
        if not theirs or not hmac.compare_digest(theirs, self._server_signature):
            raise SaslError("the server's SCRAM signature is wrong")


def choose_mechanism(offered: Sequence[str], user: str, password: str, tls: bool,
                     forced: Optional[List[str]] = None) -> Mechanism:
    """Pick and build the mechanism for ``offered`` (the server's list)."""
    offered_set = {m.upper() for m in offered}
    if forced:
        for name in forced:
            name = name.upper()
            if name in offered_set:
                return _build(name, user, password)
        raise SaslError("none of the forced SASL mechanisms (%s) is offered by the server (%s)"
                        % (" ".join(forced), " ".join(offered)))
    if tls and "PLAIN" in offered_set:
        return Plain(user, password)
    for name in STRENGTH[:3]:
        if name in offered_set:
            return _build(name, user, password)
    raise SaslError("the server offers only %s, which would expose the password on a cleartext connection; "
                    "use TLS (couchbases://) or force it with sasl_mech_force=PLAIN"
                    % (" ".join(offered) or "nothing"))


def _build(name: str, user: str, password: str) -> Mechanism:
    if name == "PLAIN":
        return Plain(user, password)
    if name == "CRAM-MD5":
        return CramMD5(user, password)
    return Scram(name, user, password)

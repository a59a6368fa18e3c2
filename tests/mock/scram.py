"""The tests' own SASL client: SCRAM (RFC 5802, spec/sasl.md §6) and PLAIN.

Written from the spec for the emulator's tests, sharing nothing with the
project's client engine or with the emulator's server side, so that a
mistake in either shows up as a failed login instead of cancelling out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from typing import Iterable, List, Optional, Tuple

from tests.mock.rawclient import RawClient

__all__ = ["ScramClient", "login", "handshake", "MECH_DIGEST"]

#: Mechanism name (Couchbase spelling) -> hashlib name.
MECH_DIGEST = {"SCRAM-SHA512": "sha512", "SCRAM-SHA256": "sha256", "SCRAM-SHA1": "sha1"}

SASL_LIST_MECHS, SASL_AUTH, SASL_STEP = 0x20, 0x21, 0x22
HELLO, SELECT_BUCKET = 0x1F, 0x89
AUTH_CONTINUE = 0x21


class ScramClient:
    """One SCRAM exchange, client side."""

    def __init__(self, mechanism: str, user: str, password: str, cnonce: Optional[str] = None) -> None:
        self.mechanism = mechanism
        self.digest = MECH_DIGEST[mechanism]
        self.user = user
        self.password = password
        self.cnonce = cnonce if cnonce is not None else os.urandom(8).hex()
        self.server_signature = b""

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, self.digest).digest()

    @property
    def first_bare(self) -> str:
        name = self.user.replace("=", "=3D").replace(",", "=2C")
        return "n=%s,r=%s" % (name, self.cnonce)

    def first(self) -> str:
        """client-first-message."""
        return "n,," + self.first_bare

    def final(self, server_first: str) -> str:
        """client-final-message for ``server_first`` (remembers the server
        signature to expect)."""
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        nonce = fields["r"]
        if not nonce.startswith(self.cnonce) or len(nonce) <= len(self.cnonce):
            raise ValueError("the server nonce does not extend ours: %r" % server_first)
        salt = base64.b64decode(fields["s"])
        iterations = int(fields["i"])
        salted = hashlib.pbkdf2_hmac(self.digest, self.password.encode("utf-8"), salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.digest, client_key).digest()
        without_proof = "c=biws,r=" + nonce
        auth_message = ",".join((self.first_bare, server_first, without_proof)).encode("utf-8")
        signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = self._hmac(salted, b"Server Key")
        self.server_signature = self._hmac(server_key, auth_message)
        return without_proof + ",p=" + base64.b64encode(proof).decode("ascii")

    def verify(self, server_final: str) -> bool:
        """True when the server proved it knows the password too."""
        if not server_final.startswith("v="):
            return False
        return hmac.compare_digest(base64.b64decode(server_final[2:]), self.server_signature)


def mechanisms(client: RawClient) -> List[str]:
    """SASL_LIST_MECHS, split on whitespace."""
    response = client.request(SASL_LIST_MECHS)
    assert response.status == 0, response
    return response.value.decode("ascii").split()


def login(client: RawClient, user: str, password: str, mechanism: str = "SCRAM-SHA512") -> None:
    """Authenticate ``client`` with ``mechanism`` (SCRAM-* or PLAIN); asserts
    success and, for SCRAM, the server's signature."""
    if mechanism == "PLAIN":
        response = client.request(SASL_AUTH, key=b"PLAIN", value=b"\0%s\0%s" % (user.encode(), password.encode()))
        assert response.status == 0, response
        return
    scram = ScramClient(mechanism, user, password)
    first = client.request(SASL_AUTH, key=mechanism.encode(), value=scram.first().encode())
    assert first.status == AUTH_CONTINUE, first
    final = client.request(SASL_STEP, key=mechanism.encode(), value=scram.final(first.value.decode()).encode())
    assert final.status == 0, final
    assert scram.verify(final.value.decode()), "the server's SCRAM signature is wrong: %r" % (final.value,)


def hello(client: RawClient, features: Iterable[int], agent: bytes = b"fidelity/1") -> Tuple[int, ...]:
    """HELLO; the granted feature codes."""
    wanted = b"".join(struct.pack(">H", f) for f in features)
    response = client.request(HELLO, key=agent, value=wanted)
    assert response.status == 0, response
    return tuple(struct.unpack(">%dH" % (len(response.value) // 2), response.value))


def handshake(host: str, port: int, user: str, password: str, bucket: Optional[str],
              features: Iterable[int] = (0x07, 0x08, 0x0B), mechanism: Optional[str] = None,
              timeout: float = 10.0) -> RawClient:
    """Connect the way libcouchbase does: HELLO, SASL_LIST_MECHS, the
    strongest SCRAM offered, SELECT_BUCKET (spec/kv-protocol.md §4)."""
    client = RawClient(host, port, timeout=timeout)
    granted = hello(client, features)
    offered = mechanisms(client)
    if mechanism is None:
        mechanism = next(m for m in ("SCRAM-SHA512", "SCRAM-SHA256", "SCRAM-SHA1") if m in offered)
    assert mechanism in offered, offered
    login(client, user, password, mechanism)
    if bucket is not None:
        assert 0x08 in granted, granted
        response = client.request(SELECT_BUCKET, key=bucket.encode())
        assert response.status == 0, response
    return client

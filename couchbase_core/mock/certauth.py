"""Client certificate (X.509) authentication, as Couchbase Server does it.

The server's setting has a state and rules that map a certificate to a
user name:

- ``enable``: a client *may* present a certificate signed by a trusted CA;
  if it does, the certificate alone authenticates the connection, and a
  certificate naming no known user is refused. Clients without one log in
  as usual (SASL, HTTP basic auth).
- ``mandatory``: the TLS handshake fails without a trusted certificate.

A rule names where the user name is (``subject.cn``, ``san.dnsname``,
``san.email``, ``san.uri``) and a prefix stripped from it (``prefix``).
On the KV port an authenticated connection skips SASL altogether (the
server answers SASL commands with NOT_SUPPORTED) but still selects its
bucket; HTTP services ignore basic auth (SDK RFC 0036).
"""

from __future__ import annotations

import ssl
from typing import Any, Dict, Optional, Tuple

__all__ = ["CertAuthSettings", "STATES", "PATHS", "identify"]

#: States accepted for ``--client-cert-auth``.
STATES = ("enable", "mandatory")
#: Where a user name may be read from, with the certificate field it means.
PATHS = {"subject.cn": None, "san.dnsname": "DNS", "san.email": "email", "san.uri": "URI"}


class CertAuthSettings:
    """How client certificates are checked and mapped to users.

    Args:
        ca_file: PEM file of the CA certificates that sign client certificates.
        state: ``enable`` or ``mandatory``.
        path: where the user name is (see :data:`PATHS`).
        prefix: stripped from the start of the name; a certificate whose
            name lacks it names no user.
    """

    def __init__(self, ca_file: str, state: str = "enable", path: str = "subject.cn", prefix: str = "") -> None:
        if state not in STATES:
            raise ValueError("client certificate state must be one of %s, not %r" % (", ".join(STATES), state))
        if path not in PATHS:
            raise ValueError("client certificate path must be one of %s, not %r" % (", ".join(PATHS), path))
        self.ca_file = ca_file
        self.state = state
        self.path = path
        self.prefix = prefix

    def apply(self, context: ssl.SSLContext) -> None:
        """Make a server context ask for (or require) client certificates."""
        context.load_verify_locations(cafile=self.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if self.state == "mandatory" else ssl.CERT_OPTIONAL

    def user_name(self, peercert: Optional[Dict[str, Any]]) -> Optional[str]:
        """The user name a verified certificate (``getpeercert()``) carries,
        or None when it names nobody under the rule."""
        if not peercert:
            return None
        for candidate in _names(peercert, self.path):
            if candidate.startswith(self.prefix) and len(candidate) > len(self.prefix):
                return candidate[len(self.prefix):]
        return None


def _names(peercert: Dict[str, Any], path: str) -> Tuple[str, ...]:
    kind = PATHS[path]
    if kind is None:
        return tuple(value for rdn in peercert.get("subject", ()) for name, value in rdn if name == "commonName")
    return tuple(value for name, value in peercert.get("subjectAltName", ()) if name == kind)


def identify(cluster: Any, user: Optional[str]) -> Optional[Tuple[str, Optional[Any]]]:
    """``(kind, None)`` for the user a certificate named (``"admin"`` for the
    administrator, ``"rbac"`` for a known RBAC user), or None if unknown."""
    if user is None:
        return None
    if user == cluster.admin_user:
        return "admin", None
    if user in cluster.users:
        return "rbac", None
    return None

"""TLS without a socket: :class:`ssl.SSLObject` over memory BIOs.

The engine owns its non-blocking sockets; TLS is a pure transformation
between the bytes on the wire and the application's bytes, so it fits the
evented design: feed received ciphertext in, get plaintext out; put
plaintext in, get ciphertext to send.
"""

from __future__ import annotations

import ssl
import warnings
from typing import Optional

from couchbase_core.exceptions import ArgumentError

__all__ = ["TLSSession", "make_context", "describe_handshake_error", "InsecureTLSWarning"]


class InsecureTLSWarning(UserWarning):
    """TLS certificate verification was switched off (``ssl=no_verify``)."""


def make_context(certpath: Optional[str], verify: bool = True) -> ssl.SSLContext:
    """A client context. ``certpath`` names the CA (or server) certificate
    to trust; without it the system's trust store is used. ``verify=False``
    accepts any certificate: insecure, for tests only, and it warns.

    Raises:
        ArgumentError: ``certpath`` is missing, unreadable, a directory or
            not PEM certificates (the message names the path and why).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if certpath:
        try:
            context.load_verify_locations(cafile=certpath)
        except IsADirectoryError:
            raise ArgumentError("certpath %r is a directory; it must name a PEM file of CA certificates"
                                % certpath) from None
        except OSError as exc:  # FileNotFoundError, PermissionError...
            if isinstance(exc, ssl.SSLError):
                raise ArgumentError({"message": "certpath %r holds no usable PEM certificate (%s)"
                                     % (certpath, describe_handshake_error(exc)), "inner_cause": exc}) from None
            raise ArgumentError({"message": "certpath %r cannot be read: %s" % (certpath, exc.strerror or exc),
                                 "inner_cause": exc}) from None
    if not verify:
        warnings.warn("TLS certificate verification is disabled (ssl=no_verify): the connection is encrypted "
                      "but the server is not authenticated", InsecureTLSWarning, stacklevel=3)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def describe_handshake_error(exc: ssl.SSLError) -> str:
    """Why a handshake failed, as specifically as the error says it
    (``certificate verify failed: unable to get local issuer certificate``
    gives the part after the colon)."""
    return getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)


class TLSSession:
    """One TLS client session."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        hostname = server_hostname if context.check_hostname else None
        self._obj = context.wrap_bio(self._in, self._out, server_side=False, server_hostname=hostname)
        self.established = False

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete. Raises
        :class:`ssl.SSLError` (e.g. a certificate that does not verify)."""
        try:
            self._obj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        self.established = True
        return True

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext from the socket; return the plaintext it completes."""
        if data:
            self._in.write(data)
        if not self.established:
            return b""
        chunks = []
        while True:
            try:
                chunk = self._obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt application bytes (collect them with :meth:`outgoing`)."""
        view = memoryview(data)
        while view:
            written = self._obj.write(view)
            view = view[written:]

    def outgoing(self) -> bytes:
        """Ciphertext waiting to be sent."""
        return self._out.read()

    @property
    def eof(self) -> bool:
        """The peer closed the TLS session."""
        return self._in.eof

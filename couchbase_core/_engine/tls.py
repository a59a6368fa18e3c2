"""TLS without a socket: :class:`ssl.SSLObject` over memory BIOs.

The engine owns its non-blocking sockets; TLS is a pure transformation
between the bytes on the wire and the application's bytes, so it fits the
evented design: feed received ciphertext in, get plaintext out; put
plaintext in, get ciphertext to send.
"""

from __future__ import annotations

import ssl
import warnings
from typing import Callable, Optional

from couchbase_core.exceptions import ArgumentError

__all__ = ["TLSSession", "make_context", "describe_handshake_error", "InsecureTLSWarning"]


class InsecureTLSWarning(UserWarning):
    """TLS certificate verification was switched off (``ssl=no_verify``)."""


def make_context(certpath: Optional[str], verify: bool = True, keypath: Optional[str] = None,
                 truststorepath: Optional[str] = None) -> ssl.SSLContext:
    """A client context.

    Without ``keypath``, ``certpath`` names the CA (or server) certificate to
    trust. With ``keypath`` the client authenticates with a certificate
    (libcouchbase's rules, which the 2.x SDK passed on): ``certpath`` is then
    the client's certificate chain and ``keypath`` its private key, both PEM.
    ``truststorepath`` names the CA certificates that verify the server; when
    it is missing, ``certpath`` is loaded as trusted certificates too, and
    without either the system's trust store is used. ``verify=False``
    accepts any server certificate: insecure, for tests only, and it warns.

    Raises:
        ArgumentError: a file is missing, unreadable, a directory or not PEM
            (the message names the option, the path and why), ``keypath``
            without ``certpath``, or a key that does not match the certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if keypath is not None and not certpath:
        raise ArgumentError("keypath %r needs certpath: the client certificate (PEM) that goes with the key"
                            % keypath)
    trust = truststorepath or certpath
    if trust:
        _load(lambda: context.load_verify_locations(cafile=trust),
              "truststorepath" if truststorepath else "certpath", trust, "CA certificates")
    if keypath is not None:
        assert certpath is not None
        _load(lambda: context.load_cert_chain(certpath, keypath), "certpath/keypath",
              "%s, %s" % (certpath, keypath), "a client certificate chain and its private key")
    if not verify:
        warnings.warn("TLS certificate verification is disabled (ssl=no_verify): the connection is encrypted "
                      "but the server is not authenticated", InsecureTLSWarning, stacklevel=3)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load(action: Callable[[], object], option: str, path: str, what: str) -> None:
    """Run one loading step of :func:`make_context`, turning its failures
    into an ArgumentError that names the option, the path and the reason."""
    try:
        action()
    except IsADirectoryError:
        raise ArgumentError("%s %r is a directory; it must name a PEM file of %s" % (option, path, what)) from None
    except OSError as exc:  # FileNotFoundError, PermissionError, ssl.SSLError...
        if isinstance(exc, ssl.SSLError):
            raise ArgumentError({"message": "%s %r holds no usable PEM %s (%s)"
                                 % (option, path, what, describe_handshake_error(exc)), "inner_cause": exc}) from None
        raise ArgumentError({"message": "%s %r cannot be read: %s" % (option, path, exc.strerror or exc),
                             "inner_cause": exc}) from None


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

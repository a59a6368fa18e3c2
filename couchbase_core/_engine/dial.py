"""Name resolution and socket creation shared by the KV and HTTP clients."""

from __future__ import annotations

import _socket
import errno
import os
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core._engine.owner import ConnectionOwner

__all__ = ["resolve", "filter_families", "open_socket", "start_connect", "CONNECT_PENDING", "describe_errno",
           "SocketFactory"]

#: connect_ex results meaning "in progress".
CONNECT_PENDING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}

ResolveCallback = Callable[[Any, Optional[BaseException]], None]
#: ``factory(family, nodelay, keepalive)`` -> a non-blocking stream socket
#: (:func:`open_socket`, or a test double such as
#: :class:`couchbase_core.testing.scripted.ScriptedSocket`).
SocketFactory = Callable[[int, bool, bool], Any]


def describe_errno(err: int) -> str:
    """``'Connection refused (ECONNREFUSED)'``."""
    return "%s (%s)" % (os.strerror(err), errno.errorcode.get(err, err))


#: ``ipv6`` option value -> address families kept.
_FAMILIES = {
    "allow": (_socket.AF_INET, _socket.AF_INET6),
    "disabled": (_socket.AF_INET,),
    "only": (_socket.AF_INET6,),
}


def filter_families(infos: List[Any], ipv6: str) -> List[Any]:
    """The ``getaddrinfo`` entries the ``ipv6`` option (``allow``,
    ``disabled``, ``only``) lets the client use."""
    keep = _FAMILIES.get(ipv6, _FAMILIES["allow"])
    return [info for info in infos if info[0] in keep]


def resolve(engine: "ConnectionOwner", host: str, port: int, callback: ResolveCallback) -> None:
    """Resolve ``host`` and call ``callback(addrinfo_list, error)``.

    Numeric addresses resolve at once; names go to the IOPS's ``resolve``
    when it has one, else to a blocking ``getaddrinfo`` whose outcome is
    reported from a zero-delay timer (never inside the caller's call).
    Addresses of a family the ``ipv6`` setting excludes are dropped; if none
    is left the callback gets an error saying so."""
    ipv6 = getattr(engine.settings, "ipv6", "allow")
    if ipv6 != "allow":
        callback = _filtered(callback, host, ipv6)
    try:
        infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM, 0, _socket.AI_NUMERICHOST)
    except _socket.gaierror:
        infos = None
    if infos:
        callback(infos, None)
        return
    resolver = getattr(engine.iops, "resolve", None)
    if resolver is not None:
        resolver(host, port, callback)
        return
    try:
        infos = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)
        error: Optional[BaseException] = None
    except OSError as exc:
        infos, error = None, exc
    engine.defer(lambda: callback(infos, error))


def _filtered(callback: ResolveCallback, host: str, ipv6: str) -> ResolveCallback:
    def filtered(infos: Any, error: Optional[BaseException]) -> None:
        if error is None and infos:
            kept = filter_families(list(infos), ipv6)
            if not kept:
                wanted = "IPv6" if ipv6 == "only" else "IPv4"
                error = OSError("ipv6=%s: %r has no %s address" % (ipv6, host, wanted))
            infos = kept
        callback(infos, error)
    return filtered


def open_socket(family: int, nodelay: bool = True, keepalive: bool = True) -> Any:
    """A non-blocking TCP socket (the raw ``_socket`` type, which gevent's
    monkeypatching leaves alone)."""
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if nodelay:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
    except OSError:
        pass
    return sock


def start_connect(addresses: List[Tuple[int, Any]], previous_error: Optional[str], nodelay: bool = True,
                  keepalive: bool = True, factory: Optional[SocketFactory] = None) -> Tuple[Any, str]:
    """Start a non-blocking connect to the first of ``addresses`` (family,
    sockaddr; each is removed as it is tried) that accepts one. Returns
    ``(socket, "")``, or ``(None, why the last attempt failed)`` when none is
    left. The caller learns the outcome from the socket becoming writable.
    Sockets come from ``factory`` (default :func:`open_socket`)."""
    error = previous_error or "no address"
    make = factory or open_socket
    while addresses:
        family, sockaddr = addresses.pop(0)
        try:
            sock = make(family, nodelay, keepalive)
        except OSError as exc:
            error = str(exc)
            continue
        err = sock.connect_ex(sockaddr)
        if err == 0 or err in CONNECT_PENDING:
            return sock, ""
        sock.close()
        error = describe_errno(err)
    return None, error

"""DNS SRV lookups for bootstrap, without blocking (libcouchbase 2.10's
``dnssrv``; docs/connection-strings.md).

Two layers:

* a sans-IO codec: :func:`encode_srv_query` builds the query datagram and
  :func:`decode_srv_response` turns a reply into :class:`SrvRecord` entries
  or raises :class:`DNSFormatError`. Everything a reply controls is bounded:
  record counts by the datagram's size, names by the 255-byte / 63-byte
  limits of RFC 1035, compression pointers by only ever pointing backwards
  (so no loop is possible) and by a jump count.
* :class:`SrvLookup`: one query over a UDP socket the engine watches
  through its IOPS (an IOEvent for the reply, a TimerEvent for the
  timeout), trying each name server in turn. It never blocks and reports
  exactly once, from the loop.

A lookup that fails in any way (no answer, NXDOMAIN, time out, a garbled
or truncated reply) is not an error for the bucket: the bootstrap then
uses the host name itself, as libcouchbase does.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import re
import struct
from typing import TYPE_CHECKING, Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from couchbase_core.iops.base import (
    LCB_READ_EVENT,
    PYCBC_EVACTION_CLEANUP,
    PYCBC_EVACTION_UNWATCH,
    PYCBC_EVACTION_WATCH,
)

if TYPE_CHECKING:  # pragma: no cover
    from couchbase_core.iops.base import IOPS

__all__ = ["SrvRecord", "SrvAnswer", "DNSFormatError", "encode_srv_query", "decode_srv_response", "srv_name",
           "order_records", "read_nameservers", "parse_nameserver", "SrvLookup", "TYPE_SRV", "MAX_RECORDS"]

log = logging.getLogger("couchbase_core.engine")

TYPE_SRV = 33
CLASS_IN = 1
#: RFC 1035 limits: a whole name (wire form), one label.
MAX_NAME = 255
MAX_LABEL = 63
#: Compression pointers followed while reading one name. Pointers must go
#: backwards, so a loop is impossible anyway; this bounds the work.
MAX_JUMPS = 64
#: SRV records kept from one answer (more are ignored).
MAX_RECORDS = 64
#: Largest datagram read (no EDNS is offered, so servers send at most 512).
MAX_DATAGRAM = 4096
#: At most this many name servers are tried (resolv.conf's MAXNS).
MAX_NAMESERVERS = 3

_HEADER = struct.Struct("!HHHHHH")
#: What an SRV target may look like to be used as a host name.
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*)(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*))*\Z")
_RR_FIXED = struct.Struct("!HHIH")
_SRV_FIXED = struct.Struct("!HHH")

RCODE_NOERROR = 0
RCODE_NXDOMAIN = 3


class DNSFormatError(ValueError):
    """A DNS reply that cannot be used (malformed, truncated, not ours)."""


class SrvRecord(NamedTuple):
    """One SRV record: where a service lives."""

    priority: int
    weight: int
    port: int
    target: str


class SrvAnswer(NamedTuple):
    """A decoded reply: its response code and the SRV records in it."""

    rcode: int
    records: List[SrvRecord]


def srv_name(host: str, tls: bool) -> str:
    """The SRV name for a bootstrap host: ``_couchbase._tcp.<host>`` (or
    ``_couchbases._tcp.<host>`` with TLS)."""
    return "%s._tcp.%s" % ("_couchbases" if tls else "_couchbase", host.rstrip("."))


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        try:
            raw = label.encode("idna") if any(ord(c) > 127 for c in label) else label.encode("ascii")
        except UnicodeError:
            raise DNSFormatError("%r is not a valid DNS name (label %r)" % (name, label)) from None
        if not raw or len(raw) > MAX_LABEL:
            raise DNSFormatError("%r is not a valid DNS name (label %r)" % (name, label))
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise DNSFormatError("%r is longer than a DNS name may be" % name)
    return bytes(out)


def encode_srv_query(name: str, ident: int) -> bytes:
    """A standard query (recursion desired) for the SRV records of ``name``."""
    header = _HEADER.pack(ident & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack("!HH", TYPE_SRV, CLASS_IN)


def _read_name(data: bytes, offset: int) -> Tuple[str, int]:
    """Read the name at ``offset``; return it and the offset after it (in
    the original position, i.e. after the first pointer if any)."""
    labels: List[str] = []
    length = 0
    jumps = 0
    end: Optional[int] = None
    pos = segment = offset
    while True:
        if pos >= len(data):
            raise DNSFormatError("a name runs past the end of the reply")
        size = data[pos]
        kind = size & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise DNSFormatError("a compression pointer is cut off")
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if end is None:
                end = pos + 2
            # Only backwards, before the part of the name read since the
            # last jump: each jump lands strictly before the previous one,
            # so reading ends. MAX_JUMPS bounds the work further.
            if target >= segment:
                raise DNSFormatError("a compression pointer does not point backwards")
            jumps += 1
            if jumps > MAX_JUMPS:
                raise DNSFormatError("too many compression pointers in one name")
            segment = pos = target
            continue
        if kind:
            raise DNSFormatError("unknown label type 0x%02x" % kind)
        pos += 1
        if size == 0:
            break
        if pos + size > len(data):
            raise DNSFormatError("a label runs past the end of the reply")
        length += size + 1
        if length + 1 > MAX_NAME:
            raise DNSFormatError("a name is longer than 255 bytes")
        labels.append(data[pos:pos + size].decode("ascii", "replace"))
        pos += size
    return ".".join(labels), (end if end is not None else pos)


def _same_name(received: str, asked: str) -> bool:
    """Names compared as DNS does: in their wire form, ignoring ASCII case."""
    try:
        return _encode_name(received).lower() == _encode_name(asked).lower()
    except DNSFormatError:
        return False


def decode_srv_response(data: bytes, ident: int, name: Optional[str] = None) -> SrvAnswer:
    """Decode a reply to the query ``ident`` (for ``name``, when given).

    Returns the response code and the SRV records of the answer section
    (other record types are skipped; at most :data:`MAX_RECORDS`). Raises
    :class:`DNSFormatError` when the reply is malformed, truncated (TC),
    answers another query, or is not a reply at all."""
    if len(data) < _HEADER.size:
        raise DNSFormatError("a reply shorter than a DNS header")
    rid, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data)
    if rid != ident & 0xFFFF:
        raise DNSFormatError("the reply answers another query (id %d, expected %d)" % (rid, ident & 0xFFFF))
    if not flags & 0x8000:
        raise DNSFormatError("not a reply (QR is 0)")
    if (flags >> 11) & 0xF:
        raise DNSFormatError("a reply to another kind of query (opcode %d)" % ((flags >> 11) & 0xF))
    if flags & 0x0200:
        raise DNSFormatError("the reply is truncated (TC); lookups over TCP are not made")
    rcode = flags & 0xF
    # Every question takes at least 5 bytes, every record 11: counts larger
    # than the datagram could hold are lies.
    room = len(data) - _HEADER.size
    if qdcount * 5 + ancount * 11 > room:
        raise DNSFormatError("the reply claims more entries (%d questions, %d answers) than its %d bytes hold"
                             % (qdcount, ancount, len(data)))
    if qdcount != 1:
        raise DNSFormatError("the reply has %d questions, expected 1" % qdcount)
    pos = _HEADER.size
    qname, pos = _read_name(data, pos)
    if pos + 4 > len(data):
        raise DNSFormatError("the question is cut off")
    qtype, _qclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    if qtype != TYPE_SRV or (name is not None and not _same_name(qname, name)):
        raise DNSFormatError("the reply is for another question (%s type %d)" % (qname, qtype))
    records: List[SrvRecord] = []
    for _ in range(ancount):
        _owner, pos = _read_name(data, pos)
        if pos + _RR_FIXED.size > len(data):
            raise DNSFormatError("a record is cut off")
        rtype, rclass, _ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
        pos += _RR_FIXED.size
        rdata_end = pos + rdlength
        if rdata_end > len(data):
            raise DNSFormatError("a record's data runs past the end of the reply")
        if rtype == TYPE_SRV and rclass == CLASS_IN:
            if rdlength < _SRV_FIXED.size + 1:
                raise DNSFormatError("an SRV record is too short")
            priority, weight, port = _SRV_FIXED.unpack_from(data, pos)
            target, after = _read_name(data, pos + _SRV_FIXED.size)
            if after > rdata_end:
                raise DNSFormatError("an SRV target runs past its record")
            # "." as the target means "no such service here" (RFC 2782); a
            # target that is no host name (binary labels...) is skipped.
            if target and port and _HOST_NAME.match(target) and len(records) < MAX_RECORDS:
                records.append(SrvRecord(priority, weight, port, target))
        pos = rdata_end
    return SrvAnswer(rcode, records)


def order_records(records: Sequence[SrvRecord]) -> List[Tuple[str, int]]:
    """Bootstrap order: lowest priority first, then heaviest weight first
    (deterministic: no weighted shuffle); duplicates dropped."""
    out: List[Tuple[str, int]] = []
    for rec in sorted(records, key=lambda r: (r.priority, -r.weight)):
        pair = (rec.target, rec.port)
        if pair not in out:
            out.append(pair)
    return out


# --------------------------------------------------------------------------
# Name servers
# --------------------------------------------------------------------------


def parse_nameserver(text: str) -> Tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"``, ``"[::1]:53"`` or ``"::1"`` ->
    (address, port). Raises ValueError for anything else (the address must
    be numeric: looking up a name server's name would need DNS)."""
    text = text.strip()
    port = 53
    host = text
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError("bad name server %r" % text)
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError("bad name server %r" % text)
        port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError("bad name server port in %r" % text)
    try:
        _socket.getaddrinfo(host, port, 0, _socket.SOCK_DGRAM, 0, _socket.AI_NUMERICHOST)
    except (_socket.gaierror, UnicodeError):
        raise ValueError("a name server must be a numeric address, not %r" % host) from None
    return host, port


def read_nameservers(path: str = "/etc/resolv.conf") -> List[Tuple[str, int]]:
    """The ``nameserver`` entries of resolv.conf (at most three), or an
    empty list when there is none or the file cannot be read."""
    out: List[Tuple[str, int]] = []
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            text = fh.read(64 * 1024)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                # resolv.conf may add a scope to link-local IPv6 (fe80::1%eth0)
                server = parse_nameserver(parts[1])
            except ValueError:
                continue
            if server not in out:
                out.append(server)
        if len(out) >= MAX_NAMESERVERS:
            break
    return out


# --------------------------------------------------------------------------
# The lookup, driven by the IOPS
# --------------------------------------------------------------------------

#: ``callback(targets, why)``: ``targets`` the ordered (host, port) list, or
#: None with ``why`` the reason the lookup gave nothing.
SrvCallback = Callable[[Optional[List[Tuple[str, int]]], str], None]


class SrvLookup:
    """Look up one SRV name on the given name servers, one after the other,
    each getting an equal share of ``timeout`` seconds. Reports once through
    ``callback`` (from an IOPS callback, never inside :meth:`start`)."""

    def __init__(self, iops: "IOPS", name: str, nameservers: Sequence[Tuple[str, int]], timeout: float,
                 callback: SrvCallback) -> None:
        self.iops = iops
        self.name = name
        self.nameservers = list(nameservers)[:MAX_NAMESERVERS]
        self.timeout = timeout
        self.callback: Optional[SrvCallback] = callback
        self.failures: List[str] = []
        self._index = 0
        self._sock: Any = None
        self._event: Any = None
        self._ident = 0
        self._timer = iops.timer_event_factory()
        self._timer._handler = self._on_timeout
        self._query = b""

    def start(self) -> None:
        """Send the first query (the outcome comes from the loop)."""
        try:
            encode_srv_query(self.name, 0)
        except DNSFormatError as exc:
            self._defer_finish(None, str(exc))
            return
        if not self.nameservers:
            self._defer_finish(None, "no name server is configured")
            return
        self._next()

    def close(self) -> None:
        """Stop without reporting (the engine is closing)."""
        self.callback = None
        self._drop_socket()
        self.iops.update_timer(self._timer, PYCBC_EVACTION_UNWATCH, 0)
        self.iops.update_timer(self._timer, PYCBC_EVACTION_CLEANUP, 0)

    def abandon_after_fork(self) -> None:
        """In a fork's child: forget everything without IOPS calls."""
        self.callback = None
        sock, self._sock = self._sock, None
        self._event = None
        if sock is not None:
            sock.close()

    # -- internals ------------------------------------------------------------

    def _next(self) -> None:
        while self._index < len(self.nameservers):
            host, port = self.nameservers[self._index]
            self._index += 1
            where = "%s:%d" % (host, port)
            try:
                family = _socket.getaddrinfo(host, port, 0, _socket.SOCK_DGRAM, 0, _socket.AI_NUMERICHOST)[0][0]
                sock = _socket.socket(family, _socket.SOCK_DGRAM)
            except OSError as exc:
                self.failures.append("%s: %s" % (where, exc))
                continue
            try:
                sock.setblocking(False)
                # connect(): the kernel delivers only this server's datagrams
                # (and reports its ICMP port unreachable as ECONNREFUSED).
                sock.connect((host, port))
                self._ident = int.from_bytes(os.urandom(2), "big")
                self._query = encode_srv_query(self.name, self._ident)
                sock.send(self._query)
            except OSError as exc:
                sock.close()
                self.failures.append("%s: %s" % (where, exc))
                continue
            self._sock = sock
            event = self._event = self.iops.io_event_factory()
            event.fd = sock.fileno()
            event._handler = self._on_readable
            self.iops.update_event(event, PYCBC_EVACTION_WATCH, LCB_READ_EVENT)
            share = self.timeout / max(1, len(self.nameservers))
            self.iops.update_timer(self._timer, PYCBC_EVACTION_WATCH, max(1, int(share * 1e6)))
            return
        self._defer_finish(None, "; ".join(self.failures) or "no name server answered")

    def _drop_socket(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            self.iops.update_event(event, PYCBC_EVACTION_UNWATCH, 0)
            self.iops.update_event(event, PYCBC_EVACTION_CLEANUP, 0)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _current(self) -> str:
        host, port = self.nameservers[self._index - 1]
        return "%s:%d" % (host, port)

    def _on_readable(self, _flags: int) -> None:
        if self._sock is None:
            return
        # A bounded number of datagrams per callback (stray ones are skipped).
        for _ in range(8):
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                if exc.errno == errno.ECONNREFUSED:
                    why = "nothing listens there (ECONNREFUSED)"
                self._server_failed(why)
                return
            if len(data) >= 2 and int.from_bytes(data[:2], "big") != self._ident:
                continue  # not the answer to our query (late, or spoofed): keep waiting
            try:
                answer = decode_srv_response(data, self._ident, self.name)
            except DNSFormatError as exc:
                self._server_failed("unusable reply: %s" % exc)
                return
            self._answered(answer)
            return

    def _answered(self, answer: SrvAnswer) -> None:
        self._stop_attempt()
        if answer.rcode == RCODE_NXDOMAIN:
            self._finish(None, "%s does not exist (NXDOMAIN)" % self.name)
        elif answer.rcode != RCODE_NOERROR:
            # SERVFAIL, REFUSED...: another server may do better
            self.failures.append("%s: response code %d" % (self._current(), answer.rcode))
            self._next()
        elif not answer.records:
            self._finish(None, "%s has no SRV records" % self.name)
        else:
            self._finish(order_records(answer.records), "")

    def _server_failed(self, why: str) -> None:
        self.failures.append("%s: %s" % (self._current(), why))
        self._stop_attempt()
        self._next()

    def _stop_attempt(self) -> None:
        self._drop_socket()
        self.iops.update_timer(self._timer, PYCBC_EVACTION_UNWATCH, 0)

    def _on_timeout(self, _flags: int) -> None:
        if self._sock is None:
            return
        self._server_failed("no reply within %.2fs" % (self.timeout / max(1, len(self.nameservers))))

    def _defer_finish(self, targets: Optional[List[Tuple[str, int]]], why: str) -> None:
        # Report from the loop, never inside start().
        timer = self._timer
        self.iops.update_timer(timer, PYCBC_EVACTION_UNWATCH, 0)
        timer._handler = lambda _flags: self._finish(targets, why)
        self.iops.update_timer(timer, PYCBC_EVACTION_WATCH, 0)

    def _finish(self, targets: Optional[List[Tuple[str, int]]], why: str) -> None:
        callback, self.callback = self.callback, None
        self._drop_socket()
        self.iops.update_timer(self._timer, PYCBC_EVACTION_UNWATCH, 0)
        self.iops.update_timer(self._timer, PYCBC_EVACTION_CLEANUP, 0)
        if callback is not None:
            callback(targets, why)

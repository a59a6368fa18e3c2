"""The raw-socket baseline: the least a pure-Python gevent client can do.

One non-blocking socket is shared by every greenlet of the process. A
caller appends a binary-protocol request to the write buffer, remembers a
callback under the request's opaque, and parks on a ``gevent.hub.Waiter``.
Two ``loop.io`` watchers do the I/O from the hub: the write watcher sends
whatever has accumulated (so concurrent requests leave in one ``send``) and
stops itself once the buffer is empty; the read watcher parses every
complete reply in what arrived and hands it to the callback of its opaque,
which for a waiting greenlet switches straight into it.

There is no timeout, reconnection, error mapping or value transcoding: it
is a ceiling to compare against, not a client.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Dict, List, Optional

from gevent.hub import Waiter, get_hub

_HEADER = struct.Struct(">BBHBBHIIQ")  # magic opcode keylen extlen datatype status/vbucket bodylen opaque cas
_SET_EXTRAS = struct.pack(">II", 0, 0)  # flags, expiry
_GET, _SET, _NOOP, _GETKQ = 0x00, 0x01, 0x0A, 0x0D
_NOT_FOUND = 0x01
_LOST = -1


class RawClient:
    """Pipelined binary-protocol client on one socket, driven by the hub."""

    def __init__(self, host: str, port: int) -> None:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._hub = get_hub()
        self._wbuf = bytearray()
        self._rbuf = bytearray()
        self._pending: Dict[int, Callable[[Any], Any]] = {}
        self._opaque = 0
        loop = self._hub.loop
        self._reader = loop.io(sock.fileno(), 1)
        self._writer = loop.io(sock.fileno(), 2)
        self._reader.start(self._on_readable)

    # -- requests -------------------------------------------------------
    def _queue(self, opcode: int, key: bytes, extras: bytes, value: bytes, callback: Callable[[Any], Any]) -> None:
        self._opaque = opaque = (self._opaque + 1) & 0xFFFFFFFF
        wbuf = self._wbuf
        wbuf += _HEADER.pack(0x80, opcode, len(key), len(extras), 0, 0,
                             len(extras) + len(key) + len(value), opaque, 0)
        wbuf += extras
        wbuf += key
        wbuf += value
        self._pending[opaque] = callback
        if not self._writer.active:
            self._writer.start(self._on_writable)

    def _call(self, opcode: int, key: bytes, extras: bytes = b"", value: bytes = b"") -> Any:
        waiter = Waiter(self._hub)
        self._queue(opcode, key, extras, value, waiter.switch)
        status, _, body = waiter.get()
        if status == _LOST:
            raise ConnectionError("raw client: connection lost")
        return status, body

    def get(self, key: str) -> Optional[bytes]:
        status, value = self._call(_GET, key.encode())
        if status == _NOT_FOUND:
            return None
        if status:
            raise RuntimeError("raw client: get %r failed with status 0x%x" % (key, status))
        return value

    def set(self, key: str, value: bytes) -> None:
        status, _ = self._call(_SET, key.encode(), _SET_EXTRAS, value)
        if status:
            raise RuntimeError("raw client: set %r failed with status 0x%x" % (key, status))

    def get_multi(self, keys: List[str]) -> Dict[str, bytes]:
        """Quiet GETKQ for every key, then a NOOP whose reply ends the batch:
        the server answers hits only, in order, before the NOOP."""
        found: Dict[bytes, bytes] = {}

        def collect(reply: Any) -> None:
            if reply[0] == 0:
                found[reply[1]] = reply[2]

        first = self._opaque + 1
        for key in keys:
            self._queue(_GETKQ, key.encode(), b"", b"", collect)
        if self._call(_NOOP, b"")[0]:
            raise RuntimeError("raw client: noop failed")
        if len(found) < len(keys):  # misses got no reply: forget their opaques
            for opaque in range(first, first + len(keys)):
                self._pending.pop(opaque & 0xFFFFFFFF, None)
        return {k.decode(): v for k, v in found.items()}

    # -- hub callbacks --------------------------------------------------
    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._wbuf)
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        del self._wbuf[:sent]
        if not self._wbuf:
            self._writer.stop()

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        buf = self._rbuf
        buf += data
        end_of_data, pos = len(buf), 0
        unpack, pending = _HEADER.unpack_from, self._pending
        while end_of_data - pos >= 24:
            _, _, keylen, extlen, _, status, bodylen, opaque, _ = unpack(buf, pos)
            end = pos + 24 + bodylen
            if end > end_of_data:
                break
            key_at = pos + 24 + extlen
            reply = (status, bytes(buf[key_at:key_at + keylen]), bytes(buf[key_at + keylen:end]))
            pos = end
            pending.pop(opaque)(reply)
        del buf[:pos]

    def _lost(self) -> None:
        self._reader.stop()
        self._writer.stop()
        pending, self._pending = self._pending, {}
        for callback in pending.values():
            callback((_LOST, b"", b""))

    def close(self) -> None:
        self._reader.stop()
        self._writer.stop()
        self._reader.close()
        self._writer.close()
        self._sock.close()

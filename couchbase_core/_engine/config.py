"""Key -> node mapping for memcached-style clusters: the ketama continuum.

spec/cluster-config.md §5: each server, named by its ``host:port`` authority,
owns 160 points on a 32-bit circle (40 MD5 digests, four little-endian
uint32 each); a key belongs to the server owning the first point at or after
the little-endian uint32 of the first four bytes of the key's MD5, wrapping
around at the end.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from typing import List, Sequence, Tuple

__all__ = ["Ketama", "authority"]

_FOUR_LE = struct.Struct("<IIII")
_ONE_LE = struct.Struct("<I")

#: Points per server = POINTS_PER_HASH * HASHES_PER_SERVER.
HASHES_PER_SERVER = 40


def authority(host: str, port: int) -> str:
    """The ``host:port`` name of a server (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


class Ketama:
    """A ketama continuum over a list of server authorities.

    ``servers`` is kept sorted byte-wise; :meth:`server_for` returns an index
    into that sorted list.
    """

    __slots__ = ("servers", "_points", "_owners")

    def __init__(self, authorities: Sequence[str]) -> None:
        if not authorities:
            raise ValueError("a continuum needs at least one server")
        self.servers: List[str] = sorted(authorities, key=lambda a: a.encode("utf-8"))
        points: List[Tuple[int, int]] = []
        for index, name in enumerate(self.servers):
            for h in range(HASHES_PER_SERVER):
                digest = hashlib.md5(("%s-%d" % (name, h)).encode("utf-8")).digest()
                for point in _FOUR_LE.unpack(digest):
                    points.append((point, index))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [i for _, i in points]

    @property
    def points(self) -> List[Tuple[int, str]]:
        """Every ``(point, authority)`` on the circle, ascending."""
        return [(p, self.servers[i]) for p, i in zip(self._points, self._owners)]

    @staticmethod
    def hash_key(key: bytes) -> int:
        """The key's position on the circle."""
        return _ONE_LE.unpack_from(hashlib.md5(key).digest())[0]

    def server_for(self, key: bytes) -> int:
        """Index (into :attr:`servers`) of the server that owns ``key``."""
        h = _ONE_LE.unpack_from(hashlib.md5(key).digest())[0]
        i = bisect.bisect_left(self._points, h)
        if i == len(self._points):
            i = 0
        return self._owners[i]

"""Keystores: where field-encryption providers get their keys by name."""

from __future__ import annotations

from typing import Dict, Optional, Union

__all__ = ["KeyStore", "InMemoryKeyStore", "InsecureKeyStore"]

KeyValue = Union[str, bytes]


class KeyStore:
    """The interface a provider needs: :meth:`get_key`. Subclass it to read
    keys from a vault, a file or the environment."""

    def get_key(self, keyName: str) -> Optional[KeyValue]:  # noqa: N803  (2.x parameter name)
        """The key stored under ``keyName`` (``str`` or ``bytes``), or None."""
        raise NotImplementedError


class InMemoryKeyStore(KeyStore):
    """Keys held in a dict, as the 2.x ``couchbase.crypto.InMemoryKeyStore``:
    for development and tests (the keys live in the process, in clear)."""

    def __init__(self) -> None:
        self.keys: Dict[str, KeyValue] = {}

    def get_key(self, keyName: str) -> Optional[KeyValue]:  # noqa: N803
        """The key stored under ``keyName``, or None (also for an empty key)."""
        return self.keys.get(keyName) or None

    def set_key(self, keyName: str, key: KeyValue) -> None:  # noqa: N803
        """Store ``key`` (``str``: its UTF-8 bytes are the key) under ``keyName``."""
        self.keys[keyName] = key


#: The name SDK RFC 32 gives the in-memory store.
InsecureKeyStore = InMemoryKeyStore

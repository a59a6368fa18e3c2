"""The bucket's field-encryption methods (2.x ``Bucket.register_crypto_provider``,
``unregister_crypto_provider``, ``encrypt_fields``, ``decrypt_fields``)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from couchbase_core.crypto.errors import CryptoProviderAliasNullError
from couchbase_core.crypto.fields import decrypt_fields, encrypt_fields
from couchbase_core.exceptions import ArgumentError

__all__ = ["CryptoMixin"]

_PROVIDER_METHODS = ("generate_iv", "encrypt", "decrypt", "sign", "verify_signature", "get_key_id")


class CryptoMixin:
    """Per-bucket registry of crypto providers, by alias (``alg``)."""

    def _crypto_providers(self) -> Dict[str, Any]:
        providers = self.__dict__.get("_crypto_registry")
        if providers is None:
            providers = self.__dict__["_crypto_registry"] = {}
        return providers

    def register_crypto_provider(self, name: str, provider: Any) -> None:
        """Use ``provider`` for fields whose spec says ``'alg': name``
        (e.g. ``'AES-256-HMAC-SHA256'``); replaces an earlier one.

        Raises:
            CryptoProviderAliasNullError: empty ``name``.
            ArgumentError: ``provider`` lacks a method of
                :class:`~couchbase_core.crypto.PythonCryptoProvider`.
        """
        if not isinstance(name, str) or not name:
            raise CryptoProviderAliasNullError("a crypto provider needs a non-empty alias")
        missing = [m for m in _PROVIDER_METHODS if not callable(getattr(provider, m, None))]
        if missing:
            raise ArgumentError("a crypto provider needs the method(s) %s" % ", ".join(missing))
        self._crypto_providers()[name] = provider

    def unregister_crypto_provider(self, name: str) -> None:
        """Forget the provider registered as ``name`` (nothing if none is)."""
        self._crypto_providers().pop(name, None)

    def encrypt_fields(self, document: Any, fieldspec: Any, prefix: Optional[str] = None) -> Dict[str, Any]:
        """Return a copy of ``document`` (a dict) with the fields of
        ``fieldspec`` (``[{'alg': alias, 'name': field}, ...]``) encrypted
        into ``<prefix><field>`` (``__crypt_`` by default). See
        :mod:`couchbase_core.crypto.fields` for the JSON shape."""
        return encrypt_fields(self._crypto_providers(), document, fieldspec, prefix)

    def decrypt_fields(self, document: Any, fieldspec: Any = None, prefix: Optional[str] = None) -> Dict[str, Any]:
        """Return a copy of ``document`` with its encrypted fields decrypted.

        Both 2.x forms work: ``decrypt_fields(doc, fieldspec, prefix)`` (2.5:
        only the fields named, each by its spec's provider) and the older
        ``decrypt_fields(doc, prefix)`` (every ``<prefix>*`` field, by its
        stored ``alg``)."""
        if isinstance(fieldspec, str) and prefix is None:
            fieldspec, prefix = None, fieldspec
        return decrypt_fields(self._crypto_providers(), document, fieldspec, prefix)

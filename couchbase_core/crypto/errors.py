"""Errors of field-level encryption (the names of SDK RFC 32, with the
``Error`` suffix of the 2.x exception tree).

``CryptoConfigError`` and its subclasses are set-up mistakes (no provider
for an alias, a key missing from the keystore, a key of the wrong size);
``CryptoExecutionError`` and its subclasses are failures while encrypting or
decrypting (a signature that does not match, a field that cannot be
decrypted). All are :class:`~couchbase_core.exceptions.CouchbaseError`.
"""

from __future__ import annotations

from couchbase_core.exceptions import CouchbaseError, CouchbaseInputError

__all__ = [
    "CryptoError", "CryptoConfigError", "CryptoExecutionError", "CryptoDependencyError",
    "CryptoProviderNotFoundError", "CryptoProviderAliasNullError", "CryptoProviderMissingPublicKeyError",
    "CryptoProviderMissingSigningKeyError", "CryptoProviderMissingPrivateKeyError",
    "CryptoProviderSigningFailedError", "CryptoProviderEncryptFailedError", "CryptoProviderDecryptFailedError",
    "CryptoProviderKeySizeError",
]


class CryptoError(CouchbaseError):
    """Base of every field-encryption error."""


class CryptoConfigError(CryptoError, CouchbaseInputError):
    """Field encryption is not set up right (provider, alias, keys)."""


class CryptoExecutionError(CryptoError):
    """Encrypting or decrypting a field failed."""


class CryptoDependencyError(CryptoConfigError, ImportError):
    """The ``cryptography`` package is missing: install the ``crypto`` extra
    (``pip install gcouchbase[crypto]``). Also an :class:`ImportError`."""


class CryptoProviderNotFoundError(CryptoConfigError):
    """No crypto provider is registered under the alias (``alg``) given."""


class CryptoProviderAliasNullError(CryptoConfigError):
    """A field spec or a registration has no (or an empty) alias."""


class CryptoProviderMissingPublicKeyError(CryptoConfigError):
    """The provider has no encryption key name, or the keystore lacks it."""


class CryptoProviderMissingSigningKeyError(CryptoConfigError):
    """The provider has no signing (HMAC) key name, or the keystore lacks it."""


class CryptoProviderMissingPrivateKeyError(CryptoConfigError):
    """An asymmetric provider has no private key (kept for the RFC's list)."""


class CryptoProviderKeySizeError(CryptoConfigError):
    """A key does not have the size the algorithm needs (32 bytes for AES-256)."""


class CryptoProviderSigningFailedError(CryptoExecutionError):
    """The signature of an encrypted field does not match: it was changed,
    or was written with other keys."""


class CryptoProviderEncryptFailedError(CryptoExecutionError):
    """A field could not be encrypted (e.g. its value is not JSON-serialisable)."""


class CryptoProviderDecryptFailedError(CryptoExecutionError):
    """A field could not be decrypted (bad shape, bad base64, bad padding)."""

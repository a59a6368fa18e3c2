"""Crypto providers: the algorithm behind an ``alg`` alias.

:class:`PythonCryptoProvider` is the interface of the 2.x SDK's providers
(the "V1" form of libcouchbase 2.10, which 2.5 used): the field code calls
``generate_iv``, ``encrypt``/``decrypt``, ``sign``/``verify_signature`` and
``get_key_id``. :class:`AES256CryptoProvider` is the ``AES-256-HMAC-SHA256``
provider of SDK RFC 32 (AES-256 in CBC mode with PKCS#7 padding, a random
16-byte IV, and an HMAC-SHA256 signature over ``kid + alg + base64(iv) +
base64(ciphertext)``), compatible with the other SDKs of that generation.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, Iterable, Optional, Union

from couchbase_core.crypto.errors import (
    CryptoDependencyError,
    CryptoProviderDecryptFailedError,
    CryptoProviderKeySizeError,
    CryptoProviderMissingPublicKeyError,
    CryptoProviderMissingSigningKeyError,
)
from couchbase_core.exceptions import ArgumentError

__all__ = ["PythonCryptoProvider", "AES256CryptoProvider", "AES256_ALG"]

#: The alias SDKs register the AES provider under.
AES256_ALG = "AES-256-HMAC-SHA256"

_IV_SIZE = 16
_KEY_SIZE = 32


def _need_cryptography() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes, padding
        from cryptography.hazmat.primitives import hmac as chmac
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError as exc:
        raise CryptoDependencyError(
            "field-level encryption needs the 'cryptography' package: install the 'crypto' extra "
            "(pip install 'gcouchbase[crypto]')") from exc
    return hashes, chmac, padding, Cipher, algorithms, modes


def _as_bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class PythonCryptoProvider:
    """Interface of a field-encryption provider (2.x ``PythonCryptoProvider``).

    Subclasses implement every method; ``inputs`` are the parts to sign, in
    order, as ``bytes``."""

    def generate_iv(self) -> bytes:
        """A fresh initialisation vector."""
        raise NotImplementedError

    def sign(self, inputs: Iterable[bytes]) -> bytes:
        """The signature of the concatenated ``inputs``."""
        raise NotImplementedError

    def verify_signature(self, inputs: Iterable[bytes], signature: bytes) -> bool:
        """True if ``signature`` is that of ``inputs`` (False or an exception
        otherwise)."""
        raise NotImplementedError

    def encrypt(self, input: bytes, iv: bytes) -> bytes:  # noqa: A002  (2.x parameter name)
        """The ciphertext of ``input``."""
        raise NotImplementedError

    def decrypt(self, input: bytes, iv: bytes) -> bytes:  # noqa: A002
        """The plaintext of ``input``."""
        raise NotImplementedError

    def get_key_id(self) -> str:
        """The key id written as ``kid``."""
        raise NotImplementedError


class AES256CryptoProvider(PythonCryptoProvider):
    """``AES-256-HMAC-SHA256`` (SDK RFC 32), as the 2.x
    ``AES256CryptoProvider(keystore, public_key_name, hmac_key_name)``.

    Args:
        keystore: where the keys are looked up (e.g. :class:`InMemoryKeyStore`).
        public_key_name: name of the 32-byte AES key; written as ``kid``.
        hmac_key_name: name of the HMAC-SHA256 signing key (any length).
        iv: a fixed IV (16 bytes) instead of a random one: for tests and the
            RFC's examples only; a fixed IV weakens the encryption.
        block_size: accepted for 2.x compatibility: it only set how the 2.x
            provider fed its cipher, the output does not depend on it.

    Raises:
        CryptoDependencyError: the ``cryptography`` package is not installed.
        ArgumentError: a missing keystore or key name, a bad ``iv``.
    """

    def __init__(self, keystore: Any, public_key_name: str, hmac_key_name: str, iv: Optional[bytes] = None,
                 block_size: int = 32) -> None:
        _need_cryptography()
        if keystore is None or not callable(getattr(keystore, "get_key", None)):
            raise ArgumentError("a keystore (an object with get_key(name)) must be provided")
        if not public_key_name:
            raise CryptoProviderMissingPublicKeyError("the public (AES) key name must be provided")
        if not hmac_key_name:
            raise CryptoProviderMissingSigningKeyError("the HMAC (signing) key name must be provided")
        if iv is not None and (not isinstance(iv, bytes) or len(iv) != _IV_SIZE):
            raise ArgumentError("iv must be %d bytes" % _IV_SIZE)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
            raise ArgumentError("block_size must be a positive int")
        self.keystore = keystore
        self.public_key_name = public_key_name
        self.hmac_key_name = hmac_key_name
        self.iv = iv
        self.block_size = block_size

    # ------------------------------------------------------------------ keys

    def _aes_key(self) -> bytes:
        key = self.keystore.get_key(self.public_key_name)
        if not key:
            raise CryptoProviderMissingPublicKeyError(
                "the keystore has no key %r (the AES key)" % self.public_key_name)
        key = _as_bytes(key)
        if len(key) != _KEY_SIZE:
            raise CryptoProviderKeySizeError(
                "key %r is %d bytes; AES-256 needs %d" % (self.public_key_name, len(key), _KEY_SIZE))
        return key

    def _hmac_key(self) -> bytes:
        key = self.keystore.get_key(self.hmac_key_name)
        if not key:
            raise CryptoProviderMissingSigningKeyError(
                "the keystore has no key %r (the HMAC key)" % self.hmac_key_name)
        return _as_bytes(key)

    # ------------------------------------------------------------ interface

    def get_key_id(self) -> str:
        """The AES key's name."""
        return self.public_key_name

    def generate_iv(self) -> bytes:
        """16 random bytes (or the fixed ``iv`` given)."""
        return self.iv if self.iv is not None else os.urandom(_IV_SIZE)

    def sign(self, inputs: Iterable[Union[str, bytes]]) -> bytes:
        """HMAC-SHA256 of the concatenated ``inputs`` with the HMAC key."""
        hashes, chmac, _padding, _c, _a, _m = _need_cryptography()
        mac = chmac.HMAC(self._hmac_key(), hashes.SHA256())
        for part in inputs:
            mac.update(_as_bytes(part))
        return mac.finalize()

    def verify_signature(self, inputs: Iterable[Union[str, bytes]], signature: bytes) -> bool:
        """Compare in constant time."""
        return hmac.compare_digest(self.sign(inputs), bytes(signature))

    def encrypt(self, input: bytes, iv: bytes) -> bytes:  # noqa: A002
        """AES-256-CBC of ``input`` with PKCS#7 padding."""
        _h, _hm, padding, Cipher, algorithms, modes = _need_cryptography()
        padder = padding.PKCS7(128).padder()
        data = padder.update(_as_bytes(input)) + padder.finalize()
        encryptor = Cipher(algorithms.AES(self._aes_key()), modes.CBC(iv)).encryptor()
        return encryptor.update(data) + encryptor.finalize()

    def decrypt(self, input: bytes, iv: bytes) -> bytes:  # noqa: A002
        """Inverse of :meth:`encrypt`.

        Raises:
            CryptoProviderDecryptFailedError: bad length, IV or padding.
        """
        _h, _hm, padding, Cipher, algorithms, modes = _need_cryptography()
        key = self._aes_key()
        try:
            decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
            data = decryptor.update(bytes(input)) + decryptor.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            return unpadder.update(data) + unpadder.finalize()
        except ValueError as exc:
            raise CryptoProviderDecryptFailedError("AES decryption failed: %s" % exc) from None

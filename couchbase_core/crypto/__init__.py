"""Field-level encryption, as in the 2.5 SDK (``couchbase.crypto``).

Set-up::

    from couchbase_core.crypto import InMemoryKeyStore, AES256CryptoProvider

    keystore = InMemoryKeyStore()
    keystore.set_key('mypublickey', '!mysecretkey#9^5usdk39d&dlf)03sL')  # 32 bytes
    keystore.set_key('myhmackey', 'myauthpassword')
    bucket.register_crypto_provider(
        'AES-256-HMAC-SHA256', AES256CryptoProvider(keystore, 'mypublickey', 'myhmackey'))

    doc = bucket.encrypt_fields({'message': 'secret'},
                                [{'alg': 'AES-256-HMAC-SHA256', 'name': 'message'}], None)
    bucket.upsert('k', doc)
    plain = bucket.decrypt_fields(bucket.get('k').value,
                                  [{'alg': 'AES-256-HMAC-SHA256', 'name': 'message'}], None)

The AES provider needs the ``cryptography`` package (the ``crypto`` extra:
``pip install 'gcouchbase[crypto]'``); without it, creating one raises
:class:`CryptoDependencyError`. Everything else here imports without it.
"""

from couchbase_core.crypto.errors import (
    CryptoConfigError,
    CryptoDependencyError,
    CryptoError,
    CryptoExecutionError,
    CryptoProviderAliasNullError,
    CryptoProviderDecryptFailedError,
    CryptoProviderEncryptFailedError,
    CryptoProviderKeySizeError,
    CryptoProviderMissingPrivateKeyError,
    CryptoProviderMissingPublicKeyError,
    CryptoProviderMissingSigningKeyError,
    CryptoProviderNotFoundError,
    CryptoProviderSigningFailedError,
)
from couchbase_core.crypto.fields import DEFAULT_PREFIX, decrypt_fields, encrypt_fields
from couchbase_core.crypto.keystore import InMemoryKeyStore, InsecureKeyStore, KeyStore
from couchbase_core.crypto.provider import AES256_ALG, AES256CryptoProvider, PythonCryptoProvider

__all__ = [
    "KeyStore", "InMemoryKeyStore", "InsecureKeyStore", "PythonCryptoProvider", "AES256CryptoProvider",
    "AES256_ALG", "DEFAULT_PREFIX", "encrypt_fields", "decrypt_fields",
    "CryptoError", "CryptoConfigError", "CryptoExecutionError", "CryptoDependencyError",
    "CryptoProviderNotFoundError", "CryptoProviderAliasNullError", "CryptoProviderMissingPublicKeyError",
    "CryptoProviderMissingSigningKeyError", "CryptoProviderMissingPrivateKeyError",
    "CryptoProviderSigningFailedError", "CryptoProviderEncryptFailedError", "CryptoProviderDecryptFailedError",
    "CryptoProviderKeySizeError",
]

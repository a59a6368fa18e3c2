"""Field-level encryption (couchbase_core.crypto): the RFC 32 test vectors,
round trips through a real server, tampering, and the error cases."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest

pytest.importorskip("cryptography")

from couchbase_core.bucket import Bucket  # noqa: E402
from couchbase_core.crypto import (  # noqa: E402
    AES256CryptoProvider,
    CryptoDependencyError,
    CryptoProviderAliasNullError,
    CryptoProviderDecryptFailedError,
    CryptoProviderEncryptFailedError,
    CryptoProviderKeySizeError,
    CryptoProviderMissingPublicKeyError,
    CryptoProviderMissingSigningKeyError,
    CryptoProviderNotFoundError,
    CryptoProviderSigningFailedError,
    InMemoryKeyStore,
    PythonCryptoProvider,
)
from couchbase_core.exceptions import ArgumentError, CouchbaseError  # noqa: E402
from tests.flavours import open_bucket  # noqa: E402

ALG = "AES-256-HMAC-SHA256"
AES_KEY = "!mysecretkey#9^5usdk39d&dlf)03sL"
HMAC_KEY = "myauthpassword"
SPEC = [{"alg": ALG, "name": "message"}]

# SDK RFC 32 ("Field Encryption"), AES-256-HMAC-SHA256 examples: input,
# IV, and the field as stored.
RFC_VECTORS = [
    ({"message": 10}, "wAg/Z+c81em+to/rR9T3PA==",
     {"alg": ALG, "kid": "mypublickey", "ciphertext": "bvfUk9qkfCYKS2S5CCJPpg==",
      "sig": "LAcwxznVSED4zQbuy+UjacQlvtVYvpVmiiAU5gJJASc=", "iv": "wAg/Z+c81em+to/rR9T3PA=="}),
    ({"message": "10"}, "jdqfaa9Hjpd5rTi2BaEWWg==",
     {"alg": ALG, "kid": "mypublickey", "ciphertext": "r6rK6mO0KQ1p9ws/8Feqyg==",
      "sig": "NdvUTdR6XhRZQnQBWVzZjv9MxNIbzmwslQqP6onNdVk=", "iv": "jdqfaa9Hjpd5rTi2BaEWWg=="}),
    ({"message": "The old grey goose jumped over the wrickety gate."}, "Cfq84/46Qjet3EEQ1HUwSg==",
     {"alg": ALG, "kid": "mypublickey",
      "ciphertext": "sR6AFEIGWS5Fy9QObNOhbCgfg3vXH4NHVRK1qkhKLQqjkByg2n69lot89qFEJuBsVNTXR77PZR6RjN4h4M9evg==",
      "sig": "rT89aCj1WosYjWHHu0mf92S195vYnEGA/reDnYelQsM=", "iv": "Cfq84/46Qjet3EEQ1HUwSg=="}),
    ({"message": ["The", "Old", "Grey", "Goose", "Jumped", "over", "the", "wrickety", "gate"]},
     "A4OSMlz95cvn6ZDypm58jA==",
     {"alg": ALG, "kid": "mypublickey",
      "ciphertext": "9aTRYMmbNf6tvVFpbedSsS5Hdhk/OjUIz2mEqp5L5EcVNGoKJBhnuaAu35fNVM2YW/7TscXdiUBaeZZv7Zxg1Zve+"
                    "A1u1/7dmgbkvAilNSo=",
      "sig": "PQ25q0k271CpZ9quOg2m3oAIZVa6Mh9S0mo15nN/hlk=", "iv": "A4OSMlz95cvn6ZDypm58jA=="}),
]


def _keystore() -> InMemoryKeyStore:
    ks = InMemoryKeyStore()
    ks.set_key("mypublickey", AES_KEY)
    ks.set_key("myhmackey", HMAC_KEY)
    return ks


@pytest.fixture
def bucket(memcached_server):
    b = Bucket(memcached_server.connstr)
    b.register_crypto_provider(ALG, AES256CryptoProvider(_keystore(), "mypublickey", "myhmackey"))
    yield b
    b.close()


@pytest.mark.parametrize("document,iv,stored", RFC_VECTORS)
def test_rfc_vectors_encrypt_to_the_published_fields(bucket, document, iv, stored):
    provider = AES256CryptoProvider(_keystore(), "mypublickey", "myhmackey", iv=base64.b64decode(iv))
    bucket.register_crypto_provider(ALG, provider)
    encrypted = bucket.encrypt_fields(document, SPEC, None)
    assert encrypted == {"__crypt_message": stored}
    assert bucket.decrypt_fields(encrypted, SPEC, None) == document
    # the older 2.x form: decrypt_fields(document, prefix)
    assert bucket.decrypt_fields({"__crypt_message": stored}, "__crypt_") == document


@pytest.mark.parametrize("flavour", ["blocking", "async", "gevent"])
def test_round_trip_through_the_server(flavour, memcached_server, unique_key):
    b = open_bucket(flavour, memcached_server.connstr)
    raw = b.raw if hasattr(b, "raw") else b
    raw.register_crypto_provider(ALG, AES256CryptoProvider(_keystore(), "mypublickey", "myhmackey"))
    doc = {"message": {"nested": [1, 2, None], "s": "é"}, "plain": True, "n": 3}
    try:
        enc = raw.encrypt_fields(doc, [{"alg": ALG, "name": "message"}, {"alg": ALG, "name": "n"}], None)
        assert set(enc) == {"__crypt_message", "__crypt_n", "plain"}
        assert set(enc["__crypt_message"]) == {"alg", "kid", "iv", "ciphertext", "sig"}
        assert enc["__crypt_message"]["kid"] == "mypublickey"
        assert len(base64.b64decode(enc["__crypt_message"]["iv"])) == 16
        b.upsert(unique_key + "fle", enc)
        stored = b.get(unique_key + "fle").value
        assert "message" not in stored and "é" not in json.dumps(stored, ensure_ascii=False)
        assert raw.decrypt_fields(stored, [{"alg": ALG, "name": "message"}, {"alg": ALG, "name": "n"}],
                                  None) == doc
        assert doc == {"message": {"nested": [1, 2, None], "s": "é"}, "plain": True, "n": 3}  # untouched
    finally:
        b.close()


def test_fieldspec_limits_decryption_and_custom_prefix(bucket):
    enc = bucket.encrypt_fields({"a": 1, "b": 2}, [{"alg": ALG, "name": "a"}, {"alg": ALG, "name": "b"}], "__x_")
    assert set(enc) == {"__x_a", "__x_b"}
    part = bucket.decrypt_fields(enc, [{"alg": ALG, "name": "a"}], "__x_")
    assert part["a"] == 1 and "__x_b" in part and "b" not in part
    # a random IV: two encryptions of the same value differ
    again = bucket.encrypt_fields({"a": 1}, [{"alg": ALG, "name": "a"}], "__x_")
    assert again["__x_a"]["ciphertext"] != enc["__x_a"]["ciphertext"] or again["__x_a"]["iv"] != enc["__x_a"]["iv"]
    # a field the document lacks is skipped, as in 2.x
    assert bucket.encrypt_fields({"z": 0}, SPEC, None) == {"z": 0}


@pytest.mark.parametrize("part", ["ciphertext", "iv", "kid", "alg"])
def test_tampering_fails_the_signature(bucket, part):
    enc = bucket.encrypt_fields({"message": "hello"}, SPEC, None)
    field = enc["__crypt_message"]
    if part in ("ciphertext", "iv"):
        data = bytearray(base64.b64decode(field[part]))
        data[0] ^= 1
        field[part] = base64.b64encode(bytes(data)).decode()
    else:
        field[part] = field[part] + "x"
    with pytest.raises(CryptoProviderSigningFailedError):
        bucket.decrypt_fields(enc, SPEC, None)  # the provider comes from the spec, not the stored alg


def test_other_keys_fail_the_signature(bucket, memcached_server):
    enc = bucket.encrypt_fields({"message": "hello"}, SPEC, None)
    ks = _keystore()
    ks.set_key("myhmackey", "another password")
    other = Bucket(memcached_server.connstr)
    try:
        other.register_crypto_provider(ALG, AES256CryptoProvider(ks, "mypublickey", "myhmackey"))
        with pytest.raises(CryptoProviderSigningFailedError):
            other.decrypt_fields(enc, SPEC, None)
    finally:
        other.close()


def test_errors(bucket):
    with pytest.raises(CryptoProviderNotFoundError, match="RSA-2048"):
        bucket.encrypt_fields({"message": 1}, [{"alg": "RSA-2048", "name": "message"}], None)
    with pytest.raises(CryptoProviderAliasNullError):
        bucket.encrypt_fields({"message": 1}, [{"name": "message"}], None)
    with pytest.raises(ArgumentError):
        bucket.encrypt_fields({"message": 1}, [{"alg": ALG}], None)
    with pytest.raises(ArgumentError):
        bucket.encrypt_fields({"message": 1}, {"alg": ALG, "name": "message"}, None)
    with pytest.raises(ArgumentError):
        bucket.encrypt_fields([1, 2], SPEC, None)
    with pytest.raises(ArgumentError, match="kid"):
        bucket.encrypt_fields({"message": 1}, [{"alg": ALG, "name": "message", "kid": "otherkey"}], None)
    with pytest.raises(CryptoProviderEncryptFailedError):
        bucket.encrypt_fields({"message": object()}, SPEC, None)
    with pytest.raises(CryptoProviderDecryptFailedError):
        bucket.decrypt_fields({"__crypt_message": "not an object"}, None, None)
    with pytest.raises(CryptoProviderDecryptFailedError, match="base64"):
        bucket.decrypt_fields({"__crypt_message": {"alg": ALG, "kid": "k", "iv": "!!", "ciphertext": "AA==",
                                                   "sig": "AA=="}}, None, None)
    with pytest.raises(CryptoProviderAliasNullError):
        bucket.register_crypto_provider("", AES256CryptoProvider(_keystore(), "mypublickey", "myhmackey"))
    with pytest.raises(ArgumentError, match="get_key_id"):
        bucket.register_crypto_provider("x", object())
    bucket.unregister_crypto_provider(ALG)
    bucket.unregister_crypto_provider(ALG)  # twice: nothing to do, as in 2.x
    with pytest.raises(CryptoProviderNotFoundError):
        bucket.encrypt_fields({"message": 1}, SPEC, None)
    assert issubclass(CryptoProviderNotFoundError, CouchbaseError)


def test_key_problems():
    ks = InMemoryKeyStore()
    ks.set_key("short", "only16bytes!!!!!")
    ks.set_key("h", "hmac")
    provider = AES256CryptoProvider(ks, "short", "h")
    with pytest.raises(CryptoProviderKeySizeError, match="32"):
        provider.encrypt(b"x", b"\0" * 16)
    with pytest.raises(CryptoProviderMissingPublicKeyError):
        AES256CryptoProvider(ks, "absent", "h").encrypt(b"x", b"\0" * 16)
    with pytest.raises(CryptoProviderMissingSigningKeyError):
        AES256CryptoProvider(ks, "short", "absent").sign([b"x"])
    with pytest.raises(CryptoProviderMissingPublicKeyError):
        AES256CryptoProvider(ks, "", "h")
    with pytest.raises(ArgumentError):
        AES256CryptoProvider(None, "short", "h")
    with pytest.raises(ArgumentError):
        AES256CryptoProvider(ks, "short", "h", iv=b"short")
    full = InMemoryKeyStore()
    full.set_key("k", AES_KEY.encode())
    full.set_key("h", b"\x00\x01")
    p = AES256CryptoProvider(full, "k", "h")
    with pytest.raises(CryptoProviderDecryptFailedError):
        p.decrypt(b"\x00" * 15, b"\x00" * 16)  # not a whole block


def test_a_custom_provider_works(bucket):
    class Rot(PythonCryptoProvider):
        def generate_iv(self):
            return b"\x00" * 4

        def sign(self, inputs):
            return b"".join(inputs)[:8]

        def verify_signature(self, inputs, signature):
            return self.sign(inputs) == signature

        def encrypt(self, input, iv):  # noqa: A002
            return bytes(b ^ 0x5A for b in input)

        def decrypt(self, input, iv):  # noqa: A002
            return bytes(b ^ 0x5A for b in input)

        def get_key_id(self):
            return "rot"

    bucket.register_crypto_provider("ROT", Rot())
    enc = bucket.encrypt_fields({"f": [1, "two"]}, [{"alg": "ROT", "name": "f"}], None)
    assert enc["__crypt_f"]["alg"] == "ROT" and enc["__crypt_f"]["kid"] == "rot"
    assert bucket.decrypt_fields(enc, None, None) == {"f": [1, "two"]}


def test_missing_cryptography_names_the_extra():
    code = ("import sys; sys.modules['cryptography'] = None\n"
            "from couchbase_core.crypto import AES256CryptoProvider, InMemoryKeyStore, CryptoDependencyError\n"
            "try:\n"
            "    AES256CryptoProvider(InMemoryKeyStore(), 'a', 'b')\n"
            "except CryptoDependencyError as e:\n"
            "    assert isinstance(e, ImportError)\n"
            "    print('MISSING:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "gcouchbase[crypto]" in out.stdout and "cryptography" in out.stdout
    assert issubclass(CryptoDependencyError, ImportError)

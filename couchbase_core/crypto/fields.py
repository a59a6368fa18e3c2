"""Encrypting and decrypting top-level JSON fields (SDK RFC 32).

A field ``name`` encrypted by the provider registered as ``alg`` becomes the
field ``<prefix><name>`` (prefix ``__crypt_`` by default) holding::

    {"alg": "<alg>", "kid": "<key id>", "iv": "<base64 IV>",
     "ciphertext": "<base64 ciphertext>", "sig": "<base64 signature>"}

The plaintext is the field's value as compact JSON (so numbers, strings,
lists, objects and null all round-trip); the signature covers ``kid``,
``alg``, the base64 IV and the base64 ciphertext, concatenated in that order.
Only top-level fields can be encrypted. The functions return new dicts and
leave the document given untouched.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, List, Mapping, Optional

from couchbase_core.crypto.errors import (
    CryptoError,
    CryptoProviderAliasNullError,
    CryptoProviderDecryptFailedError,
    CryptoProviderEncryptFailedError,
    CryptoProviderNotFoundError,
    CryptoProviderSigningFailedError,
)
from couchbase_core.exceptions import ArgumentError

__all__ = ["DEFAULT_PREFIX", "encrypt_fields", "decrypt_fields"]

#: Prefix of encrypted field names when none is given (libcouchbase's).
DEFAULT_PREFIX = "__crypt_"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _provider(providers: Mapping[str, Any], alg: Any) -> Any:
    if not alg or not isinstance(alg, str):
        raise CryptoProviderAliasNullError("a field spec needs 'alg', the alias of a registered provider")
    try:
        return providers[alg]
    except KeyError:
        raise CryptoProviderNotFoundError("the cryptographic provider could not be found for the alias: %s"
                                          % alg) from None


def _check_document(document: Any) -> Dict[str, Any]:
    if not isinstance(document, Mapping):
        raise ArgumentError("a document to encrypt or decrypt must be a dict (a JSON object), not %s"
                            % type(document).__name__)
    return dict(document)


def _specs(fieldspec: Any) -> List[Mapping[str, Any]]:
    if isinstance(fieldspec, Mapping) or isinstance(fieldspec, (str, bytes)):
        raise ArgumentError("fieldspec must be a list of dicts like {'alg': ..., 'name': ...}")
    specs = list(fieldspec)
    for spec in specs:
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec.get("name"):
            raise ArgumentError("each field spec needs 'name' (a top-level field) and 'alg': got %r" % (spec,))
    return specs


def _prefix(prefix: Optional[str]) -> str:
    if prefix is None:
        return DEFAULT_PREFIX
    if not isinstance(prefix, str) or not prefix:
        raise ArgumentError("prefix must be a non-empty str (or None for %r)" % DEFAULT_PREFIX)
    return prefix


def encrypt_fields(providers: Mapping[str, Any], document: Any, fieldspec: Any,
                   prefix: Optional[str] = None) -> Dict[str, Any]:
    """A copy of ``document`` with each field of ``fieldspec`` encrypted.

    ``fieldspec`` lists ``{'alg': alias, 'name': field}`` dicts (``'kid'``
    may be given too; it must then be the provider's key id). A field the
    document does not have is skipped, as in 2.x.

    Raises:
        CryptoProviderNotFoundError, CryptoProviderAliasNullError: ``alg``.
        CryptoProviderEncryptFailedError: the value is not JSON-serialisable.
        CryptoConfigError: missing or wrong-size keys (from the provider).
        ArgumentError: a bad document, field spec or prefix.
    """
    out = _check_document(document)
    pre = _prefix(prefix)
    for spec in _specs(fieldspec):
        name = spec["name"]
        provider = _provider(providers, spec.get("alg"))
        if name not in out:
            continue
        kid = provider.get_key_id()
        if spec.get("kid") is not None and spec["kid"] != kid:
            raise ArgumentError("field spec for %r names kid %r but the provider %r uses key %r"
                                % (name, spec["kid"], spec["alg"], kid))
        try:
            plaintext = json.dumps(out[name], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise CryptoProviderEncryptFailedError("field %r cannot be encrypted: %s" % (name, exc)) from None
        try:
            iv = provider.generate_iv()
            ciphertext = provider.encrypt(plaintext, iv)
            iv_text, ct_text = _b64(iv), _b64(ciphertext)
            signature = provider.sign([kid.encode("utf-8"), spec["alg"].encode("utf-8"), iv_text.encode("ascii"),
                                       ct_text.encode("ascii")])
        except CryptoError:
            raise
        except Exception as exc:  # a third-party provider's own failure
            raise CryptoProviderEncryptFailedError("the encryption of field %r failed for the alias %s: %s"
                                                   % (name, spec["alg"], exc)) from exc
        del out[name]
        out[pre + name] = {"alg": spec["alg"], "kid": kid, "iv": iv_text, "ciphertext": ct_text,
                           "sig": _b64(signature)}
    return out


def decrypt_fields(providers: Mapping[str, Any], document: Any, fieldspec: Any = None,
                   prefix: Optional[str] = None) -> Dict[str, Any]:
    """A copy of ``document`` with encrypted fields decrypted.

    With ``fieldspec`` (2.5's form) only the fields it names are decrypted,
    each by the provider of its spec's ``alg``; without it (2.x's older
    ``decrypt_fields(document, prefix)``), every ``<prefix>*`` field is
    decrypted by the provider registered under its stored ``alg``.

    Raises:
        CryptoProviderSigningFailedError: a signature does not match.
        CryptoProviderDecryptFailedError: a malformed encrypted field.
        CryptoProviderNotFoundError: no provider for the alias.
    """
    out = _check_document(document)
    pre = _prefix(prefix)
    wanted = None if fieldspec is None else {spec["name"]: spec for spec in _specs(fieldspec)}
    for field in [f for f in out if isinstance(f, str) and f.startswith(pre) and len(f) > len(pre)]:
        name = field[len(pre):]
        if wanted is not None and name not in wanted:
            continue
        block = out[field]
        if not isinstance(block, Mapping) or not all(isinstance(block.get(k), str)
                                                     for k in ("alg", "iv", "ciphertext", "sig")):
            raise CryptoProviderDecryptFailedError(
                "field %r is not an encrypted field (needs alg, iv, ciphertext and sig strings)" % field)
        alg = wanted[name].get("alg") if wanted is not None else block["alg"]
        provider = _provider(providers, alg)
        kid = block.get("kid") or ""
        if not isinstance(kid, str):
            raise CryptoProviderDecryptFailedError("field %r has a non-string kid" % field)
        try:
            iv = base64.b64decode(block["iv"], validate=True)
            ciphertext = base64.b64decode(block["ciphertext"], validate=True)
            signature = base64.b64decode(block["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise CryptoProviderDecryptFailedError("field %r holds invalid base64" % field) from None
        parts = [kid.encode("utf-8"), block["alg"].encode("utf-8"), block["iv"].encode("ascii"),
                 block["ciphertext"].encode("ascii")]
        try:
            good = provider.verify_signature(parts, signature)
        except CryptoError:
            raise
        except Exception:  # providers that raise (e.g. cryptography's InvalidSignature) on mismatch
            good = False
        if not good:
            raise CryptoProviderSigningFailedError(
                "the authentication failed while checking the signature of field %r for the alias: %s"
                % (field, alg))
        try:
            plaintext = provider.decrypt(ciphertext, iv)
            value = json.loads(bytes(plaintext).decode("utf-8"))
        except CryptoError:
            raise
        except Exception as exc:
            raise CryptoProviderDecryptFailedError("the decryption of field %r failed for the alias %s: %s"
                                                   % (field, alg, exc)) from None
        del out[field]
        out[name] = value
    return out

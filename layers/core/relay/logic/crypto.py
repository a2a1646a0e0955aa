"""Envelope encryption: AES-256-GCM with a scrypt-derived key.

- key = scrypt(secret, salt, N=16384, r=8, p=1, 32 bytes); the salt is random per key version (it
  lives next to the key in the encryption secret, with its ``keyId``) and travels in the envelope;
- iv: 12 random bytes per message; tag: 16 bytes; associated data: the ``deliveryId`` as UTF-8, so a
  ciphertext cannot be moved into another envelope;
- scrypt costs tens of milliseconds by design, so derived keys are cached per container, keyed by
  (keyId, salt, a digest of the secret) - the digest only tells versions apart, it is never logged.

Stdlib and ``cryptography`` only: receivers can use it (relay.receiver_sdk).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from relay.errors import ConfigurationError, DecryptionFailed

SCRYPT_N = 16_384
SCRYPT_R = 8
SCRYPT_P = 1
KEY_BYTES = 32
SALT_BYTES = 16
IV_BYTES = 12
TAG_BYTES = 16


@dataclass(frozen=True, repr=False)
class EncryptionKey:
    key_id: str
    salt: bytes
    key: bytes

    def __repr__(self) -> str:  # never show key material
        return f"EncryptionKey(key_id={self.key_id!r})"


@dataclass(frozen=True)
class Sealed:
    iv: bytes
    ciphertext: bytes
    tag: bytes

    @property
    def well_formed(self) -> bool:
        """The lengths ``seal`` writes: with any other, no key opens it."""
        return len(self.iv) == IV_BYTES and len(self.tag) == TAG_BYTES


def derive_key(secret: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(secret.encode())


def new_salt() -> bytes:
    """A fresh salt for a new key version (config sync / key rotation)."""
    return os.urandom(SALT_BYTES)


def parse_salt(salt_hex: str | None, *, what: str) -> bytes:
    if not salt_hex:
        raise ConfigurationError(f"{what} has no salt; refusing to derive a key without one")
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        raise ConfigurationError(f"{what} has a salt that is not hex") from None
    if len(salt) < SALT_BYTES:
        raise ConfigurationError(f"{what} has a salt shorter than {SALT_BYTES} bytes")
    return salt


class KeyCache:
    """Derived keys per container: scrypt once per key version, not once per message.

    Single-flight: when a cold container starts a batch, every concurrent delivery to an encrypted
    target asks for the same key at once; one of them derives it (scrypt, ~50 ms of CPU) while the
    others wait for that result instead of each running scrypt themselves.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._max = max_entries
        self._keys: dict[tuple[str, bytes, bytes], bytes] = {}
        self._pending: dict[tuple[str, bytes, bytes], threading.Lock] = {}
        self._lock = threading.Lock()
        self.derivations = 0  # scrypt runs so far (benchmarks and tests read it)

    def key_for(self, secret: str, *, key_id: str, salt: bytes) -> EncryptionKey:
        cache_key = (key_id, salt, hashlib.sha256(secret.encode()).digest())
        with self._lock:
            key = self._keys.get(cache_key)
            in_flight = self._pending.setdefault(cache_key, threading.Lock()) if key is None else None
        if in_flight is not None:
            with in_flight:  # the first caller derives; the others wait here, then find the key
                with self._lock:
                    key = self._keys.get(cache_key)
                if key is None:
                    key = derive_key(secret, salt)
                    with self._lock:
                        self.derivations += 1
                        if len(self._keys) >= self._max:
                            self._keys.clear()
                        self._keys[cache_key] = key
                        self._pending.pop(cache_key, None)
        assert key is not None
        return EncryptionKey(key_id=key_id, salt=salt, key=key)

    def __len__(self) -> int:
        return len(self._keys)


def seal(plaintext: bytes, key: bytes, *, associated_data: bytes) -> Sealed:
    iv = os.urandom(IV_BYTES)
    out = AESGCM(key).encrypt(iv, plaintext, associated_data)
    return Sealed(iv=iv, ciphertext=out[:-TAG_BYTES], tag=out[-TAG_BYTES:])


def unseal(sealed: Sealed, key: bytes, *, associated_data: bytes) -> bytes:
    if not sealed.well_formed:
        raise DecryptionFailed("iv or authTag has the wrong length")
    try:
        return AESGCM(key).decrypt(sealed.iv, sealed.ciphertext + sealed.tag, associated_data)
    except InvalidTag:
        raise DecryptionFailed("authentication failed (wrong key, wrong deliveryId or tampered)") from None

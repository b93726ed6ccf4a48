"""Client-side encryption of memory text (and chosen metadata values) with AES-256-GCM.

The server stores ``mxenc1:<base64 nonce+ciphertext>`` and never sees the plaintext or the
key. Each value is bound to its memory id (AES-GCM associated data), so a ciphertext copied
onto another row does not decrypt. Embeddings are computed from the plaintext and stored as
they are: similarity search keeps working, and an embedding reveals something about its
text; that trade is the point. The content hash used for dedup is an HMAC under a key derived
from the encryption key, so identical texts can still be found without exposing a plain hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigurationError, DecryptionError

__all__ = ["PREFIX", "TextCipher", "generate_key"]

PREFIX = "mxenc1:"
_NONCE = 12


def generate_key() -> str:
    """A new random 256-bit key, URL-safe base64 (what ``encryption_key=`` takes)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        try:
            raw = base64.urlsafe_b64decode(key.encode() + b"=" * (-len(key) % 4))
        except (binascii.Error, ValueError):
            raw = b""
    elif isinstance(key, bytes):
        raw = key
    else:
        raise ConfigurationError(f"encryption_key must be str or bytes, got {type(key).__name__}")
    if len(raw) != 32:
        raise ConfigurationError(
            "encryption_key must be 32 random bytes, or their URL-safe base64 "
            "(make one with memorix_pg.crypto.generate_key())"
        )
    return raw


class TextCipher:
    """Encrypts and decrypts strings bound to a memory id; derives the dedup HMAC key."""

    def __init__(self, key: str | bytes) -> None:
        master = _key_bytes(key)
        self._aead = AESGCM(self._derive(master, b"memorix-pg text encryption"))
        self._mac_key = self._derive(master, b"memorix-pg content hash")
        # A fingerprint of the key, safe to show, to tell which key a message is about.
        self.key_id = hashlib.sha256(self._derive(master, b"memorix-pg key id")).hexdigest()[:12]

    @staticmethod
    def _derive(master: bytes, purpose: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)

    def encrypt(self, plaintext: str, memory_id: uuid.UUID, field: str = "") -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), self._aad(memory_id, field))
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def decrypt(self, stored: str, memory_id: uuid.UUID, field: str = "") -> str:
        """The plaintext; a value without the prefix (stored before encryption was on) is returned as is."""
        if not stored.startswith(PREFIX):
            return stored
        try:
            blob = base64.b64decode(stored[len(PREFIX) :], validate=True)
            plain = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], self._aad(memory_id, field))
            return plain.decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError):
            raise DecryptionError(
                f"memory {memory_id}{f' (metadata {field!r})' if field else ''} does not decrypt with key "
                f"{self.key_id}: the key is wrong, or the stored value was altered"
            ) from None

    def encrypt_value(self, value: Any, memory_id: uuid.UUID, field: str) -> str:
        """A metadata value (any JSON) as ciphertext; filters can no longer look inside it."""
        return self.encrypt(json.dumps(value), memory_id, field)

    def decrypt_value(self, stored: Any, memory_id: uuid.UUID, field: str) -> Any:
        if not isinstance(stored, str) or not stored.startswith(PREFIX):
            return stored
        return json.loads(self.decrypt(stored, memory_id, field))

    def content_hash(self, text: str) -> bytes:
        return hmac.new(self._mac_key, text.encode("utf-8"), hashlib.sha256).digest()

    @staticmethod
    def _aad(memory_id: uuid.UUID, field: str) -> bytes:
        return memory_id.bytes + field.encode("utf-8")

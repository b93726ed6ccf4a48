"""Client-side encryption of memory text (and chosen metadata values) with AES-256-GCM.

The server stores ``mxenc1:<base64 nonce+ciphertext>`` and never sees the plaintext or the
key. Each value is bound to its memory id (AES-GCM associated data), so a ciphertext copied
onto a row of another id does not decrypt. An id that is a canonical UUID string is bound by
its 16 bytes, as when every id was a UUID, so rows written then still decrypt; any other id by
its UTF-8 bytes, in a form that never equals a UUID's (see ``TextCipher._aad``). Embeddings
are computed from the plaintext and stored as they are: similarity search keeps working, and an
embedding reveals something about its text; that trade is the point. The content hash used for
dedup is an HMAC under a key derived from the encryption key, so identical texts can still be
found without exposing a plain hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigurationError, DecryptionError, FilterError, InvalidInput

__all__ = ["PREFIX", "Sealer", "TextCipher", "generate_key"]

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

    def encrypt(self, plaintext: str, memory_id: str, field: str = "") -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), self._aad(memory_id, field))
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def decrypt(self, stored: str, memory_id: str, field: str = "") -> str:
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

    def encrypt_value(self, value: Any, memory_id: str, field: str) -> str:
        """A metadata value (any JSON) as ciphertext; filters can no longer look inside it."""
        return self.encrypt(json.dumps(value), memory_id, field)

    def decrypt_value(self, stored: Any, memory_id: str, field: str) -> Any:
        if not isinstance(stored, str) or not stored.startswith(PREFIX):
            return stored
        return json.loads(self.decrypt(stored, memory_id, field))

    def content_hash(self, text: str) -> bytes:
        return hmac.new(self._mac_key, text.encode("utf-8"), hashlib.sha256).digest()

    @staticmethod
    def _aad(memory_id: str, field: str) -> bytes:
        """The associated data binding a value to its memory (and metadata key).

        A canonical UUID string gives its 16 bytes followed by the field, exactly what every row
        was bound to while ids were UUIDs. Any other id gives ``_STRING_ID`` (16 bytes), then
        0xFF, the id's length and UTF-8 bytes, then the field: byte 16 of a UUID's associated
        data starts a UTF-8 field name and can never be 0xFF, and the length keeps id and field
        apart, so no two (id, field) pairs share associated data.
        """
        uuid_bytes = _canonical_uuid_bytes(memory_id)
        if uuid_bytes is not None:
            return uuid_bytes + field.encode("utf-8")
        encoded = memory_id.encode("utf-8")
        return _STRING_ID + b"\xff" + struct.pack(">I", len(encoded)) + encoded + field.encode("utf-8")


_STRING_ID = b"memorix-pg strid"  # 16 bytes, as long as a UUID


def _canonical_uuid_bytes(memory_id: str) -> bytes | None:
    """The UUID's bytes when ``memory_id`` is a UUID in canonical form (lowercase, hyphenated)."""
    if len(memory_id) != 36:
        return None
    try:
        parsed = uuid.UUID(memory_id)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == memory_id else None


def _field_paths(filter: object) -> Iterator[str]:
    """The field paths a filter document names, through $and/$or/$nor/$not."""
    if isinstance(filter, Mapping):
        for key, value in filter.items():
            if isinstance(key, str) and key.startswith("$"):
                yield from _field_paths(value)
            elif isinstance(key, str):
                yield key
    elif isinstance(filter, list | tuple):
        for item in filter:
            yield from _field_paths(item)


def _text_operator(filter: object) -> str | None:
    """The first ``$text`` / ``$contains`` operator at the top level of a filter (or under
    $and/$or/$nor/$not), which search the memory text."""
    if isinstance(filter, Mapping):
        for key, value in filter.items():
            if key in ("$text", "$contains"):
                return str(key)
            if key in ("$and", "$or", "$nor", "$not") and (found := _text_operator(value)) is not None:
                return found
    elif isinstance(filter, list | tuple):
        for item in filter:
            if (found := _text_operator(item)) is not None:
                return found
    return None


class Sealer:
    """What a collection's rows look like stored: text and listed metadata values encrypted under
    ``cipher`` (or plaintext without one), and the dedup hash (keyed when encrypted)."""

    def __init__(self, cipher: TextCipher | None, encrypted_keys: Sequence[str] = ()) -> None:
        if encrypted_keys and cipher is None:
            raise ConfigurationError("encrypted_metadata needs an encryption_key")
        self.cipher = cipher
        self.encrypted_keys = tuple(encrypted_keys)

    def with_cipher(self, cipher: TextCipher | None) -> Sealer:
        return Sealer(cipher, self.encrypted_keys if cipher is not None else ())

    def content_hash(self, text: str) -> bytes:
        """SHA-256, or an HMAC under the key when texts are encrypted."""
        if self.cipher is not None:
            return self.cipher.content_hash(text)
        return hashlib.sha256(text.encode("utf-8")).digest()

    def seal_text(self, row_id: str, text: str) -> str:
        return self.cipher.encrypt(text, row_id) if self.cipher is not None else text

    def seal_metadata(self, row_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        cipher = self.cipher
        if cipher is None or not self.encrypted_keys:
            return metadata
        return {
            k: (cipher.encrypt_value(v, row_id, k) if k in self.encrypted_keys and v is not None else v)
            for k, v in metadata.items()
        }

    def open_text(self, row_id: str, stored: str) -> str:
        return self.cipher.decrypt(stored, row_id) if self.cipher is not None else stored

    def open_metadata(self, row_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        cipher = self.cipher
        if cipher is None or not self.encrypted_keys:
            return metadata
        return {
            k: (cipher.decrypt_value(v, row_id, k) if k in self.encrypted_keys else v)
            for k, v in metadata.items()
        }

    def check_filter(self, filter: object) -> None:
        """Encrypted metadata values cannot be matched: say so instead of matching nothing."""
        if self.cipher is not None and (op := _text_operator(filter)) is not None:
            raise FilterError(
                f"operator {op!r} searches the memory text, which is encrypted in this collection "
                "(encryption_key): encrypted texts cannot be indexed or searched"
            )
        if not self.encrypted_keys:
            return
        for path in _field_paths(filter):
            key = path.split(".")[0]
            if key in self.encrypted_keys:
                raise FilterError(
                    f"metadata key {key!r} is encrypted and cannot be filtered on (path {path!r})"
                )

    def check_text_search(self, mode: str) -> None:
        """Full text search reads the stored text, which is ciphertext here."""
        if self.cipher is not None:
            raise InvalidInput(
                f"mode={mode!r} searches the memory text, which is encrypted in this collection "
                "(encryption_key): encrypted texts cannot be indexed or searched; use mode='vector'"
            )

    def check_group_key(self, group_by: object) -> None:
        if isinstance(group_by, str) and group_by.split(".")[0] in self.encrypted_keys:
            raise InvalidInput(f"metadata key {group_by!r} is encrypted and cannot be grouped by")

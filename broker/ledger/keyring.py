"""Signing keys shared by replicas: rows in the ledger database, private keys sealed with AES-GCM.

The key-encryption key (KEK) never touches the database; it comes from settings (env or a mounted
file). Each row's kid and algorithm are bound into the AEAD as associated data, so a sealed key
moved to another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from broker.errors import ConfigError
from broker.ledger.models import SigningKeyRow
from broker.signing import SigningKey, SigningKeyError

NONCE_BYTES = 12


def parse_kek(text: str) -> bytes:
    """A 256-bit KEK from 64 hex digits or base64 (standard or URL-safe) of 32 bytes."""
    value = text.strip()
    try:
        raw = bytes.fromhex(value) if len(value) == 64 else _b64(value)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ConfigError("key_encryption_key must be 32 bytes: 64 hex digits or base64 (openssl rand -base64 32)")
    return raw


def read_kek(value: str | None, path: Path | None) -> bytes:
    """The KEK from settings: the value itself, or the file that holds it (a mounted secret)."""
    if value and path:
        raise ConfigError("set key_encryption_key or key_encryption_key_file, not both")
    if path:
        try:
            return parse_kek(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read key_encryption_key_file: {exc.strerror}") from None
    if value:
        return parse_kek(value)
    raise ConfigError(
        "signing keys in the database need key_encryption_key (BROKER_KEY_ENCRYPTION_KEY) or key_encryption_key_file"
    )


def kek_id(kek: bytes) -> str:
    """A public name for the KEK, stored beside each sealed key so a wrong KEK is named, not guessed."""
    return hashlib.sha256(b"broker-kek:" + kek).hexdigest()[:16]


class DatabaseKeyRepository:
    """KeyRepository over the `signing_keys` table: every replica reads the same keys."""

    def __init__(self, engine: Engine, kek: bytes) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._aead = AESGCM(kek)
        self._kek_id = kek_id(kek)

    def load_all(self) -> list[SigningKey]:
        with self._sessions() as session:
            rows = session.scalars(select(SigningKeyRow).order_by(SigningKeyRow.created_at)).all()
            return [self._open(row) for row in rows]

    def save(self, key: SigningKey) -> None:
        with self._sessions() as session, session.begin():
            session.merge(self._seal(key))

    def delete(self, kid: str) -> None:
        with self._sessions() as session, session.begin():
            session.execute(delete(SigningKeyRow).where(SigningKeyRow.kid == kid))

    def _seal(self, key: SigningKey) -> SigningKeyRow:
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, key.private_pem, _aad(key.kid, key.alg))
        return SigningKeyRow(
            kid=key.kid,
            alg=key.alg,
            created_at=key.created_at,
            retired_at=key.retired_at,
            kek_id=self._kek_id,
            sealed=base64.b64encode(sealed).decode(),
        )

    def _open(self, row: SigningKeyRow) -> SigningKey:
        if row.kek_id != self._kek_id:
            raise SigningKeyError(f"signing key {row.kid} is sealed with KEK {row.kek_id}, not with {self._kek_id}")
        sealed = base64.b64decode(row.sealed)
        try:
            pem = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(row.kid, row.alg))
        except InvalidTag:
            raise SigningKeyError(f"signing key {row.kid} does not open: edited or moved") from None
        return SigningKey(row.kid, row.alg, pem, row.created_at, row.retired_at)


def _b64(value: str) -> bytes:
    padded = value + "=" * (-len(value) % 4)
    return base64.urlsafe_b64decode(padded) if "-" in value or "_" in value else base64.b64decode(padded, validate=True)


def _aad(kid: str, alg: str) -> bytes:
    return f"broker-signing-key:{kid}:{alg}".encode()

"""The log's own Ed25519 key (never a JWT signing key): a 0600 file, or a sealed row shared by replicas.

Database rows are sealed with AES-GCM under the same KEK as the signing keys (broker/ledger/keyring.py),
the row's kid bound in as associated data. The active key is the oldest unretired one, so replicas
that raced to create a key all settle on the same one.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import sessionmaker

from broker.ledger.keyring import NONCE_BYTES, kek_id
from broker.ledger.models import LogKeyRow
from broker.signing import SigningKeyError
from broker.transparency.note import NoteError, Signer


_KEY_LOCK = 0x746B6579  # "tkey": replicas creating the first log key take turns


class LogKeyRepository(Protocol):
    """Where the log key lives."""

    def active(self) -> Signer | None: ...

    def add(self, signer: Signer, now: float, *, first: bool = False) -> None: ...


class FileLogKeys:
    """`<data_dir>/log_key`: the signer key string, readable by the owner only (single-node SQLite)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def active(self) -> Signer | None:
        if not self.path.exists():
            return None
        try:
            return Signer.parse(self.path.read_text())
        except NoteError as exc:
            raise SigningKeyError(f"{self.path}: not a log key: {exc}") from None

    def add(self, signer: Signer, now: float, *, first: bool = False) -> None:
        if first and self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(signer.key_string() + "\n")
        os.replace(tmp, self.path)  # the old key is replaced: its verifier key stays valid for old checkpoints


class DatabaseLogKeys:
    """`log_keys` rows sealed under the KEK; every replica signs with the same key."""

    def __init__(self, engine: Engine, kek: bytes) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._aead, self._kek_id = AESGCM(kek), kek_id(kek)
        self._postgres = engine.dialect.name == "postgresql"

    def active(self) -> Signer | None:
        with self._sessions() as session:
            query = select(LogKeyRow).where(LogKeyRow.retired_at.is_(None)).order_by(LogKeyRow.created_at, LogKeyRow.kid)
            row = session.scalars(query.limit(1)).first()
        return self._open(row) if row else None

    def add(self, signer: Signer, now: float, *, first: bool = False) -> None:
        """Retire the active key and add `signer`; with `first`, only if there is no key yet (replicas race at start)."""
        kid = f"{signer.name}+{signer.key_id.hex()}"
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, signer.key_string().encode(), _aad(kid))
        with self._sessions() as session, session.begin():
            if self._postgres:  # SQLite: the write transaction (BEGIN IMMEDIATE) already serialises
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _KEY_LOCK})
            if first and session.scalar(select(LogKeyRow.kid).where(LogKeyRow.retired_at.is_(None)).limit(1)):
                return
            session.execute(update(LogKeyRow).where(LogKeyRow.retired_at.is_(None)).values(retired_at=now))
            session.add(LogKeyRow(kid=kid, created_at=now, retired_at=None, kek_id=self._kek_id,
                                  sealed=base64.b64encode(sealed).decode()))  # fmt: skip

    def _open(self, row: LogKeyRow) -> Signer:
        if row.kek_id != self._kek_id:
            raise SigningKeyError(f"log key {row.kid} is sealed with KEK {row.kek_id}, not with {self._kek_id}")
        sealed = base64.b64decode(row.sealed)
        try:
            text = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(row.kid)).decode()
        except InvalidTag:
            raise SigningKeyError(f"log key {row.kid} does not open: edited or moved") from None
        return Signer.parse(text)


def load_or_create(repo: LogKeyRepository, origin: str, clock: Callable[[], float] = time.time) -> Signer:
    """The active log key, made on first start; its name is the log's origin."""
    signer = repo.active()
    if signer is None:
        repo.add(Signer.generate(origin), clock(), first=True)
        signer = repo.active()
    if signer is None or signer.name != origin:
        raise SigningKeyError(f"the log key is named {signer.name if signer else None!r}, the log origin is {origin!r}")
    return signer


def rotate(repo: LogKeyRepository, origin: str, clock: Callable[[], float] = time.time) -> Signer:
    """A new active log key; publish its verifier key before auditors need it."""
    repo.add(Signer.generate(origin), clock())
    return load_or_create(repo, origin, clock)


def _aad(kid: str) -> bytes:
    return f"broker-log-key:{kid}".encode()

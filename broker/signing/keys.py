"""The broker's signing keys: generate, rotate, publish as JWKS, sign and verify broker JWTs."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

TOKEN_TYPE = "at+jwt"  # RFC 9068: marks broker credentials so they are never taken as identity tokens
ALGORITHMS = ("ES256", "EdDSA")
log = logging.getLogger(__name__)


class SigningKeyError(Exception):
    """A key file is unreadable or the key set is empty."""


@dataclass(frozen=True)
class SigningKey:
    """One key pair; `retired_at` is set when a newer key took over signing."""

    kid: str
    alg: str
    private_pem: bytes
    created_at: float
    retired_at: float | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "private_pem": self.private_pem.decode(),
            "created_at": self.created_at,
            "retired_at": self.retired_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SigningKey:
        return cls(
            kid=record["kid"],
            alg=record["alg"],
            private_pem=record["private_pem"].encode(),
            created_at=float(record["created_at"]),
            retired_at=record.get("retired_at"),
        )


class KeyRepository(Protocol):
    """Where key records live: a 0600 file per key, or a shared database for replicas."""

    def load_all(self) -> list[SigningKey]: ...

    def save(self, key: SigningKey) -> None: ...

    def delete(self, kid: str) -> None: ...


class FileKeyRepository:
    """Keys as JSON files in `<data_dir>/keys`, readable by the owner only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load_all(self) -> list[SigningKey]:
        if not self.directory.exists():
            return []
        return [SigningKey.from_record(json.loads(p.read_text())) for p in sorted(self.directory.glob("*.json"))]

    def save(self, key: SigningKey) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.directory / f"{key.kid}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(key.to_record(), handle)
        os.replace(tmp, path)

    def delete(self, kid: str) -> None:
        (self.directory / f"{kid}.json").unlink(missing_ok=True)


def generate_key(alg: str, now: float) -> SigningKey:
    """A fresh private key for `alg` (ES256 on P-256, or EdDSA on Ed25519)."""
    private = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(kid=f"{alg.lower()}-{int(now)}-{secrets.token_hex(4)}", alg=alg, private_pem=pem, created_at=now)


class KeyStore:
    """Signs with the newest key; publishes every key whose tokens may still be alive."""

    def __init__(self, repository: KeyRepository, *, algorithm: str, max_token_ttl: int, clock=time.time) -> None:
        self._repo = repository
        self._algorithm = algorithm
        self._max_ttl = max_token_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: dict[str, tuple[SigningKey, Any]] = {}
        self._last_miss_reload = 0.0
        self.reload()
        if not self._loaded:
            self.rotate()

    def reload(self) -> None:
        """Read keys from the repository (other replicas may have rotated)."""
        loaded = {}
        for key in self._repo.load_all():
            private = serialization.load_pem_private_key(key.private_pem, password=None)
            loaded[key.kid] = (key, private)
        with self._lock:
            self._loaded = loaded

    def rotate(self) -> SigningKey:
        """Add a new active key; the old one stays published until its last token expires."""
        now = self._clock()
        with self._lock:
            for key, _ in self._loaded.values():
                if key.retired_at is None:
                    self._repo.save(_retired(key, now))
            self._repo.save(generate_key(self._algorithm, now))
        self.reload()
        self.prune()
        log.info("signing key rotated: new key %s", self.active.kid)
        return self.active

    def prune(self) -> list[str]:
        """Drop keys retired longer ago than the longest token lifetime."""
        cutoff = self._clock() - self._max_ttl - 60
        gone = [k.kid for k, _ in self._loaded.values() if k.retired_at is not None and k.retired_at < cutoff]
        for kid in gone:
            self._repo.delete(kid)
        if gone:
            self.reload()
        return gone

    @property
    def active(self) -> SigningKey:
        with self._lock:
            live = [k for k, _ in self._loaded.values() if k.retired_at is None]
        if not live:
            raise SigningKeyError("no active signing key")
        return max(live, key=lambda k: k.created_at)

    def keys(self) -> list[SigningKey]:
        with self._lock:
            return sorted((k for k, _ in self._loaded.values()), key=lambda k: k.created_at)

    def sign(self, claims: dict[str, Any]) -> str:
        key = self.active
        private = self._loaded[key.kid][1]
        return jwt.encode(claims, private, algorithm=key.alg, headers={"kid": key.kid, "typ": TOKEN_TYPE})

    def verify(self, token: str, *, issuer: str, audience: str | None = None) -> dict[str, Any]:
        """Verify a broker-minted JWT; raises jwt.InvalidTokenError."""
        header = jwt.get_unverified_header(token)
        entry = self._loaded.get(str(header.get("kid"))) or self._reload_for(str(header.get("kid")))
        if entry is None or header.get("typ") != TOKEN_TYPE:
            raise jwt.InvalidTokenError("unknown key or type")
        key, private = entry
        return jwt.decode(
            token,
            private.public_key(),
            algorithms=[key.alg],
            issuer=issuer,
            audience=audience,
            # introspection does not know the audience in advance; the caller checks it
            options={"verify_aud": audience is not None, "require": ["exp", "iat", "jti", "sub"]},
        )

    def _reload_for(self, kid: str) -> tuple[SigningKey, Any] | None:
        """Another replica may have rotated a moment ago: reload, at most once a second."""
        now = self._clock()
        if now - self._last_miss_reload < 1.0:
            return None
        self._last_miss_reload = now
        self.reload()
        return self._loaded.get(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(key, private) for key, private in self._loaded.values()]}


def _retired(key: SigningKey, now: float) -> SigningKey:
    return SigningKey(key.kid, key.alg, key.private_pem, key.created_at, retired_at=now)


def _public_jwk(key: SigningKey, private: Any) -> dict[str, Any]:
    algorithm = ECAlgorithm(ECAlgorithm.SHA256) if key.alg == "ES256" else OKPAlgorithm()
    jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": key.kid, "alg": key.alg, "use": "sig"}

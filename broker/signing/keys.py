"""The broker's signing keys: generate, rotate, publish as JWKS, sign and verify broker JWTs.

Keys are loaded once per reload into `_Prepared`: the private and public key objects, PyJWT's
algorithm object and the encoded protected header, so signing a grant is one JSON dump, one
base64url and one signature (no per-call key preparation or header building in PyJWT).
"""

from __future__ import annotations

import base64
import binascii
import hmac
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
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, get_default_algorithms

TOKEN_TYPE = "at+jwt"  # RFC 9068: marks broker credentials so they are never taken as identity tokens
TXN_TOKEN_TYPE = "txntoken+jwt"  # draft-ietf-oauth-transaction-tokens: a transaction token, never an access token
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


@dataclass(frozen=True)
class _Prepared:
    """A loaded key ready to sign and verify with: key objects, algorithm, protected header."""

    key: SigningKey
    private: Any
    public: Any
    algorithm: Any
    header: bytes  # base64url of {"alg", "kid", "typ"}: the same for every token this key signs

    @classmethod
    def load(cls, key: SigningKey) -> _Prepared:
        private = serialization.load_pem_private_key(key.private_pem, password=None)
        header = json.dumps({"alg": key.alg, "kid": key.kid, "typ": TOKEN_TYPE}, separators=(",", ":"), sort_keys=True)
        return cls(key, private, private.public_key(), get_default_algorithms()[key.alg], _b64(header.encode()))

    def header_of(self, typ: str) -> bytes:
        """The protected header for a token of this `typ` (the prepared one for `at+jwt`)."""
        if typ == TOKEN_TYPE:
            return self.header
        fields = {"alg": self.key.alg, "kid": self.key.kid, "typ": typ}
        return _b64(json.dumps(fields, separators=(",", ":"), sort_keys=True).encode())


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


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
        self._reload_lock = threading.Lock()
        self._loaded: dict[str, _Prepared] = {}
        self._last_miss_reload = 0.0
        self.reload()
        if not self._loaded:
            self.rotate()

    def reload(self) -> None:
        """Read keys from the repository (other replicas may have rotated)."""
        # One reload at a time: a periodic reload that read the repository before a rotation wrote
        # to it must not install its stale view after the rotation's own reload.
        with self._reload_lock:
            previous = self._loaded
            loaded = {}
            for key in self._repo.load_all():
                kept = previous.get(key.kid)  # an unchanged record keeps its loaded key objects
                loaded[key.kid] = kept if kept is not None and kept.key == key else _Prepared.load(key)
            with self._lock:
                self._loaded = loaded

    def rotate(self) -> SigningKey:
        """Add a new active key; the old one stays published until its last token expires."""
        now = self._clock()
        with self._lock:
            for key in (p.key for p in self._loaded.values()):
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
        gone = [p.key.kid for p in self._loaded.values() if p.key.retired_at is not None and p.key.retired_at < cutoff]
        for kid in gone:
            self._repo.delete(kid)
        if gone:
            self.reload()
        return gone

    @property
    def active(self) -> SigningKey:
        return self._active().key

    def _active(self) -> _Prepared:
        with self._lock:
            live = [p for p in self._loaded.values() if p.key.retired_at is None]
        if not live:
            raise SigningKeyError("no active signing key")
        return max(live, key=lambda p: p.key.created_at)

    def keys(self) -> list[SigningKey]:
        with self._lock:
            return sorted((p.key for p in self._loaded.values()), key=lambda k: k.created_at)

    def sign(self, claims: dict[str, Any], typ: str = TOKEN_TYPE) -> str:
        """A compact JWS of `claims` by the active key (what jwt.encode makes, with the key prepared).

        `typ` tells token kinds apart (RFC 8725 §3.11): `at+jwt` credentials, `secevent+jwt` SETs.
        """
        prepared = self._active()
        header = prepared.header_of(typ)
        signing_input = header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
        return (signing_input + b"." + _b64(prepared.algorithm.sign(signing_input, prepared.private))).decode()

    def check_signed(self, token: str, claims: dict[str, Any], typ: str = TOKEN_TYPE) -> None:
        """The self-check of a JWT this store just signed, before it is handed out: the signature holds
        under the prepared public key of its kid, and the payload is exactly `claims`. Raises
        jwt.InvalidTokenError. (Cheaper than `verify`: no claim rules to apply to our own claims.)"""
        try:
            header, payload, signature = token.split(".")
            kid = json.loads(_unb64(header)).get("kid")
            prepared = self._loaded[str(kid)]
            signed = (header + "." + payload).encode()
            if not hmac.compare_digest(header.encode(), prepared.header_of(typ)):
                raise jwt.InvalidTokenError("unexpected header")
            if not prepared.algorithm.verify(signed, prepared.public, _unb64(signature)):
                raise jwt.InvalidSignatureError("signature does not verify")
            if json.loads(_unb64(payload)) != claims:
                raise jwt.InvalidTokenError("payload differs from the claims signed")
        except (ValueError, KeyError, AttributeError, binascii.Error) as exc:
            raise jwt.InvalidTokenError(f"malformed: {type(exc).__name__}") from None

    def verify(
        self, token: str, *, issuer: str, audience: str | None = None, types: tuple[str, ...] = (TOKEN_TYPE,)
    ) -> dict[str, Any]:
        """Verify a broker-minted JWT of one of `types` (`typ` header); raises jwt.InvalidTokenError."""
        header = jwt.get_unverified_header(token)
        entry = self._loaded.get(str(header.get("kid"))) or self._reload_for(str(header.get("kid")))
        if entry is None or header.get("typ") not in types:
            raise jwt.InvalidTokenError("unknown key or type")
        return jwt.decode(
            token,
            entry.public,
            algorithms=[entry.key.alg],
            issuer=issuer,
            audience=audience,
            # introspection does not know the audience in advance; the caller checks it
            options={"verify_aud": audience is not None, "require": ["exp", "iat", "jti", "sub"]},
        )

    def _reload_for(self, kid: str) -> _Prepared | None:
        """Another replica may have rotated a moment ago: reload, at most once a second."""
        now = self._clock()
        if now - self._last_miss_reload < 1.0:
            return None
        self._last_miss_reload = now
        self.reload()
        return self._loaded.get(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(p.key, p.public) for p in self._loaded.values()]}


def _retired(key: SigningKey, now: float) -> SigningKey:
    return SigningKey(key.kid, key.alg, key.private_pem, key.created_at, retired_at=now)


def _public_jwk(key: SigningKey, public: Any) -> dict[str, Any]:
    algorithm = ECAlgorithm(ECAlgorithm.SHA256) if key.alg == "ES256" else OKPAlgorithm()
    jwk = algorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": key.kid, "alg": key.alg, "use": "sig"}

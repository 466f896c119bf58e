"""DPoP (RFC 9449) for the SDK: one key per process, a fresh proof per request."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK: what `cnf.jkt` holds."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def token_hash(access_token: str) -> str:
    """The `ath` claim: base64url(SHA-256(access token))."""
    return b64url(hashlib.sha256(access_token.encode()).digest())


def request_url(url: str) -> str:
    """`htu` is the URL without query or fragment."""
    return url.split("#", 1)[0].split("?", 1)[0]


class DpopKey:
    """An ES256 (P-256) key that signs DPoP proofs; the private half never leaves the process."""

    def __init__(self, private: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._private = private or ec.generate_private_key(ec.SECP256R1())
        self.public_jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._private.public_key(), as_dict=True)
        self.jkt = jwk_thumbprint(self.public_jwk)

    def proof(self, method: str, url: str, access_token: str | None = None, *, iat: float | None = None) -> str:
        """A proof for one request; pass the token sent with it so `ath` binds the two."""
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(18),
            "htm": method.upper(),
            "htu": request_url(url),
            "iat": int(time.time() if iat is None else iat),
        }
        if access_token:
            claims["ath"] = token_hash(access_token)
        headers = {"typ": "dpop+jwt", "jwk": self.public_jwk}
        return jwt.encode(claims, self._private, algorithm="ES256", headers=headers)

    def __repr__(self) -> str:
        return f"DpopKey(jkt={self.jkt})"


_lock = threading.Lock()
_key: tuple[int, DpopKey] | None = None


def process_key() -> DpopKey:
    """The key of this process, made on first use and again after a fork (a child never shares it)."""
    global _key
    with _lock:
        if _key is None or _key[0] != os.getpid():
            _key = (os.getpid(), DpopKey())
        return _key[1]

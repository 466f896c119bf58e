"""DPoP (RFC 9449): verify a proof of possession and name its key by RFC 7638 thumbprint.

A proof is a JWT with `typ: dpop+jwt`, signed by the public key it carries in its `jwk` header, for one
HTTP method and URL (`htm`, `htu`), fresh (`iat` within a window), never seen before (`jti` replay
check, shared by replicas), and, when it accompanies an access token, bound to it (`ath`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from broker.errors import DpopReplayFull, InvalidDpop

ALGORITHMS = ("ES256", "EdDSA")
MAX_PROOF_BYTES = 4096
# RFC 7638 §3.2: the required members of each key type, in the order the thumbprint hashes them
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the `jkt` a grant is bound to."""
    required = _REQUIRED.get(jwk.get("kty", ""))
    if required is None or any(not isinstance(jwk.get(name), str) for name in required):
        raise InvalidDpop("jwk is not a complete EC, OKP or RSA public key")
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def access_token_hash(token: str) -> str:
    """`ath`: base64url(SHA-256(access token))."""
    return b64url(hashlib.sha256(token.encode("ascii", "replace")).digest())


def normalize_url(url: str) -> str:
    """`htu` compares without query and fragment (RFC 9449 §4.3), scheme and host case-insensitive."""
    base = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = base.partition("://")
    host, slash, path = rest.partition("/")
    # the path decoded, as the router sees it: `/v1/tasks/deploy%2Fprod/complete` is the same resource
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{unquote(path)}"


class Seen(Protocol):
    """The replay check: record `key` until `expires_at`; True if it was already recorded (a replay).

    The broker injects one backed by the ledger database so every worker and replica shares it; it
    raises (DpopReplayFull, LedgerUnavailable) rather than answer False when it cannot tell.
    """

    def __call__(self, key: str, expires_at: float) -> bool: ...


class ReplayCache:
    """An in-process `Seen` for pure-logic use; bounded, and fail closed (refuses) when full."""

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._max = max_entries
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            if self._seen.get(key, 0) > now:
                return True
            if len(self._seen) >= self._max:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                if len(self._seen) >= self._max:
                    raise DpopReplayFull("the DPoP replay cache is full")
            self._seen[key] = expires_at
            return False


@dataclass(frozen=True)
class DpopProof:
    """A verified proof: the thumbprint of its key and its claims."""

    jkt: str
    claims: dict[str, Any]


class DpopVerifier:
    """Checks DPoP proofs against one request; `urls` are the acceptable forms of the request URL."""

    def __init__(
        self,
        *,
        window: float = 60,
        algorithms: Iterable[str] = ALGORITHMS,
        clock: Callable[[], float] = time.time,
        seen: Seen | None = None,
    ) -> None:
        self.window = window
        self.algorithms = tuple(algorithms)
        self.clock = clock
        self.seen = seen or ReplayCache(clock=clock)

    def verify(
        self, proof: str, *, method: str, urls: Iterable[str], access_token: str | None = None, require_ath: bool = False
    ) -> DpopProof:
        """Raise InvalidDpop unless `proof` is a fresh, unreplayed proof for this method and URL.

        `ath` is required with `require_ath` (a bound token is presented) and checked whenever present.
        """
        header, key = self._header_key(proof)
        claims = self._claims(proof, key, header["alg"])
        self._check_request(claims, method, urls)
        if access_token is not None and (require_ath or "ath" in claims):
            if claims.get("ath") != access_token_hash(access_token):
                raise InvalidDpop("proof ath does not match the access token")
        jkt = thumbprint(header["jwk"])
        # kept for twice the window: a proof passes the iat check for at most that long on any replica
        if self.seen(f"{jkt}:{claims['jti']}", self.clock() + 2 * self.window):
            raise InvalidDpop("proof jti replayed")
        return DpopProof(jkt=jkt, claims=claims)

    def _header_key(self, proof: str) -> tuple[dict[str, Any], Any]:
        if len(proof) > MAX_PROOF_BYTES:
            raise InvalidDpop("proof too large")
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.InvalidTokenError:
            raise InvalidDpop("proof is not a JWT") from None
        if header.get("typ") != "dpop+jwt":
            raise InvalidDpop("proof typ is not dpop+jwt")
        if header.get("alg") not in self.algorithms:
            raise InvalidDpop("proof alg not allowed")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or _PRIVATE & jwk.keys():
            raise InvalidDpop("proof jwk missing or holds a private key")
        return header, _public_key(jwk, header["alg"])

    def _claims(self, proof: str, key: Any, alg: str) -> dict[str, Any]:
        try:
            # a DPoP proof has no aud or exp (RFC 9449 §4.2): its freshness is the iat window, _check_request
            claims = jwt.decode(proof, key, algorithms=[alg], options={"verify_aud": False, "verify_exp": False})
        except jwt.InvalidTokenError:
            raise InvalidDpop("proof signature invalid") from None
        for name in ("htm", "htu", "iat", "jti"):
            if name not in claims:
                raise InvalidDpop(f"proof has no {name}")
        if not isinstance(claims["jti"], str) or not 8 <= len(claims["jti"]) <= 256:
            raise InvalidDpop("proof jti invalid")
        return claims

    def _check_request(self, claims: dict[str, Any], method: str, urls: Iterable[str]) -> None:
        if claims["htm"] != method.upper():
            raise InvalidDpop("proof htm does not match")
        if not isinstance(claims["htu"], str) or normalize_url(claims["htu"]) not in {normalize_url(u) for u in urls}:
            raise InvalidDpop("proof htu does not match")
        iat = claims["iat"]
        if not isinstance(iat, int | float) or abs(self.clock() - iat) > self.window:
            raise InvalidDpop("proof iat outside the window")


def _public_key(jwk: dict[str, Any], alg: str) -> Any:
    family = ECAlgorithm if alg == "ES256" else OKPAlgorithm
    if (alg == "ES256") != (jwk.get("kty") == "EC") or (alg == "ES256" and jwk.get("crv") != "P-256"):
        raise InvalidDpop("proof jwk does not fit alg")
    try:
        return family.from_jwk(json.dumps(jwk))
    except (jwt.InvalidKeyError, ValueError, TypeError):
        raise InvalidDpop("proof jwk is not a valid public key") from None

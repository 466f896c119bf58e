"""For resource servers: check a broker JWT offline against the broker's JWKS, and its DPoP binding.

    verifier = Verifier(issuer="https://broker.example", audience="orders-api")
    claims = verifier.verify(token, dpop_proof=request.headers.get("DPoP"), method="GET", url=str(request.url))
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import httpx
import jwt

from broker_client.client import Client
from broker_client.dpop import jwk_thumbprint, request_url, token_hash
from broker_client.errors import BrokerClientError, InvalidToken

ALGORITHMS = ("ES256", "EdDSA")
ACCESS_TOKEN_TYPE = "at+jwt"
MAX_JWKS_BYTES = 262_144
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})


class Verifier:
    """Verifies broker JWTs for one audience; caches the JWKS, refetches on an unknown `kid` (rate-limited)."""

    def __init__(
        self, issuer: str, audience: str, *, jwks_url: str | None = None, leeway: int = 30, dpop_window: int = 60,
        cache_ttl: float = 300, timeout: float = 5.0, introspection: Client | None = None,
    ) -> None:  # fmt: skip
        self.issuer, self.audience, self.leeway = issuer, audience, leeway
        self.jwks_url = jwks_url or issuer.rstrip("/") + "/.well-known/jwks.json"
        self.dpop_window, self.cache_ttl, self.timeout = dpop_window, cache_ttl, timeout
        self.introspection = introspection
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def verify(
        self, token: str, *, dpop_proof: str | None = None, method: str = "GET", url: str = "", introspect: bool = False
    ) -> dict[str, Any]:
        """The claims of a valid token; InvalidToken otherwise. A `cnf.jkt` token needs its holder's proof."""
        claims = self._claims(token)
        jkt = (claims.get("cnf") or {}).get("jkt")
        if jkt:
            if not dpop_proof:
                raise InvalidToken("the token is DPoP-bound and no proof came with it")
            self._check_proof(dpop_proof, token, jkt, method, url)
        if introspect:
            self._check_active(token)
        return claims

    def claims(self, token: str) -> dict[str, Any]:
        """Signature, `iss`, `aud`, `exp` only: the caller checks a `cnf.jkt` holder itself (see `verify`)."""
        return self._claims(token)

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != ACCESS_TOKEN_TYPE:  # RFC 9068 §4; a transaction token is never an access token
                raise jwt.InvalidTokenError("not an access token")
            kid = header.get("kid")
            return jwt.decode(
                token, self._key(str(kid)), algorithms=list(ALGORITHMS), audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
            )  # fmt: skip
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"token refused: {type(exc).__name__}") from None

    def _key(self, kid: str) -> Any:
        with self._lock:
            stale = time.time() - self._fetched_at > self.cache_ttl
            # an unknown kid may be a freshly rotated key: refetch, but at most every 10 s
            if stale or (kid not in self._keys and time.time() - self._fetched_at > 10):
                self._keys = self._fetch_keys()
                self._fetched_at = time.time()
            if kid not in self._keys:
                raise InvalidToken("token signed by a key the broker does not publish")
            return self._keys[kid]

    def _fetch_keys(self) -> dict[str, Any]:
        try:
            response = httpx.get(self.jwks_url, timeout=self.timeout)
            if response.status_code != 200 or len(response.content) > MAX_JWKS_BYTES:
                raise InvalidToken(f"JWKS fetch failed: HTTP {response.status_code}")
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
            raise InvalidToken(f"JWKS fetch failed: {type(exc).__name__}") from None
        return {k.key_id: k.key for k in keys if k.key_id}

    def _check_proof(self, proof: str, token: str, jkt: str, method: str, url: str) -> None:
        try:
            header = jwt.get_unverified_header(proof)
            jwk = header.get("jwk")
            if header.get("typ") != "dpop+jwt" or header.get("alg") not in ALGORITHMS or not isinstance(jwk, dict):
                raise InvalidToken("not a DPoP proof")
            if _PRIVATE_MEMBERS & jwk.keys() or jwk_thumbprint(jwk) != jkt:
                raise InvalidToken("proof is not by the key the token is bound to")
            key = jwt.PyJWK.from_dict(jwk, algorithm=header["alg"]).key
            claims = jwt.decode(proof, key, algorithms=[header["alg"]], options={"require": ["iat", "jti"]})
        except (jwt.InvalidTokenError, jwt.PyJWKError, KeyError) as exc:
            raise InvalidToken(f"proof refused: {type(exc).__name__}") from None
        self._check_proof_claims(claims, token, method, url)

    def _check_proof_claims(self, claims: dict[str, Any], token: str, method: str, url: str) -> None:
        if claims.get("htm") != method.upper() or claims.get("htu") != request_url(url):
            raise InvalidToken("proof is for another request")
        if not isinstance(claims["iat"], int | float) or abs(time.time() - claims["iat"]) > self.dpop_window:
            raise InvalidToken("proof is stale")
        if claims.get("ath") != token_hash(token):
            raise InvalidToken("proof is for another token")
        if not self._first_use(str(claims["jti"])):
            raise InvalidToken("proof replayed")

    def _first_use(self, jti: str) -> bool:
        now = time.time()
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)
            if jti in self._seen:
                return False
            if len(self._seen) >= 100_000:
                self._seen.popitem(last=False)
            self._seen[jti] = now + 2 * self.dpop_window
            return True

    def _check_active(self, token: str) -> None:
        if self.introspection is None:
            raise InvalidToken("introspect=True needs Verifier(introspection=Client(...))")
        try:
            active = self.introspection.introspect(token).get("active") is True
        except BrokerClientError as exc:
            raise InvalidToken(f"introspection failed: {exc}") from None
        if not active:
            raise InvalidToken("the broker reports the token inactive (completed, revoked or expired)")


def verify(token: str, *, issuer: str, audience: str, **options: Any) -> dict[str, Any]:
    """One-shot `Verifier(issuer, audience, jwks_url=…).verify(token, dpop_proof=…, method=…, url=…)`."""
    keys = ("jwks_url", "leeway", "dpop_window", "timeout", "introspection")
    verifier = Verifier(issuer, audience, **{k: options.pop(k) for k in keys if k in options})
    return verifier.verify(token, **options)

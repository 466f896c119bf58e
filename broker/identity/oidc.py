"""Attestation: verify a workload's OIDC/JWT identity token and return who it is.

Call path: Attestors.verify → _route (pick the attestor by `iss`) → _Attestor.verify →
check header (typ, alg allow-list, kid) → KeySet.key(kid) → jwt.decode (signature, iss, aud,
required claims) → _check_claims (audiences; exp/nbf/iat with skew and lifetime, on the injected
clock only) → presets.attest (subject + derived claims).

Cache (one per broker process): verified identity tokens, so a workload reusing its token until
it expires (as Kubernetes projected tokens are used) is not re-verified on every request.
- key: SHA-256 of the whole token; only tokens that passed the full path above are stored, never
  a refusal; at most `MAX_CACHED_TOKENS` entries, least recently used dropped first.
- TTL: until the token's own `exp` (no leeway) on the injected clock, and only while the issuer's
  JWKS (jwks.py's cache, refreshed as it says) still serves the very key object that verified it
  for that `kid`: a kid that leaves the JWKS, or a JWKS refresh, ends the entry (a refresh re-parses
  every key, so the next request is verified in full again).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx
import jwt

from broker.config import ASYMMETRIC_ALGORITHMS, AttestorConfig
from broker.errors import ConfigError, InvalidIdentity
from broker.fingerprint import fingerprint as fingerprint_of
from broker.identity import presets
from broker.identity.jwks import (
    FileKeySet,
    JsonFetcher,
    KeySet,
    RemoteKeySet,
    VerificationKey,
    build_http_client,
    check_fetch_url,
    discover_jwks_uri,
    parse_jwks,
)

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 16 * 1024
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Token types that are never identity tokens: the broker's own access tokens (RFC 9068) and DPoP proofs.
_REFUSED_TYP = frozenset({"at+jwt", "application/at+jwt", "dpop+jwt", "application/dpop+jwt"})
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "aud"]
MAX_CACHED_TOKENS = 4096


@dataclass(frozen=True)
class Identity:
    """A verified workload identity: who, vouched for by which attestor, until when."""

    subject: str
    attestor: str
    claims: Mapping[str, Any]
    token_fingerprint: str
    expires_at: int
    x5t: str | None = None  # `x5t#S256` of the client certificate an X.509-SVID identity was proven by


class Attestors:
    """All configured attestors; routes each token to the one trusting its issuer."""

    def __init__(
        self,
        configs: Sequence[AttestorConfig],
        *,
        broker_issuer: str | None = None,
        clock: Callable[[], float] = time.time,
        http: httpx.Client | None = None,
        certificates: Any = None,
    ) -> None:
        self._certificates = certificates  # identity.x509.SvidAttestors, when x509_attestors are configured
        self._owns_http = http is None
        self._http = http or build_http_client()
        self._broker_issuer = broker_issuer
        self._by_issuer: dict[str, _Attestor] = {}
        self._own_clients: list[httpx.Client] = []  # one per attestor with its own CA bundle
        for config in configs:
            _check_config(config, broker_issuer)
            if config.issuer in self._by_issuer:
                other = self._by_issuer[config.issuer].name
                raise ConfigError(f"attestors {other!r} and {config.name!r} share an issuer")
            self._by_issuer[config.issuer] = _Attestor(config, _key_set(config, self._client_for(config), clock), clock)
        self._verified = VerifiedTokens(MAX_CACHED_TOKENS, clock)

    def verify(self, token: str) -> Identity:
        """The identity proven by `token`, or InvalidIdentity (whose detail never contains the token)."""
        fingerprint = fingerprint_of(token) if isinstance(token, str) else "-"
        try:
            if isinstance(token, str) and len(token) <= MAX_TOKEN_BYTES and (hit := self._verified.get(token)):
                return hit
            attestor = self._route(token)
            identity, key = attestor.verify(token, fingerprint)
            self._verified.put(token, identity, attestor, key)
            return identity
        except InvalidIdentity as exc:
            log.debug("identity refused: %s (token %s)", exc.detail, fingerprint)
            exc.context.setdefault("token_fingerprint", fingerprint)
            raise
        except Exception as exc:  # the contract is InvalidIdentity on ANY failure: never fail open or 500
            log.debug("identity refused on unexpected %s (token %s)", type(exc).__name__, fingerprint, exc_info=True)
            raise InvalidIdentity(f"unexpected {type(exc).__name__}", token_fingerprint=fingerprint) from None

    def verify_certificate(self, facts: Any) -> Identity:
        """The X.509-SVID identity of a client certificate chain (identity.x509.TlsFacts), or InvalidIdentity."""
        try:
            if self._certificates is None:
                raise InvalidIdentity("no x509_svid attestor is configured")
            return self._certificates.verify(facts)
        except InvalidIdentity as exc:
            log.debug("client certificate refused: %s", exc.detail)
            raise
        except Exception as exc:  # as for tokens: InvalidIdentity on ANY failure, never a 500
            log.debug("client certificate refused on unexpected %s", type(exc).__name__, exc_info=True)
            raise InvalidIdentity(f"unexpected {type(exc).__name__}") from None

    def close(self) -> None:
        if self._owns_http:
            self._http.close()
        for client in self._own_clients:
            client.close()

    def _client_for(self, config: AttestorConfig) -> httpx.Client:
        """The shared client, or (with jwks_ca_file) one that trusts that bundle only."""
        if config.jwks_ca_file is None:
            return self._http
        try:
            client = build_http_client(config.jwks_timeout, ca_file=config.jwks_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"attestor {config.name!r}: jwks_ca_file {config.jwks_ca_file}: {exc}") from None
        self._own_clients.append(client)
        return client

    def _route(self, token: Any) -> _Attestor:
        if not isinstance(token, str) or not token:
            raise InvalidIdentity("no token")
        if len(token) > MAX_TOKEN_BYTES:  # checked before any parsing: no work for a 1 MB blob
            raise InvalidIdentity(f"token longer than {MAX_TOKEN_BYTES} bytes")
        if not _COMPACT_JWS.fullmatch(token):
            raise InvalidIdentity("not a compact JWS (three base64url segments)")
        issuer = _unverified_issuer(token)
        if self._broker_issuer is not None and issuer == self._broker_issuer:
            raise InvalidIdentity("a broker-issued token is not an identity token")
        attestor = self._by_issuer.get(issuer)
        if attestor is None:
            raise InvalidIdentity(f"untrusted issuer {issuer[:200]!r}")
        return attestor


@dataclass(frozen=True)
class _Verified:
    identity: Identity
    attestor: _Attestor
    key: VerificationKey
    exp: float


class VerifiedTokens:
    """Identity tokens that passed full verification, by SHA-256 of the token (see the module docstring)."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()

    def get(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
        if entry is None:
            return None
        # outside the lock: key_still_served may wait for a JWKS refresh
        if self._clock() >= entry.exp or not entry.attestor.key_still_served(entry.key):
            with self._lock:
                self._entries.pop(digest, None)
            return None
        return entry.identity

    def put(self, token: str, identity: Identity, attestor: _Attestor, key: VerificationKey) -> None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        exp = float(identity.claims["exp"])
        with self._lock:
            self._entries[digest] = _Verified(identity, attestor, key, exp)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


def _unverified_issuer(token: str) -> str:
    """The payload's `iss`, read only to choose which attestor's keys and rules apply.

    Nothing read here is trusted: the chosen attestor's jwt.decode checks the signature and `iss`
    again. We decode by hand rather than with verify_signature=False so no unverified-decode
    call exists anywhere in the broker for someone to copy.
    """
    segment = token.split(".")[1]
    try:
        payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidIdentity("payload is not base64url JSON") from None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    if not isinstance(issuer, str) or not issuer:
        raise InvalidIdentity("token has no iss")
    return issuer


def _check_config(config: AttestorConfig, broker_issuer: str | None) -> None:
    # AttestorConfig validates this too; repeated because model_construct() skips validators.
    bad = set(config.algorithms) - ASYMMETRIC_ALGORITHMS
    if bad:
        raise ConfigError(f"attestor {config.name!r}: algorithms {sorted(bad)} are not allowed")
    if broker_issuer is not None and config.issuer == broker_issuer:
        raise ConfigError(f"attestor {config.name!r}: issuer is the broker itself")
    if not (config.jwks_uri or config.jwks_file or re.match(r"^https?://", config.issuer)):
        raise ConfigError(f"attestor {config.name!r}: issuer is not a URL; set jwks_uri or jwks_file")


def _key_set(config: AttestorConfig, http: httpx.Client, clock: Callable[[], float]) -> KeySet:
    """Where this attestor's keys come from: a file, its jwks_uri, or the issuer's discovery document."""
    label = f"attestor {config.name}"
    if config.jwks_file:
        return FileKeySet(config.jwks_file, max_bytes=config.jwks_max_bytes, label=label)
    fetcher = JsonFetcher(http, timeout=config.jwks_timeout, max_bytes=config.jwks_max_bytes,
                          token_file=config.jwks_token_file)  # fmt: skip
    if config.jwks_uri:
        try:
            check_fetch_url(config.jwks_uri)
        except InvalidIdentity as exc:
            raise ConfigError(f"attestor {config.name!r}: {exc.detail}") from None

    def load() -> dict:
        uri = config.jwks_uri or discover_jwks_uri(fetcher, config.issuer)
        return parse_jwks(fetcher.get(uri), uri)

    return RemoteKeySet(
        load,
        ttl=config.jwks_cache_ttl,
        min_refresh_interval=config.jwks_min_refresh_interval,
        clock=clock,
        label=label,
    )


class _Attestor:
    """One trusted issuer: its key set, its algorithm allow-list, its claim rules and its preset."""

    def __init__(self, config: AttestorConfig, keys: KeySet, clock: Callable[[], float]) -> None:
        self.name = config.name
        self._config = config
        self._keys = keys
        self._clock = clock

    def verify(self, token: str, fingerprint: str) -> tuple[Identity, VerificationKey]:
        """The identity, and the key that verified it (the cache keeps it only while the JWKS does)."""
        alg, kid = self._check_header(token)
        key = self._keys.key(kid)
        if not key.fits(alg):
            # e.g. an RSA public key offered for HS256/ES256: the key decides what it can verify.
            raise InvalidIdentity(f"key {kid[:64]!r} cannot verify {alg}")
        claims = self._decode(token, key.key)
        self._check_claims(claims)
        subject, derived = presets.attest(self._config, claims)
        identity = Identity(
            subject=subject,
            attestor=self.name,
            claims=MappingProxyType({**claims, **derived}),
            token_fingerprint=fingerprint,
            expires_at=int(claims["exp"]),
        )
        return identity, key

    def key_still_served(self, key: VerificationKey) -> bool:
        """True while the JWKS serves this very key object for its kid (no fetch beyond jwks.py's own)."""
        try:
            return self._keys.key(key.kid) is key
        except InvalidIdentity:
            return False

    def _check_header(self, token: str) -> tuple[str, str]:
        # jku, x5u, x5c and jwk are deliberately never read: keys come only from configured places.
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidIdentity(f"bad header: {_short(exc)}") from None
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower() in _REFUSED_TYP:
            raise InvalidIdentity(f"token type {typ[:32]!r} is not an identity token")
        alg, kid = header.get("alg"), header.get("kid")
        # Exact match against config only: 'none' in any casing and every HS* are never listed.
        if not isinstance(alg, str) or alg not in self._config.algorithms:
            raise InvalidIdentity(f"algorithm {str(alg)[:16]!r} is not allowed for {self.name}")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise InvalidIdentity("token header has no usable kid")
        return alg, kid

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        cfg = self._config
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(cfg.algorithms),
                audience=list(cfg.audiences),
                issuer=cfg.issuer,
                leeway=cfg.leeway,
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    # exp, nbf and iat are checked once, in _check_claims, on the injected clock:
                    # PyJWT would check them again on the wall clock, a second clock tests cannot hold
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": True,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidIdentity(f"{type(exc).__name__}: {_short(exc)}") from None

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """What PyJWT leaves open: extra audiences, and every time check again on the injected clock."""
        cfg, now = self._config, self._clock()
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not cfg.allow_extra_audiences and any(a not in cfg.audiences for a in audiences):
            raise InvalidIdentity("token is also for other audiences")
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        nbf = _number(claims, "nbf") if claims.get("nbf") is not None else None
        if exp <= now - cfg.leeway:
            raise InvalidIdentity("token expired")
        if iat > now + cfg.leeway or (nbf is not None and nbf > now + cfg.leeway):
            raise InvalidIdentity("token not valid yet (iat/nbf in the future)")
        if exp <= iat or exp - iat > cfg.max_token_lifetime:
            raise InvalidIdentity(f"token lifetime exceeds {cfg.max_token_lifetime}s")


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidIdentity(f"claim {name} is not a number")
    return value


def _short(exc: Exception) -> str:
    return str(exc)[:200]

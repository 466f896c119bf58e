"""JWKS: fetch an issuer's public keys from configured places only, cache them, refresh under limits.

Caches (one per attestor):
- remote keys (jwks_uri or OIDC discovery): fresh for `jwks_cache_ttl`; an unknown `kid` triggers a
  refresh at most once per `jwks_min_refresh_interval`; when refreshes fail the last good keys are
  served until they are `STALE_FACTOR` x ttl old, then every lookup fails closed.
- file keys (jwks_file): re-read whenever the file's mtime or size changes; unreadable means closed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from broker.blocking import acquire, may_block
from broker.errors import InvalidIdentity

log = logging.getLogger(__name__)

STALE_FACTOR = 10
MAX_BEARER_BYTES = 16_384
MAX_KEYS = 100
MIN_RSA_BITS = 2048
_CHUNK = 16_384
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class JwksError(InvalidIdentity):
    """The issuer's keys could not be fetched, parsed or are too stale to trust."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key from a JWKS, with the algorithm it is pinned to (if the JWK says so)."""

    kid: str
    key: Any
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        """True when this key may verify `alg`: same family, same curve, and no `alg` pin that differs."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg[:2] in ("RS", "PS"):
            return isinstance(self.key, rsa.RSAPublicKey)
        if alg in _EC_CURVES:
            return isinstance(self.key, ec.EllipticCurvePublicKey) and self.key.curve.name == _EC_CURVES[alg]
        if alg == "EdDSA":
            return isinstance(self.key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
        return False


class KeySet(Protocol):
    """Where an attestor looks up the key named by a token's `kid`."""

    def key(self, kid: str) -> VerificationKey: ...


def build_http_client(timeout: float = 5.0, ca_file: Path | None = None) -> httpx.Client:
    """The one outbound HTTP client for JWKS and discovery: bounded time, no redirects, no env proxies.

    With `ca_file`, servers are verified against that bundle only (not the system's roots).
    """
    # trust_env=False: no module reads the environment on its own (ARCHITECTURE); proxies come from config.
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    return httpx.Client(
        verify=verify,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=5),
        headers={"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "credential-broker"},
        event_hooks={"request": [may_block]},  # never from the event loop (broker/blocking.py)
    )


def check_fetch_url(url: str) -> str:
    """Refuse anything but https, or plain http to a loopback host (tests, local dev issuers)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise JwksError(f"refusing to fetch keys from {url[:200]!r}: https (or http to loopback) only")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_origin(a: str, b: str) -> bool:
    """Scheme, host and port all equal (default ports made explicit)."""
    pa, pb = urlsplit(a), urlsplit(b)
    ports = {"http": 80, "https": 443}
    try:
        port_a, port_b = pa.port or ports.get(pa.scheme), pb.port or ports.get(pb.scheme)
    except ValueError:
        return False
    return (pa.scheme, pa.hostname, port_a) == (pb.scheme, pb.hostname, port_b)


class JsonFetcher:
    """GET a small JSON object over the shared client, within a total deadline and a byte cap."""

    def __init__(self, http: httpx.Client, *, timeout: float, max_bytes: int, token_file: Path | None = None) -> None:
        self._http = http
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._token_file = token_file  # sent as a bearer token; read at each fetch (the kubelet rotates it)

    def get(self, url: str) -> dict[str, Any]:
        check_fetch_url(url)
        try:
            body = self._read(url)
        except JwksError:
            raise
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise JwksError(f"{url}: {type(exc).__name__}") from None
        return parse_json_object(body, url)

    def _read(self, url: str) -> bytes:
        # httpx timeouts are per operation; the deadline bounds the whole body of a trickling server.
        deadline = time.monotonic() + self._timeout
        headers = {"Authorization": f"Bearer {_bearer(self._token_file)}"} if self._token_file else None
        with self._http.stream("GET", url, headers=headers, timeout=self._timeout, follow_redirects=False) as resp:
            if resp.status_code != 200:
                raise JwksError(f"{url}: HTTP {resp.status_code}")
            if resp.headers.get("content-encoding", "identity").lower() != "identity":
                # A compressed body could inflate far past the cap before we count it.
                raise JwksError(f"{url}: compressed response refused")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise JwksError(f"{url}: response of {declared} bytes exceeds {self._max_bytes}")
            body = bytearray()
            for chunk in resp.iter_raw(_CHUNK):
                body += chunk
                if len(body) > self._max_bytes:
                    raise JwksError(f"{url}: response exceeds {self._max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise JwksError(f"{url}: response slower than {self._timeout}s")
            return bytes(body)


def _bearer(path: Path) -> str:
    """The caller token in `path`, or JwksError naming the file (never its content)."""
    try:
        with path.open("rb") as handle:
            token = handle.read(MAX_BEARER_BYTES + 1).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise JwksError(f"{path}: jwks_token_file cannot be read") from None
    if not token or len(token) > MAX_BEARER_BYTES or any(ch.isspace() for ch in token):
        raise JwksError(f"{path}: jwks_token_file does not hold one token")
    return token


def parse_json_object(body: bytes, where: str) -> dict[str, Any]:
    """A JSON object, or JwksError naming `where` (never echoing the body)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise JwksError(f"{where}: not JSON") from None
    if not isinstance(doc, dict):
        raise JwksError(f"{where}: not a JSON object")
    return doc


def parse_jwks(doc: Mapping[str, Any], where: str) -> dict[str, VerificationKey]:
    """Usable signing keys by kid. Symmetric, private-only, weak and kid-less keys are skipped."""
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise JwksError(f"{where}: JWKS has no 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for entry in entries[:MAX_KEYS]:
        parsed = _parse_jwk(entry, where)
        if parsed is not None and parsed.kid not in keys:
            keys[parsed.kid] = parsed
    return keys


def _parse_jwk(entry: Any, where: str) -> VerificationKey | None:
    if not isinstance(entry, dict) or entry.get("kty") not in _KEY_TYPES:
        return None  # notably kty "oct": an HMAC secret is never an identity key
    kid, use, alg = entry.get("kid"), entry.get("use", "sig"), entry.get("alg")
    if not isinstance(kid, str) or not kid or use != "sig" or not (alg is None or isinstance(alg, str)):
        return None
    try:
        key = jwt.PyJWK(entry).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        log.debug("%s: skipping unparsable JWK kid=%.64r", where, kid)
        return None
    key = key.public_key() if hasattr(key, "public_key") else key  # a leaked private part is not used
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        log.debug("%s: skipping weak RSA key kid=%.64r", where, kid)
        return None
    return VerificationKey(kid=kid, key=key, alg=alg)


def discover_jwks_uri(fetcher: JsonFetcher, issuer: str) -> str:
    """The `jwks_uri` from the issuer's discovery document, which must name the same issuer and origin."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    doc = fetcher.get(url)
    if doc.get("issuer") != issuer:
        raise JwksError(f"{url}: discovery document names another issuer")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not same_origin(jwks_uri, issuer):
        # A discovery document must not send us to fetch keys from somewhere else.
        raise JwksError(f"{url}: jwks_uri missing or not on the issuer's origin")
    return jwks_uri


class RemoteKeySet:
    """Keys fetched over HTTP for one attestor; cached, rate-limited, one fetch at a time."""

    def __init__(
        self,
        load: Callable[[], dict[str, VerificationKey]],
        *,
        ttl: float,
        min_refresh_interval: float,
        clock: Callable[[], float],
        label: str,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._clock = clock
        self._label = label
        self._lock = threading.Lock()  # held during a fetch: callers queue instead of fetching twice
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._last_error = "keys not fetched yet"

    def key(self, kid: str) -> VerificationKey:
        acquire(self._lock)  # on the event loop, not while another thread fetches (broker/blocking.py)
        try:
            now = self._clock()
            if self._expired(now) and self._may_fetch(now):
                self._refresh(now)
            found = self._keys.get(kid)
            if found is None and self._may_fetch(now):
                self._refresh(now)  # unknown kid: maybe the issuer rotated
                found = self._keys.get(kid)
            if self._fetched_at is None or now - self._fetched_at >= STALE_FACTOR * self._ttl:
                raise JwksError(f"{self._label}: no usable keys ({self._last_error})")
            if found is None:
                raise JwksError(f"{self._label}: no key with kid {kid[:64]!r}")
            return found
        finally:
            self._lock.release()

    def _expired(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._ttl

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_interval

    def _refresh(self, now: float) -> None:
        may_block()  # before anything changes: the thread that runs it again fetches
        self._attempted_at = now
        try:
            keys = self._load()
        except JwksError as exc:
            self._last_error = exc.detail
            log.warning("%s: JWKS refresh failed: %s", self._label, exc.detail)
            return
        self._keys, self._fetched_at = keys, now
        log.debug("%s: JWKS refreshed, %d keys", self._label, len(keys))


class FileKeySet:
    """Keys read from a local JWKS file, re-read when its mtime or size changes; unreadable fails closed."""

    def __init__(self, path: Path, *, max_bytes: int, label: str) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._label = label
        self._lock = threading.Lock()
        self._keys: dict[str, VerificationKey] = {}
        self._stamp: tuple[int, ...] | None = None

    def key(self, kid: str) -> VerificationKey:
        with self._lock:
            self._reload_if_changed()
            found = self._keys.get(kid)
        if found is None:
            raise JwksError(f"{self._label}: no key with kid {kid[:64]!r} in {self._path}")
        return found

    def _reload_if_changed(self) -> None:
        try:
            stat = self._path.stat()
            # inode too: an atomic rename-over with the same size inside one mtime tick is still seen
            stamp = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
            if stamp == self._stamp:
                return
            if stat.st_size > self._max_bytes:
                raise JwksError(f"{self._path}: larger than {self._max_bytes} bytes")
            body = self._path.read_bytes()[: self._max_bytes + 1]
        except OSError as exc:
            self._keys, self._stamp = {}, None
            raise JwksError(f"{self._path}: cannot read JWKS file ({exc.strerror})") from None
        except JwksError:
            self._keys, self._stamp = {}, None
            raise
        self._keys, self._stamp = {}, None  # if parsing fails below, nothing old survives
        self._keys = parse_jwks(parse_json_object(body, str(self._path)), str(self._path))
        self._stamp = stamp

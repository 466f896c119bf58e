"""X.509-SVID attestation: a client certificate chain, verified against its trust domain's bundle, names a SPIFFE ID.

Call path: SvidAttestors.verify(facts) → _spiffe_id (the single URI SAN, SPIFFE ID grammar) → the
attestor trusting that ID's trust domain → _check_leaf (not a CA; digitalSignature, never keyCertSign or
cRLSign) → _check_times (every certificate sent, bounded skew, injected clock only) → RFC 5280 path
validation by `cryptography` against that trust domain's bundle alone (TrustBundle, re-read when its
file changes: a root removed from the file is distrusted at the next request; or EndpointBundle, a
SPIFFE bundle endpoint fetched over HTTPS and refreshed).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from broker.config_x509 import BundleEndpointConfig, X509AttestorConfig
from broker.errors import ConfigError, InvalidIdentity
from broker.identity.oidc import Identity

log = logging.getLogger(__name__)

MAX_CHAIN_BYTES = 64 * 1024
MAX_BUNDLE_BYTES = 1024 * 1024
MAXSPIFFE_ID = 2048
# SPIFFE ID spec §2: scheme and trust domain lowercase; path segments of [A-Za-z0-9._-], never `.` or `..`
SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)*)")


@dataclass(frozen=True)
class TlsFacts:
    """What the api layer saw of a client certificate: the chain as sent (DER, leaf first) and from where.

    `refusal` is set by the api layer when the certificate must not be believed (a proxy header from an
    address that is not a trusted proxy); the attestor refuses it like any other bad certificate.
    """

    chain: tuple[bytes, ...]
    source: str  # "tls" (our own handshake) or "header" (a trusted proxy's)
    refusal: str | None = None

    @property
    def leaf_pem(self) -> str:
        """The leaf as PEM text: what refusals are fingerprinted by (never stored)."""
        if not self.chain:
            return ""
        return "-----BEGIN CERTIFICATE-----\n" + base64.b64encode(self.chain[0]).decode() + "\n-----END CERTIFICATE-----\n"


def thumbprint(der: bytes) -> str:
    """RFC 8705 §3.1 `x5t#S256`: base64url(SHA-256(DER certificate)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


class TrustBundle:
    """One trust domain's X.509 authorities, from a PEM file re-read whenever it changes (checked per use).

    Cache: the parsed roots, keyed by the file's (inode, size, mtime); an unreadable, empty or garbled
    file trusts nothing (fail closed), it never falls back to the roots read before.
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self._label = label
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._roots: tuple[x509.Certificate, ...] = ()
        self._pem = b""

    def roots(self) -> tuple[x509.Certificate, ...]:
        self._refresh()
        return self._roots

    def pem(self) -> bytes:
        """The bundle's authorities as PEM (what a TLS server context is told to ask for)."""
        self._refresh()
        return self._pem

    def _refresh(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError:
            raise InvalidIdentity(f"{self._label}: trust bundle {self.path} is unreadable") from None
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        if key == self._key:
            return
        with self._lock:
            if key != self._key:
                self._roots, self._pem = self._load(info.st_size)
                self._key = key
                log.info("%s: trust bundle %s loaded (%d authorities)", self._label, self.path, len(self._roots))

    def _load(self, size: int) -> tuple[tuple[x509.Certificate, ...], bytes]:
        self._key = None  # fail closed while the file is bad: nothing read before stays trusted
        self._roots, self._pem = (), b""
        if size > MAX_BUNDLE_BYTES:
            raise InvalidIdentity(f"{self._label}: trust bundle larger than {MAX_BUNDLE_BYTES} bytes")
        try:
            roots = tuple(x509.load_pem_x509_certificates(self.path.read_bytes()))
        except (OSError, ValueError):
            raise InvalidIdentity(f"{self._label}: trust bundle {self.path} holds no readable certificate") from None
        pem = b"".join(root.public_bytes(serialization.Encoding.PEM) for root in roots)
        return roots, pem


class EndpointBundle:
    """One trust domain's X.509 authorities from its SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle §4, §5).

    Cache: the last good document's roots, fetched again `refresh` seconds after (sooner when its
    `spiffe_refresh_hint` says so, never under 10 s). The first fetch runs in the caller; later ones in
    a daemon thread once due, so no request or TLS handshake waits on the endpoint. A bad document (over
    1 MiB, not a JWK Set, an `x509-svid` key whose `x5c` is not exactly one CA certificate matching the key, no
    `x509-svid` key, a `spiffe_sequence` going back) trusts nothing until a good one (fail closed); an
    unreachable endpoint keeps the last good roots for `max_stale` seconds, then trusts nothing. Either
    failure is retried every 10 s.
    """

    RETRY = 10.0

    def __init__(self, config: BundleEndpointConfig, domain: str, label: str, clock: Callable[[], float] = time.time) -> None:
        self.config, self.domain, self._label, self._clock = config, domain, label, clock
        self._lock = threading.Lock()
        self._roots: tuple[x509.Certificate, ...] = ()
        self._pem = b""
        self._good_at: float | None = None  # when the roots held were last confirmed
        self._due = 0.0
        self._sequence: int | None = None
        self._error: str | None = "not fetched yet"
        self._running: threading.Thread | None = None

    def roots(self) -> tuple[x509.Certificate, ...]:
        self._refresh()
        return self._current()[0]

    def pem(self) -> bytes:
        self._refresh()
        return self._current()[1]

    def _current(self) -> tuple[tuple[x509.Certificate, ...], bytes]:
        with self._lock:
            fresh = self._good_at is not None and self._clock() - self._good_at <= max(self.config.max_stale, self._interval())
            if not fresh or not self._roots:
                raise InvalidIdentity(f"{self._label}: bundle endpoint {self.config.url}: {self._error or 'stale'}")
            return self._roots, self._pem

    def _interval(self) -> float:
        return float(self.config.refresh)

    def _refresh(self) -> None:
        if self._clock() < self._due:
            return
        with self._lock:
            if self._clock() < self._due or (self._running is not None and self._running.is_alive()):
                return
            first = self._good_at is None and self._error == "not fetched yet"
            self._due = self._clock() + self.RETRY  # one fetch at a time, whatever happens to it
            if not first:
                self._running = threading.Thread(target=self.fetch, name="bundle-endpoint", daemon=True)
                self._running.start()
                return
        self.fetch()

    def fetch(self) -> None:
        """Fetch the document and apply it; ends with one log line naming the URL (what was taken, or why not)."""
        try:
            body = fetch_bundle(self.config, self._endpoint_roots())
        except InvalidIdentity as exc:
            self._failed(exc.detail, keep=True)
            return
        try:
            roots, sequence, hint = parse_bundle(body)
        except InvalidIdentity as exc:
            self._failed(exc.detail, keep=False)
            return
        with self._lock:
            if sequence is not None and self._sequence is not None and sequence < self._sequence:
                self._roots, self._pem, self._good_at = (), b"", None
                self._error = f"spiffe_sequence went back from {self._sequence} to {sequence}"
                log.warning("%s: bundle endpoint %s: %s; trusting nothing", self._label, self.config.url, self._error)
                return
            self._roots, self._sequence, self._good_at, self._error = roots, sequence, self._clock(), None
            self._pem = b"".join(root.public_bytes(serialization.Encoding.PEM) for root in roots)
            interval = min(self._interval(), max(self.RETRY, float(hint))) if hint else self._interval()
            self._due = self._clock() + interval
        log.info("%s: bundle endpoint %s gave %d authorities", self._label, self.config.url, len(roots))

    def _failed(self, error: str, *, keep: bool) -> None:
        with self._lock:
            self._error = error
            if not keep:  # a bad document: nothing read before stays trusted
                self._roots, self._pem, self._good_at = (), b"", None
        log.warning("%s: bundle endpoint %s: %s%s", self._label, self.config.url, error, "" if keep else "; trusting nothing")

    def _endpoint_roots(self) -> bytes:
        """https_spiffe: the bootstrap bundle, and this bundle's own roots when the endpoint is of this trust domain."""
        if self.config.profile != "https_spiffe":
            return b""
        own = self._pem if self.config.endpoint_trust_domain == self.domain else b""
        try:
            return _read_capped(self.config.ca_file) + own  # type: ignore[arg-type]
        except OSError:
            raise InvalidIdentity(f"bootstrap bundle {self.config.ca_file} is unreadable") from None


def fetch_bundle(config: BundleEndpointConfig, spiffe_roots: bytes) -> bytes:
    """GET the endpoint: HTTPS only, no redirects, no proxies from the environment, a deadline and a byte cap."""
    try:
        context = _endpoint_context(config, spiffe_roots)
        http = httpx.Client(verify=context, timeout=config.timeout, follow_redirects=False, trust_env=False)
        with http, http.stream("GET", config.url, headers={"Accept": "application/json"}) as answer:
            if config.profile == "https_spiffe":
                _check_endpoint_id(answer, config.endpoint_spiffe_id or "")
            if answer.status_code != 200:
                raise InvalidIdentity(f"bundle endpoint answered HTTP {answer.status_code}")
            body = b""
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_BUNDLE_BYTES:
                    break  # read no further: parse_bundle refuses it as a bad document
            return body
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        raise InvalidIdentity(f"bundle endpoint unreachable: {type(exc).__name__}") from None


def _endpoint_context(config: BundleEndpointConfig, spiffe_roots: bytes) -> ssl.SSLContext:
    if config.profile == "https_web":  # web PKI: the URL's host name in a certificate from these CAs
        return ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    context = ssl.create_default_context(cadata=spiffe_roots.decode())
    context.check_hostname = False  # SPIFFE authentication: the SPIFFE ID is checked instead (§5.2.2)
    return context


def _check_endpoint_id(answer: httpx.Response, expected: str) -> None:
    stream = answer.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(True) if ssl_object is not None else None  # positional: _ssl._SSLSocket too
    if not der:
        raise InvalidIdentity("bundle endpoint presented no certificate")
    found, _ = _spiffe_id(x509.load_der_x509_certificate(der))
    if found != expected:
        raise InvalidIdentity(f"bundle endpoint is {found!r}, not {expected!r}")


def parse_bundle(body: bytes) -> tuple[tuple[x509.Certificate, ...], int | None, int | None]:
    """A SPIFFE bundle (a JWK Set): its `x509-svid` authorities, `spiffe_sequence` and `spiffe_refresh_hint`."""
    if len(body) > MAX_BUNDLE_BYTES:
        raise InvalidIdentity(f"bundle document larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise InvalidIdentity("bundle document is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InvalidIdentity("bundle document is not a JWK Set")
    sequence, hint = document.get("spiffe_sequence"), document.get("spiffe_refresh_hint")
    for name, value in (("spiffe_sequence", sequence), ("spiffe_refresh_hint", hint)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidIdentity(f"bundle {name} is not a non-negative integer")
    roots = tuple(_authority(key) for key in document["keys"] if isinstance(key, dict) and key.get("use") == "x509-svid"
                  and key.get("kty") in ("EC", "RSA"))  # fmt: skip
    if not roots:
        raise InvalidIdentity("bundle document holds no x509-svid authority")
    return roots, sequence, hint


def _authority(key: dict) -> x509.Certificate:
    """X.509-SVID §6: `x5c` is exactly one CA certificate, whose public key is the JWK's."""
    chain = key.get("x5c")
    if not isinstance(chain, list) or len(chain) != 1 or not isinstance(chain[0], str):
        raise InvalidIdentity("an x509-svid key's x5c must hold exactly one certificate")
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
        public = jwt.PyJWK.from_dict({k: v for k, v in key.items() if k not in ("x5c", "use")}).key
    except (ValueError, jwt.PyJWKError):
        raise InvalidIdentity("an x509-svid key is not a certificate and a public key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if public.public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise InvalidIdentity("an x509-svid key's parameters are not its certificate's key")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InvalidIdentity("an x509-svid authority must be a CA certificate")
    return cert


def _read_capped(path: Path) -> bytes:
    if os.stat(path).st_size > MAX_BUNDLE_BYTES:
        raise OSError("too large")
    return path.read_bytes()


def trust_bundle(source: Path | BundleEndpointConfig, domain: str, label: str,
                 clock: Callable[[], float] = time.time) -> TrustBundle | EndpointBundle:  # fmt: skip
    """The trust domain's bundle: a PEM file, or a SPIFFE bundle endpoint."""
    if isinstance(source, BundleEndpointConfig):
        return EndpointBundle(source, domain, label, clock)
    return TrustBundle(source, label)


class SvidAttestors:
    """Every configured `x509_svid` attestor, routed by the trust domain of the SPIFFE ID presented."""

    def __init__(self, configs: Sequence[X509AttestorConfig], *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_domain: dict[str, tuple[X509AttestorConfig, TrustBundle | EndpointBundle]] = {}
        for config in configs:
            for domain, source in config.trust_domains.items():
                if domain in self._by_domain:
                    other = self._by_domain[domain][0].name
                    raise ConfigError(f"x509 attestors {other!r} and {config.name!r} both trust {domain}")
                bundle = trust_bundle(source, domain, f"x509 attestor {config.name} ({domain})", clock)
                self._by_domain[domain] = (config, bundle)

    @property
    def bundles(self) -> list[TrustBundle | EndpointBundle]:
        return [bundle for _, bundle in self._by_domain.values()]

    def verify(self, facts: TlsFacts) -> Identity:
        """The SPIFFE ID the chain proves, or InvalidIdentity."""
        if facts.refusal:
            raise InvalidIdentity(facts.refusal)
        if not facts.chain or sum(map(len, facts.chain)) > MAX_CHAIN_BYTES:
            raise InvalidIdentity("no client certificate, or a chain larger than the limit")
        certs = [_parse(der) for der in facts.chain]
        leaf, intermediates = certs[0], certs[1:]
        spiffe_id, domain = _spiffe_id(leaf)
        if domain not in self._by_domain:
            raise InvalidIdentity(f"untrusted trust domain {domain!r}")
        config, bundle = self._by_domain[domain]
        if len(certs) > config.max_chain_length:
            raise InvalidIdentity(f"chain longer than {config.max_chain_length} certificates")
        _check_leaf(leaf)
        when = _check_times(certs, self._clock(), config.leeway)
        _verify_path(leaf, intermediates, bundle.roots(), when, config.max_chain_length)
        x5t = thumbprint(facts.chain[0])
        claims = {"spiffe_id": spiffe_id, "trust_domain": domain, "x5t#S256": x5t, "source": facts.source}
        return Identity(
            subject=spiffe_id,
            attestor=config.name,
            claims=MappingProxyType(claims),
            token_fingerprint="sha256:" + hashlib.sha256(facts.chain[0]).hexdigest(),
            expires_at=int(leaf.not_valid_after_utc.timestamp()),
            x5t=x5t,
        )


def _parse(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise InvalidIdentity("client certificate is not DER X.509") from None


def _spiffe_id(leaf: x509.Certificate) -> tuple[str, str]:
    """X.509-SVID §2: exactly one URI SAN, and it is a SPIFFE ID."""
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        raise InvalidIdentity("certificate has no URI SAN") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidIdentity(f"certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one")
    uri = uris[0]
    match = SPIFFE_ID.fullmatch(uri) if len(uri) <= MAXSPIFFE_ID else None
    if match is None or any(seg in (".", "..") for seg in match.group(2).split("/")):
        raise InvalidIdentity("URI SAN is not a SPIFFE ID")
    return uri, match.group(1)


def _check_leaf(leaf: x509.Certificate) -> None:
    """X.509-SVID §4: a leaf is not a CA, has digitalSignature and neither keyCertSign nor cRLSign."""
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise InvalidIdentity("leaf certificate is a CA")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise InvalidIdentity("leaf certificate has no key usage") from None
    if not usage.digital_signature or usage.key_cert_sign or usage.crl_sign:
        raise InvalidIdentity("leaf key usage must be digitalSignature without keyCertSign or cRLSign")


def _check_times(certs: Iterable[x509.Certificate], now: float, leeway: int) -> datetime:
    """Every certificate sent is valid at `now` ± leeway; returns the instant path validation uses.

    cryptography checks validity at one exact instant: we give it `now` clamped into the certificates'
    common window, so the skew allowed is exactly `leeway`, decided here on the injected clock.
    """
    starts, ends = [], []
    for cert in certs:
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        if end <= now - leeway:
            raise InvalidIdentity("certificate expired")
        if start > now + leeway:
            raise InvalidIdentity("certificate not valid yet")
        starts.append(start)
        ends.append(end)
    instant = min(max(now, max(starts)), min(ends))
    return datetime.fromtimestamp(instant, tz=UTC)


def _verify_path(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: Sequence[x509.Certificate],
    when: datetime,
    max_length: int,
) -> None:
    if not roots:
        raise InvalidIdentity("trust bundle is empty")
    verifier = PolicyBuilder().store(Store(list(roots))).time(when).max_chain_depth(max_length).build_client_verifier()
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise InvalidIdentity(f"chain does not verify against the trust bundle: {str(exc)[:160]}") from None

"""X.509-SVID attestation: a client certificate chain, verified against its trust domain's bundle, names a SPIFFE ID.

Call path: SvidAttestors.verify(facts) → _spiffe_id (the single URI SAN, SPIFFE ID grammar) → the
attestor trusting that ID's trust domain → _check_leaf (not a CA; digitalSignature, never keyCertSign or
cRLSign) → _check_times (every certificate sent, bounded skew, injected clock only) → RFC 5280 path
validation by `cryptography` against that trust domain's bundle alone (TrustBundle, re-read when its
file changes: a root removed from the file is distrusted at the next request).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from broker.config_x509 import X509AttestorConfig
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


class SvidAttestors:
    """Every configured `x509_svid` attestor, routed by the trust domain of the SPIFFE ID presented."""

    def __init__(self, configs: Sequence[X509AttestorConfig], *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_domain: dict[str, tuple[X509AttestorConfig, TrustBundle]] = {}
        for config in configs:
            for domain, path in config.trust_domains.items():
                if domain in self._by_domain:
                    other = self._by_domain[domain][0].name
                    raise ConfigError(f"x509 attestors {other!r} and {config.name!r} both trust {domain}")
                self._by_domain[domain] = (config, TrustBundle(path, f"x509 attestor {config.name} ({domain})"))

    @property
    def bundles(self) -> list[TrustBundle]:
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

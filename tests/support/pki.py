"""Real X.509 certificates for tests: a trust domain CA, intermediates, SVID leaves, a server certificate.

Built here with `cryptography` directly, never with the broker's own dev CA code, so the attestor is
tested against certificates it did not make.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
HOUR = dt.timedelta(hours=1)


@dataclass
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _usage(*, digital: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                         crl_sign=cert_sign, encipher_only=False, decipher_only=False)  # fmt: skip


def _builder(subject: str, key: ec.EllipticCurvePrivateKey, issuer: Issued | None, start, end) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        builder = builder.add_extension(aki, critical=False)
    return builder


def ca(trust_domain: str, parent: Issued | None = None, *, start=None, end=None) -> Issued:
    """A trust domain's root CA (self-signed), or with `parent` an intermediate signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(f"{trust_domain} {'intermediate' if parent else 'root'}", key, parent,
                       start or NOW - HOUR, end or NOW + 24 * HOUR)  # fmt: skip
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    builder = builder.add_extension(_usage(cert_sign=True), critical=True)
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False
    )
    signer = parent.key if parent else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def svid(
    parent: Issued,
    *uris: str,
    start=None,
    end=None,
    is_ca: bool = False,
    digital_signature: bool = True,
    dns: tuple[str, ...] = (),
) -> Issued:
    """An X.509-SVID leaf for `uris` (normally exactly one SPIFFE ID), with knobs to break it."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder("svid", key, parent, start or NOW - HOUR, end or NOW + HOUR)
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    builder = builder.add_extension(_usage(digital=digital_signature, cert_sign=is_ca), critical=True)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH])
    builder = builder.add_extension(eku, critical=False)
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(parent.key, hashes.SHA256()), key)


def server(parent: Issued, host: str = "127.0.0.1") -> Issued:
    """A TLS server certificate for a loopback address."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(host, key, parent, NOW - HOUR, NOW + 24 * HOUR)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(_usage(digital=True), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    san = [x509.IPAddress(ipaddress.ip_address(host))] if host[0].isdigit() else [x509.DNSName(host)]
    builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return Issued(builder.sign(parent.key, hashes.SHA256()), key)


def write_identity(folder: Path, leaf: Issued, *chain: Issued) -> tuple[Path, Path]:
    """cert.pem (leaf, then intermediates) and key.pem in `folder`: what an mTLS client loads."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(leaf.pem + b"".join(c.pem for c in chain))
    key.write_bytes(leaf.key_pem)
    return cert, key

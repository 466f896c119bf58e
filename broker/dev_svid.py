"""Dev mode's trust domain `dev.local`: a CA that signs the dev server certificate and dev X.509-SVIDs.

Never for production: settings with env=production refuse the dev trust domain (broker/config_x509.py).
Files live in `<data dir>/dev-ca/` (keys 0600); `broker dev --tls` serves with them and
`broker dev-svid --subject spiffe://dev.local/... --out DIR` writes spiffe-helper's three files.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.config_x509 import DEV_TRUST_DOMAIN
from broker.dev import private_dir, require_dev_data_dir, write_private
from broker.errors import ConfigError
from broker.identity.x509 import SPIFFE_ID

DEV_X509_ATTESTOR = "dev-x509"
SVID_LIFETIME = dt.timedelta(hours=1)  # spiffe-helper's SVIDs are short too; run dev-svid again to rotate


def _ca_dir(data_dir: Path) -> Path:
    return data_dir / "dev-ca"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()  # fmt: skip


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)  # fmt: skip


def _sign(subject: str, key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName], lifetime: dt.timedelta,
          ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, eku: list) -> x509.Certificate:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer, signer = (ca[0].subject, ca[1]) if ca else (name, key)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
        .add_extension(_usage(ca=ca is None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                                        critical=False)  # fmt: skip
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(signer, hashes.SHA256())


def ensure_dev_ca(data_dir: Path) -> dict[str, Path]:
    """The dev CA (made once) and a server certificate for 127.0.0.1/localhost signed by it."""
    folder = private_dir(_ca_dir(data_dir))
    paths = {name: folder / f"{name}.pem" for name in ("bundle", "ca_key", "server", "server_key")}
    if not paths["ca_key"].exists():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(f"{DEV_TRUST_DOMAIN} dev CA", key, [x509.UniformResourceIdentifier(f"spiffe://{DEV_TRUST_DOMAIN}")],
                     dt.timedelta(days=365), None, [])  # fmt: skip
        write_private(paths["ca_key"], _key_pem(key))
        paths["bundle"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not paths["server_key"].exists():
        ca = _load_ca(paths)
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = _sign("broker dev server", key, names, dt.timedelta(days=90), ca, [ExtendedKeyUsageOID.SERVER_AUTH])
        write_private(paths["server_key"], _key_pem(key))
        paths["server"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _load_ca(paths: dict[str, Path]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = serialization.load_pem_private_key(paths["ca_key"].read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificate(paths["bundle"].read_bytes()), key


def dev_tls_config(data_dir: Path) -> dict[str, Any]:
    """Settings that serve HTTPS with the dev server certificate and trust dev.local X.509-SVIDs."""
    paths = ensure_dev_ca(data_dir)
    return {
        "tls": {"cert_file": str(paths["server"]), "key_file": str(paths["server_key"])},
        "x509_attestors": [{"name": DEV_X509_ATTESTOR, "trust_domains": {DEV_TRUST_DOMAIN: str(paths["bundle"])}}],
    }


def dev_x509_rules(boundaries: list[str], allow: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every SPIFFE ID of dev.local may use the demo boundaries: `allow`, dev:demo-workload's (else read, write)."""
    if allow is None:
        allow = [{"boundary": name, "scopes": ["read", "write"], "max_ttl": "15m"} for name in boundaries]
    match = {"attestor": DEV_X509_ATTESTOR, "claims": {"trust_domain": DEV_TRUST_DOMAIN}}
    return [{"name": "dev-svids", "match": match, "allow": allow}]


def write_dev_svid(data_dir: Path, subject: str, out: Path) -> list[Path]:
    """svid.pem, svid_key.pem (0600) and bundle.pem in `out`, as spiffe-helper writes them."""
    require_dev_data_dir(data_dir)
    match = SPIFFE_ID.fullmatch(subject)
    if match is None or match.group(1) != DEV_TRUST_DOMAIN or not match.group(2):
        raise ConfigError(f"--subject must be a SPIFFE ID of {DEV_TRUST_DOMAIN}, e.g. spiffe://{DEV_TRUST_DOMAIN}/app")
    paths = ensure_dev_ca(data_dir)
    ca = _load_ca(paths)
    key = ec.generate_private_key(ec.SECP256R1())
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    cert = _sign("dev svid", key, [x509.UniformResourceIdentifier(subject)], SVID_LIFETIME, ca, eku)
    private_dir(out)
    files = [out / "svid.pem", out / "svid_key.pem", out / "bundle.pem"]
    # each file replaced atomically; a client reading between the two sees a pair that does not match,
    # which its TLS library refuses, and keeps the SVID it had until its next call (as with spiffe-helper)
    for path, text in zip(files[:2], (cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))):
        staged = path.with_suffix(".tmp")
        write_private(staged, text)
        staged.replace(path)
    files[2].write_bytes(paths["bundle"].read_bytes())
    return files

"""Settings of X.509-SVID attestation: trust bundles, the broker's own TLS, a proxy's client-cert header."""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

# SPIFFE ID spec §2.1: lowercase letters, digits, `.`, `-`, `_`
TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
DEV_TRUST_DOMAIN = "dev.local"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class X509AttestorConfig(_Strict):
    """An `x509_svid` attestor: client certificate chains verified against one bundle per trust domain."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    trust_domains: dict[str, Path] = Field(min_length=1)  # trust domain → PEM bundle file (reloaded on change)
    leeway: int = Field(default=30, ge=0, le=300)  # the same bounded skew as identity JWTs
    max_chain_length: int = Field(default=4, ge=1, le=8)

    @field_validator("trust_domains")
    @classmethod
    def _trust_domain_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        bad = [name for name in value if not TRUST_DOMAIN.fullmatch(name)]
        if bad:
            raise ValueError(f"trust domains {bad} are not valid SPIFFE trust domain names")
        return value


class TlsConfig(_Strict):
    """The broker serves HTTPS with this certificate and asks (never requires) for a client certificate."""

    cert_file: Path
    key_file: Path


class ClientCertHeaderConfig(_Strict):
    """Behind a TLS-terminating proxy: the client certificate (URL-encoded PEM, or XFCC) from one header.

    Read only on connections from `trusted_proxies`; anyone else sending the header is refused.
    """

    header: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(min_length=1)

    @field_validator("header")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


def resolve_bundles(attestors: list[X509AttestorConfig], base: Path) -> list[X509AttestorConfig]:
    """Relative bundle paths in a YAML file are relative to that file's folder."""
    return [
        a.model_copy(update={"trust_domains": {td: p if p.is_absolute() else base / p for td, p in a.trust_domains.items()}})
        for a in attestors
    ]


def refuse_dev_trust_domain(attestors: list[X509AttestorConfig]) -> None:
    """The dev trust domain of `broker dev --tls` is never trusted in production."""
    for attestor in attestors:
        if DEV_TRUST_DOMAIN in attestor.trust_domains:
            raise ValueError(f"x509 attestor {attestor.name!r} trusts the development trust domain {DEV_TRUST_DOMAIN}")

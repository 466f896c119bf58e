"""Settings of X.509-SVID attestation: trust bundles, the broker's own TLS, a proxy's client-cert header."""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# SPIFFE ID spec §2.1: lowercase letters, digits, `.`, `-`, `_`
TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
DEV_TRUST_DOMAIN = "dev.local"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)*)")


class BundleEndpointConfig(_Strict):
    """A SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle §5): the trust domain's JWK Set over HTTPS."""

    url: str = Field(pattern=r"^https://[^\s#@]+$", max_length=2048)
    profile: Literal["https_web", "https_spiffe"] = "https_web"
    endpoint_spiffe_id: str | None = None  # https_spiffe: the SPIFFE ID the endpoint's certificate names
    ca_file: Path | None = None  # https_web: CAs of the endpoint (default: the system's); https_spiffe: the bootstrap bundle
    refresh: int = Field(default=300, ge=10, le=86_400)  # seconds; a shorter spiffe_refresh_hint wins (never < 10 s)
    max_stale: int = Field(default=3600, ge=0, le=604_800)  # endpoint unreachable: the last good bundle, this long
    timeout: float = Field(default=5.0, gt=0, le=30)

    @model_validator(mode="after")
    def _spiffe_profile(self) -> BundleEndpointConfig:
        if self.profile == "https_spiffe":
            if self.endpoint_spiffe_id is None or self.ca_file is None:
                raise ValueError("profile https_spiffe needs endpoint_spiffe_id and ca_file (the bootstrap bundle)")
            if not SPIFFE_ID.fullmatch(self.endpoint_spiffe_id):
                raise ValueError("endpoint_spiffe_id is not a SPIFFE ID")
        elif self.endpoint_spiffe_id is not None:
            raise ValueError("endpoint_spiffe_id goes with profile https_spiffe")
        return self

    @property
    def endpoint_trust_domain(self) -> str | None:
        match = SPIFFE_ID.fullmatch(self.endpoint_spiffe_id or "")
        return match.group(1) if match else None


class X509AttestorConfig(_Strict):
    """An `x509_svid` attestor: client certificate chains verified against one bundle per trust domain."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # trust domain → PEM bundle file (reloaded on change) or a SPIFFE bundle endpoint (refreshed)
    trust_domains: dict[str, Path | BundleEndpointConfig] = Field(min_length=1)
    leeway: int = Field(default=30, ge=0, le=300)  # the same bounded skew as identity JWTs
    max_chain_length: int = Field(default=4, ge=1, le=8)

    @field_validator("trust_domains")
    @classmethod
    def _trust_domain_names(cls, value: dict[str, Path | BundleEndpointConfig]) -> dict[str, Path | BundleEndpointConfig]:
        bad = [name for name in value if not TRUST_DOMAIN.fullmatch(name)]
        if bad:
            raise ValueError(f"trust domains {bad} are not valid SPIFFE trust domain names")
        urls = [name for name, source in value.items() if isinstance(source, Path) and re.match(r"https?:/", str(source))]
        if urls:  # Path("https://x") reads as a file that is never there: say how to write an endpoint
            raise ValueError(f"trust domains {urls}: a bundle endpoint is a mapping, {{url: https://…}}")
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
    """Relative bundle paths (and bundle endpoints' `ca_file`) in a YAML file are relative to that file's folder."""
    return [a.model_copy(update={"trust_domains": {td: _resolve(s, base) for td, s in a.trust_domains.items()}})
            for a in attestors]  # fmt: skip


def _resolve(source: Path | BundleEndpointConfig, base: Path) -> Path | BundleEndpointConfig:
    if isinstance(source, Path):
        return source if source.is_absolute() else base / source
    if source.ca_file is None or source.ca_file.is_absolute():
        return source
    return source.model_copy(update={"ca_file": base / source.ca_file})


def refuse_dev_trust_domain(attestors: list[X509AttestorConfig]) -> None:
    """The dev trust domain of `broker dev --tls` is never trusted in production."""
    for attestor in attestors:
        if DEV_TRUST_DOMAIN in attestor.trust_domains:
            raise ValueError(f"x509 attestor {attestor.name!r} trusts the development trust domain {DEV_TRUST_DOMAIN}")

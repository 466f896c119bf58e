"""Identity: attest a workload's identity token (Kubernetes, GitHub Actions, SPIFFE JWT-SVID, OIDC)."""

from broker.identity.jwks import JwksError, build_http_client
from broker.identity.oidc import MAX_TOKEN_BYTES, Attestors, Identity
from broker.identity.presets import MAX_SUBJECT_CHARS

__all__ = [
    "MAX_SUBJECT_CHARS",
    "MAX_TOKEN_BYTES",
    "Attestors",
    "Identity",
    "JwksError",
    "build_http_client",
]

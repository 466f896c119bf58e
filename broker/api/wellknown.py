"""Public discovery: the broker's JWKS and RFC 8414 authorization-server metadata."""

from __future__ import annotations

from fastapi import APIRouter

from broker.api.deps import Service

router = APIRouter(tags=["discovery"])


@router.get("/.well-known/jwks.json")
def jwks(svc: Service) -> dict:
    return svc.keys.jwks()


@router.get("/.well-known/oauth-authorization-server")
def metadata(svc: Service) -> dict:
    base = svc.settings.issuer.rstrip("/")
    return {
        "issuer": svc.settings.issuer,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/oauth/token",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "grant_types_supported": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["bearer"],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "scopes_supported": sorted({s for b in svc.settings.boundaries for s in b.scopes}),
    }

"""Public discovery: the broker's JWKS and RFC 8414 authorization-server metadata."""

from __future__ import annotations

from fastapi import APIRouter

from broker.api.deps import Service
from broker.backends.mcp import DPOP_ALGORITHMS
from broker.grants.exchange import GRANT_TYPES

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
        "grant_types_supported": list(GRANT_TYPES),
        # RFC 8414 §2 requires a non-empty list; there is no authorization endpoint, so only "none"
        "response_types_supported": ["none"],
        "token_endpoint_auth_methods_supported": ["none"],
        # resource servers and owners authenticate with their own identity token as a Bearer token
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["bearer"],
        "dpop_signing_alg_values_supported": DPOP_ALGORITHMS,
        "authorization_details_types_supported": ["mcp_tool_call"],
        "scopes_supported": sorted({s for b in svc.settings.boundaries for s in b.scopes}),
    }

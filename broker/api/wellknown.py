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
        # RFC 8414 requires the member; with no authorization endpoint the one true value is the
        # registered `none` (OAuth 2.0 Multiple Response Type Encoding Practices §4)
        "response_types_supported": ["none"],
        "token_endpoint_auth_methods_supported": ["none"],
        # resource servers and owners authenticate with their own identity token as a Bearer token
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["bearer"],
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "scopes_supported": sorted({s for b in svc.settings.boundaries for s in b.scopes}),
    }

"""The `mcp` backend: an MCP server is an OAuth protected resource; its credentials are broker JWTs.

The token's `aud` is the server's canonical URI (RFC 8707), its scopes are tool names, and a call
token (one tool, ≤ 60 s) carries the RFC 9396 `mcp_tool_call` binding. Revocation is the ledger's
deny list, as for `jwt`; the server learns of it by introspection.
"""

from __future__ import annotations

from typing import Any

from broker.backends.jwt import JwtBackend
from broker.config import BoundaryConfig

DPOP_ALGORITHMS = ["ES256", "EdDSA"]  # what broker/identity/dpop.py verifies


class McpBackend(JwtBackend):
    """A `jwt` backend whose audience is the MCP server's canonical URI (see BoundaryConfig.jwt_audience)."""

    kind = "mcp"
    calls_out = False  # minting signs here: no network call


def protected_resource_metadata(boundary: BoundaryConfig, issuer: str) -> dict[str, Any]:
    """The RFC 9728 document the MCP server serves at /.well-known/oauth-protected-resource[path]."""
    if boundary.backend != "mcp" or boundary.resource_uri is None:
        raise ValueError(f"boundary {boundary.name!r} is not an mcp boundary")
    return {
        "resource": boundary.resource_uri,
        "authorization_servers": [issuer],
        "scopes_supported": sorted(boundary.scopes),
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": DPOP_ALGORITHMS,
        "dpop_bound_access_tokens_required": boundary.require_dpop,
        "authorization_details_types_supported": ["mcp_tool_call"],
        "resource_name": boundary.name,
    }

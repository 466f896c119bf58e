"""Claims of a broker-minted credential: a pure function of the grant and the clock."""

from __future__ import annotations

from typing import Any


def build_claims(
    *,
    issuer: str,
    subject: str,
    audience: str,
    scopes: tuple[str, ...],
    task: str,
    jti: str,
    issued_at: float,
    expires_at: float,
    cnf_jkt: str | None = None,
    cnf_x5t: str | None = None,
    authorization_details: tuple[dict[str, str], ...] = (),
) -> dict[str, Any]:
    """The JWT claims; `exp` equals the grant's expiry so the token never outlives it."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "client_id": subject,  # RFC 9068 §2.2: the workload is both the resource owner and the client
        "aud": audience,
        "scope": " ".join(scopes),
        "task": task,
        "jti": jti,
        "iat": int(issued_at),
        "nbf": int(issued_at),
        "exp": int(expires_at),
    }
    if cnf_jkt:
        claims["cnf"] = {"jkt": cnf_jkt}
    if cnf_x5t:  # RFC 8705 §3.1: bound to the client certificate of the mutual-TLS request
        claims["cnf"] = {**claims.get("cnf", {}), "x5t#S256": cnf_x5t}
    if authorization_details:  # RFC 9396 §9.1: the granted details, as a JWT claim
        claims["authorization_details"] = [dict(detail) for detail in authorization_details]
    return claims

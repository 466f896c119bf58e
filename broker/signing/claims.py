"""Claims of a broker-minted credential: a pure function of the grant and the clock."""

from __future__ import annotations

from collections.abc import Mapping
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
    principal: str | None = None,
    act: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JWT claims; `exp` equals the grant's expiry so the token never outlives it.

    A delegated token (RFC 8693 §4.1) is for `principal` (its `sub`), held and presented by `subject`
    (its `client_id`, the current actor: `act.sub`).
    """
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": principal or subject,
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
    if act:
        claims["act"] = dict(act)
    return claims


def build_txn_claims(
    *, issuer: str, jti: str, scopes: tuple[str, ...], issued_at: float, expires_at: float, txn: Mapping[str, Any]
) -> dict[str, Any]:
    """A transaction token's claims (draft-ietf-oauth-transaction-tokens §Txn-Token Format): `iat`, `aud`
    (the trust domain), `exp`, `txn`, `sub`, `scope`, `req_wl`, and `tctx`/`rctx` when given. `iss`
    (optional there) and `jti` (the grant) let the broker verify and introspect what it issued."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "iat": int(issued_at),
        "aud": txn["aud"],
        "exp": int(expires_at),
        "txn": txn["txn"],
        "sub": txn["sub"],
        "scope": " ".join(scopes),
        "req_wl": txn["req_wl"],
        "jti": jti,
    }
    for name in ("tctx", "rctx"):
        if txn.get(name):
            claims[name] = dict(txn[name])
    return claims

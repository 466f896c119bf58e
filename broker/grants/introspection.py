"""RFC 7662 introspection and RFC 7009 revocation by token: what a broker JWT's grant says now."""

from __future__ import annotations

from typing import Any

import jwt

from broker.grants.service import GrantService, owns, recorded_use_case
from broker.identity import Identity
from broker.ledger import ACTIVE, Grant
from broker.signing import TOKEN_TYPE, TXN_TOKEN_TYPE

CLAIMS_SHOWN = ("sub", "client_id", "aud", "scope", "exp", "iat", "nbf", "jti", "iss", "task", "cnf",
                "authorization_details", "act", "txn", "req_wl")  # `act`: RFC 8693 §4.1


@recorded_use_case("introspect")
def introspect(service: GrantService, caller: Identity, token: str, proof_jkt: str | None = None) -> dict[str, Any]:
    """Active only if the signature holds, it has not expired, and the grant is active.

    Claims go only to the token's owner and to callers whose policy role is `resource_server`
    (RFC 7662 §4); anyone else learns `{"active": false}`, and the refusal is recorded. The holder of
    a DPoP-bound token introspects it only with a proof by the bound key; a resource server gets
    `cnf` back and checks the holder's proof itself (RFC 9449 §6.2).
    """
    claims = _claims(service, token)
    grant = service.ledger.get_grant(str(claims.get("jti"))) if claims else None
    if claims is None or grant is None:
        return {"active": False}  # an unverifiable token tells nobody anything
    owner = owns(caller, grant)
    if not owner and "resource_server" not in service.roles(caller):
        service.record_refusal(caller, "POST /oauth/introspect", code="forbidden", grant_id=grant.id)
        return {"active": False}
    if grant.status != ACTIVE or claims["exp"] <= service.clock():
        return {"active": False}
    if owner:
        service.check_holder(caller, grant, proof_jkt, "introspect")
    token_type = "DPoP" if grant.cnf_jkt else "Bearer"
    return {"active": True, "token_type": token_type, **{k: claims[k] for k in CLAIMS_SHOWN if k in claims}}


def grant_of_token(service: GrantService, token: str) -> Grant | None:
    """The grant behind a valid, unexpired broker JWT (an expired one is the reaper's)."""
    claims = _claims(service, token)
    return service.ledger.get_grant(str(claims.get("jti"))) if claims else None


def _claims(service: GrantService, token: str) -> dict[str, Any] | None:
    try:
        return service.keys.verify(token, issuer=service.settings.issuer, types=(TOKEN_TYPE, TXN_TOKEN_TYPE))
    except (jwt.InvalidTokenError, ValueError):
        return None

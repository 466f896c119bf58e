"""OAuth endpoints: RFC 8693 token exchange, RFC 7662 introspection, RFC 7009 revocation."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Service, bearer, caller, dpop_key, form_body, off_loop
from broker.api.schemas import IntrospectionOut, TokenExchangeForm, TokenForm, TokenOut
from broker.api.tls import tls_facts
from broker.blocking import attempt
from broker.grants import introspection
from broker.grants.delegation import delegate
from broker.grants.exchange import exchange, identity_token, mode, one, refuse_impersonation
from broker.grants.service import GrantService, Issued
from broker.grants.txn_tokens import issue_txn_token
from broker.identity import Identity

router = APIRouter(prefix="/oauth", tags=["oauth"], dependencies=[Depends(form_body)])

def _form_body(model: type) -> dict:
    """The OpenAPI request body of a form route (the route parses the form itself, see `_form`)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}}


JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ISSUED_TYPE = {"jwt": JWT_TYPE, "mcp": JWT_TYPE, "vault_token": "urn:broker:token-type:vault_token",
               "txn_token": "urn:ietf:params:oauth:token-type:txn_token"}


async def _form(request: Request) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for key, value in parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(key, []).append(value)
    return form


@router.post("/token", responses={200: {"model": TokenOut}}, openapi_extra=_form_body(TokenExchangeForm))
async def token_exchange(request: Request, svc: Service) -> dict:
    form = await _form(request)
    issued = await run_in_threadpool(_issue, request, svc, form)
    credential, grant = issued.credential, issued.grant
    answer = {
        "access_token": credential["token"],
        "issued_token_type": ISSUED_TYPE[grant.backend],
        "token_type": credential.get("token_type", "N_A") if grant.backend in ("jwt", "mcp") else "N_A",
        "expires_in": int(grant.expires_at - grant.issued_at),
        "scope": grant.scopes,
        "grant_id": grant.id,
    }  # never a refresh_token (transaction tokens: draft-ietf-oauth-transaction-tokens, Txn-Token Response)
    details = form.get("authorization_details")
    if details:  # RFC 9396 §7: the granted details are answered (what was asked, checked and bound)
        answer["authorization_details"] = json.loads(details[0])
    return answer


def _issue(request: Request, svc: Service, form: dict[str, list[str]]) -> Issued:
    """An identity token for a grant's token; or, with the caller's own identity in `Authorization`, a held
    broker token for a sub-agent's (`actor_token`) or for a transaction token."""
    kind = mode(form)
    if kind == "exchange":
        refuse_impersonation(svc, form)
        identity = svc.authenticate(identity_token(form), action="POST /oauth/token")
        return exchange(svc, identity, form, dpop_key(request, svc, identity, None))
    caller = svc.authenticate(bearer(request), action="POST /oauth/token", tls=tls_facts(request))
    jkt = dpop_key(request, svc, caller, bearer(request))
    if kind == "txn_token":
        return issue_txn_token(svc, caller, form, jkt)
    actors = form.get("actor_token", [])
    actor = svc.authenticate(actors[0] if len(actors) == 1 else None, action="POST /oauth/token actor_token")
    return delegate(svc, caller, actor, form, jkt)


@router.post("/introspect", responses={200: {"model": IntrospectionOut}}, openapi_extra=_form_body(TokenForm))
async def introspect(request: Request, svc: Service) -> dict:
    """The caller verified on the event loop when that waits for nothing, then one hop to an issuing
    thread for the rest (a DPoP proof's replay check, the grant's status): each hop of a busy server
    waits its turn for the GIL, and the status is read where waiting is allowed."""
    identity = attempt(caller, request, svc) or await off_loop(request, caller, request, svc)
    token = one(await _form(request), "token")
    return await off_loop(request, _introspect, request, svc, identity, token)


def _introspect(request: Request, svc: GrantService, identity: Identity, token: str) -> dict:
    return introspection.introspect(svc, identity, token, dpop_key(request, svc, identity, token, True))


@router.post("/revoke", responses={200: {"description": "Always `{}` (RFC 7009 §2.2)."}},
             openapi_extra=_form_body(TokenForm))
async def revoke(request: Request, svc: Service) -> dict:
    """As introspection: the caller on the event loop when that waits for nothing, then one thread hop."""
    identity = attempt(caller, request, svc) or await off_loop(request, caller, request, svc)
    token = one(await _form(request), "token")
    await off_loop(request, _revoke, request, svc, identity, token)
    return {}  # RFC 7009 §2.2: 200 whether or not the token was valid


def _revoke(request: Request, svc: GrantService, identity: Identity, token: str) -> None:
    jkt = dpop_key(request, svc, identity, token, True)
    grant = introspection.grant_of_token(svc, token)
    if grant is not None and grant.subject == identity.subject and grant.attestor == identity.attestor:
        svc.complete(identity, grant.id, jkt)

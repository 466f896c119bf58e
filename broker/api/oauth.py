"""OAuth endpoints: RFC 8693 token exchange, RFC 7662 introspection, RFC 7009 revocation."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Service, bearer, dpop_key, form_body
from broker.api.schemas import task_id
from broker.errors import BadRequest, MultiBoundary
from broker.grants import GrantRequest

router = APIRouter(prefix="/oauth", tags=["oauth"], dependencies=[Depends(form_body)])

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES = {"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"}
ISSUED_TYPE = {"jwt": "urn:ietf:params:oauth:token-type:jwt", "vault_token": "urn:broker:token-type:vault_token"}


async def _form(request: Request) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for key, value in parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(key, []).append(value)
    return form


def _one(form: dict[str, list[str]], name: str, required: bool = True) -> str | None:
    values = form.get(name, [])
    if len(values) > 1:
        raise BadRequest(f"parameter {name!r} given more than once")
    if required and not values:
        raise BadRequest(f"parameter {name!r} is required")
    return values[0] if values else None


def _exchange_request(form: dict[str, list[str]]) -> GrantRequest:
    if _one(form, "grant_type") != TOKEN_EXCHANGE:
        raise BadRequest("grant_type must be token-exchange")
    if _one(form, "subject_token_type") not in SUBJECT_TOKEN_TYPES:
        raise BadRequest("subject_token_type must be a JWT or id_token type")
    targets = form.get("resource", []) + form.get("audience", [])
    if len(set(targets)) != 1:
        raise MultiBoundary("name exactly one boundary as resource or audience") if targets else BadRequest(
            "resource or audience is required"
        )
    ttl = _one(form, "requested_ttl", required=False)
    if ttl not in (None, "max") and not (ttl.isdigit() and 0 < int(ttl) <= 86400):
        raise BadRequest("requested_ttl must be seconds (1-86400) or max")
    scopes = tuple((_one(form, "scope", required=False) or "").split())
    if not scopes:
        raise BadRequest("scope is required")
    task = task_id(_one(form, "task", required=False) or "token-exchange")  # refused, never truncated
    return GrantRequest(task=task, boundary=targets[0], scopes=scopes, ttl=int(ttl) if ttl and ttl != "max" else ttl)


@router.post("/token")
async def token_exchange(request: Request, svc: Service) -> dict:
    form = await _form(request)
    subject_token = _one(form, "subject_token")
    identity = await run_in_threadpool(svc.authenticate, subject_token, action="POST /oauth/token")
    try:
        grant_request = _exchange_request(form)
    except BadRequest as exc:  # a refusal is recorded before it is answered (promise 4)
        await run_in_threadpool(svc.record_invalid_request, identity, "token_exchange", exc.code)
        raise
    jkt = await run_in_threadpool(dpop_key, request, svc, identity, None)
    grant_request = replace(grant_request, cnf_jkt=jkt)
    boundary = svc.boundaries.get(grant_request.boundary)  # type: ignore[arg-type]
    if boundary is not None and boundary.backend not in ISSUED_TYPE:
        raise BadRequest("token exchange issues jwt and vault_token credentials; use POST /v1/grants")
    issued = await run_in_threadpool(svc.issue, identity, grant_request)
    credential, grant = issued.credential, issued.grant
    return {
        "access_token": credential["token"],
        "issued_token_type": ISSUED_TYPE[grant.backend],
        "token_type": credential.get("token_type", "N_A") if grant.backend == "jwt" else "N_A",
        "expires_in": int(grant.expires_at - grant.issued_at),
        "scope": grant.scopes,
        "grant_id": grant.id,
    }


@router.post("/introspect")
async def introspect(request: Request, svc: Service) -> dict:
    identity = await run_in_threadpool(svc.authenticate, bearer(request), action="POST /oauth/introspect")
    token = _one(await _form(request), "token")
    jkt = await run_in_threadpool(dpop_key, request, svc, identity, token, True)
    return await run_in_threadpool(svc.introspect, token, identity, jkt)


@router.post("/revoke")
async def revoke(request: Request, svc: Service) -> dict:
    identity = await run_in_threadpool(svc.authenticate, bearer(request), action="POST /oauth/revoke")
    token = _one(await _form(request), "token")
    jkt = await run_in_threadpool(dpop_key, request, svc, identity, token, True)
    grant = await run_in_threadpool(svc.grant_of_token, token)
    if grant is not None and grant.subject == identity.subject and grant.attestor == identity.attestor:
        await run_in_threadpool(svc.complete, identity, grant.id, jkt)
    return {}  # RFC 7009 §2.2: 200 whether or not the token was valid

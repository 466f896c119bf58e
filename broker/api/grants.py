"""Workload routes: request, read and complete grants."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Caller, ProofKey, Service, bearer, dpop_key, json_body
from broker.api.tls import tls_facts
from broker.api.schemas import GrantIn, GrantOut, IssuedOut, TaskCompletedOut, when
from broker.grants import GrantRequest, GrantService, Issued, Prepared

router = APIRouter(prefix="/v1", tags=["grants"])


GRANT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": GrantIn.model_json_schema()}}}}


@router.post(
    "/grants", status_code=201, response_model=IssuedOut, dependencies=[Depends(json_body)], openapi_extra=GRANT_BODY
)
async def create_grant(request: Request, payload: Annotated[Any, Body()], svc: Service) -> IssuedOut:
    """Authenticate, admit and mint on one pool thread; await the durable commit on the event loop."""
    prepared = await run_in_threadpool(_prepare, request, payload, svc)
    if isinstance(prepared, Issued):  # an Idempotency-Key replay
        return _issued_out(prepared)
    committed = svc.commit(prepared)
    await asyncio.wait([asyncio.wrap_future(committed)])
    if svc.quick_to_conclude(prepared, committed):
        return _issued_out(svc.conclude(prepared, committed))
    return _issued_out(await run_in_threadpool(svc.conclude, prepared, committed))


@router.get("/grants/{grant_id}", response_model=GrantOut)
def read_grant(grant_id: str, identity: Caller, svc: Service) -> GrantOut:
    return GrantOut.of(svc.get(identity, grant_id))


@router.post("/grants/{grant_id}/complete", response_model=GrantOut)
def complete_grant(grant_id: str, identity: Caller, svc: Service, jkt: ProofKey) -> GrantOut:
    return GrantOut.of(svc.complete(identity, grant_id, proof_jkt=jkt))


@router.post("/tasks/{task:path}/complete", response_model=TaskCompletedOut)  # `path`: task ids may hold `/`
def complete_task(task: str, identity: Caller, svc: Service, jkt: ProofKey) -> TaskCompletedOut:
    outcome = svc.complete_task(identity, task, proof_jkt=jkt)
    return TaskCompletedOut(
        task=task, matched=outcome.matched, revoked=outcome.revoked, pending=outcome.pending, grant_ids=outcome.grant_ids
    )


def _prepare(request: Request, payload: Any, svc: GrantService) -> Prepared | Issued:
    token = bearer(request)
    identity = svc.authenticate(token, action="POST /v1/grants", tls=tls_facts(request))
    jkt = dpop_key(request, svc, identity, token) if "dpop" in request.headers else None
    body = _grant_in(payload, identity, svc)
    keys = request.headers.getlist("idempotency-key")
    grant_request = GrantRequest(
        task=body.task, boundary=body.boundary, scopes=tuple(body.scopes), ttl=body.ttl, cnf_jkt=jkt,
        idempotency_key=keys[0] if len(keys) == 1 else (None if not keys else ""),  # "" : refused as malformed
        cnf_x5t=identity.x5t,  # over mutual TLS the grant is bound to the client certificate (RFC 8705)
    )
    return svc.prepare(identity, grant_request)


def _issued_out(issued: Issued) -> IssuedOut:
    credential = {**issued.credential, "expires_at": when(issued.credential["expires_at"]).isoformat()}
    return IssuedOut(**GrantOut.of(issued.grant).model_dump(), credential=credential, log_index=issued.log_index)


def _grant_in(payload: Any, identity, svc) -> GrantIn:  # noqa: ANN001
    """Validate after authentication, so a malformed request is recorded as denied like any other."""
    try:
        return GrantIn.model_validate(payload)
    except ValidationError as exc:
        svc.record_invalid_request(identity, "issue")
        raise RequestValidationError(exc.errors()) from None

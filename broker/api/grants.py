"""Workload routes: request, read and complete grants."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from broker.api.deps import Caller, Log, ProofKey, Service, json_body
from broker.api.schemas import GrantIn, GrantOut, IssuedOut, TaskCompletedOut, when
from broker.grants import GrantRequest

router = APIRouter(prefix="/v1", tags=["grants"])


GRANT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": GrantIn.model_json_schema()}}}}


@router.post(
    "/grants", status_code=201, response_model=IssuedOut, dependencies=[Depends(json_body)], openapi_extra=GRANT_BODY
)
def create_grant(
    payload: Annotated[Any, Body()], identity: Caller, svc: Service, jkt: ProofKey, log: Log
) -> IssuedOut:
    body = _grant_in(payload, identity, svc)
    request = GrantRequest(task=body.task, boundary=body.boundary, scopes=tuple(body.scopes), ttl=body.ttl, cnf_jkt=jkt)
    issued = svc.issue(identity, request)
    credential = {**issued.credential, "expires_at": when(issued.credential["expires_at"]).isoformat()}
    log_index = log.reader.index_of_issued(issued.grant.id)
    return IssuedOut(**GrantOut.of(issued.grant).model_dump(), credential=credential, log_index=log_index)


@router.get("/grants/{grant_id}", response_model=GrantOut)
def read_grant(grant_id: str, identity: Caller, svc: Service) -> GrantOut:
    return GrantOut.of(svc.get(identity, grant_id))


@router.post("/grants/{grant_id}/complete", response_model=GrantOut)
def complete_grant(grant_id: str, identity: Caller, svc: Service, jkt: ProofKey) -> GrantOut:
    return GrantOut.of(svc.complete(identity, grant_id, proof_jkt=jkt))


@router.post("/tasks/{task}/complete", response_model=TaskCompletedOut)
def complete_task(task: str, identity: Caller, svc: Service, jkt: ProofKey) -> TaskCompletedOut:
    outcome = svc.complete_task(identity, task, proof_jkt=jkt)
    return TaskCompletedOut(
        task=task, matched=outcome.matched, revoked=outcome.revoked, pending=outcome.pending, grant_ids=outcome.grant_ids
    )


def _grant_in(payload: Any, identity, svc) -> GrantIn:  # noqa: ANN001
    """Validate after authentication, so a malformed request is recorded as denied like any other."""
    try:
        return GrantIn.model_validate(payload)
    except ValidationError as exc:
        svc.record_invalid_request(identity, "issue")
        raise RequestValidationError(exc.errors()) from None

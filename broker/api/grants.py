"""Workload routes: request, read and complete grants."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Route

from broker.api.deps import Caller, ProofKey, Service, bearer, caller, dpop_key, off_loop
from broker.api.schemas import GrantIn, GrantOut, IssuedOut, TaskCompletedOut, when
from broker.api.tls import tls_facts
from broker.blocking import attempt
from broker.grants import GrantRequest, GrantService, Issued, Prepared
from broker.identity import Identity
from broker.ledger import Grant

router = APIRouter(prefix="/v1", tags=["grants"])


GRANT_ID = {"name": "grant_id", "in": "path", "required": True, "schema": {"type": "string", "title": "Grant Id"}}
GRANT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": GrantIn.model_json_schema()}}}}


async def create_grant(request: Request) -> Response:
    """POST /v1/grants: authenticate, admit and mint on the event loop when nothing on the way waits,
    else on an issuing thread (broker/blocking.py); await the durable commit on the event loop. The
    body is read and the answer written here (see ISSUE_ROUTE)."""
    request.scope["route"] = ISSUE_ROUTE  # as FastAPI's routes leave it: the access line, error logs, DPoP actions
    svc: GrantService = request.app.state.service
    payload = _json(await request.body()) if _is_json(request) else _unsupported()
    prepared = attempt(_prepare, request, payload, svc) if _without_waiting(request, payload, svc) else None
    if prepared is None:  # it would have waited (a database, Vault, a JWKS fetch): from the start, on a thread
        prepared = await off_loop(request, _prepare, request, payload, svc)
    if isinstance(prepared, Issued):  # an Idempotency-Key replay
        return _created(prepared)
    committed = svc.commit(prepared)
    await _durable(committed)
    if svc.quick_to_conclude(prepared, committed):
        return _created(svc.conclude(prepared, committed))
    return _created(await off_loop(request, svc.conclude, prepared, committed))


@router.get("/grants/{grant_id}", response_model=GrantOut)
def read_grant(grant_id: str, identity: Caller, svc: Service) -> GrantOut:
    return GrantOut.of(svc.get(identity, grant_id))


@router.post("/tasks/{task:path}/complete", response_model=TaskCompletedOut)  # `path`: task ids may hold `/`
def complete_task(task: str, identity: Caller, svc: Service, jkt: ProofKey) -> TaskCompletedOut:
    outcome = svc.complete_task(identity, task, proof_jkt=jkt)
    return TaskCompletedOut(
        task=task, matched=outcome.matched, revoked=outcome.revoked, pending=outcome.pending, grant_ids=outcome.grant_ids
    )


# The call every task makes is a plain Starlette route, served before FastAPI's routes: FastAPI's
# routing, dependency solving and response models cost more per call than the issuance itself
# (a fifth of the event loop's time under load). Errors still reach the app's exception handlers
# (problem+json); ISSUE_DOC documents it in the OpenAPI document, with the same function.
ISSUE_ROUTE = Route("/v1/grants", create_grant, methods=["POST"], name="create_grant")
ISSUE_DOC = APIRoute("/v1/grants", create_grant, methods=["POST"], status_code=201, response_model=IssuedOut,
                     openapi_extra=GRANT_BODY, tags=["grants"], name="create_grant")  # fmt: skip


async def complete_grant(request: Request) -> Response:
    """POST /v1/grants/{grant_id}/complete: the owner says done. Without a DPoP proof to check and with
    an identity verified without waiting, the ledger writer ends the grant in its next batch, awaited on
    the event loop; what it declines (broker/ledger/issuing.py) and everything else, `complete` on an
    issuing thread, as before."""
    request.scope["route"] = COMPLETE_ROUTE
    svc: GrantService = request.app.state.service
    grant_id = request.path_params["grant_id"]
    identity = attempt(caller, request, svc) if "dpop" not in request.headers else None
    if identity is not None:
        ending = svc.submit_complete(identity, grant_id)
        await _durable(ending)
        ended = svc.completed(ending.result())  # a failed write raises here: LedgerUnavailable, a 503
        if ended is not None:
            return _grant(ended)
    return _grant(await off_loop(request, _complete, request, svc, grant_id, identity))


# Completing is the other call every task makes: served the same way, documented the same way.
COMPLETE_ROUTE = Route("/v1/grants/{grant_id}/complete", complete_grant, methods=["POST"], name="complete_grant")
COMPLETE_DOC = APIRoute("/v1/grants/{grant_id}/complete", complete_grant, methods=["POST"], response_model=GrantOut,
                        openapi_extra={"parameters": [GRANT_ID]}, tags=["grants"], name="complete_grant")  # fmt: skip


def _complete(request: Request, svc: GrantService, grant_id: str, identity: Identity | None) -> Grant:
    identity = identity or caller(request, svc)
    return svc.complete(identity, grant_id, proof_jkt=dpop_key(request, svc, identity, bearer(request)))


def _grant(grant: Grant) -> Response:
    return Response(GrantOut.of(grant).model_dump_json(), media_type="application/json")


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


def _without_waiting(request: Request, payload: Any, svc: GrantService) -> bool:
    """A request that reads nothing from the database on the way (a DPoP proof's replay check and an
    Idempotency-Key do), at a boundary whose grants are prepared without waiting."""
    headers = request.headers
    boundary = payload.get("boundary") if isinstance(payload, dict) else None
    return "dpop" not in headers and "idempotency-key" not in headers and svc.prepares_without_waiting(boundary)


async def _durable(committed: Future) -> None:
    """Wait on the event loop, without a thread, until the ledger writer resolves the commit (or fails it:
    `conclude` reads the outcome, a failure included)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    committed.add_done_callback(lambda _: loop.call_soon_threadsafe(_set, done))
    await done


def _set(done: asyncio.Future) -> None:
    if not done.done():
        done.set_result(None)


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def _unsupported() -> Any:
    raise HTTPException(415, "Content-Type must be application/json.")


def _json(raw: bytes) -> Any:
    """The body as JSON, refused as FastAPI refuses a bad body (422 `validation_error`, never echoed)."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        return json.loads(raw)
    except ValueError as exc:  # also undecodable bytes (UnicodeDecodeError)
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", getattr(exc, "pos", 0)), "msg": "JSON decode error"}]
        ) from None


def _created(issued: Issued) -> Response:
    """201 with the grant and its credential, serialised by the wire model itself."""
    return Response(_issued_out(issued).model_dump_json(), status_code=201, media_type="application/json")


def _issued_out(issued: Issued) -> IssuedOut:
    credential = {**issued.credential, "expires_at": when(issued.credential["expires_at"]).isoformat()}
    return IssuedOut.of(issued.grant, credential=credential, log_index=issued.log_index)


def _grant_in(payload: Any, identity, svc) -> GrantIn:  # noqa: ANN001
    """Validate after authentication, so a malformed request is recorded as denied like any other."""
    try:
        return GrantIn.model_validate(payload)
    except ValidationError as exc:
        svc.record_invalid_request(identity, "issue")
        raise RequestValidationError(exc.errors()) from None

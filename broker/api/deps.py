"""Request dependencies: the service, the authenticated caller, the operator check, body rules."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from broker.api.tls import tls_facts
from broker.errors import Forbidden, InvalidDpop
from broker.grants import GrantService
from broker.identity import Identity
from broker.transparency.service import TransparencyLog

# trivial dependencies are `async def` so they run on the event loop: FastAPI sends every sync
# dependency through the thread pool, a hop that cost more than the work on the issuance path


async def service(request: Request) -> GrantService:
    return request.app.state.service


Service = Annotated[GrantService, Depends(service)]


async def transparency(request: Request) -> TransparencyLog:
    return request.app.state.components.log


Log = Annotated[TransparencyLog, Depends(transparency)]


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer …` (or `DPoP …`), or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "dpop") and token.strip() else None


def caller(request: Request, svc: Service) -> Identity:
    """The bearer identity token's subject; without a token, the client certificate's (X.509-SVID)."""
    action = f"{request.method} {request.scope['route'].path}"
    return svc.authenticate(bearer(request), action=action, tls=tls_facts(request))


Caller = Annotated[Identity, Depends(caller)]


async def off_loop(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn` on the issuing threads (what waits: the database, Vault, a fetch), in this request's context;
    lighter than Starlette's thread pool, whose capacity limiter and cancel scope cost more per call
    than the work of a jwt grant's preparation."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(request.app.state.issuing_threads, call)


def dpop_key(
    request: Request, svc: GrantService, identity: Identity | None, access_token: str | None, require_ath: bool = False
) -> str | None:
    """The key thumbprint of the request's valid `DPoP` proof; None without one; an invalid proof is refused."""
    proofs = request.headers.getlist("dpop")
    if not proofs:
        return None
    action = f"{request.method} {request.scope['route'].path}"
    if len(proofs) > 1:
        svc.refuse_dpop(identity, action, InvalidDpop("more than one DPoP header"))
        raise InvalidDpop("more than one DPoP header")
    # `htu` names the broker by its configured public URL only: the Host header is the client's to choose
    urls = (svc.settings.issuer.rstrip("/") + request.url.path,)
    request_facts = {"method": request.method, "urls": urls, "access_token": access_token, "require_ath": require_ath}
    return svc.proof_key(proofs[0], identity=identity, action=action, **request_facts)


async def caller_proof(request: Request, identity: Caller, svc: Service) -> str | None:
    """DPoP proof accompanying the caller's identity token (`ath`, when present, must match it)."""
    if "dpop" not in request.headers:
        return None
    return await run_in_threadpool(dpop_key, request, svc, identity, bearer(request))


ProofKey = Annotated[str | None, Depends(caller_proof)]


def require_role(request: Request, identity: Identity, svc: GrantService, allowed: frozenset[str]) -> Identity:
    if not allowed & svc.roles(identity):
        svc.record_refusal(identity, f"{request.method} {request.scope['route'].path}", code="forbidden")
        raise Forbidden(f"{' or '.join(sorted(allowed))} role required")
    return identity


def operator(request: Request, identity: Caller, svc: Service) -> Identity:
    """Operators are subjects whom policy gives the `operator` role; anyone else is refused and recorded."""
    return require_role(request, identity, svc, frozenset({"operator"}))


def auditor(request: Request, identity: Caller, svc: Service) -> Identity:
    """Read-only operator surface (inventory, audit, reports): the `auditor` or the `operator` role."""
    return require_role(request, identity, svc, frozenset({"operator", "auditor"}))


Operator = Annotated[Identity, Depends(operator)]
Auditor = Annotated[Identity, Depends(auditor)]


async def json_body(request: Request) -> None:
    """Refuse non-JSON bodies up front (415) rather than guessing."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "Content-Type must be application/json.")


async def form_body(request: Request) -> None:
    """OAuth endpoints take `application/x-www-form-urlencoded` (RFC 6749 §4.1.3)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Content-Type must be application/x-www-form-urlencoded.")

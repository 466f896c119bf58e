"""Request dependencies: the service, the authenticated caller, the operator check, body rules."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from broker.errors import Forbidden
from broker.grants import GrantService
from broker.identity import Identity
from broker.ledger import Event


def service(request: Request) -> GrantService:
    return request.app.state.service


Service = Annotated[GrantService, Depends(service)]


def bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer …` (or `DPoP …`), or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "dpop") and token.strip() else None


def caller(request: Request, svc: Service) -> Identity:
    return svc.authenticate(bearer(request), action=f"{request.method} {request.scope['route'].path}")


Caller = Annotated[Identity, Depends(caller)]


def operator(request: Request, identity: Caller, svc: Service) -> Identity:
    """Operators are subjects whom policy gives the `operator` role; anyone else is refused and recorded."""
    if "operator" not in svc.roles(identity):
        svc.ledger.record(
            Event(
                kind="denied",
                subject=identity.subject,
                actor=identity.subject,
                detail={"code": "forbidden", "action": f"{request.method} {request.scope['route'].path}"},
            )
        )
        raise Forbidden("operator role required")
    return identity


Operator = Annotated[Identity, Depends(operator)]


def json_body(request: Request) -> None:
    """Refuse non-JSON bodies up front (415) rather than guessing."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "Content-Type must be application/json.")


def form_body(request: Request) -> None:
    """OAuth endpoints take `application/x-www-form-urlencoded` (RFC 6749 §4.1.3)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Content-Type must be application/x-www-form-urlencoded.")

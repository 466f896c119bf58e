"""Shared Signals transmitter routes (SSF 1.0): metadata, stream management, verification, poll (RFC 8936).

Receivers are attested subjects whom policy gives the `signal_receiver` role; each sees only its
own streams. Errors are problem+json like every other route.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from broker.api.deps import Caller, Service, json_body, require_role
from broker.errors import BadRequest
from broker.identity import Identity
from broker.ledger.models import Event
from broker.signals.outbox import VERIFY_KIND
from broker.signals.sets import EVENTS_SUPPORTED, POLL, PUSH, sign_set
from broker.signals.transmitter import Transmitter

router = APIRouter(tags=["signals"])
StreamId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Text = Annotated[str, Field(min_length=1, max_length=256)]
MAX_POLL_WAIT = 30.0


def transmitter(request: Request) -> Transmitter:
    return request.app.state.signals


Signals = Annotated[Transmitter, Depends(transmitter)]


def receiver(request: Request, identity: Caller, svc: Service) -> Identity:
    """Stream routes need the `signal_receiver` role; anyone else is refused and recorded."""
    return require_role(request, identity, svc, frozenset({"signal_receiver"}))


Receiver = Annotated[Identity, Depends(receiver)]


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"] = PUSH
    endpoint_url: Annotated[str, Field(max_length=1024)] | None = None


class StreamIn(BaseModel):
    """A stream configuration from the receiver; the transmitter's read-only fields are accepted and ignored."""

    model_config = ConfigDict(extra="forbid")
    stream_id: StreamId | None = None
    aud: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    delivery: Delivery | None = None
    boundaries: list[Annotated[str, Field(max_length=128)]] | None = Field(default=None, max_length=64)
    events_requested: list[Annotated[str, Field(max_length=256)]] | None = Field(default=None, max_length=16)
    description: Text | None = None
    iss: str | None = None  # read-only (SSF 1.0 §8.1.1)
    events_supported: list[str] | None = None
    events_delivered: list[str] | None = None
    min_verification_interval: int | None = None

    def spec(self) -> dict[str, Any]:
        data = self.model_dump(exclude_unset=True, exclude={"stream_id", "iss", "events_supported", "events_delivered",
                                                              "min_verification_interval"})  # fmt: skip
        return data


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream_id: StreamId
    status: Literal["enabled", "paused", "disabled"]
    reason: Text | None = None


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream_id: StreamId
    state: Annotated[str, Field(max_length=128, pattern=r"^[\x21-\x7e]+$")] | None = None


class PollIn(BaseModel):
    """RFC 8936 §2.4: acknowledge what was received, report what was refused, ask for more."""

    model_config = ConfigDict(extra="forbid")
    ack: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=1000)
    setErrs: dict[str, dict[str, Any]] = Field(default_factory=dict, max_length=1000)  # noqa: N815 (RFC name)
    maxEvents: int = Field(default=100, ge=0, le=1000)  # noqa: N815
    returnImmediately: bool = False  # noqa: N815


@router.get("/.well-known/ssf-configuration")
def configuration(svc: Service) -> dict[str, Any]:
    """SSF 1.0 §7.1 transmitter metadata."""
    base = svc.settings.issuer.rstrip("/")
    return {
        "spec_version": "1_0",
        "issuer": svc.settings.issuer,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "delivery_methods_supported": [PUSH, POLL],
        "configuration_endpoint": f"{base}/ssf/streams",
        "status_endpoint": f"{base}/ssf/status",
        "verification_endpoint": f"{base}/ssf/verify",
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],  # a Bearer attested identity token
        "default_subjects": "ALL",
        "events_supported": list(EVENTS_SUPPORTED),
    }


@router.post("/ssf/streams", dependencies=[Depends(json_body)], status_code=201)
def create_stream(body: StreamIn, who: Receiver, signals: Signals) -> dict[str, Any]:
    if body.stream_id is not None:
        raise BadRequest("stream_id is the transmitter's to choose")
    return signals.registry.create(who.subject, who.attestor, body.spec())


@router.get("/ssf/streams", response_model=None)
def read_streams(who: Receiver, signals: Signals, stream_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None):
    if stream_id is None:
        return signals.registry.list(who.subject)
    return signals.registry.describe(signals.registry.get(who.subject, stream_id))


@router.patch("/ssf/streams", dependencies=[Depends(json_body)])
def patch_stream(body: StreamIn, who: Receiver, signals: Signals) -> dict[str, Any]:
    return signals.registry.update(who.subject, _required(body.stream_id), body.spec(), replace=False)


@router.put("/ssf/streams", dependencies=[Depends(json_body)])
def replace_stream(body: StreamIn, who: Receiver, signals: Signals) -> dict[str, Any]:
    return signals.registry.update(who.subject, _required(body.stream_id), body.spec(), replace=True)


@router.delete("/ssf/streams", status_code=204)
def delete_stream(who: Receiver, signals: Signals, stream_id: Annotated[str, Query(pattern=r"^[0-9a-f]{32}$")]) -> Response:
    signals.registry.delete(who.subject, stream_id)
    return Response(status_code=204)


@router.get("/ssf/status")
def read_status(who: Receiver, signals: Signals, stream_id: Annotated[str, Query(pattern=r"^[0-9a-f]{32}$")]) -> dict:
    row = signals.registry.get(who.subject, stream_id)
    return {"stream_id": row.id, "status": row.status, **({"reason": row.status_reason} if row.status_reason else {})}


@router.post("/ssf/status", dependencies=[Depends(json_body)])
def update_status(body: StatusIn, who: Receiver, signals: Signals) -> dict[str, Any]:
    return signals.registry.set_status(who.subject, body.stream_id, body.status, body.reason)


@router.post("/ssf/verify", dependencies=[Depends(json_body)], status_code=204)
def verify_stream(body: VerifyIn, who: Receiver, signals: Signals, svc: Service) -> Response:
    """SSF 1.0 §8.1.4: chain the request; the outbox turns it into a verification SET on that stream only."""
    signals.registry.get(who.subject, body.stream_id)
    detail = {"stream_id": body.stream_id, **({"state": body.state} if body.state else {})}
    svc.ledger.record(Event(kind=VERIFY_KIND, subject=who.subject, actor=who.subject, detail=detail))
    return Response(status_code=204)


@router.post("/ssf/poll/{stream_id}", dependencies=[Depends(json_body)])
async def poll(stream_id: StreamId, body: PollIn, who: Receiver, signals: Signals, svc: Service) -> dict[str, Any]:
    """RFC 8936: acknowledged SETs are forgotten; the rest come back in order until acknowledged."""
    row = await run_in_threadpool(signals.registry.get, who.subject, stream_id)
    if row.method != POLL:
        raise BadRequest("this stream is delivered by push")
    if row.status != "enabled":  # paused: held until enabled (SSF 1.0 §8.1.2)
        return {"sets": {}, "moreAvailable": False}
    await run_in_threadpool(signals.outbox.acknowledge, stream_id, body.ack + list(body.setErrs))
    since = signals.changes.generation
    rows = await run_in_threadpool(signals.outbox.pending, stream_id, body.maxEvents + 1)
    if not rows and body.maxEvents and not body.returnImmediately:
        await run_in_threadpool(signals.changes.wait, since, MAX_POLL_WAIT)
        rows = await run_in_threadpool(signals.outbox.pending, stream_id, body.maxEvents + 1)
    more, rows = len(rows) > body.maxEvents, rows[: body.maxEvents]
    return {"sets": {r.jti: sign_set(svc.keys, r.claims) for r in rows}, "moreAvailable": more}


def _required(stream_id: str | None) -> str:
    if stream_id is None:
        raise BadRequest("stream_id is required")
    return stream_id

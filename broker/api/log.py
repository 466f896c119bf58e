"""Transparency log routes: the signed checkpoint (public), proofs and entries (auditor), grant receipts (owner)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from broker.api.deps import Auditor, Caller, Log, Service
from broker.errors import BadRequest, NotFound
from broker.transparency.tree import ProofError

router = APIRouter(prefix="/v1", tags=["log"])
Size = Annotated[int, Query(ge=0, le=2**63 - 1)]
MAX_ENTRIES = 1000


@router.get("/log/checkpoint", response_class=PlainTextResponse)
def checkpoint(log: Log) -> PlainTextResponse:
    """The newest signed checkpoint with every witness cosignature: a C2SP signed note."""
    signed = log.checkpoint()
    if signed is None:
        raise NotFound("no checkpoint yet")
    return PlainTextResponse(signed.cosigned_note(), media_type="text/plain; charset=utf-8")


@router.get("/log/proof/inclusion")
def inclusion(identity: Auditor, log: Log, index: Size, size: Size) -> dict[str, Any]:
    return {"index": index, "size": size, "hashes": _b64(_proof(log.reader.inclusion, index, size))}


@router.get("/log/proof/consistency")
def consistency(identity: Auditor, log: Log, first: Annotated[int, Query(alias="from", ge=0, le=2**63 - 1)],
                to: Size) -> dict[str, Any]:  # fmt: skip
    return {"from": first, "to": to, "hashes": _b64(_proof(log.reader.consistency, first, to))}


@router.get("/log/entries")
def entries(identity: Auditor, log: Log, start: Size, end: Size) -> dict[str, Any]:
    """Leaves [start, end): the canonical event bytes each leaf hashes, base64."""
    size, _ = log.reader.head()
    if not start < end <= size or end - start > MAX_ENTRIES:
        raise BadRequest(f"entries need start < end <= {size} and at most {MAX_ENTRIES} at a time")
    return {"start": start, "entries": [base64.b64encode(leaf).decode() for _, leaf in log.reader.entries(start, end)]}


@router.get("/grants/{grant_id}/receipt")
def receipt(grant_id: str, identity: Caller, svc: Service, log: Log) -> dict[str, Any]:
    """The grant's log index, leaf, a checkpoint covering it and the inclusion proof; 404 until one covers it."""
    grant = svc.get(identity, grant_id)  # owner or operator, as for the grant itself
    index = svc.log_index(grant.id)
    answer = log.receipt(index) if index is not None else None
    if answer is None:
        raise NotFound("no checkpoint covers this grant yet")
    return answer


def _proof(make, a: int, b: int) -> list[bytes]:  # noqa: ANN001
    try:
        return make(a, b)
    except ProofError as exc:
        raise BadRequest(str(exc)) from None


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]

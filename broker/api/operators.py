"""Operator routes: revocations, freezes, the live inventory, the audit trail and the blast-radius report."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from broker.api.deps import Auditor, Operator, json_body
from broker.api.schemas import TASK, BlastRadiusOut, GrantOut, TaskId, when
from broker.config import NAME, instant
from broker.errors import BadRequest
from broker.glob import glob_problem
from broker.grants.operations import Operations, RevocationStatus
from broker.ledger import Filter, Grant, Selector, event_dict

router = APIRouter(prefix="/v1", tags=["operators"])
Reason = Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]
Name = Annotated[str, Field(min_length=1, max_length=512)]
Revision = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # a policy's SHA-256 content hash
RuleId = Annotated[str, Field(pattern=NAME)]
TaskFilter = Annotated[str | None, Query(pattern=TASK)]
NDJSON = "application/x-ndjson"
PAGE = 500


def operations(request: Request) -> Operations:
    return request.app.state.operations


Ops = Annotated[Operations, Depends(operations)]


class RevocationIn(BaseModel):
    """`POST /v1/revocations`: exactly one selector, a reason, optionally freeze the subject or boundary."""

    model_config = ConfigDict(extra="forbid")

    grant_id: Name | None = None
    task: TaskId | None = None
    subject: Name | None = None
    subject_glob: Name | None = None
    boundary: Name | None = None
    all: bool = False
    policy_revision: Revision | None = None
    rule: RuleId | None = None
    reason: Reason
    freeze: bool = False
    wait: bool = True
    dry_run: bool = False

    def selector(self) -> Selector:
        return Selector(self.grant_id, self.task, self.subject, self.boundary, self.all, self.subject_glob,
                        self.policy_revision, self.rule)  # fmt: skip


class RevocationOut(BaseModel):
    """A revocation's progress: done when nothing it matched is still pending."""

    revocation_id: str
    status: Literal["done", "in_progress", "retrying"]
    selector: dict[str, Any]
    reason: str
    actor: str
    created_at: datetime
    matched: int
    revoked: int
    pending: int
    retrying: int

    @classmethod
    def of(cls, status: RevocationStatus) -> RevocationOut:
        return cls(
            revocation_id=status.revocation_id, status=status.state,  # type: ignore[arg-type]
            selector=status.selector, reason=status.reason, actor=status.actor,
            created_at=when(status.created_at), matched=status.matched, revoked=status.revoked, pending=status.pending,
            retrying=status.retrying,
        )


class FreezeIn(BaseModel):
    """Freeze or lift: one exact subject or one boundary, and a reason."""

    model_config = ConfigDict(extra="forbid")

    subject: Name | None = None
    boundary: Name | None = None
    reason: Reason

    def target(self) -> tuple[Literal["subject", "boundary"], str]:
        if (self.subject is None) == (self.boundary is None):
            raise BadRequest("name exactly one of subject, boundary")
        return ("subject", self.subject) if self.subject is not None else ("boundary", self.boundary)  # type: ignore[return-value]


# --- revocations and freezes ------------------------------------------------------------------


@router.post("/revocations", dependencies=[Depends(json_body)], response_model=RevocationOut)
def create_revocation(body: RevocationIn, identity: Operator, ops: Ops) -> JSONResponse:
    """Revoke now (200 when done, 202 while running or retrying); `dry_run` only counts the matches."""
    if body.dry_run:
        return JSONResponse({"matched": ops.matching(body.selector()), "dry_run": True})
    status = RevocationOut.of(ops.revoke(identity, body.selector(), body.reason, freeze=body.freeze, wait=body.wait))
    return JSONResponse(status.model_dump(mode="json"), status_code=200 if status.status == "done" else 202)


@router.get("/revocations/{revocation_id}", response_model=RevocationOut)
def read_revocation(revocation_id: str, identity: Auditor, ops: Ops) -> RevocationOut:
    return RevocationOut.of(ops.progress(revocation_id))


@router.get("/freezes")
def list_freezes(identity: Auditor, ops: Ops) -> dict[str, list[dict[str, Any]]]:
    items = [
        {"kind": f.kind, "value": f.value, "reason": f.reason, "actor": f.actor,
         "created_at": when(f.created_at).isoformat(), "revocation_id": f.revocation_id}
        for f in ops.freezes()
    ]
    return {"items": items}


@router.post("/freezes", dependencies=[Depends(json_body)], status_code=201)
def create_freeze(body: FreezeIn, identity: Operator, ops: Ops) -> dict[str, Any]:
    kind, value = body.target()
    return {"kind": kind, "value": value, "frozen": True, "changed": ops.freeze(identity, kind, value, body.reason)}


@router.post("/freezes/lift", dependencies=[Depends(json_body)])
def lift_freeze(body: FreezeIn, identity: Operator, ops: Ops) -> dict[str, Any]:
    kind, value = body.target()
    return {"kind": kind, "value": value, "frozen": False, "changed": ops.unfreeze(identity, kind, value, body.reason)}


# --- inventory, audit, report -----------------------------------------------------------------


@router.get("/grants")
def inventory(
    identity: Auditor,
    ops: Ops,
    status: str | None = None,
    subject: str | None = None,
    subject_glob: str | None = None,
    boundary: str | None = None,
    task: TaskFilter = None,
    policy_revision: Annotated[str | None, Query(max_length=64)] = None,
    rule: Annotated[str | None, Query(max_length=128)] = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    where = Filter(status=status, subject=subject, subject_glob=_glob(subject_glob), boundary=boundary, task=task,
                   policy_revision=policy_revision, rule=rule, **_window(since, until))  # fmt: skip
    rows = ops.inventory(where, after=_grant_cursor(cursor), limit=limit)
    next_cursor = _encode((rows[-1].issued_at, rows[-1].id)) if len(rows) == limit else None
    return {"items": [_inventory_item(g) for g in rows], "next_cursor": next_cursor}


def _inventory_item(grant: Grant) -> dict[str, Any]:
    # provenance is for operators: a workload's own view of its grant does not describe the policy
    return {**GrantOut.of(grant).model_dump(mode="json"), "policy_revision": grant.policy_revision, "rule": grant.rule}


@router.get("/audit")
def audit(
    request: Request,
    identity: Auditor,
    ops: Ops,
    kind: str | None = None,
    subject: str | None = None,
    subject_glob: str | None = None,
    boundary: str | None = None,
    task: TaskFilter = None,
    grant_id: str | None = None,
    policy_revision: Annotated[str | None, Query(max_length=64)] = None,
    rule: Annotated[str | None, Query(max_length=128)] = None,
    since: str | None = None,
    until: str | None = None,
    cursor: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # a sequence number; larger overflows SQL integers
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    last: Annotated[int | None, Query(ge=0, le=5000)] = None,
    format: Literal["json", "jsonl"] = "json",  # noqa: A002 (the query parameter's public name)
) -> Any:
    where = Filter(kind=kind, subject=subject, subject_glob=_glob(subject_glob), boundary=boundary, task=task,
                   grant_id=grant_id, policy_revision=policy_revision, rule=rule, **_window(since, until))  # fmt: skip
    if format == "jsonl" or NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(_jsonl(ops, where, cursor), media_type=NDJSON)
    if last is not None:  # the newest events, for `broker audit tail`; follow on from the chain's end
        rows, head = ops.audit_tail(where, last)
        return {"items": [event_dict(r) for r in rows], "next_cursor": max([head, *(r.seq for r in rows)])}
    rows = ops.audit(where, after_seq=cursor, limit=limit)
    next_cursor = rows[-1].seq if len(rows) == limit else None
    return {"items": [event_dict(r) for r in rows], "next_cursor": next_cursor}


@router.get("/audit/verify")
def audit_verify(identity: Auditor, ops: Ops) -> dict[str, Any]:
    return ops.verify().__dict__


REPORT_WINDOW = 86400


@router.get("/reports/blast-radius", response_model=BlastRadiusOut)
def blast_radius(
    identity: Auditor,
    ops: Ops,
    subject: str | None = None,
    subject_glob: str | None = None,
    since: str = "24h",
    until: str | None = None,
) -> BlastRadiusOut:
    window, now = _window(since, until), time.time()
    start = window["since"] if window["since"] is not None else now - REPORT_WINDOW  # `since=` empty: the default
    who = Filter(subject=subject, subject_glob=_glob(subject_glob))
    return BlastRadiusOut.of(ops.blast_radius(who, start, window["until"] or now))


def _glob(pattern: str | None) -> str | None:
    if pattern is not None and (problem := glob_problem(pattern)):
        raise BadRequest(f"subject_glob: {problem}")
    return pattern


def _jsonl(ops: Operations, where: Filter, after: int) -> Iterator[bytes]:
    """Every matching event, one JSON object a line, read page by page so memory stays bounded."""
    while True:
        rows = ops.audit(where, after_seq=after, limit=PAGE)
        for row in rows:
            yield (json.dumps(event_dict(row), separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        if len(rows) < PAGE:
            return
        after = rows[-1].seq


def _window(since: str | None, until: str | None) -> dict[str, float | None]:
    now = time.time()
    return {"since": instant(since, now), "until": instant(until, now)}


def _encode(position: tuple[float, str]) -> str:
    return base64.urlsafe_b64encode(f"{position[0]!r}|{position[1]}".encode()).decode().rstrip("=")


def _grant_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    try:
        issued_at, _, grant_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        return float(issued_at), grant_id
    except ValueError:
        raise BadRequest("cursor is not one this broker handed out") from None

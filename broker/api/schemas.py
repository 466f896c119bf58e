"""Wire models of the HTTP contract (ARCHITECTURE.md, "HTTP surface")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.grants.service import TASK as TASK_GRAMMAR
from broker.ledger import Grant

TASK = f"^{TASK_GRAMMAR.pattern}$"  # the use case's one task grammar, for the wire models and filters
TaskId = Annotated[str, Field(pattern=TASK)]
ScopeName = Annotated[str, Field(min_length=1, max_length=128)]
BoundaryName = Annotated[str, Field(min_length=1, max_length=128)]


class GrantIn(BaseModel):
    """`POST /v1/grants` body: one task, one boundary, its scopes, a TTL in seconds or "max"."""

    model_config = ConfigDict(extra="forbid")

    task: TaskId
    boundary: BoundaryName | list[BoundaryName]
    scopes: list[ScopeName] = Field(min_length=1, max_length=32)
    ttl: Annotated[int, Field(ge=1, le=10**9)] | Literal["max"] | None = None


class GrantOut(BaseModel):
    """A grant as the API shows it: never the secret."""

    grant_id: str
    task: str
    boundary: str
    scopes: list[str]
    subject: str
    status: str
    backend: str
    issued_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    revoke_attempts: int = 0
    dpop_bound: bool = False

    @classmethod
    def of(cls, grant: Grant) -> GrantOut:
        return cls(
            grant_id=grant.id,
            task=grant.task,
            boundary=grant.boundary,
            scopes=grant.scope_list,
            subject=grant.subject,
            status=grant.status,
            backend=grant.backend,
            issued_at=when(grant.issued_at),
            expires_at=when(grant.expires_at),
            ended_at=when(grant.ended_at) if grant.ended_at else None,
            end_reason=grant.end_reason,
            revoke_attempts=grant.revoke_attempts,
            dpop_bound=grant.cnf_jkt is not None,
        )


class IssuedOut(GrantOut):
    """`POST /v1/grants` answer: the grant plus the credential, shown this once."""

    credential: dict[str, Any]
    log_index: int | None = None  # the `issued` event's leaf in the transparency log (see its receipt)


class TaskCompletedOut(BaseModel):
    task: str
    matched: int
    revoked: int
    pending: int
    grant_ids: list[str]


def when(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)

"""Wire models of the HTTP contract (ARCHITECTURE.md, "HTTP surface")."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from broker.grants.operations import BlastRadius, BoundaryReach, RuleReach
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
    parent_grant_id: str | None = None  # a delegated or transaction token: the grant it was derived from

    @classmethod
    def of(cls, grant: Grant, **extra: Any) -> Self:
        """The wire shape of a grant (`extra`: a subclass's own fields)."""
        return cls(
            **extra,
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
            parent_grant_id=grant.parent_grant_id,
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


def iso(epoch: float) -> str:
    """An instant as ISO 8601 with microseconds and `+00:00`, as the reports print it."""
    return when(epoch).isoformat()


# --- the blast-radius report (`GET /v1/reports/blast-radius`, `broker report blast-radius`) ---------


class CountsOut(BaseModel):
    """Grants by status: `live` are active, `pending` wait for their backend revocation."""

    grants: int
    live: int
    pending: int
    completed: int
    revoked: int
    expired: int
    superseded: int


class TotalsOut(CountsOut):
    denied: int  # refused requests of the subject in the window


class LiveGrantOut(BaseModel):
    grant_id: str
    subject: str
    task: str
    scopes: list[str]
    expires_at: str


class RevokedGrantOut(BaseModel):
    grant_id: str
    subject: str
    status: str
    revoked_at: str | None
    by: str | None
    reason: str | None
    revocation_id: str | None


class BoundaryReachOut(CountsOut):
    """One boundary the subject reached: its scopes and subjects, and the live and revoked grants."""

    boundary: str
    scopes: list[str]
    subjects: list[str]
    first_issued_at: str
    live_grants: list[LiveGrantOut]
    revoked_grants: list[RevokedGrantOut]

    @classmethod
    def of(cls, reach: BoundaryReach) -> BoundaryReachOut:
        return cls(
            boundary=reach.boundary, scopes=reach.scopes, subjects=reach.subjects, **asdict(reach.counts),
            first_issued_at=iso(reach.first_issued_at),
            live_grants=[LiveGrantOut(grant_id=g.id, subject=g.subject, task=g.task, scopes=g.scope_list,
                                      expires_at=iso(g.expires_at)) for g in reach.live],
            revoked_grants=[RevokedGrantOut(grant_id=g.id, subject=g.subject, status=g.status,
                                            revoked_at=iso(g.ended_at) if g.ended_at else None, by=g.end_actor,
                                            reason=g.end_reason, revocation_id=g.revocation_id) for g in reach.revoked],
        )  # fmt: skip


class RuleReachOut(CountsOut):
    """What one rule let the subject reach (`rule` null: grants issued before provenance was recorded)."""

    rule: str | None
    policy_revisions: list[str]
    boundaries: list[str]
    scopes: list[str]
    live_grants: list[str]  # grant ids

    @classmethod
    def of(cls, reach: RuleReach) -> RuleReachOut:
        return cls(rule=reach.rule, policy_revisions=reach.policy_revisions, boundaries=reach.boundaries,
                   scopes=reach.scopes, **asdict(reach.counts), live_grants=reach.live)  # fmt: skip


class BlastRadiusOut(BaseModel):
    """What a subject (exact, or `subject_glob` true) reached in a window."""

    subject: str
    subject_glob: bool
    since: str
    until: str
    generated_at: str
    totals: TotalsOut
    boundaries: list[BoundaryReachOut]
    rules: list[RuleReachOut]

    @classmethod
    def of(cls, report: BlastRadius) -> BlastRadiusOut:
        return cls(
            subject=report.subject, subject_glob=report.subject_glob, since=iso(report.since),
            until=iso(report.until), generated_at=iso(report.generated_at),
            totals=TotalsOut(**asdict(report.totals), denied=report.denied),
            boundaries=[BoundaryReachOut.of(b) for b in report.boundaries],
            rules=[RuleReachOut.of(r) for r in report.rules],
        )  # fmt: skip


# --- OAuth (RFC 8693, RFC 7662, RFC 7009): form bodies in, JSON out; for the OpenAPI document --------


class TokenExchangeForm(BaseModel):
    """`POST /oauth/token` form (RFC 8693 §2.1): the identity token in, one boundary as `resource`."""

    grant_type: Literal["urn:ietf:params:oauth:grant-type:token-exchange"]
    subject_token: str = Field(description="The workload's identity token (never stored, never echoed); for a "
                               "delegation or a transaction token, a broker token the caller holds.")  # fmt: skip
    subject_token_type: Literal["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token",
                                "urn:ietf:params:oauth:token-type:access_token",
                                "urn:ietf:params:oauth:token-type:txn_token"]  # fmt: skip
    resource: BoundaryName | None = Field(None, description="The boundary (or use `audience`).")
    audience: BoundaryName | None = Field(None, description="A boundary, or the trust domain of a transaction token.")
    scope: str = Field(description="Space-separated scopes of that boundary.")
    requested_ttl: str | None = Field(None, pattern=r"^([0-9]{1,5}|max)$")
    task: TaskId | None = None
    requested_token_type: str | None = Field(None, description="`urn:ietf:params:oauth:token-type:txn_token` for a "
                                             "transaction token (the caller's identity in `Authorization`).")  # fmt: skip
    actor_token: str | None = Field(None, description="Delegation (RFC 8693): the sub-agent's identity token; the "
                                    "orchestrator's identity goes in `Authorization`.")  # fmt: skip
    actor_token_type: Literal["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"] | None = None
    request_details: str | None = Field(None, description="Transaction token: a JSON object, becomes `tctx`.")
    request_context: str | None = Field(None, description="Transaction token: a JSON object, becomes `rctx`.")


class TokenOut(BaseModel):
    """RFC 8693 §2.2.1 answer, plus the broker's `grant_id` (for completion and receipts)."""

    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    scope: str
    grant_id: str


class TokenForm(BaseModel):
    """`POST /oauth/introspect` and `/oauth/revoke` form: the broker JWT asked about."""

    token: str
    token_type_hint: str | None = None


class IntrospectionOut(BaseModel):
    """RFC 7662 §2.2: `active`, and the token's claims only for its owner or a `resource_server`."""

    model_config = ConfigDict(extra="allow")

    active: bool
    token_type: str | None = None
    sub: str | None = None
    client_id: str | None = None
    aud: str | None = None
    scope: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    jti: str | None = None
    iss: str | None = None
    task: str | None = None
    cnf: dict[str, str] | None = None


class Problem(BaseModel):
    """RFC 9457 problem+json; `/oauth/*` answers also carry RFC 6749 §5.2 `error` and `error_description`."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    code: str = Field(description="Stable machine-readable code (docs/errors).")
    detail: str | None = None
    error: str | None = None
    error_description: str | None = None
    retry_after: int | None = None
    errors: list[dict[str, Any]] | None = None

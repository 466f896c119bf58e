"""What one issuing transaction decides for each write of its batch: commit, refuse, replay, supersede or end.

Two checks must happen inside the transaction that appends to the chain, or a concurrent operator
or a concurrent duplicate slips past them:

- a freeze of the grant's subject or boundary refuses the grant (promise 8), and so does a freeze
  of any other party it names (a delegated token's orchestrator and actors). The credential was
  already minted, so the row is kept as `revoke_pending`: the outbox revokes it like any other.
- a derived grant (delegated token, transaction token) is refused when its parent is no longer
  active: a parent that ends cascades to its children in the revoking transaction, and both take
  the chain head's lock, so a child committed first is found by the cascade and one committed
  after sees its parent ended.
- a subject's abuse limits at the grant's boundary (`Limits`: active grants, grants per window) are
  counted here, after the head lock, from the rows every replica's issuing transactions committed and
  the batch's own grants before it: exact under any concurrency. When the refused credential exists
  only in this request (the broker's own JWT, `only_here`), the refusal is its `denied` event alone,
  as a refusal before minting is: a flood of over-limit requests leaves no grant row, no outbox work
  and no pushed SET. A backend that calls another system is checked before minting too
  (broker/grants/limits.py); one that loses the race here is kept `revoke_pending`, as a freeze's.
- an `Idempotency-Key` already bound to a live grant of the same request either replays that grant
  (backends that can hand the credential out again: the broker's JWTs) or supersedes it (Vault
  tokens and leases, whose secret the broker never keeps): the earlier grant is revoked, so one key
  never holds two live credentials (promise 9). The same key with another request is refused.

A batch also ends grants whose owner completed them (`EndGrant`), when the end is the ledger's own
status (the broker's JWTs: the deny list) and nothing else is involved: the caller's own grant,
active, bound to no key or certificate, with no derived grant to cascade to. Anything else is
`Declined` and takes the full path (`GrantService.complete`), which checks and records it all.
The grant's row is read after the head lock: every transaction that ends an active grant holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, delete, insert, update

from broker import context
from broker.fingerprint import fingerprint
from broker.ledger import compiled
from broker.ledger.limits import Limits, Load, counted
from broker.ledger.models import ACTIVE, REVOKE_PENDING, Event, Grant, IdempotencyKey

_INSERT_GRANTS = insert(Grant.__table__)  # built once: it runs for every batch
OWNER_LEASE = 10.0  # seconds a replica that starts a revocation owns it before any outbox worker may claim it


@dataclass(frozen=True)
class IdemClaim:
    """A request's idempotency key (hashed with its caller) and the fingerprint of what it asked for."""

    key_hash: str
    request_fp: str
    replayable: bool  # the backend can hand the same credential out again


@dataclass(frozen=True)
class EndGrant:
    """An owner completing one grant, ended in the batch when the end is the ledger's own (see above)."""

    grant_id: str
    subject: str
    attestor: str
    boundaries: frozenset[str]  # the configured boundaries
    local_backends: frozenset[str]  # backends whose revocation calls nothing (the broker's JWTs)
    request_id: str | None = field(default_factory=context.request_id)  # taken on the request's side, as events do


@dataclass
class Write:
    """One caller's part of a batch: events, with a grant row when it is an issuance."""

    events: list[Event]
    grant: dict[str, Any] | None = None
    guard: bool = False  # refuse the grant when its subject or boundary is frozen
    idem: IdemClaim | None = None
    guard_subjects: tuple[str, ...] = ()  # other parties whose freeze refuses the grant too
    end: EndGrant | None = None  # a completion instead of an issuance
    limits: Limits | None = None  # the subject's abuse limits at the grant's boundary
    only_here: bool = False  # its credential exists only in this request (the broker's own JWT, not yet handed out)


@dataclass
class Committed:
    """The grant is live and its `issued` event chained."""

    superseded: str | None = None  # the earlier grant of the same key, now `revoke_pending`
    log_index: int | None = None  # the `issued` event's leaf in the transparency log (seq - 1)


@dataclass(frozen=True)
class Refused:
    """The grant lost a check inside the transaction; its row waits for the outbox to revoke it."""

    code: str
    detail: str
    retry_after: int | None = None  # an abuse limit's: seconds until it eases
    kept: bool = True  # the grant's row is kept `revoke_pending` (False: a limit's refusal, only its event)


@dataclass(frozen=True)
class Replayed:
    """The key's earlier grant is still live: answer with it; the new mint is never handed out."""

    grant_id: str


@dataclass(frozen=True)
class Ended:
    """The completed grant's row, at its final status; its end event is chained."""

    grant: dict[str, Any]


@dataclass(frozen=True)
class Declined:
    """Not the batch's to end: the caller takes the full path, which answers and records why."""


Outcome = Committed | Refused | Replayed | Ended | Declined | None  # None: an events-only write


@dataclass
class Applied:
    """What one write came to in its batch's transaction: its outcome and the rows it chained."""

    outcome: Outcome
    rows: list[dict[str, Any]]
    frozen_seen: set[tuple[str, str]] = field(default_factory=set)  # freezes the batch's checks met


@dataclass
class KeyState:
    """An idempotency key as this transaction sees it (loaded, or bound earlier in the batch)."""

    request_fp: str
    grant_id: str
    grant: Any  # the key's grant: a row (status, expires_at), a dict bound earlier in this batch, or None
    existing: bool = False

    def live(self, now: float) -> bool:
        status, expires = _get(self.grant, "status"), _get(self.grant, "expires_at")
        return self.grant is not None and status == ACTIVE and expires > now


@dataclass
class IssueBatch:
    """Decisions of one transaction, then the statements that carry them out."""

    now: float
    frozen: set[tuple[str, str]]
    keys: dict[str, KeyState]
    parents: dict[str, tuple[str, float]] = field(default_factory=dict)  # parent id -> (status, expires_at)
    events: list[Event] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    supersede: list[str] = field(default_factory=list)
    bound: dict[str, KeyState] = field(default_factory=dict)
    frozen_seen: set[tuple[str, str]] = field(default_factory=set)
    placed: list[tuple[Committed, int]] = field(default_factory=list)  # each commit and its event's position
    ending: dict[str, Any] = field(default_factory=dict)  # grant id -> row, of the batch's EndGrant writes
    with_children: set[str] = field(default_factory=set)  # of those, the ones with an active derived grant
    ended: list[dict[str, Any]] = field(default_factory=list)
    loads: dict[tuple[str, str, str], Load] = field(default_factory=dict)  # (subject, attestor, boundary) -> load

    def decide(self, write: Write) -> Outcome:
        if write.end is not None:
            return self._end(write.end)
        if write.grant is None:
            self.events += write.events
            return None
        refusal = self._freeze(write.grant, write.guard_subjects) if write.guard else None
        refusal = refusal or self._parent(write.grant)
        if refusal is not None:
            self._refuse(write, refusal)
            return refusal
        if write.limits is not None and (exceeded := self._limit(write)) is not None:
            return exceeded
        superseded = None
        if write.idem is not None:
            outcome = self._key(write)
            if not isinstance(outcome, Committed):
                return outcome
            superseded = outcome.superseded
        if write.limits is not None:
            self._count(write.grant)
        committed = Committed(superseded=superseded)
        self.placed.append((committed, len(self.events)))
        self.grants.append(write.grant)
        self.events += write.events
        return committed

    def number(self, rows: list[dict[str, Any]]) -> None:
        """Once chained: each committed grant learns its `issued` event's log index."""
        for committed, position in self.placed:
            committed.log_index = rows[position]["seq"] - 1

    def apply(self, session: Connection) -> None:
        if self.supersede:
            session.execute(
                update(Grant.__table__).where(Grant.id.in_(self.supersede), Grant.status == ACTIVE).values(
                    status=REVOKE_PENDING, end_status="superseded", end_actor="broker",
                    end_reason="superseded by a repeated request with the same Idempotency-Key",
                    ended_at=self.now, next_attempt_at=self.now + OWNER_LEASE,
                )
            )  # fmt: skip
        if self.grants:
            compiled.execute_many(session, _INSERT_GRANTS, self.grants)
        for grant in self.ended:  # active until now: any other end of it would have held the head lock first
            session.execute(
                update(Grant.__table__).where(Grant.id == grant["id"], Grant.status == ACTIVE).values(
                    status=grant["status"], end_status=grant["end_status"], end_actor=grant["end_actor"],
                    end_reason=grant["end_reason"], ended_at=grant["ended_at"], next_attempt_at=None,
                )
            )  # fmt: skip
        if self.bound:
            session.execute(delete(IdempotencyKey.__table__).where(IdempotencyKey.key_hash.in_(list(self.bound))))
            session.execute(insert(IdempotencyKey.__table__), [_key_row(h, k) for h, k in self.bound.items()])

    def _end(self, end: EndGrant) -> Ended | Declined:
        row = self.ending.get(end.grant_id)
        if row is None or (row["subject"], row["attestor"]) != (end.subject, end.attestor) or row["status"] != ACTIVE:
            return Declined()
        if row["cnf_jkt"] or row["cnf_x5t"] or end.grant_id in self.with_children:
            return Declined()
        if row["boundary"] not in end.boundaries or row["backend"] not in end.local_backends:
            return Declined()
        grant = {**row, "status": "completed", "end_status": "completed", "end_actor": end.subject,
                 "end_reason": "completed by owner", "ended_at": self.now, "next_attempt_at": None}  # fmt: skip
        self.ending[end.grant_id] = grant  # a second completion in this batch finds it ended
        self.ended.append(grant)
        self._uncount(grant)
        self.events.append(end_event(grant, "completed", {"request_id": end.request_id} if end.request_id else {}))
        return Ended(grant)

    def _freeze(self, grant: dict[str, Any], others: tuple[str, ...] = ()) -> Refused | None:
        targets = [("subject", grant["subject"]), *(("subject", other) for other in others)]
        for kind, value in [*targets, ("boundary", grant["boundary"])]:
            if (kind, value) in self.frozen:
                self.frozen_seen.add((kind, value))
                return Refused(f"{kind}_frozen", f"{kind} was frozen while the grant was being issued")
        return None

    def _limit(self, write: Write) -> Refused | None:
        """A limit this grant would pass, counted at its issue time: refused, with its `denied` event alone
        when the credential exists nowhere else."""
        grant, limits = write.grant, write.limits
        assert grant is not None and limits is not None
        exceeded = limits.exceeded(self.loads[load_key(grant)], grant["issued_at"])
        if exceeded is None:
            return None
        if not write.only_here:  # a Vault token or lease was minted meanwhile: kept for the outbox to revoke
            refusal = Refused(exceeded.code, exceeded.detail, retry_after=exceeded.retry_after)
            self._refuse(write, refusal)
            return refusal
        issued = write.events[0]
        detail = {"code": exceeded.code, "action": "issue", "reason": exceeded.detail,
                  **{k: issued.detail.get(k) for k in ("scopes", "identity_fp", "policy_revision", "rule", "request_id")
                     if k in issued.detail}}  # fmt: skip
        self.events.append(Event(kind="denied", subject=issued.subject, boundary=issued.boundary, task=issued.task,
                                 actor=issued.actor, detail=detail))  # fmt: skip
        return Refused(exceeded.code, exceeded.detail, retry_after=exceeded.retry_after, kept=False)

    def _count(self, grant: dict[str, Any]) -> None:
        key = load_key(grant)
        if key in self.loads:
            self.loads[key] = counted(self.loads[key], grant["issued_at"], grant["expires_at"])

    def _uncount(self, grant: dict[str, Any]) -> None:
        """A grant the batch ended no longer counts against its subject's later grants in it (if it was
        counted: active when the load was read)."""
        load = self.loads.get(load_key(grant))
        if load is not None and load.active > 0 and (load.at is None or grant["expires_at"] > load.at):
            self.loads[load_key(grant)] = replace(load, active=load.active - 1)

    def _parent(self, grant: dict[str, Any]) -> Refused | None:
        parent = grant.get("parent_grant_id")
        if parent is None:
            return None
        status, expires_at = self.parents.get(parent, (None, 0.0))
        if status != ACTIVE or expires_at <= self.now:
            return Refused("parent_grant_ended", "the grant it is derived from ended while it was being issued")
        return None

    def _key(self, write: Write) -> Outcome:
        claim, grant = write.idem, write.grant
        assert claim is not None and grant is not None
        state = self.bound.get(claim.key_hash) or self.keys.get(claim.key_hash)
        if state is not None and state.live(self.now):
            if state.request_fp != claim.request_fp:
                refusal = Refused("idempotency_key_reused", "the Idempotency-Key was used for another request")
                self._refuse(write, refusal)
                return refusal
            if claim.replayable:
                self.events.append(_replayed(write.events[0], state.grant_id))
                return Replayed(state.grant_id)
            self._supersede(state)
            superseded = state.grant_id
        else:
            superseded = None
        self.bound[claim.key_hash] = KeyState(claim.request_fp, grant["id"], grant)
        return Committed(superseded=superseded)

    def _supersede(self, state: KeyState) -> None:
        if isinstance(state.grant, dict):  # bound earlier in this very batch: not inserted yet
            state.grant.update(status=REVOKE_PENDING, end_status="superseded", end_actor="broker",
                               end_reason="superseded by a repeated request with the same Idempotency-Key",
                               ended_at=self.now, next_attempt_at=self.now + OWNER_LEASE)  # fmt: skip
        else:
            self.supersede.append(state.grant_id)

    def _refuse(self, write: Write, refusal: Refused) -> None:
        grant = dict(write.grant or {})
        grant.update(status=REVOKE_PENDING, end_status="revoked", end_actor="broker",
                     end_reason=f"refused at commit: {refusal.code}", ended_at=self.now,
                     next_attempt_at=self.now + OWNER_LEASE)  # fmt: skip
        self.grants.append(grant)
        issued = write.events[0]
        detail = {**issued.detail, "code": refusal.code, "action": "issue", "reason": refusal.detail}
        self.events.append(Event(kind="denied", subject=issued.subject, boundary=issued.boundary, task=issued.task,
                                 grant_id=issued.grant_id, actor=issued.actor, detail=detail))  # fmt: skip


def load_key(grant: dict[str, Any]) -> tuple[str, str, str]:
    """What abuse limits count by: the subject (and its attestor) at one boundary."""
    return grant["subject"], grant["attestor"], grant["boundary"]


def grant_values(grant: Grant) -> dict[str, Any]:
    return {column.key: getattr(grant, column.key) for column in Grant.__table__.columns}


def _replayed(issued: Event, grant_id: str) -> Event:
    detail = {"identity_fp": issued.detail.get("identity_fp"), "idempotent": True}
    return Event(kind="replayed", subject=issued.subject, boundary=issued.boundary, task=issued.task,
                 grant_id=grant_id, actor=issued.actor, detail=detail)  # fmt: skip


def _key_row(key_hash: str, state: KeyState) -> dict[str, Any]:
    return {"key_hash": key_hash, "request_fp": state.request_fp, "grant_id": state.grant_id,
            "expires_at": _get(state.grant, "expires_at")}  # fmt: skip


def end_event(grant: Any, kind: str, detail: dict[str, Any]) -> Event:
    """The event of a grant's end (or failed end): a Grant, a row, or a dict of its columns."""
    base = {"reason": _get(grant, "end_reason"), "backend": _get(grant, "backend"),
            "handle_fp": fingerprint(_get(grant, "handle"), short=True)}  # fmt: skip
    if _get(grant, "revocation_id"):
        base["revocation_id"] = _get(grant, "revocation_id")
    if _get(grant, "parent_grant_id"):  # a derived grant: the grant it came from (its end may be that one's cascade)
        base["parent_grant_id"] = _get(grant, "parent_grant_id")
    return Event(kind=kind, subject=_get(grant, "subject"), boundary=_get(grant, "boundary"), task=_get(grant, "task"),
                 grant_id=_get(grant, "id"), actor=_get(grant, "end_actor"), detail={**base, **detail})  # fmt: skip


def _get(grant: Any, name: str) -> Any:
    if grant is None:
        return None
    return grant[name] if isinstance(grant, dict) else getattr(grant, name)

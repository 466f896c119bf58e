"""Operator use cases during an incident: revoke by selector, freeze, poll progress, blast radius.

Mass revocation goes through the same outbox as completion (`begin_revoke` → backend → finish),
batched: one transaction marks up to `batch` grants `revoke_pending`, each boundary's handles are
revoked in one `revoke_many` call (a bounded thread pool, or a Vault prefix revocation), and the
results are finished in batches, one chained event per grant.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

from broker.backends import revoke_many
from broker.errors import BadRequest, BrokerError, NotFound, UnknownBoundary
from broker.glob import glob_problem
from broker.grants.outbox import backoff
from broker.grants.recording import recorded
from broker.grants.service import GrantService
from broker.identity import Identity
from broker.ledger import (
    ACTIVE,
    REVOKE_PENDING,
    AuditEvent,
    Event,
    Filter,
    Freeze,
    Grant,
    LedgerStore,
    Revocation,
    Selector,
    VerifyResult,
)

log = logging.getLogger(__name__)
_recorded = functools.partial(recorded, record=lambda ops: ops.service.record_refusal)
FreezeKind = Literal["subject", "boundary"]
WITHDRAWER = "broker:policy"  # the actor of withdrawals: the policy reload, not an operator


@dataclass(frozen=True)
class Counts:
    """Grants by status: `live` are active, `pending` wait for their backend revocation."""

    grants: int
    live: int
    pending: int
    completed: int
    revoked: int
    expired: int
    superseded: int


@dataclass(frozen=True)
class BoundaryReach:
    """What a blast radius holds at one boundary: scopes, subjects, and the live and revoked grants."""

    boundary: str
    scopes: list[str]
    subjects: list[str]
    counts: Counts
    first_issued_at: float
    live: list[Grant]
    revoked: list[Grant]  # revoked, or still revoke_pending


@dataclass(frozen=True)
class RuleReach:
    """What one rule let the subject reach (`rule` None: grants issued before provenance was recorded)."""

    rule: str | None
    policy_revisions: list[str]
    boundaries: list[str]
    scopes: list[str]
    counts: Counts
    live: list[str]  # grant ids


@dataclass(frozen=True)
class BlastRadius:
    """What a subject (exact, or a glob) reached in a window, read from the ledger alone."""

    subject: str
    subject_glob: bool
    since: float
    until: float
    generated_at: float
    totals: Counts
    denied: int
    boundaries: list[BoundaryReach]
    rules: list[RuleReach]


@dataclass(frozen=True)
class RevocationStatus:
    """Progress of one operator revocation: matched grants and how many are revoked or still pending."""

    revocation_id: str
    selector: dict[str, Any]
    reason: str
    actor: str
    created_at: float
    matched: int
    revoked: int
    pending: int
    retrying: int = 0

    @property
    def state(self) -> str:
        """`done`; `retrying` when the first attempt is over and what failed waits for the outbox; else `in_progress`."""
        if self.pending > self.retrying:
            return "in_progress"
        return "retrying" if self.pending else "done"


class Operations:
    """Operator use cases over the grant service's ledger and backends."""

    def __init__(
        self,
        service: GrantService,
        *,
        batch: int = 1000,
        workers: int = 8,
        on_done: Callable[[float], None] | None = None,
    ) -> None:
        self.service = service
        self.ledger = service.ledger
        self.batch = batch
        self.workers = workers
        self.on_done = on_done
        self._background: ThreadPoolExecutor | None = None  # made on first use, again after close()
        self._background_lock = threading.Lock()

    # --- revocation ------------------------------------------------------------------------

    @_recorded("revoke")
    def revoke(
        self, operator: Identity, selector: Selector, reason: str, *, freeze: bool = False, wait: bool = True
    ) -> RevocationStatus:
        """Revoke every active grant the selector matches; intent is committed before anything runs."""
        started = time.monotonic()
        self._check_selector(selector, reason, freeze)
        revocation_id = "rv_" + secrets.token_urlsafe(12)
        if freeze:
            kind, value = _freeze_target(selector)
            self.freeze(operator, kind, value, reason, revocation_id=revocation_id)
        ids = self.ledger.queries.active_ids(selector)
        self._record_request(operator.subject, selector, reason, revocation_id, len(ids), freeze)
        moved = self._begin(ids, operator.subject, reason, revocation_id)
        whole, subjects = self._whole_boundaries(selector), self._whole_subjects(selector)
        if wait:
            self._execute(moved, whole, started, subjects)
        else:
            self._in_background(self._execute, moved, whole, started, subjects)
        return self.progress(revocation_id)

    def withdraw(self, rule: str | None, ids: Sequence[str], revision: str) -> str:
        """Grants a reloaded policy no longer allows: revoked like an operator's revocation, one per rule."""
        started = time.monotonic()
        revocation_id = "rv_" + secrets.token_urlsafe(12)
        reason = f"policy withdrawn: rule {rule or '(unrecorded)'}"
        # the selector names the rule for the record; the grants are those the new revision refuses
        selector = Selector(rule=rule)
        self._record_request(WITHDRAWER, selector, reason, revocation_id, len(ids), False)
        moved = self._begin(ids, WITHDRAWER, reason, revocation_id)
        self._in_background(self._execute, moved, set(), started)  # intent is committed: the outbox has it
        return revocation_id

    def matching(self, selector: Selector) -> int:
        """How many active grants a selector would revoke now (for a confirmation prompt)."""
        self._check_selector(selector, "dry run", freeze=False)
        return len(self.ledger.queries.active_ids(selector))

    def progress(self, revocation_id: str) -> RevocationStatus:
        revocation = self.ledger.records.get_revocation(revocation_id)
        if revocation is None:
            raise NotFound("revocation not found")
        counts = self.ledger.queries.revocation_progress(revocation_id)
        retrying = counts.pop("retrying")
        pending = counts.get(REVOKE_PENDING, 0)
        return RevocationStatus(
            revocation_id=revocation.id,
            selector=revocation.selector,
            reason=revocation.reason,
            actor=revocation.actor,
            created_at=revocation.created_at,
            matched=sum(counts.values()),  # the grants it took; one completed meanwhile is not counted
            revoked=sum(counts.values()) - pending,
            pending=pending,
            retrying=retrying,
        )

    def _check_selector(self, selector: Selector, reason: str, freeze: bool) -> None:
        chosen = [name for name, value in asdict(selector).items() if value not in (None, False)]
        if len(chosen) != 1:
            raise BadRequest("name exactly one of grant_id, task, subject, subject_glob, boundary, policy_revision, rule, all")
        if selector.subject_glob is not None and (problem := glob_problem(selector.subject_glob)):
            raise BadRequest(f"subject_glob: {problem}")
        if not reason.strip():
            raise BadRequest("a reason is required")
        if selector.boundary is not None and selector.boundary not in self.service.boundaries:
            raise UnknownBoundary(f"boundary {selector.boundary!r} is not configured")
        if freeze:
            _freeze_target(selector)

    def _record_request(
        self, actor: str, selector: Selector, reason: str, revocation_id: str, matched: int, freeze: bool
    ) -> None:
        wire = {**_selector_dict(selector), "freeze": freeze}
        row = Revocation(
            id=revocation_id, selector=wire, reason=reason[:256], actor=actor,
            created_at=self.service.clock(), matched=matched,
        )
        detail = {"revocation_id": revocation_id, "selector": wire, "reason": reason[:256], "matched": matched}
        event = Event(kind="revocation_requested", actor=actor, detail=detail, **_event_scope(selector))
        self.ledger.records.add_revocation(row, event)

    def _begin(self, ids: Sequence[str], actor: str, reason: str, revocation_id: str) -> list[Grant]:
        """Commit the intent batch by batch; the rows carry what revocation needs (backend, boundary, handle)."""
        moved: list[Grant] = []
        for chunk in _chunks(ids, self.batch):
            moved += self.ledger.begin_revoke_many(
                chunk, end_status="revoked", actor=actor, reason=reason, revocation_id=revocation_id
            )
        return moved

    def _whole_boundaries(self, selector: Selector) -> set[str]:
        """Boundaries whose every live grant is being revoked and which are frozen: a prefix revocation is safe."""
        names = [selector.boundary] if selector.boundary else (list(self.service.boundaries) if selector.all_ else [])
        return {name for name in names if self.ledger.records.is_frozen("boundary", name)}

    def _whole_subjects(self, selector: Selector) -> set[str]:
        """A frozen subject whose every live grant is being revoked: its credentials' parents may go whole."""
        subject = selector.subject
        return {subject} if subject is not None and self.ledger.records.is_frozen("subject", subject) else set()

    def _execute(
        self, moved: list[Grant], whole: set[str], started: float, subjects: set[str] | frozenset[str] = frozenset()
    ) -> tuple[int, int]:
        """Revoke at the backends, boundary by boundary, then finish or reschedule in batches."""
        revoked = pending = 0
        try:
            for (backend_name, boundary_name), grants in _by_boundary(moved).items():
                parents = {g.handle: g.parent_handle for g in grants if g.parent_handle and g.subject in subjects}
                errors = self._revoke_group(backend_name, boundary_name, grants, boundary_name in whole, parents)
                done, failed = _split(grants, errors)
                revoked += self._finish(done)
                pending += self._fail(failed, grants)
        except BrokerError as exc:  # the ledger is down: the outbox worker picks them up later
            log.warning("revocation batch interrupted: %s", exc.code)
        if self.on_done and pending == 0 and moved:
            self.on_done(time.monotonic() - started)
        return revoked, pending

    def _revoke_group(
        self, backend_name: str, boundary_name: str, grants: list[Grant], whole: bool, parents: dict[str, str]
    ) -> dict[str, str]:
        boundary = self.service.boundaries.get(boundary_name)
        backend = self.service.backends.get(backend_name)
        handles = [g.handle for g in grants]
        if boundary is None or backend is None:
            return dict.fromkeys(handles, f"no backend configured for boundary {boundary_name!r}")
        try:
            return revoke_many(backend, boundary, handles, whole_boundary=whole, workers=self.workers, parents=parents)
        except BrokerError as exc:
            return dict.fromkeys(handles, exc.detail)

    def _finish(self, done: list[Grant]) -> int:
        return sum(self.ledger.finish_revoke_many([g.id for g in chunk]) for chunk in _chunks(done, self.batch))

    def _fail(self, failed: dict[str, str], grants: list[Grant]) -> int:
        if not failed:
            return 0
        attempts = max(g.revoke_attempts for g in grants)
        retry_at = self.service.clock() + backoff(attempts, self.service.settings.revoke_retry_max_delay)
        ids = list(failed)
        return sum(self.ledger.fail_revoke_many({i: failed[i] for i in chunk}, retry_at) for chunk in _chunks(ids, self.batch))

    # --- freezes ---------------------------------------------------------------------------

    @_recorded("freeze")
    def freeze(
        self, operator: Identity, kind: FreezeKind, value: str, reason: str, revocation_id: str | None = None
    ) -> bool:
        """Deny new grants to a subject or boundary until lifted; False when it was already frozen."""
        self._check_freeze_target(kind, value, reason)
        row = Freeze(
            kind=kind, value=value, reason=reason[:256], actor=operator.subject,
            created_at=self.service.clock(), revocation_id=revocation_id,
        )
        detail = {"target": kind, "value": value, "reason": reason[:256], "revocation_id": revocation_id}
        return self.ledger.records.add_freeze(row, Event(kind="frozen", actor=operator.subject, detail=detail, **{kind: value}))

    @_recorded("unfreeze")
    def unfreeze(self, operator: Identity, kind: FreezeKind, value: str, reason: str) -> bool:
        """Lift a freeze; False when there was none."""
        self._check_freeze_target(kind, value, reason)
        detail = {"target": kind, "value": value, "reason": reason[:256]}
        event = Event(kind="unfrozen", actor=operator.subject, detail=detail, **{kind: value})
        return self.ledger.records.lift_freeze(kind, value, event)

    def freezes(self) -> list[Freeze]:
        return self.ledger.records.freezes()

    def _check_freeze_target(self, kind: str, value: str, reason: str) -> None:
        if kind not in ("subject", "boundary") or not value:
            raise BadRequest("freeze one exact subject or one boundary")
        if kind == "boundary" and value not in self.service.boundaries:
            raise UnknownBoundary(f"boundary {value!r} is not configured")
        if not reason.strip():
            raise BadRequest("a reason is required")

    # --- reads: inventory, audit, verification ---------------------------------------------

    def inventory(self, where: Filter, after: tuple[float, str] | None, limit: int) -> list[Grant]:
        return self.ledger.queries.inventory(where, after=after, limit=limit)

    def audit(self, where: Filter, after_seq: int, limit: int) -> list[AuditEvent]:
        return self.ledger.queries.audit(where, after_seq=after_seq, limit=limit)

    def audit_tail(self, where: Filter, count: int) -> tuple[list[AuditEvent], int]:
        """The newest `count` matching events and the chain's last sequence number (to follow on from)."""
        head = self.ledger.queries.last_seq()
        return (self.ledger.queries.audit_tail(where, count) if count else []), head

    def verify(self) -> VerifyResult:
        return self.ledger.verify()

    # --- blast radius ----------------------------------------------------------------------

    def blast_radius(self, who: Filter, since: float, until: float) -> BlastRadius:
        return blast_radius(self.ledger, who, since, until, now=self.service.clock())

    def _in_background(self, *call: Any) -> None:
        """Run a revocation's backend calls off the request; an app started again after close() gets a new pool."""
        with self._background_lock:
            if self._background is None:
                self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="broker-revocation")
            self._background.submit(*call)

    def close(self) -> None:
        with self._background_lock:
            background, self._background = self._background, None
        if background is not None:
            background.shutdown(wait=True)


def blast_radius(ledger: LedgerStore, who: Filter, since: float, until: float, now: float) -> BlastRadius:
    """For a subject (exact, or `subject_glob`) and a window: boundaries reached, scopes, counts, live and
    revoked grants.

    Needs only the ledger, so the CLI runs it offline against the data directory or database too.
    """
    if (who.subject is None) == (who.subject_glob is None):
        raise BadRequest("name exactly one of subject, subject_glob")
    if who.subject_glob is not None and (problem := glob_problem(who.subject_glob)):
        raise BadRequest(f"subject_glob: {problem}")
    if since >= until:
        raise BadRequest("since must be before until")
    grants = ledger.queries.window_grants(who, since, until)
    boundaries = [_boundary_reach(name, rows) for name, rows in _group(grants, lambda g: g.boundary).items()]
    rules = [_rule_reach(rule, rows) for rule, rows in _group(grants, lambda g: g.rule).items()]
    return BlastRadius(
        subject=who.subject if who.subject is not None else who.subject_glob,  # type: ignore[arg-type]
        subject_glob=who.subject_glob is not None, since=since, until=until, generated_at=now,
        totals=_counts(grants), denied=ledger.queries.denied_count(who, since, until), boundaries=boundaries,
        rules=sorted(rules, key=lambda r: (r.rule is None, r.rule or "")),
    )  # fmt: skip


def _freeze_target(selector: Selector) -> tuple[FreezeKind, str]:
    if selector.subject is not None:
        return "subject", selector.subject
    if selector.boundary is not None:
        return "boundary", selector.boundary
    raise BadRequest("freeze goes with an exact subject or a boundary selector (a subject_glob cannot be frozen)")


def _selector_dict(selector: Selector) -> dict[str, Any]:
    wire = {name: value for name, value in asdict(selector).items() if value not in (None, False)}
    return {("all" if name == "all_" else name): value for name, value in wire.items()}


def _event_scope(selector: Selector) -> dict[str, str]:
    scope = {"subject": selector.subject, "boundary": selector.boundary, "task": selector.task}  # a glob is in detail
    scope["grant_id"] = selector.grant_id
    return {key: value for key, value in scope.items() if value is not None}


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _group(grants: Sequence[Grant], key: Callable[[Grant], Any]) -> dict[Any, list[Grant]]:
    groups: dict[Any, list[Grant]] = defaultdict(list)
    for grant in grants:
        groups[key(grant)].append(grant)
    return dict(groups)


def _by_boundary(grants: Sequence[Grant]) -> dict[tuple[str, str], list[Grant]]:
    return _group(grants, lambda g: (g.backend, g.boundary))


def _split(grants: list[Grant], errors: dict[str, str]) -> tuple[list[Grant], dict[str, str]]:
    done = [g for g in grants if g.handle not in errors]
    return done, {g.id: errors[g.handle] for g in grants if g.handle in errors}


def _counts(grants: Sequence[Grant]) -> Counts:
    by_status = Counter(g.status for g in grants)
    return Counts(grants=len(grants), live=by_status[ACTIVE], pending=by_status[REVOKE_PENDING],
                  completed=by_status["completed"], revoked=by_status["revoked"], expired=by_status["expired"],
                  superseded=by_status["superseded"])  # fmt: skip


def _boundary_reach(name: str, grants: list[Grant]) -> BoundaryReach:
    return BoundaryReach(
        boundary=name,
        scopes=sorted({scope for g in grants for scope in g.scope_list}),
        subjects=sorted({g.subject for g in grants}),
        counts=_counts(grants),
        first_issued_at=min(g.issued_at for g in grants),
        live=[g for g in grants if g.status == ACTIVE],
        revoked=[g for g in grants if g.status in ("revoked", REVOKE_PENDING)],
    )


def _rule_reach(rule: str | None, grants: list[Grant]) -> RuleReach:
    return RuleReach(
        rule=rule,
        policy_revisions=sorted({g.policy_revision for g in grants if g.policy_revision}),
        boundaries=sorted({g.boundary for g in grants}),
        scopes=sorted({scope for g in grants for scope in g.scope_list}),
        counts=_counts(grants),
        live=[g.id for g in grants if g.status == ACTIVE],
    )

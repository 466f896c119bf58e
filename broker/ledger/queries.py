"""Read queries operators run: inventory, filtered audit, revocation progress, a subject's window."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select, tuple_

from broker.glob import compile_glob
from broker.ledger.models import ACTIVE, REVOKE_PENDING, AuditEvent, Grant
from broker.ledger.transactions import Transactions
from broker.ledger.unindexed import unindexed


@dataclass(frozen=True)
class Filter:
    """Filters shared by the grant inventory and the audit query; None means any. Times are epoch seconds."""

    status: str | None = None
    subject: str | None = None  # always literal
    subject_glob: str | None = None  # a pattern, by name (broker/glob.py)
    boundary: str | None = None
    task: str | None = None
    grant_id: str | None = None
    kind: str | None = None  # audit only
    since: float | None = None
    until: float | None = None
    policy_revision: str | None = None  # provenance: the policy revision that decided
    rule: str | None = None  # provenance: the id of the rule that decided


@dataclass(frozen=True)
class Selector:
    """Which active grants an operator revocation takes; exactly one field is set (`all_` for everything)."""

    grant_id: str | None = None
    task: str | None = None
    subject: str | None = None  # always literal
    boundary: str | None = None
    all_: bool = False
    subject_glob: str | None = None  # a pattern, by name (broker/glob.py)
    policy_revision: str | None = None  # every grant that revision of the policy allowed
    rule: str | None = None  # every grant the rule with this id allowed


class ReadQueries:
    """The operator's read queries (no writes here)."""

    def __init__(self, tx: Transactions) -> None:
        self.tx = tx

    def active_ids(self, selector: Selector) -> list[str]:
        """Ids of the active grants a revocation selector matches, found through the selector's own index."""
        status = Grant.status if selector.all_ else unindexed(Grant.status)
        conditions: list[ColumnElement[bool]] = [status == ACTIVE]
        with self.tx.session(readonly=True) as session:
            if selector.grant_id is not None:
                conditions.append(Grant.id == selector.grant_id)
            if selector.task is not None:
                conditions.append(Grant.task == selector.task)
            if selector.boundary is not None:
                conditions.append(Grant.boundary == selector.boundary)
            if selector.subject is not None:
                conditions.append(Grant.subject == selector.subject)
            if selector.policy_revision is not None:
                conditions.append(Grant.policy_revision == selector.policy_revision)
            if selector.rule is not None:
                conditions.append(Grant.rule == selector.rule)
            if selector.subject_glob is not None:
                conditions.append(_glob_condition(session, Grant.subject, selector.subject_glob, active=True))
            return list(session.scalars(select(Grant.id).where(*conditions)).all())

    def inventory(self, where: Filter, after: tuple[float, str] | None = None, limit: int = 100) -> list[Grant]:
        """Grants in (issued_at, id) order after the cursor; `since`/`until` bound `issued_at`."""
        with self.tx.session(readonly=True) as session:
            query = select(Grant).where(*self._grant_conditions(session, where))
            if after is not None:
                query = query.where(tuple_(Grant.issued_at, Grant.id) > tuple_(*after))
            return list(session.scalars(query.order_by(Grant.issued_at, Grant.id).limit(limit)).all())

    def audit(self, where: Filter, after_seq: int = 0, limit: int = 1000) -> list[AuditEvent]:
        """Chained events in seq order after `after_seq`, filtered."""
        with self.tx.session(readonly=True) as session:
            query = select(AuditEvent).where(AuditEvent.seq > after_seq, *self._event_conditions(session, where))
            return list(session.scalars(query.order_by(AuditEvent.seq).limit(limit)).all())

    def audit_tail(self, where: Filter, count: int) -> list[AuditEvent]:
        """The newest `count` matching events, oldest first (`broker audit tail`)."""
        with self.tx.session(readonly=True) as session:
            query = select(AuditEvent).where(*self._event_conditions(session, where))
            rows = session.scalars(query.order_by(AuditEvent.seq.desc()).limit(count)).all()
            return list(reversed(rows))

    def last_seq(self) -> int:
        with self.tx.session(readonly=True) as session:
            return session.scalar(select(func.max(AuditEvent.seq))) or 0

    def revocation_progress(self, revocation_id: str) -> dict[str, int]:
        """How many grants of one revocation are in each status; `retrying`: pending after a failed attempt."""
        with self.tx.session(readonly=True) as session:
            query = select(Grant.status, func.count()).where(Grant.revocation_id == revocation_id)
            counts = dict(session.execute(query.group_by(Grant.status)).all())
            retrying = select(func.count()).select_from(Grant).where(
                Grant.revocation_id == revocation_id, Grant.status == REVOKE_PENDING, Grant.revoke_attempts > 0
            )
            counts["retrying"] = session.scalar(retrying) or 0
            return counts

    def outbox_state(self) -> tuple[int, float | None]:
        """Revocations waiting in the outbox: how many, and when the oldest was asked for (or None)."""
        with self.tx.session(readonly=True) as session:
            query = select(func.count(), func.min(Grant.ended_at)).where(Grant.status == REVOKE_PENDING)
            count, oldest = session.execute(query).one()
            return count or 0, oldest

    def pending_total(self) -> int:
        with self.tx.session(readonly=True) as session:
            return session.scalar(select(func.count()).select_from(Grant).where(Grant.status == REVOKE_PENDING)) or 0

    def window_grants(self, who: Filter, since: float, until: float) -> list[Grant]:
        """Grants of a subject (exact, or `subject_glob`) that were live at some moment of [since, until]."""
        with self.tx.session(readonly=True) as session:
            query = select(Grant).where(
                *_subject_conditions(session, Grant.subject, who),
                Grant.issued_at <= until,
                or_(Grant.ended_at.is_(None), Grant.ended_at >= since),
                or_(Grant.ended_at.is_not(None), Grant.expires_at >= since),
            )
            return list(session.scalars(query.order_by(Grant.issued_at, Grant.id)).all())

    def denied_count(self, who: Filter, since: float, until: float) -> int:
        with self.tx.session(readonly=True) as session:
            query = select(func.count()).select_from(AuditEvent).where(
                AuditEvent.kind == "denied",
                *_subject_conditions(session, AuditEvent.subject, who, events=True),
                AuditEvent.ts >= since,
                AuditEvent.ts <= until,
            )
            return session.scalar(query) or 0

    # --- helpers ----------------------------------------------------------------------------

    def _grant_conditions(self, session, where: Filter) -> list[ColumnElement[bool]]:  # noqa: ANN001
        names = ("status", "boundary", "task", "policy_revision", "rule")
        conditions = [getattr(Grant, name) == value for name, value in _exact(where, *names)]
        conditions += [Grant.id == where.grant_id] if where.grant_id else []
        conditions += _subject_conditions(session, Grant.subject, where)
        conditions += [Grant.issued_at >= where.since] if where.since is not None else []
        conditions += [Grant.issued_at < where.until] if where.until is not None else []
        return conditions

    def _event_conditions(self, session, where: Filter) -> list[ColumnElement[bool]]:  # noqa: ANN001
        names = ("kind", "boundary", "task", "grant_id")
        conditions = [getattr(AuditEvent, name) == value for name, value in _exact(where, *names)]
        conditions += _subject_conditions(session, AuditEvent.subject, where, events=True)
        # provenance lives in `detail` of issued and denied events (one JSON path on SQLite and PostgreSQL)
        for name in ("policy_revision", "rule"):
            if getattr(where, name) is not None:
                conditions.append(AuditEvent.detail[name].as_string() == getattr(where, name))
        conditions += [AuditEvent.ts >= where.since] if where.since is not None else []
        conditions += [AuditEvent.ts < where.until] if where.until is not None else []
        return conditions


def _subject_conditions(session, column, where: Filter, *, events: bool = False) -> list[ColumnElement[bool]]:  # noqa: ANN001
    conditions = [column == where.subject] if where.subject is not None else []
    if where.subject_glob is not None:
        conditions.append(_glob_condition(session, column, where.subject_glob, events=events))
    return conditions


def _glob_condition(session, column, pattern: str, *, active: bool = False, events: bool = False):  # noqa: ANN001, ANN202
    """The known subjects a glob matches (the policy engine's semantics: anchored, segment-aware)."""
    source = AuditEvent if events else Grant
    query = select(source.subject).distinct().where(source.subject.is_not(None))
    if active:
        query = query.where(Grant.status == ACTIVE)
    regex = compile_glob(pattern)
    return column.in_([name for name in session.scalars(query).all() if regex.fullmatch(name)])


def _exact(where: Filter, *names: str) -> list[tuple[str, str]]:
    return [(name, getattr(where, name)) for name in names if getattr(where, name) is not None]

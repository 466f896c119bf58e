"""Operator records: freezes (the deny list checked at issue) and revocation requests, each chained."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from broker.errors import LedgerUnavailable
from broker.ledger.models import Event, Freeze, Revocation
from broker.ledger.transactions import Transactions


class OperatorRecords:
    """Writes operators make, each with its audit event in the same transaction; and this process's
    snapshot of the freezes, which the issuing path checks before it mints."""

    def __init__(self, tx: Transactions) -> None:
        self.tx = tx
        self._freezes_seen: frozenset[tuple[str, str]] | None = None

    def add_freeze(self, freeze: Freeze, event: Event) -> bool:
        """Put a subject or boundary on the deny list; False when it already was (nothing changes)."""
        with self.tx.session() as session:
            if session.get(Freeze, (freeze.kind, freeze.value)) is not None:
                return False
            session.add(freeze)
            self.tx.append(session, [event])
        self.note_freezes({(freeze.kind, freeze.value)})
        return True

    def lift_freeze(self, kind: str, value: str, event: Event) -> bool:
        """Remove a deny-list entry; False when there was none (nothing recorded)."""
        with self.tx.session() as session:
            row = session.get(Freeze, (kind, value))
            if row is None:
                return False
            session.delete(row)
            self.tx.append(session, [event])
        self._forget_freeze((kind, value))
        return True

    def frozen(self, subject: str, boundary: str) -> str | None:
        """Which freeze refuses this subject at this boundary: "subject", "boundary" or None.

        A check before minting, answered from this process's snapshot of the freezes (refreshed by
        the worker, by this process's own freezes and by every refusal at commit) and confirmed in
        the database when it says "frozen". A stale "not frozen" costs one mint that the check
        inside the issuing transaction then refuses and revokes (broker/ledger/issuing.py).
        """
        snapshot = self._freeze_snapshot()
        if ("subject", subject) not in snapshot and ("boundary", boundary) not in snapshot:
            return None
        query = select(Freeze.kind).where(
            or_(
                (Freeze.kind == "subject") & (Freeze.value == subject),
                (Freeze.kind == "boundary") & (Freeze.value == boundary),
            )
        )
        try:
            with self.tx.reader.connect() as conn:
                kinds = set(conn.scalars(query).all())
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"ledger read failed: {type(exc).__name__}") from exc
        if not kinds:
            self._forget_freeze(("subject", subject), ("boundary", boundary))
        return "subject" if "subject" in kinds else ("boundary" if kinds else None)

    def refresh_freezes(self) -> None:
        """Reload the snapshot of every freeze (a worker job, so other replicas' freezes show up)."""
        try:
            with self.tx.reader.connect() as conn:
                rows = conn.execute(select(Freeze.kind, Freeze.value)).all()
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"ledger read failed: {type(exc).__name__}") from exc
        self._freezes_seen = frozenset((kind, value) for kind, value in rows)

    def _freeze_snapshot(self) -> frozenset[tuple[str, str]]:
        if self._freezes_seen is None:
            self.refresh_freezes()
        return self._freezes_seen

    def note_freezes(self, seen: set[tuple[str, str]]) -> None:
        """Freezes a committing write saw (the issuing transaction's check): into the snapshot at once."""
        if seen:
            self._freezes_seen = self._freeze_snapshot() | seen

    def _forget_freeze(self, *entries: tuple[str, str]) -> None:
        self._freezes_seen = self._freeze_snapshot() - set(entries)

    def is_frozen(self, kind: str, value: str) -> bool:
        with self.tx.session(readonly=True) as session:
            return session.get(Freeze, (kind, value)) is not None

    def freezes(self) -> list[Freeze]:
        with self.tx.session(readonly=True) as session:
            return list(session.scalars(select(Freeze).order_by(Freeze.created_at)).all())

    def add_revocation(self, revocation: Revocation, event: Event) -> None:
        """Record the operator's request (selector, reason, matched) before any grant moves."""
        with self.tx.session() as session:
            session.add(revocation)
            self.tx.append(session, [event])

    def get_revocation(self, revocation_id: str) -> Revocation | None:
        with self.tx.session(readonly=True) as session:
            return session.get(Revocation, revocation_id)

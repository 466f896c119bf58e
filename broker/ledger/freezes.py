"""Operator records: freezes (the deny list checked at issue) and revocation requests, each chained."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy import or_, select

from broker.errors import LedgerUnavailable
from broker.ledger.models import Freeze, Revocation

if TYPE_CHECKING:
    from broker.ledger.store import Event


class OperatorRecords:
    """Mixin of LedgerStore: writes operators make, each with its audit event in the same transaction."""

    def add_freeze(self, freeze: Freeze, event: Event) -> bool:
        """Put a subject or boundary on the deny list; False when it already was (nothing changes)."""
        with self._tx() as session:
            if session.get(Freeze, (freeze.kind, freeze.value)) is not None:
                return False
            session.add(freeze)
            self._append(session, [event])
            return True

    def lift_freeze(self, kind: str, value: str, event: Event) -> bool:
        """Remove a deny-list entry; False when there was none (nothing recorded)."""
        with self._tx() as session:
            row = session.get(Freeze, (kind, value))
            if row is None:
                return False
            session.delete(row)
            self._append(session, [event])
            return True

    def frozen(self, subject: str, boundary: str) -> str | None:
        """Which freeze refuses this subject at this boundary: "subject", "boundary" or None."""
        query = select(Freeze.kind).where(
            or_(
                (Freeze.kind == "subject") & (Freeze.value == subject),
                (Freeze.kind == "boundary") & (Freeze.value == boundary),
            )
        )
        try:  # a plain connection, no ORM session: this read runs on every issuance
            with self._reader.connect() as conn:
                kinds = set(conn.scalars(query).all())
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"ledger read failed: {type(exc).__name__}") from exc
        return "subject" if "subject" in kinds else ("boundary" if kinds else None)

    def is_frozen(self, kind: str, value: str) -> bool:
        with self._tx(readonly=True) as session:
            return session.get(Freeze, (kind, value)) is not None

    def freezes(self) -> list[Freeze]:
        with self._tx(readonly=True) as session:
            return list(session.scalars(select(Freeze).order_by(Freeze.created_at)).all())

    def add_revocation(self, revocation: Revocation, event: Event) -> None:
        """Record the operator's request (selector, reason, matched) before any grant moves."""
        with self._tx() as session:
            session.add(revocation)
            self._append(session, [event])

    def get_revocation(self, revocation_id: str) -> Revocation | None:
        with self._tx(readonly=True) as session:
            return session.get(Revocation, revocation_id)

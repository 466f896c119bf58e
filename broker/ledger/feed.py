"""A feed of committed audit events, so metrics can count decisions without touching the use cases."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import event

from broker.ledger.models import AuditEvent

log = logging.getLogger(__name__)
Subscriber = Callable[[Sequence[AuditEvent]], None]


class EventFeed:
    """Mixin of LedgerStore: call subscribers with each transaction's events once it has committed."""

    def subscribe(self, callback: Subscriber) -> None:
        sessions = self._sessions

        def collect(session, _context) -> None:  # noqa: ANN001
            rows = [row for row in session.new if isinstance(row, AuditEvent)]
            session.info.setdefault("feed", []).extend(rows)

        def deliver(session) -> None:  # noqa: ANN001
            rows = session.info.pop("feed", [])
            if rows:
                try:
                    callback(rows)
                except Exception:  # a subscriber never breaks a committed decision
                    log.exception("ledger feed subscriber failed")

        event.listen(sessions, "after_flush", collect)
        event.listen(sessions, "after_commit", deliver)
        event.listen(sessions, "after_rollback", lambda session: session.info.pop("feed", None))

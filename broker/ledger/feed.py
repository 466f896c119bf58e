"""A feed of committed audit events, so metrics can count decisions without touching the use cases."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import sessionmaker

log = logging.getLogger(__name__)
Subscriber = Callable[[Sequence[dict[str, Any]]], None]  # chained event rows, as `_append` wrote them


class EventFeed:
    """Call subscribers with each transaction's events once it has committed.

    `Transactions.append` leaves the rows in `session.info["feed"]`; a rolled-back transaction drops
    them. The ledger writer, which commits on a connection, publishes its batch's rows itself.
    """

    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> None:
        if not self._subscribers:
            event.listen(self._sessions, "after_commit", self._deliver)
            event.listen(self._sessions, "after_rollback", lambda session: session.info.pop("feed", None))
        self._subscribers.append(callback)

    def _deliver(self, session) -> None:  # noqa: ANN001
        self.publish(session.info.pop("feed", []))

    def publish(self, rows: Sequence[dict[str, Any]]) -> None:
        """Hand committed rows to the subscribers (sessions after commit; the ledger writer after each batch)."""
        for callback in self._subscribers if rows else ():
            try:
                callback(rows)
            except Exception:  # a subscriber never breaks a committed decision
                log.exception("ledger feed subscriber failed")

"""A feed of committed audit events, so metrics can count decisions without touching the use cases."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import event

log = logging.getLogger(__name__)
Subscriber = Callable[[Sequence[dict[str, Any]]], None]  # chained event rows, as `_append` wrote them


class EventFeed:
    """Mixin of LedgerStore: call subscribers with each transaction's events once it has committed.

    `_append` leaves the rows in `session.info["feed"]`; a rolled-back transaction drops them. The
    ledger writer, which commits on a connection, publishes its batch's rows itself once committed.
    """

    def subscribe(self, callback: Subscriber) -> None:
        if not hasattr(self, "_subscribers"):
            self._subscribers: list[Subscriber] = []
            event.listen(self._sessions, "after_commit", self._deliver)
            event.listen(self._sessions, "after_rollback", lambda session: session.info.pop("feed", None))
        self._subscribers.append(callback)

    def _deliver(self, session) -> None:  # noqa: ANN001
        self._publish(session.info.pop("feed", []))

    def _publish(self, rows: Sequence[dict[str, Any]]) -> None:
        """Hand committed rows to the subscribers (sessions after commit; the ledger writer after each batch)."""
        for callback in getattr(self, "_subscribers", ()) if rows else ():
            try:
                callback(rows)
            except Exception:  # a subscriber never breaks a committed decision
                log.exception("ledger feed subscriber failed")

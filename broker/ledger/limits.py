"""What abuse limits read and write: a subject's load at a boundary, and aggregated identity refusals."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import Connection, Insert, Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType

from broker.ledger import compiled
from broker.ledger.models import ACTIVE, DenialWindow, Event, Grant
from broker.ledger.transactions import Transactions

OVERFLOW = "overflow"  # the one bucket of a window whose distinct fingerprints are past the cap


@dataclass(frozen=True)
class Load:
    """One subject's grants at one boundary: how many are active, how many were issued recently, and when each eases."""

    active: int
    next_expiry: float | None  # when the first active grant runs out
    recent: int
    oldest_recent: float | None  # when the oldest grant of the window leaves it
    at: float | None = None  # the time it was counted at


@dataclass(frozen=True)
class Exceeded:
    """A limit reached: its stable code, what was counted, and the seconds until it eases."""

    code: str
    detail: str
    retry_after: int


@dataclass(frozen=True)
class Limits:
    """One subject's abuse limits at one boundary (config `limits:`); None turns a limit off."""

    boundary: str
    max_active: int | None
    rate: int | None
    window: float

    def exceeded(self, load: Load, now: float) -> Exceeded | None:
        """The first limit one more grant would pass, given the subject's `load` at `now`."""
        if self.max_active is not None and load.active >= self.max_active:
            detail = f"subject holds {load.active} active grants at boundary {self.boundary!r} (limit {self.max_active})"
            return Exceeded("too_many_active_grants", detail, _seconds_until(load.next_expiry, now))
        if self.rate is not None and load.recent >= self.rate:
            detail = (f"subject was issued {load.recent} grants at boundary {self.boundary!r} in the last "
                      f"{self.window:g}s (limit {self.rate})")  # fmt: skip
            return Exceeded("rate_limited", detail, _seconds_until((load.oldest_recent or now) + self.window, now))
        return None


def counted(load: Load, issued_at: float, expires_at: float) -> Load:
    """`load` with one more grant, issued at `issued_at` and active until `expires_at`."""
    first_expiry = expires_at if load.next_expiry is None else min(load.next_expiry, expires_at)
    oldest = issued_at if load.oldest_recent is None else min(load.oldest_recent, issued_at)
    return Load(load.active + 1, first_expiry, load.recent + 1, oldest, load.at)


_THEIRS = (Grant.subject == bindparam("subject")) & (Grant.boundary == bindparam("boundary")) & (
    Grant.attestor == bindparam("attestor"))  # fmt: skip
_ACTIVE = _THEIRS & (Grant.status == ACTIVE) & (Grant.expires_at > bindparam("now"))
_RECENT = _THEIRS & (Grant.issued_at > bindparam("since"))
# Four scalar subqueries, each one range of an index: (subject, boundary, status, expires_at) for the active
# grants, (subject, boundary, issued_at) for the recent ones. One WHERE ORing the two let SQLite walk every
# active grant of the ledger through (status, expires_at) (migration 0014). The minimums are raw driver values
# (floats from either driver): SQLAlchemy's PostgreSQL float processor needs the result column's type code,
# which a compiled statement (compiled.py) does not know.
_LOAD = select(
    select(func.count()).where(_ACTIVE).scalar_subquery(),
    select(func.min(Grant.expires_at, type_=NullType())).where(_ACTIVE).scalar_subquery(),
    select(func.count()).where(_RECENT).scalar_subquery(),
    select(func.min(Grant.issued_at, type_=NullType())).where(_RECENT).scalar_subquery(),
)


def load_on(conn: Connection, *, subject: str, attestor: str, boundary: str, now: float, since: float) -> Load:
    """A subject's load at a boundary: `_LOAD`, compiled once (the ledger writer runs it for every limited
    subject of a batch)."""
    values = {"subject": subject, "attestor": attestor, "boundary": boundary, "now": now, "since": since}
    return Load(*compiled.fetch(conn, _LOAD, values)[0], at=now)


class LimitRecords:
    """Counts in the database, so every replica sees the same numbers."""

    def __init__(self, tx: Transactions) -> None:
        self.tx = tx

    def load(self, *, subject: str, attestor: str, boundary: str, now: float, since: float) -> Load:
        """`load_on` a plain connection, like the freeze check."""
        with self.tx.reading() as conn:
            return load_on(conn, subject=subject, attestor=attestor, boundary=boundary, now=now, since=since)

    def record_aggregated(self, event: Event, *, window: int, token_fp: str, cap: int) -> bool:
        """Count a refusal in its (window, fingerprint) bucket; chain `event` only for a new bucket.

        At most `cap` fingerprints get their own bucket per window; later ones share OVERFLOW, so a
        flood of distinct junk tokens chains at most cap + 1 rows a window. True when `event` was chained.
        """
        with self.tx.session() as session:
            if self._bump(session, window, token_fp):
                return False
            distinct = session.scalar(select(func.count()).where(DenialWindow.window_start == window))
            if distinct >= cap:
                token_fp = OVERFLOW
                if self._bump(session, window, token_fp):
                    return False
                event.detail = {**event.detail, "identity_fp": OVERFLOW}
            row = {"window_start": window, "token_fp": token_fp, "count": 1, "first_at": self.tx.clock()}
            row["last_at"] = row["first_at"]
            inserted = session.execute(self._insert_new(DenialWindow.__table__).values(**row)).rowcount
            if not inserted:  # another replica opened the bucket first, and chained its row
                self._bump(session, window, token_fp)
                return False
            self.tx.append(session, [event])
            return True

    def denial_windows(self, since: int = 0) -> list[DenialWindow]:
        with self.tx.session(readonly=True) as session:
            query = select(DenialWindow).where(DenialWindow.window_start >= since)
            return list(session.scalars(query.order_by(DenialWindow.window_start, DenialWindow.token_fp)).all())

    def _bump(self, session: Session, window: int, token_fp: str) -> bool:
        table = DenialWindow.__table__
        bucket = (table.c.window_start == window) & (table.c.token_fp == token_fp)
        values = {"count": table.c.count + 1, "last_at": self.tx.clock()}
        return session.execute(update(table).where(bucket).values(**values)).rowcount > 0

    def _insert_new(self, table: Table) -> Insert:
        dialect = postgresql if self.tx.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing()


def _seconds_until(when: float | None, now: float) -> int:
    return max(1, math.ceil((when if when is not None else now + 1) - now))

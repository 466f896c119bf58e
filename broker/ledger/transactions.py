"""The ledger's transactions: the one object every part of the ledger reads and writes through.

`Transactions` owns the sessions (writing, and deferred reading beside a SQLite writer), the turns
SQLite writers take (turns.py), the chain head as the append lock, and `append`: chaining events
onto the head inside the caller's transaction, each one also a leaf of the transparency log, with
the append listeners (the signals outbox) called in that same transaction. The store, the operator
records, the abuse limits' records and the read queries each receive it; none reaches into another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.errors import LedgerUnavailable
from broker.ids import time_ordered
from broker.ledger import compiled
from broker.ledger.chain import canonical, link_entry
from broker.ledger.compiled import Executor
from broker.ledger.models import AuditEvent, ChainHead, Event
from broker.ledger.turns import turn, turns_for
from broker.transparency import log as transparency_log  # the one hook: every event is a log leaf

# The statements of every append, built once (building one costs ~140 µs here) and run compiled on
# the driver's cursor (broker/ledger/compiled.py): the ledger writer runs them for every batch.
_HEAD = select(ChainHead.seq, ChainHead.hash).where(ChainHead.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_SET_HEAD = (
    update(ChainHead.__table__).where(ChainHead.id == 1).values(seq=bindparam("head_seq"), hash=bindparam("head_hash"))
)
_INSERT_EVENTS = insert(AuditEvent.__table__)
AppendListener = Callable[[Executor, list[dict[str, Any]]], None]


class Transactions:
    """Sessions, turns, the chain head's lock and the append, over one engine."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.reader = engine.execution_options(sqlite_deferred=True)
        self.read_sessions = sessionmaker(self.reader, expire_on_commit=False)
        self.lock_head = engine.dialect.name != "sqlite"  # SQLite: BEGIN IMMEDIATE already holds the lock
        self.turns = turns_for(engine.dialect.name, engine.url.database)  # SQLite writers queue in the kernel
        # called inside each appending transaction with (executor, chained rows): e.g. the signals outbox
        self.append_listeners: list[AppendListener] = []

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """One transaction; a failure of the database is `LedgerUnavailable`, saying why."""
        try:
            factory = self.read_sessions if readonly else self.sessions
            with turn(None if readonly else self.turns), factory() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"ledger write failed: {why_failed(exc)}") from exc

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read on a Core connection, deferred beside a SQLite writer: no ORM session (which costs ~4 × a
        one-row read here); a failure of the database is `LedgerUnavailable`."""
        try:
            with self.reader.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"ledger read failed: {why_failed(exc)}") from exc

    def lock(self, executor: Executor) -> tuple[int, str]:
        """The chain head, locked for this transaction."""
        ((seq, prev_hash),) = compiled.fetch(executor, _HEAD_FOR_UPDATE if self.lock_head else _HEAD)
        return seq, prev_hash

    def append(self, executor: Executor, events: Sequence[Event], head: tuple[int, str] | None = None) -> list[dict[str, Any]]:
        """Chain events onto the head inside the caller's transaction (the head row is the lock).

        Core statements built once, not ORM units of work: this runs on every request. Returns the
        chained rows; a session delivers them to the feed after commit, the writer publishes its own.
        """
        if not events:
            return []
        seq, prev_hash = head or self.lock(executor)
        rows, entries, now = [], [], self.clock()
        for item in events:
            seq += 1
            row, entry = chained_row(item, seq, now, prev_hash)
            prev_hash = row["hash"]
            rows.append(row)
            entries.append(entry)
        compiled.execute_many(executor, _INSERT_EVENTS, rows)
        transparency_log.append_leaves(executor, rows[0]["seq"], entries)
        compiled.fetch(executor, _SET_HEAD, {"head_seq": seq, "head_hash": prev_hash})
        if isinstance(executor, Session):
            executor.info.setdefault("feed", []).extend(rows)  # delivered after commit (broker/ledger/feed.py)
        for listener in self.append_listeners:  # in the same transaction (signals' outbox)
            listener(executor, rows)
        return rows


def chained_row(item: Event, seq: int, now: float, prev_hash: str) -> tuple[dict[str, Any], bytes]:
    """An event as its chained row (the body, the previous row's hash and its own) and the row's canonical
    bytes, its log leaf: serialised once, for the chain and the log."""
    body = {
        "seq": seq,
        "id": time_ordered(now, 10),
        "ts": round(now, 6),
        "kind": item.kind,
        "subject": item.subject,
        "boundary": item.boundary,
        "task": item.task,
        "grant_id": item.grant_id,
        "actor": item.actor,
        "detail": item.detail,
    }
    entry = canonical(body)
    return {**body, "prev_hash": prev_hash, "hash": link_entry(prev_hash, entry)}, entry


def why_failed(exc: SQLAlchemyError) -> str:
    """A fixed, log-safe reason for a failed write (never the driver's raw message)."""
    text_ = str(getattr(exc, "orig", exc)).lower()
    for marker, reason in (("disk is full", "disk full"), ("no space", "disk full"), ("locked", "database locked"),
                           ("readonly", "read-only database"), ("read-only", "read-only database"),
                           ("connection", "connection lost"), ("timeout", "timeout")):  # fmt: skip
        if marker in text_:
            return f"{type(exc).__name__} ({reason})"
    return type(exc).__name__

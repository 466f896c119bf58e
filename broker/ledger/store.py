"""The ledger store: grants, the outbox of revocations and the append-only audit chain (the transparency
log, signals and key rows have their SQL in their own packages, inside the same database)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from broker.blocking import may_block
from broker.errors import LedgerUnavailable
from broker.ledger import compiled
from broker.ledger.chain import VerifyResult, verify_chain
from broker.ledger.feed import EventFeed
from broker.ledger.freezes import OperatorRecords
from broker.ledger.issuing import (
    OWNER_LEASE,
    Applied,
    EndGrant,
    IdemClaim,
    IssueBatch,
    KeyState,
    Outcome,
    Write,
    end_event,
    grant_values,
    load_key,
)
from broker.ledger.limits import LimitRecords, Limits, Load, load_on
from broker.ledger.models import (
    ACTIVE,
    REVOKE_PENDING,
    AuditEvent,
    ChainHead,
    Event,
    Freeze,
    Grant,
    IdempotencyKey,
)
from broker.ledger.queries import ReadQueries
from broker.ledger.transactions import Transactions, why_failed
from broker.ledger.turns import turn
from broker.ledger.unindexed import unindexed
from broker.ledger.writer import LedgerWriter
from broker.ledger.writer_process import RemoteWriter

# The writer's own statements, built once and run compiled (broker/ledger/compiled.py); the append's
# are in transactions.py.
_FROZEN_ONE = select(Freeze.kind, Freeze.value).where(
    or_((Freeze.kind == "subject") & (Freeze.value == bindparam("subject")),
        (Freeze.kind == "boundary") & (Freeze.value == bindparam("boundary")))
)  # fmt: skip
_ONE_GRANT = select(Grant.__table__).where(Grant.id == bindparam("grant_id"))  # a read, built once too
_KEYS_AMONG = (
    select(IdempotencyKey.key_hash, IdempotencyKey.request_fp, IdempotencyKey.grant_id, Grant.status, Grant.expires_at)
    .join(Grant, Grant.id == IdempotencyKey.grant_id, isouter=True)
    .where(IdempotencyKey.key_hash.in_(bindparam("hashes", expanding=True)))
)


def make_engine(
    url: str, *, sqlite_synchronous: str = "FULL", pool: dict[str, Any] | None = None, read_only: bool = False
) -> Engine:
    """The one place an engine is built: SQLite gets WAL, a busy timeout and immediate transactions.

    `pool` (pool_size, max_overflow, pool_timeout, pool_recycle) applies to server databases.
    `read_only`: for offline readers; the database must exist and is never written (nor created).
    """
    if not url.startswith("sqlite"):
        args = {"connect_args": {"options": "-c default_transaction_read_only=on"}} if read_only else {}
        server = create_engine(url, pool_pre_ping=True, **{"pool_size": 10, "max_overflow": 10, **(pool or {})}, **args)
        event.listen(server, "checkout", may_block)  # never from the event loop (broker/blocking.py)
        return server
    if read_only:
        url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    # a SQLite connection costs a file handle, so the pool covers every thread that may hold one at once
    # (the request thread pool's 40, the ledger writer, workers, readiness checks, signal delivery): a
    # smaller pool let threads waiting for the write lock hold every connection while the lock holder
    # waited for one (QueuePool timeout under a 16-thread freeze race)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=64,
                           max_overflow=64)  # fmt: skip

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        # IMMEDIATE takes the write lock up front, so a read-then-append never fails to upgrade;
        # reads stay deferred so WAL lets them run beside a writer
        deferred = conn.get_execution_options().get("sqlite_deferred")
        conn.exec_driver_sql("BEGIN" if deferred or read_only else "BEGIN IMMEDIATE")

    event.listen(engine, "checkout", may_block)  # never from the event loop (broker/blocking.py)
    return engine


class LedgerStore:
    """Grants and audit events in one database; every write appends to the hash chain.

    Composed of parts that share one `Transactions`: `records` (freezes, revocation requests),
    `limits` (abuse-limit counts), `queries` (operator reads) and `feed` (committed events); the
    store itself holds issuance, the revocation outbox and verification.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, writer_dir: Path | None = None) -> None:
        """`writer_dir`: the data directory of a running ledger writer process (writer_process.py), which
        then commits this store's writes; without it a writer thread of this process does."""
        self.engine = engine
        self.tx = Transactions(engine, clock)
        self.records = OperatorRecords(self.tx)
        self.limits = LimitRecords(self.tx)
        self.queries = ReadQueries(self.tx)
        self.feed = EventFeed(self.tx.sessions)
        self.append_listeners = self.tx.append_listeners  # the signals outbox registers here
        self._writer: LedgerWriter | RemoteWriter = (
            RemoteWriter(writer_dir, on_commit=self.committed) if writer_dir else LedgerWriter(self._apply_batch)
        )

    def close(self) -> None:
        self._writer.close()

    def ping(self) -> None:
        with self.tx.session(readonly=True) as session:
            session.execute(text("SELECT 1"))

    def probe_write(self) -> None:
        """Readiness: a write transaction that commits (the chain head rewritten unchanged), so a full
        disk, a read-only database or a held lock shows, which `SELECT 1` does not; and the ledger
        writer process reachable, when this store's writes go there."""
        if isinstance(self._writer, RemoteWriter):
            self._writer.check()
        with self.tx.session() as session:
            session.execute(update(ChainHead.__table__).where(ChainHead.id == 1).values(seq=ChainHead.seq))

    def on_write(self, listener: Callable[[float, int], None]) -> None:
        """Call `listener(seconds, writes)` after each batch the ledger writer commits (metrics)."""
        self._writer.listeners.append(listener)

    # --- writes -----------------------------------------------------------------------------

    def record(self, *events: Event) -> None:
        """Append events on their own (denials, operator actions)."""
        self._write(Write(events=list(events)))

    def record_issued(
        self, grant: Grant, issued: Event, *, idem: IdemClaim | None = None, guard_subjects: tuple[str, ...] = ()
    ) -> Outcome:
        """The grant row and its `issued` event commit together, or neither does.

        Inside that transaction a freeze of the grant's subject or boundary (or of `guard_subjects`)
        refuses it (promise 8), and so does its parent having ended: the row is kept as
        `revoke_pending` so the minted credential is revoked through the outbox.
        """
        return self._write(Write([issued], grant_values(grant), guard=True, idem=idem, guard_subjects=guard_subjects))

    def submit_issued(
        self, row: dict[str, Any], issued: Event, *, idem: IdemClaim | None = None, guard_subjects: tuple[str, ...] = (),
        limits: Limits | None = None, only_here: bool = False,
    ) -> Future:  # fmt: skip
        """`record_issued` for the event loop: a future of the outcome, awaited without a thread hop.

        `row` is `grant_values(grant)`, taken by the caller before it reaches the event loop. `limits`
        reached refuse it too; with `only_here` (the credential exists nowhere else), by its `denied`
        event alone (issuing.py)."""
        write = Write([issued], row, guard=True, idem=idem, guard_subjects=guard_subjects, limits=limits,
                      only_here=only_here)  # fmt: skip
        return self._writer.submit(write)

    def submit_end(self, end: EndGrant) -> Future:
        """An owner's completion in the writer's next batch, for the event loop: a future of `Ended` or
        `Declined` (issuing.py says which grants a batch ends)."""
        return self._writer.submit(Write([], end=end))

    def _write(self, write: Write) -> Outcome:
        return self._writer.run(write)

    def _apply_batch(self, writes: Sequence[Write]) -> list[Outcome]:
        """The writer thread's batch: committed, then published here."""
        applied = self.apply_writes(writes)
        self.committed(applied)
        return [each.outcome for each in applied]

    def apply_writes(self, writes: Sequence[Write]) -> list[Applied]:
        """One transaction for a batch of writes (a writer thread, or the writer process, calls this);
        failures are LedgerUnavailable. Each write's outcome comes with the rows it chained.

        On a Core connection, not an ORM session, with the append statements compiled (compiled.py).
        """
        try:
            with turn(self.tx.turns), self.engine.begin() as conn:
                head = self.tx.lock(conn)
                batch = IssueBatch(self.tx.clock(), self._frozen_among(conn, writes), self._keys_among(conn, writes),
                                   self._parents_among(conn, writes))  # fmt: skip
                batch.ending, batch.with_children = self._ending_among(conn, writes)
                batch.loads = self._loads_among(conn, writes)
                decided = []
                for write in writes:  # each write's events are one run of the batch's, in order
                    start = len(batch.events)
                    decided.append((batch.decide(write), start, len(batch.events)))
                batch.apply(conn)
                rows = self.tx.append(conn, batch.events, head=head)
                batch.number(rows)
        except SQLAlchemyError as exc:
            raise LedgerUnavailable(f"ledger write failed: {why_failed(exc)}") from exc
        return [Applied(outcome, rows[start:end], batch.frozen_seen) for outcome, start, end in decided]

    def committed(self, applied: Sequence[Applied]) -> None:
        """After writes are durable (a batch, or this process's share of it): their rows to this process's
        feed in one call, the freezes their checks met to the snapshot."""
        self.feed.publish([row for each in applied for row in each.rows])
        self.records.note_freezes(set().union(*(each.frozen_seen for each in applied)))

    def _frozen_among(self, conn: Connection, writes: Sequence[Write]) -> set[tuple[str, str]]:
        """The freezes touching this batch's grants, read after the head lock so a freeze committed
        before this transaction is always seen (the freeze transaction appends, so it takes the lock too)."""
        guarded = [w.grant for w in writes if w.guard and w.grant]
        if not guarded:
            return set()
        pairs = {(g["subject"], g["boundary"]) for g in guarded}  # a batch holds few distinct pairs
        # the other parties a derived grant names (orchestrator, earlier actors): their freeze refuses it too
        pairs |= {(other, w.grant["boundary"]) for w in writes if w.guard and w.grant for other in w.guard_subjects}
        return {
            (kind, value)
            for subject, boundary in pairs
            for kind, value in compiled.fetch(conn, _FROZEN_ONE, {"subject": subject, "boundary": boundary})
        }

    def _parents_among(self, conn: Connection, writes: Sequence[Write]) -> dict[str, tuple[str, float]]:
        """Status and expiry of the parents of this batch's derived grants, read after the head lock (see
        `_lock_cascade`: a revocation that ends a parent holds it too, so its commit is always seen here)."""
        ids = {w.grant["parent_grant_id"] for w in writes if w.grant and w.grant.get("parent_grant_id")}
        if not ids:
            return {}
        query = select(Grant.id, Grant.status, Grant.expires_at).where(Grant.id.in_(ids))
        return {gid: (status, expires) for gid, status, expires in conn.execute(query).all()}

    def _ending_among(self, conn: Connection, writes: Sequence[Write]) -> tuple[dict[str, Any], set[str]]:
        """The rows of the grants this batch's completions name, and which of them have active derived grants."""
        ids = [w.end.grant_id for w in writes if w.end]
        if not ids:
            return {}, set()
        found = conn.execute(select(Grant.__table__).where(Grant.id.in_(ids))).mappings()
        rows = {row["id"]: dict(row) for row in found}
        query = select(Grant.parent_grant_id).where(Grant.parent_grant_id.in_(ids), unindexed(Grant.status) == ACTIVE)
        return rows, set(conn.scalars(query).all())

    def _loads_among(self, conn: Connection, writes: Sequence[Write]) -> dict[tuple[str, str, str], Load]:
        """Each limited subject's load at its boundary, read after the head lock: every issuing transaction
        holds it, so grants committed before this one (by any replica) are counted and none commits meanwhile.
        Counted as of the batch's first grant for that subject (a few milliseconds early at most)."""
        earliest: dict[tuple[str, str, str], tuple[float, float]] = {}
        for w in writes:
            if w.limits is not None and w.grant is not None:
                key, now = load_key(w.grant), w.grant["issued_at"]
                if key not in earliest or now < earliest[key][0]:
                    earliest[key] = (now, w.limits.window)
        return {(subject, attestor, boundary): load_on(conn, subject=subject, attestor=attestor, boundary=boundary,
                                                       now=now, since=now - window)
                for (subject, attestor, boundary), (now, window) in earliest.items()}  # fmt: skip

    def _lock_cascade(self, session: Session) -> None:
        """A revocation ends derived grants too; it takes the chain head's lock (PostgreSQL: SQLite's
        BEGIN IMMEDIATE already serializes) so no derived grant commits between its cascade and its end."""
        if self.tx.lock_head:
            self.tx.lock(session)

    def _derived(self, session: Session, ids: Sequence[str], *, rows: bool = False) -> list[Any]:
        """The active grants derived from these, transitively, locked in id order level by level."""
        found: list[Any] = []
        seen, frontier = set(ids), list(ids)
        while frontier:
            where = (Grant.parent_grant_id.in_(frontier), unindexed(Grant.status) == ACTIVE)
            if rows:
                query = select(Grant.__table__).where(*where).order_by(Grant.id)
                children = [c for c in session.execute(_for_update(query, self.tx.lock_head)).all() if c.id not in seen]
            else:
                query = select(Grant).where(*where).order_by(Grant.id)
                children = [c for c in session.scalars(_for_update(query, self.tx.lock_head)).all() if c.id not in seen]
            seen.update(c.id for c in children)
            found += children
            frontier = [c.id for c in children]
        return found

    def _keys_among(self, conn: Connection, writes: Sequence[Write]) -> dict[str, KeyState]:
        hashes = [w.idem.key_hash for w in writes if w.idem]
        if not hashes:
            return {}
        rows = conn.execute(_KEYS_AMONG, {"hashes": hashes}).all()
        return {
            row.key_hash: KeyState(row.request_fp, row.grant_id, row if row.status is not None else None, existing=True)
            for row in rows
        }

    def begin_revoke(
        self, grant_ids: Sequence[str], *, end_status: str, actor: str, reason: str, revocation_id: str | None = None,
        ends_here: Callable[[Grant], bool] = lambda _: False,
    ) -> list[Grant]:  # fmt: skip
        """Outbox step 1: mark active grants `revoke_pending` with the intended final status.

        Every active grant derived from them (transitively) is moved in the same transaction, to end
        as `revoked` with the reason `parent grant <id> ended`. Returns the grants this call moved;
        grants already ending are left as they are (idempotent).

        `ends_here(grant)`: its revocation calls no backend (the broker's own JWTs, whose status is the
        deny list): step 2 happens in this same transaction, the grant at its final status with its event.
        """
        with self.tx.session() as session:
            moved = self._begin_revoke(session, grant_ids, end_status, actor, reason, revocation_id)
            ended = [grant for grant in moved if ends_here(grant)]
            for grant in ended:
                grant.status, grant.next_attempt_at = grant.end_status or "revoked", None
            self.tx.append(session, [end_event(grant, grant.status, {}) for grant in ended])
            return moved

    def _begin_revoke(
        self, session: Session, grant_ids: Sequence[str], end_status: str, actor: str, reason: str,
        revocation_id: str | None,
    ) -> list[Grant]:  # fmt: skip
        now = self.tx.clock()
        self._lock_cascade(session)
        # lock rows in one order (by id) so two overlapping revocations never deadlock
        query = select(Grant).where(Grant.id.in_(grant_ids), Grant.status == ACTIVE).order_by(Grant.id)
        rows = list(session.scalars(_for_update(query, self.tx.lock_head)).all())
        derived = self._derived(session, [g.id for g in rows])
        asked = {g.id for g in rows}
        for grant in rows + derived:
            ending = end_status if grant.id in asked else "revoked"
            why = reason if grant.id in asked else f"parent grant {grant.parent_grant_id} ended: {reason}"
            grant.status, grant.end_status, grant.end_actor = REVOKE_PENDING, ending, actor
            # the caller executes it now; other replicas' outbox workers wait out this lease first
            grant.end_reason, grant.ended_at, grant.next_attempt_at = why[:256], now, now + OWNER_LEASE
            grant.revocation_id = revocation_id
        return rows + derived

    def finish_revoke(self, grant_id: str, extra: dict[str, Any] | None = None) -> Grant | None:
        """Outbox step 2 succeeded: the grant reaches its final status and the event is chained."""
        with self.tx.session() as session:
            grant = session.get(Grant, grant_id, with_for_update=self.tx.lock_head)
            if grant is None or grant.status != REVOKE_PENDING:
                return None
            grant.status, grant.next_attempt_at = grant.end_status or "revoked", None
            self.tx.append(session, [end_event(grant, grant.status, extra or {})])
            return grant

    def fail_revoke(self, grant_id: str, *, error: str, retry_at: float) -> Grant | None:
        """Outbox step 2 failed: count the attempt, schedule the retry, chain a `revoke_failed` event."""
        with self.tx.session() as session:
            grant = session.get(Grant, grant_id, with_for_update=self.tx.lock_head)
            if grant is None or grant.status != REVOKE_PENDING:
                return None
            grant.revoke_attempts += 1
            grant.next_attempt_at = retry_at
            self.tx.append(session, [_failed_event(grant, error, grant.revoke_attempts, retry_at)])
            return grant

    def begin_revoke_many(
        self, grant_ids: Sequence[str], *, end_status: str, actor: str, reason: str, revocation_id: str | None = None
    ) -> list[Row]:
        """Outbox step 1 for a batch (operator revocations): one SELECT and one UPDATE, no ORM objects.

        Returns the moved grants as rows (id, backend, boundary, handle, revoke_attempts, ...), with the
        grants derived from them (see `begin_revoke`), which end as `revoked`.
        """
        now = self.tx.clock()
        values = {"status": REVOKE_PENDING, "end_status": end_status, "end_actor": actor, "end_reason": reason[:256],
                  "ended_at": now, "next_attempt_at": now + OWNER_LEASE, "revocation_id": revocation_id}  # fmt: skip
        with self.tx.session() as session:
            self._lock_cascade(session)
            rows = session.execute(_for_update(_batch(grant_ids, ACTIVE), self.tx.lock_head)).all()
            session.execute(update(Grant.__table__).where(Grant.id.in_([r.id for r in rows])).values(**values))
            derived = self._derived(session, [r.id for r in rows], rows=True)
            for parent, children in _by_parent(derived).items():
                why = f"parent grant {parent} ended: {reason}"[:256]
                session.execute(update(Grant.__table__).where(Grant.id.in_([c.id for c in children]))
                                .values(**{**values, "end_status": "revoked", "end_reason": why}))  # fmt: skip
            return list(rows) + derived

    def finish_revoke_many(self, grant_ids: Sequence[str], extra: dict[str, Any] | None = None) -> int:
        """Outbox step 2 for a batch: one transaction, one UPDATE, one chained event per grant; returns how many moved."""
        with self.tx.session() as session:
            rows = session.execute(_for_update(_batch(grant_ids, REVOKE_PENDING), self.tx.lock_head)).all()
            final = func.coalesce(Grant.end_status, "revoked")
            session.execute(
                update(Grant.__table__)
                .where(Grant.id.in_([r.id for r in rows]))
                .values(status=final, next_attempt_at=None)
            )
            self.tx.append(session, [end_event(r, r.end_status or "revoked", extra or {}) for r in rows])
            return len(rows)

    def fail_revoke_many(self, errors: dict[str, str], retry_at: float) -> int:
        """Outbox step 2 failed for a batch: count attempts, schedule retries, chain `revoke_failed` events."""
        with self.tx.session() as session:
            rows = session.execute(_for_update(_batch(list(errors), REVOKE_PENDING), self.tx.lock_head)).all()
            session.execute(
                update(Grant.__table__)
                .where(Grant.id.in_([r.id for r in rows]))
                .values(revoke_attempts=Grant.revoke_attempts + 1, next_attempt_at=retry_at)
            )
            self.tx.append(session, [_failed_event(r, errors[r.id], r.revoke_attempts + 1, retry_at) for r in rows])
            return len(rows)

    def claim_due_revocations(self, now: float, limit: int, lease: float) -> list[Grant]:
        """Pending revocations whose retry time has come, pushed `lease` seconds ahead so one worker owns them.

        Most passes find none: that is found on a read, without the write lock, which every worker's pass
        took once a second and held while the ledger writer's next commit, and every grant in it, waited."""
        due = (Grant.status == REVOKE_PENDING) & (Grant.next_attempt_at <= now)
        with self.tx.reading() as conn:
            if conn.execute(select(Grant.id).where(due).limit(1)).first() is None:
                return []
        with self.tx.session() as session:
            query = select(Grant).where(due).order_by(Grant.next_attempt_at).limit(limit)
            if self.tx.lock_head:
                query = query.with_for_update(skip_locked=True)
            rows = list(session.scalars(query).all())
            for grant in rows:
                grant.next_attempt_at = now + lease
            return rows

    def issued_index(self, grant_id: str) -> int | None:
        """The log index (seq - 1) of a grant's `issued` event."""
        with self.tx.session(readonly=True) as session:
            query = select(AuditEvent.seq).where(AuditEvent.grant_id == grant_id, AuditEvent.kind == "issued")
            seq = session.scalar(query.order_by(AuditEvent.seq).limit(1))
            return seq - 1 if seq is not None else None

    def idempotent_grant(self, key_hash: str) -> tuple[str, Grant] | None:
        """The request fingerprint and grant an idempotency key is bound to, if any."""
        with self.tx.session(readonly=True) as session:
            query = select(IdempotencyKey.request_fp, Grant).join(Grant, Grant.id == IdempotencyKey.grant_id)
            row = session.execute(query.where(IdempotencyKey.key_hash == key_hash)).first()
            return (row[0], row[1]) if row else None

    def prune_idempotency_keys(self, now: float) -> int:
        """Forget keys whose grants have expired: a key is only a promise for its grant's lifetime."""
        due = IdempotencyKey.expires_at <= now
        with self.tx.session(readonly=True) as session:  # most passes find nothing: don't take the write lock for that
            if session.scalar(select(IdempotencyKey.key_hash).where(due).limit(1)) is None:
                return 0
        with self.tx.session() as session:
            return session.execute(delete(IdempotencyKey.__table__).where(due)).rowcount

    def expired_active(self, now: float, limit: int) -> list[str]:
        with self.tx.session(readonly=True) as session:
            query = select(Grant.id).where(Grant.status == ACTIVE, Grant.expires_at <= now).limit(limit)
            return list(session.scalars(query).all())

    # --- reads ------------------------------------------------------------------------------

    def get_grant(self, grant_id: str) -> Grant | None:
        """One grant as a detached `Grant` (introspection and completion read one on every call)."""
        with self.tx.reading() as conn:
            row = conn.execute(_ONE_GRANT, {"grant_id": grant_id}).mappings().first()
        return Grant.of_row(row) if row else None

    def grant_status(self, grant_id: str) -> str | None:
        with self.tx.session(readonly=True) as session:
            return session.scalar(select(Grant.status).where(Grant.id == grant_id))

    def task_grants(self, subject: str, task: str) -> list[Grant]:
        with self.tx.session(readonly=True) as session:
            return list(session.scalars(select(Grant).where(Grant.subject == subject, Grant.task == task)).all())

    def grants(self, **filters: Any) -> list[Grant]:
        with self.tx.session(readonly=True) as session:
            query = select(Grant)
            for name, value in filters.items():
                if value is not None:
                    query = query.where(getattr(Grant, name) == value)
            return list(session.scalars(query.order_by(Grant.issued_at)).all())

    def events(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEvent]:
        with self.tx.session(readonly=True) as session:
            query = select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq).limit(limit)
            return list(session.scalars(query).all())

    def verify(self, batch: int = 5000) -> VerifyResult:
        """Walk the whole chain in batches against the head row."""
        with self.tx.session(readonly=True) as session:
            head = session.get(ChainHead, 1)
            head_pair = (head.seq, head.hash) if head else None
            rows = session.execute(
                select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=batch)
            ).scalars()
            return verify_chain((event_dict(r) for r in rows), head_pair)


def _for_update(query, lock: bool):  # noqa: ANN001, ANN202
    return query.with_for_update() if lock else query


def _by_parent(rows: Sequence[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.parent_grant_id, []).append(row)
    return grouped


def _batch(grant_ids: Sequence[str], status: str):  # noqa: ANN202
    # Core rows, not ORM objects (thousands per batch), locked in id order like begin_revoke: no deadlocks
    return select(Grant.__table__).where(Grant.id.in_(grant_ids), unindexed(Grant.status) == status).order_by(Grant.id)


def _failed_event(grant: Grant | Row, error: str, attempt: int, retry_at: float) -> Event:
    return end_event(grant, "revoke_failed", {"error": error[:200], "attempt": attempt, "retry_at": retry_at})


def event_dict(row: AuditEvent) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "id": row.id,
        "ts": row.ts,
        "kind": row.kind,
        "subject": row.subject,
        "boundary": row.boundary,
        "task": row.task,
        "grant_id": row.grant_id,
        "actor": row.actor,
        "detail": row.detail,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }

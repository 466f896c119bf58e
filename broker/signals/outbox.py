"""The signals outbox: SETs written in the same transaction as the ledger event that ends a grant.

`Transactions.append` (broker/ledger/transactions.py) calls `SignalOutbox.on_append` inside its
transaction (it holds the chain head lock, so appends are serialised and each stream's `next_seq`
grows without gaps). A rolled-back end
event leaves no SET; a committed one is never lost, whatever happens to the process afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session

from broker.ledger.models import FINAL_STATUSES, Grant, SignalOutboxRow, SignalStream
from broker.signals.sets import (
    CREDENTIAL_CHANGE,
    SESSION_REVOKED,
    EndedGrant,
    end_claims,
    freeze_claims,
    verification_claims,
)

VERIFY_KIND = "signal_verification"  # the audit event of a receiver's verification request
FREEZE_KIND = "frozen"  # an operator's freeze: a SET even when it ends no grant
LIVE = ("enabled", "paused")  # a paused stream holds its events (SSF 1.0 §8.1.2); a disabled one drops them


class SignalOutbox:
    """Turns chained end events into per-stream outbox rows; reads and acknowledges them for delivery."""

    def __init__(
        self, engine: Engine, issuer: str, clock: Callable[[], float] = time.time, audiences: dict[str, str] | None = None
    ) -> None:
        self.engine = engine
        self.issuer = issuer
        self.clock = clock
        self.audiences = audiences or {}  # boundary → the `aud` of its broker JWTs (named in a freeze's SET)

    def on_append(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        """The append listener: one SET per (stream that wants it, ended grant), in chain order."""
        ends = [r for r in rows if (r["kind"] in FINAL_STATUSES and r["grant_id"]) or r["kind"] in (VERIFY_KIND, FREEZE_KIND)]
        if not ends:
            return  # the issuance path: no query at all
        streams = session.execute(select(SignalStream.__table__).where(SignalStream.status.in_(LIVE))).all()
        if not streams:
            return
        grants = self._grants(session, [r["grant_id"] for r in ends if r["kind"] in FINAL_STATUSES])
        now, out = self.clock(), []
        for stream in streams:
            seq = stream.next_seq
            for row in ends:
                claims = self._claims(stream, row, grants, now)
                if claims is not None:
                    seq += 1
                    out.append({"stream_id": stream.id, "seq": seq, "jti": claims["jti"], "claims": claims, "created_at": now})
            if seq != stream.next_seq:
                session.execute(update(SignalStream.__table__).where(SignalStream.id == stream.id).values(next_seq=seq))
        if out:
            session.execute(insert(SignalOutboxRow.__table__), out)

    def _grants(self, session: Session, ids: list[str]) -> dict[str, Any]:
        if not ids:
            return {}
        query = select(Grant.id, Grant.backend, Grant.expires_at, Grant.ended_at).where(Grant.id.in_(ids))
        return {row.id: row for row in session.execute(query).all()}

    def _claims(self, stream: Any, row: dict[str, Any], grants: dict[str, Any], now: float) -> dict | None:
        if row["kind"] == VERIFY_KIND:
            if row["detail"].get("stream_id") != stream.id:
                return None
            return verification_claims(issuer=self.issuer, audience=stream.audience, stream_id=stream.id,
                                       state=row["detail"].get("state"), now=now, txn=row["id"])  # fmt: skip
        if row["kind"] == FREEZE_KIND:
            return self._freeze(stream, row, now)
        grant = grants.get(row["grant_id"])
        if grant is None or row["boundary"] not in stream.boundaries:
            return None
        wanted = SESSION_REVOKED if grant.backend == "jwt" else CREDENTIAL_CHANGE
        if wanted not in stream.events_requested:
            return None
        ended = EndedGrant(
            grant_id=row["grant_id"], subject=row["subject"] or "", task=row["task"] or "", boundary=row["boundary"],
            backend=grant.backend, status=row["kind"], actor=row["actor"], ended_at=grant.ended_at or now,
            expires_at=grant.expires_at, txn=row["id"],
        )  # fmt: skip
        return end_claims(ended, issuer=self.issuer, audience=stream.audience, now=now)

    def _freeze(self, stream: Any, row: dict[str, Any], now: float) -> dict | None:
        target, value = row["detail"].get("target"), row["detail"].get("value")
        if target not in ("subject", "boundary") or not value or SESSION_REVOKED not in stream.events_requested:
            return None
        if target == "boundary" and value not in stream.boundaries:
            return None  # a subject freeze reaches every stream: the subject may hold grants at any boundary
        return freeze_claims(target=target, value=value, token_audience=self.audiences.get(value), issuer=self.issuer,
                             audience=stream.audience, frozen_at=row.get("ts") or now, now=now, txn=row["id"])  # fmt: skip

    def _write(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _read(self) -> Session:
        # SQLite: a deferred BEGIN, so reads never take the write lock (broker/ledger/store.py make_engine)
        return Session(self.engine.execution_options(sqlite_deferred=True), expire_on_commit=False)

    # --- reading and acknowledging -------------------------------------------------------------

    def pending(self, stream_id: str, limit: int) -> list[SignalOutboxRow]:
        with self._read() as session:
            query = select(SignalOutboxRow).where(SignalOutboxRow.stream_id == stream_id)
            return list(session.scalars(query.order_by(SignalOutboxRow.seq).limit(limit)).all())

    def acknowledge(self, stream_id: str, jtis: Sequence[str]) -> int:
        """Poll (RFC 8936): the receiver has the SETs it acknowledges; forget them."""
        if not jtis:
            return 0
        with self._write() as session, session.begin():
            where = (SignalOutboxRow.stream_id == stream_id) & SignalOutboxRow.jti.in_(list(jtis))
            return session.execute(delete(SignalOutboxRow.__table__).where(where)).rowcount

    def delivered(self, stream_id: str, upto_seq: int, count: int, now: float) -> None:
        """Push (RFC 8935): the receiver accepted every SET up to `upto_seq`; the stream is healthy again."""
        with self._write() as session, session.begin():
            where = (SignalOutboxRow.stream_id == stream_id) & (SignalOutboxRow.seq <= upto_seq)
            session.execute(delete(SignalOutboxRow.__table__).where(where))
            session.execute(update(SignalStream.__table__).where(SignalStream.id == stream_id).values(
                sent=SignalStream.sent + count, attempts=0, next_attempt_at=0.0, last_error=None, last_sent_at=now))

    def failed(self, stream_id: str, error: str, retry_at: float) -> int:
        """A push failed: count it, keep the rows, retry later; returns the consecutive failures."""
        with self._write() as session, session.begin():
            session.execute(update(SignalStream.__table__).where(SignalStream.id == stream_id).values(
                failed=SignalStream.failed + 1, attempts=SignalStream.attempts + 1, next_attempt_at=retry_at,
                last_error=error[:200]))  # fmt: skip
            return session.scalar(select(SignalStream.attempts).where(SignalStream.id == stream_id)) or 0

    def claim_push_streams(self, now: float, lease: float) -> list[SignalStream]:
        """Enabled push streams with SETs due, each leased to this process so one replica pushes it, in order."""
        with self._read() as session:
            has_rows = select(SignalOutboxRow.stream_id).where(SignalOutboxRow.stream_id == SignalStream.id).exists()
            query = select(SignalStream).where(
                SignalStream.status == "enabled", SignalStream.method == "urn:ietf:rfc:8935",
                SignalStream.next_attempt_at <= now, SignalStream.lease_until <= now, has_rows,
            )  # fmt: skip
            candidates = list(session.scalars(query).all())
        claimed = []
        for stream in candidates:
            with self._write() as session, session.begin():
                where = (SignalStream.id == stream.id) & (SignalStream.lease_until <= now)
                if session.execute(update(SignalStream.__table__).where(where).values(lease_until=now + lease)).rowcount:
                    claimed.append(stream)
        return claimed

    def release(self, stream_id: str) -> None:
        with self._write() as session, session.begin():
            session.execute(update(SignalStream.__table__).where(SignalStream.id == stream_id).values(lease_until=0.0))

    def lag(self) -> list[dict[str, Any]]:
        """Per stream: SETs waiting, age of the oldest, sent/failed counts, last error (metrics and CLI)."""
        with self._read() as session:
            waiting = (
                select(SignalOutboxRow.stream_id, func.count().label("n"), func.min(SignalOutboxRow.created_at).label("oldest"))
                .group_by(SignalOutboxRow.stream_id).subquery()
            )  # fmt: skip
            query = select(SignalStream, waiting.c.n, waiting.c.oldest).join(
                waiting, waiting.c.stream_id == SignalStream.id, isouter=True).order_by(SignalStream.created_at)
            now = self.clock()
            return [
                {"stream_id": s.id, "owner": s.owner, "audience": s.audience, "method": s.method, "status": s.status,
                 "pending": n or 0, "oldest_age": round(now - oldest, 3) if oldest else 0.0, "sent": s.sent,
                 "failed": s.failed, "attempts": s.attempts, "last_error": s.last_error}  # fmt: skip
                for s, n, oldest in session.execute(query).all()
            ]

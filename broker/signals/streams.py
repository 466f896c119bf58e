"""Stream management (SSF 1.0 §8.1): a signal receiver creates, reads, updates and deletes only its own streams.

A stream names its audience (the `aud` of every SET on it, unique across receivers), the boundaries
it wants events for, the events it wants, and push (RFC 8935, the receiver's endpoint) or poll
(RFC 8936, the broker's endpoint). Another receiver's stream is "not found", never "forbidden".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.errors import BadRequest, NotFound
from broker.ledger.models import SignalOutboxRow, SignalStream
from broker.signals.sets import EVENTS_SUPPORTED, POLL, PUSH, VERIFICATION

MAX_STREAMS_PER_RECEIVER = 10  # each stream multiplies every end event: bounded per receiver
STATUSES = ("enabled", "paused", "disabled")


class StreamRegistry:
    """SQL and rules of streams; the owner is the authenticated receiver's subject."""

    def __init__(self, engine: Engine, *, issuer: str, boundaries: Collection[str], allow_http: bool = False,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.engine, self.issuer, self.boundaries = engine, issuer, frozenset(boundaries)
        self.allow_http, self.clock = allow_http, clock

    def create(self, owner: str, attestor: str, spec: dict[str, Any]) -> dict[str, Any]:
        stream_id = uuid.uuid4().hex
        method, endpoint = self._delivery(spec.get("delivery") or {}, stream_id)
        row = SignalStream(
            id=stream_id, owner=owner, owner_attestor=attestor,
            audience=spec.get("aud") or f"urn:broker:ssf:stream:{stream_id}",
            boundaries=self._boundaries(spec.get("boundaries")), events_requested=self._events(spec.get("events_requested")),
            method=method, endpoint_url=endpoint, description=spec.get("description"), created_at=self.clock(),
        )  # fmt: skip
        with self._write() as session, session.begin():
            count = session.scalar(select(func.count()).select_from(SignalStream).where(SignalStream.owner == owner))
            if count >= MAX_STREAMS_PER_RECEIVER:
                raise BadRequest(f"at most {MAX_STREAMS_PER_RECEIVER} streams per receiver")
            session.add(row)
            try:
                session.flush()
            except IntegrityError:
                raise BadRequest("this aud is taken by another stream") from None
        return self.describe(row)

    def get(self, owner: str, stream_id: str) -> SignalStream:
        with self._read() as session:
            row = session.get(SignalStream, stream_id)
        if row is None or row.owner != owner:
            raise NotFound("no such stream")
        return row

    def list(self, owner: str) -> list[dict[str, Any]]:
        with self._read() as session:
            rows = session.scalars(select(SignalStream).where(SignalStream.owner == owner).order_by(SignalStream.created_at))
            return [self.describe(r) for r in rows]

    def update(self, owner: str, stream_id: str, spec: dict[str, Any], *, replace: bool) -> dict[str, Any]:
        """PATCH changes the fields given; PUT replaces every receiver-supplied field (`aud` stays: SETs name it)."""
        with self._write() as session, session.begin():
            row = session.get(SignalStream, stream_id, with_for_update=True)
            if row is None or row.owner != owner:
                raise NotFound("no such stream")
            if spec.get("aud") not in (None, row.audience):
                raise BadRequest("a stream's aud cannot change")
            if replace or "delivery" in spec:
                row.method, row.endpoint_url = self._delivery(spec.get("delivery") or {}, stream_id)
            if replace or "boundaries" in spec:
                row.boundaries = self._boundaries(spec.get("boundaries"))
            if replace or "events_requested" in spec:
                row.events_requested = self._events(spec.get("events_requested"))
            if replace or "description" in spec:
                row.description = spec.get("description")
            return self.describe(row)

    def delete(self, owner: str, stream_id: str) -> None:
        with self._write() as session, session.begin():
            row = session.get(SignalStream, stream_id, with_for_update=True)
            if row is None or row.owner != owner:
                raise NotFound("no such stream")
            session.execute(delete(SignalOutboxRow.__table__).where(SignalOutboxRow.stream_id == stream_id))
            session.delete(row)

    def set_status(self, owner: str, stream_id: str, status: str, reason: str | None) -> dict[str, Any]:
        if status not in STATUSES:
            raise BadRequest("status is enabled, paused or disabled")
        with self._write() as session, session.begin():
            row = session.get(SignalStream, stream_id, with_for_update=True)
            if row is None or row.owner != owner:
                raise NotFound("no such stream")
            row.status, row.status_reason = status, reason
            if status == "disabled":  # SSF 1.0 §8.1.2.1: a disabled stream's events are not kept
                session.execute(delete(SignalOutboxRow.__table__).where(SignalOutboxRow.stream_id == stream_id))
            return {"stream_id": row.id, "status": row.status, **({"reason": reason} if reason else {})}

    def describe(self, row: SignalStream) -> dict[str, Any]:
        """The stream configuration as SSF 1.0 §8.1.1 spells it, plus its boundaries."""
        delivery: dict[str, Any] = {"method": row.method}
        if row.endpoint_url:
            delivery["endpoint_url"] = row.endpoint_url
        return {
            "stream_id": row.id, "iss": self.issuer, "aud": row.audience, "delivery": delivery,
            "events_supported": list(EVENTS_SUPPORTED), "events_requested": list(row.events_requested),
            "events_delivered": [e for e in row.events_requested if e in EVENTS_SUPPORTED],
            "boundaries": list(row.boundaries), "description": row.description, "min_verification_interval": 1,
        }  # fmt: skip

    def poll_url(self, stream_id: str) -> str:
        return f"{self.issuer.rstrip('/')}/ssf/poll/{stream_id}"

    def _write(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _read(self) -> Session:
        # SQLite: a deferred BEGIN, so reads never take the write lock (broker/ledger/store.py make_engine)
        return Session(self.engine.execution_options(sqlite_deferred=True), expire_on_commit=False)

    # --- validation ---------------------------------------------------------------------------

    def _delivery(self, delivery: dict[str, Any], stream_id: str) -> tuple[str, str | None]:
        method = delivery.get("method", PUSH)
        if method == POLL:
            return POLL, self.poll_url(stream_id)  # the transmitter names the poll endpoint
        if method != PUSH:
            raise BadRequest(f"delivery method is {PUSH} or {POLL}")
        url = delivery.get("endpoint_url")
        parts = urlsplit(url) if isinstance(url, str) else None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts is None or parts.scheme not in schemes or not parts.hostname or parts.username or parts.fragment:
            raise BadRequest("push delivery needs an https endpoint_url" + (" (or http)" if self.allow_http else ""))
        return PUSH, url

    def _boundaries(self, names: Any) -> list[str]:
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise BadRequest("boundaries: a non-empty list of boundary names")
        unknown = sorted(set(names) - self.boundaries)
        if unknown:
            raise BadRequest(f"unknown boundary {unknown[0]!r}")
        return sorted(set(names))

    def _events(self, events: Any) -> list[str]:
        if events is None:
            return list(EVENTS_SUPPORTED)
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise BadRequest("events_requested: a list of event type URIs")
        # unsupported ones are simply not delivered (SSF 1.0: events_delivered is the intersection)
        return sorted(set(events) | {VERIFICATION})

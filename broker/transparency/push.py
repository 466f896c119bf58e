"""Pushing checkpoints to witnesses (C2SP tlog-witness add-checkpoint): retried, recorded, alarmed.

Each witness's state (the size it last cosigned, attempts, its last refusal) is a `log_witnesses`
row, so retries survive restarts and every replica sees the same picture. A 409 whose size we can
prove consistency from is ordinary catching up; any other 409, or a 422, means the witness saw a
history this log no longer extends: an error line, the rejection counter, and /readyz detail.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from broker.ledger.models import LogWitness
from broker.transparency.checkpoint import CosignatureVerifier
from broker.transparency.checkpoints import Checkpointer, Signed
from broker.transparency.log import LogReader
from broker.transparency.note import NoteError, parse

log = logging.getLogger(__name__)
TIMEOUT = 5.0
MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class WitnessTarget:
    """A configured witness: where its add-checkpoint lives and its cosignature key."""

    url: str
    key: CosignatureVerifier


class WitnessPusher:
    """The worker job that brings every configured witness up to the newest checkpoint."""

    def __init__(self, engine: Engine, reader: LogReader, checkpoints: Checkpointer, witnesses: list[WitnessTarget],
                 on_reject: Callable[[str, int], None] = lambda name, status: None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reader, self._checkpoints, self.witnesses = reader, checkpoints, witnesses
        self.on_reject, self._clock = on_reject, clock
        self._http = httpx.Client(timeout=TIMEOUT, follow_redirects=False)

    def run(self) -> None:
        latest = self._checkpoints.latest() if self.witnesses else None
        for target in self.witnesses if latest else []:
            self._push(target, latest)

    def status(self) -> dict[str, str]:
        """Per witness: ok, pending, or why it refused (for /readyz)."""
        with self._sessions() as session:
            rows = {r.url: r for r in session.scalars(select(LogWitness))}
        return {t.key.name: _describe(rows.get(t.url)) for t in self.witnesses}

    def _push(self, target: WitnessTarget, latest: Signed) -> None:
        state = self._state(target.url)
        if (state.size == latest.size and target.key.name in latest.cosignatures) or self._clock() < state.next_attempt_at:
            return
        old = state.size
        for _ in range(2):  # a second try only after learning the witness's size from a 409
            try:
                answer = self._http.post(f"{target.url.rstrip('/')}/add-checkpoint", content=self._body(old, latest))
            except httpx.HTTPError as exc:
                return self._retry(target, state, None, f"unreachable: {type(exc).__name__}")
            if answer.status_code == 200:
                return self._cosigned(target, state, latest, answer.text)
            if answer.status_code == 409 and old != (learned := _size(answer.text)) and 0 <= learned <= latest.size:
                old = learned
                continue
            break
        if answer.status_code in (409, 422, 400, 403, 404):
            return self._rejected(target, state, latest, answer.status_code, answer.text)
        return self._retry(target, state, answer.status_code, f"HTTP {answer.status_code}")

    def _body(self, old: int, latest: Signed) -> bytes:
        proof = self._reader.consistency(old, latest.size) if 0 < old <= latest.size else []
        lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
        return ("\n".join(lines) + "\n\n" + latest.note).encode()

    def _cosigned(self, target: WitnessTarget, state: LogWitness, latest: Signed, text: str) -> None:
        body = latest.note.split("\n\n", 1)[0] + "\n"
        try:
            _, sigs = parse(latest.note + text)
        except NoteError:
            sigs = []
        good = [s for s in sigs if target.key.verify(body, s)]
        if not good:
            return self._retry(target, state, 200, "the witness answered without a valid cosignature")
        self._checkpoints.add_cosignature(latest.size, good[0])
        self._save(state, size=latest.size, attempts=0, next_attempt_at=0.0, last_status=200, last_error=None)

    def _rejected(self, target: WitnessTarget, state: LogWitness, latest: Signed, status: int, text: str) -> None:
        log.error("witness %s refused checkpoint %d: HTTP %d %s: the log may have been rewritten or truncated",
                  target.key.name, latest.size, status, text.strip()[:100])  # fmt: skip
        self.on_reject(target.key.name, status)
        self._retry(target, state, status, f"refused checkpoint {latest.size}: HTTP {status} {text.strip()[:100]}")

    def _retry(self, target: WitnessTarget, state: LogWitness, status: int | None, error: str) -> None:
        attempts = state.attempts + 1
        delay = min(MAX_BACKOFF, 2.0 ** min(attempts, 6))
        if status is None or status >= 500:
            log.warning("witness %s: %s (attempt %d)", target.key.name, error, attempts)
        self._save(state, attempts=attempts, next_attempt_at=self._clock() + delay, last_status=status, last_error=error[:256])

    def _state(self, url: str) -> LogWitness:
        with self._sessions() as session, session.begin():
            row = session.get(LogWitness, url)
            if row is None:
                row = LogWitness(url=url)
                session.add(row)
            return row

    def _save(self, state: LogWitness, **values: object) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(LogWitness, state.url)
            for name, value in values.items():
                setattr(row, name, value)


def _size(text: str) -> int:
    value = text.strip()
    return int(value) if value.isdigit() else -1


def _describe(row: LogWitness | None) -> str:
    if row is None or row.last_status is None and not row.last_error:
        return "pending"
    return "ok" if row.last_status == 200 else (row.last_error or f"HTTP {row.last_status}")

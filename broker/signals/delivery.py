"""Push delivery (RFC 8935): each stream's SETs in order, retried with backoff, surviving restarts.

The outbox rows are the queue, so a restart resumes where the last acknowledged SET left off. A
pass is started by the worker's schedule (retries, other replicas' events) and at once after a
commit that ended a grant (`wake`), so a receiver hears of a revocation within milliseconds.
The ledger gets `signal_sent` per delivered batch and `signal_failed` when a stream starts failing
(with the number of SETs waiting), not a row per retry; the recovery's `signal_sent` says how many
attempts failed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from broker.ledger.models import FINAL_STATUSES, Event
from broker.signals.outbox import FREEZE_KIND, VERIFY_KIND, SignalOutbox
from broker.signals.sets import sign_set

log = logging.getLogger(__name__)
BATCH = 200
LEASE = 30.0


class Delivery:
    """Pushes due streams; one pass at a time per process, one process per stream (a lease in the database)."""

    def __init__(
        self, outbox: SignalOutbox, keys: Any, record: Callable[[Event], None], *, http: httpx.Client | None = None,
        max_delay: float = 60.0, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.outbox, self.keys, self.record = outbox, keys, record
        self.http = http or httpx.Client(timeout=5.0, follow_redirects=False)
        self.max_delay, self.clock = max_delay, clock
        self._pass = threading.Lock()
        self._starting = threading.Lock()  # a wake on a committing thread against close() on shutdown
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_commit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Ledger feed subscriber: a committed end event (a freeze, a verification request) starts a pass now."""
        if any(r["kind"] in FINAL_STATUSES or r["kind"] in (VERIFY_KIND, FREEZE_KIND) for r in rows):
            self.wake()

    def wake(self) -> None:
        if self._thread is None:
            with self._starting:
                if self._thread is None and not self._stop.is_set():
                    thread = threading.Thread(target=self._loop, name="broker-signals", daemon=True)
                    thread.start()
                    self._thread = thread  # published started, so close() never joins an unstarted thread
        self._wake.set()

    def close(self) -> None:
        with self._starting:
            self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if not self._stop.is_set():
                self.run_once()

    def run_once(self) -> int:
        """One pass over every due push stream; returns how many SETs were delivered."""
        with self._pass:
            delivered = 0
            for stream in self.outbox.claim_push_streams(self.clock(), LEASE):
                try:
                    delivered += self._push(stream)
                finally:
                    self.outbox.release(stream.id)
            return delivered

    def _push(self, stream: Any) -> int:
        total, previous_failures = 0, stream.attempts
        while True:
            rows = self.outbox.pending(stream.id, BATCH)
            if not rows:
                return total
            done, error = self._send(stream.endpoint_url, rows)
            if done:
                self.outbox.delivered(stream.id, rows[done - 1].seq, done, self.clock())
                total += done
                detail = {"stream_id": stream.id, "count": done, "last_seq": rows[done - 1].seq}
                if previous_failures:
                    detail["failed_attempts"] = previous_failures
                self.record(Event(kind="signal_sent", actor=stream.owner, detail=detail))
                previous_failures = 0
            if error is not None:
                self._failed(stream, error, len(rows) - done)
                return total

    def _send(self, url: str, rows: Sequence[Any]) -> tuple[int, str | None]:
        """POST each SET in order; stop at the first refusal (order per stream beats throughput)."""
        for index, row in enumerate(rows):
            try:
                answer = self.http.post(url, content=sign_set(self.keys, row.claims),
                                        headers={"Content-Type": "application/secevent+jwt", "Accept": "application/json"})
            except httpx.HTTPError as exc:
                return index, f"unreachable: {type(exc).__name__}"
            if answer.status_code not in (200, 202, 204):
                return index, f"HTTP {answer.status_code}{_err(answer)}"
        return len(rows), None

    def _failed(self, stream: Any, error: str, waiting: int) -> None:
        attempts = stream.attempts + 1
        retry_at = self.clock() + min(self.max_delay, 0.25 * 2 ** min(attempts, 16))
        attempts = self.outbox.failed(stream.id, error, retry_at)
        log.warning("signal push to stream %s failed (%s); retry %d", stream.id, error, attempts)
        if attempts == 1:  # the stream starts failing: one row now, the count of failures comes with recovery
            self.record(Event(kind="signal_failed", actor=stream.owner,
                              detail={"stream_id": stream.id, "error": error, "waiting": waiting}))  # fmt: skip


def _err(answer: httpx.Response) -> str:
    """RFC 8935 §2.3: a refusing receiver names an `err` code; keep only that short token."""
    try:
        err = answer.json().get("err")
    except ValueError:
        return ""
    return f" {err}" if isinstance(err, str) and err.isidentifier() and len(err) <= 40 else ""

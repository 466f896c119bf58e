"""The transmitter's parts, built once in broker/app.py: streams, outbox, push delivery and the poll wake-up."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.signals.delivery import Delivery
from broker.signals.outbox import SignalOutbox
from broker.signals.streams import StreamRegistry


class Changes:
    """Long polls (RFC 8936 `returnImmediately: false`) wait here for the next committed batch of SETs."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def notify(self, _rows: Sequence[dict[str, Any]] = ()) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, since: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._generation != since, timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation


@dataclass
class Transmitter:
    registry: StreamRegistry
    outbox: SignalOutbox
    delivery: Delivery
    changes: Changes = field(default_factory=Changes)

    def on_commit(self, rows: Sequence[dict[str, Any]]) -> None:
        self.delivery.on_commit(rows)
        self.changes.notify()

    def install_metrics(self, registry: Any) -> None:
        """Per-stream lag and delivery counts on `/metrics`, read from the outbox at scrape time."""
        registry.register(_StreamCollector(self.outbox))


class _StreamCollector:
    def __init__(self, outbox: SignalOutbox) -> None:
        self.outbox = outbox

    def describe(self) -> list:
        return []

    def collect(self):  # noqa: ANN201
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pending = GaugeMetricFamily("broker_signal_stream_pending", "SETs waiting for the stream.", labels=["stream"])
        oldest = GaugeMetricFamily("broker_signal_stream_lag_seconds", "Age of the oldest SET waiting.", labels=["stream"])
        failing = GaugeMetricFamily("broker_signal_stream_failing", "Consecutive failed pushes.", labels=["stream"])
        sent = CounterMetricFamily("broker_signal_sets_sent", "SETs delivered by push.", labels=["stream"])
        failed = CounterMetricFamily("broker_signal_push_failures", "Failed push attempts.", labels=["stream"])
        error = GaugeMetricFamily("broker_signal_stream_last_error", "1 with the stream's last push error (the broker's own words).",
                                  labels=["stream", "error"])  # fmt: skip
        try:
            rows = self.outbox.lag()
        except Exception:  # noqa: BLE001 (a scrape never fails because the ledger is down)
            rows = []
        for row in rows:
            sid = row["stream_id"]
            pending.add_metric([sid], row["pending"])
            oldest.add_metric([sid], row["oldest_age"])
            failing.add_metric([sid], row["attempts"])
            sent.add_metric([sid], row["sent"])
            failed.add_metric([sid], row["failed"])
            if row["last_error"]:
                error.add_metric([sid, row["last_error"]], 1)
        yield from (pending, oldest, failing, sent, failed, error)


def signal_outbox(settings: Any, ledger: Any, clock: Any) -> SignalOutbox:
    """The outbox, written inside each appending transaction of `ledger` (a worker's, the writer process's)."""
    outbox = SignalOutbox(ledger.engine, settings.issuer, clock, {b.name: b.jwt_audience for b in settings.boundaries})
    ledger.append_listeners.append(outbox.on_append)
    return outbox


def build_transmitter(settings: Any, ledger: Any, keys: Any, clock: Any) -> Transmitter:
    """Wire the outbox into the ledger (inside each appending transaction) and delivery after each commit."""
    outbox = signal_outbox(settings, ledger, clock)
    registry = StreamRegistry(ledger.engine, issuer=settings.issuer, boundaries=[b.name for b in settings.boundaries],
                              allow_http=settings.signal_push_allow_http, clock=clock)  # fmt: skip
    delivery = Delivery(outbox, keys, ledger.record, max_delay=float(settings.revoke_retry_max_delay), clock=clock)
    transmitter = Transmitter(registry, outbox, delivery)
    ledger.feed.subscribe(transmitter.on_commit)
    return transmitter

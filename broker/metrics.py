"""Prometheus metrics on a per-app registry, counted from committed ledger events, served on `/metrics`.

Labels take only values the broker chose: configured boundary names ("-" for none of them), route
templates, stable codes. Nothing a caller sends becomes a label, so a caller cannot grow memory.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from importlib import metadata
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.ledger import LedgerStore

ISSUE_PATHS = frozenset({("POST", "/v1/grants"), ("POST", "/oauth/token")})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
GRANT_ACTIONS = frozenset({"issue", "token_exchange"})  # the denials that are grant decisions


class Metrics:
    """Counters of grant decisions by boundary, the pending-revocation gauge, latencies, Vault errors."""

    def __init__(
        self,
        ledger: LedgerStore,
        boundaries: Collection[str],
        vault: Any = None,
        *,
        readiness: Any = None,
        policy: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._boundaries = frozenset(boundaries)  # a label per requested name would let callers grow memory
        disable_created_metrics()  # `_created` series double every counter and histogram, for no dashboard's use
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = {
            kind: Counter(f"broker_grants_{kind}", f"Grants {kind}, by boundary.", ["boundary"], registry=self.registry)
            for kind in ("issued", "completed", "revoked", "expired")
        }
        self.denied = Counter("broker_grants_denied", "Grant requests denied, by boundary and code.",
                              ["boundary", "code"], registry=self.registry)
        self.vault_errors = Counter("broker_vault_errors", "Vault/OpenBao calls that failed, by operation.",
                                    ["operation"], registry=self.registry)
        self.witness_rejections = Counter("broker_log_witness_rejections", "Checkpoints a witness refused (409/422).",
                                          ["witness", "status"], registry=self.registry)
        self.http_requests = Counter("broker_http_requests", "HTTP requests, by method, route template and status.",
                                     ["method", "route", "status"], registry=self.registry)
        self.http_seconds = Histogram("broker_http_request_duration_seconds", "HTTP request duration, by route.",
                                      ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ledger_write_seconds = Histogram("broker_ledger_write_seconds", "One ledger writer commit (a batch).",
                                              buckets=WRITE_BUCKETS, registry=self.registry)
        ledger.on_write(lambda seconds, _writes: self.ledger_write_seconds.observe(seconds))
        Gauge("broker_build_info", "The broker's version (always 1).", ["version", "python"],
              registry=self.registry).labels(_version(), platform.python_version()).set(1)
        self.registry.register(_StateCollector(ledger, readiness, policy, clock))
        self.revocation_seconds = Histogram("broker_revocation_seconds", "Operator revocation, request to all revoked.",
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.issuance_seconds = Histogram("broker_issuance_seconds", "Grant issuance latency (HTTP, successful).",
                                          buckets=LATENCY_BUCKETS, registry=self.registry)
        ledger.feed.subscribe(self.count)
        if vault is not None:
            self._watch_vault(vault)

    def _watch_vault(self, vault: Any) -> None:
        """The broker's own Vault login: 1 while its token works, and why each failure happened."""
        failures = Counter("broker_vault_auth_failures", "The broker's own Vault login or token failed, by reason.",
                           ["reason"], registry=self.registry)
        up = Gauge("broker_vault_auth_ok", "1 while the broker's own Vault token works, 0 while auth fails.",
                   registry=self.registry)
        up.set_function(lambda: 0.0 if vault.auth_error else 1.0)
        vault.listeners.append(lambda reason: failures.labels(reason).inc())

    def watch_withdrawal(self, withdrawal: Any) -> None:
        """Grants a reloaded policy no longer allows: still live (on_withdraw: report), and how many were acted on."""
        live = Gauge("broker_policy_withdrawn_grants", "Live grants the current policy no longer allows (report mode).",
                     registry=self.registry)
        live.set_function(lambda: len(withdrawal.reported))
        acted = Counter("broker_policy_withdrawals", "Grants a policy reload withdrew, by action (revoked, reported).",
                        ["action"], registry=self.registry)
        withdrawal.listeners.append(lambda action, count: acted.labels(action).inc(count))

    def count(self, events: Sequence[dict[str, Any]]) -> None:
        """Count committed decisions (the ledger feed calls this after each commit)."""
        for row in events:
            kind, detail = row["kind"], row["detail"]
            boundary = row["boundary"] if row["boundary"] in self._boundaries else "-"
            if kind in self.outcomes:
                self.outcomes[kind].labels(boundary).inc()
            elif kind == "denied" and detail.get("action") in GRANT_ACTIONS:
                code = str(detail.get("code", "unknown"))
                self.denied.labels(boundary, code).inc()
                if code == "backend_unavailable":
                    self.vault_errors.labels("mint").inc()
            elif kind == "revoke_failed" and str(detail.get("backend", "")).startswith("vault"):
                self.vault_errors.labels("revoke").inc()

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """One served request (broker/api/access.py), by route template; a successful issuance is also timed."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)
        if status in (200, 201) and (method, route) in ISSUE_PATHS:
            self.issuance_seconds.observe(seconds)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _StateCollector(Collector):
    """Read at scrape time: the outbox, the readiness snapshot, the policy in force."""

    def __init__(self, ledger: LedgerStore, readiness: Any, policy: Any, clock: Callable[[], float]) -> None:
        self._ledger, self._readiness, self._policy, self._clock = ledger, readiness, policy, clock

    def collect(self) -> Iterator[Metric]:
        count, oldest = self._ledger.queries.outbox_state()
        yield GaugeMetricFamily("broker_revocations_pending", "Grants waiting in the revocation outbox.", value=count)
        yield GaugeMetricFamily("broker_revocations_oldest_pending_age_seconds",
                                "Age of the oldest revocation waiting in the outbox (0 when none).",
                                value=max(0.0, self._clock() - oldest) if oldest is not None else 0.0)  # fmt: skip
        if self._readiness is not None:
            yield from self._ready()
        if self._policy is not None:
            yield from self._policy_state()

    def _ready(self) -> Iterator[Metric]:
        ready = self._readiness
        yield GaugeMetricFamily("broker_ready", "1 while the ledger takes writes and a signing key is active.",
                                value=1.0 if ready.ready() else 0.0)
        checks = GaugeMetricFamily("broker_readiness_check_ok", "1 while a readiness check passes.", labels=["check"])
        for name, result in sorted(ready.results().items()):
            checks.add_metric([name], 1.0 if result.ok else 0.0)
        yield checks
        degraded = GaugeMetricFamily("broker_boundary_degraded", "1 while the backend of a boundary fails its check.",
                                     labels=["boundary"])
        down = set(ready.degraded())
        for boundary in ready.boundary_names():
            degraded.add_metric([boundary], 1.0 if boundary in down else 0.0)
        yield degraded

    def _policy_state(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("broker_policy_info", "The policy in force, by digest (always 1).", labels=["digest"])
        info.add_metric([self._policy.current.digest], 1.0)
        yield info
        yield CounterMetricFamily("broker_policy_reload_failures", "Policy edits refused (the old policy kept).",
                                  value=self._policy.reload_failures)
        yield GaugeMetricFamily("broker_policy_reload_ok", "0 while the newest policy edit is refused, else 1.",
                                value=0.0 if self._policy.reload_error else 1.0)


def _version() -> str:
    try:
        return metadata.version("broker")
    except metadata.PackageNotFoundError:
        return "unknown"


def install(app: FastAPI, metrics: Metrics) -> None:
    """Serve `/metrics` (the access log middleware, broker/api/access.py, feeds the request metrics)."""

    @app.get("/metrics", include_in_schema=False)
    def metrics_route() -> Response:
        return metrics.render()


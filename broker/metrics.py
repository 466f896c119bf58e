"""Prometheus metrics on a per-app registry, counted from committed ledger events, served on `/metrics`."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from broker.ledger import LedgerStore

ISSUE_PATHS = frozenset({("POST", "/v1/grants"), ("POST", "/oauth/token")})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters of grant decisions by boundary, the pending-revocation gauge, latencies, Vault errors."""

    def __init__(self, ledger: LedgerStore, boundaries: Collection[str], vault: Any = None) -> None:
        self._boundaries = frozenset(boundaries)  # a label per requested name would let callers grow memory
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = {
            kind: Counter(f"broker_grants_{kind}", f"Grants {kind}, by boundary.", ["boundary"], registry=self.registry)
            for kind in ("issued", "completed", "revoked", "expired")
        }
        self.denied = Counter("broker_grants_denied", "Requests denied, by boundary and code.", ["boundary", "code"],
                              registry=self.registry)
        self.vault_errors = Counter("broker_vault_errors", "Vault/OpenBao calls that failed, by operation.",
                                    ["operation"], registry=self.registry)
        self.witness_rejections = Counter("broker_log_witness_rejections", "Checkpoints a witness refused (409/422).",
                                          ["witness", "status"], registry=self.registry)
        self.pending = Gauge("broker_revocations_pending", "Grants waiting in the revocation outbox.",
                             registry=self.registry)
        self.pending.set_function(ledger.pending_total)
        self.revocation_seconds = Histogram("broker_revocation_seconds", "Operator revocation, request to all revoked.",
                                            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.issuance_seconds = Histogram("broker_issuance_seconds", "Grant issuance latency (HTTP, successful).",
                                          buckets=LATENCY_BUCKETS, registry=self.registry)
        ledger.subscribe(self.count)
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
            elif kind == "denied":
                code = str(detail.get("code", "unknown"))
                self.denied.labels(boundary, code).inc()
                if code == "backend_unavailable":
                    self.vault_errors.labels("mint").inc()
            elif kind == "revoke_failed" and str(detail.get("backend", "")).startswith("vault"):
                self.vault_errors.labels("revoke").inc()

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, metrics: Metrics) -> None:
    """Serve `/metrics` and time successful issuance requests."""

    @app.get("/metrics", include_in_schema=False)
    def metrics_route() -> Response:
        return metrics.render()

    app.add_middleware(IssuanceTimer, histogram=metrics.issuance_seconds)


class IssuanceTimer:
    """Pure ASGI middleware (no per-request task or body copy): times successful issuance responses."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in ISSUE_PATHS:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status in (200, 201):
            self.histogram.observe(time.perf_counter() - started)

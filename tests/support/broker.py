"""A broker for tests: real issuers, a real SQLite ledger in a temp dir, the app through HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from broker.app import Components, build, create_app
from broker.config import Settings, load_settings
from tests.support.issuer import TestIssuer

BROKER_ISSUER = "http://broker.test"
BOUNDARIES: list[dict[str, Any]] = [
    {"name": "orders", "backend": "jwt", "scopes": ["read", "write", "admin"], "max_ttl": "15m"},
    {"name": "payments", "backend": "jwt", "scopes": ["read", "write"], "max_ttl": "10m"},
]
POLICY: dict[str, Any] = {
    "rules": [
        {
            "name": "payments-workers",
            "match": {"attestor": "k8s", "subject": "system:serviceaccount:payments:*"},
            "allow": [
                {"boundary": "orders", "scopes": ["read", "write"], "max_ttl": "10m"},
                {"boundary": "payments", "scopes": ["read", "write"], "max_ttl": "5m"},
            ],
        },
        {
            "name": "api-ci",
            "match": {"attestor": "gha", "subject": "repo:acme/api:ref:refs/heads/main"},
            "allow": [{"boundary": "orders", "scopes": ["read"], "max_ttl": "5m"}],
        },
        {
            "name": "spiffe-worker",
            "match": {"attestor": "spiffe", "subject": "spiffe://acme.internal/ns/payments/sa/worker"},
            "allow": [{"boundary": "orders", "scopes": ["read"], "max_ttl": "5m"}],
        },
        {
            "name": "oidc-agent",
            "match": {"attestor": "oidc", "subject": "agent-7"},
            "allow": [{"boundary": "payments", "scopes": ["read"], "max_ttl": "2m"}],
        },
        {"name": "operators", "match": {"attestor": "oidc", "subject": "ops-*"}, "roles": ["operator"]},
        {
            "name": "resource-servers",
            "match": {"attestor": "k8s", "subject": "system:serviceaccount:payments:resource"},
            "roles": ["resource_server"],
        },
    ]
}

# resource servers with a Shared Signals stream (tests/signals, the SDK guide's resource server)
RECEIVERS: dict[str, Any] = {"name": "signal-receivers", "match": {"attestor": "oidc", "subject": "receiver-*"},
                             "roles": ["signal_receiver"]}  # fmt: skip

# Abuse limits stay on (their queries run on every issuance) but far above what any test issues for
# one subject; tests/security/test_abuse_limits.py sets its own.
LOAD_TEST_LIMITS: dict[str, Any] = {
    "limits": {"max_active_grants": 100_000, "issue_rate": 100_000},
    "unverified_denials_per_window": 10_000,
}


@dataclass
class Issuers:
    """One real issuer per attestor preset (attestors are routed by `iss`)."""

    k8s: TestIssuer
    gha: TestIssuer
    spiffe: TestIssuer
    oidc: TestIssuer

    @classmethod
    def start(cls) -> Issuers:
        return cls(TestIssuer(), TestIssuer(), TestIssuer(), TestIssuer())

    def attestors(self) -> list[dict[str, Any]]:
        return [
            self.k8s.attestor_config("kubernetes", name="k8s").model_dump(mode="json"),
            self.gha.attestor_config("github_actions", name="gha").model_dump(mode="json"),
            self.spiffe.attestor_config("spiffe_jwt", name="spiffe").model_dump(mode="json"),
            self.oidc.attestor_config("oidc", name="oidc").model_dump(mode="json"),
        ]

    def close(self) -> None:
        for issuer in (self.k8s, self.gha, self.spiffe, self.oidc):
            issuer.close()

    def worker(self, sa: str = "worker") -> str:
        return self.k8s.k8s_token("payments", sa)

    def operator(self) -> str:
        return self.oidc.token(sub="ops-alice")


def broker_settings(data_dir: Path, issuers: Issuers, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "issuer": BROKER_ISSUER,
        "data_dir": data_dir,
        "sqlite_synchronous": "NORMAL",
        "attestors": issuers.attestors(),
        "boundaries": BOUNDARIES,
        "policy": POLICY,
        "worker_interval": 0.2,
        **LOAD_TEST_LIMITS,
    }
    values.update(overrides)
    return load_settings(None, **values)


class BrokerClient(TestClient):
    """FastAPI's TestClient with the broker's components at hand."""

    components: Components

    @property
    def service(self):  # noqa: ANN201
        return self.components.service

    def grant(self, token: str, boundary: Any = "orders", scopes: list[str] | None = None, **body: Any):  # noqa: ANN201
        payload = {"task": body.pop("task", "t-1"), "boundary": boundary, "scopes": scopes or ["read"], **body}
        return self.post("/v1/grants", json=payload, headers={"Authorization": f"Bearer {token}"})

    def events(self, kind: str | None = None) -> list:
        rows = self.service.ledger.events(limit=100_000)
        return [r for r in rows if kind is None or r.kind == kind]


def open_client(settings: Settings, clock: Callable[[], float] = time.time) -> BrokerClient:
    components = build(settings, clock)
    client = BrokerClient(create_app(settings, components), raise_server_exceptions=False)
    client.components = components
    return client

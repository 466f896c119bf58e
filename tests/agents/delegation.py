"""Agents that delegate: an orchestrator, sub-agents, an outsider, their policy, and the exchange forms."""

from __future__ import annotations

from typing import Any

import jwt

from tests.agents.conftest import EXCHANGE, JWT_TYPE, mcp_boundaries
from tests.support.broker import POLICY

ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TXN_TYPE = "urn:ietf:params:oauth:token-type:txn_token"
TRUST_DOMAIN = "acme.internal"


def subject(sa: str) -> str:
    return f"system:serviceaccount:agents:{sa}"


ORCHESTRATOR, SUMMARIZER = subject("orchestrator"), subject("summarizer")


def boundaries() -> list[dict[str, Any]]:
    found = [b for b in mcp_boundaries() if b["name"] != "orders"]
    return [{"name": "orders", "backend": "jwt", "scopes": ["read", "write", "admin"], "max_ttl": "15m"}, *found]


def policy() -> dict[str, Any]:
    def rule(name: str, sa: str, allow: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": name, "match": {"attestor": "k8s", "subject": subject(sa)}, "allow": allow}

    return {"rules": [
        rule("orchestrator", "orchestrator", [{"boundary": "orders", "scopes": ["read", "write", "admin"], "max_ttl": "10m"},
                                              {"boundary": "mcp-a", "scopes": ["search", "delete"], "max_ttl": "10m"}]),
        rule("summarizer", "summarizer", [{"boundary": "orders", "scopes": ["read", "write"], "max_ttl": "10m"},
                                          {"boundary": "mcp-a", "scopes": ["search"], "max_ttl": "10m"}]),
        rule("helpers", "helper-*", [{"boundary": "orders", "scopes": ["read", "write"], "max_ttl": "10m"}]),
        rule("reader", "reader", [{"boundary": "orders", "scopes": ["read"], "max_ttl": "10m"}]),
        rule("outsider", "outsider", [{"boundary": "mcp-b", "scopes": ["search"], "max_ttl": "5m"}]),
        *[r for r in POLICY["rules"] if "roles" in r],
    ]}  # fmt: skip


def delegation(parent: str, actor: str, scope: str | None = None, **extra: str) -> dict[str, str]:
    form = {"grant_type": EXCHANGE, "subject_token_type": ACCESS_TYPE, "subject_token": parent,
            "actor_token_type": JWT_TYPE, "actor_token": actor, **extra}  # fmt: skip
    return {**form, "scope": scope} if scope is not None else form


def txn_request(subject_token: str, scope: str = "read", subject_type: str = ACCESS_TYPE, **extra: str) -> dict:
    return {"grant_type": EXCHANGE, "requested_token_type": TXN_TYPE, "audience": TRUST_DOMAIN, "scope": scope,
            "subject_token": subject_token, "subject_token_type": subject_type, **extra}  # fmt: skip


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})

"""Two MCP servers as boundaries, an agent allowed one tool on each, a resource server that introspects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.broker import POLICY, BrokerClient, broker_settings, open_client

SERVER_A = "https://mcp-a.test/mcp"
SERVER_B = "https://mcp-b.test/mcp"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
SUB_AGENT = "system:serviceaccount:agents:summarizer"


def mcp_boundaries(a: str = SERVER_A, b: str = SERVER_B) -> list[dict[str, Any]]:
    return [
        {"name": "orders", "backend": "jwt", "scopes": ["read"]},
        {"name": "mcp-a", "backend": "mcp", "resource_uri": a, "scopes": ["search", "delete"], "max_ttl": "10m"},
        {"name": "mcp-b", "backend": "mcp", "resource_uri": b, "scopes": ["search", "delete"], "max_ttl": "10m"},
    ]


def mcp_policy() -> dict[str, Any]:
    agent = {
        "name": "triage-agent",
        "match": {"attestor": "k8s", "subject": "system:serviceaccount:agents:triage"},
        "allow": [
            {"boundary": "mcp-a", "scopes": ["search"], "max_ttl": "5m"},
            {"boundary": "mcp-b", "scopes": ["search"], "max_ttl": "5m"},
        ],
    }
    sub_agent = {  # a sub-agent the triage agent delegates to (docs/agents.md, section 6)
        "name": "summarizer-agent",
        "match": {"attestor": "k8s", "subject": SUB_AGENT},
        "allow": [{"boundary": "mcp-a", "scopes": ["search"], "max_ttl": "5m"}],
    }
    return {"rules": [agent, sub_agent, *[r for r in POLICY["rules"] if "roles" in r]]}


def sub_agent_token(issuers) -> str:
    return issuers.k8s.k8s_token("agents", "summarizer")


def agent_token(issuers) -> str:
    return issuers.k8s.k8s_token("agents", "triage")


def exchange_form(token: str, resource: str | None = SERVER_A, scope: str = "search", **extra: str) -> dict[str, str]:
    form = {"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE, "subject_token": token, "scope": scope, **extra}
    return {**form, "resource": resource} if resource is not None else form


@pytest.fixture
def mcp_broker(tmp_path, issuers) -> Iterator[BrokerClient]:
    settings = broker_settings(tmp_path, issuers, boundaries=mcp_boundaries(), policy=mcp_policy())
    with open_client(settings) as client:
        yield client

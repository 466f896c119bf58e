"""Per-tool-call tokens: one RFC 9396 `mcp_tool_call` binding, ≤ 60 s, a jti, issued and ended like every grant."""

from __future__ import annotations

import hashlib
import json

import jwt
import pytest
from broker_client.dpop import DpopKey

from tests.agents.conftest import SERVER_A, SERVER_B, agent_token, exchange_form
from tests.operators.fleet import auth
from tests.support.broker import BROKER_ISSUER


def call(tool: str = "search", server: str = SERVER_A, **extra: str) -> dict[str, str]:
    return {"authorization_details": json.dumps([{"type": "mcp_tool_call", "server": server, "tool": tool, **extra}])}


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def test_a_call_token_is_bound_to_one_tool_for_sixty_seconds_under_the_task(mcp_broker, issuers):
    digest = hashlib.sha256(b'{"q":"x"}').hexdigest()
    form = exchange_form(agent_token(issuers), scope="", task="triage-1", **call(args_sha256=digest))
    response = mcp_broker.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    claims = _claims(body["access_token"])
    detail = {"type": "mcp_tool_call", "server": SERVER_A, "tool": "search", "args_sha256": digest}
    assert claims["authorization_details"] == [detail] and body["authorization_details"] == [detail]
    assert claims["aud"] == SERVER_A and claims["scope"] == "search" and claims["task"] == "triage-1"
    assert claims["exp"] - claims["iat"] == 60 and body["expires_in"] == 60
    [grant] = mcp_broker.service.ledger.grants()
    assert (grant.id, grant.task, grant.boundary, grant.scope_list) == (claims["jti"], "triage-1", "mcp-a", ["search"])
    assert [e.grant_id for e in mcp_broker.events("issued")] == [grant.id]


def test_a_longer_call_token_is_refused(mcp_broker, issuers):
    form = exchange_form(agent_token(issuers), scope="", requested_ttl="61", **call())
    response = mcp_broker.post("/oauth/token", data=form)
    assert response.status_code == 400 and response.json()["code"] == "ttl_exceeds_cap"
    shorter = mcp_broker.post("/oauth/token", data={**form, "requested_ttl": "max"})
    assert shorter.status_code == 200 and shorter.json()["expires_in"] == 60


def test_a_tool_the_policy_does_not_allow_gets_no_call_token(mcp_broker, issuers):
    response = mcp_broker.post("/oauth/token", data=exchange_form(agent_token(issuers), scope="", **call("delete")))
    assert response.status_code == 403 and response.json()["code"] == "policy_denied"
    assert mcp_broker.service.ledger.grants() == []


BAD_DETAILS = [
    ("not-json", {"authorization_details": "[{"}),
    ("not-a-list", {"authorization_details": json.dumps({"type": "mcp_tool_call"})}),
    ("two-details", {"authorization_details": json.dumps([json.loads(call()["authorization_details"])[0]] * 2)}),
    ("other-type", {"authorization_details": json.dumps([{"type": "payment", "server": SERVER_A, "tool": "search"}])}),
    ("other-server", call(server=SERVER_B)),
    ("unknown-tool", call("drop_tables")),
    ("extra-key", call(arguments="{}")),
    ("bad-args-hash", call(args_sha256="ABC")),
    ("scope-is-another-tool", {**call(), "scope": "delete"}),
]


@pytest.mark.parametrize("extra", [b[1] for b in BAD_DETAILS], ids=[b[0] for b in BAD_DETAILS])
def test_malformed_bindings_are_refused_and_recorded(mcp_broker, issuers, extra):
    form = {**exchange_form(agent_token(issuers), scope=""), **extra}
    response = mcp_broker.post("/oauth/token", data=form)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == response.json()["error"] == "invalid_authorization_details"
    assert [e.detail["code"] for e in mcp_broker.events("denied")] == ["invalid_authorization_details"]
    assert mcp_broker.service.ledger.grants() == []


def test_a_call_token_may_be_dpop_bound(mcp_broker, issuers):
    key = DpopKey()
    proof = key.proof("POST", BROKER_ISSUER + "/oauth/token")
    response = mcp_broker.post("/oauth/token", data=exchange_form(agent_token(issuers), scope="", **call()),
                               headers={"DPoP": proof})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert _claims(response.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_completing_the_task_ends_its_call_tokens(mcp_broker, issuers):
    form = exchange_form(agent_token(issuers), scope="", task="triage-2", **call())
    token = mcp_broker.post("/oauth/token", data=form).json()["access_token"]
    resource_server = issuers.worker("resource")
    seen = mcp_broker.post("/oauth/introspect", data={"token": token}, headers=auth(resource_server)).json()
    assert seen["active"] is True and seen["authorization_details"][0]["tool"] == "search"
    done = mcp_broker.post("/v1/tasks/triage-2/complete", headers=auth(agent_token(issuers)))
    assert done.status_code == 200, done.text
    assert mcp_broker.post("/oauth/introspect", data={"token": token}, headers=auth(resource_server)).json() == {
        "active": False
    }

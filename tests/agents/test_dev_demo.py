"""`broker dev` serves the demo MCP boundary: dev:demo-workload may search, not delete."""

from __future__ import annotations

import jwt

from broker.dev import dev_settings, dev_token
from tests.agents.conftest import exchange_form
from tests.support.broker import open_client

DEMO_MCP = "https://mcp.demo.invalid/mcp"


def test_the_demo_workload_may_search_demo_mcp_and_not_delete(tmp_path):
    settings = dev_settings(tmp_path, 8080)
    token = dev_token(tmp_path, "dev:demo-workload")
    with open_client(settings) as broker:
        search = broker.post("/oauth/token", data=exchange_form(token, DEMO_MCP, "search"))
        assert search.status_code == 200, search.text
        assert jwt.decode(search.json()["access_token"], options={"verify_signature": False})["aud"] == DEMO_MCP
        delete = broker.post("/oauth/token", data=exchange_form(token, DEMO_MCP, "delete"))
        assert delete.status_code == 403 and delete.json()["code"] == "policy_denied"


def test_the_demo_workload_may_delegate_demo_read_to_the_dev_sub_agent_and_ask_for_txn_tokens(tmp_path):
    """`make run` has what docs/agents.md §6-7 show: dev:sub-agent and the trust domain dev.local."""
    from tests.agents.delegation import delegation, txn_request

    settings = dev_settings(tmp_path, 8080)
    workload, sub_agent = dev_token(tmp_path, "dev:demo-workload"), dev_token(tmp_path, "dev:sub-agent")
    with open_client(settings) as broker:
        parent = broker.grant(workload, "demo", ["read", "write"], task="demo-task").json()["credential"]["token"]
        auth = {"Authorization": f"Bearer {workload}"}
        derived = broker.post("/oauth/token", data=delegation(parent, sub_agent), headers=auth)
        assert derived.status_code == 200, derived.text
        claims = jwt.decode(derived.json()["access_token"], options={"verify_signature": False})
        assert (claims["sub"], claims["scope"]) == ("dev:demo-workload", "read")  # the workload's, narrowed
        assert claims["act"] == {"sub": "dev:sub-agent", "act": {"sub": "dev:demo-workload"}}
        txn = broker.post("/oauth/token", data=txn_request(parent, audience="dev.local"), headers=auth)
        assert txn.status_code == 200, txn.text
        assert jwt.decode(txn.json()["access_token"], options={"verify_signature": False})["aud"] == "dev.local"

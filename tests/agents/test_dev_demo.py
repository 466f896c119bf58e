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

"""A real FastMCP server whose verifier hears revocations from the broker (Shared Signals), not by introspection."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
from broker_client import Client, SignalReceiver
from broker_client.mcp import BrokerTokenVerifier
from fastmcp import FastMCP

from broker.dev_openbao import free_port
from tests.agents.conftest import agent_token, mcp_boundaries, mcp_policy
from tests.agents.test_mcp_servers import _call, _raw_call, _serve
from tests.sdk.live import LiveBroker
from tests.support.broker import RECEIVERS

AGENT = "system:serviceaccount:agents:triage"


class Counted(httpx.Client):
    """The receiver's own HTTP client, counting what it asks the broker (introspection must never be one)."""

    def __init__(self) -> None:
        super().__init__(timeout=10.0)
        self.paths: list[str] = []

    def send(self, request: httpx.Request, **kwargs) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().send(request, **kwargs)


def _ping(url: str, token: str) -> int:
    """A request that passes the verifier without using the call token's one tools/call."""
    message = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
    return httpx.post(url, json=message, headers=headers, timeout=10).status_code


def test_a_revoked_call_token_is_refused_within_a_second_without_introspection(tmp_path, issuers) -> None:
    port = free_port()
    server_uri = f"http://127.0.0.1:{port}/mcp"
    policy = mcp_policy()
    policy["rules"].append(RECEIVERS)
    broker = LiveBroker.start(tmp_path, issuers, boundaries=mcp_boundaries(server_uri, "https://mcp-b.test/mcp"),
                              policy=policy)  # fmt: skip
    http = Counted()
    receiver = SignalReceiver(broker.url, identity=lambda: issuers.oidc.token(sub="receiver-mcp"), boundaries=["mcp-a"],
                              http=http)  # poll mode: an MCP server needs no inbound endpoint for it
    receiver.register()
    receiver.start_polling()
    verifier = BrokerTokenVerifier(issuer=broker.url, resource=server_uri, tools=["search"], receiver=receiver)
    assert verifier.introspection is None
    mcp = FastMCP("A", auth=verifier)

    @mcp.tool
    def search(q: str) -> str:
        return f"found {q}"

    server = _serve(mcp.http_app(path="/mcp"), port)
    try:
        with Client(broker.url, agent_token(issuers)) as agent, agent.task("triage") as task:
            used = task.tool_token(server_uri, "search").token
            assert asyncio.run(_call(server_uri, used, "search", q="before")) == "found before"
            token = task.tool_token(server_uri, "search")
            assert _ping(server_uri, token.token) not in (401, 403)
            revoked = httpx.post(f"{broker.url}/v1/revocations", headers={"Authorization": f"Bearer {issuers.operator()}"},
                                 json={"grant_id": token.grant_id, "reason": "incident"})  # fmt: skip
            assert revoked.status_code in (200, 201, 202), revoked.text
            started, refused = time.monotonic(), threading.Event()
            while time.monotonic() - started < 1.0 and not refused.is_set():
                if _ping(server_uri, token.token) == 401:
                    refused.set()
                else:
                    time.sleep(0.01)  # the broker and its SET delivery share this process's GIL with this loop
            elapsed = time.monotonic() - started
            assert refused.is_set() and elapsed < 1.0, elapsed
            assert _raw_call(server_uri, token.token, "search", q="after").status_code == 401
        assert "/oauth/introspect" not in http.paths and http.paths, http.paths
        assert broker.grant(token.grant_id).status == "revoked"
    finally:
        receiver.stop()
        server.should_exit = True
        broker.stop()

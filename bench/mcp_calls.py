"""Call tokens through the SDK: tokens/s, and the latency a per-call token adds to one MCP tool call.

    python -m bench.mcp_calls [--calls 200]   (also rows of `make bench`: 200 calls, 50 with --quick)

Baseline: a FastMCP server behind FastMCP's stock JWTVerifier, one session, one reused token.
Ours: the same calls, each with a fresh call token (`task.tool_token`) on a server behind
`broker_client.mcp.BrokerTokenVerifier` (offline check + introspection + single use).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from broker_client import Client
from broker_client.mcp import BrokerTokenVerifier
from fastmcp import Client as McpClient
from fastmcp.client.auth import BearerAuth
from fastmcp.server.auth.providers.jwt import JWTVerifier

from bench.harness import Result
from broker.dev_openbao import free_port
from tests.agents.conftest import agent_token, mcp_boundaries, mcp_policy
from tests.agents.test_mcp_servers import _mcp, _serve
from tests.sdk.live import LiveBroker
from tests.support.broker import Issuers


class SwappableBearer(BearerAuth):
    """One MCP session whose Authorization changes per call: what a per-call token hook does."""

    def set(self, token: str) -> None:
        self.token = type(self.token)(token)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def _session(url: str, first: str, calls: int, next_token) -> list[float]:  # noqa: ANN001
    auth = SwappableBearer(first)
    took = []
    async with McpClient(url, auth=auth) as mcp:
        for i in range(calls):
            start = time.perf_counter()
            token = await asyncio.to_thread(next_token)
            if token:
                auth.set(token)
            await mcp.call_tool("search", {"q": str(i)})
            took.append(time.perf_counter() - start)
    return took


def rows(calls: int) -> list[Result]:
    """The call-token rate through the SDK and a tool call's latency without and with a per-call token."""
    issuers = Issuers.start()
    ports = [free_port(), free_port()]
    ours, stock = (f"http://127.0.0.1:{p}/mcp" for p in ports)
    broker = LiveBroker.start(Path(tempfile.mkdtemp()), issuers, boundaries=mcp_boundaries(ours, stock),
                              policy=mcp_policy())  # fmt: skip
    introspection = Client(broker.url, issuers.worker("resource"))
    try:
        verifier = BrokerTokenVerifier(issuer=broker.url, resource=ours, tools=["search"], introspection=introspection)
        stock_auth = JWTVerifier(jwks_uri=broker.url + "/.well-known/jwks.json", issuer=broker.url, audience=stock,
                                 algorithm="ES256")  # fmt: skip
        _serve(_mcp("ours", verifier).http_app(path="/mcp"), ports[0])
        _serve(_mcp("stock", stock_auth).http_app(path="/mcp"), ports[1])
        with Client(broker.url, agent_token(issuers)) as agent, agent.task("bench") as task:
            start = time.perf_counter()
            for _ in range(calls):
                task.tool_token(ours, "search")
            elapsed = time.perf_counter() - start
            reused = task.tool_token(stock, "search").token
            base = asyncio.run(_session(stock, reused, calls, lambda: None))
            first = task.tool_token(ours, "search").token
            per_call = asyncio.run(_session(ours, first, calls, lambda: task.tool_token(ours, "search").token))
    finally:
        introspection.close()
        broker.stop()
        issuers.close()
    added = _pct(per_call, 0.5) - _pct(base, 0.5)
    return [
        Result("MCP call tokens through the SDK (one thread)", 1, requests=calls, elapsed=elapsed),
        Result("MCP tool call, stock JWTVerifier, one reused token", 1, requests=calls, latencies=base,
               elapsed=sum(base)),  # fmt: skip
        Result("MCP tool call, a fresh call token each + BrokerTokenVerifier", 1, requests=calls, latencies=per_call,
               elapsed=sum(per_call), note=f"p50 +{added:.1f} ms per call (token + offline check + introspection)"),  # fmt: skip
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    from bench.__main__ import table

    print(table(rows(parser.parse_args().calls)))


if __name__ == "__main__":
    main()

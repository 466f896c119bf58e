"""Real FastMCP servers on loopback behind broker call tokens, driven by a real FastMCP client and the SDK."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import broker_client.errors as sdk_errors
import httpx
import pytest
import uvicorn
from broker_client import Client
from broker_client.errors import InvalidDpop
from broker_client.mcp import BrokerTokenVerifier, CallTokenAuth
from fastmcp import Client as McpClient
from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import JWTVerifier

from broker.dev_openbao import free_port
from tests.agents.conftest import SUB_AGENT, agent_token, mcp_boundaries, mcp_policy, sub_agent_token
from tests.sdk.docs import ROOT, blocks
from tests.sdk.live import LiveBroker
from tests.support.wait import wait_started

AGENT = "system:serviceaccount:agents:triage"


@dataclass
class Servers:
    broker: LiveBroker
    a: str  # canonical URIs, which are also where the servers listen
    b: str
    stock: str  # FastMCP's own JWTVerifier with audience = a
    clock: list[float]  # the verifiers' introspection-cache clock, moved by hand
    verifier_a: BrokerTokenVerifier


def _serve(app, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_started(server, thread)
    return server


def _mcp(name: str, auth) -> FastMCP:
    server = FastMCP(name, auth=auth)

    @server.tool
    def search(q: str) -> str:
        return f"{name} found {q}"

    @server.tool
    def delete(item: str) -> str:
        return f"{name} deleted {item}"

    return server


@pytest.fixture(scope="module")
def servers(tmp_path_factory, issuers) -> Iterator[Servers]:
    ports = [free_port() for _ in range(3)]
    a, b, stock = (f"http://127.0.0.1:{p}/mcp" for p in ports)
    broker = LiveBroker.start(tmp_path_factory.mktemp("mcp-broker"), issuers, boundaries=mcp_boundaries(a, b),
                              policy=mcp_policy())  # fmt: skip
    introspection = Client(broker.url, issuers.worker("resource"))  # a resource_server by policy
    clock = [0.0]
    verifiers = [
        BrokerTokenVerifier(issuer=broker.url, resource=uri, tools=["search", "delete"], introspection=introspection,
                            clock=lambda: clock[0])  # fmt: skip
        for uri in (a, b)
    ]
    stock_auth = JWTVerifier(jwks_uri=broker.url + "/.well-known/jwks.json", issuer=broker.url, audience=a,
                             algorithm="ES256")  # fmt: skip
    running = [_serve(_mcp(n, v).http_app(path="/mcp"), p)
               for n, v, p in zip(("A", "B", "stock"), [*verifiers, stock_auth], ports)]  # fmt: skip
    yield Servers(broker, a, b, stock, clock, verifiers[0])
    for server in running:
        server.should_exit = True
    introspection.close()
    broker.stop()


def _agent(servers: Servers, issuers) -> Client:
    return Client(servers.broker.url, agent_token(issuers))


async def _call(url: str, token: str, tool: str, **arguments: str) -> str:
    async with McpClient(url, auth=token) as client:
        result = await client.call_tool(tool, arguments)
        return result.content[0].text


def _raw_call(url: str, token: str, tool: str, headers: dict | None = None, **arguments: str) -> httpx.Response:
    """A bare JSON-RPC tools/call, to read the status and the challenge the server answers with."""
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    sent = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream", **(headers or {})}
    return httpx.post(url, json=message, headers=sent, timeout=10)


def test_a_call_token_for_a_tool_works_on_that_tool_only(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("triage") as task:
        token = task.tool_token(servers.a, "search").token
        assert asyncio.run(_call(servers.a, token, "search", q="logs")) == "A found logs"
        other = task.tool_token(servers.a, "search").token
        refused = _raw_call(servers.a, other, "delete", item="x")
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope"') and 'scope="delete"' in challenge
    assert f'resource_metadata="{servers.verifier_a.metadata_url}"' in challenge
    document = httpx.get(servers.verifier_a.metadata_url).json()  # the RFC 9728 document it points at
    assert document["resource"] == servers.a and document["authorization_servers"] == [servers.broker.url]


def test_a_token_for_server_a_is_refused_by_server_b(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("triage") as task:
        token = task.tool_token(servers.a, "search").token
        with pytest.raises(Exception):  # noqa: B017 (the client says only "error response"; the status is below)
            asyncio.run(_call(servers.b, token, "search", q="x"))
        assert _raw_call(servers.b, token, "search", q="x").status_code == 401


def test_a_replayed_call_token_is_refused(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("triage") as task:
        token = task.tool_token(servers.a, "search").token
        assert asyncio.run(_call(servers.a, token, "search", q="once")) == "A found once"
        replay = _raw_call(servers.a, token, "search", q="twice")
    assert replay.status_code == 401 and 'error="invalid_token"' in replay.headers["www-authenticate"]


def test_a_token_bound_to_arguments_refuses_others(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("triage") as task:
        token = task.tool_token(servers.a, "search", arguments={"q": "logs"}).token
        assert _raw_call(servers.a, token, "search", q="secrets").status_code == 403
        assert asyncio.run(_call(servers.a, token, "search", q="logs")) == "A found logs"


def test_completing_the_task_fails_the_next_call_within_the_cache_ttl(servers, issuers):
    with _agent(servers, issuers) as agent:
        task = agent.task("triage")
        token = task.tool_token(servers.a, "search").token
        assert _raw_call(servers.a, token, "delete", item="x").status_code == 403  # checked once: active, cached
        task.complete()
        started = time.monotonic()
        servers.clock[0] += servers.verifier_a.cache_ttl  # the cached answer ages out (cache_ttl is 1 s)
        refused = _raw_call(servers.a, token, "search", q="after")
        assert refused.status_code == 401 and time.monotonic() - started < 1.0


def test_fastmcp_stock_jwt_verifier_accepts_ours_for_a_and_refuses_ours_for_b(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("triage") as task:
        for_a = task.tool_token(servers.a, "search").token
        for_b = task.tool_token(servers.b, "search").token
        assert asyncio.run(_call(servers.stock, for_a, "search", q="x")) == "stock found x"
        assert _raw_call(servers.stock, for_b, "search", q="x").status_code == 401


def test_the_call_tokens_are_in_the_ledger_under_the_agents_task(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("ledger-check") as task:
        credential = task.tool_token(servers.a, "search")
        assert "sha256:" in repr(credential) and credential.token not in repr(credential)
    [grant] = servers.broker.task_grants(AGENT, task.id)
    assert (grant.id, grant.boundary, grant.scope_list, grant.status) == (
        credential.grant_id, "mcp-a", ["search"], "completed")


def test_the_agents_guide_runs_end_to_end(servers, issuers, monkeypatch, capsys):
    guide = ROOT / "docs" / "agents.md"
    env = {"BROKER_URL": servers.broker.url, "BROKER_IDENTITY_TOKEN": agent_token(issuers),
           "MCP_SERVER_A": servers.a, "MCP_SERVER_B": servers.b, "RESOURCE_SERVER_TOKEN": issuers.worker("resource"),
           "MCP_BOUNDARY_A": "mcp-a", "SUB_AGENT_TOKEN": sub_agent_token(issuers), "OPERATOR_TOKEN": issuers.operator()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    namespace: dict = {"__name__": "__guide__"}
    code = [block for lang, block in blocks(guide) if lang == "python"]
    assert len(code) == 5
    for block in code:  # one script, in order, as a reader runs it
        exec(compile(block, guide.name, "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("<Credential") and out[1] == "A found error budget"
    assert out[2].startswith(f"{servers.b} refused:")
    assert out[3] == f"{servers.a} A found x" and out[4].startswith(f"{servers.a} refused:")
    assert out[5].startswith("refused after completion:")
    assert out[6] == "A found by the sub-agent" and out[7] == "revoked: 3"
    assert out[8].startswith("sub-agent refused after the revocation:")
    assert "triage-ticket-42" in {g.task.rsplit(".", 1)[0] for g in servers.broker.ledger.grants()}


def test_a_dpop_bound_call_token_needs_its_holders_proof_for_this_server(servers, issuers):
    with _agent(servers, issuers) as agent, agent.task("triage") as task:
        credential = task.tool_token(servers.a, "search", dpop=True)
        token, key = credential.token, agent.dpop
        assert credential.grant.dpop_bound
        headers = {"DPoP": key.proof("POST", servers.b, token)}  # a proof for another server's URL
        assert _raw_call(servers.a, token, "search", headers=headers, q="x").status_code == 401
        assert _raw_call(servers.a, token, "search", q="x").status_code == 401  # no proof at all
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}  # not a tool call: still only with the holder's proof
        unproven = httpx.post(servers.a, json=ping, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert unproven.status_code == 401 and unproven.headers["www-authenticate"].startswith("DPoP ")
        headers = {"DPoP": key.proof("POST", servers.a, token)}
        passed = _raw_call(servers.a, token, "search", headers=headers, q="x")
        assert passed.status_code not in (401, 403), passed.text  # past the guard: the transport wants a session


def test_the_auth_hook_fetches_a_call_token_per_tools_call(servers, issuers):
    async def session(task) -> list[str]:  # noqa: ANN001
        auth = CallTokenAuth(task, servers.a, session_tool="search")
        async with McpClient(servers.a, auth=auth) as mcp:
            return [(await mcp.call_tool("search", {"q": q})).content[0].text for q in ("a", "b", "c")]

    with _agent(servers, issuers) as agent, agent.task("hooked") as task:
        assert asyncio.run(session(task)) == ["A found a", "A found b", "A found c"]
    grants = servers.broker.task_grants(AGENT, task.id)
    assert len(grants) == 4 and {g.scope_list[0] for g in grants} == {"search"}  # the session's token + one per call


# --- delegation through the SDK: `task.delegate` -------------------------------------------------------


def _orchestrator(servers: Servers, issuers, dpop: bool = False) -> Client:
    return Client(servers.broker.url, agent_token(issuers), dpop=dpop)


def test_a_delegated_call_token_works_for_the_sub_agent_until_the_orchestrators_task_completes(servers, issuers):
    with _orchestrator(servers, issuers) as agent:
        with agent.task("delegating") as task:
            task.grant("mcp-a", ["search"])
            first = task.delegate(sub_agent_token(issuers), ["search"], server=servers.a, tool="search")
            assert asyncio.run(_call(servers.a, first.token, "search", q="sub")) == "A found sub"
            second = task.delegate(sub_agent_token(issuers), server=servers.a, tool="search")
        started = time.monotonic()  # the block's exit completed the task: both derived tokens ended with it
        refused = _raw_call(servers.a, second.token, "search", q="after")
        assert refused.status_code == 401 and time.monotonic() - started < 1.0
    derived = servers.broker.grant(second.grant_id)
    assert derived.subject == SUB_AGENT and derived.status == "revoked" and derived.parent_grant_id


def test_delegate_gives_a_nested_act_token_the_sub_agent_can_introspect(servers, issuers):
    sub_agent = Client(servers.broker.url, sub_agent_token(issuers), dpop=False)
    with _orchestrator(servers, issuers) as agent, agent.task("delegating") as task, sub_agent:
        parent = task.grant("mcp-a", ["search"])
        credential = task.delegate(sub_agent_token(issuers))  # default: the parent's scopes, the latest grant
        assert credential.token not in repr(credential) and credential.grant.scopes == ["search"]
        seen = sub_agent.introspect(credential.token)
        assert seen["active"] is True and seen["client_id"] == SUB_AGENT and seen["sub"] == AGENT
        assert seen["act"] == {"sub": SUB_AGENT, "act": {"sub": AGENT}}
        assert servers.broker.grant(credential.grant_id).parent_grant_id == parent.grant_id


def test_delegating_a_dpop_bound_grant_proves_its_key_and_binds_the_token_to_it(servers, issuers):
    unproven = Client(servers.broker.url, agent_token(issuers), dpop=False)  # the orchestrator, without the key
    with _orchestrator(servers, issuers, dpop=True) as agent, agent.task("delegating") as task, unproven:
        parent = task.grant("mcp-a", ["search"])
        assert parent.grant.dpop_bound
        credential = task.delegate(sub_agent_token(issuers))
        assert credential.grant.dpop_bound and credential.token_type == "DPoP"
        with pytest.raises(InvalidDpop):
            unproven.delegate(task.id, parent, sub_agent_token(issuers))


def test_delegation_refusals_surface_as_sdk_errors(servers, issuers):
    from broker_client.errors import BrokerClientError, BrokerError, PolicyDenied

    with _orchestrator(servers, issuers) as agent, agent.task("delegating") as task:
        with pytest.raises(BrokerClientError, match="grant one first"):
            task.delegate(sub_agent_token(issuers))
        task.grant("mcp-a", ["search"])
        with pytest.raises(PolicyDenied):
            task.delegate(issuers.worker("resource"))  # the resource server may use no tool of server A
        token = task.delegate(sub_agent_token(issuers))
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "resource": "mcp-a", "scope": "search",
            "subject_token": token.token, "subject_token_type": "urn:ietf:params:oauth:token-type:jwt"}  # fmt: skip
    sub_agent = Client(servers.broker.url, sub_agent_token(issuers), dpop=False)
    with sub_agent, pytest.raises(BrokerError) as impersonating:  # its token, presented without an actor
        sub_agent.call("POST", "/oauth/token", idempotent=False, form=form)
    assert impersonating.value.code == "impersonation_refused"
    assert isinstance(impersonating.value, sdk_errors.ImpersonationRefused)


def test_the_async_task_delegates_too(servers, issuers):
    from broker_client import AsyncClient

    async def run() -> str:
        agent = AsyncClient(servers.broker.url, agent_token(issuers), dpop=False)
        async with agent, agent.task("delegating") as task:
            await task.grant("mcp-a", ["search"])
            credential = await task.delegate(sub_agent_token(issuers), ["search"])
            assert servers.broker.grant(credential.grant_id).status == "active"
            return credential.grant_id

    derived = servers.broker.grant(asyncio.run(run()))
    assert derived.subject == SUB_AGENT and derived.status == "revoked"  # ended with the async task's exit

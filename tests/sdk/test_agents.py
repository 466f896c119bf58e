"""`requires`: one task and one grant per tool call, given back however the call ends."""

from __future__ import annotations

import asyncio

import pytest

from broker_client import AsyncClient, Credential, requires


class ToolFailed(Exception):
    pass


def test_each_call_has_its_own_task_and_the_grant_ends_with_the_call(client, live) -> None:
    seen: list[Credential] = []

    @requires("orders", ["read"], ttl=30, client=client)
    def tool(fail: bool, *, credential: Credential) -> None:
        seen.append(credential)
        assert live.grant(credential.grant_id).status == "active"
        if fail:
            raise ToolFailed

    tool(False)
    with pytest.raises(ToolFailed):
        tool(True)
    assert seen[0].grant.task != seen[1].grant.task and seen[0].grant.task.startswith("tool-tool.")
    assert [live.grant(c.grant_id).status for c in seen] == ["completed", "completed"]


def test_async_tool(live, worker_token) -> None:
    async def run() -> str:
        async with AsyncClient(live.url, worker_token) as client:

            @requires("payments", ["read"], client=client)
            async def tool(*, credential: Credential) -> str:
                await asyncio.sleep(0)
                return credential.grant_id

            return await tool()

    assert live.grant(asyncio.run(run())).status == "completed"


def test_a_refused_grant_never_calls_the_tool(client) -> None:
    called = []

    @requires("orders", ["admin"], client=client)
    def tool(*, credential: Credential) -> None:
        called.append(credential)

    with pytest.raises(Exception, match="policy_denied"):
        tool()
    assert called == []

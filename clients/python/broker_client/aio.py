"""The asynchronous client: `async with client.task("name") as task` gives grants back on exit or cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from broker_client import _wire as wire
from broker_client.client import ClientBase, TaskBase, actor_token, latest_parent
from broker_client.credential import Credential, Grant, TaskCompleted
from broker_client.errors import BrokerClientError, TaskNotFound, TransportError
from broker_client.identity import IdentitySource
from broker_client.signals import install_sigterm_exit


class AsyncClient(ClientBase):
    """The async twin of `Client`: same calls, same retries, same DPoP."""

    _http_client = httpx.AsyncClient

    async def grant(self, task: str, boundary: str, scopes: Sequence[str] | str, ttl: Any = None) -> Credential:
        body = wire.grant_body(task, boundary, scopes, ttl)
        # one Idempotency-Key per grant, the same on every retry: the broker answers a retry with the grant
        # it already issued (or supersedes it), so a lost answer never leaves a second live credential
        key = wire.idempotency_key()
        return wire.credential(await self.call("POST", "/v1/grants", json=body, extra_headers={"Idempotency-Key": key}))

    async def get(self, grant_id: str) -> Grant:
        return Grant.of(await self.call("GET", f"/v1/grants/{wire.segment(grant_id)}"))

    async def complete(self, grant_id: str) -> Grant:
        return Grant.of(await self.call("POST", f"/v1/grants/{wire.segment(grant_id)}/complete"))

    async def complete_task(self, task: str) -> TaskCompleted:
        return wire.task_completed(await self.call("POST", f"/v1/tasks/{wire.segment(task)}/complete"))

    def task(self, name: str, *, unique: bool = True) -> AsyncTask:
        return AsyncTask(self, wire.unique_task(name) if unique else name)

    async def tool_token(
        self, task: str, server: str, tool: str, *, arguments: dict[str, Any] | None = None, dpop: bool = False
    ) -> Credential:
        """A call token for one tool of one MCP server (≤ 60 s, single use); see `Client.tool_token`."""
        form = wire.tool_call_form(self.identity.token(), task, server, tool, arguments)
        body = await self.call("POST", "/oauth/token", form=form, idempotent=False, bind=dpop)
        return wire.call_token(body, task, server, tool)

    async def delegate(
        self, task: str, parent: Credential, sub_agent: IdentitySource | str, scopes: Sequence[str] | str = (), *,
        ttl: Any = None, server: str | None = None, tool: str | None = None, arguments: dict[str, Any] | None = None,
    ) -> Credential:  # fmt: skip
        """A token for a sub-agent, derived from `parent`; see `Client.delegate`."""
        body = await self.call("POST", "/oauth/token", idempotent=False, bind=parent.grant.dpop_bound,
                               form=wire.delegation_form(parent.token, actor_token(sub_agent), task, scopes, ttl,
                                                         wire.tool_call(server, tool, arguments)))  # fmt: skip
        return wire.exchanged(body, task, server or parent.grant.boundary)

    async def introspect(self, token: str) -> dict[str, Any]:
        return await self.call("POST", "/oauth/introspect", form={"token": token}, proof_token=token)

    async def call(
        self, method: str, path: str, *, idempotent: bool = True, proof_token: str | None = None,
        extra_headers: dict[str, str] | None = None, bind: bool = True, **body: Any
    ) -> Any:
        url = self.url + path
        old = self._rotated_http()
        if old is not None:
            await old.aclose()
        key = self.dpop if bind else None
        for attempt in range(self.retry.attempts):
            headers = wire.headers(method, url, self.identity.token(), key, proof_token) | (extra_headers or {})
            try:
                response = await self._http.request(
                    method, url, headers=headers, data=body.get("form"), json=body.get("json")
                )
            except httpx.TransportError as exc:
                if not self.retry.allows(idempotent, attempt):
                    raise TransportError(f"{method} {path}: {type(exc).__name__}") from exc
            else:
                if response.status_code not in wire.RETRY_STATUSES or not self.retry.allows(idempotent, attempt):
                    return wire.answer(response)
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncTask(TaskBase):
    """Grants of one unit of work; `async with` completes them on success, exception or cancellation."""

    async def grant(self, boundary: str, scopes: Sequence[str] | str, ttl: Any = None) -> Credential:
        self.asked = True
        credential = await self.client.grant(self.id, boundary, scopes, ttl)
        self.credentials.append(credential)
        return credential

    async def tool_token(
        self, server: str, tool: str, *, arguments: dict[str, Any] | None = None, dpop: bool = False
    ) -> Credential:
        """A call token for `tool` on the MCP server `server` (its canonical URI), under this task."""
        self.asked = True
        return await self.client.tool_token(self.id, server, tool, arguments=arguments, dpop=dpop)

    async def delegate(
        self, sub_agent: IdentitySource | str, scopes: Sequence[str] | str = (), *, parent: Credential | None = None,
        ttl: Any = None, server: str | None = None, tool: str | None = None, arguments: dict[str, Any] | None = None,
    ) -> Credential:  # fmt: skip
        """A token for a sub-agent, derived from this task's grant; see `Task.delegate`."""
        self.asked = True
        return await self.client.delegate(self.id, parent or latest_parent(self), sub_agent, scopes, ttl=ttl,
                                          server=server, tool=tool, arguments=arguments)  # fmt: skip

    async def complete(self) -> TaskCompleted | None:
        if self.asked and self.result is None:
            try:
                # shielded: a second cancellation must not abandon the completion half-way
                self.result = await asyncio.shield(self.client.complete_task(self.id))
            except TaskNotFound:  # only the broker's own code: any other 404 is a failure to complete
                self.result = TaskCompleted(self.id, 0, 0, 0)
        return self.result

    async def __aenter__(self) -> AsyncTask:
        install_sigterm_exit()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.complete()
        except BrokerClientError as failure:
            self._exit_failed(failure, kind is None)

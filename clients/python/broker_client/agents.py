"""Agent helpers: a credential for exactly one tool call, given back when the call returns or fails.

    @requires("orders-db", ["read"], ttl=60)
    def lookup_order(order_id: str, *, credential: Credential) -> dict: ...

    with requires("orders-db", ["read"]) as credential: ...
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

from broker_client.aio import AsyncClient
from broker_client.client import Client, Task
from broker_client.credential import Credential

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """One process-wide Client from the environment (BROKER_URL and an identity source)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


class requires:  # noqa: N801 (used as a decorator, named like one)
    """Decorator or context manager: one task and one grant per tool call, the credential as `credential=`."""

    def __init__(
        self, boundary: str, scopes: Sequence[str] | str, *, ttl: Any = 60, client: Client | AsyncClient | None = None,
        task: str | None = None,
    ) -> None:  # fmt: skip
        self.boundary, self.scopes, self.ttl = boundary, scopes, ttl
        self.client, self.task_name = client, task
        self._open: list[Task] = []

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        name = self.task_name or f"tool-{func.__name__}"
        if inspect.iscoroutinefunction(func):
            return self._async_wrapper(func, name)

        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._sync_client().task(name) as task:
                kwargs["credential"] = task.grant(self.boundary, self.scopes, self.ttl)
                return func(*args, **kwargs)

        return call

    def _async_wrapper(self, func: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(func)
        async def call(*args: Any, **kwargs: Any) -> Any:
            client = self.client if isinstance(self.client, AsyncClient) else None
            owned = client is None
            client = client or AsyncClient()
            try:
                async with client.task(name) as task:
                    kwargs["credential"] = await task.grant(self.boundary, self.scopes, self.ttl)
                    return await func(*args, **kwargs)
            finally:
                if owned:
                    await client.aclose()

        return call

    def _sync_client(self) -> Client:
        if isinstance(self.client, AsyncClient):
            raise TypeError("a sync tool function needs a Client, not an AsyncClient")
        return self.client or default_client()

    def __enter__(self) -> Credential:
        task = self._sync_client().task(self.task_name or "tool").__enter__()
        self._open.append(task)
        try:
            return task.grant(self.boundary, self.scopes, self.ttl)
        except BaseException as exc:
            self._open.pop().__exit__(type(exc), exc, exc.__traceback__)
            raise

    def __exit__(self, *exc: Any) -> None:
        self._open.pop().__exit__(*exc)

"""Work that must not wait: the event loop prepares a grant itself when nothing on the way blocks.

Preparing a jwt grant (the identity token from the verified cache, the policy, signing) is CPU only;
the hop to a thread and back cost more than the work (measured: 17-20 % more grants/s and 13-19 % less
CPU per grant with two workers when it ran on the loop). Anything else may wait: a database connection,
a ledger write's commit, an outbound HTTP call (Vault, a JWKS fetch), a lock another thread holds for
a fetch. Each of those places calls `may_block()` first; inside `on_loop()` it raises `WouldBlock`,
before anything was changed, and the caller runs the same work again on a thread, from the start.
The work therefore has no effect before its first wait but in-memory caches (the verified identity
tokens), which the second run would fill the same way.

`WouldBlock` is a BaseException, so no `except Exception` (a refusal recorded for an unexpected error,
an identity check failing closed) mistakes it for a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")

_on_loop: ContextVar[bool] = ContextVar("broker_on_loop", default=False)


class WouldBlock(BaseException):  # noqa: N818 (a signal to the caller, not an error)
    """Raised where work run on the event loop would wait."""


@contextmanager
def on_loop() -> Iterator[None]:
    token = _on_loop.set(True)
    try:
        yield
    finally:
        _on_loop.reset(token)


def attempt(fn: Callable[..., T], *args: Any) -> T | None:
    """`fn(*args)` here, on the event loop; None where it would have waited (it changed nothing then, and
    the caller runs it again on a thread). Only for functions that never return None themselves."""
    try:
        with on_loop():
            return fn(*args)
    except WouldBlock:
        return None


def may_block(*_: Any) -> None:
    """Called just before waiting (any arguments ignored, so it can be an event hook)."""
    if _on_loop.get():
        raise WouldBlock


def acquire(lock: Any) -> None:
    """Take `lock`; on the event loop only if it is free at once (else WouldBlock)."""
    if not lock.acquire(blocking=not _on_loop.get()):
        raise WouldBlock

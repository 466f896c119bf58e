"""Every decision is recorded before it is answered, including the ones a bug makes (promise 4).

A use case that fails with something other than a `BrokerError` has found a defect; the caller
still gets a recorded refusal: a `denied` event with code `internal_error` (the exception's type
only, never its message, which may hold input) and an `InternalError` the API answers as 500.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from broker.errors import BrokerError, InternalError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def recorded(action: str, record: Callable[[Any], Callable[..., None]]) -> Callable[[F], F]:
    """Wrap a use case whose first argument is the caller's identity; `record(self)` writes the refusal."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, identity, *args, **kwargs)
            except BrokerError:
                raise
            except Exception as exc:
                log.exception("use case %s failed unexpectedly", action)
                try:
                    record(self)(identity, action, code="internal_error", error=type(exc).__name__)
                except BrokerError as ledger_down:
                    log.error("could not record the failure of %s: %s", action, ledger_down.code)
                raise InternalError(f"{action} failed: {type(exc).__name__}") from exc

        return run  # type: ignore[return-value]

    return wrap

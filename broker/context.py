"""The request context: the request id and the caller's subject fingerprint of the request being served.

A contextvar set by the API's access middleware (broker/api/access.py). `run_in_threadpool` copies
the context into the pool thread, and the value is one mutable object, so what a use case notes
there (the verified subject) is seen by the middleware's access line. Threads that serve no request
(workers, the ledger writer) see None. Events capture the id when they are built
(broker/ledger/models.py), before they cross to the ledger writer's thread.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

# what we accept from a caller's X-Request-Id: short, printable, no spaces or quotes (safe in a log line)
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


@dataclass
class RequestContext:
    """One request's id and, once verified, its subject's fingerprint (never the subject's token)."""

    request_id: str
    subject_fp: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("broker_request", default=None)


def begin(offered: str | None) -> tuple[RequestContext, object]:
    """Start a request's context: the caller's id if well-formed, else a fresh one; returns (context, reset token)."""
    request_id = offered if offered and REQUEST_ID.fullmatch(offered) else "r_" + secrets.token_hex(12)
    context = RequestContext(request_id)
    return context, _current.set(context)


def end(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def current() -> RequestContext | None:
    return _current.get()


def request_id() -> str | None:
    context = _current.get()
    return context.request_id if context else None


def note_subject(subject_fp: str) -> None:
    """Record who the verified caller is (a fingerprint), for the access log line."""
    context = _current.get()
    if context is not None:
        context.subject_fp = subject_fp

"""The synchronous client: `Client(...).task("name")` gives grants back when the block exits."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx

from broker_client import _wire as wire
from broker_client.credential import Credential, Grant, TaskCompleted
from broker_client.dpop import DpopKey, process_key
from broker_client.errors import (
    BrokerClientError,
    CompletionFailed,
    IdentityUnavailable,
    TaskNotFound,
    TransportError,
)
from broker_client.identity import IdentitySource, StaticToken, from_env
from broker_client.signals import install_sigterm_exit
from broker_client.svid import ClientCertificate, tls_source

log = logging.getLogger("broker_client")


def resolve(identity: IdentitySource | str | None, dpop: DpopKey | bool) -> tuple[IdentitySource, DpopKey | None]:
    """The identity source (given, a raw token, or from the environment) and the DPoP key (per process)."""
    source = StaticToken(identity) if isinstance(identity, str) else identity or from_env()
    key = process_key() if dpop is True else (dpop or None)
    return source, key


class ClientBase:
    """What the sync and async clients share: address, identity, DPoP key, retry policy, HTTP client."""

    def __init__(
        self,
        url: str | None = None,
        identity: IdentitySource | str | None = None,
        *,
        dpop: DpopKey | bool = True,
        timeout: httpx.Timeout | float = wire.DEFAULT_TIMEOUT,
        retry: wire.Retry = wire.Retry(),
        transport: Any = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        verify: Any = None,
    ) -> None:
        """`cert`/`key` (or an SvidFiles identity): the client certificate is the identity (mutual TLS);
        `verify`: the broker's CA file, or False; default the system CAs (SvidFiles: its bundle.pem)."""
        self.url = wire.base_url(url)
        if cert is not None and identity is None:
            identity = ClientCertificate(cert, key)
        self.identity, self.dpop = resolve(identity, dpop)
        self.retry = retry
        self._tls, self._tls_version, self._verify = tls_source(self.identity), None, verify
        self._http_options = {"timeout": timeout, "transport": transport, "follow_redirects": False}
        self._http = self._new_http()

    _http_client: Any = httpx.Client

    def _new_http(self) -> Any:
        options: dict[str, Any] = dict(self._http_options)
        if self._tls is not None:
            self._tls_version = self._tls.version()
            options["verify"] = self._tls.ssl_context(self._verify)
        elif self._verify is not None:
            options["verify"] = self._verify
        return self._http_client(**options)

    def _rotated_http(self) -> Any:
        """A new pool when the certificate files changed (new handshakes present the new SVID), else None."""
        if self._tls is None or self._tls.version() == self._tls_version:
            return None
        old = self._http
        try:
            self._http = self._new_http()
        except IdentityUnavailable:  # files mid-rotation: keep the old certificate until the next call
            log.debug("client certificate files changing; retrying with the next call")
            return None
        return old


class Client(ClientBase):
    """Talks to one broker as one workload identity; DPoP proofs on every call unless `dpop=False`."""

    # --- grants and tasks ------------------------------------------------------------------

    def grant(self, task: str, boundary: str, scopes: Sequence[str] | str, ttl: Any = None) -> Credential:
        """One credential for one task at one boundary; retried like every call, under one Idempotency-Key."""
        body = wire.grant_body(task, boundary, scopes, ttl)
        # one Idempotency-Key per grant, the same on every retry: the broker answers a retry with the grant
        # it already issued (or supersedes it), so a lost answer never leaves a second live credential
        key = wire.idempotency_key()
        return wire.credential(self.call("POST", "/v1/grants", json=body, extra_headers={"Idempotency-Key": key}))

    def get(self, grant_id: str) -> Grant:
        return Grant.of(self.call("GET", f"/v1/grants/{wire.segment(grant_id)}"))

    def complete(self, grant_id: str) -> Grant:
        """Give one grant back now (idempotent)."""
        return Grant.of(self.call("POST", f"/v1/grants/{wire.segment(grant_id)}/complete"))

    def complete_task(self, task: str) -> TaskCompleted:
        """Give back every grant of a task (idempotent)."""
        return wire.task_completed(self.call("POST", f"/v1/tasks/{wire.segment(task)}/complete"))

    def task(self, name: str, *, unique: bool = True) -> Task:
        """A block whose grants are completed on exit; the id gets a random suffix unless `unique=False`."""
        return Task(self, wire.unique_task(name) if unique else name)

    # --- OAuth -----------------------------------------------------------------------------

    def tool_token(
        self, task: str, server: str, tool: str, *, arguments: dict[str, Any] | None = None, dpop: bool = False
    ) -> Credential:
        """A call token for one tool of one MCP server: ≤ 60 s, single use, in the ledger under `task`.

        `arguments` binds the token to these tool arguments (`args_sha256`). `dpop=True` binds it to this
        client's DPoP key; off by default because MCP clients send no DPoP proofs to the server.
        """
        form = wire.tool_call_form(self.identity.token(), task, server, tool, arguments)
        body = self.call("POST", "/oauth/token", form=form, idempotent=False, bind=dpop)
        return wire.call_token(body, task, server, tool)

    def delegate(
        self, task: str, parent: Credential, sub_agent: IdentitySource | str, scopes: Sequence[str] | str = (), *,
        ttl: Any = None, server: str | None = None, tool: str | None = None, arguments: dict[str, Any] | None = None,
    ) -> Credential:  # fmt: skip
        """A token for a sub-agent, derived from `parent` (RFC 8693 delegation, see `Task.delegate`)."""
        body = self.call("POST", "/oauth/token", idempotent=False, bind=parent.grant.dpop_bound,
                         form=wire.delegation_form(parent.token, actor_token(sub_agent), task, scopes, ttl,
                                                   wire.tool_call(server, tool, arguments)))  # fmt: skip
        return wire.exchanged(body, task, server or parent.grant.boundary)

    def transaction_token(
        self, subject: Credential | str, audience: str, scopes: Sequence[str] | str = (), *,
        details: dict[str, Any] | None = None, context: dict[str, Any] | None = None, replace: bool = False,
    ) -> Credential:  # fmt: skip
        """A transaction token for the trust domain `audience`, from a broker access token this workload
        holds (or received, as a gateway), or, with `replace=True` or a transaction-token Credential, the
        replacement of a transaction token (same `txn`, this workload added to the call chain).

        `scopes` default to a Credential subject's (the broker asks for them: give them with a token
        string); `details` becomes the token's `tctx`, `context` its `rctx`. It lives at most five
        minutes and never past its subject token.
        """
        token = subject.token if isinstance(subject, Credential) else subject
        scopes = scopes or (subject.grant.scopes if isinstance(subject, Credential) else ())
        replace = replace or (isinstance(subject, Credential) and subject.grant.backend == "txn_token")
        bind = isinstance(subject, Credential) and subject.grant.dpop_bound
        body = self.call("POST", "/oauth/token", idempotent=False, bind=bind,
                         form=wire.txn_token_form(token, audience, scopes, replace=replace, details=details,
                                                  context=context))  # fmt: skip
        task = subject.grant.task if isinstance(subject, Credential) else ""
        return wire.exchanged(body, task, audience, backend="txn_token")

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662; as the holder of a DPoP-bound token this sends a proof bound to it."""
        return self.call("POST", "/oauth/introspect", form={"token": token}, proof_token=token)

    def revoke_token(self, token: str) -> None:
        """RFC 7009: give a token back by value."""
        self.call("POST", "/oauth/revoke", form={"token": token}, proof_token=token)

    # --- transport -------------------------------------------------------------------------

    def call(
        self, method: str, path: str, *, idempotent: bool = True, proof_token: str | None = None,
        extra_headers: dict[str, str] | None = None, bind: bool = True, **body: Any
    ) -> Any:
        """One API call with identity and DPoP (unless `bind=False`); retried with backoff only when idempotent."""
        url = self.url + path
        old = self._rotated_http()
        if old is not None:
            old.close()
        key = self.dpop if bind else None
        for attempt in range(self.retry.attempts):
            headers = wire.headers(method, url, self.identity.token(), key, proof_token) | (extra_headers or {})
            try:
                response = self._http.request(method, url, headers=headers, data=body.get("form"), json=body.get("json"))
            except httpx.TransportError as exc:
                if not self.retry.allows(idempotent, attempt):
                    raise TransportError(f"{method} {path}: {type(exc).__name__}") from exc
            else:
                if response.status_code not in wire.RETRY_STATUSES or not self.retry.allows(idempotent, attempt):
                    return wire.answer(response)
            time.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def actor_token(sub_agent: IdentitySource | str) -> str:
    return sub_agent if isinstance(sub_agent, str) else sub_agent.token()


def latest_parent(task: TaskBase) -> Credential:
    """The task's latest token-carrying grant: what a delegation derives from by default."""
    for credential in reversed(task.credentials):
        if credential.type == "jwt":
            return credential
    raise BrokerClientError(f"task {task.id} holds no broker token to delegate from: grant one first, or pass parent=")


class TaskBase:
    """A task's id, its credentials, and whether anything was asked for (then exit completes it)."""

    def __init__(self, client: Any, task_id: str) -> None:
        self.client = client
        self.id = task_id
        self.credentials: list[Credential] = []
        self.result: TaskCompleted | None = None
        self.asked = False

    def _exit_failed(self, failure: BrokerClientError, ended_cleanly: bool) -> None:
        """After a clean block, failing to complete is an error; after an exception, a warning."""
        if ended_cleanly:
            raise CompletionFailed(f"task {self.id}: {failure}") from failure
        log.warning("task %s: grants not completed (%s); they expire at their TTL", self.id, failure)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} grants={len(self.credentials)}>"


class Task(TaskBase):
    """Grants of one unit of work; `with` completes them on success, exception, Ctrl-C or SIGTERM."""

    def grant(self, boundary: str, scopes: Sequence[str] | str, ttl: Any = None) -> Credential:
        self.asked = True  # even if the answer is lost, the broker may have issued: complete on exit
        credential = self.client.grant(self.id, boundary, scopes, ttl)
        self.credentials.append(credential)
        return credential

    def tool_token(
        self, server: str, tool: str, *, arguments: dict[str, Any] | None = None, dpop: bool = False
    ) -> Credential:
        """A call token for `tool` on the MCP server `server` (its canonical URI), under this task."""
        self.asked = True
        return self.client.tool_token(self.id, server, tool, arguments=arguments, dpop=dpop)

    def delegate(
        self, sub_agent: IdentitySource | str, scopes: Sequence[str] | str = (), *, parent: Credential | None = None,
        ttl: Any = None, server: str | None = None, tool: str | None = None, arguments: dict[str, Any] | None = None,
    ) -> Credential:  # fmt: skip
        """A token for a sub-agent (its identity token, or an identity source), derived from this task's grant.

        Its `sub` stays this workload's, its `act` names the sub-agent (and the chain before it); its
        scopes are those of `scopes` (default: the parent's) that both may have. `parent` defaults to
        the task's latest grant. `server` and `tool` make it a call token for one MCP tool. Ending this
        task ends it: the broker revokes every token derived from the task's grants.
        """
        self.asked = True
        return self.client.delegate(self.id, parent or latest_parent(self), sub_agent, scopes, ttl=ttl,
                                    server=server, tool=tool, arguments=arguments)  # fmt: skip

    def transaction_token(
        self, audience: str, scopes: Sequence[str] | str = (), *, parent: Credential | None = None,
        details: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
    ) -> Credential:  # fmt: skip
        """A transaction token (see `Client.transaction_token`) from this task's grant (`parent`, default the
        latest): it ends with that grant, so completing the task ends it too."""
        self.asked = True
        return self.client.transaction_token(parent or latest_parent(self), audience, scopes, details=details,
                                             context=context)  # fmt: skip

    def complete(self) -> TaskCompleted | None:
        """Give back every grant of the task (no call when nothing was asked for)."""
        if self.asked and self.result is None:
            try:
                self.result = self.client.complete_task(self.id)
            except TaskNotFound:  # the broker has no grant of this task: nothing to give back
                self.result = TaskCompleted(self.id, 0, 0, 0)
        return self.result

    def __enter__(self) -> Task:
        install_sigterm_exit()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.complete()
        except BrokerClientError as failure:
            self._exit_failed(failure, kind is None)

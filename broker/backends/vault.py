"""The one Vault/OpenBao client of the broker: build, log in, keep its own token fresh, translate errors.

Every call to Vault goes through `VaultClient.request`, the single place where hvac and transport
(urllib3, vault_http.py) exceptions become `BackendUnavailable` (or "already gone" answers become `None`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import hvac
import hvac.exceptions
import urllib3.exceptions

from broker.backends.vault_http import PooledAdapter
from broker.config import VaultConfig
from broker.errors import BackendUnavailable

log = logging.getLogger(__name__)
RENEW_AT_FRACTION = 2 / 3  # renew the broker's own token once two thirds of its TTL have passed


def build_hvac(config: VaultConfig) -> hvac.Client:
    """The hvac client with TLS, client certificate, namespace header, timeout and a keep-alive pool."""
    verify: bool | str = str(config.ca_file) if config.ca_file else config.tls_verify
    cert = (str(config.client_cert), str(config.client_key)) if config.client_cert and config.client_key else None
    return hvac.Client(url=config.addr, verify=verify, cert=cert, timeout=config.timeout, namespace=config.namespace,
                       adapter=PooledAdapter)  # fmt: skip


def _read_secret(value: str | None, path: Any, what: str) -> str:
    """The configured value, else the file's content read now (files are re-read at every login)."""
    if value:
        return value
    if path:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise AuthFailure("no_credentials", f"cannot read {what} from {path}: {exc.strerror}") from None
        if text:
            return text
    raise AuthFailure("no_credentials", f"vault auth needs {what}")


class AuthFailure(BackendUnavailable):
    """The broker's own Vault login or token failed; `reason` is one of AUTH_REASONS (a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Refused(BackendUnavailable):
    """Vault answered 403: our token is dead, or its policy does not allow the call."""


# why the broker's Vault auth failed: a closed set, so the metric's label cannot grow
AUTH_REASONS = ("login_refused", "token_refused", "unreachable", "no_credentials")
LOGIN_BACKOFF_MAX = 30.0  # seconds between login attempts at most while Vault refuses us


class VaultClient:
    """Logs in lazily (the broker starts even when Vault is down), renews before expiry, and logs in
    again (re-reading the secret-id, token or Kubernetes token file) when its token is refused.

    While login fails, calls fail fast with `backend_unavailable` and the next login is tried after
    an exponential backoff (1 s, 2 s, … `LOGIN_BACKOFF_MAX`), so a dead token costs Vault one login
    attempt per backoff step, not one per request. `auth_error` says why, for metrics and readiness.
    """

    def __init__(self, config: VaultConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.addr = config.addr
        self._hvac = build_hvac(config)
        self._clock = clock
        self._lock = threading.Lock()
        self._logged_in = False
        self._renew_at: float | None = None
        self._renewable = False
        self._ttl = 0
        self._token_file_stamp: tuple[int, int] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.auth_error: str | None = None  # the AUTH_REASONS entry of the current failure, None when fine
        self.listeners: list[Callable[[str], None]] = []  # told the reason of every auth failure

    # --- calls ------------------------------------------------------------------------------

    def read(self, path: str) -> dict[str, Any]:
        return self.request("GET", path) or {}

    def write(self, path: str, payload: dict[str, Any] | None = None, gone: Sequence[str] = ()) -> dict[str, Any] | None:
        return self.request("POST", path, payload, gone=gone)

    def write_as(self, token: str, path: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A call with another token of the broker's (a parent token, vault_parents.py): a 403 is that
        token's (dead, or its policy), raised as `Refused`; the broker's own session is not involved."""
        return self._call("POST", path, payload, (), token=token)

    def list(self, path: str) -> list[str]:
        """Keys under a path; an empty or missing folder is an empty list."""
        answer = self.request("LIST", path, gone=("",))
        return list(((answer or {}).get("data") or {}).get("keys") or [])

    def request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, gone: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """One Vault call; None when Vault answers 400/404 with one of the `gone` messages.

        A 403 is either our token dying under us (revoked, past its max TTL, rotated away) or our
        policy refusing this path. `lookup-self` tells them apart: a dead token means log in again
        and retry once; a live one means the 403 is the answer (`permission denied`).
        """
        self.ensure_session()
        token = self._hvac.token
        try:
            return self._call(method, path, payload, gone)
        except Refused:
            if self._token_alive(token):
                raise BackendUnavailable(f"vault {method} {path}: permission denied") from None
            self._drop(token, "token_refused", "vault refused the broker's token (revoked or expired)")
        self.ensure_session()
        return self._call(method, path, payload, gone)

    def _call(
        self, method: str, path: str, payload: dict[str, Any] | None, gone: Sequence[str], token: str | None = None
    ) -> dict[str, Any] | None:
        """The single translation of hvac/urllib3 exceptions into BackendUnavailable (403: `Refused`)."""
        headers = {"X-Vault-Token": token} if token else None
        try:
            answer = self._hvac.adapter.request(method, f"/v1/{path}", headers=headers, json=payload)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            if any(marker in str(exc) for marker in gone):
                return None
            raise BackendUnavailable(f"vault {method} {path}: {_brief(exc)}") from None
        except hvac.exceptions.Forbidden as exc:
            raise Refused(f"vault {method} {path}: {_brief(exc)}") from None
        except hvac.exceptions.VaultError as exc:
            raise BackendUnavailable(f"vault {method} {path}: {_brief(exc)}") from None
        except urllib3.exceptions.HTTPError as exc:  # what failed, not the wrapper (MaxRetryError of an SSLError)
            raise BackendUnavailable(f"vault {method} {path}: {type(getattr(exc, 'reason', None) or exc).__name__}") from None
        return answer if isinstance(answer, dict) else {}

    def _token_alive(self, token: str | None) -> bool:
        """True when Vault still accepts `token` (so a 403 was the policy's, not a dead token's)."""
        if token != self._hvac.token:
            return False  # another thread already replaced it: retry with the new one
        try:
            self._call("GET", "auth/token/lookup-self", None, ())
        except Refused:
            return False
        except BackendUnavailable:
            return True  # Vault is not answering: do not throw away a token that may be fine
        return True

    def ping(self) -> None:
        """Readiness: Vault answers and our token is valid (renewed when due)."""
        self.request("GET", "auth/token/lookup-self")

    # --- the broker's own token -------------------------------------------------------------

    def ensure_session(self) -> None:
        """Log in on first use (or after the token died); renew once two thirds of its TTL have passed.

        Every failure is a `BackendUnavailable` (an `AuthFailure` when Vault refused us), never a raw
        hvac or transport exception: callers record it as `backend_unavailable` and retry later.
        """
        if self._logged_in and not self._due() and not self._token_file_changed():
            return
        with self._lock:
            if self._logged_in and self._token_file_changed():
                self._logged_in = False  # a rotated token_file: use the new token now
            if self._logged_in and self._due():
                self._renew()
            if not self._logged_in:
                self._login_with_backoff()

    def _due(self) -> bool:
        return self._renew_at is not None and self._clock() >= self._renew_at

    def _token_file_changed(self) -> bool:
        return self.config.auth_method == "token" and not self.config.token and self._stamp() != self._token_file_stamp

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.config.token_file.stat() if self.config.token_file else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat else None

    def _drop(self, token: str | None, reason: str, detail: str) -> None:
        """Forget a token Vault refused (once, if no other thread replaced it yet), so the next call logs in."""
        with self._lock:
            if self._logged_in and token == self._hvac.token:
                self._logged_in = False
                self._note_failure(reason, detail, backoff=False)

    def _login_with_backoff(self) -> None:
        now = self._clock()
        if now < self._retry_at:
            raise AuthFailure(self.auth_error or "login_refused",
                              f"vault login failing ({self.auth_error}); next attempt in {self._retry_at - now:.0f}s")
        try:
            self._login()
        except BackendUnavailable as exc:
            reason = exc.reason if isinstance(exc, AuthFailure) else (
                "login_refused" if isinstance(exc, Refused) or "InvalidRequest" in exc.detail else "unreachable")
            self._note_failure(reason, exc.detail, backoff=True)
            raise AuthFailure(reason, exc.detail) from None
        if self.auth_error:
            log.warning("vault auth recovered: the broker logged in again (%s)", self.config.auth_method)
        self._logged_in, self._failures, self._retry_at, self.auth_error = True, 0, 0.0, None

    def _note_failure(self, reason: str, detail: str, *, backoff: bool) -> None:
        """One log line and one metric tick per failure, saying why (never the token or secret id)."""
        delay = 0.0
        if backoff:
            delay = min(LOGIN_BACKOFF_MAX, 2.0 ** self._failures)
            self._failures += 1
            self._retry_at = self._clock() + delay
        self.auth_error = reason
        log.warning("vault auth failing (%s): %s; next login attempt in %.0fs", reason, detail[:200], delay)
        for listener in self.listeners:
            listener(reason)

    def _login(self) -> None:
        if self.config.auth_method != "token":
            auth = (self._call("POST", *self._login_request(), gone=()) or {}).get("auth") or {}
            if not auth.get("client_token"):
                raise AuthFailure("login_refused", "vault login answered without a token")
            self._hvac.token = auth["client_token"]
            self._schedule(auth)
            return
        stamp = self._stamp()
        self._hvac.token = _read_secret(self.config.token, self.config.token_file, "a token or token_file")
        self._token_file_stamp = stamp
        try:
            data = (self._call("GET", "auth/token/lookup-self", None, ()) or {}).get("data") or {}
        except Refused:
            raise AuthFailure("token_refused", "vault refused the configured token (revoked or expired)") from None
        self._schedule({"lease_duration": data.get("ttl", 0), "renewable": data.get("renewable", False)})

    def _login_request(self) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        if cfg.auth_method == "approle":
            secret_id = _read_secret(cfg.secret_id, cfg.secret_id_file, "secret_id or secret_id_file")
            return f"auth/{cfg.auth_mount or 'approle'}/login", {"role_id": cfg.role_id, "secret_id": secret_id}
        jwt = _read_secret(None, cfg.kubernetes_token_file, "a Kubernetes service account token")
        return f"auth/{cfg.auth_mount or 'kubernetes'}/login", {"role": cfg.kubernetes_role, "jwt": jwt}

    def _schedule(self, auth: dict[str, Any]) -> None:
        self._ttl = int(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable"))
        self._renew_at = self._clock() + self._ttl * RENEW_AT_FRACTION if self._ttl > 0 else None

    def _renew(self) -> None:
        """Renew, or log in again when renewal is refused or capped by the token's max TTL.

        A renewal Vault does not answer keeps the token (it may still be valid) and is tried again
        after a short pause, so an outage does not turn every request into a renewal attempt.
        """
        can_login = self.config.auth_method != "token"
        if not self._renewable:
            if can_login:
                self._logged_in = False
            else:
                log.warning("the broker's Vault token is not renewable and will expire; rotate token_file in time")
                self._renew_at = None
            return
        previous = self._ttl
        try:
            answer = self._call("POST", "auth/token/renew-self", {}, ()) or {}
        except Refused:
            self._logged_in = False
            self._note_failure("token_refused", "vault refused to renew the broker's token", backoff=False)
            return
        except BackendUnavailable as exc:
            log.warning("renewing the broker's Vault token failed (%s); trying again shortly", exc.detail[:200])
            self._renew_at = self._clock() + min(LOGIN_BACKOFF_MAX, max(1.0, self._ttl / 10))
            return
        self._schedule(answer.get("auth") or {})
        if can_login and self._ttl < previous:
            self._logged_in = False  # capped by its max TTL: a fresh login instead of a dying token


def _brief(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None) or [str(exc)]
    return f"{type(exc).__name__}: {'; '.join(str(e) for e in errors)[:160]}"

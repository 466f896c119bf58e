"""The one Vault/OpenBao client of the broker: build, log in, keep its own token fresh, translate errors.

Every call to Vault goes through `VaultClient.request`, the single place where hvac and requests
exceptions become `BackendUnavailable` (or "already gone" answers become `None`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import hvac
import hvac.exceptions
import requests

from broker.config import VaultConfig
from broker.errors import BackendUnavailable

log = logging.getLogger(__name__)
RENEW_AT_FRACTION = 2 / 3  # renew the broker's own token once two thirds of its TTL have passed


def build_hvac(config: VaultConfig) -> hvac.Client:
    """The hvac client with TLS, client certificate, namespace header and timeout from config."""
    verify: bool | str = str(config.ca_file) if config.ca_file else config.tls_verify
    cert = (str(config.client_cert), str(config.client_key)) if config.client_cert and config.client_key else None
    return hvac.Client(url=config.addr, verify=verify, cert=cert, timeout=config.timeout, namespace=config.namespace)


def _read_secret(value: str | None, path: Any, what: str) -> str:
    if value:
        return value
    if path:
        return path.read_text().strip()
    raise BackendUnavailable(f"vault auth needs {what}")


class VaultClient:
    """Logs in lazily (the broker starts even when Vault is down) and renews or re-logs in before expiry."""

    def __init__(self, config: VaultConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.addr = config.addr
        self._hvac = build_hvac(config)
        self._clock = clock
        self._lock = threading.Lock()
        self._logged_in = False
        self._renew_at: float | None = None
        self._renewable = False

    # --- calls ------------------------------------------------------------------------------

    def read(self, path: str) -> dict[str, Any]:
        return self.request("GET", path) or {}

    def write(self, path: str, payload: dict[str, Any] | None = None, gone: Sequence[str] = ()) -> dict[str, Any] | None:
        return self.request("POST", path, payload, gone=gone)

    def list(self, path: str) -> list[str]:
        """Keys under a path; an empty or missing folder is an empty list."""
        answer = self.request("LIST", path, gone=("",))
        return list(((answer or {}).get("data") or {}).get("keys") or [])

    def request(
        self, method: str, path: str, payload: dict[str, Any] | None = None, gone: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """One Vault call; None when Vault answers 400/404 with one of the `gone` messages."""
        self.ensure_session()
        try:
            return self._call(method, path, payload, gone)
        except hvac.exceptions.Forbidden:
            if self.config.auth_method == "token":
                raise BackendUnavailable(f"vault {method} {path}: permission denied") from None
            self._relogin()  # our token may have expired under us: log in again once
            return self._call(method, path, payload, gone)

    def _call(self, method: str, path: str, payload: dict[str, Any] | None, gone: Sequence[str]) -> dict[str, Any] | None:
        """The single translation of hvac/requests exceptions (except Forbidden, handled by `request`)."""
        try:
            answer = self._hvac.adapter.request(method, f"/v1/{path}", json=payload)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            if any(marker in str(exc) for marker in gone):
                return None
            raise BackendUnavailable(f"vault {method} {path}: {_brief(exc)}") from None
        except hvac.exceptions.Forbidden:
            raise
        except hvac.exceptions.VaultError as exc:
            raise BackendUnavailable(f"vault {method} {path}: {_brief(exc)}") from None
        except requests.RequestException as exc:
            raise BackendUnavailable(f"vault {method} {path}: {type(exc).__name__}") from None
        return answer if isinstance(answer, dict) else {}

    def ping(self) -> None:
        """Readiness: Vault answers and our token is valid (renewed when due)."""
        self.request("GET", "auth/token/lookup-self")

    # --- the broker's own token -------------------------------------------------------------

    def ensure_session(self) -> None:
        """Log in on first use; renew (or log in again) once the token is two thirds through its TTL."""
        if self._logged_in and (self._renew_at is None or self._clock() < self._renew_at):
            return
        with self._lock:
            if not self._logged_in:
                self._login()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._renew()

    def _relogin(self) -> None:
        with self._lock:
            self._login()

    def _login(self) -> None:
        auth = self._call("POST", *self._login_request(), gone=()) if self.config.auth_method != "token" else None
        if auth is not None:
            self._hvac.token = auth["auth"]["client_token"]
            self._schedule(auth["auth"])
        else:
            self._hvac.token = _read_secret(self.config.token, self.config.token_file, "a token or token_file")
            data = (self._call("GET", "auth/token/lookup-self", None, ()) or {}).get("data") or {}
            self._schedule({"lease_duration": data.get("ttl", 0), "renewable": data.get("renewable", False)})
        self._logged_in = True

    def _login_request(self) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        if cfg.auth_method == "approle":
            secret_id = _read_secret(cfg.secret_id, cfg.secret_id_file, "secret_id or secret_id_file")
            return f"auth/{cfg.auth_mount or 'approle'}/login", {"role_id": cfg.role_id, "secret_id": secret_id}
        jwt = _read_secret(None, cfg.kubernetes_token_file, "a Kubernetes service account token")
        return f"auth/{cfg.auth_mount or 'kubernetes'}/login", {"role": cfg.kubernetes_role, "jwt": jwt}

    def _schedule(self, auth: dict[str, Any]) -> None:
        ttl = int(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable"))
        self._renew_at = self._clock() + ttl * RENEW_AT_FRACTION if ttl > 0 else None

    def _renew(self) -> None:
        if self._renewable:
            answer = self._call("POST", "auth/token/renew-self", {}, ()) or {}
            self._schedule(answer.get("auth") or {})
        elif self.config.auth_method != "token":
            self._login()
        else:
            log.warning("the broker's Vault token is not renewable and will expire; give it a renewable token")
            self._renew_at = None


def _brief(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None) or [str(exc)]
    return f"{type(exc).__name__}: {'; '.join(str(e) for e in errors)[:160]}"

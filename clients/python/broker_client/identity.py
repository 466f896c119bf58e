"""Identity sources: where the workload's attested identity token comes from.

Each source has `token() -> str`, cheap to call before every request: file sources re-read the file when
it changes (Kubernetes rotates projected tokens), fetched sources cache the token until shortly before
its `exp`.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import httpx

from broker_client.errors import IdentityUnavailable

KUBERNETES_PATHS = ("/var/run/secrets/tokens/broker", "/var/run/secrets/kubernetes.io/serviceaccount/token")
DEFAULT_AUDIENCE = "broker"
REFRESH_MARGIN = 60  # seconds before `exp` a cached token is fetched again
MAX_TOKEN_BYTES = 16_384


class IdentitySource(Protocol):
    """Anything that hands out the current identity token."""

    kind: str

    def token(self) -> str: ...


def expiry(token: str) -> float | None:
    """The `exp` of a JWT, read without verification (only to know when to fetch again)."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))).get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError):
        return None


def _clean(raw: str, where: str) -> str:
    token = raw.strip()
    if not token or len(token) > MAX_TOKEN_BYTES:
        raise IdentityUnavailable(f"{where}: no usable token")
    return token


class StaticToken:
    """A fixed token (tests, or `BROKER_IDENTITY_TOKEN`)."""

    kind = "static"

    def __init__(self, token: str) -> None:
        self._token = _clean(token, "static token")

    def token(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(...)"


class TokenFile:
    """A token in a file that another process rotates: re-read whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str], kind: str = "file") -> None:
        self.path = Path(path)
        self.kind = kind
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self._lock = threading.Lock()

    def token(self) -> str:
        try:
            info = os.stat(self.path)  # follows the ..data symlink Kubernetes swaps on rotation
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            with self._lock:
                if stamp != self._stamp:
                    self._token = _clean(self.path.read_text(), str(self.path))
                    self._stamp = stamp
                return self._token
        except OSError as exc:
            raise IdentityUnavailable(f"{self.path}: {exc.strerror}") from None

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, kind={self.kind!r})"


def kubernetes(path: str | os.PathLike[str] | None = None) -> TokenFile:
    """A Kubernetes projected service-account token (audience set in the pod spec)."""
    found = path or next((p for p in KUBERNETES_PATHS if os.path.exists(p)), KUBERNETES_PATHS[0])
    return TokenFile(found, kind="kubernetes")


def spiffe_jwt_svid(path: str | os.PathLike[str]) -> TokenFile:
    """A SPIFFE JWT-SVID written to a file by spiffe-helper (`jwt_svids` → `jwt_svid_file_name`)."""
    return TokenFile(path, kind="spiffe")


class _Fetched:
    """Caches a fetched token until REFRESH_MARGIN before its `exp`."""

    kind = "fetched"

    def __init__(self) -> None:
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                token = _clean(self._fetch(), self.kind)
                exp = expiry(token)
                self._token = token
                self._refresh_at = (exp - REFRESH_MARGIN) if exp else 0.0
            return self._token

    def _fetch(self) -> str:
        raise NotImplementedError


class GitHubActions(_Fetched):
    """GitHub Actions OIDC: ask the runner (`ACTIONS_ID_TOKEN_REQUEST_URL`) for a token with our audience."""

    kind = "github_actions"

    def __init__(
        self, audience: str = DEFAULT_AUDIENCE, request_url: str | None = None, request_token: str | None = None,
        timeout: float = 10.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.audience = audience
        self._url = request_url or os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
        self._bearer = request_token or os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
        self._timeout = timeout
        if not self._url or not self._bearer:
            raise IdentityUnavailable("GitHub Actions: set `permissions: id-token: write` for this job")

    def _fetch(self) -> str:
        try:
            # the runner's URL already has `api-version`: add the audience, never replace the query
            url = httpx.URL(self._url).copy_merge_params({"audience": self.audience})
            answer = httpx.get(
                url, timeout=self._timeout,
                headers={"Authorization": f"Bearer {self._bearer}", "Accept": "application/json"},
            )  # fmt: skip
            answer.raise_for_status()
            return str(answer.json()["value"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise IdentityUnavailable(f"GitHub Actions token request failed: {type(exc).__name__}") from None

    def __repr__(self) -> str:
        return f"GitHubActions(audience={self.audience!r})"


class Command(_Fetched):
    """A command whose stdout is the token (a credential helper); run again when the token nears `exp`."""

    kind = "command"

    def __init__(self, argv: Sequence[str] | str, timeout: float = 30.0) -> None:
        super().__init__()
        self.argv = shlex.split(argv) if isinstance(argv, str) else list(argv)
        self._timeout = timeout

    def _fetch(self) -> str:
        try:
            done = subprocess.run(self.argv, capture_output=True, text=True, timeout=self._timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise IdentityUnavailable(f"identity command failed: {type(exc).__name__}") from None
        if done.returncode != 0:
            raise IdentityUnavailable(f"identity command exited with {done.returncode}")
        return done.stdout

    def __repr__(self) -> str:
        return f"Command({self.argv[:1]!r}...)"


def from_env(environ: Mapping[str, str] | None = None) -> IdentitySource:
    """Pick the identity source from the environment, most explicit first."""
    env = os.environ if environ is None else environ
    audience = env.get("BROKER_AUDIENCE", DEFAULT_AUDIENCE)
    if env.get("BROKER_IDENTITY_TOKEN"):
        return StaticToken(env["BROKER_IDENTITY_TOKEN"])
    if env.get("BROKER_IDENTITY_COMMAND"):
        return Command(env["BROKER_IDENTITY_COMMAND"])
    if env.get("BROKER_IDENTITY_FILE"):
        return TokenFile(env["BROKER_IDENTITY_FILE"])
    if env.get("ACTIONS_ID_TOKEN_REQUEST_URL") and env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN"):
        return GitHubActions(audience, env["ACTIONS_ID_TOKEN_REQUEST_URL"], env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"])
    if env.get("BROKER_SPIFFE_JWT_FILE"):
        return spiffe_jwt_svid(env["BROKER_SPIFFE_JWT_FILE"])
    if env.get("BROKER_K8S_TOKEN_FILE"):
        return kubernetes(env["BROKER_K8S_TOKEN_FILE"])
    if any(os.path.exists(p) for p in KUBERNETES_PATHS):
        return kubernetes()
    raise IdentityUnavailable(
        "no identity source: set BROKER_IDENTITY_TOKEN, BROKER_IDENTITY_COMMAND, BROKER_IDENTITY_FILE, "
        "BROKER_SPIFFE_JWT_FILE or BROKER_K8S_TOKEN_FILE, or run in GitHub Actions or Kubernetes"
    )

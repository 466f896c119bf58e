"""The broker's operator API over HTTP, as the CLI calls it; problem+json answers become a message and exit code."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli.output import FAILED, NOT_AUTHORISED, UNREACHABLE, USAGE, fail

if TYPE_CHECKING:
    import httpx


class Remote:
    """One broker at `url`, called with an operator identity token; connects on the first call."""

    def __init__(self, url: str, token_file: Path | None, token_command: str | None, env_token: str) -> None:
        self.url = url.rstrip("/")
        self._token_source = (token_file, token_command, env_token)
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        import httpx  # here, not at import: every `broker` command would pay for it

        if self._http is None:
            token = identity_token(*self._token_source)
            self._http = httpx.Client(base_url=self.url, timeout=30.0, headers={"Authorization": f"Bearer {token}"})
        return self._http

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the broker at {self.url}: {type(exc).__name__}", UNREACHABLE)
        if answer.status_code >= 400:
            body = _json_or_empty(answer)
            fail(f"{answer.status_code} {body.get('code', 'error')}: {body.get('detail') or body.get('title', '')}",
                 exit_code(answer.status_code))  # fmt: skip
        return answer.json()

    def lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        import httpx

        try:
            yield from self._lines(path, params)
        except httpx.TransportError as exc:
            fail(f"cannot reach the broker at {self.url}: {type(exc).__name__}", UNREACHABLE)

    def _lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        with self.http.stream("GET", path, params=params, headers={"Accept": "application/x-ndjson"}) as answer:
            if answer.status_code >= 400:
                answer.read()
                fail(f"{answer.status_code} {_json_or_empty(answer).get('code', 'error')}", exit_code(answer.status_code))
            yield from answer.iter_lines()


def exit_code(status: int) -> int:
    """401/403: not authorised; 400/422: the values given were refused (usage); anything else failed."""
    if status in (401, 403):
        return NOT_AUTHORISED
    return USAGE if status in (400, 422) else FAILED


def identity_token(token_file: Path | None, token_command: str | None, env_token: str) -> str:
    """The operator's identity token: the file, the command's output, or BROKER_IDENTITY_TOKEN."""
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            fail(f"--token-file {token_file}: {exc.strerror}")
    if token_command:
        done = subprocess.run(shlex.split(token_command), capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            fail(f"--token-command exited {done.returncode}")
        return done.stdout.strip()
    if not env_token.strip():
        fail("no identity token: set BROKER_IDENTITY_TOKEN, or pass --token-file or --token-command")
    return env_token.strip()


def _json_or_empty(answer: httpx.Response) -> dict[str, Any]:
    try:
        return answer.json()
    except ValueError:
        return {}

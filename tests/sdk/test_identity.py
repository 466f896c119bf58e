"""Every identity source against the real broker: the subject the broker records is the source's."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from broker_client import Client, Command, GitHubActions, IdentityUnavailable, StaticToken, TokenFile, from_env
from broker_client import identity as sources

RUNNER_BEARER = "runner-request-token"


class FakeRunner:
    """The GitHub Actions runner's token endpoint on loopback: checks its bearer, signs for the asked audience."""

    def __init__(self, issuers) -> None:  # noqa: ANN001
        self.audiences: list[str] = []
        runner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                query = parse_qs(urlparse(self.path).query)
                if self.headers.get("Authorization") != f"Bearer {RUNNER_BEARER}" or "api-version" not in query:
                    self.send_response(401)
                    self.end_headers()
                    return
                audience = query.get("audience", ["https://github.com/acme"])[0]
                runner.audiences.append(audience)
                body = json.dumps({"value": issuers.gha.github_token(aud=audience)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/_apis/token?api-version=2.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def runner(issuers) -> Iterator[FakeRunner]:  # noqa: ANN001
    made = FakeRunner(issuers)
    yield made
    made.server.shutdown()


def _subject_of(live, source) -> str:  # noqa: ANN001
    with Client(live.url, source, dpop=False) as client, client.task("who") as task:
        cred = task.grant(*_boundary_for(source))
        return live.grant(cred.grant_id).subject


def _boundary_for(source) -> tuple[str, list[str]]:  # noqa: ANN001
    return ("payments", ["read"]) if isinstance(source, Command) else ("orders", ["read"])


def test_github_actions_token_is_requested_from_the_runner_with_the_broker_audience(live, runner) -> None:
    env = {"ACTIONS_ID_TOKEN_REQUEST_URL": runner.url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": RUNNER_BEARER}
    source = from_env(env)
    assert isinstance(source, GitHubActions)
    assert _subject_of(live, source) == "repo:acme/api:ref:refs/heads/main"
    source.token()
    assert runner.audiences == ["broker"]  # cached until near exp: one request for two uses


def test_github_actions_without_id_token_permission_is_a_clear_error() -> None:
    with pytest.raises(IdentityUnavailable, match="id-token: write"):
        GitHubActions(request_url="", request_token="")


def _project(folder: Path, token: str) -> None:
    """Write the token the way the kubelet does: a new ..data dir swapped in by symlink rename."""
    data = folder / f"..{os.urandom(4).hex()}"
    data.mkdir()
    (data / "token").write_text(token)
    link = folder / "..data_tmp"
    link.symlink_to(data.name)
    link.rename(folder / "..data")
    if not (folder / "token").exists():
        (folder / "token").symlink_to("..data/token")


def test_kubernetes_projected_token_is_reread_when_it_rotates(live, issuers, tmp_path) -> None:
    _project(tmp_path, issuers.k8s.k8s_token("payments", "worker"))
    source = from_env({"BROKER_K8S_TOKEN_FILE": str(tmp_path / "token")})
    assert source.kind == "kubernetes"
    with Client(live.url, source, dpop=False) as client, client.task("rotating") as task:
        first = task.grant("orders", ["read"], ttl=60)
        _project(tmp_path, issuers.k8s.k8s_token("payments", "reindexer"))
        second = task.grant("orders", ["read"], ttl=60)
    assert live.grant(first.grant_id).subject == "system:serviceaccount:payments:worker"
    assert live.grant(second.grant_id).subject == "system:serviceaccount:payments:reindexer"


def test_spiffe_jwt_svid_file(live, issuers, tmp_path) -> None:
    svid = tmp_path / "jwt_svid.token"
    svid.write_text(issuers.spiffe.spiffe_token("spiffe://acme.internal/ns/payments/sa/worker") + "\n")
    source = from_env({"BROKER_SPIFFE_JWT_FILE": str(svid)})
    assert source.kind == "spiffe"
    assert _subject_of(live, source) == "spiffe://acme.internal/ns/payments/sa/worker"


def test_command_stdout_is_the_token(live, issuers, tmp_path) -> None:
    helper = tmp_path / "token.txt"
    helper.write_text(issuers.oidc.token(sub="agent-7"))
    source = from_env({"BROKER_IDENTITY_COMMAND": f"{sys.executable} -c 'print(open(\"{helper}\").read())'"})
    assert isinstance(source, Command)
    assert _subject_of(live, source) == "agent-7"


def test_static_token_from_env(live, issuers) -> None:
    source = from_env({"BROKER_IDENTITY_TOKEN": issuers.worker()})
    assert isinstance(source, StaticToken) and "ey" not in repr(source)
    assert _subject_of(live, source) == "system:serviceaccount:payments:worker"


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"BROKER_IDENTITY_TOKEN": "a.b.c", "BROKER_IDENTITY_COMMAND": "x", "BROKER_K8S_TOKEN_FILE": "/f"}, "static"),
        ({"BROKER_IDENTITY_COMMAND": "x", "ACTIONS_ID_TOKEN_REQUEST_URL": "u", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t"}, "command"),
        ({"BROKER_IDENTITY_FILE": "/f", "BROKER_SPIFFE_JWT_FILE": "/s"}, "file"),
        ({"ACTIONS_ID_TOKEN_REQUEST_URL": "u", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t", "BROKER_SPIFFE_JWT_FILE": "/s"}, "github_actions"),
        ({"ACTIONS_ID_TOKEN_REQUEST_URL": "u", "BROKER_SPIFFE_JWT_FILE": "/s"}, "spiffe"),
        ({"BROKER_K8S_TOKEN_FILE": "/k"}, "kubernetes"),
    ],
    ids=["static-first", "command-over-github", "file-over-spiffe", "github-over-spiffe", "github-needs-both", "k8s"],
)
def test_source_is_picked_from_the_environment_most_explicit_first(env, kind) -> None:
    assert from_env(env).kind == kind


def test_no_source_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(sources, "KUBERNETES_PATHS", ("/nonexistent/token",))
    with pytest.raises(IdentityUnavailable, match="BROKER_IDENTITY_TOKEN"):
        from_env({})


def test_a_missing_or_empty_token_file_is_refused_before_any_call(tmp_path) -> None:
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(IdentityUnavailable):
            TokenFile(path).token()

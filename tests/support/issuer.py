"""A real OIDC issuer on loopback for tests: real keys, a real JWKS over HTTP, tokens signed on demand.

Usage::

    from tests.support.issuer import TestIssuer, oidc_issuer  # oidc_issuer is a ready pytest fixture

    with TestIssuer() as issuer:
        config = issuer.attestor_config(preset="kubernetes")      # AttestorConfig using discovery
        token = issuer.k8s_token("payments", "worker")            # aud="broker" by default
        identity = Attestors([config]).verify(token)

`issuer.token(sub=..., aud=..., alg="ES256", kid=None, lifetime=300, headers=None, **claims)` signs
with the issuer's RSA-2048 (RS*/PS*), EC P-256 (ES256) or Ed25519 (EdDSA) key. A claim passed as
None is left out (`issuer.token(sub=None)` has no sub). `serve_mode` makes every endpoint misbehave:
"normal", "slow" (waits `slow_seconds` before answering), "huge" (streams `huge_bytes` of JSON with
no Content-Length), "html" (a 200 text/html page), "error" (HTTP 503), "redirect" (302 to
`redirect_to`, by default the same document). `fetch_count` counts JWKS
requests, `discovery_count` discovery requests. `rotate()` replaces every key (new kids); `reset()`
restores normal serving and zeroes the counters so a module-scoped issuer can serve many tests.
`TestIssuer(tls=(cert.pem, key.pem))` serves HTTPS (as the Kubernetes API server does in-cluster);
with `bearer` set, discovery and JWKS answer 401 unless `Authorization: Bearer <bearer>` is sent;
`authorizations` lists the Authorization headers received.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from broker.config import AttestorConfig

ServeMode = Literal["normal", "slow", "huge", "html", "error", "redirect"]
DEFAULT_AUDIENCE = "broker"


@dataclass(frozen=True)
class SigningKey:
    """A private key of the issuer, with its kid and the JWK of its public half."""

    kid: str
    private: Any
    jwk: dict[str, Any]


def _new_keys() -> dict[str, SigningKey]:
    """One key per family, keyed by family: "RSA", "EC", "OKP"."""
    stamp = uuid.uuid4().hex[:8]
    made = {
        "RSA": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm, None),
        "EC": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm, "ES256"),
        "OKP": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm, "EdDSA"),
    }
    keys = {}
    for family, (private, algorithm, alg) in made.items():
        kid = f"{family.lower()}-{stamp}"
        jwk = {**algorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig"}
        if alg:  # RSA stays un-pinned so one key serves RS256 and PS256 tests
            jwk["alg"] = alg
        keys[family] = SigningKey(kid=kid, private=private, jwk=jwk)
    return keys


def family_of(alg: str) -> str:
    """Which of the issuer's keys signs `alg`."""
    if alg.startswith(("RS", "PS")):
        return "RSA"
    return {"ES256": "EC", "EdDSA": "OKP"}.get(alg, "EC")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """Serialise any header/payload/signature as a compact JWS, for forging attack tokens by hand."""
    parts = (json.dumps(header).encode(), json.dumps(payload).encode(), signature)
    return ".".join(b64url(part) for part in parts)


class TestIssuer:
    """A real OIDC issuer on 127.0.0.1 with a free port, served from a daemon thread."""

    __test__ = False  # not a test class, despite the name

    def __init__(
        self, *, slow_seconds: float = 2.0, huge_bytes: int = 2 * 1024 * 1024, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.serve_mode: ServeMode = "normal"
        self.slow_seconds = slow_seconds
        self.huge_bytes = huge_bytes
        self.redirect_to: str | None = None
        self.discovery_overrides: dict[str, Any] = {}  # e.g. {"jwks_uri": "http://elsewhere/"}
        self.fetch_count = 0
        self.discovery_count = 0
        self.bearer: str | None = None
        self.authorizations: list[str | None] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.keys = _new_keys()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a "slow" handler must not hold up close()
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"
        self.jwks_uri = self.url + "/jwks.json"
        # A short poll interval keeps close() (server.shutdown) fast: tests start many issuers.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="test-issuer", daemon=True
        )
        self._thread.start()

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> TestIssuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        """Back to serving normally with zeroed counters (keys are kept), to share one issuer across tests."""
        self.serve_mode, self.redirect_to, self.discovery_overrides = "normal", None, {}
        with self._lock:
            self.fetch_count = self.discovery_count = 0

    # --- keys ------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document as served."""
        return {"keys": [key.jwk for key in self.keys.values()]}

    def kid(self, alg: str = "ES256") -> str:
        return self.keys[family_of(alg)].kid

    def rotate(self) -> dict[str, SigningKey]:
        """Replace every key (new kids); the old ones disappear from the JWKS. Returns the old keys."""
        old, self.keys = self.keys, _new_keys()
        return old

    def discovery(self) -> dict[str, Any]:
        doc = {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
        }
        return {**doc, **self.discovery_overrides}

    # --- tokens ----------------------------------------------------------------------------

    def claims(
        self, sub: str | None = "workload", aud: Any = DEFAULT_AUDIENCE, lifetime: int = 300,
        now: float | None = None, **claims: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Default claims (iss, sub, aud, iat, nbf, exp, jti) merged with `claims`; None drops one."""
        issued = int(time.time() if now is None else now)
        base = {
            "iss": self.url, "sub": sub, "aud": aud, "iat": issued, "nbf": issued,
            "exp": issued + lifetime, "jti": uuid.uuid4().hex,
        }  # fmt: skip
        merged = {**base, **claims}
        return {name: value for name, value in merged.items() if value is not None}

    def token(
        self,
        sub: str | None = "workload",
        aud: Any = DEFAULT_AUDIENCE,
        alg: str = "ES256",
        kid: str | None = None,
        lifetime: int = 300,
        headers: dict[str, Any] | None = None,
        *,
        signing_key: Any = None,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A token signed for real. `kid` overrides the header only; `signing_key` overrides the key."""
        key = self.keys[family_of(alg)]
        header = {"kid": kid or key.kid, **(headers or {})}
        payload = self.claims(sub=sub, aud=aud, lifetime=lifetime, now=now, **claims)
        return jwt.encode(payload, signing_key or key.private, algorithm=alg, headers=header)

    def k8s_token(
        self, namespace: str = "default", sa: str = "default", aud: Any = DEFAULT_AUDIENCE,
        pod: str | None = "pod-1", alg: str = "RS256", **extra: Any,
    ) -> str:  # fmt: skip
        """A projected service-account token as the Kubernetes API server mints it."""
        k8s: dict[str, Any] = {"namespace": namespace, "serviceaccount": {"name": sa, "uid": str(uuid.uuid4())}}
        if pod:
            k8s["pod"] = {"name": pod, "uid": str(uuid.uuid4())}
        extra.setdefault("kubernetes.io", k8s)
        return self.token(sub=f"system:serviceaccount:{namespace}:{sa}", aud=aud, alg=alg, **extra)

    def github_token(
        self, repository: str = "acme/api", ref: str = "refs/heads/main", aud: Any = DEFAULT_AUDIENCE,
        alg: str = "RS256", **extra: Any,
    ) -> str:  # fmt: skip
        """A GitHub Actions OIDC token; pass environment="prod" for an environment-scoped subject."""
        env = extra.get("environment")
        sub = f"repo:{repository}:environment:{env}" if env else f"repo:{repository}:ref:{ref}"
        defaults = {
            "repository": repository, "repository_owner": repository.split("/")[0], "ref": ref,
            "ref_type": "branch", "sha": "0" * 40, "workflow": "ci", "actor": "octocat", "event_name": "push",
            "job_workflow_ref": f"{repository}/.github/workflows/ci.yml@{ref}", "run_id": "1",
        }  # fmt: skip
        return self.token(**{"sub": sub, "aud": aud, "alg": alg, **defaults, **extra})

    def spiffe_token(self, spiffe_id: str, aud: Any = DEFAULT_AUDIENCE, alg: str = "ES256", **extra: Any) -> str:
        """A JWT-SVID for `spiffe_id`."""
        return self.token(sub=spiffe_id, aud=aud, alg=alg, **extra)

    # --- config ----------------------------------------------------------------------------

    def attestor_config(
        self, preset: str = "oidc", name: str | None = None, source: str = "discovery", **overrides: Any
    ) -> AttestorConfig:
        """An AttestorConfig trusting this issuer. source: "discovery" | "jwks_uri" (jwks_file: pass it)."""
        fields: dict[str, Any] = {
            "name": name or preset.replace("_", "-"),
            "preset": preset,
            "issuer": self.url,
            "audiences": [DEFAULT_AUDIENCE],
            "algorithms": ["RS256", "PS256", "ES256", "EdDSA"],
        }
        if source == "jwks_uri":
            fields["jwks_uri"] = self.jwks_uri
        if preset == "spiffe_jwt":
            fields["trust_domain"] = "acme.internal"
        return AttestorConfig(**{**fields, **overrides})

    # --- serving ---------------------------------------------------------------------------

    def _count(self, path: str) -> None:
        with self._lock:
            if path == "/jwks.json":
                self.fetch_count += 1
            else:
                self.discovery_count += 1

    def _wait(self, seconds: float) -> None:
        self._closing.wait(seconds)


def _handler_for(issuer: TestIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            documents = {"/jwks.json": issuer.jwks, "/.well-known/openid-configuration": issuer.discovery}
            if self.path not in documents:
                return self._send(404, b"{}", "application/json")
            issuer._count(self.path)
            issuer.authorizations.append(self.headers.get("Authorization"))
            if issuer.bearer is not None and self.headers.get("Authorization") != f"Bearer {issuer.bearer}":
                return self._send(401, b'{"kind":"Status","code":401}', "application/json")
            mode = issuer.serve_mode
            try:
                if mode == "slow":
                    issuer._wait(issuer.slow_seconds)
                if mode == "html":
                    return self._send(200, b"<html><body>Sign in</body></html>", "text/html")
                if mode == "error":
                    return self._send(503, b"{}", "application/json")
                if mode == "redirect":
                    return self._redirect(issuer.redirect_to or issuer.url + self.path)
                if mode == "huge":
                    return self._stream_huge()
                self._send(200, json.dumps(documents[self.path]()).encode(), "application/json")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading, as it should for slow or huge answers

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _stream_huge(self) -> None:
            # No Content-Length: the client must count bytes as they arrive and stop on its own.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"keys": [], "padding": "')
            chunk, sent = b"A" * 65_536, 0
            while sent < issuer.huge_bytes and not issuer._closing.is_set():
                self.wfile.write(chunk)
                sent += len(chunk)
            self.wfile.write(b'"}')

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean

    return Handler


@pytest.fixture
def oidc_issuer() -> Iterator[TestIssuer]:
    """A running TestIssuer for one test; import it into a test module to use it."""
    with TestIssuer() as issuer:
        yield issuer

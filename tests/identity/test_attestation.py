"""Attestation against a real loopback OIDC issuer: happy paths per preset and key source, every attack."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from broker.config import AttestorConfig
from broker.errors import ConfigError, InvalidIdentity
from broker.fingerprint import fingerprint as token_fingerprint
from broker.identity import MAX_TOKEN_BYTES, Attestors, Identity
from broker.identity.jwks import JwksError, parse_jwks
from tests.support.issuer import TestIssuer, b64url, compact

BROKER_ISSUER = "http://127.0.0.1:1/broker"


class FakeClock:
    """Wall clock frozen at creation, moved only by `advance`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def attacker() -> Iterator[TestIssuer]:
    """Another real issuer whose keys the broker does not trust."""
    with TestIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def _tampered() -> Iterator[TestIssuer]:
    with TestIssuer(slow_seconds=3.0) as running:
        yield running


@pytest.fixture
def fresh(_tampered: TestIssuer) -> TestIssuer:
    """An issuer that tests may rotate or make misbehave: reset to normal, counters zero, before each."""
    _tampered.reset()
    return _tampered


@pytest.fixture
def make() -> Iterator[Callable[..., Attestors]]:
    built: list[Attestors] = []

    def build(*configs: AttestorConfig, clock: Callable[[], float] = time.time) -> Attestors:
        attestors = Attestors(list(configs), broker_issuer=BROKER_ISSUER, clock=clock)
        built.append(attestors)
        return attestors

    yield build
    for attestors in built:
        attestors.close()


@pytest.fixture(scope="module")
def strict(issuer: TestIssuer) -> Iterator[Attestors]:
    """The generic OIDC attestor for the attack table (jwks_uri, leeway 30 s, lifetime cap 1 h)."""
    config = issuer.attestor_config("oidc", source="jwks_uri", max_token_lifetime=3600)
    attestors = Attestors([config], broker_issuer=BROKER_ISSUER)
    yield attestors
    attestors.close()


def _write_jwks(path: Path, jwks: dict[str, Any]) -> None:
    """Atomic replace, as a config-management tool would do it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jwks))
    os.replace(tmp, path)


def refused(attestors: Attestors, token: str, match: str | None = None) -> InvalidIdentity:
    with pytest.raises(InvalidIdentity, match=match) as info:
        attestors.verify(token)
    assert token not in str(info.value) and token not in repr(info.value.context)
    return info.value


# --- happy paths ---------------------------------------------------------------------------


def _k8s(issuer: TestIssuer, tmp: Path) -> tuple[AttestorConfig, str]:
    return issuer.attestor_config("kubernetes"), issuer.k8s_token("payments", "worker", pod="worker-7d9")


def _github(issuer: TestIssuer, tmp: Path) -> tuple[AttestorConfig, str]:
    return issuer.attestor_config("github_actions", source="jwks_uri"), issuer.github_token("acme/api")


def _github_env(issuer: TestIssuer, tmp: Path) -> tuple[AttestorConfig, str]:
    return issuer.attestor_config("github_actions"), issuer.github_token("acme/api", environment="prod")


def _spiffe_file(issuer: TestIssuer, tmp: Path) -> tuple[AttestorConfig, str]:
    path = tmp / "jwks.json"
    _write_jwks(path, issuer.jwks())
    config = issuer.attestor_config("spiffe_jwt", jwks_file=path)
    return config, issuer.spiffe_token("spiffe://acme.internal/ns/payments/sa/worker")


def _oidc_email(issuer: TestIssuer, tmp: Path) -> tuple[AttestorConfig, str]:
    config = issuer.attestor_config("oidc", subject_claim="email")
    return config, issuer.token(sub="12345", email="worker@acme.example")


HAPPY = [
    (_k8s, "system:serviceaccount:payments:worker",
     {"namespace": "payments", "service_account": "worker", "pod": "worker-7d9"}),
    (_github, "repo:acme/api:ref:refs/heads/main",
     {"repository": "acme/api", "ref": "refs/heads/main", "repository_owner": "acme", "workflow": "ci",
      "actor": "octocat", "event_name": "push", "sha": "0" * 40}),
    (_github_env, "repo:acme/api:environment:prod", {"environment": "prod", "repository": "acme/api"}),
    (_spiffe_file, "spiffe://acme.internal/ns/payments/sa/worker",
     {"trust_domain": "acme.internal", "path": "/ns/payments/sa/worker"}),
    (_oidc_email, "worker@acme.example", {"sub": "12345"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "subject", "derived"),
    HAPPY,
    ids=["kubernetes-discovery", "github-jwks_uri", "github-environment", "spiffe-jwks_file", "oidc-subject_claim"],
)
def test_each_preset_and_key_source_attests(issuer, make, tmp_path, case, subject, derived) -> None:
    config, token = case(issuer, tmp_path)
    identity = make(config).verify(token)
    assert isinstance(identity, Identity)
    assert (identity.subject, identity.attestor) == (subject, config.name)
    assert {key: identity.claims[key] for key in derived} == derived
    assert identity.token_fingerprint == token_fingerprint(token)
    assert token_fingerprint(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert identity.expires_at == identity.claims["exp"]
    with pytest.raises(TypeError):
        identity.claims["sub"] = "someone-else"  # type: ignore[index]


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"], ids=str)
def test_every_allowed_algorithm_verifies(issuer, strict, alg) -> None:
    assert strict.verify(issuer.token(alg=alg)).subject == "workload"


def test_iat_within_skew_is_accepted(issuer, strict) -> None:
    now = int(time.time())
    assert strict.verify(issuer.token(iat=now + 10, nbf=now + 10, exp=now + 300)).subject == "workload"


def test_extra_audience_accepted_only_when_configured(issuer, make) -> None:
    token = issuer.token(aud=["broker", "someone-else"])
    refused(make(issuer.attestor_config("oidc")), token, "other audiences")
    assert make(issuer.attestor_config("oidc", allow_extra_audiences=True)).verify(token).subject == "workload"


# --- attacks: each must be refused ---------------------------------------------------------


def _alg_none(casing: str) -> Callable[[TestIssuer, TestIssuer], str]:
    return lambda iss, _: compact({"alg": casing, "kid": iss.kid("ES256"), "typ": "JWT"}, iss.claims())


def _hs256_with_public_pem(iss: TestIssuer, _: TestIssuer) -> str:
    # The classic confusion: HMAC keyed with the RSA public key PEM. PyJWT refuses to make it; we do.
    pem = iss.keys["RSA"].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64url(json.dumps({"alg": "HS256", "kid": iss.kid("RS256"), "typ": "JWT"}).encode())
    payload = b64url(json.dumps(iss.claims()).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def _psychic_signature(iss: TestIssuer, _: TestIssuer) -> str:
    return compact({"alg": "ES256", "kid": iss.kid("ES256"), "typ": "JWT"}, iss.claims(), b"\x00" * 64)


def _attacker_key(**headers: Any) -> Callable[[TestIssuer, TestIssuer], str]:
    def forge(iss: TestIssuer, evil: TestIssuer) -> str:
        key = evil.keys["EC"]
        header = {"kid": key.kid, **{name: value(evil) for name, value in headers.items()}}
        return iss.token(alg="ES256", headers=header, signing_key=key.private)

    return forge


def _forged_kid(kid: str) -> Callable[[TestIssuer, TestIssuer], str]:
    return lambda iss, evil: iss.token(alg="ES256", kid=kid, signing_key=evil.keys["EC"].private)


def _rsa_kid_for_es256(iss: TestIssuer, _: TestIssuer) -> str:
    return iss.token(alg="ES256", kid=iss.kid("RS256"))


def _ec_kid_for_rs256(iss: TestIssuer, _: TestIssuer) -> str:
    return iss.token(alg="RS256", kid=iss.kid("ES256"))


def _swapped_payload(iss: TestIssuer, _: TestIssuer) -> str:
    header, _payload, signature = iss.token(sub="workload").split(".")
    return ".".join([header, b64url(json.dumps(iss.claims(sub="admin")).encode()), signature])


def _now() -> int:
    return int(time.time())


ATTACKS: list[tuple[str, Callable[[TestIssuer, TestIssuer], str], str]] = [
    ("alg-none", _alg_none("none"), "algorithm"),
    ("alg-None", _alg_none("None"), "algorithm"),
    ("alg-NONE", _alg_none("NONE"), "algorithm"),
    ("alg-nOnE", _alg_none("nOnE"), "algorithm"),
    ("hs256-public-key-pem", _hs256_with_public_pem, "algorithm 'HS256'"),
    ("es256-with-rsa-kid", _rsa_kid_for_es256, "cannot verify ES256"),
    ("rs256-with-ec-kid", _ec_kid_for_rs256, "cannot verify RS256"),
    ("kid-not-in-jwks", _attacker_key(), "no key with kid"),
    ("kid-path-traversal", _forged_kid("../../../../etc/passwd"), "no key with kid"),
    ("kid-sql", _forged_kid("' OR '1'='1' --"), "no key with kid"),
    ("jku-elsewhere", _attacker_key(jku=lambda evil: evil.jwks_uri), "no key with kid"),
    ("x5u-elsewhere", _attacker_key(x5u=lambda evil: evil.url + "/cert.pem"), "no key with kid"),
    ("embedded-jwk", _attacker_key(jwk=lambda evil: evil.keys["EC"].jwk), "no key with kid"),
    ("embedded-jwk-trusted-kid", lambda iss, evil: iss.token(
        headers={"jwk": evil.keys["EC"].jwk}, signing_key=evil.keys["EC"].private), "Signature verification"),
    ("ecdsa-r-s-zero", _psychic_signature, "InvalidSignatureError"),
    ("swapped-payload", _swapped_payload, "Signature verification"),
    ("expired", lambda iss, _: iss.token(iat=_now() - 900, nbf=_now() - 900, exp=_now() - 300), "token expired"),
    ("nbf-future", lambda iss, _: iss.token(nbf=_now() + 600), "not valid yet"),
    ("iat-future-beyond-skew", lambda iss, _: iss.token(iat=_now() + 120, exp=_now() + 600), "not valid yet"),
    ("lifetime-over-cap", lambda iss, _: iss.token(lifetime=7200), "lifetime"),
    ("exp-not-number", lambda iss, _: iss.token(exp="tomorrow"), "exp"),
    ("wrong-iss", lambda iss, _: iss.token(iss="http://127.0.0.1:9/other"), "untrusted issuer"),
    ("no-iss", lambda iss, _: iss.token(iss=None), "no iss"),
    ("wrong-aud", lambda iss, _: iss.token(aud="another-service"), "InvalidAudienceError"),
    ("aud-list-with-extra", lambda iss, _: iss.token(aud=["broker", "another-service"]), "other audiences"),
    ("no-aud", lambda iss, _: iss.token(aud=None), "aud"),
    ("missing-sub", lambda iss, _: iss.token(sub=None), "sub"),
    ("sub-not-string", lambda iss, _: iss.token(sub=42), "Subject must be a string"),
    ("missing-iat", lambda iss, _: iss.token(iat=None), "iat"),
    ("one-megabyte", lambda iss, _: iss.token(padding="A" * 1_000_000), f"longer than {MAX_TOKEN_BYTES}"),
    ("broker-access-token-typ", lambda iss, _: iss.token(headers={"typ": "at+jwt"}), "not an identity token"),
    ("broker-access-token-typ-mime", lambda iss, _: iss.token(headers={"typ": "application/AT+JWT"}), "identity"),
    ("broker-issuer", lambda iss, evil: evil.token(iss=BROKER_ISSUER), "broker-issued"),
    ("unknown-crit", lambda iss, _: iss.token(headers={"crit": ["exp-ext"], "exp-ext": 1}), "critical"),
    ("jwe-shaped", lambda iss, _: "a.b.c.d.e", "compact JWS"),
    ("garbage", lambda iss, _: "not a token", "compact JWS"),
    ("payload-not-json", lambda iss, _: "eyJhbGciOiJFUzI1NiJ9.bm90IGpzb24.AAAA", "base64url JSON"),
    ("subject-too-long", lambda iss, _: iss.token(sub="a" * 513), "longer than 512"),
    ("subject-newline", lambda iss, _: iss.token(sub="worker\nadmin"), "control characters"),
    ("subject-bidi-override", lambda iss, _: iss.token(sub="worker\u202eadmin"), "control characters"),
]


@pytest.mark.parametrize(("make_token", "match"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attack_is_refused(issuer, attacker, strict, caplog, make_token, match) -> None:
    token = make_token(issuer, attacker)
    with caplog.at_level(logging.DEBUG, logger="broker.identity"):
        error = refused(strict, token, match)
    assert error.context["token_fingerprint"] == token_fingerprint(token)
    assert token not in caplog.text
    assert attacker.fetch_count == 0  # jku/x5u/jwk never made us fetch the attacker's keys


PRESET_ATTACKS = [
    ("k8s-sub-not-serviceaccount", "kubernetes", lambda iss: iss.token(sub="system:admin", alg="RS256"), "kubernetes"),
    ("k8s-sub-extra-colon", "kubernetes",
     lambda iss: iss.token(sub="system:serviceaccount:payments:worker:x", alg="RS256"), "kubernetes"),
    ("k8s-namespace-disagrees", "kubernetes",
     lambda iss: iss.k8s_token("payments", "worker", **{"kubernetes.io": {"namespace": "kube-system"}}), "namespace"),
    ("k8s-sa-disagrees", "kubernetes", lambda iss: iss.k8s_token(
        "payments", "worker", **{"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "admin"}}}),
     "serviceaccount"),
    ("k8s-claim-not-object", "kubernetes", lambda iss: iss.k8s_token(**{"kubernetes.io": "payments"}), "object"),
    ("github-sub-other-repo", "github_actions",
     lambda iss: iss.github_token("acme/api", sub="repo:acme/infra:ref:refs/heads/main"), "another repository"),
    ("github-no-repository", "github_actions", lambda iss: iss.token(sub="repo:acme/api:ref:refs/heads/main"),
     "repository"),
    ("spiffe-other-trust-domain", "spiffe_jwt", lambda iss: iss.spiffe_token("spiffe://evil.internal/a"), "trust domain"),
    ("spiffe-not-spiffe", "spiffe_jwt", lambda iss: iss.spiffe_token("https://acme.internal/ns/a"), "SPIFFE ID"),
    ("spiffe-dot-dot", "spiffe_jwt", lambda iss: iss.spiffe_token("spiffe://acme.internal/ns/../admin"), "SPIFFE ID"),
    ("spiffe-no-path", "spiffe_jwt", lambda iss: iss.spiffe_token("spiffe://acme.internal"), "SPIFFE ID"),
    ("spiffe-query", "spiffe_jwt", lambda iss: iss.spiffe_token("spiffe://acme.internal/a?b=c"), "SPIFFE ID"),
    ("spiffe-uppercase-domain", "spiffe_jwt", lambda iss: iss.spiffe_token("spiffe://ACME.internal/a"), "SPIFFE ID"),
    ("oidc-subject-claim-missing", "oidc", lambda iss: iss.token(), "'email'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("preset", "make_token", "match"), [a[1:] for a in PRESET_ATTACKS], ids=[a[0] for a in PRESET_ATTACKS]
)
def test_preset_refuses_foreign_shapes(issuer, make, preset, make_token, match) -> None:
    extra = {"subject_claim": "email"} if preset == "oidc" else {}
    refused(make(issuer.attestor_config(preset, source="jwks_uri", **extra)), make_token(issuer), match)


def test_injected_clock_decides_expiry(issuer, make) -> None:
    clock = FakeClock()
    attestors = make(issuer.attestor_config("oidc", source="jwks_uri"), clock=clock)
    token = issuer.token(lifetime=300)
    assert attestors.verify(token).subject == "workload"
    clock.advance(400)
    refused(attestors, token, "expired")


# --- configuration refusals ----------------------------------------------------------------


def test_symmetric_algorithm_refused_even_without_validation(issuer) -> None:
    config = issuer.attestor_config("oidc").model_copy(update={"algorithms": ["RS256", "HS256"]})
    with pytest.raises(ConfigError, match="HS256"):
        Attestors([config])


def test_attestor_for_the_broker_issuer_refused(issuer) -> None:
    with pytest.raises(ConfigError, match="broker itself"):
        Attestors([issuer.attestor_config("oidc", issuer=BROKER_ISSUER)], broker_issuer=BROKER_ISSUER)


def test_two_attestors_for_one_issuer_refused(issuer) -> None:
    configs = [issuer.attestor_config("oidc", name="a"), issuer.attestor_config("oidc", name="b")]
    with pytest.raises(ConfigError, match="share an issuer"):
        Attestors(configs)


def test_plain_http_jwks_outside_loopback_refused(issuer) -> None:
    with pytest.raises(ConfigError, match="https"):
        Attestors([issuer.attestor_config("oidc", jwks_uri="http://keys.example.com/jwks.json")])


def unverified_decodes(source: str) -> list[int]:
    """Lines that switch JWT signature checks off: a `verify_signature` key, keyword or item not set to True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        pairs: list[tuple[Any, ast.expr]] = []
        if isinstance(node, ast.Dict):
            pairs = [(key.value, value) for key, value in zip(node.keys, node.values) if isinstance(key, ast.Constant)]
        elif isinstance(node, ast.Call):
            pairs = [(keyword.arg, keyword.value) for keyword in node.keywords]
        elif isinstance(node, ast.Assign):
            pairs = [(t.slice.value, node.value) for t in node.targets
                     if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)]  # fmt: skip
        if any(key == "verify_signature" and not _is_true(value) for key, value in pairs):
            found.append(node.lineno)
    return found


def _is_true(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        ('jwt.decode(t, options={"verify_signature": False})', [1]),
        ("jwt.decode(t, options={'verify_signature': 0})", [1]),
        ("flag = False\njwt.decode_complete(t, options=dict(verify_signature=flag))", [2]),
        ('options = {}\noptions["verify_signature"] = False', [2]),
        ('jwt.decode(t, key, algorithms=["ES256"], options={"verify_signature": True, "verify_exp": False})', []),
    ],
    ids=["dict", "quoted-falsy", "keyword", "item", "verified"],
)
def test_the_unverified_decode_scan_finds_each_spelling(source, lines) -> None:
    assert unverified_decodes(source) == lines


def test_no_unverified_decode_in_broker() -> None:
    broker = Path(__file__).resolve().parents[2] / "broker"
    offenders = {str(p): lines for p in broker.rglob("*.py") if (lines := unverified_decodes(p.read_text()))}
    assert offenders == {}


# --- JWKS fetching: bounded, closed on failure ----------------------------------------------

SERVE_FAILURES = [
    ("slow", {"jwks_timeout": 0.3}, "ReadTimeout|slower"),
    ("huge", {"jwks_max_bytes": 65_536}, "exceeds 65536"),
    ("html", {}, "not JSON"),
    ("error", {}, "HTTP 503"),
    ("redirect", {}, "HTTP 302"),
]


@pytest.mark.parametrize(("mode", "overrides", "match"), SERVE_FAILURES, ids=[f[0] for f in SERVE_FAILURES])
@pytest.mark.parametrize("source", ["jwks_uri", "discovery"])
def test_bad_jwks_fails_closed_quickly(fresh, make, mode, overrides, match, source) -> None:
    fresh.serve_mode = mode
    attestors = make(fresh.attestor_config("oidc", source=source, **overrides))
    started = time.monotonic()
    refused(attestors, fresh.token(), match)
    assert time.monotonic() - started < 1.5


def test_discovery_may_not_point_keys_elsewhere(fresh, attacker, make) -> None:
    fresh.discovery_overrides = {"jwks_uri": attacker.jwks_uri}
    refused(make(fresh.attestor_config("oidc")), fresh.token(signing_key=attacker.keys["EC"].private), "origin")
    assert attacker.fetch_count == 0


def test_discovery_must_name_the_issuer(fresh, make) -> None:
    fresh.discovery_overrides = {"issuer": "http://127.0.0.1:9/other"}
    refused(make(fresh.attestor_config("oidc")), fresh.token(), "another issuer")


def test_jwks_parsing_keeps_only_asymmetric_signing_keys(issuer) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    doc = {"keys": [
        {"kty": "oct", "kid": "hmac", "k": b64url(b"secret")},
        {**issuer.keys["EC"].jwk, "kid": "enc", "use": "enc"},
        {**issuer.keys["EC"].jwk, "kid": None},
        {**RSAAlgorithm.to_jwk(weak, as_dict=True), "kid": "weak"},
        issuer.keys["EC"].jwk,
    ]}  # fmt: skip
    assert list(parse_jwks(doc, "test")) == [issuer.kid("ES256")]
    with pytest.raises(JwksError, match="keys"):
        parse_jwks({"issuer": "x"}, "test")


# --- cache, rotation, rate limit -----------------------------------------------------------


def test_rotation_new_kid_refreshes_and_old_kid_is_dropped(fresh, make) -> None:
    clock = FakeClock()
    attestors = make(fresh.attestor_config("oidc", source="jwks_uri", jwks_min_refresh_interval=10), clock=clock)
    old_token = fresh.token()
    assert attestors.verify(old_token).subject == "workload" and fresh.fetch_count == 1
    fresh.rotate()
    new_token = fresh.token()
    refused(attestors, new_token, "no key with kid")  # within the refresh interval: no fetch
    assert fresh.fetch_count == 1
    clock.advance(10)
    assert attestors.verify(new_token).subject == "workload" and fresh.fetch_count == 2
    refused(attestors, old_token, "no key with kid")
    clock.advance(10)
    refused(attestors, old_token, "no key with kid")  # refreshed again, still gone
    assert fresh.fetch_count == 3


def test_unknown_kids_refresh_at_most_once_per_interval(fresh, attacker, make) -> None:
    clock = FakeClock()
    attestors = make(fresh.attestor_config("oidc", jwks_min_refresh_interval=10), clock=clock)
    attestors.verify(fresh.token())
    for _ in range(20):
        refused(attestors, fresh.token(kid=uuid.uuid4().hex, signing_key=attacker.keys["EC"].private))
    assert (fresh.fetch_count, fresh.discovery_count) == (1, 1)
    clock.advance(10)
    for _ in range(5):
        refused(attestors, fresh.token(kid=uuid.uuid4().hex, signing_key=attacker.keys["EC"].private))
    assert fresh.fetch_count == 2


def test_cache_serves_within_ttl_and_refetches_after(fresh, make) -> None:
    clock = FakeClock()
    attestors = make(fresh.attestor_config("oidc", source="jwks_uri", jwks_cache_ttl=60), clock=clock)
    for _ in range(5):
        attestors.verify(fresh.token())
    assert fresh.fetch_count == 1
    clock.advance(61)
    attestors.verify(fresh.token())
    assert fresh.fetch_count == 2


def test_failed_refresh_serves_cached_keys_until_long_stale(fresh, make) -> None:
    clock = FakeClock()
    config = fresh.attestor_config("oidc", source="jwks_uri", jwks_cache_ttl=60, max_token_lifetime=3600)
    attestors = make(config, clock=clock)
    token = fresh.token(lifetime=3000)
    attestors.verify(token)
    fresh.serve_mode = "error"
    clock.advance(300)  # stale, refresh fails, still within 10 x ttl
    assert attestors.verify(token).subject == "workload" and fresh.fetch_count == 2
    clock.advance(301)  # now 601 s old: fail closed
    refused(attestors, token, "no usable keys")


def test_cold_start_failure_is_retried_only_after_interval(fresh, make) -> None:
    clock = FakeClock()
    attestors = make(fresh.attestor_config("oidc", source="jwks_uri", jwks_min_refresh_interval=5), clock=clock)
    fresh.serve_mode = "error"
    refused(attestors, fresh.token(), "no usable keys")
    fresh.serve_mode = "normal"
    refused(attestors, fresh.token(), "no usable keys")
    assert fresh.fetch_count == 1
    clock.advance(5)
    assert attestors.verify(fresh.token()).subject == "workload"


def test_concurrent_cold_verifies_fetch_once(fresh, make) -> None:
    attestors = make(fresh.attestor_config("oidc"))
    tokens = [fresh.token(sub=f"w{i}") for i in range(16)]
    barrier = threading.Barrier(16)

    def verify(token: str) -> str:
        barrier.wait()
        return attestors.verify(token).subject

    with ThreadPoolExecutor(16) as pool:
        subjects = list(pool.map(verify, tokens))
    assert subjects == [f"w{i}" for i in range(16)]
    assert (fresh.fetch_count, fresh.discovery_count) == (1, 1)


def test_jwks_file_is_reread_on_change_and_fails_closed_when_gone(fresh, make, tmp_path) -> None:
    path = tmp_path / "jwks.json"
    _write_jwks(path, fresh.jwks())
    attestors = make(fresh.attestor_config("oidc", jwks_file=path))
    old_token = fresh.token()
    assert attestors.verify(old_token).subject == "workload"
    fresh.rotate()
    _write_jwks(path, fresh.jwks())
    assert attestors.verify(fresh.token()).subject == "workload"
    refused(attestors, old_token, "no key with kid")
    path.unlink()
    refused(attestors, fresh.token(), "cannot read")
    assert fresh.fetch_count == 0


# --- the cache of verified identity tokens --------------------------------------------------


def test_a_reused_token_is_served_from_the_cache(fresh, make) -> None:
    attestors = make(fresh.attestor_config("oidc", source="jwks_uri"))
    token = fresh.token()
    first = attestors.verify(token)
    assert attestors.verify(token) is first  # the very object: not verified a second time
    assert attestors.verify(fresh.token()) is not first  # another token is another entry


def test_cached_token_stops_working_when_its_kid_leaves_the_jwks(fresh, make) -> None:
    clock = FakeClock()
    config = fresh.attestor_config("oidc", source="jwks_uri", jwks_cache_ttl=60, jwks_min_refresh_interval=10)
    attestors = make(config, clock=clock)
    token = fresh.token(lifetime=3000)
    cached = attestors.verify(token)
    fresh.rotate()  # the token's kid is no longer in the issuer's JWKS
    clock.advance(30)
    assert attestors.verify(token) is cached  # the broker has not seen the new JWKS yet (jwks.py's TTL)
    clock.advance(31)  # the JWKS cache expires; the next lookup fetches the rotated set
    refused(attestors, token, "no key with kid")
    assert fresh.fetch_count == 2


def test_cached_token_ends_when_the_jwks_serves_another_key_for_its_kid(fresh, make, tmp_path) -> None:
    path = tmp_path / "jwks.json"
    _write_jwks(path, fresh.jwks())
    attestors = make(fresh.attestor_config("oidc", jwks_file=path))
    token = fresh.token()
    attestors.verify(token)
    kid = fresh.kid()
    impostor = ec.generate_private_key(ec.SECP256R1()).public_key()
    from jwt.algorithms import ECAlgorithm

    jwk = {**ECAlgorithm.to_jwk(impostor, as_dict=True), "kid": kid, "use": "sig"}
    _write_jwks(path, {"keys": [jwk]})  # same kid, different key: the cached verification no longer holds
    refused(attestors, token, "Signature")


def test_cached_token_stops_working_at_its_exp(fresh, make) -> None:
    clock = FakeClock()
    attestors = make(fresh.attestor_config("oidc", source="jwks_uri", leeway=30), clock=clock)
    token = fresh.token(lifetime=120, now=clock.now)
    cached = attestors.verify(token)
    clock.advance(119)
    assert attestors.verify(token) is cached
    clock.advance(1)  # at exp the entry is gone: verified in full again (still inside the leeway)
    assert attestors.verify(token) is not cached
    clock.advance(31)
    refused(attestors, token, "expired")


def test_the_cache_is_bounded(fresh, make, monkeypatch) -> None:
    from broker.identity import oidc

    monkeypatch.setattr(oidc, "MAX_CACHED_TOKENS", 2)
    attestors = make(fresh.attestor_config("oidc", source="jwks_uri"))
    tokens = [fresh.token(sub=f"w{i}") for i in range(3)]
    first, second, third = (attestors.verify(t) for t in tokens)
    assert attestors.verify(tokens[2]) is third and attestors.verify(tokens[1]) is second
    assert attestors.verify(tokens[0]) is not first  # the least recently used one was dropped


# --- in-cluster Kubernetes: the API server's own CA, the pod's token for discovery and JWKS ------------


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[TestIssuer, Path, Path]]:
    """An HTTPS issuer under a private CA that, like the API server, serves its keys only to a token holder."""
    from tests.support import pki

    root = pki.ca("cluster.local")
    leaf = pki.server(root)
    (tmp_path / "server.pem").write_bytes(leaf.pem)
    (tmp_path / "server.key").write_bytes(leaf.key_pem)
    (tmp_path / "ca.crt").write_bytes(root.pem)
    (tmp_path / "token").write_text("sa-token-1\n")
    with TestIssuer(tls=(tmp_path / "server.pem", tmp_path / "server.key")) as running:
        running.bearer = "sa-token-1"
        yield running, tmp_path / "ca.crt", tmp_path / "token"


@pytest.mark.parametrize("source", ["discovery", "jwks_uri"])
def test_in_cluster_kubernetes_attestor_uses_the_cluster_ca_and_the_pod_token(api_server, source) -> None:
    issuer, ca_file, token_file = api_server
    config = issuer.attestor_config("kubernetes", source=source, jwks_ca_file=ca_file, jwks_token_file=token_file)
    clock = FakeClock()
    attestors = Attestors([config], broker_issuer=BROKER_ISSUER, clock=clock)
    try:
        identity = attestors.verify(issuer.k8s_token("payments", "worker"))
        assert identity.subject == "system:serviceaccount:payments:worker"
        assert set(issuer.authorizations) == {"Bearer sa-token-1"}  # discovery and JWKS alike
        # the kubelet rotates the token: the next fetch (here: a new kid) sends the new one
        token_file.write_text("sa-token-2")
        issuer.bearer = "sa-token-2"
        issuer.rotate()
        clock.advance(config.jwks_min_refresh_interval)
        assert attestors.verify(issuer.k8s_token("payments", "worker")).subject == identity.subject
        assert issuer.authorizations[-1] == "Bearer sa-token-2"
    finally:
        attestors.close()


@pytest.mark.parametrize(
    ("drop", "match"), [("jwks_token_file", "HTTP 401"), ("jwks_ca_file", "ConnectError")], ids=["no-token", "system-roots"]
)
def test_in_cluster_attestor_without_its_token_or_ca_fails_closed(api_server, drop, match) -> None:
    issuer, ca_file, token_file = api_server
    files = {"jwks_ca_file": ca_file, "jwks_token_file": token_file}
    del files[drop]
    attestors = Attestors([issuer.attestor_config("kubernetes", source="jwks_uri", **files)], broker_issuer=BROKER_ISSUER)
    try:
        with pytest.raises(InvalidIdentity, match=match) as refused:
            attestors.verify(issuer.k8s_token("payments", "worker"))
        assert "sa-token" not in refused.value.detail
    finally:
        attestors.close()


def test_an_unreadable_or_bad_token_file_fails_closed_without_echoing_it(api_server) -> None:
    issuer, ca_file, token_file = api_server
    token_file.write_text("two tokens\n")
    config = issuer.attestor_config("kubernetes", source="jwks_uri", jwks_ca_file=ca_file, jwks_token_file=token_file)
    attestors = Attestors([config], broker_issuer=BROKER_ISSUER)
    try:
        with pytest.raises(InvalidIdentity, match="does not hold one token") as refused:
            attestors.verify(issuer.k8s_token("payments", "worker"))
        assert "two tokens" not in refused.value.detail and issuer.authorizations == []  # nothing was sent
    finally:
        attestors.close()


def test_a_bad_ca_file_is_a_config_error_and_token_files_need_fetched_keys(api_server, tmp_path) -> None:
    issuer, _, token_file = api_server
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="jwks_ca_file"):
        Attestors([issuer.attestor_config("kubernetes", source="jwks_uri", jwks_ca_file=tmp_path / "bad.crt")])
    with pytest.raises(ValueError, match="not jwks_file"):
        issuer.attestor_config("kubernetes", jwks_file=tmp_path / "jwks.json", jwks_token_file=token_file)

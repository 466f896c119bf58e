"""Every identity-token attack, through HTTP on both ways in: refused, recorded as denied, nothing issued.

tests/identity/test_attestation.py covers the attestor alone; here the whole request path is under
test: the route, the error mapping (401 `invalid_identity`, no detail, no echo), and the ledger
(a `denied` event carrying the token's fingerprint, and no grants row).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from broker.fingerprint import fingerprint as token_fingerprint
from tests.support.broker import BrokerClient, Issuers, broker_settings, open_client
from tests.support.issuer import TestIssuer, b64url, compact

SUBJECT = "system:serviceaccount:payments:worker"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

Forge = Callable[["Attack"], str]


class Attack:
    """What a forger has: the trusted issuer's public material and an issuer of its own."""

    def __init__(self, trusted: TestIssuer, attacker: TestIssuer, other_trusted: TestIssuer, minted: str) -> None:
        self.trusted, self.attacker, self.other, self.minted = trusted, attacker, other_trusted, minted

    def claims(self, **changes: Any) -> dict[str, Any]:
        return self.trusted.claims(sub=SUBJECT, **changes)

    def signed(self, alg: str = "RS256", **changes: Any) -> str:
        return self.trusted.token(alg=alg, **{"sub": SUBJECT, **changes})


def _unsigned(alg: str) -> Forge:
    return lambda a: compact({"alg": alg, "typ": "JWT", "kid": a.trusted.kid("RS256")}, a.claims())


def _hs256_with_public_key(a: Attack) -> str:
    """Algorithm confusion: HMAC keyed with the issuer's public RSA key, as a naive verifier would."""
    pem = a.trusted.keys["RSA"].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64url(b'{"alg":"HS256","typ":"JWT","kid":"' + a.trusted.kid("RS256").encode() + b'"}')
    body = compact({}, a.claims()).split(".")[1]
    signature = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(signature)}"


def _attacker_key(**headers: Any) -> Forge:
    """Signed by a key the broker never trusted, claiming the trusted issuer; extra headers point at it."""

    def forge(a: Attack) -> str:
        key = a.attacker.keys["EC"]
        extra = {k: (v(a) if callable(v) else v) for k, v in headers.items()}
        claims = a.claims()
        return a.attacker.token(alg="ES256", headers={"kid": key.kid, **extra}, **_as_token_kwargs(claims))

    return forge


def _as_token_kwargs(claims: dict[str, Any]) -> dict[str, Any]:
    # TestIssuer.token builds iat/nbf/exp itself; pass the rest (notably iss of the trusted issuer)
    keep = {k: v for k, v in claims.items() if k not in ("iat", "nbf", "exp")}
    return keep


def _stolen_kid(a: Attack) -> str:
    """The trusted issuer's kid on a token the attacker signed: the signature must fail."""
    return a.attacker.token(alg="ES256", kid=a.trusted.kid("ES256"), **_as_token_kwargs(a.claims()))


def _kid(value: str) -> Forge:
    return lambda a: a.signed(alg="ES256", kid=value)


def _psychic_signature(a: Attack) -> str:
    """CVE-2022-21449: an ECDSA signature with r = s = 0."""
    return compact({"alg": "ES256", "typ": "JWT", "kid": a.trusted.kid("ES256")}, a.claims(), bytes(64))


def _times(**offsets: int) -> Forge:
    """Claims moved in time relative to now (leeway is 30 s; these are well past it)."""

    def forge(a: Attack) -> str:
        now = int(time.time())
        claims = {"iat": now, "nbf": now, "exp": now + 300, **{k: now + v for k, v in offsets.items()}}
        return a.trusted.token(alg="ES256", sub=SUBJECT, **claims)

    return forge


ATTACKS: dict[str, Forge] = {
    "alg-none": _unsigned("none"),
    "alg-None": _unsigned("None"),
    "alg-NONE": _unsigned("NONE"),
    "alg-nOnE": _unsigned("nOnE"),
    "hs256-with-public-key": _hs256_with_public_key,
    "key-not-in-jwks": _attacker_key(),
    "trusted-kid-attacker-signature": _stolen_kid,
    "kid-path-traversal": _kid("../../../../../../etc/passwd"),
    "kid-dev-null": _kid("/dev/null"),
    "kid-sql-or": _kid("' OR '1'='1"),
    "kid-sql-drop": _kid("x'; DROP TABLE grants; --"),
    "jku-elsewhere": _attacker_key(jku=lambda a: a.attacker.jwks_uri),
    "x5u-elsewhere": _attacker_key(x5u=lambda a: a.attacker.url + "/cert.pem"),
    "embedded-jwk": _attacker_key(jwk=lambda a: a.attacker.keys["EC"].jwk),
    "embedded-jwk-trusted-kid": lambda a: a.attacker.token(
        alg="ES256", kid=a.trusted.kid("ES256"), headers={"jwk": a.attacker.keys["EC"].jwk},
        **_as_token_kwargs(a.claims()),
    ),  # fmt: skip
    "ecdsa-r-s-zero": _psychic_signature,
    "expired": _times(iat=-7200, nbf=-7200, exp=-3600),
    "nbf-in-future": _times(nbf=3600, exp=7200),
    "iat-in-future-beyond-skew": _times(iat=120, nbf=0, exp=600),
    "wrong-iss-untrusted": lambda a: a.signed(iss="https://evil.example"),
    "wrong-iss-other-trusted-issuer": lambda a: a.signed(iss=a.other.url),
    "wrong-aud": lambda a: a.signed(aud="someone-else"),
    "aud-list-with-extras": lambda a: a.signed(aud=["broker", "someone-else"]),
    "missing-sub": lambda a: a.signed(sub=None),
    "broker-minted-credential": lambda a: a.minted,
    "garbage": lambda a: "not-a-jwt",
}


def _via_grants(client: BrokerClient, token: str) -> Any:
    return client.grant(token, boundary="orders", scopes=["read"], task="attack")


def _via_token_exchange(client: BrokerClient, token: str) -> Any:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": JWT_TYPE,
            "resource": "orders", "scope": "read"}  # fmt: skip
    return client.post("/oauth/token", data=form)


ENDPOINTS = {"POST /v1/grants": _via_grants, "POST /oauth/token": _via_token_exchange}


@pytest.fixture(scope="module")
def client(tmp_path_factory, issuers: Issuers) -> Iterator[BrokerClient]:
    """One broker for the module: attacks must leave it exactly as they found it, which we check."""
    with open_client(broker_settings(tmp_path_factory.mktemp("security"), issuers)) as running:
        yield running


@pytest.fixture(scope="module")
def attack(client: BrokerClient, issuers: Issuers) -> Iterator[Attack]:
    issued = client.grant(issuers.worker(), boundary="orders", scopes=["read"], task="real")
    assert issued.status_code == 201, issued.text
    with TestIssuer() as attacker:
        yield Attack(issuers.k8s, attacker, issuers.gha, issued.json()["credential"]["token"])


def _grant_count(client: BrokerClient) -> int:
    return len(client.service.ledger.grants())


def assert_refused(client: BrokerClient, response: Any, token: str, grants_before: int) -> None:
    """401 invalid_identity with no detail and no echo (400 `invalid_grant` as a token exchange's
    `subject_token`, RFC 6749 §5.2); a denied event for this token; no new grant."""
    exchange = response.request.url.path == "/oauth/token"
    assert response.status_code == (400 if exchange else 401), response.text
    body = response.json()
    assert body["code"] == "invalid_identity" and "detail" not in body
    assert body.get("error") == ("invalid_grant" if exchange else None)
    assert token[-40:] not in response.text and "Traceback" not in response.text
    fingerprints = [e.detail.get("identity_fp") for e in client.events("denied")]
    assert token_fingerprint(token) in fingerprints
    assert _grant_count(client) == grants_before


def assert_impersonation_refused(client: BrokerClient, response: Any, token: str, grants_before: int) -> None:
    """A broker token is a token exchange's `subject_token` only for a delegation (RFC 8693 with an
    `actor_token`, docs/agents.md §6): alone it asks to impersonate its holder, refused and recorded."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body["error"]) == ("impersonation_refused", "invalid_request")
    assert token[-40:] not in response.text and "Traceback" not in response.text
    assert client.events("denied")[-1].detail["code"] == "impersonation_refused"
    assert _grant_count(client) == grants_before


@pytest.mark.parametrize("endpoint", ENDPOINTS.values(), ids=ENDPOINTS.keys())
@pytest.mark.parametrize("forge", ATTACKS.values(), ids=ATTACKS.keys())
def test_attack_is_refused_recorded_and_changes_nothing(client: BrokerClient, attack: Attack, forge, endpoint) -> None:
    token = forge(attack)
    before = _grant_count(client)
    impersonation = forge is ATTACKS["broker-minted-credential"] and endpoint is _via_token_exchange
    (assert_impersonation_refused if impersonation else assert_refused)(client, endpoint(client, token), token, before)


@pytest.mark.parametrize("endpoint", ENDPOINTS.values(), ids=ENDPOINTS.keys())
def test_the_same_request_with_an_honest_token_is_issued(client: BrokerClient, issuers: Issuers, endpoint) -> None:
    """The control: the attack table fails for the attack, not because the request is wrong."""
    before = _grant_count(client)
    response = endpoint(client, issuers.k8s.token(alg="ES256", sub=SUBJECT))
    assert response.status_code in (200, 201), response.text
    assert _grant_count(client) == before + 1


@pytest.mark.parametrize("endpoint", ENDPOINTS.values(), ids=ENDPOINTS.keys())
def test_a_one_megabyte_token_is_refused_without_a_stack_trace(client: BrokerClient, attack: Attack, endpoint) -> None:
    token = attack.signed(alg="ES256", padding="A" * (1024 * 1024))
    before = _grant_count(client)
    response = endpoint(client, token)
    assert response.status_code in (400, 401, 413), response.text[:300]
    assert "Traceback" not in response.text and len(response.content) < 4096
    assert _grant_count(client) == before
    if response.status_code in (400, 401):
        assert token_fingerprint(token) in [e.detail.get("identity_fp") for e in client.events("denied")]

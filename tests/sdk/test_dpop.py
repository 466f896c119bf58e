"""DPoP end to end: a bound grant is useless without its key's proof; the verifier refuses every forgery."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.errors import DpopReplayFull, InvalidDpop
from broker.identity.dpop import DpopVerifier, ReplayCache, thumbprint
from broker_client import Client, DpopKey, InvalidToken, Verifier
from broker_client.errors import InvalidDpop as ClientInvalidDpop

# --- against the live broker ---------------------------------------------------------------


@pytest.fixture
def bound(live, client):  # noqa: ANN001, ANN201
    """A DPoP-bound grant on the `secure` boundary, held by the client's process key."""
    cred = client.grant("dpop-attacks", "secure", ["read"], ttl=120)
    yield cred
    client.complete(cred.grant_id)


def _attack(kind: str, holder: DpopKey, method: str, url: str, token: str) -> str | None:
    """The DPoP header a thief would send."""
    if kind == "no-proof":
        return None
    if kind == "other-key":
        return DpopKey().proof(method, url, token)
    if kind == "other-url":
        return holder.proof(method, url + "/elsewhere", token)
    if kind == "other-method":
        return holder.proof("DELETE", url, token)
    if kind == "stale":
        return holder.proof(method, url, token, iat=time.time() - 600)
    raise AssertionError(kind)


ATTACKS = ["no-proof", "other-key", "other-url", "other-method", "stale"]


def _send(live, client, path: str, proof: str | None, form: dict | None = None) -> httpx.Response:  # noqa: ANN001
    headers = {"Authorization": f"Bearer {client.identity.token()}", **({"DPoP": proof} if proof else {})}
    return httpx.post(live.url + path, headers=headers, data=form)


@pytest.mark.parametrize("attack", ATTACKS)
def test_complete_of_a_bound_grant_needs_the_holders_proof(live, client, bound, attack) -> None:
    path = f"/v1/grants/{bound.grant_id}/complete"
    proof = _attack(attack, client.dpop, "POST", live.url + path, client.identity.token())
    answer = _send(live, client, path, proof)
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_dpop")
    assert live.grant(bound.grant_id).status == "active"
    denied = live.events(kind="denied", grant_id=bound.grant_id) if attack == "no-proof" else [1]
    assert denied, "a refusal is recorded"


@pytest.mark.parametrize("path", ["/oauth/introspect", "/oauth/revoke"], ids=["introspect", "revoke"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_holder_use_of_a_bound_token_needs_the_holders_proof(live, client, bound, attack, path) -> None:
    proof = _attack(attack, client.dpop, "POST", live.url + path, bound.token)
    answer = _send(live, client, path, proof, form={"token": bound.token})
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_dpop")
    assert client.introspect(bound.token)["active"] is True  # not revoked; the SDK's own proof passes


def test_a_replayed_proof_is_refused(live, client, bound) -> None:
    path = f"/v1/grants/{bound.grant_id}/complete"
    proof = client.dpop.proof("POST", live.url + path, client.identity.token())
    assert _send(live, client, path, proof).status_code == 200
    replay = _send(live, client, path, proof)
    assert (replay.status_code, replay.json()["code"]) == (401, "invalid_dpop")


def test_a_proof_with_the_wrong_ath_is_refused(live, client, bound) -> None:
    url = live.url + "/oauth/introspect"
    answer = _send(live, client, "/oauth/introspect", client.dpop.proof("POST", url, "another-token"),
                   form={"token": bound.token})  # fmt: skip
    assert answer.status_code == 401


def test_require_dpop_boundary_refuses_a_grant_without_proof(live, worker_token) -> None:
    with Client(live.url, worker_token, dpop=False) as plain, pytest.raises(ClientInvalidDpop):
        plain.grant("no-proof", "secure", ["read"])
    with Client(live.url, worker_token, dpop=False) as plain:
        cred = plain.grant("bearer-ok", "orders", ["read"], ttl=60)
        assert cred.token_type == "Bearer" and not plain.get(cred.grant_id).dpop_bound
        plain.complete(cred.grant_id)


def test_bound_jwt_carries_cnf_jkt_of_the_process_key(client, bound) -> None:
    claims = jwt.decode(bound.token, options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == client.dpop.jkt and bound.token_type == "DPoP"


# --- resource server: broker_client.verify ---------------------------------------------------


@pytest.fixture
def verifier(live, client) -> Verifier:  # noqa: ANN001
    return Verifier(live.url, "secure", introspection=client)


RS_URL = "https://orders-api.internal/orders/42"


@pytest.mark.parametrize("attack", ["no-proof", "other-key", "other-url", "other-method", "stale"])
def test_resource_server_refuses_a_stolen_bound_token(verifier, client, bound, attack) -> None:
    proof = _attack(attack, client.dpop, "GET", RS_URL, bound.token)
    with pytest.raises(InvalidToken):
        verifier.verify(bound.token, dpop_proof=proof, method="GET", url=RS_URL)


def test_resource_server_accepts_the_holder_once_and_refuses_a_replay(verifier, client, bound) -> None:
    proof = client.dpop.proof("GET", RS_URL + "?page=2", bound.token)
    claims = verifier.verify(bound.token, dpop_proof=proof, method="GET", url=RS_URL + "?page=2", introspect=True)
    assert claims["aud"] == "secure" and claims["jti"] == bound.grant_id
    with pytest.raises(InvalidToken, match="replayed"):
        verifier.verify(bound.token, dpop_proof=proof, method="GET", url=RS_URL)


def test_resource_server_refuses_wrong_audience_and_completed_tokens(live, client, verifier) -> None:
    with client.task("rs") as task:
        plain = task.grant("orders", ["read"], ttl=60)
        with pytest.raises(InvalidToken):
            verifier.verify(plain.token, dpop_proof=client.dpop.proof("GET", RS_URL, plain.token), url=RS_URL)
        other = Verifier(live.url, "orders", introspection=client)
        assert other.verify(plain.token, dpop_proof=client.dpop.proof("GET", RS_URL, plain.token), url=RS_URL)
    with pytest.raises(InvalidToken, match="inactive"):
        other.verify(plain.token, dpop_proof=client.dpop.proof("GET", RS_URL, plain.token), url=RS_URL, introspect=True)


# --- server-side verifier, pure logic --------------------------------------------------------

URL = "https://broker.example/v1/grants"


def _proof(key=None, alg="ES256", header=None, **claims) -> str:  # noqa: ANN001, ANN003
    key = key or ec.generate_private_key(ec.SECP256R1())
    public = jwt.PyJWK.from_json(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key())).key
    jwk = jwt.algorithms.get_default_algorithms()[alg].to_jwk(public, as_dict=True)
    body = {"htm": "POST", "htu": URL, "iat": int(time.time()), "jti": "j-" + str(time.time_ns()), **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"typ": "dpop+jwt", "jwk": jwk, **(header or {})})


def _private_jwk_proof() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    return jwt.encode({"htm": "POST", "htu": URL, "iat": int(time.time()), "jti": "j-private-1"}, key,
                      algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})  # fmt: skip


@pytest.mark.parametrize(
    "proof",
    [
        lambda: _proof(header={"typ": "JWT"}),
        lambda: jwt.encode({"htm": "POST", "htu": URL, "iat": int(time.time()), "jti": "abcdefgh"}, "k" * 32,
                           algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": "a2V5"}}),
        lambda: jwt.encode({"htm": "POST", "htu": URL, "iat": int(time.time()), "jti": "abcdefgh"}, None,
                           algorithm="none", headers={"typ": "dpop+jwt"}),
        _private_jwk_proof,
        lambda: _proof(htm="GET"),
        lambda: _proof(htu="https://evil.example/v1/grants"),
        lambda: _proof(iat=int(time.time()) - 120),
        lambda: _proof(iat=int(time.time()) + 120),
        lambda: _proof(jti="short"),
        lambda: _proof(ath="not-the-hash"),
        lambda: _proof(header={"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}),
        lambda: _proof(header={"jwk": jwt.algorithms.OKPAlgorithm.to_jwk(
            ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True)}),
        lambda: "x" * 5000,
    ],
    ids=["typ", "hs256", "alg-none", "private-jwk", "htm", "htu", "iat-old", "iat-future", "jti-short", "ath",
         "jwk-not-signer", "alg-key-mismatch", "oversized"],  # fmt: skip
)
def test_server_verifier_refuses(proof) -> None:  # noqa: ANN001
    with pytest.raises(InvalidDpop):
        DpopVerifier().verify(proof(), method="POST", urls=[URL], access_token="token")


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_server_verifier_accepts_allowed_algorithms_and_ignores_query(alg) -> None:
    key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    verifier = DpopVerifier()
    proof = verifier.verify(_proof(key, alg, htu=URL + "?x=1"), method="post", urls=["HTTPS://Broker.example/v1/grants"])
    assert len(proof.jkt) == 43


def test_ath_is_required_when_a_bound_token_is_presented() -> None:
    with pytest.raises(InvalidDpop, match="ath"):
        DpopVerifier().verify(_proof(), method="POST", urls=[URL], access_token="tok", require_ath=True)


def test_rfc7638_thumbprint_example() -> None:
    jwk = {
        "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }  # fmt: skip
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert DpopKey().jkt != DpopKey().jkt


def test_in_process_replay_cache_is_bounded_fails_closed_and_forgets_after_expiry() -> None:
    now = [0.0]
    cache = ReplayCache(max_entries=3, clock=lambda: now[0])
    assert [cache(j, 10) for j in ("a", "b", "a", "c")] == [False, False, True, False]
    with pytest.raises(DpopReplayFull):
        cache("d", 10)  # full of live entries: refused, never an old entry dropped to make room
    now[0] = 11
    assert cache("a", 21) is False and len(cache._seen) == 1


def test_the_holder_revokes_a_bound_token_with_its_proof(live, client) -> None:
    cred = client.grant("revoke-by-value", "secure", ["read"], ttl=60)
    client.revoke_token(cred.token)
    assert live.grant(cred.grant_id).status == "completed"
    assert client.introspect(cred.token) == {"active": False}

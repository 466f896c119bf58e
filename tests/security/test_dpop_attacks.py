"""DPoP attacks on the whole deployment: replays across brokers, a forged Host, cosmetic proofs on Vault.

A proof is accepted once by every broker sharing a ledger database (SQLite file or PostgreSQL); its
`htu` names the configured public issuer URL, never the Host header; `require_dpop` is refused where
the downstream system would never ask for a proof.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import pytest
from typer.testing import CliRunner

from broker.cli import app as cli
from broker_client import DpopKey
from tests.support.broker import BROKER_ISSUER, BrokerClient, Issuers, broker_settings, open_client
from tests.support.postgres import fresh_database

GRANTS_URL = BROKER_ISSUER + "/v1/grants"
BODY = {"task": "dpop-replay", "boundary": "orders", "scopes": ["read"], "ttl": 60}


def _headers(token: str, proof: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "DPoP": proof, **extra}


@contextmanager
def _two_brokers(tmp_path, issuers: Issuers, database: str) -> Iterator[tuple[BrokerClient, BrokerClient]]:
    """Two broker apps (each its own components, replay check and pool) on one ledger database."""
    with ExitStack() as stack:
        if database == "sqlite":
            url, extra = f"sqlite:///{tmp_path / 'shared.db'}", {}
        else:
            url = stack.enter_context(fresh_database())
            extra = {"key_encryption_key": base64.b64encode(secrets.token_bytes(32)).decode()}
        brokers = [
            stack.enter_context(open_client(broker_settings(tmp_path / name, issuers, database_url=url, **extra)))
            for name in ("a", "b")
        ]
        yield brokers[0], brokers[1]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_proof_is_accepted_once_across_two_brokers_on_one_database(tmp_path, issuers, database) -> None:
    token = issuers.worker()
    proof = DpopKey().proof("POST", GRANTS_URL, token)
    with _two_brokers(tmp_path, issuers, database) as (a, b):
        # the same proof to both brokers at once, several times each: the database decides, once
        senders = [a, b] * 4
        with ThreadPoolExecutor(len(senders)) as pool:
            answers = list(pool.map(lambda broker: broker.post("/v1/grants", json=BODY, headers=_headers(token, proof)),
                                    senders))  # fmt: skip
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] + [401] * 7, [r.text for r in answers]
        assert {r.json()["code"] for r in answers if r.status_code == 401} == {"invalid_dpop"}
        assert len(a.service.ledger.grants()) == 1  # one ledger: both brokers see the one grant
        replays = [e for e in a.events("denied") if e.detail.get("reason") == "proof jti replayed"]
        assert len(replays) == 7
        # a fresh proof by the same key still works on either broker
        fresh = b.post("/v1/grants", json=BODY, headers=_headers(token, DpopKey().proof("POST", GRANTS_URL, token)))
        assert fresh.status_code == 201


def test_the_replay_cache_is_capped_and_fails_closed(tmp_path, issuers) -> None:
    token = issuers.worker()
    with open_client(broker_settings(tmp_path, issuers, dpop_replay_capacity=2)) as broker:
        key = DpopKey()
        for _ in range(2):
            ok = broker.post("/v1/grants", json=BODY, headers=_headers(token, key.proof("POST", GRANTS_URL, token)))
            assert ok.status_code == 201
        full = broker.post("/v1/grants", json=BODY, headers=_headers(token, key.proof("POST", GRANTS_URL, token)))
        assert (full.status_code, full.json()["code"]) == (503, "dpop_replay_full")
        assert len(broker.service.ledger.grants()) == 2  # nothing issued on an unchecked proof
        assert broker.events("denied")[-1].detail["code"] == "dpop_replay_full"
        with broker.service.ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM dpop_replay").scalar_one() == 2


def test_a_proof_for_the_host_header_is_refused(broker, issuers) -> None:
    token = issuers.worker()
    forged = DpopKey().proof("POST", "http://attacker.example/v1/grants", token)
    answer = broker.post("/v1/grants", json=BODY, headers=_headers(token, forged, Host="attacker.example"))
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_dpop")
    assert broker.service.ledger.grants() == []
    assert broker.events("denied")[-1].detail["reason"] == "proof htu does not match"
    # the configured issuer URL is what counts, whatever Host the request carries
    honest = DpopKey().proof("POST", GRANTS_URL, token)
    assert broker.post("/v1/grants", json=BODY, headers=_headers(token, honest, Host="attacker.example")).status_code == 201


def test_a_proof_for_the_test_clients_own_url_is_refused(broker, issuers) -> None:
    """The URL the request arrived on (http://testserver) is not the broker's public URL either."""
    token = issuers.worker()
    proof = DpopKey().proof("POST", "http://testserver/v1/grants", token)
    answer = broker.post("/v1/grants", json=BODY, headers=_headers(token, proof))
    assert (answer.status_code, answer.json()["code"]) == (401, "invalid_dpop")


VAULT_BOUNDARIES = {
    "vault_token": "{name: kv, backend: vault_token, require_dpop: true, scopes: {read: {token_role: kv-read}}}",
    "vault_secret": "{name: pg, backend: vault_secret, require_dpop: true, scopes: {read: {path: database/creds/r}}}",
}


@pytest.mark.parametrize("backend", sorted(VAULT_BOUNDARIES))
def test_require_dpop_on_a_vault_boundary_is_refused_at_config_load(tmp_path, backend) -> None:
    config = tmp_path / "broker.yaml"
    config.write_text(f"vault: {{addr: 'http://127.0.0.1:8200'}}\nboundaries:\n  - {VAULT_BOUNDARIES[backend]}\n")
    result = CliRunner().invoke(cli, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 2, result.output
    name = "kv" if backend == "vault_token" else "pg"
    assert str(config) in result.output and f"boundary '{name}': require_dpop" in result.output

"""The broker's own Vault token dying (revoked while idle, past its max TTL, rotated in token_file).

While Vault refuses the broker, Vault boundaries answer 503 `backend_unavailable` (recorded as
`denied`), completions stay `revoke_pending`, and a metric and a log line say why; once the broker
can log in again (re-reading its secret-id or token file), it serves and the queued revocations run.
The broker's Vault clock is injected, so login backoff and renewal move only when the test says.
"""

from __future__ import annotations

import re

import pytest

import broker.app
from broker.backends.plan import BROKER_POLICY
from broker.backends.vault import VaultClient
from tests.support.broker import open_client
from tests.support.openbao import VaultBed
from tests.support.wait import wait_until
from tests.vault.approle import approle as _approle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def vault_clock(monkeypatch) -> Clock:
    """Every VaultClient the app builds reads this clock (renewal and login backoff)."""
    clock = Clock()
    monkeypatch.setattr(broker.app, "VaultClient", lambda config: VaultClient(config, clock=clock))
    return clock


def _broker_token(client) -> str:  # noqa: ANN001
    return client.service.backends["vault_token"].vault._hvac.token


def _metric(client, name: str) -> float:  # noqa: ANN001
    found = re.findall(rf"^{re.escape(name)} ([0-9.e+]+)$", client.get("/metrics").text, re.M)
    return float(found[0]) if found else 0.0


def test_token_revoked_while_idle_and_no_login_possible_answers_503_then_recovers(
    tmp_path, issuers, vault_bed: VaultBed, vault_clock: Clock
):
    config, new_secret_id = _approle(vault_bed, tmp_path)
    settings = vault_bed.settings(tmp_path, issuers, vault=config, revoke_retry_max_delay=1)
    identity = issuers.worker()
    auth = {"Authorization": f"Bearer {identity}"}
    with open_client(settings) as client:
        first = client.grant(identity, "kv-payments", ["read"], ttl=120).json()
        (tmp_path / "secret-id").write_text("a-secret-id-vault-never-issued")
        vault_bed.openbao.root().write("auth/token/revoke", {"token": _broker_token(client)})
        # grants are minted by parent tokens, which outlive the broker's: its death is noticed by the
        # readiness check's lookup-self (every few seconds), and from then on no Vault grant is minted
        vault = client.service.backends["vault_token"].vault
        wait_until(lambda: vault.auth_error is not None, 15, "the readiness check noticing the dead token")

        refused = client.grant(identity, "kv-payments", ["read"], ttl=60)
        assert refused.status_code == 503 and refused.json()["code"] == "backend_unavailable"
        denied = client.events("denied")[-1]
        assert (denied.boundary, denied.detail["code"]) == ("kv-payments", "backend_unavailable")
        assert "a-secret-id" not in str(denied.detail)
        assert _metric(client, "broker_vault_auth_ok") == 0
        assert _metric(client, 'broker_vault_auth_failures_total{reason="token_refused"}') >= 1
        assert _metric(client, 'broker_vault_auth_failures_total{reason="login_refused"}') >= 1

        done = client.post(f"/v1/grants/{first['grant_id']}/complete", headers=auth)
        assert done.status_code == 200 and done.json()["status"] == "revoke_pending"
        wait_until(lambda: client.service.ledger.get_grant(first["grant_id"]).revoke_attempts >= 2, 20, "a retry")
        assert vault_bed.openbao.token_lookup(first["credential"]["token"]) == 200

        new_secret_id()
        vault_clock.now += 60  # past the login backoff
        wait_until(lambda: client.service.ledger.grant_status(first["grant_id"]) == "completed", 20, "the completion")
        assert vault_bed.openbao.token_lookup(first["credential"]["token"]) == 403
        assert client.grant(identity, "kv-payments", ["read"], ttl=60).status_code == 201
        assert _metric(client, "broker_vault_auth_ok") == 1


def test_renewal_refused_after_revocation_logs_in_again(tmp_path, issuers, vault_bed: VaultBed, vault_clock: Clock):
    config, _ = _approle(vault_bed, tmp_path)
    with open_client(vault_bed.settings(tmp_path, issuers, vault=config)) as client:
        assert client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).status_code == 201
        old = _broker_token(client)
        vault_bed.openbao.root().write("auth/token/revoke", {"token": old})
        vault_clock.now += 45  # two thirds of the 60 s TTL: the idle worker renews, is refused, logs in
        wait_until(lambda: _broker_token(client) != old, 20, "a new broker token")
        assert _metric(client, 'broker_vault_auth_failures_total{reason="token_refused"}') == 1
        assert client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).status_code == 201


def test_approle_token_past_its_max_ttl_is_replaced_by_a_new_login(tmp_path, issuers, vault_bed: VaultBed, vault_clock):
    config, _ = _approle(vault_bed, tmp_path, token_ttl="2s", token_max_ttl="2s")
    with open_client(vault_bed.settings(tmp_path, issuers, vault=config)) as client:
        assert client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).status_code == 201
        old = _broker_token(client)
        wait_until(lambda: vault_bed.openbao.token_lookup(old) == 403, 20, "OpenBao expiring it")  # the test clock stood still
        answer = client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60)
        assert answer.status_code == 201, answer.text
        assert _broker_token(client) != old


def test_a_token_rotated_in_token_file_is_picked_up_without_restart(tmp_path, issuers, vault_bed: VaultBed, vault_clock):
    root = vault_bed.openbao.root()

    def new_token() -> str:
        return root.write("auth/token/create", {"policies": [BROKER_POLICY], "ttl": "10m", "no_default_policy": False})[
            "auth"]["client_token"]

    token_file = tmp_path / "vault-token"
    token_file.write_text(new_token())
    config = {**vault_bed.openbao.vault_config(2.0), "token": None, "token_file": str(token_file)}
    with open_client(vault_bed.settings(tmp_path, issuers, vault=config)) as client:
        assert client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60).status_code == 201
        old = token_file.read_text()
        token_file.write_text(new_token())  # the agent writes the new token, then revokes the old one
        root.write("auth/token/revoke", {"token": old})
        answer = client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60)
        assert answer.status_code == 201, answer.text
        assert _broker_token(client) == token_file.read_text()
        assert client.events("denied") == []

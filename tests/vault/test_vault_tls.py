"""The broker reaches Vault over HTTPS as configured: the CA it names, or none at all when told so.

OpenBao serves TLS with its own dev CA (`-dev-tls`); the broker's Vault transport (urllib3 under
hvac, broker/backends/vault_http.py) must verify the server against `ca_file`, refuse a server its
trust store cannot verify, and skip verification only with `tls_verify: false`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import urllib3

from broker.backends.plan import apply_plan, make_plan
from broker.backends.vault import VaultClient
from broker.config import VaultConfig
from broker.errors import BackendUnavailable
from tests.support.broker import broker_settings, open_client
from tests.support.openbao import OpenBao, kv_boundary

POLICY = {"rules": [{"name": "payments-workers", "match": {"attestor": "k8s", "subject": "system:serviceaccount:payments:*"},
                      "allow": [{"boundary": "kv-payments", "scopes": ["read"], "max_ttl": "10m"}]}]}  # fmt: skip


@pytest.fixture(scope="module")
def tls_openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    folder = tmp_path_factory.mktemp("openbao-tls")
    server = OpenBao(log_path=folder / "openbao.log", tls_dir=folder / "tls").start()
    try:
        yield server
    finally:
        server.stop()


def test_a_vault_grant_over_https_verified_against_the_configured_ca(tmp_path, issuers, tls_openbao: OpenBao):
    assert tls_openbao.addr.startswith("https://")
    settings = broker_settings(tmp_path, issuers, boundaries=[kv_boundary("payments")], policy=POLICY,
                               vault=tls_openbao.vault_config())  # fmt: skip
    with open_client(settings) as client:
        apply_plan(make_plan(client.service.settings), tls_openbao.root())
        answer = client.grant(issuers.worker(), "kv-payments", ["read"], ttl=60)
        assert answer.status_code == 201, answer.text
        credential = answer.json()["credential"]
        assert credential["vault_addr"] == tls_openbao.addr
        assert tls_openbao.token_lookup(credential["token"]) == 200
        done = client.post(f"/v1/grants/{answer.json()['grant_id']}/complete",
                           headers={"Authorization": f"Bearer {issuers.worker()}"})  # fmt: skip
        assert done.json()["status"] == "completed"
        assert tls_openbao.token_lookup(credential["token"]) == 403


def test_a_server_the_trust_store_cannot_verify_is_unavailable_not_trusted(tls_openbao: OpenBao):
    config = {**tls_openbao.vault_config(), "ca_file": None}  # the system store does not know the dev CA
    with pytest.raises(BackendUnavailable, match="SSL"):
        VaultClient(VaultConfig(**config)).read("sys/mounts")


def test_verification_is_skipped_only_when_configured_off(tls_openbao: OpenBao):
    config = {**tls_openbao.vault_config(), "ca_file": None, "tls_verify": False}
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):  # and it says so
        assert "secret/" in VaultClient(VaultConfig(**config)).read("sys/mounts")["data"]


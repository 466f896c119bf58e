"""The broker's Vault transport (urllib3 under hvac, broker/backends/vault_http.py) as configured.

OpenBao serves TLS with its own dev CA (`-dev-tls`): the transport must verify the server against
`ca_file`, refuse a server its trust store cannot verify, skip verification only with
`tls_verify: false`, and follow a standby's redirect to the active node as hvac's default did.
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



def test_a_redirect_to_the_active_node_is_followed_with_method_and_body(tmp_path, tls_openbao: OpenBao):
    """A Vault standby answers 307 with the active node's address; the call must arrive there whole."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Standby(BaseHTTPRequestHandler):
        def redirect(self) -> None:
            self.send_response(307)
            self.send_header("Location", tls_openbao.addr + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = redirect

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    standby = HTTPServer(("127.0.0.1", 0), Standby)
    threading.Thread(target=standby.serve_forever, daemon=True).start()
    try:
        config = {**tls_openbao.vault_config(), "addr": f"http://127.0.0.1:{standby.server_port}"}
        made = VaultClient(VaultConfig(**config)).write("auth/token/create", {"ttl": "60s", "meta": {"via": "standby"}})
        assert tls_openbao.token_lookup(made["auth"]["client_token"]) == 200
    finally:
        standby.shutdown()
        standby.server_close()

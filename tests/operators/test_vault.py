"""Operator revocations against real OpenBao: vault tokens die, prefix revocation, pending while Vault hangs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import re

import httpx
import pytest
from typer.testing import CliRunner

from broker.backends.plan import apply_plan, make_plan
from broker.cli import app
from tests.operators.fleet import active, auth, issue_fleet, statuses, subject_of
from tests.sdk.live import LiveBroker
from tests.support.broker import BOUNDARIES, Issuers, open_client
from tests.support.openbao import VaultBed, kv_boundary, vault_bed  # noqa: F401 (fixture)
from tests.support.wait import wait_until

WORKER = subject_of("worker")
ALLOW = [{"boundary": name, "scopes": ["read"], "max_ttl": "10m"} for name in ("orders", "payments", "kv-ops")]
POLICY = {
    "rules": [
        {"name": "workers", "match": {"attestor": "k8s", "subject": "system:serviceaccount:payments:*"}, "allow": ALLOW},
        {"name": "operators", "match": {"attestor": "oidc", "subject": "ops-*"}, "roles": ["operator"]},
    ]
}


def bed_settings(bed: VaultBed, data_dir: Path, issuers: Issuers, **extra: Any):  # noqa: ANN201
    """`orders` (jwt), `payments` and `kv-ops` (vault_token, a token role each); the plan applied."""
    payments = {**kv_boundary("payments"), "name": "payments"}
    values = {"boundaries": [BOUNDARIES[0], payments, kv_boundary("ops")], "policy": POLICY, **extra}
    settings = bed.settings(data_dir, issuers, **values)
    apply_plan(make_plan(settings), bed.openbao.root())
    return settings


@pytest.fixture
def vault_broker(tmp_path, issuers, vault_bed):  # noqa: ANN201, F811
    with open_client(bed_settings(vault_bed, tmp_path, issuers)) as broker:
        yield broker


def revoke(broker, issuers, **body):  # noqa: ANN001, ANN003, ANN201
    answer = broker.post("/v1/revocations", json={"reason": "stolen", **body}, headers=auth(issuers.operator()))
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


def test_revoke_by_subject_makes_its_vault_tokens_unusable(vault_broker, issuers, vault_bed):  # noqa: F811
    held = issue_fleet(vault_broker, issuers, 30)  # 3 subjects x (orders jwt, payments vault_token)
    mine = [h for h in held if h.subject == WORKER]

    body = revoke(vault_broker, issuers, subject=WORKER)

    assert (body["matched"], body["revoked"], body["pending"]) == (len(mine), len(mine), 0)
    after = statuses(vault_broker)
    assert all(after[h.grant_id] == ("revoked" if h.subject == WORKER else "active") for h in held)
    tokens = [h for h in held if h.boundary == "payments"]
    assert {vault_bed.openbao.token_lookup(h.token) for h in tokens if h.subject == WORKER} == {403}
    assert {vault_bed.openbao.token_lookup(h.token) for h in tokens if h.subject != WORKER} == {200}
    assert not any(active(vault_broker, issuers, h.token) for h in mine if h.boundary == "orders")


def test_frozen_boundary_is_revoked_by_one_prefix_call(vault_broker, issuers, vault_bed):  # noqa: F811
    tokens = [vault_broker.grant(issuers.worker(sa), "kv-ops", ["read"]).json() for sa in ("worker", "cron") * 5]
    # a token of the same role that no grant knows: only the prefix revocation reaches it
    stray = vault_bed.openbao.root().write("auth/token/create/kv-ops-read", {"ttl": "5m"})["auth"]["client_token"]

    body = revoke(vault_broker, issuers, boundary="kv-ops", freeze=True)

    assert (body["matched"], body["revoked"], body["pending"]) == (10, 10, 0)
    assert {vault_bed.openbao.token_lookup(t["credential"]["token"]) for t in tokens} == {403}
    assert vault_bed.openbao.token_lookup(stray) == 403
    assert vault_broker.grant(issuers.worker(), "kv-ops", ["read"]).json()["code"] == "boundary_frozen"


def test_unfrozen_boundary_revocation_spares_tokens_it_does_not_know(vault_broker, issuers, vault_bed):  # noqa: F811
    held = [vault_broker.grant(issuers.worker(), "kv-ops", ["read"]).json() for _ in range(3)]
    stray = vault_bed.openbao.root().write("auth/token/create/kv-ops-read", {"ttl": "5m"})["auth"]["client_token"]
    assert revoke(vault_broker, issuers, boundary="kv-ops")["revoked"] == 3
    assert {vault_bed.openbao.token_lookup(h["credential"]["token"]) for h in held} == {403}
    assert vault_bed.openbao.token_lookup(stray) == 200


def test_cli_exits_non_zero_while_vault_hangs_then_the_outbox_finishes(tmp_path, issuers, vault_bed):  # noqa: F811
    live = LiveBroker.start(tmp_path, issuers, **_live_values(vault_bed, tmp_path, issuers))
    try:
        from tests.operators.test_cli import Http

        with Http(base_url=live.url) as http:
            held = [http.grant(issuers.worker(), "payments", ["read"], task="hang").json() for _ in range(4)]
        env = {"BROKER_URL": live.url, "BROKER_IDENTITY_TOKEN": issuers.operator()}
        with vault_bed.openbao.outage():
            run = CliRunner().invoke(app, ["revoke", "--task", "hang", "--reason", "x", "--yes", "--timeout", "20"], env=env)
        assert run.exit_code == 1, run.output
        assert "4 revocations still pending" in run.output
        assert {live.grant(h["grant_id"]).status for h in held} == {"revoke_pending"}
        metrics = httpx.get(f"{live.url}/metrics").text
        assert float(re.search(r'broker_vault_errors_total\{operation="revoke"\} (\S+)', metrics)[1]) >= 4
        wait_until(lambda: {live.grant(h["grant_id"]).status for h in held} == {"revoked"}, 30, "the retries revoking")
        assert {vault_bed.openbao.token_lookup(h["credential"]["token"]) for h in held} == {403}
    finally:
        live.stop()


def _live_values(bed: VaultBed, data_dir: Path, issuers: Issuers) -> dict[str, Any]:
    settings = bed_settings(bed, data_dir, issuers, revoke_retry_max_delay=1)
    keep = ("boundaries", "policy", "vault", "revoke_retry_max_delay")
    return {name: getattr(settings, name) for name in keep}

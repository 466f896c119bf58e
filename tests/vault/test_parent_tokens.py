"""Parent tokens (broker/backends/vault_parents.py): a frozen subject's Vault tokens end with one call
per parent, and a parent is never revoked when it could take anyone else's live token with it.

Against the session's OpenBao, with the broker on its planned AppRole policy; the calls the broker
makes are recorded by a loopback proxy in front of OpenBao (tests/support/openbao.py `recorded`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from broker.grants.reconcile import Reconciler
from tests.support.broker import BrokerClient, open_client
from tests.support.openbao import VaultBed, recorded
from tests.vault.approle import approle

SA = "system:serviceaccount:payments:"


@pytest.fixture
def watched(tmp_path, issuers, vault_bed: VaultBed) -> Iterator[tuple[BrokerClient, list]]:
    config, _ = approle(vault_bed, tmp_path)
    with recorded(vault_bed.openbao) as (addr, exchanges):
        with open_client(vault_bed.settings(tmp_path, issuers, vault={**config, "addr": addr})) as client:
            yield client, exchanges


def _grants(client: BrokerClient, identity: str, count: int, prefix: str) -> list[dict]:
    made = [client.grant(identity, "kv-payments", ["read"], ttl=120, task=f"{prefix}-{n}") for n in range(count)]
    assert all(answer.status_code == 201 for answer in made), made[0].text
    return [answer.json() for answer in made]


def _revoke(client: BrokerClient, issuers, **body) -> dict:  # noqa: ANN001, ANN003
    answer = client.post("/v1/revocations", json={"reason": "incident", **body},
                         headers={"Authorization": f"Bearer {issuers.operator()}"})  # fmt: skip
    assert answer.status_code in (200, 202), answer.text
    return answer.json()


def _alive(bed: VaultBed, held: list[dict]) -> list[bool]:
    return [bed.openbao.token_lookup(h["credential"]["token"]) == 200 for h in held]


def _revoke_calls(exchanges: list) -> list[str]:
    return [e.sent.get("accessor") for e in exchanges if e.path == "auth/token/revoke-accessor"]


def test_a_frozen_subject_ends_with_one_call_per_parent_and_bystanders_keep_theirs(watched, issuers, vault_bed):
    client, exchanges = watched
    victim = _grants(client, issuers.worker("victim"), 12, "v")
    bystander = _grants(client, issuers.worker("bystander"), 2, "b")
    parents = {client.service.ledger.get_grant(h["grant_id"]).parent_handle for h in victim}
    assert len(parents) == 1 and None not in parents
    exchanges.clear()

    status = _revoke(client, issuers, subject=SA + "victim", freeze=True)
    assert (status["matched"], status["revoked"], status["pending"]) == (12, 12, 0)
    assert _revoke_calls(exchanges) == list(parents)  # one call, not twelve
    assert not any(_alive(vault_bed, victim)) and all(_alive(vault_bed, bystander))
    assert {client.service.ledger.grant_status(h["grant_id"]) for h in victim} == {"revoked"}


def test_without_a_freeze_or_by_task_a_subjects_tokens_go_one_by_one(watched, issuers, vault_bed):
    client, exchanges = watched
    held = _grants(client, issuers.worker("unfrozen"), 3, "u")
    parent = client.service.ledger.get_grant(held[0]["grant_id"]).parent_handle
    exchanges.clear()

    _revoke(client, issuers, task="u-0")  # one task of the subject: its siblings under the parent live on
    assert _alive(vault_bed, held) == [False, True, True] and parent not in _revoke_calls(exchanges)
    _revoke(client, issuers, subject=SA + "unfrozen")  # not frozen: a grant may commit meanwhile, keep the parent
    assert not any(_alive(vault_bed, held)) and parent not in _revoke_calls(exchanges)
    assert vault_bed.openbao.root().write("auth/token/lookup-accessor", {"accessor": parent})["data"]["orphan"]


def test_a_parent_revoked_under_the_broker_is_replaced_on_the_next_grant(watched, issuers, vault_bed):
    client, _ = watched
    (first,) = _grants(client, issuers.worker("replaced"), 1, "r")
    old = client.service.ledger.get_grant(first["grant_id"]).parent_handle
    vault_bed.openbao.root().write("auth/token/revoke-accessor", {"accessor": old})  # e.g. another replica's freeze
    (second,) = _grants(client, issuers.worker("replaced"), 1, "r2")
    new = client.service.ledger.get_grant(second["grant_id"]).parent_handle
    assert new != old and _alive(vault_bed, [first, second]) == [False, True]


def test_reconcile_leaves_parents_and_their_live_children_alone(watched, issuers, vault_bed):
    client, _ = watched
    held = _grants(client, issuers.worker("reconciled"), 2, "s")
    parent = client.service.ledger.get_grant(held[0]["grant_id"]).parent_handle
    service, later = client.service, time.time() + 3600  # every token is long past the grace
    reconciler = Reconciler(service.backends, list(service.boundaries.values()), service.ledger, grace=30,
                            clock=lambda: later)  # fmt: skip
    reconciler.run()  # a parent names no grant: it is no orphan (revoking it would end its live children)
    assert all(_alive(vault_bed, held))
    assert vault_bed.openbao.accessor_exists(parent)


def test_a_parent_token_can_make_only_its_boundarys_tokens(watched, issuers, vault_bed):
    client, _ = watched
    _grants(client, issuers.worker("least"), 1, "l")
    (parent,) = [p for (b, s), p in client.service.backends["vault_token"].parents._parents.items()
                 if (b, s) == ("kv-payments", SA + "least")]  # fmt: skip
    assert parent.token not in repr(parent) and parent.accessor in repr(parent)  # the secret never in a repr
    headers, addr = {"X-Vault-Token": parent.token}, vault_bed.openbao.addr
    assert httpx.post(f"{addr}/v1/auth/token/create/kv-billing-read", json={}, headers=headers).status_code == 403
    assert httpx.post(f"{addr}/v1/auth/token/create", json={}, headers=headers).status_code == 403
    assert httpx.get(f"{addr}/v1/secret/data/payments/config", headers=headers).status_code == 403
    assert httpx.post(f"{addr}/v1/auth/token/revoke-accessor", json={"accessor": "x"}, headers=headers).status_code == 403


def test_a_parent_is_used_only_while_every_child_would_end_before_it(vault_bed, vault_broker):
    """It makes children for the first max_ttl of its 2 × max_ttl + 60 s: a child (TTL <= max_ttl) made
    at the last moment still ends 60 s before its parent; then the next grant gets a new parent."""
    from broker.backends.vault_parents import PARENT_MARGIN, ParentTokens

    boundary = vault_broker.service.boundaries["kv-payments"]
    now = [1_000.0]
    parents = ParentTokens(vault_bed.openbao.root(), "d-test", clock=lambda: now[0])
    first = parents.get(boundary, SA + "rotating")
    assert first.usable_until == now[0] + boundary.max_ttl
    now[0] = first.usable_until - 1
    assert parents.get(boundary, SA + "rotating") == first
    now[0] = first.usable_until
    second = parents.get(boundary, SA + "rotating")
    assert second.accessor != first.accessor
    ttl = vault_bed.openbao.root().write("auth/token/lookup-accessor", {"accessor": first.accessor})["data"]["ttl"]
    assert ttl >= boundary.max_ttl + PARENT_MARGIN  # Vault's own clock: a child made now would still end first

"""Promise 2 at config load, the Vault plan a config needs, and which token role serves a scope set."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from broker.backends.vault_token import token_role
from broker.cli import app
from broker.config import BoundaryConfig, load_settings
from broker.errors import BadRequest, ConfigError
from tests.support.openbao import kv_boundary

VAULT = {"addr": "http://127.0.0.1:1", "token": "unused"}


def _token(name: str, role: str, policy: str) -> dict:
    return {"name": name, "backend": "vault_token", "scopes": {"read": {"token_role": role, "policies": [policy]}}}


def _secret(name: str, path: str) -> dict:
    return {"name": name, "backend": "vault_secret", "scopes": {"read": {"path": path}}}


SHARED = [
    pytest.param([_token("kv-a", "shared", "pa"), _token("kv-b", "shared", "pb")], "token role shared", id="token-role"),
    pytest.param([_token("kv-a", "ra", "shared"), _token("kv-b", "rb", "shared")], "policy shared", id="policy"),
    pytest.param([_secret("db-a", "database/creds/x"), _secret("db-b", "database/creds/x")], "path database/creds/x",
                 id="engine-role"),
]


@pytest.mark.parametrize(("boundaries", "what"), SHARED)
def test_two_boundaries_on_one_vault_role_are_refused_naming_both(boundaries, what):
    with pytest.raises(ConfigError) as refused:
        load_settings(None, boundaries=boundaries, vault=VAULT)
    message = str(refused.value)
    assert boundaries[0]["name"] in message and boundaries[1]["name"] in message and what in message


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        pytest.param({"vault": None}, "add a `vault:` section", id="no-vault-section"),
        pytest.param({"boundaries": [{**_token("kv-a", "r", "p"), "scopes": {"read": {"token_role": "r", "rules": {"q": ""}}}}]},
                     "not in this scope's policies", id="rules-for-unlisted-policy"),
    ],
)
def test_vault_config_mistakes_are_named(change, complaint):
    values = {"boundaries": [_token("kv-a", "r", "p")], "vault": VAULT, **change}
    with pytest.raises(ConfigError, match=complaint):
        load_settings(None, **{k: v for k, v in values.items() if v is not None})


def test_vault_plan_prints_policies_token_roles_and_engine_roles(tmp_path):
    config = tmp_path / "broker.yaml"
    boundaries = [kv_boundary("payments"), {**_secret("orders-db", "database/creds/orders-read"), "max_ttl": "10m"}]
    boundaries[1]["scopes"]["read"]["role"] = {"db_name": "orders"}
    config.write_text(yaml.safe_dump({"boundaries": boundaries, "vault": VAULT}))
    result = CliRunner().invoke(app, ["vault", "plan", "--config", str(config)])
    assert result.exit_code == 0, result.output
    plan = yaml.safe_load(result.output)
    assert plan["token_roles"]["kv-payments-read"] == {  # the grants' tokens: children of a parent token
        "allowed_policies": ["kv-payments-read"], "orphan": False, "renewable": False,
        "token_explicit_max_ttl": 900, "token_no_default_policy": True, "token_type": "service",
    }
    assert plan["token_roles"]["broker-parent-kv-payments"] == {  # parents: orphans outliving their children
        "allowed_policies": ["credential-broker-parent-kv-payments"], "orphan": True, "renewable": False,
        "token_explicit_max_ttl": 2 * 900 + 60, "token_no_default_policy": True, "token_type": "service",
    }
    parent = plan["policies"]["credential-broker-parent-kv-payments"]
    assert parent == 'path "auth/token/create/kv-payments-read" { capabilities = ["update"] }\n'  # nothing else
    # no lease outlives the cap; a lease of the TTL a grant gets by default is that grant's as it comes
    assert plan["engine_roles"]["database/roles/orders-read"] == {"db_name": "orders", "default_ttl": 300, "max_ttl": 600}
    assert 'path "secret/data/payments/*"' in plan["policies"]["kv-payments-read"]
    broker = plan["policies"]["credential-broker"]
    assert 'path "auth/token/create/kv-payments-read"' not in broker  # only its parents make grants' tokens
    for needed in ("auth/token/create/broker-parent-kv-payments", "database/creds/orders-read",
                   "sys/leases/revoke/database/creds/orders-read/*", "sys/leases/renew/database/creds/orders-read/*",
                   "auth/token/revoke-accessor", "sys/leases/lookup/database/creds/orders-read/"):
        assert f'path "{needed}"' in broker
    # no lease path of the whole cluster: revoke and renew only under the boundary's own path
    assert 'path "sys/leases/revoke"' not in broker and 'path "sys/leases/renew"' not in broker


def test_the_plan_grants_no_lease_paths_without_a_vault_secret_boundary():
    settings = load_settings(None, boundaries=[kv_boundary("payments")], vault=VAULT)
    from broker.backends.plan import make_plan

    broker = make_plan(settings).policies["credential-broker"]
    leases = sorted(line.split('"')[1] for line in broker.splitlines() if '"sys/leases/' in line)
    assert leases == ["sys/leases/lookup/auth/token/create/kv-payments-read/",
                      "sys/leases/revoke-prefix/auth/token/create/kv-payments-read"]


KV = BoundaryConfig(
    name="kv",
    backend="vault_token",
    scopes={
        "read": {"token_role": "kv-read", "policies": ["r"]},
        "write": {"token_role": "kv-write", "policies": ["r", "w"]},
        "admin": {"token_role": "kv-admin", "policies": ["a"]},
    },
)


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        pytest.param(["read"], ("kv-read", ["r"]), id="one-scope-own-role"),
        pytest.param(["read", "write"], ("kv-write", ["r", "w"]), id="covering-role"),
        pytest.param(["admin", "read"], None, id="no-role-covers"),
    ],
)
def test_token_role_for_a_scope_set(scopes, expected):
    if expected is None:
        with pytest.raises(BadRequest, match="different token roles"):
            token_role(KV, scopes)
    else:
        assert token_role(KV, scopes) == expected


@pytest.mark.parametrize(("ttls", "role"), [({"max_ttl": "10m", "default_ttl": "2m"}, (120, 600)),
                                            ({"max_ttl": "4m"}, (240, 240))], ids=["boundary-default", "under-300s"])
def test_engine_role_default_ttl_is_the_boundary_grant_default_within_the_cap(tmp_path, ttls, role):
    boundary = {**_secret("orders-db", "database/creds/orders-read"), **ttls}
    boundary["scopes"]["read"]["role"] = {"db_name": "orders"}
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"boundaries": [boundary], "vault": VAULT}))
    result = CliRunner().invoke(app, ["vault", "plan", "--config", str(config)])
    assert result.exit_code == 0, result.output
    planned = yaml.safe_load(result.output)["engine_roles"]["database/roles/orders-read"]
    assert (planned["default_ttl"], planned["max_ttl"]) == role

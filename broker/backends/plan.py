"""`broker vault plan` / `apply`: the Vault objects a config needs, derived from its boundaries.

The plan is data: ACL policies (the scopes' own, `credential-broker` for the broker's token and
one `credential-broker-parent-<boundary>` per `vault_token` boundary for its parent tokens), token
roles (the scopes': non-renewable, explicit max TTL = the boundary cap, children of a parent token;
`broker-parent-<boundary>`: orphan, see vault_parents.py) and engine roles (`<mount>/creds/<name>`
→ `<mount>/roles/<name>` with `max_ttl` = the boundary cap, so no lease can outlive the cap, and
`default_ttl` = the TTL a grant gets when it names none, so that grant's lease needs no second
call). Operators apply it with their own tooling; `apply` writes it to a dev or test server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from broker.backends.vault import VaultClient
from broker.backends.vault_parents import parent_policy, parent_role, parent_ttl
from broker.config import BoundaryConfig, Settings

BROKER_POLICY = "credential-broker"


@dataclass
class VaultPlan:
    """What Vault must hold for a config: policies by name, token roles by name, engine roles by path."""

    policies: dict[str, str] = field(default_factory=dict)
    token_roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    engine_roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing_rules: list[str] = field(default_factory=list)

    def render(self) -> str:
        body = {"policies": self.policies, "token_roles": self.token_roles, "engine_roles": self.engine_roles}
        text = yaml.safe_dump(body, sort_keys=True, default_flow_style=False, width=120)
        if self.missing_rules:
            text += f"# policies named in the config without `rules` (write them yourself): {self.missing_rules}\n"
        return text


def make_plan(settings: Settings) -> VaultPlan:
    plan = VaultPlan()
    for boundary in settings.boundaries:
        if boundary.backend == "vault_token":
            _token_boundary(plan, boundary)
        elif boundary.backend == "vault_secret":
            _secret_boundary(plan, boundary)
    plan.policies[BROKER_POLICY] = broker_policy(settings.boundaries)
    plan.missing_rules = [name for name in plan.missing_rules if name not in plan.policies]
    return plan


def _token_boundary(plan: VaultPlan, boundary: BoundaryConfig) -> None:
    roles = sorted({str(cfg.token_role) for cfg in boundary.scopes.values()})
    for cfg in boundary.scopes.values():
        plan.token_roles[str(cfg.token_role)] = {
            "allowed_policies": sorted(cfg.policies),
            "orphan": False,  # a child of its subject's parent token: revoking the parent ends it
            "renewable": False,
            "token_explicit_max_ttl": boundary.max_ttl,
            "token_no_default_policy": True,  # `default` would let every grant write cubbyhole, look itself up…
            "token_type": "service",
        }
        plan.policies.update(cfg.rules)
        plan.missing_rules += [name for name in cfg.policies if name not in plan.missing_rules]
    plan.token_roles[parent_role(boundary)] = {
        "allowed_policies": [parent_policy(boundary)],
        "orphan": True,  # never ends with the broker's own token (AppRole tokens rotate)
        "renewable": False,
        "token_explicit_max_ttl": parent_ttl(boundary),
        "token_no_default_policy": True,
        "token_type": "service",
    }
    plan.policies[parent_policy(boundary)] = "\n".join(
        f'path "auth/token/create/{role}" {{ capabilities = ["update"] }}' for role in roles) + "\n"


def _secret_boundary(plan: VaultPlan, boundary: BoundaryConfig) -> None:
    for cfg in boundary.scopes.values():
        role_path = engine_role_path(str(cfg.path))
        if role_path:
            # a lease of the usual grant TTL is the grant's as it comes: one Vault call (vault_secret.py)
            plan.engine_roles[role_path] = {**cfg.role, "default_ttl": boundary.usual_ttl, "max_ttl": boundary.max_ttl}


def engine_role_path(creds_path: str) -> str | None:
    """`database/creds/orders-read` → `database/roles/orders-read`; None when the path is not `…/creds/…`."""
    mount, sep, name = creds_path.strip("/").rpartition("/creds/")
    return f"{mount}/roles/{name}" if sep else None


def broker_policy(boundaries: list[BoundaryConfig]) -> str:
    """The least the broker's own token needs, path by path of its own boundaries.

    Leases: renew and revoke only under each `vault_secret` path (`sys/leases/{renew,revoke}/<path>/*`,
    called with the lease id in the URL so the ACL sees it), list for reconcile under each path or
    token role, prefix revocation per token role. Nothing under `sys/leases/` without a boundary
    that needs it. Tokens: create parents through each boundary's parent role (the parents create
    the grants' tokens); revocation and reconcile still go by accessor (Vault gives a token's
    creator no lease id to revoke it by), see docs/vault.md.
    """
    rules: list[tuple[str, str]] = []
    for boundary in boundaries:
        for cfg in boundary.scopes.values():
            if boundary.backend == "vault_token":
                prefix = f"auth/token/create/{cfg.token_role}"
                # the broker makes parents; the parents make the grants' tokens (the broker's own token cannot)
                rules.append((f"auth/token/create/{parent_role(boundary)}", "update"))
                # operator revocation of a frozen boundary: one prefix call, then wait for it to drain
                rules += [(f"sys/leases/revoke-prefix/{prefix}", "update sudo"), (f"sys/leases/lookup/{prefix}/", "list sudo")]
            elif boundary.backend == "vault_secret":
                path = str(cfg.path).strip("/")
                rules += [(path, "read"), (f"sys/leases/renew/{path}/*", "update"),
                          (f"sys/leases/revoke/{path}/*", "update"), (f"sys/leases/lookup/{path}/", "list sudo")]
    if any(b.backend == "vault_secret" for b in boundaries):
        rules.append(("sys/leases/lookup", "update"))  # a lease's issue time for reconcile; no URL form exists
    if any(b.backend == "vault_token" for b in boundaries):
        rules += [("auth/token/revoke-accessor", "update"), ("auth/token/lookup-accessor", "update"),
                  ("auth/token/accessors", "list sudo")]
    unique = dict.fromkeys(rules)
    return "\n".join(f'path "{p}" {{ capabilities = {_caps(c)} }}' for p, c in unique) + "\n"


def _caps(words: str) -> str:
    return "[" + ", ".join(f'"{w}"' for w in words.split()) + "]"


def apply_plan(plan: VaultPlan, vault: VaultClient) -> list[str]:
    """Write the plan to Vault (dev/test servers); returns what was written."""
    written = []
    for name, rules in plan.policies.items():
        vault.write(f"sys/policies/acl/{name}", {"policy": rules})
        written.append(f"policy {name}")
    for name, params in plan.token_roles.items():
        vault.write(f"auth/token/roles/{name}", params)
        written.append(f"token role {name}")
    for path, params in plan.engine_roles.items():
        vault.write(path, params)
        written.append(f"engine role {path}")
    return written

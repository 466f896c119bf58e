"""docs/configuration.md stays true: every field of every config model has a row in its own table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.config import AttestorConfig, BoundaryConfig, LimitsConfig, ScopeConfig, Settings, VaultConfig, WitnessConfig
from broker.config_x509 import BundleEndpointConfig, ClientCertHeaderConfig, TlsConfig, X509AttestorConfig

DOC = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
# each model and the heading of the section whose table documents it
TABLES = {Settings: "Top level", AttestorConfig: "Attestors", BoundaryConfig: "Boundaries",
          ScopeConfig: "Scopes", LimitsConfig: "Abuse limits", VaultConfig: "Vault",
          WitnessConfig: "Transparency log witnesses", X509AttestorConfig: "X.509-SVID attestors",
          TlsConfig: "TLS", ClientCertHeaderConfig: "Client certificate header",
          BundleEndpointConfig: "SPIFFE bundle endpoints"}  # fmt: skip


def table_fields(doc: str, heading: str) -> set[str]:
    """The names in the first column of the table under `## heading` or `### heading`."""
    match = re.search(rf"^#{{2,3}} {re.escape(heading)}\b.*?$(.*?)(?=^#{{2,3}} |\Z)", doc, flags=re.M | re.S)
    assert match, f"no section {heading!r} in docs/configuration.md"
    rows = [line.split("|")[1] for line in match.group(1).splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([a-z0-9_]+)`", cell)}


@pytest.mark.parametrize("model", TABLES, ids=[m.__name__ for m in TABLES])
def test_every_field_has_a_row_in_its_table(model):
    rows = table_fields(DOC, TABLES[model])
    assert sorted(set(model.model_fields) - rows) == [], "document these in their table"
    assert sorted(rows - set(model.model_fields)) == [], "these rows name no field of the model"


@pytest.mark.parametrize(("heading", "row"), [("Top level", "database_url"), ("Abuse limits", "issue_window"), ("Scopes", "policies")])
def test_a_field_named_only_in_prose_counts_as_missing(heading, row):
    """The check reads the table, not the page: drop a row and the field is missing though the page still names it."""
    without = "\n".join(line for line in DOC.splitlines() if not line.startswith(f"| `{row}` |"))
    assert f"`{row}`" in without
    assert row not in table_fields(without, heading)

"""MCP servers as boundaries: `resource` is the canonical URI, `aud` is exactly it, discovery documents."""

from __future__ import annotations

import json

import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import ValidationError
from typer.testing import CliRunner

from broker.cli import app as cli
from broker.config import load_settings
from broker.errors import ConfigError
from tests.agents.conftest import SERVER_A, SERVER_B, agent_token, exchange_form, mcp_boundaries, mcp_policy
from tests.support.broker import BROKER_ISSUER, broker_settings, open_client

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _verify(broker, token: str, audience: str) -> dict:
    """Checked with PyJWT against the published JWKS, as any resource server would."""
    keys = jwt.PyJWKSet.from_dict(broker.get("/.well-known/jwks.json").json())
    key = keys[jwt.get_unverified_header(token)["kid"]]
    return jwt.decode(token, key.key, algorithms=["ES256", "EdDSA"], audience=audience, issuer=BROKER_ISSUER)


def test_resource_uri_issues_a_token_whose_aud_is_exactly_the_uri(mcp_broker, issuers):
    response = mcp_broker.post("/oauth/token", data=exchange_form(agent_token(issuers)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt" and body["token_type"] == "Bearer"
    claims = _verify(mcp_broker, body["access_token"], SERVER_A)
    assert claims["aud"] == SERVER_A and claims["scope"] == "search"
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(mcp_broker, body["access_token"], SERVER_B)


def test_jwt_bearer_grant_takes_the_workload_identity_as_assertion(mcp_broker, issuers):
    form = {"grant_type": JWT_BEARER, "assertion": agent_token(issuers), "resource": SERVER_B, "scope": "search"}
    response = mcp_broker.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    claims = _verify(mcp_broker, response.json()["access_token"], SERVER_B)
    assert claims["sub"] == "system:serviceaccount:agents:triage"


TARGETS = [
    ("missing", None),
    ("empty", ""),
    ("unknown-uri", "https://mcp-c.test/mcp"),
    ("trailing-slash", SERVER_A + "/"),
    ("upper-case-host", "https://MCP-A.test/mcp"),
    ("with-fragment", SERVER_A + "#x"),
    ("boundary-name-not-uri", "mcp-a"),
]


@pytest.mark.parametrize("resource", [t[1] for t in TARGETS], ids=[t[0] for t in TARGETS])
def test_missing_or_unknown_resource_is_invalid_target(mcp_broker, issuers, resource):
    response = mcp_broker.post("/oauth/token", data=exchange_form(agent_token(issuers), resource))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_target" and response.json()["error"] == "invalid_target"
    assert [e.detail["code"] for e in mcp_broker.events("denied")] == ["invalid_target"]
    assert mcp_broker.service.ledger.grants() == []


def test_a_tool_outside_policy_is_refused(mcp_broker, issuers):
    response = mcp_broker.post("/oauth/token", data=exchange_form(agent_token(issuers), scope="delete"))
    assert response.status_code == 403 and response.json()["code"] == "policy_denied"


def test_authorization_server_metadata_lists_every_grant_type_and_validates(tmp_path, issuers):
    settings = broker_settings(tmp_path, issuers, issuer="https://broker.example", boundaries=mcp_boundaries(),
                               policy=mcp_policy())  # fmt: skip  # RFC 8414 §2: the issuer is an https URL
    with open_client(settings) as client:
        document = client.get("/.well-known/oauth-authorization-server").json()
    AuthorizationServerMetadata(document).validate()  # authlib, an independent RFC 8414 validator
    assert set(document["grant_types_supported"]) == {
        "urn:ietf:params:oauth:grant-type:token-exchange",
        JWT_BEARER,
    }
    assert document["dpop_signing_alg_values_supported"] == ["ES256", "EdDSA"]
    assert {"search", "delete"} <= set(document["scopes_supported"])


def test_cli_prints_the_protected_resource_metadata(tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(json.dumps({"issuer": "https://broker.example", "boundaries": mcp_boundaries()}))
    result = CliRunner().invoke(cli, ["mcp", "metadata", "mcp-a", "--config", str(path)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    ProtectedResourceMetadata.model_validate(document)  # the MCP SDK's own RFC 9728 model
    assert document["resource"] == SERVER_A and document["authorization_servers"] == ["https://broker.example"]
    assert document["scopes_supported"] == ["delete", "search"]
    refused = CliRunner().invoke(cli, ["mcp", "metadata", "orders", "--config", str(path)])
    assert refused.exit_code == 2 and "no mcp boundary" in refused.output


BAD_URIS = [
    ("http-not-loopback", "http://mcp.test/mcp"),
    ("query", "https://mcp.test/mcp?x=1"),
    ("fragment", "https://mcp.test/mcp#a"),
    ("trailing-slash", "https://mcp.test/"),
    ("upper-case", "HTTPS://mcp.test/mcp"),
    ("user-info", "https://u@mcp.test/mcp"),
    ("relative", "/mcp"),
]


@pytest.mark.parametrize("uri", [b[1] for b in BAD_URIS], ids=[b[0] for b in BAD_URIS])
def test_config_refuses_a_non_canonical_resource_uri(uri):
    with pytest.raises(ConfigError, match="resource_uri"):
        load_settings(None, boundaries=mcp_boundaries(a=uri))


def test_config_refuses_two_servers_with_one_uri():
    with pytest.raises(ConfigError, match="share a resource_uri"):
        load_settings(None, boundaries=mcp_boundaries(b=SERVER_A))

"""Standard OAuth clients and resource servers take the broker as it is: authlib is the referee.

authlib is an independent implementation: its RFC 8414 metadata validator, its RFC 9068 JWT access
token validator and RFC 6749 §5.2 error shapes are the oracle, never the broker's own code.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenValidator

from tests.support.broker import BrokerClient, broker_settings, open_client

HTTPS_ISSUER = "https://broker.test"  # RFC 8414 §2: the issuer is an https URL
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture
def https_broker(tmp_path, issuers) -> Iterator[BrokerClient]:
    with open_client(broker_settings(tmp_path, issuers, issuer=HTTPS_ISSUER)) as client:
        yield client


def test_metadata_passes_authlib_rfc8414_validation(https_broker) -> None:
    metadata = AuthorizationServerMetadata(https_broker.get("/.well-known/oauth-authorization-server").json())
    metadata.validate()  # raises ValueError naming the member on any violation
    assert metadata["issuer"] == HTTPS_ISSUER


def test_broker_jwts_pass_authlib_rfc9068_validation(https_broker, issuers) -> None:
    jwks = https_broker.get("/.well-known/jwks.json").json()

    class Validator(JWTBearerTokenValidator):
        def get_jwks(self):  # noqa: ANN202
            return jwks

    answer = https_broker.grant(issuers.worker(), "orders", ["read", "write"])
    assert answer.status_code == 201, answer.text
    validator = Validator(issuer=HTTPS_ISSUER, resource_server="orders")
    token = validator.authenticate_token(answer.json()["credential"]["token"])
    validator.validate_token(token, scopes=["read"], request=None)
    assert token["client_id"] == token["sub"] == "system:serviceaccount:payments:worker"


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"subject_token": "not-a-jwt"}, 400, "invalid_grant"),
        ({"subject_token": None, "resource": "nowhere"}, 400, "invalid_target"),
        ({"subject_token": None, "scope": "delete"}, 400, "invalid_scope"),
        ({"subject_token": None, "requested_ttl": "soon"}, 400, "invalid_request"),
    ],
    ids=["bad-subject-token", "unknown-resource", "unknown-scope", "bad-ttl"],
)
def test_token_endpoint_errors_follow_rfc6749(broker, issuers, form, status, error) -> None:
    body = {"grant_type": EXCHANGE, "subject_token_type": JWT_TYPE, "resource": "orders", "scope": "read", **form}
    body["subject_token"] = body["subject_token"] or issuers.worker()
    answer = broker.post("/oauth/token", data=body)
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert problem["error"] == error and isinstance(problem["error_description"], str) and problem["error_description"]
    assert "WWW-Authenticate" not in answer.headers  # no client authentication failed


def test_introspection_without_a_valid_identity_is_401_invalid_token(broker) -> None:
    answer = broker.post("/oauth/introspect", data={"token": "x"}, headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    assert answer.json()["error_description"]


ERROR_STATUSES = {"401", "403", "404", "413", "415", "422", "429", "503"}


def test_openapi_documents_security_problems_and_oauth_bodies(broker) -> None:
    assert broker.get("/docs").status_code == 200
    schema = broker.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["identityToken"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's 422 shape is not ours
    documented: set[str] = set()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            problems = {s for s, r in operation["responses"].items() if "application/problem+json" in r.get("content", {})}
            assert {"422", "500", "503"} <= problems, (method, path)
            assert "application/json" not in operation["responses"].get("422", {}).get("content", {})
            documented |= problems
            if operation["security"]:
                assert {"401", "403"} <= problems, (method, path)
    assert ERROR_STATUSES <= documented
    for path in ("/oauth/token", "/oauth/introspect", "/oauth/revoke"):
        operation = schema["paths"][path]["post"]
        assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"], path
        assert operation["responses"]["200"].get("content") or path == "/oauth/revoke", path
    assert schema["paths"]["/oauth/token"]["post"]["security"] == []
    assert schema["paths"]["/oauth/introspect"]["post"]["security"] == [{"identityToken": []}]

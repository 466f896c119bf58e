"""The OpenAPI document: security schemes, and every route's problem+json error answers.

FastAPI documents a 422 with its own validation shape; the broker answers every error as RFC 9457
problem+json (broker/api/errors.py), so each operation is given the statuses it can answer with
that one schema instead, and the bearer scheme it authenticates with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from broker.api.schemas import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
PUBLIC_TAGS = frozenset({"discovery", "health", "transparency"})  # anyone may call these
PUBLIC_PATHS = frozenset({"/oauth/token"})  # the identity token travels in the form (`subject_token`)
ISSUING = frozenset({("post", "/v1/grants"), ("post", "/oauth/token")})
TITLES = {
    400: "Bad request (a stable `code` says which rule).",
    401: "No valid identity token (or DPoP proof).",
    403: "Refused by policy, a freeze or a missing role.",
    404: "Not found (or not yours).",
    409: "Conflicts with the current state.",
    413: "Body over the size cap.",
    415: "Wrong Content-Type.",
    422: "Body or parameters invalid.",
    429: "Rate or active-grant limit (Retry-After).",
    500: "Defect; recorded, no detail.",
    503: "Ledger or backend unavailable; nothing was issued.",
}
SECURITY_SCHEMES = {
    "identityToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The caller's attested identity token (Kubernetes, GitHub Actions, SPIFFE JWT-SVID, "
        "OIDC). Resource servers introspect with their own. `Authorization: DPoP <token>` with a `DPoP` proof "
        "header binds the grant to a key (RFC 9449).",
    },
}


def install(app: FastAPI, documented: Sequence[BaseRoute] = ()) -> None:
    """Serve the document; `documented`: routes served as plain ASGI routes, described by an APIRoute."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, documented)
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def document(app: FastAPI, documented: Sequence[BaseRoute] = ()) -> dict[str, Any]:
    routes = [*documented, *app.routes]
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=routes)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            _describe(path, method, operation)
    return schema


def _describe(path: str, method: str, operation: dict[str, Any]) -> None:
    public = PUBLIC_TAGS & set(operation.get("tags", [])) or path in PUBLIC_PATHS
    operation["security"] = [] if public else [{"identityToken": []}]
    statuses = {422, 500, 503}
    if not public or path in PUBLIC_PATHS:
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    if method in ("post", "put", "patch"):
        statuses |= {400, 413, 415}
    if (method, path) in ISSUING:
        statuses.add(429)
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        responses[str(status)] = {"description": TITLES[status],
                                  "content": {"application/problem+json": {"schema": PROBLEM_REF}}}  # fmt: skip

"""Presets: turn the verified claims of one kind of identity token into a subject and derived claims.

Every preset refuses what does not look like its kind of token, so a token from a mis-configured
issuer cannot pose as a subject of another shape. Derived keys appear only when their source is present.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from broker.config import AttestorConfig
from broker.errors import InvalidIdentity

MAX_SUBJECT_CHARS = 512
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, bidi overrides, line breaks

# Kubernetes names: namespace is a DNS label, a service account a DNS subdomain.
_K8S_SUB = re.compile(
    r"system:serviceaccount:(?P<ns>[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)"
    r":(?P<sa>[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?)"
)
# SPIFFE ID: lowercase trust domain, non-empty path of segments without '.'/'..'; no query, no fragment.
_SPIFFE_ID = re.compile(r"spiffe://(?P<td>[a-z0-9._-]{1,255})(?P<path>(?:/[A-Za-z0-9._-]+)+)")
_GITHUB_CLAIMS = (
    "repository", "repository_id", "repository_owner", "repository_owner_id", "ref", "ref_type", "sha",
    "workflow", "workflow_ref", "job_workflow_ref", "environment", "actor", "actor_id", "event_name",
    "run_id", "run_attempt", "runner_environment",
)  # fmt: skip

Derived = dict[str, Any]


def attest(config: AttestorConfig, claims: Mapping[str, Any]) -> tuple[str, Derived]:
    """(subject, derived claims) for verified `claims` under the attestor's preset."""
    subject, derived = _PRESETS[config.preset](config, claims)
    return check_subject(subject), derived


def check_subject(subject: Any) -> str:
    """A non-empty string of at most 512 characters with no control or format characters."""
    if not isinstance(subject, str) or not subject:
        raise InvalidIdentity("subject is missing or not a string")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidIdentity(f"subject longer than {MAX_SUBJECT_CHARS} characters")
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in subject):
        raise InvalidIdentity("subject contains control characters")
    return subject


def _kubernetes(config: AttestorConfig, claims: Mapping[str, Any]) -> tuple[str, Derived]:
    sub = claims.get("sub")
    match = _K8S_SUB.fullmatch(sub) if isinstance(sub, str) else None
    if not match:
        raise InvalidIdentity("kubernetes: sub is not system:serviceaccount:<namespace>:<name>")
    derived: Derived = {"namespace": match["ns"], "service_account": match["sa"]}
    k8s = claims.get("kubernetes.io")
    if k8s is None:
        return sub, derived
    if not isinstance(k8s, Mapping):
        raise InvalidIdentity("kubernetes: kubernetes.io claim is not an object")
    # The nested claim and sub are signed together; disagreement means a broken or forged issuer.
    if k8s.get("namespace") not in (None, match["ns"]):
        raise InvalidIdentity("kubernetes: kubernetes.io.namespace disagrees with sub")
    if _nested(k8s, "serviceaccount", "name") not in (None, match["sa"]):
        raise InvalidIdentity("kubernetes: kubernetes.io.serviceaccount.name disagrees with sub")
    for key, value in (
        ("pod", _nested(k8s, "pod", "name")),
        ("pod_uid", _nested(k8s, "pod", "uid")),
        ("service_account_uid", _nested(k8s, "serviceaccount", "uid")),
        ("node", _nested(k8s, "node", "name")),
    ):
        if value is not None:
            derived[key] = value
    return sub, derived


def _nested(claim: Mapping[str, Any], outer: str, inner: str) -> Any:
    value = claim.get(outer)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get(inner), (str, type(None))):
        raise InvalidIdentity(f"kubernetes: kubernetes.io.{outer} is malformed")
    return value.get(inner)


def _github_actions(config: AttestorConfig, claims: Mapping[str, Any]) -> tuple[str, Derived]:
    sub, repository = claims.get("sub"), claims.get("repository")
    if not isinstance(sub, str) or not isinstance(repository, str) or not repository:
        raise InvalidIdentity("github_actions: sub and repository claims are required")
    # Default and customised GitHub subjects that start with repo: name the same repository.
    if sub.startswith("repo:") and not sub.startswith(f"repo:{repository}:"):
        raise InvalidIdentity("github_actions: sub names another repository")
    derived = {key: claims[key] for key in _GITHUB_CLAIMS if claims.get(key) is not None}
    return sub, derived


def _spiffe_jwt(config: AttestorConfig, claims: Mapping[str, Any]) -> tuple[str, Derived]:
    sub = claims.get("sub")
    match = _SPIFFE_ID.fullmatch(sub) if isinstance(sub, str) else None
    if not match or any(seg in (".", "..") for seg in match["path"].split("/")):
        raise InvalidIdentity("spiffe_jwt: sub is not a SPIFFE ID spiffe://<trust-domain>/<path>")
    if match["td"] != config.trust_domain:
        raise InvalidIdentity("spiffe_jwt: trust domain is not the configured one")
    return sub, {"trust_domain": match["td"], "path": match["path"]}


def _oidc(config: AttestorConfig, claims: Mapping[str, Any]) -> tuple[str, Derived]:
    subject = claims.get(config.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise InvalidIdentity(f"oidc: claim {config.subject_claim!r} is missing or not a string")
    return subject, {}


_PRESETS: dict[str, Callable[[AttestorConfig, Mapping[str, Any]], tuple[str, Derived]]] = {
    "kubernetes": _kubernetes,
    "github_actions": _github_actions,
    "spiffe_jwt": _spiffe_jwt,
    "oidc": _oidc,
}

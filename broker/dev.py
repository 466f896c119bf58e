"""Dev mode: a demo config and a local development identity issuer. Never for production."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from broker.config import Settings, load_settings
from broker.errors import ConfigError

DEV_ISSUER = "https://dev-issuer.broker.invalid"
DEV_AUDIENCE = "broker-dev"
DEV_KID = "dev-issuer-1"
DEMO_POLICY: dict[str, Any] = {
    "rules": [
        {
            "name": "demo-workload",
            "match": {"attestor": "dev", "subject": "dev:demo-workload"},
            "allow": [{"boundary": "demo", "scopes": ["read", "write"], "max_ttl": "15m"}],
        },
        {"name": "dev-operator", "match": {"attestor": "dev", "subject": "dev:operator"}, "roles": ["operator"]},
    ]
}


def _issuer_dir(data_dir: Path) -> Path:
    return data_dir / "dev-issuer"


def ensure_dev_issuer(data_dir: Path) -> Path:
    """Create the dev issuer's key (0600) and its JWKS file once; return the JWKS path."""
    folder = _issuer_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, jwks_path = folder / "key.pem", folder / "jwks.json"
    if not key_path.exists():
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    jwk = ECAlgorithm(ECAlgorithm.SHA256).to_jwk(private.public_key(), as_dict=True)
    jwks_path.write_text(json.dumps({"keys": [{**jwk, "kid": DEV_KID, "alg": "ES256", "use": "sig"}]}))
    return jwks_path


def dev_token(data_dir: Path, subject: str, lifetime: int = 3600) -> str:
    """An identity token from the dev issuer, accepted only by a broker in dev mode."""
    key_path = _issuer_dir(data_dir) / "key.pem"
    if not key_path.exists():
        raise ConfigError(f"{key_path}: no dev issuer here; run `broker dev --data-dir {data_dir}` first")
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": subject,
        "aud": DEV_AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key_path.read_bytes(), algorithm="ES256", headers={"kid": DEV_KID})


def dev_config(data_dir: Path, port: int) -> dict[str, Any]:
    """The demo configuration: one jwt boundary `demo`, the dev attestor, the demo policy."""
    return {
        "env": "development",
        "issuer": f"http://127.0.0.1:{port}",
        "data_dir": str(data_dir),
        "dev_issuer": DEV_ISSUER,
        "attestors": [
            {
                "name": "dev",
                "preset": "oidc",
                "issuer": DEV_ISSUER,
                "audiences": [DEV_AUDIENCE],
                "algorithms": ["ES256"],
                "jwks_file": str(ensure_dev_issuer(data_dir)),
            }
        ],
        "boundaries": [{"name": "demo", "backend": "jwt", "scopes": ["read", "write"], "max_ttl": "15m"}],
        "policy": DEMO_POLICY,
    }


def dev_settings(data_dir: Path, port: int) -> Settings:
    """Settings for `broker dev`; refused when BROKER_ENV=production."""
    if os.environ.get("BROKER_ENV", "").lower() == "production":
        raise ConfigError("broker dev is refused when BROKER_ENV=production")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return load_settings(None, **dev_config(data_dir.resolve(), port))

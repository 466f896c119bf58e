"""The compose demo's workload: `keys` makes a throwaway identity issuer, `run` asks for credentials.

    python demo_workload.py keys /run/broker          # once: a private key and the JWKS the broker trusts
    python demo_workload.py run /run/broker URL...   # a grant per boundary, spread over the replicas, then done
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER, AUDIENCE, KID = "https://demo-issuer.compose.invalid", "broker", "demo-1"


def make_keys(folder: Path) -> None:
    key_path = folder / "issuer-key.pem"
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
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}))


def identity_token(folder: Path, subject: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 300,
              "jti": uuid.uuid4().hex}  # fmt: skip
    return jwt.encode(claims, (folder / "issuer-key.pem").read_bytes(), algorithm="ES256", headers={"kid": KID})


def run(folder: Path, urls: list[str]) -> None:
    headers = {"Authorization": f"Bearer {identity_token(folder, 'demo-workload')}"}
    task = f"demo-{uuid.uuid4().hex[:8]}"
    for index, boundary in enumerate(["orders", "orders-db", "orders-vault"]):
        base = urls[index % len(urls)]
        body = {"task": task, "boundary": boundary, "scopes": ["read"], "ttl": 120}
        answer = httpx.post(f"{base}/v1/grants", json=body, headers=headers, timeout=10)
        shown = answer.json()
        shown.pop("credential", None)  # never print a credential
        print(f"{base} {boundary}: {answer.status_code} {shown.get('grant_id') or shown.get('code')}")
    done = httpx.post(f"{urls[-1]}/v1/tasks/{task}/complete", headers=headers, timeout=10)
    print(f"task {task} completed: {done.status_code} {done.json()}")


if __name__ == "__main__":
    where = Path(sys.argv[2])
    make_keys(where) if sys.argv[1] == "keys" else run(where, sys.argv[3:])

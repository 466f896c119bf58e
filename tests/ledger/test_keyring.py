"""Signing keys shared by replicas: sealed in the database, one JWKS, rotation seen by every replica."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from broker.errors import ConfigError
from broker.ledger import make_engine, migrate
from broker.ledger.keyring import DatabaseKeyRepository, parse_kek, read_kek
from broker.ledger.models import SigningKeyRow
from broker.signing import KeyStore, SigningKeyError, build_claims
from tests.support.postgres import fresh_database

ISSUER = "http://broker.test"


@pytest.fixture(scope="module")
def engine() -> Iterator:
    with fresh_database() as url:
        engine = make_engine(url)
        migrate.upgrade(engine)
        yield engine
        engine.dispose()


@pytest.fixture
def kek(engine) -> Iterator[bytes]:  # noqa: ANN001
    """A fresh KEK per test, and an empty key table after it."""
    yield secrets.token_bytes(32)
    with engine.begin() as conn:
        conn.execute(SigningKeyRow.__table__.delete())


def _replica(engine, kek: bytes) -> KeyStore:  # noqa: ANN001
    return KeyStore(DatabaseKeyRepository(engine, kek), algorithm="ES256", max_token_ttl=900)


def _token(store: KeyStore, jti: str = "g_1") -> str:
    now = time.time()
    claims = build_claims(
        issuer=ISSUER, subject="s", audience="orders", scopes=("read",), task="t", jti=jti,
        issued_at=now, expires_at=now + 60,
    )  # fmt: skip
    return store.sign(claims)


def test_replicas_share_keys_and_publish_one_jwks(engine, kek: bytes) -> None:
    first, second = _replica(engine, kek), _replica(engine, kek)
    assert first.active.kid == second.active.kid
    assert first.jwks() == second.jwks()
    assert second.verify(_token(first), issuer=ISSUER, audience="orders")["sub"] == "s"


def test_rotation_on_one_replica_is_seen_by_the_others(engine, kek: bytes) -> None:
    first, second = _replica(engine, kek), _replica(engine, kek)
    old = second.active.kid
    new = first.rotate().kid
    # before its periodic reload, the other replica still verifies tokens of the new key (reload on unknown kid)
    assert second.verify(_token(first, "g_2"), issuer=ISSUER)["jti"] == "g_2"
    second.reload()
    assert second.active.kid == new != old
    assert first.jwks() == second.jwks() and {k["kid"] for k in second.jwks()["keys"]} >= {old, new}


def test_private_keys_are_sealed_at_rest(engine, kek: bytes) -> None:
    store = _replica(engine, kek)
    with engine.connect() as conn:
        row = conn.execute(select(SigningKeyRow.__table__).where(SigningKeyRow.kid == store.active.kid)).one()
    assert b"PRIVATE KEY" not in base64.b64decode(row.sealed)
    assert store.active.private_pem.decode() not in row.sealed


def test_a_wrong_kek_is_named_not_guessed(engine, kek: bytes) -> None:
    _replica(engine, kek)
    with pytest.raises(SigningKeyError, match="sealed with KEK"):
        _replica(engine, secrets.token_bytes(32))


def test_a_sealed_key_moved_to_another_row_does_not_open(engine, kek: bytes) -> None:
    store = _replica(engine, kek)
    kid = store.rotate().kid
    other = next(k.kid for k in store.keys() if k.kid != kid)
    with engine.begin() as conn:
        sealed = conn.execute(select(SigningKeyRow.sealed).where(SigningKeyRow.kid == kid)).scalar_one()
        conn.execute(update(SigningKeyRow).where(SigningKeyRow.kid == other).values(sealed=sealed))
    with pytest.raises(SigningKeyError, match="does not open"):
        store.reload()


KEK = bytes(range(32))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (KEK.hex(), True),
        (base64.b64encode(KEK).decode(), True),
        (base64.urlsafe_b64encode(KEK).decode().rstrip("="), True),
        (base64.b64encode(KEK[:16]).decode(), False),
        ("not a key", False),
        ("", False),
    ],
    ids=["hex", "base64", "base64url-unpadded", "too-short", "garbage", "empty"],
)
def test_parse_kek(text: str, ok: bool) -> None:
    if ok:
        assert parse_kek(text) == KEK
    else:
        with pytest.raises(ConfigError, match="32 bytes"):
            parse_kek(text)


def test_kek_from_a_mounted_file_or_refused_when_missing(tmp_path) -> None:
    path = tmp_path / "kek"
    path.write_text(KEK.hex() + "\n")
    assert read_kek(None, path) == KEK
    with pytest.raises(ConfigError, match="BROKER_KEY_ENCRYPTION_KEY"):
        read_kek(None, None)
    with pytest.raises(ConfigError, match="not both"):
        read_kek(KEK.hex(), path)

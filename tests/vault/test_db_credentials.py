"""vault_secret on OpenBao's database engine: real PostgreSQL roles that can do what the scope says, then vanish."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.openbao import TABLE, VaultBed

CAN = [
    pytest.param("read", {"select": True, "insert": False}, id="read-selects-only"),
    pytest.param("write", {"select": True, "insert": True}, id="write-inserts-too"),
]


def _can(conn: psycopg.Connection, action: str) -> bool:
    sql = {"select": f"SELECT count(*) FROM {TABLE}", "insert": f"INSERT INTO {TABLE} VALUES (random() * 1e9, 'x')"}
    try:
        conn.execute(sql[action])
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


@pytest.mark.parametrize(("scope", "expected"), CAN)
def test_db_credentials_do_their_scope_and_die_on_complete(vault_broker, issuers, pg_bed: VaultBed, scope, expected):
    token = issuers.worker()
    answer = vault_broker.grant(token, "orders-db", [scope], ttl=120)
    assert answer.status_code == 201, answer.text
    cred = answer.json()["credential"]
    assert cred["type"] == "vault_secret" and cred["lease_id"].startswith(f"database/creds/orders-db-{scope}/")
    assert cred["connection"]["database"] == pg_bed.pg_url.rsplit("/", 1)[1]
    user, password = cred["data"]["username"], cred["data"]["password"]
    with pg_bed.pg(user, password) as conn:
        assert {action: _can(conn, action) for action in expected} == expected

    done = vault_broker.post(f"/v1/grants/{answer.json()['grant_id']}/complete", headers={"Authorization": f"Bearer {token}"})
    assert done.json()["status"] == "completed"
    with pytest.raises(psycopg.OperationalError):
        pg_bed.pg(user, password).close()
    with pg_bed.pg() as admin:
        assert admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (user,)).fetchone() == (0,)
    assert not pg_bed.openbao.lease_exists(cred["lease_id"])


def test_grant_row_holds_the_lease_id_not_the_password(vault_broker, issuers, pg_bed: VaultBed):
    answer = vault_broker.grant(issuers.worker(), "orders-db", ["read"], ttl=60).json()
    row = vault_broker.service.ledger.get_grant(answer["grant_id"])
    assert row.handle == answer["credential"]["lease_id"]
    stored = " ".join(str(e.detail) for e in vault_broker.events()) + repr(row.__dict__)
    assert answer["credential"]["data"]["password"] not in stored


def test_read_and_write_in_one_grant_is_refused_and_recorded(vault_broker, issuers, pg_bed: VaultBed):
    answer = vault_broker.grant(issuers.worker(), "orders-db", ["read", "write"], ttl=60)
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_request"
    assert vault_broker.events("denied")[-1].detail["code"] == "invalid_request"
    assert vault_broker.service.ledger.grants(boundary="orders-db") == []

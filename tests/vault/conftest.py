"""Fixtures of the Vault tests: the session OpenBao + PostgreSQL bed and a broker wired to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.broker import BrokerClient, open_client
from tests.support.openbao import VaultBed, pg_bed, vault_bed  # noqa: F401 (fixtures)


@pytest.fixture
def vault_broker(tmp_path, issuers, vault_bed: VaultBed) -> Iterator[BrokerClient]:
    with open_client(vault_bed.settings(tmp_path, issuers)) as client:
        yield client

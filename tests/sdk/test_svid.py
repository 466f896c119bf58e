"""SDK over mutual TLS: dev SVIDs from `broker dev-svid` (checked by py-spiffe), rotation without a restart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import X509Bundle, X509Svid
from typer.testing import CliRunner

from broker.cli import app
from broker.dev import dev_config, mark_dev_data_dir
from broker.dev_svid import dev_tls_config, dev_x509_rules
from tests.sdk.live import LiveBroker
from tests.support.broker import Issuers

SUBJECT = "spiffe://dev.local/ns/demo/sa/worker"


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dev-data").resolve()
    mark_dev_data_dir(folder)
    return folder


@pytest.fixture(scope="module")
def dev_broker(tmp_path_factory, issuers: Issuers, dev_dir: Path) -> Iterator[LiveBroker]:
    config = dev_config(dev_dir, 0) | dev_tls_config(dev_dir)
    rules = config["policy"]["rules"] + dev_x509_rules(["orders"])
    live = LiveBroker.start(tmp_path_factory.mktemp("svid-broker"), issuers, tls=config["tls"],
                            x509_attestors=config["x509_attestors"], policy={"rules": [r for r in rules if r["match"].get("attestor") != "dev"]},
                            env="development")  # fmt: skip
    yield live
    live.stop()


def dev_svid(dev_dir: Path, out: Path, subject: str = SUBJECT) -> None:
    result = CliRunner().invoke(app, ["dev-svid", "--subject", subject, "--out", str(out), "--data-dir", str(dev_dir)])
    assert result.exit_code == 0, result.output


def test_dev_svids_are_well_formed_for_py_spiffe(dev_dir: Path, tmp_path: Path) -> None:
    dev_svid(dev_dir, tmp_path)
    svid = X509Svid.load(str(tmp_path / "svid.pem"), str(tmp_path / "svid_key.pem"), Encoding.PEM)
    assert str(svid.spiffe_id) == SUBJECT
    bundle = X509Bundle.load(svid.spiffe_id.trust_domain, str(tmp_path / "bundle.pem"), Encoding.PEM)
    assert len(bundle.x509_authorities) == 1
    assert oct(os.stat(tmp_path / "svid_key.pem").st_mode & 0o777) == "0o600"


def test_dev_svid_refuses_other_trust_domains(dev_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dev-svid", "--subject", "spiffe://acme.internal/x", "--out", str(tmp_path),
                                      "--data-dir", str(dev_dir)])  # fmt: skip
    assert result.exit_code == 2 and "dev.local" in result.output


def test_sdk_grants_with_svid_files_and_follows_their_rotation(dev_broker: LiveBroker, dev_dir: Path,
                                                               tmp_path: Path) -> None:
    from broker_client import Client, SvidFiles

    dev_svid(dev_dir, tmp_path)
    with Client(dev_broker.url, SvidFiles(tmp_path), dpop=False) as client:
        first = client.grant("t-svid-1", "orders", ["read"], ttl=60)
        dev_svid(dev_dir, tmp_path)  # rotated: a new key and certificate, the same SPIFFE ID
        second = client.grant("t-svid-2", "orders", ["read"], ttl=60)
    one, two = (jwt.decode(c.token, options={"verify_signature": False}) for c in (first, second))
    assert one["sub"] == two["sub"] == SUBJECT
    assert one["cnf"]["x5t#S256"] != two["cnf"]["x5t#S256"]  # the second handshake presented the new SVID
    assert dev_broker.grant(second.grant_id).cnf_x5t == two["cnf"]["x5t#S256"]


def test_client_cert_and_key_arguments(dev_broker: LiveBroker, dev_dir: Path, tmp_path: Path) -> None:
    from broker_client import Client

    dev_svid(dev_dir, tmp_path)
    with Client(dev_broker.url, cert=tmp_path / "svid.pem", key=tmp_path / "svid_key.pem",
                verify=str(tmp_path / "bundle.pem"), dpop=False) as client:  # fmt: skip
        with client.task("t-cert") as task:
            assert task.grant("orders", ["read"], ttl=60).token

"""SPIFFE bundle endpoints as trust bundle sources: real HTTPS endpoints on loopback, web PKI and https_spiffe.

The bundle documents are built here from the certificates with PyJWT's JWK export (SPIFFE Trust Domain
and Bundle §4: a JWK Set whose `x509-svid` keys carry their CA certificate in `x5c`), not by the broker.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from jwt.algorithms import ECAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from broker.dev_openbao import free_port
from tests.sdk.live import LiveBroker, sdk_policy
from tests.support import pki
from tests.support.broker import Issuers
from tests.support.wait import wait_until

PROXY = "127.0.0.2"
WEB, SPF, SPF2 = "fed.internal", "spf.internal", "spf2.internal"
ENDPOINT_ID = f"spiffe://{SPF}/bundle-endpoint"


def bundle(*cas: pki.Issued, sequence: int = 1, **extra) -> bytes:
    keys = []
    for ca in cas:
        jwk = ECAlgorithm.to_jwk(ca.cert.public_key(), as_dict=True)
        keys.append({**jwk, "use": "x509-svid", "x5c": [base64.b64encode(ca.der).decode()]})
    keys.append({"kty": "EC", "use": "jwt-svid", "kid": "ignored", "crv": "P-256", "x": "AA", "y": "AA"})  # not ours
    return json.dumps({"keys": keys, "spiffe_sequence": sequence, "spiffe_refresh_hint": 300, **extra}).encode()


class Endpoint:
    """A bundle endpoint over HTTPS whose answer the test changes."""

    def __init__(self, folder: Path, server: pki.Issued, chain: tuple[pki.Issued, ...], document: bytes) -> None:
        self.status, self.document = 200, document
        cert, key = pki.write_identity(folder, server, *chain)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/bundle"
        app = Starlette(routes=[Route("/bundle", self._serve)])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ssl_certfile=str(cert),
                                ssl_keyfile=str(key))  # fmt: skip
        self.server = uvicorn.Server(config)
        threading.Thread(target=self.server.run, daemon=True).start()
        wait_until(lambda: self.server.started, timeout=10, what="the bundle endpoint", interval=0.02)

    async def _serve(self, request: Request) -> Response:
        return Response(self.document, status_code=self.status, media_type="application/json")

    def answer(self, document: bytes | None = None, status: int = 200) -> None:
        self.document, self.status = (document if document is not None else self.document), status



class Applied(logging.Handler):
    """The broker's log lines for one endpoint: each fetch ends with one (authorities taken, or why not)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.count, self.cond = url, 0, threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if self.url in record.getMessage():
            with self.cond:
                self.count += 1
                self.cond.notify_all()

    def wait_after(self, count: int, timeout: float = 10) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.count > count, timeout), "the broker did not refresh the bundle"


@pytest.fixture(scope="module")
def world(tmp_path_factory, issuers: Issuers) -> Iterator[dict]:
    folder = tmp_path_factory.mktemp("bundles")
    web_ca, fed, spf, spf2 = pki.ca("web"), pki.ca(WEB), pki.ca(SPF), pki.ca(SPF2)
    broker_ca = pki.ca("broker")
    (folder / "web-ca.pem").write_bytes(web_ca.pem)
    (folder / "spf-bootstrap.pem").write_bytes(spf.pem)
    server = pki.server(broker_ca)
    (folder / "server.pem").write_bytes(server.pem)
    (folder / "server-key.pem").write_bytes(server.key_pem)
    web = Endpoint(folder / "web", pki.server(web_ca), (), bundle(fed))
    spiffe = Endpoint(folder / "spiffe", pki.svid(spf, ENDPOINT_ID), (), bundle(spf))
    policy = sdk_policy()
    for domain in (WEB, SPF, SPF2):
        policy["rules"].append({"name": f"w-{domain}", "match": {"attestor": "fed", "subject": f"spiffe://{domain}/w"},
                                "allow": [{"boundary": "orders", "scopes": ["read"], "max_ttl": "5m"}]})  # fmt: skip
    clock = [time.time()]
    trust = {
        WEB: {"url": web.url, "ca_file": str(folder / "web-ca.pem"), "refresh": 300, "max_stale": 600},
        SPF: {"url": spiffe.url, "profile": "https_spiffe", "endpoint_spiffe_id": ENDPOINT_ID,
              "ca_file": str(folder / "spf-bootstrap.pem")},
        # the same endpoint, expected to be another workload: its certificate chains, its SPIFFE ID is wrong
        SPF2: {"url": spiffe.url, "profile": "https_spiffe", "endpoint_spiffe_id": f"spiffe://{SPF2}/bundle-endpoint",
               "ca_file": str(folder / "spf-bootstrap.pem")},
    }  # fmt: skip
    live = LiveBroker.start(
        tmp_path_factory.mktemp("bundle-broker"), issuers, clock=lambda: clock[0], policy=policy,
        tls={"cert_file": str(folder / "server.pem"), "key_file": str(folder / "server-key.pem")},
        x509_attestors=[{"name": "fed", "trust_domains": trust}],
        client_cert_header={"header": "X-SSL-Client-Cert", "trusted_proxies": [f"{PROXY}/32"]},
    )  # fmt: skip
    applied = Applied(web.url)
    logger = logging.getLogger("broker.identity.x509")
    level, _ = logger.level, logger.setLevel(logging.INFO)
    logger.addHandler(applied)
    yield {"applied": applied, "broker": live, "web": web, "spiffe": spiffe, "fed": fed, "spf": spf, "spf2": spf2, "clock": clock,
           "folder": folder, "broker_ca": broker_ca}  # fmt: skip
    logger.removeHandler(applied)
    logger.setLevel(level)
    live.stop()
    web.server.should_exit = spiffe.server.should_exit = True


def _grant_over_mtls(world: dict, leaf: pki.Issued, task: str) -> httpx.Response:
    context = ssl.create_default_context(cadata=world["broker_ca"].pem.decode())
    cert, key = pki.write_identity(world["folder"] / f"id-{task}", leaf)
    context.load_cert_chain(cert, key)
    with httpx.Client(verify=context, timeout=10) as client:
        return client.post(f"{world['broker'].url}/v1/grants", json={"task": task, "boundary": "orders", "scopes": ["read"]})


def _grant_via_proxy(world: dict, leaf: pki.Issued, task: str) -> httpx.Response:
    """Through the trusted proxy's header: the attestor alone decides, no handshake store in the way."""
    context = ssl.create_default_context(cadata=world["broker_ca"].pem.decode())
    transport = httpx.HTTPTransport(verify=context, local_address=PROXY)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.post(f"{world['broker'].url}/v1/grants", json={"task": task, "boundary": "orders", "scopes": ["read"]},
                           headers={"X-SSL-Client-Cert": quote(leaf.pem.decode())})  # fmt: skip


def _refused(answer: httpx.Response) -> bool:
    return answer.status_code == 401 and answer.json()["code"] == "invalid_identity"


def test_web_pki_and_https_spiffe_endpoints_are_trust_bundles(world) -> None:
    for domain, ca in ((WEB, world["fed"]), (SPF, world["spf"])):
        answer = _grant_over_mtls(world, pki.svid(ca, f"spiffe://{domain}/w"), f"t-{domain}")
        assert answer.status_code == 201, answer.text


def test_an_https_spiffe_endpoint_with_another_spiffe_id_is_not_believed(world) -> None:
    answer = _grant_via_proxy(world, pki.svid(world["spf"], f"spiffe://{SPF2}/w"), "t-spf2")
    assert _refused(answer), answer.text
    events = world["broker"].events(kind="denied")
    assert events[-1].detail["code"] == "invalid_identity"


def test_refresh_keeps_the_last_bundle_while_unreachable_and_fails_closed_on_a_bad_document(world) -> None:
    web, clock, fed, applied = world["web"], world["clock"], world["fed"], world["applied"]
    leaf = pki.svid(fed, f"spiffe://{WEB}/w")
    assert _grant_via_proxy(world, leaf, "t-r0").status_code == 201

    web.answer(status=503)  # down: the last good bundle stays trusted for max_stale (600 s)
    hits, clock[0] = applied.count, clock[0] + 301
    _grant_via_proxy(world, leaf, "t-r1")  # due: this request starts the refresh, off its own path
    applied.wait_after(hits)
    assert _grant_via_proxy(world, leaf, "t-r2").status_code == 201
    hits, clock[0] = applied.count, clock[0] + 600
    assert _refused(_grant_via_proxy(world, leaf, "t-r3"))  # stale past max_stale: nothing trusted
    # that request was due to refresh too (still 503): let its fetch end, or it would still be running
    # when the next one is due, and one fetch at a time means the next would start none
    applied.wait_after(hits)

    web.answer(bundle(fed, sequence=2))
    hits, clock[0] = applied.count, clock[0] + 11  # failures are retried every 10 s
    _grant_via_proxy(world, leaf, "t-r4")
    applied.wait_after(hits)
    assert _grant_via_proxy(world, leaf, "t-r5").status_code == 201

    two_certs = json.loads(bundle(fed, sequence=3))
    two_certs["keys"][0]["x5c"].append(two_certs["keys"][0]["x5c"][0])  # x5c must be exactly one certificate
    too_large = bundle(fed, sequence=4, padding="x" * (1024 * 1024))
    # the fourth goes back in sequence
    for bad in (b"<html>", json.dumps(two_certs).encode(), too_large, bundle(fed, sequence=1)):
        web.answer(bad)
        hits, clock[0] = applied.count, clock[0] + 301
        _grant_via_proxy(world, leaf, "t-bad")
        applied.wait_after(hits)
        assert _refused(_grant_via_proxy(world, leaf, "t-bad-after")), bad[:40]  # fail closed at once
        web.answer(bundle(fed, sequence=5))
        hits, clock[0] = applied.count, clock[0] + 11
        _grant_via_proxy(world, leaf, "t-good")
        applied.wait_after(hits)
        assert _grant_via_proxy(world, leaf, "t-good-after").status_code == 201


def test_a_root_dropped_from_the_endpoint_is_distrusted_after_the_refresh(world) -> None:
    web, clock, fed, applied = world["web"], world["clock"], world["fed"], world["applied"]
    leaf = pki.svid(fed, f"spiffe://{WEB}/w")
    newer = pki.ca(WEB)
    web.answer(bundle(newer, sequence=10))  # fed's root rotated out
    hits, clock[0] = applied.count, clock[0] + 301
    _grant_via_proxy(world, leaf, "t-rot")
    applied.wait_after(hits)
    assert _refused(_grant_via_proxy(world, leaf, "t-rot-after"))
    assert _grant_via_proxy(world, pki.svid(newer, f"spiffe://{WEB}/w"), "t-rot-new").status_code == 201


@pytest.mark.parametrize(("source", "field"), [
    ({"url": "http://spire.example/bundle"}, "url"),
    ({"url": "https://spire.example/bundle", "profile": "https_spiffe", "ca_file": "b.pem"}, "endpoint_spiffe_id"),
    ({"url": "https://spire.example/bundle", "profile": "https_spiffe", "endpoint_spiffe_id": "spiffe://x/y"}, "ca_file"),
    ({"url": "https://spire.example/bundle", "endpoint_spiffe_id": "spiffe://x/y"}, "https_spiffe"),
    ({"url": "https://spire.example/bundle", "refresh": 1}, "refresh"),
    ("https://spire.example/bundle", "a bundle endpoint is a mapping"),
], ids=["http", "no-endpoint-id", "no-bootstrap", "id-without-profile", "refresh-too-often", "url-as-a-path"])  # fmt: skip
def test_bad_bundle_endpoint_settings_are_refused_at_load(tmp_path, issuers: Issuers, source: dict | str, field: str) -> None:
    from broker.errors import ConfigError
    from tests.support.broker import broker_settings

    with pytest.raises(ConfigError) as refused:
        broker_settings(tmp_path, issuers, x509_attestors=[{"name": "fed", "trust_domains": {WEB: source}}])
    assert field in str(refused.value)

"""X.509-SVIDs over mutual TLS, against a real uvicorn TLS server on loopback and real certificates."""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker.serving import MAX_HEAD_BYTES
from tests.sdk.live import LiveBroker, sdk_policy
from tests.support import pki
from tests.support.raw_http import connect, padded_head, read_to_close, refusal, send_all
from tests.support.broker import Issuers

TD = "acme.internal"
WORKER = f"spiffe://{TD}/ns/payments/sa/worker"
ROTATING = "spiffe://rot.internal/ns/payments/sa/worker"
PROXY = "127.0.0.2"  # the only trusted proxy; tests connect from 127.0.0.1 unless they pose as it


class Pki:
    """Two trust domains and a third rotated one; the server certificate chains to the acme root."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = pki.ca(TD)
        self.inter = pki.ca(TD, self.root)
        self.other = pki.ca("other.internal")
        self.rot_old, self.rot_new = pki.ca("rot.internal"), pki.ca("rot.internal")
        self.server = pki.server(self.root)
        for name, issued in {"acme": self.root, "other": self.other, "rot": self.rot_old}.items():
            (folder / f"{name}-bundle.pem").write_bytes(issued.pem)
        (folder / "server.pem").write_bytes(self.server.pem)
        (folder / "server-key.pem").write_bytes(self.server.key_pem)

    def context(self, leaf: pki.Issued | None, *chain: pki.Issued) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.root.pem.decode())
        if leaf is not None:
            cert, key = pki.write_identity(self.folder / f"id-{id(leaf)}", leaf, *chain)
            context.load_cert_chain(cert, key)
        return context

    def client(self, leaf: pki.Issued | None, *chain: pki.Issued, local: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(verify=self.context(leaf, *chain), local_address=local)
        return httpx.Client(transport=transport, timeout=10)


def mtls_policy() -> dict:
    policy = sdk_policy()
    for name, subject in (("spire-worker", WORKER), ("rot-worker", ROTATING)):
        rule = {"name": name, "match": {"attestor": "spire", "subject": subject},
                "allow": [{"boundary": "orders", "scopes": ["read"], "max_ttl": "5m"}]}  # fmt: skip
        policy["rules"].append(rule)
    return policy


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory, issuers: Issuers, certs: Pki) -> Iterator[LiveBroker]:
    folder = certs.folder
    live = LiveBroker.start(
        tmp_path_factory.mktemp("mtls-broker"),
        issuers,
        policy=mtls_policy(),
        tls={"cert_file": str(folder / "server.pem"), "key_file": str(folder / "server-key.pem")},
        x509_attestors=[{"name": "spire", "trust_domains": {
            TD: str(folder / "acme-bundle.pem"), "other.internal": str(folder / "other-bundle.pem"),
            "rot.internal": str(folder / "rot-bundle.pem")}}],  # fmt: skip
        client_cert_header={"header": "X-SSL-Client-Cert", "trusted_proxies": [f"{PROXY}/32"]},
    )
    yield live
    live.stop()


def x5t(issued: pki.Issued) -> str:
    """RFC 8705 §3.1 computed independently: base64url(SHA-256(DER)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(issued.der).digest()).rstrip(b"=").decode()


def grant(client: httpx.Client, url: str, task: str = "t-mtls", **headers: str) -> httpx.Response:
    body = {"task": task, "boundary": "orders", "scopes": ["read"], "ttl": 60}
    return client.post(f"{url}/v1/grants", json=body, headers=headers)


def refusals(broker: LiveBroker, action: str = "POST /v1/grants") -> int:
    return sum(e.detail.get("count", 1) for e in broker.events(kind="denied")
               if e.detail.get("code") == "invalid_identity" and e.detail.get("action") == action)  # fmt: skip


def test_svid_over_mtls_gets_a_certificate_bound_grant(broker: LiveBroker, certs: Pki) -> None:
    leaf = pki.svid(certs.inter, WORKER)
    with certs.client(leaf, certs.inter) as client:
        made = grant(client, broker.url)
        assert made.status_code == 201, made.text
        token = made.json()["credential"]["token"]
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == WORKER and claims["cnf"] == {"x5t#S256": x5t(leaf)}
        row = broker.grant(made.json()["grant_id"])
        assert (row.attestor, row.cnf_x5t) == ("spire", x5t(leaf))
        seen = client.post(f"{broker.url}/oauth/introspect", data={"token": token}).json()
        assert seen["active"] and seen["cnf"] == {"x5t#S256": x5t(leaf)}
        done = client.post(f"{broker.url}/v1/grants/{row.id}/complete")
        assert done.status_code == 200 and done.json()["status"] == "completed"


def test_bearer_tokens_still_work_over_tls_without_a_client_certificate(broker: LiveBroker, certs: Pki,
                                                                        issuers: Issuers) -> None:
    with certs.client(None) as client:
        made = grant(client, broker.url, Authorization=f"Bearer {issuers.worker()}")
    assert made.status_code == 201, made.text
    assert "cnf" not in jwt.decode(made.json()["credential"]["token"], options={"verify_signature": False})


BAD = {
    "wrong trust domain": lambda c: (pki.svid(c.other, WORKER), ()),
    "expired": lambda c: (pki.svid(c.inter, WORKER, start=pki.NOW - 3 * pki.HOUR, end=pki.NOW - pki.HOUR), (c.inter,)),
    "not yet valid": lambda c: (pki.svid(c.inter, WORKER, start=pki.NOW + pki.HOUR, end=pki.NOW + 2 * pki.HOUR),
                                (c.inter,)),
    "CA leaf": lambda c: (pki.svid(c.inter, WORKER, is_ca=True), (c.inter,)),
    "two URI SANs": lambda c: (pki.svid(c.inter, WORKER, f"spiffe://{TD}/ns/x/sa/y"), (c.inter,)),
    "no URI SAN": lambda c: (pki.svid(c.inter, dns=("worker.acme.internal",)), (c.inter,)),
}
# certificates OpenSSL will not present or accept at a handshake at all: refused there, and by the
# attestor when a trusted proxy hands them over
HANDSHAKE_REFUSED = {
    "unknown root": lambda c: (pki.svid(pki.ca(TD), WORKER), ()),  # claims the trust domain, not in its bundle
    "intermediate withheld": lambda c: (pki.svid(c.inter, WORKER), ()),
    "no digitalSignature": lambda c: (pki.svid(c.inter, WORKER, digital_signature=False), (c.inter,)),
}


@pytest.mark.parametrize("make", BAD.values(), ids=BAD.keys())
def test_bad_svids_are_refused_and_recorded(broker: LiveBroker, certs: Pki, make) -> None:  # noqa: ANN001
    leaf, chain = make(certs)
    before = refusals(broker)
    with certs.client(leaf, *chain) as client:  # the handshake lets these through: the attestor decides
        answer = grant(client, broker.url)
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_identity"
    assert refusals(broker) == before + 1


@pytest.mark.parametrize("make", HANDSHAKE_REFUSED.values(), ids=HANDSHAKE_REFUSED.keys())
def test_unverifiable_chains_are_refused_at_the_handshake_and_through_the_proxy(broker: LiveBroker, certs: Pki,
                                                                               make) -> None:  # noqa: ANN001
    leaf, chain = make(certs)
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        with certs.client(leaf, *chain) as client:
            grant(client, broker.url)  # never an HTTP request
    before = refusals(broker)
    with certs.client(None, local=PROXY) as proxy:
        pem = leaf.pem + b"".join(c.pem for c in chain)
        answer = grant(proxy, broker.url, **{"X-SSL-Client-Cert": quote(pem.decode())})
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_identity"
    assert refusals(broker) == before + 1


def test_a_trusted_proxy_header_attests_like_the_handshake(broker: LiveBroker, certs: Pki) -> None:
    leaf = pki.svid(certs.inter, WORKER)
    xfcc = f'By=spiffe://{TD}/proxy;Hash=abc;Chain="{quote((leaf.pem + certs.inter.pem).decode())}";Subject="CN=svid"'
    with certs.client(None, local=PROXY) as proxy:
        nginx = grant(proxy, broker.url, **{"X-SSL-Client-Cert": quote((leaf.pem + certs.inter.pem).decode())})
        envoy = grant(proxy, broker.url, task="t-xfcc", **{"X-SSL-Client-Cert": f'By=x;Cert="junk",{xfcc}'})
    assert nginx.status_code == 201 and envoy.status_code == 201, (nginx.text, envoy.text)
    assert broker.grant(envoy.json()["grant_id"]).cnf_x5t == x5t(leaf)


def test_a_header_injected_certificate_from_an_untrusted_address_is_refused(broker: LiveBroker, certs: Pki,
                                                                            issuers: Issuers) -> None:
    good = quote((pki.svid(certs.inter, WORKER).pem + certs.inter.pem).decode())
    before = refusals(broker)
    with certs.client(None) as direct:  # from 127.0.0.1, not the trusted proxy
        answer = grant(direct, broker.url, **{"X-SSL-Client-Cert": good})
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_identity"
    assert refusals(broker) == before + 1


def test_a_rotated_out_bundle_is_distrusted_at_the_next_request(broker: LiveBroker, certs: Pki) -> None:
    old, new = pki.svid(certs.rot_old, ROTATING), pki.svid(certs.rot_new, ROTATING)
    with certs.client(old) as client:
        assert grant(client, broker.url, task="t-rot-1").status_code == 201
    (certs.folder / "rot-next.pem").write_bytes(certs.rot_new.pem)
    (certs.folder / "rot-next.pem").replace(certs.folder / "rot-bundle.pem")  # atomically, as SPIRE agents do
    before = refusals(broker)
    with certs.client(old) as client:
        answer = grant(client, broker.url, task="t-rot-2")
    assert answer.status_code == 401 and answer.json()["code"] == "invalid_identity"
    assert refusals(broker) == before + 1
    with certs.client(new) as client:  # the new root is asked for at the next handshake, no restart
        assert grant(client, broker.url, task="t-rot-3").status_code == 201


def test_completion_and_introspection_need_the_bound_certificate(broker: LiveBroker, certs: Pki) -> None:
    first, second = pki.svid(certs.inter, WORKER), pki.svid(certs.inter, WORKER)  # same SPIFFE ID, two keys
    with certs.client(first, certs.inter) as holder, certs.client(second, certs.inter) as other:
        made = grant(holder, broker.url, task="t-bound").json()
        before = refusals(broker, "complete")
        refused = other.post(f"{broker.url}/v1/grants/{made['grant_id']}/complete")
        assert refused.status_code == 401 and refused.json()["code"] == "invalid_identity"
        assert refusals(broker, "complete") == before + 1
        task = other.post(f"{broker.url}/v1/tasks/t-bound/complete")
        assert task.status_code == 401
        seen = other.post(f"{broker.url}/oauth/introspect", data={"token": made["credential"]["token"]})
        assert seen.status_code == 401
        assert broker.grant(made["grant_id"]).status == "active"
        done = holder.post(f"{broker.url}/v1/grants/{made['grant_id']}/complete")
        assert done.status_code == 200 and done.json()["status"] == "completed"


def test_https_is_parsed_by_httptools_as_plain_http_is(broker: LiveBroker, certs: Pki) -> None:
    """The TLS-facts protocol is uvicorn's C-parser protocol, not pure-Python h11; the chain still arrives."""
    assert issubclass(broker.server.config.http, HttpToolsProtocol)
    leaf = pki.svid(certs.inter, WORKER)
    with certs.client(leaf, certs.inter) as client:  # one keep-alive connection: each request sees the chain
        made = [grant(client, broker.url) for _ in range(3)]
    assert [m.status_code for m in made] == [201, 201, 201]
    assert {jwt.decode(m.json()["credential"]["token"], options={"verify_signature": False})["cnf"]["x5t#S256"]
            for m in made} == {x5t(leaf)}  # fmt: skip


def test_a_head_over_the_cap_is_refused_over_mtls_too(broker: LiveBroker, certs: Pki) -> None:
    sock = connect(broker.url, certs.context(pki.svid(certs.inter, WORKER), certs.inter))
    send_all(sock, [padded_head(MAX_HEAD_BYTES + 1)])
    assert refusal(read_to_close(sock), 431)["code"] == "headers_too_large"

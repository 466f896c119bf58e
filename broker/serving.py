"""Serving with uvicorn: a cap on each request's head, and HTTPS with the broker's own certificate,
client certificates asked for (never required), and each connection's peer chain handed to the app
as the ASGI TLS extension.

Why a cap: uvicorn's httptools protocol (the C parser, llhttp) has no limit on a request's line and
headers, so a client could make the broker hold megabytes of headers per request (h11 stops at
16 KiB), and neither has a deadline for them, so a client trickling a head holds its connection for
as long as it likes. `CappedHeadProtocol` answers a head over `MAX_HEAD_BYTES` with 431
`headers_too_large`, and one unfinished `HEAD_TIMEOUT` after its first bytes with 408
`request_timeout`, and closes the connection; it is the protocol of plain HTTP and HTTPS alike.

Why a protocol subclass: uvicorn (h11 and httptools alike) puts nothing of TLS in the ASGI scope and
an app cannot reach the transport, so the protocol, which owns the transport, wraps the app of its
connection with the chain read once after the handshake (`scope["extensions"]["tls"]`, as the ASGI
TLS extension names it; a server that provides the extension itself needs none of this).

The handshake asks with `CERT_OPTIONAL` and every trust bundle as CA, so a client without a
certificate still reaches bearer-token routes. OpenSSL checks the chain's signatures there, but not its
dates: the attestor (broker/identity/x509.py) checks dates with the same bounded skew as identity JWTs,
and checks the chain again against the one bundle of the SPIFFE ID's trust domain, so an expired
certificate is refused with a recorded `invalid_identity`, not a silent handshake failure.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from broker.config import Settings
from broker.errors import ConfigError, InvalidIdentity
from broker.identity.x509 import EndpointBundle, TrustBundle, trust_bundle

log = logging.getLogger(__name__)

# a request line and its headers: identity tokens, DPoP proofs and a proxy's forwarded client chain fit
# several times over; more is refused before any route runs
MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT = 30.0  # seconds from a head's first bytes to its end: a client trickling one holds no connection longer
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL ≥ 1.1.0; not named by Python's ssl module


def uvicorn_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn.run/Config options serving HTTPS per `settings.tls`; {} when TLS is not configured."""
    if settings.tls is None:
        return {}
    server_context(settings)  # fail at start, naming the file, rather than in the first handshake
    return {"ssl_context_factory": functools.partial(_factory, settings), "http": TlsFactsProtocol}


def _factory(settings: Settings, config: Any, default: Any) -> ssl.SSLContext:
    return server_context(settings)


def server_context(settings: Settings) -> ssl.SSLContext:
    """The broker's server context: its certificate, TLS ≥ 1.2, client certificates from the bundles asked for."""
    assert settings.tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load {settings.tls.cert_file} / {settings.tls.key_file}: {exc}") from None
    bundles = [
        trust_bundle(source, domain, f"x509 attestor {a.name} ({domain})")
        for a in settings.x509_attestors
        for domain, source in a.trust_domains.items()
    ]
    if bundles:
        _ask_for_client_certificates(context, _Roots(context, bundles))
    return context


def _ask_for_client_certificates(context: ssl.SSLContext, roots: _Roots) -> None:
    if not roots.refresh():
        raise ConfigError("tls: no trust bundle of x509_attestors could be read")
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | X509_V_FLAG_NO_CHECK_TIME)
    # called on every ClientHello (with or without SNI): a root added to a bundle file is asked for at
    # the next handshake; a removed one stays in OpenSSL's store, but the attestor no longer trusts it
    context.sni_callback = lambda _obj, _name, _ctx: roots.refresh() and None


class _Roots:
    """Adds the bundles' authorities to the server context's store whenever a bundle file changes."""

    def __init__(self, context: ssl.SSLContext, bundles: list[TrustBundle | EndpointBundle]) -> None:
        self._context = context
        self._bundles = bundles
        self._loaded: set[bytes] = set()

    def refresh(self) -> bool:
        for bundle in self._bundles:
            try:
                pem = bundle.pem()
            except InvalidIdentity as exc:  # the attestor refuses this trust domain meanwhile
                log.warning("%s", exc.detail)
                continue
            if pem and pem not in self._loaded:
                self._context.load_verify_locations(cadata=pem.decode())
                self._loaded.add(pem)
        return bool(self._loaded)


def peer_chain(ssl_object: ssl.SSLObject) -> list[bytes]:
    """The client's certificates as sent, leaf first (DER); [] when it sent none."""
    public = getattr(ssl_object, "get_unverified_chain", None)  # Python ≥ 3.13
    if public is not None:
        return [bytes(der) for der in public() or []]
    private = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)  # 3.10-3.12
    if private is not None:
        # (on the server side CPython puts the peer's leaf first: None when it sent no certificate)
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in private() or [] if c is not None]  # type: ignore[attr-defined]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class _WithTls:
    """The connection's app, with the ASGI TLS extension added to each request's scope."""

    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self._tls}}
        await self._app(scope, receive, send)


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing, uvicorn answers through send_400_response."""


class CappedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on each request's head (request line and headers), and a
    deadline for it: HEAD_TIMEOUT from its first bytes to its end.

    The size is counted twice: the bytes received while a head is incomplete (so a head that never ends is cut
    off after at most one read past the cap), and the line and headers as parsed (so one that ends
    in the same read as it grew past the cap is refused too)."""

    head_timeout = HEAD_TIMEOUT
    _received: int | None = 0  # bytes of the current request's head so far; None from its end to the next head
    _parsed = 0
    _too_large = False
    _deadline: asyncio.TimerHandle | None = None  # the current head's HEAD_TIMEOUT

    def data_received(self, data: bytes) -> None:
        if self._received is not None:
            if not self._received and data:
                self._deadline = self.loop.call_later(self.head_timeout, self._timed_out)
            self._received += len(data)
        super().data_received(data)
        if self._received is not None and self._received > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._too_big()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._received = None
        self._stop_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._received = 0

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > MAX_HEAD_BYTES:
            self._too_large = True
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # the parser stopped at HeadTooLarge
            return self._too_big()
        super().send_400_response(msg)

    def _too_big(self) -> None:
        self._refuse(431, "headers_too_large", f"The request line and headers are over {MAX_HEAD_BYTES} bytes.")

    def _timed_out(self) -> None:
        if self._received is not None and not self.transport.is_closing():
            title = f"The request line and headers did not arrive within {self.head_timeout:g} s."
            self._refuse(408, "request_timeout", title)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: int, code: str, title: str) -> None:
        """Answer before any route runs (problem+json, as the app's own refusals) and close the connection."""
        self._stop_deadline()
        log.warning("refused a request head from %s: %s", self.client and self.client[0], code)
        problem = {"type": f"urn:broker:problem:{code}", "status": status, "code": code, "title": title}
        body = json.dumps(problem).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, HTTPStatus(status).phrase.encode(), len(body)))  # fmt: skip
        self.transport.write(head + body)
        self.transport.close()


class TlsFactsProtocol(CappedHeadProtocol):
    """The capped httptools protocol (as plain HTTP is served), handing the peer chain of its TLS
    connection to the app. On h11, pure Python, HTTPS grants ran 8-40 % slower (bench/README.md)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        try:
            chain = peer_chain(ssl_object)
        except Exception as exc:  # noqa: BLE001 - a certificate we cannot read is no certificate, never a dead connection
            log.warning("could not read the client certificate chain: %s", exc)
            chain = []
        tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain], "client_cert_error": None,
               "server_cert": None, "client_cert_name": None, "tls_version": None, "cipher_suite": None}
        self.app = _WithTls(self.app, tls)

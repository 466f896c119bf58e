"""TLS facts of a request: the client certificate chain from our own handshake, or from a trusted proxy.

Our own handshake: the ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_chain"]`, PEM,
leaf first), which broker/serving.py adds for uvicorn (uvicorn has no such extension itself).

Behind a TLS-terminating proxy (off unless `client_cert_header` is configured): the header holds the
URL-encoded PEM (nginx `$ssl_client_escaped_cert`) or an Envoy `x-forwarded-client-cert` element
(`Cert="…"`/`Chain="…"`). It is believed only on connections from `trusted_proxies`; the header
arriving from anywhere else is refused, so nobody can inject a certificate by sending it directly.
"""

from __future__ import annotations

import re
import ssl
from ipaddress import ip_address
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import Request

from broker.config_x509 import ClientCertHeaderConfig
from broker.identity.x509 import MAX_CHAIN_BYTES, TlsFacts

# one `key=value` pair of an XFCC element; `,` outside quotes starts the next proxy's element
_XFCC_PAIR = re.compile(r'\s*([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;,]*)\s*([;,]?)')


def tls_facts(request: Request) -> TlsFacts | None:
    """The request's client certificate as TLS facts, or None when it presented none."""
    header = request.app.state.service.settings.client_cert_header
    if header is not None:
        values = request.headers.getlist(header.header)
        if values:
            return _from_proxy(values, request, header)
    tls = (request.scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain")
    if not chain:
        return None
    try:
        return TlsFacts(tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in chain), "tls")
    except (ValueError, TypeError):
        return TlsFacts((), "tls", refusal="the server handed over an unreadable client certificate")


def _from_proxy(values: list[str], request: Request, config: ClientCertHeaderConfig) -> TlsFacts:
    host = request.client.host if request.client else ""
    try:
        trusted = any(ip_address(host) in net for net in config.trusted_proxies)
    except ValueError:
        trusted = False
    if not trusted:
        return TlsFacts((), "header", refusal="client certificate header from an address that is not a trusted proxy")
    if len(values) != 1 or len(values[0]) > 3 * MAX_CHAIN_BYTES:
        return TlsFacts((), "header", refusal="client certificate header repeated or too large")
    try:
        pem = unquote(_xfcc_certificate(values[0]))
        chain = tuple(cert.public_bytes(Encoding.DER) for cert in x509.load_pem_x509_certificates(pem.encode()))
    except ValueError:
        return TlsFacts((), "header", refusal="client certificate header holds no readable PEM certificate")
    return TlsFacts(chain, "header")


def _xfcc_certificate(value: str) -> str:
    """The URL-encoded PEM of the nearest proxy's XFCC element (its `Chain`, else its `Cert`), or `value`."""
    if "=" not in value.split("-----", 1)[0]:
        return value  # plain URL-encoded PEM (nginx)
    element: dict[str, str] = {}
    for match in _XFCC_PAIR.finditer(value):
        key, raw, sep = match.groups()
        element[key.lower()] = raw[1:-1] if raw.startswith('"') else raw
        if sep == "," and match.end() < len(value):
            element = {}  # a later element: the proxy nearest to us appended it last
    return element.get("chain") or element.get("cert") or ""

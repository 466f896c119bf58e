"""hvac's JSON adapter on one urllib3 keep-alive pool, instead of a `requests` session.

Every grant of a Vault boundary makes one Vault call on the hot path (and every revocation one
more). Through `requests` a call costs ~0.97 ms of the broker's CPU on this machine, through
urllib3 (which `requests` itself runs on) ~0.33 ms: sessions, hooks, cookie jars, proxy and
environment lookups and the response wrapper are the difference, none of which the broker uses.
hvac stays the client: its URL joining, Vault headers and error mapping (`raise_for_error`, so the
same `hvac.exceptions` reach `VaultClient`) are its own; only the transport under it changes.
Network failures surface as `urllib3.exceptions.HTTPError`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import hvac.adapters
import urllib3

from broker.blocking import may_block

POOL_CONNECTIONS = 64  # one per thread that may call Vault at once (issuing threads, outbox threads)
# no retries (callers retry, and a mint must not run twice), but redirects followed as requests did:
# a Vault standby answers 307 to the active node, keeping method and body
CALLS = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_redirect=True)


class Answer:
    """What hvac's error mapping reads of a response (status, headers, text, JSON)."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.status_code = response.status
        self.headers = response.headers
        self.content = response.data

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class PooledAdapter(hvac.adapters.JSONAdapter):
    """Keep-alive connections to one Vault address: TLS verification (CA file or system store), client
    certificate and timeout as configured; redirects followed, no retries (callers retry). Calls go
    straight to `vault.addr`: no HTTP(S)_PROXY from the environment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        verify, cert = self._kwargs["verify"], self._kwargs["cert"]
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
        if isinstance(verify, str):
            tls["ca_certs"] = verify
        if cert:
            tls["cert_file"], tls["key_file"] = cert
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=POOL_CONNECTIONS, retries=CALLS,
                                        timeout=urllib3.Timeout(total=self._kwargs["timeout"]), **tls)  # fmt: skip

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, raise_exception: bool = True,
                **kwargs: Any) -> Any:  # fmt: skip
        """hvac's JSONAdapter.request: a dict for a 200 with JSON, else the answer; raises hvac's errors."""
        may_block()  # never from the event loop (broker/blocking.py)
        url = self.urljoin(self.base_uri, re.sub("/{2,}", "/", url))  # as hvac does: `//` is `/` to Vault
        headers = {"X-Vault-Request": "true", **(headers or {})}
        if self.token and "X-Vault-Token" not in headers:  # a caller's own token (a parent token) wins
            headers["X-Vault-Token"] = self.token
        if self.namespace:
            headers["X-Vault-Namespace"] = self.namespace
        body = None
        if kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"]).encode()
            headers["Content-Type"] = "application/json"
        answer = Answer(self.pool.request(method.upper(), url, body=body, headers=headers))
        if not answer.ok and raise_exception and not self.ignore_exceptions:
            self._raise_for_error(method, url, answer)
        if answer.status_code == 200 and answer.content:
            try:
                return answer.json()
            except ValueError:
                pass
        return answer

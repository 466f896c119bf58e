"""For resource servers: hear of ended grants at once (Shared Signals / CAEP) and refuse their tokens.

    receiver = SignalReceiver("https://broker.example", identity=lambda: read_token(), boundaries=["orders"],
                              endpoint_url="https://rs.example/ssf/events")   # or no endpoint_url: poll
    receiver.register()
    app.add_middleware(SignalMiddleware, receiver=receiver, verifier=Verifier(issuer, audience))

SETs are verified (signature against the broker's JWKS, `typ: secevent+jwt`, `iss`, `aud` = the stream's);
a revoked `jti` is kept until its token's `exp` (the event says when), in bounded memory. A freeze
(`session-revoked` naming a subject or a boundary, no session) refuses every token of that `sub` or
`aud` issued at or before the freeze, for `default_retention` seconds.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from broker_client.errors import BrokerClientError, InvalidToken

log = logging.getLogger(__name__)
SET_TYPE = "secevent+jwt"
ALGORITHMS = ("ES256", "EdDSA")
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
PUSH, POLL = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"


class InvalidSet(BrokerClientError):
    """A Security Event Token failed verification; `err` is the RFC 8935 §2.4 error code."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err, self.description = err, description


class RevokedSet:
    """jti → expiry, pruned as they pass; at `capacity` the soonest-expiring entry goes first (logged)."""

    def __init__(self, capacity: int, clock: Callable[[], float]) -> None:
        self.capacity, self.clock = capacity, clock
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, key: str, until: float) -> bool:
        """False when the key was already there (a duplicate)."""
        self._prune()
        if key in self._until:
            return False
        if len(self._until) >= self.capacity:
            _, gone = heapq.heappop(self._heap)
            self._until.pop(gone, None)
            log.warning("signal receiver at capacity (%d): forgot the soonest-expiring entry", self.capacity)
        self._until[key] = until
        heapq.heappush(self._heap, (until, key))
        return True

    def __contains__(self, key: str) -> bool:
        until = self._until.get(key)
        return until is not None and until > self.clock()

    def _prune(self) -> None:
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            if self._until.get(key, now + 1) <= now:
                del self._until[key]


class SignalReceiver:
    """Registers a stream with the broker, verifies its SETs and remembers what they revoked. Thread-safe."""

    def __init__(
        self, broker_url: str, *, identity: Callable[[], str], boundaries: list[str], endpoint_url: str | None = None,
        audience: str | None = None, on_event: Callable[[dict[str, Any]], None] | None = None,
        capacity: int = 200_000, default_retention: float = 3600, http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.broker_url, self.identity, self.boundaries = broker_url.rstrip("/"), identity, boundaries
        self.endpoint_url, self.audience, self.on_event = endpoint_url, audience, on_event
        self.default_retention, self.clock = default_retention, clock
        self.http = http or httpx.Client(timeout=10.0)
        self.stream: dict[str, Any] | None = None
        self.issuer: str | None = None
        self.verified_states: set[str] = set()
        self._revoked = RevokedSet(capacity, clock)
        self._frozen: dict[str, tuple[float, float]] = {}  # "sub:…" or "aud:…" → (freeze time, kept until)
        self._seen = RevokedSet(capacity, clock)  # SET jti and txn: no event reaches the app twice
        self._keys: dict[str, Any] = {}
        self._keys_at = 0.0
        self._lock = threading.Lock()
        self._ack: list[str] = []
        self._stop = threading.Event()

    # --- the stream -----------------------------------------------------------------------------

    def register(self) -> dict[str, Any]:
        """Read the transmitter's metadata, then reuse this receiver's stream for `audience` or create one."""
        meta = self._get(f"{self.broker_url}/.well-known/ssf-configuration")
        self.issuer, self._config = meta["issuer"], meta["configuration_endpoint"]
        self._jwks_uri = meta["jwks_uri"]
        delivery = {"method": PUSH, "endpoint_url": self.endpoint_url} if self.endpoint_url else {"method": POLL}
        for stream in self._call("GET", self._config):
            if self.audience and stream["aud"] == self.audience:
                self.stream = self._call("PUT", self._config, json={**_writable(stream), "delivery": delivery,
                                                                    "boundaries": self.boundaries})  # fmt: skip
                return self.stream
        body: dict[str, Any] = {"delivery": delivery, "boundaries": self.boundaries}
        if self.audience:
            body["aud"] = self.audience
        self.stream = self._call("POST", self._config, json=body)
        self._key("")  # the broker's keys now, so the first SET needs no fetch
        return self.stream

    def request_verification(self, state: str) -> None:
        self._call("POST", f"{self.broker_url}/ssf/verify", json={"stream_id": self._stream()["stream_id"], "state": state})

    def delete(self) -> None:
        self._call("DELETE", self._config, params={"stream_id": self._stream()["stream_id"]})

    # --- SETs -----------------------------------------------------------------------------------

    def receive(self, token: str) -> bool:
        """Verify and apply one SET; True when it was new (a duplicate is accepted and ignored)."""
        claims = self.verify(token)
        with self._lock:
            if not self._seen.add(f"jti:{claims['jti']}", self.clock() + self.default_retention):
                return False
            if not self._seen.add(f"txn:{claims['txn']}", self.clock() + self.default_retention):
                return False
            (kind, event), = claims["events"].items()
            self._apply(kind, event, claims["sub_id"])
        if self.on_event is not None:
            self.on_event(claims)
        return True

    def verify(self, token: str) -> dict[str, Any]:
        """RFC 8417 / SSF 1.0 checks; InvalidSet names the RFC 8935 error code."""
        stream = self._stream()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidSet("invalid_request", "not a JWT") from None
        if header.get("typ") != SET_TYPE or header.get("alg") not in ALGORITHMS:
            raise InvalidSet("invalid_request", "not a secevent+jwt")
        try:  # signature, iss, aud checked; no exp: a SET carries none (RFC 8417 §2.2)
            claims = jwt.decode(
                token, self._key(str(header.get("kid"))), algorithms=list(ALGORITHMS), audience=stream["aud"],
                issuer=self.issuer, options={"require": ["iss", "iat", "jti", "aud", "txn"], "verify_exp": False},
            )  # fmt: skip
        except jwt.InvalidAudienceError:
            raise InvalidSet("invalid_audience", "the SET is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidSet("invalid_issuer", "the SET is from another issuer") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidSet("invalid_key", f"signature or claims refused: {type(exc).__name__}") from None
        events = claims.get("events")
        if not isinstance(events, dict) or len(events) != 1 or not isinstance(claims.get("sub_id"), dict) or "exp" in claims:
            raise InvalidSet("invalid_request", "one event and a sub_id per SET, and no exp")
        return claims

    def _apply(self, kind: str, event: dict[str, Any], subject: dict[str, Any]) -> None:
        session = subject.get("session", subject)
        if kind == SESSION_REVOKED and subject.get("format") == "complex" and "session" not in subject:
            self._freeze(event, subject)
        elif kind == SESSION_REVOKED and session.get("format") == "jwt_id" and session.get("iss") == self.issuer:
            exp = event.get("credential_exp")
            until = float(exp) + 60 if isinstance(exp, int | float) else self.clock() + self.default_retention
            self._revoked.add(str(session.get("jti")), until)
        elif kind == CREDENTIAL_CHANGE and session.get("format") == "opaque":
            self._revoked.add(str(session.get("id")), self.clock() + self.default_retention)
        elif kind == VERIFICATION and event.get("state"):
            self.verified_states.add(str(event["state"]))

    def _freeze(self, event: dict[str, Any], subject: dict[str, Any]) -> None:
        """All sessions of a subject (CAEP `user`) or of a boundary (its tokens' `audience`) until the event.

        `iat` and `event_timestamp` are whole seconds: a token issued in the second of the freeze, after
        the freeze was lifted, is refused too (fail closed).
        """
        at = event.get("event_timestamp")
        user, audience = (subject.get("user") or {}).get("id"), event.get("audience")
        key = f"sub:{user}" if isinstance(user, str) else (f"aud:{audience}" if isinstance(audience, str) else None)
        if key is None or not isinstance(at, int | float):
            return
        now = self.clock()
        self._frozen = {k: v for k, v in self._frozen.items() if v[1] > now}  # freezes are few: prune on each
        if len(self._frozen) >= 10_000 and key not in self._frozen:
            self._frozen.pop(next(iter(self._frozen)))  # the oldest goes (logged, as at capacity above)
            log.warning("signal receiver holds 10000 freezes: forgot the oldest")
        self._frozen[key] = (max(float(at), self._frozen.get(key, (0.0, 0.0))[0]), now + self.default_retention)

    def is_frozen(self, claims: dict[str, Any]) -> bool:
        """True when a freeze SET covers this token: its subject or audience, issued at or before the freeze."""
        iat = claims.get("iat")
        audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
        keys = [f"sub:{claims.get('sub')}", *(f"aud:{a}" for a in audiences)]
        now = self.clock()
        with self._lock:
            times = [self._frozen[k][0] for k in keys if k in self._frozen and self._frozen[k][1] > now]
        return bool(times) and (not isinstance(iat, int | float) or iat <= max(times))

    def is_revoked(self, jti: str) -> bool:
        with self._lock:
            return jti in self._revoked

    def check(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The verified claims of a broker token, unless a SET revoked it (InvalidToken)."""
        if self.is_revoked(str(claims.get("jti"))):
            raise InvalidToken("the broker revoked this token (Shared Signals)")
        if self.is_frozen(claims):
            raise InvalidToken("the broker froze this token's subject or boundary (Shared Signals)")
        return claims

    # --- push (RFC 8935) and poll (RFC 8936) ---------------------------------------------------

    def push_response(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        """The answer to a pushed SET: 202, or 400 with `{err, description}`."""
        if content_type.split(";")[0].strip().lower() != "application/secevent+jwt":
            return 400, _err("invalid_request", "Content-Type must be application/secevent+jwt")
        try:
            self.receive(body.decode("ascii").strip())
        except (InvalidSet, UnicodeDecodeError) as exc:
            err = exc if isinstance(exc, InvalidSet) else InvalidSet("invalid_request", "not ASCII")
            return 400, _err(err.err, err.description)
        return 202, b""

    def poll_once(self, *, wait: bool = False, max_events: int = 100) -> int:
        """One RFC 8936 request: acknowledge the last batch, take the next; returns how many SETs were new."""
        stream = self._stream()
        body = {"ack": self._ack, "maxEvents": max_events, "returnImmediately": not wait}
        answer = self._call("POST", stream["delivery"]["endpoint_url"], json=body)
        self._ack, new = [], 0
        for jti, token in answer.get("sets", {}).items():
            try:
                new += self.receive(token)
            except InvalidSet as exc:
                log.warning("refused a polled SET: %s", exc.err)
            self._ack.append(jti)  # a refused SET is acknowledged too: asking again would get the same bytes
        return new

    def start_polling(self) -> threading.Thread:
        """Long-poll in a daemon thread until `stop()` (a receiver without an inbound endpoint)."""
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once(wait=True)
                except BrokerClientError as exc:
                    log.warning("signal poll failed: %s", exc)
                    self._stop.wait(1.0)
        thread = threading.Thread(target=loop, name="signal-poll", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    # --- plumbing -------------------------------------------------------------------------------

    def _stream(self) -> dict[str, Any]:
        if self.stream is None:
            raise BrokerClientError("call register() first")
        return self.stream

    def _key(self, kid: str) -> Any:
        with self._lock:
            if kid not in self._keys and (not self._keys_at or self.clock() - self._keys_at > 1.0):  # unknown kid: refetch, rate-limited
                self._keys_at = self.clock()
                jwks = self._get(self._jwks_uri)
                self._keys = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id}
            if kid not in self._keys and kid:
                raise InvalidSet("invalid_key", "signed by a key the broker does not publish")
            return self._keys.get(kid)

    def _get(self, url: str) -> Any:
        try:
            answer = self.http.get(url)
            answer.raise_for_status()
            return answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise BrokerClientError(f"GET {url} failed: {type(exc).__name__}") from None

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            answer = self.http.request(method, url, headers={"Authorization": f"Bearer {self.identity()}"}, **kwargs)
        except httpx.HTTPError as exc:
            raise BrokerClientError(f"{method} {url} failed: {type(exc).__name__}") from None
        if answer.status_code >= 400:
            raise BrokerClientError(f"{method} {url}: HTTP {answer.status_code} {answer.headers.get('content-type', '')}")
        return answer.json() if answer.content else None


class SignalMiddleware:
    """Pure ASGI: takes pushed SETs at `path`; refuses (401) a Bearer broker token that a SET revoked.

    With a `verifier` (broker_client.Verifier) every Bearer or DPoP token is verified offline first (a
    DPoP-bound one with the request's `DPoP` proof) and its claims put in `scope["broker_claims"]`.
    """

    def __init__(self, app: Any, receiver: SignalReceiver, path: str = "/ssf/events", verifier: Any = None) -> None:
        self.app, self.receiver, self.path, self.verifier = app, receiver, path, verifier

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == self.path and scope["method"] == "POST":
            body = await _body(receive, 65_536)
            if body is None:
                return await _respond(send, 413, _err("invalid_request", "SET too large"), b"application/json")
            headers = dict(scope["headers"])
            status, payload = self.receiver.push_response(body, headers.get(b"content-type", b"").decode("latin-1"))
            return await _respond(send, status, payload, b"application/json")
        token = _bearer(scope)
        if token is not None:
            try:
                # without a verifier the claims are read only to refuse a revoked jti: nothing is accepted
                # on them, the app behind still verifies the token itself
                if self.verifier is None:
                    self.receiver.check(jwt.decode(token, options={"verify_signature": False}))
                else:  # a DPoP-bound token needs its holder's proof for this request (RFC 9449 §7)
                    proof = _header(scope, b"dpop")
                    claims = self.verifier.verify(token, dpop_proof=proof, method=scope["method"], url=_url(scope))
                    scope["broker_claims"] = self.receiver.check(claims)
            except (InvalidToken, jwt.InvalidTokenError):
                body = _err("invalid_token", "the token is invalid or was revoked")
                return await _respond(send, 401, body, b"application/json", [(b"www-authenticate", b'Bearer error="invalid_token"')])
        return await self.app(scope, receive, send)


def _writable(stream: dict[str, Any]) -> dict[str, Any]:
    keep = ("stream_id", "aud", "delivery", "boundaries", "events_requested", "description")
    return {k: v for k, v in stream.items() if k in keep and v is not None}


def _err(err: str, description: str) -> bytes:
    return json.dumps({"err": err, "description": description}).encode()


def _header(scope: dict, name: bytes) -> str | None:
    values = [v for k, v in scope["headers"] if k == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


def _url(scope: dict) -> str:
    return f"{scope.get('scheme', 'http')}://{_header(scope, b'host') or 'localhost'}{scope['path']}"


def _bearer(scope: dict) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() in ("bearer", "dpop") and token.strip() else None
    return None


async def _body(receive: Callable, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Callable, status: int, body: bytes, ctype: bytes, extra: list | None = None) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

"""A cap on each request's head (request line and headers), before any route runs: over it, 431
`headers_too_large`, and unfinished after its deadline, 408 `request_timeout`; either way the
connection closes. Under them, and for large bodies, nothing changes.
Through a real uvicorn server on the broker's own protocol (broker/serving.py), with raw sockets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from broker.serving import MAX_HEAD_BYTES, CappedHeadProtocol
from tests.sdk.live import LiveBroker
from tests.support.broker import Issuers
from tests.support.raw_http import connect, padded_head, read_answers, read_to_close, refusal, send_all


@pytest.fixture
def live(tmp_path, issuers: Issuers) -> Iterator[LiveBroker]:
    broker = LiveBroker.start(tmp_path, issuers)
    yield broker
    broker.stop()


def test_a_head_over_the_cap_gets_431_and_the_connection_closes(live: LiveBroker) -> None:
    sock = connect(live.url)
    send_all(sock, [padded_head(MAX_HEAD_BYTES + 1)])
    problem = refusal(read_to_close(sock), 431)  # read_to_close returns only once the server closed
    assert problem["code"] == "headers_too_large" and problem["status"] == 431


def test_a_long_url_counts_toward_the_cap(live: LiveBroker) -> None:
    sock = connect(live.url)
    send_all(sock, [b"GET /healthz?" + b"q" * (MAX_HEAD_BYTES + 1) + b" HTTP/1.1\r\nHost: broker\r\n\r\n"])
    assert refusal(read_to_close(sock), 431)["code"] == "headers_too_large"


def test_a_head_that_never_ends_is_cut_off_after_the_cap(live: LiveBroker) -> None:
    sock = connect(live.url)
    chunks = [b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: "] + [b"b" * 8192] * (4 * MAX_HEAD_BYTES // 8192)
    send_all(sock, chunks)  # never the blank line that ends a head
    assert refusal(read_to_close(sock), 431)["code"] == "headers_too_large"


def test_heads_under_the_cap_large_bodies_and_pipelined_requests_are_served(live: LiveBroker) -> None:
    sock = connect(live.url)
    body = json.dumps({"task": "t" * 60_000, "boundary": "orders", "scopes": ["read"]}).encode()  # under max_body_bytes
    send_all(sock, [
        padded_head(MAX_HEAD_BYTES // 2)
        + b"POST /v1/grants HTTP/1.1\r\nHost: broker\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
        + b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n",
    ])  # fmt: skip
    assert read_answers(sock, 3) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 401 Unauthorized", b"HTTP/1.1 200 OK"]
    sock.close()


def test_a_head_unfinished_after_the_deadline_gets_408_and_the_connection_closes(live: LiveBroker, monkeypatch) -> None:
    monkeypatch.setattr(CappedHeadProtocol, "head_timeout", 0.3)  # for the connections opened from here on
    trickling = connect(live.url)
    send_all(trickling, [b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: "])  # and then nothing more
    answer = read_to_close(trickling)  # returns once the server has closed: no fixed wait
    assert refusal(answer, 408)["code"] == "request_timeout"
    served = connect(live.url)  # a head that ends in time is served, and its connection kept past the deadline
    send_all(served, [b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n"])
    assert read_answers(served, 1) == [b"HTTP/1.1 200 OK"]
    time.sleep(1.0)  # past the head's deadline: a timer left running would have closed the connection by now
    send_all(served, [b"GET /healthz HTTP/1.1\r\nHost: broker\r\n\r\n"])
    assert read_answers(served, 1) == [b"HTTP/1.1 200 OK"]
    served.close()

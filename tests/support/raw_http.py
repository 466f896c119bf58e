"""Raw HTTP/1.1 over a socket (TLS optional): requests no client library would send, answers read to the close."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit


def connect(url: str, context: ssl.SSLContext | None = None) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return context.wrap_socket(sock, server_hostname=parts.hostname) if context else sock


def send_all(sock: socket.socket, chunks: list[bytes]) -> None:
    """Send each chunk; stop quietly when the server has closed (it may refuse before the end)."""
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, TimeoutError):
            return received
        if not data:
            return received
        received += data


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` answers' status lines (each answer has a Content-Length body)."""
    buffer, lines = b"", []
    while len(lines) < count:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return lines
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
        while len(buffer) < length:
            buffer += sock.recv(65536)
        buffer = buffer[length:]
        lines.append(head.split(b"\r\n", 1)[0])
    return lines


def padded_head(size: int) -> bytes:
    """`GET /healthz` whose head (request line and headers) is `size` bytes of padding longer than usual."""
    return b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Padding: " + b"a" * size + b"\r\n\r\n"


def refusal(answer: bytes, status: int) -> dict[str, Any]:
    """The problem+json of a refusal answered before any route ran, with `connection: close`."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"content-type: application/problem+json" in head.lower() and b"connection: close" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == status
    return problem

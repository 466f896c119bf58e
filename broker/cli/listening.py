"""`broker serve`'s listening sockets: one per worker, with SO_REUSEPORT, so the kernel spreads connections.

uvicorn's own multi-worker mode binds one socket and every worker accepts from it. The worker whose
event loop wakes first accepts everything that is waiting, so connections opened together (a client's
pool, a load balancer's upstream connections, a benchmark) tend to land on one worker: measured with
two workers and wrk's 32 connections, one worker often served nearly all of them (7.1 s of CPU against
0.07 s in 8 s) and the broker ran at a single worker's rate. With a socket per worker in one SO_REUSEPORT
group, Linux picks the socket of each new connection by a hash of its addresses.

uvicorn's supervisor (restarts, signals, health checks) is kept as it is: it hands every worker the same
`sockets` object, pickled into the spawned process; `OwnSockets` unpickles there as a fresh socket of that
worker, bound to the address and listening. The supervisor itself binds the address once without listening:
that reserves it against other programs (a clear "address in use" at start), and receives no connections.
Only processes of the same user may join a SO_REUSEPORT group (Linux).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

BACKLOG = 2048  # uvicorn's default


def reuse_port_available() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, listen: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _worker_sockets(host: str, port: int) -> list[socket.socket]:
    return [bind(host, port, listen=True)]


class OwnSockets(list):  # type: ignore[type-arg]
    """The `sockets` uvicorn's supervisor gives each worker: empty here, one new listening socket there."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, ...]:
        return _worker_sockets, (self.host, self.port)

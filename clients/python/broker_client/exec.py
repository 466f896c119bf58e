"""`broker-exec`: run a command with a credential for one task, give it back when the command exits.

    broker-exec --boundary orders-db --scope read --ttl 10m -- ./migrate.sh

Exit status: the child's (128+N when a signal N ended it); 2 bad arguments, 64 no identity source or
broker address, 69 broker unreachable or unavailable, 73 the --file cannot be created, 77 refused
(identity, policy, DPoP), 127 command not found.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from broker_client.client import Client
from broker_client.svid import SvidFiles
from broker_client.credential import Credential
from broker_client.errors import BrokerClientError, BrokerError, CompletionFailed, TransportError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
EX_USAGE, EX_UNAVAILABLE, EX_CANTCREAT, EX_NOPERM, EX_NOTFOUND = 64, 69, 73, 77, 127


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="broker-exec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--boundary", required=True, help="the one trust boundary, e.g. orders-db")
    parser.add_argument("--scope", action="append", required=True, help="a scope (repeat, or comma-separated)")
    parser.add_argument("--ttl", default=None, help="seconds or 30s/10m/1h (default: the boundary's)")
    parser.add_argument("--task", default=None, help="task name (default exec-<command>); a suffix makes it unique")
    parser.add_argument("--url", default=None, help="broker address (default BROKER_URL)")
    parser.add_argument("--svid-dir", type=Path, default=None,
                        help="X.509-SVID files from spiffe-helper (svid.pem, svid_key.pem, bundle.pem): mutual TLS")
    parser.add_argument("--file", type=Path, default=None, help="write the variables to this new 0600 file instead")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command:
        parser.error("give the command after --")
    args.scopes = [s for item in args.scope for s in item.split(",") if s]
    return args


def write_file(path: Path, variables: dict[str, str]) -> None:
    """KEY='value' lines (sourceable by sh), created 0600 and never over an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        for key, value in variables.items():
            handle.write(f"{key}='{value.replace(chr(39), chr(39) + chr(92) + chr(39) + chr(39))}'\n")


def child_env(credential: Credential, file: Path | None) -> dict[str, str]:
    if file is None:
        return {**os.environ, **credential.env()}
    write_file(file, credential.env())
    return {**os.environ, "BROKER_CREDENTIAL_FILE": str(file), "BROKER_GRANT_ID": credential.grant_id}


@contextmanager
def forwarding(child: subprocess.Popen) -> Iterator[None]:
    """Signals to this process go to the child; the child decides when to stop."""
    previous = {sig: signal.signal(sig, lambda signum, _frame: child.send_signal(signum)) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_child(command: list[str], env: dict[str, str]) -> int:
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"broker-exec: {command[0]}: {exc.strerror}", file=sys.stderr)
        return EX_NOTFOUND
    with forwarding(child):
        code = child.wait()
    return 128 - code if code < 0 else code


def run(args: argparse.Namespace) -> int:
    identity = SvidFiles(args.svid_dir) if args.svid_dir is not None else None
    with Client(args.url, identity) as client:
        task = client.task(args.task or f"exec-{Path(args.command[0]).name}")
        try:
            with task:
                credential = task.grant(args.boundary, args.scopes, args.ttl)
                code = run_child(args.command, child_env(credential, args.file))
        except CompletionFailed as exc:
            print(f"broker-exec: {exc}; the credential expires at its TTL", file=sys.stderr)
        finally:
            if args.file is not None:
                args.file.unlink(missing_ok=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (TransportError, BrokerError) as exc:
        print(f"broker-exec: {exc}", file=sys.stderr)
        unavailable = isinstance(exc, TransportError) or exc.status >= 500
        return EX_UNAVAILABLE if unavailable else EX_NOPERM
    except BrokerClientError as exc:
        print(f"broker-exec: {exc}", file=sys.stderr)
        return EX_USAGE
    except OSError as exc:  # the --file could not be created (it exists, or the folder is missing)
        print(f"broker-exec: {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_CANTCREAT


if __name__ == "__main__":
    sys.exit(main())

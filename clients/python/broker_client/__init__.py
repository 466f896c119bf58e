"""Client SDK of the credential broker: a credential per task, given back on exit.

    from broker_client import Client
    with Client() as client, client.task("reindex-orders") as task:
        cred = task.grant("orders-db", ["read"], ttl=300)
"""

from broker_client import errors
from broker_client.agents import requires
from broker_client.aio import AsyncClient, AsyncTask
from broker_client.client import Client, Task
from broker_client.credential import Credential, Grant, TaskCompleted
from broker_client.dpop import DpopKey, process_key
from broker_client.errors import *  # noqa: F403 (the exception tree is part of the public surface)
from broker_client.identity import (
    Command,
    GitHubActions,
    IdentitySource,
    StaticToken,
    TokenFile,
    from_env,
    kubernetes,
    spiffe_jwt_svid,
)
from broker_client.receipt import Receipt, verify_receipt
from broker_client.receiver import InvalidSet, SignalMiddleware, SignalReceiver
from broker_client.svid import ClientCertificate, SvidFiles
from broker_client.verify import Verifier, verify

__all__ = [
    "AsyncClient",
    "AsyncTask",
    "Client",
    "ClientCertificate",
    "Command",
    "Credential",
    "DpopKey",
    "GitHubActions",
    "Grant",
    "IdentitySource",
    "InvalidSet",
    "Receipt",
    "SignalMiddleware",
    "SignalReceiver",
    "StaticToken",
    "SvidFiles",
    "Task",
    "TaskCompleted",
    "TokenFile",
    "Verifier",
    "from_env",
    "kubernetes",
    "process_key",
    "requires",
    "spiffe_jwt_svid",
    "verify",
    "verify_receipt",
]
__all__ += errors.__all__  # one class per problem code (errors.py)

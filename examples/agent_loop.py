"""An agent loop: three tool calls, each with its own task and grant, each credential given back after its call.

    BROKER_URL=http://127.0.0.1:8080 BROKER_IDENTITY_TOKEN=$(broker dev-token --subject dev:demo-workload) \
        python examples/agent_loop.py

Each tool presents its DPoP-bound token to a resource server (here `broker_client.Verifier` in-process),
then the script reads every grant back from the broker and shows that none outlived its call.
"""

from __future__ import annotations

import os
import time

from broker_client import Client, Credential, Verifier, requires

BOUNDARY = os.environ.get("EXAMPLE_BOUNDARY", "demo")  # `make run` serves the `demo` jwt boundary
client = Client()  # BROKER_URL and the identity source come from the environment
resource_server = Verifier(client.url, audience=BOUNDARY)
calls: list[dict] = []


def use(credential: Credential, method: str, url: str) -> str:
    """What a resource server does with the token: verify it offline with the holder's DPoP proof."""
    proof = client.dpop.proof(method, url, credential.token)
    claims = resource_server.verify(credential.token, dpop_proof=proof, method=method, url=url)
    return claims["scope"]


def tool(scopes: list[str]):  # noqa: ANN201
    """A tool decorated with `requires`, recording when its call started and ended."""

    def wrap(func):  # noqa: ANN001, ANN202
        granted = requires(BOUNDARY, scopes, ttl=60, client=client)(func)

        def call(*args):  # noqa: ANN002, ANN202
            started = time.time()
            result = granted(*args)
            calls.append({"tool": func.__name__, **result, "started": started, "ended": time.time()})
            return result

        return call

    return wrap


@tool(["read"])
def lookup_order(order_id: str, *, credential: Credential) -> dict:
    return {"grant_id": credential.grant_id, "task": credential.grant.task,
            "scope": use(credential, "GET", f"https://orders.internal/orders/{order_id}")}  # fmt: skip


@tool(["write"])
def update_order(order_id: str, *, credential: Credential) -> dict:
    return {"grant_id": credential.grant_id, "task": credential.grant.task,
            "scope": use(credential, "PATCH", f"https://orders.internal/orders/{order_id}")}  # fmt: skip


@tool(["read"])
def summarize(order_id: str, *, credential: Credential) -> dict:
    return {"grant_id": credential.grant_id, "task": credential.grant.task,
            "scope": use(credential, "GET", f"https://orders.internal/orders/{order_id}/summary")}  # fmt: skip


def main() -> int:
    for step in (lookup_order, update_order, summarize):  # the "agent" decides; here, a fixed plan
        step("42")
    print(f"{'tool':<14} {'task':<28} {'scope':<6} {'status':<10} ended after call by")
    outlived = 0
    for call in calls:
        grant = client.get(call["grant_id"])  # the broker's record of the grant
        late = grant.ended_at.timestamp() - call["ended"] if grant.ended_at else float("inf")
        outlived += grant.status != "completed" or late > 0
        print(f"{call['tool']:<14} {call['task']:<28} {call['scope']:<6} {grant.status:<10} {late:+.3f}s")
    print("no credential outlived its call" if not outlived else f"{outlived} credential(s) outlived their call")
    return 1 if outlived else 0


if __name__ == "__main__":
    raise SystemExit(main())

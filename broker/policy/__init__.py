"""Declarative policy: deny by default, compiled once, checked many times, reloadable."""

from broker.policy.engine import Decision, Policy
from broker.policy.model import compile_policy
from broker.policy.source import PolicySource

__all__ = ["Decision", "Policy", "PolicySource", "compile_policy"]

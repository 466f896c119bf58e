"""Shared test helpers: a real loopback OIDC issuer and its fixtures."""

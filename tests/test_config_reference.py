"""docs/configuration.md stays true: every setting of every config model is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import AttestorConfig, BoundaryConfig, ScopeConfig, Settings, VaultConfig
from broker.config_x509 import ClientCertHeaderConfig, TlsConfig, X509AttestorConfig

DOC = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
MODELS = [Settings, AttestorConfig, BoundaryConfig, ScopeConfig, VaultConfig, X509AttestorConfig, TlsConfig,
          ClientCertHeaderConfig]


@pytest.mark.parametrize("model", MODELS, ids=[m.__name__ for m in MODELS])
def test_every_field_is_documented(model):
    missing = [name for name in model.model_fields if f"`{name}`" not in DOC]
    assert missing == [], f"document {missing} in docs/configuration.md"

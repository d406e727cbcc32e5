"""A registry that fails is not a registry without a champion: an outage must stop a run (and be a
503 for Alertmanager), never let a challenger be promoted without the comparison with the champion."""

from __future__ import annotations

import pytest

from components import registry
from components.errors import RegistryError
from serving.local_plane import free_port


def test_an_absent_model_or_alias_has_no_champion(tmp_path):
    client = registry.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert registry.champion_version(client, "never-registered") is None
    client.create_registered_model("churn")  # registered, but no version holds @champion yet
    assert registry.champion_version(client, "churn") is None
    assert registry.version_with_fingerprint(client, "churn", "abc") is None


def test_an_unreachable_registry_is_an_error_not_an_absent_champion(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = registry.connect(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(RegistryError, match="registry failed while reading churn@champion"):
        registry.champion_version(client, "churn")
    with pytest.raises(RegistryError, match="registry failed while reading the versions of churn"):
        registry.version_with_fingerprint(client, "churn", "abc")

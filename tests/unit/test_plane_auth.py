"""The local plane's admin token: kept where only its user can read it, found from the plane's URL,
stable across a restart, and compared in constant time."""

from __future__ import annotations

import stat

import pytest

from serving import plane_auth


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv(plane_auth.ENV_CONFIG_DIR, str(tmp_path))
    monkeypatch.delenv(plane_auth.ENV_PLANE_TOKEN, raising=False)
    return tmp_path


def test_a_token_is_issued_once_per_address_and_only_its_user_can_read_it(config):
    url = "http://127.0.0.1:8080"
    assert plane_auth.token_for(url) is None  # nothing started here yet
    token = plane_auth.issue_token(url)
    assert len(token) >= 40 and plane_auth.issue_token(url) == token  # a restart keeps its clients working
    assert plane_auth.token_for(url) == token == plane_auth.token_for(url + "/")
    path = plane_auth.token_file(url)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    other = plane_auth.issue_token("http://127.0.0.1:8081")
    assert other != token  # another plane, another secret


def test_the_environment_hands_a_token_to_another_user_or_a_container(config, monkeypatch):
    plane_auth.issue_token("http://127.0.0.1:8080")
    monkeypatch.setenv(plane_auth.ENV_PLANE_TOKEN, "given")
    assert plane_auth.token_for("http://127.0.0.1:8080") == "given"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", "secret", "bearer secret", "Bearer secret "])
def test_only_the_exact_bearer_token_is_authorized(header):
    assert not plane_auth.authorized(header, "secret")


def test_the_bearer_token_is_authorized():
    assert plane_auth.authorized("Bearer secret", "secret")

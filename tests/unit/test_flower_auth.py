"""Flower never starts without a login, and its command line carries no secret."""

from __future__ import annotations

import pytest

from base.errors import ConfigError
from config.settings import load_settings
from tests.conftest import write_config
from workers.flower import check_auth, flower_argv

FLOWER_ENV = ("FLOWER_BASIC_AUTH", "FLOWER_OAUTH2_SECRET", "FLOWER_UNAUTHENTICATED_API")


@pytest.fixture
def clean_env(monkeypatch):
    for name in FLOWER_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def oauth_settings(tmp_path):
    return load_settings(write_config(tmp_path / "c.yaml", {"flower": {
        "auth_provider": "flower.views.auth.GithubLoginHandler", "auth": r".*@mnaas\.example",
        "oauth2_key": "client-id", "oauth2_redirect_uri": "https://flower.mnaas.example/login"}}))


def test_no_login_configured_is_refused(settings, clean_env):
    with pytest.raises(ConfigError, match="Flower needs a login: set FLOWER_BASIC_AUTH"):
        check_auth(settings)


def test_basic_auth_from_the_environment(settings, clean_env):
    clean_env.setenv("FLOWER_BASIC_AUTH", "ops:s3cret,audit:an0ther:with-colon")
    assert check_auth(settings) == "basic"
    argv = flower_argv(settings)
    assert not any("s3cret" in a or "basic_auth" in a for a in argv)
    assert argv[:3] == ["flower", f"--address={settings.flower.address}", f"--port={settings.flower.port}"]


@pytest.mark.parametrize("value", ["ops", "ops:", ":pw", "ops:pw,,"])
def test_malformed_basic_auth_is_refused_without_echoing_it(settings, clean_env, value):
    clean_env.setenv("FLOWER_BASIC_AUTH", value)
    with pytest.raises(ConfigError, match="FLOWER_BASIC_AUTH: entry .* is not user:password") as e:
        check_auth(settings)
    assert "value not shown" in str(e.value)


def test_unauthenticated_api_is_refused(settings, clean_env):
    clean_env.setenv("FLOWER_BASIC_AUTH", "ops:pw")
    clean_env.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    with pytest.raises(ConfigError, match="FLOWER_UNAUTHENTICATED_API"):
        check_auth(settings)


def test_oauth_needs_its_secret_from_the_environment(oauth_settings, clean_env):
    with pytest.raises(ConfigError, match="needs FLOWER_OAUTH2_SECRET"):
        check_auth(oauth_settings)
    clean_env.setenv("FLOWER_OAUTH2_SECRET", "oauth-secret")
    assert check_auth(oauth_settings) == "oauth"
    argv = flower_argv(oauth_settings)
    assert "--auth_provider=flower.views.auth.GithubLoginHandler" in argv
    assert "--oauth2_key=client-id" in argv
    assert not any("oauth-secret" in a for a in argv)

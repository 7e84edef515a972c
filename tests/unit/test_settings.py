"""Settings: unknown keys, bad values and cross-field rules fail at load, naming the key."""

from __future__ import annotations

import pytest
import yaml

from base.errors import ConfigError
from config.settings import DEFAULT_CONFIG, load_settings


def _write(tmp_path, data) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def test_shipped_configs_validate():
    s = load_settings(DEFAULT_CONFIG)
    # Minutes, not hours: live workers re-stamp what they hold, so only a dead worker's messages wait this long.
    assert 60 <= s.celery.visibility_timeout <= 900
    assert s.path(s.edge_export.export_dir).is_absolute()


@pytest.mark.parametrize("data,message", [
    ({"hive": {"hots": "x"}}, "hive.hots: unknown key"),
    ({"hive": {"port": "many"}}, "hive.port:"),
    ({"celery": {"visibility_timeout": 10}}, "celery.visibility_timeout: Input should be greater than or equal to 20"),
    ({"celery": {"task_time_limit": 100, "task_soft_time_limit": 100}}, "task_soft_time_limit must be below"),
    ({"lock": {"ttl": 10, "renew_every": 6}}, "renew_every must be at most half"),
    ({"sftp": {"remote_dir": "relative/dir"}}, "sftp.remote_dir: must be an absolute path"),
    ({"sftp": {"remote_dir": "/tmp/a\nb"}}, "control characters"),
    ({"redis": {"key_prefix": "a b"}}, "redis.key_prefix"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("hive: [unclosed", "not valid YAML"),
    ({"platform": {"jvm_options": ["-XX:+UseSerialGC -jar x.jar"]}}, "platform.jvm_options: '-XX:+UseSerialGC -jar x.jar' "
                                                                    "is not one -X... or -D... option without spaces"),
    ({"platform": {"jvm_options": ["-cp", "/tmp"]}}, "platform.jvm_options: '-cp' is not one -X... or -D..."),
    ({"platform": {"jvm_options": ["-Dx=$(id)"]}}, "platform.jvm_options: '-Dx=$(id)' is not one"),
])
def test_bad_config_names_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as ei:
        load_settings(_write(tmp_path, data))
    assert message in str(ei.value)
    assert "\n" not in ei.value.one_line()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_secrets_only_from_env_and_masked(tmp_path, monkeypatch):
    s = load_settings(_write(tmp_path, {}))
    monkeypatch.setenv("BACKUP_SMTP_PASSWORD", "hunter2")
    secret = s.secret("BACKUP_SMTP_PASSWORD")
    assert secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(secret) and "hunter2" not in repr(s)
    with pytest.raises(KeyError):
        s.secret("PATH")
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(_write(tmp_path, {"smtp": {"password": "inline"}}))


def test_relative_paths_resolve_against_base_dir(tmp_path):
    s = load_settings(_write(tmp_path, {"base_dir": "sub", "edge_export": {"export_dir": "exports"}}))
    assert s.path(s.edge_export.export_dir) == (tmp_path / "sub" / "exports").resolve()

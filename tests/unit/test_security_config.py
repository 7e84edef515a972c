"""Connections and secrets at config load: no credentials in URLs, no login in clear, no unverified TLS by
default, no ssh option smuggled in as a user name; and the pure helpers (redaction, the OpenSSH command line)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from base.errors import ConfigError, FatalError, classify
from base.urls import is_loopback_host, redact_url_secrets
from config.settings import load_settings


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("BACKUP_REDIS_PASSWORD", "BACKUP_TICKET_TOKEN", "BACKUP_SFTP_KEY_PASSPHRASE", "SSH_AUTH_SOCK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _load(tmp_path, data: dict):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_settings(path)


def _refused(tmp_path, data: dict, *needles: str) -> str:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, data)
    text = str(e.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


# -- SMTP (item 2) -----------------------------------------------------------------------------------------

def test_smtp_login_without_tls_is_refused(tmp_path, clean_env):
    _refused(tmp_path, {"smtp": {"host": "relay.example", "user": "backup"}}, "smtp.user needs smtp.starttls or smtp.ssl")


def test_smtp_login_over_starttls_or_implicit_tls_is_accepted(tmp_path, clean_env):
    assert _load(tmp_path, {"smtp": {"host": "relay.example", "user": "b", "starttls": True}}).smtp.starttls
    assert _load(tmp_path, {"smtp": {"host": "relay.example", "port": 465, "user": "b", "ssl": True}}).smtp.ssl


def test_smtp_starttls_and_ssl_together_are_refused(tmp_path, clean_env):
    _refused(tmp_path, {"smtp": {"starttls": True, "ssl": True}}, "exclude each other")


# -- Hive TLS (item 1) -------------------------------------------------------------------------------------

def test_hive_ca_cert_or_opt_out_without_tls_is_refused(tmp_path, clean_env):
    _refused(tmp_path, {"hive": {"ca_cert": "/etc/ca.pem"}}, "need hive.use_ssl")
    _refused(tmp_path, {"hive": {"insecure_skip_tls_verify": True}}, "need hive.use_ssl")
    _refused(tmp_path, {"hive": {"use_ssl": True, "ca_cert": "/etc/ca.pem", "insecure_skip_tls_verify": True}},
             "contradict")


def test_hive_ldap_password_in_clear_off_loopback_is_refused(tmp_path, clean_env):
    _refused(tmp_path, {"hive": {"host": "impala.example", "auth_mechanism": "LDAP", "user": "u"}},
             "sends the password in clear")
    assert _load(tmp_path, {"hive": {"host": "impala.example", "auth_mechanism": "LDAP", "user": "u",
                                     "use_ssl": True}}).hive.use_ssl


# -- URLs: credentials and schemes (item 11) ----------------------------------------------------------------

@pytest.mark.parametrize("data, key", [
    ({"redis": {"url": "redis://:s3cret@127.0.0.1:6379/0"}}, "redis.url carries a password"),
    ({"redis": {"url": "redis://mb:s3cret@127.0.0.1:6379/0"}}, "redis.url carries a password"),
    ({"ticket": {"url": "https://bot:s3cret@sdp.example/tickets"}}, "ticket.url carries a password"),
    ({"ticket": {"url": "https://tok3n@sdp.example/tickets"}}, "ticket.url carries credentials"),
    ({"spark": {"remote": "yarn", "yarn_resourcemanager_url": "http://u:s3cret@rm:8088/ws/v1/cluster"}},
     "yarn_resourcemanager_url must not carry credentials"),
    ({"restore_edge_export": {"staging_dir": "hdfs://u:s3cret@nn:9870/restore",
                              "spark_staging_dir": "hdfs:///restore"}}, "carries a password"),
])
def test_credentials_in_urls_are_refused_without_echoing_them(tmp_path, clean_env, data, key):
    text = _refused(tmp_path, data, key)
    assert "s3cret" not in text and "tok3n" not in text


def test_password_in_a_customer_location_is_refused_without_echoing_it(tmp_path, clean_env):
    cf = {"source_dirs": ["/srv/in"], "domains": {"traffic": ["*.csv"]}, "staging_table": "m.a",
          "final_table": "m.b", "status_flag": "/srv/flag",
          "customers": {"acme": {"primary": "/b/acme", "secondary": "sftp://bkp:s3cret@edge:22/b/acme"}}}
    text = _refused(tmp_path, {"customer_files": cf}, "customers.acme.secondary", "carries a password")
    assert "s3cret" not in text


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379/0", "unix:///run/redis.sock", "127.0.0.1:6379", "redis:///0"])
def test_redis_url_scheme_and_host_are_checked(tmp_path, clean_env, url):
    _refused(tmp_path, {"redis": {"url": url}}, "redis.url")


@pytest.mark.parametrize("url", ["ftp://sdp.example/t", "file:///etc/passwd", "https:///tickets", "sdp.example/t"])
def test_ticket_url_scheme_and_host_are_checked(tmp_path, clean_env, url):
    _refused(tmp_path, {"ticket": {"url": url}}, "ticket.url")


def test_rediss_and_an_acl_user_name_are_accepted(tmp_path, clean_env):
    clean_env.setenv("BACKUP_REDIS_PASSWORD", "pw")
    s = _load(tmp_path, {"redis": {"url": "rediss://mbworker@redis.example:6380/0"}})
    from workers.app import celery_config, redis_url_with_password

    assert redis_url_with_password(s) == "rediss://mbworker:pw@redis.example:6380/0"
    conf = celery_config(s)
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert conf["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


# -- exposure defaults (item 12) -----------------------------------------------------------------------------

def test_redis_off_loopback_needs_a_password(tmp_path, clean_env):
    _refused(tmp_path, {"redis": {"url": "redis://redis.example:6379/0"}}, "BACKUP_REDIS_PASSWORD must be set")
    clean_env.setenv("BACKUP_REDIS_PASSWORD", "pw")
    assert _load(tmp_path, {"redis": {"url": "redis://redis.example:6379/0"}})
    clean_env.delenv("BACKUP_REDIS_PASSWORD")
    assert _load(tmp_path, {"redis": {"url": "redis://[::1]:6379/0"}})  # loopback: no password needed


def test_swebhdfs_location_opens_webhdfs_over_https():
    from storage import open_backend

    backend, path = open_backend("swebhdfs://mediation@nn.example/backup/acme")
    assert backend._client.url == "https://nn.example:9871" and path == "/backup/acme"
    assert backend.uri("/backup/acme/x.csv") == "swebhdfs://nn.example:9871/backup/acme/x.csv"


def test_example_config_binds_flower_and_metrics_to_loopback_and_verifies_tls(monkeypatch):
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "example")
    monkeypatch.delenv("BACKUP_TICKET_TOKEN", raising=False)
    s = load_settings(Path(__file__).resolve().parents[2] / "config" / "production.example.yaml")
    assert is_loopback_host(s.flower.address) and is_loopback_host(s.metrics.address)
    assert s.redis.url.startswith("rediss://") and s.hive.use_ssl and not s.hive.insecure_skip_tls_verify
    assert s.smtp.starttls and s.ticket.url.startswith("https://")


# -- the ticket token (item 8) -------------------------------------------------------------------------------

def test_ticket_token_needs_https_unless_loopback(tmp_path, clean_env):
    clean_env.setenv("BACKUP_TICKET_TOKEN", "tok")
    _refused(tmp_path, {"ticket": {"url": "http://sdp.example/tickets"}}, "must be https://")
    assert _load(tmp_path, {"ticket": {"url": "http://127.0.0.1:8089/tickets"}})
    assert _load(tmp_path, {"ticket": {"url": "https://sdp.example/tickets"}})


# -- OpenSSH (item 13) -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["-oProxyCommand=touch /tmp/pwned", "-v", "bkp user", "bkp\n", "a@b"])
def test_ssh_user_that_could_be_an_option_is_refused(tmp_path, clean_env, user):
    _refused(tmp_path, {"sftp": {"user": user}}, "sftp.user")


def test_sftp_location_user_that_could_be_an_option_is_refused(tmp_path, clean_env):
    cf = {"source_dirs": ["/srv/in"], "domains": {"traffic": ["*.csv"]}, "staging_table": "m.a",
          "final_table": "m.b", "status_flag": "/srv/flag",
          "customers": {"acme": {"primary": "/b/acme", "secondary": "sftp://-oProxyCommand=x@edge:22/b/acme"}}}
    _refused(tmp_path, {"customer_files": cf}, "customers.acme.secondary", "bad user name")


def _keygen(path: Path, passphrase: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)], check=True)
    return path


def test_openssh_engine_with_an_encrypted_key_needs_an_agent(tmp_path, clean_env):
    key = _keygen(tmp_path / "enc_key", "pass phrase")
    _refused(tmp_path, {"sftp": {"key_file": str(key), "engine": "openssh"}}, "is encrypted", "ssh-agent",
             "sftp.engine: paramiko")
    clean_env.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    assert _load(tmp_path, {"sftp": {"key_file": str(key), "engine": "openssh"}})
    clean_env.delenv("SSH_AUTH_SOCK")
    _refused(tmp_path, {"sftp": {"key_file": str(key), "engine": "paramiko"}}, "BACKUP_SFTP_KEY_PASSPHRASE")
    clean_env.setenv("BACKUP_SFTP_KEY_PASSPHRASE", "pass phrase")
    assert _load(tmp_path, {"sftp": {"key_file": str(key), "engine": "paramiko"}})
    plain = _keygen(tmp_path / "plain_key", "")
    clean_env.delenv("BACKUP_SFTP_KEY_PASSPHRASE")
    assert _load(tmp_path, {"sftp": {"key_file": str(plain), "engine": "openssh"}})


@pytest.mark.parametrize("how", ["plain", "in-stream", "paced-plain"])
def test_openssh_command_ends_options_before_user_at_host_and_reads_no_config(tmp_path, how):
    from config.settings import SftpSettings
    from connectors.sftp import SftpTarget, openssh_upload_command

    key, hosts = _keygen(tmp_path / "k", ""), tmp_path / "known_hosts"
    hosts.write_text("")
    target = SftpTarget(SftpSettings(user="bkp", key_file=key, known_hosts=hosts), key, hosts)
    (tmp_path / "a.tar.gz").write_bytes(b"x")
    argv = openssh_upload_command(target, tmp_path / "a.tar.gz", "/backup/a.tar.gz.part", how)
    at = next(i for i, a in enumerate(argv) if a.startswith("bkp@"))
    assert "--" in argv[:at] and argv.index("--") > argv.index("-i")
    assert argv[argv.index("-F") + 1] == "/dev/null"


# -- redaction (item 11) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("copy to sftp://bkp:s3cret@edge:22/b failed", "copy to sftp://bkp:***@edge:22/b failed"),
    ("POST https://tok3n@sdp.example/t: HTTP 500", "POST https://***@sdp.example/t: HTTP 500"),
    ("redis://:s3cret@r:6379/0 refused", "redis://:***@r:6379/0 refused"),
    ("sftp://bkp@edge:22/b is fine", "sftp://bkp@edge:22/b is fine"),
    ("no url here: a@b, x:y@z", "no url here: a@b, x:y@z"),
])
def test_url_secrets_are_redacted(text, expected):
    assert redact_url_secrets(text) == expected


def test_error_lines_never_carry_a_url_password():
    err = classify(OSError("cannot reach sftp://bkp:s3cret@edge:22/x"), "copy")
    assert "s3cret" not in err.one_line()
    assert "s3cret" not in FatalError("ticket webhook https://u:s3cret@h/t: HTTP 400").one_line()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_carry_a_url_password(fmt):
    import io
    import logging

    from workers import logctx

    stream = io.StringIO()
    logger = logging.getLogger(f"test.redaction.{fmt}")
    logger.handlers, logger.propagate = [logging.StreamHandler(stream)], False
    logctx.configure(logger, fmt)
    try:
        raise OSError("connect redis://:s3cret@redis.example:6379/0 refused")
    except OSError as e:
        logger.error("broker %s: %s", "rediss://mb:s3cret@r:6380/0", e, exc_info=True)
    assert "s3cret" not in stream.getvalue() and ":***@" in stream.getvalue()

"""Typed settings, declared once, validated at start.

The YAML file holds everything that is not a secret.  Secrets come only from
the environment (see ``SECRET_ENV``) and are kept as ``SecretStr`` so that they
never print in a repr, a log line, a task argument or a job record.

The file is chosen by ``--config`` or ``BACKUP_CONFIG``; the default is
``config/local.yaml``, the embedded local platform.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from backup.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "local.yaml"

#: Environment variables that carry secrets, and what each is for.
SECRET_ENV = {
    "BACKUP_REDIS_PASSWORD": "password of the Redis broker/result backend/lock store",
    "BACKUP_HIVE_PASSWORD": "password for HiveServer2/Impala (LDAP/PLAIN auth)",
    "BACKUP_SFTP_KEY_PASSPHRASE": "passphrase of the SFTP private key file, if encrypted",
    "BACKUP_SMTP_PASSWORD": "SMTP login password (with smtp.user)",
    "BACKUP_TICKET_TOKEN": "bearer token sent to the ticket webhook",
}


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Section):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis for broker, results, locks and job records (no password here: BACKUP_REDIS_PASSWORD)")
    key_prefix: str = Field("mb", description="prefix of every key this project writes", pattern=r"^[A-Za-z0-9_.-]+$")


class CelerySettings(_Section):
    task_time_limit: int = Field(3600, gt=0, description="hard time limit of one phase, seconds")
    task_soft_time_limit: int = Field(3300, gt=0, description="soft time limit (raises inside the task), seconds")
    visibility_timeout: int = Field(7200, gt=0, description="unacked message redelivery delay; must exceed task_time_limit")
    result_expires: int = Field(7 * 86400, gt=0, description="seconds Celery keeps results; longer than any chain")
    max_deliveries: int = Field(3, ge=1, description="a phase delivered more often than this (worker died each time) fails for good")
    worker_concurrency: int = Field(2, ge=1, description="processes per worker")

    @model_validator(mode="after")
    def _limits_ordered(self) -> "CelerySettings":
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("task_soft_time_limit must be below task_time_limit")
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError("visibility_timeout must be above task_time_limit, or running tasks get redelivered")
        return self


class RetrySettings(_Section):
    max_retries: int = Field(5, ge=0, description="retries of a phase on a retryable error")
    backoff: int = Field(2, ge=1, description="first backoff, seconds; doubles each retry, with jitter")
    backoff_max: int = Field(300, ge=1, description="cap on one backoff, seconds")


class LockSettings(_Section):
    ttl: int = Field(600, ge=5, description="lock expiry, seconds; a dead holder's lock frees after this")
    renew_every: int = Field(60, ge=1, description="renewal period while a phase runs, seconds")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> "LockSettings":
        if self.renew_every * 2 > self.ttl:
            raise ValueError("lock.renew_every must be at most half of lock.ttl")
        return self


class HiveSettings(_Section):
    host: str = Field("127.0.0.1", description="HiveServer2 or Impala daemon host")
    port: int = Field(10000, gt=0, lt=65536, description="HiveServer2 (10000) or Impala hs2 (21050) port")
    auth_mechanism: Literal["NOSASL", "PLAIN", "LDAP", "GSSAPI", "NONE"] = Field("NOSASL", description="impyla auth_mechanism")
    user: str | None = Field(None, description="user for PLAIN/LDAP; password from BACKUP_HIVE_PASSWORD")
    use_ssl: bool = Field(False, description="TLS to HiveServer2/Impala")
    kerberos_service_name: str = Field("impala", description="service principal name for GSSAPI")
    timeout: int = Field(60, gt=0, description="socket timeout, seconds")
    fetch_rows: int = Field(100_000, ge=100, description="rows per fetch round trip while exporting")


class SftpSettings(_Section):
    host: str = Field("127.0.0.1", description="backup server / edge node host")
    port: int = Field(2222, gt=0, lt=65536, description="SSH port")
    user: str | None = Field(None, description="SSH user (default: the user running the worker)")
    key_file: Path = Field(Path(".platform/ssh/client_key"), description="private key file (passphrase from BACKUP_SFTP_KEY_PASSPHRASE)")
    known_hosts: Path = Field(Path(".platform/ssh/known_hosts"), description="known_hosts used to verify the host key; unknown keys are refused")
    remote_dir: str = Field("/tmp/edge-backups", description="folder on the backup server receiving the archives")
    connect_timeout: int = Field(15, gt=0, description="TCP/SSH handshake timeout, seconds")
    streams: int = Field(2, ge=1, le=8, description="parallel SSH connections used for one upload")
    rate_limit_mbps: float = Field(0, ge=0, description="upload bandwidth cap in MB/s (0 = unlimited)")


class SmtpSettings(_Section):
    host: str = Field("127.0.0.1", description="SMTP relay host")
    port: int = Field(8025, gt=0, lt=65536, description="SMTP port")
    sender: str = Field("mediation-backup@localhost", description="From address")
    to: list[str] = Field(default_factory=lambda: ["oncall@localhost"], description="To addresses")
    cc: list[str] = Field(default_factory=list, description="Cc addresses")
    starttls: bool = Field(False, description="issue STARTTLS before login")
    user: str | None = Field(None, description="login user; password from BACKUP_SMTP_PASSWORD")
    timeout: int = Field(15, gt=0, description="seconds")


class TicketSettings(_Section):
    url: str = Field("http://127.0.0.1:8089/tickets", description="webhook receiving a JSON POST per alert (bearer token from BACKUP_TICKET_TOKEN)")
    timeout: int = Field(15, gt=0, description="seconds")


class AlertSettings(_Section):
    enabled: bool = Field(True, description="send email and ticket on final failures (replaces ENV_MODE=PROD)")


class EdgeExportSettings(_Section):
    months: int = Field(5, ge=1, le=120, description="default window length in calendar months")
    timezone: str = Field("UTC", description="timezone deciding 'this month' when --end is not given")
    partition_column: str = Field("partition_date", description="column the window filters on")
    export_dir: Path = Field(Path(".platform/exports"), description="local folder for archives, one sub-folder per run")
    keep_local: bool = Field(False, description="keep the local archive after the remote copy is verified")
    compresslevel: int = Field(3, ge=1, le=9, description="gzip level (3: near level 6 size at twice the speed)")
    streams: int = Field(2, ge=1, le=16, description="parallel query streams (one per month range)")


class PlatformSettings(_Section):
    """Ports of the embedded local platform (``backupctl platform up``)."""

    state_dir: Path = Field(Path(".platform"), description="where the local platform keeps pids, logs, keys and data")
    hive_port: int = Field(10000, description="HiveServer2 port of the local Spark JVM")
    connect_port: int = Field(15002, description="Spark Connect port of the local Spark JVM")
    spark_ui_port: int = Field(4040, description="Spark UI port")
    ssh_port: int = Field(2222, description="local OpenSSH server (edge node)")
    smtp_port: int = Field(8025, description="SMTP sink")
    ticket_port: int = Field(8089, description="ticket webhook receiver")
    redis_port: int = Field(6379, description="Redis; an already running one is reused")
    spark_master: str = Field("local[2]", description="master of the local Spark JVM")
    spark_driver_memory: str = Field("2g", description="driver memory of the local Spark JVM")


class Settings(_Section):
    base_dir: Path = Field(Path("."), description="relative paths below are resolved against this (itself relative to the config file)")
    redis: RedisSettings = RedisSettings()
    celery: CelerySettings = CelerySettings()
    retry: RetrySettings = RetrySettings()
    lock: LockSettings = LockSettings()
    hive: HiveSettings = HiveSettings()
    sftp: SftpSettings = SftpSettings()
    smtp: SmtpSettings = SmtpSettings()
    ticket: TicketSettings = TicketSettings()
    alerts: AlertSettings = AlertSettings()
    edge_export: EdgeExportSettings = EdgeExportSettings()
    platform: PlatformSettings = PlatformSettings()
    log_format: Literal["text", "json"] = Field("text", description="log line format; json for log shippers")

    def path(self, p: Path | str) -> Path:
        """Resolve a configured path against ``base_dir``."""
        p = Path(p)
        return p if p.is_absolute() else (self.base_dir / p)

    def secret(self, name: str) -> SecretStr | None:
        """A secret from the environment (never from the file)."""
        if name not in SECRET_ENV:
            raise KeyError(name)
        value = os.environ.get(name)
        return SecretStr(value) if value else None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_paths(s: Settings) -> None:
    for label, p in [
        ("sftp.key_file", s.sftp.key_file),
        ("sftp.known_hosts", s.sftp.known_hosts),
        ("edge_export.export_dir", s.edge_export.export_dir),
        ("platform.state_dir", s.platform.state_dir),
        ("sftp.remote_dir", s.sftp.remote_dir),
    ]:
        if _CONTROL.search(str(p)):
            raise ConfigError(f"{label}: control characters in path {str(p)!r}")
    if not s.sftp.remote_dir.startswith("/"):
        raise ConfigError(f"sftp.remote_dir: must be an absolute path, got {s.sftp.remote_dir!r}")


def _first_error(e: ValidationError, source: str) -> ConfigError:
    err = e.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return ConfigError(f"{source}: {key}: {msg}")


def load_settings(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate the YAML config; raise ConfigError naming the key."""
    cfg_path = Path(path or os.environ.get("BACKUP_CONFIG") or DEFAULT_CONFIG).resolve()
    try:
        raw = yaml.safe_load(cfg_path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {cfg_path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{cfg_path}: not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: top level must be a mapping")
    if overrides:
        raw = _merge(raw, overrides)
    try:
        s = Settings.model_validate(raw)
    except ValidationError as e:
        raise _first_error(e, str(cfg_path)) from e
    s = s.model_copy(update={"base_dir": (cfg_path.parent / s.base_dir).resolve()})
    _check_paths(s)
    return s


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once from BACKUP_CONFIG."""
    return load_settings()

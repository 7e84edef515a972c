"""Typed settings, declared once, validated at start.

The YAML file holds everything that is not a secret.  Secrets come only from
the environment (see ``SECRET_ENV``) and are kept as ``SecretStr`` so that they
never print in a repr, a log line, a task argument or a job record.

The file is chosen by ``--config`` or ``BACKUP_CONFIG``; the default is
``config/local.yaml``, the embedded local platform.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from base.urls import SentinelUrl, is_loopback_host, redact_url_secrets, url_has_password, url_scheme
from base.text import CONTROL_CHARS
from base.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "local.yaml"

#: one JVM option of the local platform: -X... or -D..., no spaces or shell characters
JVM_OPTION = re.compile(r"-[XD][A-Za-z0-9:+=._/,%-]{1,200}")

#: Environment variables that carry secrets, and what each is for.
SECRET_ENV = {
    "BACKUP_REDIS_PASSWORD": "password of the Redis broker/result backend/lock store",
    "BACKUP_HIVE_PASSWORD": "password for HiveServer2/Impala (LDAP/PLAIN auth)",
    "BACKUP_SFTP_KEY_PASSPHRASE": "passphrase of the SFTP private key file, if encrypted",
    "BACKUP_SMTP_PASSWORD": "SMTP login password (with smtp.user)",
    "BACKUP_TICKET_TOKEN": "bearer token sent to the ticket webhook",
    "SPARK_CONNECT_AUTHENTICATE_TOKEN": "bearer token of the Spark Connect endpoint, if it requires one (read by pyspark itself; implies TLS)",
    "FLOWER_BASIC_AUTH": "Flower logins, user:password[,user2:password2] (read by Flower itself, never on a command line)",
    "FLOWER_OAUTH2_SECRET": "OAuth2 client secret of Flower's login provider (with flower.auth_provider)",
}


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _service_url_problem(url: str, schemes: tuple[str, ...], user_allowed: bool) -> str | None:
    """Why ``url`` is not a usable service URL (scheme in ``schemes``, a host, no password), or None."""
    from urllib.parse import urlsplit

    if CONTROL_CHARS.search(url) or any(c.isspace() for c in url):
        return "contains spaces or control characters"
    scheme = url_scheme(url, default=None)
    if scheme not in schemes:
        return f"must start with {' or '.join(s + '://' for s in schemes)}"
    if url_has_password(url):
        return "carries a password: secrets come from the environment only (config/settings.py SECRET_ENV)"
    parts = urlsplit(url)
    if "@" in parts.netloc and not user_allowed:
        return "carries credentials (user@): secrets come from the environment only (config/settings.py SECRET_ENV)"
    try:
        parts.port
    except ValueError:
        return "has a bad port"
    if not parts.hostname:
        return "names no host"
    return None


class RedisSettings(_Section):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis for broker, results, locks and job records: redis:// or rediss:// (TLS, verified against the system CAs), optionally with an ACL user name (redis://user@host); or Redis Sentinel, sentinel://host:port[,host:port...]/<db>?master=<name> (the sentinels are asked for the current primary, on every reconnect: a fail-over is ridden through like an outage; plain TCP, no user); no password here: BACKUP_REDIS_PASSWORD (the primary's and replicas', not sent to the sentinels), required when a host is not loopback")
    key_prefix: str = Field("mb", description="prefix of every key this project writes", pattern=r"^[A-Za-z0-9_.-]+$")
    outage_grace: int = Field(60, ge=1, le=3600, description="seconds a Redis outage (restart, fail-over) is ridden through by every Redis call of a phase, by task publishing and by result writes before they fail (a commit is still decided by the lock's fencing, whatever the wait)")
    wait_replicas: int | None = Field(None, ge=0, le=16, description="replicas that must acknowledge (Redis WAIT) each lock take, fence move and fencing check before a commit, or the step fails (retried): a fail-over then never loses a granted fencing token; default 1 with sentinel://, 0 with redis://")
    wait_timeout_ms: int = Field(2000, ge=10, le=60000, description="how long one WAIT for wait_replicas acknowledgements may take, milliseconds")

    @model_validator(mode="after")
    def _url_checked(self) -> "RedisSettings":
        if url_scheme(self.url, default=None) == "sentinel":
            problem = None
            if CONTROL_CHARS.search(self.url) or any(c.isspace() for c in self.url):
                problem = "contains spaces or control characters"
            else:
                try:
                    SentinelUrl.parse(self.url)
                except ValueError as e:
                    problem = str(e)
        else:
            problem = _service_url_problem(self.url, ("redis", "rediss", "sentinel"), user_allowed=True)
        if problem:
            raise ValueError(f"redis.url {problem}")
        return self

    @property
    def sentinel(self) -> SentinelUrl | None:
        """The parsed sentinel:// URL, or None for a plain redis:// or rediss:// one."""
        return SentinelUrl.parse(self.url) if url_scheme(self.url, default=None) == "sentinel" else None

    @property
    def replicas_to_wait(self) -> int:
        """Replicas each fencing step waits for (``wait_replicas``, or its default by the URL's scheme)."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if self.sentinel else 0

    @property
    def on_loopback(self) -> bool:
        """Whether Redis (every sentinel, with sentinel://) is on this machine's loopback (no password required there)."""
        from urllib.parse import urlsplit

        sentinel = self.sentinel
        if sentinel:
            return all(is_loopback_host(host) for host, _ in sentinel.sentinels)
        return is_loopback_host(urlsplit(self.url).hostname)


class CelerySettings(_Section):
    task_time_limit: int = Field(3600, gt=0, description="hard time limit of one phase, seconds")
    task_soft_time_limit: int = Field(3300, gt=0, description="soft time limit (raises inside the task), seconds")
    visibility_timeout: int = Field(600, ge=20, description="seconds after which the messages of a worker that died (no longer re-stamped by it every 5 s) go to another worker; bounds recovery after a whole worker is lost, independent of how long phases run")
    result_expires: int = Field(7 * 86400, gt=0, description="seconds Celery keeps results; longer than any chain")
    max_deliveries: int = Field(3, ge=1, description="a phase delivered more often than this (worker died each time) fails for good")
    worker_concurrency: int = Field(2, ge=1, description="processes per worker")

    @model_validator(mode="after")
    def _limits_ordered(self) -> "CelerySettings":
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("task_soft_time_limit must be below task_time_limit")
        return self


class RetrySettings(_Section):
    """Retries of a phase on a retryable error (backup/retry.py): a budget of time, optionally capped in count."""

    budget: int = Field(900, ge=1, description="seconds from a phase's first attempt (a customer-files copy: from the end of its first attempt that met a transient failure, again after one that copied something) during which retryable failures are retried; an outage shorter than this minus one attempt is survived, a longer one fails the job (one alert)")
    max_retries: int | None = Field(None, ge=0, description="optional cap on the number of retries within the budget (none: the budget alone decides)")
    backoff: int = Field(2, ge=1, description="first wait, seconds; doubles each retry, half of it random (equal jitter)")
    backoff_max: int = Field(60, ge=1, description="cap on one wait, seconds")


class LockSettings(_Section):
    ttl: int = Field(600, ge=5, description="lock expiry, seconds; a dead holder's lock frees after this")
    renew_every: int = Field(60, ge=1, description="renewal period while a phase runs, seconds")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> "LockSettings":
        if self.renew_every * 2 > self.ttl:
            raise ValueError("lock.renew_every must be at most half of lock.ttl")
        return self


class StallSettings(_Section):
    """The stall check (``backup.stall_check``, fired by beat): no job stays ``running`` forever."""

    check_every: int = Field(60, ge=5, description="seconds between two stall checks (a beat entry of its own)")
    orphan_after: int = Field(300, ge=10, description="a queued or running job whose lock is not held, with no message for it in any queue or unacknowledged, and no record update for this long, is failed as stalled")
    max_silence: int | None = Field(None, ge=60, description="a running job whose record has not changed for this long is failed as stalled even while its lock is renewed (a hung phase); default celery.task_time_limit + 300")
    ending_grace: int = Field(120, ge=10, description="a failure claimed but not completed for this long (its worker died between claim and terminal write) is completed by the stall check, alert included")


class HiveSettings(_Section):
    host: str = Field("127.0.0.1", description="HiveServer2 or Impala daemon host")
    port: int = Field(10000, gt=0, lt=65536, description="HiveServer2 (10000) or Impala hs2 (21050) port")
    auth_mechanism: Literal["NOSASL", "PLAIN", "LDAP", "GSSAPI", "NONE"] = Field("NOSASL", description="impyla auth_mechanism")
    user: str | None = Field(None, description="user for PLAIN/LDAP; password from BACKUP_HIVE_PASSWORD")
    use_ssl: bool = Field(False, description="TLS to HiveServer2/Impala; the certificate and host name are verified (against ca_cert, else the system CAs)")
    ca_cert: Path | None = Field(None, description="with use_ssl: PEM file of the CA(s) that signed the server's certificate (default: the system CAs)")
    insecure_skip_tls_verify: bool = Field(False, description="DANGEROUS, with use_ssl: accept any certificate and host name (anyone on the path can read the password and every row); logged as a warning at every connection")
    kerberos_service_name: str = Field("impala", description="service principal name for GSSAPI")
    timeout: int = Field(60, gt=0, description="socket timeout, seconds")
    fetch_rows: int = Field(100_000, ge=100, description="rows per fetch round trip while exporting")

    @model_validator(mode="after")
    def _tls_consistent(self) -> "HiveSettings":
        if (self.ca_cert or self.insecure_skip_tls_verify) and not self.use_ssl:
            raise ValueError("hive.ca_cert and hive.insecure_skip_tls_verify need hive.use_ssl: true")
        if self.ca_cert and self.insecure_skip_tls_verify:
            raise ValueError("hive.ca_cert and hive.insecure_skip_tls_verify contradict each other; keep one")
        if self.auth_mechanism in ("PLAIN", "LDAP") and not self.use_ssl and not is_loopback_host(self.host):
            raise ValueError(f"hive.auth_mechanism {self.auth_mechanism} sends the password in clear: "
                             f"set hive.use_ssl: true (or connect to a loopback host)")
        return self


class SftpSettings(_Section):
    host: str = Field("127.0.0.1", description="backup server / edge node host")
    port: int = Field(2222, gt=0, lt=65536, description="SSH port")
    user: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", description="SSH user (default: the user running the worker); letters, digits, '_', '.', '-', not starting with '-'")
    key_file: Path = Field(Path(".platform/ssh/client_key"), description="private key file (passphrase from BACKUP_SFTP_KEY_PASSPHRASE)")
    known_hosts: Path = Field(Path(".platform/ssh/known_hosts"), description="known_hosts used to verify the host key; unknown keys are refused")
    remote_dir: str = Field("/tmp/edge-backups", description="folder on the backup server receiving the archives")
    connect_timeout: int = Field(15, gt=0, description="TCP/SSH handshake timeout, seconds")
    engine: Literal["paramiko", "openssh"] = Field("openssh", description="upload engine: OpenSSH's scp over the SFTP protocol (scp -s; C speed, same known_hosts check, no ssh config file read) or paramiko; openssh needs a key without passphrase, or the key loaded in an ssh-agent (SSH_AUTH_SOCK): an encrypted key_file without an agent is refused at load")
    streams: int = Field(2, ge=1, le=8, description="parallel SSH connections used for one paramiko upload")
    rate_limit_mbps: float = Field(0, ge=0, description="bandwidth budget of this backup server in MB/s (0 = unlimited), shared by every upload to it from every worker and workflow (edge-export archives, customer-files sftp:// copies to the same host and port): a token bucket in Redis")
    verify: Literal["in-stream", "read-back"] = Field("in-stream", description="how the server's SHA-256 of an upload is computed before the rename: in-stream (the server receives the bytes through a small python3 program that hashes what it writes: one read on each side; a server without python3 falls back to read-back, said in the job record) or read-back (sha256sum of the temp file after the upload: also sees a change made to the temp file on the server between the write and the rename, at the cost of reading it again)")
    stall_timeout: int = Field(60, ge=5, description="an upload that makes no progress for this long (a black-holed link, a hung server) is killed and fails as retryable; progress is the bytes the upload program has read from the archive; an SFTP request or write (customer-files copies to sftp:// locations too) unanswered for this long fails the same way")


class SmtpSettings(_Section):
    host: str = Field("127.0.0.1", description="SMTP relay host")
    port: int = Field(8025, gt=0, lt=65536, description="SMTP port")
    sender: str = Field("mediation-backup@localhost", description="From address")
    to: list[str] = Field(default_factory=lambda: ["oncall@localhost"], description="To addresses")
    cc: list[str] = Field(default_factory=list, description="Cc addresses")
    starttls: bool = Field(False, description="issue STARTTLS (certificate and host name verified) before anything else")
    ssl: bool = Field(False, description="implicit TLS from the first byte (SMTPS, usually port 465), certificate and host name verified")
    ca_cert: Path | None = Field(None, description="with starttls or ssl: PEM file of the CA(s) that signed the relay's certificate (default: the system CAs)")
    user: str | None = Field(None, description="login user (needs starttls or ssl); password from BACKUP_SMTP_PASSWORD")
    timeout: int = Field(15, gt=0, description="seconds")

    @model_validator(mode="after")
    def _login_only_over_tls(self) -> "SmtpSettings":
        if self.starttls and self.ssl:
            raise ValueError("smtp.starttls and smtp.ssl exclude each other (STARTTLS upgrades a plain connection, ssl starts with TLS)")
        if self.user and not (self.starttls or self.ssl):
            raise ValueError("smtp.user needs smtp.starttls or smtp.ssl: a login must never travel in clear")
        if self.ca_cert and not (self.starttls or self.ssl):
            raise ValueError("smtp.ca_cert needs smtp.starttls or smtp.ssl")
        return self


class TicketSettings(_Section):
    url: str = Field("http://127.0.0.1:8089/tickets", description="webhook receiving a JSON POST per alert: http:// or https:// (verified), no credentials in it (bearer token from BACKUP_TICKET_TOKEN, which needs https unless the host is loopback); redirects are not followed")
    timeout: int = Field(15, gt=0, description="seconds")

    @model_validator(mode="after")
    def _url_checked(self) -> "TicketSettings":
        problem = _service_url_problem(self.url, ("http", "https"), user_allowed=False)
        if problem:
            raise ValueError(f"ticket.url {problem}")
        return self

    @property
    def token_allowed(self) -> bool:
        """Whether a bearer token may be sent to ``url``: https, or plain http to a loopback host only."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return parts.scheme.lower() == "https" or is_loopback_host(parts.hostname)


class AlertSettings(_Section):
    enabled: bool = Field(True, description="send email and ticket on final failures (replaces ENV_MODE=PROD)")


class EdgeExportSettings(_Section):
    months: int = Field(5, ge=1, le=120, description="default window length in calendar months")
    timezone: str = Field("UTC", description="timezone deciding 'this month' when --end is not given")
    partition_column: str = Field("partition_date", description="column the window filters on")
    export_dir: Path = Field(Path(".platform/exports"), description="local folder for archives, one sub-folder per run")
    keep_local: bool = Field(False, description="keep the local archive after the remote copy is verified")
    compresslevel: int = Field(3, ge=1, le=9, description="gzip level (3: near level 6 size at twice the speed)")
    streams: int = Field(1, ge=1, le=16, description="parallel query streams, one per month range (helps when the SQL engine, not the client, is the bottleneck)")
    server_formatting: bool = Field(True, description="on Spark, have the SQL engine write each CSV line when every column's type is one whose text is verified identical (backup.archive.SERVER_FIELDS); false: always format here")

    @model_validator(mode="after")
    def _check_at_load(self) -> "EdgeExportSettings":
        _check_timezone_and_column(self.timezone, self.partition_column)
        return self


def _check_timezone_and_column(timezone: str, column: str) -> None:
    """A bad timezone or partition column fails at load, not at the first run that needs it."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone: unknown timezone {timezone[:80]!r} (an IANA name such as Europe/Rome)") from None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", column):
        raise ValueError(f"partition_column: {column[:80]!r} is not a plain column name (letters, digits, _)")


def _location_key(url: str) -> str:
    """A location as compared with others: scheme, host and port, and the path normalised (``…/acme/.`` = ``…/acme``)."""
    import posixpath
    from urllib.parse import unquote, urlsplit

    scheme = url_scheme(url, default=None)
    if scheme is None or scheme == "file":
        path = unquote(urlsplit(url).path) if scheme else url
        return "file://" + posixpath.normpath(path)
    parts = urlsplit(url)
    return f"{scheme}://{(parts.hostname or '').lower()}:{parts.port or ''}{posixpath.normpath(unquote(parts.path))}"


_LOCATION_SCHEMES = ("file", "hdfs", "webhdfs", "swebhdfs", "sftp")
_GLOB_CLASS = re.compile(r"\[!?\]?[^\]]*\]")


def _path_component_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as one path component, or None."""
    if not name.strip():
        return "is empty"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with a dot"
    if "/" in name or "\\" in name:
        return "contains a slash"
    if CONTROL_CHARS.search(name):
        return "contains control characters"
    return None


def _location_problem(url: str) -> str | None:
    """Why ``url`` is not a usable storage location (path, file://, hdfs://, webhdfs://, sftp://), or None."""
    from urllib.parse import unquote, urlsplit

    if not url.strip():
        return "is empty"
    if CONTROL_CHARS.search(url) or CONTROL_CHARS.search(unquote(url)):
        return "contains control characters"
    scheme = url_scheme(url, default=None)
    if not scheme:
        return None
    if scheme not in _LOCATION_SCHEMES:
        return f"unknown scheme {scheme!r} (use a path or {', '.join(s + '://' for s in _LOCATION_SCHEMES)})"
    if url_has_password(url):
        return "carries a password: secrets come from the environment only (BACKUP_SFTP_KEY_PASSPHRASE, Kerberos)"
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        return "has a bad port"
    if scheme == "sftp" and parts.username is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", unquote(parts.username)):
        return "has a bad user name (letters, digits, '_', '.', '-', not starting with '-')"
    if scheme != "file" and not parts.hostname:
        return "names no host"
    if scheme != "file" and not parts.path.startswith("/"):
        return "needs an absolute path"
    return None


def _glob_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable file-name glob, or None."""
    if not pattern.strip():
        return "is empty"
    if "/" in pattern:
        return "contains '/' (patterns match file names inside a customer's folder)"
    if CONTROL_CHARS.search(pattern):
        return "contains control characters"
    # fnmatch treats an unclosed '[' as a literal character: almost surely a typo here.
    if "[" in _GLOB_CLASS.sub("", pattern):
        return "has an unclosed '['"
    if "]" in _GLOB_CLASS.sub("", pattern):
        return "has a ']' without '['"
    return None


#: a folder as a SQL engine reads it: an absolute path or scheme:///path / scheme://authority/path, no character
#: that could end the SQL string literal it is put in or hide in a log
_SERVER_PATH = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9.:@_-]*)?/[A-Za-z0-9._/@:+=,~-]*")


class CustomerLocations(_Section):
    primary: str = Field(..., description="primary backup folder of the customer: a path, file://, hdfs://, webhdfs://, swebhdfs:// (WebHDFS over verified TLS) or sftp://user@host:port/path (no password in any URL)")
    secondary: str | None = Field(None, description="secondary (edge node) backup folder, same forms as primary; optional, as in the legacy job (seed 002): without it a file is backed up once it is verified at the primary")

    def roles(self) -> tuple[str, ...]:
        """The destinations configured, primary first (the order a restore tries them)."""
        return ("primary", "secondary") if self.secondary else ("primary",)


class CustomerFilesSettings(_Section):
    """The customer-files workflow (replaces MNAAS_backup_files_process.properties)."""

    source_dirs: list[str] = Field(..., min_length=1, description="folders (paths or URLs) holding one sub-folder per customer, named like the customer, with the files to back up")
    customers: dict[str, CustomerLocations] = Field(..., min_length=1, description="customer name -> {primary, secondary}; a name is a path component: no '/', '..', control characters or leading dot")
    domains: dict[str, list[str]] = Field(..., min_length=1, description="data domain (traffic, activations, ...) -> glob patterns matched against file names; a file belongs to the first domain that matches")
    max_files_per_run: int = Field(500, ge=1, description="files copied per run at most, oldest first; the rest wait for the next run")
    settle_seconds: int = Field(60, ge=0, description="a file is copied only when its size and mtime have not changed for this long (still being written otherwise)")
    staging_table: str = Field(..., description="Hive/Impala staging table db.table, INSERT OVERWRITTEN with each run's manifest")
    final_table: str = Field(..., description="Hive/Impala count table db.table the staging rows are merged into")
    status_flag: str = Field(..., description="file (path or URL) receiving SUCCESS / PARTIAL / FAIL with counts after each run")
    manifest_dir: Path = Field(Path(".platform/customer-files/manifests"), description="local folder for each run's manifest CSV")
    after_backup: Literal["keep", "move", "delete"] = Field("keep", description="what happens to a source file once both copies are verified")
    move_to: str | None = Field(None, description="with after_backup: move, the folder on the sources' storage receiving <customer>/<domain>/<file>")
    hdfs_kerberos: bool = Field(False, description="authenticate hdfs:// and webhdfs:// locations with Kerberos (needs requests-kerberos and a ticket)")
    count_load_folder: str | None = Field(None, description="with a Spark HiveServer2: a folder (path or URL, as for the backups) where the collect phase writes the run's count rows as one JSON-lines file for the server to read in one statement, instead of SQL VALUES literals (about 0.65 ms per row for Spark's parser: 13 s at 20,000 rows); set count_load_server_path too. The file is removed after the load. Unset, or another engine: VALUES statements")
    count_load_server_path: str | None = Field(None, description="the same folder as the HiveServer2 (Spark) reads it: a URI such as hdfs:///backup/.counts (the server's default HDFS) or file:///shared/counts, or an absolute path; no quotes, backslashes or spaces")
    read_back_local_copies: bool = Field(False, description="also read back every copy just written to a local (file://) destination and compare its SHA-256; off: a local copy is verified by the SHA-256 of the very bytes handed to write (computed in the copy's single read pass), its sync to disk and its size (a read-back of a file just written comes from the page cache and proves little more); a file above 256 KiB from a local folder, which the kernel copies from the source after that read pass, by the source's SHA-256, the source's size and mtime unchanged after the copy, its sync and its size. Copies already present, HDFS copies without a matching file checksum and SFTP copies are always checked on the storage itself")

    @cached_property
    def domain_matchers(self) -> list[tuple[str, Callable[[str], object]]]:
        """(domain, match function of its globs, with ``fnmatch.fnmatchcase``'s meaning) in the settings' order: each
        domain's globs compiled once into one expression, about 1 µs a name against 5-7 µs for one ``fnmatchcase``
        per glob (a discovery matches every file listed).  A domain without globs (refused at load) matches nothing."""
        return [(domain, re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs)).match)
                for domain, globs in self.domains.items() if globs]

    @model_validator(mode="after")
    def _check(self) -> "CustomerFilesSettings":
        from base.errors import InvalidInput
        from base.identifiers import TableName

        for name in self.customers:
            problem = _path_component_problem(name)
            if problem:
                raise ValueError(f"customers: customer name {name!r} {problem}")
        for name, patterns in self.domains.items():
            problem = _path_component_problem(name)
            if problem:
                raise ValueError(f"domains: domain name {name!r} {problem}")
            if not patterns:
                raise ValueError(f"domains.{name}: needs at least one glob pattern")
            for pattern in patterns:
                problem = _glob_problem(pattern)
                if problem:
                    raise ValueError(f"domains.{name}: glob {pattern!r} {problem}")
        locations = [(f"source_dirs[{i}]", url) for i, url in enumerate(self.source_dirs)]
        for name, where in self.customers.items():
            locations += [(f"customers.{name}.{role}", getattr(where, role)) for role in where.roles()]
        locations += [("status_flag", self.status_flag)] + ([("move_to", self.move_to)] if self.move_to else [])
        if (self.count_load_folder is None) != (self.count_load_server_path is None):
            raise ValueError("count_load_folder and count_load_server_path: set both (the folder as the workers write "
                             "it and as the HiveServer2 reads it) or neither")
        if self.count_load_folder is not None:
            locations.append(("count_load_folder", self.count_load_folder))
            if not _SERVER_PATH.fullmatch(self.count_load_server_path):
                raise ValueError(f"count_load_server_path: {self.count_load_server_path!r} is not an absolute path or "
                                 f"a URI with an absolute path (no quotes, backslashes, spaces or control characters)")
        seen: dict[str, str] = {}
        for key, url in locations:
            problem = _location_problem(url)
            if problem:
                raise ValueError(f"{key}: location {url!r} {problem}")
            if key.startswith("customers."):
                norm = _location_key(url)
                if norm in seen:
                    raise ValueError(f"{key}: location {url!r} is already used by {seen[norm]}; every backup folder must be distinct")
                seen[norm] = key
        sources = {_location_key(url) for url in self.source_dirs}
        for name, where in self.customers.items():
            own = {_location_key(url.rstrip("/") + "/" + name) for url in self.source_dirs}
            for role in where.roles():
                if _location_key(getattr(where, role)) in sources | own:
                    raise ValueError(f"customers.{name}.{role}: location {getattr(where, role)!r} is a source folder; "
                                     f"a backup must be somewhere else")
        for key in ("staging_table", "final_table"):
            try:
                TableName.parse(getattr(self, key))
            except InvalidInput as e:
                raise ValueError(f"{key}: {e}") from None
        if TableName.parse(self.staging_table) == TableName.parse(self.final_table):
            raise ValueError("staging_table and final_table must differ")
        if CONTROL_CHARS.search(str(self.manifest_dir)):
            raise ValueError("manifest_dir: control characters in path")
        if self.after_backup == "move" and not self.move_to:
            raise ValueError("move_to: required when after_backup is 'move'")
        return self


# Spark's own default spark.redaction.regex: keys whose values Spark hides, so never command-line material.
_SECRET_KEY = re.compile(r"(?i)secret|password|token|access[.]?key")
# ... unless the key names where the secret is (a file, a Kubernetes secret, a provider), not the secret itself.
_SECRET_REFERENCE = re.compile(r"(?i)file$|\.file\b|path$|\.secrets\.|secretkeyref|provider|binding")
# Values that carry one anyway: user:password@ in a URL, password=... in a JDBC URL.
_SECRET_VALUE = re.compile(r"(?i)://[^/@\s]+:[^/@\s]*@|password=")
# Spark Connect URL, or a master that spark-submit takes (the two modes of connectors/spark.py).
SPARK_REMOTE_PATTERN = (r"^(sc://[^\s;]+(/(;[A-Za-z_]+=[^;\s]*)*)?|local(\[(\d+|\*)\])?|yarn|k8s://\S+"
                        r"|spark://[^\s/]+)$")


class SparkSettings(_Section):
    remote: str = Field("sc://127.0.0.1:15002", pattern=SPARK_REMOTE_PATTERN,
                        description="where Spark phases run: a Spark Connect endpoint sc://host:port[/;param=value...] (the main path; no token here: SPARK_CONNECT_AUTHENTICATE_TOKEN), or a master (local[N], yarn, k8s://..., spark://...) to spark-submit one driver per phase in client mode")
    client_retries: int = Field(3, ge=0, le=15, description="reconnect attempts of the Spark Connect client before a phase fails with ConnectionFailed (the phase retry policy takes over)")
    session_conf: dict[str, str] = Field(default_factory=dict, description="spark.sql.* settings applied to every session, e.g. spark.sql.shuffle.partitions")
    submit_command: str | None = Field(None, description="spark-submit mode: the spark-submit executable (absolute path); default the one in the installed pyspark wheel")
    submit_conf: dict[str, str] = Field(default_factory=dict, description="spark-submit mode: --conf settings of the driver, e.g. spark.hadoop.hive.metastore.uris (the phases share tables through that metastore)")
    deploy_mode: Literal["client", "cluster"] = Field("client", description="spark-submit mode: where the driver runs; cluster (remote: yarn only) ships the project's code to YARN with --py-files and follows the application to its final status")
    hadoop_conf_dir: Path | None = Field(None, description="spark-submit mode: HADOOP_CONF_DIR (core-site, yarn-site, hive-site) handed to spark-submit; how it finds YARN, HDFS and the metastore")
    yarn_resourcemanager_url: str | None = Field(None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="spark-submit mode on YARN: the ResourceManager's REST base (http://host:8088/ws/v1/cluster) to read a failed application's diagnostics and to kill one the worker gives up on")

    @model_validator(mode="after")
    def _no_secret_in_url(self) -> "SparkSettings":
        if "token=" in self.remote:
            raise ValueError("spark.remote must not carry a token; set SPARK_CONNECT_AUTHENTICATE_TOKEN instead")
        if any(not k.startswith("spark.sql.") for k in self.session_conf):
            raise ValueError("spark.session_conf: only spark.sql.* settings can be set per session")
        if re.search(r"://[^/;]*@", self.remote):  # a user part before a host (not a parameter such as user_id=a@b)
            raise ValueError("spark.remote must not carry credentials (user@ or user:password@)")
        bad = [k for k, v in self.submit_conf.items() if not re.fullmatch(r"spark\.[A-Za-z0-9_.\-]+", k)
               or CONTROL_CHARS.search(v)]
        if bad:
            raise ValueError(f"spark.submit_conf: {bad[0]!r} is not a spark.* key with a one-line value")
        # The values go on spark-submit's command line (ps, the cluster's application page): no secret there.
        secret = [k for k, v in self.submit_conf.items() if (_SECRET_KEY.search(k) and not _SECRET_REFERENCE.search(k))
                  or _SECRET_VALUE.search(v)]
        if secret:
            raise ValueError(f"spark.submit_conf: {secret[0]!r} would put a secret on spark-submit's command line (ps, "
                             f"the cluster's application page); put it in SPARK_CONF_DIR/spark-defaults.conf or the "
                             f"cluster's credential store")
        if self.yarn_resourcemanager_url and "@" in self.yarn_resourcemanager_url.split("/")[2]:
            raise ValueError("spark.yarn_resourcemanager_url must not carry credentials (user@ or user:password@)")
        if self.deploy_mode == "cluster" and self.remote != "yarn":
            raise ValueError("spark.deploy_mode: cluster is for spark.remote: yarn only")
        if self.submit_command is not None and not (self.submit_command.startswith("/")
                                                    and not CONTROL_CHARS.search(self.submit_command)):
            raise ValueError("spark.submit_command: must be an absolute path")
        return self

    @property
    def connect(self) -> bool:
        """Whether phases talk to a Spark Connect endpoint (else each runs in a spark-submit driver)."""
        return self.remote.startswith("sc://")


class TableBackupSettings(_Section):
    suffix: str = Field("_bkp", pattern=r"^[A-Za-z0-9_]{1,40}$", description="backup name is <table><suffix> (versioned: <table><suffix>_<YYYYMMDD>)")
    retention: int = Field(7, ge=1, le=1000, description="versioned mode: backups kept per table; the oldest beyond this are dropped")
    timezone: str = Field("UTC", description="timezone deciding the date in versioned backup names")
    max_reject_ratio: float = Field(0.0, ge=0, le=1, description="rejected / read rows above this fail the job after the rejects are written (0: any reject fails)")
    partition_column: str = Field("partition_date", description="date column that year_part and month_part are derived from")
    date_format: str = Field("yyyy-MM-dd", description="Spark datetime pattern of partition_column in the files")
    delimiter: str = Field(";", min_length=1, max_length=1, description="field separator of the CSV files")
    quote: str = Field('"', min_length=1, max_length=1, description="quote character of the CSV files")
    escape: str = Field('"', min_length=1, max_length=1, description="escape of a quote inside a quoted field (equal to quote: doubled quotes, RFC 4180)")
    drift_sample_rows: int = Field(1000, ge=10, le=1_000_000, description="lines validate samples from the files to detect schema drift")
    drift_ratio: float = Field(0.5, gt=0, le=1, description="validate fails (schema drift) when more than this share of the sampled lines do not parse")
    format: Literal["parquet", "orc"] = Field("parquet", description="storage format of the backup data tables")
    source_roots: list[str] = Field(default_factory=list, description="folders (absolute paths or URIs, e.g. hdfs:///landing) a request's source must lie under; empty: any absolute path or URI of a known file system (set it in production: the source is the caller's choice)")

    @model_validator(mode="after")
    def _check_at_load(self) -> "TableBackupSettings":
        _check_timezone_and_column(self.timezone, self.partition_column)
        for root in self.source_roots:
            if CONTROL_CHARS.search(root) or not (root.startswith("/") or url_scheme(root, default=None)):
                raise ValueError(f"source_roots: {root[:200]!r} is not an absolute path or URI")
        return self


class RetentionRule(_Section):
    """What one target keeps: the newest ``keep_runs`` successful runs and every run younger than ``keep_days``
    (either or both; neither: everything is kept).  The newest successful run is always kept."""

    keep_runs: int | None = Field(None, ge=1, le=100_000, description="keep the newest N successful runs (none: no count rule)")
    keep_days: int | None = Field(None, ge=1, le=36_500, description="keep every run younger than D days (none: no age rule)")


class RetentionWorkflowSettings(RetentionRule):
    """Retention of one workflow: its default rule (``keep_runs`` / ``keep_days``) plus per-target overrides."""

    targets: dict[str, RetentionRule] = Field(default_factory=dict, description="per-target overrides of the rule (target as the backup names it, e.g. db.table, or all for customer-files); a key given here replaces the workflow's value, a key left out inherits it")
    delete_copies: bool = Field(False, description="customer-files only: also delete the primary and secondary copies that an expired manifest recorded as copied by its run (default: keep every copy, delete only the manifest)")

    def rule(self, target: str) -> RetentionRule:
        """The rule of ``target``: its override's keys over the workflow's."""
        base = {"keep_runs": self.keep_runs, "keep_days": self.keep_days}
        override = self.targets.get(target)
        if override is not None:
            base.update(override.model_dump(exclude_unset=True))
        return RetentionRule(**base)


class RetentionSettings(_Section):
    """``backup.retention`` (docs/retention.md): what each backup workflow keeps.  A workflow without a rule keeps
    everything; with one, retention also runs after each of its successful backups."""

    edge_export: RetentionWorkflowSettings = RetentionWorkflowSettings()
    customer_files: RetentionWorkflowSettings = RetentionWorkflowSettings()
    table_backup: RetentionWorkflowSettings = RetentionWorkflowSettings()

    def of(self, workflow: str) -> RetentionWorkflowSettings:
        """The section of a backup workflow (``edge-export`` → ``edge_export``); KeyError for another workflow."""
        if workflow not in RETENTION_WORKFLOWS:
            raise KeyError(workflow)
        return getattr(self, workflow.replace("-", "_"))

    @model_validator(mode="after")
    def _copies_only_for_customer_files(self) -> "RetentionSettings":
        for name in ("edge_export", "table_backup"):
            if getattr(self, name).delete_copies:
                raise ValueError(f"retention.{name}.delete_copies: only customer-files keeps copies")
        if self.table_backup.keep_days is not None or any(
                r.keep_days is not None for r in self.table_backup.targets.values()):
            raise ValueError("retention.table_backup.keep_days: table-backup versions are kept by count (keep_runs)")
        if any((r.keep_runs or 0) > 1000 for r in [self.table_backup, *self.table_backup.targets.values()]):
            raise ValueError("retention.table_backup.keep_runs: at most 1000 versions of a table")
        return self


#: the backup workflows retention covers
RETENTION_WORKFLOWS = ("edge-export", "customer-files", "table-backup")


class RestoreEdgeExportSettings(_Section):
    """Restore of an edge-export archive into a table (``backupctl restore edge-export``)."""

    staging_dir: str = Field(".platform/restore", description="where a restore puts the archive it fetched and verified, one sub-folder per job, removed at the end: a local folder (relative to base_dir) or an hdfs:// / webhdfs:// location (WebHDFS); Spark reads the archive from there, so in production it must be a folder the Spark cluster reads (e.g. on HDFS)")
    spark_staging_dir: str | None = Field(None, description="the same folder as Spark spells it (file:///..., hdfs:///...); default: file:// of a local staging_dir, which only a Spark running on the worker's machine can read")

    @model_validator(mode="after")
    def _staging_readable_by_spark(self) -> "RestoreEdgeExportSettings":
        if CONTROL_CHARS.search(self.staging_dir) or (self.spark_staging_dir and CONTROL_CHARS.search(self.spark_staging_dir)):
            raise ValueError("control characters in a staging folder")
        if url_has_password(self.staging_dir) or (self.spark_staging_dir and url_has_password(self.spark_staging_dir)):
            raise ValueError("a staging folder URL carries a password: secrets come from the environment only")
        if url_scheme(self.staging_dir) != "file" and not self.spark_staging_dir:
            raise ValueError("staging_dir is not a local folder: set spark_staging_dir, the same folder as Spark spells it")
        return self


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
    metastore_port: int = Field(1527, description="Derby network server holding the Hive metastore shared by the Spark JVM and drivers in YARN")
    namenode_port: int = Field(8020, description="HDFS NameNode RPC port (hdfs://127.0.0.1:<port>, what Spark and Hadoop's own client use)")
    namenode_http_port: int = Field(9870, description="HDFS NameNode HTTP port: WebHDFS, JMX (what the hdfs:// and webhdfs:// storage locations use)")
    hdfs_control_port: int = Field(9879, description="loopback control port of the local HDFS JVM (stop/start a NameNode or DataNode in fault tests)")
    hdfs_user: str = Field("mediation", pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="HDFS user owning /backup and /data on the local HDFS: the embedded config writes as this user, not as the superuser")
    datanodes: int = Field(2, ge=1, le=8, description="DataNodes of the local HDFS (replication is min(2, datanodes))")
    resourcemanager_port: int = Field(8032, description="YARN ResourceManager client port; the scheduler, tracker and admin ports are the three below it and the one above")
    resourcemanager_http_port: int = Field(8088, description="YARN ResourceManager web/REST port")
    nodemanager_memory_mb: int = Field(6144, ge=1024, description="memory the local NodeManager offers to containers")
    nodemanager_vcores: int = Field(4, ge=1, description="vcores the local NodeManager offers (more than the machine's cores: Spark drivers mostly wait)")
    hadoop_home: Path | None = Field(None, description="where Hadoop's jars are fetched (Maven Central) and the launcher compiled; default <state_dir>/hadoop")
    jvm_options: list[str] = Field(default_factory=list, description="extra -X/-D options of every JVM the local platform starts (HDFS, YARN, metastore, the Spark server, Hadoop's client), after its own, e.g. [-XX:TieredStopAtLevel=1, -XX:+UseSerialGC]: the test sessions' choice, about 40 % less CPU on short statements, slower on long ones")

    @model_validator(mode="after")
    def _jvm_options_are_plain_flags(self) -> "PlatformSettings":
        for option in self.jvm_options:
            # One flag per item, no spaces: they are joined for spark-submit's --driver-java-options.
            if not JVM_OPTION.fullmatch(option):
                raise ValueError(f"platform.jvm_options: {option!r} is not one -X... or -D... option without spaces")
        return self


class ScheduleEntry(_Section):
    """One scheduled run: a workflow started by celery beat on a cron expression."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,80}$", description="unique name of the entry (beat key, logs, backupctl schedule)")
    workflow: str = Field(..., description="workflow to start, a registered workflow (config/workflows.py), e.g. edge-export")
    cron: str = Field(..., description="five-field cron expression: minute hour day-of-month month day-of-week")
    timezone: str = Field("UTC", description="IANA timezone the cron expression is read in, e.g. Europe/Rome (DST-aware)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the workflow's entry task, e.g. {table: db.table}; never secrets")
    enabled: bool = Field(True, description="false keeps the entry in the file but beat does not fire it")


class BeatSettings(_Section):
    lock_timeout: int = Field(50, ge=10, description="seconds the active beat's Redis lock lives without renewal; a standby beat takes over at most lock_timeout + max_loop_interval after the active one died")
    max_loop_interval: int = Field(10, ge=1, description="longest sleep of beat between two looks at the schedule; also how often the lock is renewed and a standby retries it")

    @model_validator(mode="after")
    def _renew_well_before_expiry(self) -> "BeatSettings":
        if self.lock_timeout < 3 * self.max_loop_interval:
            raise ValueError("beat.lock_timeout must be at least 3 x beat.max_loop_interval, or the active beat loses its lock between two renewals")
        return self


class EnqueueSettings(_Section):
    idempotency_window: int = Field(86400, ge=60, description="seconds an idempotency_key keeps returning the job it first started")


class FlowerSettings(_Section):
    address: str = Field("127.0.0.1", description="address Flower listens on")
    port: int = Field(5555, gt=0, lt=65536, description="Flower port (logins from FLOWER_BASIC_AUTH or OAuth; /metrics and /healthcheck need no login)")
    max_tasks: int = Field(10_000, ge=100, description="tasks Flower keeps in memory")
    auth_provider: str | None = Field(None, description="OAuth2 login handler, e.g. flower.views.auth.GithubLoginHandler (GoogleAuth2LoginHandler, GitLabLoginHandler, OktaLoginHandler); secret in FLOWER_OAUTH2_SECRET")
    auth: str | None = Field(None, description="OAuth2: regular expression of the e-mail addresses allowed in")
    oauth2_key: str | None = Field(None, description="OAuth2 client id")
    oauth2_redirect_uri: str | None = Field(None, description="OAuth2 redirect URI, https://<flower host>/login")


class MetricsSettings(_Section):
    address: str = Field("127.0.0.1", description="address of the Prometheus exporter (backupctl metrics); restrict it to the scraper's network")
    port: int = Field(9808, gt=0, lt=65536, description="port of the Prometheus exporter")


class RestoreDrillSettings(_Section):
    """Restore drills (``backup.restore_drill``): each target's latest successful backup restored into scratch, verified, dropped."""

    targets: list[str] = Field(default_factory=list, description="what a drill with no target restores, each WORKFLOW:TARGET: edge-export:DB.TABLE, table-backup:DB.TABLE or customer-files:CUSTOMER")
    scratch_db: str = Field("backup_drill", description="database the drills restore tables into (it must exist; a drill's table is dropped when the drill ends)")
    scratch_dir: str = Field(".platform/drills", description="where customer-files drills restore files: a local folder (relative to base_dir) or a URL, one sub-folder per drill, removed when the drill ends; never inside a backup folder")
    sample_rows: int = Field(1000, ge=0, le=1_000_000, description="table-backup drills: restored rows compared with the live table (0: none)")
    history: int = Field(52, ge=1, le=10_000, description="drill results kept per target (backupctl drills shows the latest)")

    @model_validator(mode="after")
    def _targets_well_formed(self) -> "RestoreDrillSettings":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", self.scratch_db):
            raise ValueError(f"scratch_db {self.scratch_db!r}: a database name (letters, digits, _)")
        for t in self.targets:
            if not re.fullmatch(r"(edge-export|table-backup):[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*"
                                r"|customer-files:[^\x00-\x1f\x7f:]{1,100}", t):
                raise ValueError(f"target {t[:120]!r}: use edge-export:DB.TABLE, table-backup:DB.TABLE or "
                                 f"customer-files:CUSTOMER")
        if CONTROL_CHARS.search(self.scratch_dir):
            raise ValueError("control characters in scratch_dir")
        return self


class Settings(_Section):
    base_dir: Path = Field(Path("."), description="relative paths below are resolved against this (itself relative to the config file)")
    redis: RedisSettings = RedisSettings()
    celery: CelerySettings = CelerySettings()
    retry: RetrySettings = RetrySettings()
    lock: LockSettings = LockSettings()
    stall: StallSettings = StallSettings()
    hive: HiveSettings = HiveSettings()
    sftp: SftpSettings = SftpSettings()
    smtp: SmtpSettings = SmtpSettings()
    ticket: TicketSettings = TicketSettings()
    alerts: AlertSettings = AlertSettings()
    edge_export: EdgeExportSettings = EdgeExportSettings()
    customer_files: CustomerFilesSettings | None = Field(None, description="the customer-files workflow; without this section it refuses to run")
    spark: SparkSettings = SparkSettings()
    table_backup: TableBackupSettings = TableBackupSettings()
    restore_edge_export: RestoreEdgeExportSettings = RestoreEdgeExportSettings()
    retention: RetentionSettings = RetentionSettings()
    platform: PlatformSettings = PlatformSettings()
    log_format: Literal["text", "json"] = Field("text", description="log line format; json for log shippers")
    schedules: list[ScheduleEntry] = Field(default_factory=list, description="runs started by celery beat (backupctl beat)")
    beat: BeatSettings = BeatSettings()
    enqueue: EnqueueSettings = EnqueueSettings()
    flower: FlowerSettings = FlowerSettings()
    metrics: MetricsSettings = MetricsSettings()
    restore_drill: RestoreDrillSettings = RestoreDrillSettings()

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


def _check_paths(s: Settings) -> None:
    for label, p in [
        ("sftp.key_file", s.sftp.key_file),
        ("sftp.known_hosts", s.sftp.known_hosts),
        ("edge_export.export_dir", s.edge_export.export_dir),
        ("platform.state_dir", s.platform.state_dir),
        ("sftp.remote_dir", s.sftp.remote_dir),
    ]:
        if CONTROL_CHARS.search(str(p)):
            raise ConfigError(f"{label}: control characters in path {str(p)!r}")
    if not s.sftp.remote_dir.startswith("/"):
        raise ConfigError(f"sftp.remote_dir: must be an absolute path, got {s.sftp.remote_dir!r}")


def _encrypted_private_key(path: Path) -> bool | None:
    """Whether the private key file at ``path`` is encrypted (OpenSSH or PEM format); None if unreadable."""
    import base64

    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
        try:
            blob = base64.b64decode("".join(body.split()))
        except ValueError:
            return None
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic) or len(blob) < len(magic) + 4:
            return None
        n = int.from_bytes(blob[len(magic):len(magic) + 4], "big")
        return blob[len(magic) + 4:len(magic) + 4 + n] != b"none"  # the cipher name
    return "ENCRYPTED" in text  # PEM: "Proc-Type: 4,ENCRYPTED" or "BEGIN ENCRYPTED PRIVATE KEY"


def check_environment(s: Settings, source: str = "config") -> None:
    """Checks that join the file with the environment (secrets, the ssh-agent); ConfigError naming the key.

    - Redis off loopback needs BACKUP_REDIS_PASSWORD (an open Redis is the job queue and every record).
    - BACKUP_TICKET_TOKEN goes only to an https ticket.url, or plain http on loopback.
    - The openssh engine cannot type a passphrase: an encrypted sftp.key_file needs its key in an
      ssh-agent (SSH_AUTH_SOCK), else engine: paramiko (which reads BACKUP_SFTP_KEY_PASSPHRASE).
    """
    if not s.redis.on_loopback and not s.secret("BACKUP_REDIS_PASSWORD"):
        raise ConfigError(f"{source}: redis.url: Redis is not on loopback, so BACKUP_REDIS_PASSWORD must be set "
                          f"(and requirepass or an ACL user on the server)")
    if s.secret("BACKUP_TICKET_TOKEN") and not s.ticket.token_allowed:
        raise ConfigError(f"{source}: ticket.url: BACKUP_TICKET_TOKEN is set, so the URL must be https:// "
                          f"(plain http is allowed to loopback only)")
    encrypted = _encrypted_private_key(s.path(s.sftp.key_file))
    if encrypted and s.sftp.engine == "openssh" and not os.environ.get("SSH_AUTH_SOCK"):
        raise ConfigError(f"{source}: sftp.key_file {s.sftp.key_file} is encrypted and sftp.engine is openssh, which "
                          f"cannot use BACKUP_SFTP_KEY_PASSPHRASE: load the key into an ssh-agent (SSH_AUTH_SOCK) "
                          f"or set sftp.engine: paramiko")
    if encrypted and s.sftp.engine == "paramiko" and not s.secret("BACKUP_SFTP_KEY_PASSPHRASE"):
        raise ConfigError(f"{source}: sftp.key_file {s.sftp.key_file} is encrypted: set BACKUP_SFTP_KEY_PASSPHRASE")


def _first_error(e: ValidationError, source: str) -> ConfigError:
    err = e.errors()[0]
    key = ".".join(str(x) for x in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return ConfigError(redact_url_secrets(f"{source}: {key}: {msg}"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (the last would silently win)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {str(key)[:80]!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_settings(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate the YAML config; raise ConfigError naming the key."""
    cfg_path = Path(path or os.environ.get("BACKUP_CONFIG") or DEFAULT_CONFIG).resolve()
    try:
        raw = yaml.load(cfg_path.read_text(), Loader=_UniqueKeyLoader) or {}
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
    check_environment(s, str(cfg_path))
    from config.schedule import check_schedules  # here, not at the top: it builds on celery's cron parser

    check_schedules(s, str(cfg_path))
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


def reference_markdown() -> str:
    """The configuration reference as a markdown table, generated from the declarations above."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = f.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = "…"
            tname = ann.__name__ if isinstance(ann, type) else str(ann).replace("typing.", "")
            tname = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", tname).replace(" | ", " or ").replace("NoneType", "None")
            lines.append(f"| `{prefix}{name}` | {tname} | `{default}` | {f.description or ''} |")

    walk(Settings, "")
    lines.append("")
    lines.append("Secrets (environment only):")
    lines.append("")
    lines += [f"- `{k}`: {v}" for k, v in SECRET_ENV.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())

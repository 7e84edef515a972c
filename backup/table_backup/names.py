"""Names and requests of the table-backup workflow: what a run is called in the catalog, and which requests are valid.

Pure functions of the request and the config (no Spark, no catalog): a request is checked
before anything is enqueued (``backupctl run``, ``submit``) and every phase derives the same
names from the job record (``names_of``).  See the package docstring for the names.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import hashlib
import re
import uuid
from urllib.parse import unquote, urlsplit
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from base.errors import ConfigError, FatalError, InvalidInput
from base.identifiers import TableName, identifier
from base.text import CONTROL_CHARS
from base.urls import url_scheme
from backup.window import parse_date
from backup.resources import Resources
from backup.table_backup.outputs import DataTable
from config.settings import TableBackupSettings

_SCHEMES = {"file", "hdfs", "viewfs", "s3a", "abfs", "abfss", "gs", "wasbs"}
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{12,64}")


@dataclass(frozen=True)
class Names:
    """Every catalog name one run touches."""

    live: TableName
    backup: TableName
    data: TableName
    rejects: TableName

    def data_pattern(self) -> re.Pattern:
        """Data tables of this backup name (any run), as the catalog spells them (lower case)."""
        return re.compile(data_table_regex(self.backup.table))

    def data_tables_in(self, text: str) -> set[str]:
        """Data tables of this backup name that a text (a view's SQL, a catalog listing) names (lower case)."""
        found = re.finditer(rf"(?<![0-9a-z_]){data_table_regex(self.backup.table)}(?![0-9a-z_])", text.lower())
        return {m.group(0) for m in found}


def data_table_regex(backup: str) -> str:
    """The regex of the data tables' names of a backup name: ``<backup>__`` and a 12-character tag."""
    return rf"{re.escape(backup.lower())}__[0-9a-z]{{12}}"


def check_job_id(job_id) -> str:
    """The job id, if it can name a job's tables and records; InvalidInput otherwise."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidInput(f"invalid job id {str(job_id)[:80]!r}: use 12 to 64 letters, digits, - or _")
    return job_id


def job_tag(job_id: str) -> str:
    """Twelve hex digits of the job id's SHA-256, for the data table's name."""
    # A hash of the whole id: callers choose task ids, and ids sharing a prefix
    # ("nightly-traffic-2026-01-01", "-02") must not share a data table.
    return hashlib.sha256(check_job_id(job_id).encode()).hexdigest()[:12]


def run_names(table: str, suffix: str, day: str | None, job_id: str) -> Names:
    """The names of a run: backup (view), data (staging), rejects; all validated identifiers."""
    live = TableName.parse(table)
    base = f"{live.table}{suffix}" + (f"_{day}" if day else "")
    backup = TableName(live.db, identifier(base, "backup table name"))
    return Names(live=live, backup=backup,
                 data=TableName(live.db, identifier(f"{base}__{job_tag(job_id)}", "data table name")),
                 rejects=TableName(live.db, identifier(f"{base}_rejects", "rejects table name")))


def check_source(source, roots: list[str] | tuple[str, ...] = ()) -> str:
    """A folder (or glob) the Spark cluster reads: an absolute path or a URI of a known file system, under one
    of ``roots`` (``table_backup.source_roots``) if any are configured.

    ``..`` is refused as written and percent-encoded (``%2e%2e``: Hadoop's paths decode it).
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("missing source: give the folder of CSV files (absolute path or hdfs://... URI)")
    if CONTROL_CHARS.search(source) or CONTROL_CHARS.search(unquote(source)) or len(source) > 4096:
        raise InvalidInput(f"invalid source {source[:200]!r}: control characters or longer than 4096")
    scheme = url_scheme(source, default=None)
    if scheme is not None:
        if scheme not in _SCHEMES:
            raise InvalidInput(f"invalid source {source[:200]!r}: scheme {scheme!r} is not one of {sorted(_SCHEMES)}")
    elif not source.startswith("/"):
        raise InvalidInput(f"invalid source {source[:200]!r}: use an absolute path (the Spark cluster reads it)")
    decoded = unquote(unquote(source))  # twice: %252e%252e decodes to %2e%2e, then to ..
    if any(part == ".." for part in re.split(r"[/\\]", decoded)):
        raise InvalidInput(f"invalid source {source[:200]!r}: '..' is not allowed (also percent-encoded)")
    if roots and not any(_under(source, root) for root in roots):
        raise InvalidInput(f"invalid source {source[:200]!r}: not under a configured source root "
                           f"(table_backup.source_roots: {', '.join(roots)})")
    return source


def _under(source: str, root: str) -> bool:
    """Whether ``source`` is ``root`` or inside it (same scheme and authority; a plain path is ``file``)."""
    def split(text: str) -> tuple[str, str, str]:
        parts = urlsplit(text)
        scheme = url_scheme(text)
        path = unquote(parts.path if url_scheme(text, default=None) else text)
        return scheme, (parts.netloc if url_scheme(text, default=None) else ""), posixpath.normpath(path)

    (s_scheme, s_host, s_path), (r_scheme, r_host, r_path) = split(source), split(root)
    return (s_scheme, s_host) == (r_scheme, r_host) and (s_path == r_path or s_path.startswith(r_path.rstrip("/") + "/"))


def _today(cfg: TableBackupSettings) -> dt.date:
    try:
        return dt.datetime.now(ZoneInfo(cfg.timezone)).date()
    except ZoneInfoNotFoundError as e:
        raise ConfigError(f"table_backup.timezone: unknown timezone {cfg.timezone!r}") from e


def validate_request(res: Resources, table: str, source: str, suffix: str | None = None, versioned=False,
                     retention=None, day: str | None = None, job_id: str | None = None) -> dict:
    """Check a request and return its normalized arguments; raise InvalidInput naming the problem."""
    cfg = res.settings.table_backup
    live = TableName.parse(table)
    check_source(source, cfg.source_roots)
    suffix = cfg.suffix if suffix is None else suffix
    if not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,40}", suffix):
        raise InvalidInput(f"invalid backup suffix {suffix!r}: use 1 to 40 letters, digits or _")
    if not isinstance(versioned, bool):
        raise InvalidInput(f"invalid versioned flag {versioned!r}: expected true or false")
    if not versioned and (retention is not None or day is not None):
        raise InvalidInput("retention and day apply to versioned backups only")
    if versioned:
        if isinstance(retention, str) and retention.isascii() and retention.isdigit() and len(retention) <= 5:
            retention = int(retention)
        if retention is None:  # the retention section's rule for the table, else table_backup.retention
            retention = res.settings.retention.table_backup.rule(str(live)).keep_runs or cfg.retention
        if not isinstance(retention, int) or isinstance(retention, bool) or not 1 <= retention <= 1000:
            raise InvalidInput(f"invalid retention {retention!r}: expected a whole number of backups, 1 to 1000")
        stamp = (parse_date(day, "day") if day is not None else _today(cfg)).strftime("%Y%m%d")
    else:
        stamp = None
    identifier(cfg.partition_column, "partition column")
    names = run_names(table, suffix, stamp, job_id or uuid.uuid4().hex)
    return {"table": str(names.live), "source": source, "suffix": suffix, "versioned": versioned,
            "retention": retention if versioned else None, "day": stamp, "backup_table": str(names.backup)}


def names_of(rec: dict) -> Names:
    """The names of a recorded run (the data table as its load recorded it, if it did)."""
    a = rec["args"]
    names = run_names(a["table"], a["suffix"], a["day"], rec["job_id"])
    loaded = DataTable.find(rec)
    recorded = loaded.data_table if loaded else None
    if recorded and recorded != str(names.data):
        # Loaded by a version that derived the tag otherwise: the phases after it use the table it made.
        data = TableName.parse(recorded)
        if data.db != names.live.db or not names.data_pattern().fullmatch(data.table.lower()):
            raise FatalError(f"job record names data table {recorded}, which is not a data table of {names.backup}")
        names = Names(live=names.live, backup=names.backup, data=data, rejects=names.rejects)
    return names


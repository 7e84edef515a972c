"""The ``restore-edge-export`` workflow: an edge-export archive on the backup server → a table, verified.

    backupctl restore edge-export DB.TABLE [--job JOB_ID | --window START..END | --latest]
                                           (--into DB.NEW_TABLE [--replace] | --replace-live)

Phases (one Celery task each, chained, declared in ``DEFINITION``):
lock → check → fetch → load → swap → cleanup → finish.

* The request names the archive by the edge-export job that made it, by its window (as the
  archive is named: ``20260601..20261101``, end exclusive), or as the newest successful
  edge-export of the table (the default).  ``submit`` resolves it once, from that job's record
  (``remote_uri``, ``sha256``, ``rows``, ``bytes``, window), into ``args.archive``: every phase
  restores that very archive, whatever backups run meanwhile.
* lock: the *edge-export* lock of the table, so a restore never runs beside a backup of it.
* check (Spark): the live table's schema; the target must be free (or ``--replace``), or be the
  live table itself with ``--replace-live``.  Refused here, before anything is written.
* fetch (io): the server's own ``sha256sum`` of the archive first (a damaged archive is found
  without moving a byte), then the download into ``restore_edge_export.staging_dir``, hashed as
  it streams and committed only if it matches the job record: nothing unverified is ever read.
* load (Spark): a staging table ``<target>__rst_<tag>_<8 hex>``, one per start of the load
  (``backup.staging``: a killed delivery's statement still running on the server writes only its
  own), made ``LIKE`` the live table, filled from the archive with Spark's CSV reader (FAILFAST,
  the archive's dialect), then counted: the rows must equal the archive's ``rows``; the record
  names the table counted.
* swap (Spark): that staging table renamed to the target; the job's other staging tables dropped.  When
  the target exists (``--replace``, ``--replace-live``) it is first renamed to
  ``<target>__replaced_<tag>``; the two renames are two metastore calls back to back (see
  docs/restore-edge-export.md for what readers see).  With ``--replace-live`` the previous live table is
  kept under that name; ``--replace`` drops it.
* cleanup: the fetched archive is removed; finish records success and frees the lock.

A failure drops this job's staging tables, puts a live table renamed away back in place, and
removes the fetched archive (``undo``); the error handler alerts once.

The archive's dialect is backup/archive.py's: an empty field is read back as NULL, so an empty
string of the live table comes back as NULL (the archive cannot tell them apart).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

import redis

from base.errors import (AlreadyExists, BackupDamaged, BackupError, ChecksumMismatch, ConnectionFailed, FatalError, InvalidInput,
                         LockLost, NotFound, causes)
from base.identifiers import TableName, identifier
from backup.edge_export import WORKFLOW as BACKUP_WORKFLOW
from backup.enqueue import fail_request
from backup.jobs import phase_entry
from backup.outputs import PhaseOutputs
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.staging import delivery_table, drop_job_staging_tables, longest_name
from backup.window import Window, parse_date
from backup.workflow import Option, Phase, Workflow
from connectors.spark import drop, properties_if_exists, spark_errors, table_kind

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

WORKFLOW = "restore-edge-export"

#: Spark's CSV reader for the dialect of backup/archive.py: ``;``, ``"`` quotes doubled inside a
#: quoted field, quoted values may hold line breaks (multiLine; lineSep "\n" also keeps a CR LF
#: inside quotes as it was written), an empty field is NULL (Spark's default nullValue).  FAILFAST:
#: a record that does not parse stops the load; nothing is dropped unseen.
ARCHIVE_CSV = {"sep": ";", "quote": '"', "escape": '"', "multiLine": "true", "lineSep": "\n", "header": "false",
               "mode": "FAILFAST", "encoding": "UTF-8"}
# Marks the tables a restore makes; only a table carrying this job's id is ever dropped by it.
PROP_RESTORED_BY = "mediation_backup.restored_by"
PROP_RESTORED_FROM = "mediation_backup.restored_from"
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WINDOW = re.compile(r"(\d{4}-?\d{2}-?\d{2})\.\.(\d{4}-?\d{2}-?\d{2})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: records read per Redis round trip when the job index is scanned (--latest, --window)
_SCAN_PAGE = 200


# -- hand-overs between phases ---------------------------------------------------------------------

@dataclass(frozen=True)
class Checked(PhaseOutputs):
    """check → load, swap: the live schema the staging table follows and whether the target existed."""

    written_by: ClassVar[str] = "check"
    live_schema: str  # StructType.json()
    columns: list[str]
    target_existed: bool


@dataclass(frozen=True)
class Fetched(PhaseOutputs):
    """fetch → load, cleanup: the verified archive in the staging folder, as the worker and Spark spell it."""

    written_by: ClassVar[str] = "fetch"
    source_job: str
    remote_uri: str
    window: dict
    sha256: str
    sha256_verified: bool
    staged_path: str
    spark_path: str


@dataclass(frozen=True)
class Loaded(PhaseOutputs):
    """load → swap, finish: the staging table and the row counts it was checked with."""

    written_by: ClassVar[str] = "load"
    staging_table: str
    rows_expected: int
    rows_restored: int


@dataclass(frozen=True)
class Restored(PhaseOutputs):
    """swap → finish: the table now holding the archive, and what it replaced."""

    written_by: ClassVar[str] = "swap"
    restored_table: str
    replaced_table: str | None  # --replace-live: the previous live table, kept under this name
    dropped_table: str | None  # --replace: the table replaced, dropped after the swap
    swap_seconds: float | None  # how long the two renames of a replacing swap took (0.0: a new table)


# -- names ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Names:
    """Every catalog name one restore touches (validated identifiers)."""

    live: TableName
    target: TableName
    staging: TableName  # <target>__rst_<tag>: the base of this job's staging tables, ``<staging>_<8 hex>`` each
    replaced: TableName  # <target>__replaced_<tag>: where an existing target goes during the swap

    @classmethod
    def of(cls, live: TableName, target: TableName, job_id: str) -> "Names":
        tag = hashlib.sha256(job_id.encode()).hexdigest()[:12]
        staging = TableName(target.db, identifier(f"{target.table}__rst_{tag}", "staging table name"))
        longest_name(staging)  # a delivery's own staging table adds a suffix: refused here, not at the load
        return cls(live=live, target=target, staging=staging,
                   replaced=TableName(target.db, identifier(f"{target.table}__replaced_{tag}", "replaced table name")))


def names_of(rec: dict) -> Names:
    a = rec["args"]
    return Names.of(TableName.parse(a["table"]), TableName.parse(a["into"]), rec["job_id"])


# -- the request ---------------------------------------------------------------------------------

def _flag(value, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"invalid {what} {value!r}: expected true or false")
    return value


def parse_window(text) -> Window:
    """``START..END`` as an archive is named (``20260601..20261101``; ISO dates too), END exclusive."""
    m = _WINDOW.fullmatch(text) if isinstance(text, str) else None
    if not m:
        raise InvalidInput(f"invalid window {str(text)[:80]!r}: expected START..END as the archive is named, "
                           f"e.g. 20260601..20261101 (end exclusive)")
    start, end = (parse_date(f"{d[:4]}-{d[-4:-2]}-{d[-2:]}" if "-" not in d else d, "window date") for d in m.groups())
    if start >= end:
        raise InvalidInput(f"invalid window {text!r}: the start must be before the end")
    return Window(start, end)


def _remote_path(res: Resources, live: TableName, uri: str, job: str) -> str:
    """The archive's path on the backup server, from the record's ``remote_uri``; only a file under the
    table's folder below ``sftp.remote_dir`` (a record never picks what is read)."""
    path = urlsplit(uri).path if isinstance(uri, str) and uri.startswith("sftp://") else ""
    root = posixpath.join(res.settings.sftp.remote_dir, str(live)) + "/"
    if not path.startswith(root) or ".." in path.split("/") or not path.endswith(".csv.gz"):
        raise InvalidInput(f"edge-export job {job}: its archive {uri!r} is not an archive of {live} under "
                           f"sftp.remote_dir {res.settings.sftp.remote_dir}")
    return path


def archive_of(res: Resources, rec: dict) -> dict | None:
    """What a restore needs of an edge-export run's archive, or None if the run left no verified archive.

    A run counts when it succeeded, or when it failed and a later run resumed its archive and
    delivered it (``completed_by``): either way the record names a copy verified on the server.
    """
    out = rec.get("outputs") or {}
    if not (rec.get("state") == "success" or out.get("completed_by")) or out.get("retention_deleted"):
        return None  # (retention deleted the archive: backup/retention.py)
    if not out.get("remote_uri") or not isinstance(out.get("sha256"), str) or not _SHA256.fullmatch(out["sha256"]) \
            or not isinstance(out.get("rows"), int) or not isinstance(out.get("bytes"), int):
        return None
    live = TableName.parse(rec["target"])
    return {"job_id": rec["job_id"], "remote_uri": out["remote_uri"],
            "remote_path": _remote_path(res, live, out["remote_uri"], rec["job_id"]),
            "sha256": out["sha256"], "rows": out["rows"], "bytes": out["bytes"],
            "window": (rec.get("args") or {}).get("window"), "finished": rec.get("finished")}


def edge_export_runs(res: Resources, table: TableName) -> Iterator[dict]:
    """The edge-export records of ``table``, newest first.

    Scans the job index (``<prefix>:jobs``, 90 days of every workflow's runs), one Redis round
    trip per record: a few seconds for tens of thousands of runs, paid only by --latest and --window.
    """
    key = f"{res.settings.redis.key_prefix}:jobs"
    start = 0
    while True:
        try:
            ids = res.redis.zrevrange(key, start, start + _SCAN_PAGE - 1)
        except redis.RedisError as e:
            raise ConnectionFailed(f"list job records: {e}") from e
        if not ids:
            return
        for raw in ids:
            rec = res.jobs.find(raw.decode())
            if rec and rec.get("workflow") == BACKUP_WORKFLOW and rec.get("target") == str(table):
                yield rec
        start += _SCAN_PAGE


def choose_archive(res: Resources, live: TableName, job, window, latest: bool) -> tuple[str, dict]:
    """(how it was chosen, the archive) for a request; InvalidInput naming why there is none."""
    chosen = [what for what, given in (("job", job is not None), ("window", window is not None), ("latest", latest))
              if given]
    if len(chosen) > 1:
        raise InvalidInput(f"choose the archive one way: --job, --window or --latest, not {' and '.join(chosen)}")
    if job is not None:
        if not isinstance(job, str) or not _JOB_ID.fullmatch(job):
            raise InvalidInput(f"invalid job id {str(job)[:80]!r}: use 1 to 64 letters, digits, - or _")
        rec = res.jobs.find(job)
        if rec is None:
            raise InvalidInput(f"no job record {job!r} (records are kept 90 days; `backupctl jobs` lists them)")
        if rec.get("workflow") != BACKUP_WORKFLOW:
            raise InvalidInput(f"job {job} is a {rec.get('workflow')} run, not an edge-export")
        if rec.get("target") != str(live):
            raise InvalidInput(f"job {job} backed up {rec.get('target')}, not {live}")
        found = archive_of(res, rec)
        if found is None:
            raise InvalidInput(f"job {job} made no verified archive on the backup server (state {rec.get('state')})")
        return "job", found
    wanted = parse_window(window) if window is not None else None
    for rec in edge_export_runs(res, live):
        found = archive_of(res, rec)
        if found is None:
            continue
        if wanted is None or found["window"] and (found["window"].get("start"), found["window"].get("end")) == \
                (wanted.start.isoformat(), wanted.end.isoformat()):
            return ("window" if wanted else "latest"), found
    if wanted is not None:
        raise InvalidInput(f"no successful edge-export of {live} with window {wanted.label} in the job records")
    raise InvalidInput(f"no successful edge-export of {live} in the job records (kept 90 days)")


def validate_request(res: Resources, table: str, into: str | None = None, job: str | None = None,
                     window: str | None = None, latest=False, replace=False, replace_live=False,
                     job_id: str | None = None) -> dict:
    """Check a request and resolve its archive; the normalized arguments, or InvalidInput naming the problem.

    Reads only Redis (the job records): no Spark, no SFTP.  Whether the target table exists is
    the check phase's question (the catalog), asked before anything is written.
    """
    live = TableName.parse(table)
    latest, replace, replace_live = _flag(latest, "latest"), _flag(replace, "replace"), _flag(replace_live, "replace_live")
    if replace and replace_live:
        raise InvalidInput("--replace and --replace-live do not go together: --replace-live replaces the live table, "
                           "--replace another table given by --into")
    target = TableName.parse(into) if into is not None else None
    if replace_live:
        if target is not None and str(target).lower() != str(live).lower():
            raise InvalidInput(f"--replace-live restores into {live} itself; --into names another table ({target})")
        target = live
    elif target is None:
        raise InvalidInput(f"missing --into DB.NEW_TABLE (or --replace-live to restore into {live} itself)")
    elif str(target).lower() == str(live).lower():
        raise InvalidInput(f"{target} is the live table: restoring into it needs --replace-live")
    Names.of(live, target, job_id or uuid.uuid4().hex)  # the derived names are identifiers too
    selected_by, archive = choose_archive(res, live, job, window, latest)
    return {"table": str(live), "into": str(target), "job": job, "window": window, "latest": latest,
            "replace": replace, "replace_live": replace_live, "selected_by": selected_by, "archive": archive}


def submit(res: Resources, table: str, into: str | None = None, job: str | None = None, window: str | None = None,
           latest=False, replace=False, replace_live=False, job_id: str | None = None) -> dict:
    """Validate and create the job record; a bad request is recorded as failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    raw = {"table": table, "into": into, "job": job, "window": window, "latest": latest, "replace": replace,
           "replace_live": replace_live}
    try:
        args = validate_request(res, table, into, job, window, latest, replace, replace_live, job_id)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, str(table), raw, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, args["table"], args, DEFINITION.phase_names)


# -- lock ----------------------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the table's *edge-export* lock (a restore never runs beside a backup of it) or end as skipped."""
    return take_lock(ctx, BACKUP_WORKFLOW, ctx.rec["args"]["table"])


# -- check ---------------------------------------------------------------------------------------

def live_schema(spark: "SparkSession", live: TableName) -> "StructType":
    """The live table's schema from the catalog; InvalidInput for a view or a column a CSV field cannot carry."""
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType

    kind = table_kind(spark, live)
    if kind is None:
        raise NotFound(f"{live} does not exist: the live table gives the restored table its schema "
                       f"(recreate it, empty, with its DDL first)")
    if kind == "VIEW":
        raise InvalidInput(f"{live} is a view; a restore needs the table the archive was exported from")
    with spark_errors(f"read the schema of {live}"):
        schema = spark.table(live.sql).schema
    for f in schema:
        identifier(f.name, f"column name of {live}")
        if isinstance(f.dataType, (ArrayType, MapType, StructType, BinaryType)):
            raise InvalidInput(f"{live}: column {f.name} has type {f.dataType.simpleString()}, "
                               f"which a CSV field cannot carry")
    return schema


def check_phase(ctx: PhaseContext) -> dict:
    """The live schema, and the target's state: a table in the way without --replace is refused, before any write."""
    res, rec = ctx.res, ctx.rec
    args, names = rec["args"], names_of(rec)
    with res.spark().session() as spark:
        schema = live_schema(spark, names.live)
        with spark_errors(f"look up database {names.target.db}"):
            if not spark.catalog.databaseExists(names.target.db):
                raise NotFound(f"database {names.target.db} does not exist (create it first); nothing was written")
        kind = table_kind(spark, names.target) if not args["replace_live"] else "live"
    if kind == "VIEW":
        raise InvalidInput(f"{names.target} is a view; restore into a table name")
    if kind is not None and not (args["replace"] or args["replace_live"]):
        raise AlreadyExists(f"{names.target} already exists; give --replace to replace it (nothing was written)")
    checked = Checked(live_schema=schema.json(), columns=[f.name for f in schema], target_existed=kind is not None)
    ctx.done(checked.as_outputs())
    return {"job_id": ctx.job_id, "columns": len(schema), "target_existed": kind is not None}


# -- fetch ---------------------------------------------------------------------------------------

def _staging(res: Resources, job_id: str, name: str):
    """(backend, folder, path, Spark's URL) of this job's copy of the archive in the staging folder."""
    from storage.locations import open_location

    cfg = res.settings.restore_edge_export
    backend, base = open_location(res.settings, cfg.staging_dir)
    folder = posixpath.join(base, job_id)
    path = posixpath.join(folder, name)
    if cfg.spark_staging_dir:
        spark_path = posixpath.join(cfg.spark_staging_dir.rstrip("/"), job_id, name)
    else:  # a local folder (the settings refuse another without spark_staging_dir)
        spark_path = Path(path).resolve().as_uri()
    return backend, folder, path, spark_path


def fetch_phase(ctx: PhaseContext) -> dict:
    """The archive from the backup server into the staging folder, verified against the job record before use.

    The server hashes its copy first (``sha256sum`` there): a damaged archive fails here,
    naming the remote file, before a byte moves.  The download is hashed as it streams and
    committed (atomic rename) only if it matches too.  ChecksumMismatch either way: nothing is
    loaded, the job fails once the retry budget is spent, with one alert.
    """
    from storage.sftp import SftpBackend

    res, rec = ctx.res, ctx.rec
    archive = rec["args"]["archive"]
    remote, sha = archive["remote_path"], archive["sha256"]
    name = posixpath.basename(remote)
    target = res.sftp()
    uri = target.uri(remote)
    backend, folder, path, spark_path = _staging(res, ctx.job_id, name)
    fetched = Fetched(source_job=archive["job_id"], remote_uri=uri, window=archive["window"], sha256=sha,
                      sha256_verified=True, staged_path=backend.uri(path), spark_path=spark_path)
    with backend:
        found = backend.stat(path)
        if found is not None and found.size == archive["bytes"] and backend.sha256(path) == sha:
            ctx.done(fetched.as_outputs(), note="already fetched (verified)")
            return {"job_id": ctx.job_id, "remote_uri": uri, "note": "already fetched"}
        with target.connect() as sess:
            if sess.stat(remote) is None:
                raise NotFound(f"archive {uri} of edge-export job {archive['job_id']} is missing on the backup server")
            on_server = sess.sha256(remote)
        if on_server != sha:
            # The server's own copy differs from the record: damaged at rest, not in flight; no retry mends it.
            raise BackupDamaged(f"archive {uri} is damaged: sha256 on the backup server {on_server[:12]}… != "
                                   f"{sha[:12]}… recorded by edge-export job {archive['job_id']}; nothing restored")
        backend.mkdir(folder)
        done = {"bytes": 0}

        def verified_chunks() -> Iterator[bytes]:
            digest = hashlib.sha256()
            with SftpBackend(target) as server, server.open_read(remote) as stream:
                while chunk := stream.read(4 * 1024 * 1024):
                    ctx.raise_if_lost()  # a run that lost its lock stops writing beside the next one
                    digest.update(chunk)
                    done["bytes"] += len(chunk)
                    ctx.progress(bytes=done["bytes"], total_bytes=archive["bytes"])
                    yield chunk
            if digest.hexdigest() != sha:  # write_atomic then removes its temporary file: nothing is committed
                raise ChecksumMismatch(f"archive {uri}: the downloaded copy hashes {digest.hexdigest()[:12]}… != "
                                       f"{sha[:12]}… recorded by edge-export job {archive['job_id']}; nothing restored")

        try:
            ctx.commit_check()
            backend.write_atomic(path, verified_chunks(), overwrite=True)
            ctx.done(fetched.as_outputs())
        except LockLost:
            # Another run holds the lock and this job may already be failed and cleaned up (a holder paused past
            # its lock's TTL): nobody else will remove this job's folder, made above, or the archive in it.
            backend.delete(folder, recursive=True)
            raise
    return {"job_id": ctx.job_id, "remote_uri": uri, "bytes": done["bytes"]}


# -- load ----------------------------------------------------------------------------------------

def _ours(props: dict | None, job_id: str) -> bool:
    return props is not None and props.get(PROP_RESTORED_BY) == job_id


def load_phase(ctx: PhaseContext) -> dict:
    """A staging table of this delivery's own, made LIKE the live table, filled from the archive, its rows
    counted; the record names it.

    Runs again from scratch on a retry or a redelivery, into a new table (its name carries the job's
    tag and a random suffix, its property the job id): an earlier delivery's statement still running
    on the server never touches it (``backup.staging``).
    """
    from pyspark.sql.types import StructType

    res, rec = ctx.res, ctx.rec
    names, checked, fetched = names_of(rec), Checked.read(rec), Fetched.read(rec)
    expected = rec["args"]["archive"]["rows"]
    schema = StructType.fromJson(json.loads(checked.live_schema))
    ddl = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in schema)
    staging = delivery_table(names.staging)
    with res.spark().session() as spark:
        found = properties_if_exists(spark, staging)
        if found is not None and not _ours(found, ctx.job_id):
            raise AlreadyExists(f"{staging} exists and was not made by this restore; nothing was written")
        ctx.commit_check()
        with spark_errors(f"create the staging table {staging}"):
            if found is None:
                spark.sql(f"CREATE TABLE {staging.sql} LIKE {names.live.sql} TBLPROPERTIES "
                          f"('{PROP_RESTORED_BY}'='{ctx.job_id}', '{PROP_RESTORED_FROM}'='{fetched.source_job}')")
            # A Hive-format live table takes its partitions from the rows (dynamic partitions).
            spark.conf.set("hive.exec.dynamic.partition", "true")
            spark.conf.set("hive.exec.dynamic.partition.mode", "nonstrict")
        frame = spark.read.options(**ARCHIVE_CSV).schema(ddl).csv(fetched.spark_path)
        try:
            with spark_errors(f"load {fetched.remote_uri} into {staging}"):
                frame.write.option("partitionOverwriteMode", "static").insertInto(staging.sql, overwrite=True)
        except FatalError as e:
            if any("MALFORMED" in str(c) for c in causes(e)):  # the marker is in Spark's error, the cause of ours
                raise FatalError(f"the archive {fetched.remote_uri} does not parse with the schema of {names.live} "
                                 f"({len(schema)} columns; did the table change since the backup?): {e}") from e
            raise
        with spark_errors(f"count rows of {staging}"):
            rows = spark.table(staging.sql).count()
        if rows != expected:
            drop(spark, staging, "TABLE")
            raise FatalError(f"{rows} rows restored from {fetched.remote_uri}, but edge-export job "
                             f"{fetched.source_job} wrote {expected}; staging table dropped, nothing restored")
    loaded = Loaded(staging_table=str(staging), rows_expected=expected, rows_restored=rows)
    ctx.done(loaded.as_outputs())
    return {"job_id": ctx.job_id, "rows_restored": rows, "staging_table": str(staging)}


# -- swap ----------------------------------------------------------------------------------------

def _rename(spark: "SparkSession", src: TableName, dst: TableName) -> None:
    with spark_errors(f"rename {src} to {dst}"):
        spark.sql(f"ALTER TABLE {src.sql} RENAME TO {dst.sql}")


def swap_phase(ctx: PhaseContext) -> dict:
    """The staging table becomes the target: renamed into a free name, or, replacing, with the
    existing target renamed away just before (two metastore calls back to back, fenced once).

    Safe to run again: a target already carrying this job's id is done; a target missing while
    the renamed-away one exists (a delivery stopped between the two renames) gets the staging table.
    The staging table is the one the load counted (named in the record); once the target is this
    job's, its other staging tables (a killed delivery's) are dropped.
    """
    res, rec = ctx.res, ctx.rec
    args, loaded = rec["args"], Loaded.read(rec)
    base = names_of(rec)
    names = dataclasses.replace(base, staging=TableName.parse(loaded.staging_table))
    replacing = args["replace"] or args["replace_live"]
    swap_seconds = None
    with res.spark().session() as spark:
        target = properties_if_exists(spark, names.target)
        if _ours(target, ctx.job_id):
            note = "already swapped"
        else:
            if not _ours(properties_if_exists(spark, names.staging), ctx.job_id):
                raise FatalError(f"staging table {names.staging} is gone (dropped by hand?); {names.target} left as it was")
            if target is not None and not replacing:
                raise AlreadyExists(f"{names.target} was created since the check; give --replace to replace it "
                                    f"(nothing was replaced)")
            if target is not None and table_kind(spark, names.replaced) is not None:
                raise AlreadyExists(f"{names.replaced} exists; the replaced table cannot be kept under that name")
            ctx.commit_check()  # once for the pair: between the two renames nothing may stop the swap
            began = time.monotonic()
            if target is not None:
                _rename(spark, names.target, names.replaced)
            try:
                _rename(spark, names.staging, names.target)
            except BackupError:
                if target is not None:  # put the replaced table back at once
                    _rename(spark, names.replaced, names.target)
                raise
            swap_seconds = round(time.monotonic() - began, 3) if target is not None else 0.0
            note = "swapped"
        kept = dropped = None
        if table_kind(spark, names.replaced) is not None:
            if args["replace_live"]:
                kept = str(names.replaced)
            else:
                drop(spark, names.replaced, "TABLE")
                dropped = str(names.target)
        others = drop_job_staging_tables(spark, base.staging, PROP_RESTORED_BY, ctx.job_id)
        if others:
            log.warning("restore %s: dropped staging tables of earlier deliveries of its load: %s", ctx.job_id,
                        ", ".join(others))
    restored = Restored(restored_table=str(names.target), replaced_table=kept, dropped_table=dropped,
                        swap_seconds=swap_seconds)
    ctx.done(restored.as_outputs(), note=note)
    log.info("%s restored from %s (%d rows)%s", names.target, rec["args"]["archive"]["remote_uri"],
             loaded.rows_restored, f"; previous table kept as {kept}" if kept else "")
    return {"job_id": ctx.job_id, **restored.as_outputs()}


# -- cleanup / finish / undo -----------------------------------------------------------------------

def remove_staged(res: Resources, rec: dict) -> None:
    """Remove this job's folder in the staging folder (the fetched archive and any temporary file)."""
    archive = (rec.get("args") or {}).get("archive")
    if not archive:
        return
    backend, folder, _, _ = _staging(res, rec["job_id"], posixpath.basename(archive["remote_path"]))
    with backend:
        backend.delete(folder, recursive=True)


def cleanup_phase(ctx: PhaseContext) -> dict:
    """Remove the fetched archive: the restored table holds its rows now."""
    remove_staged(ctx.res, ctx.rec)
    ctx.done({"staged_removed": True})
    return {"job_id": ctx.job_id, "staged_removed": True}


def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    restored, loaded = Restored.find(rec), Loaded.find(rec)
    return {"job_id": ctx.job_id, "state": rec["state"],
            "restored_table": restored.restored_table if restored else None,
            "rows_restored": loaded.rows_restored if loaded else None}


def undo(res: Resources, rec: dict) -> None:
    """After a final failure: the fetched archive removed; in the catalog, what this job made undone."""
    if rec.get("workflow") != WORKFLOW or not (rec.get("args") or {}).get("archive"):
        return
    try:
        remove_staged(res, rec)
    finally:
        if any(phase_entry(rec, p)["state"] != "pending" for p in ("load", "swap")):
            res.spark().run(undo_catalog, res, rec)


def undo_catalog(res: Resources, rec: dict) -> None:
    """Put a target renamed away back under its name if the swap stopped halfway, and drop this job's
    staging tables (only tables carrying this job's id)."""
    names = names_of(rec)
    with res.spark().session() as spark:
        if table_kind(spark, names.target) is None and table_kind(spark, names.replaced) is not None:
            _rename(spark, names.replaced, names.target)
            log.warning("restore %s failed mid-swap: %s put back as %s", rec["job_id"], names.replaced, names.target)
        dropped = drop_job_staging_tables(spark, names.staging, PROP_RESTORED_BY, rec["job_id"])
        if dropped:
            log.info("dropped staging tables %s of failed restore %s", ", ".join(dropped), rec["job_id"])


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="an edge-export archive from the backup server into a table: SHA-256 and row count verified",
    phases=(Phase("lock", lock_phase), Phase("check", check_phase, queue="spark", spark=True),
            Phase("fetch", fetch_phase, queue="io"), Phase("load", load_phase, queue="spark", spark=True),
            Phase("swap", swap_phase, queue="spark", spark=True), Phase("cleanup", cleanup_phase, queue="io"),
            Phase("finish", finish_phase)),
    submit=submit,
    validate=validate_request,
    failure_cleanup=undo,
    verb="restore",
    cli_name="edge-export",
    options=(Option("--job", "job", "the edge-export job id whose archive to restore"),
             Option("--window", "window", "the archive of this window, START..END as it is named "
                    "(e.g. 20260601..20261101, end exclusive); the newest such run"),
             Option("--latest", "latest", "the newest successful edge-export of the table (the default)", flag_only=True),
             Option("--into", "into", "DB.NEW_TABLE to create (must not exist unless --replace)"),
             Option("--replace", "replace", "replace the --into table if it exists", flag_only=True),
             Option("--replace-live", "replace_live", "restore into DB.TABLE itself, swapped in once verified; "
                    "the previous table is kept as DB.TABLE__replaced_<tag>", flag_only=True)),
)

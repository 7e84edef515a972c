"""The ``restore-table-backup`` workflow: a table-backup (its view, or a dated version) back into a table, verified.

    backupctl restore table-backup DB.TABLE [--version YYYYMMDD] (--into DB.NEW_TABLE [--replace] | --replace-live)
                                   [--keep-partition-columns] [--suffix S]

Phases (one Celery task each, chained, all on the ``spark`` queue): lock → check → load → swap → finish.

Names, for the live table ``db.t``, the default suffix ``_bkp``, the target ``dbx.x`` (``db.t`` itself with
``--replace-live``) and the job's tag (12 hex digits of the SHA-256 of the job id, as table-backup's):

  db.t_bkp, db.t_bkp_<YYYYMMDD>   the backup read: a view made by table-backup, and the data table its SQL reads
  dbx.x__restore_<tag>_<8 hex>    a staging table (one per start of the load, ``backup.staging``): the restored
                                  rows, verified before they get the target's name
  dbx.x__replaced_<tag>           the table the target was until the swap (``--replace``: dropped after the swap;
                                  ``--replace-live``: kept, nothing of the live table is ever deleted by a restore)

* lock takes table-backup's own lock of ``db.t`` (``take_lock(ctx, "table-backup", "db.t")``): a restore never
  runs beside a backup of the table (which could switch the view or drop the data table being read), nor
  beside another restore of it.
* check, before anything is written: the backup view exists and was made by table-backup (else NotFound,
  listing the versions there are); the data table its SQL reads exists; its rows per partition, counted
  now (partition columns only), equal what the backup run recorded (``catalog.PROP_ROWS`` and
  ``PROP_PARTITION_ROWS`` on the data table; a backup made before per-partition counts were recorded
  is checked against the total on its view, and its own per-partition counts become the expected ones,
  which the outputs say); the target is free, or ``--replace`` / ``--replace-live`` says to replace it,
  and it is no backup object; with ``--replace-live`` the live table's columns are the backup's.
  A mismatch fails the job here (FatalError naming the partitions), with nothing written.
* load writes a staging table of its own (``LIKE`` the live table with ``--replace-live``, else the backup's columns
  partitioned like the live table, or by year_part/month_part when they are kept) from the data table, then
  counts its rows per backup partition (year and month derived from ``table_backup.partition_column`` as the
  backup derived them, or read from year_part/month_part) and compares total and partitions with the
  expected counts.  A mismatch fails the job; the failure cleanup drops the job's staging tables.  The
  job records the name of the table it verified: a killed delivery's statement that goes on running on
  the server writes only its own table, which nobody swaps.
* swap gives the verified staging table the target's name, then drops the job's other staging tables.  A
  free target: one rename, readers see no table, then the whole restored one.  An existing target: two
  renames, target → ``__replaced_<tag>``, then staging → target, with nothing in between; for that moment
  (measured: ``unavailable_seconds``) the name does not resolve, never to a partial table.
  docs/restore-table-backup.md says what a reader can see.  A failure between the two renames puts the old
  table back (here, or else in the failure cleanup).
* finish records success and releases the lock.

Every phase is safe to run twice: a load writes a new staging table of the job's (one per start),
the swap reads the catalog to know which of its renames are done (the tables it made
carry ``PROP_RESTORE_JOB``).  Spark state never crosses a phase.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from base.errors import AlreadyExists, BackupError, ConfigError, FatalError, InvalidInput, LockLost, NotFound
from base.identifiers import TableName, identifier
from backup.enqueue import fail_request
from backup.jobs import phase_entry
from backup.outputs import PhaseOutputs
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.staging import delivery_table, drop_job_staging_tables, longest_name
from backup.table_backup import WORKFLOW as TABLE_BACKUP
from backup.table_backup.catalog import (PROP_DATA, PROP_JOB, PROP_PARTITION_ROWS, PROP_REJECTS_OF, PROP_ROWS,
                                         month_counts, parse_partition_rows, partition_rows)
from backup.table_backup.columns import PARTITION_COLUMNS, parse_date
from backup.table_backup.names import Names, check_job_id, job_tag, run_names
from backup.workflow import Option, Phase, Workflow
from connectors.spark import concurrently, drop, properties_if_exists, spark_errors, tables_like

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructField

log = logging.getLogger(__name__)

WORKFLOW = "restore-table-backup"

# Marks on the tables a restore makes: the staging table, and so the restored table after the swap (provenance).
PROP_RESTORE_JOB = "mediation_backup.restore_job"
PROP_RESTORED_FROM = "mediation_backup.restored_from"  # <backup view>:<data table>
PROP_RESTORED_BACKUP_JOB = "mediation_backup.restored_backup_job"

#: how many differing partitions an error names (the rest are counted)
_SHOWN = 6


# -- names and the request -----------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreNames:
    """Every catalog name a restore touches."""

    backup: Names  # table-backup's names of the backup read (live, view, rejects, the data-table pattern)
    target: TableName
    staging: TableName  # the base of the job's staging tables: each start of the load writes ``<staging>_<8 hex>``
    replaced: TableName

    @property
    def live(self) -> TableName:
        return self.backup.live

    @property
    def view(self) -> TableName:
        return self.backup.backup


def restore_names(table: str, suffix: str, version: str | None, into: str | None, job_id: str) -> RestoreNames:
    """The names of a restore (``into`` None: the live table is the target); InvalidInput for a name too long."""
    tb = run_names(table, suffix, version, job_id)
    target = TableName.parse(into) if into is not None else tb.live
    tag = job_tag(job_id)
    staging = TableName(target.db, identifier(f"{target.table}__restore_{tag}", "staging table name"))
    longest_name(staging)  # a delivery's own staging table adds a suffix: refused here, not at the load
    return RestoreNames(backup=tb, target=target, staging=staging,
                        replaced=TableName(target.db, identifier(f"{target.table}__replaced_{tag}",
                                                                 "replaced table name")))


def _backup_object(name: TableName, live: TableName, suffix: str) -> bool:
    """Whether ``name`` is (or would be) a table-backup object of ``live``: a backup view, a version, a rejects or a
    data table."""
    base = re.escape(f"{live.table}{suffix}".lower())
    return name.db.lower() == live.db.lower() and bool(
        re.fullmatch(rf"{base}(_\d{{8}})?(_rejects|__[0-9a-z]{{12}})?", name.table.lower()))


def check_version(version) -> str | None:
    """A version as table-backup names it, YYYYMMDD (YYYY-MM-DD accepted), a real date; None for none."""
    if version is None:
        return None
    text = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if isinstance(text, str):
        for fmt in ("%Y%m%d", "%Y-%m-%d"):
            if re.fullmatch(r"\d{8}" if fmt == "%Y%m%d" else r"\d{4}-\d{2}-\d{2}", text):
                try:
                    return dt.datetime.strptime(text, fmt).strftime("%Y%m%d")
                except ValueError:
                    break
    raise InvalidInput(f"invalid version {str(version)[:40]!r}: expected the date of a versioned backup, YYYYMMDD")


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"invalid {what} flag {str(value)[:40]!r}: expected true or false")
    return value


def validate_request(res: Resources, table: str, into: str | None = None, replace=False, replace_live=False,
                     version: str | None = None, keep_partition_columns=False, suffix: str | None = None,
                     job_id: str | None = None) -> dict:
    """Check a request and return its normalized arguments; InvalidInput naming the problem.

    Pure (no catalog): what needs the catalog (the backup exists, the target is free) is the
    check phase's, before anything is written.
    """
    live = TableName.parse(table)
    suffix = res.settings.table_backup.suffix if suffix is None else suffix
    if not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,40}", suffix):
        raise InvalidInput(f"invalid backup suffix {str(suffix)[:60]!r}: use 1 to 40 letters, digits or _")
    replace, replace_live = _flag(replace, "replace"), _flag(replace_live, "replace_live")
    keep = _flag(keep_partition_columns, "keep_partition_columns")
    version = check_version(version)
    if into is not None and replace_live:
        raise InvalidInput("--into and --replace-live exclude each other: restore into a new table (--into "
                           "DB.NEW_TABLE) or over the live table (--replace-live), not both")
    if into is None and not replace_live:
        raise InvalidInput("say where to restore: --into DB.NEW_TABLE (a new table) or --replace-live")
    if replace and into is None:
        raise InvalidInput("--replace applies to --into (an existing DB.NEW_TABLE); the live table is replaced "
                           "with --replace-live only")
    if replace_live and keep:
        raise InvalidInput("--keep-partition-columns cannot go with --replace-live: the live table has no "
                           f"{' and '.join(PARTITION_COLUMNS)} columns")
    if into is not None:
        target = TableName.parse(into)
        if (target.db.lower(), target.table.lower()) == (live.db.lower(), live.table.lower()):
            raise InvalidInput(f"--into names the live table {live}; to replace it use --replace-live")
        if _backup_object(target, live, suffix):
            raise InvalidInput(f"--into {target} names a table-backup object of {live} (a backup, version, rejects "
                               f"or data table); restore into another name")
    names = restore_names(table, suffix, version, into, job_id or uuid.uuid4().hex)
    identifier(res.settings.table_backup.partition_column, "partition column")
    return {"table": str(live), "into": str(names.target) if into is not None else None, "replace": replace,
            "replace_live": replace_live, "version": version, "keep_partition_columns": keep, "suffix": suffix,
            "backup_table": str(names.view), "target": str(names.target)}


def submit(res: Resources, table: str, into: str | None = None, replace=False, replace_live=False,
           version: str | None = None, keep_partition_columns=False, suffix: str | None = None,
           job_id: str | None = None) -> dict:
    """Validate and create the job record; a bad request is recorded as failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    raw = {"table": table, "into": into, "replace": replace, "replace_live": replace_live, "version": version,
           "keep_partition_columns": keep_partition_columns, "suffix": suffix}
    try:
        check_job_id(job_id)
        args = validate_request(res, table, into, replace, replace_live, version, keep_partition_columns, suffix,
                                job_id)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, str(table), raw, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, args["table"], args, DEFINITION.phase_names)


def names_of(rec: dict) -> RestoreNames:
    """The names of a recorded restore."""
    a = rec["args"]
    return restore_names(a["table"], a["suffix"], a["version"], a["into"], rec["job_id"])


# -- what the phases hand on ---------------------------------------------------------------------

@dataclass(frozen=True)
class Checked(PhaseOutputs):
    """check → load, swap: the backup read, what it must hold, and how the restored table is made."""

    written_by: ClassVar[str] = "check"
    backup_table: str  # the view read
    data_table: str  # the data table its SQL reads (lower case, db.table)
    backup_job_id: str | None  # the table-backup job that wrote it, from its properties
    rows_expected: int
    partition_rows_expected: dict[str, int]  # YYYY-MM → rows
    expected_from: str  # where the expected counts come from (see ``_expected``)
    columns: list[list[str]]  # the restored columns: [name, Spark SQL type], in the backup's order
    partitioned_by: list[str]  # the restored table's partition columns
    like_live: bool  # the staging table is made LIKE the live table (--replace-live over an existing one)
    target_existed: bool


@dataclass(frozen=True)
class Restored(PhaseOutputs):
    """load → swap, finish: the verified staging table."""

    written_by: ClassVar[str] = "load"
    staging_table: str
    rows_restored: int
    partition_rows_restored: dict[str, int]


@dataclass(frozen=True)
class Swapped(PhaseOutputs):
    """swap → finish: the target now holding the restored rows, and what it replaced."""

    written_by: ClassVar[str] = "swap"
    restored_table: str
    replaced_table: str | None  # the table the target was (None: the target was free)
    replaced_table_kept: bool
    unavailable_seconds: float | None  # between the two renames, the target's name resolved to nothing


# -- lock ----------------------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take table-backup's lock of the live table, or end the job as skipped, naming the holder."""
    return take_lock(ctx, TABLE_BACKUP, ctx.rec["args"]["table"])


# -- check ---------------------------------------------------------------------------------------

def _differences(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """``partition 2025-10: 0 rows, expected 140`` for every partition whose count differs."""
    return [f"partition {k}: {found.get(k, 0)} rows, expected {expected.get(k, 0)}"
            for k in sorted(set(expected) | set(found)) if found.get(k, 0) != expected.get(k, 0)]


def _shown(diffs: list[str]) -> str:
    more = len(diffs) - _SHOWN
    return "; ".join(diffs[:_SHOWN]) + (f"; and {more} more partitions" if more > 0 else "")


def _partition_columns(spark: "SparkSession", table: TableName) -> list[str]:
    with spark_errors(f"read the columns of {table}"):
        return [c.name for c in spark.catalog.listColumns(f"{table.db}.{table.table}") if c.isPartition]


def _schema(spark: "SparkSession", table: TableName):
    with spark_errors(f"read the schema of {table}"):
        return spark.table(table.sql).schema


def _type(f: "StructField") -> str:
    return f.dataType.simpleString()


def _expected(spark: "SparkSession", names: RestoreNames, view: dict, data: TableName) -> tuple[int, dict | None, str,
                                                                                           str | None]:
    """(rows, rows per partition or None, where they come from, the backup job) as the backup run recorded them.

    The data table's own properties first (the write phase records them there since per-partition
    counts exist); else, for an older backup, the total recorded on the view, if the view still
    reads the table it was recorded for (a view rolled back by hand onto an older generation
    carries the newer one's numbers); else nothing recorded applies.
    """
    props = properties_if_exists(spark, data) or {}
    if PROP_PARTITION_ROWS in props:
        parts = parse_partition_rows(props[PROP_PARTITION_ROWS])
        rows = props.get(PROP_ROWS, "")
        if parts is None or not rows.isdigit() or sum(parts.values()) != int(rows):
            raise FatalError(f"backup {names.view} is damaged: the counts recorded on {data} do not read "
                             f"({PROP_ROWS}={rows[:40]!r}, {PROP_PARTITION_ROWS}={props[PROP_PARTITION_ROWS][:80]!r}); "
                             f"nothing was restored")
        return int(rows), parts, "recorded by the backup run on its data table (rows and rows per partition)", \
            props.get(PROP_JOB)
    vprops = view["properties"]
    if vprops.get(PROP_DATA, "").lower() == data.table.lower() and vprops.get(PROP_ROWS, "").isdigit():
        return int(vprops[PROP_ROWS]), None, ("rows recorded by the backup run on its view; rows per partition: the "
                                              "backup table's own counts (the backup was made before per-partition "
                                              "counts were recorded)"), vprops.get(PROP_JOB)
    return -1, None, ("the backup table's own counts: nothing recorded applies (a backup made before per-partition "
                      "counts were recorded, whose view was pointed at another generation by hand)"), props.get(PROP_JOB)


def _backup_view(found: dict[str, dict], names: RestoreNames, suffix: str, version: str | None) -> dict:
    """The listing entry of the backup view; NotFound listing the backups there are (plain and versions)."""
    view = found.get(names.view.table.lower())
    if view is not None and view["type"] == "VIEW" and PROP_DATA in view["properties"]:
        return view
    base = f"{names.live.table}{suffix}".lower()
    versions = sorted(m.group(1) for t, info in found.items()
                      if (m := re.fullmatch(rf"{re.escape(base)}_(\d{{8}})", t)) and PROP_DATA in info["properties"])
    plain = found.get(base)
    known = ([f"{names.live.db}.{base}"] if plain and PROP_DATA in plain["properties"] else []) + \
        [f"version {v}" for v in versions]
    there = f" (backups of {names.live}: {', '.join(known)})" if known else f" ({names.live} has no table-backup)"
    if view is not None:
        raise NotFound(f"{names.view} exists but is not a backup made by table-backup (a {view['type'] or 'table'} "
                       f"without {PROP_DATA}){there}")
    if version:
        raise NotFound(f"version {version} of the backup of {names.live} does not exist: no {names.view}{there}")
    raise NotFound(f"no backup {names.view}{there}")


def _target_state(spark: "SparkSession", names: RestoreNames, args: dict) -> dict | None:
    """The target's listing entry (None: free), refused here if it must not be replaced."""
    found = tables_like(spark, names.target.db, names.target.table.lower())
    entry = found.get(names.target.table.lower())
    if entry is None:
        return None
    if PROP_DATA in entry["properties"] or PROP_REJECTS_OF in entry["properties"]:
        raise InvalidInput(f"{names.target} is a table-backup object (it carries {PROP_DATA} or {PROP_REJECTS_OF}); "
                           f"a restore never replaces a backup. Nothing was written")
    if entry["type"] == "VIEW":
        raise InvalidInput(f"{names.target} is a view; a restore replaces tables only (drop the view or restore --into "
                           f"another name). Nothing was written")
    if not (args["replace"] or args["replace_live"]):
        raise AlreadyExists(f"{names.target} exists; pass --replace to replace it with the restored rows, or restore "
                            f"into a new name. Nothing was written")
    return entry


def check_phase(ctx: PhaseContext) -> dict:
    """The backup view, its data table and counts checked against what the backup run recorded; the target checked.

    Nothing is written.  Costs: a few catalog round trips and one aggregate over the data table's
    partition columns (file footers with parquet/ORC).
    """
    res, rec = ctx.res, ctx.rec
    cfg = res.settings.table_backup
    a = rec["args"]
    names = names_of(rec)
    with res.spark().session() as spark:
        found, target = concurrently(
            lambda: tables_like(spark, names.live.db, f"{names.live.table}{a['suffix']}*".lower()),
            lambda: _target_state(spark, names, a))
        view = _backup_view(found, names, a["suffix"], a["version"])
        reads = names.backup.data_tables_in(view["view_text"])
        if len(reads) > 1:
            raise FatalError(f"backup {names.view} reads several data tables ({', '.join(sorted(reads))}); "
                             f"restore one by hand")
        data_name = next(iter(reads)) if reads else view["properties"][PROP_DATA].lower()
        data = TableName(names.live.db, identifier(data_name, "data table name"))
        if data_name not in found:
            raise FatalError(f"backup {names.view} is damaged: the data table it reads, {data}, does not exist; "
                             f"nothing was restored")
        rows, parts, source, backup_job = _expected(spark, names, view, data)
        actual, schema = concurrently(lambda: partition_rows(spark, data), lambda: _schema(spark, data))
        total = sum(actual.values())
        problems = [] if rows < 0 or total == rows else [f"{total} rows, the backup run recorded {rows}"]
        if parts is not None:
            problems += _differences(parts, actual)
        if problems:
            job = f" (backup job {backup_job})" if backup_job else ""
            raise FatalError(f"backup {names.view}{job} is damaged: its data table {data} holds "
                             + _shown(problems) + "; nothing was restored")
        if parts is None:
            parts, rows = actual, total
        keep = a["keep_partition_columns"]
        fields = [f for f in schema if keep or f.name.lower() not in PARTITION_COLUMNS]
        if not keep and not any(f.name.lower() == cfg.partition_column.lower() for f in fields):
            raise ConfigError(f"table_backup.partition_column={cfg.partition_column!r} is not a column of {data}; "
                              f"the restored rows per partition cannot be counted")
        if a["replace_live"]:
            live_exists = target is not None
        else:
            with spark_errors(f"look up {names.live}"):
                live_exists = spark.catalog.tableExists(f"{names.live.db}.{names.live.table}")
        live_parts = _partition_columns(spark, names.live) if live_exists else []
        if a["replace_live"] and target is not None:
            live_fields = _schema(spark, names.live)
            mine = sorted((f.name.lower(), _type(f)) for f in fields)
            theirs = sorted((f.name.lower(), _type(f)) for f in live_fields)
            if mine != theirs:
                raise InvalidInput(
                    f"the columns of {names.live} ({', '.join(f'{n} {t}' for n, t in theirs)}) are not the backup's "
                    f"({', '.join(f'{n} {t}' for n, t in mine)}); restore --into a new table and move the rows by "
                    f"hand. Nothing was written")
        if keep:
            partitioned_by = list(PARTITION_COLUMNS)
        elif live_parts and all(any(f.name.lower() == p.lower() for f in fields) for p in live_parts):
            partitioned_by = live_parts
        elif a["replace_live"] and target is None:  # the live table is gone: the layout table-backup assumes
            partitioned_by = [f.name for f in fields if f.name.lower() == cfg.partition_column.lower()]
        else:
            partitioned_by = []
    checked = Checked(backup_table=str(names.view), data_table=str(data), backup_job_id=backup_job,
                      rows_expected=rows, partition_rows_expected=parts, expected_from=source,
                      columns=[[f.name, _type(f)] for f in fields], partitioned_by=partitioned_by,
                      like_live=bool(a["replace_live"] and target is not None), target_existed=target is not None)
    out = {**checked.as_outputs(), "version": a["version"], "target": str(names.target)}
    ctx.done(out)
    return {"job_id": ctx.job_id, "backup_table": checked.backup_table, "rows_expected": rows,
            "partitions_expected": len(parts)}


# -- load ----------------------------------------------------------------------------------------

def _marks(job_id: str, checked: Checked) -> str:
    """TBLPROPERTIES of the staging table (every value a checked identifier, job id or number: no quoting needed)."""
    return (f"'{PROP_RESTORE_JOB}'='{check_job_id(job_id)}', '{PROP_RESTORED_FROM}'='{checked.backup_table}:"
            f"{checked.data_table}'" + (f", '{PROP_RESTORED_BACKUP_JOB}'='{check_job_id(checked.backup_job_id)}'"
                                        if checked.backup_job_id else ""))


def create_staging(spark: "SparkSession", staging: TableName, names: RestoreNames, checked: Checked, fmt: str,
                   job_id: str) -> None:
    """The staging table ``staging``, empty, made as the target must be (kept if this job made it)."""
    props = properties_if_exists(spark, staging)
    if props is not None:
        if props.get(PROP_RESTORE_JOB) != job_id:
            raise FatalError(f"{staging} exists and was not made by this restore; drop it or restore again")
        return
    with spark_errors(f"create the staging table {staging}"):
        if checked.like_live:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {staging.sql} LIKE {names.live.sql} "
                      f"TBLPROPERTIES ({_marks(job_id, checked)})")
            return
        cols = ", ".join(f"`{identifier(n, 'column name')}` {t}" for n, t in checked.columns)
        parts = ", ".join(f"`{identifier(p, 'partition column')}`" for p in checked.partitioned_by)
        spark.sql(f"CREATE TABLE IF NOT EXISTS {staging.sql} ({cols}) USING {fmt}"
                  + (f" PARTITIONED BY ({parts})" if parts else "") + f" TBLPROPERTIES ({_marks(job_id, checked)})")


def restored_partition_rows(spark: "SparkSession", table: TableName, checked: Checked, cfg) -> dict[str, int]:
    """Rows per backup partition of the restored table: year_part/month_part if kept, else derived from the
    partition column exactly as table-backup derived them (``parse_date`` of its text, or its date)."""
    from pyspark.sql import functions as F

    names = [n.lower() for n, _ in checked.columns]
    if all(p in names for p in PARTITION_COLUMNS):
        return partition_rows(spark, table)
    name, kind = next((n, t) for n, t in checked.columns if n.lower() == cfg.partition_column.lower())
    value = F.col(f"`{name}`")
    pdate = parse_date(value, cfg.date_format) if kind == "string" else F.to_date(value)
    with spark_errors(f"count rows per partition of {table}"):
        rows = spark.table(table.sql).groupBy(F.year(pdate).alias("y"), F.month(pdate).alias("m")) \
            .agg(F.count(F.lit(1)).alias("n")).collect()
    return month_counts((r["y"], r["m"], r["n"]) for r in rows)


def load_phase(ctx: PhaseContext) -> dict:
    """The backup's rows into a staging table of this delivery's own, then counted per partition and compared
    with the expected counts; the record names that table.

    Cost: one read of the data table and one write (the restore itself), then one aggregate over
    the partition column of what was written.  Run again (a retry, a redelivery), it writes a new
    table: an earlier delivery's statement still running on the server never touches it (``backup.staging``).
    """
    from pyspark.sql import functions as F

    res, rec = ctx.res, ctx.rec
    cfg = res.settings.table_backup
    checked = Checked.read(rec)
    names = names_of(rec)
    staging = delivery_table(names.staging)
    data = TableName.parse(checked.data_table)
    with res.spark().session() as spark:
        create_staging(spark, staging, names, checked, cfg.format, ctx.job_id)
        try:
            with spark_errors(f"restore {data} into {staging}"):
                # Hive-format targets (a live table LIKE'd) take dynamic partitions only in nonstrict mode.
                spark.conf.set("hive.exec.dynamic.partition", "true")
                spark.conf.set("hive.exec.dynamic.partition.mode", "nonstrict")
                order = spark.table(staging.sql).columns  # insertInto is positional: the staging table's order
                spark.table(data.sql).select(*[F.col(f"`{c}`") for c in order]).write \
                    .option("partitionOverwriteMode", "static").insertInto(staging.sql, overwrite=True)
            counts = restored_partition_rows(spark, staging, checked, cfg)
            rows = sum(counts.values())
            problems = ([] if rows == checked.rows_expected else [f"{rows} rows, expected {checked.rows_expected}"]) \
                + _differences(checked.partition_rows_expected, counts)
            if problems:
                raise FatalError(f"the rows restored from {checked.data_table} into {staging} do not match the "
                                 f"backup ({checked.expected_from}): " + _shown(problems)
                                 + f"; {names.target} was not touched")
            restored = Restored(staging_table=str(staging), rows_restored=rows, partition_rows_restored=counts)
            ctx.done(restored.as_outputs())
        except LockLost:
            # Another run holds the lock now and this job may already be failed and cleaned up (a holder paused
            # past its lock's TTL, failed by the stall check meanwhile): nobody else will drop what this delivery
            # wrote, so it drops its own staging table (only one carrying this job's id) before giving up.
            if (properties_if_exists(spark, staging) or {}).get(PROP_RESTORE_JOB) == ctx.job_id:
                drop(spark, staging, "TABLE")
            raise
    return {"job_id": ctx.job_id, "rows_restored": rows, "partitions_restored": len(counts)}


# -- swap ----------------------------------------------------------------------------------------

def _rename(spark: "SparkSession", src: TableName, dst: TableName) -> None:
    with spark_errors(f"rename {src} to {dst}"):
        spark.sql(f"ALTER TABLE {src.sql} RENAME TO {dst.sql}")


def _states(spark: "SparkSession", names: RestoreNames) -> tuple[dict | None, dict | None, dict | None]:
    """Properties of (staging, target, replaced), None for a name that is free (``names.staging``: the table
    the load verified)."""
    staging, target, replaced = concurrently(lambda: properties_if_exists(spark, names.staging),
                                             lambda: properties_if_exists(spark, names.target),
                                             lambda: properties_if_exists(spark, names.replaced))
    return staging, target, replaced


def swap_phase(ctx: PhaseContext) -> dict:
    """Give the verified staging table the target's name, fenced by the lock; an existing target is moved aside first.

    Which renames are done is read from the catalog (a redelivery finds them done): staging and
    target both there → move the target aside, then rename the staging table; staging there,
    target free → rename it; staging gone and the target ours → done already.  The staging table is
    the one the load verified (its name is in the record); the job's others (a killed delivery's) are
    dropped once the target is ours.
    """
    res, rec = ctx.res, ctx.rec
    a = rec["args"]
    checked = Checked.read(rec)
    restored = Restored.read(rec)  # the load verified the staging table; a record without it must not swap
    base = names_of(rec)
    names = dataclasses.replace(base, staging=TableName.parse(restored.staging_table))
    window = None
    with res.spark().session() as spark:
        staging, target, replaced = _states(spark, names)
        if staging is None:
            if (target or {}).get(PROP_RESTORE_JOB) != ctx.job_id:
                raise FatalError(f"staging table {names.staging} is gone (dropped by hand?); {names.target} was left "
                                 f"as it was")
            note = "already swapped"
        else:
            if staging.get(PROP_RESTORE_JOB) != ctx.job_id:
                raise FatalError(f"{names.staging} was not made by this restore; {names.target} was left as it was")
            if target is not None:
                if not (a["replace"] or a["replace_live"]):
                    raise AlreadyExists(f"{names.target} appeared after the check; nothing replaced (restore again "
                                        f"with --replace to replace it)")
                if replaced is not None:
                    raise FatalError(f"{names.replaced} exists already; {names.target} was left as it was")
                window = _move_aside_and_swap(ctx, spark, names)
            else:  # a free target (or a delivery that stopped between the two renames: the old table is aside)
                ctx.commit_check()
                _rename(spark, names.staging, names.target)
            note = None
        replaced_now = properties_if_exists(spark, names.replaced) is not None
        if a["replace"] and replaced_now:  # the operator asked to replace a table of theirs: it goes
            ctx.commit_check()
            drop(spark, names.replaced, "TABLE")
        others = drop_job_staging_tables(spark, base.staging, PROP_RESTORE_JOB, ctx.job_id)
        if others:
            log.warning("restore %s: dropped staging tables of earlier deliveries of its load: %s", ctx.job_id,
                        ", ".join(others))
    had = checked.target_existed
    swapped = Swapped(restored_table=str(names.target), replaced_table=str(names.replaced) if had else None,
                      replaced_table_kept=bool(had and a["replace_live"]),
                      unavailable_seconds=round(window, 3) if window is not None else
                      rec["outputs"].get("unavailable_seconds"))
    ctx.done(swapped.as_outputs(), note=note)
    return {"job_id": ctx.job_id, "restored_table": str(names.target), "unavailable_seconds": swapped.unavailable_seconds}


def _move_aside_and_swap(ctx: PhaseContext, spark: "SparkSession", names: RestoreNames) -> float:
    """Target → replaced, then staging → target, back to back; the seconds the target's name resolved to nothing.

    The fence is checked before the first rename, not between the two: a refusal there would
    leave the name empty.  If the second rename fails, the first is undone here (else by the
    failure cleanup, ``undo_unswapped``).
    """
    ctx.commit_check()
    _rename(spark, names.target, names.replaced)
    started = time.monotonic()
    try:
        _rename(spark, names.staging, names.target)
    except BackupError as e:
        try:
            _rename(spark, names.replaced, names.target)
        except BackupError:
            log.error("restore %s: %s is missing, its rows are in %s (ALTER TABLE %s RENAME TO %s)", ctx.job_id,
                      names.target, names.replaced, names.replaced, names.target)
            raise FatalError(f"the swap stopped between its renames and could not undo the first: {names.target} is "
                             f"missing, its rows are in {names.replaced} (the failure cleanup renames it back): "
                             f"{e.one_line()}") from e
        raise
    return time.monotonic() - started


def discard_restore(res: Resources, rec: dict) -> None:
    """After a final failure: put back a target the swap moved aside, drop this restore's staging table."""
    if rec.get("workflow") != WORKFLOW or phase_entry(rec, "load")["state"] == "pending":
        return
    res.spark().run(undo_unswapped, res, rec)


def undo_unswapped(res: Resources, rec: dict) -> None:
    """What a failed restore leaves, undone: its staging tables dropped (those carrying this job's id), and a
    target the swap moved aside renamed back while its name is free."""
    names = names_of(rec)
    with res.spark().session() as spark:
        target, replaced = concurrently(lambda: properties_if_exists(spark, names.target),
                                        lambda: properties_if_exists(spark, names.replaced))
        if target is None and replaced is not None:
            _rename(spark, names.replaced, names.target)
            log.warning("restore %s failed mid-swap: %s renamed back to %s", rec["job_id"], names.replaced, names.target)
        dropped = drop_job_staging_tables(spark, names.staging, PROP_RESTORE_JOB, rec["job_id"])
        if dropped:
            log.info("dropped staging tables %s of failed restore %s", ", ".join(dropped), rec["job_id"])


# -- finish --------------------------------------------------------------------------------------

def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    out = rec["outputs"]
    return {"job_id": ctx.job_id, "state": rec["state"], "restored_table": out.get("restored_table"),
            "rows_restored": out.get("rows_restored"), "backup_table": out.get("backup_table")}


DEFINITION = Workflow(
    name=WORKFLOW,
    summary="a table-backup (its view or a dated version) restored into a new table or over the live one, "
            "row counts per partition verified",
    phases=(Phase("lock", lock_phase, queue="spark"), Phase("check", check_phase, queue="spark", spark=True),
            Phase("load", load_phase, queue="spark", spark=True), Phase("swap", swap_phase, queue="spark", spark=True),
            Phase("finish", finish_phase, queue="spark")),
    submit=submit,
    validate=validate_request,
    failure_cleanup=discard_restore,
    options=(Option("--into", "into", "restore into this new table, DB.NEW_TABLE"),
             Option("--replace", "replace", "--into: replace the table if it exists", flag_only=True),
             Option("--replace-live", "replace_live", "replace the live table DB.TABLE itself (atomically; the "
                    "table it was is kept as DB.TABLE__replaced_<tag>)", flag_only=True),
             Option("--version", "version", "a versioned backup's date, YYYYMMDD (default: the plain backup view)"),
             Option("--keep-partition-columns", "keep_partition_columns",
                    f"keep {' and '.join(PARTITION_COLUMNS)} (partitioned by them)", flag_only=True),
             Option("--suffix", "suffix", "backup name is DB.TABLE<suffix> (default from config, _bkp)")),
    target_help="DB.TABLE",
    verb="restore",
    cli_name="table-backup",
)

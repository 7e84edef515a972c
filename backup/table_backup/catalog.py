"""Catalog operations of the table-backup workflow: the live schema, what exists under the backup name,
the rejects table, the staging table, the view switch and the expiry of old versions.

Each function is one or a few metastore round trips on a Spark session (``spark.sql`` or a
catalog listing), never a scan of the data, except ``count_rows`` and ``write_rejects``.
Only tables carrying this workflow's properties (``PROP_*``) are ever replaced or dropped.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from base.errors import AlreadyExists, FatalError, InvalidInput
from base.identifiers import TableName, identifier
from backup.table_backup.columns import FILE, LINE, PARTITION_COLUMNS, REASON, ROW_DATE
from backup.table_backup.names import Names, check_job_id, data_table_regex
from backup.table_backup.outputs import CatalogState
from config.settings import TableBackupSettings
from connectors.spark import concurrently, drop, properties_if_exists, spark_errors, tables_like

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

REJECT_COLUMNS = ("line", "reason", "source_file", "job_id")
# Table properties marking what this workflow manages; nothing without them is ever replaced or dropped.
PROP_DATA = "mediation_backup.data_table"
PROP_JOB = "mediation_backup.job_id"
PROP_ROWS = "mediation_backup.rows"
PROP_REJECTS_OF = "mediation_backup.rejects_of"
# Lines the rejects table holds, set after each change ('unknown' while one is under way): an empty table is left alone.
PROP_REJECTS_ROWS = "mediation_backup.rejects_rows"
# Rows per partition of a data table, "YYYY-MM:rows,..." (``format_partition_rows``), set on the data table itself by
# the write phase with PROP_ROWS and PROP_JOB: the counts travel with the rows they count, whichever view reads them
# (a view rolled back by hand onto an older generation still finds that generation's own counts).  A restore checks
# what it restored against them.  Data tables written before these were recorded carry none.
PROP_PARTITION_ROWS = "mediation_backup.partition_rows"
_PARTITION_ROWS = re.compile(r"(\d{4}-\d{2}):(\d+)")


def live_schema(spark: "SparkSession", live: TableName, cfg: TableBackupSettings) -> "StructType":
    """The live table's schema from the catalog (works on an empty table); InvalidInput if CSV cannot fill it."""
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType

    with spark_errors(f"read the schema of {live}"):
        schema = spark.table(live.sql).schema
    names = [f.name.lower() for f in schema]
    for f in schema:
        identifier(f.name, f"column name of {live}")
        if isinstance(f.dataType, (ArrayType, MapType, StructType, BinaryType)):
            raise InvalidInput(f"{live}: column {f.name} has type {f.dataType.simpleString()}, "
                               f"which a CSV field cannot carry")
    if cfg.partition_column.lower() not in names:
        raise InvalidInput(f"{live} has no column {cfg.partition_column} (table_backup.partition_column)")
    clash = [c for c in PARTITION_COLUMNS if c in names]
    if clash:
        raise InvalidInput(f"{live} already has column(s) {', '.join(clash)}; the backup adds them")
    if ROW_DATE in names:
        raise InvalidInput(f"{live} has a column named {ROW_DATE}, the name table-backup uses for the parsed date")
    return schema


def catalog_state(spark: "SparkSession", names: Names) -> CatalogState:
    """What the catalog holds under the backup name: the data table its view reads, every other data
    table, and how many lines the rejects table holds (all from one listing).

    A data table the view's SQL or its property names is never stale: dropping it would empty the backup.

    AlreadyExists unless the backup and rejects names are free or already managed by this workflow.
    """
    found = tables_like(spark, names.live.db, f"{names.backup.table.lower()}*")
    backup, rejects = found.get(names.backup.table.lower()), found.get(names.rejects.table.lower())
    if backup is not None and PROP_DATA not in backup["properties"]:
        raise AlreadyExists(
            f"{names.backup} exists as a {backup['type'] or 'table'} not made by table-backup (a legacy "
            f"backup?); rename it, e.g. ALTER TABLE {names.backup} RENAME TO {names.backup}_legacy, then run again")
    if rejects is not None and PROP_REJECTS_OF not in rejects["properties"]:
        raise AlreadyExists(f"{names.rejects} exists and was not made by table-backup; rename or drop it first")
    recorded = backup["properties"][PROP_DATA] if backup else None
    # What the view's SQL reads, which the property does not follow after an ALTER VIEW by hand (a rollback).
    reads = names.data_tables_in(backup["view_text"]) if backup else set()
    current = next(iter(reads)) if len(reads) == 1 else recorded
    # Kept: every data table the view's listing names anywhere (its SQL, comments in it, the property),
    # so that a view text the parser cut short still keeps what it reads.
    in_use = names.data_tables_in(backup["information"]) if backup else set()
    pattern, ours = names.data_pattern(), names.data.table.lower()
    return CatalogState(
        previous_data_table=current, backup_reads=sorted(in_use),
        stale_data_tables=sorted(t for t in found if pattern.fullmatch(t) and t not in in_use and t != ours),
        previous_rejects=None if rejects is None else rejects["properties"].get(PROP_REJECTS_ROWS, "unknown"))


def partitions(spark: "SparkSession", table: TableName) -> list[str] | None:
    """The table's partitions as YYYY-MM, sorted; None if one is not a year and month (the NULL partition)."""
    with spark_errors(f"list partitions of {table}"):
        rows = spark.sql(f"SHOW PARTITIONS {table.sql}").collect()
    months = []
    for r in rows:
        spec = dict(kv.split("=", 1) for kv in r[0].split("/"))
        year, month = spec.get("year_part", ""), spec.get("month_part", "")
        if not (year.isdigit() and month.isdigit()):  # __HIVE_DEFAULT_PARTITION__: rows without a date
            return None
        months.append(f"{int(year):04d}-{int(month):02d}")
    return sorted(months)


def partition_rows(spark: "SparkSession", table: TableName) -> dict[str, int]:
    """Rows per partition of a data table, ``{"YYYY-MM": rows}`` (``"NULL"`` for rows without a year or month).

    One aggregate over the partition columns only: with parquet or ORC Spark reads the row
    counts from the files' footers and the values from the folder names, never a data column.
    """
    from pyspark.sql import functions as F

    with spark_errors(f"count rows per partition of {table}"):
        rows = spark.table(table.sql).groupBy(*PARTITION_COLUMNS).agg(F.count(F.lit(1)).alias("n")).collect()
    return month_counts((r[0], r[1], r["n"]) for r in rows)


def month_counts(rows) -> dict[str, int]:
    """``{"YYYY-MM": n}`` from (year, month, n) triples, sorted; a missing year or month counts under ``"NULL"``."""
    out: dict[str, int] = {}
    for year, month, n in rows:
        key = f"{int(year):04d}-{int(month):02d}" if year is not None and month is not None else "NULL"
        out[key] = out.get(key, 0) + int(n)
    return dict(sorted(out.items()))


def format_partition_rows(counts: dict[str, int]) -> str:
    """The value of PROP_PARTITION_ROWS: ``2025-09:140,2025-10:155`` (no quote, space or ``=``: safe in a
    TBLPROPERTIES literal and in SHOW TABLE EXTENDED's listing)."""
    bad = [k for k in counts if not re.fullmatch(r"\d{4}-\d{2}", k)]
    if bad:
        raise FatalError(f"partitions {bad} are not YYYY-MM; a backup holds dated rows only")
    return ",".join(f"{k}:{int(v)}" for k, v in sorted(counts.items()))


def parse_partition_rows(text: str) -> dict[str, int] | None:
    """PROP_PARTITION_ROWS read back; None if it is not what ``format_partition_rows`` writes (a damaged property)."""
    if text == "":
        return {}
    pairs = [_PARTITION_ROWS.fullmatch(p) for p in text.split(",")]
    if not all(pairs):
        return None
    return dict(sorted((m.group(1), int(m.group(2))) for m in pairs))


def record_counts(spark: "SparkSession", table: TableName, job_id: str, rows: int, counts: dict[str, int]) -> None:
    """Set PROP_JOB, PROP_ROWS and PROP_PARTITION_ROWS on a data table (one metastore operation)."""
    with spark_errors(f"record the row counts of {table}"):
        spark.sql(f"ALTER TABLE {table.sql} SET TBLPROPERTIES ('{PROP_JOB}'='{check_job_id(job_id)}', "
                  f"'{PROP_ROWS}'='{int(rows)}', '{PROP_PARTITION_ROWS}'='{format_partition_rows(counts)}')")


def count_rows(spark: "SparkSession", table: TableName) -> int:
    with spark_errors(f"count rows of {table}"):
        return spark.table(table.sql).count()


def set_rejects_rows(spark: "SparkSession", names: Names, rows: int | str) -> None:
    """Record how many lines the rejects table holds ('unknown' before a change)."""
    with spark_errors(f"update the properties of {names.rejects}"):
        spark.sql(f"ALTER TABLE {names.rejects.sql} SET TBLPROPERTIES ('{PROP_REJECTS_ROWS}'='{rows}')")


def clear_rejects(spark: "SparkSession", names: Names, cfg: TableBackupSettings, previous: str | None) -> None:
    """The rejects table of this backup name, created if missing, emptied of the previous run's lines.

    ``previous`` is what the catalog listing said of it: None (no table), '0' (empty: nothing to
    do), or a count or 'unknown' (an interrupted write), both emptied.
    """
    if previous == "0":
        return
    cols = ", ".join(f"`{c}` STRING" for c in REJECT_COLUMNS)
    with spark_errors(f"create or empty the rejects table {names.rejects}"):
        if previous is None:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {names.rejects.sql} ({cols}) USING {cfg.format} "
                      f"TBLPROPERTIES ('{PROP_REJECTS_OF}'='{names.backup.table.lower()}', '{PROP_REJECTS_ROWS}'='0')")
            return
        spark.sql(f"TRUNCATE TABLE {names.rejects.sql}")
    set_rejects_rows(spark, names, 0)


def write_rejects(spark: "SparkSession", names: Names, rejected: "DataFrame", job_id: str) -> None:
    """Replace the rejects table's content with this run's rejected lines (then ``set_rejects_rows``)."""
    from pyspark.sql import functions as F

    set_rejects_rows(spark, names, "unknown")
    with spark_errors(f"write rejects to {names.rejects}"):
        rejected.select(F.col(LINE).alias("line"), F.col(REASON).alias("reason"), F.col(FILE).alias("source_file"),
                        F.lit(job_id).alias("job_id")).write.insertInto(names.rejects.sql, overwrite=True)


def drop_staging(spark: "SparkSession", names: Names) -> None:
    """Drop this run's data table with its folder (and whatever a failed write left in it)."""
    drop(spark, names.data, "TABLE")


def backup_target(spark: "SparkSession", names: Names) -> str | None:
    """The data table the backup view reads (lower case): the one its SQL names (the property only if the
    SQL names none or several, as ``catalog_state``), or None if there is no backup yet."""
    backup = tables_like(spark, names.live.db, names.backup.table.lower()).get(names.backup.table.lower())
    if backup is None:
        return None
    reads = names.data_tables_in(backup["view_text"])
    return next(iter(reads)) if len(reads) == 1 else backup["properties"].get(PROP_DATA)


def swap_view(spark: "SparkSession", names: Names, columns: list[str], rows: int, job_id: str) -> None:
    """Point the backup view at this run's data table, atomically for readers.

    An existing view is switched with ``ALTER VIEW ... AS``: one ``alter_table`` in the metastore,
    so every reader resolves the old or the new data table.  (Spark's ``CREATE OR REPLACE VIEW`` of
    an existing view is a ``drop_table`` then a ``create_table``: a reader in between finds no
    backup at all, 6 s on a loaded machine in the fault campaign.)  The view's properties follow in
    a second statement; until then they still name the previous data table, which is why
    ``catalog_state`` and ``backup_target`` go by what the view's SQL reads, and a crash between the
    two loses nothing.  The first backup of a table is created with its properties in one statement.
    """
    cols = ", ".join(f"`{identifier(c, 'column name')}`" for c in columns)
    props = (f"'{PROP_DATA}'='{names.data.table.lower()}', '{PROP_JOB}'='{job_id}', "
             f"'{PROP_ROWS}'='{int(rows)}'")
    select = f"SELECT {cols} FROM {names.data.sql}"
    with spark_errors(f"switch {names.backup} to {names.data}"):
        if properties_if_exists(spark, names.backup) is None:
            spark.sql(f"CREATE VIEW {names.backup.sql} TBLPROPERTIES ({props}) AS {select}")
        else:
            spark.sql(f"ALTER VIEW {names.backup.sql} AS {select}")
            spark.sql(f"ALTER VIEW {names.backup.sql} SET TBLPROPERTIES ({props})")


def versions_beyond(spark: "SparkSession", names: Names, suffix: str, keep: int) -> dict[str, list[str]]:
    """Versioned mode: the backups beyond the newest ``keep`` (the current one always survives), each with
    the tables that go with it (its data tables, its rejects table): ``{view name: [table names]}``.

    Only views this workflow made and tables it names; read-only (``expire_versions`` drops them,
    ``plan`` lists them).
    """
    base = names.live.table.lower() + suffix.lower()
    version = re.compile(rf"{re.escape(base)}_(\d{{8}})")
    current = names.backup.table.lower()
    found = tables_like(spark, names.live.db, f"{base}_*")
    versions = sorted((t for t, info in found.items() if version.fullmatch(t) and PROP_DATA in info["properties"]),
                      key=lambda v: (v == current, v), reverse=True)
    out = {}
    for name in versions[keep:]:
        data = re.compile(data_table_regex(name))
        rejects = found.get(f"{name}_rejects")
        out[name] = [t for t in found if data.fullmatch(t)] + \
            ([f"{name}_rejects"] if rejects and PROP_REJECTS_OF in rejects["properties"] else [])
    return out


def expire_versions(spark: "SparkSession", names: Names, suffix: str, keep: int) -> list[str]:
    """Versioned mode: drop the oldest backups of the table beyond ``keep`` (view, data tables and rejects)."""
    db = names.live.db
    expired = []
    for name, ours in versions_beyond(spark, names, suffix, keep).items():
        drop(spark, TableName(db, name), "VIEW")
        concurrently(*[lambda t=t: drop(spark, TableName(db, t), "TABLE") for t in ours])
        expired.append(f"{db}.{name}")
    return sorted(expired)

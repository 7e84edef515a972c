"""The ``table-backup`` workflow: ``;``-CSV files → validated, reject-aware backup of a table, swapped in atomically.

Phases (one Celery task each, chained, on the ``spark`` queue): lock → validate → load → write → finish.
Every function here takes a phase context and returns small JSON; none needs a worker.

Names, for the live table ``db.t`` and the default suffix ``_bkp``:

  db.t_bkp              the backup readers use: a VIEW over the current data table
                        (versioned mode: db.t_bkp_<YYYYMMDD>, one per day, ``retention`` kept)
  db.t_bkp__<job tag>   one run's rows, partitioned by year_part, month_part; the staging
                        table until the view is switched onto it
  db.t_bkp_rejects      the latest run's rejected lines: line, reason, source_file, job_id

* validate reads the live schema from the catalog (an empty live table works) and parses a
  sample of the files with it: drift (another field count, most lines failing) stops the
  run before anything is written.  One catalog listing tells whether the names are free or
  ours, which data table the backup reads, which older ones are left, and whether the
  rejects table holds lines.
* load reads the files once with Spark's typed CSV reader in FAILFAST mode into this run's
  data table (the staging table), with year_part and month_part, then reads its rows and
  partitions back.  A malformed record that stopped the read, or a line without a valid
  partition date (it lands in a NULL partition), sends it to ``explained_lines``, which lists
  each rejected line with its reason in the rejects table, then to a read that leaves them
  out; above ``max_reject_ratio`` the job fails and the staging table is dropped.
  Generations older than the one the backup reads are dropped beside the write.
* write switches the backup onto the staging table with ``ALTER VIEW ... AS``, one
  metastore operation: readers see the previous backup or the new one, never a missing or
  half-written one (Spark's ``CREATE OR REPLACE VIEW`` drops and re-creates: not used on an
  existing view).  The replaced data table stays as the previous generation until the
  next run, so a query that started on it finishes on it.

Spark state never crosses a phase (the next phase may run in another worker), so a
phase re-reads what it needs from the catalog and the job record.

This module holds the phases, in run order (spark-submit drivers import them from here by
name: they must stay module-level functions of ``backup.table_backup``); beside it:
  names     the run's catalog names and the request checks (no Spark)
  columns   Spark column expressions: the CSV read, the date checks, the reasons of rejects
  catalog   catalog operations: live schema, listing, rejects and staging tables, view switch, expiry
  outputs   what a phase hands to later phases through the job record
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from base.errors import (BackupError, FatalError, InvalidInput, LockLost, NotFound, RejectsExceeded, SchemaDrift,
                         SourceChanged, causes)
from base.identifiers import TableName, identifier
from backup.jobs import phase_entry
from backup.enqueue import fail_request
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from backup.workflow import Option, Phase, Workflow
from backup.table_backup.catalog import (backup_target, catalog_state, clear_rejects, count_rows, drop_staging,
                                         expire_versions, live_schema, partition_rows, partitions, record_counts,
                                         set_rejects_rows, swap_view, write_rejects)
from backup.table_backup.columns import (KIND, OK, PARTITION_COLUMNS, REASON, accepted_rows, explained_lines,
                                         sample_verdicts)
from backup.table_backup.names import Names, check_job_id, names_of, run_names, validate_request
from backup.table_backup.outputs import Loaded, Staged, Validated, Written
from config.settings import TableBackupSettings
from connectors.spark import concurrently, drop, spark_errors, table_kind

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

# Named by the Celery tasks, the CLI and the spark-submit drivers from the package root.
__all__ = ["WORKFLOW", "DEFINITION", "submit", "validate_request", "lock_phase", "validate_phase",
           "load_phase", "write_phase", "finish_phase", "discard_staging", "drop_unswitched_staging", "plan",
           "plan_catalog"]

WORKFLOW = "table-backup"


def submit(res: Resources, table: str, source: str, suffix: str | None = None, versioned=False, retention=None,
           day: str | None = None, job_id: str | None = None) -> dict:
    """Validate and create the job record; a bad request is recorded as failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    raw = {"table": table, "source": source, "suffix": suffix, "versioned": versioned, "retention": retention,
           "day": day}
    try:
        check_job_id(job_id)
        args = validate_request(res, table, source, suffix, versioned, retention, day, job_id)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, str(table), raw, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, args["table"], args, DEFINITION.phase_names)


# -- lock ----------------------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the (table-backup, table) lock or end the job as skipped, naming the holder."""
    return take_lock(ctx, WORKFLOW)


# -- validate ------------------------------------------------------------------------------------

def drift_error(source: str, live: TableName, schema: "StructType", sampled: int, groups: list[dict]) -> SchemaDrift:
    """The message of a drift: what the table expects, what the sample holds."""
    bad = sum(g["n"] for g in groups)
    cols = ", ".join(f"{f.name} {f.dataType.simpleString().upper()}" for f in schema.fields[:12])
    if len(schema.fields) > 12:
        cols += ", ..."
    found = "; ".join(f"{g['example']} ({g['n']} lines)" for g in sorted(groups, key=lambda g: -g["n"])[:3])
    return SchemaDrift(f"files under {source} do not match {live}: {bad} of {sampled} sampled lines fail to parse. "
                       f"Expected {len(schema.fields)} fields: {cols}. Found: {found}")


def validate_phase(ctx: PhaseContext) -> dict:
    """Names free, live schema from the catalog, a parsed sample of the files: drift fails here, before any write."""
    res, rec = ctx.res, ctx.rec
    cfg = res.settings.table_backup
    names = names_of(rec)
    source = rec["args"]["source"]

    def sample_files():
        schema = live_schema(spark, names.live, cfg)
        with spark_errors(f"sample the files under {source}"):
            return schema, [r[OK] for r in sample_verdicts(spark, source, schema, cfg, cfg.drift_sample_rows).collect()]

    with res.spark().session() as spark:
        # Independent round trips, side by side; the live table's own problems are reported first.
        (schema, verdicts), catalog = concurrently(sample_files, lambda: catalog_state(spark, names))
        sampled, rejected = len(verdicts), verdicts.count(False)
        if sampled == 0:
            raise InvalidInput(f"no data lines in the files under {source}; refusing to replace the backup with nothing")
        if rejected / sampled > cfg.drift_ratio:
            sample = explained_lines(spark, source, schema, cfg, limit=cfg.drift_sample_rows)
            with spark_errors(f"explain the sample of the files under {source}"):
                rows = sample.select(KIND, REASON).collect()  # a few thousand rows at most: no shuffle
            by_kind: dict[str, dict] = {}
            for r in rows:
                if r[KIND] is not None:
                    by_kind.setdefault(r[KIND], {"kind": r[KIND], "n": 0, "example": r[REASON]})["n"] += 1
            raise drift_error(source, names.live, schema, len(rows), list(by_kind.values()))
    validated = Validated(live_schema=schema.json(), **catalog.as_outputs())
    out = {"columns": len(schema.fields), "sampled_lines": sampled, "sample_rejected": rejected,
           "backup_table": str(names.backup), "rejects_table": str(names.rejects), **validated.as_outputs()}
    ctx.done(out)
    return {"job_id": ctx.job_id, **{k: v for k, v in out.items() if k != "live_schema"}}


# -- load ----------------------------------------------------------------------------------------

def stopped_at_malformed_record(error: BaseException) -> bool:
    """Whether Spark's FAILFAST CSV reader stopped the query at a record it could not parse."""
    # The marker is in the Spark error, the cause of ours.
    return any("MALFORMED_RECORD_IN_PARSING" in str(e) or "MALFORMED_CSV_RECORD" in str(e) for e in causes(error))


@dataclass
class Load:
    """One load of a run's files into its staging table, with the Spark session it runs on."""

    spark: "SparkSession"
    names: Names
    source: str
    schema: "StructType"
    cfg: TableBackupSettings
    job_id: str

    def create_staging(self) -> None:
        """This run's data table, empty, partitioned by year_part and month_part (kept if a delivery made it already).

        Made before the write, not by it: a write that fails (FAILFAST stops at a malformed record
        while other tasks still run) can leave files in the table's folder; with the table there,
        the next write overwrites them and DROP TABLE removes them, where a CREATE TABLE AS SELECT
        would refuse the folder (LOCATION_ALREADY_EXISTS).
        """
        cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in self.schema)
        with spark_errors(f"create the staging table {self.names.data}"):
            self.spark.sql(f"CREATE TABLE IF NOT EXISTS {self.names.data.sql} ({cols}, `{PARTITION_COLUMNS[0]}` INT, "
                           f"`{PARTITION_COLUMNS[1]}` INT) USING {self.cfg.format} "
                           f"PARTITIONED BY ({', '.join(PARTITION_COLUMNS)})")

    def write_staging(self, strict: bool) -> None:
        """The accepted rows (``accepted_rows``, strict or exact) replace the staging table's content."""
        with spark_errors(f"load {self.source} into {self.names.data}"):
            # static: the whole table is replaced, whatever an earlier delivery or a failed write left in it.
            accepted_rows(self.spark, self.source, self.schema, self.cfg, strict).write \
                .option("partitionOverwriteMode", "static").insertInto(self.names.data.sql, overwrite=True)

    def strict_write(self) -> FatalError | None:
        """The staging table, then the strict write into it; the malformed-record error that write stopped
        with, if any (any other error drops the staging table and is raised as it is)."""
        self.create_staging()
        try:
            self.write_staging(strict=True)
        except FatalError as e:
            if not stopped_at_malformed_record(e):
                drop_staging(self.spark, self.names)
                raise
            return e
        return None

    def staged(self) -> tuple[int, list[str] | None]:
        """Rows and months (YYYY-MM; None with a NULL partition) of the staging table, read back."""
        rows, months = concurrently(lambda: count_rows(self.spark, self.names.data),
                                    lambda: partitions(self.spark, self.names.data))
        return rows, months

    def drop_stale(self, stale: list[str]) -> list[str]:
        """Drop generations before the one the backup reads and tables of failed runs (the lock keeps other runs out)."""
        tables = [TableName(self.names.live.db, identifier(t, "data table name")) for t in stale]
        concurrently(*[lambda t=t: drop(self.spark, t, "TABLE") for t in tables])
        return [str(t) for t in tables]

    def explain(self) -> tuple[int, int, int]:
        """Every rejected line with its reason into the rejects table; (lines read, rejected, malformed)."""
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        counted = Observation("table_backup_rejects")
        lines = explained_lines(self.spark, self.source, self.schema, self.cfg, with_file=True, seen=counted)
        write_rejects(self.spark, self.names, lines.filter(~F.col(OK)), self.job_id)
        got = counted.get
        set_rejects_rows(self.spark, self.names, int(got["rejected"]))
        return int(got["read"]), int(got["rejected"]), int(got["malformed"])

    def changed(self, detail: str) -> SourceChanged:
        """The error of files that changed between two reads; the staging table is dropped first."""
        drop_staging(self.spark, self.names)
        return SourceChanged(f"the files under {self.source} changed during the load: {detail}; nothing replaced")


def load_phase(ctx: PhaseContext) -> dict:
    """The load (``_load``); refused at a fenced step (``LockLost``), it drops this job's staging table itself (unless
    the backup reads it) before giving up.  Another run holds the lock then, and this job may already be failed and
    cleaned up: a holder paused past its lock's TTL has its job failed by the stall check (the failure cleanup ran
    while it slept, before the table existed), and, woken, writes its staging table until its commit is refused;
    nobody else would drop that table.  (The write phase needs no such care: its staging table exists before it
    starts, so the failure cleanup drops it, or the backup reads it.)"""
    try:
        return _load(ctx)
    except LockLost:
        try:
            drop_unswitched_staging(ctx.res, ctx.rec)
        except BackupError as e:
            log.error("job %s lost its lock and could not drop its staging table %s: %s (the next run's load drops "
                      "it)", ctx.job_id, names_of(ctx.rec).data, e.one_line())
        raise


def _load(ctx: PhaseContext) -> dict:
    """Accepted rows into this run's staging table; every other data line, with its reason, into the rejects table.

    The usual case reads the files once: the strict ``accepted_rows`` (FAILFAST, no filter)
    writes the staging table and its rows and partitions are read back; without a NULL
    partition every data line is a row with a valid date.  A malformed record stops that read,
    and a line without a valid date lands in a NULL partition; either sends the load to the
    exact path: ``explained_lines`` lists every rejected line with its reason (a ratio they
    exceed fails the job before the rows are written again), then the rows are read with
    DROPMALFORMED and the date filter, and their count must be the lines ``explained_lines``
    accepted, or the files changed during the load (SourceChanged, retryable, nothing replaced).
    """
    from pyspark.sql.types import StructType

    res, rec = ctx.res, ctx.rec
    cfg = res.settings.table_backup
    names = names_of(rec)
    source = rec["args"]["source"]
    validated, earlier = Validated.read(rec), Loaded.find(rec)
    again = phase_entry(rec, "load")["deliveries"] > 1  # a retry or a redelivery
    with res.spark().session() as spark:
        if again and earlier is not None and table_kind(spark, names.data) \
                and count_rows(spark, names.data) == earlier.rows_accepted:
            ctx.done(note="already loaded")
            return {"job_id": ctx.job_id, "note": "already loaded", **_load_summary(earlier, Staged.find(rec))}
        schema_json = validated.live_schema
        if schema_json is None:  # validated by an earlier version of this workflow
            schema_json = live_schema(spark, names.live, cfg).json()
        catalog = validated.catalog()
        if again or catalog is None:
            # What validate saw may be stale: an earlier attempt wrote rejects, or this run's switch happened.
            catalog = catalog_state(spark, names)
        if names.data.table.lower() in catalog.backup_reads:
            raise FatalError(f"{names.backup} already reads {names.data}, this job's data table; a load never "
                             f"rewrites the table a backup reads (see the job record's write phase)")
        # The schema validate checked the sample with (and the live table's own checks passed on).
        schema = StructType.fromJson(json.loads(schema_json))
        load = Load(spark, names, source, schema, cfg, ctx.job_id)
        ctx.commit_check()  # the rejects table and older generations are shared with the run that may hold the lock now
        strict_error, _, dropped = concurrently(
            load.strict_write, lambda: clear_rejects(spark, names, cfg, catalog.previous_rejects),
            lambda: load.drop_stale(catalog.stale_data_tables))
        months = None
        if strict_error is None:
            staged, months = load.staged()
        if months is not None:  # the usual case, one read: every data line is a row with a valid date
            read, rejected = staged, 0
        else:  # a malformed record stopped the read, or a row has no valid date: rejects first, then the rows
            read, rejected, malformed = load.explain()
            if strict_error is not None and not malformed:  # a malformed record stopped the read, then none found
                raise load.changed("a malformed record stopped the first read, the second found none")
            if strict_error is None and not rejected:
                raise load.changed("a row without a valid date was written, then every date was valid")
        loaded = Loaded(rows_read=read, rows_accepted=read - rejected, rows_rejected=rejected,
                        data_table=str(names.data), rejects_table=str(names.rejects),
                        previous_data_table=catalog.previous_data_table,
                        columns=[f.name for f in schema] + list(PARTITION_COLUMNS), dropped_tables=dropped)
        stats = loaded.as_outputs()
        if read == 0:
            drop_staging(spark, names)
            raise InvalidInput(f"no data lines in the files under {source}; refusing to replace the backup with nothing")
        if rejected / read > cfg.max_reject_ratio:
            drop_staging(spark, names)
            with spark_errors(f"read examples from {names.rejects}"):
                examples = [r["reason"] for r in spark.table(names.rejects.sql).select("reason").limit(3).collect()]
            res.jobs.update(ctx.job_id, lambda r: r["outputs"].update(stats), fence=ctx.held)
            raise RejectsExceeded(
                f"{rejected} of {read} lines rejected ({rejected / read:.2%}), above table_backup.max_reject_ratio="
                f"{cfg.max_reject_ratio}; nothing replaced. Rejected lines and reasons in {names.rejects}, e.g. "
                + "; ".join(examples))
        if months is None:  # rejects within the ratio: the rows without them, every date checked exactly
            load.write_staging(strict=False)
            staged, months = load.staged()
            if staged != read - rejected or months is None:
                raise load.changed(f"{read - rejected} lines accepted, then {staged} rows loaded")
    staged_parts = Staged(partitions_written=len(months), months=months)
    ctx.done({**stats, **staged_parts.as_outputs()})
    return {"job_id": ctx.job_id, **_load_summary(loaded, staged_parts)}


def _load_summary(loaded: Loaded | None, staged: Staged | None) -> dict:
    """The load's counts for a task's answer (None for what the record lacks)."""
    return {"rows_read": loaded.rows_read if loaded else None,
            "rows_accepted": loaded.rows_accepted if loaded else None,
            "rows_rejected": loaded.rows_rejected if loaded else None,
            "partitions_written": staged.partitions_written if staged else None}


# -- write ---------------------------------------------------------------------------------------

def write_phase(ctx: PhaseContext) -> dict:
    """Switch the backup onto this run's staging table, fenced by the lock.

    The staging table's rows and partitions were read back and checked at the end of the load;
    its rows per partition are counted once more (partition columns only: file footers) and
    recorded on it (``record_counts``: job, rows, rows per partition), what a restore checks
    its result against.
    The data table the backup read until now stays as the previous generation, so that a
    query that started on it finishes on it; the next run's load drops it.
    """
    res, rec = ctx.res, ctx.rec
    args, loaded = rec["args"], Loaded.read(rec)
    names = names_of(rec)
    with res.spark().session() as spark:
        try:
            # The counts a restore checks against, on the data table itself, taken from what is about to be switched in.
            counts = partition_rows(spark, names.data)
            if sum(counts.values()) != loaded.rows_accepted or "NULL" in counts:
                raise FatalError(f"staging table {names.data} holds {sum(counts.values())} rows in partitions "
                                 f"{sorted(counts)}, the load checked {loaded.rows_accepted}; changed by hand? "
                                 f"The backup is left as it was")
            record_counts(spark, names.data, ctx.job_id, loaded.rows_accepted, counts)
            ctx.commit_check()
            swap_view(spark, names, loaded.columns, loaded.rows_accepted, ctx.job_id)
        except NotFound as e:
            raise FatalError(f"staging table {names.data} is gone (dropped by hand?); the backup is left as it was") \
                from e
        log.info("%s now reads %s (%d rows); the previous generation %s is kept until the next run", names.backup,
                 names.data, loaded.rows_accepted, loaded.previous_data_table)
        expired = expire_versions(spark, names, args["suffix"], args["retention"]) if args["versioned"] else []
    if expired:
        log.info("expired backups %s", expired)
    ctx.done(Written(backup_table=str(names.backup), replaced_data_table=loaded.previous_data_table,
                     expired_backups=expired).as_outputs())
    return {"job_id": ctx.job_id, "backup_table": str(names.backup), "expired_backups": expired}


def discard_staging(res: Resources, rec: dict) -> None:
    """After a final failure: drop this run's staging table unless the backup already points at it."""
    if rec.get("workflow") != WORKFLOW or phase_entry(rec, "load")["state"] == "pending":
        return
    res.spark().run(drop_unswitched_staging, res, rec)


def drop_unswitched_staging(res: Resources, rec: dict) -> None:
    """Drop the staging table of a failed job unless the backup reads it (see ``discard_staging``)."""
    names = names_of(rec)
    with res.spark().session() as spark:
        if backup_target(spark, names) != names.data.table.lower():
            drop_staging(spark, names)
            log.info("dropped staging table %s of failed job %s", names.data, rec["job_id"])


# -- finish --------------------------------------------------------------------------------------

def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    loaded, written = Loaded.find(rec), Written.find(rec)  # a report: what the record lacks is None
    return {"job_id": ctx.job_id, "state": rec["state"], **_load_summary(loaded, Staged.find(rec)),
            "backup_table": written.backup_table if written else None,
            "rejects_table": loaded.rejects_table if loaded else None}


# -- plan ----------------------------------------------------------------------------------------

def plan(res: Resources, table: str, source: str, suffix: str | None = None, versioned=False, retention=None,
         day: str | None = None) -> dict:
    """What a run of this request would do, touching nothing (``backupctl plan table-backup``).

    The names come from ``validate_request`` (a draft job id: the data table's tag is the
    run's own, so the plan shows it as ``<base>__<job tag>``), the rest from the validate
    phase's own functions, through Spark (``plan_catalog``): the source files and sizes,
    the live schema, the drift check on a sample (``sample_verdicts``, ``drift_sample_rows``
    lines), the catalog's state (which data table the backup reads, which older generations
    the load would drop) and, versioned, the backups ``retention`` would expire.  Reads the
    catalog and a sample of the files; writes nothing.
    """
    args = validate_request(res, table, source, suffix, versioned, retention, day, job_id="0" * 32)
    holder = res.locks.holder(WORKFLOW, args["table"])
    found = res.spark().run(plan_catalog, res, args)
    backup = args["backup_table"]
    return {"workflow": WORKFLOW, "target": args["table"], "source": source, **found,
            "backup_table": backup, "data_table": f"{backup}__<job tag>",
            "rejects_table": f"{backup}_rejects", "versioned": args["versioned"], "day": args["day"],
            "lock": {"free": holder is None, "holder": holder}}


def plan_catalog(res: Resources, args: dict) -> dict:
    """The Spark half of ``plan`` (a module-level function: spark-submit drivers import it by name)."""
    from pyspark.sql import functions as F

    from backup.table_backup.catalog import versions_beyond

    cfg = res.settings.table_backup
    names = run_names(args["table"], args["suffix"], args["day"], "0" * 32)
    source = args["source"]
    with res.spark().session() as spark:
        schema = live_schema(spark, names.live, cfg)
        with spark_errors(f"list the files under {source}"):
            # The file listing Spark's CSV reader makes of the same path (hidden and _-files left out);
            # binaryFile reads no content when only path and length are selected.
            files = [{"path": r["path"], "bytes": int(r["length"])} for r in
                     spark.read.format("binaryFile").load(source).select("path", "length").orderBy(F.col("path"))
                     .collect()]
        with spark_errors(f"sample the files under {source}"):
            verdicts = [r[OK] for r in sample_verdicts(spark, source, schema, cfg, cfg.drift_sample_rows).collect()]
        catalog = catalog_state(spark, names)
        expiring = versions_beyond(spark, names, args["suffix"], args["retention"] - 1) \
            if args["versioned"] and table_kind(spark, names.backup) is None else \
            versions_beyond(spark, names, args["suffix"], args["retention"]) if args["versioned"] else {}
    sampled, rejected = len(verdicts), verdicts.count(False)
    drift = "no data lines" if sampled == 0 else \
        "drift" if rejected / sampled > cfg.drift_ratio else "ok"
    db = names.live.db
    return {
        "files": files, "bytes": sum(f["bytes"] for f in files),
        "live_schema": [{"name": f.name, "type": f.dataType.simpleString()} for f in schema],
        "schema_check": {"sampled_lines": sampled, "rejected": rejected, "drift_ratio": cfg.drift_ratio,
                         "verdict": drift},
        "backup_reads": catalog.previous_data_table and f"{db}.{catalog.previous_data_table}",
        "load_drops": [f"{db}.{t}" for t in catalog.stale_data_tables],
        "retention": {"versions_expired": sorted(f"{db}.{v}" for v in expiring),
                      "tables_dropped": sorted(f"{db}.{t}" for ts in expiring.values() for t in ts),
                      "keep": args["retention"]} if args["versioned"] else
                     "unversioned: one backup is kept; the generation it replaces is dropped by the next run's load",
    }


# Every phase on the spark queue, lock and finish too: a worker serving ``spark`` runs a backup from end to end.
DEFINITION = Workflow(
    name=WORKFLOW,
    summary="a folder of ;-CSV files loaded through Spark into the partitioned <table>_bkp backup, swapped in atomically",
    phases=(Phase("lock", lock_phase, queue="spark"), Phase("validate", validate_phase, queue="spark", spark=True),
            Phase("load", load_phase, queue="spark", spark=True), Phase("write", write_phase, queue="spark", spark=True),
            Phase("finish", finish_phase, queue="spark")),
    submit=submit,
    validate=validate_request,
    failure_cleanup=discard_staging,
    plan=plan,
    options=(Option("--source", "source", "folder of ;-CSV files the Spark cluster reads (absolute path or URI)"),
             Option("--suffix", "suffix", "backup name is DB.TABLE<suffix> (default from config, _bkp)"),
             Option("--versioned", "versioned", "one backup per day, <table><suffix>_YYYYMMDD", flag_only=True),
             Option("--retention", "retention", "--versioned: backups kept (default from config)", type=int),
             Option("--day", "day", "--versioned: date in the name, YYYY-MM-DD (default: today)")),
)

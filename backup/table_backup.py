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
  run before anything is written.
* load reads the files once with Spark's typed CSV reader into this run's data table (the
  staging table), with year_part and month_part, then counts the files' data lines against
  the rows written.  Only when lines were left out does it read the files again to list
  each with its reason in the rejects table; above ``max_reject_ratio`` the staging table is
  dropped and the job fails.
* write checks the staging table is there, then ``CREATE OR REPLACE VIEW`` switches the backup
  onto it in one metastore operation: readers see the previous backup or the new one,
  never a missing or half-written one.  Older data tables are dropped after the switch.

Spark state never crosses a phase (the next phase may run in another worker), so a
phase re-reads what it needs from the catalog and the job record.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backup.errors import (AlreadyExists, ConfigError, FatalError, InvalidInput, RejectsExceeded, SchemaDrift,
                           SourceChanged)
from backup.identifiers import TableName, identifier
from backup.jobs import phase_entry
from backup.enqueue import fail_request
from backup.resources import Resources
from backup.runner import PhaseContext, finish_job, take_lock
from config.settings import TableBackupSettings
from connectors.spark import (concurrently, drop, properties_if_exists, spark_errors, table_kind, table_names,
                              table_properties)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

WORKFLOW = "table-backup"
PHASES = ["lock", "validate", "load", "write", "finish"]

PARTITION_COLUMNS = ("year_part", "month_part")
REJECT_COLUMNS = ("line", "reason", "source_file", "job_id")
# Table properties marking what this workflow manages; nothing without them is ever replaced or dropped.
PROP_DATA = "mediation_backup.data_table"
PROP_JOB = "mediation_backup.job_id"
PROP_ROWS = "mediation_backup.rows"
PROP_REJECTS_OF = "mediation_backup.rejects_of"

# Internal column names of the parsed frame (never written).
_LINE, _FILE, _PARSED, _TYPED, _CORRUPT, _PDATE = ("_line", "_source_file", "_parsed", "_typed", "_corrupt_record",
                                                   "_pdate")
_OK, _REASON, _KIND = "_ok", "_reason", "_kind"

_SCHEMES = {"file", "hdfs", "viewfs", "s3a", "abfs", "abfss", "gs", "wasbs"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{12,64}$")
_MAX_VALUE_IN_REASON = 80


# -- names and request ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Names:
    """Every catalog name one run touches."""

    live: TableName
    backup: TableName
    data: TableName
    rejects: TableName

    def data_pattern(self) -> re.Pattern:
        """Data tables of this backup name (any run), as the catalog spells them (lower case)."""
        return re.compile(rf"^{re.escape(self.backup.table.lower())}__[0-9a-z]{{12}}$")


def job_tag(job_id: str) -> str:
    """Twelve lower-case letters/digits from the job id, for the data table's name."""
    tag = re.sub(r"[^0-9a-z]", "", job_id.lower())[:12]
    if len(tag) < 12:
        raise InvalidInput(f"invalid job id {job_id!r}: needs at least 12 letters or digits")
    return tag


def run_names(table: str, suffix: str, day: str | None, job_id: str) -> Names:
    """The names of a run: backup (view), data (staging), rejects; all validated identifiers."""
    live = TableName.parse(table)
    base = f"{live.table}{suffix}" + (f"_{day}" if day else "")
    backup = TableName(live.db, identifier(base, "backup table name"))
    return Names(live=live, backup=backup,
                 data=TableName(live.db, identifier(f"{base}__{job_tag(job_id)}", "data table name")),
                 rejects=TableName(live.db, identifier(f"{base}_rejects", "rejects table name")))


def check_source(source) -> str:
    """A folder (or glob) the Spark cluster reads: an absolute path or a URI of a known file system."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("missing source: give the folder of CSV files (absolute path or hdfs://... URI)")
    if _CONTROL.search(source) or len(source) > 4096:
        raise InvalidInput(f"invalid source {source[:200]!r}: control characters or longer than 4096")
    if "://" in source:
        scheme = source.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise InvalidInput(f"invalid source {source!r}: scheme {scheme!r} is not one of {sorted(_SCHEMES)}")
    elif not source.startswith("/"):
        raise InvalidInput(f"invalid source {source!r}: use an absolute path (the Spark cluster reads it)")
    if any(part == ".." for part in re.split(r"[/\\]", source)):
        raise InvalidInput(f"invalid source {source!r}: '..' is not allowed")
    return source


def _today(cfg: TableBackupSettings) -> dt.date:
    try:
        return dt.datetime.now(ZoneInfo(cfg.timezone)).date()
    except ZoneInfoNotFoundError as e:
        raise ConfigError(f"table_backup.timezone: unknown timezone {cfg.timezone!r}") from e


def validate_request(res: Resources, table: str, source: str, suffix: str | None = None, versioned=False,
                     retention=None, day: str | None = None, job_id: str | None = None) -> dict:
    """Check a request and return its normalized arguments; raise InvalidInput naming the problem."""
    cfg = res.settings.table_backup
    TableName.parse(table)
    check_source(source)
    suffix = cfg.suffix if suffix is None else suffix
    if not isinstance(suffix, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,40}", suffix):
        raise InvalidInput(f"invalid backup suffix {suffix!r}: use 1 to 40 letters, digits or _")
    if not isinstance(versioned, bool):
        raise InvalidInput(f"invalid versioned flag {versioned!r}: expected true or false")
    if not versioned and (retention is not None or day is not None):
        raise InvalidInput("retention and day apply to versioned backups only")
    if versioned:
        if isinstance(retention, str) and retention.isdigit():
            retention = int(retention)
        retention = cfg.retention if retention is None else retention
        if not isinstance(retention, int) or isinstance(retention, bool) or not 1 <= retention <= 1000:
            raise InvalidInput(f"invalid retention {retention!r}: expected a whole number of backups, 1 to 1000")
        try:
            stamp = (dt.date.fromisoformat(day) if day is not None else _today(cfg)).strftime("%Y%m%d")
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"invalid day {day!r}: expected YYYY-MM-DD") from e
    else:
        stamp = None
    identifier(cfg.partition_column, "partition column")
    names = run_names(table, suffix, stamp, job_id or uuid.uuid4().hex)
    return {"table": str(names.live), "source": source, "suffix": suffix, "versioned": versioned,
            "retention": retention if versioned else None, "day": stamp, "backup_table": str(names.backup)}


def submit(res: Resources, table: str, source: str, suffix: str | None = None, versioned=False, retention=None,
           day: str | None = None, job_id: str | None = None) -> dict:
    """Validate and create the job record; a bad request is recorded as failed and starts nothing."""
    job_id = job_id or uuid.uuid4().hex
    raw = {"table": table, "source": source, "suffix": suffix, "versioned": versioned, "retention": retention,
           "day": day}
    try:
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise InvalidInput(f"invalid job id {str(job_id)[:80]!r}: use 12 to 64 letters, digits, - or _")
        args = validate_request(res, table, source, suffix, versioned, retention, day, job_id)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, str(table), raw, PHASES)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, args["table"], args, PHASES)


def names_of(rec: dict) -> Names:
    """The names of a recorded run."""
    a = rec["args"]
    return run_names(a["table"], a["suffix"], a["day"], rec["job_id"])


# -- parsing: every line, typed as the live schema, with the reason it is rejected ---------------

def _regex_literal(ch: str) -> str:
    """One character as a literal in a Java (and Python) regex, inside or outside a class."""
    return ch if ch.isalnum() else "\\" + ch


def quoted_field_regex(quote: str, escape: str) -> str:
    """Regex of one well-formed quoted field (Java syntax; Spark evaluates it)."""
    q, e = _regex_literal(quote), _regex_literal(escape)
    if quote == escape:
        return f"{q}(?:[^{q}]|{q}{q})*{q}"
    return f"{q}(?:[^{q}{e}]|{e}.)*{q}"


def delimiter_regex(delimiter: str) -> str:
    """Regex matching the field delimiter literally."""
    return _regex_literal(delimiter)


ISO_DATE = "yyyy-MM-dd"


def parse_date(value: "Column", fmt: str) -> "Column":
    """The text as a DATE in pattern ``fmt``, or NULL if it is not one.

    For the default ``yyyy-MM-dd``: ten characters, ``-`` at the 5th and 8th, a digit last, and
    a cast that succeeds.  The cast accepts one- or two-digit months and days, anything after a
    space or ``T`` and surrounding whitespace; with those positions fixed only the exact form is
    left, so the answer equals ``try_to_date`` (a test compares both on edge values).  A regex
    cost about two seconds of CPU per two million lines, Spark's pattern parser more.
    """
    from pyspark.sql import functions as F

    if fmt == ISO_DATE:
        shape = ((F.length(value) == 10) & (F.substring(value, 5, 1) == "-") & (F.substring(value, 8, 1) == "-")
                 & F.substring(value, 10, 1).between("0", "9"))
        return F.when(shape, value.try_cast("date"))
    return F.try_to_date(value, fmt)


# Characters Java's String.trim() removes: a line of only these is skipped by Spark's CSV reader.
_BLANK = "".join(chr(c) for c in range(0x21))


def data_line(line: "Column") -> "Column":
    """True for a line Spark's CSV reader parses (it skips lines that are empty after trim())."""
    from pyspark.sql import functions as F

    # The first test settles almost every line without copying it.
    return (F.substring(line, 1, 1) > " ") | (F.trim(line, F.lit(_BLANK)) != "")


def csv_options(cfg: TableBackupSettings, mode: str = "PERMISSIVE") -> dict[str, str]:
    """Options of Spark's CSV parser: the same parser and options in every pass."""
    return {"sep": cfg.delimiter, "quote": cfg.quote, "escape": cfg.escape, "mode": mode}


def read_ddl(schema: "StructType", cfg: TableBackupSettings, as_strings: bool = False) -> str:
    """Schema of a CSV read: the live columns typed as in the table (or all strings), the partition column as text."""
    pcol = partition_field(schema, cfg).name
    return ", ".join(f"`{f.name}` " + ("STRING" if as_strings or f.name == pcol else f.dataType.simpleString())
                     for f in schema)


def partition_field(schema: "StructType", cfg: TableBackupSettings):
    """The live schema's field named by table_backup.partition_column."""
    return next(f for f in schema if f.name.lower() == cfg.partition_column.lower())


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
    return schema


def _backup_columns(schema: "StructType", cfg: TableBackupSettings, value, pdate: "Column") -> list["Column"]:
    """The live columns then year_part, month_part; the partition column keeps its text if it is a
    string, else it is the date parsed with date_format, cast to its type."""
    from pyspark.sql import functions as F

    pcol = partition_field(schema, cfg).name
    out = [(value(f.name) if f.dataType.typeName() == "string" else pdate.cast(f.dataType)).alias(f.name)
           if f.name == pcol else value(f.name).alias(f.name) for f in schema]
    return out + [F.year(pdate).alias(PARTITION_COLUMNS[0]), F.month(pdate).alias(PARTITION_COLUMNS[1])]


def accepted_rows(spark: "SparkSession", source: str, schema: "StructType", cfg: TableBackupSettings) -> "DataFrame":
    """The rows of the files that the backup keeps, typed, with year_part and month_part.

    Spark's own CSV reader with the live types, dropping malformed records (another field
    count, a value its converter refuses, an unclosed quote), then the rows whose partition
    date is missing or invalid: the fastest pass Spark has, about what the legacy script
    cost.  What it leaves out is not lost unseen: the load counts the files' data lines
    (``data_lines``), and any difference is explained line by line by ``explained_lines``,
    which makes the same decision with the same parser.  The decision holds only for a query
    that reads every column, as the load's write does: Spark's CSV reader converts, and so
    drops on, only the columns a query reads.
    """
    from pyspark.sql import functions as F

    text = F.col(f"`{partition_field(schema, cfg).name}`")
    frame = spark.read.options(**csv_options(cfg, "DROPMALFORMED")).schema(read_ddl(schema, cfg)).csv(source)
    frame = frame.filter(parse_date(text, cfg.date_format).isNotNull())
    # Past the filter an ISO text is a valid date, which a plain cast reads (shared by year and month);
    # a date kept in a column for the filter would be parsed twice, as Spark pushes the filter below it.
    pdate = text.cast("date") if cfg.date_format == ISO_DATE else parse_date(text, cfg.date_format)
    return frame.select(*_backup_columns(schema, cfg, lambda n: F.col(f"`{n}`"), pdate))


def data_lines(spark: "SparkSession", source: str, with_file: bool = False) -> "DataFrame":
    """The lines of the files that Spark's CSV reader parses (``_line``), and the file of each if asked."""
    from pyspark.sql import functions as F

    # The file name only where it is kept (rejects): Spark builds the whole _metadata struct for
    # every line once it is referenced, even if a later projection drops it.
    source_file = [F.col("_metadata.file_path").alias(_FILE)] if with_file else []
    lines = spark.read.text(source).select(F.col("value").alias(_LINE), *source_file)
    return lines.filter(data_line(F.col(_LINE)))


def explained_lines(spark: "SparkSession", source: str, schema: "StructType", cfg: TableBackupSettings,
                    limit: int | None = None, with_file: bool = False,
                    seen: "Observation | None" = None) -> "DataFrame":
    """Every data line of the files, whether ``accepted_rows`` keeps it (``_ok``) and, if not, why.

    Each line is parsed twice with ``from_csv``, Spark's CSV parser with the options of the
    main pass: typed as the live schema with a corrupt-record column (set exactly when the
    reader of ``accepted_rows`` drops the record), and as strings, to show the offending
    value.  ``_reason`` is the first rule that holds: unclosed quote, field count, partition
    date missing or invalid, a value its column's converter refused.  This costs far more
    per line than the main pass, so it runs on a sample (validate) and, when lines were left
    out, once more over the files (the rejects).  With ``seen``, lines (``read``) and rejects
    (``rejected``) are counted as they are parsed.
    """
    from pyspark.sql import functions as F

    expected = len(schema)
    lines = data_lines(spark, source, with_file)
    if limit:
        lines = lines.limit(limit)
    kept = [_LINE] + ([_FILE] if with_file else [])
    typed_ddl = read_ddl(schema, cfg) + f", `{_CORRUPT}` STRING"
    opts = {**csv_options(cfg), "columnNameOfCorruptRecord": _CORRUPT}
    frame = lines.select(*kept, F.from_csv(F.col(_LINE), typed_ddl, opts).alias(_TYPED),
                         F.from_csv(F.col(_LINE), read_ddl(schema, cfg, as_strings=True), csv_options(cfg))
                         .alias(_PARSED))

    def raw(name: str) -> "Column":
        return F.col(f"{_PARSED}.`{name}`")

    def typed(name: str) -> "Column":
        return F.col(f"{_TYPED}.`{name}`")

    def shown(value: "Column") -> "Column":
        return F.concat(F.lit("'"), F.substring(value, 1, _MAX_VALUE_IN_REASON), F.lit("'"))

    pcol = partition_field(schema, cfg).name
    step = frame.select("*", parse_date(typed(pcol), cfg.date_format).alias(_PDATE))
    line, pdate, corrupt = F.col(_LINE), F.col(_PDATE), typed(_CORRUPT)
    ok = corrupt.isNull() & pdate.isNotNull()
    outside_quotes = F.regexp_replace(line, quoted_field_regex(cfg.quote, cfg.escape), "")
    found = F.size(F.split(outside_quotes, delimiter_regex(cfg.delimiter), -1))
    # (condition, kind, reason) in order: the first that holds is the reason; together they are ~ok.
    rules: list[tuple[Column, Column, Column]] = [
        (corrupt.isNotNull() & outside_quotes.contains(cfg.quote),
         F.lit("quote"), F.lit("unbalanced quote (a quoted field is not closed)")),
        (corrupt.isNotNull() & (found != expected),
         F.concat(F.lit("fields:"), found.cast("string")),
         F.concat(F.lit(f"expected {expected} fields, found "), found.cast("string"))),
        (typed(pcol).isNull(), F.lit("date:missing"), F.lit(f"{pcol} is missing")),
        (pdate.isNull(), F.lit("date:invalid"),
         F.concat(F.lit(f"{pcol} "), shown(typed(pcol)), F.lit(f" is not a date ({cfg.date_format})"))),
    ]
    # A value the converter refused is NULL in the typed parse but not in the string parse.
    rules += [(corrupt.isNotNull() & raw(f.name).isNotNull() & typed(f.name).isNull(), F.lit(f"type:{f.name}"),
               F.concat(F.lit(f"{f.name} "), shown(raw(f.name)), F.lit(f" is not a {f.dataType.simpleString().upper()}")))
              for f in schema if f.name != pcol and f.dataType.typeName() != "string"]
    rules.append((corrupt.isNotNull(), F.lit("malformed"), F.lit(f"malformed CSV record (expected {expected} fields)")))
    reason = kind = None
    for cond, k, text in rules:
        reason = F.when(cond, text) if reason is None else reason.when(cond, text)
        kind = F.when(cond, k) if kind is None else kind.when(cond, k)
    step = step.select("*", ok.alias(_OK))
    if seen is not None:
        # Between the parse and everything after it: also keeps a filter on _ok above the parse
        # (pushed below it, Spark would run the CSV parser again for every field the filter reads).
        step = step.observe(seen, F.count(F.lit(1)).alias("read"), F.count(F.when(~F.col(_OK), 1)).alias("rejected"))
    return step.select(*kept, *_backup_columns(schema, cfg, typed, pdate), F.col(_OK), reason.alias(_REASON),
                       kind.alias(_KIND))


# -- lock ----------------------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the (table-backup, table) lock or end the job as skipped, naming the holder."""
    return take_lock(ctx, WORKFLOW)


# -- validate ------------------------------------------------------------------------------------

def check_names_free(spark: "SparkSession", names: Names) -> None:
    """AlreadyExists unless the backup and rejects names are free or already managed by this workflow."""
    backup_props, rejects_props = concurrently(lambda: properties_if_exists(spark, names.backup),
                                               lambda: properties_if_exists(spark, names.rejects))
    if backup_props is not None and PROP_DATA not in backup_props:
        raise AlreadyExists(
            f"{names.backup} exists as a {table_kind(spark, names.backup)} not made by table-backup (a legacy "
            f"backup?); rename it, e.g. ALTER TABLE {names.backup} RENAME TO {names.backup}_legacy, then run again")
    if rejects_props is not None and PROP_REJECTS_OF not in rejects_props:
        raise AlreadyExists(f"{names.rejects} exists and was not made by table-backup; rename or drop it first")


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
        sample = explained_lines(spark, source, schema, cfg, limit=cfg.drift_sample_rows)
        with spark_errors(f"sample the files under {source}"):
            return schema, sample.select(_KIND, _REASON).collect()  # a few thousand rows at most: no shuffle

    with res.spark().session() as spark:
        # Independent round trips, side by side; the live table's own problems are reported first.
        (schema, rows), _ = concurrently(sample_files, lambda: check_names_free(spark, names))
    sampled = len(rows)
    by_kind: dict[str, dict] = {}
    for r in rows:
        if r[_KIND] is not None:
            by_kind.setdefault(r[_KIND], {"kind": r[_KIND], "n": 0, "example": r[_REASON]})["n"] += 1
    groups = list(by_kind.values())
    if sampled == 0:
        raise InvalidInput(f"no data lines in the files under {source}; refusing to replace the backup with nothing")
    rejected = sum(g["n"] for g in groups)
    if rejected / sampled > cfg.drift_ratio:
        raise drift_error(source, names.live, schema, sampled, groups)
    out = {"columns": len(schema.fields), "sampled_lines": sampled, "sample_rejected": rejected,
           "backup_table": str(names.backup), "rejects_table": str(names.rejects)}
    ctx.done(out)
    return {"job_id": ctx.job_id, **out}


# -- load ----------------------------------------------------------------------------------------

def _partitions(spark: "SparkSession", table: TableName) -> list[str]:
    """The table's partitions as YYYY-MM, sorted."""
    with spark_errors(f"list partitions of {table}"):
        rows = spark.sql(f"SHOW PARTITIONS {table.sql}").collect()
    months = []
    for r in rows:
        spec = dict(kv.split("=", 1) for kv in r[0].split("/"))
        months.append(f"{int(spec['year_part']):04d}-{int(spec['month_part']):02d}")
    return sorted(months)


def _count(spark: "SparkSession", table: TableName) -> int:
    with spark_errors(f"count rows of {table}"):
        return spark.table(table.sql).count()


def clear_rejects(spark: "SparkSession", names: Names, cfg: TableBackupSettings) -> None:
    """The rejects table of this backup name, created if missing, emptied of the previous run's lines."""
    cols = ", ".join(f"`{c}` STRING" for c in REJECT_COLUMNS)
    with spark_errors(f"create or empty the rejects table {names.rejects}"):
        spark.sql(f"CREATE TABLE IF NOT EXISTS {names.rejects.sql} ({cols}) USING {cfg.format} "
                  f"TBLPROPERTIES ('{PROP_REJECTS_OF}'='{names.backup.table.lower()}')")
        spark.sql(f"TRUNCATE TABLE {names.rejects.sql}")


def write_rejects(spark: "SparkSession", names: Names, rejected: "DataFrame", job_id: str) -> None:
    """Replace the rejects table's content with this run's rejected lines."""
    from pyspark.sql import functions as F

    with spark_errors(f"write rejects to {names.rejects}"):
        rejected.select(F.col(_LINE).alias("line"), F.col(_REASON).alias("reason"), F.col(_FILE).alias("source_file"),
                        F.lit(job_id).alias("job_id")).write.insertInto(names.rejects.sql, overwrite=True)


def count_data_lines(spark: "SparkSession", source: str) -> int:
    """How many lines of the files Spark's CSV reader parses: every one is either a backup row or a reject."""
    with spark_errors(f"count the lines of the files under {source}"):
        return data_lines(spark, source).count()


def load_phase(ctx: PhaseContext) -> dict:
    """Accepted rows into this run's staging table; every other data line, with its reason, into the rejects table.

    The rows go through Spark's CSV reader once (``accepted_rows``).  Then the files' data lines
    are counted and the staging table's rows: equal counts mean nothing was left out.  Otherwise
    the difference is what the reader dropped, and ``explained_lines`` reads the files again to
    list each of those lines with its reason; it must find exactly as many lines and rejects,
    or the files changed during the load (SourceChanged, retryable, nothing replaced).
    """
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    res, rec = ctx.res, ctx.rec
    cfg = res.settings.table_backup
    names = names_of(rec)
    source = rec["args"]["source"]
    out = rec["outputs"]
    with res.spark().session() as spark:
        if out.get("rows_accepted") is not None and table_kind(spark, names.data) \
                and _count(spark, names.data) == out["rows_accepted"]:
            return {"job_id": ctx.job_id, "note": "already loaded", **_load_summary(out)}
        schema = live_schema(spark, names.live, cfg)
        columns = [f.name for f in schema] + list(PARTITION_COLUMNS)

        def write_staging() -> None:
            with spark_errors(f"load {source} into {names.data}"):
                # overwrite, not error-if-exists: a previous delivery of this phase may have left the table or files.
                accepted_rows(spark, source, schema, cfg).write.format(cfg.format).partitionBy(*PARTITION_COLUMNS) \
                    .mode("overwrite").saveAsTable(names.data.sql)

        concurrently(write_staging, lambda: clear_rejects(spark, names, cfg))
        # Lines counted after the write (beside it measured no faster: Spark's FIFO scheduler runs one
        # job's tasks after the other's), so a file rewritten in place meanwhile shows up as a difference.
        # Every read of this session uses the file listing Spark cached for it at the first read.
        read, staged, months = concurrently(lambda: count_data_lines(spark, source),
                                            lambda: _count(spark, names.data),
                                            lambda: _partitions(spark, names.data))
        rejected = read - staged

        def changed(detail: str) -> SourceChanged:
            drop(spark, names.data, "TABLE")
            return SourceChanged(f"the files under {source} changed during the load: {detail}; nothing replaced")

        if rejected < 0:
            raise changed(f"{staged} rows loaded, then only {read} lines counted")
        if rejected:
            again = Observation("table_backup_rejects")
            lines = explained_lines(spark, source, schema, cfg, with_file=True, seen=again)
            write_rejects(spark, names, lines.filter(~F.col(_OK)), ctx.job_id)
            second = again.get
            if (int(second["read"]), int(second["rejected"])) != (read, rejected):
                raise changed(f"{read} lines with {rejected} rejected, then {second['read']} with {second['rejected']}")
        stats = {"rows_read": read, "rows_accepted": staged, "rows_rejected": rejected,
                 "data_table": str(names.data), "rejects_table": str(names.rejects), "columns": columns}
        if read == 0:
            drop(spark, names.data, "TABLE")
            raise InvalidInput(f"no data lines in the files under {source}; refusing to replace the backup with nothing")
        if rejected / read > cfg.max_reject_ratio:
            drop(spark, names.data, "TABLE")
            with spark_errors(f"read examples from {names.rejects}"):
                examples = [r["reason"] for r in spark.table(names.rejects.sql).select("reason").limit(3).collect()]
            res.jobs.update(ctx.job_id, lambda r: r["outputs"].update(stats), fence=ctx.held)
            raise RejectsExceeded(
                f"{rejected} of {read} lines rejected ({rejected / read:.2%}), above table_backup.max_reject_ratio="
                f"{cfg.max_reject_ratio}; nothing replaced. Rejected lines and reasons in {names.rejects}, e.g. "
                + "; ".join(examples))
    stats.update(partitions_written=len(months), months=months)
    ctx.done(stats)
    return {"job_id": ctx.job_id, **_load_summary(stats)}


def _load_summary(out: dict) -> dict:
    return {k: out.get(k) for k in ("rows_read", "rows_accepted", "rows_rejected", "partitions_written")}


# -- write ---------------------------------------------------------------------------------------

def backup_state(spark: "SparkSession", names: Names) -> tuple[str | None, list[str]]:
    """(data table the backup view points at, or None; every data table of this backup name), lower case."""
    backup = names.backup.table.lower()
    props, existing = concurrently(lambda: properties_if_exists(spark, names.backup),
                                   lambda: table_names(spark, names.live.db, f"{backup}__*"))
    pattern = names.data_pattern()
    return (props or {}).get(PROP_DATA), [t for t in existing if pattern.match(t)]


def swap_view(spark: "SparkSession", names: Names, columns: list[str], rows: int, job_id: str) -> None:
    """Point the backup view at this run's data table: one metastore operation, atomic for readers."""
    cols = ", ".join(f"`{identifier(c, 'column name')}`" for c in columns)
    with spark_errors(f"switch {names.backup} to {names.data}"):
        spark.sql(f"CREATE OR REPLACE VIEW {names.backup.sql} TBLPROPERTIES ("
                  f"'{PROP_DATA}'='{names.data.table.lower()}', '{PROP_JOB}'='{job_id}', '{PROP_ROWS}'='{int(rows)}') "
                  f"AS SELECT {cols} FROM {names.data.sql}")


def expire_versions(spark: "SparkSession", names: Names, suffix: str, keep: int) -> list[str]:
    """Versioned mode: drop the oldest backups of the table beyond ``keep`` (view, data and rejects)."""
    pattern = re.compile(rf"^{re.escape(names.live.table.lower() + suffix.lower())}_(\d{{8}})$")
    current = names.backup.table.lower()
    versions = []
    for name in table_names(spark, names.live.db, f"{names.live.table.lower()}{suffix.lower()}_*"):
        if pattern.match(name):
            props = table_properties(spark, TableName(names.live.db, name))
            if PROP_DATA in props:
                versions.append((name, props[PROP_DATA]))
    versions.sort(key=lambda v: (v[0] == current, v[0]), reverse=True)  # the current one always survives
    expired = []
    for name, data in versions[keep:]:
        db = names.live.db
        drop(spark, TableName(db, name), "VIEW")
        drop(spark, TableName(db, identifier(data, "data table name")), "TABLE")
        drop(spark, TableName(db, f"{name}_rejects"), "TABLE")
        expired.append(f"{db}.{name}")
    return sorted(expired)


def write_phase(ctx: PhaseContext) -> dict:
    """Switch the backup onto this run's staging table, then drop what it replaced.

    The staging table's rows were counted against the files' lines at the end of the load;
    here it only has to be there still (the lock keeps other runs of this table out).
    """
    res, rec = ctx.res, ctx.rec
    args, out = rec["args"], rec["outputs"]
    names = names_of(rec)
    note = None
    ours = names.data.table.lower()
    with res.spark().session() as spark:
        replaced, data_tables = backup_state(spark, names)
        if replaced == ours:
            replaced, note = None, "already switched (redelivered)"
        else:
            if ours not in data_tables:
                raise FatalError(f"staging table {names.data} is gone (dropped by hand?); the backup is left as it was")
            ctx.commit_check()
            swap_view(spark, names, out["columns"], out["rows_accepted"], ctx.job_id)
            log.info("%s now reads %s (%d rows); it replaced %s", names.backup, names.data, out["rows_accepted"],
                     replaced)
        # The replaced data table, and any a failed run left behind (the lock keeps other runs out).
        dropped = []
        for name in data_tables:
            if name != ours:
                drop(spark, TableName(names.live.db, name), "TABLE")
                dropped.append(f"{names.live.db}.{name}")
        expired = expire_versions(spark, names, args["suffix"], args["retention"]) if args["versioned"] else []
    if dropped or expired:
        log.info("dropped %s; expired backups %s", dropped, expired)
    stats = {"backup_table": str(names.backup), "replaced_data_table": replaced, "dropped_tables": dropped,
             "expired_backups": expired}
    ctx.done(stats, note=note)
    return {"job_id": ctx.job_id, "backup_table": str(names.backup), "expired_backups": expired}


def discard_staging(res: Resources, rec: dict) -> None:
    """After a final failure: drop this run's staging table unless the backup already points at it."""
    if rec.get("workflow") != WORKFLOW or phase_entry(rec, "load")["state"] == "pending":
        return
    names = names_of(rec)
    with res.spark().session() as spark:
        if backup_state(spark, names)[0] != names.data.table.lower():
            drop(spark, names.data, "TABLE")
            log.info("dropped staging table %s of failed job %s", names.data, rec["job_id"])


# -- finish --------------------------------------------------------------------------------------

def finish_phase(ctx: PhaseContext) -> dict:
    """Record success and release the lock."""
    rec = finish_job(ctx)
    out = rec["outputs"]
    return {"job_id": ctx.job_id, "state": rec["state"], **_load_summary(out),
            "backup_table": out.get("backup_table"), "rejects_table": out.get("rejects_table")}


PHASE_FUNCS = {"lock": lock_phase, "validate": validate_phase, "load": load_phase, "write": write_phase,
               "finish": finish_phase}

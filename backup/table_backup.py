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
* write switches the backup onto the staging table with ``CREATE OR REPLACE VIEW``, one
  metastore operation: readers see the previous backup or the new one, never a missing or
  half-written one.  The replaced data table stays as the previous generation until the
  next run, so a query that started on it finishes on it.

Spark state never crosses a phase (the next phase may run in another worker), so a
phase re-reads what it needs from the catalog and the job record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from base.urls import url_scheme
from base.text import CONTROL_CHARS
from base.errors import (AlreadyExists, ConfigError, FatalError, InvalidInput, NotFound, RejectsExceeded,
                           SchemaDrift, SourceChanged, causes)
from base.identifiers import TableName, identifier
from backup.jobs import phase_entry
from backup.enqueue import fail_request
from backup.resources import Resources
from backup.workflow import Option, Phase, Workflow
from backup.runner import PhaseContext, finish_job, take_lock
from config.settings import TableBackupSettings
from connectors.spark import concurrently, drop, properties_if_exists, spark_errors, table_kind, tables_like

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

WORKFLOW = "table-backup"

PARTITION_COLUMNS = ("year_part", "month_part")
REJECT_COLUMNS = ("line", "reason", "source_file", "job_id")
# Table properties marking what this workflow manages; nothing without them is ever replaced or dropped.
PROP_DATA = "mediation_backup.data_table"
PROP_JOB = "mediation_backup.job_id"
PROP_ROWS = "mediation_backup.rows"
PROP_REJECTS_OF = "mediation_backup.rejects_of"
# Lines the rejects table holds, set after each change ('unknown' while one is under way): an empty table is left alone.
PROP_REJECTS_ROWS = "mediation_backup.rejects_rows"

# Internal column names of the parsed frame (never written).
_LINE, _FILE, _PARSED, _TYPED, _CORRUPT, _PDATE = ("_line", "_source_file", "_parsed", "_typed", "_corrupt_record",
                                                   "_pdate")
_OK, _REASON, _KIND = "_ok", "_reason", "_kind"
# The parsed partition date beside the live columns in the load's first read (a live column may not be named so).
_ROW_DATE = "__table_backup_date"

_SCHEMES = {"file", "hdfs", "viewfs", "s3a", "abfs", "abfss", "gs", "wasbs"}
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
        return re.compile(rf"^{data_table_regex(self.backup.table)}$")

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


def check_source(source) -> str:
    """A folder (or glob) the Spark cluster reads: an absolute path or a URI of a known file system."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput("missing source: give the folder of CSV files (absolute path or hdfs://... URI)")
    if CONTROL_CHARS.search(source) or len(source) > 4096:
        raise InvalidInput(f"invalid source {source[:200]!r}: control characters or longer than 4096")
    scheme = url_scheme(source, default=None)
    if scheme is not None:
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
        check_job_id(job_id)
        args = validate_request(res, table, source, suffix, versioned, retention, day, job_id)
    except InvalidInput as e:
        res.jobs.create(job_id, WORKFLOW, str(table), raw, DEFINITION.phase_names)
        return fail_request(res, job_id, e)
    return res.jobs.create(job_id, WORKFLOW, args["table"], args, DEFINITION.phase_names)


def names_of(rec: dict) -> Names:
    """The names of a recorded run (the data table as its load recorded it, if it did)."""
    a = rec["args"]
    names = run_names(a["table"], a["suffix"], a["day"], rec["job_id"])
    recorded = rec.get("outputs", {}).get("data_table")
    if recorded and recorded != str(names.data):
        # Loaded by a version that derived the tag otherwise: the phases after it use the table it made.
        data = TableName.parse(recorded)
        if data.db != names.live.db or not names.data_pattern().match(data.table.lower()):
            raise FatalError(f"job record names data table {recorded}, which is not a data table of {names.backup}")
        names = Names(live=names.live, backup=names.backup, data=data, rejects=names.rejects)
    return names


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


def is_date(value: "Column", fmt: str) -> "Column":
    """True if the text is a date in pattern ``fmt``; NULL or False otherwise.

    For the default ``yyyy-MM-dd``: a cast that succeeds, ten bytes, the first ``-`` at the 5th
    character and the next at the 8th, a digit last.  The cast alone also accepts one-digit
    months and days, more year digits, anything after a space or ``T`` and surrounding
    whitespace; each of those moves a ``-`` or the last character, so only the exact form is
    left and the answer equals ``try_to_date`` (a test compares both on edge values).  These
    are the cheapest checks found (byte length and ``locate`` copy nothing); the substrings
    they replaced, a regex or Spark's pattern parser cost up to a few seconds of CPU per
    million lines.
    """
    if fmt == ISO_DATE:
        return value.try_cast("date").isNotNull() & iso_shape(value)
    from pyspark.sql import functions as F

    return F.try_to_date(value, fmt).isNotNull()


def iso_shape(value: "Column") -> "Column":
    """Ten bytes, the first ``-`` at the 5th character and the next at the 8th, a digit last (see ``is_date``)."""
    from pyspark.sql import functions as F

    return ((F.octet_length(value) == 10) & (F.locate("-", value) == 5) & (F.locate("-", value, 6) == 8)
            & F.substring(value, 10, 1).between("0", "9"))


def parse_date(value: "Column", fmt: str) -> "Column":
    """The text as a DATE in pattern ``fmt``, or NULL if it is not one."""
    from pyspark.sql import functions as F

    return F.when(is_date(value, fmt), value.cast("date") if fmt == ISO_DATE else F.try_to_date(value, fmt))


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
    field = next((f for f in schema if f.name.lower() == cfg.partition_column.lower()), None)
    if field is None:  # the setting changed after validate checked it against the live table
        raise ConfigError(f"table_backup.partition_column={cfg.partition_column!r} is not a column of the "
                          f"schema this job validated ({', '.join(f.name for f in schema)})")
    return field


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
    if _ROW_DATE in names:
        raise InvalidInput(f"{live} has a column named {_ROW_DATE}, the name table-backup uses for the parsed date")
    return schema


def _backup_columns(schema: "StructType", cfg: TableBackupSettings, value, pdate: "Column") -> list["Column"]:
    """The live columns then year_part, month_part; the partition column keeps its text if it is a
    string, else it is the date parsed with date_format, cast to its type."""
    from pyspark.sql import functions as F

    pcol = partition_field(schema, cfg).name
    out = [(value(f.name) if f.dataType.typeName() == "string" else pdate.cast(f.dataType)).alias(f.name)
           if f.name == pcol else value(f.name).alias(f.name) for f in schema]
    return out + [F.year(pdate).alias(PARTITION_COLUMNS[0]), F.month(pdate).alias(PARTITION_COLUMNS[1])]


def accepted_rows(spark: "SparkSession", source: str, schema: "StructType", cfg: TableBackupSettings,
                  strict: bool = True) -> "DataFrame":
    """The rows of the files that the backup keeps, typed, with year_part and month_part.

    Spark's own CSV reader with the live types (the legacy script's reader, about its cost).

    ``strict`` (the load's first read): FAILFAST, which stops at the first malformed record
    (another field count, a value its converter refuses, an unclosed quote), and no filter: a
    row whose partition date is missing or not a date keeps a NULL year and month, so it lands
    in a NULL partition, which sends the load to the exact path.  Every data line is then a
    row, and a run without a NULL partition has accepted them all.  The date is parsed once,
    in a projection of its own (Spark keeps it apart, as two uses of it follow).

    Otherwise (the exact path, once ``explained_lines`` has listed the rejects): DROPMALFORMED
    and a filter on the date, which leave the rejected lines out.

    The decision holds only for a query that reads every column, as the load's write does:
    Spark's CSV reader converts, and so fails or drops on, only the columns a query reads.
    """
    from pyspark.sql import functions as F

    text = F.col(f"`{partition_field(schema, cfg).name}`")
    iso = cfg.date_format == ISO_DATE
    frame = spark.read.options(**csv_options(cfg, "FAILFAST" if strict else "DROPMALFORMED")) \
        .schema(read_ddl(schema, cfg)).csv(source)
    if strict:
        date = F.when(iso_shape(text), text).try_cast("date") if iso else F.try_to_date(text, cfg.date_format)
        frame, pdate = frame.select("*", date.alias(_ROW_DATE)), F.col(_ROW_DATE)
    else:  # past the filter an ISO text is a valid date, which a plain cast reads (shared by year and month)
        frame = frame.filter(is_date(text, cfg.date_format))
        pdate = text.cast("date") if iso else F.try_to_date(text, cfg.date_format)
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
    out, once more over the files (the rejects).  With ``seen``, lines (``read``), rejects
    (``rejected``) and the malformed among them (``malformed``: every reject but a bad date,
    what stops the FAILFAST reader) are counted as they are parsed.
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
        step = step.observe(seen, F.count(F.lit(1)).alias("read"), F.count(F.when(~F.col(_OK), 1)).alias("rejected"),
                            F.count(F.when(corrupt.isNotNull(), 1)).alias("malformed"))
    return step.select(*kept, *_backup_columns(schema, cfg, typed, pdate), F.col(_OK), reason.alias(_REASON),
                       kind.alias(_KIND))


def sample_verdicts(spark: "SparkSession", source: str, schema: "StructType", cfg: TableBackupSettings,
                    limit: int) -> "DataFrame":
    """The first ``limit`` data lines of the files, each with whether the load keeps it (``_ok``).

    Spark's typed CSV reader with a corrupt-record column (set exactly when the load's reader
    refuses the record) and the partition-date check: the load's decision, without the
    reasons, which ``explained_lines`` adds only when they are needed.
    """
    from pyspark.sql import functions as F

    opts = {**csv_options(cfg), "columnNameOfCorruptRecord": _CORRUPT}
    frame = spark.read.options(**opts).schema(read_ddl(schema, cfg) + f", `{_CORRUPT}` STRING").csv(source)
    text = F.col(f"`{partition_field(schema, cfg).name}`")
    ok = F.col(_CORRUPT).isNull() & F.coalesce(is_date(text, cfg.date_format), F.lit(False))
    # Every column referenced: the reader converts, and so judges, only the columns a query reads.
    return frame.limit(limit).select(ok.alias(_OK), F.xxhash64(*[F.col(f"`{f.name}`") for f in schema]).alias("_all"))


# -- lock ----------------------------------------------------------------------------------------

def lock_phase(ctx: PhaseContext) -> dict:
    """Take the (table-backup, table) lock or end the job as skipped, naming the holder."""
    return take_lock(ctx, WORKFLOW)


# -- validate ------------------------------------------------------------------------------------

def catalog_state(spark: "SparkSession", names: Names) -> dict:
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
    return {"previous_data_table": current, "backup_reads": sorted(in_use),
            "stale_data_tables": sorted(t for t in found if pattern.match(t) and t not in in_use and t != ours),
            "previous_rejects": None if rejects is None else rejects["properties"].get(PROP_REJECTS_ROWS, "unknown")}


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
            return schema, [r[_OK] for r in sample_verdicts(spark, source, schema, cfg, cfg.drift_sample_rows).collect()]

    with res.spark().session() as spark:
        # Independent round trips, side by side; the live table's own problems are reported first.
        (schema, verdicts), catalog = concurrently(sample_files, lambda: catalog_state(spark, names))
        sampled, rejected = len(verdicts), verdicts.count(False)
        if sampled == 0:
            raise InvalidInput(f"no data lines in the files under {source}; refusing to replace the backup with nothing")
        if rejected / sampled > cfg.drift_ratio:
            sample = explained_lines(spark, source, schema, cfg, limit=cfg.drift_sample_rows)
            with spark_errors(f"explain the sample of the files under {source}"):
                rows = sample.select(_KIND, _REASON).collect()  # a few thousand rows at most: no shuffle
            by_kind: dict[str, dict] = {}
            for r in rows:
                if r[_KIND] is not None:
                    by_kind.setdefault(r[_KIND], {"kind": r[_KIND], "n": 0, "example": r[_REASON]})["n"] += 1
            raise drift_error(source, names.live, schema, len(rows), list(by_kind.values()))
    out = {"columns": len(schema.fields), "sampled_lines": sampled, "sample_rejected": rejected,
           "backup_table": str(names.backup), "rejects_table": str(names.rejects), "live_schema": schema.json(),
           **catalog}
    ctx.done(out)
    return {"job_id": ctx.job_id, **{k: v for k, v in out.items() if k != "live_schema"}}


# -- load ----------------------------------------------------------------------------------------

def _partitions(spark: "SparkSession", table: TableName) -> list[str] | None:
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


def _count(spark: "SparkSession", table: TableName) -> int:
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
        rejected.select(F.col(_LINE).alias("line"), F.col(_REASON).alias("reason"), F.col(_FILE).alias("source_file"),
                        F.lit(job_id).alias("job_id")).write.insertInto(names.rejects.sql, overwrite=True)


def drop_staging(spark: "SparkSession", names: Names) -> None:
    """Drop this run's data table with its folder (and whatever a failed write left in it)."""
    drop(spark, names.data, "TABLE")


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
        rows, months = concurrently(lambda: _count(self.spark, self.names.data),
                                    lambda: _partitions(self.spark, self.names.data))
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
        write_rejects(self.spark, self.names, lines.filter(~F.col(_OK)), self.job_id)
        got = counted.get
        set_rejects_rows(self.spark, self.names, int(got["rejected"]))
        return int(got["read"]), int(got["rejected"]), int(got["malformed"])

    def changed(self, detail: str) -> SourceChanged:
        """The error of files that changed between two reads; the staging table is dropped first."""
        drop_staging(self.spark, self.names)
        return SourceChanged(f"the files under {self.source} changed during the load: {detail}; nothing replaced")


def load_phase(ctx: PhaseContext) -> dict:
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
    out = rec["outputs"]
    again = phase_entry(rec, "load")["deliveries"] > 1  # a retry or a redelivery
    with res.spark().session() as spark:
        if again and out.get("rows_accepted") is not None and table_kind(spark, names.data) \
                and _count(spark, names.data) == out["rows_accepted"]:
            ctx.done(note="already loaded")
            return {"job_id": ctx.job_id, "note": "already loaded", **_load_summary(out)}
        if "live_schema" not in out:  # validated by an earlier version of this workflow
            out = {**out, "live_schema": live_schema(spark, names.live, cfg).json()}
        if again or "backup_reads" not in out:
            # What validate saw may be stale: an earlier attempt wrote rejects, or this run's switch happened.
            out = {**out, **catalog_state(spark, names)}
        if names.data.table.lower() in out["backup_reads"]:
            raise FatalError(f"{names.backup} already reads {names.data}, this job's data table; a load never "
                             f"rewrites the table a backup reads (see the job record's write phase)")
        # The schema validate checked the sample with (and the live table's own checks passed on).
        schema = StructType.fromJson(json.loads(out["live_schema"]))
        load = Load(spark, names, source, schema, cfg, ctx.job_id)
        strict_error, _, dropped = concurrently(
            load.strict_write, lambda: clear_rejects(spark, names, cfg, out.get("previous_rejects")),
            lambda: load.drop_stale(out.get("stale_data_tables", [])))
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
        stats = {"rows_read": read, "rows_accepted": read - rejected, "rows_rejected": rejected,
                 "data_table": str(names.data), "rejects_table": str(names.rejects),
                 "previous_data_table": out.get("previous_data_table"),
                 "columns": [f.name for f in schema] + list(PARTITION_COLUMNS), "dropped_tables": dropped}
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
    stats.update(partitions_written=len(months), months=months)
    ctx.done(stats)
    return {"job_id": ctx.job_id, **_load_summary(stats)}


def _load_summary(out: dict) -> dict:
    return {k: out.get(k) for k in ("rows_read", "rows_accepted", "rows_rejected", "partitions_written")}


# -- write ---------------------------------------------------------------------------------------

def backup_target(spark: "SparkSession", names: Names) -> str | None:
    """The data table the backup view reads (lower case), or None if there is no backup yet."""
    return (properties_if_exists(spark, names.backup) or {}).get(PROP_DATA)


def swap_view(spark: "SparkSession", names: Names, columns: list[str], rows: int, job_id: str) -> None:
    """Point the backup view at this run's data table: one metastore operation, atomic for readers."""
    cols = ", ".join(f"`{identifier(c, 'column name')}`" for c in columns)
    with spark_errors(f"switch {names.backup} to {names.data}"):
        spark.sql(f"CREATE OR REPLACE VIEW {names.backup.sql} TBLPROPERTIES ("
                  f"'{PROP_DATA}'='{names.data.table.lower()}', '{PROP_JOB}'='{job_id}', '{PROP_ROWS}'='{int(rows)}') "
                  f"AS SELECT {cols} FROM {names.data.sql}")


def expire_versions(spark: "SparkSession", names: Names, suffix: str, keep: int) -> list[str]:
    """Versioned mode: drop the oldest backups of the table beyond ``keep`` (view, data tables and rejects)."""
    base = names.live.table.lower() + suffix.lower()
    version = re.compile(rf"^{re.escape(base)}_(\d{{8}})$")
    db, current = names.live.db, names.backup.table.lower()
    found = tables_like(spark, db, f"{base}_*")
    # Only views this workflow made; the current one always survives.
    versions = sorted((t for t, info in found.items() if version.match(t) and PROP_DATA in info["properties"]),
                      key=lambda v: (v == current, v), reverse=True)
    expired = []
    for name in versions[keep:]:
        data = re.compile(rf"^{data_table_regex(name)}$")
        drop(spark, TableName(db, name), "VIEW")
        rejects = found.get(f"{name}_rejects")
        ours = [t for t in found if data.match(t)] + \
            ([f"{name}_rejects"] if rejects and PROP_REJECTS_OF in rejects["properties"] else [])
        concurrently(*[lambda t=t: drop(spark, TableName(db, t), "TABLE") for t in ours])
        expired.append(f"{db}.{name}")
    return sorted(expired)


def write_phase(ctx: PhaseContext) -> dict:
    """Switch the backup onto this run's staging table, fenced by the lock.

    The staging table's rows and partitions were read back and checked at the end of the load.
    The data table the backup read until now stays as the previous generation, so that a
    query that started on it finishes on it; the next run's load drops it.
    """
    res, rec = ctx.res, ctx.rec
    args, out = rec["args"], rec["outputs"]
    names = names_of(rec)
    with res.spark().session() as spark:
        ctx.commit_check()
        try:
            swap_view(spark, names, out["columns"], out["rows_accepted"], ctx.job_id)
        except NotFound as e:
            raise FatalError(f"staging table {names.data} is gone (dropped by hand?); the backup is left as it was") \
                from e
        log.info("%s now reads %s (%d rows); the previous generation %s is kept until the next run", names.backup,
                 names.data, out["rows_accepted"], out.get("previous_data_table"))
        expired = expire_versions(spark, names, args["suffix"], args["retention"]) if args["versioned"] else []
    if expired:
        log.info("expired backups %s", expired)
    stats = {"backup_table": str(names.backup), "replaced_data_table": out.get("previous_data_table"),
             "expired_backups": expired}
    ctx.done(stats)
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
    out = rec["outputs"]
    return {"job_id": ctx.job_id, "state": rec["state"], **_load_summary(out),
            "backup_table": out.get("backup_table"), "rejects_table": out.get("rejects_table")}


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
    options=(Option("--source", "source", "folder of ;-CSV files the Spark cluster reads (absolute path or URI)"),
             Option("--suffix", "suffix", "backup name is DB.TABLE<suffix> (default from config, _bkp)"),
             Option("--versioned", "versioned", "one backup per day, <table><suffix>_YYYYMMDD", flag_only=True),
             Option("--retention", "retention", "--versioned: backups kept (default from config)", type=int),
             Option("--day", "day", "--versioned: date in the name, YYYY-MM-DD (default: today)")),
)

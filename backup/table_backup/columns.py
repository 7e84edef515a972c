"""Spark column expressions of the table-backup workflow: the CSV files read, typed as the live table, judged line by line.

``accepted_rows`` is the load's read (Spark's own CSV reader, the cost of the legacy
script's); ``explained_lines`` says for every line whether the load keeps it and, if not,
why (far more CPU per line: run on a sample, and over the files only when lines were left
out); ``sample_verdicts`` is the load's decision on a sample, without the reasons.  Nothing
here runs a Spark job by itself: each function builds a DataFrame or a Column, lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from base.errors import ConfigError
from config.settings import TableBackupSettings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Observation, SparkSession
    from pyspark.sql.types import StructType

PARTITION_COLUMNS = ("year_part", "month_part")

# Column names of the parsed frames (never written).  LINE, FILE, OK, REASON and KIND are what
# the phases and the rejects table read; the others stay inside this module.
LINE, FILE, _PARSED, _TYPED, _CORRUPT, _PDATE = ("_line", "_source_file", "_parsed", "_typed", "_corrupt_record",
                                                 "_pdate")
OK, REASON, KIND = "_ok", "_reason", "_kind"
# The parsed partition date beside the live columns in the load's first read (a live column may not be named so).
ROW_DATE = "__table_backup_date"

_MAX_VALUE_IN_REASON = 80


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
        frame, pdate = frame.select("*", date.alias(ROW_DATE)), F.col(ROW_DATE)
    else:  # past the filter an ISO text is a valid date, which a plain cast reads (shared by year and month)
        frame = frame.filter(is_date(text, cfg.date_format))
        pdate = text.cast("date") if iso else F.try_to_date(text, cfg.date_format)
    return frame.select(*_backup_columns(schema, cfg, lambda n: F.col(f"`{n}`"), pdate))


def data_lines(spark: "SparkSession", source: str, with_file: bool = False) -> "DataFrame":
    """The lines of the files that Spark's CSV reader parses (``_line``), and the file of each if asked."""
    from pyspark.sql import functions as F

    # The file name only where it is kept (rejects): Spark builds the whole _metadata struct for
    # every line once it is referenced, even if a later projection drops it.
    source_file = [F.col("_metadata.file_path").alias(FILE)] if with_file else []
    lines = spark.read.text(source).select(F.col("value").alias(LINE), *source_file)
    return lines.filter(data_line(F.col(LINE)))


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
    kept = [LINE] + ([FILE] if with_file else [])
    typed_ddl = read_ddl(schema, cfg) + f", `{_CORRUPT}` STRING"
    opts = {**csv_options(cfg), "columnNameOfCorruptRecord": _CORRUPT}
    frame = lines.select(*kept, F.from_csv(F.col(LINE), typed_ddl, opts).alias(_TYPED),
                         F.from_csv(F.col(LINE), read_ddl(schema, cfg, as_strings=True), csv_options(cfg))
                         .alias(_PARSED))

    def raw(name: str) -> "Column":
        return F.col(f"{_PARSED}.`{name}`")

    def typed(name: str) -> "Column":
        return F.col(f"{_TYPED}.`{name}`")

    def shown(value: "Column") -> "Column":
        return F.concat(F.lit("'"), F.substring(value, 1, _MAX_VALUE_IN_REASON), F.lit("'"))

    pcol = partition_field(schema, cfg).name
    step = frame.select("*", parse_date(typed(pcol), cfg.date_format).alias(_PDATE))
    line, pdate, corrupt = F.col(LINE), F.col(_PDATE), typed(_CORRUPT)
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
    step = step.select("*", ok.alias(OK))
    if seen is not None:
        # Between the parse and everything after it: also keeps a filter on _ok above the parse
        # (pushed below it, Spark would run the CSV parser again for every field the filter reads).
        step = step.observe(seen, F.count(F.lit(1)).alias("read"), F.count(F.when(~F.col(OK), 1)).alias("rejected"),
                            F.count(F.when(corrupt.isNotNull(), 1)).alias("malformed"))
    return step.select(*kept, *_backup_columns(schema, cfg, typed, pdate), F.col(OK), reason.alias(REASON),
                       kind.alias(KIND))


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
    return frame.limit(limit).select(ok.alias(OK), F.xxhash64(*[F.col(f"`{f.name}`") for f in schema]).alias("_all"))

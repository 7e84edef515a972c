"""Sample mediation tables for the demo, tests and benchmarks, generated inside the SQL engine.

Rows span the eight calendar months before the current one plus the current
month, so the default five-month window cuts through the data on both sides,
and carry the values a CSV export gets wrong: ``;``, quotes, newlines,
unicode, NULLs and empty strings.
"""

from __future__ import annotations

from base.identifiers import TableName, identifier

TRICKY_NOTES = ["plain", "semi;colon", 'say "hi"', "two\nlines", "crlf\r\nline", "Nørd Ørbit ✓ 日本", "", None]


def _sql_str(s: str | None) -> str:
    if s is None:
        return "CAST(NULL AS STRING)"
    # Spark SQL string literal: escape backslash and quote; newlines as escapes.
    esc = s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{esc}'"


def create_sample_table(hive, table: TableName, rows: int = 10_000, months_back: int = 8,
                        count: bool = True, sparse_dates: bool = False) -> int | None:
    """(Re)create ``table`` with ``rows`` generated rows partitioned by partition_date; returns the count read back.

    Every day of the span gets rows (one partition a day, ~270 for 8 months, as a real table has), unless
    ``sparse_dates``: then only the 1st, the 15th and the last day of each month, 3 partitions a month.  That
    keeps every boundary of a month-aligned window (its first day, its last, the days just outside) and costs
    a tenth of the files and metastore partitions: what the tests use, where each table was 15-50 s of the
    shared Spark server's time.

    ``count=False`` skips that read (None is returned): it lists every partition again,
    seconds of Spark per table that a caller checking its own results against the table does not need.
    """
    identifier(table.db, "database name")
    if not isinstance(rows, int) or rows < 0:
        raise ValueError("rows must be a non-negative integer")
    if not isinstance(months_back, int) or months_back < 0:
        raise ValueError("months_back must be a non-negative integer")
    hive.execute(f"CREATE DATABASE IF NOT EXISTS `{table.db}`", "create database")
    hive.execute(f"DROP TABLE IF EXISTS {table.sql}", "drop sample table")
    hive.execute(
        f"CREATE TABLE {table.sql} (id BIGINT, msisdn STRING, customer STRING, note STRING, "
        f"bytes_up BIGINT, amount DOUBLE, event_ts TIMESTAMP, partition_date STRING) "
        f"USING parquet PARTITIONED BY (partition_date)", "create sample table")
    notes = ", ".join(_sql_str(n) for n in TRICKY_NOTES)
    start = f"add_months(trunc(current_date(), 'MM'), -{int(months_back)})"
    if sparse_dates:
        # Row id -> (month, slot): slot 0 the month's first day, 1 its 15th, 2 its last.
        slots = 3 * (months_back + 1)
        month = f"add_months({start}, cast(id % {slots} AS INT) DIV 3)"
        day = (f"CASE cast(id % {slots} AS INT) % 3 WHEN 0 THEN {month} WHEN 1 THEN date_add({month}, 14) "
               f"ELSE last_day({month}) END")
    else:
        day = f"date_add({start}, cast(id % (datediff(last_day(current_date()), {start}) + 1) AS INT))"
    if rows:
        hive.execute(
            f"INSERT INTO {table.sql} SELECT id, "
            f"concat('4479', lpad(cast(id % 100000000 AS STRING), 8, '0')), "
            f"element_at(array('Acme;Telecom', 'O\"Brien Mobile', 'Zoë GmbH', 'north'), cast(id % 4 AS INT) + 1), "
            f"element_at(array({notes}), cast(id % {len(TRICKY_NOTES)} AS INT) + 1), "
            f"CASE WHEN id % 13 = 0 THEN NULL ELSE id * 37 % 100000 END, "
            f"CASE WHEN id % 17 = 0 THEN NULL ELSE round((id % 10000) / 7.0, 4) END, "
            f"CAST({day} AS TIMESTAMP) + make_interval(0,0,0,0,0,0, id % 86400), "
            f"date_format({day}, 'yyyy-MM-dd') "
            f"FROM range({rows})", "insert sample rows")
    if not count:
        return None
    return int(hive.query(f"SELECT count(*) FROM {table.sql}", "count sample rows")[0][0])

"""table-backup on the local platform's Spark (Spark Connect) and HiveServer2, one JVM sharing one catalog.

Backups are read back with a plain impyla cursor over HiveServer2, as the platform's other
tools would.  The first tests go through a real worker (entry task enqueued by name, and the
CLI); the others run the phase functions in-process, the way the chain runs them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from contextlib import closing
from pathlib import Path

import pytest
from impala.dbapi import connect

from backup import table_backup as wf
from backup.table_backup import catalog, columns
from backup.table_backup.names import names_of
from base.errors import (AlreadyExists, BackupError, ConnectionFailed, RejectsExceeded, SchemaDrift,
                           LockLost, SourceChanged)
from backup.resources import Resources
from backup.runner import fail_job, phase
from config.settings import load_settings
from tests.conftest import CONFIG_PATH, STATE, write_config
from tests.helpers import backupctl, enqueue, hdfs, run_phases_inline, wait_job, warehouse_folder

pytestmark = pytest.mark.integration

DB = "mnaas_tb"
LIVE_DDL = ("(id BIGINT, msisdn STRING, customer STRING, note STRING, bytes_up BIGINT, amount DOUBLE, "
            "event_ts TIMESTAMP, partition_date STRING) USING parquet PARTITIONED BY (partition_date)")
CUSTOMERS = ["Acme;Telecom", 'O"Brien Mobile', "Zoë GmbH", "north"]
NOTES = ["plain", "semi;colon", 'say "hi"', "Nørd Ørbit ✓ 日本", None]
FIRST_DAY = dt.date(2025, 9, 1)
DAYS = 212  # 2025-09-01 .. 2026-03-31: seven calendar months

# Rejected lines and the reason each must be listed with (the files hold them between good lines).
BAD_LINES = [
    ("900001;447900000001;north;plain;1;1.0;2026-01-05 10:00:00;2026-02-30",
     "partition_date '2026-02-30' is not a date (yyyy-MM-dd)"),
    ("900002;447900000002;north;plain;1;1.0;2026-01-05 10:00:00;05/01/2026",
     "partition_date '05/01/2026' is not a date (yyyy-MM-dd)"),
    ("900003;447900000003;north;plain;1;1.0;2026-01-05 10:00:00;", "partition_date is missing"),
    ("900004;447900000004;north;plain;1;1.0;2026-01-05", "expected 8 fields, found 7"),
    ("900005;447900000005;north;semi;colon;1;1.0;2026-01-05 10:00:00;2026-01-05", "expected 8 fields, found 9"),
    ('900006;447900000006;"Acme;Telecom";"semi;colon;1;1.0;2026-01-05 10:00:00;2026-01-05',
     "unbalanced quote (a quoted field is not closed)"),
    ("900007;447900000007;north;plain;lots;1.0;2026-01-05 10:00:00;2026-01-05", "bytes_up 'lots' is not a BIGINT"),
]


def good_rows(n: int, first_id: int = 0) -> list[tuple]:
    """Rows as impyla returns them from the backup: the live columns, then year_part, month_part."""
    rows = []
    for i in range(first_id, first_id + n):
        day = FIRST_DAY + dt.timedelta(days=i % DAYS)
        ts = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=i * 7 % 86400)
        rows.append((i, f"4479{i:08d}", CUSTOMERS[i % 4], NOTES[i % len(NOTES)],
                     None if i % 13 == 0 else i * 37 % 100000, None if i % 17 == 0 else round(i % 1000 / 7, 4),
                     ts, day.isoformat(), day.year, day.month))
    return rows


def csv_line(values) -> str:
    """One ``;``-CSV line as the legacy loaders write it (RFC 4180 quoting), empty for NULL."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=";", quotechar='"', lineterminator="").writerow(
        ["" if v is None else (v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, dt.datetime) else v) for v in values])
    return buf.getvalue()


def write_lines(folder: Path, lines: list[str], parts: int = 1) -> Path:
    """The lines split over ``parts`` files of one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(lines) // parts)
    for p in range(parts):
        (folder / f"part-{p:03d}.csv").write_text("\n".join(lines[p * size:(p + 1) * size]) + "\n", encoding="utf-8")
    return folder


def write_files(folder: Path, rows: list[tuple], extra_lines: list[str] = (), parts: int = 3) -> Path:
    """The rows' live columns as CSV files, with ``extra_lines`` spread between them."""
    lines = [csv_line(r[:8]) for r in rows]
    for k, extra in enumerate(extra_lines):
        lines.insert(min(len(lines), 37 * (k + 1)), extra)
    return write_lines(folder, lines, parts)


def execute(settings, *statements: str) -> None:
    """Run statements on HiveServer2 with a plain impyla connection."""
    with closing(connect(settings.hive.host, settings.hive.port, auth_mechanism="NOSASL")) as conn, \
            closing(conn.cursor()) as cur:
        for sql in statements:
            cur.execute(sql)


def query(settings, sql: str) -> list[tuple]:
    """A query's rows over HiveServer2, read with a plain impyla connection."""
    with closing(connect(settings.hive.host, settings.hive.port, auth_mechanism="NOSASL")) as conn, \
            closing(conn.cursor()) as cur:
        cur.execute(sql)
        return cur.fetchall()


def backup_rows(settings, backup: str) -> list[tuple]:
    return query(settings, f"SELECT id, msisdn, customer, note, bytes_up, amount, event_ts, partition_date, "
                           f"year_part, month_part FROM {backup} ORDER BY id")


def assert_same_rows(got: list[tuple], expected: list[tuple]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, sorted(expected)):
        assert g[:5] == e[:5] and g[6:] == e[6:], (g, e)
        assert (g[5] is None) if e[5] is None else g[5] == pytest.approx(e[5])


def tables_of(settings, prefix: str) -> set[str]:
    return {r[1] for r in query(settings, f"SHOW TABLES IN {DB}") if r[1].startswith(prefix)}


def new_live(settings, name: str) -> str:
    """An empty live table: the schema comes from the catalog, no row needed."""
    table = f"{DB}.{name}"
    execute(settings, f"CREATE TABLE {table} {LIVE_DDL}")
    return table


def run_phases(res: Resources, job_id: str) -> dict:
    """Run the phases in-process as the chain does; a failure is recorded like the chain's errback, then raised."""
    return run_phases_inline(res, wf.DEFINITION, job_id)


def backup_inprocess(res: Resources, table: str, source: Path, **kwargs) -> dict:
    rec = wf.submit(res, table, source.as_uri(), **kwargs)
    assert rec["state"] == "queued", rec
    return run_phases(res, rec["job_id"])


def resources_with(res: Resources, name: str, overrides: dict) -> Resources:
    return Resources(load_settings(write_config(STATE / name, overrides)), _redis=res.redis)


@pytest.fixture(scope="module", autouse=True)
def fresh_database(platform, settings):
    """The test database, empty (a platform reused from an earlier session may still hold it)."""
    execute(settings, f"DROP DATABASE IF EXISTS {DB} CASCADE", f"CREATE DATABASE {DB}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("table-backup")


# -- through a real worker ---------------------------------------------------------------------

def test_backup_through_worker_read_back_with_impyla(settings, res, worker, celery_app, files):
    table = new_live(settings, "traffic_main")
    rows = good_rows(3000)
    src = write_files(files / "main", rows)
    job_id = enqueue(celery_app, "backup.table_backup", table=table, source=src.as_uri())
    rec = wait_job(res, job_id, timeout=240)
    assert rec["state"] == "success", rec
    out = rec["outputs"]
    backup = f"{table}_bkp"
    months = sorted({f"{r[8]:04d}-{r[9]:02d}" for r in rows})
    assert (out["rows_read"], out["rows_accepted"], out["rows_rejected"]) == (3000, 3000, 0)
    assert (out["partitions_written"], out["months"]) == (7, months)
    assert (out["backup_table"], out["rejects_table"]) == (backup, f"{backup}_rejects")
    assert res.locks.holder("table-backup", table) is None

    # Every value round-trips: ; and quotes inside quoted fields, unicode, empty fields as NULL.
    got = backup_rows(settings, backup)
    assert_same_rows(got, rows)
    assert {r[2] for r in got} == set(CUSTOMERS)
    per_month = query(settings, f"SELECT year_part, month_part, count(*) FROM {backup} GROUP BY 1, 2 ORDER BY 1, 2")
    expected = sorted({(r[8], r[9]) for r in rows})
    assert [(y, m) for y, m, _ in per_month] == expected
    assert [n for _, _, n in per_month] == [sum(1 for r in rows if (r[8], r[9]) == k) for k in expected]
    assert query(settings, f"SELECT count(*) FROM {backup}_rejects") == [(0,)]
    # Partitioned on disk by year_part/month_part, behind the view readers use.
    data = out["data_table"]
    parts = query(settings, f"SHOW PARTITIONS {data}")
    assert sorted(p[0] for p in parts) == sorted(f"year_part={y}/month_part={m}" for y, m in expected)

    # A second run (through the CLI) replaces the content; the first run's data table stays as the previous
    # generation (a query that started on it finishes on it) until the next run drops it.
    rows2 = good_rows(500, first_id=10_000)
    src2 = write_files(files / "main2", rows2, parts=1)
    audit = settings.path(settings.platform.state_dir) / "logs" / "spark.log"  # the metastore's audit lines
    mark = audit.stat().st_size
    cli = backupctl("run", "table-backup", table, "--source", src2.as_uri(), "--wait", "--json", config=CONFIG_PATH)
    assert cli.returncode == 0, cli.stderr
    rec2 = json.loads(cli.stdout)
    data1, data2 = data.split(".")[1], rec2["outputs"]["data_table"].split(".")[1]
    # The switch of an existing backup is one alter_table: never a drop of the view (Spark's CREATE OR REPLACE
    # VIEW drops and re-creates it, and a reader in between finds no backup at all).
    switched = audit.read_bytes()[mark:].decode(errors="replace")
    assert f"cmd=alter_table: db={DB} tbl=traffic_main_bkp " in switched
    assert f"cmd=drop_table : db={DB} tbl=traffic_main_bkp\t" not in switched
    # A worker lost between the switch and the view's properties: the view reads data2, its property still
    # names data1.  What the backup reads is the view's SQL: the failed job's cleanup keeps data2.
    names2 = names_of(res.jobs.get(rec2["job_id"]))
    with res.spark().session() as spark:
        spark.sql(f"ALTER VIEW {backup} SET TBLPROPERTIES ('{catalog.PROP_DATA}'='{data1}')")
        assert catalog.backup_target(spark, names2) == data2
    wf.drop_unswitched_staging(res, res.jobs.get(rec2["job_id"]))
    with res.spark().session() as spark:
        spark.sql(f"ALTER VIEW {backup} SET TBLPROPERTIES ('{catalog.PROP_DATA}'='{data2}')")
    assert rec2["outputs"]["replaced_data_table"] == data1
    assert_same_rows(backup_rows(settings, backup), rows2)
    assert tables_of(settings, "traffic_main_bkp") == {"traffic_main_bkp", "traffic_main_bkp_rejects", data1, data2}
    assert query(settings, f"SELECT count(*) FROM {data}") == [(3000,)]

    # The third run drops the first generation and a table a crashed run left behind; the second stays.
    leftover = "traffic_main_bkp__0a1b2c3d4e5f"
    execute(settings, f"CREATE TABLE {DB}.{leftover} (id BIGINT) USING parquet")
    rec3 = backup_inprocess(res, table, src)
    assert rec3["state"] == "success", rec3
    assert sorted(rec3["outputs"]["dropped_tables"]) == sorted([f"{DB}.{data1}", f"{DB}.{leftover}"])
    assert tables_of(settings, "traffic_main_bkp") == {"traffic_main_bkp", "traffic_main_bkp_rejects", data2,
                                                      rec3["outputs"]["data_table"].split(".")[1]}
    assert_same_rows(backup_rows(settings, backup), rows)


def test_bad_requests_fail_before_any_phase(settings, res, worker, celery_app):
    for kwargs, message in [({"table": "db.t; DROP TABLE x", "source": "/data"}, "InvalidInput: invalid table name"),
                            ({"table": "db.t", "source": "relative/dir"}, "InvalidInput: invalid source"),
                            ({"table": "db.t", "source": "/data", "retention": 3}, "versioned backups only"),
                            ({"tabel": "db.t", "source": "/data"}, "unexpected keyword argument 'tabel'")]:
        rec = wait_job(res, enqueue(celery_app, "backup.table_backup", **kwargs))
        assert rec["state"] == "failed" and message in rec["error"], rec
        assert all(p["state"] == "pending" and p["attempts"] == 0 for p in rec["phases"])
    out = backupctl("run", "table-backup", "db.t", "--source", "rel", config=CONFIG_PATH)
    assert out.returncode == 2 and out.stderr.startswith("backupctl: error: InvalidInput: invalid source")


def test_unknown_table_is_fatal_not_retried(settings, res, worker, celery_app, files):
    src = write_files(files / "unknown", good_rows(20), parts=1)
    rec = wait_job(res, enqueue(celery_app, "backup.table_backup", table=f"{DB}.no_such_table", source=src.as_uri()))
    assert rec["state"] == "failed" and rec["phase"] == "validate", rec
    assert rec["error"].startswith("NotFound:") and "no_such_table" in rec["error"]
    assert next(p for p in rec["phases"] if p["name"] == "validate")["attempts"] == 1


# -- in-process ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline(platform, settings, redis_client, files):
    """A table with a first backup of 1000 rows: what later failures must leave readable."""
    res = Resources(settings, _redis=redis_client)
    table = new_live(settings, "traffic_base")
    rows = good_rows(1000)
    rec = backup_inprocess(res, table, write_files(files / "base", rows))
    assert rec["state"] == "success", rec
    return {"table": table, "backup": f"{table}_bkp", "rows": rows, "data": rec["outputs"]["data_table"]}


def assert_baseline_intact(settings, base: dict) -> None:
    assert_same_rows(backup_rows(settings, base["backup"]), base["rows"])
    props = dict(query(settings, f"SHOW TBLPROPERTIES {base['backup']}"))
    assert props[catalog.PROP_DATA] == base["data"].split(".")[1]
    assert tables_of(settings, "traffic_base_bkp") == {"traffic_base_bkp", "traffic_base_bkp_rejects",
                                                      base["data"].split(".")[1]}


def test_rejects_listed_with_reasons_and_ratio_enforced(settings, res, files):
    table = new_live(settings, "traffic_rejects")
    rows = good_rows(1200)
    src = write_files(files / "rejects", rows, extra_lines=[line for line, _ in BAD_LINES])
    tolerant = resources_with(res, "tb-tolerant.yaml", {"table_backup": {"max_reject_ratio": 0.01}})
    rec = backup_inprocess(tolerant, table, src)
    assert rec["state"] == "success", rec
    out = rec["outputs"]
    assert (out["rows_read"], out["rows_accepted"], out["rows_rejected"]) == (1207, 1200, 7)
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)
    rejects = query(settings, f"SELECT line, reason, source_file, job_id FROM {table}_bkp_rejects")
    assert sorted((line, reason) for line, reason, _, _ in rejects) == sorted(BAD_LINES)
    assert all(f.startswith("file:") and f.endswith(".csv") and j == rec["job_id"] for _, _, f, j in rejects)

    # Default ratio 0: the same files fail after the rejects are written; the previous backup stays.
    with pytest.raises(RejectsExceeded, match=r"7 of 1207 lines rejected") as e:
        backup_inprocess(res, table, src)
    assert f"{table}_bkp_rejects" in str(e.value)
    failed = res.jobs.last("table-backup", table)
    assert failed["state"] == "failed" and failed["phase"] == "load"
    assert failed["outputs"]["rows_rejected"] == 7
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)
    assert {r[0] for r in query(settings, f"SELECT DISTINCT job_id FROM {table}_bkp_rejects")} == {failed["job_id"]}
    assert tables_of(settings, "traffic_rejects_bkp__") == {out["data_table"].split(".")[1]}, "staging dropped"
    # The malformed lines stopped the first (FAILFAST) write; dropping the staging table removed its folder too.
    staging = names_of(failed).data.table.lower()
    with hdfs(settings) as fs:
        assert fs.stat(warehouse_folder(f"{DB}.{staging}")) is None
    assert dict(query(settings, f"SHOW TBLPROPERTIES {table}_bkp_rejects"))[catalog.PROP_REJECTS_ROWS] == "7"

    # A clean run empties the rejects table: it holds the latest run's rejects only.
    clean = backup_inprocess(res, table, write_files(files / "rejects-clean", rows[:100], parts=1))
    assert clean["state"] == "success" and clean["outputs"]["rows_rejected"] == 0
    assert query(settings, f"SELECT count(*) FROM {table}_bkp_rejects") == [(0,)]
    assert dict(query(settings, f"SHOW TBLPROPERTIES {table}_bkp_rejects"))[catalog.PROP_REJECTS_ROWS] == "0"


def test_schema_drift_fails_before_writing(settings, res, baseline, files):
    src = write_lines(files / "drift-columns", [csv_line(r[:8] + ("surplus",)) for r in good_rows(300)])
    with pytest.raises(SchemaDrift) as e:
        backup_inprocess(res, baseline["table"], src)
    msg = str(e.value)
    assert "300 of 300 sampled lines fail to parse" in msg
    assert "Expected 8 fields: id BIGINT, msisdn STRING" in msg and "expected 8 fields, found 9 (300 lines)" in msg
    rec = res.jobs.last("table-backup", baseline["table"])
    assert rec["phase"] == "validate" and all(p["state"] == "pending" for p in rec["phases"][2:])
    assert_baseline_intact(settings, baseline)

    # Columns swapped around: the field count fits, but most values do not.
    swapped = write_lines(files / "drift-types", [csv_line(r[:4] + (r[6], r[5], r[4], r[7])) for r in good_rows(200)])
    with pytest.raises(SchemaDrift, match=r"bytes_up '\d{4}-\d\d-\d\d [\d:]{8}' is not a BIGINT") as e:
        backup_inprocess(res, baseline["table"], swapped)
    assert "200 of 200 sampled lines" in str(e.value)
    assert_baseline_intact(settings, baseline)


def test_failure_between_staging_and_swap_keeps_previous_backup(settings, res, baseline, files, monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionFailed("injected: metastore unreachable at the switch")

    monkeypatch.setattr(wf, "swap_view", unreachable)
    src = write_files(files / "swap-fails", good_rows(400, first_id=50_000), parts=1)
    rec = wf.submit(res, baseline["table"], src.as_uri())
    staging = names_of(rec).data
    with pytest.raises(ConnectionFailed, match="injected") as e:
        for name in wf.DEFINITION.phase_names:
            with phase(res, rec["job_id"], name) as ctx:
                wf.DEFINITION.phase(name).run(ctx)
    assert ctx.name == "write"
    # At the failure: the staging table is complete, readers still get the previous backup.
    assert query(settings, f"SELECT count(*) FROM {staging}") == [(400,)]
    assert_same_rows(backup_rows(settings, baseline["backup"]), baseline["rows"])

    final = fail_job(res, rec["job_id"], "write", e.value, cleanup=lambda r: wf.discard_staging(res, r))
    assert final["state"] == "failed" and final["outputs"]["rows_accepted"] == 400
    assert res.locks.holder("table-backup", baseline["table"]) is None
    assert_baseline_intact(settings, baseline)  # staging dropped by the failure cleanup, nothing else changed


def test_existing_table_under_backup_name_is_not_replaced(settings, res, files):
    table = new_live(settings, "traffic_legacy")
    execute(settings, f"CREATE TABLE {table}_bkp (id BIGINT) USING parquet", f"INSERT INTO {table}_bkp VALUES (42)")
    with pytest.raises(AlreadyExists, match=r"traffic_legacy_bkp exists as a MANAGED .*RENAME TO"):
        backup_inprocess(res, table, write_files(files / "legacy", good_rows(50), parts=1))
    assert query(settings, f"SELECT id FROM {table}_bkp") == [(42,)]


def test_versioned_mode_keeps_exactly_n(settings, res, files):
    table = new_live(settings, "traffic_versions")
    execute(settings, f"CREATE TABLE {table}_bkp_20200101 (id BIGINT) USING parquet")  # not ours: never expired
    src = write_files(files / "versions", good_rows(150), parts=1)
    recs = [backup_inprocess(res, table, src, versioned=True, retention=2, day=day)
            for day in ("2026-01-01", "2026-01-02", "2026-01-02", "2026-01-03")]
    assert all(r["state"] == "success" for r in recs)
    assert recs[3]["outputs"]["expired_backups"] == [f"{table}_bkp_20260101"]
    views = {t for t in tables_of(settings, "traffic_versions_bkp_")
             if catalog.PROP_DATA in dict(query(settings, f"SHOW TBLPROPERTIES {DB}.{t}"))}
    assert views == {"traffic_versions_bkp_20260102", "traffic_versions_bkp_20260103"}
    for view in views:
        assert query(settings, f"SELECT count(*) FROM {DB}.{view}") == [(150,)]
    left = tables_of(settings, "traffic_versions_bkp_")
    assert not any(t.startswith("traffic_versions_bkp_20260101") for t in left), left
    assert "traffic_versions_bkp_20200101" in left
    # The day run twice keeps its previous generation; expiring the day drops every generation of it.
    assert len(tables_of(settings, "traffic_versions_bkp_20260102__")) == 2
    rec = backup_inprocess(res, table, src, versioned=True, retention=2, day="2026-01-04")
    assert rec["outputs"]["expired_backups"] == [f"{table}_bkp_20260102"]
    assert not tables_of(settings, "traffic_versions_bkp_20260102"), tables_of(settings, "traffic_versions_bkp_")


@pytest.mark.parametrize("fmt", ["yyyy-MM-dd", "dd/MM/yyyy"])
def test_partition_date_parsing_agrees_with_spark_pattern_parser(res, fmt):
    """The fast path for yyyy-MM-dd (shape check + cast) accepts exactly what try_to_date accepts."""
    from pyspark.sql import functions as F

    values = ["2025-01-05", "2025-1-5", "2025-1-05", "2025-02-29", "2024-02-29", "2025-13-01", "2025-00-10",
              "2025-01-32", "+202-01-05", "2025-01-05\r", " 2025-01-05", "2025-01-05 ", "2025-01-05T10",
              "2025-01-05 10:00:00", "2025", "2025-01", "", None, "２０２５-01-05", "0000-01-01", "9999-12-31",
              "05/01/2025", "5/1/2025", "31/02/2025", "2025-01-1T", "2025-01-1 ", "2025-01-1\t", " 025-01-05",
              "-025-01-05", "2025-01- 5", "2025-1x-05", "2025-01-0x", "2025/01/05", "2025-01-05x",
              # forms Spark's cast reads in ten bytes: a one-digit day or month plus a trimmed or T
              # suffix, a leading space, more year digits, a missing day
              "2025-01-5 ", "2025-01-5T", "2025-01-5\t", "2025-01-5\x00", "2025-01-5\x1f", "2025-01-5\x7f",
              "2025-1-05 ", " 2025-1-05", "02025-1-05", "2025010-05", "   2025-05", "2025-05   ", "2025-1-5T1",
              "2025-01-05\n", "\x002025-01-05"]
    with res.spark().session() as spark:
        df = spark.createDataFrame([(v,) for v in values], "v string")
        rows = df.select("v", columns.parse_date(F.col("v"), fmt).cast("string").alias("ours"),
                         F.coalesce(columns.is_date(F.col("v"), fmt), F.lit(False)).alias("is_date"),
                         F.try_to_date("v", fmt).cast("string").alias("spark")).collect()
    assert [(r.v, r.ours) for r in rows] == [(r.v, r.spark) for r in rows]
    assert [(r.v, r.is_date) for r in rows] == [(r.v, r.spark is not None) for r in rows]
    accepted = {r.v for r in rows if r.ours is not None}
    assert accepted == ({"2025-01-05", "2024-02-29", "0000-01-01", "9999-12-31"} if fmt == "yyyy-MM-dd"
                        else {"05/01/2025"})


def test_a_date_fixed_between_the_reads_is_taken_as_the_files_changing(settings, res, baseline, files, monkeypatch):
    """A line without a valid date sends the load to the exact path; if the rejects pass then finds every date
    valid, the files changed between the reads: SourceChanged (retryable), nothing replaced."""
    src = write_files(files / "rewritten", good_rows(300, first_id=70_000), extra_lines=[BAD_LINES[1][0]], parts=1)
    tolerant = resources_with(res, "tb-tolerant-rewritten.yaml", {"table_backup": {"max_reject_ratio": 0.5}})
    original = wf.write_rejects

    def fix_then_write(spark, names, rejected, job_id):
        for path in src.iterdir():  # a producer rewrites the file in place between the two reads
            path.write_text(path.read_text().replace(";05/01/2026\n", ";2026-01-05\n"))
        return original(spark, names, rejected, job_id)

    monkeypatch.setattr(wf, "write_rejects", fix_then_write)
    rec = wf.submit(tolerant, baseline["table"], src.as_uri())
    with pytest.raises(SourceChanged, match="a row without a valid date was written, then every date was valid"):
        run_phases(tolerant, rec["job_id"])
    final = tolerant.jobs.get(rec["job_id"])
    assert final["state"] == "failed" and final["phase"] == "load" and final["error"].startswith("SourceChanged:")
    assert SourceChanged.retryable
    assert not tables_of(settings, names_of(rec).data.table.lower()), "staging dropped"
    assert_baseline_intact(settings, baseline)


def test_a_line_without_a_valid_date_takes_the_exact_path(settings, res, files):
    """The first read has no filter: 2026-02-30 gets no year and lands in a NULL partition, which sends the load
    to the rejects first and then to a read that checks every date; nothing of it reaches the backup."""
    table = new_live(settings, "traffic_impossible")
    rows = good_rows(400)
    src = write_files(files / "impossible", rows, extra_lines=[BAD_LINES[0][0]], parts=2)
    tolerant = resources_with(res, "tb-tolerant-impossible.yaml", {"table_backup": {"max_reject_ratio": 0.01}})
    rec = backup_inprocess(tolerant, table, src)
    assert rec["state"] == "success", rec
    out = rec["outputs"]
    assert (out["rows_read"], out["rows_accepted"], out["rows_rejected"]) == (401, 400, 1)
    assert query(settings, f"SELECT line, reason FROM {table}_bkp_rejects") == [BAD_LINES[0]]
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)
    parts = [p[0] for p in query(settings, f"SHOW PARTITIONS {out['data_table']}")]
    assert len(parts) == out["partitions_written"] == 7 and not any("DEFAULT_PARTITION" in p for p in parts)


# Lines around the edges of Spark's CSV converters: (msisdn, line); the msisdn identifies a line.
EDGE_LINES = [f"{i};edge{i:03d};{rest}" for i, rest in enumerate([
    "north;plain;1;1.5;2025-01-05 10:00:00;2025-01-05",          # fine
    "north;plain;;;;2025-01-05",                                  # empty values are NULL
    "north;plain; 12;1.5;2025-01-05 10:00:00;2025-01-05",         # BIGINT with a space
    "north;plain;+12;1.5;2025-01-05 10:00:00;2025-01-05",
    "north;plain;1.0;1.5;2025-01-05 10:00:00;2025-01-05",
    "north;plain;9223372036854775808;1;2025-01-05 10:00:00;2025-01-05",  # BIGINT overflow
    "north;plain;1;NaN;2025-01-05 10:00:00;2025-01-05",
    "north;plain;1;1e3;2025-01-05 10:00:00;2025-01-05",
    "north;plain;1;1,5;2025-01-05 10:00:00;2025-01-05",
    "north;plain;1; 1.5 ;2025-01-05 10:00:00;2025-01-05",
    "north;plain;1;1.5;2025-01-05;2025-01-05",                    # TIMESTAMP without time
    "north;plain;1;1.5;2025-01-05T10:00:00;2025-01-05",
    "north;plain;1;1.5;2025-01-05 25:00:00;2025-01-05",
    "north;plain;1;1.5;05/01/2025 10:00;2025-01-05",
    "north;plain;1;1.5;2025-01-05 10:00:00+02:00;2025-01-05",
    "north;plain;1;1.5;2025-01-05 10:00:00;2025-1-5",
    "north;plain;1;1.5;2025-01-05 10:00:00; 2025-01-05",
    "north;plain;1;1.5;2025-01-05 10:00:00;2024-02-29",
    "north;plain;1;1.5;2025-01-05 10:00:00;",
    '"north;east";"say ""hi""";1;1.5;2025-01-05 10:00:00;2025-01-05',
    '"north;plain;1;1.5;2025-01-05 10:00:00;2025-01-05',          # unclosed quote
    'nor"th;plain;1;1.5;2025-01-05 10:00:00;2025-01-05',          # quote inside an unquoted field
    "north;plain;1;1.5;2025-01-05 10:00:00",                      # 7 fields
    "north;plain;1;1.5;2025-01-05 10:00:00;2025-01-05;",          # 9 fields
    "north;\u00a0;1;1.5;2025-01-05 10:00:00;2025-01-05",           # NBSP is not blank
    "north;plain;1;1.5;2025-01-05 10:00:00;2025-02-30",           # the right shape, no such day
])]
BLANK_LINES = ["", " ", "\t", " \x0b ", "\x1f", "\x00"]


def test_every_pass_decides_every_line_alike(res, files):
    """The strict (FAILFAST) and exact (DROPMALFORMED) reads, validate's sample and the explanation
    pass (from_csv) keep exactly the same lines.

    The load trusts this: a strict read that succeeds made a row of every data line (as many as
    the files' line count), those without a valid date with a NULL year; a malformed record stops
    it; the exact read keeps what explained_lines accepts.  Blank lines are skipped by every pass
    and by the line count.
    """
    src = files / "edges"
    src.mkdir()
    (src / "part-000.csv").write_text("\n".join(EDGE_LINES[:12] + BLANK_LINES + EDGE_LINES[12:]) + "\n",
                                      encoding="utf-8")
    cfg = res.settings.table_backup
    with res.spark().session() as spark:
        schema = spark.createDataFrame([], LIVE_DDL.split(" USING")[0].strip("()")).schema
        # Every column read, as the load's write does (the reader checks only the columns a query reads).
        kept = {r.msisdn for r in columns.accepted_rows(spark, src.as_uri(), schema, cfg, strict=False).collect()}
        explained = columns.explained_lines(spark, src.as_uri(), schema, cfg).select("msisdn", "_ok", "_reason", "_kind") \
            .collect()
        sampled = [r["_ok"] for r in columns.sample_verdicts(spark, src.as_uri(), schema, cfg, 1000).collect()]
        lines = columns.data_lines(spark, src.as_uri()).count()
        csv_rows = spark.read.options(**columns.csv_options(cfg)).schema(columns.read_ddl(schema, cfg, as_strings=True)) \
            .csv(src.as_uri()).count()
        # The strict read over the lines that are not malformed: a row for each, no year where the date is bad.
        fine = [line for line, r in zip(EDGE_LINES, explained) if not (r["_kind"] or "").startswith(("quote", "fields",
                                                                                                         "type", "malformed"))]
        (files / "edges-fine").mkdir()
        (files / "edges-fine" / "part-000.csv").write_text("\n".join(fine + BLANK_LINES) + "\n", encoding="utf-8")
        strict_rows = columns.accepted_rows(spark, (files / "edges-fine").as_uri(), schema, cfg, strict=True).collect()
        strict = {r.msisdn for r in strict_rows if r.year_part is not None}
        undated = {r.msisdn for r in strict_rows if r.year_part is None}
        # FAILFAST over each malformed line (between two good ones): fails.
        malformed = [line for line in EDGE_LINES if line not in fine]
        for k, line in enumerate(malformed):
            folder = files / f"edges-bad-{k}"
            folder.mkdir()
            (folder / "part-000.csv").write_text("\n".join([EDGE_LINES[0], line, EDGE_LINES[1]]) + "\n", encoding="utf-8")
            with pytest.raises(Exception, match="MALFORMED_RECORD_IN_PARSING"):
                columns.accepted_rows(spark, folder.as_uri(), schema, cfg, strict=True).collect()
    assert lines == len(explained) == csv_rows == len(EDGE_LINES)
    assert [r.msisdn for r in explained] == [line.split(";")[1] for line in EDGE_LINES]  # file order
    assert kept == strict == {r.msisdn for r in explained if r["_ok"]}
    assert len(strict_rows) == len(fine) == 17 and len(malformed) == 9
    assert all(r.month_part is None for r in strict_rows if r.msisdn in undated)
    assert undated == {r.msisdn for r in explained if (r["_kind"] or "").startswith("date")}
    assert undated == {"edge015", "edge016", "edge018", "edge025"}
    assert sampled == [r["_ok"] for r in explained]
    assert all((r["_reason"] is None) == r["_ok"] for r in explained)
    reasons = {r.msisdn: r["_reason"] for r in explained}
    # A few of the decisions, as the legacy reader's converters make them.
    assert {"edge000", "edge001", "edge003", "edge007", "edge017", "edge019", "edge024"} <= kept
    assert reasons["edge002"] == "bytes_up ' 12' is not a BIGINT"
    assert reasons["edge005"] == "bytes_up '9223372036854775808' is not a BIGINT"
    assert reasons["edge008"] == "amount '1,5' is not a DOUBLE"
    assert reasons["edge015"] == "partition_date '2025-1-5' is not a date (yyyy-MM-dd)"
    assert reasons["edge018"] == "partition_date is missing"
    assert reasons["edge020"] == "unbalanced quote (a quoted field is not closed)"
    assert reasons["edge022"] == "expected 8 fields, found 7"
    assert reasons["edge023"] == "expected 8 fields, found 9"
    assert reasons["edge025"] == "partition_date '2025-02-30' is not a date (yyyy-MM-dd)"


def test_blank_lines_are_neither_rows_nor_rejects(settings, res, files):
    table = new_live(settings, "traffic_blank")
    rows = good_rows(120)
    src = write_files(files / "blank", rows, extra_lines=BLANK_LINES, parts=2)
    rec = backup_inprocess(res, table, src)
    assert rec["state"] == "success", rec
    out = rec["outputs"]
    assert (out["rows_read"], out["rows_accepted"], out["rows_rejected"]) == (120, 120, 0)
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)


def test_staging_table_gone_before_the_switch_fails_and_keeps_the_backup(settings, res, baseline, files):
    src = write_files(files / "staging-gone", good_rows(60, first_id=80_000), parts=1)
    rec = wf.submit(res, baseline["table"], src.as_uri())
    with pytest.raises(BackupError, match=r"staging table .* is gone") as e:
        for name in wf.DEFINITION.phase_names:
            with phase(res, rec["job_id"], name) as ctx:
                if name == "write":
                    execute(settings, f"DROP TABLE {names_of(rec).data}")
                wf.DEFINITION.phase(name).run(ctx)
    assert not e.value.retryable
    fail_job(res, rec["job_id"], "write", e.value, cleanup=lambda r: wf.discard_staging(res, r))
    assert_baseline_intact(settings, baseline)


def test_a_write_that_lost_its_lock_never_switches_the_backup(settings, res, baseline, files):
    """Fence: ``ctx.commit_check()`` before ``swap_view`` in the write phase. The lock is taken away inside the
    phase (an expired lock granted to a newer run): the backup keeps reading the previous generation."""
    src = write_files(files / "lock-lost", good_rows(70, first_id=90_000), parts=1)
    rec = wf.submit(res, baseline["table"], src.as_uri())
    job_id = rec["job_id"]
    try:
        with pytest.raises(LockLost) as lost:
            for name in wf.DEFINITION.phase_names:
                with phase(res, job_id, name) as ctx:
                    if name == "write":
                        held = res.jobs.get(job_id)["lock"]
                        res.redis.delete(held["key"])
                        thief, _ = res.locks.acquire(wf.WORKFLOW, baseline["table"], f"thief-{job_id}")
                        assert thief is not None and thief.token > held["token"]
                    wf.DEFINITION.phase(name).run(ctx)
        assert ctx.name == "write"
        fail_job(res, job_id, "write", lost.value, cleanup=lambda r: wf.discard_staging(res, r))
        assert_baseline_intact(settings, baseline)
    finally:
        res.redis.delete(res.locks.key(wf.WORKFLOW, baseline["table"]))


def test_a_load_woken_after_its_job_was_failed_drops_its_own_staging_table(settings, res, baseline, files,
                                                                          monkeypatch):
    """A holder paused past its lock's TTL has its job failed meanwhile (the stall check; the failure cleanup ran
    while it slept, before its staging table existed) and its lock taken by another run; woken, the load writes its
    staging table and is refused at its commit (LockLost).  The load drops that table itself, nobody else will; the
    backup is untouched.  (The restore workflows' campaign rows found the same gap in their loads.)"""
    woken_in = "load"
    src = write_files(files / "woken-load", good_rows(60, first_id=95_000), parts=1)
    job_id = wf.submit(res, baseline["table"], src.as_uri())["job_id"]
    cleanup = lambda r: wf.discard_staging(res, r)  # noqa: E731 - the workflow's failure cleanup
    paused = (wf.Load, "strict_write")
    original = getattr(*paused)

    def failed_while_paused(*args):
        held = res.jobs.get(job_id)["lock"]
        res.redis.delete(held["key"])  # expired while paused
        thief, _ = res.locks.acquire(wf.WORKFLOW, baseline["table"], f"thief-{job_id}")
        assert thief is not None and thief.token > held["token"]
        fail_job(res, job_id, woken_in, LockLost("lock expired while the worker was paused"), cleanup=cleanup)
        return original(*args)

    monkeypatch.setattr(*paused, failed_while_paused)
    try:
        with pytest.raises(LockLost):
            for name in wf.DEFINITION.phase_names:
                with phase(res, job_id, name) as ctx:
                    wf.DEFINITION.phase(name).run(ctx)
        assert ctx.name == woken_in and res.jobs.get(job_id)["state"] == "failed"
        assert_baseline_intact(settings, baseline)  # the backup's tables only: the woken phase's table is gone
    finally:
        res.redis.delete(res.locks.key(wf.WORKFLOW, baseline["table"]))


def test_lines_removed_between_the_rejects_and_the_rows_fail_the_load_retryably(settings, res, baseline, files,
                                                                                monkeypatch):
    """A malformed line sends the load to the rejects first; a file cut before the rows are read is caught."""
    src = write_files(files / "shortened", good_rows(200, first_id=90_000), extra_lines=[BAD_LINES[3][0]], parts=1)
    tolerant = resources_with(res, "tb-tolerant-shortened.yaml", {"table_backup": {"max_reject_ratio": 0.5}})
    original = wf.write_rejects

    def write_then_cut(spark, names, rejected, job_id):
        original(spark, names, rejected, job_id)
        for path in src.iterdir():  # a producer truncates the file between the two reads
            path.write_text("\n".join(path.read_text().splitlines()[:150]) + "\n")

    monkeypatch.setattr(wf, "write_rejects", write_then_cut)
    rec = wf.submit(tolerant, baseline["table"], src.as_uri())
    with pytest.raises(SourceChanged, match=r"changed during the load: 200 lines accepted, then 149 rows loaded"):
        run_phases(tolerant, rec["job_id"])
    assert not tables_of(settings, names_of(rec).data.table.lower()), "staging dropped"
    assert_baseline_intact(settings, baseline)


def test_a_strict_pass_failure_that_no_line_explains_is_reported_as_it_is(settings, res, baseline, files,
                                                                         monkeypatch):
    """The FAILFAST write failing for another reason than a line (here injected) is not taken for rejects."""
    def failing(self, strict):
        raise wf.FatalError(f"injected: the warehouse refused the {'strict' if strict else 'exact'} write")

    monkeypatch.setattr(wf.Load, "write_staging", failing)
    src = write_files(files / "strict-fails", good_rows(50, first_id=95_000), parts=1)
    with pytest.raises(BackupError, match="injected: the warehouse refused the strict write"):
        backup_inprocess(res, baseline["table"], src)
    rec = res.jobs.last("table-backup", baseline["table"])
    assert rec["phase"] == "load" and rec["error"].startswith("FatalError: injected")
    assert_baseline_intact(settings, baseline)


def test_what_a_failed_write_leaves_in_the_staging_folder_neither_blocks_nor_stays(settings, res, files, monkeypatch):
    """A FAILFAST write stopped by a malformed record can leave files of tasks still running in the table's
    folder; the next write overwrites them and dropping the staging table removes them."""
    original = wf.Load.strict_write
    folders = []

    def strict_then_litter(self):
        error = original(self)
        folder = warehouse_folder(f"{self.names.data.db}.{self.names.data.table}")
        with hdfs(settings) as fs:
            fs.mkdir(f"{folder}/_temporary/0")
            fs._create(f"{folder}/_temporary/0/part-00001-killed-task.snappy.parquet", [b"half a file"])
        folders.append(folder)
        return error

    monkeypatch.setattr(wf.Load, "strict_write", strict_then_litter)
    table = new_live(settings, "traffic_litter")
    rows = good_rows(300)
    src = write_files(files / "litter", rows, extra_lines=[BAD_LINES[3][0]], parts=1)
    tolerant = resources_with(res, "tb-tolerant-litter.yaml", {"table_backup": {"max_reject_ratio": 0.01}})
    rec = backup_inprocess(tolerant, table, src)
    assert rec["state"] == "success" and rec["outputs"]["rows_rejected"] == 1, rec
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)
    with hdfs(settings) as fs:
        assert fs.stat(f"{folders[0]}/_temporary") is None

    with pytest.raises(RejectsExceeded):
        backup_inprocess(res, table, src)
    with hdfs(settings) as fs:
        assert fs.stat(folders[1]) is None, "the failed run's staging folder, litter included, is gone"


def test_a_run_validated_by_an_earlier_version_still_loads(settings, res, files):
    """Job records written by the previous validate (no schema or catalog state in them) are loaded all the same."""
    table = new_live(settings, "traffic_upgrade")
    rows = good_rows(80)
    rec = wf.submit(res, table, write_files(files / "upgrade", rows, parts=1).as_uri())
    for name in wf.DEFINITION.phase_names:
        with phase(res, rec["job_id"], name) as ctx:
            if name == "load":
                for key in ("live_schema", "previous_data_table", "backup_reads", "stale_data_tables",
                            "previous_rejects"):
                    ctx.rec["outputs"].pop(key)
            wf.DEFINITION.phase(name).run(ctx)
    assert res.jobs.get(rec["job_id"])["state"] == "success"
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)


def test_a_backup_rolled_back_by_hand_is_never_dropped(settings, res, files):
    """ALTER VIEW onto the previous generation (the documented rollback) leaves the view's property naming
    the newer table; the next runs go by what the view reads, and keep it until it is a generation old."""
    table = new_live(settings, "traffic_rollback")
    backup = f"{table}_bkp"
    rows1, rows2 = good_rows(120), good_rows(80, first_id=5_000)
    data1 = backup_inprocess(res, table, write_files(files / "rollback1", rows1, parts=1))["outputs"]["data_table"]
    data2 = backup_inprocess(res, table, write_files(files / "rollback2", rows2, parts=1))["outputs"]["data_table"]
    # As an operator might write it; a comment line that looks like a key of Spark's listing.
    execute(settings, f"ALTER VIEW {backup} AS SELECT *\n/* rollback\nReason: bad load of the night */ FROM {data1}")
    assert_same_rows(backup_rows(settings, backup), rows1)

    # A failed run (a reject, ratio 0) drops neither the table the view reads nor the one its property names.
    bad = write_files(files / "rollback-bad", rows2, extra_lines=[BAD_LINES[0][0]], parts=1)
    with pytest.raises(RejectsExceeded):
        backup_inprocess(res, table, bad)
    assert {data1, data2} <= {f"{DB}.{t}" for t in tables_of(settings, "traffic_rollback_bkp__")}
    assert_same_rows(backup_rows(settings, backup), rows1)

    rows3 = good_rows(60, first_id=9_000)
    rec3 = backup_inprocess(res, table, write_files(files / "rollback3", rows3, parts=1))
    assert rec3["state"] == "success", rec3
    assert rec3["outputs"]["replaced_data_table"] == data1.split(".")[1]
    assert rec3["outputs"]["dropped_tables"] == []
    assert_same_rows(backup_rows(settings, backup), rows3)
    rec4 = backup_inprocess(res, table, write_files(files / "rollback3", rows3, parts=1))
    assert sorted(rec4["outputs"]["dropped_tables"]) == sorted([data1, data2])


def test_a_retried_load_empties_the_rejects_an_earlier_attempt_wrote(settings, res, files, monkeypatch):
    """validate saw no rejects table; the first load attempt wrote one line to it, then failed retryably.
    The retry (the files fixed meanwhile) must not leave that line beside a run that rejected nothing."""
    table = new_live(settings, "traffic_retry")
    rows = good_rows(200)
    src = write_files(files / "retry", rows, extra_lines=[BAD_LINES[3][0]], parts=1)
    tolerant = resources_with(res, "tb-tolerant-retry.yaml", {"table_backup": {"max_reject_ratio": 0.5}})
    original = wf.write_rejects

    def write_then_cut(spark, names, rejected, job_id):
        original(spark, names, rejected, job_id)
        write_files(src, rows[:150], parts=1)  # the producer rewrites the file between the two reads

    monkeypatch.setattr(wf, "write_rejects", write_then_cut)
    rec = wf.submit(tolerant, table, src.as_uri())
    for name in ("lock", "validate"):
        with phase(tolerant, rec["job_id"], name) as ctx:
            wf.DEFINITION.phase(name).run(ctx)
    assert res.jobs.get(rec["job_id"])["outputs"]["previous_rejects"] is None
    with pytest.raises(SourceChanged):
        with phase(tolerant, rec["job_id"], "load") as ctx:
            wf.load_phase(ctx)
    assert query(settings, f"SELECT count(*) FROM {table}_bkp_rejects") == [(1,)]
    monkeypatch.setattr(wf, "write_rejects", original)
    for name in ("load", "write", "finish"):  # the retry of load, as Celery's retry runs it
        with phase(tolerant, rec["job_id"], name, attempt=2 if name == "load" else 1) as ctx:
            wf.DEFINITION.phase(name).run(ctx)
    done = res.jobs.get(rec["job_id"])
    assert done["state"] == "success" and done["outputs"]["rows_rejected"] == 0, done
    assert query(settings, f"SELECT count(*) FROM {table}_bkp_rejects") == [(0,)]
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows[:150])


def test_a_load_redelivered_after_its_switch_leaves_the_backup_alone(settings, res, files):
    """Late acks: a worker that dies after the load sent the write may have its load delivered again."""
    table = new_live(settings, "traffic_redelivered")
    rows = good_rows(90)
    rec = wf.submit(res, table, write_files(files / "redelivered", rows, parts=1).as_uri())
    for name in ("lock", "validate", "load", "write"):
        with phase(res, rec["job_id"], name) as ctx:
            wf.DEFINITION.phase(name).run(ctx)
    # The runner recognises the delivery as stale (write has started) and runs nothing ...
    with phase(res, rec["job_id"], "load") as ctx:
        assert not ctx.active and ctx.stale == "phase write has already started"
    load = next(p for p in res.jobs.get(rec["job_id"])["phases"] if p["name"] == "load")
    assert (load["state"], load["deliveries"]) == ("success", 1)
    # ... and should one get past it (a record that lost its newest writes: the load's end and the write's start,
    # the counts gone), the phase function's own guard holds: the table the backup reads is not rewritten.
    def lost_newest_writes(r):
        r["outputs"].pop("rows_accepted")
        next(p for p in r["phases"] if p["name"] == "load").update(state="running", finished=None)
        next(p for p in r["phases"] if p["name"] == "write").update(state="pending", deliveries=0, attempts=0)
    res.jobs.update(rec["job_id"], lost_newest_writes)
    with pytest.raises(wf.FatalError, match=r"already reads .*this job's data table"):
        with phase(res, rec["job_id"], "load") as ctx:
            wf.load_phase(ctx)
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)

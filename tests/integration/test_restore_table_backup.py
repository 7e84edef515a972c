"""restore-table-backup on the local platform's Spark and HiveServer2: backups made by the real table-backup
workflow, restored through the worker (public task by name), the CLI, or the phases in-process as the chain
runs them; every restored table compared with its source row by row (``EXCEPT ALL`` both ways, over
HiveServer2 with a plain impyla cursor)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import Counter
from contextlib import closing

import pytest
from impala.dbapi import connect

from backup import restore_table_backup as rtb
from backup.resources import Resources
from backup.runner import fail_job
from backup.table_backup import catalog, columns
from base.errors import BackupError, LockLost, NotFound
from tests.conftest import CONFIG_PATH
from tests.helpers import backupctl, enqueue, run_phases_inline, sink_counts, wait_job
from tests.integration.test_table_backup import (DAYS, FIRST_DAY, LIVE_DDL, backup_inprocess, execute, good_rows, query,
                                                 write_files)

pytestmark = pytest.mark.integration

DB = "mnaas_rtb"
LIVE_COLUMNS = ["id", "msisdn", "customer", "note", "bytes_up", "amount", "event_ts", "partition_date"]


def dated_rows(n: int, first_id: int = 0) -> list[tuple]:
    """``n`` rows like table-backup's tests' (``good_rows``), on two days a month over seven months: 14 daily
    partitions of the live table instead of one per row, which keeps every write small."""
    days = [d for d in range(DAYS) if (FIRST_DAY + dt.timedelta(days=d)).day in (3, 17)]
    base = -(-first_id // DAYS) * DAYS  # good_rows' day is id % DAYS
    return [good_rows(1, first_id=base + days[k % len(days)] + DAYS * (k // len(days)))[0] for k in range(n)]


def months_of(rows: list[tuple]) -> dict[str, int]:
    """Rows per backup partition (YYYY-MM), from good_rows' year and month."""
    return dict(sorted(Counter(f"{r[8]:04d}-{r[9]:02d}" for r in rows).items()))


def tables_of(settings, prefix: str) -> set[str]:
    return {r[1] for r in query(settings, f"SHOW TABLES IN {DB}") if r[1].startswith(prefix)}


def columns_of(settings, table: str) -> list[str]:
    """The table's columns in order, as a HiveServer2 client sees them."""
    with closing(connect(settings.hive.host, settings.hive.port, auth_mechanism="NOSASL")) as conn, \
            closing(conn.cursor()) as cur:
        cur.execute(f"SELECT * FROM {table} LIMIT 0")
        return [c[0].split(".")[-1] for c in cur.description]


def assert_same_table(settings, a: str, b: str, cols: list[str], rows: int) -> None:
    """``a`` and ``b`` hold the same rows, duplicates counted: EXCEPT ALL is empty both ways, and ``rows`` each."""
    c = ", ".join(f"`{x}`" for x in cols)
    got = query(settings, f"SELECT (SELECT count(*) FROM (SELECT {c} FROM {a} EXCEPT ALL SELECT {c} FROM {b}) d1), "
                          f"(SELECT count(*) FROM (SELECT {c} FROM {b} EXCEPT ALL SELECT {c} FROM {a}) d2), "
                          f"(SELECT count(*) FROM {a}), (SELECT count(*) FROM {b})")
    assert got == [(0, 0, rows, rows)], f"({a} - {b}, {b} - {a}, rows of each): {got}"


def fill_live(res: Resources, table: str, source) -> None:
    """The live table's rows from the same CSV files the backup is made from (through Spark, as a loader would)."""
    cfg = res.settings.table_backup
    with res.spark().session() as spark:
        schema = spark.table(table).schema
        spark.read.options(**columns.csv_options(cfg)).schema(columns.read_ddl(schema, cfg)).csv(source.as_uri()) \
            .write.insertInto(table, overwrite=True)


def new_live(settings, res, name: str, rows: list[tuple], folder) -> str:
    """A live table holding ``rows``, their CSV files in ``folder``."""
    table = f"{DB}.{name}"
    execute(settings, f"CREATE TABLE {table} {LIVE_DDL}")
    fill_live(res, table, write_files(folder, rows))
    return table


def run_restore(res: Resources, job_id: str, before: dict | None = None) -> dict:
    """The phases in-process as the chain runs them (``before[name]()`` first); a failure recorded as the errback does."""
    return run_phases_inline(res, rtb.DEFINITION, job_id, before)


def restore_inprocess(res: Resources, table: str, before: dict | None = None, **kwargs) -> dict:
    rec = rtb.submit(res, table, **kwargs)
    assert rec["state"] == "queued", rec
    return run_restore(res, rec["job_id"], before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("restore-table-backup")


@pytest.fixture(scope="module")
def live(platform, settings, redis_client, files):
    """A live table of 300 rows over seven months, and its backup made by the table-backup workflow."""
    execute(settings, f"DROP DATABASE IF EXISTS {DB} CASCADE", f"CREATE DATABASE {DB}")
    res = Resources(settings, _redis=redis_client)
    rows = dated_rows(300)
    table = new_live(settings, res, "traffic", rows, files / "traffic")
    backup = backup_inprocess(res, table, files / "traffic")
    assert backup["state"] == "success", backup
    return {"table": table, "rows": rows, "backup": backup}


# -- through the worker and the CLI ---------------------------------------------------------------

def test_restore_into_a_new_table_through_the_worker_and_the_cli(settings, res, worker, celery_app, live):
    table, rows, backup = live["table"], live["rows"], live["backup"]
    months = months_of(rows)
    job_id = enqueue(celery_app, "backup.restore_table_backup", table=table, into=f"{DB}.restored_w")
    rec = wait_job(res, job_id, timeout=240)
    assert rec["state"] == "success", rec
    out = rec["outputs"]
    # What was restored, from where, and the checks it passed.
    assert (out["backup_table"], out["data_table"], out["backup_job_id"]) == \
        (f"{table}_bkp", backup["outputs"]["data_table"], backup["job_id"])
    assert out["expected_from"].startswith("recorded by the backup run")
    assert out["rows_expected"] == out["rows_restored"] == 300
    assert out["partition_rows_expected"] == out["partition_rows_restored"] == months
    assert (out["target"], out["restored_table"], out["replaced_table"]) == (f"{DB}.restored_w",) * 2 + (None,)
    assert out["partitioned_by"] == ["partition_date"]  # as the live table
    # Row for row the live table; the partition columns dropped; no staging table left; the backup's lock free.
    assert columns_of(settings, f"{DB}.restored_w") == LIVE_COLUMNS
    assert_same_table(settings, table, f"{DB}.restored_w", LIVE_COLUMNS, 300)
    props = dict(query(settings, f"SHOW TBLPROPERTIES {DB}.restored_w"))
    assert props[rtb.PROP_RESTORE_JOB] == job_id and props[rtb.PROP_RESTORED_BACKUP_JOB] == backup["job_id"]
    assert tables_of(settings, "restored_w") == {"restored_w"}
    assert res.locks.holder("table-backup", table) is None

    # The CLI: the same table again is refused (nothing written, one alert), then replaced with --replace.
    mails, tickets = sink_counts(settings)
    again = backupctl("restore", "table-backup", table, "--into", f"{DB}.restored_w", "--wait", config=CONFIG_PATH)
    assert again.returncode == 1
    error = next(line for line in again.stdout.splitlines() if line.strip().startswith("error:"))
    assert error.strip() == (f"error: AlreadyExists: {DB}.restored_w exists; pass --replace to replace it with the "
                             f"restored rows, or restore into a new name. Nothing was written")
    refused = res.jobs.last("restore-table-backup", table)
    assert refused["phase"] == "check" and all(p["state"] == "pending" for p in refused["phases"][2:])
    assert dict(query(settings, f"SHOW TBLPROPERTIES {DB}.restored_w"))[rtb.PROP_RESTORE_JOB] == job_id
    assert tables_of(settings, "restored_w") == {"restored_w"}
    assert sink_counts(settings) == (mails + 1, tickets + 1)  # a refused restore is a failure: loud, once

    replaced = backupctl("restore", "table-backup", table, "--into", f"{DB}.restored_w", "--replace", "--wait",
                         "--json", config=CONFIG_PATH)
    assert replaced.returncode == 0, replaced.stderr
    rec = json.loads(replaced.stdout)
    assert rec["workflow"] == "restore-table-backup" and rec["outputs"]["rows_restored"] == 300
    assert rec["outputs"]["replaced_table"].startswith(f"{DB}.restored_w__replaced_")
    assert rec["outputs"]["replaced_table_kept"] is False and rec["outputs"]["unavailable_seconds"] < 10
    assert dict(query(settings, f"SHOW TBLPROPERTIES {DB}.restored_w"))[rtb.PROP_RESTORE_JOB] == rec["job_id"]
    assert tables_of(settings, "restored_w") == {"restored_w"}, "the replaced table is dropped with --replace"
    assert_same_table(settings, table, f"{DB}.restored_w", LIVE_COLUMNS, 300)


def test_bad_requests_fail_before_any_phase_and_the_cli_refuses_them(settings, res, worker, celery_app, live):
    table = live["table"]
    for kwargs, message in [
        ({"table": "db.t; DROP TABLE x", "into": "db.x"}, "InvalidInput: invalid table name"),
        ({"table": table, "into": "db.x", "replace_live": True}, "--into and --replace-live exclude each other"),
        ({"table": table}, "say where to restore: --into DB.NEW_TABLE"),
        ({"table": table, "replace_live": True, "replace": True}, "--replace applies to --into"),
        ({"table": table, "replace_live": True, "keep_partition_columns": True}, "cannot go with --replace-live"),
        ({"table": table, "into": "db.x", "version": "2026-13-01"}, "invalid version '2026-13-01'"),
        ({"table": table, "into": "db.x", "version": "latest"}, "invalid version 'latest'"),
        ({"table": table, "into": table}, f"--into names the live table {table}; to replace it use --replace-live"),
        ({"table": table, "into": f"{table}_bkp"}, "names a table-backup object"),
        ({"table": table, "into": "db.x", "replace": "yes"}, "invalid replace flag 'yes'"),
        ({"table": table, "into": "db.x-y"}, "invalid table name"),
        ({"table": table, "inot": "db.x"}, "unexpected keyword argument 'inot'"),
    ]:
        rec = wait_job(res, enqueue(celery_app, "backup.restore_table_backup", **kwargs))
        assert rec["state"] == "failed" and rec["error"].startswith("InvalidInput: ") and message in rec["error"], \
            (kwargs, rec)
        assert all(p["state"] == "pending" and p["attempts"] == 0 for p in rec["phases"])
    jobs = res.jobs.recent(1)[0]["job_id"]
    for argv, message in [
        (["--into", "db.x", "--replace-live"], "InvalidInput: --into and --replace-live exclude each other"),
        ([], "InvalidInput: say where to restore"),
        (["--into", "db.x", "--version", "20260230"], "InvalidInput: invalid version '20260230'"),
    ]:
        out = backupctl("restore", "table-backup", table, *argv, config=CONFIG_PATH)
        assert out.returncode == 2 and out.stderr.startswith(f"backupctl: error: {message}"), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert res.jobs.recent(1)[0]["job_id"] == jobs, "the CLI enqueued nothing"


def test_a_damaged_backup_fails_loudly_once_and_leaves_no_table(settings, res, worker, celery_app, files):
    """A partition removed from the data table behind the view: refused by check, one alert, nothing written.
    Then a partition removed between check and load: the load's own count catches it, the staging table
    is dropped by the failure cleanup, and the episode is not alerted twice."""
    rows = dated_rows(240, first_id=20_000)
    table = new_live(settings, res, "traffic_damaged", rows, files / "damaged")
    backup = backup_inprocess(res, table, files / "damaged")
    data = backup["outputs"]["data_table"]
    october = months_of(rows)["2025-10"]
    execute(settings, f"ALTER TABLE {data} DROP PARTITION (year_part=2025, month_part=10)")
    mails, tickets = sink_counts(settings)
    rec = wait_job(res, enqueue(celery_app, "backup.restore_table_backup", table=table,
                                into=f"{DB}.damaged_a"), timeout=240)
    assert rec["state"] == "failed" and rec["phase"] == "check", rec
    assert rec["error"] == (f"FatalError: backup {table}_bkp (backup job {backup['job_id']}) is damaged: its data table "
                            f"{data} holds {240 - october} rows, the backup run recorded 240; partition 2025-10: 0 "
                            f"rows, expected {october}; nothing was restored")
    assert rec["alert_sent"] is True and sink_counts(settings) == (mails + 1, tickets + 1)
    assert tables_of(settings, "damaged_a") == set()
    assert res.locks.holder("table-backup", table) is None

    # A new backup, damaged between the restore's check and its load.
    backup = backup_inprocess(res, table, files / "damaged")
    data = backup["outputs"]["data_table"]
    january = months_of(rows)["2026-01"]

    def damage():
        execute(settings, f"ALTER TABLE {data} DROP PARTITION (year_part=2026, month_part=1)")

    with pytest.raises(BackupError, match=r"do not match the backup .*partition 2026-01: 0 rows, expected") as e:
        restore_inprocess(res, table, before={"load": damage}, into=f"{DB}.damaged_b")
    assert f"{240 - january} rows, expected 240" in str(e.value)
    rec = res.jobs.last("restore-table-backup", table)
    assert rec["state"] == "failed" and rec["phase"] == "load"
    assert tables_of(settings, "damaged_b") == set(), "the failure cleanup drops the staging table"
    assert sink_counts(settings) == (mails + 1, tickets + 1), "one alert per failure episode"
    assert "already alerted" in json.dumps(rec["alert"])


# -- in-process ------------------------------------------------------------------------------------

def test_a_versioned_backup_restored_by_version_with_or_without_partition_columns(settings, res, files):
    table = f"{DB}.traffic_versions"
    execute(settings, f"CREATE TABLE {table} {LIVE_DDL}")  # empty: the backups come from files
    first, second = dated_rows(200, first_id=30_000), dated_rows(150, first_id=40_000)
    for day, rows, folder in (("2026-01-01", first, "v1"), ("2026-01-02", second, "v2")):
        rec = backup_inprocess(res, table, write_files(files / folder, rows, parts=2), versioned=True, retention=5,
                               day=day)
        assert rec["state"] == "success", rec

    kept = restore_inprocess(res, table, version="20260101", into=f"{DB}.v1", keep_partition_columns=True)
    assert kept["state"] == "success" and kept["outputs"]["backup_table"] == f"{table}_bkp_20260101"
    assert kept["outputs"]["partition_rows_restored"] == months_of(first)
    every = LIVE_COLUMNS + ["year_part", "month_part"]
    assert columns_of(settings, f"{DB}.v1") == every
    assert_same_table(settings, f"{table}_bkp_20260101", f"{DB}.v1", every, 200)
    assert len(query(settings, f"SHOW PARTITIONS {DB}.v1")) == len(months_of(first))  # by year_part, month_part

    plain = restore_inprocess(res, table, version="2026-01-02", into=f"{DB}.v2")
    assert plain["state"] == "success" and plain["outputs"]["partition_rows_restored"] == months_of(second)
    assert columns_of(settings, f"{DB}.v2") == LIVE_COLUMNS
    assert_same_table(settings, f"(SELECT {', '.join(LIVE_COLUMNS)} FROM {table}_bkp_20260102) b", f"{DB}.v2",
                      LIVE_COLUMNS, 150)

    with pytest.raises(NotFound) as e:
        restore_inprocess(res, table, version="20250101", into=f"{DB}.v3")
    assert str(e.value) == (f"version 20250101 of the backup of {table} does not exist: no {table}_bkp_20250101 "
                            f"(backups of {table}: version 20260101, version 20260102)")
    with pytest.raises(NotFound, match=rf"^no backup {table}_bkp \(backups of {table}: version 20260101, version"):
        restore_inprocess(res, table, into=f"{DB}.v3")
    assert tables_of(settings, "v3") == set()


def test_a_backup_made_before_partition_counts_were_recorded(settings, res, live):
    """Without the data table's counts, the view's total is checked and the backup's own partitions are expected."""
    data = live["backup"]["outputs"]["data_table"]
    execute(settings, f"ALTER TABLE {data} UNSET TBLPROPERTIES ('{catalog.PROP_PARTITION_ROWS}', "
                      f"'{catalog.PROP_ROWS}', '{catalog.PROP_JOB}')")
    try:
        rec = restore_inprocess(res, live["table"], into=f"{DB}.restored_old")
    finally:  # the other tests' backup as it was
        execute(settings, f"ALTER TABLE {data} SET TBLPROPERTIES ('{catalog.PROP_PARTITION_ROWS}'="
                          f"'{catalog.format_partition_rows(months_of(live['rows']))}', '{catalog.PROP_ROWS}'='300', "
                          f"'{catalog.PROP_JOB}'='{live['backup']['job_id']}')")
    out = rec["outputs"]
    assert rec["state"] == "success" and out["backup_job_id"] == live["backup"]["job_id"]  # from the view
    assert out["expected_from"].startswith("rows recorded by the backup run on its view; rows per partition: the "
                                           "backup table's own counts")
    assert out["partition_rows_expected"] == out["partition_rows_restored"] == months_of(live["rows"])
    assert_same_table(settings, live["table"], f"{DB}.restored_old", LIVE_COLUMNS, 300)


class Reader(threading.Thread):
    """A reader of a table during a swap: ``SELECT count(*)`` again and again, each on a new HiveServer2 connection
    (as a new client would), until a few answers after ``finish``; what each query got, in order."""

    def __init__(self, settings, table: str):
        super().__init__(daemon=True)
        self.settings, self.table = settings, table
        self.seen: list = []
        self.done_at: int | None = None

    def run(self) -> None:
        while self.done_at is None or len(self.seen) < self.done_at + 3:
            try:
                self.seen.append(query(self.settings, f"SELECT count(*) FROM {self.table}")[0][0])
            except Exception as e:
                text = str(e)
                if "TABLE_OR_VIEW_NOT_FOUND" in text:
                    self.seen.append("no table")
                elif "FileNotFound" in text or "FAILED_READ_FILE" in text or "does not exist" in text:
                    self.seen.append("files gone")
                else:
                    self.seen.append(f"error: {' '.join(text.split())[:300]}")

    def begin(self) -> None:
        """Start, and return once the table was read once (before the swap starts)."""
        self.start()
        deadline = time.monotonic() + 60
        while not self.seen and time.monotonic() < deadline:
            time.sleep(0.05)

    def finish(self) -> None:
        self.done_at = len(self.seen)

    def results(self) -> list:
        self.join(120)
        assert not self.is_alive(), "the reader did not finish"
        return self.seen


def test_replace_live_makes_the_live_table_the_backup(settings, res, live):
    table, rows = live["table"], live["rows"]
    # The live table damaged: a day's partition lost, a stray row added.
    execute(settings, f"ALTER TABLE {table} DROP PARTITION (partition_date='2025-09-03')",
            f"INSERT INTO {table} VALUES (999999, 'x', 'x', NULL, NULL, NULL, NULL, '2025-09-02')")
    damaged = query(settings, f"SELECT count(*) FROM {table}")[0][0]
    assert damaged != 300
    partitions = len(query(settings, f"SHOW PARTITIONS {live['backup']['outputs']['data_table']}"))
    reader = Reader(settings, table)
    rec = restore_inprocess(res, table, before={"swap": reader.begin, "finish": reader.finish}, replace_live=True)
    out = rec["outputs"]
    assert rec["state"] == "success" and out["restored_table"] == table and out["replaced_table_kept"] is True
    assert out["partition_rows_restored"] == months_of(rows) and 0 <= out["unavailable_seconds"] < 10
    # What readers saw during the swap, each query on a new connection: the old table whole, then no table (only
    # between the two renames; a query that started on the old table may also lose its files), then the restored
    # table whole; never a partial table, never the old one after the new.
    seen = reader.results()
    print(f"a reader during the swap (unavailable_seconds={out['unavailable_seconds']}): {seen}")
    counts = [x for x in seen if isinstance(x, int)]
    assert counts and counts[0] == damaged and counts[-1] == 300, seen
    assert counts == sorted(counts, key=lambda n: n == 300) and set(counts) <= {damaged, 300}, seen
    assert all(x in ("no table", "files gone") for x in seen if not isinstance(x, int)), seen
    # The live table is the backup again, row for row, with its own definition (columns, partitioned by day).
    view = f"(SELECT {', '.join(LIVE_COLUMNS)} FROM {table}_bkp) b"
    assert_same_table(settings, view, table, LIVE_COLUMNS, 300)
    assert columns_of(settings, table) == LIVE_COLUMNS
    assert len(query(settings, f"SHOW PARTITIONS {table}")) == len({r[7] for r in rows}) > partitions
    # The table it was is kept, as it was.
    assert query(settings, f"SELECT count(*) FROM {out['replaced_table']}") == [(damaged,)]
    assert tables_of(settings, "traffic__") == {out["replaced_table"].split(".")[1]}
    assert res.locks.holder("table-backup", table) is None


def test_a_restore_never_runs_beside_a_backup_of_the_table(settings, res, live):
    held, _ = res.locks.acquire("table-backup", live["table"], "backup-job-running-now")
    try:
        rec = restore_inprocess(res, live["table"], into=f"{DB}.beside")
    finally:
        res.locks.release(held)
    assert rec["state"] == "skipped" and rec["reason"] == "lock held by job backup-job-running-now"
    assert tables_of(settings, "beside") == set()



def test_a_load_woken_after_its_job_was_failed_drops_its_own_staging_table(settings, res, live, monkeypatch):
    """Found by the fault campaign's paused row: a holder paused past its lock's TTL has its job failed
    meanwhile (the stall check: failure cleanup run while no staging table existed yet) and its lock taken by
    another run; woken, its load creates and fills the staging table, is refused at its commit (LockLost) and
    must drop that table itself: nobody else will."""
    table = live["table"]
    rec = rtb.submit(res, table, into=f"{DB}.woken")
    job_id = rec["job_id"]
    original = rtb.create_staging

    def failed_while_paused(spark, *args):
        held = res.jobs.get(job_id)["lock"]
        res.redis.delete(held["key"])  # expired while paused
        thief, _ = res.locks.acquire("table-backup", table, f"thief-{job_id}")
        assert thief is not None and thief.token > held["token"]
        fail_job(res, job_id, "load", LockLost("lock expired while the worker was paused"),
                 cleanup=lambda r: rtb.discard_restore(res, r))
        return original(spark, *args)

    monkeypatch.setattr(rtb, "create_staging", failed_while_paused)
    mails, tickets = sink_counts(settings)
    try:
        with pytest.raises(LockLost):
            run_restore(res, job_id)
        assert res.jobs.get(job_id)["state"] == "failed"
        assert tables_of(settings, "woken") == set(), "the woken load's staging table was left behind"
        assert sink_counts(settings) == (mails + 1, tickets + 1)  # the one failure, loud once
    finally:
        res.redis.delete(res.locks.key("table-backup", table))


class WorkerKilled(BaseException):
    """Stands for a SIGKILL of the worker: raised out of the load after its INSERT reached the server, nothing
    recorded (the phase stays ``running``), as a killed pool child leaves it; a BaseException, so that no
    error handler on the way records it."""


def test_a_killed_loads_statement_still_running_on_the_server_never_reaches_the_restored_table(settings, res, live,
                                                                                                monkeypatch):
    """Found by the fault campaign's child-kill row (one month restored twice, refused by the row check): a worker
    killed while its load's INSERT runs leaves the statement running on the server beside the redelivered load.
    Whatever that orphan writes (here: some of the rows once more, committed after the redelivered load was
    verified, as the campaign saw) goes to the killed delivery's own staging table, which nobody swaps; the
    restore succeeds with exactly the backup's rows and leaves no staging table."""
    from pyspark.sql import functions as F
    from backup.runner import phase

    table = live["table"]
    rec = rtb.submit(res, table, into=f"{DB}.orphaned")
    job_id = rec["job_id"]
    made, counted = [], []
    create, count = rtb.create_staging, rtb.restored_partition_rows
    monkeypatch.setattr(rtb, "create_staging", lambda spark, staging, *a: (made.append(staging),
                                                                           create(spark, staging, *a))[1])

    def killed_after_the_insert(*a):
        counted.append(a)
        if len(counted) == 1:
            raise WorkerKilled()
        return count(*a)

    monkeypatch.setattr(rtb, "restored_partition_rows", killed_after_the_insert)

    def killed_delivery():
        with pytest.raises(WorkerKilled), phase(res, job_id, "load") as ctx:
            rtb.load_phase(ctx)
        assert rtb.phase_entry(res.jobs.get(job_id), "load")["state"] == "running"

    def orphan_commits():
        """The first delivery's statement, still running on the server, commits now: some rows again."""
        first = made[0]
        data = rtb.Checked.read(res.jobs.get(job_id)).data_table
        with res.spark().session() as spark:
            order = spark.table(first.sql).columns
            spark.table(data).limit(40).select(*[F.col(f"`{c}`") for c in order]).write.insertInto(first.sql)

    done = run_restore(res, job_id, before={"load": killed_delivery, "swap": orphan_commits})
    assert done["state"] == "success", done
    assert_same_table(settings, table, f"{DB}.orphaned", LIVE_COLUMNS, 300)
    assert len(made) == 2 and made[0] != made[1], made  # each start of the load wrote a table of its own
    assert rtb.phase_entry(done, "load")["deliveries"] == 2
    assert done["outputs"]["staging_table"] == str(made[1])
    assert tables_of(settings, "orphaned") == {"orphaned"}, "a staging table was left behind"

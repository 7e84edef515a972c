"""table-backup in spark-submit mode: ``spark.remote: local[2]``, one classic Spark driver per phase.

A real worker (its own config, on its own Redis database, so it is the only one taking these
tasks) runs the chain; every Spark phase is a ``spark-submit`` of workers/spark_driver.py.  The
drivers share a Hive metastore (Derby) and warehouse of their own under the test's state folder:
the local platform's JVM holds its own Derby metastore, which a second JVM cannot open.  Setup and
read-back go through another spark-submit (tests/spark_sql.py), as an operator's spark-sql would.
Each driver start costs 10 s or more, so the tests start as few as they can.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from backup.resources import Resources
from config.settings import load_settings
from backup.spark_submit import SparkSubmit, driver_env
from bench.faultkit import PrivateRedis
from tests.conftest import PORT_OFFSET, STATE, WorkerProc, write_config
from tests.helpers import backupctl, sink_counts, wait_until
from tests.integration.test_table_backup import BAD_LINES, csv_line, good_rows, write_files

pytestmark = pytest.mark.integration

SUBMIT = STATE / "spark-submit"
LIVE = "sdb.traffic"
LIVE_DDL = ("(id BIGINT, msisdn STRING, customer STRING, note STRING, bytes_up BIGINT, amount DOUBLE, "
            "event_ts TIMESTAMP, partition_date STRING) USING parquet PARTITIONED BY (partition_date)")


def spark_sql(settings, *statements: str) -> list[list[list]]:
    """Run statements in one spark-submit driver on the drivers' metastore; the rows of each."""
    folder = SUBMIT / "sql"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "statements.json").write_text(json.dumps(list(statements)))
    argv = SparkSubmit(settings).command(Path(__file__).resolve().parent.parent / "spark_sql.py",
                                         [str(folder / "statements.json"), str(folder / "rows.json")], "test sql")
    done = subprocess.run(argv, cwd=folder, env=driver_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((folder / "rows.json").read_text())


@pytest.fixture(scope="module")
def submit_redis():
    """A Redis of this module's own (broker of its worker): no other session's database is touched."""
    server = PrivateRedis(6502 + PORT_OFFSET, STATE / "submit-redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def submit_config(submit_redis):
    """Settings of spark-submit mode: master local[2], a metastore and warehouse of the drivers' own."""
    return write_config(STATE / "submit.yaml", {
        "redis": {"url": submit_redis.url, "key_prefix": "mbsubmit"},
        # A failed phase's cleanup runs in a driver of its own inside the failed task's time limit (the chain's
        # errback runs in the failing worker): two JVM starts, which the session's 60 s do not cover on a busy
        # machine (a CI run beside three other sessions saw the cleanup driver cut off by it).
        "celery": {"task_time_limit": 240, "task_soft_time_limit": 230, "visibility_timeout": 245},
        "spark": {"remote": "local[2]", "submit_conf": {
            "spark.sql.warehouse.dir": str(SUBMIT / "warehouse"),
            # C1 only and the serial collector: ~10 % off the start of a short-lived driver.
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={SUBMIT / 'derby'} -XX:TieredStopAtLevel=1 "
                                             "-XX:+UseSerialGC",
            "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"}},
        "table_backup": {"max_reject_ratio": 0.1},
    })


@pytest.fixture(scope="module")
def submit_res(submit_config):
    return Resources(load_settings(submit_config))


@pytest.fixture(scope="module")
def submit_worker(platform, submit_config, submit_res):
    """A worker of the spark-submit config (platform: the alert sinks), and the live table in its metastore."""
    from workers.app import create_app

    spark_sql(submit_res.settings, "CREATE DATABASE IF NOT EXISTS sdb", f"DROP TABLE IF EXISTS {LIVE}",
              f"CREATE TABLE {LIVE} {LIVE_DDL}")
    app = create_app(submit_res.settings)
    w = WorkerProc(submit_config, "submit", queues="default,spark", concurrency=1, app=app).start()
    yield w
    w.stop()


def run_cli(config: Path, source: Path) -> dict:
    """``backupctl run table-backup --wait --json`` against the spark-submit config; the final job record."""
    out = backupctl("run", "table-backup", LIVE, "--source", str(source), "--wait", "--json", "--timeout", "400",
                    config=config, timeout=450)
    assert out.stdout.startswith("{"), out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout)


def test_a_backup_runs_phase_by_phase_in_spark_submit_drivers(submit_config, submit_res, submit_worker, tmp_path):
    rows = good_rows(600)
    bad = BAD_LINES[:1] + BAD_LINES[3:4] + BAD_LINES[5:6]  # a bad date, a short line, an unclosed quote
    src = write_files(tmp_path / "in", rows, [line for line, _ in bad])
    rec = run_cli(submit_config, src)

    assert rec["state"] == "success", rec
    assert [p["state"] for p in rec["phases"]] == ["success"] * 5
    out = rec["outputs"]
    assert (out["rows_read"], out["rows_accepted"], out["rows_rejected"]) == (603, 600, 3)
    assert out["months"] == sorted({f"{r[8]:04d}-{r[9]:02d}" for r in rows})
    # Read back from the drivers' metastore by another driver: the view, its rows, the rejects with reasons.
    per_month, rejects, (first,) = spark_sql(
        submit_res.settings,
        f"SELECT year_part, month_part, count(*), min(id), max(id) FROM {LIVE}_bkp GROUP BY 1, 2 ORDER BY 1, 2",
        f"SELECT line, reason, job_id FROM {LIVE}_bkp_rejects ORDER BY line",
        f"SELECT * FROM {LIVE}_bkp WHERE id = 1")
    expected = sorted({(r[8], r[9]) for r in rows})
    assert [(y, m) for y, m, *_ in per_month] == expected
    assert sum(n for _, _, n, _, _ in per_month) == 600
    assert (min(lo for *_, lo, _ in per_month), max(hi for *_, hi in per_month)) == (0, 599)
    assert sorted((line, reason) for line, reason, _ in rejects) == sorted(bad)
    assert {job for *_, job in rejects} == {rec["job_id"]}
    assert submit_res.locks.holder("table-backup", LIVE) is None
    # One value written by the driver, read back as the legacy loaders wrote it.
    assert csv_line(first[:8]) == csv_line(rows[1][:8])


def test_an_error_in_a_driver_keeps_its_class_fails_once_and_the_cleanup_runs_in_a_driver(
        submit_config, submit_res, submit_worker, tmp_path):
    rows = good_rows(40, first_id=1000)
    src = write_files(tmp_path / "in", rows, [BAD_LINES[0][0]] * 10)  # 10 of 50 lines: above the ratio 0.1
    mails, tickets = sink_counts(submit_res.settings)
    rec = run_cli(submit_config, src)

    assert rec["state"] == "failed" and rec["phase"] == "load", rec
    assert rec["error"].startswith("RejectsExceeded: 10 of 50 lines rejected (20.00%), above table_backup."
                                   "max_reject_ratio=0.1; nothing replaced."), rec
    kept = Path(rec["error"].rsplit("[Spark driver log: ", 1)[1].rstrip("]"))  # kept for the operator
    assert "RejectsExceeded" in kept.read_text()
    shutil.rmtree(kept.parent)
    load = next(p for p in rec["phases"] if p["name"] == "load")
    assert load["attempts"] == 1  # fatal: raised again in the worker as RejectsExceeded, so not retried
    assert rec["alert_sent"]
    wait_until(lambda: sink_counts(submit_res.settings) == (mails + 1, tickets + 1), 30, "one mail and one ticket")
    # The cleanup after the failure ran in a driver of its own; its log line reached the worker's log.
    log = submit_worker.log.read_text(errors="replace")
    assert "spark-submit backup.table_backup:drop_unswitched_staging" in log
    assert f"driver: backup.table_backup: dropped staging table {rec['outputs']['data_table']} of failed job {rec['job_id']}" in log

"""edge-export end to end on the local platform: real Spark/HiveServer2, sshd, Redis, Celery workers, sinks.

Results are checked from outside the project: OpenSSH's own client runs
``gzip -t`` and ``gzip -dc`` on the edge node, and a plain impyla cursor counts
and reads the source rows.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import posixpath
from pathlib import Path

import pytest
from impala.dbapi import connect

from base.identifiers import TableName
from backup.locks import Held
from backup.window import export_window
from tests.conftest import CONFIG_PATH, STATE, WorkerProc, write_config
from tests.helpers import (TEST_MONTHS_BACK, backupctl, enqueue, remote_files, sink_counts, sink_mails,
                           sink_tickets, ssh, wait_job, wait_until)
from local_platform.sample_data import create_sample_table

pytestmark = pytest.mark.integration

ROWS = 20_000


def _hive(settings):
    return connect(settings.hive.host, settings.hive.port, auth_mechanism="NOSASL")


@pytest.fixture(scope="module")
def tables(platform, settings):
    """Sample tables, one per test that needs its own lock and alert episode.

    Created three at a time, each over a HiveServer2 session of its own: most of a creation is waiting on
    HDFS and the metastore (21 partitions each: ``sparse_dates``), which overlaps."""
    from concurrent.futures import ThreadPoolExecutor

    from connectors.hive import HiveClient

    def create(key: str) -> str:
        t = TableName("mnaas_test", f"traffic_{key}")
        with HiveClient.from_settings(settings) as hive:
            create_sample_table(hive, t, rows=ROWS if key == "main" else 3000, months_back=TEST_MONTHS_BACK,
                                count=False, sparse_dates=True)
        return str(t)

    keys = ("main", "concurrent", "stale", "resume", "hostkey", "killed")
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(keys, pool.map(create, keys)))


def _window_rows(settings, table: str, window) -> list[tuple]:
    t = TableName.parse(table)
    cur = _hive(settings).cursor()
    cur.execute(f"SELECT id, msisdn, customer, note, bytes_up, amount, partition_date FROM {t.sql} "
                f"WHERE partition_date >= '{window.start}' AND partition_date < '{window.end}'")
    return cur.fetchall()


def _remote_csv(settings, path: str) -> list[list[str]]:
    out = ssh(settings, ["gzip", "-dc", path], binary=True)
    text = out.stdout.decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=";", quotechar='"'))


def test_success_path_checked_from_outside(settings, res, worker, celery_app, tables):
    table = tables["main"]
    job_id = enqueue(celery_app, "backup.edge_export", table=table)
    rec = wait_job(res, job_id)
    assert rec["state"] == "success", rec
    out = rec["outputs"]
    remote = out["remote_uri"].split(f":{settings.sftp.port}", 1)[1]
    assert ssh(settings, ["gzip", "-t", remote]).returncode == 0
    remote_sha = ssh(settings, ["sha256sum", remote]).stdout.split()[0]
    assert remote_sha == out["sha256"]

    window = export_window(5, None, "UTC")
    expected = _window_rows(settings, table, window)
    rows = _remote_csv(settings, remote)
    assert len(rows) == len(expected) == out["rows"] > 0

    # Round trip of tricky values: ; quotes newlines CRLF unicode, NULL -> empty field.
    cols = ["id", "msisdn", "customer", "note", "bytes_up", "amount", "event_ts", "partition_date"]
    got = {int(r[0]): r for r in rows}
    assert all(len(r) == len(cols) for r in rows)
    for e in expected:
        r = got[e[0]]
        assert r[1] == e[1] and r[2] == e[2]
        assert r[3] == ("" if e[3] is None else e[3])
        assert r[4] == ("" if e[4] is None else str(e[4]))
        assert (r[5] == "") if e[5] is None else float(r[5]) == pytest.approx(e[5])
        assert r[7] == e[6]
    notes = {r[3] for r in rows}
    assert {"semi;colon", 'say "hi"', "two\nlines", "crlf\r\nline", "Nørd Ørbit ✓ 日本"} <= notes

    # Window boundaries: first day inside, end day outside, both present in the source.
    dates = sorted({r[7] for r in rows})
    assert dates[0] == window.start.isoformat()
    assert dates[-1] == (window.end - dt.timedelta(days=1)).isoformat()
    cur = _hive(settings).cursor()
    cur.execute(f"SELECT count(*) FROM {TableName.parse(table).sql} WHERE partition_date = '{window.end}'")
    assert cur.fetchall()[0][0] > 0, "sample data must contain the excluded end date"

    # Cleanup removed the local archive and its run folder; no temp file remains remotely.
    local = Path(out["local_path"])
    assert out["local_kept"] is False and not local.exists() and not local.parent.exists()
    assert local.parent.parent.is_dir()  # the table's folder stays for the next runs
    assert remote_files(settings, posixpath.dirname(remote)) == [remote]


def test_window_override_and_cli_json(settings, res, worker, tables):
    out = backupctl("run", "edge-export", tables["main"], "--months", "2", "--end", "2026-10-15", "--wait", "--json",
                    config=CONFIG_PATH)
    assert out.returncode == 0, out.stderr
    import json

    rec = json.loads(out.stdout)
    assert rec["args"]["window"] == {"start": "2026-08-15", "end": "2026-10-15", "end_exclusive": True}
    expected = _window_rows(settings, tables["main"], export_window(2, "2026-10-15", "UTC"))
    assert rec["outputs"]["rows"] == len(expected)
    assert "20260815-20261015" in rec["outputs"]["remote_uri"]


def test_two_runs_at_once_one_skipped(settings, res, worker, celery_app, tables):
    ids = [enqueue(celery_app, "backup.edge_export", table=tables["concurrent"]) for _ in range(2)]
    recs = [wait_job(res, j) for j in ids]
    states = sorted(r["state"] for r in recs)
    assert states == ["skipped", "success"], [(r["state"], r.get("error")) for r in recs]
    skipped = next(r for r in recs if r["state"] == "skipped")
    winner = next(r for r in recs if r["state"] == "success")
    assert skipped["reason"] == f"lock held by job {winner['job_id']}"
    assert all(p["state"] == "pending" for p in skipped["phases"][1:])


def test_stale_lock_of_dead_holder_expires(settings, res, worker, celery_app, tables):
    table = tables["stale"]
    dead, _ = res.locks.acquire("edge-export", table, "dead-worker-job")
    assert dead is not None
    first = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table))
    assert first["state"] == "skipped" and first["reason"] == "lock held by job dead-worker-job"
    wait_until(lambda: res.locks.holder("edge-export", table) is None, settings.lock.ttl + 5, "lock expiry")
    second = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table))
    assert second["state"] == "success"
    assert second["outputs"]["lock_token"] > dead.token
    # The dead holder's token is fenced off: it can no longer commit.
    res.locks.acquire("edge-export", table, "someone-else")
    from base.errors import LockLost

    with pytest.raises(LockLost):
        res.locks.check(dead)


def test_transfer_failure_alerts_once_then_resumes(settings, res, worker, celery_app, platform, tables):
    table = tables["resume"]
    mails0, tickets0 = sink_counts(settings)
    platform.down(only=["sshd"])
    try:
        first = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table))
        assert first["state"] == "failed" and first["phase"] == "transfer"
        transfer = next(p for p in first["phases"] if p["name"] == "transfer")
        assert transfer["attempts"] == settings.retry.max_retries + 1  # retried, then gave up
        assert "ConnectionFailed" in first["error"]
        assert first["alert_sent"] is True
        second = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table))
        assert second["state"] == "failed"
        assert second["outputs"]["resumed_from"] == first["job_id"]
        assert second["alert_sent"] is False and "already alerted" in second["alert"]["reason"]
    finally:
        platform.up(only=["sshd"])
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    ticket = sink_tickets(settings)[-1]
    assert ticket["job_id"] == first["job_id"] and ticket["target"] == table and ticket["phase"] == "transfer"
    assert first["job_id"] in sink_mails(settings)[-1]

    third = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table))
    assert third["state"] == "success"
    export = next(p for p in third["phases"] if p["name"] == "export")
    assert export["state"] == "skipped" and "resumed" in export["note"]
    assert third["outputs"]["sha256"] == first["outputs"]["sha256"]
    # The archive went into the folder of the run that exported it: both failed records name it now.
    assert third["outputs"]["resumed_from"] == second["job_id"]
    for earlier in (first, second):
        outputs = res.jobs.get(earlier["job_id"])["outputs"]
        assert (outputs["remote_uri"], outputs["completed_by"]) == (third["outputs"]["remote_uri"], third["job_id"])
    assert f"/{first['outputs']['run_id']}/" in third["outputs"]["remote_uri"]
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1), "a success sends nothing"

    # The episode ended with the success: the next failure alerts again.
    platform.down(only=["sshd"])
    try:
        fourth = wait_job(res, enqueue(celery_app, "backup.edge_export", table=table))
    finally:
        platform.up(only=["sshd"])
    assert fourth["state"] == "failed" and fourth["alert_sent"] is True
    assert sink_counts(settings) == (mails0 + 2, tickets0 + 2)


@pytest.mark.parametrize("bad", ["x; DROP TABLE y", "a.b.c", "../etc", "db.", "db.1table", "db.t`x"])
def test_bad_names_fail_before_any_query(settings, res, worker, celery_app, bad):
    rec = wait_job(res, enqueue(celery_app, "backup.edge_export", table=bad))
    assert rec["state"] == "failed"
    assert rec["error"].startswith("InvalidInput: invalid")
    assert all(p["state"] == "pending" and p["attempts"] == 0 for p in rec["phases"])
    out = backupctl("run", "edge-export", bad, config=CONFIG_PATH)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("backupctl: error: InvalidInput:")


def test_unknown_table_is_fatal_not_retried(settings, res, worker, celery_app):
    rec = wait_job(res, enqueue(celery_app, "backup.edge_export", table="mnaas_test.no_such_table"))
    assert rec["state"] == "failed" and rec["phase"] == "export"
    assert rec["error"].startswith("NotFound:")
    assert next(p for p in rec["phases"] if p["name"] == "export")["attempts"] == 1


def test_unknown_host_key_refused_nothing_written(settings, res, tables, platform, tmp_path):
    """Runs the phases in-process (no worker needed) with a known_hosts holding another key."""
    import subprocess

    from backup import edge_export as wf
    from base.errors import HostKeyMismatch
    from backup.resources import Resources
    from backup.runner import fail_job, phase
    from config.settings import load_settings

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kt, kb = (tmp_path / "other.pub").read_text().split()[:2]
    bad_kh = tmp_path / "known_hosts"
    bad_kh.write_text(f"[127.0.0.1]:{settings.sftp.port} {kt} {kb}\n")
    cfg = write_config(tmp_path / "c.yaml", {"sftp": {"known_hosts": str(bad_kh)}})
    r2 = Resources(load_settings(cfg), _redis=res.redis)
    table = tables["hostkey"]
    rec = wf.submit(r2, table)
    job_id = rec["job_id"]
    with pytest.raises(HostKeyMismatch, match="CHANGED"):
        for name in wf.DEFINITION.phase_names:
            with phase(r2, job_id, name) as ctx:
                wf.DEFINITION.phase(name).run(ctx)
    # Empty known_hosts: unknown key, also refused.
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    r3 = Resources(load_settings(write_config(tmp_path / "d.yaml", {"sftp": {"known_hosts": str(empty)}})),
                   _redis=res.redis)
    with pytest.raises(HostKeyMismatch, match="unknown host key"):
        r3.sftp().connect()
    final = fail_job(r2, job_id, "transfer", HostKeyMismatch("x"))
    assert final["state"] == "failed"
    assert remote_files(settings, posixpath.join(settings.sftp.remote_dir, table)) == []


def test_worker_killed_mid_transfer_redelivered_cleanly(settings, res, celery_app, worker, tables, tmp_path):
    """SIGKILL the whole worker while it uploads; the redelivered phase completes with one clean file."""
    table = tables["killed"]
    # A slow worker (bandwidth cap) so the kill lands mid-transfer; the main worker steps aside meanwhile.
    # Short visibility timeout so the unacked message comes back quickly after the kill.
    slow_cfg = write_config(STATE / "slow.yaml", {"sftp": {"rate_limit_mbps": 0.01, "streams": 1},
                                                  "edge_export": {"compresslevel": 1},
                                                  "celery": {"task_time_limit": 20, "task_soft_time_limit": 18,
                                                             "visibility_timeout": 22}})
    worker.stop()
    slow = WorkerProc(slow_cfg, "slow")
    slow2 = WorkerProc(slow_cfg, "slow2")
    try:
        slow.start()
        job_id = enqueue(celery_app, "backup.edge_export", table=table)
        wait_until(lambda: (res.jobs.find(job_id) or {}).get("progress", {}).get("transfer", {}).get("bytes", 0) > 0,
                   60, "transfer to start")
        folder = posixpath.join(settings.sftp.remote_dir, table)
        assert any(p.endswith(".part") for p in remote_files(settings, folder)), "temp file expected mid-transfer"
        slow.kill()
        slow2.start()
        rec = wait_job(res, job_id, timeout=240)
    finally:
        # Whatever happened, no worker with the slow config may outlive this test.
        slow.kill()
        slow2.stop()
        worker.start()
    assert rec["state"] == "success", rec
    transfer = next(p for p in rec["phases"] if p["name"] == "transfer")
    assert transfer["deliveries"] == 2
    files = remote_files(settings, posixpath.join(settings.sftp.remote_dir, table))
    assert len(files) == 1 and not files[0].endswith(".part")
    assert ssh(settings, ["sha256sum", files[0]]).stdout.split()[0] == rec["outputs"]["sha256"]


def test_parallel_streams_give_the_same_rows_in_window_order(settings, res, tables, tmp_path):
    """Month ranges exported as parallel queries and appended as gzip members equal one stream's output."""
    import gzip
    import hashlib

    from backup.edge_export import export_to_file
    from backup.resources import Resources

    window = export_window(5, None, "UTC")
    outputs = {}
    for streams in (1, 3):
        r = Resources(settings.model_copy(update={"edge_export": settings.edge_export.model_copy(
            update={"streams": streams})}), _redis=res.redis)
        final = tmp_path / f"s{streams}.csv.gz"
        stats = export_to_file(r, TableName.parse(tables["main"]), window, final)
        data = final.read_bytes()
        assert stats["sha256"] == hashlib.sha256(data).hexdigest() and stats["bytes"] == len(data)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no temp left"
        outputs[streams] = (stats["rows"], gzip.decompress(data))
    rows1, text1 = outputs[1]
    rows3, text3 = outputs[3]
    assert rows1 == rows3 == len(_window_rows(settings, tables["main"], window))
    # Same rows; members come in window order: the month range a row belongs to never goes backwards.
    parse = lambda b: list(csv.reader(io.StringIO(b.decode(), newline=""), delimiter=";"))  # noqa: E731
    r1, r3 = parse(text1), parse(text3)
    assert sorted(map(tuple, r1)) == sorted(map(tuple, r3))
    pieces = window.split(3)
    member = [next(i for i, w in enumerate(pieces) if w.start.isoformat() <= r[7] < w.end.isoformat()) for r in r3]
    assert member == sorted(member) and len(set(member)) == len(pieces)


#: a table with every type of backup.archive.SERVER_FIELDS, and values that stress each field's text
_TYPES_TABLE = TableName("mnaas_test", "types_lines")
_TYPES_COLUMNS = ("ti TINYINT, si SMALLINT, i INT, bi BIGINT, b BOOLEAN, s STRING, vc VARCHAR(10), c CHAR(5), "
                  "ts TIMESTAMP, dec DECIMAL(12,3), dsmall DECIMAL(38,18), d0 DECIMAL(5,0), d DATE, partition_date STRING")
_TYPES_ROWS = r"""
  (-128, -32768, -2147483648, -9223372036854775808, true, 'semi;colon', 'a;b', 'ab', TIMESTAMP'2024-02-29 23:59:59.123456',
   -0.001, 0.000000000000000001, 0, DATE'0001-01-01', '2026-09-01'),
  (127, 32767, 2147483647, 9223372036854775807, false, 'say "hi"', 'q"', 'a"b', TIMESTAMP'1900-01-01 00:00:00',
   0, 1.5, -99999, DATE'1582-10-10', '2026-09-01'),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2026-09-02'),
  (0, 0, 0, 0, true, '', '', '', TIMESTAMP'2024-01-01 00:00:00.100', 123456789.123,
   -12345678901234567890.123456789012345678, 5, DATE'9999-12-31', '2026-09-02'),
  (1, 2, 3, 4, false, 'two
lines', 'cr
only', 'x
y', TIMESTAMP'1582-10-10 12:00:00', 1.100, 100, 1,
   DATE'2026-12-06', '2026-10-31'),
  (5, 6, 7, 8, false, 'crlf
line;"both"', ' sp ', ' ', TIMESTAMP'1970-01-01 00:00:00.000001', 999999999.999, 0.1, 2,
   DATE'1970-01-01', '2026-10-31'),
  (9, 10, 11, 12, true, 'Nørd Ørbit ✓ 日本 	 tab', '✓', 'ø', TIMESTAMP'0001-01-01 00:00:00', 0.010, 0E-18, 3,
   DATE'2000-02-29', '2026-10-31'),
  (13, 14, 15, 16, true, '=1+2', 'ends;', '"', TIMESTAMP'9999-12-31 23:59:59.999999', -999999999.999, -0.5, 99999,
   DATE'2026-10-31', '2026-11-01')"""


@pytest.fixture(scope="module")
def types_table(platform, settings):
    """``_TYPES_TABLE`` made afresh (partitioned by date as exported tables are), its window, and its rows as a
    plain impyla cursor (no type conversion) reads them, in CSV by Python's csv module: the export's text from
    outside the project."""
    from backup.window import Window
    from connectors.hive import HiveClient

    t = _TYPES_TABLE
    with HiveClient.from_settings(settings) as hive:
        hive.execute(f"CREATE DATABASE IF NOT EXISTS `{t.db}`")
        hive.execute(f"DROP TABLE IF EXISTS {t.sql}")
        hive.execute(f"CREATE TABLE {t.sql} ({_TYPES_COLUMNS}) USING parquet PARTITIONED BY (partition_date)")
        hive.execute(f"INSERT INTO {t.sql} VALUES {_TYPES_ROWS}")
    window = Window(dt.date(2026, 9, 1), dt.date(2026, 11, 1))  # the last row's day is outside it
    cur = connect(settings.hive.host, settings.hive.port, auth_mechanism="NOSASL").cursor(convert_types=False)
    cur.execute(f"SELECT * FROM {t.sql} WHERE partition_date >= '2026-09-01' AND partition_date < '2026-11-01'")
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=";", lineterminator="\n").writerows(cur.fetchall())
    cur.close()
    return t, window, out.getvalue().encode()


def _export_text(settings, res, table, window, final, **edge) -> tuple[dict, bytes]:
    import gzip

    from backup.edge_export import export_to_file
    from backup.resources import Resources

    r = Resources(settings.model_copy(update={"edge_export": settings.edge_export.model_copy(update=edge)}),
                  _redis=res.redis)
    stats = export_to_file(r, table, window, final)
    return stats, gzip.decompress(final.read_bytes())


def _csv_lines(text: bytes) -> list[bytes]:
    """Rows of CSV text (a quoted field may hold newlines), each as its bytes: the same rows in any order."""
    return sorted(row.encode() for row in
                  ("\x00".join(r) for r in csv.reader(io.StringIO(text.decode(), newline=""), delimiter=";")))


def test_lines_formatted_by_the_sql_engine_are_the_bytes_formatted_here(settings, res, types_table, tmp_path):
    """Each type of SERVER_FIELDS with extremes, NULLs, empty text, ; " LF CR CRLF, non-ASCII, CHAR padding and a
    formula-like text: the SQL engine's lines are the bytes of the columns formatted here, which are the bytes of
    a plain impyla cursor written by the csv module; the row outside the window is in neither."""
    table, window, expected = types_table
    by_engine, engine_text = _export_text(settings, res, table, window, tmp_path / "engine.csv.gz")
    by_worker, worker_text = _export_text(settings, res, table, window, tmp_path / "worker.csv.gz",
                                          server_formatting=False)
    by_streams, streams_text = _export_text(settings, res, table, window, tmp_path / "streams.csv.gz", streams=2)
    assert by_engine["formatted_by"] == by_streams["formatted_by"] == "the SQL engine"
    assert by_worker["formatted_by"] == "the worker"
    assert by_engine["rows"] == by_worker["rows"] == by_streams["rows"] == 7
    assert _csv_lines(engine_text) == _csv_lines(worker_text) == _csv_lines(streams_text) == _csv_lines(expected)
    # The same rows in the same order as the server sent them: the same bytes, so the same archive.
    assert engine_text == worker_text
    assert by_engine["sha256"] == by_worker["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.csv.gz", "streams.csv.gz", "worker.csv.gz"], \
        "no temp left"


def test_a_type_the_engine_cannot_write_exactly_is_formatted_here(settings, res, platform, tmp_path):
    """A DOUBLE (Java's digits are laid out unlike repr's) keeps the whole table on the worker's formatter."""
    from backup.window import Window
    from connectors.hive import HiveClient

    t = TableName("mnaas_test", "types_double")
    with HiveClient.from_settings(settings) as hive:
        hive.execute(f"CREATE DATABASE IF NOT EXISTS `{t.db}`")
        hive.execute(f"DROP TABLE IF EXISTS {t.sql}")
        hive.execute(f"CREATE TABLE {t.sql} (id BIGINT, amount DOUBLE, partition_date STRING) USING parquet")
        hive.execute(f"INSERT INTO {t.sql} VALUES (1, 1.0E10, '2026-09-01'), (2, 0.1, '2026-09-01'), "
                     f"(3, NULL, '2026-09-02')")
    stats, text = _export_text(settings, res, t, Window(dt.date(2026, 9, 1), dt.date(2026, 10, 1)),
                               tmp_path / "double.csv.gz")
    assert stats["formatted_by"] == "the worker"
    assert sorted(text.splitlines()) == [b"1;10000000000.0;2026-09-01", b"2;0.1;2026-09-01", b"3;;2026-09-02"]


@pytest.mark.parametrize("streams, batches_refused", [(1, [7]), (2, [3, 4])])
def test_lines_that_are_not_text_start_the_export_over_with_the_columns(settings, res, types_table, tmp_path,
                                                                        monkeypatch, caplog, streams, batches_refused):
    """Spark sends Java strings, so its lines are always UTF-8; another engine's might not be.  Injected here:
    the first batch of lines is refused, the export starts over formatting the columns, and the archive is
    what the columns give, with no temporary file left."""
    from backup import archive

    table, window, expected = types_table
    real = archive.CsvGzipWriter.write_lines
    refused = []

    def not_text(self, col):
        refused.append(len(col.values))
        raise archive.NotText("a line from the SQL engine is not UTF-8 (invalid start byte at byte 3)")

    monkeypatch.setattr(archive.CsvGzipWriter, "write_lines", not_text)
    stats, text = _export_text(settings, res, table, window, tmp_path / "again.csv.gz", streams=streams)
    monkeypatch.setattr(archive.CsvGzipWriter, "write_lines", real)
    # every stream's first batch refused (two streams: September's four rows, October's three)
    assert sorted(refused) == batches_refused and stats["formatted_by"] == "the worker" and stats["rows"] == 7
    assert _csv_lines(text) == _csv_lines(expected)
    assert "exporting the window again with the columns formatted here" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["again.csv.gz"], "the refused attempt left nothing"


@pytest.mark.parametrize("engine, rate, verify", [("openssh", None, "in-stream"), ("openssh", 50.0, "in-stream"),
                                                  ("openssh", None, "read-back"), ("openssh", 50.0, "read-back"),
                                                  ("paramiko", None, "in-stream"), ("paramiko", None, "read-back")])
def test_each_upload_engine_delivers_the_exact_bytes_to_an_awkward_name(settings, res, platform, tmp_path, engine, rate,
                                                                        verify):
    """ssh + the in-stream receiver (fed by a thread under a cap), scp -s, ssh + cat under a cap, paramiko (one
    exec channel in-stream, two SFTP streams otherwise): same bytes, checked with OpenSSH's sha256sum; in-stream,
    the server's own hash and byte count come back with the upload."""
    import hashlib
    import os

    from backup.resources import Resources
    from config.settings import load_settings
    from connectors.sftp import upload

    r = Resources(load_settings(write_config(tmp_path / "c.yaml", {"sftp": {"engine": engine, "verify": verify}})),
                  _redis=res.redis)
    local = tmp_path / "dir with: colon" / "archive.csv.gz"
    local.parent.mkdir()
    local.write_bytes(os.urandom(3 * 2**20 + 17))
    folder = posixpath.join(settings.sftp.remote_dir, f"engines-{engine}-{rate}-{verify}")
    remote = posixpath.join(folder, "it's a \"name\" with spaces.part")
    target = r.sftp()
    with target.connect() as sess:
        sess.makedirs(folder)
        sess.remove(remote)
    seen = []
    uploaded = upload(target, local, remote, progress=seen.append, streams=2, rate_limit_mbps=rate)
    out = ssh(settings, ["sha256sum", remote])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == hashlib.sha256(local.read_bytes()).hexdigest()
    if verify == "in-stream":
        assert (uploaded.remote_sha256, uploaded.remote_bytes) == (out.stdout.split()[0], local.stat().st_size)
    else:
        assert uploaded.remote_sha256 is None and uploaded.verified_by == "read-back"
    assert sum(seen) == local.stat().st_size, "progress adds up to the file size"
    assert remote_files(settings, folder) == [remote]


@pytest.mark.parametrize("engine", ["openssh", "paramiko"])
def test_a_server_without_python3_is_verified_by_read_back_and_says_so(settings, res, platform, tmp_path, monkeypatch,
                                                                       engine):
    """The receiver's interpreter missing on the server (a name no server has): the upload is sent the plain way,
    comes back without a digest and says why; verify_and_commit then reads the temp file back and commits."""
    import hashlib
    import os

    import connectors.sftp as sftp_mod
    from backup.resources import Resources
    from config.settings import load_settings

    monkeypatch.setattr(sftp_mod, "RECEIVER_PYTHON", "python3-not-installed-here")
    r = Resources(load_settings(write_config(tmp_path / "c.yaml", {"sftp": {"engine": engine, "streams": 1}})),
                  _redis=res.redis)
    local = tmp_path / "a.bin"
    local.write_bytes(os.urandom(2**20 + 3))
    folder = posixpath.join(settings.sftp.remote_dir, f"no-python-{engine}")
    tmp, final = posixpath.join(folder, ".a.bin.part"), posixpath.join(folder, "a.bin")
    target = r.sftp()
    with target.connect() as sess:
        sess.makedirs(folder)
        sess.remove(final)
    uploaded = sftp_mod.upload(target, local, tmp)
    assert uploaded.remote_sha256 is None and uploaded.verified_by == "read-back (no python3 on the server)"
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    with target.connect() as sess:
        assert sftp_mod.verify_and_commit(sess, tmp, final, sha, lambda: None, uploaded) == "committed"
    out = ssh(settings, ["sha256sum", final])
    assert out.returncode == 0 and out.stdout.split()[0] == sha


@pytest.mark.parametrize("rate, verify, program", [(None, "in-stream", "ssh"), (50.0, "in-stream", "ssh"),
                                                   (None, "read-back", "scp")])
def test_openssh_engine_refuses_a_changed_host_key_and_sends_nothing(settings, res, platform, tmp_path, rate, verify,
                                                                      program):
    import subprocess

    from base.errors import HostKeyMismatch
    from backup.resources import Resources
    from config.settings import load_settings
    from connectors.sftp import upload

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kt, kb = (tmp_path / "other.pub").read_text().split()[:2]
    bad_kh = tmp_path / "known_hosts"
    bad_kh.write_text(f"[127.0.0.1]:{settings.sftp.port} {kt} {kb}\n")
    r = Resources(load_settings(write_config(tmp_path / "c.yaml", {"sftp": {"engine": "openssh", "verify": verify,
                                                                            "known_hosts": str(bad_kh)}})),
                  _redis=res.redis)
    local = tmp_path / "a.bin"
    local.write_bytes(b"x" * 1000)
    remote = posixpath.join(settings.sftp.remote_dir, f"hostkey-openssh-{rate}.part")
    with pytest.raises(HostKeyMismatch, match=rf"{program} to .*(Host key verification failed|IDENTIFICATION HAS CHANGED)"):
        upload(r.sftp(), local, remote, rate_limit_mbps=rate)
    assert ssh(settings, ["test", "-e", remote], check=False).returncode == 1, "nothing sent (1: absent; 255: ssh failed)"


@pytest.fixture(scope="module")
def lines_table(tables, settings):
    """The main sample table without its DOUBLE: the SQL engine writes its CSV lines."""
    from connectors.hive import HiveClient

    t = TableName("mnaas_test", "traffic_lines")
    with HiveClient.from_settings(settings) as hive:
        hive.execute(f"DROP TABLE IF EXISTS {t.sql}")
        hive.execute(f"CREATE TABLE {t.sql} USING parquet PARTITIONED BY (partition_date) AS SELECT id, msisdn, "
                     f"customer, note, bytes_up, event_ts, partition_date FROM {TableName.parse(tables['main']).sql}")
    return str(t)


@pytest.mark.parametrize("which, written_by", [("main", "the worker"), ("lines", "the SQL engine")])
def test_disk_full_fails_clearly_leaves_nothing_and_the_next_run_succeeds(settings, res, tables, lines_table, tmp_path,
                                                                          which, written_by):
    """The local export folder on a 64 KiB tmpfs: ENOSPC, no folder or temp file left, lock freed; room back, success.
    Both ways of making the CSV text: the worker formatting the columns, and the SQL engine writing the lines."""
    import subprocess

    from backup import edge_export as wf
    from backup.resources import Resources
    from backup.runner import fail_job, phase

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        r = Resources(settings.model_copy(update={"edge_export": settings.edge_export.model_copy(
            update={"export_dir": mount})}), _redis=res.redis)
        table = tables["main"] if which == "main" else lines_table
        job_id = wf.submit(r, table)["job_id"]
        with phase(r, job_id, "lock") as ctx:
            wf.lock_phase(ctx)
        with pytest.raises(Exception) as full:
            with phase(r, job_id, "export") as ctx:
                wf.export_phase(ctx)
        assert "No space left on device" in str(full.value)
        rec = fail_job(r, job_id, "export", full.value)
        assert rec["state"] == "failed" and "No space left on device" in rec["error"]
        assert sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*")) == [table], "nothing but the table folder"
        assert r.locks.holder(wf.WORKFLOW, table) is None
        subprocess.run(["mount", "-o", "remount,size=32m", str(mount)], check=True)  # space returns
        again = wf.submit(r, table)["job_id"]
        for name in ("lock", "export"):
            with phase(r, again, name) as ctx:
                wf.DEFINITION.phase(name).run(ctx)
        done = r.jobs.get(again)
        archive = Path(done["outputs"]["local_path"])
        assert archive.is_file() and archive.stat().st_size == done["outputs"]["bytes"]
        assert next(p for p in done["phases"] if p["name"] == "export")["note"] == f"CSV lines written by {written_by}"
        import gzip
        import hashlib

        data = archive.read_bytes()
        assert hashlib.sha256(data).hexdigest() == done["outputs"]["sha256"]
        assert gzip.decompress(data).count(b"\n") >= done["outputs"]["rows"] > 0
        r.locks.release(Held.from_dict(done["lock"]))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    res.alerter.success(wf.WORKFLOW, table)


def test_wait_exits_1_when_the_run_fails_or_is_skipped(settings, res, worker, tables):
    import json

    failed = backupctl("run", "edge-export", "mnaas_test.no_such_table_wait", "--wait", "--json", config=CONFIG_PATH)
    assert failed.returncode == 1 and json.loads(failed.stdout)["state"] == "failed", failed.stderr
    table = tables["concurrent"]
    held, _ = res.locks.acquire("edge-export", table, "someone-else")
    assert held is not None
    try:
        skipped = backupctl("run", "edge-export", table, "--wait", "--json", config=CONFIG_PATH)
    finally:
        res.locks.release(held)
    rec = json.loads(skipped.stdout)
    assert skipped.returncode == 1 and rec["state"] == "skipped" and rec["reason"] == "lock held by job someone-else"


def test_alerts_disabled_records_the_failure_and_sends_nothing(settings, res, tables):
    from backup import edge_export as wf
    from base.errors import NotFound
    from backup.resources import Resources
    from backup.runner import fail_job, phase

    r = Resources(settings.model_copy(update={"alerts": settings.alerts.model_copy(update={"enabled": False})}),
                  _redis=res.redis)
    table = tables["hostkey"]
    r.alerter.success(wf.WORKFLOW, table)
    job_id = wf.submit(r, table)["job_id"]
    with phase(r, job_id, "lock") as ctx:
        wf.lock_phase(ctx)
    before = sink_counts(settings)
    rec = fail_job(r, job_id, "export", NotFound("no table"))
    assert rec["state"] == "failed" and rec["alert_sent"] is False and rec["alert"]["reason"] == "alerts disabled"
    assert sink_counts(settings) == before
    assert not r.redis.exists(r.alerter._key(wf.WORKFLOW, table))  # no episode opened: the next failure alerts
    assert r.locks.holder(wf.WORKFLOW, table) is None


def test_a_failed_runs_archive_that_no_longer_matches_its_checksum_is_not_resumed(settings, res, tables):
    from backup import edge_export as wf
    from base.errors import ConnectionFailed
    from backup.runner import fail_job, phase

    table = tables["hostkey"]
    res.alerter.success(wf.WORKFLOW, table)
    first = wf.submit(res, table)["job_id"]
    for name in ("lock", "export"):
        with phase(res, first, name) as ctx:
            wf.DEFINITION.phase(name).run(ctx)
    fail_job(res, first, "transfer", ConnectionFailed("backup server away"))
    archive = Path(res.jobs.get(first)["outputs"]["local_path"])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1  # the kept archive rots on disk
    archive.write_bytes(bytes(data))
    second = wf.submit(res, table)["job_id"]
    for name in ("lock", "export"):
        with phase(res, second, name) as ctx:
            wf.DEFINITION.phase(name).run(ctx)
    rec = res.jobs.get(second)
    export = next(p for p in rec["phases"] if p["name"] == "export")
    assert export["state"] == "success" and "resumed_from" not in rec["outputs"]
    assert Path(rec["outputs"]["local_path"]) != archive and Path(rec["outputs"]["local_path"]).is_file()
    res.locks.release(Held.from_dict(rec["lock"]))
    res.alerter.success(wf.WORKFLOW, table)

"""restore-edge-export end to end on the local platform: a real edge-export backup, then real restores.

Sample tables are backed up with the edge-export workflow through the session worker, restored
through the same worker (started by ``backupctl restore edge-export``), and the restored table is
compared row by row with the live table's window with ``EXCEPT ALL`` both ways.  The sample holds
``;``, quotes, newlines, CR LF, unicode, NULLs and empty strings; an empty string comes back as
NULL (the archive writes both as an empty field), so the live side is compared with ``nullif``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from base.errors import InvalidInput
from base.identifiers import TableName
from backup.resources import Resources
from backup.restore_edge_export import PROP_RESTORED_BY, PROP_RESTORED_FROM, Names, validate_request
from tests.conftest import STATE
from tests.helpers import enqueue, sink_counts, wait_job
from local_platform.sample_data import create_sample_table

pytestmark = pytest.mark.integration

# months_back=5: one row a day from the window's first day on, every row inside the five-month window,
# one partition per row (few partitions keep the table writes and the renames of the swap short).
ROWS = 120
STAGING = STATE / "restore"


@pytest.fixture(scope="module")
def mres(settings, redis_client):
    return Resources(settings, _redis=redis_client)


@pytest.fixture(scope="module")
def spark(platform, mres):
    """One Spark Connect session for the module's checks."""
    with mres.spark().session() as session:
        yield session


@pytest.fixture(scope="module")
def backups(platform, settings, mres, worker, celery_app):
    """Sample tables, each backed up by a real edge-export run: {key: (table, edge-export record)}."""
    from connectors.hive import HiveClient

    tables = {}
    with HiveClient.from_settings(settings) as hive:
        for key, rows in (("main", ROWS), ("live", 80), ("bad", 40)):
            t = TableName("mnaas_test", f"rst_{key}")
            create_sample_table(hive, t, rows=rows, months_back=5, count=False)
            hive.execute(f"DROP TABLE IF EXISTS `mnaas_test`.`rst_{key}_restored`", "drop an earlier restore")
            tables[key] = str(t)
    jobs = {key: enqueue(celery_app, "backup.edge_export", table=t) for key, t in tables.items()}
    out = {}
    for key, job in jobs.items():
        rec = wait_job(mres, job)
        assert rec["state"] == "success", rec
        assert rec["outputs"]["rows"] > 0
        out[key] = (tables[key], rec)
    return out


def restore(capsys, *args: str) -> tuple[int, dict | None, str]:
    """``backupctl restore edge-export ARGS --wait --json`` in this process: (exit code, record, stderr)."""
    from workers.cli import main

    capsys.readouterr()
    code = main(["restore", "edge-export", *args, "--wait", "--json", "--timeout", "240"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def sql(spark, statement: str) -> list:
    return spark.sql(statement).collect()


def refreshed(spark, table: TableName) -> TableName:
    """``table``, its cached relation in this (long-lived) session dropped: the worker's session renamed tables."""
    spark.sql(f"REFRESH TABLE {table.sql}")
    return table


def window_rows_sql(spark, table: str, window: dict) -> str:
    """The live table's rows in the archive's window, with an empty string read as NULL (the archive's caveat)."""
    t = TableName.parse(table)
    schema = spark.table(t.sql).schema
    cols = ", ".join(f"nullif(`{f.name}`, '') AS `{f.name}`" if f.dataType.typeName() == "string" else f"`{f.name}`"
                     for f in schema)
    return (f"SELECT {cols} FROM {t.sql} WHERE partition_date >= '{window['start']}' "
            f"AND partition_date < '{window['end']}'")


def differences(spark, a: str, b: str) -> tuple[int, int]:
    """Rows of ``a`` not in ``b`` and of ``b`` not in ``a``, duplicates and NULLs counted (EXCEPT ALL both ways)."""
    one = sql(spark, f"SELECT count(*) FROM ({a} EXCEPT ALL {b})")[0][0]
    two = sql(spark, f"SELECT count(*) FROM ({b} EXCEPT ALL {a})")[0][0]
    return one, two


def staging_tables(spark) -> list[str]:
    return [r["tableName"] for r in sql(spark, "SHOW TABLES IN mnaas_test LIKE '*__rst_*'")]


def test_restore_into_a_new_table_round_trips_exactly(capsys, settings, mres, spark, backups):
    table, backup = backups["main"]
    into = f"{table}_restored"
    code, rec, err = restore(capsys, table, "--job", backup["job_id"], "--into", into)
    assert code == 0 and rec["state"] == "success", (err, rec)
    out = rec["outputs"]
    assert out["restored_table"] == into and out["source_job"] == backup["job_id"]
    assert out["remote_uri"] == backup["outputs"]["remote_uri"] and out["window"] == backup["args"]["window"]
    assert out["sha256"] == backup["outputs"]["sha256"] and out["sha256_verified"] is True
    assert out["rows_expected"] == out["rows_restored"] == backup["outputs"]["rows"]
    assert rec["args"]["selected_by"] == "job" and rec["lock"]["key"].endswith(f":edge-export:{table}")

    expected = window_rows_sql(spark, table, backup["args"]["window"])
    assert differences(spark, expected, f"SELECT * FROM {TableName.parse(into).sql}") == (0, 0)
    assert sql(spark, f"SELECT count(*) FROM {TableName.parse(into).sql}")[0][0] == backup["outputs"]["rows"]
    # The tricky values made it through as written: separators, quotes, line breaks, NULLs.
    notes = {r[0] for r in sql(spark, f"SELECT note FROM {TableName.parse(into).sql}")}
    assert {"semi;colon", 'say "hi"', "two\nlines", "crlf\r\nline", "Nørd Ørbit ✓ 日本", None} <= notes
    assert "" not in notes  # the documented caveat: an empty string comes back as NULL
    props = {r[0]: r[1] for r in sql(spark, f"SHOW TBLPROPERTIES {TableName.parse(into).sql}")}
    assert props[PROP_RESTORED_BY] == rec["job_id"] and props[PROP_RESTORED_FROM] == backup["job_id"]

    assert not (STAGING / rec["job_id"]).exists(), "the fetched archive is removed at the end"
    assert staging_tables(spark) == []
    assert mres.locks.holder("edge-export", table) is None


def test_latest_and_window_choose_the_archive_of_the_run(mres, backups):
    table, backup = backups["main"]
    w = backup["args"]["window"]
    label = f"{w['start'].replace('-', '')}..{w['end'].replace('-', '')}"
    for kwargs, how in (({}, "latest"), ({"latest": True}, "latest"), ({"window": label}, "window"),
                        ({"window": f"{w['start']}..{w['end']}"}, "window")):
        args = validate_request(mres, table, into="mnaas_test.x", **kwargs)
        assert (args["selected_by"], args["archive"]["job_id"]) == (how, backup["job_id"]), kwargs
        assert args["archive"]["sha256"] == backup["outputs"]["sha256"]
    with pytest.raises(InvalidInput, match="no successful edge-export of mnaas_test.rst_main with window 20000101-20000601"):
        validate_request(mres, table, into="mnaas_test.x", window="20000101..20000601")


def test_an_existing_table_is_refused_without_replace_and_replaced_with_it(capsys, settings, mres, spark, backups):
    table, backup = backups["main"]
    into = TableName("mnaas_test", "rst_main_existing")
    sql(spark, f"DROP TABLE IF EXISTS {into.sql}")
    sql(spark, f"CREATE TABLE {into.sql} (keep STRING) USING parquet")
    sql(spark, f"INSERT INTO {into.sql} VALUES ('precious')")
    mails0, tickets0 = sink_counts(settings)

    code, rec, err = restore(capsys, table, "--latest", "--into", str(into))
    assert code == 1 and rec["state"] == "failed"
    assert rec["error"] == (f"AlreadyExists: {into} already exists; give --replace to replace it "
                            f"(nothing was written)"), rec["error"]
    assert "\n" not in rec["error"] and rec["phase"] == "check"
    assert [p["state"] for p in rec["phases"]][2:] == ["pending"] * 5  # nothing fetched, loaded or swapped
    assert [tuple(r) for r in sql(spark, f"SELECT * FROM {into.sql}")] == [("precious",)]
    assert staging_tables(spark) == [] and not (STAGING / rec["job_id"]).exists()
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)  # a failed job: one alert

    code, rec, err = restore(capsys, table, "--latest", "--into", str(into), "--replace")
    assert code == 0 and rec["state"] == "success", (err, rec)
    assert rec["outputs"]["dropped_table"] == str(into) and rec["outputs"]["replaced_table"] is None
    refreshed(spark, into)
    expected = window_rows_sql(spark, table, backup["args"]["window"])
    assert differences(spark, expected, f"SELECT * FROM {into.sql}") == (0, 0)
    assert sql(spark, "SHOW TABLES IN mnaas_test LIKE 'rst_main_existing__*'") == []  # the replaced one is dropped
    sql(spark, f"DROP TABLE {into.sql}")


def _flip_byte(path: Path) -> int:
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return at


def test_a_corrupted_archive_fails_once_with_one_alert_and_restores_nothing(capsys, settings, mres, spark, backups):
    table, backup = backups["bad"]
    remote = backup["outputs"]["remote_uri"].split(f":{settings.sftp.port}", 1)[1]
    into = TableName("mnaas_test", "rst_bad_restored")
    # The backup server is this machine's sshd: the archive is a local file here.
    _flip_byte(Path(remote))
    mails0, tickets0 = sink_counts(settings)
    try:
        code, rec, err = restore(capsys, table, "--job", backup["job_id"], "--into", str(into))
    finally:
        _flip_byte(Path(remote))  # flip it back: the archive is whole again
    assert code == 1 and rec["state"] == "failed", rec
    assert rec["error"].startswith("BackupDamaged: archive ") and remote in rec["error"], rec["error"]
    assert "damaged" in rec["error"] and rec["phase"] == "fetch"
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1), "exactly one alert"
    assert rec["alert_sent"] is True
    assert sql(spark, "SHOW TABLES IN mnaas_test LIKE 'rst_bad_restored*'") == []
    assert staging_tables(spark) == [] and not (STAGING / rec["job_id"]).exists()
    assert mres.locks.holder("edge-export", table) is None


@pytest.mark.parametrize("args, message", [
    (["mnaas_test.bad-name", "--latest", "--into", "mnaas_test.x"], "invalid table name 'bad-name'"),
    (["mnaas_test.rst_main", "--window", "20260101..20260601", "--job", "abc", "--into", "mnaas_test.x"],
     "choose the archive one way: --job, --window or --latest, not job and window"),
    (["mnaas_test.rst_main", "--job", "no-such-job-0123", "--into", "mnaas_test.x"], "no job record 'no-such-job-0123'"),
    (["mnaas_test.rst_main", "--job", "{bad}", "--into", "mnaas_test.x"], "backed up mnaas_test.rst_bad, not mnaas_test.rst_main"),
    (["mnaas_test.rst_main", "--latest", "--into", "mnaas_test.rst_main"], "is the live table: restoring into it needs --replace-live"),
    (["mnaas_test.rst_main", "--latest"], "missing --into DB.NEW_TABLE"),
    (["mnaas_test.rst_main", "--window", "2026-06..2026-11", "--into", "mnaas_test.x"], "invalid window '2026-06..2026-11'"),
    (["mnaas_test.rst_main", "--into", "mnaas_test.x", "--replace", "--replace-live"], "do not go together"),
])
def test_bad_input_is_one_line_from_the_cli_and_nothing_is_enqueued(capsys, settings, mres, backups, args, message):
    args = [a.replace("{bad}", backups["bad"][1]["job_id"]) for a in args]
    index = f"{settings.redis.key_prefix}:jobs"
    before = mres.redis.zcard(index)
    code, rec, err = restore(capsys, *args)
    assert code == 2 and rec is None
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backupctl: error: InvalidInput: ") and message in lines[0], err
    assert mres.redis.zcard(index) == before, "nothing enqueued"


def test_a_bad_request_sent_by_another_service_fails_without_a_phase(mres, celery_app, backups):
    job = enqueue(celery_app, "backup.restore_edge_export", table="mnaas_test.rst_main", job=backups["bad"][1]["job_id"],
                  into="mnaas_test.x")
    rec = wait_job(mres, job)
    assert rec["state"] == "failed" and rec["error"].startswith("InvalidInput: job ") and "backed up" in rec["error"]
    assert all(p["state"] == "pending" and p["deliveries"] == 0 for p in rec["phases"]) and not rec.get("lock")


def test_replace_live_swaps_in_the_archive_and_keeps_the_previous_table(capsys, settings, mres, spark, backups):
    table, backup = backups["live"]
    live = TableName.parse(table)
    snapshot = TableName("mnaas_test", "rst_live_expected")
    sql(spark, f"DROP TABLE IF EXISTS {snapshot.sql}")
    sql(spark, f"CREATE TABLE {snapshot.sql} USING parquet AS {window_rows_sql(spark, table, backup['args']['window'])}")
    # The live table gets damaged: a partition of the window lost, a stray row added.
    day = sql(spark, f"SELECT min(partition_date) FROM {snapshot.sql}")[0][0]
    sql(spark, f"ALTER TABLE {live.sql} DROP PARTITION (partition_date='{day}')")
    sql(spark, f"INSERT INTO {live.sql} SELECT -1, 'x', 'x', 'stray', 0, 0.0, current_timestamp(), '{day}'")
    damaged = sql(spark, f"SELECT count(*) FROM {live.sql}")[0][0]

    code, rec, err = restore(capsys, table, "--replace-live")
    assert code == 0 and rec["state"] == "success", (err, rec)
    out = rec["outputs"]
    names = Names.of(live, live, rec["job_id"])
    assert out["restored_table"] == table and out["replaced_table"] == str(names.replaced)
    assert out["rows_restored"] == backup["outputs"]["rows"] and out["source_job"] == backup["job_id"]
    assert out["swap_seconds"] is not None and out["swap_seconds"] < 30
    refreshed(spark, live)
    # The live table holds exactly the archive's rows; the previous (damaged) table is kept beside it.
    assert differences(spark, f"SELECT * FROM {snapshot.sql}", f"SELECT * FROM {live.sql}") == (0, 0)
    assert sql(spark, f"SELECT count(*) FROM {names.replaced.sql}")[0][0] == damaged
    assert [r[0] for r in sql(spark, f"SHOW PARTITIONS {live.sql}")] != []  # still a partitioned table
    assert staging_tables(spark) == [] and not (STAGING / rec["job_id"]).exists()
    sql(spark, f"DROP TABLE {names.replaced.sql}")
    sql(spark, f"DROP TABLE {snapshot.sql}")


def test_a_fetch_woken_after_its_job_was_failed_leaves_nothing_in_the_staging_folder(settings, mres, backups,
                                                                                   monkeypatch):
    """Found by the fault campaign's paused row: a holder paused past its lock's TTL has its job failed and cleaned
    up meanwhile (the stall check) and its lock taken by another run; woken, its fetch makes the job's staging
    folder, is refused at its commit check (LockLost) and must remove that folder itself: nobody else will."""
    from backup import restore_edge_export as ree
    from backup.runner import fail_job
    from base.errors import LockLost
    from tests.helpers import run_phases_inline

    table, backup = backups["live"]
    rec = ree.submit(mres, table, into=f"{table}_woken", job=backup["job_id"])
    job_id = rec["job_id"]
    original = ree._staging
    woken = []

    def failed_while_paused(res, job, name):
        if not woken:  # the fetch's first call: the job is failed and cleaned up, then the fetch goes on
            woken.append(True)
            held = mres.jobs.get(job_id)["lock"]
            mres.redis.delete(held["key"])  # expired while paused
            thief, _ = mres.locks.acquire("edge-export", table, f"thief-{job_id}")
            assert thief is not None and thief.token > held["token"]
            fail_job(mres, job_id, "fetch", LockLost("lock expired while the worker was paused"),
                     cleanup=lambda r: ree.undo(mres, r))
        return original(res, job, name)

    monkeypatch.setattr(ree, "_staging", failed_while_paused)
    mails, tickets = sink_counts(settings)
    try:
        with pytest.raises(LockLost):
            run_phases_inline(mres, ree.DEFINITION, job_id)
        assert mres.jobs.get(job_id)["state"] == "failed"
        assert not (STAGING / job_id).exists(), list((STAGING / job_id).rglob("*"))
        assert sink_counts(settings) == (mails + 1, tickets + 1)  # the one failure, loud once
    finally:
        mres.redis.delete(mres.locks.key("edge-export", table))


class WorkerKilled(BaseException):
    """Stands for a SIGKILL of the worker: raised out of the load after its rows reached the staging table, nothing
    recorded (the phase stays ``running``); a BaseException, so that no error handler on the way records it."""


def test_a_killed_loads_statement_still_running_on_the_server_never_reaches_the_restored_table(mres, spark, backups,
                                                                                                monkeypatch):
    """Found by the fault campaign's child-kill row (a partition missing from the redelivered load's table, refused
    by the row check): a worker killed while its load's INSERT runs leaves the statement running on the server
    beside the redelivered load.  Whatever that orphan writes (here: some rows once more, committed after the
    redelivered load counted its table) goes to the killed delivery's own staging table, which nobody swaps; the
    restore succeeds with exactly the archive's rows and leaves no staging table."""
    from backup import restore_edge_export as ree
    from backup.jobs import phase_entry
    from backup.runner import phase
    from tests.helpers import run_phases_inline

    table, backup = backups["live"]
    into = TableName.parse(f"{table}_orphaned")
    sql(spark, f"DROP TABLE IF EXISTS {into.sql}")
    job_id = ree.submit(mres, table, into=str(into), job=backup["job_id"])["job_id"]
    killed = []

    @dataclasses.dataclass(frozen=True)
    class KilledBeforeRecording(ree.Loaded):
        def __post_init__(self):
            if not killed:
                killed.append(TableName.parse(self.staging_table))
                raise WorkerKilled()

    monkeypatch.setattr(ree, "Loaded", KilledBeforeRecording)

    def killed_delivery():
        with pytest.raises(WorkerKilled), phase(mres, job_id, "load") as ctx:
            ree.load_phase(ctx)
        assert phase_entry(mres.jobs.get(job_id), "load")["state"] == "running"

    def orphan_commits():
        """The first delivery's statement, still running on the server, commits now: some rows again."""
        first = killed[0]
        sql(spark, f"INSERT INTO {first.sql} SELECT * FROM {first.sql} LIMIT 10")

    done = run_phases_inline(mres, ree.DEFINITION, job_id, before={"load": killed_delivery, "swap": orphan_commits})
    assert done["state"] == "success", done
    expected = window_rows_sql(spark, table, backup["args"]["window"])
    assert differences(spark, expected, f"SELECT * FROM {refreshed(spark, into).sql}") == (0, 0)
    assert sql(spark, f"SELECT count(*) FROM {into.sql}")[0][0] == backup["outputs"]["rows"]
    assert phase_entry(done, "load")["deliveries"] == 2
    assert done["outputs"]["staging_table"] != str(killed[0])  # each start of the load wrote a table of its own
    assert staging_tables(spark) == [], "a staging table was left behind"
    sql(spark, f"DROP TABLE {into.sql}")

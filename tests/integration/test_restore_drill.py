"""restore-drill on the local platform: real backups (edge-export, table-backup), drilled in-process as the chain
runs the phases (tests/helpers.run_phases_inline); the restores it runs are the real restore workflows.

A healthy backup passes and leaves nothing in scratch; a corrupted archive fails the drill with one alert,
and a second failing drill of the same target does not alert again; the drill history, ``backupctl drills``
and the Prometheus gauge say what was proven and when.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from backup import edge_export as ee
from backup import restore_drill as rd
from backup.resources import Resources
from base.identifiers import TableName
from config.settings import RestoreDrillSettings
from local_platform.sample_data import create_sample_table
from tests.helpers import run_phases_inline, sink_counts
from tests.integration.test_restore_table_backup import files, live  # noqa: F401 (module fixtures reused)
from tests.integration.test_table_backup import execute, query

pytestmark = pytest.mark.integration

SCRATCH = "mnaas_drill"


@pytest.fixture(scope="module")
def dres(platform, settings, redis_client, tmp_path_factory):
    """Resources whose restore_drill section points at a scratch database and folder of this module."""
    execute(settings, f"DROP DATABASE IF EXISTS {SCRATCH} CASCADE", f"CREATE DATABASE {SCRATCH}")
    drill = RestoreDrillSettings(scratch_db=SCRATCH, scratch_dir=str(tmp_path_factory.mktemp("drill-scratch")),
                                 sample_rows=50, history=3)
    return Resources(settings.model_copy(update={"restore_drill": drill}), _redis=redis_client)


@pytest.fixture(scope="module")
def exported(settings, dres):
    """A sample table backed up by a real edge-export run (in-process): (table, its record)."""
    from connectors.hive import HiveClient

    table = TableName("mnaas_test", "drill_traffic")
    with HiveClient.from_settings(settings) as hive:
        create_sample_table(hive, table, rows=40, months_back=5, count=False)
    rec = ee.submit(dres, str(table))
    done = run_phases_inline(dres, ee.DEFINITION, rec["job_id"])
    assert done["state"] == "success", done
    return str(table), done


def drill(res: Resources, target: str | None = None) -> dict:
    rec = rd.submit(res, target)
    assert rec["state"] == "queued", rec
    return run_phases_inline(res, rd.DEFINITION, rec["job_id"])


def scratch_tables(settings) -> list[str]:
    return [r[1] for r in query(settings, f"SHOW TABLES IN {SCRATCH}")]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_edge_export_drill_passes_then_a_corrupted_archive_fails_and_alerts_once(settings, dres, exported):
    table, backup = exported
    target = f"edge-export:{table}"
    rd_key = f"{settings.redis.key_prefix}:alert:{rd.WORKFLOW}:{target}"
    dres.redis.delete(rd_key)

    ok = drill(dres, target)
    assert ok["state"] == "success", ok
    result = ok["outputs"]["drills"][target]
    assert result["passed"] and result["backup_job"] == backup["job_id"]
    assert {c["check"]: c["ok"] for c in result["checks"]} == {"sha256": True, "rows": True}
    assert next(c for c in result["checks"] if c["check"] == "rows")["restored"] == backup["outputs"]["rows"]
    assert result["scratch_dropped"] == str(rd.scratch_table(dres, ok["job_id"], table))
    assert scratch_tables(settings) == []
    restore = dres.jobs.get(result["restore_job"])
    assert restore["workflow"] == "restore-edge-export" and restore["state"] == "success"
    verified = rd.verified_restores(dres.redis, settings.redis.key_prefix)[("edge-export", table)]
    assert verified == result["finished"]

    from workers.metrics import registry_for
    scraped = generate_latest(registry_for(dres.redis, settings.redis.key_prefix)).decode()
    assert f'backup_last_verified_restore_timestamp_seconds{{target="{table}",workflow="edge-export"}}' in scraped

    remote = Path(backup["outputs"]["remote_uri"].split(f":{settings.sftp.port}", 1)[1])
    _flip_byte(remote)  # the backup server is this machine's sshd: the archive is a local file here
    try:
        mails0, tickets0 = sink_counts(settings)
        bad = drill(dres, target)
        assert sink_counts(settings) == (mails0 + 1, tickets0 + 1), "exactly one alert"
        again = drill(dres, target)
        assert sink_counts(settings) == (mails0 + 1, tickets0 + 1), "the episode alerted already"
    finally:
        _flip_byte(remote)
    for rec in (bad, again):
        assert rec["state"] == "failed" and not rec.get("alert_sent"), rec
        failed = rec["outputs"]["drills"][target]
        assert not failed["passed"] and "damaged" in failed["error"] and str(remote) in failed["error"]
        child = dres.jobs.get(failed["restore_job"])
        assert child["state"] == "failed" and not child["alert_sent"]
    assert bad["outputs"]["drills"][target]["alert"]["sent"] is True
    assert scratch_tables(settings) == []
    # The failed drills did not make the proven backup any newer; the history holds the newest three.
    assert rd.verified_restores(dres.redis, settings.redis.key_prefix)[("edge-export", table)] == verified
    assert [h["passed"] for h in rd.history(dres, target)] == [False, False, True]
    assert rd.last_results(dres)[target]["drill_job"] == again["job_id"]

    # A passing drill ends the episode: the next failure alerts again.
    assert drill(dres, target)["state"] == "success"
    assert dres.redis.get(rd_key) is None


def test_table_backup_drill_compares_a_sample_with_the_live_table(settings, dres, live, files):  # noqa: F811
    from tests.integration.test_restore_table_backup import fill_live

    target = f"table-backup:{live['table']}"
    ok = drill(dres, target)
    assert ok["state"] == "success", ok
    checks = {c["check"]: c for c in ok["outputs"]["drills"][target]["checks"]}
    assert checks["rows"]["restored"] == len(live["rows"]) and checks["partition_rows"]["ok"]
    assert checks["sample_vs_live"] == {"check": "sample_vs_live", "ok": True, "sampled": 50, "missing_in_live": 0}
    assert scratch_tables(settings) == []

    # The live table loses the rows the backup holds: the sample finds them missing and the drill fails.
    execute(settings, f"TRUNCATE TABLE {live['table']}")
    try:
        bad = drill(dres, target)
        result = bad["outputs"]["drills"][target]
        assert bad["state"] == "failed" and result["error"] == "check(s) failed: sample_vs_live", result
        assert result["checks"][-1]["missing_in_live"] == 50
        assert scratch_tables(settings) == []
    finally:
        fill_live(dres, live["table"], files / "traffic")


def test_bad_drill_requests_write_nothing_and_drills_lists_the_results(capsys, settings, dres):
    from workers.cli import main

    before = set(dres.redis.scan_iter(f"{settings.redis.key_prefix}:drill:*"))
    jobs = dres.redis.zcard(f"{settings.redis.key_prefix}:jobs")
    for target in ("nope:db.t", "edge-export:db", "table-backup:a.b;drop", None):
        assert main(["run", "restore-drill"] + ([target] if target else [])) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert set(dres.redis.scan_iter(f"{settings.redis.key_prefix}:drill:*")) == before
    assert dres.redis.zcard(f"{settings.redis.key_prefix}:jobs") == jobs
    # backupctl drills: the latest result per target (the test config has the same Redis and prefix)
    assert main(["drills", "--json"]) == 0
    listed = {r["target"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(rd.last_results(dres))
    assert all(r["age_seconds"] >= 0 for r in listed.values())
    assert main(["drills"]) == 0
    text = capsys.readouterr().out
    assert all(t in text for t in listed) and ("PASSED" in text or not listed)


def test_customer_files_drill_rehashes_the_restored_files_and_removes_them(settings, dres, tmp_path):
    import os
    import time

    from tests.integration.test_customer_files import own_config, run_inline
    from config.settings import load_settings

    src = tmp_path / "src" / "acme"
    src.mkdir(parents=True)
    hour_ago = time.time() - 3600
    for i in range(3):
        path = src / f"traffic_{i}.csv"
        path.write_bytes(b"a;b\n" * (i + 1))
        os.utime(path, (hour_ago, hour_ago))
    section = {"source_dirs": [str(tmp_path / "src")],
               "customers": {"acme": {"primary": str(tmp_path / "p"), "secondary": str(tmp_path / "s")}},
               "domains": {"traffic": ["traffic_*.csv"]}, "settle_seconds": 60,
               "staging_table": "mnaas_test.cf_drill_inter", "final_table": "mnaas_test.cf_drill_count",
               "status_flag": str(tmp_path / "status"), "manifest_dir": str(tmp_path / "manifests")}
    own = load_settings(own_config(tmp_path / "c.yaml", section))
    res = Resources(own.model_copy(update={"restore_drill": dres.settings.restore_drill}), _redis=dres.redis)
    backup = run_inline(res)
    assert backup["outputs"]["flag"] == "SUCCESS", backup
    (tmp_path / "p" / "traffic" / "traffic_1.csv").write_bytes(b"damaged")  # the secondary still holds it

    rec = drill(res, "customer-files:acme")
    assert rec["state"] == "success", rec
    result = rec["outputs"]["drills"]["customer-files:acme"]
    checks = {c["check"]: c for c in result["checks"]}
    assert checks["files"]["files"] == 3 and checks["files"]["from_secondary"] == 1
    assert checks["sha256_reread"] == {"check": "sha256_reread", "ok": True, "files": 3, "mismatched": []}
    scratch = Path(dres.settings.restore_drill.scratch_dir)
    assert result["scratch_dropped"] == Path(rd.scratch_folder(res, rec["job_id"], "acme")).as_uri()
    assert list(scratch.iterdir()) == []

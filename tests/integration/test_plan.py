"""``backupctl plan``: what a run would do, checked against the run that follows it, and proven to write nothing.

Each test snapshots every Redis key of the test database (with its value) and the files under the folders
the workflow writes, asks for the plan, checks the snapshot is unchanged, then runs the workflow's phases
in-process as the chain runs them (tests/helpers.run_phases_inline) and compares what the run did with
what the plan said: the same window, rows and archive name (edge-export), the same files per customer
(customer-files), the same source files, schema and table names (table-backup).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from backup import customer_files as cf
from backup import edge_export as ee
from backup import table_backup as tb
from backup.resources import Resources
from config.settings import load_settings
from tests.helpers import run_phases_inline
from tests.integration.test_customer_files import own_config, run_inline
from tests.integration.test_table_backup import LIVE_DDL, execute, good_rows, write_files

pytestmark = pytest.mark.integration

HOUR_AGO = time.time() - 3600


def sample_table(settings, name: str, rows: int) -> str:
    """``mnaas_test.<name>``: ``rows`` rows in the last five months, one partition per row (few partitions keep
    the export, the count and the inserts short)."""
    from base.identifiers import TableName
    from connectors.hive import HiveClient
    from local_platform.sample_data import create_sample_table

    table = TableName("mnaas_test", name)
    with HiveClient.from_settings(settings) as hive:
        create_sample_table(hive, table, rows=rows, months_back=5, count=False)
    return str(table)


def redis_snapshot(res: Resources) -> dict:
    """Every key of the test database with its type and value (dumped): any write shows up."""
    return {key: res.redis.dump(key) for key in res.redis.scan_iter("*")}


def files_under(*roots: Path) -> dict[str, tuple[int, float]]:
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                found[str(p)] = (p.stat().st_size, p.stat().st_mtime)
    return found


def test_edge_export_plan_is_what_the_run_then_does(capsys, settings, res, platform):
    table = sample_table(settings, "traffic_plan", rows=60)
    export_dir = settings.path(settings.edge_export.export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    before, files = redis_snapshot(res), files_under(export_dir, Path(settings.sftp.remote_dir))

    plan = ee.plan(res, table)

    assert redis_snapshot(res) == before and files_under(export_dir, Path(settings.sftp.remote_dir)) == files
    assert plan["lock"] == {"free": True, "holder": None} and plan["resume"] is None
    assert plan["rows_estimate"]["source"] == "count(*)" and plan["rows_estimate"]["rows"] > 0
    assert all(f"`partition_date` >= '{plan['window']['start']}'" in sql for sql in plan["sql"][:1])

    rec = ee.submit(res, table)
    done = run_phases_inline(res, ee.DEFINITION, rec["job_id"])
    assert done["state"] == "success", done
    out = done["outputs"]
    assert {k: plan["window"][k] for k in ("start", "end")} == \
        {k: done["args"]["window"][k] for k in ("start", "end")}
    assert plan["rows_estimate"]["rows"] == out["rows"]
    export = next(p for p in done["phases"] if p["name"] == "export")
    assert export["note"] == f"CSV lines written by {plan['csv_lines_written_by']}"  # the sample's DOUBLE: the worker
    # Same file name and the same folders, the run's own folder (its run id) standing where the plan says.
    run_folder = out["run_id"]
    assert plan["local_path"].replace("<UTC time>-<job id[:8]>", run_folder) == out["local_path"]
    assert plan["remote_uri"].replace("<UTC time>-<job id[:8]>", run_folder) == out["remote_uri"]

    # The CLI (in this process): the same plan as JSON, and as text through run --plan.
    from workers.cli import main
    capsys.readouterr()
    assert main(["plan", "edge-export", table, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["window"] == plan["window"]
    assert main(["run", "edge-export", table, "--plan"]) == 0
    text = capsys.readouterr().out
    assert "rows_estimate:" in text and "source: count(*)" in text and "label: " + plan["window"]["label"] in text


def test_edge_export_plan_sees_a_resumable_archive_and_a_held_lock(settings, res, platform):
    table = sample_table(settings, "traffic_plan_resume", rows=30)
    rec = ee.submit(res, table)

    def stop():
        raise ee.FatalError("transfer stopped for the test")
    with pytest.raises(ee.FatalError):
        run_phases_inline(res, ee.DEFINITION, rec["job_id"], before={"transfer": stop})
    failed = res.jobs.get(rec["job_id"])
    plan = ee.plan(res, table)
    assert plan["resume"]["job_id"] == rec["job_id"]
    assert plan["local_path"] == failed["outputs"]["local_path"]
    held, _ = res.locks.acquire(ee.WORKFLOW, table, "someone-else")
    try:
        assert ee.plan(res, table)["lock"] == {"free": False, "holder": "someone-else"}
    finally:
        res.locks.release(held)
    nxt = ee.submit(res, table)
    done = run_phases_inline(res, ee.DEFINITION, nxt["job_id"])
    assert done["outputs"]["resumed_from"] == rec["job_id"]

    # Retention as the plan previews it: none configured for this table in the test config; with keep_runs=1,
    # the retention module's own decision over both runs, never the newest successful one.
    assert plan["retention"].startswith("not configured: no retention rule for edge-export " + table)
    from config.settings import RetentionSettings, RetentionWorkflowSettings
    kept = Resources(res.settings.model_copy(update={"retention": RetentionSettings(
        edge_export=RetentionWorkflowSettings(keep_runs=1))}), _redis=res.redis)
    preview = ee.plan(kept, table)["retention"]
    assert preview["rule"]["keep_runs"] == 1 and preview["runs"] == 2
    assert nxt["job_id"] not in preview["expired_runs"]


def test_customer_files_plan_is_what_the_run_then_copies(settings, res, platform, tmp_path):
    src = tmp_path / "src"
    for age, customer in ((0, "acme"), (600, "cut")):  # cut's files are older: the cap takes them first
        (src / customer).mkdir(parents=True)
        for i in range(4):
            path = src / customer / f"traffic_{i}.csv"
            path.write_bytes(b"a;b\n" * (i + 1))
            os.utime(path, (HOUR_AGO - age + i, HOUR_AGO - age + i))
    (src / "acme" / "traffic_fresh.csv").write_bytes(b"still being written")
    (src / "acme" / "notes.txt").write_bytes(b"no domain")
    section = {"source_dirs": [str(src)],
               "customers": {"acme": {"primary": str(tmp_path / "p" / "acme"), "secondary": str(tmp_path / "s" / "acme")},
                             "cut": {"primary": str(tmp_path / "p" / "cut"),
                                     "secondary": f"sftp://127.0.0.1:1{tmp_path}/edge/cut"}},
               "domains": {"traffic": ["traffic_*.csv"]}, "max_files_per_run": 6, "settle_seconds": 60,
               "staging_table": "mnaas_test.cf_plan_inter", "final_table": "mnaas_test.cf_plan_count",
               "status_flag": str(tmp_path / "status"), "manifest_dir": str(tmp_path / "manifests")}
    own = Resources(load_settings(own_config(tmp_path / "c.yaml", section)), _redis=res.redis)
    before, files = redis_snapshot(res), files_under(tmp_path)

    plan = cf.plan(own)

    assert redis_snapshot(res) == before and files_under(tmp_path) == files
    acme, cut = plan["customers"]["acme"], plan["customers"]["cut"]
    assert (acme["planned"], acme["deferred"], acme["settling"], acme["unmatched"]) == (2, 2, 1, 1)
    assert (cut["planned"], cut["deferred"]) == (4, 0)  # the cap: the oldest six files go first
    assert acme["bytes"] == 4 + 8 and len(acme["deferred_files"]) == 2
    assert acme["destinations"]["primary"]["reachable"] and acme["destinations"]["secondary"]["reachable"]
    assert not cut["destinations"]["secondary"]["reachable"] and cut["destinations"]["primary"]["reachable"]

    rec = run_inline(own)
    import csv
    with open(rec["outputs"]["manifest"], newline="", encoding="utf-8") as f:
        copied = sorted((r["customer"], r["file"]) for r in csv.DictReader(f))
    planned = sorted((c, Path(x["path"]).name) for c, v in plan["customers"].items() for x in v["files"])
    assert copied == planned
    counts = rec["outputs"]["customers"]
    for customer in ("acme", "cut"):
        for k in ("found", "settling", "deferred", "unchanged"):
            assert counts[customer][k] == plan["customers"][customer][k], (customer, k)

    again = cf.plan(own)  # what the first run copied is in the ledger now; cut's secondary failed, so not
    assert (again["customers"]["acme"]["in_ledger"], again["customers"]["acme"]["planned"]) == (2, 2)
    assert again["customers"]["cut"]["planned"] == 4


def test_table_backup_plan_is_what_the_run_then_loads(settings, res, platform, tmp_path):
    db = "mnaas_plan"
    execute(settings, f"DROP DATABASE IF EXISTS {db} CASCADE", f"CREATE DATABASE {db}",
            f"CREATE TABLE {db}.traffic {LIVE_DDL}")
    table = f"{db}.traffic"
    src = write_files(tmp_path / "src", good_rows(120), parts=3)
    before = redis_snapshot(res)

    plan = tb.plan(res, table, src.as_uri())

    assert redis_snapshot(res) == before
    assert plan["schema_check"]["verdict"] == "ok" and plan["schema_check"]["sampled_lines"] > 0
    assert [c["name"] for c in plan["live_schema"]][:2] == ["id", "msisdn"]
    listed = sorted(Path(p).name for p in os.listdir(src) if not p.startswith((".", "_")))
    assert sorted(Path(f["path"]).name for f in plan["files"]) == listed
    assert plan["bytes"] == sum((src / n).stat().st_size for n in listed)
    assert (plan["backup_table"], plan["rejects_table"]) == (f"{table}_bkp", f"{table}_bkp_rejects")
    assert plan["backup_reads"] is None and plan["load_drops"] == []
    assert plan["retention"].startswith("unversioned: one backup is kept")
    assert [r[1] for r in _tables(settings, db)] == ["traffic"]  # nothing made in the catalog

    rec = tb.submit(res, table, src.as_uri())
    done = run_phases_inline(res, tb.DEFINITION, rec["job_id"])
    assert done["state"] == "success", done
    assert done["outputs"]["backup_table"] == plan["backup_table"]
    assert done["outputs"]["rejects_table"] == plan["rejects_table"]
    assert done["outputs"]["rows_read"] == 120

    second = tb.plan(res, table, src.as_uri())
    assert second["backup_reads"] == done["outputs"]["data_table"]

    drifted = write_files(tmp_path / "drift", good_rows(50), parts=1)
    for f in drifted.iterdir():
        f.write_text(f.read_text().replace(";", ","))
    assert tb.plan(res, table, drifted.as_uri())["schema_check"]["verdict"] == "drift"


def _tables(settings, db: str) -> list[tuple]:
    from tests.integration.test_table_backup import query

    return sorted(query(settings, f"SHOW TABLES IN {db}"))

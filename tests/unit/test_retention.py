"""Retention's pure parts: which runs a rule keeps across a series of runs with fixed dates, which files go,
the settings (a default plus per-target overrides), and bad requests refused in one line before anything."""

from __future__ import annotations

import pytest

from backup.resources import Resources
from backup.retention import DAY, Run, after_backup_request, decide, to_delete, validate_request
from base.errors import ConfigError, InvalidInput
from config.settings import RetentionRule, load_settings
from tests.conftest import CONFIG_PATH
from tests.helpers import backupctl

AT = 1_780_000_000.0  # 2026-05-28: "now" for every series below


def series(*specs: tuple[str, float, str]) -> list[Run]:
    """Runs (job id, age in days, state), each with one file named after it."""
    return [Run(job, AT - age * DAY, state, [{"kind": "remote", "path": f"/b/{job}.csv.gz", "uri": f"sftp://h/{job}"}])
            for job, age, state in specs]


def kept(verdict: dict[str, str]) -> set[str]:
    return {job for job, why in verdict.items() if why.startswith("keep")}


# Ten daily successful runs, r0 (today) … r9 (nine days old).
DAILY = [(f"r{i}", float(i), "success") for i in range(10)]


@pytest.mark.parametrize("rule, expected", [
    (RetentionRule(keep_runs=3), {"r0", "r1", "r2"}),
    (RetentionRule(keep_days=4), {"r0", "r1", "r2", "r3", "r4"}),  # younger than 4 days, or exactly 4 (>=)
    (RetentionRule(keep_runs=2, keep_days=5), {"r0", "r1", "r2", "r3", "r4", "r5"}),  # either rule keeps a run
    (RetentionRule(keep_runs=7, keep_days=1), {f"r{i}" for i in range(7)}),
    (RetentionRule(keep_runs=1), {"r0"}),
    (RetentionRule(keep_runs=50), {f"r{i}" for i in range(10)}),
])
def test_a_rule_keeps_exactly_its_runs_across_a_series_with_fixed_dates(rule, expected):
    verdict = decide(series(*DAILY), rule, AT)
    assert kept(verdict) == expected
    assert all(why.startswith("expired") for job, why in verdict.items() if job not in expected)


def test_the_newest_successful_run_is_kept_even_when_every_run_is_older_than_the_rule():
    runs = series(("old", 400, "success"), ("older", 500, "success"), ("failed-later", 300, "failed"))
    verdict = decide(runs, RetentionRule(keep_days=30), AT)
    assert verdict["old"] == "keep: the newest successful run"
    assert verdict["older"].startswith("expired")
    # a failed run newer than the newest kept success stays (its archive may still be resumed)
    assert verdict["failed-later"].startswith("keep")


def test_failed_runs_go_with_the_successful_runs_they_are_older_than_and_the_latest_run_stays():
    runs = series(("s0", 0, "success"), ("f1", 1, "failed"), ("s2", 2, "success"), ("f3", 3, "failed"),
                  ("s4", 4, "success"), ("f5", 5, "failed"))
    verdict = decide(runs, RetentionRule(keep_runs=2), AT)
    assert kept(verdict) == {"s0", "f1", "s2"}  # f1 is newer than s2, the oldest kept success
    # the target's latest run is a failure: kept whatever its age (the next run resumes from it)
    verdict = decide(series(("f9", 90, "failed"), ("s10", 100, "success"), ("s20", 200, "success")),
                     RetentionRule(keep_runs=1), AT, latest_job="f9")
    assert kept(verdict) == {"f9", "s10"}


def test_a_file_named_by_a_kept_run_is_never_deleted_even_if_an_expired_run_names_it_too():
    shared = {"kind": "remote", "path": "/b/t/20260101T000000Z-aaaa/x.csv.gz", "uri": "sftp://h/shared"}
    own = {"kind": "local", "path": "/l/t/20250101T000000Z-bbbb/y.csv.gz", "uri": "file:///own"}
    runs = [Run("failed-exporter", AT - 50 * DAY, "failed", [shared, own]),
            Run("resumer", AT - 49 * DAY, "success", [shared]),
            Run("new", AT, "success", [])]
    verdict = {"failed-exporter": "expired: x", "resumer": "keep: y", "new": "keep: z"}
    assert [a["uri"] for a in to_delete(runs, verdict)] == ["file:///own"]
    verdict["resumer"] = "expired: y"
    going = to_delete(runs, verdict)
    assert [a["uri"] for a in going] == ["sftp://h/shared", "file:///own"]
    assert going[0]["runs"] == ["failed-exporter", "resumer"]  # the shared file is listed once, with both runs


def _settings(retention: dict):
    return load_settings(CONFIG_PATH, overrides={"retention": retention})


def test_a_default_plus_per_target_overrides_that_inherit_what_they_leave_out():
    s = _settings({"edge_export": {"keep_runs": 5, "keep_days": 30,
                                   "targets": {"db.big": {"keep_runs": 2}, "db.keep_all": {"keep_days": 3650}}}})
    rules = s.retention.edge_export
    assert rules.rule("db.other") == RetentionRule(keep_runs=5, keep_days=30)
    assert rules.rule("db.big") == RetentionRule(keep_runs=2, keep_days=30)
    assert rules.rule("db.keep_all") == RetentionRule(keep_runs=5, keep_days=3650)
    assert s.retention.customer_files.rule("all") == RetentionRule()  # no rule: everything kept


@pytest.mark.parametrize("retention, message", [
    ({"edge_export": {"keep_runs": 0}}, "retention.edge_export.keep_runs"),
    ({"edge_export": {"keep_weeks": 2}}, "retention.edge_export.keep_weeks: unknown key"),
    ({"edge_export": {"targets": {"db.t": {"keep_days": -1}}}}, "retention.edge_export.targets.db.t.keep_days"),
    ({"edge_export": {"delete_copies": True}}, "only customer-files keeps copies"),
    ({"table_backup": {"keep_days": 3}}, "kept by count"),
    ({"table_backup": {"targets": {"db.t": {"keep_runs": 5000}}}}, "at most 1000"),
])
def test_bad_retention_settings_are_one_config_error_naming_the_key(retention, message):
    with pytest.raises(ConfigError) as e:
        _settings(retention)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_table_backup_versions_kept_come_from_the_retention_rule_of_the_table():
    from backup.table_backup.names import validate_request as table_backup_request

    res = Resources(_settings({"table_backup": {"targets": {"db.big": {"keep_runs": 3}}}}))
    assert table_backup_request(res, "db.big", "/x", versioned=True)["retention"] == 3
    assert table_backup_request(res, "db.small", "/x", versioned=True)["retention"] == res.settings.table_backup.retention
    assert table_backup_request(res, "db.big", "/x", versioned=True, retention=9)["retention"] == 9  # the request wins


RULED = {"edge_export": {"targets": {"db.t": {"keep_runs": 2}}}, "customer_files": {"keep_days": 30}}


@pytest.mark.parametrize("workflow, target, dry_run, message", [
    ("edge-exports", "db.t", False, "unknown backup workflow"),
    ("table-backup", "db.t", False, "expired by each versioned backup run itself"),
    ("edge-export", None, False, "needs a target DB.TABLE"),
    ("edge-export", "db.t; rm -rf /", False, "invalid table name"),
    ("edge-export", "db.other", False, "no retention rule for edge-export db.other"),
    ("edge-export", "db.t", "yes", "dry_run must be true or false"),
    ("customer-files", "acme", False, "customer-files has one target, 'all'"),
])
def test_bad_requests_are_refused_naming_the_problem(workflow, target, dry_run, message):
    res = Resources(_settings(RULED))
    with pytest.raises(InvalidInput) as e:
        validate_request(res, workflow, target, dry_run)
    assert message in str(e.value) and "\n" not in e.value.one_line()


def test_good_requests_carry_their_rule():
    res = Resources(_settings(RULED))
    assert validate_request(res, "edge-export", "db.t").rule == RetentionRule(keep_runs=2)
    req = validate_request(res, "customer-files", None, True)
    assert (req.target, req.dry_run, req.rule.keep_days) == ("all", True, 30)


def test_only_a_successful_backup_with_a_rule_is_followed_by_retention():
    res = Resources(_settings(RULED))
    rec = {"job_id": "j1", "workflow": "edge-export", "target": "db.t", "state": "success"}
    assert after_backup_request(res, rec) == {"workflow": "edge-export", "target": "db.t", "dry_run": False,
                                              "idempotency_key": "after-j1"}
    assert after_backup_request(res, {**rec, "state": "failed"}) is None
    assert after_backup_request(res, {**rec, "target": "db.other"}) is None  # no rule for it
    assert after_backup_request(res, {**rec, "workflow": "restore-edge-export"}) is None
    assert after_backup_request(res, {**rec, "workflow": "table-backup"}) is None  # expires its versions itself


@pytest.mark.parametrize("args, message", [
    (["retention", "edge-export", "mnaas_test.no_rule"], "no retention rule for edge-export mnaas_test.no_rule"),
    (["retention", "customer-files", "acme", "--dry-run"], "customer-files has one target"),
])
def test_the_cli_refuses_a_bad_request_in_one_line_before_enqueueing(args, message, res):
    jobs = f"{res.settings.redis.key_prefix}:jobs"
    before = res.redis.zcard(jobs)
    out = backupctl(*args, config=CONFIG_PATH)
    assert out.returncode == 2, out
    assert out.stderr.startswith("backupctl: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr and out.stdout == ""  # no job id: nothing was enqueued
    assert res.redis.zcard(jobs) == before  # no job record either


def test_a_bad_request_from_another_service_is_a_failed_record_and_starts_nothing(res):
    from backup.retention import submit

    rec = submit(res, "edge-export", "db.t; drop table x", False, job_id="ret-bad-request")
    assert rec["state"] == "failed" and "invalid table name" in rec["error"] and "\n" not in rec["error"]
    assert {p["state"] for p in rec["phases"]} == {"pending"}  # no phase started, so nothing was deleted


def test_a_run_a_queued_restore_chose_is_kept_whatever_its_age():
    verdict = decide(series(*DAILY), RetentionRule(keep_runs=1), AT, restoring={"r7": "restore-job"})
    assert kept(verdict) == {"r0", "r7"} and verdict["r7"] == "keep: restore job restore-job reads it"


def test_the_cli_summary_lists_what_a_dry_run_would_delete_and_what_a_run_deleted():
    from workers.cli import summary

    rec = {"job_id": "j", "workflow": "retention", "target": "edge-export:db.t", "state": "success", "phases": [],
           "outputs": {"dry_run": True, "deleted": [], "problems": ["job x: remote_uri '/etc' … left alone"],
                       "delete": [{"uri": "sftp://h/b/db.t/r1/a.csv.gz", "runs": ["r1"]}]}}
    lines = summary(rec).splitlines()
    assert "  would delete: sftp://h/b/db.t/r1/a.csv.gz  (runs r1)" in lines
    assert any(line.startswith("  left alone: job x") for line in lines)
    rec["outputs"] = {"deleted": [{"uri": "sftp://h/b/db.t/r1/a.csv.gz"}], "delete": rec["outputs"]["delete"]}
    lines = summary(rec).splitlines()
    assert "  deleted: sftp://h/b/db.t/r1/a.csv.gz" in lines and not any("would delete" in x for x in lines)


def test_retention_is_scheduled_like_any_workflow():
    from config.schedule import beat_schedule

    s = load_settings(CONFIG_PATH, overrides={"schedules": [
        {"name": "retention-traffic", "workflow": "retention", "cron": "15 4 * * *",
         "kwargs": {"workflow": "edge-export", "target": "db.t"}}]})
    entry = beat_schedule(s)["retention-traffic"]
    assert entry["task"] == "backup.retention" and entry["kwargs"] == {"workflow": "edge-export", "target": "db.t"}


def test_a_run_kept_for_a_restore_keeps_no_older_failed_run_along_with_it():
    runs = series(("s0", 0, "success"), ("f5", 5, "failed"), ("s9", 9, "success"))
    verdict = decide(runs, RetentionRule(keep_runs=1), AT, restoring={"s9": "restore-job"})
    assert kept(verdict) == {"s0", "s9"} and verdict["f5"].startswith("expired")

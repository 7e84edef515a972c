"""Operating the workflows: beat schedules with two beats, skipped scheduled runs, log lines, metrics.

All real processes: celery beat (redbeat) twice against one Redis, the
session's Celery worker, a second worker logging JSON on its own Redis, the
Prometheus exporter.  The beat test watches three one-minute ticks (about
three minutes, on a Redis and a worker of its own, in the background from the
start of the session: tests/background.py); its scheduled runs find the
previous run still holding the lock, so each is a cheap ``skipped`` job.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backup.jobs import TERMINAL
from backup.locks import Renewer
from config.settings import load_settings
from tests.conftest import CONFIG_PATH, PORT_OFFSET, write_config
from tests.background import Background, in_background
from tests.helpers import backupctl, enqueue, wait_job, wait_until
from tests.ops_helpers import Proc, sample_table

pytestmark = pytest.mark.integration

WORKFLOW = "edge-export"
PRIVATE_REDIS_PORT = 16379 + PORT_OFFSET
BEAT_REDIS_PORT = 6509 + PORT_OFFSET  # the beat scenario's own Redis (it runs beside other tests)
METRICS_PORT = 19808 + PORT_OFFSET


def _jobs_of(res, table: str) -> list[dict]:
    return [r for r in res.jobs.recent(500) if r["workflow"] == WORKFLOW and r["target"] == table]


def _hold_lock(res, settings, table: str, holder: str) -> Renewer:
    held, current = res.locks.acquire(WORKFLOW, table, holder)
    assert held is not None, f"lock of {table} already held by {current}"
    return Renewer(res.locks, held, settings.lock.renew_every)


def test_schedule_command_lists_next_fire_times(tmp_path, settings, redis_client):
    config = write_config(tmp_path / "sched.yaml", {"schedules": [
        {"name": "traffic-nightly", "workflow": WORKFLOW, "cron": "30 2 * * *", "timezone": "Europe/Rome",
         "kwargs": {"table": "mnaas.customer_traffic"}},
        {"name": "paused", "workflow": WORKFLOW, "cron": "0 4 * * 1", "enabled": False,
         "kwargs": {"table": "mnaas.other"}},
    ]})
    out = backupctl("--config", str(config), "schedule", "--count", "3", "--json")
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    nightly, paused = listing["schedules"]
    assert nightly["name"] == "traffic-nightly" and nightly["task"] == "backup.edge_export"
    assert len(nightly["next"]) == 3 and all(t.split("T")[1].startswith("02:30:00") for t in nightly["next"])
    assert paused["enabled"] is False and paused["next"] == []
    assert listing["beat"].startswith("none running")

    text = backupctl("--config", str(config), "schedule")
    assert text.returncode == 0 and "traffic-nightly" in text.stdout and "disabled" in text.stdout

    bad = write_config(tmp_path / "bad.yaml", {"schedules": [
        {"name": "typo", "workflow": WORKFLOW, "cron": "61 * * * *", "kwargs": {"table": "a.b"}}]})
    out = backupctl("--config", str(bad), "schedule")
    assert out.returncode == 2
    assert "schedules[typo].cron: bad cron expression '61 * * * *'" in out.stderr


def test_worker_log_lines_carry_job_and_phase_in_text_and_json(tmp_path, settings, res, worker, celery_app):
    # Text: the session worker (log_format: text).
    table = "mnaas_ops.log_target"
    with _hold_lock(res, settings, table, "previous-run"):
        job_id = enqueue(celery_app, "backup.edge_export", table=table)
        assert wait_job(res, job_id)["state"] == "skipped"
    wait_until(lambda: f"[job={job_id} phase=finish]" in worker.log.read_text(), 10, "finish phase log line")
    text_lines = [line for line in worker.log.read_text().splitlines() if f"job={job_id} " in line]
    phases = {line.split(" phase=", 1)[1].split("]", 1)[0] for line in text_lines}
    assert {"backup.edge_export", "lock", "export", "transfer", "cleanup", "finish"} <= phases, text_lines

    # JSON: a second worker with log_format json on a Redis of its own, so it gets every task of its job.
    from backup.resources import Resources
    from workers.app import create_app
    from local_platform.services import LocalPlatform

    config = write_config(tmp_path / "json.yaml", {
        "log_format": "json", "redis": {"url": f"redis://127.0.0.1:{PRIVATE_REDIS_PORT}/0"},
        "platform": {"redis_port": PRIVATE_REDIS_PORT, "state_dir": str(tmp_path / "platform")}})
    json_settings = load_settings(config)
    private = LocalPlatform(json_settings)
    private.up(only=["redis"], timeout=30)
    json_worker = Proc([sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "default,io,spark",
                        "-c", "1", "-n", "jsonlog@%h", "--loglevel", "INFO"], tmp_path / "json-worker.log",
                       env={"BACKUP_CONFIG": str(config)})
    try:
        json_worker.start().wait_for_log("ready.", timeout=60)
        json_res = Resources(json_settings)
        with _hold_lock(json_res, json_settings, table, "previous-run"):
            job_id = enqueue(create_app(json_settings), "backup.edge_export", table=table)
            assert wait_job(json_res, job_id)["state"] == "skipped"
        wait_until(lambda: '"phase": "finish"' in json_worker.text(), 10, "finish phase log line")
    finally:
        json_worker.stop()
        private.down(only=["redis"])
    records = []
    for line in json_worker.text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every line of the JSON format must parse
    assert records and all({"ts", "level", "logger", "job_id", "phase", "msg"} <= r.keys() for r in records)
    mine = [r for r in records if r["job_id"] == job_id]
    assert {"backup.edge_export", "lock", "export", "transfer", "cleanup", "finish"} <= {r["phase"] for r in mine}
    assert any("succeeded" in r["msg"] for r in mine if r["phase"] == "lock")


def _scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, s.labels.get("workflow", "")): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_exporter_serves_counters_of_successful_runs(tmp_path, settings, res, worker, celery_app, platform):
    job_id = enqueue(celery_app, "backup.edge_export", table=sample_table(settings))
    rec = wait_job(res, job_id)
    assert rec["state"] == "success", rec
    exporter = Proc.backupctl(CONFIG_PATH, "metrics", "--port", str(METRICS_PORT), log=tmp_path / "metrics.log")
    try:
        exporter.start().wait_for_http(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30)
        samples = _scrape(METRICS_PORT)
    finally:
        exporter.stop()
    done = [r for r in res.jobs.recent(1000) if r["workflow"] == WORKFLOW and r["state"] == "success"]
    assert samples[("mediation_backup_redis_up", "")] == 1
    assert samples[("mediation_backup_jobs_succeeded_total", WORKFLOW)] == len(done)
    assert samples[("mediation_backup_rows_total", WORKFLOW)] == sum(r["outputs"]["rows"] for r in done)
    assert samples[("mediation_backup_bytes_total", WORKFLOW)] == sum(r["outputs"]["bytes"] for r in done)
    assert samples[("mediation_backup_files_total", WORKFLOW)] == len(done)
    assert samples[("mediation_backup_last_success_timestamp_seconds", WORKFLOW)] == pytest.approx(
        max(r["finished"] for r in done))
    assert rec["outputs"]["rows"] > 0


def test_metrics_count_each_job_once_even_if_finish_is_delivered_twice(res, redis_client):
    from backup.metrics import read_counters, record_metrics

    import uuid

    run = uuid.uuid4().hex[:8]  # Redis database 9 outlives a session: never rely on its keys being absent
    workflow = f"metrics-test-{run}"
    rec = {"job_id": f"metrics-once-1-{run}", "workflow": workflow, "finished": 1_790_000_000.5,
           "outputs": {"rows": 1200, "bytes": 34_567, "remote_uri": "sftp://edge/x.csv.gz"}}
    assert record_metrics(res, rec) is True
    assert record_metrics(res, rec) is False  # the second delivery of the finish phase
    many = {"job_id": f"metrics-once-2-{run}", "workflow": workflow, "finished": 1_790_000_100.0,
            "outputs": {"rows": 5, "bytes": 10, "files": 7}}
    assert record_metrics(res, many) is True
    counters = read_counters(redis_client, res.settings.redis.key_prefix)[workflow]
    assert counters == {"jobs": 2, "rows": 1205, "files": 8, "bytes": 34_577, "last_success": 1_790_000_100.0}


class _WatchedJobs:
    """A job store that notes, after every write, what a reader polling the record would find."""

    def __init__(self, res, seen: list):
        self.inner, self.res, self.seen = res.jobs, res, seen

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def update(self, job_id, change, **kw):
        rec = self.inner.update(job_id, change, **kw)
        episode = self.res.redis.exists(self.res.alerter._key(rec["workflow"], rec["target"]))
        self.seen.append((rec["state"], rec.get("alert_sent"), self.res.locks.holder(rec["workflow"], rec["target"]),
                          bool(episode), rec["outputs"].get("cleaned")))
        return rec


def test_a_reader_that_sees_a_run_end_sees_its_alert_its_cleanup_and_a_free_lock(settings, res, platform):
    """The terminal state is the last thing written: a poller never sees "failed" before the alert went out."""
    import uuid

    from base.errors import NotFound
    from backup.resources import Resources
    from backup.runner import fail_job, finish_job, phase
    from tests.helpers import sink_counts

    seen: list = []
    r = Resources(settings, _redis=res.redis)
    r.jobs = _WatchedJobs(r, seen)
    target = f"ordering.t{uuid.uuid4().hex[:8]}"
    mails0, tickets0 = sink_counts(settings)

    def cleanup(rec):
        r.jobs.update(rec["job_id"], lambda x: x["outputs"].update(cleaned=True))

    failing = uuid.uuid4().hex
    r.jobs.create(failing, "ordering-test", target, {}, ["lock", "export"])
    held, _ = r.locks.acquire("ordering-test", target, failing)
    r.jobs.update(failing, lambda x: x.update(lock=held.as_dict(), state="running"))
    final = fail_job(r, failing, "export", NotFound("no table ordering.missing"), cleanup=cleanup)
    assert final["state"] == "failed" and final["alert_sent"] is True
    assert sink_counts(settings) == (mails0 + 1, tickets0 + 1)
    ended = [s for s in seen if s[0] == "failed"]
    assert ended == [("failed", True, None, True, True)], seen

    seen.clear()
    passing = uuid.uuid4().hex
    r.jobs.create(passing, "ordering-test", target, {}, ["lock", "finish"])
    held, _ = r.locks.acquire("ordering-test", target, passing)
    r.jobs.update(passing, lambda x: x.update(lock=held.as_dict()))
    with phase(r, passing, "finish") as ctx:
        finish_job(ctx)
    ended = [s for s in seen if s[0] == "success"]
    assert ended == [("success", False, None, False, None)], seen


def test_beat_check_follows_the_active_beat_and_a_clean_stop_releases_its_lock(tmp_path, settings, redis_client):
    """``backupctl beat --check`` (the container healthcheck): 1 with no beat, 0 while one holds the lock,
    1 again right after a clean stop, without waiting for the lock to expire."""
    config = write_config(tmp_path / "check.yaml", {"beat": {"lock_timeout": 300, "max_loop_interval": 5}})
    assert backupctl("--config", str(config), "beat", "--check").returncode == 1
    beat = Proc.backupctl(config, "beat", "--loglevel", "INFO", log=tmp_path / "beat.log")
    try:
        beat.start().wait_for_log("beat: Acquired lock", timeout=30)
        assert backupctl("--config", str(config), "beat", "--check").returncode == 0
    finally:
        beat.stop()
    assert beat.proc.returncode == 0, beat.text()[-2000:]
    # The lock would live 300 s more if the stopping beat had not released it.
    assert backupctl("--config", str(config), "beat", "--check").returncode == 1


def test_a_schedule_removed_from_the_config_is_purged_from_redis_when_beat_starts(tmp_path, settings, redis_client):
    """redbeat keeps every entry in Redis; an entry deleted from the config must not live on there (and fire)."""
    never = {"workflow": WORKFLOW, "cron": "0 3 1 1 *", "timezone": "UTC", "kwargs": {"table": "mnaas_ops.purge"}}
    both = write_config(tmp_path / "both.yaml", {"schedules": [{"name": "keep-me", **never}, {"name": "drop-me", **never}]})
    one = write_config(tmp_path / "one.yaml", {"schedules": [{"name": "keep-me", **never}]})

    def entries() -> set[str]:
        """Schedule names redbeat holds in Redis: its entry keys and the members of its sets."""
        prefix = f"{settings.redis.key_prefix}:redbeat:"
        names = set()
        for key in redis_client.scan_iter(f"{prefix}*"):
            key = key.decode()
            kind = redis_client.type(key).decode()
            if kind == "hash":
                names.add(key[len(prefix):])
            elif kind in ("set", "zset"):
                members = redis_client.smembers(key) if kind == "set" else redis_client.zrange(key, 0, -1)
                names |= {m.decode().removeprefix(prefix) for m in members}
        return names

    for config, expected in ((both, {"keep-me", "drop-me"}), (one, {"keep-me"})):
        beat = Proc.backupctl(config, "beat", "--loglevel", "INFO", log=tmp_path / f"beat-{config.stem}.log")
        try:
            beat.start().wait_for_log("beat: Acquired lock", timeout=30)
            wait_until(lambda: {"keep-me", "drop-me"} & entries() == expected, 15, f"redbeat entries {expected}")
        finally:
            beat.stop()
    assert "drop-me" not in entries()


def two_beats_three_ticks(bg: Background) -> tuple[str, str, list[dict]]:
    """Two beats on one schedule firing every minute, the active one killed after the first tick: both beats'
    logs and the job records of the three ticks.  Self-contained (its own Redis and worker, no platform: every
    run stops at the lock phase), so it runs in the background from the start of the session (three minutes
    of waiting on the clock); the test below makes the assertions."""
    from backup.resources import Resources
    from bench.faultkit import PrivateRedis
    from tests.conftest import STATE, WorkerProc
    from workers.app import create_app

    folder = STATE / "beat-scenario"
    folder.mkdir(parents=True, exist_ok=True)
    table = "mnaas_ops.beat_target"  # never read: every run stops at the lock phase
    broker = PrivateRedis(BEAT_REDIS_PORT, folder / "redis").start()
    config = write_config(folder / "beat.yaml", {
        "redis": {"url": broker.url},
        "schedules": [{"name": "every-minute", "workflow": WORKFLOW, "cron": "* * * * *",
                       "timezone": "Europe/Rome", "kwargs": {"table": table}}],
        # Fail-over in at most 20 + 5 s, so the standby takes over between two ticks.
        "beat": {"lock_timeout": 20, "max_loop_interval": 5},
    })
    own = load_settings(config)
    res = Resources(own)
    worker = WorkerProc(config, "beats", app=create_app(own))
    first = Proc.backupctl(config, "beat", "--loglevel", "INFO", log=folder / "beat-a.log")
    second = Proc.backupctl(config, "beat", "--loglevel", "INFO", log=folder / "beat-b.log")
    try:
        worker.start()
        with _hold_lock(res, own, table, "previous-run"):
            first.start().wait_for_log("beat: Acquired lock", timeout=60)
            second.start().wait_for_log("beat: Starting", timeout=60)
            bg.wait_until(lambda: len(_jobs_of(res, table)) >= 1, 75, "the first tick")
            first.kill()
            second.wait_for_log("beat: Acquired lock", timeout=20 + 5 + 15)
            bg.wait_until(lambda: len(_jobs_of(res, table)) >= 3, 130, "ticks two and three")
            recs = [bg.wait_until(lambda r=r: (x := res.jobs.find(r["job_id"])) and x["state"] in TERMINAL and x,
                                  30, "the run of a tick to end") for r in _jobs_of(res, table)]
    finally:
        first.stop()
        second.stop()
        worker.stop()
        broker.stop()
    return first.text(), second.text(), recs


@in_background(two_beats_three_ticks)
def test_two_beats_fire_once_per_tick_and_runs_are_skipped_while_previous_runs():
    first, second, recs = test_two_beats_fire_once_per_tick_and_runs_are_skipped_while_previous_runs.background.result(
        timeout=300)
    sent = first.count("Sending due task every-minute") + second.count("Sending due task every-minute")
    assert sent == 3, (first[-2000:], second[-2000:])
    assert len(recs) == 3
    minutes = sorted(int(r["created"] // 60) for r in recs)
    assert minutes == [minutes[0], minutes[0] + 1, minutes[0] + 2], "one run per tick, on consecutive minutes"
    for r in recs:
        assert r["state"] == "skipped" and r["reason"] == "lock held by job previous-run", r
        assert [p["state"] for p in r["phases"]] == ["skipped", "pending", "pending", "pending", "pending"]
    assert "Sending due task" not in second.split("beat: Acquired lock")[0], "the standby fired while waiting"

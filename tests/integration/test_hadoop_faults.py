"""customer-files into the real HDFS while HDFS fails: a DataNode or the NameNode stopped mid-copy,
safe mode, a folder the backup user may not write.

A worker of its own (own Redis: it alone takes these tasks) runs the workflow with the primary
copies on the local platform's HDFS, written as an ordinary user.  Faults come from the HDFS JVM's
control port (Hadoop's own MiniDFSCluster stopping and restarting a daemon).  After each fault the
promises are checked from outside with Hadoop's own client: every file at its final name is
byte-identical to its source, no temporary file stays after the next run, a failure is one alert.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from backup.resources import Resources
from bench.faultkit import PrivateRedis
from config.settings import load_settings
from storage.base import is_temp_name
from tests.conftest import PORT_OFFSET, STATE, WorkerProc
from tests.helpers import enqueue, hdfs, sink_counts, wait_job, wait_until
from tests.integration.test_customer_files import _lines, own_config
from tests.integration.test_hadoop import USER

# Minutes of HDFS daemons stopped and restarted: make fault-trials runs them (make test stays under 25 minutes).
pytestmark = [pytest.mark.integration, pytest.mark.faults]

TASK = "backup.customer_files"
BASE = "/faults"


@pytest.fixture(scope="module")
def faults_redis():
    server = PrivateRedis(6504 + PORT_OFFSET, STATE / "hdfs-faults-redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source():
    """Eight files of about 12 MB: a copy lasts long enough for a fault to land in it."""
    root = STATE / "hdfs-faults-src"
    rng = random.Random(21)
    block = _lines(rng, 3000)
    for i in range(8):
        (root / "acme").mkdir(parents=True, exist_ok=True)
        (root / "acme" / f"acme_traffic_{i}.csv").write_bytes(block * (80 + i))
    return root


@pytest.fixture(scope="module")
def faults(platform, settings, faults_redis, source):
    """(config, resources, celery app) of a worker whose acme primary is on HDFS."""
    from workers.app import create_app

    with hdfs(settings) as admin:
        admin.mkdir(BASE)
        admin._client.set_owner(BASE, owner=USER)
    webhdfs = f"hdfs://{USER}@127.0.0.1:{settings.platform.namenode_http_port}"
    section = {"source_dirs": [str(source)],
               "customers": {"acme": {"primary": f"{webhdfs}{BASE}/acme", "secondary": str(STATE / "hdfs-faults-edge")}},
               "domains": {"traffic": ["*traffic*.csv"]}, "settle_seconds": 0,
               "staging_table": "mnaas_test.cf_faults_inter", "final_table": "mnaas_test.cf_faults_count",
               # The flag stays on local disk here, so that a NameNode outage fails the copies, not the flag's write.
               "status_flag": str(STATE / "hdfs-faults-status"), "manifest_dir": str(STATE / "hdfs-faults-manifests")}
    config = own_config(STATE / "hdfs-faults.yaml", section,
                        redis={"url": faults_redis.url, "key_prefix": "mbfaults"})
    res = Resources(load_settings(config))
    app = create_app(res.settings)
    w = WorkerProc(config, "hdfsfaults", concurrency=2, app=app).start()
    yield res, app
    w.stop()


def reset(platform, res) -> None:
    """Empty the HDFS primary and the edge folder, forget the ledger (each test copies everything again)."""
    import shutil

    platform.hadoop.fs_shell("-rm", "-r", "-f", "-skipTrash", f"{BASE}/acme", user=USER)
    shutil.rmtree(STATE / "hdfs-faults-edge", ignore_errors=True)
    for key in res.redis.scan_iter("mbfaults:customer_files:*"):
        res.redis.delete(key)


def in_flight(settings) -> bool:
    """A temporary file of ours is being written on HDFS."""
    with hdfs(settings) as fs:
        folder = fs.stat(f"{BASE}/acme/traffic")
        return bool(folder) and any(is_temp_name(e.name) for e in fs.list(f"{BASE}/acme/traffic"))


def check_primary(platform, source) -> list[str]:
    """Every file at its final name on HDFS equals its source (read with Hadoop's own client); their names."""
    listing = platform.hadoop.fs_shell("-ls", f"{BASE}/acme/traffic").stdout.decode()
    names = sorted(line.rsplit("/", 1)[1] for line in listing.splitlines() if line.startswith("-"))
    for name in names:
        if is_temp_name(name):
            continue
        body = platform.hadoop.fs_shell("-cat", f"{BASE}/acme/traffic/{name}").stdout
        assert hashlib.sha256(body).digest() == hashlib.sha256((source / "acme" / name).read_bytes()).digest(), \
            f"{name} at its final name differs from its source"
    return names


def finish(platform, res, app, source, first: dict) -> dict:
    """The run after a fault: everything copied, nothing temporary left; the second run's record."""
    second = wait_job(res, enqueue(app, TASK), timeout=300) if first["state"] != "success" else first
    assert second["state"] == "success", second.get("error")
    names = check_primary(platform, source)
    assert names == sorted(p.name for p in (source / "acme").iterdir()), names
    return second


def test_a_datanode_stopped_mid_copy_never_leaves_a_half_file(settings, platform, faults, source):
    res, app = faults
    reset(platform, res)
    alerts_before = sink_counts(settings)
    job_id = enqueue(app, TASK)
    wait_until(lambda: in_flight(settings), 120, "a copy in flight on HDFS", interval=0.05)
    platform.hadoop.control("datanode/1/stop")
    try:
        first = wait_job(res, job_id, timeout=300)
        check_primary(platform, source)  # whatever the outcome: nothing wrong at a final name
    finally:
        platform.hadoop.control("datanode/1/start")
    finish(platform, res, app, source, first)
    # Replication 2 with one DataNode gone: the pipeline carries on with the other, or the file fails cleanly
    # and the next run copies it; either way at most one alert.
    assert sink_counts(settings)[0] - alerts_before[0] <= 1


def test_the_namenode_stopped_mid_run_fails_loudly_once_and_the_next_run_completes(settings, platform, faults, source):
    res, app = faults
    reset(platform, res)
    alerts_before = sink_counts(settings)
    job_id = enqueue(app, TASK)
    wait_until(lambda: in_flight(settings), 120, "a copy in flight on HDFS", interval=0.05)
    platform.hadoop.control("namenode/stop")
    try:
        first = wait_job(res, job_id, timeout=300)
    finally:
        platform.hadoop.control("namenode/start")
        wait_until(lambda: platform.hadoop.hdfs_ready() is None, 120, "the NameNode back and out of safe mode")
    assert first["state"] == "failed", first
    assert "Connection refused" in (first.get("error") or "") or "ConnectionFailed" in (first.get("error") or ""), first
    wait_until(lambda: sink_counts(settings)[0] - alerts_before[0] == 1, 30, "one alert for the failed run")
    check_primary(platform, source)
    second = finish(platform, res, app, source, first)
    assert not any(is_temp_name(n) for n in check_primary(platform, source)), "temps of the killed writes swept"
    time.sleep(1)  # a second alert would have been sent by now (sinks answer within milliseconds)
    assert sink_counts(settings)[0] - alerts_before[0] == 1
    assert second["outputs"]["flag"] == "SUCCESS"


def test_safe_mode_fails_the_run_clearly_and_the_run_after_it_copies_everything(settings, platform, faults, source):
    res, app = faults
    reset(platform, res)
    platform.hadoop.fs_shell("-mkdir", "-p", f"{BASE}/acme/traffic", user=USER)
    state = platform.hadoop.control("safemode/enter")
    assert state["safemode"] is True
    try:
        first = wait_job(res, enqueue(app, TASK), timeout=300)
    finally:
        platform.hadoop.control("safemode/leave")
    assert first["state"] == "failed"
    assert "safe mode" in (first.get("error") or "").lower(), first.get("error")
    finish(platform, res, app, source, first)


def test_a_folder_the_backup_user_may_not_write_is_a_clear_error_naming_path_and_user(settings, platform, faults,
                                                                                     source):
    res, app = faults
    reset(platform, res)
    platform.hadoop.fs_shell("-mkdir", "-p", f"{BASE}/acme")
    platform.hadoop.fs_shell("-chown", "root", f"{BASE}/acme")  # the superuser's now; 755
    try:
        rec = wait_job(res, enqueue(app, TASK), timeout=300)
        assert rec["state"] == "failed"
        error = rec.get("error") or ""
        assert "Permission denied: user=backup, access=WRITE" in error and f"{BASE}/acme" in error, error
        copy = next(p for p in rec["phases"] if p["name"] == "copy:acme")
        assert copy["attempts"] == 1, "a permission error is not retried"
    finally:
        platform.hadoop.fs_shell("-chown", USER, f"{BASE}/acme")

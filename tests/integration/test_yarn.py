"""table-backup as the legacy production command runs it: spark-submit --master yarn --deploy-mode cluster.

A worker of its own (own Redis, so it alone takes these tasks) runs the chain in spark-submit
mode on the local platform's YARN (MiniYARNCluster): every Spark phase is a YARN application
whose driver runs in a container, with the project's code shipped as a --py-files zip.  The
drivers share the platform's Hive metastore, so the backup is read back over HiveServer2 (the
platform's Spark JVM) at once, and the applications are checked with the ResourceManager's REST API.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest

from backup.resources import Resources
from bench.faultkit import PrivateRedis
from config.settings import load_settings
from tests.conftest import PORT_OFFSET, STATE, WorkerProc, write_config
from tests.helpers import backupctl, wait_until
from tests.integration.test_hadoop import _upload_csv, home  # noqa: F401 (home: a fixture)
from tests.integration.test_table_backup import DB, assert_same_rows, backup_rows, execute, good_rows, new_live

pytestmark = pytest.mark.integration


def rm(settings, path: str = "", method: str = "GET", body: dict | None = None) -> dict:
    """The ResourceManager's REST API."""
    url = f"http://127.0.0.1:{settings.platform.resourcemanager_http_port}/ws/v1/cluster{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, method=method, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read() or b"{}")


def apps_of(settings, job_id: str) -> list[dict]:
    apps = (rm(settings, "/apps").get("apps") or {}).get("app") or []
    return sorted((a for a in apps if job_id in a["name"]), key=lambda a: a["startedTime"])


@pytest.fixture(scope="module")
def yarn_redis():
    server = PrivateRedis(6503 + PORT_OFFSET, STATE / "yarn-redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def yarn_config(platform, yarn_cluster, yarn_redis):
    import pyspark

    spark_home = Path(pyspark.__file__).resolve().parent
    return write_config(STATE / "yarn.yaml", {
        "redis": {"url": yarn_redis.url, "key_prefix": "mbyarn"},
        "celery": {"task_time_limit": 600, "task_soft_time_limit": 590, "visibility_timeout": 650},
        "spark": {"remote": "yarn", "deploy_mode": "cluster",
                  "hadoop_conf_dir": str(platform.hadoop.conf_dir),
                  "yarn_resourcemanager_url": platform.hadoop.resourcemanager_url,
                  "submit_conf": {
                      # The NodeManager runs on this machine: the wheel's jars are used in place, not uploaded.
                      "spark.yarn.jars": f"local:{spark_home}/jars/*",
                      "spark.driver.extraClassPath": str(platform.hadoop.derby_client_jar),
                      "spark.driver.memory": "768m", "spark.executor.memory": "512m",
                      "spark.executor.instances": "1", "spark.ui.enabled": "false",
                      "spark.sql.shuffle.partitions": "2",
                      "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}},
        "table_backup": {"max_reject_ratio": 0.1},
    })


@pytest.fixture(scope="module")
def yarn_worker(platform, yarn_config):
    from workers.app import create_app

    res = Resources(load_settings(yarn_config))
    w = WorkerProc(yarn_config, "yarn", queues="default,spark", concurrency=1, app=create_app(res.settings)).start()
    yield w, res
    w.stop()


# A YARN application killed is a fault scenario, and the slowest test of the suite (72-81 s): it runs in
# make fault-trials, which .ci/run runs after make test (make test stays under 25 minutes).
@pytest.mark.faults
def test_cluster_mode_backup_runs_each_phase_as_a_yarn_application_and_survives_one_killed(
        settings, platform, home, yarn_worker, yarn_config):
    """The seed's production command end to end; the first application is killed through the RM REST API
    mid-phase: that phase fails with the application id and YARN's diagnostics, is retried as a new
    application, and the backup completes."""
    worker, res = yarn_worker
    execute(settings, f"CREATE DATABASE IF NOT EXISTS {DB}")
    table = new_live(settings, "traffic_yarn")
    rows = good_rows(900)
    folder = f"{home}/traffic/yarn-details"
    _upload_csv(settings, folder, rows)
    killed: list[str] = []

    def kill_first_running() -> None:
        def running():
            return [a for a in (rm(settings, "/apps?states=RUNNING").get("apps") or {}).get("app") or []
                    if a["name"].startswith("mediation-backup ")]
        found = wait_until(running, 300, "a running YARN application of the job", interval=0.5)
        rm(settings, f"/apps/{found[0]['id']}/state", "PUT", {"state": "KILLED"})
        killed.append(found[0]["id"])

    killer = threading.Thread(target=kill_first_running, daemon=True)
    killer.start()
    # The seed's production command names an hdfs:/// folder.
    out = backupctl("run", "table-backup", table, "--source", f"hdfs://{folder}", "--wait", "--json",
                    "--timeout", "600", config=yarn_config, timeout=650)
    killer.join(10)
    assert out.stdout.startswith("{"), out.stdout[-2000:] + out.stderr[-2000:]
    rec = json.loads(out.stdout)
    assert rec["state"] == "success", rec
    assert (rec["outputs"]["rows_read"], rec["outputs"]["rows_accepted"]) == (900, 900)
    # The kill failed its phase with the application id and YARN's diagnostics (the worker's retry line).
    assert killed, "no application was killed"
    retried = [line for line in worker.log.read_text().splitlines() if "retry 1" in line and killed[0] in line]
    assert retried and f"YARN application {killed[0]} KILLED/KILLED" in retried[0], worker.log.read_text()[-3000:]
    assert "killed by user" in retried[0].lower(), retried[0]
    # Every other application of the job FINISHED with SUCCEEDED (ResourceManager REST API).
    apps = apps_of(settings, rec["job_id"])
    others = [a for a in apps if a["id"] != killed[0]]
    assert len(others) >= 2, apps
    assert {(a["state"], a["finalStatus"], a["applicationType"]) for a in others} == {("FINISHED", "SUCCEEDED", "SPARK")}
    assert next(a for a in apps if a["id"] == killed[0])["finalStatus"] == "KILLED"
    # Written by drivers inside YARN, read over the platform's HiveServer2 at once: one shared metastore.
    assert_same_rows(backup_rows(settings, f"{table}_bkp"), rows)
    assert res.locks.holder("table-backup", table) is None


def test_client_mode_on_yarn_runs_executors_in_yarn_and_sees_the_shared_metastore(settings, platform, yarn_config,
                                                                                   tmp_path):
    """spark-submit --master yarn --deploy-mode client: the driver here, its executors in YARN containers."""
    import subprocess
    from pathlib import Path

    import yaml

    from backup.spark_submit import SparkSubmit, driver_env

    raw = yaml.safe_load(yarn_config.read_text())
    raw["spark"]["deploy_mode"] = "client"
    client = load_settings(write_config(tmp_path / "yarn-client.yaml", raw))
    execute(settings, f"CREATE DATABASE IF NOT EXISTS {DB}")
    table = new_live(settings, "traffic_yarn_client")
    execute(settings, f"INSERT INTO {table} SELECT id, 'm', 'c', 'n', id, 1.5, current_timestamp(), '2026-01-01' "
                      f"FROM range(250)")
    (tmp_path / "statements.json").write_text(json.dumps([
        f"SELECT count(*) FROM {table}",  # written through HiveServer2, read in a YARN-backed driver
        "SELECT sum(id) FROM range(100000)"]))
    submit = SparkSubmit(client)
    argv = submit.command(Path(__file__).resolve().parent.parent / "spark_sql.py",
                          [str(tmp_path / "statements.json"), str(tmp_path / "rows.json")], "client mode check")
    assert argv[argv.index("--deploy-mode") + 1] == "client"
    done = subprocess.run(argv, cwd=tmp_path, env=driver_env(submit.hadoop_conf_dir()), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "rows.json").read_text()) == [[[250]], [[4999950000]]]
    app = next(a for a in (rm(settings, "/apps").get("apps") or {}).get("app") or []
               if a["name"] == "mediation-backup client mode check")
    assert (app["state"], app["finalStatus"]) == ("FINISHED", "SUCCEEDED"), app


def test_a_failed_yarn_application_fails_the_phase_with_its_id_and_yarn_diagnostics(settings, platform, yarn_config,
                                                                                     tmp_path):
    """Not killed but failed: the driver's JVM cannot start in its YARN container.  The phase's error names the
    application, its final status from the ResourceManager and YARN's diagnostics, and is retryable (a new
    application is a new try)."""
    import re

    import yaml

    from backup.spark_submit import SparkSubmit
    from backup.table_backup import drop_unswitched_staging
    from base.errors import DriverFailed

    raw = yaml.safe_load(yarn_config.read_text())
    # The driver (the ApplicationMaster, in cluster mode) cannot start its Python (spark.pyspark.driver.python
    # wins over every other setting of it): the application fails, once. (A bad JVM option would not do: Spark
    # starts its JVMs with -XX:+IgnoreUnrecognizedVMOptions.)
    raw["spark"]["submit_conf"].update({"spark.pyspark.driver.python": "/nonexistent/python3",
                                        "spark.yarn.maxAppAttempts": "1"})
    broken = load_settings(write_config(tmp_path / "yarn-broken.yaml", raw))
    rec = {"job_id": "yarnfail0123456789", "outputs": {"data_table": f"{DB}.never_made"},
           "args": {"table": f"{DB}.never", "suffix": "_bkp"}}
    with pytest.raises(DriverFailed) as e:
        SparkSubmit(broken).run(drop_unswitched_staging, Resources(broken), rec)
    message = e.value.one_line()
    assert e.value.retryable
    found = re.search(r"YARN application (application_\d+_\d+) (\w+)/(\w+): ", message)
    assert found, message
    app = rm(settings, f"/apps/{found.group(1)}")["app"]
    assert (found.group(2), found.group(3)) == (app["state"], app["finalStatus"]) == ("FAILED", "FAILED"), app
    assert " ".join(app["diagnostics"].split())[:80] in message, (app["diagnostics"], message)


def test_every_platform_jvm_runs_with_the_configured_options(settings, yarn_cluster):
    """platform.jvm_options reach each JVM the platform started, as the JVM itself sees them (/proc), after the
    platform's own options so that they win (the sessions' C1-only, serial-GC choice)."""
    options = settings.platform.jvm_options
    assert options, "the test config sets platform.jvm_options"
    for name in ("metastore", "hdfs", "yarn", "spark"):
        pid = yarn_cluster._pid(name)
        assert pid is not None, f"{name} is not running"
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert Path(argv[0].decode()).name == "java", (name, argv[:3])
        # The JVM's own options end at the main class or at -cp (Spark's launcher puts -cp first).
        flags = [a.decode() for a in argv[1:] if a.startswith(b"-X") or a.startswith(b"-D")]
        assert [f for f in flags if f in options] == options, (name, flags)
        assert flags.index(options[0]) > max(i for i, f in enumerate(flags) if f.startswith("-Xmx")), (name, flags)

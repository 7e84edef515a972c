"""spark-submit mode without a cluster: the mode chosen by spark.remote, the command line, errors carried back.

The drivers themselves run in tests/integration/test_table_backup_submit.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backup import table_backup as wf
from backup.errors import ConfigError, DriverFailed, FatalError, RetryableError, SchemaDrift, SourceChanged
from backup.resources import Resources
from config.settings import load_settings
from connectors.spark import SparkConnect
from connectors.spark_submit import DRIVER_SCRIPT, DriverTraceback, SparkSubmit, function_name, raised_again
from tests.conftest import CONFIG_PATH, ROOT, STATE
from tests.helpers import wait_until
from workers.spark_driver import resolve


def submit_settings(**spark):
    return load_settings(CONFIG_PATH, overrides={"spark": {"remote": "local[2]", **spark}})


@pytest.mark.parametrize("remote, mode", [
    ("sc://127.0.0.1:15002", SparkConnect), ("sc://h:1/;use_ssl=true", SparkConnect), ("local[2]", SparkSubmit),
    ("local[*]", SparkSubmit), ("yarn", SparkSubmit), ("k8s://https://api.k8s:6443", SparkSubmit),
    ("spark://master:7077", SparkSubmit),
])
def test_the_mode_follows_the_scheme_of_spark_remote(remote, mode):
    assert isinstance(Resources(load_settings(CONFIG_PATH, overrides={"spark": {"remote": remote}})).spark(), mode)


@pytest.mark.parametrize("spark, message", [
    ({"remote": "local[two]"}, "spark.remote"),
    ({"remote": "yarn --deploy-mode cluster"}, "spark.remote"),
    ({"submit_conf": {"--jars": "x.jar"}}, "not a spark.* key"),
    ({"submit_conf": {"spark.driver.memory": "2g\n--jars x"}}, "one-line value"),
    ({"submit_command": "bin/spark-submit"}, "must be an absolute path"),
])
def test_submit_settings_are_checked_at_start(spark, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(CONFIG_PATH, overrides={"spark": spark})


def test_the_command_line_is_client_mode_with_the_configured_conf_and_no_secret(monkeypatch):
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "s3cret-pw")
    s = submit_settings(submit_conf={"spark.sql.warehouse.dir": "/data/wh", "spark.driver.memory": "2g"},
                        submit_command="/opt/spark/bin/spark-submit")
    argv = SparkSubmit(s).command(DRIVER_SCRIPT, ["/tmp/p.json"], "load of job j")
    assert argv == ["/opt/spark/bin/spark-submit", "--master", "local[2]", "--deploy-mode", "client",
                    "--name", "mediation-backup load of job j", "--conf", "spark.sql.warehouse.dir=/data/wh",
                    "--conf", "spark.driver.memory=2g", str(DRIVER_SCRIPT), "/tmp/p.json"]
    assert not any("s3cret" in a for a in argv)
    assert SparkSubmit(submit_settings()).submit_executable().endswith("/pyspark/bin/spark-submit")


def test_a_driver_that_ends_without_a_report_is_retryable_and_a_missing_spark_submit_is_fatal():
    rec = {"job_id": "x" * 12}
    with pytest.raises(DriverFailed, match="exited with code 1 without reporting a result") as failed:
        SparkSubmit(submit_settings(submit_command="/bin/false")).run(wf.drop_unswitched_staging, None, rec)
    assert failed.value.retryable
    with pytest.raises(ConfigError, match="no-such-spark-submit not found or not executable"):
        SparkSubmit(submit_settings(submit_command=str(STATE / "no-such-spark-submit"))).run(
            wf.drop_unswitched_staging, None, rec)
    with pytest.raises(ConfigError, match="spark-submit mode"):
        with SparkSubmit(submit_settings()).session():
            pass


@pytest.mark.parametrize("reported, cls", [
    ({"type": "SchemaDrift", "message": "files differ", "retryable": False}, SchemaDrift),
    ({"type": "SourceChanged", "message": "files changed", "retryable": True}, SourceChanged),
    ({"type": "KeyError", "message": "odd", "retryable": False}, FatalError),  # not ours: its family decides
    ({"type": "Unknown", "message": "later version", "retryable": True}, RetryableError),
])
def test_an_error_a_driver_reports_is_raised_again_as_its_class_with_the_traceback_as_cause(reported, cls):
    err = raised_again({**reported, "traceback": "Traceback (most recent call last): ..."})
    assert type(err) is cls and str(err) == reported["message"]
    assert isinstance(err.__cause__, DriverTraceback) and "Traceback" in str(err.__cause__)


def test_only_module_level_functions_of_backup_run_in_a_driver():
    assert function_name(wf.load_phase) == "backup.table_backup:load_phase"
    assert resolve("backup.table_backup:load_phase") is wf.load_phase
    with pytest.raises(ValueError, match="cannot run in a spark-submit driver"):
        function_name(lambda ctx: ctx)
    with pytest.raises(ValueError, match="not a function the driver runs"):
        resolve("os:system")


def test_a_driver_dies_with_the_worker_process_that_started_it(tmp_path):
    """A worker SIGKILLed mid-phase (hard time limit, OOM killer) must not leave its driver writing."""
    pid_file = tmp_path / "driver.pid"
    fake = tmp_path / "spark-submit"
    fake.write_text('#!/bin/sh\necho $$ > "$MB_TEST_DRIVER_PID"\nexec sleep 120\n')
    fake.chmod(0o755)
    starter = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
               "from backup import table_backup as wf\n"
               "from config.settings import load_settings\n"
               "from connectors.spark_submit import SparkSubmit\n"
               f"s = load_settings({str(CONFIG_PATH)!r}, overrides={{'spark': {{'remote': 'local[1]', "
               f"'submit_command': {str(fake)!r}}}}})\n"
               "SparkSubmit(s).run(wf.drop_unswitched_staging, None, {'job_id': 'x' * 12})\n")
    worker = subprocess.Popen([sys.executable, "-c", starter], env={**os.environ, "MB_TEST_DRIVER_PID": str(pid_file)})
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the driver to start")
        driver = int(pid_file.read_text())
        assert alive(driver)
        worker.kill()
        worker.wait()
        wait_until(lambda: not alive(driver), 10, "the driver to die with its worker")
    finally:
        worker.kill()
        if pid_file.exists() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether a process runs (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

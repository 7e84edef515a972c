"""spark-submit mode without a cluster: the mode chosen by spark.remote, the command line, errors carried back.

The drivers themselves run in tests/integration/test_table_backup_submit.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from backup import table_backup as wf
from base.errors import ConfigError, DriverFailed, FatalError, RetryableError, SchemaDrift, SourceChanged
from backup.resources import Resources
from backup import spark_submit
from config.settings import load_settings
from connectors.spark import SparkConnect
from backup.spark_submit import DRIVER_SCRIPT, DriverTraceback, SparkSubmit, function_name, raised_again
from tests.conftest import CONFIG_PATH, ROOT, STATE
from tests.helpers import wait_until
from workers.spark_driver import describe, die_with_parent, metastore_problem, resolve, run


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
    ({"remote": "k8s://https://admin:pw@api.k8s:6443"}, "must not carry credentials"),
    ({"remote": "spark://admin@master:7077"}, "must not carry credentials"),
    ({"submit_conf": {"spark.hadoop.javax.jdo.option.ConnectionPassword": "pw"}}, "secret on spark-submit's command"),
    ({"submit_conf": {"spark.hadoop.fs.s3a.access.key": "AKIA"}}, "secret on spark-submit's command"),
    ({"submit_conf": {"spark.hadoop.javax.jdo.option.ConnectionURL": "jdbc:mysql://hive:pw@db/metastore"}},
     "secret on spark-submit's command"),
    ({"submit_conf": {"spark.hadoop.javax.jdo.option.ConnectionURL": "jdbc:mysql://db/ms?password=pw"}},
     "secret on spark-submit's command"),
])
def test_submit_settings_are_checked_at_start(spark, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(CONFIG_PATH, overrides={"spark": spark})


@pytest.mark.parametrize("spark", [
    {"remote": "sc://h:15002/;user_id=svc@corp.example"},  # a parameter, not credentials
    {"submit_conf": {"spark.kubernetes.driver.secrets.hive-creds": "/etc/hive"}},  # where secrets are, not them
    {"submit_conf": {"spark.kubernetes.driver.secretKeyRef.HIVE_PW": "hive-creds:password"}},
    {"submit_conf": {"spark.kubernetes.authenticate.oauthTokenFile": "/var/run/token"}},
    {"submit_conf": {"spark.authenticate.secret.file": "/etc/spark/secret"}},
    {"submit_conf": {"spark.hadoop.hive.metastore.uris": "thrift://metastore:9083"}},
])
def test_settings_that_only_point_at_secrets_are_accepted(spark):
    load_settings(CONFIG_PATH, overrides={"spark": spark})


def test_the_command_line_is_client_mode_with_the_configured_conf():
    s = submit_settings(submit_conf={"spark.sql.warehouse.dir": "/data/wh", "spark.driver.memory": "2g"},
                        submit_command="/opt/spark/bin/spark-submit")
    argv = SparkSubmit(s).command(DRIVER_SCRIPT, ["/tmp/p.json"], "load of job j")
    assert argv == ["/opt/spark/bin/spark-submit", "--master", "local[2]", "--deploy-mode", "client",
                    "--name", "mediation-backup load of job j", "--conf", "spark.sql.warehouse.dir=/data/wh",
                    "--conf", "spark.driver.memory=2g", str(DRIVER_SCRIPT), "/tmp/p.json"]
    assert SparkSubmit(submit_settings()).submit_executable().endswith("/pyspark/bin/spark-submit")


FAKE_SUBMIT = """#!/bin/sh
# Stands in for spark-submit: keeps what it was given, logs like the driver, reports $MB_TEST_RESULT.
for payload; do :; done
printf '%s\\n' "$@" > "$MB_TEST_OUT/argv"
cp "$payload" "$MB_TEST_OUT/payload.json"
env > "$MB_TEST_OUT/env"
echo "MB-DRIVER WARNING backup.table_backup: a line of the driver's own"
echo "26/12/02 INFO SparkContext: a line of Spark's"
printf '%s' "$MB_TEST_RESULT" > "$(dirname "$payload")/result.json"
"""


@pytest.fixture
def fake_submit(tmp_path, monkeypatch):
    """settings whose spark-submit is FAKE_SUBMIT, writing what it saw to tmp_path/out."""
    fake = tmp_path / "spark-submit"
    fake.write_text(FAKE_SUBMIT)
    fake.chmod(0o755)
    (tmp_path / "out").mkdir()
    monkeypatch.setenv("MB_TEST_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("BACKUP_REDIS_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("SPARK_REMOTE", "sc://elsewhere:15002")
    monkeypatch.setenv("SPARK_CONNECT_MODE_ENABLED", "1")  # what pyspark leaves after a Connect session
    return submit_settings(submit_command=str(fake), submit_conf={"spark.driver.memory": "1g"})


def test_a_driver_gets_the_payload_and_the_environment_but_no_secret_in_either_and_its_result_comes_back(
        fake_submit, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MB_TEST_RESULT", json.dumps({"result": {"rows": 7}}))
    with caplog.at_level(logging.INFO, logger="backup.spark_submit"):
        assert SparkSubmit(fake_submit).run(wf.drop_unswitched_staging, None, {"job_id": "j" * 12}) == {"rows": 7}
    out = tmp_path / "out"
    argv = (out / "argv").read_text().split("\n")
    payload = json.loads((out / "payload.json").read_text())
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert argv[:4] == ["--master", "local[2]", "--deploy-mode", "client"] and "spark.driver.memory=1g" in argv
    assert (payload["function"], payload["kind"], payload["args"]) == (
        "backup.table_backup:drop_unswitched_staging", "call", [{"job_id": "j" * 12}])
    assert payload["settings"] == json.loads(fake_submit.model_dump_json())
    # The secret reaches the driver only through its environment, like the worker's.
    assert "s3cret" not in (out / "argv").read_text() + (out / "payload.json").read_text()
    assert env["BACKUP_REDIS_PASSWORD"] == "s3cret-pw"
    assert "SPARK_REMOTE" not in env and "SPARK_CONNECT_MODE_ENABLED" not in env
    assert env["PYSPARK_DRIVER_PYTHON"] == env["PYSPARK_PYTHON"] == sys.executable
    # The driver's own log lines are the worker's now; Spark's are not.
    relayed = [r for r in caplog.records if r.getMessage().startswith("driver: ")]
    assert [(r.levelname, r.getMessage()) for r in relayed] == [
        ("WARNING", "driver: backup.table_backup: a line of the driver's own")]
    assert not Path(argv[-2]).parent.exists()  # the driver's folder (from the payload path), removed after a success


def test_an_error_a_driver_reports_is_raised_with_its_log_kept(fake_submit, monkeypatch):
    monkeypatch.setenv("MB_TEST_RESULT", json.dumps({"error": {
        "type": "SourceChanged", "message": "the files changed", "retryable": True, "traceback": "Traceback ..."}}))
    with pytest.raises(SourceChanged, match=r"^the files changed \[Spark driver log: (/\S+)\]$") as raised:
        SparkSubmit(fake_submit).run(wf.drop_unswitched_staging, None, {"job_id": "j" * 12})
    kept = Path(str(raised.value).rsplit(": ", 1)[1].rstrip("]"))
    assert "a line of Spark's" in kept.read_text()
    shutil.rmtree(kept.parent)


def test_an_unreadable_report_is_driver_failed_naming_it(fake_submit, monkeypatch):
    monkeypatch.setenv("MB_TEST_RESULT", '{"result": ')
    with pytest.raises(DriverFailed, match=r"wrote an unreadable report (/\S+)/result.json") as raised:
        SparkSubmit(fake_submit).run(wf.drop_unswitched_staging, None, {"job_id": "j" * 12})
    shutil.rmtree(Path(str(raised.value).split("unreadable report ", 1)[1].split("/result.json")[0]))


def test_a_driver_that_reported_but_does_not_exit_is_killed_after_the_grace_period(fake_submit, tmp_path,
                                                                                   monkeypatch):
    slow = tmp_path / "spark-submit-that-hangs"
    slow.write_text(FAKE_SUBMIT + 'echo $$ > "$MB_TEST_OUT/pid"\nexec sleep 120\n')
    slow.chmod(0o755)
    monkeypatch.setenv("MB_TEST_RESULT", json.dumps({"result": "done"}))
    monkeypatch.setattr(spark_submit, "EXIT_GRACE", 1)
    hung = fake_submit.model_copy(update={"spark": fake_submit.spark.model_copy(update={"submit_command": str(slow)})})
    assert SparkSubmit(hung).run(wf.drop_unswitched_staging, None, {"job_id": "j" * 12}) == "done"
    assert not alive(int((tmp_path / "out" / "pid").read_text()))


def test_a_driver_that_ends_without_a_report_is_retryable_and_a_missing_spark_submit_is_fatal():
    rec = {"job_id": "x" * 12}
    with pytest.raises(DriverFailed, match=r"exited with code 1 without reporting a result \(log: (/\S+)/driver.log\)") \
            as failed:
        SparkSubmit(submit_settings(submit_command="/bin/false")).run(wf.drop_unswitched_staging, None, rec)
    assert failed.value.retryable
    shutil.rmtree(str(failed.value).split("(log: ", 1)[1].split("/driver.log", 1)[0])
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
    fake.write_text('#!/bin/sh\nfor p; do :; done\ndirname "$p" > "$MB_TEST_DRIVER_PID.dir"\n'
                    'echo $$ > "$MB_TEST_DRIVER_PID"\nexec sleep 120\n')
    fake.chmod(0o755)
    starter = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
               "from backup import table_backup as wf\n"
               "from config.settings import load_settings\n"
               "from backup.spark_submit import SparkSubmit\n"
               f"s = load_settings({str(CONFIG_PATH)!r}, overrides={{'spark': {{'remote': 'local[1]', "
               f"'submit_command': {str(fake)!r}}}}})\n"
               "SparkSubmit(s).run(wf.drop_unswitched_staging, None, {'job_id': 'x' * 12})\n")
    worker = subprocess.Popen([sys.executable, "-c", starter], env={**os.environ, "MB_TEST_DRIVER_PID": str(pid_file)})
    try:
        assert_dies_with_its_parent(worker, pid_file)
    finally:
        if pid_file.with_name("driver.pid.dir").exists():  # the folder a killed worker could not remove
            shutil.rmtree(pid_file.with_name("driver.pid.dir").read_text().strip(), ignore_errors=True)


def assert_dies_with_its_parent(parent: subprocess.Popen, pid_file: Path) -> None:
    """Once the child wrote its pid, SIGKILL ``parent``: the child must be gone within 10 s."""
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the driver to start")
        child = int(pid_file.read_text())
        assert alive(child)
        parent.kill()
        parent.wait()
        wait_until(lambda: not alive(child), 10, "the driver to die with its parent")
    finally:
        parent.kill()
        if pid_file.exists() and pid_file.read_text().strip() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether a process runs (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_python_driver_dies_with_its_parent_the_jvm(tmp_path):
    """spark-submit's JVM starts the Python driver as a child: it must not outlive the JVM either."""
    pid_file = tmp_path / "driver.pid"
    driver = (f"import os, sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
              "from workers.spark_driver import die_with_parent\n"
              f"die_with_parent(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)\n")
    jvm = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {driver!r}])"])
    assert_dies_with_its_parent(jvm, pid_file)


@pytest.mark.parametrize("uris, url, derby_home, shared", [
    ("thrift://metastore:9083", None, None, True),
    (None, None, "/var/lib/derby", True),  # embedded Derby in a fixed folder: one machine's trial
    (None, "jdbc:derby:;databaseName=/data/metastore_db;create=true", None, True),
    (None, "jdbc:postgresql://db/metastore", None, True),
    (None, None, None, False),  # Hive's default: a new Derby in each driver's temporary folder
    (None, "jdbc:derby:;databaseName=metastore_db;create=true", None, False),
    (None, "jdbc:derby:metastore_db;create=true", None, False),
    (None, "jdbc:derby:memory:metastore;create=true", "/var/lib/derby", False),
])
def test_a_driver_without_a_shared_metastore_is_refused(uris, url, derby_home, shared):
    problem = metastore_problem(uris, url, derby_home)
    assert (problem is None) == shared
    if not shared:
        assert "no shared Hive metastore: set spark.submit_conf spark.hadoop.hive.metastore.uris" in problem


def test_a_metastore_the_driver_cannot_see_is_not_refused():
    # Another metastore client (AWS Glue), or a hive-site.xml in HIVE_CONF_DIR, which Hive reads and Spark does not.
    assert metastore_problem(None, None, None, client_factory="com.amazonaws.glue.catalog.metastore.X") is None
    assert metastore_problem(None, None, None, hive_conf_dir="/etc/hive/conf") is None


def test_a_driver_started_for_a_job_that_has_ended_does_nothing(res, settings):
    rec = wf.submit(res, "mnaas.t", "/data/in")
    res.jobs.update(rec["job_id"], lambda r: r.update(state="skipped"))
    payload = {"function": "backup.table_backup:load_phase", "kind": "phase", "job_id": rec["job_id"],
               "phase": "load", "settings": json.loads(settings.model_dump_json())}
    assert run(payload, spark=None) == {"job_id": rec["job_id"], "state": "skipped"}


def test_a_lost_jvm_is_reported_retryable_and_a_workflow_error_as_itself():
    from py4j.protocol import Py4JNetworkError

    def over_lost_jvm(err: Exception) -> Exception:
        err.__cause__ = Py4JNetworkError("Answer from Java side is empty")
        return err

    lost = describe(over_lost_jvm(FatalError("load: count rows")), "load")
    assert (lost["type"], lost["retryable"]) == ("DriverFailed", True)
    assert lost["message"].startswith("load: lost the connection to the driver's JVM")
    # A workflow's own error stays itself, over a lost JVM or not.
    assert describe(over_lost_jvm(SchemaDrift("files under /in differ")), "validate")["type"] == "SchemaDrift"
    drift = describe(SchemaDrift("files under /in do not match db.t"), "validate")
    assert (drift["type"], drift["message"], drift["retryable"]) == (
        "SchemaDrift", "files under /in do not match db.t", False)
    assert "SchemaDrift" in drift["traceback"]

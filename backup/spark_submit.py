"""spark-submit mode: each Spark phase runs in a driver process of its own, started with spark-submit.

Chosen when ``spark.remote`` names a master (``local[N]``, ``yarn``, ``k8s://...``,
``spark://...``) instead of an ``sc://`` URL.  The Celery task keeps owning the phase
(delivery count, lock renewal, retries, the chain); the driver, ``workers/spark_driver.py``
in client deploy mode (so it runs beside the worker and reaches Redis with the worker's
environment), builds a classic SparkSession with Hive support and calls the same phase
function on the same job record, fenced by the same lock.  It reports the result, or the
error's class and message, in a file; the error is raised again here, so the retry policy
reads the same family as in Connect mode.

The phases share tables only through the metastore the driver's configuration names
(``spark.submit_conf``, e.g. ``spark.hadoop.hive.metastore.uris``, or a hive-site.xml in
SPARK_CONF_DIR or ``spark.hadoop_conf_dir``): each phase is a new driver.

``spark.deploy_mode: cluster`` (``spark.remote: yarn``) is the legacy production command
(``spark-submit --master yarn --deploy-mode cluster``): the driver runs in a YARN container.  The
project's packages go with it as a ``--py-files`` zip built from this checkout, the payload as
``--files``; the driver reports its outcome into Redis (``<prefix>:driver-report:<token>``), which
it reaches anyway for the job record and lock.  spark-submit follows the application to its final
status; a driver that ends without a report (killed, failed to start, out of memory) fails the
phase with the application id, its final status and the ResourceManager's diagnostics line.  A
phase the worker abandons (soft time limit, worker shutdown) kills its application through the
ResourceManager's REST API (``spark.yarn_resourcemanager_url``).  The driver's Python is this
worker's interpreter path (``spark.yarn.appMasterEnv.PYSPARK_PYTHON``): the cluster's nodes need
the same environment there; secrets in this worker's environment are not sent to the cluster.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base import errors
from base.errors import BackupError, ConfigError, DriverFailed, FatalError, RetryableError
from config.settings import Settings

if TYPE_CHECKING:
    from backup.resources import Resources
    from backup.runner import PhaseContext

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DRIVER_SCRIPT = ROOT / "workers" / "spark_driver.py"
# What a driver in a YARN container imports: shipped with --py-files.
SHIPPED_PACKAGES = ("base", "backup", "config", "connectors", "storage", "workers")
REPORT_TTL = 7 * 86400
_APPLICATION_ID = re.compile(r"\b(application_\d+_\d+)\b")
# Variables that would turn the driver's SparkSession builder into a Spark Connect client.
_CONNECT_ENV = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")
_LOG_TAIL_LINES = 8
# Seconds a driver may take to exit after its report (it gives its session's stop 120 s itself).
EXIT_GRACE = 180
# Prefix of the project's log lines in a driver's output (workers/spark_driver.py), relayed to the worker's log.
LOG_MARK = "MB-DRIVER"


class DriverTraceback(Exception):
    """The traceback a spark-submit driver reported: the cause of the error raised again in the worker."""


def function_name(func: Callable) -> str:
    """``module:qualname`` of a module-level function of this project, which the driver imports."""
    name = f"{func.__module__}:{func.__qualname__}"
    if "<" in func.__qualname__ or not func.__module__.startswith("backup."):
        raise ValueError(f"{name} cannot run in a spark-submit driver: use a module-level function of backup.*")
    return name


def raised_again(error: dict) -> BackupError:
    """The error a driver reported, as the same class of base.errors (its family if the class is unknown)."""
    cls = getattr(errors, str(error.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, BackupError)):
        cls = RetryableError if error.get("retryable") else FatalError
    exc = cls(error.get("message") or "the Spark driver reported an error without a message")
    exc.__cause__ = DriverTraceback(error.get("traceback") or "")
    return exc


class SparkSubmit:
    """Runs phases and calls in spark-submit drivers, on the master ``spark.remote`` names."""

    def __init__(self, settings: Settings):
        self.settings = settings  # all of them: the driver rebuilds the job's resources from them

    @classmethod
    def from_settings(cls, s: Settings) -> "SparkSubmit":
        """Build from the full settings."""
        return cls(s)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Not in this mode: sessions exist only inside a phase's driver."""
        raise ConfigError(f"spark.remote={self.settings.spark.remote} (spark-submit mode): a Spark session exists "
                          f"only inside a phase's driver; run the code through run_phase or run")
        yield  # pragma: no cover  (a generator, so that this is a context manager)

    def run_phase(self, func: Callable[["PhaseContext"], dict], ctx: "PhaseContext") -> dict:
        """Run a phase function in a driver, on the job record and lock of ``ctx``; its result or its error."""
        return self._submit(func, {"kind": "phase", "job_id": ctx.job_id, "phase": ctx.name},
                            f"{ctx.name} of job {ctx.job_id}", ctx.res)

    def run(self, func: Callable[..., Any], res: "Resources", *args) -> Any:
        """Run ``func(resources, *args)`` in a driver, which builds its own resources (arguments and result as JSON)."""
        return self._submit(func, {"kind": "call", "args": list(args)}, function_name(func), res)

    @property
    def cluster_mode(self) -> bool:
        return self.settings.spark.deploy_mode == "cluster"

    def command(self, script: Path, args: list[str], label: str, *, shipped: list[str] = (),
                tag: str | None = None) -> list[str]:
        """The spark-submit command line of a driver running ``script`` (no secret in it).

        In cluster deploy mode ``shipped`` files go with it (``--files``) and the project's code as
        ``--py-files``; ``tag`` marks the YARN application so it can be found without its id.
        """
        s = self.settings.spark
        argv = [self.submit_executable(), "--master", s.remote, "--deploy-mode", s.deploy_mode,
                "--name", f"mediation-backup {label}"]
        if self.cluster_mode:
            argv += ["--py-files", str(project_zip()), "--conf", f"spark.yarn.appMasterEnv.PYSPARK_PYTHON={sys.executable}"]
            if shipped:
                argv += ["--files", ",".join(shipped)]
            if tag:
                argv += ["--conf", f"spark.yarn.tags={tag}"]
        if s.remote == "yarn":
            argv += ["--conf", f"spark.executorEnv.PYSPARK_PYTHON={sys.executable}"]
        for key, value in s.submit_conf.items():
            argv += ["--conf", f"{key}={value}"]
        return argv + [str(script), *args]

    def submit_executable(self) -> str:
        """spark.submit_command, or the spark-submit of the installed pyspark wheel."""
        if self.settings.spark.submit_command:
            return self.settings.spark.submit_command
        import pyspark

        return str(Path(pyspark.__file__).resolve().parent / "bin" / "spark-submit")

    def _submit(self, func: Callable, call: dict, label: str, res: "Resources") -> Any:
        """Start one driver, wait for it and return what it reported; a failed driver's folder is kept."""
        payload = {"function": function_name(func), "settings": self.settings.model_dump(mode="json"), **call}
        executable = self.submit_executable()
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise ConfigError(f"spark.submit_command: {executable} not found or not executable")
        env = driver_env(self.hadoop_conf_dir())
        folder = Path(tempfile.mkdtemp(prefix="spark-driver-"))
        driver_log, reported = folder / "driver.log", folder / "result.json"
        token = uuid.uuid4().hex
        if self.cluster_mode:
            payload["report_key"] = f"{self.settings.redis.key_prefix}:driver-report:{token}"
            (folder / "payload.json").write_text(json.dumps(payload))
            command = self.command(DRIVER_SCRIPT, ["payload.json"], label, shipped=[str(folder / "payload.json")],
                                   tag=f"mediation-backup-{token}")
            report = _RedisReport(res, payload["report_key"])
        else:
            (folder / "payload.json").write_text(json.dumps(payload))
            command = self.command(DRIVER_SCRIPT, [str(folder / "payload.json")], label)
            report = _FileReport(reported)
        argv = [_setpriv(), "--pdeathsig", "KILL", "--", *command]
        log.info("spark-submit %s on %s (%s deploy mode)", label, self.settings.spark.remote,
                 self.settings.spark.deploy_mode)
        with open(driver_log, "wb") as out:
            # cwd: what the driver leaves beside it (derby.log, a misconfigured driver's metastore_db) goes with
            # the folder.
            proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                returncode = wait_for_driver(proc, report.exists)
            except BaseException:
                if self.cluster_mode:  # the client's death does not end the application: end it here
                    self.kill_application(application_id(driver_log))
                raise
        relay_driver_log(driver_log)
        text = report.read()
        if text is None:
            raise DriverFailed(self._no_report(label, returncode, driver_log))
        try:
            outcome = json.loads(text)
            if "result" in outcome:
                shutil.rmtree(folder, ignore_errors=True)
                return outcome["result"]
            error = outcome["error"]
        except (ValueError, KeyError, TypeError) as e:
            raise DriverFailed(f"Spark driver for {label} wrote an unreadable report {report}: {e}") from e
        raise raised_again({**error, "message": f"{error.get('message')} [Spark driver log: {driver_log}]"})

    def hadoop_conf_dir(self) -> Path | None:
        conf = self.settings.spark.hadoop_conf_dir
        return self.settings.path(conf) if conf else None

    def _no_report(self, label: str, returncode: int, driver_log: Path) -> str:
        """Why a driver ended without a report: on YARN, its application's final status and diagnostics."""
        app = application_id(driver_log)
        if app:
            status = self.application(app)
            state = f"{status.get('state', '?')}/{status.get('finalStatus', '?')}" if status else "status unknown"
            diagnostics = " ".join(str((status or {}).get("diagnostics") or "").split())[:600] or \
                " | ".join(_tail(driver_log))
            return (f"Spark driver for {label} ended without reporting a result: YARN application {app} {state}: "
                    f"{diagnostics} (spark-submit exit {returncode}, log: {driver_log})")
        return (f"Spark driver for {label} exited with code {returncode} without reporting a result "
                f"(log: {driver_log}); last lines: {' | '.join(_tail(driver_log))}")

    def application(self, app_id: str) -> dict | None:
        """The ResourceManager's report of an application (REST ``/apps/<id>``), or None if it cannot be asked."""
        base = self.settings.spark.yarn_resourcemanager_url
        if not base:
            return None
        try:
            with urllib.request.urlopen(f"{base.rstrip('/')}/apps/{app_id}", timeout=10) as reply:
                return json.loads(reply.read()).get("app")
        except (OSError, ValueError) as e:
            log.warning("could not read YARN application %s from %s: %s", app_id, base, e)
            return None

    def kill_application(self, app_id: str | None) -> None:
        """Kill a YARN application through the ResourceManager's REST API (best effort, logged)."""
        base = self.settings.spark.yarn_resourcemanager_url
        if not app_id:
            return
        if not base:
            log.error("YARN application %s may still run: spark.yarn_resourcemanager_url is not set, so it was not "
                      "killed", app_id)
            return
        request = urllib.request.Request(f"{base.rstrip('/')}/apps/{app_id}/state", method="PUT",
                                         data=json.dumps({"state": "KILLED"}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10):
                log.warning("killed YARN application %s", app_id)
        except (OSError, ValueError) as e:
            log.error("could not kill YARN application %s: %s", app_id, e)


class _FileReport:
    """A client-mode driver's outcome: result.json beside its payload."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> str | None:
        return self.path.read_text() if self.path.exists() else None

    def __str__(self) -> str:
        return str(self.path)


class _RedisReport:
    """A cluster-mode driver's outcome: a Redis key it sets once (it has no file system in common with us)."""

    def __init__(self, res: "Resources", key: str):
        self.res, self.key = res, key

    def exists(self) -> bool:
        return bool(self.res.redis.exists(self.key))

    def read(self) -> str | None:
        value = self.res.redis.get(self.key)
        if value is not None:
            self.res.redis.delete(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def __str__(self) -> str:
        return f"Redis key {self.key}"


def application_id(driver_log: Path) -> str | None:
    """The YARN application id spark-submit printed, if any."""
    try:
        found = _APPLICATION_ID.search(driver_log.read_text(errors="replace"))
    except OSError:
        return None
    return found.group(1) if found else None


@functools.lru_cache(maxsize=1)
def project_zip() -> Path:
    """The project's packages as one zip for --py-files, built once per process from this checkout."""
    folder = Path(tempfile.mkdtemp(prefix="mediation-backup-code-"))
    target = folder / "mediation_backup.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in SHIPPED_PACKAGES:
            for path in sorted((ROOT / package).rglob("*.py")):
                zf.write(path, path.relative_to(ROOT).as_posix())
    return target


def wait_for_driver(proc: subprocess.Popen, reported: Callable[[], bool]) -> int:
    """The driver's exit code, once it exits, or once it has reported and then not exited within a grace period.

    The JVM's own shutdown can hang after the report is written (a cluster that does not answer
    the stop): the phase is done then, and waiting on would only let Celery's time limit fail it.
    Any exception here (Celery's soft time limit) kills the driver.
    """
    reported_at = None
    try:
        while True:
            try:
                return proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if not reported():
                    continue
                reported_at = reported_at or time.monotonic()
                if time.monotonic() - reported_at > EXIT_GRACE:
                    log.warning("the Spark driver reported but did not exit within %d s; killed", EXIT_GRACE)
                    proc.kill()
                    return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def driver_env(hadoop_conf_dir: Path | None = None) -> dict[str, str]:
    """A driver's environment: the worker's (secrets stay there) and its Python, less what makes a Connect client.

    pyspark sets SPARK_CONNECT_MODE_ENABLED in a process that opened a Connect session; inherited,
    it would turn the driver's classic session builder into a Connect client.
    """
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_ENV}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    if hadoop_conf_dir is not None:
        env.update(HADOOP_CONF_DIR=str(hadoop_conf_dir), YARN_CONF_DIR=str(hadoop_conf_dir))
    return env


def relay_driver_log(path: Path) -> None:
    """Log the project's lines of a driver's log (``MB-DRIVER LEVEL logger: message``) as this worker's."""
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith(LOG_MARK + " "):
                level, _, rest = line[len(LOG_MARK) + 1:].rstrip("\n").partition(" ")
                log.log(logging.getLevelName(level) if level in _LEVELS else logging.INFO, "driver: %s", rest)


_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def _setpriv() -> str:
    """util-linux's setpriv, which makes the driver die with the worker process that started it."""
    # A worker killed by Celery's hard time limit (or the OOM killer) must not leave a driver
    # writing the staging table while the redelivered phase starts another.  setpriv sets the
    # parent-death signal and execs spark-submit, which execs the JVM: the signal survives both.
    found = shutil.which("setpriv")
    if not found:
        raise ConfigError("setpriv (Debian/Ubuntu package util-linux) not found: spark-submit mode needs it so that "
                          "a driver dies with its worker")
    return found


def _tail(path: Path) -> list[str]:
    """The last lines of a driver's log that are not stack frames, each cut short (read from its end)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        text = f.read().decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("at ")]
    return [ln[:300] for ln in lines[-_LOG_TAIL_LINES:]]

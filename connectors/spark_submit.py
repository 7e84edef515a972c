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
SPARK_CONF_DIR): each phase is a new driver.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup import errors
from backup.errors import BackupError, ConfigError, DriverFailed, FatalError, RetryableError
from config.settings import Settings

if TYPE_CHECKING:
    from backup.resources import Resources
    from backup.runner import PhaseContext

log = logging.getLogger(__name__)

DRIVER_SCRIPT = Path(__file__).resolve().parent.parent / "workers" / "spark_driver.py"
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
    """The error a driver reported, as the same class of backup.errors (its family if the class is unknown)."""
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
                            f"{ctx.name} of job {ctx.job_id}")

    def run(self, func: Callable[..., Any], res: "Resources", *args) -> Any:
        """Run ``func(resources, *args)`` in a driver, which builds its own resources (arguments and result as JSON)."""
        return self._submit(func, {"kind": "call", "args": list(args)}, function_name(func))

    def command(self, script: Path, args: list[str], label: str) -> list[str]:
        """The spark-submit command line of a driver running ``script`` (client deploy mode; no secret in it)."""
        s = self.settings.spark
        argv = [self.submit_executable(), "--master", s.remote, "--deploy-mode", "client",
                "--name", f"mediation-backup {label}"]
        for key, value in s.submit_conf.items():
            argv += ["--conf", f"{key}={value}"]
        return argv + [str(script), *args]

    def submit_executable(self) -> str:
        """spark.submit_command, or the spark-submit of the installed pyspark wheel."""
        if self.settings.spark.submit_command:
            return self.settings.spark.submit_command
        import pyspark

        return str(Path(pyspark.__file__).resolve().parent / "bin" / "spark-submit")

    def _submit(self, func: Callable, call: dict, label: str) -> Any:
        """Start one driver, wait for it and return what it reported; a failed driver's folder is kept."""
        payload = {"function": function_name(func), "settings": self.settings.model_dump(mode="json"), **call}
        executable = self.submit_executable()
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise ConfigError(f"spark.submit_command: {executable} not found or not executable")
        env = driver_env()
        folder = Path(tempfile.mkdtemp(prefix="spark-driver-"))
        (folder / "payload.json").write_text(json.dumps(payload))
        argv = [_setpriv(), "--pdeathsig", "KILL", "--",
                *self.command(DRIVER_SCRIPT, [str(folder / "payload.json")], label)]
        driver_log, reported = folder / "driver.log", folder / "result.json"
        log.info("spark-submit %s on %s", label, self.settings.spark.remote)
        with open(driver_log, "wb") as out:
            # cwd: what the driver leaves beside it (derby.log, a misconfigured driver's metastore_db) goes with
            # the folder.
            proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
            returncode = wait_for_driver(proc, reported)
        relay_driver_log(driver_log)
        if not reported.exists():
            raise DriverFailed(f"Spark driver for {label} exited with code {returncode} without reporting a result "
                               f"(log: {driver_log}); last lines: {' | '.join(_tail(driver_log))}")
        try:
            outcome = json.loads(reported.read_text())
            if "result" in outcome:
                shutil.rmtree(folder, ignore_errors=True)
                return outcome["result"]
            error = outcome["error"]
        except (ValueError, KeyError, TypeError) as e:
            raise DriverFailed(f"Spark driver for {label} wrote an unreadable report {reported}: {e}") from e
        raise raised_again({**error, "message": f"{error.get('message')} [Spark driver log: {driver_log}]"})


def wait_for_driver(proc: subprocess.Popen, reported: Path) -> int:
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
                if not reported.exists():
                    continue
                reported_at = reported_at or time.monotonic()
                if time.monotonic() - reported_at > EXIT_GRACE:
                    log.warning("the Spark driver reported %s but did not exit within %d s; killed", reported,
                                EXIT_GRACE)
                    proc.kill()
                    return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def driver_env() -> dict[str, str]:
    """A driver's environment: the worker's (secrets stay there) and its Python, less what makes a Connect client.

    pyspark sets SPARK_CONNECT_MODE_ENABLED in a process that opened a Connect session; inherited,
    it would turn the driver's classic session builder into a Connect client.
    """
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_ENV}
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
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

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
        """Run ``func(driver resources, *args)`` in a driver (arguments and result as JSON)."""
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
        """Start one driver, wait for it and return what it reported."""
        payload = {"function": function_name(func), "settings": self.settings.model_dump(mode="json"), **call}
        executable = self.submit_executable()
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            raise ConfigError(f"spark.submit_command: {executable} not found or not executable")
        # The driver inherits the worker's environment (secrets stay there), less what would make it a Connect client.
        env = {k: v for k, v in os.environ.items() if k not in _CONNECT_ENV}
        env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        with tempfile.TemporaryDirectory(prefix="spark-driver-") as tmp:
            folder = Path(tmp)
            (folder / "payload.json").write_text(json.dumps(payload))
            argv = [_setpriv(), "--pdeathsig", "KILL", "--",
                    *self.command(DRIVER_SCRIPT, [str(folder / "payload.json")], label)]
            log.info("spark-submit %s on %s", label, self.settings.spark.remote)
            with open(folder / "driver.log", "wb") as out:
                # cwd: what the driver leaves beside it (derby.log, spark-warehouse of a misconfigured
                # driver) goes with the folder.  An exception here (Celery's soft time limit) kills it.
                proc = subprocess.run(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, check=False)
            reported = folder / "result.json"
            if reported.exists():
                outcome = json.loads(reported.read_text())
                if "error" in outcome:
                    raise raised_again(outcome["error"])
                return outcome["result"]
            tail = " | ".join(_tail(folder / "driver.log"))
            raise DriverFailed(f"Spark driver for {label} exited with code {proc.returncode} without reporting "
                               f"a result; last lines: {tail}")


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
    """The last non-empty lines of a driver's log, each cut short."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return [ln[:300] for ln in lines[-_LOG_TAIL_LINES:]]

"""The job script of spark-submit mode: one phase (or call) of a workflow in a classic Spark driver.

    spark-submit --master M --deploy-mode client [--conf k=v ...] workers/spark_driver.py PAYLOAD.json

backup/spark_submit.py writes the payload (settings, the function, the job) and starts
this.  It builds a classic SparkSession with Hive support (the phases of one job are separate
drivers and share tables only through the metastore), runs the function with resources whose
Spark is that session, and writes ``result.json`` beside the payload: ``{"result": ...}`` or
``{"error": {"type", "message", "retryable", "traceback"}}``, before it stops the session (a stop
that hangs must not lose a phase that is done).  Exit code 0 if it has a result.

The project's log lines go to stderr behind ``MB-DRIVER``; the worker logs them again as its own.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path

# spark-submit runs this file by its path, so Python put its folder (workers/) first on sys.path, where a
# module could shadow a standard library one of the same name: the project root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]


_STOP_TIMEOUT = 120  # seconds a session stop may take once the outcome is written
_PR_SET_PDEATHSIG = 1
# Hive's own default: an embedded Derby metastore in the working directory (a temporary folder here).
_HIVE_DEFAULT_URL = "jdbc:derby:;databaseName=metastore_db;create=true"

log = logging.getLogger("backup.spark_driver")


def die_with_parent() -> None:
    """SIGKILL this process when its parent (spark-submit's JVM) ends, whatever ends it."""
    parent = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent ended before the signal was set
        os._exit(1)


def resolve(name: str):
    """The module-level function ``module:qualname`` of backup.* that the payload names."""
    module, _, qualname = name.partition(":")
    if not module.startswith("backup.") or not qualname.isidentifier():
        raise ValueError(f"not a function the driver runs: {name!r}")
    return getattr(importlib.import_module(module), qualname)


def metastore_problem(uris: str | None, url: str | None, derby_home: str | None, client_factory: str | None = None,
                      hive_conf_dir: str | None = None) -> str | None:
    """Why the phases' drivers would not share one metastore, or None if they do (or if it cannot be seen).

    Each phase is a new driver in a new temporary folder: Hive's default embedded Derby there
    (or an in-memory one) would be a new, empty catalog each time.
    """
    if uris or client_factory or hive_conf_dir:  # a remote metastore, another client (AWS Glue), or config we do not read
        return None
    url = url or _HIVE_DEFAULT_URL
    if not url.startswith("jdbc:derby:") or url.startswith("jdbc:derby://"):  # a database server all drivers share
        return None
    location = url[len("jdbc:derby:"):].split(";", 1)[0]
    named = re.search(r"databaseName=([^;]+)", url)
    database = (named.group(1) if named else location).strip()
    if location.startswith("memory:") or database.startswith("memory:") or \
            (not database.startswith("/") and not derby_home):
        return ("no shared Hive metastore: set spark.submit_conf spark.hadoop.hive.metastore.uris (or a hive-site.xml "
                "in SPARK_CONF_DIR); for a trial on one machine, an embedded Derby with "
                "spark.driver.extraJavaOptions=-Dderby.system.home=<folder>")
    return None


def check_metastore(spark) -> None:
    """ConfigError if the session's metastore is a throwaway one (see ``metastore_problem``)."""
    from base.errors import ConfigError

    try:
        spark._jsparkSession.sharedState()  # loads hive-site.xml into the Hadoop configuration
        hadoop = spark.sparkContext._jsc.hadoopConfiguration()
        found = (hadoop.get("hive.metastore.uris"), hadoop.get("javax.jdo.option.ConnectionURL"),
                 spark.sparkContext._jvm.java.lang.System.getProperty("derby.system.home"),
                 hadoop.get("hive.metastore.client.factory.class"), os.environ.get("HIVE_CONF_DIR"))
    except Exception as e:  # internals of this pyspark version: the phases still fail loudly without a catalog
        log.warning("could not check the metastore configuration: %s", e)
        return
    problem = metastore_problem(*found)
    if problem:
        raise ConfigError(problem)


def run(payload: dict, spark) -> object:
    """Call the payload's function on ``spark`` (a phase with its job's context, or a plain call)."""
    from backup.jobs import TERMINAL
    from backup.resources import Resources
    from backup.runner import PhaseContext
    from config.settings import Settings
    from connectors.spark import DriverSpark

    settings = Settings.model_validate(payload["settings"])
    func = resolve(payload["function"])
    res = Resources(settings, _spark=DriverSpark(spark, settings.spark))
    if payload["kind"] == "phase":
        # The worker's phase runner counted the delivery and renews the lock; this only runs the phase,
        # fenced by the lock the job record holds.
        rec = res.jobs.get(payload["job_id"])
        if rec["state"] in TERMINAL:  # ended (failed elsewhere, or skipped) while the driver started
            return {"job_id": rec["job_id"], "state": rec["state"]}
        return func(PhaseContext(res, rec, payload["phase"], active=True))
    return func(res, *payload["args"])


def describe(exc: BaseException, what: str) -> dict:
    """The error as the worker raises it again: class, message, family, traceback."""
    from base.errors import DriverFailed
    from connectors.spark import classify_spark

    err = DriverFailed(f"{what}: lost the connection to the driver's JVM: {exc}") if _jvm_gone(exc) \
        else classify_spark(exc, what)
    return {"type": type(err).__name__, "message": str(err), "retryable": err.retryable,
            "traceback": "".join(traceback.format_exception(exc))[-20_000:]}


def _jvm_gone(exc: BaseException) -> bool:
    """Whether a Spark call failed because the JVM went away (killed, out of memory): a retry may work.

    Only an unclassified error, or the plain FatalError that wraps a Spark call's failure, counts:
    a workflow's own error (SchemaDrift, LockLost, ...) stays what it is.
    """
    from base.errors import BackupError, ConnectionFailed, FatalError, causes

    try:
        from py4j.protocol import Py4JNetworkError
    except ImportError:
        return False
    if isinstance(exc, BackupError) and type(exc) not in (FatalError, ConnectionFailed):
        return False
    return any(isinstance(e, Py4JNetworkError) for e in causes(exc))


def start_session(master_label: str):
    """The classic session with Hive support; a start the cluster refused is DriverFailed (retryable)."""
    from base.errors import DriverFailed

    try:
        from pyspark.sql import SparkSession

        return SparkSession.builder.enableHiveSupport().getOrCreate()
    except Exception as e:
        raise DriverFailed(f"could not start a Spark session on {master_label}: {' '.join(str(e).split())[:400]}") from e


def _log_to_stderr() -> None:
    from backup.spark_submit import LOG_MARK

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{LOG_MARK} %(levelname)s %(name)s: %(message)s"))
    for name in ("backup", "connectors"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _stop(spark) -> None:
    """Stop the session, waiting a bounded time: the outcome is already written."""
    def stop() -> None:
        try:
            spark.stop()
        except Exception as e:
            log.warning("stopping the Spark session failed: %s", e)
    stopper = threading.Thread(target=stop, daemon=True)
    stopper.start()
    stopper.join(_STOP_TIMEOUT)
    if stopper.is_alive():
        log.warning("the Spark session did not stop within %d s; exiting without it", _STOP_TIMEOUT)


def write_report_to_redis(payload: dict, report: str) -> None:
    """SET the outcome once under the key the worker waits on (redis-py rides through a short outage)."""
    from backup.resources import redis_client
    from config.settings import Settings
    from backup.spark_submit import REPORT_TTL

    redis_client(Settings.model_validate(payload["settings"])).set(payload["report_key"], report, ex=REPORT_TTL)


def main(argv: list[str]) -> int:
    """Run the payload named by ``argv[0]``; write its outcome beside it, then stop the session."""
    die_with_parent()
    _log_to_stderr()
    payload_path = Path(argv[0])
    payload = json.loads(payload_path.read_text())
    what = payload.get("phase") or payload["function"]
    spark = None
    try:
        spark = start_session(payload["settings"]["spark"]["remote"])
        check_metastore(spark)
        outcome = {"result": run(payload, spark)}
    except BaseException as e:  # noqa: BLE001  everything is reported; the worker decides what it means
        outcome = {"error": describe(e, what)}
        traceback.print_exc()  # into the driver's log, which the worker keeps after a failure
    try:
        report = json.dumps(outcome)
    except (TypeError, ValueError) as e:  # a result that is not JSON: a bug, reported as such (not retried)
        from base.errors import FatalError

        report = json.dumps({"error": describe(FatalError(f"{what}: its result is not JSON: {e}"), what)})
    if payload.get("report_key"):  # cluster deploy mode: the worker shares Redis with us, not a file system
        write_report_to_redis(payload, report)
    else:
        tmp = payload_path.with_name("result.json.tmp")
        tmp.write_text(report)
        os.replace(tmp, payload_path.with_name("result.json"))  # whole or absent
    if spark is not None:
        _stop(spark)
    return 0 if "result" in outcome else 1


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: a thread a hung stop left behind must not keep the driver alive

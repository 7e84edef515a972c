"""The job script of spark-submit mode: one phase (or call) of a workflow in a classic Spark driver.

    spark-submit --master M --deploy-mode client [--conf k=v ...] workers/spark_driver.py PAYLOAD.json

connectors/spark_submit.py writes the payload (settings, the function, the job) and starts
this.  It builds a classic SparkSession with Hive support (the phases of one job are separate
drivers and share tables only through the metastore), runs the function with resources whose
Spark is that session, and writes ``result.json`` beside the payload: ``{"result": ...}`` or
``{"error": {"type", "message", "retryable", "traceback"}}``.  Exit code 0 if it has a result.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path

# spark-submit runs this file by its path, so Python put its folder first on sys.path, where
# workers/platform.py would shadow the standard library's platform module: the project root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def resolve(name: str):
    """The module-level function ``module:qualname`` of backup.* that the payload names."""
    module, _, qualname = name.partition(":")
    if not module.startswith("backup.") or not qualname.isidentifier():
        raise ValueError(f"not a function the driver runs: {name!r}")
    return getattr(importlib.import_module(module), qualname)


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
    from backup.errors import classify

    err = classify(exc, what)
    return {"type": type(err).__name__, "message": str(err), "retryable": err.retryable,
            "traceback": "".join(traceback.format_exception(exc))[-20_000:]}


def main(argv: list[str]) -> int:
    """Run the payload named by ``argv[0]``; write its outcome beside it."""
    payload_path = Path(argv[0])
    payload = json.loads(payload_path.read_text())
    what = payload.get("phase") or payload["function"]
    spark = None
    try:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.enableHiveSupport().getOrCreate()
        outcome = {"result": run(payload, spark)}
    except BaseException as e:  # noqa: BLE001  everything is reported; the worker decides what it means
        outcome = {"error": describe(e, what)}
    if spark is not None:
        try:
            spark.stop()
        except Exception as e:  # the outcome is what counts; a failed stop is only noted
            print(f"spark_driver: stopping the session failed: {e}", file=sys.stderr)
    tmp = payload_path.with_name("result.json.tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, payload_path.with_name("result.json"))  # whole or absent: the worker reads it after the exit
    return 0 if "result" in outcome else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""table-backup benchmark: the workflow's phases vs a bare script doing what MNAAS_backup_table.py did.

Both run on the same Spark (Spark Connect of the local platform), on the same >= 2 M-line
``;``-CSV folder, alternating, in one run.  The bare script reads the CSV with the live
schema, adds year_part/month_part, drops the backup table and overwrites it partitioned.
The workflow adds the sample validation, per-line reasons and rejects, the staging count
check and the atomic view switch (all five phases run in-process, Spark session per phase,
as in a worker).  Target: workflow wall time <= 1.1 x the bare script's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil

from common import OUT, emit, median, process_cpu_seconds, settings, timed

DB = "mnaas_bench"
LIVE = f"{DB}.traffic_backup"
LIVE_DDL = ("(id BIGINT, msisdn STRING, customer STRING, note STRING, bytes_up BIGINT, amount DOUBLE, "
            "event_ts TIMESTAMP, partition_date STRING) USING parquet PARTITIONED BY (partition_date)")
CUSTOMERS = ['"Acme;Telecom"', "Zoe GmbH", "north", '"O Brien; Mobile"']
NOTES = ["plain", '"semi;colon"', "", "roaming"]


def write_source(folder, rows: int, files: int = 8) -> None:
    """``rows`` valid lines over twelve months, in ``files`` files (quoted fields holding ``;``)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    first = dt.date(2025, 1, 1)
    per_file = -(-rows // files)
    for f in range(files):
        with open(folder / f"part-{f:03d}.csv", "w") as out:
            lines = []
            for i in range(f * per_file, min(rows, (f + 1) * per_file)):
                day = first + dt.timedelta(days=i % 365)
                lines.append(f"{i};4479{i % 100_000_000:08d};{CUSTOMERS[i % 4]};{NOTES[i % 4]};"
                             f"{'' if i % 13 == 0 else i * 37 % 100_000};{(i % 10_000) / 7:.4f};"
                             f"{day} {i % 24:02d}:{i % 60:02d}:{i % 59:02d};{day}\n")
                if len(lines) == 50_000:
                    out.writelines(lines)
                    lines = []
            out.writelines(lines)


def ensure_source(folder, rows: int, files: int = 8):
    """The folder of ``rows`` lines, written unless a marker says an earlier run wrote it."""
    marker = folder / f".rows-{rows}"
    if not marker.exists():
        write_source(folder, rows, files)
        marker.touch()
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=1, help="full-size rounds run first and not counted")
    ap.add_argument("--warmup-small", type=int, default=30,
                    help="rounds of both on a 20,000-line folder first: the same code paths (planning, metastore, "
                         "codegen) JIT-compiled, as on a Spark server that has been up for a while")
    a = ap.parse_args()
    s = settings()
    from backup import table_backup as wf
    from backup.resources import Resources
    from backup.runner import phase

    res = Resources(s)
    source = ensure_source(OUT / "table-backup-source", a.rows)
    small = ensure_source(OUT / "table-backup-source-small", 20_000, files=2)
    with res.spark().session() as spark:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {DB}")
        spark.sql(f"DROP TABLE IF EXISTS {LIVE}")
        spark.sql(f"CREATE TABLE {LIVE} {LIVE_DDL}")  # empty: both read its schema from the catalog

    def bare_script(source=source) -> int:
        from pyspark.sql import functions as F

        with res.spark().session() as spark:
            schema = spark.table(LIVE).schema
            df = spark.read.csv(str(source), schema=schema, sep=";", header=False)
            df = df.withColumn("year_part", F.year("partition_date")).withColumn("month_part", F.month("partition_date"))
            df = df.filter("partition_date IS NOT NULL")
            spark.sql(f"DROP TABLE IF EXISTS {LIVE}_bare_bkp")
            df.write.mode("overwrite").partitionBy("year_part", "month_part").saveAsTable(f"{LIVE}_bare_bkp")
            return spark.table(f"{LIVE}_bare_bkp").count()

    phase_times: dict[str, list[float]] = {p: [] for p in wf.DEFINITION.phase_names}

    def workflow(source=source) -> int:
        rec = wf.submit(res, LIVE, str(source))
        for name in wf.DEFINITION.phase_names:
            with phase(res, rec["job_id"], name) as ctx:
                t, _ = timed(wf.DEFINITION.phase(name).run, ctx)
                phase_times[name].append(round(t, 2))
        rec = res.jobs.get(rec["job_id"])
        assert rec["state"] == "success", rec
        return rec["outputs"]["rows_accepted"]

    from local_platform.services import LocalPlatform

    jvm = LocalPlatform(s)._pid("spark")  # driver and executors: one JVM on the local platform
    times: dict[str, list[float]] = {"bare_script": [], "workflow": []}
    cpu: dict[str, list[float]] = {"bare_script": [], "workflow": []}
    counts = {}
    cases = [("bare_script", bare_script), ("workflow", workflow)]
    for _ in range(a.warmup_small):
        for _, fn in cases:
            fn(small)
    for _ in range(a.warmup):
        for _, fn in cases:
            fn()
    for values in phase_times.values():
        values.clear()
    for r in range(a.rounds):
        for name, fn in (cases if r % 2 == 0 else cases[::-1]):
            c0 = process_cpu_seconds(jvm) if jvm else 0.0
            t, n = timed(fn)
            times[name].append(round(t, 2))
            if jvm:
                cpu[name].append(round(process_cpu_seconds(jvm) - c0, 2))
            counts[name] = n
    # Ratios per round (the two runs of a round are next to each other in time), then the median:
    # on a shared machine the load changes between rounds more than between two neighbouring runs.
    ratio = median([w / b for w, b in zip(times["workflow"], times["bare_script"])])
    load_ratio = median([ld / b for ld, b in zip(phase_times["load"], times["bare_script"])])
    fixed = median([v + w for v, w in zip(phase_times["validate"], phase_times["write"])])
    # CPU the Spark JVM spent per run: steadier than wall time on a shared machine, a check on the wall ratio.
    cpu_ratio = median([w / b for w, b in zip(cpu["workflow"], cpu["bare_script"])]) if jvm else None
    emit({"bench": "table_backup", "rows": a.rows, "rounds": a.rounds, "warmup_rounds": a.warmup, "warmup_small_rounds": a.warmup_small, "seconds": times, "rows_written": counts,
          "workflow_phase_seconds": phase_times, "ratio_workflow_vs_bare": round(ratio, 3),
          "ratio_load_phase_vs_bare": round(load_ratio, 3), "spark_jvm_cpu_seconds": cpu,
          "ratio_jvm_cpu_workflow_vs_bare": cpu_ratio and round(cpu_ratio, 3), "validate_plus_write_seconds": round(fixed, 2),
          "target": "ratio <= 1.1", "met": ratio <= 1.1, "spark": s.spark.remote})


if __name__ == "__main__":
    main()

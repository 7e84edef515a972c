"""Export benchmark: rows/s of the workflow's export (query → CSV → gzip → SHA-256) on >= 2 M rows,
vs a plain single-cursor impyla fetchmany loop writing uncompressed CSV, and vs beeline --outputformat=dsv.
All three read the same rows from the same HiveServer2 in one run, alternating.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import subprocess

from common import OUT, emit, median, settings, timed

TABLE = "mnaas_bench.traffic_export"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    s = settings()
    from impala.dbapi import connect

    from backup.edge_export import export_query, export_to_file
    from base.identifiers import TableName
    from backup.resources import Resources
    from backup.window import Window
    from local_platform.services import LocalPlatform
    from local_platform.sample_data import create_sample_table

    table = TableName.parse(TABLE)
    res = Resources(s)
    with res.hive() as hive:
        have = hive.query(f"SHOW TABLES IN `{table.db}` LIKE '{table.table}'") if hive.query(
            f"SHOW DATABASES LIKE '{table.db}'") else []
        n = int(hive.query(f"SELECT count(*) FROM {table.sql}")[0][0]) if have else 0
        if n != a.rows:
            n = create_sample_table(hive, table, rows=a.rows)
    today = dt.date.today()
    window = Window(dt.date(today.year - 2, 1, 1), dt.date(today.year + 1, 1, 1))  # every row
    sql = export_query(table, window, s.edge_export.partition_column)
    OUT.mkdir(parents=True, exist_ok=True)

    def ours(streams: int):
        r = Resources(s.model_copy(update={"edge_export": s.edge_export.model_copy(update={"streams": streams})}))
        final = OUT / f"export-{streams}.csv.gz"
        final.unlink(missing_ok=True)
        return export_to_file(r, table, window, final)["rows"]

    def plain_loop():
        cur = connect(s.hive.host, s.hive.port, auth_mechanism=s.hive.auth_mechanism).cursor()
        cur.execute(sql)
        rows = 0
        with open(OUT / "plain.csv", "w", newline="") as f:
            w = csv.writer(f, delimiter=";", lineterminator="\n")
            while batch := cur.fetchmany(10_000):
                w.writerows(batch)
                rows += len(batch)
        return rows

    beeline = LocalPlatform(s).spark_home() / "bin" / "beeline"

    def beeline_dsv():
        env = dict(os.environ, SPARK_HOME=str(beeline.parent.parent))
        with open(OUT / "beeline.dsv", "wb") as f:
            subprocess.run([str(beeline), "-u", f"jdbc:hive2://{s.hive.host}:{s.hive.port}/;auth=noSasl",
                            "-n", "bench", "--silent=true", "--showHeader=false", "--outputformat=dsv", "--delimiterForDSV=;",
                            "--incremental=true", "-e", sql], stdout=f, stderr=subprocess.DEVNULL, check=True, env=env)
        with open(OUT / "beeline.dsv", "rb") as f:
            # beeline prints its prompt and blank lines around the rows; count data lines only
            return sum(1 for line in f if b";" in line)

    cases = {"workflow_streams_1": lambda: ours(1), f"workflow_streams_{s.edge_export.streams}":
             lambda: ours(s.edge_export.streams), "plain_fetchmany_loop": plain_loop, "beeline_dsv": beeline_dsv}
    times: dict[str, list[float]] = {k: [] for k in cases}
    counts = {}
    for _ in range(a.rounds):
        for name, fn in cases.items():
            t, rows = timed(fn)
            times[name].append(t)
            counts[name] = rows
    rps = {k: round(counts[k] / median(v)) for k, v in times.items()}
    base = rps["plain_fetchmany_loop"]
    emit({"bench": "export", "rows": n, "rounds": a.rounds, "rows_per_s": rps, "rows_seen": counts,
          "ratio_vs_plain_loop": {k: round(v / base, 2) for k, v in rps.items()},
          "note": "beeline rows are its output lines containing the delimiter",
          "target": "workflow >= 1.5x plain loop"})


if __name__ == "__main__":
    main()

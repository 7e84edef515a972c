"""Export benchmark (issue 18, section 3): the workflow's export phase against plain impyla loops, on two tables.

Tables (made once inside the SQL engine, reused while their row count matches):
  wide    mnaas_bench.traffic_export         8 columns with a TIMESTAMP and a DOUBLE, 2 M rows (``--rows``)
  narrow  mnaas_bench.traffic_export_narrow  5 columns, no TIMESTAMP (id, msisdn, note, bytes_up,
          partition_date), 1 M rows (``--narrow-rows``); made from the wide one

Cases, all reading the same rows from the same HiveServer2 in one run, alternating within each round (each round
starts with the next case; one untimed fetch warms the server up first):
  workflow                   ``export_to_file`` (the export phase: query → CSV → gzip-3 → SHA-256, fsync, rename;
                             on Spark the engine writes the CSV lines where every column's type allows it)
  workflow_columns           the same with ``edge_export.server_formatting`` off: the columns formatted here (Arrow)
  workflow_streams_N         the same with ``edge_export.streams`` = N month-range queries side by side (``--streams``)
  before                     the export as it was before Arrow formatting: same cursor settings impyla decoding the
                             strings, NULLs made None, the csv module, the same gzip writer
  plain_cf_false_gzip_sha    the issue's baseline: a plain loop, ``cursor(convert_types=False)``, ``fetchmany``
                             → csv module → gzip level 3, SHA-256 of the gzip bytes in the same pass
  plain_cf_false             the same loop without gzip or hash (uncompressed CSV)
  plain                      the same loop with impyla's default cursor (types converted), uncompressed CSV
  fetch_floor                fetching alone, both impyla conversions off, nothing done with the rows: the least
                             any impyla client pays (round trips, the server's work, thrift decoding)
  beeline_dsv                ``beeline --outputformat=dsv`` (only with ``--beeline``: slow)
Every plain loop fetches ``hive.fetch_rows`` rows per round trip, as the workflow does.

After the rounds the CSV text of the workflow's archive (gunzipped) is compared byte for byte with the plain
``convert_types=False`` loop's file and the archives of the other workflow paths; ``identical`` reports it (only
when at least two of them ran: with one there is nothing to compare, and it is null).

One JSON line per table: rows/s per case (medians), ratios against the issue's baseline (of the medians, and the
median of each round's own ratio: the steadier figure on a shared machine), CPU seconds of this
process (client) and of the Spark JVM (server) per case (medians), the load average.  On a shared machine the
CPU seconds say more than the wall times.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import hashlib
import io
import os
import subprocess

from common import OUT, emit, median, process_cpu_seconds, settings, timed

WIDE = "mnaas_bench.traffic_export"
NARROW = "mnaas_bench.traffic_export_narrow"
BASELINE = "plain_cf_false_gzip_sha"


class _Tee:
    """A file object hashing what it writes: the plain loop's SHA-256 in its writing pass."""

    def __init__(self, raw):
        self.raw, self.sha = raw, hashlib.sha256()

    def write(self, b):
        self.sha.update(b)
        return self.raw.write(b)

    def flush(self):
        self.raw.flush()


def _file_sha(path, gunzip: bool = False) -> str:
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if gunzip else open(path, "rb")) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the wide table")
    ap.add_argument("--narrow-rows", type=int, default=1_000_000, help="rows of the narrow table")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tables", default="wide,narrow")
    ap.add_argument("--cases", default="", help="comma-separated subset of the cases (default: all but beeline)")
    ap.add_argument("--beeline", action="store_true")
    ap.add_argument("--streams", type=int, default=0, help="also the workflow with edge_export.streams = N")
    a = ap.parse_args()
    s = settings(services=["metastore", "hdfs", "spark"])
    from impala.dbapi import connect

    from backup.archive import CsvGzipWriter
    from backup.edge_export import export_query, export_to_file
    from backup.resources import Resources
    from backup.window import Window
    from base.identifiers import TableName
    from connectors.hive import HiveClient
    from local_platform.sample_data import create_sample_table
    from local_platform.services import LocalPlatform

    res = Resources(s)
    wide, narrow = TableName.parse(WIDE), TableName.parse(NARROW)

    def count(hive, t: TableName) -> int:
        if not hive.query(f"SHOW DATABASES LIKE '{t.db}'") or not hive.query(f"SHOW TABLES IN `{t.db}` LIKE '{t.table}'"):
            return -1
        return int(hive.query(f"SELECT count(*) FROM {t.sql}")[0][0])

    with res.hive() as hive:
        if count(hive, wide) != a.rows:
            create_sample_table(hive, wide, rows=a.rows)
        if "narrow" in a.tables and count(hive, narrow) != a.narrow_rows:
            hive.execute(f"DROP TABLE IF EXISTS {narrow.sql}")
            hive.execute(f"CREATE TABLE {narrow.sql} USING parquet PARTITIONED BY (partition_date) AS "
                         f"SELECT id, msisdn, note, bytes_up, partition_date FROM {wide.sql} WHERE id < {a.narrow_rows}")
    from backup.window import add_months

    # Every row: the sample data spans the eight months before this one and this month.  Month-aligned to the
    # data, so that --streams N splits the rows, not empty months, into N queries.
    this_month = dt.date.today().replace(day=1)
    window = Window(add_months(this_month, -8), add_months(this_month, 1))
    OUT.mkdir(parents=True, exist_ok=True)
    fetch = s.hive.fetch_rows
    beeline = LocalPlatform(s).spark_home() / "bin" / "beeline"

    for label in a.tables.split(","):
        table = {"wide": wide, "narrow": narrow}[label]
        sql = export_query(table, window, s.edge_export.partition_column)
        out = {name: OUT / f"export-{label}-{name}" for name in
               ("workflow", "workflow_columns", "workflow_streams", "before", "plain_gz", "plain_cf_false", "plain", "beeline")}

        def workflow(streams: int = 1, server_formatting: bool = True):
            r = Resources(s.model_copy(update={"edge_export": s.edge_export.model_copy(
                update={"streams": streams, "server_formatting": server_formatting})}))
            # with streams its rows come in month order: not compared
            path = out["workflow_columns" if not server_formatting else "workflow" if streams == 1 else "workflow_streams"]
            path.unlink(missing_ok=True)
            return export_to_file(r, table, window, path)["rows"]

        def before():
            w = CsvGzipWriter(out["before"], s.edge_export.compresslevel)
            with HiveClient.from_settings(s) as hive, hive._cursor("bench before") as cur:
                cur.arraysize = fetch
                cur.execute(sql)
                while (batch := cur.fetchcbatch()) is not None and (len(batch) or batch.expect_more_rows):
                    cols = []
                    for c in batch.columns:
                        values = c.values
                        if c.nulls.any():
                            values = [None if n else v for v, n in zip(values, c.nulls)]
                        cols.append(values)
                    if cols and cols[0]:
                        w.write_columns(cols)
            return w.close()["rows"]

        def plain_loop(path, convert_types: bool, gz: bool):
            cur = connect(s.hive.host, s.hive.port, auth_mechanism=s.hive.auth_mechanism).cursor(
                convert_types=convert_types)
            cur.arraysize = fetch
            cur.execute(sql)
            rows = 0
            with open(path, "wb") as raw:
                tee = _Tee(raw)  # only the gzip case hashes (the baselines)
                binary = gzip.GzipFile(fileobj=tee, mode="wb", compresslevel=3, mtime=0) if gz else raw
                with io.TextIOWrapper(binary, encoding="utf-8", newline="") as f:  # closing it ends the gzip member
                    w = csv.writer(f, delimiter=";", lineterminator="\n")
                    while batch := cur.fetchmany(fetch):
                        w.writerows(batch)
                        rows += len(batch)
                tee.sha.hexdigest()
            cur.close()
            return rows

        def fetch_floor():
            # What any impyla client pays at least: the round trips and thrift decoding, nothing done with the rows.
            rows = 0
            with HiveClient.from_settings(s) as hive:
                for cols in hive.stream_raw_columns(sql, "bench fetch floor", prefetch=0):
                    rows += len(cols[0].values)
            return rows

        def beeline_dsv():
            env = dict(os.environ, SPARK_HOME=str(beeline.parent.parent))
            with open(out["beeline"], "wb") as f:
                subprocess.run([str(beeline), "-u", f"jdbc:hive2://{s.hive.host}:{s.hive.port}/;auth=noSasl",
                                "-n", "bench", "--silent=true", "--showHeader=false", "--outputformat=dsv",
                                "--delimiterForDSV=;", "--incremental=true", "-e", sql],
                               stdout=f, stderr=subprocess.DEVNULL, check=True, env=env)
            with open(out["beeline"], "rb") as f:
                return sum(1 for line in f if b";" in line)  # beeline adds blank lines; count data lines only

        cases = {"workflow": workflow, "workflow_columns": lambda: workflow(server_formatting=False), "before": before,
                 BASELINE: lambda: plain_loop(out["plain_gz"], False, True),
                 "plain_cf_false": lambda: plain_loop(out["plain_cf_false"], False, False),
                 "plain": lambda: plain_loop(out["plain"], True, False), "fetch_floor": fetch_floor}
        if a.beeline:
            cases["beeline_dsv"] = beeline_dsv
        if a.streams > 1:
            cases[f"workflow_streams_{a.streams}"] = lambda: workflow(a.streams)
        if a.cases:
            cases = {k: v for k, v in cases.items() if k in a.cases.split(",")}
        times: dict[str, list[float]] = {k: [] for k in cases}
        counts = {}
        loads = []
        cpu: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        jvm = _spark_pid(LocalPlatform(s))
        fetch_floor()  # warm-up, not timed: the first query after a (re)start pays Spark's JIT and file listing
        names = list(cases)
        for r in range(a.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts with another case
                fn = cases[name]
                c0, j0 = _own_cpu(), process_cpu_seconds(jvm) if jvm else 0.0
                t, rows = timed(fn)
                c1, j1 = _own_cpu(), process_cpu_seconds(jvm) if jvm else 0.0
                times[name].append(round(t, 2))
                cpu[name].append((c1 - c0, j1 - j0))
                counts[name] = rows
                loads.append(os.getloadavg()[0])
        rps = {k: round(counts[k] / median(v)) for k, v in times.items()}
        base = rps.get(BASELINE)
        # Each case against the baseline of the same round (side by side, the same load), median over rounds.
        per_round = {k: round(median([b / t for t, b in zip(v, times[BASELINE])]), 2)
                     for k, v in times.items()} if BASELINE in times else None
        text = {k: _file_sha(out[k], gunzip=True) for k in ("workflow", "workflow_columns", "before") if k in cases}
        if "plain_cf_false" in cases:
            text["plain_cf_false"] = _file_sha(out["plain_cf_false"])
        emit({"bench": "export", "table": label, "rows": counts.get("workflow"), "rounds": a.rounds,
              "fetch_rows": fetch, "seconds": times, "rows_per_s": rps, "rows_seen": counts,
              "ratio_vs_baseline": {k: round(v / base, 2) for k, v in rps.items()} if base else None,
              "ratio_vs_baseline_per_round_median": per_round,
              "client_cpu_s": {k: round(median([c for c, _ in v]), 2) for k, v in cpu.items()},
              "server_cpu_s": {k: round(median([j for _, j in v]), 2) for k, v in cpu.items()} if jvm else None,
              "baseline": BASELINE, "csv_text_sha256": text,
              "identical": len(set(text.values())) == 1 if len(text) > 1 else None,
              "load1_during": [round(min(loads), 2), round(max(loads), 2)],
              "target": f"workflow >= 1.5x {BASELINE}"})


def _own_cpu() -> float:
    """User + system CPU seconds of this process, every thread (the workflow's fetch and gzip threads too)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _spark_pid(platform) -> int | None:
    """The Spark JVM serving HiveServer2 (its CPU is the server's side of each case), if this platform runs it."""
    try:
        pid = int((platform.run_dir / "spark.pid").read_text().strip())
        process_cpu_seconds(pid)
        return pid
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    main()

"""customer-files' count-table load against the count table's history: does a run pay for the files backed up before it?

Every file backed up keeps its row in the count table, so a collect whose load reads the whole table gets slower every
day: a year of daily 50,000-file runs is 18 million rows.  The issue's promise is no per-run cost that grows with the
number of files already backed up.  This bench times the collect's load (``load_into_hive``: the rows file, the
statement writing the staging and count tables, the count check) of one run of ``--rows`` new files (default 50,000)
into a count table holding ``--history`` rows of earlier runs (default 0, 1 and 5 million; made by the server from
``range``, 50,000 rows a job), the table reset to exactly that history before every load.

A run's rows include ``--overlap`` files (default 500) the table already counts (same customer, domain, name and
SHA-256, under an earlier job), found present again at a destination as after a lost ledger: each load must add
exactly ``rows - overlap`` rows, checked for every code, so a faster load that counted a file twice fails the bench.
Such a run looks its rows up in the count table (``lookup_reason``); with ``--overlap 0`` every file was written
anew to every destination (a usual run: the collect's first delivery, nothing owed), and the load does not read the
count table at all.  With ``--compare PATH`` the same loads run on the code of
another checkout, the codes taking turns being timed first; each load runs in a child process of that code (its
imports and settings untimed).  One JSON line per history and code: median seconds, and the growth per million rows of
history against the smallest history.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common import OUT, ROOT, emit, median, rotated

WORK = OUT / "count-table-growth"
JOB_ROWS = 50_000  # history rows per earlier job id


def history_sql(final: str, rows: int) -> str:
    """The server's statement adding ``rows`` rows of earlier runs: file ``old_<id>.csv`` of customer ``id % 20``
    with SHA-256 ``sha2(<id>)``, 50,000 rows a job (``overlap_rows`` builds the same keys in Python)."""
    return (f"INSERT INTO TABLE {final} SELECT concat('customer_', lpad(cast(id % 20 AS STRING), 2, '0')), "
            f"'traffic', concat('old_', cast(id AS STRING), '.csv'), 4000, 50, sha2(cast(id AS STRING), 256), "
            f"concat('file:///primary/', cast(id AS STRING)), concat('file:///secondary/', cast(id AS STRING)), "
            f"'2026-01-01T00:00:00+00:00', 'copied', NULL, concat('history-', cast(floor(id / {JOB_ROWS}) AS STRING)) "
            f"FROM range({rows})")


def overlap_rows(history: int, overlap: int) -> list[dict]:
    """``overlap`` manifest rows for files the history already counts (spread over it), as present again."""
    overlap = min(overlap, history)  # each one a different file of the history
    if overlap == 0:
        return []
    step = history // overlap
    return [{"customer": f"customer_{i % 20:02d}", "domain": "traffic", "file": f"old_{i}.csv", "bytes": 4000,
             "records": 50, "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "primary_uri": f"file:///p/{i}",
             "secondary_uri": f"file:///s/{i}", "copied_at": "2026-12-06T10:00:00+00:00", "status": "present",
             "error": None, "already_at": ["primary", "secondary"]} for i in range(0, step * overlap, step)[:overlap]]


def new_rows(job_id: str, n: int) -> list[dict]:
    """``n`` manifest rows of files never counted before, all copied."""
    return [{"customer": f"customer_{i % 20:02d}", "domain": "traffic", "file": f"traffic_{job_id[:8]}_{i:06d}.csv",
             "bytes": 4000 + i, "records": 50, "sha256": hashlib.sha256(f"{job_id}:{i}".encode()).hexdigest(),
             "primary_uri": f"file:///p/{job_id[:8]}/{i}", "secondary_uri": f"file:///s/{job_id[:8]}/{i}",
             "copied_at": "2026-12-06T10:00:00+00:00", "status": "copied", "error": None, "already_at": []}
            for i in range(n)]


def child(a) -> None:
    """One load on the code at ``--child`` (run in a process of its own): prints its seconds and rows added."""
    sys.path.insert(0, a.child)  # that checkout's modules first (common put this one's root in the path too)
    from backup import customer_files as wf
    from backup.resources import Resources
    from config.settings import load_settings

    res = Resources(load_settings(os.environ["BACKUP_CONFIG"]))
    job_id = uuid.uuid4().hex
    counted = overlap_rows(a.history, a.overlap)
    rows = counted + new_rows(job_id, a.rows - len(counted))
    # as the collect calls it, on its first delivery (a checkout from before ``first_delivery`` always looks up)
    first = {"first_delivery": True} if "first_delivery" in inspect.signature(wf.load_into_hive).parameters else {}
    t0 = time.perf_counter()
    out = wf.load_into_hive(res, rows, job_id, lambda: None, **first)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "added": out["final_rows_added"], "new": len(rows) - len(counted),
                      "final_lookup": out.get("final_lookup", "looked up (always, in that code)")}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000, help="rows of the run loaded")
    ap.add_argument("--history", default="0,1000000,5000000", help="rows of earlier runs in the count table")
    ap.add_argument("--overlap", type=int, default=500, help="of the run's rows, files the history already counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compare", help="also load with this checkout's code, alternating with this one")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.history = int(a.history)
        return child(a)
    histories = sorted(int(h) for h in a.history.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    from customer_files import write_config  # the customer-files bench's config, with tables of this bench's own

    base = Path(os.environ.get("BACKUP_CONFIG") or ROOT / "config" / "local.yaml")
    config = write_config(base, 20, WORK, tables="count_growth")
    os.environ["BACKUP_CONFIG"] = str(config)
    from common import settings

    s = settings()
    from backup.resources import Resources

    res = Resources(s)
    final, staging = s.customer_files.final_table, s.customer_files.staging_table
    codes = {"this": ROOT, **({"compare": Path(a.compare).resolve()} if a.compare else {})}
    with res.hive() as hive:
        hive.execute("CREATE DATABASE IF NOT EXISTS mnaas_bench", "create bench database")
    figures: dict = {(code, h): [] for code in codes for h in histories}
    lookups: dict = {}

    def reset(history: int) -> None:
        with res.hive() as hive:
            from backup import customer_files as wf
            from base.identifiers import TableName

            wf._ensure_tables(hive, [TableName.parse(staging), TableName.parse(final)])
            hive.execute(f"TRUNCATE TABLE {final}", "empty the count table")
            if history:
                hive.execute(history_sql(final, history), f"add {history} rows of earlier runs")

    def load(root: Path, history: int) -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", str(root), "--rows", str(a.rows),
                              "--history", str(history), "--overlap", str(a.overlap)],
                             capture_output=True, text=True, cwd=Path(__file__).parent, env=os.environ.copy())
        if out.returncode:
            raise SystemExit(f"load on {root} failed:\n{out.stderr[-3000:]}")
        got = json.loads(out.stdout.strip().splitlines()[-1])
        if got["added"] != got["new"]:  # a file counted twice, or one dropped
            raise SystemExit(f"load on {root} with {history} rows of history added {got['added']} rows, "
                             f"not the {got['new']} new files")
        return got

    for code, root in codes.items():  # warm-up: the server's first statements, each code's imports
        reset(0)
        load(root, 0)
    for round_ in range(a.rounds):
        for h in histories:
            for code, root in rotated(list(codes.items()), round_):
                reset(h)
                got = load(root, h)
                figures[(code, h)].append(got["seconds"])
                lookups[(code, h)] = got["final_lookup"]
    for code in codes:
        first = median(figures[(code, histories[0])])
        for h in histories:
            secs = median(figures[(code, h)])
            emit({"bench": "count_table_growth", "code": code, "code_root": str(codes[code]), "run_rows": a.rows,
                  "history_rows": h, "overlap_rows": min(a.overlap, h), "final_lookup": lookups[(code, h)],
                  "load_s": round(secs, 2),
                  "all_rounds_s": [round(x, 2) for x in figures[(code, h)]],
                  "growth_s_per_million_history_rows": (round((secs - first) / ((h - histories[0]) / 1e6), 2)
                                                        if h > histories[0] else None),
                  "target": "no per-run cost that grows with the files already backed up"})


if __name__ == "__main__":
    main()

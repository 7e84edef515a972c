"""customer-files benchmark: the whole Celery workflow vs the legacy work done the obvious way in a shell loop.

The same file set (default 2,000 files, about 2 GB, 20 customers x 4 domains) is backed up to two local
folders by
  * baseline: one bash loop doing, per file, ``cp`` to each destination, ``wc -l`` and ``sha256sum``;
  * workflow: ``backup.customer_files`` on a real worker (one process per core): lock, discover, one copy
    task per customer (one read per file feeding both copies, the count and the hash; fsync; each copy
    read back and verified), manifest, Hive load, flag.
Rounds alternate the two, in one run; medians are reported.  Orchestration overhead is the workflow's
wall time minus the span during which copy tasks ran, minus the collect phase (manifest + Hive).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from common import OUT, ROOT, emit, median

WORK = OUT / "customer-files"
DOMAINS = {"traffic": "traffic", "activations": "activation", "actives": "actives", "tolling": "tolling"}


def make_tree(src: Path, customers: int, files: int, total_mb: int) -> dict:
    """The source files (reused when a previous run made the same set); returns their list."""
    spec = f"{customers}x{files}x{total_mb}"
    marker = src / f".spec-{spec}"
    per = files // (customers * len(DOMAINS))
    if not marker.exists():
        shutil.rmtree(src, ignore_errors=True)
        rng = random.Random(1)
        pool = b"".join(f"{rng.randint(10**8, 10**9)};4479{i:08d};{rng.choice(['CDR', 'SMS', 'DATA'])};"
                        f"{rng.randint(0, 99999)};{'x' * rng.randint(0, 60)}\n".encode() for i in range(400_000))
        mean = total_mb * 1_000_000 // files
        for c in range(customers):
            for domain, stem in DOMAINS.items():
                folder = src / f"customer_{c:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(per):
                    size = max(0, int(rng.uniform(0.2, 1.8) * mean))
                    start = rng.randrange(0, len(pool) - size - 1)
                    body = pool[start:start + size]
                    if i % 7 == 3:
                        body = body.replace(b"\n", b"\r\n")
                    (folder / f"{stem}_{c:02d}_{i:04d}.csv").write_bytes(body)
        old = time.time() - 3600
        for path in src.rglob("*.csv"):
            os.utime(path, (old, old))
        marker.touch()
    return {p: p.stat().st_size for p in sorted(src.rglob("*.csv"))}


def domain_of(name: str) -> str:
    return next(d for d, stem in DOMAINS.items() if name.startswith(stem))


def local_primary(customer: str) -> str:
    """The default primary destination of a customer: a local folder beside the secondary."""
    return str(WORK / "wf" / "primary" / customer)


def write_config(base_config: Path, customers: int, work: Path = WORK, primary_of=local_primary,
                 tables: str = "customer_files") -> Path:
    """The platform's config with a customer_files section for the bench tree under ``work``: each customer's
    primary at ``primary_of(customer)`` (default a local folder), secondary a local folder; count tables
    ``mnaas_bench.<tables>_inter`` / ``_count``."""
    raw = yaml.safe_load(base_config.read_text())
    raw["base_dir"] = str((base_config.parent / raw.get("base_dir", ".")).resolve())
    raw["customer_files"] = {
        "source_dirs": [str(work / "src")],
        "customers": {f"customer_{c:02d}": {"primary": primary_of(f"customer_{c:02d}"),
                                           "secondary": str(work / "wf" / "secondary" / f"customer_{c:02d}")}
                      for c in range(customers)},
        "domains": {d: [f"{stem}_*.csv"] for d, stem in DOMAINS.items()},
        "max_files_per_run": 100_000, "settle_seconds": 0,
        "staging_table": f"mnaas_bench.{tables}_inter", "final_table": f"mnaas_bench.{tables}_count",
        "status_flag": str(work / "wf" / "status"), "manifest_dir": str(work / "wf" / "manifests"),
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BASELINE = r"""
set -euo pipefail
while IFS=$'\t' read -r src rel; do
  mkdir -p "$(dirname "$DST/one/$rel")" "$(dirname "$DST/two/$rel")"
  cp "$src" "$DST/one/$rel"
  cp "$src" "$DST/two/$rel"
  printf '%s\t%s\n' "$(wc -l < "$src")" "$src" >> "$DST/counts"
  sha256sum "$src" >> "$DST/sums"
done < "$LIST"
"""


def run_baseline(files: dict, dst: Path) -> float:
    """Wall seconds of the shell loop; its outputs stay in ``dst`` for the cross-check."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    listing = dst / "list.tsv"
    listing.write_text("".join(f"{p}\t{p.parent.name}/{domain_of(p.name)}/{p.name}\n" for p in files))
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", BASELINE], env=dict(os.environ, DST=str(dst), LIST=str(listing)), check=True)
    return time.perf_counter() - t0


class Worker:
    """A celery worker subprocess on the bench config (one process per core)."""

    def __init__(self, config: Path):
        env = dict(os.environ, BACKUP_CONFIG=str(config), PYTHONPATH=str(ROOT))
        self.name = f"bench-{uuid.uuid4().hex[:6]}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "default,io,spark",
             "-c", str(os.cpu_count()), "-n", f"{self.name}@%h", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=open(WORK / "worker.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, app, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench worker exited; see {WORK / 'worker.log'}")
            if app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5):
                return
        raise RuntimeError("bench worker did not answer")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


def run_workflow(res, app, work: Path = WORK, reset=None) -> tuple[float, dict]:
    """Wall seconds from enqueue to the finished job record, and the record.

    Before the timing: the destinations under ``work`` and the ledger are emptied (``reset()`` empties
    what else the run wrote, e.g. its HDFS folder), and the count table is truncated, so every file is new
    and every row is loaded, as in the first run of a day."""
    shutil.rmtree(work / "wf", ignore_errors=True)
    if reset:
        reset()
    for key in res.redis.scan_iter(f"{res.settings.redis.key_prefix}:customer_files:ledger:*"):
        res.redis.delete(key)
    final = res.settings.customer_files.final_table
    with res.hive() as hive:  # the tables stay (steady state); the count table is emptied so every row is new
        if hive.query(f"SHOW TABLES IN mnaas_bench LIKE '{final.split('.', 1)[1]}'", "find count table"):
            hive.execute(f"TRUNCATE TABLE {final}", "empty count table")
    job_id = uuid.uuid4().hex
    t0 = time.perf_counter()
    app.send_task("backup.customer_files", task_id=job_id)
    while True:
        rec = res.jobs.find(job_id)
        if rec and rec["state"] in ("success", "failed", "skipped"):
            return time.perf_counter() - t0, rec
        time.sleep(0.05)


def phases_of(rec: dict) -> dict:
    """Copy span, collect time and what remains (orchestration) of one run."""
    copies = [p for p in rec["phases"] if p["name"].startswith("copy:") and p["started"]]
    span = max(p["finished"] for p in copies) - min(p["started"] for p in copies)
    collect = next(p for p in rec["phases"] if p["name"] == "collect")
    return {"copy_span": span, "collect": collect["finished"] - collect["started"],
            "job": rec["finished"] - rec["created"]}


def cross_check(files: dict, rec: dict, baseline_dst: Path) -> dict:
    """Workflow counts and hashes against the baseline's wc -l and sha256sum; copies byte-identical."""
    import csv

    with open(rec["outputs"]["manifest"], newline="", encoding="utf-8") as f:
        rows = {(r["customer"], r["file"]): r for r in csv.DictReader(f)}
    wc = {}
    for line in (baseline_dst / "counts").read_text().splitlines():
        n, path = line.split("\t", 1)
        wc[path] = int(n)
    sums = {line[66:]: line[:64] for line in (baseline_dst / "sums").read_text().splitlines()}
    mismatches = 0
    for path in files:
        row = rows.get((path.parent.name, path.name))
        data_tail = open(path, "rb").read()[-1:] if files[path] else b""
        expected = wc[str(path)] + (1 if data_tail and data_tail != b"\n" else 0)
        if row is None or row["status"] != "copied" or int(row["records"]) != expected \
                or row["sha256"] != sums[str(path)]:
            mismatches += 1
    sample = list(files)[:: max(1, len(files) // 50)]
    for path in sample:
        want = hashlib.sha256(path.read_bytes()).hexdigest()
        for role in ("primary", "secondary"):
            copy = WORK / "wf" / role / path.parent.name / domain_of(path.name) / path.name
            if hashlib.sha256(copy.read_bytes()).hexdigest() != want:
                mismatches += 1
    return {"files_checked": len(files), "copies_sampled": 2 * len(sample), "mismatches": mismatches}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=2000, help="total size of the file set, MB")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    base = Path(os.environ.get("BACKUP_CONFIG") or ROOT / "config" / "local.yaml")
    WORK.mkdir(parents=True, exist_ok=True)
    files = make_tree(WORK / "src", a.customers, a.files, a.mb)
    total = sum(files.values())
    config = write_config(base, a.customers)
    os.environ["BACKUP_CONFIG"] = str(config)
    from common import settings

    s = settings()  # validates the config and starts the local platform if needed
    from backup.resources import Resources
    from workers.app import app

    res = Resources(s)
    with res.hive() as hive:
        hive.execute("CREATE DATABASE IF NOT EXISTS mnaas_bench", "create bench database")
    worker = Worker(config)
    try:
        worker.wait_ready(app)
        run_workflow(res, app)  # warm-up: worker imports, Hive session, table creation
        baseline_s, workflow_s, parts, rec = [], [], [], None
        for _ in range(a.rounds):
            baseline_s.append(run_baseline(files, WORK / "baseline"))
            seconds, rec = run_workflow(res, app)
            if rec["state"] != "success":
                raise SystemExit(f"workflow run failed: {rec.get('error')}")
            workflow_s.append(seconds)
            parts.append(phases_of(rec))
        check = cross_check(files, rec, WORK / "baseline")
    finally:
        worker.stop()
        for copies in ("baseline", "wf"):  # ~4 GB each; the sources stay for the next run
            shutil.rmtree(WORK / copies, ignore_errors=True)
    wall = median(workflow_s)
    copy_span = median([p["copy_span"] for p in parts])
    collect = median([p["collect"] for p in parts])
    orchestration = max(0.0, wall - copy_span - collect)
    mb = total / 1e6
    emit({
        "bench": "customer_files", "files": len(files), "mb": round(mb), "customers": a.customers,
        "domains": len(DOMAINS), "rounds": a.rounds, "worker_processes": os.cpu_count(),
        "baseline_s": round(median(baseline_s), 1), "workflow_s": round(wall, 1),
        "baseline_mb_per_s": round(mb / median(baseline_s), 1), "workflow_mb_per_s": round(mb / wall, 1),
        "speedup": round(median(baseline_s) / wall, 2),
        "copy_span_s": round(copy_span, 1), "collect_s": round(collect, 1),
        "orchestration_s": round(orchestration, 2), "orchestration_share": round(orchestration / wall, 3),
        "not_copying_share": round((wall - copy_span) / wall, 3),
        "all_rounds": {"baseline_s": [round(x, 1) for x in baseline_s],
                       "workflow_s": [round(x, 1) for x in workflow_s]},
        "cross_check": check,
        "target": "workflow >= 1.5x baseline throughput; orchestration < 5% of wall time",
    })


if __name__ == "__main__":
    main()

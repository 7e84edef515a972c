"""customer-files benchmark: the whole Celery workflow vs the legacy work done the obvious way in a shell loop.

The same file set (default 2,000 files, about 2 GB, 20 customers x 4 domains) is backed up to two local
folders by
  * baseline: one bash loop doing, per file, ``cp`` to each destination, ``wc -l`` and ``sha256sum``;
  * workflow: ``backup.customer_files`` on a real worker (one process per core): lock, discover, one copy
    task per customer (one read per file feeding both copies, the count and the hash; the copies made
    durable by one syncfs per batch and verified by that hash and their size), manifest, Hive load, flag.
Rounds alternate the two, in one run; medians are reported.  Orchestration overhead is the workflow's
wall time minus the span during which copy tasks ran, minus the collect phase (manifest + Hive).
``--compare PATH``: the workflow also runs on the code of another checkout in every round, the codes taking
turns being timed first, each code's worker up and warm throughout (only the timed one takes tasks).  Before every timed side, run as root,
the page cache is emptied of what earlier sides wrote and the source read into it again (``warm``).

``--small``: many small files, the shape of real CDR feeds: trees of 2,000 / 20,000 / 50,000 files of
1-8 KB (``--counts``) over 20 customers x 4 domains, backed up to two local folders (``--sftp``: the
secondary on the local platform's sshd).  Per tree: the workflow (every file new), then at the largest a
rerun with nothing new (discovery, ledger, an empty collect, the flag); against ``cp -r`` of the tree to
both destinations (the floor), the floor of the copies with the guarantee kept (``small_file_floor.py``'s
``guarantee_2proc``: only the system calls of a verified, durable, never-replacing copy, on two processes)
and the shell loop, timed on its first ``--loop-files`` files (its cost per file does not depend on the
tree).  ``--compare PATH`` also runs the same rounds with the workers on the code of another checkout (e.g.
the main branch), alternating with this one, so before and after share the load.
One JSON line per tree and code, files/s and ratios included.
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

from common import OUT, ROOT, emit, median, rotated

WORK = OUT / "customer-files"
SMALL_WORK = OUT / "customer-files-small"
EDGE = "/tmp/mediation-backup-bench/secondary"  # --small --sftp: the secondary copies on the local sshd
QUEUES = "default,io,spark"  # every queue of the workflow's tasks
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


def make_small_tree(src: Path, customers: int, files: int) -> dict:
    """``files`` files of 1-8 KB, spread over ``customers`` x the 4 domains (reused when already made)."""
    marker = src / f".spec-small-{customers}x{files}"
    if not marker.exists():
        shutil.rmtree(src, ignore_errors=True)
        rng = random.Random(2)
        pool = b"".join(f"{rng.randint(10**8, 10**9)};4479{i:08d};{rng.choice(['CDR', 'SMS', 'DATA'])};"
                        f"{rng.randint(0, 99999)}\n".encode() for i in range(20_000))
        stems = list(DOMAINS.values())
        old = time.time() - 3600
        for c in range(customers):
            (src / f"customer_{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(files):
            c, stem = i % customers, stems[(i // customers) % len(stems)]
            size = rng.randint(1024, 8192)
            start = rng.randrange(0, len(pool) - size - 1)
            path = src / f"customer_{c:02d}" / f"{stem}_{c:02d}_{i:06d}.csv"
            path.write_bytes(pool[start:start + size])
            os.utime(path, (old, old))
        marker.touch()
    return {p: p.stat().st_size for p in sorted(src.rglob("*.csv"))}


def domain_of(name: str) -> str:
    return next(d for d, stem in DOMAINS.items() if name.startswith(stem))


def local_primary(customer: str) -> str:
    """The default primary destination of a customer: a local folder beside the secondary."""
    return str(WORK / "wf" / "primary" / customer)


def write_config(base_config: Path, customers: int, work: Path = WORK, primary_of=local_primary,
                 tables: str = "customer_files", count_load: bool = True, name: str = "bench.yaml",
                 secondary: bool = True) -> Path:
    """The platform's config with a customer_files section for the bench tree under ``work``: each customer's
    primary at ``primary_of(customer)`` (default a local folder), secondary a local folder; count tables
    ``mnaas_bench.<tables>_inter`` / ``_count``; the platform config's count rows file folder (``count_load``;
    without it the rows go as VALUES literals)."""
    raw = yaml.safe_load(base_config.read_text())
    loads = {k: v for k, v in (raw.get("customer_files") or {}).items() if k.startswith("count_load_")}
    raw["base_dir"] = str((base_config.parent / raw.get("base_dir", ".")).resolve())
    raw["customer_files"] = {
        "source_dirs": [str(work / "src")],
        "customers": {f"customer_{c:02d}": {"primary": primary_of(f"customer_{c:02d}"),
                                           **({"secondary": str(work / "wf" / "secondary" / f"customer_{c:02d}")}
                                              if secondary else {})}
                      for c in range(customers)},
        "domains": {d: [f"{stem}_*.csv"] for d, stem in DOMAINS.items()},
        "max_files_per_run": 100_000, "settle_seconds": 0,
        "staging_table": f"mnaas_bench.{tables}_inter", "final_table": f"mnaas_bench.{tables}_count",
        "status_flag": str(work / "wf" / "status"), "manifest_dir": str(work / "wf" / "manifests"),
        **(loads if count_load else {}),
    }
    path = work / name
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


def set_aside(path: Path) -> None:
    """Move ``path`` (a tree of copies) into the work folder's ``.trash``, emptied by ``empty_trash`` after the
    timings: deleting 100,000 files just before a timed run slows every file that run creates.

    Why: this machine's root file system is ext4 without a journal, whose inode allocator skips the inodes freed in
    the last 60-300 s (``recently_deleted`` in ``fs/ext4/ialloc.c``; seen with ``perf``: 245 us of kernel time per
    new file right after a 50,000-file tree was deleted, against 10-45 us otherwise).  A backup destination does not
    usually delete a whole tree seconds before a run, so neither side of the bench does."""
    if path.exists() or path.is_symlink():
        trash = SMALL_WORK.parent / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        path.rename(trash / f"{path.name}-{uuid.uuid4().hex[:8]}")


def empty_trash() -> None:
    """Delete what ``set_aside`` kept (untimed, after the benchmark)."""
    shutil.rmtree(SMALL_WORK.parent / ".trash", ignore_errors=True)


#: whether ``warm`` could empty the page cache first (root only): reported in every JSON line
CACHES_DROPPED = {"done": False}


def warm(src: Path) -> None:
    """Empty the page cache of everything written before (root only: ``sync``, then ``drop_caches``), then read
    every file of ``src`` (untimed), so that the side timed next starts with the source and nothing else in the
    cache, whatever ran before it.  (The floor's swings of 1.6-23 s at 50,000 files were first put down to the
    page cache; they came from deleting trees just before a timed run: see ``set_aside``.  At 2 GB, the cache
    filled by earlier rounds' copies made the floor swing 2.7-5.9 s until it was emptied before each side.)"""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")  # clean page cache only: nothing unwritten is lost
        CACHES_DROPPED["done"] = True
    except OSError:
        pass
    for folder, _, names in os.walk(src):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def run_cp_floor(src: Path, dst: Path) -> tuple[float, float]:
    """Wall seconds of ``cp -r`` of the source tree to two destinations: the floor (no count, hash or fsync);
    and of the same followed by ``sync``: the floor for copies on disk, as the workflow leaves them.

    An untimed read of the tree and ``sync`` first: both sides read from the page cache, and neither pays for
    the write-back of what ran before it."""
    set_aside(dst)
    dst.mkdir(parents=True)
    warm(src)
    os.sync()
    t0 = time.perf_counter()
    for copy in ("one", "two"):
        subprocess.run(["cp", "-r", f"{src}/.", str(dst / copy)], check=True)
    seconds = time.perf_counter() - t0
    os.sync()
    durable = time.perf_counter() - t0
    set_aside(dst)
    return seconds, durable


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

    def __init__(self, config: Path, code: Path = ROOT):
        env = dict(os.environ, BACKUP_CONFIG=str(config), PYTHONPATH=str(code))
        self.name = f"bench-{uuid.uuid4().hex[:6]}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", QUEUES,
             "-c", str(os.cpu_count()), "-n", f"{self.name}@%h", "--loglevel", "WARNING"],
            cwd=code, env=env, stdout=open(WORK / "worker.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, app, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench worker exited; see {WORK / 'worker.log'}")
            if app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5):
                return
        raise RuntimeError("bench worker did not answer")

    def consume(self, app, on: bool) -> None:
        """Start (``on``) or stop taking tasks from the workflow's queues: with ``--compare`` both codes' workers
        stay up and warm, and only the one being timed takes the run's tasks."""
        destination = [f"{self.name}@{os.uname().nodename}"]
        for queue in QUEUES.split(","):
            call = app.control.add_consumer if on else app.control.cancel_consumer
            replies = call(queue, destination=destination, reply=True, timeout=10)
            if not replies or not all("ok" in answer for reply in replies for answer in reply.values()):
                raise RuntimeError(f"worker {self.name}: {'add' if on else 'cancel'} consumer {queue}: {replies}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


def run_workflow(res, app, work: Path = WORK, reset=None, fresh: bool = True) -> tuple[float, dict]:
    """Wall seconds from enqueue to the finished job record, and the record.

    Before the timing (``fresh``): the destinations under ``work`` and the ledger are emptied (``reset()``
    empties what else the run wrote, e.g. its HDFS folder), and the count table is truncated, so every file
    is new and every row is loaded, as in the first run of a day.  Not ``fresh``: a rerun over what the
    previous run backed up."""
    if fresh:
        set_aside(work / "wf")
        if reset:
            reset()
        for key in res.redis.scan_iter(f"{res.settings.redis.key_prefix}:customer_files:ledger:*"):
            res.redis.delete(key)
        final = res.settings.customer_files.final_table
        with res.hive() as hive:  # the tables stay (steady state); the count table is emptied so every row is new
            if hive.query(f"SHOW TABLES IN mnaas_bench LIKE '{final.split('.', 1)[1]}'", "find count table"):
                hive.execute(f"TRUNCATE TABLE {final}", "empty count table")
    job_id = uuid.uuid4().hex
    os.sync()  # untimed: the run does not pay for the write-back of what ran before it (the floor's side neither)
    t0 = time.perf_counter()
    app.send_task("backup.customer_files", task_id=job_id)
    while True:
        rec = res.jobs.find(job_id)
        if rec and rec["state"] in ("success", "failed", "skipped"):
            return time.perf_counter() - t0, rec
        time.sleep(0.05)


def phases_of(rec: dict) -> dict:
    """Copy span, collect and discover times of one run, and its whole time in the job record."""
    copies = [p for p in rec["phases"] if p["name"].startswith("copy:") and p["started"]]
    span = max(p["finished"] for p in copies) - min(p["started"] for p in copies)
    took = {p["name"]: p["finished"] - p["started"] for p in rec["phases"]
            if p["name"] in ("discover", "collect") and p.get("started") and p.get("finished")}
    return {"copy_span": span, "collect": took.get("collect", 0.0), "discover": took.get("discover", 0.0),
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


def main_small(a, base: Path) -> None:
    """The many-small-files bench (``--small``): see the module's docstring."""
    counts = sorted(int(n) for n in a.counts.split(","))
    work = SMALL_WORK
    work.mkdir(parents=True, exist_ok=True)
    trees = {n: make_small_tree(work / f"src-small-{n}", a.customers, n) for n in counts}
    link = work / "src"  # the config's source folder: a link to the tree of the moment
    secondary = None
    if a.sftp:
        plat = yaml.safe_load(base.read_text())
        port = plat.get("sftp", {}).get("port", 2222)
        secondary = lambda c: f"sftp://127.0.0.1:{port}{EDGE}/{c}"
    config, plain = (write_config(base, a.customers, work, primary_of=lambda c: str(work / "wf" / "primary" / c),
                                  tables="customer_files_small", count_load=load, name=name)
                     for load, name in ((True, "bench.yaml"), (False, "bench-values.yaml")))
    for path in (config, plain) if secondary else ():  # write_config makes both local; the secondary goes to the edge node
        raw = yaml.safe_load(path.read_text())
        for c, where in raw["customer_files"]["customers"].items():
            where["secondary"] = secondary(c)
        path.write_text(yaml.safe_dump(raw))
    os.environ["BACKUP_CONFIG"] = str(config)
    from common import settings

    s = settings()
    from backup.resources import Resources
    from workers.app import app

    res = Resources(s)
    with res.hive() as hive:
        hive.execute("CREATE DATABASE IF NOT EXISTS mnaas_bench", "create bench database")

    def reset() -> None:  # the edge node's sshd is this machine's: its folder is set aside directly
        set_aside(Path(EDGE))

    def point_at(n: int) -> None:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(work / f"src-small-{n}")

    # Variants run side by side: this code; with --values-load this code loading the counts as VALUES literals;
    # with --compare another checkout (which may not know the count_load_* keys: given the plain config).
    codes = {"this": ROOT, **({"values_load": ROOT} if a.values_load else {}),
             **({"compare": Path(a.compare).resolve()} if a.compare else {})}
    configs = {code: config if code == "this" else plain for code in codes}
    figures: dict = {(code, n): [] for code in codes for n in counts}
    reruns: dict = {code: [] for code in codes}
    floors: dict = {n: [] for n in counts}
    durable_floors: dict = {n: [] for n in counts}
    guarantee_floors: dict = {n: [] for n in counts}
    from small_file_floor import run_python as run_guarantee_floor

    floor_items = {n: [(str(p), size, p.stat().st_mtime, f"{p.parent.name}/{domain_of(p.name)}")
                       for p, size in trees[n].items()] for n in counts}
    loop_s = []
    loop_files = dict(list(trees[counts[0]].items())[:a.loop_files])
    for round_ in range(a.rounds):
        loop_s.append(run_baseline(loop_files, work / "baseline"))
        shutil.rmtree(work / "baseline", ignore_errors=True)
        for n in counts:
            floor, durable = run_cp_floor(work / f"src-small-{n}", work / "floor")
            floors[n].append(floor)
            durable_floors[n].append(durable)
            # The floor of the copies with the guarantee kept (small_file_floor.py's guarantee_2proc): what the
            # copy span could shrink to if the engine and its bookkeeping cost nothing.
            warm(work / f"src-small-{n}")
            guarantee_floors[n].append(run_guarantee_floor(floor_items[n], work / "floor", True, 2)["s"])
        for n in counts:  # per tree, the codes one after the other: before and after share the load
            for code, root in rotated(list(codes.items()), round_):  # each code first in turn
                worker = Worker(configs[code], root)
                try:
                    worker.wait_ready(app)
                    point_at(counts[0])
                    run_workflow(res, app, work, reset)  # warm-up: imports, Hive session, tables
                    point_at(n)
                    warm(work / f"src-small-{n}")
                    seconds, rec = run_workflow(res, app, work, reset)
                    if rec["state"] != "success":
                        raise SystemExit(f"workflow run failed ({code}, {n} files): {rec.get('error')}")
                    figures[(code, n)].append({"wall": seconds, **phases_of(rec)})
                    if n == counts[-1]:  # nothing new: the ledger has every file
                        seconds, rec = run_workflow(res, app, work, fresh=False)
                        if rec["state"] != "success" or rec["outputs"]["totals"]["copied"] != 0:
                            raise SystemExit(f"rerun copied files or failed ({code}): {rec.get('error')}")
                        reruns[code].append({"wall": seconds, **phases_of(rec)})
                finally:
                    worker.stop()
    set_aside(work / "wf")
    reset()
    empty_trash()
    loop_per_file = median(loop_s) / len(loop_files)
    for code in codes:
        for n in counts:
            runs = figures[(code, n)]
            wall = median([r["wall"] for r in runs])
            span = median([r["copy_span"] for r in runs])
            collect = median([r["collect"] for r in runs])
            discover = median([r["discover"] for r in runs])
            floor = median(floors[n])
            emit({"bench": "customer_files_small", "code": code, "code_root": str(codes[code]),
                  "caches_dropped": CACHES_DROPPED["done"], "files": n,
                  "count_load": "file" if "count_load_folder" in configs[code].read_text() else "values",
                  "mb": round(sum(trees[n].values()) / 1e6, 1), "customers": a.customers, "domains": len(DOMAINS),
                  "secondary": "sftp" if a.sftp else "local", "rounds": a.rounds,
                  "workflow_s": round(wall, 2), "workflow_files_per_s": round(n / wall),
                  "ms_per_file": round(wall / n * 1000, 3),
                  "copy_span_s": round(span, 2), "collect_s": round(collect, 2), "discover_s": round(discover, 2),
                  "not_copying_share": round((wall - span) / wall, 3),
                  "cp_r_floor_s": round(floor, 2), "workflow_over_cp_floor": round(wall / floor, 2),
                  "cp_r_then_sync_s": round(median(durable_floors[n]), 2),
                  "workflow_over_cp_then_sync": round(wall / median(durable_floors[n]), 2),
                  "guarantee_floor_s": round(median(guarantee_floors[n]), 2),
                  "guarantee_floor_over_cp_floor": round(median(guarantee_floors[n]) / floor, 2),
                  "copy_span_over_guarantee_floor": round(span / median(guarantee_floors[n]), 2),
                  "shell_loop_files_per_s": round(1 / loop_per_file), "shell_loop_timed_on_files": len(loop_files),
                  "speedup_vs_shell_loop": round(loop_per_file * n / wall, 1),
                  "all_rounds_s": [round(r["wall"], 2) for r in runs],
                  "target": ">= 10x the shell loop at 50,000 files, <= 1.5x the cp floor"})
        rerun = reruns[code]
        emit({"bench": "customer_files_small_rerun", "code": code, "files": counts[-1],
              "rerun_s": round(median([r["wall"] for r in rerun]), 2),
              "discover_s": round(median([r["discover"] for r in rerun]), 2),
              "all_rounds_s": [round(r["wall"], 2) for r in rerun],
              "target": "< 2 s end to end with nothing new"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=2000, help="total size of the file set, MB")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="many small files (1-8 KB); see the module's docstring")
    ap.add_argument("--counts", default="2000,20000,50000", help="with --small: the tree sizes, files")
    ap.add_argument("--loop-files", type=int, default=2000, help="with --small: files the shell loop is timed on")
    ap.add_argument("--sftp", action="store_true", help="with --small: the secondary on the platform's sshd")
    ap.add_argument("--compare", help="also run the workers on this checkout's code, alternating with this one")
    ap.add_argument("--values-load", action="store_true",
                    help="with --small: also run this code with the count rows loaded as VALUES literals, alternating")
    a = ap.parse_args()
    base = Path(os.environ.get("BACKUP_CONFIG") or ROOT / "config" / "local.yaml")
    WORK.mkdir(parents=True, exist_ok=True)
    if a.small:
        return main_small(a, base)
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
    # Per code a worker, both up and warm at once; only the one being timed takes tasks (``Worker.consume``).
    codes = {"this": ROOT, **({"compare": Path(a.compare).resolve()} if a.compare else {})}
    workers = {code: Worker(config, root) for code, root in codes.items()}
    runs: dict = {code: [] for code in codes}
    try:
        for code, worker in workers.items():
            worker.wait_ready(app)
            worker.consume(app, False)
        for code, worker in workers.items():
            worker.consume(app, True)
            run_workflow(res, app)  # warm-up: worker imports, Hive session, table creation
            worker.consume(app, False)
        baseline_s, floors, checks = [], [], {}
        for round_ in range(a.rounds):
            baseline_s.append(run_baseline(files, WORK / "baseline"))
            floors.append(run_cp_floor(WORK / "src", WORK / "floor"))
            for code, worker in rotated(list(workers.items()), round_):  # each code first in turn
                worker.consume(app, True)
                warm(WORK / "src")
                seconds, rec = run_workflow(res, app)
                worker.consume(app, False)
                if rec["state"] != "success":
                    raise SystemExit(f"workflow run failed ({code}): {rec.get('error')}")
                runs[code].append({"wall": seconds, **phases_of(rec)})
                if round_ == a.rounds - 1:  # while its copies are there (the next run sets them aside)
                    checks[code] = cross_check(files, rec, WORK / "baseline")
    finally:
        for worker in workers.values():
            worker.stop()
        for copies in ("baseline", "wf"):  # ~4 GB each; the sources stay for the next run
            shutil.rmtree(WORK / copies, ignore_errors=True)
        empty_trash()
    for code in codes:
        emit_large(a, files, total, code, codes[code], runs[code], baseline_s, floors, checks[code])


def emit_large(a, files: dict, total: int, code: str, root: Path, runs: list[dict], baseline_s: list[float],
               floors: list[tuple[float, float]], check: dict) -> None:
    """The JSON line of one code's runs in the large-file bench."""
    workflow_s = [r["wall"] for r in runs]
    parts = runs
    wall = median(workflow_s)
    copy_span = median([p["copy_span"] for p in parts])
    collect = median([p["collect"] for p in parts])
    orchestration = max(0.0, wall - copy_span - collect)
    mb = total / 1e6
    emit({
        "bench": "customer_files", "code": code, "code_root": str(root), "caches_dropped": CACHES_DROPPED["done"],
        "files": len(files), "mb": round(mb), "customers": a.customers,
        "domains": len(DOMAINS), "rounds": a.rounds, "worker_processes": os.cpu_count(),
        "baseline_s": round(median(baseline_s), 1), "workflow_s": round(wall, 1),
        "baseline_mb_per_s": round(mb / median(baseline_s), 1), "workflow_mb_per_s": round(mb / wall, 1),
        "speedup": round(median(baseline_s) / wall, 2),
        "cp_r_floor_s": round(median([f for f, _ in floors]), 2),
        "workflow_over_cp_floor": round(wall / median([f for f, _ in floors]), 2),
        "cp_r_then_sync_s": round(median([d for _, d in floors]), 2),
        "workflow_over_cp_then_sync": round(wall / median([d for _, d in floors]), 2),
        "copy_span_s": round(copy_span, 1), "collect_s": round(collect, 1),
        "orchestration_s": round(orchestration, 2), "orchestration_share": round(orchestration / wall, 3),
        "not_copying_share": round((wall - copy_span) / wall, 3),
        "all_rounds": {"baseline_s": [round(x, 1) for x in baseline_s],
                       "workflow_s": [round(x, 1) for x in workflow_s]},
        "cross_check": check,
        "target": "workflow >= 3x the shell loop, <= 1.5x the cp -r floor; orchestration < 5% of wall time",
    })


if __name__ == "__main__":
    main()

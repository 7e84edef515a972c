"""(Not hdfs.py: the script folder comes first on sys.path and would shadow the hdfs package.)
customer-files with the primary copies on the real HDFS, against Hadoop's own client; HDFS verification
by file checksum against reading back.

One JSON line each, rounds alternating in one run, medians:
  * ``customer_files_hdfs``: the same file set backed up
      - by the workflow (primary on HDFS through WebHDFS, secondary a local folder, counts, hashes,
        every HDFS copy verified by the NameNode's file checksum), on one worker (a process per core);
      - the legacy way: a bash loop calling Hadoop's own client per file (``FsShell -put``, what
        ``hdfs dfs -copyFromLocal`` runs: one JVM per file) plus ``wc -l`` and ``sha256sum``;
      - the floor: one ``FsShell -put`` of the whole tree (one JVM, no count, no hash, no verification);
      - the floor for the same result: that ``FsShell -put`` and, at the same time, ``cp -r`` of the tree to
        a local folder (the workflow's secondary copy) followed by ``sync -f`` of that folder's file system
        (the workflow makes its local copies durable before it commits them).
    Target: the workflow within 1.5x of the floor.
  * ``hdfs_verify``: verifying the copies on HDFS by their file checksum (GETFILECHECKSUM: the
    DataNodes read their CRC files, not the data) against reading every byte back for SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from common import OUT, ROOT, emit, median, rotated
from customer_files import Worker, domain_of, make_tree, phases_of, run_workflow, write_config

WORK = OUT / "customer-files-hdfs"
HDFS_BASE = "/bench"


LEGACY = r"""
set -euo pipefail
while IFS=$'\t' read -r src rel; do
  java -Xmx256m -cp "$CP" -Dorg.slf4j.simpleLogger.defaultLogLevel=error org.apache.hadoop.fs.FsShell \
       -put -f "$src" "$DST/$rel"
  printf '%s\t%s\n' "$(wc -l < "$src")" "$src" >> "$OUT/counts"
  sha256sum "$src" >> "$OUT/sums"
done < "$LIST"
"""


def fs_shell_env(hadoop, user: str) -> dict:
    return dict(hadoop.daemon_env(), HADOOP_USER_NAME=user, CP=f"{hadoop.conf_dir}:{hadoop.lib}/*")


def run_legacy(hadoop, user: str, files: dict) -> float:
    """Wall seconds of the per-file loop (folders made beforehand, outside the timing, as the legacy job has them)."""
    hadoop.fs_shell("-rm", "-r", "-f", "-skipTrash", f"{HDFS_BASE}/legacy", user=user, check=False)
    folders = sorted({f"{HDFS_BASE}/legacy/{p.parent.name}/{domain_of(p.name)}" for p in files})
    hadoop.fs_shell("-mkdir", "-p", *folders, user=user)
    out = WORK / "legacy-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    listing = out / "list.tsv"
    listing.write_text("".join(f"{p}\t{p.parent.name}/{domain_of(p.name)}/{p.name}\n" for p in files))
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", LEGACY], check=True,
                   env=dict(fs_shell_env(hadoop, user), DST=f"{HDFS_BASE}/legacy", OUT=str(out), LIST=str(listing)))
    return time.perf_counter() - t0


def run_floor(hadoop, user: str) -> float:
    """Wall seconds of one FsShell -put of the whole source tree."""
    hadoop.fs_shell("-rm", "-r", "-f", "-skipTrash", f"{HDFS_BASE}/floor", user=user, check=False)
    os.sync()  # untimed, before every side
    t0 = time.perf_counter()
    hadoop.fs_shell("-put", str(WORK / "src"), f"{HDFS_BASE}/floor", user=user, timeout=3600)
    return time.perf_counter() - t0


def run_floor_same_work(hadoop, user: str) -> float:
    """Wall seconds of the floor for the workflow's whole result: the tree put on HDFS by one FsShell and, at the
    same time (the workflow copies to both destinations at once), copied to a local folder by ``cp -r`` and made
    durable by ``sync -f`` (what the workflow's fsyncs guarantee). The two run side by side, so this floor is
    never slower than the two done one after the other."""
    hadoop.fs_shell("-rm", "-r", "-f", "-skipTrash", f"{HDFS_BASE}/floor2", user=user, check=False)
    local = WORK / "floor-secondary"
    shutil.rmtree(local, ignore_errors=True)
    os.sync()  # untimed: neither side pays for the write-back of what ran before
    env = dict(hadoop.daemon_env(), HADOOP_USER_NAME=user)
    t0 = time.perf_counter()
    put = subprocess.Popen([hadoop.java(), "-Xmx256m", "-cp", f"{hadoop.conf_dir}:{hadoop.lib}/*",
                            "-Dorg.slf4j.simpleLogger.defaultLogLevel=error", "org.apache.hadoop.fs.FsShell",
                            "-put", str(WORK / "src"), f"{HDFS_BASE}/floor2"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(["cp", "-r", str(WORK / "src"), str(local)], check=True)
    subprocess.run(["sync", "-f", str(local)], check=True)
    _, err = put.communicate(timeout=3600)
    seconds = time.perf_counter() - t0
    if put.returncode != 0:
        raise SystemExit(f"FsShell -put failed: exit {put.returncode}: {err.decode(errors='replace')[-800:]}")
    return seconds


def verify_both_ways(settings, user: str, files: dict) -> tuple[float, float, int]:
    """Seconds to verify every workflow copy by file checksum, then by reading it back; mismatches by either."""
    from storage.hdfs_checksum import HdfsChecksummer, matches
    from storage.webhdfs import WebHdfsBackend

    fs = WebHdfsBackend(f"http://127.0.0.1:{settings.platform.namenode_http_port}", user=user)
    paths = {p: f"{HDFS_BASE}/wf/{p.parent.name}/{domain_of(p.name)}/{p.name}" for p in files}
    expected = {}
    for p in files:  # the local side, which the workflow computes in its single read pass anyway
        summer = HdfsChecksummer(fs.checksum_spec())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                summer.update(chunk)
        expected[p] = (summer.results(), hashlib.sha256(p.read_bytes()).hexdigest())
    bad = 0
    t0 = time.perf_counter()
    for p, path in paths.items():
        reported, _ = fs.file_checksum(path)
        bad += matches(expected[p][0], reported) is not True
    by_checksum = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p, path in paths.items():
        bad += fs.sha256(path) != expected[p][1]
    by_read_back = time.perf_counter() - t0
    fs.close()
    return by_checksum, by_read_back, bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=4)
    ap.add_argument("--files", type=int, default=80)
    ap.add_argument("--mb", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", help="also run the workflow with the workers on this checkout's code (e.g. the main "
                                      "branch), alternating with this one in every round: before and after on one load")
    ap.add_argument("--no-legacy", action="store_true",
                    help="skip the per-file loop (one JVM per file: minutes on a large tree); floor and workflow only")
    a = ap.parse_args()
    base = Path(os.environ.get("BACKUP_CONFIG") or ROOT / "config" / "local.yaml")
    WORK.mkdir(parents=True, exist_ok=True)
    (OUT / "customer-files").mkdir(parents=True, exist_ok=True)  # the shared Worker's log folder
    files = make_tree(WORK / "src", a.customers, a.files, a.mb)
    total = sum(files.values())
    from common import settings

    s0 = settings()  # the platform up, HDFS included
    user = s0.platform.hdfs_user
    http_port = s0.platform.namenode_http_port
    # Two configurations, side by side: each customer's primary on HDFS and its secondary a local folder (seed 002's
    # usual pair; the floor for that result is run_floor_same_work), and the primary on HDFS alone (the secondary is
    # optional: the very work of the floor, one FsShell -put).
    configs = {variant: write_config(base, a.customers, WORK, tables="customer_files_hdfs", secondary=with_secondary,
                                     primary_of=lambda c: f"hdfs://{user}@127.0.0.1:{http_port}{HDFS_BASE}/wf/{c}",
                                     name=f"bench-{variant}.yaml")
               for variant, with_secondary in (("primary_and_secondary", True), ("primary_only", False))}
    config = configs["primary_and_secondary"]

    def reset() -> None:
        hadoop.fs_shell("-rm", "-r", "-f", "-skipTrash", f"{HDFS_BASE}/wf", user=user, check=False)

    os.environ["BACKUP_CONFIG"] = str(config)
    from backup.resources import Resources
    from config.settings import load_settings
    from workers.app import app
    from local_platform.services import LocalPlatform

    s = load_settings(config)
    hadoop = LocalPlatform(s).hadoop
    hadoop.fs_shell("-mkdir", "-p", HDFS_BASE)
    hadoop.fs_shell("-chown", user, HDFS_BASE)
    res = Resources(s)
    with res.hive() as hive:
        hive.execute("CREATE DATABASE IF NOT EXISTS mnaas_bench", "create bench database")
    codes = {"this": ROOT, "primary_only": ROOT, **({"compare": Path(a.compare).resolve()} if a.compare else {})}
    config_of = {code: configs["primary_only"] if code == "primary_only" else config for code in codes}
    legacy_s, floor_s, floor_same_s = [], [], []
    workflow_s: dict = {code: [] for code in codes}
    spans: dict = {code: [] for code in codes}
    for round_ in range(a.rounds):
        if not a.no_legacy:
            legacy_s.append(run_legacy(hadoop, user, files))
        floor_s.append(run_floor(hadoop, user))
        floor_same_s.append(run_floor_same_work(hadoop, user))
        # one worker at a time (both would take the same queues), in an order that turns with the rounds
        for code, root in rotated(list(codes.items()), round_):
            worker = Worker(config_of[code], root)
            try:
                worker.wait_ready(app)
                run_workflow(res, app, WORK, reset)  # warm-up: imports, Hive session, tables
                os.sync()  # untimed, before every side
                seconds, rec = run_workflow(res, app, WORK, reset)
            finally:
                worker.stop()
            if rec["state"] != "success":
                raise SystemExit(f"workflow run failed ({code}): {rec.get('error')}")
            workflow_s[code].append(seconds)
            spans[code].append(phases_of(rec))
    if a.compare:  # the copies verified below are this code's
        worker = Worker(config)
        try:
            worker.wait_ready(app)
            run_workflow(res, app, WORK, reset)
        finally:
            worker.stop()
    by_checksum, by_read_back, bad = verify_both_ways(s, user, files)
    mb = total / 1e6
    floor = median(floor_s)
    floor_same = median(floor_same_s)
    legacy = median(legacy_s) if legacy_s else None
    for code in codes:
        wall = median(workflow_s[code])
        emit({"bench": "customer_files_hdfs", "code": code, "code_root": str(codes[code]), "files": len(files),
              "mb": round(mb), "customers": a.customers, "rounds": a.rounds, "workflow_s": round(wall, 2),
              "floor_fsshell_put_tree_s": round(floor, 2),
              "legacy_fsshell_put_per_file_s": round(legacy, 1) if legacy else None,
              "secondary": "none" if code == "primary_only" else "local folder",
              "workflow_over_floor": round(wall / floor, 2),
              "floor_same_work_s": round(floor_same, 2),
              "workflow_over_floor_same_work": round(wall / floor_same, 2),
              "speedup_vs_legacy": round(legacy / wall, 2) if legacy else None,
              "all_rounds": {"workflow_s": [round(x, 2) for x in workflow_s[code]],
                             "floor_s": [round(x, 2) for x in floor_s],
                             "floor_same_work_s": [round(x, 2) for x in floor_same_s], "legacy_s": [round(x, 1) for x in legacy_s]},
              "workflow_copy_span_s": round(median([p["copy_span"] for p in spans[code]]), 2),
              "workflow_collect_s": round(median([p["collect"] for p in spans[code]]), 2),
              "workflow_discover_s": round(median([p["discover"] for p in spans[code]]), 2),
              "note": ("primary on HDFS only: the floor's own work, plus counts, hashes, verification and the Hive load"
                       if code == "primary_only" else "workflow also writes a secondary copy (local folder), counts "
                       "records, hashes and verifies: compare with floor_same_work"),
              "target": "workflow <= 1.5x the floor"})
    emit({"bench": "hdfs_verify", "files": len(files), "mb": round(mb), "by_file_checksum_s": round(by_checksum, 2),
          "by_read_back_s": round(by_read_back, 2), "read_back_over_checksum": round(by_read_back / by_checksum, 1),
          "mismatches": bad})


if __name__ == "__main__":
    main()

"""One bandwidth budget per destination: N concurrent uploads from several worker processes share one limit.

    python bench/bandwidth.py [--limit 4] [--seconds 5] [--concurrency 1,2,4] [--processes 2]

For each concurrency, that many uploads (spread over ``--processes`` processes, each built as
a worker builds its SFTP target: ``Resources.sftp()``, whose pace is the host's shared budget in
Redis) start at one instant towards the platform's sshd, together sending ``limit x seconds`` MB.
Rates are measured where the budget acts: from an upload's first take of budget to the moment
its last chunk was let through (SSH connection set-up is not bandwidth).  One JSON line each:
the aggregate rate (all bytes / first take to last release) against the limit, and each
upload's own rate against its fair share (limit / concurrency).  Targets (issue 18): aggregate within ±10 % of
the limit; every upload at least a third of its fair share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _child(config: str, uploads: int, mb: float, start_at: float) -> None:
    """Run ``uploads`` uploads at ``start_at`` (wall clock) in threads; print one JSON list of (start, end, bytes)."""
    from backup.resources import Resources
    from config.settings import load_settings
    from connectors.sftp import upload

    res = Resources(load_settings(config))
    folder = f"{res.settings.sftp.remote_dir}/bandwidth-bench"
    target = res.sftp()
    with target.connect() as sess:
        sess.makedirs(folder)
    files = []
    for i in range(uploads):
        path = Path(f"/tmp/mb-bandwidth-{os.getpid()}-{i}.bin")
        path.write_bytes(os.urandom(int(mb * 1e6)))
        files.append(path)
    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * uploads

    def one(i: int) -> None:
        remote = f"{folder}/{uuid.uuid4().hex}.part"
        mine = res.sftp()
        budget, takes = mine.pace, []

        def recording(n: int) -> None:  # the budget as the upload uses it, timed: when bytes may flow
            t = time.time()
            budget(n)
            takes.append((t, time.time(), n))
        mine.pace = recording
        mine.pace.rate = budget.rate  # type: ignore[attr-defined]  (chunk size follows the rate)
        upload(mine, files[i], remote)
        results[i] = (takes[0][0], takes[-1][1], sum(n for _, _, n in takes))
        with target.connect() as sess:
            sess.remove(remote)

    time.sleep(max(0.0, start_at - time.time()))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(uploads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in files:
        f.unlink()
    print(json.dumps(results))


def measure(config: str, limit_mbps: float, concurrency: int, processes: int, mb: float) -> dict:
    """``concurrency`` uploads of ``mb`` MB each over ``processes`` processes under the shared budget."""
    per = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    start_at = time.time() + 3.0  # every process imported and connected before the start
    procs = [subprocess.Popen([sys.executable, __file__, "--child", config, str(n), str(mb), str(start_at)],
                              stdout=subprocess.PIPE, cwd=ROOT) for n in per if n]
    uploads = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"bench child exited {p.returncode}")
        uploads += json.loads(out)
    first, last = min(u[0] for u in uploads), max(u[1] for u in uploads)
    aggregate = sum(u[2] for u in uploads) / (last - first) / 1e6
    rates = [u[2] / (u[1] - u[0]) / 1e6 for u in uploads]
    fair = limit_mbps / concurrency
    return {"bench": "bandwidth", "limit_mb_per_s": limit_mbps, "concurrent_uploads": concurrency,
            "processes": len(procs), "mb_each": mb, "aggregate_mb_per_s": round(aggregate, 3),
            "aggregate_vs_limit": round(aggregate / limit_mbps, 3),
            "slowest_vs_fair_share": round(min(rates) / fair, 3),
            "upload_mb_per_s": [round(r, 3) for r in rates],
            "target": "aggregate within ±10% of the limit; each upload >= 1/3 of its fair share"}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=float, default=4.0, help="the budget, MB/s")
    ap.add_argument("--seconds", type=float, default=5.0, help="each run sends limit x seconds MB in all")
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--processes", type=int, default=2)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from common import OUT, emit, settings

    import yaml

    s = settings()  # the local platform up (sshd, Redis)
    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(os.environ.get("BACKUP_CONFIG") or ROOT / "config" / "local.yaml")
    data = yaml.safe_load(base.read_text()) or {}
    data["base_dir"] = str(s.base_dir)  # the copy lives elsewhere: relative paths keep their meaning
    data["sftp"] = {**(data.get("sftp") or {}), "rate_limit_mbps": a.limit}
    config = OUT / "bandwidth.yaml"
    config.write_text(yaml.safe_dump(data))
    for n in (int(x) for x in a.concurrency.split(",")):
        emit(measure(str(config), a.limit, n, a.processes, a.limit * a.seconds / n))


if __name__ == "__main__":
    main()

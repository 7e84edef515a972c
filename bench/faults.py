"""Fault campaign: how often each promise holds under each fault, on the real local platform.

    python bench/faults.py [--trials 20] [--seed 1] [--kinds worker_kill,redis_restart,...] [--max-outage 90]
    python bench/faults.py --kinds redis_failover [--trials 20] [--sentinel-port 26650]

One JSON line per fault kind: ``fault, workflow, trials, recovered, failed_loudly,
lost, duplicated, partial, alerts_sent, alerts_expected, max_recovery_s`` (+
``phases_hit``: the phase each fault landed in; ``effective``: trials whose run
the fault visibly changed - a redelivery, a retry, a skip or a failure).  Each trial starts a real edge-export
run, injects the fault at a random moment, lets the system recover as in
production (redelivery, retries, the stall check that beat runs; after a run
that failed, the next scheduled run, which must succeed), then checks
from outside the project: the job's final state; the archive on the edge node
exactly once, its SHA-256 (OpenSSH's own ``sha256sum``) and record count equal
to the job record's; no temporary file left; no lock left; exactly one alert
for a failed episode and none for a recovered one.

The campaign brings its own Redis (AOF everysec, noeviction) on its own port,
a TCP relay in front of the platform's sshd (closed = sshd unreachable, frozen =
black hole), and a tmpfs export folder (disk full); it needs root (mount) and
the local platform (it starts what is missing).  Timings are shortened so that
faults land in every phase: visibility timeout 20 s, lock TTL 10 s, retry
budget 60 s, upload stall timeout 8 s, uploads capped at 0.05 MB/s.

The ``redis_failover`` kind runs in a campaign of its own whose Redis is a
Sentinel group instead (bench/faultkit.py ``SentinelGroup``: a primary, a
replica, three sentinels; ``redis.url: sentinel://…``): at a random moment the
primary is SIGKILLed, the sentinels promote the replica (2-5 s), and the old
primary stays down a random 0-10 s before it comes back as the new primary's
replica.  While it is down the new primary has no replica, so every lock take
and commit check fails (redis.wait_replicas: nothing that a second fail-over
could lose is counted) and is retried within the retry budget.

Targets, per row: lost = duplicated = partial = 0, alerts_sent = alerts_expected,
recovered + failed_loudly = trials.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.faultkit import PrivateRedis, Relay, SentinelGroup, Worker, wait_until  # noqa: E402

WORKFLOW = "edge-export"
#: the kinds of the campaign on one Redis of its own
KINDS = ("worker_kill", "child_kill", "redis_restart", "sshd_outage", "black_hole", "disk_full", "corruption",
         "concurrent", "paused")
#: the kinds of the campaign on a Redis Sentinel group of its own
SENTINEL_KINDS = ("redis_failover",)
ALL_KINDS = KINDS + SENTINEL_KINDS
TERMINAL = ("success", "failed", "skipped")


class Campaign:
    """The campaign's own Redis, relay, tmpfs and workers around the platform's Spark and sshd."""

    def __init__(self, base: dict, state: Path, redis_port: int, seed: int = 1, max_outage: float = 90,
                 rows: int = 8000, sentinel: bool = False):
        self.base, self.state, self.rng = base, state, random.Random(seed)
        self.max_outage = max_outage
        self.rows = rows
        self.sentinel = sentinel
        #: ports: one Redis at redis_port; or a Sentinel group at redis_port .. redis_port + 4
        self.redis = SentinelGroup(redis_port, state / "sentinel") if sentinel else PrivateRedis(redis_port,
                                                                                                 state / "redis")
        self.relay: Relay | None = None
        self.workers: list[Worker] = []
        self.exports = state / "exports"

    # -- set-up ------------------------------------------------------------------------------------------------

    def __enter__(self) -> "Campaign":
        from config.settings import _merge, load_settings
        from local_platform.services import LocalPlatform

        import yaml

        self.state.mkdir(parents=True, exist_ok=True)
        base_cfg = self.state / "base.yaml"
        base_cfg.write_text(yaml.safe_dump(self.base))
        base = load_settings(base_cfg)
        LocalPlatform(base).up(only=["spark", "sshd", "sinks"])
        self.redis.start()
        self.relay = Relay(base.sftp.port)
        self.relay.open()
        known = self.state / "known_hosts"
        key_line = base.path(base.sftp.known_hosts).read_text().strip().split(" ", 1)[1]
        known.write_text(f"[127.0.0.1]:{self.relay.port} {key_line}\n")
        self.exports.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(self.exports)], check=True)
        self.config = self.state / "campaign.yaml"
        self.config.write_text(yaml.safe_dump(_merge(self.base, {
            "redis": {"url": self.redis.url, "key_prefix": "mbfault"},
            "sftp": {"port": self.relay.port, "known_hosts": str(known), "remote_dir": str(self.state / "edge"),
                     "rate_limit_mbps": 0.05, "streams": 1, "stall_timeout": 8, "connect_timeout": 5},
            "edge_export": {"export_dir": str(self.exports), "compresslevel": 1},
            "celery": {"task_time_limit": 120, "task_soft_time_limit": 110, "visibility_timeout": 20,
                       "max_deliveries": 5},
            "lock": {"ttl": 10, "renew_every": 2},
            "retry": {"budget": 60, "max_retries": None, "backoff": 1, "backoff_max": 4},
            "stall": {"orphan_after": 30, "ending_grace": 20, "check_every": 3600},
        })))
        self.settings = load_settings(self.config)
        from backup.resources import Resources
        from workers.app import create_app

        self.res = Resources(self.settings)
        self.app = create_app(self.settings)
        from connectors.hive import HiveClient
        from base.identifiers import TableName
        from local_platform.sample_data import create_sample_table

        self.table = TableName("mnaas_faults", "traffic")
        with HiveClient.from_settings(self.settings) as hive:
            create_sample_table(hive, self.table, rows=self.rows)
        self.target = str(self.table)
        self.worker()
        began = time.monotonic()
        rec = self.wait_end([self.start_job()], 180)[0]
        if rec is None or rec["state"] != "success":
            raise RuntimeError(f"calibration run did not succeed: {rec}")
        self.duration = time.monotonic() - began
        return self

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()
        if self.relay:
            self.relay.thaw()
            self.relay.close()
        self.redis.stop()
        subprocess.run(["umount", "-l", str(self.exports)], check=False)

    def worker(self) -> Worker:
        w = Worker(self.config, f"fault{uuid.uuid4().hex[:6]}", self.state / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        return w.start(self.app)

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    # -- one run -----------------------------------------------------------------------------------------------

    def start_job(self) -> str:
        job_id = uuid.uuid4().hex
        self.app.send_task("backup.edge_export", kwargs={"table": self.target}, task_id=job_id)
        return job_id

    def record(self, job_id: str) -> dict | None:
        from base.errors import ConnectionFailed

        try:
            return self.res.jobs.find(job_id)
        except ConnectionFailed:
            return None

    def phase_now(self, job_id: str) -> str:
        rec = self.record(job_id)
        return (rec or {}).get("phase") or "queued"

    def wait_end(self, job_ids: list[str], timeout: float) -> list[dict | None]:
        """Wait until every job is terminal, running the stall check every 5 s as beat would."""
        from base.errors import BackupError
        from backup.stalls import check_stalls
        from backup.workflow import QUEUES

        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + 5
        while time.monotonic() < deadline:
            recs = [self.record(j) for j in job_ids]
            if all(r is not None and r["state"] in TERMINAL for r in recs):
                return recs
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 5
                try:
                    check_stalls(self.res, QUEUES)
                except BackupError:
                    pass  # Redis away: the next check tries again
            time.sleep(0.3)
        return [self.record(j) for j in job_ids]

    def wait_quiet(self, timeout: float) -> None:
        """Wait until no worker executes anything: a resumed or late delivery may still be finishing its work
        (and cleaning up after itself) when every job record is already terminal."""
        def quiet() -> bool:
            try:
                active = self.app.control.inspect(timeout=1).active() or {}
            except Exception:
                return False
            return all(not tasks for tasks in active.values())
        wait_until(quiet, timeout, "the workers to be idle", interval=1.0)

    def at_random_moment(self, job_id: str) -> str:
        """Sleep a random part of a clean run's duration; the phase the job is in then."""
        time.sleep(self.rng.uniform(0, self.duration))
        return self.phase_now(job_id)

    def wait_phase(self, job_id: str, name: str, timeout: float = 90) -> None:
        wait_until(lambda: (self.record(job_id) or {}).get("phase") == name, timeout, f"phase {name}")

    # -- checks from outside -----------------------------------------------------------------------------------

    def ssh(self, *command: str):
        from tests.helpers import ssh

        return ssh(self.settings, list(command))

    def remote_files(self) -> set[str]:
        from tests.helpers import remote_files

        import posixpath
        return set(remote_files(self.settings, posixpath.join(self.settings.sftp.remote_dir, self.target)))

    def alerts(self) -> int:
        from tests.helpers import sink_counts

        return sink_counts(self.settings)[0]

    def verify(self, recs: list[dict | None], before: set[str], alerts_before: int, started: float) -> dict:
        """The verdict of one trial from its jobs' records and what is on the edge node."""
        lost = sum(1 for r in recs if r is None or r["state"] not in TERMINAL)
        done = [r for r in recs if r is not None and r["state"] in TERMINAL]
        successes = [r for r in done if r["state"] == "success"]
        failures = [r for r in done if r["state"] == "failed"]
        new = self.remote_files() - before
        committed = sorted(f for f in new if f.endswith(".csv.gz"))
        partial = sum(1 for f in new if not f.endswith(".csv.gz"))
        for r in successes:
            path = r["outputs"]["remote_uri"].split(f":{self.settings.sftp.port}", 1)[1]
            if path not in committed:
                partial += 1
                continue
            digest = self.ssh("sha256sum", path).stdout.split()[0]
            count = self.ssh("python3", "-c", "import csv,gzip,sys; print(sum(1 for _ in csv.reader("
                             "gzip.open(sys.argv[1],'rt',newline=''),delimiter=';')))", path).stdout.strip()
            if digest != r["outputs"]["sha256"] or int(count) != r["outputs"]["rows"]:
                partial += 1
            local = Path(r["outputs"]["local_path"])
            if local.exists():
                partial += 1  # cleanup promised to remove it
        duplicated = max(0, len(committed) - len(successes))
        if self.res.locks.holder(WORKFLOW, self.target) is not None:
            lost += 1  # a lock left held blocks every later run: counted with what is lost
        alerts_sent = self.alerts() - alerts_before
        ok = lost == 0 and duplicated == 0 and partial == 0
        # Did the fault change the run at all (a redelivery, a retry, a skip or a failure)?  A fault that
        # landed in a quiet moment proves less: the rows say how many did.
        effective = any(r["state"] != "success" or any(p["deliveries"] > 1 or p["attempts"] > 1
                                                       for p in r["phases"]) for r in done)
        return {"recovered": int(ok and not failures), "failed_loudly": int(ok and bool(failures)),
                "lost": lost, "duplicated": duplicated, "partial": partial, "alerts_sent": alerts_sent,
                "alerts_expected": 1 if failures else 0, "recovery_s": round(time.monotonic() - started, 1),
                "effective": int(effective)}

    def trial(self, kind: str) -> dict:
        """One trial of ``kind``: its verdict plus the phase the fault landed in."""
        if (kind in SENTINEL_KINDS) != self.sentinel:
            raise ValueError(f"fault kind {kind} runs in a campaign {'with' if kind in SENTINEL_KINDS else 'without'} "
                             f"a Sentinel group (Campaign(sentinel=...))")
        self.res.alerter.success(WORKFLOW, self.target)  # every trial starts outside an alert episode
        if not self.live_workers():
            self.worker()
        before, alerts_before = self.remote_files(), self.alerts()
        started = time.monotonic()
        jobs, hit = getattr(self, f"_{kind}")()
        recs = self.wait_end(jobs, 300)
        if any(r is not None and r["state"] == "failed" for r in recs) and (recs[-1] or {}).get("state") != "success":
            # The fault is over: the next run must succeed, and clear what the failed one could not.
            jobs.append(self.start_job())
            recs = self.wait_end(jobs, 300)
        self.wait_quiet(120)
        verdict = self.verify(recs, before, alerts_before, started)
        verdict["phase"] = hit
        return verdict

    # -- the faults --------------------------------------------------------------------------------------------

    def _worker_kill(self):
        job = self.start_job()
        hit = self.at_random_moment(job)
        for w in self.live_workers():
            w.kill()
        time.sleep(self.rng.uniform(0, 10))
        self.worker()
        return [job], hit

    def _child_kill(self):
        job = self.start_job()
        hit = self.at_random_moment(job)
        children = [pid for w in self.live_workers() for pid in w.children()]
        if children:
            subprocess.run(["kill", "-KILL", str(self.rng.choice(children))], check=False)
        return [job], hit

    def _redis_restart(self):
        job = self.start_job()
        hit = self.at_random_moment(job)
        if self.rng.random() < 0.5:
            self.redis.shutdown_nosave()
        else:
            self.redis.kill()
        time.sleep(self.rng.uniform(0, 5))
        self.redis.start()
        return [job], hit

    def _redis_failover(self):
        """The primary SIGKILLed at a random moment; the sentinels fail over; the old primary back after 0-10 s."""
        job = self.start_job()
        hit = self.at_random_moment(job)
        old = self.redis.kill_primary()
        self.redis.wait_failover(old)
        time.sleep(self.rng.uniform(0, 10))
        self.redis.restart(old)
        return [job], hit

    def _outage(self, cut, restore):
        job = self.start_job()
        self.wait_phase(job, "transfer")
        time.sleep(self.rng.uniform(0, 1.5))
        hit = self.phase_now(job)
        cut()
        time.sleep(self.rng.uniform(5, self.max_outage))
        restore()
        return [job], hit

    def _sshd_outage(self):
        return self._outage(self.relay.close, self.relay.open)

    def _black_hole(self):
        return self._outage(self.relay.freeze, self.relay.thaw)

    def _disk_full(self):
        job = self.start_job()
        hit = self.at_random_moment(job)
        filler = self.exports / "filler"
        # dd writes until the tmpfs is full (and then fails): every byte left is taken.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], check=False, stderr=subprocess.DEVNULL)
        self.wait_end([job], 300)
        filler.unlink(missing_ok=True)  # space is back; trial() runs the next job if this one failed
        return [job], hit

    def _corruption(self):
        job = self.start_job()
        self.wait_phase(job, "transfer")
        hit = "transfer"
        flip = ("import sys,os,glob\n"
                "for p in glob.glob(sys.argv[1] + '/*/.*.part'):\n"
                "    if os.path.getsize(p) > 200:\n"
                "        f = open(p, 'r+b'); f.seek(100); b = f.read(1); f.seek(100); f.write(bytes([b[0] ^ 1])); "
                "f.close(); print(p)\n")
        import posixpath
        folder = posixpath.join(self.settings.sftp.remote_dir, self.target)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # race the upload: flip a byte of the temp file once it has some
            if self.ssh("python3", "-c", flip, folder).stdout.strip():
                break
            time.sleep(0.1)
        return [job], hit

    def _concurrent(self):
        """20 requests at one instant: 16 by send_task, 4 by the CLI."""
        jobs = [uuid.uuid4().hex for _ in range(16)]
        gate = threading.Barrier(17)

        def send(job_id):
            gate.wait()
            self.app.send_task("backup.edge_export", kwargs={"table": self.target}, task_id=job_id)
        threads = [threading.Thread(target=send, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        cli = []
        gate.wait()
        for _ in range(4):
            cli.append(subprocess.Popen([sys.executable, "-m", "workers.cli", "--config", str(self.config), "run",
                                         "edge-export", self.target, "--json"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent))
        for t in threads:
            t.join()
        for p in cli:
            out, _ = p.communicate(timeout=60)
            jobs.append(json.loads(out)["job_id"])
        return jobs, "lock"

    def _paused(self):
        """The lock holder paused past its lock's TTL; a new run takes the lock; the paused one resumes."""
        first = self.start_job()
        self.wait_phase(first, "transfer")
        time.sleep(self.rng.uniform(0, 1.5))
        hit = self.phase_now(first)
        paused = self.live_workers()
        for w in paused:
            w.pause()
        ttl = self.settings.lock.ttl
        time.sleep(ttl + self.rng.uniform(1, 5))
        self.worker()
        second = self.start_job()
        self.wait_end([second], 120)
        for w in paused:
            w.resume()
        return [first, second], hit


def summarize(kind: str, verdicts: list[dict]) -> dict:
    row = {"fault": kind, "workflow": WORKFLOW, "trials": len(verdicts)}
    for k in ("recovered", "failed_loudly", "lost", "duplicated", "partial", "alerts_sent", "alerts_expected"):
        row[k] = sum(v[k] for v in verdicts)
    row["max_recovery_s"] = max((v["recovery_s"] for v in verdicts), default=0)
    row["effective"] = sum(v["effective"] for v in verdicts)
    hits: dict[str, int] = {}
    for v in verdicts:
        hits[v["phase"]] = hits.get(v["phase"], 0) + 1
    row["phases_hit"] = hits
    return row


def meets_targets(row: dict) -> bool:
    return (row["lost"] == row["duplicated"] == row["partial"] == 0 and row["alerts_sent"] == row["alerts_expected"]
            and row["recovered"] + row["failed_loudly"] == row["trials"])


def run(base: dict, state: Path, redis_port: int, kinds, trials: int, seed: int, max_outage: float,
        emit=print, sentinel_port: int = 26650) -> list[dict]:
    """Every kind in ``kinds``: those on one Redis in one campaign, those on a Sentinel group in another."""
    rows = []
    for sentinel, group in ((False, [k for k in kinds if k in KINDS]), (True, [k for k in kinds if k in SENTINEL_KINDS])):
        if not group:
            continue
        with Campaign(base, state / ("sentinel-campaign" if sentinel else "campaign"),
                      sentinel_port if sentinel else redis_port, seed, max_outage, sentinel=sentinel) as campaign:
            for kind in group:
                verdicts = [campaign.trial(kind) for _ in range(trials)]
                row = summarize(kind, verdicts)
                rows.append(row)
                emit(json.dumps(row))
    return rows


def main(argv: list[str] | None = None) -> int:
    import os

    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kinds", default=",".join(ALL_KINDS))
    p.add_argument("--max-outage", type=float, default=90, help="longest sshd outage / black hole, seconds")
    p.add_argument("--redis-port", type=int, default=6650)
    p.add_argument("--sentinel-port", type=int, default=26650,
                   help="redis_failover: the Sentinel group's first port (it takes five)")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        p.error(f"unknown fault kind {unknown[0]!r} (known: {', '.join(ALL_KINDS)})")
    config = Path(os.environ.get("BACKUP_CONFIG") or Path(__file__).resolve().parent.parent / "config" / "local.yaml")
    base = yaml.safe_load(config.read_text())
    base["base_dir"] = str(config.resolve().parent / base.get("base_dir", "."))
    state = Path(tempfile.mkdtemp(prefix="mb-faults-"))
    rows = run(base, state, args.redis_port, kinds, args.trials, args.seed, args.max_outage,
               sentinel_port=args.sentinel_port)
    return 0 if all(meets_targets(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

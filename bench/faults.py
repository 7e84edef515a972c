"""Fault campaign: how often each promise holds under each fault, on the real local platform.

    python bench/faults.py [--trials 20] [--seed 1] [--workflow edge-export,customer-files,table-backup,
                                                     restore-edge-export,restore-customer-files,restore-table-backup]
                           [--kinds worker_kill,redis_restart,...] [--max-outage 90]
    python bench/faults.py --kinds redis_failover [--trials 20] [--sentinel-port 26650]
    python bench/faults.py --workflow customer-files --kinds datanode_stop,namenode_stop [--trials 20]
    python bench/faults.py --workflow table-backup --kinds yarn_kill [--trials 20]

One JSON line per (fault kind, workflow): ``fault, workflow, trials, recovered, failed_loudly,
lost, duplicated, partial, alerts_sent, alerts_expected, max_recovery_s`` (+
``phases_hit``: the phase each fault landed in; ``effective``: trials whose run
the fault visibly changed - a redelivery, a retry, a skip or a failure).  Each trial starts a real
run of the workflow, injects the fault at a random moment, lets the system recover as in
production (redelivery, retries, the stall check that beat runs; after a run
that failed, the next scheduled run, which must succeed), then checks
from outside the project (OpenSSH's ``sha256sum`` on the edge node, ``hashlib`` on local
folders, a plain impyla cursor on HiveServer2):

* edge-export: the archive on the edge node exactly once, its SHA-256 and record count equal
  to the job record's, the local archive cleaned up;
* customer-files: every source file exactly once at both destinations (a local primary on a
  tmpfs, an SFTP secondary behind the campaign's relay) with the source's SHA-256, nothing else
  there (no temporary file), the Hive count table holding each file once with its SHA-256, the
  status flag naming the last run and its outcome;
* table-backup: the backup's rows equal to the source of the last successful run (count,
  distinct ids, sum of ids), no half table (at most the current and the previous data table);
* the restores (each restores what its backup flow's calibration run made, into a target of its
  own, ``--replace`` or a new folder per trial): restore-edge-export's table equal to the live
  table's rows in the archive's window (``EXCEPT ALL`` both ways, empty strings read as NULL, as
  the archive writes them) and its row count to the archive's; restore-table-backup's table equal
  to the backup view (``EXCEPT ALL`` both ways); restore-customer-files' folder holding every
  backed-up file of the customer exactly once with its source's SHA-256 and nothing else; the
  target marked by the last successful restore (its job id in the table's properties), no staging
  or replaced table left, nothing in the fetch staging folder, the records consistent (a success
  with every phase done and as many rows restored as expected);

and for every workflow: the job's final state, no lock left, exactly one alert for a failed
episode and none for a recovered one.

The campaign brings its own Redis (AOF everysec, noeviction) on its own port,
a TCP relay in front of the platform's sshd (closed = sshd unreachable, frozen =
black hole; it also caps each connection at 128 KB/s so customer-files copies last long
enough to be hit), and tmpfs folders (the edge-export export folder, a customer-files
primary, restore-edge-export's fetch staging folder, restore-customer-files' target: disk full); it needs root (mount) and the local platform (it starts what is
missing).  ``spark_restart`` kills the platform's Spark JVM (HiveServer2 and Spark Connect)
and starts it again, so it runs only when the campaign itself started that JVM (a platform
of its own: see ``--help``); a reader queries the table backup in a loop meanwhile (see
``Reader``).  Timings are shortened so that faults land in every phase: visibility timeout
20 s, lock TTL 10 s, retry budget 60 s, upload stall timeout 8 s, edge-export uploads capped
at 0.05 MB/s.

The ``redis_failover`` kind (edge-export) runs in a campaign of its own whose Redis is a
Sentinel group instead (bench/faultkit.py ``SentinelGroup``: a primary, a
replica, three sentinels; ``redis.url: sentinel://…``): at a random moment the
primary is SIGKILLed, the sentinels promote the replica (2-5 s), and the old
primary stays down a random 0-10 s before it comes back as the new primary's
replica.  While it is down the new primary has no replica, so every lock take
and commit check fails (redis.wait_replicas: nothing that a second fail-over
could lose is counted) and is retried within the retry budget.

The HDFS kinds (customer-files) run in a campaign of their own whose acme primary is a folder on
the platform's HDFS (``hdfs://backup@…``, written as an ordinary user): ``datanode_stop`` stops one of
the two DataNodes, ``namenode_stop`` the NameNode (Hadoop's own MiniDFSCluster, through the HDFS JVM's
control port), at a random moment, for 5 s to ``--max-outage``; acme's HDFS copies are read back over
WebHDFS with HdfsCLI's client and compared with their sources.  The Hive warehouse is on the same
HDFS, so a NameNode outage also stops the count table's load; both kinds stop HDFS for everyone on
the platform: run them where no one else uses it.

The YARN kind (table-backup) runs in a campaign of its own whose table-backup runs as the legacy
production command does (``spark.remote: yarn``, cluster mode: every Spark phase a spark-submit
application on the platform's MiniYARNCluster): ``yarn_kill`` waits for a random moment, then
kills the job's application running then (or the next one to start) through the ResourceManager's
REST API; the phase fails with the application's id and YARN's diagnostics and is retried as a new
application within the retry budget, or the run fails loudly.

Targets, per row: lost = duplicated = partial = 0, alerts_sent = alerts_expected,
recovered + failed_loudly = trials.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import posixpath
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.faultkit import PrivateRedis, Relay, SentinelGroup, Worker, wait_until  # noqa: E402

# The edge-export kinds (one trial each runs in make test: tests/integration/test_fault_campaign.py).
KINDS = ("worker_kill", "child_kill", "redis_restart", "sshd_outage", "black_hole", "disk_full", "corruption",
         "concurrent", "paused")
# Every kind, per workflow it applies to (table-backup has no network copy and no local file it writes).
WORKFLOW_KINDS = {
    "edge-export": KINDS + ("spark_restart",),
    "customer-files": KINDS + ("spark_restart",),
    "table-backup": ("worker_kill", "child_kill", "redis_restart", "concurrent", "paused", "spark_restart"),
    # The restores: those that read from the edge node (an edge-export archive; customer files whose primary
    # copy is aside) get its outages, a full disk where they write locally, a corrupted copy of what they
    # restore; restore-table-backup reads and writes only Spark tables.
    "restore-edge-export": KINDS,
    "restore-customer-files": KINDS,
    "restore-table-backup": ("worker_kill", "child_kill", "redis_restart", "concurrent", "paused"),
}
#: the kinds of the campaign on a Redis Sentinel group of its own (edge-export)
SENTINEL_KINDS = ("redis_failover",)
WORKFLOW_KINDS["edge-export"] += SENTINEL_KINDS
#: the kinds of the campaign whose customer-files primary for acme is on the platform's HDFS: a DataNode or the
#: NameNode stopped at a random moment for 5 s to --max-outage (Hadoop's own MiniDFSCluster stops and restarts it)
HDFS_KINDS = ("datanode_stop", "namenode_stop")
WORKFLOW_KINDS["customer-files"] += HDFS_KINDS
HDFS_USER = "backup"  # an ordinary HDFS user (permissions apply), as in tests/integration/test_hadoop_faults.py
#: the kind of the campaign whose table-backup runs as the legacy production command does (spark-submit --master yarn
#: --deploy-mode cluster, every Spark phase a YARN application on the platform's MiniYARNCluster): a running
#: application of the job killed through the ResourceManager's REST API at a random moment
YARN_KINDS = ("yarn_kill",)
WORKFLOW_KINDS["table-backup"] += YARN_KINDS
ALL_KINDS = tuple(dict.fromkeys(k for kinds in WORKFLOW_KINDS.values() for k in kinds))
WORKFLOW = "edge-export"  # the default workflow
TERMINAL = ("success", "failed", "skipped")
DB = "mnaas_faults"
RELAY_RATE = 128 * 1024  # bytes/s per relayed connection and direction


def hive_query(settings, sql: str) -> list[tuple]:
    """One statement over a plain impyla connection of its own (outside the project's code)."""
    from impala.dbapi import connect

    with closing(connect(settings.hive.host, settings.hive.port, auth_mechanism=settings.hive.auth_mechanism,
                         timeout=60)) as conn, closing(conn.cursor()) as cur:
        cur.execute(sql)
        return cur.fetchall() if sql.lstrip().upper().startswith(("SELECT", "SHOW")) else []


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".part")


# -- the workflows under fault -------------------------------------------------------------------------------------

class Flow:
    """One workflow under fault: its config, its inputs per trial and its checks from outside."""

    name = ""
    busy = ("",)  # phase-name prefixes where an outage, a pause or a corruption lands
    lock_target = ""
    #: the workflows whose flows must be set up (and run once) first: what a restore restores
    needs: tuple[str, ...] = ()

    def __init__(self, campaign: "Campaign"):
        self.c = campaign

    @property
    def task(self) -> str:
        return "backup." + self.name.replace("-", "_")

    @property
    def lock_workflow(self) -> str:
        """The workflow whose lock a run takes (a restore takes its backup's lock)."""
        return self.name

    @property
    def alert_target(self) -> str:
        """The target a run's job record (and so its alert's subject and episode) names."""
        return self.lock_target

    def config(self) -> dict:
        """Config sections this workflow needs (merged into the campaign's config)."""
        return {}

    def setup(self) -> None:
        """Inputs made once, after the config exists."""

    def prepare(self) -> None:
        """Before a trial: new inputs for its run."""

    def kwargs(self) -> dict:
        return {}

    def cli_args(self) -> list[str]:
        """``backupctl`` arguments after ``--config`` that start one run (``--json`` is added)."""
        return ["run", self.name]

    def after_trial(self) -> None:
        """After a trial's checks: undo what ``prepare`` changed for the trial only."""

    def check(self, jobs: list[str], recs: list[dict | None]) -> dict:
        """lost, duplicated, partial as seen from outside after the trial."""
        return {"lost": 0, "duplicated": 0, "partial": 0}

    def corrupt(self) -> bool:
        """Flip a byte of a temporary copy at a destination while the run writes it; True once done."""
        raise NotImplementedError

    def corrupt_during(self, job: str) -> None:
        """The corruption fault of one trial: race the copy, flipping a byte of a temporary file once it has some."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.corrupt():
                return
            time.sleep(0.1)

    def full_folder(self) -> Path:
        """The tmpfs folder a disk_full trial fills."""
        raise NotImplementedError


class EdgeExport(Flow):
    name = "edge-export"
    busy = ("transfer",)

    def setup(self) -> None:
        from connectors.hive import HiveClient
        from base.identifiers import TableName
        from backup.edge_export import line_expression
        from backup.resources import Resources
        from local_platform.sample_data import create_sample_table

        # The sample table without its DOUBLE: the export then takes its default way on Spark, the SQL engine
        # writing the CSV lines (a DOUBLE would keep it on the worker's formatter, which the tests cover).
        sample, self.table = TableName(DB, "traffic_sample"), TableName(DB, "traffic")
        with HiveClient.from_settings(self.c.settings) as hive:
            create_sample_table(hive, sample, rows=self.c.rows, sparse_dates=self.c.sparse_dates)
            hive.execute(f"DROP TABLE IF EXISTS {self.table.sql}")
            hive.execute(f"CREATE TABLE {self.table.sql} USING parquet PARTITIONED BY (partition_date) AS SELECT id, "
                         f"msisdn, customer, note, bytes_up, event_ts, partition_date FROM {sample.sql}")
            if line_expression(Resources(self.c.settings), hive, self.table) is None:
                raise RuntimeError(f"{self.table}: the export would not take the SQL engine's lines")
        self.lock_target = self.target = str(self.table)

    def kwargs(self) -> dict:
        return {"table": self.target}

    def cli_args(self) -> list[str]:
        return ["run", self.name, self.target]

    def prepare(self) -> None:
        self.before = self.remote_files()

    def remote_files(self) -> set[str]:
        from tests.helpers import remote_files

        return set(remote_files(self.c.settings, posixpath.join(self.c.settings.sftp.remote_dir, self.target)))

    def check(self, jobs, recs) -> dict:
        successes = [r for r in recs if r is not None and r["state"] == "success"]
        new = self.remote_files() - self.before
        committed = sorted(f for f in new if f.endswith(".csv.gz"))
        partial = sum(1 for f in new if not f.endswith(".csv.gz"))
        for r in successes:
            path = r["outputs"]["remote_uri"].split(f":{self.c.settings.sftp.port}", 1)[1]
            if path not in committed:
                partial += 1
                continue
            digest = self.c.ssh("sha256sum", path).stdout.split()[0]
            count = self.c.ssh("python3", "-c", "import csv,gzip,sys; print(sum(1 for _ in csv.reader("
                               "gzip.open(sys.argv[1],'rt',newline=''),delimiter=';')))", path).stdout.strip()
            if digest != r["outputs"]["sha256"] or int(count) != r["outputs"]["rows"]:
                partial += 1
            if Path(r["outputs"]["local_path"]).exists():
                partial += 1  # cleanup promised to remove it
        return {"lost": 0, "duplicated": max(0, len(committed) - len(successes)), "partial": partial}

    def corrupt_during(self, job: str) -> None:
        """A byte of the archive changed while it is uploaded, after the export recorded its SHA-256.

        With ``sftp.verify: in-stream`` (the default) the server hashes what it writes, so what it
        can catch is a change between the recorded hash and the bytes it receives: a byte of the
        local archive flipped ahead of the upload (in the file's second half, not yet sent at the
        campaign's capped rate).  The flip is undone once the transfer failed an attempt, as a
        transient fault: the retry must then commit the whole archive.  (A change made to the temp
        file on the server after it was written is caught by ``sftp.verify: read-back`` only; see
        tests/integration/test_guards.py.)
        """
        local = Path(self.c.record(job)["outputs"]["local_path"])
        offset = self.c.rng.randrange(local.stat().st_size // 2, local.stat().st_size - 1)

        def flip() -> None:
            with open(local, "r+b") as f:
                f.seek(offset)
                b = f.read(1)
                f.seek(offset)
                f.write(bytes([b[0] ^ 1]))
        flip()
        try:
            def failed_once() -> bool:
                rec = self.c.record(job) or {}
                transfer = next((p for p in rec.get("phases", []) if p["name"] == "transfer"), {})
                return rec.get("state") in TERMINAL or transfer.get("attempts", 0) > 1
            wait_until(failed_once, 120, "the transfer to fail an attempt")
        finally:
            flip()  # whole again: the transient fault is over

    def full_folder(self) -> Path:
        return self.c.exports


class CustomerFiles(Flow):
    """Two customers; ``acme``'s primary on a 16 MB tmpfs, both secondaries on the edge node behind the relay."""

    name = "customer-files"
    busy = ("copy",)
    lock_target = "all"
    CUSTOMERS = ("acme", "beta")
    FILES, FILE_BYTES = 6, 48_000  # per customer and trial: ~640 KB with the large one, seconds through the relay
    #: the first file of each customer and trial is larger than the copy engine's SMALL_FILE_BYTES: acme's primary,
    #: a local folder, then gets it by the kernel's copy (sendfile from the source's file system to the tmpfs)
    LARGE_FILE_BYTES = 400_000

    def __init__(self, campaign):
        super().__init__(campaign)
        root = campaign.state / "cf"
        self.root, self.src, self.tmpfs = root, root / "incoming", root / "acme-primary"
        # acme's backed-up primary copies moved off the 16 MB tmpfs after each trial (``after_trial``): about
        # 640 KB a customer a trial would fill it after some 25 trials and turn every later one into a disk-full trial.
        self.offloaded = root / "acme-primary-offloaded"
        self.edge = f"{campaign.state}/cf-edge"
        #: in the HDFS campaign, acme's primary is this folder on the platform's HDFS instead of the tmpfs
        self.hdfs_dir = f"/mb-faults/{campaign.state.parent.name}/acme" if campaign.hdfs else None
        self.trial_no = 0

    def config(self) -> dict:
        def primary(c):
            if c == "acme" and self.hdfs_dir:
                return f"hdfs://{HDFS_USER}@127.0.0.1:{self.c.base_settings.platform.namenode_http_port}{self.hdfs_dir}"
            return str(self.tmpfs) if c == "acme" else str(self.root / "primary" / c)
        return {"customer_files": {
            "source_dirs": [str(self.src)],
            "customers": {c: {"primary": primary(c),
                              "secondary": f"sftp://127.0.0.1:{self.c.relay.port}{self.edge}/{c}"}
                          for c in self.CUSTOMERS},
            "domains": {"traffic": ["traffic_*.csv"], "tolling": ["tolling_*.csv"]},
            "max_files_per_run": 1000, "settle_seconds": 0,
            "staging_table": f"{DB}.cf_inter_record_count", "final_table": f"{DB}.cf_records_count",
            "status_flag": str(self.root / "status" / "backup_files_process.status"),
            "manifest_dir": str(self.root / "manifests")}}

    def mount(self) -> None:
        self.tmpfs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.tmpfs)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.tmpfs)], check=False)
        if self.hdfs_dir:  # the campaign's HDFS folder goes with it
            self.c.platform.hadoop.fs_shell("-rm", "-r", "-f", "-skipTrash", posixpath.dirname(self.hdfs_dir),
                                            check=False)

    def after_trial(self) -> None:
        """Move acme's primary copies of the files the count table holds off the tmpfs, keeping their folders.

        Only files the count table records as backed up move: a file a failed run copied to the primary but
        not to its secondary stays, so the next run finds it at its destination (as it would in production)
        instead of writing it again.  ``destination`` reads both folders, and a file found in both is counted
        duplicated.  The tmpfs then holds one trial's copies at most, so it is full only when a disk_full
        trial fills it.
        """
        if self.hdfs_dir:
            return  # acme's primary is on HDFS: nothing fills the tmpfs
        done = {(c, d, f) for c, d, f, status in hive_query(
            self.c.settings, f"SELECT customer, domain, file_name, status FROM {DB}.cf_records_count")
            if c == "acme" and status in ("copied", "present")}
        for path in list(self.tmpfs.rglob("*")):
            if path.is_file() and ("acme", path.parent.name, path.name) in done:
                moved = self.offloaded / path.relative_to(self.tmpfs)
                moved.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, moved)

    def setup(self) -> None:
        hive_query(self.c.settings, f"CREATE DATABASE IF NOT EXISTS {DB}")
        for table in ("cf_inter_record_count", "cf_records_count"):
            hive_query(self.c.settings, f"DROP TABLE IF EXISTS {DB}.{table}")
        for c in self.CUSTOMERS:
            (self.src / c).mkdir(parents=True, exist_ok=True)
        if self.hdfs_dir:
            hadoop = self.c.platform.hadoop
            hadoop.fs_shell("-mkdir", "-p", self.hdfs_dir)
            hadoop.fs_shell("-chown", "-R", HDFS_USER, posixpath.dirname(self.hdfs_dir))
        self.prepare()

    def prepare(self) -> None:
        """New files for every customer (the ledger skips those already backed up)."""
        self.trial_no += 1
        rng = random.Random(self.trial_no)
        old = time.time() - 3600
        for c in self.CUSTOMERS:
            for i in range(self.FILES):
                stem = "traffic" if i % 2 == 0 else "tolling"
                path = self.src / c / f"{stem}_{self.trial_no:03d}_{i:02d}.csv"
                size = self.LARGE_FILE_BYTES if i == 0 else self.FILE_BYTES
                lines = [f"{rng.randint(10**8, 10**9)};4479{j:08d};{c};{rng.random():.6f}\n"
                         for j in range(size // 40)]
                path.write_text("".join(lines))
                os.utime(path, (old, old))

    def expected(self) -> dict[tuple[str, str, str], str]:
        """(customer, domain, file) -> SHA-256 of every source file so far."""
        out = {}
        for c in self.CUSTOMERS:
            for path in (self.src / c).iterdir():
                out[(c, path.name.split("_", 1)[0], path.name)] = sha256_file(path)
        return out

    def destination(self, customer: str, role: str) -> dict[tuple[str, str, str], str]:
        """(customer, domain, file) -> SHA-256 of every file at a destination (temp files included)."""
        found = {}
        if role == "primary" and customer == "acme" and self.hdfs_dir:
            return self.hdfs_files(customer)
        if role == "primary":
            bases = [self.tmpfs, self.offloaded] if customer == "acme" else [self.root / "primary" / customer]
            for base in bases:
                for path in base.rglob("*") if base.exists() else []:
                    if path.is_file():
                        key = (customer, path.parent.name, path.name)
                        # the same file on the tmpfs and offloaded: written again after it was backed up
                        found[key] = "written twice" if key in found else sha256_file(path)
            return found
        folder = f"{self.edge}/{customer}"
        out = self.c.ssh_plain(["find", folder, "-type", "f", "-exec", "sha256sum", "{}", "+"])
        if out.returncode != 0 and "No such file" not in out.stderr:
            raise AssertionError(f"sha256sum on the edge node failed (exit {out.returncode}): {out.stderr}")
        for line in out.stdout.splitlines():
            digest, path = line[:64], line[66:]
            found[(customer, posixpath.basename(posixpath.dirname(path)), posixpath.basename(path))] = digest
        return found

    def hdfs_files(self, customer: str) -> dict[tuple[str, str, str], str]:
        """(customer, domain, file) -> SHA-256 of every file under acme's HDFS primary, read over WebHDFS with
        HdfsCLI's own client (not the project's storage code)."""
        from hdfs import InsecureClient

        client = InsecureClient(f"http://127.0.0.1:{self.c.base_settings.platform.namenode_http_port}",
                                user=HDFS_USER, timeout=60)
        found = {}
        for folder, _dirs, files in client.walk(self.hdfs_dir):
            for name in files:
                with client.read(posixpath.join(folder, name)) as reader:
                    found[(customer, posixpath.basename(folder), name)] = hashlib.sha256(reader.read()).hexdigest()
        return found

    def check(self, jobs, recs) -> dict:
        expected = self.expected()
        lost, duplicated, partial, why = set(), 0, 0, []
        for c in self.CUSTOMERS:
            mine = {k: v for k, v in expected.items() if k[0] == c}
            for role in ("primary", "secondary"):
                there = self.destination(c, role)
                for key, digest in there.items():
                    if digest == "written twice":
                        duplicated += 1
                        why.append(f"{role} of {c}: {'/'.join(key[1:])} copied again after it was backed up")
                    elif is_temp(key[2]) or key not in mine or mine[key] != digest:
                        partial += 1  # a temporary, foreign or damaged file at a destination
                        why.append(f"{role} of {c}: {'/'.join(key[1:])} " + ("is a temporary file" if is_temp(key[2])
                                   else "has no source" if key not in mine else "differs from its source"))
                lost |= {k for k in mine if k not in there}
        counted: dict[tuple, list[str]] = {}
        for customer, domain, name, digest, status in hive_query(
                self.c.settings, f"SELECT customer, domain, file_name, sha256, status FROM {DB}.cf_records_count"):
            counted.setdefault((customer, domain, name), []).append((digest, status))
        for key, digest in expected.items():
            rows = counted.get(key, [])
            if not rows:
                lost.add(key)
                why.append(f"count table: no row for {'/'.join(key)}")
            duplicated += max(0, len(rows) - 1)
            bad = sum(1 for d, status in rows if d != digest or status not in ("copied", "present"))
            if bad:
                partial += bad
                why.append(f"count table: {'/'.join(key)} with another digest or status: {rows}")
        last = next((r for r in reversed(recs) if r is not None and r["state"] != "skipped"), None)
        flag = self.root / "status" / "backup_files_process.status"
        if last is not None:
            lines = flag.read_text().splitlines() if flag.exists() else []
            want = ("SUCCESS",) if last["state"] == "success" else ("PARTIAL", "FAIL")
            if not lines or lines[0] not in want or f"job_id={last['job_id']}" not in lines:
                partial += 1  # the flag does not say how the last run ended
                why.append(f"flag {lines[:2]} for the last run {last['job_id']} ({last['state']})")
        lost_why = [f"{'/'.join(k)} missing at a destination or in the count table" for k in sorted(lost)]
        return {"lost": len(lost), "duplicated": duplicated, "partial": partial, "why": (why + lost_why)[:5]}

    def corrupt(self) -> bool:
        """Flip a byte of a temporary copy on the edge node (the SFTP secondary) while the copies run.

        The campaign's files are small, so the server's batched ``sha256sum`` of the temp copies must
        catch it before the rename.  The local primary is not a target: a local copy written now is
        verified by the SHA-256 of the bytes handed to ``write``, fsync and size, without reading it
        back (``customer_files.read_back_local_copies`` off), so a change made to it on disk by someone
        else before its rename is not what that verification sees (documented in docs/customer-files.md).
        """
        flip = ("import sys,os,glob\n"
                "for p in glob.glob(sys.argv[1] + '/*/*/.*.part'):\n"
                "    if os.path.getsize(p) > 200:\n"
                "        f = open(p, 'r+b'); f.seek(100); b = f.read(1); f.seek(100); f.write(bytes([b[0] ^ 1])); "
                "f.close(); print(p); break\n")
        return bool(self.c.ssh("python3", "-c", flip, self.edge).stdout.strip())

    def full_folder(self) -> Path:
        return self.tmpfs


class TableBackup(Flow):
    """Two source folders, A and B (other rows), used in turn: the backup says which run it holds."""

    name = "table-backup"
    busy = ("load", "write")
    LIVE_DDL = ("(id BIGINT, msisdn STRING, customer STRING, amount DOUBLE, event_ts TIMESTAMP, "
                "partition_date STRING) USING parquet PARTITIONED BY (partition_date)")

    def __init__(self, campaign):
        super().__init__(campaign)
        self.lock_target = self.live = f"{DB}.tb_live"
        self.backup = f"{self.live}_bkp"
        self.sources = {}
        self.turn = 0

    def setup(self) -> None:
        hive_query(self.c.settings, f"CREATE DATABASE IF NOT EXISTS {DB}")
        for row in hive_query(self.c.settings, f"SHOW TABLES IN {DB}"):
            if row[1].startswith("tb_live"):
                hive_query(self.c.settings, f"DROP {'VIEW' if row[1] == 'tb_live_bkp' else 'TABLE'} IF EXISTS "
                                            f"{DB}.{row[1]}")
        hive_query(self.c.settings, f"CREATE TABLE {self.live} {self.LIVE_DDL}")
        for name, first, n in (("A", 0, 3000), ("B", 100_000, 3300)):
            folder = self.c.state / "tb" / name
            folder.mkdir(parents=True, exist_ok=True)
            day0 = dt.date(2025, 9, 1)
            lines = [f"{i};4479{i:08d};cust{i % 7};{i % 1000 / 7:.4f};{day0 + dt.timedelta(days=i % 150)} "
                     f"{i % 24:02d}:00:00;{day0 + dt.timedelta(days=i % 150)}\n" for i in range(first, first + n)]
            for part in range(3):
                (folder / f"part-{part}.csv").write_text("".join(lines[part::3]))
            ids = range(first, first + n)
            self.sources[name] = (folder.as_uri(), (n, sum(ids), n))
        self.current = "A"

    def prepare(self) -> None:
        self.turn += 1
        self.current = "AB"[self.turn % 2]

    def kwargs(self) -> dict:
        return {"table": self.live, "source": self.sources[self.current][0]}

    def cli_args(self) -> list[str]:
        return ["run", self.name, self.live, "--source", self.sources[self.current][0]]

    def fingerprint(self) -> tuple:
        """(rows, sum of ids, distinct ids) of the backup readers use."""
        row = hive_query(self.c.settings, f"SELECT count(*), sum(id), count(DISTINCT id) FROM {self.backup}")[0]
        return tuple(int(v or 0) for v in row)

    def fingerprints(self) -> set[tuple]:
        return {fp for _, fp in self.sources.values()}

    def check(self, jobs, recs) -> dict:
        partial = duplicated = lost = 0
        why = []
        successes = [r for r in recs if r is not None and r["state"] == "success"]
        got = self.fingerprint()
        want = self.sources[self.current][1] if successes else self.before
        if got[0] != got[2]:
            duplicated += got[0] - got[2]
            why.append(f"the backup holds {got[0]} rows but {got[2]} distinct ids")
        if got != want:
            partial += 1  # not the rows of the last successful run (or of the backup before a failed one)
            why.append(f"the backup's (rows, sum of ids, distinct ids) {got} are not {want}")
        data = sorted(r[1] for r in hive_query(self.c.settings, f"SHOW TABLES IN {DB}")
                      if r[1].startswith("tb_live_bkp__"))
        if len(data) > 2:
            partial += len(data) - 2  # a half-written table left beside the current and the previous ones
            why.append(f"{len(data)} data tables, at most the current and the previous expected: {data}")
        return {"lost": lost, "duplicated": duplicated, "partial": partial, "why": why}

    def snapshot(self) -> None:
        self.before = self.fingerprint()


# -- the restore workflows under fault --------------------------------------------------------------------------------

def except_all(settings, a: str, b: str) -> tuple[int, int]:
    """Rows of query ``a`` not in ``b`` and of ``b`` not in ``a`` (EXCEPT ALL both ways: duplicates and NULLs count)."""
    one = hive_query(settings, f"SELECT count(*) FROM ({a} EXCEPT ALL {b}) d")[0][0]
    two = hive_query(settings, f"SELECT count(*) FROM ({b} EXCEPT ALL {a}) d")[0][0]
    return int(one), int(two)


def table_property(settings, table: str, key: str) -> str | None:
    """One table property as HiveServer2 shows it (None: the table or the key is not there)."""
    try:
        rows = hive_query(settings, f"SHOW TBLPROPERTIES {table} ('{key}')")
    except Exception:  # noqa: BLE001 - no such table
        return None
    return rows[0][1] if rows and rows[0][0] == key else None


def restore_record_problems(recs: list[dict | None], outputs_equal: tuple[str, str] | None = None) -> list[str]:
    """What is inconsistent in the restore records of a trial: a success whose phases are not all done (or
    skipped), a failure with no error, a success whose outputs ``outputs_equal`` (two keys) differ."""
    why = []
    for r in recs:
        if r is None:
            continue
        if r["state"] == "success":
            undone = [p["name"] for p in r["phases"] if p["state"] not in ("success", "skipped")]
            if undone:
                why.append(f"record {r['job_id']}: success with phases {undone} not done")
            if outputs_equal and r["outputs"].get(outputs_equal[0]) != r["outputs"].get(outputs_equal[1]):
                why.append(f"record {r['job_id']}: {outputs_equal[0]} {r['outputs'].get(outputs_equal[0])} != "
                           f"{outputs_equal[1]} {r['outputs'].get(outputs_equal[1])}")
        elif r["state"] == "failed" and not r.get("error"):
            why.append(f"record {r['job_id']}: failed without an error")
    return why


class RestoreEdgeExport(Flow):
    """The newest edge-export archive of the edge-export flow's table, fetched from the edge node behind the relay
    into a staging folder on a small tmpfs (disk full), restored ``--into`` a table of its own with ``--replace``."""

    name = "restore-edge-export"
    busy = ("fetch",)
    needs = ("edge-export",)
    # the columns of the edge-export flow's table, and those a restore reads back '' as NULL
    COLUMNS = ("id", "msisdn", "customer", "note", "bytes_up", "event_ts", "partition_date")
    STRINGS = ("msisdn", "customer", "note", "partition_date")

    def __init__(self, campaign):
        super().__init__(campaign)
        self.staging = campaign.state / "restore-staging"

    @property
    def lock_workflow(self) -> str:
        return "edge-export"

    def config(self) -> dict:
        return {"restore_edge_export": {"staging_dir": str(self.staging)}}

    def mount(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(self.staging)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.staging)], check=False)

    def setup(self) -> None:
        self.lock_target = self.live = self.c.flows["edge-export"].target
        self.into = f"{self.live}_restored"
        for row in hive_query(self.c.settings, f"SHOW TABLES IN {DB}"):
            if row[1].startswith(self.into.split(".", 1)[1]):
                hive_query(self.c.settings, f"DROP TABLE IF EXISTS {DB}.{row[1]}")

    def kwargs(self) -> dict:
        return {"table": self.live, "into": self.into, "replace": True}

    def cli_args(self) -> list[str]:
        return ["restore", "edge-export", self.live, "--into", self.into, "--replace"]

    def prepare(self) -> None:
        self.before = table_property(self.c.settings, self.into, "mediation_backup.restored_by")

    def check(self, jobs, recs) -> dict:
        settings = self.c.settings
        lost = duplicated = partial = 0
        why = restore_record_problems(recs, ("rows_expected", "rows_restored"))
        partial += len(why)
        successes = [r for r in recs if r is not None and r["state"] == "success"]
        holder = table_property(settings, self.into, "mediation_backup.restored_by")
        want = successes[-1]["job_id"] if successes else self.before
        if holder != want:
            partial += 1
            why.append(f"{self.into} was restored by {holder}, expected the last successful restore {want}")
        if successes:
            archive = successes[-1]["args"]["archive"]
            window = archive["window"]
            cols = self.COLUMNS
            sel = ", ".join(f"nullif(`{c}`, '') AS `{c}`" if c in self.STRINGS else f"`{c}`" for c in cols)
            live = (f"SELECT {sel} FROM {self.live} WHERE partition_date >= '{window['start']}' "
                    f"AND partition_date < '{window['end']}'")
            restored = f"SELECT {', '.join(f'`{c}`' for c in cols)} FROM {self.into}"
            missing, extra = except_all(settings, live, restored)
            count = int(hive_query(settings, f"SELECT count(*) FROM {self.into}")[0][0])
            if missing:
                lost += missing
                why.append(f"{missing} rows of the archive's window missing from {self.into}")
            if extra:
                duplicated += max(0, count - archive["rows"])
                partial += 1 if count <= archive["rows"] else 0
                why.append(f"{extra} rows of {self.into} not in the live window ({count} rows, archive {archive['rows']})")
            if count != archive["rows"]:
                why.append(f"{self.into}: {count} rows, the archive has {archive['rows']}")
                partial += 0 if (missing or extra) else 1
        left = [r[1] for r in hive_query(settings, f"SHOW TABLES IN {DB}")
                if r[1].startswith(self.into.split(".", 1)[1] + "__")]
        if left:
            partial += len(left)
            why.append(f"tables left: {left}")
        staged = [str(p.relative_to(self.staging)) for p in self.staging.rglob("*")]
        if staged:
            partial += len(staged)
            why.append(f"left in the staging folder: {staged[:5]}")
        return {"lost": lost, "duplicated": duplicated, "partial": partial, "why": why[:5]}

    def corrupt_during(self, job: str) -> None:
        """A byte of the archive on the edge node flipped while the fetch runs, flipped back once the job failed
        an attempt of its fetch (or ended): the server's ``sha256sum`` (before the download) or the download's own
        hash must refuse it every time; the flip back makes the fault transient, so the next attempt or run
        restores the whole archive."""
        rec = self.c.record(job)
        path = rec["args"]["archive"]["remote_path"]
        size = rec["args"]["archive"]["bytes"]
        offset = self.c.rng.randrange(size // 4, size - 1)
        flip = ("import sys\nf = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); b = f.read(1); "
                "f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 1])); f.close()")
        self.c.ssh("python3", "-c", flip, path, str(offset))
        try:
            def failed_once() -> bool:
                r = self.c.record(job) or {}
                fetch = next((p for p in r.get("phases", []) if p["name"] == "fetch"), {})
                return r.get("state") in TERMINAL or fetch.get("attempts", 0) > 1 or fetch.get("state") == "success"
            wait_until(failed_once, 180, "the fetch to fail an attempt")
        finally:
            self.c.ssh("python3", "-c", flip, path, str(offset))

    def full_folder(self) -> Path:
        return self.staging


class RestoreCustomerFiles(Flow):
    """Every backed-up file of ``beta`` (the customer-files flow's) restored into a new folder per trial on a small
    tmpfs (disk full).  For the trial, beta's primary copies are moved aside, so every file is read from the
    secondary on the edge node behind the relay (sshd outages, black holes, a corrupted copy)."""

    name = "restore-customer-files"
    busy = ("verify", "restore")
    needs = ("customer-files",)
    CUSTOMER = "beta"

    def __init__(self, campaign):
        super().__init__(campaign)
        self.target = campaign.state / "rcf-target"
        self.trial_no = 0
        self.lock_target = "all"

    @property
    def lock_workflow(self) -> str:
        return "customer-files"

    @property
    def alert_target(self) -> str:
        return self.CUSTOMER

    @property
    def backup(self) -> CustomerFiles:
        return self.c.flows["customer-files"]

    @property
    def primary(self) -> Path:
        return self.backup.root / "primary" / self.CUSTOMER

    def mount(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.target)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.target)], check=False)

    @property
    def location(self) -> Path:
        return self.target / f"trial-{self.trial_no:03d}"

    def kwargs(self) -> dict:
        return {"customer": self.CUSTOMER, "location": str(self.location)}

    def cli_args(self) -> list[str]:
        return ["restore", "customer-files", self.CUSTOMER, "--to", str(self.location)]

    def prepare(self) -> None:
        """A new, empty location; beta's primary copies moved aside (the secondary is read)."""
        import shutil

        for old in self.target.iterdir():
            shutil.rmtree(old)
        self.trial_no += 1
        if self.primary.exists():
            self.primary.rename(self.primary.with_name(self.CUSTOMER + ".aside"))

    def after_trial(self) -> None:
        aside = self.primary.with_name(self.CUSTOMER + ".aside")
        if aside.exists():
            aside.rename(self.primary)

    def check(self, jobs, recs) -> dict:
        expected = {(d, f): digest for (c, d, f), digest in self.backup.expected().items() if c == self.CUSTOMER}
        why = restore_record_problems(recs)
        partial, lost = len(why), 0
        found: dict[tuple[str, str], str] = {}
        for path in self.target.rglob("*"):
            if path.is_dir():
                continue
            rel = path.relative_to(self.location) if path.is_relative_to(self.location) else None
            if rel is None or len(rel.parts) != 2:
                partial += 1
                why.append(f"{path} outside the trial's <domain>/<file> layout")
                continue
            found[rel.parts] = sha256_file(path)
        for key, digest in found.items():
            if key[1].startswith(".") or key not in expected or expected[key] != digest:
                partial += 1
                why.append(f"restored {'/'.join(key)}: " + ("a temporary file" if key[1].startswith(".")
                           else "no such backed-up file" if key not in expected else "differs from its source"))
        missing = [k for k in expected if k not in found]
        if missing:
            lost += len(missing)
            why.append(f"not restored: {['/'.join(k) for k in missing[:3]]}")
        # what the trial restored from must still be the backup (a corruption trial flips its byte back)
        secondary = {(d, f): v for (c, d, f), v in self.backup.destination(self.CUSTOMER, "secondary").items()}
        damaged = [k for k, v in expected.items() if secondary.get(k) != v]
        if damaged:
            partial += len(damaged)
            why.append(f"secondary copies differ from their source after the trial: {damaged[:3]}")
        return {"lost": lost, "duplicated": 0, "partial": partial, "why": why[:5]}

    def corrupt_during(self, job: str) -> None:
        """A byte of one of beta's secondary copies on the edge node flipped while the restore reads them (its
        primary is aside: no good copy is left), flipped back once the job ended: verify's SHA-256, or the
        restore's check of the bytes it read against the recorded SHA-256, must refuse it every time."""
        files = sorted(k for k in self.backup.expected() if k[0] == self.CUSTOMER)
        _, domain, name = self.c.rng.choice(files)
        path = f"{self.backup.edge}/{self.CUSTOMER}/{domain}/{name}"
        flip = ("import sys\nf = open(sys.argv[1], 'r+b'); f.seek(int(sys.argv[2])); b = f.read(1); "
                "f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 1])); f.close()")
        offset = str(self.c.rng.randrange(100, self.backup.FILE_BYTES // 2))
        self.c.ssh("python3", "-c", flip, path, offset)
        try:
            wait_until(lambda: (self.c.record(job) or {}).get("state") in TERMINAL, 300, "the restore to end")
        finally:
            self.c.ssh("python3", "-c", flip, path, offset)

    def full_folder(self) -> Path:
        return self.target


class RestoreTableBackup(Flow):
    """The table-backup flow's backup restored ``--into`` a table of its own with ``--replace``."""

    name = "restore-table-backup"
    busy = ("load", "swap")
    needs = ("table-backup",)

    @property
    def lock_workflow(self) -> str:
        return "table-backup"

    COLUMNS = "id, msisdn, customer, amount, event_ts, partition_date"

    def setup(self) -> None:
        self.lock_target = self.live = self.c.flows["table-backup"].live
        self.into = f"{DB}.tb_restored"
        for row in hive_query(self.c.settings, f"SHOW TABLES IN {DB}"):
            if row[1].startswith("tb_restored"):
                hive_query(self.c.settings, f"DROP TABLE IF EXISTS {DB}.{row[1]}")

    def kwargs(self) -> dict:
        return {"table": self.live, "into": self.into, "replace": True}

    def cli_args(self) -> list[str]:
        return ["restore", "table-backup", self.live, "--into", self.into, "--replace"]

    def prepare(self) -> None:
        self.before = table_property(self.c.settings, self.into, "mediation_backup.restore_job")

    def check(self, jobs, recs) -> dict:
        settings = self.c.settings
        why = restore_record_problems(recs, ("rows_expected", "rows_restored"))
        lost, duplicated, partial = 0, 0, len(why)
        successes = [r for r in recs if r is not None and r["state"] == "success"]
        holder = table_property(settings, self.into, "mediation_backup.restore_job")
        want = successes[-1]["job_id"] if successes else self.before
        if holder != want:
            partial += 1
            why.append(f"{self.into} was restored by {holder}, expected the last successful restore {want}")
        backup = self.c.flows["table-backup"].backup
        missing, extra = except_all(settings, f"SELECT {self.COLUMNS} FROM {backup}",
                                    f"SELECT {self.COLUMNS} FROM {self.into}")
        if missing:
            lost += missing
            why.append(f"{missing} rows of {backup} missing from {self.into}")
        if extra:
            duplicated += extra
            why.append(f"{extra} rows of {self.into} not in {backup}")
        left = [r[1] for r in hive_query(settings, f"SHOW TABLES IN {DB}") if r[1].startswith("tb_restored__")]
        if left:
            partial += len(left)
            why.append(f"tables left: {left}")
        return {"lost": lost, "duplicated": duplicated, "partial": partial, "why": why[:5]}


RESTORE_FLOWS = (RestoreEdgeExport, RestoreCustomerFiles, RestoreTableBackup)


FLOWS = {"edge-export": EdgeExport, "customer-files": CustomerFiles, "table-backup": TableBackup,
         **{f.name: f for f in RESTORE_FLOWS}}


# -- the reader of fault 4 ------------------------------------------------------------------------------------------

CONNECTION_ERRORS = ("connection refused", "could not connect", "unavailable", "tsocket read 0 bytes",
                     "connection reset", "broken pipe", "timed out", "eof", "ttransportexception",
                     "failed to connect", "connection closed")


class Reader(threading.Thread):
    """Queries the table backup in a loop during a spark_restart trial, on a new impyla connection each time.

    What it asserts, per query of ``SELECT count(*), sum(id), count(DISTINCT id)`` on the backup:
    the answer is one of ``allowed`` (the backup before the trial, or the rows of the source the trial's
    run loads: never a partial, empty or doubled table); or the query fails with a connection-level
    error (refused, reset, end of stream, unavailable) while the JVM is down, that is between the kill
    and 15 s after the restarted server answers.  Anything else - another error (table or view not
    found, an analysis error), a connection error outside that window, another answer - is a violation.
    """

    def __init__(self, flow: TableBackup, allowed: set[tuple]):
        super().__init__(daemon=True)
        self.flow, self.allowed = flow, allowed
        self.down_since: float | None = None
        self.up_at: float | None = None
        self.stop = threading.Event()
        self.answers = self.errors = 0
        self.violations: list[str] = []

    def in_window(self, t: float) -> bool:
        return self.down_since is not None and t >= self.down_since and (self.up_at is None or t <= self.up_at + 15)

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                got = self.flow.fingerprint()
                if got in self.allowed:
                    self.answers += 1
                else:
                    self.violations.append(f"answer {got} is neither backup {sorted(self.allowed)}")
            except Exception as e:  # noqa: BLE001 - every error is classified
                text = f"{type(e).__name__}: {e}".lower()
                if any(m in text for m in CONNECTION_ERRORS) and (self.in_window(began)
                                                                   or self.in_window(time.monotonic())):
                    self.errors += 1
                else:
                    self.violations.append(f"{type(e).__name__}: {str(e)[:200]}")
            self.stop.wait(0.5)


# -- the campaign ---------------------------------------------------------------------------------------------------

class Campaign:
    """The campaign's own Redis, relay, tmpfs and workers around the platform's Spark and sshd."""

    def __init__(self, base: dict, state: Path, redis_port: int, seed: int = 1, max_outage: float = 90,
                 rows: int = 8000, workflows=(WORKFLOW,), spark_restart: bool = False,
                 own_platform: bool = False, sentinel: bool = False, hdfs: bool = False, yarn: bool = False,
                 sparse_dates: bool = False):
        self.base, self.state, self.rng = base, state, random.Random(seed)
        #: the sample table on three dates a month (local_platform.sample_data): the tests' one-trial campaigns,
        #: where the dense table (270 partitions, written twice) cost a minute of the shared Spark server
        self.sparse_dates = sparse_dates
        self.hdfs = hdfs  # customer-files' acme primary on the platform's HDFS (the HDFS_KINDS campaign)
        self.yarn = yarn  # Spark phases as YARN applications (spark-submit, cluster mode: the YARN_KINDS campaign)
        self.max_outage = max_outage
        self.rows = rows
        self.sentinel = sentinel
        #: ports: one Redis at redis_port; or a Sentinel group at redis_port .. redis_port + 4
        self.redis = SentinelGroup(redis_port, state / "sentinel") if sentinel else PrivateRedis(redis_port,
                                                                                                 state / "redis")
        self.relay: Relay | None = None
        self.workers: list[Worker] = []
        self.exports = state / "exports"
        self.flows: dict[str, Flow] = {}
        self.workflows = tuple(workflows)
        self.own_platform = own_platform  # the platform is the campaign's even if already running (see main)
        self.spark_restart = spark_restart  # set up the table backup the reader of spark_restart trials reads
        self.flow: Flow | None = None
        self.durations: dict[str, float] = {}
        self.platform = None
        self.platform_report: dict[str, str] = {}

    # -- set-up ------------------------------------------------------------------------------------------------

    def relay_port(self) -> int:
        """The relay's port: just past every port of the campaign's Redis (a Sentinel group takes five), so below
        the ephemeral range: while the relay is closed (an outage) no outgoing connection can take it."""
        return max(self.redis.ports) + 1

    def __enter__(self) -> "Campaign":
        try:
            return self._enter()
        except BaseException:
            self.__exit__()
            raise

    def _enter(self) -> "Campaign":
        from config.settings import _merge, load_settings
        from local_platform.services import LocalPlatform

        import yaml

        self.state.mkdir(parents=True, exist_ok=True)
        base_cfg = self.state / "base.yaml"
        base_cfg.write_text(yaml.safe_dump(self.base))
        base = load_settings(base_cfg)
        self.base_settings = base
        self.platform = LocalPlatform(base)
        self.platform_report = self.platform.up(
            only=["spark", "sshd", "sinks"] + (["hdfs"] if self.hdfs or self.yarn else []) + (["yarn"] if self.yarn else []),
            timeout=300)
        self.redis.start()
        self.relay = Relay(base.sftp.port, port=self.relay_port(), rate=RELAY_RATE)
        self.relay.open()
        known = self.state / "known_hosts"
        key_line = base.path(base.sftp.known_hosts).read_text().strip().split(" ", 1)[1]
        known.write_text(f"[127.0.0.1]:{self.relay.port} {key_line}\n")
        self.exports.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(self.exports)], check=True)
        names = []
        for name in self.workflows:  # a restore's backup first: its calibration run makes what is restored
            names += [n for n in (*FLOWS[name].needs, name) if n not in names]
        flows = [FLOWS[name](self) for name in names]
        if self.spark_restart and "table-backup" not in self.workflows:
            flows.append(TableBackup(self))  # its backup is what the reader of spark_restart trials reads
        overrides = {
            "redis": {"url": self.redis.url, "key_prefix": "mbfault"},
            "sftp": {"port": self.relay.port, "known_hosts": str(known), "remote_dir": str(self.state / "edge"),
                     "rate_limit_mbps": 0.05, "streams": 1, "stall_timeout": 8, "connect_timeout": 5},
            "edge_export": {"export_dir": str(self.exports), "compresslevel": 1},
            "celery": {"task_time_limit": 120, "task_soft_time_limit": 110, "visibility_timeout": 20,
                       "max_deliveries": 5},
            "lock": {"ttl": 10, "renew_every": 2},
            "retry": {"budget": 60, "max_retries": None, "backoff": 1, "backoff_max": 4},
            "stall": {"orphan_after": 30, "ending_grace": 20, "check_every": 3600},
        }
        if self.yarn:
            overrides.update(self.yarn_overrides())
        merged = _merge(self.base, overrides)
        for flow in flows:
            merged.update(flow.config())  # whole sections: the base's customers are not the campaign's
        self.config = self.state / "campaign.yaml"
        self.config.write_text(yaml.safe_dump(merged))
        self.settings = load_settings(self.config)
        from backup.resources import Resources
        from workers.app import create_app

        self.res = Resources(self.settings)
        self.app = create_app(self.settings)
        for flow in flows:
            self.flows[flow.name] = flow
            if hasattr(flow, "mount"):
                flow.mount()
            flow.setup()
        self.worker()
        for flow in flows:  # a clean run of each: its duration spreads the random moments; the first backup
            self.flow = flow
            if isinstance(flow, RESTORE_FLOWS):
                flow.prepare()  # as in a trial (a customer's primary aside: the run reads the secondary)
            began = time.monotonic()
            rec = self.wait_end([self.start_job()], 300)[0]
            flow.after_trial()
            if rec is None or rec["state"] != "success":
                raise RuntimeError(f"calibration run of {flow.name} did not succeed: {rec}")
            self.durations[flow.name] = time.monotonic() - began
        self.use(self.workflows[0])
        return self

    def yarn_overrides(self) -> dict:
        """spark-submit --master yarn --deploy-mode cluster on the platform's YARN, as tests/integration/test_yarn.py
        runs it: the wheel's jars used in place (the NodeManager is on this machine), small driver and executor."""
        import pyspark

        hadoop = self.platform.hadoop
        spark_home = Path(pyspark.__file__).resolve().parent
        # A phase is a YARN application (a driver JVM in a container): far longer than a Spark Connect statement.
        return {"celery": {"task_time_limit": 600, "task_soft_time_limit": 590, "visibility_timeout": 20,
                           "max_deliveries": 5},
                "spark": {"remote": "yarn", "deploy_mode": "cluster", "hadoop_conf_dir": str(hadoop.conf_dir),
                          "yarn_resourcemanager_url": hadoop.resourcemanager_url,
                          "submit_conf": {"spark.yarn.jars": f"local:{spark_home}/jars/*",
                                          "spark.driver.extraClassPath": str(hadoop.derby_client_jar),
                                          "spark.driver.memory": "768m", "spark.executor.memory": "512m",
                                          "spark.executor.instances": "1", "spark.ui.enabled": "false",
                                          "spark.sql.shuffle.partitions": "2",
                                          "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}}}

    def use(self, workflow: str) -> None:
        """The workflow the next trials run."""
        self.flow = self.flows[workflow]
        self.duration = self.durations[workflow]

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()
        if self.relay:
            self.relay.thaw()
            self.relay.close()
        self.redis.stop()
        subprocess.run(["umount", "-l", str(self.exports)], check=False)
        for flow in self.flows.values():
            if hasattr(flow, "unmount"):
                flow.after_trial()
                flow.unmount()
        if self.platform is not None:  # only what this campaign started
            started = [name for name, state in self.platform_report.items() if state == "started"]
            if started:
                self.platform.down(only=started)

    def worker(self) -> Worker:
        w = Worker(self.config, f"fault{uuid.uuid4().hex[:6]}", self.state / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        return w.start(self.app)

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    # -- one run -----------------------------------------------------------------------------------------------

    def start_job(self) -> str:
        job_id = uuid.uuid4().hex
        self.app.send_task(self.flow.task, kwargs=self.flow.kwargs(), task_id=job_id)
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
                    check_stalls(self.res, QUEUES, self.cleanup_for)
                except BackupError:
                    pass  # Redis away: the next check tries again
            time.sleep(0.3)
        return [self.record(j) for j in job_ids]

    def cleanup_for(self, workflow: str):
        """A workflow's failure cleanup on the campaign's resources, as beat's stall check passes it
        (tasks/maintenance.py): a job failed by the stall check is cleaned up as in production."""
        from backup.workflow import failure_cleanup_for

        return failure_cleanup_for(workflow, self.res)

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

    def wait_busy(self, job_id: str, timeout: float = 90) -> None:
        """Wait until the job is in one of its workflow's busy phases (a transfer, a copy, a load)."""
        wait_until(lambda: ((self.record(job_id) or {}).get("phase") or "").startswith(self.flow.busy),
                   timeout, f"a phase {'/'.join(self.flow.busy)}")

    # -- checks from outside -----------------------------------------------------------------------------------

    def ssh(self, *command: str):
        from tests.helpers import ssh

        return ssh(self.settings, list(command))

    def ssh_plain(self, command: list[str]):
        from tests.helpers import ssh

        return ssh(self.settings, command, check=False)

    def alerts(self) -> int:
        """Alert mails received so far for the current workflow and target (the subject names both: campaigns
        on other workflows may share the platform's sinks)."""
        folder = self.settings.path(self.settings.platform.state_dir) / "sinks" / "mail"
        subject = f"Subject: [mediation-backup] {self.flow.name} {self.flow.alert_target} "
        unfolded = (mail.read_text(errors="replace").replace("\r\n", "\n").replace("\n ", " ")
                    for mail in folder.glob("*.eml"))
        return sum(1 for text in unfolded if subject in text)

    def verify(self, jobs: list[str], recs: list[dict | None], alerts_before: int, started: float) -> dict:
        """The verdict of one trial from its jobs' records and what the workflow's outputs look like."""
        lost = sum(1 for r in recs if r is None or r["state"] not in TERMINAL)
        done = [r for r in recs if r is not None and r["state"] in TERMINAL]
        failures = [r for r in done if r["state"] == "failed"]
        seen = self.flow.check(jobs, recs)
        lost += seen["lost"]
        if self.res.locks.holder(self.flow.lock_workflow, self.flow.lock_target) is not None:
            lost += 1  # a lock left held blocks every later run: counted with what is lost
        alerts_sent = self.alerts() - alerts_before
        ok = lost == 0 and seen["duplicated"] == 0 and seen["partial"] == 0
        # Did the fault change the run at all (a redelivery, a retry, a skip or a failure)?  A fault that
        # landed in a quiet moment proves less: the rows say how many did.
        effective = any(r["state"] != "success" or any(p["deliveries"] > 1 or p["attempts"] > 1
                                                       for p in r["phases"]) for r in done)
        return {"recovered": int(ok and not failures), "failed_loudly": int(ok and bool(failures)),
                "lost": lost, "duplicated": seen["duplicated"], "partial": seen["partial"],
                "alerts_sent": alerts_sent, "alerts_expected": 1 if failures else 0,
                "recovery_s": round(time.monotonic() - started, 1), "effective": int(effective),
                "runs": sum(1 for r in done if r["state"] != "skipped"),
                "why": seen.get("why", [])}

    def trial(self, kind: str) -> dict:
        """One trial of ``kind`` on the current workflow: its verdict plus the phase the fault landed in."""
        if (kind in SENTINEL_KINDS) != self.sentinel:
            raise ValueError(f"fault kind {kind} runs in a campaign {'with' if kind in SENTINEL_KINDS else 'without'} "
                             f"a Sentinel group (Campaign(sentinel=...))")
        if (kind in YARN_KINDS) != self.yarn:
            raise ValueError(f"fault kind {kind} runs in a campaign {'with' if kind in YARN_KINDS else 'without'} "
                             f"Spark on YARN (Campaign(yarn=...))")
        if (kind in HDFS_KINDS) != self.hdfs:
            raise ValueError(f"fault kind {kind} runs in a campaign {'with' if kind in HDFS_KINDS else 'without'} "
                             f"acme's primary on HDFS (Campaign(hdfs=...))")
        flow = self.flow
        self.res.alerter.success(flow.name, flow.alert_target)  # every trial starts outside an alert episode
        if not self.live_workers():
            self.worker()
        flow.prepare()
        if isinstance(flow, TableBackup):
            flow.snapshot()
        alerts_before = self.alerts()
        started = time.monotonic()
        self.reader = None
        jobs, hit = getattr(self, f"_{kind}")()
        recs = self.wait_end(jobs, 300)
        if any(r is not None and r["state"] == "failed" for r in recs) and (recs[-1] or {}).get("state") != "success":
            # The fault is over: the next run must succeed, and clear what the failed one could not.
            jobs.append(self.start_job())
            recs = self.wait_end(jobs, 300)
        self.wait_quiet(120)
        try:
            verdict = self.verify(jobs, recs, alerts_before, started)
        finally:
            flow.after_trial()
        if self.reader is not None:
            self.reader.stop.set()
            self.reader.join(30)
            verdict["partial"] += len(self.reader.violations)
            if self.reader.violations:
                verdict["recovered"] = verdict["failed_loudly"] = 0
            verdict["reader"] = {"answers": self.reader.answers, "connection_errors": self.reader.errors,
                                 "violations": self.reader.violations[:5]}
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

    def _datanode_stop(self):
        """One of the platform's DataNodes stopped at a random moment, started again after 5 s to --max-outage.

        Replication is 2 on two DataNodes: a write in flight loses one node of its pipeline (the client carries
        on with the other, or the copy fails and is retried), and new blocks are written with one replica."""
        hadoop = self.platform.hadoop
        job = self.start_job()
        hit = self.at_random_moment(job)
        index = self.rng.randrange(self.base_settings.platform.datanodes)
        hadoop.control(f"datanode/{index}/stop")
        try:
            time.sleep(self.rng.uniform(5, self.max_outage))
        finally:
            hadoop.control(f"datanode/{index}/start")
        wait_until(lambda: hadoop.hdfs_ready() is None, 180, "every DataNode live again")
        return [job], hit

    def _namenode_stop(self):
        """The NameNode stopped at a random moment (every HDFS call refused: the copies to acme's primary, and
        the Hive count table's load, whose warehouse is on HDFS), started again after 5 s to --max-outage."""
        hadoop = self.platform.hadoop
        job = self.start_job()
        hit = self.at_random_moment(job)
        hadoop.control("namenode/stop")
        try:
            time.sleep(self.rng.uniform(5, self.max_outage))
        finally:
            hadoop.control("namenode/start")
        wait_until(lambda: hadoop.hdfs_ready() is None, 180, "the NameNode back and out of safe mode")
        return [job], hit

    def _yarn_kill(self):
        """At a random moment, the job's YARN application running then (or the next one to run) killed through the
        ResourceManager's REST API, as an operator's ``yarn application -kill`` does: its phase fails with the
        application's id and YARN's diagnostics and is retried as a new application, or fails loudly."""
        job = self.start_job()
        hit = self.at_random_moment(job)

        def running() -> list[dict]:
            if (self.record(job) or {}).get("state") in TERMINAL:
                return [{}]  # the run ended before an application could be killed: nothing to kill
            return [a for a in self.yarn_apps("RUNNING") if job in a["name"]]

        found = wait_until(running, 300, f"a running YARN application of job {job}", interval=0.5)
        if found[0]:
            self.yarn_rm(f"/apps/{found[0]['id']}/state", "PUT", {"state": "KILLED"})
            hit = (self.record(job) or {}).get("phase") or hit
        return [job], hit

    def yarn_rm(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        """The ResourceManager's REST API (outside the project's code)."""
        import urllib.request

        request = urllib.request.Request(f"{self.platform.hadoop.resourcemanager_url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read() or b"{}")

    def yarn_apps(self, states: str) -> list[dict]:
        return (self.yarn_rm(f"/apps?states={states}").get("apps") or {}).get("app") or []

    def _outage(self, cut, restore):
        job = self.start_job()
        self.wait_busy(job)
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
        filler = self.flow.full_folder() / "filler"
        # dd writes until the tmpfs is full (and then fails): every byte left is taken.
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], check=False, stderr=subprocess.DEVNULL)
        self.wait_end([job], 300)
        filler.unlink(missing_ok=True)  # space is back; trial() runs the next job if this one failed
        return [job], hit

    def _corruption(self):
        """A copy altered between its write and its verification: the flow's own way (``Flow.corrupt_during``)."""
        job = self.start_job()
        self.wait_busy(job)
        hit = self.phase_now(job)
        self.flow.corrupt_during(job)
        return [job], hit

    def _concurrent(self):
        """20 requests at one instant: 16 by send_task, 4 by the CLI."""
        jobs = [uuid.uuid4().hex for _ in range(16)]
        gate = threading.Barrier(17)
        task, kwargs = self.flow.task, self.flow.kwargs()

        def send(job_id):
            gate.wait()
            self.app.send_task(task, kwargs=kwargs, task_id=job_id)
        threads = [threading.Thread(target=send, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        cli = []
        gate.wait()
        for _ in range(4):
            cli.append(subprocess.Popen([sys.executable, "-m", "workers.cli", "--config", str(self.config),
                                         *self.flow.cli_args(), "--json"], stdout=subprocess.PIPE,
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
        self.wait_busy(first)
        time.sleep(self.rng.uniform(0, 1.5))
        hit = self.phase_now(first)
        paused = self.live_workers()
        for w in paused:
            w.pause()
        ttl = self.settings.lock.ttl
        time.sleep(ttl + self.rng.uniform(1, 5))
        self.worker()
        second = self.start_job()
        self.wait_end([second], 180)
        for w in paused:
            w.resume()
        return [first, second], hit

    def _spark_restart(self):
        """The platform's Spark JVM (HiveServer2 + Spark Connect) SIGKILLed at a random moment, started again
        after 0-5 s; a Reader queries the table backup all along."""
        if self.platform_report.get("spark") != "started" and not self.own_platform:
            raise RuntimeError("spark_restart kills the platform's Spark JVM: it runs only on a platform the "
                               "campaign started itself, or one named its own with --own-platform")
        backup = self.flows["table-backup"]
        if backup is not self.flow:
            backup.snapshot()
        allowed = {backup.before}
        if self.flow is backup:
            allowed.add(backup.sources[backup.current][1])
        self.reader = Reader(backup, allowed)
        self.reader.start()
        job = self.start_job()
        hit = self.at_random_moment(job)
        pid = self.platform._pid("spark")
        self.reader.down_since = time.monotonic()
        os.killpg(pid, signal.SIGKILL)  # driver and executors: one JVM, in its own process group
        wait_until(lambda: not _alive(pid), 30, "the Spark JVM to die")
        # The launcher's pid dies first; the JVM's ports close when the JVM itself is gone (up() would take a
        # port still open for a running server and start nothing).
        from local_platform.services import port_open

        ports = (self.settings.platform.hive_port, self.settings.platform.connect_port)
        wait_until(lambda: not any(port_open(p) for p in ports), 60, "the Spark JVM's ports to close")
        time.sleep(self.rng.uniform(0, 5))
        report = self.platform.up(only=["spark"], timeout=300)
        if report.get("spark") != "started":
            raise RuntimeError(f"the Spark JVM was not started again: {report}")
        self.reader.up_at = time.monotonic()
        return [job], hit


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie until its parent (this process, if it started it) reaps it
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def summarize(kind: str, verdicts: list[dict], workflow: str = WORKFLOW) -> dict:
    row = {"fault": kind, "workflow": workflow, "trials": len(verdicts)}
    for k in ("recovered", "failed_loudly", "lost", "duplicated", "partial", "alerts_sent", "alerts_expected"):
        row[k] = sum(v[k] for v in verdicts)
    row["max_recovery_s"] = max((v["recovery_s"] for v in verdicts), default=0)
    row["effective"] = sum(v["effective"] for v in verdicts)
    row["runs"] = sum(v.get("runs", 0) for v in verdicts)  # jobs not skipped (the concurrent kind: 1 a trial)
    hits: dict[str, int] = {}
    for v in verdicts:
        hits[v["phase"]] = hits.get(v["phase"], 0) + 1
    row["phases_hit"] = hits
    why = [w for v in verdicts for w in v.get("why", [])]
    if why:  # what the checks found, for a row that misses its targets
        row["why"] = why[:5]
    readers = [v["reader"] for v in verdicts if "reader" in v]
    if readers:  # spark_restart: what the reader of the table backup saw, over every trial
        row["reader"] = {"answers": sum(r["answers"] for r in readers),
                         "connection_errors": sum(r["connection_errors"] for r in readers),
                         "violations": [x for r in readers for x in r["violations"]][:5]}
    return row


def progress(workflow: str, kind: str, n: int, trials: int, verdict: dict) -> None:
    """One line on stderr per trial (stdout keeps one JSON row per kind): a campaign lasts hours, and an
    operator watching it sees a trial that misses its targets when it happens, not at the row's end."""
    outcome = ("recovered" if verdict["recovered"] else "failed loudly" if verdict["failed_loudly"]
               else "MISSED: " + ("; ".join(verdict.get("why", [])[:2]) or "see the row"))
    print(f"{time.strftime('%H:%M:%S')} {workflow} {kind} {n}/{trials}: {outcome} in {verdict['recovery_s']} s "
          f"(fault in {verdict['phase']}; alerts {verdict['alerts_sent']}/{verdict['alerts_expected']})",
          file=sys.stderr, flush=True)


def meets_targets(row: dict) -> bool:
    return (row["lost"] == row["duplicated"] == row["partial"] == 0 and row["alerts_sent"] == row["alerts_expected"]
            and row["recovered"] + row["failed_loudly"] == row["trials"])


def run(base: dict, state: Path, redis_port: int, kinds, trials: int, seed: int, max_outage: float,
        emit=print, workflows=(WORKFLOW,), own_platform: bool = False, sentinel_port: int = 26650) -> list[dict]:
    """Every kind in ``kinds`` for every workflow it applies to: those on one Redis in one campaign, those on a
    Sentinel group in another, the HDFS kinds (customer-files' acme primary on HDFS) in a third; each campaign
    sets up only the workflows its kinds apply to."""
    rows = []
    for setting, special in (("plain", ()), ("sentinel", SENTINEL_KINDS), ("hdfs", HDFS_KINDS), ("yarn", YARN_KINDS)):
        group = [k for k in kinds if (k in special if special else k not in SENTINEL_KINDS + HDFS_KINDS + YARN_KINDS)
                 and any(k in WORKFLOW_KINDS[w] for w in workflows)]  # no campaign for kinds that apply to none
        if not group:
            continue
        sentinel = setting == "sentinel"
        used = [w for w in workflows if any(k in WORKFLOW_KINDS[w] for k in group)]
        with Campaign(base, state / ("campaign" if setting == "plain" else f"{setting}-campaign"),
                      sentinel_port if sentinel else redis_port, seed, max_outage, workflows=used,
                      spark_restart="spark_restart" in group, own_platform=own_platform,
                      sentinel=sentinel, hdfs=setting == "hdfs", yarn=setting == "yarn") as campaign:
            for workflow in used:
                campaign.use(workflow)
                for kind in group:
                    if kind not in WORKFLOW_KINDS[workflow]:
                        continue
                    verdicts = []
                    for n in range(1, trials + 1):
                        verdicts.append(campaign.trial(kind))
                        progress(workflow, kind, n, trials, verdicts[-1])
                    row = summarize(kind, verdicts, workflow)
                    rows.append(row)
                    emit(json.dumps(row))
    return rows


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="spark_restart kills the platform's Spark JVM: give it a config (BACKUP_CONFIG) whose platform "
               "ports and state_dir no one else uses, so that the campaign starts (and later stops) a platform "
               "of its own; on a platform it did not start, spark_restart refuses to run unless --own-platform "
               "says that platform was started for the campaign and nothing else uses it.")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workflow", default=",".join(WORKFLOW_KINDS),
                   help=f"comma-separated workflows (default: all of {', '.join(WORKFLOW_KINDS)})")
    p.add_argument("--kinds", default=",".join(k for k in ALL_KINDS if k != "spark_restart"),
                   help="comma-separated fault kinds; each runs for the workflows it applies to (default: all but "
                        "spark_restart, which needs a platform of the campaign's own: name it here)")
    p.add_argument("--max-outage", type=float, default=90, help="longest sshd outage / black hole, seconds")
    p.add_argument("--redis-port", type=int, default=6650)
    p.add_argument("--sentinel-port", type=int, default=26650,
                   help="redis_failover: the Sentinel group's first port (it takes five)")
    p.add_argument("--own-platform", action="store_true",
                   help="the platform of BACKUP_CONFIG, already running, is the campaign's alone (spark_restart "
                        "may kill and restart its Spark JVM)")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        p.error(f"unknown fault kind {unknown[0]!r} (known: {', '.join(ALL_KINDS)})")
    workflows = [w for w in args.workflow.split(",") if w]
    bad = [w for w in workflows if w not in WORKFLOW_KINDS]
    if bad or not workflows:
        p.error(f"unknown workflow {(bad or [''])[0]!r} (known: {', '.join(WORKFLOW_KINDS)})")
    config = Path(os.environ.get("BACKUP_CONFIG") or Path(__file__).resolve().parent.parent / "config" / "local.yaml")
    base = yaml.safe_load(config.read_text())
    base["base_dir"] = str(config.resolve().parent / base.get("base_dir", "."))
    state = Path(tempfile.mkdtemp(prefix="mb-faults-"))
    rows = run(base, state, args.redis_port, kinds, args.trials, args.seed, args.max_outage, workflows=workflows,
               own_platform=args.own_platform, sentinel_port=args.sentinel_port)
    return 0 if all(meets_targets(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

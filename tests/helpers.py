"""Helpers shared by the integration tests: enqueue and wait, look at the edge node and the sinks from outside."""

from __future__ import annotations

import getpass
import json
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from backup.jobs import TERMINAL
from bench.faultkit import wait_until  # noqa: F401 (one implementation for tests and campaign)


def enqueue(app, task: str, **kwargs) -> str:
    """send_task by public name, as another service would; returns the job id."""
    job_id = uuid.uuid4().hex
    app.send_task(task, kwargs=kwargs, task_id=job_id)
    return job_id


def wait_job(res, job_id: str, timeout: float = 120) -> dict:
    """Poll the job record until it is terminal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = res.jobs.find(job_id)
        if rec and rec["state"] in TERMINAL:
            return rec
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {res.jobs.find(job_id)}")


#: months of daily partitions in a test's sample table: one more than the export window (5), so a window always has
#: rows outside it; each month more is ~30 partitions, ~2 s of a table's creation (8 months: 11-13 s, 6: 7 s)
TEST_MONTHS_BACK = 6


def new_sample_table(settings, name: str, rows: int = 8000) -> str:
    """``mnaas_test.<name>``, (re)created with ``rows`` sample rows over ``TEST_MONTHS_BACK`` months on the
    platform's HiveServer2, on three dates a month (``sparse_dates``: the window's boundaries, a tenth of the
    partitions)."""
    from base.identifiers import TableName
    from connectors.hive import HiveClient
    from local_platform.sample_data import create_sample_table

    table = TableName("mnaas_test", name)
    with HiveClient.from_settings(settings) as hive:
        create_sample_table(hive, table, rows=rows, months_back=TEST_MONTHS_BACK, count=False,
                            sparse_dates=True)
    return str(table)


def phase_of(res, job_id: str, name: str) -> dict:
    """The phase entry ``name`` of a job's record, or {} while the record does not exist yet."""
    rec = res.jobs.find(job_id)
    return next((p for p in rec["phases"] if p["name"] == name), {}) if rec else {}


def ssh(settings, command: list[str], check: bool = True, binary: bool = False):
    """Run a command on the edge node with the system's OpenSSH client (outside the project's code)."""
    s = settings
    argv = ["ssh", "-p", str(s.sftp.port), "-i", str(s.path(s.sftp.key_file)),
            "-o", f"UserKnownHostsFile={s.path(s.sftp.known_hosts)}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", f"{s.sftp.user or getpass.getuser()}@{s.sftp.host}", " ".join(shlex.quote(c) for c in command)]
    out = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"ssh {command} failed: {out.stderr.decode(errors='replace')}")
    return out if binary else subprocess.CompletedProcess(out.args, out.returncode, out.stdout.decode(errors="replace"),
                                                          out.stderr.decode(errors="replace"))


def remote_files(settings, folder: str) -> list[str]:
    """Every file under a remote folder (find on the edge node), sorted."""
    out = ssh(settings, ["find", folder, "-type", "f"], check=False)
    # find exits 1 for a missing folder (a real "no files"); ssh itself failing exits 255 and must not read as empty.
    if out.returncode != 0 and not (out.returncode == 1 and "No such file or directory" in out.stderr):
        raise AssertionError(f"find {folder} on the edge node failed (exit {out.returncode}): {out.stderr.strip()}")
    return sorted(line for line in out.stdout.splitlines() if line)


def sink_counts(settings) -> tuple[int, int]:
    """(emails, tickets) received so far by the local platform's sinks."""
    root = settings.path(settings.platform.state_dir) / "sinks"
    return (len(list((root / "mail").glob("*.eml"))), len(list((root / "tickets").glob("*.json"))))


def sink_tickets(settings) -> list[dict]:
    """Every ticket body received."""
    root = settings.path(settings.platform.state_dir) / "sinks" / "tickets"
    return [json.loads(p.read_text())["body"] for p in sorted(root.glob("*.json"))]


def sink_mails(settings) -> list[str]:
    """Every email received, raw."""
    root = settings.path(settings.platform.state_dir) / "sinks" / "mail"
    return [p.read_text(errors="replace") for p in sorted(root.glob("*.eml"))]


def backupctl(*args: str, config: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would."""
    import os
    import sys

    env = dict(os.environ)
    if config:
        env["BACKUP_CONFIG"] = str(config)
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=Path(__file__).resolve().parent.parent)


def hdfs(settings):
    """The local platform's HDFS over WebHDFS as its superuser (who started the NameNode): for checks and setup."""
    from storage.webhdfs import WebHdfsBackend

    return WebHdfsBackend(f"http://127.0.0.1:{settings.platform.namenode_http_port}", user=getpass.getuser())


def warehouse_folder(table: str) -> str:
    """HDFS folder of a managed table ``db.table`` in the local platform's warehouse (on HDFS)."""
    from local_platform.hadoop import WAREHOUSE

    db, name = table.lower().split(".")
    return f"{WAREHOUSE}/{db}.db/{name}"


def run_phases_inline(res, definition, job_id: str, before: dict | None = None) -> dict:
    """A job's phases in this process, in declared order, as its chain runs them (``before[name]()`` first,
    where given); a failure is recorded as the chain's errback does (``fail_job`` with the workflow's failure
    cleanup), then raised.  Returns the final job record."""
    from backup.runner import fail_job, phase
    from backup.workflow import failure_cleanup_for
    from base.errors import BackupError

    cleanup = failure_cleanup_for(definition.name, res)
    for name in definition.phase_names:
        try:
            if before and name in before:
                before[name]()
            with phase(res, job_id, name) as ctx:
                if not ctx.active:
                    break
                definition.phase(name).run(ctx)
        except BackupError as e:
            fail_job(res, job_id, name, e, cleanup=cleanup)
            raise
    return res.jobs.get(job_id)


def customer_files_until_collect(res) -> dict:
    """A new customer-files run through lock, discover and every copy task, in this process (no worker, no Hive:
    collect and flag are not run, so the run's lock stays held); its record."""
    from backup import customer_files as cf
    from backup.runner import phase

    job_id = uuid.uuid4().hex
    cf.submit(res, job_id=job_id)
    for name in cf.phase_names(cf.config(res)):
        if name == "collect":
            break
        with phase(res, job_id, name) as ctx:
            assert ctx.active
            if name.startswith("copy:"):
                cf.copy_customer(ctx, name.split(":", 1)[1])
            else:
                cf.DEFINITION.phase(name).run(ctx)
    return res.jobs.get(job_id)
